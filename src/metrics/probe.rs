//! Linear probes: L2-regularised logistic regression ([`super::logreg`]: scikit-learn's objective, binary for two
//! classes, multinomial for more; the intercept is not penalised) on frozen features, standardised with the training fold's statistics, evaluated by
//! repeated stratified k-fold cross-validation (default 3 x 5) with one fold assignment shared by every layer.
//! Accuracy, balanced accuracy and AUC are means of the per-fold scores; their 95 % intervals are corrected
//! repeated-CV t intervals (Nadeau & Bengio 2003; Bouckaert & Frank 2004) that include the refitting
//! variance, which a bootstrap over fixed out-of-fold predictions leaves out (it covered 88 %, not 95 %).
//! The per-fold scores are kept, so layers are compared by paired differences on the same folds.
//!
//! - Domain probe: source (0) vs target (1), balanced by a seeded subsample of the larger set; also the proxy
//!   A-distance `2(1 − 2ε)` with ε the cross-validated error (Ben-David et al. 2010).
//! - Task probe: the set's own class labels (one sub-folder per class).

use ndarray::{concatenate, Array2, Axis};
use rand::Rng;
use rayon::prelude::*;

use super::logreg;
use super::stats::{
    auc, corrected_cv_ci_floor, group_stratified_folds, proportion_variance_floor, repeated_folds,
    subsample,
};
use super::{labelled, Ctx, Direction, Metric, MetricValue, Needs, Output, Panel, SetData};
use crate::error::Result;

/// Per-fold scores of a classifier under repeated stratified k-fold cross-validation.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Mean per-fold accuracy.
    pub acc: f64,
    /// Mean per-fold balanced accuracy (mean per-class recall).
    pub bal_acc: f64,
    /// Mean per-fold AUC of class 1 vs the rest (two classes only).
    pub auc: Option<f64>,
    /// Corrected repeated-CV 95 % interval of accuracy ([`super::stats::corrected_cv_ci_floor`], its variance
    /// never narrower than the pooled score's binomial interval, [`proportion_variance_floor`]).
    pub acc_ci: Option<(f64, f64)>,
    /// Its interval for balanced accuracy.
    pub bal_ci: Option<(f64, f64)>,
    /// Its interval for AUC.
    pub auc_ci: Option<(f64, f64)>,
    /// Folds per repeat.
    pub folds: usize,
    /// Repeats.
    pub repeats: usize,
    /// Accuracy per (repeat, fold), repeat-major: the unit of paired comparisons between layers.
    pub fold_acc: Vec<f64>,
    /// Balanced accuracy per (repeat, fold).
    pub fold_bal: Vec<f64>,
    /// AUC per (repeat, fold) (two classes only).
    pub fold_auc: Vec<f64>,
    /// Fits that stopped at the iteration cap before reaching the gradient tolerance.
    pub not_converged: usize,
}

impl ProbeResult {
    /// A warning for the note when some fits did not converge (empty otherwise).
    pub fn convergence_warning(&self) -> String {
        if self.not_converged == 0 {
            String::new()
        } else {
            format!(
                "; WARNING {} of {} fits stopped at {} L-BFGS iterations before converging",
                self.not_converged,
                self.fold_acc.len(),
                logreg::MAX_ITER
            )
        }
    }
}

