//! The linear layer, with an optional LoRA adapter under PEFT's names.
// The adapter fields are named as PEFT's keys (`lora_A`, `lora_B`) so that parameter paths
// need no renaming on the way to and from PEFT's files.
#![allow(non_snake_case)]

use burn::module::{Module, Param};
use burn::tensor::module::linear;
use burn::tensor::{Device, Tensor};

use super::layers::{Ctx, Init, dropout};
use super::precision::{down, up};

/// A bias-free projection, one factor of a LoRA adapter (PEFT's `lora_A` / `lora_B`).
#[derive(Module, Debug)]
pub struct Factor {
    /// `[in, out]` like [`Linear`]'s weight, so the I/O transposes it to PyTorch's layout.
    pub weight: Param<Tensor<2>>,
}

/// `y = x·W + b`, W stored `[in, out]`; with a LoRA adapter
/// `y = x·W + b + scaling·dropout(x)·A·B` (PEFT's `W·x + b + (alpha/r)·B·A·dropout(x)`).
///
/// The adapter fields carry PEFT's names (`lora_A.weight`, `lora_B.weight`), so a LoRA
/// model's parameter paths are PEFT's keys without the `base_model.model.` prefix.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub lora_A: Option<Factor>,
    pub lora_B: Option<Factor>,
    /// `alpha / r` (or `alpha / √r` with rsLoRA).
    pub lora_scaling: f64,
    pub lora_dropout: f64,
}

impl Linear {
    /// Xavier-uniform weight, zero bias (the ViT init of timm's `init_weights`, 'jax' style
    /// for linears, as the seeds ask).
    pub fn new(d_in: usize, d_out: usize, bias: bool, init: &mut Init, device: &Device) -> Self {
        Linear {
            weight: Param::from_tensor(init.xavier([d_in, d_out], d_in, d_out, device)),
            bias: bias.then(|| Param::from_tensor(Init::zeros([d_out], device))),
            lora_A: None,
            lora_B: None,
            lora_scaling: 0.0,
            lora_dropout: 0.0,
        }
    }

    pub fn d_in(&self) -> usize {
        self.weight.lazy_shape().dims::<2>()[0]
    }

    pub fn d_out(&self) -> usize {
        self.weight.lazy_shape().dims::<2>()[1]
    }

    pub fn has_adapter(&self) -> bool {
        self.lora_A.is_some()
    }

    /// Evaluation forward (no adapter dropout).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_ctx(x, &Ctx::eval())
    }

    /// The matrix products run in `ctx.precision`; input and output are f32.
    pub fn forward_ctx<const D: usize>(&self, x: Tensor<D>, ctx: &Ctx) -> Tensor<D> {
        let p = ctx.precision;
        let x = down(x, p);
        let base = linear(
            x.clone(),
            down(self.weight.val(), p),
            self.bias.as_ref().map(|b| down(b.val(), p)),
        );
        up(self.plus_adapter(base, x, ctx), p)
    }

    /// `base` plus the adapter's contribution for input `x` (`base` alone without an
    /// adapter), the low-rank products in `ctx.precision`.
    pub fn plus_adapter<const D: usize>(
        &self,
        base: Tensor<D>,
        x: Tensor<D>,
        ctx: &Ctx,
    ) -> Tensor<D> {
        match (&self.lora_A, &self.lora_B) {
            (Some(a), Some(b)) => {
                let p = ctx.precision;
                let (a, b) = (down(a.weight.val(), p), down(b.weight.val(), p));
                base + self.adapter_delta(x, &a, &b, ctx)
            }
            _ => base,
        }
    }

    /// `scaling·dropout(x)·A·B`: the adapter's contribution, the low-rank branch kept
    /// low-rank (never the `[in, out]` product) so it costs `r·(in + out)` per token. The
    /// scaling multiplies the rank-r `x·A`, not the `[tokens, out]` result: a pass over r
    /// values per token instead of `out`, forward and backward.
    pub fn adapter_delta<const D: usize>(
        &self,
        x: Tensor<D>,
        a: &Tensor<2>,
        b: &Tensor<2>,
        ctx: &Ctx,
    ) -> Tensor<D> {
        let x = dropout(x, self.lora_dropout, ctx);
        linear(
            linear(x, a.clone(), None) * self.lora_scaling,
            b.clone(),
            None,
        )
    }
}
