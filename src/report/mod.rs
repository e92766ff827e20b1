//! Reports: the verdict, PNG charts, a self-contained HTML page, `summary.json` and the terminal summary.
//! Each file is rendered to bytes by an [`Exporter`]; [`write_all`] alone owns paths and atomic writes.

pub mod html;
pub mod plot;
pub mod summary;

use std::path::{Path, PathBuf};

use ndarray::{Array2, Axis};

use crate::compare::CompareReport;
use crate::embeddings::EmbeddingSet;
use crate::error::{Error, Result};
use crate::metrics::linalg::{centred, covariance, sym_eigh};
use crate::metrics::stats::subsample;
use crate::metrics::Ctx;
use crate::output::{csv_bytes, write_atomic};
use crate::verdict::{self, Verdict};

/// One embedded image projected on a layer's first two principal components.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PcaPoint {
    /// Layer name.
    pub layer: String,
    /// `source` or `target`.
    pub set: String,
    /// Class label (empty when none).
    pub label: String,
    /// First coordinate.
    pub pc1: f64,
    /// Second coordinate.
    pub pc2: f64,
}

/// Everything a report is rendered from.
pub struct RunReport {
    /// The compare output.
    pub compare: CompareReport,
    /// The verdict derived from it.
    pub verdict: Verdict,
    /// PCA points for the scatter plots.
    pub pca: Vec<PcaPoint>,
    /// Extra facts for `summary.json` (paths, cache use, versions).
    pub extra: serde_json::Value,
}

/// Renders one output file.
pub trait Exporter {
    /// File name inside the report folder.
    fn file_name(&self) -> String;
    /// The file's bytes.
    fn render(&self, r: &RunReport) -> Result<Vec<u8>>;
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
        let mut rng = ctx.rng(21);
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
        let (_, vecs) = sym_eigh(&cov).map_err(Error::Analysis)?;
        let k = vecs.ncols();
        let basis: Array2<f64> = if k >= 2 {
            ndarray::stack(Axis(1), &[vecs.column(k - 1), vecs.column(k - 2)]).expect("same length")
        } else {
            ndarray::stack(Axis(1), &[vecs.column(0), vecs.column(0)]).expect("same length")
        };
        let proj = centred(&pooled.view()).dot(&basis);
        for (r, row) in proj.rows().into_iter().enumerate() {
            let (set, label) = if r < is.len() {
                ("source", src.labels.as_ref().map(|l| l[is[r]].clone()))
            } else {
                (
                    "target",
                    tgt.labels.as_ref().map(|l| l[it[r - is.len()]].clone()),
                )
            };
            out.push(PcaPoint {
                layer: name.clone(),
                set: set.into(),
                label: label.unwrap_or_default(),
                pc1: row[0],
                pc2: row[1],
            });
        }
    }
    Ok(out)
}

