//! The model side of the pipeline: ONNX protobuf access ([`onnx`]), layer discovery ([`layers`]) and the
//! ONNX Runtime backend ([`runtime`]).

pub mod layers;
pub mod onnx;
pub mod pool;
pub mod rescale;
pub mod runtime;

pub use layers::{Layer, Selection};
pub use runtime::{ElemType, Embedder, InputBatch, InputContract, Layout, OnnxModel, RawOutput};
