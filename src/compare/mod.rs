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

use crate::embeddings::EmbeddingSet;
use crate::error::{input_err, Error, Result};
use crate::metrics::probe::MIN_CLASS;
use crate::metrics::{declarations, registry, Metric, MetricValue, Needs, Output, Params};
use crate::output;

mod across;
mod groups;
mod moments;
mod pairs;
mod rows;
mod similarity;

use across::with_derived;
pub use across::{across_layers, PAIRED, TARGET_KNN_VS_BEST, TARGET_PROBE_VS_BEST};
pub use groups::GROUPS_MAX_N;
pub use moments::FROM_MOMENTS;
pub use pairs::{non_finite, overflow_range, MIN_SET, OVERFLOW_LIMIT, SAME_TOL};
pub use similarity::within_set;

/// What to measure and how (validated; no folders): what `compare` and `analyze` share.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// Metric groups or outputs to compute (`None` = all).
    pub metrics: Option<Vec<String>>,
    /// Estimator parameters.
    pub params: Params,
    /// Compute the within-set layer × layer CKA.
    pub similarity: bool,
    /// Progress bar on a terminal.
    pub progress: bool,
    /// Worker threads for the computation (0: one per core); the results do not depend on it.
    pub threads: usize,
}

/// One `domsim compare`: how ([`CompareOptions`]), which two embedding folders, into which report folder.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// How.
    pub options: CompareOptions,
    /// Source embedding folder.
    pub source: PathBuf,
    /// Target embedding folder.
    pub target: PathBuf,
    /// Report folder.
    pub out: PathBuf,
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
    /// The set.
    pub set: Side,
    /// Row layer.
    pub layer_a: String,
    /// Column layer.
    pub layer_b: String,
    /// The measure.
    pub measure: Similarity,
    /// The value (NaN when undefined, e.g. debiased CKA of a constant layer; `null` in JSON).
    #[serde(deserialize_with = "crate::metrics::f64_or_nan")]
    pub value: f64,
}

/// One of the two sets compared.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The source: images like the model's training data.
    Source,
    /// The target: the user's images.
    Target,
}

impl Side {
    /// `source` or `target`, as in every output file.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A within-set layer × layer similarity (`similarity.csv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Similarity {
    /// Linear CKA.
    CkaLinear,
    /// Debiased linear CKA.
    CkaLinearDebiased,
    /// RBF CKA.
    CkaRbf,
}

impl Similarity {
    /// The name in `similarity.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            Similarity::CkaLinear => "cka_linear",
            Similarity::CkaLinearDebiased => "cka_linear_debiased",
            Similarity::CkaRbf => "cka_rbf",
        }
    }
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
    /// Wall time per metric group and for the within-set similarity, summed over layers (seconds).
    #[serde(default)]
    pub timings_s: std::collections::BTreeMap<String, f64>,
    /// The declarations of the outputs in `layers`, in report order: what the verdict, charts, tables,
    /// `summary.json` and the HTML show (a `compare.json` written before they were recorded: the
    /// registry's, see [`CompareReport::outputs`]).
    #[serde(default, rename = "outputs")]
    pub declared: Vec<Output>,
    /// The source's controls measured ([`crate::controls`]): each change made to the source, in the order
    /// measured; empty when none was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controls: Vec<crate::preprocess::Transform>,
}

impl CompareReport {
    /// The output declarations: as recorded, else the registry's (with the cross-layer ones).
    pub fn outputs(&self) -> Vec<Output> {
        if self.declared.is_empty() {
            with_derived(declarations(&registry()))
        } else {
            self.declared.clone()
        }
    }
}

impl LayerResult {
    /// This layer's value of an output, if computed.
    pub fn value(&self, o: &Output) -> Option<&MetricValue> {
        self.values.iter().find(|v| v.metric == o.id)
    }
}

