//! The task loop: train task after task with the `train` machinery (step, AdamW,
//! warmup + cosine restarted per task, clipping), evaluate every task after each, keep R,
//! and checkpoint after every task so that `--resume-from` continues exactly.
//!
//! `checkpoints/after_task_K/` holds the usual checkpoint (model, optimizer, training state,
//! config, classes) plus `continual_state.json` (class order, R so far, times, settings),
//! `ewc.safetensors` (Fisher and θ*) and `replay.json` + `replay.u8` (the buffer). All
//! randomness is addressed by (seed, task, epoch, batch/step), so nothing else is state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::ewc::{Ewc, FisherSum, ParamMap, trainable_params};
use super::metrics::{ContinualMetrics, joint_metrics, metrics};
use super::replay::{ReplayBuffer, sample_indices};
use super::{
    ContinualConfig, Scenario, Strategy, class_order, masked_step, split_tasks, task_masks,
    task_of_class, task_targets,
};
use crate::config::{AdapterKind, Config};
use crate::data::dataset::Dataset;
use crate::data::loader::Loader;
use crate::dist::decide;
use crate::error::{Error, Result};
use crate::model::io::{
    HostTensor, load_state_dict, load_state_dict_keeping, read_safetensors, state_dict,
};
use crate::model::layers::Ctx;
use crate::model::lora::{self, LoraConfig, is_adapter};
use crate::model::params::{count_params, map_params, named_params, set_trainable};
use crate::model::precision::Precision;
use crate::model::{VisionTransformer, VitConfig};
use crate::report::tensorboard::{EventWriter, now_secs};
use crate::rng::{Rng, stream};
use crate::train::checkpoint::{self, Checkpoint, TrainingState};
use crate::train::optim::{AdamW, AdamWConfig, global_grad_norm};
use crate::train::schedule::WarmupCosine;
use crate::train::step::StepOutput;
use crate::train::trainer::{INTERRUPTS, write_json};
use crate::weights::is_head;

pub const STATE_FILE: &str = "continual_state.json";
pub const REPORT_JSON: &str = "continual.json";

/// What a checkpoint adds for continual learning.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContinualState {
    pub continual: ContinualConfig,
    pub class_order: Vec<usize>,
    pub task_classes: Vec<Vec<usize>>,
    /// Tasks (phases, for `joint`) completed.
    pub tasks_done: usize,
    pub acc_matrix: Vec<Vec<f64>>,
    pub task_seconds: Vec<f64>,
    pub global_step: u64,
}

impl ContinualState {
    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join(STATE_FILE);
        let s = std::fs::read(&p).map_err(|_| {
            Error::Checkpoint(format!(
                "{} has no {STATE_FILE}: it is not a `vitrs continual` checkpoint (use runs/<run>/checkpoints/after_task_K)",
                dir.display()
            ))
        })?;
        serde_json::from_slice(&s).map_err(|e| Error::Checkpoint(format!("{}: {e}", p.display())))
    }
}

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
    pub tasks_completed: usize,
    /// R[i][j]: accuracy on task j after training task i (fractions).
    pub acc_matrix: Vec<Vec<f64>>,
    #[serde(flatten)]
    pub metrics: ContinualMetrics,
    pub trainable_params: usize,
    pub total_params: usize,
    /// Training seconds of each task (including the EWC Fisher; evaluation excluded).
    pub task_seconds: Vec<f64>,
    pub train_seconds: f64,
    pub peak_rss_mb: Option<f64>,
    pub replay_size: Option<usize>,
    pub ewc_lambda: Option<f64>,
    pub run_dir: PathBuf,
}

