//! Start-up: data dir, store, master key, data keys and API keys, in that
//! order, each with a clear error if it cannot be had.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::HeaderName;
use zeroize::Zeroizing;

use crate::access_log::AccessLog;
use crate::auth::{ApiKeys, KeyHash, generate_key};
use crate::config::{SecretString, ServeConfig};
use crate::crypto::{AuditKey, CryptoError, Keyring, MasterKey};
use crate::service::{AuditStream, Limits, Service};
use crate::store::postgres::{PgSettings, PgStore, is_database_url};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// Name of the database file inside the data dir.
pub const DB_FILE: &str = "secretd.db";
/// Name of the generated master key file inside the data dir.
pub const MASTER_KEY_FILE: &str = "master.key";
/// Setting holding the SHA-256 of the generated API key.
const GENERATED_KEY_SETTING: &str = "generated_api_key_sha256";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("master key: {0}")]
    MasterKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("{} holds no secretd store ({DB_FILE} is missing); pass --data-dir or --database-url", .0.display())]
    NoStore(PathBuf),
    #[error("audit stream {0}")]
    AuditStream(String),
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::AccessLogError),
    #[error("invalid auth header name {0:?}")]
    BadHeader(String),
}

/// Everything `serve` needs, opened and checked.
#[derive(Debug)]
pub struct Opened {
    pub service: Arc<Service>,
    pub api_keys: Arc<ApiKeys>,
    /// The API key generated on this run (first run without keys): shown
    /// once, never stored in clear.
    pub generated_key: Option<Zeroizing<String>>,
    /// Set when a master key file was generated in the data dir on this run.
    pub generated_master_key: Option<PathBuf>,
    /// Where the store is, printable (a database URL is redacted).
    pub location: Location,
    /// Latency of every store operation, for `/metrics`.
    pub store_timings: Arc<crate::metrics::StoreTimings>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootError + '_ {
    move |source| BootError::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the data dir (0700, whatever the umask) if needed.
pub fn prepare_data_dir(dir: &Path) -> Result<(), BootError> {
    let existed = dir.exists();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    if !existed {
        // Make the new directory's entry durable.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err(parent))?;
        }
    }
    Ok(())
}

/// Where a store lives: an embedded data dir or a PostgreSQL URL.
#[derive(Debug, Clone)]
pub enum Location {
    DataDir(PathBuf),
    Database(SecretString),
}

impl Location {
    /// A `postgres://` / `postgresql://` URL, else a data dir.
    pub fn parse(s: &str) -> Self {
        if is_database_url(s) {
            Location::Database(SecretString::new(s.to_owned()))
        } else {
            Location::DataDir(PathBuf::from(s))
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::DataDir(p) => write!(f, "{}", p.display()),
            // The URL may hold a password: show the scheme only.
            Location::Database(_) => f.write_str("postgres://<redacted>"),
        }
    }
}

/// Opens the store at `loc`, which must already exist (for commands other
/// than `serve`: a typo in `--data-dir` must not create an empty store).
pub async fn open_existing_store(
    loc: &Location,
    pg: &PgSettings,
) -> Result<Arc<dyn Store>, BootError> {
    if let Location::DataDir(d) = loc
        && !d.join(DB_FILE).exists()
    {
        return Err(BootError::NoStore(d.clone()));
    }
    open_store(loc, pg).await
}

/// Opens (creating if needed) the store at `loc`; no keys involved.
pub async fn open_store(loc: &Location, pg: &PgSettings) -> Result<Arc<dyn Store>, BootError> {
    Ok(match loc {
        Location::DataDir(dir) => {
            prepare_data_dir(dir)?;
            Arc::new(SqliteStore::open(&dir.join(DB_FILE))?)
        }
        Location::Database(url) => Arc::new(PgStore::connect(url.expose(), pg).await?),
    })
}

