//! Datasets: readers for the on-disk formats vitrs trains on, the CIFAR download, and an
//! in-memory synthetic set for smoke tests. Every reader returns a [`Dataset`] of u8 HWC images.

pub mod augment;
pub mod batch;
pub mod dataset;
pub mod formats;
pub mod load;
pub mod loader;
pub mod recipe;

pub use dataset::Dataset;

/// Which half of a dataset to read. `Test` is the held-out split: CIFAR's and MNIST's test
/// set, an image folder's `val/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

// Per-channel mean and standard deviation of pixel values scaled to [0, 1], one entry per
// image channel: the input transform subtracts the mean and divides by the std.

pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// The figure the project's reference runs use (the widely copied per-image-averaged one, not
/// the per-pixel 0.247/0.243/0.261), kept for comparability.
pub const CIFAR10_STD: [f32; 3] = [0.2023, 0.1994, 0.2010];

pub const CIFAR100_MEAN: [f32; 3] = [0.5071, 0.4865, 0.4409];
pub const CIFAR100_STD: [f32; 3] = [0.2673, 0.2564, 0.2762];

pub const FASHION_MNIST_MEAN: [f32; 1] = [0.2860];
pub const FASHION_MNIST_STD: [f32; 1] = [0.3530];

pub const MNIST_MEAN: [f32; 1] = [0.1307];
pub const MNIST_STD: [f32; 1] = [0.3081];

/// For image folders and for pretrained weights, which were trained with these statistics.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
