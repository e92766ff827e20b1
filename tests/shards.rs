//! Scale-out: `extract --shard I/N` as separate processes, merged, equals the single-machine run (same
//! `index.csv` rows, same matrices, same `metrics.csv` at the same seed); shards that do not belong together
//! are refused.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_subset, datasets, domsim};
use predicates::prelude::*;

fn layer_files(d: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn extract(images: &Path, out: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    domsim()
        .args(["extract", "--images"])
        .arg(images)
        .arg("--out")
        .arg(out)
        .args(extra)
        .assert()
}

#[test]
fn three_shards_in_separate_processes_equal_the_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("xray");
    for class in ["NORMAL", "PNEUMONIA"] {
        copy_subset(
            &datasets().join("chest_xray").join(class),
            &imgs.join(class),
            3,
            11,
            14,
        );
    }
    let src = tmp.path().join("animals");
    copy_subset(&datasets().join("animals"), &src, 0, 13, 30);
    let single = tmp.path().join("single");
    extract(&imgs, &single, &[]).success();
    let parent = tmp.path().join("shards");
    // shards 0 and 2 by flag, shard 1 from a Slurm job array's environment (array 5-7)
    extract(&imgs, &parent.join("s0"), &["--shard", "0/3"]).success();
    domsim()
        .env("SLURM_ARRAY_TASK_ID", "6")
        .env("SLURM_ARRAY_TASK_MIN", "5")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .args(["extract", "--shard", "env", "--images"])
        .arg(&imgs)
        .arg("--out")
        .arg(parent.join("s1"))
        .assert()
        .success();
    extract(&imgs, &parent.join("s2"), &["--shard", "2/3"]).success();
    let m1: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(parent.join("s1/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m1["shard"]["index"], 1);
    assert_eq!(m1["shard"]["index_from"], "SLURM_ARRAY_TASK_ID");
    let sizes: Vec<u64> = (0..3)
        .map(|i| {
            let m: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(parent.join(format!("s{i}/manifest.json"))).unwrap(),
            )
            .unwrap();
            m["n_images"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(sizes.iter().sum::<u64>(), 28);
    assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");

    let merged = tmp.path().join("merged");
    domsim()
        .args(["merge", "--out"])
        .arg(&merged)
        .arg(&parent)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(single.join("index.csv")).unwrap(),
        std::fs::read(merged.join("index.csv")).unwrap()
    );
    let (a, b) = (layer_files(&single), layer_files(&merged));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{} differs from the merged shards",
            x.display()
        );
    }
    // compare: the single run vs the folder of shards, same seed, same metrics.csv
    let src_emb = tmp.path().join("src_emb");
    extract(&src, &src_emb, &[]).success();
    let run = |target: &Path, out: &Path| {
        domsim()
            .args([
                "--seed",
                "4",
                "compare",
                "--permutations",
                "199",
                "--no-similarity",
                "--source",
            ])
            .arg(&src_emb)
            .arg("--target")
            .arg(target)
            .arg("--out")
            .arg(out)
            .assert()
            .success();
        std::fs::read(out.join("metrics.csv")).unwrap()
    };
    assert!(
        run(&single, &tmp.path().join("c1")) == run(&parent, &tmp.path().join("c2")),
        "metrics.csv differs between the single run and the shards"
    );

    // mergeable moments: the shards' stats/ files, merged in every order, equal the moments of the single
    // run's rows within 1e-9 (relative to the largest entry) at every layer. (Fréchet distance itself is
    // checked on well-conditioned data in `metrics::moments`: here n = 28 < d, where the square root of a
    // rank-deficient covariance turns 1e-16 rounding into 1e-9 changes.)
    use domsim::metrics::moments::Moments;
    let single_set = domsim::embeddings::EmbeddingSet::open(&single).unwrap();
    let shard_sets: Vec<_> = (0..3)
        .map(|i| domsim::embeddings::EmbeddingSet::open(&parent.join(format!("s{i}"))).unwrap())
        .collect();
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let mut worst = 0.0f64;
    for li in 0..single_set.layers.len() {
        let reference = Moments::from_rows(&single_set.read_layer(li).unwrap().view());
        let parts: Vec<Moments> = shard_sets
            .iter()
            .map(|s| {
                let m = s.manifest.as_ref().unwrap();
                let f = s
                    .dir
                    .join(m.layers[li].stats.as_ref().expect("shards write stats"));
                Moments::from_matrix(&domsim::npy::read(&f).unwrap()).unwrap()
            })
            .collect();
        for o in orders {
            let merged = parts[o[0]].merge(&parts[o[1]]).merge(&parts[o[2]]);
            assert_eq!(merged.n, 28);
            let scale = |m: &Moments| m.m2.iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-300);
            let d_m2 = (&merged.m2 - &reference.m2)
                .iter()
                .fold(0.0f64, |a, v| a.max(v.abs()))
                / scale(&reference);
            let mscale = reference
                .mean
                .iter()
                .fold(0.0f64, |a, v| a.max(v.abs()))
                .max(1e-300);
            let d_mean = (&merged.mean - &reference.mean)
                .iter()
                .fold(0.0f64, |a, v| a.max(v.abs()))
                / mscale;
            worst = worst.max(d_m2).max(d_mean);
            assert!(
                d_m2 < 1e-9 && d_mean < 1e-9,
                "layer {li}, order {o:?}: {d_m2:e} {d_mean:e}"
            );
        }
    }
    eprintln!("merged moments vs the single run's rows: largest relative difference {worst:.1e}");
    // compare from moments only: the shards' stats against a source extracted with --stats, no row loaded
    let src_stats = tmp.path().join("src_stats");
    extract(&src, &src_stats, &["--stats"]).success();
    let read = |out: &Path| -> Vec<(String, String, f64, String)> {
        let mut r = csv::Reader::from_path(out.join("metrics.csv")).unwrap();
        r.records()
            .map(|x| {
                let x = x.unwrap();
                (
                    x[1].to_string(),
                    x[2].to_string(),
                    x[3].parse().unwrap(),
                    x[11].to_string(),
                )
            })
            .collect()
    };
    let only = |source: &Path, target: &Path, out: &Path| {
        domsim()
            .args([
                "compare",
                "--metrics",
                "frechet,cov_alignment",
                "--no-similarity",
                "--source",
            ])
            .arg(source)
            .arg("--target")
            .arg(target)
            .arg("--out")
            .arg(out)
            .assert()
            .success();
        read(out)
    };
    let rows = only(&src_emb, &single, &tmp.path().join("m_rows"));
    let mom = only(&src_stats, &parent, &tmp.path().join("m_mom"));
    assert!(
        !tmp.path().join("m_mom/merged").exists(),
        "no row was merged or loaded"
    );
    assert_eq!(rows.len(), mom.len());
    for (a, b) in rows.iter().zip(&mom) {
        assert_eq!((&a.0, &a.1), (&b.0, &b.1));
        assert!(b.3.contains("from mergeable moments"), "{}", b.3);
        assert!(!a.3.contains("from mergeable moments"));
        // covariance alignment agrees to rounding; Fréchet to 1e-6 here, since with 28 rows < d the
        // square root of a rank-deficient covariance magnifies rounding (1e-9 on well-conditioned data:
        // `metrics::moments` and benches/scale_acceptance.sh)
        let tol = if a.1 == "frechet" { 1e-6 } else { 1e-9 };
        assert!(
            (a.2 - b.2).abs() <= tol * a.2.abs(),
            "{} {}: {} vs {}",
            a.0,
            a.1,
            a.2,
            b.2
        );
    }
    // `domsim merge` wrote the merged moments too
    let mm = domsim::embeddings::EmbeddingSet::open(&merged).unwrap();
    assert!(mm
        .manifest
        .unwrap()
        .layers
        .iter()
        .all(|l| l.stats.is_some()));
}

