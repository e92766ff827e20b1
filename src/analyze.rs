//! `domsim analyze`: extract both image folders (reusing cached embeddings), compare them, decide the
//! verdict and write every report file.
//!
//! Cached embeddings live in `REPORT_DIR/embeddings/{source,target}`. They are reused when the manifest's
//! fingerprint matches the new request (SHA-256 over the model's SHA-256, the extraction settings, and every
//! image's relative path and the SHA-256 of its bytes, taken by extraction from the bytes it decoded) and the
//! cache verifies (the size and SHA-256 of each of its files and of its manifest, [`crate::embeddings::Manifest::unsealed`]).
//!
//! Either set may also be an embedding folder written by `domsim extract` (it holds a `manifest.json`): it is
//! used as it is, after checking that it was made with the same model, input, preprocessing, pooling and
//! layers as the other set. Without a source, the bundled model uses its bundled reference (an embedding
//! folder of ImageNet photos, [`bundled_reference_path`]).

use std::path::{Path, PathBuf};

use crate::compare::{self, CompareOptions};
use crate::dataset::ImageSet;
use crate::embeddings::EmbeddingSet;
use crate::error::{Error, Result};
use crate::extract::{extract_with, ExtractConfig, ExtractOptions};
use crate::model::runtime::{bundled_reference_path, model_identity, DEFAULT_MODEL_SHA256};
use crate::model::OnnxModel;
use crate::output;
use crate::report::{self, export, RunInfo, RunReport, SideRun, SourceReference, Timing};

/// Wall seconds per phase of `analyze`.
type Phases = std::collections::BTreeMap<String, f64>;

/// Settings for `domsim analyze`.
#[derive(Debug, Clone)]
pub struct AnalyzeConfig {
    /// Source image folder or embedding folder; `None` = the bundled reference (bundled model only).
    pub source: Option<PathBuf>,
    /// Target image folder (or embedding folder).
    pub target: PathBuf,
    /// Report folder.
    pub out: PathBuf,
    /// Overwrite a non-empty folder not made by domsim.
    pub force: bool,
    /// How images become embeddings (both sets).
    pub extract: ExtractOptions,
    /// What to measure.
    pub compare: CompareOptions,
    /// Most points per set in the PCA scatters.
    pub scatter_max_n: usize,
    /// Measure the colour and resolution controls ([`crate::controls`]).
    pub controls: bool,
}

/// What `analyze` did.
pub struct AnalyzeOutcome {
    /// The rendered report.
    pub report: RunReport,
    /// Whether the source and target embeddings were reused from the cache.
    pub reused: [bool; 2],
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Caches of this request that did not verify and were extracted again (also in the report's notes).
    pub cache_notes: Vec<String>,
}

/// The fingerprint of `set` under `key`: every file's path and the SHA-256 of its content now, not its size
/// and time (an image rewritten in place with its old time kept, `touch -r`, is a different image; hashing
/// the bytes costs far less than decoding them). Extraction records the same fingerprint from the bytes it
/// decoded, so a cache whose files changed during its run does not match.
fn fingerprint(key: &str, set: &ImageSet) -> String {
    use rayon::prelude::*;
    let digests: Vec<Vec<u8>> = (0..set.files.len())
        .into_par_iter()
        .map(|i| crate::preprocess::digest(&std::fs::read(set.path(i))))
        .collect();
    crate::extract::fingerprint_of(key, &set.files, &digests)
}

/// Whether the cache in `dir` is this request's and intact: its fingerprint is `fp` and every file it was
/// written with is there, of its size and SHA-256, under an unedited manifest ([`crate::embeddings::Manifest::unsealed`]). A
/// cache of this request that does not verify is named in `notes` and extracted again.
fn cached(dir: &Path, fp: &str, notes: &mut Vec<String>) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("manifest.json")) else {
        return false;
    };
    let Ok(m) = serde_json::from_str::<crate::embeddings::Manifest>(&text) else {
        notes.push(format!(
            "the cached embeddings in '{}' have an unreadable manifest.json; extracted again",
            dir.display()
        ));
        return false;
    };
    if m.fingerprint.as_deref() != Some(fp) {
        return false;
    }
    match m.unsealed(dir) {
        None => EmbeddingSet::open(dir).is_ok(),
        Some(why) => {
            notes.push(format!(
                "the cached embeddings in '{}' do not verify ({why}); extracted again",
                dir.display()
            ));
            false
        }
    }
}

