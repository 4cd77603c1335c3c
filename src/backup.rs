//! Backup files: a logical, backend-neutral copy of a store's [`Dump`], so a
//! backup taken on one backend restores into either.
//!
//! The snapshot is whatever [`crate::store::Store::export`] reads in its one
//! read transaction, so it is consistent while a server keeps writing. Rows
//! are copied as stored: envelopes, wrapped data keys, the wrapped audit
//! key, token hashes and audit records. Nothing is decrypted; the master key
//! is only used (by the caller, through [`check_master_key`]) to prove it
//! opens the data keys.
//!
//! The file is UTF-8 JSON lines:
//!
//! ```text
//! {"magic":"secretd-backup","format":1, created, source, version, counts, dump_sha256}
//! {"t":"secret",...} {"t":"version",...} {"t":"data_key",...} {"t":"setting",...}
//! {"t":"token",...} {"t":"audit",...}             one row per line, binary as base64
//! {"t":"end","file_sha256":"<hex>"}                SHA-256 of every byte before this line
//! ```
//!
//! `dump_sha256` is [`Dump::checksum`] (SHA-256 over the rows in canonical
//! order, the same value `secretd migrate` checks), so a restore can prove the
//! store it wrote holds exactly the rows that were backed up. The trailer
//! catches truncation and any edited byte before a row is trusted.
//!
//! The whole dump is held in memory on both sides (the file is streamed).

use std::io::{BufRead, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{AuditRecord, ChainedRecord};
use crate::crypto::{CryptoError, Keyring, MasterKey, WrappedKey};
use crate::store::{Dump, KeyRow, SecretRow, TokenRow, VersionRow};

/// The first field of every backup file.
pub const MAGIC: &str = "secretd-backup";
/// The format this secretd writes and the newest it reads.
pub const FORMAT: u32 = 1;
/// The setting holding the wrapped audit key (see `bootstrap`).
const AUDIT_KEY_SETTING: &str = crate::bootstrap::AUDIT_KEY_SETTING;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("not a secretd backup file")]
    NotABackup,
    #[error(
        "the backup's format {found} is newer than this secretd understands ({FORMAT}); restore it with a newer secretd"
    )]
    TooNew { found: u64 },
    #[error("unsupported backup format {0}")]
    Unsupported(u64),
    #[error("the backup file is truncated: its end marker is missing")]
    Truncated,
    #[error(
        "the backup file is damaged: checksum mismatch (its SHA-256 is {found}, the file records {recorded})"
    )]
    Checksum { recorded: String, found: String },
    #[error("the backup file is malformed at line {line}: {what}")]
    Malformed { line: usize, what: String },
    #[error("the backup file is inconsistent: {0}")]
    Inconsistent(String),
    #[error(
        "the master key does not open this backup (it was made under a different master key): {0}"
    )]
    WrongMasterKey(CryptoError),
}

/// How many rows of each kind a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub secrets: u64,
    pub versions: u64,
    pub live_versions: u64,
    pub data_keys: u64,
    pub settings: u64,
    pub tokens: u64,
    pub audit_records: u64,
}

impl Counts {
    pub fn of(d: &Dump) -> Self {
        let n = |x: usize| x as u64;
        Counts {
            secrets: n(d.secrets.len()),
            versions: n(d.versions.len()),
            live_versions: n(d.versions.iter().filter(|v| v.envelope.is_some()).count()),
            data_keys: n(d.data_keys.len()),
            settings: n(d.settings.len()),
            tokens: n(d.tokens.len()),
            audit_records: n(d.audit.len()),
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} secrets, {} versions ({} live, {} deleted), {} data keys, {} tokens, {} audit records",
            self.secrets,
            self.versions,
            self.live_versions,
            self.versions - self.live_versions,
            self.data_keys,
            self.tokens,
            self.audit_records
        )
    }
}

