//! The binary's user-facing behaviour: one clear line and a non-zero exit on bad input.

use std::process::Command;

mod common;
use common::vitrs;

fn assert_one_line_error(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn impossible_model_shapes_are_rejected_before_anything_runs() {
    let (code, _, err) = vitrs(&[
        "train",
        "--dataset",
        "synthetic",
        "--embedding_dim",
        "100",
        "--num_heads",
        "3",
    ]);
    assert_eq!(code, 1);
    assert_one_line_error(&err, "embed-dim 100 is not divisible by num-heads 3");
    let (code, _, err) = vitrs(&[
        "train",
        "--dataset",
        "synthetic",
        "--img-size",
        "30",
        "--patch-size",
        "4",
    ]);
    assert_eq!(code, 1);
    assert_one_line_error(&err, "img-size 30 is not divisible by patch-size 4");
}

/// The policy string is parsed by the data side, still before any data is read.
#[test]
fn a_bad_randaugment_policy_is_rejected_before_the_data_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-cifar-here");
    let (code, _, err) = vitrs(&[
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        missing.to_str().unwrap(),
        "--randaugment",
        "rand-m9-x3",
    ]);
    assert_eq!(code, 1);
    assert_one_line_error(&err, "--randaugment rand-m9-x3: ");
}

#[test]
fn missing_and_corrupt_data_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = vitrs(&["train", "--dataset", "fashion-mnist", "--data-dir", d]);
    assert_eq!(code, 1);
    assert_one_line_error(&err, d);
    // A truncated CIFAR-10 binary batch.
    let bin = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for f in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        std::fs::write(bin.join(f), vec![0u8; 3073 * 2 + 100]).unwrap();
    }
    std::fs::write(
        bin.join("batches.meta.txt"),
        "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n",
    )
    .unwrap();
    let (code, _, err) = vitrs(&["train", "--dataset", "cifar10", "--data-dir", d]);
    assert_eq!(code, 1);
    assert_one_line_error(&err, "data_batch_1.bin");
}

