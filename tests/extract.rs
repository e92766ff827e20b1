//! `domsim layers` and `domsim extract` end to end: the real ONNX Runtime on committed fixtures, the bundled
//! model on real images against Python onnxruntime, and bad input.

mod common;

use common::{copy_subset, datasets, domsim, fixture, huge_png, manifest, npy};
use predicates::prelude::*;
use serde_json::Value;

fn check_fixture(model: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emb");
    let exp: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{model}/expected.json"))).unwrap(),
    )
    .unwrap();
    // a uint8 model takes raw pixels: no normalisation option applies to it
    let norm: &[&str] = if exp["norm"] == "raw-uint8" {
        &[]
    } else {
        &["--norm", "unit"]
    };
    domsim()
        .args(["extract", "--all", "--batch", "4"])
        .args(norm)
        .arg("--model")
        .arg(fixture(&format!("{model}/model.onnx")))
        .arg("--images")
        .arg(fixture("images16"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let m = manifest(&out);
    let layers = m["layers"].as_array().unwrap();
    let want = exp["layers"].as_array().unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
    let want_names: Vec<&str> = want.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(
        names, want_names,
        "{model}: candidate layers in depth order"
    );
    assert_eq!(m["n_images"], 6);
    for (l, w) in layers.iter().zip(want) {
        let got = npy(&out.join(l["file"].as_str().unwrap()));
        let rows = w["rows"].as_array().unwrap();
        assert_eq!(got.nrows(), rows.len(), "{model}/{}", l["name"]);
        for (i, r) in rows.iter().enumerate() {
            let r = r.as_array().unwrap();
            assert_eq!(
                got.ncols(),
                r.len(),
                "{model}/{}: pooled dimension",
                l["name"]
            );
            for (j, v) in r.iter().enumerate() {
                let v = v.as_f64().unwrap();
                assert!(
                    (got[[i, j]] - v).abs() <= 1e-5 * (1.0 + v.abs()),
                    "{model}/{} row {i} col {j}: domsim {} vs onnxruntime {v}",
                    l["name"],
                    got[[i, j]]
                );
            }
        }
    }
    let index = std::fs::read_to_string(out.join("index.csv")).unwrap();
    assert_eq!(
        index,
        "row,path,label\n0,a/img0.png,a\n1,a/img1.png,a\n2,a/img2.png,a\n3,b/img0.png,b\n4,b/img1.png,b\n5,b/img2.png,b\n"
    );
}

#[test]
fn nchw_float_dynamic_batch_matches_python_onnxruntime() {
    check_fixture("nchw_dyn");
}

#[test]
fn opset_11_model_matches_python_onnxruntime() {
    // an older opset: domsim's in-graph pooling nodes (AveragePool, GlobalMaxPool) must run there too
    check_fixture("opset11");
}

#[test]
fn nhwc_uint8_fixed_batch_one_matches_python_onnxruntime() {
    check_fixture("nhwc_u8_b1");
}

#[test]
fn token_model_matches_python_onnxruntime() {
    check_fixture("tokens");
}

#[test]
fn nhwc_intermediate_is_pooled_over_its_own_spatial_axes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emb");
    domsim()
        .args(["extract", "--layers", "nhwc_scaled", "--model"])
        .arg(fixture("nhwc_u8_b1/model.onnx"))
        .arg("--images")
        .arg(fixture("images16"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let m = manifest(&out);
    assert_eq!(m["input"]["layout"], "NHWC");
    assert_eq!(m["input"]["elem"], "u8");
    assert_eq!(m["input"]["fixed_batch"], 1);
    assert_eq!(m["layers"][0]["layout"], "channels_last");
    assert_eq!(m["layers"][0]["dim"], 4);
}

#[test]
fn default_model_matches_python_onnxruntime() {
    let exp: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("default_model/expected.json")).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    for f in exp["files"].as_array().unwrap() {
        let src = datasets().join(f["source"].as_str().unwrap());
        let dir = images.join(f["label"].as_str().unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&src, dir.join(src.file_name().unwrap())).unwrap();
    }
    let out = tmp.path().join("emb");
    domsim()
        .args(["extract", "--images"])
        .arg(&images)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let m = manifest(&out);
    assert_eq!(m["model"]["bundled_default"], true);
    assert_eq!(m["preprocessing"]["normalization"]["preset"], "pm1");
    assert_eq!(m["n_images"], 6);
    assert_eq!(m["labels"], serde_json::json!(["animals", "xray"]));
    // the Airedale JPEG (grey mode) and three X-rays (grey stored as RGB) are grey; the 75x56 tusker is upscaled
    assert_eq!(m["preprocessing"]["n_grey"], 4);
    assert_eq!(m["preprocessing"]["n_upscaled"], 1);
    let layers = m["layers"].as_array().unwrap();
    let want = exp["layers"].as_array().unwrap();
    assert_eq!(layers.len(), want.len());
    assert!((12..=20).contains(&layers.len()));
    for (l, w) in layers.iter().zip(want) {
        assert_eq!(l["name"], w["name"]);
        let got = npy(&out.join(l["file"].as_str().unwrap()));
        let gold = npy(&fixture(&format!(
            "default_model/{}",
            w["file"].as_str().unwrap()
        )));
        assert_eq!(got.dim(), gold.dim(), "{}", l["name"]);
        let worst = got
            .iter()
            .zip(gold.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= 1e-4,
            "layer {}: max |domsim - onnxruntime| = {worst}",
            l["name"]
        );
    }
}

#[test]
fn real_subsets_give_consistent_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("mixed");
    copy_subset(
        &datasets().join("animals"),
        &images.join("animals"),
        0,
        40,
        10,
    );
    copy_subset(
        &datasets().join("chest_xray/NORMAL"),
        &images.join("normal"),
        0,
        100,
        5,
    );
    let out = tmp.path().join("emb");
    domsim()
        .args(["extract", "--pool", "avgmax", "--batch", "3", "--images"])
        .arg(&images)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let m = manifest(&out);
    assert_eq!(m["n_images"], 15);
    for l in m["layers"].as_array().unwrap() {
        let a = npy(&out.join(l["file"].as_str().unwrap()));
        let c = l["run_shape"][1].as_u64().unwrap() as usize;
        assert_eq!(a.dim(), (15, 2 * c), "{}", l["name"]);
        assert!(a.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn bad_files_are_skipped_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("bad");
    std::fs::create_dir_all(&d).unwrap();
    let jpeg = std::fs::read(datasets().join("animals/n01440764_tench.JPEG")).unwrap();
    std::fs::write(d.join("good.jpg"), &jpeg).unwrap();
    std::fs::write(d.join("corrupt.jpg"), &jpeg[..200]).unwrap();
    std::fs::write(d.join("empty.png"), b"").unwrap();
    std::fs::write(d.join("notes.txt"), b"not an image at all").unwrap();
    std::fs::write(d.join("huge.png"), huge_png(20_000, 20_000)).unwrap();
    std::fs::write(d.join("absurd.png"), huge_png(1_000_000, 1_000_000)).unwrap();
    image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(40, 30, |x, y| {
        image::Rgb([x as u16 * 1000, y as u16 * 2000, 30000])
    })
    .save(d.join("sixteen_bit.png"))
    .unwrap();
    image::GrayImage::from_fn(50, 60, |x, _| image::Luma([x as u8 * 4]))
        .save(d.join("grey.png"))
        .unwrap();
    image::GrayAlphaImage::from_fn(50, 60, |x, _| image::LumaA([x as u8, 128]))
        .save(d.join("grey_alpha.png"))
        .unwrap();
    image::RgbaImage::from_fn(64, 64, |x, y| image::Rgba([x as u8, y as u8, 9, 100]))
        .save(d.join("rgba.png"))
        .unwrap();
    image::RgbImage::from_fn(10, 10, |x, y| image::Rgb([x as u8 * 20, y as u8 * 20, 0]))
        .save(d.join("tiny.bmp"))
        .unwrap();
    image::RgbImage::from_fn(32, 32, |x, _| image::Rgb([x as u8 * 8, 0, 0]))
        .save(d.join("small.tiff"))
        .unwrap();
    let out = tmp.path().join("emb");
    domsim()
        .args(["extract", "--images"])
        .arg(&d)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let m = manifest(&out);
    assert_eq!(m["n_images"], 7);
    assert_eq!(m["n_skipped"], 5);
    assert_eq!(m["preprocessing"]["n_grey"], 2);
    assert_eq!(m["preprocessing"]["n_alpha"], 2);
    let index = std::fs::read_to_string(out.join("index.csv")).unwrap();
    for f in [
        "good.jpg",
        "sixteen_bit.png",
        "grey.png",
        "grey_alpha.png",
        "rgba.png",
        "tiny.bmp",
        "small.tiff",
    ] {
        assert!(index.contains(f), "{f} embedded");
    }
    let mut r = csv::Reader::from_path(out.join("skipped.csv")).unwrap();
    let skipped: Vec<(String, String)> = r
        .records()
        .map(|x| {
            let x = x.unwrap();
            (x[0].to_string(), x[1].to_string())
        })
        .collect();
    let names: Vec<&str> = skipped.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "absurd.png",
            "corrupt.jpg",
            "empty.png",
            "huge.png",
            "notes.txt"
        ]
    );
    assert!(skipped.iter().all(|(_, why)| !why.is_empty()));
    assert!(skipped[2].1.contains("empty"));
    assert!(skipped[4].1.contains("not an image"));
}