/// True when `dir` is an embedding folder written by `domsim extract`, not an image folder.
pub fn is_embedding_folder(dir: &Path) -> bool {
    dir.join("manifest.json").is_file()
}

/// The source to use: the given folder, else the bundled reference when the model is the bundled one.
fn resolve_source(cfg: &AnalyzeConfig, model_sha: &str) -> Result<(PathBuf, bool)> {
    match &cfg.source {
        Some(p) => Ok((p.clone(), false)),
        None if model_sha == DEFAULT_MODEL_SHA256 => {
            let r = bundled_reference_path();
            if !is_embedding_folder(&r) {
                return Err(Error::Input(format!(
                    "the bundled source reference '{}' is missing; regenerate it with `bash scripts/make-reference.sh`, or pass --source DIR",
                    r.display()
                )));
            }
            Ok((r, true))
        }
        None => Err(Error::Input(format!(
            "no --source given, and the bundled source reference belongs to the bundled EfficientNet-Lite0 only, not to '{}'. Make a reusable reference for this model once from images like its training data: `domsim extract --model {} --images imagenet_like/ --out ref/`, then pass `--source ref/` (an embedding folder) or `--source imagenet_like/`",
            cfg.extract.model.display(),
            cfg.extract.model.display()
        ))),
    }
}

/// The target images of the pretraining control ([`crate::controls::pretraining_rows`]) embedded by the
/// model with its weights permuted within each tensor (seeded by `--seed`), under
/// `OUT/embeddings/controls/permuted_weights_R/`, one folder per permuted network, and cached. The permuted model is written to a temporary
/// folder inside OUT and removed. `None` for a model with external weight files.
fn extract_permuted(
    cfg: &AnalyzeConfig,
    model_sha: &str,
    set: &ImageSet,
    tgt: &EmbeddingSet,
    notes: &mut Vec<String>,
) -> Result<Option<(Vec<EmbeddingSet>, String)>> {
    let seed = cfg.compare.params.seed;
    let rows = crate::controls::pretraining_rows(set.files.len(), &cfg.compare.params);
    let subset = set.subset(&rows);
    let bytes = std::fs::read(&cfg.extract.model)
        .map_err(|e| Error::io("cannot read model", &cfg.extract.model, e))?;
    if crate::model::onnx::decode(&bytes)
        .ok()
        .and_then(|m| m.graph)
        .is_some_and(|g| !crate::model::onnx::external_files(&g).is_empty())
    {
        return Ok(None);
    }
    let m = tgt
        .manifest
        .as_ref()
        .ok_or_else(|| Error::Analysis("the target embeddings have no manifest".into()))?;
    let mut sets = Vec::new();
    let mut how = String::new();
    let mut rescaled_first = String::new();
    // measured once, with the first network that is not cached, and shared by the others
    let mut calibration = None;
    for r in 0..crate::controls::PERMUTATIONS {
        // one seed per permuted network, derived from --seed
        let sub = seed
            .wrapping_mul(crate::controls::PERMUTATIONS as u64)
            .wrapping_add(r as u64);
        let Some((permuted, tensors, values)) = crate::model::onnx::permuted_weights(&bytes, sub)
        else {
            return Ok(None);
        };
        how = format!(
            "{values} weights in {tensors} float tensors permuted within each tensor, {} permutations (seeds {}–{} from --seed {seed})",
            crate::controls::PERMUTATIONS,
            seed.wrapping_mul(crate::controls::PERMUTATIONS as u64),
            seed.wrapping_mul(crate::controls::PERMUTATIONS as u64)
                .wrapping_add(crate::controls::PERMUTATIONS as u64 - 1)
        );
        let dir = cfg
            .out
            .join("embeddings")
            .join("controls")
            .join(format!("permuted_weights_{r}"));
        let key = crate::extract::fingerprint_key(
            &format!(
                "{model_sha}+permuted-weights-seed-{sub}+rescaled-{}x{}",
                crate::model::rescale::PASSES,
                crate::model::rescale::IMAGES
            ),
            &cfg.extract,
        );
        let fp = fingerprint(&key, &subset);
        let scale_file = dir.join("rescaled.txt");
        if !cached(&dir, &fp, notes) {
            embed_permuted(
                cfg,
                m,
                (set, &subset),
                (&bytes, &permuted),
                &mut calibration,
                &dir,
                key,
            )?;
        }
        if r == 0 {
            rescaled_first = std::fs::read_to_string(&scale_file).unwrap_or_default();
        }
        sets.push(EmbeddingSet::open(&dir)?);
    }
    if !rescaled_first.is_empty() {
        how.push_str(&format!(
            "; network 1 of {}: {rescaled_first}",
            crate::controls::PERMUTATIONS
        ));
    }
    Ok(Some((sets, how)))
}

