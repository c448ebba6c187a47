//! AdamW over parameters addressed by path, with timm's no-decay rule and layer-wise LR decay.
//! Frozen parameters have no gradient and therefore never get optimizer state.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::model::io::HostTensor;
use crate::model::params::map_params;

#[derive(Clone, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Layer-wise LR decay factor (1.0 = off).
    pub layer_decay: f64,
    /// Number of transformer blocks, for the layer-wise decay.
    pub depth: usize,
}

/// timm's rule: no weight decay on biases, norm weights, 1-d parameters, position embeddings
/// and the class/distillation tokens.
pub fn no_weight_decay(path: &str, rank: usize) -> bool {
    rank <= 1
        || path.ends_with(".bias")
        || path.contains("norm")
        || matches!(path, "pos_embed" | "cls_token" | "dist_token")
}

/// Layer index for layer-wise LR decay: embeddings 0, block i → i + 1, everything after the
/// blocks (final norm, heads) depth + 1.
pub fn layer_id(path: &str, depth: usize) -> usize {
    if path.starts_with("patch_embed") || matches!(path, "pos_embed" | "cls_token" | "dist_token") {
        return 0;
    }
    if let Some(i) = path
        .strip_prefix("blocks.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|s| s.parse::<usize>().ok())
    {
        return i + 1;
    }
    depth + 1
}

#[derive(Clone, Debug)]
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// How one parameter is optimised, fixed when the optimizer is built.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub lr_scale: f64,
    pub weight_decay: bool,
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Number of optimizer steps taken (for bias correction).
    pub step: u64,
    pub groups: BTreeMap<String, Group>,
    state: BTreeMap<String, Moments>,
}

impl AdamW {
    /// `params`: (path, rank) of every parameter that may receive a gradient.
    pub fn new(config: AdamWConfig, params: &[(String, usize)]) -> Self {
        let groups = params
            .iter()
            .map(|(path, rank)| {
                let group = Group {
                    lr_scale: lr_scale(&config, path),
                    weight_decay: !no_weight_decay(path, *rank),
                };
                (path.clone(), group)
            })
            .collect();
        AdamW {
            config,
            step: 0,
            groups,
            state: BTreeMap::new(),
        }
    }

    /// One AdamW step. `grads` are flat and already averaged (and all-reduced); `grad_scale`
    /// multiplies them first (gradient clipping folds in here).
    pub fn step<M: Module>(
        &mut self,
        model: M,
        grads: &BTreeMap<String, Tensor<1>>,
        lr: f64,
        grad_scale: f64,
    ) -> M {
        self.step += 1;
        let t = self.step as i32;
        let c = self.config.clone();
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let groups = &self.groups;
        let state = &mut self.state;
        map_params(model, |path, p| {
            let g = grads.get(path)?.clone();
            let g = if grad_scale != 1.0 { g * grad_scale } else { g };
            let default_group = Group {
                lr_scale: 1.0,
                weight_decay: false,
            };
            let group = groups.get(path).unwrap_or(&default_group);
            let lr = lr * group.lr_scale;
            let moments = state.entry(path.to_string()).or_insert_with(|| Moments {
                m: p.zeros_like(),
                v: p.zeros_like(),
            });
            moments.m = moments.m.clone() * c.beta1 + g.clone() * (1.0 - c.beta1);
            moments.v = moments.v.clone() * c.beta2 + g.square() * (1.0 - c.beta2);
            let denom = (moments.v.clone() / bc2).sqrt() + c.eps;
            let update = moments.m.clone() / bc1 / denom;
            let decayed = if c.weight_decay > 0.0 && group.weight_decay {
                p * (1.0 - lr * c.weight_decay)
            } else {
                p
            };
            Some(decayed - update * lr)
        })
    }

    /// Moments as host tensors, keyed `<path>.exp_avg` / `<path>.exp_avg_sq` (PyTorch's names).
    pub fn state_dict(&self) -> BTreeMap<String, HostTensor> {
        let mut out = BTreeMap::new();
        for (k, m) in &self.state {
            let n = m.m.dims()[0];
            out.insert(
                format!("{k}.exp_avg"),
                HostTensor::from_tensor(m.m.clone(), &[n]),
            );
            out.insert(
                format!("{k}.exp_avg_sq"),
                HostTensor::from_tensor(m.v.clone(), &[n]),
            );
        }
        out
    }

