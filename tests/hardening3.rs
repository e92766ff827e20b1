//! The third adversarial pass (issue 35), each defect through the binary: shards that differ in their image
//! transform, sharding only on `--shard`, a lone shard compared, `groups.csv` paths that match nothing,
//! `merge --out` onto an input, the cache of a file that changed while it was read, the analyze cache
//! verified before reuse, and a user's file named `.domsim`.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, fixture, manifest};

/// The domsim binary at one thread, not quiet (the notes under test go to the terminal).
fn domsim() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("domsim").unwrap();
    c.args(["--threads", "1"]);
    c
}
use predicates::prelude::*;

/// `domsim extract` of `images` on the small fixture model into `out`, with `extra` flags.
fn extract(images: &Path, out: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut c = domsim();
    c.args(["extract", "--model"])
        .arg(fixture("nchw_dyn/model.onnx"))
        .arg("--images")
        .arg(images)
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

fn merge(out: &Path, inputs: &[PathBuf]) -> assert_cmd::Command {
    let mut c = domsim();
    c.args(["merge", "--out"]).arg(out).args(inputs);
    c
}

/// `domsim analyze` of `target` against the fixture images on the fixture model (99 permutations, one
/// thread, no controls: only the cache is under test).
fn analyze(target: &Path, out: &Path) -> std::process::Output {
    analyze_cmd(target, out).output().unwrap()
}

/// The command [`analyze`] runs, for more flags.
fn analyze_cmd(target: &Path, out: &Path) -> assert_cmd::Command {
    let mut c = domsim();
    c.args(["analyze", "--permutations", "99", "--model"])
        .arg(fixture("nchw_dyn/model.onnx"))
        .arg("--source")
        .arg(fixture("images16"))
        .arg("--target")
        .arg(target)
        .arg("--out")
        .arg(out);
    c
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn reused(o: &std::process::Output) -> bool {
    assert!(o.status.success(), "{}", stderr(o));
    stderr(o).contains("reused cached target embeddings")
}

#[test]
fn shards_with_another_image_transform_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = fixture("images16");
    let (a, b, c) = (
        tmp.path().join("s/0"),
        tmp.path().join("s/1"),
        tmp.path().join("s/1g"),
    );
    extract(&imgs, &a, &["--shard", "0/2"]).assert().success();
    extract(&imgs, &b, &["--shard", "1/2"]).assert().success();
    extract(&imgs, &c, &["--shard", "1/2", "--grey"])
        .assert()
        .success();
    merge(&tmp.path().join("m"), &[a.clone(), c.clone()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("image transform"));
    let d = tmp.path().join("s/1d");
    extract(&imgs, &d, &["--shard", "1/2", "--downsample", "16"])
        .assert()
        .success();
    merge(&tmp.path().join("m"), &[a.clone(), d])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("image transform"));
    // the shards that do belong together still merge, and the merged manifest keeps the transform
    merge(&tmp.path().join("m"), &[a, b]).assert().success();
    let g0 = tmp.path().join("g/0");
    extract(&imgs, &g0, &["--shard", "0/2", "--grey"])
        .assert()
        .success();
    merge(&tmp.path().join("mg"), &[g0, c]).assert().success();
    assert_eq!(
        manifest(&tmp.path().join("mg"))["preprocessing"]["transform"]["grey"],
        true
    );
}

/// 30 images: the 6 fixture images, each under 5 names, in the fixture's two class folders.
fn images30(dir: &Path) -> PathBuf {
    let imgs = dir.join("imgs30");
    for e in walk(&fixture("images16")) {
        let rel = e.strip_prefix(fixture("images16")).unwrap();
        for k in 0..5 {
            let dest = imgs.join(rel.with_file_name(format!(
                "{k}_{}",
                rel.file_name().unwrap().to_string_lossy()
            )));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&e, dest).unwrap();
        }
    }
    imgs
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
fn sharding_needs_the_shard_flag_and_a_lone_shard_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = images30(tmp.path());
    let whole = tmp.path().join("whole");
    // a plain extract inside a Slurm job array embeds the whole folder, and says how to shard
    extract(&imgs, &whole, &[])
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .assert()
        .success()
        .stderr(predicate::str::contains("--shard env"));
    let m = manifest(&whole);
    assert_eq!(m["n_images"], 30);
    assert!(m.get("shard").is_none());
    // --shard env takes the task's part
    let part = tmp.path().join("parts/1");
    extract(&imgs, &part, &["--shard", "env"])
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .assert()
        .success();
    let m = manifest(&part);
    assert_eq!(m["shard"]["index"], 1);
    assert_eq!(m["shard"]["count"], 3);
    assert!(m["n_images"].as_u64().unwrap() < 30);
    // --shard env outside a job array, and --shard-count without --shard env, are errors naming the fix
    extract(&imgs, &tmp.path().join("x"), &["--shard", "env"])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--shard I/N"));
    extract(&imgs, &tmp.path().join("y"), &["--shard-count", "3"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--shard env"));
    // a lone shard given to compare is refused, naming what it is
    domsim()
        .args(["compare", "--source"])
        .arg(&whole)
        .arg("--target")
        .arg(&part)
        .arg("--out")
        .arg(tmp.path().join("c"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is shard 1/3").and(predicate::str::contains("merge")));
    assert!(
        !tmp.path().join("c").exists(),
        "a refused compare creates nothing"
    );
    analyze_cmd(&part, &tmp.path().join("an"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is shard 1/3"));
    assert!(
        !tmp.path().join("an").exists(),
        "a refused analyze creates nothing"
    );
}

#[test]
fn merge_never_writes_onto_one_of_its_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = fixture("images16");
    let s: Vec<PathBuf> = (0..2).map(|i| tmp.path().join(format!("s/{i}"))).collect();
    for (i, d) in s.iter().enumerate() {
        extract(&imgs, d, &["--shard", &format!("{i}/2")])
            .assert()
            .success();
    }
    let before = std::fs::read(s[0].join("manifest.json")).unwrap();
    for (out, why) in [
        (s[0].clone(), "is one of the shards"),
        (s[0].join("merged"), "is inside one of the shards"),
        (tmp.path().join("s"), "holds one of the shards"),
    ] {
        let inputs = [s[0].clone(), s[0].clone(), s[1].clone()];
        merge(&out, &inputs[1..])
            .arg("--force")
            .assert()
            .code(2)
            .stderr(predicate::str::contains(why));
        merge(&out, &inputs).assert().code(2);
    }
    assert_eq!(std::fs::read(s[0].join("manifest.json")).unwrap(), before);
    assert_eq!(manifest(&s[0])["shard"]["index"], 0);
    merge(&tmp.path().join("m"), &s).assert().success();
}

/// A labelled embedding folder of the fixture images, and `compare`'s notes with `groups` as its groups.csv
/// (`None`: no file).
fn compare_with_groups(tmp: &Path, groups: Option<&str>) -> (std::process::Output, Vec<String>) {
    let src = tmp.join("src");
    if !src.exists() {
        extract(&fixture("images16"), &src, &[]).assert().success();
    }
    let tgt = tmp.join("tgt");
    if !tgt.exists() {
        extract(&fixture("images16"), &tgt, &[]).assert().success();
    }
    let g = tgt.join("groups.csv");
    match groups {
        Some(text) => std::fs::write(&g, text).unwrap(),
        None => {
            let _ = std::fs::remove_file(&g);
        }
    }
    let out = tmp.join("cmp");
    let o = domsim()
        .args(["compare", "--permutations", "99", "--force"])
        .arg("--source")
        .arg(&src)
        .arg("--target")
        .arg(&tgt)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let notes = if o.status.success() {
        let cmp: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap())
                .unwrap();
        cmp["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    } else {
        Vec::new()
    };
    (o, notes)
}

#[test]
fn groups_csv_paths_are_matched_like_index_csv_or_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let paths: Vec<String> = std::fs::read_to_string(tmp_index(tmp.path()))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    let root = fixture("images16").canonicalize().unwrap();
    let group_of = |p: &str| format!("g{}", p.len() % 3);
    let used = |notes: &[String]| notes.iter().any(|n| n.starts_with("groups.csv:"));
    // the paths of index.csv, with ./ in front, and absolute inside the image folder: all matched
    for prefix in [String::new(), "./".into(), format!("{}/", root.display())] {
        let text: String = std::iter::once("path,group\n".to_string())
            .chain(
                paths
                    .iter()
                    .map(|p| format!("{prefix}{p},{}\n", group_of(p))),
            )
            .collect();
        let (o, notes) = compare_with_groups(tmp.path(), Some(&text));
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(used(&notes), "prefix '{prefix}': {notes:?}");
    }
    // no header: the first line is data, and the note says so
    let text: String = paths
        .iter()
        .map(|p| format!("{p},{}\n", group_of(p)))
        .collect();
    let (o, notes) = compare_with_groups(tmp.path(), Some(&text));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        notes.iter().any(|n| n.contains("no header line")),
        "{notes:?}"
    );
    // paths that match no image, and an empty file: refused, naming the file and an example path
    for bad in ["path,group\nelsewhere/x.png,g1\n", "", "path,group\n"] {
        let (o, _) = compare_with_groups(tmp.path(), Some(bad));
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("groups.csv") && e.contains(&paths[0]), "{e}");
    }
    // one path with two groups
    let two = format!("path,group\n{0},a\n{0},b\n", paths[0]);
    let (o, _) = compare_with_groups(tmp.path(), Some(&two));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("two groups"));
    // a file that lists some images: the others are their own groups, and a warning says how many
    let some = format!("path,group\n{},a\n{},a\n", paths[0], paths[1]);
    let (o, notes) = compare_with_groups(tmp.path(), Some(&some));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&format!("lists 2 of the {} target images", paths.len()))),
        "{notes:?}"
    );
}

