//! The CI guard of the fine-tuning ground truth v2 (`reports/finetune/`, no torch needed here). On the
//! guard's cells of the study (`ground_truth.json` `guard`: the smallest label budgets, every seed), domsim
//! is run with default settings on each seed's own training subset (rebuilt from `splits/<target>.json` and
//! the shared datasets), its plan is mapped to a study configuration, and its regret (best configuration's
//! mean balanced accuracy − the plan's, from the study's saved results) must be no larger than that of the
//! best constant policy ("always X") on the same cells. The guard can fail: the probability that a random
//! policy passes it, computed by the study's bootstrap, must be below 0.1.
//!
//! The input-shift target's images are regenerated here with the study's documented corruption (Gaussian
//! noise σ on [0, 1] pixels after domsim's own resize and centre crop, Box–Muller on splitmix64 seeded by
//! FNV-1a of the file name): the study resized with PIL, whose fixed-point arithmetic can differ by one grey
//! level before the noise, so the images are equal up to that rounding. The colour-change target's grey
//! copies (BT.601 luma in integers, at the original size) are equal up to the JPEG decoders' rounding; the
//! low-resolution target's copies (domsim's resize to 32 × 32) up to the resizers' rounding.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use common::datasets;
use domsim::metrics::stats::{percentile_sorted, sample_variance};
use domsim::model::{ElemType, InputContract, Layout};
use domsim::preprocess::{load, Normalization, Pixels, Preprocess};
use serde_json::Value;

/// `true` while domsim's plan loses to the best constant policy on the guard's cells (recorded in the
/// README's known failures). The guard then checks that it still loses, so that a fix is noticed and this
/// record updated. History:
/// - verdict v1 (10 labels per class, 4 targets x 5 seeds): mean regret 0.015 (it picked `freeze_all`, the
///   linear probe, on cats vs dogs, chest X-rays and PneumoniaMNIST), always `lp_ft` 0.006: a known failure;
/// - verdict v2, first form (shifted deep layers: freeze the first half, fine-tune the rest): 0.002 against
///   always `lp_ft` 0.006 (`reports/finetune/results/results.md`);
/// - verdict v2 (shifted deep layers: the shift's profile chooses LP-FT or freezing the first half; a fifth
///   target, bacterial vs viral pneumonia, added after the rule was set): on the five 10-per-class cells
///   0.0082 against always `train_all` 0.0077, a known failure. It loses on cats vs dogs (a new head, 0.011
///   behind LP-FT at 10 per class; within 0.001 at 25 and 100) and on the held-out target (freezing the first
///   half 0.014 behind a new head, on a task no configuration solves: 0.60–0.62). Over all cells of the
///   ground truth the rule beats every constant policy (results.md); this guard's cells are the smallest
///   budget only, where 5 seeds resolve least;
/// - the same rule with a sixth and a seventh target (greyscale and 32-px cats and dogs, registered before
///   their results): on the seven 10-per-class cells 0.0081 against always `lp_ft` 0.0061, a known failure.
///   A new head is 0.011 and 0.014 behind LP-FT on the clean and the grey photos at 10 per class (both from
///   one shared training subset, seed 1).
/// - a far layer also needs MMD² >= `FAR_MMD2` (0.08): no 10-per-class plan moves, 0.0081 against 0.0061
///   still (the rule's only changed plan is the greyscale photos at 100 per class);
/// - with an eighth target (the photos at 64 px, registered before its results under that rule): on the eight
///   10-per-class cells 0.0071 against always `lp_ft` 0.0092, so it passes, and `KNOWN_FAILURE` is false. The
///   pass rests on the new cell (a new head best there, LP-FT 0.031 behind); on the seven earlier cells alone
///   it is still 0.0081 against 0.0061 (README, docs/validation.md);
/// - with a ninth and a tenth target (the photos at 48 px and the X-rays at 64 px, registered together), the
///   probe intervals floored at the binomial one and both thresholds refitted on all
///   ten targets (`FAR_MMD2` 0.10, `EARLY_SHIFT_RATIO` 4.0): on the ten 10-per-class cells 0.0058 against
///   always `freeze_all` 0.0122 (a random policy passes with probability 0.092). The refit is in sample for
///   these cells; the study's leave-one-target-out figures are the honest ones (docs/validation.md).
const KNOWN_FAILURE: bool = false;
const NOISE_SEED: u64 = 0x5EED;
/// The study's generated outputs (committed, made by `bash reports/finetune/run.sh`): this guard reads
/// `ground_truth.json`, the splits and the saved domsim choices from there, never from the study's code.
fn study_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reports/finetune/results")
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
fn gaussian_noise(rgb: &[u8], name: &str, sigma: f64) -> Vec<u8> {
    let seed = fnv1a64(name) ^ NOISE_SEED;
    rgb.iter()
        .enumerate()
        .map(|(j, &v)| {
            let j = j as u64;
            let u1 = ((splitmix64(seed, 2 * j + 1) >> 11) as f64 + 1.0) * 2f64.powi(-53);
            let u2 = (splitmix64(seed, 2 * j + 2) >> 11) as f64 * 2f64.powi(-53);
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let x = (f64::from(v) / 255.0 + sigma * z).clamp(0.0, 1.0);
            (x * 255.0 + 0.5).floor() as u8
        })
        .collect()
}

