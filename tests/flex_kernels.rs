//! The kernels of the vendored burn-flex (vendor/README.md) against plain references: the
//! parallel paths bit for bit the serial ones, the vectorised GELU and attention softmax within
//! f32 rounding of exact f64 functions, strided copies, gathers and scatter-adds value for value.

use burn::tensor::activation::gelu;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use vitrs::rng::Rng;

/// vendor/burn-flex runs large f32 element-wise ops in chunks on the rayon pool: the result
/// must be bit for bit the serial one (below the parallel threshold), in every code path:
/// in place into either operand, and into a fresh buffer when both are shared.
#[test]
fn parallel_element_wise_ops_are_bit_identical_to_small_serial_ones() {
    let device = burn::tensor::Device::flex();
    let n = 1 << 17; // 4× the vendored PAR_MIN
    let piece = 1 << 10; // far below it
    let mut rng = Rng::seed(3);
    let mut rand = || -> Tensor<1> {
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_data(TensorData::new(v, [n]), &device)
    };
    let (a, b, c) = (rand(), rand(), rand());
    let f = |a: Tensor<1>, b: Tensor<1>, c: Tensor<1>| -> Tensor<1> {
        // unique lhs (in place), shared lhs + unique rhs, both shared, and unary.
        let shared = a.clone() * b.clone();
        let t = c.clone() - shared.clone();
        let u = shared.clone() / (b.clone().abs() + 1.0);
        let keep = (t.clone(), u.clone());
        gelu(keep.0 + keep.1) + gelu(t) * u
    };
    let whole: Vec<f32> = f(a.clone(), b.clone(), c.clone())
        .into_data()
        .try_to_vec()
        .unwrap();
    let mut pieces = Vec::with_capacity(n);
    for i in (0..n).step_by(piece) {
        let s = |t: &Tensor<1>| t.clone().narrow(0, i, piece);
        let p = f(s(&a), s(&b), s(&c));
        pieces.extend(p.into_data().try_to_vec::<f32>().unwrap());
    }
    assert!(
        whole
            .iter()
            .zip(&pieces)
            .all(|(x, y)| x.to_bits() == y.to_bits())
    );
}

/// The vendored flex applies a row broadcast over a large unique tensor (a bias add) row
/// chunk by row chunk on the rayon pool: bit for bit what the serial loop gives on slices.
#[test]
fn parallel_row_broadcast_ops_are_bit_identical_to_small_serial_ones() {
    let device = burn::tensor::Device::flex();
    let (rows, cols) = (1024, 192); // 4.5× the vendored PAR_MIN
    let mut rng = Rng::seed(5);
    let mut rand = |r: usize| -> Tensor<2> {
        let v: Vec<f32> = (0..r * cols).map(|_| rng.normal() as f32).collect();
        Tensor::from_data(TensorData::new(v, [r, cols]), &device)
    };
    let (x, row) = (rand(rows), rand(1));
    // Each op consumes a fresh unique lhs: add/sub/mul/div, and a closure op (max_pair).
    let f = |x: Tensor<2>| -> Vec<Tensor<2>> {
        vec![
            x.clone() * 1.0 + row.clone(),
            x.clone() * 1.0 - row.clone(),
            x.clone() * 1.0 * row.clone(),
            x.clone() * 1.0 / row.clone(),
            (x * 1.0).max_pair(row.clone()),
        ]
    };
    let whole: Vec<Vec<f32>> = f(x.clone())
        .into_iter()
        .map(|t| t.into_data().try_to_vec().unwrap())
        .collect();
    for (k, want) in whole.iter().enumerate() {
        let mut pieces = Vec::with_capacity(rows * cols);
        for i in (0..rows).step_by(8) {
            let p = f(x.clone().narrow(0, i, 8)).swap_remove(k);
            pieces.extend(p.into_data().try_to_vec::<f32>().unwrap());
        }
        assert!(
            want.iter()
                .zip(&pieces)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "op {k}"
        );
    }
}

