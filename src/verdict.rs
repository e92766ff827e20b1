//! From per-layer metrics to a recommendation. The rule (also in the README):
//!
//! **Per layer**, with `dom` = the domain-probe accuracy, `p` = the MMD² permutation p-value, and `task` = the
//! target-probe balanced accuracy (when the target has labels):
//! - the layer is *close* when `dom ≤ 0.75` (a linear probe barely tells the sets apart) or `p > 0.01` (no
//!   significant distribution difference);
//! - the layer is *useful* when `task` is statistically tied with the best layer's: `task ≥ ci_low` of the best
//!   layer's bootstrap interval (without intervals: within 0.02 of the best);
//! - `transfers`: close, or useful;
//! - `domain-specific`: `dom ≥ 0.95` and `p ≤ 0.01`, and not useful;
//! - `partial`: everything else (a moderate gap, or a gap with some task signal).
//!
//! **The cut** ("freeze layers up to L, re-train from L+1"):
//! - with target labels: L is the deepest layer tied with the best target probe (same tie rule), so the most
//!   layers are frozen for no measurable loss; the LogME peak is quoted as a second opinion;
//! - without labels: L is the deepest layer of the initial run of *close* layers; when the very first layer is
//!   not close there is no safe cut.
//!
//! **Poor match**: when the earliest layer is already far (`dom ≥ 0.95`, `p ≤ 0.01`), the verdict says so
//! plainly. Without target labels, or when the best target probe stays below 0.75 balanced accuracy, it
//! advises a domain-specific model or training from scratch; otherwise it says the features help despite
//! the gap.
//!
//! Ties in the probe values are broken towards the deeper layer; missing metrics never count as evidence.

use crate::compare::CompareReport;
use crate::embeddings::Manifest;

/// Domain-probe accuracy at or below which a layer is close.
pub const CLOSE_DOMAIN_ACC: f64 = 0.75;
/// Domain-probe accuracy at or above which a layer is far.
pub const FAR_DOMAIN_ACC: f64 = 0.95;
/// Significance level of the MMD² test.
pub const ALPHA: f64 = 0.01;
/// Best target-probe balanced accuracy from which frozen features count as useful despite a domain gap.
pub const USEFUL_TASK: f64 = 0.75;
/// Tie margin for the task probe when no CI is available.
pub const TIE_MARGIN: f64 = 0.02;

/// The numbers the rule reads at one layer.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    /// Depth index.
    pub depth: usize,
    /// Layer name.
    pub layer: String,
    /// Domain-probe accuracy.
    pub domain_acc: Option<f64>,
    /// MMD² value.
    pub mmd2: Option<f64>,
    /// MMD² permutation p-value.
    pub mmd_p: Option<f64>,
    /// Target-probe balanced accuracy.
    pub task: Option<f64>,
    /// Its bootstrap CI.
    pub task_ci: Option<(f64, f64)>,
    /// LogME on the target.
    pub logme: Option<f64>,
}

/// The label of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Label {
    /// Source and target are close here, or the layer is useful for the target task.
    Transfers,
    /// In between.
    Partial,
    /// Separates the domains and adds nothing for the target task.
    DomainSpecific,
}

impl Label {
    /// The label as printed.
    pub fn as_str(&self) -> &'static str {
        match self {
            Label::Transfers => "transfers",
            Label::Partial => "partial",
            Label::DomainSpecific => "domain-specific",
        }
    }
}

/// The verdict at one layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerVerdict {
    /// Depth index.
    pub depth: usize,
    /// Layer name.
    pub layer: String,
    /// Label.
    pub label: Label,
    /// One line quoting the numbers.
    pub reason: String,
}

/// The recommended cut.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cut {
    /// Freeze layers up to and including this depth.
    pub depth: usize,
    /// Its name.
    pub layer: String,
    /// The evidence, in words with numbers.
    pub evidence: String,
}

/// `verdict.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// Per layer, depth order.
    pub layers: Vec<LayerVerdict>,
    /// The cut, when one can be recommended.
    pub cut: Option<Cut>,
    /// A one-paragraph answer.
    pub summary: String,
    /// Set when even the earliest layer is far apart.
    pub poor_match: Option<String>,
    /// Input mismatches and estimate warnings.
    pub warnings: Vec<String>,
    /// The rule, for the record.
    pub rule: String,
    /// The numbers the rule read.
    pub evidence: Vec<Evidence>,
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.3}"))
}

fn fmt_p(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| {
        if x < 0.001 {
            format!("{x:.1e}")
        } else {
            format!("{x:.3}")
        }
    })
}

