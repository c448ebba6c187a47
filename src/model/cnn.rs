//! Convolutional teachers: BatchNorm with running statistics, the CNN configurations
//! (ResNet-18/34/50, `cnn-fast`) and the small fast CNN itself. The ResNet is in `resnet.rs`.
//!
//! Running statistics are stored as frozen parameters (`bn1.running_mean`, ...): checkpoints,
//! EMA and weight loading then carry them with no extra plumbing, under timm's names. A
//! training forward never mutates the model: BatchNorm records its batch statistics in the
//! [`Ctx`], and the caller folds them into the running statistics after the step
//! ([`running_stats_update`]), so the training step stays a pure function.

use std::collections::BTreeMap;

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::relu;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::layers::{Conv2d, Ctx, Init, Linear};
use super::params::named_params;
use crate::error::{Error, Result};

/// The CNN a model config describes instead of a ViT (`VitConfig::cnn`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "kebab-case")]
pub enum CnnConfig {
    /// timm's `ResNet`: BasicBlock (18, 34) or Bottleneck (50) stages.
    Resnet {
        bottleneck: bool,
        /// Blocks per stage.
        layers: Vec<usize>,
        /// Stage widths (a Bottleneck stage outputs 4× its width).
        widths: Vec<usize>,
        stem_width: usize,
        /// timm's ImageNet stem (7×7 stride-2 convolution + 3×3 stride-2 max-pool) rather than
        /// the CIFAR stem (one 3×3 stride-1 convolution, no max-pool).
        imagenet_stem: bool,
    },
    /// conv–BN–ReLU stages, each halving the resolution (`--cnn-widths`).
    CnnFast { widths: Vec<usize> },
}

/// The CNN model names `--model` accepts.
pub const CNN_MODELS: &[&str] = &["resnet18", "resnet34", "resnet50", "cnn-fast"];

impl CnnConfig {
    /// The CNN called `name` (CIFAR form), or `None` when it names no CNN.
    pub fn preset(name: &str, cnn_widths: &[usize]) -> Option<CnnConfig> {
        let resnet = |bottleneck, layers: [usize; 4]| CnnConfig::Resnet {
            bottleneck,
            layers: layers.to_vec(),
            widths: vec![64, 128, 256, 512],
            stem_width: 64,
            imagenet_stem: false,
        };
        Some(match name {
            "resnet18" => resnet(false, [2, 2, 2, 2]),
            "resnet34" => resnet(false, [3, 4, 6, 3]),
            "resnet50" => resnet(true, [3, 4, 6, 3]),
            "cnn-fast" => CnnConfig::CnnFast {
                widths: cnn_widths.to_vec(),
            },
            _ => return None,
        })
    }

    pub fn validate(&self) -> Result<()> {
        let ok = match self {
            CnnConfig::Resnet {
                layers,
                widths,
                stem_width,
                ..
            } => {
                layers.len() == 4
                    && widths.len() == 4
                    && layers.iter().all(|&n| n > 0)
                    && widths.iter().all(|&w| w > 0)
                    && *stem_width > 0
            }
            CnnConfig::CnnFast { widths } => !widths.is_empty() && widths.iter().all(|&w| w > 0),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "impossible CNN shape {self:?}: a ResNet has 4 stages of ≥ 1 block, cnn-fast needs --cnn-widths like 64,128,256 (all > 0)"
            )))
        }
    }
}

/// Batch statistics one BatchNorm saw in a training forward.
#[derive(Clone, Debug)]
pub struct BnStats {
    /// The layer's `running_mean` parameter.
    pub id: ParamId,
    pub mean: Tensor<1>,
    /// Unbiased (n − 1), as PyTorch folds into `running_var`.
    pub var: Tensor<1>,
    pub momentum: f64,
}

/// PyTorch's `BatchNorm2d`: batch statistics in training, running statistics in evaluation.
#[derive(Module, Debug)]
pub struct BatchNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: Param<Tensor<1>>,
    pub running_var: Param<Tensor<1>>,
    pub eps: f64,
    pub momentum: f64,
}