fn resized_rgb(path: &Path) -> Vec<u8> {
    resized_rgb_to(path, 224)
}

/// domsim's own resize and centre crop to side × side, as RGB bytes.
fn resized_rgb_to(path: &Path, side: usize) -> Vec<u8> {
    let p = Preprocess::new(
        InputContract {
            name: "input".into(),
            layout: Layout::Nhwc,
            elem: ElemType::U8,
            channels: 3,
            height: side,
            width: side,
            fixed_batch: None,
            dynamic_size: false,
        },
        Normalization::preset(domsim::preprocess::Preset::Raw),
        512 << 20,
    );
    match load(path, &p).unwrap().0 {
        Pixels::U8(v) => v,
        Pixels::F32(_) => unreachable!(),
    }
}

/// BT.601 luma in integers, (299 R + 587 G + 114 B + 500) / 1000 (reports/finetune/study.py `grey_u8`).
fn luma(rgb: [u8; 3]) -> u8 {
    let [r, g, b] = rgb.map(u32::from);
    ((299 * r + 587 * g + 114 * b + 500) / 1000) as u8
}

/// The study's grey copy of one image, at its original size.
fn grey_copy(src: &Path) -> image::GrayImage {
    let rgb = image::open(src).unwrap().to_rgb8();
    image::GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        image::Luma([luma(rgb.get_pixel(x, y).0)])
    })
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

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (made by bash reports/finetune/run.sh)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// A study target's corruption (`study.py parse_corrupt`).
enum Corruption {
    /// Gaussian noise of this σ after the resize.
    Gaussian(f64),
    /// A grey copy at the original size.
    Grey,
    /// A low-resolution copy: domsim's resize to this side.
    LowRes(usize),
}

/// Where a study target's images come from in the shared datasets, and its corruption.
enum Source {
    Folder(PathBuf, Option<Corruption>),
    /// One flat folder whose files the study sorted into classes by name (`study.py byname`).
    ByName(PathBuf),
    PneumoniaMnist,
}

fn source_of(target: &str, split: &Value) -> Option<Source> {
    let corruption = split["corrupt"].as_str().map(|c| match c {
        "grey" => Corruption::Grey,
        _ if c.starts_with("lowres:") => Corruption::LowRes(
            c["lowres:".len()..]
                .parse()
                .unwrap_or_else(|_| panic!("{target}: unknown corruption {c}")),
        ),
        _ => Corruption::Gaussian(
            c.strip_prefix("gaussian:")
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{target}: unknown corruption {c}")),
        ),
    });
    match target {
        // the X-rays and every corrupted copy of them
        t if t == "chest_xray" || t.starts_with("chest_xray_") => {
            Some(Source::Folder(datasets().join("chest_xray"), corruption))
        }
        // the clean photos and every corrupted copy of them (the corruption is in the split)
        t if t == "cats_dogs" || t.starts_with("cats_dogs_") => {
            Some(Source::Folder(datasets().join("cats_dogs"), corruption))
        }
        "pneumoniamnist" => Some(Source::PneumoniaMnist),
        "chest_bv" => Some(Source::ByName(datasets().join("chest_xray/PNEUMONIA"))),
        _ => None,
    }
}