/// The first line of a backup file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub magic: String,
    pub format: u32,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub created_at_ms: i64,
    /// The backend the snapshot was read from: `sqlite` or `postgres`.
    pub source: String,
    pub secretd_version: String,
    pub counts: Counts,
    /// [`Dump::checksum`] of the rows.
    pub dump_sha256: String,
}

/// One line after the header.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Line {
    Secret {
        path: String,
        last_version: i64,
        created_at: i64,
        updated_at: i64,
    },
    Version {
        path: String,
        version: i64,
        #[serde(with = "b64_opt")]
        envelope: Option<Vec<u8>>,
        created_at: i64,
        deleted_at: Option<i64>,
        created_by: Option<String>,
    },
    DataKey {
        generation: i64,
        #[serde(with = "b64")]
        wrapped: Vec<u8>,
        created_at: i64,
    },
    Setting {
        name: String,
        #[serde(with = "b64")]
        value: Vec<u8>,
    },
    Token {
        id: String,
        name: String,
        #[serde(with = "b64")]
        hash: Vec<u8>,
        role: String,
        scopes: String,
        created_at: i64,
        created_by: String,
        expires_at: Option<i64>,
        last_used_at: Option<i64>,
        revoked_at: Option<i64>,
    },
    Audit {
        seq: i64,
        time_ms: i64,
        request_id: String,
        token_id: Option<String>,
        token_name: Option<String>,
        client: Option<String>,
        operation: String,
        path: Option<String>,
        version: Option<i64>,
        outcome: String,
        status: u16,
        #[serde(with = "b64")]
        prev_hash: Vec<u8>,
        #[serde(with = "b64")]
        hash: Vec<u8>,
    },
    End {
        file_sha256: String,
    },
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(b))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use super::*;
    pub fn serialize<S: serde::Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_str(&B64.encode(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| B64.decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

fn hex(b: &[u8]) -> String {
    crate::audit::to_hex(b)
}

/// Hashes every byte written through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
}

impl<W: Write> Hashing<W> {
    fn line<T: Serialize>(&mut self, v: &T) -> std::io::Result<()> {
        serde_json::to_writer(&mut *self, v)?;
        self.write_all(b"\n")
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `dump` as a backup file to `out` (buffer it) and returns its header.
pub fn write(out: impl Write, dump: &Dump, source: &str) -> Result<Header, BackupError> {
    let now = crate::store::now_ms();
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(now).unwrap_or(0));
    let header = Header {
        magic: MAGIC.into(),
        format: FORMAT,
        created_at: humantime::format_rfc3339_millis(t).to_string(),
        created_at_ms: now,
        source: source.into(),
        secretd_version: env!("CARGO_PKG_VERSION").into(),
        counts: Counts::of(dump),
        dump_sha256: dump.checksum(),
    };
    let mut w = Hashing {
        inner: out,
        sha: Sha256::new(),
    };
    w.line(&header)?;
    for s in &dump.secrets {
        w.line(&Line::Secret {
            path: s.path.clone(),
            last_version: s.last_version,
            created_at: s.created_at,
            updated_at: s.updated_at,
        })?;
    }
    for v in &dump.versions {
        w.line(&Line::Version {
            path: v.path.clone(),
            version: v.version,
            envelope: v.envelope.clone(),
            created_at: v.created_at,
            deleted_at: v.deleted_at,
            created_by: v.created_by.clone(),
        })?;
    }
    for k in &dump.data_keys {
        w.line(&Line::DataKey {
            generation: k.generation,
            wrapped: k.wrapped.clone(),
            created_at: k.created_at,
        })?;
    }
    for (name, value) in &dump.settings {
        w.line(&Line::Setting {
            name: name.clone(),
            value: value.clone(),
        })?;
    }
    for t in &dump.tokens {
        let t = t.clone();
        w.line(&Line::Token {
            id: t.id,
            name: t.name,
            hash: t.hash,
            role: t.role,
            scopes: t.scopes,
            created_at: t.created_at,
            created_by: t.created_by,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        })?;
    }
    for r in &dump.audit {
        let r = r.clone();
        let a = r.record;
        w.line(&Line::Audit {
            seq: r.seq,
            time_ms: a.time_ms,
            request_id: a.request_id,
            token_id: a.token_id,
            token_name: a.token_name,
            client: a.client,
            operation: a.operation,
            path: a.path,
            version: a.version,
            outcome: a.outcome,
            status: a.status,
            prev_hash: r.prev_hash,
            hash: r.hash,
        })?;
    }
    let file_sha256 = hex(&w.sha.clone().finalize());
    // The trailer is not part of its own hash.
    let mut inner = w.inner;
    serde_json::to_writer(&mut inner, &Line::End { file_sha256 }).map_err(std::io::Error::from)?;
    inner.write_all(b"\n")?;
    inner.flush()?;
    Ok(header)
}

/// Reads and verifies a backup file: the format, the whole-file checksum
/// (before any row is trusted), then the header's counts and dump checksum
/// against the rows.
pub fn read(mut r: impl BufRead) -> Result<(Header, Dump), BackupError> {
    let mut sha = Sha256::new();
    let mut buf = Vec::new();
    let n = r.read_until(b'\n', &mut buf)?;
    if n == 0 || !buf.ends_with(b"\n") {
        return Err(BackupError::NotABackup);
    }
    sha.update(&buf);
    let first: serde_json::Value =
        serde_json::from_slice(&buf).map_err(|_| BackupError::NotABackup)?;
    if first.get("magic").and_then(|m| m.as_str()) != Some(MAGIC) {
        return Err(BackupError::NotABackup);
    }
    match first.get("format").and_then(serde_json::Value::as_u64) {
        Some(f) if f == u64::from(FORMAT) => {}
        Some(f) if f > u64::from(FORMAT) => return Err(BackupError::TooNew { found: f }),
        Some(f) => return Err(BackupError::Unsupported(f)),
        None => return Err(BackupError::NotABackup),
    }
    // A damaged line is reported only once the checksum says the file is
    // intact (else the checksum error is the accurate one).
    let mut first_bad: Option<BackupError> = None;
    fn bad(line: usize, what: String, first_bad: &mut Option<BackupError>) {
        if first_bad.is_none() {
            *first_bad = Some(BackupError::Malformed { line, what });
        }
    }
    let header: Option<Header> = match serde_json::from_value(first) {
        Ok(h) => Some(h),
        Err(e) => {
            bad(1, e.to_string(), &mut first_bad);
            None
        }
    };
    let mut d = Dump::default();
    let mut line_no = 1;
    let recorded = loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf)? == 0 || !buf.ends_with(b"\n") {
            return Err(BackupError::Truncated);
        }
        line_no += 1;
        let line: Line = match serde_json::from_slice(&buf) {
            Ok(l) => l,
            Err(e) => {
                sha.update(&buf);
                bad(line_no, e.to_string(), &mut first_bad);
                continue;
            }
        };
        if let Line::End { file_sha256 } = line {
            break file_sha256;
        }
        sha.update(&buf);
        push(&mut d, line);
    };
    let found = hex(&sha.finalize());
    if found != recorded {
        return Err(BackupError::Checksum { recorded, found });
    }
    buf.clear();
    if r.read_until(b'\n', &mut buf)? != 0 {
        return Err(BackupError::Malformed {
            line: line_no + 1,
            what: "data after the end marker".into(),
        });
    }
    if let Some(e) = first_bad {
        return Err(e);
    }
    let header = header.ok_or(BackupError::NotABackup)?;
    let counts = Counts::of(&d);
    if counts != header.counts {
        return Err(BackupError::Inconsistent(format!(
            "the header counts {}, the file holds {counts}",
            header.counts
        )));
    }
    let sum = d.checksum();
    if sum != header.dump_sha256 {
        return Err(BackupError::Inconsistent(format!(
            "the rows' checksum {sum} differs from the header's {}",
            header.dump_sha256
        )));
    }
    d.sort();
    Ok((header, d))
}

