//! Why domsim hand-writes its logistic probe and its k-NN instead of using linfa (the design card's crate):
//! the same work, the same data, timed side by side in one run (best of 3), with agreement checked.
//!
//! `cargo bench --bench vs_linfa`
//! - logistic regression, L2 with C = 1 (linfa-logistic `alpha(1.0)`, the same objective), 2000 × 512,
//!   two Gaussian classes, standardised: domsim's L-BFGS (`metrics::logreg`) vs linfa-logistic;
//! - cosine 10-NN of 500 queries among 2000 points, d = 1280 (the bundled model's pooled features):
//!   domsim's one matrix product + partial selection (`metrics::transfer::knn_predict`) vs linfa-nn's
//!   `LinearSearch`, `KdTree` and `BallTree` with the L2 distance on unit vectors (the same neighbours).

use std::time::Instant;

use domsim::metrics::logreg;
use domsim::metrics::transfer::knn_predict;
use linfa::prelude::*;
use linfa_nn::{distance::L2Dist, CommonNearestNeighbour, NearestNeighbour};
use ndarray::{Array1, Array2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Standard normal draws (Box–Muller).
fn randn(rng: &mut ChaCha8Rng, n: usize, d: usize) -> Array2<f64> {
    Array2::from_shape_fn((n, d), |_| {
        let (u1, u2): (f64, f64) = (1.0 - rng.gen::<f64>(), rng.gen());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    })
}

fn best<T>(f: impl Fn() -> T) -> (f64, T) {
    let mut out = None;
    let mut t = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = f();
        t = t.min(t0.elapsed().as_secs_f64());
        out = Some(r);
    }
    (t, out.unwrap())
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // logistic regression
    let (n, d) = (2000, 512);
    let mut x = randn(&mut rng, n, d);
    let y: Vec<usize> = (0..n).map(|i| usize::from(i >= n / 2)).collect();
    for i in n / 2..n {
        for j in 0..20 {
            x[[i, j]] += 0.4;
        }
    }
    let acc =
        |pred: &[usize]| pred.iter().zip(&y).filter(|(a, b)| a == b).count() as f64 / n as f64;
    let (t_ours, m) = best(|| logreg::fit(&x.view(), &y, 2, 1.0));
    let p_ours: Vec<usize> = m
        .predict_proba(&x.view())
        .rows()
        .into_iter()
        .map(|r| usize::from(r[1] > r[0]))
        .collect();
    let ds = Dataset::new(x.clone(), Array1::from(y.clone()));
    let (t_linfa, lm) = best(|| {
        linfa_logistic::LogisticRegression::default()
            .alpha(1.0)
            .max_iterations(1000)
            .fit(&ds)
            .expect("linfa fits")
    });
    let p_linfa: Vec<usize> = lm.predict(&x).to_vec();
    println!("| task | domsim s | linfa s | linfa / domsim | agreement |");
    println!("|---|---|---|---|---|");
    println!(
        "| logistic regression 2000 x 512, C = 1 | {t_ours:.3} | {t_linfa:.3} | {:.1} | train accuracy {:.4} vs {:.4} |",
        t_linfa / t_ours,
        acc(&p_ours),
        acc(&p_linfa)
    );

    // cosine k-NN
    let (nt, nq, d, k) = (2000, 500, 1280, 10);
    let unit = |mut a: Array2<f64>| {
        for mut r in a.rows_mut() {
            let s = r.dot(&r).sqrt();
            r /= s;
        }
        a
    };
    let train = unit(randn(&mut rng, nt, d).mapv(f64::abs));
    let query = unit(randn(&mut rng, nq, d).mapv(f64::abs));
    let labels: Vec<usize> = (0..nt).map(|i| i % 2).collect();
    let (t_ours, ours) = best(|| knn_predict(&train, &labels, &query, 2, k));
    for (name, algo) in [
        ("LinearSearch", CommonNearestNeighbour::LinearSearch),
        ("KdTree", CommonNearestNeighbour::KdTree),
        ("BallTree", CommonNearestNeighbour::BallTree),
    ] {
        let (t_linfa, theirs) = best(|| {
            let index = algo.from_batch(&train, L2Dist).expect("index");
            query
                .axis_iter(Axis(0))
                .map(|q| {
                    let nb = index.k_nearest(q, k).expect("query");
                    let ones = nb.iter().filter(|(_, i)| labels[*i] == 1).count();
                    usize::from(2 * ones > k)
                })
                .collect::<Vec<usize>>()
        });
        // ties (5 vs 5 votes) are broken differently; compare the untied queries
        let agree = ours
            .iter()
            .zip(&theirs)
            .filter(|((p, s), t)| (*s - 0.5).abs() < 1e-12 || p == *t)
            .count();
        println!(
            "| cosine 10-NN, {nq} queries among {nt}, d = {d}: linfa-nn {name} | {t_ours:.3} | {t_linfa:.3} | {:.1} | {agree} of {nq} predictions equal (tied votes excluded) |",
            t_linfa / t_ours
        );
    }
}
