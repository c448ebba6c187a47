//! Pretrained weights in and out: HF transformers ViT (`config.json` + `model.safetensors`),
//! timm ViT / DeiT-distilled state dicts, and vitrs checkpoints; exported back as timm or HF.
//!
//! Everything is converted to vitrs' own (= timm's) names on the way in, so the rest of vitrs
//! sees one layout: HF's separate `query`/`key`/`value` become the fused `qkv` (rows q, k, v),
//! `layernorm_before`/`_after` become `norm1`/`norm2`, `classifier` becomes `head`, and so on
//! ([`hf_to_timm`], [`timm_to_hf`]). The format is told from the tensor names.
//!
//! The model config comes from the checkpoint: HF from its `config.json` (checked against the
//! tensor shapes); timm from the shapes (embed dim, depth, MLP size, patch and image size,
//! classes, distillation token), with `num_heads` from the `config.json` beside the weights when
//! there is one (timm's `model_args.num_heads`, or a plain `num_heads`), else timm's own choice
//! for its standard widths (192 → 3, 384 → 6, 768 → 12, 1024 → 16, 1280 → 16) and `dim / 64`
//! otherwise.
//!
//! Position embeddings are resampled to another resolution the way the source library does
//! ([`Resample`]): timm's `resample_abs_pos_embed` calls `F.interpolate(mode='bicubic',
//! antialias=True)` (its default, timm 1.0.x), HF's `interpolate_pos_encoding` (transformers
//! 5.x) calls `F.interpolate(size=..., mode='bicubic', align_corners=False)` without
//! antialiasing. The two differ (kernel a = −0.5 with a normalised, border-truncated window vs.
//! a = −0.75 with clamped borders), so both are implemented; vitrs checkpoints follow timm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use serde_json::{Value, json};

use super::hub;
use super::io::{HostTensor, load_state_dict_keeping, read_safetensors, write_safetensors};
use super::layers::Ctx;
use super::{Pool, VitConfig};
use crate::error::{Error, Result};

/// Where a set of weights came from; decides name mapping and resampling semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Hf,
    Timm,
    Vitrs,
}

/// The formats `vitrs export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Timm,
    Hf,
}

/// How a position-embedding grid is resampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// timm `resample_abs_pos_embed`: PyTorch bicubic with `antialias=True` (Keys kernel
    /// a = −0.5, support scaled when shrinking, window cut at the borders and renormalised).
    Antialias,
    /// HF `interpolate_pos_encoding`: PyTorch bicubic, `align_corners=False`, no antialias
    /// (a = −0.75, border pixels repeated).
    Bicubic,
}

/// Weights ready to become a [`VisionTransformer`].
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

/// Load `spec`: a directory (HF or timm with `config.json` + `model.safetensors`, or a vitrs
/// checkpoint), a `.safetensors` file (a `config.json` beside it is read), or a hub id.
pub fn load(spec: &str) -> Result<Pretrained> {
    let path = Path::new(spec);
    if path.exists() {
        return load_path(path);
    }
    if hub::looks_like_id(spec) {
        return load_hub(&hub::Repo::from_env(spec));
    }
    Err(err(format!(
        "{spec}: no such file or directory (give a directory with config.json and model.safetensors, a .safetensors file, a vitrs checkpoint directory, or a hub id such as google/vit-base-patch16-224-in21k)"
    )))
}

/// A hub repository, through the Hugging Face cache (downloading what is missing when online).
pub fn load_hub(repo: &hub::Repo) -> Result<Pretrained> {
    let config = repo.get("config.json", true)?;
    let weights = repo
        .get("model.safetensors", true)?
        .ok_or_else(|| err(format!("{}: no model.safetensors", repo.id)))?;
    let pre = repo.get("preprocessor_config.json", false)?;
    from_files(&weights, config.as_deref(), pre.as_deref())
}

