//! The training curves of a run: loss and accuracy (raw train points, their moving average
//! and validation), the learning rate, and the train − validation accuracy gap per epoch.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::canvas::{PALETTE, TRAIN_COLOR, VAL_COLOR, pct_label, plain_label, sci_label};
use super::line_chart::{LineChart, Look, Series, line_chart};
use crate::error::{Error, Result};
use crate::report::analysis::epoch_accuracies;
use crate::report::metrics::MetricRecord;

/// Default moving-average window, in log points.
pub const DEFAULT_MA_WINDOW: usize = 10;

/// Trailing moving average over the last `window` finite values (fewer at the start).
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let window = window.max(1);
    (0..values.len())
        .map(|i| {
            let from = (i + 1).saturating_sub(window);
            let finite: Vec<f64> = values[from..=i]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            if finite.is_empty() {
                f64::NAN
            } else {
                finite.iter().sum::<f64>() / finite.len() as f64
            }
        })
        .collect()
}

/// Train raw + moving average + val curves of one metric (`value` picks and scales it).
fn metric_series(
    records: &[MetricRecord],
    value: fn(&MetricRecord) -> f64,
    ma_window: usize,
) -> Vec<Series> {
    let train: Vec<&MetricRecord> = records.iter().filter(|r| r.is_train()).collect();
    let xs: Vec<f64> = train.iter().map(|r| r.step as f64).collect();
    let ys: Vec<f64> = train.iter().map(|r| value(r)).collect();
    let ma = moving_average(&ys, ma_window);
    let val = records
        .iter()
        .filter(|r| r.is_val())
        .map(|r| (r.step as f64, value(r)))
        .collect();
    vec![
        Series::new(
            "train",
            xs.iter().copied().zip(ys).collect(),
            TRAIN_COLOR,
            Look::Faint,
        ),
        Series::new(
            format!("train, moving average ({ma_window})"),
            xs.into_iter().zip(ma).collect(),
            TRAIN_COLOR,
            Look::Line,
        ),
        Series::new("validation", val, VAL_COLOR, Look::Dots),
    ]
}

/// Writes `loss.png`, `accuracy.png`, `lr.png` and `gap.png` into `dir` (created if needed)
/// and returns the paths written; plots without data are skipped.
pub fn plot_training(
    dir: &Path,
    records: &[MetricRecord],
    ma_window: usize,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating", e))?;
    let mut written = Vec::new();
    let mut keep = |path: PathBuf, drawn: bool| {
        if drawn {
            written.push(path);
        }
    };

    let path = dir.join("loss.png");
    let spec = LineChart {
        title: "Loss",
        x_desc: "step",
        y_desc: "loss",
        y_fmt: plain_label,
        legend: SeriesLabelPosition::UpperRight,
        y_include: &[],
    };
    keep(
        path.clone(),
        line_chart(&path, &spec, &metric_series(records, |r| r.loss, ma_window))?,
    );

    let path = dir.join("accuracy.png");
    let spec = LineChart {
        title: "Accuracy",
        x_desc: "step",
        y_desc: "accuracy (%)",
        y_fmt: pct_label,
        legend: SeriesLabelPosition::LowerRight,
        y_include: &[],
    };
    let series = metric_series(records, |r| r.acc * 100.0, ma_window);
    keep(path.clone(), line_chart(&path, &spec, &series)?);

    let path = dir.join("lr.png");
    let lr: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.is_train())
        .filter_map(|r| Some((r.step as f64, r.lr?)))
        .collect();
    let spec = LineChart {
        title: "Learning rate",
        x_desc: "step",
        y_desc: "learning rate",
        y_fmt: sci_label,
        legend: SeriesLabelPosition::UpperRight,
        y_include: &[0.0],
    };
    let series = [Series::new("learning rate", lr, PALETTE[2], Look::Line)];
    keep(path.clone(), line_chart(&path, &spec, &series)?);

    let path = dir.join("gap.png");
    keep(path.clone(), plot_gap(&path, records)?);
    Ok(written)
}

fn plot_gap(path: &Path, records: &[MetricRecord]) -> Result<bool> {
    let epochs = epoch_accuracies(records);
    let gap: Vec<(f64, f64)> = epochs
        .iter()
        .map(|e| (e.epoch as f64, e.gap_points()))
        .collect();
    if gap.is_empty() {
        return Ok(false);
    }
    let (first, last) = (gap[0].0, gap[gap.len() - 1].0);
    let limit = crate::report::analysis::GAP_LIMIT;
    let spec = LineChart {
        title: "Train − validation accuracy gap",
        x_desc: "epoch",
        y_desc: "gap (percentage points)",
        y_fmt: plain_label,
        legend: SeriesLabelPosition::UpperLeft,
        y_include: &[0.0, limit + 2.0],
    };
    let series = [
        Series::new("train acc − val acc", gap, PALETTE[4], Look::Dots),
        Series::new(
            format!("{limit:.0}-point limit for good convergence"),
            vec![(first, limit), (last, limit)],
            PALETTE[7],
            Look::Dashed,
        ),
    ];
    line_chart(path, &spec, &series)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plots::tests::{png_ok, synthetic_run};

    #[test]
    fn training_plots_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let written = plot_training(dir.path(), &synthetic_run(12), DEFAULT_MA_WINDOW).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["loss.png", "accuracy.png", "lr.png", "gap.png"]);
        for p in &written {
            png_ok(p);
        }
    }

    #[test]
    fn moving_average_is_trailing_and_skips_nan() {
        let ma = moving_average(&[1.0, 3.0, f64::NAN, 5.0], 2);
        assert_eq!(ma[0], 1.0);
        assert_eq!(ma[1], 2.0);
        assert_eq!(ma[2], 3.0);
        assert_eq!(ma[3], 5.0);
    }
}
