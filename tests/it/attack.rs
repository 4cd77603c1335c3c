//! Reliability goals 3, 4 and 7 of the fault-and-adversary suite: tampering
//! with stored rows, leakage of values and keys, and resource limits. Each
//! goal prints one JSON summary line (`{goal, runs, violations, seed}`) and
//! fails on any violation.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{
    Client, KEY, Proc, cli_in, dir_contains, files_under, goal_report, raw, send, test_seed,
};

/// Envelope layout: format byte, generation (4, big-endian), nonce (24),
/// ciphertext, tag (16).
const HEADER: usize = 1 + 4 + 24;

struct Db(rusqlite::Connection);

impl Db {
    fn open(data: &Path) -> Db {
        Db(rusqlite::Connection::open(data.join("secretd.db")).expect("open db"))
    }

    fn envelope(&self, path: &str, v: i64) -> Vec<u8> {
        self.0
            .query_row(
                "SELECT v.envelope FROM versions v JOIN secrets s ON s.id = v.secret_id
                 WHERE s.path = ?1 AND v.version = ?2",
                rusqlite::params![path, v],
                |r| r.get(0),
            )
            .expect("row")
    }

    fn set(&self, path: &str, v: i64, e: &[u8]) {
        let n = self
            .0
            .execute(
                "UPDATE versions SET envelope = ?3 WHERE version = ?2
                 AND secret_id = (SELECT id FROM secrets WHERE path = ?1)",
                rusqlite::params![path, v, e],
            )
            .expect("update");
        assert_eq!(n, 1, "{path} v{v}");
    }
}

fn flip(mut e: Vec<u8>, at: usize) -> Vec<u8> {
    e[at] ^= 0x01;
    e
}

