//! Model checks that need the training side (the loss, the optimizer, the train step), which
//! src/model/ does not import: gradients against finite differences, LoRA's trainable set
//! under an optimizer step, and half precision, loss scaling and checkpointing through a step.

mod vit {
    use burn::module::Module;
    use burn::tensor::{DType, Device, Tensor, TensorData};
    use vitrs::data::augment::mix::soft_targets;
    use vitrs::model::layers::Ctx;
    use vitrs::model::params::map_params;
    use vitrs::model::{VisionTransformer, VitConfig};
    use vitrs::train::loss::soft_cross_entropy;

    fn cfg(img: usize, patch: usize, dims: [usize; 4], classes: usize) -> VitConfig {
        VitConfig::with_shape(img, patch, 3, classes, dims)
    }

    fn to_f64(m: VisionTransformer) -> VisionTransformer {
        map_params(m, |_, v| Some(v.cast(DType::F64)))
    }

    fn loss_of(m: &VisionTransformer, x: &Tensor<4>, t: &Tensor<2>) -> Tensor<1> {
        soft_cross_entropy(m.forward(x.clone(), &Ctx::eval()), t.clone())
    }

    /// Gradients from autodiff against central finite differences, in f64, on a tiny model.
    #[test]
    fn gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        let c = cfg(8, 4, [8, 2, 2, 12], 3);
        let m = to_f64(VisionTransformer::new(&c, 3, &device).unwrap());
        let mut rng = vitrs::rng::Rng::seed(9);
        let xs: Vec<f64> = (0..2 * 3 * 8 * 8).map(|_| rng.normal()).collect();
        let x = Tensor::<4>::from_data(TensorData::new(xs, [2, 3, 8, 8]), (&device, DType::F64));
        let t: Vec<f64> = soft_targets(&[0, 2], 3, 0.1)
            .into_iter()
            .map(f64::from)
            .collect();
        let t = Tensor::<2>::from_data(TensorData::new(t, [2, 3]), (&device, DType::F64));
        let grads = loss_of(&m, &x, &t).backward();
        let grads = vitrs::model::params::gradients(&m, &grads);
        let plain = Device::flex();
        let xp = x.clone().inner();
        let tp = t.clone().inner();
        for (path, idx) in [
            ("blocks.0.attn.qkv.weight", 5),
            ("blocks.1.mlp.fc1.bias", 3),
            ("blocks.0.norm1.weight", 2),
            ("pos_embed", 7),
            ("cls_token", 1),
            ("patch_embed.proj.weight", 11),
            ("head.weight", 4),
        ] {
            let g: Vec<f64> = grads[path]
                .clone()
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap();
            let eps = 1e-6;
            let eval = |delta: f64| -> f64 {
                let mp = map_params(m.valid(), |p, v| {
                    (p == path).then(|| {
                        let mut d: Vec<f64> = v
                            .into_data()
                            .convert::<f64>()
                            .try_into_vec::<f64>()
                            .unwrap();
                        d[idx] += delta;
                        let n = d.len();
                        Tensor::<1>::from_data(TensorData::new(d, [n]), (&plain, DType::F64))
                    })
                });
                loss_of(&mp, &xp, &tp).into_scalar::<f64>()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (fd - g[idx]).abs() / (fd.abs().max(g[idx].abs()).max(1e-8));
            assert!(
                err < 1e-5,
                "{path}[{idx}]: autodiff {} vs finite difference {fd}",
                g[idx]
            );
        }
    }
}

mod resnet {
    use burn::module::Module;
    use burn::tensor::{DType, Device, Tensor, TensorData};
    use vitrs::data::augment::mix::soft_targets;
    use vitrs::model::cnn::CnnConfig;
    use vitrs::model::layers::Ctx;
    use vitrs::model::params::{gradients, map_params};
    use vitrs::model::resnet::ResNet;
    use vitrs::train::loss::soft_cross_entropy;

