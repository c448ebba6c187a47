//! Training: the step, the optimizer and schedule, checkpoints, and the loop.

mod accumulate;
pub mod adapters;
pub mod checkpoint;
pub mod distill;
pub mod ema;
pub mod engine;
pub mod evaluate;
pub mod loss;
pub mod optim;
pub mod scaler;
pub mod schedule;
mod sinks;
pub mod step;
pub mod trainer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::Config;
use crate::data::augment::Image;
use crate::data::dataset::Dataset;
use crate::data::loader::{Loader, LoaderConfig, SampleTransform};
use crate::data::{Split, load, recipe};
use crate::error::{Error, Result};
use crate::memory::product;
use crate::model::io::HostTensor;
use crate::model::layers::Ctx;
use crate::model::{Model, VitConfig};
use crate::weights;
pub use trainer::{Run, Summary, train};

/// `runs/<UTC timestamp>`, with `-2`, `-3`, ... when a run of the same second has it.
pub fn default_run_dir() -> PathBuf {
    let base = timestamp_dir();
    (1..)
        .map(|k| match k {
            1 => base.clone(),
            k => PathBuf::from(format!("{}-{k}", base.display())),
        })
        .find(|d| !d.exists())
        .unwrap_or(base)
}

/// What says a folder holds a run worth keeping: a written checkpoint, or a finished run's
/// summary (`train`, `continual`, `compare-finetune`). A run killed before its first
/// checkpoint left nothing to resume, so starting it again is no loss.
fn holds_run(dir: &Path) -> bool {
    let checkpoint = std::fs::read_dir(dir.join("checkpoints")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
    });
    checkpoint
        || ["summary.json", "continual.json", "compare.json"]
            .iter()
            .any(|f| dir.join(f).exists())
}

/// A fresh run never writes into a folder that holds a run: it refuses, naming the ways on,
/// or with `--overwrite` moves the old run aside (it is never deleted). A comparison
/// (`compare-finetune`, which cannot be resumed) is told so.
pub(crate) fn claim_run_dir(dir: &Path, overwrite: bool) -> Result<()> {
    if !holds_run(dir) {
        return Ok(());
    }
    if !overwrite {
        let resume = if dir.join("compare.json").exists() {
            String::new()
        } else {
            format!(
                "continue it with --resume-from {}/checkpoints/last, ",
                dir.display()
            )
        };
        return Err(Error::Config(format!(
            "{} already holds a run: {resume}give another --out-dir, or add --overwrite to move it aside",
            dir.display()
        )));
    }
    let aside = (1..)
        .map(|k| PathBuf::from(format!("{}.replaced-{k}", dir.display())))
        .find(|d| !d.exists())
        .unwrap_or_else(|| dir.with_extension("replaced"));
    std::fs::rename(dir, &aside).map_err(|e| Error::io(dir, "moving the old run aside", e))?;
    crate::log_line!(
        "note: --overwrite: the run that was in {} is now in {}",
        dir.display(),
        aside.display()
    );
    Ok(())
}