/// Goal 3: every way of altering stored ciphertext or keys directly in the
/// database is answered 500 `corrupt` with a log line naming path and
/// version, never another secret's value and never a panic; untouched rows
/// still read.
#[tokio::test(flavor = "multi_thread")]
async fn tampered_rows_answer_corrupt_and_the_rest_still_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let env = [("SECRETD_API_KEYS", KEY)];
    let p = Proc::start(&data, &env);
    let c = p.client(KEY);
    let names = [
        "swap-a",
        "swap-b",
        "versions",
        "format",
        "generation",
        "nonce",
        "ciphertext",
        "tag",
        "trunc-10",
        "trunc-1",
        "empty",
        "appended",
        "gen-other",
        "gen-missing",
        "old-gen",
    ];
    let path = |n: &str| format!("tfy-secret/tamper/{n}");
    // Generation 1: the rows whose key row will be altered, and controls.
    c.put_ok(&path("old-gen"), "value-old-gen").await;
    c.put_ok(&path("control-1"), "value-control-1").await;
    let (ok, _, err) = cli_in(&data, &["key", "rotate"]);
    assert!(ok, "{err}");
    for n in names.iter().filter(|n| **n != "old-gen") {
        c.put_ok(&path(n), &format!("value-{n}-v1")).await;
        if *n == "versions" {
            c.put_ok(&path(n), "value-versions-v2").await;
        }
    }
    c.put_ok(&path("control-2"), "value-control-2").await;
    assert_eq!(p.terminate(), Some(0));

    let db = Db::open(&data);
    let e = |n: &str| db.envelope(&path(n), 1);
    let (a, b) = (e("swap-a"), e("swap-b"));
    db.set(&path("swap-a"), 1, &b);
    db.set(&path("swap-b"), 1, &a);
    db.set(&path("versions"), 2, &e("versions"));
    db.set(&path("format"), 1, &flip(e("format"), 0));
    db.set(&path("generation"), 1, &flip(e("generation"), 4));
    db.set(&path("nonce"), 1, &flip(e("nonce"), 5 + 10));
    db.set(&path("ciphertext"), 1, &flip(e("ciphertext"), HEADER + 1));
    let t = e("tag");
    db.set(&path("tag"), 1, &flip(t.clone(), t.len() - 1));
    db.set(&path("trunc-10"), 1, &e("trunc-10")[..10]);
    let t = e("trunc-1");
    db.set(&path("trunc-1"), 1, &t[..t.len() - 1]);
    db.set(&path("empty"), 1, &[]);
    let mut t = e("appended");
    t.extend_from_slice(b"extra");
    db.set(&path("appended"), 1, &t);
    let mut t = e("gen-other");
    t[1..5].copy_from_slice(&1u32.to_be_bytes()); // sealed under 2, claims 1
    db.set(&path("gen-other"), 1, &t);
    let mut t = e("gen-missing");
    t[1..5].copy_from_slice(&99u32.to_be_bytes());
    db.set(&path("gen-missing"), 1, &t);
    // Replace generation 1's wrapped key with generation 2's.
    let w2: Vec<u8> =
        db.0.query_row(
            "SELECT wrapped FROM data_keys WHERE generation = 2",
            [],
            |r| r.get(0),
        )
        .expect("key 2");
    db.0.execute(
        "UPDATE data_keys SET wrapped = ?1 WHERE generation = 1",
        [&w2],
    )
    .expect("swap key");
    drop(db);

    let p = Proc::start(&data, &env);
    let c = p.client(KEY);
    let mut violations = Vec::new();
    let mut runs = 0;
    for n in names {
        let v = if n == "versions" { 2 } else { 1 };
        for version in [None, Some(v.to_string())] {
            runs += 1;
            let r = c.get(&path(n), version.as_deref()).await;
            let body = String::from_utf8_lossy(&r.body).into_owned();
            if r.status != 500 || r.error_code() != "corrupt" {
                violations.push(format!("{n} {version:?}: {} {body}", r.status));
            }
            if body.contains("value-") {
                violations.push(format!("{n}: a value in the error body: {body}"));
            }
        }
        let needle = format!("path={} version={v}", path(n));
        let logs = p.wait_stderr(&needle);
        if !logs
            .lines()
            .any(|l| l.contains("integrity") && l.contains(&needle))
        {
            violations.push(format!("{n}: no log line naming {needle}"));
        }
    }
    // Untouched rows, under both generations' keys, still read.
    for (n, want) in [
        ("control-2", "value-control-2"),
        ("versions", "value-versions-v1"),
    ] {
        runs += 1;
        let r = c.get(&path(n), Some("1")).await;
        if r.status != 200 || r.json()["value"] != want {
            violations.push(format!("untouched {n}: {} {:?}", r.status, r.body));
        }
    }
    // control-1 is under the altered generation-1 key: corrupt, not served.
    runs += 1;
    let r = c.get(&path("control-1"), None).await;
    if (r.status, r.error_code().as_str()) != (500, "corrupt") {
        violations.push(format!("control-1 under the altered key: {}", r.status));
    }
    // Writes still work (sealed under generation 2) and the server is alive.
    runs += 1;
    if c.put_ok(&path("after"), "value-after").await != 1 {
        violations.push("write after tampering".into());
    }
    let logs = p.stderr();
    if !logs.contains("stored data key does not open") {
        violations.push("the altered key row was not reported at start-up".into());
    }
    if logs.contains("panicked") {
        violations.push("a panic".into());
    }
    if p.terminate() != Some(0) {
        violations.push("did not exit 0 on SIGTERM".into());
    }
    goal_report("tamper", runs, &violations, 0, json!({}));
}

