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
//! once. The MLP is one op of its own ([`super::sliced_mlp`]).
//!
//! The weights are frozen (SparseLoRA slices only the frozen base): no weight gradient is
//! computed, and the ops refuse a weight that requires one. Like [`crate::model::fused`],
//! these are flex and autodiff-over-flex backend extensions; other backends keep the op-by-op
//! forms in [`super::forward`].

use std::sync::Arc;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use burn_flex::FlexTensor;

use super::buffers::{
    add_cells, add_columns, add_rows, columns, pick, pick_rows, product, product_into, repeat_rows,
    spread_columns, zero_columns,
};
use crate::model::fused::{Mat, flex_tensor, values};

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
    pub(super) fn prefix_rows(&self, rows: usize) -> Vec<usize> {
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
}

/// A frozen weight for one batch: its kept channels cut out contiguously (columns or rows), for
/// the patch rows' product, and the whole weight (shared, not copied) for the prefix rows'.
pub(super) struct Cut {
    pub(super) kept: Vec<f32>,
    pub(super) full: FlexTensor,
}

impl std::fmt::Debug for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cut({} kept values)", self.kept.len())
    }
}

pub(super) fn dims2(t: &FlexTensor) -> [usize; 2] {
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

/// The ops compute no weight gradient: a weight that wants one is a caller's mistake
/// ([`frozen`] says when the ops apply).
pub(super) fn assert_frozen<C: CheckpointStrategy>(
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
}

/// Whether the sliced ops may run a layer with this weight and bias: f32 on flex, frozen.
pub fn frozen(weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> bool {
    crate::model::fused::applies(weight)
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

pub(super) fn zero_bias(weight: &Tensor<2>) -> Tensor<1> {
    Tensor::zeros([weight.dims()[1]], &weight.device())
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::{frozen, linear_kept_inputs, linear_kept_outputs};
    use crate::model::sparse::fixtures::{compare, mask, max_diff, random, slicing};
    use crate::rng::Rng;

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