/// index.csv of the labelled target embedding folder the groups test uses (made on first use).
fn tmp_index(tmp: &Path) -> PathBuf {
    let tgt = tmp.join("tgt");
    if !tgt.exists() {
        extract(&fixture("images16"), &tgt, &[]).assert().success();
    }
    tgt.join("index.csv")
}

/// Row `path` of layer `li` in the embedding folder `dir`.
fn row_of(dir: &Path, li: usize, path: &str) -> Vec<f64> {
    let m = manifest(dir);
    let index = std::fs::read_to_string(dir.join("index.csv")).unwrap();
    let r = index
        .lines()
        .skip(1)
        .position(|l| l.split(',').nth(1) == Some(path))
        .unwrap();
    let f = m["layers"][li]["file"].as_str().unwrap();
    common::npy(&dir.join(f)).row(r).to_vec()
}

#[test]
fn a_file_changed_while_it_was_read_never_leaves_a_cache_of_the_other_content() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    copy_dir(&fixture("images16"), &imgs);
    let victim = imgs.join("a/img0.png");
    let contents = [
        std::fs::read(&victim).unwrap(),
        std::fs::read(imgs.join("b/img2.png")).unwrap(),
    ];
    for trial in 0..6 {
        let out = tmp.path().join(format!("r{trial}"));
        // the image flips between two contents (whole-file renames) while the first run reads the folder
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flipper = {
            let (stop, victim, contents) = (stop.clone(), victim.clone(), contents.clone());
            std::thread::spawn(move || {
                let mut k = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tmpf = victim.with_extension("flip");
                    std::fs::write(&tmpf, &contents[k % 2]).unwrap();
                    std::fs::rename(&tmpf, &victim).unwrap();
                    k += 1;
                    std::thread::sleep(std::time::Duration::from_micros(300));
                }
            })
        };
        let first = analyze(&imgs, &out);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flipper.join().unwrap();
        assert!(first.status.success(), "{}", stderr(&first));
        std::fs::write(&victim, &contents[trial % 2]).unwrap();
        let again = analyze(&imgs, &out);
        assert!(again.status.success(), "{}", stderr(&again));
        // whatever the cache holds, it is the embedding of the content the folder holds now
        let fresh = tmp.path().join(format!("fresh{trial}"));
        extract(&imgs, &fresh, &[]).assert().success();
        let cached = out.join("embeddings/target");
        let (a, b) = (
            row_of(&cached, 0, "a/img0.png"),
            row_of(&fresh, 0, "a/img0.png"),
        );
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(
            diff < 1e-5,
            "trial {trial}: the cached row differs from the file's content by {diff} (reused: {})",
            reused(&again)
        );
    }
}

