//! The evaluation plots: per-class accuracy bars and the confusion matrix, for a few classes
//! or a hundred (whose names are turned 90° below the axis).

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::canvas::{
    AXIS_DESC_PT, Area, DrawResult, LABEL_PT, PALETTE, SIZE, TITLE_PT, VAL_COLOR, class_axis,
    class_label, font, heat, pct_label, render,
};
use crate::error::{Error, Result};
use crate::report::metrics::EvalReport;

/// Writes `per_class.png` and `confusion.png` into `dir`; skipped for an empty report.
pub fn plot_eval(dir: &Path, eval: &EvalReport) -> Result<Vec<PathBuf>> {
    let n = eval.class_names.len();
    if n == 0 || eval.confusion.len() != n || eval.per_class_acc.len() != n {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating", e))?;
    let per_class = dir.join("per_class.png");
    plot_per_class(&per_class, eval)?;
    let confusion = dir.join("confusion.png");
    plot_confusion(&confusion, eval)?;
    Ok(vec![per_class, confusion])
}

/// Up to this many classes, class names fit horizontally under their column.
const FLAT_LABEL_CLASSES: usize = 12;

/// Font size of class names on the x axis.
fn class_label_pt(n: usize) -> u32 {
    if n <= FLAT_LABEL_CLASSES {
        LABEL_PT
    } else if n <= 30 {
        14
    } else {
        12
    }
}

/// Room below the x axis for class names: turned names need their full length.
fn class_label_area(names: &[String], n: usize) -> u32 {
    if n <= FLAT_LABEL_CLASSES {
        40
    } else {
        let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(0) as u32;
        20 + longest * class_label_pt(n) * 6 / 10
    }
}

/// The mesh's x label formatter: names for few classes; none for many, which
/// [`turned_class_labels`] draws instead.
fn mesh_class_label(names: &[String], v: &SegmentValue<i32>) -> String {
    if names.len() <= FLAT_LABEL_CLASSES {
        class_label(names, v)
    } else {
        String::new()
    }
}

/// Class names turned 90° and hanging below the axis at pixel positions `at` (column centre,
/// axis y). plotters' mesh anchors turned labels at their middle, which pushes half of each
/// name into the plot, so many-class charts place their own.
fn turned_class_labels(root: &Area, names: &[String], at: &[(i32, i32)]) -> DrawResult {
    if names.len() <= FLAT_LABEL_CLASSES {
        return Ok(());
    }
    let style = font(class_label_pt(names.len()))
        .transform(FontTransform::Rotate90)
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (name, &(x, y)) in names.iter().zip(at) {
        root.draw(&Text::new(name.as_str(), (x, y + 8), style.clone()))?;
    }
    Ok(())
}

fn plot_per_class(path: &Path, eval: &EvalReport) -> Result<()> {
    let names = &eval.class_names;
    let n = names.len();
    let width = SIZE.0.max(120 + 16 * n as u32);
    let overall = eval.acc * 100.0;
    render(path, (width, SIZE.1), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                // A legend would cover bars at 100%: the title explains the line.
                format!("Per-class accuracy (dashed line: overall {overall:.1}%)"),
                font(TITLE_PT),
            )
            .margin(16)
            .x_label_area_size(class_label_area(names, n) + 30)
            .y_label_area_size(70)
            .build_cartesian_2d(class_axis(n), 0.0..105.0f64)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .label_style(font(LABEL_PT))
            .x_label_formatter(&|v| mesh_class_label(names, v))
            .y_label_formatter(&|y| pct_label(*y, 100.0))
            .x_desc("class")
            .y_desc("accuracy (%)")
            .axis_desc_style(font(AXIS_DESC_PT))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .draw()?;
        let label_at: Vec<(i32, i32)> = (0..n)
            .map(|c| chart.backend_coord(&(SegmentValue::CenterOf(c as i32), 0.0)))
            .collect();
        turned_class_labels(root, names, &label_at)?;
        chart.draw_series((0..n).map(|c| {
            let acc = eval.per_class_acc[c] * 100.0;
            let x = c as i32;
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(x), 0.0),
                    (SegmentValue::Exact(x + 1), acc),
                ],
                PALETTE[0].filled(),
            );
            bar.set_margin(0, 0, 3, 3);
            bar
        }))?;
        if n <= 20 {
            chart.draw_series((0..n).map(|c| {
                let acc = eval.per_class_acc[c] * 100.0;
                Text::new(
                    format!("{acc:.1}"),
                    (SegmentValue::CenterOf(c as i32), acc + 1.0),
                    font(14)
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            }))?;
        }
        chart.draw_series(DashedLineSeries::new(
            [
                (SegmentValue::Exact(0), overall),
                (SegmentValue::Exact(n as i32), overall),
            ],
            10,
            6,
            VAL_COLOR.stroke_width(2),
        ))?;
        Ok(())
    })
}

