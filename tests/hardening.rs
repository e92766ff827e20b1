//! Hostile and careless inputs, met the way a user meets them (through the binary): what an image folder may
//! hold, numeric options out of range, hand-edited manifests, models with external weights, truncated and
//! oversized images.

mod common;

use std::path::Path;

use common::{datasets, domsim, fixture, manifest, npy, png_header};
use predicates::prelude::*;

fn skipped(out: &Path) -> Vec<(String, String)> {
    let mut r = csv::Reader::from_path(out.join("skipped.csv")).unwrap();
    r.records()
        .map(|x| {
            let x = x.unwrap();
            (x[0].to_string(), x[1].to_string())
        })
        .collect()
}

fn index_paths(out: &Path) -> Vec<String> {
    let mut r = csv::Reader::from_path(out.join("index.csv")).unwrap();
    r.records().map(|x| x.unwrap()[1].to_string()).collect()
}

fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn what_a_folder_holds_is_either_embedded_or_listed_in_skipped_csv() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    copy_dir(&fixture("images16"), &imgs);
    // a loose file beside the class folders, a class folder that is a link, a broken link, a FIFO, a
    // non-UTF-8 name
    std::fs::copy(imgs.join("a/img0.png"), imgs.join("loose.png")).unwrap();
    let elsewhere = tmp.path().join("elsewhere_c");
    copy_dir(&fixture("images16/b"), &elsewhere);
    std::os::unix::fs::symlink(&elsewhere, imgs.join("c")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("missing.png"), imgs.join("a/broken.png")).unwrap();
    let fifo = imgs.join("b/pipe.png");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let bad_name = std::ffi::OsStr::from_bytes(b"b\xffd.png");
    std::fs::copy(imgs.join("a/img0.png"), imgs.join("a").join(bad_name)).unwrap();
    // a link loop must not hang the scan
    std::os::unix::fs::symlink(&imgs, imgs.join("b/loop")).unwrap();

    let out = imgs.join("emb"); // inside the image folder: allowed, and never scanned
    for run in 0..2 {
        domsim()
            .args(["extract", "--images"])
            .arg(&imgs)
            .arg("--out")
            .arg(&out)
            .assert()
            .success();
        let paths = index_paths(&out);
        let classes: std::collections::BTreeSet<&str> =
            paths.iter().map(|p| p.split('/').next().unwrap()).collect();
        assert_eq!(
            classes.into_iter().collect::<Vec<_>>(),
            ["a", "b", "c"],
            "run {run}: {paths:?}"
        );
        let n_linked = std::fs::read_dir(&elsewhere).unwrap().count();
        assert_eq!(
            paths.iter().filter(|p| p.starts_with("c/")).count(),
            n_linked
        );
        let sk = skipped(&out);
        let why = |name: &str| -> String {
            sk.iter()
                .find(|(p, _)| p.contains(name))
                .unwrap_or_else(|| panic!("run {run}: {name} not in skipped.csv: {sk:?}"))
                .1
                .clone()
        };
        assert!(why("loose.png").contains("beside class sub-folders"));
        assert!(why("broken.png").contains("symbolic link"));
        assert!(why("pipe.png").contains("not a regular file"));
        assert!(why("b\u{fffd}d.png").contains("not valid UTF-8"));
        if run == 1 {
            assert!(why("emb/").contains("written by domsim"));
        }
        assert_eq!(manifest(&out)["n_skipped"], sk.len());
    }
}

#[test]
fn out_equal_to_an_input_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    copy_dir(&fixture("images16"), &imgs);
    for args in [
        vec!["extract", "--images", "IMGS", "--out", "IMGS", "--force"],
        vec!["analyze", "--target", "IMGS", "--out", "IMGS", "--force"],
    ] {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| {
                if a == "IMGS" {
                    imgs.display().to_string()
                } else {
                    a.into()
                }
            })
            .collect();
        domsim()
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("never writes among your images"));
    }
    assert!(!imgs.join("manifest.json").exists() && !imgs.join(".domsim").exists());
}

