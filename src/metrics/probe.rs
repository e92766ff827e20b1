//! Linear probes: L2-regularised logistic regression ([`super::logreg`]: scikit-learn's objective, binary for two
//! classes, multinomial for more; the intercept is not penalised) on frozen features, standardised with the training fold's statistics, evaluated by
//! stratified k-fold cross-validation. Accuracy, balanced accuracy and AUC use the pooled out-of-fold
//! predictions; their 95 % CIs are percentile bootstraps over those predictions (folds held fixed).
//!
//! - Domain probe: source (0) vs target (1), balanced by a seeded subsample of the larger set; also the proxy
//!   A-distance `2(1 − 2ε)` with ε the cross-validated error (Ben-David et al. 2010).
//! - Task probe: the set's own class labels (one sub-folder per class).

use ndarray::{concatenate, Array1, Array2, Axis};
use rand::Rng;
use rayon::prelude::*;

use super::logreg;
use super::stats::{auc, bootstrap_ci, stratified_folds, subsample};
use super::{labelled, Ctx, Metric, MetricValue, Needs, SetData};
use crate::error::{Error, Result};

/// (row, predicted class, score of class 1) for one fold.
type FoldPredictions = Vec<(usize, usize, f64)>;

/// Cross-validated probe outcome.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Accuracy of the pooled out-of-fold predictions.
    pub acc: f64,
    /// Mean per-class recall.
    pub bal_acc: f64,
    /// AUC of class 1 vs the rest (two classes only).
    pub auc: Option<f64>,
    /// CI of accuracy.
    pub acc_ci: Option<(f64, f64)>,
    /// CI of balanced accuracy.
    pub bal_ci: Option<(f64, f64)>,
    /// CI of AUC.
    pub auc_ci: Option<(f64, f64)>,
    /// Folds used.
    pub folds: usize,
    /// Out-of-fold predicted class per row.
    pub predictions: Vec<usize>,
}

fn standardise(train: &Array2<f64>, test: &Array2<f64>) -> (Array2<f64>, Array2<f64>) {
    let mu = train.mean_axis(Axis(0)).expect("non-empty");
    let sd = train
        .std_axis(Axis(0), 0.0)
        .mapv(|s| if s > 1e-12 { s } else { 1.0 });
    ((train - &mu) / &sd, (test - &mu) / &sd)
}

fn balanced_accuracy(y: &[usize], pred: &[usize], idx: &[usize], k: usize) -> f64 {
    let mut hit = vec![0usize; k];
    let mut tot = vec![0usize; k];
    for &i in idx {
        tot[y[i]] += 1;
        if pred[i] == y[i] {
            hit[y[i]] += 1;
        }
    }
    let present: Vec<f64> = (0..k)
        .filter(|&c| tot[c] > 0)
        .map(|c| hit[c] as f64 / tot[c] as f64)
        .collect();
    present.iter().sum::<f64>() / present.len().max(1) as f64
}

/// Stratified k-fold cross-validated logistic probe of `y` (classes 0..k) from `x`.
pub fn cv_probe<R: Rng>(
    x: &Array2<f64>,
    y: &[usize],
    folds: usize,
    c: f64,
    boots: usize,
    rng: &mut R,
) -> std::result::Result<ProbeResult, String> {
    let fold = stratified_folds(y, folds, rng);
    cv_probe_folds(x, y, &fold, c, boots, rng)
}

