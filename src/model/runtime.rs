//! The ONNX Runtime backend: finding the shared library, loading a model, reading its input contract,
//! and running it with intermediate layers exposed as outputs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use sha2::{Digest, Sha256};

use super::layers::{self, Candidate, Layer, Selection};
use super::onnx;
use crate::error::{input_err, Error, Result};

/// SHA-256 of the bundled default model (`data/models/efficientnet_lite0.onnx`).
pub const DEFAULT_MODEL_SHA256: &str =
    "9cded8acd30bc500e1089a8ee95643ce276925de6d2565bbccf1050cb068f782";

/// A bundled file or folder: `data/<rel>` beside the executable when a release ships it there, else in the
/// source tree.
fn bundled(rel: &str) -> PathBuf {
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.join("data").join(rel)));
    match beside_exe {
        Some(p) if p.exists() => p,
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(rel),
    }
}

/// Path of the bundled default model inside the source tree.
pub fn default_model_path() -> PathBuf {
    bundled("models/efficientnet_lite0.onnx")
}

/// The bundled source reference for the bundled model: an embedding folder (float16) of the 398 ImageNet
/// photos in `../shared/datasets/animals` at every default layer, made by `scripts/make-reference.sh`
/// (`data/reference/PROVENANCE.md`).
pub fn bundled_reference_path() -> PathBuf {
    bundled("reference/efficientnet_lite0_animals")
}

static ENV: OnceLock<Environment> = OnceLock::new();

/// The places searched for the ONNX Runtime library, in order: the explicit path (`--ort-lib`, else
/// `ORT_DYLIB_PATH`) alone when one is given; otherwise the project-local `.ort/` folder, then beside the
/// executable.
pub fn library_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|s| !s.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut v = Vec::new();
    v.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort/libonnxruntime.so"));
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            v.push(dir.join("libonnxruntime.so"));
            v.push(dir.join("libonnxruntime.so.1"));
        }
    }
    v
}

/// Loads ONNX Runtime once per process (see [`library_candidates`]). Never panics: a missing library is an
/// [`Error::Input`] that says how to install it.
pub fn environment(explicit: Option<&Path>) -> Result<&'static Environment> {
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let cands = library_candidates(explicit);
    let mut tried = Vec::new();
    for path in &cands {
        if !path.is_file() {
            tried.push(format!("{} (not found)", path.display()));
            continue;
        }
        match ort::init_from(path) {
            Ok(builder) => {
                let env = builder.with_name("domsim").build()?;
                let _ = ENV.set(env);
                return Ok(ENV.get().expect("just set"));
            }
            Err(e) => tried.push(format!("{} ({e})", path.display())),
        }
    }
    input_err(format!(
        "cannot load the ONNX Runtime library; tried: {}. Install it with `bash scripts/install-ort.sh` in the domsim \
         checkout, or point `--ort-lib` / ORT_DYLIB_PATH at a libonnxruntime.so (version >= 1.31, e.g. from the \
         PyPI `onnxruntime` wheel)",
        tried.join("; ")
    ))
}

/// Memory layout of an image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    /// Batch, channels, height, width.
    Nchw,
    /// Batch, height, width, channels.
    Nhwc,
}

/// Element type of the image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElemType {
    /// float32, normalised.
    F32,
    /// uint8, raw 0–255 pixels.
    U8,
}

/// The model's image input as read from the model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputContract {
    /// Input tensor name.
    pub name: String,
    /// NCHW or NHWC.
    pub layout: Layout,
    /// float32 or uint8.
    pub elem: ElemType,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Height fed to the model.
    pub height: usize,
    /// Width fed to the model.
    pub width: usize,
    /// `Some(b)` when the model's batch dimension is fixed.
    pub fixed_batch: Option<usize>,
    /// True when the model accepts any spatial size (then `height`/`width` come from the user or 224).
    pub dynamic_size: bool,
}

/// A loaded ONNX model: bytes, hash, parsed graph and input contract.
pub struct OnnxModel {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// The model file's bytes.
    pub bytes: Vec<u8>,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// The decoded graph (fields domsim reads).
    pub graph: onnx::GraphProto,
    /// The input contract read from the model.
    pub input: InputContract,
    all: Vec<Layer>,
    candidates: Vec<Candidate>,
    threads: usize,
}

