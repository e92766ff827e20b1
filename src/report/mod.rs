//! Reports: the verdict, PNG charts, a self-contained HTML page, `summary.json` and the terminal summary.
//! Each file is rendered to bytes by an [`export::Exporter`]; [`export::write`] alone owns paths and atomic
//! writes.

pub mod examples;
pub mod export;
pub mod glyphs;
pub mod html;
pub mod plot;
pub mod summary;

use std::path::Path;

use ndarray::{Array2, Axis};

use crate::compare::CompareReport;
use crate::embeddings::EmbeddingSet;
use crate::error::{Error, Result};
use crate::metrics::linalg::{centred, covariance, sym_eigh};
use crate::metrics::stats::subsample;
use crate::metrics::Ctx;
use crate::verdict::{self, Verdict};

/// One embedded image projected on a layer's first two principal components.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PcaPoint {
    /// Layer name.
    pub layer: String,
    /// The set.
    pub set: crate::compare::Side,
    /// Class label (empty when none).
    pub label: String,
    /// First coordinate.
    pub pc1: f64,
    /// Second coordinate.
    pub pc2: f64,
    /// Share of the pooled sample's variance along the first component (the layer's, on every row; 0 in a
    /// file written before it was recorded).
    #[serde(default)]
    pub pc1_share: f64,
    /// Share along the second component.
    #[serde(default)]
    pub pc2_share: f64,
}

/// Everything a report is rendered from.
pub struct RunReport {
    /// The compare output.
    pub compare: CompareReport,
    /// The verdict derived from it.
    pub verdict: Verdict,
    /// PCA points for the scatter plots.
    pub pca: Vec<PcaPoint>,
    /// What `analyze` adds to `summary.json` (`run`); `None` for a folder written by `compare`.
    pub run: Option<RunInfo>,
    /// Example images for the page (`examples.json`; empty for a folder written by `compare`).
    pub examples: Vec<examples::Example>,
}

/// `summary.json`'s `run`: where each side's embeddings came from, the bundled reference when it was the
/// source, the report folder, and the wall time per phase.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    /// Per side: how its embeddings were obtained.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub embeddings: std::collections::BTreeMap<crate::compare::Side, SideRun>,
    /// The report folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_dir: Option<String>,
    /// The bundled reference, when it was the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_reference: Option<SourceReference>,
    /// Wall seconds per phase (`extract_source`, `compare`, `controls`, …, `total`), and the splits
    /// `metrics` (per metric group) and `per_file` (per file written).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub timings_s: std::collections::BTreeMap<String, Timing>,
}

impl RunInfo {
    /// The image folder a side was extracted from here, when it was.
    pub fn images(&self, side: crate::compare::Side) -> Option<&str> {
        self.embeddings.get(&side)?.images.as_deref()
    }
}

/// How one side's embeddings were obtained: extracted from `images` (or reused from the cache), given as
/// an embedding folder, or merged from shards.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SideRun {
    /// The embedding folder used.
    pub embeddings: String,
    /// The image folder, when extracted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
    /// Cached embeddings with the same fingerprint were reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_cached_embeddings: Option<bool>,
    /// The extraction fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The folder of shards merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_from_shards: Option<String>,
    /// Given as an embedding folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_folder_given: Option<bool>,
    /// The given embedding folder is the bundled reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundled_reference: Option<bool>,
}

/// The bundled reference as the source.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceReference {
    /// Always true.
    pub bundled: bool,
    /// Its folder.
    pub dir: String,
    /// The photos it was made from.
    pub images: String,
    /// How many.
    pub n_images: usize,
    /// How it is stored.
    pub dtype: crate::npy::Dtype,
    /// One sentence for the page and the terminal.
    pub description: String,
}

/// A phase's wall seconds, or a split of them by part.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Timing {
    /// Seconds.
    Seconds(f64),
    /// Seconds per part.
    Split(std::collections::BTreeMap<String, f64>),
}

