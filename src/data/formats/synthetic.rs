//! A learnable dataset made in memory, for smoke tests and benchmarks without downloads.
//!
//! Each class has a prototype drawn from the seed alone (so every split shares it): a square
//! of a class colour at a class position, over a background of class-specific stripes. Each
//! image shifts the square by a few pixels, scales its brightness and adds pixel noise, so
//! the images of a class differ but the class is recoverable from the pixels.

use crate::data::dataset::Dataset;
use crate::rng::{Rng, stream};

/// First coordinates of the random streams, so prototypes, labels and images never share one.
const PROTOTYPE: u64 = 0;
const LABELS: u64 = 1;
const IMAGE: u64 = 2;

/// Standard deviation of the per-pixel noise, in u8 levels.
const NOISE: f64 = 24.0;

struct Prototype {
    /// Square colour, one value per channel.
    colour: Vec<f64>,
    /// Background level per channel.
    background: Vec<f64>,
    /// Top-left corner and side of the square before the per-image shift.
    x: usize,
    y: usize,
    side: usize,
    /// Stripes: 0 horizontal, 1 vertical, 2 diagonal; their period in pixels and phase.
    orientation: usize,
    period: usize,
    phase: usize,
}

impl Prototype {
    fn new(seed: u64, class: usize, size: usize, channels: usize) -> Self {
        let mut rng = Rng::at(seed, stream::SYNTHETIC, &[PROTOTYPE, class as u64]);
        let side = (size / 4).max(2).min(size);
        let period = rng.range_inclusive(2, 5) as usize;
        Prototype {
            colour: (0..channels).map(|_| rng.uniform(90.0, 255.0)).collect(),
            background: (0..channels).map(|_| rng.uniform(10.0, 90.0)).collect(),
            x: rng.below(size - side + 1),
            y: rng.below(size - side + 1),
            side,
            orientation: rng.below(3),
            period,
            phase: rng.below(period),
        }
    }

    fn stripe(&self, x: usize, y: usize) -> bool {
        let t = match self.orientation {
            0 => y,
            1 => x,
            _ => x + y,
        };
        (t + self.phase).is_multiple_of(self.period)
    }
}

/// `n` images of `size`x`size`x`channels` in `num_classes` balanced classes. Prototypes
/// depend on `seed` only; `split_id` picks an independent set of images (e.g. 0 for train,
/// 1 for validation). Deterministic given the arguments.
///
/// # Panics
/// If `num_classes`, `size` or `channels` is 0 or `num_classes` exceeds 65536; callers check
/// the configuration first.
pub fn synthetic(
    n: usize,
    num_classes: usize,
    size: usize,
    channels: usize,
    seed: u64,
    split_id: u64,
) -> Dataset {
    assert!(
        num_classes > 0 && num_classes <= u16::MAX as usize + 1 && size > 0 && channels > 0,
        "synthetic data needs 1..=65536 classes and a non-empty image"
    );
    let prototypes: Vec<Prototype> = (0..num_classes)
        .map(|c| Prototype::new(seed, c, size, channels))
        .collect();
    // A shuffled round-robin: class counts differ by at most one, in random order.
    let order = Rng::at(seed, stream::SYNTHETIC, &[LABELS, split_id]).permutation(n);
    let labels: Vec<u16> = order.iter().map(|&k| (k % num_classes) as u16).collect();
    let mut images = Vec::with_capacity(n * size * size * channels);
    for (i, &label) in labels.iter().enumerate() {
        let mut rng = Rng::at(seed, stream::SYNTHETIC, &[IMAGE, split_id, i as u64]);
        draw(
            &prototypes[label as usize],
            size,
            channels,
            &mut rng,
            &mut images,
        );
    }
    Dataset {
        images,
        labels,
        height: size,
        width: size,
        channels,
        class_names: (0..num_classes).map(|c| format!("class_{c}")).collect(),
    }
}