/// The bytes and the graph of an ONNX model file: an error naming the file when it does not exist, cannot be
/// read, or is not an ONNX model with a graph (before any session is made, and before any output folder).
pub fn read_onnx(path: &Path) -> Result<(Vec<u8>, onnx::GraphProto)> {
    let model_err = |message: String| Error::Model {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(model_err(format!(
            "model file '{}' does not exist; pass an ONNX image model with --model, or omit --model to use the bundled EfficientNet-Lite0",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read model", path, e))?;
    let not_onnx = |why: String| {
        model_err(format!(
            "'{}' is not an ONNX model ({why}); export your network with torch.onnx.export or tf2onnx first",
            path.display()
        ))
    };
    let proto = onnx::decode(&bytes).map_err(|e| not_onnx(e.to_string()))?;
    let graph = proto
        .graph
        .filter(|g| !g.node.is_empty())
        .ok_or_else(|| not_onnx("it has no graph nodes".into()))?;
    Ok((bytes, graph))
}

/// A session on (patched) model bytes. External weight files are looked up in `model_dir`, the model's own
/// folder, not the current directory.
fn session(
    bytes: &[u8],
    model_dir: &Path,
    threads: usize,
    ort_lib: Option<&Path>,
) -> Result<Session> {
    let env = environment(ort_lib)?;
    let dir = if model_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        model_dir
    };
    Ok(Session::builder(env)?
        .with_intra_threads(threads.max(1))?
        .with_inter_threads(1)?
        .with_intra_op_spinning(false)?
        .with_config_entry(
            "session.model_external_initializers_file_folder_path",
            dir.to_string_lossy(),
        )?
        .commit_from_memory(bytes)?)
}

/// The symbolic names of a tensor type's dimensions ("" where a dimension has none).
fn symbols_of(t: &ValueType) -> Option<Vec<String>> {
    match t {
        ValueType::Tensor {
            dimension_symbols, ..
        } => Some(dimension_symbols.iter().map(|s| s.to_string()).collect()),
        _ => None,
    }
}

/// The images' axis of a tensor when its declared shape says it: the one axis named like the input's batch
/// dimension; axis 0 for a model with a fixed batch b whose tensor starts with b (or the one axis of size b
/// otherwise). `None`: the shape does not say (then [`probe_batch_axes`] runs the model).
fn static_batch_axis(
    shape: &[i64],
    symbols: &[String],
    batch_symbol: Option<&str>,
    input: &InputContract,
) -> Option<usize> {
    if let Some(b) = input.fixed_batch {
        let b = b as i64;
        if shape.first() == Some(&b) {
            return Some(0);
        }
        let hits: Vec<usize> = (0..shape.len()).filter(|&k| shape[k] == b).collect();
        return (hits.len() == 1).then(|| hits[0]).or(Some(0));
    }
    let sym = batch_symbol?;
    let hits: Vec<usize> = (0..symbols.len())
        .filter(|&k| symbols[k] == sym && shape.get(k) == Some(&-1))
        .collect();
    (hits.len() == 1).then(|| hits[0])
}

/// Finds the images' axis of the tensors at `which` by running the model on 1 and on 2 blank images: it is
/// the axis whose size goes from 1 to 2. A tensor whose sizes do not change has no per-image axis; one whose
/// changing axis holds more than one row per image merges the images with another axis (windows of a Swin
/// transformer): both are refused, with the reason.
fn probe_batch_axes(
    bytes: &[u8],
    path: &Path,
    input: &InputContract,
    ort_lib: Option<&Path>,
    all: &mut [Layer],
    which: &[usize],
) -> Result<()> {
    let names: Vec<String> = which.iter().map(|&i| all[i].name.clone()).collect();
    let extra: Vec<String> = which
        .iter()
        .filter(|&&i| !all[i].graph_output)
        .map(|&i| all[i].name.clone())
        .collect();
    let mut sess = session(
        &onnx::with_extra_outputs(bytes, &extra),
        model_dir(path),
        1,
        ort_lib,
    )?;
    let per = input.channels * input.height * input.width;
    let mut shapes: Vec<Vec<Vec<usize>>> = Vec::new();
    for n in [1usize, 2] {
        let batch = match input.elem {
            ElemType::F32 => InputBatch::F32(vec![0.0; n * per]),
            ElemType::U8 => InputBatch::U8(vec![0; n * per]),
        };
        let outs = run_batch(&mut sess, input, batch, n).map_err(|e| {
            Error::Runtime(format!(
                "model '{}': running it on {n} blank image(s) to find each layer's batch axis failed: {e}",
                path.display()
            ))
        })?;
        shapes.push(
            names
                .iter()
                .map(|name| {
                    outs.get(name.as_str())
                        .and_then(|v| v.shape().iter().map(|&d| usize::try_from(d).ok()).collect())
                        .unwrap_or_default()
                })
                .collect(),
        );
    }
    for (k, &i) in which.iter().enumerate() {
        let (one, two) = (&shapes[0][k], &shapes[1][k]);
        let changed: Vec<usize> = (0..one.len().min(two.len()))
            .filter(|&a| one[a] != two[a])
            .collect();
        let l = &mut all[i];
        match changed.as_slice() {
            [] if one.is_empty() => {}
            [] => {
                l.refused = Some(format!(
                    "its shape {one:?} does not change with the number of images: not one value per image"
                ))
            }
            [a] if one[*a] == 1 && two[*a] == 2 => l.batch_axis = *a,
            [a] => {
                l.refused = Some(format!(
                    "axis {a} holds {} rows per image (the images merged with another axis, such as attention windows): not one vector per image",
                    one[*a]
                ))
            }
            _ => {
                l.refused = Some(format!(
                    "several axes change with the number of images ({one:?} for 1, {two:?} for 2): not one vector per image"
                ))
            }
        }
    }
    Ok(())
}

/// Why a layer is not a per-image feature, from its rank and op (after its batch axis is known).
fn not_per_image(l: &Layer) -> Option<String> {
    let rank = l.shape.len();
    let conv_family = crate::model::pool::is_nchw_op(&l.op_type);
    if rank >= 5 && !conv_family {
        return Some(format!(
            "a rank-{rank} tensor from {} (windows or attention heads), not a feature map: pooling it would treat an inner axis as the features",
            l.op_type
        ));
    }
    if rank == 4 && l.batch_axis == 0 && matches!(l.op_type.as_str(), "Softmax" | "MatMul") {
        let (a, b) = (l.shape[2], l.shape[3]);
        if a == b || l.op_type == "Softmax" {
            return Some(format!(
                "an attention map ({} over [{}, {}] token pairs per head), not features of the image",
                l.op_type,
                if a > 0 { a.to_string() } else { "T".into() },
                if b > 0 { b.to_string() } else { "T".into() }
            ));
        }
    }
    None
}

fn dims_of(t: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match t {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

impl OnnxModel {
    /// Loads and validates a model. `size` overrides the spatial size for models with a dynamic one;
    /// `layout` overrides the layout guess when the model's input shape is ambiguous.
    pub fn load(
        path: &Path,
        threads: usize,
        ort_lib: Option<&Path>,
        size: Option<usize>,
        layout: Option<Layout>,
    ) -> Result<Self> {
        let model_err = |message: String| Error::Model {
            path: path.to_path_buf(),
            message,
        };
        let (bytes, graph) = read_onnx(path)?;
        let not_onnx = |why: String| {
            model_err(format!(
                "'{}' is not an ONNX model ({why}); export your network with torch.onnx.export or tf2onnx first",
                path.display()
            ))
        };
        let sha256 = model_sha256(path, &bytes, &graph)?;
        // One session with every candidate exposed serves both the input contract and the layer types.
        let cands = layers::candidates(&graph);
        let extra: Vec<String> = cands
            .iter()
            .filter(|c| !c.graph_output)
            .map(|c| c.name.clone())
            .collect();
        let sess = session(
            &onnx::with_extra_outputs(&bytes, &extra),
            model_dir(path),
            1,
            ort_lib,
        )
        .map_err(|e| match e {
            Error::Runtime(m) if is_out_of_memory(&m) => Error::Runtime(format!(
                "out of memory while loading '{}' ({m}); free memory, or run with fewer --threads",
                path.display()
            )),
            Error::Runtime(m) => not_onnx(format!("ONNX Runtime cannot load it: {m}")),
            other => other,
        })?;
        let input = read_contract(path, &sess, size, layout)?;
        let batch_symbol = sess
            .inputs()
            .first()
            .and_then(|i| symbols_of(i.dtype()))
            .and_then(|s| s.first().cloned())
            .filter(|s| !s.is_empty());
        let mut all = Vec::new();
        let mut kept = Vec::new();
        let mut unresolved = Vec::new();
        for c in cands {
            let Some(outlet) = sess.outputs().iter().find(|o| o.name() == c.name) else {
                continue;
            };
            if let Some((TensorElementType::Float32, shape)) = dims_of(outlet.dtype()) {
                let symbols = symbols_of(outlet.dtype()).unwrap_or_default();
                let axis = static_batch_axis(&shape, &symbols, batch_symbol.as_deref(), &input);
                if axis.is_none() && !c.layout_op {
                    unresolved.push(all.len());
                }
                all.push(Layer {
                    name: c.name.clone(),
                    op_type: c.op_type.clone(),
                    shape,
                    node_index: all.len(),
                    graph_output: c.graph_output,
                    by_name_only: c.layout_op,
                    refused: None,
                    batch_axis: axis.unwrap_or(0),
                });
                kept.push(c);
            }
        }
        drop(sess);
        if !unresolved.is_empty() && input.fixed_batch.is_none() {
            probe_batch_axes(&bytes, path, &input, ort_lib, &mut all, &unresolved)?;
        }
        for l in all.iter_mut() {
            if l.refused.is_none() {
                l.refused = not_per_image(l);
            }
        }
        if all.is_empty() {
            return Err(model_err(format!(
                "model '{}' has no float32 layer computed from its input; domsim needs a network whose layers are float tensors",
                path.display()
            )));
        }
        Ok(OnnxModel {
            path: path.to_path_buf(),
            bytes,
            sha256,
            graph,
            input,
            all,
            candidates: kept,
            threads,
        })
    }

    /// True when this is the bundled default model (its preprocessing is known).
    pub fn is_default(&self) -> bool {
        self.sha256 == DEFAULT_MODEL_SHA256
    }

    /// Every float32 candidate layer (topological order), with shapes as ONNX Runtime reports them.
    pub fn all_layers(&self) -> &[Layer] {
        &self.all
    }

    /// The default selection with the reason for each layer, in depth order.
    pub fn default_choices(&self) -> Vec<(Layer, layers::Choice)> {
        layers::default_choices(&self.all, &self.candidates)
            .into_iter()
            .map(|(i, c)| (self.all[i].clone(), c))
            .collect()
    }

    /// The layers chosen by `sel`, in depth order.
    pub fn select(&self, sel: &Selection) -> Result<Vec<Layer>> {
        let (all, cands) = (&self.all, &self.candidates);
        let idx = match sel {
            Selection::All => (0..all.len())
                .filter(|&i| !all[i].by_name_only && all[i].refused.is_none())
                .collect(),
            Selection::Names(names) => {
                let idx = layers::select_names(all, names)?;
                if let Some(&i) = idx.iter().find(|&&i| all[i].refused.is_some()) {
                    return Err(Error::Layer {
                        layer: all[i].name.clone(),
                        message: format!(
                            "layer '{}' {:?} cannot be embedded: {}. Choose a block output instead (`domsim layers` lists them, `--all` every per-image tensor)",
                            all[i].name,
                            all[i].shape,
                            all[i].refused.as_deref().unwrap_or_default()
                        ),
                    });
                }
                idx
            }
            Selection::Default => layers::default_selection(all, cands),
        };
        Ok(idx.into_iter().map(|i| all[i].clone()).collect())
    }

    /// Builds the runtime embedder for `layers`. With `pool`, each layer that can be pooled inside the
    /// graph ([`crate::model::pool::in_graph_shape`]) gets global pooling nodes appended to the model, so that ONNX
    /// Runtime returns (N, C) values instead of the whole map (less copying, less memory); the other layers
    /// come back raw. `None` returns every layer raw.
    pub fn embedder(
        &self,
        layers: Vec<Layer>,
        pool: Option<crate::model::pool::Pool>,
        ort_lib: Option<&Path>,
    ) -> Result<OrtEmbedder> {
        let mut nodes = Vec::new();
        let mut extra = Vec::new();
        let mut fetch = Vec::new();
        for l in &layers {
            match pool.and_then(|p| Some((p, crate::model::pool::in_graph_shape(l, &self.input)?)))
            {
                Some((mode, dims)) => {
                    let (rows, max) = pooling_nodes(&l.name, &dims, mode, &mut nodes);
                    extra.extend(rows.iter().chain(&max).cloned());
                    fetch.push(Fetch::Pooled { rows, max, dims });
                }
                None => {
                    if !l.graph_output {
                        extra.push(l.name.clone());
                    }
                    fetch.push(Fetch::Raw);
                }
            }
        }
        let bytes = onnx::with_extra_nodes(&self.bytes, &nodes, &extra);
        let session = session(&bytes, model_dir(&self.path), self.threads, ort_lib)?;
        Ok(OrtEmbedder {
            session,
            contract: self.input.clone(),
            layers,
            fetch,
            tokens: self.classifier_tokens(),
        })
    }

    /// How the model's classifier reads its tokens: the class token when the classifier's input is one
    /// token taken (`Gather`, `Slice`) from a token tensor, else their mean.
    pub fn classifier_tokens(&self) -> crate::model::pool::Tokens {
        use crate::model::pool::Tokens;
        let Some(ci) = self.candidates.iter().position(|c| c.classifier_input) else {
            return Tokens::Mean;
        };
        // back from the classifier's input through normalisations and activations (a CLIP head's ln_post)
        let mut c = &self.candidates[ci];
        for _ in 0..8 {
            if matches!(c.op_type.as_str(), "Gather" | "Slice") {
                let from_tokens = c
                    .dyn_inputs
                    .iter()
                    .any(|x| self.all.iter().any(|l| l.name == *x && l.shape.len() == 3));
                return if from_tokens {
                    Tokens::Cls
                } else {
                    Tokens::Mean
                };
            }
            let passes = matches!(
                c.op_type.as_str(),
                "LayerNormalization" | "BatchNormalization" | "Mul" | "Add" | "Div" | "Sub"
            ) || layers::is_activation(&c.op_type);
            let prev = match c.dyn_inputs.as_slice() {
                [one] if passes => self.candidates.iter().find(|p| p.name == *one),
                _ => None,
            };
            match prev {
                Some(p) => c = p,
                None => break,
            }
        }
        Tokens::Mean
    }
}

impl OnnxModel {
    /// Root mean square of each tensor in `names` over one batch of `n` images (every value of the tensor:
    /// images, channels and positions), computed inside the graph (`Mul`, then `ReduceMean` over all axes)
    /// so that only one number per tensor comes back. `weights` is this model's bytes, or a copy of them
    /// with other weight values (the same graph and input).
    pub fn tensor_rms(
        &self,
        weights: &[u8],
        names: &[String],
        batch: InputBatch,
        n: usize,
        ort_lib: Option<&Path>,
    ) -> Result<Vec<f64>> {
        use onnx::{AttributeProto as A, NodeProto as N};
        let mut nodes = Vec::new();
        let mut outs = Vec::new();
        for name in names {
            let sq = format!("domsim/sq/{name}");
            let mean = format!("domsim/meansq/{name}");
            nodes.push(N::new("Mul", &[name, name], &sq, vec![]));
            nodes.push(N::new(
                "ReduceMean",
                &[&sq],
                &mean,
                vec![A::int("keepdims", 0)],
            ));
            outs.push(mean);
        }
        let bytes = onnx::with_extra_nodes(weights, &nodes, &outs);
        let mut session = session(&bytes, model_dir(&self.path), self.threads, ort_lib)?;
        let outputs = run_batch(&mut session, &self.input, batch, n)?;
        outs.iter()
            .zip(names)
            .map(|(o, name)| {
                let v = outputs
                    .get(o.as_str())
                    .ok_or_else(|| {
                        Error::Runtime(format!(
                            "tensor '{name}': its mean square is missing from the outputs"
                        ))
                    })?
                    .try_extract_tensor::<f32>()
                    .map_err(|e| {
                        Error::Runtime(format!("tensor '{name}': cannot read its mean square: {e}"))
                    })?
                    .1
                    .first()
                    .copied()
                    .unwrap_or(f32::NAN);
                Ok(f64::from(v).sqrt())
            })
            .collect()
    }
}

/// Appends to `nodes` the global pooling of tensor `name` (channels on axis 1, per-image shape `dims`) for
/// `mode`; returns the names of the row-mean output and of the maximum output
/// (N, C, 1, ...). The average is split in two so that it stays as exact as [`crate::model::pool::pool`]'s float64
/// sum: ONNX Runtime averages each row of the last axis in float32 (an `AveragePool` over 1 × W windows, at
/// most a few hundred values, which its blocked-channel kernels run without reordering the map), shrinking
/// the tensor by its width, and domsim averages those row means in float64
/// ([`crate::model::pool::average_row_means`]).
fn pooling_nodes(
    name: &str,
    dims: &[usize],
    mode: crate::model::pool::Pool,
    nodes: &mut Vec<onnx::NodeProto>,
) -> (Option<String>, Option<String>) {
    use crate::model::pool::Pool;
    use onnx::{AttributeProto as A, NodeProto as N};
    let spatial = &dims[1..];
    let window: Vec<i64> = spatial
        .iter()
        .enumerate()
        .map(|(i, &d)| if i + 1 == spatial.len() { d as i64 } else { 1 })
        .collect();
    let rows = matches!(mode, Pool::Avg | Pool::AvgMax).then(|| {
        let out = format!("domsim/rowmean/{name}");
        nodes.push(N::new(
            "AveragePool",
            &[name],
            &out,
            vec![
                A::ints("kernel_shape", window.clone()),
                A::ints("strides", window.clone()),
            ],
        ));
        out
    });
    let max = matches!(mode, Pool::Max | Pool::AvgMax).then(|| {
        let out = format!("domsim/max/{name}");
        nodes.push(N::new("GlobalMaxPool", &[name], &out, vec![]));
        out
    });
    (rows, max)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn model_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// The model's identity: the SHA-256 of its file, or, when its weights live in external files, the SHA-256
/// of the file's hash followed by each external file's name and hash (so that other weights give another
/// identity). An external file must lie inside the model's folder.
fn model_sha256(path: &Path, bytes: &[u8], graph: &onnx::GraphProto) -> Result<String> {
    let own = hex(&Sha256::digest(bytes));
    let ext = onnx::external_files(graph);
    if ext.is_empty() {
        return Ok(own);
    }
    let mut h = Sha256::new();
    h.update(own.as_bytes());
    for loc in ext {
        let rel = Path::new(&loc);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::Model {
                path: path.to_path_buf(),
                message: format!(
                    "model '{}' names the external weight file '{loc}', which is outside the model's folder; ONNX external data must be a relative path inside it",
                    path.display()
                ),
            });
        }
        let f = model_dir(path).join(rel);
        let fb = std::fs::read(&f).map_err(|e| Error::Model {
            path: path.to_path_buf(),
            message: format!(
                "model '{}' keeps weights in the external file '{loc}', which cannot be read at '{}' ({e}); keep it beside the model",
                path.display(),
                f.display()
            ),
        })?;
        h.update(format!("\0{loc}\0{}", hex(&Sha256::digest(&fb))).as_bytes());
    }
    Ok(hex(&h.finalize()))
}

/// The model's identity as [`OnnxModel::load`] computes it (external weight files included), from its path.
pub fn model_identity(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    match onnx::decode(&bytes).ok().and_then(|m| m.graph) {
        Some(g) => model_sha256(path, &bytes, &g),
        None => Ok(hex(&Sha256::digest(&bytes))), // not a model: load() will say so
    }
}

fn read_contract(
    path: &Path,
    sess: &Session,
    size: Option<usize>,
    layout: Option<Layout>,
) -> Result<InputContract> {
    let inputs = sess.inputs();
    let contract_err = |message: String| Error::InputContract {
        model: path.to_path_buf(),
        message,
    };
    let bad = |why: String| {
        contract_err(format!(
            "model '{}' does not take an image tensor: {why}; domsim needs one input of shape (N,C,H,W) or (N,H,W,C) with C = 1 or 3, float32 or uint8",
            path.display()
        ))
    };
    if inputs.len() != 1 {
        return Err(bad(format!(
            "it has {} inputs ({})",
            inputs.len(),
            inputs
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let inp = &inputs[0];
    let (ty, shape) = dims_of(inp.dtype())
        .ok_or_else(|| bad(format!("input '{}' is not a tensor", inp.name())))?;
    let elem = match ty {
        TensorElementType::Float32 => ElemType::F32,
        TensorElementType::Uint8 => ElemType::U8,
        other => {
            return Err(bad(format!(
                "input '{}' has element type {other:?}",
                inp.name()
            )))
        }
    };
    if shape.len() != 4 {
        return Err(bad(format!("input '{}' has shape {shape:?}", inp.name())));
    }
    let is_ch = |d: i64| d == 1 || d == 3;
    let guessed = if is_ch(shape[1]) && !is_ch(shape[3]) {
        Some(Layout::Nchw)
    } else if is_ch(shape[3]) && !is_ch(shape[1]) {
        Some(Layout::Nhwc)
    } else {
        None
    };
    let Some(layout) = layout.or(guessed) else {
        return Err(contract_err(format!(
            "model '{}': input '{}' has shape {shape:?}, which does not say whether channels come first or last; pass --layout nchw or --layout nhwc",
            path.display(),
            inp.name()
        )));
    };
    let (c, h, w) = match layout {
        Layout::Nchw => (shape[1], shape[2], shape[3]),
        Layout::Nhwc => (shape[3], shape[1], shape[2]),
    };
    if !is_ch(c) {
        return Err(bad(format!(
            "input '{}' has shape {shape:?}: no channel axis of size 1 or 3 in {layout:?} layout",
            inp.name()
        )));
    }
    let dynamic_size = h <= 0 || w <= 0;
    if let (Some(s), false) = (size, dynamic_size) {
        if (s as i64, s as i64) != (h, w) {
            return Err(contract_err(format!(
                "model '{}' has a fixed {h}×{w} input ('{}'); --size {s} cannot change it. Leave out --size (it is for models whose input size is dynamic)",
                path.display(),
                inp.name()
            )));
        }
    }
    let fallback = size.unwrap_or(224);
    Ok(InputContract {
        name: inp.name().to_string(),
        layout,
        elem,
        channels: c as usize,
        height: if h > 0 { h as usize } else { fallback },
        width: if w > 0 { w as usize } else { fallback },
        fixed_batch: (shape[0] > 0).then_some(shape[0] as usize),
        dynamic_size,
    })
}

/// Whether an ONNX Runtime message reports a failed allocation (a valid model on a machine short of memory,
/// not a file that is no model).
fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "bad_alloc",
        "bad allocation",
        "failed to allocate",
        "out of memory",
        "cannot allocate",
    ]
    .iter()
    .any(|k| m.contains(k))
}

/// Runs one batch of `n` images through `session`, shaped by the model's input contract.
fn run_batch<'s>(
    session: &'s mut Session,
    c: &InputContract,
    batch: InputBatch,
    n: usize,
) -> Result<ort::session::SessionOutputs<'s>> {
    let shape: Vec<i64> = match c.layout {
        Layout::Nchw => vec![n as i64, c.channels as i64, c.height as i64, c.width as i64],
        Layout::Nhwc => vec![n as i64, c.height as i64, c.width as i64, c.channels as i64],
    };
    let name = c.name.clone();
    Ok(match batch {
        InputBatch::F32(v) => session.run(ort::inputs![name => Tensor::from_array((shape, v))?])?,
        InputBatch::U8(v) => session.run(ort::inputs![name => Tensor::from_array((shape, v))?])?,
    })
}

/// One batch of preprocessed images, laid out as the model expects.
#[derive(Debug, Clone)]
pub enum InputBatch {
    /// float32 pixels.
    F32(Vec<f32>),
    /// uint8 pixels.
    U8(Vec<u8>),
}

/// The output of one layer for one batch: the raw tensor, or the pooled rows when the backend pooled it.
pub struct RawOutput {
    /// The layer's shape as run (first axis = batch), also when `pooled`.
    pub shape: Vec<usize>,
    /// Values, C-order: the tensor, or n pooled rows when `pooled`.
    pub data: Vec<f32>,
    /// True when the backend pooled the tensor already (see [`OnnxModel::embedder`]).
    pub pooled: bool,
}

/// How the embedder reads one layer from the session's outputs.
enum Fetch {
    /// The layer's own tensor.
    Raw,
    /// The pooling nodes' outputs (row means, to be averaged in float64; maxima), concatenated per image
    /// in that order; `dims` is the layer's per-image shape.
    Pooled {
        rows: Option<String>,
        max: Option<String>,
        dims: Vec<usize>,
    },
}

/// A backend that turns a batch of images into per-layer activations. The ONNX Runtime one is
/// [`OrtEmbedder`]; tests may add a fake one beside it.
pub trait Embedder {
    /// The input the backend expects.
    fn contract(&self) -> &InputContract;
    /// The layers it returns, in depth order.
    fn layers(&self) -> &[Layer];
    /// Runs one batch of `n` images; returns one output per layer.
    fn run(&mut self, batch: InputBatch, n: usize) -> Result<Vec<RawOutput>>;
    /// How the model's own classifier reads its tokens (the default of `--tokens`).
    fn classifier_tokens(&self) -> crate::model::pool::Tokens {
        crate::model::pool::Tokens::Mean
    }
}

/// The ONNX Runtime embedder.
pub struct OrtEmbedder {
    session: Session,
    contract: InputContract,
    layers: Vec<Layer>,
    fetch: Vec<Fetch>,
    tokens: crate::model::pool::Tokens,
}

impl Embedder for OrtEmbedder {
    fn contract(&self) -> &InputContract {
        &self.contract
    }

    fn layers(&self) -> &[Layer] {
        &self.layers
    }

    fn classifier_tokens(&self) -> crate::model::pool::Tokens {
        self.tokens
    }

    fn run(&mut self, batch: InputBatch, n: usize) -> Result<Vec<RawOutput>> {
        let outputs = run_batch(&mut self.session, &self.contract, batch, n)?;
        let missing = |name: &str, layer: &str| {
            Error::Runtime(format!(
                "layer '{layer}': output '{name}' is missing from the model's outputs"
            ))
        };
        let unreadable = |layer: &str, e: ort::Error| {
            Error::Runtime(format!("layer '{layer}': cannot read its values: {e}"))
        };
        let mut res = Vec::with_capacity(self.layers.len());
        for (l, f) in self.layers.iter().zip(&self.fetch) {
            let layer = l.name.as_str();
            let get = |name: &str| outputs.get(name).ok_or_else(|| missing(name, layer));
            res.push(match f {
                Fetch::Raw => {
                    let (shape, data) = get(layer)?
                        .try_extract_tensor::<f32>()
                        .map_err(|e| unreadable(layer, e))?;
                    RawOutput {
                        shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                        data: data.to_vec(),
                        pooled: false,
                    }
                }
                Fetch::Pooled { rows, max, dims } => {
                    let mut parts: Vec<Vec<f32>> = Vec::new();
                    if let Some(a) = rows {
                        let (_, v) = get(a)?
                            .try_extract_tensor::<f32>()
                            .map_err(|e| unreadable(layer, e))?;
                        parts.push(crate::model::pool::average_row_means(v, n, dims));
                    }
                    if let Some(m) = max {
                        let (_, v) = get(m)?
                            .try_extract_tensor::<f32>()
                            .map_err(|e| unreadable(layer, e))?;
                        parts.push(v.to_vec());
                    }
                    let c = dims[0];
                    if let Some(p) = parts.iter().find(|p| p.len() != n * c) {
                        return Err(Error::Runtime(format!(
                            "layer '{layer}': pooled output has {} values, expected {n} images x {c} channels",
                            p.len()
                        )));
                    }
                    let mut data = Vec::with_capacity(n * c * parts.len());
                    for i in 0..n {
                        for p in &parts {
                            data.extend_from_slice(&p[i * c..(i + 1) * c]);
                        }
                    }
                    RawOutput {
                        shape: std::iter::once(n).chain(dims.iter().copied()).collect(),
                        data,
                        pooled: true,
                    }
                }
            });
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn allocation_failures_are_told_apart_from_bad_models() {
        assert!(super::is_out_of_memory("std::bad_alloc"));
        assert!(super::is_out_of_memory(
            "Failed to allocate memory for requested buffer of size 3200000000"
        ));
        assert!(!super::is_out_of_memory("Protobuf parsing failed."));
    }
}
