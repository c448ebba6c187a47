//! `vitrs compare-finetune`: the same fine-tuning run as full fine-tuning, LoRA, SparseLoRA
//! and head-only, each in a fresh process (so memory peaks don't mix), side by side:
//! parameters, optimizer state, peak memory, step time, throughput, accuracy, and every ratio
//! against `full`. All numbers are read from what each run measured (`summary.json`,
//! `metrics.jsonl`), none estimated.
//!
//! Under `mpirun`/`srun` with several ranks a child process could not join the job (Open
//! MPI does not let a child of a rank initialise MPI on its own), so every rank runs the
//! methods itself, one after another, each a data-parallel `train`; rank 0 writes the
//! comparison. The peak memory of one method then cannot be told apart from the methods run
//! before it in the same process: that column is left empty and a note says why.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::config::{AdapterKind, Config};
use crate::error::{Error, Result};
use crate::report::metrics::read_metrics;

pub const METHODS: [&str; 4] = ["full", "lora", "sparselora", "head-only"];

/// The run configuration of one method.
pub fn method_config(base: &Config, method: &str, out: &Path) -> Result<Config> {
    let mut c = base.clone();
    c.run.out_dir = Some(out.join(method));
    c.run.resume_from = None;
    c.peft.adapter = AdapterKind::None;
    c.peft.freeze_backbone = false;
    match method {
        "full" => {}
        "lora" => c.peft.adapter = AdapterKind::Lora,
        "sparselora" => c.peft.adapter = AdapterKind::Sparselora,
        "head-only" => c.peft.freeze_backbone = true,
        other => {
            return Err(Error::Config(format!(
                "unknown method {other:?} in --methods (choose from {})",
                METHODS.join(", ")
            )));
        }
    }
    Ok(c)
}

/// What `compare.json` says each column is.
fn column_notes() -> Value {
    json!({
        "total_params": "every parameter of the model, frozen ones included (measured: counted on the built model)",
        "trainable_params": "parameters that receive gradients and optimizer state",
        "active_params": "base parameters a training step multiplies with, mean over steps (SparseLoRA skips channels; otherwise = total)",
        "optimizer_state_mb": "AdamW moments held after the last step (MiB)",
        "peak_memory_mb": "peak resident set size of the training process (MiB, CPU); on a GPU backend the host RSS still, device memory not included; empty under MPI (the methods share one process per rank)",
        "step_ms": "median wall time of an optimizer step, first two steps excluded",
        "img_s": "global batch (all processes) / step_ms",
        "epoch_seconds": "measured wall time per epoch (training and evaluation), only when trained by epochs",
        "final_acc": "validation accuracy of the restored best weights, only when trained by epochs",
        "ratio_to_full": "value / the same value of method full"
    })
}

fn summary_of(dir: &Path) -> Result<Value> {
    let p = dir.join("summary.json");
    let s = std::fs::read(&p).map_err(|e| Error::io(&p, "reading", e))?;
    serde_json::from_slice(&s).map_err(|e| Error::Data(format!("{}: {e}", p.display())))
}

/// One row of compare.json from a finished run.
fn row(method: &str, dir: &Path, cfg: &Config, isolated: bool) -> Result<Value> {
    let s = summary_of(dir)?;
    let f = |k: &str| s.get(k).and_then(Value::as_f64);
    let total = f("total_params").unwrap_or(f64::NAN);
    let trainable = f("trainable_params").unwrap_or(f64::NAN);
    let step_ms = f("step_ms_median").unwrap_or(f64::NAN);
    let by_epochs = cfg.run.max_steps == 0;
    let epochs = f("epochs_completed").unwrap_or(0.0);
    let global_batch = f("global_batch_size")
        .filter(|&b| b > 0.0)
        .unwrap_or((cfg.optim.batch_size * cfg.optim.accum_steps) as f64);
    Ok(json!({
        "method": method,
        "run_dir": dir,
        "total_params": total,
        "trainable_params": trainable,
        "trainable_pct": 100.0 * trainable / total,
        "active_params": f("active_params"),
        "optimizer_state_mb": f("optimizer_state_mb"),
        "peak_memory_mb": if isolated { f("peak_rss_mb") } else { None },
        "step_ms": step_ms,
        "img_s": global_batch * 1e3 / step_ms,
        "epoch_seconds": (by_epochs && epochs > 0.0).then(|| f("train_seconds").unwrap_or(f64::NAN) / epochs),
        "final_acc": if by_epochs { f("final_val_acc") } else { None },
    }))
}

