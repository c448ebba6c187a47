//! The task loop: each task is one phase of the training engine (`train::engine`), with the
//! continual strategies as its hooks (a replayed share of every batch, the task-IL logit
//! mask, the EWC penalty's gradient). After every task: the replay buffer and the Fisher are
//! updated, every task is evaluated (a row of R), and `after_task_K` is written so that
//! `--resume-from` continues exactly; inside a task the engine's checkpoints (`last`, the
//! time limit, `--save-every`) carry the same state, so a run stopped mid-task resumes too.
//!
//! A checkpoint adds to the usual one (model, optimizer, EMA, training state, config,
//! classes): `continual_state.json` (class order, R so far, times, settings),
//! `ewc.safetensors` (Fisher and θ*), `replay.json` + `replay.u8` (the buffer) and
//! `task_adapters.safetensors`. All randomness is addressed by (seed, task, epoch,
//! batch/step), so nothing else is state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::ewc::{Ewc, FisherSum, ParamMap, trainable_params};
use super::metrics::{joint_metrics, metrics};
use super::replay::{ReplayBuffer, sample_indices};
use super::report::{ContinualReport, write_outputs};
use super::{
    ContinualConfig, Scenario, Strategy, class_order, split_tasks, task_masks, task_of_class,
    task_targets,
};
use crate::config::{AdapterKind, Config};
use crate::data::batch::HostBatch;
use crate::data::dataset::Dataset;
use crate::data::loader::Loader;
use crate::error::{Error, Result};
use crate::model::io::{
    HostTensor, load_state_dict, load_state_dict_keeping, read_safetensors, state_dict,
};
use crate::model::layers::Ctx;
use crate::model::lora::{self, is_adapter};
use crate::model::params::{count_params, map_params, named_params, set_trainable};
use crate::model::{Model, VitConfig};
use crate::report::tensorboard::now_secs;
use crate::rng::{Rng, stream};
use crate::train::checkpoint::{self, Checkpoint};
use crate::train::engine::{BatchPos, Engine, Hooks, Phase, StopReason};
use crate::train::evaluate::evaluate_preds;
use crate::train::optim;
use crate::train::schedule::WarmupCosine;
use crate::train::step::train_step_masked;
use crate::weights::is_head;

pub const STATE_FILE: &str = "continual_state.json";

/// What a checkpoint adds for continual learning.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContinualState {
    pub continual: ContinualConfig,
    pub class_order: Vec<usize>,
    pub task_classes: Vec<Vec<usize>>,
    /// Tasks (phases, for `joint`) completed.
    pub tasks_done: usize,
    pub acc_matrix: Vec<Vec<f64>>,
    /// With `--ema-decay`: R of the EMA weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ema_acc_matrix: Vec<Vec<f64>>,
    pub task_seconds: Vec<f64>,
    pub global_step: u64,
    /// Set while task `tasks_done + 1` is under way (a checkpoint written inside it): the
    /// global step and the run's seconds at its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_start: Option<(u64, f64)>,
}

impl ContinualState {
    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join(STATE_FILE);
        let s = std::fs::read(&p).map_err(|_| {
            Error::Checkpoint(format!(
                "{} has no {STATE_FILE}: it is not a `vitrs continual` checkpoint (use runs/<run>/checkpoints/after_task_K or last)",
                dir.display()
            ))
        })?;
        serde_json::from_slice(&s).map_err(|e| Error::Checkpoint(format!("{}: {e}", p.display())))
    }
}

