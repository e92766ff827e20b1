//! Sharded extraction: `extract --shard I/N` embeds one deterministic part of an image folder, so that a
//! scheduler (a Slurm job array, a Kubernetes Indexed Job) can run N independent workers; `domsim merge` (and
//! `compare`/`analyze`, given the folder that holds the shards) puts the parts back together.
//!
//! **Partition rule**: a file goes to shard `fnv1a64(relative path) mod N`. It depends on the file's own
//! path only, so the same file lands in the same shard whatever machine scans the folder and whatever other
//! files it holds. Every shard records the rule, its index, N, where the index came from, and the SHA-256 of
//! the whole sorted file list, so that shards of different folders, models or settings are refused.
//!
//! **Merging** orders the rows by relative path, exactly as a single run orders them, so a merged folder has
//! the single run's `index.csv` and matrices.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::dataset::ImageSet;
use crate::embeddings::{EmbeddingSet, Manifest};
use crate::error::{input_err, Error, Result};
use crate::npy::NpyWriter;
use crate::output::{self, csv_bytes, write_atomic};

/// The partition rule, as recorded in manifests.
pub const RULE: &str = "fnv1a64(relative path, UTF-8 bytes) mod count";

/// Which part of the folder this run embeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// 0-based shard index.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

pub use crate::dataset::ShardInfo;

pub use crate::metrics::fnv1a64;

/// The shard a file belongs to.
pub fn shard_of(rel_path: &str, count: usize) -> usize {
    (fnv1a64(rel_path) % count as u64) as usize
}

/// Parses `I/N` (0-based I < N, 1 ≤ N ≤ 100000).
pub fn parse(s: &str) -> Result<ShardSpec> {
    let bad = || {
        Error::Input(format!(
            "--shard '{s}' is not I/N with 0 <= I < N (e.g. --shard 0/4 ... --shard 3/4)"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (index, count) = (
        i.trim().parse::<usize>().map_err(|_| bad())?,
        n.trim().parse::<usize>().map_err(|_| bad())?,
    );
    if count == 0 || count > 100_000 || index >= count {
        return Err(bad());
    }
    Ok(ShardSpec { index, count })
}

/// The shard to run: `--shard I/N`; or `--shard env`, the index from the scheduler's environment
/// (`SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN`, or Kubernetes' `JOB_COMPLETION_INDEX`) and the count
/// from `--shard-count N` or `SLURM_ARRAY_TASK_COUNT`. `None`: no sharding. Sharding always needs `--shard`:
/// a plain `extract` inside a job array embeds the whole folder ([`scheduler_note`] says so).
pub fn resolve(
    flag: Option<&str>,
    count: Option<usize>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<(ShardSpec, String)>> {
    match flag {
        None if count.is_some() => {
            return input_err(
                "--shard-count N takes the shard index from the scheduler's environment only with --shard env (e.g. --shard env --shard-count 16); or give --shard I/N",
            )
        }
        None => return Ok(None),
        Some(f) if f.trim() != "env" => {
            if count.is_some() {
                return input_err(format!(
                    "--shard {f} already names the count; --shard-count goes with --shard env"
                ));
            }
            return Ok(Some((parse(f)?, "--shard".into())));
        }
        Some(_) => {}
    }
    let num =
        |k: &str| -> Result<Option<usize>> {
            match env(k) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::Input(format!("${k} is '{v}', not a non-negative integer"))
                }),
            }
        };
    let slurm = match num("SLURM_ARRAY_TASK_ID")? {
        Some(id) => Some(
            id.checked_sub(num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0))
                .ok_or_else(|| {
                    Error::Input("$SLURM_ARRAY_TASK_ID is below $SLURM_ARRAY_TASK_MIN".into())
                })?,
        ),
        None => None,
    };
    let (index, from) = match (slurm, num("JOB_COMPLETION_INDEX")?) {
        (Some(i), _) => (i, "SLURM_ARRAY_TASK_ID"),
        (None, Some(i)) => (i, "JOB_COMPLETION_INDEX"),
        (None, None) => {
            return input_err(
                "--shard env needs the shard index from the scheduler ($SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX), and neither is set; give --shard I/N instead",
            );
        }
    };
    let count = match (count, num("SLURM_ARRAY_TASK_COUNT")?) {
        (Some(c), _) => c,
        (None, Some(c)) if from == "SLURM_ARRAY_TASK_ID" => c,
        _ if from == "JOB_COMPLETION_INDEX" => {
            return input_err(
                "$JOB_COMPLETION_INDEX is set but not the number of shards: pass --shard-count N (the Job's completions)",
            )
        }
        _ => {
            return input_err(
                "--shard env: $SLURM_ARRAY_TASK_ID is set but not $SLURM_ARRAY_TASK_COUNT: pass --shard-count N (the array's size)",
            )
        }
    };
    let spec = parse(&format!("{index}/{count}"))?;
    Ok(Some((spec, from.into())))
}

