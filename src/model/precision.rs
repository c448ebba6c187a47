//! `--precision f32|bf16|f16`: the dtype the matrix products of a training forward run in.
//!
//! The policy is PyTorch autocast's: the weights stay f32 (the master copy the optimizer
//! updates), and only the compute-bound ops — linear layers, attention, convolutions — cast
//! their inputs to half precision and their outputs back to f32. Normalisation, softmax,
//! GELU, the residual stream and the loss stay f32, where half precision loses accuracy for
//! little speed. The casts are differentiable, so gradients reach the f32 weights in f32.

use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    #[value(alias = "none")]
    F32,
    /// bfloat16 matmuls: f32's exponent range, so no loss scaling is needed.
    Bf16,
    /// float16 matmuls: small gradients underflow, so the loss is scaled (dynamic loss scaling).
    #[value(alias = "fp16")]
    F16,
}

impl Precision {
    /// The dtype compute-bound ops run in, `None` for f32.
    pub fn half(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// Whether gradients need loss scaling (only f16's exponent range is too narrow).
    pub fn scales_loss(self) -> bool {
        self == Precision::F16
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

/// Cast into the compute dtype (identity for f32).
pub fn down<const D: usize>(t: Tensor<D>, p: Precision) -> Tensor<D> {
    match p.half() {
        Some(dtype) => t.cast(dtype),
        None => t,
    }
}

/// Cast a compute-dtype result back to f32 (identity for f32).
pub fn up<const D: usize>(t: Tensor<D>, p: Precision) -> Tensor<D> {
    match p.half() {
        Some(_) => t.cast(FloatDType::F32),
        None => t,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use burn::tensor::{DType, Device, Tensor};

    use super::*;
    use crate::data::batch::HostBatch;
    use crate::model::layers::Ctx;
    use crate::model::{Model, VitConfig};
    use crate::train::optim::global_grad_norm;
    use crate::train::step::train_step;

    fn batch() -> HostBatch {
        let mut rng = crate::rng::Rng::seed(5);
        let n = 8;
        let labels: Vec<usize> = (0..n).map(|i| i % 4).collect();
        let mut targets = vec![0.0; n * 4];
        for (i, y) in labels.iter().enumerate() {
            targets[i * 4 + y] = 1.0;
        }
        HostBatch {
            images: (0..n * 3 * 16 * 16).map(|_| rng.normal() as f32).collect(),
            shape: [n, 3, 16, 16],
            targets,
            num_classes: 4,
            labels,
        }
    }

    fn model(device: &Device) -> Model {
        Model::new(
            &VitConfig::with_shape(16, 4, 3, 4, [32, 2, 2, 64]),
            1,
            device,
        )
        .unwrap()
    }

    fn host(t: Tensor<1>) -> Vec<f32> {
        assert_eq!(t.dtype(), DType::F32, "gradients reach the weights in f32");
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn grads(device: &Device, ctx: Ctx) -> BTreeMap<String, Vec<f32>> {
        let out = train_step(&model(device), &batch(), device, &ctx);
        out.grads.into_iter().map(|(k, g)| (k, host(g))).collect()
    }

    fn flat(g: &BTreeMap<String, Vec<f32>>) -> Vec<f64> {
        g.values().flatten().map(|&v| v as f64).collect()
    }

    fn cosine(a: &[f64], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    }

    /// Half-precision products change the logits by about their rounding error (f16: 11
    /// significant bits, bf16: 8) and leave the gradients pointing the same way.
    #[test]
    fn half_precision_tracks_f32_logits_and_gradients() {
        let device = Device::flex();
        let m = model(&device);
        let x: Tensor<4> = batch().images_tensor(&device);
        let logits = |p| {
            let y = m.forward(x.clone(), &Ctx::eval().with_precision(p, 1.0));
            assert_eq!(y.dtype(), DType::F32);
            y.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        };
        let exact = logits(Precision::F32);
        let ad = device.autodiff();
        let g32 = flat(&grads(&ad, Ctx::train(0, &[0])));
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (p, logit_tol, min_cos) in [
            (Precision::F16, 3e-3, 0.99995),
            (Precision::Bf16, 1.5e-2, 0.9995),
        ] {
            let err = logits(p)
                .iter()
                .zip(&exact)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err > 0.0 && err <= logit_tol * scale,
                "{p:?}: logits off by {err} (scale {scale})"
            );
            let g = flat(&grads(&ad, Ctx::train(0, &[0]).with_precision(p, 1.0)));
            assert!(g.iter().all(|v| v.is_finite()));
            let c = cosine(&g, &g32);
            assert!(c >= min_cos && c < 1.0, "{p:?}: gradient cosine {c}");
        }
    }

    /// Multiplying the loss by a power of two and dividing the gradients by it is exact in
    /// f32, so loss scaling alone changes nothing.
    #[test]
    fn loss_scaling_is_undone_exactly() {
        let ad = Device::flex().autodiff();
        let plain = grads(&ad, Ctx::train(0, &[0]));
        let scaled = grads(
            &ad,
            Ctx::train(0, &[0]).with_precision(Precision::F32, 1024.0),
        );
        assert_eq!(plain, scaled);
    }

    /// A scale too large for f16 overflows the half-precision gradients: the trainer sees a
    /// non-finite norm and skips the step.
    #[test]
    fn an_oversized_f16_loss_scale_overflows() {
        let ad = Device::flex().autodiff();
        let m = model(&ad);
        let b = batch();
        let norm = |scale| {
            let ctx = Ctx::train(0, &[0]).with_precision(Precision::F16, scale);
            global_grad_norm(&train_step(&m, &b, &ad, &ctx).grads)
        };
        assert!(norm(1024.0).is_finite());
        assert!(!norm(2f64.powi(40)).is_finite());
    }

    /// Burn's balanced checkpointing recomputes activations instead of storing them: the
    /// gradients must not change.
    #[test]
    fn gradient_checkpointing_gives_the_same_gradients() {
        let device = Device::flex();
        let plain = grads(
            &crate::device::autodiff(&device, false),
            Ctx::train(0, &[0]),
        );
        let ckpt = grads(&crate::device::autodiff(&device, true), Ctx::train(0, &[0]));
        assert_eq!(
            plain.keys().collect::<Vec<_>>(),
            ckpt.keys().collect::<Vec<_>>()
        );
        for (k, a) in &plain {
            let d = a
                .iter()
                .zip(&ckpt[k])
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(d <= 1e-6, "{k}: {d}");
        }
    }

    #[test]
    fn spellings_of_the_yardstick_parse() {
        use clap::ValueEnum;
        for (s, p) in [
            ("none", Precision::F32),
            ("fp16", Precision::F16),
            ("bf16", Precision::Bf16),
        ] {
            assert_eq!(Precision::from_str(s, false).unwrap(), p);
        }
    }
}