/// Settings whose meaning in a task sequence is unclear, as one error each. Every other
/// `train` flag acts in `continual` as it does in `train` (tests/flags.rs checks the table).
fn check_train_flags(cfg: &Config, cl: &ContinualConfig) -> Result<()> {
    if cl.scenario == Scenario::TaskIl && (cfg.augment.mixup > 0.0 || cfg.augment.cutmix > 0.0) {
        return Err(Error::Config(
            "--scenario task-il cannot mix images of different tasks: drop --mixup/--cutmix".into(),
        ));
    }
    if cl.scenario == Scenario::TaskIl && cfg.distill.teacher.is_some() {
        return Err(Error::Config(
            "--scenario task-il masks the student's logits to the task but not the teacher's: drop --teacher or use --scenario class-il".into(),
        ));
    }
    if cl.strategy.uses_replay() && cfg.optim.batch_size < 2 {
        return Err(Error::Config(
            "replay mixes new and stored examples in every batch: --batch-size must be at least 2"
                .into(),
        ));
    }
    if cfg.peft.adapter != AdapterKind::None || cfg.peft.adapter_from.is_some() {
        return Err(Error::Config(
            "vitrs continual sets up its adapters itself: use --strategy lora or lora+replay (with --lora-rank, --lora-alpha, --lora-targets) instead of --adapter/--adapter-from".into(),
        ));
    }
    if cl.strategy.uses_lora() && cfg.peft.freeze_backbone {
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

pub struct Outcome {
    pub report: ContinualReport,
    /// Set when the run stopped before its end (`--stop-after-task`, the time limit, a
    /// signal, `--max-steps`): the checkpoint to resume from.
    pub stopped_at: Option<PathBuf>,
}

/// Everything a continual checkpoint holds besides the engine's state.
struct Memory {
    state: ContinualState,
    ewc: Ewc,
    buffer: ReplayBuffer,
    /// --lora-per-task: the adapter each finished task trained (grows by one per task).
    task_adapters: Vec<ParamMap>,
}

/// Writes checkpoints of a continual run (rank 0 only; every rank holds the same state).
struct Saver<'a> {
    ckpt_root: PathBuf,
    vit: &'a VitConfig,
    cfg: &'a Config,
    class_names: &'a [String],
}

impl Saver<'_> {
    fn save(&self, name: &str, e: &Engine, mem: &Memory) -> Result<PathBuf> {
        let dest = self.ckpt_root.join(name);
        if !crate::dist::world().is_main() {
            return Ok(dest);
        }
        let mut state = mem.state.clone();
        state.global_step = e.state.global_step;
        let ck = Checkpoint {
            model: state_dict(e.model()),
            vit_config: self.vit.clone(),
            optimizer: Some(e.optim.state_dict()),
            ema: e.ema.as_ref().map(|m| state_dict(&m.model)),
            state: Some(e.state.clone()),
            train_config: Some(self.cfg.clone()),
            class_names: Some(self.class_names.to_vec()),
            // The continual checkpoint keeps the whole model (adapters included).
            adapter: None,
        };
        checkpoint::save_with(&dest, &ck, |dir| {
            let s = serde_json::to_vec_pretty(&state).map_err(|e| Error::Io(e.to_string()))?;
            crate::util::write_file_synced(&dir.join(STATE_FILE), &s)?;
            if mem.ewc.is_active() {
                crate::model::io::write_safetensors(
                    &dir.join("ewc.safetensors"),
                    &mem.ewc.state_dict(),
                    None,
                )?;
            }
            if mem.buffer.capacity > 0 {
                mem.buffer.save(dir)?;
            }
            if !mem.task_adapters.is_empty() {
                crate::model::io::write_safetensors(
                    &dir.join("task_adapters.safetensors"),
                    &task_adapters_state(&mem.task_adapters),
                    None,
                )?;
            }
            Ok(())
        })?;
        Ok(dest)
    }
}

/// Task-IL: the task of every class, the tasks, and the label smoothing of the targets.
#[derive(Clone, Copy)]
struct TaskIl<'a> {
    task_of: &'a [usize],
    tasks: &'a [Vec<usize>],
    smoothing: f64,
}

/// The continual strategies as hooks of one task's phase.
struct TaskHooks<'a> {
    saver: &'a Saver<'a>,
    mem: &'a Memory,
    seed: u64,
    task: usize,
    /// Replayed examples per batch and the buffer's loader (once it holds data).
    replay: Option<(usize, Loader)>,
    task_il: Option<TaskIl<'a>>,
    ewc_hint: &'static str,
    /// One epoch per task: the best epoch is the last, so `best_model` is never restored
    /// and need not be written.
    single_epoch: bool,
}

