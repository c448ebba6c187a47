//! The training loop: epochs, evaluation, early stopping, time limit, checkpoints, and the
//! sinks (progress, metrics.jsonl, TensorBoard) that watch it.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::adapters;
use super::checkpoint::{self, Checkpoint, TrainingState};
use super::distill::{self, Teacher};
use super::ema::Ema;
use super::optim::{AdamW, AdamWConfig, global_grad_norm};
use super::scaler::LossScaler;
use super::schedule::WarmupCosine;
use super::step::{StepOutput, train_step_with};
use crate::config::{AdapterKind, Config};
use crate::data::loader::Loader;
use crate::dist::{Comm, decide};
use crate::error::{Error, Result};
use crate::model::io::{
    HostTensor, load_state_dict, load_state_dict_keeping, read_safetensors, state_dict,
};
use crate::model::layers::Ctx;
use crate::model::lora;
use crate::model::params::map_params;
use crate::model::params::{count_params, named_params, set_trainable};
use crate::model::sparse;
use crate::model::{Model, VitConfig};
use crate::report::metrics::{EvalReport, MetricRecord, MetricsWriter};
use crate::report::tensorboard::{EventWriter, HParam, log_record};
use crate::weights::is_head;

/// `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub best_val_acc: f64,
    pub best_epoch: usize,
    pub epochs_completed: usize,
    /// completed | early_stopping | time_limit | interrupted
    pub stopped_reason: String,
    pub final_val_loss: f64,
    pub final_val_acc: f64,
    pub params: usize,
    pub total_params: usize,
    pub trainable_params: usize,
    pub train_images_per_sec: f64,
    pub train_seconds: f64,
    pub peak_rss_mb: Option<f64>,
    /// Median wall time of an optimizer step (forward, backward, all micro-batches, update),
    /// the first two steps of this process excluded.
    pub step_ms_median: f64,
    /// AdamW moments held at the end (trained parameters only).
    pub optimizer_state_mb: f64,
    /// Base parameters a step multiplies with, averaged over steps (below total_params only
    /// when SparseLoRA skips channels).
    pub active_params: f64,
    /// none | lora | sparselora (and freeze_backbone for head-only runs).
    pub adapter: String,
    pub freeze_backbone: bool,
    pub run_dir: PathBuf,
    /// With a `--teacher`: the teacher's validation accuracy and the final student's
    /// agreement with it (share of equal top-1 predictions on the validation set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_val_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_agreement: Option<f64>,
    /// Data-parallel processes (1 without MPI).
    #[serde(default = "one")]
    pub processes: usize,
    /// Images per optimizer step over all processes: batch size × accumulation × processes.
    #[serde(default)]
    pub global_batch_size: usize,
    /// `--precision` of the matrix products.
    pub precision: String,
    /// f16 steps skipped because their gradients overflowed (0 otherwise).
    pub skipped_steps: u64,
}

fn one() -> usize {
    1
}

/// Ctrl-C / SIGTERM count, set by the handler `main` installs.
pub static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

/// Everything a run needs, prepared before the first step.
pub struct Run {
    pub config: Config,
    pub vit_config: VitConfig,
    /// Pretrained weights to start from (timm names, PyTorch layouts); a missing head keeps
    /// its fresh initialisation.
    pub init_weights: Option<BTreeMap<String, HostTensor>>,
    pub device: Device,
    pub train: Loader,
    pub val: Loader,
    pub class_names: Vec<String>,
    pub run_dir: PathBuf,
}

/// Evaluate `model` (any mode; it is switched to eval) on every batch of `loader`.
pub fn evaluate(model: &Model, loader: &Loader, device: &Device) -> Result<EvalReport> {
    Ok(evaluate_preds(model, loader, device)?.0)
}

/// [`evaluate`], also returning the top-1 predictions (for the agreement with a teacher).
pub fn evaluate_preds(
    model: &Model,
    loader: &Loader,
    device: &Device,
) -> Result<(EvalReport, Vec<usize>)> {
    let model = model.valid();
    let mut preds = Vec::with_capacity(loader.dataset().len());
    let mut labels = Vec::with_capacity(loader.dataset().len());
    let mut loss_sum = 0.0;
    for batch in loader.epoch(0, 0) {
        if batch.is_empty() {
            continue; // the end of a shorter shard
        }
        let logits = model.forward(batch.images_tensor(device), &Ctx::eval());
        let n = batch.len();
        // Plain cross-entropy on the hard labels (no smoothing) for validation.
        let one_hot =
            crate::data::augment::mix::soft_targets(&batch.labels, batch.num_classes, 0.0);
        let t = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(one_hot, [n, batch.num_classes]),
            device,
        );
        let loss: f32 = super::loss::soft_cross_entropy(logits.clone(), t).into_scalar();
        loss_sum += loss as f64 * n as f64;
        let p: Tensor<2, burn::tensor::Int> = logits.argmax(1);
        preds.extend(
            p.into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .unwrap_or_default()
                .into_iter()
                .map(|x| x as usize),
        );
        labels.extend(batch.labels.iter().copied());
    }
    if loader.shard_of().1 > 1 {
        (preds, labels, loss_sum) = gather_shards(loader, &preds, loss_sum);
    }
    let n = labels.len().max(1);
    let report = EvalReport::from_predictions(
        &preds,
        &labels,
        loader.dataset().class_names.clone(),
        loss_sum / n as f64,
    )?;
    Ok((report, preds))
}

