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

/// `src.map(op)` collected, in parallel when large.
#[inline]
pub(crate) fn map<S: Copy + Sync, R: Send>(src: &[S], op: impl Fn(S) -> R + Send + Sync) -> alloc::vec::Vec<R> {
    #[cfg(feature = "rayon")]
    if src.len() >= PAR_MIN {
        use rayon::prelude::*;
        return src.par_iter().with_min_len(CHUNK).map(|&x| op(x)).collect();
    }
    src.iter().map(|&x| op(x)).collect()
}

/// `op(l, r)` over two equal-length slices, collected, in parallel when large.
#[inline]
pub(crate) fn map2<S: Copy + Sync, R: Send>(
    l: &[S],
    r: &[S],
    op: impl Fn(S, S) -> R + Send + Sync,
) -> alloc::vec::Vec<R> {
    debug_assert_eq!(l.len(), r.len());
    #[cfg(feature = "rayon")]
    if l.len() >= PAR_MIN {
        use rayon::prelude::*;
        return l
            .par_iter()
            .zip(r.par_iter())
            .with_min_len(CHUNK)
            .map(|(&a, &b)| op(a, b))
            .collect();
    }
    l.iter().zip(r).map(|(&a, &b)| op(a, b)).collect()
}
