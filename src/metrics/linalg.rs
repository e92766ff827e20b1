//! Small dense linear-algebra helpers on ndarray, with faer (through a zero-copy adapter) for the products
//! that dominate the cost (Gram matrices, cross products) and for the symmetric eigen-decomposition.
//!
//! Determinism across `--threads`: faer's products split their work over output blocks (each entry is one
//! sum in a fixed order), so they run on the rayon pool. Its decompositions reduce across threads in an
//! order that depends on the thread count, so they run sequentially (`Par::Seq`, passed to each call): the same inputs
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

/// faer's decompositions run sequentially, passed as a value to each call (`Par::Seq`), never through faer's
/// global setting: their result then does not depend on the thread count. Products keep their explicit
/// rayon parallelism (the caller's pool).
const DECOMPOSITION_PAR: faer::Par = faer::Par::Seq;

/// Scratch memory for one faer decomposition.
fn scratch(req: faer::dyn_stack::StackReq) -> faer::dyn_stack::MemBuffer {
    faer::dyn_stack::MemBuffer::new(req)
}

/// Eigenvalues (ascending) and, when `vectors`, eigenvectors of the symmetric matrix `m` (lower triangle
/// read).
fn self_adjoint_evd(
    m: faer::MatRef<'_, f64>,
    vectors: bool,
) -> crate::Result<(faer::diag::Diag<f64>, Option<faer::Mat<f64>>)> {
    use faer::linalg::evd::{self, ComputeEigenvectors};
    let n = m.nrows();
    let mut s = faer::diag::Diag::<f64>::zeros(n);
    let mut u = vectors.then(|| faer::Mat::<f64>::zeros(n, n));
    let which = if vectors {
        ComputeEigenvectors::Yes
    } else {
        ComputeEigenvectors::No
    };
    let mut mem = scratch(evd::self_adjoint_evd_scratch::<f64>(
        n,
        which,
        DECOMPOSITION_PAR,
        Default::default(),
    ));
    evd::self_adjoint_evd(
        m,
        s.as_mut(),
        u.as_mut().map(|u| u.as_mut()),
        DECOMPOSITION_PAR,
        faer::dyn_stack::MemStack::new(&mut mem),
        Default::default(),
    )
    .map_err(|e| format!("eigen-decomposition did not converge: {e:?}"))?;
    Ok((s, u))
}

/// Eigen-decomposition of a symmetric matrix: eigenvalues ascending, eigenvectors as columns.
pub fn sym_eigh(a: &Array2<f64>) -> crate::Result<(Array1<f64>, Array2<f64>)> {
    let n = a.nrows();
    let a = a.as_standard_layout();
    let slice = a.as_slice().ok_or("matrix not contiguous")?;
    let m = faer::MatRef::from_row_major_slice(slice, n, n);
    let (s, u) = self_adjoint_evd(m, true)?;
    let (s, u) = (s.column_vector(), u.expect("computed"));
    let vals = Array1::from_shape_fn(n, |i| s[i]);
    let vecs = Array2::from_shape_fn((n, n), |(i, j)| u[(i, j)]);
    Ok((vals, vecs))
}

/// Eigenvalues of a symmetric matrix, ascending.
pub fn sym_eigvals(a: &Array2<f64>) -> crate::Result<Vec<f64>> {
    let n = a.nrows();
    let a = a.as_standard_layout();
    let slice = a.as_slice().ok_or("matrix not contiguous")?;
    let (s, _) = self_adjoint_evd(faer::MatRef::from_row_major_slice(slice, n, n), false)?;
    Ok(s.column_vector().iter().copied().collect())
}

/// Singular values of a (rectangular) matrix, from its SVD: small ones come out accurate to round-off of
/// the largest, unlike the square roots of the eigenvalues of `AᵀA`.
pub fn singular_values(a: &Array2<f64>) -> crate::Result<Vec<f64>> {
    use faer::linalg::svd::{self, ComputeSvdVectors};
    let (r, c) = a.dim();
    let a = a.as_standard_layout();
    let slice = a.as_slice().ok_or("matrix not contiguous")?;
    let mut s = faer::diag::Diag::<f64>::zeros(r.min(c));
    let mut mem = scratch(svd::svd_scratch::<f64>(
        r,
        c,
        ComputeSvdVectors::No,
        ComputeSvdVectors::No,
        DECOMPOSITION_PAR,
        Default::default(),
    ));
    svd::svd(
        faer::MatRef::from_row_major_slice(slice, r, c),
        s.as_mut(),
        None,
        None,
        DECOMPOSITION_PAR,
        faer::dyn_stack::MemStack::new(&mut mem),
        Default::default(),
    )
    .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    Ok(s.column_vector().iter().copied().collect())
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
    use faer::linalg::cholesky::llt::factor;
    let n = a.nrows();
    let a = a.as_standard_layout();
    let mut l = faer::Mat::<f64>::zeros(n, n);
    l.copy_from_triangular_lower(faer::MatRef::from_row_major_slice(a.as_slice()?, n, n));
    let mut mem = scratch(factor::cholesky_in_place_scratch::<f64>(
        n,
        DECOMPOSITION_PAR,
        Default::default(),
    ));
    factor::cholesky_in_place(
        l.as_mut(),
        Default::default(),
        DECOMPOSITION_PAR,
        faer::dyn_stack::MemStack::new(&mut mem),
        Default::default(),
    )
    .ok()?;
    Some(Array2::from_shape_fn((n, n), |(i, j)| {
        if i >= j {
            l[(i, j)]
        } else {
            0.0
        }
    }))
}