/// Train settings `continual` cannot honour, as one error.
fn check_train_flags(cfg: &Config, cl: &ContinualConfig) -> Result<()> {
    if cfg.accum_steps != 1 {
        return Err(Error::Config(
            "vitrs continual does not support --accum-steps (use a smaller --batch-size)".into(),
        ));
    }
    if cfg.ema_decay > 0.0 {
        return Err(Error::Config(
            "vitrs continual does not keep an EMA: drop --ema-decay".into(),
        ));
    }
    if cfg.precision == Precision::F16 {
        return Err(Error::Config(
            "vitrs continual has no f16 loss scaling: use --precision bf16 or f32".into(),
        ));
    }
    if cl.scenario == Scenario::TaskIl && (cfg.mixup > 0.0 || cfg.cutmix > 0.0) {
        return Err(Error::Config(
            "--scenario task-il cannot mix images of different tasks: drop --mixup/--cutmix".into(),
        ));
    }
    if cl.strategy.uses_replay() && cfg.batch_size < 2 {
        return Err(Error::Config(
            "replay mixes new and stored examples in every batch: --batch-size must be at least 2"
                .into(),
        ));
    }
    if cfg.adapter != AdapterKind::None || cfg.adapter_from.is_some() {
        return Err(Error::Config(
            "vitrs continual sets up its adapters itself: use --strategy lora or lora+replay (with --lora-rank, --lora-alpha, --lora-targets) instead of --adapter/--adapter-from".into(),
        ));
    }
    if cl.strategy.uses_lora() && cfg.freeze_backbone {
        return Err(Error::Config(
            "--strategy lora already freezes the backbone: drop --freeze-backbone".into(),
        ));
    }
    Ok(())
}

/// The indices of `data` whose label is in `classes`.
fn indices_of(data: &Dataset, classes: &[usize]) -> Vec<usize> {
    (0..data.len())
        .filter(|&i| classes.contains(&(data.labels[i] as usize)))
        .collect()
}

/// (correct, images) of `model` on every batch of `loader` (this rank's shard), logits
/// masked to `mask_classes` (task-IL).
fn accuracy(
    model: &VisionTransformer,
    loader: &Loader,
    mask_classes: Option<&[usize]>,
    device: &Device,
) -> [f64; 2] {
    let (mut correct, mut n) = (0usize, 0usize);
    for batch in loader.epoch(0, 0) {
        if batch.is_empty() {
            continue; // the end of a shorter shard
        }
        let mut logits = model.forward(batch.images_tensor(device), &Ctx::eval());
        if let Some(classes) = mask_classes {
            let tasks = [classes.to_vec()];
            let m = task_masks(&vec![0; batch.len()], &tasks, batch.num_classes);
            logits = logits
                + Tensor::<2>::from_data(
                    TensorData::new(m, [batch.len(), batch.num_classes]),
                    device,
                );
        }
        correct += crate::train::step::count_correct(logits, &batch.labels);
        n += batch.len();
    }
    [correct as f64, n as f64]
}

pub struct Outcome {
    pub report: ContinualReport,
    /// Set when `--stop-after-task` ended the run early: the checkpoint to resume from.
    pub stopped_at: Option<PathBuf>,
}

