//! Evaluation of a model on every batch of a loader (all ranks' shards gathered).

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::loader::Loader;
use crate::error::Result;
use crate::model::Model;
use crate::model::layers::Ctx;
use crate::report::metrics::EvalReport;

/// Evaluate `model` (any mode; it is switched to eval) on every batch of `loader`.
pub fn evaluate(model: &Model, loader: &Loader, device: &Device) -> Result<EvalReport> {
    Ok(evaluate_preds(model, loader, device, None)?.0)
}

/// Large enough that softmax gives the masked classes exactly zero, finite so that
/// `0 · log p` stays 0 in the loss.
pub const MASKED: f32 = -1e9;

/// An additive `rows × num_classes` logit mask keeping only `classes` (task-IL).
pub fn class_mask(rows: usize, num_classes: usize, classes: &[usize]) -> Vec<f32> {
    let mut m = vec![MASKED; rows * num_classes];
    for r in 0..rows {
        for &c in classes {
            m[r * num_classes + c] = 0.0;
        }
    }
    m
}

/// [`evaluate`], also returning the top-1 predictions (for the agreement with a teacher);
/// with `classes`, the logits are restricted to those classes (task-IL: the task id is given).
pub fn evaluate_preds(
    model: &Model,
    loader: &Loader,
    device: &Device,
    classes: Option<&[usize]>,
) -> Result<(EvalReport, Vec<usize>)> {
    let model = model.valid();
    let mut preds = Vec::with_capacity(loader.dataset().len());
    let mut labels = Vec::with_capacity(loader.dataset().len());
    let mut loss_sum = 0.0;
    let mut batches = loader.epoch(0, 0);
    for batch in &mut batches {
        if batch.is_empty() {
            continue; // the end of a shorter shard
        }
        let n = batch.len();
        let mut logits = model.forward(batch.images_tensor(device), &Ctx::eval());
        if let Some(c) = classes {
            let m = class_mask(n, batch.num_classes, c);
            logits =
                logits + Tensor::<2>::from_data(TensorData::new(m, [n, batch.num_classes]), device);
        }
        // Plain cross-entropy on the hard labels (no smoothing) for validation.
        let one_hot =
            crate::data::augment::mix::soft_targets(&batch.labels, batch.num_classes, 0.0);
        let t = Tensor::<2>::from_data(TensorData::new(one_hot, [n, batch.num_classes]), device);
        let loss: f32 = super::loss::soft_cross_entropy(logits.clone(), t).into_scalar();
        loss_sum += loss as f64 * n as f64;
        let p: Tensor<2, Int> = logits.argmax(1);
        preds.extend(
            p.into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .unwrap_or_default()
                .into_iter()
                .map(|x| x as usize),
        );
        labels.extend(batch.labels.iter().copied());
    }
    batches.finish()?;
    if loader.shard_of().1 > 1 {
        (preds, labels, loss_sum) = gather_shards(loader, &preds, loss_sum);
    }
    let n = labels.len().max(1);
    let report = EvalReport::from_predictions(
        &preds,
        &labels,
        loader.dataset().class_names.clone(),
        loss_sum / n as f64,
    )?;
    Ok((report, preds))
}

/// Every rank's predictions (of its shard of the unshuffled loader) put back in data-set
/// order on every rank, and the summed loss: one all-reduce, each slot filled by one rank.
fn gather_shards(loader: &Loader, preds: &[usize], loss_sum: f64) -> (Vec<usize>, Vec<usize>, f64) {
    let data = loader.dataset();
    let mut all = vec![0f64; data.len() + 1];
    for (&i, &p) in loader.order(0).iter().zip(preds) {
        all[i] = p as f64;
    }
    all[data.len()] = loss_sum;
    crate::dist::world().all_reduce_sum_f64(&mut all);
    let loss_sum = all.pop().unwrap_or(0.0);
    let labels = data.labels.iter().map(|&l| l as usize).collect();
    (
        all.into_iter().map(|p| p as usize).collect(),
        labels,
        loss_sum,
    )
}
