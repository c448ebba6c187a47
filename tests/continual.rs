//! `vitrs continual` end to end on the synthetic data set (10 classes): outputs, exact
//! resume after a task, the strategies running, clear errors on bad input.

use std::path::Path;

use clap::Parser;
use vitrs::cli::Cli;
use vitrs::config::{Config, DatasetKind};
use vitrs::continual::runner::{ContinualReport, run};
use vitrs::continual::{ContinualConfig, Scenario, Strategy};
use vitrs::model::io::read_safetensors;

fn tiny(out: &Path) -> Config {
    Config {
        dataset: DatasetKind::Synthetic,
        synthetic_size: 1500,
        img_size: Some(16),
        patch_size: Some(4),
        embed_dim: Some(32),
        depth: Some(2),
        num_heads: Some(2),
        mlp_dim: Some(64),
        // Dropout on: resume must also restore where the dropout masks are addressed.
        dropout: Some(0.1),
        attn_dropout: Some(0.0),
        batch_size: 32,
        lr: 3e-3,
        warmup_epochs: 0.2,
        log_every: 5,
        quiet: true,
        out_dir: Some(out.to_path_buf()),
        ..Config::default()
    }
}

fn cl(strategy: Strategy, tasks: usize) -> ContinualConfig {
    ContinualConfig {
        tasks,
        class_order: "seeded".into(),
        epochs_per_task: 4,
        scenario: Scenario::ClassIl,
        strategy,
        ewc_samples: 20,
        ewc_lambda: 100.0,
        ewc_gamma: 1.0,
        replay_size: 40,
        replay_ratio: 0.5,
        stop_after_task: 0,
        lora_per_task: false,
    }
}

fn read_report(dir: &Path) -> ContinualReport {
    serde_json::from_slice(&std::fs::read(dir.join("continual.json")).unwrap()).unwrap()
}

/// Stopping after task 2 and resuming gives bit-for-bit the straight run: weights, Fisher,
/// buffer and the accuracy matrix (EWC + replay: every piece of state is exercised).
#[test]
fn resume_after_a_task_equals_the_straight_run() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let straight = run(tiny(a.path()), cl(Strategy::EwcReplay, 5)).unwrap();
    assert!(straight.stopped_at.is_none());

    let mut first = cl(Strategy::EwcReplay, 5);
    first.stop_after_task = 2;
    let stopped = run(tiny(b.path()), first).unwrap();
    let ck = stopped.stopped_at.expect("stopped after task 2");
    assert!(ck.ends_with("checkpoints/after_task_2"), "{}", ck.display());
    assert_eq!(read_report(b.path()).tasks_completed, 2);
    assert!(!b.path().join("checkpoints/after_task_3").exists());
    for f in [
        "continual_state.json",
        "ewc.safetensors",
        "replay.json",
        "replay.u8",
    ] {
        assert!(ck.join(f).exists(), "{f} missing");
    }
    let mut resume_cfg = tiny(b.path());
    resume_cfg.resume_from = Some(ck);
    let resumed = run(resume_cfg, cl(Strategy::EwcReplay, 5)).unwrap();

    assert_eq!(resumed.report.acc_matrix, straight.report.acc_matrix);
    assert_eq!(resumed.report.class_order, straight.report.class_order);
    let last = |d: &Path| d.join("checkpoints/after_task_5");
    assert_eq!(
        read_safetensors(&last(a.path()).join("model.safetensors")).unwrap(),
        read_safetensors(&last(b.path()).join("model.safetensors")).unwrap()
    );
    assert_eq!(
        std::fs::read(last(a.path()).join("replay.u8")).unwrap(),
        std::fs::read(last(b.path()).join("replay.u8")).unwrap()
    );
    // Fisher after task 2 (the last one consolidated).
    let ewc =
        |d: &Path| read_safetensors(&d.join("checkpoints/after_task_2/ewc.safetensors")).unwrap();
    assert_eq!(ewc(a.path()), ewc(b.path()));
}