/// What to tell a user who runs a plain `extract` (no `--shard`) inside a job array: domsim embeds the whole
/// folder, and `--shard env` would embed this task's part. `None` outside a job array.
pub fn scheduler_note(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let var = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
        .into_iter()
        .find(|k| env(k).is_some())?;
    Some(format!(
        "${var} is set, but without --shard domsim embeds the whole folder; to embed only this task's part, pass --shard env (or --shard I/N)"
    ))
}

/// Refuses a lone shard where a whole embedding set is needed (`compare`, `analyze`): its manifest records
/// one shard of several, so its rows are part of the folder.
pub fn refuse_lone_shard(dir: &Path, m: &Manifest) -> Result<()> {
    match &m.shard {
        Some(info) if info.count > 1 => input_err(format!(
            "'{}' is shard {}/{} of its folder ({} of {} images); compare needs the whole set: pass the folder that holds all {} shards, or `domsim merge` them first",
            dir.display(),
            info.index,
            info.count,
            m.n_images,
            info.n_files_total,
            info.count
        )),
        _ => Ok(()),
    }
}

/// The part of `set` that shard `spec` embeds (files and excluded entries alike), and its manifest record.
pub fn select(set: &ImageSet, spec: ShardSpec, index_from: &str) -> (ImageSet, ShardInfo) {
    let mut h = Sha256::new();
    for f in &set.files {
        h.update(f.as_bytes());
        h.update(b"\n");
    }
    let info = ShardInfo {
        index: spec.index,
        count: spec.count,
        rule: RULE.into(),
        index_from: index_from.into(),
        n_files_total: set.files.len(),
        file_list_sha256: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    };
    let mine = |p: &str| shard_of(p, spec.count) == spec.index;
    let keep: Vec<usize> = (0..set.files.len())
        .filter(|&i| mine(&set.files[i]))
        .collect();
    let part = ImageSet {
        root: set.root.clone(),
        files: keep.iter().map(|&i| set.files[i].clone()).collect(),
        labels: keep.iter().map(|&i| set.labels[i].clone()).collect(),
        excluded: set
            .excluded
            .iter()
            .filter(|(p, _)| mine(p))
            .cloned()
            .collect(),
        shard: Some(info.clone()),
    };
    (part, info)
}

/// The shard folders `dirs` name: each one itself, or, for a folder without a manifest, its sub-folders that
/// hold one (a parent folder of shards). Sorted.
pub fn expand(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in dirs {
        if d.join("manifest.json").is_file() {
            out.push(d.clone());
            continue;
        }
        let mut subs: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| Error::io("cannot list", d, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("manifest.json").is_file())
            .collect();
        if subs.is_empty() {
            return input_err(format!(
                "'{}' is neither an embedding folder nor a folder of shards (no manifest.json in it or its sub-folders)",
                d.display()
            ));
        }
        subs.sort();
        out.extend(subs);
    }
    Ok(out)
}

