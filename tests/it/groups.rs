//! Secret groups: scoped tokens and roles, listing, metadata, the audit log
//! and the failed-auth limiter, on both backends.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

crate::both_backends!(
    role_and_scope_matrix,
    empty_scope_and_bad_token_requests,
    expiry_and_revocation_take_effect_at_once,
    listing_is_paginated_sorted_and_stable,
    metadata_shows_every_version_and_its_author,
    every_request_is_audited_without_values,
    audit_verify_catches_tampering,
    reads_fail_closed_when_the_audit_log_cannot_be_written,
    tokens_never_outlive_or_escape_their_creator,
    scoped_listing_visits_only_its_groups,
    scopes_naming_single_secrets_are_listed,
    many_concurrent_valid_tokens_are_never_rate_limited,
    an_editors_refused_puts_do_not_disturb_the_writes_beside_them,
);

/// Creates a token through the API with the static admin key.
async fn token(c: &Client, name: &str, role: &str, scopes: &[&str], ttl: Option<&str>) -> String {
    let mut body = json!({ "name": name, "role": role, "scopes": scopes });
    if let Some(t) = ttl {
        body["ttl"] = json!(t);
    }
    let h = [
        ("x-api-key", c.key.as_str()),
        ("content-type", "application/json"),
    ];
    let r = send(
        c.addr,
        "POST",
        "/v1/tokens",
        &h,
        Some(body.to_string().as_bytes()),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["name"], name);
    assert_eq!(j["role"], role);
    j["token"].as_str().expect("token").to_owned()
}

fn as_token(c: &Client, t: &str) -> Client {
    Client {
        addr: c.addr,
        key: t.to_owned(),
    }
}

