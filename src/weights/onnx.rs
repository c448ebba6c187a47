//! `vitrs export --format onnx`: the ViT as a standard ONNX model (`model.onnx`), for any
//! runtime that reads ONNX.
//!
//! - opset 17 of the default domain (ai.onnx), IR version 8, standard ops only;
//! - input `pixel_values` `[batch, C, H, W]` f32, already normalised (the model's mean and std
//!   are in the metadata), output `logits` `[batch, classes]`: for a distillation-token model
//!   the heads `VitConfig::eval_head` names, as `VisionTransformer::forward` (by default the
//!   mean of both, timm's eval output);
//! - `batch` is symbolic everywhere: reshapes copy it (0), prefix tokens are expanded to the
//!   input's batch taken with `Shape`;
//! - every weight is an initializer inside the file, under its timm name; constants the graph
//!   needs (shapes, scalars) are `Constant` nodes, so the initializers are exactly the weights.
//!
//! The graph is `VisionTransformer::forward_features` / `forward_heads` / `forward`
//! (src/model/vit.rs, src/model/layers.rs) in evaluation, op by op, with nodes and tensors named
//! after the modules (`blocks.3.attn.qkv`). `tests/onnx_check.py` runs it in onnxruntime
//! against `vitrs logits`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use prost::Message;

use super::onnx_proto::{
    AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, data_type,
    tensor_shape_proto::{Dimension, dimension},
    type_proto,
};
use super::{Pretrained, err, imagenet};
use crate::error::Result;
use crate::model::io::HostTensor;
use crate::model::{Act, EvalHead, MlpKind, Pool, VitConfig};

/// The opset of the default domain (ai.onnx) the graph uses: 17 has LayerNormalization, and
/// ReduceMean still takes `axes` as an attribute.
pub const OPSET: i64 = 17;
/// The IR version of ONNX 1.12, the release that introduced opset 17.
pub const IR_VERSION: i64 = 8;
/// The file `export` writes into the output directory.
pub const FILE: &str = "model.onnx";
/// The symbolic batch dimension of the input and output.
pub const BATCH: &str = "batch";
/// Protobuf cannot serialise one message of 2 GiB or more; ONNX's answer is external data,
/// which would no longer be "weights inside the file".
const MAX_BYTES: u128 = (2 << 30) - (64 << 20);

/// Write `out/model.onnx` (`out` exists: `export::export` creates it).
pub fn export(p: &Pretrained, out: &Path) -> Result<()> {
    let model = model(p)?;
    let path = out.join(FILE);
    crate::util::write_file_synced(&path, &model.encode_to_vec())
}

/// The ONNX model of `p`.
pub fn model(p: &Pretrained) -> Result<ModelProto> {
    let c = &p.config;
    let refuse = |why: String| {
        Err(err(format!(
            "cannot export {} as ONNX: {why}",
            p.source.display()
        )))
    };
    if c.cnn.is_some() {
        return refuse("it is a CNN; vitrs exports ViTs to ONNX".into());
    }
    if !p.has_head || c.num_classes == 0 {
        return refuse("it has no classification head".into());
    }
    let bytes: u128 = p.weights.values().map(|t| 4 * t.data.len() as u128).sum();
    if bytes > MAX_BYTES {
        return refuse(format!(
            "its weights take {:.2} GB, more than the 2 GiB protobuf allows in one file",
            bytes as f64 / 1e9
        ));
    }
    let mut g = Graph {
        weights: &p.weights,
        source: &p.source,
        nodes: Vec::new(),
        initializers: Vec::new(),
        consts: BTreeSet::new(),
    };
    let logits = vit(&mut g, c)?;
    let graph = GraphProto {
        node: g.nodes,
        name: Some("vitrs_vit".into()),
        initializer: g.initializers,
        doc_string: Some(format!(
            "exported by vitrs from {}: input pixel_values normalised with the metadata's mean and std",
            p.source.display()
        )),
        input: vec![value_info(
            INPUT,
            &[
                Dim::Batch,
                Dim::Fixed(c.in_chans),
                Dim::Fixed(c.img_size),
                Dim::Fixed(c.img_size),
            ],
        )],
        output: vec![value_info(
            &logits,
            &[Dim::Batch, Dim::Fixed(c.num_classes)],
        )],
        value_info: vec![],
    };
    let (m, s) = imagenet();
    let mut meta = vec![
        ("mean", json(&p.mean.clone().unwrap_or(m))),
        ("std", json(&p.std.clone().unwrap_or(s))),
        ("img_size", c.img_size.to_string()),
        ("num_classes", c.num_classes.to_string()),
    ];
    if let Some(names) = p.class_names.as_ref().filter(|n| n.len() == c.num_classes) {
        meta.push(("class_names", json(names)));
    }
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("vitrs".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: None,
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        metadata_props: meta
            .into_iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.into()),
                value: Some(v),
            })
            .collect(),
    })
}

