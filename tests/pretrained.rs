//! Pretrained weights: the golden fixtures written by HF transformers and timm, export round
//! trips, position-embedding resampling against hand-written references, fine-tuning end to
//! end, and the errors a user can run into.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use vitrs::config::{Config, DatasetKind};
use vitrs::model::io::{HostTensor, read_safetensors};
use vitrs::model::layers::Ctx;
use vitrs::model::params::{gradients, set_trainable};
use vitrs::train;
use vitrs::weights::export::{ExportFormat, export};
use vitrs::weights::hub::Repo;
use vitrs::weights::resample::{Resample, resample_pos_embed};
use vitrs::weights::{self, Origin, Pretrained, is_head};

mod common;
use common::{fixture, max_abs, vitrs_env as vitrs};

fn golden(name: &str) -> BTreeMap<String, HostTensor> {
    read_safetensors(&fixture(name).join("golden.safetensors")).unwrap()
}

fn load(p: &Path) -> Pretrained {
    train::checkpoint::load_pretrained(p.to_str().unwrap()).unwrap()
}

fn logits_of(p: Pretrained, x: &HostTensor) -> BTreeMap<String, HostTensor> {
    vitrs::cli::run::logits(p, x, None, &Device::flex()).unwrap()
}

fn check_golden(name: &str, keys: &[&str]) {
    let g = golden(name);
    let out = logits_of(load(&fixture(name)), &g["pixel_values"]);
    for k in keys {
        let d = max_abs(&out[*k], &g[*k]);
        assert!(d <= 1e-4, "{name} {k}: max abs difference {d}");
    }
}

#[test]
fn hf_fixture_reproduces_transformers_logits() {
    let p = load(&fixture("hf-vit-tiny"));
    assert_eq!(p.origin, Origin::Hf);
    assert_eq!(p.config.layer_norm_eps, 1e-12);
    assert_eq!(
        (p.config.embed_dim, p.config.depth, p.config.num_heads),
        (48, 2, 3)
    );
    assert_eq!(
        (p.config.mlp_dim, p.config.img_size, p.config.num_classes),
        (96, 32, 10)
    );
    check_golden("hf-vit-tiny", &["logits"]);
}

#[test]
fn timm_fixture_reproduces_timm_logits() {
    let p = load(&fixture("timm-vit-tiny"));
    assert_eq!(p.origin, Origin::Timm);
    assert_eq!(p.config.layer_norm_eps, 1e-6);
    assert_eq!((p.config.mlp_dim, p.config.num_heads), (192, 3));
    check_golden("timm-vit-tiny", &["logits"]);
}

/// Wave 3: the families people fine-tune today, as timm's `save_for_hf` and transformers'
/// `save_pretrained` wrote them. Each name's implied architecture (timm's registry), read with
/// only what its config.json and tensors say.
#[test]
fn wave_3_fixtures_reproduce_their_librarys_logits() {
    use vitrs::model::{Act, MlpKind, Pool};
    let dinov2 = load(&fixture("timm-dinov2-small")).config;
    assert_eq!(
        (
            dinov2.patch_size,
            dinov2.num_heads,
            dinov2.layer_scale.is_some()
        ),
        (14, 6, true)
    );
    let gap = load(&fixture("timm-reg4-gap")).config;
    assert_eq!(
        (gap.class_token, gap.reg_tokens, gap.no_embed_class),
        (false, 4, true)
    );
    assert_eq!(
        (gap.pool, gap.fc_norm, gap.num_heads, gap.mlp_dim),
        (Pool::Avg, true, 5, 224)
    );
    let clip = load(&fixture("timm-clip-quickgelu")).config;
    assert_eq!(
        (clip.act, clip.pre_norm, clip.layer_norm_eps),
        (Act::QuickGelu, true, 1e-5)
    );
    assert_eq!((clip.num_heads, clip.patch_bias), (12, false));
    let hf_dino = load(&fixture("hf-dinov2"));
    assert_eq!(hf_dino.origin, Origin::Hf);
    assert_eq!(
        (hf_dino.config.pool, hf_dino.config.mlp),
        (Pool::ClsMean, MlpKind::Mlp)
    );
    let deit = load(&fixture("hf-deit-distilled")).config;
    assert!(deit.dist_token && deit.layer_norm_eps == 1e-12);
    for name in [
        "timm-dinov2-small",
        "timm-reg4-gap",
        "timm-clip-quickgelu",
        "hf-vit-sharded",
        "hf-deit-distilled",
        "hf-dinov2",
    ] {
        check_golden(name, &["logits"]);
    }
}

