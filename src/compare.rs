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
use crate::metrics::probe::MIN_CLASS;
use crate::metrics::stats::{corrected_cv_ci_floor, holm, sample_variance, subsample};
use crate::metrics::{cov::COV_ALIGNMENT, frechet::FRECHET, mmd::MMD2, probe, transfer};
use crate::metrics::{
    declarations, registry, Ctx, Direction, Metric, MetricValue, Needs, Output, Params, SetData,
};
use crate::output;

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
    /// `source` or `target`.
    pub set: String,
    /// Row layer.
    pub layer_a: String,
    /// Column layer.
    pub layer_b: String,
    /// `cka_linear`, `cka_linear_debiased` or `cka_rbf`.
    pub measure: String,
    /// The value (NaN when undefined, e.g. debiased CKA of a constant layer; `null` in JSON).
    #[serde(deserialize_with = "crate::metrics::f64_or_nan")]
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
    if let Some(r) = from_moments(cfg)? {
        return Ok((r, prepare()?));
    }
    let shards = |d: &Path| crate::shard::is_shard_parent(d);
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

/// How a set is named to the user: the image folder it was extracted from, else its own folder.
fn set_name(set: &EmbeddingSet) -> String {
    set.manifest
        .as_ref()
        .map(|m| m.images.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| set.dir.display().to_string())
}

