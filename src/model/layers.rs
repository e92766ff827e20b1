//! Layer discovery: which tensors of an ONNX graph are candidate layers, and the default selection.
//!
//! **Candidates** are the outputs of graph nodes, in the graph's topological (node) order, that depend on the
//! image's values (a `Shape` or `Size` output does not: shape arithmetic is not computed from the image) and
//! are float32 tensors as ONNX Runtime reports them. Outputs of pure layout or bookkeeping ops (`Reshape`,
//! `Flatten`, `Squeeze`, `Transpose`, `Pad`, `Cast`, ...) are selectable by name (`--layers`) but never
//! chosen by `--all` or the default selection: they repeat the values of the tensor they reshape.
//!
//! **The default selection** comes from the graph's structure (docs/reference.md states it for users):
//! 1. The end is the classifier's input (rule 6 below). Tensors every path from the image to the end passes
//!    through (its dominators, `mark_dominators`) are the block boundaries; residual, dense-block and
//!    attention interiors are not. An activation applied to a boundary replaces it.
//! 2. A boundary next to a segment with several paths is kept ([`Choice::Boundary`]). Boundaries in plain
//!    chains are grouped by module name (the scope after the components nearly all nodes share), the last of
//!    each kept ([`Choice::ModuleOutput`]); unnamed ones are each kept ([`Choice::Chain`]).
//! 3. The input as the graph prepares it (computed by [`PREPROCESSING_OPS`] alone) is not a layer.
//! 4. The model's own graph outputs, the classifier's output (the logits) and every tensor computed from it,
//!    and every `Softmax`/`LogSoftmax` are left out: the selection ends at the final features.
//! 5. More than 20: one per named module (the last), then 16 evenly spaced, always the first and the last.
//!    Fewer than 8: the remaining boundaries added evenly up to 12.
//! 6. The classifier's input (found by walking back from the first graph output through softmax, bias,
//!    activation, layout and (de)quantization ops (`QuantizeLinear`, `DequantizeLinear`: a quantized model's
//!    head) to the final `Gemm`/`MatMul`/`Conv` (a `Conv` on a 1×1 map is a classifier too), then past any
//!    `Reshape`/`Flatten`/`Squeeze` to the tensor they reshape) is always included: the single most used
//!    transfer feature.
//!
//! Without any boundary the rule by names applies (`by_scope`): the last candidate of each scope, residual
//! `Add`s, an activation-only scope replacing the output before it.

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
    "Constant",
    "ConstantOfShape",
    "Expand",
    "Range",
    "Split",
];

/// Ops whose output describes a tensor's shape, not its values: nothing computed from them alone is
/// image-dependent.
const SHAPE_OPS: &[&str] = &["Shape", "Size"];

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
    /// The image-dependent inputs of the producing node.
    pub dyn_inputs: Vec<String>,
    /// True when some path from this tensor reaches the selection's end (the classifier's input, else the
    /// first graph output).
    pub useful: bool,
    /// True when every path from the image to the selection's end passes through this tensor (a dominator
    /// of the end): a natural block boundary. Residual, dense-block and attention interiors are not.
    pub dominator: bool,
    /// True for the image itself as the graph prepares it (cast, scaled, normalised, transposed, resized:
    /// computed from the input by [`PREPROCESSING_OPS`] alone): not a layer of the network.
    pub preprocessing: bool,
}

