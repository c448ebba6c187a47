//! The Vision Transformer, on one screen: timm's `VisionTransformer` (pre-norm, learned
//! position embeddings) with the pieces today's families use: class token or none, DeiT's
//! distillation token, register tokens, position embeddings that skip the prefix tokens,
//! LayerScale, `norm_pre`, `fc_norm`, GELU / QuickGELU / SwiGLU MLPs, token / average /
//! class+mean pooling.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use super::layers::{Act, MlpKind};
use super::layers::{
    Attention, Block, Ctx, Init, LayerNorm, LayerScale, Linear, Mlp, PatchEmbed, dropout,
};
use crate::error::{Error, Result};

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// The class token's final state (timm `global_pool='token'`).
    Cls,
    /// Mean over the patch tokens (timm `global_pool='avg'`).
    Avg,
    /// The class token and the mean of the patch tokens, concatenated (HF
    /// `Dinov2ForImageClassification`): the head takes twice the width.
    ClsMean,
}

/// What a distillation-token ViT predicts with: the mean of both heads (DeiT), or one of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EvalHead {
    #[default]
    Avg,
    Cls,
    Dist,
}

/// Everything that fixes a ViT's shape and behaviour; saved as `config.json` in checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub num_classes: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub qkv_bias: bool,
    /// Dropout after the attention projection and inside the MLP.
    pub drop_rate: f64,
    pub attn_drop_rate: f64,
    /// Stochastic depth of the last block; block i gets `drop_path_rate · i / (depth − 1)`.
    pub drop_path_rate: f64,
    pub layer_norm_eps: f64,
    pub pool: Pool,
    /// DeiT: a second learned token after the class token, with its own head.
    #[serde(default)]
    pub dist_token: bool,
    /// With a distillation token: the head(s) evaluation and prediction use.
    #[serde(default)]
    pub eval_head: EvalHead,
    /// A class token (timm `class_token`; off in GAP models, which pool by average).
    #[serde(default = "yes")]
    pub class_token: bool,
    /// Register tokens after the class token (timm `reg_tokens`; DINOv2 with registers).
    #[serde(default)]
    pub reg_tokens: usize,
    /// The position embedding covers the patches only; prefix tokens get none (timm
    /// `no_embed_class`: DeiT III, register models).
    #[serde(default)]
    pub no_embed_class: bool,
    /// LayerScale's initial gain on both residual branches (timm `init_values`), or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_scale: Option<f64>,
    /// A LayerNorm before the blocks (`norm_pre`; CLIP, whose patch projection has no bias).
    #[serde(default)]
    pub pre_norm: bool,
    #[serde(default = "yes")]
    pub patch_bias: bool,
    /// The final LayerNorm acts after pooling (`fc_norm`) instead of on every token (`norm`).
    #[serde(default)]
    pub fc_norm: bool,
    #[serde(default)]
    pub act: Act,
    #[serde(default)]
    pub mlp: MlpKind,
    /// A CNN instead of the ViT: `img_size`, `in_chans` and `num_classes` still apply, the
    /// transformer fields are unused. Absent in ViT checkpoints (which stay loadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnn: Option<super::cnn::CnnConfig>,
}

impl VitConfig {
    /// A ViT of the given shape with timm's defaults: qkv bias, no dropout, LayerNorm eps
    /// 1e-6, class-token pooling, no distillation token. `dims` = [embed_dim, depth,
    /// num_heads, mlp_dim].
    pub fn with_shape(
        img_size: usize,
        patch_size: usize,
        in_chans: usize,
        num_classes: usize,
        dims: [usize; 4],
    ) -> Self {
        VitConfig {
            img_size,
            patch_size,
            in_chans,
            num_classes,
            embed_dim: dims[0],
            depth: dims[1],
            num_heads: dims[2],
            mlp_dim: dims[3],
            qkv_bias: true,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
            layer_norm_eps: 1e-6,
            pool: Pool::Cls,
            dist_token: false,
            eval_head: EvalHead::Avg,
            class_token: true,
            reg_tokens: 0,
            no_embed_class: false,
            layer_scale: None,
            pre_norm: false,
            patch_bias: true,
            fc_norm: false,
            act: Act::Gelu,
            mlp: MlpKind::Mlp,
            cnn: None,
        }
    }

