//! Small dense linear-algebra helpers on ndarray, with faer for the symmetric eigen-decomposition
//! (zero-copy adapter; faer runs sequentially here so results do not depend on the thread count).

use ndarray::{Array1, Array2, ArrayView2, Axis};

/// Column means (accumulated in f64).
pub fn col_means(x: &ArrayView2<f64>) -> Array1<f64> {
    x.mean_axis(Axis(0))
        .unwrap_or_else(|| Array1::zeros(x.ncols()))
}

/// The matrix with its column means subtracted.
pub fn centred(x: &ArrayView2<f64>) -> Array2<f64> {
    let mu = col_means(x);
    x - &mu
}

/// Gram matrix `AᵀA`.
pub fn gram_t(a: &ArrayView2<f64>) -> Array2<f64> {
    a.t().dot(a)
}

/// Sample covariance with ddof = 1 of the rows of `x`.
pub fn covariance(x: &ArrayView2<f64>) -> Array2<f64> {
    let c = centred(x);
    let n = x.nrows().max(2) as f64;
    gram_t(&c.view()) / (n - 1.0)
}

/// Squared Frobenius norm.
pub fn fro2(a: &Array2<f64>) -> f64 {
    a.iter().map(|v| v * v).sum()
}

/// Eigen-decomposition of a symmetric matrix: eigenvalues ascending, eigenvectors as columns.
pub fn sym_eigh(a: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>), String> {
    let n = a.nrows();
    let a = a.as_standard_layout();
    let slice = a.as_slice().ok_or("matrix not contiguous")?;
    let m = faer::MatRef::from_row_major_slice(slice, n, n);
    let evd = m
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| format!("eigen-decomposition did not converge: {e:?}"))?;
    let s = evd.S().column_vector();
    let u = evd.U();
    let vals = Array1::from_shape_fn(n, |i| s[i]);
    let vecs = Array2::from_shape_fn((n, n), |(i, j)| u[(i, j)]);
    Ok((vals, vecs))
}

/// Eigenvalues of a symmetric matrix, ascending.
pub fn sym_eigvals(a: &Array2<f64>) -> Result<Vec<f64>, String> {
    let n = a.nrows();
    let a = a.as_standard_layout();
    let slice = a.as_slice().ok_or("matrix not contiguous")?;
    faer::MatRef::from_row_major_slice(slice, n, n)
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| format!("eigen-decomposition did not converge: {e:?}"))
}

/// Symmetric positive semi-definite square root (negative eigenvalues from round-off are clipped to 0).
pub fn sqrtm_psd(a: &Array2<f64>) -> Result<Array2<f64>, String> {
    let (vals, vecs) = sym_eigh(a)?;
    let s = vals.mapv(|v| v.max(0.0).sqrt());
    let vs = &vecs * &s;
    Ok(vs.dot(&vecs.t()))
}

/// Row-wise squared norms.
pub fn row_sq_norms(x: &ArrayView2<f64>) -> Array1<f64> {
    x.rows().into_iter().map(|r| r.dot(&r)).collect()
}
