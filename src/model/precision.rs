//! `--precision f32|bf16|f16`: the dtype the matrix products of a training forward run in.
//!
//! The policy is PyTorch autocast's: the weights stay f32 (the master copy the optimizer
//! updates), and only the compute-bound ops — linear layers, attention, convolutions — cast
//! their inputs to half precision and their outputs back to f32. Normalisation, softmax,
//! GELU, the residual stream and the loss stay f32, where half precision loses accuracy for
//! little speed. The casts are differentiable, so gradients reach the f32 weights in f32.

use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    #[value(alias = "none")]
    F32,
    /// bfloat16 matmuls: f32's exponent range, so no loss scaling is needed.
    Bf16,
    /// float16 matmuls: small gradients underflow, so the loss is scaled (dynamic loss scaling).
    #[value(alias = "fp16")]
    F16,
}

impl Precision {
    /// The dtype compute-bound ops run in, `None` for f32.
    pub fn half(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// Whether gradients need loss scaling (only f16's exponent range is too narrow).
    pub fn scales_loss(self) -> bool {
        self == Precision::F16
    }

    /// Refuses a half precision `device` cannot compute in (lavapipe has no bf16 matmul), in one
    /// line before anything runs; the backend would otherwise panic at the first product.
    pub fn check_device(self, device: &Device) -> crate::error::Result<()> {
        match self.half() {
            Some(dtype) if !device.supports_dtype(dtype) => {
                Err(crate::error::Error::Config(format!(
                    "--precision {}: this device cannot compute in it ({device:?}); use --precision {} (or f32)",
                    self.name(),
                    if self == Precision::Bf16 {
                        "f16"
                    } else {
                        "bf16"
                    }
                )))
            }
            _ => Ok(()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

/// Cast into the compute dtype (identity for f32).
pub fn down<const D: usize>(t: Tensor<D>, p: Precision) -> Tensor<D> {
    match p.half() {
        Some(dtype) => t.cast(dtype),
        None => t,
    }
}

/// Cast a compute-dtype result back to f32 (identity for f32).
pub fn up<const D: usize>(t: Tensor<D>, p: Precision) -> Tensor<D> {
    match p.half() {
        Some(_) => t.cast(FloatDType::F32),
        None => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_the_yardstick_parse() {
        use clap::ValueEnum;
        for (s, p) in [
            ("none", Precision::F32),
            ("fp16", Precision::F16),
            ("bf16", Precision::Bf16),
        ] {
            assert_eq!(Precision::from_str(s, false).unwrap(), p);
        }
    }
}
