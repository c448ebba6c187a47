//! The u8 image every pre-normalization transform works on, and resampling.
//!
//! `resize` follows PyTorch's `F.interpolate` on tensors: `align_corners=False`, half-pixel
//! centres, bicubic with a = -0.75 and clamped borders, computed in f32, clamped to
//! [0, 255] and rounded half to even (`torch.round`) back to u8. No antialiasing: every
//! resize in vitrs is an upscale (32 -> 224 for pretrained models, RRC crops <= the output),
//! where bilinear antialiasing changes nothing.
//!
//! Checked against torch 2.5 `F.interpolate` on ~1M output values: nearest is identical;
//! bilinear and bicubic differ by 1 on about 1 value in 10^4 (torch picks different CPU
//! kernels by output size, whose float evaluation order differs in the last bit). Note that
//! torchvision's `Resize(antialias=True)` bicubic uses the a = -0.5 antialiasing kernel even
//! when upscaling; this follows `F.interpolate` (a = -0.75) as specified.

/// A u8 image, HWC-interleaved and row-major, with 1 (gray) or 3 (RGB) channels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// `height * width * channels` bytes.
    pub data: Vec<u8>,
}

impl Image {
    /// A black image.
    pub fn new(height: usize, width: usize, channels: usize) -> Self {
        Image {
            height,
            width,
            channels,
            data: vec![0; height * width * channels],
        }
    }

    /// A copy of HWC bytes (e.g. `Dataset::image(i)`).
    pub fn from_slice(height: usize, width: usize, channels: usize, data: &[u8]) -> Self {
        assert_eq!(data.len(), height * width * channels, "image byte count");
        Image {
            height,
            width,
            channels,
            data: data.to_vec(),
        }
    }

    /// An image whose every pixel is `pixel` (its length is the channel count).
    pub fn filled(height: usize, width: usize, pixel: &[u8]) -> Self {
        Image {
            height,
            width,
            channels: pixel.len(),
            data: pixel.repeat(height * width),
        }
    }

    #[inline]
    pub fn get(&self, y: usize, x: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * self.channels + c]
    }

    #[inline]
    pub fn set(&mut self, y: usize, x: usize, c: usize, v: u8) {
        self.data[(y * self.width + x) * self.channels + c] = v;
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Re-shapes `self` to the given size, reusing its allocation. The contents are
    /// unspecified (callers overwrite every byte); this is what keeps the per-sample
    /// pipeline from allocating.
    pub(crate) fn reshape(&mut self, height: usize, width: usize, channels: usize) {
        self.height = height;
        self.width = width;
        self.channels = channels;
        self.data.resize(height * width * channels, 0);
    }

    /// Copies `src` into `self`, reusing `self`'s allocation.
    pub(crate) fn copy_from(&mut self, src: &Image) {
        self.reshape(src.height, src.width, src.channels);
        self.data.copy_from_slice(&src.data);
    }
}

/// Resampling filter. For `resize`/RRC these follow PyTorch's tensor interpolation; for the
/// geometric ops (rotate, shear, translate) they follow PIL's `Image.transform`, as the
/// reference pipelines apply those to PIL images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interp {
    Nearest,
    Bilinear,
    Bicubic,
}

/// Resizes the whole image to `out_h` x `out_w`.
pub fn resize(img: &Image, out_h: usize, out_w: usize, interp: Interp) -> Image {
    let mut out = Image::default();
    resize_region_into(
        img,
        (0, 0, img.height, img.width),
        out_h,
        out_w,
        interp,
        &mut out,
    );
    out
}

/// Resizes the crop `(top, left, height, width)` of `img` to `out_h` x `out_w` into `out`
/// (as torchvision's `resized_crop`: the crop's own borders are the clamping borders).
pub fn resize_region_into(
    img: &Image,
    region: (usize, usize, usize, usize),
    out_h: usize,
    out_w: usize,
    interp: Interp,
    out: &mut Image,
) {
    let (top, left, rh, rw) = region;
    assert!(
        top + rh <= img.height && left + rw <= img.width && rh > 0 && rw > 0,
        "resize region {region:?} outside a {}x{} image",
        img.height,
        img.width
    );
    out.reshape(out_h, out_w, img.channels);
    if out_h == 0 || out_w == 0 {
        return;
    }
    // An identity resize is a copy; torch's kernels give exactly the input then too.
    if rh == out_h && rw == out_w {
        copy_region(img, region, out);
        return;
    }
    match interp {
        Interp::Nearest => resize_nearest(img, region, out),
        Interp::Bilinear | Interp::Bicubic => resize_separable(img, region, interp, out),
    }
}

fn copy_region(img: &Image, (top, left, rh, rw): (usize, usize, usize, usize), out: &mut Image) {
    let c = img.channels;
    for y in 0..rh {
        let s = ((top + y) * img.width + left) * c;
        out.data[y * rw * c..(y + 1) * rw * c].copy_from_slice(&img.data[s..s + rw * c]);
    }
}