#[test]
fn numeric_options_have_ranges() {
    for (args, says) in [
        (vec!["--threads", "100000", "layers"], "1..=256"),
        (vec!["--threads", "0", "layers"], "1..=256"),
        (vec!["layers", "--size", "0"], "16..=2048"),
        (vec!["layers", "--size", "100000"], "16..=2048"),
        (
            vec![
                "extract", "--images", "x", "--out", "y", "--batch", "100000",
            ],
            "1..=256",
        ),
        (
            vec![
                "extract", "--images", "x", "--out", "y", "--batch", "256", "--size", "2048",
            ],
            "GiB of input per inference call",
        ),
        (
            vec![
                "compare",
                "--source",
                "a",
                "--target",
                "b",
                "--out",
                "c",
                "--mmd-max-n",
                "100000000",
            ],
            "4..=50000",
        ),
        (
            vec![
                "compare", "--source", "a", "--target", "b", "--out", "c", "--folds", "1",
            ],
            "2..=20",
        ),
        (
            vec![
                "compare", "--source", "a", "--target", "b", "--out", "c", "--C", "inf",
            ],
            "--C must be between",
        ),
        (
            vec![
                "compare",
                "--source",
                "a",
                "--target",
                "b",
                "--out",
                "c",
                "--permutations",
                "50",
            ],
            "fewer cannot reach the 0.01 level",
        ),
    ] {
        // (not the `domsim()` helper: it sets --threads itself)
        assert_cmd::Command::cargo_bin("domsim")
            .unwrap()
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(says));
    }
}

#[test]
fn a_hand_edited_manifest_with_a_short_sha_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        domsim()
            .args(["extract", "--model"])
            .arg(fixture("nchw_dyn/model.onnx"))
            .arg("--images")
            .arg(fixture("images16"))
            .arg("--out")
            .arg(d)
            .assert()
            .success();
    }
    let mut m = manifest(&b);
    m["model"]["sha256"] = "abc".into();
    std::fs::write(b.join("manifest.json"), m.to_string()).unwrap();
    domsim()
        .args(["compare", "--source"])
        .arg(&a)
        .arg("--target")
        .arg(&b)
        .arg("--out")
        .arg(tmp.path().join("r"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("(abc)"));
}

