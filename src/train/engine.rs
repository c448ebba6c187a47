//! The one training loop. `vitrs train` runs one [`Phase`] over the whole run, `vitrs
//! continual` one phase per task; `compare-finetune` runs `train`. Everything that differs
//! between them is a [`Phase`] field or a [`Hooks`] method (a replayed batch, a logit mask,
//! an EWC gradient, how a checkpoint is written), never a copy of the loop.
//!
//! Per optimizer step: micro-batches (accumulation) → all-reduce over ranks → extra gradient
//! terms → divergence / f16 overflow check → clipping → AdamW → BatchNorm statistics → EMA.
//! Per epoch: evaluation, best / early stopping, periodic and `last` checkpoints. Throughout:
//! the time limit, Ctrl-C / SIGTERM, `--max-steps`, and the events to the sinks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{Device, Tensor};

use super::accumulate::{Accumulator, Window};
use super::checkpoint::{self, TrainingState};
use super::distill::{self, Teacher};
use super::ema::Ema;
use super::evaluate::evaluate_preds;
use super::optim::{AdamW, global_grad_norm};
use super::schedule::WarmupCosine;
pub use super::sinks::Sinks;
use super::sinks::progress_bar;
use super::step::train_step_masked;
use crate::config::{Config, OptimConfig, RunConfig};
use crate::data::batch::HostBatch;
use crate::data::loader::Loader;
use crate::dist::decide;
use crate::error::{Error, Result};
use crate::model::io::load_state_dict_keeping;
use crate::model::layers::Ctx;
use crate::model::params::{count_params, map_params};
use crate::model::precision::Precision;
use crate::model::sparse::SparseLora;
use crate::model::{Model, VitConfig};
use crate::report::metrics::{EvalReport, MetricRecord};

/// The loop's settings, taken from the run's configuration in one place.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    pub accum: usize,
    pub grad_clip: f64,
    pub precision: Precision,
    pub loss_scale_window: u64,
    pub log_every: usize,
    /// 0 = no limit; optimizer steps over the whole run (all phases).
    pub max_steps: u64,
    /// Seconds over the whole run, resumed processes included.
    pub time_limit: Option<f64>,
    pub eval_every: usize,
    pub save_every: usize,
    pub patience: usize,
    pub quiet: bool,
}

impl Settings {
    pub fn new(optim: &OptimConfig, run: &RunConfig) -> Self {
        Settings {
            seed: run.seed,
            accum: optim.accum_steps,
            grad_clip: optim.grad_clip,
            precision: optim.precision,
            loss_scale_window: optim.loss_scale_window,
            log_every: run.log_every,
            max_steps: run.max_steps,
            time_limit: (run.max_training_hours > 0.0).then_some(run.max_training_hours * 3600.0),
            eval_every: run.eval_every,
            save_every: run.save_every,
            patience: run.patience,
            quiet: run.quiet,
        }
    }
}

/// Where the loop is when it asks a hook for a batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchPos {
    /// Epoch within the phase, from 0.
    pub epoch: usize,
    /// The loader's epoch id (shuffling and augmentation are addressed by it).
    pub data_epoch: usize,
    /// Micro-batch within the epoch.
    pub micro: usize,
}

/// What a command plugs into the loop.
pub trait Hooks {
    /// The micro-batch to train on (e.g. with replayed examples appended) and an additive
    /// `n × classes` logit mask (task-IL).
    fn batch(&mut self, batch: HostBatch, _pos: BatchPos) -> Result<(HostBatch, Option<Vec<f32>>)> {
        Ok((batch, None))
    }
    /// Terms added to the step's mean gradient (after the all-reduce, before clipping).
    fn add_grads(&mut self, _model: &Model, _grads: &mut BTreeMap<String, Tensor<1>>) {}
    /// Scalars added to the periodic train record.
    fn log(&mut self, _model: &Model) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }
    /// Advice appended to the divergence error.
    fn divergence_hint(&self) -> &str {
        ""
    }
    /// Write checkpoint `name` (a folder under `checkpoints/`); returns its path.
    fn save(&mut self, engine: &Engine, name: &str) -> Result<PathBuf>;
}

