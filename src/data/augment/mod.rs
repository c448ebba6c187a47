//! Image augmentation: torchvision / timm transforms on u8 HWC images, normalization into
//! CHW f32, random erasing on the normalized sample, Mixup/CutMix on the batch.
//!
//! Randomness is addressed: the caller makes one `Rng` per sample,
//! `Rng::at(seed, stream::AUGMENT, &[epoch, sample_index])`, and one per batch for mixing,
//! `Rng::at(seed, stream::MIX, &[epoch, batch_index])`. Nothing here holds global random
//! state, so a sample's augmentation does not depend on threads, workers or resumption.

pub mod image;
pub mod mix;
pub mod pil;
pub mod randaugment;
pub mod transforms;

use std::cell::RefCell;

pub use image::{Image, Interp, resize, resize_region_into};
pub use mix::{MixConfig, MixInfo, MixKind, mix_targets_into, rand_bbox, soft_targets};
pub use randaugment::{OpKind, OpTrace, RandAugment, Resample};
pub use transforms::{
    ColorJitter, EraseMode, JitterParams, Normalize, color_jitter, crop_padded_into, hflip,
    random_crop, random_crop_params, random_erasing, random_hflip, random_resized_crop,
    random_rotation, rotate, rrc_params,
};

use crate::rng::Rng;

/// torchvision `RandomResizedCrop` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RrcConfig {
    pub scale: (f64, f64),
    /// Aspect ratio (w/h) range.
    pub ratio: (f64, f64),
    pub interp: Interp,
}

impl Default for RrcConfig {
    /// torchvision's defaults: scale (0.08, 1), ratio (3/4, 4/3), bilinear.
    fn default() -> Self {
        RrcConfig {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            interp: Interp::Bilinear,
        }
    }
}

/// timm `RandomErasing` settings (`max_count` 1).
#[derive(Clone, Debug, PartialEq)]
pub struct ErasingConfig {
    pub prob: f64,
    /// Erased area as a fraction of the image.
    pub scale: (f64, f64),
    /// Aspect ratio range of the box.
    pub ratio: (f64, f64),
    pub mode: EraseMode,
}

impl ErasingConfig {
    /// timm's defaults for everything but the probability and mode: area (0.02, 1/3),
    /// aspect (0.3, 1/0.3).
    pub fn timm(prob: f64, mode: EraseMode) -> Self {
        ErasingConfig {
            prob,
            scale: (0.02, 1.0 / 3.0),
            ratio: (0.3, 1.0 / 0.3),
            mode,
        }
    }
}

/// The training transform of one sample. Everything is optional; `Default` is the identity
/// (plain `ToTensor`). Stages run in torchvision/timm order:
///
/// 1. resize to `out_size` (when it differs from the input and there is no RRC),
/// 2. RandomResizedCrop to `out_size`, or else RandomCrop with zero padding,
/// 3. horizontal flip,
/// 4. rotation (nearest, fill 0),
/// 5. RandAugment, or else ColorJitter (timm disables jitter under RandAugment),
/// 6. ToTensor + Normalize,
/// 7. random erasing.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainTransform {
    /// Output `(height, width)`; `None` keeps the input size.
    pub out_size: Option<(usize, usize)>,
    /// Filter of the stage-1 resize (torchvision `Resize` defaults to bilinear).
    pub resize_interp: Interp,
    /// `RandomCrop(size, padding)`, the crop being the current image size.
    pub crop_padding: Option<usize>,
    /// Takes precedence over `crop_padding`.
    pub rrc: Option<RrcConfig>,
    /// `RandomHorizontalFlip(p)`; 0 disables (no draw).
    pub flip_prob: f64,
    /// `RandomRotation(d)`; 0 disables (no draw).
    pub rotation_degrees: f64,
    pub color_jitter: Option<ColorJitter>,
    /// Takes precedence over `color_jitter`. To mirror timm's `create_transform`, give it
    /// the training filter and the dataset mean as fill:
    /// `ra.with_resample(Resample::Fixed(interp)).with_fill_from_mean(&mean)`.
    pub randaugment: Option<RandAugment>,
    /// `None` is `ToTensor` alone (x / 255).
    pub normalize: Option<Normalize>,
    pub erasing: Option<ErasingConfig>,
}

impl Default for TrainTransform {
    fn default() -> Self {
        TrainTransform {
            out_size: None,
            resize_interp: Interp::Bilinear,
            crop_padding: None,
            rrc: None,
            flip_prob: 0.0,
            rotation_degrees: 0.0,
            color_jitter: None,
            randaugment: None,
            normalize: None,
            erasing: None,
        }
    }
}

