//! The one service object: store + keyring + limits + audit stream. HTTP
//! handlers and the CLI both call it; it knows nothing about HTTP.
//!
//! Every operation takes the caller's [`RequestCtx`] and checks it with
//! `authz` on the same parsed path the store will use. Successful writes
//! carry their audit record into the store's transaction; everything else
//! is audited by the caller through [`Service::audit`] (the store batches).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zeroize::{Zeroize, Zeroizing};

use crate::access_log::AccessLog;
use crate::audit::AuditRecord;
use crate::auth::KeyHash;
use crate::authz::{Action, Denied, Principal, Role, Scope};
use crate::crypto::{Keyring, MasterKey, random_bytes};
use crate::error::{Error, ErrorCode};
use crate::metrics::StoreTimings;
use crate::path::{PathArg, SecretPath, Version};
use crate::store::{
    ListItem, PutMode, Sealer, Store, StoreError, TokenRow, VersionMeta, WriteCtx, now_ms,
};
use crate::wipe::WipedString;

/// Domain limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted value, in bytes of UTF-8.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 64 * 1024,
        }
    }
}

/// One decrypted version of a secret.
#[derive(Debug)]
pub struct SecretValue {
    pub path: SecretPath,
    pub version: Version,
    pub value: WipedString,
    pub created_at_ms: i64,
}

/// Who is asking, for authorization and the audit record.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub principal: Principal,
    pub request_id: String,
    /// The client's address, formatted only into the records made.
    pub client: Option<std::net::SocketAddr>,
}

impl RequestCtx {
    /// The context of a CLI command run by the operator.
    pub fn operator() -> Self {
        RequestCtx {
            principal: Principal::static_key("cli"),
            request_id: "cli".into(),
            client: None,
        }
    }

    /// An audit record for this request.
    pub fn record(
        &self,
        operation: &str,
        path: Option<&str>,
        version: Option<i64>,
        status: u16,
    ) -> AuditRecord {
        AuditRecord {
            time_ms: now_ms(),
            request_id: self.request_id.clone(),
            token_id: Some(self.principal.id.clone()),
            token_name: Some(self.principal.name.clone()),
            client: self.client.map(|a| a.to_string()),
            operation: operation.to_owned(),
            path: path.map(str::to_owned),
            version,
            outcome: outcome_of(status).to_owned(),
            status,
        }
    }
}

/// The audit outcome word for an HTTP status.
pub fn outcome_of(status: u16) -> &'static str {
    match status {
        200..=299 => "ok",
        401 => "unauthenticated",
        403 => "denied",
        404 => "not_found",
        429 => "rate_limited",
        400..=499 => "invalid",
        _ => "error",
    }
}

/// A page of a listing.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<ListItem>,
    /// Pass back as `after` for the next page; `None` at the end.
    pub next_after: Option<String>,
}

/// A token as shown to admins (never the token itself).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub row: TokenRow,
    pub role: Role,
    pub scopes: Vec<Scope>,
}

/// A new token: shown once.
#[derive(Debug)]
pub struct NewToken {
    pub token: Zeroizing<String>,
    pub info: TokenInfo,
}

fn token_info(row: TokenRow) -> Result<TokenInfo, Error> {
    let corrupt = |what: &str| Error::Internal(format!("token {}: malformed {what}", row.id));
    let role = row.role.parse::<Role>().map_err(|_| corrupt("role"))?;
    let scopes = row
        .scopes
        .lines()
        .filter(|l| !l.is_empty())
        .map(Scope::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| corrupt("scope"))?;
    Ok(TokenInfo { row, role, scopes })
}

impl From<Denied> for Error {
    fn from(d: Denied) -> Self {
        Error::Forbidden(d.to_string())
    }
}

/// A copy of every committed audit record as one JSON line, for a SIEM
/// (`--audit-stream`): stdout or an append-only file.
pub struct AuditStream {
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

impl std::fmt::Debug for AuditStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditStream")
    }
}

