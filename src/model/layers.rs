//! Layer discovery: which tensors of an ONNX graph are candidate layers, and the default selection.
//!
//! **Candidates** are the outputs of graph nodes, in the graph's topological (node) order, that depend on the
//! image input (not on weights alone) and are float32 tensors as ONNX Runtime reports them. Outputs of pure
//! layout or bookkeeping ops (`Reshape`, `Flatten`, `Squeeze`, `Transpose`, `Pad`, `Cast`, ...) are
//! selectable by name (`--layers`) but never chosen by `--all` or the default selection: they repeat the
//! values of the tensor they reshape.
//!
//! **The default selection** (the rule documented in the README):
//! 1. Group consecutive candidates by *scope*, the first component of the node name (`/_blocks.4/...` has scope
//!    `_blocks.4`, `/layer1/layer1.0/relu/Relu` has scope `layer1`). The last candidate of each group is a block
//!    output. A candidate without a scoped name is its own group.
//! 2. Residual `Add`s (two or more inputs computed from the image) are block outputs too.
//! 3. A group made only of activations (`Relu`, `Clip`, ...) replaces the block output just before it: the
//!    block-final activation is preferred to the pre-activation tensor.
//! 4. The model's own graph outputs, the classifier's output (the logits, found by rule 6's walk) and every
//!    tensor computed from it, and every `Softmax`/`LogSoftmax` (a monotone function of the logits) are left
//!    out: the selection ends at the final features.
//! 5. More than 20 block outputs: keep 16 evenly spaced ones, always the first and the last. Fewer than 8: add
//!    evenly spaced candidates until there are 12 (or all candidates, when fewer).
//! 6. The classifier's input (the pooled penultimate features, found by walking back from the first graph
//!    output through softmax, bias, activation, layout and (de)quantization ops (`QuantizeLinear`,
//!    `DequantizeLinear`: a quantized model's head) to the final `Gemm`/`MatMul`/`Conv` (a `Conv` on a 1×1
//!    map is a classifier too), then past any `Reshape`/`Flatten`/`Squeeze` to the tensor they reshape) is
//!    always included: the single most used transfer feature.

use std::collections::HashSet;

use super::onnx::GraphProto;
use crate::error::Result;

/// Ops that only move data around; their outputs are never candidate layers.
const LAYOUT_OPS: &[&str] = &[
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Dropout",
    "Cast",
    "Pad",
    "Shape",
    "Size",
    "Gather",
    "Slice",
    "Constant",
    "ConstantOfShape",
    "Expand",
    "Range",
    "Split",
];

/// Quantization ops a quantized model's head passes its logits through (rule 6's walk steps over them).
const QUANT_OPS: &[&str] = &["QuantizeLinear", "DequantizeLinear"];

/// Pooling ops: a `Conv` reading their output is a classifier on a 1×1 map.
const POOL_OPS: &[&str] = &[
    "GlobalAveragePool",
    "GlobalMaxPool",
    "AveragePool",
    "MaxPool",
    "ReduceMean",
    "ReduceMax",
];

/// Ops whose output is never in the default selection (rule 4).
const PROBABILITY_OPS: &[&str] = &["Softmax", "LogSoftmax"];

/// Elementwise activations (rule 3 of the default selection).
const ACTIVATION_OPS: &[&str] = &[
    "Relu",
    "Clip",
    "Sigmoid",
    "Tanh",
    "LeakyRelu",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Gelu",
    "PRelu",
    "Softplus",
    "Mish",
];

/// A candidate tensor found by graph analysis, before ONNX Runtime has told its type.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Tensor name.
    pub name: String,
    /// Producing op type.
    pub op_type: String,
    /// Producing node's name.
    pub node_name: String,
    /// True for an `Add` with two or more image-dependent inputs.
    pub residual: bool,
    /// True when this tensor is one of the model's own graph outputs.
    pub graph_output: bool,
    /// True for the output of a layout op: selectable by name only.
    pub layout_op: bool,
    /// True for the classifier's input (rule 6).
    pub classifier_input: bool,
    /// True for the classifier's output and every tensor computed from it (rule 4).
    pub after_classifier: bool,
}

/// A layer: a candidate with the shape and type ONNX Runtime reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Layer {
    /// Tensor name in the graph.
    pub name: String,
    /// Producing op type.
    pub op_type: String,
    /// Shape as ONNX Runtime reports it (-1 for a dynamic dimension).
    pub shape: Vec<i64>,
    /// Topological position among all candidates.
    pub node_index: usize,
    /// True when the tensor is one of the model's own graph outputs.
    #[serde(default)]
    pub graph_output: bool,
    /// True for the output of a layout op (`Reshape`, `Flatten`, ...): selectable by name only.
    #[serde(default)]
    pub by_name_only: bool,
}