/// torch 'nearest' (the legacy one, not 'nearest-exact'): src = floor(dst * in/out), in f32.
fn nearest_index(dst: usize, in_size: usize, out_size: usize) -> usize {
    let scale = in_size as f32 / out_size as f32;
    ((dst as f32 * scale).floor() as usize).min(in_size - 1)
}

fn resize_nearest(img: &Image, (top, left, rh, rw): (usize, usize, usize, usize), out: &mut Image) {
    let c = img.channels;
    let (oh, ow) = (out.height, out.width);
    let xs: Vec<usize> = (0..ow).map(|x| left + nearest_index(x, rw, ow)).collect();
    for y in 0..oh {
        let sy = top + nearest_index(y, rh, oh);
        let row = &img.data[sy * img.width * c..(sy + 1) * img.width * c];
        let orow = &mut out.data[y * ow * c..(y + 1) * ow * c];
        for (x, &sx) in xs.iter().enumerate() {
            orow[x * c..(x + 1) * c].copy_from_slice(&row[sx * c..(sx + 1) * c]);
        }
    }
}

/// The taps of one output coordinate along one axis: source indices (already clamped into
/// the region) and their weights.
#[derive(Clone, Copy)]
struct Taps {
    idx: [usize; 4],
    w: [f32; 4],
    n: usize,
}

/// PyTorch's cubic convolution kernel with A = -0.75 (`upsample_bicubic2d`).
fn cubic_coeffs(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let cc1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let cc2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    // torch evaluates the last tap at (1 - t) + 1, which can round differently from 2 - t.
    let u = 1.0 - t;
    [cc2(t + 1.0), cc1(t), cc1(u), cc2(u + 1.0)]
}

/// `area_pixel_compute_source_index` with align_corners=False, in f32 as torch does for
/// float tensors: linear clamps negative sources to 0, cubic does not.
fn axis_taps(in_size: usize, out_size: usize, interp: Interp) -> Vec<Taps> {
    let scale = in_size as f32 / out_size as f32;
    let last = in_size as i64 - 1;
    (0..out_size)
        .map(|d| {
            let src = scale * (d as f32 + 0.5) - 0.5;
            match interp {
                Interp::Bicubic => {
                    let f = src.floor();
                    let t = src - f;
                    let i0 = f as i64;
                    let mut idx = [0usize; 4];
                    for (k, slot) in idx.iter_mut().enumerate() {
                        *slot = (i0 - 1 + k as i64).clamp(0, last) as usize;
                    }
                    Taps {
                        idx,
                        w: cubic_coeffs(t),
                        n: 4,
                    }
                }
                _ => {
                    let src = src.max(0.0);
                    let i0 = src as i64; // src >= 0, so truncation is floor
                    let i1 = if i0 < last { i0 + 1 } else { i0 };
                    let l1 = src - i0 as f32;
                    Taps {
                        idx: [i0 as usize, i1 as usize, 0, 0],
                        w: [1.0 - l1, l1, 0.0, 0.0],
                        n: 2,
                    }
                }
            }
        })
        .collect()
}

/// Bilinear / bicubic as two passes: along x for every source row of the region (f32), then
/// along y. This is the same grouping torch uses (interpolate rows, then combine them).
fn resize_separable(
    img: &Image,
    (top, left, rh, rw): (usize, usize, usize, usize),
    interp: Interp,
    out: &mut Image,
) {
    let c = img.channels;
    let (oh, ow) = (out.height, out.width);
    let xt = axis_taps(rw, ow, interp);
    let yt = axis_taps(rh, oh, interp);
    let mut rows = vec![0f32; rh * ow * c];
    for y in 0..rh {
        let src = &img.data[((top + y) * img.width + left) * c..];
        let dst = &mut rows[y * ow * c..(y + 1) * ow * c];
        for (x, t) in xt.iter().enumerate() {
            for ch in 0..c {
                let mut acc = 0f32;
                for k in 0..t.n {
                    acc += t.w[k] * src[t.idx[k] * c + ch] as f32;
                }
                dst[x * c + ch] = acc;
            }
        }
    }
    // Vertical pass tap by tap over whole rows (vectorizes), keeping torch's per-value
    // summation order: ((w0 r0 + w1 r1) + w2 r2) + w3 r3.
    let row_len = ow * c;
    let mut acc = vec![0f32; row_len];
    for (y, t) in yt.iter().enumerate() {
        acc.fill(0.0);
        for k in 0..t.n {
            let w = t.w[k];
            let r = &rows[t.idx[k] * row_len..(t.idx[k] + 1) * row_len];
            for (a, &v) in acc.iter_mut().zip(r) {
                *a += w * v;
            }
        }
        for (o, &a) in out.data[y * row_len..(y + 1) * row_len]
            .iter_mut()
            .zip(&acc)
        {
            *o = round_to_u8(a);
        }
    }
}

