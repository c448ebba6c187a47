//! The host-side pieces the sliced ops are built from: row-parallel gathers and scatters of
//! rows and columns of row-major f32 buffers, the fused bias + GELU pass, and the GEMM calls
//! (on the pool when large).

use std::mem::MaybeUninit;

use burn_flex::ops::gelu_f32;
use rayon::prelude::*;

use crate::model::fused::{Mat, gemm_raw};
use crate::simd::multiversion;

/// Rows per task of the row-parallel copies.
const ROWS: usize = 64;

/// `a` (rows of `width`) cut to the columns `idx`, row-major.
pub(super) fn columns(a: &[f32], width: usize, idx: &[usize]) -> Vec<f32> {
    let k = idx.len();
    let rows = a.len() / width.max(1);
    let mut out = Vec::with_capacity(rows * k);
    if k > 0 {
        out.spare_capacity_mut()
            .par_chunks_mut(ROWS * k)
            .zip(a.par_chunks(ROWS * width))
            .for_each(|(out, a)| {
                for (o, a) in out.chunks_exact_mut(k).zip(a.chunks_exact(width)) {
                    for (o, &c) in o.iter_mut().zip(idx) {
                        o.write(a[c]);
                    }
                }
            });
    }
    // SAFETY: each of the `rows` rows wrote its k values (none when k = 0).
    unsafe { out.set_len(rows * k) };
    out
}

/// `[rows, width]` rows holding `t`'s rows (`[rows, idx.len()]`) in the columns `idx`, 0
/// elsewhere: written row by row, no separate zero-fill pass.
pub(super) fn spread_columns(t: &[f32], rows: usize, width: usize, idx: &[usize]) -> Vec<f32> {
    let k = idx.len();
    if k == 0 {
        return vec![0.0; rows * width];
    }
    let mut out = Vec::with_capacity(rows * width);
    out.spare_capacity_mut()
        .par_chunks_mut(ROWS * width)
        .zip(t.par_chunks(ROWS * k))
        .for_each(|(out, t)| {
            for (o, t) in out.chunks_exact_mut(width).zip(t.chunks_exact(k)) {
                o.fill(MaybeUninit::new(0.0));
                for (&c, &t) in idx.iter().zip(t) {
                    o[c].write(t);
                }
            }
        });
    // SAFETY: every row was filled, then given its values.
    unsafe { out.set_len(rows * width) };
    out
}

/// `h += bias` row by row, and GELU of the result, on the pool: one pass for what a bias
/// broadcast, the product's re-read of it and a GELU pass would do in three.
pub(super) fn bias_gelu(h: &mut [f32], bias: &[f32]) -> Vec<f32> {
    let width = bias.len();
    let mut g = Vec::with_capacity(h.len());
    if width > 0 {
        g.spare_capacity_mut()
            .par_chunks_mut(ROWS * width)
            .zip(h.par_chunks_mut(ROWS * width))
            .for_each(|(g, h)| add_bias_gelu(h, g, bias));
    }
    // SAFETY: every row of g was written (none when width = 0).
    unsafe { g.set_len(h.len()) };
    g
}

multiversion! {
    /// The rows of `h` (`bias.len()` wide) plus `bias`, in place, and their GELU into `g`.
    fn add_bias_gelu(h: &mut [f32], g: &mut [MaybeUninit<f32>], bias: &[f32]) {
        for (h, g) in h.chunks_exact_mut(bias.len()).zip(g.chunks_exact_mut(bias.len())) {
            for ((h, g), &b) in h.iter_mut().zip(g).zip(bias) {
                *h += b;
                g.write(gelu_f32(*h));
            }
        }
    }
}

/// `rows` copies of `v`, on the pool (a bias broadcast before a product adds into it).
pub(super) fn repeat_rows(v: &[f32], rows: usize) -> Vec<f32> {
    let width = v.len();
    let mut out = Vec::with_capacity(rows * width);
    if width > 0 {
        out.spare_capacity_mut()
            .par_chunks_mut(ROWS * width)
            .for_each(|out| {
                for o in out.chunks_exact_mut(width) {
                    for (o, &v) in o.iter_mut().zip(v) {
                        o.write(v);
                    }
                }
            });
    }
    // SAFETY: every row was written (none when width = 0).
    unsafe { out.set_len(rows * width) };
    out
}

