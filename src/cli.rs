//! The command line: `secretd serve` and helpers. `run` is what `main` calls.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::access_log::Entry as AccessEntry;
use crate::audit::{Chain, Verifier, to_hex};
use crate::authz::{Role, Scope};
use crate::bootstrap::{self, Location};
use crate::config::{DbArgs, ServeConfig, StoreArgs};
use std::sync::Arc;

use crate::crypto::{AuditKey, MasterKey};
use crate::http::ratelimit::FailLimiter;
use crate::http::{self, AppState};
use crate::path::PathArg;
use crate::service::{RequestCtx, Service};
use crate::store::Store;

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
    Serve(Box<ServeConfig>),
    /// Print the canonical secret path of an FQN (acme:prod:db-password) or a path.
    Path {
        /// An FQN such as acme:prod:db-password, or a path such as tfy-secret/acme/prod/db-password.
        name: String,
    },
    /// Copy every secret, version, tombstone and data key from one store to
    /// another (e.g. the embedded store into PostgreSQL). Values stay
    /// encrypted: the same master key opens the copy.
    Migrate(MigrateArgs),
    /// Check any Generic Secret Store server against TrueFoundry's contract:
    /// the validation call and the Quick Test flow on a scratch path it
    /// cleans up. Exits non-zero if any point fails.
    Check {
        /// The server's base URL, as in the integration form (http:// or https://).
        #[arg(long, env = "SECRETD_URL")]
        url: String,
        /// A Header Auth header, 'Name: value' (repeatable), e.g. 'X-API-Key: ...'.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Sent as X-API-Key (keeps the key out of the process list).
        #[arg(long, env = "SECRETD_API_KEY", hide_env_values = true)]
        api_key: Option<crate::config::SecretString>,
        /// PEM file of CA certificates to trust for https, besides the usual public roots.
        #[arg(long, env = "SECRETD_CA_FILE")]
        ca_file: Option<std::path::PathBuf>,
    },
    /// Put, get, delete, list secrets and their versions on a running server
    /// (--url and --api-key, or SECRETD_URL and SECRETD_API_KEY).
    #[command(subcommand, after_help = crate::client::secret::EXIT_CODES_HELP)]
    Secret(crate::client::secret::SecretCommand),
    /// Manage scoped tokens (works while the server runs).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Data keys: rotate, rekey under a new master key, status.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Inspect the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Write a consistent snapshot of the store to a file while the server
    /// keeps serving (values stay encrypted; restores into either backend).
    Backup(BackupArgs),
    /// Restore a backup file into an empty store (embedded or PostgreSQL),
    /// after checking its checksum and that the master key opens it.
    Restore(RestoreArgs),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file and print the settings `serve` would use with
    /// it (and with these flags and the SECRETD_* environment), each with
    /// where it came from; secrets are redacted.
    Check(Box<ServeConfig>),
}

impl Cli {
    /// Parses the command line. For `serve` and `config check`, a
    /// `--config` file's values become the defaults, so the precedence is
    /// flags > SECRETD_* environment > file > built-in defaults. Exits like
    /// clap on a usage error (code 2), also for a bad file.
    pub fn parse_with_config() -> Cli {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        match Self::try_parse_with_config(&args) {
            Ok(cli) => cli,
            Err(ParseError::Clap(e)) => e.exit(),
            Err(ParseError::Config(e)) => {
                eprintln!("secretd: config: {e}");
                std::process::exit(2);
            }
        }
    }

    fn try_parse_with_config(args: &[std::ffi::OsString]) -> Result<Cli, ParseError> {
        use clap::FromArgMatches as _;
        let (cmd, _) = command_with_config(args)?;
        let matches = cmd.try_get_matches_from(args)?;
        Ok(Cli::from_arg_matches(&matches)?)
    }
}

/// The command tree with the `--config` file (or `SECRETD_CONFIG`) of the
/// invoked command installed as its arguments' defaults. `serve` and
/// `config check` take every key and refuse unknown ones; the other
/// commands that open the store take the keys they share with `serve`
/// (data_dir, database_url, db_*, master_key_file) and ignore the rest, so
/// one file serves the server and its admin commands alike.
fn command_with_config(
    args: &[std::ffi::OsString],
) -> Result<(clap::Command, Option<crate::config::FileSettings>), ParseError> {
    use clap::CommandFactory as _;
    let cmd = Cli::command();
    let m = cmd.clone().try_get_matches_from(args)?;
    let mut path: Vec<String> = Vec::new();
    let mut leaf = &m;
    while let Some((name, sub)) = leaf.subcommand() {
        path.push(name.to_owned());
        leaf = sub;
    }
    let file = leaf
        .try_get_one::<std::path::PathBuf>("config")
        .ok()
        .flatten()
        .cloned();
    let Some(file) = file else {
        return Ok((cmd, None));
    };
    let settings = crate::config::read_file(&file)?;
    let strict = path == ["serve"] || path == ["config", "check"];
    let cmd = apply_at(cmd, &path, &settings, strict)?;
    Ok((cmd, Some(settings)))
}

