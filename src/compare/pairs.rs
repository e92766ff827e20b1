//! The one layer-pair loop of `compare`, for rows and for mergeable moments alike ([`walk`]): each layer
//! pair is loaded, checked (enough rows on each side, the same dimension, finite values), compared with the
//! previous measured layer (a layer that repeats its features is measured once), measured, and dropped
//! before the next.

use std::path::PathBuf;

use indicatif::ProgressBar;
use ndarray::Array2;

use super::LayerResult;
use crate::embeddings::EmbeddingSet;
use crate::error::{input_err, Error, Result};
use crate::metrics::MetricValue;

/// Number of NaN or infinite entries.
pub fn non_finite(x: &Array2<f64>) -> usize {
    x.iter().filter(|v| !v.is_finite()).count()
}

/// Magnitude beyond which a feature value is refused like a non-finite one: squared distances and Gram
/// sums over many rows and dimensions of such values overflow float64.
pub const OVERFLOW_LIMIT: f64 = 1e100;

/// Number of finite entries beyond ±[`OVERFLOW_LIMIT`].
pub fn overflow_range(x: &Array2<f64>) -> usize {
    x.iter()
        .filter(|v| v.is_finite() && v.abs() > OVERFLOW_LIMIT)
        .count()
}

/// Fewest rows per set that `compare` accepts: below it no probe, test or interval is defined.
pub const MIN_SET: usize = 5;

/// Largest relative difference at which two float32 layers count as holding the same features.
pub const SAME_TOL: f64 = 1e-5;

/// The same-features tolerance for a set: [`SAME_TOL`], or for float16 storage two rounding steps of the
/// largest value (2^-10), since each layer was rounded on its own.
pub(super) fn same_tol(set: &EmbeddingSet) -> f64 {
    match set.manifest.as_ref().map(|m| m.dtype) {
        Some(crate::npy::Dtype::Float16) => SAME_TOL.max(2f64.powi(-10)),
        _ => SAME_TOL,
    }
}

/// Whether two matrices hold the same features (same shape, max |a − b| ≤ tol · max |a|).
pub(super) fn same_features(a: &Array2<f64>, b: &Array2<f64>, tol: f64) -> bool {
    if a.dim() != b.dim() {
        return false;
    }
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(b.iter())
        .all(|(x, y)| (x - y).abs() <= tol * scale)
}

/// One layer of both sets, as [`walk`] checks it.
pub(super) trait PairData {
    /// Rows (images) in the source and the target.
    fn rows(&self) -> (usize, usize);
    /// Feature dimension in the source and the target.
    fn dims(&self) -> (usize, usize);
    /// Why nothing can be computed on these values (non-finite or overflow-range entries), if so.
    fn unusable(&self, layer: &str) -> Option<String>;
    /// When this layer holds the same features as `prev`, how that was decided (for the note).
    fn same_as(&self, prev: &Self) -> Option<String>;
}

/// How a set is named to the user, and where its unreadable files are listed.
pub(super) struct SetName {
    /// "source" or "target".
    pub which: &'static str,
    /// The user's folder.
    pub shown: String,
    /// `skipped.csv`, when the set has one.
    pub skipped: Option<PathBuf>,
}

impl SetName {
    /// The side of an embedding set: named by the image folder it was extracted from (not domsim's cache).
    pub fn of(which: &'static str, set: &EmbeddingSet) -> Self {
        SetName {
            which,
            shown: shown(set.manifest.as_ref(), &set.dir),
            skipped: Some(set.dir.join("skipped.csv")).filter(|p| p.is_file()),
        }
    }
}

/// A set as the user knows it: the image folder its manifest records, else its own folder.
pub(super) fn shown(m: Option<&crate::embeddings::Manifest>, dir: &std::path::Path) -> String {
    m.map(|m| m.images.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| dir.display().to_string())
}

/// What [`walk`] measured.
pub(super) struct Walked {
    /// One result per measured (or not computable) layer, in depth order.
    pub layers: Vec<LayerResult>,
    /// The indices (into the names given) of the layers measured.
    pub kept: Vec<usize>,
    /// Rows of the last measured layer (source, target).
    pub n_rows: (usize, usize),
}

/// Enough rows on each side, and the same dimension.
fn check<D: PairData>(name: &str, d: &D, sides: &[SetName; 2]) -> Result<()> {
    let rows = d.rows();
    for (side, n) in sides.iter().zip([rows.0, rows.1]) {
        if n < MIN_SET {
            return input_err(format!(
                "the {} '{}' holds {n} image(s); comparing needs at least {MIN_SET} per set (50 or more for advice to act on). Add images{}",
                side.which,
                side.shown,
                side.skipped.as_ref().map_or(String::new(), |p| format!(
                    ", or see '{}' for files that could not be read",
                    p.display()
                ))
            ));
        }
    }
    let (ds, dt) = d.dims();
    if ds != dt {
        return Err(Error::Layer {
            layer: name.to_string(),
            message: format!(
                "layer '{name}' has dimension {ds} in the source but {dt} in the target"
            ),
        });
    }
    Ok(())
}

/// The layer-pair loop: `load(k)` reads pair `k` (named `names[k]`), `measure(depth, name, pair)` computes
/// its values, and `not_computed(why)` gives the values of a layer nothing can be computed on.
pub(super) fn walk<D: PairData>(
    names: &[String],
    sides: &[SetName; 2],
    mut load: impl FnMut(usize) -> Result<D>,
    mut measure: impl FnMut(usize, &str, &D) -> Result<Vec<MetricValue>>,
    not_computed: impl Fn(&str) -> Vec<MetricValue>,
    notes: &mut Vec<String>,
    bar: &ProgressBar,
) -> Result<Walked> {
    let mut w = Walked {
        layers: Vec::new(),
        kept: Vec::new(),
        n_rows: (0, 0),
    };
    let mut prev: Option<D> = None;
    for (k, name) in names.iter().enumerate() {
        bar.set_message(format!("compare {name}"));
        let d = load(k)?;
        check(name, &d, sides)?;
        let depth = w.layers.len();
        let result = |values| LayerResult {
            depth,
            layer: name.clone(),
            dim: d.dims().0,
            n_source: d.rows().0,
            n_target: d.rows().1,
            values,
        };
        if let Some(why) = d.unusable(name) {
            notes.push(format!("WARNING: {why}"));
            let r = result(not_computed(&why));
            w.layers.push(r);
            prev = None;
            bar.inc(1);
            continue;
        }
        if let (Some(p), Some(last)) = (&prev, w.layers.last()) {
            if let Some(how) = d.same_as(p) {
                notes.push(format!(
                    "layer '{name}' holds the same features as '{}' ({how}) and is measured once, as '{}'",
                    last.layer, last.layer
                ));
                bar.inc(1);
                continue;
            }
        }
        w.n_rows = d.rows();
        let r = result(measure(depth, name, &d)?);
        w.layers.push(r);
        w.kept.push(k);
        prev = Some(d);
        bar.inc(1);
    }
    Ok(w)
}
