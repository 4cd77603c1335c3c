//! The PostgreSQL store: many stateless replicas on one database.
//!
//! * Versions are allocated by `INSERT ... ON CONFLICT (path) DO UPDATE SET
//!   last_version = last_version + n RETURNING` (n: the batch's PUTs to
//!   that path) inside the write transaction: the row lock serialises writers of one path across
//!   replicas, so versions are distinct and contiguous, and a rolled-back
//!   write gives its number back.
//! * Serialization failures and deadlocks (SQLSTATE 40001, 40P01) are
//!   retried, re-sealing for the version the retry allocates.
//! * PUTs are group-committed: a task folds the PUTs queued while the
//!   previous batch ran into one transaction, each step one statement for
//!   all of them (live-version check, upsert of the paths, version rows),
//!   then one audit append and one COMMIT, so the audit chain's lock is
//!   held once per batch, not once per PUT. Rows are locked in path order, so replicas' batches do
//!   not deadlock. A batch that fails before COMMIT runs its PUTs one by
//!   one; one whose COMMIT got no answer fails them all (never re-applied).
//! * Point reads are batched the same way: a task folds the GETs queued
//!   while earlier batches ran into one `SELECT` over `UNNEST` of their
//!   paths, with a few batches in flight at once. PostgreSQL's cost per
//!   statement (a backend woken, a plan run, a round trip) is paid once per
//!   batch, not once per GET. A GET that arrives after a write was
//!   acknowledged is in a batch sent after it, so it sees the write.
//! * A PUT batch reads the newest data-key generation in its transaction
//!   (pipelined with its other first statement); a PUT sealed under an
//!   older one is refused with [`StoreError::NewerDataKey`] and sealed again
//!   by the service. Adding a data key takes the table's ACCESS EXCLUSIVE
//!   lock, so it waits for batches that read the old generation and later
//!   batches wait for it.
//! * Every session runs with `synchronous_commit = on` (a 2xx means the
//!   commit reached the WAL on disk) and a `statement_timeout`; every
//!   operation also has a client-side deadline, so a dead network answers
//!   503 instead of hanging.
//! * Connection loss, pool exhaustion and timeouts are
//!   [`StoreError::Unavailable`] (HTTP 503); the pool drops closed
//!   connections and reconnects by itself when the database is back.
//!
//! Postgres-specific: `pg_advisory_xact_lock` serialises migrations started by
//! several replicas at once, and `BIGSERIAL` ids. Everything else is portable
//! SQL.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

use super::{
    BoxFuture, Dump, KeyRow, ListItem, PutMode, Sealer, SecretRow, Store, StoreError,
    StoredVersion, TokenRow, VersionMeta, VersionRow, WriteCtx, db_version, now_ms, version_range,
};
use crate::audit::{self, AuditRecord, ChainedRecord};
use crate::crypto::AuditKey;
use crate::crypto::WrappedKey;
use crate::path::{SecretPath, Version};

/// Migrations, in order; `secretd_schema` records which ran.
/// Never edit one that has shipped: add a new file.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_tokens_audit.sql"),
];

/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x5ec7_e7d0_0001;

/// How often a transaction that hit a serialization failure is retried.
const MAX_RETRIES: u32 = 8;

/// Pool and timeout settings.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// Most connections per replica.
    pub pool_size: usize,
    /// Longest wait for a free connection (or a new one) before 503.
    pub acquire_timeout: Duration,
    /// Server-side `statement_timeout`.
    pub statement_timeout: Duration,
    /// Extra CA certificates (PEM) for `sslmode=verify-full`/`verify-ca`.
    pub ca_file: Option<PathBuf>,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            pool_size: 16,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }
}

pub struct PgStore {
    db: Arc<Db>,
    /// PUTs for the group-commit task ([`Db::run_puts`]).
    puts: tokio::sync::mpsc::UnboundedSender<PutJob>,
    /// Audit records of reads and refusals for [`Db::run_audits`].
    audits: tokio::sync::mpsc::UnboundedSender<AuditJob>,
    /// Point reads for [`Db::run_reads`].
    reads: tokio::sync::mpsc::UnboundedSender<ReadJob>,
}

/// The pool and what every operation needs; shared with the group-commit
/// task.
struct Db {
    /// Chains audit records; set once the master key is known.
    audit_key: std::sync::OnceLock<Arc<AuditKey>>,
    pool: Pool,
    /// Client-side deadline for one whole operation.
    op_timeout: Duration,
}

/// One PUT waiting for the group-commit task.
struct PutJob {
    path: SecretPath,
    seal: Sealer,
    mode: PutMode,
    ctx: WriteCtx,
    reply: tokio::sync::oneshot::Sender<Result<Version, StoreError>>,
}

/// Most PUTs folded into one PostgreSQL transaction.
const MAX_PUT_BATCH: usize = 64;

/// Audit records waiting for [`Db::run_audits`].
type AuditJob = (
    Vec<AuditRecord>,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

/// One GET waiting for [`Db::run_reads`].
struct ReadJob {
    path: SecretPath,
    version: Option<Version>,
    reply: tokio::sync::oneshot::Sender<Result<Option<StoredVersion>, StoreError>>,
}

/// Most GETs folded into one `SELECT`.
const MAX_READ_BATCH: usize = 256;

/// Read batches in flight at once. More hardly helps: a batch is one
/// backend's work, and while they all run the next batch fills up.
const READ_BATCHES: usize = 2;

/// Most audit records appended in one transaction.
const MAX_AUDIT_BATCH: usize = 1024;

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.db.pool.status())
            .finish()
    }
}

/// Whether an error means "the database is not reachable right now".
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true, // I/O, TLS or protocol error on the connection
        Some(c) => {
            let s = c.code();
            s.starts_with("08") // connection exception
                || s.starts_with("57P") // admin/crash shutdown, cannot connect now
                || *c == SqlState::QUERY_CANCELED // statement_timeout
                || *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
        }
    }
}

fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// The error and its causes, e.g. "error performing TLS handshake: invalid
/// peer certificate: UnknownIssuer".
fn describe(e: &tokio_postgres::Error) -> String {
    // A server error's DETAIL can quote row contents (a failing row, a
    // duplicate key: envelopes, hashes); keep only severity, message, code.
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

fn map_pg(e: tokio_postgres::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(format!("database: {}", describe(&e)))
    } else {
        StoreError::Backend(format!("database: {}", describe(&e)))
    }
}

fn map_pool(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(_) => {
            StoreError::Unavailable("timed out waiting for a database connection".into())
        }
        PoolError::Backend(e) => map_pg(e),
        other => StoreError::Unavailable(format!("database pool: {other}")),
    }
}

/// A transaction attempt's failure: retry it, or give up with this error.
enum TxError {
    Retry(tokio_postgres::Error),
    Fail(StoreError),
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_retryable(&e) {
            TxError::Retry(e)
        } else {
            TxError::Fail(map_pg(e))
        }
    }
}

fn tx_err(e: TxError) -> StoreError {
    match e {
        TxError::Retry(e) => map_pg(e),
        TxError::Fail(e) => e,
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Fail(e)
    }
}

impl From<crate::crypto::CryptoError> for TxError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        TxError::Fail(StoreError::Seal(e))
    }
}

