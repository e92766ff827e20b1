//! Every file of a report folder, one [`Exporter`] type per file kind, and [`write`], the one function that
//! owns paths and atomic writes (the shape of hyperfine's `src/export/`). `summary.json` lists the files
//! from the same exporter lists, so the list cannot drift from what is written.

use std::path::{Path, PathBuf};

use super::{layer_names, plot, scatter_depths, scatter_file, sim_matrix, PcaPoint, RunReport};
use crate::compare::{CompareReport, Side, Similarity};
use crate::error::{Error, Result};
use crate::output::{csv_bytes, write_atomic};

/// One output file: its name and its bytes, rendered from the report.
pub trait Exporter {
    /// File name inside the report folder.
    fn file_name(&self) -> String;
    /// The file's bytes.
    fn render(&self, r: &RunReport) -> Result<Vec<u8>>;
}

/// Renders each exporter and writes its file atomically into `out`, in order; returns the paths written,
/// each with the wall seconds it took to render and write.
pub fn write(
    r: &RunReport,
    out: &Path,
    exporters: &[Box<dyn Exporter>],
) -> Result<Vec<(PathBuf, f64)>> {
    // every file first: a user's file in the way refuses the run before any file is replaced
    for e in exporters {
        crate::output::check_writable(&out.join(e.file_name()))?;
    }
    let mut written = Vec::new();
    for e in exporters {
        let t0 = std::time::Instant::now();
        let path = out.join(e.file_name());
        write_atomic(&path, &e.render(r)?)?;
        written.push((path, t0.elapsed().as_secs_f64()));
    }
    Ok(written)
}

fn json(what: &str, v: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::Analysis(format!("cannot encode {what}: {e}")))
}

fn num(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// `metrics.csv`: one tidy row per layer and output.
pub struct MetricsCsv;

impl Exporter for MetricsCsv {
    fn file_name(&self) -> String {
        "metrics.csv".into()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        let header = [
            "depth", "layer", "metric", "value", "ci_low", "ci_high", "p_value", "p_holm",
            "n_source", "n_target", "dim", "note",
        ];
        let rows = r.compare.layers.iter().flat_map(|l| {
            l.values.iter().map(move |v| {
                vec![
                    l.depth.to_string(),
                    l.layer.clone(),
                    v.metric.clone(),
                    num(v.value),
                    num(v.ci.map(|c| c.0)),
                    num(v.ci.map(|c| c.1)),
                    num(v.p_value),
                    num(v.p_holm),
                    l.n_source.to_string(),
                    l.n_target.to_string(),
                    l.dim.to_string(),
                    v.note.clone(),
                ]
            })
        });
        Ok(csv_bytes(&header, rows))
    }
}

/// `similarity.csv`: the within-set layer × layer similarities (a header only without them).
pub struct SimilarityCsv;

impl Exporter for SimilarityCsv {
    fn file_name(&self) -> String {
        "similarity.csv".into()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        Ok(csv_bytes(
            &["set", "layer_a", "layer_b", "measure", "value"],
            r.compare.similarity.iter().map(|s| {
                vec![
                    s.set.to_string(),
                    s.layer_a.clone(),
                    s.layer_b.clone(),
                    s.measure.as_str().to_string(),
                    format!("{}", s.value),
                ]
            }),
        ))
    }
}

/// `compare.json`: everything `compare` computed, read back by `domsim report`.
pub struct CompareJson;

impl Exporter for CompareJson {
    fn file_name(&self) -> String {
        "compare.json".into()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        json("compare.json", &r.compare)
    }
}

/// `examples.json`: the page's example images (thumbnails), kept for `domsim report`.
pub struct ExamplesJson;

impl Exporter for ExamplesJson {
    fn file_name(&self) -> String {
        "examples.json".into()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        let mut b = serde_json::to_vec_pretty(&r.examples)
            .map_err(|e| crate::error::Error::Analysis(e.to_string()))?;
        b.push(b'\n');
        Ok(b)
    }
}

/// `embedding_pca.csv`: the scatter points.
pub struct PcaCsv;

impl Exporter for PcaCsv {
    fn file_name(&self) -> String {
        "embedding_pca.csv".into()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        Ok(csv_bytes(
            &[
                "layer",
                "set",
                "label",
                "pc1",
                "pc2",
                "pc1_share",
                "pc2_share",
            ],
            r.pca.iter().map(|p| {
                vec![
                    p.layer.clone(),
                    p.set.to_string(),
                    p.label.clone(),
                    format!("{}", p.pc1),
                    format!("{}", p.pc2),
                    format!("{:.6}", p.pc1_share),
                    format!("{:.6}", p.pc2_share),
                ]
            }),
        ))
    }
}

/// `verdict.json`.
pub struct VerdictJson;

impl Exporter for VerdictJson {
    fn file_name(&self) -> String {
        "verdict.json".into()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        json("verdict.json", &r.verdict)
    }
}

/// `metrics_by_depth.png`.
pub struct DepthChart;

impl Exporter for DepthChart {
    fn file_name(&self) -> String {
        "metrics_by_depth.png".into()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        plot::metrics_by_depth(&r.compare, &r.verdict)
    }
}

/// `gap_sources.png`: the colour and resolution controls by depth.
pub struct GapChart;

impl Exporter for GapChart {
    fn file_name(&self) -> String {
        "gap_sources.png".into()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        plot::gap_sources(&r.compare)
    }
}

/// `cka_source.png` / `cka_target.png`: linear CKA between the layers of one set.
pub struct CkaHeatmap(pub Side);

impl Exporter for CkaHeatmap {
    fn file_name(&self) -> String {
        format!("cka_{}.png", self.0)
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        let (names, short) = layer_names(&r.compare);
        let m = sim_matrix(&r.compare, self.0, Similarity::CkaLinear, &names);
        plot::heatmap(
            &format!(
                "Linear CKA between layers, {} images (1 = same representation)",
                self.0
            ),
            "linear CKA",
            &short,
            &m,
            (0.0, 1.0),
            false,
        )
    }
}

/// `cka_difference.png`: target − source linear CKA.
pub struct CkaDifference;

impl Exporter for CkaDifference {
    fn file_name(&self) -> String {
        "cka_difference.png".into()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        let (names, short) = layer_names(&r.compare);
        let s = sim_matrix(&r.compare, Side::Source, Similarity::CkaLinear, &names);
        let t = sim_matrix(&r.compare, Side::Target, Similarity::CkaLinear, &names);
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
            "target − source",
            &short,
            &d,
            (-top, top),
            true,
        )
    }
}

