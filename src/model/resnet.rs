//! timm's `ResNet` with timm's parameter names (`conv1`, `bn1`, `layerN.M.conv1`,
//! `layerN.M.downsample.0`/`.1`, `fc`): BasicBlock (ResNet-18/34) and Bottleneck (ResNet-50),
//! with the CIFAR stem (3×3 stride 1, no max-pool) or timm's ImageNet stem (7×7 stride 2 +
//! 3×3 stride-2 max-pool). Loading timm weights reads the architecture from their shapes.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::cnn::{BatchNorm, CnnConfig, conv, global_avg_pool, max_pool};
use super::io::HostTensor;
use super::layers::{Conv2d, Ctx, Init, Linear};
use crate::error::{Error, Result};

/// One layer of a `downsample` shortcut: `downsample.0` is a 1×1 convolution,
/// `downsample.1` its BatchNorm (the enum adds no path segment).
#[derive(Module, Debug)]
pub enum DownsampleLayer {
    Conv(Conv2d),
    Bn(BatchNorm),
}

/// A BasicBlock (conv1 3×3, conv2 3×3) or, with `conv3`, a Bottleneck (1×1, 3×3, 1×1).
#[derive(Module, Debug)]
pub struct ResBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub conv3: Option<Conv2d>,
    pub bn3: Option<BatchNorm>,
    /// Empty when the shortcut is the identity.
    pub downsample: Vec<DownsampleLayer>,
}

impl ResBlock {
    fn new(
        c_in: usize,
        width: usize,
        stride: usize,
        bottleneck: bool,
        init: &mut Init,
        device: &Device,
    ) -> Self {
        let c_out = if bottleneck { 4 * width } else { width };
        let downsample = if stride != 1 || c_in != c_out {
            vec![
                DownsampleLayer::Conv(conv(c_in, c_out, 1, stride, init, device)),
                DownsampleLayer::Bn(BatchNorm::new(c_out, device)),
            ]
        } else {
            Vec::new()
        };
        // timm's zero_init_last: the last BN of each residual branch starts at zero gamma,
        // so every block starts as the identity.
        let last_bn = |c| {
            let mut bn = BatchNorm::new(c, device);
            bn.weight = burn::module::Param::from_tensor(Init::zeros([c], device));
            bn
        };
        if bottleneck {
            ResBlock {
                conv1: conv(c_in, width, 1, 1, init, device),
                bn1: BatchNorm::new(width, device),
                conv2: conv(width, width, 3, stride, init, device),
                bn2: BatchNorm::new(width, device),
                conv3: Some(conv(width, c_out, 1, 1, init, device)),
                bn3: Some(last_bn(c_out)),
                downsample,
            }
        } else {
            ResBlock {
                conv1: conv(c_in, width, 3, stride, init, device),
                bn1: BatchNorm::new(width, device),
                conv2: conv(width, width, 3, 1, init, device),
                bn2: last_bn(width),
                conv3: None,
                bn3: None,
                downsample,
            }
        }
    }

    fn forward(&self, x: Tensor<4>, ctx: &Ctx) -> Tensor<4> {
        let mut shortcut = x.clone();
        for l in &self.downsample {
            shortcut = match l {
                DownsampleLayer::Conv(c) => c.forward(shortcut, ctx),
                DownsampleLayer::Bn(b) => b.forward(shortcut, ctx),
            };
        }
        let y = relu(self.bn1.forward(self.conv1.forward(x, ctx), ctx));
        let y = self.bn2.forward(self.conv2.forward(y, ctx), ctx);
        let y = match (&self.conv3, &self.bn3) {
            (Some(c3), Some(b3)) => b3.forward(c3.forward(relu(y), ctx), ctx),
            _ => y,
        };
        relu(y + shortcut)
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub layer1: Vec<ResBlock>,
    pub layer2: Vec<ResBlock>,
    pub layer3: Vec<ResBlock>,
    pub layer4: Vec<ResBlock>,
    pub fc: Linear,
    pub max_pool: bool,
}

impl ResNet {
    pub fn new(
        cfg: &CnnConfig,
        in_chans: usize,
        num_classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let CnnConfig::Resnet {
            bottleneck,
            layers,
            widths,
            stem_width,
            imagenet_stem,
        } = cfg
        else {
            return Err(Error::Config(format!("not a ResNet config: {cfg:?}")));
        };
        cfg.validate()?;
        let mut init = Init::new(seed);
        let (k, s) = if *imagenet_stem { (7, 2) } else { (3, 1) };
        let conv1 = conv(in_chans, *stem_width, k, s, &mut init, device);
        let mut c_in = *stem_width;
        let mut stages: Vec<Vec<ResBlock>> = Vec::new();
        for (i, (&n, &w)) in layers.iter().zip(widths).enumerate() {
            let stage = (0..n)
                .map(|j| {
                    let stride = if i > 0 && j == 0 { 2 } else { 1 };
                    let b = ResBlock::new(c_in, w, stride, *bottleneck, &mut init, device);
                    c_in = if *bottleneck { 4 * w } else { w };
                    b
                })
                .collect();
            stages.push(stage);
        }
        let mut stages = stages.into_iter();
        let mut next = || stages.next().unwrap_or_default();
        Ok(ResNet {
            conv1,
            bn1: BatchNorm::new(*stem_width, device),
            layer1: next(),
            layer2: next(),
            layer3: next(),
            layer4: next(),
            fc: Linear::new(c_in, num_classes, true, &mut init, device),
            max_pool: *imagenet_stem,
        })
    }

