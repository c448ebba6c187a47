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
//!
//! Here: the configuration, the channel sets ([`Keep`], [`AttnPlan`]) and the run's state
//! ([`SparseLora`]). The rest, one job a file: [`svd`] (the randomized truncated SVD),
//! [`estimate`] (the low-rank estimators and their channel norms), `select` (the channel
//! sets of a batch), [`forward`] (the sparse forward of `Block`, `Attention` and `Mlp`), and
//! the fused flex ops [`sliced_linear`] and [`sliced_mlp`] (on the row and GEMM helpers of
//! `buffers`).

pub mod estimate;
pub mod forward;
mod select;
pub mod sliced_linear;
pub mod sliced_mlp;
pub mod svd;

mod buffers;
#[cfg(test)]
mod fixtures;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::VisionTransformer;
use crate::error::Result;
use estimate::BlockEstimator;
use sliced_linear::Slicing;

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

impl SparseLora {
    /// SVD estimators for the sparse blocks of `model` (its frozen base loaded), on `device`
    /// (the plain, non-autodiff device the estimates run on).
    pub fn new(model: &VisionTransformer, config: SparseConfig, device: &Device) -> Self {
        SparseLora {
            blocks: estimate::block_estimators(model, &config, device),
            config,
            prefix: model.config.num_prefix_tokens(),
            dim: model.config.embed_dim,
            num_heads: model.config.num_heads,
            stats: Mutex::new(Stats::default()),
        }
    }

    /// The estimator of block `i`, when it runs sparse.
    pub fn block(&self, i: usize) -> Option<&BlockEstimator> {
        self.blocks.get(i).and_then(Option::as_ref)
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

/// Set up SparseLoRA for a run whose adapters are in place.
pub fn setup(
    model: &VisionTransformer,
    config: SparseConfig,
    device: &Device,
) -> Result<Arc<SparseLora>> {
    let c = &model.config;
    if config.mlp > 0.0 && (c.act != crate::model::Act::Gelu || c.mlp != crate::model::MlpKind::Mlp)
    {
        return Err(crate::error::Error::Config(format!(
            "SparseLoRA's MLP estimator is built for GELU MLPs; this model's MLP is {:?} with {:?}: use --sparsity 0 (attention stays sparse) or --adapter lora",
            c.mlp, c.act
        )));
    }
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
    use burn::tensor::DType;

    use super::*;
    use crate::model::layers::Ctx;
    use crate::model::sparse::fixtures::{setup_model, sparse_cfg};
    use crate::rng::Rng;

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
