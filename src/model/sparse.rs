//! SparseLoRA (Khaki et al., ICML 2025): LoRA plus contextual sparsity on the frozen base.
//!
//! Once, at the start of a run, every sparse block's frozen `qkv` (its q, k and v parts) and
//! `fc1` get a rank-k truncated SVD: a cheap estimator of their outputs. Per batch the
//! estimator predicts the activations of the patch tokens, and one channel set per layer is
//! kept for the whole batch: the fc1 output channels with the largest ‖GELU(x·Ûk·V̂k + b)‖
//! over all tokens (and the matching fc2 input rows), the q/k channels with the largest
//! ‖q̂_c‖·‖k̂_c‖ and the v channels with the largest ‖v̂_c‖ (and the matching proj input
//! rows). Attention keeps the same count in every head, so no head is ever dropped whole.
//!
//! The kept columns/rows of the frozen weights are *sliced out* (`select`) and multiplied as
//! smaller dense matrices, forward and backward; nothing is masked. The LoRA branches stay
//! dense, so the trainable parameters are LoRA's. Dense: the blocks `--sparse-layers` names,
//! the first `--sparse-dense-steps`, the class (prefix) tokens' rows, and evaluation.
//!
//! What a sparse layer computes is exactly the dense layer with, for the patch tokens' rows,
//! the frozen weight's skipped output columns (and their bias entries) or input rows zeroed
//! (the tests check this against the masked dense computation). Keeping every channel, a
//! layer takes the dense path itself, so sparsity 0 is LoRA bit for bit.
//!
//! The kept q/k/v columns are added into the (dense) LoRA branch's full `[b, n, 3c]` output
//! before attention: that branch and the class token's row fill every channel, so the
//! attention products stay dense (≈ 15% of a dense ViT-S block's time at n = 197).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use burn::tensor::activation::gelu;
use burn::tensor::module::linear;
use burn::tensor::{DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};
use burn_flex::ops::gelu_f32;
use rayon::prelude::*;

use super::VisionTransformer;
use super::layers::{Attention, Block, Ctx, Linear, Mlp, drop_path, dropout};
use super::sliced::{self, Slicing};
use crate::error::Result;
use crate::rng::Rng;
use crate::simd::multiversion;

/// What `--adapter sparselora` asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseConfig {
    /// Fraction of each MLP's hidden channels skipped.
    pub mlp: f64,
    /// Fraction of each head's q/k and v channels skipped.
    pub attn: f64,
    /// Rank of the SVD estimator.
    pub rank: usize,
    /// Blocks kept dense at the start and at the end.
    pub dense_first: usize,
    pub dense_last: usize,
    /// `--sparse-dense-steps`: a fraction (< 1) of the run's steps, or a count.
    pub dense_steps: f64,
}

impl SparseConfig {
    /// Optimizer steps run dense at the start of a run of `total_steps`.
    pub fn dense_steps(&self, total_steps: u64) -> u64 {
        if self.dense_steps < 1.0 {
            (self.dense_steps * total_steps as f64).ceil() as u64
        } else {
            self.dense_steps as u64
        }
    }

    /// Whether block `i` of `depth` runs sparse.
    pub fn is_sparse_block(&self, i: usize, depth: usize) -> bool {
        i >= self.dense_first && i + self.dense_last < depth
    }
}

/// `x·a·b + bias`: a rank-k stand-in for a frozen `[in, out]` weight. `a` is on the plain
/// device (the `[tokens, in]·[in, k]` product is the one large matmul of an estimate); `b` and
/// the bias are on the host, where the per-channel norms are formed without ever
/// materialising the `[tokens, out]` estimate (see [`linear_norms`], [`gelu_norms`]).
pub struct LowRank {
    a: Tensor<2>,
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

    fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    fn out_dim(&self) -> usize {
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
fn project(x: Tensor<2>, a: &Tensor<2>) -> Vec<f32> {
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
fn linear_norms(u: &[f32], width: usize, from: usize, est: &LowRank) -> Vec<f64> {
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
fn gelu_norms(u: &[f32], est: &LowRank) -> Vec<f64> {
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

/// A rank-k truncated SVD `W ≈ U·Uᵀ·W` (best rank-k approximation, Eckart–Young).
pub struct Svd {
    /// Left singular vectors, `[m, k]` row-major.
    pub u: Vec<f64>,
    /// `Uᵀ·W` = `Σ·Vᵀ`, `[k, n]` row-major.
    pub ut_w: Vec<f64>,
    /// The k largest singular values, descending.
    pub sigma: Vec<f64>,
}

/// Rank-`k` truncated SVD of the row-major `[m, n]` matrix `w`, in f64 on the host:
/// randomized subspace iteration (Halko, Martinsson & Tropp 2011) with 8 extra columns,
/// then Rayleigh–Ritz on the small `B·Bᵀ` by Jacobi rotations.
pub fn truncated_svd(w: &[f64], m: usize, n: usize, k: usize, seed: u64) -> Svd {
    let k = k.min(m).min(n);
    let l = (k + 8).min(m).min(n);
    let mut rng = Rng::seed(seed);
    let omega: Vec<f64> = (0..n * l).map(|_| rng.normal()).collect();
    let mut y = mul(w, m, n, &omega, l); // [m, l]
    orthonormalize(&mut y, m, l);
    for _ in 0..12 {
        let mut z = mul_t(w, m, n, &y, l); // [n, l]
        orthonormalize(&mut z, n, l);
        y = mul(w, m, n, &z, l);
        orthonormalize(&mut y, m, l);
    }
    let b = mul_t(w, m, n, &y, l); // Wᵀ·Y = Bᵀ, [n, l]
    // G = B·Bᵀ (l × l) = Yᵀ·W·Wᵀ·Y.
    let mut g = vec![0.0; l * l];
    for row in b.chunks(l) {
        for i in 0..l {
            for j in 0..l {
                g[i * l + j] += row[i] * row[j];
            }
        }
    }
    let (vals, vecs) = jacobi_eigen(g, l);
    let mut order: Vec<usize> = (0..l).collect();
    order.sort_by(|&i, &j| vals[j].total_cmp(&vals[i]));
    let order = &order[..k];
    let mut u = vec![0.0; m * k];
    for i in 0..m {
        for (c, &e) in order.iter().enumerate() {
            u[i * k + c] = (0..l).map(|t| y[i * l + t] * vecs[t * l + e]).sum();
        }
    }
    let mut ut_w = vec![0.0; k * n];
    for j in 0..n {
        for (c, &e) in order.iter().enumerate() {
            ut_w[c * n + j] = (0..l).map(|t| b[j * l + t] * vecs[t * l + e]).sum();
        }
    }
    let sigma = order.iter().map(|&e| vals[e].max(0.0).sqrt()).collect();
    Svd { u, ut_w, sigma }
}

/// `W·Z` for row-major `w` `[m, n]` and `z` `[n, l]`.
fn mul(w: &[f64], m: usize, n: usize, z: &[f64], l: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * l];
    for (i, o) in out.chunks_mut(l).enumerate() {
        for (j, &wij) in w[i * n..(i + 1) * n].iter().enumerate() {
            for (o, &zz) in o.iter_mut().zip(&z[j * l..(j + 1) * l]) {
                *o += wij * zz;
            }
        }
    }
    out
}

/// `Wᵀ·Y` for row-major `w` `[m, n]` and `y` `[m, l]`.
fn mul_t(w: &[f64], m: usize, n: usize, y: &[f64], l: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * l];
    for i in 0..m {
        let yi = &y[i * l..(i + 1) * l];
        for (j, &wij) in w[i * n..(i + 1) * n].iter().enumerate() {
            for (o, &yy) in out[j * l..(j + 1) * l].iter_mut().zip(yi) {
                *o += wij * yy;
            }
        }
    }
    out
}

/// Orthonormal columns by modified Gram–Schmidt, twice (re-orthogonalisation); a column
/// that vanishes (rank deficiency) is set to zero.
fn orthonormalize(a: &mut [f64], rows: usize, cols: usize) {
    for _ in 0..2 {
        for c in 0..cols {
            for p in 0..c {
                let dot: f64 = (0..rows).map(|r| a[r * cols + c] * a[r * cols + p]).sum();
                for r in 0..rows {
                    a[r * cols + c] -= dot * a[r * cols + p];
                }
            }
            let norm = (0..rows)
                .map(|r| a[r * cols + c].powi(2))
                .sum::<f64>()
                .sqrt();
            let inv = if norm > 1e-12 { 1.0 / norm } else { 0.0 };
            for r in 0..rows {
                a[r * cols + c] *= inv;
            }
        }
    }
}

/// Eigenvalues and eigenvectors (columns of the row-major result) of a symmetric matrix.
fn jacobi_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// The estimators of one sparse block.
pub struct BlockEstimator {
    q: LowRank,
    k: LowRank,
    v: LowRank,
    /// `[q.a, k.a, v.a]` side by side: one matmul projects the tokens for all three.
    qkv_a: Tensor<2>,
    fc1: LowRank,
}

/// A kept channel set: sorted indices into a layer's channels, and the ones skipped.
#[derive(Clone, Debug)]
pub struct Keep {
    pub kept: Vec<usize>,
    pub skipped: Vec<usize>,
}

impl Keep {
    fn new(mut kept: Vec<usize>, dim: usize) -> Self {
        kept.sort_unstable();
        let mut is_kept = vec![false; dim];
        for &c in &kept {
            is_kept[c] = true;
        }
        let skipped = (0..dim).filter(|&c| !is_kept[c]).collect();
        Keep { kept, skipped }
    }

    fn index(v: &[usize], device: &Device) -> Tensor<1, Int> {
        let v: Vec<i64> = v.iter().map(|&i| i as i64).collect();
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), device)
    }

    pub fn kept_index(&self, device: &Device) -> Tensor<1, Int> {
        Self::index(&self.kept, device)
    }

    pub fn skipped_index(&self, device: &Device) -> Tensor<1, Int> {
        Self::index(&self.skipped, device)
    }

    fn sparsity(&self) -> f64 {
        self.skipped.len() as f64 / (self.kept.len() + self.skipped.len()) as f64
    }

    /// These channels for the fused sliced linears, the first `prefix` of every `seq` token
    /// rows dense.
    fn slicing(&self, prefix: usize, seq: usize) -> Slicing {
        Slicing {
            kept: self.kept.as_slice().into(),
            skipped: self.skipped.as_slice().into(),
            prefix,
            seq,
        }
    }
}

/// One batch's attention channels: the kept columns of the fused qkv weight (q and k share
/// their channels, so q·kᵀ sums over the same ones) and the kept v channels (= proj rows).
#[derive(Clone, Debug)]
pub struct AttnPlan {
    pub qkv: Keep,
    pub v: Keep,
}

/// Per-layer sparsity and skipped base parameters, summed over the forwards since the last
/// [`SparseLora::take_log`].
#[derive(Default)]
struct Stats {
    forwards: usize,
    /// block → [mlp, attn_qk, attn_v] sparsity sums.
    layers: BTreeMap<usize, [f64; 3]>,
    skipped_params: f64,
    /// Over the whole run (never reset): skipped base parameters and forwards.
    run_skipped: f64,
    run_forwards: usize,
}

/// The run's SparseLoRA state: configuration, the estimators of the sparse blocks, and the
/// sparsity applied since the last log.
pub struct SparseLora {
    pub config: SparseConfig,
    blocks: Vec<Option<BlockEstimator>>,
    /// Class (and distillation) tokens, computed densely.
    prefix: usize,
    dim: usize,
    num_heads: usize,
    stats: Mutex<Stats>,
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

impl SparseLora {
    /// SVD estimators for the sparse blocks of `model` (its frozen base loaded), on `device`
    /// (the plain, non-autodiff device the estimates run on).
    pub fn new(model: &VisionTransformer, config: SparseConfig, device: &Device) -> Self {
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
        SparseLora {
            config,
            blocks,
            prefix: model.config.num_prefix_tokens(),
            dim: c,
            num_heads: model.config.num_heads,
            stats: Mutex::new(Stats::default()),
        }
    }

