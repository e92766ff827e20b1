//! The target's groups for the task scores: the user's `groups.csv`, else near-duplicates.

use super::pairs::non_finite;
use crate::embeddings::EmbeddingSet;
use crate::error::{input_err, Error, Result};

/// Most target rows searched for near-duplicates (an n x n similarity in row blocks).
pub const GROUPS_MAX_N: usize = 20_000;

/// The target's groups for the task scores: the user's `groups.csv` (`path,group`, matched to `index.csv`)
/// when present, else near-duplicates at the deepest layer ([`crate::metrics::groups`]). `None` without
/// labels, or when no row shares a group.
pub(super) fn target_groups(
    tgt: &EmbeddingSet,
    labels: &Option<Vec<usize>>,
    deepest: Option<usize>,
    notes: &mut Vec<String>,
) -> Result<Option<Vec<usize>>> {
    let (Some(_), Some(deepest)) = (labels, deepest) else {
        return Ok(None);
    };
    let user = tgt.dir.join("groups.csv");
    let groups: Vec<usize> = if user.is_file() {
        let paths = tgt.paths.as_ref().ok_or_else(|| {
            Error::Input(format!(
                "'{}' needs the image paths of index.csv to match its rows; this folder has none",
                user.display()
            ))
        })?;
        let root = tgt.manifest.as_ref().map(|m| m.images.clone());
        user_groups(&user, paths, root.as_deref(), notes)?
    } else {
        let x = tgt.read_layer(deepest)?;
        if x.nrows() > GROUPS_MAX_N || non_finite(&x) > 0 {
            notes.push(format!(
                "near-duplicate search skipped (more than {GROUPS_MAX_N} target rows, or non-finite values at the deepest layer)"
            ));
            return Ok(None);
        }
        crate::metrics::groups::near_duplicate_groups(
            &x,
            crate::metrics::groups::NEAR_DUPLICATE_COS,
        )
    };
    let (n_groups, n_rows) = crate::metrics::groups::summary(&groups);
    if n_groups == 0 {
        return Ok(None);
    }
    notes.push(if user.is_file() {
        format!("groups.csv: {n_groups} group(s) of 2 or more images ({n_rows} images) are each kept within one cross-validation fold")
    } else {
        format!(
            "WARNING: {n_groups} group(s) of near-duplicate target images ({n_rows} images; centred cosine >= {} at the deepest layer) are each kept within one cross-validation fold, so copies cannot leak between training and test folds; supply groups.csv (path,group) to set groups yourself",
            crate::metrics::groups::NEAR_DUPLICATE_COS
        )
    });
    Ok(Some(groups))
}

/// A `groups.csv` path as `index.csv` writes it: relative to the image folder, `/`-separated, without a
/// leading `./`; an absolute path inside the image folder `root` is made relative to it.
fn normalise_path(p: &str, root: Option<&str>) -> String {
    let mut p = p.trim().replace('\\', "/");
    if let Some(r) = root
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty())
    {
        if let Some(rest) = p.strip_prefix(&format!("{r}/")) {
            p = rest.to_string();
        }
    }
    while let Some(rest) = p.strip_prefix("./") {
        p = rest.to_string();
    }
    p
}

/// The group id of every row from the user's `groups.csv` (`path,group`, header optional): rows it does not
/// list are each their own group. A file that matches no row, is empty, or repeats a path with two groups is
/// refused, naming the file and an example of the paths it should hold.
fn user_groups(
    user: &std::path::Path,
    paths: &[String],
    root: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<Vec<usize>> {
    let show = user.display();
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(user)
        .map_err(|e| Error::Input(format!("cannot read '{show}': {e}")))?;
    let mut by_path = std::collections::HashMap::new();
    let mut n_rows = 0usize;
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| Error::Input(format!("'{show}': {e}")))?;
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let (Some(p), Some(g)) = (rec.get(0), rec.get(1)) else {
            return input_err(format!(
                "'{show}' line {}: needs two columns, path,group (e.g. 'NORMAL/IM-0001.jpeg,patient1')",
                i + 1
            ));
        };
        let header = |f: &str, want: &str| f.trim().eq_ignore_ascii_case(want);
        if i == 0 && header(p, "path") && header(g, "group") {
            continue;
        }
        if i == 0 {
            notes.push(format!(
                "'{show}' has no header line 'path,group'; its first line ('{p},{g}') is read as data"
            ));
        }
        n_rows += 1;
        let key = normalise_path(p, root);
        if let Some(prev) = by_path.insert(key.clone(), g.trim().to_string()) {
            if prev != g.trim() {
                return input_err(format!(
                    "'{show}' gives '{key}' two groups ('{prev}' and '{}'); keep one line per image",
                    g.trim()
                ));
            }
        }
    }
    let example = paths
        .first()
        .map_or(String::new(), |p| format!(" (e.g. '{p}')"));
    if n_rows == 0 {
        return input_err(format!(
            "'{show}' lists no image; write one line per image, path,group, with the paths of index.csv{example}, or remove the file to let domsim find near-duplicates"
        ));
    }
    let matched = paths.iter().filter(|p| by_path.contains_key(*p)).count();
    if matched == 0 {
        let first = by_path.keys().min().cloned().unwrap_or_default();
        return input_err(format!(
            "none of the {n_rows} paths in '{show}' (e.g. '{first}') is a target image: the paths must be those of index.csv, relative to the image folder{example}; fix the paths, or remove the file to let domsim find near-duplicates"
        ));
    }
    if matched < paths.len() {
        notes.push(format!(
            "WARNING: '{show}' lists {matched} of the {} target images; each of the other {} is its own group (near-duplicates are not searched when groups.csv is given)",
            paths.len(),
            paths.len() - matched
        ));
    }
    let mut ids = std::collections::HashMap::new();
    Ok(paths
        .iter()
        .enumerate()
        .map(|(i, p)| match by_path.get(p) {
            Some(g) => {
                let next = ids.len();
                *ids.entry(g.clone()).or_insert(next) + paths.len()
            }
            None => i,
        })
        .collect())
}