impl BatchNorm {
    pub fn new(c: usize, device: &Device) -> Self {
        let frozen = |t: Tensor<1>| Param::from_tensor(t).set_require_grad(false);
        BatchNorm {
            weight: Param::from_tensor(Init::ones([c], device)),
            bias: Param::from_tensor(Init::zeros([c], device)),
            running_mean: frozen(Init::zeros([c], device)),
            running_var: frozen(Init::ones([c], device)),
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    pub fn forward(&self, x: Tensor<4>, ctx: &Ctx) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let per_channel = |t: Tensor<4>| t.mean_dim(0).mean_dim(2).mean_dim(3);
        let (mean, var) = if ctx.train {
            let mean = per_channel(x.clone());
            let centered = x.clone() - mean.clone();
            let var = per_channel(centered.clone() * centered);
            let n = (b * h * w) as f64;
            ctx.bn_stats.borrow_mut().push(BnStats {
                id: self.running_mean.id,
                mean: mean.clone().inner().reshape([c]),
                var: var.clone().inner().reshape([c]) * (n / (n - 1.0).max(1.0)),
                momentum: self.momentum,
            });
            (mean, var)
        } else {
            (
                self.running_mean.val().reshape([1, c, 1, 1]),
                self.running_var.val().reshape([1, c, 1, 1]),
            )
        };
        let scale = (var + self.eps).sqrt().recip() * self.weight.val().reshape([1, c, 1, 1]);
        (x - mean) * scale + self.bias.val().reshape([1, c, 1, 1])
    }
}

/// The running statistics after the training forward that filled `ctx`, by parameter path:
/// `running ← (1 − momentum) · running + momentum · batch`, as PyTorch.
pub fn running_stats_update<M: Module>(model: &M, ctx: &Ctx) -> BTreeMap<String, Tensor<1>> {
    let stats = ctx.bn_stats.borrow();
    if stats.is_empty() {
        return BTreeMap::new();
    }
    let params: BTreeMap<String, Tensor<1>> = named_params(model)
        .into_iter()
        .map(|p| (p.path, p.value))
        .collect();
    let paths: BTreeMap<ParamId, String> = named_params(model)
        .into_iter()
        .filter(|p| p.path.ends_with(".running_mean"))
        .map(|p| (p.id, p.path))
        .collect();
    let mut out = BTreeMap::new();
    for s in stats.iter() {
        let Some(mean_path) = paths.get(&s.id) else {
            continue;
        };
        let var_path = mean_path.replace(".running_mean", ".running_var");
        let m = s.momentum;
        for (path, batch) in [(mean_path.clone(), &s.mean), (var_path, &s.var)] {
            if let Some(old) = params.get(&path) {
                out.insert(path, old.clone() * (1.0 - m) + batch.clone() * m);
            }
        }
    }
    out
}

/// A bias-free convolution with Kaiming-uniform init over fan-out (timm's ResNet init, with
/// the uniform distribution of the same variance as its normal).
pub fn conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    init: &mut Init,
    device: &Device,
) -> Conv2d {
    let fan_out = (c_out * k * k) as f64;
    let bound = (2.0 / fan_out).sqrt() * 3f64.sqrt();
    Conv2d {
        weight: Param::from_tensor(init.uniform([c_out, c_in, k, k], bound, device)),
        bias: None,
        stride,
        padding: k / 2,
    }
}

/// Global average pool `[b, c, h, w]` → `[b, c]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [b, c, _, _] = x.dims();
    x.mean_dim(2).mean_dim(3).reshape([b, c])
}

pub fn max_pool(x: Tensor<4>, k: usize, stride: usize, padding: usize) -> Tensor<4> {
    burn::tensor::module::max_pool2d(
        x,
        MaxPoolOptions::new([k, k])
            .with_stride([stride, stride])
            .with_padding([padding, padding]),
    )
}

/// One `cnn-fast` stage: conv → 2×2 max-pool → BN → ReLU → conv → BN → ReLU (airbench's
/// ConvGroup, ReLU for GELU).
#[derive(Module, Debug)]
pub struct FastStage {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
}

#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// A fast small CNN for quick teachers, in the spirit of ResNet-9 / airbench: a 3×3 stem,
/// then one [`FastStage`] per width, each halving the resolution, global average pool, linear
/// head.
#[derive(Module, Debug)]
pub struct CnnFast {
    pub stem: ConvBn,
    pub stages: Vec<FastStage>,
    pub head: Linear,
}

