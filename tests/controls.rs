//! The colour and resolution controls end to end, with the real ONNX Runtime on real photos: a cause put
//! into a target on purpose (greyscale, made here with the `image` crate's conversion; a 4× downsampling) is
//! what the matching control explains, and the wrong control does not. The full study with three seeds and
//! Pillow-made targets is `reports/gap_sources/` (`bash reports/gap_sources/run.sh`).

mod common;

use std::path::Path;

use common::{copy_subset, datasets, domsim};

/// Per depth: the value of one output in `metrics.csv`, when it has one.
fn values(dir: &Path, metric: &str) -> Vec<(usize, Option<f64>)> {
    let mut r = csv::Reader::from_path(dir.join("metrics.csv")).unwrap();
    r.records()
        .map(|x| x.unwrap())
        .filter(|x| &x[2] == metric)
        .map(|x| (x[0].parse().unwrap(), x[3].parse().ok()))
        .collect()
}

/// Writes every image of `src` into `dest` after `f` (PNG, lossless).
fn changed(src: &Path, dest: &Path, f: impl Fn(image::DynamicImage) -> image::DynamicImage) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let img = f(image::open(&p).unwrap());
        img.save(dest.join(p.file_stem().unwrap()).with_extension("png"))
            .unwrap();
    }
}

#[test]
fn an_injected_cause_is_what_its_control_explains() {
    let tmp = tempfile::tempdir().unwrap();
    let animals = datasets().join("animals");
    let (src, raw) = (tmp.path().join("src"), tmp.path().join("raw"));
    // two disjoint sets of animal photos: even and odd files
    let a = copy_subset(&animals, &src, 0, 2, 40);
    let b = copy_subset(&animals, &raw, 1, 2, 40);
    assert!(a.iter().all(|f| !b.contains(f)));
    let grey = tmp.path().join("grey");
    changed(&raw, &grey, |i| {
        image::DynamicImage::ImageLuma8(i.to_luma8())
    });
    let small = tmp.path().join("small");
    changed(&raw, &small, |i| {
        i.resize_exact(
            i.width() / 4,
            i.height() / 4,
            image::imageops::FilterType::Triangle,
        )
    });
    for (name, target) in [("grey", &grey), ("small", &small)] {
        let out = tmp.path().join(format!("out_{name}"));
        domsim()
            .args(["analyze", "--source"])
            .arg(&src)
            .arg("--target")
            .arg(target)
            .arg("--out")
            .arg(&out)
            .assert()
            .success();
        let share = |m: &str| values(&out, m);
        let verdict: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("verdict.json")).unwrap())
                .unwrap();
        let sentence = verdict["sources"].as_str().unwrap_or_default().to_string();
        if name == "grey" {
            // greyscale is the gap at the first layers, and the control closes most of it there
            let g = share("gap_closed_grey");
            assert_eq!(g.len(), 18, "{g:?}");
            for d in [0, 1] {
                let v = g[d].1.expect("a gap at the first layers");
                assert!(v > 0.6, "depth {d}: the greyscale control closes {v}");
            }
            assert!(
                share("gap_closed_resolution").is_empty(),
                "no resolution control for a full-size target"
            );
            assert!(
                sentence.contains("a greyscale copy of the source closes"),
                "{sentence}"
            );
            // how much a layer responds to colour is measured at every layer
            assert!(share("mmd2_source_vs_grey").iter().all(|v| v.1.is_some()));
        } else {
            // a colour target at a quarter of the resolution: the resolution control explains the gap, the
            // greyscale one does not (it moves the source away from a colour target)
            let m = serde_json::from_str::<serde_json::Value>(
                &std::fs::read_to_string(out.join("compare.json")).unwrap(),
            )
            .unwrap();
            let notes = m["notes"].to_string();
            assert!(notes.contains("controls (grey, px"), "{notes}");
            let r: Vec<f64> = share("gap_closed_resolution")
                .iter()
                .filter_map(|v| v.1)
                .collect();
            let g: Vec<f64> = share("gap_closed_grey")
                .iter()
                .filter_map(|v| v.1)
                .collect();
            assert!(r.len() >= 5, "layers with a gap: {r:?}");
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            assert!(median(r.clone()) > 0.6, "resolution control: {r:?}");
            assert!(g.iter().all(|&x| x < 0.2), "greyscale control: {g:?}");
            assert!(
                sentence.contains("the source at") && !sentence.contains("greyscale copy"),
                "{sentence}"
            );
        }
    }
    // --no-controls leaves them out
    let out = tmp.path().join("off");
    domsim()
        .args(["analyze", "--no-controls", "--source"])
        .arg(&src)
        .arg("--target")
        .arg(&grey)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    assert!(values(&out, "gap_closed_grey").is_empty());
    assert!(!out.join("gap_sources.png").exists());
    assert!(!out.join("embeddings/controls").exists());
}
