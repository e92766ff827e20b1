//! The bundled source reference (`data/reference/`): `analyze --target` alone gives the same verdict and,
//! within float16's precision, the same numbers as the explicit `--source ../shared/datasets/animals` run;
//! another model without `--source` gets a clear error; the script regenerates the reference byte for byte.

mod common;

use std::path::Path;

use common::{copy_subset, datasets, domsim, fixture};

/// Largest change the float16 reference may cause, per metric value: a quarter of the value's own interval
/// width where it has one (a probe may flip one prediction), else 1e-3 relative, twice float16's unit
/// roundoff (README, "Bundled source
/// reference", states what was measured).
fn within_float16_tolerance(v_ref: f64, v_src: f64, ci: Option<(f64, f64)>) -> bool {
    let d = (v_ref - v_src).abs();
    match ci {
        Some((lo, hi)) => d <= 0.25 * (hi - lo) + 1e-12,
        None => d <= 1e-3 * v_src.abs().max(1e-12),
    }
}

fn read_metrics(dir: &Path) -> Vec<csv::StringRecord> {
    let mut r = csv::Reader::from_path(dir.join("metrics.csv")).unwrap();
    r.records().map(|x| x.unwrap()).collect()
}

#[test]
fn target_alone_matches_the_explicit_animal_source() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("xray");
    for class in ["NORMAL", "PNEUMONIA"] {
        copy_subset(
            &datasets().join("chest_xray").join(class),
            &target.join(class),
            0,
            7,
            30,
        );
    }
    let (a, b) = (tmp.path().join("ref"), tmp.path().join("src"));
    let out = domsim()
        .args(["analyze", "--target"])
        .arg(&target)
        .arg("--out")
        .arg(&a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    domsim()
        .args(["analyze", "--source"])
        .arg(datasets().join("animals"))
        .arg("--target")
        .arg(&target)
        .arg("--out")
        .arg(&b)
        .assert()
        .success();
    let (ma, mb) = (read_metrics(&a), read_metrics(&b));
    assert_eq!(ma.len(), mb.len(), "same layers and metrics");
    let f = |s: &str| s.parse::<f64>().ok();
    let mut checked = 0;
    let (mut worst_ci, mut worst_rel, mut worst_p) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!((&x[1], &x[2]), (&y[1], &y[2]));
        assert_eq!(x[8], y[8], "n_source");
        if let (Some(va), Some(vb)) = (f(&x[4 - 1]), f(&y[4 - 1])) {
            let ci = f(&y[4]).zip(f(&y[5]));
            assert!(
                within_float16_tolerance(va, vb, ci),
                "{} at {}: {va} (bundled reference) vs {vb} (animal photos), interval {ci:?}",
                &x[2],
                &x[1]
            );
            if let Some((lo, hi)) = ci {
                worst_ci = worst_ci.max((va - vb).abs() / (hi - lo).max(1e-12));
            } else {
                worst_rel = worst_rel.max((va - vb).abs() / vb.abs().max(1e-12));
            }
            checked += 1;
        }
        if let (Some(pa), Some(pb)) = (f(&x[6]), f(&y[6])) {
            worst_p = worst_p.max((pa - pb).abs());
            assert!(
                (pa - pb).abs() <= 0.01,
                "{} at {}: p {pa} vs {pb}",
                &x[2],
                &x[1]
            );
        }
    }
    assert!(checked > 200, "{checked} values compared");
    eprintln!(
        "{checked} values: largest change {:.3} of the interval width, {worst_rel:.1e} relative without one; p-values {worst_p:.4}",
        worst_ci
    );
    let v = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("verdict.json")).unwrap()).unwrap()
    };
    let (va, vb) = (v(&a), v(&b));
    for key in ["plan", "cut"] {
        assert_eq!(va[key], vb[key], "{key}");
    }
    // the sentences agree word for word; only the measured values they quote (e.g. "domain probe 0.975") may move
    let words = |v: &serde_json::Value| -> String {
        v.as_str()
            .unwrap()
            .split(|c: char| c.is_ascii_digit() || c == '.')
            .collect::<Vec<_>>()
            .join("#")
    };
    for key in ["summary", "diagnosis"] {
        assert_eq!(words(&va[key]), words(&vb[key]), "{key}");
    }
    let labels = |v: &serde_json::Value| -> Vec<String> {
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["label"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(labels(&va), labels(&vb));
    // the bundled reference is stated in the terminal, summary.json and the report
    // (the terminal table, re-rendered without --quiet: `domsim report` keeps the run's description)
    let rep = assert_cmd::Command::cargo_bin("domsim")
        .unwrap()
        .arg("report")
        .arg(&a)
        .output()
        .unwrap();
    let term = String::from_utf8_lossy(&rep.stdout);
    assert!(
        term.contains("source: the bundled reference: 398 ImageNet photos"),
        "{term}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["run"]["source_reference"]["bundled"], true);
    assert_eq!(summary["run"]["source_reference"]["n_images"], 398);
    assert_eq!(summary["run"]["source_reference"]["dtype"], "float16");
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert!(html.contains("the bundled reference: 398 ImageNet photos"));
}

#[test]
fn another_model_without_source_says_how_to_make_a_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let out = domsim()
        .args(["analyze", "--model"])
        .arg(fixture("nchw_dyn/model.onnx"))
        .arg("--target")
        .arg(fixture("images16"))
        .arg("--out")
        .arg(tmp.path().join("r"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no --source given"), "{err}");
    assert!(err.contains("nchw_dyn/model.onnx"), "{err}");
    assert!(err.contains("domsim extract --model"), "{err}");
    assert!(err.contains("--source ref/"), "{err}");
}

#[test]
fn embedding_folder_from_other_settings_is_refused() {
    // the bundled reference was made with average pooling: a max-pooled target cannot be compared with it
    let tmp = tempfile::tempdir().unwrap();
    let out = domsim()
        .args(["analyze", "--pool", "max", "--target"])
        .arg(fixture("images16"))
        .arg("--out")
        .arg(tmp.path().join("r"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not extracted alike: pooling differs"),
        "{err}"
    );
}

#[test]
fn the_script_regenerates_the_reference_byte_for_byte() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp
        .path()
        .join("reference")
        .join("efficientnet_lite0_animals");
    let st = std::process::Command::new("bash")
        .arg(root.join("scripts/make-reference.sh"))
        .arg(&out)
        .env("DOMSIM_BIN", assert_cmd::cargo::cargo_bin("domsim"))
        .env("DOMSIM_DATASETS", datasets())
        .status()
        .unwrap();
    assert!(st.success());
    let committed = root.join("data/reference");
    let mut files = vec![committed.join("animals.sha256")];
    let dir = committed.join("efficientnet_lite0_animals");
    for rel in ["manifest.json", "index.csv", "skipped.csv"] {
        files.push(dir.join(rel));
    }
    for e in std::fs::read_dir(dir.join("layers")).unwrap() {
        files.push(e.unwrap().path());
    }
    // the colour and resolution controls beside it, every change the script makes
    let controls = committed.join("efficientnet_lite0_animals_controls");
    let mut changes = Vec::new();
    for c in std::fs::read_dir(&controls).unwrap() {
        let c = c.unwrap().path();
        changes.push(c.file_name().unwrap().to_string_lossy().into_owned());
        for rel in ["manifest.json", "index.csv", "skipped.csv"] {
            files.push(c.join(rel));
        }
        for e in std::fs::read_dir(c.join("layers")).unwrap() {
            files.push(e.unwrap().path());
        }
    }
    changes.sort();
    assert_eq!(
        changes,
        [
            "grey",
            "px112",
            "px112_grey",
            "px28",
            "px28_grey",
            "px56",
            "px56_grey"
        ]
    );
    assert!(files.len() > 150);
    for f in files {
        let rel = f.strip_prefix(&committed).unwrap();
        let new = tmp.path().join("reference").join(rel);
        assert!(
            std::fs::read(&f).unwrap() == std::fs::read(&new).unwrap(),
            "{} differs from the regenerated copy; run `bash scripts/make-reference.sh` and commit",
            rel.display()
        );
    }
}
