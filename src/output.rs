//! The one place that owns output paths: atomic writes (temp file, fsync, rename) and the rule that a user's
//! folder is never clobbered.

use std::io::Write;
use std::path::Path;

use crate::error::{input_err, Error, Result};

/// Name of the marker file that says a folder was made by domsim.
pub const MARKER: &str = ".domsim";

/// Prefix of domsim's temporary files. A temp file is removed when its write fails; one left by a killed run
/// is removed by the next run into the same folder ([`prepare_dir`]).
pub const TEMP_PREFIX: &str = ".domsim-tmp-";

/// A new temporary file beside `dest`, to be persisted onto it.
pub fn temp_file(dest: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut b = tempfile::Builder::new();
    b.prefix(TEMP_PREFIX);
    // a temp file is private (0600) by default; the file it becomes is an ordinary output file, created
    // like any other (0666 less the umask), so that the user's group or a web server can read a report
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir)
        .map_err(|e| Error::io("cannot create a temporary file in", dir, e))
}

/// Moves a finished temporary file onto `dest` (atomic rename).
pub fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    tmp.persist(dest)
        .map(|_| ())
        .map_err(|e| Error::io("cannot rename into", dest, e.error))
}

/// Writes `bytes` to `dest` atomically: a reader sees the old file or the complete new one, never a part.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = temp_file(dest)?;
    f.write_all(bytes)
        .and_then(|_| f.as_file().sync_all())
        .map_err(|e| Error::io("cannot write", f.path(), e))?;
    persist(f, dest)
}

/// Removes temporary files a killed run left in `dir` (not recursive).
fn remove_stale_temps(dir: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            remove_if_exists(&e.path())?;
        }
    }
    Ok(())
}

/// An advisory lock on an output folder, held until dropped: a second domsim run into the same folder is
/// refused instead of mixing its files with the first one's.
#[derive(Debug)]
pub struct OutputLock {
    _file: std::fs::File,
}

/// Name of the lock file inside an output folder.
pub const LOCK: &str = ".domsim.lock";

fn lock(dir: &Path) -> Result<OutputLock> {
    let p = dir.join(LOCK);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io("cannot create", &p, e))?;
    match f.try_lock() {
        Ok(()) => Ok(OutputLock { _file: f }),
        Err(std::fs::TryLockError::WouldBlock) => input_err(format!(
            "another domsim run is writing to '{}' (it holds '{}'); wait for it to finish or choose another --out",
            dir.display(),
            p.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("cannot lock", &p, e)),
    }
}

/// Locks a folder that domsim made (for `report`, which rewrites files in place): a folder without domsim's
/// marker is refused.
pub fn lock_domsim_dir(dir: &Path) -> Result<OutputLock> {
    if !dir.join(MARKER).is_file() {
        return input_err(format!(
            "'{}' was not written by domsim (no {MARKER} marker); `domsim report` rewrites files only in folders made by `domsim compare` or `domsim analyze`",
            dir.display()
        ));
    }
    let l = lock(dir)?;
    remove_stale_temps(dir)?;
    Ok(l)
}

/// Makes `dir` ready for output and locks it (keep the lock for the whole run). A folder that exists, is not
/// empty and was not made by domsim is refused unless `force` is set; then the marker file is written and
/// temporary files a killed run left are removed.
pub fn prepare_dir(dir: &Path, force: bool) -> Result<OutputLock> {
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
    let l = lock(dir)?;
    remove_stale_temps(dir)?;
    remove_stale_temps(&dir.join("layers"))?;
    write_atomic(
        &dir.join(MARKER),
        b"This folder was written by domsim; domsim may overwrite the files it made here.\n",
    )?;
    Ok(l)
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
