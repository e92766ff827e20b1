//! Two transferability scores that predict fine-tuning better than most (`notes/validation.md`):
//!
//! - **k-NN accuracy** (`target_knn_bal_acc`): cosine k-nearest-neighbour classification of the set's own
//!   labels, cross-validated on the *same* repeated folds as the target probe (Sorkhei et al. 2025 found this
//!   plain score beat 22 others over 16 datasets). Majority vote of the k most similar training rows; a tied
//!   vote goes to the class with the larger summed similarity, then the smaller class index. Brute force
//!   (one matrix product per fold): with d up to 1280 and n in the thousands, trees do not prune; see
//!   `benches/vs_linfa.rs` (linfa-nn's linear search was 18x slower, its trees 23-59x).
//! - **Shrinkage H-score** (`hscore_target`; Ibrahim, Ponomareva & Mazumder 2022, "Newer is not always
//!   better"): `tr(Σ_α⁻¹ (1 − α) cov(E[f | y]))` with `Σ_α` the Ledoit–Wolf shrunk covariance of the centred
//!   features (shrinkage α by Ledoit & Wolf 2004, as in scikit-learn's `ledoit_wolf_shrinkage`) and `cov` with
//!   ddof = 1, as in the tllib reference `regularized_h_score`. Closed form, no interval; higher is better.

use ndarray::{Array2, Axis};

use super::linalg::{cholesky_lower, gram_t, matmul};
use super::probe::{cv_scores, task_metric};
use super::{labelled, Ctx, Direction, Metric, MetricValue, Needs, Output, Panel, SetData};
use crate::error::Result;

/// Cosine k-NN predictions of `test` rows from `train` rows with labels `ytr` (classes 0..k).
pub fn knn_predict(
    train: &Array2<f64>,
    ytr: &[usize],
    test: &Array2<f64>,
    k_classes: usize,
    k: usize,
) -> Vec<(usize, f64)> {
    let unit = |x: &Array2<f64>| {
        let mut x = x.clone();
        for mut r in x.rows_mut() {
            let n = r.dot(&r).sqrt();
            if n > 0.0 {
                r /= n;
            }
        }
        x
    };
    let (a, b) = (unit(test), unit(train));
    let sims = matmul(&a.view(), &b.t());
    let k = k.min(ytr.len()).max(1);
    sims.rows()
        .into_iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            let cmp = |&i: &usize, &j: &usize| row[j].total_cmp(&row[i]).then(i.cmp(&j));
            idx.select_nth_unstable_by(k - 1, cmp);
            let mut votes = vec![(0usize, 0.0f64); k_classes];
            for &i in &idx[..k] {
                votes[ytr[i]].0 += 1;
                votes[ytr[i]].1 += row[i];
            }
            let best = (0..k_classes)
                .max_by(|&c, &d| {
                    votes[c]
                        .0
                        .cmp(&votes[d].0)
                        .then(votes[c].1.total_cmp(&votes[d].1))
                        .then(d.cmp(&c))
                })
                .unwrap_or(0);
            let p1 = if k_classes > 1 {
                votes[1].0 as f64 / k as f64
            } else {
                0.0
            };
            (best, p1)
        })
        .collect()
}

/// Ledoit–Wolf shrinkage coefficient of centred `x` (scikit-learn's `ledoit_wolf_shrinkage`).
pub fn ledoit_wolf_shrinkage(x: &Array2<f64>) -> f64 {
    let (n, p) = (x.nrows() as f64, x.ncols() as f64);
    let x2 = x.mapv(|v| v * v);
    let emp_trace = x2.sum_axis(Axis(0)) / n;
    let mu = emp_trace.sum() / p;
    let beta_: f64 = x2.sum_axis(Axis(1)).iter().map(|r| r * r).sum();
    let g = gram_t(&x.view());
    let delta_ = g.iter().map(|v| v * v).sum::<f64>() / (n * n);
    let beta = (beta_ / n - delta_) / (p * n);
    let delta = (delta_ - 2.0 * mu * emp_trace.sum() + p * mu * mu) / p;
    let beta = beta.min(delta);
    if beta == 0.0 {
        0.0
    } else {
        beta / delta
    }
}

/// Shrinkage H-score of features `f` for labels `y` (classes 0..k); returns (score, shrinkage).
pub fn hscore_shrinkage(f: &Array2<f64>, y: &[usize]) -> crate::Result<(f64, f64)> {
    let n = f.nrows();
    let d = f.ncols();
    let mu = f.mean_axis(Axis(0)).ok_or("no rows")?;
    let x = f - &mu;
    let alpha = ledoit_wolf_shrinkage(&x);
    let mut cov = gram_t(&x.view()) / n as f64;
    let m = cov.diag().sum() / d as f64;
    cov.mapv_inplace(|v| (1.0 - alpha) * v);
    for i in 0..d {
        cov[[i, i]] += alpha * m;
    }
    let l = cholesky_lower(&cov)
        .ok_or("the shrunk covariance is not positive definite (constant features?)".to_string())?;
    let k = y.iter().max().map_or(0, |v| v + 1);
    let mut total = 0.0;
    for c in 0..k {
        let rows: Vec<usize> = (0..n).filter(|&i| y[i] == c).collect();
        if rows.is_empty() {
            continue;
        }
        let mc = x.select(Axis(0), &rows).mean_axis(Axis(0)).expect("rows");
        // forward substitution: z = L⁻¹ m_c, so m_cᵀ Σ⁻¹ m_c = ‖z‖²
        let mut z = vec![0.0; d];
        for i in 0..d {
            let s: f64 = (0..i).map(|j| l[[i, j]] * z[j]).sum();
            z[i] = (mc[i] - s) / l[[i, i]];
        }
        total += rows.len() as f64 * z.iter().map(|v| v * v).sum::<f64>();
    }
    Ok(((1.0 - alpha) * total / (n as f64 - 1.0), alpha))
}

