//! Models: the ViT (one file), its layers, the CNNs, adapters, parameter plumbing and
//! safetensors I/O. Pretrained weights (HF / timm, hub cache, export) are `crate::weights`.

pub mod classifier;
pub mod cnn;
pub mod fused;
pub mod io;
pub mod layers;
pub mod linear;
pub mod lora;
pub mod params;
pub mod precision;
pub mod resnet;
pub mod sparse;
pub mod vit;

pub use classifier::Model;
pub use vit::{Act, EvalHead, MlpKind, Pool, VisionTransformer, VitConfig};

/// A named model size. `None` image size means "the dataset's own" (the CIFAR-sized presets
/// train at 32×32 on CIFAR and 28×28 on Fashion-MNIST).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub img_size: Option<usize>,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    /// Seed 001's CIFAR recipe uses 0.1 dropout in attention and MLP; timm's ImageNet
    /// models default to none.
    pub dropout: f64,
}

const fn preset(
    name: &'static str,
    img_size: Option<usize>,
    patch_size: usize,
    dims: [usize; 4],
    dropout: f64,
) -> Preset {
    Preset {
        name,
        img_size,
        patch_size,
        embed_dim: dims[0],
        depth: dims[1],
        num_heads: dims[2],
        mlp_dim: dims[3],
        dropout,
    }
}

/// The presets, smallest first. `vit-hf-scratch` (the seeds' name) is `vit-cifar`.
pub const PRESETS: &[Preset] = &[
    // The seeds' "small model (faster training)": 128 dim, 6 layers, 4 heads, mlp 512.
    preset("vit-cifar-small", None, 4, [128, 6, 4, 512], 0.1),
    // The benchmark model of BENCHMARKS.md (issue 5): 192 dim, 6 layers, 3 heads.
    preset("vit-tiny-c10", None, 4, [192, 6, 3, 768], 0.0),
    // The seeds' default for CIFAR: patch 4, hidden 256, 8 layers, 8 heads.
    preset("vit-cifar", None, 4, [256, 8, 8, 1024], 0.1),
    // The seeds' "large model (better accuracy)": 384 dim, 24 layers, 6 heads, mlp 1536.
    preset("vit-cifar-large", None, 4, [384, 24, 6, 1536], 0.1),
    // timm's ImageNet sizes at 224/16.
    preset("vit-tiny", Some(224), 16, [192, 12, 3, 768], 0.0),
    preset("vit-small", Some(224), 16, [384, 12, 6, 1536], 0.0),
    preset("vit-base", Some(224), 16, [768, 12, 12, 3072], 0.0),
    // DeiT's sizes (Touvron et al. 2021): ViT-Ti/S/B at 224/16; `-distilled` adds the
    // distillation token (DeiT-Ti distilled, 1,000 classes: 5,910,800 parameters).
    preset("deit-tiny", Some(224), 16, [192, 12, 3, 768], 0.0),
    preset("deit-small", Some(224), 16, [384, 12, 6, 1536], 0.0),
    preset("deit-base", Some(224), 16, [768, 12, 12, 3072], 0.0),
];

/// `deit-*-distilled`: the DeiT preset with a distillation token.
pub fn is_distilled_preset(name: &str) -> bool {
    name.starts_with("deit-") && name.ends_with("-distilled")
}

pub fn find_preset(name: &str) -> Option<Preset> {
    let name = match name {
        "vit-hf-scratch" => "vit-cifar",
        n if is_distilled_preset(n) => n.trim_end_matches("-distilled"),
        n => n,
    };
    PRESETS.iter().copied().find(|p| p.name == name)
}

pub fn preset_names() -> Vec<&'static str> {
    let mut v: Vec<_> = PRESETS.iter().map(|p| p.name).collect();
    v.push("vit-hf-scratch");
    v.extend([
        "deit-tiny-distilled",
        "deit-small-distilled",
        "deit-base-distilled",
    ]);
    v.extend(cnn::CNN_MODELS);
    v
}
