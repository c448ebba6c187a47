//! The in-memory dataset every reader produces: u8 images, HWC, one label each.

/// A whole split held in memory as raw bytes. CIFAR-10 train is 150 MB this way; the
/// transforms work on u8 and only the batch is turned into floats.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `len * height * width * channels` bytes, each image HWC-interleaved, row-major.
    pub images: Vec<u8>,
    /// One class index per image, `< class_names.len()`.
    pub labels: Vec<u16>,
    pub height: usize,
    pub width: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    pub class_names: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_bytes(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// The HWC bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.images[i * n..(i + 1) * n]
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The first `n` images (or all, if fewer).
    pub fn truncate(mut self, n: usize) -> Self {
        if n < self.len() {
            self.images.truncate(n * self.image_bytes());
            self.labels.truncate(n);
        }
        self
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut images = Vec::with_capacity(indices.len() * self.image_bytes());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            height: self.height,
            width: self.width,
            channels: self.channels,
            class_names: self.class_names.clone(),
        }
    }
}
