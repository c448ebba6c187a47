//! `vitrs export`: weights written back in the layout timm or HF transformers load as they are
//! (`model.safetensors`, their `config.json`, and HF's `preprocessor_config.json`).

use std::path::Path;

use serde_json::{Value, json};

use super::names::timm_to_hf;
use super::{Pretrained, err, imagenet};
use crate::error::{Error, Result};
use crate::model::Pool;
use crate::model::io::write_safetensors;

/// The formats `vitrs export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Timm,
    Hf,
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
        Pool::Avg | Pool::ClsMean => "avg",
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
                &timm_to_hf(&p.weights, super::names::HfKind::Vit, false)?,
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
    use crate::weights::Origin;
    use crate::weights::tests::{pretrained_of, tiny};

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