/// A stretch of training: one loader, one schedule, a number of epochs.
pub struct Phase<'a> {
    pub train: &'a Loader,
    /// Evaluated every `eval_every` epochs and after the last: best / early stopping.
    pub val: &'a Loader,
    /// Task-IL: validation logits restricted to these classes.
    pub val_classes: Option<&'a [usize]>,
    pub epochs: usize,
    /// Epochs completed before the phase (`state.epoch` counts from here).
    pub epoch_base: usize,
    /// The loader epoch id of the phase's first epoch.
    pub data_epoch: usize,
    /// The global step at the phase's start: the schedule counts from here.
    pub step_base: u64,
    pub schedule: &'a WarmupCosine,
    /// Put before "epoch e/E" in the lines (e.g. "task 2/5 ").
    pub label: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Completed,
    EarlyStopping,
    MaxSteps,
    TimeLimit,
    Interrupted,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Completed => "completed",
            StopReason::EarlyStopping => "early_stopping",
            StopReason::MaxSteps => "max_steps",
            StopReason::TimeLimit => "time_limit",
            StopReason::Interrupted => "interrupted",
        }
    }
    /// The run stopped before its end and continues with `--resume-from`.
    pub fn is_pause(self) -> bool {
        matches!(self, StopReason::TimeLimit | StopReason::Interrupted)
    }
}

pub struct PhaseEnd {
    pub reason: StopReason,
    pub last_eval: Option<EvalReport>,
    pub last_preds: Vec<usize>,
    /// With a teacher: its predictions on the phase's validation set and its accuracy there.
    pub teacher_val: Option<(Vec<usize>, f64)>,
}

/// The model and everything that changes with it step by step.
pub struct Engine {
    /// `None` only while a step moves it through the update.
    model: Option<Model>,
    pub optim: AdamW,
    pub ema: Option<Ema<Model>>,
    pub state: TrainingState,
    pub teacher: Option<Teacher>,
    /// SparseLoRA's estimators, used from step `dense_steps` on.
    pub sparse: Option<Arc<SparseLora>>,
    pub dense_steps: u64,
    pub settings: Settings,
    /// Where evaluation runs; `ad` is its autodiff twin for the steps.
    pub device: Device,
    pub ad: Device,
    pub sinks: Sinks,
    /// Wall time of each optimizer step of this process (ms).
    pub step_ms: Vec<f64>,
    /// Seconds this process spent in the all-reduce (waiting for the slowest rank included).
    reduce_secs: f64,
    /// `checkpoints/` of the run (named in the divergence error).
    pub ckpt_root: PathBuf,
    /// Where this process started: `state.elapsed_secs` then, and the clock since.
    start_elapsed: f64,
    run_start: Instant,
}

/// The layout of the one all-reduce of a step, and the log values every rank sums.
struct StepPlan {
    /// The gradients' layout, then the BatchNorm statistics' (none for a ViT).
    reduce_layout: Vec<(String, usize)>,
    grads_in_layout: usize,
    /// The same keys on all ranks, even an idle one.
    extra_keys: &'static [&'static str],
}

/// A step whose loss or gradient is not finite (f32/bf16), or f16 overflowing for too long.
struct Diverged {
    loss: f64,
    norm: f64,
}

/// For a loop without checkpoints (`vitrs bench`).
pub struct NoHooks;

impl Hooks for NoHooks {
    fn save(&mut self, _engine: &Engine, name: &str) -> Result<PathBuf> {
        Err(Error::Training(format!(
            "this loop writes no checkpoints (asked for {name})"
        )))
    }
}

impl Engine {
    /// The model (between steps the engine always holds it).
    pub fn model(&self) -> &Model {
        self.model
            .as_ref()
            .expect("the engine holds its model between steps")
    }

    pub fn into_model(self) -> Model {
        self.model
            .expect("the engine holds its model between steps")
    }

    /// Replace the model by `f` of it (e.g. adapters added, best weights loaded).
    pub fn map_model(&mut self, f: impl FnOnce(Model) -> Result<Model>) -> Result<()> {
        let m = self
            .model
            .take()
            .expect("the engine holds its model between steps");
        self.model = Some(f(m)?);
        Ok(())
    }