#[test]
fn external_weights_are_read_beside_the_model_and_are_part_of_its_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, ext) = (tmp.path().join("plain"), tmp.path().join("ext"));
    domsim()
        .args(["extract", "--model"])
        .arg(fixture("nchw_dyn/model.onnx"))
        .arg("--images")
        .arg(fixture("images16"))
        .arg("--out")
        .arg(&plain)
        .assert()
        .success();
    // run from another directory: the weights must be found beside the model, not in the current directory
    domsim()
        .current_dir(tmp.path())
        .args(["extract", "--model"])
        .arg(fixture("external/model.onnx"))
        .arg("--images")
        .arg(fixture("images16"))
        .arg("--out")
        .arg(&ext)
        .assert()
        .success();
    let files = |d: &Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(d.join("layers"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let (fp, fe) = (files(&plain), files(&ext));
    assert_eq!(fp.len(), fe.len());
    for (x, y) in fp.iter().zip(&fe) {
        assert_eq!(npy(x), npy(y), "{}", x.display());
    }
    // other weights under the same model file: another identity
    let moved = tmp.path().join("moved");
    copy_dir(&fixture("external"), &moved);
    let mut w = std::fs::read(moved.join("weights.bin")).unwrap();
    w[0] ^= 0x40;
    std::fs::write(moved.join("weights.bin"), w).unwrap();
    let other = tmp.path().join("other");
    domsim()
        .args(["extract", "--model"])
        .arg(moved.join("model.onnx"))
        .arg("--images")
        .arg(fixture("images16"))
        .arg("--out")
        .arg(&other)
        .assert()
        .success();
    let sha = |d: &Path| manifest(d)["model"]["sha256"].as_str().unwrap().to_string();
    assert_ne!(sha(&ext), sha(&other));
    assert_ne!(
        sha(&ext),
        domsim::model::runtime::sha256_file(&fixture("external/model.onnx")).unwrap()
    );
    // a missing weight file is named
    std::fs::remove_file(moved.join("weights.bin")).unwrap();
    domsim()
        .args(["layers", "--model"])
        .arg(moved.join("model.onnx"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("external file 'weights.bin'"));
}

#[test]
fn truncated_jpegs_and_oversized_images_are_skipped_complete_ones_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("imgs");
    std::fs::create_dir_all(&d).unwrap();
    let jpeg = std::fs::read(datasets().join("animals/n01440764_tench.JPEG")).unwrap();
    let n = jpeg.len();
    for (i, cut) in [n / 10, n / 3, n / 2, 9 * n / 10, n - 2]
        .into_iter()
        .enumerate()
    {
        std::fs::write(d.join(format!("cut{i}.jpg")), &jpeg[..cut]).unwrap();
    }
    std::fs::write(d.join("whole.jpg"), &jpeg).unwrap();
    let mut trailing = jpeg.clone();
    trailing.extend_from_slice(b"appended bytes after the end-of-image marker");
    std::fs::write(d.join("whole_trailing.jpg"), &trailing).unwrap();
    std::fs::write(d.join("rgba16.png"), png_header(20_000, 20_000, 16, 6)).unwrap();
    let out = tmp.path().join("emb");
    domsim()
        .args(["extract", "--images"])
        .arg(&d)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(index_paths(&out), ["whole.jpg", "whole_trailing.jpg"]);
    let sk = skipped(&out);
    assert_eq!(sk.len(), 6, "{sk:?}");
    for (p, why) in &sk {
        if p.starts_with("cut") {
            assert!(why.contains("truncated JPEG"), "{p}: {why}");
        } else {
            assert!(why.contains("MiB to decode"), "{p}: {why}");
        }
    }
}

#[test]
fn force_removes_only_what_domsims_manifest_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mine");
    std::fs::create_dir_all(out.join("layers")).unwrap();
    std::fs::write(out.join("layers/my_features.npy"), b"precious").unwrap();
    std::fs::write(out.join("notes.txt"), b"precious too").unwrap();
    let run = || {
        domsim()
            .args(["extract", "--model"])
            .arg(fixture("nchw_dyn/model.onnx"))
            .arg("--images")
            .arg(fixture("images16"))
            .arg("--out")
            .arg(&out)
            .arg("--force")
            .assert()
    };
    run().success();
    run().success(); // the rerun removes and rewrites its own files only
    assert_eq!(
        std::fs::read(out.join("layers/my_features.npy")).unwrap(),
        b"precious"
    );
    assert_eq!(
        std::fs::read(out.join("notes.txt")).unwrap(),
        b"precious too"
    );
    // a user's file where a layer file would go is refused, not overwritten
    let m = manifest(&out);
    let first = m["layers"][0]["file"].as_str().unwrap().to_string();
    let mut edited = m.clone();
    edited["layers"][0]["file"] = "layers/elsewhere.npy".into();
    std::fs::write(out.join("manifest.json"), edited.to_string()).unwrap();
    std::fs::write(out.join(&first), b"now the user's").unwrap();
    run()
        .code(2)
        .stderr(predicate::str::contains("not listed in a domsim manifest"));
    assert_eq!(std::fs::read(out.join(&first)).unwrap(), b"now the user's");
}

#[test]
fn report_rewrites_only_folders_domsim_made() {
    let tmp = tempfile::tempdir().unwrap();
    let emb = tmp.path().join("emb");
    domsim()
        .args(["extract", "--model"])
        .arg(fixture("nchw_dyn/model.onnx"))
        .arg("--images")
        .arg(fixture("images16"))
        .arg("--out")
        .arg(&emb)
        .assert()
        .success();
    let d = tmp.path().join("users");
    domsim()
        .args(["compare", "--permutations", "99", "--source"])
        .arg(&emb)
        .arg("--target")
        .arg(&emb)
        .arg("--out")
        .arg(&d)
        .assert()
        .success();
    // the same files, but in a folder domsim did not make (no marker), with the user's own page
    std::fs::remove_file(d.join(".domsim")).unwrap();
    std::fs::write(d.join("report.html"), "the user's page").unwrap();
    domsim()
        .arg("report")
        .arg(&d)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("was not written by domsim"));
    assert_eq!(
        std::fs::read_to_string(d.join("report.html")).unwrap(),
        "the user's page"
    );
}