#[test]
fn shards_that_do_not_belong_together_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    copy_subset(&datasets().join("animals"), &imgs, 0, 40, 10);
    let model = common::fixture("nchw_dyn/model.onnx");
    let ext = |out: &str, shard: &str, extra: &[&str]| {
        domsim()
            .args(["extract", "--model"])
            .arg(&model)
            .arg("--images")
            .arg(&imgs)
            .arg("--out")
            .arg(tmp.path().join(out))
            .args(["--shard", shard])
            .args(extra)
            .assert()
            .success();
    };
    ext("a0", "0/2", &[]);
    ext("a1", "1/2", &[]);
    ext("max1", "1/2", &["--pool", "max"]);
    let merge = |parts: &[&str]| {
        let mut c = domsim();
        c.args(["merge", "--out"]).arg(tmp.path().join("m"));
        for p in parts {
            c.arg(tmp.path().join(p));
        }
        c.assert()
    };
    merge(&["a0"])
        .code(2)
        .stderr(predicate::str::contains("shard(s) 1/2 missing"));
    merge(&["a0", "a1", "a1"])
        .code(2)
        .stderr(predicate::str::contains("overlapping shards"));
    merge(&["a0", "max1"])
        .code(2)
        .stderr(predicate::str::contains(
            "another pooling (Max here, Avg there)",
        ));
    // a different shard count, a different file list, a folder that is not a shard, an incomplete shard
    ext("of3", "1/3", &[]);
    merge(&["a0", "of3"])
        .code(2)
        .stderr(predicate::str::contains("it is one of 3 shards"));
    let more = tmp.path().join("more");
    copy_subset(&datasets().join("animals"), &more, 0, 30, 11);
    domsim()
        .args(["extract", "--model"])
        .arg(&model)
        .arg("--images")
        .arg(&more)
        .arg("--out")
        .arg(tmp.path().join("other1"))
        .args(["--shard", "1/2"])
        .assert()
        .success();
    merge(&["a0", "other1"])
        .code(2)
        .stderr(predicate::str::contains("cut from a different file list"));
    domsim()
        .args(["extract", "--model"])
        .arg(&model)
        .arg("--images")
        .arg(&imgs)
        .arg("--out")
        .arg(tmp.path().join("whole"))
        .assert()
        .success();
    merge(&["a0", "whole"])
        .code(2)
        .stderr(predicate::str::contains("is not a shard"));
    ext("cut1", "1/2", &[]);
    std::fs::remove_file(tmp.path().join("cut1/manifest.json")).unwrap();
    merge(&["a0", "cut1"]).code(2).stderr(
        predicate::str::contains("neither an embedding folder")
            .or(predicate::str::contains("incomplete")),
    );
    merge(&["a0", "a1"]).success();
    assert_cmd::Command::cargo_bin("domsim")
        .unwrap()
        .args(["extract", "--shard", "env", "--images"])
        .arg(&imgs)
        .arg("--out")
        .arg(tmp.path().join("k"))
        .env("JOB_COMPLETION_INDEX", "1")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--shard-count"));
}
