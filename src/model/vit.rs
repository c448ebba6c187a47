//! The Vision Transformer, on one screen (timm's `VisionTransformer`, pre-norm, class token,
//! learned position embeddings; optional DeiT distillation token).

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::layers::{Attention, Block, Ctx, Init, LayerNorm, Linear, Mlp, PatchEmbed, dropout};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// The class token's final state (timm `global_pool='token'`).
    Cls,
    /// Mean over the patch tokens (timm `global_pool='avg'`).
    Avg,
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

    pub fn num_prefix_tokens(&self) -> usize {
        1 + self.dist_token as usize
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

    /// The ViT's weights, counted from its shape without building it.
    pub fn num_params(&self) -> u128 {
        let [d, m, c] = [self.embed_dim, self.mlp_dim, self.num_classes].map(|v| v as u128);
        let p = self.patch_size as u128;
        let patch_embed = (self.in_chans as u128 * p * p + 1).saturating_mul(d);
        // Position embeddings, and the class (and distillation) token itself.
        let tokens = (self.num_tokens() + self.num_prefix_tokens() as u128).saturating_mul(d);
        // Two norms, qkv and projection, the MLP's two layers (weights and biases).
        let block = (4 * d)
            .saturating_add((4 * d).saturating_mul(d + 1))
            .saturating_add((2 * d + 1).saturating_mul(m))
            .saturating_add(d);
        let heads = (1 + self.dist_token as u128) * (d + 1).saturating_mul(c);
        patch_embed
            .saturating_add(tokens)
            .saturating_add(block.saturating_mul(self.depth as u128))
            .saturating_add(2 * d)
            .saturating_add(heads)
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
    pub cls_token: Param<Tensor<3>>,
    pub dist_token: Option<Param<Tensor<3>>>,
    pub pos_embed: Param<Tensor<3>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
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
        let tokens = c.num_patches() + c.num_prefix_tokens();
        let patch_embed = PatchEmbed::new(c.in_chans, dim, c.patch_size, &mut init, device);
        let cls_token = Param::from_tensor(init.trunc_normal([1, 1, dim], 0.02, device));
        let dist_token = c
            .dist_token
            .then(|| Param::from_tensor(init.trunc_normal([1, 1, dim], 0.02, device)));
        let pos_embed = Param::from_tensor(init.trunc_normal([1, tokens, dim], 0.02, device));
        let blocks = (0..c.depth)
            .map(|i| {
                let dpr = if c.depth > 1 {
                    c.drop_path_rate * i as f64 / (c.depth - 1) as f64
                } else {
                    c.drop_path_rate
                };
                Block {
                    norm1: LayerNorm::new(dim, c.layer_norm_eps, device),
                    attn: Attention {
                        qkv: Linear::new(dim, 3 * dim, c.qkv_bias, &mut init, device),
                        proj: Linear::new(dim, dim, true, &mut init, device),
                        num_heads: c.num_heads,
                        attn_drop: c.attn_drop_rate,
                        proj_drop: c.drop_rate,
                    },
                    norm2: LayerNorm::new(dim, c.layer_norm_eps, device),
                    mlp: Mlp {
                        fc1: Linear::new(dim, c.mlp_dim, true, &mut init, device),
                        fc2: Linear::new(c.mlp_dim, dim, true, &mut init, device),
                        drop: c.drop_rate,
                    },
                    drop_path: dpr,
                }
            })
            .collect();
        Ok(VisionTransformer {
            patch_embed,
            cls_token,
            dist_token,
            pos_embed,
            blocks,
            norm: LayerNorm::new(dim, c.layer_norm_eps, device),
            head: Linear::new(dim, c.num_classes, true, &mut init, device),
            head_dist: c
                .dist_token
                .then(|| Linear::new(dim, c.num_classes, true, &mut init, device)),
            drop_rate: c.drop_rate,
            config: config.clone(),
        })
    }

    /// Final-norm token states `[b, tokens, dim]`.
    pub fn forward_features(&self, x: Tensor<4>, ctx: &Ctx) -> Tensor<3> {
        let x = self.patch_embed.forward(x, ctx);
        let [b, _, dim] = x.dims();
        let mut prefix = vec![self.cls_token.val().expand([b, 1, dim])];
        if let Some(t) = &self.dist_token {
            prefix.push(t.val().expand([b, 1, dim]));
        }
        prefix.push(x);
        let mut x = dropout(
            Tensor::cat(prefix, 1) + self.pos_embed.val(),
            self.drop_rate,
            ctx,
        );
        for (i, block) in self.blocks.iter().enumerate() {
            x = match ctx.sparse_block(i) {
                Some(sparse) => block.forward_sparse(x, ctx, sparse, i),
                None => block.forward(x, ctx),
            };
        }
        self.norm.forward(x)
    }

    pub fn forward_heads(&self, x: Tensor<4>, ctx: &Ctx) -> VitOutput {
        let feats = self.forward_features(x, ctx);
        let [b, n, dim] = feats.dims();
        let pooled: Tensor<2> = match self.config.pool {
            Pool::Cls => feats.clone().narrow(1, 0, 1).reshape([b, dim]),
            Pool::Avg => {
                let prefix = self.config.num_prefix_tokens();
                feats
                    .clone()
                    .narrow(1, prefix, n - prefix)
                    .mean_dim(1)
                    .reshape([b, dim])
            }
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
