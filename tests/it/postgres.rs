//! PostgreSQL-only behaviour: replicas on one database, outages, TLS,
//! start-up refusals, and `secretd migrate` both ways.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::outage;

fn pg_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SECRETD_API_KEYS", KEY.to_owned()),
        ("SECRETD_DATABASE_URL", url.to_owned()),
        ("SECRETD_MASTER_KEY", MASTER_KEY.to_owned()),
    ]
}

fn start_pg(data: &std::path::Path, env: &[(&'static str, String)]) -> Proc {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Proc::start(data, &env)
}

fn try_start_pg(data: &std::path::Path, env: &[(&'static str, String)]) -> Result<Proc, String> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Proc::try_start(data, &env)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_never_hand_out_a_version_twice() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = pg_env(&db.url);
    // 300 writers of one row queue for 2 x 16 connections; this test is about
    // versions, not latency, so a loaded machine must not turn waits into 503s.
    env.push(("SECRETD_DB_ACQUIRE_TIMEOUT", "30s".to_owned()));
    // Both start at once on an empty database: migrations must not race.
    let (d1, d2) = (dir.path().join("a"), dir.path().join("b"));
    let (e1, e2) = (env.clone(), env.clone());
    let t1 = std::thread::spawn(move || start_pg(&d1, &e1));
    let t2 = std::thread::spawn(move || start_pg(&d2, &e2));
    let (r1, r2) = (t1.join().expect("replica 1"), t2.join().expect("replica 2"));
    let clients = [r1.client(KEY), r2.client(KEY)];
    let n = 300;
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = clients[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let value = format!("value-{i}");
            (c.put_ok("tfy-secret/replicas/one", &value).await, value)
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
        "unique and contiguous across replicas"
    );
    for (v, value) in &got {
        for c in &clients {
            let r = c.get("tfy-secret/replicas/one", Some(&v.to_string())).await;
            assert_eq!(
                r.json()["value"].as_str(),
                Some(value.as_str()),
                "v{v} via {}",
                c.addr
            );
        }
    }
    // a delete on one replica is seen by the other at once
    assert_eq!(
        clients[0]
            .delete("tfy-secret/replicas/one", Some(json!(n)))
            .await
            .status,
        200
    );
    assert_eq!(
        clients[1]
            .get("tfy-secret/replicas/one", Some(&n.to_string()))
            .await
            .status,
        404
    );
    drop((r1, r2));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_refusals() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let env = pg_env(&db.url);
    let p = start_pg(&dir.path().join("a"), &env);
    p.client(KEY).put_ok("tfy-secret/k", "v").await;
    drop(p);
    // another master key cannot unwrap the stored data keys
    let mut other = env.clone();
    other[2].1 = "HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=".into();
    let e = try_start_pg(&dir.path().join("b"), &other)
        .err()
        .expect("must refuse");
    assert!(e.contains("master key does not open"), "{e}");
    // no master key at all: never generate one for a shared database
    let e = try_start_pg(&dir.path().join("c"), &env[..2])
        .err()
        .expect("must refuse");
    assert!(e.contains("must be given explicitly"), "{e}");
    assert!(
        !dir.path().join("c").exists(),
        "no data dir for a database-backed server"
    );
    // a schema from the future
    let client = pg_connect(&db.url).await;
    client
        .execute(
            "INSERT INTO secretd_schema (version, applied_at) VALUES (99, 0)",
            &[],
        )
        .await
        .expect("insert");
    let e = try_start_pg(&dir.path().join("d"), &env)
        .err()
        .expect("must refuse");
    assert!(e.contains("schema version 99 is newer"), "{e}");
    assert!(
        !e.contains(&db.url),
        "the database URL (it may hold a password) was printed: {e}"
    );
    drop(client);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_follows_sslmode() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let client = pg_connect(&db.url).await;
    let ssl: String = client
        .query_one("SHOW ssl", &[])
        .await
        .expect("show")
        .get(0);
    if ssl != "on" {
        eprintln!("notice: the test PostgreSQL has ssl=off; TLS checks skipped");
        db.drop_db().await;
        return;
    }
    let sep = if db.url.contains('?') { '&' } else { '?' };
    for (mode, want_ssl) in [("disable", false), ("require", true)] {
        let url = format!("{}{sep}sslmode={mode}", db.url);
        let s = TestServer::start_on(Backend::Postgres(url)).await;
        s.client.put_ok("tfy-secret/tls", mode).await;
        let rows = client
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = 'secretd' AND a.datname = current_database()",
                &[],
            )
            .await
            .expect("pg_stat_ssl");
        assert!(!rows.is_empty());
        assert!(
            rows.iter().all(|r| r.get::<_, bool>(0) == want_ssl),
            "sslmode={mode}"
        );
        drop(s);
        // wait for the pool's connections to go away before the next mode
        for _ in 0..100 {
            let n: i64 = client
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'secretd' AND datname = current_database()",
                    &[],
                )
                .await
                .expect("count")
                .get(0);
            if n == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // verify-full checks the certificate: a self-signed test server is refused
    let url = format!("{}{sep}sslmode=verify-full", db.url);
    let mut cfg = secretd::config::ServeConfig::with_data_dir(std::env::temp_dir().join("unused"));
    cfg.store.database_url = Some(secretd::config::SecretString::new(url));
    cfg.master_key = Some(secretd::config::SecretString::new(MASTER_KEY.into()));
    cfg.api_keys = vec![secretd::config::SecretString::new(KEY.into())];
    let e = secretd::bootstrap::open(&cfg)
        .await
        .expect_err("an untrusted certificate must be refused");
    eprintln!("verify-full refusal: {e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    drop(client);
    db.drop_db().await;
}

/// A TCP proxy between secretd and PostgreSQL that can cut the database
/// off (reset), swallow traffic (blackhole) or delay it.
struct Proxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

const UP: u8 = 0;
const RESET: u8 = 1;
const BLACKHOLE: u8 = 2;
const SLOW: u8 = 3;

/// Copies one direction, obeying the proxy's mode for every chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            match mode.load(Ordering::SeqCst) {
                RESET => return,
                BLACKHOLE => tokio::time::sleep(Duration::from_millis(20)).await,
                SLOW => {
                    tokio::time::sleep(Duration::from_millis(delay_ms.load(Ordering::SeqCst)))
                        .await;
                    break;
                }
                _ => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(UP));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (mode2, delay2, conns2) =
            (Arc::clone(&mode), Arc::clone(&delay_ms), Arc::clone(&conns));
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (mode, delay) = (Arc::clone(&mode2), Arc::clone(&delay2));
                if mode.load(Ordering::SeqCst) == RESET {
                    drop(inbound); // the database is "gone": connection closed at once
                    continue;
                }
                let task = tokio::spawn(async move {
                    // A blackholed database accepts nothing: hold the socket.
                    while mode.load(Ordering::SeqCst) == BLACKHOLE {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if let Ok(out) = tokio::net::TcpStream::connect(target).await {
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = out.into_split();
                        let a = tokio::spawn(pump(ri, wo, Arc::clone(&mode), Arc::clone(&delay)));
                        let b = pump(ro, wi, mode, delay);
                        b.await;
                        a.abort();
                    }
                });
                conns2.lock().expect("lock").push(task.abort_handle());
            }
        });
        Proxy {
            addr,
            mode,
            delay_ms,
            conns,
        }
    }

    /// The database goes away: every open connection is cut, new ones fail.
    fn down(&self) {
        self.mode.store(RESET, Ordering::SeqCst);
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    /// The network swallows everything: connections stay open, nothing
    /// arrives either way (a partition, a dead host).
    fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// Every chunk either way waits `ms` first.
    fn slow(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
        self.mode.store(SLOW, Ordering::SeqCst);
    }

    fn up(&self) {
        self.mode.store(UP, Ordering::SeqCst);
    }
}

/// `url` with its host:port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let userinfo = authority.rfind('@').map_or("", |i| &authority[..=i]);
    format!("{}{userinfo}{addr}{}", &url[..start], &url[end..])
}