/// Embeds `subset` (of `set`) with one permuted network (`models`: the original and the permuted bytes), at
/// the target's own layers and normalisation, after rescaling it ([`crate::model::rescale`]; `calibration`
/// is measured on the first call and reused); the permuted
/// model is written to a temporary folder inside OUT and removed, and what the rescaling did is kept beside
/// the embeddings (`rescaled.txt`).
fn embed_permuted(
    cfg: &AnalyzeConfig,
    m: &crate::embeddings::Manifest,
    (set, subset): (&ImageSet, &ImageSet),
    (original, permuted): (&[u8], &[u8]),
    calibration: &mut Option<crate::model::rescale::Calibration>,
    dir: &Path,
    key: String,
) -> Result<()> {
    let tmp = crate::output::temp_dir_in(&cfg.out)?;
    let path = tmp.path().join("permuted_weights.onnx");
    std::fs::write(&path, permuted).map_err(|e| Error::io("cannot write", &path, e))?;
    // the permuted file is another model to domsim: the target's own layers and normalisation are passed
    // explicitly, so that both networks are read at the same tensors with the same pixels
    let options = ExtractOptions {
        model: path,
        progress: false,
        selection: crate::model::Selection::Names(
            m.layers.iter().map(|l| l.name.clone()).collect(),
        ),
        // a uint8 model takes its pixels as they are: no normalisation applies, and none is passed
        norm: (m.input.elem == crate::model::ElemType::F32)
            .then(|| m.preprocessing.normalization.clone()),
        tokens: m.tokens.or(cfg.extract.tokens),
        ..cfg.extract.clone()
    };
    let mut model = options.load_model()?;
    let ort_lib = options.ort_lib.as_deref();
    if calibration.is_none() {
        let (batch, n) = calibration_batch(&model, subset, &options)?;
        *calibration = Some(crate::model::rescale::Calibration::new(
            &model, original, batch, n, ort_lib,
        )?);
    }
    let cal = calibration.as_ref().expect("measured above");
    let rescaled = crate::model::rescale::match_scale(&mut model, cal, ort_lib)?;
    let job = ExtractConfig {
        force: true,
        fingerprint: Some(key),
        ..ExtractConfig::new(options, set.root.clone(), dir.to_path_buf())
    };
    extract_with(&model, subset, &job)?;
    crate::output::write_atomic(&dir.join("rescaled.txt"), rescaled.describe().as_bytes())
}