/// Ops that prepare the input inside the graph (a uint8 model's cast and scaling, a TF model's transpose)
/// without computing features from it.
pub const PREPROCESSING_OPS: &[&str] = &[
    "Cast",
    "Mul",
    "Div",
    "Add",
    "Sub",
    "Transpose",
    "Reshape",
    "Identity",
    "Unsqueeze",
    "Squeeze",
    "QuantizeLinear",
    "DequantizeLinear",
    "Clip",
    "Resize",
    "Pad",
];

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
    /// Why this tensor is not a per-image feature (an attention map, a window partition, no batch axis):
    /// never selected, by name neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The axis that holds the images (0 for almost every tensor; 1 for tokens-first [T, N, D]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch_axis: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
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
    let mut pre: HashSet<&str> = dynamic.clone();
    let mut out = Vec::new();
    for node in &graph.node {
        let n_dyn = node
            .input
            .iter()
            .filter(|i| dynamic.contains(i.as_str()))
            .count();
        // a tensor's shape is not its values: shape arithmetic (attention masks, reshape targets, class
        // tokens expanded to the batch) is not computed from the image
        if n_dyn == 0 || SHAPE_OPS.contains(&node.op_type.as_str()) {
            continue;
        }
        let dyn_inputs: Vec<String> = node
            .input
            .iter()
            .filter(|i| dynamic.contains(i.as_str()))
            .cloned()
            .collect();
        let preprocessing = PREPROCESSING_OPS.contains(&node.op_type.as_str())
            && dyn_inputs.iter().all(|i| pre.contains(i.as_str()));
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            dynamic.insert(o.as_str());
            if preprocessing {
                pre.insert(o.as_str());
            }
            out.push(Candidate {
                name: o.clone(),
                op_type: node.op_type.clone(),
                node_name: node.name.clone(),
                residual: node.op_type == "Add" && n_dyn >= 2,
                graph_output: outputs.contains(o.as_str()),
                layout_op: LAYOUT_OPS.contains(&node.op_type.as_str()),
                classifier_input: false,
                after_classifier: false,
                dyn_inputs: dyn_inputs.clone(),
                useful: false,
                dominator: false,
                preprocessing,
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
    mark_dominators(&mut out, graph);
    out
}

/// Marks the candidates that reach the selection's end (`useful`) and those every path from the image to
/// it passes through (`dominator`). The end is the classifier's input, else the first graph output.
///
/// With the candidates in topological order, a tensor at position p dominates the end exactly when no
/// edge u → w between useful tensors jumps over it (pos(u) < p < pos(w)): such an edge is the start of a
/// path around it, and without one every path has to land on it. One pass marks the jumped-over
/// positions (a difference array), so the cost is linear in the edges.
fn mark_dominators(cands: &mut [Candidate], graph: &GraphProto) {
    let pos: std::collections::HashMap<&str, usize> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i + 1))
        .collect();
    let end = cands.iter().position(|c| c.classifier_input).or_else(|| {
        let first = graph.output.first()?;
        cands.iter().position(|c| c.name == first.name)
    });
    let Some(end) = end else { return };
    // backwards from the end: every tensor some path to the end starts from
    let mut useful = vec![false; cands.len()];
    useful[end] = true;
    for i in (0..=end).rev() {
        if !useful[i] {
            continue;
        }
        for inp in &cands[i].dyn_inputs {
            if let Some(&p) = pos.get(inp.as_str()) {
                useful[p - 1] = true;
            }
        }
    }
    // position 0 is the image; each useful tensor's image-dependent inputs are its edges
    let mut jump = vec![0i64; cands.len() + 2];
    for (i, c) in cands.iter().enumerate().take(end + 1) {
        if !useful[i] {
            continue;
        }
        let w = i + 1;
        for inp in &c.dyn_inputs {
            let u = pos.get(inp.as_str()).copied().unwrap_or(0);
            if u + 1 < w {
                jump[u + 1] += 1;
                jump[w] -= 1;
            }
        }
    }
    let mut covered = 0i64;
    for (i, c) in cands.iter_mut().enumerate() {
        covered += jump[i + 1];
        c.useful = i <= end && useful[i];
        c.dominator = c.useful && covered == 0;
    }
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

/// True for an elementwise activation op.
pub fn is_activation(op: &str) -> bool {
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

/// Why the default selection took a layer (`domsim layers` prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// Every path passes through it and it ends or starts a block with several paths (a residual, dense or
    /// attention block, a squeeze-excitation gate).
    Boundary,
    /// Every path passes through it, in a plain chain of layers; the last of its named module.
    ModuleOutput,
    /// Every path passes through it, in a plain chain of unnamed layers.
    Chain,
    /// Added to reach 8 layers in a graph with few block boundaries.
    Spread,
    /// The classifier's input (rule 6).
    ClassifierInput,
    /// Chosen by node names: the graph's structure gave no block boundaries (the old rule).
    ByName,
}

impl Choice {
    /// The reason in words.
    pub fn describe(self) -> &'static str {
        match self {
            Choice::Boundary => "block boundary",
            Choice::ModuleOutput => "module output",
            Choice::Chain => "chain step",
            Choice::Spread => "spread (few boundaries)",
            Choice::ClassifierInput => "classifier input",
            Choice::ByName => "by name (no structure)",
        }
    }
}

