//! From per-layer metrics to a recommendation: one decision, from which the labels, the plan (where to cut)
//! and the summary are all derived, so they can never contradict each other. The rule (also in the README):
//!
//! **Per layer**, with `dom` the domain-probe accuracy and its corrected repeated-CV interval, `p_holm` the
//! Holm-adjusted MMD² p-value across layers, `task` the target-probe balanced accuracy with its interval,
//! and `Δ` the paired difference of `task` to the best layer on the same folds (with its interval):
//! - *close* needs positive evidence: the upper bound of `dom`'s interval is ≤ 0.75 (the two sets are hard
//!   to tell apart); a test too weak to see a gap is no evidence of closeness;
//! - *within the source's spread*: `dom ≤ spread + 0.05`, with `spread` the same probe between two groups of
//!   the source's own classes (`source_spread_acc`): a gap no larger than class content alone makes inside
//!   the model's training distribution is no evidence of a domain shift (two ImageNet-like photo sets with
//!   different classes separate at deep layers for that reason alone);
//! - *far*: `dom ≥ 0.95`, `p_holm ≤ 0.01`, and not within the source's spread;
//! - *tied* with the best layer: the upper bound of `Δ`'s interval is ≥ −margin (default 0.01: not shown
//!   worse than the best by more than the margin);
//! - *useful*: tied, and the layer itself is clearly above chance (the lower bound of `task` > 1/k) and at
//!   least the floor 0.70 balanced accuracy. A best layer below the floor makes no layer useful.
//! - label `transfers` = close, within the spread, or useful; `domain-specific` = far and not useful;
//!   `partial` otherwise.
//!
//! **The plan**:
//! - with target labels and no useful layer: fine-tune every layer (the frozen features do not solve the
//!   task), and consider a domain-specific model; the summary says "poor match";
//! - with target labels and an *input-level shift* (the earliest layer is far): fine-tune every layer, the
//!   first blocks included (Lee et al. 2023, "Surgical fine-tuning": input-level shifts are repaired in the
//!   first blocks); the deepest useful layer is quoted as the cheaper fallback;
//! - with target labels otherwise: freeze through the deepest useful layer (as much as is free) and train
//!   the rest;
//! - without labels: no cut from domain separability alone. The depth profile is reported as a diagnosis
//!   (where the shift starts); a cut is given only through the initial run of layers that are close or
//!   within the source's spread; otherwise
//!   the advice is to label a few images per class, which is what usefulness needs.
//!
//! Missing metrics never count as evidence.

use crate::compare::CompareReport;
use crate::embeddings::Manifest;

/// Upper interval bound of the domain-probe accuracy at or below which a layer is close.
pub const CLOSE_DOMAIN_ACC: f64 = 0.75;
/// Domain-probe accuracy at or above which a layer is far (with a significant Holm-adjusted MMD² test).
pub const FAR_DOMAIN_ACC: f64 = 0.95;
pub use crate::metrics::stats::ALPHA;
/// Balanced accuracy a layer's task probe must reach to be useful.
pub const USEFUL_FLOOR: f64 = 0.70;
/// How far the domain probe may exceed the source's own spread and still count as within it.
pub const SPREAD_MARGIN: f64 = 0.05;

/// The numbers the rule reads at one layer.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    /// Depth index.
    pub depth: usize,
    /// Layer name.
    pub layer: String,
    /// Domain-probe accuracy.
    pub domain_acc: Option<f64>,
    /// Its corrected repeated-CV interval.
    #[serde(default)]
    pub domain_ci: Option<(f64, f64)>,
    /// The domain probe between two groups of the source's classes (`source_spread_acc`).
    #[serde(default)]
    pub spread: Option<f64>,
    /// MMD² value.
    pub mmd2: Option<f64>,
    /// MMD² permutation p-value.
    pub mmd_p: Option<f64>,
    /// Holm-adjusted MMD² p-value.
    #[serde(default)]
    pub mmd_p_holm: Option<f64>,
    /// Target-probe balanced accuracy.
    pub task: Option<f64>,
    /// Its interval.
    pub task_ci: Option<(f64, f64)>,
    /// Paired difference of the task probe to the best layer, with its interval.
    #[serde(default)]
    pub task_vs_best: Option<(f64, (f64, f64))>,
    /// k-NN balanced accuracy (a second opinion, quoted).
    #[serde(default)]
    pub knn: Option<f64>,
    /// LogME on the target.
    pub logme: Option<f64>,
    /// Number of target classes the task probe used (chance = 1/k).
    #[serde(default)]
    pub classes: Option<usize>,
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

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanKind {
    /// Freeze through the cut, train the rest.
    FreezeThrough,
    /// Fine-tune every layer.
    TrainAll,
    /// No recommendation can be made from this evidence.
    NoAdvice,
}

