//! Command-line interface: clap types, and their conversion into validated library configs. No analysis
//! logic lives here.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

use domsim::analyze::{self, AnalyzeConfig};
use domsim::compare::{CompareConfig, CompareOptions};
use domsim::extract::{self, ExtractConfig, ExtractOptions};
use domsim::metrics::Params;
use domsim::model::pool::Pool;
use domsim::model::{runtime, Layout, OnnxModel, Selection};
use domsim::preprocess::{Normalization, Preset};
use domsim::report::summary::terminal_safe;

/// Will a pretrained model's layers transfer to my images? Layer-by-layer domain similarity for ONNX image
/// models.
#[derive(Debug, Parser)]
#[command(name = "domsim", version, about, long_about = None)]
pub struct Args {
    /// No progress bars or summaries on stderr/stdout (errors are still printed).
    #[arg(
        long,
        short,
        global = true,
        help_heading = "Global options (any command)"
    )]
    pub quiet: bool,
    /// Print where the time went (analyze: wall time per phase and per metric) on stderr.
    #[arg(
        long,
        short,
        global = true,
        help_heading = "Global options (any command)"
    )]
    pub verbose: bool,
    /// The runtime flags also accepted before the command (`domsim --threads 2 extract …`), for the
    /// commands that use them; each command's help lists its own.
    #[command(flatten)]
    pub before: Runtime,
    #[command(subcommand)]
    pub command: Command,
}

/// Threads, seed and runtime library written before the command: accepted, not listed (each command lists
/// the ones it uses).
#[derive(Debug, ClapArgs, Default)]
pub struct Runtime {
    #[arg(long = "threads", id = "before_threads", hide = true, value_parser = ranged(extract::THREADS_RANGE))]
    threads: Option<usize>,
    #[arg(long = "seed", id = "before_seed", hide = true)]
    seed: Option<u64>,
    #[arg(
        long = "ort-lib",
        id = "before_ort_lib",
        hide = true,
        value_name = "PATH"
    )]
    ort_lib: Option<PathBuf>,
}

/// `--threads`, for the commands that run in parallel.
#[derive(Debug, ClapArgs, Default)]
pub struct ThreadsArg {
    /// Threads for decoding, ONNX Runtime (intra-op) and metrics (1 to 256). Default: all cores.
    #[arg(long, help_heading = "Runtime", value_parser = ranged(extract::THREADS_RANGE))]
    pub threads: Option<usize>,
}

/// `--seed`, for the commands that draw at random.
#[derive(Debug, ClapArgs, Default)]
pub struct SeedArg {
    /// Seed for every random choice (permutations, folds, subsamples). Default: 0.
    #[arg(long, help_heading = "Runtime")]
    pub seed: Option<u64>,
}

/// `--ort-lib`, for the commands that load a model.
#[derive(Debug, ClapArgs, Default)]
pub struct OrtLibArg {
    /// ONNX Runtime library (libonnxruntime.so). Default: $ORT_DYLIB_PATH, then the checkout's .ort/, then
    /// beside the executable.
    #[arg(long, help_heading = "Runtime", value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List a model's candidate layers in depth order.
    #[command(
        after_help = "Examples:\n  domsim layers\n  domsim layers --model resnet18.onnx --all"
    )]
    Layers(LayersArgs),
    /// Embed an image folder: one pooled matrix per layer.
    #[command(
        after_help = "Examples:\n  domsim extract --images ../shared/datasets/chest_xray --out emb/xray\n  domsim extract --model m.onnx --norm imagenet \\\n      --layers '/layer*/Relu_output_0' --images imgs --out emb"
    )]
    Extract(ExtractArgs),
    /// Compare two embedding folders layer by layer: distances, probes, LogME, within-set CKA.
    #[command(
        after_help = "Examples:\n  domsim compare --source emb/animals --target emb/xray --out report/\n  domsim compare --source a --target b --out r \\\n      --metrics mmd2_rbf,frechet --permutations 500 --seed 7"
    )]
    Compare(CompareArgs),
    /// The whole question in one command: extract both folders, compare, decide, chart and report.
    #[command(
        after_help = "Examples:\n  # the bundled model and its bundled reference as the source\n  domsim analyze --target ../shared/datasets/chest_xray --out out/xray\n  # your own source images\n  domsim analyze --source ../shared/datasets/animals \\\n      --target ../shared/datasets/chest_xray --out out/animals_vs_xray\n  # another model, its reference embeddings, JSON on stdout\n  domsim analyze --model resnet50.onnx --norm imagenet \\\n      --source ref/ --target imgs/b --out report --json"
    )]
    Analyze(AnalyzeArgs),
    /// Re-render charts, verdict, HTML and summary from an existing compare/analyze folder (no recomputation).
    #[command(
        after_help = "Examples:\n  domsim report out/animals_vs_xray\n  domsim report out/animals_vs_xray --json     # summary.json on stdout"
    )]
    Report(ReportArgs),
    /// Merge the shard folders of one image folder (from `extract --shard I/N`) into one embedding folder.
    #[command(
        after_help = "Examples:\n  domsim merge --out emb/xray emb/xray.shards/*\n  domsim merge --out emb/xray emb/xray.shards     # a folder holding the shards"
    )]
    Merge(MergeArgs),
}

