//! The embedded store: one SQLite database in WAL mode.
//!
//! * **Writes** go to one writer thread that owns the only write connection.
//!   It drains every queued write into one transaction (group commit), gives
//!   each write its own savepoint so one failure does not undo the others,
//!   and commits without an fsync (`synchronous=NORMAL` on that connection
//!   only). The **syncer** thread then fsyncs the WAL (one fsync for every
//!   batch committed meanwhile) and only then answers the durable writes;
//!   until then no read sees them ([`Unsynced`]). Audit records of reads
//!   are answered once committed. A **checkpointer** thread copies the WAL
//!   into the database beside the writer.
//! * **Reads** use a small pool of read-only connections: point reads run
//!   on the calling async worker, longer ones on a blocking thread; WAL lets
//!   them run beside the writer without locks.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};

use super::cache::ReadCache;
use super::{
    BoxFuture, Dump, KeyRow, ListItem, PutMode, Sealer, SecretRow, Store, StoreError,
    StoredVersion, TokenRow, VersionMeta, VersionRow, WriteCtx, db_version, now_ms, version_range,
};
use crate::audit::{self, AuditRecord, ChainedRecord};
use crate::crypto::AuditKey;
use crate::crypto::WrappedKey;
use crate::path::{SecretPath, Version};

/// Migrations, in order; `PRAGMA user_version` records how many ran.
/// Never edit one that has shipped: add a new file.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_tokens_audit.sql"),
];

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 512;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// One queued write.
struct WriteJob {
    work: Work,
    /// Deletes envelopes: checkpoint and truncate the WAL before answering.
    destroys: bool,
    /// Must be on stable storage when answered. Only audit records of reads
    /// and refusals are not: they are answered once committed, and the next
    /// WAL sync covers them.
    needs_sync: bool,
    /// What the read cache must forget once this job's batch has ended
    /// (committed or not), before it is answered; also what reads must not
    /// see until the batch is synced.
    invalidates: Invalidate,
}

enum Work {
    /// Applied inside the batch transaction in its own savepoint; returns
    /// how to answer the caller once the outcome is known. Given `None` (the
    /// transaction could not begin) it answers with an error.
    Run(RunJob),
    /// Audit records of reads and refusals. All of a batch's are chained and
    /// inserted together, in one savepoint.
    Audit {
        key: Arc<AuditKey>,
        records: Vec<AuditRecord>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Work {
    /// The answer of a job whose batch could not begin.
    fn refused(self) -> Answer {
        match self {
            Work::Run(run) => run(None),
            Work::Audit { reply, .. } => answer(reply, Ok(())),
        }
    }
}

/// Read-cache entries a write makes stale.
enum Invalidate {
    Nothing,
    /// The path's entry. If `fresh` was filled (a PUT whose savepoint was
    /// released) and the batch commits, the writer installs that row as the
    /// path's newest instead of dropping the entry, so reading back a write
    /// does not go to the database.
    Path(Box<str>, Option<Fresh>),
    All,
}

/// The row a PUT wrote, for the read cache; filled in the writer thread.
type Fresh = Arc<std::sync::OnceLock<StoredVersion>>;

type RunJob = Box<dyn FnOnce(Option<&Connection>) -> Answer + Send>;

/// Answers one caller once the batch's outcome is known: if its commit (or
/// the WAL sync it waited for) failed, every write in it failed with it.
type Answer = Box<dyn FnOnce(&Result<(), String>) + Send>;

fn answer<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, StoreError>>,
    result: Result<T, StoreError>,
) -> Answer {
    Box::new(move |outcome| {
        let r = match outcome {
            Ok(()) => result,
            Err(e) => Err(StoreError::Backend(format!("commit failed: {e}"))),
        };
        // A caller that went away (client disconnected) is not an error.
        let _ = reply.send(r);
    })
}

/// Runs `f` in its own savepoint: on error only this job is undone.
fn scoped<T>(
    c: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    c.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(c) {
        Ok(v) => {
            c.prepare_cached("RELEASE job")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            c.prepare_cached("ROLLBACK TO job")?.execute([])?;
            c.prepare_cached("RELEASE job")?.execute([])?;
            Err(e)
        }
    }
}

/// Commits whose WAL frames are written but not yet synced.
///
/// The writer commits with `synchronous=NORMAL` (no fsync inside the
/// commit) and hands the durable writes to the syncer thread, which
/// fsyncs the WAL and only then answers them; meanwhile the writer commits
/// the next batch. A commit is visible to readers as soon as it is written,
/// so every point read checks here whether what it read was changed by a
/// batch not yet synced and, if so, waits for that sync: no read ever
/// returns, or denies, a version that a power loss could still take back.
#[derive(Debug)]
struct Unsynced {
    /// Newest batch marked (before its commit).
    marked: AtomicU64,
    /// Newest unsynced batch that changed every path (import, rewrap).
    everything: AtomicU64,
    /// Path -> newest unsynced batch that changed it.
    paths: Mutex<HashMap<Box<str>, u64>>,
    synced: watch::Sender<Synced>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Synced {
    /// Every batch up to this one is synced (or failed before committing).
    seq: u64,
    /// A WAL sync failed: nothing written since can be trusted to be durable.
    broken: bool,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Unsynced {
    fn new() -> Self {
        Unsynced {
            marked: AtomicU64::new(0),
            everything: AtomicU64::new(0),
            paths: Mutex::default(),
            synced: watch::Sender::new(Synced::default()),
        }
    }

    /// Before batch `seq` commits: what it changes is unsynced.
    fn mark(&self, seq: u64, changes: &[Invalidate]) {
        {
            let mut paths = locked(&self.paths);
            for c in changes {
                match c {
                    Invalidate::Nothing => {}
                    Invalidate::Path(p, _) => {
                        paths.insert(p.clone(), seq);
                    }
                    Invalidate::All => self.everything.store(seq, Ordering::SeqCst),
                }
            }
        }
        self.marked.store(seq, Ordering::SeqCst);
    }

    /// Every batch up to `seq` is synced (`ok`), or a sync failed.
    fn resolved(&self, seq: u64, ok: bool) {
        if ok {
            locked(&self.paths).retain(|_, s| *s > seq);
        }
        self.synced.send_modify(|s| {
            if ok {
                s.seq = s.seq.max(seq);
            } else {
                s.broken = true;
            }
        });
    }

    fn is_broken(&self) -> bool {
        self.synced.borrow().broken
    }

    /// The batch that a read just made (of `path`, or of anything) must
    /// see synced before it is returned, if any.
    fn needed(&self, path: Option<&str>) -> Option<u64> {
        let synced = self.synced.borrow().seq;
        let marked = self.marked.load(Ordering::SeqCst);
        if marked <= synced {
            return None;
        }
        let need = match path {
            None => marked,
            Some(p) => locked(&self.paths)
                .get(p)
                .copied()
                .unwrap_or(0)
                .max(self.everything.load(Ordering::SeqCst)),
        };
        (need > synced).then_some(need)
    }

    async fn wait(&self, seq: u64) -> Result<(), StoreError> {
        let mut rx = self.synced.subscribe();
        let s = *rx
            .wait_for(|s| s.seq >= seq || s.broken)
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        if s.seq >= seq {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "the WAL could not be synced".into(),
            ))
        }
    }

