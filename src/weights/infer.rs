//! The model a state dict describes, per source: a ViT's config from its tensor shapes (embed
//! dim, depth, MLP size, patch and image size, classes, distillation token) checked against
//! HF's `config.json`, or with `num_heads` from timm's `config.json` when there is one
//! (`model_args.num_heads`, or a plain `num_heads`), else timm's own choice for its standard
//! widths; a timm ResNet's from `resnet::infer_config`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use super::names::hf_to_timm;
use super::{Origin, Pretrained, err};
use crate::error::Result;
use crate::model::io::HostTensor;
use crate::model::{Pool, VitConfig};

/// timm ResNet weights: the architecture from the tensor shapes (`resnet::infer_config`),
/// the image size from a `config.json` beside them (224 for timm's ImageNet stem otherwise;
/// a CNN takes any size).
pub(super) fn from_timm_resnet(
    sd: BTreeMap<String, HostTensor>,
    config: Option<&Value>,
    path: &Path,
) -> Result<Pretrained> {
    let (cnn, in_chans, num_classes) = crate::model::resnet::infer_config(&sd, path)?;
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
    let depth = count_blocks(sd, path)?;
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

/// The number of transformer blocks, in one pass over the names: `blocks.0` … `blocks.N-1`,
/// numbered without gaps, each with the tensors of `blocks.0` (checked here, before a model
/// of that depth is built).
fn count_blocks(sd: &BTreeMap<String, HostTensor>, path: &Path) -> Result<usize> {
    let mut blocks: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    for k in sd.keys() {
        let Some((n, rest)) = k.strip_prefix("blocks.").and_then(|r| r.split_once('.')) else {
            continue;
        };
        if let Ok(n) = n.parse::<usize>() {
            blocks.entry(n).or_default().insert(rest);
        }
    }
    let Some(first) = blocks.get(&0) else {
        return Err(err(format!("{}: no transformer blocks", path.display())));
    };
    for (expect, (n, names)) in blocks.iter().enumerate() {
        if *n != expect {
            return Err(err(format!(
                "{}: blocks.{expect} is missing but blocks.{n} is there (blocks are numbered from 0 without gaps)",
                path.display()
            )));
        }
        if let Some(missing) = first.difference(names).next() {
            return Err(err(format!(
                "{}: blocks.{n} has no {missing}, which blocks.0 has",
                path.display()
            )));
        }
        if let Some(extra) = names.difference(first).next() {
            return Err(err(format!(
                "{}: blocks.{n} has {extra}, which blocks.0 has not",
                path.display()
            )));
        }
    }
    Ok(blocks.len())
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
        eval_head: crate::model::vit::EvalHead::Avg,
        cnn: None,
    }
}

fn floats(v: Option<&Value>) -> Option<Vec<f64>> {
    v?.as_array()?.iter().map(Value::as_f64).collect()
}

fn usize_of(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64).map(|x| x as usize)
}

pub(super) fn from_hf(
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

pub(super) fn from_timm(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_count_rule() {
        assert_eq!(default_num_heads(192), Some(3));
        assert_eq!(default_num_heads(384), Some(6));
        assert_eq!(default_num_heads(768), Some(12));
        assert_eq!(default_num_heads(1280), Some(16));
        assert_eq!(default_num_heads(512), Some(8));
        assert_eq!(default_num_heads(48), None);
    }
}