/// A tensor whose rows are strided runs (a column block of a wider matrix, as a head of a
/// fused qkv) is made contiguous row by row (vendor/README.md): the values must be the
/// source's, below and above the parallel threshold of that copy.
#[test]
fn strided_row_copies_keep_every_value() {
    let device = burn::tensor::Device::flex();
    for (rows, cols, start, width) in [(7, 10, 3, 5), (1100, 1536, 64, 1000)] {
        let v: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let x: Tensor<2> = Tensor::from_data(TensorData::new(v, [rows, cols]), &device);
        // narrow → strided view; reshape of a non-contiguous view copies it.
        let got: Vec<f32> = x
            .narrow(1, start, width)
            .reshape([rows * width])
            .into_data()
            .try_to_vec()
            .unwrap();
        let want: Vec<f32> = (0..rows)
            .flat_map(|r| (start..start + width).map(move |c| (r * cols + c) as f32))
            .collect();
        assert_eq!(got, want, "{rows}×{cols}");
    }
}

/// Selecting columns of a 2-D tensor and adding into selected columns (SparseLoRA's sliced
/// weights and scattered q/k/v) check their indices once and run row blocks on the pool
/// (vendor/README.md): every value must be the one a plain loop gives, repeated indices
/// accumulating in index order, below and above the parallel threshold.
#[test]
fn column_gathers_and_scatter_adds_equal_plain_loops() {
    let device = burn::tensor::Device::flex();
    for (rows, cols) in [(5, 9), (8000, 48)] {
        let mut rng = Rng::seed(4);
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let idx: Vec<usize> = vec![cols - 1, 2, 0, 2, 5];
        let k = idx.len();
        let x: Tensor<2> = Tensor::from_data(TensorData::new(v.clone(), [rows, cols]), &device);
        let ids: Tensor<1, Int> = Tensor::from_data(
            TensorData::new(idx.iter().map(|&i| i as i64).collect::<Vec<_>>(), [k]),
            &device,
        );
        let got: Vec<f32> = x
            .clone()
            .select(1, ids.clone())
            .into_data()
            .try_to_vec()
            .unwrap();
        let want: Vec<f32> = (0..rows)
            .flat_map(|r| idx.iter().map(|&c| v[r * cols + c]).collect::<Vec<_>>())
            .collect();
        assert_eq!(got, want, "gather, {rows}×{cols}");

        let add: Vec<f32> = (0..rows * k).map(|_| rng.normal() as f32).collect();
        let vals: Tensor<2> = Tensor::from_data(TensorData::new(add.clone(), [rows, k]), &device);
        let got: Vec<f32> = x
            .select_assign(1, ids, vals, IndexingUpdateOp::Add)
            .into_data()
            .try_to_vec()
            .unwrap();
        let mut want = v.clone();
        for r in 0..rows {
            for (j, &c) in idx.iter().enumerate() {
                want[r * cols + c] += add[r * k + j];
            }
        }
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "scatter-add, {rows}×{cols}");
    }
    // No index at all: an empty selection, and a scatter that changes nothing.
    let x: Tensor<2> = Tensor::ones([4, 3], &device);
    let none: Tensor<1, Int> = Tensor::from_data(TensorData::new(Vec::<i64>::new(), [0]), &device);
    assert_eq!(x.clone().select(1, none.clone()).dims(), [4, 0]);
    let empty: Tensor<2> = Tensor::zeros([4, 0], &device);
    let same: Vec<f32> = x
        .select_assign(1, none, empty, IndexingUpdateOp::Add)
        .into_data()
        .try_to_vec()
        .unwrap();
    assert_eq!(same, vec![1.0; 12]);
}

