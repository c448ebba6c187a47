//! PIL-equivalent pixel operations, shared by ColorJitter and RandAugment.
//!
//! The reference pipelines (torchvision on CIFAR's PIL images, timm's auto_augment) run these
//! through Pillow, so the arithmetic here mirrors Pillow's C code, truncations included:
//! `Image.blend` truncates, `convert("L")` rounds in 16.16 fixed point, the 3x3 filter rounds,
//! `autocontrast` truncates its LUT, geometric transforms sample at pixel centres.

use super::image::{Image, Interp};

/// PIL's `convert("L")`: ITU-R 601-2 luma in 16.16 fixed point, rounded.
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// One pixel of `Image.blend(degenerate, image, alpha)`: `d + alpha * (v - d)` in f32,
/// clipped, truncated (Pillow's `ImagingBlend`).
#[inline]
pub fn blend_px(d: u8, v: u8, alpha: f32) -> u8 {
    let t = d as f32 + alpha * (v as i32 - d as i32) as f32;
    if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// The enhancement ops of `PIL.ImageEnhance` (and torchvision's PIL colour adjustments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enhance {
    /// Blend with black.
    Brightness,
    /// Blend with the (rounded) mean of the grayscale image.
    Contrast,
    /// Blend with the grayscale image (saturation); a no-op on gray images.
    Color,
    /// Blend with the 3x3 SMOOTH-filtered image.
    Sharpness,
}

/// `ImageEnhance.<kind>(src).enhance(factor)` into `out`.
pub fn enhance_into(src: &Image, kind: Enhance, factor: f64, out: &mut Image) {
    let alpha = factor as f32;
    // Pillow's ImagingBlend returns a copy of the image for alpha == 1.
    if alpha == 1.0 || (kind == Enhance::Color && src.channels == 1) {
        out.copy_from(src);
        return;
    }
    out.reshape(src.height, src.width, src.channels);
    match kind {
        Enhance::Brightness => {
            for (o, &v) in out.data.iter_mut().zip(&src.data) {
                *o = blend_px(0, v, alpha);
            }
        }
        Enhance::Contrast => {
            let m = gray_mean_rounded(src);
            for (o, &v) in out.data.iter_mut().zip(&src.data) {
                *o = blend_px(m, v, alpha);
            }
        }
        Enhance::Color => {
            for (o, p) in out.data.chunks_exact_mut(3).zip(src.data.chunks_exact(3)) {
                let l = luma(p[0], p[1], p[2]);
                for k in 0..3 {
                    o[k] = blend_px(l, p[k], alpha);
                }
            }
        }
        Enhance::Sharpness => {
            let mut smooth = Image::default();
            smooth_into(src, &mut smooth);
            for ((o, &d), &v) in out.data.iter_mut().zip(&smooth.data).zip(&src.data) {
                *o = blend_px(d, v, alpha);
            }
        }
    }
}

/// `int(ImageStat.Stat(img.convert("L")).mean[0] + 0.5)`.
fn gray_mean_rounded(img: &Image) -> u8 {
    let n = img.height * img.width;
    if n == 0 {
        return 0;
    }
    let sum: u64 = if img.channels == 3 {
        img.data
            .chunks_exact(3)
            .map(|p| luma(p[0], p[1], p[2]) as u64)
            .sum()
    } else {
        img.data.iter().map(|&v| v as u64).sum()
    };
    (sum as f64 / n as f64 + 0.5) as u8
}

/// `img.filter(ImageFilter.SMOOTH)`: kernel `[[1,1,1],[1,5,1],[1,1,1]] / 13` in f32, +0.5 then
/// truncated; the one-pixel border is copied unchanged (Pillow's `ImagingFilter3x3`).
pub fn smooth_into(src: &Image, out: &mut Image) {
    out.copy_from(src);
    let (h, w, c) = (src.height, src.width, src.channels);
    if h < 3 || w < 3 {
        return;
    }
    let k1 = 1.0f32 / 13.0;
    let k5 = 5.0f32 / 13.0;
    let stride = w * c;
    for y in 1..h - 1 {
        let above = &src.data[(y - 1) * stride..y * stride];
        let row = &src.data[y * stride..(y + 1) * stride];
        let below = &src.data[(y + 1) * stride..(y + 2) * stride];
        let orow = &mut out.data[y * stride..(y + 1) * stride];
        for i in c..stride - c {
            let (l, r) = (i - c, i + c);
            let f = |v: u8| v as f32;
            // Pillow sums the row below, the row itself, then the row above, each as a
            // three-term sum, starting from the +0.5 rounding offset.
            let mut ss = 0.5f32;
            ss += f(below[l]) * k1 + f(below[i]) * k1 + f(below[r]) * k1;
            ss += f(row[l]) * k1 + f(row[i]) * k5 + f(row[r]) * k1;
            ss += f(above[l]) * k1 + f(above[i]) * k1 + f(above[r]) * k1;
            orow[i] = clip_trunc(ss as f64);
        }
    }
}

