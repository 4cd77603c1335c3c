//! Settings for `secretd serve`: one plain struct, filled once from flags,
//! `SECRETD_*` environment variables and an optional TOML file, passed
//! explicitly.
//!
//! Precedence is flags > environment > file > defaults. clap does the first
//! two; the file's values are installed as the arguments' defaults before
//! parsing ([`apply_file`]), so one parser decides every setting and the
//! file is checked by the same value parsers as flags. File keys are the
//! settings' names in snake_case (`data_dir`, `tls_cert`, `api_keys`).

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

    /// How long a client may take to send a request body, once its header
    /// has arrived (slow uploads get 408).
    #[arg(long, env = "SECRETD_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Longest a read (GET) may take from its header to the response;
    /// slower reads get 503 `timeout`. Writes are never cut off once they
    /// reach the store (their outcome would be unknown).
    #[arg(long, env = "SECRETD_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs
    /// --tls-key. Re-read on SIGHUP and when the file changes.
    #[arg(long, env = "SECRETD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SECRETD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates that chain to these CAs (PEM) (mTLS).
    #[arg(long, env = "SECRETD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files are checked for changes (0s: only on SIGHUP).
    #[arg(long, env = "SECRETD_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

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
    /// A TOML file with settings (keys in snake_case, e.g. data_dir); flags
    /// and SECRETD_* variables override it. `serve` takes every setting;
    /// other commands take the store and key settings they share with it.
    #[arg(long, env = "SECRETD_CONFIG")]
    pub config: Option<PathBuf>,

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

/// A humantime duration (`500ms`, `10s`, `30d`), for clap.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

impl ServeConfig {
    /// Defaults for a data dir, as the CLI would produce with no flags.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        ServeConfig {
            listen: "127.0.0.1:0".into(),
            store: StoreArgs {
                config: None,
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
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_reload_interval: Duration::from_secs(10),
            metrics_listen: None,
            max_connections: 4096,
            audit_stream: None,
            max_body_bytes: 1024 * 1024,
            max_value_bytes: 64 * 1024,
        }
    }

    /// The TLS files, if HTTPS is configured.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// Checks settings that only make sense together, whatever source each
    /// came from (clap's `requires` would ignore values from the file).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "tls_cert is set but tls_key is not".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "tls_key is set but tls_cert is not".into(),
                ));
            }
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::Invalid(
                "tls_client_ca needs tls_cert and tls_key (mTLS is part of TLS)".into(),
            ));
        }
        Ok(())
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// A TOML syntax error: where, and what (never the offending text,
    /// which may be a key).
    #[error("{file}: line {line}, column {column}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: unknown key `{key}`{hint}")]
    UnknownKey {
        file: PathBuf,
        key: String,
        hint: String,
    },
    #[error("{file}: key `{key}`: {why}")]
    BadValue {
        file: PathBuf,
        key: String,
        why: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Keys a file may not set, and why.
const NOT_IN_FILE: &[(&str, &str)] = &[
    ("config", "a config file cannot name another one"),
    (
        "master_key",
        "the master key itself is accepted only from SECRETD_MASTER_KEY; use master_key_file",
    ),
];

/// A parsed config file: each key with its value(s) as the strings a flag
/// would carry.
#[derive(Debug, Default)]
pub struct FileSettings {
    pub file: PathBuf,
    pub values: std::collections::BTreeMap<String, Vec<String>>,
}

/// Reads a TOML config file. Values must be strings, integers, booleans or
/// lists of those; durations are strings (`"10s"`).
pub fn read_file(path: &std::path::Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })?;
    parse_file(path, &text)
}

/// Parses a config file's text (`path` names it in errors).
pub fn parse_file(path: &std::path::Path, text: &str) -> Result<FileSettings, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |r| r.start).min(text.len());
        // A span may fall inside a multi-byte character: never slice there.
        let before = text.get(..at).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::Syntax {
            file: path.to_owned(),
            line,
            column,
            message: e.message().to_owned(),
        }
    })?;
    let bad = |key: &str, why: &str| ConfigError::BadValue {
        file: path.to_owned(),
        key: key.to_owned(),
        why: why.to_owned(),
    };
    let scalar = |key: &str, v: &toml::Value| -> Result<String, ConfigError> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(bad(key, "must be a string, an integer or a boolean")),
        }
    };
    let mut values = std::collections::BTreeMap::new();
    for (key, v) in &table {
        let vs = match v {
            toml::Value::Array(items) => items
                .iter()
                .map(|i| scalar(key, i))
                .collect::<Result<Vec<_>, _>>()?,
            other => vec![scalar(key, other)?],
        };
        values.insert(key.clone(), vs);
    }
    Ok(FileSettings {
        file: path.to_owned(),
        values,
    })
}

/// Installs the file's values as the defaults of `cmd`'s arguments. With
/// `strict`, every key must name one of them; otherwise keys `cmd` does not
/// have are skipped (an admin command takes the store settings of a
/// server's file).
pub fn apply_file(
    cmd: clap::Command,
    file: &FileSettings,
    strict: bool,
) -> Result<clap::Command, ConfigError> {
    let known: Vec<(String, bool)> = cmd
        .get_arguments()
        .filter(|a| !a.is_positional())
        .map(|a| {
            let many = matches!(a.get_action(), clap::ArgAction::Append);
            (a.get_id().as_str().to_owned(), many)
        })
        .filter(|(id, _)| !matches!(id.as_str(), "help" | "version" | "config"))
        .collect();
    let delimiter: Vec<(String, Option<char>)> = cmd
        .get_arguments()
        .map(|a| (a.get_id().as_str().to_owned(), a.get_value_delimiter()))
        .collect();
    for (key, vs) in &file.values {
        if let Some((_, why)) = NOT_IN_FILE.iter().find(|(k, _)| k == key) {
            return Err(ConfigError::BadValue {
                file: file.file.clone(),
                key: key.clone(),
                why: (*why).to_owned(),
            });
        }
        let Some((_, many)) = known.iter().find(|(id, _)| id == key) else {
            if !strict {
                continue;
            }
            let hint = closest(key, known.iter().map(|(k, _)| k.as_str()))
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(ConfigError::UnknownKey {
                file: file.file.clone(),
                key: key.clone(),
                hint,
            });
        };
        if let Some(d) = delimiter
            .iter()
            .find(|(id, _)| id == key)
            .and_then(|(_, d)| *d)
            && vs.iter().any(|v| v.contains(d))
        {
            return Err(ConfigError::BadValue {
                file: file.file.clone(),
                key: key.clone(),
                why: format!("list items may not contain '{d}' (write one item per value)"),
            });
        }
        if vs.len() != 1 && !many {
            return Err(ConfigError::BadValue {
                file: file.file.clone(),
                key: key.clone(),
                why: "takes one value, not a list".into(),
            });
        }
    }
    let mut cmd = cmd;
    for (key, vs) in &file.values {
        if !known.iter().any(|(id, _)| id == key) {
            continue;
        }
        let vs = vs.clone();
        cmd = cmd.mut_arg(key.as_str(), move |a| {
            a.default_values(vs)
                // A value from the file satisfies `required`, like a default.
                .required(false)
        });
    }
    Ok(cmd)
}

/// The known key nearest to a misspelt one, if any is close.
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    let norm = key.replace('-', "_");
    known
        .map(|k| (distance(&norm, k), k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}