/// `domsim merge`.
#[derive(Debug, ClapArgs)]
pub struct MergeArgs {
    /// Shard folders, or one folder holding them.
    #[arg(required = true, value_name = "SHARD")]
    pub shards: Vec<PathBuf>,
    /// Merged embedding folder to write.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Overwrite a non-empty output folder that domsim did not make.
    #[arg(long)]
    pub force: bool,
}

/// `domsim analyze`.
#[derive(Debug, ClapArgs)]
pub struct AnalyzeArgs {
    /// Source: an image folder like the model's training data, or an embedding folder from `domsim extract`.
    /// Omitted with the bundled model: its bundled reference (398 ImageNet photos, data/reference/).
    #[arg(long, help_heading = "Inputs and output", value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Target image folder (your images; one sub-folder per class enables the task probe), or an embedding
    /// folder.
    #[arg(long, help_heading = "Inputs and output", value_name = "DIR")]
    pub target: PathBuf,
    /// Report folder to write (embeddings are cached under it).
    #[arg(long, help_heading = "Inputs and output", value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prep: PrepArgs,
    #[command(flatten)]
    pub metric: MetricArgs,
    /// Print summary.json to stdout instead of the table.
    #[arg(long, help_heading = "Inputs and output")]
    pub json: bool,
    /// Skip the colour and resolution controls (where the gap comes from; on by default, about a tenth of
    /// the run's time with the bundled reference).
    #[arg(long, help_heading = "Inputs and output")]
    pub no_controls: bool,
    /// Overwrite a non-empty output folder that domsim did not make.
    #[arg(long, help_heading = "Inputs and output")]
    pub force: bool,
    #[command(flatten)]
    pub threads: ThreadsArg,
    #[command(flatten)]
    pub seed: SeedArg,
    #[command(flatten)]
    pub ort: OrtLibArg,
}

/// `domsim report`.
#[derive(Debug, ClapArgs)]
pub struct ReportArgs {
    /// A folder written by `domsim analyze` or `domsim compare`.
    pub dir: PathBuf,
    /// Print summary.json to stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl Runtime {
    /// The flags given before a command that does not use them, by name.
    fn unused(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.threads.is_some() {
            v.push("--threads");
        }
        if self.seed.is_some() {
            v.push("--seed");
        }
        if self.ort_lib.is_some() {
            v.push("--ort-lib");
        }
        v
    }
}

/// Preprocessing and pooling options shared by `extract` and `analyze`.
#[derive(Debug, ClapArgs)]
#[command(next_help_heading = "Preprocessing")]
pub struct PrepArgs {
    /// Pooling of spatial/token axes.
    #[arg(long, value_enum, default_value = "avg")]
    pub pool: PoolArg,
    /// Token tensors of transformers ((N, T, D) or (T, N, D)): the class token or the mean of all tokens.
    /// Default: what the model's classifier reads (the class token when its head takes one token).
    #[arg(long, value_enum)]
    pub tokens: Option<TokensArg>,
    /// Normalisation preset: imagenet, pm1 (x/127.5-1), unit (x/255), raw (0-255). Default: the model's own.
    #[arg(long, value_enum, conflicts_with_all = ["mean", "std"])]
    pub norm: Option<NormArg>,
    /// Per-channel mean on the 0-1 scale, e.g. 0.485,0.456,0.406 (with --std; commas or spaces).
    #[arg(long, value_delimiter = ',', num_args = 1..=3, requires = "std")]
    pub mean: Vec<f32>,
    /// Per-channel std on the 0-1 scale, e.g. 0.229,0.224,0.225 (with --mean; commas or spaces).
    #[arg(long, value_delimiter = ',', num_args = 1..=3, requires = "mean")]
    pub std: Vec<f32>,
    /// Images per inference call (1 to 256; at most 2 GiB of input pixels per call).
    #[arg(long, default_value_t = ExtractOptions::new(PathBuf::new()).batch_size, value_parser = ranged(extract::BATCH_RANGE))]
    pub batch: usize,
}

