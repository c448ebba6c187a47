//! Batches from a `Dataset`: deterministic order, per-sample augmentation on a thread pool,
//! prefetched on a background thread so the training step never waits for data.
//!
//! Everything random is addressed: the epoch's order by (seed, epoch), a sample's
//! augmentation by (seed, epoch, sample index), Mixup/CutMix by (seed, epoch, batch index).
//! A batch is therefore a pure function of (epoch, batch index): resuming mid-epoch, or
//! changing the number of loader threads, cannot change it.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use rayon::prelude::*;

use super::augment::mix::soft_targets;
use super::augment::{EvalTransform, Image, MixConfig, TrainTransform};
use super::dataset::Dataset;
use crate::rng::{Rng, stream};
use crate::train::step::HostBatch;

pub enum SampleTransform {
    Train(Box<TrainTransform>),
    Eval(EvalTransform),
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub num_classes: usize,
    pub label_smoothing: f64,
    pub mix: Option<MixConfig>,
    /// Side of the square images the model takes.
    pub out_size: usize,
    /// Batches prepared ahead of the one being trained on.
    pub prefetch: usize,
}

#[derive(Clone)]
pub struct Loader {
    data: Arc<Dataset>,
    transform: Arc<SampleTransform>,
    pub config: LoaderConfig,
}

impl Loader {
    pub fn new(data: Arc<Dataset>, transform: SampleTransform, config: LoaderConfig) -> Self {
        Loader {
            data,
            transform: Arc::new(transform),
            config,
        }
    }

    pub fn dataset(&self) -> &Dataset {
        &self.data
    }

    /// The same transform and settings over other data (a task's classes, a replay buffer).
    pub fn with_data(&self, data: Arc<Dataset>, batch_size: usize) -> Loader {
        let mut config = self.config.clone();
        config.batch_size = batch_size.max(1);
        Loader {
            data,
            transform: self.transform.clone(),
            config,
        }
    }

    pub fn num_batches(&self) -> usize {
        self.data.len().div_ceil(self.config.batch_size)
    }

    /// The sample order of an epoch (identity when not shuffling).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        if self.config.shuffle {
            Rng::at(self.config.seed, stream::SHUFFLE, &[epoch as u64]).permutation(self.data.len())
        } else {
            (0..self.data.len()).collect()
        }
    }

    /// Batch `b` of `epoch`, given that epoch's order.
    pub fn batch(&self, epoch: usize, b: usize, order: &[usize]) -> HostBatch {
        let bs = self.config.batch_size;
        let indices = &order[b * bs..((b + 1) * bs).min(order.len())];
        self.make_batch(epoch, b, indices)
    }

    pub fn make_batch(&self, epoch: usize, batch_index: usize, indices: &[usize]) -> HostBatch {
        let d = &self.data;
        let c = &self.config;
        let per = d.channels * c.out_size * c.out_size;
        let mut images = vec![0f32; indices.len() * per];
        images
            .par_chunks_mut(per)
            .zip(indices.par_iter())
            .for_each(|(out, &i)| {
                let img = Image::from_slice(d.height, d.width, d.channels, d.image(i));
                match self.transform.as_ref() {
                    SampleTransform::Train(t) => {
                        let mut rng = Rng::at(c.seed, stream::AUGMENT, &[epoch as u64, i as u64]);
                        t.apply(&img, &mut rng, out);
                    }
                    SampleTransform::Eval(t) => t.apply(&img, out),
                }
            });
        let labels: Vec<usize> = indices.iter().map(|&i| d.labels[i] as usize).collect();
        let shape = [indices.len(), d.channels, c.out_size, c.out_size];
        let targets = match &c.mix {
            Some(mix) => {
                let mut rng = Rng::at(c.seed, stream::MIX, &[epoch as u64, batch_index as u64]);
                let (targets, _) = mix.apply(
                    &mut images,
                    shape[0],
                    shape[1],
                    shape[2],
                    shape[3],
                    &labels,
                    &mut rng,
                );
                targets
            }
            None => soft_targets(&labels, c.num_classes, c.label_smoothing),
        };
        HostBatch {
            images,
            shape,
            targets,
            num_classes: c.num_classes,
            labels,
        }
    }

    /// The batches of `epoch` from `start` on, prepared on a background thread.
    pub fn epoch(&self, epoch: usize, start: usize) -> Receiver<HostBatch> {
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let me = self.clone();
        std::thread::spawn(move || {
            let order = me.order(epoch);
            for b in start..me.num_batches() {
                if tx.send(me.batch(epoch, b, &order)).is_err() {
                    break; // the trainer stopped early
                }
            }
        });
        rx
    }
}
