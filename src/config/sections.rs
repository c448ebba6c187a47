//! The sections of the configuration, each filled by its flags (and TOML keys), and the
//! value kinds they use. [`super::Config`] flattens them.

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::clap_defaults;
use crate::model::precision::Precision;
use crate::model::{EvalHead, Pool};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    Cifar10,
    Cifar100,
    FashionMnist,
    Mnist,
    Imagefolder,
    Synthetic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InterpKind {
    Nearest,
    Bilinear,
    Bicubic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EraseKind {
    Pixel,
    Rand,
    Const,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterKind {
    /// Train every parameter (no adapter).
    None,
    /// LoRA adapters on the target linears; the base frozen.
    Lora,
    /// LoRA plus contextual sparsity on the frozen base (SparseLoRA, Khaki et al. 2025).
    Sparselora,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LabelKind {
    Fine,
    Coarse,
}

/// How a teacher trains the student (`--distillation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DistillKind {
    /// No distillation loss (a `--teacher` is then only measured: its accuracy, agreement).
    None,
    /// `(1 − α)·CE(z_s, y) + α·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ))`.
    Soft,
    /// DeiT's hard distillation: `½·CE(z_s, y) + ½·CE(z_d, argmax z_t)`.
    Hard,
}

/// What to train on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(rename_all = "kebab-case", default)]
#[command(next_help_heading = "Data")]
pub struct DataConfig {
    /// Dataset to train on.
    #[arg(long, value_enum, default_value = "cifar10")]
    pub dataset: DatasetKind,
    /// Where datasets live (downloaded there if missing). Default: $VITRS_DATA_DIR or ~/.cache/vitrs/data;
    /// for fashion-mnist /usr/share/datasets/fashion-mnist when present.
    #[arg(long, alias = "data_dir")]
    pub data_dir: Option<PathBuf>,
    /// CIFAR-100 labels: the 100 fine classes or the 20 coarse super-classes.
    #[arg(long, value_enum, default_value = "fine", alias = "label_type")]
    pub label_type: LabelKind,
    /// Use only the first N training images (0 = all).
    #[arg(long, default_value_t = 0, alias = "limit_train")]
    pub limit_train: usize,
    /// Use only the first N validation images (0 = all).
    #[arg(long, default_value_t = 0, alias = "limit_val")]
    pub limit_val: usize,
    /// Size of the synthetic training set (the validation set is a fifth of it).
    #[arg(long, default_value_t = 2000, alias = "synthetic_size")]
    pub synthetic_size: usize,
    /// Fail on unreadable images in an imagefolder instead of skipping them.
    #[arg(long)]
    pub strict: bool,
    /// Train and evaluate on a subset of the dataset's classes, remapped to 0..k−1: ranges and lists, e.g. 0-4 or 5,6,7,8,9.
    #[arg(long)]
    pub classes: Option<String>,
    /// Per-channel normalisation mean, comma-separated (default: the pretrained weights' own, ImageNet's for pretrained weights that do not say, else the dataset's).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub mean: Option<Vec<f64>>,
    /// Per-channel normalisation standard deviation (defaults as for --mean).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub std: Option<Vec<f64>>,
}

impl Default for DataConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// Augmentation of the training split and its targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(rename_all = "kebab-case", default)]
#[command(next_help_heading = "Augmentation")]
pub struct AugmentConfig {
    /// RandomCrop zero padding in pixels; 0 disables the random crop (seed 001: 4).
    #[arg(long, default_value_t = 4, alias = "crop_padding", alias = "padding")]
    pub crop_padding: usize,
    /// Horizontal flip probability.
    #[arg(long, default_value_t = 0.5, alias = "hflip_prob", alias = "flip-prob")]
    pub hflip: f64,
    /// RandomResizedCrop (scale/ratio below) instead of the padded RandomCrop.
    #[arg(long, alias = "random-resized-crop", alias = "random_resized_crop")]
    pub rrc: bool,
    /// RandomResizedCrop area range, as a fraction of the image.
    #[arg(long, value_delimiter = ',', default_values_t = [0.08, 1.0], alias = "rrc_scale", alias = "scale")]
    pub rrc_scale: Vec<f64>,
    /// RandomResizedCrop aspect-ratio range.
    #[arg(long, value_delimiter = ',', default_values_t = [0.75, 4.0 / 3.0], alias = "rrc_ratio", alias = "ratio")]
    pub rrc_ratio: Vec<f64>,
    /// Resampling filter for resizing and RandomResizedCrop.
    #[arg(long, value_enum, default_value = "bicubic", alias = "interp")]
    pub interpolation: InterpKind,
    /// RandomRotation: angle drawn uniformly in [-deg, deg] (0 = off).
    #[arg(
        long,
        default_value_t = 0.0,
        alias = "rotation_degrees",
        alias = "rotation-degrees"
    )]
    pub rotation: f64,
    /// ColorJitter: one value for brightness, contrast and saturation, or four: B,C,S,HUE (off when empty).
    #[arg(long, value_delimiter = ',', alias = "color_jitter", alias = "jitter")]
    pub color_jitter: Vec<f64>,
    /// RandAugment policy in timm's syntax, e.g. rand-m9-mstd0.5-inc1 (replaces color jitter).
    #[arg(long, alias = "auto-augment", alias = "auto_augment", alias = "aa")]
    pub randaugment: Option<String>,
    /// Random-erasing probability (timm's reprob), applied after normalisation.
    #[arg(
        long,
        default_value_t = 0.0,
        alias = "random-erasing",
        alias = "random_erasing"
    )]
    pub reprob: f64,
    /// Random-erasing fill: pixel (per-value noise), rand (per-channel noise) or const (zeros).
    #[arg(long, value_enum, default_value = "pixel")]
    pub remode: EraseKind,
    /// Mixup alpha (0 = off).
    #[arg(
        long,
        default_value_t = 0.0,
        alias = "mixup_alpha",
        alias = "mixup-alpha"
    )]
    pub mixup: f64,
    /// CutMix alpha (0 = off).
    #[arg(
        long,
        default_value_t = 0.0,
        alias = "cutmix_alpha",
        alias = "cutmix-alpha"
    )]
    pub cutmix: f64,
    /// Probability that a batch is mixed at all.
    #[arg(long, default_value_t = 1.0, alias = "mixup_prob")]
    pub mixup_prob: f64,
    /// With both on, the probability of CutMix rather than Mixup.
    #[arg(long, default_value_t = 0.5, alias = "mixup_switch_prob")]
    pub mixup_switch_prob: f64,
    #[arg(long, default_value_t = 0.1, alias = "label_smoothing")]
    pub label_smoothing: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// The model: a preset or pretrained weights, its shape and regularisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(rename_all = "kebab-case", default)]
