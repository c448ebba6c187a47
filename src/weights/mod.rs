//! Pretrained weights in and out: HF transformers ViT (`config.json` + `model.safetensors`),
//! timm ViT / DeiT-distilled / ResNet state dicts, hub ids through the Hugging Face cache, and
//! vitrs checkpoints (read by `train::checkpoint`, which owns their format); exported back as
//! timm or HF. This sits above `model`: it builds models from files, and `model` knows nothing
//! of where weights come from.
//!
//! Everything is converted to vitrs' own (= timm's) names on the way in ([`names`]), so the
//! rest of vitrs sees one layout. The model config comes from the checkpoint ([`infer`]);
//! position embeddings are resampled to another resolution as the source library would
//! ([`resample`]).

pub mod export;
pub mod hub;
pub mod infer;
pub mod names;
pub mod onnx;
pub mod onnx_proto;
pub mod resample;
pub mod sharded;
pub mod timm_registry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::VitConfig;
use crate::model::io::{HostTensor, load_state_dict_keeping, read_safetensors};
use resample::{Resample, resample_pos_embed};

/// Where a set of weights came from; decides name mapping and resampling semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Hf,
    Timm,
    Vitrs,
}

/// Weights ready to become a [`crate::model::Model`] ([`Pretrained::build`]).
#[derive(Clone, Debug)]
pub struct Pretrained {
    pub origin: Origin,
    /// The model as the checkpoint describes it. `num_classes` is 0 when it has no head.
    pub config: VitConfig,
    /// timm names, PyTorch layouts. Without `head.*` (and `head_dist.*`) when there is no head
    /// or it was replaced: the model then keeps its fresh initialisation there.
    pub weights: BTreeMap<String, HostTensor>,
    pub has_head: bool,
    /// Input normalisation the weights were trained with, when the checkpoint says.
    pub mean: Option<Vec<f64>>,
    pub std: Option<Vec<f64>>,
    pub class_names: Option<Vec<String>>,
    /// The weights file, for messages.
    pub source: PathBuf,
    /// Things worth telling the user (assumptions made, tensors ignored).
    pub notes: Vec<String>,
}

fn err(m: impl Into<String>) -> Error {
    Error::Checkpoint(m.into())
}

fn read_json(path: &Path) -> Result<Value> {
    let s = std::fs::read(path).map_err(|e| Error::io(path, "reading", e))?;
    serde_json::from_slice(&s).map_err(|e| err(format!("{}: not valid JSON ({e})", path.display())))
}

const PICKLE_EXTS: &[&str] = &["bin", "pth", "pt", "ckpt", "pkl", "tar", "pickle"];

fn pickle_refusal(path: &Path) -> Error {
    err(format!(
        "{} is a PyTorch pickle; vitrs reads safetensors only (convert it with `safetensors.torch.save_file(torch.load(path, weights_only=True), \"model.safetensors\")`, or use the repository's model.safetensors)",
        path.display()
    ))
}

/// PyTorch's zip container or a raw pickle stream, whatever the file is called.
fn is_pickle(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if PICKLE_EXTS.contains(&ext.as_str()) {
        return true;
    }
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    n >= 2 && (head.starts_with(b"PK\x03\x04") || (head[0] == 0x80 && (2..=5).contains(&head[1])))
}

/// Reads a vitrs checkpoint directory (its `config.json` is a [`VitConfig`]) as pretrained
/// weights. Checkpoints are training's format, above this module, so loading takes the reader
/// as an argument (`train::checkpoint::load_pretrained` passes its own).
pub type CheckpointReader = fn(&Path) -> Result<Pretrained>;

/// Load `spec`: a directory (HF or timm with `config.json` + `model.safetensors`, or a vitrs
/// checkpoint), a `.safetensors` file (a `config.json` beside it is read), or a hub id.
pub fn load(spec: &str, checkpoint: CheckpointReader) -> Result<Pretrained> {
    let path = Path::new(spec);
    if path.exists() {
        return load_path(path, checkpoint);
    }
    if hub::looks_like_id(spec) {
        return load_hub(&hub::Repo::from_env(spec)?);
    }
    Err(err(format!(
        "{spec}: no such file or directory (give a directory with config.json and model.safetensors, a .safetensors file, a vitrs checkpoint directory, or a hub id such as google/vit-base-patch16-224-in21k)"
    )))
}