/// True when `dir` holds shard folders (sub-folders whose manifests record a shard) and no manifest itself.
pub fn is_shard_parent(dir: &Path) -> bool {
    !dir.join("manifest.json").is_file()
        && std::fs::read_dir(dir).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                std::fs::read_to_string(e.path().join("manifest.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<Manifest>(&t).ok())
                    .is_some_and(|m| m.shard.is_some())
            })
        })
}

/// Refuses `dir` when it is a lone shard ([`refuse_lone_shard`]); a folder of shards or an ordinary embedding
/// folder passes (its own errors come when it is opened). `compare` and `analyze` call it on each side given
/// as embeddings, before they create anything.
pub fn whole_set(dir: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(dir.join("manifest.json")) else {
        return Ok(());
    };
    match serde_json::from_str::<Manifest>(&text) {
        Ok(m) => refuse_lone_shard(dir, &m),
        Err(_) => Ok(()),
    }
}

/// `dir` as one embedding folder: a folder of shards is merged into `scratch` first; anything else is
/// returned as it is.
pub fn as_embedding_folder(dir: &Path, scratch: &Path) -> Result<PathBuf> {
    if is_shard_parent(dir) {
        merge(&[dir.to_path_buf()], scratch, true)?;
        Ok(scratch.to_path_buf())
    } else {
        Ok(dir.to_path_buf())
    }
}

/// What must agree between shards, each part named: model, input, preprocessing (its resize, normalisation
/// and the image transform: `--grey`, `--downsample`), pooling, layers, storage, domsim's version.
fn identity(m: &Manifest) -> Vec<(&'static str, String)> {
    let layers: Vec<(&str, usize)> = m.layers.iter().map(|l| (l.name.as_str(), l.dim)).collect();
    vec![
        ("model", m.model.sha256.clone()),
        ("input", format!("{:?}", m.input)),
        ("resize", m.preprocessing.resize.clone()),
        (
            "normalisation",
            format!("{:?}", m.preprocessing.normalization),
        ),
        (
            "image transform (--grey / --downsample)",
            format!("{:?}", m.preprocessing.transform),
        ),
        ("pooling", format!("{:?}", m.pooling)),
        ("token pooling", format!("{:?}", m.tokens)),
        ("layers", format!("{layers:?}")),
        ("storage dtype", format!("{:?}", m.dtype)),
        ("domsim version", m.domsim_version.clone()),
    ]
}

