//! The randomized truncated SVD the estimators are built from: f64 on the host, run once per
//! frozen weight at the start of a run, so plain loops and no dependencies.

use crate::rng::Rng;

/// A rank-k truncated SVD `W ≈ U·Uᵀ·W` (best rank-k approximation, Eckart–Young).
pub struct Svd {
    /// Left singular vectors, `[m, k]` row-major.
    pub u: Vec<f64>,
    /// `Uᵀ·W` = `Σ·Vᵀ`, `[k, n]` row-major.
    pub ut_w: Vec<f64>,
    /// The k largest singular values, descending.
    pub sigma: Vec<f64>,
}

/// Rank-`k` truncated SVD of the row-major `[m, n]` matrix `w`, in f64 on the host:
/// randomized subspace iteration (Halko, Martinsson & Tropp 2011) with 8 extra columns,
/// then Rayleigh–Ritz on the small `B·Bᵀ` by Jacobi rotations.
pub fn truncated_svd(w: &[f64], m: usize, n: usize, k: usize, seed: u64) -> Svd {
    let k = k.min(m).min(n);
    let l = (k + 8).min(m).min(n);
    let mut rng = Rng::seed(seed);
    let omega: Vec<f64> = (0..n * l).map(|_| rng.normal()).collect();
    let mut y = mul(w, m, n, &omega, l); // [m, l]
    orthonormalize(&mut y, m, l);
    for _ in 0..12 {
        let mut z = mul_t(w, m, n, &y, l); // [n, l]
        orthonormalize(&mut z, n, l);
        y = mul(w, m, n, &z, l);
        orthonormalize(&mut y, m, l);
    }
    let b = mul_t(w, m, n, &y, l); // Wᵀ·Y = Bᵀ, [n, l]
    // G = B·Bᵀ (l × l) = Yᵀ·W·Wᵀ·Y.
    let mut g = vec![0.0; l * l];
    for row in b.chunks(l) {
        for i in 0..l {
            for j in 0..l {
                g[i * l + j] += row[i] * row[j];
            }
        }
    }
    let (vals, vecs) = jacobi_eigen(g, l);
    let mut order: Vec<usize> = (0..l).collect();
    order.sort_by(|&i, &j| vals[j].total_cmp(&vals[i]));
    let order = &order[..k];
    let mut u = vec![0.0; m * k];
    for i in 0..m {
        for (c, &e) in order.iter().enumerate() {
            u[i * k + c] = (0..l).map(|t| y[i * l + t] * vecs[t * l + e]).sum();
        }
    }
    let mut ut_w = vec![0.0; k * n];
    for j in 0..n {
        for (c, &e) in order.iter().enumerate() {
            ut_w[c * n + j] = (0..l).map(|t| b[j * l + t] * vecs[t * l + e]).sum();
        }
    }
    let sigma = order.iter().map(|&e| vals[e].max(0.0).sqrt()).collect();
    Svd { u, ut_w, sigma }
}

/// `W·Z` for row-major `w` `[m, n]` and `z` `[n, l]`.
fn mul(w: &[f64], m: usize, n: usize, z: &[f64], l: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * l];
    for (i, o) in out.chunks_mut(l).enumerate() {
        for (j, &wij) in w[i * n..(i + 1) * n].iter().enumerate() {
            for (o, &zz) in o.iter_mut().zip(&z[j * l..(j + 1) * l]) {
                *o += wij * zz;
            }
        }
    }
    out
}

/// `Wᵀ·Y` for row-major `w` `[m, n]` and `y` `[m, l]`.
fn mul_t(w: &[f64], m: usize, n: usize, y: &[f64], l: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * l];
    for i in 0..m {
        let yi = &y[i * l..(i + 1) * l];
        for (j, &wij) in w[i * n..(i + 1) * n].iter().enumerate() {
            for (o, &yy) in out[j * l..(j + 1) * l].iter_mut().zip(yi) {
                *o += wij * yy;
            }
        }
    }
    out
}

/// Orthonormal columns by modified Gram–Schmidt, twice (re-orthogonalisation); a column
/// that vanishes (rank deficiency) is set to zero.
pub(super) fn orthonormalize(a: &mut [f64], rows: usize, cols: usize) {
    for _ in 0..2 {
        for c in 0..cols {
            for p in 0..c {
                let dot: f64 = (0..rows).map(|r| a[r * cols + c] * a[r * cols + p]).sum();
                for r in 0..rows {
                    a[r * cols + c] -= dot * a[r * cols + p];
                }
            }
            let norm = (0..rows)
                .map(|r| a[r * cols + c].powi(2))
                .sum::<f64>()
                .sqrt();
            let inv = if norm > 1e-12 { 1.0 / norm } else { 0.0 };
            for r in 0..rows {
                a[r * cols + c] *= inv;
            }
        }
    }
}

/// Eigenvalues and eigenvectors (columns of the row-major result) of a symmetric matrix.
fn jacobi_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sparse::fixtures::{compose, orthonormal};

    fn frobenius_residual(w: &[f64], svd: &Svd, m: usize, n: usize) -> f64 {
        let k = svd.sigma.len();
        let mut e = 0.0;
        for i in 0..m {
            for j in 0..n {
                let approx: f64 = (0..k).map(|t| svd.u[i * k + t] * svd.ut_w[t * n + j]).sum();
                e += (w[i * n + j] - approx).powi(2);
            }
        }
        e.sqrt()
    }

    #[test]
    fn truncated_svd_recovers_a_known_low_rank_matrix() {
        let (m, n) = (40, 60);
        let mut rng = Rng::seed(4);
        let s = [10.0, 5.0, 3.0, 2.0, 1.0];
        let (u, v) = (orthonormal(m, 5, &mut rng), orthonormal(n, 5, &mut rng));
        let w = compose(&u, &s, &v, m, n);
        // Rank 5 of a rank-5 matrix: exact.
        let full = truncated_svd(&w, m, n, 5, 1);
        assert!(frobenius_residual(&w, &full, m, n) < 1e-9);
        for (a, b) in full.sigma.iter().zip(s) {
            assert!((a - b).abs() < 1e-9, "{:?}", full.sigma);
        }
        // Rank 3: the top singular values, and the Eckart–Young residual √(2² + 1²).
        let top = truncated_svd(&w, m, n, 3, 2);
        for (a, b) in top.sigma.iter().zip(&s[..3]) {
            assert!((a - b).abs() < 1e-9, "{:?}", top.sigma);
        }
        let r = frobenius_residual(&w, &top, m, n);
        assert!((r - 5f64.sqrt()).abs() < 1e-9, "residual {r}");
        // U has orthonormal columns.
        for p in 0..3 {
            for q in 0..3 {
                let dot: f64 = (0..m).map(|i| top.u[i * 3 + p] * top.u[i * 3 + q]).sum();
                assert!((dot - f64::from(p == q)).abs() < 1e-9);
            }
        }
    }
}