/// A DINOv2 (class + mean pooling: the head takes twice the width) with its head replaced
/// builds: the check that the weights fill the model counts the wider head as the head.
#[test]
fn a_class_and_mean_model_with_a_fresh_head_builds() {
    let mut p = load(&fixture("hf-dinov2"));
    p.replace_head(7);
    let model = p.build(0, &Device::flex()).unwrap();
    let x = HostTensor {
        shape: vec![1, 3, 28, 28],
        data: vec![0.1; 3 * 28 * 28],
    };
    assert_eq!(
        model
            .forward(
                Tensor::from_data(TensorData::new(x.data, [1, 3, 28, 28]), &Device::flex()),
                &Ctx::eval()
            )
            .dims(),
        [1, 7]
    );
}

/// A model whose position embedding skips the prefix tokens (registers, no class token)
/// resamples all its rows as patches: timm's `num_prefix_tokens=0` for `no_embed_class`
/// (tests/export_check.py compares the logits with timm's at 48×48: 9e-8).
#[test]
fn register_models_resample_only_patch_rows() {
    let mut p = load(&fixture("timm-reg4-gap"));
    assert_eq!(p.weights["pos_embed"].shape, vec![1, 4, 40]);
    p.set_img_size(48).unwrap();
    assert_eq!(p.weights["pos_embed"].shape, vec![1, 9, 40]);
    let x = HostTensor {
        shape: vec![1, 3, 48, 48],
        data: vec![0.1; 3 * 48 * 48],
    };
    assert!(
        logits_of(p, &x)["logits"]
            .data
            .iter()
            .all(|v| v.is_finite())
    );
}

/// The DINOv2 fixture at 42×42 gives what timm 1.0.31 gives (checked by
/// tests/export_check.py where timm is installed: 4e-8); the fixture's `logits_resampled` is
/// not that (timm's own `checkpoint_filter_fn`, `set_input_size` and `dynamic_img_size` all
/// differ from it by 0.43, whatever the interpolation), so it is not the reference here. What
/// is checked: the resampled model runs, keeps the prefix token and differs from 28×28.
#[test]
fn dinov2_resamples_its_patch_positions_and_keeps_the_class_token() {
    let g = golden("timm-dinov2-small");
    let mut p = load(&fixture("timm-dinov2-small"));
    let before = p.weights["pos_embed"].clone();
    p.set_img_size(42).unwrap();
    let after = &p.weights["pos_embed"];
    assert_eq!(after.shape, vec![1, 1 + 9, 48]);
    assert_eq!(
        after.data[..48],
        before.data[..48],
        "the class token's row is kept"
    );
    let out = logits_of(p, &g["pixel_values_resampled"]);
    assert_eq!(out["logits"].shape, vec![2, 5]);
    assert!(out["logits"].data.iter().all(|v| v.is_finite()));
}

