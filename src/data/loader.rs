//! Batches from a `Dataset`: deterministic order, per-sample augmentation on a thread pool,
//! prefetched on a background thread so the training step never waits for data.
//!
//! Everything random is addressed: the epoch's order by (seed, epoch), a sample's
//! augmentation by (seed, epoch, sample index), Mixup/CutMix by (seed, epoch, batch index).
//! A batch is therefore a pure function of (epoch, batch index): resuming mid-epoch, or
//! changing the number of loader threads, cannot change it.
//!
//! In a data-parallel job each rank takes every `world`-th sample of the epoch's one global
//! order, starting at its rank (torch's DistributedSampler, without its padding): batch `b`
//! of all ranks together is exactly batch `b` of one process with `world ×` the batch size.
//! Ranks whose shard is one sample shorter get an empty last batch, so that every rank
//! takes the same number of steps.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::augment::mix::soft_targets;
use super::augment::{EvalTransform, Image, MixConfig, TrainTransform};
use super::batch::HostBatch;
use super::dataset::Dataset;
use crate::error::{Error, Result};
use crate::rng::{Rng, stream};

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
    /// This process's shard: (rank, number of ranks).
    shard: (usize, usize),
}

impl Loader {
    pub fn new(data: Arc<Dataset>, transform: SampleTransform, config: LoaderConfig) -> Self {
        Loader {
            data,
            transform: Arc::new(transform),
            config,
            shard: (0, 1),
        }
    }

