//! The tamper-evident audit log: record type, hash chain and verification.
//!
//! Every record carries `prev_hash` (the previous record's hash) and `hash =
//! HMAC-SHA256(audit key, "secretd/audit/v1" ‖ prev_hash ‖ seq ‖ fields)`,
//! each field length-prefixed; `seq` counts from 1 without gaps. The audit
//! key is stored wrapped by the master key, so someone who can write the database
//! but does not hold the master key cannot recompute the chain. Editing a
//! record breaks its own hash; deleting or inserting one breaks the sequence
//! or the next record's `prev_hash`. Records never hold a value, a token or
//! a key.
//!
//! There are two chains, each with its own label in the hash so that no
//! record can be moved from one to the other: the store's (`audit_log`, the
//! records committed with writes; on PostgreSQL also the records of reads
//! and refusals) and, on the embedded store, the access log (a JSON-lines
//! file of reads and refusals, see [`crate::access_log`]).

use serde::{Deserialize, Serialize};

use crate::crypto::AuditKey;

/// The hash the first record chains to.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// Which chain a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// The store's `audit_log`.
    Store,
    /// The embedded store's access log file.
    Access,
}

impl Chain {
    fn label(self) -> &'static [u8] {
        match self {
            Chain::Store => b"secretd/audit/v1",
            Chain::Access => b"secretd/access/v1",
        }
    }

    /// The word `audit tail` prints for this chain.
    pub fn name(self) -> &'static str {
        match self {
            Chain::Store => "store",
            Chain::Access => "access",
        }
    }
}

/// One audited request, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub request_id: String,
    pub token_id: Option<String>,
    pub token_name: Option<String>,
    /// Client address (ip:port).
    pub client: Option<String>,
    /// e.g. `secret.read`, `secret.write`, `token.create`, `auth`.
    pub operation: String,
    pub path: Option<String>,
    pub version: Option<i64>,
    /// `ok`, `denied`, `unauthenticated`, `not_found`, `invalid`, `error`.
    pub outcome: String,
    pub status: u16,
}

/// A record as stored: with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub record: AuditRecord,
    #[serde(serialize_with = "hex", deserialize_with = "unhex")]
    pub prev_hash: Vec<u8>,
    #[serde(serialize_with = "hex", deserialize_with = "unhex")]
    pub hash: Vec<u8>,
}

pub(crate) fn hex<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_hex(b))
}

fn unhex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    from_hex(&s).ok_or_else(|| serde::de::Error::custom("not a hex string"))
}

/// Lower- or upper-case hex to bytes; `None` if malformed.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

pub fn to_hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 0xf)]));
    }
    s
}

/// The hash of record `seq` of the store's chain, chained after `prev`.
pub fn chain_hash(key: &AuditKey, prev: &[u8], seq: i64, r: &AuditRecord) -> [u8; 32] {
    chain_hash_in(Chain::Store, key, prev, seq, r)
}

/// The hash of record `seq` of `chain`, chained after `prev`.
pub fn chain_hash_in(
    chain: Chain,
    key: &AuditKey,
    prev: &[u8],
    seq: i64,
    r: &AuditRecord,
) -> [u8; 32] {
    chain_hash_tail(chain, key, prev, seq, &hash_tail(r))
}

/// The hash of record `seq` of `chain`, chained after `prev`, from the
/// record's [`hash_tail`] (which can be prepared before the chain's head
/// is known).
pub fn chain_hash_tail(
    chain: Chain,
    key: &AuditKey,
    prev: &[u8],
    seq: i64,
    tail: &[u8],
) -> [u8; 32] {
    let mut head = Vec::with_capacity(96);
    push_field(&mut head, chain.label());
    push_field(&mut head, prev);
    push_field(&mut head, &seq.to_be_bytes());
    key.mac_parts(&[&head, tail])
}

/// The part of a record's hashed input that does not depend on its place
/// in a chain: its fields in order, each length-prefixed, an optional one
/// after a presence field (`1` or `0`).
pub fn hash_tail(r: &AuditRecord) -> Vec<u8> {
    let mut h = Vec::with_capacity(256);
    let optional = |h: &mut Vec<u8>, b: Option<&[u8]>| match b {
        Some(b) => {
            push_field(h, b"1");
            push_field(h, b);
        }
        None => push_field(h, b"0"),
    };
    push_field(&mut h, &r.time_ms.to_be_bytes());
    push_field(&mut h, r.request_id.as_bytes());
    for o in [&r.token_id, &r.token_name, &r.client] {
        optional(&mut h, o.as_deref().map(str::as_bytes));
    }
    push_field(&mut h, r.operation.as_bytes());
    optional(&mut h, r.path.as_deref().map(str::as_bytes));
    optional(
        &mut h,
        r.version.map(i64::to_be_bytes).as_ref().map(|v| &v[..]),
    );
    push_field(&mut h, r.outcome.as_bytes());
    push_field(&mut h, &r.status.to_be_bytes());
    h
}

