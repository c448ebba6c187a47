//! Knowledge distillation: the teacher, the soft and hard (DeiT) losses, agreement.
//!
//! The teacher is a [`Model`] on the plain (non-autodiff) device: it runs in eval mode on
//! the student's own augmented and mixed batch, records no graph and gets no gradient. Its
//! logits come to the host (they are `batch × classes`), where its top-1 predictions give the
//! hard targets, its accuracy and the student–teacher agreement.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::loss::soft_cross_entropy;
use crate::config::DistillKind;
use crate::data::augment::mix::soft_targets;
use crate::data::batch::HostBatch;
use crate::data::loader::Loader;
use crate::error::{Error, Result};
use crate::model::layers::Ctx;
use crate::model::vit::VitOutput;
use crate::model::{Model, VitConfig};

pub struct Teacher {
    /// On the plain device, eval mode.
    pub model: Model,
    pub kind: DistillKind,
    pub alpha: f64,
    pub tau: f64,
    pub device: Device,
    /// What `--teacher` named, for messages.
    pub source: String,
}

/// The run's teacher (`--teacher` with its `--distillation`, α and τ), if it has one.
pub fn teacher_of(
    cfg: &crate::config::DistillConfig,
    student: &VitConfig,
    device: &Device,
) -> Result<Option<Teacher>> {
    cfg.teacher
        .as_deref()
        .map(|spec| {
            load_teacher(
                spec,
                student,
                cfg.distillation,
                cfg.distill_alpha,
                cfg.distill_tau,
                device,
            )
        })
        .transpose()
}

/// Load `spec` (anything `--pretrained` takes: a vitrs checkpoint, timm ViT/DeiT/ResNet
/// weights) as the teacher of a student described by `student`. A teacher that predicts
/// another number of classes or reads other images is an error naming both.
pub fn load_teacher(
    spec: &str,
    student: &VitConfig,
    kind: DistillKind,
    alpha: f64,
    tau: f64,
    device: &Device,
) -> Result<Teacher> {
    let plain = device.clone().inner();
    let wrap = |e: Error| Error::Config(format!("--teacher {spec}: {e}"));
    let mut p = super::checkpoint::load_pretrained(spec).map_err(wrap)?;
    if !p.has_head || p.config.num_classes == 0 {
        return Err(Error::Config(format!(
            "--teacher {spec} has no classification head: a teacher must predict this run's {} classes",
            student.num_classes
        )));
    }
    if p.config.num_classes != student.num_classes {
        return Err(Error::Config(format!(
            "--teacher {spec} predicts {} classes but this run has {}: train the teacher on the same dataset (or give the student --num-classes {})",
            p.config.num_classes, student.num_classes, p.config.num_classes
        )));
    }
    if p.config.in_chans != student.in_chans {
        return Err(Error::Config(format!(
            "--teacher {spec} reads {}-channel images but this run's have {}",
            p.config.in_chans, student.in_chans
        )));
    }
    // The teacher sees the student's input resolution (a ViT's position embeddings are
    // resampled as at fine-tuning; a CNN takes any size).
    if let Some(note) = p.set_img_size(student.img_size).map_err(wrap)? {
        crate::log_line!("note: teacher: {note}");
    }
    let model = p.build(0, &plain).map_err(wrap)?;
    Ok(Teacher {
        model,
        kind,
        alpha,
        tau,
        device: plain,
        source: spec.to_string(),
    })
}

/// Top-1 class of each row.
pub fn argmax_rows(logits: Tensor<2>) -> Vec<usize> {
    let pred: Tensor<2, Int> = logits.argmax(1);
    pred.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap_or_default()
        .into_iter()
        .map(|p| p as usize)
        .collect()
}

/// `τ² · KL(softmax(z_t/τ) ‖ softmax(z_s/τ))`, summed over classes and averaged over the
/// batch (PyTorch's `reduction='batchmean'`; DeiT's code averages over every element instead,
/// which divides the term by the class count as well: its issues #61 and #116).
pub fn soft_distillation_loss(student: Tensor<2>, teacher: Tensor<2>, tau: f64) -> Tensor<1> {
    let [b, _] = student.dims();
    let log_p_s = log_softmax(student / tau, 1);
    let log_p_t = log_softmax(teacher.clone() / tau, 1);
    let p_t = softmax(teacher / tau, 1);
    (p_t * (log_p_t - log_p_s)).sum() * (tau * tau / b as f64)
}