/// `embedding_<layer>.png`: the PCA scatter of one layer.
pub struct Scatter {
    /// Depth of the layer.
    pub depth: usize,
    /// Layer name.
    pub layer: String,
}

impl Exporter for Scatter {
    fn file_name(&self) -> String {
        scatter_file(self.depth, &self.layer)
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        let pts: Vec<&PcaPoint> = r.pca.iter().filter(|p| p.layer == self.layer).collect();
        plot::scatter(
            &format!(
                "Depth {}: {} — PCA of source and target embeddings",
                self.depth,
                plot::short_name(&self.layer)
            ),
            &pts,
        )
    }
}

/// `summary.json`: paths, parameters, the verdict, the output declarations, the files, the run.
pub struct SummaryJson;

impl Exporter for SummaryJson {
    fn file_name(&self) -> String {
        "summary.json".into()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        json("summary.json", &summary_json(r))
    }
}

/// `report.html`: the self-contained page, with the charts embedded.
pub struct Html;

impl Exporter for Html {
    fn file_name(&self) -> String {
        "report.html".into()
    }
    fn render(&self, r: &RunReport) -> Result<Vec<u8>> {
        let pngs = charts(r)
            .iter()
            .map(|e| Ok((e.file_name(), e.render(r)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(super::html::page(r, &pngs).into_bytes())
    }
}

/// The files `domsim compare` writes.
/// `domsim compare`: checks, computes ([`crate::compare::prepare_and_compute`]) and writes `metrics.csv`,
/// `similarity.csv` and `compare.json` ([`compare_files`]) into `cfg.out`.
pub fn compare(cfg: &crate::compare::CompareConfig) -> Result<CompareReport> {
    let names: Vec<String> = compare_files().iter().map(|e| e.file_name()).collect();
    let (mut r, _lock) = crate::compare::prepare_and_compute(cfg, &names)?;
    // the source's colour and resolution controls, when an embedding folder `X_controls/` beside it holds them
    if crate::controls::controls_dir(&cfg.source).is_dir() {
        let tdir = if crate::shard::is_shard_parent(&cfg.target) {
            cfg.out.join("merged").join("target")
        } else {
            cfg.target.clone()
        };
        let src = crate::embeddings::EmbeddingSet::open(&cfg.source)?;
        let tgt = crate::embeddings::EmbeddingSet::open(&tdir)?;
        let controls = crate::controls::beside(&cfg.source, &src, &tgt, false, &mut r.notes)?;
        crate::controls::measure(&src, &tgt, &controls, &mut r)?;
    }
    let rr = of_compare(r);
    write(&rr, &cfg.out, &compare_files())?;
    Ok(rr.compare)
}

/// Files that `analyze` writes whatever the report holds (beside [`compare_files`]).
const ANALYSIS_FIXED: &[&str] = &[
    "verdict.json",
    "summary.json",
    "report.html",
    "metrics_by_depth.png",
    "embedding_pca.csv",
];

/// Refuses at once, before any computation, an output folder where a file that `analyze` always writes
/// ([`compare_files`] and the analysis files) is in the way and not domsim's
/// ([`crate::output::check_writable`]).
pub fn check_outputs_writable(out: &Path) -> Result<()> {
    let names: Vec<String> = compare_files().iter().map(|e| e.file_name()).collect();
    for n in names
        .into_iter()
        .chain(ANALYSIS_FIXED.iter().map(|s| s.to_string()))
    {
        crate::output::check_writable(&out.join(n))?;
    }
    Ok(())
}

pub fn compare_files() -> Vec<Box<dyn Exporter>> {
    vec![
        Box::new(MetricsCsv),
        Box::new(SimilarityCsv),
        Box::new(CompareJson),
    ]
}

/// The charts of a report, in page order.
pub fn charts(r: &RunReport) -> Vec<Box<dyn Exporter>> {
    let mut v: Vec<Box<dyn Exporter>> = vec![Box::new(DepthChart)];
    if r.compare
        .outputs()
        .iter()
        .any(|o| crate::controls::OUTPUTS.iter().any(|c| c.id == o.id))
    {
        v.push(Box::new(GapChart));
    }
    if !r.compare.similarity.is_empty() {
        v.push(Box::new(CkaHeatmap(Side::Source)));
        v.push(Box::new(CkaHeatmap(Side::Target)));
        v.push(Box::new(CkaDifference));
    }
    for d in scatter_depths(r.compare.layers.len()) {
        let Some(layer) = r.compare.layers.get(d).map(|l| l.layer.clone()) else {
            continue;
        };
        if r.pca.iter().any(|p| p.layer == layer) {
            v.push(Box::new(Scatter { depth: d, layer }));
        }
    }
    v
}

/// The files rendered from a compare output (what `domsim report` rewrites): verdict, charts, summary,
/// page.
pub fn report_files(r: &RunReport) -> Vec<Box<dyn Exporter>> {
    let mut v: Vec<Box<dyn Exporter>> = vec![Box::new(VerdictJson)];
    v.extend(charts(r));
    v.push(Box::new(SummaryJson));
    v.push(Box::new(Html));
    v
}

/// `summary.json`: paths, parameters, the verdict, versions.
pub fn summary_json(r: &RunReport) -> serde_json::Value {
    serde_json::json!({
        "domsim_version": env!("CARGO_PKG_VERSION"),
        "source": {"dir": r.compare.source.dir, "n": r.compare.source.n, "classes": r.compare.source.classes,
                   "model": r.compare.source.manifest.as_ref().map(|m| &m.model)},
        "target": {"dir": r.compare.target.dir, "n": r.compare.target.n, "classes": r.compare.target.classes},
        "params": r.compare.params,
        "verdict": {"summary": r.verdict.summary, "plan": r.verdict.plan, "cut": r.verdict.cut, "diagnosis": r.verdict.diagnosis, "poor_match": r.verdict.poor_match,
                    "warnings": r.verdict.warnings,
                    "layers": r.verdict.layers.iter().map(|l| serde_json::json!({"depth": l.depth, "layer": l.layer, "label": l.label})).collect::<Vec<_>>()},
        "outputs": r.compare.outputs(),
        "files": files(r),
        "run": r.run,
    })
}

/// The files of the report folder, from the same exporter list that writes them (no hard-coded names).
fn files(r: &RunReport) -> Vec<String> {
    analysis_files(r).iter().map(|e| e.file_name()).collect()
}

/// Every file of an `analyze` folder: the compare files, the scatter points (when any), the report files.
pub fn analysis_files(r: &RunReport) -> Vec<Box<dyn Exporter>> {
    let mut v = compare_files();
    if !r.pca.is_empty() {
        v.push(Box::new(PcaCsv));
    }
    if !r.examples.is_empty() {
        v.push(Box::new(ExamplesJson));
    }
    v.extend(report_files(r));
    v
}

/// A report built from a compare output alone (the verdict derived, no scatter points, no run facts).
pub fn of_compare(c: CompareReport) -> RunReport {
    RunReport {
        examples: Vec::new(),
        verdict: super::verdict_for(&c),
        compare: c,
        pca: Vec::new(),
        run: None,
    }
}