/// Opens the store and everything around it.
pub async fn open(cfg: &ServeConfig) -> Result<Opened, BootError> {
    let loc = cfg.store.location();
    let store_timings = Arc::new(crate::metrics::StoreTimings::default());
    let store: Arc<dyn Store> = Arc::new(crate::store::timed::TimedStore::new(
        open_store(&loc, &cfg.store.db.settings()).await?,
        Arc::clone(&store_timings),
    ));

    let mut stored_keys = store.data_keys().await?;
    let (master, generated_master_key) = resolve_master_key(
        cfg,
        stored_keys.is_empty(),
        cfg.store.database_url.is_none(),
    )?;
    if stored_keys.is_empty() {
        let k = Keyring::new_wrapped_key(&master, 1)?;
        store.add_data_key(k).await?;
        stored_keys = store.data_keys().await?;
    }
    let (keyring, unreadable) = Keyring::unwrap_available(&master, &stored_keys)?;
    for generation in unreadable {
        tracing::error!(
            generation,
            "a stored data key does not open under the master key (the key row was altered); \
             versions sealed under it answer 500 corrupt"
        );
    }
    let audit_key = Arc::new(load_audit_key(store.as_ref(), &master).await?);
    store.set_audit_key(Arc::clone(&audit_key));
    // The embedded store's reads and refusals are recorded in the access log
    // (see `access_log`); PostgreSQL replicas share the database's chain.
    let access = match &loc {
        Location::DataDir(dir) => Some(AccessLog::open(
            &dir.join(crate::access_log::FILE_NAME),
            audit_key,
        )?),
        Location::Database(_) => None,
    };
    let master_for_service = master;

    let mut headers = Vec::with_capacity(cfg.auth_headers.len());
    for h in cfg
        .auth_headers
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
    {
        headers.push(HeaderName::try_from(h).map_err(|_| BootError::BadHeader(h.to_owned()))?);
    }
    let mut keys: Vec<(String, KeyHash)> = Vec::new();
    for (i, k) in cfg
        .api_keys
        .iter()
        .map(|k| k.expose().trim())
        .filter(|k| !k.is_empty())
        .enumerate()
    {
        if k.len() < 16 {
            tracing::warn!(key_id = %format!("static-{}", i + 1), "API key is shorter than 16 characters; use a long random key");
        }
        keys.push((format!("static-{}", i + 1), KeyHash::of(k.as_bytes())));
    }
    let mut generated_key = None;
    if keys.is_empty() {
        match store
            .setting(GENERATED_KEY_SETTING)
            .await?
            .as_deref()
            .and_then(KeyHash::from_bytes)
        {
            Some(h) => keys.push(("generated".into(), h)),
            None => {
                let k = generate_key()?;
                let h = KeyHash::of(k.as_bytes());
                if store
                    .insert_setting(GENERATED_KEY_SETTING, h.as_bytes().to_vec())
                    .await?
                {
                    keys.push(("generated".into(), h));
                    generated_key = Some(k);
                } else {
                    // Another replica generated one at the same moment: use
                    // its hash; that replica prints the key.
                    let stored = store.setting(GENERATED_KEY_SETTING).await?;
                    let h = stored
                        .as_deref()
                        .and_then(KeyHash::from_bytes)
                        .ok_or_else(|| {
                            StoreError::Corrupt("generated API key hash is malformed".into())
                        })?;
                    keys.push(("generated".into(), h));
                }
            }
        }
    }

    let stream = match &cfg.audit_stream {
        Some(t) => Some(Arc::new(
            AuditStream::open(t).map_err(|e| BootError::AuditStream(format!("{t}: {e}")))?,
        )),
        None => None,
    };
    let limits = Limits {
        max_value_bytes: cfg.max_value_bytes,
    };
    let service = Service::new(store, master_for_service, keyring, limits, stream);
    let service = Arc::new(match access {
        Some(log) => service.with_access_log(log, Arc::clone(&store_timings)),
        None => service,
    });
    // Serving does not depend on it: the periodic anchor retries.
    if let Err(e) = service.anchor_access_log().await {
        tracing::warn!(error = %e, "could not anchor the access log at start");
    }
    Ok(Opened {
        service,
        api_keys: Arc::new(ApiKeys::new(keys, headers)),
        generated_key,
        generated_master_key,
        location: loc,
        store_timings,
    })
}

/// The existing master key from `SECRETD_MASTER_KEY`, `file`, or
/// `<data_dir>/master.key` (never generated), checked against the store's
/// data keys.
pub async fn existing_master_key(
    store: &dyn Store,
    env_key: Option<&SecretString>,
    file: Option<&Path>,
    data_dir: Option<&Path>,
) -> Result<MasterKey, BootError> {
    let master = given_master_key(env_key, file, data_dir)?;
    let stored = store.data_keys().await?;
    if !stored.is_empty() {
        Keyring::unwrap_all(&master, &stored)?;
    }
    Ok(master)
}

