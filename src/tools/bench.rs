//! `vitrs bench`: the train step, inference and the data pipeline, timed the way
//! `shared/bench/pytorch_vit_bench.py` times PyTorch, with the same JSON fields, so the two can
//! be compared line by line in one run (`bench/compare.sh`).

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;

use crate::config::AdapterKind;
use crate::data::augment::{Image, MixConfig, TrainTransform};
use crate::data::batch::HostBatch;
use crate::data::formats::synthetic::synthetic;
use crate::error::Result;
use crate::model::layers::Ctx;
use crate::model::lora::LoraConfig;
use crate::model::params::{count_params, named_params};
use crate::model::precision::Precision;
use crate::model::sparse;
use crate::model::{Model, VitConfig};
use crate::rng::{Rng, stream};
use crate::train::checkpoint::{self, TrainingState};
use crate::train::engine::{Engine, Settings, Sinks};
use crate::train::optim::{AdamW, AdamWConfig};

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 32)]
    pub img: usize,
    #[arg(long, default_value_t = 4)]
    pub patch: usize,
    #[arg(long, default_value_t = 192)]
    pub dim: usize,
    #[arg(long, default_value_t = 6)]
    pub depth: usize,
    #[arg(long, default_value_t = 3)]
    pub heads: usize,
    #[arg(long, default_value_t = 768)]
    pub mlp: usize,
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub infer_batch: usize,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Compute threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long)]
    pub device: Option<String>,
    /// Fine-tuning method of the timed train step: none (full), lora or sparselora (rank 8, alpha 16).
    #[arg(long, value_enum, default_value = "none")]
    pub adapter: crate::config::AdapterKind,
    /// With --adapter: the adapted linears (qkv, attn.proj, fc1, fc2).
    #[arg(long, value_delimiter = ',', default_value = "qkv")]
    pub lora_targets: Vec<String>,
    /// With --adapter sparselora: fraction of MLP channels skipped.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// With --adapter sparselora: fraction of attention channels skipped.
    #[arg(long, default_value_t = 0.5, alias = "sparsity_attn")]
    pub sparsity_attn: f64,
    /// With --adapter sparselora: blocks kept dense, first,last.
    #[arg(long, value_delimiter = ',', default_value = "2,1")]
    pub sparse_layers: Vec<usize>,
    /// Mixed precision of the timed steps (as the yardstick's --amp: none|bf16|fp16).
    #[arg(long, value_enum, default_value = "f32", alias = "amp")]
    pub precision: Precision,
    /// Gradient checkpointing in the train step.
    #[arg(long)]
    pub grad_checkpointing: bool,
    /// What to time: train, infer, data (comma list).
    #[arg(long, value_delimiter = ',', default_values_t = ["train".to_string(), "infer".to_string(), "data".to_string()])]
    pub what: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub framework: &'static str,
    pub device: String,
    /// f32, bf16 or f16 (the yardstick's `amp`).
    pub precision: &'static str,
    pub grad_checkpointing: bool,
    pub threads: usize,
    pub params: usize,
    pub batch: usize,
    pub train_img_s: Option<f64>,
    /// With --adapter sparselora: the same model's step with sparsity off (plain LoRA), its
    /// steps alternated with the sparse ones in this process, so that both see the same
    /// machine state and the ratio `train_img_s / lora_train_img_s` is a paired measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_train_img_s: Option<f64>,
    pub infer_img_s: Option<f64>,
    pub train_tflops: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// Decode + augment + normalise, images per second per core: seed 001's CIFAR transform.
    pub data_default_img_s_per_core: Option<f64>,
    /// The strong recipe (RandAugment + erasing + Mixup/CutMix).
    pub data_strong_img_s_per_core: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(warmup: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    timed_alternating(warmup, reps, 1, |_| f())[0]
}

