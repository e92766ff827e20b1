//! Seeded mutation testing (a fuzz target that runs in CI): thousands of damaged inputs through the three
//! parsers that read user files: image decoding and preprocessing, the `.npy` reader, and ONNX reading,
//! patching and loading; and `compare` on `.npy` folders whose layers disagree in rows, hold 0 features or
//! overflow-range values. Each must return a value or an error, never panic, never run away: every mutant
//! runs on its own thread under a watchdog, so that a hang fails the test (after 30 s) instead of blocking
//! CI. The counts are printed (`cargo test --release --test mutation -- --nocapture`) and stated in the
//! README.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use common::{datasets, fixture};
use domsim::model::{ElemType, InputContract, Layout};
use domsim::preprocess::{load, Preprocess};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One seeded mutation: flip bytes, overwrite a run, truncate, duplicate a slice, insert random bytes, or
/// set bytes to boundary values (0x00, 0xFF, 0x7F).
fn mutate(b: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut v = b.to_vec();
    if v.is_empty() {
        return v;
    }
    let n = v.len();
    match rng.gen_range(0..6) {
        0 => {
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..n);
                v[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        1 => {
            let i = rng.gen_range(0..n);
            let len = rng.gen_range(1..64).min(n - i);
            for x in &mut v[i..i + len] {
                *x = rng.gen();
            }
        }
        2 => v.truncate(rng.gen_range(0..n)),
        3 => {
            let i = rng.gen_range(0..n);
            let len = rng.gen_range(1..256).min(n - i);
            let piece = v[i..i + len].to_vec();
            let at = rng.gen_range(0..n);
            v.splice(at..at, piece);
        }
        4 => {
            let at = rng.gen_range(0..n);
            let ins: Vec<u8> = (0..rng.gen_range(1..32)).map(|_| rng.gen()).collect();
            v.splice(at..at, ins);
        }
        _ => {
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..n.min(512)); // headers live at the front
                v[i] = [0x00, 0xFF, 0x7F][rng.gen_range(0..3)];
            }
        }
    }
    v
}

struct Tally {
    tried: usize,
    ok: usize,
    err: usize,
    panics: Vec<String>,
    hangs: Vec<String>,
    slowest: Duration,
}

/// How long one mutant may run before it counts as a hang.
const WATCHDOG: Duration = Duration::from_secs(30);

impl Tally {
    fn new() -> Self {
        Tally {
            tried: 0,
            ok: 0,
            err: 0,
            panics: Vec::new(),
            hangs: Vec::new(),
            slowest: Duration::ZERO,
        }
    }

    /// Runs one mutant on its own thread; a mutant still running after [`WATCHDOG`] is recorded as a hang
    /// (its thread is left behind, and the test fails at [`Tally::check`]).
    fn run<T, E>(&mut self, what: &str, f: impl FnOnce() -> Result<T, E> + Send + 'static) {
        let t0 = Instant::now();
        self.tried += 1;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(f)).map(|r| r.is_ok());
            let _ = tx.send(r);
        });
        match rx.recv_timeout(WATCHDOG) {
            Ok(Ok(true)) => self.ok += 1,
            Ok(Ok(false)) => self.err += 1,
            Ok(Err(_)) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                self.panics.push(what.to_string())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => self.hangs.push(what.to_string()),
        }
        self.slowest = self.slowest.max(t0.elapsed());
    }

    fn check(&self, name: &str) {
        eprintln!(
            "{name}: {} mutants, {} accepted, {} refused with an error, {} panics, {} hangs, slowest {:.0} ms",
            self.tried,
            self.ok,
            self.err,
            self.panics.len(),
            self.hangs.len(),
            self.slowest.as_secs_f64() * 1e3
        );
        assert!(self.hangs.is_empty(), "{name} hung on: {:?}", self.hangs);
        assert!(
            self.panics.is_empty(),
            "{name} panicked on: {:?}",
            self.panics
        );
        assert!(
            self.slowest < Duration::from_secs(10),
            "{name}: a mutant took {:?}",
            self.slowest
        );
        assert!(self.err > 0, "{name}: the mutations must break something");
    }
}