fn standardise(train: &Array2<f64>, test: &Array2<f64>) -> (Array2<f64>, Array2<f64>) {
    let mu = train.mean_axis(Axis(0)).expect("non-empty");
    // a column is constant when its spread is round-off of its own magnitude (relative, so that features
    // on a scale of 1e-20 are standardised like any others, not mistaken for constants)
    let sd = ndarray::Zip::from(&train.std_axis(Axis(0), 0.0))
        .and(&mu)
        .map_collect(|&s, &m| {
            if s > 1e-12 * m.abs().max(f64::MIN_POSITIVE) {
                s
            } else {
                1.0
            }
        });
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

/// Scores any classifier by repeated cross-validation. `predict(train, test)` returns, for each test row in
/// order, the predicted class and the score of class 1. Folds (`folds[r][i]` = fold of row i in repeat r)
/// are fitted in parallel and scored one by one, so the result does not depend on the thread count.
pub fn cv_scores<F>(y: &[usize], folds: &[Vec<usize>], predict: F) -> crate::Result<ProbeResult>
where
    F: Fn(&[usize], &[usize]) -> Vec<(usize, f64)> + Sync,
{
    let k = y.iter().max().map_or(0, |m| m + 1);
    let n = y.len();
    let n_folds = folds
        .iter()
        .flat_map(|f| f.iter().max())
        .max()
        .map_or(0, |m| m + 1);
    let jobs: Vec<(usize, usize)> = (0..folds.len())
        .flat_map(|r| (0..n_folds).map(move |f| (r, f)))
        .collect();
    let per: Vec<Option<(f64, f64, f64)>> = jobs
        .par_iter()
        .map(|&(r, f)| {
            let tr: Vec<usize> = (0..n).filter(|&i| folds[r][i] != f).collect();
            let te: Vec<usize> = (0..n).filter(|&i| folds[r][i] == f).collect();
            if te.is_empty() || tr.is_empty() {
                return None;
            }
            let out = predict(&tr, &te);
            let mut pred = vec![0usize; n];
            let mut score = Vec::with_capacity(te.len());
            let mut hits = 0usize;
            for (&i, &(p, s)) in te.iter().zip(&out) {
                pred[i] = p;
                hits += usize::from(p == y[i]);
                score.push(s);
            }
            let pos: Vec<bool> = te.iter().map(|&i| y[i] == 1).collect();
            let a = if k == 2 { auc(&score, &pos) } else { f64::NAN };
            Some((
                hits as f64 / te.len() as f64,
                balanced_accuracy(y, &pred, &te, k),
                a,
            ))
        })
        .collect();
    let per: Vec<(f64, f64, f64)> = per.into_iter().flatten().collect();
    if per.len() < 2 {
        return Err("too few non-empty folds".into());
    }
    let col = |j: usize| -> Vec<f64> {
        per.iter()
            .map(|t| match j {
                0 => t.0,
                1 => t.1,
                _ => t.2,
            })
            .collect()
    };
    let (fold_acc, fold_bal) = (col(0), col(1));
    let fold_auc = if k == 2 { col(2) } else { Vec::new() };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // scores live in [0, 1]: the interval is clipped there. It is never narrower than the binomial interval
    // of the pooled score (`proportion_variance_floor`): n rows per repeat (an AUC: the n/2 of a class,
    // about), so that folds scoring alike do not make a zero-width interval
    let ci = |v: &[f64], rows: usize| {
        let floor = proportion_variance_floor(mean(v), rows, n_folds, v.len());
        corrected_cv_ci_floor(v, n_folds, floor).map(|(_, (lo, hi))| (lo.max(0.0), hi.min(1.0)))
    };
    Ok(ProbeResult {
        acc: mean(&fold_acc),
        bal_acc: mean(&fold_bal),
        auc: (k == 2).then(|| mean(&fold_auc)),
        acc_ci: ci(&fold_acc, n),
        bal_ci: ci(&fold_bal, n),
        auc_ci: if k == 2 { ci(&fold_auc, n / 2) } else { None },
        folds: n_folds,
        repeats: folds.len(),
        fold_acc,
        fold_bal,
        fold_auc,
        not_converged: 0,
    })
}

/// Repeated stratified k-fold cross-validated logistic probe of `y` (classes 0..k) from `x`.
pub fn cv_probe<R: Rng>(
    x: &Array2<f64>,
    y: &[usize],
    folds: usize,
    repeats: usize,
    c: f64,
    rng: &mut R,
) -> crate::Result<ProbeResult> {
    let fold = repeated_folds(y, folds, repeats, rng);
    cv_probe_folds(x, y, &fold, c)
}

/// The logistic probe on given fold assignments (`fold[r][i]` in `0..folds`), e.g. folds made by scikit-learn.
pub fn cv_probe_folds(
    x: &Array2<f64>,
    y: &[usize],
    fold: &[Vec<usize>],
    c: f64,
) -> crate::Result<ProbeResult> {
    let k = y.iter().max().map_or(0, |m| m + 1);
    let stuck = std::sync::atomic::AtomicUsize::new(0);
    let mut r = cv_scores(y, fold, |tr, te| {
        let (xtr, xte) = standardise(&x.select(Axis(0), tr), &x.select(Axis(0), te));
        let ytr: Vec<usize> = tr.iter().map(|&i| y[i]).collect();
        let model = logreg::fit(&xtr.view(), &ytr, k, c);
        if !model.converged {
            stuck.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let proba = model.predict_proba(&xte.view());
        proba
            .rows()
            .into_iter()
            .map(|row| {
                let best = (0..row.len())
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0);
                (best, if row.len() > 1 { row[1] } else { 0.0 })
            })
            .collect()
    })?;
    r.not_converged = stuck.into_inner();
    Ok(r)
}

/// Smallest class kept by the task probes and k-NN; smaller classes are dropped with a warning.
pub const MIN_CLASS: usize = 5;

/// Checks labels for a probe; returns (folds, warning) or why it cannot run.
pub fn probe_folds(y: &[usize], want: usize) -> crate::Result<(usize, String)> {
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
        return Err(format!("a class has {min} image(s); needs at least 2 per class").into());
    }
    let folds = want.min(min).max(2);
    let warn = if min < 20 {
        format!("; WARNING smallest class has {min} images (< 20): the estimate is noisy")
    } else {
        String::new()
    };
    Ok((folds, warn))
}

