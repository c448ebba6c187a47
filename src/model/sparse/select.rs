//! Channel selection: per batch, the estimators score every channel of a sparse block from
//! its normalised input, and the top ones per layer (per head, for attention) are kept for
//! the whole batch. Each plan also adds to the run's sparsity statistics.

use burn::tensor::{DType, Tensor};

use super::estimate::{LowRank, gelu_norms, linear_norms, project};
use super::{AttnPlan, Keep, SparseLora};

impl SparseLora {
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
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu;
    use burn::tensor::module::linear;
    use burn::tensor::{DType, Device, Tensor, TensorData};

    use crate::model::params::map_params;
    use crate::model::sparse::SparseLora;
    use crate::model::sparse::fixtures::{
        PREFIX, column_norms, compose, orthonormal, setup_model, sparse_cfg,
    };
    use crate::rng::Rng;

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
}
