//! Unbiased MMD² with an RBF kernel and a permutation test (Gretton et al. 2012, "A Kernel Two-Sample Test").
//!
//! - Kernel `exp(−‖x−y‖² / (2σ²))`, σ² = median of the pairwise squared distances, self-distances excluded,
//!   on a *balanced* seeded sample (the same number of rows from each set, at most 1000 each), so that σ does
//!   not depend on the ratio of the set sizes and MMD² is comparable across layers and set sizes.
//! - MMD²_u = Σ_{i≠j} k(x_i,x_j)/(m(m−1)) + Σ_{i≠j} k(y_i,y_j)/(n(n−1)) − 2 Σ k(x_i,y_j)/(mn).
//! - p = (1 + #{T_perm ≥ T_obs}) / (1 + B) over B random relabellings of the pooled sample.
//! - Holm-adjusted p-values across layers are added by `compare` (next to the raw ones).
//! - No confidence interval: the naive bootstrap of the U-statistic resamples images with replacement, so
//!   duplicate pairs enter at kernel value 1 and the interval neither covers 0 under the null nor always its
//!   own estimate. "Close" is judged on the domain probe's interval instead (see `verdict`).
//!
//! The observed value and every permutation are kernel sums `aᵀKb` for indicator vectors, so they come from
//! one streamed product `K·W` (see [`super::kernel`]).

use ndarray::{concatenate, Array2, Axis};
use rand::seq::SliceRandom;
use rand::Rng;

use super::kernel::{median_sq_dist_excl, rbf_times};
use super::stats::subsample;
use super::{Ctx, Metric, MetricValue, SetData};
use crate::error::Result;

/// `mmd2_rbf`.
pub struct Mmd2Rbf;

/// The outcome of one MMD² computation.
#[derive(Debug, Clone)]
pub struct MmdResult {
    /// Unbiased MMD².
    pub mmd2: f64,
    /// Permutation p-value.
    pub p_value: f64,
    /// Kernel bandwidth σ.
    pub sigma: f64,
    /// Points used for the median heuristic.
    pub median_points: usize,
}

fn unbiased(sxx: f64, syy: f64, sxy: f64, m: f64, n: f64) -> f64 {
    (sxx - m) / (m * (m - 1.0)) + (syy - n) / (n * (n - 1.0)) - 2.0 * sxy / (m * n)
}

/// Most rows taken from each set for the median heuristic.
pub const MEDIAN_PER_SET: usize = 1000;

/// Unbiased MMD² between the rows of `x` and `y`, with `perms` permutations. `sigma` overrides the median
/// heuristic.
pub fn mmd2_rbf<R: Rng>(
    x: &Array2<f64>,
    y: &Array2<f64>,
    perms: usize,
    sigma: Option<f64>,
    rng: &mut R,
) -> MmdResult {
    let (m, n) = (x.nrows(), y.nrows());
    let z = concatenate(Axis(0), &[x.view(), y.view()]).expect("same width");
    let big = m + n;
    let (sigma2, median_points) = match sigma {
        Some(s) => (s * s, 0),
        None => {
            let h = m.min(n).min(MEDIAN_PER_SET);
            let bx = x.select(Axis(0), &subsample(m, h, rng));
            let by = y.select(Axis(0), &subsample(n, h, rng));
            let b = concatenate(Axis(0), &[bx.view(), by.view()]).expect("same width");
            median_sq_dist_excl(&b.view(), rng)
        }
    };
    let sigma2 = if sigma2 > 0.0 { sigma2 } else { 1.0 };
    // Columns of W: [ones, observed indicator, B permutation indicators].
    let cols = 2 + perms;
    let mut w = Array2::<f64>::zeros((big, cols));
    w.column_mut(0).fill(1.0);
    for i in 0..m {
        w[[i, 1]] = 1.0;
    }
    let mut labels: Vec<bool> = (0..big).map(|i| i < m).collect();
    for b in 0..perms {
        labels.shuffle(rng);
        for (i, &l) in labels.iter().enumerate() {
            if l {
                w[[i, 2 + b]] = 1.0;
            }
        }
    }
    let v = rbf_times(&z.view(), sigma2, &w);
    let dotc = |a: usize, b: usize| -> f64 { w.column(a).dot(&v.column(b)) };
    let total = dotc(0, 0);
    let stat = |col: usize| -> f64 {
        let sxx = dotc(col, col);
        let sxy = dotc(0, col) - sxx;
        let syy = total - sxx - 2.0 * sxy;
        unbiased(sxx, syy, sxy, m as f64, n as f64)
    };
    let obs = stat(1);
    let ge = (0..perms).filter(|&b| stat(2 + b) >= obs).count();
    MmdResult {
        mmd2: obs,
        p_value: (1.0 + ge as f64) / (1.0 + perms as f64),
        sigma: sigma2.sqrt(),
        median_points,
    }
}

