//! The CI guard of the fine-tuning ground truth (`reports/finetune/`, no torch needed here): for every target
//! where the study's tie set excludes some configuration, domsim is run with default settings on the same
//! training split (rebuilt from `splits/<target>.csv` and the shared datasets) and its recommended plan must
//! lie in the tie set. When the verdict rule changes, this says whether it still agrees with real
//! fine-tuning.
//!
//! The input-shift target's images are regenerated here with the study's documented corruption (Gaussian
//! noise σ = 0.18 on [0, 1] pixels after domsim's own resize and centre crop, Box–Muller on splitmix64 seeded
//! by FNV-1a of the file name): the study resized with PIL, whose fixed-point arithmetic can differ by one
//! grey level before the noise, so the images are equal up to that rounding.

mod common;

use std::path::{Path, PathBuf};

use common::{datasets, domsim};
use domsim::model::{ElemType, InputContract, Layout};
use domsim::preprocess::{load, Normalization, Pixels, Preprocess};

const NOISE_SIGMA: f64 = 0.18;

/// Targets where domsim's recommendation is outside the fine-tuning tie set, recorded in the README
/// ("Known failures") and left to the verdict issue. The guard checks that each still fails, so that a fix
/// is noticed and the record removed.
/// - pneumoniamnist: `train_all` (mean 0.929, the same on all 3 seeds) vs the best `freeze_through_9`
///   (0.933 ± 0.001): excluded by a 0.004 difference that the 3-seed paired t-test calls significant because
///   `train_all` has no seed spread.
const KNOWN_FAILURES: &[&str] = &["pneumoniamnist"];
const NOISE_SEED: u64 = 0x5EED;

