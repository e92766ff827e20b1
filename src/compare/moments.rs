//! `compare` without loading a row: Fréchet distance and covariance alignment from the mergeable moments
//! (`stats/`) of both sets, through the same layer-pair loop as rows ([`super::pairs::walk`]).

use indicatif::ProgressBar;

use super::pairs::{same_features, walk, PairData, SetName, SAME_TOL};
use super::{CompareConfig, CompareReport, SetSummary};
use crate::error::{input_err, Error, Result};
use crate::metrics::moments::Moments;
use crate::metrics::{cov::COV_ALIGNMENT, frechet::FRECHET, MetricValue, Output};

/// Outputs that mergeable moments alone determine (count, mean, co-moments).
pub const FROM_MOMENTS: [Output; 2] = [FRECHET, COV_ALIGNMENT];

/// One layer of both sets as moments.
struct MomentPair<'a> {
    s: &'a Moments,
    t: &'a Moments,
}

impl PairData for MomentPair<'_> {
    fn rows(&self) -> (usize, usize) {
        (self.s.n as usize, self.t.n as usize)
    }
    fn dims(&self) -> (usize, usize) {
        (self.s.mean.len(), self.t.mean.len())
    }
    fn unusable(&self, name: &str) -> Option<String> {
        let bad = |m: &Moments| {
            m.mean
                .iter()
                .chain(m.m2.iter())
                .filter(|v| !v.is_finite())
                .count()
        };
        let (a, b) = (bad(self.s), bad(self.t));
        (a + b > 0).then(|| format!(
            "not computed: layer '{name}' has {a} non-finite moment value(s) in the source and {b} in the target (stats/); domsim never computes on them (check the model's outputs at this layer, or re-extract)"
        ))
    }
    fn same_as(&self, prev: &Self) -> Option<String> {
        // a layer that repeats the previous one's features (the head activation and its global pool) is
        // measured once, as on rows
        let row = |v: &ndarray::Array1<f64>| v.view().insert_axis(ndarray::Axis(0)).to_owned();
        let same = |x: &Moments, y: &Moments| {
            same_features(&y.m2, &x.m2, SAME_TOL)
                && same_features(&row(&y.mean), &row(&x.mean), SAME_TOL)
        };
        (same(prev.s, self.s) && same(prev.t, self.t))
            .then(|| format!("moments equal within {SAME_TOL:e}"))
    }
}

/// The values of the wanted [`FROM_MOMENTS`] outputs at one layer.
fn measure(d: &MomentPair, name: &str, wanted: &[String], how: &str) -> Result<Vec<MetricValue>> {
    let mut values = Vec::new();
    if wanted.iter().any(|w| *w == FRECHET.id) {
        let v = crate::metrics::frechet::frechet_from_moments(d.s, d.t)
            .map_err(|e| Error::Analysis(format!("frechet at layer '{name}': {e}")))?;
        values.push(MetricValue::new(
            &FRECHET.id,
            v,
            format!("Frechet distance, covariances ddof=1{how}"),
        ));
    }
    if wanted.iter().any(|w| *w == COV_ALIGNMENT.id) {
        values.push(crate::metrics::cov::alignment_value(
            &d.s.covariance(),
            &d.t.covariance(),
            how,
        ));
    }
    Ok(values)
}

/// The layers both sides hold, by name, in source order: (source index, target index).
fn shared_layers(
    ms: &crate::embeddings::Manifest,
    mt: &crate::embeddings::Manifest,
) -> Vec<(usize, usize)> {
    ms.layers
        .iter()
        .enumerate()
        .filter_map(|(i, ls)| {
            mt.layers
                .iter()
                .position(|l| l.name == ls.name)
                .map(|j| (i, j))
        })
        .collect()
}

/// A side named as the user knows it ([`super::pairs::shown`]).
fn side(which: &'static str, m: &crate::embeddings::Manifest, dir: &std::path::Path) -> SetName {
    SetName {
        which,
        shown: super::pairs::shown(Some(m), dir),
        skipped: None,
    }
}

/// `compare` from moments: when only [`FROM_MOMENTS`] outputs are asked for (`--metrics
/// frechet,cov_alignment --no-similarity`) and both sides carry `stats/` files (`extract --stats`, shards, a
/// folder of shards), Fréchet distance and covariance alignment come from the merged moments of every row.
/// `None` when that does not apply; then `compare` reads the rows as usual.
pub(super) fn from_moments(cfg: &CompareConfig) -> Result<Option<CompareReport>> {
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
    let mut notes = vec![
        "frechet and cov_alignment from mergeable moments (stats/): every row counted, none loaded"
            .to_string(),
    ];
    let pairs = shared_layers(&ms, &mt);
    if pairs.is_empty() {
        return input_err("the source and target share no layer name");
    }
    let names: Vec<String> = pairs
        .iter()
        .map(|&(i, _)| ms.layers[i].name.clone())
        .collect();
    let sides = [
        side("source", &ms, &cfg.source),
        side("target", &mt, &cfg.target),
    ];
    let outs: Vec<Output> = FROM_MOMENTS
        .iter()
        .filter(|o| wanted.iter().any(|w| *w == o.id))
        .cloned()
        .collect();
    let walked = walk(
        &names,
        &sides,
        |k| {
            Ok(MomentPair {
                s: &src[pairs[k].0],
                t: &tgt[pairs[k].1],
            })
        },
        |_, name, d| measure(d, name, wanted, &how),
        |why| {
            outs.iter()
                .map(|o| MetricValue::new(&o.id, f64::NAN, why.to_string()))
                .collect()
        },
        &mut notes,
        &ProgressBar::hidden(),
    )?;
    let summary = |dir: &std::path::Path, m: crate::embeddings::Manifest| SetSummary {
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
        declared: outs,
        layers: walked.layers,
        similarity: Vec::new(),
        notes,
        timings_s: timings,
        controls: Vec::new(),
    }))
}
