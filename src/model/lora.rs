//! LoRA adapters on a ViT, interoperable with HF PEFT.
//!
//! An adapted [`Linear`] computes `x·W + b + (alpha/r)·dropout(x)·A·B` with W frozen; A starts
//! Kaiming-uniform (a = √5, PEFT's default) and B at zero, so step 0 is the base model exactly.
//! Parameter paths are PEFT's keys without `base_model.model.` (`blocks.0.attn.qkv.lora_A.weight`),
//! so reading and writing PEFT's `adapter_model.safetensors` is a prefix and nothing else.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::VisionTransformer;
use super::io::{HostTensor, read_safetensors, write_safetensors};
use super::layers::{Factor, Init, Linear};
use super::params::{named_params, set_trainable};
use crate::error::{Error, Result};
use crate::rng::{Rng, stream};

/// The Linear layers of a ViT block an adapter may wrap, by their timm module names.
pub const TARGETS: [&str; 4] = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"];

/// PEFT's key prefix in `adapter_model.safetensors`.
pub const PEFT_PREFIX: &str = "base_model.model.";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names as PEFT's `target_modules`: `qkv`, `attn.proj`, `fc1`, `fc2` (a name
    /// matches a module whose path ends with it).
    pub targets: Vec<String>,
    /// Modules trained in full beside the adapters (PEFT's `modules_to_save`).
    pub modules_to_save: Vec<String>,
    /// rsLoRA: scale by `alpha/√r` instead of `alpha/r`.
    #[serde(default)]
    pub use_rslora: bool,
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Config(
                "--lora-rank must be ≥ 1 (8 is the usual choice)".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "--lora-dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(Error::Config(
                "--lora-targets is empty (give e.g. qkv or qkv,attn.proj,fc1,fc2)".into(),
            ));
        }
        for t in &self.targets {
            if !TARGETS.iter().any(|m| target_matches(t, m)) {
                return Err(Error::Config(format!(
                    "unknown LoRA target {t:?} (a ViT block's linears are {}: e.g. --lora-targets qkv,fc1)",
                    ["qkv", "attn.proj", "fc1", "fc2"].join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// PEFT's rule: a target names a module whose dotted path ends with it.
fn target_matches(target: &str, module: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
}

/// Whether a parameter path belongs to one of `modules` (path equal to the module, or under it).
pub fn in_modules(path: &str, modules: &[String]) -> bool {
    modules.iter().any(|m| {
        path.starts_with(&format!("{m}.")) || path.contains(&format!(".{m}.")) || path == m
    })
}

pub fn is_adapter(path: &str) -> bool {
    path.contains(".lora_A.") || path.contains(".lora_B.")
}

fn blocks_linears(model: &mut VisionTransformer) -> Vec<(String, &mut Linear)> {
    let mut out = Vec::new();
    for (i, b) in model.blocks.iter_mut().enumerate() {
        out.push((format!("blocks.{i}.attn.qkv"), &mut b.attn.qkv));
        out.push((format!("blocks.{i}.attn.proj"), &mut b.attn.proj));
        out.push((format!("blocks.{i}.mlp.fc1"), &mut b.mlp.fc1));
        out.push((format!("blocks.{i}.mlp.fc2"), &mut b.mlp.fc2));
    }
    out
}

/// Wrap every target Linear with a fresh adapter (A Kaiming-uniform from `seed`, B zero) and
/// freeze everything but the adapters and `modules_to_save`.
pub fn add_adapters(
    mut model: VisionTransformer,
    cfg: &LoraConfig,
    seed: u64,
    device: &Device,
) -> Result<VisionTransformer> {
    cfg.validate()?;
    for (k, (path, lin)) in blocks_linears(&mut model).into_iter().enumerate() {
        if !cfg.targets.iter().any(|t| target_matches(t, &path)) {
            continue;
        }
        let (d_in, d_out) = (lin.d_in(), lin.d_out());
        // kaiming_uniform_(a=√5) on PyTorch's [r, in] weight: bound = 1/√in.
        let mut rng = Rng::at(seed, stream::INIT, &[0x10_4a, k as u64]);
        let bound = 1.0 / (d_in as f64).sqrt();
        let a: Vec<f32> = (0..d_in * cfg.rank)
            .map(|_| rng.uniform(-bound, bound) as f32)
            .collect();
        let a = Tensor::<2>::from_data(burn::tensor::TensorData::new(a, [d_in, cfg.rank]), device);
        lin.lora_A = Some(Factor {
            weight: Param::from_tensor(a),
        });
        lin.lora_B = Some(Factor {
            weight: Param::from_tensor(Init::zeros([cfg.rank, d_out], device)),
        });
        lin.lora_scaling = cfg.scaling();
        lin.lora_dropout = cfg.dropout;
    }
    Ok(freeze(model, &cfg.modules_to_save))
}

/// Adapters and `modules_to_save` trainable; everything else frozen (no gradient is computed
/// for it and the optimizer keeps no state for it).
pub fn freeze(model: VisionTransformer, modules_to_save: &[String]) -> VisionTransformer {
    set_trainable(model, |p| is_adapter(p) || in_modules(p, modules_to_save))
}

/// Fold every adapter into its base weight (`W ← W + scaling·A·B`) and drop it: what PEFT's
/// `merge_and_unload()` gives.
pub fn merge(mut model: VisionTransformer) -> VisionTransformer {
    for (_, lin) in blocks_linears(&mut model) {
        if let (Some(a), Some(b)) = (lin.lora_A.take(), lin.lora_B.take()) {
            let delta = a.weight.val().matmul(b.weight.val()) * lin.lora_scaling;
            let w = (lin.weight.val() + delta).detach();
            lin.weight = Param::from_tensor(w);
            lin.lora_scaling = 0.0;
            lin.lora_dropout = 0.0;
        }
    }
    model
}

/// Number of adapter parameters: `Σ r·(in + out)` over the wrapped linears.
pub fn adapter_param_count(model: &VisionTransformer) -> usize {
    named_params(model)
        .iter()
        .filter(|p| is_adapter(&p.path))
        .map(|p| p.shape.iter().product::<usize>())
        .sum()
}

/// PEFT's `adapter_config.json` for `cfg`.
pub fn peft_config_json(cfg: &LoraConfig, base: Option<&str>) -> Value {
    // PEFT matches target names as suffixes of module paths: qkv, proj, fc1, fc2 as written.
    json!({
        "peft_type": "LORA",
        "task_type": null,
        "auto_mapping": {
            "base_model_class": "VisionTransformer",
            "parent_library": "timm.models.vision_transformer"
        },
        "base_model_name_or_path": base,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.targets,
        "modules_to_save": cfg.modules_to_save,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "use_rslora": cfg.use_rslora,
        "use_dora": false,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null
    })
}

/// Read PEFT's `adapter_config.json`, refusing what vitrs does not implement.
pub fn parse_peft_config(v: &Value, path: &Path) -> Result<LoraConfig> {
    let bad = |m: String| Error::Checkpoint(format!("{}: {m}", path.display()));
    let peft_type = v.get("peft_type").and_then(Value::as_str).unwrap_or("");
    if peft_type != "LORA" {
        return Err(bad(format!(
            "peft_type {peft_type:?}; vitrs reads LoRA adapters only"
        )));
    }
    for (key, what) in [("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out")] {
        if v.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(bad(format!("{what} adapters are not supported")));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if v.get(key)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(format!(
                "a per-module {key} is not supported (one rank and alpha for all targets)"
            )));
        }
    }
    if v.get("bias").and_then(Value::as_str).unwrap_or("none") != "none" {
        return Err(bad(
            "bias training (bias != \"none\") is not supported".into()
        ));
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()),
            Some(Value::String(s)) => Err(bad(format!(
                "{key} is a regular expression ({s:?}); vitrs reads lists of module names"
            ))),
            Some(other) => Err(bad(format!("{key} is {other}, expected a list"))),
        }
    };
    let cfg = LoraConfig {
        rank: v.get("r").and_then(Value::as_u64).unwrap_or(0) as usize,
        alpha: v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(0.0),
        dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        targets: strings("target_modules")?,
        modules_to_save: strings("modules_to_save")?,
        use_rslora: v.get("use_rslora").and_then(Value::as_bool) == Some(true),
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// The parameters an adapter file holds (adapters and `modules_to_save`), vitrs names.
pub fn adapter_state(
    sd: &BTreeMap<String, HostTensor>,
    cfg: &LoraConfig,
) -> BTreeMap<String, HostTensor> {
    sd.iter()
        .filter(|(k, _)| is_adapter(k) || in_modules(k, &cfg.modules_to_save))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Write `adapter_model.safetensors` + `adapter_config.json` (PEFT's `save_pretrained`).
pub fn write_peft(
    dir: &Path,
    state: &BTreeMap<String, HostTensor>,
    cfg: &LoraConfig,
    base: Option<&str>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating", e))?;
    let named: BTreeMap<String, HostTensor> = state
        .iter()
        .map(|(k, v)| (format!("{PEFT_PREFIX}{k}"), v.clone()))
        .collect();
    let meta = [("format".to_string(), "pt".to_string())].into();
    write_safetensors(&dir.join("adapter_model.safetensors"), &named, Some(meta))?;
    let json = serde_json::to_vec_pretty(&peft_config_json(cfg, base))
        .map_err(|e| Error::Io(e.to_string()))?;
    crate::util::write_file_synced(&dir.join("adapter_config.json"), &json)
}

/// A PEFT adapter directory: its config and its tensors under vitrs names (PyTorch layouts).
pub struct Adapter {
    pub config: LoraConfig,
    pub state: BTreeMap<String, HostTensor>,
    pub base_model_name_or_path: Option<String>,
}

pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file()
}

pub fn read_peft(dir: &Path) -> Result<Adapter> {
    let cfg_path = dir.join("adapter_config.json");
    let bytes = std::fs::read(&cfg_path)
        .map_err(|e| Error::io(&cfg_path, "reading (is this a PEFT adapter directory?)", e))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Checkpoint(format!("{}: not valid JSON ({e})", cfg_path.display())))?;
    let config = parse_peft_config(&v, &cfg_path)?;
    let file = dir.join("adapter_model.safetensors");
    if !file.is_file() && dir.join("adapter_model.bin").is_file() {
        return Err(Error::Checkpoint(format!(
            "{}: adapter_model.bin is a PyTorch pickle; save the adapter with safe_serialization=True (PEFT's default)",
            dir.display()
        )));
    }
    let raw = read_safetensors(&file)?;
    let mut state = BTreeMap::new();
    for (k, v) in raw {
        let name = k.strip_prefix(PEFT_PREFIX).ok_or_else(|| {
            Error::Checkpoint(format!(
                "{}: tensor {k:?} lacks PEFT's {PEFT_PREFIX:?} prefix",
                file.display()
            ))
        })?;
        // PEFT names adapters `.lora_A.weight` when saved (the `.default` adapter name dropped).
        state.insert(
            name.replace(".lora_A.default.", ".lora_A.")
                .replace(".lora_B.default.", ".lora_B."),
            v,
        );
    }
    Ok(Adapter {
        config,
        state,
        base_model_name_or_path: v
            .get("base_model_name_or_path")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Put an adapter on `model` (a base ViT): wrap its targets, then load the adapter's
/// tensors (adapters and saved modules). A tensor that fits no parameter, or a missing
/// adapter factor, is an error naming it.
pub fn apply_adapter(
    model: VisionTransformer,
    adapter: &Adapter,
    device: &Device,
) -> Result<VisionTransformer> {
    let model = add_adapters(model, &adapter.config, 0, device)?;
    super::io::load_state_dict_keeping(model, &adapter.state, device, |p| !is_adapter(p)).map_err(
        |e| {
            Error::Checkpoint(format!(
                "the adapter does not fit this base model: {e} (give the base it was trained on)"
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::io::state_dict;
    use crate::model::layers::Ctx;
    use crate::model::params::{count_params, map_params};
    use burn::tensor::TensorData;

    fn cfg(targets: &[&str]) -> LoraConfig {
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: targets.iter().map(|s| s.to_string()).collect(),
            modules_to_save: vec!["head".into()],
            use_rslora: false,
        }
    }

    fn vit(device: &Device) -> VisionTransformer {
        let c = VitConfig::with_shape(8, 4, 3, 5, [16, 2, 2, 24]);
        VisionTransformer::new(&c, 1, device).unwrap()
    }

    fn input(device: &Device) -> Tensor<4> {
        let mut rng = Rng::seed(3);
        let x: Vec<f32> = (0..2 * 3 * 64).map(|_| rng.normal() as f32).collect();
        Tensor::from_data(TensorData::new(x, [2, 3, 8, 8]), device)
    }

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    use crate::model::VitConfig;

    #[test]
    fn a_fresh_adapter_leaves_the_base_output_exactly() {
        let device = Device::flex();
        let base = vit(&device);
        let y0 = host(base.forward(input(&device), &Ctx::eval()));
        let all = cfg(&["qkv", "attn.proj", "fc1", "fc2"]);
        let m = add_adapters(base, &all, 7, &device).unwrap();
        assert_eq!(host(m.forward(input(&device), &Ctx::eval())), y0);
        // A is Kaiming-uniform (a = √5): |A| ≤ 1/√in, not all zero; B is zero.
        let a = m.blocks[0].mlp.fc2.lora_A.as_ref().unwrap().weight.val();
        let a: Vec<f32> = a
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        let bound = 1.0 / (24f32).sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| v.abs() > bound / 2.0));
    }

    #[test]
    fn trainable_counts_follow_the_closed_form() {
        // Trainability is visible on an autodiff device (a plain one never requires grad).
        let device = Device::flex().autodiff();
        let (d, mlp, r, classes, depth) = (16, 24, 4, 5, 2);
        let head = d * classes + classes;
        for (targets, per_block) in [
            (vec!["qkv"], r * (d + 3 * d)),
            (
                vec!["qkv", "attn.proj", "fc1", "fc2"],
                r * (d + 3 * d) + r * (d + d) + r * (d + mlp) + r * (mlp + d),
            ),
        ] {
            let m = add_adapters(vit(&device), &cfg(&targets), 0, &device).unwrap();
            let (total, trainable) = count_params(&m);
            assert_eq!(trainable, depth * per_block + head, "{targets:?}");
            assert_eq!(adapter_param_count(&m), depth * per_block);
            assert_eq!(total, count_params(&vit(&device)).0 + depth * per_block);
        }
    }

    /// Perturb every B so the adapter does something.
    fn perturbed(m: VisionTransformer) -> VisionTransformer {
        let mut rng = Rng::seed(11);
        map_params(m, |p, v| {
            p.ends_with("lora_B.weight").then(|| {
                let n = v.dims()[0];
                let d: Vec<f32> = (0..n).map(|_| 0.1 * rng.normal() as f32).collect();
                Tensor::from_data(TensorData::new(d, [n]), &v.device())
            })
        })
    }

    #[test]
    fn merged_equals_unmerged() {
        let device = Device::flex();
        let all = cfg(&["qkv", "attn.proj", "fc1", "fc2"]);
        let m = perturbed(add_adapters(vit(&device), &all, 2, &device).unwrap());
        let y = host(m.forward(input(&device), &Ctx::eval()));
        assert_ne!(y, host(vit(&device).forward(input(&device), &Ctx::eval())));
        let merged = merge(m);
        assert!(!state_dict(&merged).keys().any(|k| is_adapter(k)));
        let ym = host(merged.forward(input(&device), &Ctx::eval()));
        let d = y
            .iter()
            .zip(&ym)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d <= 1e-5, "merged differs by {d}");
    }

    #[test]
    fn a_written_adapter_reads_back_and_gives_the_same_model() {
        let device = Device::flex();
        let c = cfg(&["qkv", "fc2"]);
        let m = perturbed(add_adapters(vit(&device), &c, 2, &device).unwrap());
        let y = host(m.forward(input(&device), &Ctx::eval()));
        let dir = tempfile::tempdir().unwrap();
        write_peft(dir.path(), &adapter_state(&state_dict(&m), &c), &c, None).unwrap();
        let raw = read_safetensors(&dir.path().join("adapter_model.safetensors")).unwrap();
        assert!(raw.contains_key("base_model.model.blocks.1.mlp.fc2.lora_B.weight"));
        assert_eq!(
            raw["base_model.model.blocks.0.attn.qkv.lora_A.weight"].shape,
            [4, 16]
        );
        assert!(raw.contains_key("base_model.model.head.weight"));
        assert!(!raw.keys().any(|k| k.contains("fc1") || k.contains("norm")));
        let a = read_peft(dir.path()).unwrap();
        assert_eq!(a.config, c);
        let back = apply_adapter(vit(&device), &a, &device).unwrap();
        assert_eq!(host(back.forward(input(&device), &Ctx::eval())), y);
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let device = Device::flex();
        let mut c = cfg(&["qkv"]);
        c.rank = 0;
        let e = add_adapters(vit(&device), &c, 0, &device).err().unwrap();
        assert!(e.to_string().contains("--lora-rank must be ≥ 1"), "{e}");
        let e = add_adapters(vit(&device), &cfg(&["qkv", "fc3"]), 0, &device)
            .err()
            .unwrap();
        assert!(e.to_string().contains("unknown LoRA target \"fc3\""), "{e}");
    }
}
