//! CIFAR binary batches (`data_batch_N.bin`, `train.bin`): fixed-size records of label
//! byte(s) and a planar 32x32x3 image.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vitrs::data::formats::cifar::{CifarKind, IMAGE_BYTES, LabelType, parse_binary};

mod common;

fuzz_target!(|data: &[u8]| {
    for (kind, label_type, label_bytes, label_at) in [
        (CifarKind::Ten, LabelType::Fine, 1, 0),
        (CifarKind::Hundred, LabelType::Fine, 2, 1),
        (CifarKind::Hundred, LabelType::Coarse, 2, 0),
    ] {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        let path = Path::new("fuzz.bin");
        match parse_binary(path, data, kind, label_type, &mut images, &mut labels) {
            Ok(()) => {
                let record = label_bytes + IMAGE_BYTES;
                let classes = kind.num_classes(label_type);
                assert!(!labels.is_empty());
                assert_eq!(labels.len() * record, data.len());
                assert_eq!(images.len(), labels.len() * IMAGE_BYTES);
                for (i, (&label, rec)) in labels.iter().zip(data.chunks_exact(record)).enumerate() {
                    assert!((label as usize) < classes);
                    assert_eq!(label, rec[label_at] as u16);
                    // Planar in, HWC out: pixel 0 of image i is (R, G, B) from three planes.
                    let planes = &rec[label_bytes..];
                    let hwc = &images[i * IMAGE_BYTES..];
                    assert_eq!(&hwc[..3], &[planes[0], planes[1024], planes[2048]]);
                }
            }
            Err(e) => common::assert_one_line(&e),
        }
    }
});
