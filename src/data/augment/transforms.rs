//! Per-sample transforms with torchvision / timm semantics.
//!
//! Every random transform takes the sample's `Rng` (addressed by the caller as
//! `Rng::at(seed, stream::AUGMENT, &[epoch, sample_index])`) and draws from it in the same
//! order as the reference implementation draws from torch / Python's `random`, so a config
//! consumes a fixed, documented sequence of draws.

use super::image::{Image, Interp, resize_region_into};
use super::pil::{self, Enhance};
use crate::rng::Rng;

/// Python's `round` (ties to even), as used by torchvision and timm for box sizes.
fn py_round(v: f64) -> i64 {
    v.round_ties_even() as i64
}

// ---------------------------------------------------------------------------------------
// RandomCrop with zero padding

/// The crop offsets `(top, left)`, in padded coordinates, of torchvision's
/// `RandomCrop(size, padding)` on an `h` x `w` image: each uniform in `[0, 2*padding]` when
/// the crop is the image size. No draw when the padded image already has the crop size.
pub fn random_crop_params(
    h: usize,
    w: usize,
    size: (usize, usize),
    padding: usize,
    rng: &mut Rng,
) -> (usize, usize) {
    let (ph, pw) = (h + 2 * padding, w + 2 * padding);
    let (th, tw) = size;
    assert!(
        th <= ph && tw <= pw,
        "crop {size:?} larger than padded {ph}x{pw}"
    );
    if (ph, pw) == (th, tw) {
        return (0, 0);
    }
    let top = rng.below(ph - th + 1);
    let left = rng.below(pw - tw + 1);
    (top, left)
}

/// Crops `size` at `(top, left)` of `img` zero-padded by `padding` on every side, without
/// materializing the padded image.
pub fn crop_padded_into(
    img: &Image,
    top: usize,
    left: usize,
    size: (usize, usize),
    padding: usize,
    out: &mut Image,
) {
    let (th, tw) = size;
    let c = img.channels;
    out.reshape(th, tw, c);
    // Source column range that lands inside the image, for every row.
    let x_start = left as isize - padding as isize; // source x of output column 0
    let ox0 = (-x_start).clamp(0, tw as isize) as usize;
    let ox1 = (img.width as isize - x_start).clamp(ox0 as isize, tw as isize) as usize;
    for oy in 0..th {
        let orow = &mut out.data[oy * tw * c..(oy + 1) * tw * c];
        let sy = (top + oy) as isize - padding as isize;
        if sy < 0 || sy >= img.height as isize {
            orow.fill(0);
            continue;
        }
        orow[..ox0 * c].fill(0);
        orow[ox1 * c..].fill(0);
        if ox1 > ox0 {
            let sx0 = (x_start + ox0 as isize) as usize;
            let s = (sy as usize * img.width + sx0) * c;
            orow[ox0 * c..ox1 * c].copy_from_slice(&img.data[s..s + (ox1 - ox0) * c]);
        }
    }
}

/// torchvision `RandomCrop(size, padding)` with constant 0 fill.
pub fn random_crop(img: &Image, size: (usize, usize), padding: usize, rng: &mut Rng) -> Image {
    let (top, left) = random_crop_params(img.height, img.width, size, padding, rng);
    let mut out = Image::default();
    crop_padded_into(img, top, left, size, padding, &mut out);
    out
}

// ---------------------------------------------------------------------------------------
// Horizontal flip

pub fn hflip_into(img: &Image, out: &mut Image) {
    let (w, c) = (img.width, img.channels);
    out.reshape(img.height, w, c);
    for (orow, irow) in out
        .data
        .chunks_exact_mut(w * c)
        .zip(img.data.chunks_exact(w * c))
    {
        for (o, i) in orow.chunks_exact_mut(c).zip(irow.chunks_exact(c).rev()) {
            o.copy_from_slice(i);
        }
    }
}

pub fn hflip(img: &Image) -> Image {
    let mut out = Image::default();
    hflip_into(img, &mut out);
    out
}

/// torchvision `RandomHorizontalFlip(p)`: one draw, flip when it is `< p`.
pub fn random_hflip(img: &Image, p: f64, rng: &mut Rng) -> Image {
    if rng.f64() < p {
        hflip(img)
    } else {
        img.clone()
    }
}

