//! SparseLoRA's sliced frozen linears as flex kernels with their own backward pass, the
//! dense prefix (class token) rows handled inside.
//!
//! A sparse block multiplies the patch rows by a frozen weight cut to the kept channels but
//! the prefix rows by all of it. As burn ops that is the sliced product over every row, a
//! dense product of the prefix rows (`narrow`) and a splice (`slice_assign`). The splice
//! copies the output, and in backward each `narrow` turns into a zero-filled gradient of the
//! whole input added into the sliced product's: three passes over a full activation per
//! splice, ≈ 8% of a step with attention sparse (BENCHMARKS.md). Here the prefix rows'
//! missing channels come from a small extra product of those few rows with the whole weight,
//! forward and backward, added into the rows in place, and the input gradient is written
//! once. The MLP is one op (both linears and the GELU), so its hidden activations exist only
//! for the kept channels.
//!
//! The weights are frozen (SparseLoRA slices only the frozen base): no weight gradient is
//! computed, and the ops refuse a weight that requires one. Like [`super::fused`], these are
//! flex and autodiff-over-flex backend extensions; other backends keep the op-by-op forms
//! in `sparse`.

use std::mem::MaybeUninit;
use std::sync::Arc;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use burn_flex::FlexTensor;
use burn_flex::ops::gelu_f32;
use rayon::prelude::*;

use super::fused::{Mat, flex_tensor, gemm_raw, values};
use crate::simd::multiversion;

/// The channels a sliced linear keeps on the patch rows, and where the dense rows are: the
/// first `prefix` of every `seq` rows (each image's class and distillation tokens).
#[derive(Clone, Debug)]
pub struct Slicing {
    pub kept: Arc<[usize]>,
    pub skipped: Arc<[usize]>,
    pub prefix: usize,
    pub seq: usize,
}

impl Slicing {
    /// The dense rows among `rows` token rows.
    fn prefix_rows(&self, rows: usize) -> Vec<usize> {
        let (seq, prefix) = (self.seq, self.prefix);
        (0..rows / seq)
            .flat_map(|i| (0..prefix).map(move |j| i * seq + j))
            .collect()
    }
}

#[backend_extension(Flex, Autodiff)]
pub trait SlicedLinear: Backend {
    /// `into + x·W + b` with W's output columns cut to `s.kept` on the patch rows (their
    /// skipped columns keep `into`'s values) and whole on the prefix rows. x `[r, in]`,
    /// into `[r, out]`, W `[in, out]` frozen.
    fn linear_kept_outputs(
        x: FloatTensor<Self>,
        into: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        s: Slicing,
    ) -> FloatTensor<Self>;

    /// `x·W + b` with W's input rows (x's columns) cut to `s.kept` on the patch rows and
    /// whole on the prefix rows. x `[r, in]`, W `[in, out]` frozen.
    fn linear_kept_inputs(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        s: Slicing,
    ) -> FloatTensor<Self>;

    /// The MLP `GELU(x·W₁ + b₁)·W₂ + b₂` with its hidden channels cut to `s.kept` on the
    /// patch rows (W₁'s columns, W₂'s rows) and whole on the prefix rows; frozen weights, no
    /// adapters. x `[r, d]`, W₁ `[d, m]`, W₂ `[m, d]`.
    fn mlp_kept_hidden(
        x: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        b2: FloatTensor<Self>,
        s: Slicing,
    ) -> FloatTensor<Self>;
}

/// A frozen weight for one batch: its kept channels cut out contiguously (columns or rows), for
/// the patch rows' product, and the whole weight (shared, not copied) for the prefix rows'.
struct Cut {
    kept: Vec<f32>,
    full: FlexTensor,
}

impl std::fmt::Debug for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cut({} kept values)", self.kept.len())
    }
}

fn dims2(t: &FlexTensor) -> [usize; 2] {
    let d = t.layout().shape();
    assert_eq!(d.len(), 2, "sliced linear: 2-D tensors expected, got {d:?}");
    [d[0], d[1]]
}

/// `into` as a tensor whose whole buffer is its values, to write in place: copied only when
/// strided or a view (`to_contiguous`), or later by `storage_mut` when shared.
fn writable(into: FlexTensor) -> FlexTensor {
    // `into` is dropped on return, so an unshared buffer stays unshared.
    into.to_contiguous()
}