/// Appends one length-prefixed field of a hash input.
fn push_field(h: &mut Vec<u8>, b: &[u8]) {
    h.extend_from_slice(&(b.len() as u64).to_be_bytes());
    h.extend_from_slice(b);
}

/// Chains `records` after the head `(seq, hash)` of the store's chain (use
/// `(0, GENESIS)` for an empty log).
pub fn chain(
    key: &AuditKey,
    head: (i64, Vec<u8>),
    records: Vec<AuditRecord>,
) -> Vec<ChainedRecord> {
    chain_in(Chain::Store, key, head, records)
}

/// Chains `records` after the head `(seq, hash)` of `chain`.
pub fn chain_in(
    chain: Chain,
    key: &AuditKey,
    head: (i64, Vec<u8>),
    records: Vec<AuditRecord>,
) -> Vec<ChainedRecord> {
    let (mut seq, mut prev) = head;
    records
        .into_iter()
        .map(|record| {
            seq += 1;
            let hash = chain_hash_in(chain, key, &prev, seq, &record).to_vec();
            let c = ChainedRecord {
                seq,
                record,
                prev_hash: prev.clone(),
                hash: hash.clone(),
            };
            prev = hash;
            c
        })
        .collect()
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at record {seq}: {reason}")]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// Walks records in `seq` order, page by page. Keeps the last verified
/// `(seq, hash)` between pages.
#[derive(Debug)]
pub struct Verifier<'k> {
    chain: Chain,
    key: &'k AuditKey,
    seq: i64,
    hash: Vec<u8>,
}

impl<'k> Verifier<'k> {
    /// A verifier of the store's chain.
    pub fn new(key: &'k AuditKey) -> Self {
        Self::of(Chain::Store, key)
    }

    pub fn of(chain: Chain, key: &'k AuditKey) -> Self {
        Verifier {
            chain,
            key,
            seq: 0,
            hash: GENESIS.to_vec(),
        }
    }

    pub fn feed(&mut self, r: &ChainedRecord) -> Result<(), Broken> {
        let broken = |reason: &str| Broken {
            seq: r.seq,
            reason: reason.to_owned(),
        };
        if r.seq != self.seq + 1 {
            return Err(Broken {
                seq: self.seq + 1,
                reason: format!("record missing (next record present is {})", r.seq),
            });
        }
        if r.prev_hash != self.hash {
            return Err(broken(
                "its prev_hash does not match the previous record (a record was inserted, deleted or edited)",
            ));
        }
        if chain_hash_in(self.chain, self.key, &r.prev_hash, r.seq, &r.record).as_slice()
            != r.hash.as_slice()
        {
            return Err(broken(
                "its contents do not match its hash (the record was edited)",
            ));
        }
        self.seq = r.seq;
        self.hash = r.hash.clone();
        Ok(())
    }

    /// Records verified so far.
    pub fn count(&self) -> i64 {
        self.seq
    }

    pub fn head_hash(&self) -> &[u8] {
        &self.hash
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A record numbered `i` (with a name that JSON must escape).
    pub(crate) fn rec(i: i64) -> AuditRecord {
        AuditRecord {
            time_ms: i,
            request_id: format!("r{i}"),
            token_id: Some("t".into()),
            token_name: Some("n\"ame\n".into()),
            client: Some("127.0.0.1:1".into()),
            operation: "secret.read".into(),
            path: Some("tfy-secret/a".into()),
            version: Some(i),
            outcome: "ok".into(),
            status: 200,
        }
    }

    /// Records with every combination of absent optional fields, and
    /// strings JSON must escape.
    pub(crate) fn varied_records() -> Vec<AuditRecord> {
        (0..32u8)
            .map(|mask| {
                let mut r = rec(i64::from(mask) - 7);
                let bit = |b: u8| mask & (1 << b) != 0;
                if bit(0) {
                    r.token_id = None;
                }
                if bit(1) {
                    r.token_name = None;
                }
                if bit(2) {
                    r.client = None;
                }
                if bit(3) {
                    r.path = None;
                }
                if bit(4) {
                    r.version = None;
                    r.request_id = "ünïcode \"q\" \u{1}".into();
                }
                r
            })
            .collect()
    }

    fn key() -> &'static AuditKey {
        static K: std::sync::OnceLock<AuditKey> = std::sync::OnceLock::new();
        K.get_or_init(|| crate::crypto::AuditKey::random().unwrap())
    }