/// One seed's training subset of one target at one budget, as class folders under `dir` (what the study
/// gave `domsim analyze`).
fn training_subset(target: &str, budget: usize, seed: u64, dir: &Path) -> Option<()> {
    let split = read_json(&study_dir().join(format!("splits/{target}.json")));
    let source = source_of(target, &split)?;
    let npz = matches!(source, Source::PneumoniaMnist)
        .then(|| npz_entries(&datasets().join("pneumoniamnist.npz")));
    for class in split["classes"].as_array().unwrap() {
        let class = class.as_str().unwrap();
        let files = split["subsets"][seed.to_string()][class]
            .as_array()
            .unwrap();
        for rel in files.iter().take(budget) {
            let rel = rel.as_str().unwrap();
            let dst = dir.join(rel);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            match &source {
                Source::PneumoniaMnist => {
                    // NORMAL/train_00012.png: image 12 of the "train" split, 28 x 28 grey
                    let npz = npz.as_ref().unwrap();
                    let stem = Path::new(rel).file_stem().unwrap().to_str().unwrap();
                    let (part, k) = stem.split_once('_').unwrap();
                    let (shape, px) = npy_u8(&npz[&format!("{part}_images.npy")]);
                    let k: usize = k.parse().unwrap();
                    let (h, w) = (shape[1], shape[2]);
                    let img = px[k * h * w..(k + 1) * h * w].to_vec();
                    image::GrayImage::from_raw(w as u32, h as u32, img)
                        .unwrap()
                        .save(&dst)
                        .unwrap();
                }
                Source::Folder(base, Some(corruption)) => {
                    // stored as <stem>.png; the original is the file of that stem in the class folder
                    let stem = Path::new(rel).file_stem().unwrap().to_str().unwrap();
                    let folder = base.join(Path::new(rel).parent().unwrap());
                    let src = std::fs::read_dir(&folder)
                        .unwrap()
                        .map(|e| e.unwrap().path())
                        .find(|p| p.file_stem().and_then(|s| s.to_str()) == Some(stem))
                        .unwrap_or_else(|| panic!("{rel}: no original in {}", folder.display()));
                    match corruption {
                        Corruption::Gaussian(sigma) => {
                            let name = src.file_name().unwrap().to_str().unwrap().to_string();
                            let noisy = gaussian_noise(&resized_rgb(&src), &name, *sigma);
                            image::RgbImage::from_raw(224, 224, noisy)
                                .unwrap()
                                .save(&dst)
                                .unwrap();
                        }
                        Corruption::Grey => grey_copy(&src).save(&dst).unwrap(),
                        Corruption::LowRes(side) => {
                            let side32 = u32::try_from(*side).unwrap();
                            image::RgbImage::from_raw(side32, side32, resized_rgb_to(&src, *side))
                                .unwrap()
                                .save(&dst)
                                .unwrap();
                        }
                    }
                }
                Source::Folder(base, None) => {
                    std::os::unix::fs::symlink(base.join(rel), &dst).unwrap();
                }
                Source::ByName(base) => {
                    std::os::unix::fs::symlink(
                        base.join(Path::new(rel).file_name().unwrap()),
                        &dst,
                    )
                    .unwrap();
                }
            }
        }
    }
    Some(())
}

/// The study configuration of domsim's plan (`study.py` `plan_config`): `train_all` or `lp_ft`, or the cut at depth L
/// mapped to the configuration whose frozen prefix is nearest (ties: the one that freezes less); L >= 17
/// is a linear head on the final features (`freeze_all`).
fn plan_config(verdict: &Value, layers: &[Value]) -> String {
    let kind = verdict["plan"]["kind"].as_str().expect("a plan kind");
    if kind == "train_all" || kind == "lp_ft" {
        return kind.into();
    }
    let name = verdict["cut"]["layer"]
        .as_str()
        .expect("a freeze plan has a cut");
    let d = layers
        .iter()
        .position(|l| l["name"] == name)
        .expect("the cut is a default layer") as i64;
    if d >= 17 {
        return "freeze_all".into();
    }
    let frozen = [
        ("train_all", -1i64),
        ("freeze_through_3", 3),
        ("freeze_through_8", 8),
        ("freeze_through_12", 12),
    ];
    frozen
        .iter()
        .min_by_key(|(_, f)| ((f - d).abs(), *f))
        .unwrap()
        .0
        .into()
}

