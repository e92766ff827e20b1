//! Small dense linear-algebra helpers on ndarray, with faer (through a zero-copy adapter) for the products
//! that dominate the cost (Gram matrices, cross products) and for the symmetric eigen-decomposition.
//!
//! Determinism across `--threads`: faer's products split their work over output blocks (each entry is one
//! sum in a fixed order), so they run on the rayon pool. Its decompositions reduce across threads in an
//! order that depends on the thread count, so they run sequentially ([`deterministic`]): the same inputs
//! give the same bits at any thread count.

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

fn faer_view<'a>(a: &'a ndarray::ArrayView2<'a, f64>) -> faer::MatRef<'a, f64> {
    let (n, p) = a.dim();
    faer::MatRef::from_row_major_slice(a.as_slice().expect("standard layout"), n, p)
}

/// Gram matrix `AᵀA` (faer, lower triangle computed and mirrored: half the flops of a general product).
/// faer splits the work over output blocks, so the result does not depend on the thread count.
pub fn gram_t(a: &ArrayView2<f64>) -> Array2<f64> {
    use faer::linalg::matmul::triangular::{matmul, BlockStructure};
    let a = a.as_standard_layout();
    let av = a.view();
    let m = faer_view(&av);
    let p = a.ncols();
    let mut out = faer::Mat::<f64>::zeros(p, p);
    matmul(
        out.as_mut(),
        BlockStructure::TriangularLower,
        faer::Accum::Replace,
        m.transpose(),
        BlockStructure::Rectangular,
        m,
        BlockStructure::Rectangular,
        1.0,
        faer::Par::rayon(0),
    );
    Array2::from_shape_fn(
        (p, p),
        |(i, j)| if i >= j { out[(i, j)] } else { out[(j, i)] },
    )
}

/// `AᵀB` for row-major `A` (n × p) and `B` (n × q), with faer.
pub fn matmul_tn(a: &ArrayView2<f64>, b: &ArrayView2<f64>) -> Array2<f64> {
    let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
    let (av, bv) = (a.view(), b.view());
    let (ma, mb) = (faer_view(&av), faer_view(&bv));
    let mut out = faer::Mat::<f64>::zeros(a.ncols(), b.ncols());
    faer::linalg::matmul::matmul(
        out.as_mut(),
        faer::Accum::Replace,
        ma.transpose(),
        mb,
        1.0,
        faer::Par::rayon(0),
    );
    Array2::from_shape_fn((a.ncols(), b.ncols()), |(i, j)| out[(i, j)])
}

/// `AB` for row-major matrices, with faer.
pub fn matmul(a: &ArrayView2<f64>, b: &ArrayView2<f64>) -> Array2<f64> {
    let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
    let (av, bv) = (a.view(), b.view());
    let (ma, mb) = (faer_view(&av), faer_view(&bv));
    let mut out = faer::Mat::<f64>::zeros(a.nrows(), b.ncols());
    faer::linalg::matmul::matmul(
        out.as_mut(),
        faer::Accum::Replace,
        ma,
        mb,
        1.0,
        faer::Par::rayon(0),
    );
    Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| out[(i, j)])
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

/// Makes faer's decompositions sequential (idempotent; `DOMSIM_PARALLEL_DECOMPOSITIONS=1` keeps them
/// parallel, for the test that shows why): their result then does not depend on the thread count. Products
/// keep their explicit rayon parallelism.
pub fn deterministic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("DOMSIM_PARALLEL_DECOMPOSITIONS").is_none() {
            faer::set_global_parallelism(faer::Par::Seq)
        }
    });
}

/// Eigen-decomposition of a symmetric matrix: eigenvalues ascending, eigenvectors as columns.
pub fn sym_eigh(a: &Array2<f64>) -> crate::Result<(Array1<f64>, Array2<f64>)> {
    deterministic();
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
pub fn sym_eigvals(a: &Array2<f64>) -> crate::Result<Vec<f64>> {
    deterministic();
    let n = a.nrows();
    let a = a.as_standard_layout();
    let slice = a.as_slice().ok_or("matrix not contiguous")?;
    faer::MatRef::from_row_major_slice(slice, n, n)
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| format!("eigen-decomposition did not converge: {e:?}").into())
}

/// Singular values of a (rectangular) matrix, from its SVD: small ones come out accurate to round-off of
/// the largest, unlike the square roots of the eigenvalues of `AᵀA`.
pub fn singular_values(a: &Array2<f64>) -> crate::Result<Vec<f64>> {
    deterministic();
    let (r, c) = a.dim();
    let a = a.as_standard_layout();
    let slice = a.as_slice().ok_or("matrix not contiguous")?;
    faer::MatRef::from_row_major_slice(slice, r, c)
        .singular_values()
        .map_err(|e| format!("SVD did not converge: {e:?}").into())
}

/// Symmetric positive semi-definite square root (negative eigenvalues from round-off are clipped to 0).
pub fn sqrtm_psd(a: &Array2<f64>) -> crate::Result<Array2<f64>> {
    let (vals, vecs) = sym_eigh(a)?;
    let s = vals.mapv(|v| v.max(0.0).sqrt());
    let vs = &vecs * &s;
    Ok(matmul(&vs.view(), &vecs.t()))
}

/// Row-wise squared norms.
pub fn row_sq_norms(x: &ArrayView2<f64>) -> Array1<f64> {
    x.rows().into_iter().map(|r| r.dot(&r)).collect()
}

/// Lower Cholesky factor of a symmetric positive definite matrix; `None` when it is not positive definite.
pub fn cholesky_lower(a: &Array2<f64>) -> Option<Array2<f64>> {
    deterministic();
    let n = a.nrows();
    let a = a.as_standard_layout();
    let m = faer::MatRef::from_row_major_slice(a.as_slice()?, n, n);
    let llt = m.llt(faer::Side::Lower).ok()?;
    let l = llt.L();
    Some(Array2::from_shape_fn((n, n), |(i, j)| {
        if i >= j {
            l[(i, j)]
        } else {
            0.0
        }
    }))
}
