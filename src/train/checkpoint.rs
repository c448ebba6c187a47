//! Checkpoints: one directory each, written under a temporary name, fsynced, then swapped
//! into place, so a crash (or kill -9) never leaves a partial one and never destroys the
//! previous good one.
//!
//! ```text
//! <dir>/model.safetensors      weights, timm names, PyTorch layouts
//! <dir>/config.json            the model config (VitConfig)
//! <dir>/optimizer.safetensors  AdamW moments, `<param>.exp_avg(_sq)`
//! <dir>/ema.safetensors        EMA weights (with --ema-decay), same names as the model
//! <dir>/training_state.json    epoch, step, best metrics, early-stopping counters
//! <dir>/train_config.toml      the full resolved run configuration
//! <dir>/classes.json           class names, for `predict`
//! ```
//! A LoRA run's checkpoints hold only what was trained, in PEFT's format, instead of
//! `model.safetensors`: `adapter_model.safetensors` + `adapter_config.json` (PEFT's
//! `save_pretrained`), and `base.json` pointing at the frozen base weights (path + sha256;
//! the run writes them once to `<run>/base_model/`).
//! Data order, augmentation and dropout are addressed by (seed, epoch, index/step), so the
//! epoch and step *are* the RNG and data-order state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::VitConfig;
use crate::model::io::{
    HostTensor, load_state_dict, read_safetensors, state_dict, write_safetensors,
};
use crate::model::lora::{self, LoraConfig};
use crate::util::{replace_dir, write_file_synced};
use crate::weights::{self, Origin, Pretrained};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Epochs fully completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub global_step: u64,
    pub best_val_acc: f64,
    /// `null` in JSON until the first evaluation (JSON has no infinity).
    #[serde(deserialize_with = "null_as_infinity")]
    pub best_val_loss: f64,
    pub best_epoch: usize,
    /// Evaluations since the validation loss last improved (early stopping).
    pub evals_since_best: usize,
    /// Training seconds before this checkpoint (for time limits and throughput).
    pub elapsed_secs: f64,
    pub images_seen: u64,
    /// Images per optimizer step over all processes (batch × accumulation × processes): a
    /// resumed run must keep it, since its place in the epoch is counted in steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<usize>,
    /// f16 dynamic loss scaling (`None` in f32 and bf16 runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<super::scaler::LossScaler>,
}

fn null_as_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

pub struct Checkpoint {
    pub model: BTreeMap<String, HostTensor>,
    pub vit_config: VitConfig,
    pub optimizer: Option<BTreeMap<String, HostTensor>>,
    /// EMA weights, same names and layouts as `model`.
    pub ema: Option<BTreeMap<String, HostTensor>>,
    pub state: Option<TrainingState>,
    pub train_config: Option<Config>,
    pub class_names: Option<Vec<String>>,
    /// Set for adapter runs: `model` (and `ema`) then hold the trained parameters only.
    pub adapter: Option<AdapterMeta>,
}

