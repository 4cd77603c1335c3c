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

pub mod cache;
pub mod postgres;
pub mod sqlite;
pub mod timed;

use std::future::Future;
use std::pin::Pin;

use crate::audit::{AuditRecord, ChainedRecord};
use crate::crypto::{CryptoError, WrappedKey};
use crate::path::{SecretPath, Version};

/// A boxed future, so the trait stays object-safe (`Arc<dyn Store>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns the allocated version into the envelope to store, under the data
/// key of one generation. `Fn`, not `FnOnce`: a backend that retries a
/// transaction (serialization failure) seals again for the version the
/// retry allocated.
pub struct Sealer {
    generation: u32,
    seal: SealFn,
}

type SealFn = Box<dyn Fn(Version) -> Result<Vec<u8>, CryptoError> + Send + Sync>;

impl Sealer {
    /// A sealer whose envelopes are sealed under data key `generation`.
    pub fn new(
        generation: u32,
        seal: impl Fn(Version) -> Result<Vec<u8>, CryptoError> + Send + Sync + 'static,
    ) -> Self {
        Sealer {
            generation,
            seal: Box::new(seal),
        }
    }

    /// The envelope of `version`.
    pub fn seal(&self, version: Version) -> Result<Vec<u8>, CryptoError> {
        (self.seal)(version)
    }

    /// Refuses (before anything is sealed) if the store already holds a
    /// newer generation than this sealer's, `newest`: a rotation by another
    /// process or replica, which new values must use at once.
    pub fn check_newest(&self, newest: u32) -> Result<(), StoreError> {
        if newest > self.generation {
            return Err(StoreError::NewerDataKey(newest));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

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
    /// `PutMode::ExistingOnly` on a path with no live version.
    #[error("the secret has no live version")]
    NoLiveVersion,
    /// A unique name already taken (e.g. a token name).
    #[error("{0}")]
    Conflict(String),
    /// An import into a store that already holds data.
    #[error("the target store is not empty ({0}); pass --replace to overwrite it")]
    NotEmpty(String),
    #[error("sealing failed: {0}")]
    Seal(#[from] CryptoError),
    /// A PUT sealed under an older data key generation than the newest in
    /// the store (checked inside the write's transaction): nothing was
    /// written; seal under generation `.0` and try again.
    #[error(
        "the store holds data key generation {0}, newer than the one this write was sealed under"
    )]
    NewerDataKey(u32),
    #[error("store error: {0}")]
    Backend(String),
}

/// One live version as stored.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub version: Version,
    /// Shared: a cached envelope is handed out without copying it.
    pub envelope: std::sync::Arc<[u8]>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// The versions a statement looks at: exactly `version`, or all of them.
/// Both backends' point reads and deletes bound `(secret_id, version)` by
/// this range, which their indexes seek to directly, also under a generic
/// plan; `version IS NULL OR version = x` would walk every version of the
/// secret instead (at 75 versions an embedded GET by version took 17 µs
/// instead of 8).
pub(crate) fn version_range(version: Option<Version>) -> (i64, i64) {
    version.map_or((1, i64::MAX), |v| (v.as_i64(), v.as_i64()))
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

/// Whether a PUT may create a secret or only add a version to one that has
/// a live version (an editor's right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    Any,
    ExistingOnly,
}

/// Who writes, and the audit record committed in the same transaction as
/// the write (the store fills in the version a PUT allocated).
#[derive(Debug, Clone)]
pub struct WriteCtx {
    pub actor: String,
    pub audit: AuditRecord,
}

/// One data key generation's use (for `secretd key status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUsage {
    pub generation: u32,
    pub created_at: i64,
    pub live_versions: i64,
}

/// A live version's envelope as stored, for `secretd key rewrap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRow {
    pub path: String,
    pub version: i64,
    pub envelope: Vec<u8>,
}

/// Replace `old` by `new` as the envelope of `path`/`version`, only if the
/// row still holds exactly `old` (compare-and-swap: a version deleted or
/// re-sealed meanwhile is left as it is).
#[derive(Debug, Clone)]
pub struct EnvelopeSwap {
    pub path: String,
    pub version: i64,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

/// One secret in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListItem {
    pub path: String,
    pub latest_version: i64,
    /// Creation time of the latest live version, ms.
    pub updated_at: i64,
}

/// One version's metadata (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMeta {
    pub version: i64,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
    pub created_by: Option<String>,
}

/// A managed token as stored (its SHA-256 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub hash: Vec<u8>,
    pub role: String,
    /// Canonical scope prefixes, one per line.
    pub scopes: String,
    pub created_at: i64,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Every row of a store, as stored: envelopes are copied, never opened.
