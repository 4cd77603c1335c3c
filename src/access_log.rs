//! The access log: the embedded store's chained record of reads and
//! refusals, one JSON object per line in `<data-dir>/access.log`.
//!
//! Records of writes are committed in the same SQLite transaction as the
//! write (the store's chain, `audit_log`). Records of everything else (reads,
//! listings, refusals) used to be committed there too, one small
//! transaction per batch of requests, and that cost a quarter of the
//! server's CPU under read load; worse, every such commit changed the
//! database, so every reader connection dropped its page cache before its
//! next read. They now go to this file instead: a second chain with its own
//! label in the hash ([`Chain::Access`]), the same HMAC key, and the same
//! fail-closed rule (the response waits until its record is written, and a
//! failed write fails the request).
//!
//! - **Written before the response.** [`AccessLog::append`] chains the
//!   records and writes them with one `write(2)` under a mutex, in the
//!   request's own task: a short append to the page cache, like taking a
//!   lock, with no hand-off to another thread. A process crash (`kill -9`)
//!   loses nothing written; a background thread `fdatasync`s the file once
//!   a second, so a power loss can cost the last second of read records,
//!   as it could before, when they waited for the next durable commit.
//! - **Whole lines only.** A write that fails part-way is cut back off
//!   before the error is returned; a crash in the middle of a write leaves
//!   a torn last line, which the next start cuts off (logged).
//! - **One writer.** The server holds an exclusive lock on the file;
//!   a second server on the same data directory refuses to start. `audit
//!   verify` and `audit tail` read it without the lock.
//! - **Fails loudly on tampering.** At start the last record's own hash is
//!   checked; a mismatch refuses start-up (move the file aside to begin a
//!   new chain; `audit verify` names the first broken record).

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, Write as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::audit::{self, AuditRecord, Chain, ChainedRecord};
use crate::crypto::AuditKey;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "access.log";

/// How often written records are synced to disk.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The longest last line start-up looks for (records are well under 8 KiB).
const MAX_LINE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("access log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("access log {path} is held by another secretd process (one server per data directory)")]
    Locked { path: String },
    #[error(
        "access log {path}: its last record is unreadable ({reason}); run `secretd audit verify`, \
         and move the file aside to start a new chain"
    )]
    BadTail { path: String, reason: String },
    #[error("access log unusable since an earlier failure ({0}); restart secretd")]
    Broken(String),
    #[error("access log: cannot encode a record: {0}")]
    Encode(String),
}

/// The open, locked access log of a serving process.
pub struct AccessLog {
    path: PathBuf,
    key: Arc<AuditKey>,
    file: File,
    state: Mutex<State>,
    dirty: AtomicBool,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("path", &self.path)
            .finish()
    }
}

struct State {
    /// The chain's head: the last record's `seq` and hash.
    seq: i64,
    head: [u8; 32],
    /// Bytes of whole lines in the file.
    len: u64,
    /// Reused for each append's lines.
    buf: Vec<u8>,
    /// Set when the file may no longer end on a whole, synced line.
    broken: Option<String>,
}

/// A record's line before its place in the chain is known: what the
/// mutex-held part of [`AccessLog::append`] needs, prepared outside it.
struct Prepared {
    /// The record's JSON members (its object without the braces).
    members: Vec<u8>,
    /// The record's part of the hash input ([`audit::hash_tail`]).
    tail: Vec<u8>,
}

impl Prepared {
    fn of(r: &AuditRecord) -> Result<Self, AccessLogError> {
        let mut members =
            serde_json::to_vec(r).map_err(|e| AccessLogError::Encode(e.to_string()))?;
        // `{...}` -> `...`: a struct always serializes as one object.
        members.pop();
        members.remove(0);
        Ok(Prepared {
            members,
            tail: audit::hash_tail(r),
        })
    }

    /// Appends the line of record `seq`, chained after `prev` with `hash`:
    /// byte for byte the JSON of the [`ChainedRecord`], as `read` parses it.
    fn write_line(&self, buf: &mut Vec<u8>, seq: i64, prev: &[u8], hash: &[u8]) {
        buf.extend_from_slice(b"{\"seq\":");
        buf.extend_from_slice(seq.to_string().as_bytes());
        if !self.members.is_empty() {
            buf.push(b',');
            buf.extend_from_slice(&self.members);
        }
        buf.extend_from_slice(b",\"prev_hash\":\"");
        buf.extend_from_slice(audit::to_hex(prev).as_bytes());
        buf.extend_from_slice(b"\",\"hash\":\"");
        buf.extend_from_slice(audit::to_hex(hash).as_bytes());
        buf.extend_from_slice(b"\"}\n");
    }
}