fn pg_target() -> SocketAddr {
    let cfg = tokio_postgres::Config::from_str(&pg_base_url()).expect("test URL");
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    format!("{host}:{port}").parse().expect("host:port")
}

/// Goal 9 of the reliability suite: the database reset, then blackholed,
/// then slowed, under write load. Every request ends within the limit as
/// 200 or 503 JSON, `/readyz` flips within 2 s, writes resume within 5 s of
/// the database, nothing acknowledged is lost (versions contiguous).
#[tokio::test(flavor = "multi_thread")]
async fn database_outage_gives_fast_503s_and_recovers_without_restart() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let proxy = Proxy::start(pg_target()).await;
    let url = via(&db.url, proxy.addr);
    let (acquire, statement) = (Duration::from_secs(1), Duration::from_secs(2));
    let s = TestServer::start_with(Backend::Postgres(url), |c| {
        c.store.db.db_acquire_timeout = acquire;
        c.store.db.db_statement_timeout = statement;
    })
    .await;
    let c = s.client.clone();
    let limit = acquire + statement + Duration::from_secs(1);
    let mut reports = Vec::new();
    let report = outage::under_load(
        &c,
        limit,
        async || proxy.down(),
        Duration::from_secs(3),
        async || proxy.up(),
    )
    .await;
    eprintln!("outage (proxy reset): {report}");
    reports.push(report);
    let report = outage::under_load(
        &c,
        limit,
        async || proxy.blackhole(),
        Duration::from_secs(3),
        async || proxy.up(),
    )
    .await;
    eprintln!("outage (proxy blackhole): {report}");
    reports.push(report);
    // Added latency: slower, never wrong.
    proxy.slow(100);
    let mut violations = Vec::new();
    let t = std::time::Instant::now();
    for i in 0..2 {
        let start = std::time::Instant::now();
        let r = c.put("tfy-secret/outage/slow", &format!("s{i}")).await;
        if r.status != 200 || start.elapsed() > limit {
            violations.push(format!("slow PUT: {} in {:?}", r.status, start.elapsed()));
        }
    }
    let slow = t.elapsed();
    proxy.up();
    let r = c.get("tfy-secret/outage/slow", None).await;
    if r.json()["value"] != "s1" {
        violations.push(format!("after latency: {:?}", r.body));
    }
    crate::common::goal_report(
        "pg_outage",
        reports.len() + 2,
        &violations,
        0,
        json!({"reset": reports[0], "blackhole": reports[1], "latency_100ms_2_puts_ms": slow.as_millis() as u64}),
    );
    drop(s);
    db.drop_db().await;
}