// ---------------------------------------------------------------------------------------
// RandomResizedCrop

/// torchvision `RandomResizedCrop.get_params`: `(top, left, height, width)` of the crop.
/// Up to 10 attempts of area fraction uniform in `scale` and log-uniform aspect ratio
/// (w/h) in `ratio`; then a centre crop clamped to the ratio range.
pub fn rrc_params(
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(log_lo, log_hi).exp();
        let cw = py_round((target_area * aspect).sqrt());
        let ch = py_round((target_area / aspect).sqrt());
        if 0 < cw && cw <= w as i64 && 0 < ch && ch <= h as i64 {
            let (cw, ch) = (cw as usize, ch as usize);
            let top = rng.below(h - ch + 1);
            let left = rng.below(w - cw + 1);
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (rmin, rmax) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (ch, cw) = if in_ratio < rmin {
        ((py_round(w as f64 / rmin) as usize).clamp(1, h), w)
    } else if in_ratio > rmax {
        (h, (py_round(h as f64 * rmax) as usize).clamp(1, w))
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// torchvision `RandomResizedCrop((out_h, out_w), scale, ratio, interpolation)`.
pub fn random_resized_crop(
    img: &Image,
    out_h: usize,
    out_w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    interp: Interp,
    rng: &mut Rng,
) -> Image {
    let region = rrc_params(img.height, img.width, scale, ratio, rng);
    let mut out = Image::default();
    resize_region_into(img, region, out_h, out_w, interp, &mut out);
    out
}

// ---------------------------------------------------------------------------------------
// Rotation

/// PIL `img.rotate(degrees, resample, fillcolor=fill)`: counter-clockwise about the centre,
/// same size. `fill` per channel (gray images use `fill[0]`). Like Pillow, 0 and 180 degrees
/// (and 90 / 270 on square images) are exact transposes whatever the filter.
pub fn rotate_into(img: &Image, degrees: f64, interp: Interp, fill: [u8; 3], out: &mut Image) {
    let angle = degrees.rem_euclid(360.0);
    let square = img.height == img.width;
    let quarter = |out: &mut Image, turns: usize| {
        // Counter-clockwise quarter turns: out[y][x] = in[x][w-1-y] for one turn.
        let (h, w, c) = (img.height, img.width, img.channels);
        out.reshape(h, w, c);
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = match turns {
                    1 => (x, w - 1 - y),
                    2 => (h - 1 - y, w - 1 - x),
                    _ => (h - 1 - x, y),
                };
                let s = (sy * w + sx) * c;
                out.data[(y * w + x) * c..(y * w + x + 1) * c].copy_from_slice(&img.data[s..s + c]);
            }
        }
    };
    if angle == 0.0 {
        out.copy_from(img);
    } else if angle == 180.0 {
        quarter(out, 2);
    } else if square && (angle == 90.0 || angle == 270.0) {
        quarter(out, if angle == 90.0 { 1 } else { 3 });
    } else {
        let m = pil::rotate_matrix(img.width, img.height, degrees);
        pil::affine_into(img, m, interp, &fill, out);
    }
}

pub fn rotate(img: &Image, degrees: f64, interp: Interp, fill: [u8; 3]) -> Image {
    let mut out = Image::default();
    rotate_into(img, degrees, interp, fill, &mut out);
    out
}

/// torchvision `RandomRotation(max_degrees)` with its defaults: angle uniform in
/// `[-max_degrees, max_degrees]`, nearest, fill 0.
pub fn random_rotation(img: &Image, max_degrees: f64, rng: &mut Rng) -> Image {
    let angle = rng.uniform(-max_degrees, max_degrees);
    rotate(img, angle, Interp::Nearest, [0; 3])
}

// ---------------------------------------------------------------------------------------
// ColorJitter

/// torchvision `ColorJitter(brightness, contrast, saturation, hue)`. Factors are uniform in
/// `[max(0, 1 - x), 1 + x]` for the first three and the hue shift uniform in `[-hue, hue]`
/// (`hue <= 0.5`); a zero parameter disables its op (no draw), as torchvision does.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ColorJitter {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
}

