//! The embedding folder: the contract between `extract`, `compare` and users' notebooks.
//!
//! - `manifest.json`: domsim version, model file and SHA-256, input contract, preprocessing, pooling, and the
//!   layers in depth order (index, name, op type, raw shape, pooled dimension, file). Written last: a folder
//!   without it is incomplete.
//! - `index.csv` (`row,path,label`): the row order of every matrix.
//! - `layers/<NN>_<safe-name>.npy`: float32 (float16 with `extract --float16`), C-order, n × d.
//! - `skipped.csv` (`path,reason`): every file that could not be used.

use std::path::{Path, PathBuf};

use ndarray::Array2;

use crate::error::{input_err, Error, Result};
use crate::model::pool::{Pool, TensorLayout};
use crate::model::{InputContract, Layer};
use crate::preprocess::Normalization;

/// The model as recorded in a manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    /// File name.
    pub file: String,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// True for the bundled default model.
    pub bundled_default: bool,
}

/// Preprocessing as recorded in a manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreprocessInfo {
    /// How images are resized and cropped.
    pub resize: String,
    /// Float normalisation (not used for uint8 models).
    pub normalization: Normalization,
    /// How channels are converted.
    pub channels: String,
    /// Images that were grey (grey mode, or RGB with identical channels), fed by channel replication.
    pub n_grey: usize,
    /// Images with an alpha channel (dropped).
    pub n_alpha: usize,
    /// Images smaller than the model input on some side (upscaled).
    pub n_upscaled: usize,
    /// Median native width and height of the embedded images (after `transform`).
    pub median_native_size: [u32; 2],
    /// A control's change applied to every image before the resize (absent: none).
    #[serde(default, skip_serializing_if = "crate::preprocess::Transform::is_none")]
    pub transform: crate::preprocess::Transform,
}

/// One layer in a manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerEntry {
    /// Depth index (0 = shallowest selected layer).
    pub index: usize,
    /// Tensor name in the graph.
    pub name: String,
    /// Producing op type.
    pub op_type: String,
    /// Shape as ONNX Runtime reports it (-1 = dynamic).
    pub raw_shape: Vec<i64>,
    /// Shape as run, for one batch.
    pub run_shape: Vec<usize>,
    /// Which axes were pooled.
    pub layout: TensorLayout,
    /// Pooled dimension d.
    pub dim: usize,
    /// File, relative to the embedding folder.
    pub file: String,
    /// Mergeable moments file (`stats/...`, float64 (d+2) × d), when written (`extract --stats`/`--shard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<String>,
}

/// What `analyze`'s cache verifies before reuse ([`Manifest::checks`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheChecks {
    /// (relative path, bytes, SHA-256) of index.csv and every layer and stats file.
    pub files: Vec<(String, u64, String)>,
    /// SHA-256 of the manifest serialised with `checks.manifest` empty.
    pub manifest: String,
}

fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((n, h.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

fn manifest_digest(m: &Manifest) -> String {
    use sha2::{Digest, Sha256};
    let mut m = m.clone();
    if let Some(c) = m.checks.as_mut() {
        c.manifest.clear();
    }
    let json = serde_json::to_vec(&m).expect("manifest serialises");
    Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Manifest {
    /// The files of the embedding folder `dir` this manifest describes: index.csv, each layer and stats file.
    fn data_files(&self) -> Vec<String> {
        let mut v = vec!["index.csv".to_string()];
        for l in &self.layers {
            v.push(l.file.clone());
            v.extend(l.stats.clone());
        }
        v
    }

    /// Records [`CacheChecks`] of the files in `dir` (written already) and of the manifest itself.
    pub fn seal(&mut self, dir: &Path) -> crate::error::Result<()> {
        let mut files = Vec::new();
        for f in self.data_files() {
            let p = dir.join(&f);
            let (n, h) =
                sha256_file(&p).map_err(|e| crate::error::Error::io("cannot read", &p, e))?;
            files.push((f, n, h));
        }
        self.checks = Some(CacheChecks {
            files,
            manifest: String::new(),
        });
        let d = manifest_digest(self);
        self.checks.as_mut().expect("set above").manifest = d;
        Ok(())
    }

    /// Why the cache in `dir` cannot be reused: the first check that fails (no checks recorded, an edited
    /// manifest, a missing, resized or changed file); `None` when every check holds.
    pub fn unsealed(&self, dir: &Path) -> Option<String> {
        let Some(c) = &self.checks else {
            return Some("its manifest records no checks (written by an older domsim)".into());
        };
        if manifest_digest(self) != c.manifest {
            return Some("its manifest.json was edited".into());
        }
        let listed: Vec<&String> = c.files.iter().map(|(f, _, _)| f).collect();
        if listed != self.data_files().iter().collect::<Vec<_>>() {
            return Some("its manifest lists other files than it checks".into());
        }
        for (f, n, h) in &c.files {
            match sha256_file(&dir.join(f)) {
                Err(e) => return Some(format!("{f} cannot be read ({})", e.kind())),
                Ok((m, _)) if m != *n => {
                    return Some(format!(
                        "{f} holds {m} bytes, not the {n} it was written with"
                    ))
                }
                Ok((_, g)) if g != *h => {
                    return Some(format!("{f} was changed after it was written"))
                }
                Ok(_) => {}
            }
        }
        None
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// domsim version that wrote it.
    pub domsim_version: String,
    /// The model.
    pub model: ModelInfo,
    /// The input contract used.
    pub input: InputContract,
    /// Preprocessing.
    pub preprocessing: PreprocessInfo,
    /// Pooling mode.
    pub pooling: Pool,
    /// A sentence on what pooling did.
    pub pooling_note: String,
    /// How token tensors were pooled (when a layer is one: (N, T, D) or (T, N, D)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<crate::model::pool::Tokens>,
    /// The image folder (as given).
    pub images: String,
    /// Images embedded (rows of every matrix).
    pub n_images: usize,
    /// Files skipped.
    pub n_skipped: usize,
    /// Distinct labels (sorted), empty when the folder has no class sub-folders.
    pub labels: Vec<String>,
    /// ONNX Runtime intra-op threads and batch size used.
    pub threads: usize,
    /// Batch size used.
    pub batch_size: usize,
    /// Layers in depth order.
    pub layers: Vec<LayerEntry>,
    /// Fingerprint of the request (model, settings, every image's path and the SHA-256 of the bytes this run
    /// decoded), used by `analyze` to reuse embeddings.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// `analyze`'s cache: the size and SHA-256 of every file the folder's embeddings are (index.csv, each
    /// layer and stats file), and of the manifest itself; checked before the cache is reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<CacheChecks>,
    /// How the matrices are stored (float32 unless `extract --float16`).
    #[serde(default)]
    pub dtype: crate::npy::Dtype,
    /// The shard this folder holds (`extract --shard I/N`); absent for a whole folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::dataset::ShardInfo>,
    /// For a folder made by `domsim merge`: from how many shards, and what merging approximates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_from: Option<String>,
}

/// File name for layer `index` of `count`: `<NN>_<safe-name>.npy`. Everything outside `[A-Za-z0-9._-]`
/// becomes `_`, so no name can leave the folder.
pub fn layer_file_name(index: usize, count: usize, name: &str) -> String {
    let width = count.saturating_sub(1).to_string().len().max(2);
    let mut safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe_trim = safe.trim_matches(|c| c == '_' || c == '.').to_string();
    safe = if safe_trim.is_empty() {
        "layer".into()
    } else {
        safe_trim
    };
    safe.truncate(100);
    format!("{index:0width$}_{safe}.npy")
}

/// One layer's matrix read back.
#[derive(Debug, Clone)]
pub struct LayerData {
    /// Depth index.
    pub index: usize,
    /// Layer name.
    pub name: String,
    /// File it came from.
    pub path: PathBuf,
}

/// An embedding folder opened for reading: a domsim folder (with `manifest.json`) or a plain folder of
/// `.npy` files (layers ordered by file name; labels from `index.csv` or `labels.csv`).
#[derive(Debug, Clone)]
pub struct EmbeddingSet {
    /// The folder.
    pub dir: PathBuf,
    /// The manifest, when domsim wrote the folder.
    pub manifest: Option<Manifest>,
    /// Layers in depth order.
    pub layers: Vec<LayerData>,
    /// Per row: label, when known.
    pub labels: Option<Vec<String>>,
    /// Per row: image path, when known.
    pub paths: Option<Vec<String>>,
}

impl EmbeddingSet {
    /// Opens a folder.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return input_err(format!(
                "embedding folder '{}' does not exist",
                dir.display()
            ));
        }
        let mpath = dir.join("manifest.json");
        let manifest: Option<Manifest> = if mpath.is_file() {
            let text =
                std::fs::read_to_string(&mpath).map_err(|e| Error::io("cannot read", &mpath, e))?;
            Some(serde_json::from_str(&text).map_err(|e| {
                Error::Input(format!(
                    "'{}' is not a domsim manifest ({e}); re-run `domsim extract`",
                    mpath.display()
                ))
            })?)
        } else {
            None
        };
        let layers: Vec<LayerData> = match &manifest {
            Some(m) => m
                .layers
                .iter()
                .map(|l| LayerData {
                    index: l.index,
                    name: l.name.clone(),
                    path: dir.join(&l.file),
                })
                .collect(),
            None => {
                let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|e| Error::io("cannot list", dir, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "npy"))
                    .collect();
                files.sort();
                if files.is_empty() {
                    return input_err(format!(
                        "'{}' holds neither a manifest.json (from `domsim extract`) nor any .npy file",
                        dir.display()
                    ));
                }
                files
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| LayerData {
                        index: i,
                        name: p
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        path: p,
                    })
                    .collect()
            }
        };
        check_layer_shapes(dir, &layers)?;
        let (paths, labels) = read_labels(dir)?;
        Ok(EmbeddingSet {
            dir: dir.to_path_buf(),
            manifest,
            layers,
            labels,
            paths,
        })
    }

    /// Reads layer `i`'s matrix (f64).
    pub fn read_layer(&self, i: usize) -> Result<Array2<f64>> {
        let l = &self.layers[i];
        let a = crate::npy::read(&l.path)?;
        if let Some(lab) = &self.labels {
            if lab.len() != a.nrows() {
                return input_err(format!(
                    "layer '{}' in '{}' has {} rows but the labels list {} rows",
                    l.name,
                    l.path.display(),
                    a.nrows(),
                    lab.len()
                ));
            }
        }
        Ok(a)
    }
}

