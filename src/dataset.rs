//! An image set on disk: a recursive, sorted, deterministic file list, with labels from the first-level
//! sub-folder. Hidden files and folders (names starting with `.`) are ignored. Symbolic links to files and
//! folders are followed (a folder reached twice, e.g. through a link loop, is scanned once). What is found but
//! cannot be used is listed in [`ImageSet::excluded`] (and from there in `skipped.csv`): broken links, FIFOs,
//! sockets and devices, names that are not UTF-8, files lying directly in the folder beside class
//! sub-folders, and domsim's own output folders (a sub-folder holding domsim's `.domsim` marker, e.g. a report
//! written inside the image folder), which are never scanned.

use std::collections::HashSet;
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
    /// Entries found but not used, with the reason (`path`, `reason`), sorted by path.
    pub excluded: Vec<(String, String)>,
    /// When this set is one shard of the folder ([`crate::shard::select`]): which, and of what.
    pub shard: Option<ShardInfo>,
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
        let mut w = Walk {
            root,
            files: Vec::new(),
            excluded: Vec::new(),
            seen: HashSet::new(),
        };
        w.walk(root)?;
        let (mut files, mut excluded) = (w.files, w.excluded);
        // Files directly in the root beside class sub-folders would form a class named "": leave them out.
        if files.iter().any(|f| f.contains('/')) {
            let (loose, kept): (Vec<String>, Vec<String>) =
                files.into_iter().partition(|f| !f.contains('/'));
            files = kept;
            excluded.extend(loose.into_iter().map(|f| {
                (
                    f,
                    "lies directly in the image folder, beside class sub-folders: it has no class; move it into one"
                        .to_string(),
                )
            }));
        }
        files.sort();
        excluded.sort();
        if files.is_empty() {
            return input_err(format!(
                "image folder '{}' holds no {}files{}; put images (JPEG, PNG, BMP, TIFF, WebP) in it, optionally one sub-folder per class",
                root.display(),
                if excluded.is_empty() { "" } else { "usable " },
                match excluded.first() {
                    Some((p, why)) => format!(" ({} left out, e.g. '{p}': {why})", excluded.len()),
                    None => String::new(),
                }
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
            excluded,
            shard: None,
        })
    }

    /// The set restricted to the files at `rows` (in that order), with their labels; nothing excluded.
    pub fn subset(&self, rows: &[usize]) -> ImageSet {
        ImageSet {
            root: self.root.clone(),
            files: rows.iter().map(|&i| self.files[i].clone()).collect(),
            labels: rows.iter().map(|&i| self.labels[i].clone()).collect(),
            excluded: Vec::new(),
            shard: self.shard.clone(),
        }
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

struct Walk<'a> {
    root: &'a Path,
    files: Vec<String>,
    excluded: Vec<(String, String)>,
    seen: HashSet<PathBuf>,
}

impl Walk<'_> {
    fn rel(&self, path: &Path) -> String {
        let rel = path.strip_prefix(self.root).unwrap_or(path);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn walk(&mut self, dir: &Path) -> Result<()> {
        // a folder reached twice (a link loop, or two links to one folder) is scanned once
        let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if !self.seen.insert(canon) {
            return Ok(());
        }
        if dir != self.root && crate::output::is_domsim_dir(dir) {
            let rel = self.rel(dir);
            self.excluded.push((
                format!("{rel}/"),
                "a folder written by domsim (reports, embeddings); not scanned".into(),
            ));
            return Ok(());
        }
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            // a sub-folder that cannot be read is skipped and recorded, like an unreadable file; the
            // folder the user named must be readable
            Err(e) if dir != self.root => {
                self.excluded.push((
                    format!("{}/", self.rel(dir)),
                    format!("a folder that cannot be read ({e}); check its permissions"),
                ));
                return Ok(());
            }
            Err(e) => return Err(Error::io("cannot list folder", dir, e)),
        };
        let mut entries = Vec::new();
        for entry in rd {
            entries.push(entry.map_err(|e| Error::io("cannot list folder", dir, e))?);
        }
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let rel = self.rel(&path);
            if name.to_str().is_none() {
                self.excluded.push((
                    rel,
                    "the name is not valid UTF-8 (shown with U+FFFD); rename the file or folder"
                        .into(),
                ));
                continue;
            }
            let ft = entry
                .file_type()
                .map_err(|e| Error::io("cannot stat", &path, e))?;
            // follow links: what matters is what they point to
            let target = if ft.is_symlink() {
                match std::fs::metadata(&path) {
                    Ok(m) => m.file_type(),
                    Err(e) => {
                        self.excluded.push((
                            rel,
                            format!(
                                "a symbolic link that cannot be followed ({e}); fix or remove it"
                            ),
                        ));
                        continue;
                    }
                }
            } else {
                ft
            };
            if target.is_dir() {
                self.walk(&path)?;
            } else if target.is_file() {
                self.files.push(rel);
            } else {
                self.excluded.push((
                    rel,
                    "not a regular file (a FIFO, socket or device); not read".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A shard as recorded in its manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardInfo {
    /// 0-based shard index.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
    /// The partition rule (`crate::shard::RULE`).
    pub rule: String,
    /// Where the index came from: `--shard`, `SLURM_ARRAY_TASK_ID` or `JOB_COMPLETION_INDEX`.
    pub index_from: String,
    /// Files in the whole folder (all shards), before the partition.
    pub n_files_total: usize,
    /// SHA-256 over the whole folder's sorted file list (one relative path per line).
    pub file_list_sha256: String,
}
