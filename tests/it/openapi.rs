//! `GET /openapi.json` against the real router: every documented operation
//! is served, every served route is documented, other methods answer 405,
//! every error code is in the schema, and real answers match the documented
//! schemas.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use secretd::error::{Error, ErrorCode};
use secretd::path::{PathError, VersionError};
use serde_json::{Value, json};

use crate::common::*;

/// Every route the router serves, with its methods: kept here by hand so a
/// route added, removed or changed on either side (router or document) fails
/// `document_and_router_agree`.
const ROUTES: &[(&str, &[&str])] = &[
    ("/secrets", &["GET", "PUT", "DELETE"]),
    ("/v1/tokens", &["GET", "POST"]),
    ("/v1/tokens/{id}", &["DELETE"]),
    ("/healthz", &["GET"]),
    ("/readyz", &["GET"]),
    ("/metrics", &["GET"]),
    ("/openapi.json", &["GET"]),
];

/// Methods an HTTP client can send; `HEAD` is answered like `GET`.
const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE"];

/// Public routes (no `security` in the document).
const PUBLIC: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

async fn fetch_doc(s: &TestServer) -> Value {
    let r = send(s.addr(), "GET", "/openapi.json", &[], None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), "application/json");
    r.json()
}

/// (path, METHOD) pairs of the document.
fn operations(doc: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let mut ms = Vec::new();
        for m in METHODS.iter().chain(&["HEAD"]) {
            if item.get(m.to_ascii_lowercase()).is_some() {
                ms.push((*m).to_owned());
            }
        }
        out.insert(path.clone(), ms);
    }
    out
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "no-such-token")
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

#[tokio::test(flavor = "multi_thread")]
async fn document_and_router_agree() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let a = s.addr();
    let key = [("x-api-key", KEY)];
    let doc = fetch_doc(&s).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    // The document lists exactly the routes the router serves.
    let ops = operations(&doc);
    let expected: BTreeMap<String, Vec<String>> = ROUTES
        .iter()
        .map(|(p, ms)| {
            (
                (*p).to_owned(),
                ms.iter().map(|m| (*m).to_owned()).collect(),
            )
        })
        .collect();
    assert_eq!(ops, expected, "document and route list differ");

    for (path, methods) in &ops {
        let uri = concrete(path);
        let public = PUBLIC.contains(&path.as_str());
        for m in methods {
            let op = operation(&doc, m, path);
            // Protected operations name the credential schemes; public
            // ones name none.
            let security = op.get("security").and_then(Value::as_array);
            assert_eq!(
                security.is_none_or(Vec::is_empty),
                public,
                "{m} {path}: security {security:?}"
            );
            // Without a credential: 401 from the auth layer, or 200 if public.
            let r = send(a, m, &uri, &[], None).await;
            let want = if public { 200 } else { 401 };
            assert_eq!(r.status, want, "{m} {path} without a key");
            assert_documented(&doc, m, path, &r);
            // With one: whatever the handler says, never the router's 404/405.
            let r = send(a, m, &uri, &key, None).await;
            assert!(r.status != 405, "{m} {path}: 405");
            if r.status == 404 {
                assert_ne!(r.error_code(), "route_not_found", "{m} {path}");
            }
            assert_documented(&doc, m, path, &r);
        }
        // Every other method: 405 naming the documented ones (after auth on
        // protected routes).
        let allow = methods.join(", ");
        for m in METHODS.iter().filter(|m| !methods.iter().any(|d| d == *m)) {
            let r = send(a, m, &uri, &key, None).await;
            assert_eq!(r.status, 405, "{m} {path}");
            assert_eq!(r.error_code(), "method_not_allowed");
            assert_eq!(r.header("allow"), allow, "{m} {path}");
            if !public {
                let r = send(a, m, &uri, &[], None).await;
                assert_eq!(r.status, 401, "{m} {path} without a key");
            }
        }
        if methods.iter().any(|m| m == "GET") {
            let r = send(a, "HEAD", &uri, &key, None).await;
            assert!(r.status != 405 && r.status != 404, "HEAD {path}");
        }
    }

    // Paths the document does not list are not routes.
    for uri in [
        "/",
        "/secrets/x",
        "/v1/tokens/a/b",
        "/v1",
        "/openapi.yaml",
        "/healthz/",
    ] {
        let r = send(a, "GET", uri, &key, None).await;
        assert_eq!(r.status, 404, "{uri}");
        assert_eq!(r.error_code(), "route_not_found", "{uri}");
    }
    assert_refs_resolve(&doc, &doc);
}