/// Median seconds of `f(v)` for each of `variants` kinds of call, the kinds interleaved
/// (0, 1, …, 0, 1, …) so that drifts of the machine's speed hit all of them alike.
fn timed_alternating(
    warmup: usize,
    reps: usize,
    variants: usize,
    mut f: impl FnMut(usize),
) -> Vec<f64> {
    for _ in 0..warmup {
        (0..variants).for_each(&mut f);
    }
    let mut times = vec![Vec::new(); variants];
    for _ in 0..reps.max(1) {
        for (v, t) in times.iter_mut().enumerate() {
            let start = Instant::now();
            f(v);
            t.push(start.elapsed().as_secs_f64());
        }
    }
    times.into_iter().map(median).collect()
}

/// Forward FLOPs per image, counted like the PyTorch yardstick.
fn forward_flops(a: &BenchArgs) -> f64 {
    let tokens = ((a.img / a.patch).pow(2) + 1) as f64;
    let (d, m) = (a.dim as f64, a.mlp as f64);
    let per_tok =
        a.depth as f64 * (2.0 * (4.0 * d * d + 2.0 * d * m)) + 2.0 * d * a.classes as f64 / tokens;
    let attn = a.depth as f64 * 2.0 * 2.0 * tokens * tokens * d;
    tokens * per_tok + attn
}

fn random_batch(n: usize, a: &BenchArgs, seed: u64) -> HostBatch {
    let mut rng = Rng::seed(seed);
    let images = (0..n * 3 * a.img * a.img)
        .map(|_| rng.normal() as f32)
        .collect();
    let labels: Vec<usize> = (0..n).map(|_| rng.below(a.classes)).collect();
    HostBatch {
        images,
        shape: [n, 3, a.img, a.img],
        targets: crate::data::augment::soft_targets(&labels, a.classes, 0.1),
        num_classes: a.classes,
        labels,
    }
}

