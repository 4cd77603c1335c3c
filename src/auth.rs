//! API keys: held only as SHA-256 hashes, checked in constant time.
//!
//! A key is accepted from `X-API-Key`, `Authorization: Bearer`,
//! `Authorization: Basic base64(user:key)` (any user name; the key is the
//! password) and any extra header names the operator configured. Never from
//! the query string. Every credential the request presents must be valid:
//! a request carrying one good and one bad key is refused.

use std::fmt;

use axum::http::{HeaderMap, HeaderName, header};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, random_bytes};

/// SHA-256 of an API key. No `PartialEq`: compare with [`KeyHash::ct_eq`].
#[derive(Clone)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(key: &[u8]) -> Self {
        KeyHash(Sha256::digest(key).into())
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(KeyHash)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(<redacted>)")
    }
}

/// Generates a new API key: `sd_` and 43 base64url characters (256 bits).
pub fn generate_key() -> Result<Zeroizing<String>, CryptoError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    random_bytes(raw.as_mut())?;
    let mut s = Zeroizing::new(String::with_capacity(46));
    s.push_str("sd_");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(raw.as_ref(), &mut s);
    Ok(s)
}

/// The accepted keys (as hashes, each with a loggable id) and header names.
pub struct ApiKeys {
    keys: Vec<(String, KeyHash)>,
    extra_headers: Vec<HeaderName>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field(
                "ids",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .field("extra_headers", &self.extra_headers)
            .finish()
    }
}

impl ApiKeys {
    /// `keys` are (id, hash) pairs; ids are what logs show.
    pub fn new(keys: Vec<(String, KeyHash)>, extra_headers: Vec<HeaderName>) -> Self {
        let extra_headers = extra_headers
            .into_iter()
            .filter(|h| *h != header::AUTHORIZATION && h.as_str() != "x-api-key")
            .collect();
        ApiKeys {
            keys,
            extra_headers,
        }
    }

    /// The id of the static key whose hash matches, comparing against
    /// every key without an early exit.
    pub fn lookup(&self, presented: &[u8]) -> Option<&str> {
        let h = KeyHash::of(presented);
        let mut found = None;
        for (id, k) in &self.keys {
            if k.ct_eq(&h) {
                found = Some(id.as_str());
            }
        }
        found
    }

    /// Every credential the request presents (`X-API-Key`, the configured
    /// extra headers, `Authorization: Bearer`/`Basic`). `None` if there is
    /// none, or if an `Authorization` header is malformed: such a request
    /// is refused whatever else it carries.
    pub fn credentials(&self, headers: &HeaderMap) -> Option<Vec<Zeroizing<Vec<u8>>>> {
        let mut out = Vec::new();
        for v in headers.get_all("x-api-key") {
            out.push(Zeroizing::new(v.as_bytes().to_vec()));
        }
        for name in &self.extra_headers {
            for v in headers.get_all(name) {
                out.push(Zeroizing::new(v.as_bytes().to_vec()));
            }
        }
        for v in headers.get_all(header::AUTHORIZATION) {
            out.push(credential_from_authorization(v.as_bytes())?);
        }
        if out.is_empty() { None } else { Some(out) }
    }

    /// Checks the request's credentials against the static keys only;
    /// `Some(key id)` of the first if all of them are valid and there is at
    /// least one (the server's middleware applies the same rule, with
    /// managed tokens besides).
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<&str> {
        let creds = self.credentials(headers)?;
        let mut who = None;
        for c in &creds {
            let id = self.lookup(c)?;
            who.get_or_insert(id);
        }
        who
    }
}

/// The key inside an `Authorization` value: `Bearer <key>` or
/// `Basic base64(user:key)`. Scheme names are case-insensitive.
fn credential_from_authorization(v: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let sp = v.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = v.split_at(sp);
    let rest = rest.trim_ascii();
    if rest.is_empty() {
        return None;
    }
    if scheme.eq_ignore_ascii_case(b"bearer") {
        Some(Zeroizing::new(rest.to_vec()))
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?,
        );
        let colon = decoded.iter().position(|b| *b == b':')?;
        let key = &decoded[colon + 1..];
        if key.is_empty() {
            return None;
        }
        Some(Zeroizing::new(key.to_vec()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    fn keys() -> ApiKeys {
        ApiKeys::new(
            vec![
                ("static-1".into(), KeyHash::of(b"k1")),
                ("static-2".into(), KeyHash::of(b"k2")),
            ],
            vec![HeaderName::from_static("x-tfy-token")],
        )
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn header_matrix() {
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let k = keys();
        let cases: Vec<(HeaderMap, Option<&str>)> = vec![
            (h(&[]), None),
            (h(&[("x-api-key", "k1")]), Some("static-1")),
            (h(&[("x-api-key", "k2")]), Some("static-2")),
            (h(&[("x-api-key", "nope")]), None),
            (h(&[("x-api-key", "")]), None),
            (h(&[("authorization", "Bearer k1")]), Some("static-1")),
            (h(&[("authorization", "bearer k2")]), Some("static-2")),
            (h(&[("authorization", "Bearer ")]), None),
            (h(&[("authorization", "Bearer")]), None),
            (h(&[("authorization", "Token k1")]), None),
            (h(&[("authorization", "k1")]), None),
            (
                h(&[("authorization", &basic("anyone:k1"))]),
                Some("static-1"),
            ),
            (h(&[("authorization", &basic(":k2"))]), Some("static-2")),
            (h(&[("authorization", &basic("k1"))]), None),
            (h(&[("authorization", &basic("k1:"))]), None),
            (h(&[("authorization", "Basic !!!")]), None),
            (h(&[("x-tfy-token", "k2")]), Some("static-2")),
            (h(&[("x-other", "k2")]), None),
            (h(&[("x-api-key", "k1"), ("x-api-key", "bad")]), None),
            (
                h(&[("x-api-key", "k1"), ("authorization", "Bearer bad")]),
                None,
            ),
            (
                h(&[("x-api-key", "k1"), ("authorization", "Bearer k1")]),
                Some("static-1"),
            ),
        ];
        for (i, (headers, want)) in cases.into_iter().enumerate() {
            assert_eq!(k.authenticate(&headers), want, "case {i}: {headers:?}");
        }
    }

    #[test]
    fn generated_keys_are_distinct_and_long() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(*a, *b);
        assert_eq!(a.len(), 46);
        assert!(a.starts_with("sd_"));
    }
}