/// Appends one HWC image of class `p`.
fn draw(p: &Prototype, size: usize, channels: usize, rng: &mut Rng, out: &mut Vec<u8>) {
    let max_shift = (size / 8).max(1) as i64;
    let dx = rng.range_inclusive(-max_shift, max_shift);
    let dy = rng.range_inclusive(-max_shift, max_shift);
    let gain = rng.uniform(0.8, 1.2);
    let x0 = p.x as i64 + dx;
    let y0 = p.y as i64 + dy;
    let side = p.side as i64;
    for y in 0..size {
        for x in 0..size {
            let (xi, yi) = (x as i64, y as i64);
            let in_square = xi >= x0 && xi < x0 + side && yi >= y0 && yi < y0 + side;
            let stripe = p.stripe(x, y);
            for c in 0..channels {
                let base = if in_square {
                    p.colour[c] * gain
                } else if stripe {
                    p.background[c] + 60.0
                } else {
                    p.background[c]
                };
                let v = base + NOISE * rng.normal();
                out.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_split_dependent() {
        let a = synthetic(50, 5, 8, 3, 1, 0);
        let b = synthetic(50, 5, 8, 3, 1, 0);
        assert_eq!(a.images, b.images);
        assert_eq!(a.labels, b.labels);
        assert_eq!((a.height, a.width, a.channels, a.len()), (8, 8, 3, 50));
        assert_eq!(a.images.len(), 50 * 8 * 8 * 3);
        assert_eq!(a.class_names[4], "class_4");
        let val = synthetic(50, 5, 8, 3, 1, 1);
        assert_ne!(a.images, val.images);
        let other_seed = synthetic(50, 5, 8, 3, 2, 0);
        assert_ne!(a.images, other_seed.images);
    }

    #[test]
    fn labels_are_balanced_and_images_vary_within_a_class() {
        let d = synthetic(103, 10, 8, 1, 3, 0);
        let mut counts = [0usize; 10];
        for &l in &d.labels {
            counts[l as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c == 10 || c == 11), "{counts:?}");
        let first: Vec<usize> = (0..d.len()).filter(|&i| d.labels[i] == 0).collect();
        assert_ne!(d.image(first[0]), d.image(first[1]));
        // Not sorted by class either.
        assert!(d.labels.windows(2).any(|w| w[0] > w[1]));
    }

    /// Nearest class mean on raw pixels, fitted on one split and scored on another: the
    /// class signal survives the noise and shifts.
    fn nearest_mean_accuracy(classes: usize, size: usize, channels: usize) -> f64 {
        let train = synthetic(100 * classes, classes, size, channels, 7, 0);
        let val = synthetic(500, classes, size, channels, 7, 1);
        let dim = train.image_bytes();
        let mut means = vec![vec![0f64; dim]; classes];
        let mut counts = vec![0f64; classes];
        for i in 0..train.len() {
            let l = train.labels[i] as usize;
            counts[l] += 1.0;
            for (m, &v) in means[l].iter_mut().zip(train.image(i)) {
                *m += v as f64;
            }
        }
        for (m, c) in means.iter_mut().zip(&counts) {
            m.iter_mut().for_each(|v| *v /= c);
        }
        let correct = (0..val.len())
            .filter(|&i| {
                let dist = |m: &Vec<f64>| -> f64 {
                    m.iter()
                        .zip(val.image(i))
                        .map(|(a, &b)| (a - b as f64).powi(2))
                        .sum()
                };
                let best = (0..classes)
                    .min_by(|&a, &b| dist(&means[a]).total_cmp(&dist(&means[b])))
                    .unwrap();
                best == val.labels[i] as usize
            })
            .count();
        correct as f64 / val.len() as f64
    }

    #[test]
    fn a_nearest_prototype_classifier_learns_it() {
        let rgb = nearest_mean_accuracy(10, 16, 3);
        assert!(rgb >= 0.9, "RGB accuracy {rgb}");
        let gray = nearest_mean_accuracy(10, 16, 1);
        assert!(gray >= 0.9, "grayscale accuracy {gray}");
    }
}