/// What the distillation losses add to a step's log, as batch means.
pub struct DistillParts {
    pub loss: Tensor<1>,
    /// The true-label term, unweighted.
    pub loss_ce: f64,
    /// The distillation term, unweighted (0 for `--distillation none`).
    pub loss_distill: f64,
    pub extra: BTreeMap<String, f64>,
}

/// The log values [`distill_loss`] returns (a data-parallel step sums them over ranks).
pub const EXTRA_KEYS: [&str; 5] = [
    "loss_ce",
    "loss_distill",
    "teacher_acc",
    "agreement",
    "teacher_s",
];

/// The loss of one batch with a teacher. `out` is the student's forward (its distillation
/// head, when it has one, takes the distillation term; otherwise the class head takes both),
/// `targets` the smoothed and mixed true-label targets.
pub fn distill_loss(
    out: &VitOutput,
    targets: Tensor<2>,
    batch: &HostBatch,
    teacher: &Teacher,
    device: &Device,
) -> DistillParts {
    let started = Instant::now();
    let t_logits = teacher
        .model
        .forward(batch.images_tensor(&teacher.device), &Ctx::eval());
    let t_host: Vec<f32> = t_logits
        .clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    let t_pred = argmax_rows(t_logits);
    let teacher_s = started.elapsed().as_secs_f64();
    let n = batch.len();
    let k = batch.num_classes;
    let z_t = Tensor::<2>::from_data(TensorData::new(t_host, [n, k]), device);
    let z_s = out.logits.clone();
    let z_d = out.dist_logits.clone().unwrap_or_else(|| z_s.clone());
    let ce = soft_cross_entropy(z_s.clone(), targets.clone());
    let (loss, distill) = match teacher.kind {
        DistillKind::None => match &out.dist_logits {
            // Without a distillation loss the distillation head learns the true labels too.
            Some(d) => {
                let ce_d = soft_cross_entropy(d.clone(), targets);
                ((ce.clone() + ce_d) * 0.5, None)
            }
            None => (ce.clone(), None),
        },
        DistillKind::Soft => {
            let kl = soft_distillation_loss(z_d, z_t, teacher.tau);
            let a = teacher.alpha;
            (ce.clone() * (1.0 - a) + kl.clone() * a, Some(kl))
        }
        DistillKind::Hard => {
            let hard = Tensor::<2>::from_data(
                TensorData::new(soft_targets(&t_pred, k, 0.0), [n, k]),
                device,
            );
            let hard = soft_cross_entropy(z_d, hard);
            ((ce.clone() + hard.clone()) * 0.5, Some(hard))
        }
    };
    let scalar = |t: Tensor<1>| t.inner().into_scalar::<f32>() as f64;
    let student_pred = argmax_rows(prediction(out).inner());
    let same = student_pred.iter().zip(&t_pred).filter(|(a, b)| a == b);
    let t_correct = t_pred.iter().zip(&batch.labels).filter(|(a, b)| a == b);
    let loss_ce = scalar(ce);
    let loss_distill = distill.map_or(0.0, scalar);
    let extra = BTreeMap::from([
        ("loss_ce".to_string(), loss_ce),
        ("loss_distill".to_string(), loss_distill),
        (
            "teacher_acc".to_string(),
            t_correct.count() as f64 / n as f64,
        ),
        ("agreement".to_string(), same.count() as f64 / n as f64),
        ("teacher_s".to_string(), teacher_s),
    ]);
    DistillParts {
        loss,
        loss_ce,
        loss_distill,
        extra,
    }
}

/// The student's training-time prediction: with a distillation head, the mean of both heads.
pub fn prediction(out: &VitOutput) -> Tensor<2> {
    match &out.dist_logits {
        Some(d) => (out.logits.clone() + d.clone()) / 2.0,
        None => out.logits.clone(),
    }
}