fn timestamp_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    PathBuf::from("runs").join(format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// The model of a `--pretrained` run: config from the checkpoint (resolution and head
/// adapted to this run), its weights, and the normalisation it expects (set in `cfg` unless
/// given). Notes on what was changed go to stderr, one line each.
fn pretrained_start(
    cfg: &mut Config,
    spec: &str,
    loaded: Option<weights::Pretrained>,
    channels: usize,
    data_classes: usize,
) -> Result<(VitConfig, Option<BTreeMap<String, HostTensor>>)> {
    let Some(mut p) = loaded else {
        // Resuming: the checkpoint holds the weights and its config is the model.
        let dir = cfg.run.resume_from.clone().unwrap_or_default();
        let path = dir.join("config.json");
        let s = std::fs::read(&path).map_err(|e| Error::io(&path, "reading", e))?;
        let vit: VitConfig = serde_json::from_slice(&s)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
        return Ok((vit, None));
    };
    let mut notes = std::mem::take(&mut p.notes);
    let c = p.config.clone();
    let ignored: Vec<String> = [
        ("--patch-size", cfg.model.patch_size, c.patch_size),
        ("--embed-dim", cfg.model.embed_dim, c.embed_dim),
        ("--depth", cfg.model.depth, c.depth),
        ("--num-heads", cfg.model.num_heads, c.num_heads),
        ("--mlp-dim", cfg.model.mlp_dim, c.mlp_dim),
    ]
    .iter()
    .filter(|(_, given, has)| given.is_some_and(|g| g != *has))
    .map(|(flag, given, has)| format!("{flag} {} (it has {has})", given.unwrap_or(0)))
    .collect();
    if !ignored.is_empty() {
        notes.push(format!(
            "the model's shape comes from {spec}: ignoring {}",
            ignored.join(", ")
        ));
    }
    if channels != c.in_chans {
        return Err(Error::Config(format!(
            "{spec} expects {}-channel images but {:?} has {channels} (use a dataset with {} channels)",
            c.in_chans, cfg.data.dataset, c.in_chans
        )));
    }
    let num_classes = cfg.model.num_classes.unwrap_or(data_classes);
    if num_classes < data_classes {
        return Err(Error::Config(format!(
            "--num-classes {num_classes} is smaller than the dataset's {data_classes} classes"
        )));
    }
    if !p.has_head {
        notes.push(format!(
            "{spec} has no classification head: adding a fresh {num_classes}-class head"
        ));
        p.replace_head(num_classes);
    } else if num_classes != c.num_classes || cfg.model.reset_head {
        notes.push(format!(
            "replacing the {}-class head of {spec} with a fresh {num_classes}-class head{}",
            c.num_classes,
            if num_classes == c.num_classes {
                " (--reset-head)"
            } else {
                ""
            }
        ));
        p.replace_head(num_classes);
    }
    if let Some(n) = p.set_img_size(cfg.model.img_size.unwrap_or(c.img_size))? {
        notes.push(n);
    }
    cfg.regularise(&mut p.config);
    p.config.validate()?;
    if cfg.data.mean.is_none() {
        match (&p.mean, &p.std) {
            (Some(m), Some(s)) => {
                cfg.data.mean = Some(m.clone());
                cfg.data.std = Some(s.clone());
            }
            _ => {
                let (m, s) = weights::imagenet();
                cfg.data.mean = Some(m);
                cfg.data.std = Some(s);
                notes.push(format!(
                    "{spec} does not say how its inputs were normalised: using ImageNet's mean/std"
                ));
            }
        }
    }
    for n in notes {
        crate::log_line!("note: {n}");
    }
    Ok((p.config, Some(p.weights)))
}

/// Everything before the first step: data, model config, loaders, run directory.
pub fn prepare(mut cfg: Config) -> Result<Run> {
    cfg.validate()?;
    let dist = crate::dist::world();
    let run_dir = match (&cfg.run.out_dir, &cfg.run.resume_from) {
        (Some(d), _) => d.clone(),
        (None, Some(r)) => checkpoint::run_dir_of(r).unwrap_or_else(default_run_dir),
        (None, None) => default_run_dir(),
    };
    if dist.is_main() && cfg.run.resume_from.is_none() {
        claim_run_dir(&run_dir, cfg.run.overwrite)?;
    }
    let device = crate::device::resolve(
        crate::dist::device_spec(cfg.run.device.as_deref(), dist).as_deref(),
    )?;
    cfg.optim.precision.check_device(&device)?;
    // Pretrained weights first: a missing file should not wait for the data.
    let loaded = match (&cfg.model.pretrained, &cfg.run.resume_from) {
        (Some(spec), None) => Some(checkpoint::load_pretrained(spec)?),
        _ => None,
    };
    let train_data = load::load_split(&cfg, Split::Train)?;
    let val_data = load::load_split(&cfg, Split::Test)?;
    if train_data.height != train_data.width {
        return Err(Error::Data(format!(
            "images are {}×{}; vitrs trains on square images (resize the data set first)",
            train_data.height, train_data.width
        )));
    }
    let (vit_config, init_weights) = match cfg.model.pretrained.clone() {
        Some(spec) => pretrained_start(
            &mut cfg,
            &spec,
            loaded,
            train_data.channels,
            train_data.num_classes(),
        )?,
        None => (
            cfg.vit_config(
                train_data.height,
                train_data.channels,
                train_data.num_classes(),
            )?,
            None,
        ),
    };
    ensure_training_fits(&vit_config, cfg.optim.batch_size)?;
    let (mean, std) = load::mean_std(&cfg, train_data.channels);
    let out_size = vit_config.img_size;
    let loader_cfg = |shuffle: bool| LoaderConfig {
        batch_size: cfg.optim.batch_size,
        shuffle,
        seed: cfg.run.seed,
        num_classes: vit_config.num_classes,
        label_smoothing: cfg.augment.label_smoothing,
        mix: recipe::mix(&cfg, vit_config.num_classes),
        out_size,
        prefetch: 3,
    };
    let class_names = train_data.class_names.clone();
    let train_tf = recipe::train_transform(&cfg, &mean, &std, out_size)?;
    if dist.is_main() {
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| Error::io(&run_dir, "creating run directory", e))?;
        crate::util::write_file_synced(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    }
    // Each rank trains and validates on its own shard of every epoch.
    let shard = (dist.rank(), dist.size());
    Ok(Run {
        train: Loader::new(
            Arc::new(train_data),
            SampleTransform::Train(Box::new(train_tf)),
            loader_cfg(true),
        )
        .shard(shard.0, shard.1),
        val: val_loader(&cfg, &vit_config, val_data).shard(shard.0, shard.1),
        config: cfg,
        vit_config,
        init_weights,
        device,
        class_names,
        run_dir,
    })
}

/// The size guard of training (`crate::memory`): a ViT's weights, one batch of images and
/// one saved activation per block (backward needs at least the input of each block).
fn ensure_training_fits(vit: &VitConfig, batch: usize) -> Result<()> {
    if vit.cnn.is_some() {
        return Ok(());
    }
    let activations = product(&[batch, vit.embed_dim, vit.depth]).saturating_mul(vit.num_tokens());
    let images = product(&[batch, vit.in_chans, vit.img_size, vit.img_size]);
    let floats = vit
        .num_params()
        .saturating_add(activations)
        .saturating_add(images);
    crate::memory::ensure_fits(
        format_args!(
            "training a ViT of {} weights on {} tokens per image with --batch-size {batch}",
            vit.num_params(),
            vit.num_tokens()
        ),
        floats.saturating_mul(4),
        "lower --batch-size (--accum-steps keeps the effective batch) or choose a smaller model",
    )
}

/// The evaluation loader of a run: no augmentation, resized to the model's input size.
pub fn val_loader(cfg: &Config, vit: &VitConfig, data: Dataset) -> Loader {
    let (mean, std) = load::mean_std(cfg, data.channels);
    let config = LoaderConfig {
        batch_size: cfg.optim.batch_size,
        shuffle: false,
        seed: cfg.run.seed,
        num_classes: vit.num_classes,
        label_smoothing: 0.0,
        mix: None,
        out_size: vit.img_size,
        prefetch: 3,
    };
    Loader::new(
        Arc::new(data),
        SampleTransform::Eval(recipe::eval_transform(cfg, &mean, &std, vit.img_size)),
        config,
    )
}

/// Class probabilities of `model` for one image file.
pub fn predict_file(
    model: &Model,
    cfg: &Config,
    vit: &VitConfig,
    path: &Path,
    device: &Device,
) -> Result<Vec<f32>> {
    let img = image::open(path).map_err(|e| {
        Error::data(
            path,
            format!("cannot decode image: {e}"),
            "give a png or jpeg file",
        )
    })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let bytes = if vit.in_chans == 1 {
        img.to_luma8().into_raw()
    } else {
        img.to_rgb8().into_raw()
    };
    let img = Image::from_slice(h, w, vit.in_chans, &bytes);
    let (mean, std) = load::mean_std(cfg, vit.in_chans);
    let mut out = vec![0f32; vit.in_chans * vit.img_size * vit.img_size];
    recipe::eval_transform(cfg, &mean, &std, vit.img_size).apply(&img, &mut out);
    let x = Tensor::<4>::from_data(
        TensorData::new(out, [1, vit.in_chans, vit.img_size, vit.img_size]),
        device,
    );
    let probs = softmax(model.forward(x, &Ctx::eval()), 1);
    Ok(probs
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default())
}
