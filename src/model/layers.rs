//! The reusable layers of vitrs' models, named like timm's so that a parameter's module path
//! (`blocks.3.attn.qkv.weight`) *is* its timm state-dict key.
//!
//! Weights of `Linear` are stored `[in, out]` (burn's matmul layout); the safetensors I/O
//! transposes them to PyTorch's `[out, in]`. Every forward takes an explicit [`Ctx`]: dropout
//! and DropPath act only in a training context, so evaluation can never be stochastic by accident.

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, sigmoid, silu, softmax};
use burn::tensor::module::{attention, conv2d, layer_norm};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use std::cell::RefCell;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};

use crate::rng::Rng;

use super::fused;
pub use super::linear::{Factor, Linear};
use super::precision::{Precision, down, up};
use super::sparse::SparseLora;

/// Host-side initialisers: weights are drawn from vitrs' own addressed RNG so that a seed
/// gives the same model on every backend and every thread count.
pub struct Init {
    rng: Rng,
}

impl Init {
    pub fn new(seed: u64) -> Self {
        Init {
            rng: Rng::at(seed, crate::rng::stream::INIT, &[]),
        }
    }

    fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// Truncated normal(0, std) cut at ±2 std, as timm's `trunc_normal_(std=.02)`.
    pub fn trunc_normal<const D: usize>(
        &mut self,
        shape: [usize; D],
        std: f64,
        device: &Device,
    ) -> Tensor<D> {
        let n = shape.iter().product();
        let values = (0..n)
            .map(|_| {
                loop {
                    let z = self.rng.normal();
                    if z.abs() <= 2.0 {
                        break (z * std) as f32;
                    }
                }
            })
            .collect();
        Self::tensor(values, shape, device)
    }

    /// Uniform(-bound, bound).
    pub fn uniform<const D: usize>(
        &mut self,
        shape: [usize; D],
        bound: f64,
        device: &Device,
    ) -> Tensor<D> {
        let n = shape.iter().product();
        let values = (0..n)
            .map(|_| self.rng.uniform(-bound, bound) as f32)
            .collect();
        Self::tensor(values, shape, device)
    }

    /// Xavier/Glorot uniform for a weight with the given fan-in and fan-out.
    pub fn xavier<const D: usize>(
        &mut self,
        shape: [usize; D],
        fan_in: usize,
        fan_out: usize,
        device: &Device,
    ) -> Tensor<D> {
        let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
        self.uniform(shape, bound, device)
    }

    pub fn zeros<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::zeros(shape, device)
    }

    pub fn ones<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::ones(shape, device)
    }
}

#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, device: &Device) -> Self {
        LayerNorm {
            weight: Param::from_tensor(Init::ones([dim], device)),
            bias: Param::from_tensor(Init::zeros([dim], device)),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if fused::applies(&x) {
            return fused::layer_norm(x, self.weight.val(), self.bias.val(), self.eps);
        }
        layer_norm(x, self.weight.val(), Some(self.bias.val()), self.eps)
    }
}

/// How a forward pass runs: evaluation, or training with its own random stream.
///
/// Dropout and DropPath masks are drawn on the host from an RNG addressed by
/// (seed, step, rank), not from the backend's global generator: the same step draws the same
/// masks on every backend, after a resume, and when several models train in one process.
pub struct Ctx {
    pub train: bool,
    rng: RefCell<Rng>,
    /// SparseLoRA's estimators when this forward runs sparse (never in evaluation).
    pub sparse: Option<Arc<SparseLora>>,
    /// Batch statistics BatchNorm layers saw in a training forward, for the caller to fold
    /// into the running statistics after the step (the step stays a pure function).
    pub(crate) bn_stats: RefCell<Vec<super::cnn::BnStats>>,
    /// The dtype of the matrix products (`--precision`); weights and the rest stay f32.
    pub precision: Precision,
    /// The step multiplies its loss by this before the backward pass and divides the
    /// gradients by it after (f16 loss scaling; 1 otherwise).
    pub loss_scale: f64,
}

impl Ctx {
    pub fn eval() -> Self {
        Ctx {
            train: false,
            rng: RefCell::new(Rng::seed(0)),
            sparse: None,
            bn_stats: RefCell::default(),
            precision: Precision::F32,
            loss_scale: 1.0,
        }
    }

    /// A training context whose masks are addressed by `coords` (step, micro-batch, rank).
    pub fn train(seed: u64, coords: &[u64]) -> Self {
        Ctx {
            train: true,
            rng: RefCell::new(Rng::at(seed, crate::rng::stream::DROPOUT, coords)),
            sparse: None,
            bn_stats: RefCell::default(),
            precision: Precision::F32,
            loss_scale: 1.0,
        }
    }

    /// This training forward with SparseLoRA's contextual sparsity (`None`: dense).
    pub fn with_sparse(mut self, sparse: Option<Arc<SparseLora>>) -> Self {
        self.sparse = sparse.filter(|_| self.train);
        self
    }