fn apply_at(
    cmd: clap::Command,
    path: &[String],
    settings: &crate::config::FileSettings,
    strict: bool,
) -> Result<clap::Command, crate::config::ConfigError> {
    let Some((first, rest)) = path.split_first() else {
        return crate::config::apply_file(cmd, settings, strict);
    };
    let mut failed = None;
    let cmd = cmd.mut_subcommand(first.as_str(), |c| {
        match apply_at(c.clone(), rest, settings, strict) {
            Ok(c) => c,
            Err(e) => {
                failed = Some(e);
                c
            }
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(cmd),
    }
}

#[derive(Debug, thiserror::Error)]
enum ParseError {
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints the token alone on stdout (it is shown only once).
    Create {
        /// A unique name (1-64 of A-Z a-z 0-9 - _ . @).
        #[arg(long)]
        name: String,
        /// viewer (keys and metadata), editor (also values, new versions, deletes) or admin (also creates secrets and tokens).
        #[arg(long)]
        role: Role,
        /// A secret group the token covers (repeatable), e.g. tfy-secret/acme/prod; tfy-secret is everything.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime, e.g. 30d or 12h; none means it never expires.
        #[arg(long, value_parser = crate::config::parse_duration)]
        ttl: Option<std::time::Duration>,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Revoke a token by name or id, at once on every replica.
    Revoke {
        /// The token's name or id.
        token: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a data key generation: new writes use it at once on every
    /// replica; older versions stay readable under their generation.
    Rotate {
        /// Then re-encrypt every live version under the new generation (see `key rewrap`).
        #[arg(long)]
        rewrap: bool,
        #[command(flatten)]
        opts: RewrapArgs,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Re-encrypt every live version sealed under an older generation with the
    /// newest data key, in small batches beside running servers. Resumable: run
    /// it again to finish after an interruption. Old keys are kept.
    Rewrap {
        #[command(flatten)]
        opts: RewrapArgs,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Re-wrap every data key (and the audit key) under a new master key, in
    /// one transaction; afterwards the old master key no longer opens the store.
    Rekey {
        /// File holding the new master key (base64, 32 bytes).
        #[arg(long)]
        new_master_key_file: std::path::PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Generations, when each was created and how many live versions it seals.
    Status {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; exit 1 naming the first broken record.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Move the embedded store's access log aside (to access.log.<ms>) and
    /// begin a new chain, recorded in the store's chain; the server must be
    /// stopped.
    RotateAccessLog {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Print audit records, oldest first.
    Tail {
        /// Only records at or after this time: RFC 3339 (2026-11-23T10:00:00Z) or an age (1h, 30m).
        #[arg(long)]
        since: Option<String>,
        /// JSON lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

/// How `key rewrap` walks the store.
#[derive(Debug, Clone, clap::Args)]
pub struct RewrapArgs {
    /// Versions per batch (one short write transaction each).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..=5000))]
    pub batch: u16,
    /// Pause between batches, leaving the write lock to the servers (e.g. 10ms, 0s).
    #[arg(long, default_value = "10ms", value_parser = crate::config::parse_duration)]
    pub pause: std::time::Duration,
    /// Stop after this many batches (testing the resume).
    #[arg(long, hide = true)]
    pub max_batches: Option<u64>,
}

/// The master key for commands that only need it to chain or verify audit
/// records (default: SECRETD_MASTER_KEY, else <data-dir>/master.key).
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// File holding the master key (base64).
    #[arg(long, env = "SECRETD_MASTER_KEY_FILE")]
    pub master_key_file: Option<std::path::PathBuf>,
}

/// Opens the store named by `args` for a command that never reads values:
/// the master key is only checked and used to chain audit records.
async fn open_for_cli(
    args: &StoreArgs,
    keys: &KeyArgs,
) -> anyhow::Result<(Service, Arc<AuditKey>)> {
    let (store, master) = open_with_master(args, keys).await?;
    let audit_key = Arc::new(bootstrap::load_audit_key(store.as_ref(), &master).await?);
    store.set_audit_key(Arc::clone(&audit_key));
    Ok((Service::without_keys(store), audit_key))
}

fn show_time(ms: Option<i64>) -> String {
    ms.map_or_else(
        || "-".to_owned(),
        |ms| {
            let t = std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            humantime::format_rfc3339_seconds(t).to_string()
        },
    )
}

async fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let ctx = RequestCtx::operator();
    match cmd {
        TokenCommand::Create {
            name,
            role,
            scopes,
            ttl,
            store,
            keys,
        } => {
            let (svc, _) = open_for_cli(&store, &keys).await?;
            let scopes = scopes
                .iter()
                .map(|s| Scope::parse(s))
                .collect::<Result<Vec<_>, _>>()?;
            let t = svc.create_token(&ctx, &name, role, scopes, ttl).await?;
            println!("{}", t.token.as_str());
            eprintln!(
                "created token {} ({}), role {}, expires {}; it is shown only this once",
                t.info.row.name,
                t.info.row.id,
                t.info.role,
                show_time(t.info.row.expires_at)
            );
        }
        TokenCommand::List { json, store, keys } => {
            let (svc, _) = open_for_cli(&store, &keys).await?;
            for t in svc.list_tokens(&ctx).await? {
                let scopes: Vec<&str> = t.scopes.iter().map(Scope::as_str).collect();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": t.row.id, "name": t.row.name, "role": t.role.as_str(), "scopes": scopes,
                            "created_at": t.row.created_at, "created_by": t.row.created_by,
                            "expires_at": t.row.expires_at, "last_used_at": t.row.last_used_at,
                            "revoked_at": t.row.revoked_at,
                        })
                    );
                } else {
                    let state = if t.row.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{}\t{}\t{}\t{}\t{}\texpires {}\tlast used {}",
                        t.row.id,
                        t.row.name,
                        t.role,
                        scopes.join(","),
                        state,
                        show_time(t.row.expires_at),
                        show_time(t.row.last_used_at)
                    );
                }
            }
        }
        TokenCommand::Revoke { token, store, keys } => {
            let (svc, _) = open_for_cli(&store, &keys).await?;
            let t = svc.revoke_token(&ctx, &token).await?;
            println!("revoked {} ({})", t.row.name, t.row.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The existing store and its verified master key (SECRETD_MASTER_KEY,
/// --master-key-file, or the data dir's master.key).
async fn open_with_master(
    args: &StoreArgs,
    keys: &KeyArgs,
) -> anyhow::Result<(Arc<dyn Store>, MasterKey)> {
    let loc = args.location();
    let store = bootstrap::open_existing_store(&loc, &args.db.settings())
        .await
        .with_context(|| format!("opening {loc}"))?;
    let env_key = std::env::var("SECRETD_MASTER_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
        .map(crate::config::SecretString::new);
    let data_dir = match &loc {
        Location::DataDir(d) => Some(d.as_path()),
        Location::Database(_) => None,
    };
    let master = bootstrap::existing_master_key(
        store.as_ref(),
        env_key.as_ref(),
        keys.master_key_file.as_deref(),
        data_dir,
    )
    .await
    .context("loading the master key")?;
    Ok((store, master))
}

async fn key(cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::Rotate {
            rewrap,
            opts,
            store,
            keys,
        } => {
            let (store, master) = open_with_master(&store, &keys).await?;
            loop {
                let next = store.latest_generation().await? + 1;
                let wrapped = crate::crypto::Keyring::new_wrapped_key(&master, next)?;
                if store.add_data_key(wrapped).await? {
                    println!(
                        "data key generation {next} is active; new writes use it from now on, older versions stay readable"
                    );
                    break;
                }
                // Another rotation took this generation: take the next one.
            }
            if rewrap {
                return rewrap_store(store.as_ref(), &master, &opts).await;
            }
        }
        KeyCommand::Rewrap { opts, store, keys } => {
            let (store, master) = open_with_master(&store, &keys).await?;
            return rewrap_store(store.as_ref(), &master, &opts).await;
        }
        KeyCommand::Rekey {
            new_master_key_file,
            store,
            keys,
        } => {
            let (store, master) = open_with_master(&store, &keys).await?;
            let new = bootstrap::read_key_file(&new_master_key_file)?;
            anyhow::ensure!(!new.ct_eq(&master), "the new master key is the current one");
            let stored = store.data_keys().await?;
            let audit = store
                .setting(bootstrap::AUDIT_KEY_SETTING)
                .await?
                .context("the store has no audit key yet; start the server once first")?;
            let (rewrapped, audit_rewrapped) = master.rewrap_all(&new, &stored, &audit)?;
            store.rekey(rewrapped, audit_rewrapped).await?;
            println!(
                "re-wrapped {} data key(s) and the audit key under the new master key; restart every replica with it \
                 (--master-key-file {} or SECRETD_MASTER_KEY): the old key no longer opens this store",
                stored.len(),
                new_master_key_file.display()
            );
        }
        KeyCommand::Status { store, keys } => {
            let (store, _) = open_with_master(&store, &keys).await?;
            let latest = store.latest_generation().await?;
            for u in store.key_usage().await? {
                let (g, created, live) = (u.generation, u.created_at, u.live_versions);
                println!(
                    "generation {g}{}\tcreated {}\tseals {live} live version(s)",
                    if g == latest { " (active)" } else { "" },
                    show_time(Some(created))
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the rewrap, printing progress and a summary; exit 1 if an envelope
/// did not open.
async fn rewrap_store(
    store: &dyn Store,
    master: &MasterKey,
    args: &RewrapArgs,
) -> anyhow::Result<ExitCode> {
    let keyring = crate::crypto::Keyring::unwrap_all(master, &store.data_keys().await?)?;
    let opts = crate::rewrap::Options {
        batch: usize::from(args.batch),
        pause: args.pause,
        max_batches: args.max_batches,
    };
    let s = crate::rewrap::run(store, &keyring, &opts, crate::rewrap::printer()).await?;
    println!("rewrapped {}/{}", s.rewrapped, s.total);
    if !s.complete {
        println!(
            "stopped early: {} version(s) re-encrypted under generation {}; run `secretd key rewrap` to finish",
            s.rewrapped, s.target
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "done: {} version(s) re-encrypted under generation {}, {} deleted or changed meanwhile (left as they are); \
         older generations' keys are kept",
        s.rewrapped, s.target, s.skipped
    );
    if !s.failed.is_empty() {
        for (path, version) in &s.failed {
            eprintln!(
                "error: {path} version {version}: the envelope does not open (corrupt); left as it is"
            );
        }
        anyhow::bail!(
            "{} version(s) could not be re-encrypted (corrupt envelopes, listed above); every other version was",
            s.failed.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Moves the held access log aside and records in the store's chain that a
/// new access chain begins (restore, rotation).
async fn begin_access_chain(
    store: &dyn Store,
    master: &MasterKey,
    held: crate::access_log::Held,
) -> anyhow::Result<()> {
    if let Some(p) = held.set_aside()? {
        println!("access log moved to {}", p.display());
    }
    store.set_audit_key(Arc::new(bootstrap::load_audit_key(store, master).await?));
    store
        .append_audit(vec![crate::access_log::new_chain_record(
            crate::store::now_ms(),
        )])
        .await
        .context("recording the new access chain")?;
    println!("a new access chain begins");
    Ok(())
}

/// Walks the access log at `path` and checks it against the marks the
/// store's chain holds (anchors since the last new chain); prints what it
/// finds. `Ok(false)` if it does not verify.
fn verify_access_log(
    path: &std::path::Path,
    key: &AuditKey,
    marks: &[(i64, crate::access_log::Mark)],
) -> anyhow::Result<bool> {
    use crate::access_log::Mark;
    // The anchors of the current access chain: those after the last
    // new-chain mark (a restore, a rotation).
    let begun = marks.iter().rposition(|(_, m)| *m == Mark::NewChain);
    if let Some(i) = begun {
        let before = marks[..i]
            .iter()
            .filter_map(|(_, m)| match m {
                Mark::Anchor(seq, _) => Some(*seq),
                Mark::NewChain => None,
            })
            .max()
            .unwrap_or(0);
        println!(
            "access log: a new chain began {} (rotated or restored; the chain before it \
             held at least {before} records)",
            show_time(Some(marks[i].0))
        );
    }
    let mut anchored: std::collections::BTreeMap<i64, Vec<&[u8]>> = Default::default();
    for (_, m) in &marks[begun.map_or(0, |i| i + 1)..] {
        if let Mark::Anchor(seq, hash) = m
            && *seq > 0
        {
            anchored.entry(*seq).or_default().push(hash);
        }
    }
    let Some(entries) =
        crate::access_log::read(path).with_context(|| format!("reading {}", path.display()))?
    else {
        if let Some(seq) = anchored.keys().next_back() {
            eprintln!(
                "access log {} is missing: the store's chain anchored its record {seq}",
                path.display()
            );
            return Ok(false);
        }
        return Ok(true);
    };
    let mut v = Verifier::of(Chain::Access, key);
    for e in entries {
        match e {
            AccessEntry::Record(r) => {
                if let Err(b) = v.feed(&r) {
                    eprintln!("access log: {b}");
                    return Ok(false);
                }
                if anchored
                    .get(&r.seq)
                    .is_some_and(|hs| hs.iter().any(|h| *h != r.hash.as_slice()))
                {
                    eprintln!(
                        "access log: record {} is not the one the store's chain anchored \
                         (the log was replaced, or deleted and started over)",
                        r.seq
                    );
                    return Ok(false);
                }
            }
            AccessEntry::Unreadable(line, why) => {
                eprintln!(
                    "access log: chain broken at record {}: line {line} is not a record ({why})",
                    v.count() + 1
                );
                return Ok(false);
            }
            AccessEntry::Torn => eprintln!(
                "access log: ends in a torn line (a write interrupted by a crash; \
                 its request failed); the next start cuts it off"
            ),
        }
    }
    if let Some(seq) = anchored.keys().next_back().filter(|&&s| s > v.count()) {
        eprintln!(
            "access log truncated: it ends at record {}, the store's chain anchored record {seq}",
            v.count()
        );
        return Ok(false);
    }
    println!(
        "access log intact: {} records, head {}",
        v.count(),
        to_hex(v.head_hash())
    );
    Ok(true)
}

/// The access log of the embedded store at `store`, if it is one.
fn access_log_path(store: &StoreArgs) -> Option<std::path::PathBuf> {
    match store.location() {
        Location::DataDir(d) => Some(d.join(crate::access_log::FILE_NAME)),
        Location::Database(_) => None,
    }
}

async fn audit(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    const PAGE: usize = 1000;
    match cmd {
        AuditCommand::Verify { store, keys } => {
            let (svc, key) = open_for_cli(&store, &keys).await?;
            let mut v = Verifier::new(&key);
            // What the store's chain says about the access log, in order.
            let mut marks: Vec<(i64, crate::access_log::Mark)> = Vec::new();
            let mut after = 0;
            loop {
                let page = match svc.store().audit_page(after, PAGE).await {
                    Ok(p) => p,
                    Err(_) => {
                        // Pinpoint the unreadable record, one at a time.
                        let mut page = Vec::new();
                        loop {
                            match svc.store().audit_page(after, 1).await {
                                Ok(p) if p.is_empty() => break,
                                Ok(p) => {
                                    after = p[0].seq;
                                    page.extend(p);
                                }
                                Err(e) => {
                                    let next = after + 1;
                                    eprintln!(
                                        "audit chain broken at record {next}: the record cannot be read ({e})"
                                    );
                                    for r in &page {
                                        if let Err(b) = v.feed(r) {
                                            eprintln!("{b}");
                                        }
                                    }
                                    return Ok(ExitCode::FAILURE);
                                }
                            }
                        }
                        page
                    }
                };
                for r in &page {
                    if let Err(b) = v.feed(r) {
                        eprintln!("{b}");
                        return Ok(ExitCode::FAILURE);
                    }
                    if let Some(m) = crate::access_log::parse_mark(&r.record) {
                        marks.push((r.record.time_ms, m));
                    }
                }
                match page.last() {
                    Some(last) if page.len() == PAGE => after = last.seq,
                    _ => break,
                }
            }
            println!(
                "audit chain intact: {} records, head {}",
                v.count(),
                to_hex(v.head_hash())
            );
            if let Some(path) = access_log_path(&store)
                && !verify_access_log(&path, &key, &marks)?
            {
                return Ok(ExitCode::FAILURE);
            }
        }
        AuditCommand::RotateAccessLog { store, keys } => {
            let Some(path) = access_log_path(&store) else {
                anyhow::bail!("only the embedded store has an access log");
            };
            let held = crate::access_log::Held::take(&path)?;
            let (store, master) = open_with_master(&store, &keys).await?;
            begin_access_chain(store.as_ref(), &master, held).await?;
        }
        AuditCommand::Tail {
            since,
            json,
            store,
            keys,
        } => {
            let (svc, _) = open_for_cli(&store, &keys).await?;
            let since_ms = match since.as_deref() {
                None => i64::MIN,
                Some(s) => {
                    let t = match humantime::parse_rfc3339_weak(s) {
                        Ok(t) => t,
                        Err(_) => std::time::SystemTime::now()
                            .checked_sub(humantime::parse_duration(s).map_err(|_| {
                                anyhow::anyhow!(
                                    "--since must be an RFC 3339 time or an age such as 1h"
                                )
                            })?)
                            .unwrap_or(std::time::UNIX_EPOCH),
                    };
                    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
                }
            };
            // The store's chain and the access log, merged by time.
            let mut access = match access_log_path(&store) {
                Some(path) => crate::access_log::read(&path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .map(|entries| {
                        entries.filter_map(|e| match e {
                            AccessEntry::Record(r) => Some(r),
                            AccessEntry::Unreadable(line, why) => {
                                eprintln!("access log: skipping line {line}: {why}");
                                None
                            }
                            AccessEntry::Torn => None,
                        })
                    }),
                None => None,
            }
            .into_iter()
            .flatten()
            .peekable();
            let mut page = std::collections::VecDeque::new();
            let (mut after, mut more) = (0, true);
            loop {
                if page.is_empty() && more {
                    let p = svc.store().audit_page(after, PAGE).await?;
                    more = p.len() == PAGE;
                    after = p.last().map_or(after, |r| r.seq);
                    page.extend(p);
                }
                let from_access = match (page.front(), access.peek()) {
                    (Some(s), Some(a)) => a.record.time_ms < s.record.time_ms,
                    (Some(_), None) => false,
                    (None, Some(_)) => true,
                    (None, None) => break,
                };
                let next = if from_access {
                    access.next().map(|r| (Chain::Access, *r))
                } else {
                    page.pop_front().map(|r| (Chain::Store, r))
                };
                let Some((chain, r)) = next else { break };
                if r.record.time_ms < since_ms {
                    continue;
                }
                if json {
                    #[derive(serde::Serialize)]
                    struct Line<'a> {
                        chain: &'static str,
                        #[serde(flatten)]
                        r: &'a crate::audit::ChainedRecord,
                    }
                    let line = Line {
                        chain: chain.name(),
                        r: &r,
                    };
                    println!("{}", serde_json::to_string(&line)?);
                } else {
                    let a = &r.record;
                    println!(
                        "{} {}#{} {} {} path={} version={} status={} token={} client={} request={}",
                        show_time(Some(a.time_ms)),
                        if chain == Chain::Access { "access" } else { "" },
                        r.seq,
                        a.operation,
                        a.outcome,
                        a.path.as_deref().unwrap_or("-"),
                        a.version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                        a.status,
                        a.token_name.as_deref().unwrap_or("-"),
                        a.client.as_deref().unwrap_or("-"),
                        a.request_id
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Source store: a data dir, or a postgres:// URL.
    #[arg(long, env = "SECRETD_MIGRATE_FROM", hide_env_values = true)]
    pub from: String,
    /// Target store: a data dir (created if missing), or a postgres:// URL.
    #[arg(long, env = "SECRETD_MIGRATE_TO", hide_env_values = true)]
    pub to: String,
    /// Overwrite a target that already holds data (everything in it is deleted first).
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(mut cfg) => {
            // FAILPOINTS=name=action;... in test builds only (see Cargo.toml);
            // kept for the life of the process. A release build never reads it.
            if fail::has_failpoints() {
                std::mem::forget(fail::FailScenario::setup());
                tracing::warn!("fail points are compiled in (a test build)");
            }
            cfg.read_env_only();
            cfg.validate()?;
            serve(*cfg).await
        }
        Command::Config(ConfigCommand::Check(cfg)) => config_check(&cfg),
        Command::Migrate(args) => migrate(args).await,
        Command::Token(cmd) => token(cmd).await,
        Command::Key(cmd) => key(cmd).await,
        Command::Check {
            url,
            mut headers,
            api_key,
            ca_file,
        } => {
            if let Some(k) = api_key {
                headers.push(format!("X-API-Key: {}", k.expose()));
            }
            let failed = crate::check::run(&url, &headers, ca_file.as_deref()).await?;
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Audit(cmd) => audit(cmd).await,
        Command::Secret(cmd) => Ok(crate::client::secret::run(cmd).await),
        Command::Backup(args) => backup(args).await,
        Command::Restore(args) => restore(args).await,
        Command::Path { name } => {
            println!("{}", PathArg::parse_name(&name)?.as_str());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(mut cfg: ServeConfig) -> anyhow::Result<ExitCode> {
    // Bind first: if the address is taken, nothing (not even a generated
    // API key) has been stored yet.
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let metrics_listener = match &cfg.metrics_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the metrics listener {a}"))?,
        ),
        None => None,
    };
    // TLS files are checked before the store is touched, like the address.
    let tls = match cfg.tls_files() {
        Some(files) => Some(Arc::new(
            crate::tls::TlsReloader::load(files).context("loading the TLS certificate")?,
        )),
        None => None,
    };
    let opened = bootstrap::open(&cfg).await.context("opening the store")?;
    // From here on keys exist only as hashes (API keys) or inside the
    // keyring (master key material is gone).
    cfg.api_keys.clear();
    cfg.master_key = None;
    cfg.store.database_url = None;
    if let Some(p) = &opened.generated_master_key {
        tracing::warn!(
            file = %p.display(),
            "generated a new master key in the data dir; in production keep it elsewhere \
             (--master-key-file on another volume, or SECRETD_MASTER_KEY) and back it up: \
             without it the secrets cannot be read"
        );
    }
    if let Some(key) = &opened.generated_key {
        print_banner(addr, key);
    }
    tracing::info!(addr = %addr, store = %opened.location, tls = tls.is_some(), mtls = cfg.tls_client_ca.is_some(), "listening");
    match &tls {
        Some(t) => Arc::clone(t).spawn_watch(cfg.tls_reload_interval),
        None => spawn_sighup_notice(),
    }
    let state = AppState {
        service: opened.service,
        api_keys: opened.api_keys,
        max_body_bytes: cfg.max_body_bytes,
        body_timeout: cfg.body_timeout,
        request_timeout: cfg.request_timeout,
        limiter: std::sync::Arc::new(FailLimiter::new(
            cfg.auth_fail_limit,
            cfg.auth_fail_window,
            100_000,
        )),
        metrics: std::sync::Arc::new(crate::metrics::Metrics::with_store_timings(
            std::sync::Arc::clone(&opened.store_timings),
        )),
        public_metrics: metrics_listener.is_none(),
    };
    if let Some(l) = metrics_listener {
        // Logged after the main address (and not as `addr=`), which scripts read.
        tracing::info!(metrics_listen = %l.local_addr()?, "serving /metrics");
        let app = http::metrics_router(state.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    // Anchor the access log's head in the store's chain every minute it grew
    // (see access_log::ANCHOR_OPERATION), and once more on the way out.
    let service = Arc::clone(&state.service);
    let anchoring = tokio::spawn({
        let service = Arc::clone(&service);
        async move {
            let mut every = tokio::time::interval(ANCHOR_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(e) = service.anchor_access_log().await {
                    tracing::warn!(error = %e, "could not anchor the access log; retrying in a minute");
                }
            }
        }
    });
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stopping_tx.send(true);
    };
    let drain_deadline = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(cfg.shutdown_timeout).await;
    };
    tokio::select! {
        r = http::serve_with(
            listener,
            state,
            http::Transport { header_timeout: cfg.header_timeout, max_connections: cfg.max_connections, tls },
            shutdown,
        ) => r?,
        () = drain_deadline => {
            tracing::warn!(timeout = ?cfg.shutdown_timeout, "in-flight requests did not finish in time; exiting");
        }
    }
    anchoring.abort();
    if let Err(e) = service.anchor_access_log().await {
        tracing::warn!(error = %e, "could not anchor the access log at shutdown");
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// How often a serving process anchors its access log's head.
const ANCHOR_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let from = Location::parse(&args.from);
    let to = Location::parse(&args.to);
    let settings = args.db.settings();
    let source = bootstrap::open_existing_store(&from, &settings)
        .await
        .with_context(|| format!("opening the source {from}"))?;
    let target = bootstrap::open_store(&to, &settings)
        .await
        .with_context(|| format!("opening the target {to}"))?;
    let dump = source.export().await.context("reading the source")?;
    let sum = dump.checksum();
    let live = dump
        .versions
        .iter()
        .filter(|v| v.envelope.is_some())
        .count();
    let (secrets, versions, keys) = (
        dump.secrets.len(),
        dump.versions.len(),
        dump.data_keys.len(),
    );
    target
        .import(dump, args.replace)
        .await
        .with_context(|| format!("writing the target {to}"))?;
    let copied = target.export().await.context("reading the copy back")?;
    let copied_sum = copied.checksum();
    anyhow::ensure!(
        copied.secrets.len() == secrets
            && copied.versions.len() == versions
            && copied.data_keys.len() == keys,
        "verification failed: the target holds {} secrets, {} versions, {} data keys; expected {secrets}, {versions}, {keys}",
        copied.secrets.len(),
        copied.versions.len(),
        copied.data_keys.len()
    );
    anyhow::ensure!(
        copied_sum == sum,
        "verification failed: checksum {copied_sum} differs from the source's {sum}"
    );
    println!(
        "copied {secrets} secrets, {versions} versions ({live} live, {} deleted), {keys} data keys from {from} to {to}\nverified: counts match, sha256 {sum}",
        versions - live
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The backup file to write (created 0600; refuses to overwrite).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Do not check that the master key opens the store (for a host that
    /// does not hold it); the backup is then unverified.
    #[arg(long)]
    pub no_verify: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup file to read.
    #[arg(long)]
    pub from: std::path::PathBuf,
    /// Overwrite a target that already holds data (everything in it is deleted first).
    #[arg(long)]
    pub replace: bool,
    /// The target: --data-dir (created if missing) or --database-url.
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
}

fn backend_name(loc: &Location) -> &'static str {
    match loc {
        Location::DataDir(_) => "sqlite",
        Location::Database(_) => "postgres",
    }
}

async fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    if args.out.exists() && !args.force {
        anyhow::bail!(
            "{} exists; pass --force to overwrite it",
            args.out.display()
        );
    }
    let loc = args.store.location();
    let (store, master) = if args.no_verify {
        let store = bootstrap::open_existing_store(&loc, &args.store.db.settings())
            .await
            .with_context(|| format!("opening {loc}"))?;
        (store, None)
    } else {
        let (store, master) = open_with_master(&args.store, &args.keys).await?;
        (store, Some(master))
    };
    let dump = store
        .export()
        .await
        .with_context(|| format!("reading {loc}"))?;
    if let Some(m) = &master {
        crate::backup::check_master_key(&dump, m)?;
    }
    let dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    // A temp file (0600) next to the target, synced, then renamed into place.
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let header = {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        let h = crate::backup::write(&mut w, &dump, backend_name(&loc))
            .context("writing the backup")?;
        w.flush()?;
        h
    };
    tmp.as_file().sync_all()?;
    if args.force {
        tmp.persist(&args.out).map_err(|e| e.error)
    } else {
        tmp.persist_noclobber(&args.out).map_err(|e| e.error)
    }
    .with_context(|| format!("writing {}", args.out.display()))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    println!(
        "backed up {} from {loc} to {}\nsha256 {}{}",
        header.counts,
        args.out.display(),
        header.dump_sha256,
        if master.is_some() {
            "; the master key opens it (keep the key separately: the backup is useless without it)"
        } else {
            "; not verified against the master key (--no-verify)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    // Everything is checked before the target is even opened.
    let file = std::fs::File::open(&args.from)
        .with_context(|| format!("opening {}", args.from.display()))?;
    let (header, dump) = crate::backup::read(std::io::BufReader::new(file))
        .with_context(|| format!("reading {}", args.from.display()))?;
    let loc = args.store.location();
    let env_key = std::env::var("SECRETD_MASTER_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
        .map(crate::config::SecretString::new);
    let data_dir = match &loc {
        Location::DataDir(d) => Some(d.as_path()),
        Location::Database(_) => None,
    };
    if env_key.is_none()
        && args.keys.master_key_file.is_none()
        && !data_dir.is_some_and(|d| d.join(bootstrap::MASTER_KEY_FILE).exists())
    {
        anyhow::bail!(
            "restore needs the master key the backup was made under: set SECRETD_MASTER_KEY or --master-key-file"
        );
    }
    let master = bootstrap::given_master_key(
        env_key.as_ref(),
        args.keys.master_key_file.as_deref(),
        data_dir,
    )
    .context("loading the master key")?;
    crate::backup::check_master_key(&dump, &master)?;
    // The data dir's access log belongs to the store being replaced: it is
    // moved aside once the restore is in (refusing up front while a server
    // holds it), and the restored store starts a new one.
    let held = data_dir
        .map(|d| crate::access_log::Held::take(&d.join(crate::access_log::FILE_NAME)))
        .transpose()?;
    let target = bootstrap::open_store(&loc, &args.store.db.settings())
        .await
        .with_context(|| format!("opening the target {loc}"))?;
    target
        .import(dump, args.replace)
        .await
        .with_context(|| format!("writing the target {loc}"))?;
    let copied = target.export().await.context("reading the restore back")?;
    let counts = crate::backup::Counts::of(&copied);
    let sum = copied.checksum();
    anyhow::ensure!(
        counts == header.counts && sum == header.dump_sha256,
        "verification failed: the target holds {counts} (sha256 {sum}); the backup holds {} (sha256 {})",
        header.counts,
        header.dump_sha256
    );
    println!(
        "restored {counts} into {loc} (backup of a {} store taken {} by secretd {})\nverified: counts match, sha256 {sum}",
        header.source, header.created_at, header.secretd_version
    );
    if let Some(held) = held {
        begin_access_chain(target.as_ref(), &master, held).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `secretd config check`: the effective settings, where each came from,
/// secrets redacted; then the checks `serve` makes before touching the
/// store (settings that go together, TLS files).
fn config_check(cfg: &ServeConfig) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    use clap::parser::ValueSource;
    // Parse again to learn each value's source (the typed config has lost it).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (cmd, file) = command_with_config(&args)?;
    let matches = cmd.try_get_matches_from(&args)?;
    let Some(m) = matches
        .subcommand_matches("config")
        .and_then(|m| m.subcommand_matches("check"))
    else {
        anyhow::bail!("internal: config check matches missing");
    };
    let sub = Cli::command();
    let Some(check) = sub
        .find_subcommand("config")
        .and_then(|c| c.find_subcommand("check"))
    else {
        anyhow::bail!("internal: config check command missing");
    };
    println!("# effective settings: flags > SECRETD_* environment > file > defaults");
    if let Some(f) = &cfg.store.config {
        println!("# file: {}", f.display());
    }
    for arg in check.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version" | "config") {
            continue;
        }
        let values: Vec<String> = m
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match m.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue)
                if file.as_ref().is_some_and(|f| f.values.contains_key(id)) =>
            {
                "file"
            }
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        // The settings marked secret for clap's help are redacted here too.
        let secret = arg.is_hide_env_values_set();
        let show = |v: &String| {
            if secret {
                "\"<redacted>\"".to_owned()
            } else if v.parse::<i64>().is_ok() {
                v.clone()
            } else {
                format!("{v:?}")
            }
        };
        let rendered = match (values.first(), arg.get_action()) {
            (None, _) => {
                println!("# {id} is not set");
                continue;
            }
            (Some(_), clap::ArgAction::Append) => {
                format!(
                    "[{}]",
                    values.iter().map(show).collect::<Vec<_>>().join(", ")
                )
            }
            (Some(v), _) => show(v),
        };
        println!("{id} = {rendered}  # {source}");
    }
    let master_from_env = std::env::var("SECRETD_MASTER_KEY").is_ok_and(|k| !k.trim().is_empty());
    println!(
        "# master_key: {}",
        if master_from_env {
            "set in SECRETD_MASTER_KEY (redacted)"
        } else {
            "not in the environment"
        }
    );
    cfg.validate()?;
    if let Some(files) = cfg.tls_files() {
        crate::tls::build(&files).context("TLS files")?;
    }
    println!("# ok");
    Ok(ExitCode::SUCCESS)
}

/// Without TLS there is nothing to reload: SIGHUP is logged, not fatal.
fn spawn_sighup_notice() {
    tokio::spawn(async {
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: nothing to reload (no TLS configured)");
            }
        }
    });
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