    /// `out`, once what it read is synced.
    fn after<'a, T: Send + 'a>(
        &'a self,
        path: Option<&str>,
        out: Result<T, StoreError>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        match (out, self.needed(path)) {
            (Ok(v), Some(seq)) => Box::pin(async move {
                self.wait(seq).await?;
                Ok(v)
            }),
            (out, _) => Box::pin(std::future::ready(out)),
        }
    }
}

/// What the store's handle and its threads share.
struct Shared {
    /// Held by whoever checkpoints (the checkpointer, a delete's truncation).
    checkpoint: Mutex<()>,
    /// Transactions committed by the writer.
    commits: AtomicU64,
    /// Envelopes of recent point reads; the writer keeps it current.
    cache: ReadCache,
    unsynced: Unsynced,
}

/// A committed batch's durable writes, for the syncer to answer after the
/// WAL sync. `commit` is the batch's outcome; a failed batch is passed on
/// too, so that batches are resolved in order.
struct SyncJob {
    seq: u64,
    answers: Vec<Answer>,
    commit: Result<(), String>,
}

/// Drains every queued write into one transaction, commits it without an
/// fsync, and passes the durable writes on to the syncer.
fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::UnboundedReceiver<WriteJob>,
    shared: &Shared,
    syncer: &std::sync::mpsc::Sender<SyncJob>,
    checkpoint: &std::sync::mpsc::SyncSender<()>,
) {
    let _broken_on_exit = BreakOnExit(shared);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut state = WriterState::default();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Some(done) = run_batch(&mut conn, &mut batch, shared, &mut state)
            && let Err(e) = syncer.send(done)
        {
            tracing::error!("WAL syncer stopped; durable writes fail");
            shared.unsynced.resolved(e.0.seq, false);
            let failed = Err("WAL syncer stopped".to_owned());
            for a in e.0.answers {
                a(&failed);
            }
        }
        // A full queue already holds a wake-up.
        let _ = checkpoint.try_send(());
    }
}

/// What the writer carries from one batch to the next.
#[derive(Default)]
struct WriterState {
    /// Sequence number of the newest batch that needed a sync.
    seq: u64,
    /// A delete's WAL truncation that could not finish, to retry.
    truncate_pending: bool,
}

/// Brings the read cache up to date with a batch that ended: a committed
/// PUT's row becomes its path's newest, anything else is forgotten.
fn forget(cache: &ReadCache, stale: &[Invalidate], committed: bool) {
    for inv in stale {
        match inv {
            Invalidate::Nothing => {}
            Invalidate::Path(p, fresh) => {
                match fresh.as_ref().and_then(|f| f.get()).filter(|_| committed) {
                    Some(row) => cache.install_latest(p, row),
                    None => cache.invalidate(p),
                }
            }
            Invalidate::All => cache.clear(),
        }
    }
}

/// Applies and commits one batch. Answers the jobs that need no sync at
/// once; returns the durable ones for the syncer (`None` if there are none).
fn run_batch(
    conn: &mut Connection,
    batch: &mut Vec<WriteJob>,
    shared: &Shared,
    state: &mut WriterState,
) -> Option<SyncJob> {
    let stale: Vec<Invalidate> = batch
        .iter_mut()
        .map(|j| std::mem::replace(&mut j.invalidates, Invalidate::Nothing))
        .collect();
    let destroys = batch.iter().any(|j| j.destroys);
    // Whatever the batch holds, reads must not see it before it is synced.
    let seq = batch.iter().any(|j| j.needs_sync).then(|| {
        state.seq += 1;
        shared.unsynced.mark(state.seq, &stale);
        state.seq
    });
    let tx = match if shared.unsynced.is_broken() {
        Err("an earlier WAL sync failed; restart secretd".to_owned())
    } else {
        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())
    } {
        Ok(tx) => tx,
        Err(e) => {
            // A batch that cannot begin fails every job in it.
            let err = Err(e);
            forget(&shared.cache, &stale, false);
            for job in batch.drain(..) {
                job.work.refused()(&err);
            }
            return seq.map(|seq| SyncJob {
                seq,
                answers: Vec::new(),
                commit: err,
            });
        }
    };
    let (mut now, mut later, mut audits) = (Vec::new(), Vec::new(), Vec::new());
    for (i, job) in batch.drain(..).enumerate() {
        if i > 0 {
            fail::fail_point!("sqlite-between-jobs");
        }
        match job.work {
            Work::Run(run) if job.needs_sync => later.push(run(Some(&tx))),
            Work::Run(run) => now.push(run(Some(&tx))),
            Work::Audit {
                key,
                records,
                reply,
            } => audits.push((key, records, reply)),
        }
    }
    if let Some((key, ..)) = audits.first() {
        let key = Arc::clone(key);
        let (records, replies): (Vec<_>, Vec<_>) = audits
            .into_iter()
            .map(|(_, records, reply)| (records, reply))
            .unzip();
        let result = scoped(&tx, |c| {
            append_audit_rows(c, &key, records.into_iter().flatten().collect())
        });
        for reply in replies {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Backend(e.to_string())),
            };
            now.push(answer(reply, r));
        }
    }
    fail::fail_point!("sqlite-before-commit");
    let commit = if commit_fails(&stale) {
        drop(tx); // rolls back
        Err("injected commit failure (fail point sqlite-commit-fails)".to_owned())
    } else {
        tx.commit().map_err(|e| e.to_string())
    };
    match &commit {
        Ok(()) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(error = %e, writes = now.len() + later.len(), "sqlite commit failed; batch not acknowledged");
        }
    }
    if commit.is_ok() && (destroys || state.truncate_pending) {
        // Deleted envelopes still sit in older WAL frames: copy the WAL
        // into the database (where secure_delete zeroed them) and truncate
        // it before acknowledging the delete.
        let _one_at_a_time = locked(&shared.checkpoint);
        state.truncate_pending = !truncate_wal(conn);
    }
    fail::fail_point!("sqlite-after-commit");
    // Whatever happened to the batch, its paths are forgotten before any
    // job is answered (a failed commit only costs a re-read).
    forget(&shared.cache, &stale, commit.is_ok());
    for a in now {
        a(&commit);
    }
    seq.map(|seq| SyncJob {
        seq,
        answers: later,
        commit,
    })
}

/// Syncs the WAL for the batches the writer committed, then answers their
/// durable writes. One fsync covers every batch queued meanwhile (group
/// commit across batches).
///
/// The WAL is synced through one descriptor kept open for the syncer's
/// life: Linux reports a failed writeback once per open file, so a
/// descriptor opened afresh after a failure could "succeed" over lost
/// pages. The first failure is final: every later write fails until
/// restart (as PostgreSQL does), and nothing is ever counted as synced
/// again.
fn syncer_loop(wal: &Path, rx: &std::sync::mpsc::Receiver<SyncJob>, shared: &Shared) {
    let _broken_on_exit = BreakOnExit(shared);
    let mut file: Option<std::fs::File> = None;
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        fail::fail_point!("sqlite-before-sync");
        if failed.is_none() && jobs.iter().any(|j| j.commit.is_ok()) {
            let synced = match &file {
                Some(f) => sync_data(f),
                None => std::fs::File::open(wal).and_then(|f| {
                    sync_data(&f)?;
                    file = Some(f);
                    Ok(())
                }),
            };
            if let Err(e) = synced {
                tracing::error!(error = %e, "WAL sync failed; refusing every write until restart");
                failed = Some(format!("syncing the WAL {}: {e}", wal.display()));
            }
        }
        let last = jobs.iter().map(|j| j.seq).max().unwrap_or(0);
        shared.unsynced.resolved(last, failed.is_none());
        for job in jobs {
            let outcome = match (job.commit, &failed) {
                (Err(e), _) => Err(e),
                (Ok(()), Some(e)) => Err(e.clone()),
                (Ok(()), None) => Ok(()),
            };
            for a in job.answers {
                a(&outcome);
            }
        }
    }
}

/// Whether a test wants this batch's commit to fail: the fail point
/// `sqlite-commit-fails=return(PATH)` fails every batch writing PATH.
fn commit_fails(stale: &[Invalidate]) -> bool {
    fail::fail_point!("sqlite-commit-fails", |path: Option<String>| {
        path.is_some_and(|path| {
            stale
                .iter()
                .any(|inv| matches!(inv, Invalidate::Path(p, _) if **p == *path))
        })
    });
    // Read only by the fail point, which `cargo build` compiles out.
    let _ = stale;
    false
}

