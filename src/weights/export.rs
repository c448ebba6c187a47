//! `vitrs export`: weights written back in the layout timm or HF transformers load as they are
//! (`model.safetensors`, their `config.json`, and HF's `preprocessor_config.json`).

use std::path::Path;

use serde_json::{Value, json};

use super::names::{HfKind, timm_to_hf};
use super::{Pretrained, err, imagenet};
use crate::error::{Error, Result};
use crate::model::io::write_safetensors;
use crate::model::{Act, MlpKind, Pool, VitConfig};

/// The formats `vitrs export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Timm,
    Hf,
    /// `model.onnx`: the ViT as an ONNX graph (opset 17, weights inside), see `onnx.rs`.
    Onnx,
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

/// The registered timm name whose fixed choices (norm eps, MLP kind, distillation) this model
/// shares: `model_args` override everything else, but not a norm's eps or the MLP class.
fn timm_architecture(c: &VitConfig) -> std::result::Result<&'static str, String> {
    let eps = c.layer_norm_eps;
    let eps = if eps == 1e-6 {
        6
    } else if eps == 1e-5 {
        5
    } else {
        0
    };
    Ok(match (c.dist_token, c.mlp, eps) {
        (true, MlpKind::Mlp, 6) => "deit_base_distilled_patch16_224",
        (false, MlpKind::Mlp, 6) => "vit_base_patch16_224",
        (false, MlpKind::Mlp, 5) => "vit_base_patch16_clip_224",
        (false, MlpKind::Glu, 6) => "vit_giant_patch14_dinov2",
        _ => {
            return Err(format!(
                "timm registers no ViT with {:?} MLP, LayerNorm eps {} and distillation token {}",
                c.mlp, c.layer_norm_eps, c.dist_token
            ));
        }
    })
}

/// The `mlp_ratio` timm and HF DINOv2 turn back into this MLP width: both compute
/// `int(dim · mlp_ratio)`, so the plain quotient is nudged up until that gives `mlp_dim`.
fn mlp_ratio(c: &VitConfig) -> f64 {
    let mut ratio = c.mlp_dim as f64 / c.embed_dim as f64;
    while ((c.embed_dim as f64 * ratio) as usize) < c.mlp_dim {
        ratio = ratio.next_up();
    }
    ratio
}

fn act_name(act: Act, hf: bool) -> &'static str {
    match act {
        Act::Gelu => "gelu",
        Act::GeluTanh if hf => "gelu_pytorch_tanh",
        Act::GeluTanh => "gelu_tanh",
        Act::QuickGelu => "quick_gelu",
        Act::Silu => "silu",
    }
}

/// timm's `config.json` as its `save_for_hf` writes it (what `timm.create_model("local-dir:DIR")`
/// reads): a registered architecture name sharing this model's norm eps and MLP class, with
/// `model_args` giving every other constructor argument, the data config, and the class
/// names. An eps no timm name has (HF's 1e-12) is kept in vitrs' own `layer_norm_eps` key
/// (timm builds 1e-6; vitrs reads its own key back).
pub fn timm_config_json(p: &Pretrained) -> Result<Value> {
    let c = &p.config;
    let refuse = |why: String| {
        err(format!(
            "cannot export {} for timm: {why} (use --format hf or onnx)",
            p.source.display()
        ))
    };
    let architecture = timm_architecture(c).or_else(|why| {
        if (c.layer_norm_eps - 1e-12).abs() < 1e-15 && c.mlp == MlpKind::Mlp {
            Ok(if c.dist_token {
                "deit_base_distilled_patch16_224"
            } else {
                "vit_base_patch16_224"
            })
        } else {
            Err(refuse(why))
        }
    })?;
    let pool = match c.pool {
        Pool::Cls => "token",
        Pool::Avg => "avg",
        Pool::ClsMean => {
            return Err(refuse(
                "timm has no class-token-plus-mean pooling (HF DINOv2's classifier)".into(),
            ));
        }
    };
    // timm gives the patch projection a bias exactly when there is no norm_pre.
    if c.patch_bias == c.pre_norm {
        return Err(refuse(format!(
            "timm's patch projection has a bias iff there is no norm_pre; this model has bias {} and norm_pre {}",
            c.patch_bias, c.pre_norm
        )));
    }
    let ratio = mlp_ratio(c);
    let args = json!({
        "img_size": c.img_size,
        "patch_size": c.patch_size,
        "in_chans": c.in_chans,
        "embed_dim": c.embed_dim,
        "depth": c.depth,
        "num_heads": c.num_heads,
        "mlp_ratio": ratio,
        "qkv_bias": c.qkv_bias,
        "class_token": c.class_token,
        "reg_tokens": c.reg_tokens,
        "no_embed_class": c.no_embed_class,
        "init_values": c.layer_scale,
        "pre_norm": c.pre_norm,
        "fc_norm": c.fc_norm,
        "global_pool": pool,
        "act_layer": act_name(c.act, false),
        "num_classes": c.num_classes,
    });
    let (m, s) = imagenet();
    let mut v = json!({
        "architecture": architecture,
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
    });
    if timm_architecture(c).is_err() {
        v["layer_norm_eps"] = json!(c.layer_norm_eps);
    }
    if p.class_names.is_some() && p.has_head {
        v["label_names"] = json!(labels(p));
    }
    Ok(v)
}

