//! # domsim
//!
//! Will a pretrained model's layers transfer to my images, and where should I cut the network? domsim
//! measures it layer by layer, before any training.
//!
//! The pipeline runs in one direction; each arrow passes a plain value:
//!
//! ```text
//! images/ ─► dataset ─► preprocess ─► model (ONNX Runtime, pooling) ─► embeddings (NPY per layer)
//! embeddings (source) + embeddings (target) ─► metrics (per layer) ─► verdict ─► report
//! ```
//!
//! The modules are layers, lowest first: [`error`], [`threads`], [`output`], [`npy`], [`metrics`], [`model`],
//! [`preprocess`], [`dataset`], [`embeddings`], [`shard`], [`extract`], [`compare`], [`controls`],
//! [`verdict`], [`report`], [`analyze`]. Each uses only those below it, and no two files import each other
//! (`tests/architecture.rs` checks both).
//!
//! ```no_run
//! use domsim::extract::{extract, ExtractConfig, ExtractOptions};
//! let how = ExtractOptions::new(domsim::model::runtime::default_model_path());
//! let cfg = ExtractConfig::new(how, "images/".into(), "emb/".into());
//! let summary = extract(&cfg)?;
//! println!("{} images, {} layers", summary.manifest.n_images, summary.manifest.layers.len());
//! # Ok::<(), domsim::Error>(())
//! ```

pub mod analyze;
pub mod compare;
pub mod controls;
pub mod dataset;
pub mod embeddings;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod output;
pub mod preprocess;
pub mod report;
pub mod shard;
pub mod threads;
pub mod verdict;

pub use error::{Error, Result};
