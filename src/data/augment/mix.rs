//! Mixup / CutMix as timm's `Mixup` in `mode='batch'`: one lambda per batch, sample `i`
//! mixed with sample `n-1-i` (the flipped batch), soft targets with label smoothing.
//!
//! The caller creates the batch's generator as `Rng::at(seed, stream::MIX, &[epoch, batch])`.
//! Draw order as timm's `_params_per_batch` + `rand_bbox`: apply coin, (switch coin when both
//! alphas are on), Beta lambda, then for CutMix the box centre (y, then x).

use crate::rng::Rng;

/// timm `Mixup(mixup_alpha, cutmix_alpha, prob, switch_prob, mode='batch',
/// correct_lam=True, label_smoothing, num_classes)`.
#[derive(Clone, Debug, PartialEq)]
pub struct MixConfig {
    /// Mixup is on when > 0; lambda ~ Beta(alpha, alpha).
    pub mixup_alpha: f64,
    /// CutMix is on when > 0; lambda ~ Beta(alpha, alpha).
    pub cutmix_alpha: f64,
    /// Probability a batch is mixed at all.
    pub prob: f64,
    /// With both on, probability of CutMix instead of Mixup.
    pub switch_prob: f64,
    pub label_smoothing: f64,
    pub num_classes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MixKind {
    None,
    Mixup,
    CutMix,
}

/// What was done to a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixInfo {
    pub kind: MixKind,
    /// Weight of each sample's own label (1 when unmixed; box-corrected for CutMix).
    pub lam: f64,
    /// CutMix box `(y_lo, y_hi, x_lo, x_hi)`, half-open, pasted from the partner sample.
    pub bbox: Option<(usize, usize, usize, usize)>,
}

/// Label-smoothed one-hot targets, `n * num_classes` row-major: `off = smoothing / K`,
/// `on = 1 - smoothing + off` (timm `one_hot` in `mixup_target`).
pub fn soft_targets(labels: &[usize], num_classes: usize, smoothing: f64) -> Vec<f32> {
    let mut out = vec![0f32; labels.len() * num_classes];
    mix_targets_into(labels, num_classes, smoothing, 1.0, &mut out);
    out
}

/// timm `mixup_target`: `lam * y + (1 - lam) * y_flipped` of smoothed one-hots, into `out`.
pub fn mix_targets_into(
    labels: &[usize],
    num_classes: usize,
    smoothing: f64,
    lam: f64,
    out: &mut [f32],
) {
    let n = labels.len();
    assert_eq!(out.len(), n * num_classes, "targets length");
    let off = smoothing / num_classes as f64;
    let on = 1.0 - smoothing + off;
    for (i, row) in out.chunks_exact_mut(num_classes).enumerate() {
        let (a, b) = (labels[i], labels[n - 1 - i]);
        for (k, t) in row.iter_mut().enumerate() {
            let ya = if k == a { on } else { off };
            let yb = if k == b { on } else { off };
            *t = (lam * ya + (1.0 - lam) * yb) as f32;
        }
    }
}

/// timm `rand_bbox` (margin 0): a box of sides `int(H * sqrt(1 - lam))` x
/// `int(W * sqrt(1 - lam))` centred uniformly in the image, clipped to it.
/// Returns `(y_lo, y_hi, x_lo, x_hi)`.
pub fn rand_bbox(h: usize, w: usize, lam: f64, rng: &mut Rng) -> (usize, usize, usize, usize) {
    let ratio = (1.0 - lam).max(0.0).sqrt();
    let (cut_h, cut_w) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
    let cy = rng.below(h) as i64;
    let cx = rng.below(w) as i64;
    let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as usize;
    (
        clip(cy - cut_h / 2, h),
        clip(cy + cut_h / 2, h),
        clip(cx - cut_w / 2, w),
        clip(cx + cut_w / 2, w),
    )
}

