//! Issue #7, goal 6 (part): property tests of the edge parsers and the
//! envelope, with proptest driven by one printed seed per goal
//! (`SECRETD_TEST_SEED` replays a run) and a one-line summary each.
//!
//! - paths: valid paths round-trip through parse and render, canonicalising
//!   is idempotent on any input, FQN -> path -> FQN is the identity;
//! - versions: parse/print round trip, idempotent on any input;
//! - JSON bodies: decoding arbitrary bytes never panics and fails only with
//!   400 `invalid_json`;
//! - envelopes: seal/open round trip; opening under any other path, version
//!   or key generation fails, as does any single flipped bit.

use axum::body::Body;
use axum::http::HeaderMap;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use secretd::crypto::{Keyring, MasterKey};
use secretd::error::ErrorCode;
use secretd::http::body::{DeleteBody, PutBody, TokenBody, read_json};
use secretd::path::{PathArg, SecretPath, Version};

use crate::common::{goal_summary, test_seed};

const CASES: u32 = 256;

/// Runs one property over `cases` inputs from the printed seed; prints the
/// goal's summary line, then fails with the shrunk input if it was violated.
fn run_goal<S: Strategy>(
    goal: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let seed = test_seed();
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, test);
    goal_summary(goal, u64::from(cases), u64::from(result.is_err()), seed);
    if let Err(e) = result {
        panic!("{goal}: violated (SECRETD_TEST_SEED={seed}): {e}");
    }
}

/// One valid segment: allowed bytes, never `.` or `..`.
fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._@+=,~-]{1,24}".prop_filter("dot segment", |s| s != "." && s != "..")
}

/// A valid secret path's segments below the root (1 to 15 of them).
fn segments() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(segment(), 1..=15)
}

/// Strings near the grammar's edges: roots, separators, dots, escapes,
/// look-alikes, and anything at all.
fn path_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "/?/?(tfy-secret|TFY-SECRET|tfy-secretx)?(/[a-z.%:~\\\\ \u{0}\u{ff0e}\u{430}]{0,4}){0,18}/?",
        prop::collection::vec(segment(), 0..20).prop_map(|s| format!("tfy-secret/{}", s.join("/"))),
    ]
}

#[test]
fn prop_path_round_trip() {
    run_goal(
        "prop_path_round_trip",
        CASES,
        (segments(), any::<bool>()),
        |(segs, slash)| {
            let canon = format!("tfy-secret/{}", segs.join("/"));
            let raw = if slash {
                format!("/{canon}")
            } else {
                canon.clone()
            };
            if canon.len() > secretd::path::MAX_PATH_BYTES {
                prop_assert!(SecretPath::parse(&raw).is_err());
                return Ok(());
            }
            let p = SecretPath::parse(&raw)
                .map_err(|e| TestCaseError::fail(format!("{raw:?}: {e}")))?;
            prop_assert_eq!(p.as_str(), canon.as_str());
            prop_assert_eq!(p.to_string(), canon.clone());
            prop_assert_eq!(SecretPath::parse(p.as_str()), Ok(p.clone()));
            prop_assert_eq!(PathArg::parse(&raw), Ok(PathArg::Secret(p.clone())));
            // FQN -> path -> FQN
            let fqn = p.to_fqn();
            prop_assert_eq!(fqn.clone(), segs.join(":"));
            prop_assert_eq!(SecretPath::from_fqn(&fqn), Ok(p));
            Ok(())
        },
    );
}

