//! The extraction pipeline: image folder → preprocessed batches → ONNX Runtime → pooled embeddings on disk.
//!
//! Decoding and preprocessing run on a rayon pool in a producer thread, one chunk ahead of inference
//! (a bounded channel of two chunks), so they overlap with ONNX Runtime and memory stays bounded: pooled
//! rows are streamed to the `.npy` files as each batch finishes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::dataset::ImageSet;
use crate::embeddings::{self, Manifest, ModelInfo, PreprocessInfo};
use crate::error::{input_err, Error, Result};
use crate::model::pool::{self, Pool, TensorLayout};
use crate::model::{ElemType, Embedder, InputBatch, Layout, OnnxModel, Selection};
use crate::npy::{Dtype, NpyWriter};
use crate::output::{self, csv_bytes, write_atomic};
use crate::preprocess::{self, ImageInfo, Normalization, Pixels, Preprocess, Preset};

/// How images become embeddings (validated; no CLI types, no folders): what `extract` and `analyze` share.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// The ONNX model.
    pub model: PathBuf,
    /// Which layers.
    pub selection: Selection,
    /// Normalisation; `None` = the model's own (bundled model: `pm1`), else `imagenet`.
    pub norm: Option<Normalization>,
    /// Pooling mode.
    pub pool: Pool,
    /// How token tensors are pooled; `None` = what the model's classifier reads ([`crate::model::Embedder::classifier_tokens`]).
    pub tokens: Option<pool::Tokens>,
    /// Images per inference call (models with a fixed batch use theirs).
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads, and decoding threads.
    pub threads: usize,
    /// Spatial size for models with a dynamic one.
    pub size: Option<usize>,
    /// Layout override for models whose input shape is ambiguous.
    pub layout: Option<Layout>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Explicit ONNX Runtime library.
    pub ort_lib: Option<PathBuf>,
    /// Decoder memory limit per image, bytes.
    pub max_alloc: u64,
    /// How the matrices are stored.
    pub dtype: Dtype,
    /// Also write each layer's mergeable moments (`stats/`; on with `--shard`).
    pub stats: bool,
    /// A control's change to every image before the usual resize (`--grey`, `--downsample`; none by default).
    pub transform: crate::preprocess::Transform,
}

impl ExtractOptions {
    /// Defaults for the given model.
    pub fn new(model: PathBuf) -> Self {
        ExtractOptions {
            model,
            selection: Selection::Default,
            norm: None,
            pool: Pool::Avg,
            tokens: None,
            batch_size: 4,
            threads: default_threads(),
            size: None,
            layout: None,
            progress: false,
            ort_lib: None,
            max_alloc: 512 << 20,
            dtype: Dtype::Float32,
            stats: false,
            transform: Default::default(),
        }
    }
}

/// The ranges [`ExtractOptions::validate`] accepts (the command line's flags say the same).
pub const BATCH_RANGE: std::ops::RangeInclusive<usize> = 1..=256;
/// Worker threads accepted.
pub const THREADS_RANGE: std::ops::RangeInclusive<usize> = 1..=256;
/// Input side in pixels accepted by `--size`.
pub const SIZE_RANGE: std::ops::RangeInclusive<usize> = 16..=2048;
/// Most input bytes per inference call.
pub const MAX_BATCH_BYTES: u64 = 2 << 30;

impl ExtractOptions {
    /// Checks every setting against its range (`Error::Input` naming the flag and the range): the library
    /// checks for any caller, and the command line calls it before any work starts.
    pub fn validate(&self) -> Result<()> {
        let range = |flag: &str, v: usize, r: &std::ops::RangeInclusive<usize>| -> Result<()> {
            if r.contains(&v) {
                Ok(())
            } else {
                input_err(format!(
                    "{flag} {v} is out of range: use {} to {}",
                    r.start(),
                    r.end()
                ))
            }
        };
        range("--batch", self.batch_size, &BATCH_RANGE)?;
        range("--threads", self.threads, &THREADS_RANGE)?;
        if let Some(s) = self.size {
            range("--size", s, &SIZE_RANGE)?;
        }
        if let Some(n) = &self.norm {
            n.validate()?;
        }
        let side = self.size.unwrap_or(224);
        let bytes = self.batch_size as u64 * 3 * (side * side) as u64 * 4;
        if bytes > MAX_BATCH_BYTES {
            return input_err(format!(
                "--batch {} at {side} px needs {:.1} GiB of input per inference call (limit 2 GiB); lower --batch or --size",
                self.batch_size,
                bytes as f64 / (1u64 << 30) as f64
            ));
        }
        Ok(())
    }