/// With `--metrics-listen`, `/metrics` leaves the main router and its
/// document together.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_elsewhere_leaves_the_document() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.metrics_listen = Some("127.0.0.1:0".into());
    })
    .await;
    let doc = fetch_doc(&s).await;
    assert!(doc["paths"].get("/metrics").is_none(), "{}", doc["paths"]);
    let r = send(s.addr(), "GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 404);
    assert_eq!(operations(&doc).len(), ROUTES.len() - 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn security_schemes_and_error_schema() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let doc = fetch_doc(&s).await;
    if let Ok(p) = std::env::var("SECRETD_DUMP_OPENAPI") {
        std::fs::write(p, serde_json::to_string_pretty(&doc).expect("json")).expect("write");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(
        schemes["api_key"],
        json!({"type": "apiKey", "in": "header", "name": "X-API-Key"})
    );
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["basic"]["scheme"], "basic");

    // Every code the Error type can produce is in the schema's enum, and
    // the enum holds nothing else.
    let listed: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum")
        .iter()
        .map(|v| v.as_str().expect("string").to_owned())
        .collect();
    let mut produced = BTreeSet::new();
    for e in every_error() {
        let code = e.code();
        // The wire form (as_str) and the schema form (serde) agree.
        assert_eq!(serde_json::to_value(code).expect("ser"), code.as_str());
        assert!(
            listed.contains(code.as_str()),
            "{} not in the schema",
            code.as_str()
        );
        produced.insert(code.as_str().to_owned());
    }
    assert_eq!(produced, listed, "codes listed but never produced");
    for c in &listed {
        serde_json::from_value::<ErrorCode>(json!(c)).expect("a listed code is an ErrorCode");
    }

    // The Error schema is the body of every error answer.
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["error"]));
    let detail = resolve(&doc, &error["properties"]["error"]);
    assert_eq!(
        detail["properties"]["code"]["$ref"],
        "#/components/schemas/ErrorCode"
    );
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (m, op) in item.as_object().expect("item") {
            for (status, resp) in op["responses"].as_object().expect("responses") {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        resp["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{m} {path} {status}"
                    );
                }
            }
        }
    }
    // The statuses each protected operation can answer.
    for (m, path, statuses) in [
        (
            "get",
            "/secrets",
            &[200, 400, 401, 403, 404, 429, 500, 503][..],
        ),
        (
            "put",
            "/secrets",
            &[200, 400, 401, 403, 408, 413, 415, 429, 500, 503],
        ),
        (
            "delete",
            "/secrets",
            &[200, 400, 401, 403, 408, 413, 415, 429, 500, 503],
        ),
        (
            "post",
            "/v1/tokens",
            &[201, 400, 401, 403, 408, 409, 413, 415, 429, 500, 503],
        ),
        ("get", "/v1/tokens", &[200, 401, 403, 429, 500, 503]),
        (
            "delete",
            "/v1/tokens/{id}",
            &[200, 401, 403, 404, 429, 500, 503],
        ),
        ("get", "/readyz", &[200, 500, 503]),
    ] {
        let got: Vec<u16> = operation(&doc, m, path)["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .map(|k| k.parse().expect("numeric status"))
            .collect();
        assert_eq!(got, statuses, "{m} {path}");
    }
}