/// timm's ResNet (BasicBlock, ImageNet stem with max-pool, randomized running statistics):
/// the architecture is read from the shapes, BatchNorm runs on the running statistics.
#[test]
fn timm_resnet_fixture_reproduces_timm_logits() {
    use vitrs::model::cnn::CnnConfig;
    let p = load(&fixture("timm-resnet-tiny"));
    assert_eq!(
        p.config.cnn,
        Some(CnnConfig::Resnet {
            bottleneck: false,
            layers: vec![1, 1, 1, 1],
            widths: vec![8, 16, 32, 64],
            // timm's plain stem is 64 wide whatever `stem_width` says (that only sizes deep
            // stems): the shapes are the truth.
            stem_width: 64,
            imagenet_stem: true,
        })
    );
    assert_eq!((p.config.num_classes, p.config.in_chans), (10, 3));
    check_golden("timm-resnet-tiny", &["logits"]);
    // The same weights in train mode (batch statistics) give other logits: the running
    // statistics are really used.
    let g = golden("timm-resnet-tiny");
    let x = &g["pixel_values"];
    let device = Device::flex();
    let m = p.build(0, &device).unwrap();
    let xt = Tensor::<4>::from_data(TensorData::new(x.data.clone(), [2, 3, 32, 32]), &device);
    let y: Vec<f32> = m
        .forward(xt, &Ctx::train(0, &[0]))
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap();
    let d = y
        .iter()
        .zip(&g["logits"].data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d > 1e-2, "train-mode logits equal eval-mode ones ({d})");
}

#[test]
fn deit_distilled_fixture_reproduces_both_heads_and_their_mean() {
    let p = load(&fixture("deit-tiny-distilled"));
    assert!(p.config.dist_token);
    check_golden(
        "deit-tiny-distilled",
        &["logits_cls", "logits_dist", "logits"],
    );
}

/// `vitrs export` → load gives bit-identical logits, for both formats and both sources.
#[test]
fn export_then_load_gives_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    // Each family in the formats that hold it (tests/export_check.py loads the same exports
    // in timm and transformers themselves).
    let both = &[ExportFormat::Timm, ExportFormat::Hf][..];
    for (src, formats) in [
        ("timm-vit-tiny", both),
        ("hf-vit-tiny", both),
        ("hf-deit-distilled", both),
        ("timm-dinov2-small", &[ExportFormat::Timm][..]),
        ("timm-reg4-gap", &[ExportFormat::Timm]),
        ("timm-clip-quickgelu", &[ExportFormat::Timm]),
        ("hf-dinov2", &[ExportFormat::Hf]),
    ] {
        let x = &golden(src)["pixel_values"];
        let original = logits_of(load(&fixture(src)), x);
        for &format in formats {
            let out = tmp.path().join(format!("{src}-{format:?}"));
            export(&load(&fixture(src)), format, &out).unwrap();
            let back = load(&out);
            assert_eq!(
                back.origin,
                match format {
                    ExportFormat::Timm => Origin::Timm,
                    _ => Origin::Hf,
                }
            );
            let again = logits_of(back, x);
            assert_eq!(
                again["logits"], original["logits"],
                "{src} exported as {format:?}"
            );
        }
    }
}

/// HF → timm → HF gives the very tensors transformers wrote; the timm export's names are
/// exactly the timm fixture's.
#[test]
fn hf_exported_as_timm_and_back_is_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fixture("hf-vit-tiny");
    let as_timm = tmp.path().join("timm");
    let as_hf = tmp.path().join("hf");
    export(&load(&hf), ExportFormat::Timm, &as_timm).unwrap();
    export(&load(&as_timm), ExportFormat::Hf, &as_hf).unwrap();
    let original = read_safetensors(&hf.join("model.safetensors")).unwrap();
    let round = read_safetensors(&as_hf.join("model.safetensors")).unwrap();
    assert_eq!(round, original);
    let timm_names: Vec<String> = read_safetensors(&as_timm.join("model.safetensors"))
        .unwrap()
        .into_keys()
        .collect();
    let fixture_names: Vec<String> =
        read_safetensors(&fixture("timm-vit-tiny").join("model.safetensors"))
            .unwrap()
            .into_keys()
            .collect();
    assert_eq!(timm_names, fixture_names);
    // The HF config written back describes the same model.
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(as_hf.join("config.json")).unwrap()).unwrap();
    let orig: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    for k in [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "image_size",
        "patch_size",
        "num_channels",
        "qkv_bias",
        "layer_norm_eps",
        "hidden_act",
        "model_type",
        "id2label",
    ] {
        assert_eq!(cfg[k], orig[k], "{k}");
    }
}

