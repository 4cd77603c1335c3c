//! The real binary as a child process: first run, restarts, kill -9,
//! file modes, leaks, tampering and refusals at start-up.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

const MASTER_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const MASTER_B: &str = "HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=";

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn first_run_prints_key_once_and_restarts_keep_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Proc::start(&data, &[]);
    let out = p.wait_stdout("=====\n\n");
    let key = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sd_"))
        .unwrap_or_else(|| panic!("no key in banner: {out}"))
        .to_owned();
    assert!(
        out.contains(&format!("curl -X PUT \"http://{}/secrets\"", p.addr)),
        "{out}"
    );
    assert!(out.contains(&format!(
        "curl \"http://{}/secrets?path=tfy-secret/acme/prod/db-password\"",
        p.addr
    )));
    assert!(out.contains("curl -X DELETE"));
    assert!(!p.stderr().contains(&key), "key in the logs");
    assert!(
        p.stderr().contains("master key"),
        "no warning about the generated master key"
    );
    let c = p.client(&key);
    assert_eq!(c.put_ok("tfy-secret/acme/prod/db-password", "v1").await, 1);
    assert_eq!(c.put_ok("tfy-secret/acme/prod/db-password", "v2").await, 2);
    c.delete(
        "tfy-secret/acme/prod/db-password",
        Some(serde_json::json!(2)),
    )
    .await;
    assert_eq!(p.terminate(), Some(0), "SIGTERM exits 0");

    // the generated key is stored only as a hash
    assert!(dir_contains(&data, key.as_bytes()).is_none());

    let p = Proc::start(&data, &[]);
    assert!(
        !p.stdout().contains("sd_"),
        "banner printed again: {}",
        p.stdout()
    );
    assert!(!p.stderr().contains("generated a new master key"));
    let c = p.client(&key);
    let r = c.get("tfy-secret/acme/prod/db-password", None).await;
    assert_eq!(
        (r.json()["version"].as_u64(), r.json()["value"].as_str()),
        (Some(1), Some("v1"))
    );
    assert_eq!(
        c.get("tfy-secret/acme/prod/db-password", Some("2"))
            .await
            .status,
        404
    );
    // the version counter survived the restart too
    assert_eq!(c.put_ok("tfy-secret/acme/prod/db-password", "v3").await, 3);
    let wrong = p.client("sd_wrong");
    assert_eq!(
        wrong
            .get("tfy-secret/acme/prod/db-password", None)
            .await
            .status,
        401
    );
    assert_eq!(p.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_first_start_does_not_swallow_the_generated_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").to_string();
    let out = Command::new(bin())
        .args(["serve", "--listen", &port, "--data-dir"])
        .arg(&data)
        .env_remove("SECRETD_API_KEYS")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("binding"));
    drop(busy);
    let p = Proc::start(&data, &[]);
    let key = p
        .wait_stdout("=====\n\n")
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sd_"))
        .map(str::to_owned);
    let key = key.unwrap_or_else(|| panic!("no banner after the failed start: {}", p.stdout()));
    assert_eq!(p.client(&key).put_ok("tfy-secret/k", "v").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_ciphertext_leaves_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Proc::start(&data, &[("SECRETD_API_KEYS", KEY)]);
    let c = p.client(KEY);
    for i in 0..3 {
        c.put_ok("tfy-secret/gone/a", &format!("first-{i}")).await;
        c.put_ok("tfy-secret/gone/b", &"y".repeat(10_000)).await;
    }
    let db = rusqlite::Connection::open(data.join("secretd.db")).expect("open");
    let envelopes: Vec<Vec<u8>> = db
        .prepare("SELECT envelope FROM versions v JOIN secrets s ON s.id = v.secret_id WHERE s.path = 'tfy-secret/gone/a' OR (s.path = 'tfy-secret/gone/b' AND v.version = 2)")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    drop(db);
    assert_eq!(envelopes.len(), 4);
    assert_eq!(c.delete("tfy-secret/gone/a", None).await.status, 200);
    assert_eq!(
        c.delete("tfy-secret/gone/b", Some(serde_json::json!(2)))
            .await
            .status,
        200
    );
    for e in &envelopes {
        // the tail of each envelope (ciphertext + tag) is unique to it
        let needle = &e[e.len() - 32..];
        assert_eq!(
            dir_contains(&data, needle),
            None,
            "a deleted envelope is still on disk"
        );
    }
    // what was not deleted still reads
    assert_eq!(c.get("tfy-secret/gone/b", Some("3")).await.status, 200);
    assert_eq!(c.get("tfy-secret/gone/b", Some("2")).await.status, 404);
}

