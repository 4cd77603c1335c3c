//! Authentication over HTTP: every way a key can be presented, every way it
//! can be wrong.

use base64::Engine as _;

use crate::common::*;

crate::both_backends!(auth_matrix,);

fn basic(user_key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_key)
    )
}

async fn auth_matrix(b: Backend) {
    let s = TestServer::start_with(b, |c| c.auth_headers = vec!["X-TFY-Token".into()]).await;
    let a = s.addr();
    s.client.put_ok("tfy-secret/auth/x", "v").await;
    let bearer = format!("Bearer {KEY}");
    let bearer2 = format!("bearer {KEY2}");
    let basic_ok = basic(&format!("truefoundry:{KEY}"));
    let basic_empty_user = basic(&format!(":{KEY2}"));
    let basic_bad = basic("truefoundry:wrong");
    let basic_no_pw = basic(KEY);
    let ok: Vec<Vec<(&str, &str)>> = vec![
        vec![("x-api-key", KEY)],
        vec![("X-API-KEY", KEY2)],
        vec![("authorization", &bearer)],
        vec![("authorization", &bearer2)],
        vec![("authorization", &basic_ok)],
        vec![("authorization", &basic_empty_user)],
        vec![("x-tfy-token", KEY)],
        vec![("x-api-key", KEY), ("authorization", &bearer)],
    ];
    let ko: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("x-api-key", "")],
        vec![("x-api-key", "wrong")],
        vec![("x-api-key", &KEY[..KEY.len() - 1])],
        vec![("x-api-key", "test-key-0123456789abcdeF")],
        vec![("authorization", KEY)],
        vec![("authorization", "Bearer")],
        vec![("authorization", "Bearer ")],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", &basic_bad)],
        vec![("authorization", &basic_no_pw)],
        vec![("authorization", "Basic ***")],
        vec![("authorization", "Digest x")],
        vec![("x-other-header", KEY)],
        vec![("x-api-key", KEY), ("authorization", "Bearer wrong")],
        vec![("x-api-key", "wrong"), ("authorization", &bearer)],
        vec![("x-tfy-token", "wrong"), ("x-api-key", KEY)],
        vec![("x-api-key", KEY), ("x-api-key", "wrong")],
    ];
    for h in &ok {
        let r = send(a, "GET", "/secrets?path=tfy-secret/auth/x", h, None).await;
        assert_eq!(r.status, 200, "{h:?}");
    }
    let mut bodies = Vec::new();
    for h in &ko {
        for (m, body) in [
            ("GET", None),
            (
                "PUT",
                Some(&br#"{"path":"tfy-secret/auth/x","value":"evil"}"#[..]),
            ),
            ("DELETE", Some(&br#"{"path":"tfy-secret/auth/x"}"#[..])),
            ("POST", None),
        ] {
            let uri = "/secrets?path=tfy-secret/auth/x";
            let r = send(a, m, uri, h, body).await;
            assert_eq!(r.status, 401, "{m} {h:?}");
            assert_eq!(r.error_code(), "unauthorized");
            assert!(r.header("www-authenticate").contains("Bearer"), "{m} {h:?}");
            bodies.push(r.body);
        }
    }
    // every 401 is byte-identical (the request id travels in a header)
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    // a key in the query string is never accepted
    for uri in [
        format!("/secrets?path=tfy-secret/auth/x&api_key={KEY}"),
        format!("/secrets?path=tfy-secret/auth/x&key={KEY}"),
        format!("/secrets?path=tfy-secret/auth/x&x-api-key={KEY}"),
    ] {
        assert_eq!(send(a, "GET", &uri, &[], None).await.status, 401, "{uri}");
    }
    // the validation call needs the key too
    assert_eq!(
        send(a, "GET", "/secrets?path=tfy-secret", &[], None)
            .await
            .status,
        401
    );
    // nothing changed
    let r = s.client.get("tfy-secret/auth/x", None).await;
    assert_eq!(
        (r.json()["version"].as_u64(), r.json()["value"].as_str()),
        (Some(1), Some("v"))
    );
    // health endpoints need no key
    assert_eq!(send(a, "GET", "/healthz", &[], None).await.status, 200);
    assert_eq!(send(a, "GET", "/readyz", &[], None).await.status, 200);
}
