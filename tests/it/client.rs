//! `secretd secret ...`: the real binary against a real server, checking
//! stdout byte for byte and exit codes exactly.

use std::io::Write as _;
use std::process::{Command, Stdio};

use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use crate::common::*;

/// One run's outcome.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cmd(url: &str, key: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("secret")
        .args(args)
        .env_remove("SECRETD_CA_FILE")
        .env("SECRETD_URL", url)
        .env("SECRETD_API_KEY", key);
    c
}

/// Runs `secretd secret <args>` with the URL and key from the environment,
/// feeding `stdin`.
fn run_with(url: &str, key: &str, args: &[&str], stdin: &[u8]) -> Out {
    let mut child = cmd(url, key, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("wait");
    Out {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// Like `run_with`, with the test server's URL and key.
fn run(s: &TestServer, args: &[&str], stdin: &[u8]) -> Out {
    run_with(&url(s), KEY, args, stdin)
}

fn url(s: &TestServer) -> String {
    format!("http://{}", s.addr())
}

#[track_caller]
fn ok(o: &Out) -> &str {
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stderr, "", "{o:?}");
    &o.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn put_and_get_from_stdin_and_file_by_path_and_fqn() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let p = "tfy-secret/acme/prod/db-password";

    // stdin, verbatim: the trailing newline is part of the value
    assert_eq!(
        ok(&run(&s, &["put", "acme:prod:db-password"], b"s3cr3t\n")),
        "1\n"
    );
    let r = s.client.get(p, None).await;
    assert_eq!(r.json()["value"], "s3cr3t\n");
    // a file, verbatim, by path
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("value");
    std::fs::write(&f, "line1\nline2 \u{e9}\"\\").expect("write");
    let fs = f.display().to_string();
    assert_eq!(ok(&run(&s, &["put", p, "--file", &fs], b"")), "2\n");
    // --trim-newline drops exactly one
    assert_eq!(
        ok(&run(&s, &["put", p, "--trim-newline"], b"v3\n\n")),
        "3\n"
    );
    assert_eq!(
        ok(&run(&s, &["put", p, "--trim-newline"], b"v4\r\n")),
        "4\n"
    );
    assert_eq!(s.client.get(p, None).await.json()["value"], "v4");

    // get prints the value alone, exactly as stored (stdout is not a TTY)
    assert_eq!(ok(&run(&s, &["get", p], b"")), "v4");
    assert_eq!(ok(&run(&s, &["get", "acme:prod:db-password"], b"")), "v4");
    assert_eq!(
        ok(&run(
            &s,
            &["get", "acme:prod:db-password", "--version", "1"],
            b""
        )),
        "s3cr3t\n"
    );
    assert_eq!(
        ok(&run(&s, &["get", p, "--version", "2"], b"")),
        "line1\nline2 \u{e9}\"\\"
    );
    assert_eq!(ok(&run(&s, &["get", p, "--version", "3"], b"")), "v3\n");

    // --json: the server's reply, one line
    let o = run(&s, &["get", "acme:prod:db-password", "--json"], b"");
    let j: Value = serde_json::from_str(ok(&o)).expect("json");
    assert_eq!(j["path"], p);
    assert_eq!(j["version"], 4);
    assert_eq!(j["value"], "v4");
    assert!(j["created_at"].is_string(), "{j}");
    assert_eq!(o.stdout.lines().count(), 1);
    let o = run(&s, &["put", p, "--json"], b"v5");
    let j: Value = serde_json::from_str(ok(&o)).expect("json");
    assert_eq!(j, json!({ "path": p, "version": 5 }));

    // an empty value is a value
    assert_eq!(ok(&run(&s, &["put", "acme:empty"], b"")), "1\n");
    assert_eq!(ok(&run(&s, &["get", "tfy-secret/acme/empty"], b"")), "");

    // the value is never logged to stderr, and a key given by flag works too
    let o = Command::new(bin())
        .args(["secret", "get", p, "--url", &url(&s), "--api-key", KEY])
        .env_remove("SECRETD_URL")
        .env_remove("SECRETD_API_KEY")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(o.stdout, b"v5");
    assert_eq!(o.stderr, b"");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_and_versions() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let p = "tfy-secret/acme/api";
    for v in ["a", "b", "c"] {
        s.client.put_ok(p, v).await;
    }
    assert_eq!(
        ok(&run(&s, &["delete", "acme:api", "--version", "1"], b"")),
        "deleted tfy-secret/acme/api version 1\n"
    );
    let o = run(&s, &["get", p, "--version", "1"], b"");
    assert_eq!(o.code, 3, "{o:?}");
    assert_eq!(o.stdout, "");
    assert!(
        o.stderr.starts_with("secretd: HTTP 404 not_found: "),
        "{o:?}"
    );
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert_eq!(ok(&run(&s, &["get", p], b"")), "c");

    // versions: the server's metadata, one tab-separated line per version
    let meta = s
        .client
        .get_uri("/secrets?path=tfy-secret/acme/api&metadata=true")
        .await
        .json();
    let vs = meta["versions"].as_array().expect("versions");
    let created = |i: usize| vs[i]["created_at"].as_str().expect("created").to_owned();
    let deleted = vs[0]["deleted_at"].as_str().expect("deleted").to_owned();
    assert_eq!(
        ok(&run(&s, &["versions", "acme:api"], b"")),
        format!(
            "1\t{}\tdeleted {deleted}\n2\t{}\tlive\n3\t{}\tlive\n",
            created(0),
            created(1),
            created(2)
        )
    );
    let o = run(&s, &["versions", p, "--json"], b"");
    let j: Value = serde_json::from_str(ok(&o)).expect("json");
    assert_eq!(j, meta);

    // delete all, then everything about it is not found
    assert_eq!(
        ok(&run(&s, &["delete", p], b"")),
        "deleted tfy-secret/acme/api: 2 version(s)\n"
    );
    for args in [
        &["get", p][..],
        &["get", p, "--version", "3"],
        &["delete", p],
        &["delete", p, "--version", "2"],
        &["get", "acme:never"],
        &["versions", "acme:never"],
    ] {
        let o = run(&s, args, b"");
        assert_eq!(o.code, 3, "{args:?}: {o:?}");
        assert_eq!(o.stdout, "", "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_pages_through_the_whole_listing() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let mut acme: Vec<String> = (0..7).map(|i| format!("tfy-secret/acme/s{i}")).collect();
    acme.push("tfy-secret/acme/deep/x".into());
    for p in &acme {
        s.client.put_ok(p, "v").await;
    }
    s.client.put_ok("tfy-secret/acme-evil/x", "v").await;
    s.client.put_ok("tfy-secret/other/y", "v").await;
    s.client.put_ok("tfy-secret/acme/gone", "v").await;
    s.client.delete("tfy-secret/acme/gone", None).await;
    acme.sort();
    let expected = acme.iter().map(|p| format!("{p}\n")).collect::<String>();

    // 8 secrets in pages of 3 (and 1, and the default): all of them, in order
    for args in [
        &["list", "acme", "--page-size", "3"][..],
        &["list", "tfy-secret/acme", "--page-size", "1"],
        &["list", "tfy-secret/acme/"],
    ] {
        assert_eq!(ok(&run(&s, args, b"")), expected, "{args:?}");
    }
    let all = ok(&run(&s, &["list", "--page-size", "2"], b"")).to_owned();
    assert_eq!(all.lines().count(), 10, "{all}");
    assert!(all.contains("tfy-secret/acme-evil/x\n") && all.contains("tfy-secret/other/y\n"));
    assert_eq!(all, ok(&run(&s, &["list", "tfy-secret"], b"")));

    // --json: one object per line, with the latest version
    let o = run(
        &s,
        &["list", "acme:deep", "--json", "--page-size", "1"],
        b"",
    );
    let lines: Vec<Value> = ok(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["path"], "tfy-secret/acme/deep/x");
    assert_eq!(lines[0]["version"], 1);

    // an empty prefix lists nothing, successfully
    assert_eq!(ok(&run(&s, &["list", "nobody"], b"")), "");
    // page sizes the server refuses are refused up front
    let o = run(&s, &["list", "--page-size", "1001"], b"");
    assert_eq!(o.code, 2, "{o:?}");
}

/// A server answering every /secrets request with this status and error code.
async fn fixed_server(status: StatusCode, code: &'static str) -> std::net::SocketAddr {
    let body = json!({ "error": { "code": code, "message": "canned reply" } }).to_string();
    let app = axum::Router::new().route(
        "/secrets",
        get({
            let body = body.clone();
            move || async move { (status, body) }
        })
        .put(move || async move { (status, body) }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_are_distinct_and_stable() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let u = url(&s);
    s.client.put_ok("tfy-secret/acme/x", "v").await;

    // 4: a wrong key (never printed), and a key without the role
    let wrong = "wrong-key-7f3a9c";
    let o = run_with(&u, wrong, &["get", "acme:x"], b"");
    assert_eq!(o.code, 4, "{o:?}");
    assert_eq!(o.stdout, "");
    assert_eq!(
        o.stderr,
        "secretd: HTTP 401 unauthorized: missing or invalid API key\n"
    );
    let o = run_with(&u, KEY, &["get", "acme:x"], b"");
    assert!(!o.stderr.contains(KEY));
    let created = send(
        s.addr(),
        "POST",
        "/v1/tokens",
        &[("x-api-key", KEY), ("content-type", "application/json")],
        Some(br#"{"name":"viewer","role":"viewer","scopes":["tfy-secret/acme"]}"#),
    )
    .await;
    assert_eq!(created.status, 201);
    let viewer = created.json()["token"].as_str().expect("token").to_owned();
    let o = run_with(&u, &viewer, &["get", "acme:x"], b"");
    assert_eq!(o.code, 4, "{o:?}");
    assert!(
        o.stderr.starts_with("secretd: HTTP 403 forbidden: "),
        "{o:?}"
    );
    // ... which may still list
    assert_eq!(
        ok(&run_with(&u, &viewer, &["list"], b"")),
        "tfy-secret/acme/x\n"
    );

    // 2: usage, before any request
    let down = "http://127.0.0.1:9"; // nothing is contacted for these
    for (args, needle) in [
        (&["get", "other/x"][..], "invalid path or FQN"),
        (&["get", "tfy-secret/acme/../x"], "invalid path or FQN"),
        (&["get", "acme::x"], "invalid path or FQN"),
        (&["get", "tfy-secret"], "root"),
        (&["put", "acme:x", "--file", "/nonexistent/v"], "--file"),
        (
            &["get", "acme:x", "--ca-file", "/nonexistent/ca.pem"],
            "--ca-file",
        ),
        (&["get", "acme:x", "--url", "ftp://x"], "http://"),
        (&["get", "acme:x", "--version", "0"], "--version"),
        (&["list", "x y"], "invalid path or FQN"),
    ] {
        let o = run_with(down, KEY, args, b"");
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert_eq!(o.stdout, "", "{args:?}");
        assert!(o.stderr.contains(needle), "{args:?}: {o:?}");
    }
    let o = Command::new(bin())
        .args(["secret", "get", "acme:x"])
        .env_remove("SECRETD_URL")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2), "no --url");
    // a CA file that is not PEM
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").expect("write");
    let o = run_with(
        "https://127.0.0.1:9",
        KEY,
        &["get", "acme:x", "--ca-file", &ca.display().to_string()],
        b"",
    );
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("holds no PEM certificate"), "{o:?}");

    // 5: nothing listening, a server that never answers, 5xx, 429
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let o = run_with(&format!("http://{closed}"), KEY, &["get", "acme:x"], b"");
    assert_eq!(o.code, 5, "{o:?}");
    assert!(o.stderr.starts_with("secretd: cannot reach "), "{o:?}");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let o = run_with(
        &format!("http://{}", silent.local_addr().expect("addr")),
        KEY,
        &["list", "--timeout", "300ms"],
        b"",
    );
    assert_eq!(o.code, 5, "{o:?}");
    assert!(o.stderr.contains("no answer"), "{o:?}");
    drop(silent);
    for (status, code, exit) in [
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable", 5),
        (StatusCode::INTERNAL_SERVER_ERROR, "internal", 5),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited", 5),
        (StatusCode::CONFLICT, "conflict", 6),
        (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large", 6),
        (StatusCode::BAD_REQUEST, "invalid_field", 6),
        (StatusCode::NOT_FOUND, "route_not_found", 1),
    ] {
        let addr = fixed_server(status, code).await;
        let u = format!("http://{addr}");
        for args in [&["get", "acme:x"][..], &["put", "acme:x"]] {
            let o = run_with(&u, KEY, args, b"value-xyz");
            assert_eq!(o.code, exit, "{status} {args:?}: {o:?}");
            assert_eq!(o.stdout, "");
            assert!(
                o.stderr.starts_with(&format!(
                    "secretd: HTTP {} {code}: canned reply",
                    status.as_u16()
                )),
                "{o:?}"
            );
            assert!(!o.stderr.contains("value-xyz"));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_value_never_appears_in_arguments() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let value = "hunter2-do-not-log";

    // a value given as an argument is refused, without echoing it
    let o = run(&s, &["put", "acme:pw", value], b"ignored");
    assert_eq!(o.code, 2, "{o:?}");
    assert_eq!(o.stdout, "");
    assert!(!o.stderr.contains(value), "{o:?}");
    assert!(o.stderr.contains("stdin"), "{o:?}");
    assert_eq!(s.client.get("tfy-secret/acme/pw", None).await.status, 404);

    // while put waits on stdin, its command line holds no value
    let mut child = cmd(&url(&s), KEY, &["put", "acme:pw"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains(value), "{cmdline}");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(value.as_bytes()).expect("write");
    drop(input);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"1\n");
    assert_eq!(out.stderr, b"");
    assert_eq!(
        s.client.get("tfy-secret/acme/pw", None).await.json()["value"],
        value
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the
/// openssl tool (None if it is missing). Returns (dir, ca.pem, cert, key).
fn test_pki() -> Option<(tempfile::TempDir, std::path::PathBuf, Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write");
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=secretd test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    ];
    for args in steps {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
    }
    let cert = std::fs::read(d.join("srv.pem")).expect("cert");
    let key = std::fs::read(d.join("srv.key")).expect("key");
    let ca = d.join("ca.pem");
    Some((dir, ca, cert, key))
}

/// An https server under a private CA answering every request with one value.
async fn tls_server(cert: &[u8], key: &[u8]) -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_slice(key).expect("key");
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    let body = r#"{"path":"tfy-secret/acme/x","version":1,"value":"over-tls"}"#;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(hyper::body::Bytes::from(body)),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_a_private_ca() {
    let Some((_dir, ca, cert, key)) = test_pki() else {
        eprintln!("skipped: the openssl tool is not available");
        return;
    };
    let addr = tls_server(&cert, &key).await;
    let u = format!("https://{addr}");
    // unknown issuer without --ca-file: the handshake fails, exit 5
    let o = run_with(&u, KEY, &["get", "acme:x"], b"");
    assert_eq!(o.code, 5, "{o:?}");
    assert!(o.stderr.contains("TLS handshake"), "{o:?}");
    // trusted with --ca-file or SECRETD_CA_FILE
    let ca = ca.display().to_string();
    assert_eq!(
        ok(&run_with(
            &u,
            KEY,
            &["get", "acme:x", "--ca-file", &ca],
            b""
        )),
        "over-tls"
    );
    let o = cmd(&u, KEY, &["get", "acme:x"])
        .env("SECRETD_CA_FILE", &ca)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(o.stdout, b"over-tls");
}

#[test]
fn credentials_in_the_url_are_refused_and_never_echoed() {
    let o = run_with(
        "http://admin:url-password-5e1d@127.0.0.1:9/",
        KEY,
        &["get", "acme:x"],
        b"",
    );
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("must not carry credentials"), "{o:?}");
    assert!(!o.stderr.contains("url-password-5e1d"), "{o:?}");
}