// ---- position-embedding resampling, against references written out here ----

/// Keys' cubic convolution kernel with parameter `a`.
fn keys_cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        (a + 2.0) * x * x * x - (a + 3.0) * x * x + 1.0
    } else if x < 2.0 {
        a * x * x * x - 5.0 * a * x * x + 8.0 * a * x - 4.0 * a
    } else {
        0.0
    }
}

/// a = −0.5: PyTorch's antialiased bicubic, PIL's BICUBIC.
fn cubic_half(x: f64) -> f64 {
    keys_cubic(x, -0.5)
}

/// a = −0.75: PyTorch's plain bicubic.
fn cubic_three_quarters(x: f64) -> f64 {
    keys_cubic(x, -0.75)
}

/// 1-D weights of output `i` over all `n_in` inputs, as a dense row.
fn reference_row(n_in: usize, n_out: usize, i: usize, antialias: bool) -> Vec<f64> {
    let scale = n_in as f64 / n_out as f64;
    let mut row = vec![0.0; n_in];
    if antialias {
        // Upsampling only: a cubic convolution centred on the output pixel's centre in input
        // coordinates, restricted to the image and renormalised.
        let c = (i as f64 + 0.5) * scale;
        for (j, w) in row.iter_mut().enumerate() {
            *w = cubic_half(j as f64 + 0.5 - c);
        }
        let s: f64 = row.iter().sum();
        row.iter_mut().for_each(|w| *w /= s);
    } else {
        // Cubic convolution at source x = (i + ½)·scale − ½, edge pixels repeated outside.
        let x = (i as f64 + 0.5) * scale - 0.5;
        let base = x.floor() as i64;
        for j in base - 1..=base + 2 {
            let clamped = j.clamp(0, n_in as i64 - 1) as usize;
            row[clamped] += cubic_three_quarters(j as f64 - x);
        }
    }
    row
}

/// The resampled `pos_embed`, as a plain double sum over the grid.
fn reference_pos_embed(pe: &HostTensor, prefix: usize, new: usize, antialias: bool) -> HostTensor {
    let dim = pe.shape[2];
    let old = ((pe.shape[1] - prefix) as f64).sqrt() as usize;
    let mut data = pe.data[..prefix * dim].to_vec();
    for oy in 0..new {
        let ry = reference_row(old, new, oy, antialias);
        for ox in 0..new {
            let rx = reference_row(old, new, ox, antialias);
            for c in 0..dim {
                let mut acc = 0.0;
                for (iy, wy) in ry.iter().enumerate() {
                    for (ix, wx) in rx.iter().enumerate() {
                        let v = pe.data[(prefix + iy * old + ix) * dim + c] as f64;
                        acc += wy * wx * v;
                    }
                }
                data.push(acc as f32);
            }
        }
    }
    HostTensor {
        shape: vec![1, prefix + new * new, dim],
        data,
    }
}

/// A 2×2 grid to 3×3 by hand: the centre of the output is the mean of the four inputs under
/// both kernels (by symmetry), and the corners follow the written-out weights.
#[test]
fn tiny_grid_resampling_matches_hand_computed_values() {
    let pe = HostTensor {
        shape: vec![1, 5, 1],
        data: vec![9.0, 1.0, 2.0, 3.0, 4.0],
    };
    for (method, antialias) in [(Resample::Antialias, true), (Resample::Bicubic, false)] {
        let got = resample_pos_embed(&pe, 1, (3, 3), method).unwrap();
        assert_eq!(got.data[0], 9.0, "class token kept");
        assert!((got.data[1 + 4] - 2.5).abs() < 1e-6, "{method:?} centre");
        let want = reference_pos_embed(&pe, 1, 3, antialias);
        assert!(
            max_abs(&got, &want) < 1e-6,
            "{method:?}: {got:?} vs {want:?}"
        );
    }
    // Antialiased corner by hand: weights ∝ K(1/6), K(7/6) along each axis.
    let (a, b) = (cubic_half(1.0 / 6.0), cubic_half(7.0 / 6.0));
    let (wa, wb) = (a / (a + b), b / (a + b));
    let corner = wa * wa * 1.0 + wa * wb * 2.0 + wb * wa * 3.0 + wb * wb * 4.0;
    let got = resample_pos_embed(&pe, 1, (3, 3), Resample::Antialias).unwrap();
    assert!((got.data[1] as f64 - corner).abs() < 1e-6);
    // Identity when the size does not change.
    assert_eq!(
        resample_pos_embed(&pe, 1, (2, 2), Resample::Bicubic).unwrap(),
        pe
    );
}