/// The rows, labels and fold assignments every task score of one set uses (target probe, k-NN): the same
/// at every layer, so that layers are compared on the same splits. Classes under [`MIN_CLASS`] images are
/// dropped (the caller reports them); labels are re-indexed densely.
pub struct TaskSplit {
    /// Rows of the set used.
    pub rows: Vec<usize>,
    /// Dense labels of those rows.
    pub y: Vec<usize>,
    /// `folds[r][i]`: fold of row i in repeat r.
    pub folds: Vec<Vec<usize>>,
    /// Folds per repeat.
    pub k: usize,
    /// Classes kept.
    pub classes: usize,
    /// Estimator text for the note.
    pub note: String,
}

/// Builds the [`TaskSplit`] of a labelled set (seeded by the master seed only, never by the layer); rows of
/// one group (`groups`) stay within one fold.
pub fn task_split(
    labels: &[usize],
    groups: Option<&[usize]>,
    ctx: &Ctx,
    target: bool,
) -> crate::Result<TaskSplit> {
    let p = ctx.params;
    let mut rng = ctx.shared_rng(if target {
        "target_task_folds"
    } else {
        "source_task_folds"
    });
    let k_all = labels.iter().max().map_or(0, |m| m + 1);
    let counts: Vec<usize> = (0..k_all)
        .map(|c| labels.iter().filter(|&&v| v == c).count())
        .collect();
    let kept: Vec<usize> = (0..k_all).filter(|&c| counts[c] >= MIN_CLASS).collect();
    let dropped = counts.iter().filter(|&&c| c > 0 && c < MIN_CLASS).count();
    let usable: Vec<usize> = (0..labels.len())
        .filter(|&i| counts[labels[i]] >= MIN_CLASS)
        .collect();
    let pick = subsample(usable.len(), p.probe_max_n, &mut rng);
    let rows: Vec<usize> = pick.iter().map(|&j| usable[j]).collect();
    let y: Vec<usize> = rows
        .iter()
        .map(|&i| kept.iter().position(|&c| c == labels[i]).unwrap_or(0))
        .collect();
    let (k, warn) = probe_folds(&y, p.folds)?;
    let folds = match groups {
        Some(g) => {
            let g: Vec<usize> = rows.iter().map(|&i| g[i]).collect();
            (0..p.cv_repeats.max(1))
                .map(|_| group_stratified_folds(&y, &g, k, &mut rng))
                .collect()
        }
        None => repeated_folds(&y, k, p.cv_repeats, &mut rng),
    };
    let note = format!(
        "{} rows, {} classes{}, {} x stratified {k}-fold{} (the same folds at every layer); CI: corrected repeated-CV t interval (Nadeau & Bengio 2003){warn}",
        rows.len(),
        kept.len(),
        if dropped > 0 {
            format!(" ({dropped} class(es) under {MIN_CLASS} images dropped)")
        } else {
            String::new()
        },
        p.cv_repeats,
        if groups.is_some() {
            ", groups kept within one fold"
        } else {
            ""
        }
    );
    Ok(TaskSplit {
        rows,
        y,
        folds,
        k,
        classes: kept.len(),
        note,
    })
}

