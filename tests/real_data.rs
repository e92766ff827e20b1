//! The measures on real data with the bundled model: animals vs chest X-rays must differ at the deepest layers,
//! two interleaved halves of the animal set must not, and the NORMAL vs PNEUMONIA probe must learn.

mod common;

use common::{copy_subset, datasets, domsim};

fn metric(rows: &[csv::StringRecord], depth: usize, m: &str) -> (f64, Option<f64>) {
    let r = rows
        .iter()
        .find(|r| r[0].parse::<usize>().unwrap() == depth && &r[2] == m)
        .unwrap_or_else(|| panic!("{m} at depth {depth}"));
    (r[3].parse().unwrap(), r[6].parse().ok())
}

fn analyze(
    src: &std::path::Path,
    tgt: &std::path::Path,
    out: &std::path::Path,
) -> Vec<csv::StringRecord> {
    let o = domsim()
        .args(["analyze", "--no-similarity", "--source"])
        .arg(src)
        .arg("--target")
        .arg(tgt)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut r = csv::Reader::from_path(out.join("metrics.csv")).unwrap();
    r.records().map(|x| x.unwrap()).collect()
}

#[test]
fn animals_vs_xrays_differ_and_interleaved_halves_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let animals = datasets().join("animals");
    let xray = tmp.path().join("xray");
    copy_subset(
        &datasets().join("chest_xray/NORMAL"),
        &xray.join("NORMAL"),
        0,
        13,
        100,
    );
    copy_subset(
        &datasets().join("chest_xray/PNEUMONIA"),
        &xray.join("PNEUMONIA"),
        0,
        13,
        100,
    );
    let rows = analyze(&animals, &xray, &tmp.path().join("a_vs_x"));
    let depth = rows
        .iter()
        .map(|r| r[0].parse::<usize>().unwrap())
        .max()
        .unwrap();
    for d in [depth - 2, depth - 1, depth] {
        let (acc, _) = metric(&rows, d, "domain_probe_acc");
        let (_, p) = metric(&rows, d, "mmd2_rbf");
        eprintln!(
            "animals vs x-rays, depth {d}: domain probe {acc:.3}, MMD2 p {:.4}",
            p.unwrap()
        );
        assert!(acc >= 0.95, "depth {d}: domain probe {acc}");
        assert!(p.unwrap() <= 0.01, "depth {d}: p {p:?}");
    }
    let best = (0..=depth)
        .map(|d| metric(&rows, d, "target_probe_bal_acc").0)
        .fold(0.0, f64::max);
    eprintln!("NORMAL vs PNEUMONIA: best balanced target probe {best:.3}");
    assert!(best >= 0.75, "target probe peaks at {best}");
    // the verdict on real embeddings: shifted deep layers -> freeze the first half, fine-tune the rest
    let v = verdict(&tmp.path().join("a_vs_x"));
    assert_eq!(v["plan"]["kind"], "freeze_through", "{:#}", v["plan"]);
    assert_eq!(v["cut"]["depth"], 8, "{:#}", v["cut"]);
    // the shift runs through the network (MMD² ratio about 1.7 on the ground truth's X-rays), so the first
    // layers are kept rather than LP-FT; the reason names the budget (the ground truth's best at 100 per
    // class was this cut; the CI guard checks 10 per class)
    let profile = &v["profile"];
    let ratio = profile["early_ratio"].as_f64().unwrap();
    eprintln!("animals vs x-rays: early-to-deepest MMD2 ratio {ratio:.2}");
    assert!(profile["deep_shift"].as_bool().unwrap());
    assert!(ratio < domsim::verdict::EARLY_SHIFT_RATIO, "{profile:#}");
    let text = v["plan"]["text"].as_str().unwrap();
    assert!(
        text.contains("about 100 labelled images per class"),
        "{text}"
    );
    assert!(!text.contains("here is rough"), "{text}");
    assert!(v["cut"]["evidence"]
        .as_str()
        .unwrap()
        .starts_with("the deepest layers are shifted"));
    // colour is part of the early gap, not all of it: the deep gap is content
    let sources = v["sources"].as_str().unwrap_or_default();
    assert!(!sources.contains("accounts for the whole gap"), "{sources}");

    let even = tmp.path().join("even");
    let odd = tmp.path().join("odd");
    copy_subset(&animals, &even, 0, 2, 1000);
    copy_subset(&animals, &odd, 1, 2, 1000);
    let rows = analyze(&even, &odd, &tmp.path().join("halves"));
    let ps: Vec<f64> = (0..=depth)
        .map(|d| metric(&rows, d, "mmd2_rbf").1.unwrap())
        .collect();
    let accs: Vec<f64> = (0..=depth)
        .map(|d| metric(&rows, d, "domain_probe_acc").0)
        .collect();
    eprintln!("halves: MMD2 p per depth {ps:.3?}; domain probe {accs:.3?}");
    let not_sig = ps.iter().filter(|&&p| p > 0.01).count();
    assert!(
        not_sig * 2 > ps.len(),
        "p > 0.01 at only {not_sig} of {} layers",
        ps.len()
    );
    assert!(
        accs.iter().all(|&a| a < 0.7),
        "domain probe near chance: {accs:?}"
    );
    // the control: every layer transfers, and the plan is a new head on the frozen features
    let v = verdict(&tmp.path().join("halves"));
    let labels: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    assert!(labels.iter().all(|&l| l == "transfers"), "{labels:?}");
    assert!(
        v["plan"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Train a new head on the frozen features"),
        "{:#}",
        v["plan"]
    );
}