    /// The config of a CNN (`model::cnn`) on `img_size`² images with `in_chans` channels.
    pub fn cnn(
        img_size: usize,
        in_chans: usize,
        num_classes: usize,
        cnn: super::cnn::CnnConfig,
    ) -> Self {
        VitConfig {
            cnn: Some(cnn),
            ..VitConfig::with_shape(img_size, img_size, in_chans, num_classes, [0; 4])
        }
    }

    pub fn num_patches(&self) -> usize {
        (self.img_size / self.patch_size).pow(2)
    }

    /// Class, distillation and register tokens before the patches.
    pub fn num_prefix_tokens(&self) -> usize {
        self.class_token as usize + self.dist_token as usize + self.reg_tokens
    }

    /// Rows of the position embedding: every token, or only the patches (`no_embed_class`).
    pub fn num_pos_tokens(&self) -> usize {
        self.num_patches()
            + if self.no_embed_class {
                0
            } else {
                self.num_prefix_tokens()
            }
    }

    /// Width of what the head sees.
    pub fn head_in(&self) -> usize {
        match self.pool {
            Pool::ClsMean => 2 * self.embed_dim,
            _ => self.embed_dim,
        }
    }

    /// Rejects shapes that cannot be built, before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if let Some(c) = &self.cnn {
            if self.num_classes == 0 || self.in_chans == 0 {
                return bad("num-classes and input channels must be > 0".into());
            }
            return c.validate();
        }
        if self.embed_dim == 0 || self.depth == 0 || self.num_heads == 0 || self.mlp_dim == 0 {
            return bad("embed-dim, depth, num-heads and mlp-dim must all be > 0".into());
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return bad(format!(
                "embed-dim {} is not divisible by num-heads {} (pick heads dividing the dimension, e.g. {})",
                self.embed_dim,
                self.num_heads,
                divisors_near(self.embed_dim, self.num_heads)
            ));
        }
        if self.patch_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "img-size {} is not divisible by patch-size {} (choose a patch size that divides the image size)",
                self.img_size, self.patch_size
            ));
        }
        if self.num_classes == 0 || self.in_chans == 0 {
            return bad("num-classes and input channels must be > 0".into());
        }
        for (name, p) in [
            ("dropout", self.drop_rate),
            ("attn-dropout", self.attn_drop_rate),
            ("drop-path", self.drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} {p} must be in [0, 1)"));
            }
        }
        if !self.class_token && matches!(self.pool, Pool::Cls | Pool::ClsMean) {
            return bad("a ViT without a class token pools by average (pool avg)".into());
        }
        if self.dist_token && (!self.class_token || self.reg_tokens > 0) {
            return bad("a distillation token follows a class token, without registers".into());
        }
        crate::memory::ensure_fits(
            format_args!(
                "a ViT of embed-dim {}, depth {}, mlp-dim {} on {} tokens ({} weights)",
                self.embed_dim,
                self.depth,
                self.mlp_dim,
                self.num_tokens(),
                self.num_params()
            ),
            4 * self.num_params(),
            "choose smaller sizes (--embed-dim, --depth, --mlp-dim, --img-size)",
        )
    }

    /// Tokens per image: patches and prefix tokens (u128: sizes from files can be anything).
    pub fn num_tokens(&self) -> u128 {
        let side = (self.img_size / self.patch_size.max(1)) as u128;
        (side * side).saturating_add(self.num_prefix_tokens() as u128)
    }

    /// The weights of the classification head(s): a class head, and a distillation head when
    /// there is a distillation token.
    pub fn head_params(&self) -> u128 {
        let (head_in, classes) = (self.head_in() as u128, self.num_classes as u128);
        (1 + self.dist_token as u128) * (head_in + 1).saturating_mul(classes)
    }

    /// The ViT's weights, counted from its shape without building it.
    pub fn num_params(&self) -> u128 {
        let [d, m] = [self.embed_dim, self.mlp_dim].map(|v| v as u128);
        let p = self.patch_size as u128;
        let patch_embed =
            (self.in_chans as u128 * p * p + self.patch_bias as u128).saturating_mul(d);
        // Position embeddings, and the class (and distillation) token itself.
        let pos = self.num_tokens()
            - if self.no_embed_class {
                self.num_prefix_tokens() as u128
            } else {
                0
            };
        let tokens = (pos + self.num_prefix_tokens() as u128).saturating_mul(d);
        // Two norms, qkv and projection, the MLP's two layers (weights and biases; a gated
        // fc1 is twice as wide), LayerScale's two gains.
        let fc1_out = if self.mlp == MlpKind::Glu { 2 * m } else { m };
        let block = (4 * d)
            .saturating_add((4 * d).saturating_mul(d + 1))
            .saturating_add((d + 1).saturating_mul(fc1_out))
            .saturating_add(m.saturating_mul(d) + d)
            .saturating_add(if self.layer_scale.is_some() { 2 * d } else { 0 });
        let norms = 2 * d * (1 + self.pre_norm as u128);
        patch_embed
            .saturating_add(tokens)
            .saturating_add(block.saturating_mul(self.depth as u128))
            .saturating_add(norms)
            .saturating_add(self.head_params())
    }
}

