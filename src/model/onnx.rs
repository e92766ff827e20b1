//! Just enough of the ONNX protobuf schema (`onnx.proto`, Apache-2.0) to read a model's graph, plus
//! the edit that exposes intermediate tensors as graph outputs.
//!
//! Reading uses hand-written `prost` messages that declare only the fields domsim needs; prost skips the
//! rest without copying them (initializer weights included). The edit never re-encodes the model: it
//! *appends* a second `graph` field holding only the extra `output` entries. By the protobuf wire rules an
//! embedded message that occurs twice is merged and repeated fields are concatenated, so the runtime sees the
//! original graph with the extra outputs, and every byte of the original model (including fields this
//! schema does not know) is kept exactly.

use prost::Message;

/// `onnx.ModelProto` (fields used by domsim).
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

/// `onnx.OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `onnx.GraphProto` (fields used by domsim).
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto` (fields used by domsim).
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// `onnx.AttributeProto` (integer and integer-list attributes only; other kinds are skipped when reading).
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    /// `AttributeType`: 2 = INT, 7 = INTS.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

impl AttributeProto {
    /// An integer attribute.
    pub fn int(name: &str, i: i64) -> Self {
        AttributeProto {
            name: name.into(),
            i,
            ints: Vec::new(),
            r#type: 2,
        }
    }

    /// An integer-list attribute.
    pub fn ints(name: &str, ints: Vec<i64>) -> Self {
        AttributeProto {
            name: name.into(),
            i: 0,
            ints,
            r#type: 7,
        }
    }
}

impl NodeProto {
    /// A node of the default (`ai.onnx`) domain named after its first output.
    pub fn new(
        op_type: &str,
        input: &[&str],
        output: &str,
        attribute: Vec<AttributeProto>,
    ) -> Self {
        NodeProto {
            input: input.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: output.to_string(),
            op_type: op_type.into(),
            attribute,
        }
    }
}

/// `onnx.TensorProto`: the name and where external weights live (weights are skipped, not copied).
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// 1 = EXTERNAL: the weights are in the file named by `external_data["location"]`.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// `onnx.StringStringEntryProto`.
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// The external weight files a graph's initializers name (`location`, relative to the model's folder),
/// sorted and without repeats.
pub fn external_files(g: &GraphProto) -> Vec<String> {
    let mut v: Vec<String> = g
        .initializer
        .iter()
        .filter(|t| t.data_location == 1)
        .filter_map(|t| {
            t.external_data
                .iter()
                .find(|e| e.key == "location")
                .map(|e| e.value.clone())
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `onnx.ValueInfoProto`: the name only. A graph output without a type is accepted: ONNX Runtime infers it.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// One float32 initializer's payload in the model's bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatPayload {
    /// The tensor's name.
    pub name: String,
    /// Where its values lie (little-endian float32, `raw_data` or packed `float_data`).
    pub bytes: std::ops::Range<usize>,
}

/// Reads one protobuf varint at `*i`, advancing it.
fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One field of a protobuf message: field number, wire type, the byte range of its value, and the value
/// itself for a varint.
type Field = (u64, u64, std::ops::Range<usize>, u64);

/// The fields of one message in `b[range]`.
fn fields(b: &[u8], range: std::ops::Range<usize>) -> Option<Vec<Field>> {
    let mut out = Vec::new();
    let mut i = range.start;
    while i < range.end {
        let key = varint(b, &mut i)?;
        let (field, wire) = (key >> 3, key & 7);
        let start = i;
        let value = match wire {
            0 => varint(b, &mut i)?,
            1 => {
                i += 8;
                0
            }
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).ok()?;
                let s = i;
                i = i.checked_add(len)?;
                out.push((field, wire, s..i, 0));
                continue;
            }
            5 => {
                i += 4;
                0
            }
            _ => return None,
        };
        if i > range.end {
            return None;
        }
        out.push((field, wire, start..i, value));
    }
    (i == range.end).then_some(out)
}

/// Every float32 initializer with its values stored in the model file (not external), read from the wire
/// format directly so that the bytes can be changed in place: `ModelProto.graph` (7) →
/// `GraphProto.initializer` (5) → `TensorProto` with `data_type` (2) = FLOAT (1), values in `raw_data` (9)
/// or packed `float_data` (4). `None` when the bytes are not a well-formed protobuf message.
pub fn float_payloads(model: &[u8]) -> Option<Vec<FloatPayload>> {
    let mut out = Vec::new();
    for (f, w, r, _) in fields(model, 0..model.len())? {
        if f != 7 || w != 2 {
            continue;
        }
        for (gf, gw, gr, _) in fields(model, r)? {
            if gf != 5 || gw != 2 {
                continue;
            }
            let t = fields(model, gr)?;
            let float = t.iter().any(|x| x.0 == 2 && x.1 == 0 && x.3 == 1);
            let name = t
                .iter()
                .find(|x| x.0 == 8 && x.1 == 2)
                .map(|x| String::from_utf8_lossy(&model[x.2.clone()]).into_owned())
                .unwrap_or_default();
            if let Some(data) = t.iter().find(|x| (x.0 == 9 || x.0 == 4) && x.1 == 2) {
                if float && data.2.len() % 4 == 0 {
                    out.push(FloatPayload {
                        name,
                        bytes: data.2.clone(),
                    });
                }
            }
        }
    }
    Some(out)
}

/// The model with the values of every float32 initializer of at least two values shuffled within that
/// tensor (seeded; Fisher–Yates over the 4-byte values): each tensor keeps its exact distribution of
/// weights while what training put where is destroyed. Every other byte is unchanged. Returns the new
/// bytes, the tensors and the values shuffled; `None` when the bytes are not a well-formed model.
pub fn permuted_weights(model: &[u8], seed: u64) -> Option<(Vec<u8>, usize, usize)> {
    use rand::{Rng, SeedableRng};
    let mut out = model.to_vec();
    let (mut tensors, mut values) = (0, 0);
    for (k, p) in float_payloads(model)?.iter().enumerate() {
        let n = p.bytes.len() / 4;
        if n < 2 {
            continue;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(k as u64);
        let buf = &mut out[p.bytes.clone()];
        for i in (1..n).rev() {
            let j = rng.gen_range(0..=i);
            for b in 0..4 {
                buf.swap(4 * i + b, 4 * j + b);
            }
        }
        tensors += 1;
        values += n;
    }
    Some((out, tensors, values))
}

/// A node that multiplies its input by weights stored in the model (`Conv`, `ConvTranspose`, `Gemm`,
/// `MatMul`): its output tensor and the bytes of its float initializers (weights and bias).
#[derive(Debug, Clone)]
pub struct WeightLayer {
    /// The node's output tensor.
    pub output: String,
    /// Byte ranges of its float32 initializers in the model file (see [`float_payloads`]).
    pub tensors: Vec<std::ops::Range<usize>>,
}

/// The weight layers of a model, in graph order; `None` when the bytes are not a well-formed model.
pub fn weight_layers(model: &[u8]) -> Option<Vec<WeightLayer>> {
    let graph = decode(model).ok()?.graph?;
    let floats = float_payloads(model)?;
    let by_name: std::collections::HashMap<&str, &std::ops::Range<usize>> =
        floats.iter().map(|p| (p.name.as_str(), &p.bytes)).collect();
    Some(
        graph
            .node
            .iter()
            .filter(|n| {
                matches!(
                    n.op_type.as_str(),
                    "Conv" | "ConvTranspose" | "Gemm" | "MatMul"
                )
            })
            .filter_map(|n| {
                let tensors: Vec<_> = n
                    .input
                    .iter()
                    .filter_map(|i| by_name.get(i.as_str()).map(|r| (*r).clone()))
                    .collect();
                (!tensors.is_empty() && !n.output.is_empty()).then(|| WeightLayer {
                    output: n.output[0].clone(),
                    tensors,
                })
            })
            .collect(),
    )
}

/// Multiplies every float32 value stored in `bytes[range]` (little-endian, as [`float_payloads`] finds
/// them) by `factor`, in place.
pub fn scale_floats(bytes: &mut [u8], range: std::ops::Range<usize>, factor: f32) {
    for c in bytes[range].chunks_exact_mut(4) {
        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * factor;
        c.copy_from_slice(&v.to_le_bytes());
    }
}

/// Decodes the parts of a model that domsim reads.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, prost::DecodeError> {
    ModelProto::decode(bytes)
}

/// Returns the model bytes with `names` appended as extra graph outputs (see the module docs).
pub fn with_extra_outputs(model: &[u8], names: &[String]) -> Vec<u8> {
    with_extra_nodes(model, &[], names)
}

/// Returns the model bytes with `nodes` appended to the graph and `outputs` appended as graph outputs (see
/// the module docs). Appended nodes come after the graph's own (they may read any of its tensors); their
/// attributes can only be integers or integer lists ([`AttributeProto`]).
pub fn with_extra_nodes(model: &[u8], nodes: &[NodeProto], outputs: &[String]) -> Vec<u8> {
    let patch = ModelProto {
        graph: Some(GraphProto {
            node: nodes.to_vec(),
            output: outputs
                .iter()
                .map(|n| ValueInfoProto { name: n.clone() })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(model.len() + 128 * (outputs.len() + nodes.len()));
    out.extend_from_slice(model);
    patch
        .encode(&mut out)
        .expect("encoding into a Vec cannot fail");
    out
}