/// The plan, in one place: the cut (when freezing), the kind, and the words.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// The kind of plan.
    pub kind: PlanKind,
    /// One sentence.
    pub text: String,
}

/// `verdict.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// Per layer, depth order.
    pub layers: Vec<LayerVerdict>,
    /// The plan.
    pub plan: Plan,
    /// The cut, when the plan freezes layers.
    pub cut: Option<Cut>,
    /// Where the shift starts, in words (the depth profile of the domain gap).
    pub diagnosis: String,
    /// A one-paragraph answer.
    pub summary: String,
    /// Set when the frozen features do not solve the target task, or (without labels) even the earliest
    /// layer is far.
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

fn fmt_ci(v: Option<(f64, f64)>) -> String {
    v.map_or(String::new(), |(a, b)| format!(" [{a:.3}, {b:.3}]"))
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

/// The facts the rule derives at one layer; everything else is derived from these.
#[derive(Debug, Clone, Copy, Default)]
struct Facts {
    close: bool,
    within_spread: bool,
    far: bool,
    tied: bool,
    useful: bool,
}

fn facts(e: &Evidence, margin: f64, labelled_ok: bool) -> Facts {
    let close = e.domain_ci.is_some_and(|(_, hi)| hi <= CLOSE_DOMAIN_ACC);
    let within_spread =
        matches!((e.domain_acc, e.spread), (Some(d), Some(s)) if d <= s + SPREAD_MARGIN);
    let far = e.domain_acc.is_some_and(|a| a >= FAR_DOMAIN_ACC)
        && e.mmd_p_holm.or(e.mmd_p).is_none_or(|p| p <= ALPHA)
        && !within_spread;
    let tied = e.task_vs_best.is_some_and(|(_, (_, hi))| hi >= -margin);
    let chance = 1.0 / e.classes.unwrap_or(2).max(2) as f64;
    let above_chance = e.task_ci.is_some_and(|(lo, _)| lo > chance);
    let useful = labelled_ok && tied && above_chance && e.task.is_some_and(|t| t >= USEFUL_FLOOR);
    Facts {
        close,
        within_spread,
        far,
        tied,
        useful,
    }
}

/// The plan, the cut and the poor-match note.
type Advice = (Plan, Option<Cut>, Option<String>);

/// Where the shift starts: the first far layer, the initial run of close or within-spread layers, and the
/// sentence that says so.
struct Shift {
    first_far: Option<usize>,
    close_run: usize,
    diagnosis: String,
}

/// Applies the rule (module docs) to per-layer evidence, with the tie margin in balanced accuracy: facts per
/// layer ([`facts`]), a label per layer ([`layer_verdict`]), where the shift starts ([`shift`]), then the
/// advice ([`advice_with_labels`] or [`advice_without_labels`]).
pub fn decide(ev: &[Evidence], margin: f64, warnings: Vec<String>) -> Verdict {
    let labelled = ev.iter().any(|e| e.task.is_some());
    let fs: Vec<Facts> = ev.iter().map(|e| facts(e, margin, labelled)).collect();
    let any_useful = fs.iter().any(|f| f.useful);
    let layers: Vec<LayerVerdict> = ev
        .iter()
        .zip(&fs)
        .map(|(e, f)| layer_verdict(e, f))
        .collect();
    let sh = shift(ev, &fs);
    let (plan, cut, poor_match) = if labelled {
        advice_with_labels(ev, &fs, margin, sh.first_far == Some(0))
    } else {
        advice_without_labels(ev, &sh)
    };
    let diagnosis = sh.diagnosis;
    let n = |l: Label| layers.iter().filter(|v| v.label == l).count();
    let summary = format!(
        "{} of {} layers transfer, {} partial, {} domain-specific. {} {}{}",
        n(Label::Transfers),
        layers.len(),
        n(Label::Partial),
        n(Label::DomainSpecific),
        plan.text,
        diagnosis,
        poor_match
            .as_deref()
            .map_or(String::new(), |p| format!(" {p}"))
    );
    debug_assert!(any_useful || plan.kind != PlanKind::FreezeThrough || !labelled);
    Verdict {
        layers,
        plan,
        cut,
        diagnosis,
        summary: summary.trim().to_string(),
        poor_match,
        warnings,
        rule: format!(
            "close: upper bound of the domain-probe interval <= {CLOSE_DOMAIN_ACC}; within spread: domain probe <= source_spread_acc + {SPREAD_MARGIN}; far: domain probe >= {FAR_DOMAIN_ACC}, Holm-adjusted MMD2 p <= {ALPHA}, not within spread; tied: paired difference to the best target probe with interval reaching -{margin}; useful: tied, lower bound above chance, value >= {USEFUL_FLOOR}; transfers = close, within spread or useful; domain-specific = far and not useful; else partial. Plan with labels: no useful layer -> fine-tune all (poor match); earliest layer far (input-level shift) -> fine-tune all, first blocks included; else freeze through the deepest useful layer. Without labels: freeze through the initial run of close or within-spread layers, else no advice."
        ),
        evidence: ev.to_vec(),
    }
}

/// One layer's label and the reason, from its facts.
fn layer_verdict(e: &Evidence, f: &Facts) -> LayerVerdict {
    let label = if f.close || f.within_spread || f.useful {
        Label::Transfers
    } else if f.far {
        Label::DomainSpecific
    } else {
        Label::Partial
    };
    let mut why = format!(
    "domain probe {}{} (0.5 = indistinguishable; the source's own class groups: {}), MMD2 {} p={} (Holm {})",
    fmt(e.domain_acc),
    fmt_ci(e.domain_ci),
    fmt(e.spread),
    fmt(e.mmd2),
    fmt_p(e.mmd_p),
    fmt_p(e.mmd_p_holm)
);
    if e.task.is_some() {
        why.push_str(&format!(
            "; target probe {}{}{}",
            fmt(e.task),
            fmt_ci(e.task_ci),
            match (f.useful, f.tied, e.task_vs_best) {
                (true, _, _) => " (tied with the best layer)".to_string(),
                (false, true, _) =>
                    " (tied with the best layer, but below the usefulness floor or chance)"
                        .to_string(),
                (false, false, Some((d, _))) => format!(" ({d:+.3} vs the best layer)"),
                _ => String::new(),
            }
        ));
    }
    let reason = match label {
    Label::Transfers if f.close => format!("close to the source: {why}"),
    Label::Transfers if f.within_spread && !f.useful => format!(
        "the gap is no larger than between the source's own class groups (class content, not domain): {why}"
    ),
    Label::Transfers => {
        format!("useful for the target task despite the domain gap: {why}")
    }
    Label::DomainSpecific => format!(
        "separates the domains{}: {why}",
        if e.task.is_some() {
            " and is not useful for the target task"
        } else {
            ""
        }
    ),
    Label::Partial => format!("neither shown close nor far, nor useful: {why}"),
};
    LayerVerdict {
        depth: e.depth,
        layer: e.layer.clone(),
        label,
        reason,
    }
}

/// Where the shift starts.
fn shift(ev: &[Evidence], fs: &[Facts]) -> Shift {
    // where the shift starts
    let first_far = fs.iter().position(|f| f.far);
    let close_run = fs.iter().take_while(|f| f.close || f.within_spread).count();
    let diagnosis = match first_far {
        Some(0) => format!(
            "The shift is at the input level: the earliest layer ({}) already separates source and target (domain probe {}). Input-level shifts are best repaired by tuning the first blocks (Lee et al. 2023, surgical fine-tuning), so early layers are not safe to freeze.",
            ev[0].layer,
            fmt(ev[0].domain_acc)
        ),
        Some(d) => format!(
            "The sets separate from depth {} ({}, domain probe {}); {} earlier layer(s) are close or within the source's own spread.",
            ev[d].depth,
            ev[d].layer,
            fmt(ev[d].domain_acc),
            close_run
        ),
        None if close_run == ev.len() && !ev.is_empty() => {
            "No layer separates the sets beyond the source's own spread: every layer is close or within it.".to_string()
        }
        None => "No layer separates the sets clearly (no layer is far).".to_string(),
    };

    Shift {
        first_far,
        close_run,
        diagnosis,
    }
}

/// The advice with target labels: freeze through the deepest useful layer, or fine-tune all (input-level
/// shift, or no useful layer: a poor match).
fn advice_with_labels(ev: &[Evidence], fs: &[Facts], margin: f64, input_shift: bool) -> Advice {
    let best = ev
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.task.map(|t| (i, t)))
        .fold(None, |acc: Option<(usize, f64)>, (i, t)| match acc {
            Some((_, b)) if b >= t => acc,
            _ => Some((i, t)),
        });
    let deepest_useful = fs.iter().rposition(|f| f.useful);
    let cut_at = |i: usize, evidence: String| Cut {
        depth: ev[i].depth,
        layer: ev[i].layer.clone(),
        evidence,
    };
    let tied_depths: Vec<usize> = ev
        .iter()
        .zip(fs)
        .filter(|(_, f)| f.useful)
        .map(|(e, _)| e.depth)
        .collect();
    let logme_peak = ev.iter().filter(|e| e.logme.is_some()).max_by(|a, b| {
        a.logme
            .unwrap_or(f64::MIN)
            .total_cmp(&b.logme.unwrap_or(f64::MIN))
    });
    let useful_evidence = |i: usize| {
        let (bi, _) = best.expect("labelled");
        format!(
            "the target probe peaks at depth {} ({}: balanced accuracy {}{}); layers at depths {:?} are tied with it (paired difference on the same folds, interval reaching -{margin}) and above the floor {USEFUL_FLOOR}; the deepest of them is depth {}{}",
            ev[bi].depth,
            ev[bi].layer,
            fmt(ev[bi].task),
            fmt_ci(ev[bi].task_ci),
            tied_depths,
            ev[i].depth,
            logme_peak.map_or(String::new(), |l| format!("; LogME peaks at depth {} ({})", l.depth, fmt(l.logme)))
        )
    };

    let best_task = best.map(|(_, t)| t);
    match deepest_useful {
        None => (
            Plan {
                kind: PlanKind::TrainAll,
                text: format!(
                    "Fine-tune every layer: no layer's frozen features solve the target task (best target probe {} balanced accuracy, floor {USEFUL_FLOOR}, chance {:.3}).",
                    fmt(best_task),
                    1.0 / ev.iter().find_map(|e| e.classes).unwrap_or(2).max(2) as f64
                ),
            },
            None,
            Some("The model is a poor match for this task: its frozen features do not reach a useful accuracy at any depth. Consider a domain-specific pretrained model or training from scratch; if you fine-tune this one, expect to re-train most layers.".to_string()),
        ),
        Some(i) if input_shift => (
            Plan {
                kind: PlanKind::TrainAll,
                text: format!(
                    "Fine-tune every layer, the first blocks included: the shift is at the input level. Frozen features are useful (up to depth {}, {}), so if compute is short, freezing through depth {} and training the rest is the cheaper fallback.",
                    ev[i].depth,
                    ev[i].layer,
                    ev[i].depth
                ),
            },
            Some(cut_at(i, useful_evidence(i))),
            None,
        ),
        Some(i) => {
            let last = i + 1 == ev.len();
            (
                Plan {
                    kind: PlanKind::FreezeThrough,
                    text: if last {
                        format!("Freeze every measured layer up to depth {} ({}) and train only what comes after it (a new head).", ev[i].depth, ev[i].layer)
                    } else {
                        format!("Freeze layers up to depth {} ({}) and re-train from depth {} on.", ev[i].depth, ev[i].layer, ev[i].depth + 1)
                    },
                },
                Some(cut_at(i, useful_evidence(i))),
                None,
            )
        }
    }
}