/// Estimator settings shared by `compare` and `analyze`.
#[derive(Debug, ClapArgs)]
#[command(next_help_heading = "Estimators")]
pub struct MetricArgs {
    /// Metrics to compute, comma-separated (groups or outputs, e.g. mmd2_rbf,domain_probe). Default: all.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Permutations for the MMD² test (99 to 100000; the default lets Holm's adjustment over 19 layers reach 0.01).
    #[arg(long, default_value_t = Params::default().permutations)]
    pub permutations: usize,
    /// Cross-validation folds for probes and k-NN (2 to 20).
    #[arg(long, default_value_t = Params::default().folds, value_parser = ranged(Params::FOLDS_RANGE))]
    pub folds: usize,
    /// Repeats of the stratified k-fold cross-validation (1 to 20; the same folds at every layer).
    #[arg(long, default_value_t = Params::default().cv_repeats)]
    pub cv_repeats: usize,
    /// Equivalence margin (balanced accuracy) for "tied with the best layer" (0 to 0.2).
    #[arg(long, default_value_t = Params::default().tie_margin)]
    pub tie_margin: f64,
    /// Neighbours of the k-NN score (1 to 100).
    #[arg(long, default_value_t = Params::default().knn_k)]
    pub knn_k: usize,
    /// Inverse L2 regularisation of the logistic probes (scikit-learn's C).
    #[arg(long = "C", default_value_t = Params::default().c)]
    pub c: f64,
    /// Most rows per set for probes (seeded subsample beyond; 4 to 1000000).
    #[arg(long, default_value_t = Params::default().probe_max_n, value_parser = ranged(Params::PROBE_MAX_N_RANGE))]
    pub probe_max_n: usize,
    /// Most rows per set for MMD² (seeded subsample beyond; 4 to 50000: the cost grows as n²).
    #[arg(long, default_value_t = Params::default().mmd_max_n, value_parser = ranged(Params::MMD_MAX_N_RANGE))]
    pub mmd_max_n: usize,
    /// Most rows for RBF CKA, which builds n × n kernels (seeded subsample beyond; 4 to 10000).
    #[arg(long, default_value_t = Params::default().cka_rbf_max_n, value_parser = ranged(Params::CKA_RBF_MAX_N_RANGE))]
    pub cka_rbf_max_n: usize,
    /// Skip the within-set layer × layer CKA.
    #[arg(long)]
    pub no_similarity: bool,
}

impl MetricArgs {
    /// The compare options these arguments ask for, validated.
    fn options(&self, seed: u64, progress: bool, threads: usize) -> Result<CompareOptions> {
        Ok(CompareOptions {
            metrics: (!self.metrics.is_empty()).then(|| self.metrics.clone()),
            params: self.params(seed)?,
            similarity: !self.no_similarity,
            progress,
            threads,
        })
    }

    fn params(&self, seed: u64) -> Result<Params> {
        // the ranges are written once, in the library (Params::validate, which compare also applies);
        // checked here too so that analyze fails before extracting anything
        let p = Params {
            seed,
            permutations: self.permutations,
            folds: self.folds,
            cv_repeats: self.cv_repeats,
            tie_margin: self.tie_margin,
            knn_k: self.knn_k,
            c: self.c,
            probe_max_n: self.probe_max_n,
            mmd_max_n: self.mmd_max_n,
            cka_rbf_max_n: self.cka_rbf_max_n,
            ..Params::default()
        };
        p.validate()?;
        Ok(p)
    }
}