/// The first [`crate::model::rescale::IMAGES`] decodable images of `set`, preprocessed for `model` as
/// `options` says, as one batch (and its size) to measure activation scales on.
fn calibration_batch(
    model: &crate::model::OnnxModel,
    set: &ImageSet,
    options: &ExtractOptions,
) -> Result<(crate::model::InputBatch, usize)> {
    use crate::preprocess::{Pixels, Preprocess};
    let pre = Preprocess::new(
        model.input.clone(),
        crate::extract::resolve_norm(options.norm.clone(), model),
        options.max_alloc,
    );
    // a model with a fixed batch gets exactly that many images (repeated when the set has fewer)
    let want = model
        .input
        .fixed_batch
        .unwrap_or(crate::model::rescale::IMAGES);
    let (mut f, mut u, mut n) = (Vec::new(), Vec::new(), 0);
    for i in (0..set.len()).cycle().take(want * 4 + set.len()) {
        if n == want {
            break;
        }
        match crate::preprocess::load(&set.path(i), &pre) {
            Ok((Pixels::F32(x), _)) => f.extend(x),
            Ok((Pixels::U8(x), _)) => u.extend(x),
            Err(_) => continue,
        }
        n += 1;
    }
    if n < want {
        return Err(Error::Input(format!(
            "too few images of '{}' could be decoded to measure the permuted network's activation scale",
            set.root.display()
        )));
    }
    Ok(if u.is_empty() {
        (crate::model::InputBatch::F32(f), n)
    } else {
        (crate::model::InputBatch::U8(u), n)
    })
}

/// The controls of a source given as images: every applicable change of at most
/// [`crate::controls::ROWS`] of its images (evenly spaced), extracted under `OUT/embeddings/controls/` and
/// cached like the sets themselves.
fn extract_controls(
    cfg: &AnalyzeConfig,
    model_sha: &str,
    model: &OnnxModel,
    set: &ImageSet,
    (src, tgt): (&EmbeddingSet, &EmbeddingSet),
    notes: &mut Vec<String>,
) -> Result<Vec<crate::controls::Control>> {
    let (side, channels) = crate::controls::target_side_and_channels(src, tgt);
    let rows = crate::controls::control_rows(set.files.len());
    let subset = set.subset(&rows);
    let mut out = Vec::new();
    for t in crate::controls::applicable(side, channels, None) {
        let options = ExtractOptions {
            transform: t,
            progress: false,
            ..cfg.extract.clone()
        };
        let dir = cfg.out.join("embeddings").join("controls").join(t.name());
        let key = crate::extract::fingerprint_key(model_sha, &options);
        let fp = fingerprint(&key, &subset);
        if !cached(&dir, &fp, notes) {
            let job = ExtractConfig {
                force: true,
                fingerprint: Some(key),
                ..ExtractConfig::new(options, set.root.clone(), dir.clone())
            };
            extract_with(model, &subset, &job)?;
        }
        out.push(crate::controls::Control {
            transform: t,
            set: EmbeddingSet::open(&dir)?,
        });
    }
    Ok(out)
}

/// Runs the whole analysis on `cfg.compare.threads` workers (ONNX Runtime and decoding take
/// `cfg.extract.threads`).
pub fn analyze(cfg: &AnalyzeConfig) -> Result<AnalyzeOutcome> {
    crate::threads::run(cfg.compare.threads, || analyze_here(cfg))?
}