    /// Loads the model with these options' threads, runtime library, size and layout (after
    /// [`ExtractOptions::validate`]).
    pub fn load_model(&self) -> Result<OnnxModel> {
        self.validate()?;
        OnnxModel::load(
            &self.model,
            self.threads,
            self.ort_lib.as_deref(),
            self.size,
            self.layout,
        )
    }
}

/// One extraction: how ([`ExtractOptions`]), from which image folder, into which embedding folder.
#[derive(Debug, Clone)]
pub struct ExtractConfig {
    /// How.
    pub options: ExtractOptions,
    /// The image folder.
    pub images: PathBuf,
    /// The embedding folder to write.
    pub out: PathBuf,
    /// Overwrite a non-empty folder not made by domsim.
    pub force: bool,
    /// The cache key (`analyze`: [`fingerprint_key`]); the manifest then records the fingerprint of the
    /// bytes this run decoded ([`fingerprint_of`]).
    pub fingerprint: Option<String>,
    /// Embed only this shard of the folder (and where its index came from).
    pub shard: Option<(crate::shard::ShardSpec, String)>,
}

impl ExtractConfig {
    /// `options` applied to `images`, written to `out`.
    pub fn new(options: ExtractOptions, images: PathBuf, out: PathBuf) -> Self {
        ExtractConfig {
            options,
            images,
            out,
            force: false,
            fingerprint: None,
            shard: None,
        }
    }
}

/// The part of a cache fingerprint that says how images become embeddings: domsim's version, the model's
/// SHA-256 (or what stands for it) and every extraction setting.
pub fn fingerprint_key(model_sha: &str, cfg: &ExtractOptions) -> String {
    format!(
        "domsim {}|{model_sha}|{:?}|{:?}|{:?}{}|{}|{:?}|{:?}|{:?}|{:?}|",
        env!("CARGO_PKG_VERSION"),
        cfg.selection,
        cfg.norm,
        cfg.pool,
        cfg.tokens.map_or(String::new(), |t| format!("/{t:?}")),
        cfg.batch_size,
        cfg.size,
        cfg.layout,
        cfg.dtype,
        cfg.transform
    )
}