/// `domsim compare`.
#[derive(Debug, ClapArgs)]
pub struct CompareArgs {
    /// Source embedding folder (from `extract`, or a folder of .npy files).
    #[arg(long, help_heading = "Inputs and output", value_name = "DIR")]
    pub source: PathBuf,
    /// Target embedding folder.
    #[arg(long, help_heading = "Inputs and output", value_name = "DIR")]
    pub target: PathBuf,
    /// Report folder to write.
    #[arg(long, help_heading = "Inputs and output", value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub metric: MetricArgs,
    /// Overwrite a non-empty output folder that domsim did not make.
    #[arg(long, help_heading = "Inputs and output")]
    pub force: bool,
    #[command(flatten)]
    pub threads: ThreadsArg,
    #[command(flatten)]
    pub seed: SeedArg,
}

/// Which model and layers.
#[derive(Debug, ClapArgs)]
#[command(next_help_heading = "Model and layers")]
pub struct ModelArgs {
    /// ONNX image model. Default: the bundled EfficientNet-Lite0 (ImageNet).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Every float layer instead of the default selection.
    #[arg(long, conflicts_with = "layers")]
    pub all: bool,
    /// Layer names or glob patterns (`*`, `?`); repeatable.
    #[arg(long = "layers", value_name = "NAME", num_args = 1..)]
    pub layers: Vec<String>,
    /// Spatial size for models whose input size is dynamic (16 to 2048).
    #[arg(long, value_name = "PIXELS", value_parser = ranged(extract::SIZE_RANGE))]
    pub size: Option<usize>,
    /// Input layout, for models whose input shape does not say.
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,
}

/// Input layouts.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LayoutArg {
    /// (N, C, H, W)
    Nchw,
    /// (N, H, W, C)
    Nhwc,
}

/// `domsim layers`.
#[derive(Debug, ClapArgs)]
pub struct LayersArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ort: OrtLibArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `domsim extract`.
#[derive(Debug, ClapArgs)]
pub struct ExtractArgs {
    /// Image folder (recursive; first-level sub-folders are labels).
    #[arg(long, help_heading = "Inputs and output", value_name = "DIR")]
    pub images: PathBuf,
    /// Embedding folder to write.
    #[arg(long, help_heading = "Inputs and output", value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prep: PrepArgs,
    /// Store the matrices as float16 (half the size; each value moves by at most 2^-11 relative). The bundled
    /// source reference is stored so.
    #[arg(long, help_heading = "Inputs and output")]
    pub float16: bool,
    /// Embed only shard I of N (0-based): files with fnv1a64(relative path) mod N = I. `--shard env` takes the
    /// index from $SLURM_ARRAY_TASK_ID (count from $SLURM_ARRAY_TASK_COUNT) or $JOB_COMPLETION_INDEX (count
    /// from --shard-count). Without --shard the whole folder is embedded, inside a job array too.
    #[arg(
        long,
        help_heading = "Sharding (large folders)",
        value_name = "I/N|env"
    )]
    pub shard: Option<String>,
    /// Also write each layer's mergeable moments (count, mean, co-moments) under stats/ (always on with
    /// shards): what Fréchet distance and covariance alignment need, merged exactly across shards.
    #[arg(long, help_heading = "Sharding (large folders)")]
    pub stats: bool,
    /// Number of shards with `--shard env` (1 to 100000; Slurm's $SLURM_ARRAY_TASK_COUNT otherwise).
    #[arg(long, help_heading = "Sharding (large folders)", value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100000))]
    pub shard_count: Option<usize>,
    /// Control: convert every image to grey (luma) before embedding it, as the colour control of a source
    /// is made (recorded in the manifest).
    #[arg(long, help_heading = "Controls (a changed copy of the images)")]
    pub grey: bool,
    /// Control: first downsample every image so that its shorter side is PX pixels (8 to 4096), as the
    /// resolution control of a source is made; the usual resize then scales it back up.
    #[arg(long, help_heading = "Controls (a changed copy of the images)", value_name = "PX", value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(8..=4096))]
    pub downsample: Option<u32>,
    /// Overwrite a non-empty output folder that domsim did not make.
    #[arg(long, help_heading = "Inputs and output")]
    pub force: bool,
    #[command(flatten)]
    pub threads: ThreadsArg,
    #[command(flatten)]
    pub ort: OrtLibArg,
}

