//! The metrics engine: per-layer measures between a source and a target embedding set, and within-set
//! layer × layer similarity. A new metric is one file implementing [`Metric`] plus one line in [`registry`].
//!
//! Definitions follow `notes/metrics.md` (shared with the project): unbiased MMD² with a median-heuristic RBF
//! kernel (Gretton et al. 2012), Fréchet distance, covariance alignment, linear probes with proxy
//! A-distance (Ben-David et al. 2010), LogME (You et al. 2021), and linear / debiased / RBF CKA (Kornblith et
//! al. 2019), never between unpaired source and target rows.

pub mod cka;
pub mod cov;
pub mod frechet;
pub mod groups;
pub mod kernel;
pub mod linalg;
pub mod logme;
pub mod logreg;
pub mod mmd;
pub mod moments;
pub mod probe;
pub mod stats;
pub mod transfer;

use std::borrow::Cow;
use std::ops::RangeInclusive;

use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// One set's matrix at one layer, with its labels when known.
pub struct SetData<'a> {
    /// n × d features (f64).
    pub x: &'a Array2<f64>,
    /// Class index per row, when the set has labels.
    pub labels: Option<&'a [usize]>,
    /// Class names, indexed by label.
    pub classes: &'a [String],
    /// Group id per row (near-duplicate images, or the user's `groups.csv`): rows of one group never
    /// straddle a cross-validation fold. `None`: every row is its own group.
    pub groups: Option<&'a [usize]>,
}

/// Parameters shared by every metric; all of them are written to `compare.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Master seed.
    pub seed: u64,
    /// Permutations for the MMD² test (B).
    pub permutations: usize,
    /// Folds for cross-validated probes (reduced to the smallest class count when needed).
    pub folds: usize,
    /// Repeats of the stratified k-fold cross-validation (one fold assignment shared by every layer).
    #[serde(default = "default_repeats")]
    pub cv_repeats: usize,
    /// Equivalence margin for "tied with the best layer" (balanced accuracy).
    #[serde(default = "default_margin")]
    pub tie_margin: f64,
    /// Neighbours of the k-NN score.
    #[serde(default = "default_knn_k")]
    pub knn_k: usize,
    /// Inverse L2 regularisation of the logistic probes (scikit-learn's C).
    pub c: f64,
    /// Most rows per set used by probes (a seeded subsample beyond that).
    pub probe_max_n: usize,
    /// Most rows per set used by MMD² (a seeded subsample beyond that).
    pub mmd_max_n: usize,
    /// Most rows used for RBF CKA (n × n kernels; a seeded subsample beyond that).
    pub cka_rbf_max_n: usize,
    /// RBF CKA bandwidth factor t: σ = t · sqrt(median squared distance).
    pub cka_rbf_t: f64,
}

fn default_repeats() -> usize {
    3
}
fn default_margin() -> f64 {
    0.01
}
fn default_knn_k() -> usize {
    10
}

impl Default for Params {
    fn default() -> Self {
        Params {
            seed: 0,
            permutations: 1999,
            folds: 5,
            cv_repeats: default_repeats(),
            tie_margin: default_margin(),
            knn_k: default_knn_k(),
            c: 1.0,
            probe_max_n: 5000,
            mmd_max_n: 20_000,
            cka_rbf_max_n: 2000,
            cka_rbf_t: 0.5,
        }
    }
}

impl Params {
    /// Permutations accepted (fewer than 99 cannot reach the 0.01 level).
    pub const PERMUTATIONS_RANGE: RangeInclusive<usize> = 99..=100_000;
    /// Folds accepted.
    pub const FOLDS_RANGE: RangeInclusive<usize> = 2..=20;
    /// Repeats of the cross-validation accepted.
    pub const CV_REPEATS_RANGE: RangeInclusive<usize> = 1..=20;
    /// Neighbours of the k-NN score accepted.
    pub const KNN_K_RANGE: RangeInclusive<usize> = 1..=100;
    /// Rows per set for probes accepted.
    pub const PROBE_MAX_N_RANGE: RangeInclusive<usize> = 4..=1_000_000;
    /// Rows per set for MMD² accepted (the cost grows as n²).
    pub const MMD_MAX_N_RANGE: RangeInclusive<usize> = 4..=50_000;
    /// Rows for RBF CKA accepted (n × n kernels).
    pub const CKA_RBF_MAX_N_RANGE: RangeInclusive<usize> = 4..=10_000;

