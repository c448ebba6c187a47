//! Any model vitrs trains: the ViT or a CNN. One enum so that the trainer, evaluation,
//! checkpoints and pretrained loading handle them alike; burn's derive makes it a module,
//! and the variant adds no segment to parameter paths (see `params`), so each model keeps
//! its timm names.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::cnn::{CnnConfig, CnnFast};
use super::layers::Ctx;
use super::resnet::ResNet;
use super::vit::{EvalHead, VitOutput};
use super::{VisionTransformer, VitConfig};
use crate::error::{Error, Result};

// One model per run: the variants' size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    Vit(VisionTransformer),
    ResNet(ResNet),
    CnnFast(CnnFast),
}

impl Model {
    /// The model `config` describes: a ViT, or the CNN of `config.cnn`.
    pub fn new(config: &VitConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        Ok(match &config.cnn {
            None => Model::Vit(VisionTransformer::new(config, seed, device)?),
            Some(c @ CnnConfig::Resnet { .. }) => Model::ResNet(ResNet::new(
                c,
                config.in_chans,
                config.num_classes,
                seed,
                device,
            )?),
            Some(CnnConfig::CnnFast { widths }) => Model::CnnFast(CnnFast::new(
                config.in_chans,
                widths,
                config.num_classes,
                seed,
                device,
            )),
        })
    }

    /// Class logits, and the distillation head's logits for a ViT with a distillation token.
    pub fn forward_heads(&self, x: Tensor<4>, ctx: &Ctx) -> VitOutput {
        let cnn = |logits| VitOutput {
            logits,
            dist_logits: None,
        };
        match self {
            Model::Vit(m) => m.forward_heads(x, ctx),
            Model::ResNet(m) => cnn(m.forward(x, ctx)),
            Model::CnnFast(m) => cnn(m.forward(x, ctx)),
        }
    }

    /// The prediction: for a distillation-token ViT the heads combined as its `eval_head`
    /// says.
    pub fn forward(&self, x: Tensor<4>, ctx: &Ctx) -> Tensor<2> {
        match self {
            Model::Vit(m) => m.forward(x, ctx),
            _ => self.forward_heads(x, ctx).logits,
        }
    }

    /// The same model predicting with another head combination (no effect without a
    /// distillation token).
    pub fn with_eval_head(self, head: EvalHead) -> Self {
        match self {
            Model::Vit(mut m) => {
                m.config.eval_head = head;
                Model::Vit(m)
            }
            other => other,
        }
    }

    /// Apply `f` to the ViT inside (LoRA adapters wrap the ViT's linears); a CNN is an error.
    pub fn map_vit(
        self,
        f: impl FnOnce(VisionTransformer) -> Result<VisionTransformer>,
    ) -> Result<Self> {
        match self {
            Model::Vit(m) => Ok(Model::Vit(f(m)?)),
            _ => Err(Error::Config(
                "LoRA adapters apply to ViTs only and this model is a CNN (drop --adapter / --adapter-from)".into(),
            )),
        }
    }

    /// The ViT inside, or an error saying the feature needs one.
    pub fn as_vit(&self) -> Result<&VisionTransformer> {
        match self {
            Model::Vit(m) => Ok(m),
            _ => Err(Error::Config(
                "this needs a ViT and the model is a CNN (SparseLoRA and LoRA adapters wrap a ViT's linears)".into(),
            )),
        }
    }

    /// The ViT, when this model is one.
    pub fn into_vit(self) -> Option<VisionTransformer> {
        match self {
            Model::Vit(m) => Some(m),
            _ => None,
        }
    }
}