/// Pillow's float-to-u8 store: <= 0 is 0, >= 255 is 255, else truncated.
#[inline]
fn clip_trunc(v: f64) -> u8 {
    if v <= 0.0 {
        0
    } else if v >= 255.0 {
        255
    } else {
        v as u8
    }
}

/// `floor` without the libm call (baseline x86-64 has no rounding instruction).
#[inline]
fn floor_i64(v: f64) -> i64 {
    let t = v as i64;
    if (t as f64) > v { t - 1 } else { t }
}

/// A lookup table per channel.
pub type Lut = [u8; 256];

/// `img.point(lut)` with one table per channel.
pub fn apply_luts_into(src: &Image, luts: &[Lut], out: &mut Image) {
    debug_assert_eq!(luts.len(), src.channels);
    out.reshape(src.height, src.width, src.channels);
    let c = src.channels;
    for (o, p) in out.data.chunks_exact_mut(c).zip(src.data.chunks_exact(c)) {
        for k in 0..c {
            o[k] = luts[k][p[k] as usize];
        }
    }
}

/// One table applied to every channel.
pub fn apply_lut_into(src: &Image, lut: &Lut, out: &mut Image) {
    out.reshape(src.height, src.width, src.channels);
    for (o, &v) in out.data.iter_mut().zip(&src.data) {
        *o = lut[v as usize];
    }
}

fn histograms(img: &Image) -> Vec<[u32; 256]> {
    let c = img.channels;
    let mut h = vec![[0u32; 256]; c];
    for p in img.data.chunks_exact(c) {
        for k in 0..c {
            h[k][p[k] as usize] += 1;
        }
    }
    h
}

fn identity_lut() -> Lut {
    std::array::from_fn(|i| i as u8)
}

/// `ImageOps.autocontrast(img)` (cutoff 0): stretch each channel's [min, max] to [0, 255],
/// LUT entries truncated.
pub fn autocontrast_luts(img: &Image) -> Vec<Lut> {
    histograms(img)
        .iter()
        .map(|h| {
            let lo = (0..256).find(|&i| h[i] != 0);
            let hi = (0..256).rev().find(|&i| h[i] != 0);
            match (lo, hi) {
                (Some(lo), Some(hi)) if hi > lo => {
                    let scale = 255.0 / (hi - lo) as f64;
                    let offset = -(lo as f64) * scale;
                    std::array::from_fn(|i| {
                        ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8
                    })
                }
                _ => identity_lut(),
            }
        })
        .collect()
}

/// `ImageOps.equalize(img)`: Pillow's per-channel histogram equalization (current Pillow,
/// whose step divides by 255; Pillow before 9.x divided by 256).
pub fn equalize_luts(img: &Image) -> Vec<Lut> {
    histograms(img)
        .iter()
        .map(|h| {
            let nonzero: Vec<u64> = h.iter().filter(|&&v| v != 0).map(|&v| v as u64).collect();
            if nonzero.len() <= 1 {
                return identity_lut();
            }
            let step = (nonzero.iter().sum::<u64>() - nonzero[nonzero.len() - 1]) / 255;
            if step == 0 {
                return identity_lut();
            }
            let mut n = step / 2;
            std::array::from_fn(|i| {
                // Entries past the last occupied bin can exceed 255; Pillow clips the LUT.
                let v = (n / step).min(255) as u8;
                n += h[i] as u64;
                v
            })
        })
        .collect()
}

/// `ImageOps.posterize(img, bits)`: keep the top `bits` bits (0 bits gives black).
pub fn posterize_lut(bits: u32) -> Lut {
    let mask = if bits >= 8 {
        0xFF
    } else {
        !((1u32 << (8 - bits)) - 1) as u8
    };
    std::array::from_fn(|i| i as u8 & mask)
}

/// `ImageOps.solarize(img, threshold)`: invert values >= threshold.
pub fn solarize_lut(threshold: i64) -> Lut {
    std::array::from_fn(|i| {
        if (i as i64) < threshold {
            i as u8
        } else {
            255 - i as u8
        }
    })
}

/// timm's `solarize_add`: add `add` (saturating) to values below `threshold`.
pub fn solarize_add_lut(add: i64, threshold: i64) -> Lut {
    std::array::from_fn(|i| {
        if (i as i64) < threshold {
            (i as i64 + add).clamp(0, 255) as u8
        } else {
            i as u8
        }
    })
}

