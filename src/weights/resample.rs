//! Position embeddings resampled to another resolution the way the source library does:
//! timm's `resample_abs_pos_embed` calls `F.interpolate(mode='bicubic', antialias=True)` (its
//! default, timm 1.0.x), HF's `interpolate_pos_encoding` (transformers 5.x) calls
//! `F.interpolate(size=..., mode='bicubic', align_corners=False)` without antialiasing. The two
//! differ (kernel a = −0.5 with a normalised, border-truncated window vs. a = −0.75 with
//! clamped borders), so both are implemented; vitrs checkpoints follow timm.

use super::err;
use crate::error::Result;
use crate::model::io::HostTensor;

/// How a position-embedding grid is resampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// timm `resample_abs_pos_embed`: PyTorch bicubic with `antialias=True` (Keys kernel
    /// a = −0.5, support scaled when shrinking, window cut at the borders and renormalised).
    Antialias,
    /// HF `interpolate_pos_encoding`: PyTorch bicubic, `align_corners=False`, no antialias
    /// (a = −0.75, border pixels repeated).
    Bicubic,
}

/// Resample the patch part of `pos_embed` (`[1, prefix + h·w, dim]`) to `new` = (h', w');
/// the prefix tokens (class, distillation) are kept. Identity when the grid is unchanged.
pub fn resample_pos_embed(
    pe: &HostTensor,
    prefix: usize,
    new: (usize, usize),
    method: Resample,
) -> Result<HostTensor> {
    let [1, n, dim] = pe.shape[..] else {
        return Err(err(format!(
            "pos_embed has shape {:?}, expected [1, tokens, dim]",
            pe.shape
        )));
    };
    let patches = n.saturating_sub(prefix);
    let g = (patches as f64).sqrt().round() as usize;
    if g * g != patches {
        return Err(err(format!(
            "pos_embed holds {patches} patch positions, not a square grid"
        )));
    }
    if (g, g) == new {
        return Ok(pe.clone());
    }
    let grid = resample_grid(&pe.data[prefix * dim..], (g, g), dim, new, method);
    let mut data = pe.data[..prefix * dim].to_vec();
    data.extend(grid);
    Ok(HostTensor {
        shape: vec![1, prefix + new.0 * new.1, dim],
        data,
    })
}

/// Resample a `[h, w, dim]` grid (channels last, as the tokens lie) to `[h', w', dim]`.
pub fn resample_grid(
    src: &[f32],
    (h, w): (usize, usize),
    dim: usize,
    (nh, nw): (usize, usize),
    method: Resample,
) -> Vec<f32> {
    let wy = axis_weights(h, nh, method);
    let wx = axis_weights(w, nw, method);
    // Along x first: [h, nw, dim], then along y: [nh, nw, dim]; in f64.
    let mut tmp = vec![0f64; h * nw * dim];
    for y in 0..h {
        for (ox, taps) in wx.iter().enumerate() {
            let o = &mut tmp[(y * nw + ox) * dim..(y * nw + ox + 1) * dim];
            for &(ix, wt) in taps {
                let s = &src[(y * w + ix) * dim..(y * w + ix + 1) * dim];
                for (a, &b) in o.iter_mut().zip(s) {
                    *a += wt * b as f64;
                }
            }
        }
    }
    let mut out = vec![0f32; nh * nw * dim];
    for (oy, taps) in wy.iter().enumerate() {
        for ox in 0..nw {
            let o = &mut out[(oy * nw + ox) * dim..(oy * nw + ox + 1) * dim];
            let mut acc = vec![0f64; dim];
            for &(iy, wt) in taps {
                let s = &tmp[(iy * nw + ox) * dim..(iy * nw + ox + 1) * dim];
                for (a, &b) in acc.iter_mut().zip(s) {
                    *a += wt * b;
                }
            }
            for (a, b) in o.iter_mut().zip(acc) {
                *a = b as f32;
            }
        }
    }
    out
}