impl AccessLog {
    /// Opens (creating, 0600) and locks the log at `path`, cuts off a torn
    /// last line, and checks the last record against `key`. Starts the
    /// thread that syncs it.
    pub fn open(path: &Path, key: Arc<AuditKey>) -> Result<Arc<Self>, AccessLogError> {
        let shown = path.display().to_string();
        let io = |source| AccessLogError::Io {
            path: shown.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        lock(&file, &shown)?;
        let (seq, head, len) = recover(&file, &shown, &key)?;
        let log = Arc::new(AccessLog {
            path: path.to_owned(),
            key,
            file,
            state: Mutex::new(State {
                seq,
                head,
                len,
                buf: Vec::with_capacity(4096),
                broken: None,
            }),
            dirty: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("secretd-access-sync".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(SYNC_EVERY);
                    let Some(log) = weak.upgrade() else { break };
                    log.sync();
                }
            })
            .map_err(io)?;
        Ok(log)
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, AccessLogError> {
        self.state
            .lock()
            .map_err(|_| AccessLogError::Broken("lock poisoned".into()))
    }

    /// The head: the last record's `seq` and hash (`(0, GENESIS)` if empty).
    pub fn head(&self) -> Result<(i64, [u8; 32]), AccessLogError> {
        let st = self.state()?;
        Ok((st.seq, st.head))
    }

    /// The head, once every record up to it is synced to disk (for an
    /// anchor: the store's chain must never name a record a power loss can
    /// take back). Blocks for an `fdatasync`.
    pub fn synced_head(&self) -> Result<(i64, [u8; 32]), AccessLogError> {
        let head = self.head()?;
        self.file.sync_data().map_err(|source| AccessLogError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        Ok(head)
    }

    /// Chains `records` after the head and writes them. `Ok` means they are
    /// in the file (the OS's page cache); an error means none of them is.
    ///
    /// Only the chaining (an HMAC per record) and the `write(2)` run under
    /// the mutex; the JSON and the hash input are prepared before it, so
    /// the two workers hand the lock over less often.
    pub fn append(&self, records: &[AuditRecord]) -> Result<(), AccessLogError> {
        let prepared = records
            .iter()
            .map(Prepared::of)
            .collect::<Result<Vec<_>, _>>()?;
        let mut st = self.state()?;
        if let Some(why) = &st.broken {
            return Err(AccessLogError::Broken(why.clone()));
        }
        let State {
            seq,
            head,
            len,
            buf,
            broken,
        } = &mut *st;
        buf.clear();
        let (mut next_seq, mut prev) = (*seq, *head);
        for p in &prepared {
            next_seq += 1;
            let hash = audit::chain_hash_tail(Chain::Access, &self.key, &prev, next_seq, &p.tail);
            p.write_line(buf, next_seq, &prev, &hash);
            prev = hash;
        }
        let written = (|| {
            // A disk that fills up part-way through the lines.
            fail::fail_point!("access-log-write-fails", |_| {
                (&self.file).write_all(&buf[..buf.len() / 2])?;
                Err(std::io::Error::other("fail point access-log-write-fails"))
            });
            (&self.file).write_all(buf)
        })();
        match written {
            Ok(()) => {
                *seq = next_seq;
                *head = prev;
                *len += buf.len() as u64;
                self.dirty.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                // A write that failed part-way leaves a torn line: cut it
                // off, or stop appending if even that fails, or if the file
                // is shorter than what this process wrote (truncated behind
                // its back: cutting "back" would pad it with zeros).
                let cut = match self.file.metadata() {
                    Ok(m) if m.len() < *len => Err(format!(
                        "the file is {} bytes, shorter than the {} written",
                        m.len(),
                        *len
                    )),
                    Ok(_) => self.file.set_len(*len).map_err(|t| t.to_string()),
                    Err(t) => Err(t.to_string()),
                };
                if let Err(t) = cut {
                    tracing::error!(error = %t, "access log: cannot cut off a failed write; reads now fail");
                    *broken = Some(format!("cutting off a failed write: {t}"));
                }
                Err(AccessLogError::Io {
                    path: self.path.display().to_string(),
                    source: e,
                })
            }
        }
    }

    /// Syncs what was written since the last sync. A failed sync may have
    /// lost written records, so it stops further appends (reads fail closed).
    fn sync(&self) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        fail::fail_point!("access-log-sync-fails", |_| self
            .break_with("fdatasync failed: fail point access-log-sync-fails".into()));
        if let Err(e) = self.file.sync_data() {
            self.break_with(format!("fdatasync failed: {e}"));
        }
    }

    fn break_with(&self, why: String) {
        tracing::error!(reason = %why, "access log broken; reads fail until restart");
        if let Ok(mut st) = self.state.lock() {
            st.broken = Some(why);
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if self.dirty.load(Ordering::Acquire)
            && let Err(e) = self.file.sync_data()
        {
            tracing::error!(error = %e, "access log: final sync failed");
        }
    }
}

/// Takes the exclusive lock that marks the log's one writer (or a command
/// replacing it); refuses if another process holds it.
fn lock(file: &File, shown: &str) -> Result<(), AccessLogError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(AccessLogError::Locked {
            path: shown.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(AccessLogError::Io {
            path: shown.to_owned(),
            source,
        }),
    }
}

/// Finds the head of the log in `file`: cuts off a torn last line and
/// checks the last whole one. Returns `(seq, hash, length)`.
fn recover(
    file: &File,
    shown: &str,
    key: &AuditKey,
) -> Result<(i64, [u8; 32], u64), AccessLogError> {
    let io = |source| AccessLogError::Io {
        path: shown.to_owned(),
        source,
    };
    let bad = |reason: String| AccessLogError::BadTail {
        path: shown.to_owned(),
        reason,
    };
    let len = file.metadata().map_err(io)?.len();
    let mut window = 64 * 1024;
    let (start, buf) = loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0u8; usize::try_from(len - start).map_err(|e| bad(e.to_string()))?];
        file.read_exact_at(&mut buf, start).map_err(io)?;
        // The window must hold the last line's start (the newline before it,
        // or the file's start), unless the file holds no whole line at all.
        let newlines = buf.iter().filter(|&&b| b == b'\n').count();
        if start == 0 || newlines >= 2 {
            break (start, buf);
        }
        if window >= MAX_LINE {
            return Err(bad(format!("no line break in its last {MAX_LINE} bytes")));
        }
        window *= 4;
    };
    let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let complete = start + whole as u64;
    if complete < len {
        tracing::warn!(
            path = shown,
            bytes = len - complete,
            "access log ends in a torn line (a crash during a write); cutting it off"
        );
        file.set_len(complete).map_err(io)?;
        file.sync_data().map_err(io)?;
    }
    if whole == 0 {
        return Ok((0, audit::GENESIS, 0));
    }
    let line_start = buf[..whole - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let last: ChainedRecord = serde_json::from_slice(&buf[line_start..whole - 1])
        .map_err(|e| bad(format!("not a record: {e}")))?;
    let hash: [u8; 32] = last
        .hash
        .as_slice()
        .try_into()
        .map_err(|_| bad("its hash is not 32 bytes".into()))?;
    if audit::chain_hash_in(Chain::Access, key, &last.prev_hash, last.seq, &last.record) != hash {
        return Err(bad(format!(
            "record {} does not match its hash (edited, or chained under another key)",
            last.seq
        )));
    }
    Ok((last.seq, hash, complete))
}

/// The operation of an anchor: a record in the store's chain holding the
/// access log's head (`version`: its `seq`; `request_id`:
/// [`ANCHOR_PREFIX`] and its hash), written at start, every minute the log
/// grew, and at shutdown, each time of a head already synced to disk.
/// `audit verify` checks the log against the anchors since the last
/// [`NEW_CHAIN_OPERATION`], so a log truncated below an anchor, replaced,
/// or deleted (and started over) does not verify.
pub const ANCHOR_OPERATION: &str = "access_log.anchor";
pub const ANCHOR_PREFIX: &str = "access-log-head:";
/// The operation of the record that begins a new access chain on purpose:
/// `secretd audit rotate-access-log` and `secretd restore`, after moving the
/// old log aside.
pub const NEW_CHAIN_OPERATION: &str = "access_log.new_chain";

/// The anchor record of head `(seq, hash)`.
pub fn anchor_record(seq: i64, hash: &[u8; 32], time_ms: i64) -> AuditRecord {
    AuditRecord {
        time_ms,
        request_id: format!("{ANCHOR_PREFIX}{}", audit::to_hex(hash)),
        token_id: None,
        token_name: None,
        client: None,
        operation: ANCHOR_OPERATION.into(),
        path: None,
        version: Some(seq),
        outcome: "ok".into(),
        status: 0,
    }
}

/// The record that begins a new access chain.
pub fn new_chain_record(time_ms: i64) -> AuditRecord {
    AuditRecord {
        operation: NEW_CHAIN_OPERATION.into(),
        ..anchor_record(0, &audit::GENESIS, time_ms)
    }
}

/// What a record of the store's chain says about the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// Its head was `(seq, hash)`.
    Anchor(i64, Vec<u8>),
    /// A new chain began.
    NewChain,
}

/// The mark `r` holds, if it is one.
pub fn parse_mark(r: &AuditRecord) -> Option<Mark> {
    match r.operation.as_str() {
        NEW_CHAIN_OPERATION => Some(Mark::NewChain),
        ANCHOR_OPERATION => {
            let hash = audit::from_hex(r.request_id.strip_prefix(ANCHOR_PREFIX)?)?;
            Some(Mark::Anchor(r.version?, hash))
        }
        _ => None,
    }
}

/// The access log at a path, locked against servers (if it exists), for a
/// command that replaces it: `restore`, `audit rotate-access-log`.
#[derive(Debug)]
pub struct Held {
    path: PathBuf,
    /// Open and locked; `None` if there is no log.
    file: Option<File>,
}

impl Held {
    /// Locks the log at `path`; refuses while a server holds it.
    pub fn take(path: &Path) -> Result<Self, AccessLogError> {
        let shown = path.display().to_string();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Held {
                    path: path.to_owned(),
                    file: None,
                });
            }
            Err(source) => {
                return Err(AccessLogError::Io {
                    path: shown,
                    source,
                });
            }
        };
        lock(&file, &shown)?;
        Ok(Held {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    /// Renames the log to `<path>.<unix ms>` (still locked while it moves);
    /// returns the new name, `None` if there was no log.
    pub fn set_aside(self) -> Result<Option<PathBuf>, AccessLogError> {
        let Some(_locked) = self.file else {
            return Ok(None);
        };
        let mut to = self.path.as_os_str().to_owned();
        to.push(format!(".{}", crate::store::now_ms()));
        let to = PathBuf::from(to);
        std::fs::rename(&self.path, &to).map_err(|source| AccessLogError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        Ok(Some(to))
    }
}

/// One line of the log, as read back by [`read`].
#[derive(Debug)]
pub enum Entry {
    Record(Box<ChainedRecord>),
    /// A whole line that is not a record (1-based line number, why).
    Unreadable(u64, String),
    /// An unterminated last line: a write in progress, or one a crash
    /// interrupted (its request failed); the next start cuts it off.
    Torn,
}

/// Reads the access log at `path` line by line (for `audit verify` and
/// `audit tail`, without the writer's lock); `Ok(None)` if there is none.
pub fn read(path: &Path) -> std::io::Result<Option<impl Iterator<Item = Entry> + use<>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut reader = std::io::BufReader::new(file);
    let mut n = 0u64;
    let mut line = Vec::new();
    let mut failed = false;
    Ok(Some(std::iter::from_fn(move || {
        if failed {
            return None;
        }
        line.clear();
        n += 1;
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) if line.last() != Some(&b'\n') => Some(Entry::Torn),
            Ok(_) => Some(match serde_json::from_slice(&line[..line.len() - 1]) {
                Ok(r) => Entry::Record(r),
                Err(e) => Entry::Unreadable(n, e.to_string()),
            }),
            Err(e) => {
                // An I/O error would repeat: end here.
                failed = true;
                Some(Entry::Unreadable(n, e.to_string()))
            }
        }
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::Verifier;
    use crate::audit::tests::rec;

    fn verify(path: &Path, key: &AuditKey) -> Result<i64, String> {
        let mut v = Verifier::of(Chain::Access, key);
        for e in read(path).unwrap().unwrap() {
            match e {
                Entry::Record(r) => v.feed(&r).map_err(|b| b.to_string())?,
                other => return Err(format!("{other:?}")),
            }
        }
        Ok(v.count())
    }

    /// Opens `path` again once the previous handle's sync thread let go.
    fn reopen(path: &Path, key: &Arc<AuditKey>) -> Result<Arc<AccessLog>, AccessLogError> {
        for _ in 0..50 {
            match AccessLog::open(path, Arc::clone(key)) {
                Err(AccessLogError::Locked { .. }) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => return other,
            }
        }
        AccessLog::open(path, Arc::clone(key))
    }

    #[test]
    fn prepared_lines_are_the_chained_records_json() {
        let key = AuditKey::random().unwrap();
        let mut prev = [7u8; 32];
        for (i, r) in crate::audit::tests::varied_records().iter().enumerate() {
            let seq = i64::try_from(i).unwrap() * 977 - 3;
            let p = Prepared::of(r).unwrap();
            let hash = audit::chain_hash_tail(Chain::Access, &key, &prev, seq, &p.tail);
            assert_eq!(
                hash,
                audit::chain_hash_in(Chain::Access, &key, &prev, seq, r)
            );
            let mut line = Vec::new();
            p.write_line(&mut line, seq, &prev, &hash);
            let mut want = serde_json::to_vec(&ChainedRecord {
                seq,
                record: r.clone(),
                prev_hash: prev.to_vec(),
                hash: hash.to_vec(),
            })
            .unwrap();
            want.push(b'\n');
            assert_eq!(
                String::from_utf8(line).unwrap(),
                String::from_utf8(want).unwrap(),
                "record {i}"
            );
            prev = hash;
        }
    }

    #[test]
    fn concurrent_appends_form_one_chain_and_a_long_log_reopens_at_its_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let key = Arc::new(AuditKey::random().unwrap());
        let log = AccessLog::open(&path, Arc::clone(&key)).unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..200 {
                        log.append(&[rec(t * 1000 + i)]).unwrap();
                    }
                });
            }
        });
        let head = log.head().unwrap();
        assert_eq!(head.0, 1600);
        drop(log);
        assert_eq!(verify(&path, &key), Ok(1600));
        assert!(std::fs::metadata(&path).unwrap().len() > 4 * 64 * 1024);
        // a torn tail longer than the first look-back window
        let mut torn = OpenOptions::new().append(true).open(&path).unwrap();
        torn.write_all(&vec![b'x'; 100 * 1024]).unwrap();
        drop(torn);
        let log = reopen(&path, &key).unwrap();
        assert_eq!(log.head().unwrap(), head);
        log.append(&[rec(1)]).unwrap();
        drop(log);
        assert_eq!(verify(&path, &key), Ok(1601));
    }

    #[test]
    fn appends_chain_across_restarts_and_torn_lines_are_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let key = Arc::new(AuditKey::random().unwrap());
        {
            let log = AccessLog::open(&path, Arc::clone(&key)).unwrap();
            log.append(&[rec(1), rec(2)]).unwrap();
            log.append(&[rec(3)]).unwrap();
            // one writer per file
            assert!(matches!(
                AccessLog::open(&path, Arc::clone(&key)),
                Err(AccessLogError::Locked { .. })
            ));
        }
        assert_eq!(verify(&path, &key), Ok(3));
        // a crash in the middle of a write
        let whole = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"seq\":4,\"time_ms\"")
            .unwrap();
        {
            let log = reopen(&path, &key).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
            log.append(&[rec(4)]).unwrap();
        }
        assert_eq!(verify(&path, &key), Ok(4));
        // a record moved from the store's chain does not verify here
        let store_chained = audit::chain(&key, (4, vec![0; 32]), vec![rec(5)]);
        assert_ne!(
            store_chained[0].hash,
            audit::chain_hash_in(Chain::Access, &key, &[0; 32], 5, &rec(5)).to_vec()
        );
    }

    #[test]
    fn a_tampered_last_record_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let key = Arc::new(AuditKey::random().unwrap());
        AccessLog::open(&path, Arc::clone(&key))
            .unwrap()
            .append(&[rec(1), rec(2)])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"status\":200,", "\"status\":500,")).unwrap();
        let err = reopen(&path, &key).unwrap_err();
        assert!(matches!(err, AccessLogError::BadTail { .. }), "{err}");
        // and under another key, an untouched log does not open either
        std::fs::write(&path, text).unwrap();
        let other = Arc::new(AuditKey::random().unwrap());
        assert!(reopen(&path, &other).is_err());
        assert!(reopen(&path, &key).is_ok());
    }
}
