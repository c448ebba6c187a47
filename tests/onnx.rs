//! `vitrs export --format onnx` without Python: the file each ViT fixture (and a PEFT LoRA
//! merged into its base) exports is parsed back with prost and checked for what a runtime
//! relies on: opset 17, one input with a symbolic batch, exactly the model's weights as
//! initializers (values included), nodes in topological order, reshapes that never fix the
//! batch. `tests/onnx_check.py` runs the same files in onnxruntime against `vitrs logits`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use prost::Message;
use vitrs::model::io::HostTensor;
use vitrs::model::{EvalHead, MlpKind, Pool, VitConfig};
use vitrs::train;
use vitrs::weights::Pretrained;
use vitrs::weights::onnx::{BATCH, FILE, IR_VERSION, OPSET};
use vitrs::weights::onnx_proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, data_type,
    tensor_shape_proto::dimension::Value as Dim, type_proto,
};

mod common;
use common::{fixture, vitrs};

const FIXTURES: &[&str] = &[
    "timm-vit-tiny",
    "deit-tiny-distilled",
    "hf-vit-tiny",
    // Wave 3.
    "timm-dinov2-small",
    "timm-reg4-gap",
    "timm-clip-quickgelu",
    "hf-vit-sharded",
    "hf-deit-distilled",
    "hf-dinov2",
];

/// Every op of ai.onnx opset 17 the export may use.
const OPS: &[&str] = &[
    "Add",
    "Concat",
    "Constant",
    "Conv",
    "Div",
    "Erf",
    "Expand",
    "Gather",
    "Identity",
    "LayerNormalization",
    "MatMul",
    "Mul",
    "ReduceMean",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Tanh",
    "Transpose",
];

fn load(spec: &str) -> Pretrained {
    train::checkpoint::load_pretrained(spec).unwrap()
}

/// `vitrs export --format onnx` through the binary, parsed back.
fn export(checkpoint: &Path, adapter: Option<&Path>, out: &Path) -> ModelProto {
    let mut args = vec![
        "export",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--format",
        "onnx",
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap(), "--merge"]);
    }
    let (code, stdout, stderr) = vitrs(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(FILE), "{stdout}");
    let bytes = std::fs::read(out.join(FILE)).unwrap();
    ModelProto::decode(bytes.as_slice()).unwrap()
}

fn dims(v: &ValueInfoProto) -> Vec<Dim> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.clone())
    else {
        panic!("{:?} is not a tensor", v.name)
    };
    assert_eq!(t.elem_type, Some(data_type::FLOAT));
    t.shape
        .unwrap()
        .dim
        .into_iter()
        .map(|d| d.value.unwrap())
        .collect()
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

