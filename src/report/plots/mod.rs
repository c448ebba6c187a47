//! PNG plots of a run, drawn with `plotters` into an in-memory RGB buffer and encoded with
//! `image`, so nothing needs system libraries: the font is embedded (DejaVu Sans, see
//! `assets/DejaVuSans.LICENSE`) and rendered by `ab_glyph`.
//!
//! Plots that have no data (no evaluations yet, no learning rate logged) are skipped, never a
//! panic; non-finite values (a diverged loss) are left out of the curves.
//!
//! One job a file: `canvas` (font, sizes, palette, rendering to PNG), `line_chart` (the
//! curve chart the others share), `training` (a run's curves), `eval` (per-class accuracy
//! and the confusion matrix), `compare` (runs and curves side by side) and `continual` (the
//! accuracy matrix and the task curves).

mod canvas;
mod compare;
mod continual;
mod eval;
mod line_chart;
mod training;

pub use compare::{Line, plot_curves, plot_lines, plot_overlay};
pub use continual::{plot_acc_matrix, plot_continual_overlay, plot_task_curves};
pub use eval::plot_eval;
pub use training::{DEFAULT_MA_WINDOW, moving_average, plot_training};

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::report::metrics::{EvalReport, MetricRecord};

    pub(super) fn png_ok(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.len() > 1000,
            "{} is only {} bytes",
            path.display(),
            bytes.len()
        );
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }

    pub(super) fn synthetic_run(epochs: usize) -> Vec<MetricRecord> {
        let mut records = Vec::new();
        for e in 1..=epochs {
            for k in 1..=8u64 {
                let step = (e as u64 - 1) * 400 + k * 50;
                let t = step as f64 / 400.0;
                let wobble = ((step / 50) % 3) as f64 * 0.03;
                let lr = 3e-4
                    * (t / 2.0).min(1.0)
                    * (0.5 + 0.5 * (std::f64::consts::PI * t / epochs as f64).cos());
                records.push(MetricRecord::train(
                    e,
                    step,
                    0.4 + 1.9 * (-t / 4.0).exp() + wobble,
                    0.92 - 0.8 * (-t / 4.0).exp() - wobble / 4.0,
                    lr,
                    420.0,
                    t * 30.0,
                ));
            }
            let t = e as f64;
            records.push(MetricRecord::val(
                e,
                e as u64 * 400,
                0.55 + 1.6 * (-t / 4.0).exp(),
                0.86 - 0.7 * (-t / 4.0).exp(),
                t * 30.0 + 3.0,
            ));
        }
        records
    }

    #[test]
    fn empty_and_degenerate_inputs_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(plot_training(dir.path(), &[], 10).unwrap().is_empty());

        // Train only, no evaluation yet: no gap plot.
        let one = [MetricRecord::train(1, 50, 2.3, 0.1, 1e-4, 400.0, 1.0)];
        let written = plot_training(dir.path(), &one, 10).unwrap();
        assert_eq!(written.len(), 3);
        written.iter().for_each(|p| png_ok(p));

        // NaN loss and a zero window.
        let mut records = synthetic_run(3);
        records[5].loss = f64::NAN;
        records[8].loss = f64::INFINITY;
        plot_training(dir.path(), &records, 0).unwrap();

        // All losses NaN: the loss plot is skipped, accuracy still drawn.
        let nan: Vec<_> = (1..4)
            .map(|i| MetricRecord::train(1, i * 50, f64::NAN, 0.1, 1e-3, 1.0, 1.0))
            .collect();
        let written = plot_training(&dir.path().join("nan"), &nan, 10).unwrap();
        assert!(!written.iter().any(|p| p.ends_with("loss.png")));

        // Val-only records and records without lr.
        let val = [MetricRecord::val(1, 100, 1.0, 0.5, 1.0)];
        plot_training(&dir.path().join("val"), &val, 10).unwrap();

        let empty_eval = EvalReport::from_predictions(&[], &[], vec![], 0.0).unwrap();
        assert!(plot_eval(dir.path(), &empty_eval).unwrap().is_empty());
        let one_class = EvalReport::from_predictions(&[0], &[0], vec!["only".into()], 0.0).unwrap();
        assert_eq!(plot_eval(dir.path(), &one_class).unwrap().len(), 2);
    }
}