/// `--request-timeout` cuts a read that waits on a dead database, while a
/// write is never cut by it (it ends on the store's own timeouts, 503
/// `unavailable`, never "timeout, try again").
#[tokio::test(flavor = "multi_thread")]
async fn reads_stop_at_the_request_timeout_and_writes_do_not() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let proxy = Proxy::start(pg_target()).await;
    let url = via(&db.url, proxy.addr);
    let s = TestServer::start_with(Backend::Postgres(url), |c| {
        c.store.db.db_acquire_timeout = Duration::from_secs(2);
        c.store.db.db_statement_timeout = Duration::from_secs(2);
        c.request_timeout = Duration::from_millis(400);
    })
    .await;
    let c = s.client.clone();
    c.put_ok("tfy-secret/deadline/a", "v").await;
    proxy.blackhole();
    let t = std::time::Instant::now();
    let r = c.get("tfy-secret/deadline/a", None).await;
    let took = t.elapsed();
    assert_eq!((r.status, r.error_code().as_str()), (503, "timeout"));
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let t = std::time::Instant::now();
    let r = c.put("tfy-secret/deadline/a", "w").await;
    let took = t.elapsed();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "unavailable"),
        "{took:?}"
    );
    assert!(
        took > Duration::from_millis(400),
        "a write was cut at the request timeout"
    );
    proxy.up();
    drop(s);
    db.drop_db().await;
}