/// Images per second per core through a transform (single thread).
fn data_rate(t: &TrainTransform, mix: Option<&MixConfig>) -> f64 {
    let data = synthetic(512, 10, 32, 3, 0, 0);
    let per = 3 * 32 * 32;
    let mut out = vec![0f32; 128 * per];
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed().as_secs_f64() < 1.0 {
        for b in 0..4 {
            for i in 0..128 {
                let idx = (b * 128 + i) % data.len();
                let img = Image::from_slice(32, 32, 3, data.image(idx));
                let mut rng = Rng::at(0, stream::AUGMENT, &[n as u64, idx as u64]);
                t.apply(&img, &mut rng, &mut out[i * per..(i + 1) * per]);
            }
            if let Some(m) = mix {
                let labels: Vec<usize> = (0..128).map(|i| data.labels[i] as usize).collect();
                let mut rng = Rng::at(0, stream::MIX, &[n as u64]);
                m.apply(&mut out, 128, 3, 32, 32, &labels, &mut rng);
            }
            n += 128;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

pub fn run(a: &BenchArgs) -> Result<BenchResult> {
    crate::device::set_threads(a.threads);
    let device = crate::device::resolve(a.device.as_deref())?;
    a.precision.check_device(&device)?;
    let cfg = VitConfig::with_shape(
        a.img,
        a.patch,
        3,
        a.classes,
        [a.dim, a.depth, a.heads, a.mlp],
    );
    let ad = crate::device::autodiff(&device, a.grad_checkpointing);
    let mut model = Model::new(&cfg, 0, &ad)?;
    let mut sparse = None;
    if a.adapter != AdapterKind::None {
        let lcfg = LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: a.lora_targets.clone(),
            modules_to_save: vec!["head".into()],
            use_rslora: false,
        };
        model = model.map_vit(|m| crate::model::lora::add_adapters(m, &lcfg, 0, &ad))?;
        if a.adapter == AdapterKind::Sparselora {
            let c = {
                let mut c = crate::config::Config::default();
                c.peft.sparsity = a.sparsity;
                c.peft.sparsity_attn = a.sparsity_attn;
                c.peft.sparse_layers = a.sparse_layers.clone();
                c.peft.sparse_dense_steps = 0.0;
                c
            };
            sparse = Some(sparse::setup(model.as_vit()?, c.sparse()?, &device)?);
        }
    }
    let params = count_params(&model).0;
    let wants = |w: &str| a.what.iter().any(|x| x == w);
    let mut train_img_s = None;
    let mut train_tflops = None;
    let mut lora_train_img_s = None;
    if wants("train") {
        let trainable: Vec<(String, usize)> = named_params(&model)
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| (p.path, p.shape.len()))
            .collect();
        let optim = AdamW::new(
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.05,
                layer_decay: 1.0,
                depth: a.depth,
            },
            &trainable,
        );
        let mut state = TrainingState::default();
        checkpoint::fit_scaler(&mut state, a.precision, 65536.0);
        // The training loop's own step (train::engine): forward + label-smoothed CE +
        // backward + clip(1.0) + AdamW, as the yardstick (with its GradScaler under fp16).
        let settings = Settings {
            seed: 0,
            accum: 1,
            grad_clip: 1.0,
            precision: a.precision,
            loss_scale_window: 2000,
            log_every: usize::MAX,
            max_steps: 0,
            time_limit: None,
            eval_every: 1,
            save_every: 0,
            patience: 0,
            quiet: true,
        };
        let mut engine = Engine::new(
            model,
            optim,
            None,
            state,
            settings,
            device.clone(),
            ad.clone(),
            Sinks::none(),
            std::path::PathBuf::new(),
        );
        let batch = random_batch(a.batch, a, 1);
        let mut failed = None;
        // Variant 0 is the configured step; with SparseLoRA, variant 1 is the same step with
        // sparsity off (LoRA).
        let variants = if sparse.is_some() { 2 } else { 1 };
        let t = timed_alternating(a.warmup, a.steps, variants, |v| {
            engine.sparse = if v == 0 { sparse.clone() } else { None };
            if let Err(e) = engine.train_batch(&batch, 1e-3) {
                failed.get_or_insert(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        model = engine.into_model();
        lora_train_img_s = t.get(1).map(|t| a.batch as f64 / t);
        let t = t[0];
        train_img_s = Some(a.batch as f64 / t);
        train_tflops = Some(3.0 * forward_flops(a) * a.batch as f64 / t / 1e12);
    }
    let mut infer_img_s = None;
    if wants("infer") {
        let eval = model.valid();
        let x = random_batch(a.infer_batch, a, 2);
        let xt = Tensor::<4>::from_data(TensorData::new(x.images.clone(), x.shape), &device);
        let t = timed(2, (a.steps / 2).max(5), || {
            let y = eval.forward(xt.clone(), &Ctx::eval().with_precision(a.precision, 1.0));
            let _ = y.into_data();
        });
        infer_img_s = Some(a.infer_batch as f64 / t);
    }
    let (mut data_default, mut data_strong) = (None, None);
    if wants("data") {
        let (mean, std) = ([0.49f32, 0.48, 0.45], [0.2f32, 0.2, 0.2]);
        let default = TrainTransform::default_cifar(&mean, &std);
        data_default = Some(data_rate(&default, None));
        let cfg = {
            let mut c = crate::config::Config::default();
            c.augment.randaugment = Some("rand-m9-mstd0.5-inc1".into());
            c.augment.reprob = 0.25;
            c.augment.mixup = 0.8;
            c.augment.cutmix = 1.0;
            c
        };
        let strong = crate::data::recipe::train_transform(&cfg, &mean, &std, 32)?;
        data_strong = Some(data_rate(
            &strong,
            crate::data::recipe::mix(&cfg, 10).as_ref(),
        ));
    }
    Ok(BenchResult {
        framework: "vitrs",
        precision: a.precision.name(),
        grad_checkpointing: a.grad_checkpointing,
        device: a
            .device
            .clone()
            .unwrap_or_else(|| crate::device::compiled()[0].to_string()),
        threads: rayon::current_num_threads(),
        params,
        batch: a.batch,
        train_img_s,
        lora_train_img_s,
        infer_img_s,
        train_tflops,
        peak_rss_mb: crate::util::peak_rss_mb(),
        data_default_img_s_per_core: data_default,
        data_strong_img_s_per_core: data_strong,
    })
}