    pub fn forward(&self, x: Tensor<4>, ctx: &Ctx) -> Tensor<2> {
        let mut x = relu(self.bn1.forward(self.conv1.forward(x, ctx), ctx));
        if self.max_pool {
            x = max_pool(x, 3, 2, 1);
        }
        for stage in [&self.layer1, &self.layer2, &self.layer3, &self.layer4] {
            for block in stage {
                x = block.forward(x, ctx);
            }
        }
        self.fc.forward_ctx(global_avg_pool(x), ctx)
    }
}

/// Whether a state dict holds a timm ResNet.
pub fn is_timm_resnet(sd: &BTreeMap<String, HostTensor>) -> bool {
    sd.contains_key("layer1.0.conv1.weight")
        && (sd.contains_key("conv1.weight") || sd.contains_key("conv1.0.weight"))
}

/// The architecture of timm ResNet weights, from their shapes: block type, blocks per stage,
/// widths, stem, input channels and classes (`None` without `fc`).
pub fn infer_config(
    sd: &BTreeMap<String, HostTensor>,
    path: &Path,
) -> Result<(CnnConfig, usize, Option<usize>)> {
    let bad = |m: String| Error::Checkpoint(format!("{}: {m}", path.display()));
    let stem = sd.get("conv1.weight").ok_or_else(|| {
        bad("a deep-stem ResNet (conv1.0, timm's resnet*d/s variants) is not supported; use a plain timm resnet".into())
    })?;
    if stem.shape.len() != 4 {
        return Err(bad(format!("conv1.weight has shape {:?}", stem.shape)));
    }
    let (stem_width, in_chans, k) = (stem.shape[0], stem.shape[1], stem.shape[2]);
    let imagenet_stem = match k {
        7 => true,
        3 => false,
        _ => {
            return Err(bad(format!(
                "a {k}×{k} stem convolution is neither timm's 7×7 nor the CIFAR 3×3"
            )));
        }
    };
    // Rank 0 would have no first dimension; a file can say anything.
    let rows = |k: &str| {
        sd[k]
            .shape
            .first()
            .copied()
            .ok_or_else(|| bad(format!("{k} is a scalar")))
    };
    let bottleneck = sd.contains_key("layer1.0.conv3.weight");
    let mut layers = Vec::new();
    let mut widths = Vec::new();
    for s in 1..=4 {
        let n = (0..)
            .take_while(|j| sd.contains_key(&format!("layer{s}.{j}.conv1.weight")))
            .count();
        if n == 0 {
            return Err(bad(format!("no layer{s}: not a 4-stage ResNet")));
        }
        layers.push(n);
        let first = format!("layer{s}.0.conv1.weight");
        widths.push(rows(&first)?);
    }
    let num_classes = sd
        .contains_key("fc.weight")
        .then(|| rows("fc.weight"))
        .transpose()?;
    Ok((
        CnnConfig::Resnet {
            bottleneck,
            layers,
            widths,
            stem_width,
            imagenet_stem,
        },
        in_chans,
        num_classes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::{count_params, named_params};

    fn cifar(name: &str, classes: usize) -> ResNet {
        let c = CnnConfig::preset(name, &[]).unwrap();
        ResNet::new(&c, 3, classes, 0, &Device::flex()).unwrap()
    }

    #[test]
    fn cifar_resnets_have_the_published_parameter_counts() {
        // CIFAR ResNet-18 with 10 classes (kuangliu/pytorch-cifar's count): 11,173,962.
        assert_eq!(count_params(&cifar("resnet18", 10)).0, 11_173_962);
        // timm's resnet34 / resnet50 have 21,797,672 / 25,557,032 parameters at 1000
        // classes; the CIFAR stem is a 3×3 instead of a 7×7 convolution from 3 channels to
        // 64: 64·3·(49 − 9) = 7,680 fewer.
        assert_eq!(count_params(&cifar("resnet34", 1000)).0, 21_797_672 - 7_680);
        assert_eq!(count_params(&cifar("resnet50", 1000)).0, 25_557_032 - 7_680);
    }

    #[test]
    fn names_are_timms_and_shapes_flow() {
        let device = Device::flex();
        let c = CnnConfig::Resnet {
            bottleneck: true,
            layers: vec![1, 2, 1, 1],
            widths: vec![4, 8, 8, 8],
            stem_width: 4,
            imagenet_stem: false,
        };
        let m = ResNet::new(&c, 3, 5, 0, &device).unwrap();
        let names: Vec<String> = named_params(&m).into_iter().map(|p| p.path).collect();
        for n in [
            "conv1.weight",
            "bn1.running_var",
            "layer1.0.conv3.weight",
            "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.running_mean",
            "layer2.1.bn2.bias",
            "fc.weight",
        ] {
            assert!(names.contains(&n.to_string()), "{n} not in {names:?}");
        }
        assert!(!names.contains(&"layer2.1.downsample.0.weight".to_string()));
        let y = m.forward(Tensor::zeros([2, 3, 16, 16], &device), &Ctx::eval());
        assert_eq!(y.dims(), [2, 5]);
    }
}