/// Every selectable name of `metrics` (groups and outputs), sorted.
pub fn metric_names(metrics: &[Box<dyn Metric>]) -> Vec<&'static str> {
    let mut v = Vec::new();
    for m in metrics {
        v.push(m.name());
        v.extend(m.outputs().iter().map(|o| o.id.as_ref()));
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

/// Checks the inputs, prepares and locks `cfg.out` (refusing at once, before any computation, when one of
/// `writes`, the files the caller will write there, is in the way and not domsim's), merges a folder of
/// shards, and computes. The caller renders and writes the report while it holds the returned lock
/// ([`crate::report::export::compare`]): this stage returns values and writes no report file itself.
pub fn prepare_and_compute(
    cfg: &CompareConfig,
    writes: &[String],
) -> Result<(CompareReport, output::OutputLock)> {
    cfg.options.params.validate()?;
    output::check_out_is_not_an_input(
        &cfg.out,
        &[("--source", &cfg.source), ("--target", &cfg.target)],
    )?;
    let prepare = || -> Result<output::OutputLock> {
        let lock = output::prepare_dir(&cfg.out, cfg.force)?;
        for w in writes {
            output::check_writable(&cfg.out.join(w))?;
        }
        Ok(lock)
    };
    if let Some(r) = moments::from_moments(cfg)? {
        return Ok((r, prepare()?));
    }
    let shards = |d: &Path| crate::shard::is_shard_parent(d);
    crate::shard::whole_set(&cfg.source)?;
    crate::shard::whole_set(&cfg.target)?;
    if !shards(&cfg.source) && !shards(&cfg.target) {
        // open both before touching the output folder: a typo creates nothing
        EmbeddingSet::open(&cfg.source)?;
        EmbeddingSet::open(&cfg.target)?;
    }
    let lock = prepare()?;
    // a folder of shards (from `extract --shard I/N`) is merged under OUT/merged/ first
    let src = EmbeddingSet::open(&crate::shard::as_embedding_folder(
        &cfg.source,
        &cfg.out.join("merged").join("source"),
    )?)?;
    let tgt = EmbeddingSet::open(&crate::shard::as_embedding_folder(
        &cfg.target,
        &cfg.out.join("merged").join("target"),
    )?)?;
    Ok((compute(&src, &tgt, &cfg.options)?, lock))
}

/// The metrics `--metrics` asks for (all when `None`), by group or output name; an unknown name is an error
/// that lists the known ones.
fn select_metrics(
    all: Vec<Box<dyn Metric>>,
    wanted: Option<&[String]>,
) -> Result<Vec<Box<dyn Metric>>> {
    let Some(sel) = wanted else {
        return Ok(all);
    };
    let known = metric_names(&all);
    if let Some(s) = sel.iter().find(|s| !known.contains(&s.as_str())) {
        return input_err(format!(
            "unknown metric '{s}'; choose from: {}",
            known.join(", ")
        ));
    }
    Ok(all
        .into_iter()
        .filter(|m| {
            sel.iter()
                .any(|s| s == m.name() || m.outputs().iter().any(|o| o.id == s.as_str()))
        })
        .collect())
}

/// The metrics whose prerequisites hold (`has_labels`: [source, target] have labels with 2 or more
/// classes); each one left out gets a note saying why.
fn runnable_metrics(
    chosen: Vec<Box<dyn Metric>>,
    has_labels: [bool; 2],
    notes: &mut Vec<String>,
) -> Vec<Box<dyn Metric>> {
    chosen
        .into_iter()
        .filter(|m| {
            let (ok, which) = match m.needs() {
                Needs::Nothing => (true, ""),
                Needs::TargetLabels => (has_labels[1], "target"),
                Needs::SourceLabels => (has_labels[0], "source"),
            };
            if !ok {
                notes.push(format!(
                    "{} skipped: the {which} set has no labels with 2 or more classes (labels come from one sub-folder per class at extraction, or a labels.csv)",
                    m.name()
                ));
            }
            ok
        })
        .collect()
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

/// The first 12 characters of a SHA-256 as a manifest records it (all of it when shorter: a hand-edited
/// manifest must not crash the comparison).
fn short_sha(s: &str) -> &str {
    s.char_indices().nth(12).map_or(s, |(i, _)| &s[..i])
}

fn check_models(src: &EmbeddingSet, tgt: &EmbeddingSet, notes: &mut Vec<String>) -> Result<()> {
    if let (Some(a), Some(b)) = (&src.manifest, &tgt.manifest) {
        if a.model.sha256 != b.model.sha256 {
            return input_err(format!(
                "source '{}' was extracted with model {} ({}) and target '{}' with {} ({}); extract both with the same model",
                src.dir.display(),
                a.model.file,
                short_sha(&a.model.sha256),
                tgt.dir.display(),
                b.model.file,
                short_sha(&b.model.sha256)
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

/// Computes the report from two opened sets with the registry's metrics (nothing is written).
pub fn compute(
    src: &EmbeddingSet,
    tgt: &EmbeddingSet,
    cfg: &CompareOptions,
) -> Result<CompareReport> {
    compute_with(registry(), src, tgt, cfg)
}

/// [`compute`] with the given metrics (the registry, or the registry and a metric of a test or a plug-in),
/// on `cfg.threads` workers.
pub fn compute_with(
    all: Vec<Box<dyn Metric>>,
    src: &EmbeddingSet,
    tgt: &EmbeddingSet,
    cfg: &CompareOptions,
) -> Result<CompareReport> {
    crate::threads::run(cfg.threads, || compute_here(all, src, tgt, cfg))?
}

/// [`compute_with`] on the current pool.
fn compute_here(
    all: Vec<Box<dyn Metric>>,
    src: &EmbeddingSet,
    tgt: &EmbeddingSet,
    cfg: &CompareOptions,
) -> Result<CompareReport> {
    cfg.params.validate()?;
    let pairs = match_layers(src, tgt)?;
    let mut notes = Vec::new();
    check_models(src, tgt, &mut notes)?;
    let chosen = select_metrics(all, cfg.metrics.as_deref())?;
    let (s_lab, s_classes) = label_indices(&src.labels);
    let (t_lab, t_classes) = label_indices(&tgt.labels);
    let has_labels = [
        s_lab.is_some() && s_classes.len() >= 2,
        t_lab.is_some() && t_classes.len() >= 2,
    ];
    let runnable = runnable_metrics(chosen, has_labels, &mut notes);

    let t_groups = groups::target_groups(tgt, &t_lab, pairs.last().map(|p| p.1), &mut notes)?;
    let bar = progress(cfg.progress, pairs.len() as u64, "compare layers");
    let mut timings = std::collections::BTreeMap::new();
    let names: Vec<String> = pairs
        .iter()
        .map(|&(si, _)| src.layers[si].name.clone())
        .collect();
    let tol = (pairs::same_tol(src), pairs::same_tol(tgt));
    let rm = rows::RowMetrics {
        runnable: &runnable,
        source: (s_lab.as_deref(), &s_classes),
        target: (t_lab.as_deref(), &t_classes, t_groups.as_deref()),
        params: &cfg.params,
    };
    let pairs::Walked {
        mut layers,
        kept,
        n_rows,
    } = pairs::walk(
        &names,
        &[
            pairs::SetName::of("source", src),
            pairs::SetName::of("target", tgt),
        ],
        |k| {
            Ok(rows::Rows {
                s: src.read_layer(pairs[k].0)?,
                t: tgt.read_layer(pairs[k].1)?,
                tol,
            })
        },
        |depth, name, d| rm.measure(depth, name, d, &mut timings),
        |why| rm.not_computed(why),
        &mut notes,
        &bar,
    )?;
    let kept: Vec<(usize, usize)> = kept.into_iter().map(|k| pairs[k]).collect();
    bar.finish_and_clear();
    across_layers(&mut layers, &cfg.params, &mut notes);
    notes.extend(class_warnings(&t_lab, &t_classes, "target"));

    let similarity = if cfg.similarity {
        let t0 = std::time::Instant::now();
        let v = similarity::both_sets(src, tgt, &kept, n_rows, cfg, &mut notes)?;
        timings.insert("similarity".into(), t0.elapsed().as_secs_f64());
        v
    } else {
        Vec::new()
    };
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
        timings_s: timings,
        declared: with_derived(declarations(&runnable)),
        controls: Vec::new(),
    })
}

/// One warning for the classes too small for the task scores (they are dropped there), naming each with its
/// count.
fn class_warnings(labels: &Option<Vec<usize>>, classes: &[String], set: &str) -> Vec<String> {
    let Some(y) = labels else { return Vec::new() };
    let small: Vec<String> = classes
        .iter()
        .enumerate()
        .filter_map(|(c, name)| {
            let n = y.iter().filter(|&&v| v == c).count();
            (n > 0 && n < MIN_CLASS).then(|| format!("'{name}' ({n})"))
        })
        .collect();
    let mut out = near_identical_classes(classes, set);
    out.extend(match small.len() {
        0 => Vec::new(),
        1 => vec![format!(
            "WARNING: {set} class {} has fewer than {MIN_CLASS} images and is dropped from the task probe and k-NN; add images or merge it",
            small[0]
        )],
        k => vec![format!(
            "WARNING: {k} {set} classes have fewer than {MIN_CLASS} images and are dropped from the task probe and k-NN: {}; add images or merge them",
            small.join(", ")
        )],
    });
    out
}

/// One warning per group of class names that differ only in surrounding spaces or letter case (`cat` and
/// `cat `, `Cat`): they are separate classes to domsim, which is rarely what the folder meant.
fn near_identical_classes(classes: &[String], set: &str) -> Vec<String> {
    let mut by_key: std::collections::BTreeMap<String, Vec<&String>> = Default::default();
    for c in classes {
        by_key.entry(c.trim().to_lowercase()).or_default().push(c);
    }
    by_key
        .values()
        .filter(|v| v.len() > 1)
        .map(|v| {
            let names: Vec<String> = v.iter().map(|c| format!("'{c}'")).collect();
            format!(
                "WARNING: {set} classes {} differ only in spaces or letter case and are counted as {} classes; rename the folders if they are one class",
                names.join(" and "),
                v.len()
            )
        })
        .collect()
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

/// Reads a `compare.json` written by [`crate::report::export::compare`].
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
