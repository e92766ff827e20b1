//! `domsim analyze` and `domsim report` end to end on small subsets of the shared datasets: every file is
//! written and well-formed, the cache is reused (proved by the manifest fingerprint flag and untouched
//! files, not by timing), and `report` re-renders without recomputation.

mod common;

use common::{copy_subset, datasets, domsim};
use serde_json::Value;

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let img =
        image::open(path).unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()));
    (img.width(), img.height())
}

#[test]
fn analyze_writes_every_report_file_and_reuses_its_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("animals");
    let tgt = tmp.path().join("xray");
    copy_subset(&datasets().join("animals"), &src, 0, 16, 24);
    copy_subset(
        &datasets().join("chest_xray/NORMAL"),
        &tgt.join("NORMAL"),
        0,
        50,
        12,
    );
    copy_subset(
        &datasets().join("chest_xray/PNEUMONIA"),
        &tgt.join("PNEUMONIA"),
        0,
        50,
        12,
    );
    let out = tmp.path().join("report");
    let run = || {
        domsim()
            .args([
                "analyze",
                "--permutations",
                "99",
                "--cv-repeats",
                "1",
                "--source",
            ])
            .arg(&src)
            .arg("--target")
            .arg(&tgt)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for f in [
        "metrics.csv",
        "similarity.csv",
        "compare.json",
        "verdict.json",
        "summary.json",
        "embedding_pca.csv",
        "metrics_by_depth.png",
        "gap_sources.png",
        "cka_source.png",
        "cka_target.png",
        "cka_difference.png",
        "report.html",
        "embeddings/source/manifest.json",
        "embeddings/controls/grey/manifest.json",
        "embeddings/target/manifest.json",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    // PNGs decode, at their stated sizes (18 measured layers: the 120 px strip of per-layer actions, then
    // a 6-row name key under the panels; labels: four rows of panels, the fourth for LogME and H-score)
    assert_eq!(
        png_size(&out.join("metrics_by_depth.png")),
        (1400, 4 * 450 + 120 + 40 + 22 * 6)
    );
    for f in ["cka_source.png", "cka_target.png", "cka_difference.png"] {
        assert_eq!(png_size(&out.join(f)), (1150, 900), "{f}");
    }
    let scatters: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("embedding_") && n.ends_with(".png"))
        .collect();
    assert_eq!(
        scatters.len(),
        3,
        "early, middle and late layers: {scatters:?}"
    );
    for s in &scatters {
        assert_eq!(png_size(&out.join(s)), (1000, 850));
    }
    // the HTML is self-contained
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("src=\"/"),
        "no external URL"
    );
    assert_eq!(html.matches("data:image/png;base64,").count(), 8);
    // the page names the folders the user gave, not domsim's cache, and titles its charts in words
    assert!(
        html.contains(&format!("<code>{}</code>", tgt.display())),
        "the target folder"
    );
    assert!(
        html.contains(&format!("<code>{}</code>", src.display())),
        "the source folder"
    );
    assert!(!html.contains("embeddings/target"), "no cache path");
    assert!(html.contains("<h3>Where the gap comes from: colour, resolution, pretraining</h3>"));
    assert!(!html.contains("<h3>cka_source.png</h3>"));
    // example images: the first 3 of the (unlabelled) source, 3 per target class, and the 4 target images
    // nearest to and farthest from the source where the plan acts, embedded as thumbnails
    let examples: Value =
        serde_json::from_slice(&std::fs::read(out.join("examples.json")).unwrap()).unwrap();
    let roles: Vec<(String, String)> = examples
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["set"].as_str().unwrap().to_string(),
                e["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let count = |set: &str, role: &str| {
        roles
            .iter()
            .filter(|(s, r)| s == set && r.starts_with(role))
            .count()
    };
    assert_eq!(count("source", "first images"), 3, "{roles:?}");
    assert_eq!(count("target", "class NORMAL"), 3, "{roles:?}");
    assert_eq!(count("target", "class PNEUMONIA"), 3, "{roles:?}");
    assert_eq!(count("target", "nearest to the source"), 4, "{roles:?}");
    assert_eq!(count("target", "farthest from the source"), 4, "{roles:?}");
    assert!(html.contains("<h2>What the images look like</h2>"));
    assert_eq!(html.matches("data:image/jpeg;base64,").count(), roles.len());
    common::page_renders(&out.join("report.html"));
    // the CSVs parse and hold every layer
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(out.join("embeddings/source/manifest.json")).unwrap(),
    )
    .unwrap();
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers.len(), 19);
    let mut r = csv::Reader::from_path(out.join("metrics.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    // the global average pool holds the head activation's features under average pooling: measured once
    let cmp: Value =
        serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap();
    let once = |l: &str| {
        cmp["notes"].as_array().unwrap().iter().any(|n| {
            let n = n.as_str().unwrap();
            n.contains(&format!("layer '{l}' holds the same features"))
        })
    };
    assert!(once("/_avg_pooling/GlobalAveragePool_output_0"));
    let measured: Vec<&String> = layers.iter().filter(|l| !once(l)).collect();
    assert_eq!(measured.len(), 18);
    for l in measured {
        for m in [
            "mmd2_rbf",
            "domain_probe_acc",
            "target_probe_bal_acc",
            "logme_target",
            "cka_label_target",
        ] {
            assert!(rows.iter().any(|x| x[1] == **l && &x[2] == m), "{m} at {l}");
        }
    }
    let mut r = csv::Reader::from_path(out.join("similarity.csv")).unwrap();
    assert_eq!(r.records().count(), 2 * 3 * 18 * 18);
    let verdict: Value =
        serde_json::from_slice(&std::fs::read(out.join("verdict.json")).unwrap()).unwrap();
    assert_eq!(verdict["layers"].as_array().unwrap().len(), 18);
    // the strip under the panels draws the plan (checked on this verdict, then on the same numbers with
    // a plan that freezes through depth 8 and one that fine-tunes every layer)
    let chart = image::open(out.join("metrics_by_depth.png"))
        .unwrap()
        .to_rgb8();
    let v: domsim::verdict::Verdict = serde_json::from_value(verdict.clone()).unwrap();
    strip_shows_the_plan(&chart, &v);
    let cmp = domsim::compare::read_report(&out).unwrap();
    let mut cut8 = v.clone();
    cut8.plan.kind = domsim::verdict::PlanKind::FreezeThrough;
    cut8.cut = Some(domsim::verdict::Cut {
        depth: 8,
        layer: v.layers[8].layer.clone(),
        evidence: String::new(),
    });
    let mut all = v.clone();
    all.plan.kind = domsim::verdict::PlanKind::TrainAll;
    for other in [cut8, all] {
        let png = domsim::report::plot::metrics_by_depth(&cmp, &other).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        strip_shows_the_plan(&img, &other);
    }
    assert!(verdict["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("greyscale")));
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["run"]["embeddings"]["source"]["reused_cached_embeddings"],
        false
    );
    assert_eq!(
        summary["target"]["classes"],
        serde_json::json!(["NORMAL", "PNEUMONIA"])
    );

    // second run: the cached embeddings are reused, their files untouched
    let npy = out.join(format!(
        "embeddings/target/{}",
        manifest["layers"][0]["file"].as_str().unwrap()
    ));
    let before = std::fs::metadata(&npy).unwrap().modified().unwrap();
    let metrics_before = std::fs::read(out.join("metrics.csv")).unwrap();
    let second = run();
    assert!(second.status.success());
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["run"]["embeddings"]["source"]["reused_cached_embeddings"],
        true
    );
    assert_eq!(
        summary["run"]["embeddings"]["target"]["reused_cached_embeddings"],
        true
    );
    assert_eq!(std::fs::metadata(&npy).unwrap().modified().unwrap(), before);
    assert_eq!(
        std::fs::read(out.join("metrics.csv")).unwrap(),
        metrics_before,
        "same inputs and seed, same bytes"
    );

    // a changed image folder invalidates the cache of that set only
    std::fs::remove_file(
        std::fs::read_dir(&src)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    assert!(run().status.success());
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["run"]["embeddings"]["source"]["reused_cached_embeddings"],
        false
    );
    assert_eq!(
        summary["run"]["embeddings"]["target"]["reused_cached_embeddings"],
        true
    );

    // report re-renders from the folder alone, and --json prints the summary; the verdict it re-derives is
    // the one analyze wrote
    let verdict_by_analyze = std::fs::read(out.join("verdict.json")).unwrap();
    std::fs::remove_file(out.join("metrics_by_depth.png")).unwrap();
    let rep = domsim()
        .args(["report", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        rep.status.success(),
        "{}",
        String::from_utf8_lossy(&rep.stderr)
    );
    let v: Value = serde_json::from_slice(&rep.stdout).unwrap();
    assert!(v["verdict"]["summary"]
        .as_str()
        .unwrap()
        .contains("transfer (close to the source, or within its own spread)"));
    assert!(out.join("metrics_by_depth.png").is_file());
    // byte for byte: compare.json's values read back bit-exact (serde_json's float_roundtrip)
    assert!(
        std::fs::read(out.join("verdict.json")).unwrap() == verdict_by_analyze,
        "report re-derived another verdict.json than analyze wrote"
    );
}

#[test]
fn report_on_a_folder_without_compare_output_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    domsim()
        .arg("report")
        .arg(tmp.path())
        .assert()
        .code(2)
        .stderr(predicates::str::contains("compare.json"));
}

#[test]
fn report_drops_non_finite_scatter_points_instead_of_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let tgt = tmp.path().join("tgt");
    copy_subset(&datasets().join("animals"), &src, 0, 20, 12);
    copy_subset(&datasets().join("animals"), &tgt, 1, 20, 12);
    let out = tmp.path().join("report");
    domsim()
        .args([
            "analyze",
            "--permutations",
            "99",
            "--no-similarity",
            "--source",
        ])
        .arg(&src)
        .arg("--target")
        .arg(&tgt)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let pca = out.join("embedding_pca.csv");
    let text = std::fs::read_to_string(&pca).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let cols: Vec<&str> = lines[1].split(',').collect();
    // layer,set,label,pc1,... : pc1 made infinite
    lines[1] = format!("{},inf,{}", cols[..3].join(","), cols[4..].join(","));
    std::fs::write(&pca, lines.join("\n") + "\n").unwrap();
    let thumbnails = |out: &std::path::Path| {
        std::fs::read_to_string(out.join("report.html"))
            .unwrap()
            .matches("data:image/jpeg;base64,")
            .count()
    };
    let before = thumbnails(&out);
    assert!(before >= 6, "{before} example images");
    domsim()
        .args(["report"])
        .arg(&out)
        .timeout(std::time::Duration::from_secs(120))
        .assert()
        .success();
    // the re-rendered page keeps its example images (from examples.json; the images are not read again)
    assert_eq!(thumbnails(&out), before);
}

