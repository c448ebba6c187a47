//! Several runs or curves on one chart: the validation accuracy of runs side by side
//! (`vitrs compare`), named curves (the fine-tuning methods' losses, sparsity per layer) and
//! plain line charts (docs/scaling.md's cost model).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::canvas::{
    AXIS_DESC_PT, PALETTE, SIZE, create_parent, font, pct_label, plain_label, render,
};
use super::line_chart::{LineChart, Look, Series, line_chart, named_series};
use crate::error::Result;
use crate::report::metrics::MetricRecord;

/// Validation accuracy of several runs against epoch on one plot (for `vitrs compare`).
/// Epoch, not step, is the x axis because runs may differ in batch size.
pub fn plot_overlay(out: &Path, runs: &[(String, Vec<MetricRecord>)]) -> Result<()> {
    let series: Vec<Series> = runs
        .iter()
        .enumerate()
        .map(|(i, (name, records))| {
            let points = records
                .iter()
                .filter(|r| r.is_val())
                .map(|r| (r.epoch as f64, r.acc * 100.0))
                .collect();
            Series::new(name.clone(), points, PALETTE[i % PALETTE.len()], Look::Dots)
        })
        .collect();
    let spec = LineChart {
        title: "Validation accuracy",
        x_desc: "epoch",
        y_desc: "validation accuracy (%)",
        y_fmt: pct_label,
        legend: SeriesLabelPosition::LowerRight,
        y_include: &[],
    };
    create_parent(out)?;
    if !line_chart(out, &spec, &series)? {
        // An empty comparison still gets a file, so callers can link it unconditionally.
        render(out, SIZE, |root| {
            root.draw(&Text::new(
                "no validation records in these runs yet",
                (SIZE.0 as i32 / 2, SIZE.1 as i32 / 2),
                font(AXIS_DESC_PT)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            ))?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Several named curves on one plot (loss of each fine-tuning method, sparsity per layer).
pub fn plot_curves(
    out: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    curves: &[(String, Vec<(f64, f64)>)],
) -> Result<bool> {
    let series = named_series(curves.iter().map(|(n, p)| (n, p, Look::Line)));
    let spec = LineChart {
        title,
        x_desc,
        y_desc,
        y_fmt: plain_label,
        legend: SeriesLabelPosition::UpperRight,
        y_include: &[],
    };
    create_parent(out)?;
    line_chart(out, &spec, &series)
}

/// One line of [`plot_lines`]: label, points, dashed.
pub type Line = (String, Vec<(f64, f64)>, bool);

/// A plain line chart (docs/scaling.md's cost model).
pub fn plot_lines(
    out: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
) -> Result<bool> {
    let series = named_series(
        lines
            .iter()
            .map(|(n, p, dashed)| (n, p, if *dashed { Look::Dashed } else { Look::Dots })),
    );
    // Head room above the lines for the legend.
    let top = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let spec = LineChart {
        title,
        x_desc,
        y_desc,
        y_fmt: plain_label,
        legend: SeriesLabelPosition::UpperRight,
        y_include: &[0.0, 1.5 * top],
    };
    line_chart(out, &spec, &series)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plots::tests::{png_ok, synthetic_run};

    #[test]
    fn overlay_of_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = synthetic_run(8);
        for r in &mut other {
            r.acc *= 0.9;
        }
        let out = dir.path().join("compare").join("val_acc.png");
        plot_overlay(
            &out,
            &[
                ("vit-tiny".into(), synthetic_run(12)),
                ("vit-small".into(), other),
            ],
        )
        .unwrap();
        png_ok(&out);
        let empty = dir.path().join("empty.png");
        plot_overlay(&empty, &[("none".into(), vec![])]).unwrap();
        png_ok(&empty);
    }
}
