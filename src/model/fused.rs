//! Hand-written flex kernels with their own backward pass, for the two layers where burn's
//! op-by-op forms cost most on the CPU: multi-head attention and LayerNorm (f32).
//!
//! **Attention** of a fused `[b, n, 3c]` qkv projection. Written as ops, it is a head split
//! (three strided copies of q, k, v), q·kᵀ, a softmax of eight element-wise passes with
//! broadcasts, ·v and a head merge (another copy); autodiff then differentiates every one of
//! them, and the split's backward zero-fills and sums three `[b, n, 3c]` gradients. Here each
//! (image, head) pair is one task on the rayon pool: its q, k and v are read in place from the
//! qkv rows, the scores of one head (n × n) stay in cache, and the output and the qkv gradient
//! are written straight into their `[b, n, c]` / `[b, n, 3c]` places. The backward pass reuses
//! the saved probabilities: dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √d,
//! dQ = dS·K, dK = dSᵀ·Q.
//!
//! **LayerNorm** over the last dimension. As ops it is ten passes forward and about twenty
//! backward, half of them broadcasts that flex runs on one thread; here it is one pass forward
//! (saving each row's mean and 1/σ) and one backward, over rows on the rayon pool:
//! x̂ = (x − μ)/σ, dγ = Σ dy ⊙ x̂, dβ = Σ dy, dx = (g − mean(g) − x̂ · mean(g ⊙ x̂)) / σ with
//! g = dy ⊙ γ. dγ and dβ are summed per fixed block of rows, then over blocks in order, so the
//! result does not depend on the thread count.
//!
//! Both are burn backend extensions: flex and autodiff-over-flex run the kernels below;
//! [`applies`] says when the model may call them (other backends and half precision keep the
//! op-by-op forms in `layers`).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::borrow::Cow;

#[backend_extension(Flex, Autodiff)]
pub trait FusedAttention: Backend {
    /// softmax(q·kᵀ/√d)·v for each of `heads` heads of a `[b, n, 3c]` qkv (timm's layout:
    /// q, k, v, each head-major), heads merged: `[b, n, c]`.
    fn qkv_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
}

impl FusedAttention for Flex {
    fn qkv_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        let (shape, data) = parts(&qkv);
        let out = attention_forward(&data, shape, heads, None);
        flex_tensor(out, [shape[0], shape[1], shape[2] / 3])
    }
}

#[derive(Debug)]
struct QkvAttentionBackward;

impl Backward<Flex, 1> for QkvAttentionBackward {
    /// The qkv input, the attention probabilities `[b, h, n, n]` and the head count.
    type State = (FlexTensor, Vec<f32>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (qkv, probs, heads) = ops.state;
        if let Some(node) = parent {
            let (shape, data) = parts(&qkv);
            let grad = values(&grad);
            let dqkv = attention_backward(&data, &probs, &grad, shape, heads);
            grads.register::<Flex>(node.id, flex_tensor(dqkv, shape));
        }
    }
}

impl<C: CheckpointStrategy> FusedAttention for Autodiff<Flex, C> {
    fn qkv_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        match QkvAttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = qkv.into_primitive();
                let (shape, data) = parts(&x);
                let mut probs = Vec::new();
                let out = attention_forward(&data, shape, heads, Some(&mut probs));
                let out = flex_tensor(out, [shape[0], shape[1], shape[2] / 3]);
                prep.finish((x, probs, heads), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::qkv_attention(qkv.into_primitive(), heads))
            }
        }
    }
}

#[backend_extension(Flex, Autodiff)]
pub trait FusedLayerNorm: Backend {
    /// LayerNorm over the last dimension of `x`: `γ ⊙ (x − μ)/√(σ² + eps) + β`.
    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
}

impl FusedLayerNorm for Flex {
    fn layer_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, eps: f64) -> FlexTensor {
        let y = norm_forward(&values(&x), &values(&gamma), &values(&beta), eps, None);
        flex_tensor(y, x.layout().shape().clone())
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    /// The input, γ, and each row's (μ, 1/σ).
    type State = (FlexTensor, FlexTensor, Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, gamma, stats) = ops.state;
        let (dx, dgamma, dbeta) =
            norm_backward(&values(&x), &values(&gamma), &stats, &values(&grad));
        let d = dgamma.len();
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, flex_tensor(dx, x.layout().shape().clone()));
        }
        if let Some(node) = gamma_node {
            grads.register::<Flex>(node.id, flex_tensor(dgamma, [d]));
        }
        if let Some(node) = beta_node {
            grads.register::<Flex>(node.id, flex_tensor(dbeta, [d]));
        }
    }
}