pub fn load_path(path: &Path) -> Result<Pretrained> {
    if path.is_dir() && is_vitrs_checkpoint(&path.join("config.json")) {
        return from_vitrs_checkpoint(path);
    }
    if path.is_dir() {
        let weights = path.join("model.safetensors");
        let weights = if weights.is_file() {
            weights
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

/// A vitrs checkpoint directory (`config.json` is a [`VitConfig`]).
fn from_vitrs_checkpoint(dir: &Path) -> Result<Pretrained> {
    // An adapter checkpoint (LoRA run) becomes its base with the adapter merged in.
    let ck = crate::train::checkpoint::load_weights(dir)?;
    let weights = ck.full_weights(dir, &ck.model)?;
    let config = ck.vit_config;
    let source = dir.to_path_buf();
    let class_names = std::fs::read(dir.join("classes.json"))
        .ok()
        .and_then(|s| serde_json::from_slice(&s).ok());
    let (mean, std) = match std::fs::read_to_string(dir.join("train_config.toml"))
        .ok()
        .and_then(|s| toml::from_str::<crate::config::Config>(&s).ok())
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

/// Weights plus the optional `config.json` and `preprocessor_config.json` beside them.
pub fn from_files(
    weights: &Path,
    config: Option<&Path>,
    preprocessor: Option<&Path>,
) -> Result<Pretrained> {
    if is_pickle(weights) {
        return Err(pickle_refusal(weights));
    }
    let raw = read_safetensors(weights)?;
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
    if super::resnet::is_timm_resnet(&raw) {
        return from_timm_resnet(raw, config, weights);
    }
    let mut p = match detect(&raw, weights)? {
        Origin::Hf => from_hf(raw, config, pre, weights)?,
        _ => from_timm(raw, config, weights)?,
    };
    p.source = weights.to_path_buf();
    Ok(p)
}

/// timm ResNet weights: the architecture from the tensor shapes (`resnet::infer_config`),
/// the image size from a `config.json` beside them (224 for timm's ImageNet stem otherwise;
/// a CNN takes any size).
fn from_timm_resnet(
    sd: BTreeMap<String, HostTensor>,
    config: Option<&Value>,
    path: &Path,
) -> Result<Pretrained> {
    let (cnn, in_chans, num_classes) = super::resnet::infer_config(&sd, path)?;
    let img_size = usize_of(config.and_then(|c| c.get("img_size"))).unwrap_or(224);
    let pcfg = config.and_then(|c| c.get("pretrained_cfg"));
    let pick = |k: &str| {
        floats(pcfg.and_then(|p| p.get(k))).or_else(|| floats(config.and_then(|c| c.get(k))))
    };
    Ok(Pretrained {
        origin: Origin::Timm,
        has_head: num_classes.is_some(),
        config: VitConfig::cnn(img_size, in_chans, num_classes.unwrap_or(0), cnn),
        weights: sd,
        mean: pick("mean"),
        std: pick("std"),
        class_names: None,
        source: path.to_path_buf(),
        notes: Vec::new(),
    })
}

/// HF or timm, from the tensor names.
pub fn detect(sd: &BTreeMap<String, HostTensor>, path: &Path) -> Result<Origin> {
    let any = |f: &dyn Fn(&str) -> bool| sd.keys().any(|k| f(k));
    if any(&|k| k.starts_with("deit.") || k.starts_with("distillation_classifier")) {
        return Err(err(format!(
            "{}: HF transformers DeiT weights are not supported; use timm's deit_*_distilled weights (same model, timm names)",
            path.display()
        )));
    }
    if any(&|k| {
        k.starts_with("vit.")
            || k.starts_with("embeddings.patch_embeddings")
            || k.starts_with("encoder.layer.")
    }) {
        return Ok(Origin::Hf);
    }
    if any(&|k| k.starts_with("blocks.") || k == "patch_embed.proj.weight") {
        return Ok(Origin::Timm);
    }
    let first: Vec<&str> = sd.keys().take(4).map(String::as_str).collect();
    Err(err(format!(
        "{}: neither HF transformers ViT names (vit.encoder.layer.N...) nor timm ViT names (blocks.N...), found {first:?}...",
        path.display()
    )))
}

/// Concatenate rank-2 `[out, in]` (or rank-1) tensors along dimension 0.
/// `None` when they are scalars or differ in any dimension but the first.
fn cat0(parts: &[&HostTensor]) -> Option<HostTensor> {
    let mut shape = parts[0].shape.clone();
    let same = |t: &&HostTensor| !t.shape.is_empty() && t.shape[1..] == shape[1..];
    if shape.is_empty() || !parts.iter().all(same) {
        return None;
    }
    shape[0] = parts.iter().map(|t| t.shape[0]).sum();
    Some(HostTensor {
        shape,
        data: parts.iter().flat_map(|t| t.data.iter().copied()).collect(),
    })
}

/// Split along dimension 0 into `n` equal parts.
fn split0(t: &HostTensor, n: usize) -> Vec<HostTensor> {
    let rows = t.shape[0] / n;
    let per = t.data.len() / n;
    (0..n)
        .map(|i| {
            let mut shape = t.shape.clone();
            shape[0] = rows;
            HostTensor {
                shape,
                data: t.data[i * per..(i + 1) * per].to_vec(),
            }
        })
        .collect()
}

/// HF transformers ViT names → timm names, q/k/v fused into qkv. Returns the names that were
/// dropped on purpose (pooler, mask token). Unknown names are an error.
pub fn hf_to_timm(
    sd: BTreeMap<String, HostTensor>,
) -> Result<(BTreeMap<String, HostTensor>, Vec<String>)> {
    let mut out = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut unknown = Vec::new();
    let mut qkv: BTreeMap<(usize, String), [Option<HostTensor>; 3]> = BTreeMap::new();
    for (name, t) in sd {
        let k = name.strip_prefix("vit.").unwrap_or(&name);
        let simple = match k {
            "embeddings.cls_token" => Some("cls_token".to_string()),
            "embeddings.position_embeddings" => Some("pos_embed".to_string()),
            _ => [
                (
                    "embeddings.patch_embeddings.projection.",
                    "patch_embed.proj.",
                ),
                ("layernorm.", "norm."),
                ("classifier.", "head."),
            ]
            .iter()
            .find_map(|(hf, timm)| k.strip_prefix(hf).map(|s| format!("{timm}{s}"))),
        };
        if let Some(n) = simple {
            out.insert(n, t);
            continue;
        }
        if k == "embeddings.mask_token" || k.starts_with("pooler.") {
            ignored.push(name.clone());
            continue;
        }
        let Some(rest) = k.strip_prefix("encoder.layer.") else {
            unknown.push(name.clone());
            continue;
        };
        let Some((idx, tail)) = rest.split_once('.') else {
            unknown.push(name.clone());
            continue;
        };
        let Ok(i) = idx.parse::<usize>() else {
            unknown.push(name.clone());
            continue;
        };
        let (part, param) = match tail.rsplit_once('.') {
            Some(x) => x,
            None => {
                unknown.push(name.clone());
                continue;
            }
        };
        let slot = match part {
            "attention.attention.query" => Some(0),
            "attention.attention.key" => Some(1),
            "attention.attention.value" => Some(2),
            _ => None,
        };
        if let Some(s) = slot {
            qkv.entry((i, param.to_string())).or_default()[s] = Some(t);
            continue;
        }
        let ours = match part {
            "layernorm_before" => "norm1",
            "layernorm_after" => "norm2",
            "attention.output.dense" => "attn.proj",
            "intermediate.dense" => "mlp.fc1",
            "output.dense" => "mlp.fc2",
            _ => {
                unknown.push(name.clone());
                continue;
            }
        };
        out.insert(format!("blocks.{i}.{ours}.{param}"), t);
    }
    if !unknown.is_empty() {
        return Err(err(format!(
            "HF weights hold tensors a ViT does not have: {} (is this a ViT checkpoint?)",
            unknown.join(", ")
        )));
    }
    for ((i, param), parts) in qkv {
        match parts {
            [Some(q), Some(k), Some(v)] => {
                let qkv = cat0(&[&q, &k, &v]).ok_or_else(|| {
                    err(format!(
                        "HF weights of layer {i}: query/key/value .{param} have shapes {:?}, {:?}, {:?}, which cannot be stacked",
                        q.shape, k.shape, v.shape
                    ))
                })?;
                out.insert(format!("blocks.{i}.attn.qkv.{param}"), qkv);
            }
            _ => {
                return Err(err(format!(
                    "HF weights of layer {i} lack one of query/key/value .{param}"
                )));
            }
        }
    }
    Ok((out, ignored))
}

/// timm names → HF transformers `ViTForImageClassification` names (qkv split into q, k, v).
pub fn timm_to_hf(sd: &BTreeMap<String, HostTensor>) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    for (k, t) in sd {
        let name = match k.as_str() {
            "cls_token" => "vit.embeddings.cls_token".to_string(),
            "pos_embed" => "vit.embeddings.position_embeddings".to_string(),
            _ => {
                if let Some(s) = k.strip_prefix("patch_embed.proj.") {
                    format!("vit.embeddings.patch_embeddings.projection.{s}")
                } else if let Some(s) = k.strip_prefix("norm.") {
                    format!("vit.layernorm.{s}")
                } else if let Some(s) = k.strip_prefix("head.") {
                    format!("classifier.{s}")
                } else if let Some(rest) = k.strip_prefix("blocks.") {
                    let (i, tail) = rest
                        .split_once('.')
                        .ok_or_else(|| err(format!("cannot export {k} as HF")))?;
                    let (part, param) = tail
                        .rsplit_once('.')
                        .ok_or_else(|| err(format!("cannot export {k} as HF")))?;
                    let base = format!("vit.encoder.layer.{i}");
                    if part == "attn.qkv" {
                        for (n, piece) in ["query", "key", "value"].iter().zip(split0(t, 3)) {
                            out.insert(format!("{base}.attention.attention.{n}.{param}"), piece);
                        }
                        continue;
                    }
                    let theirs = match part {
                        "norm1" => "layernorm_before",
                        "norm2" => "layernorm_after",
                        "attn.proj" => "attention.output.dense",
                        "mlp.fc1" => "intermediate.dense",
                        "mlp.fc2" => "output.dense",
                        _ => return Err(err(format!("cannot export {k} as HF ViT"))),
                    };
                    format!("{base}.{theirs}.{param}")
                } else {
                    return Err(err(format!(
                        "cannot export {k} as HF ViT (HF's ViTForImageClassification has no such tensor; use --format timm)"
                    )));
                }
            }
        };
        out.insert(name, t.clone());
    }
    Ok(out)
}

/// What the tensor shapes of a timm-named state dict say about the model.
struct Shapes {
    embed_dim: usize,
    in_chans: usize,
    patch: usize,
    depth: usize,
    mlp_dim: usize,
    qkv_bias: bool,
    dist_token: bool,
    num_classes: Option<usize>,
    img_size: usize,
}

fn infer_shapes(sd: &BTreeMap<String, HostTensor>, path: &Path) -> Result<Shapes> {
    let get = |k: &str| {
        sd.get(k).ok_or_else(|| {
            err(format!(
                "{}: no {k}; not a complete ViT state dict (vitrs supports ViTs with a class token and learned position embeddings)",
                path.display()
            ))
        })
    };
    let pw = get("patch_embed.proj.weight")?;
    let [d, c, p, p2] = pw.shape[..] else {
        return Err(err(format!(
            "{}: patch_embed.proj.weight has shape {:?}, expected [dim, channels, p, p]",
            path.display(),
            pw.shape
        )));
    };
    if p != p2 {
        return Err(err(format!(
            "{}: non-square patches {p}×{p2} are not supported",
            path.display()
        )));
    }
    get("cls_token")?;
    let mut depth = 0;
    while sd
        .keys()
        .any(|k| k.starts_with(&format!("blocks.{depth}.")))
    {
        depth += 1;
    }
    if depth == 0 {
        return Err(err(format!("{}: no transformer blocks", path.display())));
    }
    // Rank 0 would have no first dimension; a file can say anything.
    let rows = |k: &str| -> Result<usize> {
        let t = get(k)?;
        t.shape.first().copied().ok_or_else(|| {
            err(format!(
                "{}: {k} is a scalar, expected a matrix",
                path.display()
            ))
        })
    };
    let mlp_dim = rows("blocks.0.mlp.fc1.weight")?;
    let dist_token = sd.contains_key("dist_token");
    let pos = get("pos_embed")?;
    let prefix = 1 + dist_token as usize;
    let tokens = pos.shape.get(1).copied().unwrap_or(0);
    let patches = tokens.saturating_sub(prefix);
    let g = (patches as f64).sqrt().round() as usize;
    if g.checked_mul(g) != Some(patches) || g == 0 {
        return Err(err(format!(
            "{}: pos_embed holds {patches} patch positions, not a square grid",
            path.display()
        )));
    }
    // Tensors with a zero dimension hold no data whatever their other dimensions say.
    let img_size = g.checked_mul(p).ok_or_else(|| {
        err(format!(
            "{}: a {g}×{g} grid of {p}-pixel patches is impossibly large",
            path.display()
        ))
    })?;
    Ok(Shapes {
        embed_dim: d,
        in_chans: c,
        patch: p,
        depth,
        mlp_dim,
        qkv_bias: sd.contains_key("blocks.0.attn.qkv.bias"),
        dist_token,
        num_classes: sd
            .contains_key("head.weight")
            .then(|| rows("head.weight"))
            .transpose()?,
        img_size,
    })
}

fn base_config(s: &Shapes, num_heads: usize, eps: f64) -> VitConfig {
    VitConfig {
        img_size: s.img_size,
        patch_size: s.patch,
        in_chans: s.in_chans,
        num_classes: s.num_classes.unwrap_or(0),
        embed_dim: s.embed_dim,
        depth: s.depth,
        num_heads,
        mlp_dim: s.mlp_dim,
        qkv_bias: s.qkv_bias,
        drop_rate: 0.0,
        attn_drop_rate: 0.0,
        drop_path_rate: 0.0,
        layer_norm_eps: eps,
        pool: Pool::Cls,
        dist_token: s.dist_token,
        eval_head: super::vit::EvalHead::Avg,
        cnn: None,
    }
}

fn floats(v: Option<&Value>) -> Option<Vec<f64>> {
    v?.as_array()?.iter().map(Value::as_f64).collect()
}

fn usize_of(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64).map(|x| x as usize)
}

fn from_hf(
    raw: BTreeMap<String, HostTensor>,
    config: Option<&Value>,
    pre: Option<&Value>,
    path: &Path,
) -> Result<Pretrained> {
    let cfg = config.ok_or_else(|| {
        err(format!(
            "{}: HF transformers weights need their config.json (num_attention_heads, layer_norm_eps) beside them",
            path.display()
        ))
    })?;
    if let Some(t) = cfg
        .get("model_type")
        .and_then(Value::as_str)
        .filter(|t| *t != "vit")
    {
        return Err(err(format!(
            "{}: model_type \"{t}\" is not supported (HF ViT, model_type \"vit\", only)",
            path.display()
        )));
    }
    if let Some(act) = cfg
        .get("hidden_act")
        .and_then(Value::as_str)
        .filter(|a| *a != "gelu")
    {
        return Err(err(format!(
            "{}: hidden_act \"{act}\" is not supported (vitrs' MLP uses exact GELU, HF's \"gelu\")",
            path.display()
        )));
    }
    let (sd, ignored) = hf_to_timm(raw)?;
    let s = infer_shapes(&sd, path)?;
    let heads = usize_of(cfg.get("num_attention_heads")).ok_or_else(|| {
        err(format!(
            "{}: config.json has no num_attention_heads",
            path.display()
        ))
    })?;
    let eps = cfg
        .get("layer_norm_eps")
        .and_then(Value::as_f64)
        .unwrap_or(1e-12);
    let mut config = base_config(&s, heads, eps);
    config.drop_rate = cfg
        .get("hidden_dropout_prob")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    config.attn_drop_rate = cfg
        .get("attention_probs_dropout_prob")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let image_size = match cfg.get("image_size") {
        Some(Value::Array(a)) => usize_of(a.first()),
        v => usize_of(v),
    };
    for (key, said, found) in [
        ("hidden_size", usize_of(cfg.get("hidden_size")), s.embed_dim),
        (
            "num_hidden_layers",
            usize_of(cfg.get("num_hidden_layers")),
            s.depth,
        ),
        (
            "intermediate_size",
            usize_of(cfg.get("intermediate_size")),
            s.mlp_dim,
        ),
        ("patch_size", usize_of(cfg.get("patch_size")), s.patch),
        (
            "num_channels",
            usize_of(cfg.get("num_channels")),
            s.in_chans,
        ),
        ("image_size", image_size, s.img_size),
    ] {
        if let Some(v) = said.filter(|v| *v != found) {
            return Err(err(format!(
                "{}: config.json says {key} {v} but the weights have {found}",
                path.display()
            )));
        }
    }
    let class_names = cfg
        .get("id2label")
        .and_then(Value::as_object)
        .and_then(|m| {
            let mut v: Vec<(usize, String)> = m
                .iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                .collect();
            v.sort();
            let ok =
                v.iter().enumerate().all(|(i, (k, _))| i == *k) && Some(v.len()) == s.num_classes;
            ok.then(|| v.into_iter().map(|(_, n)| n).collect())
        });
    let mut notes = Vec::new();
    if !ignored.is_empty() {
        notes.push(format!(
            "ignoring {} (not used by image classification)",
            ignored.join(", ")
        ));
    }
    Ok(Pretrained {
        origin: Origin::Hf,
        has_head: s.num_classes.is_some(),
        config,
        weights: sd,
        mean: floats(pre.and_then(|p| p.get("image_mean"))),
        std: floats(pre.and_then(|p| p.get("image_std"))),
        class_names,
        source: path.to_path_buf(),
        notes,
    })
}

/// timm's head count for its standard widths; `dim / 64` otherwise.
pub fn default_num_heads(dim: usize) -> Option<usize> {
    match dim {
        192 => Some(3),
        384 => Some(6),
        768 => Some(12),
        1024 | 1280 | 1408 | 1664 => Some(16),
        d if d % 64 == 0 => Some(d / 64),
        _ => None,
    }
}

fn from_timm(
    sd: BTreeMap<String, HostTensor>,
    config: Option<&Value>,
    path: &Path,
) -> Result<Pretrained> {
    for bad in [
        "fc_norm.weight",
        "reg_token",
        "norm_pre.weight",
        "blocks.0.ls1.gamma",
    ] {
        if sd.contains_key(bad) {
            return Err(err(format!(
                "{}: this timm ViT variant has {bad}, which vitrs' ViT does not support",
                path.display()
            )));
        }
    }
    let s = infer_shapes(&sd, path)?;
    let args = config.and_then(|c| c.get("model_args"));
    let key = |k: &str| {
        config
            .and_then(|c| c.get(k))
            .or_else(|| args.and_then(|a| a.get(k)))
    };
    let mut notes = Vec::new();
    let heads = match usize_of(key("num_heads")) {
        Some(h) => h,
        None => {
            let h = default_num_heads(s.embed_dim).ok_or_else(|| {
                err(format!(
                    "{}: cannot tell the number of heads of a {}-wide ViT; put a config.json with \"num_heads\" beside the weights",
                    path.display(),
                    s.embed_dim
                ))
            })?;
            notes.push(format!(
                "no num_heads in a config.json beside {}: assuming {h} (timm's choice for width {})",
                path.display(),
                s.embed_dim
            ));
            h
        }
    };
    if key("class_token").and_then(Value::as_bool) == Some(false)
        || key("no_embed_class").and_then(Value::as_bool) == Some(true)
    {
        return Err(err(format!(
            "{}: ViTs without a class token or with no_embed_class are not supported",
            path.display()
        )));
    }
    let eps = key("layer_norm_eps")
        .and_then(Value::as_f64)
        .unwrap_or(1e-6);
    let mut config_out = base_config(&s, heads, eps);
    if key("global_pool").and_then(Value::as_str) == Some("avg") {
        if key("fc_norm").and_then(Value::as_bool) != Some(false) {
            return Err(err(format!(
                "{}: timm's global_pool='avg' normalises after pooling (fc_norm), which vitrs' ViT does not do",
                path.display()
            )));
        }
        config_out.pool = Pool::Avg;
    }
    let pcfg = config.and_then(|c| c.get("pretrained_cfg"));
    let pick = |k: &str| {
        floats(pcfg.and_then(|p| p.get(k))).or_else(|| floats(config.and_then(|c| c.get(k))))
    };
    let class_names = config
        .and_then(|c| c.get("label_names").or_else(|| pcfg?.get("label_names")))
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .filter(|v| Some(v.len()) == s.num_classes);
    Ok(Pretrained {
        origin: Origin::Timm,
        has_head: s.num_classes.is_some(),
        config: config_out,
        weights: sd,
        mean: pick("mean"),
        std: pick("std"),
        class_names,
        source: path.to_path_buf(),
        notes,
    })
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
        let (old, new) = (c.img_size / c.patch_size, img_size / c.patch_size);
        let method = self.resample_method();
        let pe = self
            .weights
            .get("pos_embed")
            .ok_or_else(|| err("no pos_embed to resample"))?;
        let pe = resample_pos_embed(pe, c.num_prefix_tokens(), (new, new), method)?;
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
    pub fn build(&self, seed: u64, device: &Device) -> Result<super::Model> {
        if self.config.num_classes == 0 {
            return Err(err(format!(
                "{} has no classification head; give --num-classes to add a fresh one",
                self.source.display()
            )));
        }
        let model = super::Model::new(&self.config, seed, device)?;
        load_state_dict_keeping(model, &self.weights, device, is_head)
    }
}

impl Pretrained {
    /// Merge a PEFT LoRA adapter into these weights (PEFT's `merge_and_unload()`): the
    /// adapter's saved modules (the head) replace the base's.
    pub fn merge_adapter(&mut self, adapter: &super::lora::Adapter) -> Result<()> {
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
            Ok(super::lora::merge(super::lora::apply_adapter(
                m, adapter, &device,
            )?))
        })?;
        self.weights = super::io::state_dict(&model);
        self.has_head = true;
        Ok(())
    }
}

