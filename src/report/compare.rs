//! `vitrs compare RUN_DIR...`: runs side by side from their `summary.json`, with ratios against
//! the first run, and their validation curves overlaid. The LoRA comparisons reuse this table;
//! continual runs have their own (`continual::report::compare`, which the command picks).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::metrics::read_metrics;
use crate::error::{Error, Result};

/// One column of the comparison: a summary.json key, a header, and how to print it.
struct Column {
    key: &'static str,
    header: &'static str,
    percent: bool,
    /// A larger value is better (for the sign of the ratio's meaning; shown as is).
    ratio: bool,
}

const COLUMNS: &[Column] = &[
    Column {
        key: "best_val_acc",
        header: "best val acc",
        percent: true,
        ratio: true,
    },
    Column {
        key: "final_val_acc",
        header: "final val acc",
        percent: true,
        ratio: true,
    },
    Column {
        key: "final_val_loss",
        header: "final val loss",
        percent: false,
        ratio: true,
    },
    Column {
        key: "epochs_completed",
        header: "epochs",
        percent: false,
        ratio: false,
    },
    Column {
        key: "train_seconds",
        header: "time (s)",
        percent: false,
        ratio: true,
    },
    Column {
        key: "train_images_per_sec",
        header: "img/s",
        percent: false,
        ratio: true,
    },
    Column {
        key: "total_params",
        header: "params",
        percent: false,
        ratio: true,
    },
    Column {
        key: "trainable_params",
        header: "trainable",
        percent: false,
        ratio: true,
    },
    Column {
        key: "peak_rss_mb",
        header: "peak MB",
        percent: false,
        ratio: true,
    },
    // Runs trained with a --teacher: the final student's agreement with it (summary.json).
    Column {
        key: "teacher_agreement",
        header: "teacher agreement",
        percent: true,
        ratio: false,
    },
];

pub struct RunSummary {
    pub name: String,
    pub dir: PathBuf,
    pub summary: Value,
}

pub fn load_run(dir: &Path) -> Result<RunSummary> {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Io(format!(
            "{}: {e} (is this a finished vitrs run directory?)",
            path.display()
        ))
    })?;
    let summary =
        serde_json::from_str(&text).map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(RunSummary {
        name,
        dir: dir.to_path_buf(),
        summary,
    })
}

fn fmt(v: f64, percent: bool) -> String {
    if !v.is_finite() {
        "—".into()
    } else if percent {
        format!("{:.2}%", 100.0 * v)
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// The markdown table: one row per run, each value followed by its ratio to the first run.
pub fn table(runs: &[RunSummary]) -> String {
    let mut s = String::from("| run |");
    for c in COLUMNS {
        s += &format!(" {} |", c.header);
    }
    s += "\n|---|";
    s += &"---|".repeat(COLUMNS.len());
    s += "\n";
    let value = |r: &RunSummary, key: &str| r.summary.get(key).and_then(Value::as_f64);
    for r in runs {
        s += &format!("| {} |", r.name);
        for c in COLUMNS {
            let cell = match value(r, c.key) {
                None => "—".to_string(),
                Some(v) => {
                    let base = value(&runs[0], c.key);
                    match base {
                        Some(b)
                            if c.ratio
                                && b != 0.0
                                && b.is_finite()
                                && v.is_finite()
                                && !std::ptr::eq(r, &runs[0]) =>
                        {
                            format!("{} ({:.2}×)", fmt(v, c.percent), v / b)
                        }
                        _ => fmt(v, c.percent),
                    }
                }
            };
            s += &format!(" {cell} |");
        }
        s += "\n";
    }
    s
}

/// Table + overlaid validation-accuracy plot (`out`, when given).
pub fn compare(dirs: &[PathBuf], plot: Option<&Path>) -> Result<String> {
    if dirs.is_empty() {
        return Err(Error::Config(
            "vitrs compare needs at least one run directory".into(),
        ));
    }
    let runs: Vec<RunSummary> = dirs.iter().map(|d| load_run(d)).collect::<Result<_>>()?;
    if let Some(out) = plot {
        let curves = runs
            .iter()
            .map(|r| Ok((r.name.clone(), read_metrics(&r.dir.join("metrics.jsonl"))?)))
            .collect::<Result<Vec<_>>>()?;
        super::plots::plot_overlay(out, &curves)?;
    }
    Ok(table(&runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_against_the_first_run() {
        let runs = vec![
            RunSummary {
                name: "a".into(),
                dir: PathBuf::new(),
                summary: serde_json::json!({"best_val_acc": 0.5, "train_images_per_sec": 100.0, "total_params": 1000}),
            },
            RunSummary {
                name: "b".into(),
                dir: PathBuf::new(),
                summary: serde_json::json!({"best_val_acc": 0.75, "train_images_per_sec": 250.0, "total_params": 1000, "teacher_agreement": 0.8642}),
            },
        ];
        let t = table(&runs);
        let b = t.lines().find(|l| l.starts_with("| b |")).unwrap();
        assert!(b.contains("75.00% (1.50×)"), "{t}");
        assert!(b.contains("250 (2.50×)"), "{t}");
        assert!(b.ends_with("| 86.42% |"), "{t}");
        let a = t.lines().find(|l| l.starts_with("| a |")).unwrap();
        assert!(a.contains("50.00% |"), "{t}");
    }
}