    fn plan(&self) -> StepPlan {
        // One process reduces nothing: no layout (walking the parameters is not free).
        let (grad_layout, buffer_layout) = match crate::dist::world().size() {
            1 => (Vec::new(), Vec::new()),
            _ => (
                crate::dist::grad_layout(self.model()),
                crate::dist::buffer_layout(self.model()),
            ),
        };
        StepPlan {
            grads_in_layout: grad_layout.len(),
            reduce_layout: [grad_layout, buffer_layout].concat(),
            extra_keys: match self.teacher {
                Some(_) => &distill::EXTRA_KEYS,
                None => &[],
            },
        }
    }

    /// Forward and backward of one micro-batch, added to `acc`.
    fn micro_step(&self, acc: &mut Accumulator, batch: &HostBatch, mask: Option<&[f32]>) {
        let s = &self.settings;
        // Dropout masks differ between ranks (as between the samples of one batch).
        let ctx = Ctx::train(
            s.seed,
            &[
                self.state.global_step,
                acc.micro as u64,
                crate::dist::world().rank() as u64,
            ],
        )
        .with_sparse(
            self.sparse
                .clone()
                .filter(|_| self.state.global_step >= self.dense_steps),
        )
        .with_precision(
            s.precision,
            self.state.loss_scaler.as_ref().map_or(1.0, |l| l.scale),
        );
        if let Some(sp) = &self.sparse {
            sp.count_forward();
        }
        match batch.len() {
            0 => acc.micro += 1, // this rank's shard ran out; it still joins the step
            n => acc.add(
                train_step_masked(
                    self.model(),
                    batch,
                    &self.ad,
                    &ctx,
                    self.teacher.as_ref(),
                    mask,
                ),
                n,
            ),
        }
    }

