//! What each subcommand does, given parsed arguments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use clap::{ArgMatches, Args, FromArgMatches};

use super::flags;
use crate::cli::{
    Cli, Command, ContinualArgs, DataArgs, DataCommand, EvalArgs, ExportArgs, LogitsArgs,
    PredictArgs, TrainArgs,
};
use crate::config::Config;
use crate::data::{Split, load};
use crate::error::{Error, Result};
use crate::model::io::{HostTensor, read_safetensors, write_safetensors};
use crate::model::layers::Ctx;
use crate::train::{self, checkpoint};
use crate::weights::Pretrained;

pub fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    // train, continual and compare-finetune are data-parallel; the others would run once per
    // rank and write the same outputs side by side.
    if !matches!(
        cli.command,
        Command::Train(_) | Command::Continual(_) | Command::CompareFinetune(_)
    ) {
        crate::dist::refuse_launched(matches.subcommand_name().unwrap_or("?"))?;
    }
    match cli.command {
        Command::Train(args) => {
            let sub = matches
                .subcommand_matches("train")
                .ok_or_else(|| Error::Config("no train arguments".into()))?;
            cmd_train(*args, sub)
        }
        Command::CompareFinetune(args) => {
            let sub = matches
                .subcommand_matches("compare-finetune")
                .ok_or_else(|| Error::Config("no compare-finetune arguments".into()))?;
            flags::check(
                flags::TrainingCommand::CompareFinetune,
                sub,
                args.train.config_file.as_deref(),
                None,
            )?;
            let (cfg, note) = train_config(&args.train, sub)?;
            // One launched process spawns one child per method, as without a launcher (a child
            // of an MPI process could not join a job of its own).
            let dist = match crate::dist::launched_alone() {
                true => crate::dist::world(),
                false => crate::dist::init()?,
            };
            say_note(note, dist);
            let out = cfg
                .run
                .out_dir
                .clone()
                .unwrap_or_else(|| train::default_run_dir().with_extension("finetune"));
            if dist.size() > 1 {
                // The methods run in this process, one after another (see compare_finetune).
                set_threads(cfg.run.threads, dist);
                crate::signals::install();
            }
            let md = crate::tools::compare_finetune::run(&cfg, &args.methods, &out)?;
            if !dist.is_main() {
                return Ok(());
            }
            println!("{md}");
            crate::log_line!("compare.json, compare.md and plots in {}", out.display());
            Ok(())
        }
        Command::Continual(args) => {
            let sub = matches
                .subcommand_matches("continual")
                .ok_or_else(|| Error::Config("no continual arguments".into()))?;
            cmd_continual(*args, sub)
        }
        Command::Eval(args) => cmd_eval(args),
        Command::Predict(args) => cmd_predict(args),
        Command::Report { run_dir } => {
            let eval_path = run_dir.join("eval.json");
            let eval = if eval_path.exists() {
                Some(crate::report::metrics::EvalReport::load(&eval_path)?)
            } else {
                None
            };
            println!("{}", crate::report::write_report(&run_dir, eval.as_ref())?);
            crate::log_line!("plots in {}", run_dir.join("plots").display());
            Ok(())
        }
        Command::Compare { run_dirs, plot } => {
            println!("{}", compare(&run_dirs, Some(&plot))?);
            crate::log_line!("validation curves: {}", plot.display());
            Ok(())
        }
        Command::Bench(args) => {
            let r = crate::tools::bench::run(&args)?;
            println!(
                "{}",
                serde_json::to_string(&r).map_err(|e| Error::Io(e.to_string()))?
            );
            Ok(())
        }
        Command::Logits(args) => cmd_logits(args),
        Command::Devices => {
            for a in crate::device::list() {
                println!("{:10} {:10} {}  {}", a.spec, a.kind, a.name, a.driver);
            }
            let compiled = crate::device::compiled();
            if compiled.contains(&"vulkan") {
                println!(
                    "--device vulkan takes the best (discrete, integrated, virtual, then cpu); vulkan:N the N-th"
                );
            }
            println!("compiled in: {}", compiled.join(", "));
            Ok(())
        }
        Command::Export(args) => cmd_export(args),
        Command::Data { command } => match command {
            DataCommand::Download(a) => cmd_download(a),
            DataCommand::Info(a) => cmd_info(a),
        },
    }
}

