//! Durable, versioned storage behind one small trait. The only place with SQL.
//!
//! A store keeps, per secret path, a version counter that only grows and one
//! row per version: its sealed value (an opaque envelope from `crypto`) or,
//! once deleted, a tombstone with the deletion time. Stores never see
//! plaintext: `put` receives a [`Sealer`] that turns the version number the
//! store allocated into an envelope inside the store's transaction, so the
//! associated data can bind the version.
//!
//! Contract every backend honours (and the integration tests check):
//! * a returned `Ok` from a write means the change is on stable storage;
//! * versions of one path are allocated atomically, contiguously, and are
//!   never reused, also after deleting one version or all of them;
//! * deleting a version destroys its envelope and keeps created/deleted times.

pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;

use crate::crypto::{CryptoError, WrappedKey};
use crate::path::{SecretPath, Version};

/// A boxed future, so the trait stays object-safe (`Arc<dyn Store>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns the allocated version into the envelope to store. `Fn`, not
/// `FnOnce`: a backend that retries a transaction (serialization failure)
/// seals again for the version the retry allocated.
pub type Sealer = Box<dyn Fn(Version) -> Result<Vec<u8>, CryptoError> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or is shutting down; worth a retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database holds a schema newer than this binary understands.
    #[error(
        "the store's schema version {found} is newer than this secretd understands ({known}); upgrade secretd"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// The database is not set up durably enough to acknowledge writes.
    #[error("store durability check failed: {0}")]
    NotDurable(String),
    /// A row that breaks the schema's invariants.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// An import into a store that already holds data.
    #[error("the target store is not empty ({0}); pass --replace to overwrite it")]
    NotEmpty(String),
    #[error("sealing failed: {0}")]
    Seal(#[from] CryptoError),
    #[error("store error: {0}")]
    Backend(String),
}

/// One live version as stored.
#[derive(Debug)]
pub struct StoredVersion {
    pub version: Version,
    pub envelope: Vec<u8>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A version number read back from the database; out-of-range numbers mean
/// the row is corrupt.
pub fn db_version(path: &SecretPath, v: i64) -> Result<Version, StoreError> {
    u64::try_from(v)
        .ok()
        .and_then(|n| Version::new(n).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("{path}: version {v} out of range")))
}

/// Every row of a store, as stored: envelopes are copied, never opened.
/// Used by `secretd migrate`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dump {
    pub secrets: Vec<SecretRow>,
    pub versions: Vec<VersionRow>,
    pub data_keys: Vec<KeyRow>,
    pub settings: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub path: String,
    pub last_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub path: String,
    pub version: i64,
    /// `None` for a tombstone.
    pub envelope: Option<Vec<u8>>,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub generation: i64,
    pub wrapped: Vec<u8>,
    pub created_at: i64,
}

impl Dump {
    /// Puts rows in one canonical order (byte order of paths), whatever the
    /// backend's collation.
    pub fn sort(&mut self) {
        self.secrets
            .sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        self.versions
            .sort_by(|a, b| (a.path.as_bytes(), a.version).cmp(&(b.path.as_bytes(), b.version)));
        self.data_keys.sort_by_key(|k| k.generation);
        self.settings.sort();
    }

    /// SHA-256 over every row in canonical order, hex.
    pub fn checksum(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut d = self.clone();
        d.sort();
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        for s in &d.secrets {
            field(b"secret");
            field(s.path.as_bytes());
            field(&s.last_version.to_be_bytes());
            field(&s.created_at.to_be_bytes());
            field(&s.updated_at.to_be_bytes());
        }
        for v in &d.versions {
            field(b"version");
            field(v.path.as_bytes());
            field(&v.version.to_be_bytes());
            field(v.envelope.as_deref().unwrap_or(b"<tombstone>"));
            field(&v.created_at.to_be_bytes());
            field(&v.deleted_at.unwrap_or(-1).to_be_bytes());
        }
        for k in &d.data_keys {
            field(b"data_key");
            field(&k.generation.to_be_bytes());
            field(&k.wrapped);
            field(&k.created_at.to_be_bytes());
        }
        for (name, value) in &d.settings {
            field(b"setting");
            field(name.as_bytes());
            field(value);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether the store holds anything a copy would overwrite.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.versions.is_empty() && self.data_keys.is_empty()
    }
}

pub trait Store: Send + Sync + 'static {
    /// Allocates the next version of `path`, seals the value for it and
    /// stores it durably. Returns the new version.
    fn put(&self, path: SecretPath, seal: Sealer) -> BoxFuture<'_, Result<Version, StoreError>>;

    /// The newest live version of `path` (`version: None`) or that exact
    /// version if it is live. `None` if there is no such live version.
    fn get<'a>(
        &'a self,
        path: &'a SecretPath,
        version: Option<Version>,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, StoreError>>;

    /// Tombstones every live version of `path` (`version: None`) or that one
    /// version. Returns the versions deleted; empty if nothing was live.
    fn delete(
        &self,
        path: SecretPath,
        version: Option<Version>,
    ) -> BoxFuture<'_, Result<Vec<Version>, StoreError>>;

    /// The wrapped data keys, every generation.
    fn data_keys(&self) -> BoxFuture<'_, Result<Vec<WrappedKey>, StoreError>>;

    /// Stores a new wrapped data key; `Ok(false)` if that generation exists.
    fn add_data_key(&self, key: WrappedKey) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// A small named setting (e.g. the hash of a generated API key).
    fn setting<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// Stores a setting durably unless it exists; `Ok(false)` if it did
    /// (another replica got there first).
    fn insert_setting(&self, name: &str, value: Vec<u8>)
    -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Every row, envelopes as stored (for `secretd migrate`).
    fn export(&self) -> BoxFuture<'_, Result<Dump, StoreError>>;

    /// Writes `dump` in one transaction. Refuses ([`StoreError::NotEmpty`])
    /// if the store holds secrets or data keys, unless `replace`, which
    /// deletes everything first.
    fn import(&self, dump: Dump, replace: bool) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Cheap round trip proving the store answers (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}
