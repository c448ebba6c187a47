//! The dataset formats on disk and their sources: CIFAR (binary batches and Python pickles,
//! read by a restricted unpickler), IDX (MNIST, Fashion-MNIST), image folders, the CIFAR
//! download, and the in-memory synthetic set. Every reader returns a
//! [`Dataset`](super::Dataset) of u8 HWC images.

pub mod cifar;
pub mod download;
pub mod idx;
pub mod imagefolder;
mod pickle;
pub mod synthetic;