/// A 48×48 input through `logits` on 32×32 checkpoints (8×8 → 12×12 patch grid) equals the
/// model whose position embeddings are the hand-computed reference: antialiased bicubic for
/// timm weights (timm's resample_abs_pos_embed), plain bicubic for HF weights (HF's
/// interpolate_pos_encoding).
#[test]
fn larger_input_resamples_position_embeddings_like_the_source_library() {
    let device = Device::flex();
    let mut rng = 12345u64;
    let mut next = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((rng >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    let x = HostTensor {
        shape: vec![2, 3, 48, 48],
        data: (0..2 * 3 * 48 * 48).map(|_| next()).collect(),
    };
    for (name, antialias) in [("timm-vit-tiny", true), ("hf-vit-tiny", false)] {
        let p = load(&fixture(name));
        let want_pe = reference_pos_embed(&p.weights["pos_embed"], 1, 12, antialias);
        let mut resampled = p.clone();
        resampled.set_img_size(48).unwrap();
        let d = max_abs(&resampled.weights["pos_embed"], &want_pe);
        assert!(
            d < 1e-6,
            "{name}: pos_embed differs from the reference by {d}"
        );
        // The reference model: the same weights with the reference grid, built at 48.
        let mut reference = p.clone();
        reference.weights.insert("pos_embed".into(), want_pe);
        reference.config.img_size = 48;
        let model = reference.build(0, &device).unwrap();
        let input =
            Tensor::<4>::from_data(TensorData::new(x.data.clone(), [2, 3, 48, 48]), &device);
        let want = model.forward(input, &Ctx::eval());
        let want = HostTensor {
            shape: vec![2, 10],
            data: want
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap(),
        };
        let got = logits_of(p, &x);
        let d = max_abs(&got["logits"], &want);
        assert!(d < 1e-5, "{name}: logits differ from the reference by {d}");
    }
}

// ---- fine-tuning ----

fn finetune_config(out: &Path) -> Config {
    {
        let mut c = Config::default();
        c.data.dataset = DatasetKind::Synthetic;
        c.data.synthetic_size = 64;
        c.model.num_classes = Some(5);
        c.model.pretrained = Some(fixture("timm-vit-tiny").to_string_lossy().into());
        c.optim.epochs = 1;
        c.optim.batch_size = 16;
        c.optim.lr = 1e-3;
        c.optim.warmup_epochs = 0.0;
        c.run.log_every = 1;
        c.run.save_every = 0;
        c.run.patience = 0;
        c.run.quiet = true;
        c.run.out_dir = Some(out.to_path_buf());
        c
    }
}

/// From the timm fixture on synthetic data: head 10 → 5 classes, 32 → 48 pixels (position
/// embeddings resampled), layer-wise LR decay on.
#[test]
fn fine_tuning_from_the_timm_fixture_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = {
        let mut c = finetune_config(dir.path());
        c.model.img_size = Some(48);
        c.optim.layer_decay = 0.75;
        c
    };
    let run = train::prepare(cfg).unwrap();
    assert_eq!(run.vit_config.num_classes, 5);
    assert_eq!(run.vit_config.img_size, 48);
    assert_eq!(run.vit_config.layer_norm_eps, 1e-6);
    let init = run.init_weights.clone().unwrap();
    assert_eq!(init["pos_embed"].shape, vec![1, 1 + 144, 48]);
    assert!(
        !init.contains_key("head.weight"),
        "the 10-class head must go"
    );
    // Pretrained runs normalise like the weights: ImageNet's statistics when they do not say.
    assert_eq!(
        run.config.data.mean.as_deref(),
        Some(&[0.485, 0.456, 0.406][..])
    );
    let s = train::train(run).unwrap();
    assert_eq!(s.epochs_completed, 1);
    assert!(
        s.final_val_loss.is_finite(),
        "val loss {}",
        s.final_val_loss
    );
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["split"] == "train")
        .filter_map(|v| v["loss"].as_f64())
        .collect();
    assert!(
        !losses.is_empty() && losses.iter().all(|l| l.is_finite()),
        "{losses:?}"
    );
    let ck = read_safetensors(&dir.path().join("checkpoints/last/model.safetensors")).unwrap();
    assert_eq!(ck["head.weight"].shape, vec![5, 48]);
    assert_eq!(ck["pos_embed"].shape, vec![1, 145, 48]);
    // The epoch-1 best checkpoint must be readable (its state once held an infinite loss,
    // which JSON writes as null, and restoring the best weights after epoch 2 failed).
    let best = train::checkpoint::load(&dir.path().join("checkpoints/best_model")).unwrap();
    assert!(best.state.unwrap().best_val_loss.is_finite());
}

