//! Fréchet distance between Gaussians fitted to the two sets (the FID formula, Heusel et al. 2017, on any
//! layer): ‖μ_s − μ_t‖² + Tr(Σ_s + Σ_t − 2 (Σ_s Σ_t)^{1/2}), covariances with ddof = 1.
//!
//! The trace of the matrix square root is computed stably as Σ √λ_i of a symmetric PSD matrix similar to
//! `Σ_s Σ_t`: `Lᵀ Σ_t L` with the Cholesky factor `Σ_s = L Lᵀ`, or `Σ_s^{1/2} Σ_t Σ_s^{1/2}` when `Σ_s` is
//! singular (symmetric eigen-decompositions only, never a complex square root).

use ndarray::Array2;

use super::linalg::{
    centred, cholesky_lower, col_means, covariance, matmul, matmul_tn, singular_values, sqrtm_psd,
    sym_eigvals,
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
);

/// Widest layer whose d × d covariances domsim forms (0.5 GB each); wider layers are measured only through
/// the rows ([`frechet_gram`], when both sets have fewer rows than features).
pub const FRECHET_MAX_D: usize = 8192;

/// Fréchet distance between the rows of `x` and `y`. When both sets have fewer rows than features the d × d
/// covariances (rank < n) are never formed: [`frechet_gram`] computes the same value from n × n products.
pub fn frechet(x: &Array2<f64>, y: &Array2<f64>) -> crate::Result<f64> {
    if x.nrows().max(y.nrows()) < x.ncols() {
        return frechet_gram(x, y);
    }
    let (mx, my) = (col_means(&x.view()), col_means(&y.view()));
    let (cx, cy) = (covariance(&x.view()), covariance(&y.view()));
    frechet_gaussians(&mx, &cx, &my, &cy)
}

/// The same Fréchet distance through the rows (for n ≪ d): with centred rows `X` (n_x × d) and `Y`,
/// Tr Σ_x = ‖X‖²_F / (n_x − 1), and the non-zero eigenvalues of Σ_x Σ_y are the squared singular values of
/// `M = X Yᵀ / √((n_x − 1)(n_y − 1))`, so Tr (Σ_x Σ_y)^{1/2} = Σ σ(M) (from an SVD, so that the zero
/// singular values of the rank-deficient product stay at round-off): memory and time grow with n² d,
/// not d³ (a 60 × 20,000 layer needs megabytes, not the tens of gigabytes of its covariances).
pub fn frechet_gram(x: &Array2<f64>, y: &Array2<f64>) -> crate::Result<f64> {
    let (nx, ny) = (x.nrows() as f64, y.nrows() as f64);
    if nx < 2.0 || ny < 2.0 {
        return Err(Error::Analysis(
            "Fréchet distance needs at least 2 rows per set".into(),
        ));
    }
    let diff = col_means(&x.view()) - col_means(&y.view());
    let (xc, yc) = (centred(&x.view()), centred(&y.view()));
    let tr_x = xc.iter().map(|v| v * v).sum::<f64>() / (nx - 1.0);
    let tr_y = yc.iter().map(|v| v * v).sum::<f64>() / (ny - 1.0);
    let m = matmul(&xc.view(), &yc.t()) / ((nx - 1.0) * (ny - 1.0)).sqrt();
    let tr_sqrt: f64 = singular_values(&m)?.iter().sum();
    Ok(diff.dot(&diff) + tr_x + tr_y - 2.0 * tr_sqrt)
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
        if d > FRECHET_MAX_D && s.x.nrows().max(t.x.nrows()) >= d {
            return Ok(vec![FRECHET.value(
                f64::NAN,
                format!(
                    "not computed: d={d} features with at least as many rows needs d x d covariances ({:.1} GB each); above d={FRECHET_MAX_D} domsim computes Frechet distance only when both sets have fewer rows than features",
                    (d * d * 8) as f64 / 1e9
                ),
            )]);
        }
        let v = frechet(s.x, t.x).map_err(|e| Error::Analysis(format!("frechet: {e}")))?;
        let n = s.x.nrows().min(t.x.nrows());
        let mut note = if s.x.nrows().max(t.x.nrows()) < d {
            "Frechet distance, covariances ddof=1, trace of sqrt via the singular values of X_s X_t^T (n < d: the d x d covariances are never formed)".to_string()
        } else {
            "Frechet distance, covariances ddof=1, trace of sqrt via eigenvalues of S_s^1/2 S_t S_s^1/2".to_string()
        };
        if n <= d {
            note.push_str(&format!(
                "; WARNING n={n} <= d={d}: covariances are rank-deficient, computed as is (the estimate is biased upward at small n); compare layers only at equal n"
            ));
        }
        Ok(vec![FRECHET.value(v, note)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_gram_form_equals_the_covariance_form() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (nx, ny, d) in [(10, 12, 30), (5, 9, 40), (20, 20, 21)] {
            let x = Array2::from_shape_fn((nx, d), |_| rng.gen::<f64>());
            let y = Array2::from_shape_fn((ny, d), |_| rng.gen::<f64>() * 1.5 + 0.2);
            let (mx, my) = (col_means(&x.view()), col_means(&y.view()));
            let full = frechet_gaussians(&mx, &covariance(&x.view()), &my, &covariance(&y.view()))
                .unwrap();
            let gram = frechet_gram(&x, &y).unwrap();
            assert!(
                (full - gram).abs() <= 1e-8 * full.abs().max(1.0),
                "{nx} {ny} {d}: {full} vs {gram}"
            );
        }
    }
}
