//! The cross-layer step of `compare`, once every layer is measured: Holm-adjusted MMD² p-values, and the
//! paired difference of each layer to the best one. Its outputs are declared here, as a metric declares
//! its own: a new cross-layer output is this file only.

use super::LayerResult;
use crate::metrics::stats::{corrected_cv_ci_floor, holm, sample_variance};
use crate::metrics::{mmd::MMD2, probe, transfer, Direction, MetricValue, Output, Params};

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
)
.with_interval();

/// The target k-NN's balanced accuracy minus the best layer's, on the same folds.
pub const TARGET_KNN_VS_BEST: Output = Output::new(
    "target_knn_bal_acc_vs_best",
    "target k-NN, difference to the best layer (paired folds, corrected 95% CI)",
    Direction::MoreUseful,
)
.with_interval();

/// `outs` followed by the cross-layer outputs ([`PAIRED`]) of those among them.
pub(super) fn with_derived(mut outs: Vec<Output>) -> Vec<Output> {
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
    holm_adjust(layers, params, notes);
    for (base, derived) in PAIRED {
        paired_to_best(layers, params, &base, &derived);
    }
}

/// Holm's adjustment of the MMD² p-values over the layers, with a warning when the permutations cannot
/// reach the level.
fn holm_adjust(layers: &mut [LayerResult], params: &Params, notes: &mut Vec<String>) {
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
}

/// The paired difference of each layer's `base` output to the best layer's, on the same folds, as the
/// `derived` output (0 at the best layer).
fn paired_to_best(layers: &mut [LayerResult], params: &Params, base: &Output, derived: &Output) {
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
        return;
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