#[test]
fn naive_run_writes_every_output_and_consistent_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(tiny(dir.path()), cl(Strategy::Naive, 5)).unwrap();
    let r = out.report;
    assert_eq!(r.acc_matrix.len(), 5);
    assert!(r.acc_matrix.iter().all(|row| row.len() == 5));
    assert!(
        r.acc_matrix
            .iter()
            .flatten()
            .all(|a| (0.0..=1.0).contains(a))
    );
    let last = &r.acc_matrix[4];
    assert!((r.metrics.avg_acc - last.iter().sum::<f64>() / 5.0).abs() < 1e-12);
    assert_eq!(r.task_classes.len(), 5);
    assert_eq!(r.trainable_params, r.total_params);
    // The task just trained is learnt (2 classes: chance is 50%).
    assert!(r.acc_matrix[4][4] > 0.6, "{:?}", r.acc_matrix);
    for f in [
        "continual.json",
        "report.md",
        "plots/acc_matrix.png",
        "plots/task_accuracy.png",
        "checkpoints/after_task_5/model.safetensors",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("average forgetting"), "{md}");
    // TensorBoard: task_K/acc scalars.
    let tb = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .expect("event file");
    let bytes = std::fs::read(tb.path()).unwrap();
    assert!(
        bytes.windows(10).any(|w| w == b"task_3/acc"),
        "no task_3/acc scalar"
    );
    // `vitrs compare` on continual runs.
    let t = vitrs::commands::compare(&[dir.path().to_path_buf()], None).unwrap();
    assert!(t.contains("| naive | class-il | 5/5 |"), "{t}");
}

#[test]
fn joint_task_il_and_lora_run() {
    let dir = tempfile::tempdir().unwrap();
    let j = run(tiny(dir.path()), cl(Strategy::Joint, 5))
        .unwrap()
        .report;
    assert_eq!(j.acc_matrix.len(), 1);
    assert_eq!(j.metrics.avg_forgetting, None);

    let dir = tempfile::tempdir().unwrap();
    let mut c = cl(Strategy::Naive, 5);
    c.scenario = Scenario::TaskIl;
    let t = run(tiny(dir.path()), c).unwrap().report;
    // Under task-IL the model only chooses within a task's 2 classes: the diagonal is learnt.
    assert!(t.acc_matrix[4][4] > 0.6, "{:?}", t.acc_matrix);

    let dir = tempfile::tempdir().unwrap();
    let mut c = cl(Strategy::LoraReplay, 5);
    c.scenario = Scenario::TaskIl;
    c.lora_per_task = true;
    let l = run(tiny(dir.path()), c).unwrap().report;
    assert!(
        l.trainable_params < l.total_params / 2,
        "{} of {}",
        l.trainable_params,
        l.total_params
    );
    assert!(
        dir.path()
            .join("checkpoints/after_task_5/task_adapters.safetensors")
            .exists()
    );
}

fn cli_error(args: &[&str]) -> String {
    match Cli::try_parse_from(args) {
        Err(e) => e.to_string(),
        Ok(cli) => {
            let m = <Cli as clap::CommandFactory>::command().get_matches_from(args);
            vitrs::commands::run(cli, &m).unwrap_err().to_string()
        }
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let base = [
        "vitrs",
        "continual",
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "100",
        "--out-dir",
        out,
    ];
    let with = |extra: &[&str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        cli_error(&v)
    };
    let e = with(&["--tasks", "3"]);
    assert!(
        e.contains("--tasks 3 does not divide the dataset's 10 classes"),
        "{e}"
    );
    let e = with(&["--strategy", "replay", "--replay-size", "0"]);
    assert!(e.contains("--replay-size > 0"), "{e}");
    let e = with(&["--strategy", "si"]);
    assert!(
        e.contains("invalid value 'si'") && e.contains("ewc+replay"),
        "{e}"
    );
    let e = with(&["--class-order", "/no/such/file"]);
    assert!(e.contains("not natural or seeded"), "{e}");
}