/// One `Error` of each variant, and `BadRequest`/`TooLarge` with each code.
fn every_error() -> Vec<Error> {
    use ErrorCode::*;
    let codes = [
        InvalidPath,
        InvalidVersion,
        InvalidQuery,
        MissingParameter,
        InvalidCursor,
        InvalidJson,
        InvalidBody,
        MissingField,
        InvalidField,
        NotFound,
        Unauthorized,
        Forbidden,
        RateLimited,
        Conflict,
        BodyTooLarge,
        ValueTooLarge,
        UnsupportedMediaType,
        MethodNotAllowed,
        RouteNotFound,
        Corrupt,
        Unavailable,
        RequestTimeout,
        Timeout,
        Internal,
    ];
    // Fails to compile when a code is added: add it to `codes` too.
    for c in codes {
        match c {
            InvalidPath | InvalidVersion | InvalidQuery | MissingParameter | InvalidCursor
            | InvalidJson | InvalidBody | MissingField | InvalidField | NotFound | Unauthorized
            | Forbidden | RateLimited | Conflict | BodyTooLarge | ValueTooLarge
            | UnsupportedMediaType | MethodNotAllowed | RouteNotFound | Corrupt | Unavailable
            | RequestTimeout | Timeout | Internal => {}
        }
    }
    let mut all = vec![
        Error::InvalidPath(PathError::Empty),
        Error::InvalidVersion(VersionError::NotPositive),
        Error::NotFound("x".into()),
        Error::NothingToDelete("x".into()),
        Error::Unauthorized,
        Error::Forbidden("x".into()),
        Error::RateLimited {
            retry_after_secs: 1,
        },
        Error::Conflict("x".into()),
        Error::UnsupportedMediaType,
        Error::MethodNotAllowed,
        Error::RouteNotFound,
        Error::Corrupt {
            path: None,
            version: None,
            detail: "x".into(),
        },
        Error::Unavailable("x".into()),
        Error::BodyTimeout,
        Error::Timeout,
        Error::Internal("x".into()),
    ];
    for code in codes {
        all.push(Error::bad_request(code, "x"));
        all.push(Error::TooLarge {
            code,
            message: "x".into(),
        });
    }
    // Fails to compile when an Error variant is added: add it above.
    for e in &all {
        match e {
            Error::InvalidPath(_)
            | Error::InvalidVersion(_)
            | Error::BadRequest { .. }
            | Error::NotFound(_)
            | Error::NothingToDelete(_)
            | Error::Unauthorized
            | Error::Forbidden(_)
            | Error::RateLimited { .. }
            | Error::Conflict(_)
            | Error::TooLarge { .. }
            | Error::UnsupportedMediaType
            | Error::MethodNotAllowed
            | Error::RouteNotFound
            | Error::Corrupt { .. }
            | Error::Unavailable(_)
            | Error::BodyTimeout
            | Error::Timeout
            | Error::Internal(_) => {}
        }
    }
    all
}

