//! The Generic Secret Store contract, case by case, over real HTTP.

use serde_json::json;

use crate::common::*;

crate::both_backends!(
    vendor_quick_test,
    versions_grow_and_are_never_reused,
    delete_version_forms,
    missing_secret_and_path,
    root_validation_call,
    leading_slash_names_the_same_secret,
    values_round_trip_exactly,
    size_limits,
    routes_and_methods,
    hundreds_of_concurrent_puts_to_one_path,
    concurrent_writes_to_many_paths,
    concurrent_reads_each_get_their_own_answer,
);

async fn vendor_quick_test(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    let p = "tfy-secret/acme/prod/db-password";
    // 1. create
    let r = c.put(p, "my-secret-value").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "path": p, "version": 1 }));
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("cache-control"), "no-store");
    // 2. read
    let r = c.get(p, None).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["value"], "my-secret-value");
    assert_eq!(j["path"], p);
    assert_eq!(j["version"], 1);
    assert!(
        j["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{j}"
    );
    assert_eq!(r.header("cache-control"), "no-store");
    assert_eq!(r.header("content-type"), "application/json");
    // 3. delete all versions
    let r = c.delete(p, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({ "path": p, "deleted": true, "versions_deleted": 1 })
    );
    assert_eq!(r.header("content-type"), "application/json");
    let r = c.get(p, None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
}

async fn versions_grow_and_are_never_reused(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    let p = "tfy-secret/t/versions";
    for i in 1..=3u64 {
        assert_eq!(c.put_ok(p, &format!("v{i}")).await, i);
    }
    // latest and each version; "2.0" names version 2
    assert_eq!(c.get(p, None).await.json()["value"], "v3");
    for (q, want) in [
        ("1", "v1"),
        ("2", "v2"),
        ("2.0", "v2"),
        ("3", "v3"),
        ("03", "v3"),
    ] {
        let r = c.get(p, Some(q)).await;
        assert_eq!(r.status, 200, "version={q}");
        assert_eq!(r.json()["value"], want, "version={q}");
    }
    // versions that never existed
    for q in ["4", "9223372036854775807"] {
        let r = c.get(p, Some(q)).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "not_found"),
            "version={q}"
        );
    }
    // delete the latest: latest falls back to 2; 3 is gone
    let r = c.delete(p, Some(json!(3))).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({ "path": p, "version": 3, "deleted": true, "versions_deleted": 1 })
    );
    assert_eq!(c.get(p, None).await.json()["value"], "v2");
    assert_eq!(c.get(p, Some("3")).await.status, 404);
    // deleting it again, or a version that never existed: 400
    for v in [json!(3), json!(99)] {
        let r = c.delete(p, Some(v.clone())).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "not_found"),
            "{v}"
        );
    }
    // the next PUT gets 4, not 3
    assert_eq!(c.put_ok(p, "v4").await, 4);
    // delete everything; then a new PUT continues at 5
    let r = c.delete(p, None).await;
    assert_eq!(r.json()["versions_deleted"], 3);
    for v in ["1", "2", "4"] {
        assert_eq!(c.get(p, Some(v)).await.status, 404);
    }
    assert_eq!(c.get(p, None).await.status, 404);
    let r = c.delete(p, None).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "not_found"));
    assert_eq!(c.put_ok(p, "v5").await, 5);
    assert_eq!(c.get(p, None).await.json()["version"], 5);
    assert_eq!(c.get(p, Some("4")).await.status, 404);
}

async fn delete_version_forms(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    let p = "tfy-secret/t/delete-forms";
    for _ in 0..4 {
        c.put_ok(p, "x").await;
    }
    // number, numeric string, float with zero fraction, string with ".0"
    for (v, n) in [
        (json!(1), 1),
        (json!("2"), 2),
        (json!(3.0), 3),
        (json!("4.0"), 4),
    ] {
        let r = c.delete(p, Some(v.clone())).await;
        assert_eq!(r.status, 200, "{v}: {:?}", r.json());
        assert_eq!(r.json()["version"], n);
        assert_eq!(c.get(p, Some(&n.to_string())).await.status, 404);
    }
    // null version means "all versions": nothing live is left, so 400
    let r = c
        .json("DELETE", &json!({ "path": p, "version": null }).to_string())
        .await;
    assert_eq!(r.status, 400);
}

async fn missing_secret_and_path(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    let r = c.get("tfy-secret/nope", None).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = c.get("tfy-secret/nope", Some("1")).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = c.delete("tfy-secret/nope", None).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "not_found"));
    let r = c.delete("tfy-secret/nope", Some(json!(1))).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "not_found"));
}