/// The master key from `SECRETD_MASTER_KEY`, `file`, or
/// `<data_dir>/master.key`, in that order (never generated, not checked).
pub fn given_master_key(
    env_key: Option<&SecretString>,
    file: Option<&Path>,
    data_dir: Option<&Path>,
) -> Result<MasterKey, BootError> {
    Ok(match (env_key, file) {
        (Some(k), _) => MasterKey::from_base64(k.expose()).map_err(|_| {
            BootError::MasterKey("SECRETD_MASTER_KEY does not hold a 32-byte base64 key".into())
        })?,
        (None, file) => {
            let path = match (file, data_dir) {
                (Some(f), _) => f.to_path_buf(),
                (None, Some(d)) => d.join(MASTER_KEY_FILE),
                (None, None) => {
                    return Err(BootError::MasterKey(
                        "the master key is needed: set SECRETD_MASTER_KEY or --master-key-file"
                            .into(),
                    ));
                }
            };
            read_key_file(&path)?
        }
    })
}

/// Reads a base64 master key file.
pub fn read_key_file(path: &Path) -> Result<MasterKey, BootError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| BootError::MasterKey(format!("reading {}: {e}", path.display())))?,
    );
    MasterKey::from_base64(&text).map_err(|_| {
        BootError::MasterKey(format!(
            "{} does not hold a 32-byte base64 key",
            path.display()
        ))
    })
}

/// Setting holding the audit key, wrapped by the master key.
pub const AUDIT_KEY_SETTING: &str = "audit_key_wrapped";

/// The store's audit key (created on first use), opened with `master`.
pub async fn load_audit_key(store: &dyn Store, master: &MasterKey) -> Result<AuditKey, BootError> {
    let wrapped = match store.setting(AUDIT_KEY_SETTING).await? {
        Some(w) => w,
        None => {
            let fresh = master.new_wrapped_audit_key()?;
            // Another replica may have won the race: use what is stored.
            store.insert_setting(AUDIT_KEY_SETTING, fresh).await?;
            store
                .setting(AUDIT_KEY_SETTING)
                .await?
                .ok_or_else(|| BootError::MasterKey("the audit key could not be stored".into()))?
        }
    };
    Ok(master.audit_key(&wrapped)?)
}

/// The master key from SECRETD_MASTER_KEY, --master-key-file, or the data
/// dir's key file; generated there only for a store that holds no data yet.
fn resolve_master_key(
    cfg: &ServeConfig,
    store_is_new: bool,
    embedded: bool,
) -> Result<(MasterKey, Option<PathBuf>), BootError> {
    let bad = |src: &str| BootError::MasterKey(format!("{src} does not hold a 32-byte base64 key"));
    if let Some(k) = &cfg.master_key {
        return Ok((
            MasterKey::from_base64(k.expose()).map_err(|_| bad("SECRETD_MASTER_KEY"))?,
            None,
        ));
    }
    let (file, explicit) = match &cfg.master_key_file {
        Some(f) => (f.clone(), true),
        None if embedded => (cfg.store.data_dir.join(MASTER_KEY_FILE), false),
        None => {
            return Err(BootError::MasterKey(
                "with --database-url the master key must be given explicitly \
                 (SECRETD_MASTER_KEY or --master-key-file), the same on every replica"
                    .into(),
            ));
        }
    };
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let k = MasterKey::from_base64(&text).map_err(|_| bad(&file.display().to_string()))?;
            Ok((k, None))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            if !store_is_new {
                return Err(BootError::MasterKey(format!(
                    "no master key given and {} does not exist, but the store already holds encrypted data; \
                     pass the key it was created with (--master-key-file or SECRETD_MASTER_KEY)",
                    file.display()
                )));
            }
            let k = MasterKey::generate()?;
            write_new_key_file(&file, &k)
                .map_err(|e| BootError::MasterKey(format!("writing {}: {e}", file.display())))?;
            Ok((k, Some(file)))
        }
        Err(e) => Err(BootError::MasterKey(format!(
            "reading {}: {e}",
            file.display()
        ))),
    }
}

/// Writes a new key file (0600, refusing to overwrite) and syncs it and its
/// directory before the key is used.
fn write_new_key_file(file: &Path, key: &MasterKey) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(key.to_base64().as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