    /// The estimator of block `i`, when it runs sparse.
    pub fn block(&self, i: usize) -> Option<&BlockEstimator> {
        self.blocks.get(i).and_then(Option::as_ref)
    }

    /// `h·a` for the patch tokens of a normalised block input `h` (`[b, n, c]`), on the host
    /// (`[b·(n − prefix), width]` row-major). The product runs over every row — `h` is
    /// contiguous, and leaving out the few class-token rows afterwards is cheaper than
    /// copying the patch rows out first. In f32 on the plain device: the estimate is never
    /// differentiated.
    fn project_patches(&self, h: &Tensor<3>, a: &Tensor<2>) -> Vec<f32> {
        let [b, n, c] = h.dims();
        let width = a.dims()[1];
        let u = project(h.clone().inner().reshape([b * n, c]).cast(DType::F32), a);
        u.chunks_exact(width)
            .enumerate()
            .filter(|(t, _)| t % n >= self.prefix)
            .flat_map(|(_, row)| row.iter().copied())
            .collect()
    }

    /// The attention channels block `i` keeps for this batch (`None`: keep them all).
    pub fn attn_plan(&self, i: usize, h: &Tensor<3>) -> Option<AttnPlan> {
        let est = self.block(i)?;
        let c = self.dim;
        let dh = c / self.num_heads;
        let keep = ((1.0 - self.config.attn) * dh as f64).round().max(1.0) as usize;
        if keep >= dh {
            return None;
        }
        let u = self.project_patches(h, &est.qkv_a);
        let r = est.q.rank();
        let norms = |part: usize, est: &LowRank| linear_norms(&u, 3 * r, part * r, est);
        let (q, (k, v)) = rayon::join(
            || norms(0, &est.q),
            || rayon::join(|| norms(1, &est.k), || norms(2, &est.v)),
        );
        // ‖q̂_c‖·‖k̂_c‖ ranks like ‖q̂_c‖²·‖k̂_c‖².
        let qk: Vec<f64> = q.iter().zip(&k).map(|(a, b)| a * b).collect();
        let top_per_head = |score: &[f64]| -> Vec<usize> {
            (0..self.num_heads)
                .flat_map(|h| {
                    let mut ch: Vec<usize> = (h * dh..(h + 1) * dh).collect();
                    ch.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
                    ch.truncate(keep);
                    ch
                })
                .collect()
        };
        let qk_keep = top_per_head(&qk);
        let v_keep = top_per_head(&v);
        let qkv: Vec<usize> = qk_keep
            .iter()
            .copied()
            .chain(qk_keep.iter().map(|&ch| ch + c))
            .chain(v_keep.iter().map(|&ch| ch + 2 * c))
            .collect();
        let plan = AttnPlan {
            qkv: Keep::new(qkv, 3 * c),
            v: Keep::new(v_keep, c),
        };
        let skipped_cols = plan.qkv.skipped.len() as f64;
        let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let entry = st.layers.entry(i).or_default();
        entry[1] += 1.0 - keep as f64 / dh as f64;
        entry[2] += plan.v.sparsity();
        // Skipped qkv columns (weights and bias) and proj rows.
        let skipped = skipped_cols * (c as f64 + 1.0) + plan.v.skipped.len() as f64 * c as f64;
        st.skipped_params += skipped;
        st.run_skipped += skipped;
        Some(plan)
    }

    /// The MLP hidden channels block `i` keeps for this batch (`None`: keep them all).
    pub fn mlp_plan(&self, i: usize, h: &Tensor<3>) -> Option<Keep> {
        let est = self.block(i)?;
        let m = est.fc1.out_dim();
        let keep = ((1.0 - self.config.mlp) * m as f64).round().max(1.0) as usize;
        if keep >= m {
            return None;
        }
        let score = gelu_norms(&self.project_patches(h, &est.fc1.a), &est.fc1);
        let mut ch: Vec<usize> = (0..m).collect();
        ch.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
        ch.truncate(keep);
        let plan = Keep::new(ch, m);
        let c = self.dim as f64;
        let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        st.layers.entry(i).or_default()[0] += plan.sparsity();
        // Skipped fc1 columns (weights and bias) and fc2 rows.
        let skipped = plan.skipped.len() as f64 * (2.0 * c + 1.0);
        st.skipped_params += skipped;
        st.run_skipped += skipped;
        Some(plan)
    }