/// TLS for the database connection, following the URL's `sslmode`:
/// `disable` none; `prefer` / `require` encrypt without verifying the server
/// certificate (libpq's meaning); `verify-ca` / `verify-full` verify the
/// certificate chain and host name against the Mozilla roots and `ca_file`.
fn tls_config(verify: bool, ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS setup: {e}")))?;
    if !verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertVerification(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(f) = ca_file {
        for cert in CertificateDer::pem_file_iter(f)
            .map_err(|e| StoreError::Backend(format!("reading {}: {e}", f.display())))?
        {
            let cert =
                cert.map_err(|e| StoreError::Backend(format!("reading {}: {e}", f.display())))?;
            roots
                .add(cert)
                .map_err(|e| StoreError::Backend(format!("CA in {}: {e}", f.display())))?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `sslmode=require` semantics: the channel is encrypted and the server
/// proves possession of its key, but its certificate is not checked against
/// a CA (use `verify-full` for that).
#[derive(Debug)]
struct NoCertVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoCertVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether `s` names a PostgreSQL database rather than a data dir.
pub fn is_database_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

impl PgStore {
    /// Connects, checks the database answers, and runs migrations (under an
    /// advisory lock, so replicas starting together do not race).
    pub async fn connect(url: &str, settings: &PgSettings) -> Result<Self, StoreError> {
        // tokio-postgres knows disable/prefer/require; verify-* means
        // "require, and verify the certificate".
        let verify = url.contains("sslmode=verify-full") || url.contains("sslmode=verify-ca");
        let url = url
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
        let mut cfg = tokio_postgres::Config::from_str(&url)
            .map_err(|e| StoreError::Backend(format!("invalid database URL: {e}")))?;
        let mut options = cfg.get_options().unwrap_or("").to_owned();
        options.push_str(&format!(
            " -c synchronous_commit=on -c plan_cache_mode=force_generic_plan -c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            settings.statement_timeout.as_millis(),
            (settings.statement_timeout * 2).as_millis()
        ));
        cfg.options(options.trim().to_owned());
        cfg.application_name("secretd");
        cfg.connect_timeout(settings.acquire_timeout);
        cfg.keepalives(true);
        cfg.keepalives_idle(Duration::from_secs(30));
        cfg.tcp_user_timeout(settings.statement_timeout + settings.acquire_timeout);
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
            verify,
            settings.ca_file.as_ref(),
        )?);
        let mgr = Manager::from_config(
            cfg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(settings.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.acquire_timeout))
            .create_timeout(Some(settings.acquire_timeout))
            .recycle_timeout(Some(settings.acquire_timeout))
            .build()
            .map_err(|e| StoreError::Backend(format!("database pool: {e}")))?;
        let db = Arc::new(Db {
            audit_key: std::sync::OnceLock::new(),
            pool,
            op_timeout: settings.statement_timeout + settings.acquire_timeout,
        });
        db.migrate().await?;
        let (puts, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(Arc::clone(&db).run_puts(rx));
        let (audits, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(Arc::clone(&db).run_audits(rx));
        let (reads, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(Arc::clone(&db).run_reads(rx));
        Ok(PgStore {
            db,
            puts,
            audits,
            reads,
        })
    }
}

impl Db {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(map_pool)?;
        let tx = client.transaction().await.map_err(map_pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(map_pg)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS secretd_schema (
                 version    BIGINT PRIMARY KEY,
                 applied_at BIGINT NOT NULL
             )",
        )
        .await
        .map_err(map_pg)?;
        let found: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM secretd_schema", &[])
            .await
            .map_err(map_pg)?
            .get(0);
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(found).unwrap_or(0))
        {
            tx.batch_execute(sql).await.map_err(map_pg)?;
            tx.execute(
                "INSERT INTO secretd_schema (version, applied_at) VALUES ($1, $2)",
                &[&(i as i64 + 1), &now_ms()],
            )
            .await
            .map_err(map_pg)?;
        }
        tx.commit().await.map_err(map_pg)
    }

    /// Runs `op` under the client-side deadline.
    async fn deadline<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.op_timeout, op)
            .await
            .map_err(|_| StoreError::Unavailable("database did not answer in time".into()))?
    }

    /// Runs one write in its own transaction, retrying serialization
    /// failures and deadlocks.
    async fn write(&self, op: WriteOp<'_>) -> Result<WriteOut, StoreError> {
        let key = self.audit_key.get().cloned();
        let (db, op, key) = (self, &op, key.as_deref());
        self.retrying(move || async move {
            let mut client = db.pool.get().await.map_err(map_pool)?;
            let tx = begin(&mut client).await.map_err(map_pg)?;
            let v = apply(&tx, op, key).await?;
            tx.commit().await?;
            Ok(v)
        })
        .await
    }

    /// Runs `attempt` under the deadline, and again (after a growing pause)
    /// when it failed on a serialization failure or deadlock, at most
    /// [`MAX_RETRIES`] times more.
    async fn retrying<T, F: Future<Output = Result<T, TxError>>>(
        &self,
        mut attempt: impl FnMut() -> F,
    ) -> Result<T, StoreError> {
        self.deadline(async {
            let mut tries = 0;
            loop {
                match attempt().await {
                    Ok(v) => return Ok(v),
                    Err(TxError::Retry(e)) if tries < MAX_RETRIES => {
                        tries += 1;
                        tracing::debug!(error = %e, tries, "retrying transaction");
                        tokio::time::sleep(Duration::from_millis(2u64 << tries.min(6))).await;
                    }
                    Err(TxError::Retry(e)) => return Err(map_pg(e)),
                    Err(TxError::Fail(e)) => return Err(e),
                }
            }
        })
        .await
    }

    /// Appends records of reads and refusals: committed before the
    /// response, without waiting for the WAL flush, in two round trips
    /// where [`Db::write`] takes four. BEGIN, the chain's lock and the read
    /// of its head go out together, then the insert and COMMIT.
    /// (tokio-postgres' `Transaction` waits for BEGIN before anything else
    /// can be sent, hence the transaction by hand, see [`OpenTx`].)
    async fn append_read_audits(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let key = self
            .audit_key
            .get()
            .cloned()
            .ok_or_else(|| StoreError::Backend("audit key not set".into()))?;
        if records.is_empty() {
            return Ok(());
        }
        let (db, key) = (self, &*key);
        self.retrying(move || async move {
            let tx = OpenTx(Some(db.pool.get().await.map_err(map_pool)?));
            let c = tx.client()?;
            // Prepared before anything is sent: a statement being prepared
            // costs a round trip and would go out after what follows it.
            let lock = c.prepare_cached(LOCK_AUDIT_CHAIN).await?;
            let head = c.prepare_cached(AUDIT_HEAD).await?;
            let insert = audit_insert(c, records.len()).await?;
            // Sent in this order on the first poll (join polls in order).
            // In READ COMMITTED the head is read with a snapshot taken after
            // the lock was granted, so it is the chain's true head.
            let (begun, locked, head) = futures_util::future::join3(
                c.batch_execute(
                    "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL synchronous_commit = off",
                ),
                c.execute(&lock, &[&AUDIT_LOCK]),
                c.query_opt(&head, &[]),
            )
            .await;
            begun?;
            locked?;
            let chained = chain_after(key, head?, records);
            // COMMIT after a failed insert ends the transaction as a
            // rollback without an error of its own: the insert's result
            // decides.
            let (inserted, committed) = futures_util::future::join(
                insert_audits(c, &insert, &chained),
                c.batch_execute("COMMIT"),
            )
            .await;
            inserted?;
            committed?;
            tx.ended();
            Ok(())
        })
        .await
    }
}

/// A pooled connection in a transaction begun by hand. Dropped before
/// [`OpenTx::ended`] (an error, or a deadline that cut its future off), it
/// closes the connection instead of returning it to the pool in the middle
/// of a transaction; PostgreSQL then rolls the transaction back.
struct OpenTx(Option<deadpool_postgres::Object>);

impl OpenTx {
    fn client(&self) -> Result<&deadpool_postgres::Object, TxError> {
        self.0.as_ref().ok_or_else(|| TxError::Fail(unexpected()))
    }

    /// The transaction ended (committed): the connection may be reused.
    fn ended(mut self) {
        drop(self.0.take());
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            drop(deadpool_postgres::Object::take(c));
        }
    }
}

