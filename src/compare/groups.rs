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
        let mut r = csv::Reader::from_path(&user)
            .map_err(|e| Error::Input(format!("cannot read '{}': {e}", user.display())))?;
        let mut by_path = std::collections::HashMap::new();
        for rec in r.records() {
            let rec = rec.map_err(|e| Error::Input(format!("'{}': {e}", user.display())))?;
            let (Some(p), Some(g)) = (rec.get(0), rec.get(1)) else {
                return input_err(format!(
                    "'{}' needs two columns: path,group",
                    user.display()
                ));
            };
            by_path.insert(p.to_string(), g.to_string());
        }
        let mut ids = std::collections::HashMap::new();
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| match by_path.get(p) {
                Some(g) => {
                    let next = ids.len();
                    *ids.entry(g.clone()).or_insert(next) + paths.len()
                }
                None => i,
            })
            .collect()
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
