//! `domsim compare`: per-layer metrics between two embedding folders, and within-set layer × layer CKA.
//!
//! Layers are matched by name (same names in both folders, dimensions equal per layer). Each layer is read,
//! measured and dropped before the next, so memory holds one layer pair at a time; the within-set CKA reads
//! one set's layers at a time.
//!
//! Why no CKA between the source and the target: CKA compares two representations of the same images. With
//! the i-th source image paired with the i-th target image, the centred cross-covariance has expectation
//! zero whatever the domains, and the score is a bias floor of about d/n (0.059 for two equal distributions
//! and for two different ones alike, at n = 500, d = 64). domsim reports covariance alignment and MMD² for
//! source-vs-target instead.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array2, Axis};

use crate::embeddings::EmbeddingSet;
use crate::error::{input_err, Error, Result};
use crate::metrics::cka::{centred_rbf_gram, gram_cka, linear_cka_pair, LinearRep};
use crate::metrics::stats::subsample;
use crate::metrics::{registry, Ctx, MetricValue, Needs, Params, SetData};
use crate::output::{self, csv_bytes, write_atomic};

/// Settings for `domsim compare`.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// Source embedding folder.
    pub source: PathBuf,
    /// Target embedding folder.
    pub target: PathBuf,
    /// Report folder.
    pub out: PathBuf,
    /// Metric groups or outputs to compute (`None` = all).
    pub metrics: Option<Vec<String>>,
    /// Estimator parameters.
    pub params: Params,
    /// Compute the within-set layer × layer CKA.
    pub similarity: bool,
    /// Progress bar on a terminal.
    pub progress: bool,
    /// Overwrite a non-empty folder not made by domsim.
    pub force: bool,
}

/// All metric values at one layer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LayerResult {
    /// Depth index.
    pub depth: usize,
    /// Layer name.
    pub layer: String,
    /// Feature dimension.
    pub dim: usize,
    /// Source rows.
    pub n_source: usize,
    /// Target rows.
    pub n_target: usize,
    /// Values in registry order.
    pub values: Vec<MetricValue>,
}

/// One within-set similarity value.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SimilarityValue {
    /// `source` or `target`.
    pub set: String,
    /// Row layer.
    pub layer_a: String,
    /// Column layer.
    pub layer_b: String,
    /// `cka_linear`, `cka_linear_debiased` or `cka_rbf`.
    pub measure: String,
    /// The value.
    pub value: f64,
}

/// Summary of one input set.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SetSummary {
    /// Folder.
    pub dir: String,
    /// Rows.
    pub n: usize,
    /// Class names (empty without labels).
    pub classes: Vec<String>,
    /// The extraction manifest, when domsim wrote the folder.
    pub manifest: Option<crate::embeddings::Manifest>,
}

/// Everything `compare` computed (`compare.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CompareReport {
    /// domsim version.
    pub domsim_version: String,
    /// Parameters.
    pub params: Params,
    /// Source set.
    pub source: SetSummary,
    /// Target set.
    pub target: SetSummary,
    /// Per-layer results in depth order.
    pub layers: Vec<LayerResult>,
    /// Within-set similarity.
    pub similarity: Vec<SimilarityValue>,
    /// Notes: skipped metrics, warnings.
    pub notes: Vec<String>,
}

/// Every selectable metric name (groups and outputs).
pub fn metric_names() -> Vec<&'static str> {
    let mut v = Vec::new();
    for m in registry() {
        v.push(m.name());
        v.extend(m.outputs().iter().copied());
    }
    v.sort_unstable();
    v.dedup();
    v
}

fn label_indices(labels: &Option<Vec<String>>) -> (Option<Vec<usize>>, Vec<String>) {
    match labels {
        None => (None, Vec::new()),
        Some(l) => {
            let classes: Vec<String> = l
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let idx = l
                .iter()
                .map(|x| classes.iter().position(|c| c == x).expect("present"))
                .collect();
            (Some(idx), classes)
        }
    }
}

