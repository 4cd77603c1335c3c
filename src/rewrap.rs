//! `secretd key rewrap`: re-encrypts every live version sealed under an
//! older data key generation into the newest one, while servers keep serving
//! on the same store.
//!
//! It walks the live versions whose envelope names a generation below the
//! target, keyset-paginated by (path, version), in small batches. For each
//! batch it opens every envelope with its generation's key and seals it
//! again for the same path and version under the target generation (fresh
//! nonce, AAD naming the new generation), then writes the batch in one short
//! transaction as compare-and-swaps on the old envelope bytes: a version
//! deleted (or re-sealed) meanwhile is left as it is, so a DELETE is never
//! undone. Nothing is remembered between runs: the query itself is the
//! resume point, so running it again finishes whatever is left.
//!
//! An envelope that does not open is not re-sealed: it is left untouched and
//! reported by path and version (never a value), and the walk goes on.
//! Old generations' keys are kept (old backups stay readable).

use std::time::{Duration, Instant};

use crate::crypto::Keyring;
use crate::path::SecretPath;
use crate::store::{EnvelopeSwap, Store, StoreError, db_version};

/// How to walk the store.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rows per batch (one read, one short write transaction).
    pub batch: usize,
    /// Sleep between batches, leaving the write lock to the servers.
    pub pause: Duration,
    /// Stop after this many batches (for tests of resuming).
    pub max_batches: Option<u64>,
}

/// Where a run stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The generation everything is re-sealed under.
    pub target: u32,
    /// Live versions under older generations when the run started.
    pub total: u64,
    /// Re-sealed and written.
    pub rewrapped: u64,
    /// Deleted or changed by someone else between read and write; left alone.
    pub skipped: u64,
    /// (path, version) of envelopes that did not open; left untouched.
    pub failed: Vec<(String, i64)>,
    /// Whether the walk reached the end (false if stopped by `max_batches`).
    pub complete: bool,
}

/// Re-seals every live version below `keyring`'s active generation.
/// `progress` is called after each batch.
pub async fn run(
    store: &dyn Store,
    keyring: &Keyring,
    opts: &Options,
    mut progress: impl FnMut(&Summary),
) -> Result<Summary, StoreError> {
    let target = keyring.active_generation();
    let total = store
        .key_usage()
        .await?
        .iter()
        .filter(|u| u.generation < target)
        .map(|u| u64::try_from(u.live_versions).unwrap_or(0))
        .sum();
    let mut s = Summary {
        target,
        total,
        ..Summary::default()
    };
    let mut cursor = (String::new(), 0i64);
    let mut batches = 0u64;
    loop {
        if opts.max_batches.is_some_and(|m| batches >= m) {
            return Ok(s);
        }
        let rows = store
            .sealed_below(target, (&cursor.0, cursor.1), opts.batch.max(1))
            .await?;
        let Some(last) = rows.last() else {
            s.complete = true;
            return Ok(s);
        };
        cursor = (last.path.clone(), last.version);
        let mut swaps = Vec::with_capacity(rows.len());
        for row in rows {
            let resealed = SecretPath::parse(&row.path)
                .map_err(|_| StoreError::Corrupt(format!("bad path {:?}", row.path)))
                .and_then(|p| Ok((db_version(&p, row.version)?, p)))
                .and_then(|(v, p)| Ok(keyring.reseal(&p, v, &row.envelope)?));
            match resealed {
                Ok(new) => swaps.push(EnvelopeSwap {
                    path: row.path,
                    version: row.version,
                    old: row.envelope,
                    new,
                }),
                Err(e) => {
                    tracing::error!(path = %row.path, version = row.version, error = %e,
                        "envelope does not open; left as it is");
                    s.failed.push((row.path, row.version));
                }
            }
        }
        let tried = swaps.len() as u64;
        let done = if swaps.is_empty() {
            0
        } else {
            store.swap_envelopes(swaps).await?
        };
        s.rewrapped += done;
        s.skipped += tried.saturating_sub(done);
        batches += 1;
        progress(&s);
        if !opts.pause.is_zero() {
            tokio::time::sleep(opts.pause).await;
        }
    }
}

/// Prints progress at most once a second (and for the first batch).
pub fn printer() -> impl FnMut(&Summary) {
    let mut last: Option<Instant> = None;
    move |s: &Summary| {
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last = Some(Instant::now());
            println!("rewrapped {}/{}", s.rewrapped, s.total);
        }
    }
}