impl Metric for Mmd2Rbf {
    fn name(&self) -> &'static str {
        "mmd2_rbf"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["mmd2_rbf"]
    }
    fn compute(&self, s: &SetData, t: &SetData, ctx: &Ctx) -> Result<Vec<MetricValue>> {
        let p = ctx.params;
        let mut rng = ctx.rng(1);
        let cap = p.mmd_max_n;
        let (xs, xt);
        let mut note = String::new();
        let (x, y) = if s.x.nrows() > cap || t.x.nrows() > cap {
            xs = s.x.select(Axis(0), &subsample(s.x.nrows(), cap, &mut rng));
            xt = t.x.select(Axis(0), &subsample(t.x.nrows(), cap, &mut rng));
            note.push_str(&format!("seeded subsample of at most {cap} rows per set; "));
            (&xs, &xt)
        } else {
            (s.x, t.x)
        };
        if x.nrows() < 2 || y.nrows() < 2 {
            return Ok(vec![MetricValue {
                note: "needs at least 2 rows per set".into(),
                ..MetricValue::new("mmd2_rbf", f64::NAN, "")
            }]);
        }
        let r = mmd2_rbf(x, y, p.permutations, None, &mut rng);
        note.push_str(&format!(
            "unbiased MMD^2, {}+{} rows, RBF sigma={:.6e} (median heuristic on a balanced sample of {} points, self-distances excluded); p from {} permutations, (1+#>=)/(1+B); no interval (the bootstrap of this U-statistic is invalid)",
            x.nrows(), y.nrows(), r.sigma, r.median_points, p.permutations
        ));
        let mut v = MetricValue::new("mmd2_rbf", r.mmd2, note);
        v.p_value = Some(r.p_value);
        v.details = serde_json::json!({"sigma": r.sigma, "median_points": r.median_points, "permutations": p.permutations, "m": x.nrows(), "n": y.nrows()});
        Ok(vec![v])
    }
}

/// The straightforward O(n²) reference (full kernel matrix), for tests.
pub fn mmd2_reference(x: &Array2<f64>, y: &Array2<f64>, sigma: f64) -> f64 {
    let k = |a: ndarray::ArrayView1<f64>, b: ndarray::ArrayView1<f64>| {
        let d: f64 = a.iter().zip(b.iter()).map(|(p, q)| (p - q) * (p - q)).sum();
        (-d / (2.0 * sigma * sigma)).exp()
    };
    let (m, n) = (x.nrows(), y.nrows());
    let mut sxx = 0.0;
    for i in 0..m {
        for j in 0..m {
            if i != j {
                sxx += k(x.row(i), x.row(j));
            }
        }
    }
    let mut syy = 0.0;
    for i in 0..n {
        for j in 0..n {
            if i != j {
                syy += k(y.row(i), y.row(j));
            }
        }
    }
    let mut sxy = 0.0;
    for i in 0..m {
        for j in 0..n {
            sxy += k(x.row(i), y.row(j));
        }
    }
    sxx / (m * (m - 1)) as f64 + syy / (n * (n - 1)) as f64 - 2.0 * sxy / (m * n) as f64
}