/// Every layer file lies inside the folder, has at least one column, and all have the same number of rows
/// (one per image): checked from the headers before any matrix is read.
fn check_layer_shapes(dir: &Path, layers: &[LayerData]) -> Result<()> {
    let mut rows: Vec<(String, usize)> = Vec::new();
    for l in layers {
        let rel = l.path.strip_prefix(dir).unwrap_or(&l.path);
        if !l.path.starts_with(dir)
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return input_err(format!(
                "layer '{}' in '{}' points outside its folder ('{}'); domsim reads only files inside an embedding folder. Re-run `domsim extract`",
                l.name,
                dir.display(),
                l.path.display()
            ));
        }
        let (r, c) = crate::npy::shape(&l.path)?;
        if c == 0 {
            return input_err(format!(
                "layer '{}' ('{}') has 0 features per row; nothing can be measured on it. Remove the file, or extract the layer again",
                l.name,
                l.path.display()
            ));
        }
        rows.push((l.name.clone(), r));
    }
    if rows.iter().any(|(_, r)| *r != rows[0].1) {
        let list: Vec<String> = rows.iter().map(|(n, r)| format!("{n}: {r}")).collect();
        return input_err(format!(
            "the layers in '{}' have different numbers of rows ({}); every layer needs one row per image, in the same order. Extract them together, or remove the odd ones",
            dir.display(),
            list.join(", ")
        ));
    }
    Ok(())
}

type Labels = (Option<Vec<String>>, Option<Vec<String>>);

/// Labels (and paths) from `index.csv` and `labels.csv`; when both exist they must agree.
fn read_labels(dir: &Path) -> Result<Labels> {
    let index = read_label_file(dir, "index.csv", true)?;
    let labels = read_label_file(dir, "labels.csv", false)?;
    match (index, labels) {
        (Some(i), Some(l)) if i.1 != l.1 => input_err(format!(
            "'{}' and '{}' give different labels (index.csv: {} rows, labels.csv: {} rows{}); remove one, or make them agree",
            dir.join("index.csv").display(),
            dir.join("labels.csv").display(),
            i.1.as_ref().map_or(0, Vec::len),
            l.1.as_ref().map_or(0, Vec::len),
            first_difference(i.1.as_deref(), l.1.as_deref())
        )),
        (Some(i), _) => Ok(i),
        (None, Some(l)) => Ok(l),
        (None, None) => Ok((None, None)),
    }
}

fn first_difference(a: Option<&[String]>, b: Option<&[String]>) -> String {
    let (a, b) = (a.unwrap_or(&[]), b.unwrap_or(&[]));
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map_or(String::new(), |r| {
            format!("; first at row {r}: '{}' vs '{}'", a[r], b[r])
        })
}