/// A long reader (here: an open read transaction, as a backup holds) keeps
/// the WAL from being truncated after a delete: that is reported, and the
/// truncation is retried after the next write, so the deleted ciphertext
/// does not stay on disk silently.
#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_wal_truncation_is_reported_and_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Proc::start(&data, &[("SECRETD_API_KEYS", KEY)]);
    let c = p.client(KEY);
    c.put_ok("tfy-secret/held/a", "held-value").await;
    let db = rusqlite::Connection::open(data.join("secretd.db")).expect("open");
    let e: Vec<u8> = db
        .query_row(
            "SELECT envelope FROM versions v JOIN secrets s ON s.id = v.secret_id WHERE s.path = 'tfy-secret/held/a'",
            [],
            |r| r.get(0),
        )
        .expect("row");
    let needle = e[e.len() - 32..].to_vec();
    // A reader that holds its snapshot across the delete.
    db.execute_batch("BEGIN; SELECT COUNT(*) FROM versions;")
        .expect("begin");
    let _: i64 = db
        .query_row("SELECT COUNT(*) FROM versions", [], |r| r.get(0))
        .expect("read");
    assert_eq!(c.delete("tfy-secret/held/a", None).await.status, 200);
    let logs = p.wait_stderr("WAL truncation after a delete could not finish");
    assert!(
        logs.contains("WAL truncation after a delete could not finish"),
        "{logs}"
    );
    db.execute_batch("COMMIT;").expect("end the read");
    drop(db);
    // The next write retries the truncation.
    c.put_ok("tfy-secret/held/b", "next").await;
    assert_eq!(
        dir_contains(&data, &needle),
        None,
        "the deleted envelope stayed in the data dir after the retry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_keys_replace_the_generated_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // keys are trimmed: "a, b" works
    let p = Proc::start(&data, &[("SECRETD_API_KEYS", &format!("{KEY}, {KEY2}"))]);
    assert!(
        !p.stdout().contains("sd_"),
        "no banner when keys are configured"
    );
    p.client(KEY2).put_ok("tfy-secret/k", "v").await;
    let logs = p.wait_stderr("key_id=static-2");
    assert!(logs.contains("key_id=static-2"), "{logs}");
    assert!(!p.stderr().contains(KEY2));
    drop(p);
    // --api-key works as well
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        KEY,
        "--data-dir",
    ])
    .arg(&data)
    .env_remove("SECRETD_API_KEYS");
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let p = Proc::spawn(cmd).expect("start");
    assert_eq!(p.client(KEY).get("tfy-secret/k", None).await.status, 200);
    assert_eq!(p.client(KEY2).get("tfy-secret/k", None).await.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_never_reaches_disk_or_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let env = [("SECRETD_API_KEYS", KEY), ("RUST_LOG", "trace")];
    let p = Proc::start(&data, &env);
    let c = p.client(KEY);
    let canary = "canary-7b3f0e51-plaintext";
    for i in 0..5 {
        c.put_ok(&format!("tfy-secret/leak/s{i}"), &format!("{canary}-{i}"))
            .await;
    }
    c.put_ok("tfy-secret/leak/big", &canary.repeat(500)).await;
    for i in 0..5 {
        assert_eq!(
            c.get(&format!("tfy-secret/leak/s{i}"), None).await.json()["value"],
            format!("{canary}-{i}")
        );
    }
    c.delete("tfy-secret/leak/s0", None).await;
    // malformed requests carrying the canary in wrong-typed fields
    c.json(
        "PUT",
        &format!(r#"{{"path":"tfy-secret/leak/x","value":{{"{canary}":1}}}}"#),
    )
    .await;
    c.json("PUT", &format!(r#"{{"path":"{canary}","value":"x"}}"#))
        .await;
    c.get("tfy-secret/leak/x", Some(canary)).await;
    let (out, err) = (Arc::clone(&p.stdout), Arc::clone(&p.stderr));
    assert_eq!(p.terminate(), Some(0));
    std::thread::sleep(Duration::from_millis(200)); // let the pumps drain the pipes
    let stderr = err.lock().expect("lock").clone();
    let stdout = out.lock().expect("lock").clone();
    assert!(
        stderr.contains("request"),
        "no request logs at trace level?"
    );
    for (what, text) in [("stderr", &stderr), ("stdout", &stdout)] {
        assert!(!text.contains(canary), "value in {what}");
        assert!(!text.contains(KEY), "API key in {what}");
    }
    assert_eq!(
        dir_contains(&data, canary.as_bytes()),
        None,
        "plaintext value in the data dir"
    );
    assert_eq!(
        dir_contains(&data, KEY.as_bytes()),
        None,
        "API key in the data dir"
    );
    // the master key is in its file only
    let mk = std::fs::read_to_string(data.join("master.key")).expect("master.key");
    let hits: Vec<_> = files_under(&data)
        .into_iter()
        .filter(|f| {
            std::fs::read(f)
                .map(|b| {
                    b.windows(mk.trim().len())
                        .any(|w| w == mk.trim().as_bytes())
                })
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(hits, vec![data.join("master.key")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn data_dir_is_private_even_under_umask_000() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("nested").join("data");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "umask 000; exec \"{}\" serve --listen 127.0.0.1:0 --data-dir \"{}\"",
            bin(),
            data.display()
        ))
        .env("SECRETD_API_KEYS", KEY)
        .env_remove("SECRETD_MASTER_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let p = Proc::spawn(cmd).expect("start");
    p.client(KEY).put_ok("tfy-secret/perm", "v").await;
    assert_eq!(mode(&data), 0o700);
    let files = files_under(&data);
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn master_key_sources_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Proc::start(
        &data,
        &[("SECRETD_API_KEYS", KEY), ("SECRETD_MASTER_KEY", MASTER_A)],
    );
    p.client(KEY).put_ok("tfy-secret/mk", "v").await;
    drop(p);
    assert!(
        !data.join("master.key").exists(),
        "no key file when SECRETD_MASTER_KEY is given"
    );
    // a different key refuses to start, naming the problem
    let e = Proc::try_start(
        &data,
        &[("SECRETD_API_KEYS", KEY), ("SECRETD_MASTER_KEY", MASTER_B)],
    )
    .err()
    .expect("must refuse");
    assert!(e.contains("master key does not open"), "{e}");
    // no key at all: refuse rather than generate a new one over existing data
    let e = Proc::try_start(&data, &[("SECRETD_API_KEYS", KEY)])
        .err()
        .expect("must refuse");
    assert!(e.contains("already holds encrypted data"), "{e}");
    assert!(!data.join("master.key").exists());
    // malformed keys
    let e = Proc::try_start(
        &data,
        &[
            ("SECRETD_API_KEYS", KEY),
            ("SECRETD_MASTER_KEY", "c2hvcnQ="),
        ],
    )
    .err()
    .expect("must refuse");
    assert!(e.contains("32-byte base64"), "{e}");
    // the same key from a file works
    let kf = dir.path().join("mk.b64");
    std::fs::write(&kf, format!("{MASTER_A}\n")).expect("write");
    let kfs = kf.display().to_string();
    let p = Proc::start(
        &data,
        &[("SECRETD_API_KEYS", KEY), ("SECRETD_MASTER_KEY_FILE", &kfs)],
    );
    assert_eq!(
        p.client(KEY).get("tfy-secret/mk", None).await.json()["value"],
        "v"
    );
    drop(p);
    let missing = dir.path().join("nope").display().to_string();
    let e = Proc::try_start(
        &data,
        &[
            ("SECRETD_API_KEYS", KEY),
            ("SECRETD_MASTER_KEY_FILE", &missing),
        ],
    )
    .err()
    .expect("must refuse");
    assert!(e.contains("reading"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    drop(Proc::start(&data, &[("SECRETD_API_KEYS", KEY)]));
    let db = rusqlite::Connection::open(data.join("secretd.db")).expect("open");
    db.pragma_update(None, "user_version", 99).expect("pragma");
    drop(db);
    let e = Proc::try_start(&data, &[("SECRETD_API_KEYS", KEY)])
        .err()
        .expect("must refuse");
    assert!(e.contains("schema version 99 is newer"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_rows_are_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let env = [("SECRETD_API_KEYS", KEY)];
    let p = Proc::start(&data, &env);
    let c = p.client(KEY);
    c.put_ok("tfy-secret/tamper/a", "value-a").await;
    c.put_ok("tfy-secret/tamper/b", "value-b").await;
    c.put_ok("tfy-secret/tamper/v", "v1").await;
    c.put_ok("tfy-secret/tamper/v", "v2").await;
    c.put_ok("tfy-secret/tamper/flip", "flip").await;
    c.put_ok("tfy-secret/tamper/untouched", "fine").await;
    assert_eq!(p.terminate(), Some(0));

    let db = rusqlite::Connection::open(data.join("secretd.db")).expect("open");
    let env_of = |path: &str, v: i64| -> Vec<u8> {
        db.query_row(
            "SELECT v.envelope FROM versions v JOIN secrets s ON s.id = v.secret_id WHERE s.path = ?1 AND v.version = ?2",
            rusqlite::params![path, v],
            |r| r.get(0),
        )
        .expect("row")
    };
    let set = |path: &str, v: i64, e: &[u8]| {
        db.execute(
            "UPDATE versions SET envelope = ?3 WHERE version = ?2 AND secret_id = (SELECT id FROM secrets WHERE path = ?1)",
            rusqlite::params![path, v, e],
        )
        .expect("update");
    };
    // swap between paths, copy between versions, flip a bit
    let (a, b) = (
        env_of("tfy-secret/tamper/a", 1),
        env_of("tfy-secret/tamper/b", 1),
    );
    set("tfy-secret/tamper/a", 1, &b);
    set("tfy-secret/tamper/b", 1, &a);
    let v1 = env_of("tfy-secret/tamper/v", 1);
    set("tfy-secret/tamper/v", 2, &v1);
    let mut f = env_of("tfy-secret/tamper/flip", 1);
    let last = f.len() - 1;
    f[last] ^= 0x01;
    set("tfy-secret/tamper/flip", 1, &f);
    drop(db);

    let p = Proc::start(&data, &env);
    let c = p.client(KEY);
    for (path, v) in [
        ("tfy-secret/tamper/a", None),
        ("tfy-secret/tamper/b", None),
        ("tfy-secret/tamper/v", Some("2")),
        ("tfy-secret/tamper/flip", None),
    ] {
        let r = c.get(path, v).await;
        assert_eq!(r.status, 500, "{path}");
        assert_eq!(r.error_code(), "corrupt", "{path}");
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(!body.contains("value-"), "{body}");
    }
    assert_eq!(
        c.get("tfy-secret/tamper/v", Some("1")).await.json()["value"],
        "v1"
    );
    assert_eq!(
        c.get("tfy-secret/tamper/untouched", None).await.json()["value"],
        "fine"
    );
    let logs = p.wait_stderr("path=tfy-secret/tamper/v version=2");
    assert!(
        logs.lines().any(|l| l.contains("integrity")
            && l.contains("path=tfy-secret/tamper/v")
            && l.contains("version=2")),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let env = [("SECRETD_API_KEYS", KEY)];
    let p = Proc::start(&data, &env);
    let body = br#"{"path":"tfy-secret/drain/x","value":"in-flight"}"#;
    let head = format!(
        "PUT /secrets HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut s = std::net::TcpStream::connect(p.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(&body[..10]).expect("write");
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&body[10..]).expect("write the rest");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""version":1"#), "{text}");
    assert_eq!(p.wait_exit(), Some(0));
    let p = Proc::start(&data, &env);
    assert_eq!(
        p.client(KEY).get("tfy-secret/drain/x", None).await.json()["value"],
        "in-flight"
    );
}

#[test]
fn cli_path_and_help() {
    let out = Command::new(bin())
        .args(["path", "acme:prod:db-password"])
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tfy-secret/acme/prod/db-password\n"
    );
    let out = Command::new(bin())
        .args(["path", "/tfy-secret/acme/x"])
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tfy-secret/acme/x\n");
    let out = Command::new(bin())
        .args(["path", "acme::x"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty segment"));
    let out = Command::new(bin()).arg("--version").output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("secretd "));
    for sub in [&["--help"][..], &["serve", "--help"], &["path", "--help"]] {
        let out = Command::new(bin())
            .args(sub)
            .env("SECRETD_API_KEYS", "hidden-secret-key")
            .output()
            .expect("run");
        assert!(out.status.success(), "{sub:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{sub:?}");
        assert!(!text.contains("hidden-secret-key"), "help shows a key");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_wait_their_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Proc::start(
        &data,
        &[("SECRETD_API_KEYS", KEY), ("SECRETD_MAX_CONNECTIONS", "4")],
    );
    // four idle keep-alive connections take every slot
    let mut held = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let req = hyper::Request::get("/healthz")
            .header("host", "x")
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .expect("req");
        assert_eq!(sender.send_request(req).await.expect("send").status(), 200);
        held.push(sender);
    }
    // a fifth is not served while they are open...
    let fifth = tokio::spawn(send(p.addr, "GET", "/healthz", &[], None));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !fifth.is_finished(),
        "a fifth connection was served past the cap"
    );
    // ...and is as soon as one closes
    drop(held.pop());
    let r = tokio::time::timeout(Duration::from_secs(5), fifth)
        .await
        .expect("served after a slot freed")
        .expect("task");
    assert_eq!(r.status, 200);
}

/// Parses `name{labels} value` lines of a Prometheus exposition.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_without_paths_or_values() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let c = &s.client;
    let value = "metrics-canary-value-9d0c";
    c.put_ok("tfy-secret/metrics-canary-path/x", value).await;
    c.put_ok("tfy-secret/metrics-canary-path/y", value).await;
    for _ in 0..3 {
        assert_eq!(
            c.get("tfy-secret/metrics-canary-path/x", None).await.status,
            200
        );
    }
    assert_eq!(
        as_client(c, "wrong").get("tfy-secret/x", None).await.status,
        401
    );
    let r = send(s.addr(), "GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("text/plain"));
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(
        metric(
            &text,
            "secretd_http_requests_total{route=\"/secrets\",method=\"GET\",status=\"200\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "secretd_http_requests_total{route=\"/secrets\",method=\"PUT\",status=\"200\"}"
        ),
        Some(2.0)
    );
    assert_eq!(metric(&text, "secretd_auth_failures_total"), Some(1.0));
    assert_eq!(metric(&text, "secretd_secrets "), Some(2.0));
    assert_eq!(metric(&text, "secretd_secret_versions "), Some(2.0));
    assert_eq!(metric(&text, "secretd_store_up "), Some(1.0));
    assert!(
        metric(
            &text,
            "secretd_http_request_duration_seconds_count{route=\"/secrets\"}"
        )
        .is_some_and(|n| n >= 6.0)
    );
    // Store operation latency, by operation: the three reads and two writes.
    for (op, at_least) in [("get", 3.0), ("put", 2.0), ("append_audit", 1.0)] {
        let count = metric(
            &text,
            &format!("secretd_store_operation_duration_seconds_count{{operation=\"{op}\"}}"),
        );
        assert!(
            count.is_some_and(|n| n >= at_least),
            "{op}: {count:?}\n{text}"
        );
    }
    assert!(text.contains("secretd_build_info{version="));
    assert!(!text.contains("canary"), "a path or value reached /metrics");
}

/// Every response, API or not, matched or not, passes the request log
/// exactly once: an `X-Request-Id` of its own, `Cache-Control: no-store`,
/// and one count in the metrics under its route (two would mean two
/// layers logged it, none that it escaped the log).
#[tokio::test(flavor = "multi_thread")]
async fn every_response_is_logged_exactly_once() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let key = s.client.key.clone();
    let auth: &[(&str, &str)] = &[("x-api-key", key.as_str())];
    // method, URI, headers, status, the metrics' route label
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16, &'a str);
    let cases: [Case<'_>; 8] = [
        ("GET", "/secrets?path=tfy-secret", auth, 200, "/secrets"),
        ("GET", "/secrets?path=tfy-secret", &[], 401, "/secrets"),
        ("POST", "/secrets", auth, 405, "/secrets"),
        ("GET", "/v1/tokens", auth, 200, "/v1/tokens"),
        ("GET", "/no/such/route", auth, 404, "<unmatched>"),
        ("GET", "/healthz", &[], 200, "/healthz"),
        ("GET", "/readyz", &[], 200, "/readyz"),
        ("GET", "/openapi.json", &[], 200, "/openapi.json"),
    ];
    let mut ids = std::collections::HashSet::new();
    for (method, uri, headers, status, _) in &cases {
        let r = send(s.addr(), method, uri, headers, None).await;
        assert_eq!(r.status, *status, "{method} {uri}");
        assert_eq!(r.header("cache-control"), "no-store", "{method} {uri}");
        let id = r.header("x-request-id").to_owned();
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{method} {uri}: {id:?}"
        );
        assert!(ids.insert(id), "{method} {uri}: a repeated request id");
    }
    let r = send(s.addr(), "GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    for (method, uri, _, status, route) in &cases {
        let series = format!(
            "secretd_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
        );
        assert_eq!(metric(&text, &series), Some(1.0), "{method} {uri}\n{text}");
    }
}

fn as_client(c: &Client, key: &str) -> Client {
    Client {
        addr: c.addr,
        key: key.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_move_off_the_public_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Proc::start(
        &data,
        &[
            ("SECRETD_API_KEYS", KEY),
            ("SECRETD_METRICS_LISTEN", "127.0.0.1:0"),
        ],
    );
    let logs = p.wait_stderr("metrics_listen=");
    let maddr: std::net::SocketAddr = logs
        .split("metrics_listen=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address: {logs}"));
    assert_ne!(maddr, p.addr);
    assert_eq!(
        send(p.addr, "GET", "/metrics", &[], None).await.status,
        404,
        "still on the public listener"
    );
    let r = send(maddr, "GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("secretd_store_up 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_and_rekey_keep_every_version_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let env = [("SECRETD_API_KEYS", KEY), ("SECRETD_MASTER_KEY", MASTER_A)];
    let cli = |args: &[&str], key: &str| {
        let out = Command::new(bin())
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .env("SECRETD_MASTER_KEY", key)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let generation_of = |path: &str, v: i64| -> u32 {
        let db = rusqlite::Connection::open(data.join("secretd.db")).expect("open");
        let e: Vec<u8> = db
            .query_row(
                "SELECT v.envelope FROM versions v JOIN secrets s ON s.id = v.secret_id WHERE s.path = ?1 AND v.version = ?2",
                rusqlite::params![path, v],
                |r| r.get(0),
            )
            .expect("row");
        u32::from_be_bytes([e[1], e[2], e[3], e[4]])
    };
    let p = Proc::start(&data, &env);
    let c = p.client(KEY);
    for i in 1..=3 {
        c.put_ok("tfy-secret/keys/x", &format!("before-{i}")).await;
    }
    assert_eq!(generation_of("tfy-secret/keys/x", 3), 1);
    // rotate while the server runs: its next write uses the new generation
    let (ok, out, err) = cli(&["key", "rotate"], MASTER_A);
    assert!(ok, "{err}");
    assert!(out.contains("generation 2"), "{out}");
    assert_eq!(c.put_ok("tfy-secret/keys/x", "after").await, 4);
    assert_eq!(
        generation_of("tfy-secret/keys/x", 4),
        2,
        "the running server kept sealing with generation 1"
    );
    for (v, want) in [
        (1, "before-1"),
        (2, "before-2"),
        (3, "before-3"),
        (4, "after"),
    ] {
        assert_eq!(
            c.get("tfy-secret/keys/x", Some(&v.to_string()))
                .await
                .json()["value"],
            want
        );
    }
    let (ok, out, _) = cli(&["key", "status"], MASTER_A);
    assert!(ok);
    assert!(
        out.contains("generation 1\tcreated") && out.contains("seals 3 live"),
        "{out}"
    );
    assert!(
        out.contains("generation 2 (active)") && out.contains("seals 1 live"),
        "{out}"
    );
    drop(p);
    // rekey: the new master key opens everything, the old one nothing
    let new_key = dir.path().join("new.key");
    std::fs::write(&new_key, format!("{MASTER_B}\n")).expect("write");
    let (ok, out, err) = cli(
        &[
            "key",
            "rekey",
            "--new-master-key-file",
            &new_key.display().to_string(),
        ],
        MASTER_A,
    );
    assert!(ok, "{err}");
    assert!(out.contains("re-wrapped 2 data key(s)"), "{out}");
    let e = Proc::try_start(&data, &env)
        .err()
        .expect("the old master key must be refused");
    assert!(e.contains("master key does not open"), "{e}");
    let p = Proc::start(
        &data,
        &[("SECRETD_API_KEYS", KEY), ("SECRETD_MASTER_KEY", MASTER_B)],
    );
    for (v, want) in [(1, "before-1"), (4, "after")] {
        assert_eq!(
            p.client(KEY)
                .get("tfy-secret/keys/x", Some(&v.to_string()))
                .await
                .json()["value"],
            want
        );
    }
    drop(p);
    let (ok, out, err) = cli(&["audit", "verify"], MASTER_B);
    assert!(ok, "audit chain after rekey: {out}{err}");
}
