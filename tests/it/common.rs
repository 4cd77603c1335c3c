//! Test harness: a real server on 127.0.0.1:0 (in-process or as a child
//! process) and a minimal HTTP/1.1 client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use secretd::config::{SecretString, ServeConfig};
use secretd::http::AppState;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

pub const KEY: &str = "test-key-0123456789abcdef";
pub const KEY2: &str = "second-key-0123456789abcdef";

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The error code of a JSON error body, after checking its shape.
    pub fn error_code(&self) -> String {
        let j = self.json();
        assert_eq!(self.header("content-type"), "application/json", "{j}");
        let e = &j["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {j}"
        );
        e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {j}"))
            .to_owned()
    }
}

/// Sends one request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .expect("request");
    let res = sender.send_request(req).await.expect("send");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

/// A client bound to one server and one API key.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub key: String,
}

impl Client {
    pub fn auth(&self) -> [(&str, &str); 1] {
        [("x-api-key", self.key.as_str())]
    }

    pub async fn get(&self, path: &str, version: Option<&str>) -> Resp {
        let mut uri = format!("/secrets?path={}", enc(path));
        if let Some(v) = version {
            uri.push_str(&format!("&version={}", enc(v)));
        }
        send(self.addr, "GET", &uri, &self.auth(), None).await
    }

    pub async fn get_uri(&self, uri: &str) -> Resp {
        send(self.addr, "GET", uri, &self.auth(), None).await
    }

    pub async fn put(&self, path: &str, value: &str) -> Resp {
        let body = serde_json::json!({ "path": path, "value": value }).to_string();
        self.json("PUT", &body).await
    }

    pub async fn delete(&self, path: &str, version: Option<Value>) -> Resp {
        let mut b = serde_json::json!({ "path": path });
        if let Some(v) = version {
            b["version"] = v;
        }
        self.json("DELETE", &b.to_string()).await
    }

    /// A `/secrets` request with a raw JSON body.
    pub async fn json(&self, method: &str, body: &str) -> Resp {
        let h = [
            ("x-api-key", self.key.as_str()),
            ("content-type", "application/json"),
        ];
        send(self.addr, method, "/secrets", &h, Some(body.as_bytes())).await
    }

    /// PUT, asserting success; returns the version.
    pub async fn put_ok(&self, path: &str, value: &str) -> u64 {
        let r = self.put(path, value).await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        r.json()["version"].as_u64().expect("version")
    }
}

/// Percent-encodes a query value (RFC 3986: a space is %20, `+` is %2B).
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The master key the PostgreSQL tests use (every replica needs the same).
pub const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Which store a test server runs on.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

/// The server the PostgreSQL tests use: SECRETD_TEST_DATABASE_URL, else the
/// local default.
pub fn pg_base_url() -> String {
    std::env::var("SECRETD_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` naming database `db` instead.
pub fn with_db(url: &str, db: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((m, q)) => (m, format!("?{q}")),
        None => (url, String::new()),
    };
    let host_start = main.find("://").map_or(0, |i| i + 3);
    let base = match main[host_start..].find('/') {
        Some(i) => &main[..host_start + i],
        None => main,
    };
    format!("{base}/{db}{query}")
}

/// A fresh database on the test server, dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub url: String,
    name: String,
}

/// A plain session on the database at `url` (its connection task spawned).
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

async fn admin_client() -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&pg_base_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

impl TestDb {
    /// Creates a database, or returns `None` (with a printed notice) when no
    /// server is reachable, unless SECRETD_REQUIRE_POSTGRES=1 (then panics).
    pub async fn create() -> Option<TestDb> {
        let client = match tokio::time::timeout(Duration::from_secs(5), admin_client()).await {
            Ok(Ok(c)) => c,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                if std::env::var("SECRETD_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!(
                        "PostgreSQL required (SECRETD_REQUIRE_POSTGRES=1) but unreachable: {why}"
                    );
                }
                eprintln!(
                    "notice: skipping a PostgreSQL test, no server reachable at the test URL: {why}"
                );
                return None;
            }
        };
        let mut rnd = [0u8; 6];
        getrandom::fill(&mut rnd).expect("random");
        let name = format!(
            "secretd_t_{}",
            rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        Some(TestDb {
            url: with_db(&pg_base_url(), &name),
            name,
        })
    }

    pub fn backend(&self) -> Backend {
        Backend::Postgres(self.url.clone())
    }

    /// Sets a default for every later session on this database
    /// (`ALTER DATABASE ... SET name = value`).
    pub async fn set_default(&self, name: &str, value: &str) {
        admin_client()
            .await
            .expect("connect")
            .batch_execute(&format!(
                "ALTER DATABASE {} SET {name} = '{value}'",
                self.name
            ))
            .await
            .expect("alter database");
    }

    pub async fn drop_db(self) {
        if let Ok(c) = admin_client().await {
            let _ = c
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}

/// Runs each named `async fn(Backend)` once on SQLite and once on a fresh
/// PostgreSQL database: `both_backends!(a, b)` makes tests `a::sqlite`,
/// `a::postgres`, ...
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread")]
                async fn sqlite() {
                    super::$name($crate::common::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn postgres() {
                    if let Some(db) = $crate::common::TestDb::create().await {
                        super::$name(db.backend()).await;
                        db.drop_db().await;
                    }
                }
            }
        )*
    };
}

