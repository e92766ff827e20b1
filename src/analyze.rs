//! `domsim analyze`: extract both image folders (reusing cached embeddings), compare them, decide the
//! verdict and write every report file.
//!
//! Cached embeddings live in `REPORT_DIR/embeddings/{source,target}`. They are reused when the manifest's
//! fingerprint matches the new request: SHA-256 over the model's SHA-256, the extraction settings, and every
//! image's relative path, size and modification time.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::compare::{self, CompareConfig};
use crate::dataset::ImageSet;
use crate::embeddings::EmbeddingSet;
use crate::error::{Error, Result};
use crate::extract::{extract_with, ExtractConfig};
use crate::model::runtime::sha256_file;
use crate::model::OnnxModel;
use crate::output::{self, write_atomic};
use crate::report::{self, RunReport};

/// Settings for `domsim analyze`.
#[derive(Debug, Clone)]
pub struct AnalyzeConfig {
    /// Source image folder.
    pub source: PathBuf,
    /// Target image folder.
    pub target: PathBuf,
    /// Report folder.
    pub out: PathBuf,
    /// Extraction settings (its `images` and `out` are set per set).
    pub extract: ExtractConfig,
    /// Compare settings (its folders are set here).
    pub compare: CompareConfig,
    /// Most points per set in the PCA scatters.
    pub scatter_max_n: usize,
}

/// What `analyze` did.
pub struct AnalyzeOutcome {
    /// The rendered report.
    pub report: RunReport,
    /// Whether the source and target embeddings were reused from the cache.
    pub reused: [bool; 2],
    /// Files written.
    pub files: Vec<PathBuf>,
}

fn fingerprint(model_sha: &str, set: &ImageSet, cfg: &ExtractConfig) -> Result<String> {
    let mut h = Sha256::new();
    h.update(format!(
        "{model_sha}|{:?}|{:?}|{:?}|{}|{:?}|{:?}|",
        cfg.selection, cfg.norm, cfg.pool, cfg.batch_size, cfg.size, cfg.layout
    ));
    for (i, f) in set.files.iter().enumerate() {
        let p = set.path(i);
        let md = std::fs::metadata(&p).map_err(|e| Error::io("cannot stat", &p, e))?;
        let mtime = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(format!("{f}\0{}\0{mtime}\n", md.len()));
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn cached(dir: &Path, fp: &str) -> bool {
    EmbeddingSet::open(dir)
        .ok()
        .and_then(|s| s.manifest)
        .is_some_and(|m| m.fingerprint.as_deref() == Some(fp))
}

/// Runs the whole analysis.
pub fn analyze(cfg: &AnalyzeConfig) -> Result<AnalyzeOutcome> {
    output::prepare_dir(&cfg.out, cfg.compare.force)?;
    let model_sha = sha256_file(&cfg.extract.model).map_err(|e| match e {
        Error::Io { path, .. } => Error::Input(format!(
            "model file '{}' cannot be read; pass an ONNX image model with --model, or omit --model to use the bundled EfficientNet-Lite0",
            path.display()
        )),
        other => other,
    })?;
    let mut model: Option<OnnxModel> = None;
    let mut reused = [false; 2];
    let mut dirs = Vec::new();
    let mut run_info = serde_json::Map::new();
    for (k, (name, images)) in [("source", &cfg.source), ("target", &cfg.target)]
        .into_iter()
        .enumerate()
    {
        let set = ImageSet::scan(images)?;
        let dir = cfg.out.join("embeddings").join(name);
        let fp = fingerprint(&model_sha, &set, &cfg.extract)?;
        if cached(&dir, &fp) {
            reused[k] = true;
        } else {
            if model.is_none() {
                let e = &cfg.extract;
                model = Some(OnnxModel::load(
                    &e.model,
                    e.threads,
                    e.ort_lib.as_deref(),
                    e.size,
                    e.layout,
                )?);
            }
            let mut ecfg = cfg.extract.clone();
            ecfg.images = images.clone();
            ecfg.out = dir.clone();
            ecfg.force = true;
            ecfg.fingerprint = Some(fp.clone());
            extract_with(model.as_ref().expect("loaded"), &set, &ecfg)?;
        }
        run_info.insert(
            name.into(),
            serde_json::json!({"images": images.display().to_string(), "embeddings": dir.display().to_string(), "reused_cached_embeddings": reused[k], "fingerprint": fp}),
        );
        dirs.push(dir);
    }
    let src = EmbeddingSet::open(&dirs[0])?;
    let tgt = EmbeddingSet::open(&dirs[1])?;
    let mut ccfg = cfg.compare.clone();
    ccfg.source = dirs[0].clone();
    ccfg.target = dirs[1].clone();
    ccfg.out = cfg.out.clone();
    let cmp = compare::compute(&src, &tgt, &ccfg)?;
    compare::write_report(&cmp, &cfg.out)?;
    let scatter: Vec<(usize, String)> = report::scatter_depths(cmp.layers.len())
        .into_iter()
        .map(|d| (d, cmp.layers[d].layer.clone()))
        .collect();
    let pca = report::pca_points(&src, &tgt, &scatter, cfg.scatter_max_n, ccfg.params.seed)?;
    write_atomic(&cfg.out.join("embedding_pca.csv"), &report::pca_csv(&pca))?;
    let verdict = report::verdict_for(&cmp);
    let rr = RunReport {
        compare: cmp,
        verdict,
        pca,
        extra: serde_json::json!({"embeddings": run_info, "report_dir": cfg.out.display().to_string()}),
    };
    let files = report::write_all(&rr, &cfg.out)?;
    Ok(AnalyzeOutcome {
        report: rr,
        reused,
        files,
    })
}

/// `domsim report`: re-renders charts, verdict and summary from an existing compare output.
pub fn rerender(dir: &Path) -> Result<RunReport> {
    let cmp = compare::read_report(dir)?;
    let pca = report::read_pca(&dir.join("embedding_pca.csv"))?;
    let verdict = report::verdict_for(&cmp);
    let prev: serde_json::Value = std::fs::read(dir.join("summary.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let rr = RunReport {
        compare: cmp,
        verdict,
        pca,
        extra: prev
            .get("run")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"report_dir": dir.display().to_string()})),
    };
    report::write_all(&rr, dir)?;
    Ok(rr)
}