#[test]
fn the_analyze_cache_is_verified_before_it_is_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    copy_dir(&fixture("images16"), &imgs);
    let out = tmp.path().join("r");
    assert!(!reused(&analyze(&imgs, &out)));
    assert!(reused(&analyze(&imgs, &out)), "an intact cache is reused");
    let cache = out.join("embeddings/target");
    let m = manifest(&cache);
    let files: Vec<PathBuf> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| cache.join(l["file"].as_str().unwrap()))
        .collect();
    let metrics = || std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let clean = metrics();
    type Edit = Box<dyn Fn()>;
    let same_shape = files
        .iter()
        .enumerate()
        .flat_map(|(i, a)| files[i + 1..].iter().map(move |b| (a.clone(), b.clone())))
        .find(|(a, b)| std::fs::metadata(a).unwrap().len() == std::fs::metadata(b).unwrap().len());
    let mut edits: Vec<(&str, Edit)> = vec![
        (
            "a value edited",
            Box::new({
                let f = files[0].clone();
                move || {
                    let mut b = std::fs::read(&f).unwrap();
                    let n = b.len();
                    b[n - 2] ^= 0x40;
                    std::fs::write(&f, b).unwrap();
                }
            }),
        ),
        (
            "index.csv reordered",
            Box::new({
                let f = cache.join("index.csv");
                move || {
                    let t = std::fs::read_to_string(&f).unwrap();
                    let mut lines: Vec<&str> = t.lines().collect();
                    lines.swap(1, 2);
                    std::fs::write(&f, lines.join("\n") + "\n").unwrap();
                }
            }),
        ),
        (
            "a layer file truncated",
            Box::new({
                let f = files[files.len() - 1].clone();
                move || {
                    let b = std::fs::read(&f).unwrap();
                    std::fs::write(&f, &b[..b.len() / 2]).unwrap();
                }
            }),
        ),
        (
            "the manifest's dtype edited",
            Box::new({
                let f = cache.join("manifest.json");
                move || {
                    let t = std::fs::read_to_string(&f).unwrap();
                    assert!(t.contains("\"float32\""));
                    std::fs::write(&f, t.replace("\"float32\"", "\"float16\"")).unwrap();
                }
            }),
        ),
    ];
    if let Some((a, b)) = same_shape {
        edits.push((
            "two layer files of one shape swapped",
            Box::new(move || {
                let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
                std::fs::write(&a, y).unwrap();
                std::fs::write(&b, x).unwrap();
            }),
        ));
    }
    for (what, edit) in &edits {
        edit();
        let o = analyze(&imgs, &out);
        assert!(!reused(&o), "{what}: the edited cache was reused");
        assert!(
            stderr(&o).contains("do not verify"),
            "{what}: not said: {}",
            stderr(&o)
        );
        assert_eq!(metrics(), clean, "{what}: the re-extracted run differs");
        assert!(
            reused(&analyze(&imgs, &out)),
            "{what}: the re-extracted cache"
        );
    }
}