/// The head count nearest `heads` that divides `dim` (searching outwards: at most `heads`
/// steps, whatever `dim` is).
fn divisors_near(dim: usize, heads: usize) -> usize {
    (0..=heads)
        .flat_map(|d| [heads - d, heads.saturating_add(d)])
        .find(|&h| h > 0 && dim.is_multiple_of(h))
        .unwrap_or(1)
}

#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub patch_embed: PatchEmbed,
    pub cls_token: Option<Param<Tensor<3>>>,
    pub dist_token: Option<Param<Tensor<3>>>,
    pub reg_token: Option<Param<Tensor<3>>>,
    pub pos_embed: Param<Tensor<3>>,
    pub norm_pre: Option<LayerNorm>,
    pub blocks: Vec<Block>,
    /// On every token (`norm`), or after pooling (`fc_norm`): one of the two.
    pub norm: Option<LayerNorm>,
    pub fc_norm: Option<LayerNorm>,
    pub head: Linear,
    pub head_dist: Option<Linear>,
    pub drop_rate: f64,
    #[module(skip)]
    pub config: VitConfig,
}

/// What one forward pass gives: the class-token logits, and the distillation-token logits
/// when the model has one.
pub struct VitOutput {
    pub logits: Tensor<2>,
    pub dist_logits: Option<Tensor<2>>,
}

