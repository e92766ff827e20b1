//! Fréchet distance between Gaussians fitted to the two sets (the FID formula, Heusel et al. 2017, on any
//! layer): ‖μ_s − μ_t‖² + Tr(Σ_s + Σ_t − 2 (Σ_s Σ_t)^{1/2}), covariances with ddof = 1.
//!
//! The trace of the matrix square root is computed stably as Σ √λ_i of a symmetric PSD matrix similar to
//! `Σ_s Σ_t`: `Lᵀ Σ_t L` with the Cholesky factor `Σ_s = L Lᵀ`, or `Σ_s^{1/2} Σ_t Σ_s^{1/2}` when `Σ_s` is
//! singular (symmetric eigen-decompositions only, never a complex square root).

use ndarray::Array2;

use super::linalg::{
    cholesky_lower, col_means, covariance, matmul, matmul_tn, sqrtm_psd, sym_eigvals,
};
use super::{Ctx, Direction, Metric, MetricValue, Output, SetData};
use crate::error::{Error, Result};

/// `frechet`.
pub struct Frechet;

/// `frechet`: the Fréchet distance between Gaussians fitted to the two sets.
pub const FRECHET: Output = Output::new(
    "frechet",
    "Fréchet distance (Gaussian fit, covariances ddof=1)",
    Direction::Farther,
    None,
    None,
    false,
    false,
);

/// Fréchet distance between the rows of `x` and `y`.
pub fn frechet(x: &Array2<f64>, y: &Array2<f64>) -> crate::Result<f64> {
    let (mx, my) = (col_means(&x.view()), col_means(&y.view()));
    let (cx, cy) = (covariance(&x.view()), covariance(&y.view()));
    frechet_gaussians(&mx, &cx, &my, &cy)
}

/// Fréchet distance from mergeable moments (shards' `stats/` files) instead of rows.
pub fn frechet_from_moments(
    x: &super::moments::Moments,
    y: &super::moments::Moments,
) -> crate::Result<f64> {
    frechet_gaussians(&x.mean, &x.covariance(), &y.mean, &y.covariance())
}

/// Fréchet distance between N(mx, cx) and N(my, cy).
pub fn frechet_gaussians(
    mx: &ndarray::Array1<f64>,
    cx: &Array2<f64>,
    my: &ndarray::Array1<f64>,
    cy: &Array2<f64>,
) -> crate::Result<f64> {
    let diff = mx - my;
    let (cx, cy) = (cx.clone(), cy.clone());
    // Tr (Σ_x Σ_y)^{1/2} = Σ √λ of any symmetric matrix similar to Σ_x Σ_y: Lᵀ Σ_y L with Σ_x = L Lᵀ when Σ_x is
    // positive definite (one Cholesky), else Σ_x^{1/2} Σ_y Σ_x^{1/2} (one more eigen-decomposition).
    let a = match cholesky_lower(&cx) {
        Some(l) => l,
        None => sqrtm_psd(&cx)?,
    };
    let mut mid = matmul_tn(&a.view(), &matmul(&cy.view(), &a.view()).view());
    // symmetrise against round-off
    let t = mid.t().to_owned();
    mid = (&mid + &t) * 0.5;
    let tr_sqrt: f64 = sym_eigvals(&mid)?.iter().map(|v| v.max(0.0).sqrt()).sum();
    Ok(diff.dot(&diff) + cx.diag().sum() + cy.diag().sum() - 2.0 * tr_sqrt)
}

impl Metric for Frechet {
    fn name(&self) -> &'static str {
        "frechet"
    }
    fn outputs(&self) -> &'static [Output] {
        static O: [Output; 1] = [FRECHET];
        &O
    }
    fn compute(&self, s: &SetData, t: &SetData, _ctx: &Ctx) -> Result<Vec<MetricValue>> {
        let d = s.x.ncols();
        let v = frechet(s.x, t.x).map_err(|e| Error::Analysis(format!("frechet: {e}")))?;
        let mut note = "Frechet distance, covariances ddof=1, trace of sqrt via eigenvalues of S_s^1/2 S_t S_s^1/2".to_string();
        let n = s.x.nrows().min(t.x.nrows());
        if n <= d {
            note.push_str(&format!(
                "; WARNING n={n} <= d={d}: covariances are rank-deficient, computed as is (the estimate is biased upward at small n); compare layers only at equal n"
            ));
        }
        Ok(vec![FRECHET.value(v, note)])
    }
}