/// Run (or continue) a continual-learning sequence. `cl` is the resumed run's own when
/// `cfg.resume_from` is set.
pub fn run(cfg: Config, cl: ContinualConfig) -> Result<Outcome> {
    cl.validate()?;
    check_train_flags(&cfg, &cl)?;
    let resumed = match &cfg.resume_from {
        Some(dir) => Some(ContinualState::load(dir)?),
        None => None,
    };
    // Data-parallel under mpirun/srun: each rank trains on its shard of every batch, and the
    // gradients, counts, accuracies and the Fisher are summed over ranks (see the README).
    let dist = crate::dist::world();
    let run = crate::train::prepare(cfg)?;
    let cfg = run.config.clone();
    let vit: VitConfig = run.vit_config.clone();
    let (device, ad) = (
        run.device.clone(),
        crate::device::autodiff(&run.device, cfg.grad_checkpointing),
    );
    let train_data = run.train.dataset().clone();
    let test_data = run.val.dataset().clone();
    let num_classes = vit.num_classes;
    let data_classes = train_data.num_classes();
    let (order, tasks) = match &resumed {
        Some(s) => (s.class_order.clone(), s.task_classes.clone()),
        None => {
            let order = class_order(&cl.class_order, &train_data.class_names, cfg.seed)?;
            let tasks = split_tasks(&order, cl.tasks)?;
            (order, tasks)
        }
    };
    let t_count = tasks.len();
    let task_of = task_of_class(&tasks, num_classes.max(data_classes));
    let task_il = cl.scenario == Scenario::TaskIl;
    let joint = cl.strategy == Strategy::Joint;
    let phases = if joint { 1 } else { t_count };
    // Only rank 0 talks (and writes); the others print nothing but errors.
    let say = |line: String| {
        if dist.is_main() {
            crate::log_line!("{line}");
        }
    };
    say(format!(
        "continual: {} tasks of {} classes ({}), strategy {}, {}; class order {:?}",
        t_count,
        tasks[0].len(),
        cl.class_order,
        cl.strategy.name(),
        cl.scenario.name(),
        order
    ));
    if cfg.warmup_epochs >= cl.epochs_per_task as f64 {
        say(format!(
            "note: --warmup-epochs {} is not shorter than --epochs-per-task {}: every task is all warmup (the LR never reaches --lr)",
            cfg.warmup_epochs, cl.epochs_per_task
        ));
    }

    // The model, as `train` builds it.
    let mut model = VisionTransformer::new(&vit, cfg.seed, &ad)?;
    if let Some(w) = &run.init_weights {
        model = load_state_dict_keeping(model, w, &ad, is_head)?;
    }
    if cfg.freeze_backbone {
        model = set_trainable(model, is_head);
    }
    // LoRA strategies: the backbone frozen, adapters and the head (and --train-modules) train.
    let lora_cfg = cl.strategy.uses_lora().then(|| {
        let mut modules = cfg.train_modules.clone();
        if !modules.iter().any(|m| m == "head") {
            modules.push("head".into());
        }
        LoraConfig {
            rank: cfg.lora_rank,
            alpha: cfg.lora_alpha,
            dropout: cfg.lora_dropout,
            targets: cfg.lora_targets.clone(),
            modules_to_save: modules,
            use_rslora: false,
        }
    });
    if let Some(l) = &lora_cfg {
        model = lora::add_adapters(model, l, cfg.seed, &ad)?;
    }
    let new_optim = |model: &VisionTransformer| {
        let trainable: Vec<(String, usize)> = named_params(model)
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| (p.path, p.shape.len()))
            .collect();
        AdamW::new(
            AdamWConfig {
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                weight_decay: cfg.weight_decay,
                layer_decay: cfg.layer_decay,
                depth: vit.depth,
            },
            &trainable,
        )
    };
    let mut optim = new_optim(&model);
    // --lora-per-task: the adapter each finished task trained (grows by one per task).
    let mut task_adapters: Vec<ParamMap> = Vec::new();
    let mut ewc = Ewc::new(cl.ewc_lambda, cl.ewc_gamma);
    let mut buffer = ReplayBuffer::new(
        if cl.strategy.uses_replay() {
            cl.replay_size
        } else {
            0
        },
        train_data.height,
        train_data.width,
        train_data.channels,
    );
    let mut state = ContinualState {
        continual: cl.clone(),
        class_order: order.clone(),
        task_classes: tasks.clone(),
        tasks_done: 0,
        acc_matrix: Vec::new(),
        task_seconds: Vec::new(),
        global_step: 0,
    };
    if let (Some(dir), Some(s)) = (&cfg.resume_from, resumed) {
        let ck = checkpoint::load(dir)?;
        if ck.vit_config != vit {
            return Err(Error::Checkpoint(format!(
                "{} holds a different model than this run; resume with the same model flags",
                dir.display()
            )));
        }
        model = load_state_dict(model, &ck.model, &ad)?;
        if let Some(opt) = &ck.optimizer {
            optim.load_state_dict(opt, s.global_step, &ad)?;
        }
        let ewc_path = dir.join("ewc.safetensors");
        if ewc_path.exists() {
            ewc.load_state_dict(&read_safetensors(&ewc_path)?, &device);
        }
        if dir.join("replay.json").exists() {
            buffer = ReplayBuffer::load(dir)?;
        }
        let ad_path = dir.join("task_adapters.safetensors");
        if ad_path.exists() {
            task_adapters = load_task_adapters(&read_safetensors(&ad_path)?, &device);
        }
        say(format!(
            "resuming from {} after task {} of {}",
            dir.display(),
            s.tasks_done,
            phases
        ));
        state = s;
    }
    // Every rank starts from rank 0's weights (every rank built or read the same ones; this
    // makes it certain).
    model = crate::dist::broadcast_params(dist, model);
    let (total_params, trainable_params_n) = count_params(&model);
    let ckpt_root = run.run_dir.join("checkpoints");
    let mut tb = match dist.is_main() {
        true => Some(EventWriter::create(&run.run_dir)?),
        false => None,
    };
    let mut last_report = None;

    // Test splits per task, built once.
    let test_loaders: Vec<Loader> = tasks
        .iter()
        .map(|c| {
            let idx = indices_of(&test_data, c);
            run.val
                .with_data(Arc::new(test_data.subset(&idx)), cfg.batch_size)
        })
        .collect();
    let bs = cfg.batch_size;
    let mut stopped_at = None;

    for t in state.tasks_done..phases {
        let task_start = Instant::now();
        if let (Some(l), true, true) = (&lora_cfg, cl.lora_per_task, t > 0) {
            // A fresh adapter (B = 0: the frozen base) and fresh optimizer state for it.
            model = lora::add_adapters(model, l, cfg.seed.wrapping_add(t as u64), &ad)?;
            optim = new_optim(&model);
        }
        let classes: Vec<usize> = if joint {
            order.clone()
        } else {
            tasks[t].clone()
        };
        let train_idx = indices_of(&train_data, &classes);
        let task_ds = Arc::new(train_data.subset(&train_idx));
        let replay_n = if buffer.is_empty() {
            0
        } else {
            // At least one new and one replayed example per batch (bs ≥ 2 is checked).
            ((bs as f64 * cl.replay_ratio).round() as usize).clamp(1, bs - 1)
        };
        let task_loader = run.train.with_data(task_ds.clone(), bs - replay_n);
        let replay_loader = (replay_n > 0).then(|| {
            run.train.with_data(
                Arc::new(buffer.to_dataset(&train_data.class_names)),
                replay_n,
            )
        });
        let steps_per_epoch = task_loader.num_batches();
        let layout = crate::dist::grad_layout(&model);
        let schedule = WarmupCosine::new(
            cfg.lr,
            cfg.warmup_start_lr,
            cfg.min_lr,
            cfg.warmup_epochs,
            cl.epochs_per_task,
            steps_per_epoch,
        );
        say(format!(
            "task {}/{}: classes {:?}, {} train images{}, {} steps/epoch",
            t + 1,
            phases,
            classes,
            train_idx.len(),
            if replay_n > 0 {
                format!(
                    " + {replay_n} replayed per {}batch from {} stored",
                    if dist.size() > 1 { "process's " } else { "" },
                    buffer.len()
                )
            } else {
                String::new()
            },
            steps_per_epoch
        ));
        let mut task_step = 0u64;
        for e in 0..cl.epochs_per_task {
            let epoch_id = t * cl.epochs_per_task + e;
            let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
            let epoch_start = Instant::now();
            for (b, batch) in task_loader.epoch(epoch_id, 0).into_iter().enumerate() {
                let mut batch = batch;
                if let Some(rl) = &replay_loader {
                    let mut rng =
                        Rng::at(cfg.seed, stream::REPLAY, &[t as u64, e as u64, b as u64]);
                    // The global batch's draw, the same on every rank; each takes its share.
                    let all = sample_indices(rl.dataset().len(), replay_n * dist.size(), &mut rng);
                    let idx: Vec<usize> = all
                        .into_iter()
                        .skip(dist.rank())
                        .step_by(dist.size())
                        .collect();
                    batch = batch.concat(rl.make_batch(epoch_id, b, &idx));
                }
                let mask = task_il.then(|| {
                    let rows: Vec<usize> = batch.labels.iter().map(|&y| task_of[y]).collect();
                    batch.targets = task_targets(
                        &batch.labels,
                        &task_of,
                        &tasks,
                        batch.num_classes,
                        cfg.label_smoothing,
                    );
                    task_masks(&rows, &tasks, batch.num_classes)
                });
                // Dropout masks differ between ranks (as between the samples of one batch).
                let ctx = Ctx::train(cfg.seed, &[state.global_step, 0, dist.rank() as u64])
                    .with_precision(cfg.precision, 1.0);
                let n = batch.len();
                let out = match n {
                    0 => StepOutput::default(), // this rank's shard ran out; it still joins
                    _ => masked_step(&model, &batch, mask.as_deref(), &ad, &ctx),
                };
                let mut grads = out.grads;
                // [images, Σ loss, correct] of the global batch.
                let mut counts = [n as f64, out.loss * n as f64, out.correct as f64];
                if dist.size() > 1 {
                    // Σ n_r·g_r over ranks / Σ n_r: the mean gradient of the global batch.
                    grads = grads.into_iter().map(|(k, g)| (k, g * n as f64)).collect();
                    crate::dist::all_reduce_grads(dist, &layout, &mut grads, &mut counts, &device);
                    grads = grads.into_iter().map(|(k, g)| (k, g / counts[0])).collect();
                }
                let step_loss = counts[1] / counts[0].max(1.0);
                if ewc.is_active() {
                    ewc.add_grads(&mut grads, &trainable_params(&model));
                }
                let lr = schedule.lr(task_step);
                let norm = global_grad_norm(&grads);
                if !step_loss.is_finite() || !norm.is_finite() {
                    return Err(Error::Training(format!(
                        "loss became {} (gradient norm {norm}) in task {}, step {}; lower --lr or --ewc-lambda, clip harder (--grad-clip 0.5)",
                        step_loss,
                        t + 1,
                        state.global_step
                    )));
                }
                let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
                    cfg.grad_clip / (norm + 1e-6)
                } else {
                    1.0
                };
                model = optim.step(model, &grads, lr, scale);
                state.global_step += 1;
                task_step += 1;
                loss_sum += counts[1];
                correct += counts[2] as usize;
                seen += counts[0] as usize;
                if let Some(tb) = tb
                    .as_mut()
                    .filter(|_| state.global_step.is_multiple_of(cfg.log_every as u64))
                {
                    let step = state.global_step as i64;
                    tb.scalar("train/loss", step, step_loss as f32, now_secs())?;
                    tb.scalar("train/lr", step, lr as f32, now_secs())?;
                    if ewc.is_active() {
                        let p = ewc.penalty(&trainable_params(&model));
                        tb.scalar("train/ewc_penalty", step, p as f32, now_secs())?;
                    }
                }
                // Rank 0 decides for everyone, so that all ranks stop after the same step.
                if decide(dist, u32::from(INTERRUPTS.load(Ordering::SeqCst) > 0)) == 1 {
                    return Err(Error::Training(format!(
                        "interrupted in task {}; resume from the last after_task_K checkpoint in {}",
                        t + 1,
                        ckpt_root.display()
                    )));
                }
            }
            say(format!(
                "task {}/{} epoch {}/{}: train loss {:.4} acc {:.2}% | {:.0} img/s",
                t + 1,
                phases,
                e + 1,
                cl.epochs_per_task,
                loss_sum / seen.max(1) as f64,
                100.0 * correct as f64 / seen.max(1) as f64,
                seen as f64 / epoch_start.elapsed().as_secs_f64()
            ));
        }
        let last = t + 1 == phases;
        if buffer.capacity > 0 {
            let mut rng = Rng::at(cfg.seed, stream::REPLAY, &[t as u64, u64::MAX]);
            buffer.add(&train_data, &train_idx, &mut rng);
        }
        if cl.strategy.uses_ewc() && !last {
            let fisher_loader = run.val.with_data(task_ds.clone(), 1);
            let mut rng = Rng::at(cfg.seed, stream::FISHER, &[t as u64]);
            let pick = sample_indices(task_ds.len(), cl.ewc_samples, &mut rng);
            let mut sum = FisherSum::default();
            // Each rank takes every N-th example of the one global draw; the sums and the
            // count are added up over ranks, so the mean is the one-process Fisher.
            for (k, &i) in pick.iter().enumerate() {
                if k % dist.size() != dist.rank() {
                    continue;
                }
                let b = fisher_loader.make_batch(0, k, &[i]);
                let y = b.labels[0];
                let mask = task_il.then(|| task_masks(&[task_of[y]], &tasks, b.num_classes));
                sum.add(masked_step(&model, &b, mask.as_deref(), &ad, &Ctx::eval()).grads);
            }
            let fisher = sum.mean_over(dist, &layout, &device);
            ewc.consolidate(fisher, trainable_params(&model));
        }
        if cl.lora_per_task {
            task_adapters.push(adapter_params(&model));
        }
        let task_secs = task_start.elapsed().as_secs_f64();

        // Every task's test split, seen or not. Under task-IL with one adapter per task, a
        // trained task is tested with its own adapter (the task id is given).
        let eval_model = model.valid();
        // [correct, images] of every task on this rank's shard, then summed over ranks.
        let mut counts: Vec<f64> = test_loaders
            .iter()
            .enumerate()
            .flat_map(|(j, l)| {
                let mask = task_il.then_some(&tasks[j][..]);
                match task_adapters.get(j).filter(|_| task_il) {
                    Some(a) => {
                        let m = map_params(eval_model.clone(), |p, _| a.get(p).cloned());
                        accuracy(&m, l, mask, &device)
                    }
                    None => accuracy(&eval_model, l, mask, &device),
                }
            })
            .collect();
        dist.all_reduce_sum_f64(&mut counts);
        let row: Vec<f64> = counts.chunks(2).map(|c| c[0] / c[1].max(1.0)).collect();
        if let Some(tb) = &mut tb {
            for (j, a) in row.iter().enumerate() {
                tb.scalar(
                    &format!("task_{}/acc", j + 1),
                    (t + 1) as i64,
                    *a as f32,
                    now_secs(),
                )?;
            }
        }
        state.acc_matrix.push(row.clone());
        state.task_seconds.push(task_secs);
        state.tasks_done = t + 1;
        let m = if joint {
            joint_metrics(&row)
        } else {
            metrics(&state.acc_matrix)
        };
        if let Some(tb) = &mut tb {
            tb.scalar("avg_acc", (t + 1) as i64, m.avg_acc as f32, now_secs())?;
            tb.flush()?;
        }
        say(format!(
            "after task {}: accuracy per task [{}] | average over seen tasks {:.2}%{} ({:.0} s)",
            t + 1,
            row.iter()
                .map(|a| format!("{:.1}", 100.0 * a))
                .collect::<Vec<_>>()
                .join(", "),
            100.0 * m.avg_acc,
            m.avg_forgetting
                .map(|f| format!(", forgetting {:.2}", f))
                .unwrap_or_default(),
            task_secs
        ));

        let dest = ckpt_root.join(format!("after_task_{}", t + 1));
        let ck = Checkpoint {
            model: state_dict(&model),
            vit_config: vit.clone(),
            optimizer: Some(optim.state_dict()),
            ema: None,
            state: Some(TrainingState {
                epoch: (t + 1) * cl.epochs_per_task,
                global_step: state.global_step,
                elapsed_secs: state.task_seconds.iter().sum(),
                ..Default::default()
            }),
            train_config: Some(cfg.clone()),
            class_names: Some(run.class_names.clone()),
            // The continual checkpoint keeps the whole model (adapters included).
            adapter: None,
        };
        // Only rank 0 writes (every rank holds the same weights, Fisher and buffer).
        if dist.is_main() {
            checkpoint::save_with(&dest, &ck, |dir| {
                let s = serde_json::to_vec_pretty(&state).map_err(|e| Error::Io(e.to_string()))?;
                crate::util::write_file_synced(&dir.join(STATE_FILE), &s)?;
                if ewc.is_active() {
                    crate::model::io::write_safetensors(
                        &dir.join("ewc.safetensors"),
                        &ewc.state_dict(),
                        None,
                    )?;
                }
                if buffer.capacity > 0 {
                    buffer.save(dir)?;
                }
                if !task_adapters.is_empty() {
                    crate::model::io::write_safetensors(
                        &dir.join("task_adapters.safetensors"),
                        &task_adapters_state(&task_adapters),
                        None,
                    )?;
                }
                Ok(())
            })?;
        }
        let report = ContinualReport {
            strategy: cl.strategy.name().into(),
            scenario: cl.scenario.name().into(),
            dataset: format!("{:?}", cfg.dataset),
            model: cfg.pretrained.clone().unwrap_or(cfg.model.clone()),
            tasks: t_count,
            epochs_per_task: cl.epochs_per_task,
            class_order: order.clone(),
            task_classes: tasks.clone(),
            tasks_completed: state.tasks_done,
            acc_matrix: state.acc_matrix.clone(),
            metrics: m,
            trainable_params: trainable_params_n,
            total_params,
            task_seconds: state.task_seconds.clone(),
            train_seconds: state.task_seconds.iter().sum(),
            peak_rss_mb: crate::util::peak_rss_mb(),
            replay_size: cl.strategy.uses_replay().then_some(cl.replay_size),
            ewc_lambda: cl.strategy.uses_ewc().then_some(cl.ewc_lambda),
            run_dir: run.run_dir.clone(),
        };
        if dist.is_main() {
            write_outputs(&run.run_dir, &report)?;
        }
        last_report = Some(report);
        if cl.stop_after_task == t + 1 && !last {
            say(format!(
                "stopped after task {} (--stop-after-task); continue with --resume-from {}",
                t + 1,
                dest.display()
            ));
            stopped_at = Some(dest);
            break;
        }
    }
    // Nothing left to train (a finished run resumed): the report it wrote.
    let report: ContinualReport = match last_report {
        Some(r) => r,
        None => {
            let p = run.run_dir.join(REPORT_JSON);
            let s = std::fs::read(&p).map_err(|e| Error::io(&p, "reading", e))?;
            serde_json::from_slice(&s).map_err(|e| Error::Io(format!("{}: {e}", p.display())))?
        }
    };
    Ok(Outcome { report, stopped_at })
}