    /// Checks every setting's range, for any caller of the library (the command line's flags are these
    /// fields; its own range parsers only say it earlier). Each message names the flag and the field.
    pub fn validate(&self) -> crate::error::Result<()> {
        let bad = |m: String| Err(crate::error::Error::Input(m));
        if !(self.c.is_finite() && (1e-6..=1e6).contains(&self.c)) {
            return bad(format!(
                "--C must be between 1e-6 and 1e6 (got {}; Params::c)",
                self.c
            ));
        }
        if !Self::PERMUTATIONS_RANGE.contains(&self.permutations) {
            let why = if self.permutations < *Self::PERMUTATIONS_RANGE.start() {
                "fewer cannot reach the 0.01 level"
            } else {
                "more do not move a p-value reported to three decimals, and cost time"
            };
            return bad(format!(
                "--permutations must be between {} and {} (got {}; Params::permutations): {why}",
                Self::PERMUTATIONS_RANGE.start(),
                Self::PERMUTATIONS_RANGE.end(),
                self.permutations
            ));
        }
        let ranges = [
            ("--folds", "folds", self.folds, Self::FOLDS_RANGE),
            (
                "--cv-repeats",
                "cv_repeats",
                self.cv_repeats,
                Self::CV_REPEATS_RANGE,
            ),
            ("--knn-k", "knn_k", self.knn_k, Self::KNN_K_RANGE),
            (
                "--probe-max-n",
                "probe_max_n",
                self.probe_max_n,
                Self::PROBE_MAX_N_RANGE,
            ),
            (
                "--mmd-max-n",
                "mmd_max_n",
                self.mmd_max_n,
                Self::MMD_MAX_N_RANGE,
            ),
            (
                "--cka-rbf-max-n",
                "cka_rbf_max_n",
                self.cka_rbf_max_n,
                Self::CKA_RBF_MAX_N_RANGE,
            ),
        ];
        for (flag, field, v, r) in ranges {
            if !r.contains(&v) {
                return bad(format!(
                    "{flag} must be between {} and {} (got {v}; Params::{field})",
                    r.start(),
                    r.end()
                ));
            }
        }
        if !(self.tie_margin.is_finite() && (0.0..=0.2).contains(&self.tie_margin)) {
            return bad(format!(
                "--tie-margin must be between 0 and 0.2 (got {}; Params::tie_margin)",
                self.tie_margin
            ));
        }
        if !(self.cka_rbf_t.is_finite() && self.cka_rbf_t > 0.0) {
            return bad(format!(
                "the RBF CKA bandwidth factor must be finite and positive (got {}; Params::cka_rbf_t)",
                self.cka_rbf_t
            ));
        }
        Ok(())
    }
}

/// The context a metric computes in.
pub struct Ctx<'a> {
    /// Shared parameters.
    pub params: &'a Params,
    /// Depth index of the layer (mixed into the seed so layers get independent draws).
    pub depth: usize,
}

impl Ctx<'_> {
    /// A generator seeded from the master seed, the layer and the name of what draws (a metric's own
    /// [`Metric::name`], or a report part's): no stream number is chosen by hand, and two users of
    /// randomness never share a stream unless they share a name.
    pub fn rng(&self, name: &str) -> ChaCha8Rng {
        let mut r = ChaCha8Rng::seed_from_u64(self.params.seed);
        r.set_stream(
            stream_of(name)
                .wrapping_mul(1_000_003)
                .wrapping_add(self.depth as u64),
        );
        r
    }

    /// A generator seeded from the master seed and a name only (the same at every layer): for draws that
    /// layers must share, such as fold assignments and subsamples, so layers are compared on equal terms.
    pub fn shared_rng(&self, name: &str) -> ChaCha8Rng {
        let mut r = ChaCha8Rng::seed_from_u64(self.params.seed);
        r.set_stream(stream_of(name));
        r
    }
}

/// The random stream of a name.
fn stream_of(name: &str) -> u64 {
    fnv1a64(name)
}

/// FNV-1a, 64 bit, of a string's UTF-8 bytes: random streams named by a string here, and the shard a file
/// belongs to ([`crate::shard`]).
pub fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a higher value of an output says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The two sets are farther apart (a distance, a separability).
    Farther,
    /// The two sets are closer (an alignment).
    Closer,
    /// The layer is more useful for a task.
    MoreUseful,
    /// A control explains more of the gap between the sets ([`crate::controls`]).
    Explains,
}