/// `target_knn_acc`, `target_knn_bal_acc` (or the `source_` pair).
/// Target k-NN: leave-fold-out accuracy.
pub const TARGET_KNN_ACC: Output = Output::new(
    "target_knn_acc",
    "target k-NN (cosine), accuracy",
    Direction::MoreUseful,
)
.with_interval();
/// Target k-NN: balanced accuracy.
pub const TARGET_KNN_BAL_ACC: Output = Output::new(
    "target_knn_bal_acc",
    "target k-NN (cosine), balanced accuracy",
    Direction::MoreUseful,
)
.panel(Panel::Task)
.with_interval();
/// Source k-NN: accuracy.
pub const SOURCE_KNN_ACC: Output = Output::new(
    "source_knn_acc",
    "source k-NN (cosine), accuracy",
    Direction::MoreUseful,
)
.with_interval();
/// Source k-NN: balanced accuracy.
pub const SOURCE_KNN_BAL_ACC: Output = Output::new(
    "source_knn_bal_acc",
    "source k-NN (cosine), balanced accuracy",
    Direction::MoreUseful,
)
.with_interval();

pub struct Knn {
    /// Score the target set (else the source set).
    pub target: bool,
}

impl Metric for Knn {
    fn name(&self) -> &'static str {
        if self.target {
            "target_knn"
        } else {
            "source_knn"
        }
    }
    fn outputs(&self) -> &'static [Output] {
        static T: [Output; 2] = [TARGET_KNN_ACC, TARGET_KNN_BAL_ACC];
        static S: [Output; 2] = [SOURCE_KNN_ACC, SOURCE_KNN_BAL_ACC];
        if self.target {
            &T
        } else {
            &S
        }
    }
    fn needs(&self) -> Needs {
        Needs::labels_of(self.target)
    }
    fn compute(&self, s: &SetData, t: &SetData, ctx: &Ctx) -> Result<Vec<MetricValue>> {
        let k = ctx.params.knn_k;
        task_metric(self.target, self.outputs(), s, t, ctx, |x, split| {
            let r = cv_scores(&split.y, &split.folds, |tr, te| {
                let ytr: Vec<usize> = tr.iter().map(|&i| split.y[i]).collect();
                knn_predict(
                    &x.select(Axis(0), tr),
                    &ytr,
                    &x.select(Axis(0), te),
                    split.classes,
                    k,
                )
            })?;
            let note = format!("cosine {k}-NN majority vote, {}", split.note);
            let details = serde_json::json!({"k": k, "folds": split.k, "repeats": ctx.params.cv_repeats, "rows": split.rows.len()});
            Ok((r, note, details))
        })
    }
}

/// `hscore_target` (or `hscore_source`).
/// H-score of the target labels (Bao et al. 2019).
pub const HSCORE_TARGET: Output = Output::new(
    "hscore_target",
    "H-score, target labels",
    Direction::MoreUseful,
)
.panel(Panel::Evidence);
/// H-score of the source labels.
pub const HSCORE_SOURCE: Output = Output::new(
    "hscore_source",
    "H-score, source labels",
    Direction::MoreUseful,
);

pub struct HScore {
    /// Score the target set (else the source set).
    pub target: bool,
}

impl Metric for HScore {
    fn name(&self) -> &'static str {
        if self.target {
            "hscore_target"
        } else {
            "hscore_source"
        }
    }
    fn outputs(&self) -> &'static [Output] {
        static T: [Output; 1] = [HSCORE_TARGET];
        static S: [Output; 1] = [HSCORE_SOURCE];
        if self.target {
            &T
        } else {
            &S
        }
    }
    fn needs(&self) -> Needs {
        Needs::labels_of(self.target)
    }
    fn compute(&self, s: &SetData, t: &SetData, _ctx: &Ctx) -> Result<Vec<MetricValue>> {
        let (set, labels) = labelled(self.target, s, t)?;
        let name = self.outputs()[0].id.as_ref();
        Ok(vec![match hscore_shrinkage(set.x, labels) {
            Ok((h, a)) => {
                let mut v = MetricValue::new(
                    name,
                    h,
                    format!(
                        "shrinkage H-score (Ledoit-Wolf alpha={a:.4}), {} rows, {} classes, closed form, no interval",
                        set.x.nrows(),
                        set.classes.len()
                    ),
                );
                v.details = serde_json::json!({"shrinkage": a, "rows": set.x.nrows()});
                v
            }
            Err(why) => MetricValue::new(name, f64::NAN, format!("not computed: {why}")),
        }])
    }
}
