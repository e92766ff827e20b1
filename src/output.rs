//! The one place that owns output paths: atomic writes (temp file, fsync, rename) and the rule that a user's
//! files are never clobbered.
//!
//! **The journal.** A folder domsim writes into holds the marker file [`MARKER`]: a header line, then one
//! relative path per line of every file domsim wrote there, each appended (and synced) *before* the file is
//! renamed into place. So a run killed at any point (or stopped by a full disk) leaves only files the journal
//! lists, and the next run replaces them; a file the journal does not list is the user's, and no write of
//! domsim's replaces it, `--force` or not: the run is refused, naming the file.

use std::io::Write;
use std::path::Path;

use crate::error::{input_err, Error, Result};

/// Name of the marker file that says a folder was made by domsim.
pub const MARKER: &str = ".domsim";

/// Prefix of domsim's temporary files. A temp file is removed when its write fails; one left by a killed run
/// is removed by the next run into the same folder ([`prepare_dir`]).
pub const TEMP_PREFIX: &str = ".domsim-tmp-";

/// `true` once the run is interrupted. Held for reading while a temporary file or folder is created, and
/// for writing while [`interrupt`] sets it and sweeps: a creation either ends before the sweep, which then
/// removes what it made, or starts after it and is refused. (Without it a worker thread could create a
/// temporary file between the sweep and the exit, and leave it behind.)
static INTERRUPTED: std::sync::RwLock<bool> = std::sync::RwLock::new(false);

/// Runs `create` (which makes a temporary file or folder) unless the run is interrupted.
fn creating<T>(create: impl FnOnce() -> Result<T>) -> Result<T> {
    let interrupted = INTERRUPTED.read().unwrap_or_else(|e| e.into_inner());
    if *interrupted {
        return Err(Error::Analysis("interrupted".into()));
    }
    create()
}

/// Ctrl-C: marks the run interrupted (no temporary file or folder is created after this) and removes every
/// temporary file and folder under the output folders this process holds; returns how many.
pub fn interrupt() -> usize {
    let mut interrupted = INTERRUPTED.write().unwrap_or_else(|e| e.into_inner());
    *interrupted = true;
    remove_temporaries()
}

/// A new temporary folder inside the output folder `dir`, named with [`TEMP_DIR_PREFIX`] (removed on drop,
/// and by [`interrupt`]).
pub fn temp_dir_in(dir: &Path) -> Result<tempfile::TempDir> {
    creating(|| {
        tempfile::Builder::new()
            .prefix(TEMP_DIR_PREFIX)
            .tempdir_in(dir)
            .map_err(|e| Error::io("cannot create a temporary folder in", dir, e))
    })
}

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
    creating(|| {
        b.tempfile_in(dir)
            .map_err(|e| Error::io("cannot create a temporary file in", dir, e))
    })
}

/// Moves a finished temporary file onto `dest` (atomic rename), after recording `dest` in its folder's
/// journal ([`claim`]).
pub fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    claim(dest)?;
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

/// First line of the marker file; the lines after it are the journal.
const JOURNAL_HEADER: &str =
    "This folder was written by domsim; each line below is a file domsim wrote here, and the only files it may replace.";

/// The marker domsim wrote before journals existed (it trusted the whole folder then).
const LEGACY_MARKER: &str =
    "This folder was written by domsim; domsim may overwrite the files it made here.\n";

/// What the file named [`MARKER`] in `dir` is: recognised by its content (a journal domsim wrote, or the
/// marker of a domsim from before journals), never by its name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// No file of that name.
    None,
    /// A journal domsim wrote.
    Journal,
    /// The marker of a domsim from before journals.
    Legacy,
    /// A file of that name that domsim did not write (a user's).
    Foreign,
}

/// The marker of `dir`, read by content.
pub fn marker(dir: &Path) -> Marker {
    let path = dir.join(MARKER);
    if !path.is_file() {
        return if path.symlink_metadata().is_ok() {
            Marker::Foreign
        } else {
            Marker::None
        };
    }
    match std::fs::read(&path) {
        Ok(b) if b == LEGACY_MARKER.as_bytes() => Marker::Legacy,
        Ok(b)
            if b.starts_with(JOURNAL_HEADER.as_bytes())
                && matches!(b.get(JOURNAL_HEADER.len()), Some(b'\n')) =>
        {
            Marker::Journal
        }
        _ => Marker::Foreign,
    }
}

/// Whether domsim made `dir`: its marker is a journal domsim wrote (or a pre-journal domsim's marker).
pub fn is_domsim_dir(dir: &Path) -> bool {
    matches!(marker(dir), Marker::Journal | Marker::Legacy)
}