    /// Gradients through convolutions, train-mode BatchNorm (batch statistics), the
    /// downsample shortcut, max-pool and the head, against central finite differences in f64.
    #[test]
    fn gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        let c = CnnConfig::Resnet {
            bottleneck: false,
            layers: vec![1, 1, 1, 1],
            widths: vec![2, 3, 3, 4],
            stem_width: 2,
            imagenet_stem: true,
        };
        let m = ResNet::new(&c, 2, 3, 5, &device).unwrap();
        // Non-trivial BN affine parameters (the last BN of a block starts at zero gamma).
        let mut rng = vitrs::rng::Rng::seed(4);
        let m = map_params(m, |p, v| {
            let n = v.dims()[0];
            let vals: Vec<f64> = if p.ends_with("running_mean") || p.ends_with("running_var") {
                vec![1.0; n]
            } else {
                (0..n)
                    .map(|_| 0.5 * rng.normal() + p.ends_with("bn2.weight") as u8 as f64)
                    .collect()
            };
            Some(Tensor::<1>::from_data(
                TensorData::new(vals, [n]),
                (&v.device(), DType::F64),
            ))
        });
        let xs: Vec<f64> = (0..3 * 2 * 12 * 12).map(|_| rng.normal()).collect();
        let x = Tensor::<4>::from_data(TensorData::new(xs, [3, 2, 12, 12]), (&device, DType::F64));
        let t: Vec<f64> = soft_targets(&[0, 2, 1], 3, 0.1)
            .into_iter()
            .map(f64::from)
            .collect();
        let t = Tensor::<2>::from_data(TensorData::new(t, [3, 3]), (&device, DType::F64));
        let loss_of = |m: &ResNet, x: &Tensor<4>, t: &Tensor<2>| {
            soft_cross_entropy(m.forward(x.clone(), &Ctx::train(0, &[0])), t.clone())
        };
        let grads = gradients(&m, &loss_of(&m, &x, &t).backward());
        assert!(!grads.contains_key("bn1.running_mean"));
        let (xp, tp) = (x.clone().inner(), t.clone().inner());
        let plain = Device::flex();
        for (path, idx) in [
            ("conv1.weight", 7),
            ("bn1.weight", 1),
            ("bn1.bias", 0),
            ("layer1.0.conv2.weight", 5),
            ("layer1.0.bn2.weight", 1),
            ("layer2.0.downsample.0.weight", 2),
            ("layer2.0.downsample.1.bias", 1),
            ("layer4.0.conv1.weight", 10),
            ("fc.weight", 4),
        ] {
            let g: Vec<f64> = grads
                .get(path)
                .unwrap_or_else(|| panic!("no gradient for {path}: {:?}", grads.keys()))
                .clone()
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap();
            let eps = 1e-6;
            let eval = |delta: f64| -> f64 {
                let mp = map_params(m.valid(), |p, v| {
                    (p == path).then(|| {
                        let mut d: Vec<f64> = v
                            .into_data()
                            .convert::<f64>()
                            .try_into_vec::<f64>()
                            .unwrap();
                        d[idx] += delta;
                        let n = d.len();
                        Tensor::<1>::from_data(TensorData::new(d, [n]), (&plain, DType::F64))
                    })
                });
                loss_of(&mp, &xp, &tp).into_scalar::<f64>()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (fd - g[idx]).abs() / fd.abs().max(g[idx].abs()).max(1e-8);
            assert!(
                err < 1e-5,
                "{path}[{idx}]: autodiff {} vs finite difference {fd}",
                g[idx]
            );
        }
    }
}

mod lora {
    use burn::tensor::{Device, Tensor, TensorData};
    use vitrs::model::io::state_dict;
    use vitrs::model::layers::Ctx;
    use vitrs::model::lora::{LoraConfig, add_adapters};
    use vitrs::model::params::{gradients, map_params, named_params};
    use vitrs::model::{VisionTransformer, VitConfig};
    use vitrs::rng::Rng;
    use vitrs::train::loss::soft_cross_entropy;

