//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and their smoke
//! run in the test suite: one function per input the server or the CLI
//! parses from the outside. Each must return for any bytes without
//! panicking, and asserts the properties that must hold for what it
//! accepts (a parsed path re-parses to itself, a decrypted envelope is the
//! one sealed, ...). Not part of the API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // an assertion failure is the finding

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::crypto::{Keyring, MasterKey};
use crate::path::{PathArg, SecretPath, Version};

/// Secret paths, FQNs and the GET `path` argument.
pub fn path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = SecretPath::parse(s) {
        assert!(p.as_str().starts_with("tfy-secret/"), "{p}");
        let again = SecretPath::parse(p.as_str()).expect("a parsed path re-parses");
        assert_eq!(again.as_str(), p.as_str(), "canonical form is stable");
    }
    if let Ok(p) = SecretPath::from_fqn(s) {
        let again = SecretPath::parse(p.as_str()).expect("an FQN's path parses");
        assert_eq!(again.as_str(), p.as_str());
    }
    let _ = PathArg::parse(s);
}

/// Versions from the query string and from JSON bodies.
pub fn version(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = Version::parse(s) {
        assert!(v.as_i64() >= 1);
        let again = Version::parse(&v.to_string()).expect("a version re-parses");
        assert_eq!(again, v);
    }
    if let Ok(v) = Version::from_json_text(s) {
        assert!(v.as_i64() >= 1);
    }
}

/// Request bodies of PUT and DELETE /secrets and POST /v1/tokens: any bytes
/// decode or fail with a 400, never anything else.
pub fn body(data: &[u8]) {
    use crate::http::body::{DeleteBody, PutBody, TokenBody, decode};
    for status in [
        decode::<PutBody>(data).err().map(|e| e.status()),
        decode::<DeleteBody>(data).err().map(|e| e.status()),
        decode::<TokenBody>(data).err().map(|e| e.status()),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(status.as_u16(), 400);
    }
}

/// Credential extraction: header values made of the input.
pub fn auth(data: &[u8]) {
    static KEYS: OnceLock<crate::auth::ApiKeys> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        crate::auth::ApiKeys::new(
            vec![(
                "static-1".into(),
                crate::auth::KeyHash::of(b"fuzz-key-0123456789abcdef"),
            )],
            vec![HeaderName::from_static("x-secret-token")],
        )
    });
    let mut headers = HeaderMap::new();
    for (i, part) in data.split(|b| *b == b'\n').take(8).enumerate() {
        let name = match i % 3 {
            0 => "authorization",
            1 => "x-api-key",
            _ => "x-secret-token",
        };
        if let Ok(v) = HeaderValue::from_bytes(part) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    let _ = keys.credentials(&headers);
    if let Some(id) = keys.authenticate(&headers) {
        assert_eq!(id, "static-1");
        // Only the one key opens it, in whichever accepted form.
        let creds = keys.credentials(&headers).expect("credentials");
        assert!(
            creds
                .iter()
                .all(|c| c.as_slice() == b"fuzz-key-0123456789abcdef")
        );
    }
}

fn keyring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        let master = MasterKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
            .expect("master key");
        let wrapped = Keyring::new_wrapped_key(&master, 1).expect("data key");
        Keyring::unwrap_all(&master, &[wrapped]).expect("keyring")
    })
}

/// Stored envelopes: arbitrary bytes never open; a sealed value opens only
/// for its own path and version, also after the input mutates it.
pub fn envelope(data: &[u8]) {
    let ring = keyring();
    let path = SecretPath::parse("tfy-secret/fuzz/a").expect("path");
    let v1 = Version::new(1).expect("version");
    let _ = Keyring::envelope_generation(data);
    assert!(ring.open(&path, v1, data).is_err(), "random bytes opened");
    // Seal the input as a value, then flip one bit chosen by the input.
    let sealed = ring.seal(&path, v1, data).expect("seal");
    assert_eq!(
        ring.open(&path, v1, &sealed).expect("open").as_slice(),
        data
    );
    let other = SecretPath::parse("tfy-secret/fuzz/b").expect("path");
    assert!(ring.open(&other, v1, &sealed).is_err());
    assert!(
        ring.open(&path, Version::new(2).expect("v"), &sealed)
            .is_err()
    );
    if !data.is_empty() {
        let mut bad = sealed.clone();
        let bit = usize::from(data[0]) * 8 + usize::from(data[data.len() - 1] % 8);
        let i = (bit / 8) % bad.len();
        bad[i] ^= 1 << (bit % 8);
        assert!(ring.open(&path, v1, &bad).is_err(), "a flipped bit opened");
    }
}

/// Backup files (`secretd restore` reads them).
pub fn backup(data: &[u8]) {
    let _ = crate::backup::read(data);
}

/// Audit chains: records made of the input never verify under the key
/// (only the key's holder can extend the chain).
pub fn audit(data: &[u8]) {
    use crate::audit::{AuditRecord, ChainedRecord, Verifier};
    static KEY: OnceLock<crate::crypto::AuditKey> = OnceLock::new();
    let key = KEY.get_or_init(|| crate::crypto::AuditKey::random().expect("audit key"));
    let mut v = Verifier::new(key);
    for (i, chunk) in data.chunks(96).enumerate() {
        let text = String::from_utf8_lossy(chunk).into_owned();
        let rec = ChainedRecord {
            seq: i64::try_from(i).unwrap_or(i64::MAX) + 1,
            record: AuditRecord {
                time_ms: i64::from(chunk.first().copied().unwrap_or(0)),
                request_id: text.clone(),
                token_id: None,
                token_name: None,
                client: None,
                operation: text,
                path: None,
                version: None,
                outcome: "ok".into(),
                status: 200,
            },
            prev_hash: v.head_hash().to_vec(),
            hash: chunk.get(..32).unwrap_or(chunk).to_vec(),
        };
        assert!(v.feed(&rec).is_err(), "a forged record verified");
    }
}

/// Config files (`secretd serve --config`).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = crate::config::parse_file(std::path::Path::new("fuzz.toml"), text) else {
        return;
    };
    use clap::CommandFactory as _;
    let cmd = crate::cli::Cli::command();
    if let Some(serve) = cmd.find_subcommand("serve") {
        let _ = crate::config::apply_file(serve.clone(), &file, true);
    }
}

/// A fuzz target: must return for any input.
pub type Target = fn(&[u8]);

/// Every target, by name (for the smoke run and the fuzz crate).
pub const TARGETS: &[(&str, Target)] = &[
    ("path", path),
    ("version", version),
    ("body", body),
    ("auth", auth),
    ("envelope", envelope),
    ("backup", backup),
    ("audit", audit),
    ("config", config),
];