/// A task score (accuracy and balanced accuracy, named `names`) computed by `score` on the labelled set's
/// shared [`TaskSplit`]; when no split can be made, both values are empty with the reason.
pub fn task_metric(
    target: bool,
    names: &[Output],
    s: &SetData,
    t: &SetData,
    ctx: &Ctx,
    score: impl FnOnce(&Array2<f64>, &TaskSplit) -> Result<(ProbeResult, String, serde_json::Value)>,
) -> Result<Vec<MetricValue>> {
    let (set, labels) = labelled(target, s, t)?;
    let split = match task_split(labels, set.groups, ctx, target) {
        Ok(v) => v,
        Err(why) => {
            return Ok(names
                .iter()
                .map(|n| MetricValue::new(&n.id, f64::NAN, format!("not computed: {why}")))
                .collect())
        }
    };
    let x = set.x.select(Axis(0), &split.rows);
    let (r, note, details) = score(&x, &split)?;
    let mut acc = fold_value(&names[0].id, r.acc, r.acc_ci, &r.fold_acc, &note);
    acc.details = details.clone();
    let mut bal = fold_value(&names[1].id, r.bal_acc, r.bal_ci, &r.fold_bal, &note);
    bal.details = details;
    Ok(vec![acc, bal])
}

/// A value with its corrected interval and per-fold scores.
pub fn fold_value(
    metric: &str,
    mean: f64,
    ci: Option<(f64, f64)>,
    folds: &[f64],
    note: &str,
) -> MetricValue {
    let mut v = MetricValue::new(metric, mean, note.to_string());
    v.ci = ci;
    v.folds = folds.to_vec();
    v
}

/// `domain_probe_acc`, `domain_probe_auc`, `proxy_a_distance`.
pub struct DomainProbe;

/// Cross-validated accuracy of a linear probe telling source from target rows.
pub const DOMAIN_ACC: Output = Output::new(
    "domain_probe_acc",
    "domain probe accuracy (repeated k-fold CV, corrected 95% CI)",
    Direction::Farther,
)
.column("domain")
.panel(Panel::Domain)
.with_interval();
/// The same probe's ROC AUC.
pub const DOMAIN_AUC: Output = Output::new(
    "domain_probe_auc",
    "domain probe ROC AUC (repeated k-fold CV)",
    Direction::Farther,
)
.with_interval();
/// Proxy A-distance 2(1 - 2 err) from the domain probe (Ben-David et al. 2010).
pub const PROXY_A: Output = Output::new(
    "proxy_a_distance",
    "proxy A-distance, 2(1 - 2 err) of the domain probe",
    Direction::Farther,
)
.with_interval();