impl Hooks for TaskHooks<'_> {
    fn batch(
        &mut self,
        mut batch: HostBatch,
        pos: BatchPos,
    ) -> Result<(HostBatch, Option<Vec<f32>>)> {
        let dist = crate::dist::world();
        if let Some((n, rl)) = &self.replay {
            let mut rng = Rng::at(
                self.seed,
                stream::REPLAY,
                &[self.task as u64, pos.epoch as u64, pos.micro as u64],
            );
            // The global batch's draw, the same on every rank; each takes its share.
            let all = sample_indices(rl.dataset().len(), n * dist.size(), &mut rng);
            let idx: Vec<usize> = all
                .into_iter()
                .skip(dist.rank())
                .step_by(dist.size())
                .collect();
            batch = batch.concat(rl.make_batch(pos.data_epoch, pos.micro, &idx));
        }
        let mask = self.task_il.map(|t| {
            let rows: Vec<usize> = batch.labels.iter().map(|&y| t.task_of[y]).collect();
            batch.targets = task_targets(
                &batch.labels,
                t.task_of,
                t.tasks,
                batch.num_classes,
                t.smoothing,
            );
            task_masks(&rows, t.tasks, batch.num_classes)
        });
        Ok((batch, mask))
    }

    fn add_grads(&mut self, model: &Model, grads: &mut BTreeMap<String, Tensor<1>>) {
        if self.mem.ewc.is_active() {
            self.mem.ewc.add_grads(grads, &trainable_params(model));
        }
    }

    fn log(&mut self, model: &Model) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        if self.mem.ewc.is_active() {
            out.insert(
                "ewc_penalty".into(),
                self.mem.ewc.penalty(&trainable_params(model)),
            );
        }
        out
    }

    fn divergence_hint(&self) -> &str {
        self.ewc_hint
    }

    fn save(&mut self, engine: &Engine, name: &str) -> Result<PathBuf> {
        if self.single_epoch && name == "best_model" {
            return Ok(self.saver.ckpt_root.join(name));
        }
        self.saver.save(name, engine, self.mem)
    }
}

