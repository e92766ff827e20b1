//! The model zoo (`tests/fixtures/zoo`, made by `make_zoo.sh` with torch and torchvision): ViT, a tokens-first
//! transformer, ResNet from both torch exporters, ConvNeXt, Swin, DenseNet, MobileNetV3, RegNet, an NHWC model
//! wrapped in one module and a uint8 model, all with random weights. Through the binary, on real ONNX Runtime:
//! the default selection holds every block output (found by the exporter's own module records, not by domsim's
//! rule), one layer matches onnxruntime + numpy, `extract --all` and `analyze` (controls included) finish.

mod common;

use common::{domsim, fixture, manifest, npy};
use serde_json::Value;

fn zoo() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("zoo/expected.json")).unwrap()).unwrap()
}

fn model(name: &str) -> std::path::PathBuf {
    fixture(&format!("zoo/{name}/model.onnx"))
}

/// The normalisation option: none for a uint8 model (it takes raw pixels), 'unit' (pixels / 255) otherwise,
/// as the reference values were computed.
fn norm(spec: &Value) -> Vec<&'static str> {
    if spec["input"] == "nhwc_u8" {
        vec![]
    } else {
        vec!["--norm", "unit"]
    }
}

fn models(z: &Value) -> Vec<(String, Value)> {
    let m = z["models"].as_object().unwrap();
    assert_eq!(m.len(), 11, "the zoo holds 11 models");
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[test]
fn the_default_selection_holds_every_block_output_of_every_architecture() {
    for (name, spec) in models(&zoo()) {
        let out = domsim()
            .args(["layers", "--json", "--model"])
            .arg(model(&name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let layers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
        assert!(
            (4..=20).contains(&names.len()),
            "{name}: {} layers",
            names.len()
        );
        for (module, tensor) in spec["blocks"].as_object().unwrap() {
            assert!(
                names.contains(&tensor.as_str().unwrap()),
                "{name}: the output of module {module} ({tensor}) is not in the default selection {names:?}"
            );
        }
        for l in &layers {
            assert!(l.get("refused").is_none(), "{name}: {l}");
            let rank = l["shape"].as_array().unwrap().len();
            assert!(
                (2..=4).contains(&rank),
                "{name}: a rank-{rank} tensor selected: {l}"
            );
        }
    }
}

#[test]
fn one_layer_of_every_model_matches_onnxruntime_and_numpy() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, spec) in models(&zoo()) {
        let out = tmp.path().join(&name);
        let g = &spec["golden"];
        domsim()
            .args(["extract", "--layers", g["tensor"].as_str().unwrap()])
            .args(norm(&spec))
            .arg("--model")
            .arg(model(&name))
            .arg("--images")
            .arg(fixture("zoo/images"))
            .arg("--out")
            .arg(&out)
            .assert()
            .success();
        let m = manifest(&out);
        let got = npy(&out.join(m["layers"][0]["file"].as_str().unwrap()));
        let want = g["rows"].as_array().unwrap();
        assert_eq!(got.nrows(), want.len(), "{name}");
        let mut worst = 0f64;
        for (i, r) in want.iter().enumerate() {
            let r = r.as_array().unwrap();
            assert_eq!(got.ncols(), r.len(), "{name}");
            for (j, v) in r.iter().enumerate() {
                worst = worst.max((got[[i, j]] - v.as_f64().unwrap()).abs());
            }
        }
        assert!(worst < 1e-4, "{name}: max abs difference {worst}");
        // a transformer's tokens are pooled as its classifier reads them (the class token), and it is recorded
        if spec["tokens"] == "cls" {
            assert_eq!(m["tokens"], "cls", "{name}");
        }
    }
}

#[test]
fn every_per_image_tensor_extracts_and_the_rest_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["vit", "tokens_first", "swin"] {
        let spec = &zoo()["models"][name];
        domsim()
            .args(["extract", "--all"])
            .args(norm(spec))
            .arg("--model")
            .arg(model(name))
            .arg("--images")
            .arg(fixture("zoo/images"))
            .arg("--out")
            .arg(tmp.path().join(name))
            .assert()
            .success();
    }
    // Swin's window partitions and attention maps are listed with the reason they are never embedded
    let out = domsim()
        .args(["layers", "--all", "--model"])
        .arg(model("swin"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("never: axis 0 holds 4 rows per image"),
        "{text}"
    );
    assert!(text.contains("never: a rank-5 tensor"), "{text}");
    // asked for by name, such a tensor is refused with what to do
    let window = text
        .lines()
        .find(|l| l.contains("never: axis 0 holds"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    let out = domsim()
        .args(["extract", "--norm", "unit", "--layers", &window, "--model"])
        .arg(model("swin"))
        .arg("--images")
        .arg(fixture("zoo/images"))
        .arg("--out")
        .arg(tmp.path().join("window"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot be embedded") && err.contains("domsim layers"),
        "{err}"
    );
}

#[test]
fn analyze_finishes_on_every_architecture_with_its_controls() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, spec) in models(&zoo()) {
        let out = tmp.path().join(&name);
        let run = domsim()
            .args(["analyze", "--permutations", "99"])
            .args(norm(&spec))
            .arg("--model")
            .arg(model(&name))
            .arg("--source")
            .arg(fixture("zoo/images/a"))
            .arg("--target")
            .arg(fixture("zoo/images"))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let s: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        assert!(
            s.to_string().contains("pretraining_control"),
            "{name}: the pretraining control was not measured"
        );
    }
}