fn analyze_here(cfg: &AnalyzeConfig) -> Result<AnalyzeOutcome> {
    check_inputs(cfg)?;
    let _lock = output::prepare_dir(&cfg.out, cfg.force)?;
    crate::report::export::check_outputs_writable(&cfg.out)?;
    let t_start = std::time::Instant::now();
    let mut phases = Phases::new();
    let model_sha = model_identity(&cfg.extract.model).map_err(|e| match e {
        Error::Io { path, .. } => Error::Model {
            message: format!(
                "model file '{}' cannot be read; pass an ONNX image model with --model, or omit --model to use the bundled EfficientNet-Lite0",
                path.display()
            ),
            path,
        },
        other => other,
    })?;
    let (source, bundled_source) = resolve_source(cfg, &model_sha)?;
    let mut e = embed_both(cfg, &model_sha, &source, bundled_source, &mut phases)?;
    let src = EmbeddingSet::open(&e.dirs[0])?;
    let tgt = EmbeddingSet::open(&e.dirs[1])?;
    if e.ready_made.iter().any(|&r| r) {
        match (&src.manifest, &tgt.manifest) {
            (Some(a), Some(b)) => {
                crate::embeddings::check_same_extraction(a, b, &e.dirs[0], &e.dirs[1])?
            }
            _ => unreachable!(
                "both folders have a manifest: one was extracted here, the other was checked"
            ),
        }
    }
    let mut run = RunInfo {
        embeddings: std::mem::take(&mut e.run_info),
        report_dir: Some(cfg.out.display().to_string()),
        ..RunInfo::default()
    };
    if bundled_source {
        let m = src.manifest.as_ref().expect("checked above");
        run.source_reference = Some(source_reference(m, &e.dirs[0]));
    }
    let t0 = std::time::Instant::now();
    let mut cmp = compare::compute(&src, &tgt, &cfg.compare)?;
    let cache_notes = e.notes.clone();
    cmp.notes.append(&mut e.notes);
    phase(&mut phases, "compare", t0);
    if cfg.controls {
        run_controls(cfg, &model_sha, &mut e, (&src, &tgt), &mut cmp, &mut phases)?;
    }
    let t0 = std::time::Instant::now();
    let scatter: Vec<(usize, String)> = report::scatter_depths(cmp.layers.len())
        .into_iter()
        .map(|d| (d, cmp.layers[d].layer.clone()))
        .collect();
    let pca = report::pca_points(
        &src,
        &tgt,
        &scatter,
        cfg.scatter_max_n,
        cfg.compare.params.seed,
    )?;
    phase(&mut phases, "pca", t0);
    let verdict = report::verdict_for(&cmp);
    let t0 = std::time::Instant::now();
    let examples = example_images(&src, &tgt, &run, &cmp, &verdict)?;
    phase(&mut phases, "examples", t0);
    let rr = RunReport {
        compare: cmp,
        verdict,
        pca,
        run: Some(run),
        examples,
    };
    let (rr, files) = write_files(rr, cfg, phases, t_start)?;
    Ok(AnalyzeOutcome {
        report: rr,
        reused: e.reused,
        files,
        cache_notes,
    })
}

/// The page's example images: each side's image folder (when it was extracted here), and the layer the plan
/// acts on (the cut, else the deepest layer).
fn example_images(
    src: &EmbeddingSet,
    tgt: &EmbeddingSet,
    run: &RunInfo,
    cmp: &crate::compare::CompareReport,
    verdict: &crate::verdict::Verdict,
) -> Result<Vec<report::examples::Example>> {
    let dir = |side| run.images(side).map(Path::new);
    let depth = verdict
        .cut
        .as_ref()
        .map(|c| c.depth)
        .or(cmp.layers.len().checked_sub(1));
    let at = depth.and_then(|d| cmp.layers.get(d).map(|l| (d, l.layer.as_str())));
    report::examples::pick(
        src,
        tgt,
        [
            dir(crate::compare::Side::Source),
            dir(crate::compare::Side::Target),
        ],
        at,
    )
}

/// Records the wall time of a phase since `t0`.
fn phase(phases: &mut Phases, name: &str, t0: std::time::Instant) {
    phases.insert(name.into(), t0.elapsed().as_secs_f64());
}

/// The output folder is not one of the inputs, and every input folder exists: a mistyped folder is refused
/// before the output folder is made (nothing is left behind).
fn check_inputs(cfg: &AnalyzeConfig) -> Result<()> {
    let mut inputs: Vec<(&str, &Path)> = vec![("--target", &cfg.target)];
    if let Some(s) = &cfg.source {
        inputs.push(("--source", s));
    }
    output::check_out_is_not_an_input(&cfg.out, &inputs)?;
    for (flag, p) in &inputs {
        // a lone shard given as embeddings is part of a set, not the set
        crate::shard::whole_set(p)?;
        if !p.is_dir() {
            return Err(Error::Input(format!(
                "{flag} '{}' does not exist or is not a folder; check the path",
                p.display()
            )));
        }
    }
    // a missing or non-ONNX model is said as such, before the source reference is looked for
    crate::model::runtime::read_onnx(&cfg.extract.model)?;
    Ok(())
}