impl CnnFast {
    pub fn new(
        in_chans: usize,
        widths: &[usize],
        num_classes: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        let mut init = Init::new(seed);
        let w0 = widths[0];
        let stem = ConvBn {
            conv: conv(in_chans, w0, 3, 1, &mut init, device),
            bn: BatchNorm::new(w0, device),
        };
        let mut prev = w0;
        let stages = widths
            .iter()
            .map(|&w| {
                let s = FastStage {
                    conv1: conv(prev, w, 3, 1, &mut init, device),
                    bn1: BatchNorm::new(w, device),
                    conv2: conv(w, w, 3, 1, &mut init, device),
                    bn2: BatchNorm::new(w, device),
                };
                prev = w;
                s
            })
            .collect();
        CnnFast {
            stem,
            stages,
            head: Linear::new(prev, num_classes, true, &mut init, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>, ctx: &Ctx) -> Tensor<2> {
        let mut x = relu(self.stem.bn.forward(self.stem.conv.forward(x, ctx), ctx));
        for s in &self.stages {
            let y = self.pool_if_possible(s.conv1.forward(x, ctx));
            let y = relu(s.bn1.forward(y, ctx));
            x = relu(s.bn2.forward(s.conv2.forward(y, ctx), ctx));
        }
        self.head.forward_ctx(global_avg_pool(x), ctx)
    }

    /// Halve the resolution while there is one to halve (28 → 14 → 7 → 3 → 1).
    fn pool_if_possible(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        if h >= 2 && w >= 2 {
            max_pool(x, 2, 2, 0)
        } else {
            x
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::{count_params, map_params};
    use burn::tensor::TensorData;

    fn host(t: Tensor<4>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// Train mode normalises with the batch's statistics and records them (unbiased variance
    /// for the running update); eval mode uses the running statistics; the update follows
    /// PyTorch's momentum rule. Values computed by hand.
    #[test]
    fn batchnorm_train_and_eval_behaviour() {
        let device = Device::flex();
        #[derive(Module, Debug)]
        struct Net {
            bn: BatchNorm,
        }
        let net = Net {
            bn: BatchNorm::new(2, &device),
        };
        // Channel 0: 1, 2, 3, 4 (two images, 1×2 each); channel 1: 10, 10, 10, 10.
        let x = Tensor::<4>::from_data(
            TensorData::new(
                vec![1.0f32, 2.0, 10.0, 10.0, 3.0, 4.0, 10.0, 10.0],
                [2, 2, 1, 2],
            ),
            &device,
        );
        let ctx = Ctx::train(0, &[0]);
        let y = host(net.bn.forward(x.clone(), &ctx));
        // mean 2.5, biased var 1.25: (v − 2.5)/sqrt(1.25 + 1e-5).
        let s = (1.25f64 + 1e-5).sqrt();
        for (got, v) in [(y[0], 1.0), (y[1], 2.0), (y[4], 3.0), (y[5], 4.0)] {
            assert!((got as f64 - (v - 2.5) / s).abs() < 1e-5, "{got}");
        }
        assert!(y[2].abs() < 1e-6 && y[7].abs() < 1e-6); // constant channel → 0
        let up = running_stats_update(&net, &ctx);
        let v = |k: &str| {
            up[k]
                .clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        };
        // running_mean: 0.9·0 + 0.1·(2.5, 10); running_var: 0.9·1 + 0.1·(unbiased 5/3, 0).
        let rm = v("bn.running_mean");
        let rv = v("bn.running_var");
        assert!((rm[0] - 0.25).abs() < 1e-6 && (rm[1] - 1.0).abs() < 1e-6);
        assert!((rv[0] as f64 - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6);
        assert!((rv[1] - 0.9).abs() < 1e-6);
        // Eval uses the (updated) running statistics.
        let net = map_params(net, |p, _| up.get(p).cloned());
        let y = host(net.bn.forward(x, &Ctx::eval()));
        let expect = (1.0 - 0.25) / (rv[0] as f64 + 1e-5).sqrt();
        assert!((y[0] as f64 - expect).abs() < 1e-5, "{} vs {expect}", y[0]);
        // The buffers are not counted as parameters.
        assert_eq!(count_params(&net).0, 4);
    }

    #[test]
    fn cnn_fast_runs_on_fashion_mnist_sizes() {
        let device = Device::flex();
        let m = CnnFast::new(1, &[8, 16, 32], 10, 0, &device);
        let y = m.forward(Tensor::zeros([2, 1, 28, 28], &device), &Ctx::eval());
        assert_eq!(y.dims(), [2, 10]);
        // stem 1·8·9 + BN 16; stages (8·8·9 + 8·8·9 + 32), (8·16·9 + 16·16·9 + 64),
        // (16·32·9 + 32·32·9 + 128); head 32·10 + 10.
        let expect = 72 + 16 + (576 + 576 + 32) + (1152 + 2304 + 64) + (4608 + 9216 + 128) + 330;
        assert_eq!(count_params(&m).0, expect);
    }
}