    /// One optimizer step over what `acc` holds, on every rank alike: all-reduce, the
    /// hooks' gradient terms, the divergence / f16 overflow check, clipping, AdamW, BatchNorm
    /// statistics, EMA. Returns whether the step changed the weights (an f16 overflow skips
    /// it; it still counts: the schedule and the data order move on).
    fn apply(
        &mut self,
        acc: &mut Accumulator,
        plan: &StepPlan,
        lr: f64,
        hooks: &mut dyn Hooks,
    ) -> std::result::Result<bool, Diverged> {
        let dist = crate::dist::world();
        let s = &self.settings;
        if dist.size() > 1 {
            let t = Instant::now();
            acc.all_reduce(
                dist,
                &plan.reduce_layout,
                plan.grads_in_layout,
                plan.extra_keys,
                &self.device,
            );
            self.reduce_secs += t.elapsed().as_secs_f64();
        }
        let mut grads = acc.mean_grads();
        hooks.add_grads(self.model(), &mut grads);
        let norm = global_grad_norm(&grads);
        let loss = acc.loss_sum / acc.images.max(1) as f64;
        let finite = loss.is_finite() && norm.is_finite();
        // f16: an overflow skips the step and halves the loss scale; f32/bf16 stop, and so
        // does f16 once skipping goes on so long that the loss itself must be diverging.
        let diverged = match &mut self.state.loss_scaler {
            Some(l) => {
                l.update(finite, s.loss_scale_window);
                l.diverged()
            }
            None => !finite,
        };
        if diverged {
            return Err(Diverged { loss, norm });
        }
        let scale = if s.grad_clip > 0.0 && norm > s.grad_clip {
            s.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        if finite {
            // The model moves through the update (not cloned), so the backend may update
            // the parameters in place.
            let mut model = self
                .model
                .take()
                .expect("the engine holds its model between steps");
            model = self.optim.step(model, &grads, lr, scale);
            let buffers = acc.mean_buffers();
            if !buffers.is_empty() {
                model = map_params(model, |path, _| buffers.get(path).cloned());
            }
            if let Some(ema) = &mut self.ema {
                ema.update(&model);
            }
            self.model = Some(model);
        }
        self.state.global_step += 1;
        self.state.images_seen += acc.images as u64;
        Ok(finite)
    }

    /// One optimizer step on one batch at learning rate `lr`, as a training step of the loop
    /// takes it (`vitrs bench` times this). Returns the batch's loss.
    pub fn train_batch(&mut self, batch: &HostBatch, lr: f64) -> Result<f64> {
        let mut acc = Accumulator::default();
        self.micro_step(&mut acc, batch, None);
        let plan = self.plan();
        let loss = acc.loss_sum / acc.images.max(1) as f64;
        match self.apply(&mut acc, &plan, lr, &mut NoHooks) {
            Ok(_) => Ok(loss),
            Err(Diverged { loss, norm }) => Err(Error::Training(format!(
                "loss became {loss} (gradient norm {norm}) at step {}",
                self.state.global_step
            ))),
        }
    }

    /// What `train` and `continual` do alike before the first step: AdamW over the
    /// trainable parameters, the EMA, a resumed run's optimizer moments, EMA and training
    /// state (`model` holds its resumed weights already; `keep` names the parameters a
    /// checkpoint does not hold), the f16 loss scaler, rank 0's weights on every rank, the
    /// teacher, and the sinks.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: &Config,
        vit: &VitConfig,
        model: Model,
        resume: Option<(&Path, &checkpoint::Checkpoint)>,
        keep: &dyn Fn(&str) -> bool,
        run_dir: &Path,
        device: &Device,
        ad: &Device,
    ) -> Result<Engine> {
        let dist = crate::dist::world();
        let mut optim = super::optim::adamw(&cfg.optim, &model, vit.depth);
        let mut ema = (cfg.optim.ema_decay > 0.0)
            .then(|| Ema::new(&model, cfg.optim.ema_decay, cfg.optim.ema_warmup));
        let mut state = match resume {
            Some((dir, ck)) => {
                checkpoint::resume_into(dir, ck, &mut optim, &mut ema, ad, device, keep)?
            }
            None => TrainingState {
                best_val_loss: f64::INFINITY,
                ..Default::default()
            },
        };
        checkpoint::fit_scaler(&mut state, cfg.optim.precision, cfg.optim.loss_scale);
        let global_batch = cfg.optim.batch_size * cfg.optim.accum_steps * dist.size();
        if let (Some((dir, _)), Some(was)) = (resume, state.global_batch)
            && was != global_batch
        {
            return Err(Error::Config(format!(
                "{} trained with {was} images per step (--batch-size × --accum-steps × processes) but this run takes {global_batch} (--batch-size {} × --accum-steps {} × {} processes): its place in the epoch would point at other samples; resume with the run's own",
                dir.display(),
                cfg.optim.batch_size,
                cfg.optim.accum_steps,
                dist.size()
            )));
        }
        state.global_batch = Some(global_batch);
        // Every rank starts from rank 0's weights (fresh, pretrained or resumed).
        let model = crate::dist::broadcast_params(dist, model);
        if let Some(e) = &mut ema {
            e.model = crate::dist::broadcast_params(dist, e.model.clone());
        }
        let teacher = distill::teacher_of(&cfg.distill, vit, device)?;
        let ckpt_root = run_dir.join("checkpoints");
        if dist.is_main() {
            checkpoint::clear_partial(&ckpt_root);
        }
        let sinks = Sinks::open(run_dir, &state, dist.is_main())?;
        let mut engine = Engine::new(
            model,
            optim,
            ema,
            state,
            Settings::new(&cfg.optim, &cfg.run),
            device.clone(),
            ad.clone(),
            sinks,
            ckpt_root,
        );
        engine.teacher = teacher;
        Ok(engine)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Model,
        optim: AdamW,
        ema: Option<Ema<Model>>,
        state: TrainingState,
        settings: Settings,
        device: Device,
        ad: Device,
        sinks: Sinks,
        ckpt_root: PathBuf,
    ) -> Self {
        Engine {
            ckpt_root,
            start_elapsed: state.elapsed_secs,
            model: Some(model),
            reduce_secs: 0.0,
            optim,
            ema,
            state,
            teacher: None,
            sparse: None,
            dense_steps: 0,
            settings,
            device,
            ad,
            sinks,
            step_ms: Vec::new(),
            run_start: Instant::now(),
        }
    }

    /// Training seconds of the run so far (earlier processes included).
    pub fn elapsed(&self) -> f64 {
        self.start_elapsed + self.run_start.elapsed().as_secs_f64()
    }