impl RunReport {
    /// The sentence saying that the source was the bundled reference, when it was.
    pub fn source_reference(&self) -> Option<&str> {
        self.run
            .as_ref()?
            .source_reference
            .as_ref()
            .map(|r| r.description.as_str())
    }

    /// The image folder the user gave for a side, when it was extracted here.
    pub fn images_given(&self, side: crate::compare::Side) -> Option<&str> {
        self.run.as_ref()?.images(side)
    }
}

/// One column of the per-layer tables (terminal and HTML): a declared output's value, or its p-value.
pub struct Column {
    /// Header.
    pub header: String,
    /// The output.
    pub output: crate::metrics::Output,
    /// True for the output's p-value column.
    pub p_value: bool,
}

impl Column {
    /// The cell at one layer (`-` when not computed), three decimals.
    pub fn cell(&self, l: &crate::compare::LayerResult) -> String {
        let v = l.value(&self.output);
        let x = if self.p_value {
            v.and_then(|v| v.p_value)
        } else {
            v.and_then(|v| v.value)
        };
        x.map_or("-".into(), |x| format!("{x:.3}"))
    }
}

/// The table columns: every declared output with a column, in report order, each followed by its
/// p-value when it has one.
pub fn columns(c: &CompareReport) -> Vec<Column> {
    let mut v = Vec::new();
    for o in c.outputs() {
        let Some(h) = o.column.clone() else { continue };
        v.push(Column {
            header: h.into_owned(),
            output: o.clone(),
            p_value: false,
        });
        if o.p_value {
            v.push(Column {
                header: "p".into(),
                output: o,
                p_value: true,
            });
        }
    }
    v
}

/// Depths of the layers drawn as scatters: early, middle, late.
pub fn scatter_depths(n_layers: usize) -> Vec<usize> {
    let mut v = vec![0, n_layers / 2, n_layers.saturating_sub(1)];
    v.dedup();
    v
}

/// Projects both sets at the given layers on the pooled sample's first two principal components
/// (at most `max_per_set` seeded rows per set).
pub fn pca_points(
    src: &EmbeddingSet,
    tgt: &EmbeddingSet,
    layers: &[(usize, String)],
    max_per_set: usize,
    seed: u64,
) -> Result<Vec<PcaPoint>> {
    let params = crate::metrics::Params {
        seed,
        ..Default::default()
    };
    let mut out = Vec::new();
    let index = |set: &EmbeddingSet, name: &str| set.layers.iter().position(|l| l.name == name);
    for (d, name) in layers {
        let (Some(si), Some(ti)) = (index(src, name), index(tgt, name)) else {
            continue;
        };
        let ctx = Ctx {
            params: &params,
            depth: *d,
        };
        let mut rng = ctx.rng("embedding_pca");
        let xs = src.read_layer(si)?;
        let xt = tgt.read_layer(ti)?;
        if crate::compare::non_finite(&xs) + crate::compare::non_finite(&xt) > 0 {
            continue; // never computed on; compare reports the layer
        }
        let is = subsample(xs.nrows(), max_per_set, &mut rng);
        let it = subsample(xt.nrows(), max_per_set, &mut rng);
        let (xs, xt) = (xs.select(Axis(0), &is), xt.select(Axis(0), &it));
        let pooled = ndarray::concatenate(Axis(0), &[xs.view(), xt.view()])
            .map_err(|e| Error::Analysis(e.to_string()))?;
        let cov = covariance(&pooled.view());
        let (vals, vecs) = sym_eigh(&cov)?;
        let k = vecs.ncols();
        let total: f64 = vals.iter().map(|v| v.max(0.0)).sum();
        let share = |i: usize| {
            if total > 0.0 && i < k {
                vals[k - 1 - i].max(0.0) / total
            } else {
                0.0
            }
        };
        let basis: Array2<f64> = if k >= 2 {
            ndarray::stack(Axis(1), &[vecs.column(k - 1), vecs.column(k - 2)]).expect("same length")
        } else {
            ndarray::stack(Axis(1), &[vecs.column(0), vecs.column(0)]).expect("same length")
        };
        let proj = centred(&pooled.view()).dot(&basis);
        for (r, row) in proj.rows().into_iter().enumerate() {
            let (set, label) = if r < is.len() {
                (
                    crate::compare::Side::Source,
                    src.labels.as_ref().map(|l| l[is[r]].clone()),
                )
            } else {
                (
                    crate::compare::Side::Target,
                    tgt.labels.as_ref().map(|l| l[it[r - is.len()]].clone()),
                )
            };
            out.push(PcaPoint {
                layer: name.clone(),
                set,
                label: label.unwrap_or_default(),
                pc1: row[0],
                pc2: row[1],
                pc1_share: share(0),
                pc2_share: share(1),
            });
        }
    }
    Ok(out)
}