/// Per depth, the cell of the strip's row "the plan" (under the 4 panels of an 18-layer chart) is blue where
/// the plan fine-tunes the layer and grey where it freezes it (or gives no advice), read as the mean
/// blue-minus-red and the mean brightness over the middle of the cell (its black word moves both alike).
fn strip_shows_the_plan(chart: &image::RgbImage, v: &domsim::verdict::Verdict) {
    use domsim::verdict::PlanKind;
    let strip_top = 4 * 450;
    let cell = |d: u32| -> (f64, f64) {
        let (x0, w) = (12 + 80, 1400 - 12 - 80 - 30);
        let cx = x0 + (2 * d + 1) * w / (2 * 18);
        let (mut blue, mut light, mut n) = (0.0, 0.0, 0.0);
        for y in strip_top + 22..strip_top + 50 {
            for x in cx - 20..cx + 20 {
                let p = chart.get_pixel(x, y).0.map(f64::from);
                blue += p[2] - p[0];
                light += (p[0] + p[1] + p[2]) / 3.0;
                n += 1.0;
            }
        }
        (blue / n, light / n)
    };
    for d in 0..18u32 {
        let frozen = v.plan.kind == PlanKind::FreezeThrough
            && v.cut.as_ref().is_some_and(|c| d as usize <= c.depth);
        let tuned = !frozen && v.plan.kind != PlanKind::NoAdvice;
        let (b, light) = cell(d);
        assert!(
            light < 240.0 && if tuned { b > 25.0 } else { b.abs() < 8.0 },
            "depth {d}: strip cell blueness {b:.1}, brightness {light:.0}, plan {:?} cut {:?}",
            v.plan.kind,
            v.cut.as_ref().map(|c| c.depth)
        );
    }
}
