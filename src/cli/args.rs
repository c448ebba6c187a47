//! Command-line interface (clap derive). Parsing and dispatch only; the work lives elsewhere.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, DatasetKind};
use crate::weights::export::ExportFormat;

#[derive(Parser, Debug)]
#[command(
    name = "vitrs",
    version,
    about = "Train Vision Transformers on CIFAR-10/100 and friends"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (from scratch, or resume with --resume-from).
    Train(Box<TrainArgs>),
    /// Learn the dataset's classes as a sequence of tasks (Split CIFAR-100, Split Fashion-MNIST...), measuring forgetting; takes every train flag.
    Continual(Box<ContinualArgs>),
    /// Evaluate a checkpoint on its validation set: loss, accuracy, per-class table, confusion matrix.
    Eval(EvalArgs),
    /// Top-5 predictions of a checkpoint for image files.
    Predict(PredictArgs),
    /// Plots and report.md (convergence analysis) for a run directory.
    Report {
        /// The run directory (holds metrics.jsonl).
        run_dir: PathBuf,
    },
    /// Runs side by side: accuracy, loss, epochs, time, img/s, params, memory, ratios to the first.
    Compare {
        #[arg(required = true)]
        run_dirs: Vec<PathBuf>,
        /// Where to write the overlaid validation-accuracy plot.
        #[arg(long, default_value = "compare.png")]
        plot: PathBuf,
    },
    /// Fine-tune the same model as full, LoRA, SparseLoRA and head-only, each in its own process, and compare memory, speed and parameters (compare.json, compare.md, plots).
    CompareFinetune(Box<CompareFinetuneArgs>),
    /// Time the train step, inference and the data pipeline (JSON, fields as the PyTorch yardstick's).
    Bench(crate::tools::bench::BenchArgs),
    /// Logits of pretrained weights (HF, timm, vitrs) for `pixel_values` in a safetensors file: did the weights load right?
    Logits(LogitsArgs),
    /// Write a checkpoint (or any weights vitrs loads) as timm or HF transformers weights + config.json.
    Export(ExportArgs),
    /// The devices each compiled-in backend sees (`--device` takes the first column).
    Devices,
    /// Download or describe data sets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A TOML file whose keys are the flag names; flags given here override it.
    #[arg(long = "config")]
    pub config_file: Option<PathBuf>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Args, Debug)]
pub struct CompareFinetuneArgs {
    /// Methods, comma-separated: full, lora, sparselora, head-only.
    #[arg(long, value_delimiter = ',', default_value = "full,lora,sparselora")]
    pub methods: Vec<String>,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Args, Debug)]
pub struct ContinualArgs {
    /// A TOML file of train flags (the continual flags are given on the command line).
    #[arg(long = "config")]
    pub config_file: Option<PathBuf>,
    #[command(flatten)]
    pub config: Config,
    #[command(flatten)]
    pub continual: crate::continual::ContinualConfig,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint directory (e.g. runs/X/checkpoints/best_model).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Evaluate the EMA weights (runs trained with --ema-decay).
    #[arg(long)]
    pub ema: bool,
    /// Apply a PEFT LoRA adapter directory to the checkpoint's model first.
    #[arg(long, alias = "adapter_from", alias = "adapter")]
    pub adapter_from: Option<PathBuf>,
    /// Evaluate on another dataset / location than the run's.
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetKind>,
    #[arg(long, alias = "data_dir")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, alias = "limit_val")]
    pub limit_val: Option<usize>,
    #[arg(long, alias = "batch_size")]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Also report the agreement (share of equal top-1 predictions) with this teacher: a vitrs checkpoint or weights --pretrained takes.
    #[arg(long)]
    pub teacher: Option<String>,
    /// With a distillation token: predict with both heads averaged, the class head or the distillation head (default: the checkpoint's).
    #[arg(long, value_enum)]
    pub eval_head: Option<crate::model::EvalHead>,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Image files (png, jpeg).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[arg(long)]
    pub device: Option<String>,
    /// With a distillation token: avg, cls or dist head (default: the checkpoint's).
    #[arg(long, value_enum)]
    pub eval_head: Option<crate::model::EvalHead>,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// Weights: a directory (HF config.json + model.safetensors, timm, vitrs checkpoint), a .safetensors file, or a hub id.
    #[arg(long)]
    pub pretrained: String,
    /// A safetensors file holding `pixel_values` (f32, NCHW, normalised as the model expects).
    #[arg(long)]
    pub input: PathBuf,
    /// A PEFT LoRA adapter directory to apply to the weights first.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Where to write `logits` (and `logits_cls`, `logits_dist` for distillation-token models).
    #[arg(long)]
    pub output: PathBuf,
    /// Input resolution; must equal the input's. Another size than the checkpoint's resamples the position embeddings as the source library does.
    #[arg(long, alias = "img_size")]
    pub img_size: Option<usize>,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A vitrs checkpoint directory (e.g. runs/X/checkpoints/best_model), or any weights --pretrained takes.
    #[arg(long, alias = "pretrained")]
    pub checkpoint: String,
    /// A PEFT LoRA adapter directory to merge into the weights (needs --merge).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Merge LoRA adapters into plain weights (what PEFT's merge_and_unload() gives); an adapter checkpoint of a vitrs run is merged too.
    #[arg(long)]
    pub merge: bool,
    /// timm: plain state dict + timm's config.json (timm.create_model("local-dir:OUT")); hf: ViTForImageClassification (from_pretrained(OUT)); onnx: OUT/model.onnx (opset 17, dynamic batch, input pixel_values, output logits).
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output directory (model.safetensors and config.json, or model.onnx).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download (and verify, extract) a data set into --data-dir.
    Download(DataArgs),
    /// Sizes, classes and class balance of a data set.
    Info(DataArgs),
}

#[derive(Args, Debug)]
pub struct DataArgs {
    #[arg(long, value_enum, default_value = "cifar10")]
    pub dataset: DatasetKind,
    #[arg(long, alias = "data_dir")]
    pub data_dir: Option<PathBuf>,
}
