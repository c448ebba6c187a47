//! Inputs that crashed a reader or broke its one-line error, found by the `cargo fuzz`
//! targets in fuzz/ (or by reviewing the readers while writing them). Each must now be a clear
//! error; these run in the ordinary `cargo test`, so a regression shows without a fuzzer.

use std::collections::BTreeMap;
use std::path::Path;

use vitrs::data::formats::cifar::{CifarKind, LabelType, parse_pickle_batch};
use vitrs::error::Error;
use vitrs::model::io::{HostTensor, parse_safetensors};
use vitrs::weights::from_state_dict;

/// The message, checked to be one line without control characters (what the fuzz targets
/// assert about every error).
fn one_line(msg: String) -> String {
    assert!(
        !msg.chars().any(char::is_control),
        "not one clean line: {msg:?}"
    );
    msg
}

fn t(shape: &[usize]) -> HostTensor {
    let n = shape.iter().product();
    HostTensor {
        shape: shape.to_vec(),
        data: (0..n).map(|i| i as f32).collect(),
    }
}

fn sd(tensors: &[(&str, &[usize])]) -> BTreeMap<String, HostTensor> {
    tensors.iter().map(|(k, s)| (k.to_string(), t(s))).collect()
}

fn convert_err(sd: BTreeMap<String, HostTensor>, config: Option<serde_json::Value>) -> String {
    let p = from_state_dict(sd, config.as_ref(), None, Path::new("w.safetensors"));
    match p {
        Ok(_) => panic!("expected an error"),
        Err(e @ Error::Checkpoint(_)) => one_line(e.to_string()),
        Err(e) => panic!("expected a checkpoint error, got {e}"),
    }
}

/// The start of a timm ViT state dict up to the MLP: width 4, 2x2 patches, one block.
const TIMM_STEM: [(&str, &[usize]); 3] = [
    ("patch_embed.proj.weight", &[4, 3, 2, 2]),
    ("cls_token", &[1, 1, 4]),
    ("blocks.0.norm1.weight", &[4]),
];

#[test]
fn scalars_where_a_vit_has_matrices_are_errors_not_index_panics() {
    // Was: index out of bounds in infer_shapes (`shape[0]` of a rank-0 tensor).
    let mut w = sd(&TIMM_STEM);
    w.insert("blocks.0.mlp.fc1.weight".into(), t(&[]));
    let e = convert_err(w.clone(), None);
    assert!(
        e.contains("w.safetensors: blocks.0.mlp.fc1.weight is a scalar, expected a matrix"),
        "{e}"
    );
    w.insert("blocks.0.mlp.fc1.weight".into(), t(&[8, 4]));
    w.insert("blocks.0.mlp.fc2.weight".into(), t(&[4, 8]));
    w.insert("pos_embed".into(), t(&[1, 5, 4]));
    w.insert("head.weight".into(), t(&[]));
    let e = convert_err(w, None);
    assert!(e.contains("head.weight is a scalar"), "{e}");
}

#[test]
fn scalars_where_a_resnet_has_convolutions_are_errors_not_index_panics() {
    // Was: index out of bounds in resnet::infer_config.
    let mut w = sd(&[("conv1.weight", &[2, 3, 7, 7])]);
    for s in 1..=4 {
        w.insert(format!("layer{s}.0.conv1.weight"), t(&[2, 2, 3, 3]));
    }
    w.insert("layer3.0.conv1.weight".into(), t(&[]));
    let e = convert_err(w.clone(), None);
    assert!(e.contains("layer3.0.conv1.weight is a scalar"), "{e}");
    w.insert("layer3.0.conv1.weight".into(), t(&[2, 2, 3, 3]));
    w.insert("fc.weight".into(), t(&[]));
    let e = convert_err(w, None);
    assert!(e.contains("fc.weight is a scalar"), "{e}");
}

#[test]
fn hf_query_key_value_of_different_widths_are_an_error_not_a_misshapen_tensor() {
    // Was: a fused qkv whose shape claimed [12, 4] over 44 values (and a panic for scalars).
    let layer = "vit.encoder.layer.0.attention.attention";
    let w = sd(&[
        (&format!("{layer}.query.weight"), &[4, 4]),
        (&format!("{layer}.key.weight"), &[4, 4]),
        (&format!("{layer}.value.weight"), &[4, 3]),
    ]);
    let config = serde_json::json!({"num_attention_heads": 1});
    let e = convert_err(w, Some(config.clone()));
    assert!(
        e.contains(
            "HF weights of layer 0: query/key/value .weight have shapes [4, 4], [4, 4], [4, 3], which cannot be stacked"
        ),
        "{e}"
    );
    let w = sd(&[
        (&format!("{layer}.query.bias"), &[]),
        (&format!("{layer}.key.bias"), &[]),
        (&format!("{layer}.value.bias"), &[]),
    ]);
    let e = convert_err(w, Some(config));
    assert!(e.contains("cannot be stacked"), "{e}");
}