/// `embedding_pca.csv` bytes.
pub fn pca_csv(pts: &[PcaPoint]) -> Vec<u8> {
    csv_bytes(
        &["layer", "set", "label", "pc1", "pc2"],
        pts.iter().map(|p| {
            vec![
                p.layer.clone(),
                p.set.clone(),
                p.label.clone(),
                format!("{}", p.pc1),
                format!("{}", p.pc2),
            ]
        }),
    )
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

/// Builds the verdict from a compare report (the rule in [`crate::verdict`]).
pub fn verdict_for(c: &CompareReport) -> Verdict {
    let mut warnings =
        verdict::input_warnings(c.source.manifest.as_ref(), c.target.manifest.as_ref());
    warnings.extend(verdict::sample_size_warning(c.source.n, c.target.n));
    let mut v = verdict::decide(&verdict::evidence(c), c.params.tie_margin, warnings);
    v.warnings
        .extend(c.notes.iter().filter(|n| n.contains("WARNING")).cloned());
    v
}

/// File name of the scatter for a layer.
pub fn scatter_file(depth: usize, layer: &str) -> String {
    format!(
        "embedding_{}.png",
        crate::embeddings::layer_file_name(depth, 100, layer).trim_end_matches(".npy")
    )
}

struct Fn_<F: Fn(&RunReport) -> Result<Vec<u8>>>(String, F);

impl<F: Fn(&RunReport) -> Result<Vec<u8>>> Exporter for Fn_<F> {
    fn file_name(&self) -> String {
        self.0.clone()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        (self.1)(r)
    }
}

/// Full and short layer names, in depth order.
fn layer_names(c: &CompareReport) -> (Vec<String>, Vec<String>) {
    let names: Vec<String> = c.layers.iter().map(|l| l.layer.clone()).collect();
    let short = names.iter().map(|n| plot::short_name(n)).collect();
    (names, short)
}

fn sim_matrix(c: &CompareReport, set: &str, measure: &str, names: &[String]) -> Vec<Vec<f64>> {
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

/// Every exporter for this report, in the order files are written (the CSVs and `compare.json` are
/// written by [`crate::compare::write_report`]).
pub fn exporters(r: &RunReport) -> Vec<Box<dyn Exporter>> {
    let mut v: Vec<Box<dyn Exporter>> = vec![
        Box::new(Fn_("verdict.json".into(), |r: &RunReport| {
            serde_json::to_vec_pretty(&r.verdict).map_err(|e| Error::Analysis(e.to_string()))
        })),
        Box::new(Fn_("metrics_by_depth.png".into(), |r: &RunReport| {
            plot::metrics_by_depth(&r.compare, &r.verdict)
        })),
    ];
    if !r.compare.similarity.is_empty() {
        for (file, set) in [("cka_source.png", "source"), ("cka_target.png", "target")] {
            v.push(Box::new(Fn_(file.into(), move |r: &RunReport| {
                let (names, short) = layer_names(&r.compare);
                let m = sim_matrix(&r.compare, set, "cka_linear", &names);
                plot::heatmap(
                    &format!("Linear CKA between layers, {set} images (1 = same representation)"),
                    &short,
                    &m,
                    (0.0, 1.0),
                    false,
                )
            })));
        }
        v.push(Box::new(Fn_(
            "cka_difference.png".into(),
            |r: &RunReport| {
                let (names, short) = layer_names(&r.compare);
                let s = sim_matrix(&r.compare, "source", "cka_linear", &names);
                let t = sim_matrix(&r.compare, "target", "cka_linear", &names);
                let d: Vec<Vec<f64>> = s
                    .iter()
                    .zip(&t)
                    .map(|(a, b)| a.iter().zip(b).map(|(x, y)| y - x).collect())
                    .collect();
                let top = d
                    .iter()
                    .flatten()
                    .fold(0.0f64, |a, v| a.max(v.abs()))
                    .max(0.05);
                plot::heatmap(
                    "Linear CKA difference, target − source (red: more alike on target)",
                    &short,
                    &d,
                    (-top, top),
                    true,
                )
            },
        )));
    }
    let depths = scatter_depths(r.compare.layers.len());
    for d in depths {
        let Some(layer) = r.compare.layers.get(d).map(|l| l.layer.clone()) else {
            continue;
        };
        if !r.pca.iter().any(|p| p.layer == layer) {
            continue;
        }
        let file = scatter_file(d, &layer);
        v.push(Box::new(Fn_(file, move |r: &RunReport| {
            let pts: Vec<&PcaPoint> = r.pca.iter().filter(|p| p.layer == layer).collect();
            plot::scatter(
                &format!(
                    "Depth {d}: {} — PCA of source and target embeddings",
                    plot::short_name(&layer)
                ),
                &pts,
            )
        })));
    }
    v.push(Box::new(Fn_("summary.json".into(), |r: &RunReport| {
        serde_json::to_vec_pretty(&summary::summary_json(r))
            .map_err(|e| Error::Analysis(e.to_string()))
    })));
    v
}

/// Renders every exporter, then the HTML page that embeds the PNGs; writes all atomically into `out`.
pub fn write_all(r: &RunReport, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut pngs: Vec<(String, Vec<u8>)> = Vec::new();
    for e in exporters(r) {
        let name = e.file_name();
        let bytes = e.render(r)?;
        write_atomic(&out.join(&name), &bytes)?;
        if name.ends_with(".png") {
            pngs.push((name.clone(), bytes));
        }
        written.push(out.join(name));
    }
    let page = html::page(r, &pngs);
    write_atomic(&out.join("report.html"), page.as_bytes())?;
    written.push(out.join("report.html"));
    Ok(written)
}