async fn role_and_scope_matrix(b: Backend) {
    let s = TestServer::start_on(b).await;
    let admin = &s.client;
    let secret = "matrix-secret-value-5e1f";
    for p in [
        "tfy-secret/acme/db",
        "tfy-secret/acme-evil/x",
        "tfy-secret/other/y",
    ] {
        admin.put_ok(p, secret).await;
        admin.put_ok(p, secret).await;
    }
    let mut tokens = Vec::new();
    for role in ["viewer", "editor", "admin"] {
        tokens.push((
            role,
            token(
                admin,
                &format!("{role}-acme"),
                role,
                &["tfy-secret/acme"],
                None,
            )
            .await,
        ));
    }
    // (operation, expected status per role: viewer, editor, admin)
    for (role, t) in &tokens {
        let c = as_token(admin, t);
        let i = match *role {
            "viewer" => 0,
            "editor" => 1,
            _ => 2,
        };
        let pick = |v: [u16; 3]| v[i];
        for (label, r, want) in [
            (
                "read latest",
                c.get("tfy-secret/acme/db", None).await,
                pick([403, 200, 200]),
            ),
            (
                "read version",
                c.get("tfy-secret/acme/db", Some("2")).await,
                pick([403, 200, 200]),
            ),
            ("validation call", c.get("tfy-secret", None).await, 200),
            (
                "list group",
                c.get_uri("/secrets?path=tfy-secret/acme&list=true").await,
                200,
            ),
            (
                "list root",
                c.get_uri("/secrets?path=tfy-secret&list=true").await,
                200,
            ),
            (
                "metadata",
                c.get_uri("/secrets?path=tfy-secret/acme/db&metadata=true")
                    .await,
                200,
            ),
            (
                "put existing",
                c.put("tfy-secret/acme/db", "new").await,
                pick([403, 200, 200]),
            ),
            (
                "put new",
                c.put(&format!("tfy-secret/acme/new-{role}"), "v").await,
                pick([403, 403, 200]),
            ),
            (
                "delete version",
                c.delete("tfy-secret/acme/db", Some(json!(1))).await,
                pick([403, 200, 400]),
            ),
            (
                "list tokens",
                send(c.addr, "GET", "/v1/tokens", &c.auth(), None).await,
                pick([403, 403, 200]),
            ),
            (
                "create token",
                send(
                    c.addr,
                    "POST",
                    "/v1/tokens",
                    &[("x-api-key", c.key.as_str()), ("content-type", "application/json")],
                    Some(json!({ "name": format!("made-by-{role}"), "role": "viewer", "scopes": ["tfy-secret/acme"] }).to_string().as_bytes()),
                )
                .await,
                pick([403, 403, 201]),
            ),
            (
                "revoke token",
                send(c.addr, "DELETE", "/v1/tokens/viewer-acme", &c.auth(), None).await,
                pick([403, 403, 200]),
            ),
            // whole segments only, and other groups, whatever the role
            (
                "read acme-evil",
                c.get("tfy-secret/acme-evil/x", None).await,
                403,
            ),
            (
                "put acme-evil",
                c.put("tfy-secret/acme-evil/x", "evil").await,
                403,
            ),
            (
                "delete acme-evil",
                c.delete("tfy-secret/acme-evil/x", None).await,
                403,
            ),
            (
                "metadata other",
                c.get_uri("/secrets?path=tfy-secret/other/y&metadata=true")
                    .await,
                403,
            ),
            (
                "list other",
                c.get_uri("/secrets?path=tfy-secret/other&list=true").await,
                403,
            ),
        ] {
            assert_eq!(
                r.status,
                want,
                "{role}: {label}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let body = String::from_utf8_lossy(&r.body);
            if r.status == 403 {
                assert_eq!(r.error_code(), "forbidden", "{role}: {label}");
                let m = r.json()["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                assert!(
                    m.contains("role") || m.contains("scope"),
                    "{role}: {label}: {m}"
                );
            }
            if label != "read latest" && label != "read version" {
                assert!(!body.contains(secret), "{role}: {label} leaked the value");
            }
        }
        // listing never shows what the token may not see
        let r = c.get_uri("/secrets?path=tfy-secret&list=true").await;
        let paths: Vec<String> = r.json()["secrets"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|i| i["path"].as_str().unwrap_or("").to_owned())
            .collect();
        assert!(
            paths.iter().all(|p| p.starts_with("tfy-secret/acme/")),
            "{role}: {paths:?}"
        );
        assert!(paths.contains(&"tfy-secret/acme/db".to_owned()));
    }
    // an editor may not bring back a secret whose versions are all deleted
    let editor = as_token(admin, &tokens[1].1);
    admin.put_ok("tfy-secret/acme/gone", "x").await;
    assert_eq!(
        editor.delete("tfy-secret/acme/gone", None).await.status,
        200
    );
    let r = editor.put("tfy-secret/acme/gone", "back").await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    // a tenant admin manages tokens only inside its tenant
    let tenant = as_token(admin, &tokens[2].1);
    let h = [
        ("x-api-key", tenant.key.as_str()),
        ("content-type", "application/json"),
    ];
    for (scopes, want) in [
        (json!(["tfy-secret/acme/prod"]), 201),
        (json!(["tfy-secret/acme"]), 201),
        (json!(["tfy-secret/acme-evil"]), 403),
        (json!(["tfy-secret"]), 403),
        (json!(["tfy-secret/acme", "tfy-secret/other"]), 403),
    ] {
        let name = format!("sub-{}", scopes.to_string().len());
        let body = json!({ "name": name, "role": "editor", "scopes": scopes });
        let r = send(
            tenant.addr,
            "POST",
            "/v1/tokens",
            &h,
            Some(body.to_string().as_bytes()),
        )
        .await;
        assert_eq!(
            r.status,
            want,
            "{scopes}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let _ = send(
            tenant.addr,
            "DELETE",
            &format!("/v1/tokens/{name}"),
            &tenant.auth(),
            None,
        )
        .await;
    }
    let listed = send(tenant.addr, "GET", "/v1/tokens", &tenant.auth(), None)
        .await
        .json();
    for t in listed["tokens"].as_array().expect("tokens") {
        assert!(t.get("token").is_none(), "a listing shows a token");
        for sc in t["scopes"].as_array().expect("scopes") {
            assert!(
                sc.as_str()
                    .is_some_and(|s| s == "tfy-secret/acme" || s.starts_with("tfy-secret/acme/")),
                "{t}"
            );
        }
    }
    // it cannot revoke a root admin's token it cannot see
    let root_token = token(admin, "root-admin", "admin", &["tfy-secret"], None).await;
    assert_eq!(
        send(
            tenant.addr,
            "DELETE",
            "/v1/tokens/root-admin",
            &tenant.auth(),
            None
        )
        .await
        .status,
        404
    );
    assert_eq!(
        as_token(admin, &root_token)
            .get("tfy-secret/other/y", None)
            .await
            .status,
        200
    );
    // names are unique
    let h = [("x-api-key", KEY), ("content-type", "application/json")];
    let body =
        json!({ "name": "root-admin", "role": "viewer", "scopes": ["tfy-secret"] }).to_string();
    let r = send(admin.addr, "POST", "/v1/tokens", &h, Some(body.as_bytes())).await;
    assert_eq!((r.status, r.error_code().as_str()), (409, "conflict"));
}

async fn empty_scope_and_bad_token_requests(b: Backend) {
    let s = TestServer::start_on(b).await;
    let admin = &s.client;
    admin.put_ok("tfy-secret/a/b", "v").await;
    let nothing = as_token(admin, &token(admin, "nothing", "admin", &[], None).await);
    for r in [
        nothing.get("tfy-secret/a/b", None).await,
        nothing.put("tfy-secret/a/c", "v").await,
        nothing.get_uri("/secrets?path=tfy-secret&list=true").await,
    ] {
        assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("no scope")
        );
    }
    let h = [("x-api-key", KEY), ("content-type", "application/json")];
    for (body, code) in [
        (
            json!({ "role": "viewer", "scopes": ["tfy-secret"] }),
            "missing_field",
        ),
        (
            json!({ "name": "x", "role": "root", "scopes": ["tfy-secret"] }),
            "invalid_field",
        ),
        (
            json!({ "name": "x", "role": "viewer", "scopes": "tfy-secret" }),
            "invalid_field",
        ),
        (
            json!({ "name": "x", "role": "viewer", "scopes": ["other/x"] }),
            "invalid_path",
        ),
        (
            json!({ "name": "x", "role": "viewer", "scopes": ["tfy-secret/a"], "ttl": "soon" }),
            "invalid_field",
        ),
        (
            json!({ "name": "bad name!", "role": "viewer", "scopes": ["tfy-secret/a"] }),
            "invalid_field",
        ),
    ] {
        let r = send(
            admin.addr,
            "POST",
            "/v1/tokens",
            &h,
            Some(body.to_string().as_bytes()),
        )
        .await;
        assert_eq!((r.status, r.error_code().as_str()), (400, code), "{body}");
    }
    let r = admin
        .get_uri("/secrets?path=tfy-secret&list=true&cursor=%%%")
        .await;
    assert_eq!(r.status, 400);
    for q in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "list=maybe",
        "list=true&metadata=true",
        "list=true&version=1",
    ] {
        let r = admin
            .get_uri(&format!("/secrets?path=tfy-secret/a&{q}"))
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_query"),
            "{q}"
        );
    }
    assert_eq!(
        send(
            admin.addr,
            "DELETE",
            "/v1/tokens/no-such-token",
            &admin.auth(),
            None
        )
        .await
        .status,
        404
    );
    assert_eq!(
        send(admin.addr, "PUT", "/v1/tokens", &admin.auth(), None)
            .await
            .status,
        405
    );
}