/// The advice without labels: freeze through the initial run of close or within-spread layers, else none.
fn advice_without_labels(ev: &[Evidence], sh: &Shift) -> Advice {
    let cut_at = |i: usize, evidence: String| Cut {
        depth: ev[i].depth,
        layer: ev[i].layer.clone(),
        evidence,
    };
    let (close_run, first_far) = (sh.close_run, sh.first_far);
    if close_run > 0 {
        let i = close_run - 1;
        (
            Plan {
                kind: PlanKind::FreezeThrough,
                text: format!(
                    "{} Labels (a few dozen images per class in sub-folders) would show whether deeper layers are useful despite the gap.",
                    if i + 1 == ev.len() {
                        format!("Freeze every measured layer up to depth {} ({}): all are close to the source or within its own spread; train only a new head.", ev[i].depth, ev[i].layer)
                    } else {
                        format!("Freeze layers up to depth {} ({}): they are close to the source or within its own spread; re-train from depth {} on.", ev[i].depth, ev[i].layer, ev[i].depth + 1)
                    }
                ),
            },
            Some(cut_at(i, format!(
                "no target labels: the first {close_run} layer(s) are close to the source (upper bound of the domain-probe interval <= {CLOSE_DOMAIN_ACC}) or within the source's own spread (domain probe <= source_spread_acc + {SPREAD_MARGIN}){}",
                ev.get(close_run).map_or(String::new(), |n| format!("; depth {} is not (domain probe {}{})", n.depth, fmt(n.domain_acc), fmt_ci(n.domain_ci)))
            ))),
            None,
        )
    } else {
        (
            Plan {
                kind: PlanKind::NoAdvice,
                text: "No cut can be recommended from domain separability alone: no early layer is shown close to the source, and a gap may come from different classes rather than a different domain. Put a few dozen labelled target images per class in sub-folders: usefulness for your task is what decides where to cut.".into(),
            },
            None,
            first_far.filter(|&d| d == 0).map(|_| {
                "Even the earliest layer separates source and target: to this model the target images look unlike its training images at every depth. Without labels there is no evidence that its features help; a domain-specific pretrained model may suit better.".to_string()
            }),
        )
    }
}