#[command(next_help_heading = "Model")]
pub struct ModelConfig {
    /// Model preset (vit-cifar-small, vit-tiny-c10, vit-cifar, vit-cifar-large, vit-tiny, vit-small, vit-base; vit-hf-scratch = vit-cifar; vit-hf-pretrained = seed 000's fine-tuning recipe, needs --pretrained).
    #[arg(id = "model", long = "model", default_value = "vit-cifar")]
    #[serde(rename = "model")]
    pub name: String,
    /// Start from pretrained weights: a directory (HF transformers config.json + model.safetensors, timm, or a vitrs checkpoint), a .safetensors file, or a Hugging Face hub id (google/vit-base-patch16-224-in21k). The model's shape comes from them.
    #[arg(long)]
    pub pretrained: Option<String>,
    /// With --pretrained: a fresh classification head even when the class count matches.
    #[arg(long, alias = "reset_head")]
    pub reset_head: bool,
    /// Input resolution (default: the preset's, or the dataset's for CIFAR-sized presets).
    #[arg(long, alias = "img_size")]
    pub img_size: Option<usize>,
    #[arg(long, alias = "patch_size")]
    pub patch_size: Option<usize>,
    /// Token dimension.
    #[arg(
        long,
        alias = "embedding_dim",
        alias = "embed_dim",
        alias = "hidden-size"
    )]
    pub embed_dim: Option<usize>,
    /// Number of transformer blocks.
    #[arg(long, alias = "num_layers", alias = "num-layers")]
    pub depth: Option<usize>,
    #[arg(long, alias = "num_heads")]
    pub num_heads: Option<usize>,
    /// Hidden size of each block's MLP.
    #[arg(long, alias = "mlp_size", alias = "mlp-size", alias = "mlp_dim")]
    pub mlp_dim: Option<usize>,
    /// Number of classes (default: the dataset's).
    #[arg(long, alias = "num_classes")]
    pub num_classes: Option<usize>,
    /// Bias on the fused qkv projection.
    #[arg(long, alias = "qkv_bias", default_value_t = true, action = clap::ArgAction::Set)]
    pub qkv_bias: bool,
    /// Dropout after attention projection and in the MLP (default: the preset's).
    #[arg(long, alias = "drop-rate", alias = "drop_rate")]
    pub dropout: Option<f64>,
    /// Dropout on the attention matrix (default: the preset's).
    #[arg(
        long,
        alias = "attn_dropout",
        alias = "attn-drop-rate",
        alias = "attn_drop_rate"
    )]
    pub attn_dropout: Option<f64>,
    /// Stochastic depth of the last block (linear schedule from 0).
    #[arg(
        long,
        default_value_t = 0.0,
        alias = "drop_path",
        alias = "drop-path-rate",
        alias = "drop_path_rate"
    )]
    pub drop_path: f64,
    /// Pooling for the head: the class token, the mean of the patch tokens, or both side by side (cls-mean, HF DINOv2's classifier).
    #[arg(long, value_enum, default_value = "cls")]
    pub pool: Pool,
    /// DeiT's distillation token: a second learned token after the class token, with its own head (head_dist) trained by the distillation loss.
    #[arg(long, alias = "dist_token")]
    pub dist_token: bool,
    /// With a distillation token: predict with the mean of both heads (avg, DeiT), the class head or the distillation head.
    #[arg(long, value_enum, default_value = "avg", alias = "eval_head")]
    pub eval_head: EvalHead,
    /// --model cnn-fast: channels of its stages (each halves the resolution).
    #[arg(long, value_delimiter = ',', default_values_t = [64, 128, 256], alias = "cnn_widths")]
    pub cnn_widths: Vec<usize>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// What trains: the whole model, the head, or LoRA / SparseLoRA adapters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(rename_all = "kebab-case", default)]