/// The fingerprint of `files` (relative paths) with their content `digests` ([`preprocess::digest`]) under
/// `key` ([`fingerprint_key`]): SHA-256, hex.
pub fn fingerprint_of(key: &str, files: &[String], digests: &[Vec<u8>]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(key);
    for (f, d) in files.iter().zip(digests) {
        h.update(format!("{f}\0"));
        h.update(d);
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The number of cores.
pub fn default_threads() -> usize {
    crate::threads::per_core()
}

/// What an extraction produced.
#[derive(Debug, Clone)]
pub struct ExtractSummary {
    /// The manifest written.
    pub manifest: Manifest,
    /// Skipped files: (path relative to the image folder, reason).
    pub skipped: Vec<(String, String)>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Images embedded per second.
    pub images_per_second: f64,
}

/// Runs `extract` end to end with the ONNX Runtime backend.
pub fn extract(cfg: &ExtractConfig) -> Result<ExtractSummary> {
    output::check_out_is_not_an_input(&cfg.out, &[("--images", &cfg.images)])?;
    let set = ImageSet::scan(&cfg.images)?;
    let model = cfg.options.load_model()?;
    match &cfg.shard {
        None => extract_with(&model, &set, cfg),
        Some((spec, from)) => {
            let (part, _) = crate::shard::select(&set, *spec, from);
            if part.is_empty() {
                return input_err(format!(
                    "shard {}/{} of '{}' holds no file ({} files in all): use fewer shards",
                    spec.index,
                    spec.count,
                    cfg.images.display(),
                    set.len()
                ));
            }
            extract_with(&model, &part, cfg)
        }
    }
}

/// `extract` with a model already loaded and a folder already scanned.
pub fn extract_with(
    model: &OnnxModel,
    set: &ImageSet,
    cfg: &ExtractConfig,
) -> Result<ExtractSummary> {
    let o = &cfg.options;
    let layers = model.select(&o.selection)?;
    let norm = resolve_norm(o.norm.clone(), model);
    let mut emb = model.embedder(layers, Some(o.pool), o.ort_lib.as_deref())?;
    if emb.contract().elem == crate::model::ElemType::U8 && o.norm.is_some() {
        return Err(Error::InputContract {
            model: o.model.clone(),
            message: format!(
                "model '{}' takes raw uint8 pixels (0-255); a normalisation (--norm, --mean/--std) cannot apply to it. Leave the option out",
                o.model.display()
            ),
        });
    }
    let info = ModelInfo {
        file: o
            .model
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: model.sha256.clone(),
        bundled_default: model.is_default(),
    };
    let _lock = output::prepare_dir(&cfg.out, cfg.force)?;
    run(&mut emb, set, norm, info, cfg)
}

/// Before a run into `out`: refuses at once when a file this run writes is in the way and is not domsim's
/// (its journal does not list it: [`output::check_writable`]), then removes what marks the folder complete
/// (`manifest.json`) and the layer files that the previous run's manifest lists, where the journal lists
/// them too; nothing else.
fn clear_previous_run(out: &Path, layers: &[crate::model::Layer]) -> Result<()> {
    let mut ours: Vec<String> = ["manifest.json", "index.csv", "skipped.csv"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    ours.extend(layers.iter().enumerate().map(|(i, l)| {
        format!(
            "layers/{}",
            embeddings::layer_file_name(i, layers.len(), &l.name)
        )
    }));
    for rel in &ours {
        output::check_writable(&out.join(rel))?;
    }
    let mpath = out.join("manifest.json");
    let listed: Vec<String> = std::fs::read_to_string(&mpath)
        .ok()
        .and_then(|t| serde_json::from_str::<Manifest>(&t).ok())
        .map(|m| m.layers.into_iter().map(|l| l.file).collect())
        .unwrap_or_default();
    output::remove_if_exists(&mpath)?;
    let journal = output::journal(out).unwrap_or_default();
    for rel in listed {
        // only files inside layers/, as domsim names them, that domsim wrote
        if rel.starts_with("layers/")
            && !rel[7..].contains('/')
            && !rel.contains("..")
            && journal.contains(&rel)
        {
            output::remove_if_exists(&out.join(rel))?;
        }
    }
    Ok(())
}

/// The normalisation used when the user gives none: the bundled model's own (`pm1`), else ImageNet mean/std.
pub fn resolve_norm(user: Option<Normalization>, model: &OnnxModel) -> Normalization {
    user.unwrap_or_else(|| {
        Normalization::preset(if model.is_default() {
            Preset::Pm1
        } else {
            Preset::Imagenet
        })
    })
}

type Decoded = Vec<(
    usize,
    Vec<u8>,
    std::result::Result<(Pixels, ImageInfo), String>,
)>;

struct LayerOut {
    writer: NpyWriter,
    layout: TensorLayout,
    run_shape: Vec<usize>,
    dim: usize,
    /// Mergeable moments of the rows (`cfg.stats`), accumulated batch by batch.
    moments: Option<crate::metrics::moments::Moments>,
}

/// Runs the pipeline with any [`Embedder`] (the ONNX Runtime one, or a fake in tests) into `cfg.out`,
/// which must already be prepared. The stages, in order: [`prepare_layers_folder`], [`stream`] (decode on
/// a rayon pool one chunk ahead of inference, infer, pool, append rows), then the files that describe the
/// run ([`write_skipped`], [`finish_layers`], [`write_index`]) and, last, [`manifest`]'s `manifest.json`,
/// which marks the folder complete.
pub fn run<E: Embedder>(
    emb: &mut E,
    set: &ImageSet,
    norm: Normalization,
    model: ModelInfo,
    cfg: &ExtractConfig,
) -> Result<ExtractSummary> {
    let start = Instant::now();
    let layers = emb.layers().to_vec();
    prepare_layers_folder(&cfg.out, &layers)?;
    let contract = emb.contract().clone();
    let tokens = cfg
        .options
        .tokens
        .unwrap_or_else(|| emb.classifier_tokens());
    let streamed = stream(emb, set, &norm, &layers, tokens, cfg);
    // skipped.csv is written even when the run failed part-way: it says what was read so far
    let mut skipped = set.excluded.clone();
    skipped.extend(streamed.skipped.iter().cloned());
    write_skipped(&cfg.out, &skipped)?;
    streamed.result?;
    if streamed.rows.is_empty() {
        return input_err(format!(
            "no usable image in '{}': all {} files were skipped (reasons in '{}')",
            set.root.display(),
            set.len(),
            cfg.out.join("skipped.csv").display()
        ));
    }
    let entries = finish_layers(&cfg.out, &layers, streamed.outs)?;
    write_index(&cfg.out, set, &streamed.rows)?;
    let m = manifest(
        set,
        &streamed.rows,
        &streamed.infos,
        skipped.len(),
        Described {
            model,
            contract: &contract,
            norm,
            batch_size: streamed.batch_size,
            layers: entries,
            tokens,
        },
        cfg,
    );
    let mut m = m;
    if let Some(key) = &cfg.fingerprint {
        // the cache: the fingerprint of the bytes decoded, and the checks that let a later run verify it
        m.fingerprint = Some(fingerprint_of(key, &set.files, &streamed.digests));
        m.seal(&cfg.out)?;
    }
    let json = serde_json::to_vec_pretty(&m).expect("manifest serialises");
    write_atomic(&cfg.out.join("manifest.json"), &json)?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(ExtractSummary {
        images_per_second: m.n_images as f64 / seconds.max(1e-9),
        manifest: m,
        skipped,
        seconds,
    })
}

/// Stage 1: clears what a previous run listed ([`clear_previous_run`]) and creates `layers/`.
fn prepare_layers_folder(out: &Path, layers: &[crate::model::Layer]) -> Result<()> {
    clear_previous_run(out, layers)?;
    let layer_dir = out.join("layers");
    std::fs::create_dir_all(&layer_dir)
        .map_err(|e| Error::io("cannot create folder", &layer_dir, e))
}

/// What [`stream`] produced: the rows embedded (image indices, in row order), their image facts, the files
/// it skipped, each layer's open writer, the batch it ran, and whether it finished.
struct Streamed {
    /// Per file of the set, the digest of the bytes decoded ([`preprocess::digest`]).
    digests: Vec<Vec<u8>>,
    rows: Vec<usize>,
    infos: Vec<ImageInfo>,
    skipped: Vec<(String, String)>,
    outs: Vec<LayerOut>,
    batch_size: usize,
    result: Result<()>,
}

/// A progress bar on a terminal when asked for, else a hidden one.
fn progress_bar(on: bool, set: &ImageSet) -> ProgressBar {
    if !(on && std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(set.len() as u64);
    b.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images  {rate}  ETA {eta}")
            .expect("valid template")
            // indicatif's {per_sec} prints "42.7766/s"
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1} images/s", s.per_sec());
                },
            )
            .progress_chars("=> "),
    );
    b.set_message(format!("extract {}", set.root.display()));
    b
}