impl Metric for DomainProbe {
    fn name(&self) -> &'static str {
        "domain_probe"
    }
    fn outputs(&self) -> &'static [Output] {
        static O: [Output; 3] = [DOMAIN_ACC, DOMAIN_AUC, PROXY_A];
        &O
    }
    fn compute(&self, s: &SetData, t: &SetData, ctx: &Ctx) -> Result<Vec<MetricValue>> {
        let p = ctx.params;
        // rows and folds are shared by every layer: layers are compared on the same splits
        let mut rng = ctx.shared_rng("domain_probe");
        let m = s.x.nrows().min(t.x.nrows()).min(p.probe_max_n);
        let xs = s.x.select(Axis(0), &subsample(s.x.nrows(), m, &mut rng));
        let xt = t.x.select(Axis(0), &subsample(t.x.nrows(), m, &mut rng));
        let x = concatenate(Axis(0), &[xs.view(), xt.view()]).expect("same width");
        let y: Vec<usize> = (0..2 * m).map(|i| usize::from(i >= m)).collect();
        let (folds, warn) = probe_folds(&y, p.folds)?;
        let r = cv_probe(&x, &y, folds, p.cv_repeats, p.c, &mut rng)?;
        let base = format!(
            "logistic regression C={}, standardised, balanced {m}+{m} rows (seeded subsample), {} x stratified {folds}-fold (the same rows and folds at every layer); CI: corrected repeated-CV t interval (Nadeau & Bengio 2003){warn}{}",
            p.c, p.cv_repeats, r.convergence_warning()
        );
        let details = serde_json::json!({"c": p.c, "folds": folds, "repeats": p.cv_repeats, "rows_per_set": m});
        let mut acc = fold_value(&DOMAIN_ACC.id, r.acc, r.acc_ci, &r.fold_acc, &base);
        acc.details = details.clone();
        let mut auc_v = fold_value(
            &DOMAIN_AUC.id,
            r.auc.unwrap_or(f64::NAN),
            r.auc_ci,
            &r.fold_auc,
            &base,
        );
        auc_v.details = details.clone();
        let mut pad = MetricValue::new(
            &PROXY_A.id,
            2.0 * (2.0 * r.acc - 1.0),
            format!("2(1-2*err) with err = 1 - domain_probe_acc; {base}"),
        );
        pad.ci = r
            .acc_ci
            .map(|(lo, hi)| (2.0 * (2.0 * lo - 1.0), 2.0 * (2.0 * hi - 1.0)));
        pad.details = details;
        Ok(vec![acc, auc_v, pad])
    }
}

/// `source_spread_acc`: the domain probe between two halves of the *source* set, the calibration of the
/// domain probe. A probe can separate two sets of photos by their classes alone (animals vs everyday objects
/// at a deep layer), which is no domain gap; the same probe between two groups of the source's own classes
/// measures how much class content alone separates at this layer. Groups: the first and second half of the
/// source's classes when it has labels, else the first and second half of its rows in file order (sorted
/// ImageNet-style names group classes; an interleaved split would measure nothing but noise).
pub struct SourceSpread;

/// The domain probe between two halves of the source: how much class content alone separates.
pub const SPREAD: Output = Output::new(
    "source_spread_acc",
    "source spread: domain probe accuracy between two halves of the source",
    Direction::Farther,
)
.panel(Panel::Domain)
.with_interval();