/// The panel of `metrics_by_depth.png` an output is drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Panel {
    /// Distribution distance between the sets.
    Distance,
    /// Can a probe tell the sets apart?
    Domain,
    /// Usefulness for a labelled task.
    Task,
    /// Drawn where the task panel goes when no task output has values (no labels).
    Alignment,
    /// Label evidence scores (LogME, H-score): each on its own axis, beside the other.
    Evidence,
    /// Where the gap comes from (the controls' shares): their own chart, `gap_sources.png`.
    Sources,
}

/// The declaration of one metric output: everything the verdict, the charts, the tables, `summary.json`
/// and the HTML need to show it, so that none of them names a metric. Each metric module declares its
/// outputs as constants; the verdict refers to those constants, never to a string.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Output {
    /// Its name in `metrics.csv` and `--metrics`.
    pub id: Cow<'static, str>,
    /// What it is, with its estimator (chart legends, `summary.json`).
    pub label: Cow<'static, str>,
    /// Header of its column in the terminal and HTML tables, if it has one.
    pub column: Option<Cow<'static, str>>,
    /// The chart panel it is drawn in, if any.
    pub panel: Option<Panel>,
    /// What a higher value says.
    pub direction: Direction,
    /// True when its values carry a 95 % interval.
    pub interval: bool,
    /// True when its values carry a permutation p-value (shown beside its column).
    pub p_value: bool,
}

impl Output {
    /// A declaration with no table column, no chart panel, no interval and no p-value; the `const fn`
    /// builders below add them, so that metrics declare their outputs as constants:
    /// `Output::new("mmd2_rbf", "…", Direction::Farther).column("MMD2").panel(Panel::Distances).with_p_value()`.
    pub const fn new(id: &'static str, label: &'static str, direction: Direction) -> Self {
        Output {
            id: Cow::Borrowed(id),
            label: Cow::Borrowed(label),
            column: None,
            panel: None,
            direction,
            interval: false,
            p_value: false,
        }
    }

    /// Shown as a column of the per-layer tables, headed `header`.
    pub const fn column(mut self, header: &'static str) -> Self {
        // the header it replaces (`None` from `new`) holds nothing to free, and a `const fn` cannot run a
        // destructor: it is forgotten
        std::mem::forget(self.column.replace(Cow::Borrowed(header)));
        self
    }

    /// Drawn on this panel of the per-depth chart.
    pub const fn panel(mut self, panel: Panel) -> Self {
        self.panel = Some(panel);
        self
    }

    /// Its values carry a 95 % interval.
    pub const fn with_interval(mut self) -> Self {
        self.interval = true;
        self
    }

    /// Its values carry a p-value.
    pub const fn with_p_value(mut self) -> Self {
        self.p_value = true;
        self
    }

    /// A value of this output.
    pub fn value(&self, value: f64, note: impl Into<String>) -> MetricValue {
        MetricValue::new(&self.id, value, note)
    }
}

/// One output value of a metric at one layer (one row of `metrics.csv`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricValue {
    /// Output name (`mmd2_rbf`, `domain_probe_acc`, ...).
    pub metric: String,
    /// The value; `None` only with a `note` saying why.
    pub value: Option<f64>,
    /// 95 % confidence interval, when estimated.
    pub ci: Option<(f64, f64)>,
    /// Permutation p-value, when tested.
    pub p_value: Option<f64>,
    /// Holm-adjusted p-value across layers, when tested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_holm: Option<f64>,
    /// Estimator details and warnings.
    pub note: String,
    /// Parameters specific to this value (σ, folds, ...), for `compare.json`.
    pub details: serde_json::Value,
    /// Per-fold scores (repeat-major) of cross-validated values: the unit of paired layer comparisons.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "vec_f64_or_nan"
    )]
    pub folds: Vec<f64>,
}

impl MetricValue {
    /// A plain value with a note.
    pub fn new(metric: &str, value: f64, note: impl Into<String>) -> Self {
        let (value, note) = finite(value, note.into());
        MetricValue {
            metric: metric.into(),
            value,
            ci: None,
            p_value: None,
            p_holm: None,
            note,
            details: serde_json::Value::Null,
            folds: Vec::new(),
        }
    }
}

/// Keeps NaN out of reports: a non-finite value becomes `None` with the reason in the note.
pub fn finite(v: f64, note: String) -> (Option<f64>, String) {
    if v.is_finite() {
        (Some(v), note)
    } else {
        let why = format!("value not finite ({v}); check for constant or degenerate features");
        (
            None,
            if note.is_empty() {
                why
            } else {
                format!("{note}; {why}")
            },
        )
    }
}

/// What a metric needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Source and target matrices only.
    Nothing,
    /// Target labels.
    TargetLabels,
    /// Source labels.
    SourceLabels,
}