/// A value as JSON, for the metadata.
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

const INPUT: &str = "pixel_values";
const OUTPUT: &str = "logits";

enum Dim {
    Batch,
    Fixed(usize),
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Batch => dimension::Value::DimParam(BATCH.into()),
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        doc_string: None,
    }
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn tensor(name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: Some(data_type),
        name: Some(name.into()),
        raw_data: Some(raw),
        doc_string: None,
    }
}

/// Node attributes.
fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(AttributeType::Float as i32),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

fn attr_t(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        t: Some(t),
        r#type: Some(AttributeType::Tensor as i32),
        ..Default::default()
    }
}

/// The graph under construction: nodes in topological order (each appended after what it
/// reads), the weights used so far as initializers.
struct Graph<'a> {
    weights: &'a BTreeMap<String, HostTensor>,
    source: &'a Path,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// The Constant nodes already made.
    consts: BTreeSet<String>,
}

impl Graph<'_> {
    /// One node `op` named `name` whose outputs are `outputs`.
    fn node_n(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(name.into()),
            op_type: Some(op.into()),
            attribute,
            doc_string: None,
            domain: None,
        });
    }

    /// One node `op` whose single output is named as the node: `name`, returned.
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.node_n(op, name, inputs, &[name], attribute);
        name.to_string()
    }

    /// Weight `key` as an initializer, checked to have `shape`; `transpose` stores a PyTorch
    /// Linear weight `[out, in]` as `[in, out]`, the right operand of MatMul.
    fn weight(&mut self, key: &str, shape: &[usize], transpose: bool) -> Result<String> {
        let Some(t) = self.weights.get(key) else {
            return Err(err(format!(
                "cannot export {} as ONNX: the weights have no {key}",
                self.source.display()
            )));
        };
        if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
            return Err(err(format!(
                "cannot export {} as ONNX: {key} has shape {:?}, the model needs {shape:?}",
                self.source.display(),
                t.shape
            )));
        }
        let (t, doc) = if transpose {
            (
                t.transpose2(),
                Some("PyTorch's Linear weight [out, in], transposed to [in, out] for MatMul"),
            )
        } else {
            (t.clone(), None)
        };
        let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        let mut proto = tensor(key, &dims, data_type::FLOAT, f32_bytes(&t.data));
        proto.doc_string = doc.map(Into::into);
        self.initializers.push(proto);
        Ok(key.to_string())
    }

    /// A `Constant` node (made once) holding `t`, named `name`.
    fn constant(&mut self, name: String, t: impl FnOnce(&str) -> TensorProto) -> String {
        if self.consts.insert(name.clone()) {
            let value = t(&name);
            self.node("Constant", &name, &[], vec![attr_t("value", value)]);
        }
        name
    }

    /// A 1-D int64 constant (shapes, axes, slice bounds).
    fn ints(&mut self, v: &[i64]) -> String {
        let name = format!(
            "const.i64.{}",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("_")
        );
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.constant(name, |n| {
            tensor(n, &[v.len() as i64], data_type::INT64, raw)
        })
    }

    /// A 0-d int64 constant (a Gather index that drops the axis).
    fn index(&mut self, i: i64) -> String {
        self.constant(format!("const.index.{i}"), |n| {
            tensor(n, &[], data_type::INT64, i.to_le_bytes().to_vec())
        })
    }

    /// A 0-d f32 constant.
    fn scalar(&mut self, v: f32) -> String {
        self.constant(format!("const.f32.{v}"), |n| {
            tensor(n, &[], data_type::FLOAT, v.to_le_bytes().to_vec())
        })
    }

    fn binary(&mut self, op: &str, name: &str, a: &str, b: &str) -> String {
        self.node(op, name, &[a, b], vec![])
    }

    /// `x · W + b` of the Linear `prefix` (`[out, in]` in the weights), on the last axis.
    fn linear(
        &mut self,
        x: &str,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<String> {
        let w = self.weight(&format!("{prefix}.weight"), &[out_dim, in_dim], true)?;
        if !bias {
            return Ok(self.binary("MatMul", prefix, x, &w));
        }
        let y = self.binary("MatMul", &format!("{prefix}.matmul"), x, &w);
        let b = self.weight(&format!("{prefix}.bias"), &[out_dim], false)?;
        Ok(self.binary("Add", prefix, &y, &b))
    }

    /// LayerNormalization over the last axis with the norm `prefix`'s weight and bias.
    fn layer_norm(&mut self, x: &str, prefix: &str, dim: usize, eps: f64) -> Result<String> {
        let w = self.weight(&format!("{prefix}.weight"), &[dim], false)?;
        let b = self.weight(&format!("{prefix}.bias"), &[dim], false)?;
        Ok(self.node(
            "LayerNormalization",
            prefix,
            &[x, &w, &b],
            vec![attr_i("axis", -1), attr_f("epsilon", eps as f32)],
        ))
    }

    /// The MLP's activation `act` of `x`, its output named `name`.
    fn act(&mut self, act: Act, x: &str, name: &str) -> String {
        let n = |s: &str| format!("{name}.{s}");
        match act {
            Act::Gelu => {
                // 0.5 · x · (1 + erf(x / √2))
                let sqrt2 = self.scalar(std::f32::consts::SQRT_2);
                let one = self.scalar(1.0);
                let half = self.scalar(0.5);
                let d = self.binary("Div", &n("div"), x, &sqrt2);
                let e = self.node("Erf", &n("erf"), &[&d], vec![]);
                let a = self.binary("Add", &n("add"), &e, &one);
                let m = self.binary("Mul", &n("mul"), x, &a);
                self.binary("Mul", name, &m, &half)
            }
            Act::GeluTanh => {
                // x · (tanh(√(2/π) · (x + 0.044715 x³)) + 1) · 0.5
                let c = self.scalar(0.044715);
                let k = self.scalar((2.0 / std::f64::consts::PI).sqrt() as f32);
                let one = self.scalar(1.0);
                let half = self.scalar(0.5);
                let x2 = self.binary("Mul", &n("x2"), x, x);
                let x3 = self.binary("Mul", &n("x3"), &x2, x);
                let cx3 = self.binary("Mul", &n("cx3"), &x3, &c);
                let inner = self.binary("Add", &n("inner"), x, &cx3);
                let scaled = self.binary("Mul", &n("scaled"), &inner, &k);
                let t = self.node("Tanh", &n("tanh"), &[&scaled], vec![]);
                let a = self.binary("Add", &n("add"), &t, &one);
                let m = self.binary("Mul", &n("mul"), x, &a);
                self.binary("Mul", name, &m, &half)
            }
            Act::QuickGelu => {
                // x · σ(1.702 x)
                let k = self.scalar(1.702);
                let s = self.binary("Mul", &n("scaled"), x, &k);
                let sig = self.node("Sigmoid", &n("sigmoid"), &[&s], vec![]);
                self.binary("Mul", name, x, &sig)
            }
            Act::Silu => {
                let sig = self.node("Sigmoid", &n("sigmoid"), &[x], vec![]);
                self.binary("Mul", name, x, &sig)
            }
        }
    }
}