/// The default selection over float candidates `all` (module docs), as indices into `all`.
/// `cands[i]` is the candidate `all[i]` came from.
pub fn default_selection(all: &[Layer], cands: &[Candidate]) -> Vec<usize> {
    default_choices(all, cands)
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

/// The default selection with the reason for each layer (module docs).
pub fn default_choices(all: &[Layer], cands: &[Candidate]) -> Vec<(usize, Choice)> {
    let eligible = |i: usize| {
        !all[i].graph_output
            && !cands[i].preprocessing
            && !all[i].by_name_only
            && all[i].refused.is_none()
            && !cands[i].after_classifier
            && !PROBABILITY_OPS.contains(&all[i].op_type.as_str())
    };
    let idx: Vec<usize> = (0..all.len()).filter(|&i| eligible(i)).collect();
    let scopes = Scopes::new(cands);
    let mut picked =
        structural(&idx, all, cands, &scopes).unwrap_or_else(|| by_scope(&idx, all, cands));
    if picked.len() > 20 {
        // first one layer per named module (the last), then evenly spaced
        let scope = |k: usize| scopes.of(&cands[picked[k].0].node_name);
        picked = (0..picked.len())
            .filter(|&k| scope(k).is_none() || k + 1 == picked.len() || scope(k + 1) != scope(k))
            .map(|k| picked[k])
            .collect();
    }
    if picked.len() > 20 {
        picked = evenly_spaced(picked.len(), 16)
            .into_iter()
            .map(|k| picked[k])
            .collect();
    }
    // rule 6: the classifier's input, whatever the thinning kept
    if let Some(ci) = (0..all.len()).find(|&i| cands[i].classifier_input && eligible(i)) {
        match picked.iter_mut().find(|p| p.0 == ci) {
            Some(p) => p.1 = Choice::ClassifierInput,
            None => picked.push((ci, Choice::ClassifierInput)),
        }
    }
    picked.sort_unstable_by_key(|p| p.0);
    picked
}

/// The scope of a node name: its first path component after the components (nearly) every named node shares
/// (`/m/layer1/...` in a model wrapped in one module `m` has scope `layer1`).
struct Scopes {
    skip: usize,
}

impl Scopes {
    fn new(cands: &[Candidate]) -> Self {
        let paths: Vec<Vec<&str>> = cands
            .iter()
            .filter(|c| c.node_name.contains('/'))
            .map(|c| c.node_name.split('/').filter(|s| !s.is_empty()).collect())
            .collect();
        let mut skip = 0;
        while !paths.is_empty() {
            let mut counts: std::collections::HashMap<&str, usize> = Default::default();
            // the last component is the node itself, never a module
            for p in paths.iter().filter(|p| p.len() > skip + 1) {
                *counts.entry(p[skip]).or_default() += 1;
            }
            match counts.values().max() {
                Some(&m) if m * 10 >= paths.len() * 9 => skip += 1,
                _ => break,
            }
        }
        Scopes { skip }
    }

    fn of<'a>(&self, node_name: &'a str) -> Option<&'a str> {
        if !node_name.contains('/') {
            return None;
        }
        let parts: Vec<&str> = node_name.split('/').filter(|s| !s.is_empty()).collect();
        (parts.len() > self.skip + 1).then(|| parts[self.skip])
    }
}

