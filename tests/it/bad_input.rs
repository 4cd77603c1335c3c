//! Bad input, table-driven: each case gets its 4xx with a JSON error body and
//! changes nothing.

use serde_json::json;

use crate::common::*;

crate::both_backends!(
    bad_paths_on_every_verb,
    limits_are_inclusive,
    bad_versions_in_the_query,
    bad_versions_in_delete,
    bad_bodies,
    content_types,
    errors_never_echo_input,
);

/// Paths every verb must refuse with 400 `invalid_path`.
const BAD_PATHS: &[&str] = &[
    "",
    "/",
    "secret",
    "tfy-secrets/a",
    "tfy-secretx",
    "TFY-SECRET/a",
    "//tfy-secret/a",
    "tfy-secret//a",
    "tfy-secret/a/",
    "tfy-secret/a//b",
    "tfy-secret/.",
    "tfy-secret/..",
    "tfy-secret/a/../b",
    "tfy-secret/./a",
    "tfy-secret/a b",
    "tfy-secret/a\tb",
    "tfy-secret/a\nb",
    "tfy-secret/a\u{0}b",
    "tfy-secret/a\\b",
    "tfy-secret/a?b",
    "tfy-secret/a#b",
    "tfy-secret/a%b",
    "tfy-secret/a:b",
    "tfy-secret/a*b",
    "tfy-secret/\u{0430}cme",
    "tfy-secret/caf\u{e9}",
    "tfy-secret/\u{ff0e}\u{ff0e}",
    " tfy-secret/a",
    "tfy-secret/a ",
    "../tfy-secret/a",
];

fn too_long_paths() -> Vec<String> {
    let seg = "a".repeat(128);
    vec![
        format!("tfy-secret/{seg}b"),
        format!("tfy-secret/{}", vec!["s"; 16].join("/")),
        format!(
            "tfy-secret/{seg}/{seg}/{seg}/{}",
            "b".repeat(512 - 11 - 3 * 129 + 1)
        ),
    ]
}

async fn bad_paths_on_every_verb(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    let mut paths: Vec<String> = BAD_PATHS.iter().map(|p| p.to_string()).collect();
    paths.extend(too_long_paths());
    for p in &paths {
        for (verb, r) in [
            ("GET", c.get(p, None).await),
            ("PUT", c.put(p, "x").await),
            ("DELETE", c.delete(p, None).await),
        ] {
            assert_eq!(
                r.status,
                400,
                "{verb} {p:?}: {:?}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.error_code(), "invalid_path", "{verb} {p:?}");
            let msg = r.json()["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if !p.is_empty() && !msg.contains("tfy-secret") {
                assert!(!msg.contains(p.as_str()), "message echoes input: {msg}");
            }
        }
    }
    // the vendor's troubleshooting text, exactly
    let r = c.put("other/a", "x").await;
    assert_eq!(
        r.json()["error"]["message"],
        "path must start with tfy-secret/"
    );
    // dot segments sent percent-encoded are decoded and refused
    let r = c.get_uri("/secrets?path=tfy-secret/%2e%2e/x").await;
    assert_eq!(r.status, 400);
    let r = c.get_uri("/secrets?path=tfy-secret%2F%2Fa").await;
    assert_eq!(r.status, 400);
    // nothing was stored along the way
    assert_eq!(c.get("tfy-secret/a", None).await.status, 404);
}

async fn limits_are_inclusive(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    let seg = "a".repeat(128);
    let ok = [
        format!("tfy-secret/{seg}"),
        format!("tfy-secret/{}", vec!["s"; 15].join("/")),
        format!(
            "tfy-secret/{seg}/{seg}/{seg}/{}",
            "b".repeat(512 - 11 - 3 * 129)
        ),
        "tfy-secret/A-Z_a.z~0+9=@,x".to_owned(),
    ];
    for p in ok {
        assert_eq!(c.put_ok(&p, "x").await, 1, "{p}");
        assert_eq!(c.get(&p, None).await.status, 200);
    }
}

async fn bad_versions_in_the_query(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    c.put_ok("tfy-secret/v", "x").await;
    for v in [
        "0",
        "00",
        "0.0",
        "-1",
        "-0",
        "1.5",
        "1.01",
        "abc",
        "",
        " ",
        "1 ",
        "NaN",
        "inf",
        "1e2",
        "+1",
        "0x10",
        "1.",
        ".5",
        "9223372036854775808",
        "18446744073709551616",
        "99999999999999999999999",
        "１",
    ] {
        let r = c.get("tfy-secret/v", Some(v)).await;
        assert_eq!(r.status, 400, "version={v:?}");
        assert_eq!(r.error_code(), "invalid_version", "version={v:?}");
    }
    // given twice
    let r = c
        .get_uri("/secrets?path=tfy-secret/v&version=1&version=1")
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_query"));
    let r = c
        .get_uri("/secrets?path=tfy-secret/v&path=tfy-secret/v")
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_query"));
    // no path at all
    for uri in [
        "/secrets",
        "/secrets?",
        "/secrets?version=1",
        "/secrets?Path=tfy-secret/v",
    ] {
        let r = c.get_uri(uri).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "missing_parameter"),
            "{uri}"
        );
    }
}