/// The parameters pretrained loading may leave to fresh initialisation (a ResNet's head is
/// `fc`).
pub fn is_head(path: &str) -> bool {
    path.starts_with("head.") || path.starts_with("head_dist.") || path.starts_with("fc.")
}

/// Resample the patch part of `pos_embed` (`[1, prefix + h·w, dim]`) to `new` = (h', w');
/// the prefix tokens (class, distillation) are kept. Identity when the grid is unchanged.
pub fn resample_pos_embed(
    pe: &HostTensor,
    prefix: usize,
    new: (usize, usize),
    method: Resample,
) -> Result<HostTensor> {
    let [1, n, dim] = pe.shape[..] else {
        return Err(err(format!(
            "pos_embed has shape {:?}, expected [1, tokens, dim]",
            pe.shape
        )));
    };
    let patches = n.saturating_sub(prefix);
    let g = (patches as f64).sqrt().round() as usize;
    if g * g != patches {
        return Err(err(format!(
            "pos_embed holds {patches} patch positions, not a square grid"
        )));
    }
    if (g, g) == new {
        return Ok(pe.clone());
    }
    let grid = resample_grid(&pe.data[prefix * dim..], (g, g), dim, new, method);
    let mut data = pe.data[..prefix * dim].to_vec();
    data.extend(grid);
    Ok(HostTensor {
        shape: vec![1, prefix + new.0 * new.1, dim],
        data,
    })
}

