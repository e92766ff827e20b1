//! `report.html`: one self-contained page (PNGs embedded as data URIs, inline CSS, no script, no external
//! URL) with the verdict, the per-layer table and the charts. It opens offline.

use super::RunReport;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Standard base64 (RFC 4648) with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The heading of a chart on the page, from its file name.
fn chart_title(file: &str) -> String {
    match file {
        "metrics_by_depth.png" => "Distance, domain probe and task usefulness by depth".into(),
        "gap_sources.png" => "Where the gap comes from: colour, resolution, pretraining".into(),
        "cka_source.png" => "How the layers relate within the source (linear CKA)".into(),
        "cka_target.png" => "How the layers relate within the target (linear CKA)".into(),
        "cka_difference.png" => "Layer similarity, target minus source (linear CKA)".into(),
        f => match f
            .strip_prefix("embedding_")
            .and_then(|x| x.get(..2))
            .and_then(|d| d.parse::<usize>().ok())
        {
            Some(d) => format!("Source and target embeddings at depth {d} (PCA)"),
            None => f.to_string(),
        },
    }
}

/// The page.
pub fn page(r: &RunReport, pngs: &[(String, Vec<u8>)]) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>domsim report</title><style>");
    h.push_str("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td.l{text-align:left}.transfers{background:#e6f4e6}.useful{background:#dff3f6}.partial{background:#fff6dc}.domain-specific{background:#fbe3e3}img{max-width:100%;border:1px solid #eee;margin:1em 0}.warn{color:#8a4b00}code{background:#f4f4f4}.exs{display:flex;flex-wrap:wrap;gap:8px}figure.ex{margin:0;width:140px;font-size:11px;color:#555;overflow-wrap:anywhere}figure.ex img{margin:0;max-width:112px;max-height:112px}");
    h.push_str("</style></head><body>");
    h.push_str("<h1>domsim: will these layers transfer?</h1>");
    h.push_str(&sets(r));
    h.push_str(&verdict_section(&r.verdict));
    h.push_str(&examples_section(r));
    h.push_str(&layer_table(r));
    h.push_str(&charts(r, pngs));
    let (c, v) = (&r.compare, &r.verdict);
    h.push_str(&format!(
        "<h2>How these numbers were made</h2><p>Seed {}, {} permutations, {} x {}-fold cross-validation (the same folds at every layer) for probes and k-NN, C = {}. Estimators are stated per value in <code>metrics.csv</code>; all parameters are in <code>compare.json</code>. Rule: {}</p>",
        c.params.seed, c.params.permutations, c.params.cv_repeats, c.params.folds, c.params.c, esc(&v.rule)
    ));
    h.push_str("</body></html>\n");
    h
}

/// The source and the target: the folders the user gave (an image folder), not domsim's cache of their
/// embeddings.
fn sets(r: &RunReport) -> String {
    let c = &r.compare;
    let given = |side: crate::compare::Side, dir: &str| -> String {
        r.images_given(side).unwrap_or(dir).to_string()
    };
    let source = match r.source_reference() {
        Some(d) => esc(d),
        None => format!(
            "<code>{}</code> ({} images)",
            esc(&given(crate::compare::Side::Source, &c.source.dir)),
            c.source.n
        ),
    };
    format!(
        "<p>Source: {source}.<br>Target: <code>{}</code> ({} images{}).</p>",
        esc(&given(crate::compare::Side::Target, &c.target.dir)),
        c.target.n,
        if c.target.classes.is_empty() {
            String::new()
        } else {
            format!(", classes: {}", esc(&c.target.classes.join(", ")))
        }
    )
}

/// What the images look like: the first images of each class on each side, and the target images nearest
/// to and farthest from the source where the plan acts (thumbnails embedded in the page).
fn examples_section(r: &RunReport) -> String {
    if r.examples.is_empty() {
        return String::new();
    }
    let mut h = String::from("<h2>What the images look like</h2>");
    let group = |side: crate::compare::Side, distance: bool| -> String {
        let mut g = String::new();
        for e in r
            .examples
            .iter()
            .filter(|e| e.set == side && e.distance.is_some() == distance)
        {
            let caption = match e.distance {
                Some(d) => format!("{}<br>{} (distance {d:.2})", esc(&e.role), esc(&e.file)),
                None => format!("{}<br>{}", esc(&e.role), esc(&e.file)),
            };
            g.push_str(&format!(
                "<figure class=\"ex\"><img src=\"{}\" alt=\"{}\"><figcaption>{caption}</figcaption></figure>",
                e.thumbnail,
                esc(&e.file)
            ));
        }
        g
    };
    for (side, name) in [
        (crate::compare::Side::Source, "Source"),
        (crate::compare::Side::Target, "Target"),
    ] {
        let g = group(side, false);
        if g.is_empty() {
            if side == crate::compare::Side::Source && r.source_reference().is_some() {
                h.push_str(
                    "<p>Source: the bundled reference holds embeddings only, no images.</p>",
                );
            }
            continue;
        }
        h.push_str(&format!(
            "<p>{name}: the first images in file order, per class when it has classes:</p><div class=\"exs\">{g}</div>"
        ));
    }
    let far = group(crate::compare::Side::Target, true);
    if !far.is_empty() {
        h.push_str(&format!("<p>Target images nearest to and farthest from the source (Euclidean distance to the mean source embedding at the layer the plan acts on):</p><div class=\"exs\">{far}</div>"));
    }
    h
}