/// The draws of one `ColorJitter` call: op order (0 brightness, 1 contrast, 2 saturation,
/// 3 hue) and the sampled factors of the enabled ops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JitterParams {
    pub order: [usize; 4],
    pub brightness: Option<f64>,
    pub contrast: Option<f64>,
    pub saturation: Option<f64>,
    pub hue: Option<f64>,
}

impl ColorJitter {
    /// `ColorJitter.get_params`: the permutation first, then each enabled factor.
    pub fn sample(&self, rng: &mut Rng) -> JitterParams {
        let perm = rng.permutation(4);
        let order = [perm[0], perm[1], perm[2], perm[3]];
        let mut factor = |x: f64| (x > 0.0).then(|| rng.uniform((1.0 - x).max(0.0), 1.0 + x));
        let brightness = factor(self.brightness);
        let contrast = factor(self.contrast);
        let saturation = factor(self.saturation);
        let hue = (self.hue > 0.0).then(|| rng.uniform(-self.hue, self.hue));
        JitterParams {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    }

    /// Applies sampled params (PIL arithmetic; saturation and hue are no-ops on gray images).
    /// `tmp` is scratch space.
    pub fn apply_params_into(p: &JitterParams, img: &Image, out: &mut Image, tmp: &mut Image) {
        out.copy_from(img);
        for &op in &p.order {
            match op {
                0 => {
                    if let Some(f) = p.brightness {
                        pil::enhance_into(out, Enhance::Brightness, f, tmp);
                        std::mem::swap(out, tmp);
                    }
                }
                1 => {
                    if let Some(f) = p.contrast {
                        pil::enhance_into(out, Enhance::Contrast, f, tmp);
                        std::mem::swap(out, tmp);
                    }
                }
                2 => {
                    if let Some(f) = p.saturation {
                        pil::enhance_into(out, Enhance::Color, f, tmp);
                        std::mem::swap(out, tmp);
                    }
                }
                _ => {
                    if let Some(h) = p.hue {
                        pil::shift_hue_into(out, h, tmp);
                        std::mem::swap(out, tmp);
                    }
                }
            }
        }
    }

    pub fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        let p = self.sample(rng);
        let (mut out, mut tmp) = (Image::default(), Image::default());
        Self::apply_params_into(&p, img, &mut out, &mut tmp);
        out
    }
}

/// `ColorJitter(brightness, contrast, saturation, hue)(img)`.
pub fn color_jitter(
    img: &Image,
    brightness: f64,
    contrast: f64,
    saturation: f64,
    hue: f64,
    rng: &mut Rng,
) -> Image {
    ColorJitter {
        brightness,
        contrast,
        saturation,
        hue,
    }
    .apply(img, rng)
}

// ---------------------------------------------------------------------------------------
// ToTensor + Normalize