/// Reads the evidence out of a compare report.
pub fn evidence(r: &CompareReport) -> Vec<Evidence> {
    r.layers
        .iter()
        .map(|l| {
            // the outputs by their declarations (a renamed output is renamed here too)
            use crate::metrics::{logme::LOGME_TARGET, mmd::MMD2, probe, transfer};
            let get = |o| l.value(o);
            let task = &probe::TARGET_PROBE_BAL_ACC;
            Evidence {
                depth: l.depth,
                layer: l.layer.clone(),
                domain_acc: get(&probe::DOMAIN_ACC).and_then(|v| v.value),
                domain_ci: get(&probe::DOMAIN_ACC).and_then(|v| v.ci),
                spread: get(&probe::SPREAD).and_then(|v| v.value),
                mmd2: get(&MMD2).and_then(|v| v.value),
                mmd_p: get(&MMD2).and_then(|v| v.p_value),
                mmd_p_holm: get(&MMD2).and_then(|v| v.p_holm),
                task: get(task).and_then(|v| v.value),
                task_ci: get(task).and_then(|v| v.ci),
                task_vs_best: get(&crate::compare::TARGET_PROBE_VS_BEST)
                    .and_then(|v| v.value.map(|d| (d, v.ci.unwrap_or((d, d))))),
                knn: get(&transfer::TARGET_KNN_BAL_ACC).and_then(|v| v.value),
                logme: get(&LOGME_TARGET).and_then(|v| v.value),
                classes: get(task)
                    .and_then(|v| v.details.get("classes").and_then(|c| c.as_u64()))
                    .map(|c| c as usize),
            }
        })
        .collect()
}