/// Reads `embedding_pca.csv`.
pub fn read_pca(path: &Path) -> Result<Vec<PcaPoint>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let mut r = csv::Reader::from_path(path)
        .map_err(|e| Error::Input(format!("cannot read '{}': {e}", path.display())))?;
    let pts: Vec<PcaPoint> = r
        .deserialize()
        .map(|x| x.map_err(|e| Error::Input(format!("'{}': {e}", path.display()))))
        .collect::<Result<_>>()?;
    // a hand-edited or damaged file: non-finite coordinates are dropped, never drawn
    Ok(pts
        .into_iter()
        .filter(|p| p.pc1.is_finite() && p.pc2.is_finite())
        .collect())
}

/// Reads `examples.json` (none when the folder has no such file).
pub fn read_examples(path: &Path) -> Result<Vec<examples::Example>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let b = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    serde_json::from_slice(&b).map_err(|e| {
        Error::Input(format!(
            "'{}' is not domsim's examples.json ({e}); delete it, or re-run `domsim analyze`",
            path.display()
        ))
    })
}

/// Builds the verdict from a compare report (the rule in [`crate::verdict`]).
pub fn verdict_for(c: &CompareReport) -> Verdict {
    let mut warnings =
        verdict::input_warnings(c.source.manifest.as_ref(), c.target.manifest.as_ref());
    warnings.extend(verdict::sample_size_warning(c.source.n, c.target.n));
    let mut v = verdict::decide(&verdict::evidence(c), c.params.tie_margin, warnings);
    v.sources = crate::controls::sources_sentence(c);
    // the notes mark warnings with a "WARNING: " prefix; a warning list needs no second marker (the
    // terminal printed "warning: WARNING: ...")
    v.warnings.extend(
        c.notes
            .iter()
            .filter(|n| n.contains("WARNING"))
            .map(|n| n.trim_start_matches("WARNING: ").to_string()),
    );
    v
}

/// File name of the scatter for a layer.
pub fn scatter_file(depth: usize, layer: &str) -> String {
    format!(
        "embedding_{}.png",
        crate::embeddings::layer_file_name(depth, 100, layer).trim_end_matches(".npy")
    )
}

/// Full and short layer names, in depth order.
pub(crate) fn layer_names(c: &CompareReport) -> (Vec<String>, Vec<String>) {
    let names: Vec<String> = c.layers.iter().map(|l| l.layer.clone()).collect();
    let short = names.iter().map(|n| plot::short_name(n)).collect();
    (names, short)
}

pub(crate) fn sim_matrix(
    c: &CompareReport,
    set: crate::compare::Side,
    measure: crate::compare::Similarity,
    names: &[String],
) -> Vec<Vec<f64>> {
    let l = names.len();
    let mut m = vec![vec![0.0; l]; l];
    for s in c
        .similarity
        .iter()
        .filter(|s| s.set == set && s.measure == measure)
    {
        if let (Some(a), Some(b)) = (
            names.iter().position(|n| *n == s.layer_a),
            names.iter().position(|n| *n == s.layer_b),
        ) {
            m[a][b] = s.value;
        }
    }
    m
}
