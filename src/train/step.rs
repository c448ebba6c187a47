//! One training step over one batch, as a pure function: forward, loss, backward →
//! gradients by path. It knows nothing of epochs, logging, optimizers or ranks; the trainer,
//! gradient accumulation and data parallelism wrap it.

use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::distill::{Teacher, distill_loss, prediction};
use super::loss::soft_cross_entropy;
use crate::data::batch::HostBatch;
use crate::model::Model;
use crate::model::cnn::running_stats_update;
use crate::model::layers::Ctx;
use crate::model::params::gradients;

#[derive(Default)]
pub struct StepOutput {
    /// Mean loss over the batch.
    pub loss: f64,
    /// Top-1 predictions equal to the hard labels.
    pub correct: usize,
    /// Gradients of the mean loss, by parameter path.
    pub grads: BTreeMap<String, Tensor<1>>,
    /// New BatchNorm running statistics by path (empty for a ViT): the caller sets them after
    /// the optimizer step (data parallelism averages them like gradients).
    pub buffers: BTreeMap<String, Tensor<1>>,
    /// Batch means for the log: with a teacher `loss_ce`, `loss_distill`, `teacher_acc`,
    /// `agreement`, and `teacher_s` (seconds spent in the teacher's forward).
    pub extra: BTreeMap<String, f64>,
}

/// Number of rows whose argmax equals the label.
pub fn count_correct(logits: Tensor<2>, labels: &[usize]) -> usize {
    let pred: Tensor<2, Int> = logits.argmax(1);
    let pred = pred
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap_or_default();
    pred.iter()
        .zip(labels)
        .filter(|(p, y)| **p as usize == **y)
        .count()
}

/// Forward + backward on `device` (an autodiff device); `ctx` carries the step's dropout RNG,
/// its precision and loss scale.
pub fn train_step(model: &Model, batch: &HostBatch, device: &Device, ctx: &Ctx) -> StepOutput {
    train_step_with(model, batch, device, ctx, None)
}

/// [`train_step`] with an optional teacher (knowledge distillation, `train::distill`).
pub fn train_step_with(
    model: &Model,
    batch: &HostBatch,
    device: &Device,
    ctx: &Ctx,
    teacher: Option<&Teacher>,
) -> StepOutput {
    train_step_masked(model, batch, device, ctx, teacher, None)
}

/// [`train_step_with`] with an optional additive `n × classes` logit mask on the student's
/// heads (task-IL: each row sees only its task's classes).
pub fn train_step_masked(
    model: &Model,
    batch: &HostBatch,
    device: &Device,
    ctx: &Ctx,
    teacher: Option<&Teacher>,
    mask: Option<&[f32]>,
) -> StepOutput {
    let mut out = model.forward_heads(batch.images_tensor(device), ctx);
    if let Some(m) = mask {
        let m = Tensor::<2>::from_data(
            TensorData::new(m.to_vec(), [batch.len(), batch.num_classes]),
            device,
        );
        out.logits = out.logits + m.clone();
        out.dist_logits = out.dist_logits.map(|d| d + m);
    }
    let targets = batch.targets_tensor(device);
    let (loss, extra) = match (teacher, &out.dist_logits) {
        (Some(t), _) => {
            let parts = distill_loss(&out, targets, batch, t, device);
            (parts.loss, parts.extra)
        }
        // A distillation token without a teacher learns the true labels, like the class token.
        (None, Some(d)) => {
            let both = soft_cross_entropy(out.logits.clone(), targets.clone())
                + soft_cross_entropy(d.clone(), targets);
            (both * 0.5, BTreeMap::new())
        }
        (None, None) => (
            soft_cross_entropy(out.logits.clone(), targets),
            BTreeMap::new(),
        ),
    };
    // f16 loss scaling: backward from `scale·loss`, so small gradients survive f16, then
    // divide in f32 (an overflow stays inf and the trainer skips the step).
    let scale = ctx.loss_scale;
    let grads = if scale == 1.0 {
        loss.backward()
    } else {
        (loss.clone() * scale).backward()
    };
    let mut grads = gradients(model, &grads);
    if scale != 1.0 {
        for g in grads.values_mut() {
            *g = g.clone() * (1.0 / scale);
        }
    }
    let loss: f32 = loss.inner().into_scalar();
    StepOutput {
        loss: loss as f64,
        correct: count_correct(prediction(&out).inner(), &batch.labels),
        grads,
        buffers: running_stats_update(model, ctx),
        extra,
    }
}