/// Used by `secretd migrate`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dump {
    pub secrets: Vec<SecretRow>,
    pub versions: Vec<VersionRow>,
    pub data_keys: Vec<KeyRow>,
    pub tokens: Vec<TokenRow>,
    pub audit: Vec<ChainedRecord>,
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
    pub created_by: Option<String>,
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
        self.tokens.sort_by(|a, b| a.id.cmp(&b.id));
        self.audit.sort_by_key(|r| r.seq);
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
            field(v.created_by.as_deref().unwrap_or("").as_bytes());
        }
        for t in &d.tokens {
            field(b"token");
            for s in [&t.id, &t.name, &t.role, &t.scopes, &t.created_by] {
                field(s.as_bytes());
            }
            field(&t.hash);
            for n in [
                Some(t.created_at),
                t.expires_at,
                t.last_used_at,
                t.revoked_at,
            ] {
                field(&n.unwrap_or(-1).to_be_bytes());
            }
        }
        for r in &d.audit {
            field(b"audit");
            field(&r.seq.to_be_bytes());
            field(&r.prev_hash);
            field(&r.hash);
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
    /// Sets the key that chains audit records (unwrapped with the master key);
    /// writes that carry audit records fail until it is set. Set once.
    fn set_audit_key(&self, key: std::sync::Arc<crate::crypto::AuditKey>);

    /// Allocates the next version of `path`, seals the value for it and
    /// stores it durably. Returns the new version. Refuses with
    /// [`StoreError::NewerDataKey`], writing nothing, if the transaction
    /// sees a data key generation newer than the sealer's
    /// ([`Sealer::check_newest`]).
    fn put(
        &self,
        path: SecretPath,
        seal: Sealer,
        mode: PutMode,
        ctx: WriteCtx,
    ) -> BoxFuture<'_, Result<Version, StoreError>>;

    /// The newest live version of `path` (`version: None`) or that exact
    /// version if it is live. `None` if there is no such live version.
    fn get<'a>(
        &'a self,
        path: &'a SecretPath,
        version: Option<Version>,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, StoreError>>;

    /// Tombstones every live version of `path` (`version: None`) or that one
    /// version. Returns the versions deleted; empty if nothing was live.
    /// The audit record in `ctx` is committed only if something was deleted.
    fn delete(
        &self,
        path: SecretPath,
        version: Option<Version>,
        ctx: WriteCtx,
    ) -> BoxFuture<'_, Result<Vec<Version>, StoreError>>;

    /// Secrets strictly below `prefix` (or every secret for the root) with a
    /// live version, in byte order of path, after `after`, at most `limit`.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListItem>, StoreError>>;

    /// Every version of `path`, live or deleted, oldest first.
    fn metadata<'a>(
        &'a self,
        path: &'a SecretPath,
    ) -> BoxFuture<'a, Result<Vec<VersionMeta>, StoreError>>;

    /// Appends records to the audit chain. Committed before returning, but
    /// without its own fsync: these are records of reads and refusals (on
    /// PostgreSQL; the embedded store's go to the access log) and the access
    /// log's anchors, and the next durable commit syncs them. Called once per
    /// request: backends fold concurrent calls into shared transactions.
    fn append_audit(&self, records: Vec<AuditRecord>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Chained records with `seq > after`, in order, at most `limit`.
    fn audit_page(
        &self,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ChainedRecord>, StoreError>>;

    /// Stores a new token (with its audit record); [`StoreError::Conflict`]
    /// if the name is taken.
    fn create_token(
        &self,
        token: TokenRow,
        audit: AuditRecord,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The token with this SHA-256, revoked or not.
    fn token_by_hash<'a>(
        &'a self,
        hash: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<TokenRow>, StoreError>>;

    /// Every token.
    fn tokens(&self) -> BoxFuture<'_, Result<Vec<TokenRow>, StoreError>>;

    /// Revokes the live token with this id (with its audit record); `None`
    /// if there is no such unrevoked token (and no record is written).
    fn revoke_token(
        &self,
        id: String,
        audit: AuditRecord,
    ) -> BoxFuture<'_, Result<Option<TokenRow>, StoreError>>;

    /// Records that a token was used (best effort, throttled by the caller).
    fn touch_token(&self, id: String, at: i64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The wrapped data keys, every generation.
    fn data_keys(&self) -> BoxFuture<'_, Result<Vec<WrappedKey>, StoreError>>;

    /// The newest data key generation (0 if none).
    fn latest_generation(&self) -> BoxFuture<'_, Result<u32, StoreError>>;

    /// Per generation: when its key was created and how many live versions
    /// it seals (for `secretd key status`).
    fn key_usage(&self) -> BoxFuture<'_, Result<Vec<KeyUsage>, StoreError>>;

    /// Replaces every wrapped data key and the wrapped audit key at once (a
    /// rekey). Fails if the set of generations changed meanwhile.
    fn rekey(
        &self,
        keys: Vec<WrappedKey>,
        audit_wrapped: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Live versions whose envelope names a generation below `generation`,
    /// ordered by (path bytes, version) and strictly after `after` (keyset
    /// pagination; start with `("", 0)`), at most `limit`. Tombstones have
    /// no envelope and never appear.
    fn sealed_below<'a>(
        &'a self,
        generation: u32,
        after: (&'a str, i64),
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SealedRow>, StoreError>>;

    /// Applies every swap whose row still holds its `old` envelope, in one
    /// short durable transaction; returns how many were applied.
    fn swap_envelopes(&self, swaps: Vec<EnvelopeSwap>) -> BoxFuture<'_, Result<u64, StoreError>>;

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

    /// Secrets with a live version, and live versions (for `/metrics`).
    fn counts(&self) -> BoxFuture<'_, Result<(i64, i64), StoreError>>;

    /// Cheap round trip proving the store answers (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}