fn push(d: &mut Dump, line: Line) {
    match line {
        Line::Secret {
            path,
            last_version,
            created_at,
            updated_at,
        } => d.secrets.push(SecretRow {
            path,
            last_version,
            created_at,
            updated_at,
        }),
        Line::Version {
            path,
            version,
            envelope,
            created_at,
            deleted_at,
            created_by,
        } => d.versions.push(VersionRow {
            path,
            version,
            envelope,
            created_at,
            deleted_at,
            created_by,
        }),
        Line::DataKey {
            generation,
            wrapped,
            created_at,
        } => d.data_keys.push(KeyRow {
            generation,
            wrapped,
            created_at,
        }),
        Line::Setting { name, value } => d.settings.push((name, value)),
        Line::Token {
            id,
            name,
            hash,
            role,
            scopes,
            created_at,
            created_by,
            expires_at,
            last_used_at,
            revoked_at,
        } => d.tokens.push(TokenRow {
            id,
            name,
            hash,
            role,
            scopes,
            created_at,
            created_by,
            expires_at,
            last_used_at,
            revoked_at,
        }),
        Line::Audit {
            seq,
            time_ms,
            request_id,
            token_id,
            token_name,
            client,
            operation,
            path,
            version,
            outcome,
            status,
            prev_hash,
            hash,
        } => d.audit.push(ChainedRecord {
            seq,
            record: AuditRecord {
                time_ms,
                request_id,
                token_id,
                token_name,
                client,
                operation,
                path,
                version,
                outcome,
                status,
            },
            prev_hash,
            hash,
        }),
        Line::End { .. } => {}
    }
}