#[test]
fn image_decoding_survives_mutated_files() {
    let tmp = tempfile::tempdir().unwrap();
    let seeds = [
        std::fs::read(datasets().join("animals/n01440764_tench.JPEG")).unwrap(),
        std::fs::read(
            datasets()
                .join("chest_xray/NORMAL")
                .read_dir()
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        )
        .unwrap(),
        std::fs::read(fixture("images16/a/img0.png")).unwrap(),
    ];
    let pre = Preprocess::new(
        InputContract {
            name: "input".into(),
            layout: Layout::Nchw,
            elem: ElemType::F32,
            channels: 3,
            height: 224,
            width: 224,
            fixed_batch: None,
            dynamic_size: false,
        },
        domsim::preprocess::Normalization::preset(domsim::preprocess::Preset::Pm1),
        512 << 20,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut t = Tally::new();
    for k in 0..600 {
        let m = mutate(&seeds[k % seeds.len()], &mut rng);
        let p = tmp.path().join(format!("m{k}"));
        std::fs::write(&p, &m).unwrap();
        let pre = pre.clone();
        t.run(&format!("image mutant {k}"), move || load(&p, &pre));
    }
    t.check("image decoding");
}

#[test]
fn the_npy_reader_survives_mutated_files() {
    let a = ndarray::Array2::from_shape_fn((20, 7), |(i, j)| (i * 7 + j) as f32 * 0.5);
    let seeds = [
        domsim::npy::to_bytes(&a),
        domsim::npy::to_bytes_as(&a, domsim::npy::Dtype::Float16),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut t = Tally::new();
    for k in 0..3000 {
        let m = mutate(&seeds[k % 2], &mut rng);
        t.run(&format!("npy mutant {k}"), move || {
            domsim::npy::parse_bytes(&m)
        });
    }
    t.check("npy reading");
}

#[test]
fn onnx_reading_patching_and_loading_survive_mutated_models() {
    let tmp = tempfile::tempdir().unwrap();
    let seeds = [
        std::fs::read(fixture("nchw_dyn/model.onnx")).unwrap(),
        std::fs::read(fixture("deep_classifier/model.onnx")).unwrap(),
        std::fs::read(fixture("quantized_head/model.onnx")).unwrap(),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut parse = Tally::new();
    let mut loads = Tally::new();
    for k in 0..1500 {
        let m = mutate(&seeds[k % seeds.len()], &mut rng);
        let mc = m.clone();
        parse.run(
            &format!("onnx mutant {k}"),
            move || -> Result<Vec<u8>, String> {
                let m = mc;
                let proto = domsim::model::onnx::decode(&m).map_err(|e| e.to_string())?;
                let g = proto.graph.ok_or("no graph")?;
                let names: Vec<String> = domsim::model::layers::candidates(&g)
                    .into_iter()
                    .map(|c| c.name)
                    .collect();
                Ok(domsim::model::onnx::with_extra_outputs(&m, &names))
            },
        );
        // the runtime itself on every 10th mutant (a session per model is the slow part)
        if k % 10 == 0 {
            let p = tmp.path().join(format!("m{k}.onnx"));
            std::fs::write(&p, &m).unwrap();
            loads.run(&format!("onnx load mutant {k}"), move || {
                domsim::model::OnnxModel::load(&p, 1, None, None, None)
            });
        }
    }
    parse.check("onnx reading and patching");
    loads.check("onnx loading through ONNX Runtime");
}

/// `compare` (the library, as the binary calls it) on `.npy` folders built to be inconsistent: layers with
/// different row counts, 0 features, overflow-range or non-finite values, tiny scales, too few rows.
#[test]
fn compare_survives_inconsistent_npy_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut t = Tally::new();
    for k in 0..60 {
        let dirs: Vec<std::path::PathBuf> = (0..2)
            .map(|side| tmp.path().join(format!("m{k}_{side}")))
            .collect();
        let d = [0usize, 1, 4, 4, 4][rng.gen_range(0..5)];
        for dir in &dirs {
            std::fs::create_dir_all(dir).unwrap();
            let base = [1usize, 3, 12, 12, 12, 20][rng.gen_range(0..6)];
            for layer in ["a", "b"] {
                // one folder in four has layers of different row counts
                let rows = if rng.gen_range(0..4) == 0 {
                    base + 5
                } else {
                    base
                };
                let kind = rng.gen_range(0..5);
                let m = ndarray::Array2::from_shape_fn((rows, d), |(i, j)| {
                    let v = ((i * 7 + j * 3) % 11) as f64 - 5.0;
                    match kind {
                        0 => v * 1e300,
                        1 if i == 0 => f64::NAN,
                        2 => v * 1e-20,
                        _ => v,
                    }
                });
                std::fs::write(
                    dir.join(format!("{layer}.npy")),
                    domsim::npy::to_bytes_f64(&m),
                )
                .unwrap();
            }
        }
        let cfg = domsim::compare::CompareConfig {
            options: domsim::compare::CompareOptions {
                metrics: None,
                params: domsim::metrics::Params {
                    permutations: 99,
                    ..Default::default()
                },
                similarity: k % 2 == 0,
                progress: false,
                threads: 0,
            },
            source: dirs[0].clone(),
            target: dirs[1].clone(),
            out: tmp.path().join(format!("out{k}")),
            force: false,
        };
        t.run(&format!("npy folder mutant {k}"), move || {
            domsim::report::export::compare(&cfg)
        });
    }
    t.check("compare on inconsistent npy folders");
}