/// A read-audit append that fails in the middle of its transaction (here
/// its wait for the audit chain's lock, which another session holds, hits
/// the statement timeout) closes its connection rather than returning it
/// to the pool inside the transaction: later reads work on any pooled
/// connection, no backend is left in a transaction, and the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_audit_failing_mid_transaction_leaves_no_transaction_open() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let s = TestServer::start_with(Backend::Postgres(db.url.clone()), |c| {
        c.store.db.db_statement_timeout = Duration::from_millis(500);
        c.store.db.db_acquire_timeout = Duration::from_secs(2);
    })
    .await;
    let c = s.client.clone();
    c.put_ok("tfy-secret/opentx/a", "v").await;
    for _ in 0..4 {
        assert_eq!(c.get("tfy-secret/opentx/a", None).await.status, 200);
    }
    // `AUDIT_LOCK` in src/store/postgres.rs.
    const AUDIT_LOCK: i64 = 0x5ec7_e7d0_0002;
    let holder = pg_connect(&db.url).await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&AUDIT_LOCK])
        .await
        .expect("lock");
    let r = c.get("tfy-secret/opentx/a", None).await;
    assert_eq!(
        r.status,
        503,
        "a read whose record was not appended: {}",
        r.json()
    );
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&AUDIT_LOCK])
        .await
        .expect("unlock");
    for i in 0..20 {
        let r = c.get("tfy-secret/opentx/a", None).await;
        assert_eq!(
            r.status,
            200,
            "read {i} after the lock was released: {}",
            r.json()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open: i64 = holder
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(open, 0, "a backend was left inside a transaction");
    let (ok, out, err) = s.cli(&["audit", "verify"]);
    assert!(ok, "{out}{err}");
    drop(s);
    db.drop_db().await;
}

/// Goal 9, replicas: one of two replicas is frozen (SIGSTOP) mid-load and
/// resumed; no version is handed out twice or lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_replica_neither_duplicates_nor_loses_versions() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let long = std::env::var("SECRETD_LONG_TESTS").is_ok_and(|v| v == "1");
    let freeze = Duration::from_secs(if long { 20 } else { 3 });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = pg_env(&db.url);
    env.push(("SECRETD_DB_ACQUIRE_TIMEOUT", "30s".to_owned()));
    let r1 = start_pg(&dir.path().join("a"), &env);
    let r2 = start_pg(&dir.path().join("b"), &env);
    let clients = [r1.client(KEY), r2.client(KEY)];
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..6 {
        let (c, stop, acked) = (
            clients[w % 2].clone(),
            Arc::clone(&stop),
            Arc::clone(&acked),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let path = format!("tfy-secret/frozen/p{}", i % 3);
                let value = format!("w{w}-{i}");
                // A frozen replica's clients wait; they give up after 60 s.
                let r = tokio::time::timeout(Duration::from_secs(60), c.put(&path, &value)).await;
                if let Ok(r) = r
                    && r.status == 200
                {
                    let v = r.json()["version"].as_u64().expect("version");
                    acked.lock().expect("lock").push((path, v, value));
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    r2.signal("STOP");
    tokio::time::sleep(freeze).await;
    r2.signal("CONT");
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    let mut violations = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (p, v, _) in &acked {
        if !seen.insert((p.clone(), *v)) {
            violations.push(format!("{p} version {v} acknowledged twice"));
        }
    }
    let paths: Vec<String> = (0..3).map(|i| format!("tfy-secret/frozen/p{i}")).collect();
    verify_acknowledged(&clients[0], &acked, &paths).await;
    verify_acknowledged(&clients[1], &acked, &paths).await;
    crate::common::goal_report(
        "pg_frozen_replica",
        acked.len(),
        &violations,
        0,
        json!({"frozen_s": freeze.as_secs()}),
    );
    drop((r1, r2));
    db.drop_db().await;
}

/// What the secrets should look like: path -> version -> Some(value) or
/// None (deleted); the latest live version follows.
type Expected = HashMap<String, Vec<Option<String>>>;

async fn check_expected(c: &Client, expected: &Expected) {
    for (path, versions) in expected {
        for (i, want) in versions.iter().enumerate() {
            let r = c.get(path, Some(&(i + 1).to_string())).await;
            match want {
                Some(v) => assert_eq!(
                    r.json()["value"].as_str(),
                    Some(v.as_str()),
                    "{path} v{}",
                    i + 1
                ),
                None => assert_eq!(r.status, 404, "{path} v{} should be deleted", i + 1),
            }
        }
        let latest = versions.iter().rposition(Option::is_some);
        let r = c.get(path, None).await;
        match latest {
            Some(i) => assert_eq!(
                r.json()["version"].as_u64(),
                Some(i as u64 + 1),
                "{path} latest"
            ),
            None => assert_eq!(r.status, 404, "{path} latest"),
        }
        assert_eq!(
            c.get(path, Some(&(versions.len() + 1).to_string()))
                .await
                .status,
            404
        );
    }
}

fn migrate(from: &str, to: &str, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(["migrate", "--from", from, "--to", to])
        .args(extra)
        .output()
        .expect("run migrate")
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_embedded_to_postgres_and_back() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("embedded");
    let env = [
        ("SECRETD_API_KEYS", KEY),
        ("SECRETD_MASTER_KEY", MASTER_KEY),
    ];
    let p = Proc::start(&data, &env);
    let c = p.client(KEY);
    let n = 2000;
    let expected: Arc<Mutex<Expected>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (c, expected) = (c.clone(), Arc::clone(&expected));
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                let path = format!("tfy-secret/m/t{}/s{i}", i % 7);
                let rounds = if i % 5 == 0 { 3 } else { 1 };
                let mut versions = Vec::new();
                for r in 0..rounds {
                    let value = format!("secret-{i}-{r}");
                    c.put_ok(&path, &value).await;
                    versions.push(Some(value));
                }
                if i % 5 == 0 {
                    assert_eq!(c.delete(&path, Some(json!(2))).await.status, 200);
                    versions[1] = None;
                }
                if i % 10 == 3 {
                    assert_eq!(c.delete(&path, None).await.status, 200);
                    versions.iter_mut().for_each(|v| *v = None);
                }
                expected.lock().expect("lock").insert(path, versions);
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    assert_eq!(p.terminate(), Some(0));
    let expected = expected.lock().expect("lock").clone();

    let from = data.display().to_string();
    let out = migrate(&from, &db.url, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("copied {n} secrets")), "{stdout}");
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(!stdout.contains(&db.url) && !String::from_utf8_lossy(&out.stderr).contains(&db.url));
    eprintln!("{stdout}");

    // a second run refuses the non-empty target, --replace overwrites it
    let out = migrate(&from, &db.url, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = migrate(&from, &db.url, &["--replace"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // the server on PostgreSQL answers exactly as before, and keeps counting
    let p = start_pg(&dir.path().join("unused"), &pg_env(&db.url));
    let c = p.client(KEY);
    check_expected(&c, &expected).await;
    let path = expected
        .iter()
        .find(|(_, v)| v.len() == 3)
        .map(|(p, _)| p.clone())
        .expect("a 3-version secret");
    assert_eq!(c.put_ok(&path, "after-migration").await, 4);
    drop(p);

    // and back into a fresh data dir
    let back = dir.path().join("back");
    let out = migrate(&db.url, &back.display().to_string(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = Proc::start(&back, &env);
    let mut expected = expected;
    expected
        .get_mut(&path)
        .expect("path")
        .push(Some("after-migration".into()));
    check_expected(&p.client(KEY), &expected).await;

    // a missing source is an error, not an empty copy
    let out = migrate(
        &dir.path().join("nothing").display().to_string(),
        &back.display().to_string(),
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no secretd store"));
    db.drop_db().await;
}

/// A read batch whose connection dies under it (here: its backend is
/// terminated while it waits for a lock) is retried once on a fresh
/// connection, so one broken pooled connection does not fail every GET in
/// the batch with 503.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_batch_whose_connection_dies_is_retried() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let s = TestServer::start_on(Backend::Postgres(db.url.clone())).await;
    s.client.put_ok("tfy-secret/pgretry/x", "kept").await;
    let client = pg_connect(&db.url).await;
    // Reads of `secrets` now wait for this transaction.
    client
        .batch_execute("BEGIN; LOCK TABLE secrets IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let reader = s.client.clone();
    let get = tokio::spawn(async move { reader.get("tfy-secret/pgretry/x", None).await });
    let waiting = "SELECT pid FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    // Watched from a second session: inside the locking transaction,
    // pg_stat_activity would show one snapshot for the whole transaction.
    let watch = pg_connect(&db.url).await;
    // The first backend other than `not` found waiting for the lock.
    let wait_for_reader = |not: Option<i32>| {
        let watch = &watch;
        async move {
            for _ in 0..200 {
                let rows = watch.query(waiting, &[]).await.expect("activity");
                if let Some(pid) = rows
                    .iter()
                    .map(|r| r.get::<_, i32>(0))
                    .find(|p| Some(*p) != not)
                {
                    return pid;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("no read waited for the lock");
        }
    };
    let first = wait_for_reader(None).await;
    client
        .query_one("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .expect("terminate");
    // The retry, on another connection, waits for the lock in turn.
    wait_for_reader(Some(first)).await;
    client.batch_execute("ROLLBACK").await.expect("rollback");
    let r = get.await.expect("join");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["value"], "kept");
    db.drop_db().await;
}

/// A PUT batch reads the newest generation at the start of its
/// transaction and seals under it; a rotation must not commit in between,
/// or a value sealed under the old key would be committed after the new one
/// exists (and `key rotate --rewrap` could miss it).
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_waits_for_transactions_that_read_the_old_generation() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let s = TestServer::start_on(Backend::Postgres(db.url.clone())).await;
    s.client.put_ok("tfy-secret/pglock/x", "one").await;
    let client = pg_connect(&db.url).await;
    // What a PUT batch does first, then holds until its commit.
    client
        .batch_execute("BEGIN; SELECT COALESCE(MAX(generation), 0) FROM data_keys")
        .await
        .expect("begin");
    let mut rotate = s
        .cli_command(&["key", "rotate"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn key rotate");
    // The rotation's backend queues for a lock on data_keys.
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                   WHERE c.relname = 'data_keys' AND NOT l.granted
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let mut queued = false;
    for _ in 0..200 {
        let n: i64 = client.query_one(waiting, &[]).await.expect("locks").get(0);
        if n > 0 {
            queued = true;
            break;
        }
        assert!(
            rotate.try_wait().expect("try_wait").is_none(),
            "the rotation finished while a transaction that read the old generation was open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(queued, "the rotation never waited for the data_keys lock");
    assert!(rotate.try_wait().expect("try_wait").is_none());
    client.batch_execute("COMMIT").await.expect("commit");
    let out = tokio::task::spawn_blocking(move || rotate.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.client.put_ok("tfy-secret/pglock/x", "two").await, 2);
    let gen_of_v2: Vec<u8> = client
        .query_one(
            "SELECT substring(v.envelope from 2 for 4) FROM versions v
             JOIN secrets s ON s.id = v.secret_id WHERE s.path = $1 AND v.version = 2",
            &[&"tfy-secret/pglock/x"],
        )
        .await
        .expect("envelope")
        .get(0);
    assert_eq!(gen_of_v2, vec![0, 0, 0, 2]);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_and_rekey_on_postgres() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let s = TestServer::start_on(Backend::Postgres(db.url.clone())).await;
    let c = &s.client;
    c.put_ok("tfy-secret/pgkeys/x", "one").await;
    let (ok, out, err) = s.cli(&["key", "rotate"]);
    assert!(ok, "{err}");
    assert!(out.contains("generation 2"), "{out}");
    assert_eq!(c.put_ok("tfy-secret/pgkeys/x", "two").await, 2);
    let client = pg_connect(&db.url).await;
    let gens: Vec<Vec<u8>> = client
        .query(
            "SELECT substring(envelope from 2 for 4) FROM versions ORDER BY version",
            &[],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(gens, vec![vec![0, 0, 0, 1], vec![0, 0, 0, 2]]);
    let (ok, out, _) = s.cli(&["key", "status"]);
    assert!(
        ok && out.contains("generation 2 (active)") && out.contains("seals 1 live"),
        "{out}"
    );
    assert_eq!(
        c.get("tfy-secret/pgkeys/x", Some("1")).await.json()["value"],
        "one"
    );
    // rekey, then only the new master key opens the store
    let dir = tempfile::tempdir().expect("tempdir");
    let new_key = dir.path().join("new.key");
    std::fs::write(&new_key, "HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=\n").expect("write");
    let (ok, out, err) = s.cli(&[
        "key",
        "rekey",
        "--new-master-key-file",
        &new_key.display().to_string(),
    ]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = s.cli(&["key", "status"]);
    assert!(!ok && err.contains("master key does not open"), "{err}");
    let out = std::process::Command::new(bin())
        .args([
            "audit",
            "verify",
            "--database-url",
            &db.url,
            "--master-key-file",
        ])
        .arg(&new_key)
        .env_remove("SECRETD_MASTER_KEY")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(s);
    drop(client);
    db.drop_db().await;
}

/// The audit chain's head is read after its lock, by a statement that must
/// see appends committed meanwhile: secretd's write transactions are READ
/// COMMITTED even on a database whose default is REPEATABLE READ, where
/// concurrent appends would otherwise reuse a sequence number.
#[tokio::test(flavor = "multi_thread")]
async fn writes_and_audited_reads_on_a_repeatable_read_database() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    db.set_default("default_transaction_isolation", "repeatable read")
        .await;
    let s = TestServer::start_on(Backend::Postgres(db.url.clone())).await;
    // PUT batches and read-audit batches append to the chain at once.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = s.client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..6 {
                let p = format!("tfy-secret/rr/w{w}");
                let v = c.put_ok(&p, &format!("{w}-{i}")).await;
                for _ in 0..4 {
                    let r = c.get(&p, Some(&v.to_string())).await;
                    assert_eq!(r.status, 200, "{}", r.json());
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let (ok, out, err) = s.cli(&["audit", "verify"]);
    assert!(ok, "{out}{err}");
    drop(s);
    db.drop_db().await;
}
