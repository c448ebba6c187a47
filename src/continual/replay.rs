//! The experience-replay buffer: at most `capacity` raw u8 images with their labels,
//! class-balanced. Each class seen so far gets an equal share of the capacity (the first
//! `capacity mod classes` classes, in label order, one more) and keeps a reservoir sample of
//! its stream within that share; a new class shrinks the others' shares by dropping random
//! members, so every class's slots remain a uniform sample of what it has seen.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::dataset::Dataset;
use crate::error::{Error, Result};
use crate::rng::Rng;

#[derive(Clone, Debug, Default, PartialEq)]
struct ClassSlots {
    /// Images of this class offered to the buffer so far (the reservoir's stream length).
    seen: u64,
    /// The kept images, HWC bytes each.
    images: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReplayBuffer {
    pub capacity: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    classes: BTreeMap<u16, ClassSlots>,
}

/// `replay.json` in a checkpoint (the bytes go to `replay.u8`, class by class).
#[derive(Serialize, Deserialize)]
struct Meta {
    capacity: usize,
    height: usize,
    width: usize,
    channels: usize,
    /// (label, seen, kept)
    classes: Vec<(u16, u64, usize)>,
}

impl ReplayBuffer {
    pub fn new(capacity: usize, height: usize, width: usize, channels: usize) -> Self {
        ReplayBuffer {
            capacity,
            height,
            width,
            channels,
            classes: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.classes.values().map(|c| c.images.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Kept images per class label.
    pub fn counts(&self) -> BTreeMap<u16, usize> {
        self.classes
            .iter()
            .map(|(k, c)| (*k, c.images.len()))
            .collect()
    }

    /// The share of class number `rank` (in label order) among `n` classes.
    fn quota(&self, rank: usize, n: usize) -> usize {
        self.capacity / n + usize::from(rank < self.capacity % n)
    }

    /// Make room for `labels` as classes (no-op for known ones): every class's slots are
    /// cut to its new share by dropping random members.
    fn register(&mut self, labels: impl Iterator<Item = u16>, rng: &mut Rng) {
        for l in labels {
            self.classes.entry(l).or_default();
        }
        let n = self.classes.len();
        let quotas: Vec<usize> = (0..n).map(|r| self.quota(r, n)).collect();
        for (slots, q) in self.classes.values_mut().zip(quotas) {
            if slots.images.len() > q {
                rng.shuffle(&mut slots.images);
                slots.images.truncate(q);
            }
        }
    }

    /// Offer the images `indices` of `data` (a task's training data) to the buffer, in order.
    pub fn add(&mut self, data: &Dataset, indices: &[usize], rng: &mut Rng) {
        if self.capacity == 0 {
            return;
        }
        self.register(indices.iter().map(|&i| data.labels[i]), rng);
        let n = self.classes.len();
        let ranks: BTreeMap<u16, usize> = self
            .classes
            .keys()
            .enumerate()
            .map(|(r, k)| (*k, r))
            .collect();
        for &i in indices {
            let label = data.labels[i];
            let q = self.quota(ranks[&label], n);
            let slots = self.classes.entry(label).or_default();
            slots.seen += 1;
            if slots.images.len() < q {
                slots.images.push(data.image(i).to_vec());
            } else {
                // Reservoir: the seen-th image replaces a random slot with probability q/seen.
                let j = rng.below(slots.seen as usize);
                if j < q {
                    slots.images[j] = data.image(i).to_vec();
                }
            }
        }
    }

    /// The buffer as a dataset (for the loader that augments replayed images like new ones).
    pub fn to_dataset(&self, class_names: &[String]) -> Dataset {
        let mut images = Vec::with_capacity(self.len() * self.height * self.width * self.channels);
        let mut labels = Vec::with_capacity(self.len());
        for (l, c) in &self.classes {
            for img in &c.images {
                images.extend_from_slice(img);
                labels.push(*l);
            }
        }
        Dataset {
            images,
            labels,
            height: self.height,
            width: self.width,
            channels: self.channels,
            class_names: class_names.to_vec(),
        }
    }

    /// `replay.json` + `replay.u8` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let meta = Meta {
            capacity: self.capacity,
            height: self.height,
            width: self.width,
            channels: self.channels,
            classes: self
                .classes
                .iter()
                .map(|(l, c)| (*l, c.seen, c.images.len()))
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Io(e.to_string()))?;
        crate::util::write_file_synced(&dir.join("replay.json"), &json)?;
        let bytes: Vec<u8> = self
            .classes
            .values()
            .flat_map(|c| c.images.concat())
            .collect();
        crate::util::write_file_synced(&dir.join("replay.u8"), &bytes)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let mp = dir.join("replay.json");
        let s = std::fs::read(&mp).map_err(|e| Error::io(&mp, "reading", e))?;
        let meta: Meta = serde_json::from_slice(&s)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", mp.display())))?;
        let bp = dir.join("replay.u8");
        let bytes = std::fs::read(&bp).map_err(|e| Error::io(&bp, "reading", e))?;
        let per = meta.height * meta.width * meta.channels;
        let total: usize = meta.classes.iter().map(|c| c.2).sum();
        if per == 0 || bytes.len() != total * per {
            return Err(Error::Checkpoint(format!(
                "{} holds {} bytes but replay.json describes {total} images of {per} bytes",
                bp.display(),
                bytes.len()
            )));
        }
        let mut chunks = bytes.chunks_exact(per);
        let mut buf = ReplayBuffer::new(meta.capacity, meta.height, meta.width, meta.channels);
        for (label, seen, kept) in meta.classes {
            let images = chunks.by_ref().take(kept).map(<[u8]>::to_vec).collect();
            buf.classes.insert(label, ClassSlots { seen, images });
        }
        Ok(buf)
    }
}

/// `k` distinct indices below `n` (all of them, shuffled, when `k ≥ n`).
pub fn sample_indices(n: usize, k: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = i + rng.below(n - i);
        v.swap(i, j);
    }
    v.truncate(k);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `per_class` 1×1 grayscale images per class; the pixel is the image's index mod 256.
    fn data(classes: &[u16], per_class: usize) -> Dataset {
        let mut labels = Vec::new();
        for &c in classes {
            labels.extend(std::iter::repeat_n(c, per_class));
        }
        Dataset {
            images: (0..labels.len()).map(|i| i as u8).collect(),
            labels,
            height: 1,
            width: 1,
            channels: 1,
            class_names: (0..10).map(|i| i.to_string()).collect(),
        }
    }

