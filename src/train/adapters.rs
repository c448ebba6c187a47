//! Parameter-efficient fine-tuning at the start of a run: the frozen base is written once
//! beside the checkpoints (they point at it by path and sha256), then adapters are added —
//! fresh, or from a PEFT directory (`--adapter-from`).

use std::path::Path;

use burn::tensor::Device;

use super::checkpoint::{AdapterMeta, BaseRef, sha256_file};
use crate::config::{AdapterKind, Config};
use crate::error::{Error, Result};
use crate::model::VisionTransformer;
use crate::model::io::{state_dict, write_safetensors};
use crate::model::lora::{self, LoraConfig};

/// The LoRA configuration the flags ask for (`None` without `--adapter`).
pub fn lora_config(cfg: &Config) -> Option<LoraConfig> {
    let adapter = match (cfg.peft.adapter, &cfg.peft.adapter_from) {
        (AdapterKind::None, Some(_)) => AdapterKind::Lora,
        (a, _) => a,
    };
    (adapter != AdapterKind::None).then(|| cfg.peft.lora())
}

/// Add the run's adapters to `model` (its base weights already loaded). Returns the model
/// with only adapters and `--train-modules` trainable, and what its checkpoints must record.
pub fn setup(
    model: VisionTransformer,
    cfg: &Config,
    run_dir: &Path,
    device: &Device,
) -> Result<(VisionTransformer, Option<AdapterMeta>)> {
    let Some(mut lcfg) = lora_config(cfg) else {
        return Ok((model, None));
    };
    if cfg.peft.freeze_backbone {
        return Err(Error::Config(
            "--freeze-backbone and --adapter contradict each other (an adapter run trains the adapters and --train-modules; use --adapter none --freeze-backbone for head-only)".into(),
        ));
    }
    if model.head_dist.is_some() && !lcfg.modules_to_save.iter().any(|m| m == "head_dist") {
        lcfg.modules_to_save.push("head_dist".into());
    }
    lcfg.validate()?;
    let base = write_base(&model, cfg, run_dir)?;
    let model = match &cfg.peft.adapter_from {
        None => lora::add_adapters(model, &lcfg, cfg.run.seed, device)?,
        Some(dir) => {
            let mut a = lora::read_peft(dir)?;
            if (a.config.rank, &a.config.targets) != (lcfg.rank, &lcfg.targets) {
                crate::log_line!(
                    "note: the adapter in {} has rank {} on {:?}: using it (ignoring --lora-rank/--lora-targets)",
                    dir.display(),
                    a.config.rank,
                    a.config.targets
                );
            }
            a.config.dropout = lcfg.dropout;
            lcfg = a.config.clone();
            lora::apply_adapter(model, &a, device)?
        }
    };
    Ok((model, Some(AdapterMeta { config: lcfg, base })))
}

/// Write the frozen base (`<run>/base_model/`) unless the same weights are already there
/// (a resumed or repeated run), and point at it.
fn write_base(model: &VisionTransformer, cfg: &Config, run_dir: &Path) -> Result<BaseRef> {
    let dir = run_dir.join("base_model");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "creating", e))?;
    let path = dir.join("model.safetensors");
    // One temporary file per process: the ranks of a data-parallel job all write the same base.
    let tmp = dir.join(format!("model.safetensors.part-{}", std::process::id()));
    write_safetensors(&tmp, &state_dict(model), None)?;
    let sha256 = sha256_file(&tmp)?;
    if path.is_file() && sha256_file(&path)? == sha256 {
        let _ = std::fs::remove_file(&tmp);
    } else {
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, "writing", e))?;
    }
    let config = serde_json::to_vec_pretty(&model.config).map_err(|e| Error::Io(e.to_string()))?;
    crate::util::write_file_synced(&dir.join("config.json"), &config)?;
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    Ok(BaseRef {
        path,
        sha256,
        source: cfg
            .model
            .pretrained
            .clone()
            .unwrap_or_else(|| "scratch".into()),
    })
}