/// Stage 2: decodes and preprocesses on a rayon pool in a producer thread, one chunk ahead of inference (a
/// bounded channel of two chunks), runs the model batch by batch, pools, and appends the rows to each
/// layer's file. Memory stays bounded whatever the number of images.
fn stream<E: Embedder>(
    emb: &mut E,
    set: &ImageSet,
    norm: &Normalization,
    layers: &[crate::model::Layer],
    tokens: pool::Tokens,
    cfg: &ExtractConfig,
) -> Streamed {
    let contract = emb.contract().clone();
    let opts = &cfg.options;
    let run_batch = contract.fixed_batch.unwrap_or(opts.batch_size.max(1));
    let mut st = Streamed {
        digests: Vec::new(),
        rows: Vec::new(),
        infos: Vec::new(),
        skipped: Vec::new(),
        outs: Vec::new(),
        batch_size: run_batch,
        result: Ok(()),
    };
    let decode_pool = match crate::threads::pool(opts.threads.max(1)) {
        Ok(p) => p,
        Err(e) => {
            st.result = Err(e);
            return st;
        }
    };
    let pre = Preprocess {
        transform: opts.transform,
        ..Preprocess::new(contract.clone(), norm.clone(), opts.max_alloc)
    };
    let chunk = run_batch.max(16);
    let bar = progress_bar(opts.progress, set);
    let mut pending: Vec<(usize, Pixels)> = Vec::new();
    let (tx, rx) = crossbeam_channel::bounded::<Decoded>(2);
    let order: Vec<usize> = (0..set.len()).collect();
    let Streamed {
        rows,
        infos,
        skipped,
        outs,
        digests,
        ..
    } = &mut st;
    *digests = vec![Vec::new(); set.len()];
    let result: Result<()> = std::thread::scope(|s| {
        s.spawn(|| {
            for ids in order.chunks(chunk) {
                let decoded: Decoded = decode_pool.install(|| {
                    ids.par_iter()
                        .map(|&i| {
                            let (d, r) = preprocess::load_with_digest(&set.path(i), &pre);
                            (i, d, r)
                        })
                        .collect()
                });
                if tx.send(decoded).is_err() {
                    break;
                }
            }
            drop(tx);
        });
        let mut step = |pending: &mut Vec<(usize, Pixels)>, flush: bool| -> Result<()> {
            while pending.len() >= run_batch || (flush && !pending.is_empty()) {
                let take = pending.len().min(run_batch);
                let items: Vec<(usize, Pixels)> = pending.drain(..take).collect();
                infer(emb, &items, run_batch, layers, tokens, outs, cfg)?;
                rows.extend(items.iter().map(|(i, _)| *i));
            }
            Ok(())
        };
        // The consumer owns the receiver: when inference or writing fails part-way, dropping it makes the
        // producer's next send fail, so the producer stops instead of blocking on a full channel forever.
        let rx = rx;
        let consumed = (|| {
            for decoded in rx.iter() {
                let n = decoded.len() as u64;
                for (i, d, r) in decoded {
                    digests[i] = d;
                    match r {
                        Ok((px, info)) => {
                            pending.push((i, px));
                            infos.push(info);
                        }
                        Err(reason) => skipped.push((set.files[i].clone(), reason)),
                    }
                }
                step(&mut pending, false)?;
                bar.inc(n);
            }
            step(&mut pending, true)
        })();
        drop(rx);
        consumed
    });
    bar.finish_and_clear();
    st.result = result;
    st
}