impl VisionTransformer {
    pub fn new(config: &VitConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let c = config;
        let mut init = Init::new(seed);
        let dim = c.embed_dim;
        let mut patch_embed = PatchEmbed::new(c.in_chans, dim, c.patch_size, &mut init, device);
        if !c.patch_bias {
            patch_embed.proj.bias = None;
        }
        let mut token = |n: usize| Param::from_tensor(init.trunc_normal([1, n, dim], 0.02, device));
        let cls_token = c.class_token.then(|| token(1));
        let dist_token = c.dist_token.then(|| token(1));
        let reg_token = (c.reg_tokens > 0).then(|| token(c.reg_tokens));
        let pos_embed = token(c.num_pos_tokens());
        let norm = || LayerNorm::new(dim, c.layer_norm_eps, device);
        let scale = || c.layer_scale.map(|g| LayerScale::new(dim, g, device));
        let fc1_out = match c.mlp {
            MlpKind::Mlp => c.mlp_dim,
            MlpKind::Glu => 2 * c.mlp_dim,
        };
        let blocks = (0..c.depth)
            .map(|i| {
                let dpr = if c.depth > 1 {
                    c.drop_path_rate * i as f64 / (c.depth - 1) as f64
                } else {
                    c.drop_path_rate
                };
                Block {
                    norm1: norm(),
                    attn: Attention {
                        qkv: Linear::new(dim, 3 * dim, c.qkv_bias, &mut init, device),
                        proj: Linear::new(dim, dim, true, &mut init, device),
                        num_heads: c.num_heads,
                        attn_drop: c.attn_drop_rate,
                        proj_drop: c.drop_rate,
                    },
                    ls1: scale(),
                    norm2: norm(),
                    mlp: Mlp {
                        fc1: Linear::new(dim, fc1_out, true, &mut init, device),
                        fc2: Linear::new(c.mlp_dim, dim, true, &mut init, device),
                        drop: c.drop_rate,
                        act: c.act,
                        kind: c.mlp,
                    },
                    ls2: scale(),
                    drop_path: dpr,
                }
            })
            .collect();
        let head_in = c.head_in();
        Ok(VisionTransformer {
            patch_embed,
            cls_token,
            dist_token,
            reg_token,
            pos_embed,
            norm_pre: c.pre_norm.then(norm),
            blocks,
            norm: (!c.fc_norm).then(norm),
            fc_norm: c.fc_norm.then(norm),
            head: Linear::new(head_in, c.num_classes, true, &mut init, device),
            head_dist: c
                .dist_token
                .then(|| Linear::new(head_in, c.num_classes, true, &mut init, device)),
            drop_rate: c.drop_rate,
            config: config.clone(),
        })
    }

    /// Token states `[b, tokens, dim]` after the last block (and `norm`, when the model
    /// normalises tokens rather than the pooled feature).
    pub fn forward_features(&self, x: Tensor<4>, ctx: &Ctx) -> Tensor<3> {
        let x = self.patch_embed.forward(x, ctx);
        let [b, _, dim] = x.dims();
        // timm's order: class, distillation, registers, then the patches.
        let prefix = [&self.cls_token, &self.dist_token, &self.reg_token]
            .into_iter()
            .flatten()
            .map(|t| {
                let n = t.dims()[1];
                t.val().expand([b, n, dim])
            });
        let x = if self.config.no_embed_class {
            let x = x + self.pos_embed.val();
            Tensor::cat(prefix.chain([x]).collect(), 1)
        } else {
            Tensor::cat(prefix.chain([x]).collect(), 1) + self.pos_embed.val()
        };
        let mut x = dropout(x, self.drop_rate, ctx);
        if let Some(n) = &self.norm_pre {
            x = n.forward(x);
        }
        for (i, block) in self.blocks.iter().enumerate() {
            x = match ctx.sparse_block(i) {
                Some(sparse) => block.forward_sparse(x, ctx, sparse, i),
                None => block.forward(x, ctx),
            };
        }
        match &self.norm {
            Some(n) => n.forward(x),
            None => x,
        }
    }

    pub fn forward_heads(&self, x: Tensor<4>, ctx: &Ctx) -> VitOutput {
        let feats = self.forward_features(x, ctx);
        let [b, n, dim] = feats.dims();
        let prefix = self.config.num_prefix_tokens();
        let cls = || feats.clone().narrow(1, 0, 1).reshape([b, dim]);
        let mean = || {
            feats
                .clone()
                .narrow(1, prefix, n - prefix)
                .mean_dim(1)
                .reshape([b, dim])
        };
        let pooled: Tensor<2> = match self.config.pool {
            Pool::Cls => cls(),
            Pool::Avg => mean(),
            Pool::ClsMean => Tensor::cat(vec![cls(), mean()], 1),
        };
        let pooled = match &self.fc_norm {
            Some(n) => n.forward(pooled),
            None => pooled,
        };
        // DeiT's distilled model (and timm's) feeds both heads without dropout; only the
        // plain ViT drops its head input (timm's `head_drop`).
        let pooled = match self.head_dist {
            Some(_) => pooled,
            None => dropout(pooled, self.drop_rate, ctx),
        };
        let logits = self.head.forward_ctx(pooled, ctx);
        let dist_logits = self
            .head_dist
            .as_ref()
            .map(|h| h.forward_ctx(feats.narrow(1, 1, 1).reshape([b, dim]), ctx));
        VitOutput {
            logits,
            dist_logits,
        }
    }