impl Db {
    /// Folds the GETs queued while earlier batches ran into one query each,
    /// with at most [`READ_BATCHES`] queries in flight.
    async fn run_reads(self: Arc<Self>, mut rx: tokio::sync::mpsc::UnboundedReceiver<ReadJob>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(READ_BATCHES));
        loop {
            // A free slot first: while none is, GETs queue up for the next
            // batch.
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut jobs = queued(first, &mut rx, MAX_READ_BATCH);
            // A caller that gave up (its deadline passed) is not read for.
            jobs.retain(|j| !j.reply.is_closed());
            if jobs.is_empty() {
                continue;
            }
            let db = Arc::clone(&self);
            tokio::spawn(async move {
                let _slot = slot;
                let waiting = || jobs.iter().any(|j| !j.reply.is_closed());
                match db.shared_read(waiting, || db.read_batch(&jobs)).await {
                    Ok(mut found) => {
                        for (job, row) in jobs.into_iter().zip(found.drain(..)) {
                            let _ = job.reply.send(row);
                        }
                    }
                    Err(e) => {
                        for job in jobs {
                            let _ = job.reply.send(Err(same_error(&e)));
                        }
                    }
                }
            });
        }
    }

    /// Runs a read whose answer many callers share, under the deadline, and
    /// once more (on a fresh connection) if it found the database
    /// unavailable while a caller still waits: one broken pooled connection
    /// would otherwise fail all of them.
    async fn shared_read<T, F: Future<Output = Result<T, StoreError>>>(
        &self,
        waiting: impl Fn() -> bool,
        read: impl Fn() -> F,
    ) -> Result<T, StoreError> {
        let first = self.deadline(read()).await;
        if matches!(first, Err(StoreError::Unavailable(_))) && waiting() {
            return self.deadline(read()).await;
        }
        first
    }

    async fn latest_generation(&self) -> Result<u32, StoreError> {
        let client = self.pool.get().await.map_err(map_pool)?;
        let stmt = client
            .prepare_cached(NEWEST_GENERATION)
            .await
            .map_err(map_pg)?;
        generation(&client.query_one(&stmt, &[]).await.map_err(map_pg)?)
    }

    /// Reads the newest live version, or the one asked for, of every job's
    /// path in one statement. The answer has one entry per job, in order.
    async fn read_batch(
        &self,
        jobs: &[ReadJob],
    ) -> Result<Vec<Result<Option<StoredVersion>, StoreError>>, StoreError> {
        let client = self.pool.get().await.map_err(map_pool)?;
        let paths: Vec<&str> = jobs.iter().map(|j| j.path.as_str()).collect();
        let (lo, hi): (Vec<i64>, Vec<i64>) = jobs.iter().map(|j| version_range(j.version)).unzip();
        let rows = async {
            let stmt = client
                .prepare_cached(
                    // Each job asks for the newest live version within
                    // [lo, hi] (one version, or all of them): a range the index
                    // bounds, where `version IS NULL OR version = x` would walk
                    // back over every newer version under a generic plan.
                    "SELECT q.i, v.version, v.envelope, v.created_at
                     FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[]) WITH ORDINALITY AS q(path, lo, hi, i)
                     JOIN secrets s ON s.path = q.path
                     CROSS JOIN LATERAL (
                         SELECT v.version, v.envelope, v.created_at FROM versions v
                         WHERE v.secret_id = s.id AND v.version BETWEEN q.lo AND q.hi
                           AND v.envelope IS NOT NULL
                         ORDER BY v.version DESC LIMIT 1
                     ) v",
                )
                .await?;
            client.query(&stmt, &[&paths, &lo, &hi]).await
        }
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return Err(discard_if_broken(client, e)),
        };
        let mut found: Vec<Result<Option<StoredVersion>, StoreError>> =
            jobs.iter().map(|_| Ok(None)).collect();
        for r in rows {
            let i: i64 = r.get(0);
            let Some((slot, job)) = usize::try_from(i - 1)
                .ok()
                .and_then(|i| found.get_mut(i).zip(jobs.get(i)))
            else {
                return Err(StoreError::Backend(format!(
                    "a batched read answered for position {i} of {}",
                    jobs.len()
                )));
            };
            *slot = db_version(&job.path, r.get(1)).map(|version| {
                Some(StoredVersion {
                    version,
                    envelope: r.get::<_, &[u8]>(2).into(),
                    created_at_ms: r.get(3),
                })
            });
        }
        Ok(found)
    }

    /// Folds the audit records queued while the previous append ran into
    /// one transaction: one hold of the audit chain's lock for all of them.
    async fn run_audits(self: Arc<Self>, mut rx: tokio::sync::mpsc::UnboundedReceiver<AuditJob>) {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            let mut n = jobs[0].0.len();
            while n < MAX_AUDIT_BATCH {
                match rx.try_recv() {
                    Ok(job) => {
                        n += job.0.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let (records, replies): (Vec<Vec<AuditRecord>>, Vec<_>) = jobs.into_iter().unzip();
            let records: Vec<AuditRecord> = records.into_iter().flatten().collect();
            let result = self.append_read_audits(&records).await;
            for reply in replies {
                let _ = reply.send(match &result {
                    Ok(_) => Ok(()),
                    Err(e) => Err(StoreError::Unavailable(e.to_string())),
                });
            }
        }
    }

    /// The group-commit task: folds the PUTs queued while the previous
    /// batch ran into one transaction (one commit, one fsync, one hold of
    /// the audit-chain lock for all of them).
    async fn run_puts(self: Arc<Self>, mut rx: tokio::sync::mpsc::UnboundedReceiver<PutJob>) {
        while let Some(first) = rx.recv().await {
            let mut jobs = queued(first, &mut rx, MAX_PUT_BATCH);
            // A caller that gave up (its deadline passed) is not written for.
            jobs.retain(|j| !j.reply.is_closed());
            // Its own task, so that a panic fails one batch (its callers see
            // "writer stopped"), not every later PUT.
            let db = Arc::clone(&self);
            if let Err(e) = tokio::spawn(async move { db.put_batch(jobs).await }).await {
                tracing::error!(error = %e, "a batch of PUTs panicked; its writes failed");
            }
        }
    }

    async fn put_one(&self, job: PutJob) {
        if job.reply.is_closed() {
            return;
        }
        let r = self
            .write(WriteOp::Put {
                path: &job.path,
                seal: &job.seal,
                mode: job.mode,
                ctx: &job.ctx,
            })
            .await
            .and_then(|out| match out {
                WriteOut::Version(v) => Ok(v),
                _ => Err(unexpected()),
            });
        let _ = job.reply.send(r);
    }

    async fn put_batch(&self, mut jobs: Vec<PutJob>) {
        if jobs.len() <= 1 {
            for job in jobs {
                self.put_one(job).await;
            }
            return;
        }
        // Rows are locked in path order, so two replicas' batches cannot
        // deadlock (the sort is stable: one path's PUTs keep their order).
        jobs.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
        let key = self.audit_key.get().cloned();
        let mut tries = 0;
        loop {
            match self.deadline(self.try_batch(&jobs, key.as_deref())).await {
                Ok(Ok(versions)) => {
                    for (job, v) in jobs.into_iter().zip(versions) {
                        let _ = job.reply.send(v);
                    }
                    return;
                }
                Ok(Err(BatchError::Retry(e))) if tries < MAX_RETRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "retrying a batch of writes");
                    tokio::time::sleep(Duration::from_millis(2u64 << tries.min(6))).await;
                }
                // Rolled back before COMMIT: nothing of it happened, so each
                // PUT runs on its own and gets its own precise outcome.
                Ok(Err(e @ (BatchError::Retry(_) | BatchError::RolledBack(_)))) => {
                    if let BatchError::RolledBack(e) = e {
                        tracing::debug!(error = %e, "a batch of writes failed; running each on its own");
                    }
                    for job in jobs {
                        self.put_one(job).await;
                    }
                    return;
                }
                // The COMMIT's outcome is unknown (or the deadline passed):
                // never write again what may already be there.
                Ok(Err(BatchError::Commit(e))) | Err(e) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(StoreError::Unavailable(e.to_string())));
                    }
                    return;
                }
            }
        }
    }

    /// Applies every PUT in one transaction: each its version row, then all
    /// their audit records in one append. A PUT refused on its own (an
    /// editor's PUT to a path with no live version) changes nothing and
    /// gets its error; the others still commit.
    async fn try_batch(
        &self,
        jobs: &[PutJob],
        key: Option<&AuditKey>,
    ) -> Result<Result<Vec<Result<Version, StoreError>>, BatchError>, StoreError> {
        let mut client = self.pool.get().await.map_err(map_pool)?;
        let tx = match begin(&mut client).await {
            Ok(tx) => tx,
            Err(e) => return Ok(Err(BatchError::RolledBack(map_pg(e)))),
        };
        let puts: Vec<PutRow<'_>> = jobs
            .iter()
            .map(|j| PutRow {
                path: &j.path,
                seal: &j.seal,
                mode: j.mode,
                ctx: &j.ctx,
            })
            .collect();
        let rows = match put_rows(&tx, &puts).await {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(BatchError::before_commit(e))),
        };
        let mut out = Vec::with_capacity(rows.len());
        let mut records = Vec::with_capacity(rows.len());
        for r in rows {
            match r {
                Ok((v, record)) => {
                    out.push(Ok(v));
                    records.push(record);
                }
                Err(e) => out.push(Err(e)),
            }
        }
        if let Err(e) = append_audit_tx(&tx, key, &records).await {
            return Ok(Err(BatchError::before_commit(e)));
        }
        match tx.commit().await {
            Ok(()) => Ok(Ok(out)),
            Err(e) => Ok(Err(BatchError::Commit(map_pg(e)))),
        }
    }
}