/// Where an adapter checkpoint's frozen base weights are, and their digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseRef {
    /// The base's `model.safetensors` (absolute when written by a run).
    pub path: PathBuf,
    pub sha256: String,
    /// What the base was made from (`--pretrained` spec, or "scratch").
    pub source: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AdapterMeta {
    pub config: LoraConfig,
    pub base: BaseRef,
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, "opening", e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| Error::io(path, "reading", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl BaseRef {
    /// The base file: `path`, or `<run>/base_model/model.safetensors` beside the checkpoint
    /// when the run directory was moved; its digest must match.
    pub fn resolve(&self, ckpt_dir: &Path) -> Result<PathBuf> {
        let beside = run_dir_of(ckpt_dir).map(|r| r.join("base_model").join("model.safetensors"));
        let path = if self.path.is_file() {
            self.path.clone()
        } else if let Some(p) = beside.filter(|p| p.is_file()) {
            p
        } else {
            return Err(Error::Checkpoint(format!(
                "{}: the adapter's base weights {} are missing (restore them, or copy the run's base_model/ beside its checkpoints/)",
                ckpt_dir.display(),
                self.path.display()
            )));
        };
        let found = sha256_file(&path)?;
        if found != self.sha256 {
            return Err(Error::Checkpoint(format!(
                "{} is not the base this adapter was trained on (sha256 {found}, expected {}); give the original base weights",
                path.display(),
                self.sha256
            )));
        }
        Ok(path)
    }
}

impl Checkpoint {
    /// Every weight of the model as one plain state dict: the checkpoint's own, or for an
    /// adapter checkpoint the base with the adapter merged in (`weights` replaces the
    /// trained parameters, e.g. by their EMA).
    pub fn full_weights(
        &self,
        dir: &Path,
        weights: &BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>> {
        let Some(meta) = &self.adapter else {
            return Ok(weights.clone());
        };
        let device = burn::tensor::Device::flex();
        let base = read_safetensors(&meta.base.resolve(dir)?)?;
        let model = crate::model::VisionTransformer::new(&self.vit_config, 0, &device)?;
        let model = load_state_dict(model, &base, &device)?;
        let adapter = lora::Adapter {
            config: meta.config.clone(),
            state: weights.clone(),
            base_model_name_or_path: Some(meta.base.source.clone()),
        };
        let model = lora::apply_adapter(model, &adapter, &device)?;
        Ok(state_dict(&lora::merge(model)))
    }
}

fn json_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint(format!("{}: {e}", path.display()))
}

/// Write a checkpoint directory at `dest` atomically.
pub fn save(dest: &Path, ckpt: &Checkpoint) -> Result<()> {
    save_with(dest, ckpt, |_| Ok(()))
}

/// [`save`], with `extra(tmp_dir)` writing more files into the directory before it is
/// swapped into place (the continual runner's Fisher, replay buffer and task state).
pub fn save_with(
    dest: &Path,
    ckpt: &Checkpoint,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::io(parent, "creating checkpoint directory", e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, "creating", e))?;
        match &ckpt.adapter {
            Some(meta) => {
                lora::write_peft(&tmp, &ckpt.model, &meta.config, Some(&meta.base.source))?;
                let s = serde_json::to_vec_pretty(&meta.base).map_err(|e| json_err(dest, e))?;
                write_file_synced(&tmp.join("base.json"), &s)?;
            }
            None => write_safetensors(&tmp.join("model.safetensors"), &ckpt.model, None)?,
        }
        let cfg = serde_json::to_vec_pretty(&ckpt.vit_config).map_err(|e| json_err(dest, e))?;
        write_file_synced(&tmp.join("config.json"), &cfg)?;
        if let Some(opt) = &ckpt.optimizer {
            write_safetensors(&tmp.join("optimizer.safetensors"), opt, None)?;
        }
        if let Some(ema) = &ckpt.ema {
            write_safetensors(&tmp.join("ema.safetensors"), ema, None)?;
        }
        if let Some(state) = &ckpt.state {
            let s = serde_json::to_vec_pretty(state).map_err(|e| json_err(dest, e))?;
            write_file_synced(&tmp.join("training_state.json"), &s)?;
        }
        if let Some(tc) = &ckpt.train_config {
            write_file_synced(&tmp.join("train_config.toml"), tc.to_toml().as_bytes())?;
        }
        if let Some(names) = &ckpt.class_names {
            let s = serde_json::to_vec_pretty(names).map_err(|e| json_err(dest, e))?;
            write_file_synced(&tmp.join("classes.json"), &s)?;
        }
        extra(&tmp)?;
        crate::util::sync_dir(&tmp)?;
        replace_dir(&tmp, dest)
    })();
    if result.is_err() {
        // Leave the previous checkpoint untouched and clean up our partial write.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map_err(|e| {
        Error::Checkpoint(format!(
            "could not save checkpoint {}: {e} (the previous checkpoint is intact)",
            dest.display()
        ))
    })
}

/// Read a checkpoint directory. Weights and model config are required; the training state
/// only for resuming.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let ck = load_weights(dir)?;
    let opt_path = dir.join("optimizer.safetensors");
    let optimizer = opt_path
        .exists()
        .then(|| read_safetensors(&opt_path))
        .transpose()?;
    let ema_path = dir.join("ema.safetensors");
    let ema = ema_path
        .exists()
        .then(|| read_safetensors(&ema_path))
        .transpose()?;
    let state_path = dir.join("training_state.json");
    let state = if state_path.exists() {
        let s = std::fs::read(&state_path).map_err(|e| Error::io(&state_path, "reading", e))?;
        Some(serde_json::from_slice(&s).map_err(|e| json_err(&state_path, e))?)
    } else {
        None
    };
    let tc_path = dir.join("train_config.toml");
    let train_config = if tc_path.exists() {
        let s = std::fs::read_to_string(&tc_path).map_err(|e| Error::io(&tc_path, "reading", e))?;
        Some(toml::from_str(&s).map_err(|e| json_err(&tc_path, e))?)
    } else {
        None
    };
    let classes_path = dir.join("classes.json");
    let class_names = match std::fs::read(&classes_path) {
        Ok(s) => Some(serde_json::from_slice(&s).map_err(|e| json_err(&classes_path, e))?),
        Err(_) => None,
    };
    Ok(Checkpoint {
        class_names,
        optimizer,
        ema,
        state,
        train_config,
        ..ck
    })
}