/// Goal 4: a canary value and the API key appear in 0 bytes of the data dir
/// (database, WAL, shm, a backup), trace-level logs, audit records,
/// `/metrics` and every error response, across a run that includes
/// malformed requests carrying the canary in wrong-typed fields.
#[tokio::test(flavor = "multi_thread")]
async fn canaries_never_leak() {
    let seed = test_seed();
    let canary = format!("canary{seed:016x}");
    let key = format!("leak-key-{:016x}-0123456789", seed.rotate_left(17));
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let env = [("SECRETD_API_KEYS", key.as_str()), ("RUST_LOG", "trace")];
    let p = Proc::start(&data, &env);
    let c = p.client(&key);
    let mut bodies: Vec<String> = Vec::new();
    let mut runs = 0;
    for i in 0..5 {
        c.put_ok(&format!("tfy-secret/leak/s{i}"), &format!("{canary}-{i}"))
            .await;
    }
    c.put_ok("tfy-secret/leak/big", &canary.repeat(200)).await;
    for i in 0..5 {
        let r = c.get(&format!("tfy-secret/leak/s{i}"), None).await;
        assert_eq!(r.json()["value"], format!("{canary}-{i}"));
    }
    c.delete("tfy-secret/leak/s0", None).await;
    // Malformed requests carrying the canary where it does not belong.
    let malformed = [
        format!(r#"{{"path":"tfy-secret/leak/x","value":{{"{canary}":1}}}}"#),
        format!(r#"{{"path":"tfy-secret/leak/x","value":["{canary}"]}}"#),
        format!(r#"{{"path":"tfy-secret/leak/x","value":"{canary}","value":"{canary}"}}"#),
        format!(r#"{{"path":["{canary}"],"value":"x"}}"#),
        format!(r#"{{"path":"{canary}","value":"x"}}"#),
        format!(r#"{{"path":"tfy-secret/leak/{canary}/../x","value":"{canary}"}}"#),
        format!(r#"{{"path":"tfy-secret/leak/x","value":"{canary}"}} trailing {canary}"#),
        format!(r#"{{"path":"tfy-secret/leak/x","value":"{canary}\ud800"}}"#),
        format!(
            r#"{{"path":"tfy-secret/leak/x","value":"{}"}}"#,
            canary.repeat(20_000)
        ),
    ];
    for body in &malformed {
        for m in ["PUT", "DELETE"] {
            runs += 1;
            let r = c.json(m, body).await;
            bodies.push(String::from_utf8_lossy(&r.body).into_owned());
        }
    }
    for body in [
        format!(r#"{{"path":"tfy-secret/leak/s1","version":"{canary}"}}"#),
        format!(r#"{{"path":"tfy-secret/leak/s1","version":{{"{canary}":1}}}}"#),
    ] {
        runs += 1;
        bodies.push(String::from_utf8_lossy(&c.json("DELETE", &body).await.body).into_owned());
    }
    // (A token's name is an identifier that the audit trail records; the
    // canary goes in the fields that must never be echoed or kept.)
    for (name, role) in [("ok-name-1", "admin"), ("ok-name-2", canary.as_str())] {
        runs += 1;
        let body = format!(r#"{{"name":"{name}","role":"{role}","scopes":["{canary}"]}}"#);
        let r = send(
            c.addr,
            "POST",
            "/v1/tokens",
            &[("x-api-key", &key), ("content-type", "application/json")],
            Some(body.as_bytes()),
        )
        .await;
        bodies.push(String::from_utf8_lossy(&r.body).into_owned());
    }
    runs += 1;
    bodies.push(
        String::from_utf8_lossy(&c.get("tfy-secret/leak/s1", Some(&canary)).await.body)
            .into_owned(),
    );
    runs += 1;
    let r = send(
        c.addr,
        "GET",
        &format!("/secrets?path=tfy-secret/leak/s1&{canary}=1&api_key={key}"),
        &[],
        None,
    )
    .await;
    bodies.push(String::from_utf8_lossy(&r.body).into_owned());
    // Wrong keys that contain the canary.
    for h in [
        ("x-api-key", canary.clone()),
        ("authorization", format!("Bearer {canary}")),
    ] {
        runs += 1;
        let r = send(
            c.addr,
            "GET",
            "/secrets?path=tfy-secret",
            &[(h.0, &h.1)],
            None,
        )
        .await;
        bodies.push(String::from_utf8_lossy(&r.body).into_owned());
    }
    let metrics = String::from_utf8_lossy(&send(c.addr, "GET", "/metrics", &[], None).await.body)
        .into_owned();
    // A backup in the data dir, and the audit trail (read beside the server).
    let backup = data.join("backup.jsonl");
    let (ok, _, err) = cli_in(&data, &["backup", "--out", backup.to_str().expect("utf8")]);
    assert!(ok, "backup: {err}");
    let (ok, audit, err) = cli_in(&data, &["audit", "tail", "--json"]);
    assert!(ok, "audit tail: {err}");
    assert!(audit.lines().count() > 10, "{audit}");
    // The data dir while the server runs (WAL and shm present) ...
    let mut violations = Vec::new();
    let running_files = files_under(&data);
    for (secret, name) in [(canary.as_bytes(), "canary"), (key.as_bytes(), "API key")] {
        runs += running_files.len();
        if let Some(f) = dir_contains(&data, secret) {
            violations.push(format!("{name} in {} (running)", f.display()));
        }
    }
    let (out, errs) = (p.stdout.clone(), p.stderr.clone());
    assert_eq!(p.terminate(), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    let stdout = out.lock().expect("lock").clone();
    let stderr = errs.lock().expect("lock").clone();
    assert!(stderr.contains("request_id="), "no request log lines?");

    for (what, text) in [
        ("stdout", &stdout),
        ("stderr (trace)", &stderr),
        ("/metrics", &metrics),
        ("audit records", &audit),
    ] {
        for (secret, name) in [(canary.as_str(), "canary"), (key.as_str(), "API key")] {
            runs += 1;
            if let Some(l) = text.lines().find(|l| l.contains(secret)) {
                violations.push(format!("{name} in {what}: {l}"));
            }
        }
    }
    for (i, b) in bodies.iter().enumerate() {
        runs += 1;
        if b.contains(&canary) || b.contains(&key) {
            violations.push(format!("error body {i} echoes input: {b}"));
        }
        if !b.starts_with("{\"error\"") && !b.starts_with('{') {
            violations.push(format!("error body {i} is not JSON: {b}"));
        }
    }
    let files = files_under(&data);
    assert!(files.iter().any(|f| f.ends_with("backup.jsonl")));
    for (secret, name) in [(canary.as_bytes(), "canary"), (key.as_bytes(), "API key")] {
        runs += files.len();
        if let Some(f) = dir_contains(&data, secret) {
            violations.push(format!("{name} in {}", f.display()));
        }
    }
    goal_report(
        "no_leakage",
        runs,
        &violations,
        seed,
        json!({"files_checked_running": running_files.len(), "files_checked_stopped": files.len(), "error_bodies": bodies.len()}),
    );
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Goal 7: a 40 MiB declared body and endless chunked bodies are refused
/// with 413 before being read (after three warm-up rounds, RSS grows
/// < 8 MiB: far less than one buffered 40 MiB body; the allocator keeps
/// per-thread pools, so a first round may cost a few MiB), 256 slowloris
/// connections are closed within the header timeout while `/healthz` stays
/// fast, and peak RSS stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn greedy_and_slow_clients_are_bounded() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Proc::start(
        &data,
        &[("SECRETD_API_KEYS", KEY), ("SECRETD_HEADER_TIMEOUT", "1s")],
    );
    let pid = p.child.id();
    let c: Client = p.client(KEY);
    c.put_ok("tfy-secret/res/a", "warm").await;
    let _ = c.get("tfy-secret/res/a", None).await;
    // Refused bodies first, so the allocator's pools for a body-limit
    // buffer (which a legitimate 1 MiB body needs too) are already there:
    // what is measured is what refused bodies leave behind. Sent at once,
    // several at a time, so every worker thread (each has its own
    // allocator heap) has served one, whichever worker the measured ones
    // land on.
    for _ in 0..3 {
        let addr = p.addr;
        let warm: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || crate::contract::endless_chunked_put(addr)))
            .collect();
        for t in warm {
            let _ = t.join();
        }
    }
    let before = rss_kib(pid, "VmRSS:");
    let mut violations = Vec::new();
    let mut runs = 0;
    for _ in 0..3 {
        runs += 1;
        let head = format!(
            "PUT /secrets HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            40 * 1024 * 1024
        );
        let t = Instant::now();
        let (status, body) = raw(p.addr, head.as_bytes(), Duration::from_secs(5));
        if status != 413 || !body.contains("body_too_large") || t.elapsed() > Duration::from_secs(1)
        {
            violations.push(format!(
                "40 MiB declared: {status} {body} in {:?}",
                t.elapsed()
            ));
        }
        runs += 1;
        let (status, body, sent) = crate::contract::endless_chunked_put(p.addr);
        if status != 413 || sent > 16 * 1024 * 1024 {
            violations.push(format!(
                "endless chunked: {status} after {sent} bytes: {body}"
            ));
        }
    }
    let after_bodies = rss_kib(pid, "VmRSS:");
    // 256 connections that send half a header and then nothing.
    let mut slow = Vec::new();
    for _ in 0..256 {
        let mut s = std::net::TcpStream::connect(p.addr).expect("connect");
        s.write_all(b"GET /secrets?path=tfy-secret/x HTTP/1.1\r\nHost: x\r\nX-Api")
            .expect("write");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        slow.push(s);
    }
    runs += 1;
    let t = Instant::now();
    let r = send(p.addr, "GET", "/healthz", &[], None).await;
    let health = t.elapsed();
    if r.status != 200 || health > Duration::from_millis(500) {
        violations.push(format!(
            "/healthz under slowloris: {} in {health:?}",
            r.status
        ));
    }
    let t = Instant::now();
    for mut s in slow {
        runs += 1;
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
    }
    let held = t.elapsed();
    if held > Duration::from_secs(4) {
        violations.push(format!("slow connections held for {held:?}"));
    }
    let after = rss_kib(pid, "VmRSS:");
    let peak = rss_kib(pid, "VmHWM:");
    let grew = after_bodies.saturating_sub(before);
    if grew > 8 * 1024 {
        violations.push(format!("RSS grew {grew} KiB over the refused bodies"));
    }
    if peak > 96 * 1024 {
        violations.push(format!("peak RSS {peak} KiB"));
    }
    assert_eq!(p.terminate(), Some(0));
    goal_report(
        "resource_limits",
        runs,
        &violations,
        0,
        json!({"rss_before_kib": before, "rss_after_bodies_kib": after_bodies,
               "rss_after_slowloris_kib": after, "peak_rss_kib": peak,
               "healthz_ms": health.as_millis() as u64, "slowloris_closed_ms": held.as_millis() as u64}),
    );
}

/// `/readyz` reflects key health: a newest data key this replica cannot open
/// (added under another master key, or altered) turns it 503 with a log
/// line, so a load balancer drains it; fixing the row brings it back.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_newest_data_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Proc::start(&data, &[("SECRETD_API_KEYS", KEY)]);
    let c = p.client(KEY);
    c.put_ok("tfy-secret/ready/a", "v").await;
    assert_eq!(send(c.addr, "GET", "/readyz", &[], None).await.status, 200);
    let db = Db::open(&data);
    db.0.execute(
        "INSERT INTO data_keys (generation, wrapped, created_at) VALUES (2, ?1, 0)",
        [vec![7u8; 72]],
    )
    .expect("insert a key row no master key opens");
    let r = send(c.addr, "GET", "/readyz", &[], None).await;
    assert_eq!((r.status, r.error_code().as_str()), (503, "unavailable"));
    assert!(
        p.wait_stderr("data key generation 2 does not open")
            .contains("data key generation 2 does not open")
    );
    // Writes cannot be sealed meanwhile; reads of existing versions go on.
    assert!(c.put("tfy-secret/ready/a", "w").await.status >= 500);
    assert_eq!(c.get("tfy-secret/ready/a", None).await.json()["value"], "v");
    db.0.execute("DELETE FROM data_keys WHERE generation = 2", [])
        .expect("remove it");
    assert_eq!(send(c.addr, "GET", "/readyz", &[], None).await.status, 200);
    assert_eq!(c.put_ok("tfy-secret/ready/a", "w").await, 2);
    assert_eq!(p.terminate(), Some(0));
}

/// A token id that is not UTF-8 gets the same JSON 404 as an unknown one
/// (axum's path extractor would answer a plain-text 400).
#[tokio::test(flavor = "multi_thread")]
async fn a_non_utf8_token_id_gets_a_json_404() {
    let s = crate::common::TestServer::start_on(crate::common::Backend::Sqlite).await;
    for id in ["%FF", "%C3%28", "tok_%FF"] {
        let r = send(
            s.addr(),
            "DELETE",
            &format!("/v1/tokens/{id}"),
            &[("x-api-key", KEY)],
            None,
        )
        .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "not_found"),
            "{id}"
        );
        assert!(r.header("content-type").starts_with("application/json"));
    }
}