impl<C: CheckpointStrategy> FusedLayerNorm for Autodiff<Flex, C> {
    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        match LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
                let mut stats = Vec::new();
                let y = norm_forward(
                    &values(&x),
                    &values(&gamma),
                    &values(beta.primitive()),
                    eps,
                    Some(&mut stats),
                );
                let y = flex_tensor(y, x.layout().shape().clone());
                prep.finish((x, gamma, stats), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                eps,
            )),
        }
    }
}

/// Whether the fused kernels can replace the op-by-op forms for `x`: an f32 tensor on flex
/// (autodiff or not).
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && matches!(x.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// softmax(q·kᵀ/√d)·v of a `[b, n, 3c]` qkv with `heads` heads: `[b, n, c]`. Differentiable.
pub fn qkv_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedAttention>::qkv_attention(
        qkv.into_dispatch(),
        heads,
    ))
}

/// LayerNorm of `x` over its last dimension, `γ ⊙ x̂ + β`. Differentiable.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedLayerNorm>::layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
    ))
}

/// The values of a flex f32 tensor in row-major order (copied only when it is not dense).
pub(crate) fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(t.to_contiguous().as_slice::<f32>().unwrap().to_vec()),
    }
}

/// The shape of an attention qkv and its values.
fn parts(t: &FlexTensor) -> ([usize; 3], Cow<'_, [f32]>) {
    let dims = t.layout().shape();
    ([dims[0], dims[1], dims[2]], values(t))
}

pub(crate) fn flex_tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// A pointer the rayon tasks share; each task writes a disjoint set of elements through it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint elements (see the callers).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element at `offset` (a method, so closures capture the whole `Out`, which is Sync).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A strided matrix: `ptr[i * rs + j * cs]` is element (i, j).
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl Mat {
    /// Row-major rows of `buf` from element `at`, `stride` apart.
    pub(crate) fn rows(buf: &[f32], at: usize, stride: usize) -> Mat {
        Mat {
            ptr: buf.as_ptr().wrapping_add(at),
            rs: stride as isize,
            cs: 1,
        }
    }

    pub(crate) fn t(self) -> Mat {
        Mat {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// dst (m × n, row stride `dst_rs`) = beta · lhs (m × k) · rhs (k × n), on this thread.
///
/// # Safety
/// The matrices must lie inside their buffers, and no other thread may touch dst's elements.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
) {
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            dst,
            dst_rs,
            lhs,
            rhs,
            beta,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// dst (m × n, row stride `dst_rs`) = [dst +] beta · lhs (m × k) · rhs (k × n), adding to
/// dst's values when `accumulate`, on `par`'s threads.
///
/// # Safety
/// As [`matmul`]; with `accumulate`, dst's elements must be initialised.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            par,
        );
    }
}

/// Where the q, k and v of one (image, head) task start in a `[b, n, 3c]` buffer.
struct Head {
    q: usize,
    k: usize,
    v: usize,
    /// Offset of the head's `[n, d]` block in a `[b, n, c]` buffer.
    o: usize,
}

fn head(task: usize, heads: usize, n: usize, c: usize) -> Head {
    let (b, h) = (task / heads, task % heads);
    let d = c / heads;
    let q = b * n * 3 * c + h * d;
    Head {
        q,
        k: q + c,
        v: q + 2 * c,
        o: b * n * c + h * d,
    }
}

/// Forward pass on a row-major `[b, n, 3c]` qkv; fills `probs` (`[b, h, n, n]`) when given.
pub fn attention_forward(
    qkv: &[f32],
    shape: [usize; 3],
    heads: usize,
    probs: Option<&mut Vec<f32>>,
) -> Vec<f32> {
    let [b, n, c3] = shape;
    let c = c3 / 3;
    assert!(
        c3 % 3 == 0 && heads > 0 && c.is_multiple_of(heads),
        "qkv_attention: a [b, n, 3c] qkv with c divisible by the {heads} heads, got {shape:?}"
    );
    let d = c / heads;
    assert_eq!(
        qkv.len(),
        b * n * c3,
        "qkv_attention: qkv is not [b, n, 3c]"
    );
    let scale = (d as f32).powf(-0.5);
    let mut out = Vec::with_capacity(b * n * c);
    let dst = Out(out.spare_capacity_mut().as_mut_ptr().cast());
    let rows = |at: usize| Mat::rows(qkv, at, c3);
    let task = |t: usize, p: &mut [f32]| {
        let hd = head(t, heads, n, c);
        // SAFETY: q, k, v are n × d blocks inside qkv; p is this task's n × n buffer and the
        // head's n × d block of `out` is written by this task only.
        unsafe {
            matmul(
                n,
                n,
                d,
                p.as_mut_ptr(),
                n as isize,
                rows(hd.q),
                rows(hd.k).t(),
                scale,
            );
            burn_flex::ops::softmax_rows_scaled(p, n, 1.0);
            let p = Mat::rows(p, 0, n);
            matmul(n, d, n, dst.at(hd.o), c as isize, p, rows(hd.v), 1.0);
        }
    };
    match probs {
        Some(probs) => {
            probs.resize(b * heads * n * n, 0.0);
            probs
                .par_chunks_mut(n * n)
                .enumerate()
                .for_each(|(t, p)| task(t, p));
        }
        None => (0..b * heads)
            .into_par_iter()
            .for_each_init(|| vec![0.0; n * n], |p, t| task(t, p)),
    }
    // SAFETY: the tasks wrote every element: each (image, head) its n × d block.
    unsafe { out.set_len(b * n * c) };
    out
}

