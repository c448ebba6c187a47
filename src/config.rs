//! The one configuration of a training run. Each field is a kebab-case flag (`--batch-size`),
//! a key of the same name in `--config FILE.toml`, and a line of the run's `config.toml`.
//! Precedence: built-in defaults < config file < command line. The seeds' snake_case
//! spellings (`--batch_size`, `--learning_rate`, ...) are accepted as aliases.

use std::path::{Path, PathBuf};

use clap::{ArgMatches, Args, FromArgMatches, parser::ValueSource};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::cnn::CnnConfig;
use crate::model::precision::Precision;
use crate::model::sparse::SparseConfig;
use crate::model::{self, EvalHead, Pool, VitConfig};

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
    /// Pooling for the head: the class token or the mean of the patch tokens.
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
}

impl Default for RunConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// The one configuration of a training run, in sections. Every field is a kebab-case flag
/// (`--batch-size`) and a key of the same name in `--config FILE.toml` and in the run's
/// `config.toml`: the sections are flattened, so flags and keys are flat, as they always were
/// (a TOML file may also group keys under `[data]`, `[optim]`, ... tables).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(default)]
pub struct Config {
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub augment: AugmentConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub peft: PeftConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub distill: DistillConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub optim: OptimConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunConfig,
}

impl Default for Config {
    fn default() -> Self {
        clap_defaults()
    }
}

/// A section (or the whole config) with every field at its flag's default.
fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let m = T::augment_args(clap::Command::new("vitrs")).get_matches_from(["vitrs"]);
    T::from_arg_matches(&m).expect("built-in defaults parse")
}

/// The model name of seed 000's fine-tuning recipe.
pub const HF_PRETRAINED: &str = "vit-hf-pretrained";

/// Seed 000's CIFAR-10 fine-tuning command (`vit-hf-pretrained`): the defaults that model
/// name brings, each overridden by a config file or a flag.
pub fn hf_pretrained_recipe() -> Vec<(&'static str, toml::Value)> {
    use toml::Value::{Float, Integer};
    vec![
        ("img-size", Integer(224)),
        ("epochs", Integer(30)),
        ("lr", Float(1e-5)),
        ("batch-size", Integer(32)),
        ("warmup-epochs", Float(3.0)),
        ("patience", Integer(8)),
        ("grad-clip", Float(1.0)),
        ("weight-decay", Float(0.01)),
    ]
}

