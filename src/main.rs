//! `secretd`: parse the command line, set up logging, run, map the outcome
//! to an exit code.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// mimalloc instead of glibc malloc: every request allocates and frees
/// value-sized buffers (2-4 KiB), above glibc's thread cache, where
/// `_int_malloc` and `malloc_consolidate` took a fifth of the server's CPU
/// (docs/performance.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging() {
    let spec = std::env::var("SECRETD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter: Targets = spec
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    let cli = secretd::cli::Cli::parse_with_config();
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("secretd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(secretd::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("secretd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