#[test]
fn tensor_names_with_control_characters_are_refused() {
    let data = [0u8; 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data).unwrap();
    let bytes = safetensors::serialize([("blocks.0\n\x1b[2Jx", view)], None).unwrap();
    let e = one_line(parse_safetensors(&bytes).unwrap_err());
    assert_eq!(
        e,
        r#"tensor name "blocks.0\n\u{1b}[2Jx" contains control characters"#
    );
}

#[test]
fn pickled_global_names_are_quoted_without_control_characters() {
    // PROTO 4, SHORT_BINUNICODE "os\n", SHORT_BINUNICODE "system", STACK_GLOBAL.
    let bytes = b"\x80\x04\x8c\x03os\n\x8c\x06system\x93.";
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let e = parse_pickle_batch(
        Path::new("data_batch_1"),
        bytes,
        CifarKind::Ten,
        LabelType::Fine,
        &mut images,
        &mut labels,
    )
    .unwrap_err();
    let e = one_line(e.to_string());
    assert!(
        e.contains(r"pickle references os\n.system, refusing to execute code"),
        "{e}"
    );
}

#[test]
fn zero_size_tensors_with_huge_dimensions_are_errors_not_overflows() {
    // A tensor with a zero dimension holds no data whatever its other dimensions are, so a
    // file can claim 2^62-pixel patches; grid × patch used to wrap (and panic in debug).
    let mut w = sd(&TIMM_STEM);
    w.insert(
        "patch_embed.proj.weight".into(),
        t(&[0, 3, 1 << 62, 1 << 62]),
    );
    w.insert("blocks.0.mlp.fc1.weight".into(), t(&[8, 4]));
    w.insert("blocks.0.mlp.fc2.weight".into(), t(&[4, 8]));
    w.insert("pos_embed".into(), t(&[1, 17, 0]));
    let e = convert_err(w.clone(), None);
    assert!(
        e.contains("a 4×4 grid of 4611686018427387904-pixel patches is impossibly large"),
        "{e}"
    );
    // usize::MAX - 1 patch positions: the square root squared overflowed.
    w.insert("pos_embed".into(), t(&[1, usize::MAX, 0]));
    let e = convert_err(w, None);
    assert!(e.contains("not a square grid"), "{e}");
}

#[test]
fn twenty_thousand_stray_blocks_are_refused_in_one_pass() {
    // Was: the depth was counted by scanning every name once per block (20,000 zero-size
    // `blocks.N` tensors took 7 s), then a 20,002-block model was built before the
    // mismatch showed. Now one pass, and each block must have block 0's tensors.
    let mut w = sd(&TIMM_STEM);
    w.insert("blocks.0.mlp.fc1.weight".into(), t(&[8, 4]));
    w.insert("pos_embed".into(), t(&[1, 5, 4]));
    for i in 1..20_000 {
        w.insert(format!("blocks.{i}.norm1.weight"), t(&[0]));
    }
    let e = convert_err(w.clone(), None);
    assert!(
        e.contains("blocks.1 has no mlp.fc1.weight, which blocks.0 has"),
        "{e}"
    );
    w.remove("blocks.7.norm1.weight");
    for i in 1..20_000 {
        w.remove(&format!("blocks.{i}.norm1.weight"));
    }
    w.insert("blocks.2.norm1.weight".into(), t(&[4]));
    let e = convert_err(w, None);
    assert!(
        e.contains("blocks.1 is missing but blocks.2 is there"),
        "{e}"
    );
}

#[test]
fn shapes_declared_by_empty_tensors_are_refused_before_the_model_is_built() {
    // Zero-byte MLP weights may declare 10^7 hidden units: the model of that shape (7.8 GB) was
    // allocated before the weights were found not to fill it.
    let timm = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/timm-vit-tiny"
    ));
    let mut w = vitrs::model::io::read_safetensors(&timm.join("model.safetensors")).unwrap();
    // fc1 [10^7, 0] and fc2 [0, 10^7]: a consistent MLP of 10^7 hidden units, and no bytes.
    for (name, shape) in [
        ("blocks.0.mlp.fc1.weight", vec![10_000_000, 0]),
        ("blocks.0.mlp.fc2.weight", vec![0, 10_000_000]),
    ] {
        w.insert(
            name.into(),
            HostTensor {
                shape,
                data: vec![],
            },
        );
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(timm.join("config.json")).unwrap()).unwrap();
    let p = from_state_dict(w, Some(&config), None, Path::new("w.safetensors")).unwrap();
    let e = one_line(
        p.build(0, &burn::tensor::Device::flex())
            .unwrap_err()
            .to_string(),
    );
    assert!(
        e.contains("the weights hold 44218 values, but a ViT of the shapes they declare (embed-dim 48, depth 2, mlp-dim 10000000, 65 tokens) has 1940024912 outside its head"),
        "{e}"
    );
}