/// Opens shard folders and checks that they belong together: same count, file list, model, version and
/// settings, every index present exactly once.
fn check_shards(dirs: &[PathBuf]) -> Result<(Vec<EmbeddingSet>, Vec<ShardInfo>)> {
    let sets: Vec<EmbeddingSet> = dirs
        .iter()
        .map(|d| EmbeddingSet::open(d))
        .collect::<Result<_>>()?;
    let mut infos = Vec::new();
    for (d, s) in dirs.iter().zip(&sets) {
        let m = s.manifest.as_ref().expect("expand() checked manifest.json");
        let Some(info) = &m.shard else {
            return input_err(format!(
                "'{}' is not a shard (its manifest records no --shard); merge takes the folders written by `domsim extract --shard I/N`",
                d.display()
            ));
        };
        infos.push(info.clone());
    }
    let (m0, i0) = (sets[0].manifest.as_ref().expect("checked"), &infos[0]);
    for ((d, s), info) in dirs.iter().zip(&sets).zip(&infos) {
        let m = s.manifest.as_ref().expect("checked");
        let why = if info.count != i0.count {
            Some(format!(
                "it is one of {} shards, '{}' one of {}",
                info.count,
                dirs[0].display(),
                i0.count
            ))
        } else if info.file_list_sha256 != i0.file_list_sha256 {
            Some("it was cut from a different file list (another folder, or the folder changed between runs)".into())
        } else if let Some(((what, a), (_, b))) = identity(m)
            .into_iter()
            .zip(identity(m0))
            .find(|(a, b)| a != b)
        {
            Some(format!(
                "it was extracted with another {what} ({a} here, {b} there)"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return input_err(format!(
                "shard '{}' does not belong with '{}': {why}; re-extract it with the same command",
                d.display(),
                dirs[0].display()
            ));
        }
    }
    let mut seen = vec![None::<&PathBuf>; i0.count];
    for (d, info) in dirs.iter().zip(&infos) {
        if let Some(prev) = seen[info.index] {
            return input_err(format!(
                "shards '{}' and '{}' are both shard {}/{}: overlapping shards; keep one",
                prev.display(),
                d.display(),
                info.index,
                info.count
            ));
        }
        seen[info.index] = Some(d);
    }
    let missing: Vec<String> = (0..i0.count)
        .filter(|&i| seen[i].is_none())
        .map(|i| format!("{i}/{}", i0.count))
        .collect();
    if !missing.is_empty() {
        return input_err(format!(
            "shard(s) {} missing: run `domsim extract --shard I/N` for them, then merge all {}",
            missing.join(", "),
            i0.count
        ));
    }
    Ok((sets, infos))
}

/// Refuses an output folder that is one of the shards, inside one, or holds one: merging there would replace
/// or mix the inputs it reads (`merge --out s/0 s/0 s/1` replaced shard 0).
fn refuse_out_among_inputs(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let canon = |p: &Path| p.canonicalize().ok();
    // a folder that does not exist yet may still be inside a shard: compare its nearest existing ancestor
    let Some((o, rest)) = out.ancestors().find_map(|a| {
        canon(a).map(|c| {
            (
                c,
                out.strip_prefix(a)
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            )
        })
    }) else {
        return Ok(());
    };
    let o = o.join(rest);
    for d in dirs {
        let Some(d) = canon(d) else { continue };
        let why = if o == d {
            "is one of the shards being merged"
        } else if o.starts_with(&d) {
            "is inside one of the shards being merged"
        } else if d.starts_with(&o) {
            "holds one of the shards being merged"
        } else {
            continue;
        };
        return input_err(format!(
            "--out '{}' {why} ('{}'); merging there would replace the inputs. Choose a folder outside the shards, e.g. '{}'",
            out.display(),
            d.display(),
            d.parent().unwrap_or(&d).with_file_name("merged").display()
        ));
    }
    Ok(())
}

/// Layer `li`'s moments over all shards, combined in shard-index order (exact up to rounding, whatever the
/// order); `None` when some shard has no `stats/` file for it.
fn merged_moments(
    sets: &[EmbeddingSet],
    infos: &[ShardInfo],
    dirs: &[PathBuf],
    li: usize,
) -> Result<Option<crate::metrics::moments::Moments>> {
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_by_key(|&k| infos[k].index);
    let layers = |k: usize| &sets[k].manifest.as_ref().expect("checked").layers;
    let mut acc = crate::metrics::moments::Moments::empty(layers(0)[li].dim);
    for k in order {
        let Some(f) = &layers(k)[li].stats else {
            return Ok(None);
        };
        acc = acc.merge(&crate::metrics::moments::load(&dirs[k].join(f))?);
    }
    Ok(Some(acc))
}

/// Per layer, the merged moments of an embedding folder or a folder of shards whose manifests list a
/// `stats/` file for every layer (`extract --stats`, `--shard`), without loading any row; `None` when some
/// layer has none. The manifest returned describes the whole set (`n_images` summed over shards).
pub fn layer_moments(
    dir: &Path,
) -> Result<Option<(Manifest, Vec<crate::metrics::moments::Moments>)>> {
    use crate::metrics::moments::load;
    if dir.join("manifest.json").is_file() {
        let set = EmbeddingSet::open(dir)?;
        let m = set.manifest.expect("manifest.json exists");
        refuse_lone_shard(dir, &m)?;
        let files: Option<Vec<PathBuf>> = m
            .layers
            .iter()
            .map(|l| l.stats.as_ref().map(|f| dir.join(f)))
            .collect();
        let Some(files) = files else { return Ok(None) };
        let ms = files.iter().map(|f| load(f)).collect::<Result<Vec<_>>>()?;
        return Ok(Some((m, ms)));
    }
    if !is_shard_parent(dir) {
        return Ok(None);
    }
    let dirs = expand(&[dir.to_path_buf()])?;
    let (sets, infos) = check_shards(&dirs)?;
    let m0 = sets[0].manifest.clone().expect("checked");
    let mut out = Vec::new();
    for li in 0..m0.layers.len() {
        let Some(acc) = merged_moments(&sets, &infos, &dirs, li)? else {
            return Ok(None);
        };
        out.push(acc);
    }
    let mut m = m0;
    m.n_images = sets
        .iter()
        .map(|s| s.manifest.as_ref().expect("checked").n_images)
        .sum();
    m.shard = None;
    m.merged_from = Some(format!(
        "{} shards' moments (rows not loaded)",
        infos[0].count
    ));
    Ok(Some((m, out)))
}

/// Every shard's `skipped.csv`, merged (sorted) into `out`; returns how many.
fn merged_skipped(dirs: &[PathBuf], out: &Path) -> Result<usize> {
    let mut skipped: Vec<Vec<String>> = Vec::new();
    for d in dirs {
        if let Ok(mut rd) = csv::Reader::from_path(d.join("skipped.csv")) {
            for rec in rd.records().flatten() {
                skipped.push(rec.iter().map(str::to_string).collect());
            }
        }
    }
    skipped.sort();
    write_atomic(
        &out.join("skipped.csv"),
        &csv_bytes(&["path", "reason"], skipped.iter().cloned()),
    )?;
    Ok(skipped.len())
}

/// The merged manifest's counts from the shards' manifests `ms`.
fn merged_counts(
    m: &mut Manifest,
    ms: &[&Manifest],
    n_images: usize,
    n_skipped: usize,
    count: usize,
) {
    m.n_images = n_images;
    m.n_skipped = n_skipped;
    m.preprocessing.n_grey = ms.iter().map(|x| x.preprocessing.n_grey).sum();
    m.preprocessing.n_alpha = ms.iter().map(|x| x.preprocessing.n_alpha).sum();
    m.preprocessing.n_upscaled = ms.iter().map(|x| x.preprocessing.n_upscaled).sum();
    let med = |f: fn(&Manifest) -> u32| {
        let mut v: Vec<u32> = ms.iter().filter(|x| x.n_images > 0).map(|x| f(x)).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    m.preprocessing.median_native_size = [
        med(|x| x.preprocessing.median_native_size[0]),
        med(|x| x.preprocessing.median_native_size[1]),
    ];
    let mut labels: Vec<String> = ms.iter().flat_map(|x| x.labels.clone()).collect();
    labels.sort();
    labels.dedup();
    m.labels = labels;
    m.shard = None;
    m.fingerprint = None;
    m.checks = None;
    m.merged_from = Some(format!(
        "{} shards ({RULE}); median_native_size is the median of the shards' medians",
        count
    ));
}

/// Merges shard folders into one embedding folder at `out`, rows ordered by relative path as a single run
/// orders them. Refuses shards of different folders, models or settings, a missing shard, or overlapping
/// ones. Returns the merged manifest.
pub fn merge(dirs: &[PathBuf], out: &Path, force: bool) -> Result<Manifest> {
    let dirs = expand(dirs)?;
    refuse_out_among_inputs(&dirs, out)?;
    let (sets, infos) = check_shards(&dirs)?;
    let (m0, i0) = (sets[0].manifest.as_ref().expect("checked"), &infos[0]);
    // rows of every shard, ordered by relative path (a single run's order)
    let mut rows: Vec<(String, String, usize, usize)> = Vec::new(); // (path, label, shard, row)
    for (k, s) in sets.iter().enumerate() {
        let paths = s.paths.clone().unwrap_or_default();
        let labels = s
            .labels
            .clone()
            .unwrap_or_else(|| vec![String::new(); paths.len()]);
        for (r, (p, l)) in paths.into_iter().zip(labels).enumerate() {
            rows.push((p, l, k, r));
        }
    }
    rows.sort();
    if let Some(w) = rows.windows(2).find(|w| w[0].0 == w[1].0) {
        return input_err(format!(
            "'{}' appears in two shards: overlapping shards",
            w[0].0
        ));
    }
    let _lock = output::prepare_dir(out, force)?;
    output::remove_if_exists(&out.join("manifest.json"))?;
    let layer_dir = out.join("layers");
    std::fs::create_dir_all(&layer_dir)
        .map_err(|e| Error::io("cannot create folder", &layer_dir, e))?;
    for (li, entry) in m0.layers.iter().enumerate() {
        let parts: Vec<ndarray::Array2<f64>> = sets
            .iter()
            .map(|s| s.read_layer(li))
            .collect::<Result<_>>()?;
        let mut w = NpyWriter::create(&out.join(&entry.file), entry.dim, m0.dtype)?;
        let mut buf: Vec<f32> = Vec::with_capacity(entry.dim * 256);
        for (_, _, k, r) in &rows {
            // exact: the values were float32 (or float16) before they were read as f64
            buf.extend(parts[*k].row(*r).iter().map(|&v| v as f32));
            if buf.len() >= entry.dim * 256 {
                w.write_rows(&buf)?;
                buf.clear();
            }
        }
        w.write_rows(&buf)?;
        w.finish()?;
    }
    // mergeable moments: combined in shard order (exact up to rounding, whatever the order)
    let mut m = m0.clone();
    for (li, entry) in m.layers.iter_mut().enumerate() {
        entry.stats = match merged_moments(&sets, &infos, &dirs, li)? {
            Some(acc) => Some(crate::metrics::moments::save(out, &entry.file, &acc)?),
            None => None,
        };
    }
    let index = csv_bytes(
        &["row", "path", "label"],
        rows.iter()
            .enumerate()
            .map(|(r, (p, l, _, _))| vec![r.to_string(), p.clone(), l.clone()]),
    );
    write_atomic(&out.join("index.csv"), &index)?;
    let skipped = merged_skipped(&dirs, out)?;
    let ms: Vec<&Manifest> = sets
        .iter()
        .map(|s| s.manifest.as_ref().expect("checked"))
        .collect();
    merged_counts(&mut m, &ms, rows.len(), skipped, i0.count);
    let json = serde_json::to_vec_pretty(&m).expect("manifest serialises");
    write_atomic(&out.join("manifest.json"), &json)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_and_parse() {
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(parse("2/5").unwrap(), ShardSpec { index: 2, count: 5 });
        for bad in ["5/5", "1", "a/2", "0/0", "-1/3"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_index_comes_from_the_scheduler_when_not_given() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(a, _)| *a == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = |_: &str| None;
        assert_eq!(resolve(None, None, none).unwrap(), None);
        let (s, from) = resolve(Some("1/3"), None, none).unwrap().unwrap();
        assert_eq!((s.index, s.count, from.as_str()), (1, 3, "--shard"));
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        // without --shard a job array's environment shards nothing (issue 35: a plain extract was a shard)
        assert_eq!(resolve(None, None, slurm).unwrap(), None);
        assert!(scheduler_note(slurm).unwrap().contains("--shard env"));
        assert_eq!(scheduler_note(none), None);
        let (s, from) = resolve(Some("env"), None, slurm).unwrap().unwrap();
        assert_eq!(
            (s.index, s.count, from.as_str()),
            (1, 3, "SLURM_ARRAY_TASK_ID")
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "2")]);
        let (s, from) = resolve(Some("env"), Some(4), k8s).unwrap().unwrap();
        assert_eq!(
            (s.index, s.count, from.as_str()),
            (2, 4, "JOB_COMPLETION_INDEX")
        );
        assert!(resolve(Some("env"), None, env(&[("JOB_COMPLETION_INDEX", "2")])).is_err());
        assert!(resolve(Some("env"), Some(4), none).is_err());
        assert!(resolve(None, Some(4), k8s).is_err());
        assert!(resolve(Some("1/3"), Some(3), none).is_err());
        assert!(resolve(Some("env"), None, env(&[("SLURM_ARRAY_TASK_ID", "1")])).is_err());
    }
}
