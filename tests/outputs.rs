//! One mechanism for every output: a metric registered beside the registry's shows up in every output
//! (metrics.csv, compare.json, the chart, the terminal table, summary.json, the HTML), and the formats of
//! metrics.csv, verdict.json and summary.json are pinned by snapshots (`tests/snapshots/`), so that any change
//! of format is a visible diff. `DOMSIM_UPDATE_SNAPSHOTS=1 cargo test --release --test outputs` rewrites them.

mod common;

use std::path::Path;

use common::{domsim, fixture};
use domsim::metrics::{Ctx, Direction, Metric, MetricValue, Output, Panel, SetData};

/// A trivial metric, declared the way every metric is: one file's worth of code plus one registry line.
struct MeanGap;

const MEAN_GAP: Output = Output::new(
    "mean_gap",
    "mean feature gap |mean(source) - mean(target)| (test metric)",
    Direction::Farther,
)
.column("gap")
.panel(Panel::Distance);

impl Metric for MeanGap {
    fn name(&self) -> &'static str {
        "mean_gap"
    }
    fn outputs(&self) -> &'static [Output] {
        static O: [Output; 1] = [MEAN_GAP];
        &O
    }
    fn compute(&self, s: &SetData, t: &SetData, _ctx: &Ctx) -> domsim::Result<Vec<MetricValue>> {
        let gap = (s.x.mean().unwrap() - t.x.mean().unwrap()).abs();
        Ok(vec![MEAN_GAP.value(gap, "mean over rows and features")])
    }
}

fn extract(images: &Path, out: &Path) {
    domsim()
        .args(["extract", "--norm", "unit", "--model"])
        .arg(fixture("nchw_dyn/model.onnx"))
        .arg("--images")
        .arg(images)
        .arg("--out")
        .arg(out)
        .assert()
        .success();
}