#[command(next_help_heading = "Adapters")]
pub struct PeftConfig {
    /// With --pretrained: train the head only (everything else frozen: no gradients, no optimizer state).
    #[arg(long, alias = "freeze_backbone")]
    pub freeze_backbone: bool,
    /// Parameter-efficient fine-tuning: none (all parameters train), lora, or sparselora.
    #[arg(long, value_enum, default_value = "none")]
    pub adapter: AdapterKind,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8, alias = "lora_rank", alias = "lora-r")]
    pub lora_rank: usize,
    /// LoRA alpha: the adapter's output is scaled by alpha / r.
    #[arg(long, default_value_t = 16.0, alias = "lora_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the adapter's input.
    #[arg(long, default_value_t = 0.0, alias = "lora_dropout")]
    pub lora_dropout: f64,
    /// Linears that get adapters, comma-separated timm module names: qkv, attn.proj, fc1, fc2.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "qkv",
        alias = "lora_targets",
        alias = "target-modules"
    )]
    pub lora_targets: Vec<String>,
    /// Modules trained in full beside the adapters (PEFT's modules_to_save), comma-separated: head, norm, blocks.11, ...
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "head",
        alias = "train_modules",
        alias = "modules-to-save"
    )]
    pub train_modules: Vec<String>,
    /// Start the adapters (and saved modules) from a PEFT adapter directory (adapter_config.json + adapter_model.safetensors); implies --adapter lora unless sparselora is given.
    #[arg(long, alias = "adapter_from")]
    pub adapter_from: Option<PathBuf>,
    /// SparseLoRA: rank of the truncated SVD of each frozen weight used to predict which channels matter.
    #[arg(long, default_value_t = 8, alias = "sparse_rank")]
    pub sparse_rank: usize,
    /// SparseLoRA: fraction of each MLP's hidden channels skipped per batch.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// SparseLoRA: fraction of each attention's q/k and v channels skipped per batch (0: attention
    /// dense, MLP-only sparsity: measured 1.23× LoRA's step instead of 1.31× at 224, and 0.55 points more accurate, RESULTS.md).
    #[arg(long, default_value_t = 0.5, alias = "sparsity_attn")]
    pub sparsity_attn: f64,
    /// SparseLoRA: blocks kept dense, as "first,last" counts: 2,1 keeps the first 2 blocks and the last one dense.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2,1",
        alias = "sparse_layers"
    )]
    pub sparse_layers: Vec<usize>,
    /// SparseLoRA: the first fraction of steps (< 1) or number of steps (≥ 1) run dense.
    #[arg(long, default_value_t = 0.05, alias = "sparse_dense_steps")]
    pub sparse_dense_steps: f64,
}

