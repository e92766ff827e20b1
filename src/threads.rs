//! Threads as a value. Every parallel step runs on a rayon pool built from the thread count its caller
//! passes ([`run`]); nothing reads an environment variable or sets a global pool. Matrix products either run
//! single-threaded inside a parallel loop (ndarray's, without matrixmultiply's own threads) or take faer's
//! `Par` from the pool they run in, so `--threads` reaches every kernel.

use crate::error::{Error, Result};

/// One thread per core (the default of `--threads`).
pub fn per_core() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A pool of `threads` workers (0: one per core).
pub fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Analysis(format!("cannot start {threads} worker threads: {e}")))
}

/// Runs `f` on a pool of `threads` workers (0: one per core). Already on a pool of that size, `f` runs
/// where it is (no second pool is built for a nested call).
pub fn run<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> Result<T> {
    let wanted = if threads == 0 { per_core() } else { threads };
    if rayon::current_thread_index().is_some() && rayon::current_num_threads() == wanted {
        return Ok(f());
    }
    Ok(pool(wanted)?.install(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_the_requested_number_of_threads() {
        for t in [1, 2, 3] {
            let seen = run(t, || {
                use rayon::prelude::*;
                let inner = run(t, rayon::current_num_threads).unwrap();
                let ids: std::collections::BTreeSet<usize> = (0..64)
                    .into_par_iter()
                    .map(|_| {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        rayon::current_thread_index().unwrap()
                    })
                    .collect();
                (rayon::current_num_threads(), inner, ids.len())
            })
            .unwrap();
            assert_eq!(seen.0, t);
            assert_eq!(seen.1, t, "a nested call keeps the pool");
            assert!(seen.2 <= t);
        }
    }
}