/// `skipped.csv`: every file not embedded, with the reason.
fn write_skipped(out: &Path, skipped: &[(String, String)]) -> Result<()> {
    let bytes = csv_bytes(
        &["path", "reason"],
        skipped.iter().map(|(p, r)| vec![p.as_str(), r.as_str()]),
    );
    write_atomic(&out.join("skipped.csv"), &bytes)
}

/// Stage 3: closes each layer's file (and writes its moments with `--stats`); returns the manifest entries.
fn finish_layers(
    out: &Path,
    layers: &[crate::model::Layer],
    outs: Vec<LayerOut>,
) -> Result<Vec<crate::embeddings::LayerEntry>> {
    let run_info: Vec<(Vec<usize>, TensorLayout, usize)> = outs
        .iter()
        .map(|o| (o.run_shape.clone(), o.layout, o.dim))
        .collect();
    let mut entries = embeddings::entries(layers, &run_info);
    for (o, e) in outs.into_iter().zip(entries.iter_mut()) {
        o.writer.finish()?;
        if let Some(m) = o.moments {
            e.stats = Some(crate::metrics::moments::save(out, &e.file, &m)?);
        }
    }
    Ok(entries)
}

/// `index.csv`: which image each row is, and its label.
fn write_index(out: &Path, set: &ImageSet, rows: &[usize]) -> Result<()> {
    let index = csv_bytes(
        &["row", "path", "label"],
        rows.iter().enumerate().map(|(r, &i)| {
            vec![
                r.to_string(),
                set.files[i].clone(),
                set.labels[i].clone().unwrap_or_default(),
            ]
        }),
    );
    write_atomic(&out.join("index.csv"), &index)
}