/// How a batch of PUTs failed.
enum BatchError {
    /// A serialization failure or deadlock: the whole batch may run again.
    Retry(tokio_postgres::Error),
    /// Rolled back before COMMIT was sent.
    RolledBack(StoreError),
    /// COMMIT was sent and failed or got no answer: the outcome is unknown.
    Commit(StoreError),
}

impl BatchError {
    fn before_commit(e: TxError) -> Self {
        match e {
            TxError::Retry(e) => BatchError::Retry(e),
            TxError::Fail(e) => BatchError::RolledBack(e),
        }
    }
}

/// One write, applied inside a transaction by [`apply`].
enum WriteOp<'a> {
    Put {
        path: &'a SecretPath,
        seal: &'a Sealer,
        mode: PutMode,
        ctx: &'a WriteCtx,
    },
    Delete {
        path: &'a SecretPath,
        version: Option<Version>,
        ctx: &'a WriteCtx,
    },
    AddKey(&'a WrappedKey),
    InsertSetting {
        name: &'a str,
        value: &'a [u8],
    },
    CreateToken {
        token: &'a TokenRow,
        audit: &'a AuditRecord,
    },
    RevokeToken {
        id: &'a str,
        audit: &'a AuditRecord,
    },
    TouchToken {
        id: &'a str,
        at: i64,
    },
    SwapEnvelopes(&'a [super::EnvelopeSwap]),
}

enum WriteOut {
    Version(Version),
    Versions(Vec<Version>),
    Inserted(bool),
    Token(Option<TokenRow>),
    Count(u64),
    Done,
}

/// Starts a write transaction in READ COMMITTED whatever the database's
/// default: appending to the audit chain reads the head by a statement
/// after the lock, which sees the appends committed before it only if each
/// statement takes its own snapshot.
async fn begin(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await
}

/// `first` and the jobs queued behind it, at most `max` in all: the next
/// batch of a folding task.
fn queued<T>(first: T, rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>, max: usize) -> Vec<T> {
    let mut jobs = vec![first];
    while jobs.len() < max {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    jobs
}

/// The same failure for each of a batch's callers: 503 stays 503.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        StoreError::Corrupt(why) => StoreError::Corrupt(why.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// `e` as a store error. A connection `e` shows unusable is taken out of
/// the pool instead of going back to it: a retry's checkout could otherwise
/// get it again before its connection task noticed it closed (the pool's
/// fast recycling only checks that flag).
fn discard_if_broken(client: deadpool_postgres::Object, e: tokio_postgres::Error) -> StoreError {
    if is_unavailable(&e) {
        drop(deadpool_postgres::Object::take(client));
    }
    map_pg(e)
}

/// The newest data key generation (0 if none).
const NEWEST_GENERATION: &str = "SELECT COALESCE(MAX(generation), 0) FROM data_keys";

/// The generation in the first column of `row` ([`NEWEST_GENERATION`]).
fn generation(row: &tokio_postgres::Row) -> Result<u32, StoreError> {
    let g: i64 = row.get(0);
    u32::try_from(g).map_err(|_| StoreError::Corrupt(format!("data key generation {g}")))
}

/// A statement answered in a way its own SQL rules out (a bug, or a
/// schema changed behind our back).
fn unexpected() -> StoreError {
    StoreError::Backend("a statement returned an unexpected outcome".into())
}

const AUDIT_COLUMNS: &str = "seq, time, request_id, token_id, token_name, client, operation, path, version, outcome, status, prev_hash, hash";
const TOKEN_COLUMNS: &str =
    "id, name, hash, role, scopes, created_at, created_by, expires_at, last_used_at, revoked_at";

/// Key of the advisory lock that serialises appends to the audit chain
/// across replicas.
const AUDIT_LOCK: i64 = 0x5ec7_e7d0_0002;

fn read_token(r: &tokio_postgres::Row) -> TokenRow {
    TokenRow {
        id: r.get(0),
        name: r.get(1),
        hash: r.get(2),
        role: r.get(3),
        scopes: r.get(4),
        created_at: r.get(5),
        created_by: r.get(6),
        expires_at: r.get(7),
        last_used_at: r.get(8),
        revoked_at: r.get(9),
    }
}

fn read_audit(r: &tokio_postgres::Row) -> Result<ChainedRecord, StoreError> {
    let status: i32 = r.get(10);
    Ok(ChainedRecord {
        seq: r.get(0),
        record: AuditRecord {
            time_ms: r.get(1),
            request_id: r.get(2),
            token_id: r.get(3),
            token_name: r.get(4),
            client: r.get(5),
            operation: r.get(6),
            path: r.get(7),
            version: r.get(8),
            outcome: r.get(9),
            status: u16::try_from(status)
                .map_err(|_| StoreError::Corrupt(format!("audit status {status}")))?,
        },
        prev_hash: r.get(11),
        hash: r.get(12),
    })
}

/// Takes the audit chain's lock ([`AUDIT_LOCK`]) until the transaction ends.
const LOCK_AUDIT_CHAIN: &str = "SELECT pg_advisory_xact_lock($1)";

/// The audit chain's head: its last record's `seq` and hash.
const AUDIT_HEAD: &str = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1";

/// Chains `records` after the head of the log, under a lock that
/// serialises appends across replicas, and inserts them.
///
/// The lock and the read of the head are pipelined (one round trip): the
/// head is read by a statement of its own, which in READ COMMITTED takes its
/// snapshot after the lock statement returned, so it sees every append
/// committed before the lock was granted.
async fn append_audit_tx(
    tx: &deadpool_postgres::Transaction<'_>,
    key: Option<&AuditKey>,
    records: &[AuditRecord],
) -> Result<(), TxError> {
    let key = key.ok_or_else(|| TxError::Fail(StoreError::Backend("audit key not set".into())))?;
    if records.is_empty() {
        return Ok(());
    }
    // Prepared first: a statement still being prepared would be sent after
    // the ones behind it, and the pipeline's order is what makes it right.
    let lock = tx.prepare_cached(LOCK_AUDIT_CHAIN).await?;
    let head = tx.prepare_cached(AUDIT_HEAD).await?;
    let (locked, head) =
        futures_util::future::join(tx.execute(&lock, &[&AUDIT_LOCK]), tx.query_opt(&head, &[]))
            .await;
    locked?;
    let chained = chain_after(key, head?, records);
    let insert = audit_insert(tx, chained.len()).await?;
    insert_audits(tx, &insert, &chained).await?;
    Ok(())
}

/// Chains `records` after the head that [`AUDIT_HEAD`] found (none: an
/// empty log).
fn chain_after(
    key: &AuditKey,
    head: Option<tokio_postgres::Row>,
    records: &[AuditRecord],
) -> Vec<ChainedRecord> {
    let head = head.map_or((0, audit::GENESIS.to_vec()), |r| (r.get(0), r.get(1)));
    audit::chain(key, head, records.to_vec())
}

/// (Generic over deadpool's `GenericClient` by path, not by a `use`: in
/// scope, that trait's boxed methods would take precedence over the
/// clients' own everywhere in this file.)
///
/// The statement that inserts `n` chained records: one row's values, or
/// (for a batch of read records, at the same cost as one) columns of
/// arrays. Prepared apart from [`insert_audits`], so that a pipeline can
/// prepare it before anything else is sent.
async fn audit_insert<C: deadpool_postgres::GenericClient + Sync>(
    c: &C,
    n: usize,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    if n == 1 {
        c.prepare_cached(&format!(
            "INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .await
    } else {
        c.prepare_cached(&format!(
            "INSERT INTO audit_log ({AUDIT_COLUMNS})
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[],
                                  $7::TEXT[], $8::TEXT[], $9::BIGINT[], $10::TEXT[], $11::INTEGER[], $12::BYTEA[], $13::BYTEA[])"
        ))
        .await
    }
}

/// Inserts chained records with the [`audit_insert`] statement prepared
/// for `rows.len()`. Sends its one message on the first poll.
async fn insert_audits<C: deadpool_postgres::GenericClient + Sync>(
    c: &C,
    stmt: &tokio_postgres::Statement,
    rows: &[ChainedRecord],
) -> Result<u64, tokio_postgres::Error> {
    fn col<'a, T>(rows: &'a [ChainedRecord], f: impl Fn(&'a ChainedRecord) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    if let [r] = rows {
        let a = &r.record;
        return c
            .execute(
                stmt,
                &[
                    &r.seq,
                    &a.time_ms,
                    &a.request_id,
                    &a.token_id,
                    &a.token_name,
                    &a.client,
                    &a.operation,
                    &a.path,
                    &a.version,
                    &a.outcome,
                    &i32::from(a.status),
                    &r.prev_hash,
                    &r.hash,
                ],
            )
            .await;
    }
    c.execute(
        stmt,
        &[
            &col(rows, |r| r.seq),
            &col(rows, |r| r.record.time_ms),
            &col(rows, |r| r.record.request_id.as_str()),
            &col(rows, |r| r.record.token_id.as_deref()),
            &col(rows, |r| r.record.token_name.as_deref()),
            &col(rows, |r| r.record.client.as_deref()),
            &col(rows, |r| r.record.operation.as_str()),
            &col(rows, |r| r.record.path.as_deref()),
            &col(rows, |r| r.record.version),
            &col(rows, |r| r.record.outcome.as_str()),
            &col(rows, |r| i32::from(r.record.status)),
            &col(rows, |r| r.prev_hash.as_slice()),
            &col(rows, |r| r.hash.as_slice()),
        ],
    )
    .await
}

async fn insert_token(
    tx: &deadpool_postgres::Transaction<'_>,
    t: &TokenRow,
) -> Result<(), TxError> {
    let res = tx
        .execute(
            &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
            &[
                &t.id, &t.name, &t.hash, &t.role, &t.scopes, &t.created_at, &t.created_by, &t.expires_at,
                &t.last_used_at, &t.revoked_at,
            ],
        )
        .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(TxError::Fail(
            StoreError::Conflict(format!("a token named {} already exists", t.name)),
        )),
        Err(e) => Err(e.into()),
    }
}

/// One PUT for [`put_rows`].
struct PutRow<'a> {
    path: &'a SecretPath,
    seal: &'a Sealer,
    mode: PutMode,
    ctx: &'a WriteCtx,
}

/// The rows of several PUTs in one transaction, each step one statement for
/// all of them (over `UNNEST` of their values), so a batch costs a few
/// round trips and a few statements however many PUTs it holds. `puts` is
/// sorted by path: the upsert locks the paths' rows in that order, so two
/// replicas' batches cannot deadlock. Several PUTs to one path get
/// consecutive versions, in their order in `puts`.
async fn put_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    puts: &[PutRow<'_>],
) -> Result<Vec<Result<(Version, AuditRecord), StoreError>>, TxError> {
    // An editor's PUT needs a live version, and every PUT a sealer of the
    // newest data key generation (both checked before any upsert).
    let checked: Vec<&str> = puts
        .iter()
        .filter(|p| p.mode == PutMode::ExistingOnly)
        .map(|p| p.path.as_str())
        .collect();
    // Prepared first, then sent together: one round trip.
    let newest = tx.prepare_cached(NEWEST_GENERATION).await?;
    let live = tx
        .prepare_cached(
            "SELECT DISTINCT s.path FROM secrets s JOIN versions v ON v.secret_id = s.id
             WHERE s.path = ANY($1) AND v.envelope IS NOT NULL",
        )
        .await?;
    let (newest, live) = futures_util::future::join(tx.query_one(&newest, &[]), async {
        if checked.is_empty() {
            return Ok(Vec::new());
        }
        tx.query(&live, &[&checked]).await
    })
    .await;
    let newest = generation(&newest?)?;
    let live: std::collections::HashSet<String> = live?.iter().map(|r| r.get(0)).collect();
    let refused: Vec<Option<StoreError>> = puts
        .iter()
        .map(|p| match p.seal.check_newest(newest) {
            Err(e) => Some(e),
            Ok(()) if p.mode == PutMode::ExistingOnly && !live.contains(p.path.as_str()) => {
                Some(StoreError::NoLiveVersion)
            }
            Ok(()) => None,
        })
        .collect();
    // How many versions each path gets.
    let mut counts: std::collections::BTreeMap<&str, i64> = Default::default();
    for (p, _) in puts.iter().zip(&refused).filter(|(_, r)| r.is_none()) {
        *counts.entry(p.path.as_str()).or_default() += 1;
    }
    let now = now_ms();
    // Each path's row id and the version its next PUT gets: a path's n PUTs
    // get last - n + 1 ... last, in their order in `puts`.
    let mut next: std::collections::HashMap<String, (i64, i64)> =
        std::collections::HashMap::with_capacity(counts.len());
    if !counts.is_empty() {
        let upsert = tx
            .prepare_cached(
                "INSERT INTO secrets (path, last_version, created_at, updated_at)
                 SELECT p, n, $3::BIGINT, $3::BIGINT FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS t(p, n) ORDER BY p COLLATE \"C\"
                 ON CONFLICT (path) DO UPDATE
                 SET last_version = secrets.last_version + EXCLUDED.last_version, updated_at = EXCLUDED.updated_at
                 RETURNING path, id, last_version",
            )
            .await?;
        let (paths, ns): (Vec<&str>, Vec<i64>) = counts.iter().map(|(p, n)| (*p, *n)).unzip();
        for row in tx.query(&upsert, &[&paths, &ns, &now]).await? {
            let path: String = row.get(0);
            let (id, last): (i64, i64) = (row.get(1), row.get(2));
            let n = counts.get(path.as_str()).copied().unwrap_or(0);
            next.insert(path, (id, last - n + 1));
        }
    }
    let mut rows = Vec::new();
    let mut out = Vec::with_capacity(puts.len());
    for (p, refused) in puts.iter().zip(refused) {
        if let Some(e) = refused {
            out.push(Err(e));
            continue;
        }
        let (id, v) = next
            .get_mut(p.path.as_str())
            .ok_or_else(|| TxError::Fail(unexpected()))?;
        let version = db_version(p.path, *v)?;
        *v += 1;
        let id = *id;
        rows.push((id, version, p.seal.seal(version)?, p.ctx.actor.as_str()));
        let mut record = p.ctx.audit.clone();
        record.version = Some(version.as_i64());
        out.push(Ok((version, record)));
    }
    if !rows.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO versions (secret_id, version, envelope, created_at, created_by)
                 SELECT s, v, e, $4::BIGINT, c FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BYTEA[], $5::TEXT[]) AS t(s, v, e, c)",
            )
            .await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let versions: Vec<i64> = rows.iter().map(|r| r.1.as_i64()).collect();
        let envelopes: Vec<&[u8]> = rows.iter().map(|r| r.2.as_slice()).collect();
        let actors: Vec<&str> = rows.iter().map(|r| r.3).collect();
        tx.execute(&insert, &[&ids, &versions, &envelopes, &now, &actors])
            .await?;
    }
    Ok(out)
}