/// An in-process server on a random port and a temp data dir.
pub struct TestServer {
    pub client: Client,
    pub backend: Backend,
    /// The embedded store's data dir (unused on PostgreSQL).
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start_on(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = ServeConfig::with_data_dir(dir.path().join("data"));
        cfg.api_keys = vec![
            SecretString::new(KEY.into()),
            SecretString::new(KEY2.into()),
        ];
        // Tests send many bad keys on purpose; the limiter has its own test.
        cfg.auth_fail_limit = 0;
        cfg.master_key = Some(SecretString::new(MASTER_KEY.into()));
        if let Backend::Postgres(url) = backend.clone() {
            cfg.store.database_url = Some(SecretString::new(url));
        }
        tweak(&mut cfg);
        let opened = secretd::bootstrap::open(&cfg).await.expect("open");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = AppState {
            service: opened.service,
            api_keys: opened.api_keys,
            max_body_bytes: cfg.max_body_bytes,
            body_timeout: cfg.body_timeout,
            request_timeout: cfg.request_timeout,
            limiter: std::sync::Arc::new(secretd::http::ratelimit::FailLimiter::new(
                cfg.auth_fail_limit,
                cfg.auth_fail_window,
                10_000,
            )),
            metrics: std::sync::Arc::new(secretd::metrics::Metrics::with_store_timings(
                std::sync::Arc::clone(&opened.store_timings),
            )),
            public_metrics: cfg.metrics_listen.is_none(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(secretd::http::serve(listener, state, async move {
            let _ = rx.await;
        }));
        TestServer {
            client: Client {
                addr,
                key: KEY.into(),
            },
            backend,
            data_dir: dir.path().join("data"),
            _dir: dir,
            shutdown: Some(tx),
        }
    }

    /// The store flags a CLI command needs to open this server's store.
    pub fn store_args(&self) -> Vec<String> {
        match &self.backend {
            Backend::Sqlite => vec!["--data-dir".into(), self.data_dir.display().to_string()],
            Backend::Postgres(url) => vec!["--database-url".into(), url.clone()],
        }
    }

    /// Runs `secretd <args> <store flags>`; returns (exit ok, stdout, stderr).
    /// A `secretd` command line on this server's store, with its master key.
    pub fn cli_command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(args)
            .args(self.store_args())
            .env_remove("SECRETD_DATABASE_URL")
            .env("SECRETD_MASTER_KEY", MASTER_KEY);
        cmd
    }

    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cli_command(args).output().expect("run secretd");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs SQL directly against this server's store (to tamper with it).
    pub async fn sql(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite => {
                let db =
                    rusqlite::Connection::open(self.data_dir.join("secretd.db")).expect("open");
                db.busy_timeout(Duration::from_secs(5)).expect("busy");
                db.execute_batch(sql).expect("sql");
            }
            Backend::Postgres(url) => {
                let c = pg_connect(url).await;
                c.batch_execute(sql).await.expect("sql");
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.client.addr
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Writes raw bytes on a fresh connection and reads until the server closes
/// it or `timeout` passes. Returns (status, body).
pub fn raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `secretd` as a child process, with its output captured.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_secretd")
}

fn pump(
    r: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
    tx: Option<std::sync::mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            let mut s = sink.lock().expect("lock");
            s.push_str(&line);
            s.push('\n');
        }
    });
}