#[test]
fn a_second_writer_is_refused_and_killed_runs_leave_no_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emb");
    let run = || {
        domsim()
            .args(["extract", "--model"])
            .arg(fixture("nchw_dyn/model.onnx"))
            .arg("--images")
            .arg(fixture("images16"))
            .arg("--out")
            .arg(&out)
            .assert()
    };
    run().success();
    // what a killed run leaves behind
    std::fs::write(out.join(".domsim-tmp-abc123"), b"partial").unwrap();
    std::fs::write(out.join("layers/.domsim-tmp-def456"), b"partial").unwrap();
    {
        let f = std::fs::File::open(out.join(".domsim.lock")).unwrap();
        f.lock().unwrap(); // another run holds the folder
        run()
            .code(2)
            .stderr(predicate::str::contains("another domsim run is writing to"));
    }
    run().success();
    let leftovers: Vec<_> = [out.clone(), out.join("layers")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn reshaped_tensors_are_selectable_and_the_default_keeps_the_pooled_features_never_the_softmax() {
    let model = fixture("deep_classifier/model.onnx");
    let names = |args: &[&str]| -> Vec<String> {
        let out = domsim()
            .args(["layers", "--json", "--model"])
            .arg(&model)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        v.iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
    };
    let default = names(&[]);
    assert!(default.contains(&"pooled".to_string()), "{default:?}");
    assert!(!default.iter().any(|n| n == "soft" || n == "probs"));
    assert!(default.len() <= 20);
    // every float tensor is listed by --all, the reshaped ones marked as selectable by name
    let all = names(&["--all"]);
    for n in ["flat", "soft", "probs", "pooled"] {
        assert!(all.contains(&n.to_string()), "{n} in --all");
    }
    // (not the domsim() helper: --quiet prints no table)
    let table = assert_cmd::Command::cargo_bin("domsim")
        .unwrap()
        .args(["layers", "--all", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let line = |n: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(n))
            .unwrap_or_else(|| panic!("{n} not listed:\n{table}"))
            .to_string()
    };
    assert!(line("flat").contains("by name only"));
    assert!(line("pooled").contains("default"));
    // a Reshape output is extracted by name, and holds the pooled features
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emb");
    domsim()
        .args([
            "extract", "--layers", "flat", "--layers", "pooled", "--model",
        ])
        .arg(&model)
        .arg("--images")
        .arg(fixture("images16"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let m = manifest(&out);
    let file = |i: usize| out.join(m["layers"][i]["file"].as_str().unwrap());
    assert_eq!(m["layers"][1]["name"], "flat");
    assert_eq!(npy(&file(0)), npy(&file(1)));
}

/// Writes an f32 matrix as NPY.
fn write_npy(path: &Path, a: &ndarray::Array2<f32>) {
    std::fs::write(path, domsim::npy::to_bytes(a)).unwrap();
}

#[test]
fn report_reads_back_undefined_similarities_and_small_sets_are_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, t) = (tmp.path().join("s"), tmp.path().join("t"));
    for (k, d) in [&s, &t].into_iter().enumerate() {
        std::fs::create_dir_all(d).unwrap();
        let a = ndarray::Array2::from_shape_fn((12, 6), |(i, j)| {
            ((i * 7 + j * 3 + k) % 11) as f32 - 5.0 + k as f32
        });
        write_npy(&d.join("0_a.npy"), &a);
        // a constant layer: CKA with it is undefined (NaN, written as null)
        write_npy(&d.join("1_const.npy"), &ndarray::Array2::ones((12, 4)));
    }
    let out = tmp.path().join("r");
    domsim()
        .args(["compare", "--permutations", "199", "--source"])
        .arg(&s)
        .arg("--target")
        .arg(&t)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    assert!(std::fs::read_to_string(out.join("compare.json"))
        .unwrap()
        .contains("null"));
    let rep = assert_cmd::Command::cargo_bin("domsim")
        .unwrap()
        .arg("report")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        rep.status.success(),
        "{}",
        String::from_utf8_lossy(&rep.stderr)
    );
    let text = String::from_utf8_lossy(&rep.stdout);
    assert!(
        text.contains("only 12 source and 12 target images"),
        "{text}"
    );
}

