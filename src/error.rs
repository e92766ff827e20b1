//! The library's one error type. Every message names the file or layer involved and what the user can do;
//! the variants say what kind of thing went wrong, with the model, layer or metric as data, so that a
//! caller can match on them. `anyhow` is used only in the binary (`main.rs`, `cli.rs`).

use std::path::{Path, PathBuf};

/// The library's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad usage or bad input folders and files (exit code 2): an empty folder, a bad option value.
    #[error("{0}")]
    Input(String),
    /// The model: missing, not an ONNX model, weights that cannot be read, no usable layer (exit code 2).
    #[error("{message}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
    },
    /// The model's input is not an image tensor domsim can feed, or its layout is ambiguous (exit code 2).
    #[error("{message}")]
    InputContract {
        /// The model file.
        model: PathBuf,
        /// What went wrong and what to do.
        message: String,
    },
    /// One layer: it does not exist, or its values cannot be compared (exit code 2).
    #[error("{message}")]
    Layer {
        /// The layer's name (or the pattern asked for).
        layer: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// A metric's prerequisite is missing, such as labels (exit code 2).
    #[error("{message}")]
    Prerequisite {
        /// What needs it.
        metric: String,
        /// What is missing and how to provide it.
        message: String,
    },
    /// A file could not be read or written. The OS error is the `source` (printed after the message by
    /// the binary, once).
    #[error("{action} '{}'", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// ONNX Runtime failed while building a session or running the model.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// A numerical analysis could not be completed.
    #[error("{0}")]
    Analysis(String),
}

impl Error {
    /// Builds an I/O error that names the path.
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The process exit code for this error: 2 for bad usage or input, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_)
            | Error::Model { .. }
            | Error::InputContract { .. }
            | Error::Layer { .. }
            | Error::Prerequisite { .. } => 2,
            Error::Io { .. } | Error::Runtime(_) | Error::Analysis(_) => 1,
        }
    }
}

/// A numerical kernel's reason for failing (a singular matrix, too few folds) is an analysis error.
impl From<String> for Error {
    fn from(why: String) -> Self {
        Error::Analysis(why)
    }
}

impl From<&str> for Error {
    fn from(why: &str) -> Self {
        Error::Analysis(why.to_string())
    }
}

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Error::Runtime(e.to_string())
    }
}

impl From<ort::Error<ort::session::builder::SessionBuilder>> for Error {
    fn from(e: ort::Error<ort::session::builder::SessionBuilder>) -> Self {
        Error::Runtime(e.to_string())
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for a bad-input error.
pub fn input_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Input(msg.into()))
}