fn foreign_marker(dir: &Path) -> Error {
    Error::Input(format!(
        "'{}' is not a marker domsim wrote (its content is not domsim's journal), so '{}' is treated as your folder; domsim never replaces it, --force or not. Choose another --out, or move that file if the folder is yours to reuse",
        dir.join(MARKER).display(),
        dir.display()
    ))
}

/// The folder whose journal covers `dest`: the nearest folder above it that domsim made.
fn journal_dir(dest: &Path) -> Option<&Path> {
    dest.ancestors().skip(1).find(|d| is_domsim_dir(d))
}

fn rel_name(dir: &Path, dest: &Path) -> String {
    let rel = dest.strip_prefix(dir).unwrap_or(dest);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The files the journal of `dir` lists (relative paths); `None` for a folder without a journal.
pub fn journal(dir: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    let mut lines = text.lines();
    (lines.next() == Some(JOURNAL_HEADER)).then(|| lines.map(str::to_string).collect())
}

/// Where `dest` stands: the folder whose journal covers it, its name there, and whether domsim may write it
/// without recording it (its marker or lock file, or a file the journal already lists). `None` outside any
/// domsim folder. Reads the journal once.
fn standing(dest: &Path) -> Option<(&Path, String, bool)> {
    let dir = journal_dir(dest)?;
    let rel = rel_name(dir, dest);
    let known = rel == MARKER || rel == LOCK || journal(dir).is_some_and(|j| j.contains(&rel));
    Some((dir, rel, known))
}

fn refuse(dest: &Path, dir: &Path) -> Result<()> {
    input_err(format!(
        "'{}' exists and was not written by domsim (its journal '{}' does not list it); domsim never replaces a file it did not write, --force or not. Move it, or choose another --out",
        dest.display(),
        dir.join(MARKER).display()
    ))
}

/// Whether `dest` may be written: it does not exist, or its folder's journal lists it (or it is domsim's
/// own marker or lock file). A file outside any domsim folder is not checked here.
pub fn check_writable(dest: &Path) -> Result<()> {
    match standing(dest) {
        Some((dir, _, false)) if dest.symlink_metadata().is_ok() => refuse(dest, dir),
        _ => Ok(()),
    }
}

/// Records `dest` in its folder's journal before it is written (refused like [`check_writable`]).
pub fn claim(dest: &Path) -> Result<()> {
    let Some((dir, rel, known)) = standing(dest) else {
        return Ok(());
    };
    if known {
        return Ok(());
    }
    if dest.symlink_metadata().is_ok() {
        return refuse(dest, dir);
    }
    if rel.contains('\n') {
        return input_err(format!(
            "cannot write '{}': domsim does not write file names holding a line break",
            dest.display()
        ));
    }
    let path = dir.join(MARKER);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| Error::io("cannot open", &path, e))?;
    f.write_all(format!("{rel}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("cannot write", &path, e))
}

/// Writes the marker with an empty journal where there is none; a marker written before journals existed
/// (domsim trusted the whole folder then) becomes a journal of every file the folder holds now.
fn start_journal(dir: &Path) -> Result<()> {
    let kind = marker(dir);
    match kind {
        Marker::Journal => return Ok(()),
        Marker::Foreign => return Err(foreign_marker(dir)),
        Marker::None | Marker::Legacy => {}
    }
    let mut text = format!("{JOURNAL_HEADER}\n");
    if kind == Marker::Legacy {
        for entry in walkdir(dir) {
            let rel = rel_name(dir, &entry);
            if rel != MARKER && rel != LOCK && !rel.contains('\n') {
                text.push_str(&rel);
                text.push('\n');
            }
        }
    }
    let mut f = temp_file(&dir.join(MARKER))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.as_file().sync_all())
        .map_err(|e| Error::io("cannot write", f.path(), e))?;
    f.persist(dir.join(MARKER))
        .map(|_| ())
        .map_err(|e| Error::io("cannot rename into", &dir.join(MARKER), e.error))
}

/// Every regular file under `dir` (not following links), sorted.
fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
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
    dir: std::path::PathBuf,
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        if let Ok(mut a) = ACTIVE.lock() {
            if let Some(i) = a.iter().position(|d| *d == self.dir) {
                a.remove(i);
            }
        }
    }
}

/// The output folders this process holds locked: where an interrupted run's temporary files are.
static ACTIVE: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Prefix of the temporary folder a permuted-weight model is written to inside an output folder.
pub const TEMP_DIR_PREFIX: &str = ".domsim-permuted-";