/// The probe on given fold ids (`fold[i]` in `0..folds`), e.g. folds made by scikit-learn.
pub fn cv_probe_folds<R: Rng>(
    x: &Array2<f64>,
    y: &[usize],
    fold: &[usize],
    c: f64,
    boots: usize,
    rng: &mut R,
) -> std::result::Result<ProbeResult, String> {
    let k = y.iter().max().map_or(0, |m| m + 1);
    let folds = fold.iter().max().map_or(0, |m| m + 1);
    let n = y.len();
    // Folds are independent: fit them in parallel, then place the predictions by index (deterministic).
    let per_fold: Vec<std::result::Result<FoldPredictions, String>> = (0..folds)
        .into_par_iter()
        .map(|f| {
            let tr: Vec<usize> = (0..n).filter(|&i| fold[i] != f).collect();
            let te: Vec<usize> = (0..n).filter(|&i| fold[i] == f).collect();
            if te.is_empty() {
                return Ok(Vec::new());
            }
            let (xtr, xte) = standardise(&x.select(Axis(0), &tr), &x.select(Axis(0), &te));
            let ytr: Array1<usize> = tr.iter().map(|&i| y[i]).collect();
            let ytr: Vec<usize> = ytr.to_vec();
            let model = logreg::fit(&xtr.view(), &ytr, k, c);
            let proba = model.predict_proba(&xte.view());
            let classes: Vec<usize> = (0..k).collect();
            Ok(te
                .iter()
                .enumerate()
                .map(|(r, &i)| {
                    let row = proba.row(r);
                    let best = (0..row.len())
                        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                        .unwrap_or(0);
                    let s = classes
                        .iter()
                        .position(|&cl| cl == 1)
                        .map_or(0.0, |p| row[p]);
                    (i, classes[best], s)
                })
                .collect())
        })
        .collect();
    let mut pred = vec![0usize; n];
    let mut score = vec![0f64; n];
    for r in per_fold {
        for (i, p, s) in r? {
            pred[i] = p;
            score[i] = s;
        }
    }
    let correct: Vec<f64> = (0..n)
        .map(|i| f64::from(u8::from(pred[i] == y[i])))
        .collect();
    let all: Vec<usize> = (0..n).collect();
    let acc = correct.iter().sum::<f64>() / n as f64;
    let bal_acc = balanced_accuracy(y, &pred, &all, k);
    let pos: Vec<bool> = y.iter().map(|&c| c == 1).collect();
    let auc_v = (k == 2).then(|| auc(&score, &pos));
    let acc_ci = bootstrap_ci(n, boots, rng, |idx| {
        idx.iter().map(|&i| correct[i]).sum::<f64>() / idx.len() as f64
    });
    let bal_ci = bootstrap_ci(n, boots, rng, |idx| balanced_accuracy(y, &pred, idx, k));
    let auc_ci = if k == 2 {
        bootstrap_ci(n, boots, rng, |idx| {
            let s: Vec<f64> = idx.iter().map(|&i| score[i]).collect();
            let p: Vec<bool> = idx.iter().map(|&i| pos[i]).collect();
            auc(&s, &p)
        })
    } else {
        None
    };
    Ok(ProbeResult {
        acc,
        bal_acc,
        auc: auc_v,
        acc_ci,
        bal_ci,
        auc_ci,
        folds,
        predictions: pred,
    })
}

/// Checks labels for a probe; returns (folds, warning) or why it cannot run.
pub fn probe_folds(y: &[usize], want: usize) -> std::result::Result<(usize, String), String> {
    let k = y.iter().max().map_or(0, |m| m + 1);
    let counts: Vec<usize> = (0..k)
        .map(|c| y.iter().filter(|&&v| v == c).count())
        .collect();
    let present = counts.iter().filter(|&&c| c > 0).count();
    if present < 2 {
        return Err("needs at least 2 classes".into());
    }
    let min = counts.iter().copied().filter(|&c| c > 0).min().unwrap_or(0);
    if min < 2 {
        return Err(format!(
            "a class has {min} image(s); needs at least 2 per class"
        ));
    }
    let folds = want.min(min).max(2);
    let warn = if min < 20 {
        format!("; WARNING smallest class has {min} images (< 20): the estimate is noisy")
    } else {
        String::new()
    };
    Ok((folds, warn))
}

/// `domain_probe_acc`, `domain_probe_auc`, `proxy_a_distance`.
pub struct DomainProbe;