pub fn invert_lut() -> Lut {
    std::array::from_fn(|i| 255 - i as u8)
}

/// Shift hue through PIL's 8-bit HSV (`img.convert("HSV")`, add to H with u8 wrap-around,
/// convert back), as torchvision's `adjust_hue` on PIL images does. Gray images are returned
/// unchanged.
pub fn shift_hue_into(src: &Image, hue_factor: f64, out: &mut Image) {
    out.copy_from(src);
    if src.channels != 3 {
        return;
    }
    // np.array(hue_factor * 255).astype(np.uint8): truncate, wrap negative values mod 256.
    // Even a zero shift goes through the lossy 8-bit HSV round trip, as in torchvision.
    let shift = ((hue_factor * 255.0) as i64).rem_euclid(256) as u8;
    for p in out.data.chunks_exact_mut(3) {
        let (h, s, v) = rgb_to_hsv_pil(p[0], p[1], p[2]);
        let rgb = hsv_to_rgb_pil(h.wrapping_add(shift), s, v);
        p.copy_from_slice(&rgb);
    }
}

/// Pillow's `rgb2hsv_row` (Convert.c), f32 variables and f64 temporaries as in the C.
fn rgb_to_hsv_pil(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return (0, 0, maxc);
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    let rc = (maxc - r) as f32 / cr;
    let gc = (maxc - g) as f32 / cr;
    let bc = (maxc - b) as f32 / cr;
    // The C adds its `2.0` / `4.0` double literals in double before storing to float.
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + rc as f64 - bc as f64) as f32
    } else {
        (4.0 + gc as f64 - rc as f64) as f32
    };
    // fmod(h / 6 + 1, 1) for h in [-1, 5]: the argument is in [5/6, 11/6), where
    // subtracting 1 is exact, so this equals the C's fmod without the libm call.
    let x = h as f64 / 6.0 + 1.0;
    let h = (if x >= 1.0 { x - 1.0 } else { x }) as f32;
    let clip8 = |v: i64| v.clamp(0, 255) as u8;
    (
        clip8((h as f64 * 255.0) as i64),
        clip8((s as f64 * 255.0) as i64),
        maxc,
    )
}