/// Proves `master` opens every data key and the audit key in `dump`
/// (without keeping them): a restore refuses before writing anything if not.
pub fn check_master_key(dump: &Dump, master: &MasterKey) -> Result<(), BackupError> {
    let keys = dump
        .data_keys
        .iter()
        .map(|k| {
            Ok(WrappedKey {
                generation: u32::try_from(k.generation).map_err(|_| {
                    BackupError::Inconsistent(format!(
                        "data key generation {} out of range",
                        k.generation
                    ))
                })?,
                wrapped: k.wrapped.clone(),
            })
        })
        .collect::<Result<Vec<_>, BackupError>>()?;
    if !keys.is_empty() {
        Keyring::unwrap_all(master, &keys).map_err(BackupError::WrongMasterKey)?;
    }
    if let Some((_, wrapped)) = dump.settings.iter().find(|(n, _)| n == AUDIT_KEY_SETTING) {
        master
            .audit_key(wrapped)
            .map_err(BackupError::WrongMasterKey)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn sample() -> Dump {
        let mut d = Dump::default();
        d.secrets.push(SecretRow {
            path: "tfy-secret/a".into(),
            last_version: 2,
            created_at: 1,
            updated_at: 2,
        });
        for (v, env) in [(1, None), (2, Some(vec![0u8, 1, 2, 255]))] {
            d.versions.push(VersionRow {
                path: "tfy-secret/a".into(),
                version: v,
                envelope: env,
                created_at: v,
                deleted_at: None,
                created_by: Some("static-1".into()),
            });
        }
        d.settings.push(("x".into(), vec![9, 9]));
        d
    }

    #[test]
    fn round_trip_and_damage() {
        let d = sample();
        let mut out = Vec::new();
        let h = write(&mut out, &d, "sqlite").expect("write");
        let (h2, d2) = read(&out[..]).expect("read");
        assert_eq!(d2, d);
        assert_eq!(h2.dump_sha256, h.dump_sha256);
        // every single flipped bit after the magic is caught
        for i in 60..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x04;
            assert!(read(&bad[..]).is_err(), "flip at {i} not caught");
        }
        for n in 0..out.len() {
            assert!(read(&out[..n]).is_err(), "truncation at {n} not caught");
        }
    }
}
