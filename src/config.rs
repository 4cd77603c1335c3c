//! Settings for `secretd serve`: one plain struct, filled once from flags and
//! `SECRETD_*` environment variables (clap does both), passed explicitly.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

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

    /// Directory holding the embedded database (created 0700).
    #[arg(long, env = "SECRETD_DATA_DIR", default_value = "./secretd-data")]
    pub data_dir: PathBuf,

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

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SECRETD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest accepted secret value, in bytes.
    #[arg(long, env = "SECRETD_MAX_VALUE_BYTES", default_value_t = 64 * 1024)]
    pub max_value_bytes: usize,
}

impl ServeConfig {
    /// Defaults for a data dir, as the CLI would produce with no flags.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        ServeConfig {
            listen: "127.0.0.1:0".into(),
            data_dir,
            master_key_file: None,
            master_key: None,
            api_keys: Vec::new(),
            auth_headers: Vec::new(),
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
