//! Covariance alignment: the cosine ⟨C_s, C_t⟩_F / (‖C_s‖_F ‖C_t‖_F) of the two centred feature covariances.
//! It needs no pairing of source and target rows (unlike CKA), and is 1 when the two sets spread their
//! variance over the same feature directions in the same proportions.

use super::linalg::{covariance, fro2};
use super::{Ctx, Direction, Metric, MetricValue, Output, Panel, SetData};
use crate::error::Result;

/// `cov_alignment`.
pub struct CovAlignment;

/// `cov_alignment`: cosine between the two covariance matrices (1 = same feature covariance).
pub const COV_ALIGNMENT: Output = Output::new(
    "cov_alignment",
    "covariance alignment (1 = same feature covariance)",
    Direction::Closer,
)
.column("cov")
.panel(Panel::Alignment);

impl Metric for CovAlignment {
    fn name(&self) -> &'static str {
        "cov_alignment"
    }
    fn outputs(&self) -> &'static [Output] {
        static O: [Output; 1] = [COV_ALIGNMENT];
        &O
    }
    fn compute(&self, s: &SetData, t: &SetData, _ctx: &Ctx) -> Result<Vec<MetricValue>> {
        let (cs, ct) = (covariance(&s.x.view()), covariance(&t.x.view()));
        Ok(vec![alignment_value(&cs, &ct, "")])
    }
}

/// The `cov_alignment` value of two covariance matrices (from rows or from mergeable moments); `how` is
/// appended to the note.
pub fn alignment_value(
    cs: &ndarray::Array2<f64>,
    ct: &ndarray::Array2<f64>,
    how: &str,
) -> MetricValue {
    let (ns, nt) = (fro2(cs).sqrt(), fro2(ct).sqrt());
    if ns == 0.0 || nt == 0.0 {
        return MetricValue::new(
            &COV_ALIGNMENT.id,
            f64::NAN,
            "undefined: a set has constant features at this layer",
        );
    }
    let dot: f64 = cs.iter().zip(ct.iter()).map(|(a, b)| a * b).sum();
    MetricValue::new(
        &COV_ALIGNMENT.id,
        dot / (ns * nt),
        format!("cosine of centred covariances (Frobenius){how}"),
    )
}