    // The fixtures of src/model/lora.rs's unit tests.
    fn cfg(targets: &[&str]) -> LoraConfig {
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: targets.iter().map(|s| s.to_string()).collect(),
            modules_to_save: vec!["head".into()],
            use_rslora: false,
        }
    }

    fn vit(device: &Device) -> VisionTransformer {
        let c = VitConfig::with_shape(8, 4, 3, 5, [16, 2, 2, 24]);
        VisionTransformer::new(&c, 1, device).unwrap()
    }

    fn input(device: &Device) -> Tensor<4> {
        let mut rng = Rng::seed(3);
        let x: Vec<f32> = (0..2 * 3 * 64).map(|_| rng.normal() as f32).collect();
        Tensor::from_data(TensorData::new(x, [2, 3, 8, 8]), device)
    }

    /// Perturb every B so the adapter does something.
    fn perturbed(m: VisionTransformer) -> VisionTransformer {
        let mut rng = Rng::seed(11);
        map_params(m, |p, v| {
            p.ends_with("lora_B.weight").then(|| {
                let n = v.dims()[0];
                let d: Vec<f32> = (0..n).map(|_| 0.1 * rng.normal() as f32).collect();
                Tensor::from_data(TensorData::new(d, [n]), &v.device())
            })
        })
    }

    #[test]
    fn only_adapters_and_head_get_gradients() {
        let device = Device::flex().autodiff();
        let m = perturbed(add_adapters(vit(&device), &cfg(&["qkv", "fc1"]), 2, &device).unwrap());
        let t = Tensor::<2>::from_data(
            TensorData::new(vec![1f32, 0., 0., 0., 0., 0., 0., 1., 0., 0.], [2, 5]),
            &device,
        );
        let loss = soft_cross_entropy(m.forward(input(&device), &Ctx::eval()), t);
        let grads = gradients(&m, &loss.backward());
        let mut names: Vec<&str> = grads.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "blocks.0.attn.qkv.lora_A.weight",
                "blocks.0.attn.qkv.lora_B.weight",
                "blocks.0.mlp.fc1.lora_A.weight",
                "blocks.0.mlp.fc1.lora_B.weight",
                "blocks.1.attn.qkv.lora_A.weight",
                "blocks.1.attn.qkv.lora_B.weight",
                "blocks.1.mlp.fc1.lora_A.weight",
                "blocks.1.mlp.fc1.lora_B.weight",
                "head.bias",
                "head.weight",
            ]
        );
        // One optimizer step changes those and nothing else.
        let before = state_dict(&m);
        let trainable: Vec<(String, usize)> = named_params(&m)
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| (p.path, p.shape.len()))
            .collect();
        let mut opt = vitrs::train::optim::AdamW::new(
            vitrs::train::optim::AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.05,
                layer_decay: 1.0,
                depth: 2,
            },
            &trainable,
        );
        let after = state_dict(&opt.step(m, &grads, 1e-2, 1.0));
        for (k, v) in &before {
            assert_eq!(
                after[k] != *v,
                grads.contains_key(k),
                "{k} changed iff it is trainable"
            );
        }
        assert_eq!(
            opt.state_dict().len(),
            2 * grads.len(),
            "optimizer state for trainable parameters only"
        );
    }
}

mod precision {
    use std::collections::BTreeMap;

    use burn::tensor::{DType, Device, Tensor};
    use vitrs::data::batch::HostBatch;
    use vitrs::model::layers::Ctx;
    use vitrs::model::precision::Precision;
    use vitrs::model::{Model, VitConfig};
    use vitrs::train::optim::global_grad_norm;
    use vitrs::train::step::train_step;

    fn batch() -> HostBatch {
        let mut rng = vitrs::rng::Rng::seed(5);
        let n = 8;
        let labels: Vec<usize> = (0..n).map(|i| i % 4).collect();
        let mut targets = vec![0.0; n * 4];
        for (i, y) in labels.iter().enumerate() {
            targets[i * 4 + y] = 1.0;
        }
        HostBatch {
            images: (0..n * 3 * 16 * 16).map(|_| rng.normal() as f32).collect(),
            shape: [n, 3, 16, 16],
            targets,
            num_classes: 4,
            labels,
        }
    }

