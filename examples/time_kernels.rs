//! Times domsim's metric kernels on `.npy` files written by `benches/vs_numpy.py` and prints JSON seconds
//! (best of `reps`), so the script can report domsim/numpy ratios measured in one run.
//!
//! Usage: cargo run --release --example time_kernels -- DATA_DIR [REPS]

use std::time::Instant;

use domsim::metrics::cka::{linear_cka_pair, LinearRep};
use domsim::metrics::frechet::frechet;
use domsim::metrics::mmd::mmd2_rbf;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn best<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().ok_or("usage: time_kernels DATA_DIR [REPS]")?);
    let reps: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let x = domsim::npy::read(&dir.join("x.npy"))?;
    let y = domsim::npy::read(&dir.join("y.npy"))?;
    let sigma: f64 = std::fs::read_to_string(dir.join("sigma.txt"))?
        .trim()
        .parse()?;
    let t_cka = best(reps, || {
        linear_cka_pair(&LinearRep::new(&x), &LinearRep::new(&y))
    });
    let t_fd = best(reps, || frechet(&x, &y).unwrap());
    let t_mmd = best(reps, || {
        mmd2_rbf(&x, &y, 200, Some(sigma), &mut ChaCha8Rng::seed_from_u64(0))
    });
    let (cka, _) = linear_cka_pair(&LinearRep::new(&x), &LinearRep::new(&y));
    let fd = frechet(&x, &y)?;
    let mmd = mmd2_rbf(&x, &y, 0, Some(sigma), &mut ChaCha8Rng::seed_from_u64(0)).mmd2;
    println!(
        "{{\"linear_cka\": {t_cka}, \"frechet\": {t_fd}, \"mmd2_200perm\": {t_mmd}, \"values\": {{\"linear_cka\": {cka}, \"frechet\": {fd}, \"mmd2\": {mmd}}}}}"
    );
    Ok(())
}