/// The prefix rows of `a` (rows of `width`) with the kept columns zeroed: what the prefix rows
/// add through the skipped channels, multiplied with the whole weight (a few rows: cheaper
/// than cutting out the skipped part of the weight).
fn prefix_skipped(a: &[f32], width: usize, rows: &[usize], s: &Slicing) -> Vec<f32> {
    let mut p = pick_rows(a, width, rows);
    zero_columns(&mut p, width, &s.kept);
    p
}

fn kept_outputs(
    x: &FlexTensor,
    into: FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    s: &Slicing,
) -> (FlexTensor, Cut) {
    let ([r, d_in], [w_in, d_out]) = (dims2(x), dims2(weight));
    assert_eq!(
        dims2(&into),
        [r, d_out],
        "sliced linear: `into` is not [r, out]"
    );
    assert_eq!(d_in, w_in, "sliced linear: x and W disagree");
    let (xv, w, bias) = (values(x), values(weight), values(bias));
    let kk = s.kept.len();
    let cut = Cut {
        kept: columns(&w, d_out, &s.kept),
        full: weight.clone(),
    };
    let mut y = writable(into);
    let out = y.storage_mut::<f32>();
    // Every row, its kept columns.
    let t = product(
        Mat::rows(&xv, 0, d_in),
        Mat::rows(&cut.kept, 0, kk),
        r,
        d_in,
        kk,
    );
    add_columns(out, d_out, &s.kept, &t, &pick(&bias, &s.kept));
    // The prefix rows, their skipped columns (of their whole product).
    let rows = s.prefix_rows(r);
    let xp = pick_rows(&xv, d_in, &rows);
    let tp = product(
        Mat::rows(&xp, 0, d_in),
        Mat::rows(&w, 0, d_out),
        rows.len(),
        d_in,
        d_out,
    );
    add_cells(out, d_out, &rows, &s.skipped, &tp, &bias);
    (y, cut)
}

/// The gradient of [`SlicedLinear::linear_kept_outputs`]'s x (`into`'s is `dy` itself).
fn kept_outputs_dx(dy: &[f32], cut: &Cut, s: &Slicing) -> Vec<f32> {
    let [d_in, d_out] = dims2(&cut.full);
    let r = dy.len() / d_out;
    let kk = s.kept.len();
    let dyk = columns(dy, d_out, &s.kept);
    let wk = Mat::rows(&cut.kept, 0, kk).t();
    let mut dx = product(Mat::rows(&dyk, 0, kk), wk, r, kk, d_in);
    let rows = s.prefix_rows(r);
    let dyp = prefix_skipped(dy, d_out, &rows, s);
    let w = values(&cut.full);
    let t = product(
        Mat::rows(&dyp, 0, d_out),
        Mat::rows(&w, 0, d_out).t(),
        rows.len(),
        d_out,
        d_in,
    );
    add_rows(&mut dx, d_in, &rows, &t);
    dx
}

fn kept_inputs(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    s: &Slicing,
) -> (FlexTensor, Cut) {
    let ([r, d_in], [w_in, d_out]) = (dims2(x), dims2(weight));
    assert_eq!(d_in, w_in, "sliced linear: x and W disagree");
    let (xv, w) = (values(x), values(weight));
    let kk = s.kept.len();
    let cut = Cut {
        kept: pick_rows(&w, d_out, &s.kept),
        full: weight.clone(),
    };
    let mut y = repeat_rows(&values(bias), r);
    let xk = columns(&xv, d_in, &s.kept);
    let wk = Mat::rows(&cut.kept, 0, d_out);
    product_into(&mut y, Mat::rows(&xk, 0, kk), wk, r, kk, d_out);
    let rows = s.prefix_rows(r);
    let xp = prefix_skipped(&xv, d_in, &rows, s);
    let t = product(
        Mat::rows(&xp, 0, d_in),
        Mat::rows(&w, 0, d_out),
        rows.len(),
        d_in,
        d_out,
    );
    add_rows(&mut y, d_out, &rows, &t);
    (flex_tensor(y, [r, d_out]), cut)
}

