//! Centred kernel alignment (Kornblith et al. 2019, "Similarity of Neural Network Representations
//! Revisited") between two representations of the SAME images: linear (feature-space form), debiased
//! linear (the unbiased HSIC of Song et al. 2012, feature-space form), and RBF (Gram form).
//!
//! CKA needs paired rows, so domsim computes it only within one set (layer × layer), or between a layer and
//! that set's one-hot labels. It is never computed between source and target rows: unpaired, it measures only
//! a bias floor of about d/n (see the module docs of [`crate::compare`]).

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::kernel::{median, sq_dists};
use super::linalg::{col_means, fro2, gram_t, matmul_tn, row_sq_norms};
use super::{labelled, Ctx, Direction, Metric, MetricValue, Needs, Output, SetData};
use crate::error::Result;

/// Pre-computed quantities of one representation, reused across all pairs. Centring is applied algebraically
/// (`XcᵀXc = XᵀX − n μμᵀ`, `‖x_i − μ‖² = ‖x_i‖² − 2 x_i·μ + ‖μ‖²`), so the features are borrowed, never copied.
pub struct LinearRep<'a> {
    /// The features (not centred).
    pub x: ArrayView2<'a, f64>,
    /// Column means.
    pub mean: Array1<f64>,
    /// ‖XcᵀXc‖²_F.
    pub self_sim: f64,
    /// Per-row squared norms of the centred rows (debiased form).
    pub row_sq: Array1<f64>,
    /// Sum of the row squared norms.
    pub total_sq: f64,
}

impl<'a> LinearRep<'a> {
    /// Caches the self-similarity of the centred `x`.
    pub fn new(x: &'a Array2<f64>) -> Self {
        let n = x.nrows() as f64;
        let mean = col_means(&x.view());
        let mut g = gram_t(&x.view());
        for ((i, j), v) in g.indexed_iter_mut() {
            *v -= n * mean[i] * mean[j];
        }
        let mm = mean.dot(&mean);
        let xm = x.dot(&mean);
        let row_sq: Array1<f64> = row_sq_norms(&x.view())
            .iter()
            .zip(xm.iter())
            .map(|(r, d)| (r - 2.0 * d + mm).max(0.0))
            .collect();
        let total_sq = row_sq.sum();
        LinearRep {
            self_sim: fro2(&g),
            x: x.view(),
            mean,
            row_sq,
            total_sq,
        }
    }
}

fn debias(xty: f64, a: &LinearRep, b: &LinearRep, n: f64) -> f64 {
    xty - n / (n - 2.0) * a.row_sq.dot(&b.row_sq)
        + a.total_sq * b.total_sq / ((n - 1.0) * (n - 2.0))
}

/// Linear CKA `‖YᵀX‖² / (‖XᵀX‖ ‖YᵀY‖)` on centred features, and its debiased form (the unbiased HSIC
/// estimator), from one cross product.
pub fn linear_cka_pair(a: &LinearRep, b: &LinearRep) -> (f64, f64) {
    let n = a.x.nrows() as f64;
    let mut c = matmul_tn(&b.x, &a.x);
    for ((i, j), v) in c.indexed_iter_mut() {
        *v -= n * b.mean[i] * a.mean[j];
    }
    let xty = fro2(&c);
    let biased = xty / (a.self_sim.sqrt() * b.self_sim.sqrt());
    let num = debias(xty, a, b, n);
    let da = debias(a.self_sim, a, a, n);
    let db = debias(b.self_sim, b, b, n);
    (biased, num / (da.sqrt() * db.sqrt()))
}

/// Linear CKA (`debiased = false`) or debiased linear CKA.
pub fn linear_cka(a: &LinearRep, b: &LinearRep, debiased: bool) -> f64 {
    let (biased, unbiased) = linear_cka_pair(a, b);
    if debiased {
        unbiased
    } else {
        biased
    }
}

/// Centred RBF Gram matrix with σ² = t² · median of all n² squared distances (diagonal included, as in the
/// reference demo).
pub fn centred_rbf_gram(x: &Array2<f64>, t: f64) -> Array2<f64> {
    let d = sq_dists(&x.view());
    let mut all: Vec<f64> = d.iter().copied().collect();
    let med = median(&mut all);
    let scale = if med > 0.0 {
        -1.0 / (2.0 * t * t * med)
    } else {
        0.0
    };
    let k = d.mapv(|v| (v * scale).exp());
    centre_gram(k)
}

/// H K H for the centring matrix H.
pub fn centre_gram(mut k: Array2<f64>) -> Array2<f64> {
    let n = k.nrows() as f64;
    let rm = k.mean_axis(Axis(1)).expect("non-empty");
    let cm = k.mean_axis(Axis(0)).expect("non-empty");
    let all = rm.sum() / n;
    for ((i, j), v) in k.indexed_iter_mut() {
        *v += all - rm[i] - cm[j];
    }
    k
}

/// CKA of two centred Gram matrices.
pub fn gram_cka(k: &Array2<f64>, l: &Array2<f64>) -> f64 {
    let kl: f64 = k.iter().zip(l.iter()).map(|(a, b)| a * b).sum();
    kl / (fro2(k).sqrt() * fro2(l).sqrt())
}

/// The slow, obviously-correct Gram-form linear CKA (n × n), for tests.
pub fn linear_cka_gram_reference(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
    gram_cka(&centre_gram(x.dot(&x.t())), &centre_gram(y.dot(&y.t())))
}

/// One-hot encoding of labels.
pub fn one_hot(y: &[usize]) -> Array2<f64> {
    let k = y.iter().max().map_or(0, |m| m + 1);
    Array2::from_shape_fn((y.len(), k), |(i, c)| f64::from(u8::from(y[i] == c)))
}

/// The score on the target labels.
pub const CKA_LABEL_TARGET: Output = Output::new(
    "cka_label_target",
    "linear CKA with the one-hot target labels",
    Direction::MoreUseful,
);
/// The score on the source labels.
pub const CKA_LABEL_SOURCE: Output = Output::new(
    "cka_label_source",
    "linear CKA with the one-hot source labels",
    Direction::MoreUseful,
);

/// `cka_label_target` (or `cka_label_source`): linear CKA between the layer and one-hot labels
/// (kernel-target alignment).
pub struct CkaLabel {
    /// Use the target set (else the source set).
    pub target: bool,
}

impl Metric for CkaLabel {
    fn name(&self) -> &'static str {
        if self.target {
            "cka_label_target"
        } else {
            "cka_label_source"
        }
    }
    fn outputs(&self) -> &'static [Output] {
        static T: [Output; 1] = [CKA_LABEL_TARGET];
        static S: [Output; 1] = [CKA_LABEL_SOURCE];
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
        let oh = one_hot(y);
        let v = linear_cka(&LinearRep::new(set.x), &LinearRep::new(&oh), false);
        Ok(vec![MetricValue::new(
            &self.outputs()[0].id,
            v,
            format!(
                "linear CKA between the layer and one-hot labels of the same {} images",
                y.len()
            ),
        )])
    }
}