/// Every rank's predictions (of its shard of the unshuffled loader) put back in data-set
/// order on every rank, and the summed loss: one all-reduce, each slot filled by one rank.
fn gather_shards(loader: &Loader, preds: &[usize], loss_sum: f64) -> (Vec<usize>, Vec<usize>, f64) {
    let data = loader.dataset();
    let mut all = vec![0f64; data.len() + 1];
    for (&i, &p) in loader.order(0).iter().zip(preds) {
        all[i] = p as f64;
    }
    all[data.len()] = loss_sum;
    crate::dist::world().all_reduce_sum_f64(&mut all);
    let loss_sum = all.pop().unwrap_or(0.0);
    let labels = data.labels.iter().map(|&l| l as usize).collect();
    (
        all.into_iter().map(|p| p as usize).collect(),
        labels,
        loss_sum,
    )
}

struct Sinks {
    /// Rank 0's only: the other ranks of a data-parallel job write nothing.
    metrics: Option<MetricsWriter>,
    tensorboard: Option<EventWriter>,
    start: Instant,
    time_offset: f64,
}

impl Sinks {
    fn emit(&mut self, mut r: MetricRecord) -> Result<()> {
        r.time = self.time_offset + self.start.elapsed().as_secs_f64();
        if let Some(m) = &mut self.metrics {
            m.write(&r)?;
        }
        if let Some(tb) = &mut self.tensorboard {
            log_record(tb, &r)?;
        }
        Ok(())
    }
}

fn progress_bar(quiet: bool, len: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(format!("{epoch}/{epochs}"));
    pb
}

/// What the loop keeps between optimizer steps while gradients accumulate.
#[derive(Default)]
struct Accumulator {
    /// Σ n_i · g_i over the micro-batches of this step.
    grads: BTreeMap<String, Tensor<1>>,
    images: usize,
    loss_sum: f64,
    correct: usize,
    micro: usize,
    /// Σ over micro-batches of the new BatchNorm running statistics, and how many
    /// micro-batches produced them (an empty shard produces none).
    buffers: BTreeMap<String, Tensor<1>>,
    buffer_micro: usize,
    /// Σ n_i · extra_i (distillation losses, agreement, ...).
    extra: BTreeMap<String, f64>,
}

impl Accumulator {
    fn add(&mut self, out: StepOutput, n: usize) {
        for (k, g) in out.grads {
            let g = g * n as f64;
            let sum = match self.grads.remove(&k) {
                Some(acc) => acc + g,
                None => g,
            };
            self.grads.insert(k, sum);
        }
        self.buffer_micro += usize::from(!out.buffers.is_empty());
        for (k, b) in out.buffers {
            let sum = match self.buffers.remove(&k) {
                Some(acc) => acc + b,
                None => b,
            };
            self.buffers.insert(k, sum);
        }
        for (k, v) in out.extra {
            // Seconds add up as they are; batch means are weighted by the batch size.
            let w = if k == "teacher_s" { 1.0 } else { n as f64 };
            *self.extra.entry(k).or_default() += v * w;
        }
        self.images += n;
        self.loss_sum += out.loss * n as f64;
        self.correct += out.correct;
        self.micro += 1;
    }

    /// Sum the step's gradients, BatchNorm running statistics, counts and `extra_keys` over
    /// all ranks (one all-reduce of one flat buffer, zeros for a rank whose shard ran out),
    /// so that the means below are over every image of the global batch, however unevenly
    /// they were spread, and every rank sets the same running statistics (without this each
    /// would keep its own shard's and evaluate its share with them).
    ///
    /// `layout` is the gradients' layout followed by the statistics' (`grads` entries first).
    fn all_reduce(
        &mut self,
        dist: &dyn Comm,
        layout: &[(String, usize)],
        grads: usize,
        extra_keys: &[&str],
        device: &Device,
    ) {
        let mut scalars = vec![
            self.images as f64,
            self.loss_sum,
            self.correct as f64,
            self.buffer_micro as f64,
        ];
        scalars.extend(
            extra_keys
                .iter()
                .map(|k| self.extra.get(*k).copied().unwrap_or(0.0)),
        );
        // Statistics' paths are not parameters' paths: they can share the map for the call.
        self.grads.append(&mut self.buffers);
        crate::dist::all_reduce_grads(dist, layout, &mut self.grads, &mut scalars, device);
        for (path, _) in &layout[grads..] {
            if let Some(b) = self.grads.remove(path) {
                self.buffers.insert(path.clone(), b);
            }
        }
        self.images = scalars[0] as usize;
        self.loss_sum = scalars[1];
        self.correct = scalars[2] as usize;
        self.buffer_micro = scalars[3] as usize;
        for (k, v) in extra_keys.iter().zip(&scalars[4..]) {
            // Teacher seconds: the mean over ranks (they run side by side), not their sum.
            let v = if *k == "teacher_s" {
                v / dist.size() as f64
            } else {
                *v
            };
            self.extra.insert(k.to_string(), v);
        }
    }