#[test]
fn a_users_file_named_dot_domsim_does_not_make_the_folder_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join(".domsim"), "my own notes\n").unwrap();
    std::fs::write(mine.join("metrics.csv"), "my,data\n1,2\n").unwrap();
    for force in [false, true] {
        let mut c = extract(&fixture("images16"), &mine, &[]);
        if force {
            c.arg("--force");
        }
        c.assert()
            .code(2)
            .stderr(predicate::str::contains("not a marker domsim wrote"));
        let o = analyze_cmd(&fixture("images16"), &mine)
            .args(if force { &["--force"][..] } else { &[][..] })
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert_eq!(
            std::fs::read_to_string(mine.join("metrics.csv")).unwrap(),
            "my,data\n1,2\n"
        );
        assert_eq!(
            std::fs::read_to_string(mine.join(".domsim")).unwrap(),
            "my own notes\n"
        );
    }
    // report refuses a domsim folder whose marker was replaced by a file of the user's
    let done = tmp.path().join("done");
    let o = analyze_cmd(&fixture("images16"), &done)
        .arg("--no-controls")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(done.join(".domsim"), "my own notes\n").unwrap();
    domsim()
        .arg("report")
        .arg(&done)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a marker domsim wrote"));
    // a folder holding it as an image folder's sub-folder is scanned, not skipped as domsim's
    let imgs = tmp.path().join("imgs");
    copy_dir(&fixture("images16"), &imgs);
    std::fs::write(imgs.join("a/.domsim"), "notes\n").unwrap();
    let e = tmp.path().join("e");
    extract(&imgs, &e, &[]).assert().success();
    assert_eq!(manifest(&e)["n_images"], 6);
}

#[test]
fn too_many_permutations_are_refused_with_the_reason_that_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let e = tmp.path().join("e");
    extract(&fixture("images16"), &e, &[]).assert().success();
    for (n, why) in [("100001", "more do not move"), ("98", "fewer cannot reach")] {
        domsim()
            .args(["compare", "--permutations", n, "--source"])
            .arg(&e)
            .arg("--target")
            .arg(&e)
            .arg("--out")
            .arg(tmp.path().join("c"))
            .assert()
            .code(2)
            .stderr(predicate::str::contains(why));
    }
}

#[test]
fn class_folders_that_differ_only_in_spaces_or_case_are_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    copy_dir(&fixture("images16/a"), &imgs.join("cat"));
    copy_dir(&fixture("images16/b"), &imgs.join("cat "));
    let e = tmp.path().join("e");
    extract(&imgs, &e, &[]).assert().success();
    domsim()
        .args(["compare", "--permutations", "99", "--source"])
        .arg(&e)
        .arg("--target")
        .arg(&e)
        .arg("--out")
        .arg(tmp.path().join("c"))
        .assert()
        .success();
    let cmp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("c/compare.json")).unwrap())
            .unwrap();
    assert!(
        cmp["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("'cat' and 'cat ' differ only in spaces or letter case")),
        "{}",
        cmp["notes"]
    );
}