/// The model part of a checkpoint directory only (its config and weights, or its adapter and
/// base pointer), for readers that need no optimizer, EMA or training state.
pub fn load_weights(dir: &Path) -> Result<Checkpoint> {
    if !dir.is_dir() {
        return Err(Error::Checkpoint(format!(
            "{} is not a checkpoint directory (expected e.g. runs/<run>/checkpoints/last)",
            dir.display()
        )));
    }
    let cfg_path = dir.join("config.json");
    let cfg = std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, "reading", e))?;
    let vit_config: VitConfig = serde_json::from_slice(&cfg).map_err(|e| json_err(&cfg_path, e))?;
    let (model, adapter) = if lora::is_adapter_dir(dir) {
        let a = lora::read_peft(dir)?;
        let base_path = dir.join("base.json");
        let b = std::fs::read(&base_path).map_err(|e| {
            Error::io(
                &base_path,
                "reading (an adapter directory written by PEFT has no base pointer: use --pretrained BASE --adapter-from DIR)",
                e,
            )
        })?;
        let base: BaseRef = serde_json::from_slice(&b).map_err(|e| json_err(&base_path, e))?;
        (
            a.state,
            Some(AdapterMeta {
                config: a.config,
                base,
            }),
        )
    } else {
        (read_safetensors(&dir.join("model.safetensors"))?, None)
    };
    Ok(Checkpoint {
        model,
        vit_config,
        adapter,
        optimizer: None,
        ema: None,
        state: None,
        train_config: None,
        class_names: None,
    })
}

/// Pretrained weights from `spec` (see [`weights::load`]), vitrs checkpoint directories
/// included: what `--pretrained`, `--teacher`, `export` and `logits` read.
pub fn load_pretrained(spec: &str) -> Result<Pretrained> {
    weights::load(spec, as_pretrained)
}

/// A checkpoint directory as pretrained weights: the reader [`weights::load`] is given, since
/// checkpoints are this module's format. The normalisation is the run's own, from its
/// `train_config.toml`.
fn as_pretrained(dir: &Path) -> Result<Pretrained> {
    // An adapter checkpoint (LoRA run) becomes its base with the adapter merged in.
    let ck = load_weights(dir)?;
    let weights = ck.full_weights(dir, &ck.model)?;
    let config = ck.vit_config;
    let source = dir.to_path_buf();
    let class_names = std::fs::read(dir.join("classes.json"))
        .ok()
        .and_then(|s| serde_json::from_slice(&s).ok());
    let (mean, std) = match std::fs::read_to_string(dir.join("train_config.toml"))
        .ok()
        .and_then(|s| toml::from_str::<Config>(&s).ok())
    {
        Some(tc) => {
            let (m, s) = crate::data::load::mean_std(&tc, config.in_chans);
            (
                Some(m.iter().map(|&x| x as f64).collect()),
                Some(s.iter().map(|&x| x as f64).collect()),
            )
        }
        None => (None, None),
    };
    Ok(Pretrained {
        origin: Origin::Vitrs,
        has_head: weights.contains_key("head.weight") || weights.contains_key("fc.weight"),
        config,
        weights,
        mean,
        std,
        class_names,
        source,
        notes: Vec::new(),
    })
}

/// The run directory a checkpoint belongs to (`<run>/checkpoints/<name>` → `<run>`).
pub fn run_dir_of(ckpt_dir: &Path) -> Option<PathBuf> {
    let parent = ckpt_dir.parent()?;
    (parent.file_name()? == "checkpoints")
        .then(|| parent.parent().map(Path::to_path_buf))
        .flatten()
}

/// A checkpoint resumes only into the run it belongs to: the same model, and data with the
/// same classes.
pub fn check_resume(
    dir: &Path,
    ck: &Checkpoint,
    run: &VitConfig,
    classes: &[String],
) -> Result<()> {
    same_model(dir, &ck.vit_config, run)?;
    same_classes(dir, ck.class_names.as_deref(), run.num_classes, classes)
}

/// A checkpoint holds `run`'s model.
fn same_model(dir: &Path, held: &VitConfig, run: &VitConfig) -> Result<()> {
    if held == run {
        return Ok(());
    }
    Err(Error::Checkpoint(format!(
        "{} holds a different model ({} dim, {} blocks, {} classes) than this run ({} dim, {} blocks, {} classes); resume with the same model flags",
        dir.display(),
        held.embed_dim,
        held.depth,
        held.num_classes,
        run.embed_dim,
        run.depth,
        run.num_classes
    )))
}

