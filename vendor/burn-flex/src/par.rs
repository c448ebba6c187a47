//! vitrs patch: element-wise f32 loops split over the rayon pool.
//!
//! Upstream burn-flex 0.22.1 runs its element-wise unary and binary ops on the calling thread
//! only, while matmuls use every core; in a ViT train step on 2 cores that serial work
//! (GELU and its backward, residual adds, scaling) was about half the wall time. Large
//! contiguous buffers are cut into chunks here and processed in parallel; the per-element
//! arithmetic is unchanged, so results are bit-identical to the serial loops.

/// Below this many elements the serial loop wins (rayon's fork/join costs ~µs).
pub(crate) const PAR_MIN: usize = 1 << 15;
/// Elements per rayon task.
const CHUNK: usize = 1 << 13;

/// `f` on consecutive chunks of `dst`, in parallel when `dst` is large.
#[inline]
pub(crate) fn for_each_chunk<E: Send>(dst: &mut [E], f: impl Fn(&mut [E]) + Send + Sync) {
    #[cfg(feature = "rayon")]
    if dst.len() >= PAR_MIN {
        use rayon::prelude::*;
        dst.par_chunks_mut(CHUNK).for_each(|c| f(c));
        return;
    }
    f(dst)
}

/// `f` on chunks of whole `row_len`-long rows of `dst`, in parallel when `dst` is large.
#[inline]
pub(crate) fn for_each_rows<E: Send>(
    dst: &mut [E],
    row_len: usize,
    f: impl Fn(&mut [E]) + Send + Sync,
) {
    #[cfg(feature = "rayon")]
    if dst.len() >= PAR_MIN && row_len > 0 {
        use rayon::prelude::*;
        let rows = (CHUNK / row_len).max(1);
        dst.par_chunks_mut(rows * row_len).for_each(|c| f(c));
        return;
    }
    f(dst)
}

/// `f` on matching chunks of `dst` and `src` (same length), in parallel when large.
#[inline]
pub(crate) fn zip_chunks<E: Send, S: Sync>(
    dst: &mut [E],
    src: &[S],
    f: impl Fn(&mut [E], &[S]) + Send + Sync,
) {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(feature = "rayon")]
    if dst.len() >= PAR_MIN {
        use rayon::prelude::*;
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| f(d, s));
        return;
    }
    f(dst, src)
}

/// `f` on matching chunks of `dst`, `a` and `b` (same length), in parallel when large.
#[inline]
pub(crate) fn zip2_chunks<E: Send, S: Sync>(
    dst: &mut [E],
    a: &[S],
    b: &[S],
    f: impl Fn(&mut [E], &[S], &[S]) + Send + Sync,
) {
    debug_assert!(dst.len() == a.len() && dst.len() == b.len());
    #[cfg(feature = "rayon")]
    if dst.len() >= PAR_MIN {
        use rayon::prelude::*;
        dst.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(d, (a, b))| f(d, a, b));
        return;
    }
    f(dst, a, b)
}

/// A vector of `n` elements written by `fill` into its uninitialised storage.
///
/// # Safety
/// `fill` must write every element of the slice it is given.
#[inline]
pub(crate) unsafe fn filled_vec<R>(
    n: usize,
    fill: impl FnOnce(&mut [core::mem::MaybeUninit<R>]),
) -> alloc::vec::Vec<R> {
    let mut out = alloc::vec::Vec::with_capacity(n);
    fill(&mut out.spare_capacity_mut()[..n]);
    // SAFETY: the caller's contract: all of `0..n` was written.
    unsafe { out.set_len(n) };
    out
}

/// `src.map(op)` collected, in parallel when large; each chunk is a plain loop the compiler
/// vectorises.
#[inline]
pub(crate) fn map<S: Copy + Sync, R: Send>(
    src: &[S],
    op: impl Fn(S) -> R + Send + Sync,
) -> alloc::vec::Vec<R> {
    let fill = |dst: &mut [core::mem::MaybeUninit<R>]| {
        zip_chunks(dst, src, |d, s| {
            for (d, &x) in d.iter_mut().zip(s) {
                d.write(op(x));
            }
        })
    };
    // SAFETY: `zip_chunks` covers the whole slice and the loop writes every element.
    unsafe { filled_vec(src.len(), fill) }
}

/// `op(l, r)` over two equal-length slices, collected, in parallel when large (as [`map`]).
#[inline]
pub(crate) fn map2<S: Copy + Sync, R: Send>(
    l: &[S],
    r: &[S],
    op: impl Fn(S, S) -> R + Send + Sync,
) -> alloc::vec::Vec<R> {
    let fill = |dst: &mut [core::mem::MaybeUninit<R>]| {
        zip2_chunks(dst, l, r, |d, l, r| {
            for ((d, &a), &b) in d.iter_mut().zip(l).zip(r) {
                d.write(op(a, b));
            }
        })
    };
    // SAFETY: as in `map`.
    unsafe { filled_vec(l.len(), fill) }
}

/// `f(first_row, rows)` on chunks of whole `row_len`-long rows of `dst`, in parallel when
/// `dst` is large; `first_row` is the index of the chunk's first row in `dst`. Rows of
/// length 0 hold nothing, so `f` is not called for them (`f` may cut its chunk into rows).
#[inline]
pub(crate) fn for_each_rows_at<E: Send>(
    dst: &mut [E],
    row_len: usize,
    f: impl Fn(usize, &mut [E]) + Send + Sync,
) {
    if row_len == 0 {
        return;
    }
    #[cfg(feature = "rayon")]
    if dst.len() >= PAR_MIN {
        use rayon::prelude::*;
        let rows = (CHUNK / row_len).max(1);
        dst.par_chunks_mut(rows * row_len)
            .enumerate()
            .for_each(|(i, c)| f(i * rows, c));
        return;
    }
    f(0, dst)
}