impl AuditStream {
    /// `-` is stdout; anything else a file opened for appending (0600).
    pub fn open(target: &str) -> std::io::Result<Self> {
        let out: Box<dyn std::io::Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(target)?,
            )
        };
        Ok(AuditStream {
            out: Mutex::new(out),
        })
    }

    fn emit(&self, records: &[AuditRecord]) {
        let Ok(mut out) = self.out.lock() else { return };
        for r in records {
            if let Ok(line) = serde_json::to_string(r) {
                // The database holds the authoritative, chained copy; a
                // failing stream is logged, never fatal.
                if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                    tracing::warn!(error = %e, "audit stream write failed");
                }
            }
        }
    }
}

use std::io::Write as _;

/// The master key and the data keys it unwrapped; reloaded when another
/// process (`secretd key rotate`, another replica) adds a generation.
struct Keys {
    master: MasterKey,
    ring: std::sync::RwLock<Arc<Keyring>>,
}

pub struct Service {
    store: Arc<dyn Store>,
    /// `None` for CLI commands that never touch values (tokens, audit).
    keys: Option<Keys>,
    limits: Limits,
    stream: Option<Arc<AuditStream>>,
    /// Where reads and refusals are recorded on the embedded store (timed as
    /// the store's `append_audit`); `None`: in the store's chain
    /// ([`Store::append_audit`]).
    access: Option<(Arc<AccessLog>, Arc<StoreTimings>)>,
    /// The access log `seq` last anchored in the store's chain (-1: none).
    anchored: std::sync::atomic::AtomicI64,
    /// When each token's `last_used_at` was last written (throttle).
    touched: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("keys_loaded", &self.keys.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

/// How often `last_used_at` is written per token, at most.
const TOUCH_EVERY_MS: i64 = 60_000;

/// Times a PUT reloads the data keys because the store held a newer
/// generation than the one it sealed under. Each reload follows a rotation
/// that committed during the write, so a fourth refusal in a row (503) is
/// all but impossible; a newest key this replica cannot open fails the
/// reload itself.
const MAX_KEY_RELOADS: u32 = 3;

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        master: MasterKey,
        keyring: Keyring,
        limits: Limits,
        stream: Option<Arc<AuditStream>>,
    ) -> Self {
        Service {
            store,
            keys: Some(Keys {
                master,
                ring: std::sync::RwLock::new(Arc::new(keyring)),
            }),
            limits,
            stream,
            access: None,
            anchored: std::sync::atomic::AtomicI64::new(-1),
            touched: Mutex::new(HashMap::new()),
        }
    }

    /// Records reads and refusals in `log` instead of the store's chain.
    pub fn with_access_log(mut self, log: Arc<AccessLog>, timings: Arc<StoreTimings>) -> Self {
        self.access = Some((log, timings));
        self
    }

    /// A service for commands that manage tokens or read the audit log and
    /// never touch values: no master key needed.
    pub fn without_keys(store: Arc<dyn Store>) -> Self {
        Service {
            store,
            keys: None,
            limits: Limits::default(),
            stream: None,
            access: None,
            anchored: std::sync::atomic::AtomicI64::new(-1),
            touched: Mutex::new(HashMap::new()),
        }
    }

    fn keys(&self) -> Result<&Keys, Error> {
        self.keys
            .as_ref()
            .ok_or_else(|| Error::Internal("no keyring loaded".into()))
    }

    /// The current keyring.
    fn keyring(&self) -> Result<Arc<Keyring>, Error> {
        let keys = self.keys()?;
        keys.ring
            .read()
            .map(|r| Arc::clone(&r))
            .map_err(|_| Error::Internal("keyring lock poisoned".into()))
    }

    /// Re-reads the data keys if the store holds a newer generation than the
    /// one in memory (a rotation by another process).
    async fn refresh_keys(&self, at_least: u32) -> Result<Arc<Keyring>, Error> {
        let current = self.keyring()?;
        if current.active_generation() >= at_least {
            return Ok(current);
        }
        let keys = self.keys()?;
        let stored = self.store.data_keys().await?;
        let ring = Arc::new(
            Keyring::unwrap_available(&keys.master, &stored)
                .map_err(|e| Error::Internal(format!("reloading data keys: {e}")))?
                .0,
        );
        if let Ok(mut w) = keys.ring.write()
            && w.active_generation() < ring.active_generation()
        {
            tracing::info!(generation = ring.active_generation(), "data keys reloaded");
            *w = Arc::clone(&ring);
        }
        Ok(ring)
    }

