//! Issue #7, goal 8: credential checks leak nothing.
//!
//! 1. Every 401 is the same bytes, whatever was wrong with the credential
//!    (missing, malformed, unknown static key, unknown token, revoked token,
//!    expired token, one good and one bad) and whatever the request was:
//!    the raw responses are compared byte for byte, apart from the
//!    `x-request-id` and `date` lines. (Across different requests they
//!    differ in one way only: a method the route lacks gets axum's `Allow`
//!    header, which names the route's methods, public in /openapi.json.)
//! 2. Key material cannot be compared with `==` (which would not be constant
//!    time): a trait-based probe (autoref specialization) reports whether a
//!    type implements `PartialEq`, checked for every type holding key bytes.
//!    Their `Debug` output is redacted too.

use std::io::{Read, Write};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

crate::both_backends!(every_401_is_the_same_bytes,);

/// Creates a token with the static admin key; returns the token.
async fn token(c: &Client, name: &str) -> String {
    let body = json!({ "name": name, "role": "admin", "scopes": ["tfy-secret"], "ttl": "1h" });
    let r = json_to(c, "POST", "/v1/tokens", &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    r.json()["token"].as_str().expect("token").to_owned()
}

async fn json_to(c: &Client, method: &str, uri: &str, body: &str) -> Resp {
    let h = [
        ("x-api-key", c.key.as_str()),
        ("content-type", "application/json"),
    ];
    send(c.addr, method, uri, &h, Some(body.as_bytes())).await
}

/// The raw bytes of the answer to `request` (sent with `Connection: close`).
fn exchange(addr: SocketAddr, request: Vec<u8>) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(&request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The answer without the lines that differ by design.
fn normalized(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer)
        .split("\r\n")
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("x-request-id:") && !l.starts_with("date:")
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

async fn every_401_is_the_same_bytes(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    c.put_ok("tfy-secret/leak/x", "v").await;
    let live = token(c, "live").await;
    let revoked = token(c, "revoked").await;
    let expired = token(c, "expired").await;
    let r = send(s.addr(), "DELETE", "/v1/tokens/revoked", &c.auth(), None).await;
    assert_eq!(r.status, 200);
    s.sql("UPDATE tokens SET expires_at = 1 WHERE name = 'expired'")
        .await;
    // the live token works, so the others fail for their own reason
    let as_live = Client {
        addr: s.addr(),
        key: live.clone(),
    };
    assert_eq!(as_live.get("tfy-secret/leak/x", None).await.status, 200);
    // an unknown token of the same shape as a real one
    let unknown = format!("sdt_{}", "A".repeat(live.len() - 4));

    let credentials: Vec<(&str, Vec<String>)> = vec![
        ("missing", vec![]),
        (
            "malformed: Bearer alone",
            vec!["Authorization: Bearer".into()],
        ),
        (
            "malformed: Basic !!!",
            vec!["Authorization: Basic !!!".into()],
        ),
        (
            "malformed: unknown scheme",
            vec![format!("Authorization: Token {KEY}")],
        ),
        ("malformed: empty x-api-key", vec!["X-API-Key: ".into()]),
        (
            "unknown static key",
            vec!["X-API-Key: not-a-key-0123456789".into()],
        ),
        (
            "unknown static key, near miss",
            vec![format!("X-API-Key: {}x", &KEY[..KEY.len() - 1])],
        ),
        ("unknown token", vec![format!("X-API-Key: {unknown}")]),
        (
            "unknown token as bearer",
            vec![format!("Authorization: Bearer {unknown}")],
        ),
        ("revoked token", vec![format!("X-API-Key: {revoked}")]),
        (
            "revoked token as bearer",
            vec![format!("Authorization: Bearer {revoked}")],
        ),
        ("expired token", vec![format!("X-API-Key: {expired}")]),
        (
            "expired token as bearer",
            vec![format!("Authorization: Bearer {expired}")],
        ),
        (
            "good static key and a revoked token",
            vec![
                format!("X-API-Key: {KEY}"),
                format!("Authorization: Bearer {revoked}"),
            ],
        ),
        (
            "live token and an expired one",
            vec![
                format!("X-API-Key: {live}"),
                format!("X-API-Key: {expired}"),
            ],
        ),
        (
            "live token and a bad static key",
            vec![
                format!("Authorization: Bearer {live}"),
                "X-API-Key: wrong".into(),
            ],
        ),
    ];
    let put = br#"{"path":"tfy-secret/leak/x","value":"evil"}"#.to_vec();
    let del = br#"{"path":"tfy-secret/leak/x"}"#.to_vec();
    let tok = br#"{"name":"evil","role":"admin","scopes":["tfy-secret"]}"#.to_vec();
    let requests: Vec<(&str, &str, Vec<u8>)> = vec![
        ("GET", "/secrets?path=tfy-secret/leak/x", vec![]),
        ("GET", "/secrets?path=tfy-secret/leak/absent", vec![]),
        ("GET", "/secrets?path=tfy-secret", vec![]),
        ("GET", "/secrets?path=../bad&version=x", vec![]),
        ("PUT", "/secrets", put),
        ("DELETE", "/secrets", del),
        ("PATCH", "/secrets", vec![]),
        ("GET", "/v1/tokens", vec![]),
        ("POST", "/v1/tokens", tok),
        ("DELETE", "/v1/tokens/live", vec![]),
    ];
    let addr = s.addr();
    let mut reference: Option<(String, String)> = None;
    let mut per_request = std::collections::HashMap::new();
    let mut runs = 0u64;
    for (cname, lines) in &credentials {
        for (method, uri, body) in &requests {
            let mut req = format!(
                "{method} {uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
            for l in lines {
                req.push_str(l);
                req.push_str("\r\n");
            }
            req.push_str("\r\n");
            let mut bytes = req.into_bytes();
            bytes.extend_from_slice(body);
            let answer = tokio::task::spawn_blocking(move || exchange(addr, bytes))
                .await
                .expect("join");
            let text = String::from_utf8_lossy(&answer).into_owned();
            assert!(
                text.starts_with("HTTP/1.1 401 "),
                "{cname}, {method} {uri}: {text}"
            );
            let lower = text.to_ascii_lowercase();
            assert!(lower.contains("\r\nx-request-id: "), "{text}");
            let norm = normalized(&answer);
            let label = format!("{cname}, {method} {uri}");
            // per request, every credential failure is the same bytes
            match per_request.get(&(*method, *uri)) {
                None => {
                    per_request.insert((*method, *uri), (label.clone(), norm.clone()));
                }
                Some((first, want)) => assert_eq!(
                    &norm, want,
                    "the 401 for [{label}] differs from the one for [{first}]"
                ),
            }
            // across requests too, except that a method the route does not
            // have gets axum's `Allow` header (the methods, public in
            // /openapi.json anyway)
            let no_allow: String = norm
                .split("\r\n")
                .filter(|l| !l.to_ascii_lowercase().starts_with("allow:"))
                .collect::<Vec<_>>()
                .join("\r\n");
            match &reference {
                None => reference = Some((label, no_allow)),
                Some((first, want)) => assert_eq!(
                    &no_allow, want,
                    "the 401 for [{label}] differs from the one for [{first}]"
                ),
            }
            runs += 1;
        }
    }
    // nothing the refused requests tried happened
    let r = c.get("tfy-secret/leak/x", None).await;
    assert_eq!((r.status, r.json()["value"].as_str()), (200, Some("v")));
    let r = send(addr, "GET", "/v1/tokens", &c.auth(), None).await;
    let names: Vec<String> = r.json()["tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(!names.iter().any(|n| n == "evil"), "{names:?}");
    assert_eq!(as_live.get("tfy-secret/leak/x", None).await.status, 200);
    goal_summary("no_credential_leak", runs, 0, 0);
}

// --- key material has no `==` --------------------------------------------

/// Autoref specialization: for a concrete `T`, `(&Probe::<T>).has_eq()`
/// resolves to [`HasEq`] when `T: PartialEq` (by-value receiver match) and
/// falls back to [`NoEq`] (one more autoref) otherwise.
struct Probe<T>(PhantomData<T>);

trait HasEq {
    fn has_eq(&self) -> bool {
        true
    }
}
impl<T: PartialEq> HasEq for Probe<T> {}

trait NoEq {
    fn has_eq(&self) -> bool {
        false
    }
}
impl<T> NoEq for &Probe<T> {}

macro_rules! has_eq {
    ($t:ty) => {
        (&Probe::<$t>(PhantomData)).has_eq()
    };
}

#[test]
fn the_probe_works() {
    // sanity: it sees `PartialEq` where there is one
    assert!(has_eq!(String));
    assert!(has_eq!([u8; 32]));
    assert!(has_eq!(secretd::path::SecretPath));
    struct Opaque;
    assert!(!has_eq!(Opaque));
    // Note: a bare `Zeroizing<String>` (how a new token's secret is held
    // inside `NewToken`, and what `auth::generate_key` returns) does have
    // `==`; only the wrapping types are checked below.
    assert!(has_eq!(zeroize::Zeroizing<String>));
}

#[test]
fn key_material_cannot_be_compared_with_eq() {
    use secretd::auth::{ApiKeys, KeyHash};
    use secretd::config::SecretString;
    use secretd::crypto::{AuditKey, Keyring, MasterKey, WrappedKey};
    use secretd::service::NewToken;
    let checked: [(&str, bool); 8] = [
        ("crypto::MasterKey", has_eq!(MasterKey)),
        ("crypto::AuditKey", has_eq!(AuditKey)),
        ("crypto::Keyring (the data keys)", has_eq!(Keyring)),
        (
            "crypto::WrappedKey (a wrapped data key)",
            has_eq!(WrappedKey),
        ),
        ("auth::KeyHash (API key and token hashes)", has_eq!(KeyHash)),
        ("auth::ApiKeys", has_eq!(ApiKeys)),
        (
            "config::SecretString (keys from config)",
            has_eq!(SecretString),
        ),
        ("service::NewToken (a new token secret)", has_eq!(NewToken)),
    ];
    let comparable: Vec<&str> = checked
        .iter()
        .filter(|(_, eq)| *eq)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        comparable.is_empty(),
        "key material comparable with ==: {comparable:?}"
    );
    goal_summary("no_eq_on_key_material", checked.len() as u64, 0, 0);
}

#[test]
fn key_material_debug_is_redacted() {
    use secretd::auth::KeyHash;
    use secretd::config::SecretString;
    use secretd::crypto::{AuditKey, MasterKey};
    let m = MasterKey::from_base64(MASTER_KEY).expect("master key");
    let shown = [
        format!("{m:?}"),
        format!("{:?}", AuditKey::random().expect("audit key")),
        format!("{:?}", SecretString::new(KEY.into())),
        format!("{:?}", KeyHash::of(KEY.as_bytes())),
    ];
    for s in &shown {
        assert!(s.contains("redacted"), "{s}");
        assert!(!s.contains(KEY) && !s.contains(MASTER_KEY), "{s}");
    }
}

/// A backup file holds envelopes, never a value, key or token: whoever
/// copies it without the master key learns only paths and sizes.
#[tokio::test(flavor = "multi_thread")]
async fn backup_files_hold_no_plaintext() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let c = &s.client;
    let canary = "canary-91c4d2-backup-plaintext";
    c.put_ok("tfy-secret/leak/b", canary).await;
    c.put_ok("tfy-secret/leak/b", &canary.repeat(50)).await;
    let tok = token(c, "in-backup").await;
    let out = s.data_dir.with_file_name("secretd.backup");
    let out_s = out.display().to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking({
        let s_args = s.store_args();
        move || {
            let o = std::process::Command::new(bin())
                .args(["backup", "--out", &out_s])
                .args(s_args)
                .env_remove("SECRETD_DATABASE_URL")
                .env("SECRETD_MASTER_KEY", MASTER_KEY)
                .output()
                .expect("run secretd");
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        }
    })
    .await
    .expect("join");
    assert!(ok, "{stdout}{stderr}");
    let bytes = std::fs::read(&out).expect("backup file");
    for needle in [canary, KEY, MASTER_KEY, tok.as_str()] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the backup holds {needle:?}"
        );
    }
    // and it does hold the secret (as an envelope): the path is there
    assert!(bytes.windows(15).any(|w| w == b"tfy-secret/leak"));
}