/// The gradient of [`SlicedLinear::linear_kept_inputs`]'s x.
fn kept_inputs_dx(dy: &[f32], cut: &Cut, s: &Slicing) -> Vec<f32> {
    let [d_in, d_out] = dims2(&cut.full);
    let r = dy.len() / d_out;
    let kk = s.kept.len();
    let wk = Mat::rows(&cut.kept, 0, d_out).t();
    let t = product(Mat::rows(dy, 0, d_out), wk, r, d_out, kk);
    let mut dx = spread_columns(&t, r, d_in, &s.kept);
    let rows = s.prefix_rows(r);
    let dyp = pick_rows(dy, d_out, &rows);
    let w = values(&cut.full);
    let t = product(
        Mat::rows(&dyp, 0, d_out),
        Mat::rows(&w, 0, d_out).t(),
        rows.len(),
        d_out,
        d_in,
    );
    // Those cells of dx are 0 so far: adding is setting.
    add_cells(&mut dx, d_in, &rows, &s.skipped, &t, &vec![0.0; d_in]);
    dx
}

/// What the sliced MLP's backward needs: fc1 and fc2, the kept pre-activations of every row,
/// and all pre-activations of the prefix rows.
#[derive(Debug)]
struct MlpSaved {
    fc1: Cut,
    fc2: Cut,
    h: FlexTensor,
    h_prefix: FlexTensor,
}

fn mlp_forward(
    x: &FlexTensor,
    [w1, b1, w2, b2]: [&FlexTensor; 4],
    s: &Slicing,
) -> (FlexTensor, MlpSaved) {
    let ([r, d], [w1_in, m]) = (dims2(x), dims2(w1));
    assert!(
        w1_in == d && dims2(w2) == [m, d],
        "sliced MLP: x, W₁ and W₂ disagree"
    );
    let xv = values(x);
    let (b1v, b2v) = (values(b1), values(b2));
    let fc1 = Cut {
        kept: columns(&values(w1), m, &s.kept),
        full: w1.clone(),
    };
    let fc2 = Cut {
        kept: pick_rows(&values(w2), d, &s.kept),
        full: w2.clone(),
    };
    let kk = s.kept.len();
    // Every row, the kept hidden channels: h = x·W₁ₖ, then h += b₁ₖ and g = GELU(h) in one pass.
    let w1k = Mat::rows(&fc1.kept, 0, kk);
    let mut h = product(Mat::rows(&xv, 0, d), w1k, r, d, kk);
    let g = bias_gelu(&mut h, &pick(&b1v, &s.kept));
    let (h, g) = (flex_tensor(h, [r, kk]), flex_tensor(g, [r, kk]));
    let mut y = repeat_rows(&b2v, r);
    let w2k = Mat::rows(&fc2.kept, 0, d);
    product_into(&mut y, Mat::rows(&values(&g), 0, kk), w2k, r, kk, d);
    // The prefix rows, through the skipped hidden channels.
    let rows = s.prefix_rows(r);
    let p = rows.len();
    let xp = pick_rows(&xv, d, &rows);
    let w1v = values(w1);
    let mut hp = product(Mat::rows(&xp, 0, d), Mat::rows(&w1v, 0, m), p, d, m);
    let mut gp = bias_gelu(&mut hp, &b1v);
    zero_columns(&mut gp, m, &s.kept);
    let h_prefix = flex_tensor(hp, [p, m]);
    let w2v = values(w2);
    let t = product(Mat::rows(&gp, 0, m), Mat::rows(&w2v, 0, d), p, m, d);
    add_rows(&mut y, d, &rows, &t);
    let saved = MlpSaved {
        fc1,
        fc2,
        h,
        h_prefix,
    };
    (flex_tensor(y, [r, d]), saved)
}

/// The gradient of [`SlicedLinear::mlp_kept_hidden`]'s x.
fn mlp_backward(dy: &[f32], d: usize, saved: &MlpSaved, s: &Slicing) -> Vec<f32> {
    let r = dy.len() / d;
    let kk = s.kept.len();
    let w2k = Mat::rows(&saved.fc2.kept, 0, d).t();
    let dg = product(Mat::rows(dy, 0, d), w2k, r, d, kk);
    let dh = Flex::gelu_backward(saved.h.clone(), flex_tensor(dg, [r, kk]));
    let w1k = Mat::rows(&saved.fc1.kept, 0, kk).t();
    let mut dx = product(Mat::rows(&values(&dh), 0, kk), w1k, r, kk, d);
    // The prefix rows, through the skipped hidden channels.
    let rows = s.prefix_rows(r);
    let p = rows.len();
    let m = dims2(&saved.h_prefix)[1];
    let dyp = pick_rows(dy, d, &rows);
    let w2 = values(&saved.fc2.full);
    let mut dgp = product(Mat::rows(&dyp, 0, d), Mat::rows(&w2, 0, d).t(), p, d, m);
    zero_columns(&mut dgp, m, &s.kept);
    let dhp = Flex::gelu_backward(saved.h_prefix.clone(), flex_tensor(dgp, [p, m]));
    let w1 = values(&saved.fc1.full);
    let t = product(
        Mat::rows(&values(&dhp), 0, m),
        Mat::rows(&w1, 0, m).t(),
        p,
        m,
        d,
    );
    add_rows(&mut dx, d, &rows, &t);
    dx
}

