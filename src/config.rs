//! Settings for `secretd serve`: one plain struct, filled once from flags and
//! `SECRETD_*` environment variables (clap does both), passed explicitly.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use zeroize::Zeroizing;

/// A string that must not be printed: `Debug` redacts it, memory is zeroed
/// on drop.
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(s: String) -> Self {
        SecretString(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for SecretString {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretString::new(s.to_owned()))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on (host:port; port 0 picks a free port).
    #[arg(long, env = "SECRETD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    #[command(flatten)]
    pub store: StoreArgs,

    /// File holding the 32-byte master key, base64. Default: SECRETD_MASTER_KEY,
    /// else <data-dir>/master.key (generated on first run).
    #[arg(long, env = "SECRETD_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,

    /// The master key itself, base64 (environment only: never a flag, so it
    /// does not show in the process list).
    #[arg(skip)]
    pub master_key: Option<SecretString>,

    /// An accepted API key (repeatable; SECRETD_API_KEYS is comma-separated).
    /// Prefer the environment variable: flags show in the process list.
    #[arg(
        long = "api-key",
        env = "SECRETD_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<SecretString>,

    /// Extra request header names that carry an API key, besides X-API-Key and
    /// Authorization (comma-separated in SECRETD_AUTH_HEADERS).
    #[arg(
        long = "auth-header",
        env = "SECRETD_AUTH_HEADERS",
        value_delimiter = ','
    )]
    pub auth_headers: Vec<String>,

    /// Failed authentications allowed per client address within the window
    /// before it gets 429 (0 disables the limit).
    #[arg(long, env = "SECRETD_AUTH_FAIL_LIMIT", default_value_t = 20)]
    pub auth_fail_limit: u32,

    /// The window of --auth-fail-limit (e.g. 1m).
    #[arg(long, env = "SECRETD_AUTH_FAIL_WINDOW", default_value = "1m", value_parser = parse_duration)]
    pub auth_fail_window: Duration,

    /// Also write every audit record as a JSON line to this file (appended,
    /// 0600), or to stdout with `-`, for a SIEM. The database keeps the
    /// chained copy either way.
    #[arg(long, env = "SECRETD_AUDIT_STREAM")]
    pub audit_stream: Option<String>,

    /// Serve `/metrics` on this address instead of the public listener.
    #[arg(long, env = "SECRETD_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// A client must send each request's header within this time (slowloris).
    #[arg(long, env = "SECRETD_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Most client connections served at once.
    #[arg(long, env = "SECRETD_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// After SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "SECRETD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SECRETD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest accepted secret value, in bytes.
    #[arg(long, env = "SECRETD_MAX_VALUE_BYTES", default_value_t = 64 * 1024)]
    pub max_value_bytes: usize,
}

/// Where the store is: the embedded data dir, or a PostgreSQL URL. Shared
/// by `serve` and every command that opens the store.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Directory holding the embedded database (created 0700).
    #[arg(long, env = "SECRETD_DATA_DIR", default_value = "./secretd-data")]
    pub data_dir: PathBuf,

    /// PostgreSQL URL (postgres://user:pass@host/db?sslmode=...). When set,
    /// secrets live there instead of the embedded store, and the master key
    /// must be given explicitly (every replica needs the same one).
    #[arg(long, env = "SECRETD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,

    #[command(flatten)]
    pub db: DbArgs,
}

impl StoreArgs {
    pub fn location(&self) -> crate::bootstrap::Location {
        match &self.database_url {
            Some(url) => crate::bootstrap::Location::Database(url.clone()),
            None => crate::bootstrap::Location::DataDir(self.data_dir.clone()),
        }
    }
}

/// PostgreSQL pool and timeout settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// Most database connections per replica.
    #[arg(long, env = "SECRETD_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// Longest wait for a database connection before answering 503 (e.g. 2s, 500ms).
    #[arg(long, env = "SECRETD_DB_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,

    /// Server-side statement timeout (e.g. 5s).
    #[arg(long, env = "SECRETD_DB_STATEMENT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_statement_timeout: Duration,

    /// Extra CA certificates (PEM) trusted for sslmode=verify-full / verify-ca.
    #[arg(long, env = "SECRETD_DB_CA_FILE")]
    pub db_ca_file: Option<PathBuf>,
}

impl Default for DbArgs {
    fn default() -> Self {
        let d = crate::store::postgres::PgSettings::default();
        DbArgs {
            db_pool_size: d.pool_size,
            db_acquire_timeout: d.acquire_timeout,
            db_statement_timeout: d.statement_timeout,
            db_ca_file: None,
        }
    }
}

impl DbArgs {
    pub fn settings(&self) -> crate::store::postgres::PgSettings {
        crate::store::postgres::PgSettings {
            pool_size: self.db_pool_size,
            acquire_timeout: self.db_acquire_timeout,
            statement_timeout: self.db_statement_timeout,
            ca_file: self.db_ca_file.clone(),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

impl ServeConfig {
    /// Defaults for a data dir, as the CLI would produce with no flags.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        ServeConfig {
            listen: "127.0.0.1:0".into(),
            store: StoreArgs {
                data_dir,
                database_url: None,
                db: DbArgs::default(),
            },
            auth_fail_limit: 20,
            auth_fail_window: Duration::from_secs(60),
            master_key_file: None,
            master_key: None,
            api_keys: Vec::new(),
            auth_headers: Vec::new(),
            shutdown_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            metrics_listen: None,
            max_connections: 4096,
            audit_stream: None,
            max_body_bytes: 1024 * 1024,
            max_value_bytes: 64 * 1024,
        }
    }

    /// Fills the settings that come only from the environment.
    pub fn read_env_only(&mut self) {
        if let Ok(k) = std::env::var("SECRETD_MASTER_KEY")
            && !k.trim().is_empty()
        {
            self.master_key = Some(SecretString::new(k));
        }
    }
}
