//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The shared datasets: `$DOMSIM_DATASETS`, else `../shared/datasets` beside the checkout.
pub fn datasets() -> PathBuf {
    match std::env::var_os("DOMSIM_DATASETS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"),
    }
}

/// A fixture path.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The domsim binary, one thread (tests run in parallel), quiet.
pub fn domsim() -> Command {
    let mut c = Command::cargo_bin("domsim").expect("binary builds");
    c.args(["--threads", "1", "--quiet"]);
    c
}

/// Copies `n` files of a shared dataset folder, every `step`-th starting at `offset`, into `dest`.
pub fn copy_subset(src: &Path, dest: &Path, offset: usize, step: usize, n: usize) -> Vec<String> {
    std::fs::create_dir_all(dest).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let picked: Vec<String> = files
        .into_iter()
        .skip(offset)
        .step_by(step)
        .take(n)
        .collect();
    for f in &picked {
        std::fs::copy(src.join(f), dest.join(f)).unwrap();
    }
    picked
}

/// Reads an NPY matrix as f64 via the library's reader.
pub fn npy(path: &Path) -> ndarray::Array2<f64> {
    domsim::npy::read(path).unwrap_or_else(|e| panic!("{e}"))
}