fn i64s(t: &TensorProto) -> Vec<i64> {
    assert_eq!(t.data_type, Some(data_type::INT64));
    t.raw_data
        .as_ref()
        .unwrap()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn f32s(t: &TensorProto) -> Vec<f32> {
    assert_eq!(t.data_type, Some(data_type::FLOAT));
    t.raw_data
        .as_ref()
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The checks every exported model passes; `p` is what vitrs computes with.
fn check(name: &str, m: &ModelProto, p: &Pretrained) {
    let c: &VitConfig = &p.config;
    assert_eq!(m.ir_version, Some(IR_VERSION), "{name}");
    let opsets: Vec<(&str, i64)> = m
        .opset_import
        .iter()
        .map(|o| (o.domain.as_deref().unwrap_or(""), o.version.unwrap()))
        .collect();
    assert_eq!(opsets, [("", 17)], "{name}");
    assert_eq!(OPSET, 17);
    let g: &GraphProto = m.graph.as_ref().unwrap();

    // One input, [batch, C, H, W] with batch symbolic; one output, [batch, classes].
    assert_eq!(g.input.len(), 1, "{name}");
    assert_eq!(g.input[0].name.as_deref(), Some("pixel_values"));
    let s = c.img_size as i64;
    assert_eq!(
        dims(&g.input[0]),
        [
            Dim::DimParam(BATCH.into()),
            Dim::DimValue(c.in_chans as i64),
            Dim::DimValue(s),
            Dim::DimValue(s)
        ],
        "{name}"
    );
    assert_eq!(g.output.len(), 1, "{name}");
    assert_eq!(g.output[0].name.as_deref(), Some("logits"));
    assert_eq!(
        dims(&g.output[0]),
        [
            Dim::DimParam(BATCH.into()),
            Dim::DimValue(c.num_classes as i64)
        ],
        "{name}"
    );

    // The initializers are the weights: the same names, sizes and values (Linear weights
    // transposed to MatMul's [in, out]).
    let inits: BTreeMap<&str, &TensorProto> = g
        .initializer
        .iter()
        .map(|t| (t.name.as_deref().unwrap(), t))
        .collect();
    assert_eq!(
        inits.len(),
        g.initializer.len(),
        "{name}: duplicate initializers"
    );
    assert_eq!(
        inits.keys().copied().collect::<Vec<_>>(),
        p.weights.keys().map(String::as_str).collect::<Vec<_>>(),
        "{name}"
    );
    let held: usize = g.initializer.iter().map(|t| f32s(t).len()).sum();
    let weights: usize = p.weights.values().map(|t| t.data.len()).sum();
    assert_eq!(held, weights, "{name}");
    let matmul_rhs: BTreeSet<&str> = g
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("MatMul"))
        .map(|n| n.input[1].as_str())
        .collect();
    for (k, w) in &p.weights {
        let t = inits[k.as_str()];
        let expect: HostTensor = if matmul_rhs.contains(k.as_str()) {
            w.transpose2()
        } else {
            w.clone()
        };
        let shape: Vec<i64> = expect.shape.iter().map(|&d| d as i64).collect();
        assert_eq!(t.dims, shape, "{name} {k}");
        assert!(f32s(t) == expect.data, "{name} {k}: values differ");
    }

    // Topological order, single assignment, standard ops of the default domain.
    let mut known: BTreeSet<&str> = inits.keys().copied().collect();
    known.insert("pixel_values");
    let mut consts: BTreeMap<&str, &TensorProto> = BTreeMap::new();
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &g.node {
        let op = n.op_type.as_deref().unwrap();
        assert!(OPS.contains(&op), "{name}: op {op}");
        assert!(n.domain.as_deref().unwrap_or("").is_empty(), "{name}: {op}");
        *ops.entry(op).or_default() += 1;
        for i in &n.input {
            assert!(
                known.contains(i.as_str()),
                "{name}: {:?} reads {i} before it is computed",
                n.name
            );
        }
        for o in &n.output {
            assert!(known.insert(o.as_str()), "{name}: {o} assigned twice");
        }
        if op == "Constant" {
            consts.insert(&n.output[0], attr(n, "value").unwrap().t.as_ref().unwrap());
        }
        // The batch stays symbolic: every reshape copies it (0), and prefix tokens are
        // expanded to a shape computed from the input.
        if op == "Reshape" {
            let shape = i64s(consts[n.input[1].as_str()]);
            assert_eq!(shape[0], 0, "{name}: {:?} fixes the batch", n.name);
        }
        if op == "Expand" {
            assert!(!consts.contains_key(n.input[1].as_str()), "{name}");
        }
    }
    assert!(known.contains("logits"), "{name}");
    assert!(
        inits
            .keys()
            .all(|k| { g.node.iter().any(|n| n.input.iter().any(|i| i == k)) })
    );

    // The graph is this config's: a LayerNormalization per norm, two (or three) MatMuls of
    // weights per block and head, one Softmax per block.
    let n = |op: &str| ops.get(op).copied().unwrap_or(0);
    assert_eq!(
        n("LayerNormalization"),
        2 * c.depth + 1 + c.pre_norm as usize,
        "{name}"
    );
    assert_eq!(n("Softmax"), c.depth, "{name}");
    assert_eq!(n("Conv"), 1, "{name}");
    let erf = (c.act == vitrs::model::Act::Gelu) as usize;
    assert_eq!(n("Erf"), erf * c.depth, "{name}");
    assert_eq!(
        n("Split"),
        c.depth * (1 + (c.mlp == MlpKind::Glu) as usize),
        "{name}"
    );
    let prefix = c.num_prefix_tokens();
    assert_eq!(
        n("Expand"),
        c.class_token as usize + c.dist_token as usize + (c.reg_tokens > 0) as usize,
        "{name}"
    );
    assert_eq!(
        n("ReduceMean"),
        matches!(c.pool, Pool::Avg | Pool::ClsMean) as usize,
        "{name}"
    );
    assert_eq!(
        n("Slice"),
        (matches!(c.pool, Pool::Avg | Pool::ClsMean) && prefix > 0) as usize,
        "{name}"
    );
    let heads = 1 + c.dist_token as usize;
    assert_eq!(n("MatMul"), c.depth * 6 + heads, "{name}");
    if c.dist_token && c.eval_head == EvalHead::Avg {
        assert!(
            g.node
                .iter()
                .any(|n| n.name.as_deref() == Some("heads.mean"))
        );
    }
    let ln = g
        .node
        .iter()
        .find(|n| n.op_type.as_deref() == Some("LayerNormalization"))
        .unwrap();
    assert_eq!(
        attr(ln, "epsilon").unwrap().f,
        Some(c.layer_norm_eps as f32)
    );
    assert_eq!(attr(ln, "axis").unwrap().i, Some(-1));
}

#[test]
fn every_vit_fixture_exports_a_valid_onnx_graph() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let path = fixture(name);
        let out = dir.path().join(name);
        let m = export(&path, None, &out);
        check(name, &m, &load(path.to_str().unwrap()));
    }
}