/// fdatasync; a test can make it fail (`sqlite-sync-fails`).
fn sync_data(f: &std::fs::File) -> std::io::Result<()> {
    fail::fail_point!("sqlite-sync-fails", |_| Err(std::io::Error::other(
        "injected fsync failure"
    )));
    f.sync_data()
}

/// Marks the store broken when the thread holding it ends (the store was
/// dropped, or the thread panicked): reads waiting for a sync then fail
/// instead of waiting forever.
struct BreakOnExit<'a>(&'a Shared);

impl Drop for BreakOnExit<'_> {
    fn drop(&mut self) {
        self.0.unsynced.resolved(u64::MAX, false);
    }
}

/// How long the checkpointer lets commits accumulate between checkpoints.
const CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Copies committed WAL frames into the database on its own connection
/// (PASSIVE: never blocks the writer), so commits do not pay for it. Holds
/// `Shared::checkpoint` meanwhile, so that a delete's TRUNCATE checkpoint
/// waits for it rather than failing busy.
fn checkpointer_loop(conn: &Connection, rx: &std::sync::mpsc::Receiver<()>, shared: &Shared) {
    while rx.recv().is_ok() {
        std::thread::sleep(CHECKPOINT_PAUSE);
        while rx.try_recv().is_ok() {}
        let _one_at_a_time = locked(&shared.checkpoint);
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying after the next commit");
        }
    }
}

pub struct SqliteStore {
    /// Chains audit records; set once the master key is known.
    audit_key: std::sync::OnceLock<Arc<AuditKey>>,
    writer: mpsc::UnboundedSender<WriteJob>,
    readers: Arc<Mutex<Vec<Connection>>>,
    db_path: PathBuf,
    shared: Arc<Shared>,
}

/// Bytes of envelopes the read cache may hold.
const READ_CACHE_BYTES: usize = 64 << 20;

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("db_path", &self.db_path)
            .finish()
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;",
    )?;
    // Lets a test prove the refusal below on the real binary.
    fail::fail_point!("sqlite-weak-sync", |_| {
        conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
        check_durability(&conn)?;
        Err(StoreError::Backend(
            "synchronous=NORMAL was accepted".into(),
        ))
    });
    check_durability(&conn)?;
    Ok(conn)
}

/// Refuses to run unless commits are synced to the WAL (journal_mode=WAL,
/// synchronous FULL or EXTRA): NORMAL can lose the last commits on power loss.
fn check_durability(conn: &Connection) -> Result<(), StoreError> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NotDurable(format!(
            "journal_mode is {mode}, expected wal"
        )));
    }
    let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    if sync < 2 {
        return Err(StoreError::NotDurable(format!(
            "synchronous is {sync}, expected 2 (FULL) or 3 (EXTRA)"
        )));
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Makes the database's files owner-only, whatever the umask was.
fn restrict_files(db_path: &Path) -> Result<(), StoreError> {
    let mut names = vec![db_path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut p = db_path.as_os_str().to_owned();
        p.push(suffix);
        names.push(PathBuf::from(p));
    }
    for p in names {
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Backend(format!("chmod {}: {e}", p.display())))?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `db_path`, checks its
    /// durability settings, runs migrations and starts the writer thread.
    pub fn open(db_path: &Path) -> Result<Self, StoreError> {
        // Create the file ourselves so it is 0600 from its first byte; SQLite
        // gives the -wal and -shm files the same mode.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(db_path)
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", db_path.display())))?;
        // Make the new file's directory entry durable before acknowledging
        // anything stored in it.
        if let Some(dir) = db_path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::Backend(format!("sync {}: {e}", dir.display())))?;
        }
        let mut conn = open_connection(db_path)?;
        migrate(&mut conn)?;
        restrict_files(db_path)?;
        // The writer's commits write the WAL without syncing it; the syncer
        // thread syncs it before any durable write is answered.
        conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
        let checkpointer = open_connection(db_path)?;
        let shared = Arc::new(Shared {
            checkpoint: Mutex::new(()),
            commits: AtomicU64::new(0),
            cache: ReadCache::new(READ_CACHE_BYTES),
            unsynced: Unsynced::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (sync_tx, sync_rx) = std::sync::mpsc::channel();
        let (ckpt_tx, ckpt_rx) = std::sync::mpsc::sync_channel(1);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(drop)
                .map_err(|e| StoreError::Backend(format!("spawn {name}: {e}")))
        };
        let s = Arc::clone(&shared);
        spawn(
            "secretd-sqlite-writer",
            Box::new(move || writer_loop(conn, rx, &s, &sync_tx, &ckpt_tx)),
        )?;
        let s = Arc::clone(&shared);
        // SQLite names the WAL after the resolved database path.
        let mut wal = std::fs::canonicalize(db_path)
            .map_err(|e| StoreError::Backend(format!("resolve {}: {e}", db_path.display())))?
            .into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        spawn(
            "secretd-sqlite-sync",
            Box::new(move || syncer_loop(&wal, &sync_rx, &s)),
        )?;
        let s = Arc::clone(&shared);
        spawn(
            "secretd-sqlite-checkpoint",
            Box::new(move || checkpointer_loop(&checkpointer, &ckpt_rx, &s)),
        )?;
        // Warm the reader pool so point reads on async workers never open a
        // connection inline.
        let mut warm = Vec::new();
        for _ in 0..4 {
            warm.push(open_reader(db_path)?);
        }
        Ok(SqliteStore {
            audit_key: std::sync::OnceLock::new(),
            writer: tx,
            readers: Arc::new(Mutex::new(warm)),
            db_path: db_path.to_path_buf(),
            shared,
        })
    }

    fn key(&self) -> Result<Arc<AuditKey>, StoreError> {
        self.audit_key
            .get()
            .cloned()
            .ok_or_else(|| StoreError::Backend("audit key not set".into()))
    }

    /// How many write transactions were committed so far.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Queues `f` for the writer thread and waits until its batch committed
    /// durably.
    async fn write<T: Send + 'static>(
        &self,
        destroys: bool,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.enqueue(destroys, true, Invalidate::Nothing, f).await
    }

    /// `write`, for a job that changes what point reads of `path` return.
    async fn write_path<T: Send + 'static>(
        &self,
        destroys: bool,
        path: &SecretPath,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inv = Invalidate::Path(path.as_str().into(), None);
        self.enqueue(destroys, true, inv, f).await
    }

    async fn enqueue<T: Send + 'static>(
        &self,
        destroys: bool,
        needs_sync: bool,
        invalidates: Invalidate,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.enqueue_then(destroys, needs_sync, invalidates, f, |t| t)
            .await
    }

    /// `enqueue`, where `released` turns `f`'s result into the caller's
    /// once its savepoint is released (in the writer thread, before the
    /// batch commits).
    async fn enqueue_then<T, R: Send + 'static>(
        &self,
        destroys: bool,
        needs_sync: bool,
        invalidates: Invalidate,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        released: impl FnOnce(T) -> R + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        let run = Box::new(move |c: Option<&Connection>| match c {
            Some(c) => answer(tx, scoped(c, f).map(released)),
            None => answer(
                tx,
                Err(StoreError::Backend("could not begin transaction".into())),
            ),
        });
        self.send(
            WriteJob {
                work: Work::Run(run),
                destroys,
                needs_sync,
                invalidates,
            },
            rx,
        )
        .await
    }

    async fn send<T>(
        &self,
        job: WriteJob,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.writer
            .send(job)
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }

    /// Runs a read on a pooled connection on a blocking thread (for reads
    /// that may take long: listings, exports).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        let db_path = self.db_path.clone();
        tokio::task::spawn_blocking(move || with_reader(&readers, &db_path, f))
            .await
            .map_err(|e| StoreError::Backend(format!("reader task: {e}")))?
    }

    /// Runs a point read (one indexed row, microseconds) right here: a WAL
    /// reader never waits for the writer, and a hop to a blocking thread
    /// would cost more than the query.
    fn read_now<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        with_reader(&self.readers, &self.db_path, f)
    }
}