fn study_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reports/finetune")
}

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(seed: u64, k: u64) -> u64 {
    let mut z = seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The study's corruption of one 224 × 224 RGB image (reports/finetune/study.py `gaussian_noise_u8`).
fn gaussian_noise(rgb: &[u8], name: &str) -> Vec<u8> {
    let seed = fnv1a64(name) ^ NOISE_SEED;
    rgb.iter()
        .enumerate()
        .map(|(j, &v)| {
            let j = j as u64;
            let u1 = ((splitmix64(seed, 2 * j + 1) >> 11) as f64 + 1.0) * 2f64.powi(-53);
            let u2 = (splitmix64(seed, 2 * j + 2) >> 11) as f64 * 2f64.powi(-53);
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let x = (f64::from(v) / 255.0 + NOISE_SIGMA * z).clamp(0.0, 1.0);
            (x * 255.0 + 0.5).floor() as u8
        })
        .collect()
}

fn resized_rgb(path: &Path) -> Vec<u8> {
    let p = Preprocess::new(
        InputContract {
            name: "input".into(),
            layout: Layout::Nhwc,
            elem: ElemType::U8,
            channels: 3,
            height: 224,
            width: 224,
            fixed_batch: None,
            dynamic_size: false,
        },
        Normalization::preset("raw").unwrap(),
        512 << 20,
    );
    match load(path, &p).unwrap().0 {
        Pixels::U8(v) => v,
        Pixels::F32(_) => unreachable!(),
    }
}

/// The entries of an uncompressed (`np.savez`) archive: name → bytes.
fn npz_entries(path: &Path) -> std::collections::HashMap<String, Vec<u8>> {
    let b = std::fs::read(path).unwrap();
    let le16 = |i: usize| usize::from(u16::from_le_bytes([b[i], b[i + 1]]));
    let le32 = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    let mut out = std::collections::HashMap::new();
    let mut i = 0;
    while i + 30 <= b.len() && b[i..i + 4] == [0x50, 0x4b, 3, 4] {
        assert_eq!(
            le16(i + 8),
            0,
            "the test reads stored (uncompressed) .npz entries only"
        );
        let (size, name_len, extra) = (le32(i + 18), le16(i + 26), le16(i + 28));
        let name = String::from_utf8(b[i + 30..i + 30 + name_len].to_vec()).unwrap();
        let start = i + 30 + name_len + extra;
        out.insert(name, b[start..start + size].to_vec());
        i = start + size;
    }
    out
}

/// The raw uint8 payload of a `.npy` entry (C order) and its shape.
fn npy_u8(b: &[u8]) -> (Vec<usize>, &[u8]) {
    let hlen = usize::from(u16::from_le_bytes([b[8], b[9]]));
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'|u1'"), "{header}");
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    (shape, &b[10 + hlen..])
}

/// The training split of one target as class folders under `dir`; `None` when this target cannot be rebuilt.
fn training_split(target: &str, dir: &Path) -> Option<()> {
    let csv_path = study_dir().join(format!("splits/{target}.csv"));
    let mut r = csv::Reader::from_path(csv_path).unwrap();
    let base = match target {
        "chest_xray" => datasets().join("chest_xray"),
        "cats_dogs" | "cats_dogs_noise" => datasets().join("cats_dogs"),
        "pneumoniamnist" => datasets().join("pneumoniamnist.npz"),
        _ => return None,
    };
    let npz = (target == "pneumoniamnist").then(|| npz_entries(&base));
    for row in r.records() {
        let row = row.unwrap();
        if &row[2] != "train" {
            continue;
        }
        let rel = &row[0];
        let dst = dir.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        if let Some(npz) = &npz {
            // NORMAL/train_00012.png: image 12 of the "train" split, 28 x 28 grey, as the study saved it
            let stem = Path::new(rel).file_stem().unwrap().to_str().unwrap();
            let (split, k) = stem.split_once('_').unwrap();
            let (shape, px) = npy_u8(&npz[&format!("{split}_images.npy")]);
            let k: usize = k.parse().unwrap();
            let (h, w) = (shape[1], shape[2]);
            image::GrayImage::from_raw(w as u32, h as u32, px[k * h * w..(k + 1) * h * w].to_vec())
                .unwrap()
                .save(&dst)
                .unwrap();
        } else if target == "cats_dogs_noise" {
            let src = base.join(rel).with_extension("jpg");
            let name = src.file_name().unwrap().to_str().unwrap().to_string();
            let noisy = gaussian_noise(&resized_rgb(&src), &name);
            image::RgbImage::from_raw(224, 224, noisy)
                .unwrap()
                .save(&dst)
                .unwrap();
        } else {
            std::os::unix::fs::symlink(base.join(rel), &dst).unwrap();
        }
    }
    Some(())
}

/// The study's configuration name for domsim's plan (the layer's index in the default selection).
fn plan_config(verdict: &serde_json::Value, layers: &[serde_json::Value]) -> String {
    if verdict["plan"]["kind"] == "train_all" {
        return "train_all".into();
    }
    let name = verdict["cut"]["layer"]
        .as_str()
        .expect("a freeze plan has a cut");
    let d = layers
        .iter()
        .position(|l| l["name"] == name)
        .expect("the cut is a default layer");
    if d >= 17 {
        "freeze_all".into()
    } else {
        format!("freeze_through_{d}")
    }
}

#[test]
fn pneumoniamnist_is_read_from_the_npz() {
    let e = npz_entries(&datasets().join("pneumoniamnist.npz"));
    let (shape, px) = npy_u8(&e["train_images.npy"]);
    assert_eq!(shape[1..], [28, 28]);
    assert_eq!(px.len(), shape.iter().product::<usize>());
    assert_eq!(
        shape[0] + npy_u8(&e["val_images.npy"]).0[0] + npy_u8(&e["test_images.npy"]).0[0],
        3166
    );
}

#[test]
fn noise_generator_is_the_studys() {
    // splitmix64 from seed 0: the reference sequence of Steele, Lea & Flood (2014) / Vigna's splitmix64.c
    assert_eq!(splitmix64(0, 1), 0xE220_A839_7B1D_CDAF);
    assert_eq!(splitmix64(0, 2), 0x6E78_9E6A_A1B9_65F4);
    assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
    // study.gaussian_noise_u8(np.array([[10, 200, 128]], np.uint8), "cat.1.jpg") in the study's venv
    assert_eq!(gaussian_noise(&[10, 200, 128], "cat.1.jpg"), [0, 175, 131]);
}

#[test]
fn recommended_plan_lies_in_the_fine_tuning_tie_set() {
    let gt: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(study_dir().join("ground_truth.json")).unwrap(),
    )
    .unwrap();
    let out = domsim().args(["layers", "--json"]).output().unwrap();
    let layers: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (target, t) in gt["targets"].as_object().unwrap() {
        if !t["discriminating"].as_bool().unwrap() || t["n_seeds"].as_u64().unwrap() < 3 {
            continue;
        }
        let dir = tmp.path().join(target).join("images");
        if training_split(target, &dir).is_none() {
            eprintln!("{target}: unknown target; skipped");
            continue;
        }
        let rep = tmp.path().join(target).join("report");
        domsim()
            .args(["analyze", "--source"])
            .arg(datasets().join("animals"))
            .arg("--target")
            .arg(&dir)
            .arg("--out")
            .arg(&rep)
            .assert()
            .success();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(rep.join("verdict.json")).unwrap())
                .unwrap();
        let cfg = plan_config(&v, &layers);
        let ties: Vec<&str> = t["tie_set"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        eprintln!("{target}: domsim recommends {cfg}; tie set {ties:?}");
        let agrees = ties.contains(&cfg.as_str());
        match (agrees, KNOWN_FAILURES.contains(&target.as_str())) {
            (true, false) => {}
            (false, false) => failures.push(format!("{target}: {cfg} not in {ties:?}")),
            // a recorded disagreement that no longer holds: the verdict was fixed, update the record
            (true, true) => failures.push(format!(
                "{target}: {cfg} is now in the tie set; remove it from KNOWN_FAILURES and the README's known failures"
            )),
            (false, true) => eprintln!("{target}: known failure, still outside the tie set (README)"),
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "domsim disagrees with fine-tuning: {failures:?}"
    );
    eprintln!("{checked} discriminating target(s) checked");
}

/// Local check (needs the study's images under target/finetune/, made by `reports/finetune/run.sh`):
/// the noisy images regenerated here differ from the study's by rounding only.
/// `cargo test --release --test finetune_guard -- --ignored`
#[test]
#[ignore]
fn regenerated_noise_matches_the_studys_images() {
    let study =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/finetune/images/cats_dogs_noise/cat");
    let mut worst = 0.0f64;
    for name in ["cat.1.png", "cat.103.png", "cat.10.png"] {
        let theirs = image::open(study.join(name)).unwrap().to_rgb8().into_raw();
        let src = datasets()
            .join("cats_dogs/cat")
            .join(name)
            .with_extension("jpg");
        let ours = gaussian_noise(
            &resized_rgb(&src),
            src.file_name().unwrap().to_str().unwrap(),
        );
        let mad = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / ours.len() as f64;
        eprintln!("{name}: mean absolute difference {mad:.3} grey levels");
        worst = worst.max(mad);
    }
    assert!(worst < 1.0, "{worst}");
}