/// The variants no fixture has: SwiGLU with SiLU, tanh-GELU, each single head of a distilled
/// model, no qkv or patch bias, registers without a class token (random weights;
/// `tests/onnx_check.py` runs the same variants in onnxruntime).
#[test]
fn synthetic_variants_export_valid_graphs() {
    use vitrs::model::{Act, VisionTransformer};
    let base = VitConfig::with_shape(16, 4, 3, 5, [24, 2, 3, 40]);
    let variants = [
        VitConfig {
            mlp: MlpKind::Glu,
            act: Act::Silu,
            layer_scale: Some(0.1),
            pool: Pool::ClsMean,
            ..base.clone()
        },
        VitConfig {
            act: Act::GeluTanh,
            dist_token: true,
            eval_head: EvalHead::Dist,
            qkv_bias: false,
            patch_bias: false,
            pre_norm: true,
            ..base.clone()
        },
        VitConfig {
            dist_token: true,
            eval_head: EvalHead::Cls,
            pool: Pool::Avg,
            fc_norm: true,
            ..base.clone()
        },
        VitConfig {
            class_token: false,
            reg_tokens: 2,
            no_embed_class: true,
            pool: Pool::Avg,
            act: Act::QuickGelu,
            ..base.clone()
        },
    ];
    let device = burn::tensor::Device::flex();
    for (i, c) in variants.into_iter().enumerate() {
        let m = VisionTransformer::new(&c, i as u64, &device).unwrap();
        let p = Pretrained {
            origin: vitrs::weights::Origin::Vitrs,
            config: c,
            weights: vitrs::model::io::state_dict(&m),
            has_head: true,
            mean: None,
            std: None,
            class_names: None,
            source: format!("variant {i}").into(),
            notes: vec![],
        };
        let bytes = vitrs::weights::onnx::model(&p).unwrap().encode_to_vec();
        check(
            &format!("variant {i}"),
            &ModelProto::decode(bytes.as_slice()).unwrap(),
            &p,
        );
    }
}

/// A PEFT LoRA merged into its base: the graph holds the merged weights (qkv moved, the
/// adapter's head), not the base's.
#[test]
fn a_merged_lora_exports_its_merged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (base, adapter) = (fixture("timm-vit-tiny"), fixture("peft-lora-timm"));
    let m = export(&base, Some(&adapter), dir.path());
    let mut merged = load(base.to_str().unwrap());
    merged
        .merge_adapter(&vitrs::model::lora::read_peft(&adapter).unwrap())
        .unwrap();
    check("peft-lora-timm merged", &m, &merged);
    let plain = load(base.to_str().unwrap());
    for k in ["blocks.0.attn.qkv.weight", "head.weight"] {
        assert_ne!(merged.weights[k], plain.weights[k], "{k} did not change");
    }
    // Without --merge the adapter is refused, as for every format.
    let (code, _, stderr) = vitrs(&[
        "export",
        "--checkpoint",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--format",
        "onnx",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--merge"), "{stderr}");
}

#[test]
fn cnns_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = vitrs(&[
        "export",
        "--checkpoint",
        fixture("timm-resnet-tiny").to_str().unwrap(),
        "--format",
        "onnx",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("CNN"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!dir.path().join(FILE).exists());
}
