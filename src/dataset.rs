//! An image set on disk: a recursive, sorted, deterministic file list, with labels from the first-level
//! sub-folder. Hidden files and folders (names starting with `.`) are ignored.

use std::path::{Path, PathBuf};

use crate::error::{input_err, Error, Result};

/// The files of an image folder, in a fixed order.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// The folder given by the user.
    pub root: PathBuf,
    /// Paths relative to `root`, sorted byte-wise, `/`-separated.
    pub files: Vec<String>,
    /// Per file: the first-level sub-folder, or `None` for files directly in `root`.
    pub labels: Vec<Option<String>>,
}

impl ImageSet {
    /// Scans `root` recursively.
    pub fn scan(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return input_err(format!(
                "image folder '{}' does not exist or is not a folder",
                root.display()
            ));
        }
        let mut files = Vec::new();
        walk(root, root, &mut files)?;
        files.sort();
        if files.is_empty() {
            return input_err(format!(
                "image folder '{}' holds no files; put images (JPEG, PNG, BMP, TIFF, WebP) in it, optionally one sub-folder per class",
                root.display()
            ));
        }
        let labels = files
            .iter()
            .map(|f| f.split_once('/').map(|(first, _)| first.to_string()))
            .collect();
        Ok(ImageSet {
            root: root.to_path_buf(),
            files,
            labels,
        })
    }

    /// Absolute (or root-joined) path of file `i`.
    pub fn path(&self, i: usize) -> PathBuf {
        self.root.join(&self.files[i])
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when there are no files.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("cannot list folder", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("cannot list folder", dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(|e| Error::io("cannot stat", &path, e))?;
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() || (ft.is_symlink() && path.is_file()) {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(rel.join("/"));
        }
    }
    Ok(())
}