/// `vitrs compare`: continual runs get continual's table (forgetting, BWT), other runs
/// report's. The choice is made here so that report does not depend on continual.
pub fn compare(dirs: &[PathBuf], plot: Option<&Path>) -> Result<String> {
    if dirs
        .iter()
        .any(|d| crate::continual::report::is_continual_run(d))
    {
        return crate::continual::report::compare(dirs, plot);
    }
    crate::report::compare::compare(dirs, plot)
}

/// `--threads`, where 0 divides this machine's cores among its MPI ranks.
fn set_threads(threads: usize, dist: &dyn crate::dist::Comm) {
    crate::device::set_threads(if threads > 0 {
        threads
    } else {
        crate::dist::default_threads(dist)
    });
}

/// Resolve the full configuration of a `train` invocation.
/// The configuration of a training command, and a note to print (on rank 0) when a default
/// was fitted to the run.
pub fn train_config(args: &TrainArgs, matches: &ArgMatches) -> Result<(Config, Option<String>)> {
    // Resuming continues the run's own configuration; flags (e.g. --epochs) override it.
    let base = match &args.config.run.resume_from {
        Some(dir) => checkpoint::load(dir)?.train_config.ok_or_else(|| {
            Error::Checkpoint(format!(
                "{} has no train_config.toml, so the run it belongs to is unknown: it cannot be resumed (start from its weights with --pretrained {})",
                dir.display(),
                dir.display()
            ))
        })?,
        None => Config::default(),
    };
    let resuming = args.config.run.resume_from.is_some();
    let (mut cfg, given) =
        Config::resolve_with_keys(base, &args.config, matches, args.config_file.as_deref())?;
    cfg.run.resume_from = args.config.run.resume_from.clone();
    // A warmup nobody chose (the default's, not a flag's, a file's or a resumed run's)
    // shrinks to fit a short run, saying so.
    let note = match !resuming && !given.contains("warmup-epochs") {
        true => cfg.fit_default_warmup(),
        false => None,
    };
    crate::data::recipe::check(&cfg)?;
    Ok((cfg, note))
}

/// A note of `train_config`, from rank 0 only.
fn say_note(note: Option<String>, dist: &dyn crate::dist::Comm) {
    if let (Some(n), true) = (note, dist.is_main()) {
        crate::log_line!("note: {n}");
    }
}

fn cmd_train(args: TrainArgs, matches: &ArgMatches) -> Result<()> {
    let (cfg, note) = train_config(&args, matches)?;
    let dist = crate::dist::init()?;
    say_note(note, dist);
    set_threads(cfg.run.threads, dist);
    crate::signals::install();
    let run = train::prepare(cfg)?;
    let summary = train::train(run)?;
    crate::signals::record_stop(&summary.stopped_reason);
    if !dist.is_main() {
        return Ok(());
    }
    if summary.stopped_reason == "max_steps" {
        println!(
            "done (max_steps): {:.1} ms/step (median), {:.0} img/s; not evaluated; outputs in {}",
            summary.step_ms_median,
            summary.train_images_per_sec,
            summary.run_dir.display()
        );
        return Ok(());
    }
    println!(
        "done ({}): best val acc {:.2}% at epoch {}, final val acc {:.2}%, {:.0} img/s; outputs in {}",
        summary.stopped_reason,
        100.0 * summary.best_val_acc,
        summary.best_epoch,
        100.0 * summary.final_val_acc,
        summary.train_images_per_sec,
        summary.run_dir.display()
    );
    Ok(())
}