/// What the manifest describes besides the images: the model, its input, the preprocessing and the layers.
struct Described<'a> {
    model: ModelInfo,
    contract: &'a crate::model::InputContract,
    norm: Normalization,
    batch_size: usize,
    layers: Vec<crate::embeddings::LayerEntry>,
    tokens: pool::Tokens,
}

/// Stage 4: the manifest of the run.
fn manifest(
    set: &ImageSet,
    rows: &[usize],
    infos: &[ImageInfo],
    n_skipped: usize,
    d: Described,
    cfg: &ExtractConfig,
) -> Manifest {
    let opts = &cfg.options;
    let contract = d.contract;
    let mut labels: Vec<String> = rows.iter().filter_map(|&i| set.labels[i].clone()).collect();
    labels.sort();
    labels.dedup();
    let median = |mut v: Vec<u32>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let grey_note = match (contract.channels, contract.elem) {
        (1, _) => "converted to grey (luma) for a 1-channel model".to_string(),
        _ => "decoded to RGB; grey images are fed to the RGB model by channel replication; alpha is dropped".to_string(),
    };
    Manifest {
        domsim_version: env!("CARGO_PKG_VERSION").to_string(),
        model: d.model,
        input: contract.clone(),
        preprocessing: PreprocessInfo {
            resize: format!(
                "EXIF orientation applied; shorter side resized to cover {}x{} (bilinear, antialiased), centre crop",
                contract.width, contract.height
            ),
            normalization: d.norm,
            channels: grey_note,
            n_grey: infos.iter().filter(|i| i.grey).count(),
            n_alpha: infos.iter().filter(|i| i.alpha).count(),
            n_upscaled: infos.iter().filter(|i| i.upscaled).count(),
            median_native_size: [
                median(infos.iter().map(|i| i.width).collect()),
                median(infos.iter().map(|i| i.height).collect()),
            ],
            transform: opts.transform,
        },
        pooling: opts.pool,
        pooling_note: pooling_note(opts.pool),
        tokens: d
            .layers
            .iter()
            .any(|l| l.run_shape.len() == 3)
            .then_some(d.tokens),
        images: set.root.display().to_string(),
        n_images: rows.len(),
        n_skipped,
        labels,
        threads: opts.threads,
        batch_size: d.batch_size,
        layers: d.layers,
        fingerprint: None,
        checks: None,
        dtype: opts.dtype,
        shard: set.shard.clone(),
        merged_from: None,
    }
}

fn pooling_note(p: Pool) -> String {
    let what = match p {
        Pool::Avg => "global average",
        Pool::Max => "global maximum",
        Pool::AvgMax => "global average and maximum, concatenated",
    };
    format!("4-D maps: {what} over the spatial axes of each tensor's own layout; 3-D (N,T,C): the same over tokens; 2-D: as is")
}