const RATIO_KEYS: [&str; 8] = [
    "total_params",
    "trainable_params",
    "active_params",
    "optimizer_state_mb",
    "peak_memory_mb",
    "step_ms",
    "img_s",
    "epoch_seconds",
];

fn add_ratios(rows: &mut [Value]) {
    let Some(full) = rows.iter().find(|r| r["method"] == "full").cloned() else {
        return;
    };
    for r in rows.iter_mut() {
        let mut ratios = serde_json::Map::new();
        for k in RATIO_KEYS.iter().chain(["final_acc"].iter()) {
            if let (Some(v), Some(b)) = (r[*k].as_f64(), full[*k].as_f64())
                && b != 0.0
            {
                ratios.insert(k.to_string(), json!(v / b));
            }
        }
        r["ratio_to_full"] = Value::Object(ratios);
    }
}

fn cell(v: &Value, fmt: impl Fn(f64) -> String) -> String {
    v.as_f64().map(fmt).unwrap_or_else(|| "—".into())
}

/// compare.md: the table, each value with its ratio to full.
pub fn markdown(rows: &[Value]) -> String {
    type Col = (&'static str, &'static str, fn(f64) -> String);
    let cols: [Col; 10] = [
        ("total_params", "total params", |v| format!("{v:.0}")),
        ("trainable_params", "trainable", |v| format!("{v:.0}")),
        ("active_params", "active/step", |v| format!("{v:.0}")),
        ("optimizer_state_mb", "optimizer MiB", |v| format!("{v:.2}")),
        ("peak_memory_mb", "peak MiB", |v| format!("{v:.0}")),
        ("step_ms", "step ms", |v| format!("{v:.1}")),
        ("img_s", "img/s", |v| format!("{v:.1}")),
        ("epoch_seconds", "epoch s", |v| format!("{v:.1}")),
        ("final_acc", "final acc", |v| format!("{:.2}%", 100.0 * v)),
        ("trainable_pct", "trainable %", |v| format!("{v:.3}%")),
    ];
    let mut s = String::from("| method |");
    for (_, h, _) in &cols {
        s += &format!(" {h} |");
    }
    s += &format!("\n|---|{}\n", "---|".repeat(cols.len()));
    for r in rows {
        s += &format!("| {} |", r["method"].as_str().unwrap_or("?"));
        for (k, _, f) in &cols {
            let mut c = cell(&r[*k], f);
            if r["method"] != "full"
                && let Some(x) = r["ratio_to_full"][*k].as_f64()
            {
                c += &format!(" ({x:.2}×)");
            }
            s += &format!(" {c} |");
        }
        s += "\n";
    }
    s
}

/// Train loss against step for every method, and SparseLoRA's sparsity per layer over steps.
fn plots(rows: &[Value], out: &Path) -> Result<()> {
    let mut loss = Vec::new();
    let mut sparsity = Vec::new();
    for r in rows {
        let dir = PathBuf::from(r["run_dir"].as_str().unwrap_or_default());
        let records = read_metrics(&dir.join("metrics.jsonl"))?;
        let name = r["method"].as_str().unwrap_or("?").to_string();
        loss.push((
            name.clone(),
            records
                .iter()
                .filter(|m| m.is_train())
                .map(|m| (m.step as f64, m.loss))
                .collect(),
        ));
        let mut keys: Vec<String> = records
            .iter()
            .flat_map(|m| m.extra.keys().cloned())
            .filter(|k| k.starts_with("sparsity"))
            .collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            sparsity.push((
                format!("{name} {k}"),
                records
                    .iter()
                    .filter_map(|m| m.extra.get(&k).map(|v| (m.step as f64, *v)))
                    .collect(),
            ));
        }
    }
    crate::report::plots::plot_curves(
        &out.join("loss.png"),
        "Training loss by fine-tuning method",
        "optimizer step",
        "train loss",
        &loss,
    )?;
    if !sparsity.is_empty() {
        crate::report::plots::plot_curves(
            &out.join("sparsity.png"),
            "SparseLoRA: sparsity applied over training",
            "optimizer step",
            "fraction of channels skipped",
            &sparsity,
        )?;
    }
    Ok(())
}