    /// Seconds this process has trained.
    pub fn elapsed_here(&self) -> f64 {
        self.run_start.elapsed().as_secs_f64()
    }

    /// Forget the best / early-stopping record (a new phase judges itself).
    pub fn reset_best(&mut self) {
        self.state.best_val_loss = f64::INFINITY;
        self.state.best_val_acc = 0.0;
        self.state.best_epoch = 0;
        self.state.evals_since_best = 0;
    }

    /// Load the best weights written under `best_dir` (the parameters `keep` says are not in
    /// the checkpoint stay as they are), on every rank. Returns whether it did.
    pub fn restore_best(&mut self, best_dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<bool> {
        let dist = crate::dist::world();
        let restore = best_dir.exists()
            && self.state.best_epoch != 0
            && self.state.best_epoch != self.state.epoch;
        if decide(dist, u32::from(restore)) != 1 {
            return Ok(false);
        }
        if dist.is_main() {
            let best = checkpoint::load(best_dir)?;
            let ad = self.ad.clone();
            self.map_model(|m| load_state_dict_keeping(m, &best.model, &ad, keep))?;
        }
        self.map_model(|m| Ok(crate::dist::broadcast_params(dist, m)))?;
        Ok(true)
    }

    /// Train `phase` from where `state` says (a resumed run skips what is done).
    pub fn fit(&mut self, phase: &Phase, hooks: &mut dyn Hooks) -> Result<PhaseEnd> {
        crate::signals::training_started();
        let dist = crate::dist::world();
        let s = self.settings.clone();
        let plan = self.plan();
        // The teacher is fixed: its validation predictions are computed once per phase.
        let teacher_val = match &self.teacher {
            Some(t) => {
                let (report, preds) =
                    evaluate_preds(&t.model, phase.val, &t.device, phase.val_classes)?;
                Some((preds, report.acc))
            }
            None => None,
        };
        let (total_params, trainable_params) = count_params(self.model());
        let micro_per_epoch = phase.train.num_batches();
        let steps_per_epoch = micro_per_epoch.div_ceil(s.accum);
        let mut end = PhaseEnd {
            reason: StopReason::Completed,
            last_eval: None,
            last_preds: Vec::new(),
            teacher_val,
        };
        let first = self.state.epoch.saturating_sub(phase.epoch_base) + 1;
        let mut step_start = Instant::now();
        'epochs: for e in first..=phase.epochs {
            let epoch = phase.epoch_base + e;
            let data_epoch = phase.data_epoch + e - 1;
            let pb = progress_bar(
                s.quiet || !dist.is_main(),
                steps_per_epoch,
                format!("{}epoch {e}/{}", phase.label, phase.epochs),
            );
            let mut local_images = 0;
            let reduce_start = self.reduce_secs;
            let epoch_start = Instant::now();
            let mut epoch_win = Window::default();
            let (mut log_win, mut log_start) = (Window::default(), Instant::now());
            // Resuming mid-epoch: skip the micro-batches whose optimizer steps are done.
            let done = (self.state.global_step - phase.step_base) as usize;
            let first_step = done.saturating_sub((e - 1) * steps_per_epoch);
            let first_micro = first_step * s.accum;
            let mut acc = Accumulator::default();
            let steps_before = self.state.global_step;
            let mut batches = phase.train.epoch(data_epoch, first_micro);
            for (i, batch) in (&mut batches).enumerate() {
                let micro = first_micro + i;
                if acc.micro == 0 {
                    step_start = Instant::now();
                }
                let pos = BatchPos {
                    epoch: e - 1,
                    data_epoch,
                    micro,
                };
                let (batch, mask) = hooks.batch(batch, pos)?;
                local_images += batch.len();
                self.micro_step(&mut acc, &batch, mask.as_deref());
                if acc.micro < s.accum && micro + 1 < micro_per_epoch {
                    continue;
                }
                let lr = phase.schedule.lr(self.state.global_step - phase.step_base);
                let applied = match self.apply(&mut acc, &plan, lr, hooks) {
                    Ok(a) => a,
                    Err(Diverged { loss, norm }) => {
                        pb.finish_and_clear();
                        return Err(self.divergence(loss, norm, epoch, hooks));
                    }
                };
                if applied {
                    epoch_win.add(&acc);
                    log_win.add(&acc);
                }
                self.step_ms.push(step_start.elapsed().as_secs_f64() * 1e3);
                acc = Accumulator::default();
                if self.state.global_step.is_multiple_of(s.log_every as u64) {
                    let img_s = log_win.images as f64 / log_start.elapsed().as_secs_f64();
                    let mut record = MetricRecord::train(
                        epoch,
                        self.state.global_step,
                        log_win.loss(),
                        log_win.acc(),
                        lr,
                        img_s,
                        0.0,
                    );
                    record.extra = log_win.extras();
                    record.extra.extend(hooks.log(self.model()));
                    if let Some(l) = &self.state.loss_scaler {
                        record.extra.insert("loss_scale".into(), l.scale);
                        record
                            .extra
                            .insert("skipped_steps".into(), l.skipped as f64);
                    }
                    if let Some(sp) = &self.sparse {
                        // The sparsity evolution, and base parameters used apart from trained ones.
                        record
                            .extra
                            .extend(sp.take_log(total_params - trainable_params));
                        record
                            .extra
                            .insert("trainable_params".into(), trainable_params as f64);
                    }
                    self.sinks.emit(record)?;
                    (log_win, log_start) = (Window::default(), Instant::now());
                }
                let done = self.state.global_step - phase.step_base;
                pb.set_position(done - ((e - 1) * steps_per_epoch) as u64);
                pb.set_message(format!(
                    "loss {:.4} acc {:.2}% lr {:.2e} {:.0} img/s",
                    epoch_win.loss(),
                    100.0 * epoch_win.acc(),
                    lr,
                    epoch_win.images as f64 / epoch_start.elapsed().as_secs_f64()
                ));
                let elapsed = self.elapsed();
                // Rank 0 decides for everyone, so that all ranks stop after the same step.
                let stop = decide(
                    dist,
                    u32::from(crate::signals::interrupted())
                        | u32::from(s.time_limit.is_some_and(|t| elapsed >= t)) << 1,
                );
                let (interrupted, out_of_time) = (stop & 1 != 0, stop & 2 != 0);
                let out_of_steps = s.max_steps > 0 && self.state.global_step >= s.max_steps;
                if interrupted || out_of_time || out_of_steps {
                    pb.finish_and_clear();
                    self.state.elapsed_secs = elapsed;
                    // Mid-epoch: `epoch` is not complete; global_step says where to resume.
                    self.state.epoch = epoch - 1;
                    end.reason = if interrupted {
                        StopReason::Interrupted
                    } else if out_of_time {
                        StopReason::TimeLimit
                    } else {
                        StopReason::MaxSteps
                    };
                    self.pause(end.reason, hooks)?;
                    break 'epochs;
                }
            }
            pb.finish_and_clear();
            batches.finish()?;
            if self.state.global_step == steps_before && first_micro < micro_per_epoch.max(1) {
                return Err(Error::Training(format!(
                    "{}epoch {e} took no step: the training data gave no batch ({} images, batch size {}); check the data",
                    phase.label,
                    phase.train.dataset().len(),
                    phase.train.batch_size()
                )));
            }
            self.state.epoch = epoch;
            self.state.elapsed_secs = self.elapsed();
            let img_s = epoch_win.images as f64 / epoch_start.elapsed().as_secs_f64();
            let mut line = format!(
                "{}epoch {e}/{}: train loss {:.4} acc {:.2}% | {img_s:.0} img/s",
                phase.label,
                phase.epochs,
                epoch_win.loss(),
                100.0 * epoch_win.acc()
            );
            let mut stop_early = false;
            let eval_start = Instant::now();
            if e % s.eval_every == 0 || e == phase.epochs {
                let (report, preds) =
                    evaluate_preds(self.model(), phase.val, &self.device, phase.val_classes)?;
                let mut record =
                    MetricRecord::val(epoch, self.state.global_step, report.loss, report.acc, 0.0);
                line += &format!(
                    " | val loss {:.4} acc {:.2}%",
                    report.loss,
                    100.0 * report.acc
                );
                if let Some((t_preds, t_acc)) = &end.teacher_val {
                    let agree = distill::agreement(&preds, t_preds);
                    record.extra.insert("teacher_acc".into(), *t_acc);
                    record.extra.insert("teacher_agreement".into(), agree);
                    line += &format!(" | teacher agreement {:.2}%", 100.0 * agree);
                }
                if let Some(ema) = &self.ema {
                    let er =
                        evaluate_preds(&ema.model, phase.val, &self.device, phase.val_classes)?.0;
                    record.extra.insert("ema_loss".into(), er.loss);
                    record.extra.insert("ema_acc".into(), er.acc);
                    line += &format!(" | ema acc {:.2}%", 100.0 * er.acc);
                }
                self.sinks.emit(record)?;
                // Early-stopping counters first, so that best_model's state is this epoch's
                // (and never holds the initial infinite loss, which JSON cannot store).
                if report.loss < self.state.best_val_loss {
                    self.state.best_val_loss = report.loss;
                    self.state.evals_since_best = 0;
                } else {
                    self.state.evals_since_best += 1;
                }
                if report.acc > self.state.best_val_acc || self.state.best_epoch == 0 {
                    self.state.best_val_acc = report.acc;
                    self.state.best_epoch = epoch;
                    hooks.save(self, "best_model")?;
                    line += " (best)";
                }
                if s.patience > 0 && self.state.evals_since_best >= s.patience {
                    stop_early = true;
                }
                stop_early = decide(dist, u32::from(stop_early)) == 1;
                end.last_eval = Some(report);
                end.last_preds = preds;
            }
            let eval_secs = eval_start.elapsed().as_secs_f64();
            if dist.is_main() {
                crate::log_line!("{line}");
            }
            if dist.size() > 1 {
                // Training time only (validation excluded), and the part spent in the
                // all-reduce (which includes waiting for the slowest rank).
                let secs = epoch_start.elapsed().as_secs_f64() - eval_secs;
                crate::log_line!(
                    "rank {}: epoch {epoch}: {:.1} img/s on this rank, all-reduce {:.1}% of training time",
                    dist.rank(),
                    local_images as f64 / secs,
                    100.0 * (self.reduce_secs - reduce_start) / secs
                );
            }
            if s.save_every > 0 && epoch.is_multiple_of(s.save_every) {
                hooks.save(self, &format!("checkpoint_epoch_{epoch}"))?;
            }
            hooks.save(self, "last")?;
            if stop_early {
                crate::log_line!(
                    "early stopping: validation loss has not improved for {} evaluations (best {:.4})",
                    self.state.evals_since_best,
                    self.state.best_val_loss
                );
                end.reason = StopReason::EarlyStopping;
                break;
            }
        }
        Ok(end)
    }