/// Resample a `[h, w, dim]` grid (channels last, as the tokens lie) to `[h', w', dim]`.
pub fn resample_grid(
    src: &[f32],
    (h, w): (usize, usize),
    dim: usize,
    (nh, nw): (usize, usize),
    method: Resample,
) -> Vec<f32> {
    let wy = axis_weights(h, nh, method);
    let wx = axis_weights(w, nw, method);
    // Along x first: [h, nw, dim], then along y: [nh, nw, dim]; in f64.
    let mut tmp = vec![0f64; h * nw * dim];
    for y in 0..h {
        for (ox, taps) in wx.iter().enumerate() {
            let o = &mut tmp[(y * nw + ox) * dim..(y * nw + ox + 1) * dim];
            for &(ix, wt) in taps {
                let s = &src[(y * w + ix) * dim..(y * w + ix + 1) * dim];
                for (a, &b) in o.iter_mut().zip(s) {
                    *a += wt * b as f64;
                }
            }
        }
    }
    let mut out = vec![0f32; nh * nw * dim];
    for (oy, taps) in wy.iter().enumerate() {
        for ox in 0..nw {
            let o = &mut out[(oy * nw + ox) * dim..(oy * nw + ox + 1) * dim];
            let mut acc = vec![0f64; dim];
            for &(iy, wt) in taps {
                let s = &tmp[(iy * nw + ox) * dim..(iy * nw + ox + 1) * dim];
                for (a, &b) in acc.iter_mut().zip(s) {
                    *a += wt * b;
                }
            }
            for (a, b) in o.iter_mut().zip(acc) {
                *a = b as f32;
            }
        }
    }
    out
}