    /// The store, for commands that walk it (audit verify, tail).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Records the access log's head in the store's chain (an anchor; see
    /// [`crate::access_log::ANCHOR_OPERATION`]) unless it was anchored
    /// already. A no-op without an access log.
    pub async fn anchor_access_log(&self) -> Result<(), Error> {
        let Some((log, _)) = &self.access else {
            return Ok(());
        };
        let failed =
            |e: crate::access_log::AccessLogError| Error::Internal(format!("access log: {e}"));
        let last = &self.anchored;
        // Nothing new since the last anchor: no sync, no record.
        let (seq, _) = log.head().map_err(failed)?;
        if last.load(std::sync::atomic::Ordering::Acquire) == seq {
            return Ok(());
        }
        let log = Arc::clone(log);
        let (seq, hash) = tokio::task::spawn_blocking(move || log.synced_head())
            .await
            .map_err(|e| Error::Internal(format!("access log sync task: {e}")))?
            .map_err(failed)?;
        self.store
            .append_audit(vec![crate::access_log::anchor_record(seq, &hash, now_ms())])
            .await?;
        last.fetch_max(seq, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Appends the audit record of a read or a refusal and waits until it is
    /// written: to the access log, or else committed to the store's chain
    /// (batched with others). Fails closed: an error here must stop the
    /// response.
    pub async fn audit(&self, record: AuditRecord) -> Result<(), Error> {
        if let Some((log, timings)) = &self.access {
            // One short write(2), in this task: nothing to wait for.
            let started = std::time::Instant::now();
            let written = log.append(std::slice::from_ref(&record));
            timings.observe("append_audit", started.elapsed());
            written.map_err(|e| StoreError::Unavailable(format!("audit append failed: {e}")))?;
            if let Some(stream) = &self.stream {
                stream.emit(std::slice::from_ref(&record));
            }
            return Ok(());
        }
        let failed = |e: StoreError| StoreError::Unavailable(format!("audit append failed: {e}"));
        // The store folds concurrent appends into shared transactions.
        let Some(stream) = self.stream.clone() else {
            self.store
                .append_audit(vec![record])
                .await
                .map_err(failed)?;
            return Ok(());
        };
        // With a SIEM stream: append and stream in a task of its own, so a
        // client that disconnects meanwhile cannot leave a committed record
        // unstreamed.
        let store = Arc::clone(&self.store);
        let task = tokio::spawn(async move {
            store.append_audit(vec![record.clone()]).await?;
            stream.emit(std::slice::from_ref(&record));
            Ok::<(), StoreError>(())
        });
        match task.await {
            Ok(r) => Ok(r.map_err(failed)?),
            Err(e) => Err(Error::Internal(format!("audit task: {e}"))),
        }
    }

    /// Stores `value` as the next version of `path`; returns that version
    /// once it (and its audit record) is on stable storage.
    pub async fn put(
        &self,
        ctx: &RequestCtx,
        path: SecretPath,
        value: WipedString,
    ) -> Result<Version, Error> {
        let p = &ctx.principal;
        let mode = if p.check_secret(Action::Create, &path).is_ok() {
            PutMode::Any
        } else {
            p.check_secret(Action::WriteExisting, &path)?;
            PutMode::ExistingOnly
        };
        if value.len() > self.limits.max_value_bytes {
            return Err(Error::TooLarge {
                code: ErrorCode::ValueTooLarge,
                message: format!("value is larger than {} bytes", self.limits.max_value_bytes),
            });
        }
        let wctx = WriteCtx {
            actor: p.id.clone(),
            audit: ctx.record("secret.write", Some(path.as_str()), None, 200),
        };
        // A copy for the SIEM stream only when there is one.
        let streamed = self.stream.is_some().then(|| wctx.audit.clone());
        let value = Arc::new(value);
        // Sealed under the newest data key this process knows; the store
        // checks inside the write's transaction that the database holds no
        // newer one (a rotation by another process or replica), and if it
        // does, the keys are reloaded and the write sealed again.
        let mut keyring = self.keyring()?;
        let mut reloads = 0;
        let result = loop {
            let (ring, seal_path, value) = (Arc::clone(&keyring), path.clone(), Arc::clone(&value));
            let seal = Sealer::new(keyring.active_generation(), move |v| {
                ring.seal(&seal_path, v, value.as_bytes())
            });
            match self.store.put(path.clone(), seal, mode, wctx.clone()).await {
                Err(StoreError::NewerDataKey(g)) if reloads < MAX_KEY_RELOADS => {
                    reloads += 1;
                    keyring = self.refresh_keys(g).await?;
                }
                other => break other,
            }
        };
        if let (Ok(v), Some(mut r)) = (&result, streamed) {
            r.version = Some(v.as_i64());
            self.emit(r);
        }
        match result {
            Err(StoreError::NoLiveVersion) => Err(Denied::Role {
                have: p.role,
                need: Role::Admin,
                action: "create new secrets (this path has no live version)",
            }
            .into()),
            other => Ok(other?),
        }
    }

    /// The newest live version, or one exact live version.
    pub async fn get(
        &self,
        ctx: &RequestCtx,
        path: &SecretPath,
        version: Option<Version>,
    ) -> Result<SecretValue, Error> {
        ctx.principal.check_secret(Action::ReadValue, path)?;
        let Some(row) = self.store.get(path, version).await? else {
            return Err(Error::NotFound(match version {
                Some(_) => "this version of the secret does not exist or was deleted".into(),
                None => "the secret does not exist or has no live version".into(),
            }));
        };
        let corrupt = |detail: &str| Error::Corrupt {
            path: Some(path.clone()),
            version: Some(row.version),
            detail: detail.to_owned(),
        };
        let mut ring = self.keyring()?;
        // An envelope sealed under a generation added since start-up: reload.
        if let Some(g) = Keyring::envelope_generation(&row.envelope)
            && !ring.has_generation(g)
        {
            ring = self.refresh_keys(g).await?;
        }
        let mut plain = ring
            .open(path, row.version, &row.envelope)
            .map_err(|e| corrupt(&e.to_string()))?;
        // Move the bytes out of the zeroizing buffer without copying them.
        let value = String::from_utf8(std::mem::take(&mut *plain)).map_err(|e| {
            e.into_bytes().zeroize();
            corrupt("decrypted value is not UTF-8")
        })?;
        Ok(SecretValue {
            path: path.clone(),
            version: row.version,
            value: WipedString::new(value),
            created_at_ms: row.created_at_ms,
        })
    }

    /// Deletes every live version (`None`) or one version. Returns the
    /// versions deleted; [`Error::NothingToDelete`] if none was live.
    pub async fn delete(
        &self,
        ctx: &RequestCtx,
        path: SecretPath,
        version: Option<Version>,
    ) -> Result<Vec<Version>, Error> {
        ctx.principal.check_secret(Action::Delete, &path)?;
        let message = match version {
            Some(_) => "this version of the secret does not exist or was already deleted",
            None => "the secret does not exist or has no live version",
        };
        let record = ctx.record(
            "secret.delete",
            Some(path.as_str()),
            version.map(Version::as_i64),
            200,
        );
        let deleted = self
            .store
            .delete(
                path,
                version,
                WriteCtx {
                    actor: ctx.principal.id.clone(),
                    audit: record.clone(),
                },
            )
            .await?;
        if deleted.is_empty() {
            return Err(Error::NothingToDelete(message.into()));
        }
        self.emit(record);
        Ok(deleted)
    }

    /// The secrets below `prefix` the caller may see, `limit` at most, after
    /// the path `after`.
    pub async fn list(
        &self,
        ctx: &RequestCtx,
        prefix: &PathArg,
        after: Option<String>,
        limit: usize,
    ) -> Result<ListPage, Error> {
        let p = &ctx.principal;
        p.check_role(Action::See)?;
        let prefix = match prefix {
            PathArg::Root => Scope::root(),
            PathArg::Secret(s) => Scope::parse(s.as_str())?,
        };
        // A prefix disjoint from every scope can show nothing: say so.
        if p.scopes.is_empty() {
            return Err(Denied::NoScope.into());
        }
        if !p
            .scopes
            .iter()
            .any(|s| s.contains(&prefix) || prefix.contains(s))
        {
            return Err(Denied::Scope.into());
        }
        // Only query the parts of the table the caller may see: for every
        // scope overlapping the prefix, the narrower of the two, without
        // nested duplicates. Each such prefix `r` is two disjoint pieces:
        // the secret at `r` itself (unless `r` is the listed prefix: a
        // listing shows what is below it) and its children ("r/" .. "r0").
        // Pieces of non-nested prefixes never overlap, so visiting them in
        // order of their lower bound keeps the listing sorted.
        let mut ranges: Vec<Scope> = p
            .scopes
            .iter()
            .filter_map(|s| {
                if prefix.contains(s) {
                    Some(s.clone())
                } else if s.contains(&prefix) {
                    Some(prefix.clone())
                } else {
                    None
                }
            })
            .collect();
        ranges.sort();
        ranges.dedup();
        let snapshot = ranges.clone();
        ranges.retain(|r| !snapshot.iter().any(|o| o != r && o.contains(r)));
        enum Piece {
            Exact(String),
            Children(Scope),
        }
        let mut pieces: Vec<(String, Piece)> = Vec::new();
        for r in ranges {
            if r != prefix {
                pieces.push((r.as_str().to_owned(), Piece::Exact(r.as_str().to_owned())));
            }
            pieces.push((format!("{r}/"), Piece::Children(r)));
        }
        pieces.sort_by(|a, b| a.0.cmp(&b.0));
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut after = after;
        for (_, piece) in &pieces {
            match piece {
                Piece::Exact(path) => {
                    if after.as_deref().is_some_and(|a| a >= path.as_str()) {
                        continue;
                    }
                    if let Some(item) = self.exact_item(path).await? {
                        after = Some(item.path.clone());
                        items.push(item);
                    }
                }
                Piece::Children(range) => {
                    // Skip a range wholly before the cursor.
                    if after
                        .as_deref()
                        .is_some_and(|a| a >= format!("{range}0").as_str())
                    {
                        continue;
                    }
                    loop {
                        let want = limit - items.len();
                        let batch = self
                            .store
                            .list(range.as_str(), after.as_deref(), want)
                            .await?;
                        let exhausted = batch.len() < want;
                        for item in batch {
                            after = Some(item.path.clone());
                            if p.check_scope(&item.path).is_ok() {
                                items.push(item);
                            }
                        }
                        if items.len() == limit || exhausted {
                            break;
                        }
                    }
                }
            }
            if items.len() == limit {
                return Ok(ListPage {
                    items,
                    next_after: after,
                });
            }
        }
        Ok(ListPage {
            items,
            next_after: None,
        })
    }

    /// The listing entry of the secret at exactly `path`, if it has a live
    /// version.
    async fn exact_item(&self, path: &str) -> Result<Option<ListItem>, Error> {
        let Ok(sp) = SecretPath::parse(path) else {
            return Ok(None);
        };
        // The newest live version is one indexed read (cached on SQLite);
        // the full version history is not needed.
        Ok(self.store.get(&sp, None).await?.map(|v| ListItem {
            path: path.to_owned(),
            latest_version: v.version.as_i64(),
            updated_at: v.created_at_ms,
        }))
    }

    /// Every version of a secret, without values.
    pub async fn metadata(
        &self,
        ctx: &RequestCtx,
        path: &SecretPath,
    ) -> Result<Vec<VersionMeta>, Error> {
        ctx.principal.check_secret(Action::See, path)?;
        let versions = self.store.metadata(path).await?;
        if versions.is_empty() {
            return Err(Error::NotFound("the secret does not exist".into()));
        }
        Ok(versions)
    }

    /// The principal a managed token authenticates as: `None` if unknown,
    /// revoked or expired (all the same to the caller).
    pub async fn principal_for_token(&self, presented: &[u8]) -> Result<Option<Principal>, Error> {
        let hash = KeyHash::of(presented);
        let Some(row) = self.store.token_by_hash(hash.as_bytes()).await? else {
            return Ok(None);
        };
        let now = now_ms();
        if row.revoked_at.is_some() || row.expires_at.is_some_and(|e| e <= now) {
            return Ok(None);
        }
        let info = token_info(row)?;
        self.touch(&info.row.id, now);
        Ok(Some(Principal {
            expires_at: info.row.expires_at,
            id: info.row.id,
            name: info.row.name,
            role: info.role,
            scopes: info.scopes,
        }))
    }

    /// Writes `last_used_at`, at most once a minute per token, off the
    /// request path.
    fn touch(&self, id: &str, now: i64) {
        let due = match self.touched.lock() {
            Ok(mut m) => {
                if m.len() > 100_000 {
                    m.clear();
                }
                let last = m.get(id).copied().unwrap_or(i64::MIN);
                let due = now.saturating_sub(last) >= TOUCH_EVERY_MS;
                if due {
                    m.insert(id.to_owned(), now);
                }
                due
            }
            Err(_) => false,
        };
        if due {
            let store = Arc::clone(&self.store);
            let id = id.to_owned();
            tokio::spawn(async move {
                if let Err(e) = store.touch_token(id, now).await {
                    tracing::debug!(error = %e, "could not record token use");
                }
            });
        }
    }

    /// Creates a token with `role` over `scopes`, within the caller's own
    /// scope. The token is returned once; only its hash is stored.
    pub async fn create_token(
        &self,
        ctx: &RequestCtx,
        name: &str,
        role: Role,
        scopes: Vec<Scope>,
        ttl: Option<Duration>,
    ) -> Result<NewToken, Error> {
        let p = &ctx.principal;
        p.check_role(Action::ManageTokens)?;
        if p.scopes.is_empty() {
            return Err(Denied::NoScope.into());
        }
        if let Some(s) = scopes.iter().find(|s| !p.covers_scope(s)) {
            return Err(Error::Forbidden(format!(
                "scope {s} is outside this token's scope"
            )));
        }
        validate_token_name(name)?;
        let mut raw = Zeroizing::new([0u8; 32]);
        random_bytes(raw.as_mut()).map_err(|e| Error::Internal(e.to_string()))?;
        let mut token = Zeroizing::new(String::with_capacity(47));
        token.push_str("sdt_");
        base64::Engine::encode_string(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            raw.as_ref(),
            &mut token,
        );
        let mut idb = [0u8; 8];
        random_bytes(&mut idb).map_err(|e| Error::Internal(e.to_string()))?;
        let now = now_ms();
        let ttl_ms = ttl.map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
        // A token never outlives the token that created it.
        let expires_at = match (ttl_ms.map(|t| now.saturating_add(t)), p.expires_at) {
            (Some(want), Some(cap)) => Some(want.min(cap)),
            (None, cap) => cap,
            (want, None) => want,
        };
        let row = TokenRow {
            id: format!("tok_{}", crate::audit::to_hex(&idb)),
            name: name.to_owned(),
            hash: KeyHash::of(token.as_bytes()).as_bytes().to_vec(),
            role: role.as_str().to_owned(),
            scopes: scopes
                .iter()
                .map(Scope::as_str)
                .collect::<Vec<_>>()
                .join("\n"),
            created_at: now,
            created_by: p.id.clone(),
            expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        let mut record = ctx.record("token.create", None, None, 201);
        record.path = Some(format!("token:{}", row.id));
        match self.store.create_token(row.clone(), record.clone()).await {
            Err(StoreError::Conflict(m)) => return Err(Error::Conflict(m)),
            other => other?,
        }
        self.emit(record);
        Ok(NewToken {
            token,
            info: TokenInfo { row, role, scopes },
        })
    }

    /// Tokens whose every scope lies within the caller's scope.
    pub async fn list_tokens(&self, ctx: &RequestCtx) -> Result<Vec<TokenInfo>, Error> {
        ctx.principal.check_role(Action::ManageTokens)?;
        visible_to(&ctx.principal, self.store.tokens().await?)
    }

    /// Revokes a token by id (or, failing that, by name) if the caller may
    /// see it, then every unrevoked token it created, recursively.
    pub async fn revoke_token(
        &self,
        ctx: &RequestCtx,
        id_or_name: &str,
    ) -> Result<TokenInfo, Error> {
        ctx.principal.check_role(Action::ManageTokens)?;
        // One read of the table serves both the lookup and the cascade.
        let all = self.store.tokens().await?;
        let visible = visible_to(&ctx.principal, all.clone())?;
        let found = visible
            .iter()
            .find(|t| t.row.id == id_or_name)
            .or_else(|| visible.iter().find(|t| t.row.name == id_or_name))
            .cloned();
        let Some(t) = found else {
            return Err(Error::NotFound(
                "no such token within this token's scope".into(),
            ));
        };
        // Revoke the token unless already revoked, then (also when it was, so
        // a cascade cut short by an outage can be finished by retrying) every
        // live token it created, recursively.
        let revoked = if t.row.revoked_at.is_none() {
            self.revoke_one(ctx, &t.row.id).await?
        } else {
            None
        };
        let mut cascaded = 0;
        let mut queue = vec![t.row.id.clone()];
        let mut seen = std::collections::HashSet::new();
        while let Some(parent) = queue.pop() {
            if !seen.insert(parent.clone()) {
                continue;
            }
            for child in all.iter().filter(|c| c.created_by == parent) {
                if child.revoked_at.is_none() && self.revoke_one(ctx, &child.id).await?.is_some() {
                    cascaded += 1;
                }
                queue.push(child.id.clone());
            }
        }
        match revoked {
            Some(info) => Ok(info),
            None if cascaded > 0 => Ok(t),
            None => Err(Error::NotFound("the token is already revoked".into())),
        }
    }

    async fn revoke_one(&self, ctx: &RequestCtx, id: &str) -> Result<Option<TokenInfo>, Error> {
        let mut record = ctx.record("token.revoke", None, None, 200);
        record.path = Some(format!("token:{id}"));
        match self
            .store
            .revoke_token(id.to_owned(), record.clone())
            .await?
        {
            Some(row) => {
                self.emit(record);
                Ok(Some(token_info(row)?))
            }
            None => Ok(None),
        }
    }

    /// Copies a record committed with its write to the audit stream.
    fn emit(&self, record: AuditRecord) {
        if let Some(s) = &self.stream {
            s.emit(std::slice::from_ref(&record));
        }
    }

    /// Store figures for `/metrics`.
    pub async fn gauges(&self) -> crate::metrics::StoreGauges {
        match self.store.counts().await {
            Ok((secrets, live_versions)) => crate::metrics::StoreGauges {
                secrets,
                live_versions,
                ready: true,
            },
            Err(_) => crate::metrics::StoreGauges::default(),
        }
    }

    /// Whether the store answers (for `/readyz`).
    /// Ready to serve: the store answers, and this replica can seal new
    /// values under the store's newest data key (a generation added under
    /// another master key, or an altered key row, would fail every write).
    pub async fn ready(&self) -> Result<(), Error> {
        self.store.ping().await?;
        if self.keys.is_some() {
            let latest = self.store.latest_generation().await?;
            let unusable = |detail: String| {
                Error::Unavailable(format!(
                    "data key generation {latest} does not open under this replica's master key: {detail}"
                ))
            };
            let ring = self
                .refresh_keys(latest)
                .await
                .map_err(|e| unusable(e.to_string()))?;
            if ring.active_generation() < latest {
                return Err(unusable("not loaded".into()));
            }
        }
        Ok(())
    }
}

/// The tokens `p` may see: those inside its scope, those it created, and
/// (to a global admin) everything. A token with no scope is inside nobody's
/// scope but a global admin's or its creator's.
fn visible_to(p: &Principal, rows: Vec<TokenRow>) -> Result<Vec<TokenInfo>, Error> {
    let mut out = Vec::new();
    for row in rows {
        let info = token_info(row)?;
        let inside = !info.scopes.is_empty() && info.scopes.iter().all(|s| p.covers_scope(s));
        if inside || info.row.created_by == p.id || p.is_global() {
            out.push(info);
        }
    }
    Ok(out)
}

fn validate_token_name(name: &str) -> Result<(), Error> {
    if name.starts_with("tok_") {
        // Ids look like that: a name must never be mistaken for one.
        return Err(Error::bad_request(
            ErrorCode::InvalidField,
            "token names must not start with tok_",
        ));
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(
            ErrorCode::InvalidField,
            "token name must be 1-64 characters of A-Z a-z 0-9 - _ . @",
        ))
    }
}