async fn root_validation_call(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    for p in ["tfy-secret", "tfy-secret/", "/tfy-secret", "/tfy-secret/"] {
        let r = c.get(p, None).await;
        assert_eq!(r.status, 200, "{p}");
        assert_eq!(r.json()["value"], "", "{p}");
        assert_eq!(r.header("content-type"), "application/json");
    }
    // the exact call TrueFoundry makes, unencoded
    let r = c.get_uri("/secrets?path=tfy-secret").await;
    assert_eq!(r.status, 200);
    for p in ["tfy-secret", "tfy-secret/", "/tfy-secret"] {
        let r = c.put(p, "x").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_path"),
            "PUT {p}"
        );
        let r = c.delete(p, None).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_path"),
            "DELETE {p}"
        );
    }
}

async fn leading_slash_names_the_same_secret(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    let r = c.put("/tfy-secret/example/key1", "one").await;
    assert_eq!(
        r.json(),
        json!({ "path": "tfy-secret/example/key1", "version": 1 })
    );
    assert_eq!(c.put_ok("tfy-secret/example/key1", "two").await, 2);
    let r = c.get("/tfy-secret/example/key1", Some("1")).await;
    assert_eq!(r.json()["value"], "one");
    assert_eq!(r.json()["path"], "tfy-secret/example/key1");
    // percent-encoded slashes in the query decode to the same path
    let r = c.get_uri("/secrets?path=tfy-secret%2Fexample%2Fkey1").await;
    assert_eq!(r.json()["value"], "two");
    // `+` in a query is a literal plus (RFC 3986), as in the path itself
    c.put_ok("tfy-secret/example/a+b", "plus").await;
    for uri in [
        "/secrets?path=tfy-secret/example/a+b",
        "/secrets?path=tfy-secret/example/a%2Bb",
    ] {
        let r = c.get_uri(uri).await;
        assert_eq!(r.json()["value"], "plus", "{uri}");
    }
}

async fn values_round_trip_exactly(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    let cases = [
        String::new(),
        " leading and trailing ".into(),
        "ünïcødé ✓ 秘密 🔑".into(),
        "line1\nline2\r\n\t\"quoted\" \\ backslash".into(),
        "{\"json\": [1,2,3]}".into(),
        "x".repeat(64 * 1024),
    ];
    for (i, v) in cases.iter().enumerate() {
        let p = format!("tfy-secret/values/v{i}");
        c.put_ok(&p, v).await;
        assert_eq!(
            c.get(&p, None).await.json()["value"].as_str(),
            Some(v.as_str()),
            "case {i}"
        );
    }
}

async fn size_limits(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    // value one byte over 64 KiB
    let r = c.put("tfy-secret/big", &"x".repeat(64 * 1024 + 1)).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "value_too_large")
    );
    assert_eq!(
        c.get("tfy-secret/big", None).await.status,
        404,
        "nothing stored"
    );
    // multi-byte characters count in bytes
    let r = c.put("tfy-secret/big", &"é".repeat(32 * 1024 + 1)).await;
    assert_eq!(r.status, 413);
    // body over 1 MiB, declared by Content-Length: refused before reading
    let body = format!(
        "{{\"path\":\"tfy-secret/big\",\"value\":\"{}\"}}",
        "x".repeat(1024 * 1024)
    );
    let r = c.json("PUT", &body).await;
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
    // a 40 MiB declared body is answered without being sent
    let head = format!(
        "PUT /secrets HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"path\":",
        40 * 1024 * 1024
    );
    let (status, body) = raw(s.addr(), head.as_bytes(), std::time::Duration::from_secs(5));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    // an endless chunked body: answered 413 while the client is still
    // sending, long before 40 MiB went over the wire
    let (status, body, sent) = endless_chunked_put(s.addr());
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    assert!(
        sent < 16 * 1024 * 1024,
        "server read {sent} bytes before answering"
    );
}

