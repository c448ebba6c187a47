//! The GPU path on a Vulkan device (issue 25): what real GPUs run (burn's wgpu/cubecl backend,
//! op by op, SPIR-V shaders), on whatever Vulkan adapter the machine has — in CI, Mesa's
//! lavapipe, a Vulkan 1.4 device on the CPU. Built and run only with `--features vulkan`.
#![cfg(feature = "vulkan")]

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use vitrs::config::Config;
use vitrs::model::io::{HostTensor, read_safetensors};
use vitrs::train::{self, Summary};

mod common;
use common::{fixture, max_abs, vitrs};

fn vulkan() -> Device {
    vitrs::device::resolve(Some("vulkan"))
        .expect("a Vulkan adapter (lavapipe: mesa-vulkan-drivers)")
}

fn golden(name: &str) -> BTreeMap<String, HostTensor> {
    read_safetensors(&fixture(name).join("golden.safetensors")).unwrap()
}

/// Every golden fixture's logits on the Vulkan device, within the fixtures' 1e-4.
#[test]
fn golden_fixtures_on_vulkan() {
    let device = vulkan();
    for name in [
        "timm-vit-tiny",
        "hf-vit-tiny",
        "deit-tiny-distilled",
        "timm-dinov2-small",
        "timm-reg4-gap",
        "timm-clip-quickgelu",
        "hf-deit-distilled",
        "hf-dinov2",
        "timm-resnet-tiny",
    ] {
        let g = golden(name);
        let p = train::checkpoint::load_pretrained(fixture(name).to_str().unwrap()).unwrap();
        let out = vitrs::cli::run::logits(p, &g["pixel_values"], None, &device).unwrap();
        let d = max_abs(&out["logits"], &g["logits"]);
        assert!(d <= 1e-4, "{name} on vulkan: max abs difference {d}");
    }
}

/// `common::tiny_config` on 256 images, on `device`.
fn tiny(out: &Path, device: &str) -> Config {
    let mut c = common::tiny_config(out);
    c.data.synthetic_size = 256;
    c.run.device = Some(device.into());
    c
}

fn run(cfg: Config) -> Summary {
    train::train(train::prepare(cfg).expect("prepare")).expect("train")
}

fn weights(dir: &Path) -> BTreeMap<String, HostTensor> {
    read_safetensors(&dir.join("checkpoints/last/model.safetensors")).unwrap()
}

/// Two epochs (16 steps) of f32 training on vulkan and on flex: the same data order, masks and
/// initial weights (all drawn on the host), so only the kernels' rounding differs. After 16
/// AdamW steps the weights agree within 1e-3 and the validation losses within 1e-3 relative.
#[test]
fn f32_training_on_vulkan_follows_flex() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("vulkan"), tmp.path().join("flex"));
    let sa = run(tiny(&a, "vulkan"));
    let sb = run(tiny(&b, "flex"));
    let rel = (sa.final_val_loss - sb.final_val_loss).abs() / sb.final_val_loss;
    assert!(
        rel < 1e-3,
        "val loss {} on vulkan, {} on flex",
        sa.final_val_loss,
        sb.final_val_loss
    );
    let (wa, wb) = (weights(&a), weights(&b));
    for (k, v) in &wb {
        let d = max_abs(&wa[k], v);
        assert!(d < 1e-3, "{k}: vulkan and flex differ by {d}");
    }
    assert!(
        sa.best_val_acc > 0.3,
        "vulkan run learnt nothing: {}",
        sa.best_val_acc
    );
}

/// A checkpoint written on vulkan loads on flex with identical weights, and a run resumed
/// there on flex continues it (devices are interchangeable through checkpoints).
#[test]
fn a_vulkan_checkpoint_resumes_on_flex() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut cfg = tiny(&dir, "vulkan");
    cfg.optim.epochs = 1;
    run(cfg);
    let last = dir.join("checkpoints/last");
    let ck = train::checkpoint::load(&last).unwrap();
    let on_flex = vitrs::model::Model::new(&ck.vit_config, 0, &Device::flex()).unwrap();
    let on_flex = vitrs::model::io::load_state_dict(on_flex, &ck.model, &Device::flex()).unwrap();
    let back = vitrs::model::io::state_dict(&on_flex);
    for (k, v) in &ck.model {
        assert_eq!(&back[k], v, "{k} changed on the way to flex");
    }
    let mut resume = tiny(&dir, "flex");
    resume.run.resume_from = Some(last);
    resume.run.out_dir = None;
    let s = run(resume);
    assert_eq!(s.epochs_completed, 2);
}