    /// This context with matrix products in `precision` and the loss scaled by `loss_scale`.
    pub fn with_precision(mut self, precision: Precision, loss_scale: f64) -> Self {
        self.precision = precision;
        self.loss_scale = loss_scale;
        self
    }

    /// SparseLoRA's state when block `i` runs sparse in this forward.
    pub fn sparse_block(&self, i: usize) -> Option<&SparseLora> {
        self.sparse.as_deref().filter(|s| s.block(i).is_some())
    }

    /// A {0, 1/keep} mask of `shape`, on `device`.
    fn mask<const D: usize>(&self, shape: [usize; D], keep: f64, device: &Device) -> Tensor<D> {
        let n: usize = shape.iter().product();
        let mut rng = self.rng.borrow_mut();
        let on = (1.0 / keep) as f32;
        let threshold = (keep * (1u64 << 32) as f64) as u64;
        let mut values = Vec::with_capacity(n);
        while values.len() < n {
            let r = rng.next_u64();
            for half in [r & 0xFFFF_FFFF, r >> 32] {
                if values.len() < n {
                    values.push(if half < threshold { on } else { 0.0 });
                }
            }
        }
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

/// Inverted dropout; identity unless training.
pub fn dropout<const D: usize>(x: Tensor<D>, prob: f64, ctx: &Ctx) -> Tensor<D> {
    if !ctx.train || prob == 0.0 {
        return x;
    }
    let mask: Tensor<D> = ctx.mask(x.dims(), 1.0 - prob, &x.device());
    let dtype = x.dtype();
    x * mask.cast(dtype)
}

/// Stochastic depth: drop the whole residual branch per sample with probability `prob`.
pub fn drop_path(x: Tensor<3>, prob: f64, ctx: &Ctx) -> Tensor<3> {
    if !ctx.train || prob == 0.0 {
        return x;
    }
    let [b, _, _] = x.dims();
    let mask: Tensor<3> = ctx.mask([b, 1, 1], 1.0 - prob, &x.device());
    x * mask
}

/// Multi-head self-attention with a fused qkv projection (timm's `Attention`).
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
    pub attn_drop: f64,
    pub proj_drop: f64,
}

impl Attention {
    pub fn forward(&self, x: Tensor<3>, ctx: &Ctx) -> Tensor<3> {
        let out = self.attend(self.qkv.forward_ctx(x, ctx), ctx);
        dropout(self.proj.forward_ctx(out, ctx), self.proj_drop, ctx)
    }

    /// Multi-head attention of the fused `[b, n, 3c]` projections, heads merged: `[b, n, c]`.
    /// On flex in f32 (without attention dropout) it is one fused kernel, else op by op.
    pub fn attend(&self, qkv: Tensor<3>, ctx: &Ctx) -> Tensor<3> {
        let attn_dropout = ctx.train && self.attn_drop > 0.0;
        if ctx.precision == Precision::F32 && !attn_dropout && fused::applies(&qkv) {
            return fused::qkv_attention(qkv, self.num_heads);
        }
        attend_ops(qkv, self.num_heads, self.attn_drop, ctx)
    }
}

/// [`Attention::attend`] op by op, in `ctx.precision`, with dropout `attn_drop` on the
/// attention matrix in training: the form GPU backends and half precision run, and the
/// reference the fused kernel is tested against.
pub fn attend_ops(qkv: Tensor<3>, heads: usize, attn_drop: f64, ctx: &Ctx) -> Tensor<3> {
    let [b, n, c3] = qkv.dims();
    let c = c3 / 3;
    let (h, d) = (heads, c / heads);
    let p = ctx.precision;
    // [b, n, 3c] -> [3, b, h, n, d]
    let qkv = down(qkv, p)
        .reshape([b, n, 3, h, d])
        .permute([2, 0, 3, 1, 4]);
    let q: Tensor<4> = qkv.clone().narrow(0, 0, 1).reshape([b, h, n, d]);
    let k: Tensor<4> = qkv.clone().narrow(0, 1, 1).reshape([b, h, n, d]);
    let v: Tensor<4> = qkv.narrow(0, 2, 1).reshape([b, h, n, d]);
    let out = if ctx.train && attn_drop > 0.0 {
        // Dropout on the attention matrix needs it materialised.
        let scale = (d as f64).powf(-0.5);
        let attn = softmax(up(q.matmul(k.swap_dims(2, 3)), p) * scale, 3);
        down(dropout(attn, attn_drop, ctx), p).matmul(v)
    } else {
        attention(q, k, v, None, None, AttentionModuleOptions::default())
    };
    up(out, p).swap_dims(1, 2).reshape([b, n, c])
}

/// The MLP's activation (timm's `act_layer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    /// Exact (erf) GELU: timm's and HF's default.
    #[default]
    Gelu,
    /// GELU's tanh approximation (`gelu_tanh`, HF `gelu_pytorch_tanh`).
    GeluTanh,
    /// `x · σ(1.702 x)`: OpenAI CLIP's activation (timm `quick_gelu`).
    QuickGelu,
    Silu,
}