/// Token pooling modes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TokensArg {
    /// The first (class) token.
    Cls,
    /// The mean over all tokens, the class token included.
    Mean,
}

/// Pooling modes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PoolArg {
    /// Global average.
    Avg,
    /// Global maximum.
    Max,
    /// Both, concatenated.
    Avgmax,
}

/// Normalisation presets.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NormArg {
    /// ImageNet mean/std.
    Imagenet,
    /// x/127.5 - 1.
    Pm1,
    /// x/255.
    Unit,
    /// 0-255.
    Raw,
}

/// Arguments every command that runs the model shares.
struct RunArgs {
    threads: usize,
    ort_lib: Option<PathBuf>,
    progress: bool,
}

impl PrepArgs {
    /// The extraction options these arguments (with the model's and the run's) ask for, validated.
    fn options(&self, model: &ModelArgs, run: RunArgs) -> Result<ExtractOptions> {
        let norm = match (self.norm, self.mean.is_empty()) {
            (Some(n), _) => Some(Normalization::preset(match n {
                NormArg::Imagenet => Preset::Imagenet,
                NormArg::Pm1 => Preset::Pm1,
                NormArg::Unit => Preset::Unit,
                NormArg::Raw => Preset::Raw,
            })),
            (None, false) => {
                if self.mean.len() != 3 || self.std.len() != 3 {
                    bail!(domsim::Error::Input(format!(
                        "--mean and --std take 3 values each (one per channel), e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225; got {} and {}",
                        self.mean.len(),
                        self.std.len()
                    )));
                }
                Some(Normalization::custom(
                    [self.mean[0], self.mean[1], self.mean[2]],
                    [self.std[0], self.std[1], self.std[2]],
                )?)
            }
            (None, true) => None,
        };
        let opts = ExtractOptions {
            norm,
            batch_size: self.batch,
            pool: match self.pool {
                PoolArg::Avg => Pool::Avg,
                PoolArg::Max => Pool::Max,
                PoolArg::Avgmax => Pool::AvgMax,
            },
            tokens: self.tokens.map(|t| match t {
                TokensArg::Cls => domsim::model::pool::Tokens::Cls,
                TokensArg::Mean => domsim::model::pool::Tokens::Mean,
            }),
            selection: model.selection(),
            size: model.size,
            layout: model.layout(),
            threads: run.threads,
            ort_lib: run.ort_lib,
            progress: run.progress,
            ..ExtractOptions::new(model.path())
        };
        opts.validate()?;
        Ok(opts)
    }
}

impl ModelArgs {
    fn path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(runtime::default_model_path)
    }
    fn selection(&self) -> Selection {
        if self.all {
            Selection::All
        } else if !self.layers.is_empty() {
            Selection::Names(self.layers.clone())
        } else {
            Selection::Default
        }
    }
    fn layout(&self) -> Option<Layout> {
        self.layout.map(|l| match l {
            LayoutArg::Nchw => Layout::Nchw,
            LayoutArg::Nhwc => Layout::Nhwc,
        })
    }
}

/// The global options every command reads, resolved once.
struct Global {
    quiet: bool,
    verbose: bool,
    seed: u64,
    threads: usize,
    ort_lib: Option<PathBuf>,
}

/// A flag's parser for a range the library declares (one place holds each range).
fn ranged(r: std::ops::RangeInclusive<usize>) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(*r.start() as u64..=*r.end() as u64)
}

/// Runs a parsed command line: one function per command.
pub fn run(args: Args) -> Result<()> {
    let Args {
        quiet,
        verbose,
        before: b,
        command,
    } = args;
    // a command's own flag wins over the same flag written before the command
    let g = |threads: Option<usize>, seed: Option<u64>, ort_lib: Option<PathBuf>| Global {
        quiet,
        verbose,
        seed: seed.or(b.seed).unwrap_or(Params::default().seed),
        threads: threads
            .or(b.threads)
            .unwrap_or_else(extract::default_threads)
            .max(1),
        ort_lib: ort_lib.or_else(|| b.ort_lib.clone()),
    };
    let ignored = |cmd: &str| {
        if !quiet {
            for f in b.unused() {
                eprintln!("domsim: {f} has no effect on `domsim {cmd}` (ignored)");
            }
        }
    };
    match command {
        Command::Layers(a) => {
            let g = g(None, None, a.ort.ort_lib.clone());
            layers(a, &g)
        }
        Command::Extract(a) => {
            let g = g(a.threads.threads, None, a.ort.ort_lib.clone());
            extract(a, &g)
        }
        Command::Compare(a) => {
            let g = g(a.threads.threads, a.seed.seed, None);
            compare(a, &g)
        }
        Command::Analyze(a) => {
            let g = g(a.threads.threads, a.seed.seed, a.ort.ort_lib.clone());
            analyze(a, &g)
        }
        Command::Merge(a) => {
            ignored("merge");
            merge(a, &g(None, None, None))
        }
        Command::Report(a) => {
            ignored("report");
            report(a, &g(None, None, None))
        }
    }
}