fn plot_confusion(path: &Path, eval: &EvalReport) -> Result<()> {
    let names = &eval.class_names;
    let n = names.len();
    let row_pt = if n <= 30 { LABEL_PT } else { 10 };
    // Horizontal row labels need the longest name's width.
    let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(0) as u32;
    let label_area = 20 + longest * row_pt * 6 / 10;
    let cell = match n {
        0..=12 => 70,
        13..=20 => 50,
        _ => 12,
    };
    let cells = (cell * n as u32).max(400);
    let size = (
        cells + label_area + 120,
        cells + class_label_area(names, n) + 150,
    );
    let show_counts = n <= 20;
    // Row i (true class i) is drawn at y = n-1-i so the first class is on top.
    let flip = |i: usize| (n - 1 - i) as i32;
    render(path, size, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Confusion matrix (colour: share of the true class)",
                font(TITLE_PT - 4),
            )
            .margin(16)
            .x_label_area_size(class_label_area(names, n) + 30)
            .y_label_area_size(label_area + 30)
            .build_cartesian_2d(class_axis(n), class_axis(n))?;
        let row_labels: Vec<String> = (0..n).rev().map(|i| names[i].clone()).collect();
        let y_style: TextStyle = font(row_pt).into();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n + 1)
            .y_labels(n + 1)
            .x_label_formatter(&|v| mesh_class_label(names, v))
            .y_label_formatter(&|v| class_label(&row_labels, v))
            .x_label_style(font(LABEL_PT))
            .y_label_style(y_style)
            .x_desc("predicted class")
            .y_desc("true class")
            .axis_desc_style(font(AXIS_DESC_PT))
            .draw()?;
        let row_total = |i: usize| eval.confusion[i].iter().sum::<u64>().max(1) as f64;
        chart.draw_series((0..n).flat_map(|i| {
            (0..n).map(move |j| {
                let frac = eval.confusion[i][j] as f64 / row_total(i);
                let (x, y) = (j as i32, flip(i));
                Rectangle::new(
                    [
                        (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                    ],
                    heat(frac).filled(),
                )
            })
        }))?;
        let label_at: Vec<(i32, i32)> = (0..n)
            .map(|c| {
                chart.backend_coord(&(SegmentValue::CenterOf(c as i32), SegmentValue::Exact(0)))
            })
            .collect();
        turned_class_labels(root, names, &label_at)?;
        if show_counts {
            chart.draw_series((0..n).flat_map(|i| {
                (0..n).map(move |j| {
                    let count = eval.confusion[i][j];
                    let frac = count as f64 / row_total(i);
                    let color = if frac.sqrt() > 0.6 { WHITE } else { BLACK };
                    Text::new(
                        count.to_string(),
                        (
                            SegmentValue::CenterOf(j as i32),
                            SegmentValue::CenterOf(flip(i)),
                        ),
                        font(if n <= 12 { 16 } else { 12 })
                            .color(&color)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    )
                })
            }))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plots::tests::png_ok;

    fn cifar10_eval() -> EvalReport {
        let names: Vec<String> = [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut preds = Vec::new();
        let mut labels = Vec::new();
        for c in 0..10 {
            for i in 0..1000 {
                labels.push(c);
                // Cats and dogs confuse each other; others miss ~1 in (5 + c).
                let p = if c == 3 && i % 4 == 0 {
                    5
                } else if c == 5 && i % 5 == 0 {
                    3
                } else if i % (5 + c) == 0 {
                    (c + 1) % 10
                } else {
                    c
                };
                preds.push(p);
            }
        }
        EvalReport::from_predictions(&preds, &labels, names, 0.52).unwrap()
    }

    #[test]
    fn eval_plots_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let written = plot_eval(dir.path(), &cifar10_eval()).unwrap();
        assert_eq!(written.len(), 2);
        for p in &written {
            png_ok(p);
        }
    }

    #[test]
    fn hundred_class_eval_plots_are_written() {
        let names: Vec<String> = (0..100).map(|i| format!("class_{i:02}")).collect();
        let labels: Vec<usize> = (0..5000).map(|i| i % 100).collect();
        let preds: Vec<usize> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| if i % 3 == 0 { (l + i) % 100 } else { l })
            .collect();
        let eval = EvalReport::from_predictions(&preds, &labels, names, 1.3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for p in plot_eval(dir.path(), &eval).unwrap() {
            png_ok(&p);
        }
    }
}