    fn model(device: &Device) -> Model {
        Model::new(
            &VitConfig::with_shape(16, 4, 3, 4, [32, 2, 2, 64]),
            1,
            device,
        )
        .unwrap()
    }

    fn host(t: Tensor<1>) -> Vec<f32> {
        assert_eq!(t.dtype(), DType::F32, "gradients reach the weights in f32");
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn grads(device: &Device, ctx: Ctx) -> BTreeMap<String, Vec<f32>> {
        let out = train_step(&model(device), &batch(), device, &ctx);
        out.grads.into_iter().map(|(k, g)| (k, host(g))).collect()
    }

    fn flat(g: &BTreeMap<String, Vec<f32>>) -> Vec<f64> {
        g.values().flatten().map(|&v| v as f64).collect()
    }

    fn cosine(a: &[f64], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    }

    /// Half-precision products change the logits by about their rounding error (f16: 11
    /// significant bits, bf16: 8) and leave the gradients pointing the same way.
    #[test]
    fn half_precision_tracks_f32_logits_and_gradients() {
        let device = Device::flex();
        let m = model(&device);
        let x: Tensor<4> = batch().images_tensor(&device);
        let logits = |p| {
            let y = m.forward(x.clone(), &Ctx::eval().with_precision(p, 1.0));
            assert_eq!(y.dtype(), DType::F32);
            y.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        };
        let exact = logits(Precision::F32);
        let ad = device.autodiff();
        let g32 = flat(&grads(&ad, Ctx::train(0, &[0])));
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (p, logit_tol, min_cos) in [
            (Precision::F16, 3e-3, 0.99995),
            (Precision::Bf16, 1.5e-2, 0.9995),
        ] {
            let err = logits(p)
                .iter()
                .zip(&exact)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err > 0.0 && err <= logit_tol * scale,
                "{p:?}: logits off by {err} (scale {scale})"
            );
            let g = flat(&grads(&ad, Ctx::train(0, &[0]).with_precision(p, 1.0)));
            assert!(g.iter().all(|v| v.is_finite()));
            let c = cosine(&g, &g32);
            assert!(c >= min_cos && c < 1.0, "{p:?}: gradient cosine {c}");
        }
    }

    /// Multiplying the loss by a power of two and dividing the gradients by it is exact in
    /// f32, so loss scaling alone changes nothing.
    #[test]
    fn loss_scaling_is_undone_exactly() {
        let ad = Device::flex().autodiff();
        let plain = grads(&ad, Ctx::train(0, &[0]));
        let scaled = grads(
            &ad,
            Ctx::train(0, &[0]).with_precision(Precision::F32, 1024.0),
        );
        assert_eq!(plain, scaled);
    }

    /// A scale too large for f16 overflows the half-precision gradients: the trainer sees a
    /// non-finite norm and skips the step.
    #[test]
    fn an_oversized_f16_loss_scale_overflows() {
        let ad = Device::flex().autodiff();
        let m = model(&ad);
        let b = batch();
        let norm = |scale| {
            let ctx = Ctx::train(0, &[0]).with_precision(Precision::F16, scale);
            global_grad_norm(&train_step(&m, &b, &ad, &ctx).grads)
        };
        assert!(norm(1024.0).is_finite());
        assert!(!norm(2f64.powi(40)).is_finite());
    }

    /// Burn's balanced checkpointing recomputes activations instead of storing them: the
    /// gradients must not change.
    #[test]
    fn gradient_checkpointing_gives_the_same_gradients() {
        let device = Device::flex();
        let plain = grads(
            &vitrs::device::autodiff(&device, false),
            Ctx::train(0, &[0]),
        );
        let ckpt = grads(&vitrs::device::autodiff(&device, true), Ctx::train(0, &[0]));
        assert_eq!(
            plain.keys().collect::<Vec<_>>(),
            ckpt.keys().collect::<Vec<_>>()
        );
        for (k, a) in &plain {
            let d = a
                .iter()
                .zip(&ckpt[k])
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(d <= 1e-6, "{k}: {d}");
        }
    }
}