/// Runs one batch, pools each layer (`cfg.pool`) and appends the rows to its file under `cfg.out`.
fn infer<E: Embedder>(
    emb: &mut E,
    items: &[(usize, Pixels)],
    run_batch: usize,
    layers: &[crate::model::Layer],
    tokens: pool::Tokens,
    outs: &mut Vec<LayerOut>,
    cfg: &ExtractConfig,
) -> Result<()> {
    let contract = &emb.contract().clone();
    let (mode, out_dir) = (cfg.options.pool, &cfg.out);
    let per = contract.channels * contract.height * contract.width;
    // A model with a fixed batch gets exactly that many images; padding rows are dropped after pooling.
    let n_run = if contract.fixed_batch.is_some() {
        run_batch
    } else {
        items.len()
    };
    let batch = match contract.elem {
        ElemType::F32 => {
            let mut v = Vec::with_capacity(n_run * per);
            for (_, p) in items {
                if let Pixels::F32(x) = p {
                    v.extend_from_slice(x);
                }
            }
            v.resize(n_run * per, 0.0);
            InputBatch::F32(v)
        }
        ElemType::U8 => {
            let mut v = Vec::with_capacity(n_run * per);
            for (_, p) in items {
                if let Pixels::U8(x) = p {
                    v.extend_from_slice(x);
                }
            }
            v.resize(n_run * per, 0);
            InputBatch::U8(v)
        }
    };
    let raw = emb.run(batch, n_run)?;
    for (k, r) in raw.into_iter().enumerate() {
        let name = &layers[k].name;
        let axis = layers[k].batch_axis;
        let r = pool::batch_first(r, axis);
        let expected = outs.get(k).map(|o| &o.run_shape[1..]);
        if r.shape.first() != Some(&n_run) || expected.is_some_and(|e| r.shape[1..] != *e) {
            return Err(Error::Runtime(format!(
                "layer '{name}' returned shape {:?} for {n_run} images (batch on axis {axis}){}: it is not one tensor per image. Leave it out (`domsim layers` lists the block outputs), or choose a layer whose shape starts with the batch",
                r.shape,
                expected.map_or(String::new(), |e| format!(", expected {e:?} per image"))
            )));
        }
        // The first batch fixes each layer's layout, dimension and file.
        let layout = outs.get(k).map_or_else(
            || {
                let l = pool::tensor_layout(&layers[k].op_type, &r.shape, contract);
                match (l, r.shape.len(), tokens) {
                    (TensorLayout::ChannelsLast, 3, pool::Tokens::Cls) => TensorLayout::FirstToken,
                    _ => l,
                }
            },
            |o| o.layout,
        );
        let (dim, rows) = pool::pool(&r, layout, mode, name)?;
        if outs.len() <= k {
            let file = out_dir.join(format!(
                "layers/{}",
                embeddings::layer_file_name(k, layers.len(), name)
            ));
            outs.push(LayerOut {
                writer: NpyWriter::create(&file, dim, cfg.options.dtype)?,
                layout,
                run_shape: r.shape.clone(),
                dim,
                moments: cfg
                    .options
                    .stats
                    .then(|| crate::metrics::moments::Moments::empty(dim)),
            });
        }
        let o = &mut outs[k];
        let batch_rows = &rows[..items.len() * dim];
        o.writer.write_rows(batch_rows)?;
        if let Some(m) = &mut o.moments {
            let x = ndarray::Array2::from_shape_fn((items.len(), dim), |(i, j)| {
                f64::from(batch_rows[i * dim + j])
            });
            *m = m.merge(&crate::metrics::moments::Moments::from_rows(&x.view()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library caller gets the command line's checks: each bad setting is refused with its flag and range.
    #[test]
    fn options_are_checked_in_the_library() {
        let ok = ExtractOptions::new(PathBuf::from("m.onnx"));
        assert!(ok.validate().is_ok());
        let cases: Vec<(ExtractOptions, &str)> = vec![
            (
                ExtractOptions {
                    batch_size: 0,
                    ..ok.clone()
                },
                "--batch 0 is out of range: use 1 to 256",
            ),
            (
                ExtractOptions {
                    batch_size: 257,
                    ..ok.clone()
                },
                "--batch 257",
            ),
            (
                ExtractOptions {
                    threads: 0,
                    ..ok.clone()
                },
                "--threads 0 is out of range",
            ),
            (
                ExtractOptions {
                    size: Some(15),
                    ..ok.clone()
                },
                "--size 15 is out of range: use 16 to 2048",
            ),
            (
                ExtractOptions {
                    size: Some(2048),
                    batch_size: 256,
                    ..ok.clone()
                },
                "limit 2 GiB",
            ),
            (
                ExtractOptions {
                    norm: Some(Normalization {
                        preset: "custom".into(),
                        mean: [0.5; 3],
                        std: [1e-9, 1.0, 1.0],
                    }),
                    ..ok.clone()
                },
                "--std values must be finite",
            ),
        ];
        for (o, want) in cases {
            let e = o.validate().expect_err(want).to_string();
            assert!(e.contains(want), "{e}");
        }
        // the edges are accepted
        for o in [
            ExtractOptions {
                batch_size: 256,
                threads: 256,
                ..ok.clone()
            },
            ExtractOptions {
                size: Some(16),
                batch_size: 1,
                threads: 1,
                ..ok.clone()
            },
            ExtractOptions {
                size: Some(2048),
                batch_size: 42,
                ..ok.clone()
            },
        ] {
            assert!(o.validate().is_ok(), "{o:?}");
        }
        for p in Preset::ALL {
            assert!(Normalization::preset(p).validate().is_ok());
        }
        assert!(Normalization::custom([0.0; 3], [f32::NAN, 1.0, 1.0]).is_err());
    }
}