/// Clamp to [0, 255] (torchvision clamps bicubic overshoot; bilinear only ever leaves the
/// range by float noise), then round half to even like `torch.round`. Adding and removing
/// 2^23 makes the FPU's round-to-nearest-even do the rounding, which vectorizes where
/// `round_ties_even` would be a libm call.
#[inline]
fn round_to_u8(v: f32) -> u8 {
    const MAGIC: f32 = 8_388_608.0; // 2^23
    ((v.clamp(0.0, 255.0) + MAGIC) - MAGIC) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant_under_every_filter() {
        let img = Image::filled(7, 5, &[10, 200, 77]);
        for interp in [Interp::Nearest, Interp::Bilinear, Interp::Bicubic] {
            for (h, w) in [(14, 10), (32, 32), (3, 2), (7, 5)] {
                let r = resize(&img, h, w, interp);
                assert_eq!((r.height, r.width, r.channels), (h, w, 3));
                assert_eq!(r, Image::filled(h, w, &[10, 200, 77]), "{interp:?} {h}x{w}");
            }
        }
    }

    #[test]
    fn bilinear_2x_upscale_matches_hand_computed_values() {
        // 1x2 -> 2x4: src x = (d + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25
        // (clamped to the last pixel), so values 0, 0.75*0 + 0.25*100 = 25, 75, 100.
        let img = Image::from_slice(1, 2, 1, &[0, 100]);
        let r = resize(&img, 2, 4, Interp::Bilinear);
        assert_eq!(r.data, vec![0, 25, 75, 100, 0, 25, 75, 100]);
        // 2x2 -> 4x4 on [[0, 40], [80, 120]]: row 1 (src y 0.25) of column 1 (src x 0.25) is
        // 0.75*(0.75*0 + 0.25*40) + 0.25*(0.75*80 + 0.25*120) = 7.5 + 22.5 = 30.
        let img = Image::from_slice(2, 2, 1, &[0, 40, 80, 120]);
        let r = resize(&img, 4, 4, Interp::Bilinear);
        #[rustfmt::skip]
        let want = [
            0, 10, 30, 40,
            20, 30, 50, 60,
            60, 70, 90, 100,
            80, 90, 110, 120,
        ];
        assert_eq!(r.data, want);
    }

    #[test]
    fn nearest_upscale_repeats_pixels() {
        let img = Image::from_slice(2, 2, 1, &[1, 2, 3, 4]);
        let r = resize(&img, 4, 4, Interp::Nearest);
        assert_eq!(r.data, vec![1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
    }

    #[test]
    fn matches_torch_interpolate_on_a_small_image() {
        // torch 2.5: F.interpolate(x, size=(5, 7), mode=m, align_corners=False), bicubic
        // clamped to [0, 255], then round().
        let img = Image::from_slice(3, 4, 1, &[10, 200, 30, 90, 255, 0, 120, 60, 40, 80, 250, 5]);
        #[rustfmt::skip]
        let bilinear = [10, 78, 186, 115, 34, 69, 90, 108, 112, 119, 93, 67, 74, 78, 255, 164, 18, 60, 116, 81, 60, 126, 98, 54, 123, 186, 88, 27, 40, 54, 77, 165, 232, 92, 5];
        #[rustfmt::skip]
        let bicubic = [0, 78, 215, 135, 16, 56, 100, 121, 123, 120, 83, 54, 69, 85, 255, 161, 9, 42, 122, 88, 54, 152, 94, 33, 127, 204, 97, 6, 13, 32, 76, 206, 255, 100, 0];
        #[rustfmt::skip]
        let nearest = [10, 10, 200, 200, 30, 30, 90, 10, 10, 200, 200, 30, 30, 90, 255, 255, 0, 0, 120, 120, 60, 255, 255, 0, 0, 120, 120, 60, 40, 40, 80, 80, 250, 250, 5];
        assert_eq!(resize(&img, 5, 7, Interp::Bilinear).data, bilinear);
        assert_eq!(resize(&img, 5, 7, Interp::Bicubic).data, bicubic);
        assert_eq!(resize(&img, 5, 7, Interp::Nearest).data, nearest);
        // The bicubic kernel interpolates: weights sum to one.
        for t in [0.0f32, 0.3, 0.5, 0.99] {
            assert!((cubic_coeffs(t).iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn region_resize_equals_crop_then_resize() {
        let data: Vec<u8> = (0..6 * 5 * 3).map(|i| (i * 37 % 251) as u8).collect();
        let img = Image::from_slice(6, 5, 3, &data);
        let region = (1, 2, 4, 3);
        let mut crop = Image::new(4, 3, 3);
        copy_region(&img, region, &mut crop);
        for interp in [Interp::Nearest, Interp::Bilinear, Interp::Bicubic] {
            let mut a = Image::default();
            resize_region_into(&img, region, 9, 7, interp, &mut a);
            assert_eq!(a, resize(&crop, 9, 7, interp));
        }
    }
}