/// Streams a chunked PUT body of up to 40 MiB from another thread while
/// reading the response. Returns (status, body, bytes sent before the
/// response arrived).
pub fn endless_chunked_put(addr: std::net::SocketAddr) -> (u16, String, usize) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "PUT /secrets HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("head");
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let (mut w, counter) = (s.try_clone().expect("clone"), std::sync::Arc::clone(&sent));
    let writer = std::thread::spawn(move || {
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
        for _ in 0..640 {
            if w.write_all(chunk.as_bytes()).is_err() {
                return;
            }
            counter.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let at_response = sent.load(Ordering::Relaxed);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text, at_response)
}

async fn routes_and_methods(b: Backend) {
    let s = TestServer::start_on(b).await;
    let a = s.addr();
    let key = [("x-api-key", KEY)];
    for (m, uri, status, code) in [
        ("GET", "/", 404, "route_not_found"),
        ("GET", "/secret", 404, "route_not_found"),
        ("GET", "/secrets/", 404, "route_not_found"),
        ("GET", "/v1/secrets", 404, "route_not_found"),
        ("POST", "/secrets", 405, "method_not_allowed"),
        ("PATCH", "/secrets", 405, "method_not_allowed"),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("DELETE", "/readyz", 405, "method_not_allowed"),
    ] {
        let r = send(a, m, uri, &key, None).await;
        assert_eq!(r.status, status, "{m} {uri}");
        assert_eq!(r.error_code(), code, "{m} {uri}");
    }
    let r = send(a, "POST", "/secrets", &key, None).await;
    assert_eq!(r.header("allow"), "GET, PUT, DELETE");
    for uri in ["/healthz", "/readyz"] {
        let r = send(a, "GET", uri, &[], None).await;
        assert_eq!(r.status, 200, "{uri}");
        assert_eq!(r.header("content-type"), "application/json");
    }
}

async fn hundreds_of_concurrent_puts_to_one_path(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = s.client.clone();
    let p = "tfy-secret/race/one";
    let n = 300;
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let v = c.put_ok(p, &format!("value-{i}")).await;
            // read-your-write: this version or a newer one
            let latest = c.get(p, None).await.json()["version"].as_u64().unwrap_or(0);
            assert!(latest >= v, "read {latest} after writing {v}");
            (v, i)
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.expect("task"));
    }
    let mut versions: Vec<u64> = got.iter().map(|(v, _)| *v).collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        (1..=n as u64).collect::<Vec<_>>(),
        "versions unique and contiguous"
    );
    for (v, i) in got {
        let r = c.get(p, Some(&v.to_string())).await;
        assert_eq!(r.json()["value"], format!("value-{i}"), "version {v}");
    }
}

async fn concurrent_writes_to_many_paths(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = s.client.clone();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let p = format!("tfy-secret/many/p{}", (w + i) % 8);
                c.put_ok(&p, &format!("{w}-{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let mut total = 0;
    for k in 0..8 {
        let p = format!("tfy-secret/many/p{k}");
        let latest = c.get(&p, None).await.json()["version"]
            .as_u64()
            .unwrap_or(0);
        for v in 1..=latest {
            assert_eq!(c.get(&p, Some(&v.to_string())).await.status, 200);
        }
        total += latest;
    }
    assert_eq!(total, 160);
}

/// Many GETs at once (on PostgreSQL they are folded into shared queries):
/// each gets exactly the version it asked for, the newest live one, or 404.
async fn concurrent_reads_each_get_their_own_answer(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = s.client.clone();
    let path = |i: usize| format!("tfy-secret/reads/p{i:02}");
    for i in 0..12 {
        for v in 1..=3 {
            assert_eq!(c.put_ok(&path(i), &format!("p{i}-v{v}")).await, v);
        }
    }
    // Every third secret lost its newest version; every fourth, all of them.
    for i in (0..12).step_by(3) {
        let r = c.delete(&path(i), Some(json!(3))).await;
        assert_eq!(r.status, 200, "{}", path(i));
    }
    for i in (0..12).step_by(4) {
        assert_eq!(c.delete(&path(i), None).await.status, 200);
    }
    // (path index, version asked for, expected version or 404)
    let expect = |i: usize, v: Option<u64>| -> Option<u64> {
        if i.is_multiple_of(4) {
            return None;
        }
        let newest = if i.is_multiple_of(3) { 2 } else { 3 };
        match v {
            None => Some(newest),
            Some(v) if v <= newest => Some(v),
            Some(_) => None,
        }
    };
    let mut tasks = Vec::new();
    for k in 0..240usize {
        let c = c.clone();
        // 14 paths: two were never written
        let (i, v) = (k % 14, [None, Some(1), Some(2), Some(3)][k / 14 % 4]);
        let p = path(i);
        tasks.push(tokio::spawn(async move {
            let r = c.get(&p, v.map(|v| v.to_string()).as_deref()).await;
            (i, v, r)
        }));
    }
    for t in tasks {
        let (i, v, r) = t.await.expect("task");
        match (i < 12).then(|| expect(i, v)).flatten() {
            Some(want) => {
                assert_eq!(r.status, 200, "p{i} {v:?}");
                let body = r.json();
                assert_eq!(body["version"], want, "p{i} {v:?}");
                assert_eq!(body["value"], format!("p{i}-v{want}"), "p{i} {v:?}");
                assert_eq!(body["path"], path(i), "p{i} {v:?}");
            }
            None => assert_eq!(r.status, 404, "p{i} {v:?}: {}", r.json()),
        }
    }
}
