//! SparseLoRA's sliced MLP as one flex op with its own backward pass: `GELU(x·W₁ + b₁)·W₂ + b₂`
//! with the hidden channels cut to the kept ones on the patch rows and whole on the prefix
//! (class token) rows, so its hidden activations exist only for the kept channels. For a
//! block without adapters or dropout; the weights frozen, as for the sliced linears of
//! [`super::sliced_linear`], whose slicing, weight cuts and row handling it shares.

use std::sync::Arc;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use burn_flex::FlexTensor;

use super::buffers::{
    add_rows, bias_gelu, columns, pick, pick_rows, product, product_into, repeat_rows, zero_columns,
};
use super::sliced_linear::{Cut, Slicing, assert_frozen, dims2, zero_bias};
use crate::model::fused::{Mat, flex_tensor, values};

#[backend_extension(Flex, Autodiff)]
pub trait SlicedMlp: Backend {
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

/// The gradient of [`SlicedMlp::mlp_kept_hidden`]'s x.
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

impl SlicedMlp for Flex {
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

impl<C: CheckpointStrategy> SlicedMlp for Autodiff<Flex, C> {
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

/// [`SlicedMlp::mlp_kept_hidden`] on tensors, no bias meaning zeros. Differentiable in `x`.
pub fn mlp_kept_hidden(
    x: Tensor<2>,
    [w1, w2]: [Tensor<2>; 2],
    [b1, b2]: [Option<Tensor<1>>; 2],
    s: Slicing,
) -> Tensor<2> {
    let b1 = b1.unwrap_or_else(|| zero_bias(&w1));
    let b2 = b2.unwrap_or_else(|| zero_bias(&w2));
    Tensor::from_dispatch(<Dispatch as SlicedMlp>::mlp_kept_hidden(
        x.into_dispatch(),
        w1.into_dispatch(),
        b1.into_dispatch(),
        w2.into_dispatch(),
        b2.into_dispatch(),
        s,
    ))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;
    use burn::tensor::activation::gelu;

    use super::mlp_kept_hidden;
    use crate::model::sparse::fixtures::{compare, mask, random, slicing};
    use crate::rng::Rng;

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
}
