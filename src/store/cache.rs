//! A bounded cache of stored envelopes for point reads, for a backend whose
//! every write to secrets goes through this process (the embedded store).
//!
//! It holds what the database holds, sealed: envelopes, never plaintext.
//! Each path's entry keeps its newest live version and a few specific
//! versions. Correctness rests on two rules:
//!
//! * the writer thread drops a path's entry after every commit (or failed
//!   commit) touching that path and *before* anyone is told the write
//!   finished, so an acknowledged PUT or DELETE is seen by every later read
//!   (a committed PUT instead installs the row it wrote as the newest: what
//!   the database now answers);
//! * a reader that missed notes its shard's epoch before reading the
//!   database and inserts what it read only if no write to that shard
//!   happened meanwhile, so a read that raced a write never installs the
//!   older row.
//!
//! The size is bounded in bytes; when a shard is over its share, arbitrary
//! entries are evicted (the cache is an accelerator, not a working set).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::StoredVersion;
use crate::path::{SecretPath, Version};

const SHARDS: usize = 32;
/// Specific versions kept per path, besides the newest.
const VERSIONS_PER_PATH: usize = 4;

#[derive(Debug, Default)]
struct PathEntry {
    latest: Option<StoredVersion>,
    versions: Vec<StoredVersion>,
}

impl PathEntry {
    fn bytes(&self) -> usize {
        self.latest.iter().chain(&self.versions).map(cost).sum()
    }

    /// Remembers a specific version (unless already held), dropping the
    /// oldest remembered one beyond [`VERSIONS_PER_PATH`].
    fn keep_version(&mut self, row: StoredVersion) {
        let already = self
            .latest
            .as_ref()
            .is_some_and(|l| l.version == row.version)
            || self.versions.iter().any(|x| x.version == row.version);
        if !already {
            if self.versions.len() >= VERSIONS_PER_PATH {
                self.versions.remove(0);
            }
            self.versions.push(row);
        }
    }
}

fn cost(v: &StoredVersion) -> usize {
    v.envelope.len() + 64
}

#[derive(Debug, Default)]
struct Shard {
    /// Bumped by every write the writer applies to this shard (dropping or
    /// installing a path's entry, or clearing).
    epoch: u64,
    bytes: usize,
    map: HashMap<Box<str>, PathEntry>,
}

/// Where a reader stood before it went to the database.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    shard: usize,
    epoch: u64,
}

#[derive(Debug)]
pub struct ReadCache {
    shards: Vec<Mutex<Shard>>,
    max_shard_bytes: usize,
}