impl SlicedLinear for Flex {
    fn linear_kept_outputs(
        x: FlexTensor,
        into: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        s: Slicing,
    ) -> FlexTensor {
        kept_outputs(&x, into, &weight, &bias, &s).0
    }

    fn linear_kept_inputs(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        s: Slicing,
    ) -> FlexTensor {
        kept_inputs(&x, &weight, &bias, &s).0
    }

    fn mlp_kept_hidden(
        x: FlexTensor,
        w1: FlexTensor,
        b1: FlexTensor,
        w2: FlexTensor,
        b2: FlexTensor,
        s: Slicing,
    ) -> FlexTensor {
        mlp_forward(&x, [&w1, &b1, &w2, &b2], &s).0
    }
}

/// The backward of a sliced linear; its state is the weight's cut and the slicing (x's
/// shape follows from the gradient's rows and the weight's).
#[derive(Debug)]
struct KeptOutputsBackward;

#[derive(Debug)]
struct KeptInputsBackward;

type SlicedState = (Arc<Cut>, Slicing);

impl Backward<Flex, 2> for KeptOutputsBackward {
    type State = SlicedState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, into_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (cut, s) = ops.state;
        if let Some(node) = x_node {
            let (r, d_in) = (dims2(&grad)[0], dims2(&cut.full)[0]);
            let dx = kept_outputs_dx(&values(&grad), &cut, &s);
            grads.register::<Flex>(node.id, flex_tensor(dx, [r, d_in]));
        }
        if let Some(node) = into_node {
            grads.register::<Flex>(node.id, grad);
        }
    }
}

impl Backward<Flex, 1> for KeptInputsBackward {
    type State = SlicedState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (cut, s) = ops.state;
        if let Some(node) = x_node {
            let (r, d_in) = (dims2(&grad)[0], dims2(&cut.full)[0]);
            let dx = kept_inputs_dx(&values(&grad), &cut, &s);
            grads.register::<Flex>(node.id, flex_tensor(dx, [r, d_in]));
        }
    }
}

#[derive(Debug)]
struct MlpKeptHiddenBackward;

impl Backward<Flex, 1> for MlpKeptHiddenBackward {
    type State = (Arc<MlpSaved>, Slicing);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (saved, s) = ops.state;
        if let Some(node) = x_node {
            let [r, d] = dims2(&grad);
            let dx = mlp_backward(&values(&grad), d, &saved, &s);
            grads.register::<Flex>(node.id, flex_tensor(dx, [r, d]));
        }
    }
}

/// The ops compute no weight gradient: a weight that wants one is a caller's mistake
/// ([`frozen`] says when the ops apply).
fn assert_frozen<C: CheckpointStrategy>(
    weight: &FloatTensor<Autodiff<Flex, C>>,
    bias: &FloatTensor<Autodiff<Flex, C>>,
) {
    assert!(
        !Autodiff::<Flex, C>::float_is_require_grad(weight)
            && !Autodiff::<Flex, C>::float_is_require_grad(bias),
        "sliced linear: the weights must be frozen"
    );
}

impl<C: CheckpointStrategy> SlicedLinear for Autodiff<Flex, C> {
    fn linear_kept_outputs(
        x: FloatTensor<Self>,
        into: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        s: Slicing,
    ) -> FloatTensor<Self> {
        assert_frozen::<C>(&weight, &bias);
        match KeptOutputsBackward
            .prepare::<C>([x.node(), into.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, cut) = kept_outputs(
                    x.primitive(),
                    into.into_primitive(),
                    weight.primitive(),
                    bias.primitive(),
                    &s,
                );
                prep.finish((Arc::new(cut), s), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::linear_kept_outputs(
                x.into_primitive(),
                into.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                s,
            )),
        }
    }

