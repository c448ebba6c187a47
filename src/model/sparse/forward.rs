//! The sparse forward of a block: attention and MLP with the frozen weights sliced to the
//! batch's kept channels for the patch rows (the class tokens' rows and the adapters dense),
//! through the fused sliced ops on flex f32 and op by op (`select`, `select_assign`)
//! elsewhere.

use burn::tensor::activation::gelu;
use burn::tensor::module::linear;
use burn::tensor::{IndexingUpdateOp, Tensor};

use super::{AttnPlan, Keep, SparseLora};
use super::{sliced_linear, sliced_mlp};
use crate::model::layers::{Attention, Block, Ctx, Linear, Mlp, drop_path, dropout, scaled};

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
    if sliced_linear::frozen(&w, bias.as_ref()) {
        let s = keep.slicing(prefix, n);
        return sliced_linear::linear_kept_outputs(rows, into, w, bias, s).reshape([b, n, d_out]);
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
    if sliced_linear::frozen(&w, bias.as_ref()) {
        let rows = x.clone().reshape([b * n, d_in]);
        let base = sliced_linear::linear_kept_inputs(rows, w, bias, keep.slicing(prefix, n));
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
        if plain
            && sliced_linear::frozen(&w1, bias1.as_ref())
            && sliced_linear::frozen(&w2, bias2.as_ref())
        {
            let rows = x.reshape([b * n, d]);
            let s = keep.slicing(prefix, n);
            return sliced_mlp::mlp_kept_hidden(rows, [w1, w2], [bias1, bias2], s)
                .reshape([b, n, d]);
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
        let x = x + drop_path(scaled(a, &self.ls1), self.drop_path, ctx);
        let h = self.norm2.forward(x.clone());
        let keep = sp.mlp_plan(i, &h);
        let m = self.mlp.forward_sparse(h, ctx, keep.as_ref(), sp.prefix);
        x + drop_path(scaled(m, &self.ls2), self.drop_path, ctx)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu;
    use burn::tensor::module::linear;
    use burn::tensor::{DType, Tensor, TensorData};

    use crate::model::layers::{Attention, Ctx, Mlp};
    use crate::model::params::gradients;
    use crate::model::sparse::fixtures::{PREFIX, setup_model_as};
    use crate::model::sparse::sliced_linear;
    use crate::model::sparse::{AttnPlan, Keep};
    use crate::rng::Rng;

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
            let fused = sliced_linear::frozen(&mlp.fc1.weight.val(), None) && plain;
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
                sliced_linear::frozen(&attn.qkv.weight.val(), None),
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
}