impl Default for PeftConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

impl PeftConfig {
    /// The LoRA adapters the flags describe (rank, α, dropout, targets, trained modules).
    pub fn lora(&self) -> crate::model::lora::LoraConfig {
        crate::model::lora::LoraConfig {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.lora_targets.clone(),
            modules_to_save: self.train_modules.clone(),
            use_rslora: false,
        }
    }
}

/// Knowledge distillation from a teacher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(rename_all = "kebab-case", default)]
#[command(next_help_heading = "Distillation")]
pub struct DistillConfig {
    /// Teacher for knowledge distillation: a vitrs checkpoint directory or timm weights of any supported model (ViT, DeiT, ResNet). Runs in eval mode, without gradients, on the student's augmented batch.
    #[arg(long)]
    pub teacher: Option<String>,
    /// Distillation loss: none (teacher only measured), soft (KL to the teacher's softened outputs) or hard (DeiT: cross-entropy to the teacher's top-1).
    #[arg(long, value_enum, default_value = "none")]
    pub distillation: DistillKind,
    /// Soft distillation: weight α of the KL term (the true-label term gets 1 − α).
    #[arg(
        long,
        default_value_t = 0.5,
        alias = "distill_alpha",
        alias = "distillation-alpha"
    )]
    pub distill_alpha: f64,
    /// Soft distillation: temperature τ (the KL term is scaled by τ²).
    #[arg(
        long,
        default_value_t = 1.0,
        alias = "distill_tau",
        alias = "distillation-tau"
    )]
    pub distill_tau: f64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// The optimizer, its schedule and the step: batch, accumulation, clipping, EMA, precision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(rename_all = "kebab-case", default)]