#[test]
fn a_registered_metric_shows_up_in_every_output() {
    use domsim::report::export;
    let tmp = tempfile::tempdir().unwrap();
    let (src, tgt, out) = (
        tmp.path().join("src"),
        tmp.path().join("tgt"),
        tmp.path().join("report"),
    );
    extract(&fixture("images16"), &src);
    extract(&fixture("images16"), &tgt);
    std::fs::create_dir_all(&out).unwrap();
    let (s, t) = (
        domsim::embeddings::EmbeddingSet::open(&src).unwrap(),
        domsim::embeddings::EmbeddingSet::open(&tgt).unwrap(),
    );
    let cfg = domsim::compare::CompareOptions {
        params: domsim::metrics::Params {
            permutations: 99,
            ..Default::default()
        },
        similarity: true,
        ..Default::default()
    };
    let mut metrics = domsim::metrics::registry();
    metrics.push(Box::new(MeanGap));
    let c = domsim::compare::compute_with(metrics, &s, &t, &cfg).unwrap();
    let rr = export::of_compare(c);
    export::write(&rr, &out, &export::analysis_files(&rr)).unwrap();
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();

    let mut csv = csv::Reader::from_path(out.join("metrics.csv")).unwrap();
    let rows = csv
        .records()
        .filter(|r| &r.as_ref().unwrap()[2] == "mean_gap")
        .count();
    assert_eq!(
        rows,
        rr.compare.layers.len(),
        "metrics.csv: one row per layer"
    );
    let compare: serde_json::Value = serde_json::from_str(&read("compare.json")).unwrap();
    assert!(compare["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["id"] == "mean_gap" && o["direction"] == "farther"));
    let summary: serde_json::Value = serde_json::from_str(&read("summary.json")).unwrap();
    assert!(summary["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["id"] == "mean_gap" && o["label"] == MEAN_GAP.label.as_ref()));
    let drawn = domsim::report::plot::chart_series(&rr.compare);
    assert!(drawn
        .iter()
        .any(|(p, outs)| *p == Panel::Distance && outs.contains(&MEAN_GAP)));
    let html = read("report.html");
    assert!(
        html.contains("<th title=\"mean feature gap"),
        "HTML table column"
    );
    assert!(
        html.contains("(<code>mean_gap</code>)"),
        "HTML chart legend"
    );
    let text = domsim::report::summary::text(&rr, &out);
    // the first line is what to do, short enough to read at a glance; the table follows
    let first = text.lines().next().unwrap();
    assert!(
        first.chars().count() <= 120 && !first.starts_with("depth"),
        "{first}"
    );
    let at = text
        .lines()
        .position(|l| l.trim_start().starts_with("depth"))
        .unwrap();
    let header = text.lines().nth(at).unwrap();
    assert!(header.split_whitespace().any(|h| h == "gap"), "{header}");
    // and it was computed, not left empty
    let gap_cells: Vec<String> = text
        .lines()
        .skip(at + 1)
        .take(rr.compare.layers.len())
        .map(|l| l.to_string())
        .collect();
    assert!(rr
        .compare
        .layers
        .iter()
        .all(|l| l.value(&MEAN_GAP).and_then(|v| v.value).is_some()));
    assert_eq!(gap_cells.len(), rr.compare.layers.len());
}

/// Splits text into alternating non-number and number tokens (numbers as f64).
fn tokens(s: &str) -> Vec<Result<f64, String>> {
    let b = s.as_bytes();
    let (mut out, mut text, mut i) = (Vec::new(), String::new(), 0);
    while i < b.len() {
        let starts_number =
            b[i].is_ascii_digit() || (b[i] == b'-' && i + 1 < b.len() && b[i + 1].is_ascii_digit());
        let after_word = i > 0 && (b[i - 1].is_ascii_alphabetic() || b[i - 1] == b'_');
        if starts_number && !after_word {
            let mut j = i + 1;
            while j < b.len()
                && (b[j].is_ascii_digit()
                    || b[j] == b'.'
                    || ((b[j] == b'e' || b[j] == b'E')
                        && j + 1 < b.len()
                        && (b[j + 1].is_ascii_digit() || b[j + 1] == b'-')))
            {
                j += if b[j] == b'e' || b[j] == b'E' { 2 } else { 1 };
            }
            if let Ok(v) = s[i..j].trim_end_matches('.').parse::<f64>() {
                out.push(Err(std::mem::take(&mut text)));
                out.push(Ok(v));
                i = j;
                continue;
            }
        }
        text.push(b[i] as char);
        i += 1;
    }
    out.push(Err(text));
    out
}

/// Same text, and numbers equal within 1e-6 relative or 1e-9 absolute (floating-point last bits, and
/// round-off around zero, may differ between CPUs).
fn same(a: &str, b: &str) -> Result<(), String> {
    let (ta, tb) = (tokens(a), tokens(b));
    if ta.len() != tb.len() {
        return Err(format!("{} vs {} tokens", ta.len(), tb.len()));
    }
    for (x, y) in ta.iter().zip(&tb) {
        match (x, y) {
            (Err(p), Err(q)) if p == q => {}
            (Ok(p), Ok(q)) if p == q || (p - q).abs() <= 1e-6 * p.abs().max(q.abs()) + 1e-9 => {}
            _ => return Err(format!("{x:?} vs {y:?}")),
        }
    }
    Ok(())
}

#[test]
fn metrics_csv_verdict_json_and_summary_json_match_their_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r");
    domsim()
        .current_dir(fixture(""))
        .args(["analyze", "--permutations", "99"])
        .args(["--model", "nchw_dyn/model.onnx", "--source", "images16"])
        .args(["--target", "images16", "--out"])
        .arg(&out)
        .assert()
        .success();
    let tmp_path = tmp.path().display().to_string();
    let normalise = |name: &str| -> String {
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        let text = if name == "summary.json" {
            // wall times, this run's paths and the cache fingerprints (which hash file times) are not part
            // of the format
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["run"]["timings_s"] = serde_json::Value::Null;
            for set in ["source", "target"] {
                if v["run"]["embeddings"][set].get("fingerprint").is_some() {
                    v["run"]["embeddings"][set]["fingerprint"] = "<fingerprint>".into();
                }
            }
            serde_json::to_string_pretty(&v).unwrap()
        } else {
            text
        };
        text.replace(&tmp_path, "<tmp>")
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let update = std::env::var_os("DOMSIM_UPDATE_SNAPSHOTS").is_some();
    for name in ["metrics.csv", "verdict.json", "summary.json"] {
        let got = normalise(name);
        let path = dir.join(name);
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = same(&want, &got) {
            panic!(
                "{name} differs from tests/snapshots/{name} ({e}); if the change is intended, rerun with DOMSIM_UPDATE_SNAPSHOTS=1 and commit the diff.\n--- got ---\n{got}"
            );
        }
    }
}

#[test]
fn the_snapshot_comparison_can_fail() {
    assert!(same("a 1.0 b", "a 1.0000000001 b").is_ok());
    assert!(same("a 1.0 b", "a 1.1 b").is_err());
    assert!(same("a 1.0 b", "a 1.0 c").is_err());
    assert!(same("x,0.5,,y", "x,0.5,y").is_err());
    assert!(same("layer_2 -3e-4", "layer_2 -0.0003").is_ok());
}

/// The labelled path of `verdict.json`, pinned (the other snapshot is unlabelled): synthetic embeddings,
/// 3 layers, 60 + 60 labelled target rows with a class signal that grows with depth and a shift that only
/// the deepest layer carries. `compare`, then `report` derives the verdict.
#[test]
fn labelled_verdict_json_matches_its_snapshot() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let (s, t) = (tmp.path().join("s"), tmp.path().join("t"));
    std::fs::create_dir_all(&s).unwrap();
    std::fs::create_dir_all(&t).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut randn = |n: usize, d: usize| -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| {
                (0..d)
                    .map(|_| {
                        let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
                        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
                    })
                    .collect()
            })
            .collect()
    };
    let write = |path: &Path, rows: &[Vec<f64>]| {
        let a =
            ndarray::Array2::from_shape_fn((rows.len(), rows[0].len()), |(i, j)| rows[i][j] as f32);
        std::fs::write(path, domsim::npy::to_bytes(&a)).unwrap();
    };
    let mut labels = String::from("row,label\n");
    for layer in 0..3 {
        let d = 6;
        write(&s.join(format!("{layer}_l{layer}.npy")), &randn(120, d));
        let mut tr = randn(120, d);
        for (r, row) in tr.iter_mut().enumerate() {
            row[0] += if r % 2 == 0 { 1.0 } else { -1.0 } * (1.0 + layer as f64);
            if layer == 2 {
                row[1] += 8.0; // the deepest layer is shifted
            }
        }
        write(&t.join(format!("{layer}_l{layer}.npy")), &tr);
    }
    for r in 0..120 {
        labels.push_str(&format!("{r},{}\n", if r % 2 == 0 { "a" } else { "b" }));
    }
    std::fs::write(t.join("labels.csv"), labels).unwrap();
    let out = tmp.path().join("r");
    domsim()
        .args([
            "compare",
            "--permutations",
            "399",
            "--cv-repeats",
            "2",
            "--source",
        ])
        .arg(&s)
        .arg("--target")
        .arg(&t)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    domsim().arg("report").arg(&out).assert().success();
    let got = std::fs::read_to_string(out.join("verdict.json"))
        .unwrap()
        .replace(&tmp.path().display().to_string(), "<tmp>");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/labelled_verdict.json");
    if std::env::var_os("DOMSIM_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap();
    if let Err(e) = same(&want, &got) {
        panic!("labelled_verdict.json differs from its snapshot ({e}); if intended, rerun with DOMSIM_UPDATE_SNAPSHOTS=1.\n--- got ---\n{got}");
    }
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["plan"]["kind"], "freeze_through");
    assert_eq!(
        v["cut"]["depth"], 1,
        "shifted deep layer: the cut at 0.47 of the depth"
    );
    assert!(v["evidence"][0]["task"].is_number(), "the labelled path");
}