/// Run (or continue) a continual-learning sequence. `cl` is the resumed run's own when
/// `cfg.resume_from` is set.
pub fn run(cfg: Config, cl: ContinualConfig) -> Result<Outcome> {
    cl.validate()?;
    check_train_flags(&cfg, &cl)?;
    let resumed = match &cfg.run.resume_from {
        Some(dir) => Some(ContinualState::load(dir)?),
        None => None,
    };
    // Data-parallel under mpirun/srun: each rank trains on its shard of every batch, and the
    // gradients, counts, accuracies and the Fisher are summed over ranks (docs/scale-out.md).
    let dist = crate::dist::world();
    let run = crate::train::prepare(cfg)?;
    let cfg = run.config.clone();
    let vit: VitConfig = run.vit_config.clone();
    let (device, ad) = (
        run.device.clone(),
        crate::device::autodiff(&run.device, cfg.run.grad_checkpointing),
    );
    let train_data = run.train.dataset().clone();
    let test_data = run.val.dataset().clone();
    let num_classes = vit.num_classes;
    let data_classes = train_data.num_classes();
    let (order, tasks) = match &resumed {
        Some(s) => (s.class_order.clone(), s.task_classes.clone()),
        None => {
            let order = class_order(&cl.class_order, &train_data.class_names, cfg.run.seed)?;
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
    if cfg.optim.warmup_epochs >= cl.epochs_per_task as f64 {
        say(format!(
            "note: --warmup-epochs {} is not shorter than --epochs-per-task {}: every task is all warmup (the LR never reaches --lr)",
            cfg.optim.warmup_epochs, cl.epochs_per_task
        ));
    }

    // The model, as `train` builds it.
    let mut model = Model::new(&vit, cfg.run.seed, &ad)?;
    if let Some(w) = &run.init_weights {
        model = load_state_dict_keeping(model, w, &ad, is_head)?;
    }
    if cfg.peft.freeze_backbone {
        model = set_trainable(model, is_head);
    }
    // LoRA strategies: the backbone frozen, adapters and the head (and --train-modules) train.
    let lora_cfg = cl.strategy.uses_lora().then(|| {
        let mut l = cfg.peft.lora();
        if !l.modules_to_save.iter().any(|m| m == "head") {
            l.modules_to_save.push("head".into());
        }
        l
    });
    if let Some(l) = &lora_cfg {
        model = model.map_vit(|m| lora::add_adapters(m, l, cfg.run.seed, &ad))?;
    }
    let mut mem = Memory {
        state: ContinualState {
            continual: cl.clone(),
            class_order: order.clone(),
            task_classes: tasks.clone(),
            tasks_done: 0,
            acc_matrix: Vec::new(),
            ema_acc_matrix: Vec::new(),
            task_seconds: Vec::new(),
            global_step: 0,
            task_start: None,
        },
        ewc: Ewc::new(cl.ewc_lambda, cl.ewc_gamma),
        buffer: ReplayBuffer::new(
            if cl.strategy.uses_replay() {
                cl.replay_size
            } else {
                0
            },
            train_data.height,
            train_data.width,
            train_data.channels,
        ),
        task_adapters: Vec::new(),
    };
    let ck = match &cfg.run.resume_from {
        Some(dir) => {
            let ck = checkpoint::load(dir)?;
            checkpoint::check_resume(dir, &ck, &vit, &run.class_names)?;
            model = load_state_dict(model, &ck.model, &ad)?;
            Some((dir.as_path(), ck))
        }
        None => None,
    };
    // The continual checkpoint holds the whole model: nothing is kept from elsewhere.
    let mut engine = Engine::start(
        &cfg,
        &vit,
        model,
        ck.as_ref().map(|(d, c)| (*d, c)),
        &|_| false,
        &run.run_dir,
        &device,
        &ad,
    )?;
    if let (Some((dir, _)), Some(s)) = (&ck, resumed) {
        let ewc_path = dir.join("ewc.safetensors");
        if ewc_path.exists() {
            mem.ewc
                .load_state_dict(&read_safetensors(&ewc_path)?, &device);
        }
        if dir.join("replay.json").exists() {
            mem.buffer = ReplayBuffer::load(dir)?;
        }
        let ad_path = dir.join("task_adapters.safetensors");
        if ad_path.exists() {
            mem.task_adapters = load_task_adapters(&read_safetensors(&ad_path)?, &device);
        }
        say(format!(
            "resuming from {} after task {} of {}{}",
            dir.display(),
            s.tasks_done,
            phases,
            match s.task_start {
                Some(_) => format!(
                    " (task {} at step {})",
                    s.tasks_done + 1,
                    engine.state.global_step
                ),
                None => String::new(),
            }
        ));
        mem.state = s;
    }
    let ckpt_root = engine.ckpt_root.clone();
    let (total_params, trainable_params_n) = count_params(engine.model());
    let saver = Saver {
        ckpt_root: ckpt_root.clone(),
        vit: &vit,
        cfg: &cfg,
        class_names: &run.class_names,
    };

    // Test splits per task, built once.
    let test_loaders: Vec<Loader> = tasks
        .iter()
        .map(|c| {
            let idx = indices_of(&test_data, c);
            run.val
                .with_data(Arc::new(test_data.subset(&idx)), cfg.optim.batch_size)
        })
        .collect();
    let bs = cfg.optim.batch_size;
    // Why and where the run stopped before its end (`None`: every task trained).
    let mut stopped: Option<(&'static str, PathBuf)> = None;
    let report_of = |mem: &Memory, stop_reason: &str| {
        let m = if joint {
            joint_metrics(mem.state.acc_matrix.last().map_or(&[][..], |r| &r[..]))
        } else {
            metrics(&mem.state.acc_matrix)
        };
        ContinualReport {
            strategy: cl.strategy.name().into(),
            scenario: cl.scenario.name().into(),
            dataset: format!("{:?}", cfg.data.dataset),
            model: cfg
                .model
                .pretrained
                .clone()
                .unwrap_or(cfg.model.name.clone()),
            tasks: t_count,
            epochs_per_task: cl.epochs_per_task,
            class_order: order.clone(),
            task_classes: tasks.clone(),
            completed_tasks: mem.state.tasks_done,
            stop_reason: stop_reason.into(),
            acc_matrix: mem.state.acc_matrix.clone(),
            ema_acc_matrix: mem.state.ema_acc_matrix.clone(),
            metrics: m,
            trainable_params: trainable_params_n,
            total_params,
            task_seconds: mem.state.task_seconds.clone(),
            train_seconds: mem.state.task_seconds.iter().sum(),
            peak_rss_mb: crate::util::peak_rss_mb(),
            replay_size: cl.strategy.uses_replay().then_some(cl.replay_size),
            ewc_lambda: cl.strategy.uses_ewc().then_some(cl.ewc_lambda),
            run_dir: run.run_dir.clone(),
        }
    };

    for t in mem.state.tasks_done..phases {
        let mid_task = mem.state.task_start.is_some();
        if !mid_task {
            if let (Some(l), true, true) = (&lora_cfg, cl.lora_per_task, t > 0) {
                // A fresh adapter (B = 0: the frozen base) and fresh optimizer state for it.
                let seed = cfg.run.seed.wrapping_add(t as u64);
                engine.map_model(|m| m.map_vit(|v| lora::add_adapters(v, l, seed, &ad)))?;
                engine.optim = optim::adamw(&cfg.optim, engine.model(), vit.depth);
            }
            mem.state.task_start = Some((engine.state.global_step, engine.elapsed()));
            engine.reset_best();
        }
        let (step_base, start_secs) = mem.state.task_start.unwrap_or_default();
        let classes: Vec<usize> = if joint {
            order.clone()
        } else {
            tasks[t].clone()
        };
        let train_idx = indices_of(&train_data, &classes);
        let task_ds = Arc::new(train_data.subset(&train_idx));
        let replay_n = if mem.buffer.is_empty() {
            0
        } else {
            // At least one new and one replayed example per batch (bs ≥ 2 is checked).
            ((bs as f64 * cl.replay_ratio).round() as usize).clamp(1, bs - 1)
        };
        let task_loader = run.train.with_data(task_ds.clone(), bs - replay_n);
        let val_loader = match joint {
            true => run.val.clone(),
            false => test_loaders[t].clone(),
        };
        let steps_per_epoch = task_loader.num_batches().div_ceil(cfg.optim.accum_steps);
        let schedule = WarmupCosine::of(&cfg.optim, cl.epochs_per_task, steps_per_epoch);
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
                    mem.buffer.len()
                )
            } else {
                String::new()
            },
            steps_per_epoch
        ));
        let phase = Phase {
            train: &task_loader,
            val: &val_loader,
            val_classes: task_il.then_some(&classes[..]),
            epochs: cl.epochs_per_task,
            epoch_base: t * cl.epochs_per_task,
            data_epoch: t * cl.epochs_per_task,
            step_base,
            schedule: &schedule,
            label: format!("task {}/{} ", t + 1, phases),
        };
        let mut hooks = TaskHooks {
            saver: &saver,
            mem: &mem,
            seed: cfg.run.seed,
            task: t,
            replay: (replay_n > 0).then(|| {
                let data = Arc::new(mem.buffer.to_dataset(&train_data.class_names));
                (replay_n, run.train.with_data(data, replay_n))
            }),
            task_il: task_il.then_some(TaskIl {
                task_of: &task_of,
                tasks: &tasks,
                smoothing: cfg.augment.label_smoothing,
            }),
            single_epoch: cl.epochs_per_task == 1,
            ewc_hint: if mem.ewc.is_active() {
                " or --ewc-lambda"
            } else {
                ""
            },
        };
        let end = engine.fit(&phase, &mut hooks)?;
        if end.reason.is_pause() || end.reason == StopReason::MaxSteps {
            let last = ckpt_root.join("last");
            say(format!(
                "{} in task {} of {phases}: continue with --resume-from {}",
                end.reason.name(),
                t + 1,
                last.display()
            ));
            stopped = Some((end.reason.name(), last));
            break;
        }
        if engine.restore_best(&ckpt_root.join("best_model"), &|_| false)? {
            say(format!(
                "task {}: restored the best weights (epoch {}, val acc {:.2}%)",
                t + 1,
                engine.state.best_epoch,
                100.0 * engine.state.best_val_acc
            ));
        }
        let last = t + 1 == phases;
        if mem.buffer.capacity > 0 {
            let mut rng = Rng::at(cfg.run.seed, stream::REPLAY, &[t as u64, u64::MAX]);
            mem.buffer.add(&train_data, &train_idx, &mut rng);
        }
        if cl.strategy.uses_ewc() && !last {
            let fisher_loader = run.val.with_data(task_ds.clone(), 1);
            let mut rng = Rng::at(cfg.run.seed, stream::FISHER, &[t as u64]);
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
                let out =
                    train_step_masked(engine.model(), &b, &ad, &Ctx::eval(), None, mask.as_deref());
                sum.add(out.grads);
            }
            let layout = crate::dist::grad_layout(engine.model());
            let fisher = sum.mean_over(dist, &layout, &device);
            mem.ewc
                .consolidate(fisher, trainable_params(engine.model()));
        }
        if cl.lora_per_task {
            mem.task_adapters.push(adapter_params(engine.model()));
        }
        let task_secs = engine.elapsed() - start_secs;

        // Every task's test split, seen or not. Under task-IL with one adapter per task, a
        // trained task is tested with its own adapter (the task id is given).
        let row = accuracy_row(
            engine.model(),
            &test_loaders,
            &tasks,
            task_il,
            &mem.task_adapters,
            &device,
        )?;
        if let Some(ema) = &engine.ema {
            let ema_row = accuracy_row(&ema.model, &test_loaders, &tasks, task_il, &[], &device)?;
            mem.state.ema_acc_matrix.push(ema_row);
        }
        if let Some(tb) = &mut engine.sinks.tensorboard {
            for (j, a) in row.iter().enumerate() {
                tb.scalar(
                    &format!("task_{}/acc", j + 1),
                    (t + 1) as i64,
                    *a as f32,
                    now_secs(),
                )?;
            }
        }
        mem.state.acc_matrix.push(row.clone());
        mem.state.task_seconds.push(task_secs);
        mem.state.tasks_done = t + 1;
        mem.state.task_start = None;
        let report = report_of(&mem, "completed");
        let m = &report.metrics;
        if let Some(tb) = &mut engine.sinks.tensorboard {
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
        let dest = saver.save(&format!("after_task_{}", t + 1), &engine, &mem)?;
        saver.save("last", &engine, &mem)?;
        if cl.stop_after_task == t + 1 && !last {
            say(format!(
                "stopped after task {} (--stop-after-task); continue with --resume-from {}",
                t + 1,
                dest.display()
            ));
            stopped = Some(("stop_after_task", dest));
            break;
        }
        if dist.is_main() {
            write_outputs(&run.run_dir, &report)?;
        }
    }
    let reason = stopped.as_ref().map_or("completed", |(r, _)| *r);
    if stopped.is_some() && dist.is_main() {
        write_outputs(&run.run_dir, &report_of(&mem, reason))?;
    }
    // A finished run resumed trains nothing: its report is rebuilt from its state.
    Ok(Outcome {
        report: report_of(&mem, reason),
        stopped_at: stopped.map(|(_, at)| at),
    })
}

