//! Criterion benches of the metric kernels on seeded Gaussian data, with `BenchmarkId`s carrying n (rows per
//! set) and d. Default grid: n ∈ {1000, 5000}, d ∈ {64, 512}; `DOMSIM_BENCH_FULL=1` runs the full
//! grid n ∈ {1000, 5000, 20000} × d ∈ {64, 512, 2048} (hours on 2 cores for the largest MMD cells).
//! Run: `cargo bench --bench metrics`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use domsim::metrics::cka::{linear_cka_pair, LinearRep};
use domsim::metrics::frechet::frechet;
use domsim::metrics::mmd::mmd2_rbf;
use domsim::metrics::probe::cv_probe;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn data(n: usize, d: usize, seed: u64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((n, d), |_| {
        let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    })
}

fn grid() -> Vec<(usize, usize)> {
    let full = std::env::var("DOMSIM_BENCH_FULL").is_ok_and(|v| v == "1");
    let (ns, ds): (&[usize], &[usize]) = if full {
        (&[1000, 5000, 20000], &[64, 512, 2048])
    } else {
        (&[1000, 5000], &[64, 512])
    };
    ns.iter()
        .flat_map(|&n| ds.iter().map(move |&d| (n, d)))
        .collect()
}

fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    g.sample_size(10);
    for (n, d) in grid() {
        let x = data(n, d, 1);
        let y = data(n, d, 2) + 0.1;
        let id = format!("n{n}_d{d}");
        g.bench_with_input(
            BenchmarkId::new("linear_cka_and_debiased", &id),
            &(),
            |b, _| b.iter(|| linear_cka_pair(&LinearRep::new(&x), &LinearRep::new(&y))),
        );
        g.bench_with_input(BenchmarkId::new("frechet", &id), &(), |b, _| {
            b.iter(|| frechet(&x, &y).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("mmd2_rbf_200perm", &id), &(), |b, _| {
            b.iter(|| mmd2_rbf(&x, &y, 200, None, &mut ChaCha8Rng::seed_from_u64(0)))
        });
        if n <= 5000 {
            let pooled = ndarray::concatenate(ndarray::Axis(0), &[x.view(), y.view()]).unwrap();
            let labels: Vec<usize> = (0..2 * n).map(|i| usize::from(i >= n)).collect();
            g.bench_with_input(BenchmarkId::new("domain_probe_5fold", &id), &(), |b, _| {
                b.iter(|| {
                    cv_probe(
                        &pooled,
                        &labels,
                        5,
                        1,
                        1.0,
                        &mut ChaCha8Rng::seed_from_u64(0),
                    )
                    .unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