/// One label file, or `None` when it does not exist.
fn read_label_file(dir: &Path, file: &str, has_path: bool) -> Result<Option<Labels>> {
    {
        let p = dir.join(file);
        if !p.is_file() {
            return Ok(None);
        }
        let mut r = csv::Reader::from_path(&p)
            .map_err(|e| Error::Input(format!("cannot read '{}': {e}", p.display())))?;
        let headers = r
            .headers()
            .map_err(|e| Error::Input(format!("cannot read '{}': {e}", p.display())))?
            .clone();
        let col = |name: &str| headers.iter().position(|h| h == name);
        let (Some(lc), pc) = (col("label"), col("path")) else {
            return input_err(format!("'{}' needs a 'label' column", p.display()));
        };
        let rc = col("row");
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        let mut paths = Vec::new();
        for (line, rec) in r.records().enumerate() {
            let rec =
                rec.map_err(|e| Error::Input(format!("cannot read '{}': {e}", p.display())))?;
            labels.push(rec.get(lc).unwrap_or("").to_string());
            if let Some(pc) = pc {
                paths.push(rec.get(pc).unwrap_or("").to_string());
            }
            if let Some(rc) = rc {
                let v = rec.get(rc).unwrap_or("");
                rows.push(v.trim().parse::<usize>().map_err(|_| {
                    Error::Input(format!(
                        "'{}', line {}: row '{v}' is not a row number (0, 1, 2, ...)",
                        p.display(),
                        line + 2
                    ))
                })?);
            }
        }
        if rc.is_some() {
            // the `row` column says which matrix row each label belongs to: place labels by it
            let n = labels.len();
            let mut seen = vec![false; n];
            for &row in &rows {
                if row >= n || seen[row] {
                    return input_err(format!(
                        "'{}': row {row} is {}; with {n} lines the rows must be 0 to {}, each once (one line per matrix row)",
                        p.display(),
                        if row >= n {
                            "past the end"
                        } else {
                            "listed twice"
                        },
                        n.saturating_sub(1)
                    ));
                }
                seen[row] = true;
            }
            let place = |v: &[String]| {
                let mut out = vec![String::new(); n];
                for (i, &row) in rows.iter().enumerate() {
                    out[row] = v[i].clone();
                }
                out
            };
            labels = place(&labels);
            if !paths.is_empty() {
                paths = place(&paths);
            }
        }
        let any_label = labels.iter().any(|l| !l.is_empty());
        if let Some(r) = labels
            .iter()
            .position(String::is_empty)
            .filter(|_| any_label)
        {
            return input_err(format!(
                "'{}': row {r} has an empty label while other rows have one; give every row a class, or none",
                p.display()
            ));
        }
        Ok(Some((
            (has_path && !paths.is_empty()).then_some(paths),
            any_label.then_some(labels),
        )))
    }
}

/// Layer entries for a manifest, from the selected layers and what the first batch showed.
pub fn entries(layers: &[Layer], run: &[(Vec<usize>, TensorLayout, usize)]) -> Vec<LayerEntry> {
    layers
        .iter()
        .zip(run)
        .enumerate()
        .map(|(i, (l, (shape, layout, dim)))| LayerEntry {
            index: i,
            name: l.name.clone(),
            op_type: l.op_type.clone(),
            raw_shape: l.shape.clone(),
            run_shape: shape.clone(),
            layout: *layout,
            dim: *dim,
            file: format!("layers/{}", layer_file_name(i, layers.len(), &l.name)),
            stats: None,
        })
        .collect()
}

/// Checks that two manifests describe the same extraction (model, input, preprocessing, pooling, layers), so
/// that a ready-made embedding folder can be compared with one extracted now.
pub fn check_same_extraction(a: &Manifest, b: &Manifest, a_dir: &Path, b_dir: &Path) -> Result<()> {
    let names = |m: &Manifest| m.layers.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
    let differs: Vec<(&str, String, String)> = [
        (
            "model SHA-256",
            a.model.sha256.clone(),
            b.model.sha256.clone(),
        ),
        ("input", format!("{:?}", a.input), format!("{:?}", b.input)),
        (
            "normalisation",
            format!("{:?}", a.preprocessing.normalization),
            format!("{:?}", b.preprocessing.normalization),
        ),
        (
            "pooling",
            format!("{:?}", a.pooling),
            format!("{:?}", b.pooling),
        ),
        (
            "token pooling",
            format!("{:?}", a.tokens),
            format!("{:?}", b.tokens),
        ),
        ("layers", names(a).join(", "), names(b).join(", ")),
    ]
    .into_iter()
    .filter(|(_, x, y)| x != y)
    .collect();
    match differs.first() {
        None => Ok(()),
        Some((what, x, y)) => Err(Error::Input(format!(
            "the embeddings in '{}' and '{}' were not extracted alike: {what} differs ('{x}' vs '{y}'). Extract both with the same model and settings (--layers, --pool, --norm, --size), or pass image folders so that analyze extracts both",
            a_dir.display(),
            b_dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_stay_inside() {
        assert_eq!(
            layer_file_name(3, 19, "/_blocks.4/Add_output_0"),
            "03_blocks.4_Add_output_0.npy"
        );
        assert_eq!(
            layer_file_name(0, 2, "../../etc/passwd"),
            "00_etc_passwd.npy"
        );
        assert_eq!(layer_file_name(0, 2, ".."), "00_layer.npy");
        assert_eq!(layer_file_name(120, 200, "x"), "120_x.npy");
        assert!(!layer_file_name(1, 2, "a/../../b").contains('/'));
    }
}
