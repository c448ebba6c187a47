//! MNIST / Fashion-MNIST IDX files, raw or gzipped: the input is an image file and a label
//! file, split at the offset given by its first two bytes.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vitrs::data::formats::idx::{MNIST_CLASSES, parse_idx};

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let at = (u16::from_le_bytes(*head) as usize).min(rest.len());
    let (images, labels) = rest.split_at(at);
    let paths = (Path::new("fuzz-images"), Path::new("fuzz-labels"));
    match parse_idx(images, paths.0, labels, paths.1, &MNIST_CLASSES) {
        Ok(ds) => {
            assert!(!ds.is_empty());
            assert_eq!(ds.channels, 1);
            assert!(ds.height > 0 && ds.width > 0);
            assert_eq!(ds.images.len(), ds.len() * ds.image_bytes());
            assert_eq!(ds.num_classes(), MNIST_CLASSES.len());
            assert!(ds.labels.iter().all(|&l| (l as usize) < ds.num_classes()));
            // Every image is addressable.
            assert_eq!(ds.image(ds.len() - 1).len(), ds.image_bytes());
        }
        Err(e) => common::assert_one_line(&e),
    }
});