/// A read-only connection for the pool, with SQLite's default page cache.
/// A bigger one does not pay: a WAL reader drops its whole cache whenever
/// another connection committed since its last read (every write batch),
/// and with a million secrets a GET's leaf pages are random anyway (32 MiB
/// per reader measured no faster, for 65 MiB more peak RSS).
fn open_reader(db_path: &Path) -> Result<Connection, StoreError> {
    let c = open_connection(db_path)?;
    c.execute_batch("PRAGMA query_only = ON;")?;
    Ok(c)
}

fn with_reader<T>(
    readers: &Mutex<Vec<Connection>>,
    db_path: &Path,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let pooled = readers.lock().ok().and_then(|mut v| v.pop());
    let conn = match pooled {
        Some(c) => c,
        None => open_reader(db_path)?,
    };
    let out = f(&conn);
    if let Ok(mut v) = readers.lock() {
        v.push(conn);
    }
    out
}

/// Copies the WAL into the database and truncates it. False if it could
/// not finish: a reader still needed older frames past the busy timeout (a
/// long backup or listing), or an error; the caller retries after its next
/// commit, and until then deleted ciphertext may remain in the WAL.
fn truncate_wal(conn: &Connection) -> bool {
    match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(0) => true,
        Ok(_) => {
            tracing::error!(
                "WAL truncation after a delete could not finish (a long read holds older frames); \
                 deleted ciphertext may stay in the WAL until it does; retrying after the next write"
            );
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "WAL truncation after a delete failed; retrying after the next write");
            false
        }
    }
}

fn has_live_version(c: &Connection, path: &SecretPath) -> Result<bool, StoreError> {
    Ok(c.prepare_cached(
        "SELECT 1 FROM secrets s JOIN versions v ON v.secret_id = s.id
         WHERE s.path = ?1 AND v.envelope IS NOT NULL LIMIT 1",
    )?
    .query_row([path.as_str()], |_| Ok(()))
    .optional()?
    .is_some())
}

/// The newest data key generation (0 if none).
fn newest_generation(c: &Connection) -> Result<u32, StoreError> {
    let g: i64 = c
        .prepare_cached("SELECT COALESCE(MAX(generation), 0) FROM data_keys")?
        .query_row([], |r| r.get(0))?;
    u32::try_from(g).map_err(|_| StoreError::Corrupt(format!("data key generation {g}")))
}

fn put_row(
    c: &Connection,
    path: &SecretPath,
    seal: &Sealer,
    mode: PutMode,
    ctx: WriteCtx,
    key: &AuditKey,
) -> Result<StoredVersion, StoreError> {
    seal.check_newest(newest_generation(c)?)?;
    if mode == PutMode::ExistingOnly && !has_live_version(c, path)? {
        return Err(StoreError::NoLiveVersion);
    }
    let now = now_ms();
    let (id, last) = next_version(c, path, now)?;
    let version = db_version(path, last)?;
    let envelope: Arc<[u8]> = seal.seal(version)?.into();
    c.prepare_cached(
        "INSERT INTO versions (secret_id, version, envelope, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, version.as_i64(), &*envelope, now, ctx.actor])?;
    let mut record = ctx.audit;
    record.version = Some(version.as_i64());
    append_audit_rows(c, key, vec![record])?;
    Ok(StoredVersion {
        version,
        envelope,
        created_at_ms: now,
    })
}

/// The `secrets` row's id for `path` (inserted for a new path) and the
/// number the next version gets.
///
/// The row of an existing secret is only read, never rewritten: version
/// rows are never removed (a deleted version stays as a tombstone), so the
/// newest one found through the `(secret_id, version)` index is the last
/// number handed out. Rewriting the row on every PUT (`last_version + 1`)
/// dirtied one more randomly placed page per PUT, a WAL frame and a
/// checkpoint write that cost about a quarter of a PUT batch's page
/// writes. `secrets.last_version` and `updated_at` therefore hold their
/// values as of the secret's creation or its restore from a backup, and
/// count only as a floor: see [`SECRET_ROWS`].
fn next_version(c: &Connection, path: &SecretPath, now: i64) -> Result<(i64, i64), StoreError> {
    let found: Option<(i64, i64)> = c
        .prepare_cached(
            "SELECT s.id, MAX(s.last_version, COALESCE(
                 (SELECT MAX(v.version) FROM versions v WHERE v.secret_id = s.id), 0))
             FROM secrets s WHERE s.path = ?1",
        )?
        .query_row([path.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((id, last)) = found else {
        let id: i64 = c
            .prepare_cached(
                "INSERT INTO secrets (path, last_version, created_at, updated_at)
                 VALUES (?1, 1, ?2, ?2) RETURNING id",
            )?
            .query_row(params![path.as_str(), now], |r| r.get(0))?;
        return Ok((id, 1));
    };
    // Out of range is refused by the caller's `db_version`.
    Ok((id, last.saturating_add(1)))
}

/// Each secret's row as a backup records it: the last version handed out
/// (the greater of the row's floor and its newest version, see
/// [`next_version`]), and the time of the last write. That is the row's own
/// `updated_at` until a PUT numbered past the floor, then the creation time
/// of the highest-numbered version: the value the row held when PUTs still
/// rewrote it, and what PostgreSQL records. (Not the latest `created_at` of
/// any version: clocks of replicas disagree, and a restored backup must
/// export exactly as it was written, or its verification fails.)
const SECRET_ROWS: &str = "SELECT s.path,
        MAX(s.last_version, COALESCE(n.version, 0)),
        s.created_at,
        CASE WHEN n.version > s.last_version THEN n.created_at ELSE s.updated_at END
     FROM secrets s
     LEFT JOIN versions n ON n.id = (
         SELECT v.id FROM versions v WHERE v.secret_id = s.id ORDER BY v.version DESC LIMIT 1
     )";

/// Tombstones the live versions of a path within a [`version_range`].
const DELETE_ROWS: &str = "UPDATE versions SET envelope = NULL, deleted_at = ?1
     WHERE secret_id = (SELECT id FROM secrets WHERE path = ?2)
       AND version BETWEEN ?3 AND ?4
       AND deleted_at IS NULL
     RETURNING version";

/// The newest live version of a path within a [`version_range`].
const GET_ROW: &str = "SELECT v.version, v.envelope, v.created_at
     FROM secrets s JOIN versions v ON v.secret_id = s.id
     WHERE s.path = ?1 AND v.version BETWEEN ?2 AND ?3 AND v.envelope IS NOT NULL
     ORDER BY v.version DESC LIMIT 1";

fn delete_rows(
    c: &Connection,
    path: &SecretPath,
    version: Option<Version>,
    ctx: WriteCtx,
    key: &AuditKey,
) -> Result<Vec<Version>, StoreError> {
    let now = now_ms();
    let mut stmt = c.prepare_cached(DELETE_ROWS)?;
    let (lo, hi) = version_range(version);
    let rows = stmt.query_map(params![now, path.as_str(), lo, hi], |r| r.get::<_, i64>(0))?;
    let mut out = Vec::new();
    for v in rows {
        out.push(db_version(path, v?)?);
    }
    out.sort_unstable();
    if !out.is_empty() {
        append_audit_rows(c, key, vec![ctx.audit])?;
    }
    Ok(out)
}

/// Chains `records` after the current head of the log and inserts them.
/// Runs inside the writer's transaction, which holds the write lock, so the
/// head cannot move underneath (also against other processes).
fn append_audit_rows(
    c: &Connection,
    key: &AuditKey,
    records: Vec<AuditRecord>,
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let head: (i64, Vec<u8>) = c
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, audit::GENESIS.to_vec()));
    let mut ins = c.prepare_cached(
        "INSERT INTO audit_log (seq, time, request_id, token_id, token_name, client, operation, path, version, outcome, status, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for r in audit::chain(key, head, records) {
        insert_audit_row(&mut ins, &r)?;
    }
    Ok(())
}

