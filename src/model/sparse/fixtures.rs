//! Fixtures shared by the SparseLoRA tests: a tiny ViT with random adapters, a config,
//! matrices of known singular values, and the sliced ops' random inputs, channel masks and
//! comparison against the masked dense reference.

use burn::tensor::{DType, Device, Gradients, Tensor, TensorData};

use super::SparseConfig;
use super::sliced_linear::Slicing;
use super::svd::orthonormalize;
use crate::model::lora::{LoraConfig, add_adapters};
use crate::model::params::map_params;
use crate::model::{VisionTransformer, VitConfig};
use crate::rng::Rng;

pub(super) fn orthonormal(rows: usize, cols: usize, rng: &mut Rng) -> Vec<f64> {
    let mut a: Vec<f64> = (0..rows * cols).map(|_| rng.normal()).collect();
    orthonormalize(&mut a, rows, cols);
    a
}

/// W = U·diag(s)·Vᵀ, `[m, n]` row-major.
pub(super) fn compose(u: &[f64], s: &[f64], v: &[f64], m: usize, n: usize) -> Vec<f64> {
    let r = s.len();
    let mut w = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            w[i * n + j] = (0..r).map(|t| u[i * r + t] * s[t] * v[j * r + t]).sum();
        }
    }
    w
}

pub(super) const PREFIX: usize = 1;

/// A tiny f64 ViT with adapters on `targets` whose B factors are random (so the adapters
/// contribute), plus a batch of tokens for its blocks.
pub(super) fn setup_model(targets: &[&str]) -> (VisionTransformer, Tensor<3>, Device) {
    setup_model_as(targets, DType::F64)
}

/// [`setup_model`] in `dtype`: in f32 the sparse layers run the fused `sliced` ops, in f64
/// their op-by-op form.
pub(super) fn setup_model_as(
    targets: &[&str],
    dtype: DType,
) -> (VisionTransformer, Tensor<3>, Device) {
    let device = Device::flex().autodiff();
    let cfg = VitConfig::with_shape(8, 4, 3, 3, [8, 4, 2, 16]);
    let m = VisionTransformer::new(&cfg, 1, &device).unwrap();
    let lcfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        modules_to_save: vec!["head".into()],
        use_rslora: false,
    };
    let m = add_adapters(m, &lcfg, 3, &device).unwrap();
    let mut rng = Rng::seed(7);
    let m = map_params(m, |p, v| {
        let n = v.dims()[0];
        let vals: Vec<f64> = if p.contains("lora_B") || p.ends_with("bias") {
            (0..n).map(|_| 0.3 * rng.normal()).collect()
        } else {
            v.into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap()
        };
        Some(Tensor::from_data(
            TensorData::new(vals, [n]),
            (&Device::flex(), dtype),
        ))
    });
    let xs: Vec<f64> = (0..2 * 5 * 8).map(|_| rng.normal()).collect();
    let x = Tensor::<3>::from_data(TensorData::new(xs, [2, 5, 8]), (&device, dtype));
    (m, x, device)
}

pub(super) fn sparse_cfg(s: f64, first: usize, last: usize) -> SparseConfig {
    SparseConfig {
        mlp: s,
        attn: s,
        rank: 2,
        dense_first: first,
        dense_last: last,
        dense_steps: 0.0,
    }
}

/// Squared L2 norm of every column of `[tokens, ch]`.
pub(super) fn column_norms(x: Tensor<2>) -> Vec<f64> {
    x.square()
        .sum_dim(0)
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

// The sliced ops' tests: 2-D f32 on autodiff-over-flex.

pub(super) fn random<const D: usize>(
    shape: [usize; D],
    rng: &mut Rng,
    device: &Device,
) -> Tensor<D> {
    let v: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.normal() as f32)
        .collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// `[r, width]`: 1 on the prefix rows and on the kept columns, 0 elsewhere.
pub(super) fn mask(s: &Slicing, r: usize, width: usize, device: &Device) -> Tensor<2> {
    let v: Vec<f32> = (0..r * width)
        .map(|i| {
            let (row, c) = (i / width, i % width);
            (row % s.seq < s.prefix || s.kept.contains(&c)) as u8 as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [r, width]), device)
}

pub(super) fn slicing(width: usize, keep_every: usize, prefix: usize, seq: usize) -> Slicing {
    let (kept, skipped): (Vec<usize>, Vec<usize>) = (0..width).partition(|c| c % keep_every != 1);
    Slicing {
        kept: kept.into(),
        skipped: skipped.into(),
        prefix,
        seq,
    }
}

pub(super) fn max_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
    let scale: f32 = b.clone().abs().max().into_scalar::<f32>().max(1.0);
    (a - b).abs().max().into_scalar::<f32>() / scale
}

/// Asserts that `fused` equals `reference` (≤ 1e-5 relative to the largest value, or
/// absolute below 1), and so does x's gradient of Σ dy ⊙ output; both gradient sets.
pub(super) fn compare(
    fused: Tensor<2>,
    reference: Tensor<2>,
    x: &Tensor<2>,
    dy: &Tensor<2>,
    what: &str,
) -> [Gradients; 2] {
    let gf = (fused.clone() * dy.clone()).sum().backward();
    let gr = (reference.clone() * dy.clone()).sum().backward();
    assert!(max_diff(fused, reference) < 1e-5, "{what}");
    let (dx_f, dx_r) = (x.grad(&gf).unwrap(), x.grad(&gr).unwrap());
    assert!(max_diff(dx_f, dx_r) < 1e-5, "{what}: dx");
    [gf, gr]
}