fn cmd_continual(args: ContinualArgs, matches: &ArgMatches) -> Result<()> {
    let train_args = TrainArgs {
        config_file: args.config_file.clone(),
        config: args.config.clone(),
    };
    let (cfg, note) = train_config(&train_args, matches)?;
    let dist = crate::dist::init()?;
    say_note(note, dist);
    // Resuming continues the run's own continual settings; only --stop-after-task may change.
    let cl = match &cfg.run.resume_from {
        Some(dir) => {
            let mut saved = crate::continual::runner::ContinualState::load(dir)?.continual;
            let given = &args.continual;
            let mut same = given.clone();
            same.stop_after_task = saved.stop_after_task;
            let defaults = crate::continual::ContinualConfig::from_arg_matches(
                &crate::continual::ContinualConfig::augment_args(clap::Command::new("x"))
                    .get_matches_from(["x"]),
            )
            .map_err(|e| Error::Config(e.to_string()))?;
            let mut untouched = defaults;
            untouched.stop_after_task = saved.stop_after_task;
            if same != saved && same != untouched {
                return Err(Error::Config(format!(
                    "{} continues a run with its own continual settings ({} / {} / {} tasks); give only --resume-from and, optionally, --stop-after-task",
                    dir.display(),
                    saved.strategy.name(),
                    saved.scenario.name(),
                    saved.tasks
                )));
            }
            saved.stop_after_task = given.stop_after_task;
            saved
        }
        None => args.continual.clone(),
    };
    flags::check(
        flags::TrainingCommand::Continual,
        matches,
        args.config_file.as_deref(),
        Some(&cl),
    )?;
    set_threads(cfg.run.threads, dist);
    crate::signals::install();
    let out = crate::continual::runner::run(cfg, cl)?;
    crate::signals::record_stop(&out.report.stop_reason);
    if !dist.is_main() {
        return Ok(());
    }
    let r = &out.report;
    let pct = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{:.2}%", 100.0 * v));
    println!(
        "{} ({}): {} of {} tasks, average accuracy {}, average forgetting {}, BWT {}; outputs in {}",
        r.strategy,
        r.scenario,
        r.completed_tasks,
        r.tasks,
        pct(Some(r.metrics.avg_acc)),
        pct(r.metrics.avg_forgetting),
        pct(r.metrics.bwt),
        r.run_dir.display()
    );
    if let Some(dir) = out.stopped_at {
        println!(
            "continue with: vitrs continual --resume-from {}",
            dir.display()
        );
    }
    Ok(())
}

fn cmd_eval(args: EvalArgs) -> Result<()> {
    crate::device::set_threads(args.threads);
    let ck = checkpoint::load(&args.checkpoint)?;
    let mut cfg = ck.train_config.clone().unwrap_or_default();
    if let Some(d) = args.dataset {
        cfg.data.dataset = d;
    }
    if args.data_dir.is_some() {
        cfg.data.data_dir = args.data_dir.clone();
    }
    if let Some(n) = args.limit_val {
        cfg.data.limit_val = n;
    }
    if let Some(b) = args.batch_size {
        if b == 0 {
            return Err(Error::Config(
                "--batch-size 0 is out of range: it must be at least 1".into(),
            ));
        }
        cfg.optim.batch_size = b;
    }
    cfg.run.device = args.device.clone().or(cfg.run.device);
    let device = crate::device::resolve(cfg.run.device.as_deref())?;
    let weights = match (args.ema, &ck.ema) {
        (false, _) => &ck.model,
        (true, Some(ema)) => ema,
        (true, None) => {
            return Err(Error::Checkpoint(format!(
                "{} has no EMA weights (train with --ema-decay to keep them)",
                args.checkpoint.display()
            )));
        }
    };
    let mut model = model_with(&ck, &args.checkpoint, weights, &device)?;
    if let Some(dir) = &args.adapter_from {
        let adapter = crate::model::lora::read_peft(dir)?;
        model = model.map_vit(|m| crate::model::lora::apply_adapter(m, &adapter, &device))?;
    }
    if let Some(h) = args.eval_head {
        model = model.with_eval_head(h);
    }
    let val = load::load_split(&cfg, Split::Test)?;
    checkpoint::same_classes(
        &args.checkpoint,
        ck.class_names.as_deref(),
        ck.vit_config.num_classes,
        &val.class_names,
    )?;
    let loader = crate::train::val_loader(&cfg, &ck.vit_config, val);
    let (mut report, preds) =
        crate::train::evaluate::evaluate_preds(&model, &loader, &device, None)?;
    if let Some(spec) = &args.teacher {
        let t = crate::train::distill::load_teacher(
            spec,
            &ck.vit_config,
            crate::config::DistillKind::None,
            0.0,
            1.0,
            &device,
        )?;
        let t_preds = crate::train::distill::predictions(&t.model, &loader, &t.device)?;
        report.teacher_agreement = Some(crate::train::distill::agreement(&preds, &t_preds));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::Io(e.to_string()))?
        );
    } else {
        println!("{}", report.to_table());
        if let Some(a) = report.teacher_agreement {
            println!("teacher agreement: {:.2}%", 100.0 * a);
        }
    }
    Ok(())
}