    #[test]
    fn stays_balanced_and_bounded_across_tasks() {
        let mut buf = ReplayBuffer::new(10, 1, 1, 1);
        let mut rng = Rng::seed(1);
        let t0 = data(&[0, 1], 50);
        buf.add(&t0, &(0..100).collect::<Vec<_>>(), &mut rng);
        assert_eq!(buf.counts(), BTreeMap::from([(0, 5), (1, 5)]));
        let t1 = data(&[2, 3, 4], 30);
        buf.add(&t1, &(0..90).collect::<Vec<_>>(), &mut rng);
        // 10 slots over 5 classes: 2 each.
        assert_eq!(buf.len(), 10);
        assert!(buf.counts().values().all(|&c| c == 2), "{:?}", buf.counts());
        let t2 = data(&[5, 6, 7], 30);
        buf.add(&t2, &(0..90).collect::<Vec<_>>(), &mut rng);
        // 10 over 8: the first two labels get 2, the rest 1.
        let c = buf.counts();
        assert_eq!(buf.len(), 10);
        assert_eq!(
            c.values().copied().collect::<Vec<_>>(),
            [2, 2, 1, 1, 1, 1, 1, 1]
        );
        // Every kept image is one of its class's.
        let ds = buf.to_dataset(&t0.class_names);
        for i in 0..ds.len() {
            let (l, px) = (ds.labels[i] as usize, ds.image(i)[0] as usize);
            let src = match l {
                0 | 1 => l * 50..(l + 1) * 50,
                2..=4 => (l - 2) * 30..(l - 1) * 30,
                _ => (l - 5) * 30..(l - 4) * 30,
            };
            assert!(src.contains(&px), "label {l} pixel {px}");
        }
    }

    /// Reservoir sampling keeps each image with probability quota/seen: over many seeds the
    /// first and the last image of a class are kept about equally often.
    #[test]
    fn reservoir_is_uniform_within_a_class() {
        let d = data(&[0], 20);
        let idx: Vec<usize> = (0..20).collect();
        let mut kept = [0usize; 20];
        for s in 0..4000 {
            let mut buf = ReplayBuffer::new(5, 1, 1, 1);
            buf.add(&d, &idx, &mut Rng::seed(s));
            for i in 0..buf.len() {
                kept[buf.to_dataset(&d.class_names).image(i)[0] as usize] += 1;
            }
        }
        // Expected 4000 · 5/20 = 1000 each; binomial sd ≈ 27.
        for (i, k) in kept.iter().enumerate() {
            assert!(
                (880..=1120).contains(k),
                "image {i} kept {k} times: {kept:?}"
            );
        }
    }

    #[test]
    fn save_load_round_trip() {
        let mut buf = ReplayBuffer::new(7, 1, 1, 1);
        buf.add(
            &data(&[3, 1], 9),
            &(0..18).collect::<Vec<_>>(),
            &mut Rng::seed(3),
        );
        let dir = tempfile::tempdir().unwrap();
        buf.save(dir.path()).unwrap();
        assert_eq!(ReplayBuffer::load(dir.path()).unwrap(), buf);
        std::fs::write(dir.path().join("replay.u8"), [1u8, 2]).unwrap();
        let e = ReplayBuffer::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("describes 7 images"), "{e}");
    }

    #[test]
    fn sampled_indices_are_distinct() {
        let mut rng = Rng::seed(9);
        let s = sample_indices(10, 6, &mut rng);
        let mut u = s.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 6);
        assert!(s.iter().all(|&i| i < 10));
        assert_eq!(sample_indices(3, 8, &mut rng).len(), 3);
    }
}