/// Cubic convolution kernel (Keys) with parameter `a`.
fn keys(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// For each output index, the (input index, weight) taps of one axis, as PyTorch's
/// `upsample_bicubic2d` (align_corners=False, output size given) or `_upsample_bicubic2d_aa`
/// compute them.
fn axis_weights(n_in: usize, n_out: usize, method: Resample) -> Vec<Vec<(usize, f64)>> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|i| match method {
            Resample::Bicubic => {
                let real = scale * (i as f64 + 0.5) - 0.5;
                let fl = real.floor();
                let t = real - fl;
                let a = -0.75;
                let w = [
                    keys(t + 1.0, a),
                    keys(t, a),
                    keys(1.0 - t, a),
                    keys(2.0 - t, a),
                ];
                (0..4)
                    .map(|k| {
                        let ix = (fl as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
                        (ix, w[k])
                    })
                    .collect()
            }
            Resample::Antialias => {
                let (support, inv) = if scale >= 1.0 {
                    (2.0 * scale, 1.0 / scale)
                } else {
                    (2.0, 1.0)
                };
                let center = scale * (i as f64 + 0.5);
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
                let taps: Vec<(usize, f64)> = (xmin..xmax)
                    .map(|j| (j, keys((j as f64 - center + 0.5) * inv, -0.5)))
                    .collect();
                let total: f64 = taps.iter().map(|t| t.1).sum();
                if total == 0.0 {
                    return taps;
                }
                taps.into_iter().map(|(j, w)| (j, w / total)).collect()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Axis weights sum to one and an unchanged size is the identity, for both methods.
    #[test]
    fn resampling_preserves_constants_and_same_size_is_identity() {
        for m in [Resample::Antialias, Resample::Bicubic] {
            for (a, b) in [(2, 3), (3, 5), (4, 2), (7, 3), (14, 24)] {
                for taps in axis_weights(a, b, m) {
                    let s: f64 = taps.iter().map(|t| t.1).sum();
                    assert!((s - 1.0).abs() < 1e-12, "{m:?} {a}->{b}: {s}");
                }
            }
            let pe = HostTensor {
                shape: vec![1, 1 + 9, 2],
                data: (0..20).map(|i| i as f32 * 0.37).collect(),
            };
            assert_eq!(resample_pos_embed(&pe, 1, (3, 3), m).unwrap(), pe);
            let up = resample_pos_embed(&pe, 1, (5, 5), m).unwrap();
            assert_eq!(up.shape, vec![1, 26, 2]);
            assert_eq!(up.data[..2], pe.data[..2], "the class token is kept");
        }
    }

    /// 1-D references written out from the definitions, on a 2-point axis upsampled to 3.
    #[test]
    fn axis_weights_match_hand_computed_values() {
        // HF / plain bicubic, A = -0.75. Output 0: source x = 2/3·0.5 − 0.5 = −1/6:
        // floor −1, t = 5/6, taps at −2, −1, 0, 1 clamped to 0, 0, 0, 1.
        let w = axis_weights(2, 3, Resample::Bicubic);
        let k = |x: f64| keys(x, -0.75);
        let t: f64 = 5.0 / 6.0;
        let expect0 = k(t + 1.0) + k(t) + k(1.0 - t); // all on index 0
        let got0: f64 = w[0].iter().filter(|x| x.0 == 0).map(|x| x.1).sum();
        assert!((got0 - expect0).abs() < 1e-12);
        // The middle output sits exactly between the two inputs: weights 1/2, 1/2.
        let mid: f64 = w[1].iter().filter(|x| x.0 == 0).map(|x| x.1).sum();
        assert!((mid - 0.5).abs() < 1e-12, "{mid}");
        // Antialiased, a = -0.5: output 0 at centre 1/3; taps j = 0, 1 at distances 1/6, 7/6.
        let w = axis_weights(2, 3, Resample::Antialias);
        let k = |x: f64| keys(x, -0.5);
        let (a, b) = (k(1.0 / 6.0), k(7.0 / 6.0));
        assert_eq!(w[0].len(), 2);
        assert!((w[0][0].1 - a / (a + b)).abs() < 1e-12);
        assert!((w[0][1].1 - b / (a + b)).abs() < 1e-12);
    }

    /// Pillow's BICUBIC resize of float images is the algorithm PyTorch's `antialias=True`
    /// reproduces (its code cites Pillow's): values computed with Pillow 13 for the grid
    /// `v[y][x] = sin(0.7y + 1.3x) + 0.1·y·x`, up (3 → 5) and down (5 → 3).
    #[test]
    fn antialias_matches_pillows_bicubic() {
        let grid = |n: usize| -> Vec<f32> {
            (0..n * n)
                .map(|i| {
                    let (y, x) = ((i / n) as f64, (i % n) as f64);
                    ((0.7 * y + 1.3 * x).sin() + 0.1 * y * x) as f32
                })
                .collect()
        };
        let up = [
            -0.1247505,
            0.3234952,
            0.9601062,
            0.739801,
            0.5203586,
            0.1513553,
            0.5145515,
            0.9967018,
            0.6233073,
            0.3198839,
            0.6166645,
            0.8155684,
            1.009297,
            0.3977879,
            -0.03073008,
            0.9045132,
            0.8934218,
            0.763384,
            0.1073397,
            -0.313603,
            1.042346,
            0.9105945,
            0.5985559,
            -0.05974472,
            -0.4612955,
        ];
        let down = [
            0.6266017, 0.2741675, -0.6891484, 0.820241, -0.1562162, 0.5378535, 0.1759032,
            0.03529993, 1.978832,
        ];
        for (n, m, want) in [(3, 5, &up[..]), (5, 3, &down[..])] {
            let got = resample_grid(&grid(n), (n, n), 1, (m, m), Resample::Antialias);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{n}->{m}: {got:?}");
            }
        }
    }
}