/// `domsim layers`.
fn layers(a: LayersArgs, g: &Global) -> Result<()> {
    let model = OnnxModel::load(
        &a.model.path(),
        1,
        g.ort_lib.as_deref(),
        a.model.size,
        a.model.layout(),
    )?;
    let sel = a.model.selection();
    // `--all` lists every float tensor, layout-op outputs too (selectable by name), and marks what the
    // default selection takes. Depths are numbered as `--all` numbers them in every other command (layout-op
    // outputs are not part of it: `-`), and the default selection's own depth is in the note.
    let rows: Vec<(Option<usize>, domsim::model::Layer, String)> = if sel == Selection::All {
        let default: Vec<String> = model
            .select(&Selection::Default)?
            .into_iter()
            .map(|l| l.name)
            .collect();
        let mut depth = 0;
        model
            .all_layers()
            .iter()
            .map(|l| {
                let d = (!l.by_name_only).then(|| {
                    depth += 1;
                    depth - 1
                });
                let mark = match default.iter().position(|n| *n == l.name) {
                    Some(k) => format!("default selection, depth {k}"),
                    None if l.by_name_only => "by name only (a layout op's output)".into(),
                    None if l.refused.is_some() => {
                        format!("never: {}", l.refused.as_deref().unwrap_or_default())
                    }
                    None => String::new(),
                };
                (d, l.clone(), mark)
            })
            .collect()
    } else {
        let chosen: Vec<(domsim::model::Layer, String)> = if sel == Selection::Default {
            model
                .default_choices()
                .into_iter()
                .map(|(l, c)| (l, c.describe().to_string()))
                .collect()
        } else {
            model
                .select(&sel)?
                .into_iter()
                .map(|l| (l, String::new()))
                .collect()
        };
        chosen
            .into_iter()
            .enumerate()
            .map(|(i, (l, why))| (Some(i), l, why))
            .collect()
    };
    // the list is the command's result: printed with --quiet too (which silences progress and summaries)
    let mut out = std::io::stdout().lock();
    if a.json {
        let layers: Vec<&domsim::model::Layer> = rows.iter().map(|r| &r.1).collect();
        serde_json::to_writer_pretty(&mut out, &layers)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:>5}  {:<48} {:<20} {:<24} note",
            "depth", "name", "op", "shape"
        )?;
        for (d, l, m) in &rows {
            writeln!(
                out,
                "{:>5}  {:<48} {:<20} {:<24} {m}",
                d.map_or("-".to_string(), |d| d.to_string()),
                terminal_safe(&l.name),
                terminal_safe(&l.op_type),
                format!("{:?}", l.shape)
            )?;
        }
    }
    Ok(())
}

/// `domsim extract`.
fn extract(a: ExtractArgs, g: &Global) -> Result<()> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let shard = domsim::shard::resolve(a.shard.as_deref(), a.shard_count, env)?;
    if shard.is_none() && !g.quiet {
        if let Some(note) = domsim::shard::scheduler_note(env) {
            eprintln!("domsim: note: {note}");
        }
    }
    let run = RunArgs {
        threads: g.threads,
        ort_lib: g.ort_lib.clone(),
        progress: !g.quiet,
    };
    let options = ExtractOptions {
        dtype: if a.float16 {
            domsim::npy::Dtype::Float16
        } else {
            domsim::npy::Dtype::Float32
        },
        stats: a.stats || shard.is_some(),
        transform: domsim::preprocess::Transform {
            grey: a.grey,
            shorter_side: a.downsample,
        },
        ..a.prep.options(&a.model, run)?
    };
    let cfg = ExtractConfig {
        force: a.force,
        shard,
        ..ExtractConfig::new(options, a.images, a.out)
    };
    let s = extract::extract(&cfg)?;
    if !g.quiet {
        eprintln!(
            "domsim: embedded {} images ({} skipped) at {} layers in {:.1} s ({:.1} images/s) -> {}",
            s.manifest.n_images,
            s.skipped.len(),
            s.manifest.layers.len(),
            s.seconds,
            s.images_per_second,
            cfg.out.display()
        );
    }
    Ok(())
}