    /// `chain_hash_in` as it was before the hash input was split in two:
    /// the chains already on disk must keep verifying.
    fn reference_chain_hash(
        chain: Chain,
        key: &AuditKey,
        prev: &[u8],
        seq: i64,
        r: &AuditRecord,
    ) -> [u8; 32] {
        let mut h = Vec::with_capacity(256);
        let mut field = |b: &[u8]| {
            h.extend_from_slice(&(b.len() as u64).to_be_bytes());
            h.extend_from_slice(b);
        };
        field(chain.label());
        field(prev);
        field(&seq.to_be_bytes());
        field(&r.time_ms.to_be_bytes());
        field(r.request_id.as_bytes());
        let opt = |s: &Option<String>| s.as_deref().map(str::as_bytes).map(<[u8]>::to_vec);
        for o in [opt(&r.token_id), opt(&r.token_name), opt(&r.client)] {
            match o {
                Some(b) => {
                    field(b"1");
                    field(&b);
                }
                None => field(b"0"),
            }
        }
        field(r.operation.as_bytes());
        match &r.path {
            Some(p) => {
                field(b"1");
                field(p.as_bytes());
            }
            None => field(b"0"),
        }
        match r.version {
            Some(v) => {
                field(b"1");
                field(&v.to_be_bytes());
            }
            None => field(b"0"),
        }
        field(r.outcome.as_bytes());
        field(&r.status.to_be_bytes());
        key.mac(&h)
    }

    fn verify(rs: &[ChainedRecord]) -> Result<i64, Broken> {
        let mut v = Verifier::new(key());
        for r in rs {
            v.feed(r)?;
        }
        Ok(v.count())
    }

    #[test]
    fn the_split_hash_input_hashes_as_before() {
        let cases = varied_records();
        for (i, r) in cases.iter().enumerate() {
            let prev = [u8::try_from(i).unwrap(); 32];
            for chain in [Chain::Store, Chain::Access] {
                let seq = i64::try_from(i).unwrap() * 1_000_003 - 5;
                assert_eq!(
                    chain_hash_in(chain, key(), &prev, seq, r),
                    reference_chain_hash(chain, key(), &prev, seq, r),
                    "case {i}"
                );
            }
        }
    }

    #[test]
    fn chain_detects_edits_inserts_and_deletes() {
        let k = key();
        let rs = chain(k, (0, GENESIS.to_vec()), (1..=5).map(rec).collect());
        assert_eq!(verify(&rs), Ok(5));
        // continuing a chain from its head
        let more = chain(k, (5, rs[4].hash.clone()), vec![rec(6)]);
        let mut all = rs.clone();
        all.extend(more);
        assert_eq!(verify(&all), Ok(6));

        let mut edited = rs.clone();
        edited[2].record.status = 500;
        assert_eq!(verify(&edited).unwrap_err().seq, 3);

        let mut deleted = rs.clone();
        deleted.remove(1);
        assert_eq!(verify(&deleted).unwrap_err().seq, 2);

        let mut inserted = rs.clone();
        let mut fake = rs[1].clone();
        fake.seq = 3;
        inserted.insert(2, fake);
        assert!(verify(&inserted).is_err());

        // re-hashing an edited record still breaks the next link
        let mut rehashed = rs.clone();
        rehashed[1].record.operation = "secret.write".into();
        rehashed[1].hash = chain_hash(k, &rehashed[1].prev_hash, 2, &rehashed[1].record).to_vec();
        assert_eq!(verify(&rehashed).unwrap_err().seq, 3);

        // without the key, a rewritten chain does not verify
        let forger = crate::crypto::AuditKey::random().unwrap();
        let mut shortened: Vec<AuditRecord> = rs.iter().map(|r| r.record.clone()).collect();
        shortened.remove(2);
        let forged = chain(&forger, (0, GENESIS.to_vec()), shortened);
        assert_eq!(verify(&forged).unwrap_err().seq, 1);
    }
}