    /// The running statistics to set after the step: the mean over its micro-batches.
    fn mean_buffers(&mut self) -> BTreeMap<String, Tensor<1>> {
        let m = self.buffer_micro.max(1) as f64;
        std::mem::take(&mut self.buffers)
            .into_iter()
            .map(|(k, b)| (k, b / m))
            .collect()
    }

    /// The mean gradient over every image of the step (what one big batch would give).
    fn mean_grads(&mut self) -> BTreeMap<String, Tensor<1>> {
        let n = self.images as f64;
        std::mem::take(&mut self.grads)
            .into_iter()
            .map(|(k, g)| (k, g / n))
            .collect()
    }
}

/// Running means for the progress bar, the epoch line and the periodic train log.
#[derive(Default)]
struct Window {
    loss_sum: f64,
    correct: usize,
    images: usize,
    extra: BTreeMap<String, f64>,
}

impl Window {
    fn add(&mut self, acc: &Accumulator) {
        self.loss_sum += acc.loss_sum;
        self.correct += acc.correct;
        self.images += acc.images;
        for (k, v) in &acc.extra {
            *self.extra.entry(k.clone()).or_default() += v;
        }
    }
    /// Means per image of the extras; `teacher_s` stays a sum (seconds in the window).
    fn extras(&self) -> BTreeMap<String, f64> {
        let n = self.images.max(1) as f64;
        self.extra
            .iter()
            .map(|(k, v)| (k.clone(), if k == "teacher_s" { *v } else { v / n }))
            .collect()
    }
    fn loss(&self) -> f64 {
        self.loss_sum / self.images.max(1) as f64
    }
    fn acc(&self) -> f64 {
        self.correct as f64 / self.images.max(1) as f64
    }
}