#[test]
fn usage_and_input_errors_exit_2_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let imgs = fixture("images16");
    let out = tmp.path().join("o");
    domsim()
        .args(["extract", "--images"])
        .arg(&empty)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("holds no files"));
    domsim()
        .args(["extract", "--model", "/nonexistent/model.onnx", "--images"])
        .arg(&imgs)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does not exist"));
    let txt = tmp.path().join("model.onnx");
    std::fs::write(&txt, "this is not a protobuf").unwrap();
    domsim()
        .args(["layers", "--model"])
        .arg(&txt)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not an ONNX model"));
    domsim()
        .args(["layers", "--model"])
        .arg(fixture("not_image/model.onnx"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does not take an image tensor"));
    domsim()
        .args(["layers", "--layers", "/_blocks.4/Add_outptu_0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("'/_blocks.4/Add_output_0'"));
    domsim()
        .args(["layers", "--ort-lib", "/nonexistent/libonnxruntime.so"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("install-ort.sh"));
    let users = tmp.path().join("users_folder");
    std::fs::create_dir_all(&users).unwrap();
    std::fs::write(users.join("thesis.tex"), "precious").unwrap();
    domsim()
        .args(["extract", "--images"])
        .arg(&imgs)
        .arg("--out")
        .arg(&users)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read_to_string(users.join("thesis.tex")).unwrap(),
        "precious"
    );
}

#[test]
fn default_selection_spans_stem_to_final_features() {
    let out = domsim().args(["layers", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"/_swish/Clip_output_0"));
    assert_eq!(
        names.last(),
        Some(&"/_avg_pooling/GlobalAveragePool_output_0")
    );
    assert!((8..=20).contains(&names.len()), "{} layers", names.len());
    let all = domsim()
        .args(["layers", "--all", "--json"])
        .output()
        .unwrap();
    let all: Value = serde_json::from_slice(&all.stdout).unwrap();
    assert!(all.as_array().unwrap().len() > 80);
    let pat = domsim()
        .args(["layers", "--json", "--layers", "/_blocks.1?/Add_output_0"])
        .output()
        .unwrap();
    let pat: Value = serde_json::from_slice(&pat.stdout).unwrap();
    // blocks 10, 12, 13 and 14 end in a residual Add; 11 and 15 do not
    assert_eq!(pat.as_array().unwrap().len(), 4);
    // the short name the tables print selects the layer too
    let short = domsim()
        .args(["layers", "--json", "--layers", "_blocks.4/Add"])
        .output()
        .unwrap();
    let short: Value = serde_json::from_slice(&short.stdout).unwrap();
    assert_eq!(short[0]["name"], "/_blocks.4/Add_output_0");
    // the table is the command's result: printed under --quiet (domsim() passes it); with --all, the
    // depths are those `--all` gives everywhere (layout-op outputs, not selectable by --all, get `-`), and
    // each default layer says its depth in the default selection
    let table = domsim().args(["layers", "--all"]).output().unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), all.as_array().unwrap().len(), "{table}");
    let numbered: Vec<usize> = rows
        .iter()
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(numbered, (0..numbered.len()).collect::<Vec<_>>());
    let last = rows
        .iter()
        .find(|r| r.contains("/_avg_pooling/GlobalAveragePool_output_0"))
        .unwrap();
    assert!(
        last.contains(&format!("default selection, depth {}", names.len() - 1)),
        "{last}"
    );
    if numbered.len() < rows.len() {
        assert!(rows.iter().any(|r| r.trim_start().starts_with("- ")));
    }
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    // `domsim layers --json | head -c 0`: the reader is gone before domsim writes (it loads the model
    // first), so every write meets a closed pipe
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("domsim"))
        .args(["layers", "--all", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let res = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "exit {:?}: {err}", res.status);
    assert!(!err.contains("error"), "{err}");
}

/// A backend that fails on its `fail_at`-th batch (beside the real one, never instead of it).
struct FailingEmbedder {
    contract: domsim::model::InputContract,
    layers: Vec<domsim::model::Layer>,
    calls: usize,
    fail_at: usize,
}

impl domsim::model::Embedder for FailingEmbedder {
    fn contract(&self) -> &domsim::model::InputContract {
        &self.contract
    }
    fn layers(&self) -> &[domsim::model::Layer] {
        &self.layers
    }
    fn run(
        &mut self,
        _batch: domsim::model::InputBatch,
        n: usize,
    ) -> domsim::Result<Vec<domsim::model::RawOutput>> {
        self.calls += 1;
        if self.calls == self.fail_at {
            return Err(domsim::Error::Analysis(
                "fake backend: inference failed".into(),
            ));
        }
        Ok(vec![domsim::model::RawOutput {
            shape: vec![n, 4],
            data: vec![0.5; n * 4],
            pooled: false,
        }])
    }
}

#[test]
fn extract_fails_cleanly_when_inference_fails_part_way() {
    use domsim::model::{ElemType, InputContract, Layout};
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    // 120 images: many chunks still to decode when the second batch fails
    copy_subset(&datasets().join("animals"), &imgs, 0, 3, 120);
    let out = tmp.path().join("emb");
    std::fs::create_dir_all(&out).unwrap();
    let set = domsim::dataset::ImageSet::scan(&imgs).unwrap();
    let mut emb = FailingEmbedder {
        contract: InputContract {
            name: "input".into(),
            layout: Layout::Nchw,
            elem: ElemType::F32,
            channels: 3,
            height: 32,
            width: 32,
            fixed_batch: None,
            dynamic_size: false,
        },
        layers: vec![domsim::model::Layer {
            name: "fake".into(),
            op_type: "Fake".into(),
            shape: vec![-1, 4],
            node_index: 0,
            graph_output: false,
            by_name_only: false,
            refused: None,
            batch_axis: 0,
        }],
        calls: 0,
        fail_at: 2,
    };
    let options = domsim::extract::ExtractOptions {
        batch_size: 4,
        threads: 2,
        ..domsim::extract::ExtractOptions::new("fake.onnx".into())
    };
    let cfg = domsim::extract::ExtractConfig::new(options, imgs.clone(), out.clone());
    let model = domsim::embeddings::ModelInfo {
        file: "fake.onnx".into(),
        sha256: "0".repeat(64),
        bundled_default: false,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let norm = domsim::preprocess::Normalization::preset(domsim::preprocess::Preset::Pm1);
        let r = domsim::extract::run(&mut emb, &set, norm, model, &cfg);
        tx.send(r.err().map(|e| e.to_string())).unwrap();
    });
    let err = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("extract hung after an inference error")
        .expect("extract must fail");
    assert!(err.contains("inference failed"), "{err}");
    assert!(
        !out.join("manifest.json").exists(),
        "a failed run must not look complete"
    );
}

