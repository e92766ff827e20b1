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
            // the target is the source's kind of photo in greyscale: colour is all of the gap
            assert!(
                sentence.contains("Colour accounts for the whole gap"),
                "{sentence}"
            );
            // how much a layer responds to colour is measured at every layer
            assert!(share("mmd2_source_vs_grey").iter().all(|v| v.1.is_some()));
            // a compare.json whose declarations carry another wording (an older domsim) still gives the
            // sentence: outputs are matched by id
            let cj = out.join("compare.json");
            let text = std::fs::read_to_string(&cj).unwrap();
            std::fs::write(&cj, text.replace("jackknife 95 %", "an older wording")).unwrap();
            assert_cmd::Command::cargo_bin("domsim")
                .unwrap()
                .args(["--quiet", "report"])
                .arg(&out)
                .assert()
                .success();
            let again: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("verdict.json")).unwrap())
                    .unwrap();
            assert_eq!(again["sources"], verdict["sources"]);
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

#[test]
fn permuted_weights_shuffle_each_float_tensor_and_touch_nothing_else() {
    let path = domsim::model::runtime::default_model_path();
    let bytes = std::fs::read(&path).unwrap();
    let spans = domsim::model::onnx::float_payloads(&bytes).unwrap();
    // the bundled EfficientNet-Lite0: 100 float initializers (convolution weights and biases), 4,631,000 values
    assert_eq!(spans.len(), 100);
    let (a, tensors, values) = domsim::model::onnx::permuted_weights(&bytes, 0).unwrap();
    assert_eq!((tensors, values), (100, 4_631_000));
    assert_eq!(a.len(), bytes.len());
    let (b, ..) = domsim::model::onnx::permuted_weights(&bytes, 0).unwrap();
    let (c, ..) = domsim::model::onnx::permuted_weights(&bytes, 1).unwrap();
    assert!(a == b, "seeded: the same bytes for the same seed");
    assert!(a != c, "another seed, another permutation");
    let mut inside = vec![false; bytes.len()];
    for s in &spans {
        let floats = |x: &[u8]| -> Vec<u32> {
            let mut v: Vec<u32> = x
                .chunks_exact(4)
                .map(|q| u32::from_le_bytes([q[0], q[1], q[2], q[3]]))
                .collect();
            v.sort_unstable();
            v
        };
        let (old, new) = (&bytes[s.bytes.clone()], &a[s.bytes.clone()]);
        assert_eq!(floats(old), floats(new), "{}: the same values", s.name);
        assert!(old != new, "{}: in another order", s.name);
        inside[s.bytes.clone()].iter_mut().for_each(|x| *x = true);
    }
    assert!(
        bytes
            .iter()
            .zip(&a)
            .zip(&inside)
            .all(|((x, y), &i)| i || x == y),
        "every byte outside the weights is unchanged"
    );
    // and it is still a model ONNX Runtime runs, with the same layers
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("permuted.onnx");
    std::fs::write(&p, &a).unwrap();
    assert_cmd::Command::cargo_bin("domsim")
        .unwrap()
        .args(["layers", "--model"])
        .arg(&p)
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "/_blocks.15/_project_conv/Conv_output_0",
        ));
    // not a protobuf message: None, never a panic
    assert!(domsim::model::onnx::permuted_weights(b"\xff\xff\xff", 0).is_none());
}