impl MixConfig {
    /// Whether this config ever mixes.
    pub fn enabled(&self) -> bool {
        self.prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0)
    }

    /// timm `_params_per_batch`: `(lam, use_cutmix)`; `lam == 1` means no mixing.
    pub fn params(&self, rng: &mut Rng) -> (f64, bool) {
        if !self.enabled() || rng.f64() >= self.prob {
            return (1.0, false);
        }
        let (mix, cut) = (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0);
        let use_cutmix = if mix && cut {
            rng.f64() < self.switch_prob
        } else {
            cut
        };
        let alpha = if use_cutmix {
            self.cutmix_alpha
        } else {
            self.mixup_alpha
        };
        (rng.beta(alpha, alpha), use_cutmix)
    }

    /// Mixes a normalized NCHW batch in place and returns its soft targets
    /// (`n * num_classes`).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        batch: &mut [f32],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        labels: &[usize],
        rng: &mut Rng,
    ) -> (Vec<f32>, MixInfo) {
        let mut targets = vec![0f32; n * self.num_classes];
        let info = self.apply_into(batch, (n, c, h, w), labels, rng, &mut targets);
        (targets, info)
    }

    /// `apply` writing the targets into a caller-owned buffer.
    pub fn apply_into(
        &self,
        batch: &mut [f32],
        (n, c, h, w): (usize, usize, usize, usize),
        labels: &[usize],
        rng: &mut Rng,
        targets: &mut [f32],
    ) -> MixInfo {
        assert_eq!(batch.len(), n * c * h * w, "batch length");
        assert_eq!(labels.len(), n, "one label per sample");
        let (lam, use_cutmix) = self.params(rng);
        let mut info = MixInfo {
            kind: MixKind::None,
            lam: 1.0,
            bbox: None,
        };
        if lam != 1.0 {
            if use_cutmix {
                let bbox = rand_bbox(h, w, lam, rng);
                let (yl, yh, xl, xh) = bbox;
                swap_boxes(batch, (n, c, h, w), bbox);
                info = MixInfo {
                    kind: MixKind::CutMix,
                    lam: 1.0 - ((yh - yl) * (xh - xl)) as f64 / (h * w) as f64,
                    bbox: Some(bbox),
                };
            } else {
                blend_pairs(batch, n, lam);
                info = MixInfo {
                    kind: MixKind::Mixup,
                    lam,
                    bbox: None,
                };
            }
        }
        mix_targets_into(
            labels,
            self.num_classes,
            self.label_smoothing,
            info.lam,
            targets,
        );
        info
    }
}

/// The two samples `i < j` of the batch as mutable slices.
fn pair_mut(batch: &mut [f32], len: usize, i: usize, j: usize) -> (&mut [f32], &mut [f32]) {
    let (lo, hi) = batch.split_at_mut(j * len);
    (&mut lo[i * len..(i + 1) * len], &mut hi[..len])
}

/// `x = lam * x + (1 - lam) * x.flip(0)`, both factors rounded to f32 as torch does with a
/// Python scalar. Pairs are updated together so both read the originals.
fn blend_pairs(batch: &mut [f32], n: usize, lam: f64) {
    let len = batch.len() / n.max(1);
    let (a, b) = (lam as f32, (1.0 - lam) as f32);
    for i in 0..n / 2 {
        let (xi, xj) = pair_mut(batch, len, i, n - 1 - i);
        for (p, q) in xi.iter_mut().zip(xj.iter_mut()) {
            let (vi, vj) = (*p, *q);
            *p = vi * a + vj * b;
            *q = vj * a + vi * b;
        }
    }
    if n % 2 == 1 {
        // The middle sample is its own partner (timm requires even batches).
        let mid = &mut batch[(n / 2) * len..(n / 2 + 1) * len];
        mid.iter_mut().for_each(|v| *v = *v * a + *v * b);
    }
}

