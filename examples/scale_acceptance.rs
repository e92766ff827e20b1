//! Scale-out acceptance runs (not tests: heavy), driven by `benches/scale_acceptance.sh`.
//!
//! `moments`: Fréchet distance and covariance alignment from mergeable moments at n = 200,000 synthetic rows per
//! set, d = 1,280, streamed in chunks of 2,000 rows (never all rows in memory). The single-pass reference
//! folds every chunk in order; the "shards" fold chunks k mod 3 separately and are merged in the order 2, 0, 1.
//! Prints both values and their relative difference.
//!
//! `null-npy SEED DIR`: writes two independent draws of one distribution, 100,000 × 512 float32 each, as
//! `DIR/a/0_layer.npy` and `DIR/b/0_layer.npy`, for the large-n MMD² null runs of `domsim compare`.

use domsim::metrics::frechet::frechet_from_moments;
use domsim::metrics::moments::Moments;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gauss_chunk(seed: u64, rows: usize, d: usize, scale: f64, shift: f64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((rows, d), |(_, j)| {
        let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
        let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
        z * scale * (1.0 + (j % 7) as f64 * 0.1) + shift * ((j % 5) as f64 - 2.0)
    })
}

fn cov_alignment(a: &Moments, b: &Moments) -> f64 {
    let (ca, cb) = (a.covariance(), b.covariance());
    let dot: f64 = ca.iter().zip(cb.iter()).map(|(x, y)| x * y).sum();
    let na: f64 = ca.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = cb.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn moments() {
    let (n, d, chunk) = (200_000usize, 1280usize, 2000usize);
    let t0 = std::time::Instant::now();
    let mut reference = [Moments::empty(d), Moments::empty(d)];
    let mut shards = vec![[Moments::empty(d), Moments::empty(d)]; 3];
    for c in 0..n / chunk {
        for (set, (scale, shift)) in [(1.0, 0.0), (1.2, 0.05)].into_iter().enumerate() {
            let x = gauss_chunk(1000 * set as u64 + c as u64, chunk, d, scale, shift);
            let m = Moments::from_rows(&x.view());
            reference[set] = reference[set].merge(&m);
            shards[c % 3][set] = shards[c % 3][set].merge(&m);
        }
    }
    let merged: Vec<Moments> = (0..2)
        .map(|set| shards[2][set].merge(&shards[0][set]).merge(&shards[1][set]))
        .collect();
    let f_ref = frechet_from_moments(&reference[0], &reference[1]).unwrap();
    let f_sh = frechet_from_moments(&merged[0], &merged[1]).unwrap();
    let (c_ref, c_sh) = (
        cov_alignment(&reference[0], &reference[1]),
        cov_alignment(&merged[0], &merged[1]),
    );
    println!(
        "n = {n} per set, d = {d}, {} chunks of {chunk} rows per set, {:.1} s",
        n / chunk,
        t0.elapsed().as_secs_f64()
    );
    println!("frechet: single pass {f_ref:.12e}, 3 shards merged {f_sh:.12e}, relative difference {:.2e}", ((f_sh - f_ref) / f_ref).abs());
    println!("cov_alignment: single pass {c_ref:.15}, 3 shards merged {c_sh:.15}, relative difference {:.2e}", ((c_sh - c_ref) / c_ref).abs());
}

fn null_npy(seed: u64, dir: &std::path::Path) {
    for (k, name) in ["a", "b"].iter().enumerate() {
        let x = gauss_chunk(seed * 10 + k as u64, 100_000, 512, 1.0, 0.0).mapv(|v| v as f32);
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(
            dir.join(name).join("0_layer.npy"),
            domsim::npy::to_bytes(&x),
        )
        .unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("moments") => moments(),
        Some("null-npy") => null_npy(args[2].parse().unwrap(), std::path::Path::new(&args[3])),
        _ => eprintln!("usage: scale_acceptance moments | null-npy SEED DIR"),
    }
}