fn shard_of(path: &str) -> usize {
    // FNV-1a: cheap, and the shard only spreads lock contention.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

impl ReadCache {
    /// A cache of at most about `max_bytes` of envelopes; 0 disables it.
    pub fn new(max_bytes: usize) -> Self {
        ReadCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_shard_bytes: max_bytes / SHARDS,
        }
    }

    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached row, or a ticket to present with what the database says.
    pub fn get(
        &self,
        path: &SecretPath,
        version: Option<Version>,
    ) -> Result<StoredVersion, Ticket> {
        let i = shard_of(path.as_str());
        let shard = self.lock(i);
        let hit = shard.map.get(path.as_str()).and_then(|e| match version {
            None => e.latest.as_ref(),
            Some(v) => e
                .latest
                .as_ref()
                .filter(|l| l.version == v)
                .or_else(|| e.versions.iter().find(|x| x.version == v)),
        });
        match hit {
            Some(row) => Ok(row.clone()),
            None => Err(Ticket {
                shard: i,
                epoch: shard.epoch,
            }),
        }
    }

    /// Remembers a row read from the database after `ticket` was issued,
    /// unless a write to the shard happened since.
    pub fn insert(
        &self,
        ticket: Ticket,
        path: &SecretPath,
        version: Option<Version>,
        row: &StoredVersion,
    ) {
        if self.max_shard_bytes == 0 || cost(row) > self.max_shard_bytes / 4 {
            return;
        }
        let mut shard = self.lock(ticket.shard);
        if shard.epoch != ticket.epoch {
            return;
        }
        self.update(&mut shard, path.as_str(), |entry| match version {
            None => entry.latest = Some(row.clone()),
            Some(_) => entry.keep_version(row.clone()),
        });
    }

    /// Makes `row` the newest version of `path`: a write just committed it.
    /// Called by the writer in place of [`ReadCache::invalidate`], before
    /// the write is acknowledged. Specific versions already cached stay (a
    /// new version changes no older one); the previous newest is dropped:
    /// only reads fill the cache with older versions.
    pub fn install_latest(&self, path: &str, row: &StoredVersion) {
        let mut shard = self.lock(shard_of(path));
        shard.epoch += 1;
        if self.max_shard_bytes == 0 || cost(row) > self.max_shard_bytes / 4 {
            if let Some(e) = shard.map.remove(path) {
                shard.bytes -= e.bytes();
            }
            return;
        }
        self.update(&mut shard, path, |entry| entry.latest = Some(row.clone()));
    }

    /// Applies `change` to `path`'s entry (created if missing), then keeps
    /// the shard within its byte budget.
    fn update(&self, shard: &mut Shard, path: &str, change: impl FnOnce(&mut PathEntry)) {
        let entry = shard.map.entry(path.into()).or_default();
        let before = entry.bytes();
        change(entry);
        let after = entry.bytes();
        shard.bytes = shard.bytes + after - before;
        while shard.bytes > self.max_shard_bytes {
            let Some(victim) = shard.map.keys().next().cloned() else {
                break;
            };
            if let Some(e) = shard.map.remove(&victim) {
                shard.bytes -= e.bytes();
            }
        }
    }

    /// Forgets everything about `path`; called by the writer after a
    /// commit touching it, before the write is acknowledged.
    pub fn invalidate(&self, path: &str) {
        let mut shard = self.lock(shard_of(path));
        shard.epoch += 1;
        if let Some(e) = shard.map.remove(path) {
            shard.bytes -= e.bytes();
        }
    }

    /// Forgets everything (an import replaced the store's contents).
    pub fn clear(&self) {
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            shard.epoch += 1;
            shard.map.clear();
            shard.bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(v: u64, fill: u8) -> StoredVersion {
        StoredVersion {
            version: Version::new(v).unwrap(),
            envelope: vec![fill; 100].into(),
            created_at_ms: 1,
        }
    }

    fn p(s: &str) -> SecretPath {
        SecretPath::parse(s).unwrap()
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_installed() {
        let c = ReadCache::new(1 << 20);
        let a = p("tfy-secret/a");
        let t = c.get(&a, None).unwrap_err();
        c.invalidate(a.as_str()); // a write committed meanwhile
        c.insert(t, &a, None, &row(1, 1));
        assert!(c.get(&a, None).is_err(), "stale row installed");
        let t = c.get(&a, None).unwrap_err();
        c.insert(t, &a, None, &row(2, 2));
        assert_eq!(c.get(&a, None).unwrap().version.as_i64(), 2);
        c.invalidate(a.as_str());
        assert!(c.get(&a, None).is_err());
    }

    #[test]
    fn a_committed_write_becomes_the_newest_and_older_versions_stay() {
        let c = ReadCache::new(1 << 20);
        let a = p("tfy-secret/a");
        let v = |n| Some(Version::new(n).unwrap());
        let t = c.get(&a, None).unwrap_err();
        c.insert(t, &a, None, &row(3, 3));
        let t = c.get(&a, v(1)).unwrap_err();
        c.insert(t, &a, v(1), &row(1, 1));
        // a reader that missed before the write committed
        let racing = c.get(&a, v(9)).unwrap_err();
        c.install_latest(a.as_str(), &row(4, 4));
        let newest = c.get(&a, None).unwrap();
        assert_eq!((newest.version, newest.envelope[0]), (v(4).unwrap(), 4));
        assert_eq!(c.get(&a, v(4)).unwrap().envelope[0], 4);
        let older = c.get(&a, v(1)).unwrap();
        assert_eq!(older.envelope[0], 1, "older version lost");
        assert!(c.get(&a, v(3)).is_err(), "the previous newest is not kept");
        c.insert(racing, &a, None, &row(3, 3));
        let newest = c.get(&a, None).unwrap();
        assert_eq!(newest.version, v(4).unwrap(), "stale row installed");
        // a path not cached before gets an entry
        let b = p("tfy-secret/b");
        c.install_latest(b.as_str(), &row(5, 5));
        assert_eq!(c.get(&b, None).unwrap().version, v(5).unwrap());
        let total: usize = (0..SHARDS).map(|i| c.lock(i).bytes).sum();
        let counted: usize = (0..SHARDS)
            .map(|i| c.lock(i).map.values().map(PathEntry::bytes).sum::<usize>())
            .sum();
        assert_eq!((total, counted), (3 * (100 + 64), total), "byte accounting");
        // a disabled cache installs nothing
        let off = ReadCache::new(0);
        off.install_latest(a.as_str(), &row(4, 4));
        assert!(off.get(&a, None).is_err());
    }

    #[test]
    fn versions_are_found_by_number_and_the_size_is_bounded() {
        let c = ReadCache::new(SHARDS * 2000);
        let a = p("tfy-secret/a");
        let t = c.get(&a, Some(Version::new(3).unwrap())).unwrap_err();
        c.insert(t, &a, Some(Version::new(3).unwrap()), &row(3, 3));
        assert!(c.get(&a, None).is_err(), "a version is not the latest");
        assert_eq!(
            c.get(&a, Some(Version::new(3).unwrap()))
                .unwrap()
                .envelope
                .as_ref(),
            &*vec![3u8; 100]
        );
        for i in 0..1000 {
            let q = p(&format!("tfy-secret/many/{i}"));
            let t = c.get(&q, None).unwrap_err();
            c.insert(t, &q, None, &row(1, 0));
        }
        let total: usize = (0..SHARDS).map(|i| c.lock(i).bytes).sum();
        assert!(total <= SHARDS * 2000, "{total}");
        let counted: usize = (0..SHARDS)
            .map(|i| c.lock(i).map.values().map(PathEntry::bytes).sum::<usize>())
            .sum();
        assert_eq!(total, counted, "byte accounting drifted");
    }

    #[test]
    fn disabled_cache_holds_nothing() {
        let c = ReadCache::new(0);
        let a = p("tfy-secret/a");
        let t = c.get(&a, None).unwrap_err();
        c.insert(t, &a, None, &row(1, 1));
        assert!(c.get(&a, None).is_err());
    }
}