fn insert_audit_row(
    ins: &mut rusqlite::CachedStatement<'_>,
    r: &ChainedRecord,
) -> Result<(), StoreError> {
    let a = &r.record;
    ins.execute(params![
        r.seq,
        a.time_ms,
        a.request_id,
        a.token_id,
        a.token_name,
        a.client,
        a.operation,
        a.path,
        a.version,
        a.outcome,
        a.status,
        r.prev_hash,
        r.hash
    ])?;
    Ok(())
}

fn read_audit(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChainedRecord> {
    Ok(ChainedRecord {
        seq: r.get(0)?,
        record: AuditRecord {
            time_ms: r.get(1)?,
            request_id: r.get(2)?,
            token_id: r.get(3)?,
            token_name: r.get(4)?,
            client: r.get(5)?,
            operation: r.get(6)?,
            path: r.get(7)?,
            version: r.get(8)?,
            outcome: r.get(9)?,
            status: r.get(10)?,
        },
        prev_hash: r.get(11)?,
        hash: r.get(12)?,
    })
}

const AUDIT_COLUMNS: &str = "seq, time, request_id, token_id, token_name, client, operation, path, version, outcome, status, prev_hash, hash";
const TOKEN_COLUMNS: &str =
    "id, name, hash, role, scopes, created_at, created_by, expires_at, last_used_at, revoked_at";

fn read_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        name: r.get(1)?,
        hash: r.get(2)?,
        role: r.get(3)?,
        scopes: r.get(4)?,
        created_at: r.get(5)?,
        created_by: r.get(6)?,
        expires_at: r.get(7)?,
        last_used_at: r.get(8)?,
        revoked_at: r.get(9)?,
    })
}

fn insert_token(c: &Connection, t: &TokenRow) -> Result<(), StoreError> {
    let res = c.execute(
        &format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ),
        params![
            t.id,
            t.name,
            t.hash,
            t.role,
            t.scopes,
            t.created_at,
            t.created_by,
            t.expires_at,
            t.last_used_at,
            t.revoked_at
        ],
    );
    match res {
        Ok(_) => Ok(()),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => Err(
            StoreError::Conflict(format!("a token named {} already exists", t.name)),
        ),
        Err(e) => Err(e.into()),
    }
}

