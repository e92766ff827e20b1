//! The terminal summary (a compact table, colour only on a terminal) and `summary.json`.

use std::io::IsTerminal;

use super::RunReport;
use crate::verdict::Label;

/// A user string (a class folder, a file or tensor name, or a message quoting one) made safe for a terminal:
/// control characters other than newline and tab, and the Unicode bidirectional overrides, are written
/// escaped (`\u{1b}`), so that a name cannot move the cursor, retitle the window or reorder the line.
pub fn terminal_safe(s: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if (c.is_control() && c != '\n' && c != '\t') || bidi(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn paint(s: &str, label: Label, color: bool) -> String {
    if !color {
        return s.to_string();
    }
    let code = match label {
        Label::Transfers => "32",
        Label::Useful => "36",
        Label::Partial => "33",
        Label::DomainSpecific => "31",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

/// The human summary.
pub fn text(r: &RunReport, out_dir: &std::path::Path) -> String {
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut s = String::new();
    // first what to do, on its own line; then the headline figure; then the table; then the evidence
    let (action, rest) = r.verdict.action_and_evidence();
    s.push_str(&format!("{}.\n", terminal_safe(action)));
    if let Some(h) = headline(r) {
        s.push_str(&wrap(&terminal_safe(&h), WRAP, ""));
    }
    s.push('\n');
    let cols = super::columns(&r.compare);
    s.push_str(&format!("{:>5}  {:<30}", "depth", "layer"));
    for c in &cols {
        s.push_str(&format!(" {:>8}", c.header));
    }
    s.push_str("  label\n");
    for (l, v) in r.compare.layers.iter().zip(&r.verdict.layers) {
        s.push_str(&format!(
            "{:>5}  {:<30}",
            l.depth,
            terminal_safe(&super::plot::short_name(&l.layer))
        ));
        for c in &cols {
            s.push_str(&format!(" {:>8}", c.cell(l)));
        }
        s.push_str(&format!("  {}\n", paint(v.label.as_str(), v.label, color)));
    }
    s.push('\n');
    if !rest.is_empty() {
        s.push_str(&wrap(&terminal_safe(rest), WRAP, ""));
    }
    if let Some(src) = &r.verdict.sources {
        s.push_str(&wrap(&terminal_safe(src), WRAP, ""));
    }
    for w in &r.verdict.warnings {
        s.push_str(&wrap(&terminal_safe(w), WRAP, "warning: "));
    }
    if let Some(d) = r.source_reference() {
        s.push_str(&wrap(&terminal_safe(d), WRAP, "source: "));
    }
    s.push_str(&format!(
        "report: {}\n",
        terminal_safe(&out_dir.join("report.html").display().to_string())
    ));
    s
}

/// The headline figure: the best frozen features for the target task (the target probe's best layer, with
/// its interval), and where the sets first separate; `None` without a task score.
fn headline(r: &RunReport) -> Option<String> {
    use crate::metrics::probe::{DOMAIN_ACC, TARGET_PROBE_BAL_ACC};
    let best = r
        .compare
        .layers
        .iter()
        .filter_map(|l| {
            l.value(&TARGET_PROBE_BAL_ACC)
                .and_then(|v| v.value.map(|x| (l, x, v.ci)))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    let (l, x, ci) = best;
    let ci = ci.map_or(String::new(), |(lo, hi)| format!(" [{lo:.3}, {hi:.3}]"));
    let dom = l
        .value(&DOMAIN_ACC)
        .and_then(|v| v.value)
        .map_or(String::new(), |d| {
            format!(", where a probe tells source from target at {d:.3}")
        });
    Some(format!(
        "Best frozen features: balanced accuracy {x:.3}{ci} at depth {} ({}; linear probe, {} target images){dom}.",
        l.depth,
        super::plot::short_name(&l.layer),
        l.n_target
    ))
}

/// Terminal width the summary's prose is wrapped to.
const WRAP: usize = 100;

/// Greedy word wrap at `width` characters; the first line starts with `lead`, the others are indented to
/// line up with it. Ends with a newline. A word longer than the width stays whole (a path, a layer name).
fn wrap(text: &str, width: usize, lead: &str) -> String {
    let indent = " ".repeat(lead.chars().count());
    let mut out = String::new();
    let mut line = lead.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line = indent.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrap_keeps_words_whole_and_lines_short() {
        let text = "the quick brown fox jumps over the lazy dog and a_very_long_layer_name_without_spaces_here";
        let w = super::wrap(text, 20, "warning: ");
        let lines: Vec<&str> = w.lines().collect();
        assert!(lines[0].starts_with("warning: the"));
        assert!(lines[1..].iter().all(|l| l.starts_with("         ")));
        for l in &lines {
            assert!(l.chars().count() <= 20 || !l.trim().contains(' '), "{l:?}");
        }
        // nothing lost, nothing added
        let words: Vec<&str> = w.split_whitespace().collect();
        assert_eq!(words[0], "warning:");
        assert_eq!(words[1..].join(" "), text);
    }

    #[test]
    fn terminal_safe_escapes_controls_and_bidi_overrides_only() {
        assert_eq!(
            super::terminal_safe("a\u{1b}]0;x\u{7}b\tc\nd\u{202e}é"),
            "a\\u{1b}]0;x\\u{7}b\tc\nd\\u{202e}é"
        );
    }
}