/// Levenshtein distance, for "did you mean" on unknown config keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + (ca != *cb) as usize)
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Config {
    /// Every spelling a config file may use (flag names and their aliases, kebab- or
    /// snake-case), mapped to the key it sets.
    pub fn key_spellings() -> Vec<(String, String)> {
        let cmd = Config::augment_args(clap::Command::new("vitrs"));
        let mut out = Vec::new();
        for a in cmd.get_arguments() {
            let key = a.get_id().as_str().replace('_', "-");
            let names = a
                .get_long()
                .into_iter()
                .chain(a.get_all_aliases().unwrap_or_default());
            for n in names {
                out.push((n.replace('_', "-"), key.clone()));
            }
            out.push((key.clone(), key.clone()));
        }
        out
    }

    /// Parse a TOML config file. Keys may use any flag spelling; an unknown key is an error
    /// naming the closest valid one.
    pub fn table_from_file(path: &Path) -> Result<toml::Table> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path, "reading config", e))?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))?;
        let spellings = Config::key_spellings();
        let mut out = toml::Table::new();
        for (k, v) in table {
            let name = k.replace('_', "-");
            match spellings.iter().find(|(s, _)| *s == name) {
                Some((_, key)) => {
                    out.insert(key.clone(), v);
                }
                None => {
                    let closest = spellings
                        .iter()
                        .min_by_key(|(s, _)| edit_distance(&name, s))
                        .map(|(s, _)| s.clone())
                        .unwrap_or_default();
                    return Err(Error::Config(format!(
                        "{}: unknown key `{k}` (did you mean `{closest}`?)",
                        path.display()
                    )));
                }
            }
        }
        Ok(out)
    }

    /// base (defaults, or the resumed run's config) < file < flags given on the command line.
    pub fn resolve(
        base: Config,
        cli: &Config,
        matches: &ArgMatches,
        file: Option<&Path>,
    ) -> Result<Config> {
        let base_model = base.model.name.clone();
        let mut table = match toml::Value::try_from(base) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        let mut explicit = std::collections::BTreeSet::new();
        if let Some(f) = file {
            let from_file = Config::table_from_file(f)?;
            explicit.extend(from_file.keys().cloned());
            table.extend(from_file);
        }
        let cli_table = match toml::Value::try_from(cli) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        for id in matches.ids() {
            if matches.value_source(id.as_str()) == Some(ValueSource::CommandLine) {
                let key = id.as_str().replace('_', "-");
                if let Some(v) = cli_table.get(&key) {
                    table.insert(key.clone(), v.clone());
                }
                explicit.insert(key);
            }
        }
        // `--model vit-hf-pretrained` brings seed 000's recipe as defaults (a resumed run of
        // that model already has them, possibly changed, in its base).
        let is = |v: Option<&toml::Value>| v.and_then(|v| v.as_str()) == Some(HF_PRETRAINED);
        if is(table.get("model")) && base_model != HF_PRETRAINED {
            for (k, v) in hf_pretrained_recipe() {
                if !explicit.contains(k) {
                    table.insert(k.to_string(), v);
                }
            }
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(format!("config: {}", e.message())))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The model this config describes, given the dataset's image size, channels and classes.
    pub fn vit_config(
        &self,
        data_size: usize,
        channels: usize,
        data_classes: usize,
    ) -> Result<VitConfig> {
        if let Some(cnn) = CnnConfig::preset(&self.model.name, &self.model.cnn_widths) {
            if self.model.dist_token {
                return Err(Error::Config(format!(
                    "--dist-token is a ViT token; --model {} is a CNN (drop --dist-token)",
                    self.model.name
                )));
            }
            let num_classes = self.model.num_classes.unwrap_or(data_classes);
            let cfg = VitConfig::cnn(
                self.model.img_size.unwrap_or(data_size),
                channels,
                num_classes,
                cnn,
            );
            cfg.validate()?;
            return Ok(cfg);
        }
        let p = model::find_preset(&self.model.name).ok_or_else(|| {
            Error::Config(format!(
                "unknown --model `{}` (choose one of: {})",
                self.model.name,
                model::preset_names().join(", ")
            ))
        })?;
        let num_classes = self.model.num_classes.unwrap_or(data_classes);
        if num_classes < data_classes {
            return Err(Error::Config(format!(
                "--num-classes {num_classes} is smaller than the dataset's {data_classes} classes (drop the flag to use the dataset's count)"
            )));
        }
        let dims = [
            self.model.embed_dim.unwrap_or(p.embed_dim),
            self.model.depth.unwrap_or(p.depth),
            self.model.num_heads.unwrap_or(p.num_heads),
            self.model.mlp_dim.unwrap_or(p.mlp_dim),
        ];
        let img_size = self.model.img_size.or(p.img_size).unwrap_or(data_size);
        let patch_size = self.model.patch_size.unwrap_or(p.patch_size);
        let mut cfg = VitConfig {
            qkv_bias: self.model.qkv_bias,
            drop_rate: p.dropout,
            attn_drop_rate: p.dropout,
            pool: self.model.pool,
            dist_token: self.model.dist_token || model::is_distilled_preset(&self.model.name),
            eval_head: self.model.eval_head,
            ..VitConfig::with_shape(img_size, patch_size, channels, num_classes, dims)
        };
        self.regularise(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// This run's regularisation on a ViT's config (a preset's or a pretrained checkpoint's):
    /// dropout and attention dropout where given (else the model's own), DropPath always.
    /// The one place these flags reach the model.
    pub fn regularise(&self, vit: &mut VitConfig) {
        vit.drop_rate = self.model.dropout.unwrap_or(vit.drop_rate);
        vit.attn_drop_rate = self.model.attn_dropout.unwrap_or(vit.attn_drop_rate);
        vit.drop_path_rate = self.model.drop_path;
    }

    /// The checked SparseLoRA settings (`--sparsity*`, `--sparse-*`): the one place the CLI
    /// flags become the model's own `SparseConfig`.
    pub fn sparse(&self) -> Result<SparseConfig> {
        let bad = |m: String| Err(Error::Config(m));
        let attn = self.peft.sparsity_attn;
        for (flag, s) in [
            ("--sparsity", self.peft.sparsity),
            ("--sparsity-attn", attn),
        ] {
            if !(0.0..1.0).contains(&s) {
                return bad(format!(
                    "{flag} {s} must be in [0, 1) (the fraction of channels skipped, e.g. 0.5)"
                ));
            }
        }
        if self.peft.sparse_rank == 0 {
            return bad("--sparse-rank must be ≥ 1 (8 is the paper's choice)".into());
        }
        let [first, last] = self.peft.sparse_layers[..] else {
            return bad(format!(
                "--sparse-layers takes two counts, first,last (e.g. 2,1), not {:?}",
                self.peft.sparse_layers
            ));
        };
        if !(self.peft.sparse_dense_steps >= 0.0 && self.peft.sparse_dense_steps.is_finite()) {
            return bad(format!(
                "--sparse-dense-steps {} must be a fraction of the steps (< 1) or a step count (≥ 1)",
                self.peft.sparse_dense_steps
            ));
        }
        Ok(SparseConfig {
            mlp: self.peft.sparsity,
            attn,
            rank: self.peft.sparse_rank,
            dense_first: first,
            dense_last: last,
            dense_steps: self.peft.sparse_dense_steps,
        })
    }

    /// Checks that need no data: contradictions and impossible values. The RandAugment policy
    /// is the data side's to parse (`data::recipe::check`).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.optim.batch_size == 0 {
            return bad("--batch-size must be > 0");
        }
        if self.optim.epochs == 0 {
            return bad("--epochs must be > 0");
        }
        if !(self.optim.lr > 0.0 && self.optim.lr.is_finite()) {
            return bad("--lr must be a positive number");
        }
        if !(0.0..1.0).contains(&self.augment.label_smoothing) {
            return bad("--label-smoothing must be in [0, 1)");
        }
        if self.optim.grad_clip < 0.0
            || self.optim.weight_decay < 0.0
            || self.optim.min_lr < 0.0
            || self.optim.warmup_start_lr < 0.0
        {
            return bad("--grad-clip, --weight-decay, --min-lr and --warmup-start-lr must be ≥ 0");
        }
        if self.optim.min_lr > self.optim.lr {
            return bad("--min-lr is larger than --lr (the cosine decay would go up)");
        }
        if !(self.optim.loss_scale > 0.0 && self.optim.loss_scale.is_finite())
            || self.optim.loss_scale_window == 0
        {
            return bad("--loss-scale must be a positive number and --loss-scale-window ≥ 1");
        }
        if self.optim.precision != Precision::F32 && self.peft.adapter == AdapterKind::Sparselora {
            return bad(
                "--adapter sparselora runs its sliced products in f32: use --precision f32 with it (or --adapter lora for half precision)",
            );
        }
        if self.optim.warmup_epochs < 0.0 || self.optim.warmup_epochs > self.optim.epochs as f64 {
            return bad("--warmup-epochs must be between 0 and --epochs");
        }
        if !(0.0..1.0).contains(&self.optim.beta1) || !(0.0..1.0).contains(&self.optim.beta2) {
            return bad("--beta1 and --beta2 must be in [0, 1)");
        }
        if self.run.eval_every == 0 {
            return bad("--eval-every must be ≥ 1");
        }
        if self.run.max_training_hours < 0.0 {
            return bad("--max-training-hours must be ≥ 0");
        }
        if self.run.log_every == 0 {
            return bad("--log-every must be ≥ 1");
        }
        if self.optim.accum_steps == 0 {
            return bad("--accum-steps must be ≥ 1");
        }
        if !(0.0..1.0).contains(&self.optim.ema_decay) {
            return bad("--ema-decay must be in [0, 1) (0 = off)");
        }
        let range =
            |v: &[f64], lo: f64, hi: f64| v.len() == 2 && v[0] > lo && v[0] <= v[1] && v[1] <= hi;
        if !range(&self.augment.rrc_scale, 0.0, 1.0) {
            return bad("--rrc-scale takes MIN,MAX with 0 < MIN ≤ MAX ≤ 1 (e.g. 0.08,1.0)");
        }
        if !range(&self.augment.rrc_ratio, 0.0, f64::INFINITY) {
            return bad("--rrc-ratio takes MIN,MAX with 0 < MIN ≤ MAX (e.g. 0.75,1.3333)");
        }
        if !matches!(self.augment.color_jitter.len(), 0 | 1 | 4)
            || self.augment.color_jitter.iter().any(|&x| x < 0.0)
        {
            return bad(
                "--color-jitter takes one value (brightness = contrast = saturation) or four (B,C,S,HUE), all ≥ 0",
            );
        }
        if self.augment.color_jitter.len() == 4 && self.augment.color_jitter[3] > 0.5 {
            return bad("--color-jitter hue must be ≤ 0.5");
        }
        for (name, p) in [
            ("--hflip", self.augment.hflip),
            ("--reprob", self.augment.reprob),
            ("--mixup-prob", self.augment.mixup_prob),
            ("--mixup-switch-prob", self.augment.mixup_switch_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::Config(format!(
                    "{name} {p} must be a probability in [0, 1]"
                )));
            }
        }
        if self.augment.mixup < 0.0 || self.augment.cutmix < 0.0 || self.augment.rotation < 0.0 {
            return bad("--mixup, --cutmix and --rotation must be ≥ 0");
        }
        if !(self.optim.layer_decay > 0.0 && self.optim.layer_decay <= 1.0) {
            return bad("--layer-decay must be in (0, 1] (1 = off)");
        }
        if self.model.name == HF_PRETRAINED && self.model.pretrained.is_none() {
            return bad(
                "--model vit-hf-pretrained fine-tunes pretrained weights: give --pretrained PATH_OR_ID (e.g. google/vit-base-patch16-224-in21k)",
            );
        }
        if self.model.pretrained.is_none() && (self.model.reset_head || self.peft.freeze_backbone) {
            return bad("--reset-head and --freeze-backbone need --pretrained");
        }
        for (name, v) in [("--mean", &self.data.mean), ("--std", &self.data.std)] {
            if v.as_ref()
                .is_some_and(|v| v.is_empty() || v.iter().any(|x| !x.is_finite()))
            {
                return bad(&format!("{name} needs one finite number per channel"));
            }
        }
        if !(0.0..=1.0).contains(&self.distill.distill_alpha) {
            return bad("--distill-alpha must be in [0, 1]");
        }
        if !(self.distill.distill_tau > 0.0 && self.distill.distill_tau.is_finite()) {
            return bad("--distill-tau must be > 0");
        }
        if self.distill.distillation != DistillKind::None && self.distill.teacher.is_none() {
            return bad(
                "--distillation soft|hard needs a teacher: give --teacher PATH (a vitrs checkpoint, e.g. runs/X/checkpoints/best_model, or timm weights)",
            );
        }
        if self.data.mean.is_some() != self.data.std.is_some() {
            return bad("--mean and --std go together: give both or neither");
        }
        if self
            .data
            .std
            .as_ref()
            .is_some_and(|s| s.iter().any(|&x| x <= 0.0))
        {
            return bad("--std values must be > 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_seeds() {
        let c = Config::default();
        assert_eq!(c.optim.batch_size, 128);
        assert_eq!(c.optim.lr, 3e-4);
        assert_eq!(c.augment.label_smoothing, 0.1);
        assert_eq!(c.optim.grad_clip, 1.0);
        assert_eq!(c.run.save_every, 5);
        assert!(c.model.qkv_bias);
        c.validate().unwrap();
    }

    #[test]
    fn toml_round_trip() {
        let c = {
            let mut c = Config::default();
            c.model.embed_dim = Some(64);
            c
        };
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_key_names_the_closest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "batch-sise = 3\n").unwrap();
        let e = Config::table_from_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("batch-sise") && e.contains("`batch-size`"),
            "{e}"
        );
    }

    fn resolve_args(args: &[&str]) -> Config {
        let cmd = Config::augment_args(clap::Command::new("vitrs"));
        let m = cmd.get_matches_from(args);
        let cli = Config::from_arg_matches(&m).unwrap();
        Config::resolve(Config::default(), &cli, &m, None).unwrap()
    }

    #[test]
    fn vit_hf_pretrained_brings_seed_000s_recipe_and_flags_override_it() {
        let c = resolve_args(&[
            "vitrs",
            "--model",
            "vit-hf-pretrained",
            "--pretrained",
            "google/vit-base-patch16-224-in21k",
            "--lr",
            "2e-5",
        ]);
        assert_eq!(c.optim.lr, 2e-5);
        assert_eq!(c.model.img_size, Some(224));
        assert_eq!(c.optim.batch_size, 32);
        assert_eq!(c.optim.epochs, 30);
        assert_eq!(c.optim.warmup_epochs, 3.0);
        assert_eq!(c.run.patience, 8);
        assert_eq!(c.optim.weight_decay, 0.01);
        c.validate().unwrap();
        // Other models keep the ordinary defaults.
        let c = resolve_args(&["vitrs", "--pretrained", "x", "--layer-decay", "0.75"]);
        assert_eq!(c.optim.batch_size, 128);
        assert_eq!(c.optim.layer_decay, 0.75);
        assert_eq!(c.model.img_size, None);
        let c = resolve_args(&["vitrs", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]);
        assert_eq!(c.data.mean, Some(vec![0.5; 3]));
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn impossible_shapes_are_rejected() {
        let c = {
            let mut c = Config::default();
            c.model.embed_dim = Some(100);
            c.model.num_heads = Some(3);
            c
        };
        let e = c.vit_config(32, 3, 10).unwrap_err().to_string();
        assert!(e.contains("not divisible by num-heads"), "{e}");
        let c = {
            let mut c = Config::default();
            c.model.patch_size = Some(5);
            c
        };
        let e = c.vit_config(32, 3, 10).unwrap_err().to_string();
        assert!(
            e.contains("img-size 32 is not divisible by patch-size 5"),
            "{e}"
        );
    }

    #[test]
    fn precision_flags_parse_and_contradictions_are_named() {
        let c = resolve_args(&["vitrs", "--amp", "fp16", "--loss-scale", "1024"]);
        assert_eq!(
            (c.optim.precision, c.optim.loss_scale),
            (Precision::F16, 1024.0)
        );
        c.validate().unwrap();
        let c = resolve_args(&["vitrs", "--precision", "bf16", "--grad-checkpointing"]);
        assert!(c.optim.precision == Precision::Bf16 && c.run.grad_checkpointing);
        let bad = |c: Config, what: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        };
        bad(
            {
                let mut c = Config::default();
                c.optim.precision = Precision::F16;
                c.peft.adapter = AdapterKind::Sparselora;
                c
            },
            "--adapter sparselora",
        );
        bad(
            {
                let mut c = Config::default();
                c.optim.loss_scale = 0.0;
                c
            },
            "--loss-scale",
        );
    }

    #[test]
    fn sparse_flags_out_of_range_are_named() {
        for (cfg, msg) in [
            (
                {
                    let mut c = Config::default();
                    c.peft.sparsity = 1.0;
                    c
                },
                "--sparsity",
            ),
            (
                {
                    let mut c = Config::default();
                    c.peft.sparsity_attn = -0.1;
                    c
                },
                "--sparsity-attn",
            ),
            (
                {
                    let mut c = Config::default();
                    c.peft.sparse_rank = 0;
                    c
                },
                "--sparse-rank",
            ),
            (
                {
                    let mut c = Config::default();
                    c.peft.sparse_layers = vec![1];
                    c
                },
                "--sparse-layers",
            ),
            (
                {
                    let mut c = Config::default();
                    c.peft.sparse_dense_steps = -1.0;
                    c
                },
                "--sparse-dense-steps",
            ),
        ] {
            let e = cfg.sparse().unwrap_err().to_string();
            assert!(e.contains(msg), "{e}");
        }
    }
}