/// Train to the end (or until stopped). Returns the summary that was written.
pub fn train(run: Run) -> Result<Summary> {
    let Run {
        config: cfg,
        vit_config,
        init_weights,
        device,
        train: train_loader,
        val: val_loader,
        class_names,
        run_dir,
    } = run;
    let dist = crate::dist::world();
    let ad = crate::device::autodiff(&device, cfg.grad_checkpointing);
    let resume_ck = cfg
        .resume_from
        .as_deref()
        .map(checkpoint::load)
        .transpose()?;
    let mut model = Model::new(&vit_config, cfg.seed, &ad)?;
    if let Some(w) = &init_weights {
        model = load_state_dict_keeping(model, w, &ad, is_head)?;
    }
    let adapter = match &resume_ck {
        // A resumed adapter run: the frozen base comes from the checkpoint's pointer.
        Some(ck) => match (&ck.adapter, &cfg.resume_from) {
            (Some(meta), Some(dir)) => {
                let base = read_safetensors(&meta.base.resolve(dir)?)?;
                model = load_state_dict(model, &base, &ad)?;
                model = model.map_vit(|m| lora::add_adapters(m, &meta.config, cfg.seed, &ad))?;
                Some(meta.clone())
            }
            _ => None,
        },
        None => match model {
            Model::Vit(vit) => {
                let (m, meta) = adapters::setup(vit, &cfg, &run_dir, &ad)?;
                model = Model::Vit(m);
                meta
            }
            cnn => {
                if adapters::lora_config(&cfg).is_some() {
                    return Err(Error::Config(
                        "LoRA adapters apply to ViTs only; --model is a CNN (drop --adapter)"
                            .into(),
                    ));
                }
                model = cnn;
                None
            }
        },
    };
    if cfg.freeze_backbone && adapter.is_none() {
        model = set_trainable(model, is_head);
    }
    // What a checkpoint keeps: everything, or for an adapter run the trained parameters.
    let trained = |sd: BTreeMap<String, HostTensor>| match &adapter {
        Some(meta) => lora::adapter_state(&sd, &meta.config),
        None => sd,
    };
    let is_frozen_base = |p: &str| {
        adapter.as_ref().is_some_and(|m| {
            !lora::is_adapter(p) && !lora::in_modules(p, &m.config.modules_to_save)
        })
    };
    let ckpt_root = run_dir.join("checkpoints");
    // Half-written checkpoints of a killed process are never used; clear them away.
    if let Some(Ok(entries)) = dist.is_main().then(|| std::fs::read_dir(&ckpt_root)) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    let trainable: Vec<(String, usize)> = named_params(&model)
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| (p.path, p.shape.len()))
        .collect();
    let mut optim = AdamW::new(
        AdamWConfig {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            layer_decay: cfg.layer_decay,
            depth: vit_config.depth,
        },
        &trainable,
    );
    let mut state = TrainingState {
        best_val_loss: f64::INFINITY,
        ..Default::default()
    };
    let mut ema = (cfg.ema_decay > 0.0).then(|| Ema::new(&model, cfg.ema_decay, cfg.ema_warmup));
    if let (Some(dir), Some(ck)) = (&cfg.resume_from, resume_ck) {
        if ck.vit_config != vit_config {
            return Err(Error::Checkpoint(format!(
                "{} holds a different model ({} dim, {} blocks, {} classes) than this run ({} dim, {} blocks, {} classes); resume with the same model flags",
                dir.display(),
                ck.vit_config.embed_dim,
                ck.vit_config.depth,
                ck.vit_config.num_classes,
                vit_config.embed_dim,
                vit_config.depth,
                vit_config.num_classes
            )));
        }
        model = load_state_dict_keeping(model, &ck.model, &ad, is_frozen_base)?;
        let st = ck.state.ok_or_else(|| {
            Error::Checkpoint(format!(
                "{} has no training_state.json: it holds weights only and cannot be resumed",
                dir.display()
            ))
        })?;
        if let Some(opt) = &ck.optimizer {
            // Steps skipped for f16 overflow took no optimizer step.
            let skipped = st.loss_scaler.as_ref().map_or(0, |s| s.skipped);
            optim.load_state_dict(opt, st.global_step - skipped, &ad)?;
        }
        if let (Some(e), Some(w)) = (&mut ema, &ck.ema) {
            e.model = load_state_dict_keeping(e.model.clone(), w, &device, is_frozen_base)?;
            e.updates = st.global_step;
        }
        state = st;
        if !cfg.precision.scales_loss() {
            state.loss_scaler = None;
        }
        crate::log_line!(
            "resuming from {} at epoch {} (step {})",
            dir.display(),
            state.epoch + 1,
            state.global_step
        );
    }

    if cfg.precision.scales_loss() && state.loss_scaler.is_none() {
        state.loss_scaler = Some(LossScaler::new(cfg.loss_scale));
    }

    // Every rank starts from rank 0's weights (fresh, pretrained or resumed).
    model = crate::dist::broadcast_params(dist, model);
    if let Some(e) = &mut ema {
        e.model = crate::dist::broadcast_params(dist, e.model.clone());
    }
    // (path, elements) of every trainable parameter: the all-reduce buffer's layout.
    // One all-reduce per step: the gradients, then the BatchNorm statistics (none for a ViT).
    let grad_layout = crate::dist::grad_layout(&model);
    let grads_in_layout = grad_layout.len();
    let reduce_layout = [grad_layout, crate::dist::buffer_layout(&model)].concat();
    let teacher = match &cfg.teacher {
        Some(spec) => Some(distill::load_teacher(
            spec,
            &vit_config,
            cfg.distillation,
            cfg.distill_alpha,
            cfg.distill_tau,
            &device,
        )?),
        None => None,
    };
    // The per-image log values every rank sums (the same keys on all, even an idle one).
    let extra_keys: &[&str] = match teacher {
        Some(_) => &distill::EXTRA_KEYS,
        None => &[],
    };
    // The teacher is fixed: its validation predictions are computed once.
    let teacher_val = match &teacher {
        Some(t) => Some(teacher_validation(t, &val_loader)?),
        None => None,
    };
    let (total_params, trainable_params) = count_params(&model);
    let accum = cfg.accum_steps;
    let micro_per_epoch = train_loader.num_batches();
    let steps_per_epoch = micro_per_epoch.div_ceil(accum);
    // SparseLoRA: SVD estimators of the frozen base, once; sparse after the dense steps.
    let sparse = match cfg.adapter {
        AdapterKind::Sparselora => Some(sparse::setup(model.as_vit()?, cfg.sparse()?, &device)?),
        _ => None,
    };
    let dense_steps = sparse.as_ref().map_or(0, |s| {
        // The fraction is of the steps this run will take (a --max-steps run stops early).
        let total = (cfg.epochs * steps_per_epoch) as u64;
        let total = if cfg.max_steps > 0 {
            total.min(cfg.max_steps)
        } else {
            total
        };
        s.config.dense_steps(total)
    });
    if let Some(s) = &sparse {
        let c = &s.config;
        crate::log_line!(
            "SparseLoRA: {:.0}% of MLP and {:.0}% of attention channels skipped in blocks {}..{} (rank-{} SVD estimators), dense for the first {dense_steps} steps",
            100.0 * c.mlp,
            100.0 * c.attn,
            c.dense_first,
            vit_config.depth.saturating_sub(c.dense_last),
            c.rank
        );
    }
    let schedule = WarmupCosine::new(
        cfg.lr,
        cfg.warmup_start_lr,
        cfg.min_lr,
        cfg.warmup_epochs,
        cfg.epochs,
        steps_per_epoch,
    );
    let mut sinks = Sinks {
        // A fresh run (step 0) starts the file over; a resumed one drops what it will redo.
        metrics: match dist.is_main() {
            true => Some(MetricsWriter::resume(
                &run_dir.join("metrics.jsonl"),
                state.global_step,
            )?),
            false => None,
        },
        tensorboard: match dist.is_main() {
            true => Some(EventWriter::create(&run_dir)?),
            false => None,
        },
        start: Instant::now(),
        time_offset: state.elapsed_secs,
    };
    if let Some(tb) = &mut sinks.tensorboard {
        tb.hparams("hparams", &hparams(&cfg, &vit_config))?;
    }
    let global_batch = cfg.batch_size * accum * dist.size();
    if dist.size() > 1 {
        crate::log_line!(
            "rank {} of {}: {} threads, device {device:?}, {} images per epoch",
            dist.rank(),
            dist.size(),
            rayon::current_num_threads(),
            train_loader.order(1).len()
        );
    }
    if dist.is_main() {
        crate::log_line!(
            "training {} on {:?} ({} train / {} val images, {} classes) for {} epochs: {} params, {} steps/epoch (global batch {global_batch} = {} per process × {accum} accumulation × {} processes), run dir {}",
            cfg.pretrained.as_deref().unwrap_or(&cfg.model),
            cfg.dataset,
            train_loader.dataset().len(),
            val_loader.dataset().len(),
            vit_config.num_classes,
            cfg.epochs,
            total_params,
            steps_per_epoch,
            cfg.batch_size,
            dist.size(),
            run_dir.display()
        );
    }

    let save = |name: &str,
                model: &Model,
                optim: &AdamW,
                ema: &Option<Ema<Model>>,
                state: &TrainingState|
     -> Result<PathBuf> {
        let dest = ckpt_root.join(name);
        if !dist.is_main() {
            return Ok(dest);
        }
        checkpoint::save(
            &dest,
            &Checkpoint {
                model: trained(state_dict(model)),
                vit_config: vit_config.clone(),
                optimizer: Some(optim.state_dict()),
                ema: ema.as_ref().map(|e| trained(state_dict(&e.model))),
                state: Some(state.clone()),
                train_config: Some(cfg.clone()),
                class_names: Some(class_names.clone()),
                adapter: adapter.clone(),
            },
        )?;
        Ok(dest)
    };

    let time_limit = (cfg.max_training_hours > 0.0).then_some(cfg.max_training_hours * 3600.0);
    let mut stopped_reason = "completed".to_string();
    let mut last_eval: Option<EvalReport> = None;
    let mut last_preds: Vec<usize> = Vec::new();
    let run_start = Instant::now();
    let mut step_ms: Vec<f64> = Vec::new();
    let mut step_start = Instant::now();
    let start_elapsed = state.elapsed_secs;
    let start_images = state.images_seen;

    'epochs: for epoch in state.epoch + 1..=cfg.epochs {
        let pb = progress_bar(
            cfg.quiet || !dist.is_main(),
            steps_per_epoch,
            epoch,
            cfg.epochs,
        );
        let (mut local_images, mut reduce_secs) = (0, 0.0);
        let epoch_start = Instant::now();
        let mut epoch_win = Window::default();
        let (mut log_win, mut log_start) = (Window::default(), Instant::now());
        // Resuming mid-epoch: skip the micro-batches whose optimizer steps are done.
        let first_step = (state.global_step as usize).saturating_sub((epoch - 1) * steps_per_epoch);
        let first_micro = first_step * accum;
        let mut acc = Accumulator::default();
        for (i, batch) in train_loader
            .epoch(epoch, first_micro)
            .into_iter()
            .enumerate()
        {
            let micro = first_micro + i;
            if acc.micro == 0 {
                step_start = Instant::now();
            }
            // Dropout masks differ between ranks (as between the samples of one batch).
            let ctx = Ctx::train(
                cfg.seed,
                &[state.global_step, acc.micro as u64, dist.rank() as u64],
            )
            .with_sparse(sparse.clone().filter(|_| state.global_step >= dense_steps))
            .with_precision(
                cfg.precision,
                state.loss_scaler.as_ref().map_or(1.0, |s| s.scale),
            );
            if let Some(s) = &sparse {
                s.count_forward();
            }
            let n = batch.len();
            local_images += n;
            match n {
                0 => acc.micro += 1, // this rank's shard ran out; it still joins the step
                _ => acc.add(
                    train_step_with(&model, &batch, &ad, &ctx, teacher.as_ref()),
                    n,
                ),
            }
            if acc.micro < accum && micro + 1 < micro_per_epoch {
                continue;
            }
            if dist.size() > 1 {
                let t = Instant::now();
                acc.all_reduce(dist, &reduce_layout, grads_in_layout, extra_keys, &device);
                reduce_secs += t.elapsed().as_secs_f64();
            }
            // One optimizer step over everything accumulated (on every rank alike).
            let lr = schedule.lr(state.global_step);
            let grads = acc.mean_grads();
            let norm = global_grad_norm(&grads);
            let step_loss = acc.loss_sum / acc.images as f64;
            let finite = step_loss.is_finite() && norm.is_finite();
            // f16: an overflow skips the step and halves the loss scale; f32/bf16 stop, and so
            // does f16 once skipping goes on so long that the loss itself must be diverging.
            let diverged = match &mut state.loss_scaler {
                Some(s) => {
                    s.update(finite, cfg.loss_scale_window);
                    s.diverged()
                }
                None => !finite,
            };
            if diverged {
                let last = ckpt_root.join("last");
                let skips = state.loss_scaler.as_ref().map_or(String::new(), |s| {
                    format!(" ({} f16 steps skipped in a row)", s.consecutive_skips)
                });
                return Err(Error::Training(format!(
                    "loss became {step_loss} (gradient norm {norm}) at epoch {epoch}, step {}{skips}; last good checkpoint: {} — lower --lr (2–5×), clip harder (--grad-clip 0.5), and check the data",
                    state.global_step,
                    if last.exists() {
                        last.display().to_string()
                    } else {
                        "none".into()
                    }
                )));
            }
            let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
                cfg.grad_clip / (norm + 1e-6)
            } else {
                1.0
            };
            // A skipped f16 step still counts (the schedule and the data order move on) but
            // changes nothing and stays out of the loss averages.
            if finite {
                model = optim.step(model, &grads, lr, scale);
                let buffers = acc.mean_buffers();
                if !buffers.is_empty() {
                    model = map_params(model, |path, _| buffers.get(path).cloned());
                }
                if let Some(e) = &mut ema {
                    e.update(&model);
                }
                epoch_win.add(&acc);
                log_win.add(&acc);
            }
            state.global_step += 1;
            step_ms.push(step_start.elapsed().as_secs_f64() * 1e3);
            state.images_seen += acc.images as u64;
            acc = Accumulator::default();
            if state.global_step.is_multiple_of(cfg.log_every as u64) {
                let img_s = log_win.images as f64 / log_start.elapsed().as_secs_f64();
                let mut record = MetricRecord::train(
                    epoch,
                    state.global_step,
                    log_win.loss(),
                    log_win.acc(),
                    lr,
                    img_s,
                    0.0,
                );
                record.extra = log_win.extras();
                if let Some(s) = &state.loss_scaler {
                    record.extra.insert("loss_scale".into(), s.scale);
                    record
                        .extra
                        .insert("skipped_steps".into(), s.skipped as f64);
                }
                if let Some(s) = &sparse {
                    // The sparsity evolution, and base parameters used apart from trained ones.
                    record
                        .extra
                        .extend(s.take_log(total_params - trainable_params));
                    record
                        .extra
                        .insert("trainable_params".into(), trainable_params as f64);
                }
                sinks.emit(record)?;
                (log_win, log_start) = (Window::default(), Instant::now());
            }
            pb.set_position(state.global_step - ((epoch - 1) * steps_per_epoch) as u64);
            pb.set_message(format!(
                "loss {:.4} acc {:.2}% lr {:.2e} {:.0} img/s",
                epoch_win.loss(),
                100.0 * epoch_win.acc(),
                lr,
                epoch_win.images as f64 / epoch_start.elapsed().as_secs_f64()
            ));
            let elapsed = start_elapsed + run_start.elapsed().as_secs_f64();
            // Rank 0 decides for everyone, so that all ranks stop after the same step.
            let stop = decide(
                dist,
                u32::from(INTERRUPTS.load(Ordering::SeqCst) > 0)
                    | u32::from(time_limit.is_some_and(|t| elapsed >= t)) << 1,
            );
            let (interrupted, out_of_time) = (stop & 1 != 0, stop & 2 != 0);
            let out_of_steps = cfg.max_steps > 0 && state.global_step >= cfg.max_steps;
            if out_of_steps && !interrupted && !out_of_time {
                pb.finish_and_clear();
                state.elapsed_secs = elapsed;
                state.epoch = epoch - 1;
                stopped_reason = "max_steps".into();
                save("last", &model, &optim, &ema, &state)?;
                break 'epochs;
            }
            if interrupted || out_of_time {
                pb.finish_and_clear();
                state.elapsed_secs = elapsed;
                // Mid-epoch: `epoch` is not complete; global_step says where to resume.
                state.epoch = epoch - 1;
                let path = if out_of_time {
                    stopped_reason = "time_limit".into();
                    save("checkpoint_time_limit", &model, &optim, &ema, &state)?
                } else {
                    stopped_reason = "interrupted".into();
                    ckpt_root.join("last")
                };
                save("last", &model, &optim, &ema, &state)?;
                crate::log_line!(
                    "{}: checkpoint written to {}; continue with --resume-from {}",
                    if out_of_time {
                        "time limit reached"
                    } else {
                        "interrupted"
                    },
                    path.display(),
                    ckpt_root.join("last").display()
                );
                break 'epochs;
            }
        }
        pb.finish_and_clear();
        state.epoch = epoch;
        state.elapsed_secs = start_elapsed + run_start.elapsed().as_secs_f64();
        let img_s = epoch_win.images as f64 / epoch_start.elapsed().as_secs_f64();
        let mut line = format!(
            "epoch {epoch}/{}: train loss {:.4} acc {:.2}% | {img_s:.0} img/s",
            cfg.epochs,
            epoch_win.loss(),
            100.0 * epoch_win.acc()
        );
        let mut stop_early = false;
        let eval_start = Instant::now();
        if epoch % cfg.eval_every == 0 || epoch == cfg.epochs {
            let (report, preds) = evaluate_preds(&model, &val_loader, &device)?;
            let mut record =
                MetricRecord::val(epoch, state.global_step, report.loss, report.acc, 0.0);
            line += &format!(
                " | val loss {:.4} acc {:.2}%",
                report.loss,
                100.0 * report.acc
            );
            if let Some((t_preds, t_acc)) = &teacher_val {
                let agree = distill::agreement(&preds, t_preds);
                record.extra.insert("teacher_acc".into(), *t_acc);
                record.extra.insert("teacher_agreement".into(), agree);
                line += &format!(" | teacher agreement {:.2}%", 100.0 * agree);
            }
            if let Some(e) = &ema {
                let er = evaluate(&e.model, &val_loader, &device)?;
                record.extra.insert("ema_loss".into(), er.loss);
                record.extra.insert("ema_acc".into(), er.acc);
                line += &format!(" | ema acc {:.2}%", 100.0 * er.acc);
            }
            sinks.emit(record)?;
            // Early-stopping counters first, so that best_model's state is this epoch's
            // (and never holds the initial infinite loss, which JSON cannot store).
            if report.loss < state.best_val_loss {
                state.best_val_loss = report.loss;
                state.evals_since_best = 0;
            } else {
                state.evals_since_best += 1;
            }
            if report.acc > state.best_val_acc || state.best_epoch == 0 {
                state.best_val_acc = report.acc;
                state.best_epoch = epoch;
                save("best_model", &model, &optim, &ema, &state)?;
                line += " (best)";
            }
            if cfg.patience > 0 && state.evals_since_best >= cfg.patience {
                stop_early = true;
            }
            stop_early = decide(dist, u32::from(stop_early)) == 1;
            last_eval = Some(report);
            last_preds = preds;
        }
        let eval_secs = eval_start.elapsed().as_secs_f64();
        if dist.is_main() {
            crate::log_line!("{line}");
        }
        if dist.size() > 1 {
            // Training time only (validation excluded), and the part spent in the all-reduce
            // (which includes waiting for the slowest rank).
            let secs = epoch_start.elapsed().as_secs_f64() - eval_secs;
            crate::log_line!(
                "rank {}: epoch {epoch}: {:.1} img/s on this rank, all-reduce {:.1}% of training time",
                dist.rank(),
                local_images as f64 / secs,
                100.0 * reduce_secs / secs
            );
        }
        if cfg.save_every > 0 && epoch % cfg.save_every == 0 {
            save(
                &format!("checkpoint_epoch_{epoch}"),
                &model,
                &optim,
                &ema,
                &state,
            )?;
        }
        save("last", &model, &optim, &ema, &state)?;
        if stop_early {
            crate::log_line!(
                "early stopping: validation loss has not improved for {} evaluations (best {:.4})",
                state.evals_since_best,
                state.best_val_loss
            );
            stopped_reason = "early_stopping".into();
            break;
        }
    }

    // Restore the best weights (highest validation accuracy) for the final evaluation.
    let best_dir = ckpt_root.join("best_model");
    let restore = (stopped_reason == "completed" || stopped_reason == "early_stopping")
        && best_dir.exists()
        && state.best_epoch != state.epoch;
    let final_eval = if decide(dist, u32::from(restore)) == 1 {
        if dist.is_main() {
            let best = checkpoint::load(&best_dir)?;
            model = load_state_dict_keeping(model, &best.model, &ad, is_frozen_base)?;
        }
        model = crate::dist::broadcast_params(dist, model);
        crate::log_line!(
            "restored the best weights (epoch {}, val acc {:.2}%)",
            state.best_epoch,
            100.0 * state.best_val_acc
        );
        let (report, preds) = evaluate_preds(&model, &val_loader, &device)?;
        last_preds = preds;
        Some(report)
    } else {
        last_eval
    };
    let train_seconds = state.elapsed_secs;
    let images = state.images_seen - start_images;
    let summary = Summary {
        best_val_acc: state.best_val_acc,
        best_epoch: state.best_epoch,
        epochs_completed: state.epoch,
        stopped_reason,
        final_val_loss: final_eval.as_ref().map_or(f64::NAN, |e| e.loss),
        final_val_acc: final_eval.as_ref().map_or(f64::NAN, |e| e.acc),
        params: total_params,
        total_params,
        trainable_params,
        train_images_per_sec: images as f64 / (train_seconds - start_elapsed).max(1e-9),
        train_seconds,
        peak_rss_mb: crate::util::peak_rss_mb(),
        step_ms_median: median(
            step_ms
                .get(2..)
                .filter(|t| !t.is_empty())
                .unwrap_or(&step_ms),
        ),
        optimizer_state_mb: optim.state_bytes() as f64 / (1u64 << 20) as f64,
        active_params: total_params as f64
            - sparse.as_ref().map_or(0.0, |s| s.mean_skipped_params()),
        adapter: match (&adapter, cfg.adapter) {
            (None, _) => "none",
            (Some(_), crate::config::AdapterKind::Sparselora) => "sparselora",
            (Some(_), _) => "lora",
        }
        .into(),
        freeze_backbone: cfg.freeze_backbone,
        run_dir: run_dir.clone(),
        processes: dist.size(),
        global_batch_size: global_batch,
        precision: cfg.precision.name().into(),
        skipped_steps: state.loss_scaler.as_ref().map_or(0, |s| s.skipped),
        teacher_val_acc: teacher_val.as_ref().map(|(_, a)| *a),
        teacher_agreement: teacher_val
            .as_ref()
            .filter(|_| final_eval.is_some())
            .map(|(p, _)| distill::agreement(&last_preds, p)),
    };
    if !dist.is_main() {
        return Ok(summary);
    }
    if let (Some(t), Some(a)) = (&teacher, summary.teacher_agreement) {
        crate::log_line!(
            "teacher {}: val acc {:.2}%, agreement with the student {:.2}%",
            t.source,
            100.0 * summary.teacher_val_acc.unwrap_or(f64::NAN),
            100.0 * a
        );
    }
    write_json(&run_dir.join("summary.json"), &summary)?;
    if let Some(e) = &final_eval {
        write_json(&run_dir.join("eval.json"), e)?;
    }
    match crate::report::write_report(&run_dir, final_eval.as_ref()) {
        Ok(md) => {
            if !cfg.quiet {
                crate::log_line!("{md}");
            }
        }
        Err(e) => crate::log_line!("warning: could not write the report: {e}"),
    }
    Ok(summary)
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The teacher's top-1 predictions on the validation set and its accuracy there.
fn teacher_validation(t: &Teacher, val: &Loader) -> Result<(Vec<usize>, f64)> {
    let (report, preds) = evaluate_preds(&t.model, val, &t.device)?;
    Ok((preds, report.acc))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let s = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    crate::util::write_file_synced(path, &s)
}

/// The run's hyperparameters (flags and model config) for TensorBoard's HParams and text tabs.
fn hparams(cfg: &Config, vit: &VitConfig) -> Vec<(String, HParam)> {
    let to_param = |v: &serde_json::Value| match v {
        serde_json::Value::Number(n) => HParam::Number(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::Bool(b) => HParam::Bool(*b),
        serde_json::Value::String(s) => HParam::Text(s.clone()),
        other => HParam::Text(other.to_string()),
    };
    let mut out = Vec::new();
    for (prefix, value) in [
        ("", serde_json::to_value(cfg)),
        ("model.", serde_json::to_value(vit)),
    ] {
        if let Ok(serde_json::Value::Object(m)) = value {
            out.extend(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (format!("{prefix}{k}"), to_param(v))),
            );
        }
    }
    out
}