/// One layer's two matrices can be compared: enough rows on each side, the same dimension.
fn check_pair(
    name: &str,
    (src, xs): (&EmbeddingSet, &Array2<f64>),
    (tgt, xt): (&EmbeddingSet, &Array2<f64>),
) -> Result<()> {
    for (which, dir, n) in [
        ("source", &src.dir, xs.nrows()),
        ("target", &tgt.dir, xt.nrows()),
    ] {
        if n < MIN_SET {
            // the user's folder (from the extraction manifest), not domsim's embedding cache
            let shown = set_name(if which == "source" { src } else { tgt });
            let skipped = dir.join("skipped.csv");
            return input_err(format!(
                "the {which} '{shown}' holds {n} image(s); comparing needs at least {MIN_SET} per set (50 or more for advice to act on). Add images{}",
                if skipped.is_file() {
                    format!(", or see '{}' for files that could not be read", skipped.display())
                } else {
                    String::new()
                }
            ));
        }
    }
    if xs.ncols() != xt.ncols() {
        return Err(Error::Layer {
            layer: name.to_string(),
            message: format!(
                "layer '{name}' has dimension {} in the source but {} in the target",
                xs.ncols(),
                xt.ncols()
            ),
        });
    }
    Ok(())
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

/// [`compute`] with the given metrics (the registry, or the registry and a metric of a test or a plug-in).
pub fn compute_with(
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

    let t_groups = target_groups(tgt, &t_lab, pairs.last().map(|p| p.1), &mut notes)?;
    let bar = progress(cfg.progress, pairs.len() as u64, "compare layers");
    let mut layers: Vec<LayerResult> = Vec::new();
    let mut timings = std::collections::BTreeMap::new();
    let mut kept = Vec::new();
    let mut n_rows = (0, 0);
    let mut prev: Option<(Array2<f64>, Array2<f64>)> = None;
    for &(si, ti) in &pairs {
        let name = &src.layers[si].name;
        bar.set_message(format!("compare {name}"));
        let xs = src.read_layer(si)?;
        let xt = tgt.read_layer(ti)?;
        check_pair(name, (src, &xs), (tgt, &xt))?;
        let bad = (non_finite(&xs), non_finite(&xt));
        let huge = (overflow_range(&xs), overflow_range(&xt));
        if bad.0 + bad.1 + huge.0 + huge.1 > 0 {
            let why = format!(
                "not computed: layer '{name}' holds {} non-finite value(s) (NaN or infinity) and {} beyond ±{OVERFLOW_LIMIT:e} (their squares and sums overflow) in the source, {} and {} in the target; domsim never computes on them (check the model's outputs at this layer, or the .npy file)",
                bad.0, huge.0, bad.1, huge.1
            );
            notes.push(format!("WARNING: {why}"));
            layers.push(LayerResult {
                depth: layers.len(),
                layer: name.clone(),
                dim: xs.ncols(),
                n_source: xs.nrows(),
                n_target: xt.nrows(),
                values: runnable
                    .iter()
                    .flat_map(|m| m.outputs().iter())
                    .map(|o| MetricValue::new(&o.id, f64::NAN, why.clone()))
                    .collect(),
            });
            prev = None;
            bar.inc(1);
            continue;
        }
        if let (Some((ps, pt)), Some(last)) = (&prev, layers.last()) {
            let (tol_s, tol_t) = (same_tol(src), same_tol(tgt));
            if same_features(ps, &xs, tol_s) && same_features(pt, &xt, tol_t) {
                notes.push(format!(
                    "layer '{name}' holds the same features as '{}' (max relative difference <= {:e}) and is measured once, as '{}'",
                    last.layer, tol_s.max(tol_t), last.layer
                ));
                bar.inc(1);
                continue;
            }
        }
        n_rows = (xs.nrows(), xt.nrows());
        let depth = layers.len();
        let s = SetData {
            x: &xs,
            labels: s_lab.as_deref(),
            classes: &s_classes,
            groups: None,
        };
        let t = SetData {
            x: &xt,
            labels: t_lab.as_deref(),
            classes: &t_classes,
            groups: t_groups.as_deref(),
        };
        let ctx = Ctx {
            params: &cfg.params,
            depth,
        };
        let mut values = Vec::new();
        for m in &runnable {
            let t0 = std::time::Instant::now();
            let v = m.compute(&s, &t, &ctx).map_err(|e| {
                Error::Analysis(format!("metric {} at layer '{name}': {e}", m.name()))
            })?;
            *timings.entry(m.name().to_string()).or_insert(0.0) += t0.elapsed().as_secs_f64();
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
        kept.push((si, ti));
        prev = Some((xs, xt));
        bar.inc(1);
    }
    bar.finish_and_clear();
    across_layers(&mut layers, &cfg.params, &mut notes);
    notes.extend(class_warnings(&t_lab, &t_classes, "target"));

    let mut similarity = Vec::new();
    if cfg.similarity {
        let t0 = std::time::Instant::now();
        let (ks, kt): (Vec<usize>, Vec<usize>) = kept.iter().copied().unzip();
        for (set_name, set, idx) in [("source", src, &ks), ("target", tgt, &kt)] {
            similarity.extend(within_set(set_name, set, idx, &cfg.params, cfg.progress)?);
        }
        timings.insert("similarity".into(), t0.elapsed().as_secs_f64());
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
        timings_s: timings,
        declared: with_derived(declarations(&runnable)),
        controls: Vec::new(),
    })
}

/// Outputs that mergeable moments alone determine (count, mean, co-moments).
pub const FROM_MOMENTS: [Output; 2] = [FRECHET, COV_ALIGNMENT];

/// `compare` without loading a row: when only [`FROM_MOMENTS`] outputs are asked for (`--metrics
/// frechet,cov_alignment --no-similarity`) and both sides carry `stats/` files (`extract --stats`, shards, a
/// folder of shards), Fréchet distance and covariance alignment come from the merged moments of every row.
/// `None` when that does not apply; then `compare` reads the rows as usual.
fn from_moments(cfg: &CompareConfig) -> Result<Option<CompareReport>> {
    use crate::metrics::moments::Moments;
    let wanted = match &cfg.options.metrics {
        Some(m) if !cfg.options.similarity && !m.is_empty() => m,
        _ => return Ok(None),
    };
    if !wanted
        .iter()
        .all(|w| FROM_MOMENTS.iter().any(|o| o.id == w.as_str()))
    {
        return Ok(None);
    }
    let (Some((ms, src)), Some((mt, tgt))) = (
        crate::shard::layer_moments(&cfg.source)?,
        crate::shard::layer_moments(&cfg.target)?,
    ) else {
        return Ok(None);
    };
    if ms.model.sha256 != mt.model.sha256 {
        return input_err(format!(
            "source '{}' and target '{}' were extracted with different models; extract both with the same model",
            cfg.source.display(),
            cfg.target.display()
        ));
    }
    let t0 = std::time::Instant::now();
    let how = format!(
        "; from mergeable moments (stats/) of all {}+{} rows, no row loaded",
        ms.n_images, mt.n_images
    );
    let mut layers: Vec<LayerResult> = Vec::new();
    let mut notes = vec![
        "frechet and cov_alignment from mergeable moments (stats/): every row counted, none loaded"
            .to_string(),
    ];
    let mut prev: Option<(&Moments, &Moments)> = None;
    for (ls, a) in ms.layers.iter().zip(&src) {
        let Some(j) = mt.layers.iter().position(|l| l.name == ls.name) else {
            continue;
        };
        let b = &tgt[j];
        if a.mean.len() != b.mean.len() {
            return input_err(format!(
                "layer '{}' has dimension {} in the source but {} in the target",
                ls.name,
                a.mean.len(),
                b.mean.len()
            ));
        }
        for (which, n) in [("source", a.n), ("target", b.n)] {
            if (n as usize) < MIN_SET {
                return input_err(format!(
                    "the {which} holds {n} image(s); comparing needs at least {MIN_SET} per set"
                ));
            }
        }
        // a layer that repeats the previous one's features (the head activation and its global pool) is
        // measured once, as on rows
        let same = |x: &Moments, y: &Moments| {
            let row = |v: &ndarray::Array1<f64>| v.view().insert_axis(ndarray::Axis(0)).to_owned();
            same_features(&y.m2, &x.m2, SAME_TOL)
                && same_features(&row(&y.mean), &row(&x.mean), SAME_TOL)
        };
        if let (Some((pa, pb)), Some(last)) = (prev, layers.last()) {
            if same(pa, a) && same(pb, b) {
                let last: &LayerResult = last;
                notes.push(format!(
                    "layer '{}' holds the same features as '{}' (moments equal within {SAME_TOL:e}) and is measured once, as '{}'",
                    ls.name, last.layer, last.layer
                ));
                continue;
            }
        }
        prev = Some((a, b));
        let mut values = Vec::new();
        if wanted.iter().any(|w| *w == FRECHET.id) {
            let v = crate::metrics::frechet::frechet_from_moments(a, b)
                .map_err(|e| Error::Analysis(format!("frechet at layer '{}': {e}", ls.name)))?;
            values.push(MetricValue::new(
                &FRECHET.id,
                v,
                format!("Frechet distance, covariances ddof=1{how}"),
            ));
        }
        if wanted.iter().any(|w| *w == COV_ALIGNMENT.id) {
            values.push(crate::metrics::cov::alignment_value(
                &a.covariance(),
                &b.covariance(),
                &how,
            ));
        }
        layers.push(LayerResult {
            depth: layers.len(),
            layer: ls.name.clone(),
            dim: a.mean.len(),
            n_source: a.n as usize,
            n_target: b.n as usize,
            values,
        });
    }
    if layers.is_empty() {
        return input_err("the source and target share no layer name");
    }
    let summary = |dir: &Path, m: crate::embeddings::Manifest| SetSummary {
        dir: dir.display().to_string(),
        n: m.n_images,
        classes: Vec::new(),
        manifest: Some(m),
    };
    let mut timings = std::collections::BTreeMap::new();
    timings.insert("moments".to_string(), t0.elapsed().as_secs_f64());
    Ok(Some(CompareReport {
        domsim_version: env!("CARGO_PKG_VERSION").into(),
        params: cfg.options.params.clone(),
        source: summary(&cfg.source, ms),
        target: summary(&cfg.target, mt),
        declared: FROM_MOMENTS
            .iter()
            .filter(|o| wanted.iter().any(|w| *w == o.id))
            .cloned()
            .collect(),
        layers,
        similarity: Vec::new(),
        notes,
        timings_s: timings,
        controls: Vec::new(),
    }))
}

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
fn same_tol(set: &EmbeddingSet) -> f64 {
    match set.manifest.as_ref().map(|m| m.dtype) {
        Some(crate::npy::Dtype::Float16) => SAME_TOL.max(2f64.powi(-10)),
        _ => SAME_TOL,
    }
}

/// Whether two matrices hold the same features (same shape, max |a − b| ≤ tol · max |a|).
fn same_features(a: &Array2<f64>, b: &Array2<f64>, tol: f64) -> bool {
    if a.dim() != b.dim() {
        return false;
    }
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(b.iter())
        .all(|(x, y)| (x - y).abs() <= tol * scale)
}

/// Outputs compared with the best layer by paired per-fold differences, with the output that holds the
/// difference (`<metric>_vs_best`).
pub const PAIRED: [(Output, Output); 2] = [
    (probe::TARGET_PROBE_BAL_ACC, TARGET_PROBE_VS_BEST),
    (transfer::TARGET_KNN_BAL_ACC, TARGET_KNN_VS_BEST),
];

/// The target probe's balanced accuracy minus the best layer's, on the same folds.
pub const TARGET_PROBE_VS_BEST: Output = Output::new(
    "target_probe_bal_acc_vs_best",
    "target task probe, difference to the best layer (paired folds, corrected 95% CI)",
    Direction::MoreUseful,
    None,
    None,
    true,
    false,
);

/// The target k-NN's balanced accuracy minus the best layer's, on the same folds.
pub const TARGET_KNN_VS_BEST: Output = Output::new(
    "target_knn_bal_acc_vs_best",
    "target k-NN, difference to the best layer (paired folds, corrected 95% CI)",
    Direction::MoreUseful,
    None,
    None,
    true,
    false,
);

/// `outs` followed by the cross-layer outputs ([`PAIRED`]) of those among them.
fn with_derived(mut outs: Vec<Output>) -> Vec<Output> {
    for (base, derived) in PAIRED {
        if outs.contains(&base) {
            outs.push(derived);
        }
    }
    outs
}

/// Cross-layer statistics, once every layer is measured: Holm-adjusted MMD² p-values, and for each output
/// in [`PAIRED`] the difference of each layer to the best layer on the same folds, with its corrected
/// repeated-CV interval (`<metric>_vs_best`; 0 at the best layer).
pub fn across_layers(layers: &mut [LayerResult], params: &Params, notes: &mut Vec<String>) {
    let ps: Vec<Option<f64>> = layers
        .iter()
        .map(|l| {
            l.values
                .iter()
                .find(|v| v.metric == MMD2.id)
                .and_then(|v| v.p_value)
        })
        .collect();
    let adj = holm(&ps);
    for (l, a) in layers.iter_mut().zip(adj) {
        if let Some(v) = l.values.iter_mut().find(|v| v.metric == MMD2.id) {
            v.p_holm = a;
        }
    }
    let n_tests = ps.iter().flatten().count();
    if n_tests > 0
        && (n_tests as f64) / (params.permutations as f64 + 1.0) > crate::metrics::stats::ALPHA
    {
        notes.push(format!(
            "WARNING: with {} permutations no Holm-adjusted MMD2 p-value over {n_tests} layers can reach {}: raise --permutations to at least {}",
            params.permutations,
            crate::metrics::stats::ALPHA,
            (n_tests as f64 / crate::metrics::stats::ALPHA).ceil() as usize - 1
        ));
    }
    for (base, derived) in PAIRED {
        let folds: Vec<Option<(f64, Vec<f64>)>> = layers
            .iter()
            .map(|l| {
                l.values
                    .iter()
                    .find(|v| v.metric == base.id)
                    .and_then(|v| v.value.map(|x| (x, v.folds.clone())))
                    .filter(|(_, f)| !f.is_empty())
            })
            .collect();
        let Some(best) = (0..layers.len())
            .filter(|&i| folds[i].is_some())
            .max_by(|&a, &b| {
                let (x, y) = (folds[a].as_ref().unwrap().0, folds[b].as_ref().unwrap().0);
                x.total_cmp(&y).then(a.cmp(&b))
            })
        else {
            continue;
        };
        let best_folds = folds[best].as_ref().unwrap().1.clone();
        let best_name = layers[best].layer.clone();
        let k = params.folds.max(2);
        let diffs: Vec<Option<Vec<f64>>> = folds
            .iter()
            .map(|f| {
                f.as_ref()
                    .filter(|(_, f)| f.len() == best_folds.len())
                    .map(|(_, f)| f.iter().zip(&best_folds).map(|(a, b)| a - b).collect())
            })
            .collect();
        // The variance of 15 correlated fold differences is itself noisy (about ±20 %), enough to move a
        // borderline layer's bound across the margin when only the seed changes. Each layer's variance is
        // floored at the mean over the other layers: an interval is never narrower than its own, and the
        // tie decision follows the stable mean difference (seeds 0-9 on the X-rays: no label flips).
        let vars: Vec<f64> = diffs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != best)
            .filter_map(|(_, d)| d.as_deref().and_then(sample_variance))
            .collect();
        let floor = if vars.is_empty() {
            0.0
        } else {
            vars.iter().sum::<f64>() / vars.len() as f64
        };
        for (i, l) in layers.iter_mut().enumerate() {
            let Some(d) = &diffs[i] else { continue };
            let k_used = l
                .values
                .iter()
                .find(|v| v.metric == base.id)
                .and_then(|v| v.details.get("folds").and_then(|x| x.as_u64()))
                .map_or(k, |x| x as usize);
            let name = derived.id.as_ref();
            let mut v = match corrected_cv_ci_floor(d, k_used, floor) {
                Some(_) if i == best => {
                    MetricValue::new(name, 0.0, format!("the best layer ('{best_name}')"))
                }
                Some((m, ci)) => {
                    let mut v = MetricValue::new(
                        name,
                        m,
                        format!(
                            "paired difference to the best layer '{best_name}' on the same {} folds; CI: corrected repeated-CV t interval (Nadeau & Bengio 2003), variance floored at the mean over layers ({floor:.3e}); tied when ci_high >= -{} (margin)",
                            d.len(),
                            params.tie_margin
                        ),
                    );
                    v.ci = Some(ci);
                    v
                }
                None => MetricValue::new(name, f64::NAN, "not computed: too few folds"),
            };
            v.details = serde_json::json!({"best_layer": best_name, "margin": params.tie_margin});
            l.values.push(v);
        }
    }
}