impl Proc {
    /// Starts `secretd serve` on the data dir; `env` adds variables. Returns
    /// once the server logged its address.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::try_start(data_dir, env).unwrap_or_else(|e| panic!("secretd did not start: {e}"))
    }

    /// Like `start`, but returns the captured stderr if the process exits
    /// before it listens.
    pub fn try_start(data_dir: &Path, env: &[(&str, &str)]) -> Result<Self, String> {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env_remove("SECRETD_API_KEYS")
            .env_remove("SECRETD_MASTER_KEY")
            .env_remove("SECRETD_MASTER_KEY_FILE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Result<Self, String> {
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        pump(
            child.stdout.take().expect("stdout"),
            Arc::clone(&stdout),
            None,
        );
        pump(
            child.stderr.take().expect("stderr"),
            Arc::clone(&stderr),
            Some(tx),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(a) = line.split("addr=").nth(1) {
                        let a = a.split_whitespace().next().unwrap_or("");
                        if let Ok(addr) = a.parse() {
                            return Ok(Proc {
                                child,
                                addr,
                                stdout,
                                stderr,
                            });
                        }
                    }
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        std::thread::sleep(Duration::from_millis(100));
                        let err = stderr.lock().expect("lock").clone();
                        return Err(format!("exited with {status}: {err}"));
                    }
                }
            }
        }
        let _ = child.kill();
        Err("did not log its address within 30 s".into())
    }

    pub fn client(&self, key: &str) -> Client {
        Client {
            addr: self.addr,
            key: key.into(),
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (e.g. "TERM") without waiting.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status();
    }

    /// SIGTERM; returns the exit code.
    pub fn terminate(self) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Waits up to 20 s for the process to exit; its exit code.
    pub fn wait_exit(mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    /// Waits (up to 10 s) until stdout contains `needle`; returns stdout.
    pub fn wait_stdout(&self, needle: &str) -> String {
        wait_for(&self.stdout, needle)
    }

    /// Waits (up to 10 s) until stderr contains `needle`; returns stderr.
    pub fn wait_stderr(&self, needle: &str) -> String {
        wait_for(&self.stderr, needle)
    }
}

fn wait_for(sink: &Mutex<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = sink.lock().expect("lock").clone();
        if out.contains(needle) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `secretd <args> --data-dir <data>` with the data dir's own master
/// key; returns (exit ok, stdout, stderr).
pub fn cli_in(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("SECRETD_MASTER_KEY")
        .env_remove("SECRETD_MASTER_KEY_FILE")
        .output()
        .expect("run secretd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `needle` occurs in any file under `dir`.
pub fn dir_contains(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    files_under(dir).into_iter().find(|p| {
        std::fs::read(p)
            .map(|b| b.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    })
}

/// After a crash or an outage: every acknowledged (path, version, value)
/// reads back byte-identical, and every path in `paths` has all versions
/// from 1 to its latest (none lost, none skipped).
pub async fn verify_acknowledged(c: &Client, acked: &[(String, u64, String)], paths: &[String]) {
    for (path, v, value) in acked {
        let r = c.get(path, Some(&v.to_string())).await;
        assert_eq!(r.status, 200, "acknowledged {path} v{v} lost");
        assert_eq!(
            r.json()["value"].as_str(),
            Some(value.as_str()),
            "{path} v{v}"
        );
    }
    for path in paths {
        let latest = c.get(path, None).await.json()["version"]
            .as_u64()
            .unwrap_or(0);
        for v in 1..=latest {
            assert_eq!(
                c.get(path, Some(&v.to_string())).await.status,
                200,
                "{path} v{v} missing"
            );
        }
    }
}

/// The seed of a randomized goal of the fault-and-adversary suite (issue
/// #7): `SECRETD_TEST_SEED` if set (to replay a run), else a fresh random one.
/// Every goal prints it in its summary line.
pub fn test_seed() -> u64 {
    if let Some(s) = std::env::var("SECRETD_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return s;
    }
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random");
    u64::from_le_bytes(b)
}

/// Prints a goal's one-line JSON summary to stderr:
/// `{"goal":..,"runs":..,"violations":..,"seed":..}`.
pub fn goal_summary(goal: &str, runs: u64, violations: u64, seed: u64) {
    goal_line(goal, runs, violations, seed, serde_json::json!({}));
}

/// Prints (to stderr) and returns a goal's summary line with `extra`
/// figures added beside `{goal, runs, violations, seed}`.
pub fn goal_line(
    goal: &str,
    runs: u64,
    violations: u64,
    seed: u64,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut line =
        serde_json::json!({ "goal": goal, "runs": runs, "violations": violations, "seed": seed });
    if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            l.insert(k.clone(), v.clone());
        }
    }
    eprintln!("{line}");
    line
}

/// A small deterministic generator (SplitMix64) for test-side randomness
/// derived from [`test_seed`].
#[derive(Clone)]
pub struct SeedRng(u64);

impl SeedRng {
    pub fn new(seed: u64) -> Self {
        SeedRng(seed)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    /// An independent generator for one worker, derived from this one.
    pub fn fork(&mut self, salt: u64) -> SeedRng {
        SeedRng(self.next_u64() ^ salt.wrapping_mul(0xa076_1d64_78bd_642f))
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// [`goal_summary`] with extra figures, failing the test on any violation.
pub fn goal_report(
    goal: &str,
    runs: usize,
    violations: &[String],
    seed: u64,
    extra: serde_json::Value,
) {
    goal_line(goal, runs as u64, violations.len() as u64, seed, extra);
    assert!(violations.is_empty(), "{goal}: {violations:#?}");
}