#[test]
fn a_permuted_network_is_brought_back_to_the_pretrained_activation_scale() {
    use domsim::model::{rescale, InputBatch, OnnxModel};
    let path = domsim::model::runtime::default_model_path();
    let bytes = std::fs::read(&path).unwrap();
    let (permuted, ..) = domsim::model::onnx::permuted_weights(&bytes, 0).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("permuted.onnx");
    std::fs::write(&p, &permuted).unwrap();
    let mut model = OnnxModel::load(&p, 1, None, None, None).unwrap();
    // eight chest X-rays, preprocessed as extract does
    let pre = domsim::preprocess::Preprocess::new(
        model.input.clone(),
        domsim::preprocess::Normalization::preset(domsim::preprocess::Preset::Pm1),
        512 << 20,
    );
    let dir = datasets().join("chest_xray").join("NORMAL");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut px = Vec::new();
    for f in files.iter().take(rescale::IMAGES) {
        match domsim::preprocess::load(f, &pre).unwrap().0 {
            domsim::preprocess::Pixels::F32(x) => px.extend(x),
            domsim::preprocess::Pixels::U8(_) => unreachable!("the bundled model takes float32"),
        }
    }
    let cal = rescale::Calibration::new(&model, &bytes, InputBatch::F32(px), 8, None).unwrap();
    let r = rescale::match_scale(&mut model, &cal, None).unwrap();
    // 49 convolutions and the classifier's Gemm; before, some layer is several times the pretrained
    // scale; after, every layer is within a factor of 2 of it
    assert_eq!(r.layers, 50);
    assert!(r.before.1 > 5.0, "{r:?}");
    assert!(r.after.0 > 0.5 && r.after.1 < 2.0, "{r:?}");
    assert!(r.describe().contains("LSUV-like"));
    // only the weight layers' values changed, each tensor by one positive factor
    let layers = domsim::model::onnx::weight_layers(&permuted).unwrap();
    let mut inside = vec![false; permuted.len()];
    let f32s = |x: &[u8]| -> Vec<f32> {
        x.chunks_exact(4)
            .map(|q| f32::from_le_bytes([q[0], q[1], q[2], q[3]]))
            .collect()
    };
    for l in &layers {
        for t in &l.tensors {
            inside[t.clone()].iter_mut().for_each(|x| *x = true);
            let (old, new) = (f32s(&permuted[t.clone()]), f32s(&model.bytes[t.clone()]));
            let k = old
                .iter()
                .zip(&new)
                .find(|(o, _)| o.abs() > 1e-3)
                .map(|(o, n)| n / o)
                .unwrap();
            assert!(k > 0.0);
            for (o, n) in old.iter().zip(&new) {
                assert!(
                    (n - k * o).abs() <= 1e-5 * (1.0 + n.abs()),
                    "{}: {o} → {n}, factor {k}",
                    l.output
                );
            }
        }
    }
    assert!(inside.iter().filter(|&&x| x).count() == 4 * 4_631_000);
    assert!(permuted
        .iter()
        .zip(&model.bytes)
        .zip(&inside)
        .all(|((x, y), &i)| i || x == y));
}

#[test]
fn pretraining_is_worth_most_at_the_deep_layers_of_a_task_imagenet_knows() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("cats_dogs");
    for c in ["cat", "dog"] {
        copy_subset(
            &datasets().join("cats_dogs").join(c),
            &target.join(c),
            0,
            3,
            40,
        );
    }
    let out = tmp.path().join("out");
    domsim()
        .args(["analyze", "--target"])
        .arg(&target)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let mut r = csv::Reader::from_path(out.join("metrics.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = r
        .records()
        .map(|x| x.unwrap())
        .filter(|x| &x[2] == "pretraining_gain")
        .collect();
    assert_eq!(rows.len(), 18);
    let deep = &rows[17];
    let (v, lo): (f64, f64) = (deep[3].parse().unwrap(), deep[4].parse().unwrap());
    assert!(
        v > 0.2 && lo > 0.0,
        "depth 17: pretrained − permuted {v} (low {lo})"
    );
    assert!(
        deep[11].contains("permuted within each tensor, 3 permutations (seeds 0–2 from --seed 0)"),
        "{}",
        &deep[11]
    );
    assert!(deep[11].contains("activation scale"), "{}", &deep[11]);
    assert!(
        deep[11].contains("50 weight layers rescaled"),
        "{}",
        &deep[11]
    );
    let verdict: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("verdict.json")).unwrap()).unwrap();
    assert!(
        verdict["sources"]
            .as_str()
            .unwrap()
            .contains("What the model's pretraining buys"),
        "{}",
        verdict["sources"]
    );
    // the temporary permuted model is gone; its embeddings are cached
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".domsim-permuted")));
    for r in 0..3 {
        assert!(out
            .join(format!(
                "embeddings/controls/permuted_weights_{r}/manifest.json"
            ))
            .is_file());
    }
}

#[test]
fn a_mistyped_folder_leaves_no_output_folder_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r");
    domsim()
        .args(["analyze", "--target"])
        .arg(tmp.path().join("chest_xrya"))
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--target"))
        .stderr(predicates::str::contains("does not exist"));
    assert!(!out.exists(), "the output folder is not made");
}
