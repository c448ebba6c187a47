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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::tests::{pretrained_of, tiny};

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
}