impl Metric for SourceSpread {
    fn name(&self) -> &'static str {
        "source_spread"
    }
    fn outputs(&self) -> &'static [Output] {
        static O: [Output; 1] = [SPREAD];
        &O
    }
    fn compute(&self, s: &SetData, _t: &SetData, ctx: &Ctx) -> Result<Vec<MetricValue>> {
        let p = ctx.params;
        let n = s.x.nrows();
        let (a, b, how): (Vec<usize>, Vec<usize>, &str) = match s.labels {
            Some(y) if s.classes.len() >= 2 => {
                let half = s.classes.len() / 2;
                (
                    (0..n).filter(|&i| y[i] < half).collect(),
                    (0..n).filter(|&i| y[i] >= half).collect(),
                    "first vs second half of the source classes",
                )
            }
            _ => (
                (0..n / 2).collect(),
                (n / 2..n).collect(),
                "first vs second half of the source rows in file order",
            ),
        };
        let m = a.len().min(b.len()).min(p.probe_max_n);
        if m < 10 {
            return Ok(vec![MetricValue::new(
                &SPREAD.id,
                f64::NAN,
                "not computed: the source has fewer than 20 rows",
            )]);
        }
        let mut rng = ctx.shared_rng("source_spread");
        let ia: Vec<usize> = subsample(a.len(), m, &mut rng)
            .iter()
            .map(|&i| a[i])
            .collect();
        let ib: Vec<usize> = subsample(b.len(), m, &mut rng)
            .iter()
            .map(|&i| b[i])
            .collect();
        let rows: Vec<usize> = ia.into_iter().chain(ib).collect();
        let x = s.x.select(Axis(0), &rows);
        let y: Vec<usize> = (0..2 * m).map(|i| usize::from(i >= m)).collect();
        let (folds, warn) = probe_folds(&y, p.folds)?;
        let r = cv_probe(&x, &y, folds, p.cv_repeats, p.c, &mut rng)?;
        let note = format!(
            "domain probe between two groups of the source ({how}), {m}+{m} rows, logistic regression C={}, {} x stratified {folds}-fold; CI: corrected repeated-CV t interval{warn}",
            p.c, p.cv_repeats
        );
        Ok(vec![fold_value(
            &SPREAD.id,
            r.acc,
            r.acc_ci,
            &r.fold_acc,
            &note,
        )])
    }
}

/// Target task probe: cross-validated accuracy.
pub const TARGET_PROBE_ACC: Output = Output::new(
    "target_probe_acc",
    "target task probe, accuracy (corrected 95% CI)",
    Direction::MoreUseful,
)
.with_interval();
/// Target task probe: cross-validated balanced accuracy (the verdict's usefulness measure).
pub const TARGET_PROBE_BAL_ACC: Output = Output::new(
    "target_probe_bal_acc",
    "target task probe, balanced accuracy (corrected 95% CI)",
    Direction::MoreUseful,
)
.column("task")
.panel(Panel::Task)
.with_interval();
/// Source task probe: cross-validated accuracy.
pub const SOURCE_PROBE_ACC: Output = Output::new(
    "source_probe_acc",
    "source task probe, accuracy (corrected 95% CI)",
    Direction::MoreUseful,
)
.with_interval();
/// Source task probe: cross-validated balanced accuracy.
pub const SOURCE_PROBE_BAL_ACC: Output = Output::new(
    "source_probe_bal_acc",
    "source task probe, balanced accuracy",
    Direction::MoreUseful,
)
.panel(Panel::Task)
.with_interval();

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
    fn outputs(&self) -> &'static [Output] {
        static T: [Output; 2] = [TARGET_PROBE_ACC, TARGET_PROBE_BAL_ACC];
        static S: [Output; 2] = [SOURCE_PROBE_ACC, SOURCE_PROBE_BAL_ACC];
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
        let p = ctx.params;
        task_metric(self.target, self.outputs(), s, t, ctx, |x, split| {
            let r = cv_probe_folds(x, &split.y, &split.folds, p.c)?;
            let note = format!(
                "multinomial logistic regression C={}, standardised, {}{}",
                p.c,
                split.note,
                r.convergence_warning()
            );
            let details = serde_json::json!({"c": p.c, "folds": split.k, "repeats": p.cv_repeats, "rows": split.rows.len(), "classes": split.classes});
            Ok((r, note, details))
        })
    }
}