    pub fn load_state_dict(
        &mut self,
        sd: &BTreeMap<String, HostTensor>,
        step: u64,
        device: &Device,
    ) -> Result<()> {
        self.state.clear();
        self.step = step;
        let to_tensor = |h: &HostTensor| {
            Tensor::<1>::from_data(TensorData::new(h.data.clone(), [h.data.len()]), device)
        };
        for (k, m) in sd {
            if let Some(path) = k.strip_suffix(".exp_avg") {
                let v = sd.get(&format!("{path}.exp_avg_sq")).ok_or_else(|| {
                    Error::Checkpoint(format!("optimizer state has {k} but no {path}.exp_avg_sq"))
                })?;
                self.state.insert(
                    path.to_string(),
                    Moments {
                        m: to_tensor(m),
                        v: to_tensor(v),
                    },
                );
            }
        }
        Ok(())
    }

    /// Bytes of optimizer state (two f32 moments per trainable element).
    pub fn state_bytes(&self) -> usize {
        self.state.values().map(|m| 2 * 4 * m.m.dims()[0]).sum()
    }
}

/// The LR multiplier of a parameter: `layer_decay^(depth + 1 − layer_id)`.
fn lr_scale(c: &AdamWConfig, path: &str) -> f64 {
    if c.layer_decay == 1.0 {
        return 1.0;
    }
    c.layer_decay
        .powi((c.depth + 1 - layer_id(path, c.depth).min(c.depth + 1)) as i32)
}

/// Global L2 norm of all gradients (one device→host transfer).
pub fn global_grad_norm(grads: &BTreeMap<String, Tensor<1>>) -> f64 {
    if grads.is_empty() {
        return 0.0;
    }
    let sums: Vec<Tensor<1>> = grads.values().map(|g| g.clone().square().sum()).collect();
    let total: f32 = Tensor::cat(sums, 0).sum().into_scalar();
    (total as f64).sqrt()
}

/// The run's AdamW over the trainable parameters of `model` (`depth` blocks, for the
/// layer-wise decay): the one place its settings are read.
pub fn adamw<M: Module>(cfg: &crate::config::OptimConfig, model: &M, depth: usize) -> AdamW {
    let trainable: Vec<(String, usize)> = crate::model::params::named_params(model)
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| (p.path, p.shape.len()))
        .collect();
    AdamW::new(
        AdamWConfig {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            layer_decay: cfg.layer_decay,
            depth,
        },
        &trainable,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_decay_groups() {
        for p in [
            "pos_embed",
            "cls_token",
            "dist_token",
            "blocks.0.norm1.weight",
            "blocks.3.attn.qkv.bias",
            "norm.weight",
            "head.bias",
        ] {
            assert!(
                no_weight_decay(
                    p,
                    if p.contains("token") || p == "pos_embed" {
                        3
                    } else {
                        1
                    }
                ),
                "{p}"
            );
        }
        for p in [
            "blocks.0.attn.qkv.weight",
            "blocks.1.mlp.fc1.weight",
            "head.weight",
        ] {
            assert!(!no_weight_decay(p, 2), "{p}");
        }
        assert!(!no_weight_decay("patch_embed.proj.weight", 4));
    }

    #[test]
    fn layer_decay_scales() {
        let c = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            layer_decay: 0.5,
            depth: 2,
        };
        assert_eq!(lr_scale(&c, "head.weight"), 1.0);
        assert_eq!(lr_scale(&c, "norm.bias"), 1.0);
        assert_eq!(lr_scale(&c, "blocks.1.mlp.fc1.weight"), 0.5); // decay^(depth-i), i = 1
        assert_eq!(lr_scale(&c, "blocks.0.attn.qkv.weight"), 0.25);
        assert_eq!(lr_scale(&c, "pos_embed"), 0.125); // decay^(depth+1)
        assert_eq!(lr_scale(&c, "patch_embed.proj.weight"), 0.125);
    }
}