impl Needs {
    /// The labels a per-set metric needs: the target's or the source's.
    pub fn labels_of(target: bool) -> Self {
        if target {
            Needs::TargetLabels
        } else {
            Needs::SourceLabels
        }
    }
}

/// The set a per-set metric reads (the target, else the source), with its labels.
pub fn labelled<'a>(
    target: bool,
    s: &'a SetData<'a>,
    t: &'a SetData<'a>,
) -> Result<(&'a SetData<'a>, &'a [usize])> {
    let set = if target { t } else { s };
    let which = if target { "target" } else { "source" };
    let y = set.labels.ok_or_else(|| crate::Error::Prerequisite {
        metric: format!("{which}-label metrics"),
        message: format!(
            "the {which} set has no labels; put its images in one sub-folder per class (or give a labels.csv)"
        ),
    })?;
    Ok((set, y))
}

/// A per-layer measure between source and target.
pub trait Metric: Send + Sync {
    /// Group name used by `--metrics` (outputs are selectable by their own names too).
    fn name(&self) -> &'static str;
    /// The outputs it returns, in that order.
    fn outputs(&self) -> &'static [Output];
    /// Prerequisites.
    fn needs(&self) -> Needs {
        Needs::Nothing
    }
    /// Computes the outputs at one layer.
    fn compute(&self, source: &SetData, target: &SetData, ctx: &Ctx) -> Result<Vec<MetricValue>>;
}

/// The output declarations of `metrics`, in report order.
pub fn declarations(metrics: &[Box<dyn Metric>]) -> Vec<Output> {
    metrics
        .iter()
        .flat_map(|m| m.outputs().iter().cloned())
        .collect()
}

/// Every metric, in report order.
pub fn registry() -> Vec<Box<dyn Metric>> {
    vec![
        Box::new(mmd::Mmd2Rbf),
        Box::new(frechet::Frechet),
        Box::new(cov::CovAlignment),
        Box::new(probe::DomainProbe),
        Box::new(probe::SourceSpread),
        Box::new(probe::TaskProbe { target: true }),
        Box::new(logme::LogMe { target: true }),
        Box::new(cka::CkaLabel { target: true }),
        Box::new(transfer::Knn { target: true }),
        Box::new(transfer::HScore { target: true }),
        Box::new(probe::TaskProbe { target: false }),
        Box::new(logme::LogMe { target: false }),
        Box::new(cka::CkaLabel { target: false }),
    ]
}

/// Reads a JSON number, or `null` (how serde_json writes NaN) as NaN: domsim reads back what it wrote.
pub fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`f64_or_nan`] for a list.
pub fn vec_f64_or_nan<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<f64>, D::Error> {
    use serde::Deserialize;
    Ok(Vec::<Option<f64>>::deserialize(d)?
        .into_iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::Params;

    /// The library checks its settings for any caller, at each edge: the defaults pass, the ends of every
    /// range pass, one step beyond fails with the flag and field named.
    #[test]
    fn params_are_validated_at_every_edge() {
        assert!(Params::default().validate().is_ok());
        type Set = fn(&mut Params, bool);
        let cases: [(&str, Set); 9] = [
            ("--C", |p, out| p.c = if out { 1.1e6 } else { 1e6 }),
            ("--permutations", |p, out| {
                p.permutations = if out { 98 } else { 99 }
            }),
            ("--folds", |p, out| p.folds = if out { 21 } else { 20 }),
            ("--cv-repeats", |p, out| {
                p.cv_repeats = if out { 0 } else { 1 }
            }),
            ("--knn-k", |p, out| p.knn_k = if out { 101 } else { 100 }),
            ("--probe-max-n", |p, out| {
                p.probe_max_n = if out { 3 } else { 4 }
            }),
            ("--mmd-max-n", |p, out| {
                p.mmd_max_n = if out { 50_001 } else { 50_000 }
            }),
            ("--cka-rbf-max-n", |p, out| {
                p.cka_rbf_max_n = if out { 10_001 } else { 10_000 }
            }),
            ("--tie-margin", |p, out| {
                p.tie_margin = if out { f64::NAN } else { 0.2 }
            }),
        ];
        for (flag, set) in cases {
            let mut p = Params::default();
            set(&mut p, false);
            assert!(p.validate().is_ok(), "{flag} at its edge");
            set(&mut p, true);
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains("Params::"), "{flag}: {e}");
        }
        let p = Params {
            cka_rbf_t: 0.0,
            ..Params::default()
        };
        assert!(p.validate().is_err());
    }
}
