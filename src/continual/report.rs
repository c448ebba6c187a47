//! The outputs of a continual run: `continual.json`, `report.md` and the plots, and
//! `vitrs compare` over continual runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metrics::ContinualMetrics;
use crate::error::{Error, Result};
use crate::train::trainer::write_json;

pub const REPORT_JSON: &str = "continual.json";

/// `continual.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContinualReport {
    pub strategy: String,
    pub scenario: String,
    pub dataset: String,
    pub model: String,
    pub tasks: usize,
    pub epochs_per_task: usize,
    pub class_order: Vec<usize>,
    pub task_classes: Vec<Vec<usize>>,
    #[serde(alias = "tasks_completed")]
    pub completed_tasks: usize,
    /// completed | stop_after_task | time_limit | interrupted | max_steps
    #[serde(default = "completed")]
    pub stop_reason: String,
    /// R[i][j]: accuracy on task j after training task i (fractions).
    pub acc_matrix: Vec<Vec<f64>>,
    /// With `--ema-decay`: R of the EMA weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ema_acc_matrix: Vec<Vec<f64>>,
    #[serde(flatten)]
    pub metrics: ContinualMetrics,
    pub trainable_params: usize,
    pub total_params: usize,
    /// Training seconds of each task (its in-task validation and the EWC Fisher included;
    /// the evaluation of every task after it excluded).
    pub task_seconds: Vec<f64>,
    pub train_seconds: f64,
    pub peak_rss_mb: Option<f64>,
    pub replay_size: Option<usize>,
    pub ewc_lambda: Option<f64>,
    pub run_dir: PathBuf,
}

fn completed() -> String {
    "completed".into()
}
/// `continual.json`, `report.md` and the plots.
pub fn write_outputs(run_dir: &Path, r: &ContinualReport) -> Result<()> {
    write_json(&run_dir.join(REPORT_JSON), r)?;
    let plots = run_dir.join(crate::report::PLOTS_DIR);
    std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, "creating", e))?;
    crate::report::plots::plot_acc_matrix(
        &plots.join("acc_matrix.png"),
        &r.acc_matrix,
        &format!("Accuracy matrix R (%), {} / {}", r.strategy, r.scenario),
    )?;
    if r.strategy != "joint" {
        crate::report::plots::plot_task_curves(&plots.join("task_accuracy.png"), &r.acc_matrix)?;
    }
    crate::util::write_file_synced(&run_dir.join("report.md"), report_markdown(r).as_bytes())
}

fn pct(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{:.2}%", 100.0 * v))
}

/// report.md: the settings, R as a table in %, the metrics and a sentence on forgetting.
pub fn report_markdown(r: &ContinualReport) -> String {
    let mut s = format!(
        "# Continual learning: {} ({})\n\n{} tasks of {} classes on {}, {} epoch(s) per task, model {}; {} of {} tasks trained.\n\n",
        r.strategy,
        r.scenario,
        r.tasks,
        r.task_classes.first().map_or(0, Vec::len),
        r.dataset,
        r.epochs_per_task,
        r.model,
        r.completed_tasks,
        if r.strategy == "joint" { 1 } else { r.tasks }
    );
    s += "Accuracy matrix R (%): row = after training task i, column = tested on task j.\n\n| after \\ task |";
    for j in 0..r.tasks {
        s += &format!(" {} |", j + 1);
    }
    s += "\n|---|";
    s += &"---|".repeat(r.tasks);
    s += "\n";
    for (i, row) in r.acc_matrix.iter().enumerate() {
        s += &format!(
            "| {} |",
            if r.strategy == "joint" {
                "joint".into()
            } else {
                (i + 1).to_string()
            }
        );
        for a in row {
            s += &format!(" {:.1} |", 100.0 * a);
        }
        s += "\n";
    }
    let m = &r.metrics;
    s += &format!(
        "\n| metric | value |\n|---|---|\n| average accuracy (final row) | {} |\n| average forgetting (max-based: GEM, L2P, DualPrompt) | {} |\n| BWT (Avalanche's forgetting = −BWT) | {} |\n| trainable params | {} |\n| training time | {:.0} s |\n\n",
        pct(Some(m.avg_acc)),
        pct(m.avg_forgetting),
        pct(m.bwt),
        r.trainable_params,
        r.train_seconds
    );
    match (m.avg_forgetting, m.bwt) {
        (Some(f), Some(b)) => {
            s += &format!(
                "On average the model lost {:.1} points of accuracy on an earlier task between its best and the end (BWT {:+.1} points).\n",
                100.0 * f,
                100.0 * b
            )
        }
        _ => {
            s += "No forgetting to measure: all tasks were trained at once (joint) or only one task is done.\n"
        }
    }
    s
}

/// `vitrs compare` for continual runs: one row per run (strategy, scenario, average
/// accuracy, forgetting, BWT, trainable parameters, time), and A_i of each run on one plot.
pub fn compare(dirs: &[PathBuf], plot: Option<&Path>) -> Result<String> {
    let runs: Vec<(String, ContinualReport)> = dirs
        .iter()
        .map(|d| {
            let p = d.join(REPORT_JSON);
            let s = std::fs::read(&p).map_err(|e| {
                Error::Io(format!(
                    "{}: {e} (compare continual runs only with other continual runs)",
                    p.display()
                ))
            })?;
            let r: ContinualReport = serde_json::from_slice(&s)
                .map_err(|e| Error::Data(format!("{}: {e}", p.display())))?;
            let name = d.file_name().map_or_else(
                || d.display().to_string(),
                |n| n.to_string_lossy().to_string(),
            );
            Ok((name, r))
        })
        .collect::<Result<_>>()?;
    let mut s = String::from(
        "| run | strategy | scenario | tasks | avg acc | forgetting (max) | BWT | trainable params | time (s) | peak MB |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, r) in &runs {
        s += &format!(
            "| {name} | {} | {} | {}/{} | {} | {} | {} | {} | {:.0} | {} |\n",
            r.strategy,
            r.scenario,
            r.completed_tasks,
            if r.strategy == "joint" { 1 } else { r.tasks },
            pct(Some(r.metrics.avg_acc)),
            pct(r.metrics.avg_forgetting),
            pct(r.metrics.bwt),
            r.trainable_params,
            r.train_seconds,
            r.peak_rss_mb.map_or("—".into(), |m| format!("{m:.0}"))
        );
    }
    if let Some(out) = plot {
        let curves: Vec<(String, Vec<f64>)> = runs
            .iter()
            .map(|(n, r)| {
                let a = if r.strategy == "joint" {
                    // The upper bound as a flat line over the sequence.
                    vec![r.metrics.avg_acc; r.tasks]
                } else {
                    r.metrics.avg_acc_per_task.clone()
                };
                (format!("{n} ({})", r.strategy), a)
            })
            .collect();
        crate::report::plots::plot_continual_overlay(out, &curves)?;
    }
    Ok(s)
}

/// Whether `dir` is a continual run (has `continual.json`).
pub fn is_continual_run(dir: &Path) -> bool {
    dir.join(REPORT_JSON).is_file()
}