/// Top-1 predictions of `model` (eval mode) on every batch of `loader`.
pub fn predictions(model: &Model, loader: &Loader, device: &Device) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(loader.dataset().len());
    let mut batches = loader.epoch(0, 0);
    for batch in &mut batches {
        out.extend(argmax_rows(
            model.forward(batch.images_tensor(device), &Ctx::eval()),
        ));
    }
    batches.finish()?;
    Ok(out)
}

/// Share of equal top-1 predictions.
pub fn agreement(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len().min(b.len()).max(1);
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t2(v: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, shape), &Device::flex())
    }

    fn lse(z: &[f64]) -> f64 {
        z.iter().map(|x| x.exp()).sum::<f64>().ln()
    }

    /// τ²·KL(p_t ‖ p_s) per example, by hand, for τ = 1 and τ = 2, over a batch of two.
    #[test]
    fn soft_loss_matches_hand_computation() {
        let zs = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]];
        let zt = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]];
        for tau in [1.0f64, 2.0] {
            let mut sum = 0.0;
            for (s, t) in zs.iter().zip(&zt) {
                let s: Vec<f64> = s.iter().map(|x| x / tau).collect();
                let t: Vec<f64> = t.iter().map(|x| x / tau).collect();
                let (ls, lt) = (lse(&s), lse(&t));
                sum += (0..3)
                    .map(|k| (t[k] - lt).exp() * ((t[k] - lt) - (s[k] - ls)))
                    .sum::<f64>();
            }
            let expect = tau * tau * sum / 2.0;
            let flat = |z: &[[f64; 3]; 2]| z.iter().flatten().map(|&x| x as f32).collect();
            let got: f32 =
                soft_distillation_loss(t2(flat(&zs), [2, 3]), t2(flat(&zt), [2, 3]), tau)
                    .into_scalar();
            assert!(
                (got as f64 - expect).abs() < 1e-6,
                "τ={tau}: {got} vs {expect}"
            );
        }
        // Identical distributions: zero.
        let z = t2(vec![1.0, 2.0, 3.0], [1, 3]);
        let zero: f32 = soft_distillation_loss(z.clone(), z, 3.0).into_scalar();
        assert!(zero.abs() < 1e-6);
    }

    fn teacher_of(logits: [f32; 3], kind: DistillKind, alpha: f64, tau: f64) -> Teacher {
        // A "teacher" whose output is the constant `logits`: a CNN-free stand-in is a ViT
        // whose head bias is the logits and whose head weight is zero.
        use crate::model::params::map_params;
        let device = Device::flex();
        let c = VitConfig::with_shape(4, 4, 1, 3, [4, 1, 1, 4]);
        let m = Model::new(&c, 0, &device).unwrap();
        let m = map_params(m, |p, v| match p {
            "head.weight" => Some(v.zeros_like()),
            "head.bias" => Some(Tensor::from_data(
                TensorData::new(logits.to_vec(), [3]),
                &device,
            )),
            _ => None,
        });
        Teacher {
            model: m,
            kind,
            alpha,
            tau,
            device,
            source: "test".into(),
        }
    }

    fn batch(label: usize, smoothing: f64) -> HostBatch {
        HostBatch {
            images: vec![0.0; 16],
            shape: [1, 1, 4, 4],
            targets: soft_targets(&[label], 3, smoothing),
            num_classes: 3,
            labels: vec![label],
        }
    }

    /// The full soft and hard losses with label smoothing on the true-label term only, by
    /// hand: student logits (1, 2, 3), teacher logits (3, 1, 0), label 0, smoothing 0.1.
    #[test]
    fn soft_and_hard_losses_match_hand_computation() {
        let device = Device::flex();
        let zs = [1.0f64, 2.0, 3.0];
        let zt = [3.0f64, 1.0, 0.0];
        let b = batch(0, 0.1);
        let targets = b.targets_tensor(&device);
        let out = VitOutput {
            logits: t2(zs.iter().map(|&x| x as f32).collect(), [1, 3]),
            dist_logits: None,
        };
        let ls = lse(&zs);
        let smooth = [0.9 + 0.1 / 3.0, 0.1 / 3.0, 0.1 / 3.0];
        let ce: f64 = -(0..3).map(|k| smooth[k] * (zs[k] - ls)).sum::<f64>();
        // Soft, α = 0.3, τ = 2.
        let (a, tau) = (0.3, 2.0);
        let s: Vec<f64> = zs.iter().map(|x| x / tau).collect();
        let t: Vec<f64> = zt.iter().map(|x| x / tau).collect();
        let (lss, lst) = (lse(&s), lse(&t));
        let kl: f64 = (0..3)
            .map(|k| (t[k] - lst).exp() * ((t[k] - lst) - (s[k] - lss)))
            .sum();
        let soft = distill_loss(
            &out,
            targets.clone(),
            &b,
            &teacher_of([3.0, 1.0, 0.0], DistillKind::Soft, a, tau),
            &device,
        );
        let got: f32 = soft.loss.into_scalar();
        let expect = (1.0 - a) * ce + a * tau * tau * kl;
        assert!((got as f64 - expect).abs() < 1e-5, "soft {got} vs {expect}");
        assert!((soft.loss_ce - ce).abs() < 1e-5);
        assert_eq!(soft.extra["teacher_acc"], 1.0); // teacher's top-1 is class 0
        assert_eq!(soft.extra["agreement"], 0.0); // student's is class 2
        // Hard: ½·CE_smoothed(z_s, y) + ½·CE(z_s, argmax z_t = 0), unsmoothed.
        let hard = distill_loss(
            &out,
            targets,
            &b,
            &teacher_of([3.0, 1.0, 0.0], DistillKind::Hard, a, tau),
            &device,
        );
        let got: f32 = hard.loss.into_scalar();
        let expect = 0.5 * ce + 0.5 * (ls - zs[0]);
        assert!((got as f64 - expect).abs() < 1e-5, "hard {got} vs {expect}");
        assert!((hard.loss_distill - (ls - zs[0])).abs() < 1e-5);
    }

    /// With a distillation head, the true-label term trains `head` and the distillation term
    /// `head_dist` (DeiT): the gradient of each head sees only its own term.
    #[test]
    fn dist_token_routes_each_loss_to_its_head() {
        use crate::model::params::gradients;
        let device = Device::flex().autodiff();
        let c = VitConfig {
            dist_token: true,
            ..VitConfig::with_shape(4, 4, 1, 3, [4, 1, 1, 4])
        };
        let m = Model::new(&c, 0, &device).unwrap();
        let b = batch(1, 0.0);
        let teacher = teacher_of([0.0, 0.0, 5.0], DistillKind::Hard, 0.5, 1.0);
        let out = m.forward_heads(b.images_tensor(&device), &Ctx::eval());
        let (zc, zd) = (out.logits.clone(), out.dist_logits.clone().unwrap());
        let parts = distill_loss(&out, b.targets_tensor(&device), &b, &teacher, &device);
        let g = gradients(&m, &parts.loss.backward());
        let host = |t: Tensor<2>| -> Vec<f64> {
            let v: Vec<f32> = softmax(t.inner(), 1)
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .unwrap();
            v.into_iter().map(f64::from).collect()
        };
        // d loss / d head.bias = ½·(softmax(z_cls) − onehot(label 1)); head_dist: ½·(softmax(z_d) − onehot(2)).
        let (pc, pd) = (host(zc), host(zd));
        let gb: Vec<f32> = g["head.bias"]
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap();
        let gd: Vec<f32> = g["head_dist.bias"]
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap();
        for k in 0..3 {
            let ec = 0.5 * (pc[k] - (k == 1) as u8 as f64);
            let ed = 0.5 * (pd[k] - (k == 2) as u8 as f64);
            assert!(
                (gb[k] as f64 - ec).abs() < 1e-5,
                "head.bias[{k}] {} vs {ec}",
                gb[k]
            );
            assert!(
                (gd[k] as f64 - ed).abs() < 1e-5,
                "head_dist.bias[{k}] {} vs {ed}",
                gd[k]
            );
        }
    }

    /// The teacher takes part in the loss but gets no gradient, and nothing of it changes
    /// (its BatchNorm running statistics included: it runs in eval mode); a CNN student's
    /// running statistics come back as buffers, not gradients.
    #[test]
    fn teacher_gets_no_gradient_and_stays_unchanged() {
        use super::super::step::train_step_with;
        use crate::model::cnn::CnnConfig;
        use crate::model::io::state_dict;
        use crate::model::params::named_params;
        let plain = Device::flex();
        let ad = plain.clone().autodiff();
        let cnn = VitConfig::cnn(8, 1, 3, CnnConfig::CnnFast { widths: vec![4, 8] });
        let t_model = Model::new(&cnn, 1, &plain).unwrap();
        let before = state_dict(&t_model);
        let teacher = Teacher {
            model: t_model,
            kind: DistillKind::Soft,
            alpha: 0.5,
            tau: 2.0,
            device: plain,
            source: "test".into(),
        };
        let mut rng = crate::rng::Rng::seed(3);
        let b = HostBatch {
            images: (0..4 * 64).map(|_| rng.normal() as f32).collect(),
            shape: [4, 1, 8, 8],
            targets: soft_targets(&[0, 1, 2, 0], 3, 0.1),
            num_classes: 3,
            labels: vec![0, 1, 2, 0],
        };
        for student in [
            VitConfig::with_shape(8, 4, 1, 3, [8, 1, 2, 16]),
            VitConfig::cnn(8, 1, 3, CnnConfig::CnnFast { widths: vec![2] }),
        ] {
            let s = Model::new(&student, 0, &ad).unwrap();
            let out = train_step_with(&s, &b, &ad, &Ctx::train(0, &[0]), Some(&teacher));
            assert!(out.extra["loss_distill"] > 0.0);
            assert_eq!(state_dict(&teacher.model), before);
            let trainable: Vec<String> = named_params(&s)
                .into_iter()
                .filter(|p| p.trainable)
                .map(|p| p.path)
                .collect();
            let got: Vec<String> = out.grads.keys().cloned().collect();
            let mut want = trainable.clone();
            want.sort();
            assert_eq!(
                got, want,
                "gradients are the student's trainable parameters only"
            );
            let buffers: Vec<&String> = out.buffers.keys().collect();
            if student.cnn.is_some() {
                assert_eq!(
                    buffers,
                    [
                        "stages.0.bn1.running_mean",
                        "stages.0.bn1.running_var",
                        "stages.0.bn2.running_mean",
                        "stages.0.bn2.running_var",
                        "stem.bn.running_mean",
                        "stem.bn.running_var"
                    ]
                );
            } else {
                assert!(buffers.is_empty());
            }
        }
    }

    /// A missing teacher, or one with the wrong class count, is a clear error.
    #[test]
    fn missing_or_incompatible_teachers_are_errors() {
        use crate::model::io::{state_dict, write_safetensors};
        let device = Device::flex();
        let student = VitConfig::with_shape(8, 4, 1, 5, [8, 1, 2, 16]);
        let e = load_teacher(
            "/no/such/teacher",
            &student,
            DistillKind::Hard,
            0.5,
            1.0,
            &device,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("--teacher /no/such/teacher") && e.contains("no such file"),
            "{e}"
        );
        // A vitrs checkpoint of a 3-class CNN.
        let dir = tempfile::tempdir().unwrap();
        let c = VitConfig::cnn(
            8,
            1,
            3,
            crate::model::cnn::CnnConfig::CnnFast { widths: vec![4] },
        );
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec(&c).unwrap(),
        )
        .unwrap();
        let m = Model::new(&c, 0, &device).unwrap();
        write_safetensors(&dir.path().join("model.safetensors"), &state_dict(&m), None).unwrap();
        let spec = dir.path().to_str().unwrap();
        let e = load_teacher(spec, &student, DistillKind::Hard, 0.5, 1.0, &device)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("predicts 3 classes but this run has 5"), "{e}");
        // The same checkpoint is a fine teacher for a 3-class student.
        let ok = VitConfig {
            num_classes: 3,
            ..student
        };
        let t = load_teacher(spec, &ok, DistillKind::Hard, 0.5, 1.0, &device).unwrap();
        assert!(matches!(t.model, Model::CnnFast(_)));
    }

    #[test]
    fn agreement_is_the_share_of_equal_predictions() {
        assert_eq!(agreement(&[1, 2, 3, 4], &[1, 0, 3, 0]), 0.5);
    }
}