/// Accuracy of `model` on each task's test split (summed over ranks): a row of R. Under
/// task-IL the logits are masked to the task, and a task with its own adapter uses it.
fn accuracy_row(
    model: &Model,
    loaders: &[Loader],
    tasks: &[Vec<usize>],
    task_il: bool,
    task_adapters: &[ParamMap],
    device: &Device,
) -> Result<Vec<f64>> {
    loaders
        .iter()
        .enumerate()
        .map(|(j, l)| {
            let classes = task_il.then_some(&tasks[j][..]);
            let report = match task_adapters.get(j).filter(|_| task_il) {
                Some(a) => {
                    let m = map_params(model.clone(), |p, _| a.get(p).cloned());
                    evaluate_preds(&m, l, device, classes)?.0
                }
                None => evaluate_preds(model, l, device, classes)?.0,
            };
            Ok(report.acc)
        })
        .collect()
}

/// The adapter parameters of `model` by path.
fn adapter_params(model: &Model) -> ParamMap {
    named_params(model)
        .into_iter()
        .filter(|p| is_adapter(&p.path))
        .map(|p| (p.path, p.value))
        .collect()
}

/// Per-task adapters as `task<k>.<path>` host tensors.
fn task_adapters_state(adapters: &[ParamMap]) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
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

fn load_task_adapters(sd: &BTreeMap<String, HostTensor>, device: &Device) -> Vec<ParamMap> {
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
