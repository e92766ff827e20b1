//! A layer pair as rows (`compare` on embedding folders), and the registry's metrics run on it.

use std::collections::BTreeMap;

use ndarray::Array2;

use super::pairs::{non_finite, overflow_range, same_features, PairData, OVERFLOW_LIMIT};
use crate::error::{Error, Result};
use crate::metrics::{Ctx, Metric, MetricValue, Params, SetData};

/// A layer pair as rows (`compare` on embedding folders), with each side's same-features tolerance.
pub(super) struct Rows {
    /// Source rows.
    pub s: Array2<f64>,
    /// Target rows.
    pub t: Array2<f64>,
    /// The same-features tolerances ([`same_tol`]).
    pub tol: (f64, f64),
}

impl PairData for Rows {
    fn rows(&self) -> (usize, usize) {
        (self.s.nrows(), self.t.nrows())
    }
    fn dims(&self) -> (usize, usize) {
        (self.s.ncols(), self.t.ncols())
    }
    fn unusable(&self, name: &str) -> Option<String> {
        let bad = (non_finite(&self.s), non_finite(&self.t));
        let huge = (overflow_range(&self.s), overflow_range(&self.t));
        (bad.0 + bad.1 + huge.0 + huge.1 > 0).then(|| format!(
            "not computed: layer '{name}' holds {} non-finite value(s) (NaN or infinity) and {} beyond ±{OVERFLOW_LIMIT:e} (their squares and sums overflow) in the source, {} and {} in the target; domsim never computes on them (check the model's outputs at this layer, or the .npy file)",
            bad.0, huge.0, bad.1, huge.1
        ))
    }
    fn same_as(&self, prev: &Self) -> Option<String> {
        (same_features(&prev.s, &self.s, self.tol.0) && same_features(&prev.t, &self.t, self.tol.1))
            .then(|| {
                format!(
                    "max relative difference <= {:e}",
                    self.tol.0.max(self.tol.1)
                )
            })
    }
}

/// The metrics that run at every layer, with what they read besides the rows.
pub(super) struct RowMetrics<'a> {
    /// The metrics whose prerequisites hold.
    pub runnable: &'a [Box<dyn Metric>],
    /// Source labels (class indices) and class names.
    pub source: (Option<&'a [usize]>, &'a [String]),
    /// Target labels, class names and groups.
    pub target: (Option<&'a [usize]>, &'a [String], Option<&'a [usize]>),
    /// Estimator settings.
    pub params: &'a Params,
}

impl RowMetrics<'_> {
    /// Every metric's values at one layer; each metric's wall time is added to `timings`.
    pub fn measure(
        &self,
        depth: usize,
        name: &str,
        d: &Rows,
        timings: &mut BTreeMap<String, f64>,
    ) -> Result<Vec<MetricValue>> {
        let s = SetData {
            x: &d.s,
            labels: self.source.0,
            classes: self.source.1,
            groups: None,
        };
        let t = SetData {
            x: &d.t,
            labels: self.target.0,
            classes: self.target.1,
            groups: self.target.2,
        };
        let ctx = Ctx {
            params: self.params,
            depth,
        };
        let mut values = Vec::new();
        for m in self.runnable {
            let t0 = std::time::Instant::now();
            let v = m.compute(&s, &t, &ctx).map_err(|e| {
                Error::Analysis(format!("metric {} at layer '{name}': {e}", m.name()))
            })?;
            *timings.entry(m.name().to_string()).or_insert(0.0) += t0.elapsed().as_secs_f64();
            values.extend(v);
        }
        Ok(values)
    }

    /// The values of a layer nothing can be computed on: every output, not computed, with the reason.
    pub fn not_computed(&self, why: &str) -> Vec<MetricValue> {
        self.runnable
            .iter()
            .flat_map(|m| m.outputs().iter())
            .map(|o| MetricValue::new(&o.id, f64::NAN, why.to_string()))
            .collect()
    }
}
