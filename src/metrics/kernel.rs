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

/// Pairwise squared distances of the rows of `x` (n × n), clamped at 0.
pub fn sq_dists(x: &ArrayView2<f64>) -> Array2<f64> {
    let sq = row_sq_norms(x);
    let mut d = x.dot(&x.t());
    let n = x.nrows();
    for i in 0..n {
        for j in 0..n {
            d[[i, j]] = (sq[i] + sq[j] - 2.0 * d[[i, j]]).max(0.0);
        }
    }
    d
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

/// `K · W` for the RBF kernel `K_ij = exp(−‖z_i − z_j‖² / (2σ²))` on the rows of `z`, computed one row block at
/// a time. Deterministic whatever the thread count: each output entry is one fixed-order sum.
pub fn rbf_times(z: &ArrayView2<f64>, sigma2: f64, w: &Array2<f64>) -> Array2<f64> {
    let n = z.nrows();
    let sq: Array1<f64> = row_sq_norms(z);
    let mut out = Array2::<f64>::zeros((n, w.ncols()));
    let scale = -1.0 / (2.0 * sigma2);
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let zb = z.slice(s![start..end, ..]);
        let mut k = zb.dot(&z.t());
        let sqb = sq.slice(s![start..end]);
        ndarray::Zip::indexed(&mut k).par_for_each(|(i, j), v| {
            let d = (sqb[i] + sq[j] - 2.0 * *v).max(0.0);
            *v = (d * scale).exp();
        });
        out.slice_mut(s![start..end, ..]).assign(&k.dot(w));
        start = end;
    }
    out
}