    /// Class logits; with a distillation head, the heads `config.eval_head` names (by
    /// default the average of both, timm's eval output).
    pub fn forward(&self, x: Tensor<4>, ctx: &Ctx) -> Tensor<2> {
        let out = self.forward_heads(x, ctx);
        match (out.dist_logits, self.config.eval_head) {
            (None, _) | (Some(_), EvalHead::Cls) => out.logits,
            (Some(d), EvalHead::Avg) => (out.logits + d) / 2.0,
            (Some(d), EvalHead::Dist) => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::{count_params, named_params};

    fn cfg(img: usize, patch: usize, dims: [usize; 4], classes: usize) -> VitConfig {
        VitConfig::with_shape(img, patch, 3, classes, dims)
    }

    /// `VitConfig::num_params`, the closed form the size guard uses.
    fn closed_form(c: &VitConfig) -> usize {
        c.num_params() as usize
    }

    #[test]
    fn vit_tiny_has_timms_parameter_count() {
        // timm's vit_tiny_patch16_224: 5,717,416 parameters.
        let c = cfg(224, 16, [192, 12, 3, 768], 1000);
        assert_eq!(closed_form(&c), 5_717_416);
        let m = VisionTransformer::new(&c, 0, &Device::flex()).unwrap();
        assert_eq!(count_params(&m).0, 5_717_416);
    }

    #[test]
    fn every_preset_builds_with_the_closed_form_count_and_runs() {
        let device = Device::flex();
        for p in crate::model::PRESETS {
            let img = p.img_size.unwrap_or(32);
            let c = cfg(
                img,
                p.patch_size,
                [p.embed_dim, p.depth, p.num_heads, p.mlp_dim],
                10,
            );
            let m = VisionTransformer::new(&c, 0, &device).unwrap();
            assert_eq!(count_params(&m).0, closed_form(&c), "{}", p.name);
            if img == 32 && p.depth <= 8 {
                let y = m.forward(Tensor::zeros([2, 3, img, img], &device), &Ctx::eval());
                assert_eq!(y.dims(), [2, 10], "{}", p.name);
            }
        }
        // The benchmark model of issue 5.
        assert_eq!(closed_form(&cfg(32, 4, [192, 6, 3, 768], 10)), 2_693_578);
    }

    /// DeiT's distillation token: one more token (with its position embedding) and a second
    /// head; DeiT-Ti distilled at 224/16 with 1,000 classes has 5,910,800 parameters (timm's
    /// deit_tiny_distilled_patch16_224). `eval_head` picks what `forward` returns.
    #[test]
    fn dist_token_shapes_counts_and_eval_heads() {
        let device = Device::flex();
        let deit = crate::model::find_preset("deit-tiny-distilled").unwrap();
        assert!(crate::model::is_distilled_preset("deit-tiny-distilled"));
        let c = VitConfig {
            dist_token: true,
            ..cfg(
                224,
                16,
                [deit.embed_dim, deit.depth, deit.num_heads, deit.mlp_dim],
                1000,
            )
        };
        let m = VisionTransformer::new(&c, 0, &device).unwrap();
        assert_eq!(count_params(&m).0, 5_910_800);
        let c = VitConfig {
            dist_token: true,
            ..cfg(8, 4, [8, 1, 2, 16], 3)
        };
        let m = VisionTransformer::new(&c, 0, &device).unwrap();
        assert_eq!(m.pos_embed.val().dims(), [1, 4 + 2, 8]);
        assert_eq!(m.dist_token.as_ref().unwrap().val().dims(), [1, 1, 8]);
        let x = Tensor::<4>::ones([2, 3, 8, 8], &device);
        assert_eq!(
            m.forward_features(x.clone(), &Ctx::eval()).dims(),
            [2, 6, 8]
        );
        let out = m.forward_heads(x.clone(), &Ctx::eval());
        let (cls, dist) = (out.logits, out.dist_logits.unwrap());
        assert_eq!(dist.dims(), [2, 3]);
        let host = |t: Tensor<2>| {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        };
        let (hc, hd) = (host(cls), host(dist));
        assert_ne!(hc, hd);
        let mut m = m;
        for (head, expect) in [
            (EvalHead::Cls, hc.clone()),
            (EvalHead::Dist, hd.clone()),
            (
                EvalHead::Avg,
                hc.iter().zip(&hd).map(|(a, b)| (a + b) / 2.0).collect(),
            ),
        ] {
            m.config.eval_head = head;
            let got = host(m.forward(x.clone(), &Ctx::eval()));
            for (g, e) in got.iter().zip(&expect) {
                assert!((g - e).abs() < 1e-6, "{head:?}");
            }
        }
    }

    /// With a distillation token the two heads read the final class and distillation tokens
    /// as they are, with no dropout before either (DeiT's `DistilledVisionTransformer`), even
    /// in training with a dropout rate: they differ only by their weights.
    #[test]
    fn dist_token_heads_get_no_dropout() {
        let device = Device::flex();
        let c = VitConfig {
            dist_token: true,
            drop_rate: 0.5,
            ..cfg(8, 4, [8, 1, 2, 16], 3)
        };
        let m = VisionTransformer::new(&c, 0, &device).unwrap();
        let x = Tensor::<4>::ones([2, 3, 8, 8], &device);
        // Same seed and coordinates: the same dropout masks inside the blocks.
        let ctx = || Ctx::train(7, &[1, 2]);
        let feats = m.forward_features(x.clone(), &ctx());
        let out = m.forward_heads(x, &ctx());
        let token = |i: usize| feats.clone().narrow(1, i, 1).reshape([2, 8]);
        for (got, expect) in [
            (out.logits, m.head.forward(token(0))),
            (
                out.dist_logits.unwrap(),
                m.head_dist.as_ref().unwrap().forward(token(1)),
            ),
        ] {
            let d: f32 = (got - expect).abs().max().into_scalar();
            assert!(d < 1e-6, "head input was changed: {d}");
        }
    }

    #[test]
    fn parameter_paths_are_timm_names() {
        let m = VisionTransformer::new(&cfg(8, 4, [8, 2, 2, 16], 3), 0, &Device::flex()).unwrap();
        let names: Vec<String> = named_params(&m).into_iter().map(|p| p.path).collect();
        for n in [
            "patch_embed.proj.weight",
            "patch_embed.proj.bias",
            "cls_token",
            "pos_embed",
            "blocks.0.norm1.weight",
            "blocks.0.norm1.bias",
            "blocks.0.attn.qkv.weight",
            "blocks.0.attn.qkv.bias",
            "blocks.0.attn.proj.weight",
            "blocks.1.norm2.weight",
            "blocks.1.mlp.fc1.weight",
            "blocks.1.mlp.fc2.bias",
            "norm.weight",
            "head.weight",
            "head.bias",
        ] {
            assert!(names.contains(&n.to_string()), "{n} not in {names:?}");
        }
        assert_eq!(names.len(), 4 + 2 * 12 + 4);
    }

    #[test]
    fn impossible_configs_are_errors_not_panics() {
        let e =
            VisionTransformer::new(&cfg(32, 4, [10, 1, 3, 8], 3), 0, &Device::flex()).unwrap_err();
        assert!(e.to_string().contains("not divisible by num-heads"));
        let e =
            VisionTransformer::new(&cfg(30, 4, [12, 1, 3, 8], 3), 0, &Device::flex()).unwrap_err();
        assert!(e.to_string().contains("not divisible by patch-size"));
    }
}