/// The two sides as embedding folders, and what the controls need of them.
struct Embedded {
    /// The source's and the target's embedding folders.
    dirs: Vec<PathBuf>,
    /// Given as embeddings (or shards), not extracted here.
    ready_made: [bool; 2],
    /// Extracted before, with the same fingerprint, and reused.
    reused: [bool; 2],
    /// `summary.json`'s `run.embeddings`.
    run_info: std::collections::BTreeMap<crate::compare::Side, crate::report::SideRun>,
    /// The image sets, when given as images.
    images: [Option<ImageSet>; 2],
    /// The model, when it was loaded.
    model: Option<OnnxModel>,
    /// What the cache said (a cache that did not verify, extracted again).
    notes: Vec<String>,
}

/// Each side as an embedding folder: a folder of shards merged, an embedding folder used as it is, an image
/// folder extracted (or its cached embeddings reused) under `OUT/embeddings/`.
fn embed_both(
    cfg: &AnalyzeConfig,
    model_sha: &str,
    source: &Path,
    bundled_source: bool,
    phases: &mut Phases,
) -> Result<Embedded> {
    let mut e = Embedded {
        dirs: Vec::new(),
        ready_made: [false; 2],
        reused: [false; 2],
        run_info: std::collections::BTreeMap::new(),
        images: [None, None],
        model: None,
        notes: Vec::new(),
    };
    for (k, (side, images)) in [
        (crate::compare::Side::Source, source),
        (crate::compare::Side::Target, cfg.target.as_path()),
    ]
    .into_iter()
    .enumerate()
    {
        let name = side.as_str();
        if crate::shard::is_shard_parent(images) {
            // a folder of shards from `extract --shard I/N`: merged, then used as an embedding folder
            let dir = cfg.out.join("embeddings").join(name);
            crate::shard::merge(&[images.to_path_buf()], &dir, true)?;
            e.ready_made[k] = true;
            e.run_info.insert(
                side,
                SideRun {
                    embeddings: dir.display().to_string(),
                    merged_from_shards: Some(images.display().to_string()),
                    ..SideRun::default()
                },
            );
            e.dirs.push(dir);
            continue;
        }
        if is_embedding_folder(images) {
            e.ready_made[k] = true;
            e.run_info.insert(
                side,
                SideRun {
                    embeddings: images.display().to_string(),
                    embedding_folder_given: Some(true),
                    bundled_reference: Some(k == 0 && bundled_source),
                    ..SideRun::default()
                },
            );
            e.dirs.push(images.to_path_buf());
            continue;
        }
        let t0 = std::time::Instant::now();
        let set = ImageSet::scan(images)?;
        let dir = cfg.out.join("embeddings").join(name);
        let key = crate::extract::fingerprint_key(model_sha, &cfg.extract);
        let fp = fingerprint(&key, &set);
        if cached(&dir, &fp, &mut e.notes) {
            e.reused[k] = true;
        } else {
            if e.model.is_none() {
                e.model = Some(cfg.extract.load_model()?);
            }
            let job = ExtractConfig {
                force: true,
                fingerprint: Some(key),
                ..ExtractConfig::new(cfg.extract.clone(), images.to_path_buf(), dir.clone())
            };
            extract_with(e.model.as_ref().expect("loaded"), &set, &job)?;
        }
        phase(phases, &format!("extract_{name}"), t0);
        e.images[k] = Some(set);
        e.run_info.insert(
            side,
            SideRun {
                embeddings: dir.display().to_string(),
                images: Some(images.display().to_string()),
                reused_cached_embeddings: Some(e.reused[k]),
                fingerprint: Some(fp),
                ..SideRun::default()
            },
        );
        e.dirs.push(dir);
    }
    Ok(e)
}

/// `summary.json`'s `run.source_reference` when the bundled reference was the source.
fn source_reference(m: &crate::embeddings::Manifest, dir: &Path) -> SourceReference {
    SourceReference {
        bundled: true,
        dir: dir.display().to_string(),
        images: m.images.clone(),
        n_images: m.n_images,
        dtype: m.dtype,
        description: format!(
            "the bundled reference: {} ImageNet photos ({}) embedded by the bundled EfficientNet-Lite0, stored as {}; every source-side metric uses at most these {} rows",
            m.n_images, m.images, m.dtype.name(), m.n_images
        ),
    }
}

