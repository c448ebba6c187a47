//! A batch on the host, as the loader makes it and a training step takes it.

use burn::tensor::{Device, Tensor, TensorData};

/// A batch on the host: normalised NCHW images, soft targets and the hard labels.
#[derive(Clone, Debug)]
pub struct HostBatch {
    pub images: Vec<f32>,
    pub shape: [usize; 4],
    /// `n × num_classes` soft targets (smoothed, possibly mixed).
    pub targets: Vec<f32>,
    pub num_classes: usize,
    pub labels: Vec<usize>,
}

impl HostBatch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn images_tensor(&self, device: &Device) -> Tensor<4> {
        Tensor::from_data(TensorData::new(self.images.clone(), self.shape), device)
    }

    pub fn targets_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.targets.clone(), [self.len(), self.num_classes]),
            device,
        )
    }

    /// Rows of `self` then `other` (a task batch and its replayed examples).
    pub fn concat(mut self, other: HostBatch) -> HostBatch {
        self.images.extend(other.images);
        self.targets.extend(other.targets);
        self.labels.extend(other.labels);
        self.shape[0] += other.shape[0];
        self
    }
}