/// `domsim compare`.
fn compare(a: CompareArgs, g: &Global) -> Result<()> {
    let cfg = CompareConfig {
        options: a.metric.options(g.seed, !g.quiet, g.threads)?,
        source: a.source,
        target: a.target,
        out: a.out,
        force: a.force,
    };
    let r = domsim::report::export::compare(&cfg)?;
    if !g.quiet {
        for n in &r.notes {
            eprintln!("domsim: note: {}", terminal_safe(n));
        }
        eprintln!(
            "domsim: compared {} layers ({} source, {} target rows) -> {}",
            r.layers.len(),
            r.source.n,
            r.target.n,
            cfg.out.display()
        );
        // compare writes the numbers; the verdict, charts and page come from `report`
        eprintln!(
            "domsim: for the verdict, charts and report.html run: domsim report {}",
            cfg.out.display()
        );
    }
    Ok(())
}

/// `domsim analyze`.
fn analyze(a: AnalyzeArgs, g: &Global) -> Result<()> {
    let progress = !g.quiet && !a.json;
    let run = RunArgs {
        threads: g.threads,
        ort_lib: g.ort_lib.clone(),
        progress,
    };
    let cfg = AnalyzeConfig {
        source: a.source,
        target: a.target,
        out: a.out.clone(),
        force: a.force,
        extract: a.prep.options(&a.model, run)?,
        compare: a.metric.options(g.seed, progress, g.threads)?,
        scatter_max_n: 1000,
        controls: !a.no_controls,
    };
    let o = analyze::analyze(&cfg)?;
    if g.verbose {
        if let Some(run) = &o.report.run {
            use domsim::report::Timing;
            // flattened (phase, or phase.part) rows, aligned on the longest name
            let mut rows: Vec<(String, f64)> = Vec::new();
            for (k, v) in &run.timings_s {
                match v {
                    Timing::Split(parts) => {
                        rows.extend(parts.iter().map(|(m, x)| (format!("{k}.{m}"), *x)))
                    }
                    Timing::Seconds(x) => rows.push((k.clone(), *x)),
                }
            }
            let w = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
            eprintln!("domsim: wall time per phase (s):");
            for (n, x) in rows {
                eprintln!("  {n:<w$} {x:>8.2}");
            }
        }
    }
    if !g.quiet && !a.json {
        for n in &o.cache_notes {
            eprintln!("domsim: note: {n}");
        }
    }
    for (k, name) in ["source", "target"].iter().enumerate() {
        if o.reused[k] && !g.quiet && !a.json {
            eprintln!("domsim: reused cached {name} embeddings (fingerprint matched)");
        }
    }
    print_summary(&o.report, &a.out, a.json, g.quiet)
}

/// `domsim merge`.
fn merge(a: MergeArgs, g: &Global) -> Result<()> {
    let m = domsim::shard::merge(&a.shards, &a.out, a.force)?;
    if !g.quiet {
        eprintln!(
            "domsim: merged {} images at {} layers -> {}",
            m.n_images,
            m.layers.len(),
            a.out.display()
        );
    }
    Ok(())
}

/// `domsim report`.
fn report(a: ReportArgs, g: &Global) -> Result<()> {
    let r = analyze::rerender(&a.dir)?;
    print_summary(&r, &a.dir, a.json, g.quiet)
}

fn print_summary(
    r: &domsim::report::RunReport,
    dir: &std::path::Path,
    json: bool,
    quiet: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &domsim::report::export::summary_json(r))?;
        writeln!(out)?;
    } else if !quiet {
        write!(out, "{}", domsim::report::summary::text(r, dir))?;
    }
    Ok(())
}