fn import_rows(c: &Connection, dump: &Dump, replace: bool) -> Result<(), StoreError> {
    let count = |table: &str| -> Result<i64, StoreError> {
        Ok(c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
    };
    let (secrets, keys) = (count("secrets")?, count("data_keys")?);
    if secrets + keys > 0 {
        if !replace {
            return Err(StoreError::NotEmpty(format!(
                "{secrets} secrets, {keys} data keys"
            )));
        }
        c.execute_batch(
            "DELETE FROM versions; DELETE FROM secrets; DELETE FROM data_keys; DELETE FROM settings;
             DELETE FROM tokens; DELETE FROM audit_log;",
        )?;
    }
    let mut ids = std::collections::HashMap::with_capacity(dump.secrets.len());
    let mut ins = c.prepare_cached(
        "INSERT INTO secrets (path, last_version, created_at, updated_at) VALUES (?1, ?2, ?3, ?4) RETURNING id",
    )?;
    for s in &dump.secrets {
        let id: i64 = ins.query_row(
            params![s.path, s.last_version, s.created_at, s.updated_at],
            |r| r.get(0),
        )?;
        ids.insert(s.path.as_str(), id);
    }
    let mut ins = c.prepare_cached(
        "INSERT INTO versions (secret_id, version, envelope, created_at, deleted_at, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for v in &dump.versions {
        let id = ids.get(v.path.as_str()).ok_or_else(|| {
            StoreError::Corrupt(format!("version row for unknown path {}", v.path))
        })?;
        ins.execute(params![
            id,
            v.version,
            v.envelope,
            v.created_at,
            v.deleted_at,
            v.created_by
        ])?;
    }
    for k in &dump.data_keys {
        c.execute(
            "INSERT INTO data_keys (generation, wrapped, created_at) VALUES (?1, ?2, ?3)",
            params![k.generation, k.wrapped, k.created_at],
        )?;
    }
    for (name, value) in &dump.settings {
        c.execute(
            "INSERT INTO settings (name, value) VALUES (?1, ?2)",
            params![name, value],
        )?;
    }
    for t in &dump.tokens {
        insert_token(c, t)?;
    }
    let mut ins = c.prepare_cached(&format!(
        "INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    ))?;
    for r in &dump.audit {
        insert_audit_row(&mut ins, r)?;
    }
    Ok(())
}

/// Every row, read inside ONE deferred read transaction: the first SELECT
/// pins a WAL snapshot, so the dump is consistent while the writer commits
/// (a backup taken from a live server).
fn export_rows(c: &Connection) -> Result<Dump, StoreError> {
    let tx = c.unchecked_transaction()?;
    let d = export_rows_in(&tx)?;
    tx.commit()?;
    Ok(d)
}

fn export_rows_in(c: &Connection) -> Result<Dump, StoreError> {
    let mut d = Dump::default();
    let mut st = c.prepare(SECRET_ROWS)?;
    for r in st.query_map([], |r| {
        Ok(SecretRow {
            path: r.get(0)?,
            last_version: r.get(1)?,
            created_at: r.get(2)?,
            updated_at: r.get(3)?,
        })
    })? {
        d.secrets.push(r?);
    }
    let mut st = c.prepare(
        "SELECT s.path, v.version, v.envelope, v.created_at, v.deleted_at, v.created_by
         FROM versions v JOIN secrets s ON s.id = v.secret_id",
    )?;
    for r in st.query_map([], |r| {
        Ok(VersionRow {
            path: r.get(0)?,
            version: r.get(1)?,
            envelope: r.get(2)?,
            created_at: r.get(3)?,
            deleted_at: r.get(4)?,
            created_by: r.get(5)?,
        })
    })? {
        d.versions.push(r?);
    }
    let mut st = c.prepare("SELECT generation, wrapped, created_at FROM data_keys")?;
    for r in st.query_map([], |r| {
        Ok(KeyRow {
            generation: r.get(0)?,
            wrapped: r.get(1)?,
            created_at: r.get(2)?,
        })
    })? {
        d.data_keys.push(r?);
    }
    let mut st = c.prepare("SELECT name, value FROM settings")?;
    for r in st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
        d.settings.push(r?);
    }
    let mut st = c.prepare(&format!("SELECT {TOKEN_COLUMNS} FROM tokens"))?;
    for r in st.query_map([], read_token)? {
        d.tokens.push(r?);
    }
    let mut st = c.prepare(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq"
    ))?;
    for r in st.query_map([], read_audit)? {
        d.audit.push(r?);
    }
    d.sort();
    Ok(d)
}

impl Store for SqliteStore {
    fn set_audit_key(&self, key: Arc<AuditKey>) {
        let _ = self.audit_key.set(key);
    }

    fn put(
        &self,
        path: SecretPath,
        seal: Sealer,
        mode: PutMode,
        ctx: WriteCtx,
    ) -> BoxFuture<'_, Result<Version, StoreError>> {
        let key = self.key();
        Box::pin(async move {
            let key = key?;
            let fresh = Fresh::default();
            let inv = Invalidate::Path(path.as_str().into(), Some(Arc::clone(&fresh)));
            let put = move |c: &Connection| put_row(c, &path, &seal, mode, ctx, &key);
            let keep = move |row: StoredVersion| {
                let version = row.version;
                // Set once: this job is its only writer.
                let _ = fresh.set(row);
                version
            };
            self.enqueue_then(false, true, inv, put, keep).await
        })
    }

    fn get<'a>(
        &'a self,
        path: &'a SecretPath,
        version: Option<Version>,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, StoreError>> {
        let ticket = match self.shared.cache.get(path, version) {
            Ok(hit) => {
                return self
                    .shared
                    .unsynced
                    .after(Some(path.as_str()), Ok(Some(hit)));
            }
            Err(ticket) => ticket,
        };
        let out = self.read_now(|c| {
            let (lo, hi) = version_range(version);
            let row: Option<(i64, Arc<[u8]>, i64)> = c
                .prepare_cached(GET_ROW)?
                .query_row(params![path.as_str(), lo, hi], |r| {
                    Ok((r.get(0)?, r.get_ref(1)?.as_blob()?.into(), r.get(2)?))
                })
                .optional()?;
            row.map(|(v, envelope, created_at_ms)| {
                Ok(StoredVersion {
                    version: db_version(path, v)?,
                    envelope,
                    created_at_ms,
                })
            })
            .transpose()
        });
        if let Ok(Some(row)) = &out {
            self.shared.cache.insert(ticket, path, version, row);
        }
        self.shared.unsynced.after(Some(path.as_str()), out)
    }

    fn delete(
        &self,
        path: SecretPath,
        version: Option<Version>,
        ctx: WriteCtx,
    ) -> BoxFuture<'_, Result<Vec<Version>, StoreError>> {
        let key = self.key();
        Box::pin(async move {
            let key = key?;
            let p = path.clone();
            self.write_path(true, &p, move |c| delete_rows(c, &path, version, ctx, &key))
                .await
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListItem>, StoreError>> {
        // Children of `prefix` sort between "prefix/" and "prefix0" ('0' follows '/').
        let lo = format!("{prefix}/");
        let lo = match after {
            Some(a) if a > lo.as_str() => a.to_owned(),
            _ => lo,
        };
        let hi = format!("{prefix}0");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let read = self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT s.path, MAX(v.version), MAX(v.created_at)
                 FROM secrets s JOIN versions v ON v.secret_id = s.id
                 WHERE s.path > ?1 AND s.path < ?2 AND v.envelope IS NOT NULL
                 GROUP BY s.id ORDER BY s.path LIMIT ?3",
            )?;
            let rows = st.query_map(params![lo, hi, limit], |r| {
                Ok(ListItem {
                    path: r.get(0)?,
                    latest_version: r.get(1)?,
                    updated_at: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        });
        Box::pin(async move { self.shared.unsynced.after(None, read.await).await })
    }

    fn metadata<'a>(
        &'a self,
        path: &'a SecretPath,
    ) -> BoxFuture<'a, Result<Vec<VersionMeta>, StoreError>> {
        let path = path.clone();
        let read = self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT v.version, v.created_at, v.deleted_at, v.created_by
                 FROM secrets s JOIN versions v ON v.secret_id = s.id
                 WHERE s.path = ?1 ORDER BY v.version",
            )?;
            let rows = st.query_map([path.as_str()], |r| {
                Ok(VersionMeta {
                    version: r.get(0)?,
                    created_at: r.get(1)?,
                    deleted_at: r.get(2)?,
                    created_by: r.get(3)?,
                })
            })?;
            let out = rows.collect::<Result<Vec<_>, _>>()?;
            for m in &out {
                db_version(&path, m.version)?;
            }
            Ok(out)
        });
        Box::pin(async move { self.shared.unsynced.after(None, read.await).await })
    }

    fn append_audit(&self, records: Vec<AuditRecord>) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = self.key();
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let job = WriteJob {
                work: Work::Audit {
                    key: key?,
                    records,
                    reply,
                },
                destroys: false,
                needs_sync: false,
                invalidates: Invalidate::Nothing,
            };
            self.send(job, rx).await
        })
    }

    fn audit_page(
        &self,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ChainedRecord>, StoreError>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let read = self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows = st.query_map(params![after, limit], read_audit)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        });
        Box::pin(async move { self.shared.unsynced.after(None, read.await).await })
    }

    fn create_token(
        &self,
        token: TokenRow,
        audit: AuditRecord,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = self.key();
        Box::pin(async move {
            let key = key?;
            self.write(false, move |c| {
                insert_token(c, &token)?;
                append_audit_rows(c, &key, vec![audit])
            })
            .await
        })
    }

    fn token_by_hash<'a>(
        &'a self,
        hash: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<TokenRow>, StoreError>> {
        let out = self.read_now(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"
            ))?
            .query_row([hash], read_token)
            .optional()?)
        });
        Box::pin(std::future::ready(out))
    }

    fn tokens(&self) -> BoxFuture<'_, Result<Vec<TokenRow>, StoreError>> {
        Box::pin(self.read(|c| {
            let mut st =
                c.prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name"))?;
            let rows = st.query_map([], read_token)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        }))
    }

    fn revoke_token(
        &self,
        id: String,
        audit: AuditRecord,
    ) -> BoxFuture<'_, Result<Option<TokenRow>, StoreError>> {
        let key = self.key();
        Box::pin(async move {
            let key = key?;
            self.write(false, move |c| {
                let row = c
                    .prepare_cached(&format!(
                        "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL RETURNING {TOKEN_COLUMNS}"
                    ))?
                    .query_row(params![now_ms(), id], read_token)
                    .optional()?;
                if row.is_some() {
                    append_audit_rows(c, &key, vec![audit])?;
                }
                Ok(row)
            })
            .await
        })
    }

    fn touch_token(&self, id: String, at: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.write(false, move |c| {
            c.prepare_cached("UPDATE tokens SET last_used_at = ?1 WHERE id = ?2")?
                .execute(params![at, id])?;
            Ok(())
        }))
    }

    fn data_keys(&self) -> BoxFuture<'_, Result<Vec<WrappedKey>, StoreError>> {
        Box::pin(self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT generation, wrapped FROM data_keys ORDER BY generation")?;
            let rows = stmt.query_map([], |r| {
                Ok(WrappedKey {
                    generation: r.get(0)?,
                    wrapped: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        }))
    }

    fn latest_generation(&self) -> BoxFuture<'_, Result<u32, StoreError>> {
        Box::pin(std::future::ready(self.read_now(newest_generation)))
    }

    fn key_usage(&self) -> BoxFuture<'_, Result<Vec<super::KeyUsage>, StoreError>> {
        Box::pin(self.read(|c| {
            let mut counts = std::collections::HashMap::new();
            let mut st = c.prepare(
                "SELECT substr(envelope, 2, 4), COUNT(*) FROM versions WHERE envelope IS NOT NULL GROUP BY 1",
            )?;
            for row in st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))? {
                let (g, n) = row?;
                if let Ok(b) = <[u8; 4]>::try_from(g.as_slice()) {
                    counts.insert(u32::from_be_bytes(b), n);
                }
            }
            let mut st = c.prepare("SELECT generation, created_at FROM data_keys ORDER BY generation")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (g, at) = row?;
                out.push(super::KeyUsage { generation: g, created_at: at, live_versions: counts.get(&g).copied().unwrap_or(0) });
            }
            Ok(out)
        }))
    }

    fn rekey(
        &self,
        keys: Vec<WrappedKey>,
        audit_wrapped: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.write(false, move |c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM data_keys", [], |r| r.get(0))?;
            if usize::try_from(n).ok() != Some(keys.len()) {
                return Err(StoreError::Conflict(
                    "data keys changed during the rekey; run it again".into(),
                ));
            }
            for k in &keys {
                let updated = c.execute(
                    "UPDATE data_keys SET wrapped = ?1 WHERE generation = ?2",
                    params![k.wrapped, k.generation],
                )?;
                if updated != 1 {
                    return Err(StoreError::Conflict(
                        "data keys changed during the rekey; run it again".into(),
                    ));
                }
            }
            c.execute(
                "UPDATE settings SET value = ?1 WHERE name = 'audit_key_wrapped'",
                params![audit_wrapped],
            )?;
            Ok(())
        }))
    }

    fn add_data_key(&self, key: WrappedKey) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.write(false, move |c| {
            let n = c.execute(
                "INSERT INTO data_keys (generation, wrapped, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (generation) DO NOTHING",
                params![key.generation, key.wrapped, now_ms()],
            )?;
            Ok(n == 1)
        }))
    }

    fn sealed_below<'a>(
        &'a self,
        generation: u32,
        after: (&'a str, i64),
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<super::SealedRow>, StoreError>> {
        // Bytes 2..5 of an envelope are its generation, big-endian, so a
        // blob comparison (memcmp) orders them numerically.
        let below = generation.to_be_bytes().to_vec();
        let (path, version) = (after.0.to_owned(), after.1);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Box::pin(self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT s.path, v.version, v.envelope
                 FROM secrets s JOIN versions v ON v.secret_id = s.id
                 WHERE v.envelope IS NOT NULL AND substr(v.envelope, 2, 4) < ?1
                   AND s.path >= ?2 AND (s.path, v.version) > (?2, ?3)
                 ORDER BY s.path, v.version LIMIT ?4",
            )?;
            let rows = st.query_map(params![below, path, version, limit], |r| {
                Ok(super::SealedRow {
                    path: r.get(0)?,
                    version: r.get(1)?,
                    envelope: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        }))
    }

    fn swap_envelopes(
        &self,
        swaps: Vec<super::EnvelopeSwap>,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        // Cached envelopes would still open (old generations are kept), but
        // a rewrap means to replace them: forget them all.
        Box::pin(self.enqueue(false, true, Invalidate::All, move |c| {
            let mut st = c.prepare_cached(
                "UPDATE versions SET envelope = ?1
                 WHERE secret_id = (SELECT id FROM secrets WHERE path = ?2)
                   AND version = ?3 AND envelope = ?4",
            )?;
            let mut n = 0u64;
            for w in &swaps {
                n += st.execute(params![w.new, w.path, w.version, w.old])? as u64;
            }
            Ok(n)
        }))
    }

    fn setting<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let name = name.to_owned();
        Box::pin(self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT value FROM settings WHERE name = ?1")?
                    .query_row([name], |r| r.get(0))
                    .optional()?,
            )
        }))
    }

    fn insert_setting(
        &self,
        name: &str,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let name = name.to_owned();
        Box::pin(self.write(false, move |c| {
            let n = c.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, value],
            )?;
            Ok(n == 1)
        }))
    }

    fn counts(&self) -> BoxFuture<'_, Result<(i64, i64), StoreError>> {
        Box::pin(self.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(DISTINCT secret_id), COUNT(*) FROM versions WHERE envelope IS NOT NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        }))
    }

    fn export(&self) -> BoxFuture<'_, Result<Dump, StoreError>> {
        // Nothing a power loss could take back goes into a backup taken by
        // this process. (`secretd backup` run beside a live server reads
        // through its own connection; see docs/backup.md.)
        Box::pin(async move {
            let read = self.read(export_rows).await;
            self.shared.unsynced.after(None, read).await
        })
    }

    fn import(&self, dump: Dump, replace: bool) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.enqueue(true, true, Invalidate::All, move |c| {
            import_rows(c, &dump, replace)
        }))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.read(|c| {
                c.query_row("SELECT 1", [], |_| Ok(()))?;
                Ok(())
            })
            .await?;
            self.write(false, |_| Ok(())).await
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::crypto::CryptoError;

    fn path(s: &str) -> SecretPath {
        SecretPath::parse(s).unwrap()
    }

    fn ctx() -> WriteCtx {
        WriteCtx {
            actor: "test".into(),
            audit: crate::service::RequestCtx::operator().record("secret.write", None, None, 200),
        }
    }

    /// Point reads and deletes seek the `(secret_id, version)` index to
    /// the version range: they never walk a secret's other versions.
    #[test]
    fn point_statements_seek_the_version_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let c = store.readers.lock().unwrap().pop().unwrap();
        for sql in [GET_ROW, DELETE_ROWS] {
            let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let unbound = vec![rusqlite::types::Null; st.parameter_count()];
            let plan: Vec<String> = st
                .query_map(rusqlite::params_from_iter(unbound), |r| {
                    r.get::<_, String>(3)
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                plan.iter()
                    .any(|p| p.contains("(secret_id=? AND version>? AND version<?)")),
                "{sql}: {plan:?}"
            );
        }
    }

    fn plain_sealer(tag: u8) -> Sealer {
        Sealer::new(0, move |v: Version| Ok(vec![tag, v.get() as u8]))
    }

    /// Holds the writer inside a slow write, so the writes queued meanwhile
    /// run together in the next batch, in the order they were queued.
    async fn hold_writer(store: &Arc<SqliteStore>) -> tokio::task::JoinHandle<()> {
        let slow = Sealer::new(0, |v: Version| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            Ok(vec![v.get() as u8])
        });
        let s = Arc::clone(store);
        let held = tokio::spawn(async move {
            s.put(path("tfy-secret/g/slow"), slow, PutMode::Any, ctx())
                .await
                .unwrap();
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        held
    }

    /// Spawns `f` on the store and lets it queue before the next one.
    async fn queue<T: Send + 'static, F>(
        store: &Arc<SqliteStore>,
        f: impl FnOnce(Arc<SqliteStore>) -> F,
    ) -> tokio::task::JoinHandle<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let task = tokio::spawn(f(Arc::clone(store)));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        task
    }

    /// Writes to one path in one batch leave the read cache as the database:
    /// PUT then DELETE, DELETE then PUT, a PUT beside an import replacing
    /// everything (either order), and a PUT that was rolled back.
    #[tokio::test(flavor = "multi_thread")]
    async fn writes_in_one_batch_leave_the_cache_as_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        store.set_audit_key(Arc::new(crate::crypto::AuditKey::random().unwrap()));
        let p = path("tfy-secret/r/p");
        let newest = |s: Arc<SqliteStore>, p: SecretPath| async move {
            s.get(&p, None)
                .await
                .unwrap()
                .map(|r| (r.version, r.envelope[0]))
        };
        let put = |tag: u8, p: SecretPath, mode: PutMode| {
            move |s: Arc<SqliteStore>| async move { s.put(p, plain_sealer(tag), mode, ctx()).await }
        };
        let delete = |p: SecretPath| {
            move |s: Arc<SqliteStore>| async move { s.delete(p, None, ctx()).await }
        };
        let import =
            |dump: Dump| move |s: Arc<SqliteStore>| async move { s.import(dump, true).await };
        let any = PutMode::Any;

        store
            .put(p.clone(), plain_sealer(1), any, ctx())
            .await
            .unwrap();
        assert_eq!(newest(Arc::clone(&store), p.clone()).await.unwrap().1, 1);
        let commits = store.commits();
        let held = hold_writer(&store).await;
        let a = queue(&store, put(2, p.clone(), any)).await;
        let b = queue(&store, delete(p.clone())).await;
        held.await.unwrap();
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        assert_eq!(
            store.commits() - commits,
            2,
            "the PUT and DELETE shared a batch"
        );
        assert_eq!(
            newest(Arc::clone(&store), p.clone()).await,
            None,
            "PUT then DELETE"
        );

        store
            .put(p.clone(), plain_sealer(3), any, ctx())
            .await
            .unwrap();
        assert_eq!(newest(Arc::clone(&store), p.clone()).await.unwrap().1, 3);
        let held = hold_writer(&store).await;
        let b = queue(&store, delete(p.clone())).await;
        let a = queue(&store, put(4, p.clone(), any)).await;
        held.await.unwrap();
        b.await.unwrap().unwrap();
        let v = a.await.unwrap().unwrap();
        let got = newest(Arc::clone(&store), p.clone()).await;
        assert_eq!(got, Some((v, 4)), "DELETE then PUT");

        // an import that replaces everything with a dump lacking q
        let q = path("tfy-secret/r/q");
        let dump = store.export().await.unwrap();
        let held = hold_writer(&store).await;
        let a = queue(&store, put(5, q.clone(), any)).await;
        let b = queue(&store, import(dump)).await;
        held.await.unwrap();
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        assert_eq!(
            newest(Arc::clone(&store), q.clone()).await,
            None,
            "PUT then import"
        );
        let dump = store.export().await.unwrap();
        let held = hold_writer(&store).await;
        let b = queue(&store, import(dump)).await;
        let a = queue(&store, put(6, q.clone(), any)).await;
        held.await.unwrap();
        b.await.unwrap().unwrap();
        let v = a.await.unwrap().unwrap();
        let got = newest(Arc::clone(&store), q.clone()).await;
        assert_eq!(got, Some((v, 6)), "import then PUT");

        // an editor's PUT to a path without a live version is rolled back
        let e = path("tfy-secret/r/e");
        let held = hold_writer(&store).await;
        let a = queue(&store, put(7, e.clone(), PutMode::ExistingOnly)).await;
        held.await.unwrap();
        assert!(matches!(a.await.unwrap(), Err(StoreError::NoLiveVersion)));
        assert_eq!(newest(Arc::clone(&store), e).await, None, "rolled-back PUT");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_writes_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        store.set_audit_key(Arc::new(crate::crypto::AuditKey::random().unwrap()));
        // Hold the writer inside the first write so the others queue up.
        let slow = Sealer::new(0, |v: Version| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            Ok(vec![v.get() as u8])
        });
        let first = {
            let s = Arc::clone(&store);
            tokio::spawn(async move {
                s.put(path("tfy-secret/g/slow"), slow, PutMode::Any, ctx())
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let before = store.commits();
        let mut tasks = Vec::new();
        for i in 0..200u8 {
            let s = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                s.put(
                    path("tfy-secret/g/one"),
                    plain_sealer(i),
                    PutMode::Any,
                    ctx(),
                )
                .await
            }));
        }
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap().unwrap().get());
        }
        first.await.unwrap().unwrap();
        versions.sort_unstable();
        assert_eq!(versions, (1..=200).collect::<Vec<_>>());
        let commits = store.commits() - before;
        assert!(commits <= 3, "200 queued writes took {commits} commits");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_put_sealed_under_an_older_generation_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        store.set_audit_key(Arc::new(crate::crypto::AuditKey::random().unwrap()));
        let master = crate::crypto::MasterKey::generate().unwrap();
        for g in [1, 2] {
            let k = crate::crypto::Keyring::new_wrapped_key(&master, g).unwrap();
            assert!(store.add_data_key(k).await.unwrap());
        }
        let p = path("tfy-secret/gen/x");
        let stale = Sealer::new(1, |v: Version| Ok(vec![1, v.get() as u8]));
        match store.put(p.clone(), stale, PutMode::Any, ctx()).await {
            Err(StoreError::NewerDataKey(2)) => {}
            other => panic!("expected NewerDataKey(2), got {other:?}"),
        }
        assert!(store.get(&p, None).await.unwrap().is_none());
        let fresh = Sealer::new(2, |v: Version| Ok(vec![2, v.get() as u8]));
        let v = store
            .put(p.clone(), fresh, PutMode::Any, ctx())
            .await
            .unwrap();
        assert_eq!(v.get(), 1, "the refused write must not consume a version");
        let row = store.get(&p, None).await.unwrap().unwrap();
        assert_eq!(&row.envelope[..], &[2, 1]);
    }

    /// A PUT numbers its version after the newest version row, never
    /// below the `secrets` row's floor (which a restored backup sets), and
    /// an export records the true last version and write time although
    /// PUTs no longer rewrite the `secrets` row; a restored backup exports
    /// exactly as it was written, also with a floor above its version rows
    /// and version times out of order (replicas' clocks disagree).
    #[tokio::test(flavor = "multi_thread")]
    async fn versions_follow_the_newest_row_and_the_recorded_floor() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(crate::crypto::AuditKey::random().unwrap());
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        store.set_audit_key(Arc::clone(&key));
        let p = path("tfy-secret/floor/x");
        for want in 1..=3u8 {
            assert_eq!(put_tag(&store, &p, want).await, u64::from(want));
        }
        let gone = store.delete(p.clone(), None, ctx()).await.unwrap();
        assert_eq!(gone.len(), 3);
        assert_eq!(
            put_tag(&store, &p, 4).await,
            4,
            "deleted versions stay used"
        );
        let (row, newest) = exported_row(&store, &p).await;
        assert_eq!(row.last_version, 4);
        assert_eq!(row.updated_at, newest, "updated_at is the last write's");
        assert!(row.created_at <= row.updated_at);

        // A backup with a floor above its version rows, version 1 stamped
        // later than version 4, and an updated_at of its own.
        let mut dump = store.export().await.unwrap();
        let r = dump
            .secrets
            .iter_mut()
            .find(|r| r.path == p.as_str())
            .unwrap();
        r.last_version = 10;
        r.updated_at = newest - 7;
        let v1 = dump
            .versions
            .iter_mut()
            .find(|v| v.path == p.as_str() && v.version == 1)
            .unwrap();
        v1.created_at = newest + 50;
        let restored = SqliteStore::open(&dir.path().join("r.db")).unwrap();
        restored.set_audit_key(key);
        restored.import(dump.clone(), false).await.unwrap();
        let back = restored.export().await.unwrap();
        assert_eq!(
            back.checksum(),
            dump.checksum(),
            "a restore exports as written"
        );
        let (row, _) = exported_row(&restored, &p).await;
        assert_eq!((row.last_version, row.updated_at), (10, newest - 7));
        assert_eq!(
            put_tag(&restored, &p, 11).await,
            11,
            "numbered above the floor"
        );
        assert_eq!(put_tag(&restored, &p, 12).await, 12);
        let (row, newest) = exported_row(&restored, &p).await;
        assert_eq!((row.last_version, row.updated_at), (12, newest));
    }

    async fn put_tag(store: &SqliteStore, p: &SecretPath, tag: u8) -> u64 {
        store
            .put(p.clone(), plain_sealer(tag), PutMode::Any, ctx())
            .await
            .unwrap()
            .get()
    }

    /// `p`'s secret row in an export, and the creation time of its
    /// highest-numbered version.
    async fn exported_row(store: &SqliteStore, p: &SecretPath) -> (SecretRow, i64) {
        let d = store.export().await.unwrap();
        let row = d
            .secrets
            .into_iter()
            .find(|r| r.path == p.as_str())
            .unwrap();
        let newest = d
            .versions
            .iter()
            .filter(|v| v.path == row.path)
            .max_by_key(|v| v.version)
            .unwrap()
            .created_at;
        (row, newest)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_write_does_not_undo_its_batch_or_burn_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        store.set_audit_key(Arc::new(crate::crypto::AuditKey::random().unwrap()));
        let p = path("tfy-secret/f/x");
        let failing = Sealer::new(0, |_| Err(CryptoError::Rng));
        let (a, b, c) = tokio::join!(
            store.put(p.clone(), plain_sealer(1), PutMode::Any, ctx()),
            store.put(p.clone(), failing, PutMode::Any, ctx()),
            store.put(p.clone(), plain_sealer(3), PutMode::Any, ctx()),
        );
        assert!(b.is_err());
        let mut got = vec![a.unwrap().get(), c.unwrap().get()];
        got.sort_unstable();
        assert_eq!(
            got,
            vec![1, 2],
            "the failed write must not consume a version"
        );
        assert_eq!(
            store
                .put(p.clone(), plain_sealer(4), PutMode::Any, ctx())
                .await
                .unwrap()
                .get(),
            3
        );
    }

    #[test]
    fn weak_durability_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .unwrap();
        assert!(matches!(
            check_durability(&conn),
            Err(StoreError::NotDurable(_))
        ));
        conn.execute_batch("PRAGMA synchronous = FULL;").unwrap();
        assert!(check_durability(&conn).is_ok());
        conn.execute_batch("PRAGMA synchronous = EXTRA;").unwrap();
        assert!(check_durability(&conn).is_ok());
        conn.execute_batch("PRAGMA journal_mode = DELETE;").unwrap();
        assert!(matches!(
            check_durability(&conn),
            Err(StoreError::NotDurable(_))
        ));
    }
}
