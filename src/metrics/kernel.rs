//! RBF kernels with the median heuristic, and kernel–matrix products streamed over row blocks so that
//! memory stays O(block × N) instead of O(N²).

use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::seq::index::sample;
use rand::Rng;

use super::linalg::row_sq_norms;

/// Rows in one block of a streamed kernel.
pub const BLOCK: usize = 512;

/// Points used for the median heuristic; a larger pooled sample is subsampled (seeded).
pub const MEDIAN_MAX_POINTS: usize = 2000;

/// Row blocks of an `n`-row product: at most [`BLOCK`] rows, and at least one block per worker of the
/// current pool (down to 32 rows). Each block's product is single-threaded and each output entry one
/// fixed-order sum, so the result does not depend on the blocks or the thread count.
fn row_blocks(n: usize) -> Vec<(usize, usize)> {
    let per = n
        .div_ceil(rayon::current_num_threads().max(1))
        .clamp(32, BLOCK);
    (0..n).step_by(per).map(|s| (s, (s + per).min(n))).collect()
}

/// Runs `f` on each row block of an `n`-row result in parallel and stacks the blocks.
fn by_row_blocks(
    n: usize,
    cols: usize,
    f: impl Fn(usize, usize) -> Array2<f64> + Sync,
) -> Array2<f64> {
    use rayon::prelude::*;
    let parts: Vec<((usize, usize), Array2<f64>)> = row_blocks(n)
        .into_par_iter()
        .map(|(a, b)| ((a, b), f(a, b)))
        .collect();
    let mut out = Array2::<f64>::zeros((n, cols));
    for ((a, b), part) in parts {
        out.slice_mut(s![a..b, ..]).assign(&part);
    }
    out
}

/// Pairwise squared distances of the rows of `x` (n × n), clamped at 0.
pub fn sq_dists(x: &ArrayView2<f64>) -> Array2<f64> {
    let sq = row_sq_norms(x);
    let n = x.nrows();
    by_row_blocks(n, n, |a, b| {
        let mut d = x.slice(s![a..b, ..]).dot(&x.t());
        for ((i, j), v) in d.indexed_iter_mut() {
            *v = (sq[a + i] + sq[j] - 2.0 * *v).max(0.0);
        }
        d
    })
}

/// Median of a slice (mean of the two middle values for even length).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    let (_, &mut hi, _) = v.select_nth_unstable_by(n / 2, |a, b| a.total_cmp(b));
    if n % 2 == 1 {
        hi
    } else {
        let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lo + hi)
    }
}

/// Median of the pairwise squared distances between distinct rows (self-distances excluded), on at most
/// [`MEDIAN_MAX_POINTS`] rows drawn with `rng`. Returns (median, points used).
pub fn median_sq_dist_excl<R: Rng>(x: &ArrayView2<f64>, rng: &mut R) -> (f64, usize) {
    let n = x.nrows();
    let sub;
    let view = if n > MEDIAN_MAX_POINTS {
        let mut idx = sample(rng, n, MEDIAN_MAX_POINTS).into_vec();
        idx.sort_unstable();
        sub = x.select(Axis(0), &idx);
        sub.view()
    } else {
        x.view()
    };
    let d = sq_dists(&view);
    let m = view.nrows();
    let mut v = Vec::with_capacity(m * (m.saturating_sub(1)) / 2);
    for i in 0..m {
        for j in i + 1..m {
            v.push(d[[i, j]]);
        }
    }
    (median(&mut v), m)
}

/// `K · W` for the RBF kernel `K_ij = exp(−‖z_i − z_j‖² / (2σ²))` on the rows of `z`, computed by row blocks
/// in parallel (memory O(block × N) per worker). Deterministic whatever the thread count: each output entry
/// is one fixed-order sum.
pub fn rbf_times(z: &ArrayView2<f64>, sigma2: f64, w: &Array2<f64>) -> Array2<f64> {
    let n = z.nrows();
    let sq: Array1<f64> = row_sq_norms(z);
    let scale = -1.0 / (2.0 * sigma2);
    by_row_blocks(n, w.ncols(), |a, b| {
        let mut k = z.slice(s![a..b, ..]).dot(&z.t());
        for ((i, j), v) in k.indexed_iter_mut() {
            let d = (sq[a + i] + sq[j] - 2.0 * *v).max(0.0);
            *v = (d * scale).exp();
        }
        k.dot(w)
    })
}