/// Pillow's `hsv2rgb` (Convert.c). C's `round` is half away from zero; every rounded value
/// here is in [0, 255], where truncate-and-compare gives exactly that without libm calls.
fn hsv_to_rgb_pil(h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let hf = h as f32 as f64 * 6.0 / 255.0;
    let i = hf as i64; // hf >= 0: truncation is floor
    let f = (hf - i as f32 as f64) as f32;
    let fs = (s as f32 as f64 / 255.0) as f32;
    let vf = v as f32 as f64;
    let round8 = |x: f64| {
        let t = x as i64;
        let r = if x - t as f64 >= 0.5 { t + 1 } else { t };
        r.clamp(0, 255) as u8
    };
    let p = round8(vf * (1.0 - fs as f64));
    let q = round8(vf * (1.0 - (fs * f) as f64));
    let t = round8(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// The inverse affine matrix of `Image.rotate(degrees)` (counter-clockwise, about the
/// centre (w/2, h/2), no expand): output pixel centre (x+.5, y+.5) samples input
/// (m0 x + m1 y + m2, m3 x + m4 y + m5). Entries rounded to 15 decimals as Pillow does, so
/// multiples of 90 degrees are exact.
pub fn rotate_matrix(width: usize, height: usize, degrees: f64) -> [f64; 6] {
    let angle = -degrees.rem_euclid(360.0).to_radians();
    // Python's round(v, 15) rounds the exact binary value in decimal; formatting with 15
    // digits does the same (scaling by 1e15 first would round twice).
    let round15 = |v: f64| format!("{v:.15}").parse::<f64>().unwrap_or(v);
    let (cos, sin) = (round15(angle.cos()), round15(angle.sin()));
    let mut m = [cos, sin, 0.0, -sin, cos, 0.0];
    let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
    m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx;
    m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy;
    m
}

/// `img.transform(img.size, Image.AFFINE, m, resample, fillcolor=fill)`. `fill` holds one
/// value per channel (only the first is used for gray images).
pub fn affine_into(src: &Image, m: [f64; 6], interp: Interp, fill: &[u8], out: &mut Image) {
    let (h, w, c) = (src.height, src.width, src.channels);
    out.reshape(h, w, c);
    if interp == Interp::Nearest {
        affine_nearest(src, m, &fill[..c], out);
        return;
    }
    for y in 0..h {
        let yc = y as f64 + 0.5;
        for x in 0..w {
            let xc = x as f64 + 0.5;
            let xin = m[0] * xc + m[1] * yc + m[2];
            let yin = m[3] * xc + m[4] * yc + m[5];
            let o = &mut out.data[(y * w + x) * c..(y * w + x + 1) * c];
            let inside = xin >= 0.0 && xin < w as f64 && yin >= 0.0 && yin < h as f64;
            if !inside {
                o.copy_from_slice(&fill[..c]);
                continue;
            }
            match interp {
                Interp::Bilinear => bilinear_px(src, xin, yin, o),
                _ => bicubic_px(src, xin, yin, o),
            }
        }
    }
}

/// Pillow's nearest-neighbour affine engines, whose rounding decides ties: a pure
/// scale/translation steps sample positions in f64 (`ImagingScaleAffine`); anything else runs
/// in 16.16 fixed point (`affine_fixed`) when the coordinates fit, else steps in f64.
fn affine_nearest(src: &Image, m: [f64; 6], fill: &[u8], out: &mut Image) {
    let (h, w, c) = (src.height, src.width, src.channels);
    let mut put = |x: usize, y: usize, xin: i64, yin: i64| {
        let o = &mut out.data[(y * w + x) * c..(y * w + x + 1) * c];
        if xin >= 0 && xin < w as i64 && yin >= 0 && yin < h as i64 {
            let p = (yin as usize * w + xin as usize) * c;
            o.copy_from_slice(&src.data[p..p + c]);
        } else {
            o.copy_from_slice(fill);
        }
    };
    // COORD(v): negative -> -1, else truncation.
    let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
    if m[1] == 0.0 && m[3] == 0.0 {
        let mut yo = m[5] + m[4] * 0.5;
        for y in 0..h {
            let yi = coord(yo);
            let mut xo = m[2] + m[0] * 0.5;
            for x in 0..w {
                put(x, y, coord(xo), yi);
                xo += m[0];
            }
            yo += m[4];
        }
        return;
    }
    let fits = |x: f64, y: f64| {
        (x * m[0] + y * m[1] + m[2]).abs() < 32768.0 && (x * m[3] + y * m[4] + m[5]).abs() < 32768.0
    };
    let (wf, hf) = (w as f64, h as f64);
    if fits(0.0, 0.0) && fits(wf, hf) && fits(0.0, hf) && fits(wf, 0.0) {
        let fix = |v: f64| (v * 65536.0 + 0.5).floor() as i32;
        let (a0, a1, a3, a4) = (fix(m[0]), fix(m[1]), fix(m[3]), fix(m[4]));
        let mut a2 = fix(m[2] + m[0] * 0.5 + m[1] * 0.5);
        let mut a5 = fix(m[5] + m[3] * 0.5 + m[4] * 0.5);
        for y in 0..h {
            let (mut xx, mut yy) = (a2, a5);
            for x in 0..w {
                put(x, y, (xx >> 16) as i64, (yy >> 16) as i64);
                xx = xx.wrapping_add(a0);
                yy = yy.wrapping_add(a3);
            }
            a2 = a2.wrapping_add(a1);
            a5 = a5.wrapping_add(a4);
        }
        return;
    }
    let mut xo = m[2] + m[1] * 0.5 + m[0] * 0.5;
    let mut yo = m[5] + m[4] * 0.5 + m[3] * 0.5;
    for y in 0..h {
        let (mut xx, mut yy) = (xo, yo);
        for x in 0..w {
            put(x, y, coord(xx), coord(yy));
            xx += m[0];
            yy += m[3];
        }
        xo += m[1];
        yo += m[4];
    }
}

/// Pillow's `bilinear_filter*`: neighbours clamped to the image, the lower row only if it
/// exists, result truncated.
fn bilinear_px(src: &Image, xin: f64, yin: f64, o: &mut [u8]) {
    let (h, w, c) = (src.height as i64, src.width as i64, src.channels);
    let (xs, ys) = (xin - 0.5, yin - 0.5);
    let (x, y) = (floor_i64(xs), floor_i64(ys));
    let (dx, dy) = (xs - x as f64, ys - y as f64);
    let x0 = x.clamp(0, w - 1) as usize * c;
    let x1 = (x + 1).clamp(0, w - 1) as usize * c;
    let stride = src.width * c;
    let r0 = &src.data[y.clamp(0, h - 1) as usize * stride..][..stride];
    // Pillow uses the lower row only when it exists, else the upper row's value.
    let r1 = if y + 1 >= 0 && y + 1 < h {
        &src.data[(y + 1) as usize * stride..][..stride]
    } else {
        r0
    };
    for (ch, ov) in o.iter_mut().enumerate() {
        let lerp = |r: &[u8]| {
            let (a, b) = (r[x0 + ch] as f64, r[x1 + ch] as f64);
            a + (b - a) * dx
        };
        let (v1, v2) = (lerp(r0), lerp(r1));
        *ov = (v1 + (v2 - v1) * dy) as u8;
    }
}

/// Pillow's `BICUBIC` interpolation polynomial (the a = -1 cubic of `Geometry.c`).
#[inline]
fn pil_cubic(v1: f64, v2: f64, v3: f64, v4: f64, d: f64) -> f64 {
    let p1 = v2;
    let p2 = -v1 + v3;
    let p3 = 2.0 * (v1 - v2) + v3 - v4;
    let p4 = -v1 + v2 - v3 + v4;
    p1 + d * (p2 + d * (p3 + d * p4))
}

/// Pillow's `bicubic_filter*`: 4x4 taps, columns clamped, result clipped and truncated.
/// Pillow repeats the previous row's value for rows outside the image, which is the same
/// as clamping the row index, so both axes clamp here.
fn bicubic_px(src: &Image, xin: f64, yin: f64, o: &mut [u8]) {
    let (h, w, c) = (src.height as i64, src.width as i64, src.channels);
    let (xs, ys) = (xin - 0.5, yin - 0.5);
    let (xf, yf) = (floor_i64(xs), floor_i64(ys));
    let (dx, dy) = (xs - xf as f64, ys - yf as f64);
    let xi: [usize; 4] = std::array::from_fn(|k| (xf - 1 + k as i64).clamp(0, w - 1) as usize * c);
    let stride = src.width * c;
    let rows: [&[u8]; 4] = std::array::from_fn(|k| {
        let yy = (yf - 1 + k as i64).clamp(0, h - 1) as usize;
        &src.data[yy * stride..(yy + 1) * stride]
    });
    for (ch, ov) in o.iter_mut().enumerate() {
        let row_val = |r: &[u8]| {
            let p = |k: usize| r[xi[k] + ch] as f64;
            pil_cubic(p(0), p(1), p(2), p(3), dx)
        };
        let v = pil_cubic(
            row_val(rows[0]),
            row_val(rows[1]),
            row_val(rows[2]),
            row_val(rows[3]),
            dy,
        );
        *ov = clip_trunc(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize, c: usize) -> Image {
        let data: Vec<u8> = (0..h * w * c).map(|i| (i * 53 % 256) as u8).collect();
        Image::from_slice(h, w, c, &data)
    }

    #[test]
    fn luma_matches_pil_rounding() {
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(0, 0, 0), 0);
        // 0.299 * 255 = 76.245 -> 76; 0.587 * 255 = 149.685 -> 150; 0.114 * 255 = 29.07 -> 29.
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }

    #[test]
    fn blend_truncates_and_clips() {
        assert_eq!(blend_px(0, 100, 0.5), 50);
        assert_eq!(blend_px(0, 101, 0.5), 50); // 50.5 truncated
        assert_eq!(blend_px(0, 200, 1.5), 255);
        assert_eq!(blend_px(200, 0, 1.5), 0);
        assert_eq!(blend_px(10, 20, 0.0), 10);
    }

    #[test]
    fn enhance_factor_one_is_identity_and_zero_is_degenerate() {
        let img = ramp(6, 5, 3);
        let mut out = Image::default();
        for kind in [
            Enhance::Brightness,
            Enhance::Contrast,
            Enhance::Color,
            Enhance::Sharpness,
        ] {
            enhance_into(&img, kind, 1.0, &mut out);
            assert_eq!(out, img, "{kind:?}");
        }
        enhance_into(&img, Enhance::Brightness, 0.0, &mut out);
        assert!(out.data.iter().all(|&v| v == 0));
        enhance_into(&img, Enhance::Contrast, 0.0, &mut out);
        let m = gray_mean_rounded(&img);
        assert!(out.data.iter().all(|&v| v == m));
        enhance_into(&img, Enhance::Color, 0.0, &mut out);
        for p in out.data.chunks_exact(3) {
            assert!(p[0] == p[1] && p[1] == p[2]);
        }
    }

    #[test]
    fn smooth_keeps_border_and_averages_inside() {
        let mut img = Image::new(3, 3, 1);
        img.set(1, 1, 0, 130);
        let mut out = Image::default();
        smooth_into(&img, &mut out);
        // centre: 130 * 5 / 13 = 50 exactly (+0.5, truncated).
        assert_eq!(out.get(1, 1, 0), 50);
        assert_eq!(out.get(0, 0, 0), 0);
        assert_eq!(out.get(1, 0, 0), 0);
    }

    #[test]
    fn autocontrast_stretches_each_channel() {
        let img = Image::from_slice(1, 3, 1, &[50, 100, 150]);
        let luts = autocontrast_luts(&img);
        let mut out = Image::default();
        apply_luts_into(&img, &luts, &mut out);
        // scale 2.55, offset -127.5: 50 -> 0, 100 -> 127 (127.5 truncated), 150 -> 255.
        assert_eq!(out.data, vec![0, 127, 255]);
    }

    #[test]
    fn equalize_of_uniform_histogram_is_identity() {
        // Every value exactly 4 times: step = (1024 - 4) // 255 = 4 and the map is
        // (2 + 4 i) // 4 = i.
        let data: Vec<u8> = (0..1024).map(|i| (i % 256) as u8).collect();
        let img = Image::from_slice(32, 32, 1, &data);
        let luts = equalize_luts(&img);
        let mut out = Image::default();
        apply_luts_into(&img, &luts, &mut out);
        assert_eq!(out, img);
        // Too few pixels for a non-zero step: Pillow leaves the image alone.
        let small = Image::from_slice(1, 4, 1, &[0, 50, 100, 200]);
        assert_eq!(equalize_luts(&small)[0], identity_lut());
        // A two-level image is spread to the extremes.
        let two: Vec<u8> = (0..1024).map(|i| if i < 512 { 100 } else { 110 }).collect();
        let luts = equalize_luts(&Image::from_slice(32, 32, 1, &two));
        assert_eq!((luts[0][100], luts[0][110]), (0, 255));
    }

    #[test]
    fn posterize_and_solarize_luts() {
        assert_eq!(posterize_lut(4)[0xAB], 0xA0);
        assert_eq!(posterize_lut(0)[0xFF], 0);
        assert_eq!(posterize_lut(8)[0x37], 0x37);
        assert_eq!(solarize_lut(128)[100], 100);
        assert_eq!(solarize_lut(128)[200], 55);
        assert_eq!(solarize_lut(256)[255], 255);
        assert_eq!(solarize_add_lut(110, 128)[127], 237);
        assert_eq!(solarize_add_lut(200, 128)[100], 255);
        assert_eq!(solarize_add_lut(110, 128)[128], 128);
    }

    #[test]
    fn hsv_round_trip_is_close_and_gray_is_exact() {
        for (r, g, b) in [
            (200u8, 30u8, 60u8),
            (10, 250, 128),
            (90, 90, 90),
            (0, 0, 255),
        ] {
            let (h, s, v) = rgb_to_hsv_pil(r, g, b);
            let back = hsv_to_rgb_pil(h, s, v);
            for (a, b) in back.iter().zip([r, g, b]) {
                // 8-bit hue quantization: up to 6 levels off at full saturation.
                assert!((*a as i32 - b as i32).abs() <= 6, "{back:?} vs {r},{g},{b}");
            }
        }
        assert_eq!(hsv_to_rgb_pil(0, 0, 77), [77, 77, 77]);
    }

    #[test]
    fn affine_identity_and_translation() {
        let img = ramp(5, 6, 3);
        let mut out = Image::default();
        for interp in [Interp::Nearest, Interp::Bilinear, Interp::Bicubic] {
            affine_into(
                &img,
                [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                interp,
                &[1, 2, 3],
                &mut out,
            );
            assert_eq!(out, img, "{interp:?}");
            // Shift content left by 2: output x samples input x + 2, the right columns fill.
            affine_into(
                &img,
                [1.0, 0.0, 2.0, 0.0, 1.0, 0.0],
                interp,
                &[1, 2, 3],
                &mut out,
            );
            for y in 0..5 {
                for x in 0..6 {
                    for c in 0..3 {
                        let want = if x + 2 < 6 {
                            img.get(y, x + 2, c)
                        } else {
                            [1, 2, 3][c]
                        };
                        assert_eq!(out.get(y, x, c), want, "{interp:?} {y} {x} {c}");
                    }
                }
            }
        }
    }

    /// Outputs of Pillow 13 / torchvision 0.20 on the same 5x6 RGB image, pinning the exact
    /// arithmetic (truncations, rounding, tie-breaking) rather than just the shape of it.
    mod pillow_reference {
        use super::*;
        use crate::data::augment::transforms::rotate;

        fn img() -> Image {
            let mut im = Image::new(5, 6, 3);
            for y in 0..5 {
                for x in 0..6 {
                    for c in 0..3 {
                        im.set(
                            y,
                            x,
                            c,
                            ((y * 37 + x * 91 + c * 53 + (x * y) % 7 * 20) % 256) as u8,
                        );
                    }
                }
            }
            im
        }

        const FILL: [u8; 3] = [124, 116, 104];

        #[test]
        fn rotate_and_shear() {
            #[rustfmt::skip]
            let rot30_bilinear = [124, 116, 104, 148, 201, 50, 24, 77, 130, 161, 91, 144, 109, 111, 163, 124, 116, 104, 75, 128, 181, 113, 166, 108, 68, 121, 161, 179, 108, 118, 166, 198, 93, 75, 128, 181, 63, 116, 169, 134, 135, 188, 69, 109, 162, 193, 67, 56, 114, 154, 117, 91, 101, 154, 59, 112, 165, 150, 45, 98, 107, 118, 81, 149, 202, 29, 63, 116, 100, 68, 78, 131, 124, 116, 104, 90, 142, 195, 39, 92, 136, 92, 145, 194, 26, 79, 132, 124, 116, 104];
            #[rustfmt::skip]
            let rot30_bicubic = [124, 116, 104, 177, 229, 14, 15, 67, 136, 165, 56, 150, 111, 104, 160, 124, 116, 104, 58, 111, 196, 121, 179, 98, 31, 132, 166, 245, 107, 99, 178, 239, 78, 53, 127, 203, 63, 131, 189, 153, 138, 202, 41, 91, 195, 217, 43, 28, 128, 170, 107, 78, 85, 170, 39, 114, 167, 168, 9, 67, 103, 108, 50, 184, 247, 0, 40, 123, 99, 73, 80, 130, 124, 116, 104, 84, 136, 197, 9, 94, 136, 97, 150, 199, 2, 55, 146, 124, 116, 104];
            #[rustfmt::skip]
            let rot_m17_nearest = [37, 90, 143, 37, 90, 143, 91, 144, 197, 182, 235, 32, 17, 70, 123, 0, 0, 0, 74, 127, 180, 148, 201, 254, 3, 56, 109, 114, 167, 220, 225, 22, 75, 199, 252, 49, 111, 164, 217, 205, 2, 55, 80, 133, 186, 211, 8, 61, 202, 255, 52, 80, 133, 186, 148, 201, 254, 6, 59, 112, 157, 210, 7, 168, 221, 18, 63, 116, 169, 77, 130, 183, 0, 0, 0, 94, 147, 200, 9, 62, 115, 40, 93, 146, 74, 127, 180, 74, 127, 180];
            #[rustfmt::skip]
            let shear_x_bicubic = [10, 63, 120, 115, 168, 182, 167, 220, 26, 11, 64, 147, 129, 182, 200, 208, 255, 32, 96, 149, 202, 94, 147, 200, 16, 94, 147, 189, 113, 166, 182, 46, 99, 59, 148, 201, 180, 23, 76, 110, 100, 153, 160, 21, 112, 232, 184, 26, 116, 188, 139, 124, 116, 104, 4, 57, 122, 147, 200, 11, 172, 225, 9, 68, 121, 160, 73, 126, 179, 124, 116, 104, 61, 114, 167, 78, 131, 184, 0, 60, 113, 80, 78, 131, 233, 0, 49, 124, 116, 104];
            let im = img();
            assert_eq!(
                rotate(&im, 30.0, Interp::Bilinear, FILL).data,
                rot30_bilinear
            );
            assert_eq!(rotate(&im, 30.0, Interp::Bicubic, FILL).data, rot30_bicubic);
            assert_eq!(
                rotate(&im, -17.0, Interp::Nearest, [0; 3]).data,
                rot_m17_nearest
            );
            let mut out = Image::default();
            affine_into(
                &im,
                [1.0, 0.27, 0.0, 0.0, 1.0, 0.0],
                Interp::Bicubic,
                &FILL,
                &mut out,
            );
            assert_eq!(out.data, shear_x_bicubic);
        }

        #[test]
        fn enhance_and_hue() {
            #[rustfmt::skip]
            let sharp = [0, 53, 106, 91, 144, 197, 182, 235, 32, 17, 70, 123, 108, 161, 214, 199, 252, 49, 37, 90, 143, 176, 243, 255, 0, 27, 94, 107, 188, 255, 255, 0, 47, 80, 133, 186, 74, 127, 180, 255, 0, 12, 59, 140, 222, 248, 0, 41, 235, 255, 14, 77, 130, 183, 111, 164, 217, 0, 24, 91, 180, 255, 0, 195, 255, 0, 35, 117, 198, 74, 127, 180, 148, 201, 254, 63, 116, 169, 94, 147, 200, 9, 62, 115, 40, 93, 146, 211, 8, 61];
            #[rustfmt::skip]
            let contrast = [60, 87, 113, 106, 132, 159, 151, 178, 76, 69, 95, 122, 114, 141, 167, 160, 186, 85, 79, 105, 132, 134, 161, 187, 62, 88, 115, 117, 144, 170, 173, 71, 98, 100, 127, 153, 97, 124, 150, 163, 61, 88, 100, 127, 153, 166, 64, 91, 161, 188, 86, 99, 125, 152, 116, 142, 169, 63, 90, 116, 139, 165, 64, 144, 171, 69, 92, 118, 145, 97, 124, 150, 134, 161, 187, 92, 118, 145, 107, 134, 160, 65, 91, 118, 80, 107, 133, 166, 64, 91];
            #[rustfmt::skip]
            let color = [0, 58, 137, 69, 149, 228, 175, 254, 0, 0, 75, 154, 86, 166, 245, 192, 255, 0, 15, 95, 174, 126, 206, 255, 0, 61, 140, 92, 172, 251, 255, 0, 68, 58, 138, 217, 52, 132, 211, 255, 0, 48, 58, 138, 217, 255, 0, 54, 195, 255, 0, 55, 135, 214, 89, 169, 248, 0, 64, 143, 150, 229, 0, 161, 240, 0, 41, 121, 200, 52, 132, 211, 126, 206, 255, 41, 121, 200, 72, 152, 231, 0, 67, 146, 18, 98, 177, 255, 0, 54];
            #[rustfmt::skip]
            let hue_p01 = [7, 0, 106, 99, 91, 197, 66, 235, 32, 25, 17, 123, 116, 108, 214, 83, 252, 49, 44, 37, 143, 156, 148, 254, 11, 3, 109, 122, 115, 220, 225, 79, 22, 88, 80, 186, 82, 74, 180, 205, 60, 2, 88, 80, 186, 211, 66, 8, 85, 255, 52, 85, 78, 183, 119, 111, 217, 14, 6, 112, 41, 210, 7, 52, 221, 18, 71, 64, 169, 82, 74, 180, 156, 148, 254, 71, 64, 169, 102, 94, 200, 17, 9, 115, 48, 40, 146, 211, 66, 8];
            #[rustfmt::skip]
            let hue_m03 = [32, 106, 0, 124, 197, 91, 235, 32, 137, 50, 123, 17, 141, 214, 108, 252, 49, 154, 69, 143, 37, 181, 254, 148, 36, 109, 3, 147, 220, 115, 22, 36, 225, 113, 186, 80, 107, 180, 74, 2, 17, 205, 113, 186, 80, 8, 23, 211, 255, 52, 157, 110, 183, 78, 144, 217, 111, 39, 112, 6, 210, 7, 112, 221, 18, 123, 96, 169, 64, 107, 180, 74, 181, 254, 148, 96, 169, 64, 127, 200, 94, 41, 115, 9, 72, 146, 40, 8, 23, 211];
            let im = img();
            let mut out = Image::default();
            enhance_into(&im, Enhance::Sharpness, 1.72, &mut out);
            assert_eq!(out.data, sharp);
            enhance_into(&im, Enhance::Contrast, 0.5, &mut out);
            assert_eq!(out.data, contrast);
            enhance_into(&im, Enhance::Color, 1.5, &mut out);
            assert_eq!(out.data, color);
            shift_hue_into(&im, 0.1, &mut out);
            assert_eq!(out.data, hue_p01);
            shift_hue_into(&im, -0.3, &mut out);
            assert_eq!(out.data, hue_m03);
        }

        #[test]
        fn equalize_and_autocontrast() {
            let mut big = Image::new(24, 24, 1);
            for y in 0..24 {
                for x in 0..24 {
                    big.set(y, x, 0, ((y * y * 3 + x * 5) % 256) as u8);
                }
            }
            let lut = &equalize_luts(&big)[0];
            for (v, want) in [
                (0, 0),
                (1, 3),
                (2, 4),
                (3, 5),
                (5, 6),
                (36, 45),
                (37, 45),
                (38, 47),
                (100, 126),
                (199, 241),
                (201, 241),
            ] {
                assert_eq!(lut[v], want, "equalize {v}");
            }
            let mut g = Image::new(5, 6, 1);
            let im = img();
            for (i, p) in im.data.chunks_exact(3).enumerate() {
                g.data[i] = p[0];
            }
            #[rustfmt::skip]
            let want = [0, 103, 206, 19, 122, 225, 41, 167, 3, 129, 255, 90, 83, 232, 90, 239, 228, 87, 125, 6, 177, 190, 71, 83, 167, 71, 106, 10, 45, 239];
            let mut out = Image::default();
            apply_luts_into(&g, &autocontrast_luts(&g), &mut out);
            assert_eq!(out.data, want);
        }
    }
}