#[test]
fn prop_path_canonicalisation_is_idempotent() {
    run_goal(
        "prop_path_canonicalisation",
        CASES * 2,
        path_like(),
        |raw| {
            match SecretPath::parse(&raw) {
                Err(_) => {}
                Ok(p) => {
                    let s = p.as_str();
                    prop_assert_eq!(SecretPath::parse(s), Ok(p.clone()));
                    prop_assert!(s.starts_with("tfy-secret/") && s.len() <= 512, "{s}");
                    prop_assert!(s.split('/').count() <= 16, "{s}");
                    for seg in s.split('/').skip(1) {
                        prop_assert!(!seg.is_empty() && seg != "." && seg != "..", "{s}");
                        prop_assert!(seg.len() <= 128, "{s}");
                        prop_assert!(
                            seg.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-@+=,~".contains(&b)),
                            "{s}"
                        );
                    }
                    // the only rewrite is dropping one leading '/'
                    prop_assert!(
                        raw == s || raw.strip_prefix('/') == Some(s),
                        "{raw:?} -> {s}"
                    );
                    prop_assert_eq!(SecretPath::from_fqn(&p.to_fqn()), Ok(p.clone()));
                }
            }
            // FQNs built from anything: if accepted, they come back
            // unchanged. (`from_fqn` also takes '/' as a separator, so `a/b`
            // and `a:b` name the same path; only ':'-separated FQNs
            // round-trip exactly.)
            if let Ok(p) = SecretPath::from_fqn(&raw) {
                if !raw.contains('/') {
                    prop_assert_eq!(p.to_fqn(), raw.clone());
                }
                prop_assert_eq!(p.to_fqn().replace(':', "/"), raw.replace(':', "/"));
            }
            Ok(())
        },
    );
}

#[test]
fn prop_version_round_trip() {
    let strategy = (
        1..=Version::MAX,
        0usize..4,
        prop::option::of(0usize..4),
        prop_oneof!["[0-9.+eE -]{0,24}", any::<String>()],
    );
    run_goal(
        "prop_version_round_trip",
        CASES,
        strategy,
        |(n, zeros, frac, junk)| {
            let v = Version::new(n).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(v.get(), n);
            prop_assert_eq!(v.to_string(), n.to_string());
            prop_assert_eq!(Version::parse(&v.to_string()), Ok(v));
            prop_assert_eq!(v.as_i64() as u64, n);
            // leading zeros and an all-zero fraction name the same version
            let mut text = format!("{}{n}", "0".repeat(zeros));
            if let Some(f) = frac {
                text.push('.');
                text.push_str(&"0".repeat(f + 1));
            }
            prop_assert_eq!(Version::parse(&text), Ok(v));
            prop_assert_eq!(Version::from_json_text(&text), Ok(v));
            prop_assert_eq!(Version::from_json_text(&format!("\"{text}\"")), Ok(v));
            // anything that parses prints as a form that parses to the same
            if let Ok(w) = Version::parse(&junk) {
                prop_assert_eq!(Version::parse(&w.to_string()), Ok(w));
                prop_assert!(w.get() >= 1 && w.get() <= Version::MAX);
            }
            if let Ok(w) = Version::from_json_text(&junk) {
                prop_assert!(w.get() >= 1 && w.get() <= Version::MAX);
            }
            Ok(())
        },
    );
}

/// Bytes that look somewhat like JSON bodies, and bytes that do not.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    let scalar = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "\"[a-z/\\\\\"\u{0}-\u{7f}]{0,12}\"",
        "\"(\\\\u[0-9a-fA-F]{4}|\\\\[nrt\"/])*\"",
        "[\\[\\]{}\":,0-9a-z.+-]{0,12}",
    ];
    let field = (
        prop_oneof![
            Just("path"),
            Just("value"),
            Just("version"),
            Just("name"),
            Just("role"),
            Just("scopes"),
            Just("ttl"),
            Just("x")
        ],
        scalar,
    );
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "[\\[\\]{}\":, 0-9a-z\\\\\u{feff}]{0,64}".prop_map(String::into_bytes),
        (prop::collection::vec(field, 0..6), "[ ,}\\]x]{0,3}").prop_map(|(fields, tail)| {
            let body: Vec<String> = fields
                .into_iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}{tail}", body.join(",")).into_bytes()
        }),
    ]
}