/// The checkpoint's model carrying `weights` (its own, or its EMA weights); an adapter
/// checkpoint's adapter is merged into its base.
fn model_with(
    ck: &checkpoint::Checkpoint,
    dir: &std::path::Path,
    weights: &std::collections::BTreeMap<String, crate::model::io::HostTensor>,
    device: &burn::tensor::Device,
) -> Result<crate::model::Model> {
    let model = crate::model::Model::new(&ck.vit_config, 0, device)?;
    crate::model::io::load_state_dict(model, &ck.full_weights(dir, weights)?, device)
}

fn cmd_predict(args: PredictArgs) -> Result<()> {
    let ck = checkpoint::load(&args.checkpoint)?;
    let cfg = ck.train_config.clone().unwrap_or_default();
    let device = crate::device::resolve(args.device.as_deref().or(cfg.run.device.as_deref()))?;
    let mut model = model_with(&ck, &args.checkpoint, &ck.model, &device)?;
    if let Some(h) = args.eval_head {
        model = model.with_eval_head(h);
    }
    let names = ck.class_names.clone().unwrap_or_else(|| {
        (0..ck.vit_config.num_classes)
            .map(|i| format!("class_{i}"))
            .collect()
    });
    for path in &args.images {
        let probs = crate::train::predict_file(&model, &cfg, &ck.vit_config, path, &device)?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        println!("{}:", path.display());
        for &k in order.iter().take(args.top) {
            println!(
                "  {:6.2}%  {}",
                100.0 * probs[k],
                names.get(k).map(String::as_str).unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn cmd_logits(args: LogitsArgs) -> Result<()> {
    crate::device::set_threads(args.threads);
    let device = crate::device::resolve(args.device.as_deref())?;
    let mut p = checkpoint::load_pretrained(&args.pretrained)?;
    if let Some(dir) = &args.adapter {
        p.merge_adapter(&crate::model::lora::read_peft(dir)?)?;
    }
    for n in &p.notes {
        crate::log_line!("note: {n}");
    }
    let input = read_safetensors(&args.input)?;
    let pixels = input.get("pixel_values").ok_or_else(|| {
        Error::Data(format!(
            "{}: no `pixel_values` tensor (found: {})",
            args.input.display(),
            input.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let out = logits(p, pixels, args.img_size, &device)?;
    write_safetensors(&args.output, &out, None)?;
    let shape = &out["logits"].shape;
    println!(
        "wrote {} ({}) to {}",
        out.keys().cloned().collect::<Vec<_>>().join(", "),
        shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("×"),
        args.output.display()
    );
    Ok(())
}

/// `vitrs logits`: logits for `pixel_values` (`[n, c, h, w]`, f32, already normalised) in eval mode.
/// An input of another size than the checkpoint's resamples the position embeddings the way
/// the source library does. Returns `logits` (for a distillation-token model the mean of both
/// heads, timm's eval output) and, for such models, `logits_cls` and `logits_dist`.
pub fn logits(
    mut p: Pretrained,
    pixel_values: &HostTensor,
    img_size: Option<usize>,
    device: &Device,
) -> Result<BTreeMap<String, HostTensor>> {
    let [n, c, h, w] = pixel_values.shape[..] else {
        return Err(Error::Data(format!(
            "pixel_values has shape {:?}, expected [batch, channels, height, width]",
            pixel_values.shape
        )));
    };
    if h != w {
        return Err(Error::Data(format!(
            "pixel_values are {h}×{w}; vitrs models take square images"
        )));
    }
    if c != p.config.in_chans {
        return Err(Error::Data(format!(
            "pixel_values have {c} channels, the model expects {}",
            p.config.in_chans
        )));
    }
    if let Some(s) = img_size.filter(|s| *s != h) {
        return Err(Error::Config(format!(
            "--img-size {s} differs from the input's {h}×{w} (drop the flag, or resize the input)"
        )));
    }
    if !p.has_head {
        return Err(Error::Checkpoint(format!(
            "{} has no classification head: there are no logits to compute",
            p.source.display()
        )));
    }
    p.set_img_size(h)?;
    let model = p.build(0, device)?;
    let classes = p.config.num_classes;
    let per = c * h * w;
    let (mut cls, mut dist) = (Vec::with_capacity(n * classes), Vec::new());
    let ctx = Ctx::eval();
    let host = |t: Tensor<2>| -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default()
    };
    for start in (0..n).step_by(32) {
        let b = (n - start).min(32);
        let x = Tensor::<4>::from_data(
            TensorData::new(
                pixel_values.data[start * per..(start + b) * per].to_vec(),
                [b, c, h, w],
            ),
            device,
        );
        let out = model.forward_heads(x, &ctx);
        cls.extend(host(out.logits));
        if let Some(d) = out.dist_logits {
            dist.extend(host(d));
        }
    }
    let t = |data: Vec<f32>| HostTensor {
        shape: vec![n, classes],
        data,
    };
    let mut out = BTreeMap::new();
    if p.config.dist_token {
        let avg = cls.iter().zip(&dist).map(|(a, b)| (a + b) / 2.0).collect();
        out.insert("logits".to_string(), t(avg));
        out.insert("logits_cls".to_string(), t(cls));
        out.insert("logits_dist".to_string(), t(dist));
    } else {
        out.insert("logits".to_string(), t(cls));
    }
    Ok(out)
}

fn cmd_export(args: ExportArgs) -> Result<()> {
    let is_adapter_ckpt =
        crate::model::lora::is_adapter_dir(std::path::Path::new(&args.checkpoint));
    if (args.adapter.is_some() || is_adapter_ckpt) && !args.merge {
        return Err(Error::Config(
            "exporting LoRA weights as a plain model needs --merge (the unmerged adapter already is in PEFT's format: adapter_model.safetensors + adapter_config.json)".into(),
        ));
    }
    let mut p = checkpoint::load_pretrained(&args.checkpoint)?;
    if let Some(dir) = &args.adapter {
        p.merge_adapter(&crate::model::lora::read_peft(dir)?)?;
    }
    crate::weights::export::export(&p, args.format, &args.out)?;
    let what = match args.format {
        crate::weights::export::ExportFormat::Onnx => crate::weights::onnx::FILE.to_string(),
        f => format!(
            "{} weights and config.json",
            format!("{f:?}").to_lowercase()
        ),
    };
    println!(
        "wrote {what} of {} to {}",
        p.source.display(),
        args.out.display()
    );
    Ok(())
}

fn data_config(a: &DataArgs) -> Config {
    {
        let mut c = Config::default();
        c.data.dataset = a.dataset;
        c.data.data_dir = a.data_dir.clone();
        c
    }
}

fn cmd_download(a: DataArgs) -> Result<()> {
    let cfg = data_config(&a);
    let dir = load::data_dir(&cfg);
    match a.dataset {
        crate::config::DatasetKind::Cifar10 => crate::data::formats::download::ensure_cifar(
            &dir,
            crate::data::formats::cifar::CifarKind::Ten,
        )
        .map(|p| println!("CIFAR-10 ready in {}", p.display())),
        crate::config::DatasetKind::Cifar100 => crate::data::formats::download::ensure_cifar(
            &dir,
            crate::data::formats::cifar::CifarKind::Hundred,
        )
        .map(|p| println!("CIFAR-100 ready in {}", p.display())),
        other => Err(Error::Config(format!(
            "{other:?} is not downloaded by vitrs: Fashion-MNIST comes with Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist), imagefolder/synthetic need no download"
        ))),
    }
}

fn cmd_info(a: DataArgs) -> Result<()> {
    let cfg = data_config(&a);
    for split in [Split::Train, Split::Test] {
        let d = load::load_split(&cfg, split)?;
        let mut counts = vec![0usize; d.num_classes()];
        for &l in &d.labels {
            counts[l as usize] += 1;
        }
        println!(
            "{:?} {split:?}: {} images of {}×{}×{}, {} classes (min {} / max {} per class) from {}",
            a.dataset,
            d.len(),
            d.height,
            d.width,
            d.channels,
            d.num_classes(),
            counts.iter().min().unwrap_or(&0),
            counts.iter().max().unwrap_or(&0),
            load::data_dir(&cfg).display()
        );
    }
    Ok(())
}