/// Runs `compare` and writes `metrics.csv`, `similarity.csv` and `compare.json` into `cfg.out`.
pub fn compare(cfg: &CompareConfig) -> Result<CompareReport> {
    let src = EmbeddingSet::open(&cfg.source)?;
    let tgt = EmbeddingSet::open(&cfg.target)?;
    output::prepare_dir(&cfg.out, cfg.force)?;
    let report = compute(&src, &tgt, cfg)?;
    write_report(&report, &cfg.out)?;
    Ok(report)
}

/// Matches layers by name; returns (source index, target index) pairs in source depth order.
pub fn match_layers(src: &EmbeddingSet, tgt: &EmbeddingSet) -> Result<Vec<(usize, usize)>> {
    let sn: Vec<&str> = src.layers.iter().map(|l| l.name.as_str()).collect();
    let tn: Vec<&str> = tgt.layers.iter().map(|l| l.name.as_str()).collect();
    let only_s: Vec<&str> = sn.iter().copied().filter(|n| !tn.contains(n)).collect();
    let only_t: Vec<&str> = tn.iter().copied().filter(|n| !sn.contains(n)).collect();
    if !only_s.is_empty() || !only_t.is_empty() {
        return input_err(format!(
            "the source '{}' and target '{}' hold different layers (only in source: [{}]; only in target: [{}]); extract both with the same model and layer selection",
            src.dir.display(),
            tgt.dir.display(),
            only_s.join(", "),
            only_t.join(", ")
        ));
    }
    Ok(sn
        .iter()
        .enumerate()
        .map(|(i, n)| (i, tn.iter().position(|t| t == n).expect("checked")))
        .collect())
}

fn check_models(src: &EmbeddingSet, tgt: &EmbeddingSet, notes: &mut Vec<String>) -> Result<()> {
    if let (Some(a), Some(b)) = (&src.manifest, &tgt.manifest) {
        if a.model.sha256 != b.model.sha256 {
            return input_err(format!(
                "source '{}' was extracted with model {} ({}) and target '{}' with {} ({}); extract both with the same model",
                src.dir.display(),
                a.model.file,
                &a.model.sha256[..12],
                tgt.dir.display(),
                b.model.file,
                &b.model.sha256[..12]
            ));
        }
        if a.pooling != b.pooling {
            notes.push(format!(
                "WARNING: pooling differs (source {:?}, target {:?})",
                a.pooling, b.pooling
            ));
        }
        if a.preprocessing.normalization != b.preprocessing.normalization {
            notes.push("WARNING: the two sets were normalised differently".into());
        }
    }
    Ok(())
}