fn is_close(e: &Evidence) -> bool {
    e.domain_acc.is_some_and(|a| a <= CLOSE_DOMAIN_ACC) || e.mmd_p.is_some_and(|p| p > ALPHA)
}

fn is_far(e: &Evidence) -> bool {
    e.domain_acc.is_some_and(|a| a >= FAR_DOMAIN_ACC) && e.mmd_p.is_none_or(|p| p <= ALPHA)
}

/// Index of the best task value, and the threshold a layer must reach to tie with it.
fn task_best(ev: &[Evidence]) -> Option<(usize, f64)> {
    let (bi, best) = ev
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.task.map(|t| (i, t)))
        .fold(None, |acc: Option<(usize, f64)>, (i, t)| match acc {
            Some((_, b)) if b > t => acc,
            _ => Some((i, t)),
        })?;
    let thr = ev[bi]
        .task_ci
        .map_or(best - TIE_MARGIN, |(lo, _)| lo.min(best));
    Some((bi, thr))
}

/// Applies the rule (module docs) to per-layer evidence.
pub fn decide(ev: &[Evidence], warnings: Vec<String>) -> Verdict {
    let best = task_best(ev);
    let useful = |e: &Evidence| match (best, e.task) {
        (Some((_, thr)), Some(t)) => t >= thr,
        _ => false,
    };
    let layers: Vec<LayerVerdict> = ev
        .iter()
        .map(|e| {
            let (close, far, use_) = (is_close(e), is_far(e), useful(e));
            let label = if close || use_ {
                Label::Transfers
            } else if far {
                Label::DomainSpecific
            } else {
                Label::Partial
            };
            let mut why = format!(
                "domain probe {} (0.5 = indistinguishable), MMD2 {} p={}",
                fmt(e.domain_acc),
                fmt(e.mmd2),
                fmt_p(e.mmd_p)
            );
            if e.task.is_some() {
                why.push_str(&format!(
                    "; target probe {}{}",
                    fmt(e.task),
                    if use_ {
                        " (tied with the best layer)"
                    } else {
                        ""
                    }
                ));
            }
            let reason = match label {
                Label::Transfers if close => format!("close to the source: {why}"),
                Label::Transfers => {
                    format!("useful for the target task despite the domain gap: {why}")
                }
                Label::DomainSpecific => format!(
                    "separates the domains{}: {why}",
                    if e.task.is_some() {
                        " and is below the best target probe"
                    } else {
                        ""
                    }
                ),
                Label::Partial => format!("moderate gap: {why}"),
            };
            LayerVerdict {
                depth: e.depth,
                layer: e.layer.clone(),
                label,
                reason,
            }
        })
        .collect();

    let cut = if let Some((bi, thr)) = best {
        let deepest = ev
            .iter()
            .rposition(|e| e.task.is_some_and(|t| t >= thr))
            .unwrap_or(bi);
        let logme_peak = ev.iter().filter(|e| e.logme.is_some()).max_by(|a, b| {
            a.logme
                .unwrap_or(f64::MIN)
                .total_cmp(&b.logme.unwrap_or(f64::MIN))
        });
        let tied: Vec<usize> = ev
            .iter()
            .filter(|e| e.task.is_some_and(|t| t >= thr))
            .map(|e| e.depth)
            .collect();
        Some(Cut {
            depth: ev[deepest].depth,
            layer: ev[deepest].layer.clone(),
            evidence: format!(
                "the target probe peaks at depth {} ({}: balanced accuracy {}); layers at depths {:?} are tied with it (>= {:.3}), the deepest of them is depth {}{}",
                ev[bi].depth,
                ev[bi].layer,
                fmt(ev[bi].task),
                tied,
                thr,
                ev[deepest].depth,
                logme_peak.map_or(String::new(), |l| format!("; LogME peaks at depth {} ({})", l.depth, fmt(l.logme)))
            ),
        })
    } else {
        let run = ev.iter().take_while(|e| is_close(e)).count();
        (run > 0).then(|| {
            let e = &ev[run - 1];
            Cut {
                depth: e.depth,
                layer: e.layer.clone(),
                evidence: format!(
                    "no target labels: the first {run} layer(s) are close to the source (domain probe <= {CLOSE_DOMAIN_ACC} or MMD2 p > {ALPHA}); from depth {} on the gap is significant{}",
                    e.depth + 1,
                    ev.get(run).map_or(String::new(), |n| format!(" (domain probe {}, p={})", fmt(n.domain_acc), fmt_p(n.mmd_p)))
                ),
            }
        })
    };

    let best_task = best.and_then(|(bi, _)| ev[bi].task);
    let poor_match = ev.first().filter(|e| is_far(e)).map(|e| {
        let gap = format!(
            "Even the earliest layer ({}) separates source and target (domain probe {}, MMD2 p={}): to this model the target images look unlike its training images at every depth.",
            e.layer,
            fmt(e.domain_acc),
            fmt_p(e.mmd_p)
        );
        match best_task {
            Some(t) if t >= USEFUL_TASK => format!(
                "{gap} Yet frozen features still separate the target classes (best balanced accuracy {t:.3}), so transfer helps despite the gap; a domain-specific pretrained model may still do better."
            ),
            _ => format!(
                "{gap} The model is a poor match: consider a domain-specific pretrained model or training from scratch; if you fine-tune this one, expect to re-train most layers."
            ),
        }
    });
    let n = |l: Label| layers.iter().filter(|v| v.label == l).count();
    let summary = format!(
        "{} of {} layers transfer, {} partial, {} domain-specific. {}{}",
        n(Label::Transfers),
        layers.len(),
        n(Label::Partial),
        n(Label::DomainSpecific),
        match &cut {
            Some(c) if c.depth + 1 == ev.len() => format!(
                "Recommended cut: freeze every measured layer up to depth {} ({}) and train only what comes after it (a new head). ",
                c.depth, c.layer
            ),
            Some(c) => format!("Recommended cut: freeze layers up to depth {} ({}) and re-train from depth {} on. ", c.depth, c.layer, c.depth + 1),
            None => "No safe cut: no layer is close to the source and the target has no labels to judge usefulness. ".into(),
        },
        poor_match.as_deref().unwrap_or("")
    );
    Verdict {
        layers,
        cut,
        summary: summary.trim().to_string(),
        poor_match,
        warnings,
        rule: format!(
            "close: domain probe <= {CLOSE_DOMAIN_ACC} or MMD2 p > {ALPHA}; far: domain probe >= {FAR_DOMAIN_ACC} and p <= {ALPHA}; useful: target probe >= lower CI bound of the best layer (or within {TIE_MARGIN}); transfers = close or useful; domain-specific = far and not useful; else partial. Cut: deepest layer tied with the best target probe, else the last of the initial run of close layers."
        ),
        evidence: ev.to_vec(),
    }
}