/// A sum over the leading dimension (every bias gradient) runs on the rayon pool with the
/// columns split (vendor/README.md): each column must still be summed in row order, bit
/// for bit the sequential sum, with column blocks that do not divide evenly.
#[test]
fn parallel_leading_dim_sums_are_bit_identical_to_sequential_ones() {
    let device = burn::tensor::Device::flex();
    let (rows, cols) = (600, 1000);
    let mut rng = Rng::seed(9);
    let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
    let x: Tensor<2> = Tensor::from_data(TensorData::new(v.clone(), [rows, cols]), &device);
    let got: Vec<f32> = x.sum_dim(0).into_data().try_to_vec().unwrap();
    for (c, g) in got.iter().enumerate() {
        let want = (0..rows).fold(0.0f32, |acc, r| acc + v[r * cols + c]);
        assert_eq!(g.to_bits(), want.to_bits(), "column {c}");
    }
}

/// The vendored GELU and its backward use a vectorisable rational erf and a Cephes exp in
/// f32 (vendor/README.md): both must match the exact GELU and its derivative (computed in
/// f64 from the tensor `erf`, libm's `erff`, within an ulp) over the whole range.
#[test]
fn gelu_and_its_gradient_match_the_exact_f64_ones() {
    let device = burn::tensor::Device::flex().autodiff();
    let n = 1 << 16; // above the parallel threshold: the chunked loops run
    let xs: Vec<f32> = (0..n).map(|i| -12.0 + 24.0 * i as f32 / n as f32).collect();
    let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &device).require_grad();
    let y = gelu(x.clone());
    let grads = y.clone().sum().backward();
    let dy: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
    let y: Vec<f32> = y.into_data().try_to_vec().unwrap();
    let erf: Vec<f32> = (x.inner() / std::f32::consts::SQRT_2)
        .erf()
        .into_data()
        .try_to_vec()
        .unwrap();
    for (((&x, &y), &dy), &erf) in xs.iter().zip(&y).zip(&dy).zip(&erf) {
        let xd = x as f64;
        let cdf = 0.5 * (1.0 + erf as f64);
        let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let tol = 1e-6 * xd.abs().max(1.0);
        assert!((y as f64 - xd * cdf).abs() < tol, "gelu({x}) = {y}");
        assert!(
            (dy as f64 - (cdf + xd * pdf)).abs() < tol,
            "gelu'({x}) = {dy}"
        );
    }
}

/// The vendored flex computes plain f32 attention's softmax rows with a vectorised exp
/// (16 lanes, then a scalar tail): `attention` must equal softmax(q·kᵀ/√d)·v computed in
/// f64 on the host, for a token count that is not a multiple of 16 (body and tail) and
/// scores large enough to need the max subtraction.
#[test]
fn fused_attention_softmax_matches_an_f64_reference() {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    let device = burn::tensor::Device::flex();
    let (b, h, n, d) = (2, 3, 37, 8);
    let mut rng = Rng::seed(11);
    let mut draw = |s: f64| -> Vec<f32> {
        (0..b * h * n * d)
            .map(|_| (s * rng.normal()) as f32)
            .collect()
    };
    let (q, k, v) = (draw(4.0), draw(4.0), draw(1.0));
    let t =
        |x: &Vec<f32>| Tensor::<4>::from_data(TensorData::new(x.clone(), [b, h, n, d]), &device);
    let out = attention(
        t(&q),
        t(&k),
        t(&v),
        None,
        None,
        AttentionModuleOptions::default(),
    );
    let out: Vec<f32> = out.into_data().try_to_vec().unwrap();
    let scale = (d as f64).powf(-0.5);
    let mut worst = 0.0f64;
    for bh in 0..b * h {
        let at = |x: &Vec<f32>, i: usize, j: usize| x[(bh * n + i) * d + j] as f64;
        for i in 0..n {
            let s: Vec<f64> = (0..n)
                .map(|j| (0..d).map(|c| at(&q, i, c) * at(&k, j, c)).sum::<f64>() * scale)
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..d {
                let want: f64 = (0..n).map(|j| e[j] / z * at(&v, j, c)).sum();
                worst = worst.max((out[(bh * n + i) * d + c] as f64 - want).abs());
            }
        }
    }
    assert!(worst < 1e-5, "max |attention - reference| = {worst}");
}
