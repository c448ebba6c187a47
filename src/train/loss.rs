//! Losses. Targets are always soft distributions (label smoothing and Mixup/CutMix produce
//! them on the host, `data::augment::mix`), so one cross-entropy serves every recipe.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

/// `mean_i −Σ_k t_ik · log softmax(z_i)_k`, PyTorch's `cross_entropy` with soft targets.
pub fn soft_cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let [b, _] = logits.dims();
    (targets * log_softmax(logits, 1)).sum().neg() / b as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::mix::soft_targets;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn label_smoothed_loss_matches_hand_computation() {
        let device = Device::flex();
        // One sample, 3 classes, logits (1, 2, 3), label 2, smoothing 0.1.
        let logits =
            Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [1, 3]), &device);
        let t = soft_targets(&[2], 3, 0.1);
        assert_eq!(t, vec![0.1 / 3.0, 0.1 / 3.0, 0.9 + 0.1 / 3.0]);
        let targets = Tensor::<2>::from_data(TensorData::new(t, [1, 3]), &device);
        let loss: f32 = soft_cross_entropy(logits, targets).into_scalar();
        // log-sum-exp(1,2,3) = 3.40760596; log p = z − lse.
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let lp = [1.0 - lse, 2.0 - lse, 3.0 - lse];
        let expect = -(0.1 / 3.0 * lp[0] + 0.1 / 3.0 * lp[1] + (0.9 + 0.1 / 3.0) * lp[2]);
        assert!((loss as f64 - expect).abs() < 1e-6, "{loss} vs {expect}");
        assert!((expect - 0.50760596).abs() < 0.1); // sanity: near the unsmoothed 0.4076
    }
}
