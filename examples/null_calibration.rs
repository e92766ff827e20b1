//! Null calibration of domsim's tests and intervals on real embeddings: random same-distribution splits of
//! one embedding folder (default: the chest X-rays), `n` vs `n` rows, at a few layers. Reports, per layer,
//! how often the MMD² permutation p is ≤ 0.05 (should be about 5 %) and how often the domain probe's
//! corrected repeated-CV interval covers 0.5 (should be ≥ 95 % nominal, ≥ 90 % accepted).
//!
//! ```text
//! cargo run --release --example null_calibration -- EMB_DIR [SPLITS=200] [N=200] [LAYERS=0,8,17]
//! ```
//! `bash reports/stability/calibration.sh` extracts the X-rays and runs it with the defaults.

use domsim::embeddings::EmbeddingSet;
use domsim::metrics::mmd::mmd2_rbf;
use domsim::metrics::probe::cv_probe;
use ndarray::{concatenate, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().expect("usage: EMB_DIR [SPLITS] [N] [LAYERS]"));
    let splits: usize = args.get(1).map_or(Ok(200), |s| s.parse())?;
    let n: usize = args.get(2).map_or(Ok(200), |s| s.parse())?;
    let set = EmbeddingSet::open(&dir)?;
    let layers: Vec<usize> = match args.get(3) {
        Some(s) => s.split(',').map(|v| v.parse()).collect::<Result<_, _>>()?,
        None => vec![0, set.layers.len() / 2, set.layers.len() - 1],
    };
    println!("| layer | splits | n per side | MMD2 p <= 0.05 | domain-probe CI covers 0.5 | mean domain acc |");
    println!("|---|---|---|---|---|---|");
    for &li in &layers {
        let x = set.read_layer(li)?;
        let mut rng = ChaCha8Rng::seed_from_u64(li as u64);
        let (mut rejected, mut covered, mut acc_sum) = (0usize, 0usize, 0.0);
        for _ in 0..splits {
            let mut idx: Vec<usize> = (0..x.nrows()).collect();
            idx.shuffle(&mut rng);
            let a = x.select(Axis(0), &idx[..n]);
            let b = x.select(Axis(0), &idx[n..2 * n]);
            let r = mmd2_rbf(&a, &b, 1999, None, &mut rng);
            rejected += usize::from(r.p_value <= 0.05);
            let z = concatenate(Axis(0), &[a.view(), b.view()])?;
            let y: Vec<usize> = (0..2 * n).map(|i| usize::from(i >= n)).collect();
            let p = cv_probe(&z, &y, 5, 3, 1.0, &mut rng).map_err(anyhow::Error::msg)?;
            let (lo, hi) = p.acc_ci.expect("interval");
            covered += usize::from(lo <= 0.5 && 0.5 <= hi);
            acc_sum += p.acc;
        }
        println!(
            "| {li} `{}` | {splits} | {n} | {:.1} % | {:.1} % | {:.3} |",
            set.layers[li].name,
            100.0 * rejected as f64 / splits as f64,
            100.0 * covered as f64 / splits as f64,
            acc_sum / splits as f64
        );
    }
    Ok(())
}
