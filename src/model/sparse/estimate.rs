//! The per-block estimators: a rank-k stand-in ([`LowRank`]) for each frozen `qkv` part and
//! `fc1`, built once from their truncated SVDs, and the per-channel norms of their estimates
//! (the scores the channel selection ranks), formed on the host without materialising the
//! estimate.

use burn::tensor::{Device, Tensor, TensorData};
use burn_flex::ops::gelu_f32;
use rayon::prelude::*;

use super::SparseConfig;
use super::svd::{Svd, truncated_svd};
use crate::model::VisionTransformer;
use crate::simd::multiversion;

/// `x·a·b + bias`: a rank-k stand-in for a frozen `[in, out]` weight. `a` is on the plain
/// device (the `[tokens, in]·[in, k]` product is the one large matmul of an estimate); `b` and
/// the bias are on the host, where the per-channel norms are formed without ever
/// materialising the `[tokens, out]` estimate (see [`linear_norms`], [`gelu_norms`]).
pub struct LowRank {
    pub(super) a: Tensor<2>,
    /// `[k + 1, out]`: `b` with the bias (0 without one) as its last row.
    b_bias: Vec<f32>,
}

impl LowRank {
    /// The estimator of a weight `[m, n]` from its truncated SVD.
    fn from_svd(s: &Svd, m: usize, n: usize, bias: Option<Vec<f64>>, device: &Device) -> Self {
        let k = s.sigma.len();
        let a: Vec<f32> = s.u.iter().map(|&x| x as f32).collect();
        let bias = bias.unwrap_or_else(|| vec![0.0; n]);
        LowRank {
            a: Tensor::from_data(TensorData::new(a, [m, k]), device),
            b_bias: s.ut_w.iter().chain(&bias).map(|&x| x as f32).collect(),
        }
    }

    pub(super) fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    pub(super) fn out_dim(&self) -> usize {
        self.b_bias.len() / (self.rank() + 1)
    }

    /// The estimate `x·a·b + bias` as a tensor (the tests' reference for the norms).
    #[cfg(test)]
    fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        let (k, n) = (self.rank(), self.out_dim());
        let bb = Tensor::<2>::from_data(
            TensorData::new(self.b_bias.clone(), [k + 1, n]),
            &x.device(),
        );
        let b = bb.clone().narrow(0, 0, k);
        x.matmul(self.a.clone()).matmul(b) + bb.narrow(0, k, 1)
    }
}