impl Metric for DomainProbe {
    fn name(&self) -> &'static str {
        "domain_probe"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["domain_probe_acc", "domain_probe_auc", "proxy_a_distance"]
    }
    fn compute(&self, s: &SetData, t: &SetData, ctx: &Ctx) -> Result<Vec<MetricValue>> {
        let p = ctx.params;
        let mut rng = ctx.rng(2);
        let m = s.x.nrows().min(t.x.nrows()).min(p.probe_max_n);
        let xs = s.x.select(Axis(0), &subsample(s.x.nrows(), m, &mut rng));
        let xt = t.x.select(Axis(0), &subsample(t.x.nrows(), m, &mut rng));
        let x = concatenate(Axis(0), &[xs.view(), xt.view()]).expect("same width");
        let y: Vec<usize> = (0..2 * m).map(|i| usize::from(i >= m)).collect();
        let (folds, warn) = probe_folds(&y, p.folds).map_err(Error::Analysis)?;
        let r = cv_probe(&x, &y, folds, p.c, p.bootstrap, &mut rng).map_err(Error::Analysis)?;
        let base = format!(
            "logistic regression C={}, standardised, balanced {m}+{m} rows (seeded subsample), stratified {folds}-fold, out-of-fold; CI: bootstrap over out-of-fold predictions ({} resamples){warn}",
            p.c, p.bootstrap
        );
        let details = serde_json::json!({"c": p.c, "folds": folds, "rows_per_set": m});
        let mut acc = MetricValue::new("domain_probe_acc", r.acc, base.clone());
        acc.ci = r.acc_ci;
        acc.details = details.clone();
        let mut auc_v =
            MetricValue::new("domain_probe_auc", r.auc.unwrap_or(f64::NAN), base.clone());
        auc_v.ci = r.auc_ci;
        auc_v.details = details.clone();
        let err = 1.0 - r.acc;
        let mut pad = MetricValue::new(
            "proxy_a_distance",
            2.0 * (1.0 - 2.0 * err),
            format!("2(1-2*err) with err = 1 - domain_probe_acc; {base}"),
        );
        pad.ci = r
            .acc_ci
            .map(|(lo, hi)| (2.0 * (2.0 * lo - 1.0), 2.0 * (2.0 * hi - 1.0)));
        pad.details = details;
        Ok(vec![acc, auc_v, pad])
    }
}

/// `target_probe_acc` / `target_probe_bal_acc` (or the `source_` pair).
pub struct TaskProbe {
    /// Probe the target set (else the source set).
    pub target: bool,
}

impl Metric for TaskProbe {
    fn name(&self) -> &'static str {
        if self.target {
            "target_probe"
        } else {
            "source_probe"
        }
    }
    fn outputs(&self) -> &'static [&'static str] {
        if self.target {
            &["target_probe_acc", "target_probe_bal_acc"]
        } else {
            &["source_probe_acc", "source_probe_bal_acc"]
        }
    }
    fn needs(&self) -> Needs {
        Needs::labels_of(self.target)
    }
    fn compute(&self, s: &SetData, t: &SetData, ctx: &Ctx) -> Result<Vec<MetricValue>> {
        let p = ctx.params;
        let names = self.outputs();
        let (set, labels) = labelled(self.target, s, t)?;
        let mut rng = ctx.rng(if self.target { 3 } else { 4 });
        let keep = subsample(labels.len(), p.probe_max_n, &mut rng);
        let x = set.x.select(Axis(0), &keep);
        let y: Vec<usize> = keep.iter().map(|&i| labels[i]).collect();
        let (folds, warn) = match probe_folds(&y, p.folds) {
            Ok(v) => v,
            Err(why) => {
                return Ok(names
                    .iter()
                    .map(|n| MetricValue::new(n, f64::NAN, format!("not computed: {why}")))
                    .collect())
            }
        };
        let r = cv_probe(&x, &y, folds, p.c, p.bootstrap, &mut rng).map_err(Error::Analysis)?;
        let note = format!(
            "multinomial logistic regression C={}, standardised, {} rows, {} classes, stratified {folds}-fold, out-of-fold; CI: bootstrap over out-of-fold predictions ({} resamples){warn}",
            p.c,
            y.len(),
            set.classes.len(),
            p.bootstrap
        );
        let details =
            serde_json::json!({"c": p.c, "folds": folds, "rows": y.len(), "classes": set.classes});
        let mut acc = MetricValue::new(names[0], r.acc, note.clone());
        acc.ci = r.acc_ci;
        acc.details = details.clone();
        let mut bal = MetricValue::new(names[1], r.bal_acc, note);
        bal.ci = r.bal_ci;
        bal.details = details;
        Ok(vec![acc, bal])
    }
}
