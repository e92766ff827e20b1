//! The library's modules form layers whose arrows point down: no import cycle between any two files of
//! `src/`, and no top-level module reaching up to one above it in [`LAYERS`]. An import is any `crate::…` or
//! `super::…` path in code (comments and `#[cfg(test)]` blocks aside).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, lowest first: each may use those before it, never those after (the layering
/// `src/lib.rs` describes). The binary (`main.rs`, `cli.rs`) sits on top and uses the library by its name.
const LAYERS: &[&str] = &[
    "error",
    "threads",
    "output",
    "npy",
    "metrics",
    "model",
    "preprocess",
    "dataset",
    "embeddings",
    "shard",
    "extract",
    "compare",
    "controls",
    "verdict",
    "report",
    "analyze",
];

/// Every library file as a module path (`report::export`, `metrics`), with its path.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            let mut next = prefix.to_vec();
            next.push(stem);
            modules(&p, &next, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            if prefix.is_empty() && matches!(stem.as_str(), "main" | "cli") {
                continue;
            }
            let mut m = prefix.to_vec();
            if !matches!(stem.as_str(), "mod" | "lib") {
                m.push(stem);
            }
            out.insert(m.join("::"), p);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` part.
fn code(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap();
    let s = s.split("#[cfg(test)]").next().unwrap_or_default();
    s.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths after each occurrence of `prefix` (`crate::report::export::x` → `report::export::x`).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        out.push(rest[..end].trim_end_matches(':'));
    }
    out
}

/// The library module a path names: its longest prefix that is a module.
fn resolve(path: &[&str], mods: &BTreeMap<String, PathBuf>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|k| path[..k].join("::"))
        .find(|c| mods.contains_key(c))
}

/// Edges between library files (a parent's use of its own children and a child's use of its parent are
/// the module's inside, not edges).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut mods = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut mods,
    );
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, p) in &mods {
        let c = code(p);
        let own: Vec<&str> = if m.is_empty() {
            vec![]
        } else {
            m.split("::").collect()
        };
        // `super::` from `report/export.rs` (module `report::export`) and from `report/mod.rs` (module
        // `report`) alike is the module path minus its last part
        let parent: Vec<&str> = own[..own.len().saturating_sub(1)].to_vec();
        let mut targets: Vec<Vec<&str>> = paths_after(&c, "crate::")
            .into_iter()
            .map(|x| x.split("::").collect())
            .collect();
        targets.extend(paths_after(&c, "super::").into_iter().map(|x| {
            let mut v = parent.clone();
            v.extend(x.split("::"));
            v
        }));
        for t in targets {
            let Some(t) = resolve(&t, &mods) else {
                continue;
            };
            let related = t == *m
                || t.is_empty()
                || m.is_empty()
                || m.starts_with(&format!("{t}::"))
                || t.starts_with(&format!("{m}::"));
            if !related {
                edges.entry(m.clone()).or_default().insert(t);
            }
        }
    }
    edges
}

type Edges = BTreeMap<String, BTreeSet<String>>;

/// Every edge that lies on a cycle.
fn cycles(edges: &Edges) -> Vec<String> {
    let reaches = |from: &str, to: &str| -> bool {
        let mut stack = vec![from.to_string()];
        let mut seen = BTreeSet::new();
        while let Some(x) = stack.pop() {
            for n in edges.get(&x).into_iter().flatten() {
                if n == to {
                    return true;
                }
                if seen.insert(n.clone()) {
                    stack.push(n.clone());
                }
            }
        }
        false
    };
    edges
        .iter()
        .flat_map(|(a, bs)| bs.iter().map(move |b| (a, b)))
        .filter(|(a, b)| reaches(b, a))
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect()
}

/// Every edge from a top-level module to one above it in `layers`.
fn upward(edges: &Edges, layers: &[&str]) -> Vec<String> {
    let layer = |m: &str| {
        let top = m.split("::").next().unwrap();
        layers.iter().position(|l| *l == top).unwrap_or_else(|| {
            panic!("module '{top}' is missing from LAYERS in tests/architecture.rs")
        })
    };
    edges
        .iter()
        .flat_map(|(a, bs)| bs.iter().map(move |b| (a, b)))
        .filter(|(a, b)| layer(b) > layer(a))
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect()
}

#[test]
fn no_two_library_files_import_each_other_even_indirectly() {
    let edges = graph();
    assert!(
        edges.len() > 20,
        "the scan found too few modules: {:?}",
        edges.keys()
    );
    let c = cycles(&edges);
    assert!(
        c.is_empty(),
        "import cycles (each edge lies on one): {c:#?}"
    );
}

#[test]
fn every_import_points_down_the_layers() {
    let up = upward(&graph(), LAYERS);
    assert!(up.is_empty(), "imports pointing up the layers: {up:#?}");
}

/// Longest function body allowed in `src/` (from `fn` to its closing brace), in lines.
const MAX_FN_LINES: usize = 100;

/// Every function of `text` longer than `max` lines, as (name, line, length). A function runs from the line
/// that declares it (`fn name`, possibly `pub`, `pub(crate)`, …) to the line where its braces balance; braces
/// inside strings balance too (format strings escape them in pairs), so counting them is enough here.
fn long_functions(text: &str, max: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub(super) "))
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        let Some(rest) = t.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut opened) = (0i64, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            let code = l.split("//").next().unwrap_or_default();
            for c in code.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if !opened && code.trim_end().ends_with(';') {
                break; // a declaration without a body (a trait method)
            }
            if opened && depth == 0 {
                if j - i + 1 > max {
                    out.push((name.clone(), i + 1, j - i + 1));
                }
                break;
            }
        }
    }
    out
}

#[test]
fn no_function_in_src_is_longer_than_a_screenful() {
    let mut mods = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut mods,
    );
    let mut files: Vec<PathBuf> = mods.into_values().collect();
    for bin in ["main.rs", "cli.rs"] {
        files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(bin));
    }
    let long: Vec<String> = files
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            long_functions(&text, MAX_FN_LINES)
                .into_iter()
                .map(move |(n, line, len)| format!("{}:{line} {n}: {len} lines", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them): {long:#?}"
    );
    // the counter itself: a 3-line function passes at 3 and fails at 2; a trait method is skipped
    let text = "pub fn a() {\n    let s = format!(\"{}\", 1);\n}\ntrait T {\n    fn b(&self);\n}\n";
    assert!(long_functions(text, 3).is_empty());
    assert_eq!(long_functions(text, 2), vec![("a".to_string(), 1, 3)]);
}

#[test]
fn the_scan_sees_a_cycle_and_an_upward_import_when_there_is_one() {
    // the parser: paths after `crate::`, not inside longer names
    let c = "use crate::report::export;\nlet x = my_crate::foo; crate::model::pool::Pool::Avg";
    assert_eq!(
        paths_after(c, "crate::"),
        vec!["report::export", "model::pool::Pool::Avg"]
    );
    let mut mods = BTreeMap::new();
    for m in ["model", "model::pool", "report"] {
        mods.insert(m.to_string(), PathBuf::new());
    }
    assert_eq!(
        resolve(&["model", "pool", "Pool", "Avg"], &mods).as_deref(),
        Some("model::pool")
    );
    assert_eq!(resolve(&["nothing"], &mods), None);
    // a three-file cycle and one edge beside it; an edge up the layers
    let mut e = Edges::new();
    for (a, b) in [("a", "b"), ("b", "c::x"), ("c::x", "a"), ("a", "d")] {
        e.entry(a.to_string()).or_default().insert(b.to_string());
    }
    assert_eq!(cycles(&e), vec!["a -> b", "b -> c::x", "c::x -> a"]);
    assert_eq!(
        upward(&e, &["a", "b", "c", "d"]),
        vec!["a -> b", "a -> d", "b -> c::x"]
    );
    assert!(upward(&e, &["d", "c", "b", "a"]).contains(&"c::x -> a".to_string()));
}

#[test]
fn the_reference_states_the_library_defaults() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reference.md"))
            .unwrap();
    let p = domsim::metrics::Params::default();
    let batch = domsim::extract::ExtractOptions::new(PathBuf::new()).batch_size;
    for (flag, value) in [
        ("permutations", p.permutations.to_string()),
        ("folds", p.folds.to_string()),
        ("cv-repeats", p.cv_repeats.to_string()),
        ("tie-margin", p.tie_margin.to_string()),
        ("knn-k", p.knn_k.to_string()),
        ("C", format!("{:.1}", p.c)),
        ("probe-max-n", p.probe_max_n.to_string()),
        ("mmd-max-n", p.mmd_max_n.to_string()),
        ("cka-rbf-max-n", p.cka_rbf_max_n.to_string()),
    ] {
        let said = format!("`--{flag} {value}`");
        assert!(
            readme.contains(&said),
            "docs/reference.md should say {said}"
        );
    }
    assert!(readme.contains(&format!("(`--batch {batch}` by default")));
}
