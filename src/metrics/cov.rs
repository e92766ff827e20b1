//! Covariance alignment: the cosine ⟨C_s, C_t⟩_F / (‖C_s‖_F ‖C_t‖_F) of the two centred feature covariances.
//! It needs no pairing of source and target rows (unlike CKA), and is 1 when the two sets spread their
//! variance over the same feature directions in the same proportions.

use super::linalg::{covariance, fro2};
use super::{Ctx, Metric, MetricValue, SetData};
use crate::error::Result;

/// `cov_alignment`.
pub struct CovAlignment;

impl Metric for CovAlignment {
    fn name(&self) -> &'static str {
        "cov_alignment"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["cov_alignment"]
    }
    fn compute(&self, s: &SetData, t: &SetData, _ctx: &Ctx) -> Result<Vec<MetricValue>> {
        let (cs, ct) = (covariance(&s.x.view()), covariance(&t.x.view()));
        let (ns, nt) = (fro2(&cs).sqrt(), fro2(&ct).sqrt());
        if ns == 0.0 || nt == 0.0 {
            return Ok(vec![MetricValue::new(
                "cov_alignment",
                f64::NAN,
                "undefined: a set has constant features at this layer",
            )]);
        }
        let dot: f64 = cs.iter().zip(ct.iter()).map(|(a, b)| a * b).sum();
        Ok(vec![MetricValue::new(
            "cov_alignment",
            dot / (ns * nt),
            "cosine of centred covariances (Frobenius)",
        )])
    }
}
