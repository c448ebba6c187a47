//! Tensor names: which library a state dict comes from, told from its names, and the
//! renaming between HF transformers' ViT names and vitrs' own (= timm's): HF's separate
//! `query`/`key`/`value` become the fused `qkv` (rows q, k, v), `layernorm_before`/`_after`
//! become `norm1`/`norm2`, `classifier` becomes `head`, and so on.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Origin, err};
use crate::error::Result;
use crate::model::io::HostTensor;

/// HF or timm, from the tensor names.
pub fn detect(sd: &BTreeMap<String, HostTensor>, path: &Path) -> Result<Origin> {
    let any = |f: &dyn Fn(&str) -> bool| sd.keys().any(|k| f(k));
    if any(&|k| {
        [
            "vit.",
            "deit.",
            "dinov2.",
            "embeddings.patch_embeddings",
            "encoder.layer.",
        ]
        .iter()
        .any(|p| k.starts_with(p))
    }) {
        return Ok(Origin::Hf);
    }
    if any(&|k| k.starts_with("blocks.") || k == "patch_embed.proj.weight") {
        return Ok(Origin::Timm);
    }
    let first: Vec<&str> = sd.keys().take(4).map(String::as_str).collect();
    Err(err(format!(
        "{}: neither HF transformers ViT / DeiT / DINOv2 names (vit.encoder.layer.N...) nor timm ViT names (blocks.N...), found {first:?}...",
        path.display()
    )))
}

/// The HF transformers model classes vitrs reads and writes, by their tensor-name stem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfKind {
    /// `ViTForImageClassification`: `vit.`, `layernorm_before`, `intermediate.dense`, ...
    Vit,
    /// `DeiTForImageClassificationWithTeacher`: `deit.`, ViT's layer names, a distillation
    /// token and two classifiers.
    Deit,
    /// `Dinov2ForImageClassification`: `dinov2.`, `norm1`, `mlp.fc1` (or SwiGLU's
    /// `gate_proj`/`up_proj`/`down_proj`), `layer_scale1.lambda1`.
    Dinov2,
}

impl HfKind {
    fn stem(self) -> &'static str {
        match self {
            HfKind::Vit => "vit",
            HfKind::Deit => "deit",
            HfKind::Dinov2 => "dinov2",
        }
    }

    /// (HF name inside a layer, timm name inside a block), for everything but q/k/v.
    fn layer_names(self) -> &'static [(&'static str, &'static str)] {
        match self {
            HfKind::Vit | HfKind::Deit => &[
                ("layernorm_before", "norm1"),
                ("layernorm_after", "norm2"),
                ("attention.output.dense", "attn.proj"),
                ("intermediate.dense", "mlp.fc1"),
                ("output.dense", "mlp.fc2"),
            ],
            HfKind::Dinov2 => &[
                ("norm1", "norm1"),
                ("norm2", "norm2"),
                ("attention.output.dense", "attn.proj"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
                // SwiGLU: older transformers packed, newer split (fused below).
                ("mlp.weights_in", "mlp.fc1"),
                ("mlp.weights_out", "mlp.fc2"),
                ("mlp.down_proj", "mlp.fc2"),
                ("layer_scale1", "ls1"),
                ("layer_scale2", "ls2"),
            ],
        }
    }

    /// (HF name outside the layers, timm name), prefixes included.
    fn top_names(self) -> Vec<(String, &'static str)> {
        let stem = self.stem();
        let mut v = vec![
            (format!("{stem}.embeddings.cls_token"), "cls_token"),
            (
                format!("{stem}.embeddings.position_embeddings"),
                "pos_embed",
            ),
            (
                format!("{stem}.embeddings.patch_embeddings.projection."),
                "patch_embed.proj.",
            ),
            (format!("{stem}.layernorm."), "norm."),
        ];
        match self {
            HfKind::Deit => v.extend([
                (
                    "deit.embeddings.distillation_token".to_string(),
                    "dist_token",
                ),
                ("cls_classifier.".to_string(), "head."),
                ("distillation_classifier.".to_string(), "head_dist."),
            ]),
            _ => v.push(("classifier.".to_string(), "head.")),
        }
        v
    }
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

/// HF's separate projections that timm stacks into one (rows in this order).
const FUSED: [(&str, &[&str]); 2] = [
    (
        "attn.qkv",
        &[
            "attention.attention.query",
            "attention.attention.key",
            "attention.attention.value",
        ],
    ),
    // DINOv2's SwiGLU: `act(gate) · up`, timm's packed fc1 is [gate; up].
    ("mlp.fc1", &["mlp.gate_proj", "mlp.up_proj"]),
];