async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    op: &WriteOp<'_>,
    key: Option<&AuditKey>,
) -> Result<WriteOut, TxError> {
    match *op {
        WriteOp::Put {
            path,
            seal,
            mode,
            ctx,
        } => {
            let put = PutRow {
                path,
                seal,
                mode,
                ctx,
            };
            match put_rows(tx, std::slice::from_ref(&put)).await?.pop() {
                Some(Ok((version, record))) => {
                    append_audit_tx(tx, key, &[record]).await?;
                    Ok(WriteOut::Version(version))
                }
                Some(Err(e)) => Err(TxError::Fail(e)),
                None => Err(TxError::Fail(unexpected())),
            }
        }
        WriteOp::Delete { path, version, ctx } => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE versions SET envelope = NULL, deleted_at = $1
                     WHERE secret_id = (SELECT id FROM secrets WHERE path = $2)
                       AND version BETWEEN $3 AND $4 AND deleted_at IS NULL
                     RETURNING version",
                )
                .await?;
            let (lo, hi) = version_range(version);
            let rows = tx
                .query(&stmt, &[&now_ms(), &path.as_str(), &lo, &hi])
                .await?;
            let mut out = rows
                .iter()
                .map(|r| db_version(path, r.get(0)))
                .collect::<Result<Vec<_>, _>>()?;
            out.sort_unstable();
            if !out.is_empty() {
                append_audit_tx(tx, key, std::slice::from_ref(&ctx.audit)).await?;
            }
            Ok(WriteOut::Versions(out))
        }
        WriteOp::AddKey(key) => {
            // Waits for every transaction that read the newest generation
            // (a PUT batch holds the table's ACCESS SHARE lock from its
            // generation read to its commit), and makes later readers wait
            // for this one: no batch commits a value sealed under the old
            // generation after the new one is committed.
            tx.batch_execute("LOCK TABLE data_keys IN ACCESS EXCLUSIVE MODE")
                .await?;
            let n = tx
                .execute(
                    "INSERT INTO data_keys (generation, wrapped, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (generation) DO NOTHING",
                    &[&i64::from(key.generation), &key.wrapped, &now_ms()],
                )
                .await?;
            Ok(WriteOut::Inserted(n == 1))
        }
        WriteOp::InsertSetting { name, value } => {
            let n = tx
                .execute(
                    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                    &[&name, &value],
                )
                .await?;
            Ok(WriteOut::Inserted(n == 1))
        }
        WriteOp::CreateToken { token, audit } => {
            insert_token(tx, token).await?;
            append_audit_tx(tx, key, std::slice::from_ref(audit)).await?;
            Ok(WriteOut::Done)
        }
        WriteOp::RevokeToken { id, audit } => {
            let row = tx
                .query_opt(
                    &format!("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING {TOKEN_COLUMNS}"),
                    &[&now_ms(), &id],
                )
                .await?
                .map(|r| read_token(&r));
            if row.is_some() {
                append_audit_tx(tx, key, std::slice::from_ref(audit)).await?;
            }
            Ok(WriteOut::Token(row))
        }
        WriteOp::TouchToken { id, at } => {
            tx.execute(
                "UPDATE tokens SET last_used_at = $1 WHERE id = $2",
                &[&at, &id],
            )
            .await?;
            Ok(WriteOut::Done)
        }
        WriteOp::SwapEnvelopes(swaps) => {
            // Compare-and-swap per row: under READ COMMITTED a row a
            // concurrent DELETE changed first is re-checked against its new
            // (NULL) envelope and left alone.
            let stmt = tx
                .prepare_cached(
                    "UPDATE versions SET envelope = $1
                     WHERE secret_id = (SELECT id FROM secrets WHERE path = $2)
                       AND version = $3 AND envelope = $4",
                )
                .await?;
            let mut n = 0;
            for w in swaps {
                n += tx
                    .execute(&stmt, &[&w.new, &w.path, &w.version, &w.old])
                    .await?;
            }
            Ok(WriteOut::Count(n))
        }
    }
}