/// The configuration domsim's plan picked on each seed of a cell, as the study ran it; `None` without
/// domsim's choices.
fn study_plan_picks(cell: &Value) -> Option<Vec<String>> {
    let plan = cell["choices"]["domsim_plan"].as_array()?;
    Some(
        plan.iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect(),
    )
}

/// Regret of one policy on one cell: the best configuration's mean balanced accuracy over seeds minus the
/// mean over seeds of the configuration the policy picked for that seed.
fn regret(cell: &Value, picks: &[String]) -> f64 {
    let acc = cell["bal_acc"].as_object().unwrap();
    let mean = |v: &Value| {
        let v = v.as_array().unwrap();
        v.iter().map(|x| x.as_f64().unwrap()).sum::<f64>() / v.len() as f64
    };
    let best = acc.values().map(mean).fold(f64::MIN, f64::max);
    let got = picks
        .iter()
        .enumerate()
        .map(|(s, c)| acc[c.as_str()][s].as_f64().unwrap())
        .sum::<f64>()
        / picks.len() as f64;
    best - got
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
    // study.gaussian_noise_u8(np.array([[10, 200, 128]], np.uint8), "cat.1.jpg", 0.18), asserted in
    // reports/finetune/test_study.py too
    assert_eq!(
        gaussian_noise(&[10, 200, 128], "cat.1.jpg", 0.18),
        [0, 175, 131]
    );
}

#[test]
fn grey_is_the_studys() {
    // study.grey_u8 of [10, 200, 128], [255, 255, 255], [0, 0, 1], asserted in reports/finetune/test_study.py
    assert_eq!(
        [[10, 200, 128], [255, 255, 255], [0, 0, 1]].map(luma),
        [135, 255, 0]
    );
}

#[test]
fn regret_and_plan_mapping_follow_the_study() {
    let cell = serde_json::json!({"bal_acc": {"a": [0.9, 0.8], "b": [0.7, 0.9]}});
    // best mean 0.85 (a); picking b then a gives (0.7 + 0.8) / 2
    assert!((regret(&cell, &["b".into(), "a".into()]) - 0.1).abs() < 1e-12);
    assert!(regret(&cell, &["a".into(), "a".into()]).abs() < 1e-12);
    let layers: Vec<Value> = (0..19)
        .map(|d| serde_json::json!({"name": format!("l{d}")}))
        .collect();
    let cut = |d: usize| serde_json::json!({"plan": {"kind": "freeze_through"}, "cut": {"layer": format!("l{d}")}});
    let mapped: Vec<String> = [0, 1, 2, 5, 6, 10, 11, 16, 17, 18]
        .iter()
        .map(|&d| plan_config(&cut(d), &layers))
        .collect();
    assert_eq!(
        mapped,
        [
            "train_all",
            "train_all",
            "freeze_through_3",
            "freeze_through_3",
            "freeze_through_8",
            "freeze_through_8",
            "freeze_through_12",
            "freeze_through_12",
            "freeze_all",
            "freeze_all"
        ]
    );
    let all = serde_json::json!({"plan": {"kind": "train_all"}, "cut": {"layer": "l9"}});
    assert_eq!(plan_config(&all, &layers), "train_all");
}