async fn expiry_and_revocation_take_effect_at_once(b: Backend) {
    let s = TestServer::start_on(b).await;
    let admin = &s.client;
    admin.put_ok("tfy-secret/t/x", "v").await;
    let short = as_token(
        admin,
        &token(admin, "short", "editor", &["tfy-secret/t"], Some("1s")).await,
    );
    let revoked = as_token(
        admin,
        &token(admin, "to-revoke", "editor", &["tfy-secret/t"], None).await,
    );
    assert_eq!(short.get("tfy-secret/t/x", None).await.status, 200);
    assert_eq!(revoked.get("tfy-secret/t/x", None).await.status, 200);
    let r = send(
        admin.addr,
        "DELETE",
        "/v1/tokens/to-revoke",
        &admin.auth(),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["revoked"], true);
    let unknown = as_token(admin, "sdt_unknown-token-value");
    let baseline = unknown.get("tfy-secret/t/x", None).await;
    assert_eq!(baseline.status, 401);
    let after_revoke = revoked.get("tfy-secret/t/x", None).await;
    assert_eq!(after_revoke.status, 401);
    assert_eq!(
        after_revoke.body, baseline.body,
        "401 for a revoked token differs from an unknown one"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after_expiry = short.get("tfy-secret/t/x", None).await;
    assert_eq!(after_expiry.status, 401);
    assert_eq!(
        after_expiry.body, baseline.body,
        "401 for an expired token differs from an unknown one"
    );
    // revoking twice: 404
    assert_eq!(
        send(
            admin.addr,
            "DELETE",
            "/v1/tokens/to-revoke",
            &admin.auth(),
            None
        )
        .await
        .status,
        404
    );
    // the listing shows the revocation and last use, never the token
    let list = send(admin.addr, "GET", "/v1/tokens", &admin.auth(), None)
        .await
        .json();
    let t = list["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["name"] == "to-revoke")
        .cloned()
        .expect("listed");
    assert!(t["revoked_at"].is_string(), "{t}");
    assert!(t["last_used_at"].is_string() || t["last_used_at"].is_null());
    assert!(t.get("token").is_none());
}

async fn listing_is_paginated_sorted_and_stable(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = s.client.clone();
    let mut expected = BTreeSet::new();
    let mut tasks = Vec::new();
    for i in 0..250 {
        let c = c.clone();
        let p = format!("tfy-secret/list/g{}/s{:03}", i % 3, i);
        expected.insert(p.clone());
        tasks.push(tokio::spawn(async move { c.put_ok(&p, "v").await }));
    }
    for t in tasks {
        t.await.expect("put");
    }
    c.put_ok("tfy-secret/list-other/x", "v").await; // a sibling prefix, never listed
    c.put_ok("tfy-secret/list/deleted", "v").await;
    assert_eq!(c.delete("tfy-secret/list/deleted", None).await.status, 200);

    // page through while writers add versions and new secrets elsewhere
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (c, stop) = (c.clone(), std::sync::Arc::clone(&stop));
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                c.put_ok(
                    &format!("tfy-secret/list/g{}/s{:03}", i % 3, (i * 7) % 250),
                    "w",
                )
                .await;
                c.put_ok(&format!("tfy-secret/churn/n{i}"), "w").await;
                i += 1;
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut uri = "/secrets?path=tfy-secret/list&list=true&limit=40".to_owned();
        if let Some(cur) = &cursor {
            uri.push_str(&format!("&cursor={}", enc(cur)));
        }
        let r = c.get_uri(&uri).await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        let j = r.json();
        let items = j["secrets"].as_array().expect("secrets").clone();
        assert!(items.len() <= 40);
        for i in &items {
            assert!(i["version"].as_u64().is_some_and(|v| v >= 1));
            assert!(i["updated_at"].as_str().is_some_and(|t| t.ends_with('Z')));
            seen.push(i["path"].as_str().expect("path").to_owned());
        }
        pages += 1;
        match j["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.expect("writer");
    assert!(pages >= 7, "{pages} pages");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "pages are sorted by path with no duplicates");
    assert_eq!(
        seen.into_iter().collect::<BTreeSet<_>>(),
        expected,
        "every secret exactly once, nothing else"
    );

    // a group prefix lists only whole segments below it
    let r = c
        .get_uri("/secrets?path=tfy-secret/list/g1&list=true&limit=1000")
        .await
        .json();
    let g1 = r["secrets"].as_array().expect("secrets");
    assert_eq!(
        g1.len(),
        expected
            .iter()
            .filter(|p| p.starts_with("tfy-secret/list/g1/"))
            .count()
    );
    // the root lists everything
    let r = c
        .get_uri("/secrets?path=tfy-secret&list=true&limit=1000")
        .await
        .json();
    assert!(r["secrets"].as_array().expect("secrets").len() > 250);
}

async fn metadata_shows_every_version_and_its_author(b: Backend) {
    let s = TestServer::start_on(b).await;
    let admin = &s.client;
    admin.put_ok("tfy-secret/meta/x", "one").await;
    let editor = as_token(
        admin,
        &token(admin, "meta-editor", "editor", &["tfy-secret/meta"], None).await,
    );
    assert_eq!(editor.put("tfy-secret/meta/x", "two").await.status, 200);
    admin.put_ok("tfy-secret/meta/x", "three").await;
    assert_eq!(
        admin
            .delete("tfy-secret/meta/x", Some(json!(3)))
            .await
            .status,
        200
    );
    let viewer = as_token(
        admin,
        &token(admin, "meta-viewer", "viewer", &["tfy-secret/meta"], None).await,
    );
    let r = viewer
        .get_uri("/secrets?path=tfy-secret/meta/x&metadata=true")
        .await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    for v in ["one", "two", "three"] {
        assert!(
            !body.contains(&format!("\"{v}\"")),
            "metadata shows a value: {body}"
        );
    }
    let j = r.json();
    assert_eq!(j["latest"], 2);
    let versions = j["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 3);
    let list = send(admin.addr, "GET", "/v1/tokens", &admin.auth(), None)
        .await
        .json();
    let editor_id = list["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["name"] == "meta-editor")
        .map(|t| t["id"].clone())
        .expect("id");
    assert_eq!(versions[0]["created_by"], "static-1");
    assert_eq!(versions[1]["created_by"], editor_id);
    assert!(versions[0]["deleted_at"].is_null());
    assert!(versions[2]["deleted_at"].is_string());
    assert!(versions.iter().all(|v| v["created_at"].is_string()));
    assert_eq!(
        viewer
            .get_uri("/secrets?path=tfy-secret/meta/none&metadata=true")
            .await
            .status,
        404
    );
}

/// Every audit record in the store, via `secretd audit tail --json`.
fn audit_records(s: &TestServer) -> Vec<Value> {
    let (ok, out, err) = s.cli(&["audit", "tail", "--json"]);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

async fn every_request_is_audited_without_values(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    let canary = "audit-canary-value-77c1";
    let before = audit_records(&s).len();
    let mut ids = Vec::new();
    let mut record = |r: Resp| ids.push((r.header("x-request-id").to_owned(), r.status));
    record(c.put("tfy-secret/aud/x", canary).await);
    record(c.put("tfy-secret/aud/x", canary).await);
    record(c.get("tfy-secret/aud/x", None).await);
    record(c.get("tfy-secret/aud/x", Some("1")).await);
    record(c.get("tfy-secret/aud/missing", None).await);
    record(c.get("tfy-secret", None).await);
    record(c.get_uri("/secrets?path=tfy-secret/aud&list=true").await);
    record(
        c.get_uri("/secrets?path=tfy-secret/aud/x&metadata=true")
            .await,
    );
    record(c.delete("tfy-secret/aud/x", Some(json!(1))).await);
    record(c.delete("tfy-secret/aud/x", Some(json!(1))).await); // 400: already deleted
    record(c.put("bad/path", canary).await);
    record(
        c.json(
            "PUT",
            &format!(r#"{{"path":"tfy-secret/aud/y","value":{{"{canary}":1}}}}"#),
        )
        .await,
    );
    record(as_token(c, "wrong-key").get("tfy-secret/aud/x", None).await);
    record(send(c.addr, "GET", "/secrets?path=tfy-secret/aud/x", &[], None).await);
    record(send(c.addr, "GET", "/v1/tokens", &c.auth(), None).await);
    let t = token(c, "aud-token", "viewer", &["tfy-secret/aud"], None).await;
    record(as_token(c, &t).get("tfy-secret/aud/x", None).await);
    record(send(c.addr, "DELETE", "/v1/tokens/aud-token", &c.auth(), None).await);
    ids.push(("<token.create>".into(), 201));
    let records = audit_records(&s);
    let new: Vec<&Value> = records[before..].iter().collect();
    assert_eq!(new.len(), ids.len(), "one record per request: {new:#?}");
    for (id, status) in ids.iter().filter(|(id, _)| id != "<token.create>") {
        let matching: Vec<_> = new
            .iter()
            .filter(|r| r["request_id"] == id.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "request {id}");
        assert_eq!(
            matching[0]["status"], *status,
            "request {id}: {}",
            matching[0]
        );
    }
    let text = serde_json::to_string(&new).expect("json");
    assert!(!text.contains(canary), "a value reached the audit log");
    assert!(
        !text.contains(KEY) && !text.contains(&t) && !text.contains("wrong-key"),
        "a key reached the audit log"
    );
    let ops: BTreeSet<&str> = new.iter().filter_map(|r| r["operation"].as_str()).collect();
    for op in [
        "secret.write",
        "secret.read",
        "secret.list",
        "secret.metadata",
        "secret.delete",
        "token.create",
        "token.list",
        "token.revoke",
    ] {
        assert!(ops.contains(op), "no {op} record: {ops:?}");
    }
    let outcomes: BTreeSet<&str> = new.iter().filter_map(|r| r["outcome"].as_str()).collect();
    for o in ["ok", "not_found", "invalid", "unauthenticated", "denied"] {
        assert!(outcomes.contains(o), "no {o} outcome: {outcomes:?}");
    }
    let w = new
        .iter()
        .find(|r| r["operation"] == "secret.write")
        .expect("write");
    assert_eq!(w["token_id"], "static-1");
    assert_eq!(w["path"], "tfy-secret/aud/x");
    assert_eq!(w["version"], 1);
    assert!(
        w["client"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    let unauth = new
        .iter()
        .find(|r| r["outcome"] == "unauthenticated")
        .expect("401");
    assert!(unauth["token_id"].is_null());
    // A record the audit layer writes (not the write's own) names the client too.
    assert!(
        unauth["client"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{unauth}"
    );
    // Which chain holds what: on the embedded store, reads and refusals are
    // in the access log and writes in the store's chain; PostgreSQL
    // replicas keep both in the database.
    let embedded = matches!(s.backend, Backend::Sqlite);
    for r in &new {
        let write = matches!(
            r["operation"].as_str(),
            Some("secret.write" | "secret.delete" | "token.create" | "token.revoke")
        ) && r["outcome"] == "ok";
        let expected = if embedded && !write {
            "access"
        } else {
            "store"
        };
        assert_eq!(r["chain"], expected, "{r}");
    }
    let (ok, out, err) = s.cli(&["audit", "verify"]);
    assert!(ok, "{out}{err}");
    let counted: usize = out
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert_eq!(counted, records.len(), "{out}");
    assert_eq!(out.contains("access log intact"), embedded, "{out}");
    let (ok, out, _) = s.cli(&["audit", "tail", "--since", "1h"]);
    assert!(ok);
    assert_eq!(out.lines().count(), records.len());
    let (ok, out, _) = s.cli(&["audit", "tail", "--since", "2999-01-01T00:00:00Z"]);
    assert!(ok && out.is_empty());
}

async fn audit_verify_catches_tampering(b: Backend) {
    let s = TestServer::start_on(b).await;
    let c = &s.client;
    for i in 0..6 {
        c.put_ok(&format!("tfy-secret/chain/s{i}"), "v").await;
    }
    let verify = || s.cli(&["audit", "verify"]);
    let (ok, out, err) = verify();
    assert!(ok, "{out}{err}");
    // edit a record
    s.sql("UPDATE audit_log SET status = 500 WHERE seq = 3")
        .await;
    let (ok, _, err) = verify();
    assert!(!ok);
    assert!(err.contains("record 3"), "{err}");
    s.sql("UPDATE audit_log SET status = 200 WHERE seq = 3")
        .await;
    assert!(verify().0, "restoring the field restores the chain");
    // delete a record
    s.sql("CREATE TABLE saved AS SELECT * FROM audit_log WHERE seq = 4; DELETE FROM audit_log WHERE seq = 4").await;
    let (ok, _, err) = verify();
    assert!(!ok);
    assert!(err.contains("record 4"), "{err}");
    s.sql("INSERT INTO audit_log SELECT * FROM saved; DROP TABLE saved")
        .await;
    assert!(verify().0);
    // insert a forged record between 2 and 3 (renumbering the rest)
    s.sql(
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 3;
         UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1003;
         INSERT INTO audit_log (seq, time, request_id, operation, outcome, status, prev_hash, hash)
           SELECT 3, time, 'forged', 'secret.read', 'ok', 200, hash, hash FROM audit_log WHERE seq = 2",
    )
    .await;
    let (ok, _, err) = verify();
    assert!(!ok);
    assert!(err.contains("record 3"), "{err}");
}

async fn reads_fail_closed_when_the_audit_log_cannot_be_written(b: Backend) {
    let value = "fail-closed-value-31aa";
    let check = |r: Resp| {
        assert_eq!((r.status, r.error_code().as_str()), (503, "unavailable"));
        assert!(
            !String::from_utf8_lossy(&r.body).contains(value),
            "the value was released without its audit record"
        );
    };
    match b {
        Backend::Sqlite => {
            // The access log cannot be written (a fail point that writes
            // half the line, then fails, in a server process of its own).
            let dir = tempfile::tempdir().expect("tempdir");
            let p = Proc::start(
                &dir.path().join("data"),
                &[
                    ("SECRETD_API_KEYS", KEY),
                    ("SECRETD_MASTER_KEY", MASTER_KEY),
                    ("FAILPOINTS", "access-log-write-fails=return"),
                ],
            );
            let c = p.client(KEY);
            c.put_ok("tfy-secret/closed/x", value).await;
            check(c.get("tfy-secret/closed/x", None).await);
            c.put_ok("tfy-secret/closed/x", "more").await;
        }
        Backend::Postgres(_) => {
            let s = TestServer::start_on(b.clone()).await;
            let c = &s.client;
            c.put_ok("tfy-secret/closed/x", value).await;
            s.sql(
                "CREATE FUNCTION no_reads() RETURNS trigger AS $$ BEGIN
                   IF NEW.operation = 'secret.read' THEN RAISE EXCEPTION 'audit refused'; END IF;
                   RETURN NEW; END $$ LANGUAGE plpgsql;
                 CREATE TRIGGER no_reads BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION no_reads();",
            )
            .await;
            check(c.get("tfy-secret/closed/x", None).await);
            // writes carry their record in their own transaction: still fine
            c.put_ok("tfy-secret/closed/x", "more").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_authentication_is_rate_limited_per_address() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.auth_fail_limit = 5;
        c.auth_fail_window = Duration::from_secs(60);
    })
    .await;
    let c = &s.client;
    let bad = as_token(c, "not-a-key");
    for i in 0..5 {
        assert_eq!(
            bad.get("tfy-secret/x", None).await.status,
            401,
            "attempt {i}"
        );
    }
    let r = bad.get("tfy-secret/x", None).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    let retry: u64 = r.header("retry-after").parse().expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    // the address is locked out, good key or not, and nothing is evaluated
    assert_eq!(c.get("tfy-secret/x", None).await.status, 429);
    // health checks are not affected
    assert_eq!(send(c.addr, "GET", "/healthz", &[], None).await.status, 200);
    // and the lockout is audited
    let recs = audit_records(&s);
    assert!(
        recs.iter()
            .any(|r| r["status"] == 429 && r["outcome"] == "rate_limited")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_cli_works_while_the_server_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Proc::start(&data, &[("SECRETD_API_KEYS", KEY)]);
    let admin = p.client(KEY);
    admin.put_ok("tfy-secret/cli/x", "v").await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&[
        "token",
        "create",
        "--name",
        "ci",
        "--role",
        "editor",
        "--scope",
        "tfy-secret/cli",
        "--ttl",
        "30d",
    ]);
    assert!(ok, "{err}");
    let t = out.trim().to_owned();
    assert!(
        t.starts_with("sdt_") && !t.contains(' ') && out.lines().count() == 1,
        "stdout is the token alone: {out:?}"
    );
    let c = p.client(&t);
    assert_eq!(c.get("tfy-secret/cli/x", None).await.json()["value"], "v");
    let (ok, out, _) = run(&["token", "list"]);
    assert!(
        ok && out.contains("ci") && out.contains("editor") && !out.contains(&t),
        "{out}"
    );
    let (ok, out, _) = run(&["token", "list", "--json"]);
    assert!(ok && out.contains("\"name\":\"ci\"") && !out.contains(&t));
    let (ok, _, err) = run(&[
        "token",
        "create",
        "--name",
        "ci",
        "--role",
        "viewer",
        "--scope",
        "tfy-secret",
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, out, err) = run(&["token", "revoke", "ci"]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked ci"));
    assert_eq!(
        c.get("tfy-secret/cli/x", None).await.status,
        401,
        "revocation takes effect at once"
    );
    let (ok, out, _) = run(&["audit", "verify"]);
    assert!(ok, "{out}");
    let (ok, out, _) = run(&["audit", "tail"]);
    assert!(
        ok && out.contains("token.create") && out.contains("token.revoke"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_records_stream_as_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let stream = dir.path().join("audit.jsonl");
    let p = Proc::start(
        &data,
        &[
            ("SECRETD_API_KEYS", KEY),
            ("SECRETD_AUDIT_STREAM", &stream.display().to_string()),
        ],
    );
    let c = p.client(KEY);
    let value = "streamed-value-0b7e";
    c.put_ok("tfy-secret/siem/x", value).await;
    assert_eq!(c.get("tfy-secret/siem/x", None).await.status, 200);
    assert_eq!(
        as_token(&c, "bad")
            .get("tfy-secret/siem/x", None)
            .await
            .status,
        401
    );
    let text = std::fs::read_to_string(&stream).expect("stream file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let ops: Vec<(&str, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["operation"].as_str().unwrap_or(""),
                l["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        ops,
        vec![
            ("secret.write", 200),
            ("secret.read", 200),
            ("secret.read", 401)
        ],
        "{text}"
    );
    assert!(!text.contains(value) && !text.contains(KEY));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&stream)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

async fn tokens_never_outlive_or_escape_their_creator(b: Backend) {
    let s = TestServer::start_on(b).await;
    let root = &s.client;
    root.put_ok("tfy-secret/acme/x", "v").await;
    // a short-lived tenant admin cannot mint a longer-lived (or eternal) token
    let parent = as_token(
        root,
        &token(
            root,
            "short-admin",
            "admin",
            &["tfy-secret/acme"],
            Some("2s"),
        )
        .await,
    );
    let child = token(
        &parent,
        "child-forever",
        "viewer",
        &["tfy-secret/acme"],
        None,
    )
    .await;
    let grandchild = token(
        &parent,
        "child-long",
        "viewer",
        &["tfy-secret/acme"],
        Some("30d"),
    )
    .await;
    let list = send(root.addr, "GET", "/v1/tokens", &root.auth(), None)
        .await
        .json();
    let exp = |name: &str| {
        list["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["expires_at"].clone())
            .expect("listed")
    };
    assert!(
        exp("child-forever").is_string(),
        "a child of an expiring token must expire"
    );
    assert_eq!(exp("child-forever"), exp("short-admin"));
    assert_eq!(exp("child-long"), exp("short-admin"));
    // revoking a token revokes what it created
    let mid = as_token(
        root,
        &token(root, "mid-admin", "admin", &["tfy-secret/acme"], None).await,
    );
    let leaf = as_token(
        root,
        &token(&mid, "leaf", "viewer", &["tfy-secret/acme"], None).await,
    );
    assert_eq!(
        leaf.get_uri("/secrets?path=tfy-secret/acme&list=true")
            .await
            .status,
        200
    );
    assert_eq!(
        send(
            root.addr,
            "DELETE",
            "/v1/tokens/mid-admin",
            &root.auth(),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        leaf.get_uri("/secrets?path=tfy-secret/acme&list=true")
            .await
            .status,
        401,
        "cascade"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for t in [&child, &grandchild] {
        assert_eq!(
            as_token(root, t)
                .get_uri("/secrets?path=tfy-secret/acme&list=true")
                .await
                .status,
            401
        );
    }
    // names can never pose as ids, and ids win over names
    let h = [("x-api-key", KEY), ("content-type", "application/json")];
    let body =
        json!({ "name": "tok_0123456789abcdef", "role": "viewer", "scopes": ["tfy-secret/acme"] });
    let r = send(
        root.addr,
        "POST",
        "/v1/tokens",
        &h,
        Some(body.to_string().as_bytes()),
    )
    .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_field"));
    // a tenant admin sees neither another tenant's tokens nor scope-less ones it did not create
    let acme = as_token(
        root,
        &token(root, "acme-admin", "admin", &["tfy-secret/acme"], None).await,
    );
    let other = as_token(
        root,
        &token(root, "other-admin", "admin", &["tfy-secret/other"], None).await,
    );
    let hidden = token(&other, "other-empty", "viewer", &[], None).await;
    let listed = send(acme.addr, "GET", "/v1/tokens", &acme.auth(), None)
        .await
        .json();
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"other-empty") && !names.contains(&"other-admin"),
        "{names:?}"
    );
    assert_eq!(
        send(
            acme.addr,
            "DELETE",
            "/v1/tokens/other-empty",
            &acme.auth(),
            None
        )
        .await
        .status,
        404
    );
    assert_eq!(
        as_token(root, &hidden)
            .get("tfy-secret/acme/x", None)
            .await
            .status,
        403,
        "still alive, still grants nothing"
    );
    // its creator and a global admin do see it
    let by_other = send(other.addr, "GET", "/v1/tokens", &other.auth(), None)
        .await
        .json();
    assert!(
        by_other["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .any(|t| t["name"] == "other-empty")
    );
}

async fn scoped_listing_visits_only_its_groups(b: Backend) {
    let s = TestServer::start_on(b).await;
    let root = &s.client;
    let mut expected = Vec::new();
    let mut tasks = Vec::new();
    for (group, n) in [("a", 7), ("a-b", 5), ("ab", 6), ("b", 4), ("zz", 300)] {
        for i in 0..n {
            let p = format!("tfy-secret/{group}/s{i:03}");
            if group != "zz" && group != "ab" {
                expected.push(p.clone());
            }
            let c = root.clone();
            tasks.push(tokio::spawn(async move { c.put_ok(&p, "v").await }));
        }
    }
    for t in tasks {
        t.await.expect("put");
    }
    expected.sort();
    let viewer = as_token(
        root,
        &token(
            root,
            "multi",
            "viewer",
            &["tfy-secret/b", "tfy-secret/a-b", "tfy-secret/a"],
            None,
        )
        .await,
    );
    for limit in [1, 3, 100] {
        let seen = list_all(&viewer, "tfy-secret", limit).await;
        assert_eq!(seen, expected, "limit {limit}");
    }
    // a prefix inside one scope, and one that only partly overlaps
    let j = viewer
        .get_uri("/secrets?path=tfy-secret/a&list=true")
        .await
        .json();
    assert_eq!(j["secrets"].as_array().map(Vec::len), Some(7));
    assert_eq!(
        viewer
            .get_uri("/secrets?path=tfy-secret/zz&list=true")
            .await
            .status,
        403
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_bad_keys_cannot_exceed_the_limit() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.auth_fail_limit = 5;
        c.auth_fail_window = Duration::from_secs(60);
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = as_token(&s.client, &format!("bad-key-{i}"));
        tasks.push(tokio::spawn(async move {
            c.get("tfy-secret/x", None).await.status
        }));
    }
    let mut unauthorized = 0;
    for t in tasks {
        match t.await.expect("task") {
            401 => unauthorized += 1,
            429 => {}
            other => panic!("status {other}"),
        }
    }
    assert!(
        unauthorized <= 5,
        "{unauthorized} keys were evaluated despite the limit of 5"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_names_an_unreadable_record() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    for i in 0..4 {
        s.client.put_ok(&format!("tfy-secret/u/s{i}"), "v").await;
    }
    s.sql("UPDATE audit_log SET status = 70000 WHERE seq = 3")
        .await;
    let (ok, _, err) = s.cli(&["audit", "verify"]);
    assert!(!ok);
    assert!(err.contains("record 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_rewritten_without_the_master_key_does_not_verify() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    for i in 0..6 {
        s.client
            .put_ok(&format!("tfy-secret/forge/s{i}"), "v")
            .await;
    }
    assert!(s.cli(&["audit", "verify"]).0);
    // The attacker can write the database but lacks the master key: drop
    // record 3, renumber, and re-chain everything after it with a key of its own.
    let db = rusqlite::Connection::open(s.data_dir.join("secretd.db")).expect("open");
    db.busy_timeout(Duration::from_secs(5)).expect("busy");
    db.execute("DELETE FROM audit_log WHERE seq = 3", [])
        .expect("delete");
    db.execute("UPDATE audit_log SET seq = seq - 1 WHERE seq > 3", [])
        .expect("renumber");
    let rows: Vec<(i64, secretd::audit::AuditRecord)> = db
        .prepare(
            "SELECT seq, time, request_id, token_id, token_name, client, operation, path, version, outcome, status
             FROM audit_log WHERE seq >= 3 ORDER BY seq",
        )
        .expect("prepare")
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                secretd::audit::AuditRecord {
                    time_ms: r.get(1)?,
                    request_id: r.get(2)?,
                    token_id: r.get(3)?,
                    token_name: r.get(4)?,
                    client: r.get(5)?,
                    operation: r.get(6)?,
                    path: r.get(7)?,
                    version: r.get(8)?,
                    outcome: r.get(9)?,
                    status: r.get(10)?,
                },
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut prev: Vec<u8> = db
        .query_row("SELECT hash FROM audit_log WHERE seq = 2", [], |r| r.get(0))
        .expect("head");
    let forger = secretd::crypto::AuditKey::random().unwrap();
    for (seq, rec) in rows {
        let hash = secretd::audit::chain_hash(&forger, &prev, seq, &rec).to_vec();
        db.execute(
            "UPDATE audit_log SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev, hash, seq],
        )
        .expect("rewrite");
        prev = hash;
    }
    drop(db);
    let (ok, _, err) = s.cli(&["audit", "verify"]);
    assert!(!ok, "a chain forged without the master key verified");
    assert!(err.contains("record 3"), "{err}");
    // and verification needs the right key: another one is refused up front
    let out = std::process::Command::new(bin())
        .args(["audit", "verify"])
        .args(s.store_args())
        .env(
            "SECRETD_MASTER_KEY",
            "HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=",
        )
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("master key does not open"));
}

async fn scopes_naming_single_secrets_are_listed(b: Backend) {
    let s = TestServer::start_on(b).await;
    let root = &s.client;
    for p in [
        "tfy-secret/a",
        "tfy-secret/a/x",
        "tfy-secret/a-b",
        "tfy-secret/a-b/y",
        "tfy-secret/ab",
        "tfy-secret/ab/z",
        "tfy-secret/acme/db",
        "tfy-secret/acme/other",
    ] {
        root.put_ok(p, "v").await;
    }
    let one = as_token(
        root,
        &token(root, "just-db", "viewer", &["tfy-secret/acme/db"], None).await,
    );
    for prefix in ["tfy-secret", "tfy-secret/acme"] {
        let j = one
            .get_uri(&format!("/secrets?path={prefix}&list=true"))
            .await
            .json();
        let paths: Vec<&str> = j["secrets"]
            .as_array()
            .expect("secrets")
            .iter()
            .filter_map(|i| i["path"].as_str())
            .collect();
        assert_eq!(paths, ["tfy-secret/acme/db"], "{prefix}");
    }
    let multi = as_token(
        root,
        &token(
            root,
            "three",
            "viewer",
            &["tfy-secret/a", "tfy-secret/a-b", "tfy-secret/ab"],
            None,
        )
        .await,
    );
    let want = [
        "tfy-secret/a",
        "tfy-secret/a-b",
        "tfy-secret/a-b/y",
        "tfy-secret/a/x",
        "tfy-secret/ab",
        "tfy-secret/ab/z",
    ];
    for limit in [1, 2, 100] {
        let seen = list_all(&multi, "tfy-secret", limit).await;
        assert_eq!(seen, want, "limit {limit}");
    }
    // the listed prefix itself is not below itself
    let j = multi
        .get_uri("/secrets?path=tfy-secret/a&list=true")
        .await
        .json();
    let paths: Vec<&str> = j["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .filter_map(|i| i["path"].as_str())
        .collect();
    assert_eq!(paths, ["tfy-secret/a/x"]);
}

async fn many_concurrent_valid_tokens_are_never_rate_limited(b: Backend) {
    let s = TestServer::start_with(b, |c| {
        c.auth_fail_limit = 5;
        c.auth_fail_window = Duration::from_secs(60);
    })
    .await;
    s.client.put_ok("tfy-secret/busy/x", "v").await;
    let t = token(&s.client, "busy", "editor", &["tfy-secret/busy"], None).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let c = as_token(&s.client, &t);
        tasks.push(tokio::spawn(async move {
            c.get("tfy-secret/busy/x", None).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), 200);
    }
    // bad managed tokens still count
    for i in 0..5 {
        let r = as_token(&s.client, &format!("sdt_wrong{i}"))
            .get("tfy-secret/busy/x", None)
            .await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        as_token(&s.client, "sdt_wrong")
            .get("tfy-secret/busy/x", None)
            .await
            .status,
        429
    );
}

/// Every path a listing of `prefix` returns, following cursors page by page.
async fn list_all(c: &Client, prefix: &str, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut uri = format!("/secrets?path={prefix}&list=true&limit={limit}");
        if let Some(cur) = &cursor {
            uri.push_str(&format!("&cursor={}", enc(cur)));
        }
        let j = c.get_uri(&uri).await.json();
        for i in j["secrets"].as_array().expect("secrets") {
            seen.push(i["path"].as_str().expect("path").to_owned());
        }
        match j["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return seen,
        }
    }
}

/// Group commit folds concurrent PUTs into one transaction; an editor's PUT
/// to a path with no live version is refused inside it. Fired together,
/// the refused ones get 403 and leave no trace, and the others commit with
/// contiguous versions.
async fn an_editors_refused_puts_do_not_disturb_the_writes_beside_them(b: Backend) {
    let s = TestServer::start_on(b).await;
    for k in 0..4 {
        s.client
            .put_ok(&format!("tfy-secret/gc/p{k}/live"), "v1")
            .await;
    }
    let t = token(&s.client, "gc-editor", "editor", &["tfy-secret/gc"], None).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let c = as_token(&s.client, &t);
        tasks.push(tokio::spawn(async move {
            // Refused and accepted PUTs interleave in path order (the
            // order a batch applies them in).
            let path = if i % 2 == 0 {
                format!("tfy-secret/gc/p{}/live", (i / 2) % 4)
            } else {
                format!("tfy-secret/gc/p{}/a-new{i}", (i / 2) % 4)
            };
            let r = c.put(&path, &format!("value-{i}")).await;
            (i, path, r.status, r.json()["version"].as_u64())
        }));
    }
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    for task in tasks {
        let (i, path, status, version) = task.await.expect("task");
        if i % 2 == 0 {
            assert_eq!(status, 200, "{path}");
            versions.entry(path).or_default().push(version.unwrap_or(0));
        } else {
            assert_eq!(status, 403, "{path}");
            assert_eq!(s.client.get(&path, None).await.status, 404, "{path}");
        }
    }
    for (path, mut v) in versions {
        v.sort_unstable();
        assert_eq!(v, (2..=9).collect::<Vec<u64>>(), "{path}");
    }
}