/// Per-thread scratch images, so the per-sample pipeline does not allocate once warm.
struct Scratch {
    bufs: [Image; 3],
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        bufs: [Image::default(), Image::default(), Image::default()],
    });
}

/// Which image holds the current stage's result: the caller's source or a scratch buffer.
#[derive(Clone, Copy)]
enum Cur {
    Src,
    Buf(usize),
}

/// Runs one stage `f(input, output, scratch)` from the current image into the free buffer.
fn stage(
    src: &Image,
    bufs: &mut [Image; 3],
    cur: &mut Cur,
    f: impl FnOnce(&Image, &mut Image, &mut Image),
) {
    let [a, b, tmp] = bufs;
    *cur = match *cur {
        Cur::Src => {
            f(src, a, tmp);
            Cur::Buf(0)
        }
        Cur::Buf(0) => {
            f(a, b, tmp);
            Cur::Buf(1)
        }
        Cur::Buf(_) => {
            f(b, a, tmp);
            Cur::Buf(0)
        }
    };
}

fn current<'a>(src: &'a Image, bufs: &'a [Image; 3], cur: Cur) -> &'a Image {
    match cur {
        Cur::Src => src,
        Cur::Buf(i) => &bufs[i],
    }
}

/// `ToTensor` (+ `Normalize` when given) into `out`.
fn to_tensor(img: &Image, normalize: Option<&Normalize>, out: &mut [f32]) {
    match normalize {
        Some(n) => n.normalize_into(img, out),
        None => transforms::to_tensor_into(img, out),
    }
}

impl TrainTransform {
    /// Seed 001's CIFAR transform: `RandomCrop(32, padding=4)`, `RandomHorizontalFlip(0.5)`,
    /// `Normalize(mean, std)`.
    pub fn default_cifar(mean: &[f32], std: &[f32]) -> Self {
        TrainTransform {
            crop_padding: Some(4),
            flip_prob: 0.5,
            normalize: Some(Normalize::new(mean, std)),
            ..Default::default()
        }
    }

    /// `(height, width)` of the output for an input of `h` x `w`.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.out_size.unwrap_or((h, w))
    }

    /// Writes the augmented, normalized CHW f32 sample of `src` into `out`
    /// (`channels * height * width` of `output_size`).
    pub fn apply(&self, src: &Image, rng: &mut Rng, out: &mut [f32]) {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            self.apply_with(src, rng, out, &mut s.bufs);
        });
    }

    fn apply_with(&self, src: &Image, rng: &mut Rng, out: &mut [f32], bufs: &mut [Image; 3]) {
        let (oh, ow) = self.output_size(src.height, src.width);
        let mut cur = Cur::Src;

        if self.rrc.is_none() && (oh, ow) != (src.height, src.width) {
            let interp = self.resize_interp;
            stage(src, bufs, &mut cur, |i, o, _| {
                resize_region_into(i, (0, 0, i.height, i.width), oh, ow, interp, o)
            });
        }

        if let Some(rrc) = &self.rrc {
            stage(src, bufs, &mut cur, |i, o, _| {
                let region = rrc_params(i.height, i.width, rrc.scale, rrc.ratio, rng);
                resize_region_into(i, region, oh, ow, rrc.interp, o);
            });
        } else if let Some(pad) = self.crop_padding.filter(|&p| p > 0) {
            stage(src, bufs, &mut cur, |i, o, _| {
                let size = (i.height, i.width);
                let (t, l) = random_crop_params(i.height, i.width, size, pad, rng);
                crop_padded_into(i, t, l, size, pad, o);
            });
        }

        if self.flip_prob > 0.0 && rng.f64() < self.flip_prob {
            stage(src, bufs, &mut cur, |i, o, _| transforms::hflip_into(i, o));
        }

        if self.rotation_degrees > 0.0 {
            let angle = rng.uniform(-self.rotation_degrees, self.rotation_degrees);
            stage(src, bufs, &mut cur, |i, o, _| {
                transforms::rotate_into(i, angle, Interp::Nearest, [0; 3], o)
            });
        }

        if let Some(ra) = &self.randaugment {
            stage(src, bufs, &mut cur, |i, o, t| {
                ra.apply_into(i, rng, o, t, None)
            });
        } else if let Some(cj) = &self.color_jitter {
            let p = cj.sample(rng);
            stage(src, bufs, &mut cur, |i, o, t| {
                ColorJitter::apply_params_into(&p, i, o, t)
            });
        }

        let img = current(src, bufs, cur);
        assert_eq!(
            out.len(),
            img.channels * oh * ow,
            "output buffer for a {}x{}x{} sample",
            img.channels,
            oh,
            ow
        );
        to_tensor(img, self.normalize.as_ref(), out);

        if let Some(e) = &self.erasing {
            let c = img.channels;
            random_erasing(out, c, oh, ow, e.prob, e.scale, e.ratio, e.mode, rng);
        }
    }
}