#[test]
fn freeze_backbone_trains_the_head_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = train::train(
        train::prepare({
            let mut c = finetune_config(dir.path());
            c.peft.freeze_backbone = true;
            c
        })
        .unwrap(),
    )
    .unwrap();
    assert_eq!(s.trainable_params, 48 * 5 + 5);
    let before = read_safetensors(&fixture("timm-vit-tiny").join("model.safetensors")).unwrap();
    let after = read_safetensors(&dir.path().join("checkpoints/last/model.safetensors")).unwrap();
    for (k, v) in &before {
        if !is_head(k) {
            assert_eq!(&after[k], v, "{k} changed although frozen");
        }
    }
    // And a frozen parameter gets no gradient at all.
    let ad = Device::flex().autodiff();
    let mut p = load(&fixture("timm-vit-tiny"));
    p.replace_head(5);
    let model = set_trainable(p.build(0, &ad).unwrap(), is_head);
    let x = Tensor::<4>::ones([1, 3, 32, 32], &ad);
    let grads = model.forward(x, &Ctx::eval()).sum().backward();
    let keys: Vec<String> = gradients(&model, &grads).into_keys().collect();
    assert_eq!(
        keys,
        vec!["head.bias".to_string(), "head.weight".to_string()]
    );
}

// ---- sources and errors ----

/// A hub id resolves through a Hugging Face cache laid out as huggingface_hub lays it.
#[test]
fn hub_ids_resolve_through_a_fake_cache() {
    let cache = tempfile::tempdir().unwrap();
    let commit = "a".repeat(40);
    let repo_dir = cache.path().join("models--acme--vit-tiny");
    let snap = repo_dir.join("snapshots").join(&commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), &commit).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("hf-vit-tiny").join(f), snap.join(f)).unwrap();
    }
    let repo = Repo::new("acme/vit-tiny", cache.path().to_path_buf(), true).unwrap();
    let p = weights::load_hub(&repo).unwrap();
    assert_eq!(p.origin, Origin::Hf);
    let g = golden("hf-vit-tiny");
    let d = max_abs(&logits_of(p, &g["pixel_values"])["logits"], &g["logits"]);
    assert!(d <= 1e-4);
}

fn one_line_error(err: &str) -> &str {
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line: {err}");
    assert!(
        lines[0].starts_with("error: ") && !err.contains("panicked"),
        "{err}"
    );
    lines[0]
}