/// `x·a` on the host (`[tokens, in]·[in, width]`).
pub(super) fn project(x: Tensor<2>, a: &Tensor<2>) -> Vec<f32> {
    x.matmul(a.clone())
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

/// Σ_t ‖u_t·b + bias‖² per output channel, for the part of `u` (`[tokens, width]`) in columns
/// `from..from + k`. Exact and cheap: with ũ_t = [u_t, 1] and the Gram matrix G = Σ_t ũ_tᵀũ_t
/// (`(k+1)²`), the norm of channel c is b̃_cᵀ·G·b̃_c — the `[tokens, out]` estimate is never
/// formed.
pub(super) fn linear_norms(u: &[f32], width: usize, from: usize, est: &LowRank) -> Vec<f64> {
    let (k, n) = (est.rank(), est.out_dim());
    let mut g = vec![0.0f64; (k + 1) * (k + 1)];
    // ũ_t, its last entry the constant 1: the loops below have no branch and vectorise.
    let mut ut = vec![1.0f64; k + 1];
    for row in u.chunks_exact(width) {
        for (d, &v) in ut.iter_mut().zip(&row[from..from + k]) {
            *d = v as f64;
        }
        for (g, &ui) in g.chunks_exact_mut(k + 1).zip(&ut) {
            for (gij, &uj) in g.iter_mut().zip(&ut) {
                *gij += ui * uj;
            }
        }
    }
    let bb = &est.b_bias;
    (0..n)
        .map(|c| {
            let mut s = 0.0;
            for i in 0..=k {
                let bi = bb[i * n + c] as f64;
                for j in 0..=k {
                    s += bi * g[i * (k + 1) + j] * bb[j * n + c] as f64;
                }
            }
            s
        })
        .collect()
}

/// Σ_t GELU(u_t·b + bias)² per output channel (`u`: `[tokens, k]`), on the cores: the MLP
/// score. The GELU here is the vendored flex kernel's element function
/// ([`burn_flex::ops::gelu_f32`], branch-free, so the loop vectorises; within an ulp of the
/// exact GELU, `device::tests`): this is the estimate's hottest loop (`tokens × mlp_dim`
/// activations per block) and only ranks channels.
pub(super) fn gelu_norms(u: &[f32], est: &LowRank) -> Vec<f64> {
    let (k, n) = (est.rank(), est.out_dim());
    let tokens = u.len() / k;
    let chunk_rows = tokens.div_ceil(4 * rayon::current_num_threads()).max(8);
    u.par_chunks(chunk_rows * k)
        .map(|rows| {
            let mut part = vec![0.0f32; n];
            add_gelu_squares(rows, &est.b_bias, &mut part);
            part.into_iter().map(f64::from).collect::<Vec<f64>>()
        })
        .reduce(
            || vec![0.0f64; n],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// Channels per block of [`add_gelu_squares`]: one AVX-512 register of f32.
const GELU_BLOCK: usize = 16;

multiversion! {
    /// `part[c] += Σ_t GELU(u_t·b + bias)_c²` over the rows `u_t` of `rows` (`[t, k]`),
    /// `b_bias` being `[k + 1, n]` (`b`, then the bias) and `part` `[n]`: the body of
    /// [`gelu_norms`], vectorised over the channels. One block of [`GELU_BLOCK`] channels
    /// at a time, over all rows: its slice of `b_bias`, the pre-activations and the sums stay
    /// in registers (one row's `n` pre-activations at a time would be stored and reloaded
    /// k + 2 times). Each value is summed in the same order either way.
    fn add_gelu_squares(rows: &[f32], b_bias: &[f32], part: &mut [f32]) {
        let n = part.len();
        let k = b_bias.len() / n - 1;
        for (blk, part) in part.chunks_mut(GELU_BLOCK).enumerate() {
            let (from, w) = (blk * GELU_BLOCK, part.len());
            // This block's columns of b and the bias, zero-padded to a full block.
            let mut bb = vec![[0.0f32; GELU_BLOCK]; k + 1];
            for (r, bb) in bb.iter_mut().enumerate() {
                bb[..w].copy_from_slice(&b_bias[r * n + from..r * n + from + w]);
            }
            let (b, bias) = bb.split_at(k);
            let mut acc = [0.0f32; GELU_BLOCK];
            for row in rows.chunks_exact(k) {
                let mut h = bias[0];
                for (&ur, br) in row.iter().zip(b) {
                    for i in 0..GELU_BLOCK {
                        h[i] += ur * br[i];
                    }
                }
                for i in 0..GELU_BLOCK {
                    let g = gelu_f32(h[i]);
                    acc[i] += g * g;
                }
            }
            for (p, a) in part.iter_mut().zip(acc) {
                *p += a;
            }
        }
    }
}

/// The estimators of one sparse block.
pub struct BlockEstimator {
    pub(super) q: LowRank,
    pub(super) k: LowRank,
    pub(super) v: LowRank,
    /// `[q.a, k.a, v.a]` side by side: one matmul projects the tokens for all three.
    pub(super) qkv_a: Tensor<2>,
    pub(super) fc1: LowRank,
}

fn host(t: Tensor<2>) -> (Vec<f64>, [usize; 2]) {
    let dims = t.dims();
    let v = t
        .inner()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap_or_default();
    (v, dims)
}

fn host1(t: Tensor<1>) -> Vec<f64> {
    t.inner()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap_or_default()
}

/// A block's index, its frozen `[qkv, fc1]` weights and their biases on the host.
type HostBlock = (usize, [Vec<f64>; 2], [Vec<f64>; 2]);

/// Columns `[from, from + len)` of a row-major `[m, n]` matrix.
fn columns(w: &[f64], [m, n]: [usize; 2], from: usize, len: usize) -> Vec<f64> {
    (0..m)
        .flat_map(|i| w[i * n + from..i * n + from + len].iter().copied())
        .collect()
}

/// The estimators of `model`'s blocks (`None` for the dense ones), on `device` (the plain,
/// non-autodiff device the estimates run on).
pub(super) fn block_estimators(
    model: &VisionTransformer,
    config: &SparseConfig,
    device: &Device,
) -> Vec<Option<BlockEstimator>> {
    let depth = model.blocks.len();
    let c = model.config.embed_dim;
    // The SVDs are independent: one per weight part, spread over the cores.
    let inputs: Vec<HostBlock> = model
        .blocks
        .iter()
        .enumerate()
        .filter(|(i, _)| config.is_sparse_block(*i, depth))
        .map(|(i, b)| {
            let (qkv, _) = host(b.attn.qkv.weight.val());
            let qkv_b = b.attn.qkv.bias.as_ref().map(|b| host1(b.val()));
            let (fc1, _) = host(b.mlp.fc1.weight.val());
            let fc1_b = b.mlp.fc1.bias.as_ref().map(|b| host1(b.val()));
            (
                i,
                [qkv, fc1],
                [qkv_b.unwrap_or_default(), fc1_b.unwrap_or_default()],
            )
        })
        .collect();
    let mlp_dim = model.config.mlp_dim;
    let k = config.rank;
    let svds: Vec<(usize, [Svd; 4])> = inputs
        .par_iter()
        .map(|(i, [qkv, fc1], _)| {
            let part =
                |p: usize| truncated_svd(&columns(qkv, [c, 3 * c], p * c, c), c, c, k, 0x5ba5);
            (
                *i,
                [
                    part(0),
                    part(1),
                    part(2),
                    truncated_svd(fc1, c, mlp_dim, k, 0x5ba5),
                ],
            )
        })
        .collect();
    let mut blocks: Vec<Option<BlockEstimator>> = (0..depth).map(|_| None).collect();
    for ((i, svd), (_, _, [qkv_b, fc1_b])) in svds.into_iter().zip(&inputs) {
        let bias = |v: &[f64], from: usize, len: usize| {
            (!v.is_empty()).then(|| v[from..from + len].to_vec())
        };
        let [q, kk, v, f] = svd;
        let lr = |s: Svd, n: usize, b| LowRank::from_svd(&s, c, n, b, device);
        let (q, k, v) = (
            lr(q, c, bias(qkv_b, 0, c)),
            lr(kk, c, bias(qkv_b, c, c)),
            lr(v, c, bias(qkv_b, 2 * c, c)),
        );
        blocks[i] = Some(BlockEstimator {
            qkv_a: Tensor::cat(vec![q.a.clone(), k.a.clone(), v.a.clone()], 1),
            q,
            k,
            v,
            fc1: lr(f, mlp_dim, bias(fc1_b, 0, mlp_dim)),
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu;

    use super::*;
    use crate::model::sparse::fixtures::column_norms;
    use crate::rng::Rng;

    fn assert_rel_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (c, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * scale,
                "{what}: channel {c}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn host_norms_equal_the_norms_of_the_materialised_estimate() {
        // A random estimator (rank 3, 40 outputs, with bias) and 50 tokens of width 12.
        let device = Device::flex();
        let mut rng = Rng::seed(5);
        let mut rand = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f64>>();
        let svd = Svd {
            u: rand(12 * 3),
            sigma: vec![1.0; 3],
            ut_w: rand(3 * 40),
        };
        let est = LowRank::from_svd(&svd, 12, 40, Some(rand(40)), &device);
        let x: Vec<f32> = rand(50 * 12).into_iter().map(|v| v as f32).collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [50, 12]), &device);
        let u = project(x.clone(), &est.a);
        let want = column_norms(est.apply(x.clone()));
        assert_rel_close(&linear_norms(&u, 3, 0, &est), &want, 1e-5, "linear");
        let want = column_norms(gelu(est.apply(x.clone())));
        assert_rel_close(&gelu_norms(&u, &est), &want, 1e-5, "gelu");
        // A column block of a wider projection (how q, k and v share one matmul).
        let wide = Tensor::cat(vec![est.a.clone(), est.a.clone().mul_scalar(2.0)], 1);
        let u = project(x.clone(), &wide);
        let want = column_norms(est.apply(x.mul_scalar(2.0)));
        assert_rel_close(&linear_norms(&u, 6, 3, &est), &want, 1e-5, "part");
    }
}