/// Removes every temporary file and folder under the output folders this process holds (for an interrupted
/// run: Ctrl-C), and returns how many; the files already renamed into place are complete and stay.
pub fn remove_temporaries() -> usize {
    let dirs = ACTIVE.lock().map(|a| a.clone()).unwrap_or_default();
    let mut n = 0;
    for dir in dirs {
        // the temporary model folders sit in the output folder itself; temporary files anywhere under it
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && e.file_name().to_string_lossy().starts_with(TEMP_DIR_PREFIX) {
                n += usize::from(std::fs::remove_dir_all(e.path()).is_ok());
            }
        }
        for f in walkdir(&dir) {
            let temp = f
                .file_name()
                .is_some_and(|x| x.to_string_lossy().starts_with(TEMP_PREFIX));
            if temp {
                n += usize::from(std::fs::remove_file(&f).is_ok());
            }
        }
    }
    n
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
        Ok(()) => {
            let dir = dir.to_path_buf();
            if let Ok(mut a) = ACTIVE.lock() {
                a.push(dir.clone());
            }
            Ok(OutputLock { _file: f, dir })
        }
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
    if marker(dir) == Marker::Foreign {
        return Err(foreign_marker(dir));
    }
    if !is_domsim_dir(dir) {
        return input_err(format!(
            "'{}' was not written by domsim (no {MARKER} marker); `domsim report` rewrites files only in folders made by `domsim compare` or `domsim analyze`",
            dir.display()
        ));
    }
    let l = lock(dir)?;
    remove_stale_temps(dir)?;
    start_journal(dir)?;
    Ok(l)
}

/// Makes `dir` ready for output and locks it (keep the lock for the whole run). A folder that exists, is not
/// empty and was not made by domsim is refused unless `force` is set; then temporary files a killed run left
/// are removed and the journal is started (kept when there is one). `force` never lets domsim replace a file
/// the journal does not list ([`check_writable`]).
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
        let link = dir
            .join(MARKER)
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink());
        // (a planted link is refused below as a link, never followed)
        if marker(dir) == Marker::Foreign && !link {
            return Err(foreign_marker(dir));
        }
        if non_empty && !is_domsim_dir(dir) && !force {
            return input_err(format!(
                "output folder '{}' is not empty and was not made by domsim; refusing to overwrite it. Choose an empty or new folder, or pass --force",
                dir.display()
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create folder", dir, e))?;
    for name in [MARKER, LOCK, "layers", "stats"] {
        if dir
            .join(name)
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return input_err(format!(
                "'{}' is a symbolic link; domsim writes only real files and folders in its output folder. Remove the link, or choose another --out",
                dir.join(name).display()
            ));
        }
    }
    let l = lock(dir)?;
    remove_stale_temps(dir)?;
    remove_stale_temps(&dir.join("layers"))?;
    remove_stale_temps(&dir.join("stats"))?;
    start_journal(dir)?;
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
            // a sibling of the images, never a folder inside them
            let name = o
                .file_name()
                .map_or("images".into(), |n| n.to_string_lossy().into_owned());
            return input_err(format!(
                "--out '{}' is the {flag} folder itself; domsim never writes among your images. Choose another folder, e.g. '{}'",
                out.display(),
                o.with_file_name(format!("{name}_domsim")).display()
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

#[cfg(test)]
mod tests {
    #[test]
    fn an_interrupted_run_leaves_no_temporary_file_in_its_output_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let lock = super::prepare_dir(&out, false).unwrap();
        let deep = out.join("embeddings/target/layers");
        std::fs::create_dir_all(&deep).unwrap();
        let temp = deep.join(format!("{}abc", super::TEMP_PREFIX));
        std::fs::write(&temp, b"partial").unwrap();
        let kept = deep.join("00_layer.npy");
        std::fs::write(&kept, b"complete").unwrap();
        let model_dir = out.join(format!("{}xyz", super::TEMP_DIR_PREFIX));
        std::fs::create_dir_all(&model_dir).unwrap();
        std::fs::write(model_dir.join("permuted_weights.onnx"), b"model").unwrap();
        // a folder this process does not hold is not touched
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        let foreign = other.join(format!("{}keep", super::TEMP_PREFIX));
        std::fs::write(&foreign, b"not ours").unwrap();
        assert!(super::remove_temporaries() >= 2);
        assert!(!temp.exists() && !model_dir.exists());
        assert!(kept.exists() && foreign.exists());
        drop(lock);
        // once the lock is released the folder is no longer this process's
        std::fs::write(&temp, b"partial").unwrap();
        super::remove_temporaries();
        assert!(temp.exists());
    }
}