#[test]
fn prop_body_decode_never_panics() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let timeout = std::time::Duration::from_secs(5);
    run_goal("prop_body_decode", CASES * 2, body_bytes(), |bytes| {
        let h = HeaderMap::new();
        let results = rt.block_on(async {
            [
                read_json::<PutBody>(&h, Body::from(bytes.clone()), 1 << 20, timeout)
                    .await
                    .err(),
                read_json::<DeleteBody>(&h, Body::from(bytes.clone()), 1 << 20, timeout)
                    .await
                    .err(),
                read_json::<TokenBody>(&h, Body::from(bytes.clone()), 1 << 20, timeout)
                    .await
                    .err(),
            ]
        });
        for e in results.into_iter().flatten() {
            prop_assert_eq!(e.status().as_u16(), 400);
            prop_assert_eq!(e.code(), ErrorCode::InvalidJson);
        }
        Ok(())
    });
}

/// A keyring holding generations 1 and 2 (2 seals).
fn keyring() -> Keyring {
    let m = MasterKey::generate().expect("master key");
    let w1 = Keyring::new_wrapped_key(&m, 1).expect("wrap");
    let w2 = Keyring::new_wrapped_key(&m, 2).expect("wrap");
    Keyring::unwrap_all(&m, &[w1, w2]).expect("unwrap")
}

fn secret_path() -> impl Strategy<Value = SecretPath> {
    prop::collection::vec(segment(), 1..=6).prop_map(|s| {
        SecretPath::parse(&format!("tfy-secret/{}", s.join("/"))).expect("valid path")
    })
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![1..=5u64, 1..=Version::MAX].prop_map(|n| Version::new(n).expect("in range"))
}

#[test]
fn prop_seal_open_round_trip() {
    let k = keyring();
    let strategy = (
        secret_path(),
        version(),
        prop::collection::vec(any::<u8>(), 0..2048),
    );
    run_goal("prop_seal_open", CASES, strategy, |(p, v, plain)| {
        let env = k
            .seal(&p, v, &plain)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(Keyring::envelope_generation(&env), Some(2));
        let opened = k
            .open(&p, v, &env)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(opened.as_slice(), plain.as_slice());
        // two seals of one value differ (random nonces)
        let again = k
            .seal(&p, v, &plain)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_ne!(&again, &env);
        Ok(())
    });
}

#[test]
fn prop_envelope_binds_path_version_generation() {
    let k = keyring();
    let strategy = (
        secret_path(),
        secret_path(),
        version(),
        version(),
        prop::collection::vec(any::<u8>(), 1..256),
        any::<prop::sample::Index>(),
        0u8..8,
    );
    run_goal(
        "prop_envelope_aad",
        CASES,
        strategy,
        |(p, q, v, w, plain, at, bit)| {
            let env = k
                .seal(&p, v, &plain)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if q != p {
                prop_assert!(k.open(&q, v, &env).is_err(), "opened under another path");
            }
            if w != v {
                prop_assert!(k.open(&p, w, &env).is_err(), "opened under another version");
            }
            // the header names another generation the keyring holds
            let mut other_gen = env.clone();
            other_gen[1..5].copy_from_slice(&1u32.to_be_bytes());
            prop_assert!(
                k.open(&p, v, &other_gen).is_err(),
                "opened under generation 1"
            );
            // and one it does not
            let mut unknown_gen = env.clone();
            unknown_gen[1..5].copy_from_slice(&7u32.to_be_bytes());
            prop_assert!(
                k.open(&p, v, &unknown_gen).is_err(),
                "opened under generation 7"
            );
            // any flipped bit, anywhere
            let mut flipped = env.clone();
            flipped[at.index(env.len())] ^= 1 << bit;
            prop_assert!(
                k.open(&p, v, &flipped).is_err(),
                "opened with a flipped bit"
            );
            // any truncation
            let cut = at.index(env.len());
            prop_assert!(k.open(&p, v, &env[..cut]).is_err(), "opened truncated");
            Ok(())
        },
    );
}