/// Which layers to use.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// The default selection (module docs).
    Default,
    /// Every candidate except layout-op outputs.
    All,
    /// Exact names or glob patterns (`*`, `?`).
    Names(Vec<String>),
}

/// Lists candidate tensors in topological order (module docs).
pub fn candidates(graph: &GraphProto) -> Vec<Candidate> {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut dynamic: HashSet<&str> = graph
        .input
        .iter()
        .map(|v| v.name.as_str())
        .filter(|n| !initializers.contains(n))
        .collect();
    let outputs: HashSet<&str> = graph.output.iter().map(|v| v.name.as_str()).collect();
    let mut out = Vec::new();
    for node in &graph.node {
        let n_dyn = node
            .input
            .iter()
            .filter(|i| dynamic.contains(i.as_str()))
            .count();
        if n_dyn == 0 {
            continue;
        }
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            dynamic.insert(o.as_str());
            out.push(Candidate {
                name: o.clone(),
                op_type: node.op_type.clone(),
                node_name: node.name.clone(),
                residual: node.op_type == "Add" && n_dyn >= 2,
                graph_output: outputs.contains(o.as_str()),
                layout_op: LAYOUT_OPS.contains(&node.op_type.as_str()),
                classifier_input: false,
                after_classifier: false,
            });
        }
    }
    if let Some((ci, head)) = classifier_input(graph, &dynamic) {
        for c in out.iter_mut().filter(|c| c.name == ci) {
            c.classifier_input = true;
        }
        // the classifier's outputs and everything computed from them (nodes are in topological order)
        let mut after: HashSet<&str> = head.iter().map(String::as_str).collect();
        for node in &graph.node {
            if node.input.iter().any(|i| after.contains(i.as_str())) {
                after.extend(node.output.iter().map(String::as_str));
            }
        }
        for c in out.iter_mut().filter(|c| after.contains(c.name.as_str())) {
            c.after_classifier = true;
        }
    }
    out
}

/// The classifier's input (rule 6): from the first graph output back through softmax, bias, activation and
/// layout ops to the final `Gemm`/`MatMul`/`Conv`, then its image-dependent input, past layout ops.
/// Returns the classifier's input and the classifier node's outputs.
fn classifier_input(graph: &GraphProto, dynamic: &HashSet<&str>) -> Option<(String, Vec<String>)> {
    let producer: std::collections::HashMap<&str, &super::onnx::NodeProto> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let dyn_input = |n: &super::onnx::NodeProto| -> Option<String> {
        n.input
            .iter()
            .find(|i| dynamic.contains(i.as_str()))
            .cloned()
    };
    let mut t = graph.output.first()?.name.clone();
    for _ in 0..16 {
        let n = producer.get(t.as_str())?;
        let op = n.op_type.as_str();
        if matches!(op, "Gemm" | "MatMul" | "Conv") {
            let mut x = dyn_input(n)?;
            for _ in 0..16 {
                match producer.get(x.as_str()) {
                    Some(p) if LAYOUT_OPS.contains(&p.op_type.as_str()) => x = dyn_input(p)?,
                    _ => break,
                }
            }
            // a Conv is the classifier (its output the logits) only on a pooled map; else it is the last
            // layer of a feature extractor, and stays a layer
            let pooled = producer
                .get(x.as_str())
                .is_some_and(|p| POOL_OPS.contains(&p.op_type.as_str()));
            let head = if op != "Conv" || pooled {
                n.output.clone()
            } else {
                Vec::new()
            };
            return Some((x, head));
        }
        if PROBABILITY_OPS.contains(&op)
            || LAYOUT_OPS.contains(&op)
            || QUANT_OPS.contains(&op)
            || is_activation(op)
            || matches!(op, "Add" | "Mul" | "Div" | "Sub")
        {
            t = dyn_input(n)?;
        } else {
            return None;
        }
    }
    None
}

fn scope(node_name: &str) -> Option<&str> {
    if !node_name.contains('/') {
        return None;
    }
    node_name.split('/').find(|s| !s.is_empty())
}

fn is_activation(op: &str) -> bool {
    ACTIVATION_OPS.contains(&op)
}

/// Evenly spaced indices `0..n`, `k` of them, always including the first and last.
fn evenly_spaced(n: usize, k: usize) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    if k <= 1 {
        return vec![n - 1];
    }
    let mut v: Vec<usize> = (0..k)
        .map(|i| ((i as f64) * (n - 1) as f64 / (k - 1) as f64).round() as usize)
        .collect();
    v.dedup();
    v
}