/// Fewest images per set below which every label rests on too little data to act on.
pub const SMALL_SET: usize = 20;

/// A warning when either set is smaller than [`SMALL_SET`].
pub fn sample_size_warning(n_source: usize, n_target: usize) -> Option<String> {
    (n_source.min(n_target) < SMALL_SET).then(|| {
        format!(
            "only {n_source} source and {n_target} target images: with fewer than {SMALL_SET} per set every interval is wide and the labels and plan rest on too little data to act on; use at least 50 images per set (a few dozen per class)"
        )
    })
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

    /// One layer: (domain acc, its interval, Holm p, spread, task, task interval, paired Δ and interval).
    #[allow(clippy::type_complexity)]
    fn ev(
        depth: usize,
        dom: (f64, f64, f64),
        p: f64,
        spread: f64,
        task: Option<(f64, f64, f64, f64, f64, f64)>,
        classes: usize,
    ) -> Evidence {
        Evidence {
            depth,
            layer: format!("l{depth}"),
            domain_acc: Some(dom.0),
            domain_ci: Some((dom.1, dom.2)),
            spread: Some(spread),
            mmd2: Some(0.1),
            mmd_p: Some(p),
            mmd_p_holm: Some(p),
            task: task.map(|t| t.0),
            task_ci: task.map(|t| (t.1, t.2)),
            task_vs_best: task.map(|t| (t.3, (t.4, t.5))),
            knn: None,
            logme: task.map(|t| t.0 - 1.0),
            classes: task.map(|_| classes),
        }
    }

    /// Labels, plan and summary come from one decision: they never contradict each other.
    fn consistent(v: &Verdict) {
        let useful_claimed = v
            .layers
            .iter()
            .any(|l| l.reason.contains("useful for the target task despite"));
        if v.poor_match.is_some() && v.evidence.iter().any(|e| e.task.is_some()) {
            assert!(
                !useful_claimed,
                "poor match but a layer is called useful: {v:#?}"
            );
            assert_eq!(v.plan.kind, PlanKind::TrainAll);
        }
        match v.plan.kind {
            PlanKind::FreezeThrough => {
                let c = v.cut.as_ref().expect("a freeze plan has a cut");
                assert!(v.summary.contains(&format!("depth {}", c.depth)));
                assert_eq!(v.layers[c.depth].label, Label::Transfers);
            }
            PlanKind::TrainAll => assert!(v.summary.contains("Fine-tune every layer")),
            PlanKind::NoAdvice => assert!(v.cut.is_none()),
        }
        assert!(v.summary.contains(&v.plan.text));
    }

    #[test]
    fn table_of_labels_without_labels() {
        // (domain acc, interval, Holm p, spread) -> label
        let cases = [
            ((0.52, 0.45, 0.60), 0.5, 0.55, Label::Transfers), // close: interval under 0.75
            ((0.70, 0.60, 0.80), 0.5, 0.55, Label::Partial), // not significant, but no positive evidence
            ((0.85, 0.80, 0.90), 0.001, 0.55, Label::Partial), // moderate gap
            ((0.99, 0.98, 1.00), 0.001, 0.55, Label::DomainSpecific), // far
            ((0.99, 0.98, 1.00), 0.02, 0.55, Label::Partial), // not significant after Holm
            ((0.97, 0.95, 0.99), 0.001, 0.95, Label::Transfers), // within the source's own spread
        ];
        let evs: Vec<Evidence> = cases
            .iter()
            .enumerate()
            .map(|(i, c)| ev(i, c.0, c.1, c.2, None, 0))
            .collect();
        let v = decide(&evs, 0.01, vec![]);
        for (lv, c) in v.layers.iter().zip(cases.iter()) {
            assert_eq!(lv.label, c.3, "{lv:?}");
            assert!(lv.reason.contains("domain probe"));
        }
        // the initial run of close layers ends at depth 0
        assert_eq!(v.plan.kind, PlanKind::FreezeThrough);
        assert_eq!(v.cut.as_ref().unwrap().depth, 0);
        consistent(&v);
    }

    #[test]
    fn two_imagenet_like_sets_without_labels_transfer_deep() {
        // early layers close, deep layers separate by class content as much as the source's own class groups
        let evs: Vec<Evidence> = (0..6)
            .map(|d| {
                let dom = 0.55 + 0.08 * d as f64;
                let spread = 0.55 + 0.07 * d as f64;
                ev(d, (dom, dom - 0.05, dom + 0.05), 0.0005, spread, None, 0)
            })
            .collect();
        let v = decide(&evs, 0.01, vec![]);
        assert!(
            v.layers.iter().all(|l| l.label == Label::Transfers),
            "{v:#?}"
        );
        assert_eq!(v.cut.as_ref().unwrap().depth, 5);
        consistent(&v);
    }

    #[test]
    fn unlabelled_input_level_shift_gives_no_cut_but_a_diagnosis() {
        let evs = vec![
            ev(0, (0.99, 0.98, 1.0), 0.001, 0.55, None, 0),
            ev(1, (0.999, 0.99, 1.0), 0.001, 0.60, None, 0),
        ];
        let v = decide(&evs, 0.01, vec![]);
        assert_eq!(v.plan.kind, PlanKind::NoAdvice);
        assert!(v.cut.is_none());
        assert!(v.diagnosis.contains("input level"));
        assert!(v.summary.contains("labelled target images"));
        assert!(v.poor_match.is_some());
        consistent(&v);
    }

    #[test]
    fn cut_is_the_deepest_useful_layer_tied_by_paired_differences() {
        let evs = vec![
            ev(
                0,
                (0.60, 0.55, 0.65),
                0.5,
                0.55,
                Some((0.70, 0.66, 0.74, -0.18, -0.22, -0.14)),
                2,
            ),
            ev(
                1,
                (0.80, 0.75, 0.85),
                0.001,
                0.55,
                Some((0.84, 0.81, 0.87, -0.04, -0.055, -0.025)),
                2,
            ),
            ev(
                2,
                (0.99, 0.98, 1.0),
                0.001,
                0.55,
                Some((0.88, 0.85, 0.91, 0.0, 0.0, 0.0)),
                2,
            ), // best
            ev(
                3,
                (0.99, 0.98, 1.0),
                0.001,
                0.55,
                Some((0.875, 0.84, 0.91, -0.005, -0.02, 0.01)),
                2,
            ), // tied
            ev(
                4,
                (0.99, 0.98, 1.0),
                0.001,
                0.55,
                Some((0.80, 0.76, 0.84, -0.08, -0.11, -0.05)),
                2,
            ), // worse
        ];
        let v = decide(&evs, 0.01, vec![]);
        let labels: Vec<Label> = v.layers.iter().map(|l| l.label).collect();
        assert_eq!(
            labels,
            [
                Label::Transfers, // close
                Label::Partial,   // Δ interval below -0.01: not tied; not far
                Label::Transfers,
                Label::Transfers,
                Label::DomainSpecific
            ]
        );
        assert_eq!(v.plan.kind, PlanKind::FreezeThrough);
        let cut = v.cut.as_ref().unwrap();
        assert_eq!(cut.depth, 3);
        assert!(cut.evidence.contains("peaks at depth 2"));
        assert!(v.poor_match.is_none());
        consistent(&v);
    }

    #[test]
    fn small_many_class_task_below_the_floor_is_a_poor_match_everywhere() {
        // the bone-like case: 11 classes, best balanced accuracy 0.32 (chance 0.09), far from the first layer
        let evs: Vec<Evidence> = (0..4)
            .map(|d| {
                let t = 0.26 + 0.02 * d as f64;
                ev(
                    d,
                    (0.99, 0.98, 1.0),
                    0.001,
                    0.55,
                    Some((t, t - 0.05, t + 0.05, t - 0.32, t - 0.36, t - 0.28 + 0.01)),
                    11,
                )
            })
            .collect();
        let v = decide(&evs, 0.01, vec![]);
        assert!(
            v.layers.iter().all(|l| l.label != Label::Transfers),
            "{v:#?}"
        );
        assert_eq!(v.plan.kind, PlanKind::TrainAll);
        assert!(v.cut.is_none());
        assert!(v.poor_match.as_ref().unwrap().contains("poor match"));
        consistent(&v);
    }

    #[test]
    fn labelled_input_level_shift_fine_tunes_everything_with_a_fallback() {
        let evs = vec![
            ev(
                0,
                (0.99, 0.98, 1.0),
                0.001,
                0.55,
                Some((0.80, 0.75, 0.85, -0.10, -0.14, -0.06)),
                2,
            ),
            ev(
                1,
                (1.0, 1.0, 1.0),
                0.001,
                0.6,
                Some((0.90, 0.87, 0.93, 0.0, 0.0, 0.0)),
                2,
            ),
        ];
        let v = decide(&evs, 0.01, vec![]);
        assert_eq!(v.plan.kind, PlanKind::TrainAll);
        assert!(v.plan.text.contains("first blocks"));
        assert_eq!(v.cut.as_ref().unwrap().depth, 1);
        assert!(v.diagnosis.contains("Lee et al. 2023"));
        consistent(&v);
    }

    #[test]
    fn missing_metrics_are_not_evidence() {
        let e = Evidence {
            depth: 0,
            layer: "x".into(),
            ..Default::default()
        };
        let v = decide(&[e], 0.01, vec![]);
        assert_eq!(v.layers[0].label, Label::Partial);
        assert!(v.layers[0].reason.contains("n/a"));
        assert_eq!(v.plan.kind, PlanKind::NoAdvice);
        consistent(&v);
    }
}