/// The ViT in evaluation, from `pixel_values` to the returned output name (`logits`).
fn vit(g: &mut Graph, c: &VitConfig) -> Result<String> {
    let (d, p) = (c.embed_dim, c.patch_size);
    let eps = c.layer_norm_eps;
    let pv = INPUT;
    let i = |v: usize| v as i64;

    // Patch embedding: Conv [b, d, h/p, w/p] → [b, d, n] → [b, n, d].
    let w = g.weight("patch_embed.proj.weight", &[d, c.in_chans, p, p], false)?;
    let mut conv_in = vec![pv.to_string(), w];
    if c.patch_bias {
        conv_in.push(g.weight("patch_embed.proj.bias", &[d], false)?);
    }
    let conv_in: Vec<&str> = conv_in.iter().map(String::as_str).collect();
    let x = g.node(
        "Conv",
        "patch_embed.proj",
        &conv_in,
        vec![
            attr_ints("kernel_shape", &[i(p), i(p)]),
            attr_ints("strides", &[i(p), i(p)]),
            attr_ints("pads", &[0, 0, 0, 0]),
            attr_ints("dilations", &[1, 1]),
            attr_i("group", 1),
        ],
    );
    let shape = g.ints(&[0, i(d), -1]);
    let x = g.binary("Reshape", "patch_embed.flatten", &x, &shape);
    let mut x = g.node(
        "Transpose",
        "patch_embed",
        &[&x],
        vec![attr_ints("perm", &[0, 2, 1])],
    );

    // Prefix tokens (class, distillation, registers), each `[1, k, d]` expanded to the batch
    // of the input: Expand broadcasts `[1, k, d]` against `[batch, 1, 1]`.
    let mut prefix = Vec::new();
    let tokens = [
        ("cls_token", c.class_token, 1),
        ("dist_token", c.dist_token, 1),
        ("reg_token", c.reg_tokens > 0, c.reg_tokens),
    ];
    if tokens.iter().any(|t| t.1) {
        let batch = g.node(
            "Shape",
            "batch",
            &[pv],
            vec![attr_i("start", 0), attr_i("end", 1)],
        );
        let ones = g.ints(&[1, 1]);
        let batch_shape = g.node(
            "Concat",
            "batch_shape",
            &[&batch, &ones],
            vec![attr_i("axis", 0)],
        );
        for (key, on, k) in tokens {
            if on {
                let t = g.weight(key, &[1, k, d], false)?;
                prefix.push(g.binary("Expand", &format!("{key}.expand"), &t, &batch_shape));
            }
        }
    }
    let pos = g.weight("pos_embed", &[1, c.num_pos_tokens(), d], false)?;
    if c.no_embed_class {
        x = g.binary("Add", "pos_embed.add", &x, &pos);
    }
    if !prefix.is_empty() {
        prefix.push(x);
        let inputs: Vec<&str> = prefix.iter().map(String::as_str).collect();
        x = g.node("Concat", "tokens", &inputs, vec![attr_i("axis", 1)]);
    }
    if !c.no_embed_class {
        x = g.binary("Add", "pos_embed.add", &x, &pos);
    }
    if c.pre_norm {
        x = g.layer_norm(&x, "norm_pre", d, eps)?;
    }

    let (h, hd) = (c.num_heads, d / c.num_heads);
    let heads_shape = g.ints(&[0, 0, i(h), i(hd)]);
    let merged_shape = g.ints(&[0, 0, i(d)]);
    let scale = g.scalar((hd as f64).powf(-0.5) as f32);
    for b in 0..c.depth {
        let blk = format!("blocks.{b}");
        let n = |s: &str| format!("{blk}.{s}");
        // Attention: fused qkv rows [q; k; v], each split into heads.
        let y = g.layer_norm(&x, &n("norm1"), d, eps)?;
        let qkv = g.linear(&y, &n("attn.qkv"), d, 3 * d, c.qkv_bias)?;
        let (q, k, v) = (n("attn.q"), n("attn.k"), n("attn.v"));
        g.node_n(
            "Split",
            &n("attn.split"),
            &[&qkv],
            &[&q, &k, &v],
            vec![attr_i("axis", -1)],
        );
        let mut heads = |t: &str, perm: [i64; 4]| {
            let r = g.binary("Reshape", &format!("{t}.heads"), t, &heads_shape);
            g.node(
                "Transpose",
                &format!("{t}.transpose"),
                &[&r],
                vec![attr_ints("perm", &perm)],
            )
        };
        let q = heads(&q, [0, 2, 1, 3]); // [b, h, n, hd]
        let k = heads(&k, [0, 2, 3, 1]); // [b, h, hd, n]
        let v = heads(&v, [0, 2, 1, 3]);
        let s = g.binary("MatMul", &n("attn.scores"), &q, &k);
        let s = g.binary("Mul", &n("attn.scaled"), &s, &scale);
        let a = g.node(
            "Softmax",
            &n("attn.softmax"),
            &[&s],
            vec![attr_i("axis", -1)],
        );
        let o = g.binary("MatMul", &n("attn.context"), &a, &v);
        let o = g.node(
            "Transpose",
            &n("attn.context.transpose"),
            &[&o],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let o = g.binary("Reshape", &n("attn.merge"), &o, &merged_shape);
        let mut o = g.linear(&o, &n("attn.proj"), d, d, true)?;
        if c.layer_scale.is_some() {
            let gamma = g.weight(&n("ls1.gamma"), &[d], false)?;
            o = g.binary("Mul", &n("ls1"), &o, &gamma);
        }
        x = g.binary("Add", &n("residual1"), &x, &o);

        // MLP, plain or gated.
        let y = g.layer_norm(&x, &n("norm2"), d, eps)?;
        let m = c.mlp_dim;
        let y = match c.mlp {
            MlpKind::Mlp => {
                let y = g.linear(&y, &n("mlp.fc1"), d, m, true)?;
                g.act(c.act, &y, &n("mlp.act"))
            }
            MlpKind::Glu => {
                let y = g.linear(&y, &n("mlp.fc1"), d, 2 * m, true)?;
                let (gate, up) = (n("mlp.gate"), n("mlp.up"));
                g.node_n(
                    "Split",
                    &n("mlp.split"),
                    &[&y],
                    &[&gate, &up],
                    vec![attr_i("axis", -1)],
                );
                let a = g.act(c.act, &gate, &n("mlp.act"));
                g.binary("Mul", &n("mlp.glu"), &a, &up)
            }
        };
        let mut y = g.linear(&y, &n("mlp.fc2"), m, d, true)?;
        if c.layer_scale.is_some() {
            let gamma = g.weight(&n("ls2.gamma"), &[d], false)?;
            y = g.binary("Mul", &n("ls2"), &y, &gamma);
        }
        x = g.binary("Add", &blk, &x, &y);
    }
    if !c.fc_norm {
        x = g.layer_norm(&x, "norm", d, eps)?;
    }

    // Pooling: `[b, tokens, d]` → `[b, head_in]`.
    let cls = |g: &mut Graph| {
        let i0 = g.index(0);
        g.node("Gather", "pool.cls", &[&x, &i0], vec![attr_i("axis", 1)])
    };
    let mean = |g: &mut Graph| {
        let n_prefix = c.num_prefix_tokens() as i64;
        let patches = if n_prefix > 0 {
            let starts = g.ints(&[n_prefix]);
            let ends = g.ints(&[i64::MAX]);
            let axes = g.ints(&[1]);
            g.node(
                "Slice",
                "pool.patches",
                &[&x, &starts, &ends, &axes],
                vec![],
            )
        } else {
            x.clone()
        };
        g.node(
            "ReduceMean",
            "pool.mean",
            &[&patches],
            vec![attr_ints("axes", &[1]), attr_i("keepdims", 0)],
        )
    };
    let mut pooled = match c.pool {
        Pool::Cls => cls(g),
        Pool::Avg => mean(g),
        Pool::ClsMean => {
            let a = cls(g);
            let m = mean(g);
            g.node("Concat", "pool", &[&a, &m], vec![attr_i("axis", 1)])
        }
    };
    if c.fc_norm {
        pooled = g.layer_norm(&pooled, "fc_norm", d, eps)?;
    }
    let classes = c.num_classes;
    let logits = g.linear(&pooled, "head", c.head_in(), classes, true)?;
    let logits = if c.dist_token {
        // The distillation head reads token 1 after the final norm, never pooled.
        let i1 = g.index(1);
        let t = g.node("Gather", "pool.dist", &[&x, &i1], vec![attr_i("axis", 1)]);
        let dist = g.linear(&t, "head_dist", d, classes, true)?;
        match c.eval_head {
            EvalHead::Cls => logits,
            EvalHead::Dist => dist,
            EvalHead::Avg => {
                let two = g.scalar(2.0);
                let sum = g.binary("Add", "heads.sum", &logits, &dist);
                g.binary("Div", "heads.mean", &sum, &two)
            }
        }
    } else {
        logits
    };
    Ok(g.node("Identity", OUTPUT, &[&logits], vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::Origin;
    use crate::weights::tests::{pretrained_of, tiny};

    /// Every node reads only the input, initializers or outputs of nodes before it, and every
    /// weight is one initializer.
    #[test]
    fn graph_is_topological_and_holds_every_weight() {
        for dist in [false, true] {
            let p = pretrained_of(&tiny(dist), Origin::Timm);
            let m = model(&p).unwrap();
            let m = ModelProto::decode(m.encode_to_vec().as_slice()).unwrap();
            let g = m.graph.unwrap();
            let mut known: std::collections::BTreeSet<String> = g
                .initializer
                .iter()
                .filter_map(|t| t.name.clone())
                .collect();
            assert_eq!(known.len(), p.weights.len());
            known.insert(INPUT.into());
            for n in &g.node {
                for i in &n.input {
                    assert!(known.contains(i), "{:?} reads {i} before it exists", n.name);
                }
                for o in &n.output {
                    assert!(known.insert(o.clone()), "{o} written twice");
                }
            }
            assert!(known.contains(OUTPUT));
        }
    }

    #[test]
    fn models_without_a_head_are_refused_in_one_line() {
        let mut p = pretrained_of(&tiny(false), Origin::Timm);
        p.replace_head(3);
        let e = model(&p).unwrap_err().to_string();
        assert!(e.contains("no classification head"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }
}
