//! LoRA against HF PEFT: the adapter PEFT wrote for the timm fixture loads and reproduces its
//! logits, merges into PEFT's `merge_and_unload()` weights, and a LoRA run's checkpoints are
//! PEFT adapters that `eval`, `logits` and `export` take back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use vitrs::cli::run::logits;
use vitrs::model::io::{HostTensor, read_safetensors};
use vitrs::model::lora;
use vitrs::train::checkpoint::load_pretrained;

mod common;
use common::{fixture, max_abs, vitrs};

fn golden() -> BTreeMap<String, HostTensor> {
    read_safetensors(&fixture("peft-lora-timm").join("golden.safetensors")).unwrap()
}

#[test]
fn peft_adapter_reproduces_peft_logits_and_merges_like_merge_and_unload() {
    let g = golden();
    let adapter = lora::read_peft(&fixture("peft-lora-timm")).unwrap();
    assert_eq!(adapter.config.rank, 4);
    assert_eq!(adapter.config.scaling(), 2.0);
    assert_eq!(adapter.config.modules_to_save, vec!["head".to_string()]);
    let base = load_pretrained(fixture("timm-vit-tiny").to_str().unwrap()).unwrap();
    // The base alone gives PEFT's `logits_base`.
    let out = logits(base.clone(), &g["pixel_values"], None, &Device::flex()).unwrap();
    let d = max_abs(&out["logits"], &g["logits_base"]);
    assert!(d <= 1e-4, "base: {d}");
    // Unmerged: the adapter on the base model, as PEFT runs it.
    let device = Device::flex();
    let model = lora::apply_adapter(
        base.build(0, &device).unwrap().into_vit().unwrap(),
        &adapter,
        &device,
    )
    .unwrap();
    let x = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(g["pixel_values"].data.clone(), [2, 3, 32, 32]),
        &device,
    );
    let y = model.forward(x, &vitrs::model::layers::Ctx::eval());
    let y = HostTensor::from_tensor(y.reshape([20]), &[2, 10]);
    let d = max_abs(&y, &g["logits"]);
    assert!(d <= 1e-4, "unmerged adapter: {d}");
    // Merged: equal to PEFT's merged state dict, and the same logits.
    let mut merged = base.clone();
    merged.merge_adapter(&adapter).unwrap();
    let reference =
        read_safetensors(&fixture("peft-lora-timm").join("merged.safetensors")).unwrap();
    assert_eq!(
        merged.weights.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>()
    );
    for (k, v) in &reference {
        let d = max_abs(&merged.weights[k], v);
        assert!(d <= 1e-5, "merged {k}: {d}");
    }
    let out = logits(merged, &g["pixel_values"], None, &device).unwrap();
    let d = max_abs(&out["logits"], &g["logits"]);
    assert!(d <= 1e-4, "merged: {d}");
}

