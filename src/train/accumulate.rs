//! What the loop keeps between optimizer steps while gradients accumulate (over
//! micro-batches and ranks), and the running means it logs.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};

use super::step::StepOutput;
use crate::dist::Comm;

/// What the loop keeps between optimizer steps while gradients accumulate.
#[derive(Default)]
pub(super) struct Accumulator {
    /// Σ n_i · g_i over the micro-batches of this step, or, while `unweighted` is set, the
    /// one micro-batch's mean gradient as the step computed it (a step of one batch then
    /// costs no scaling pass over the gradients).
    pub(super) grads: BTreeMap<String, Tensor<1>>,
    pub(super) unweighted: Option<usize>,
    pub(super) images: usize,
    pub(super) loss_sum: f64,
    pub(super) correct: usize,
    pub(super) micro: usize,
    /// Σ over micro-batches of the new BatchNorm running statistics, and how many
    /// micro-batches produced them (an empty shard produces none).
    pub(super) buffers: BTreeMap<String, Tensor<1>>,
    pub(super) buffer_micro: usize,
    /// Σ n_i · extra_i (distillation losses, agreement, ...).
    pub(super) extra: BTreeMap<String, f64>,
}

fn add_into(map: &mut BTreeMap<String, Tensor<1>>, k: String, t: Tensor<1>) {
    let sum = match map.remove(&k) {
        Some(acc) => acc + t,
        None => t,
    };
    map.insert(k, sum);
}

impl Accumulator {
    pub(super) fn add(&mut self, out: StepOutput, n: usize) {
        if self.grads.is_empty() && self.images == 0 {
            self.grads = out.grads;
            self.unweighted = Some(n);
        } else {
            self.weigh();
            for (k, g) in out.grads {
                add_into(&mut self.grads, k, g * n as f64);
            }
        }
        self.buffer_micro += usize::from(!out.buffers.is_empty());
        for (k, b) in out.buffers {
            add_into(&mut self.buffers, k, b);
        }
        for (k, v) in out.extra {
            // Seconds add up as they are; batch means are weighted by the batch size.
            let w = if k == "teacher_s" { 1.0 } else { n as f64 };
            *self.extra.entry(k).or_default() += v * w;
        }
        self.images += n;
        self.loss_sum += out.loss * n as f64;
        self.correct += out.correct;
        self.micro += 1;
    }

    /// Sum the step's gradients, BatchNorm running statistics, counts and `extra_keys` over
    /// all ranks (one all-reduce of one flat buffer, zeros for a rank whose shard ran out),
    /// so that the means below are over every image of the global batch, however unevenly
    /// they were spread, and every rank sets the same running statistics.
    ///
    /// `layout` is the gradients' layout followed by the statistics' (`grads` entries first).
    pub(super) fn all_reduce(
        &mut self,
        dist: &dyn Comm,
        layout: &[(String, usize)],
        grads: usize,
        extra_keys: &[&str],
        device: &Device,
    ) {
        let mut scalars = vec![
            self.images as f64,
            self.loss_sum,
            self.correct as f64,
            self.buffer_micro as f64,
        ];
        scalars.extend(
            extra_keys
                .iter()
                .map(|k| self.extra.get(*k).copied().unwrap_or(0.0)),
        );
        self.weigh();
        // Statistics' paths are not parameters' paths: they can share the map for the call.
        self.grads.append(&mut self.buffers);
        crate::dist::all_reduce_grads(dist, layout, &mut self.grads, &mut scalars, device);
        for (path, _) in &layout[grads..] {
            if let Some(b) = self.grads.remove(path) {
                self.buffers.insert(path.clone(), b);
            }
        }
        self.images = scalars[0] as usize;
        self.loss_sum = scalars[1];
        self.correct = scalars[2] as usize;
        self.buffer_micro = scalars[3] as usize;
        for (k, v) in extra_keys.iter().zip(&scalars[4..]) {
            // Teacher seconds: the mean over ranks (they run side by side), not their sum.
            let v = if *k == "teacher_s" {
                v / dist.size() as f64
            } else {
                *v
            };
            self.extra.insert(k.to_string(), v);
        }
    }

    /// The running statistics to set after the step: the mean over its micro-batches.
    pub(super) fn mean_buffers(&mut self) -> BTreeMap<String, Tensor<1>> {
        let m = self.buffer_micro.max(1) as f64;
        std::mem::take(&mut self.buffers)
            .into_iter()
            .map(|(k, b)| (k, b / m))
            .collect()
    }

    /// Turn an unweighted single gradient into `n · g` (before adding or reducing).
    pub(super) fn weigh(&mut self) {
        if let Some(n) = self.unweighted.take() {
            let g = std::mem::take(&mut self.grads);
            self.grads = g.into_iter().map(|(k, g)| (k, g * n as f64)).collect();
        }
    }

    /// The mean gradient over every image of the step (what one big batch would give).
    pub(super) fn mean_grads(&mut self) -> BTreeMap<String, Tensor<1>> {
        if self.unweighted.take().is_some() {
            return std::mem::take(&mut self.grads);
        }
        let n = self.images.max(1) as f64;
        std::mem::take(&mut self.grads)
            .into_iter()
            .map(|(k, g)| (k, g / n))
            .collect()
    }
}

/// Running means for the progress bar, the epoch line and the periodic train log.
#[derive(Default)]
pub(super) struct Window {
    pub(super) loss_sum: f64,
    pub(super) correct: usize,
    pub(super) images: usize,
    pub(super) extra: BTreeMap<String, f64>,
}

impl Window {
    pub(super) fn add(&mut self, acc: &Accumulator) {
        self.loss_sum += acc.loss_sum;
        self.correct += acc.correct;
        self.images += acc.images;
        for (k, v) in &acc.extra {
            *self.extra.entry(k.clone()).or_default() += v;
        }
    }
    /// Means per image of the extras; `teacher_s` stays a sum (seconds in the window).
    pub(super) fn extras(&self) -> BTreeMap<String, f64> {
        let n = self.images.max(1) as f64;
        self.extra
            .iter()
            .map(|(k, v)| (k.clone(), if k == "teacher_s" { *v } else { v / n }))
            .collect()
    }
    pub(super) fn loss(&self) -> f64 {
        self.loss_sum / self.images.max(1) as f64
    }
    pub(super) fn acc(&self) -> f64 {
        self.correct as f64 / self.images.max(1) as f64
    }
}
