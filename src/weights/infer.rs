//! The model a state dict describes, per source. A ViT's sizes and optional pieces (class,
//! distillation and register tokens, LayerScale, `norm_pre`, `fc_norm`, a gated MLP) come from
//! its tensors; what tensors cannot show (heads, activation, norm eps, pooling, whether the
//! position embedding covers the prefix tokens) from HF's `config.json` (ViT, DeiT, DINOv2),
//! or from timm's: its `architecture` name as timm registers it (`timm_registry`) with
//! `model_args` on top, checked against the tensors. A timm ResNet's from
//! `resnet::infer_config`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use super::names::{HfKind, hf_to_timm};
use super::{Origin, Pretrained, err, timm_registry};
use crate::error::Result;
use crate::model::io::HostTensor;
use crate::model::{Act, MlpKind, Pool, VitConfig};

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

/// What the tensors of a timm-named state dict say about the model: sizes, and which optional
/// pieces are there. What they cannot say (heads, activation, norm eps, pooling, whether the
/// position embedding covers the prefix tokens) comes from the config.
struct Shapes {
    embed_dim: usize,
    in_chans: usize,
    patch: usize,
    depth: usize,
    /// fc1's output rows: the hidden width, or twice it for a gated MLP.
    fc1_rows: usize,
    /// fc2's input width: the hidden width.
    hidden: usize,
    qkv_bias: bool,
    class_token: bool,
    dist_token: bool,
    reg_tokens: usize,
    layer_scale: bool,
    pre_norm: bool,
    patch_bias: bool,
    fc_norm: bool,
    norm: bool,
    num_classes: Option<usize>,
    head_in: Option<usize>,
    pos_tokens: usize,
}

impl Shapes {
    fn prefix(&self) -> usize {
        self.class_token as usize + self.dist_token as usize + self.reg_tokens
    }
}