#[test]
fn logits_and_export_take_a_peft_adapter_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("logits.safetensors");
    let input = fixture("peft-lora-timm").join("golden.safetensors");
    let (code, _, err) = vitrs(&[
        "logits",
        "--pretrained",
        fixture("timm-vit-tiny").to_str().unwrap(),
        "--adapter",
        fixture("peft-lora-timm").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let got = read_safetensors(&out).unwrap();
    assert!(max_abs(&got["logits"], &golden()["logits"]) <= 1e-4);

    let exported = tmp.path().join("merged");
    let args = |merge: bool| {
        let mut a = vec![
            "export".to_string(),
            "--pretrained".into(),
            fixture("timm-vit-tiny").to_string_lossy().to_string(),
            "--adapter".into(),
            fixture("peft-lora-timm").to_string_lossy().to_string(),
            "--format".into(),
            "timm".into(),
            "--out".into(),
            exported.to_string_lossy().to_string(),
        ];
        if merge {
            a.push("--merge".into());
        }
        a
    };
    let (code, _, err) = vitrs(&args(false).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1);
    assert!(err.contains("--merge"), "{err}");
    let (code, _, err) = vitrs(&args(true).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let written = read_safetensors(&exported.join("model.safetensors")).unwrap();
    let reference =
        read_safetensors(&fixture("peft-lora-timm").join("merged.safetensors")).unwrap();
    for (k, v) in &reference {
        assert!(max_abs(&written[k], v) <= 1e-5, "{k}");
    }
    assert!(exported.join("config.json").is_file());
}

#[test]
fn an_adapter_for_another_base_is_refused() {
    // A base of another width: the adapter's factors do not fit, and the error says so.
    let adapter = lora::read_peft(&fixture("peft-lora-timm")).unwrap();
    let device = Device::flex();
    let other = vitrs::model::VitConfig::with_shape(32, 4, 3, 10, [64, 2, 4, 128]);
    let other = vitrs::model::VisionTransformer::new(&other, 0, &device).unwrap();
    let e = lora::apply_adapter(other, &adapter, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("does not fit") && e.contains("blocks.0.attn.qkv.lora_A.weight"),
        "{e}"
    );
    // A broken adapter config is one clear error.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::copy(fixture("peft-lora-timm").join(f), tmp.path().join(f)).unwrap();
    }
    let cfg_path = tmp.path().join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    v["r"] = 0.into();
    std::fs::write(&cfg_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = lora::read_peft(tmp.path()).err().unwrap().to_string();
    assert!(e.contains("rank must be ≥ 1"), "{e}");
    v["r"] = 4.into();
    v["target_modules"] = serde_json::json!(["to_q"]);
    std::fs::write(&cfg_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = lora::read_peft(tmp.path()).err().unwrap().to_string();
    assert!(e.contains("unknown LoRA target \"to_q\""), "{e}");
}

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "256",
        "--img-size",
        "16",
        "--patch-size",
        "4",
        "--embed-dim",
        "32",
        "--depth",
        "2",
        "--num-heads",
        "2",
        "--mlp-dim",
        "64",
        "--batch-size",
        "32",
        "--warmup-epochs",
        "0",
        "--lr",
        "3e-3",
        "--quiet",
        "--out-dir",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A LoRA run from a pretrained vitrs checkpoint: its checkpoints are PEFT adapters pointing at
/// the base by sha256; eval merges them back; resume continues; a changed base is refused.
#[test]
fn a_lora_run_writes_peft_checkpoints_that_eval_and_resume_use() {
    let tmp = tempfile::tempdir().unwrap();
    let pre = tmp.path().join("pre");
    let (code, _, err) = vitrs(&train_args(
        pre.to_str().unwrap(),
        &["--epochs", "1", "--classes", "0-4"],
    ));
    assert_eq!(code, 0, "{err}");
    let base_ckpt = pre.join("checkpoints/last");
    let run = tmp.path().join("lora");
    let base_spec = base_ckpt.to_str().unwrap();
    let lora_flags = [
        "--epochs",
        "2",
        "--classes",
        "5-9",
        "--pretrained",
        base_spec,
        "--reset-head",
        "--adapter",
        "lora",
        "--lora-rank",
        "4",
        "--lora-targets",
        "qkv,fc2",
    ];
    let (code, _, err) = vitrs(&train_args(run.to_str().unwrap(), &lora_flags));
    assert_eq!(code, 0, "{err}");
    let last = run.join("checkpoints/last");
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "base.json",
        "optimizer.safetensors",
    ] {
        assert!(last.join(f).is_file(), "{f}");
    }
    assert!(!last.join("model.safetensors").exists());
    let cfg = json(&last.join("adapter_config.json"));
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["target_modules"], serde_json::json!(["qkv", "fc2"]));
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["head"]));
    let adapter = read_safetensors(&last.join("adapter_model.safetensors")).unwrap();
    // Adapters on qkv and fc2 of 2 blocks (A and B each) plus the head's weight and bias.
    assert_eq!(adapter.len(), 2 * 2 * 2 + 2, "{:?}", adapter.keys());
    assert_eq!(adapter["base_model.model.head.weight"].shape, [5, 32]);
    // The optimizer holds state for the trained parameters only.
    let opt = read_safetensors(&last.join("optimizer.safetensors")).unwrap();
    assert_eq!(opt.len(), 2 * adapter.len());
    let summary = json(&run.join("summary.json"));
    let r = 4;
    let expected = 2 * (r * (32 + 96) + r * (64 + 32)) + 32 * 5 + 5;
    assert_eq!(summary["trainable_params"], expected);

    // eval of the adapter checkpoint = the run's final evaluation.
    let (code, out, err) = vitrs(&["eval", "--checkpoint", last.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let ev: serde_json::Value = serde_json::from_str(&out).unwrap();
    let final_acc = json(&run.join("eval.json"))["acc"].as_f64().unwrap();
    let best = run.join("checkpoints/best_model");
    let (_, out_best, _) = vitrs(&["eval", "--checkpoint", best.to_str().unwrap(), "--json"]);
    let best_acc = serde_json::from_str::<serde_json::Value>(&out_best).unwrap()["acc"]
        .as_f64()
        .unwrap();
    // The run's final evaluation is of the restored best weights.
    assert!(
        (best_acc - final_acc).abs() < 1e-9,
        "best {best_acc} vs {final_acc}"
    );
    assert!((0.0..=1.0).contains(&ev["acc"].as_f64().unwrap()));

    // eval applies a PEFT adapter to a checkpoint: this run's on its own base works, the PEFT
    // fixture's (made for a 48-wide model) is refused by name.
    let (code, _, err) = vitrs(&[
        "eval",
        "--checkpoint",
        base_spec,
        "--adapter-from",
        last.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = vitrs(&[
        "eval",
        "--checkpoint",
        base_spec,
        "--adapter-from",
        fixture("peft-lora-timm").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("does not fit this base model"), "{err}");

    // Resuming the finished run with more epochs continues from the adapter checkpoint.
    let mut resume = train_args(run.to_str().unwrap(), &["--epochs", "3"]);
    resume.extend_from_slice(&["--resume-from", last.to_str().unwrap()]);
    let (code, _, err) = vitrs(&resume);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert_eq!(json(&last.join("training_state.json"))["epoch"], 3);

    // A changed base file is refused by name.
    let base = json(&last.join("base.json"));
    let base_file = PathBuf::from(base["path"].as_str().unwrap());
    let mut bytes = std::fs::read(&base_file).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x55;
    std::fs::write(&base_file, bytes).unwrap();
    let (code, _, err) = vitrs(&["eval", "--checkpoint", last.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is not the base this adapter was trained on"),
        "{err}"
    );
}

/// Issue 24: a LoRA fine-tune from each wave-3 family (DINOv2 with LayerScale, registers with
/// average pooling and fc_norm, CLIP with norm_pre and QuickGELU, HF DINOv2 and DeiT with
/// teacher, a sharded HF ViT) runs end to end from the command line, writes PEFT adapters and
/// evaluates; SparseLoRA runs where its GELU estimator applies and is refused, naming the way
/// on, where it does not.
#[test]
fn a_lora_fine_tune_runs_from_every_new_family() {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "timm-dinov2-small",
        "timm-reg4-gap",
        "timm-clip-quickgelu",
        "hf-dinov2",
        "hf-deit-distilled",
        "hf-vit-sharded",
    ] {
        let base = common::fixture(name);
        let out = tmp.path().join(name);
        let args = [
            "train",
            "--pretrained",
            base.to_str().unwrap(),
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "64",
            "--batch-size",
            "16",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--adapter",
            "lora",
            "--quiet",
            "--out-dir",
            out.to_str().unwrap(),
        ];
        let (code, _, err) = vitrs(&args);
        assert_eq!(code, 0, "{name}: {err}");
        let best = out.join("checkpoints/best_model");
        for f in ["adapter_model.safetensors", "adapter_config.json"] {
            assert!(best.join(f).is_file(), "{name}: no {f}");
        }
        let (code, stdout, err) = vitrs(&[
            "eval",
            "--checkpoint",
            best.to_str().unwrap(),
            "--dataset",
            "synthetic",
        ]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(stdout.contains("overall"), "{name}: {stdout}");
        let sparse_out = tmp.path().join(format!("{name}-sparse"));
        let sparse: Vec<&str> = args
            .iter()
            .map(|&a| match a {
                "lora" => "sparselora",
                a if a == out.to_str().unwrap() => sparse_out.to_str().unwrap(),
                a => a,
            })
            .collect();
        let (code, _, err) = vitrs(&sparse);
        if name == "timm-clip-quickgelu" {
            assert_eq!(code, 1);
            assert!(
                err.contains("SparseLoRA's MLP estimator is built for GELU MLPs"),
                "{err}"
            );
            assert!(err.contains("--sparsity 0"), "{err}");
        } else {
            assert_eq!(code, 0, "{name} sparselora: {err}");
        }
    }
}