/// Most target rows searched for near-duplicates (an n x n similarity in row blocks).
pub const GROUPS_MAX_N: usize = 20_000;

/// The target's groups for the task scores: the user's `groups.csv` (`path,group`, matched to `index.csv`)
/// when present, else near-duplicates at the deepest layer ([`crate::metrics::groups`]). `None` without
/// labels, or when no row shares a group.
fn target_groups(
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

/// Warnings for classes too small for the task scores (they are dropped there).
fn class_warnings(labels: &Option<Vec<usize>>, classes: &[String], set: &str) -> Vec<String> {
    let Some(y) = labels else { return Vec::new() };
    classes
        .iter()
        .enumerate()
        .filter_map(|(c, name)| {
            let n = y.iter().filter(|&&v| v == c).count();
            (n > 0 && n < MIN_CLASS).then(|| {
                format!(
                    "WARNING: {set} class '{name}' has {n} image(s) (< {MIN_CLASS}) and is dropped from the task probe and k-NN; add images or merge it"
                )
            })
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

/// Layer × layer CKA (linear, debiased linear, RBF) within one set.
pub fn within_set(
    set_name: &str,
    set: &EmbeddingSet,
    layer_idx: &[usize],
    params: &Params,
    show: bool,
) -> Result<Vec<SimilarityValue>> {
    let bar = progress(
        show,
        layer_idx.len() as u64,
        &format!("CKA within {set_name}"),
    );
    let mut raws = Vec::new();
    let mut grams = Vec::new();
    let mut sub: Option<Vec<usize>> = None;
    for &i in layer_idx {
        let x: Array2<f64> = set.read_layer(i)?;
        let idx = sub.get_or_insert_with(|| {
            let ctx = Ctx { params, depth: 0 };
            let mut rng = ctx.rng(&format!("within_set_{set_name}"));
            subsample(x.nrows(), params.cka_rbf_max_n, &mut rng)
        });
        grams.push(centred_rbf_gram(&x.select(Axis(0), idx), params.cka_rbf_t));
        raws.push(x);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let reps: Vec<LinearRep> = raws.iter().map(LinearRep::new).collect();
    let names: Vec<&str> = layer_idx
        .iter()
        .map(|&i| set.layers[i].name.as_str())
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The paired difference to the best layer, against a hand computation (numpy-free, in the comment):
    /// 2 x 3-fold CV, fold scores below; diffs to the best layer (1); the variance of each layer's diffs is
    /// floored at the mean over the non-best layers ((8.0e-5 + 1.4667e-4) / 2 = 1.1333e-4); se =
    /// sqrt((1/6 + 1/2) var); t(0.975, 5) = 2.5705818366.
    /// - layer 0: mean −0.1, its own variance 8.0e-5 is floored: [−0.122344191, −0.077655809] (not tied);
    /// - layer 2: mean −0.00333, own variance 1.4667e-4: [−0.028751927, +0.022085260] (tied at margin 0.01).
    #[test]
    fn paired_difference_to_the_best_layer_matches_a_hand_computation() {
        let folds = [
            [0.80, 0.82, 0.78, 0.81, 0.79, 0.80],
            [0.90, 0.91, 0.89, 0.92, 0.88, 0.90],
            [0.89, 0.90, 0.90, 0.90, 0.89, 0.90],
        ];
        let mut layers: Vec<LayerResult> = folds
            .iter()
            .enumerate()
            .map(|(d, f)| {
                let mut v = MetricValue::new(
                    probe::TARGET_PROBE_BAL_ACC.id.as_ref(),
                    f.iter().sum::<f64>() / 6.0,
                    "test",
                );
                v.folds = f.to_vec();
                v.details = serde_json::json!({"folds": 3});
                LayerResult {
                    depth: d,
                    layer: format!("l{d}"),
                    dim: 4,
                    n_source: 60,
                    n_target: 60,
                    values: vec![v],
                }
            })
            .collect();
        let params = Params {
            folds: 3,
            cv_repeats: 2,
            ..Params::default()
        };
        across_layers(&mut layers, &params, &mut vec![]);
        let delta = |i: usize| {
            layers[i]
                .values
                .iter()
                .find(|v| v.metric == TARGET_PROBE_VS_BEST.id.as_ref())
                .unwrap()
                .clone()
        };
        assert_eq!(delta(1).value, Some(0.0), "the best layer");
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        let (v0, v2) = (delta(0), delta(2));
        let (lo0, hi0) = v0.ci.unwrap();
        let (lo2, hi2) = v2.ci.unwrap();
        assert!(close(v0.value.unwrap(), -0.1), "{v0:?}");
        assert!(
            close(lo0, -0.122344191) && close(hi0, -0.077655809),
            "{v0:?}"
        );
        assert!(close(v2.value.unwrap(), -0.003333333), "{v2:?}");
        assert!(
            close(lo2, -0.028751927) && close(hi2, 0.022085260),
            "{v2:?}"
        );
        // the tie decision the verdict reads: layer 2 reaches the margin, layer 0 does not
        assert!(hi2 >= -params.tie_margin && hi0 < -params.tie_margin);
    }
}