/// The adapter parameters of `model` by path.
fn adapter_params(model: &VisionTransformer) -> ParamMap {
    named_params(model)
        .into_iter()
        .filter(|p| is_adapter(&p.path))
        .map(|p| (p.path, p.value))
        .collect()
}

/// Per-task adapters as `task<k>.<path>` host tensors.
fn task_adapters_state(adapters: &[ParamMap]) -> std::collections::BTreeMap<String, HostTensor> {
    let mut out = std::collections::BTreeMap::new();
    for (k, a) in adapters.iter().enumerate() {
        for (p, t) in a {
            let n = t.dims()[0];
            out.insert(
                format!("task{k}.{p}"),
                HostTensor::from_tensor(t.clone(), &[n]),
            );
        }
    }
    out
}

fn load_task_adapters(
    sd: &std::collections::BTreeMap<String, HostTensor>,
    device: &Device,
) -> Vec<ParamMap> {
    let mut out: Vec<ParamMap> = Vec::new();
    for (k, h) in sd {
        let Some((task, path)) = k
            .strip_prefix("task")
            .and_then(|r| r.split_once('.'))
            .and_then(|(t, p)| Some((t.parse::<usize>().ok()?, p)))
        else {
            continue;
        };
        if out.len() <= task {
            out.resize_with(task + 1, ParamMap::new);
        }
        let t = Tensor::<1>::from_data(TensorData::new(h.data.clone(), [h.data.len()]), device);
        out[task].insert(path.to_string(), t);
    }
    out
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
        r.tasks_completed,
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
            r.tasks_completed,
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
