//! `vitrs train`: set-up (model, adapters, resume, teacher, SparseLoRA), one engine phase
//! over the run, the best weights restored, and summary.json / eval.json / report.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::adapters;
use super::checkpoint::{self, Checkpoint};
use super::distill;
use super::engine::{Engine, Hooks, Phase, PhaseEnd, StopReason};
use super::evaluate::evaluate_preds;
use super::schedule::WarmupCosine;
use crate::config::{AdapterKind, Config};
use crate::data::loader::Loader;
use crate::error::{Error, Result};
use crate::model::io::{
    HostTensor, load_state_dict, load_state_dict_keeping, read_safetensors, state_dict,
};
use crate::model::lora;
use crate::model::params::{count_params, set_trainable};
use crate::model::sparse;
use crate::model::{Model, VitConfig};
use crate::report::tensorboard::HParam;
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
    let ad = crate::device::autodiff(&device, cfg.run.grad_checkpointing);
    let resume_ck = cfg
        .run
        .resume_from
        .as_deref()
        .map(checkpoint::load)
        .transpose()?;
    let mut model = Model::new(&vit_config, cfg.run.seed, &ad)?;
    if let Some(w) = &init_weights {
        model = load_state_dict_keeping(model, w, &ad, is_head)?;
    }
    let adapter = match &resume_ck {
        // A resumed adapter run: the frozen base comes from the checkpoint's pointer.
        Some(ck) => match (&ck.adapter, &cfg.run.resume_from) {
            (Some(meta), Some(dir)) => {
                let base = read_safetensors(&meta.base.resolve(dir)?)?;
                model = load_state_dict(model, &base, &ad)?;
                model =
                    model.map_vit(|m| lora::add_adapters(m, &meta.config, cfg.run.seed, &ad))?;
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
    if cfg.peft.freeze_backbone && adapter.is_none() {
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
    let resume = match (&cfg.run.resume_from, &resume_ck) {
        (Some(dir), Some(ck)) => {
            checkpoint::check_resume(dir, ck, &vit_config, &class_names)?;
            model = load_state_dict_keeping(model, &ck.model, &ad, is_frozen_base)?;
            Some((dir.as_path(), ck))
        }
        _ => None,
    };
    let mut engine = Engine::start(
        &cfg,
        &vit_config,
        model,
        resume,
        &is_frozen_base,
        &run_dir,
        &device,
        &ad,
    )?;
    if let Some((dir, _)) = resume {
        crate::log_line!(
            "resuming from {} at epoch {} (step {})",
            dir.display(),
            engine.state.epoch + 1,
            engine.state.global_step
        );
    }
    let (total_params, trainable_params) = count_params(engine.model());
    let accum = cfg.optim.accum_steps;
    let steps_per_epoch = train_loader.num_batches().div_ceil(accum);
    // SparseLoRA: SVD estimators of the frozen base, once; sparse after the dense steps.
    let sparse = match cfg.peft.adapter {
        AdapterKind::Sparselora => Some(sparse::setup(
            engine.model().as_vit()?,
            cfg.sparse()?,
            &device,
        )?),
        _ => None,
    };
    let dense_steps = sparse.as_ref().map_or(0, |s| {
        // The fraction is of the steps this run will take (a --max-steps run stops early).
        let total = (cfg.optim.epochs * steps_per_epoch) as u64;
        let total = if cfg.run.max_steps > 0 {
            total.min(cfg.run.max_steps)
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
    let schedule = WarmupCosine::of(&cfg.optim, cfg.optim.epochs, steps_per_epoch);
    if let Some(tb) = &mut engine.sinks.tensorboard {
        tb.hparams("hparams", &hparams(&cfg, &vit_config))?;
    }
    let global_batch = cfg.optim.batch_size * accum * dist.size();
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
            cfg.model.pretrained.as_deref().unwrap_or(&cfg.model.name),
            cfg.data.dataset,
            train_loader.dataset().len(),
            val_loader.dataset().len(),
            vit_config.num_classes,
            cfg.optim.epochs,
            total_params,
            steps_per_epoch,
            cfg.optim.batch_size,
            dist.size(),
            run_dir.display()
        );
    }

    let start_elapsed = engine.state.elapsed_secs;
    let start_images = engine.state.images_seen;
    engine.sparse = sparse;
    engine.dense_steps = dense_steps;
    let mut hooks = TrainHooks {
        save: &|name: &str, e: &Engine| {
            let dest = ckpt_root.join(name);
            if !dist.is_main() {
                return Ok(dest);
            }
            checkpoint::save(
                &dest,
                &Checkpoint {
                    model: trained(state_dict(e.model())),
                    vit_config: vit_config.clone(),
                    optimizer: Some(e.optim.state_dict()),
                    ema: e.ema.as_ref().map(|m| trained(state_dict(&m.model))),
                    state: Some(e.state.clone()),
                    train_config: Some(cfg.clone()),
                    class_names: Some(class_names.clone()),
                    adapter: adapter.clone(),
                },
            )?;
            Ok(dest)
        },
    };
    let phase = Phase {
        train: &train_loader,
        val: &val_loader,
        val_classes: None,
        epochs: cfg.optim.epochs,
        epoch_base: 0,
        data_epoch: 1,
        step_base: 0,
        schedule: &schedule,
        label: String::new(),
    };
    let end = engine.fit(&phase, &mut hooks)?;
    let PhaseEnd {
        reason,
        last_eval,
        mut last_preds,
        teacher_val,
    } = end;

    // Restore the best weights (highest validation accuracy) for the final evaluation.
    let final_eval = match matches!(reason, StopReason::Completed | StopReason::EarlyStopping)
        && engine.restore_best(&ckpt_root.join("best_model"), &is_frozen_base)?
    {
        true => {
            crate::log_line!(
                "restored the best weights (epoch {}, val acc {:.2}%)",
                engine.state.best_epoch,
                100.0 * engine.state.best_val_acc
            );
            let (report, preds) = evaluate_preds(engine.model(), &val_loader, &device, None)?;
            last_preds = preds;
            Some(report)
        }
        false => last_eval,
    };
    let state = &engine.state;
    let train_seconds = state.elapsed_secs;
    let images = state.images_seen - start_images;
    let summary = Summary {
        best_val_acc: state.best_val_acc,
        best_epoch: state.best_epoch,
        epochs_completed: state.epoch,
        stopped_reason: reason.name().into(),
        final_val_loss: final_eval.as_ref().map_or(f64::NAN, |e| e.loss),
        final_val_acc: final_eval.as_ref().map_or(f64::NAN, |e| e.acc),
        params: total_params,
        total_params,
        trainable_params,
        train_images_per_sec: images as f64 / (train_seconds - start_elapsed).max(1e-9),
        train_seconds,
        peak_rss_mb: crate::util::peak_rss_mb(),
        step_ms_median: median(
            engine
                .step_ms
                .get(2..)
                .filter(|t| !t.is_empty())
                .unwrap_or(&engine.step_ms),
        ),
        optimizer_state_mb: engine.optim.state_bytes() as f64 / (1u64 << 20) as f64,
        active_params: total_params as f64
            - engine
                .sparse
                .as_ref()
                .map_or(0.0, |s| s.mean_skipped_params()),
        adapter: match (&adapter, cfg.peft.adapter) {
            (None, _) => "none",
            (Some(_), crate::config::AdapterKind::Sparselora) => "sparselora",
            (Some(_), _) => "lora",
        }
        .into(),
        freeze_backbone: cfg.peft.freeze_backbone,
        run_dir: run_dir.clone(),
        processes: dist.size(),
        global_batch_size: global_batch,
        precision: cfg.optim.precision.name().into(),
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
    if let (Some(t), Some(a)) = (&engine.teacher, summary.teacher_agreement) {
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
            if !cfg.run.quiet {
                crate::log_line!("{md}");
            }
        }
        Err(e) => crate::log_line!("warning: could not write the report: {e}"),
    }
    Ok(summary)
}

/// `train`'s plug: checkpoints written by the closure that knows the run.
struct TrainHooks<'a> {
    save: &'a dyn Fn(&str, &Engine) -> Result<PathBuf>,
}

impl Hooks for TrainHooks<'_> {
    fn save(&mut self, engine: &Engine, name: &str) -> Result<PathBuf> {
        (self.save)(name, engine)
    }
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