/// The HF transformers class that holds this model: DINOv2's (class token + mean pooling,
/// LayerScale), DeiT's with teacher (distillation token), or the plain ViT; or why none does.
fn hf_kind(c: &VitConfig) -> std::result::Result<HfKind, &'static str> {
    let kind = if c.pool == Pool::ClsMean || c.layer_scale.is_some() {
        HfKind::Dinov2
    } else if c.dist_token {
        HfKind::Deit
    } else {
        HfKind::Vit
    };
    let why = if !c.class_token || c.reg_tokens > 0 || c.no_embed_class {
        "HF's ViT, DeiT and DINOv2 have a class token, no registers and position embeddings on every token"
    } else if c.pre_norm || c.fc_norm || !c.patch_bias {
        "HF's ViT, DeiT and DINOv2 have no norm_pre or fc_norm and a patch projection with bias"
    } else if kind == HfKind::Dinov2 && (c.pool != Pool::ClsMean || c.layer_scale.is_none()) {
        "HF's DINOv2 classifier takes the class token and the patch mean, with LayerScale"
    } else if kind == HfKind::Dinov2 && c.mlp == MlpKind::Glu {
        "vitrs writes HF DINOv2 with the plain MLP only"
    } else if kind != HfKind::Dinov2 && (c.pool != Pool::Cls || c.mlp == MlpKind::Glu) {
        "HF's ViT and DeiT classify from the class token with a plain MLP"
    } else {
        return Ok(kind);
    };
    Err(why)
}

/// HF transformers' `config.json` for `kind` (`ViTForImageClassification`,
/// `DeiTForImageClassificationWithTeacher`, `Dinov2ForImageClassification`).
pub fn hf_config_json(p: &Pretrained, kind: HfKind) -> Value {
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
    let (class, model_type) = match kind {
        HfKind::Vit => ("ViTForImageClassification", "vit"),
        HfKind::Deit => ("DeiTForImageClassificationWithTeacher", "deit"),
        HfKind::Dinov2 => ("Dinov2ForImageClassification", "dinov2"),
    };
    let mut v = json!({
        "architectures": [class],
        "model_type": model_type,
        "hidden_size": c.embed_dim,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.num_heads,
        "hidden_act": act_name(c.act, true),
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
    });
    if kind == HfKind::Dinov2 {
        let ratio = mlp_ratio(c);
        // transformers 5 types Dinov2Config.mlp_ratio as an int.
        v["mlp_ratio"] = if ratio.fract() == 0.0 {
            json!(ratio as u64)
        } else {
            json!(ratio)
        };
        v["layerscale_value"] = json!(c.layer_scale.unwrap_or(1.0));
        v["use_swiglu_ffn"] = json!(false);
        v["drop_path_rate"] = json!(0.0);
    } else {
        v["intermediate_size"] = json!(c.mlp_dim);
    }
    v
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
    // timm and HF write model.safetensors and config.json: never over a vitrs checkpoint's
    // (an --out that is the checkpoint itself, or best_model of a run). ONNX adds model.onnx.
    if format != ExportFormat::Onnx && super::is_vitrs_checkpoint(&out.join("config.json")) {
        return Err(err(format!(
            "{} holds a vitrs checkpoint, which the export would overwrite: give another --out",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, "creating", e))?;
    let meta = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    match format {
        ExportFormat::Timm => {
            let config = timm_config_json(p)?;
            write_safetensors(&out.join("model.safetensors"), &p.weights, meta)?;
            write_json(&out.join("config.json"), &config)
        }
        ExportFormat::Onnx => super::onnx::export(p, out),
        ExportFormat::Hf => {
            let c = &p.config;
            let refuse = |why: &str| {
                Err(err(format!(
                    "cannot export {} for HF transformers: {why} (use --format timm or onnx)",
                    p.source.display()
                )))
            };
            let kind = match hf_kind(c) {
                Ok(k) => k,
                Err(why) => return refuse(why),
            };
            if !p.has_head {
                return refuse("it has no classification head");
            }
            write_safetensors(
                &out.join("model.safetensors"),
                &timm_to_hf(&p.weights, kind, c.mlp == MlpKind::Glu)?,
                meta,
            )?;
            write_json(&out.join("config.json"), &hf_config_json(p, kind))?;
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
        let t = timm_config_json(&p).unwrap();
        assert_eq!(t["model_args"]["num_heads"], 2);
        assert_eq!(t["model_args"]["embed_dim"], 8);
        assert_eq!(t["model_args"]["mlp_ratio"], 1.5);
        assert_eq!(t["label_names"][2], "c");
        let h = hf_config_json(&p, HfKind::Vit);
        assert_eq!(h["model_type"], "vit");
        assert_eq!(h["intermediate_size"], 12);
        assert_eq!(h["id2label"]["1"], "b");
        assert_eq!(h["label2id"]["c"], 2);
        assert_eq!(h["architectures"][0], "ViTForImageClassification");
    }
}