#[test]
fn unknown_config_keys_name_the_closest_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "dataset = \"synthetic\"\nlerning-rate = 0.1\n").unwrap();
    let (code, _, err) = vitrs(&["train", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_one_line_error(
        &err,
        "unknown key `lerning-rate` (did you mean `learning-rate`",
    );
}

#[test]
fn seed_spellings_are_accepted() {
    // Parsing only: an impossible --epochs 0 stops it right after the flags were understood.
    let (code, _, err) = vitrs(&[
        "train",
        "--dataset",
        "synthetic",
        "--batch_size",
        "8",
        "--learning_rate",
        "1e-3",
        "--max_epochs",
        "0",
        "--warmup_epochs",
        "0",
        "--weight_decay",
        "0.01",
        "--grad_clip",
        "0.5",
        "--img_size",
        "16",
        "--embedding_dim",
        "32",
        "--num_layers",
        "2",
        "--num_heads",
        "2",
        "--mlp_size",
        "64",
        "--max_training_hours",
        "0.1",
        "--patience",
        "3",
        "--eval_every",
        "1",
    ]);
    assert_eq!(code, 1);
    assert_one_line_error(&err, "--epochs must be > 0");
}

#[test]
fn train_then_eval_predict_report_and_compare_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (code, out, err) = vitrs(&[
        "train",
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "320",
        "--img-size",
        "16",
        "--patch-size",
        "4",
        "--embed-dim",
        "32",
        "--depth",
        "1",
        "--num-heads",
        "2",
        "--mlp-dim",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--warmup-epochs",
        "0",
        "--quiet",
        "--out-dir",
        run.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("done (completed)"), "{out}");
    let ckpt = run.join("checkpoints/best_model");

    // A batch size of 0 is refused, not a division by zero in the loader (issue 23, case 2).
    let (code, _, err) = vitrs(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--batch-size",
        "0",
    ]);
    assert_eq!(code, 1);
    assert_one_line_error(&err, "--batch-size 0 is out of range");
    // eval --json: accuracies are fractions, one per class, and a full confusion matrix.
    let (code, out, err) = vitrs(&["eval", "--checkpoint", ckpt.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let acc = v["acc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(v["per_class_acc"].as_array().unwrap().len(), 10);
    let confusion = v["confusion"].as_array().unwrap();
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(total, v["num_samples"].as_u64().unwrap());
    // ... and the table form names the classes.
    let (code, out, _) = vitrs(&["eval", "--checkpoint", ckpt.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("class_0") && out.contains("confusion"),
        "{out}"
    );

    // predict: top-5 with class names for a PNG of another size (resized to the model's).
    let png = dir.path().join("x.png");
    image::RgbImage::from_fn(20, 20, |x, y| {
        image::Rgb([(x * 12) as u8, (y * 12) as u8, 128])
    })
    .save(&png)
    .unwrap();
    let (code, out, err) = vitrs(&[
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        png.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let ranked: Vec<&str> = out.lines().filter(|l| l.contains('%')).collect();
    assert_eq!(ranked.len(), 5, "{out}");
    assert!(ranked.iter().all(|l| l.contains("class_")), "{out}");

    // report and compare read the run back.
    let (code, out, err) = vitrs(&["report", run.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("# Training report"), "{out}");
    assert!(run.join("plots/confusion.png").exists() && run.join("report.md").exists());
    let plot = dir.path().join("cmp.png");
    let (code, out, err) = vitrs(&[
        "compare",
        run.to_str().unwrap(),
        run.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(1.00×)") && plot.exists(), "{out}");
}

/// Started by `mpirun -np 2` without the `mpi` feature, each process would train alone into
/// the same run directory: refuse, before any data is read.
#[cfg(not(feature = "mpi"))]
#[test]
fn several_launched_processes_need_the_mpi_feature() {
    let out = Command::new(env!("CARGO_BIN_EXE_vitrs"))
        .args(["train", "--dataset", "synthetic", "--epochs", "1"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        "launched as one of 2 processes, but this vitrs was built without MPI",
    );
}

/// Started as one of several ranks: `vitrs <args>`'s stderr (it must exit with 1).
fn as_rank_0_of_2(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vitrs"))
        .args(args)
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The data-parallel commands need the `mpi` feature to run as several ranks.
#[cfg(not(feature = "mpi"))]
#[test]
fn data_parallel_commands_need_the_mpi_feature() {
    for cmd in ["continual", "compare-finetune"] {
        assert_one_line_error(
            &as_rank_0_of_2(&[cmd, "--dataset", "synthetic"]),
            "launched as one of 2 processes, but this vitrs was built without MPI",
        );
    }
}

/// Single-process commands refuse to run as several ranks (before reading anything), with
/// or without MPI.
#[test]
fn single_process_commands_refuse_to_run_as_several_ranks() {
    assert_one_line_error(
        &as_rank_0_of_2(&["report", "/nonexistent/run"]),
        "`vitrs report` runs in one process (it is not data-parallel)",
    );
}

/// Numbers that are not numbers, or out of their range, are refused with the flag named,
/// from the command line and from a config file (issue 23, case 3); so is a huge padding
/// that would overflow the image size (case 2: every sample used to panic, exit 0).
#[test]
fn non_finite_and_out_of_range_numbers_are_refused_naming_the_flag() {
    let base = ["train", "--dataset", "synthetic"];
    for (extra, needle) in [
        (
            &["--weight-decay", "nan"][..],
            "--weight-decay NaN is not a finite number",
        ),
        (
            &["--grad-clip", "nan"][..],
            "--grad-clip NaN is not a finite number",
        ),
        (
            &["--warmup-epochs", "nan"][..],
            "--warmup-epochs NaN is not a finite number",
        ),
        (
            &["--mixup", "inf"][..],
            "--mixup inf is not a finite number",
        ),
        (
            &["--eps=-1"][..],
            "--eps -1 is out of range: it must be > 0",
        ),
        (&["--hflip", "2"][..], "--hflip 2 is out of range"),
        (&["--rotation=-5"][..], "--rotation -5 is out of range"),
        (
            &["--crop-padding", "9223372036854775807"][..],
            "--crop-padding 9223372036854775807 is out of range",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (code, _, err) = vitrs(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_one_line_error(&err, needle);
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r.toml");
    // A key from a file is named with the file; a type error names its key too.
    for (text, needle) in [
        (
            "rotation = nan",
            "r.toml: `rotation = NaN` is not a finite number",
        ),
        (
            "[optim]\nweight_decay = nan",
            "r.toml: `[optim] weight_decay = NaN` is not a finite",
        ),
        (
            "lr = \"abc\"",
            "r.toml: lr: invalid type: string \"abc\", expected f64",
        ),
        (
            "[optim]\nepochs = -3",
            "r.toml: epochs: invalid value: integer `-3`",
        ),
        (
            "lr = 0.1\nlearning_rate = 0.2",
            "r.toml: `learning_rate` and `lr` both set lr",
        ),
    ] {
        std::fs::write(&f, format!("dataset = \"synthetic\"\n{text}\n")).unwrap();
        let (code, _, err) = vitrs(&["train", "--config", f.to_str().unwrap()]);
        assert_eq!(code, 1, "{text}: {err}");
        assert_one_line_error(&err, needle);
    }
}

/// A tiny ViT on synthetic images, quiet: the data and model flags of the runs below.
const TINY: &str = "--dataset synthetic --img-size 16 --patch-size 8 --embed-dim 16 --depth 1 --num-heads 2 --mlp-dim 32 --quiet";

/// `vitrs train` of a tiny ViT on 128 synthetic images for `epochs` epochs into `out`, quiet,
/// with `extra` flags: (exit code, stdout, stderr).
fn tiny_train(out: &std::path::Path, epochs: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["train", "--synthetic-size", "128", "--epochs", epochs];
    args.extend(TINY.split(' '));
    args.extend(["--out-dir", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    vitrs(&args)
}

/// A newcomer's first short run (issue 23, case 9): the default warmup (5 epochs) shrinks
/// to a tenth of a 1-epoch run, saying so in one line; a warmup the user gave is theirs.
#[test]
fn the_default_warmup_fits_a_short_run_and_a_given_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, _, err) = tiny_train(&out, "1", &["--max-steps", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "the default warmup of 5 epochs does not fit --epochs 1: warming up for 0.1 epochs"
        ),
        "{err}"
    );
    let saved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(saved.contains("warmup-epochs = 0.1"), "{saved}");
    let (code, _, err) = tiny_train(&dir.path().join("other"), "1", &["--warmup-epochs", "3"]);
    assert_eq!(code, 1);
    assert_one_line_error(
        &err,
        "--warmup-epochs 3 must be between 0 and --epochs 1 (e.g. --warmup-epochs 0.1)",
    );
}

/// A folder that holds a run is never written into by a fresh run (issue 23, case 1): the
/// second run is refused with the ways on; `--overwrite` moves the old run aside, whole.
#[test]
fn a_finished_run_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, _, err) = tiny_train(&out, "1", &["--warmup-epochs", "0"]);
    assert_eq!(code, 0, "{err}");
    let summary = std::fs::read(out.join("summary.json")).unwrap();
    let (code, _, err) = tiny_train(&out, "1", &["--warmup-epochs", "0"]);
    assert_eq!(code, 1);
    assert_one_line_error(&err, "already holds a run: continue it with --resume-from");
    assert!(
        err.contains("--overwrite") && err.contains("--out-dir"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), summary);
    let (code, _, err) = tiny_train(&out, "1", &["--warmup-epochs", "0", "--overwrite"]);
    assert_eq!(code, 0, "{err}");
    let aside = dir.path().join("run.replaced-1");
    assert!(err.contains("is now in"), "{err}");
    assert_eq!(std::fs::read(aside.join("summary.json")).unwrap(), summary);
    assert!(aside.join("checkpoints/last").is_dir());
    assert!(out.join("summary.json").is_file());
}

/// Resume is what it says (issue 23, case 7): another global batch, a checkpoint without its
/// optimizer state or without its run's configuration are refused, naming the way on.
#[test]
fn resume_refuses_what_would_not_continue_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, _, err) = tiny_train(&out, "2", &["--warmup-epochs", "0", "--batch-size", "32"]);
    assert_eq!(code, 0, "{err}");
    let last = out.join("checkpoints/last");
    let resume = |ck: &std::path::Path, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--resume-from",
            ck.to_str().unwrap(),
            "--epochs",
            "3",
        ];
        a.extend_from_slice(extra);
        vitrs(&a)
    };
    let (code, _, err) = resume(&last, &["--batch-size", "16"]);
    assert_eq!(code, 1);
    assert_one_line_error(
        &err,
        "trained with 32 images per step (--batch-size × --accum-steps × processes) but this run takes 16",
    );
    for (file, needle) in [
        ("optimizer.safetensors", "has no optimizer.safetensors"),
        ("train_config.toml", "has no train_config.toml"),
    ] {
        let copy = dir.path().join(format!("without-{file}"));
        std::fs::create_dir_all(&copy).unwrap();
        for e in std::fs::read_dir(&last).unwrap().flatten() {
            if e.file_name() != file {
                std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
            }
        }
        let other = dir.path().join("r2");
        let (code, _, err) = resume(&copy, &["--out-dir", other.to_str().unwrap()]);
        assert_eq!(code, 1, "{file}: {err}");
        assert_one_line_error(&err, needle);
        assert!(err.contains("--pretrained"), "{err}");
    }
}

/// A run stopped by its time limit is not a finished one (issue 23, case 8): exit 75
/// (sysexits' "try again"), with the resume command printed; resuming finishes it (exit 0).
#[test]
fn the_time_limit_exits_75_with_the_resume_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, _, err) = tiny_train(
        &out,
        "2",
        &["--warmup-epochs", "0", "--max-training-hours", "1e-9"],
    );
    assert_eq!(code, 75, "{err}");
    let last = out.join("checkpoints/last");
    assert!(
        err.contains(&format!("--resume-from {}", last.display())),
        "{err}"
    );
    let (code, _, err) = vitrs(&[
        "train",
        "--resume-from",
        last.to_str().unwrap(),
        "--max-training-hours",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
}

/// Evaluation scores the classes the model learnt (issue 23, case 6): an image folder that
/// gained a class since training, or another dataset, is refused naming both class lists.
#[test]
fn eval_refuses_data_whose_classes_are_not_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let save = |split: &str, class: &str, i: u32| {
        let d = root.join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        image::RgbImage::from_fn(8, 8, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 30) as u8, (i * 40) as u8])
        })
        .save(d.join(format!("{i}.png")))
        .unwrap();
    };
    for class in ["cat", "dog"] {
        for i in 0..4 {
            save("train", class, i);
            save("val", class, i);
        }
    }
    let out = dir.path().join("run");
    let (code, _, err) = vitrs(&[
        "train",
        "--dataset",
        "imagefolder",
        "--data-dir",
        root.to_str().unwrap(),
        "--img-size",
        "8",
        "--patch-size",
        "4",
        "--embed-dim",
        "16",
        "--depth",
        "1",
        "--num-heads",
        "2",
        "--mlp-dim",
        "32",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--batch-size",
        "4",
        "--quiet",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let ck = out.join("checkpoints/last");
    let ck = ck.to_str().unwrap();
    let (code, _, err) = vitrs(&["eval", "--checkpoint", ck]);
    assert_eq!(code, 0, "{err}");
    save("train", "bird", 0);
    save("val", "bird", 0);
    let (code, _, err) = vitrs(&["eval", "--checkpoint", ck]);
    assert_eq!(code, 1);
    assert_one_line_error(
        &err,
        "was trained on 2 [cat, dog] classes but the data has 3 [bird, cat, dog]",
    );
    let (code, _, err) = vitrs(&["eval", "--checkpoint", ck, "--dataset", "synthetic"]);
    assert_eq!(code, 1);
    assert_one_line_error(
        &err,
        "was trained on 2 [cat, dog] classes but the data has 10",
    );
}

/// Sizes that cannot fit (issue 23, case 4) are one line before anything is allocated or
/// written, from flags, from a checkpoint's config.json, from a weights file's tensor shapes
/// (zero-size tensors hold no bytes whatever their other dimensions say) and from the input
/// of `logits`; the allocator used to abort with a backtrace (exit 134).
#[test]
fn sizes_that_cannot_fit_are_refused_before_allocating() {
    use vitrs::model::io::{HostTensor, read_safetensors, write_safetensors};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let train = [
        "train",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--out-dir",
        o,
    ];
    for (extra, needle) in [
        (
            &["--embedding_dim", "1000000000"][..],
            "a ViT of embed-dim 1000000000",
        ),
        (&["--num_layers", "1000000000000"], "depth 1000000000000"),
        (&["--mlp-dim", "100000000000000"], "mlp-dim 100000000000000"),
        (
            &["--synthetic-size", "1000000000000"],
            "1000000000000 synthetic 32×32 images",
        ),
        (
            &["--img-size", "1000000"],
            "synthetic 1000000×1000000 images",
        ),
        (
            &["--batch-size", "100000000", "--img-size", "256"],
            "--batch-size 100000000",
        ),
    ] {
        let (code, _, err) = vitrs(&[&train[..], extra].concat());
        assert_eq!(code, 1, "{extra:?}: {err}");
        assert_one_line_error(&err, needle);
        assert!(
            err.contains("would need at least") && err.contains("this machine has"),
            "{err}"
        );
        assert!(!out.exists(), "{extra:?} left a run folder behind");
    }

    // A checkpoint whose config.json asks for an MLP of 10^14.
    let (code, _, err) = tiny_train(&out, "1", &["--warmup-epochs", "0"]);
    assert_eq!(code, 0, "{err}");
    let best = out.join("checkpoints/best_model");
    let cfg_path = best.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["mlp_dim"] = 100_000_000_000_000u64.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let b = best.to_str().unwrap();
    let (code, _, err) = vitrs(&["eval", "--checkpoint", b, "--dataset", "synthetic"]);
    assert_eq!(code, 1, "{err}");
    assert_one_line_error(&err, "mlp-dim 100000000000000");

    // timm weights whose zero-byte head declares 10^15 classes.
    let timm = common::fixture("timm-vit-tiny").join("model.safetensors");
    let mut sd = read_safetensors(&timm).unwrap();
    let (golden_head, golden_bias) = (sd["head.weight"].clone(), sd["head.bias"].clone());
    let empty = |shape: Vec<usize>| HostTensor {
        shape,
        data: vec![],
    };
    sd.insert("head.weight".into(), empty(vec![1_000_000_000_000_000, 0]));
    sd.insert("head.bias".into(), empty(vec![0]));
    let weights = dir.path().join("huge-head");
    std::fs::create_dir(&weights).unwrap();
    let config = common::fixture("timm-vit-tiny").join("config.json");
    std::fs::copy(config, weights.join("config.json")).unwrap();
    write_safetensors(&weights.join("model.safetensors"), &sd, None).unwrap();
    let golden = read_safetensors(&common::fixture("timm-vit-tiny").join("golden.safetensors"));
    let pixels = dir.path().join("pixels.safetensors");
    let px = golden.unwrap().remove("pixel_values").unwrap();
    write_safetensors(&pixels, &[("pixel_values".to_string(), px)].into(), None).unwrap();
    let logits = dir.path().join("logits.safetensors");
    let (w, p, l) = (
        weights.to_str().unwrap(),
        pixels.to_str().unwrap(),
        logits.to_str().unwrap(),
    );
    let (code, _, err) = vitrs(&["logits", "--pretrained", w, "--input", p, "--output", l]);
    assert_eq!(code, 1, "{err}");
    assert_one_line_error(&err, "head.weight takes 0 features");
    // Zero-byte MLP weights declaring 10^15 hidden units: refused before the model is built.
    sd.remove("head.weight");
    sd.insert("head.weight".into(), golden_head.clone());
    sd.insert("head.bias".into(), golden_bias.clone());
    sd.insert(
        "blocks.0.mlp.fc1.weight".into(),
        empty(vec![1_000_000_000_000_000, 0]),
    );
    sd.insert("blocks.0.mlp.fc1.bias".into(), empty(vec![0]));
    sd.insert(
        "blocks.0.mlp.fc2.weight".into(),
        empty(vec![0, 1_000_000_000_000_000]),
    );
    write_safetensors(&weights.join("model.safetensors"), &sd, None).unwrap();
    let (code, _, err) = vitrs(&["logits", "--pretrained", w, "--input", p, "--output", l]);
    assert_eq!(code, 1, "{err}");
    assert_one_line_error(&err, "mlp-dim 1000000000000000");

    // No images of 400000×400000 pixels: the model for them would not fit.
    let huge = [(
        "pixel_values".to_string(),
        empty(vec![0, 3, 400_000, 400_000]),
    )]
    .into();
    write_safetensors(&pixels, &huge, None).unwrap();
    let fixture = common::fixture("timm-vit-tiny");
    let f = fixture.to_str().unwrap();
    let (code, _, err) = vitrs(&["logits", "--pretrained", f, "--input", p, "--output", l]);
    assert_eq!(code, 1, "{err}");
    assert_one_line_error(&err, "on 10000000001 tokens");
    assert!(!logits.exists());
}

#[test]
fn devices_lists_what_this_build_has() {
    let (code, stdout, err) = vitrs(&["devices"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("flex") && l.contains("burn-flex on the CPU")),
        "{stdout}"
    );
    assert!(stdout.contains("compiled in: flex"), "{stdout}");
}

/// A finished `compare-finetune` is never written into (issue 23, case 1): a second one into
/// its folder is refused before any method's .toml is rewritten; `--overwrite` moves it aside.
#[test]
fn a_finished_comparison_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let o = out.to_str().unwrap();
    let mut args = vec![
        "compare-finetune",
        "--methods",
        "full,lora",
        "--synthetic-size",
        "64",
    ];
    args.extend(TINY.split(' '));
    args.extend(["--epochs", "1", "--warmup-epochs", "0", "--out-dir", o]);
    let (code, _, err) = vitrs(&args);
    assert_eq!(code, 0, "{err}");
    let toml = out.join("full.toml");
    let before = std::fs::read(&toml).unwrap();
    std::fs::write(&toml, b"# the first comparison's record\n").unwrap();
    let mut again = args.clone();
    again.extend(["--lr", "0.5"]);
    let (code, _, err) = vitrs(&again);
    assert_eq!(code, 1, "{err}");
    assert_one_line_error(
        &err,
        "already holds a run: give another --out-dir, or add --overwrite",
    );
    assert_eq!(
        std::fs::read(&toml).unwrap(),
        b"# the first comparison's record\n"
    );
    again.push("--overwrite");
    let (code, _, err) = vitrs(&again);
    assert_eq!(code, 0, "{err}");
    let aside = dir.path().join("cmp.replaced-1");
    assert_eq!(
        std::fs::read(aside.join("full.toml")).unwrap(),
        b"# the first comparison's record\n"
    );
    assert!(aside.join("compare.json").is_file() && out.join("compare.json").is_file());
    assert_ne!(
        std::fs::read(&toml).unwrap(),
        before,
        "the new comparison has its own lr"
    );
}

/// `vitrs export` never writes timm's or HF's model.safetensors and config.json over a
/// vitrs checkpoint (an --out that is the checkpoint itself): one line, nothing touched.
#[test]
fn export_never_overwrites_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, _, err) = tiny_train(&out, "1", &["--warmup-epochs", "0"]);
    assert_eq!(code, 0, "{err}");
    let best = out.join("checkpoints/best_model");
    let before: Vec<Vec<u8>> = ["model.safetensors", "config.json"]
        .iter()
        .map(|f| std::fs::read(best.join(f)).unwrap())
        .collect();
    let b = best.to_str().unwrap();
    for format in ["timm", "hf"] {
        let (code, _, err) = vitrs(&["export", "--checkpoint", b, "--format", format, "--out", b]);
        assert_eq!(code, 1, "{format}: {err}");
        assert_one_line_error(
            &err,
            "holds a vitrs checkpoint, which the export would overwrite",
        );
    }
    for (f, was) in ["model.safetensors", "config.json"].iter().zip(&before) {
        assert_eq!(&std::fs::read(best.join(f)).unwrap(), was, "{f} changed");
    }
    let elsewhere = dir.path().join("timm");
    let e = elsewhere.to_str().unwrap();
    let (code, _, err) = vitrs(&["export", "--checkpoint", b, "--format", "timm", "--out", e]);
    assert_eq!(code, 0, "{err}");
}