#[cfg(test)]
mod config_files {
    use super::*;

    /// Every recipe in configs/ parses, resolves and validates.
    #[test]
    fn all_shipped_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let cli = Config::default();
            let matches =
                Config::augment_args(clap::Command::new("vitrs")).get_matches_from(["vitrs"]);
            let cfg = Config::resolve(Config::default(), &cli, &matches, Some(&path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            cfg.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // The image size and channels the dataset itself has.
            let (size, channels) = match cfg.data.dataset {
                DatasetKind::FashionMnist | DatasetKind::Mnist => (28, 1),
                _ => (32, 3),
            };
            cfg.vit_config(size, channels, 10)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 8, "only {n} configs found");
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "lr = 0.01\nbatch_size = 7\nnum_layers = 3\n").unwrap();
        let cmd = Config::augment_args(clap::Command::new("vitrs"));
        let matches = cmd.get_matches_from(["vitrs", "--batch-size", "9"]);
        let cli = Config::from_arg_matches(&matches).unwrap();
        let cfg = Config::resolve(Config::default(), &cli, &matches, Some(&p)).unwrap();
        assert_eq!(cfg.optim.lr, 0.01); // file
        assert_eq!(cfg.optim.batch_size, 9); // flag beats file
        assert_eq!(cfg.model.depth, Some(3)); // seed spelling in a file
        assert_eq!(cfg.optim.epochs, 100); // default
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    /// The README's flag tables stay complete: every `train` flag is documented.
    #[test]
    fn readme_documents_every_flag() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        let cmd = Config::augment_args(clap::Command::new("vitrs"));
        for a in cmd.get_arguments() {
            if let Some(long) = a.get_long() {
                assert!(
                    readme.contains(&format!("`--{long}`")),
                    "README.md does not document --{long}"
                );
            }
        }
    }
}