/// The data's classes must be the checkpoint's, in the same order (labels are indices): an
/// image folder that gained a class, or another dataset, would be scored against the wrong
/// names. A checkpoint that does not record its classes is compared by count.
pub fn same_classes(
    dir: &Path,
    held: Option<&[String]>,
    model_classes: usize,
    data: &[String],
) -> Result<()> {
    let fits = match held {
        Some(h) => h == data,
        None => data.len() <= model_classes,
    };
    if fits {
        return Ok(());
    }
    let show = |names: &[String]| {
        let head: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
        let more = if names.len() > 5 { ", …" } else { "" };
        format!("{} [{}{more}]", names.len(), head.join(", "))
    };
    Err(Error::Data(format!(
        "{} was trained on {} classes but the data has {}: give it the data it was trained on (--dataset, --data-dir)",
        dir.display(),
        held.map_or_else(|| model_classes.to_string(), show),
        show(data)
    )))
}

/// Remove the half-written checkpoints (`.tmp-*`) a killed process left: never used.
pub fn clear_partial(ckpt_root: &Path) {
    if let Ok(entries) = std::fs::read_dir(ckpt_root) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Resume the optimizer moments (on `ad`) and the EMA (on `device`) from `ck`, read from
/// `dir`; returns its training state. The model's own weights are the caller's to load.
pub fn resume_into(
    dir: &Path,
    ck: &Checkpoint,
    optim: &mut crate::train::optim::AdamW,
    ema: &mut Option<crate::train::ema::Ema<crate::model::Model>>,
    ad: &burn::tensor::Device,
    device: &burn::tensor::Device,
    keep: &dyn Fn(&str) -> bool,
) -> Result<TrainingState> {
    let st = ck.state.clone().ok_or_else(|| {
        Error::Checkpoint(format!(
            "{} has no training_state.json: it holds weights only and cannot be resumed",
            dir.display()
        ))
    })?;
    let opt = ck.optimizer.as_ref().ok_or_else(|| {
        Error::Checkpoint(format!(
            "{} has no optimizer.safetensors: resuming would restart AdamW's moments; start from its weights with --pretrained {} instead",
            dir.display(),
            dir.display()
        ))
    })?;
    // Steps skipped for f16 overflow took no optimizer step.
    let skipped = st.loss_scaler.as_ref().map_or(0, |s| s.skipped);
    optim.load_state_dict(opt, st.global_step - skipped, ad)?;
    if let (Some(e), Some(w)) = (ema, &ck.ema) {
        e.model = crate::model::io::load_state_dict_keeping(e.model.clone(), w, device, keep)?;
        e.updates = st.global_step;
    }
    Ok(st)
}

/// The f16 loss scaler exactly when `precision` scales the loss (kept from a resumed state).
pub fn fit_scaler(
    state: &mut TrainingState,
    precision: crate::model::precision::Precision,
    initial: f64,
) {
    if !precision.scales_loss() {
        state.loss_scaler = None;
    } else if state.loss_scaler.is_none() {
        state.loss_scaler = Some(super::scaler::LossScaler::new(initial));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VisionTransformer;
    use crate::model::io::state_dict;
    use burn::tensor::Device;

    fn tiny(seed: u64) -> Checkpoint {
        let c = VitConfig::with_shape(8, 4, 3, 3, [8, 1, 2, 16]);
        let m = VisionTransformer::new(&c, seed, &Device::flex()).unwrap();
        Checkpoint {
            model: state_dict(&m),
            vit_config: c,
            optimizer: None,
            ema: None,
            state: Some(TrainingState::default()),
            train_config: None,
            class_names: None,
            adapter: None,
        }
    }

    #[test]
    fn a_failed_write_keeps_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let last = dir.path().join("last");
        save(&last, &tiny(1)).unwrap();
        // Make the temporary directory impossible to create (a file is in the way), as a full
        // or read-only disk would make the write fail.
        std::fs::write(
            dir.path().join(format!(".tmp-last-{}", std::process::id())),
            b"x",
        )
        .unwrap();
        let e = save(&last, &tiny(2)).unwrap_err().to_string();
        assert!(e.contains("previous checkpoint is intact"), "{e}");
        assert_eq!(load(&last).unwrap().model, tiny(1).model);
    }

    #[test]
    fn a_state_before_any_evaluation_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut ck = tiny(1);
        ck.state = Some(TrainingState {
            best_val_loss: f64::INFINITY,
            global_step: 7,
            ..Default::default()
        });
        save(&dir.path().join("last"), &ck).unwrap();
        let back = load(&dir.path().join("last")).unwrap().state.unwrap();
        assert_eq!(back.best_val_loss, f64::INFINITY);
        assert_eq!(back.global_step, 7);
    }

    #[test]
    fn replacing_a_checkpoint_swaps_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let last = dir.path().join("last");
        save(&last, &tiny(1)).unwrap();
        save(&last, &tiny(2)).unwrap();
        assert_eq!(load(&last).unwrap().model, tiny(2).model);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