/// Cubic convolution kernel (Keys) with parameter `a`.
fn keys(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// For each output index, the (input index, weight) taps of one axis, as PyTorch's
/// `upsample_bicubic2d` (align_corners=False, output size given) or `_upsample_bicubic2d_aa`
/// compute them.
fn axis_weights(n_in: usize, n_out: usize, method: Resample) -> Vec<Vec<(usize, f64)>> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|i| match method {
            Resample::Bicubic => {
                let real = scale * (i as f64 + 0.5) - 0.5;
                let fl = real.floor();
                let t = real - fl;
                let a = -0.75;
                let w = [
                    keys(t + 1.0, a),
                    keys(t, a),
                    keys(1.0 - t, a),
                    keys(2.0 - t, a),
                ];
                (0..4)
                    .map(|k| {
                        let ix = (fl as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
                        (ix, w[k])
                    })
                    .collect()
            }
            Resample::Antialias => {
                let (support, inv) = if scale >= 1.0 {
                    (2.0 * scale, 1.0 / scale)
                } else {
                    (2.0, 1.0)
                };
                let center = scale * (i as f64 + 0.5);
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
                let taps: Vec<(usize, f64)> = (xmin..xmax)
                    .map(|j| (j, keys((j as f64 - center + 0.5) * inv, -0.5)))
                    .collect();
                let total: f64 = taps.iter().map(|t| t.1).sum();
                if total == 0.0 {
                    return taps;
                }
                taps.into_iter().map(|(j, w)| (j, w / total)).collect()
            }
        })
        .collect()
}