#[test]
fn normalisation_parameters_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    copy_subset(&datasets().join("animals"), &imgs, 0, 50, 3);
    for (args, says) in [
        (
            &["--mean", "0.5,0.5,0.5", "--std", "nan,1,1"][..],
            "--std values must be finite",
        ),
        (
            &["--mean", "0.5,0.5,0.5", "--std", "1e-45,1,1"][..],
            "at least 1e-6",
        ),
        (
            &["--mean", "inf,0,0", "--std", "1,1,1"][..],
            "--mean values must be finite",
        ),
        (
            &["--mean", "0.5,0.5", "--std", "1,1,1"][..],
            "3 values each",
        ),
    ] {
        domsim()
            .args(["extract", "--images"])
            .arg(&imgs)
            .arg("--out")
            .arg(tmp.path().join("e"))
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(says));
    }
    // the documented comma form works
    domsim()
        .args(["extract", "--images"])
        .arg(&imgs)
        .arg("--out")
        .arg(tmp.path().join("ok"))
        .args(["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"])
        .assert()
        .success();
}

/// Pooling inside the graph (the default) against pooling the raw maps in domsim, on the bundled model and
/// real photos, for every pooling mode: the averages agree within 1e-5 (float32 row sums in ONNX Runtime,
/// float64 for the rest), the maxima exactly, and the manifests record the same layer shapes.
#[test]
fn pooling_inside_the_graph_matches_pooling_the_raw_maps() {
    use domsim::model::pool::Pool;
    use domsim::model::{OnnxModel, Selection};
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    copy_subset(&datasets().join("animals"), &imgs, 0, 40, 6);
    let set = domsim::dataset::ImageSet::scan(&imgs).unwrap();
    let model = OnnxModel::load(
        &domsim::model::runtime::default_model_path(),
        2,
        None,
        None,
        None,
    )
    .unwrap();
    let layers = model.select(&Selection::Default).unwrap();
    let in_graph = layers
        .iter()
        .filter(|l| domsim::model::pool::in_graph_shape(l, &model.input).is_some())
        .count();
    assert_eq!(
        in_graph,
        layers.len(),
        "every default layer is a static map, pooled in the graph"
    );
    for mode in [Pool::Avg, Pool::Max, Pool::AvgMax] {
        let mut results = Vec::new();
        for in_graph in [true, false] {
            let out = tmp.path().join(format!("{mode:?}-{in_graph}"));
            std::fs::create_dir_all(&out).unwrap();
            let options = domsim::extract::ExtractOptions {
                pool: mode,
                batch_size: 4,
                ..domsim::extract::ExtractOptions::new(model.path.clone())
            };
            let cfg = domsim::extract::ExtractConfig::new(options, imgs.clone(), out.clone());
            let mut emb = model
                .embedder(layers.clone(), in_graph.then_some(mode), None)
                .unwrap();
            let norm = domsim::extract::resolve_norm(None, &model);
            let info = domsim::embeddings::ModelInfo {
                file: "efficientnet_lite0.onnx".into(),
                sha256: model.sha256.clone(),
                bundled_default: true,
            };
            let s = domsim::extract::run(&mut emb, &set, norm, info, &cfg).unwrap();
            results.push((out, s.manifest));
        }
        let ((a, ma), (b, mb)) = (&results[0], &results[1]);
        assert_eq!(ma.n_images, 6);
        for (la, lb) in ma.layers.iter().zip(&mb.layers) {
            assert_eq!(
                (&la.run_shape, la.layout, la.dim),
                (&lb.run_shape, lb.layout, lb.dim),
                "{mode:?} {}",
                la.name
            );
            let (x, y) = (npy(&a.join(&la.file)), npy(&b.join(&lb.file)));
            assert_eq!(x.dim(), y.dim());
            let c = la.dim / if mode == Pool::AvgMax { 2 } else { 1 };
            for ((i, j), v) in x.indexed_iter() {
                let w = y[[i, j]];
                let is_max = mode == Pool::Max || (mode == Pool::AvgMax && j >= c);
                if is_max {
                    assert_eq!(*v, w, "{mode:?} {} [{i},{j}]: maxima are exact", la.name);
                } else {
                    assert!(
                        (v - w).abs() <= 1e-5,
                        "{mode:?} {} [{i},{j}]: in graph {v} vs raw {w}",
                        la.name
                    );
                }
            }
        }
    }
}