/// Backward pass: the gradient of a row-major `[b, n, 3c]` qkv from the output's `grad`
/// (`[b, n, c]`) and the forward's `probs`.
pub fn attention_backward(
    qkv: &[f32],
    probs: &[f32],
    grad: &[f32],
    shape: [usize; 3],
    heads: usize,
) -> Vec<f32> {
    let [b, n, c3] = shape;
    let c = c3 / 3;
    let d = c / heads;
    assert_eq!(
        grad.len(),
        b * n * c,
        "qkv_attention: the gradient is not [b, n, c]"
    );
    assert_eq!(probs.len(), b * heads * n * n);
    let scale = (d as f32).powf(-0.5);
    let mut dqkv = Vec::with_capacity(b * n * c3);
    let dst = Out(dqkv.spare_capacity_mut().as_mut_ptr().cast());
    let rows = |at: usize| Mat::rows(qkv, at, c3);
    (0..b * heads).into_par_iter().for_each_init(
        || vec![0.0f32; n * n],
        |ds, t| {
            let hd = head(t, heads, n, c);
            let p = &probs[t * n * n..(t + 1) * n * n];
            let pm = Mat::rows(p, 0, n);
            let dout = Mat::rows(grad, hd.o, c);
            // SAFETY: all blocks lie inside their buffers; this task alone writes the head's
            // q, k and v columns of `dqkv` for this image.
            unsafe {
                // dV = Pᵀ·dO
                matmul(n, d, n, dst.at(hd.v), c3 as isize, pm.t(), dout, 1.0);
                // dP = dO·Vᵀ
                matmul(
                    n,
                    n,
                    d,
                    ds.as_mut_ptr(),
                    n as isize,
                    dout,
                    rows(hd.v).t(),
                    1.0,
                );
            }
            // dS = P ⊙ (dP − rowsum(P ⊙ dP)), with the 1/√d of the scores folded in.
            for (dsr, pr) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                let row_dot = dot(dsr, pr);
                for (x, &pv) in dsr.iter_mut().zip(pr) {
                    *x = pv * (*x - row_dot) * scale;
                }
            }
            let dsm = Mat::rows(ds, 0, n);
            unsafe {
                // dQ = dS·K, dK = dSᵀ·Q
                matmul(n, d, n, dst.at(hd.q), c3 as isize, dsm, rows(hd.k), 1.0);
                matmul(n, d, n, dst.at(hd.k), c3 as isize, dsm.t(), rows(hd.q), 1.0);
            }
        },
    );
    // SAFETY: every element was written: the q, k and v columns of each (image, head).
    unsafe { dqkv.set_len(b * n * c3) };
    dqkv
}

/// Partial sums a reduction keeps, so it vectorises instead of waiting on one add after another.
const LANES: usize = 16;

/// Σ a, in [`LANES`] interleaved partial sums.
fn sum(a: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ a ⊙ b, in [`LANES`] interleaved partial sums.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Rows per LayerNorm task: dγ and dβ are summed per block of this many rows, then over the
/// blocks in order, the same for any thread count.
const NORM_ROWS: usize = 64;

/// LayerNorm forward of row-major rows of `gamma.len()` values; fills `stats` with each
/// row's (μ, 1/σ) when given.
pub fn norm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    stats: Option<&mut Vec<f32>>,
) -> Vec<f32> {
    let d = gamma.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d) && beta.len() == d,
        "layer_norm: γ, β and x disagree"
    );
    let rows = x.len() / d;
    let mut y = vec![0.0f32; x.len()];
    let mut own = Vec::new();
    let stats = stats.unwrap_or(&mut own);
    stats.resize(2 * rows, 0.0);
    y.par_chunks_mut(NORM_ROWS * d)
        .zip(x.par_chunks(NORM_ROWS * d))
        .zip(stats.par_chunks_mut(2 * NORM_ROWS))
        .for_each(|((y, x), st)| {
            for ((y, x), st) in y
                .chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .zip(st.chunks_exact_mut(2))
            {
                let mean = sum(x) / d as f32;
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x - mean;
                }
                let var = dot(y, y) / d as f32;
                let rstd = 1.0 / (var as f64 + eps).sqrt() as f32;
                for ((y, &g), &b) in y.iter_mut().zip(gamma).zip(beta) {
                    *y = *y * rstd * g + b;
                }
                st[0] = mean;
                st[1] = rstd;
            }
        });
    y
}