/// Logits for `pixel_values` (`[n, c, h, w]`, f32, already normalised) in eval mode.
/// An input of another size than the checkpoint's resamples the position embeddings the way
/// the source library does. Returns `logits` (for a distillation-token model the mean of both
/// heads, timm's eval output) and, for such models, `logits_cls` and `logits_dist`.
pub fn logits(
    mut p: Pretrained,
    pixel_values: &HostTensor,
    img_size: Option<usize>,
    device: &Device,
) -> Result<BTreeMap<String, HostTensor>> {
    let [n, c, h, w] = pixel_values.shape[..] else {
        return Err(Error::Data(format!(
            "pixel_values has shape {:?}, expected [batch, channels, height, width]",
            pixel_values.shape
        )));
    };
    if h != w {
        return Err(Error::Data(format!(
            "pixel_values are {h}×{w}; vitrs models take square images"
        )));
    }
    if c != p.config.in_chans {
        return Err(Error::Data(format!(
            "pixel_values have {c} channels, the model expects {}",
            p.config.in_chans
        )));
    }
    if let Some(s) = img_size.filter(|s| *s != h) {
        return Err(Error::Config(format!(
            "--img-size {s} differs from the input's {h}×{w} (drop the flag, or resize the input)"
        )));
    }
    if !p.has_head {
        return Err(err(format!(
            "{} has no classification head: there are no logits to compute",
            p.source.display()
        )));
    }
    p.set_img_size(h)?;
    let model = p.build(0, device)?;
    let classes = p.config.num_classes;
    let per = c * h * w;
    let (mut cls, mut dist) = (Vec::with_capacity(n * classes), Vec::new());
    let ctx = Ctx::eval();
    let host = |t: Tensor<2>| -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default()
    };
    for start in (0..n).step_by(32) {
        let b = (n - start).min(32);
        let x = Tensor::<4>::from_data(
            TensorData::new(
                pixel_values.data[start * per..(start + b) * per].to_vec(),
                [b, c, h, w],
            ),
            device,
        );
        let out = model.forward_heads(x, &ctx);
        cls.extend(host(out.logits));
        if let Some(d) = out.dist_logits {
            dist.extend(host(d));
        }
    }
    let t = |data: Vec<f32>| HostTensor {
        shape: vec![n, classes],
        data,
    };
    let mut out = BTreeMap::new();
    if p.config.dist_token {
        let avg = cls.iter().zip(&dist).map(|(a, b)| (a + b) / 2.0).collect();
        out.insert("logits".to_string(), t(avg));
        out.insert("logits_cls".to_string(), t(cls));
        out.insert("logits_dist".to_string(), t(dist));
    } else {
        out.insert("logits".to_string(), t(cls));
    }
    Ok(out)
}