pub(super) fn zero_columns(a: &mut [f32], width: usize, cols: &[usize]) {
    for row in a.chunks_exact_mut(width) {
        for &c in cols {
            row[c] = 0.0;
        }
    }
}

/// `y[:, idx[j]] += t[:, j] + bias[j]`, y rows of `width`, t rows of `idx.len()`.
pub(super) fn add_columns(y: &mut [f32], width: usize, idx: &[usize], t: &[f32], bias: &[f32]) {
    let k = idx.len();
    if k == 0 {
        return;
    }
    y.par_chunks_mut(ROWS * width)
        .zip(t.par_chunks(ROWS * k))
        .for_each(|(y, t)| {
            for (y, t) in y.chunks_exact_mut(width).zip(t.chunks_exact(k)) {
                for ((&c, &t), &b) in idx.iter().zip(t).zip(bias) {
                    y[c] += t + b;
                }
            }
        });
}

/// `y[rows[i], c] += t[i, c] + bias[c]` for the columns `cols`; y and t rows of `width`.
pub(super) fn add_cells(
    y: &mut [f32],
    width: usize,
    rows: &[usize],
    cols: &[usize],
    t: &[f32],
    bias: &[f32],
) {
    for (&row, t) in rows.iter().zip(t.chunks_exact(width)) {
        let y = &mut y[row * width..(row + 1) * width];
        for &c in cols {
            y[c] += t[c] + bias[c];
        }
    }
}

/// `y[rows[i]] += t[i]`, rows of `width`.
pub(super) fn add_rows(y: &mut [f32], width: usize, rows: &[usize], t: &[f32]) {
    for (&row, t) in rows.iter().zip(t.chunks_exact(width)) {
        for (y, t) in y[row * width..(row + 1) * width].iter_mut().zip(t) {
            *y += t;
        }
    }
}

pub(super) fn pick(v: &[f32], idx: &[usize]) -> Vec<f32> {
    idx.iter().map(|&i| v[i]).collect()
}

/// The rows `idx` of `a` (rows of `width`), row-major, on the pool.
pub(super) fn pick_rows(a: &[f32], width: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = vec![0.0; idx.len() * width];
    if width > 0 {
        out.par_chunks_mut(width)
            .zip(idx.par_iter())
            .with_min_len(ROWS)
            .for_each(|(o, &i)| o.copy_from_slice(&a[i * width..(i + 1) * width]));
    }
    out
}

/// `lhs (m × k) · rhs (k × n)`, row-major.
pub(super) fn product(lhs: Mat, rhs: Mat, m: usize, k: usize, n: usize) -> Vec<f32> {
    if k == 0 {
        return vec![0.0; m * n];
    }
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: without `accumulate` the product writes all m × n elements and reads none.
    unsafe {
        product_raw(out.as_mut_ptr(), lhs, rhs, m, k, n, false);
        out.set_len(m * n);
    }
    out
}

/// `dst (m × n) += lhs (m × k) · rhs (k × n)`.
pub(super) fn product_into(dst: &mut [f32], lhs: Mat, rhs: Mat, m: usize, k: usize, n: usize) {
    assert_eq!(dst.len(), m * n);
    // SAFETY: dst is an exclusive borrow of m × n initialised elements.
    unsafe { product_raw(dst.as_mut_ptr(), lhs, rhs, m, k, n, true) }
}

/// The product on the pool when large (flex's threshold).
///
/// # Safety
/// `dst` holds m × n elements no one else touches (initialised when `accumulate`); the
/// matrices lie inside their buffers (the callers build them over buffers of these shapes).
unsafe fn product_raw(
    dst: *mut f32,
    lhs: Mat,
    rhs: Mat,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let par = if m * n * k >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    unsafe { gemm_raw(m, n, k, dst, n as isize, lhs, rhs, 1.0, accumulate, par) }
}