/// The verdict: the action in bold, then the evidence (the summary already holds the diagnosis, said
/// once), the cut's evidence, where the gap comes from, and the warnings.
fn verdict_section(v: &crate::verdict::Verdict) -> String {
    let mut h = String::new();
    let (action, rest) = v.action_and_evidence();
    h.push_str(&format!(
        "<h2>Verdict</h2><p><b>{}.</b> {}</p>",
        esc(action),
        esc(rest)
    ));
    if let Some(cut) = &v.cut {
        h.push_str(&format!(
            "<p>Evidence for the cut: {}</p>",
            esc(&cut.evidence)
        ));
    }
    if let Some(src) = &v.sources {
        h.push_str(&format!("<p>{}</p>", esc(src)));
    }
    if !v.warnings.is_empty() {
        h.push_str("<ul>");
        for w in &v.warnings {
            h.push_str(&format!("<li class=\"warn\">{}</li>", esc(w)));
        }
        h.push_str("</ul>");
    }
    h
}

/// The per-layer table and its legend.
fn layer_table(r: &RunReport) -> String {
    let (c, v) = (&r.compare, &r.verdict);
    let mut h = String::new();
    let cols = super::columns(c);
    h.push_str("<h2>Per layer</h2><table><tr><th>depth</th><th>layer</th><th>dim</th>");
    for col in &cols {
        h.push_str(&format!(
            "<th title=\"{}\">{}</th>",
            esc(&col.output.label),
            esc(&col.header)
        ));
    }
    h.push_str("<th>label</th><th>reason</th></tr>");
    for (l, lv) in c.layers.iter().zip(&v.layers) {
        h.push_str(&format!(
            "<tr class=\"{}\"><td>{}</td><td class=\"l\">{}</td><td>{}</td>",
            lv.label.as_str(),
            l.depth,
            esc(&l.layer),
            l.dim
        ));
        for col in &cols {
            h.push_str(&format!("<td>{}</td>", col.cell(l)));
        }
        // the reason's words; the whole reason, with its numbers, behind a toggle (no script)
        let lead = lv
            .reason
            .split_once(": ")
            .map_or(lv.reason.as_str(), |x| x.0);
        h.push_str(&format!(
            "<td class=\"l\">{}</td><td class=\"l\"><details><summary>{}</summary>{}</details></td></tr>",
            lv.label.as_str(),
            esc(lead),
            esc(&lv.reason)
        ));
    }
    h.push_str("</table>");
    h.push_str("<p>Columns: ");
    let legend: Vec<String> = cols
        .iter()
        .filter(|c| !c.p_value)
        .map(|c| {
            format!(
                "<b>{}</b> = <code>{}</code>, {}",
                esc(&c.header),
                esc(&c.output.id),
                esc(&c.output.label)
            )
        })
        .collect();
    h.push_str(&legend.join("; "));
    h.push_str(
        ". Every output, with its estimator and sample counts, is in <code>metrics.csv</code>; open a reason for its numbers (also in <code>verdict.json</code>).</p>",
    );
    h
}

/// Every chart, headed in words; under the per-depth chart, what it draws (from the same list the chart
/// is drawn from).
fn charts(r: &RunReport, pngs: &[(String, Vec<u8>)]) -> String {
    let mut h = String::from("<h2>Charts</h2>");
    for (name, bytes) in pngs {
        h.push_str(&format!(
            "<h3>{}</h3><img alt=\"{}\" src=\"data:image/png;base64,{}\">",
            esc(&chart_title(name)),
            esc(name),
            base64(bytes)
        ));
        if name == "metrics_by_depth.png" {
            let panels: Vec<String> = super::plot::chart_series(&r.compare)
                .into_iter()
                .filter(|(_, outs)| !outs.is_empty())
                .map(|(p, outs)| {
                    let items: Vec<String> = outs
                        .iter()
                        .map(|o| format!("{} (<code>{}</code>)", esc(&o.label), esc(&o.id)))
                        .collect();
                    format!("{p:?}: {}", items.join(", "))
                })
                .collect();
            h.push_str(&format!("<p class=\"l\">Drawn: {}.</p>", panels.join("; ")));
        }
    }
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_rfc4648_vectors() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