    /// Only the samples of `rank` out of `world` ranks (see the module notes).
    pub fn shard(mut self, rank: usize, world: usize) -> Self {
        self.shard = (rank.min(world.max(1) - 1), world.max(1));
        self
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
            shard: self.shard,
        }
    }

    /// (rank, number of ranks) of this loader's shard.
    pub fn shard_of(&self) -> (usize, usize) {
        self.shard
    }

    /// Batches per epoch, the same on every rank (the longest shard's).
    pub fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    pub fn num_batches(&self) -> usize {
        self.data
            .len()
            .div_ceil(self.shard.1)
            .div_ceil(self.config.batch_size)
    }

    /// The sample order of an epoch on this rank (identity when not shuffling, one rank).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let all: Vec<usize> = if self.config.shuffle {
            Rng::at(self.config.seed, stream::SHUFFLE, &[epoch as u64]).permutation(self.data.len())
        } else {
            (0..self.data.len()).collect()
        };
        let (rank, world) = self.shard;
        all.into_iter().skip(rank).step_by(world).collect()
    }

    /// Batch `b` of `epoch`, given this rank's order of that epoch (may be empty on the last
    /// batch of a shorter shard).
    pub fn batch(&self, epoch: usize, b: usize, order: &[usize]) -> HostBatch {
        let bs = self.config.batch_size;
        let end = ((b + 1) * bs).min(order.len());
        let indices = &order[(b * bs).min(end)..end];
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
            // The mixing randomness is the global batch's, the same on every rank.
            Some(mix) if !indices.is_empty() => {
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
            _ => soft_targets(&labels, c.num_classes, c.label_smoothing),
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
    pub fn epoch(&self, epoch: usize, start: usize) -> Batches {
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let me = self.clone();
        let worker = std::thread::Builder::new()
            .name(LOADER_THREAD.into())
            .spawn(move || {
                let order = me.order(epoch);
                for b in start..me.num_batches() {
                    if tx.send(me.batch(epoch, b, &order)).is_err() {
                        break; // the trainer stopped early
                    }
                }
            });
        Batches {
            rx,
            worker: Some(worker),
        }
    }
}

/// The name of the loader's background threads (`main` keeps their panics off stderr:
/// [`Batches::finish`] reports them).
pub const LOADER_THREAD: &str = "vitrs-loader";

/// The batches of one epoch, made on a background thread. The loop ends early if that thread
/// fails (a sample that cannot be transformed, say): [`Batches::finish`] after the loop
/// turns that into an error, so a failed epoch never passes for a short one.
pub struct Batches {
    rx: Receiver<HostBatch>,
    worker: Option<std::io::Result<JoinHandle<()>>>,
}

impl Iterator for Batches {
    type Item = HostBatch;

    fn next(&mut self) -> Option<HostBatch> {
        self.rx.recv().ok()
    }
}

impl Batches {
    /// Whether the thread made every batch it was asked for.
    pub fn finish(self) -> Result<()> {
        let Batches { rx, worker } = self;
        drop(rx); // a thread still sending (the loop stopped early) ends now
        let failed = |why: String| Error::Data(format!("the data loader failed: {why}"));
        match worker {
            Some(Ok(handle)) => handle.join().map_err(|p| failed(panic_text(&*p))),
            Some(Err(e)) => Err(failed(format!("cannot start its thread ({e})"))),
            None => Ok(()),
        }
    }
}

/// The message of a panic payload.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// 37 one-pixel images whose label is their index, so a batch's labels name its samples.
    fn loader(batch_size: usize) -> Loader {
        let n = 37;
        let data = Dataset {
            images: (0..n as u8).collect(),
            labels: (0..n as u16).collect(),
            height: 1,
            width: 1,
            channels: 1,
            class_names: (0..n).map(|i| i.to_string()).collect(),
        };
        let cfg = LoaderConfig {
            batch_size,
            shuffle: true,
            seed: 7,
            num_classes: n,
            label_smoothing: 0.0,
            mix: None,
            out_size: 1,
            prefetch: 1,
        };
        let tf = crate::data::recipe::eval_transform(&Config::default(), &[0.0], &[1.0], 1);
        Loader::new(Arc::new(data), SampleTransform::Eval(tf), cfg)
    }

    /// A batch that cannot be made (here: a data set whose bytes are fewer than its images
    /// need) ends the epoch with an error naming the loader, not with a short epoch.
    #[test]
    fn a_failing_batch_is_an_error_after_the_loop() {
        let mut l = loader(8);
        let mut data = (*l.data).clone();
        data.images.truncate(20);
        l.data = Arc::new(data);
        let mut batches = l.epoch(0, 0);
        let made = (&mut batches).count();
        assert!(made < l.num_batches(), "{made} batches");
        let e = batches.finish().unwrap_err().to_string();
        assert!(e.contains("the data loader failed"), "{e}");
        // A complete epoch finishes cleanly.
        let mut ok = loader(8).epoch(0, 0);
        assert_eq!((&mut ok).count(), 5);
        ok.finish().unwrap();
    }

    #[test]
    fn shards_together_make_the_single_process_batches() {
        let one = loader(12);
        // 3 ranks × 4 = one process × 12: batch b of all ranks is the same set of samples.
        let ranks: Vec<Loader> = (0..3).map(|r| loader(4).shard(r, 3)).collect();
        assert!(ranks.iter().all(|l| l.num_batches() == 4)); // ceil(ceil(37/3)/4)
        assert_eq!(one.num_batches(), 4);
        for epoch in [1, 2] {
            let order = one.order(epoch);
            let mut seen = Vec::new();
            for b in 0..4 {
                let mut want = one.batch(epoch, b, &order).labels;
                let mut got: Vec<usize> = ranks
                    .iter()
                    .flat_map(|l| l.batch(epoch, b, &l.order(epoch)).labels)
                    .collect();
                want.sort();
                got.sort();
                assert_eq!(got, want, "epoch {epoch} batch {b}");
                seen.extend(got);
            }
            // Every sample exactly once per epoch, none padded in.
            seen.sort();
            assert_eq!(seen, (0..37).collect::<Vec<_>>());
        }
        // 37 = 13 + 12 + 12: ranks 1 and 2 end with a batch of 0 (13 = 4+4+4+1, 12 = 4+4+4+0).
        let last: Vec<usize> = ranks
            .iter()
            .map(|l| l.batch(1, 3, &l.order(1)).len())
            .collect();
        assert_eq!(last, [1, 0, 0]);
    }
}