#[test]
fn messages_say_what_happened_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    // an ambiguous N x 3 x 3 x 3 input needs --layout
    domsim()
        .args(["layers", "--model"])
        .arg(fixture("ambiguous/model.onnx"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "pass --layout nchw or --layout nhwc",
        ));
    domsim()
        .args(["layers", "--layout", "nchw", "--model"])
        .arg(fixture("ambiguous/model.onnx"))
        .assert()
        .success();
    // one image per side: said up front, not as a probe's internal complaint
    let (s, t) = (tmp.path().join("s"), tmp.path().join("t"));
    for d in [&s, &t] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::copy(fixture("images16/a/img0.png"), d.join("only.png")).unwrap();
    }
    domsim()
        .args(["analyze", "--source"])
        .arg(&s)
        .arg("--target")
        .arg(&t)
        .arg("--out")
        .arg(tmp.path().join("r"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "holds 1 image(s); comparing needs at least 5 per set",
        ));
    // choosing only the domain probe says nothing about the target's labels
    let emb = tmp.path().join("emb");
    domsim()
        .args(["extract", "--model"])
        .arg(fixture("nchw_dyn/model.onnx"))
        .arg("--images")
        .arg(fixture("images16"))
        .arg("--out")
        .arg(&emb)
        .assert()
        .success();
    let r = tmp.path().join("dp");
    domsim()
        .args([
            "compare",
            "--metrics",
            "domain_probe",
            "--permutations",
            "199",
            "--source",
        ])
        .arg(&emb)
        .arg("--target")
        .arg(&emb)
        .arg("--out")
        .arg(&r)
        .assert()
        .success();
    let notes = std::fs::read_to_string(r.join("compare.json")).unwrap();
    assert!(!notes.contains("no labels"), "{notes}");
    // an OS error is printed once
    let out = domsim()
        .args(["extract", "--images"])
        .arg(fixture("images16"))
        .arg("--out")
        .arg("/proc/domsim_cannot_write_here")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
}

#[test]
fn summary_json_lists_exactly_the_files_written() {
    let tmp = tempfile::tempdir().unwrap();
    for (k, extra) in [vec![], vec!["--no-similarity"]].into_iter().enumerate() {
        let out = tmp.path().join(format!("r{k}"));
        domsim()
            .args(["analyze", "--permutations", "199", "--model"])
            .arg(fixture("nchw_dyn/model.onnx"))
            .arg("--source")
            .arg(fixture("images16"))
            .arg("--target")
            .arg(fixture("images16"))
            .arg("--out")
            .arg(&out)
            .args(&extra)
            .assert()
            .success();
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let listed: std::collections::BTreeSet<String> = s["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        let present: std::collections::BTreeSet<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(listed, present, "{extra:?}");
    }
}

#[cfg(unix)]
#[test]
fn output_files_get_ordinary_permissions_not_the_temp_files_private_ones() {
    use std::os::unix::fs::PermissionsExt;
    // the process umask, as Linux reports it
    let umask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Umask:"))
                .and_then(|l| u32::from_str_radix(l[6..].trim(), 8).ok())
        })
        .unwrap_or(0o022);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emb");
    domsim()
        .args(["extract", "--norm", "unit", "--model"])
        .arg(fixture("nchw_dyn/model.onnx"))
        .arg("--images")
        .arg(fixture("images16"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    for f in ["manifest.json", "index.csv", "skipped.csv"] {
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask, "{f}: mode {mode:o}");
    }
}