/// LoRA, SparseLoRA, a CNN teacher and continual learning with replay run on the device from
/// the command line.
#[test]
fn lora_sparselora_distillation_and_continual_on_vulkan() {
    let tmp = tempfile::tempdir().unwrap();
    // `command` with its own flags, on 64 synthetic images on the device, into `tmp/name`.
    let run_ok = |name: &str, command: &[&str]| {
        let out = tmp.path().join(name);
        let on_vulkan = "--dataset synthetic --synthetic-size 64 --batch-size 16 --warmup-epochs 0 --device vulkan --quiet";
        let mut args: Vec<&str> = command.to_vec();
        args.extend(on_vulkan.split(' '));
        args.extend(["--out-dir", out.to_str().unwrap()]);
        let (code, _, err) = vitrs(&args);
        assert_eq!(code, 0, "{name}: {err}");
        out
    };
    let base = fixture("timm-vit-tiny");
    let base = base.to_str().unwrap();
    for adapter in ["lora", "sparselora"] {
        run_ok(
            adapter,
            &[
                "train",
                "--pretrained",
                base,
                "--epochs",
                "1",
                "--adapter",
                adapter,
            ],
        );
    }
    let small = "--patch-size 4 --embed-dim 16 --depth 1 --num-heads 2 --mlp-dim 32";
    let teacher = fixture("timm-resnet-tiny");
    let mut distill = vec![
        "train",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--distillation",
        "soft",
    ];
    distill.extend(["--teacher", teacher.to_str().unwrap()]);
    distill.extend(small.split(' '));
    run_ok("distill", &distill);
    let mut continual = vec![
        "continual",
        "--img-size",
        "16",
        "--tasks",
        "2",
        "--epochs-per-task",
        "1",
    ];
    continual.extend(["--strategy", "replay"]);
    continual.extend(small.split(' '));
    let out = run_ok("continual", &continual);
    assert!(out.join("continual.json").is_file());
}

/// Half precision on the device: f16 (with loss scaling) trains and learns; bf16 trains where
/// the device computes in it and is refused in one line where it does not (lavapipe).
#[test]
fn half_precision_on_vulkan() {
    use vitrs::model::precision::Precision;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny(&tmp.path().join("f16"), "vulkan");
    cfg.optim.precision = Precision::F16;
    let s = run(cfg);
    assert!(
        s.best_val_acc > 0.15,
        "f16 on vulkan learnt nothing: {}",
        s.best_val_acc
    );
    let bf16 = burn::tensor::FloatDType::BF16;
    let mut cfg = tiny(&tmp.path().join("bf16"), "vulkan");
    cfg.optim.precision = Precision::Bf16;
    if vulkan().supports_dtype(bf16) {
        assert!(run(cfg).best_val_acc > 0.15);
    } else {
        let e = train::prepare(cfg).err().expect("bf16 refused").to_string();
        assert!(
            e.contains("--precision bf16: this device cannot compute in it"),
            "{e}"
        );
    }
}

/// Gradient checkpointing recomputes activations in the backward pass: the same weights as
/// storing them (within the device's rounding), on the device too.
#[test]
fn gradient_checkpointing_on_vulkan_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("stored"), tmp.path().join("recomputed"));
    let mut cfg = tiny(&a, "vulkan");
    cfg.optim.epochs = 1;
    run(cfg);
    let mut cfg = tiny(&b, "vulkan");
    cfg.optim.epochs = 1;
    cfg.run.grad_checkpointing = true;
    run(cfg);
    let (wa, wb) = (weights(&a), weights(&b));
    for (k, v) in &wa {
        let d = max_abs(&wb[k], v);
        assert!(d < 1e-5, "{k}: checkpointing changed it by {d}");
    }
}

/// `vitrs devices` lists the Vulkan adapters first, and a device that is not there is one line
/// naming what is (no panic, no backtrace, none of Mesa's XDG_RUNTIME_DIR noise).
#[test]
fn devices_are_listed_and_a_missing_one_is_one_line() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vitrs"));
    let out = cmd
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.lines().next().unwrap().starts_with("vulkan:0"),
        "{stdout}"
    );
    assert!(stdout.contains("compiled in: vulkan, flex"), "{stdout}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("XDG_RUNTIME_DIR"));
    let g = fixture("timm-vit-tiny");
    let (code, _, err) = vitrs(&[
        "logits",
        "--device",
        "vulkan:99",
        "--pretrained",
        g.to_str().unwrap(),
        "--input",
        g.join("golden.safetensors").to_str().unwrap(),
        "--output",
        "/nonexistent/x",
    ]);
    assert_eq!(code, 1, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("--device vulkan:99: there is no Vulkan adapter 99; found vulkan:0"),
        "{err}"
    );
}