fn verdict(out: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("verdict.json")).unwrap()).unwrap()
}

/// The verdict's controls on real photos (issue: "controls that must come out right"):
/// - cats and dogs photos, unlabelled, against the bundled ImageNet reference: a new head on the frozen
///   features, never "re-train from an early depth" (v1 said "freeze up to depth 1, re-train from depth 2");
/// - labelled greyscale copies of cats and dogs against colour cats and dogs (a pure colour change, the
///   frozen features near ceiling): a new head, not "fine-tune every layer".
#[test]
fn same_domain_photos_and_a_pure_colour_change_get_a_new_head() {
    let tmp = tempfile::tempdir().unwrap();
    let cd = datasets().join("cats_dogs");
    let flat = tmp.path().join("photos");
    copy_subset(&cd.join("cat"), &flat, 0, 1, 50);
    copy_subset(&cd.join("dog"), &flat, 0, 1, 50);
    let o = domsim()
        .args(["analyze", "--no-similarity", "--target"])
        .arg(&flat)
        .arg("--out")
        .arg(tmp.path().join("a"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = verdict(&tmp.path().join("a"));
    let text = v["plan"]["text"].as_str().unwrap();
    eprintln!("photos vs the bundled reference: {text}");
    assert!(
        text.starts_with("Train a new head on the frozen features"),
        "{text}"
    );
    assert!(!text.contains("re-train from depth"));

    let colour = tmp.path().join("colour");
    let grey = tmp.path().join("grey");
    for class in ["cat", "dog"] {
        copy_subset(&cd.join(class), &colour.join(class), 0, 2, 50);
        let dir = grey.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for f in copy_subset(
            &cd.join(class),
            &tmp.path().join("tmp").join(class),
            1,
            2,
            50,
        ) {
            let img = image::open(cd.join(class).join(&f)).unwrap().to_luma8();
            img.save(dir.join(format!("{f}.png"))).unwrap();
        }
    }
    let o = domsim()
        .args(["analyze", "--no-similarity", "--source"])
        .arg(&colour)
        .arg("--target")
        .arg(&grey)
        .arg("--out")
        .arg(tmp.path().join("g"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = verdict(&tmp.path().join("g"));
    let text = v["plan"]["text"].as_str().unwrap();
    eprintln!("greyscale copy vs colour: {text}");
    assert!(
        text.starts_with("Train a new head on the frozen features"),
        "{text}"
    );
    assert!(!v["summary"]
        .as_str()
        .unwrap()
        .contains("Fine-tune every layer"));
    assert!(v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("greyscale")));
    // a colour / input-level shift confined to the early layers: far from depth 2 on, but not at the deepest
    // layer (its MMD² is small, about 0.03), so the deep layers are not shifted
    assert_eq!(v["profile"]["deep_shift"], false, "{:#}", v["profile"]);
    let diagnosis = v["diagnosis"].as_str().unwrap();
    eprintln!("greyscale copy vs colour, diagnosis: {diagnosis}");
    assert!(
        diagnosis.contains("confined to the earlier layers"),
        "{diagnosis}"
    );
    // the domain probe separates the sets from depth 2 on, but the colour control says what the shift is
    let sources = v["sources"].as_str().unwrap();
    assert!(
        sources.contains("Colour accounts for the whole gap"),
        "{sources}"
    );
}