/// Computes the report from two opened sets (nothing is written).
pub fn compute(
    src: &EmbeddingSet,
    tgt: &EmbeddingSet,
    cfg: &CompareConfig,
) -> Result<CompareReport> {
    let pairs = match_layers(src, tgt)?;
    let mut notes = Vec::new();
    check_models(src, tgt, &mut notes)?;
    let all = registry();
    if let Some(sel) = &cfg.metrics {
        let known = metric_names();
        for s in sel {
            if !known.contains(&s.as_str()) {
                return input_err(format!(
                    "unknown metric '{s}'; choose from: {}",
                    known.join(", ")
                ));
            }
        }
    }
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|m| match &cfg.metrics {
            None => true,
            Some(sel) => sel
                .iter()
                .any(|s| s == m.name() || m.outputs().contains(&s.as_str())),
        })
        .collect();
    let (s_lab, s_classes) = label_indices(&src.labels);
    let (t_lab, t_classes) = label_indices(&tgt.labels);
    let usable = |lab: &Option<Vec<usize>>, classes: &[String]| lab.is_some() && classes.len() >= 2;
    let runnable: Vec<_> = chosen
        .into_iter()
        .filter(|m| {
            let (ok, which) = match m.needs() {
                Needs::Nothing => (true, ""),
                Needs::TargetLabels => (usable(&t_lab, &t_classes), "target"),
                Needs::SourceLabels => (usable(&s_lab, &s_classes), "source"),
            };
            if !ok {
                notes.push(format!(
                    "{} skipped: the {which} set has no labels with 2 or more classes (labels come from one sub-folder per class at extraction, or a labels.csv)",
                    m.name()
                ));
            }
            ok
        })
        .collect();

    let bar = progress(cfg.progress, pairs.len() as u64, "compare layers");
    let mut layers = Vec::new();
    let mut n_rows = (0, 0);
    for (depth, &(si, ti)) in pairs.iter().enumerate() {
        let name = &src.layers[si].name;
        bar.set_message(format!("compare {name}"));
        let xs = src.read_layer(si)?;
        let xt = tgt.read_layer(ti)?;
        if xs.ncols() != xt.ncols() {
            return input_err(format!(
                "layer '{name}' has dimension {} in the source but {} in the target",
                xs.ncols(),
                xt.ncols()
            ));
        }
        n_rows = (xs.nrows(), xt.nrows());
        let s = SetData {
            x: &xs,
            labels: s_lab.as_deref(),
            classes: &s_classes,
        };
        let t = SetData {
            x: &xt,
            labels: t_lab.as_deref(),
            classes: &t_classes,
        };
        let ctx = Ctx {
            params: &cfg.params,
            depth,
        };
        let mut values = Vec::new();
        for m in &runnable {
            let v = m.compute(&s, &t, &ctx).map_err(|e| {
                Error::Analysis(format!("metric {} at layer '{name}': {e}", m.name()))
            })?;
            values.extend(v);
        }
        layers.push(LayerResult {
            depth,
            layer: name.clone(),
            dim: xs.ncols(),
            n_source: xs.nrows(),
            n_target: xt.nrows(),
            values,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();

    let mut similarity = Vec::new();
    if cfg.similarity {
        for (set_name, set) in [("source", src), ("target", tgt)] {
            similarity.extend(within_set(set_name, set, &cfg.params, cfg.progress)?);
        }
        let cap = cfg.params.cka_rbf_max_n;
        if n_rows.0 > cap || n_rows.1 > cap {
            notes.push(format!(
                "cka_rbf uses a seeded subsample of at most {cap} rows per set (n x n kernels); linear CKA uses all rows"
            ));
        }
    }
    let summary = |set: &EmbeddingSet, n: usize, classes: Vec<String>| SetSummary {
        dir: set.dir.display().to_string(),
        n,
        classes,
        manifest: set.manifest.clone(),
    };
    Ok(CompareReport {
        domsim_version: env!("CARGO_PKG_VERSION").into(),
        params: cfg.params.clone(),
        source: summary(src, n_rows.0, s_classes),
        target: summary(tgt, n_rows.1, t_classes),
        layers,
        similarity,
        notes,
    })
}

fn progress(on: bool, len: u64, msg: &str) -> ProgressBar {
    if on && std::io::stderr().is_terminal() {
        let b = ProgressBar::new(len);
        b.set_style(
            ProgressStyle::with_template("{msg:40!} [{bar:30}] {pos}/{len} layers  ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_message(msg.to_string());
        b
    } else {
        ProgressBar::hidden()
    }
}

/// Layer × layer CKA (linear, debiased linear, RBF) within one set.
pub fn within_set(
    set_name: &str,
    set: &EmbeddingSet,
    params: &Params,
    show: bool,
) -> Result<Vec<SimilarityValue>> {
    let bar = progress(
        show,
        set.layers.len() as u64,
        &format!("CKA within {set_name}"),
    );
    let mut raws = Vec::new();
    let mut grams = Vec::new();
    let mut sub: Option<Vec<usize>> = None;
    for i in 0..set.layers.len() {
        let x: Array2<f64> = set.read_layer(i)?;
        let idx = sub.get_or_insert_with(|| {
            let ctx = Ctx { params, depth: 0 };
            let mut rng = ctx.rng(if set_name == "source" { 11 } else { 12 });
            subsample(x.nrows(), params.cka_rbf_max_n, &mut rng)
        });
        grams.push(centred_rbf_gram(&x.select(Axis(0), idx), params.cka_rbf_t));
        raws.push(x);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let reps: Vec<LinearRep> = raws.iter().map(LinearRep::new).collect();
    let names: Vec<&str> = set.layers.iter().map(|l| l.name.as_str()).collect();
    let l = names.len();
    let mut lin = vec![vec![0.0; l]; l];
    let mut deb = vec![vec![0.0; l]; l];
    let mut rbf = vec![vec![0.0; l]; l];
    for a in 0..l {
        for b in a..l {
            (lin[a][b], deb[a][b]) = linear_cka_pair(&reps[a], &reps[b]);
            rbf[a][b] = gram_cka(&grams[a], &grams[b]);
            lin[b][a] = lin[a][b];
            deb[b][a] = deb[a][b];
            rbf[b][a] = rbf[a][b];
        }
    }
    let mut out = Vec::new();
    for (measure, m) in [
        ("cka_linear", &lin),
        ("cka_linear_debiased", &deb),
        ("cka_rbf", &rbf),
    ] {
        for a in 0..l {
            for b in 0..l {
                out.push(SimilarityValue {
                    set: set_name.into(),
                    layer_a: names[a].into(),
                    layer_b: names[b].into(),
                    measure: measure.into(),
                    value: m[a][b],
                });
            }
        }
    }
    Ok(out)
}

fn num(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// The `metrics.csv` bytes: one tidy row per layer and metric.
pub fn metrics_csv(r: &CompareReport) -> Vec<u8> {
    let header = [
        "depth", "layer", "metric", "value", "ci_low", "ci_high", "p_value", "n_source",
        "n_target", "dim", "note",
    ];
    let rows = r.layers.iter().flat_map(|l| {
        l.values.iter().map(move |v| {
            vec![
                l.depth.to_string(),
                l.layer.clone(),
                v.metric.clone(),
                num(v.value),
                num(v.ci.map(|c| c.0)),
                num(v.ci.map(|c| c.1)),
                num(v.p_value),
                l.n_source.to_string(),
                l.n_target.to_string(),
                l.dim.to_string(),
                v.note.clone(),
            ]
        })
    });
    csv_bytes(&header, rows)
}

/// The `similarity.csv` bytes.
pub fn similarity_csv(r: &CompareReport) -> Vec<u8> {
    csv_bytes(
        &["set", "layer_a", "layer_b", "measure", "value"],
        r.similarity.iter().map(|s| {
            vec![
                s.set.clone(),
                s.layer_a.clone(),
                s.layer_b.clone(),
                s.measure.clone(),
                format!("{}", s.value),
            ]
        }),
    )
}

/// Writes `metrics.csv`, `similarity.csv` and `compare.json`.
pub fn write_report(r: &CompareReport, out: &Path) -> Result<()> {
    write_atomic(&out.join("metrics.csv"), &metrics_csv(r))?;
    write_atomic(&out.join("similarity.csv"), &similarity_csv(r))?;
    let json = serde_json::to_vec_pretty(r)
        .map_err(|e| Error::Analysis(format!("cannot encode compare.json: {e}")))?;
    write_atomic(&out.join("compare.json"), &json)
}

/// Reads a `compare.json` written by [`write_report`].
pub fn read_report(dir: &Path) -> Result<CompareReport> {
    let p = dir.join("compare.json");
    let text = std::fs::read_to_string(&p).map_err(|e| {
        Error::Input(format!(
            "cannot read '{}': {e}; run `domsim compare` or `domsim analyze` into this folder first",
            p.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Input(format!(
            "'{}' is not a domsim compare.json: {e}",
            p.display()
        ))
    })
}