    fn linear_kept_inputs(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        s: Slicing,
    ) -> FloatTensor<Self> {
        assert_frozen::<C>(&weight, &bias);
        match KeptInputsBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, cut) = kept_inputs(x.primitive(), weight.primitive(), bias.primitive(), &s);
                prep.finish((Arc::new(cut), s), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::linear_kept_inputs(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                s,
            )),
        }
    }

    fn mlp_kept_hidden(
        x: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        b2: FloatTensor<Self>,
        s: Slicing,
    ) -> FloatTensor<Self> {
        assert_frozen::<C>(&w1, &b1);
        assert_frozen::<C>(&w2, &b2);
        match MlpKeptHiddenBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let weights = [
                    w1.primitive(),
                    b1.primitive(),
                    w2.primitive(),
                    b2.primitive(),
                ];
                let (y, saved) = mlp_forward(x.primitive(), weights, &s);
                prep.finish((Arc::new(saved), s), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::mlp_kept_hidden(
                x.into_primitive(),
                w1.into_primitive(),
                b1.into_primitive(),
                w2.into_primitive(),
                b2.into_primitive(),
                s,
            )),
        }
    }
}

/// Whether the sliced ops may run a layer with this weight and bias: f32 on flex, frozen.
pub fn frozen(weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> bool {
    super::fused::applies(weight)
        && !weight.is_require_grad()
        && !bias.is_some_and(Tensor::is_require_grad)
}

/// [`SlicedLinear::linear_kept_outputs`] on tensors, no bias meaning zeros. Differentiable in
/// `x` and `into`.
pub fn linear_kept_outputs(
    x: Tensor<2>,
    into: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    s: Slicing,
) -> Tensor<2> {
    let bias = bias.unwrap_or_else(|| zero_bias(&weight));
    Tensor::from_dispatch(<Dispatch as SlicedLinear>::linear_kept_outputs(
        x.into_dispatch(),
        into.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        s,
    ))
}

/// [`SlicedLinear::linear_kept_inputs`] on tensors, no bias meaning zeros. Differentiable in
/// `x`.
pub fn linear_kept_inputs(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    s: Slicing,
) -> Tensor<2> {
    let bias = bias.unwrap_or_else(|| zero_bias(&weight));
    Tensor::from_dispatch(<Dispatch as SlicedLinear>::linear_kept_inputs(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        s,
    ))
}

/// [`SlicedLinear::mlp_kept_hidden`] on tensors, no bias meaning zeros. Differentiable in `x`.
pub fn mlp_kept_hidden(
    x: Tensor<2>,
    [w1, w2]: [Tensor<2>; 2],
    [b1, b2]: [Option<Tensor<1>>; 2],
    s: Slicing,
) -> Tensor<2> {
    let b1 = b1.unwrap_or_else(|| zero_bias(&w1));
    let b2 = b2.unwrap_or_else(|| zero_bias(&w2));
    Tensor::from_dispatch(<Dispatch as SlicedLinear>::mlp_kept_hidden(
        x.into_dispatch(),
        w1.into_dispatch(),
        b1.into_dispatch(),
        w2.into_dispatch(),
        b2.into_dispatch(),
        s,
    ))
}

fn zero_bias(weight: &Tensor<2>) -> Tensor<1> {
    Tensor::zeros([weight.dims()[1]], &weight.device())
}

/// Rows per task of the row-parallel copies.
const ROWS: usize = 64;

/// `a` (rows of `width`) cut to the columns `idx`, row-major.
fn columns(a: &[f32], width: usize, idx: &[usize]) -> Vec<f32> {
    let k = idx.len();
    let rows = a.len() / width.max(1);
    let mut out = Vec::with_capacity(rows * k);
    if k > 0 {
        out.spare_capacity_mut()
            .par_chunks_mut(ROWS * k)
            .zip(a.par_chunks(ROWS * width))
            .for_each(|(out, a)| {
                for (o, a) in out.chunks_exact_mut(k).zip(a.chunks_exact(width)) {
                    for (o, &c) in o.iter_mut().zip(idx) {
                        o.write(a[c]);
                    }
                }
            });
    }
    // SAFETY: each of the `rows` rows wrote its k values (none when k = 0).
    unsafe { out.set_len(rows * k) };
    out
}

/// `[rows, width]` rows holding `t`'s rows (`[rows, idx.len()]`) in the columns `idx`, 0
/// elsewhere: written row by row, no separate zero-fill pass.
fn spread_columns(t: &[f32], rows: usize, width: usize, idx: &[usize]) -> Vec<f32> {
    let k = idx.len();
    if k == 0 {
        return vec![0.0; rows * width];
    }
    let mut out = Vec::with_capacity(rows * width);
    out.spare_capacity_mut()
        .par_chunks_mut(ROWS * width)
        .zip(t.par_chunks(ROWS * k))
        .for_each(|(out, t)| {
            for (o, t) in out.chunks_exact_mut(width).zip(t.chunks_exact(k)) {
                o.fill(MaybeUninit::new(0.0));
                for (&c, &t) in idx.iter().zip(t) {
                    o[c].write(t);
                }
            }
        });
    // SAFETY: every row was filled, then given its values.
    unsafe { out.set_len(rows * width) };
    out
}

/// `h += bias` row by row, and GELU of the result, on the pool: one pass for what a bias
/// broadcast, the product's re-read of it and a GELU pass would do in three.
fn bias_gelu(h: &mut [f32], bias: &[f32]) -> Vec<f32> {
    let width = bias.len();
    let mut g = Vec::with_capacity(h.len());
    if width > 0 {
        g.spare_capacity_mut()
            .par_chunks_mut(ROWS * width)
            .zip(h.par_chunks_mut(ROWS * width))
            .for_each(|(g, h)| add_bias_gelu(h, g, bias));
    }
    // SAFETY: every row of g was written (none when width = 0).
    unsafe { g.set_len(h.len()) };
    g
}

multiversion! {
    /// The rows of `h` (`bias.len()` wide) plus `bias`, in place, and their GELU into `g`.
    fn add_bias_gelu(h: &mut [f32], g: &mut [MaybeUninit<f32>], bias: &[f32]) {
        for (h, g) in h.chunks_exact_mut(bias.len()).zip(g.chunks_exact_mut(bias.len())) {
            for ((h, g), &b) in h.iter_mut().zip(g).zip(bias) {
                *h += b;
                g.write(gelu_f32(*h));
            }
        }
    }
}

/// `rows` copies of `v`, on the pool (a bias broadcast before a product adds into it).
fn repeat_rows(v: &[f32], rows: usize) -> Vec<f32> {
    let width = v.len();
    let mut out = Vec::with_capacity(rows * width);
    if width > 0 {
        out.spare_capacity_mut()
            .par_chunks_mut(ROWS * width)
            .for_each(|out| {
                for o in out.chunks_exact_mut(width) {
                    for (o, &v) in o.iter_mut().zip(v) {
                        o.write(v);
                    }
                }
            });
    }
    // SAFETY: every row was written (none when width = 0).
    unsafe { out.set_len(rows * width) };
    out
}

fn zero_columns(a: &mut [f32], width: usize, cols: &[usize]) {
    for row in a.chunks_exact_mut(width) {
        for &c in cols {
            row[c] = 0.0;
        }
    }
}

/// `y[:, idx[j]] += t[:, j] + bias[j]`, y rows of `width`, t rows of `idx.len()`.
fn add_columns(y: &mut [f32], width: usize, idx: &[usize], t: &[f32], bias: &[f32]) {
    let k = idx.len();
    if k == 0 {
        return;
    }
    y.par_chunks_mut(ROWS * width)
        .zip(t.par_chunks(ROWS * k))
        .for_each(|(y, t)| {
            for (y, t) in y.chunks_exact_mut(width).zip(t.chunks_exact(k)) {
                for ((&c, &t), &b) in idx.iter().zip(t).zip(bias) {
                    y[c] += t + b;
                }
            }
        });
}

/// `y[rows[i], c] += t[i, c] + bias[c]` for the columns `cols`; y and t rows of `width`.
fn add_cells(y: &mut [f32], width: usize, rows: &[usize], cols: &[usize], t: &[f32], bias: &[f32]) {
    for (&row, t) in rows.iter().zip(t.chunks_exact(width)) {
        let y = &mut y[row * width..(row + 1) * width];
        for &c in cols {
            y[c] += t[c] + bias[c];
        }
    }
}

/// `y[rows[i]] += t[i]`, rows of `width`.
fn add_rows(y: &mut [f32], width: usize, rows: &[usize], t: &[f32]) {
    for (&row, t) in rows.iter().zip(t.chunks_exact(width)) {
        for (y, t) in y[row * width..(row + 1) * width].iter_mut().zip(t) {
            *y += t;
        }
    }
}

fn pick(v: &[f32], idx: &[usize]) -> Vec<f32> {
    idx.iter().map(|&i| v[i]).collect()
}

/// The rows `idx` of `a` (rows of `width`), row-major, on the pool.
fn pick_rows(a: &[f32], width: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = vec![0.0; idx.len() * width];
    if width > 0 {
        out.par_chunks_mut(width)
            .zip(idx.par_iter())
            .with_min_len(ROWS)
            .for_each(|(o, &i)| o.copy_from_slice(&a[i * width..(i + 1) * width]));
    }
    out
}

/// `lhs (m × k) · rhs (k × n)`, row-major.
fn product(lhs: Mat, rhs: Mat, m: usize, k: usize, n: usize) -> Vec<f32> {
    if k == 0 {
        return vec![0.0; m * n];
    }
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: without `accumulate` the product writes all m × n elements and reads none.
    unsafe {
        product_raw(out.as_mut_ptr(), lhs, rhs, m, k, n, false);
        out.set_len(m * n);
    }
    out
}

/// `dst (m × n) += lhs (m × k) · rhs (k × n)`.
fn product_into(dst: &mut [f32], lhs: Mat, rhs: Mat, m: usize, k: usize, n: usize) {
    assert_eq!(dst.len(), m * n);
    // SAFETY: dst is an exclusive borrow of m × n initialised elements.
    unsafe { product_raw(dst.as_mut_ptr(), lhs, rhs, m, k, n, true) }
}

/// The product on the pool when large (flex's threshold).
///
/// # Safety
/// `dst` holds m × n elements no one else touches (initialised when `accumulate`); the
/// matrices lie inside their buffers (the callers build them over buffers of these shapes).
unsafe fn product_raw(
    dst: *mut f32,
    lhs: Mat,
    rhs: Mat,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let par = if m * n * k >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    unsafe { gemm_raw(m, n, k, dst, n as isize, lhs, rhs, 1.0, accumulate, par) }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Gradients, Tensor, TensorData};

    use burn::tensor::activation::gelu;

    use super::{Slicing, frozen, linear_kept_inputs, linear_kept_outputs, mlp_kept_hidden};
    use crate::rng::Rng;

    fn random<const D: usize>(shape: [usize; D], rng: &mut Rng, device: &Device) -> Tensor<D> {
        let v: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.normal() as f32)
            .collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    /// `[r, width]`: 1 on the prefix rows and on the kept columns, 0 elsewhere.
    fn mask(s: &Slicing, r: usize, width: usize, device: &Device) -> Tensor<2> {
        let v: Vec<f32> = (0..r * width)
            .map(|i| {
                let (row, c) = (i / width, i % width);
                (row % s.seq < s.prefix || s.kept.contains(&c)) as u8 as f32
            })
            .collect();
        Tensor::from_data(TensorData::new(v, [r, width]), device)
    }

    fn slicing(width: usize, keep_every: usize, prefix: usize, seq: usize) -> Slicing {
        let (kept, skipped): (Vec<usize>, Vec<usize>) =
            (0..width).partition(|c| c % keep_every != 1);
        Slicing {
            kept: kept.into(),
            skipped: skipped.into(),
            prefix,
            seq,
        }
    }

    fn max_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
        let scale: f32 = b.clone().abs().max().into_scalar::<f32>().max(1.0);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// Asserts that `fused` equals `reference` (≤ 1e-5 relative to the largest value, or
    /// absolute below 1), and so does x's gradient of Σ dy ⊙ output; both gradient sets.
    fn compare(
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

    /// Both ops equal the dense product with the skipped channels of the patch rows zeroed,
    /// forward and in their input gradients (burn's autodiff of that product), for no, one
    /// and two prefix rows, every channel kept, and sizes past the pool's thresholds.
    #[test]
    fn sliced_linears_equal_the_masked_dense_linear_forward_and_gradients() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::seed(3);
        let cases = [
            (5, 2, 12, 10, 3, 1),
            (5, 2, 12, 10, 2, 2),
            (4, 3, 9, 7, 3, 0),
            (6, 2, 8, 6, usize::MAX, 1),
            (130, 2, 192, 384, 3, 1),
        ];
        for (seq, images, d_in, d_out, keep_every, prefix) in cases {
            let r = seq * images;
            let x = random([r, d_in], &mut rng, &device).require_grad();
            let into = random([r, d_out], &mut rng, &device).require_grad();
            let w = random([d_in, d_out], &mut rng, &device);
            let b = random([d_out], &mut rng, &device);
            assert!(frozen(&w, Some(&b)));
            let dy = random([r, d_out], &mut rng, &device);
            let what = format!("seq {seq}, {d_in}→{d_out}, prefix {prefix}");

            // Kept outputs: into + (x·W + b) ⊙ mask.
            let s = slicing(d_out, keep_every, prefix, seq);
            let m = mask(&s, r, d_out, &device);
            let reference =
                into.clone() + (x.clone().matmul(w.clone()) + b.clone().unsqueeze()) * m;
            let fused = linear_kept_outputs(x.clone(), into.clone(), w.clone(), Some(b.clone()), s);
            let [gf, gr] = compare(fused, reference, &x, &dy, &format!("kept outputs, {what}"));
            let (di_f, di_r) = (into.grad(&gf).unwrap(), into.grad(&gr).unwrap());
            assert!(max_diff(di_f, di_r) < 1e-6, "kept outputs d(into), {what}");

            // Kept inputs: (x ⊙ mask)·W + b, and no bias.
            let w = random([d_in, d_out], &mut rng, &device);
            let s = slicing(d_in, keep_every, prefix, seq);
            let m = mask(&s, r, d_in, &device);
            for bias in [Some(b.clone()), None] {
                let masked = (x.clone() * m.clone()).matmul(w.clone());
                let reference = match &bias {
                    Some(b) => masked + b.clone().unsqueeze(),
                    None => masked,
                };
                let fused = linear_kept_inputs(x.clone(), w.clone(), bias, s.clone());
                compare(fused, reference, &x, &dy, &format!("kept inputs, {what}"));
            }
        }
    }

    /// The sliced MLP equals the dense MLP with the skipped hidden channels of the patch rows
    /// zeroed, forward and in x's gradient, for no, one and two prefix rows.
    #[test]
    fn sliced_mlp_equals_the_masked_dense_mlp_forward_and_gradient() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::seed(5);
        for (seq, images, d, m, keep_every, prefix) in [
            (5, 2, 6, 16, 3, 1),
            (4, 3, 8, 12, 2, 2),
            (3, 2, 5, 9, 4, 0),
            (130, 2, 96, 384, 2, 1),
        ] {
            let r = seq * images;
            let x = random([r, d], &mut rng, &device).require_grad();
            let (w1, w2) = (
                random([d, m], &mut rng, &device),
                random([m, d], &mut rng, &device),
            );
            let (b1, b2) = (
                random([m], &mut rng, &device),
                random([d], &mut rng, &device),
            );
            let s = slicing(m, keep_every, prefix, seq);
            let hidden = gelu(x.clone().matmul(w1.clone()) + b1.clone().unsqueeze());
            let reference =
                (hidden * mask(&s, r, m, &device)).matmul(w2.clone()) + b2.clone().unsqueeze();
            let fused = mlp_kept_hidden(x.clone(), [w1, w2], [Some(b1), Some(b2)], s);
            let dy = random([r, d], &mut rng, &device);
            let what = format!("sliced MLP, seq {seq}, {d}→{m}, prefix {prefix}");
            compare(fused, reference, &x, &dy, &what);
        }
    }

    /// A weight that wants a gradient, or a non-flex-f32 one, is left to the op-by-op path.
    #[test]
    fn trainable_weights_are_not_sliced_here() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::seed(4);
        let w = random([4, 3], &mut rng, &device);
        let b = random([3], &mut rng, &device);
        assert!(frozen(&w, Some(&b)) && frozen(&w, None));
        assert!(!frozen(&w.clone().require_grad(), Some(&b)));
        assert!(!frozen(&w, Some(&b.require_grad())));
        let w64 = w.cast(burn::tensor::DType::F64);
        assert!(!frozen(&w64, None));
    }
}