/// A hub repository, through the Hugging Face cache (downloading what is missing when online).
pub fn load_hub(repo: &hub::Repo) -> Result<Pretrained> {
    let config = repo.get("config.json", true)?;
    // One file, or a sharded checkpoint: its index, then every shard it names.
    let weights = match repo.get("model.safetensors", false)? {
        Some(w) => w,
        None => {
            let Some(index) = repo.get(sharded::INDEX, false)? else {
                // Neither: the error of the file most repositories have.
                return repo
                    .get("model.safetensors", true)
                    .and_then(|_| Err(err(format!("{}: no model.safetensors", repo.id))));
            };
            for shard in sharded::shard_names(&sharded::weight_map(&index)?) {
                repo.get(&shard, true)?;
            }
            index
        }
    };
    let pre = repo.get("preprocessor_config.json", false)?;
    from_files(&weights, config.as_deref(), pre.as_deref())
}

pub fn load_path(path: &Path, checkpoint: CheckpointReader) -> Result<Pretrained> {
    if path.is_dir() && is_vitrs_checkpoint(&path.join("config.json")) {
        return checkpoint(path);
    }
    if path.is_dir() {
        let weights = path.join("model.safetensors");
        let index = path.join(sharded::INDEX);
        let weights = if weights.is_file() {
            weights
        } else if index.is_file() {
            index
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, "listing", e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            files.sort();
            let safe: Vec<&PathBuf> = files
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            match safe.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    if let Some(p) = files.iter().find(|p| p.is_file() && is_pickle(p)) {
                        return Err(pickle_refusal(p));
                    }
                    return Err(err(format!(
                        "{}: no model.safetensors in this directory",
                        path.display()
                    )));
                }
                _ => {
                    return Err(err(format!(
                        "{}: several .safetensors files and no model.safetensors; name the file to load",
                        path.display()
                    )));
                }
            }
        };
        let config = path.join("config.json");
        let pre = path.join("preprocessor_config.json");
        return from_files(
            &weights,
            config.is_file().then_some(config.as_path()),
            pre.is_file().then_some(pre.as_path()),
        );
    }
    if is_pickle(path) {
        return Err(pickle_refusal(path));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let config = dir.join("config.json");
    let pre = dir.join("preprocessor_config.json");
    from_files(
        path,
        config.is_file().then_some(config.as_path()),
        pre.is_file().then_some(pre.as_path()),
    )
}

fn is_vitrs_checkpoint(config: &Path) -> bool {
    read_json(config)
        .ok()
        .is_some_and(|v| serde_json::from_value::<VitConfig>(v).is_ok())
}

/// Weights plus the optional `config.json` and `preprocessor_config.json` beside them.
pub fn from_files(
    weights: &Path,
    config: Option<&Path>,
    preprocessor: Option<&Path>,
) -> Result<Pretrained> {
    if is_pickle(weights) {
        return Err(pickle_refusal(weights));
    }
    let raw = if sharded::is_index(weights) {
        sharded::read(weights, &sharded::beside(weights))?
    } else {
        read_safetensors(weights)?
    };
    let config = config.map(read_json).transpose()?;
    let pre = preprocessor.map(read_json).transpose()?;
    from_state_dict(raw, config.as_ref(), pre.as_ref(), weights)
}

/// [`from_files`] after reading: the model from the tensors of `weights` (named in errors)
/// and the parsed JSON configs. Public so the safetensors fuzz target drives exactly this code.
pub fn from_state_dict(
    raw: BTreeMap<String, HostTensor>,
    config: Option<&Value>,
    pre: Option<&Value>,
    weights: &Path,
) -> Result<Pretrained> {
    if crate::model::resnet::is_timm_resnet(&raw) {
        return infer::from_timm_resnet(raw, config, weights);
    }
    let mut p = match names::detect(&raw, weights)? {
        Origin::Hf => infer::from_hf(raw, config, pre, weights)?,
        _ => infer::from_timm(raw, config, weights)?,
    };
    p.source = weights.to_path_buf();
    Ok(p)
}

