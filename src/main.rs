//! The `domsim` binary: parse arguments, run, print errors with their context, exit with a documented code
//! (0 ok, 1 analysis failed, 2 bad usage or input).

use std::process::ExitCode;

use clap::Parser;

/// Command-line arguments (clap) → validated library configs; only the binary knows clap and anyhow.
mod cli;

fn main() -> ExitCode {
    // Ctrl-C: say so, and leave no temporary file behind (every file already in place is complete)
    let _ = ctrlc::set_handler(|| {
        let n = domsim::output::interrupt();
        eprintln!(
            "\ndomsim: interrupted; {n} temporary file(s) removed. The output folder holds only complete files: run the same command again to finish (cached embeddings are reused)."
        );
        std::process::exit(130);
    });
    let args = cli::Args::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // a closed pipe (`domsim layers --json | head`) is not an error, whoever wrapped it
            let broken = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                    || c.downcast_ref::<serde_json::Error>()
                        .and_then(|j| j.io_error_kind())
                        == Some(std::io::ErrorKind::BrokenPipe)
            });
            if broken {
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "domsim: error: {}",
                domsim::report::summary::terminal_safe(&format!("{e:#}"))
            );
            let code = e
                .downcast_ref::<domsim::Error>()
                .map_or(1, |d| d.exit_code());
            ExitCode::from(code)
        }
    }
}
