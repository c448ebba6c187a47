//! Reporting: metrics files, TensorBoard events, plots and the convergence report of a run.

pub mod analysis;
pub mod compare;
pub mod metrics;
pub mod plots;
pub mod tensorboard;

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use metrics::EvalReport;

/// Name of the metrics file inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Name of the report inside a run directory.
pub const REPORT_FILE: &str = "report.md";
/// Folder for plots inside a run directory.
pub const PLOTS_DIR: &str = "plots";

/// Reads `run_dir/metrics.jsonl`, writes every plot into `run_dir/plots/`, writes
/// `run_dir/report.md` (summary, convergence verdicts, plots, and the evaluation tables when
/// `eval` is given) and returns that markdown.
pub fn write_report(run_dir: &Path, eval: Option<&EvalReport>) -> Result<String> {
    let records = metrics::read_metrics(&run_dir.join(METRICS_FILE))?;
    let plots_dir = run_dir.join(PLOTS_DIR);
    let mut plots = plots::plot_training(&plots_dir, &records, plots::DEFAULT_MA_WINDOW)?;
    if let Some(eval) = eval {
        plots.extend(plots::plot_eval(&plots_dir, eval)?);
    }

    let name = run_dir.file_name().map_or_else(
        || run_dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut md = format!("# Training report: {name}\n\n");
    md.push_str(&analysis::analyze(&records).to_markdown());
    if let Some(d) = distillation_section(&records) {
        md.push_str(&d);
    }
    if let Some(eval) = eval {
        let _ = write!(
            md,
            "## Evaluation\n\n{} samples, accuracy {:.2}%, loss {:.4}\n\n```text\n{}```\n\n",
            eval.num_samples,
            eval.acc * 100.0,
            eval.loss,
            eval.to_table()
        );
    }
    if !plots.is_empty() {
        md.push_str("## Plots\n\n");
        for p in &plots {
            let file = p
                .file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default();
            let stem = file.trim_end_matches(".png");
            let _ = writeln!(md, "![{stem}]({PLOTS_DIR}/{file})\n");
        }
    }
    let report = run_dir.join(REPORT_FILE);
    std::fs::write(&report, &md).map_err(|e| Error::io(&report, "writing", e))?;
    Ok(md)
}

/// With a `--teacher`: the last validation record's teacher accuracy and agreement, and the
/// last train record's loss terms.
fn distillation_section(records: &[metrics::MetricRecord]) -> Option<String> {
    let val = records
        .iter()
        .rev()
        .find(|r| r.split == "val" && r.extra.contains_key("teacher_agreement"))?;
    let mut md = format!(
        "## Distillation\n\nteacher val accuracy {:.2}%, student–teacher agreement {:.2}% (epoch {})\n",
        100.0 * val.extra.get("teacher_acc").copied().unwrap_or(f64::NAN),
        100.0 * val.extra["teacher_agreement"],
        val.epoch
    );
    if let Some(t) = records
        .iter()
        .rev()
        .find(|r| r.split == "train" && r.extra.contains_key("loss_ce"))
    {
        let g = |k: &str| t.extra.get(k).copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "last train log (step {}): true-label loss {:.4}, distillation loss {:.4}, train agreement {:.2}%",
            t.step,
            g("loss_ce"),
            g("loss_distill"),
            100.0 * g("agreement")
        );
    }
    md.push('\n');
    Some(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::{MetricRecord, MetricsWriter};

    #[test]
    fn distillation_section_reports_the_teacher() {
        let mut v = MetricRecord::val(2, 200, 0.5, 0.8, 0.0);
        assert!(distillation_section(std::slice::from_ref(&v)).is_none());
        v.extra.insert("teacher_acc".into(), 0.9);
        v.extra.insert("teacher_agreement".into(), 0.8631);
        let mut t = MetricRecord::train(2, 150, 0.4, 0.8, 1e-3, 100.0, 0.0);
        t.extra.insert("loss_ce".into(), 0.464);
        t.extra.insert("loss_distill".into(), 0.368);
        t.extra.insert("agreement".into(), 0.874);
        let md = distillation_section(&[t, v]).unwrap();
        assert!(md.contains("teacher val accuracy 90.00%"), "{md}");
        assert!(md.contains("agreement 86.31% (epoch 2)"), "{md}");
        assert!(
            md.contains("true-label loss 0.4640, distillation loss 0.3680, train agreement 87.40%"),
            "{md}"
        );
    }

    #[test]
    fn report_of_a_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = MetricsWriter::create(&dir.path().join(METRICS_FILE)).unwrap();
        for e in 1..=6usize {
            let t = e as f64;
            let step = e as u64 * 100;
            w.write(&MetricRecord::train(
                e,
                step - 50,
                2.0 / t,
                0.2 + 0.1 * t,
                1e-3,
                300.0,
                t,
            ))
            .unwrap();
            w.write(&MetricRecord::train(
                e,
                step,
                1.9 / t,
                0.22 + 0.1 * t,
                1e-3,
                310.0,
                t,
            ))
            .unwrap();
            w.write(&MetricRecord::val(
                e,
                step,
                2.1 / t,
                0.18 + 0.1 * t,
                t + 0.5,
            ))
            .unwrap();
        }
        let names = vec!["a".to_string(), "b".to_string()];
        let eval = EvalReport::from_predictions(&[0, 1, 1, 1], &[0, 1, 0, 1], names, 0.6).unwrap();
        let md = write_report(dir.path(), Some(&eval)).unwrap();
        assert!(md.contains("## Summary"), "{md}");
        assert!(md.contains("## Convergence"), "{md}");
        assert!(md.contains("## Evaluation"), "{md}");
        assert!(md.contains("![loss](plots/loss.png)"), "{md}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(REPORT_FILE)).unwrap(),
            md
        );
        for f in ["loss", "accuracy", "lr", "gap", "per_class", "confusion"] {
            assert!(
                dir.path().join(PLOTS_DIR).join(format!("{f}.png")).exists(),
                "{f}"
            );
        }
    }

    #[test]
    fn missing_metrics_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_report(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl"), "{err}");
    }
}