/// Real answers of every operation, checked against their documented
/// status and schema.
/// A PUT whose Content-Length is over the limit, with no body sent: the
/// server answers 413 from the header and closes. (Sending the 2 MiB for
/// real races that close: the client's write fails with a broken pipe.)
fn oversized_put(a: std::net::SocketAddr) -> Resp {
    let head = format!(
        "PUT /secrets HTTP/1.1\r\nhost: {a}\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    let mut s = std::net::TcpStream::connect(a).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("write head");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8(out).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let mut headers = hyper::HeaderMap::new();
    for l in lines {
        let (k, v) = l.split_once(':').expect("header line");
        headers.insert(
            hyper::header::HeaderName::from_bytes(k.trim().as_bytes()).expect("name"),
            v.trim().parse().expect("value"),
        );
    }
    Resp {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_match_the_documented_schemas() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let a = s.addr();
    let doc = fetch_doc(&s).await;
    let c = &s.client;
    let key = [("x-api-key", KEY)];
    let json_key = [("x-api-key", KEY), ("content-type", "application/json")];
    let p = "tfy-secret/acme/db";

    let mut seen = Vec::new();
    let mut check = |m: &str, path: &str, r: Resp| {
        assert_documented(&doc, m, path, &r);
        seen.push((m.to_owned(), path.to_owned(), r.status));
        r
    };
    check("PUT", "/secrets", c.put(p, "one").await);
    check("PUT", "/secrets", c.put(p, "two").await);
    check("GET", "/secrets", c.get(p, None).await);
    check("GET", "/secrets", c.get(p, Some("1")).await);
    check("GET", "/secrets", c.get("tfy-secret", None).await);
    let r = check(
        "GET",
        "/secrets",
        c.get_uri("/secrets?path=tfy-secret&list=true&limit=10")
            .await,
    );
    assert!(r.json()["next_cursor"].is_null());
    check(
        "GET",
        "/secrets",
        c.get_uri(&format!("/secrets?path={}&metadata=true", enc(p)))
            .await,
    );
    check(
        "GET",
        "/secrets",
        c.get_uri("/secrets?path=tfy-secret&list=maybe").await,
    );
    check("GET", "/secrets", c.get("tfy-secret/nope", None).await);
    check("DELETE", "/secrets", c.delete(p, Some(json!(1))).await);
    check("DELETE", "/secrets", c.delete(p, Some(json!(1))).await);
    check("DELETE", "/secrets", c.delete(p, None).await);
    check(
        "GET",
        "/secrets",
        c.get_uri(&format!("/secrets?path={}&metadata=true", enc(p)))
            .await,
    );
    check(
        "PUT",
        "/secrets",
        send(
            a,
            "PUT",
            "/secrets",
            &[("x-api-key", KEY), ("content-type", "text/plain")],
            Some(b"x"),
        )
        .await,
    );
    check("PUT", "/secrets", oversized_put(a));

    let body = br#"{"name":"ci","role":"viewer","scopes":["tfy-secret/acme"],"ttl":"1d"}"#;
    let r = check(
        "POST",
        "/v1/tokens",
        send(a, "POST", "/v1/tokens", &json_key, Some(body)).await,
    );
    let token = r.json()["token"].as_str().expect("token").to_owned();
    check(
        "POST",
        "/v1/tokens",
        send(a, "POST", "/v1/tokens", &json_key, Some(body)).await,
    );
    check(
        "POST",
        "/v1/tokens",
        send(a, "POST", "/v1/tokens", &json_key, Some(b"{}")).await,
    );
    check(
        "GET",
        "/v1/tokens",
        send(a, "GET", "/v1/tokens", &key, None).await,
    );
    let viewer = [("authorization", format!("Bearer {token}"))];
    let viewer = [(viewer[0].0, viewer[0].1.as_str())];
    check(
        "GET",
        "/secrets",
        send(a, "GET", "/secrets?path=tfy-secret/acme/x", &viewer, None).await,
    );
    check(
        "GET",
        "/v1/tokens",
        send(a, "GET", "/v1/tokens", &viewer, None).await,
    );
    check(
        "DELETE",
        "/v1/tokens/{id}",
        send(a, "DELETE", "/v1/tokens/ci", &key, None).await,
    );
    check(
        "DELETE",
        "/v1/tokens/{id}",
        send(a, "DELETE", "/v1/tokens/ci", &key, None).await,
    );
    check(
        "GET",
        "/secrets",
        send(a, "GET", "/secrets?path=tfy-secret", &viewer, None).await,
    );
    check(
        "GET",
        "/healthz",
        send(a, "GET", "/healthz", &[], None).await,
    );
    check("GET", "/readyz", send(a, "GET", "/readyz", &[], None).await);
    let r = check(
        "GET",
        "/metrics",
        send(a, "GET", "/metrics", &[], None).await,
    );
    assert!(r.header("content-type").starts_with("text/plain"));

    let statuses: BTreeSet<u16> = seen.iter().map(|(_, _, s)| *s).collect();
    assert_eq!(
        statuses,
        BTreeSet::from([200, 201, 400, 401, 403, 404, 409, 413, 415]),
        "{seen:?}"
    );
}

/// `r` is an answer the document lists for `method path`, and a JSON body
/// matches the documented schema.
fn assert_documented(doc: &Value, method: &str, path: &str, r: &Resp) {
    let op = operation(doc, method, path);
    let status = r.status.to_string();
    let resp = &op["responses"][&status];
    assert!(
        resp.is_object(),
        "{method} {path}: status {status} is not documented: {}",
        String::from_utf8_lossy(&r.body)
    );
    let ct = r.header("content-type");
    let content = resp["content"].as_object().expect("content");
    let media = ct.split(';').next().unwrap_or("");
    let Some(m) = content.get(media) else {
        panic!("{method} {path} {status}: content-type {ct} not documented");
    };
    if media == "application/json" {
        let body = r.json();
        if let Err(e) = validate(doc, &m["schema"], &body) {
            panic!("{method} {path} {status}: {e}\n{body}");
        }
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").expect("local ref");
            let s = &doc["components"]["schemas"][name];
            assert!(s.is_object(), "dangling {r}");
            resolve(doc, s)
        }
        None => schema,
    }
}

/// A small JSON Schema check: `$ref`, `allOf`, `oneOf`, `type` (also as a
/// list, for nullable), `enum`, `required`, `properties`, `items`.
fn validate(doc: &Value, schema: &Value, v: &Value) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(doc, s, v)?;
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let ok = one.iter().filter(|s| validate(doc, s, v).is_ok()).count();
        if ok != 1 {
            return Err(format!("matches {ok} of oneOf, not exactly one: {v}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return Err(format!("{v} not in {e:?}"));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "null" => v.is_null(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => false,
        });
        if !ok {
            return Err(format!("{v} is not {types:?}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap_or("");
            if !obj.contains_key(r) {
                return Err(format!("required `{r}` missing"));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, val) in obj {
                if let Some(ps) = props.get(k) {
                    validate(doc, ps, val).map_err(|e| format!("{k}: {e}"))?;
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(doc, items, x).map_err(|e| format!("[{i}]: {e}"))?;
        }
    }
    Ok(())
}

fn assert_refs_resolve(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                let name = r.strip_prefix("#/components/schemas/").expect("local ref");
                assert!(
                    doc["components"]["schemas"][name].is_object(),
                    "dangling {r}"
                );
            }
            m.values().for_each(|x| assert_refs_resolve(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| assert_refs_resolve(doc, x)),
        _ => {}
    }
}