/// The default selection over float candidates `all` (module docs), as indices into `all`.
/// `cands[i]` is the candidate `all[i]` came from.
pub fn default_selection(all: &[Layer], cands: &[Candidate]) -> Vec<usize> {
    let idx: Vec<usize> = (0..all.len())
        .filter(|&i| {
            !all[i].graph_output
                && !all[i].by_name_only
                && !cands[i].after_classifier
                && !PROBABILITY_OPS.contains(&all[i].op_type.as_str())
        })
        .collect();
    let mut blocks: Vec<usize> = Vec::new();
    let mut g = 0;
    while g < idx.len() {
        let s = scope(&cands[idx[g]].node_name);
        let mut e = g;
        while s.is_some() && e + 1 < idx.len() && scope(&cands[idx[e + 1]].node_name) == s {
            e += 1;
        }
        let group = &idx[g..=e];
        let activation_only = group.iter().all(|&i| is_activation(&all[i].op_type));
        for &i in group {
            if cands[i].residual && i != idx[e] {
                blocks.push(i);
            }
        }
        if activation_only && !blocks.is_empty() {
            blocks.pop();
        }
        blocks.push(idx[e]);
        g = e + 1;
    }
    blocks.sort_unstable();
    blocks.dedup();
    if blocks.len() > 20 {
        blocks = evenly_spaced(blocks.len(), 16)
            .into_iter()
            .map(|k| blocks[k])
            .collect();
    } else if blocks.len() < 8 && idx.len() > blocks.len() {
        let extra = evenly_spaced(idx.len(), 12).into_iter().map(|k| idx[k]);
        blocks.extend(extra);
        blocks.sort_unstable();
        blocks.dedup();
    }
    // rule 6: the classifier's input, whatever the thinning kept
    if let Some(ci) = (0..all.len()).find(|&i| cands[i].classifier_input && !all[i].graph_output) {
        if !blocks.contains(&ci) {
            blocks.push(ci);
            blocks.sort_unstable();
        }
    }
    blocks
}

/// Glob match with `*` and `?`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The `k` existing names nearest to `name` (edit distance), for error messages.
pub fn nearest<'a>(name: &str, names: impl Iterator<Item = &'a str>, k: usize) -> Vec<&'a str> {
    let mut v: Vec<(usize, &str)> = names.map(|n| (levenshtein(name, n), n)).collect();
    v.sort();
    v.into_iter().take(k).map(|(_, n)| n).collect()
}

/// Resolves user-given names or patterns against `all`, as indices in topological order.
pub fn select_names(all: &[Layer], wanted: &[String]) -> Result<Vec<usize>> {
    let mut picked = Vec::new();
    for w in wanted {
        let is_pattern = w.contains('*') || w.contains('?');
        let mut hits: Vec<usize> = (0..all.len())
            .filter(|&i| {
                if is_pattern {
                    glob_match(w, &all[i].name)
                } else {
                    all[i].name == *w
                }
            })
            .collect();
        if hits.is_empty() && !is_pattern {
            // the short name the tables and charts print: `_blocks.4/Add` for `/_blocks.4/Add_output_0`
            let short = |n: &str| {
                n.trim_start_matches('/')
                    .trim_end_matches("_output_0")
                    .to_string()
            };
            hits = (0..all.len())
                .filter(|&i| short(&all[i].name) == short(w))
                .collect();
        }
        if hits.is_empty() {
            let near = nearest(w, all.iter().map(|l| l.name.as_str()), 5);
            return Err(crate::Error::Layer {
                layer: w.clone(),
                message: format!(
                    "layer '{w}' does not exist in the model{}; nearest layer names: {}. Run `domsim layers --all` to list every layer",
                    if is_pattern { " (no name matches the pattern)" } else { "" },
                    near.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
                ),
            });
        }
        picked.extend(hits);
    }
    picked.sort_unstable();
    picked.dedup();
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match(
            "/_blocks.*/Add_output_0",
            "/_blocks.4/Add_output_0"
        ));
        assert!(!glob_match("/_blocks.*/Add", "/_blocks.4/Add_output_0"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn spacing_keeps_ends() {
        assert_eq!(evenly_spaced(22, 16).first(), Some(&0));
        assert_eq!(evenly_spaced(22, 16).last(), Some(&21));
        assert_eq!(evenly_spaced(22, 16).len(), 16);
        assert_eq!(evenly_spaced(3, 16), vec![0, 1, 2]);
    }

    #[test]
    fn nearest_names() {
        let names = ["conv1", "conv2", "relu"];
        assert_eq!(
            nearest("conv3", names.iter().copied(), 2),
            vec!["conv1", "conv2"]
        );
    }
}
