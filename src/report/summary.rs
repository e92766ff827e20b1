//! The terminal summary (a compact table, colour only on a terminal) and `summary.json`.

use std::io::IsTerminal;

use super::RunReport;
use crate::verdict::Label;

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
        "run": r.extra,
    })
}

/// The files of the report folder, from the same exporter list that writes them (no hard-coded names).
fn files(r: &RunReport) -> Vec<String> {
    super::export::analysis_files(r)
        .iter()
        .map(|e| e.file_name())
        .collect()
}

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
        Label::Partial => "33",
        Label::DomainSpecific => "31",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

/// The human summary.
pub fn text(r: &RunReport, out_dir: &std::path::Path) -> String {
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut s = String::new();
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
    s.push_str(&terminal_safe(&r.verdict.summary));
    s.push('\n');
    for w in &r.verdict.warnings {
        s.push_str(&format!("warning: {}\n", terminal_safe(w)));
    }
    if let Some(d) = source_reference(r) {
        s.push_str(&format!("source: {}\n", terminal_safe(d)));
    }
    s.push_str(&format!(
        "report: {}\n",
        terminal_safe(&out_dir.join("report.html").display().to_string())
    ));
    s
}

/// The sentence saying that the source was the bundled reference, when it was.
pub fn source_reference(r: &RunReport) -> Option<&str> {
    r.extra
        .get("source_reference")
        .and_then(|x| x.get("description"))
        .and_then(|x| x.as_str())
}

#[cfg(test)]
mod tests {
    #[test]
    fn terminal_safe_escapes_controls_and_bidi_overrides_only() {
        assert_eq!(
            super::terminal_safe("a\u{1b}]0;x\u{7}b\tc\nd\u{202e}é"),
            "a\\u{1b}]0;x\\u{7}b\tc\nd\\u{202e}é"
        );
    }
}