#[test]
fn the_logits_and_export_commands_work_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixture("deit-tiny-distilled").join("golden.safetensors");
    let out = tmp.path().join("out.safetensors");
    let (code, stdout, err) = vitrs(
        &[
            "logits",
            "--pretrained",
            fixture("deit-tiny-distilled").to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("logits"), "{stdout}");
    let got = read_safetensors(&out).unwrap();
    let g = golden("deit-tiny-distilled");
    for k in ["logits", "logits_cls", "logits_dist"] {
        assert!(max_abs(&got[k], &g[k]) <= 1e-4, "{k}");
    }
    let exported = tmp.path().join("exported");
    let (code, _, err) = vitrs(
        &[
            "export",
            "--checkpoint",
            fixture("deit-tiny-distilled").to_str().unwrap(),
            "--format",
            "timm",
            "--out",
            exported.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(exported.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_args"]["num_heads"], 3);
    assert_eq!(cfg["architecture"], "deit_base_distilled_patch16_224");
    // A register model has no HF form (DeiT-distilled does: DeiTForImageClassificationWithTeacher).
    let (code, _, err) = vitrs(
        &[
            "export",
            "--checkpoint",
            fixture("timm-reg4-gap").to_str().unwrap(),
            "--format",
            "hf",
            "--out",
            tmp.path().join("hf").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(one_line_error(&err).contains("no registers"), "{err}");
}

#[test]
fn bad_weights_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixture("timm-vit-tiny").join("golden.safetensors");
    let out = tmp.path().join("out.safetensors");
    let logits = |pretrained: &str, env: &[(&str, &Path)]| {
        vitrs(
            &[
                "logits",
                "--pretrained",
                pretrained,
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
            env,
        )
    };
    // A PyTorch pickle.
    let bin = tmp.path().join("pytorch_model.bin");
    std::fs::write(&bin, b"\x80\x02}q\x00.").unwrap();
    let (code, _, err) = logits(bin.to_str().unwrap(), &[]);
    assert_eq!(code, 1);
    assert!(one_line_error(&err).contains("safetensors only"), "{err}");
    // A truncated safetensors file.
    let bytes = std::fs::read(fixture("timm-vit-tiny").join("model.safetensors")).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let (code, _, err) = logits(cut.to_str().unwrap(), &[]);
    assert_eq!(code, 1);
    assert!(
        one_line_error(&err).contains("truncated or corrupt"),
        "{err}"
    );
    // A hub file missing from the cache, offline: the file and where it goes.
    let cache = tmp.path().join("hub");
    let snap = cache.join("models--google--vit-base-patch16-224-in21k/snapshots/main");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::copy(
        fixture("hf-vit-tiny").join("config.json"),
        snap.join("config.json"),
    )
    .unwrap();
    let (code, _, err) = logits(
        "google/vit-base-patch16-224-in21k",
        &[("HF_HUB_CACHE", &cache), ("HF_HUB_OFFLINE", Path::new("1"))],
    );
    assert_eq!(code, 1);
    let line = one_line_error(&err);
    assert!(
        line.contains("model.safetensors is not in the Hugging Face cache"),
        "{line}"
    );
    assert!(
        line.contains(&snap.join("model.safetensors").display().to_string()),
        "{line}"
    );
    // Not a path and not a hub id.
    let (code, _, err) = logits("no/such/thing", &[]);
    assert_eq!(code, 1);
    assert!(
        one_line_error(&err).contains("no such file or directory"),
        "{err}"
    );
}

#[test]
fn training_flags_are_checked() {
    let (code, _, err) = vitrs(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "vit-hf-pretrained",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(one_line_error(&err).contains("give --pretrained"), "{err}");
    let (code, _, err) = vitrs(
        &["train", "--dataset", "synthetic", "--freeze-backbone"],
        &[],
    );
    assert_eq!(code, 1);
    assert!(one_line_error(&err).contains("need --pretrained"), "{err}");
}
