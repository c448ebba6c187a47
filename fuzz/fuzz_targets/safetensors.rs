//! safetensors weights (`--pretrained`, `--init-from`, checkpoints): the parser, then the
//! conversion of a timm / HF / ResNet state dict into a model description, then the model
//! built from it, as `--pretrained <file>.safetensors` runs them (issue 23, case 4: sizes
//! declared by zero-byte tensors used to reach the allocator).
#![no_main]
use std::path::Path;

use burn::tensor::Device;
use libfuzzer_sys::fuzz_target;
use vitrs::model::io::parse_safetensors;
use vitrs::weights::from_state_dict;

mod common;

fuzz_target!(|data: &[u8]| {
    let sd = match parse_safetensors(data) {
        Ok(sd) => sd,
        Err(e) => {
            assert!(!e.is_empty() && !e.chars().any(char::is_control), "{e:?}");
            return;
        }
    };
    for (name, t) in &sd {
        let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        assert_eq!(n, Some(t.data.len()), "tensor {name}");
        // Every element was stored in the file, in at least 2 bytes (f16/bf16).
        assert!(t.data.len() * 2 <= data.len());
    }
    // Without a config.json, and with the smallest one that lets HF weights and any width
    // through (so the conversions past the head-count check are fuzzed too).
    let config = serde_json::json!({"num_heads": 1, "num_attention_heads": 1});
    for config in [None, Some(&config)] {
        match from_state_dict(sd.clone(), config, None, Path::new("fuzz.safetensors")) {
            Ok(p) => {
                for (name, t) in &p.weights {
                    let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                    assert_eq!(n, Some(t.data.len()), "tensor {name}");
                }
                // The model those weights describe: built and filled, or one line.
                if let Err(e) = p.build(0, &Device::flex()) {
                    common::assert_one_line(&e);
                }
            }
            Err(e) => common::assert_one_line(&e),
        }
    }
});