/// HF transformers names (ViT, DeiT with teacher, DINOv2) → timm names, q/k/v fused into
/// qkv. Returns the names that were dropped on purpose (pooler, mask token). Unknown names are
/// an error.
pub fn hf_to_timm(
    sd: BTreeMap<String, HostTensor>,
    kind: HfKind,
) -> Result<(BTreeMap<String, HostTensor>, Vec<String>)> {
    let stem = format!("{}.", kind.stem());
    let tops = kind.top_names();
    let mut out = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut unknown = Vec::new();
    // Tensors HF keeps apart and timm fuses by stacking rows: (block, timm part, param).
    let mut fused: BTreeMap<(usize, &str, String), Vec<Option<HostTensor>>> = BTreeMap::new();
    for (name, t) in sd {
        // Bare encoders (`Dinov2Model`, `ViTModel`) have no stem.
        let bare = ["embeddings.", "encoder.", "layernorm."]
            .iter()
            .any(|p| name.starts_with(p));
        let full = if bare {
            format!("{stem}{name}")
        } else {
            name.clone()
        };
        let top = tops
            .iter()
            .find_map(|(hf, timm)| full.strip_prefix(hf.as_str()).map(|s| format!("{timm}{s}")));
        if let Some(n) = top {
            out.insert(n, t);
            continue;
        }
        let k = full.strip_prefix(&stem).unwrap_or(&full);
        if k == "embeddings.mask_token" || k.starts_with("pooler.") {
            ignored.push(name.clone());
            continue;
        }
        let Some((i, tail)) = k
            .strip_prefix("encoder.layer.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(i, tail)| Some((i.parse::<usize>().ok()?, tail)))
        else {
            unknown.push(name.clone());
            continue;
        };
        let Some((part, param)) = tail.rsplit_once('.') else {
            unknown.push(name.clone());
            continue;
        };
        let slot = FUSED.iter().find_map(|(ours, theirs)| {
            let s = theirs.iter().position(|p| *p == part)?;
            Some((*ours, s, theirs.len()))
        });
        if let Some((ours, s, n)) = slot {
            fused
                .entry((i, ours, param.to_string()))
                .or_insert_with(|| vec![None; n])[s] = Some(t);
            continue;
        }
        let Some((_, ours)) = kind.layer_names().iter().find(|(hf, _)| *hf == part) else {
            unknown.push(name.clone());
            continue;
        };
        // HF's LayerScale parameter is `lambda1`, timm's `gamma`.
        let param = if param == "lambda1" { "gamma" } else { param };
        out.insert(format!("blocks.{i}.{ours}.{param}"), t);
    }
    if !unknown.is_empty() {
        return Err(err(format!(
            "HF weights hold tensors a {} model does not have: {} (is this a {} checkpoint?)",
            kind.stem(),
            unknown.join(", "),
            kind.stem()
        )));
    }
    for ((i, ours, param), parts) in fused {
        let theirs = FUSED
            .iter()
            .find(|(o, _)| *o == ours)
            .map_or(&[][..], |f| f.1);
        let names: Vec<&str> = theirs
            .iter()
            .map(|p| p.rsplit('.').next().unwrap_or(p))
            .collect();
        let names = names.join("/");
        let parts: Vec<&HostTensor> = parts.iter().flatten().collect();
        if parts.len() < theirs.len() {
            return Err(err(format!(
                "HF weights of layer {i} lack one of {names} .{param}"
            )));
        }
        let stacked = cat0(&parts).ok_or_else(|| {
            let shapes: Vec<String> = parts.iter().map(|t| format!("{:?}", t.shape)).collect();
            err(format!(
                "HF weights of layer {i}: {names} .{param} have shapes {}, which cannot be stacked",
                shapes.join(", ")
            ))
        })?;
        out.insert(format!("blocks.{i}.{ours}.{param}"), stacked);
    }
    Ok((out, ignored))
}

/// timm names → HF transformers names of `kind` (qkv split into q, k, v). `glu`: the MLP is
/// DINOv2's SwiGLU (`weights_in`/`weights_out`).
pub fn timm_to_hf(
    sd: &BTreeMap<String, HostTensor>,
    kind: HfKind,
    glu: bool,
) -> Result<BTreeMap<String, HostTensor>> {
    let refuse = |k: &str| {
        err(format!(
            "cannot export {k} as HF {} (the HF class has no such tensor; use --format timm)",
            kind.stem()
        ))
    };
    let mut out = BTreeMap::new();
    for (k, t) in sd {
        if let Some(rest) = k.strip_prefix("blocks.") {
            let (i, tail) = rest.split_once('.').ok_or_else(|| refuse(k))?;
            let (part, param) = tail.rsplit_once('.').ok_or_else(|| refuse(k))?;
            let base = format!("{}.encoder.layer.{i}", kind.stem());
            let split = FUSED
                .iter()
                .find(|(ours, _)| *ours == part && (part != "mlp.fc1" || glu));
            if let Some((_, theirs)) = split {
                for (n, piece) in theirs.iter().zip(split0(t, theirs.len())) {
                    out.insert(format!("{base}.{n}.{param}"), piece);
                }
                continue;
            }
            let theirs = match (glu, part) {
                (true, "mlp.fc2") => "mlp.down_proj",
                _ => kind
                    .layer_names()
                    .iter()
                    .find(|(_, timm)| *timm == part)
                    .map(|(hf, _)| *hf)
                    .ok_or_else(|| refuse(k))?,
            };
            let param = if param == "gamma" { "lambda1" } else { param };
            out.insert(format!("{base}.{theirs}.{param}"), t.clone());
            continue;
        }
        let name = kind
            .top_names()
            .iter()
            .find_map(|(hf, timm)| {
                if timm.ends_with('.') {
                    k.strip_prefix(timm).map(|s| format!("{hf}{s}"))
                } else {
                    (k == timm).then(|| hf.clone())
                }
            })
            .ok_or_else(|| refuse(k))?;
        out.insert(name, t.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::tests::{pretrained_of, tiny};

    #[test]
    fn hf_names_map_to_timm_and_back_exactly() {
        let p = pretrained_of(&tiny(false), Origin::Timm);
        let hf = timm_to_hf(&p.weights, HfKind::Vit, false).unwrap();
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
        let (back, ignored) = hf_to_timm(hf, HfKind::Vit).unwrap();
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
        let e = hf_to_timm(sd, HfKind::Vit).unwrap_err().to_string();
        assert!(e.contains("crossattention"), "{e}");
    }
}