fn labels(p: &Pretrained) -> Vec<String> {
    p.class_names
        .clone()
        .filter(|v| v.len() == p.config.num_classes)
        .unwrap_or_else(|| {
            (0..p.config.num_classes)
                .map(|i| format!("LABEL_{i}"))
                .collect()
        })
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

/// timm's `config.json` (what `timm.create_model("local-dir:DIR")` reads): a registered
/// architecture name whose constructor arguments `model_args` override entirely, the data
/// config, and the class names. `layer_norm_eps` is vitrs' own addition (timm builds its ViTs
/// with 1e-6; an HF-origin model keeps its 1e-12 only when vitrs reads the file back).
pub fn timm_config_json(p: &Pretrained) -> Value {
    let c = &p.config;
    let mut ratio = c.mlp_dim as f64 / c.embed_dim as f64;
    // timm computes int(dim * mlp_ratio): make sure that gives mlp_dim back.
    while ((c.embed_dim as f64 * ratio) as usize) < c.mlp_dim {
        ratio = ratio.next_up();
    }
    let pool = match c.pool {
        Pool::Cls => "token",
        Pool::Avg => "avg",
    };
    let mut args = json!({
        "img_size": c.img_size,
        "patch_size": c.patch_size,
        "in_chans": c.in_chans,
        "embed_dim": c.embed_dim,
        "depth": c.depth,
        "num_heads": c.num_heads,
        "mlp_ratio": ratio,
        "qkv_bias": c.qkv_bias,
        "class_token": true,
        "global_pool": pool,
        "num_classes": c.num_classes,
    });
    if c.pool == Pool::Avg {
        args["fc_norm"] = json!(false);
    }
    let (m, s) = imagenet();
    let mut v = json!({
        "architecture": if c.dist_token { "deit_base_distilled_patch16_224" } else { "vit_base_patch16_224" },
        "num_classes": c.num_classes,
        "num_features": c.embed_dim,
        "global_pool": pool,
        "model_args": args,
        "pretrained_cfg": {
            "input_size": [c.in_chans, c.img_size, c.img_size],
            "fixed_input_size": true,
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": p.mean.clone().unwrap_or(m),
            "std": p.std.clone().unwrap_or(s),
            "num_classes": c.num_classes,
            "first_conv": "patch_embed.proj",
            "classifier": if c.dist_token { json!(["head", "head_dist"]) } else { json!("head") },
        },
        "layer_norm_eps": c.layer_norm_eps,
    });
    if p.class_names.is_some() && p.has_head {
        v["label_names"] = json!(labels(p));
    }
    v
}

/// HF transformers' `config.json` for `ViTForImageClassification`.
pub fn hf_config_json(p: &Pretrained) -> Value {
    let c = &p.config;
    let names = labels(p);
    let unique = names
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        == names.len();
    let names: Vec<String> = if unique {
        names
    } else {
        (0..c.num_classes).map(|i| format!("LABEL_{i}")).collect()
    };
    let id2label: serde_json::Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), json!(n)))
        .collect();
    let label2id: serde_json::Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), json!(i)))
        .collect();
    json!({
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": c.embed_dim,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.num_heads,
        "intermediate_size": c.mlp_dim,
        "hidden_act": "gelu",
        "hidden_dropout_prob": c.drop_rate,
        "attention_probs_dropout_prob": c.attn_drop_rate,
        "initializer_range": 0.02,
        "layer_norm_eps": c.layer_norm_eps,
        "image_size": c.img_size,
        "patch_size": c.patch_size,
        "num_channels": c.in_chans,
        "qkv_bias": c.qkv_bias,
        "encoder_stride": c.patch_size,
        "id2label": id2label,
        "label2id": label2id,
    })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let s = serde_json::to_vec_pretty(v).map_err(|e| err(format!("{}: {e}", path.display())))?;
    crate::util::write_file_synced(path, &s)
}

