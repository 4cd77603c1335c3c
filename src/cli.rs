//! The command line: `secretd serve` and helpers. `run` is what `main` calls.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::bootstrap;
use crate::config::ServeConfig;
use crate::http::{self, AppState};
use crate::path::{PathArg, SecretPath};

#[derive(Debug, Parser)]
#[command(
    name = "secretd",
    version,
    about = "A self-hosted secret server for TrueFoundry's Generic Secret Store"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server on the embedded store.
    Serve(ServeConfig),
    /// Print the canonical secret path of an FQN (acme:prod:db-password) or a path.
    Path {
        /// An FQN such as acme:prod:db-password, or a path such as tfy-secret/acme/prod/db-password.
        name: String,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(mut cfg) => {
            cfg.read_env_only();
            serve(cfg).await
        }
        Command::Path { name } => {
            let looks_like_path = name.starts_with("tfy-secret") || name.starts_with("/tfy-secret");
            let path = if looks_like_path {
                match PathArg::parse(&name)? {
                    PathArg::Root => {
                        println!("{}", crate::path::ROOT);
                        return Ok(ExitCode::SUCCESS);
                    }
                    PathArg::Secret(p) => p,
                }
            } else {
                SecretPath::from_fqn(&name)?
            };
            println!("{path}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(cfg: ServeConfig) -> anyhow::Result<ExitCode> {
    let opened = bootstrap::open(&cfg)
        .await
        .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?;
    if let Some(p) = &opened.generated_master_key {
        tracing::warn!(
            file = %p.display(),
            "generated a new master key in the data dir; in production keep it elsewhere \
             (--master-key-file on another volume, or SECRETD_MASTER_KEY) and back it up: \
             without it the secrets cannot be read"
        );
    }
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    if let Some(key) = &opened.generated_key {
        print_banner(addr, key);
    }
    tracing::info!(addr = %addr, data_dir = %cfg.data_dir.display(), "listening");
    let state = AppState {
        service: opened.service,
        api_keys: opened.api_keys,
        max_body_bytes: cfg.max_body_bytes,
    };
    http::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested; draining in-flight requests");
}

/// Shown once, on the run that generated the API key: the key and the
/// vendor's Quick Test filled in for this server.
fn print_banner(addr: SocketAddr, key: &str) {
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let base = format!("http://{host}");
    let p = "tfy-secret/acme/prod/db-password";
    println!(
        "\n==================== secretd: first run ====================\n\
         No API key was configured, so one was generated. It is shown\n\
         only this once; only its hash is stored. Keep it now:\n\n    {key}\n\n\
         Quick test (TrueFoundry's Generic Secret Store contract):\n\n\
         curl -X PUT \"{base}/secrets\" \\\n  -H \"Content-Type: application/json\" \\\n  -H \"X-API-Key: {key}\" \\\n  -d '{{\"path\":\"{p}\",\"value\":\"my-secret-value\"}}'\n\n\
         curl \"{base}/secrets?path={p}\" \\\n  -H \"X-API-Key: {key}\"\n\n\
         curl -X DELETE \"{base}/secrets\" \\\n  -H \"Content-Type: application/json\" \\\n  -H \"X-API-Key: {key}\" \\\n  -d '{{\"path\":\"{p}\"}}'\n\n\
         In TrueFoundry: Base URL {base}, Header Auth X-API-Key = the key above.\n\
         =============================================================\n"
    );
}