/// Run every method (in a fresh `vitrs train` process, or in this one under MPI), then
/// write compare.json, compare.md and the plots into the output directory. Returns the
/// markdown table.
pub fn run(base: &Config, methods: &[String], out: &Path) -> Result<String> {
    if methods.is_empty() {
        return Err(Error::Config("--methods is empty".into()));
    }
    let dist = crate::dist::world();
    let in_process = dist.size() > 1;
    if dist.is_main() {
        // A finished comparison is never written into: not even its method .toml files.
        crate::train::claim_run_dir(out, base.run.overwrite)?;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, "creating", e))?;
    }
    let configs: Vec<Config> = methods
        .iter()
        .map(|m| method_config(base, m, out))
        .collect::<Result<_>>()?;
    for (method, cfg) in methods.iter().zip(&configs) {
        let toml_path = out.join(format!("{method}.toml"));
        if dist.is_main() {
            crate::util::write_file_synced(&toml_path, cfg.to_toml().as_bytes())?;
        }
        if in_process {
            if dist.is_main() {
                crate::log_line!(
                    "== {method}: vitrs train --config {} (in this process, {} ranks)",
                    toml_path.display(),
                    dist.size()
                );
            }
            crate::train::train(crate::train::prepare(cfg.clone())?)?;
        } else {
            crate::log_line!("== {method}: vitrs train --config {}", toml_path.display());
            train_child(method, &toml_path, out)?;
        }
    }
    if !dist.is_main() {
        return Ok(String::new());
    }
    let mut rows = Vec::new();
    for (method, cfg) in methods.iter().zip(&configs) {
        rows.push(row(method, &out.join(method), cfg, !in_process)?);
    }
    add_ratios(&mut rows);
    let mut doc = json!({"methods": rows, "columns": column_notes(), "processes": dist.size()});
    let mut md = markdown(&rows);
    if in_process {
        let note = format!(
            "Peak memory per method is not measured under MPI: the {} methods ran one after another in one process per rank, so a method's peak cannot be told from the ones before it (the process peak was {}). Run compare-finetune without mpirun for that column.",
            methods.len(),
            crate::util::peak_rss_mb().map_or("unknown".into(), |m| format!("{m:.0} MiB"))
        );
        doc["note"] = json!(note);
        md += &format!("\n{note}\n");
    }
    let text = serde_json::to_vec_pretty(&doc).map_err(|e| Error::Io(e.to_string()))?;
    crate::util::write_file_synced(&out.join("compare.json"), &text)?;
    crate::util::write_file_synced(&out.join("compare.md"), md.as_bytes())?;
    plots(&rows, out)?;
    Ok(md)
}

/// `vitrs train --config <toml>` in a fresh process (so that its memory peak is its own).
fn train_child(method: &str, toml_path: &Path, out: &Path) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::Io(e.to_string()))?;
    let mut child = Command::new(&exe);
    child.arg("train").arg("--config").arg(toml_path);
    // A plain single process, even when this one was started by `mpirun -np 1`.
    for (k, _) in std::env::vars_os() {
        if crate::dist::is_launcher_var(&k.to_string_lossy()) {
            child.env_remove(&k);
        }
    }
    let status = child
        .status()
        .map_err(|e| Error::Io(format!("starting {}: {e}", exe.display())))?;
    if !status.success() {
        return Err(Error::Training(format!(
            "the {method} run failed ({status}); its output is in {}",
            out.join(method).display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_against_full_and_the_table_shows_them() {
        let mut rows = vec![
            json!({"method": "full", "total_params": 100.0, "trainable_params": 100.0, "step_ms": 10.0, "optimizer_state_mb": 8.0, "final_acc": 0.8}),
            json!({"method": "lora", "total_params": 104.0, "trainable_params": 4.0, "step_ms": 5.0, "optimizer_state_mb": 0.5, "final_acc": 0.78}),
        ];
        add_ratios(&mut rows);
        assert_eq!(rows[1]["ratio_to_full"]["step_ms"], 0.5);
        assert_eq!(rows[1]["ratio_to_full"]["trainable_params"], 0.04);
        assert_eq!(rows[0]["ratio_to_full"]["step_ms"], 1.0);
        let md = markdown(&rows);
        let lora = md.lines().find(|l| l.starts_with("| lora |")).unwrap();
        assert!(
            lora.contains("5.0 (0.50×)") && lora.contains("78.00%"),
            "{md}"
        );
    }

    #[test]
    fn methods_set_the_adapter_flags() {
        let base = Config::default();
        let out = Path::new("/tmp/x");
        assert_eq!(
            method_config(&base, "lora", out).unwrap().peft.adapter,
            AdapterKind::Lora
        );
        assert!(
            method_config(&base, "head-only", out)
                .unwrap()
                .peft
                .freeze_backbone
        );
        let e = method_config(&base, "qlora", out).unwrap_err().to_string();
        assert!(e.contains("unknown method \"qlora\""), "{e}");
    }
}
