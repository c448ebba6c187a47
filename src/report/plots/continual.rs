//! The continual-learning plots: the accuracy matrix R as a heat map, each task's accuracy
//! as later tasks are learned, and the average accuracy over the tasks seen of several runs.

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::canvas::{
    AXIS_DESC_PT, LABEL_PT, PALETTE, TITLE_PT, class_axis, class_label, create_parent, font, heat,
    pct_label, render,
};
use super::line_chart::{LineChart, Look, Series, line_chart};
use crate::error::Result;

/// Heatmap of the accuracy matrix R (row i: after training task i; column j: tested on
/// task j), cells labelled in %.
pub fn plot_acc_matrix(path: &Path, r: &[Vec<f64>], title: &str) -> Result<()> {
    let rows = r.len();
    let cols = r.first().map_or(0, Vec::len);
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let cell = if cols <= 10 { 70 } else { 40 };
    let size = (
        (cell * cols as u32).max(400) + 200,
        (cell * rows as u32).max(300) + 180,
    );
    let row_labels: Vec<String> = (0..rows)
        .rev()
        .map(|i| format!("after {}", i + 1))
        .collect();
    let col_labels: Vec<String> = (0..cols).map(|j| format!("{}", j + 1)).collect();
    render(path, size, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(TITLE_PT - 6))
            .margin(16)
            .x_label_area_size(60)
            .y_label_area_size(110)
            .build_cartesian_2d(class_axis(cols), class_axis(rows))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols + 1)
            .y_labels(rows + 1)
            .x_label_formatter(&|v| class_label(&col_labels, v))
            .y_label_formatter(&|v| class_label(&row_labels, v))
            .label_style(font(LABEL_PT))
            .x_desc("tested on task")
            .y_desc("trained through task")
            .axis_desc_style(font(AXIS_DESC_PT))
            .draw()?;
        let flip = |i: usize| (rows - 1 - i) as i32;
        chart.draw_series((0..rows).flat_map(|i| {
            (0..cols).map(move |j| {
                let (x, y) = (j as i32, flip(i));
                Rectangle::new(
                    [
                        (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                    ],
                    heat(r[i][j]).filled(),
                )
            })
        }))?;
        chart.draw_series((0..rows).flat_map(|i| {
            (0..cols).map(move |j| {
                let v = r[i][j];
                Text::new(
                    format!("{:.0}", 100.0 * v),
                    (
                        SegmentValue::CenterOf(j as i32),
                        SegmentValue::CenterOf(flip(i)),
                    ),
                    font(if cols <= 10 { 16 } else { 12 })
                        .color(if v.sqrt() > 0.6 { &WHITE } else { &BLACK })
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )
            })
        }))?;
        Ok(())
    })
}

/// Accuracy of each task (one line per task) across the sequence of trained tasks.
pub fn plot_task_curves(path: &Path, r: &[Vec<f64>]) -> Result<bool> {
    let cols = r.first().map_or(0, Vec::len);
    let series: Vec<Series> = (0..cols)
        .map(|j| {
            // A task's curve starts where it was trained.
            let points = (j..r.len())
                .map(|i| ((i + 1) as f64, 100.0 * r[i][j]))
                .collect();
            Series::new(
                format!("task {}", j + 1),
                points,
                PALETTE[j % PALETTE.len()],
                Look::Dots,
            )
        })
        .collect();
    let spec = LineChart {
        title: "Accuracy of each task as later tasks are learned",
        x_desc: "tasks trained",
        y_desc: "test accuracy (%)",
        y_fmt: pct_label,
        legend: SeriesLabelPosition::LowerLeft,
        y_include: &[0.0, 100.0],
    };
    line_chart(path, &spec, &series)
}

/// Average accuracy over the tasks seen so far (A_i) of several continual runs.
pub fn plot_continual_overlay(out: &Path, runs: &[(String, Vec<f64>)]) -> Result<bool> {
    let series: Vec<Series> = runs
        .iter()
        .enumerate()
        .map(|(k, (name, a))| {
            let points = a
                .iter()
                .enumerate()
                .map(|(i, v)| ((i + 1) as f64, 100.0 * v))
                .collect();
            Series::new(name.clone(), points, PALETTE[k % PALETTE.len()], Look::Dots)
        })
        .collect();
    let spec = LineChart {
        title: "Average accuracy on the tasks seen so far",
        x_desc: "tasks trained",
        y_desc: "average accuracy (%)",
        y_fmt: pct_label,
        legend: SeriesLabelPosition::MiddleRight,
        y_include: &[0.0, 100.0],
    };
    create_parent(out)?;
    line_chart(out, &spec, &series)
}
