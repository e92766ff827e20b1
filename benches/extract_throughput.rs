//! Extraction throughput on the shared animal set with the bundled model and its default layers
//! (19 at present), measured in one run so that the ratio is meaningful on a shared, noisy machine:
//!
//! - **inference only**: ONNX Runtime on tensors decoded and preprocessed beforehand (the floor);
//! - **end to end**: `extract` as users run it (decode + preprocess + inference + pooling + writing).
//!
//! Rounds alternate between the two; the best round of each is reported, with their ratio.
//! Run: `cargo bench --bench extract_throughput` (env: DOMSIM_DATASETS, DOMSIM_BENCH_THREADS=2,
//! DOMSIM_BENCH_ROUNDS=3).

use std::path::PathBuf;
use std::time::Instant;

use domsim::dataset::ImageSet;
use domsim::extract::{extract, resolve_norm, ExtractConfig, ExtractOptions};
use domsim::model::{Embedder, InputBatch, OnnxModel, Selection};
use domsim::preprocess::{load, Pixels, Preprocess};

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = std::env::var_os("DOMSIM_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"));
    let images = data.join("animals");
    let threads = env_usize("DOMSIM_BENCH_THREADS", 2);
    let rounds = env_usize("DOMSIM_BENCH_ROUNDS", 3);
    // extract's default batch
    let model_path = domsim::model::runtime::default_model_path();
    let batch = ExtractOptions::new(model_path.clone()).batch_size;

    let t0 = Instant::now();
    let model = OnnxModel::load(&model_path, threads, None, None, None)?;
    eprintln!("model load: {:.3} s", t0.elapsed().as_secs_f64());
    let layers = model.select(&Selection::Default)?;
    let n_layers = layers.len();
    eprintln!("selection: {:.3} s", t0.elapsed().as_secs_f64());
    // the same embedder as extract: pooling inside the graph
    let mut emb = model.embedder(layers, Some(domsim::model::pool::Pool::Avg), None)?;
    eprintln!("embedder: {:.3} s", t0.elapsed().as_secs_f64());
    let set = ImageSet::scan(&images)?;
    let pre = Preprocess::new(
        emb.contract().clone(),
        resolve_norm(None, &model),
        512 << 20,
    );
    let tensors: Vec<Vec<f32>> = (0..set.len())
        .filter_map(|i| match load(&set.path(i), &pre) {
            Ok((Pixels::F32(v), _)) => Some(v),
            _ => None,
        })
        .collect();
    let n = tensors.len();
    eprintln!(
        "setup (model load x1, selection, sequential decode of all images): {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let tmp = tempfile::tempdir()?;
    let mut best_inf = f64::MAX;
    let mut best_e2e = f64::MAX;
    for round in 0..rounds {
        let t = Instant::now();
        for chunk in tensors.chunks(batch) {
            let v: Vec<f32> = chunk.concat();
            emb.run(InputBatch::F32(v), chunk.len())?;
        }
        let inf = t.elapsed().as_secs_f64();
        let options = ExtractOptions {
            threads,
            batch_size: batch,
            ..ExtractOptions::new(model_path.clone())
        };
        let cfg = ExtractConfig::new(
            options,
            images.clone(),
            tmp.path().join(format!("r{round}")),
        );
        let t = Instant::now();
        let s = extract(&cfg)?;
        let e2e = t.elapsed().as_secs_f64();
        assert_eq!(s.manifest.n_images, n);
        eprintln!(
            "round {round}: inference only {:.1} img/s, end to end {:.1} img/s",
            n as f64 / inf,
            n as f64 / e2e
        );
        best_inf = best_inf.min(inf);
        best_e2e = best_e2e.min(e2e);
    }
    let (fi, fe) = (n as f64 / best_inf, n as f64 / best_e2e);
    println!(
        "extract_throughput: {n} images, {n_layers} layers, batch {batch}, {threads} intra-op threads, best of {rounds} rounds"
    );
    println!("  inference only (pre-decoded tensors): {fi:.1} images/s");
    println!("  end to end (extract, incl. model load): {fe:.1} images/s");
    println!("  ratio end-to-end / inference-only: {:.3}", fe / fi);
    Ok(())
}