/// The selection from the graph's structure (module docs), or `None` when the structure shows no block
/// boundary (no dominator among the eligible layers).
fn structural(
    idx: &[usize],
    all: &[Layer],
    cands: &[Candidate],
    scopes: &Scopes,
) -> Option<Vec<(usize, Choice)>> {
    let doms: Vec<usize> = idx
        .iter()
        .copied()
        .filter(|&i| cands[i].dominator)
        .collect();
    if doms.is_empty() {
        return None;
    }
    // an activation applied to a boundary replaces it: the block-final activation is preferred
    let next_dom = |i: usize| (i + 1..all.len()).find(|&j| cands[j].dominator);
    let kept: Vec<usize> = doms
        .iter()
        .copied()
        .filter(|&d| {
            !next_dom(d).is_some_and(|j| {
                is_activation(&all[j].op_type)
                    && cands[j].dyn_inputs.iter().any(|x| *x == cands[d].name)
                    && idx.contains(&j)
            })
        })
        .collect();
    // a segment between two boundaries is a block with several paths when a useful tensor in it is not a
    // dominator
    let branching = |a: Option<usize>, b: usize| {
        (a.map_or(0, |a| a + 1)..b).any(|k| cands[k].useful && !cands[k].dominator)
    };
    let end = (0..all.len()).find(|&i| cands[i].classifier_input);
    let mut out = Vec::new();
    let mut run: Vec<usize> = Vec::new();
    // a chain step is kept when it is the last of its named module: the next kept layer (a chain step or
    // the boundary that ends the run, `then`) belongs to another module
    let flush = |run: &mut Vec<usize>, then: Option<usize>, out: &mut Vec<(usize, Choice)>| {
        for (k, &i) in run.iter().enumerate() {
            let s = scopes.of(&cands[i].node_name);
            match s {
                None => out.push((i, Choice::Chain)),
                Some(s) => {
                    let last_of_scope = run
                        .get(k + 1)
                        .copied()
                        .or(then)
                        .is_none_or(|j| scopes.of(&cands[j].node_name) != Some(s));
                    if last_of_scope {
                        out.push((i, Choice::ModuleOutput));
                    }
                }
            }
        }
        run.clear();
    };
    for (k, &d) in kept.iter().enumerate() {
        let prev = k.checked_sub(1).map(|p| kept[p]);
        let next = kept.get(k + 1).copied().or(end.filter(|&e| e > d));
        let boundary = branching(prev, d) || next.is_some_and(|n| branching(Some(d), n));
        if boundary {
            flush(&mut run, Some(d), &mut out);
            out.push((d, Choice::Boundary));
        } else {
            run.push(d);
        }
    }
    flush(&mut run, None, &mut out);
    if out.len() < 8 {
        let rest: Vec<usize> = kept
            .iter()
            .copied()
            .filter(|i| !out.iter().any(|o| o.0 == *i))
            .collect();
        for k in evenly_spaced(rest.len(), 12 - out.len()) {
            out.push((rest[k], Choice::Spread));
        }
    }
    out.sort_unstable_by_key(|p| p.0);
    Some(out)
}

/// The selection by node names (the rule before the structural one; used when the structure shows no
/// boundary): the last candidate of each scope, residual `Add`s, activation-only scopes replacing the
/// output before them; fewer than 8: evenly spaced candidates added until 12.
fn by_scope(idx: &[usize], all: &[Layer], cands: &[Candidate]) -> Vec<(usize, Choice)> {
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
    let mut out: Vec<(usize, Choice)> = blocks.iter().map(|&i| (i, Choice::ByName)).collect();
    if blocks.len() < 8 && idx.len() > blocks.len() {
        for k in evenly_spaced(idx.len(), 12) {
            if !blocks.contains(&idx[k]) {
                out.push((idx[k], Choice::Spread));
            }
        }
        out.sort_unstable_by_key(|p| p.0);
    }
    out
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
