//! `vitrs continual` end to end on the synthetic data set (10 classes): outputs, exact
//! resume after a task, the strategies running, clear errors on bad input.

use std::path::Path;

use clap::Parser;
use vitrs::cli::Cli;
use vitrs::config::{Config, DatasetKind};
use vitrs::continual::report::ContinualReport;
use vitrs::continual::runner::run;
use vitrs::continual::{ContinualConfig, Scenario, Strategy};
use vitrs::model::io::read_safetensors;

fn tiny(out: &Path) -> Config {
    {
        let mut c = Config::default();
        c.data.dataset = DatasetKind::Synthetic;
        c.data.synthetic_size = 1500;
        c.model.img_size = Some(16);
        c.model.patch_size = Some(4);
        c.model.embed_dim = Some(32);
        c.model.depth = Some(2);
        c.model.num_heads = Some(2);
        c.model.mlp_dim = Some(64);
        // Dropout on: resume must also restore where the dropout masks are addressed.
        c.model.dropout = Some(0.1);
        c.model.attn_dropout = Some(0.0);
        c.optim.batch_size = 32;
        c.optim.lr = 3e-3;
        c.optim.warmup_epochs = 0.2;
        c.run.log_every = 5;
        c.run.quiet = true;
        c.run.out_dir = Some(out.to_path_buf());
        c
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
    assert_eq!(read_report(b.path()).completed_tasks, 2);
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
    resume_cfg.run.resume_from = Some(ck);
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
    let t = vitrs::cli::run::compare(&[dir.path().to_path_buf()], None).unwrap();
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
            vitrs::cli::run::run(cli, &m).unwrap_err().to_string()
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

fn weights(
    dir: &Path,
    ck: &str,
) -> std::collections::BTreeMap<String, vitrs::model::io::HostTensor> {
    read_safetensors(&dir.join("checkpoints").join(ck).join("model.safetensors")).unwrap()
}

fn max_diff(
    a: &std::collections::BTreeMap<String, vitrs::model::io::HostTensor>,
    b: &std::collections::BTreeMap<String, vitrs::model::io::HostTensor>,
) -> f32 {
    let mut worst = 0f32;
    for (k, ta) in a {
        for (x, y) in ta.data.iter().zip(&b[k].data) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

fn metric_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `--accum-steps 2` at batch 16 gives the weights of batch 32 in every task (EWC's penalty
/// gradient included): the engine's accumulation, as `train`'s test shows for one phase.
#[test]
fn accumulation_in_continual_equals_the_big_batch() {
    let base = |dir: &Path, batch: usize, accum: usize| {
        let mut c = tiny(dir);
        c.data.synthetic_size = 256;
        c.optim.batch_size = batch;
        c.optim.accum_steps = accum;
        c.model.dropout = Some(0.0);
        c.augment.crop_padding = 0;
        c.augment.hflip = 0.0;
        c.optim.eps = 1.0;
        c.optim.lr = 0.05;
        c
    };
    let mut c = cl(Strategy::Ewc, 2);
    c.epochs_per_task = 1;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(base(a.path(), 32, 1), c.clone()).unwrap();
    run(base(b.path(), 16, 2), c).unwrap();
    let (wa, wb) = (
        weights(a.path(), "after_task_2"),
        weights(b.path(), "after_task_2"),
    );
    let worst = max_diff(&wa, &wb);
    assert!(worst < 1e-5, "max weight difference {worst}");
    // The steps did move the weights (the comparison is not between two idle models).
    let fresh = {
        let cfg = base(a.path(), 32, 1);
        let vit = cfg.vit_config(16, 3, 10).unwrap();
        let m =
            vitrs::model::VisionTransformer::new(&vit, cfg.run.seed, &burn::tensor::Device::flex())
                .unwrap();
        vitrs::model::io::state_dict(&m)
    };
    assert!(max_diff(&fresh, &wa) > 1e-3);
    // Same number of optimizer steps in both runs.
    let steps = |d: &Path| {
        let s: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.join("checkpoints/after_task_2/training_state.json")).unwrap(),
        )
        .unwrap();
        s["global_step"].as_u64().unwrap()
    };
    assert_eq!(steps(a.path()), steps(b.path()));
}

/// `--ema-decay`, `--precision f16` and `--teacher` act inside every task: the EMA is kept
/// and evaluated (its own R), f16 scales the loss (the scaler is in the training state), and
/// the student learns from the teacher (the distillation losses are logged).
#[test]
fn ema_f16_and_a_teacher_act_in_every_task() {
    let t = tempfile::tempdir().unwrap();
    let teacher = {
        let mut c = tiny(t.path());
        c.optim.epochs = 1;
        c
    };
    vitrs::train::train(vitrs::train::prepare(teacher).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = {
        let mut c = tiny(dir.path());
        c.optim.ema_decay = 0.9;
        c.optim.precision = vitrs::model::precision::Precision::F16;
        c.distill.teacher = Some(t.path().join("checkpoints/last").display().to_string());
        c.distill.distillation = vitrs::config::DistillKind::Soft;
        c.run.log_every = 1;
        c
    };
    let mut c = cl(Strategy::Naive, 2);
    c.epochs_per_task = 1;
    let out = run(cfg, c).unwrap();
    let r = out.report;
    assert_eq!(r.ema_acc_matrix.len(), 2, "one EMA row per task");
    assert_ne!(r.ema_acc_matrix, r.acc_matrix, "the EMA is its own model");
    let ck = dir.path().join("checkpoints/after_task_2");
    assert!(ck.join("ema.safetensors").exists());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("training_state.json")).unwrap()).unwrap();
    assert!(
        state["loss_scaler"]["scale"].as_f64().unwrap() > 1.0,
        "{state}"
    );
    let train: Vec<_> = metric_lines(dir.path())
        .into_iter()
        .filter(|l| l["split"] == "train")
        .collect();
    assert!(!train.is_empty());
    for l in &train {
        assert!(l["loss_distill"].as_f64().is_some(), "{l}");
        assert!(l["loss_scale"].as_f64().is_some(), "{l}");
    }
}

/// `--max-training-hours` bounds the whole sequence: it stops inside the first task with a
/// checkpoint, continual.json says so, and `--resume-from` finishes the run. `--max-steps`
/// stops in the middle of task 2 (with a replay buffer and a Fisher to carry), and resuming
/// from there gives bit for bit the straight run.
#[test]
fn time_limit_and_max_steps_stop_mid_task_and_resume_exactly() {
    let strat = || {
        let mut c = cl(Strategy::EwcReplay, 5);
        c.epochs_per_task = 2;
        c
    };
    let a = tempfile::tempdir().unwrap();
    let straight = run(tiny(a.path()), strat()).unwrap();

    let b = tempfile::tempdir().unwrap();
    let out = run(
        {
            let mut c = tiny(b.path());
            c.run.max_training_hours = 1e-9;
            c
        },
        strat(),
    )
    .unwrap();
    let last = b.path().join("checkpoints/last");
    assert_eq!(out.stopped_at.as_deref(), Some(last.as_path()));
    assert!(b.path().join("checkpoints/checkpoint_time_limit").exists());
    let r = read_report(b.path());
    assert_eq!(
        (r.completed_tasks, r.stop_reason.as_str()),
        (0, "time_limit")
    );
    let resumed = run(
        {
            let mut c = tiny(b.path());
            c.run.resume_from = Some(last);
            c.run.max_training_hours = 0.0;
            c
        },
        strat(),
    )
    .unwrap();
    assert!(resumed.stopped_at.is_none());
    assert_eq!(resumed.report.stop_reason, "completed");
    assert_eq!(resumed.report.completed_tasks, 5);
    assert_eq!(resumed.report.acc_matrix, straight.report.acc_matrix);

    // 1,500 images, 5 tasks: 300 per task, 10 steps per epoch of 32; step 25 is in task 2.
    let c = tempfile::tempdir().unwrap();
    let out = run(
        {
            let mut cfg_ = tiny(c.path());
            cfg_.run.max_steps = 25;
            cfg_
        },
        strat(),
    )
    .unwrap();
    assert!(out.stopped_at.is_some());
    let r = read_report(c.path());
    assert_eq!(
        (r.completed_tasks, r.stop_reason.as_str()),
        (1, "max_steps")
    );
    let resumed = run(
        {
            let mut cfg_ = tiny(c.path());
            cfg_.run.resume_from = Some(c.path().join("checkpoints/last"));
            cfg_.run.max_steps = 0;
            cfg_
        },
        strat(),
    )
    .unwrap();
    assert_eq!(resumed.report.acc_matrix, straight.report.acc_matrix);
    assert_eq!(
        weights(a.path(), "after_task_5"),
        weights(c.path(), "after_task_5")
    );
}

/// `--eval-every`, `--save-every` and `--patience` act per task: validation on the task's
/// classes at the cadence, periodic checkpoints, and early stopping inside a task (with a
/// learning rate too small to move a weight the validation loss cannot improve, so patience 1 stops every task
/// after its second evaluation).
#[test]
fn eval_every_save_every_and_patience_act_per_task() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = {
        let mut c = tiny(dir.path());
        // Too small to change an f32 weight: the validation loss cannot improve.
        c.optim.lr = 1e-30;
        c.optim.warmup_epochs = 0.0;
        c.run.eval_every = 2;
        c.run.save_every = 2;
        c.run.patience = 1;
        c
    };
    let mut c = cl(Strategy::Naive, 2);
    c.epochs_per_task = 6;
    run(cfg, c).unwrap();
    let val: Vec<u64> = metric_lines(dir.path())
        .into_iter()
        .filter(|l| l["split"] == "val")
        .map(|l| l["epoch"].as_u64().unwrap())
        .collect();
    // Task 1: epochs 2 and 4 evaluated, then stopped; task 2 (epochs 7–12): 8 and 10.
    assert_eq!(val, [2, 4, 8, 10]);
    for e in [2, 4, 8, 10] {
        assert!(
            dir.path()
                .join(format!("checkpoints/checkpoint_epoch_{e}"))
                .exists(),
            "checkpoint_epoch_{e}"
        );
    }
    assert!(!dir.path().join("checkpoints/checkpoint_epoch_6").exists());
}