impl Store for PgStore {
    fn set_audit_key(&self, key: Arc<AuditKey>) {
        let _ = self.db.audit_key.set(key);
    }

    fn put(
        &self,
        path: SecretPath,
        seal: Sealer,
        mode: PutMode,
        ctx: WriteCtx,
    ) -> BoxFuture<'_, Result<Version, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.puts
                .send(PutJob {
                    path,
                    seal,
                    mode,
                    ctx,
                    reply,
                })
                .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
            // Bounded like any operation; a batch still running then may
            // yet commit this PUT (as when COMMIT's answer is lost).
            self.db
                .deadline(async {
                    rx.await
                        .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
                })
                .await
        })
    }

    fn get<'a>(
        &'a self,
        path: &'a SecretPath,
        version: Option<Version>,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, StoreError>> {
        Box::pin(self.db.deadline(async move {
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.reads
                .send(ReadJob {
                    path: path.clone(),
                    version,
                    reply,
                })
                .map_err(|_| StoreError::Unavailable("reader stopped".into()))?;
            rx.await
                .map_err(|_| StoreError::Unavailable("reader stopped".into()))?
        }))
    }

    fn delete(
        &self,
        path: SecretPath,
        version: Option<Version>,
        ctx: WriteCtx,
    ) -> BoxFuture<'_, Result<Vec<Version>, StoreError>> {
        Box::pin(async move {
            match self
                .db
                .write(WriteOp::Delete {
                    path: &path,
                    version,
                    ctx: &ctx,
                })
                .await?
            {
                WriteOut::Versions(v) => Ok(v),
                _ => Err(unexpected()),
            }
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListItem>, StoreError>> {
        // Children of `prefix` sort between "prefix/" and "prefix0" ('0'
        // follows '/'); the path column has the "C" collation (bytewise).
        let lo = format!("{prefix}/");
        let lo = match after {
            Some(a) if a > lo.as_str() => a.to_owned(),
            _ => lo,
        };
        let hi = format!("{prefix}0");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Box::pin(self.db.deadline(async move {
            let client = self.db.pool.get().await.map_err(map_pool)?;
            let stmt = client
                .prepare_cached(
                    "SELECT s.path, MAX(v.version), MAX(v.created_at)
                     FROM secrets s JOIN versions v ON v.secret_id = s.id
                     WHERE s.path > $1 AND s.path < $2 AND v.envelope IS NOT NULL
                     GROUP BY s.id, s.path ORDER BY s.path LIMIT $3",
                )
                .await
                .map_err(map_pg)?;
            let rows = client
                .query(&stmt, &[&lo, &hi, &limit])
                .await
                .map_err(map_pg)?;
            Ok(rows
                .iter()
                .map(|r| ListItem {
                    path: r.get(0),
                    latest_version: r.get(1),
                    updated_at: r.get(2),
                })
                .collect())
        }))
    }

    fn metadata<'a>(
        &'a self,
        path: &'a SecretPath,
    ) -> BoxFuture<'a, Result<Vec<VersionMeta>, StoreError>> {
        Box::pin(self.db.deadline(async move {
            let client = self.db.pool.get().await.map_err(map_pool)?;
            let rows = client
                .query(
                    "SELECT v.version, v.created_at, v.deleted_at, v.created_by
                     FROM secrets s JOIN versions v ON v.secret_id = s.id
                     WHERE s.path = $1 ORDER BY v.version",
                    &[&path.as_str()],
                )
                .await
                .map_err(map_pg)?;
            rows.iter()
                .map(|r| {
                    let m = VersionMeta {
                        version: r.get(0),
                        created_at: r.get(1),
                        deleted_at: r.get(2),
                        created_by: r.get(3),
                    };
                    db_version(path, m.version).map(|_| m)
                })
                .collect()
        }))
    }

    fn append_audit(&self, records: Vec<AuditRecord>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.audits
                .send((records, reply))
                .map_err(|_| StoreError::Unavailable("audit writer stopped".into()))?;
            rx.await
                .map_err(|_| StoreError::Unavailable("audit writer stopped".into()))?
        })
    }

    fn audit_page(
        &self,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ChainedRecord>, StoreError>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Box::pin(self.db.deadline(async move {
            let client = self.db.pool.get().await.map_err(map_pool)?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
                    ),
                    &[&after, &limit],
                )
                .await
                .map_err(map_pg)?;
            rows.iter().map(read_audit).collect()
        }))
    }

    fn create_token(
        &self,
        token: TokenRow,
        audit: AuditRecord,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.db
                .write(WriteOp::CreateToken {
                    token: &token,
                    audit: &audit,
                })
                .await
                .map(|_| ())
        })
    }

    fn token_by_hash<'a>(
        &'a self,
        hash: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<TokenRow>, StoreError>> {
        Box::pin(self.db.deadline(async move {
            let client = self.db.pool.get().await.map_err(map_pool)?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"
                ))
                .await
                .map_err(map_pg)?;
            Ok(client
                .query_opt(&stmt, &[&hash])
                .await
                .map_err(map_pg)?
                .map(|r| read_token(&r)))
        }))
    }

    fn tokens(&self) -> BoxFuture<'_, Result<Vec<TokenRow>, StoreError>> {
        Box::pin(self.db.deadline(async move {
            let client = self.db.pool.get().await.map_err(map_pool)?;
            let rows = client
                .query(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name"),
                    &[],
                )
                .await
                .map_err(map_pg)?;
            Ok(rows.iter().map(read_token).collect())
        }))
    }

    fn revoke_token(
        &self,
        id: String,
        audit: AuditRecord,
    ) -> BoxFuture<'_, Result<Option<TokenRow>, StoreError>> {
        Box::pin(async move {
            match self
                .db
                .write(WriteOp::RevokeToken {
                    id: &id,
                    audit: &audit,
                })
                .await?
            {
                WriteOut::Token(t) => Ok(t),
                _ => Err(unexpected()),
            }
        })
    }

    fn touch_token(&self, id: String, at: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.db
                .write(WriteOp::TouchToken { id: &id, at })
                .await
                .map(|_| ())
        })
    }

    fn data_keys(&self) -> BoxFuture<'_, Result<Vec<WrappedKey>, StoreError>> {
        Box::pin(self.db.deadline(async move {
            let client = self.db.pool.get().await.map_err(map_pool)?;
            let rows = client
                .query(
                    "SELECT generation, wrapped FROM data_keys ORDER BY generation",
                    &[],
                )
                .await
                .map_err(map_pg)?;
            rows.iter()
                .map(|r| {
                    let g: i64 = r.get(0);
                    let generation = u32::try_from(g).map_err(|_| {
                        StoreError::Corrupt(format!("data key generation {g} out of range"))
                    })?;
                    Ok(WrappedKey {
                        generation,
                        wrapped: r.get(1),
                    })
                })
                .collect()
        }))
    }

    fn latest_generation(&self) -> BoxFuture<'_, Result<u32, StoreError>> {
        Box::pin(self.db.deadline(self.db.latest_generation()))
    }

    fn key_usage(&self) -> BoxFuture<'_, Result<Vec<super::KeyUsage>, StoreError>> {
        Box::pin(self.db.deadline(async move {
            let client = self.db.pool.get().await.map_err(map_pool)?;
            let mut counts = std::collections::HashMap::new();
            for r in client
                .query(
                    "SELECT substring(envelope from 2 for 4), COUNT(*) FROM versions WHERE envelope IS NOT NULL GROUP BY 1",
                    &[],
                )
                .await
                .map_err(map_pg)?
            {
                let g: Vec<u8> = r.get(0);
                if let Ok(b) = <[u8; 4]>::try_from(g.as_slice()) {
                    counts.insert(u32::from_be_bytes(b), r.get::<_, i64>(1));
                }
            }
            let mut out = Vec::new();
            for r in client
                .query("SELECT generation, created_at FROM data_keys ORDER BY generation", &[])
                .await
                .map_err(map_pg)?
            {
                let g: i64 = r.get(0);
                let g = u32::try_from(g).map_err(|_| StoreError::Corrupt(format!("data key generation {g}")))?;
                out.push(super::KeyUsage { generation: g, created_at: r.get(1), live_versions: counts.get(&g).copied().unwrap_or(0) });
            }
            Ok(out)
        }))
    }

    fn rekey(
        &self,
        keys: Vec<WrappedKey>,
        audit_wrapped: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut client = self.db.pool.get().await.map_err(map_pool)?;
            let tx = client.transaction().await.map_err(map_pg)?;
            tx.batch_execute("LOCK TABLE data_keys, settings IN EXCLUSIVE MODE")
                .await
                .map_err(map_pg)?;
            let n: i64 = tx
                .query_one("SELECT COUNT(*) FROM data_keys", &[])
                .await
                .map_err(map_pg)?
                .get(0);
            if usize::try_from(n).ok() != Some(keys.len()) {
                return Err(StoreError::Conflict(
                    "data keys changed during the rekey; run it again".into(),
                ));
            }
            for k in &keys {
                let updated = tx
                    .execute(
                        "UPDATE data_keys SET wrapped = $1 WHERE generation = $2",
                        &[&k.wrapped, &i64::from(k.generation)],
                    )
                    .await
                    .map_err(map_pg)?;
                if updated != 1 {
                    return Err(StoreError::Conflict(
                        "data keys changed during the rekey; run it again".into(),
                    ));
                }
            }
            tx.execute(
                "UPDATE settings SET value = $1 WHERE name = 'audit_key_wrapped'",
                &[&audit_wrapped],
            )
            .await
            .map_err(map_pg)?;
            tx.commit().await.map_err(map_pg)
        })
    }

    fn add_data_key(&self, key: WrappedKey) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            match self.db.write(WriteOp::AddKey(&key)).await? {
                WriteOut::Inserted(b) => Ok(b),
                _ => Err(unexpected()),
            }
        })
    }

    fn sealed_below<'a>(
        &'a self,
        generation: u32,
        after: (&'a str, i64),
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<super::SealedRow>, StoreError>> {
        // Bytes 2..5 of an envelope are its generation, big-endian, so a
        // bytea comparison orders them numerically.
        let below = generation.to_be_bytes().to_vec();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Box::pin(self.db.deadline(async move {
            let client = self.db.pool.get().await.map_err(map_pool)?;
            let stmt = client
                .prepare_cached(
                    "SELECT s.path, v.version, v.envelope
                     FROM secrets s JOIN versions v ON v.secret_id = s.id
                     WHERE v.envelope IS NOT NULL AND substring(v.envelope from 2 for 4) < $1
                       AND s.path >= $2::text COLLATE \"C\"
                       AND (s.path, v.version) > ($2::text COLLATE \"C\", $3)
                     ORDER BY s.path, v.version LIMIT $4",
                )
                .await
                .map_err(map_pg)?;
            let rows = client
                .query(&stmt, &[&below, &after.0, &after.1, &limit])
                .await
                .map_err(map_pg)?;
            Ok(rows
                .iter()
                .map(|r| super::SealedRow {
                    path: r.get(0),
                    version: r.get(1),
                    envelope: r.get(2),
                })
                .collect())
        }))
    }

    fn swap_envelopes(
        &self,
        swaps: Vec<super::EnvelopeSwap>,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            match self.db.write(WriteOp::SwapEnvelopes(&swaps)).await? {
                WriteOut::Count(n) => Ok(n),
                _ => Err(unexpected()),
            }
        })
    }

    fn setting<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(self.db.deadline(async move {
            let client = self.db.pool.get().await.map_err(map_pool)?;
            let row = client
                .query_opt("SELECT value FROM settings WHERE name = $1", &[&name])
                .await
                .map_err(map_pg)?;
            Ok(row.map(|r| r.get(0)))
        }))
    }

    fn insert_setting(
        &self,
        name: &str,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let name = name.to_owned();
        Box::pin(async move {
            match self
                .db
                .write(WriteOp::InsertSetting {
                    name: &name,
                    value: &value,
                })
                .await?
            {
                WriteOut::Inserted(b) => Ok(b),
                _ => Err(unexpected()),
            }
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<(i64, i64), StoreError>> {
        Box::pin(self.db.deadline(async move {
            let client = self.db.pool.get().await.map_err(map_pool)?;
            let r = client
                .query_one(
                    "SELECT COUNT(DISTINCT secret_id), COUNT(*) FROM versions WHERE envelope IS NOT NULL",
                    &[],
                )
                .await
                .map_err(map_pg)?;
            Ok((r.get(0), r.get(1)))
        }))
    }

    fn export(&self) -> BoxFuture<'_, Result<Dump, StoreError>> {
        // No client-side deadline: a large store takes as long as it takes.
        Box::pin(async move {
            let mut client = self.db.pool.get().await.map_err(map_pool)?;
            // One snapshot for all four tables.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(map_pg)?;
            tx.batch_execute("SET LOCAL statement_timeout = 0")
                .await
                .map_err(map_pg)?;
            let mut d = Dump::default();
            for r in tx
                .query(
                    "SELECT path, last_version, created_at, updated_at FROM secrets",
                    &[],
                )
                .await
                .map_err(map_pg)?
            {
                d.secrets.push(SecretRow {
                    path: r.get(0),
                    last_version: r.get(1),
                    created_at: r.get(2),
                    updated_at: r.get(3),
                });
            }
            for r in tx
                .query(
                    "SELECT s.path, v.version, v.envelope, v.created_at, v.deleted_at, v.created_by
                     FROM versions v JOIN secrets s ON s.id = v.secret_id",
                    &[],
                )
                .await
                .map_err(map_pg)?
            {
                d.versions.push(VersionRow {
                    path: r.get(0),
                    version: r.get(1),
                    envelope: r.get(2),
                    created_at: r.get(3),
                    deleted_at: r.get(4),
                    created_by: r.get(5),
                });
            }
            for r in tx
                .query("SELECT generation, wrapped, created_at FROM data_keys", &[])
                .await
                .map_err(map_pg)?
            {
                d.data_keys.push(KeyRow {
                    generation: r.get(0),
                    wrapped: r.get(1),
                    created_at: r.get(2),
                });
            }
            for r in tx
                .query("SELECT name, value FROM settings", &[])
                .await
                .map_err(map_pg)?
            {
                d.settings.push((r.get(0), r.get(1)));
            }
            for r in tx
                .query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens"), &[])
                .await
                .map_err(map_pg)?
            {
                d.tokens.push(read_token(&r));
            }
            for r in tx
                .query(
                    &format!("SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq"),
                    &[],
                )
                .await
                .map_err(map_pg)?
            {
                d.audit.push(read_audit(&r)?);
            }
            tx.commit().await.map_err(map_pg)?;
            d.sort();
            Ok(d)
        })
    }

    fn import(&self, dump: Dump, replace: bool) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut client = self.db.pool.get().await.map_err(map_pool)?;
            let tx = client.transaction().await.map_err(map_pg)?;
            tx.batch_execute("SET LOCAL statement_timeout = 0; LOCK TABLE secrets, versions, data_keys, settings IN EXCLUSIVE MODE")
                .await
                .map_err(map_pg)?;
            let count = |r: tokio_postgres::Row| -> i64 { r.get(0) };
            let secrets = count(
                tx.query_one("SELECT COUNT(*) FROM secrets", &[])
                    .await
                    .map_err(map_pg)?,
            );
            let keys = count(
                tx.query_one("SELECT COUNT(*) FROM data_keys", &[])
                    .await
                    .map_err(map_pg)?,
            );
            if secrets + keys > 0 {
                if !replace {
                    return Err(StoreError::NotEmpty(format!(
                        "{secrets} secrets, {keys} data keys"
                    )));
                }
                tx.batch_execute("DELETE FROM versions; DELETE FROM secrets; DELETE FROM data_keys; DELETE FROM settings; DELETE FROM tokens; DELETE FROM audit_log")
                    .await
                    .map_err(map_pg)?;
            }
            let ins = tx
                .prepare(
                    "INSERT INTO secrets (path, last_version, created_at, updated_at) VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .await
                .map_err(map_pg)?;
            let mut ids = std::collections::HashMap::with_capacity(dump.secrets.len());
            for s in &dump.secrets {
                let row = tx
                    .query_one(
                        &ins,
                        &[&s.path, &s.last_version, &s.created_at, &s.updated_at],
                    )
                    .await
                    .map_err(map_pg)?;
                ids.insert(s.path.as_str(), row.get::<_, i64>(0));
            }
            let ins = tx
                .prepare(
                    "INSERT INTO versions (secret_id, version, envelope, created_at, deleted_at, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await
                .map_err(map_pg)?;
            for v in &dump.versions {
                let id = ids.get(v.path.as_str()).ok_or_else(|| {
                    StoreError::Corrupt(format!("version row for unknown path {}", v.path))
                })?;
                tx.execute(
                    &ins,
                    &[
                        id,
                        &v.version,
                        &v.envelope,
                        &v.created_at,
                        &v.deleted_at,
                        &v.created_by,
                    ],
                )
                .await
                .map_err(map_pg)?;
            }
            for k in &dump.data_keys {
                tx.execute(
                    "INSERT INTO data_keys (generation, wrapped, created_at) VALUES ($1, $2, $3)",
                    &[&k.generation, &k.wrapped, &k.created_at],
                )
                .await
                .map_err(map_pg)?;
            }
            for (name, value) in &dump.settings {
                tx.execute(
                    "INSERT INTO settings (name, value) VALUES ($1, $2)",
                    &[name, value],
                )
                .await
                .map_err(map_pg)?;
            }
            for t in &dump.tokens {
                insert_token(&tx, t).await.map_err(tx_err)?;
            }
            let one = audit_insert(&tx, 1).await.map_err(map_pg)?;
            for r in &dump.audit {
                insert_audits(&tx, &one, std::slice::from_ref(r))
                    .await
                    .map_err(map_pg)?;
            }
            tx.commit().await.map_err(map_pg)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.db.deadline(async move {
            let client = self.db.pool.get().await.map_err(map_pool)?;
            client.simple_query("SELECT 1").await.map_err(map_pg)?;
            Ok(())
        }))
    }
}