fn infer_shapes(sd: &BTreeMap<String, HostTensor>, path: &Path) -> Result<Shapes> {
    let get = |k: &str| {
        sd.get(k).ok_or_else(|| {
            err(format!(
                "{}: no {k}; not a complete ViT state dict",
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
    let depth = count_blocks(sd, path)?;
    // Rank 0 would have no first dimension; a file can say anything.
    let dim = |k: &str, i: usize| -> Result<usize> {
        let t = get(k)?;
        t.shape.get(i).copied().ok_or_else(|| match t.shape.len() {
            0 => err(format!(
                "{}: {k} is a scalar, expected a matrix",
                path.display()
            )),
            n => err(format!(
                "{}: {k} has {n} dimension(s), expected at least {}",
                path.display(),
                i + 1
            )),
        })
    };
    let has = |k: &str| sd.contains_key(k);
    let reg_tokens = if has("reg_token") {
        dim("reg_token", 1)?
    } else {
        0
    };
    if has("pos_embed") && get("pos_embed")?.shape.len() != 3 {
        return Err(err(format!(
            "{}: pos_embed has shape {:?}, expected [1, tokens, dim]",
            path.display(),
            get("pos_embed")?.shape
        )));
    }
    Ok(Shapes {
        embed_dim: d,
        in_chans: c,
        patch: p,
        depth,
        fc1_rows: dim("blocks.0.mlp.fc1.weight", 0)?,
        hidden: dim("blocks.0.mlp.fc2.weight", 1)?,
        qkv_bias: has("blocks.0.attn.qkv.bias"),
        class_token: has("cls_token"),
        dist_token: has("dist_token"),
        reg_tokens,
        layer_scale: has("blocks.0.ls1.gamma"),
        pre_norm: has("norm_pre.weight"),
        patch_bias: has("patch_embed.proj.bias"),
        fc_norm: has("fc_norm.weight"),
        norm: has("norm.weight"),
        num_classes: has("head.weight")
            .then(|| dim("head.weight", 0))
            .transpose()?,
        head_in: has("head.weight")
            .then(|| dim("head.weight", 1))
            .transpose()?,
        pos_tokens: dim("pos_embed", 1)?,
    })
}

/// `g` when `n = g²` (no overflow: `n` may come from a file's declared shape).
fn square_side(n: usize) -> Option<usize> {
    let g = (n as f64).sqrt().round() as usize;
    (g.checked_mul(g) == Some(n)).then_some(g)
}

/// The image size the position embedding is for: its patch rows form a square grid.
fn grid_img_size(s: &Shapes, no_embed_class: bool, path: &Path) -> Result<usize> {
    let patches = if no_embed_class {
        s.pos_tokens
    } else {
        s.pos_tokens.saturating_sub(s.prefix())
    };
    let Some(g) = square_side(patches).filter(|g| *g > 0) else {
        return Err(err(format!(
            "{}: pos_embed holds {patches} patch positions, not a square grid",
            path.display()
        )));
    };
    // Tensors with a zero dimension hold no data whatever their other dimensions say.
    g.checked_mul(s.patch).ok_or_else(|| {
        err(format!(
            "{}: a {g}×{g} grid of {}-pixel patches is impossibly large",
            path.display(),
            s.patch
        ))
    })
}

/// What the config says and the tensors cannot: a ViT's behaviour beyond its sizes.
struct Behaviour {
    num_heads: usize,
    eps: f64,
    act: Act,
    glu: bool,
    pool: Pool,
    no_embed_class: bool,
}

/// The model of `s` behaving as `b`, checked to be consistent (the MLP's gating against
/// fc1's rows, the head's width against the pooling).
fn vit_config(s: &Shapes, b: &Behaviour, path: &Path) -> Result<VitConfig> {
    let want_fc1 = if b.glu { 2 * s.hidden } else { s.hidden };
    if s.fc1_rows != want_fc1 {
        return Err(err(format!(
            "{}: blocks.0.mlp.fc1 has {} rows but a {} MLP of hidden width {} needs {want_fc1}",
            path.display(),
            s.fc1_rows,
            if b.glu { "gated (SwiGLU)" } else { "plain" },
            s.hidden
        )));
    }
    let mut c = VitConfig {
        num_classes: s.num_classes.unwrap_or(0),
        qkv_bias: s.qkv_bias,
        layer_norm_eps: b.eps,
        dist_token: s.dist_token,
        class_token: s.class_token,
        reg_tokens: s.reg_tokens,
        no_embed_class: b.no_embed_class,
        // The gains come with the weights; the value only matters for a fresh model.
        layer_scale: s.layer_scale.then_some(1e-5),
        pre_norm: s.pre_norm,
        patch_bias: s.patch_bias,
        fc_norm: s.fc_norm,
        act: b.act,
        mlp: if b.glu { MlpKind::Glu } else { MlpKind::Mlp },
        pool: b.pool,
        ..VitConfig::with_shape(
            grid_img_size(s, b.no_embed_class, path)?,
            s.patch,
            s.in_chans,
            0,
            [s.embed_dim, s.depth, b.num_heads, s.hidden],
        )
    };
    if let Some(w) = s.head_in.filter(|w| *w != c.head_in()) {
        return Err(err(format!(
            "{}: head.weight takes {w} features but {:?} pooling of width {} gives {}",
            path.display(),
            c.pool,
            c.embed_dim,
            c.head_in()
        )));
    }
    if !s.norm && !s.fc_norm {
        return Err(err(format!(
            "{}: neither norm.weight nor fc_norm.weight: ViTs without a final norm are not supported",
            path.display()
        )));
    }
    c.num_classes = s.num_classes.unwrap_or(0);
    Ok(c)
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

fn floats(v: Option<&Value>) -> Option<Vec<f64>> {
    v?.as_array()?.iter().map(Value::as_f64).collect()
}

fn usize_of(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64).map(|x| x as usize)
}

/// An activation by timm's or HF's name.
fn act_named(name: &str) -> Option<Act> {
    Some(match name {
        "gelu" => Act::Gelu,
        "gelu_tanh" | "gelu_new" | "gelu_pytorch_tanh" => Act::GeluTanh,
        "quick_gelu" => Act::QuickGelu,
        "silu" | "swish" => Act::Silu,
        _ => return None,
    })
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
    let model_type = cfg
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("vit");
    let kind = match model_type {
        "vit" => HfKind::Vit,
        "deit" => HfKind::Deit,
        "dinov2" => HfKind::Dinov2,
        t => {
            return Err(err(format!(
                "{}: model_type \"{t}\" is not supported (HF ViT, DeiT and DINOv2: \"vit\", \"deit\", \"dinov2\")",
                path.display()
            )));
        }
    };
    let glu = cfg.get("use_swiglu_ffn").and_then(Value::as_bool) == Some(true);
    let act_name = cfg
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("gelu");
    let act = match act_named(act_name) {
        Some(a) if !glu => a,
        // DINOv2's SwiGLU is SiLU-gated whatever hidden_act says.
        _ if glu => Act::Silu,
        _ => {
            return Err(err(format!(
                "{}: hidden_act \"{act_name}\" is not supported (gelu, gelu_new, gelu_pytorch_tanh, quick_gelu, silu)",
                path.display()
            )));
        }
    };
    let (sd, ignored) = hf_to_timm(raw, kind)?;
    let s = infer_shapes(&sd, path)?;
    let num_heads = usize_of(cfg.get("num_attention_heads")).ok_or_else(|| {
        err(format!(
            "{}: config.json has no num_attention_heads",
            path.display()
        ))
    })?;
    let default_eps = if kind == HfKind::Dinov2 { 1e-6 } else { 1e-12 };
    let b = Behaviour {
        num_heads,
        eps: cfg
            .get("layer_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(default_eps),
        act,
        glu,
        // Dinov2ForImageClassification: the class token and the patch tokens' mean.
        pool: if kind == HfKind::Dinov2 {
            Pool::ClsMean
        } else {
            Pool::Cls
        },
        no_embed_class: false,
    };
    let mut config = vit_config(&s, &b, path)?;
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
    // DINOv2 gives mlp_ratio, not intermediate_size (SwiGLU keeps 2/3 of it, rounded up to 8).
    let intermediate = usize_of(cfg.get("intermediate_size")).or_else(|| {
        let ratio = cfg.get("mlp_ratio").and_then(Value::as_f64)?;
        let h = (s.embed_dim as f64 * ratio) as usize;
        Some(if glu { (h * 2 / 3).div_ceil(8) * 8 } else { h })
    });
    for (key, said, found) in [
        ("hidden_size", usize_of(cfg.get("hidden_size")), s.embed_dim),
        (
            "num_hidden_layers",
            usize_of(cfg.get("num_hidden_layers")),
            s.depth,
        ),
        ("intermediate_size (or mlp_ratio)", intermediate, s.hidden),
        ("patch_size", usize_of(cfg.get("patch_size")), s.patch),
        (
            "num_channels",
            usize_of(cfg.get("num_channels")),
            s.in_chans,
        ),
        ("image_size", image_size, config.img_size),
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

/// timm arguments vitrs' ViT does not implement, with the value that is fine: a model that
/// sets one otherwise is refused by name rather than built wrong.
const UNSUPPORTED: &[(&str, &str, &str)] = &[
    ("qk_norm", "false", "normalised queries and keys"),
    ("scale_attn_norm", "false", "a norm inside attention"),
    ("scale_mlp_norm", "false", "a norm inside the MLP"),
    ("proj_bias", "true", "projections without bias"),
    (
        "pos_embed",
        "\"learn\"",
        "position embeddings other than learned ones",
    ),
    (
        "block_fn",
        "\"block\"",
        "blocks other than timm's pre-norm Block",
    ),
    (
        "attn_layer",
        "\"attn\"",
        "attention other than timm's Attention",
    ),
    ("embed_norm_layer", "null", "a norm in the patch embedding"),
    ("norm_layer", "\"layernorm\"", "norms other than LayerNorm"),
    (
        "pool_include_prefix",
        "false",
        "pooling over the prefix tokens",
    ),
    ("final_norm", "true", "no final norm"),
];

pub(super) fn from_timm(
    sd: BTreeMap<String, HostTensor>,
    config: Option<&Value>,
    path: &Path,
) -> Result<Pretrained> {
    let s = infer_shapes(&sd, path)?;
    let empty = serde_json::Map::new();
    let top = config.and_then(Value::as_object).unwrap_or(&empty);
    let model_args = config
        .and_then(|c| c.get("model_args"))
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    // timm's save_for_hf writes the name with model_args and pretrained_cfg; a plain
    // description of the constructor's arguments may name the model informally.
    let from_timm_hub = top.contains_key("model_args") || top.contains_key("pretrained_cfg");
    let arch = top
        .get("architecture")
        .and_then(Value::as_str)
        .filter(|_| from_timm_hub);
    let overrides = [top, model_args];
    let (args, known) = timm_registry::resolve(arch, &overrides);
    let explicit = |k: &str| timm_registry::explicit(arch, &overrides, k);
    let name = arch.unwrap_or("this timm ViT");
    let mut notes = Vec::new();
    if let (Some(a), false) = (arch, known) {
        notes.push(format!(
            "{a} is not one of the {} ViT names of timm {}: using timm's VisionTransformer defaults where its model_args say nothing",
            timm_registry::known_names(),
            timm_registry::timm_version()
        ));
    }
    for (key, fine, what) in UNSUPPORTED {
        let fine: Value = serde_json::from_str(fine).unwrap_or(Value::Null);
        if let Some(v) = args.get(*key).filter(|v| **v != fine) {
            return Err(err(format!(
                "{}: {name} has {key}={v} ({what}), which vitrs' ViT does not support",
                path.display()
            )));
        }
    }
    let num_heads = match usize_of(explicit("num_heads").as_ref()) {
        Some(h) => h,
        None if arch.is_some() && !known => {
            return Err(err(format!(
                "{}: {name} is not a timm {} ViT name and its config.json has no model_args.num_heads: add it (and any of act_layer, norm_eps, global_pool, class_token, no_embed_class that differ from timm's defaults)",
                path.display(),
                timm_registry::timm_version()
            )));
        }
        None => {
            let h = default_num_heads(s.embed_dim).ok_or_else(|| {
                err(format!(
                    "{}: cannot tell the number of heads of a {}-wide ViT; put a config.json with \"num_heads\" (or timm's \"architecture\") beside the weights",
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
    let arg_str = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("");
    let arg_bool = |k: &str| args.get(k).and_then(Value::as_bool);
    let act = act_named(arg_str("act")).ok_or_else(|| {
        err(format!(
            "{}: {name}'s activation {} is not supported (gelu, gelu_tanh, quick_gelu, silu)",
            path.display(),
            args.get("act").unwrap_or(&Value::Null)
        ))
    })?;
    let glu = match arg_str("mlp_layer") {
        "mlp" => false,
        "swiglu_packed" => true,
        other => {
            return Err(err(format!(
                "{}: {name}'s MLP {other} is not supported (timm's Mlp and SwiGLUPacked)",
                path.display()
            )));
        }
    };
    // Where the tensors and the config both speak, they must agree: the wrong architecture
    // name would otherwise build a silently different model.
    let init_values = args.get("init_values").is_some_and(|v| !v.is_null());
    let pool_name = arg_str("global_pool");
    let fc_norm = arg_bool("fc_norm").unwrap_or(pool_name == "avg");
    for (what, said, found) in [
        (
            "class_token",
            arg_bool("class_token") != Some(false),
            s.class_token,
        ),
        ("layer scale (init_values)", init_values, s.layer_scale),
        ("pre_norm", arg_bool("pre_norm") == Some(true), s.pre_norm),
        ("fc_norm", fc_norm, s.fc_norm),
    ] {
        if config.is_some() && said != found {
            return Err(err(format!(
                "{}: {name}'s config.json says {what} {said} but the weights say {found}",
                path.display()
            )));
        }
    }
    let regs = usize_of(args.get("reg_tokens")).unwrap_or(0);
    if config.is_some() && regs != s.reg_tokens {
        return Err(err(format!(
            "{}: {name}'s config.json says {regs} register tokens but the weights have {}",
            path.display(),
            s.reg_tokens
        )));
    }
    let pool = match pool_name {
        "token" if s.class_token => Pool::Cls,
        "avg" => Pool::Avg,
        // Without a config: fc_norm or no class token mean average pooling, as in timm.
        _ if config.is_none() => {
            if s.fc_norm || !s.class_token {
                Pool::Avg
            } else {
                Pool::Cls
            }
        }
        p => {
            return Err(err(format!(
                "{}: {name}'s global_pool {p:?} is not supported (token with a class token, or avg)",
                path.display()
            )));
        }
    };
    let no_embed_class = match explicit("no_embed_class").and_then(|v| v.as_bool()) {
        Some(v) => v,
        // Without a config: the position embedding's length tells.
        None if config.is_none() => {
            let patches = s.pos_tokens.saturating_sub(s.prefix());
            s.prefix() > 0 && square_side(patches).is_none() && square_side(s.pos_tokens).is_some()
        }
        None => false,
    };
    let eps = top
        .get("layer_norm_eps")
        .and_then(Value::as_f64)
        .or_else(|| args.get("norm_eps").and_then(Value::as_f64))
        .unwrap_or(1e-6);
    let b = Behaviour {
        num_heads,
        eps,
        act,
        glu,
        pool,
        no_embed_class,
    };
    let config_out = vit_config(&s, &b, path)?;
    let pcfg = config.and_then(|c| c.get("pretrained_cfg"));
    let reg = arch.and_then(timm_registry::registered);
    let pick = |k: &str| {
        floats(pcfg.and_then(|p| p.get(k)))
            .or_else(|| floats(config.and_then(|c| c.get(k))))
            .or_else(|| floats(reg.and_then(|r| r.get(k))))
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