/// LayerNorm backward: (dx, dγ, dβ) from the input, γ, the forward's `stats` and the output
/// gradient.
pub fn norm_backward(
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    assert_eq!(
        x.len(),
        dy.len(),
        "layer_norm: the gradient's shape differs from the input's"
    );
    let mut dx = vec![0.0f32; x.len()];
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(NORM_ROWS * d)
        .zip(x.par_chunks(NORM_ROWS * d))
        .zip(dy.par_chunks(NORM_ROWS * d))
        .zip(stats.par_chunks(2 * NORM_ROWS))
        .map(|(((dx, x), dy), st)| {
            let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
            let (mut xhat, mut g) = (vec![0.0f32; d], vec![0.0f32; d]);
            let rows = dx
                .chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .zip(dy.chunks_exact(d));
            for (((dx, x), dy), st) in rows.zip(st.chunks_exact(2)) {
                let (mean, rstd) = (st[0], st[1]);
                for j in 0..d {
                    xhat[j] = (x[j] - mean) * rstd;
                    g[j] = dy[j] * gamma[j];
                    dgamma[j] += dy[j] * xhat[j];
                    dbeta[j] += dy[j];
                }
                let (a, b) = (sum(&g) / d as f32, dot(&g, &xhat) / d as f32);
                for j in 0..d {
                    dx[j] = (g[j] - a - xhat[j] * b) * rstd;
                }
            }
            (dgamma, dbeta)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
    for (pg, pb) in &partial {
        for j in 0..d {
            dgamma[j] += pg[j];
            dbeta[j] += pb[j];
        }
    }
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::{applies, layer_norm, qkv_attention};
    use crate::model::layers::{Ctx, attend_ops};
    use crate::rng::Rng;

    /// The op-by-op attention the fused one replaces, differentiated by burn's autodiff.
    fn reference(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
        attend_ops(qkv, heads, 0.0, &Ctx::eval())
    }

    fn random(shape: [usize; 3], seed: u64, device: &Device) -> Tensor<3> {
        let mut rng = Rng::seed(seed);
        let v: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.normal() as f32)
            .collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    fn max_diff(a: &Tensor<3>, b: &Tensor<3>) -> f32 {
        (a.clone() - b.clone()).abs().max().into_scalar()
    }

    /// Forward and qkv gradient equal the op-by-op attention's, for sequence lengths that are
    /// not multiples of the kernels' vector width, a non-contiguous input and autodiff off.
    #[test]
    fn fused_attention_matches_the_op_by_op_attention_and_its_autodiff_gradient() {
        let device = Device::flex().autodiff();
        for (b, n, heads, d) in [(2, 7, 2, 4), (3, 65, 3, 16), (1, 17, 1, 8)] {
            let shape = [b, n, 3 * heads * d];
            let x = random(shape, n as u64, &device).require_grad();
            let w = random([b, n, heads * d], 99, &device);
            assert!(applies(&x));
            let fused = qkv_attention(x.clone(), heads);
            let reference_out = reference(x.clone(), heads);
            let err = max_diff(&fused, &reference_out);
            assert!(err < 1e-5, "forward differs by {err} at {shape:?}");
            let g_fused = (fused * w.clone()).sum().backward();
            let g_ref = (reference_out * w).sum().backward();
            let (gf, gr) = (x.grad(&g_fused).unwrap(), x.grad(&g_ref).unwrap());
            let gf = Tensor::<3>::from_data(gf.into_data(), &Device::flex());
            let gr = Tensor::<3>::from_data(gr.into_data(), &Device::flex());
            let err = max_diff(&gf, &gr);
            assert!(err < 1e-5, "qkv gradient differs by {err} at {shape:?}");
        }
        // A transposed (non-contiguous) input, without autodiff.
        let flex = Device::flex();
        let x = random([2, 24, 9], 5, &flex).swap_dims(1, 2);
        assert!(max_diff(&qkv_attention(x.clone(), 2), &reference(x, 2)) < 1e-5);
    }

    /// The backward pass against central finite differences of the forward (f64 sums of the
    /// f32 outputs): d/dx of Σ w ⊙ attention(x) for a few entries of q, k and v.
    #[test]
    fn fused_attention_gradient_matches_finite_differences() {
        let device = Device::flex().autodiff();
        let (b, n, heads, d) = (2, 5, 2, 3);
        let shape = [b, n, 3 * heads * d];
        let x = random(shape, 11, &device).require_grad();
        let w = random([b, n, heads * d], 12, &Device::flex());
        let grads = (qkv_attention(x.clone(), heads) * w.clone().to_device(&device))
            .sum()
            .backward();
        let analytic: Vec<f32> = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let x0: Vec<f32> = x.clone().into_data().try_into_vec::<f32>().unwrap();
        let loss = |v: &[f32]| -> f64 {
            let t = Tensor::<3>::from_data(TensorData::new(v.to_vec(), shape), &Device::flex());
            let out: Vec<f32> = (qkv_attention(t, heads) * w.clone())
                .into_data()
                .try_into_vec::<f32>()
                .unwrap();
            out.iter().map(|&o| o as f64).sum()
        };
        let h = 1e-2f32;
        // Entries of q, k and v of both heads, in both images.
        for i in [0, 4, 7, 11, 14, 17, 30 + 2, 60 + 9, 150 + 16, 170 + 5] {
            let (mut up, mut down) = (x0.clone(), x0.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * h as f64);
            let diff = (numeric - analytic[i] as f64).abs();
            assert!(
                diff < 2e-3 * (1.0 + numeric.abs()),
                "entry {i}: analytic {} vs numeric {numeric}",
                analytic[i]
            );
        }
    }

    /// LayerNorm equals burn's op-by-op `layer_norm` forward, and its x, γ and β gradients
    /// equal that one's autodiff gradients, over more rows than one task's block (so the
    /// per-block dγ/dβ sums are combined) and for a 2-D input.
    #[test]
    fn fused_layer_norm_matches_burns_layer_norm_and_its_gradients() {
        let device = Device::flex().autodiff();
        let d = 24;
        for shape in [[3, 50, d], [1, 1, d]] {
            let x = random(shape, 21, &device).require_grad();
            let mut rng = Rng::seed(22);
            let mut vec1 = |shift: f32| -> Tensor<1> {
                let v: Vec<f32> = (0..d).map(|_| shift + 0.5 * rng.normal() as f32).collect();
                Tensor::from_data(TensorData::new(v, [d]), &device).require_grad()
            };
            let (gamma, beta) = (vec1(1.0), vec1(0.0));
            let w = random(shape, 23, &device);
            let fused = layer_norm(x.clone(), gamma.clone(), beta.clone(), 1e-6);
            let reference_out = burn::tensor::module::layer_norm(
                x.clone(),
                gamma.clone(),
                Some(beta.clone()),
                1e-6,
            );
            let err = max_diff(&fused, &reference_out);
            assert!(err < 2e-5, "forward differs by {err} at {shape:?}");
            let gf = (fused * w.clone()).sum().backward();
            let gr = (reference_out * w).sum().backward();
            let host = |t: Tensor<3>| Tensor::<3>::from_data(t.into_data(), &Device::flex());
            let err = max_diff(&host(x.grad(&gf).unwrap()), &host(x.grad(&gr).unwrap()));
            assert!(err < 2e-5, "x gradient differs by {err} at {shape:?}");
            for (name, p) in [("gamma", &gamma), ("beta", &beta)] {
                let (a, b) = (p.grad(&gf).unwrap(), p.grad(&gr).unwrap());
                let err: f32 = (a - b).abs().max().into_scalar();
                assert!(err < 1e-4, "{name} gradient differs by {err} at {shape:?}");
            }
        }
        let flex = Device::flex();
        let x: Tensor<2> = Tensor::from_data(
            TensorData::new(vec![1.0f32, 2.0, 4.0, -1.0, 0.0, 7.0], [2, 3]),
            &flex,
        );
        let ones = Tensor::<1>::ones([3], &flex);
        let zeros = Tensor::<1>::zeros([3], &flex);
        let y: Vec<f32> = layer_norm(x, ones, zeros, 0.0)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        // Row 1: μ = 7/3, σ² = 14/9.
        let expected = [-1.069045, -0.267261, 1.336306];
        for (a, e) in y.iter().zip(expected) {
            assert!((a - e).abs() < 1e-4, "{y:?}");
        }
    }
}