impl Pretrained {
    /// The resampling the source library would use for these weights.
    pub fn resample_method(&self) -> Resample {
        match self.origin {
            Origin::Hf => Resample::Bicubic,
            Origin::Timm | Origin::Vitrs => Resample::Antialias,
        }
    }

    /// Change the input resolution, resampling the position embeddings. Returns a note when
    /// something changed.
    pub fn set_img_size(&mut self, img_size: usize) -> Result<Option<String>> {
        let c = self.config.clone();
        if img_size == c.img_size {
            return Ok(None);
        }
        if c.cnn.is_some() {
            // Convolutions and global pooling take any resolution.
            self.config.img_size = img_size;
            return Ok(None);
        }
        if img_size == 0 || !img_size.is_multiple_of(c.patch_size) {
            return Err(Error::Config(format!(
                "img-size {img_size} is not divisible by the checkpoint's patch size {} (choose a multiple of it)",
                c.patch_size
            )));
        }
        // The size guard before the resampled table is allocated.
        VitConfig {
            img_size,
            ..c.clone()
        }
        .validate()?;
        let (old, new) = (c.img_size / c.patch_size, img_size / c.patch_size);
        let method = self.resample_method();
        let pe = self
            .weights
            .get("pos_embed")
            .ok_or_else(|| err("no pos_embed to resample"))?;
        // The prefix rows the table holds (none when only the patches are embedded) stay.
        let prefix = if c.no_embed_class {
            0
        } else {
            c.num_prefix_tokens()
        };
        let pe = resample_pos_embed(pe, prefix, (new, new), method)?;
        self.weights.insert("pos_embed".into(), pe);
        self.config.img_size = img_size;
        Ok(Some(format!(
            "resampled the position embeddings from {old}×{old} to {new}×{new} patches ({}×{} → {img_size}×{img_size} pixels, {})",
            old * c.patch_size,
            old * c.patch_size,
            match method {
                Resample::Antialias => "bicubic with antialias, as timm's resample_abs_pos_embed",
                Resample::Bicubic => "bicubic, as HF's interpolate_pos_encoding",
            }
        )))
    }

    /// Drop the head(s): the model built from these weights gets a freshly initialised
    /// `num_classes` head (as `VisionTransformer::new` initialises it).
    pub fn replace_head(&mut self, num_classes: usize) {
        self.weights
            .retain(|k, _| !k.starts_with("head") && !k.starts_with("fc."));
        self.has_head = false;
        self.config.num_classes = num_classes;
        self.class_names = None;
    }

    /// The model, on `device`. Without a head in the weights the model's fresh head (from
    /// `seed`) stays.
    pub fn build(&self, seed: u64, device: &Device) -> Result<crate::model::Model> {
        if self.config.num_classes == 0 {
            return Err(err(format!(
                "{} has no classification head; give --num-classes to add a fresh one",
                self.source.display()
            )));
        }
        self.check_holds_the_body()?;
        let model = crate::model::Model::new(&self.config, seed, device)?;
        load_state_dict_keeping(model, &self.weights, device, is_head)
    }

    /// The weights hold at least the values of every ViT weight outside the head, checked
    /// before the model is built: zero-size tensors can declare any shape, so a small file
    /// could otherwise make vitrs allocate gigabytes for a model it then cannot fill.
    fn check_holds_the_body(&self) -> Result<()> {
        let c = &self.config;
        if c.cnn.is_some() {
            return Ok(());
        }
        // The head may be absent (a fresh one is initialised): it is not counted.
        let body = c.num_params().saturating_sub(c.head_params());
        let held: u128 = self.weights.values().map(|t| t.data.len() as u128).sum();
        if held < body {
            return Err(err(format!(
                "{}: the weights hold {held} values, but a ViT of the shapes they declare (embed-dim {}, depth {}, mlp-dim {}, {} tokens) has {body} outside its head: some tensors are empty or missing",
                self.source.display(),
                c.embed_dim,
                c.depth,
                c.mlp_dim,
                c.num_tokens()
            )));
        }
        Ok(())
    }