#[command(next_help_heading = "Optimisation")]
pub struct OptimConfig {
    #[arg(
        long,
        default_value_t = 100,
        alias = "max_epochs",
        alias = "max-epochs"
    )]
    pub epochs: usize,
    /// Images per micro-batch on each process (the global batch is this × --accum-steps × processes).
    #[arg(long, default_value_t = 128, alias = "batch_size")]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(
        long,
        default_value_t = 3e-4,
        alias = "learning_rate",
        alias = "learning-rate"
    )]
    pub lr: f64,
    #[arg(long, default_value_t = 0.05, alias = "weight_decay")]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    #[arg(long, default_value_t = 1e-8, alias = "adam-eps")]
    pub eps: f64,
    /// Layer-wise LR decay: block i of d trains at lr·decay^(d − i), embeddings at lr·decay^(d + 1), head at lr (1.0 = off; 0.65–0.75 is usual for fine-tuning).
    #[arg(
        long,
        default_value_t = 1.0,
        alias = "layer_decay",
        alias = "layer-wise-lr-decay"
    )]
    pub layer_decay: f64,
    /// Linear warmup length in epochs (fractional allowed).
    #[arg(long, default_value_t = 5.0, alias = "warmup_epochs")]
    pub warmup_epochs: f64,
    #[arg(long, default_value_t = 0.0, alias = "warmup_start_lr")]
    pub warmup_start_lr: f64,
    /// Floor of the cosine decay.
    #[arg(long, default_value_t = 0.0, alias = "min_lr")]
    pub min_lr: f64,
    /// Micro-batches per optimizer step: --batch-size 32 --accum-steps 4 updates like --batch-size 128.
    #[arg(
        long,
        default_value_t = 1,
        alias = "accum_steps",
        alias = "gradient-accumulation-steps"
    )]
    pub accum_steps: usize,
    /// Global gradient-norm clipping threshold (0 = off).
    #[arg(long, default_value_t = 1.0, alias = "grad_clip", alias = "clip-grad")]
    pub grad_clip: f64,
    /// Exponential moving average of the weights (0 = off; e.g. 0.9998). Validated and checkpointed beside the model.
    #[arg(
        long,
        default_value_t = 0.0,
        alias = "ema_decay",
        alias = "model-ema-decay"
    )]
    pub ema_decay: f64,
    /// EMA warmup: decay min(d, (1 + step)/(10 + step)), so early averages are not dominated by the init.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, alias = "ema_warmup")]
    pub ema_warmup: bool,
    /// Mixed precision: f32, bf16 or f16 matrix products (linear, attention, convolution) with f32 master weights, optimizer state, normalisation and loss; f16 adds dynamic loss scaling.
    #[arg(
        long,
        value_enum,
        default_value = "f32",
        alias = "amp",
        alias = "mixed-precision",
        alias = "mixed_precision"
    )]
    pub precision: Precision,
    /// f16: initial loss scale (halved on every overflowing step, which is skipped).
    #[arg(
        long,
        default_value_t = 65536.0,
        alias = "loss_scale",
        alias = "init-scale"
    )]
    pub loss_scale: f64,
    /// f16: good steps in a row before the loss scale doubles.
    #[arg(
        long,
        default_value_t = 2000,
        alias = "loss_scale_window",
        alias = "growth-interval"
    )]
    pub loss_scale_window: u64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// The run: evaluation and checkpoint cadence, limits, seed, outputs, device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(rename_all = "kebab-case", default)]
#[command(next_help_heading = "Run")]
pub struct RunConfig {
    /// Validate every N epochs.
    #[arg(long, default_value_t = 1, alias = "eval_every")]
    pub eval_every: usize,
    /// Early stopping: evaluations without a new best validation loss (0 = off).
    #[arg(long, default_value_t = 15)]
    pub patience: usize,
    /// Stop cleanly (with a checkpoint) after this many hours (fractional; 0 = no limit).
    #[arg(long, default_value_t = 0.0, alias = "max_training_hours")]
    pub max_training_hours: f64,
    /// Stop cleanly (with a checkpoint, without a final evaluation) after this many optimizer steps (0 = no limit): for timing runs such as compare-finetune.
    #[arg(long, default_value_t = 0, alias = "max_steps", alias = "steps")]
    pub max_steps: u64,
    /// Write checkpoints/checkpoint_epoch_N every N epochs (0 = never).
    #[arg(long, default_value_t = 5, alias = "save_every")]
    pub save_every: usize,
    /// Log training metrics every N steps.
    #[arg(long, default_value_t = 50, alias = "log_every")]
    pub log_every: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Run directory (default runs/<timestamp>).
    #[arg(long, alias = "out_dir", alias = "output-dir")]
    pub out_dir: Option<PathBuf>,
    /// Continue from a checkpoint directory (e.g. runs/X/checkpoints/last).
    #[arg(long, alias = "resume_from", alias = "resume")]
    pub resume_from: Option<PathBuf>,
    /// flex, vulkan[:N] or cuda[:N] (default: the best one compiled in); `cuda:local` / `vulkan:local` = this process's index among the MPI ranks on its machine.
    #[arg(long)]
    pub device: Option<String>,
    /// Compute threads (0 = all cores, divided among the MPI ranks on this machine).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Recompute cheap (memory-bound) activations in the backward pass instead of storing them: less memory, more time (burn's balanced gradient checkpointing).
    #[arg(long, alias = "grad_checkpointing", alias = "gradient-checkpointing")]
    pub grad_checkpointing: bool,
    /// No progress bar, only epoch lines and the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Start afresh in an --out-dir that holds a run, after moving that run aside to
    /// <dir>.replaced-N (it is never deleted). Without it such a folder is refused.
    #[arg(long)]
    pub overwrite: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        clap_defaults()
    }
}
