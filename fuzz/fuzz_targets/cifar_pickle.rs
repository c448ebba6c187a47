//! CIFAR Python pickles (`data_batch_N`, `test_batch`, `train`, `test`, `batches.meta`,
//! `meta`), read by vitrs' restricted unpickler.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vitrs::data::formats::cifar::{
    CifarKind, IMAGE_BYTES, LabelType, parse_pickle_batch, parse_pickle_class_names,
};

mod common;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.pickle");
    for (kind, label_type) in [
        (CifarKind::Ten, LabelType::Fine),
        (CifarKind::Hundred, LabelType::Fine),
        (CifarKind::Hundred, LabelType::Coarse),
    ] {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        match parse_pickle_batch(path, data, kind, label_type, &mut images, &mut labels) {
            Ok(()) => {
                assert!(!labels.is_empty());
                assert_eq!(images.len(), labels.len() * IMAGE_BYTES);
                let classes = kind.num_classes(label_type);
                assert!(labels.iter().all(|&l| (l as usize) < classes));
                // The image bytes come from the file, so there cannot be more of them.
                assert!(images.len() <= data.len());
            }
            Err(e) => common::assert_one_line(&e),
        }
        match parse_pickle_class_names(path, data, kind, label_type) {
            Ok(names) => {
                for n in &names {
                    assert!(!n.is_empty() && n.trim() == n);
                }
            }
            Err(e) => common::assert_one_line(&e),
        }
    }
});
