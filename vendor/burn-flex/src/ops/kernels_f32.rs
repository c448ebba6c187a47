//! vitrs patch: vectorised f32 kernels — the GELU, its backward, and the softmax rows of
//! the naive attention.
//!
//! Upstream computes them element by element, calling libm's scalar `erff` / `expf`:
//! nothing vectorises, and in a ViT train step the GELU alone was ~12% of the CPU time. Here erf is a branch-free rational function and exp a
//! Cephes-style polynomial (both within f32 rounding, see `erf_f32` / `exp_f32`), and each
//! kernel is compiled three times — AVX-512, AVX2+FMA, baseline — with the widest the CPU has
//! picked at run time, since the crate itself is built for baseline x86-64. Large tensors
//! are split over the rayon pool like the other element-wise ops (`crate::par`).

use alloc::vec::Vec;
use burn_backend::DType;
use burn_std::Bytes;
use core::mem::MaybeUninit;

use crate::{FlexTensor, Layout};

/// erf from the rational approximation of Eigen's `generic_fast_erf_float` (absolute error
/// ≈ 1e-7; libm's `erff` rounding is ≈ 6e-8; PyTorch's CPU GELU also uses a polynomial erf).
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    // erf(±4) rounds to ±1 in f32.
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_1e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329_2e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// exp as in Cephes' `expf`: x = n·ln2 + r, a degree-6 polynomial in r, 2ⁿ put in the
/// exponent bits (≈ 1 ulp). n is rounded with the 1.5·2²³ trick rather than `floor`, which
/// is a libm call on baseline x86-64. The input is clamped to [-87.3, 88] (`exp` below that
/// is < 1.2e-38; the GELU backward only passes x ≤ 0).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³
    let x = x.clamp(-87.3, 88.0);
    let t = x * core::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // t's low mantissa bits hold n (two's complement): 2ⁿ = bits (n + 127) << 23.
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    e * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// GELU(x) = x·Φ(x) = ½·x·(1 + erf(x/√2)).
#[inline(always)]
pub fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * core::f32::consts::FRAC_1_SQRT_2))
}

/// g·GELU'(x) = g·(Φ(x) + x·φ(x)).
#[inline(always)]
pub(crate) fn gelu_grad_f32(x: f32, g: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf_f32(x * core::f32::consts::FRAC_1_SQRT_2));
    let pdf = INV_SQRT_2PI * exp_f32(-0.5 * x * x);
    g * (cdf + x * pdf)
}

/// `fn $name(args)` that runs `$body` compiled for AVX-512 or AVX2+FMA when the CPU has them.
macro_rules! multiversion {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) $body:block)*) => {$(
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn imp($($arg: $ty),*) $body
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) { imp($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features these were compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    )*};
}

multiversion! {
    fn forward_in_place(xs: &mut [f32]) {
        for x in xs {
            *x = gelu_f32(*x);
        }
    }
    fn forward_into(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            d.write(gelu_f32(x));
        }
    }
    fn backward_in_place(x: &[f32], g: &mut [f32]) {
        for (g, &x) in g.iter_mut().zip(x) {
            *g = gelu_grad_f32(x, *g);
        }
    }
    fn backward_into(x: &[f32], g: &[f32], dst: &mut [MaybeUninit<f32>]) {
        for ((d, &x), &g) in dst.iter_mut().zip(x).zip(g) {
            d.write(gelu_grad_f32(x, g));
        }
    }
    fn softmax_rows_scaled_impl(rows: &mut [f32], row_len: usize, scale: f32) {
        // 16 partial maxima / sums, so the reductions vectorise (the sum's order differs
        // from a sequential one by rounding only).
        const W: usize = 16;
        for row in rows.chunks_exact_mut(row_len) {
            let body = row_len / W * W;
            let mut m = [f32::NEG_INFINITY; W];
            for c in row[..body].chunks_exact_mut(W) {
                for i in 0..W {
                    c[i] *= scale;
                    m[i] = m[i].max(c[i]);
                }
            }
            for x in &mut row[body..] {
                *x *= scale;
                m[0] = m[0].max(*x);
            }
            let max = m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut s = [0.0f32; W];
            for c in row[..body].chunks_exact_mut(W) {
                for i in 0..W {
                    c[i] = exp_f32(c[i] - max);
                    s[i] += c[i];
                }
            }
            for x in &mut row[body..] {
                *x = exp_f32(*x - max);
                s[0] += *x;
            }
            let inv = 1.0 / s.iter().sum::<f32>();
            for x in row.iter_mut() {
                *x *= inv;
            }
        }
    }
}

/// softmax(scale · row) of each `row_len`-long row of `rows`, in place (no mask, bias or
/// softcap: the attention paths that have them keep upstream's loop).
pub fn softmax_rows_scaled(rows: &mut [f32], row_len: usize, scale: f32) {
    if row_len > 0 {
        softmax_rows_scaled_impl(rows, row_len, scale);
    }
}

/// The contiguous element range of `t` when it is dense (any offset).
fn dense(t: &FlexTensor) -> Option<(usize, usize)> {
    t.layout().contiguous_offsets()
}

fn new_f32(values: Vec<f32>, like: &FlexTensor) -> FlexTensor {
    let shape = like.layout().shape().clone();
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// GELU of an f32 tensor: in place when it is unique, into a new buffer otherwise.
pub(crate) fn forward(mut x: FlexTensor) -> FlexTensor {
    let Some((start, end)) = dense(&x) else {
        return forward(x.to_contiguous());
    };
    if x.is_unique() && start == 0 {
        crate::par::for_each_chunk(&mut x.storage_mut::<f32>()[..end], forward_in_place);
        return x;
    }
    let src = &x.storage::<f32>()[start..end];
    // SAFETY: `zip_chunks` covers the slice and `forward_into` writes every element.
    let out = unsafe {
        crate::par::filled_vec(src.len(), |dst| {
            crate::par::zip_chunks(dst, src, |d, s| forward_into(s, d))
        })
    };
    new_f32(out, &x)
}

/// `grad · GELU'(x)` for f32 tensors of one shape: in place into `grad` when it is unique.
pub(crate) fn backward(x: FlexTensor, mut grad: FlexTensor) -> FlexTensor {
    let (Some((xs, xe)), Some((gs, ge))) = (dense(&x), dense(&grad)) else {
        return backward(x.to_contiguous(), grad.to_contiguous());
    };
    let x_slice = &x.storage::<f32>()[xs..xe];
    if grad.is_unique() && gs == 0 {
        crate::par::zip_chunks(&mut grad.storage_mut::<f32>()[..ge], x_slice, |g, x| {
            backward_in_place(x, g)
        });
        return grad;
    }
    let g_slice = &grad.storage::<f32>()[gs..ge];
    // SAFETY: `zip2_chunks` covers the slice and `backward_into` writes every element.
    let out = unsafe {
        crate::par::filled_vec(x_slice.len(), |dst| {
            crate::par::zip2_chunks(dst, x_slice, g_slice, |d, x, g| backward_into(x, g, d))
        })
    };
    new_f32(out, &grad)
}