/// Write `model.safetensors` and `config.json` (and for HF `preprocessor_config.json`) into
/// `out`, in the layout timm or transformers load as they are.
pub fn export(p: &Pretrained, format: ExportFormat, out: &Path) -> Result<()> {
    if p.config.cnn.is_some() {
        return Err(err(format!(
            "{}: exporting CNNs is not supported (vitrs exports ViTs); its model.safetensors already has timm's ResNet names",
            p.source.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, "creating", e))?;
    let meta = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    match format {
        ExportFormat::Timm => {
            write_safetensors(&out.join("model.safetensors"), &p.weights, meta)?;
            write_json(&out.join("config.json"), &timm_config_json(p))
        }
        ExportFormat::Hf => {
            let c = &p.config;
            let refuse = |why: &str| {
                Err(err(format!(
                    "cannot export {} as HF ViTForImageClassification: {why} (use --format timm)",
                    p.source.display()
                )))
            };
            if c.dist_token {
                return refuse("it has a distillation token");
            }
            if c.pool != Pool::Cls {
                return refuse(
                    "HF's ViT classifies from the class token, this model pools the patch tokens",
                );
            }
            if !p.has_head {
                return refuse("it has no classification head");
            }
            write_safetensors(
                &out.join("model.safetensors"),
                &timm_to_hf(&p.weights)?,
                meta,
            )?;
            write_json(&out.join("config.json"), &hf_config_json(p))?;
            let (m, s) = imagenet();
            write_json(
                &out.join("preprocessor_config.json"),
                &json!({
                    "image_processor_type": "ViTImageProcessor",
                    "do_resize": true,
                    "size": {"height": c.img_size, "width": c.img_size},
                    "resample": 2,
                    "do_rescale": true,
                    "rescale_factor": 1.0 / 255.0,
                    "do_normalize": true,
                    "image_mean": p.mean.clone().unwrap_or(m),
                    "image_std": p.std.clone().unwrap_or(s),
                }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VisionTransformer;
    use crate::model::io::state_dict;

    fn tiny(dist: bool) -> VitConfig {
        VitConfig {
            dist_token: dist,
            ..VitConfig::with_shape(8, 4, 3, 3, [8, 2, 2, 12])
        }
    }

    fn pretrained_of(c: &VitConfig, origin: Origin) -> Pretrained {
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
    fn hf_names_map_to_timm_and_back_exactly() {
        let p = pretrained_of(&tiny(false), Origin::Timm);
        let hf = timm_to_hf(&p.weights).unwrap();
        assert_eq!(
            hf["vit.encoder.layer.1.attention.attention.key.weight"].shape,
            vec![8, 8]
        );
        assert!(hf.contains_key("vit.embeddings.patch_embeddings.projection.weight"));
        assert!(hf.contains_key("classifier.bias"));
        // q is the first third of qkv's rows.
        let qkv = &p.weights["blocks.0.attn.qkv.weight"];
        assert_eq!(
            hf["vit.encoder.layer.0.attention.attention.query.weight"].data,
            qkv.data[..64]
        );
        let (back, ignored) = hf_to_timm(hf).unwrap();
        assert!(ignored.is_empty());
        assert_eq!(back, p.weights);
    }

    #[test]
    fn unknown_hf_tensors_are_named() {
        let mut sd = BTreeMap::new();
        let t = HostTensor {
            shape: vec![1],
            data: vec![0.0],
        };
        sd.insert(
            "vit.encoder.layer.0.crossattention.q.weight".into(),
            t.clone(),
        );
        sd.insert("vit.pooler.dense.bias".into(), t);
        let e = hf_to_timm(sd).unwrap_err().to_string();
        assert!(e.contains("crossattention"), "{e}");
    }

    #[test]
    fn head_count_rule() {
        assert_eq!(default_num_heads(192), Some(3));
        assert_eq!(default_num_heads(384), Some(6));
        assert_eq!(default_num_heads(768), Some(12));
        assert_eq!(default_num_heads(1280), Some(16));
        assert_eq!(default_num_heads(512), Some(8));
        assert_eq!(default_num_heads(48), None);
    }

    /// Axis weights sum to one and an unchanged size is the identity, for both methods.
    #[test]
    fn resampling_preserves_constants_and_same_size_is_identity() {
        for m in [Resample::Antialias, Resample::Bicubic] {
            for (a, b) in [(2, 3), (3, 5), (4, 2), (7, 3), (14, 24)] {
                for taps in axis_weights(a, b, m) {
                    let s: f64 = taps.iter().map(|t| t.1).sum();
                    assert!((s - 1.0).abs() < 1e-12, "{m:?} {a}->{b}: {s}");
                }
            }
            let pe = HostTensor {
                shape: vec![1, 1 + 9, 2],
                data: (0..20).map(|i| i as f32 * 0.37).collect(),
            };
            assert_eq!(resample_pos_embed(&pe, 1, (3, 3), m).unwrap(), pe);
            let up = resample_pos_embed(&pe, 1, (5, 5), m).unwrap();
            assert_eq!(up.shape, vec![1, 26, 2]);
            assert_eq!(up.data[..2], pe.data[..2], "the class token is kept");
        }
    }

    /// 1-D references written out from the definitions, on a 2-point axis upsampled to 3.
    #[test]
    fn axis_weights_match_hand_computed_values() {
        // HF / plain bicubic, A = -0.75. Output 0: source x = 2/3·0.5 − 0.5 = −1/6:
        // floor −1, t = 5/6, taps at −2, −1, 0, 1 clamped to 0, 0, 0, 1.
        let w = axis_weights(2, 3, Resample::Bicubic);
        let k = |x: f64| keys(x, -0.75);
        let t: f64 = 5.0 / 6.0;
        let expect0 = k(t + 1.0) + k(t) + k(1.0 - t); // all on index 0
        let got0: f64 = w[0].iter().filter(|x| x.0 == 0).map(|x| x.1).sum();
        assert!((got0 - expect0).abs() < 1e-12);
        // The middle output sits exactly between the two inputs: weights 1/2, 1/2.
        let mid: f64 = w[1].iter().filter(|x| x.0 == 0).map(|x| x.1).sum();
        assert!((mid - 0.5).abs() < 1e-12, "{mid}");
        // Antialiased, a = -0.5: output 0 at centre 1/3; taps j = 0, 1 at distances 1/6, 7/6.
        let w = axis_weights(2, 3, Resample::Antialias);
        let k = |x: f64| keys(x, -0.5);
        let (a, b) = (k(1.0 / 6.0), k(7.0 / 6.0));
        assert_eq!(w[0].len(), 2);
        assert!((w[0][0].1 - a / (a + b)).abs() < 1e-12);
        assert!((w[0][1].1 - b / (a + b)).abs() < 1e-12);
    }

    /// Pillow's BICUBIC resize of float images is the algorithm PyTorch's `antialias=True`
    /// reproduces (its code cites Pillow's): values computed with Pillow 13 for the grid
    /// `v[y][x] = sin(0.7y + 1.3x) + 0.1·y·x`, up (3 → 5) and down (5 → 3).
    #[test]
    fn antialias_matches_pillows_bicubic() {
        let grid = |n: usize| -> Vec<f32> {
            (0..n * n)
                .map(|i| {
                    let (y, x) = ((i / n) as f64, (i % n) as f64);
                    ((0.7 * y + 1.3 * x).sin() + 0.1 * y * x) as f32
                })
                .collect()
        };
        let up = [
            -0.1247505,
            0.3234952,
            0.9601062,
            0.739801,
            0.5203586,
            0.1513553,
            0.5145515,
            0.9967018,
            0.6233073,
            0.3198839,
            0.6166645,
            0.8155684,
            1.009297,
            0.3977879,
            -0.03073008,
            0.9045132,
            0.8934218,
            0.763384,
            0.1073397,
            -0.313603,
            1.042346,
            0.9105945,
            0.5985559,
            -0.05974472,
            -0.4612955,
        ];
        let down = [
            0.6266017, 0.2741675, -0.6891484, 0.820241, -0.1562162, 0.5378535, 0.1759032,
            0.03529993, 1.978832,
        ];
        for (n, m, want) in [(3, 5, &up[..]), (5, 3, &down[..])] {
            let got = resample_grid(&grid(n), (n, n), 1, (m, m), Resample::Antialias);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{n}->{m}: {got:?}");
            }
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

    #[test]
    fn pickles_are_refused_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("pytorch_model.bin");
        std::fs::write(&bin, b"PK\x03\x04rest").unwrap();
        let e = load(bin.to_str().unwrap()).unwrap_err().to_string();
        assert!(
            e.contains("PyTorch pickle") && e.contains("safetensors only"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
        // A directory with only the pickle.
        let e = load(dir.path().to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("pytorch_model.bin is a PyTorch pickle"), "{e}");
        // Pickle bytes under another name.
        let odd = dir.path().join("weights.safetensors");
        std::fs::write(&odd, [0x80u8, 0x02, b'}', b'q']).unwrap();
        let e = load(odd.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("PyTorch pickle"), "{e}");
    }

    #[test]
    fn exported_configs_describe_the_model() {
        let mut p = pretrained_of(&tiny(false), Origin::Timm);
        p.class_names = Some(vec!["a".into(), "b".into(), "c".into()]);
        let t = timm_config_json(&p);
        assert_eq!(t["model_args"]["num_heads"], 2);
        assert_eq!(t["model_args"]["embed_dim"], 8);
        assert_eq!(t["model_args"]["mlp_ratio"], 1.5);
        assert_eq!(t["label_names"][2], "c");
        let h = hf_config_json(&p);
        assert_eq!(h["model_type"], "vit");
        assert_eq!(h["intermediate_size"], 12);
        assert_eq!(h["id2label"]["1"], "b");
        assert_eq!(h["label2id"]["c"], 2);
        assert_eq!(h["architectures"][0], "ViTForImageClassification");
    }
}