async fn bad_versions_in_delete(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    c.put_ok("tfy-secret/v", "x").await;
    for v in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!("abc"),
        json!(""),
        json!("1.5"),
        json!("-1"),
        json!(9_223_372_036_854_775_808u64),
        json!(1e300),
        json!(true),
        json!([1]),
        json!({ "v": 1 }),
    ] {
        let r = c.delete("tfy-secret/v", Some(v.clone())).await;
        assert_eq!(r.status, 400, "version={v}");
        assert_eq!(r.error_code(), "invalid_version", "version={v}");
    }
    // number literals are read from their digits, never rounded via a float
    for _ in 0..3 {
        c.put_ok("tfy-secret/v", "x").await;
    }
    for lit in [
        "3.9999999999999999",
        "2.0000000000000001",
        "1e0",
        "4E0",
        "0.4e1",
        "-0",
    ] {
        let r = c
            .json(
                "DELETE",
                &format!(r#"{{"path":"tfy-secret/v","version":{lit}}}"#),
            )
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_version"),
            "version={lit}"
        );
    }
    // still there, all four
    for v in 1..=4 {
        assert_eq!(
            c.get("tfy-secret/v", Some(&v.to_string())).await.status,
            200,
            "v{v}"
        );
    }
}

async fn bad_bodies(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, String, &str)> = vec![
        ("PUT", String::new(), "invalid_json"),
        ("PUT", "   ".into(), "invalid_json"),
        ("PUT", "not json".into(), "invalid_json"),
        ("PUT", "{".into(), "invalid_json"),
        ("PUT", "[]".into(), "invalid_json"),
        ("PUT", "\"tfy-secret/a\"".into(), "invalid_json"),
        ("PUT", "null".into(), "invalid_json"),
        ("PUT", "{}".into(), "missing_field"),
        ("PUT", r#"{"path":"tfy-secret/a"}"#.into(), "missing_field"),
        ("PUT", r#"{"value":"x"}"#.into(), "missing_field"),
        (
            "PUT",
            r#"{"path":null,"value":"x"}"#.into(),
            "missing_field",
        ),
        (
            "PUT",
            r#"{"path":"tfy-secret/a","value":null}"#.into(),
            "missing_field",
        ),
        (
            "PUT",
            r#"{"path":"tfy-secret/a","value":5}"#.into(),
            "invalid_field",
        ),
        (
            "PUT",
            r#"{"path":"tfy-secret/a","value":{"a":1}}"#.into(),
            "invalid_field",
        ),
        (
            "PUT",
            r#"{"path":"tfy-secret/a","value":["x"]}"#.into(),
            "invalid_field",
        ),
        (
            "PUT",
            r#"{"path":"tfy-secret/a","value":true}"#.into(),
            "invalid_field",
        ),
        ("PUT", r#"{"path":7,"value":"x"}"#.into(), "invalid_field"),
        (
            "PUT",
            r#"{"path":["tfy-secret/a"],"value":"x"}"#.into(),
            "invalid_field",
        ),
        (
            "PUT",
            r#"{"path":"tfy-secret/a","value":"x","value":"y"}"#.into(),
            "invalid_json",
        ),
        (
            "PUT",
            r#"{"path":"tfy-secret/a","path":"tfy-secret/b","value":"y"}"#.into(),
            "invalid_json",
        ),
        (
            "PUT",
            r#"{"path":"tfy-secret/a","value":"x"} trailing"#.into(),
            "invalid_json",
        ),
        (
            "PUT",
            r#"{"path":"tfy-secret/a","value":"x"}{}"#.into(),
            "invalid_json",
        ),
        (
            "PUT",
            "\u{feff}{\"path\":\"tfy-secret/a\",\"value\":\"x\"}".into(),
            "invalid_json",
        ),
        (
            "PUT",
            r#"{"path":"tfy-secret/a","value":"\ud800"}"#.into(),
            "invalid_json",
        ),
        (
            "PUT",
            r#"{"path":"tfy-secret/a","value":"x",}"#.into(),
            "invalid_json",
        ),
        (
            "PUT",
            format!(r#"{{"path":"tfy-secret/a","value":{deep}}}"#),
            "invalid_json",
        ),
        ("PUT", deep.clone(), "invalid_json"),
        ("DELETE", String::new(), "invalid_json"),
        ("DELETE", "{}".into(), "missing_field"),
        ("DELETE", r#"{"version":1}"#.into(), "missing_field"),
        ("DELETE", r#"{"path":1}"#.into(), "invalid_field"),
        (
            "DELETE",
            r#"{"path":"tfy-secret/a","version":1,"version":2}"#.into(),
            "invalid_json",
        ),
    ];
    for (method, body, code) in &cases {
        let r = c.json(method, body).await;
        let shown: String = body.chars().take(80).collect();
        assert_eq!(
            r.status,
            400,
            "{method} {shown:?}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error_code(), *code, "{method} {shown:?}");
    }
    // invalid UTF-8 inside a string
    let mut body = br#"{"path":"tfy-secret/a","value":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}"#);
    let h = [("x-api-key", KEY), ("content-type", "application/json")];
    let r = send(s.addr(), "PUT", "/secrets", &h, Some(&body)).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_json"));
    // nothing was stored
    assert_eq!(c.get("tfy-secret/a", None).await.status, 404);
}

async fn content_types(b: Backend) {
    let s = TestServer::start_on(b).await;
    let a = s.addr();
    let body = br#"{"path":"tfy-secret/ct","value":"x"}"#;
    for (ct, status) in [
        (Some("application/json"), 200),
        (Some("application/json; charset=utf-8"), 200),
        (Some("Application/JSON"), 200),
        (None, 200),
        (Some("text/plain"), 415),
        (Some("application/x-www-form-urlencoded"), 415),
        (Some("multipart/form-data; boundary=x"), 415),
        (Some("application/jsonp"), 415),
    ] {
        let mut h = vec![("x-api-key", KEY)];
        if let Some(ct) = ct {
            h.push(("content-type", ct));
        }
        let r = send(a, "PUT", "/secrets", &h, Some(body)).await;
        assert_eq!(r.status, status, "{ct:?}");
        if status == 415 {
            assert_eq!(r.error_code(), "unsupported_media_type");
        }
    }
}

async fn errors_never_echo_input(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    let canary = "CANARY-6f1d2c9e";
    let bodies = [
        format!(r#"{{"path":"tfy-secret/a","value":{{"{canary}":1}}}}"#),
        format!(r#"{{"path":"{canary}","value":"x"}}"#),
        format!(r#"{{"path":["{canary}"],"value":"x"}}"#),
        format!(r#"{{"path":"tfy-secret/a","value":"{canary}","version":"x"}} {canary}"#),
        format!(r#""{canary}""#),
        format!(r#"{{"path":"tfy-secret/a","value":"{canary}"#),
        format!(r#"{{"path":"tfy-secret/a","value":1{canary}}}"#),
    ];
    for b in &bodies {
        for m in ["PUT", "DELETE"] {
            let r = c.json(m, b).await;
            assert!(r.status >= 400 && r.status < 500, "{m} {b}");
            assert!(
                !String::from_utf8_lossy(&r.body).contains(canary),
                "{m} {b}: {:?}",
                r.json()
            );
        }
    }
    let r = c
        .json(
            "DELETE",
            &format!(r#"{{"path":"tfy-secret/a","version":"{canary}"}}"#),
        )
        .await;
    assert!(!String::from_utf8_lossy(&r.body).contains(canary));
    let r = c.get("tfy-secret/a", Some(canary)).await;
    assert!(!String::from_utf8_lossy(&r.body).contains(canary));
}