/// Every figure the advice quotes from the ground truth (`domsim::verdict::GROUND_TRUTH`), recomputed from
/// `ground_truth.json`: a cell's regret per configuration is the best configuration's mean over seeds minus
/// its own; a cell is "shifted" when most of its seeds' deepest layers are, "early" when most seeds' MMD²
/// ratio is at or above the rule's threshold. The quotes are printed to 3 decimals, so each must lie within
/// half a unit of the last digit.
#[test]
fn quoted_ground_truth_figures_are_the_studys() {
    use domsim::verdict::{EARLY_SHIFT_RATIO, GROUND_TRUTH as Q};
    let gt = read_json(&study_dir().join("ground_truth.json"));
    let (mut early, mut through, mut close, mut worst) = (vec![], vec![], vec![], 0.0f64);
    let (mut early_t, mut through_t) = (Vec::<String>::new(), Vec::<String>::new());
    let mut budgets = vec![];
    for c in gt["cells"].as_array().unwrap() {
        let ch = &c["choices"];
        let Some(shift) = ch["deep_shift"].as_array() else {
            continue;
        };
        let n = shift.len() as f64;
        // a constant policy's regret: the same configuration on every seed
        let reg = |cfg: &str| regret(c, &vec![cfg.to_string(); shift.len()]);
        worst = worst.max(regret(c, &study_plan_picks(c).unwrap()));
        budgets.push(c["budget"].as_u64().unwrap() as usize);
        let target = c["target"].as_str().unwrap().to_string();
        let shifted = shift.iter().filter(|s| s.as_bool() == Some(true)).count() as f64 > n / 2.0;
        let high = ch["early_ratio"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r.as_f64().is_some_and(|r| r >= EARLY_SHIFT_RATIO))
            .count() as f64
            > n / 2.0;
        let row = (reg("lp_ft"), reg("freeze_through_8"), reg("freeze_all"));
        match (shifted, high) {
            (false, _) => close.push(row.2),
            (true, true) => {
                early.push(row);
                early_t.push(target);
            }
            (true, false) => {
                through.push(row);
                through_t.push(target);
            }
        }
    }
    let near = |quoted: f64, measured: f64, what: &str| {
        assert!(
            (quoted - measured).abs() <= 0.0005 + 1e-9,
            "verdict::GROUND_TRUTH.{what} is {quoted}, the study gives {measured:.4}: update it (and the docs that quote it)"
        );
    };
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for (rows, targets, words, quoted, (lp, half, head)) in [
        (
            &early,
            &mut early_t,
            "early",
            Q.early_targets,
            (Q.early_lp_ft, Q.early_freeze_half, Q.early_head),
        ),
        (
            &through,
            &mut through_t,
            "through",
            Q.through_targets,
            (Q.through_lp_ft, Q.through_freeze_half, Q.through_head),
        ),
    ] {
        targets.sort();
        targets.dedup();
        assert_eq!(
            targets.as_slice(),
            quoted,
            "verdict::GROUND_TRUTH.{words}_targets"
        );
        let column = |f: fn(&(f64, f64, f64)) -> f64| rows.iter().map(f).collect::<Vec<_>>();
        let heads = column(|r| r.2);
        let measured = (
            avg(&column(|r| r.0)),
            avg(&column(|r| r.1)),
            avg(&heads),
            heads.iter().copied().fold(f64::MAX, f64::min),
            heads.iter().copied().fold(f64::MIN, f64::max),
        );
        eprintln!(
            "{words}: {} cells of {targets:?}: LP-FT {:.4}, freeze the first half {:.4}, a new head {:.4} ({:.4} to {:.4})",
            rows.len(),
            measured.0,
            measured.1,
            measured.2,
            measured.3,
            measured.4
        );
        near(lp, measured.0, &format!("{words}_lp_ft"));
        near(half, measured.1, &format!("{words}_freeze_half"));
        near(head.0, measured.2, &format!("{words}_head.0"));
        near(head.1, measured.3, &format!("{words}_head.1"));
        near(head.2, measured.4, &format!("{words}_head.2"));
    }
    let close_max = close.iter().copied().fold(f64::MIN, f64::max);
    eprintln!("not shifted: {} cells, a new head at most {close_max:.4}; the rule's worst cell {worst:.4}", close.len());
    near(Q.close_head, close_max, "close_head");
    near(Q.rule_worst, worst, "rule_worst");
    // the spread between labelled subsets per budget: per cell the median over configurations of the standard
    // deviation over seeds, then the median over the budget's cells
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile_sorted(&v, 0.5)
    };
    let mut by_budget = std::collections::BTreeMap::<usize, Vec<f64>>::new();
    for c in gt["cells"].as_array().unwrap() {
        let sds = c["bal_acc"]
            .as_object()
            .unwrap()
            .values()
            .map(|runs| {
                let x: Vec<f64> = runs
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                sample_variance(&x).expect("several seeds per cell").sqrt()
            })
            .collect();
        by_budget
            .entry(c["budget"].as_u64().unwrap() as usize)
            .or_default()
            .push(median(sds));
    }
    let measured: Vec<(usize, f64)> = by_budget.into_iter().map(|(b, v)| (b, median(v))).collect();
    eprintln!("spread between labelled subsets per budget: {measured:?}");
    assert_eq!(
        measured.iter().map(|m| m.0).collect::<Vec<_>>(),
        Q.subset_sd.iter().map(|q| q.0).collect::<Vec<_>>(),
        "verdict::GROUND_TRUTH.subset_sd: the budgets measured"
    );
    for (q, m) in Q.subset_sd.iter().zip(&measured) {
        near(q.1, m.1, &format!("subset_sd at {} per class", q.0));
    }
    assert_eq!(
        (
            *budgets.iter().min().unwrap(),
            *budgets.iter().max().unwrap()
        ),
        Q.budgets
    );
}