/// `x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]`: swap the box between partners.
fn swap_boxes(
    batch: &mut [f32],
    (n, c, h, w): (usize, usize, usize, usize),
    (yl, yh, xl, xh): (usize, usize, usize, usize),
) {
    let len = c * h * w;
    for i in 0..n / 2 {
        let (xi, xj) = pair_mut(batch, len, i, n - 1 - i);
        for ch in 0..c {
            for y in yl..yh {
                let r = (ch * h + y) * w;
                xi[r + xl..r + xh].swap_with_slice(&mut xj[r + xl..r + xh]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    fn rng(i: u64) -> Rng {
        Rng::at(5, stream::MIX, &[0, i])
    }

    fn batch(n: usize, len: usize) -> Vec<f32> {
        (0..n * len)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
            .collect()
    }

    fn config(mixup: f64, cutmix: f64) -> MixConfig {
        MixConfig {
            mixup_alpha: mixup,
            cutmix_alpha: cutmix,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.1,
            num_classes: 10,
        }
    }

    #[test]
    fn soft_targets_smooth_one_hot() {
        let t = soft_targets(&[2, 0], 4, 0.1);
        let (off, on) = (0.025f32, 0.925f32);
        assert_eq!(t, vec![off, off, on, off, on, off, off, off]);
        assert_eq!(soft_targets(&[1], 3, 0.0), vec![0.0, 1.0, 0.0]);
    }

    #[test]
    fn mixup_pixels_and_targets() {
        let (n, c, h, w) = (6, 3, 4, 5);
        let labels = [0, 1, 2, 3, 4, 5];
        let cfg = config(0.8, 0.0);
        for s in 0..50 {
            let orig = batch(n, c * h * w);
            let mut x = orig.clone();
            let (t, info) = cfg.apply(&mut x, n, c, h, w, &labels, &mut rng(s));
            assert_eq!(info.kind, MixKind::Mixup);
            let lam = info.lam;
            assert!((0.0..=1.0).contains(&lam));
            let len = c * h * w;
            for i in 0..n {
                let j = n - 1 - i;
                for k in 0..len {
                    let want =
                        lam * orig[i * len + k] as f64 + (1.0 - lam) * orig[j * len + k] as f64;
                    assert!((x[i * len + k] as f64 - want).abs() < 1e-5);
                }
            }
            let a = soft_targets(&labels, 10, 0.1);
            let flipped: Vec<usize> = labels.iter().rev().copied().collect();
            let b = soft_targets(&flipped, 10, 0.1);
            for (row, chunk) in t.chunks_exact(10).enumerate() {
                assert!((chunk.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                for k in 0..10 {
                    let want = lam * a[row * 10 + k] as f64 + (1.0 - lam) * b[row * 10 + k] as f64;
                    assert!((chunk[k] as f64 - want).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn cutmix_lambda_is_the_unpasted_area_and_patch_comes_from_partner() {
        let (n, c, h, w) = (4, 2, 16, 12);
        let labels = [3, 1, 4, 1];
        let cfg = config(0.0, 1.0);
        let mut boxes = 0;
        for s in 0..200 {
            let orig = batch(n, c * h * w);
            let mut x = orig.clone();
            let (t, info) = cfg.apply(&mut x, n, c, h, w, &labels, &mut rng(s));
            assert_eq!(info.kind, MixKind::CutMix);
            let (yl, yh, xl, xh) = info.bbox.unwrap();
            assert!(yl <= yh && yh <= h && xl <= xh && xh <= w);
            let area = (yh - yl) * (xh - xl);
            assert_eq!(info.lam, 1.0 - area as f64 / (h * w) as f64);
            boxes += (area > 0) as usize;
            let len = c * h * w;
            for i in 0..n {
                let j = n - 1 - i;
                for ch in 0..c {
                    for y in 0..h {
                        for xx in 0..w {
                            let k = (ch * h + y) * w + xx;
                            let inside = (yl..yh).contains(&y) && (xl..xh).contains(&xx);
                            let src = if inside { j } else { i };
                            assert_eq!(x[i * len + k], orig[src * len + k]);
                        }
                    }
                }
            }
            for row in t.chunks_exact(10) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
            // Sample 0 (label 3) is partnered with sample 3 (label 1).
            let off = 0.01;
            let want3 = info.lam * (0.9 + off) + (1.0 - info.lam) * off;
            assert!((t[3] as f64 - want3).abs() < 1e-6);
        }
        assert!(boxes > 150);
    }

    #[test]
    fn switch_prob_and_prob_are_respected() {
        let mut cfg = config(0.8, 1.0);
        cfg.prob = 0.6;
        let (n, c, h, w) = (2, 1, 8, 8);
        let labels = [0, 1];
        let mut counts = [0usize; 3];
        let trials = 3000;
        for s in 0..trials {
            let orig = batch(n, c * h * w);
            let mut x = orig.clone();
            let (t, info) = cfg.apply(&mut x, n, c, h, w, &labels, &mut rng(s));
            match info.kind {
                MixKind::None => {
                    counts[0] += 1;
                    assert_eq!(x, orig);
                    assert_eq!(t, soft_targets(&labels, 10, 0.1));
                }
                MixKind::Mixup => counts[1] += 1,
                MixKind::CutMix => counts[2] += 1,
            }
        }
        let f = |k: usize| counts[k] as f64 / trials as f64;
        assert!((f(0) - 0.4).abs() < 0.03, "{counts:?}");
        assert!((f(1) - 0.3).abs() < 0.03, "{counts:?}");
        assert!((f(2) - 0.3).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn odd_batches_keep_the_middle_sample() {
        let (n, c, h, w) = (3, 1, 4, 4);
        let cfg = config(0.0, 1.0);
        let orig = batch(n, 16);
        let mut x = orig.clone();
        cfg.apply(&mut x, n, c, h, w, &[0, 1, 2], &mut rng(0));
        assert_eq!(&x[16..32], &orig[16..32]);
    }
}
