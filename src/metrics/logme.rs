//! LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"):
//! the per-sample log evidence of a Bayesian linear regression from features to each one-hot label column,
//! maximised over the prior and noise precisions (α, β) by the paper's fixed-point iteration, averaged over
//! classes. This follows the `thuml/LogME` reference (`LogME.py`, ICML variant): raw features, eigen-
//! decomposition of FᵀF, at most 11 iterations, stop when λ = α/β changes by < 1 %. Higher is better.

use ndarray::{Array1, Array2};

use super::linalg::{gram_t, sym_eigh};
use super::{labelled, Ctx, Direction, Metric, MetricValue, Needs, Output, Panel, SetData};
use crate::error::{Error, Result};

/// LogME of features `f` (n × d) for integer labels `y`.
pub fn logme(f: &Array2<f64>, y: &[usize]) -> crate::Result<f64> {
    let (n, d) = (f.nrows() as f64, f.ncols() as f64);
    let ftf = gram_t(&f.view()); // faer: the same bits at any thread count
    let (s, v) = sym_eigh(&ftf)?;
    let s = s.mapv(|x| x.max(0.0));
    let k = y.iter().max().map_or(0, |m| m + 1);
    let mut total = 0.0;
    let eps = 1e-5;
    for c in 0..k {
        let yc: Array1<f64> = y.iter().map(|&l| f64::from(u8::from(l == c))).collect();
        let tmp = v.t().dot(&f.t().dot(&yc));
        let (mut alpha, mut beta) = (1.0f64, 1.0f64);
        let mut lam = alpha / beta;
        let (mut alpha_de, mut beta_de) = (0.0, 0.0);
        for _ in 0..11 {
            let gamma: f64 = s.iter().map(|&si| si / (si + lam)).sum();
            let m = v.dot(&(&tmp * &s.mapv(|si| beta / (alpha + beta * si))));
            alpha_de = m.dot(&m);
            alpha = gamma / (alpha_de + eps);
            let r = &yc - &f.dot(&m);
            beta_de = r.dot(&r);
            beta = (n - gamma) / (beta_de + eps);
            let new_lam = alpha / beta;
            if ((new_lam - lam) / lam).abs() < 0.01 {
                break;
            }
            lam = new_lam;
        }
        let evidence = d / 2.0 * alpha.ln() + n / 2.0 * beta.ln()
            - 0.5 * s.iter().map(|&si| (alpha + beta * si).ln()).sum::<f64>()
            - beta / 2.0 * beta_de
            - alpha / 2.0 * alpha_de
            - n / 2.0 * (2.0 * std::f64::consts::PI).ln();
        total += evidence / n;
    }
    Ok(total / k.max(1) as f64)
}

/// The score on the target labels.
pub const LOGME_TARGET: Output = Output::new(
    "logme_target",
    "LogME evidence per sample, target labels",
    Direction::MoreUseful,
)
.column("LogME")
.panel(Panel::Evidence);
/// The score on the source labels.
pub const LOGME_SOURCE: Output = Output::new(
    "logme_source",
    "LogME evidence per sample, source labels",
    Direction::MoreUseful,
);

/// `logme_target` (or `logme_source`).
pub struct LogMe {
    /// Score the target set (else the source set).
    pub target: bool,
}

impl Metric for LogMe {
    fn name(&self) -> &'static str {
        if self.target {
            "logme_target"
        } else {
            "logme_source"
        }
    }
    fn outputs(&self) -> &'static [Output] {
        static T: [Output; 1] = [LOGME_TARGET];
        static S: [Output; 1] = [LOGME_SOURCE];
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
        let (set, y) = labelled(self.target, s, t)?;
        let v = logme(set.x, y).map_err(|e| Error::Analysis(format!("LogME: {e}")))?;
        Ok(vec![MetricValue::new(
            &self.outputs()[0].id,
            v,
            format!(
                "LogME (You et al. 2021, thuml fixed-point), raw features, {} rows, {} classes; mean per-sample log evidence, higher = more transferable",
                y.len(),
                set.classes.len()
            ),
        )])
    }
}