/// The evaluation transform: resize (optionally timm-style `crop_pct`: resize to
/// `floor(size / crop_pct)` then centre-crop `size`), then `ToTensor` + `Normalize`.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalTransform {
    /// Output `(height, width)`; `None` keeps the input size.
    pub out_size: Option<(usize, usize)>,
    pub interp: Interp,
    pub crop_pct: Option<f64>,
    pub normalize: Option<Normalize>,
}

impl Default for EvalTransform {
    fn default() -> Self {
        EvalTransform {
            out_size: None,
            interp: Interp::Bilinear,
            crop_pct: None,
            normalize: None,
        }
    }
}

impl EvalTransform {
    /// Seed 001's validation transform: `ToTensor` + `Normalize`.
    pub fn normalize_only(mean: &[f32], std: &[f32]) -> Self {
        EvalTransform {
            normalize: Some(Normalize::new(mean, std)),
            ..Default::default()
        }
    }

    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.out_size.unwrap_or((h, w))
    }

    /// Writes the normalized CHW f32 sample of `src` into `out`.
    pub fn apply(&self, src: &Image, out: &mut [f32]) {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            self.apply_with(src, out, &mut s.bufs);
        });
    }

    fn apply_with(&self, src: &Image, out: &mut [f32], bufs: &mut [Image; 3]) {
        let (oh, ow) = self.output_size(src.height, src.width);
        let mut cur = Cur::Src;
        let interp = self.interp;
        if let Some(pct) = self.crop_pct.filter(|&p| p > 0.0 && p < 1.0) {
            let (sh, sw) = (
                ((oh as f64 / pct).floor() as usize).max(oh),
                ((ow as f64 / pct).floor() as usize).max(ow),
            );
            stage(src, bufs, &mut cur, |i, o, _| {
                resize_region_into(i, (0, 0, i.height, i.width), sh, sw, interp, o)
            });
            // torchvision CenterCrop: offsets int(round((size - crop) / 2)).
            let top = ((sh - oh) as f64 / 2.0).round_ties_even() as usize;
            let left = ((sw - ow) as f64 / 2.0).round_ties_even() as usize;
            stage(src, bufs, &mut cur, |i, o, _| {
                crop_padded_into(i, top, left, (oh, ow), 0, o)
            });
        } else if (oh, ow) != (src.height, src.width) {
            stage(src, bufs, &mut cur, |i, o, _| {
                resize_region_into(i, (0, 0, i.height, i.width), oh, ow, interp, o)
            });
        }
        to_tensor(current(src, bufs, cur), self.normalize.as_ref(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
    const STD: [f32; 3] = [0.2023, 0.1994, 0.2010];

    fn img(h: usize, w: usize, c: usize) -> Image {
        let data: Vec<u8> = (0..h * w * c).map(|i| (i * 97 % 256) as u8).collect();
        Image::from_slice(h, w, c, &data)
    }

    fn normalized(img: &Image, n: &Normalize) -> Vec<f32> {
        let mut v = vec![0f32; img.len()];
        n.normalize_into(img, &mut v);
        v
    }

    #[test]
    fn identity_transform_is_normalize() {
        let n = Normalize::new(&MEAN, &STD);
        let t = TrainTransform {
            normalize: Some(n.clone()),
            ..Default::default()
        };
        let eval = EvalTransform::normalize_only(&MEAN, &STD);
        for (i, src) in [img(32, 32, 3), img(28, 28, 1)].iter().enumerate() {
            let n = if src.channels == 3 {
                n.clone()
            } else {
                Normalize::new(&[0.286], &[0.353])
            };
            let t = TrainTransform {
                normalize: Some(n.clone()),
                ..t.clone()
            };
            let mut out = vec![0f32; src.len()];
            let mut r = Rng::at(1, stream::AUGMENT, &[0, i as u64]);
            t.apply(src, &mut r, &mut out);
            assert_eq!(out, normalized(src, &n));
            // Nothing was drawn.
            let mut fresh = Rng::at(1, stream::AUGMENT, &[0, i as u64]);
            assert_eq!(r.next_u64(), fresh.next_u64());
            let eval = EvalTransform {
                normalize: Some(n.clone()),
                ..eval.clone()
            };
            let mut e = vec![0f32; src.len()];
            eval.apply(src, &mut e);
            assert_eq!(e, out);
        }
        // No normalize at all: x / 255.
        let src = img(4, 4, 3);
        let mut out = vec![0f32; 48];
        TrainTransform::default().apply(&src, &mut Rng::seed(0), &mut out);
        assert_eq!(out[16], src.get(0, 0, 1) as f32 / 255.0);
    }

    #[test]
    fn default_cifar_is_crop_then_flip_with_the_same_draws() {
        let t = TrainTransform::default_cifar(&MEAN, &STD);
        let n = Normalize::new(&MEAN, &STD);
        let src = img(32, 32, 3);
        let mut flips = 0;
        for s in 0..200u64 {
            let mut out = vec![0f32; 3072];
            t.apply(&src, &mut Rng::at(7, stream::AUGMENT, &[1, s]), &mut out);
            // Reproduce by hand with the public pieces, drawing in the same order.
            let mut r = Rng::at(7, stream::AUGMENT, &[1, s]);
            let cropped = random_crop(&src, (32, 32), 4, &mut r);
            let flip = r.f64() < 0.5;
            flips += flip as usize;
            let want = if flip { hflip(&cropped) } else { cropped };
            assert_eq!(out, normalized(&want, &n));
        }
        assert!((70..130).contains(&flips), "{flips}");
    }

    #[test]
    fn full_pipeline_produces_the_output_size_and_is_deterministic() {
        let t = TrainTransform {
            out_size: Some((48, 40)),
            rrc: Some(RrcConfig {
                interp: Interp::Bicubic,
                ..Default::default()
            }),
            flip_prob: 0.5,
            rotation_degrees: 10.0,
            color_jitter: Some(ColorJitter {
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.4,
                hue: 0.1,
            }),
            randaugment: Some(RandAugment::parse("rand-m9-mstd0.5-inc1").unwrap()),
            normalize: Some(Normalize::new(
                &[0.485, 0.456, 0.406],
                &[0.229, 0.224, 0.225],
            )),
            erasing: Some(ErasingConfig::timm(0.25, EraseMode::Pixel)),
            ..Default::default()
        };
        let src = img(32, 32, 3);
        assert_eq!(t.output_size(32, 32), (48, 40));
        let run = |s: u64| {
            let mut out = vec![0f32; 3 * 48 * 40];
            t.apply(&src, &mut Rng::at(3, stream::AUGMENT, &[0, s]), &mut out);
            out
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        assert!(run(3).iter().all(|v| v.is_finite()));
        // Jitter without RandAugment, and a plain resize for gray pretrained-style input.
        let t2 = TrainTransform {
            randaugment: None,
            rrc: None,
            crop_padding: Some(4),
            out_size: Some((64, 64)),
            normalize: Some(Normalize::new(&[0.5], &[0.5])),
            ..t.clone()
        };
        let mut out = vec![0f32; 64 * 64];
        t2.apply(&img(28, 28, 1), &mut Rng::seed(4), &mut out);
        assert!(out.iter().all(|v| v.is_finite() && v.abs() < 40.0));
    }

    #[test]
    fn resize_stage_matches_resize() {
        let t = TrainTransform {
            out_size: Some((64, 64)),
            resize_interp: Interp::Bicubic,
            ..Default::default()
        };
        let src = img(32, 32, 3);
        let mut out = vec![0f32; 3 * 64 * 64];
        t.apply(&src, &mut Rng::seed(0), &mut out);
        let mut want = vec![0f32; 3 * 64 * 64];
        transforms::to_tensor_into(&resize(&src, 64, 64, Interp::Bicubic), &mut want);
        assert_eq!(out, want);
        let e = EvalTransform {
            out_size: Some((64, 64)),
            interp: Interp::Bicubic,
            ..Default::default()
        };
        let mut ev = vec![0f32; 3 * 64 * 64];
        e.apply(&src, &mut ev);
        assert_eq!(ev, want);
    }

    #[test]
    fn eval_crop_pct_resizes_then_centre_crops() {
        let e = EvalTransform {
            out_size: Some((28, 28)),
            interp: Interp::Bilinear,
            crop_pct: Some(0.875),
            normalize: None,
        };
        let src = img(32, 32, 3);
        let mut out = vec![0f32; 3 * 28 * 28];
        e.apply(&src, &mut out);
        // floor(28 / 0.875) = 32: the resize is the identity, the crop is centred at 2.
        let mut crop = Image::default();
        crop_padded_into(&src, 2, 2, (28, 28), 0, &mut crop);
        let mut want = vec![0f32; 3 * 28 * 28];
        transforms::to_tensor_into(&crop, &mut want);
        assert_eq!(out, want);
    }
}
