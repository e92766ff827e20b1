//! The one place that owns output paths: atomic writes (temp file, fsync, rename) and the rule that a user's
//! folder is never clobbered.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{input_err, Error, Result};

/// Name of the marker file that says a folder was made by domsim.
pub const MARKER: &str = ".domsim";

/// The temp file beside `dest` that is renamed onto it.
pub fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `dest` atomically: a reader sees the old file or the complete new one, never a part.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(dest);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("cannot create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, dest).map_err(|e| Error::io("cannot rename into", dest, e))
}

/// Makes `dir` ready for output. A folder that exists, is not empty and was not made by domsim is refused
/// unless `force` is set; then the marker file is written.
pub fn prepare_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            return input_err(format!(
                "output path '{}' exists and is not a folder; choose another --out",
                dir.display()
            ));
        }
        let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io("cannot list", dir, e))?;
        let non_empty = entries.next().is_some();
        if non_empty && !dir.join(MARKER).exists() && !force {
            return input_err(format!(
                "output folder '{}' is not empty and was not made by domsim; refusing to overwrite it. Choose an empty or new folder, or pass --force",
                dir.display()
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create folder", dir, e))?;
    write_atomic(
        &dir.join(MARKER),
        b"This folder was written by domsim; domsim may overwrite the files it made here.\n",
    )
}

/// Refuses an output folder that is one of the input folders (`--out` equal to `--images`, `--source` or
/// `--target`): domsim would write its files among the user's. An output folder *inside* an input folder is
/// allowed: scanning skips folders that hold domsim's marker.
pub fn check_out_is_not_an_input(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    let canon = |p: &Path| p.canonicalize().ok();
    let Some(o) = canon(out) else {
        return Ok(()); // does not exist yet: cannot be an existing input folder
    };
    for (flag, input) in inputs {
        if canon(input).as_ref() == Some(&o) {
            return input_err(format!(
                "--out '{}' is the {flag} folder itself; domsim never writes among your images. Choose another folder, e.g. '{}'",
                out.display(),
                out.join("domsim_out").display()
            ));
        }
    }
    Ok(())
}

/// Removes a file if it exists.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", path, e)),
    }
}

/// A CSV document built in memory, written with [`write_atomic`].
pub fn csv_bytes<R: AsRef<[u8]>>(
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<R>>,
) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header).expect("in-memory CSV");
    for r in rows {
        w.write_record(&r).expect("in-memory CSV");
    }
    w.into_inner().expect("in-memory CSV")
}