    /// Checkpoints for a stop before the end, and the line saying how to continue.
    fn pause(&mut self, reason: StopReason, hooks: &mut dyn Hooks) -> Result<()> {
        let last = hooks.save(self, "last")?;
        let path = match reason {
            StopReason::TimeLimit => hooks.save(self, "checkpoint_time_limit")?,
            _ => last.clone(),
        };
        if reason.is_pause() {
            crate::log_line!(
                "{}: checkpoint written to {}; continue with --resume-from {}",
                match reason {
                    StopReason::TimeLimit => "time limit reached",
                    _ => "interrupted",
                },
                path.display(),
                last.display()
            );
        }
        Ok(())
    }

    fn divergence(&self, loss: f64, norm: f64, epoch: usize, hooks: &mut dyn Hooks) -> Error {
        let skips = self.state.loss_scaler.as_ref().map_or(String::new(), |l| {
            format!(" ({} f16 steps skipped in a row)", l.consecutive_skips)
        });
        let last = self.ckpt_root.join("last");
        let last = match last.exists() {
            true => last.display().to_string(),
            false => "none".into(),
        };
        Error::Training(format!(
            "loss became {loss} (gradient norm {norm}) at epoch {epoch}, step {}{skips}; last good checkpoint: {last} — lower --lr (2–5×){}, clip harder (--grad-clip 0.5), and check the data",
            self.state.global_step,
            hooks.divergence_hint(),
        ))
    }
}