/// torchvision `ToTensor()` + `Normalize(mean, std)`: CHW f32 `(x / 255 - mean) / std`.
/// `mean` / `std` have one entry per channel, or a single entry for all channels.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    pub fn new(mean: &[f32], std: &[f32]) -> Self {
        Normalize {
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    /// `ToTensor()` alone: x / 255.
    pub fn identity(channels: usize) -> Self {
        Normalize {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// The per-channel table of every u8 value's normalized f32. Computing each entry with
    /// torch's exact f32 formula (divide by 255, subtract, divide) keeps results
    /// bit-identical to PyTorch, and a 256-entry lookup beats two divisions per value.
    fn lut(&self, channel: usize) -> [f32; 256] {
        let pick = |v: &[f32]| if v.len() == 1 { v[0] } else { v[channel] };
        let (m, s) = (pick(&self.mean), pick(&self.std));
        std::array::from_fn(|i| (i as f32 / 255.0 - m) / s)
    }

    /// Writes the CHW f32 tensor of `img` into `out` (`channels * height * width` long).
    pub fn normalize_into(&self, img: &Image, out: &mut [f32]) {
        let c = img.channels;
        assert!(
            (self.mean.len() == c || self.mean.len() == 1)
                && (self.std.len() == c || self.std.len() == 1),
            "normalize has {} means / {} stds for {c} channels",
            self.mean.len(),
            self.std.len()
        );
        write_chw(img, out, |ch| self.lut(ch));
    }
}

/// torchvision `ToTensor()` alone: CHW f32 `x / 255`.
pub fn to_tensor_into(img: &Image, out: &mut [f32]) {
    write_chw(img, out, |_| std::array::from_fn(|i| i as f32 / 255.0));
}

/// HWC u8 -> CHW f32 through one 256-entry table per channel.
fn write_chw(img: &Image, out: &mut [f32], lut: impl Fn(usize) -> [f32; 256]) {
    let c = img.channels;
    let hw = img.height * img.width;
    assert_eq!(out.len(), c * hw, "tensor output length");
    match c {
        1 => {
            let l = lut(0);
            for (o, &v) in out.iter_mut().zip(&img.data) {
                *o = l[v as usize];
            }
        }
        3 => {
            let (l0, l1, l2) = (lut(0), lut(1), lut(2));
            let (o0, rest) = out.split_at_mut(hw);
            let (o1, o2) = rest.split_at_mut(hw);
            let pixels = img.data.chunks_exact(3);
            for (((a, b), d), p) in o0
                .iter_mut()
                .zip(o1.iter_mut())
                .zip(o2.iter_mut())
                .zip(pixels)
            {
                *a = l0[p[0] as usize];
                *b = l1[p[1] as usize];
                *d = l2[p[2] as usize];
            }
        }
        _ => {
            for ch in 0..c {
                let l = lut(ch);
                for (o, p) in out[ch * hw..(ch + 1) * hw]
                    .iter_mut()
                    .zip(img.data.chunks_exact(c))
                {
                    *o = l[p[ch] as usize];
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// RandomErasing (timm), on the normalized CHW tensor

/// What timm's `RandomErasing` writes into the erased box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EraseMode {
    /// A standard normal draw per erased value (timm `mode='pixel'`).
    Pixel,
    /// Zeros, i.e. the dataset mean after normalization (timm `mode='const'`).
    Const,
    /// One standard normal draw per channel (timm `mode='rand'`).
    Rand,
}

/// timm `RandomErasing(probability=prob, min_area, max_area = scale, min_aspect, max_aspect
/// = ratio, mode, max_count=1)` on one normalized CHW image. Returns the erased box
/// `(top, left, height, width)`, or `None` when the coin said no or all 10 attempts failed.
#[allow(clippy::too_many_arguments)]
pub fn random_erasing(
    chw: &mut [f32],
    c: usize,
    h: usize,
    w: usize,
    prob: f64,
    scale: (f64, f64),
    ratio: (f64, f64),
    mode: EraseMode,
    rng: &mut Rng,
) -> Option<(usize, usize, usize, usize)> {
    assert_eq!(chw.len(), c * h * w, "erasing buffer length");
    if rng.f64() > prob {
        return None;
    }
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = rng.uniform(scale.0, scale.1) * area;
        let aspect = rng.uniform(log_lo, log_hi).exp();
        let eh = py_round((target_area * aspect).sqrt());
        let ew = py_round((target_area / aspect).sqrt());
        if ew < w as i64 && eh < h as i64 {
            let (eh, ew) = (eh.max(0) as usize, ew.max(0) as usize);
            let top = rng.below(h - eh + 1);
            let left = rng.below(w - ew + 1);
            fill_box(chw, (c, h, w), (top, left, eh, ew), mode, rng);
            return Some((top, left, eh, ew));
        }
    }
    None
}

/// Fills the box in C, then row, then column order, matching the order torch fills a
/// `(c, h, w)` normal tensor.
fn fill_box(
    chw: &mut [f32],
    (c, h, w): (usize, usize, usize),
    (top, left, eh, ew): (usize, usize, usize, usize),
    mode: EraseMode,
    rng: &mut Rng,
) {
    for ch in 0..c {
        let colour = match mode {
            EraseMode::Rand => rng.normal() as f32,
            _ => 0.0,
        };
        for y in top..top + eh {
            let row = &mut chw[(ch * h + y) * w + left..(ch * h + y) * w + left + ew];
            match mode {
                EraseMode::Pixel => row.iter_mut().for_each(|v| *v = rng.normal() as f32),
                _ => row.fill(colour),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    fn rng(i: u64) -> Rng {
        Rng::at(1234, stream::AUGMENT, &[0, i])
    }

    fn patterned(h: usize, w: usize, c: usize) -> Image {
        let data: Vec<u8> = (0..h * w * c).map(|i| (i * 31 % 255 + 1) as u8).collect();
        Image::from_slice(h, w, c, &data)
    }

    #[test]
    fn flip_probability_is_respected() {
        let img = patterned(4, 5, 3);
        let flipped = hflip(&img);
        assert_ne!(img, flipped);
        assert_eq!(hflip(&flipped), img);
        for p in [0.0, 0.3, 0.5, 1.0] {
            let n = 4000;
            let hits = (0..n)
                .filter(|&i| random_hflip(&img, p, &mut rng(i)) == flipped)
                .count();
            let frac = hits as f64 / n as f64;
            assert!((frac - p).abs() < 0.03, "p={p} got {frac}");
        }
    }

    #[test]
    fn random_crop_offsets_cover_range_and_pixels_match_padded_image() {
        let img = patterned(32, 32, 3);
        let mut seen = [[false; 9]; 2];
        for i in 0..2000 {
            let (t, l) = random_crop_params(32, 32, (32, 32), 4, &mut rng(i));
            assert!(t <= 8 && l <= 8);
            seen[0][t] = true;
            seen[1][l] = true;
        }
        assert!(seen.iter().flatten().all(|&s| s), "offsets 0..=8 all drawn");

        // Against an explicitly padded image.
        let mut padded = Image::new(40, 40, 3);
        for y in 0..32 {
            for x in 0..32 {
                for c in 0..3 {
                    padded.set(y + 4, x + 4, c, img.get(y, x, c));
                }
            }
        }
        let mut out = Image::default();
        for (t, l) in [(0, 0), (8, 8), (0, 8), (3, 5), (4, 4)] {
            crop_padded_into(&img, t, l, (32, 32), 4, &mut out);
            for y in 0..32 {
                for x in 0..32 {
                    for c in 0..3 {
                        assert_eq!(out.get(y, x, c), padded.get(y + t, x + l, c));
                    }
                }
            }
        }
        crop_padded_into(&img, 4, 4, (32, 32), 4, &mut out);
        assert_eq!(out, img);
        // random_crop is params + crop.
        let a = random_crop(&img, (32, 32), 4, &mut rng(7));
        let (t, l) = random_crop_params(32, 32, (32, 32), 4, &mut rng(7));
        crop_padded_into(&img, t, l, (32, 32), 4, &mut out);
        assert_eq!(a, out);
    }

    #[test]
    fn rrc_boxes_stay_inside_and_respect_scale() {
        let (h, w) = (32usize, 32usize);
        let (scale, ratio) = ((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0));
        let mut small = 0;
        for i in 0..3000 {
            let (t, l, ch, cw) = rrc_params(h, w, scale, ratio, &mut rng(i));
            assert!(
                ch >= 1 && cw >= 1 && t + ch <= h && l + cw <= w,
                "{t} {l} {ch} {cw}"
            );
            let frac = (ch * cw) as f64 / (h * w) as f64;
            // Rounding each side to an integer moves the area by under one row + column.
            let slack = (ch + cw + 1) as f64 / (h * w) as f64;
            assert!(
                frac >= scale.0 - slack && frac <= scale.1 + 1e-12,
                "area fraction {frac}"
            );
            // The rounded sides keep the aspect ratio up to half a pixel on each side.
            let ar = cw as f64 / ch as f64;
            let (ex, ey) = (0.5 / cw as f64, 0.5 / ch as f64);
            assert!(
                ar >= ratio.0 * (1.0 - ex) / (1.0 + ey) - 1e-12
                    && ar <= ratio.1 * (1.0 + ex) / (1.0 - ey) + 1e-12,
                "aspect {ar} of {ch}x{cw}"
            );
            if ch * cw < h * w {
                small += 1;
            }
        }
        assert!(small > 2500);
        // Impossible scale: centre crop fallback, clamped to the ratio range.
        let (t, l, ch, cw) = rrc_params(10, 40, (2.0, 3.0), ratio, &mut rng(1));
        assert_eq!((ch, cw), (10, 13)); // round(10 * 4/3)
        assert_eq!((t, l), (0, 13));
        // Non-square: still inside.
        for i in 0..500 {
            let (t, l, ch, cw) = rrc_params(20, 50, scale, ratio, &mut rng(i));
            assert!(t + ch <= 20 && l + cw <= 50);
        }
        let out = random_resized_crop(
            &patterned(32, 32, 3),
            24,
            40,
            scale,
            ratio,
            Interp::Bicubic,
            &mut rng(3),
        );
        assert_eq!((out.height, out.width, out.channels), (24, 40, 3));
    }

    #[test]
    fn rotation_by_zero_is_identity_and_by_90_is_transpose_then_flip() {
        let img = patterned(6, 6, 3);
        for interp in [Interp::Nearest, Interp::Bilinear, Interp::Bicubic] {
            assert_eq!(rotate(&img, 0.0, interp, [0; 3]), img);
            assert_eq!(rotate(&img, 360.0, interp, [0; 3]), img);
        }
        // Counter-clockwise by 90: out[y][x] = in[x][w-1-y], i.e. transpose, then flip the
        // rows top to bottom.
        for interp in [Interp::Nearest, Interp::Bilinear] {
            let r = rotate(&img, 90.0, interp, [0; 3]);
            for y in 0..6 {
                for x in 0..6 {
                    for c in 0..3 {
                        assert_eq!(r.get(y, x, c), img.get(x, 5 - y, c), "{interp:?}");
                    }
                }
            }
            // 180 is a point reflection, -90 the other way round.
            let r = rotate(&img, 180.0, interp, [0; 3]);
            assert_eq!(r.get(0, 0, 1), img.get(5, 5, 1));
            let r = rotate(&img, -90.0, interp, [0; 3]);
            assert_eq!(r.get(0, 0, 2), img.get(5, 0, 2));
        }
        // 45 degrees: corners leave the image and get the fill.
        let r = rotate(
            &Image::filled(8, 8, &[200]),
            45.0,
            Interp::Nearest,
            [7, 0, 0],
        );
        assert_eq!(r.get(0, 0, 0), 7);
        assert_eq!(r.get(4, 4, 0), 200);
        // random_rotation keeps the shape.
        let r = random_rotation(&img, 15.0, &mut rng(0));
        assert_eq!((r.height, r.width, r.channels), (6, 6, 3));
    }

    #[test]
    fn jitter_with_zero_ranges_is_identity_and_draws_only_the_permutation() {
        let img = patterned(5, 7, 3);
        let mut r = rng(9);
        assert_eq!(color_jitter(&img, 0.0, 0.0, 0.0, 0.0, &mut r), img);
        let mut r2 = rng(9);
        r2.permutation(4);
        assert_eq!(r.next_u64(), r2.next_u64());
    }

    #[test]
    fn brightness_factor_stays_in_range() {
        let b = 0.4;
        let img = Image::filled(4, 4, &[100, 100, 100]);
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for i in 0..2000 {
            let out = color_jitter(&img, b, 0.0, 0.0, 0.0, &mut rng(i));
            let v = out.data[0];
            assert!(out.data.iter().all(|&x| x == v), "constant stays constant");
            let ratio = v as f64 / 100.0;
            // PIL truncates, so the ratio may sit up to 1/100 under the factor.
            assert!(ratio >= 1.0 - b - 0.01 && ratio <= 1.0 + b, "{ratio}");
            lo = lo.min(ratio);
            hi = hi.max(ratio);
        }
        assert!(lo < 0.65 && hi > 1.35, "range covered: {lo} {hi}");
    }

    #[test]
    fn jitter_factor_ranges_and_gray_images() {
        let cj = ColorJitter {
            brightness: 0.4,
            contrast: 1.5,
            saturation: 0.4,
            hue: 0.1,
        };
        for i in 0..500 {
            let p = cj.sample(&mut rng(i));
            let mut o = p.order;
            o.sort_unstable();
            assert_eq!(o, [0, 1, 2, 3]);
            assert!((0.6..1.4).contains(&p.brightness.unwrap()));
            assert!((0.0..2.5).contains(&p.contrast.unwrap()));
            assert!((-0.1..0.1).contains(&p.hue.unwrap()));
        }
        // Gray: saturation and hue do nothing.
        let gray = patterned(5, 5, 1);
        assert_eq!(color_jitter(&gray, 0.0, 0.0, 0.9, 0.5, &mut rng(1)), gray);
        // Hue on RGB changes colours but not gray pixels.
        let mut img = patterned(4, 4, 3);
        img.data[0..3].copy_from_slice(&[80, 80, 80]);
        let out = color_jitter(&img, 0.0, 0.0, 0.0, 0.5, &mut rng(2));
        assert_eq!(&out.data[0..3], &[80, 80, 80]);
        assert_ne!(out, img);
    }

    #[test]
    fn normalize_matches_formula_and_layout() {
        let img = patterned(3, 4, 3);
        let n = Normalize::new(&[0.4914, 0.4822, 0.4465], &[0.2023, 0.1994, 0.2010]);
        let mut out = vec![0f32; 36];
        n.normalize_into(&img, &mut out);
        for c in 0..3 {
            for y in 0..3 {
                for x in 0..4 {
                    let v = img.get(y, x, c) as f32;
                    let want = (v / 255.0 - n.mean[c]) / n.std[c];
                    assert_eq!(out[(c * 3 + y) * 4 + x], want);
                }
            }
        }
        let gray = patterned(2, 2, 1);
        let mut out = vec![0f32; 4];
        Normalize::new(&[0.5], &[0.5]).normalize_into(&gray, &mut out);
        assert_eq!(out[1], (gray.data[1] as f32 / 255.0 - 0.5) / 0.5);
        Normalize::identity(1).normalize_into(&gray, &mut out);
        assert_eq!(out[3], gray.data[3] as f32 / 255.0);
    }

    #[test]
    fn erasing_area_and_probability() {
        let (c, h, w) = (3, 32, 32);
        let (scale, ratio) = ((0.02, 1.0 / 3.0), (0.3, 3.3));
        let n = 3000;
        let mut erased = 0;
        for i in 0..n {
            let mut buf = vec![5.0f32; c * h * w];
            let r = random_erasing(
                &mut buf,
                c,
                h,
                w,
                0.25,
                scale,
                ratio,
                EraseMode::Const,
                &mut rng(i),
            );
            let Some((t, l, eh, ew)) = r else {
                assert!(buf.iter().all(|&v| v == 5.0));
                continue;
            };
            erased += 1;
            assert!(t + eh <= h && l + ew <= w);
            let frac = (eh * ew) as f64 / (h * w) as f64;
            let slack = (eh + ew + 1) as f64 / (h * w) as f64;
            assert!(frac >= scale.0 - slack && frac <= scale.1 + slack, "{frac}");
            let zeros = buf.iter().filter(|&&v| v == 0.0).count();
            assert_eq!(zeros, c * eh * ew);
            for ch in 0..c {
                assert_eq!(buf[(ch * h + t) * w + l], 0.0);
            }
        }
        let p = erased as f64 / n as f64;
        assert!((p - 0.25).abs() < 0.03, "erase rate {p}");
    }

    #[test]
    fn erasing_modes_fill_as_documented() {
        let (c, h, w) = (3, 16, 16);
        let mut buf = vec![9.0f32; c * h * w];
        let (t, l, eh, ew) = random_erasing(
            &mut buf,
            c,
            h,
            w,
            1.0,
            (0.2, 0.3),
            (0.5, 2.0),
            EraseMode::Rand,
            &mut rng(1),
        )
        .unwrap();
        for ch in 0..c {
            let v = buf[(ch * h + t) * w + l];
            assert_ne!(v, 9.0);
            for y in t..t + eh {
                for x in l..l + ew {
                    assert_eq!(buf[(ch * h + y) * w + x], v, "one colour per channel");
                }
            }
        }
        let mut buf = vec![9.0f32; c * h * w];
        let (t, l, eh, ew) = random_erasing(
            &mut buf,
            c,
            h,
            w,
            1.0,
            (0.2, 0.3),
            (0.5, 2.0),
            EraseMode::Pixel,
            &mut rng(2),
        )
        .unwrap();
        let vals: Vec<f32> = (t..t + eh)
            .flat_map(|y| (l..l + ew).map(move |x| (y, x)))
            .map(|(y, x)| buf[y * w + x])
            .collect();
        let mean = vals.iter().sum::<f32>() / vals.len() as f32;
        assert!(vals.iter().all(|&v| v != 9.0) && mean.abs() < 0.5, "{mean}");
        let distinct = vals.windows(2).filter(|p| p[0] != p[1]).count();
        assert!(distinct > vals.len() / 2);
    }
}