    /// Count one forward (micro-batch) of the model, sparse or dense: the averages of
    /// [`take_log`](Self::take_log) are over these.
    pub fn count_forward(&self) {
        let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        st.forwards += 1;
        st.run_forwards += 1;
    }

    /// Frozen base parameters skipped per forward, averaged over the whole run so far.
    pub fn mean_skipped_params(&self) -> f64 {
        let st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        st.run_skipped / st.run_forwards.max(1) as f64
    }

    /// The sparsity applied per layer (mean over the forwards since the last call, dense
    /// steps counting as 0) and the frozen base parameters active per step for the patch
    /// tokens, as metric keys; `base_params` is the frozen parameter count of the model.
    pub fn take_log(&self, base_params: usize) -> BTreeMap<String, f64> {
        let st = {
            let mut guard = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            let (run_skipped, run_forwards) = (guard.run_skipped, guard.run_forwards);
            std::mem::replace(
                &mut *guard,
                Stats {
                    run_skipped,
                    run_forwards,
                    ..Stats::default()
                },
            )
        };
        let n = st.forwards.max(1) as f64;
        let mut out = BTreeMap::new();
        let mut mean = [0.0; 2];
        for i in 0..self.blocks.len() {
            let s = st.layers.get(&i).copied().unwrap_or_default();
            for (name, v) in ["mlp", "attn_qk", "attn_v"].iter().zip(s) {
                out.insert(format!("sparsity/blocks.{i}.{name}"), v / n);
            }
            mean[0] += s[0] / n;
            mean[1] += (s[1] + s[2]) / (2.0 * n);
        }
        let depth = self.blocks.len().max(1) as f64;
        out.insert("sparsity/mlp_mean".into(), mean[0] / depth);
        out.insert("sparsity/attn_mean".into(), mean[1] / depth);
        out.insert(
            "active_base_params".into(),
            base_params as f64 - st.skipped_params / n,
        );
        out
    }
}

/// `rows` (`[b, n, d]`) with its first `prefix` token rows replaced by `dense` (`[b, prefix, d]`).
/// The sparse paths run over every row, prefix included (1 row in ~200 of extra work), and
/// the prefix rows are then overwritten: cheaper than splitting the input and concatenating
/// the output, which copies the whole activation both ways, forward and backward.
fn with_dense_prefix(
    rows: Tensor<3>,
    dense: impl FnOnce() -> Tensor<3>,
    prefix: usize,
) -> Tensor<3> {
    if prefix == 0 {
        return rows;
    }
    let [b, _, d] = rows.dims();
    rows.slice_assign([0..b, 0..prefix, 0..d], dense())
}

/// For the patch rows (after the `prefix` dense rows): `x·W[:, kept] + b[kept]` scattered
/// back to all of W's columns (skipped ones 0); the prefix rows and the adapter dense.
/// (The adapter runs in f32 here, as all of the sparse path: config refuses SparseLoRA with
/// half precision.)
pub fn forward_out_sparse(
    lin: &Linear,
    x: Tensor<3>,
    ctx: &Ctx,
    keep: &Keep,
    prefix: usize,
) -> Tensor<3> {
    let [b, n, d_in] = x.dims();
    let device = x.device();
    let d_out = lin.d_out();
    let rows = x.clone().reshape([b * n, d_in]);
    // The kept columns are added into the adapter's (dense) output, or into zeros without
    // one: no separate sum.
    let into = match (&lin.lora_A, &lin.lora_B) {
        (Some(a), Some(bf)) => {
            lin.adapter_delta(rows.clone(), &a.weight.val(), &bf.weight.val(), ctx)
        }
        _ => Tensor::zeros([b * n, d_out], (&device, x.dtype())),
    };
    let (w, bias) = (lin.weight.val(), lin.bias.as_ref().map(|b| b.val()));
    if sliced::frozen(&w, bias.as_ref()) {
        let s = keep.slicing(prefix, n);
        return sliced::linear_kept_outputs(rows, into, w, bias, s).reshape([b, n, d_out]);
    }
    let idx = keep.kept_index(&device);
    let kept = linear(
        rows,
        w.select(1, idx.clone()),
        bias.map(|b| b.select(0, idx.clone())),
    );
    // One scatter. 2-D: burn-flex scatters (and gathers, in backward) 2-D tensors row by
    // row, N-D ones element by element with index arithmetic.
    let out = into
        .select_assign(1, idx, kept, IndexingUpdateOp::Add)
        .reshape([b, n, d_out]);
    with_dense_prefix(out, || lin.forward_ctx(x.narrow(1, 0, prefix), ctx), prefix)
}

/// For the patch rows: `x[:, kept]·W[kept, :] + b` (the skipped input channels contribute
/// nothing); the prefix rows and the adapter dense.
pub fn forward_in_sparse(
    lin: &Linear,
    x: Tensor<3>,
    ctx: &Ctx,
    keep: &Keep,
    prefix: usize,
) -> Tensor<3> {
    let [b, n, d_in] = x.dims();
    let w = lin.weight.val();
    let bias = lin.bias.as_ref().map(|b| b.val());
    if sliced::frozen(&w, bias.as_ref()) {
        let rows = x.clone().reshape([b * n, d_in]);
        let base = sliced::linear_kept_inputs(rows, w, bias, keep.slicing(prefix, n));
        return lin.plus_adapter(base.reshape([b, n, lin.d_out()]), x, ctx);
    }
    let idx = keep.kept_index(&x.device());
    let kept = linear(
        x.clone().reshape([b * n, d_in]).select(1, idx.clone()),
        w.clone().select(0, idx),
        bias.clone(),
    )
    .reshape([b, n, lin.d_out()]);
    let base = with_dense_prefix(
        kept,
        || linear(x.clone().narrow(1, 0, prefix), w, bias),
        prefix,
    );
    lin.plus_adapter(base, x, ctx)
}

impl Attention {
    /// [`Attention::forward`] with the frozen qkv and proj sliced to `plan`'s channels for
    /// the patch rows.
    pub fn forward_sparse(
        &self,
        x: Tensor<3>,
        ctx: &Ctx,
        plan: Option<&AttnPlan>,
        prefix: usize,
    ) -> Tensor<3> {
        let Some(plan) = plan else {
            return self.forward(x, ctx);
        };
        let qkv = forward_out_sparse(&self.qkv, x, ctx, &plan.qkv, prefix);
        let out = self.attend(qkv, ctx);
        dropout(
            forward_in_sparse(&self.proj, out, ctx, &plan.v, prefix),
            self.proj_drop,
            ctx,
        )
    }
}

impl Mlp {
    /// [`Mlp::forward`] with fc1's columns and fc2's rows sliced to `keep` for the patch
    /// rows. The hidden activations of the skipped channels are never formed: with adapters
    /// they are `GELU(LoRA₁(x))` and reach only fc2's adapter, so only that low-rank product
    /// is computed for them.
    pub fn forward_sparse(
        &self,
        x: Tensor<3>,
        ctx: &Ctx,
        keep: Option<&Keep>,
        prefix: usize,
    ) -> Tensor<3> {
        let Some(keep) = keep else {
            return self.forward(x, ctx);
        };
        let (fc1, fc2) = (&self.fc1, &self.fc2);
        let [b, n, d] = x.dims();
        let (w1, w2) = (fc1.weight.val(), fc2.weight.val());
        let (bias1, bias2) = (
            fc1.bias.as_ref().map(|b| b.val()),
            fc2.bias.as_ref().map(|b| b.val()),
        );
        // The fused sliced MLP has no adapters and no dropout.
        let dropout_on = ctx.train && self.drop > 0.0;
        let plain = !(fc1.has_adapter() || fc2.has_adapter() || dropout_on);
        if plain && sliced::frozen(&w1, bias1.as_ref()) && sliced::frozen(&w2, bias2.as_ref()) {
            let rows = x.reshape([b * n, d]);
            let s = keep.slicing(prefix, n);
            return sliced::mlp_kept_hidden(rows, [w1, w2], [bias1, bias2], s).reshape([b, n, d]);
        }
        let device = x.device();
        let (k, s) = (keep.kept_index(&device), keep.skipped_index(&device));
        let dense = || self.forward(x.clone().narrow(1, 0, prefix), ctx);
        let mut h = linear(
            x.clone(),
            w1.select(1, k.clone()),
            bias1.map(|b| b.select(0, k.clone())),
        );
        let mut skipped = None;
        if let (Some(a1), Some(b1)) = (&fc1.lora_A, &fc1.lora_B) {
            let xa = linear(
                dropout(x.clone(), fc1.lora_dropout, ctx),
                a1.weight.val(),
                None,
            ) * fc1.lora_scaling;
            h = h + linear(xa.clone(), b1.weight.val().select(1, k.clone()), None);
            if fc2.has_adapter() {
                let hs = linear(xa, b1.weight.val().select(1, s.clone()), None);
                skipped = Some(dropout(gelu(hs), self.drop, ctx));
            }
        }
        let g = dropout(gelu(h), self.drop, ctx);
        let mut out = linear(g.clone(), w2.select(0, k.clone()), bias2);
        if let (Some(a2), Some(b2)) = (&fc2.lora_A, &fc2.lora_B) {
            let a2 = a2.weight.val();
            let mut z = linear(
                dropout(g, fc2.lora_dropout, ctx),
                a2.clone().select(0, k),
                None,
            );
            if let Some(gs) = skipped {
                z = z + linear(dropout(gs, fc2.lora_dropout, ctx), a2.select(0, s), None);
            }
            out = out + linear(z * fc2.lora_scaling, b2.weight.val(), None);
        }
        with_dense_prefix(dropout(out, self.drop, ctx), dense, prefix)
    }
}

impl Block {
    /// [`Block::forward`] of sparse block `i`: the channel sets are estimated from this
    /// batch's normalised inputs, then attention and MLP run sliced.
    pub fn forward_sparse(&self, x: Tensor<3>, ctx: &Ctx, sp: &SparseLora, i: usize) -> Tensor<3> {
        let h = self.norm1.forward(x.clone());
        let plan = sp.attn_plan(i, &h);
        let a = self.attn.forward_sparse(h, ctx, plan.as_ref(), sp.prefix);
        let x = x + drop_path(a, self.drop_path, ctx);
        let h = self.norm2.forward(x.clone());
        let keep = sp.mlp_plan(i, &h);
        let m = self.mlp.forward_sparse(h, ctx, keep.as_ref(), sp.prefix);
        x + drop_path(m, self.drop_path, ctx)
    }
}

/// Set up SparseLoRA for a run whose adapters are in place.
pub fn setup(
    model: &VisionTransformer,
    config: SparseConfig,
    device: &Device,
) -> Result<Arc<SparseLora>> {
    let depth = model.blocks.len();
    if config.dense_first + config.dense_last >= depth && (config.mlp > 0.0 || config.attn > 0.0) {
        crate::log_line!(
            "note: --sparse-layers {},{} keeps all {depth} blocks dense: SparseLoRA is plain LoRA here",
            config.dense_first,
            config.dense_last
        );
    }
    Ok(Arc::new(SparseLora::new(model, config, device)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VitConfig;
    use crate::model::lora::{LoraConfig, add_adapters};
    use crate::model::params::{gradients, map_params};

    fn orthonormal(rows: usize, cols: usize, rng: &mut Rng) -> Vec<f64> {
        let mut a: Vec<f64> = (0..rows * cols).map(|_| rng.normal()).collect();
        orthonormalize(&mut a, rows, cols);
        a
    }

    /// W = U·diag(s)·Vᵀ, `[m, n]` row-major.
    fn compose(u: &[f64], s: &[f64], v: &[f64], m: usize, n: usize) -> Vec<f64> {
        let r = s.len();
        let mut w = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                w[i * n + j] = (0..r).map(|t| u[i * r + t] * s[t] * v[j * r + t]).sum();
            }
        }
        w
    }

    fn frobenius_residual(w: &[f64], svd: &Svd, m: usize, n: usize) -> f64 {
        let k = svd.sigma.len();
        let mut e = 0.0;
        for i in 0..m {
            for j in 0..n {
                let approx: f64 = (0..k).map(|t| svd.u[i * k + t] * svd.ut_w[t * n + j]).sum();
                e += (w[i * n + j] - approx).powi(2);
            }
        }
        e.sqrt()
    }

    #[test]
    fn truncated_svd_recovers_a_known_low_rank_matrix() {
        let (m, n) = (40, 60);
        let mut rng = Rng::seed(4);
        let s = [10.0, 5.0, 3.0, 2.0, 1.0];
        let (u, v) = (orthonormal(m, 5, &mut rng), orthonormal(n, 5, &mut rng));
        let w = compose(&u, &s, &v, m, n);
        // Rank 5 of a rank-5 matrix: exact.
        let full = truncated_svd(&w, m, n, 5, 1);
        assert!(frobenius_residual(&w, &full, m, n) < 1e-9);
        for (a, b) in full.sigma.iter().zip(s) {
            assert!((a - b).abs() < 1e-9, "{:?}", full.sigma);
        }
        // Rank 3: the top singular values, and the Eckart–Young residual √(2² + 1²).
        let top = truncated_svd(&w, m, n, 3, 2);
        for (a, b) in top.sigma.iter().zip(&s[..3]) {
            assert!((a - b).abs() < 1e-9, "{:?}", top.sigma);
        }
        let r = frobenius_residual(&w, &top, m, n);
        assert!((r - 5f64.sqrt()).abs() < 1e-9, "residual {r}");
        // U has orthonormal columns.
        for p in 0..3 {
            for q in 0..3 {
                let dot: f64 = (0..m).map(|i| top.u[i * 3 + p] * top.u[i * 3 + q]).sum();
                assert!((dot - f64::from(p == q)).abs() < 1e-9);
            }
        }
    }

    const PREFIX: usize = 1;

    /// A tiny f64 ViT with adapters on `targets` whose B factors are random (so the adapters
    /// contribute), plus a batch of tokens for its blocks.
    fn setup_model(targets: &[&str]) -> (VisionTransformer, Tensor<3>, Device) {
        setup_model_as(targets, DType::F64)
    }

    /// [`setup_model`] in `dtype`: in f32 the sparse layers run the fused `sliced` ops, in f64
    /// their op-by-op form.
    fn setup_model_as(targets: &[&str], dtype: DType) -> (VisionTransformer, Tensor<3>, Device) {
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

    /// `[1, n, dim]`: 1 on the prefix rows and on the kept channels, 0 elsewhere.
    fn mask(keep: &Keep, n: usize, dim: usize, like: &Tensor<3>) -> Tensor<3> {
        let mut v = vec![0.0f64; n * dim];
        for r in 0..n {
            for c in 0..dim {
                if r < PREFIX || keep.kept.contains(&c) {
                    v[r * dim + c] = 1.0;
                }
            }
        }
        Tensor::from_data(
            TensorData::new(v, [1, n, dim]),
            (&like.device(), like.dtype()),
        )
    }

    /// The dense computation with the skipped channels' frozen weights zeroed on the patch
    /// rows: the masked reference SparseLoRA must equal.
    fn masked_mlp(mlp: &Mlp, x: Tensor<3>, keep: &Keep, ctx: &Ctx) -> Tensor<3> {
        let [_, n, _] = x.dims();
        let m = mask(keep, n, mlp.fc1.d_out(), &x);
        let h = linear(
            x.clone(),
            mlp.fc1.weight.val(),
            mlp.fc1.bias.as_ref().map(|b| b.val()),
        );
        let h = mlp.fc1.plus_adapter(h * m.clone(), x, ctx);
        let g = gelu(h);
        let y = linear(
            g.clone() * m,
            mlp.fc2.weight.val(),
            mlp.fc2.bias.as_ref().map(|b| b.val()),
        );
        mlp.fc2.plus_adapter(y, g, ctx)
    }

    fn masked_attn(attn: &Attention, x: Tensor<3>, plan: &AttnPlan, ctx: &Ctx) -> Tensor<3> {
        let [_, n, c] = x.dims();
        let lin = &attn.qkv;
        let qkv = linear(
            x.clone(),
            lin.weight.val(),
            lin.bias.as_ref().map(|b| b.val()),
        );
        let qkv = lin.plus_adapter(qkv * mask(&plan.qkv, n, 3 * c, &x), x, ctx);
        let o = attn.attend(qkv, ctx);
        let p = &attn.proj;
        let y = linear(
            o.clone() * mask(&plan.v, n, c, &o),
            p.weight.val(),
            p.bias.as_ref().map(|b| b.val()),
        );
        p.plus_adapter(y, o, ctx)
    }

    fn assert_close(a: Tensor<3>, b: Tensor<3>, what: &str) {
        let a: Vec<f64> = a
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap();
        let b: Vec<f64> = b
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap();
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err <= 1e-5, "{what}: max |Δ| {err}");
    }

    fn assert_grads_close<M: burn::module::Module>(
        module: &M,
        sparse: Tensor<3>,
        reference: Tensor<3>,
        what: &str,
    ) {
        let dims = sparse.dims();
        let mut rng = Rng::seed(11);
        let r: Vec<f64> = (0..dims.iter().product()).map(|_| rng.normal()).collect();
        let r =
            Tensor::<3>::from_data(TensorData::new(r, dims), (&sparse.device(), sparse.dtype()));
        let gs = gradients(module, &(sparse * r.clone()).sum().backward());
        let gr = gradients(module, &(reference * r).sum().backward());
        assert!(!gs.is_empty());
        assert_eq!(gs.keys().collect::<Vec<_>>(), gr.keys().collect::<Vec<_>>());
        for (k, g) in &gs {
            assert!(
                crate::model::lora::is_adapter(k),
                "{what}: frozen {k} got a gradient"
            );
            let a: Vec<f64> = g
                .clone()
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap();
            let b: Vec<f64> = gr[k]
                .clone()
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap();
            let err = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            let scale = b.iter().map(|x| x.abs()).fold(1e-3, f64::max);
            assert!(err <= 1e-5 * scale, "{what}: gradient of {k} off by {err}");
        }
    }

    fn some_keep(dim: usize, kept: &[usize]) -> Keep {
        Keep::new(kept.to_vec(), dim)
    }

    /// In f64 (the op-by-op form) and f32 (the fused `sliced` ops where they apply).
    #[test]
    fn sliced_mlp_equals_the_masked_dense_mlp_forward_and_gradients() {
        // Every adapter placement: the skipped channels' hidden reaches fc2's adapter only
        // when fc1 has one.
        let all = [&["fc1", "fc2"][..], &["fc1"], &["fc2"], &["qkv"]];
        for (targets, dtype) in all.iter().flat_map(|t| [(t, DType::F64), (t, DType::F32)]) {
            let (m, x, _) = setup_model_as(targets, dtype);
            let mlp = &m.blocks[1].mlp;
            let plain = !mlp.fc1.has_adapter() && !mlp.fc2.has_adapter();
            let fused = sliced::frozen(&mlp.fc1.weight.val(), None) && plain;
            assert_eq!(fused, dtype == DType::F32 && *targets == ["qkv"]);
            let keep = some_keep(16, &[0, 3, 4, 7, 9, 10, 14, 15]);
            let ctx = Ctx::train(0, &[0]);
            let y = mlp.forward_sparse(x.clone(), &ctx, Some(&keep), PREFIX);
            let r = masked_mlp(mlp, x.clone(), &keep, &ctx);
            assert_close(y.clone(), r.clone(), &format!("mlp {targets:?}"));
            // The class token's row is the dense MLP's.
            let dense = mlp.forward(x.clone(), &ctx);
            assert_close(y.clone().narrow(1, 0, 1), dense.narrow(1, 0, 1), "cls row");
            if **targets != ["qkv"] {
                assert_grads_close(mlp, y, r, &format!("mlp {targets:?}"));
            }
        }
    }

    /// In f64 (the op-by-op form) and f32 (the fused `sliced` ops).
    #[test]
    fn sliced_attention_equals_the_masked_dense_attention_forward_and_gradients() {
        let all = [&["qkv", "attn.proj"][..], &["qkv"], &["attn.proj"]];
        for (targets, dtype) in all.iter().flat_map(|t| [(t, DType::F64), (t, DType::F32)]) {
            let (m, x, _) = setup_model_as(targets, dtype);
            let attn = &m.blocks[2].attn;
            assert_eq!(
                sliced::frozen(&attn.qkv.weight.val(), None),
                dtype == DType::F32
            );
            // 2 heads of 4: q/k channels {0, 2} ∪ {5, 6}, v channels {1, 3} ∪ {4, 7}.
            let qk = [0, 2, 5, 6];
            let v = [1, 3, 4, 7];
            let qkv: Vec<usize> = qk
                .iter()
                .copied()
                .chain(qk.iter().map(|c| c + 8))
                .chain(v.iter().map(|c| c + 16))
                .collect();
            let plan = AttnPlan {
                qkv: some_keep(24, &qkv),
                v: some_keep(8, &v),
            };
            let ctx = Ctx::train(0, &[0]);
            let y = attn.forward_sparse(x.clone(), &ctx, Some(&plan), PREFIX);
            let r = masked_attn(attn, x.clone(), &plan, &ctx);
            assert_close(y.clone(), r.clone(), &format!("attention {targets:?}"));
            assert_grads_close(attn, y, r, &format!("attention {targets:?}"));
        }
    }

    fn sparse_cfg(s: f64, first: usize, last: usize) -> SparseConfig {
        SparseConfig {
            mlp: s,
            attn: s,
            rank: 2,
            dense_first: first,
            dense_last: last,
            dense_steps: 0.0,
        }
    }

    fn images(device: &Device) -> Tensor<4> {
        let mut rng = Rng::seed(5);
        let v: Vec<f64> = (0..2 * 3 * 8 * 8).map(|_| rng.normal()).collect();
        Tensor::from_data(TensorData::new(v, [2, 3, 8, 8]), (device, DType::F64))
    }

    fn logits(m: &VisionTransformer, x: &Tensor<4>, sp: Option<&Arc<SparseLora>>) -> Vec<f64> {
        let ctx = Ctx::train(0, &[0]).with_sparse(sp.cloned());
        m.forward(x.clone(), &ctx)
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap()
    }

    #[test]
    fn sparsity_zero_and_dense_layers_are_lora_exactly() {
        let (m, _, device) = setup_model(&["qkv", "attn.proj", "fc1", "fc2"]);
        let x = images(&device);
        let lora = logits(&m, &x, None);
        let plain = Device::flex();
        // Sparsity 0 everywhere: bit for bit.
        let sp = Arc::new(SparseLora::new(&m, sparse_cfg(0.0, 0, 0), &plain));
        assert_eq!(logits(&m, &x, Some(&sp)), lora);
        // All four blocks dense by --sparse-layers: no estimator at all, and LoRA exactly.
        let sp = Arc::new(SparseLora::new(&m, sparse_cfg(0.5, 2, 2), &plain));
        assert!((0..4).all(|i| sp.block(i).is_none()));
        assert_eq!(logits(&m, &x, Some(&sp)), lora);
        // Blocks 1 and 2 sparse: different logits, and the log says which blocks were.
        let sp = Arc::new(SparseLora::new(&m, sparse_cfg(0.5, 1, 1), &plain));
        sp.count_forward();
        assert_ne!(logits(&m, &x, Some(&sp)), lora);
        let log = sp.take_log(1000);
        for (i, want) in [(0, 0.0), (1, 0.5), (2, 0.5), (3, 0.0)] {
            for part in ["mlp", "attn_qk", "attn_v"] {
                assert_eq!(
                    log[&format!("sparsity/blocks.{i}.{part}")],
                    want,
                    "{i} {part}"
                );
            }
        }
        // Per sparse block: 4 of 8 qkv columns per part (weight + bias), 4 proj rows of 8,
        // 8 fc1 columns (+ bias) and 8 fc2 rows of 8.
        let skipped = 2.0 * (12.0 * 9.0 + 4.0 * 8.0 + 8.0 * 17.0);
        assert_eq!(log["active_base_params"], 1000.0 - skipped);
        assert_eq!(sp.mean_skipped_params(), skipped);
        // Evaluation is dense whatever the context carries.
        let eval = Ctx::eval().with_sparse(Some(sp.clone()));
        assert!(eval.sparse.is_none());
    }

    /// Squared L2 norm of every column of `[tokens, ch]`.
    fn column_norms(x: Tensor<2>) -> Vec<f64> {
        x.square()
            .sum_dim(0)
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap()
    }

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

    #[test]
    fn the_estimator_keeps_the_truly_largest_channels_of_a_low_rank_layer() {
        // fc1 of rank ≤ 2 = the estimator's rank: its estimate is exact, so the kept
        // channels are the ones with the largest ‖GELU(x·W + b)‖ over the batch.
        let (m, x, _) = setup_model(&["qkv"]);
        let mut rng = Rng::seed(21);
        let (u, v) = (orthonormal(8, 2, &mut rng), orthonormal(16, 2, &mut rng));
        let w = compose(&u, &[3.0, 1.5], &v, 8, 16);
        let m = map_params(m, |p, t| {
            (p == "blocks.1.mlp.fc1.weight").then(|| {
                let _ = t;
                Tensor::from_data(
                    TensorData::new(w.clone(), [128]),
                    (&Device::flex(), DType::F64),
                )
            })
        });
        let sp = SparseLora::new(&m, sparse_cfg(0.75, 1, 2), &Device::flex());
        let keep = sp.mlp_plan(1, &x).expect("sparse");
        let fc1 = &m.blocks[1].mlp.fc1;
        let h = gelu(linear(
            x.clone().narrow(1, PREFIX, 4),
            fc1.weight.val(),
            fc1.bias.as_ref().map(|b| b.val()),
        ));
        let norms = column_norms(h.inner().reshape([8, 16]));
        let mut order: Vec<usize> = (0..16).collect();
        order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]));
        let mut want = order[..4].to_vec();
        want.sort_unstable();
        assert_eq!(keep.kept, want);
    }

    #[test]
    fn dense_steps_and_sparse_blocks() {
        let c = sparse_cfg(0.5, 2, 1);
        assert_eq!(c.dense_steps(100), 0);
        let f = SparseConfig {
            dense_steps: 0.05,
            ..c.clone()
        };
        assert_eq!(f.dense_steps(100), 5);
        assert_eq!(f.dense_steps(30), 2);
        let n = SparseConfig {
            dense_steps: 7.0,
            ..c.clone()
        };
        assert_eq!(n.dense_steps(100), 7);
        assert!(!c.is_sparse_block(1, 12) && c.is_sparse_block(2, 12));
        assert!(c.is_sparse_block(10, 12) && !c.is_sparse_block(11, 12));
    }
}