    /// Merge a PEFT LoRA adapter into these weights (PEFT's `merge_and_unload()`): the
    /// adapter's saved modules (the head) replace the base's.
    pub fn merge_adapter(&mut self, adapter: &crate::model::lora::Adapter) -> Result<()> {
        if let Some(h) = adapter.state.get("head.weight") {
            if h.shape.len() == 2 && h.shape[0] != self.config.num_classes {
                self.replace_head(h.shape[0]);
            }
        } else if !self.has_head {
            return Err(err(format!(
                "{} has no classification head and the adapter brings none",
                self.source.display()
            )));
        }
        let device = Device::flex();
        let model = self.build(0, &device)?;
        let model = model.map_vit(|m| {
            Ok(crate::model::lora::merge(
                crate::model::lora::apply_adapter(m, adapter, &device)?,
            ))
        })?;
        self.weights = crate::model::io::state_dict(&model);
        self.has_head = true;
        Ok(())
    }
}

/// The parameters pretrained loading may leave to fresh initialisation (a ResNet's head is
/// `fc`).
pub fn is_head(path: &str) -> bool {
    path.starts_with("head.") || path.starts_with("head_dist.") || path.starts_with("fc.")
}

/// ImageNet's mean and std (torchvision's values), the fallback normalisation of pretrained
/// weights that do not say theirs.
pub fn imagenet() -> (Vec<f64>, Vec<f64>) {
    let f = |v: &[f32]| v.iter().map(|&x| (x as f64 * 1e6).round() / 1e6).collect();
    (
        f(&crate::data::IMAGENET_MEAN),
        f(&crate::data::IMAGENET_STD),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VisionTransformer;
    use crate::model::io::state_dict;

    // Shared with the other weights:: test modules.
    pub(super) fn tiny(dist: bool) -> VitConfig {
        VitConfig {
            dist_token: dist,
            ..VitConfig::with_shape(8, 4, 3, 3, [8, 2, 2, 12])
        }
    }

    pub(super) fn pretrained_of(c: &VitConfig, origin: Origin) -> Pretrained {
        let m = VisionTransformer::new(c, 7, &Device::flex()).unwrap();
        Pretrained {
            origin,
            config: c.clone(),
            weights: state_dict(&m),
            has_head: true,
            mean: None,
            std: None,
            class_names: None,
            source: PathBuf::from("test"),
            notes: vec![],
        }
    }

    #[test]
    fn head_replacement_keeps_the_backbone_and_inits_a_fresh_head() {
        let device = Device::flex();
        let c = tiny(true);
        let mut p = pretrained_of(&c, Origin::Timm);
        p.replace_head(5);
        let m = p.build(3, &device).unwrap();
        let sd = state_dict(&m);
        assert_eq!(sd["head.weight"].shape, vec![5, 8]);
        assert_eq!(sd["head_dist.weight"].shape, vec![5, 8]);
        assert_eq!(
            sd["blocks.1.mlp.fc2.weight"],
            p.weights["blocks.1.mlp.fc2.weight"]
        );
        // Fresh as VisionTransformer::new makes it with the same seed.
        let fresh = state_dict(
            &VisionTransformer::new(
                &VitConfig {
                    num_classes: 5,
                    ..c
                },
                3,
                &device,
            )
            .unwrap(),
        );
        assert_eq!(sd["head.weight"], fresh["head.weight"]);
        assert_eq!(sd["head.bias"].data, vec![0.0; 5]);
    }

    fn no_checkpoint(dir: &Path) -> Result<Pretrained> {
        panic!("{} read as a vitrs checkpoint", dir.display())
    }

    #[test]
    fn pickles_are_refused_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("pytorch_model.bin");
        std::fs::write(&bin, b"PK\x03\x04rest").unwrap();
        let e = load(bin.to_str().unwrap(), no_checkpoint)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PyTorch pickle") && e.contains("safetensors only"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
        // A directory with only the pickle.
        let e = load(dir.path().to_str().unwrap(), no_checkpoint)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pytorch_model.bin is a PyTorch pickle"), "{e}");
        // Pickle bytes under another name.
        let odd = dir.path().join("weights.safetensors");
        std::fs::write(&odd, [0x80u8, 0x02, b'}', b'q']).unwrap();
        let e = load(odd.to_str().unwrap(), no_checkpoint)
            .unwrap_err()
            .to_string();
        assert!(e.contains("PyTorch pickle"), "{e}");
    }
}