/// The cells where domsim's plan (its pick on each seed, as the study ran it) is more than δ = 0.01 behind the
/// best configuration: the known failures, listed in docs/validation.md and summarised in the README. A rule
/// change that fixes one or breaks another fails here until this list and the docs are updated.
const KNOWN_FAILURE_CELLS: &[(&str, u64)] = &[
    ("cats_dogs", 10),
    ("cats_dogs_32", 25),
    ("cats_dogs_48", 100),
    ("cats_dogs_64", 100),
    ("cats_dogs_grey", 10),
    ("chest_bv", 10),
    ("chest_bv", 100),
    ("chest_xray_64", 25),
    ("pneumoniamnist", 25),
];

#[test]
fn known_failure_cells_are_the_studys() {
    let gt = read_json(&study_dir().join("ground_truth.json"));
    let delta = gt["design"]["delta"].as_f64().unwrap();
    let mut failing = vec![];
    for c in gt["cells"].as_array().unwrap() {
        let Some(picks) = study_plan_picks(c) else {
            continue;
        };
        let r = regret(c, &picks);
        if r > delta {
            eprintln!(
                "{} {}: domsim's plan {r:.4} behind the best",
                c["target"], c["budget"]
            );
            failing.push((
                c["target"].as_str().unwrap().to_string(),
                c["budget"].as_u64().unwrap(),
            ));
        }
    }
    let known: Vec<(String, u64)> = KNOWN_FAILURE_CELLS
        .iter()
        .map(|(t, b)| (t.to_string(), *b))
        .collect();
    assert_eq!(
        failing, known,
        "the cells where domsim's plan is more than {delta} behind the best changed: update KNOWN_FAILURE_CELLS and docs/validation.md's known failures"
    );
}