/// The colour, resolution and pretraining controls, added to `cmp`.
fn run_controls(
    cfg: &AnalyzeConfig,
    model_sha: &str,
    e: &mut Embedded,
    (src, tgt): (&EmbeddingSet, &EmbeddingSet),
    cmp: &mut crate::compare::CompareReport,
    phases: &mut Phases,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let sets = match &e.images[0] {
        Some(set) => {
            let model = match e.model.take() {
                Some(m) => m,
                None => cfg.extract.load_model()?,
            };
            extract_controls(cfg, model_sha, &model, set, (src, tgt), &mut cmp.notes)?
        }
        None => crate::controls::beside(&e.dirs[0], src, tgt, true, &mut cmp.notes)?,
    };
    crate::controls::measure(src, tgt, &sets, cmp)?;
    phase(phases, "controls", t0);
    let t0 = std::time::Instant::now();
    match (&e.images[1], tgt.labels.is_some()) {
        (Some(set), true) => {
            if let Some((perm, how)) = extract_permuted(cfg, model_sha, set, tgt, &mut cmp.notes)? {
                crate::controls::measure_pretraining(tgt, &perm, &how, cmp)?;
            } else {
                cmp.notes.push("pretraining control not measured: the model keeps its weights outside the .onnx file (external data), which domsim does not rewrite".into());
            }
        }
        (None, true) => cmp.notes.push("pretraining control not measured: the target was given as an embedding folder, and the control embeds the target's images again with permuted weights; pass the image folder".into()),
        (_, false) => cmp.notes.push("pretraining control not measured: it compares target-task probes, which need target labels (one sub-folder per class)".into()),
    }
    phase(phases, "pretraining_control", t0);
    Ok(())
}

/// Writes every file of the folder, then `summary.json` again with the wall time per phase (writing the
/// files is part of what is timed; the metrics' own split is compare.json's `timings_s`).
fn write_files(
    mut rr: RunReport,
    cfg: &AnalyzeConfig,
    mut phases: Phases,
    t_start: std::time::Instant,
) -> Result<(RunReport, Vec<PathBuf>)> {
    let t0 = std::time::Instant::now();
    let exporters = export::analysis_files(&rr);
    let written = export::write(&rr, &cfg.out, &exporters)?;
    phase(&mut phases, "files", t0);
    let per_file: std::collections::BTreeMap<String, f64> = written
        .iter()
        .map(|(p, s)| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (name.unwrap_or_default(), *s)
        })
        .collect();
    let files: Vec<PathBuf> = written.into_iter().map(|(p, _)| p).collect();
    phase(&mut phases, "total", t_start);
    let mut timings: std::collections::BTreeMap<String, Timing> = phases
        .into_iter()
        .map(|(k, v)| (k, Timing::Seconds(v)))
        .collect();
    timings.insert(
        "metrics".into(),
        Timing::Split(rr.compare.timings_s.clone()),
    );
    timings.insert("per_file".into(), Timing::Split(per_file));
    rr.run.get_or_insert_with(RunInfo::default).timings_s = timings;
    export::write(&rr, &cfg.out, &[Box::new(export::SummaryJson)])?;
    Ok((rr, files))
}

/// `domsim report`: re-renders charts, verdict and summary from an existing compare output.
pub fn rerender(dir: &Path) -> Result<RunReport> {
    let cmp = compare::read_report(dir)?;
    let _lock = output::lock_domsim_dir(dir)?;
    let pca = report::read_pca(&dir.join("embedding_pca.csv"))?;
    let examples = report::read_examples(&dir.join("examples.json"))?;
    let verdict = report::verdict_for(&cmp);
    let prev: serde_json::Value = std::fs::read(dir.join("summary.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let rr = RunReport {
        compare: cmp,
        verdict,
        pca,
        examples,
        // the run facts `analyze` recorded are kept; a compare folder's (`null`) stays null
        run: match prev.get("run") {
            Some(serde_json::Value::Null) => None,
            Some(v) => serde_json::from_value(v.clone()).ok(),
            None => Some(RunInfo {
                report_dir: Some(dir.display().to_string()),
                ..RunInfo::default()
            }),
        },
    };
    export::write(&rr, dir, &export::report_files(&rr))?;
    Ok(rr)
}