/// Reads the evidence out of a compare report.
pub fn evidence(r: &CompareReport) -> Vec<Evidence> {
    r.layers
        .iter()
        .map(|l| {
            let get = |m: &str| l.values.iter().find(|v| v.metric == m);
            Evidence {
                depth: l.depth,
                layer: l.layer.clone(),
                domain_acc: get("domain_probe_acc").and_then(|v| v.value),
                mmd2: get("mmd2_rbf").and_then(|v| v.value),
                mmd_p: get("mmd2_rbf").and_then(|v| v.p_value),
                task: get("target_probe_bal_acc").and_then(|v| v.value),
                task_ci: get("target_probe_bal_acc").and_then(|v| v.ci),
                logme: get("logme_target").and_then(|v| v.value),
            }
        })
        .collect()
}

/// Input-mismatch warnings from the two extraction manifests.
pub fn input_warnings(source: Option<&Manifest>, target: Option<&Manifest>) -> Vec<String> {
    let mut w = Vec::new();
    for (name, m) in [("source", source), ("target", target)] {
        let Some(m) = m else { continue };
        let n = m.n_images.max(1) as f64;
        let p = &m.preprocessing;
        if m.input.channels == 3 && p.n_grey as f64 / n > 0.5 {
            w.push(format!(
                "{name}: {} of {} images are greyscale, fed to an RGB model by channel replication; colour filters in early layers see no colour",
                p.n_grey, m.n_images
            ));
        }
        if p.n_upscaled as f64 / n > 0.25 {
            w.push(format!(
                "{name}: {} of {} images are smaller than the model input ({}x{}) and were upscaled (median native size {}x{})",
                p.n_upscaled, m.n_images, m.input.width, m.input.height, p.median_native_size[0], p.median_native_size[1]
            ));
        }
        if m.n_skipped > 0 {
            w.push(format!(
                "{name}: {} files were skipped (see skipped.csv)",
                m.n_skipped
            ));
        }
    }
    if let (Some(s), Some(t)) = (source, target) {
        let area = |m: &Manifest| {
            (m.preprocessing.median_native_size[0] as f64
                * m.preprocessing.median_native_size[1] as f64)
                .sqrt()
        };
        let (a, b) = (area(s), area(t));
        if a > 0.0 && b > 0.0 && (a / b).max(b / a) > 2.0 {
            w.push(format!(
                "native resolutions differ by {:.1}x (median source {}x{}, target {}x{}): objects appear at different scales after resizing",
                (a / b).max(b / a),
                s.preprocessing.median_native_size[0],
                s.preprocessing.median_native_size[1],
                t.preprocessing.median_native_size[0],
                t.preprocessing.median_native_size[1]
            ));
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(depth: usize, dom: f64, p: f64, task: Option<(f64, f64, f64)>) -> Evidence {
        Evidence {
            depth,
            layer: format!("l{depth}"),
            domain_acc: Some(dom),
            mmd2: Some(0.1),
            mmd_p: Some(p),
            task: task.map(|t| t.0),
            task_ci: task.map(|t| (t.1, t.2)),
            logme: task.map(|t| t.0 - 1.0),
        }
    }

    #[test]
    fn table_of_labels_without_labels() {
        // (domain acc, p) → expected label
        let cases = [
            (0.55, 0.5, Label::Transfers),
            (0.90, 0.5, Label::Transfers),   // not significant: close
            (0.70, 0.001, Label::Transfers), // probe near chance: close
            (0.85, 0.005, Label::Partial),   // moderate gap
            (0.99, 0.005, Label::DomainSpecific), // far
            (0.96, 0.02, Label::Transfers),  // p > 0.01 wins: close
        ];
        let evs: Vec<Evidence> = cases
            .iter()
            .enumerate()
            .map(|(i, c)| ev(i, c.0, c.1, None))
            .collect();
        let v = decide(&evs, vec![]);
        for (lv, c) in v.layers.iter().zip(cases.iter()) {
            assert_eq!(lv.label, c.2, "{lv:?}");
            assert!(lv.reason.contains("domain probe"));
        }
        // cut: the initial run of close layers ends at depth 2
        assert_eq!(v.cut.as_ref().unwrap().depth, 2);
        assert!(v.poor_match.is_none());
    }

    #[test]
    fn cut_is_the_deepest_layer_tied_with_the_best_probe() {
        let evs = vec![
            ev(0, 0.99, 0.005, Some((0.70, 0.66, 0.74))),
            ev(1, 0.99, 0.005, Some((0.86, 0.83, 0.89))),
            ev(2, 0.99, 0.005, Some((0.88, 0.85, 0.91))), // best
            ev(3, 0.99, 0.005, Some((0.86, 0.82, 0.90))), // tied (>= 0.85)
            ev(4, 0.99, 0.005, Some((0.80, 0.76, 0.84))), // not tied
        ];
        let v = decide(&evs, vec![]);
        let labels: Vec<Label> = v.layers.iter().map(|l| l.label).collect();
        assert_eq!(
            labels,
            [
                Label::DomainSpecific,
                Label::Transfers,
                Label::Transfers,
                Label::Transfers,
                Label::DomainSpecific
            ]
        );
        let cut = v.cut.unwrap();
        assert_eq!(cut.depth, 3);
        assert!(cut.evidence.contains("peaks at depth 2"));
        let pm = v.poor_match.unwrap();
        assert!(
            pm.contains("earliest layer") && pm.contains("transfer helps despite the gap"),
            "{pm}"
        );
    }

    #[test]
    fn no_cut_when_nothing_is_close_and_no_labels() {
        let evs = vec![ev(0, 0.99, 0.005, None), ev(1, 0.999, 0.005, None)];
        let v = decide(&evs, vec![]);
        assert!(v.cut.is_none());
        assert!(v.summary.contains("No safe cut"));
        assert!(v.poor_match.unwrap().contains("poor match"));
    }

    #[test]
    fn ties_without_intervals_use_the_margin_and_prefer_depth() {
        let mut evs = vec![
            ev(0, 0.6, 0.5, Some((0.80, 0.0, 0.0))),
            ev(1, 0.6, 0.5, Some((0.79, 0.0, 0.0))),
        ];
        for e in &mut evs {
            e.task_ci = None;
        }
        assert_eq!(decide(&evs, vec![]).cut.unwrap().depth, 1);
    }

    #[test]
    fn missing_metrics_are_not_evidence() {
        let e = Evidence {
            depth: 0,
            layer: "x".into(),
            ..Default::default()
        };
        let v = decide(&[e], vec![]);
        assert_eq!(v.layers[0].label, Label::Partial);
        assert!(v.layers[0].reason.contains("n/a"));
    }
}