#[test]
fn recommended_plan_beats_every_constant_policy_on_the_guard_cells() {
    let gt = read_json(&study_dir().join("ground_truth.json"));
    let guard = &gt["guard"];
    assert!(
        guard.is_object(),
        "ground_truth.json has no guard cells yet: run bash reports/finetune/run.sh"
    );
    let p_random = guard["p_random_passes"].as_f64().unwrap();
    assert!(
        p_random < 0.1,
        "a random policy passes this guard with probability {p_random}: the guard's cells cannot tell good advice from chance"
    );
    let out = Command::cargo_bin("domsim")
        .unwrap()
        .args(["layers", "--json"])
        .output()
        .unwrap();
    let layers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let cells: BTreeMap<(String, u64), &Value> = gt["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                (
                    c["target"].as_str().unwrap().to_string(),
                    c["budget"].as_u64().unwrap(),
                ),
                c,
            )
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let (mut ours, mut constants) = (Vec::new(), BTreeMap::<String, Vec<f64>>::new());
    for g in guard["cells"].as_array().unwrap() {
        let (target, budget) = (g["target"].as_str().unwrap(), g["budget"].as_u64().unwrap());
        let cell = cells[&(target.to_string(), budget)];
        let mut picks = Vec::new();
        for seed in cell["seeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
        {
            let dir = tmp.path().join(format!("{target}_b{budget}_s{seed}"));
            training_subset(target, budget as usize, seed, &dir.join("images")).unwrap_or_else(
                || panic!("{target}: the guard cannot rebuild this target's images"),
            );
            let rep = dir.join("report");
            Command::cargo_bin("domsim")
                .unwrap()
                .args(["--quiet", "--seed", "0", "analyze", "--target"])
                .arg(dir.join("images"))
                .arg("--out")
                .arg(&rep)
                .assert()
                .success();
            let v = read_json(&rep.join("verdict.json"));
            // the advice names the budget it rests on, and calls it rough below 20 per class
            let text = v["plan"]["text"].as_str().unwrap_or_default();
            if v["profile"]["deep_shift"].as_bool() == Some(true)
                || text.starts_with("Train a new head")
            {
                assert!(
                    text.contains(&format!("about {budget} labelled images per class")),
                    "{target} {budget}/class seed {seed}: {text}"
                );
                assert_eq!(text.contains("here is rough"), budget < 20, "{text}");
            }
            picks.push(plan_config(&v, &layers));
        }
        let r = regret(cell, &picks);
        eprintln!(
            "{target} {budget}/class: domsim picks {picks:?}, regret {r:.4} (study's run: {})",
            cell["choices"]["domsim_plan"]
        );
        ours.push(r);
        for c in cell["bal_acc"].as_object().unwrap().keys() {
            let n = cell["seeds"].as_array().unwrap().len();
            constants
                .entry(c.clone())
                .or_default()
                .push(regret(cell, &vec![c.clone(); n]));
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let ours = mean(&ours);
    let (best_const, theirs) = constants
        .iter()
        .map(|(c, v)| (c.clone(), mean(v)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    eprintln!(
        "mean regret over {} cells: domsim {ours:.4}, best constant policy always_{best_const} {theirs:.4}; a random policy passes with probability {p_random:.3}",
        guard["cells"].as_array().unwrap().len()
    );
    let passes = ours <= theirs + 1e-9;
    match (passes, KNOWN_FAILURE) {
        (true, false) | (false, true) => {}
        (false, false) => panic!(
            "domsim's plan has a larger regret ({ours:.4}) than always {best_const} ({theirs:.4}) on the guard cells"
        ),
        (true, true) => panic!(
            "domsim's plan now beats every constant policy: set KNOWN_FAILURE = false and update the README's known failures"
        ),
    }
}

/// The mean absolute difference, in grey levels, between three of the study's images of a corrupted target
/// (`target/finetune/data/<target>/cat/<name>.png`, read by `theirs`) and this guard's rebuild of them from the
/// shared originals (`ours`), each as (width, height, bytes); images the study has not made are skipped. The
/// sizes must agree and the difference stay below one grey level.
fn assert_rebuilt_like_the_studys(
    target: &str,
    theirs: impl Fn(image::DynamicImage) -> Vec<u8>,
    ours: impl Fn(&Path) -> (u32, u32, Vec<u8>),
) {
    let study =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/finetune/data/{target}/cat"));
    let mut worst = 0.0f64;
    for name in ["cat.1.png", "cat.103.png", "cat.10.png"] {
        let Ok(img) = image::open(study.join(name)) else {
            continue;
        };
        let size = (img.width(), img.height());
        let theirs = theirs(img);
        let src = datasets()
            .join("cats_dogs/cat")
            .join(name)
            .with_extension("jpg");
        let (w, h, ours) = ours(&src);
        assert_eq!((w, h), size, "{target} {name}");
        assert_eq!(ours.len(), theirs.len(), "{target} {name}");
        let mad = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / ours.len() as f64;
        eprintln!("{target} {name}: mean absolute difference {mad:.3} grey levels");
        worst = worst.max(mad);
    }
    assert!(worst < 1.0, "{target}: {worst}");
}

/// Local check (needs the study's images under target/finetune/, made by `reports/finetune/run.sh`):
/// the noisy images regenerated here differ from the study's by rounding only.
/// `cargo test --release --test finetune_guard -- --ignored`
#[test]
#[ignore]
fn regenerated_noise_matches_the_studys_images() {
    assert_rebuilt_like_the_studys(
        "cats_dogs_noise",
        |img| img.to_rgb8().into_raw(),
        |src| {
            let name = src.file_name().unwrap().to_str().unwrap();
            (224, 224, gaussian_noise(&resized_rgb(src), name, 0.38))
        },
    );
}

/// Local check: the grey copies made here differ from the study's by the JPEG decoders' rounding only.
#[test]
#[ignore]
fn regenerated_grey_matches_the_studys_images() {
    assert_rebuilt_like_the_studys(
        "cats_dogs_grey",
        |img| img.to_luma8().into_raw(),
        |src| {
            let g = grey_copy(src);
            (g.width(), g.height(), g.into_raw())
        },
    );
}

/// Local check: the low-resolution copies made here differ from the study's (PIL's resize) by rounding only.
#[test]
#[ignore]
fn regenerated_lowres_matches_the_studys_images() {
    assert_rebuilt_like_the_studys(
        "cats_dogs_32",
        |img| img.to_rgb8().into_raw(),
        |src| (32, 32, resized_rgb_to(src, 32)),
    );
}

/// `git` in the repository root, its stdout (panics, saying why, when git or the history is not there).
fn git(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = std::process::Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .expect("git runs (the registration order is read from the history)");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The commits that added files under `path` (oldest last).
fn commits_adding(path: &str) -> Vec<String> {
    git(&["log", "--diff-filter=A", "--format=%H", "--", path])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Issue 34's registration: the predictions for the four independent domains (`issue34_prediction.md`,
/// `issue34_registration.json`, the frozen rule's domsim results) were committed before any fine-tuning
/// file of theirs (a prediction or a recipe-3 grid row): every commit that adds such a file has the
/// registration commit as a strict ancestor. The saved plans are also those the registration records.
#[test]
fn registration_precedes_every_run() {
    let results = "reports/finetune/results";
    let reg_file = format!("{results}/issue34_registration.json");
    let reg_commits = commits_adding(&reg_file);
    assert_eq!(
        reg_commits.len(),
        1,
        "{reg_file} is added once (shallow clone? the check needs the history)"
    );
    let reg = &reg_commits[0];
    assert_eq!(
        commits_adding(&format!("{results}/issue34_prediction.md")),
        vec![reg.clone()]
    );
    let registration = read_json(&study_dir().join("issue34_registration.json"));
    let targets = registration["targets"].as_object().unwrap();
    assert_eq!(targets.len(), 4);
    let mut checked = 0;
    for name in targets.keys() {
        let mut later = commits_adding(&format!("{results}/predictions/{name}"));
        later.extend(commits_adding(&format!("{results}/lr_grid_v3.csv")));
        for c in &later {
            assert_ne!(
                c, reg,
                "{name}: a run's file was committed with the registration"
            );
            let ancestor = std::process::Command::new("git")
                .args(["merge-base", "--is-ancestor", reg, c])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .unwrap()
                .success();
            assert!(
                ancestor,
                "{name}: commit {c} adds a run's file before the registration {reg}"
            );
            checked += 1;
        }
        // the domsim results committed with the registration are the registered plans
        for (b, cell) in targets[name]["plans"].as_object().unwrap() {
            for (s, want) in cell["plan"].as_array().unwrap().iter().enumerate() {
                let saved = read_json(&study_dir().join(format!("domsim/{name}/b{b}_s{s}.json")));
                assert_eq!(&saved["plan_config"], want, "{name} b{b} s{s}");
            }
        }
    }
    println!("registration {reg}: {checked} later commits of run files checked");
    // the registration commit holds no run file of these targets
    let files = git(&["show", "--name-only", "--format=", reg]);
    assert!(
        !files
            .lines()
            .any(|f| f.contains("/predictions/") || f.ends_with("lr_grid_v3.csv")),
        "{files}"
    );
}