impl Act {
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Act::Gelu => gelu(x),
            Act::GeluTanh => {
                let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715)
                    * (2.0 / std::f64::consts::PI).sqrt();
                x * (inner.tanh() + 1.0) * 0.5
            }
            Act::QuickGelu => x.clone() * sigmoid(x * 1.702),
            Act::Silu => silu(x),
        }
    }
}

/// How the MLP mixes its hidden units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// fc1 → act → fc2 (timm's `Mlp`).
    #[default]
    Mlp,
    /// Gated: fc1 gives `[x1, x2]` (2 × hidden), then `act(x1) · x2` → fc2 (timm's
    /// `SwiGLUPacked`, HF DINOv2's `use_swiglu_ffn`, with act = SiLU).
    Glu,
}

/// timm's `Mlp` (fc1 → act → dropout → fc2 → dropout), or its gated form ([`MlpKind::Glu`]).
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub drop: f64,
    #[module(skip)]
    pub act: Act,
    #[module(skip)]
    pub kind: MlpKind,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>, ctx: &Ctx) -> Tensor<3> {
        let h = self.fc1.forward_ctx(x, ctx);
        let h = match self.kind {
            MlpKind::Mlp => self.act.apply(h),
            MlpKind::Glu => {
                let hidden = h.dims()[2] / 2;
                let gate = h.clone().narrow(2, 0, hidden);
                self.act.apply(gate) * h.narrow(2, hidden, hidden)
            }
        };
        let x = dropout(h, self.drop, ctx);
        dropout(self.fc2.forward_ctx(x, ctx), self.drop, ctx)
    }
}

/// LayerScale (CaiT, DeiT III, DINOv2): a learned per-channel gain on a residual branch,
/// timm's `ls1`/`ls2` with parameter `gamma`.
#[derive(Module, Debug)]
pub struct LayerScale {
    pub gamma: Param<Tensor<1>>,
}

impl LayerScale {
    pub fn new(dim: usize, init: f64, device: &Device) -> Self {
        LayerScale {
            gamma: Param::from_tensor(Tensor::ones([dim], device) * init),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        x * self.gamma.val().unsqueeze::<3>()
    }
}

/// `x` through `scale` when there is one.
pub fn scaled(x: Tensor<3>, scale: &Option<LayerScale>) -> Tensor<3> {
    match scale {
        Some(s) => s.forward(x),
        None => x,
    }
}

/// Pre-norm transformer block, with optional LayerScale on both branches.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub ls1: Option<LayerScale>,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    pub ls2: Option<LayerScale>,
    pub drop_path: f64,
}

impl Block {
    pub fn forward(&self, x: Tensor<3>, ctx: &Ctx) -> Tensor<3> {
        let a = self.attn.forward(self.norm1.forward(x.clone()), ctx);
        let x = x + drop_path(scaled(a, &self.ls1), self.drop_path, ctx);
        let m = self.mlp.forward(self.norm2.forward(x.clone()), ctx);
        x + drop_path(scaled(m, &self.ls2), self.drop_path, ctx)
    }
}

/// A strided convolution (`kernel = stride = patch`), weight `[out, in, p, p]` as PyTorch's.
#[derive(Module, Debug)]
pub struct Conv2d {
    pub weight: Param<Tensor<4>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    pub fn forward(&self, x: Tensor<4>, ctx: &Ctx) -> Tensor<4> {
        let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        let p = ctx.precision;
        let y = conv2d(
            down(x, p),
            down(self.weight.val(), p),
            self.bias.as_ref().map(|b| down(b.val(), p)),
            options,
        );
        up(y, p)
    }
}

/// Image → patch tokens: `[b, c, H, W]` → `[b, (H/p)·(W/p), dim]`.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
}

impl PatchEmbed {
    pub fn new(
        in_chans: usize,
        dim: usize,
        patch: usize,
        init: &mut Init,
        device: &Device,
    ) -> Self {
        // timm initialises the patch projection like a linear layer over the flattened patch.
        let fan_in = in_chans * patch * patch;
        PatchEmbed {
            proj: Conv2d {
                weight: Param::from_tensor(init.xavier(
                    [dim, in_chans, patch, patch],
                    fan_in,
                    dim,
                    device,
                )),
                bias: Some(Param::from_tensor(Init::zeros([dim], device))),
                stride: patch,
                padding: 0,
            },
        }
    }

    pub fn forward(&self, x: Tensor<4>, ctx: &Ctx) -> Tensor<3> {
        let y = self.proj.forward(x, ctx); // [b, dim, gh, gw]
        let [b, d, gh, gw] = y.dims();
        y.reshape([b, d, gh * gw]).swap_dims(1, 2)
    }
}
