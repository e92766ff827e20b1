//! Typed library errors. Every message names the file or layer involved and what the user can do.
//! `anyhow` is used only in the binary (`main.rs`, `cli.rs`); the library returns [`Error`].

use std::path::{Path, PathBuf};

/// The library's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad usage or bad input (exit code 2): a missing model, an empty folder, a layer that does not exist.
    #[error("{0}")]
    Input(String),
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
            Error::Input(_) => 2,
            _ => 1,
        }
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
