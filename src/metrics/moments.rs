//! Mergeable moments: count, mean and co-moment matrix M2 = Σ (x − μ)(x − μ)ᵀ of a set of rows, combined
//! exactly with the pairwise update of Chan, Golub & LeVeque (1979; Pébay 2008 for the multivariate form):
//! for parts a and b, n = n_a + n_b, δ = μ_b − μ_a, μ = μ_a + δ n_b / n, M2 = M2_a + M2_b + δ δᵀ n_a n_b / n.
//! Merging is exact and order-independent up to rounding, so shards of a folder (`extract --shard`) carry
//! what Fréchet distance and covariance alignment need ([`super::frechet::frechet_from_moments`]) without
//! their rows. Stored as one float64 NPY per layer, shape (d + 2) × d: row 0 holds n (first column), row 1 the
//! mean, the rest M2.

use std::path::Path;

use ndarray::{s, Array1, Array2, ArrayView2};

use super::linalg::{centred, col_means, gram_t};

/// Count, mean and co-moment matrix of a set of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    /// Rows seen.
    pub n: u64,
    /// Column means.
    pub mean: Array1<f64>,
    /// Co-moment matrix Σ (x − μ)(x − μ)ᵀ.
    pub m2: Array2<f64>,
}

impl Moments {
    /// No rows yet, dimension `d`.
    pub fn empty(d: usize) -> Self {
        Moments {
            n: 0,
            mean: Array1::zeros(d),
            m2: Array2::zeros((d, d)),
        }
    }

    /// The moments of `x`'s rows (two-pass: mean, then centred Gram matrix).
    pub fn from_rows(x: &ArrayView2<f64>) -> Self {
        if x.nrows() == 0 {
            return Self::empty(x.ncols());
        }
        Moments {
            n: x.nrows() as u64,
            mean: col_means(x),
            m2: gram_t(&centred(x).view()),
        }
    }

    /// The moments of both parts' rows together (Chan et al. 1979).
    pub fn merge(&self, b: &Moments) -> Moments {
        if self.n == 0 {
            return b.clone();
        }
        if b.n == 0 {
            return self.clone();
        }
        let (na, nb) = (self.n as f64, b.n as f64);
        let n = na + nb;
        let delta = &b.mean - &self.mean;
        let mean = &self.mean + &(&delta * (nb / n));
        let d = delta.len();
        let outer = delta
            .view()
            .into_shape_with_order((d, 1))
            .expect("column")
            .dot(&delta.view().into_shape_with_order((1, d)).expect("row"));
        Moments {
            n: self.n + b.n,
            mean,
            m2: &self.m2 + &b.m2 + &(outer * (na * nb / n)),
        }
    }

    /// Sample covariance (ddof = 1).
    pub fn covariance(&self) -> Array2<f64> {
        &self.m2 / (self.n.max(2) - 1) as f64
    }

    /// The (d + 2) × d matrix stored on disk.
    pub fn to_matrix(&self) -> Array2<f64> {
        let d = self.mean.len();
        let mut m = Array2::zeros((d + 2, d.max(1)));
        m[[0, 0]] = self.n as f64;
        m.slice_mut(s![1, ..d]).assign(&self.mean);
        m.slice_mut(s![2.., ..d]).assign(&self.m2);
        m
    }

    /// Reads back [`Moments::to_matrix`].
    pub fn from_matrix(m: &Array2<f64>) -> crate::Result<Self> {
        let d = m.ncols();
        if m.nrows() != d + 2 || m.iter().any(|v| !v.is_finite()) || m[[0, 0]] < 0.0 {
            return Err(format!(
                "not a moments matrix: shape {:?}, expected ({}, {d}) with finite values",
                m.dim(),
                d + 2
            )
            .into());
        }
        Ok(Moments {
            n: m[[0, 0]] as u64,
            mean: m.row(1).to_owned(),
            m2: m.slice(s![2.., ..]).to_owned(),
        })
    }
}

/// Reads a moments file (`stats/<layer>.npy`).
pub fn load(path: &Path) -> crate::Result<Moments> {
    Moments::from_matrix(&crate::npy::read(path)?)
        .map_err(|e| crate::Error::Input(format!("'{}': {e}", path.display())))
}

/// Writes `m` as the moments file of the layer file `layer_file` (`layers/X.npy` → `stats/X.npy`) under
/// the embedding folder `out`; returns its path relative to `out`, for the manifest.
pub fn save(out: &Path, layer_file: &str, m: &Moments) -> crate::Result<String> {
    let rel = layer_file.replacen("layers/", "stats/", 1);
    let dir = out.join("stats");
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io("cannot create folder", &dir, e))?;
    crate::output::write_atomic(&out.join(&rel), &crate::npy::to_bytes_f64(&m.to_matrix()))?;
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::frechet::{frechet, frechet_from_moments};
    use rand::{Rng, SeedableRng};

    #[test]
    fn shards_merged_in_any_order_give_the_single_runs_frechet_distance() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let (n, d) = (3000, 48);
        let mut gauss = || -> f64 {
            let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        };
        let x = Array2::from_shape_fn((n, d), |(i, j)| {
            gauss() * (1.0 + j as f64 * 0.1) + (i % 7) as f64 * 0.01
        });
        let y = Array2::from_shape_fn((n, d), |(_, j)| gauss() * 1.3 + 0.2 * j as f64);
        let reference = frechet(&x, &y).unwrap();
        // three shards by the partition rule, each streamed in batches of 16 as extract does
        let shard = |k: usize| -> Moments {
            let rows: Vec<usize> = (0..n)
                .filter(|i| crate::shard::shard_of(&format!("img{i}.png"), 3) == k)
                .collect();
            rows.chunks(16).fold(Moments::empty(d), |acc, c| {
                acc.merge(&Moments::from_rows(&y.select(ndarray::Axis(0), c).view()))
            })
        };
        let parts = [shard(0), shard(1), shard(2)];
        let mx = Moments::from_rows(&x.view());
        for o in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let m = parts[o[0]].merge(&parts[o[1]]).merge(&parts[o[2]]);
            assert_eq!(m.n, n as u64);
            let v = frechet_from_moments(&mx, &m).unwrap();
            assert!(
                (v - reference).abs() / reference < 1e-9,
                "{o:?}: {v} vs {reference}"
            );
        }
        // the stored form reads back exactly
        let back = Moments::from_matrix(&parts[0].to_matrix()).unwrap();
        assert_eq!(back, parts[0]);
    }
}
