//! `secretd-bench` (`bench/run.sh`): a reproducible load benchmark of secretd against a
//! ceiling measured in the same run.
//!
//! It preloads a temp store (or a PostgreSQL database) with N secrets of a
//! few versions each, starts `secretd serve` as its own process, and drives
//! closed-loop HTTP/1.1 keep-alive load at concurrency C for T seconds per
//! workload (GET latest, GET by version, durable PUT, a 90/10 mix). The
//! ceiling is a bare server on the same HTTP stack (axum/hyper) answering
//! GET /secrets with a fixed body after the same API-key check and nothing
//! else. Every figure is reported as requests per second and as a ratio to
//! the ceiling, with p50/p99/p99.9 latency and the server's peak RSS.
//! The ceiling is measured in full first, then again for a quarter of the
//! workload time before each store size's first workload (after its
//! preload) and after every workload, each time once the secretd under
//! test has gone idle; each ratio divides by the mean of the ceilings
//! measured just before and just after it, since a shared machine's speed
//! drifts by a tenth within minutes.
//! Results go to `<out>/results.json`, `<out>/results.md` and, when Python
//! with matplotlib is available, `<out>/chart.png` (bench/chart.py).
//!
//! `secretd-bench ceiling --listen ADDR` runs the ceiling server itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::net::TcpStream;

const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Load benchmark of secretd against a same-stack ceiling"
)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Secrets to preload.
    #[arg(long, default_value_t = 10_000)]
    secrets: usize,
    /// Versions per preloaded secret.
    #[arg(long, default_value_t = 3)]
    versions: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per workload.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Extra store sizes for the latency-against-size series (comma-separated).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Run on this PostgreSQL database instead of the embedded store (it must be empty).
    #[arg(long, env = "SECRETD_BENCH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Skip the PNG chart.
    #[arg(long)]
    no_chart: bool,
    /// Run only these workloads at the main size (comma-separated:
    /// get_latest, get_version, put, mix_90_10), e.g. while profiling.
    /// Without get_latest the store-size series lacks the main size.
    #[arg(long, value_delimiter = ',', value_parser = parse_workload)]
    workloads: Vec<Workload>,
    /// Embedded store only: keep the main size's store in this directory and
    /// reuse it on the next run of the same --secrets and --versions instead
    /// of preloading again (a million secrets take minutes to preload). The
    /// directory must be new or empty the first time. Writes of earlier runs
    /// stay in it.
    #[arg(long)]
    keep_store: Option<PathBuf>,
}

/// Marks a `--keep-store` directory as a finished preload of this shape.
const KEPT_MARKER: &str = "bench-store.json";

/// Whether `dir` holds a finished preload of `shape` (reuse it), or does
/// not exist or is empty (preload into it). Anything else is refused: a
/// store of another shape, a preload cut short, or a directory that is not
/// the bench's (preloading would take it over).
fn kept_store_matches(dir: &std::path::Path, shape: &Value) -> anyhow::Result<bool> {
    let marker = dir.join(KEPT_MARKER);
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let found: Value = serde_json::from_str(&text)?;
        anyhow::ensure!(
            &found == shape,
            "{} holds a preload of {found}, not {shape}; pick another --keep-store directory",
            dir.display()
        );
        return Ok(true);
    }
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e.into()),
    };
    anyhow::ensure!(
        empty,
        "{} is not empty and holds no finished bench preload ({KEPT_MARKER}); \
         pass an empty or new directory to --keep-store",
        dir.display()
    );
    Ok(false)
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    ALL_WORKLOADS
        .iter()
        .copied()
        .find(|w| w.name() == s)
        .ok_or_else(|| format!("unknown workload {s:?}"))
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Run the ceiling server (used by the benchmark itself).
    Ceiling {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long, env = "SECRETD_API_KEYS")]
        api_key: String,
    },
}

/// A small, fast, seeded PRNG for picking paths (not for anything secret).
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn path_of(i: usize) -> String {
    format!("tfy-secret/bench/t{}/s{i:07}", i % 16)
}

fn value_of(rng: &mut Rng) -> String {
    let len = 32 + rng.below(4096 - 32);
    let mut s = String::with_capacity(len);
    while s.len() < len {
        s.push(char::from(b'a' + (rng.next() % 26) as u8));
    }
    s
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    GetLatest,
    GetVersion,
    Put,
    Mix,
}

const ALL_WORKLOADS: [Workload; 4] = [
    Workload::GetLatest,
    Workload::GetVersion,
    Workload::Put,
    Workload::Mix,
];

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::GetLatest => "get_latest",
            Workload::GetVersion => "get_version",
            Workload::Put => "put",
            Workload::Mix => "mix_90_10",
        }
    }
}

#[derive(Debug)]
struct Measured {
    requests: usize,
    errors: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// CPU time the server process spent per request (user + system, all
    /// threads): steadier than req/s on a noisy machine.
    cpu_us_per_req: f64,
    /// The same for this load generator, which shares the machine: the
    /// slower the server, the more of its time goes to waking up.
    client_cpu_us_per_req: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// Drives `workload` closed-loop at `concurrency` for `secs` against the
/// server process `pid` listening on `addr`.
#[allow(clippy::too_many_arguments)]
async fn drive(
    pid: u32,
    addr: SocketAddr,
    key: &str,
    workload: Workload,
    n: usize,
    versions: usize,
    concurrency: usize,
    secs: f64,
) -> anyhow::Result<Measured> {
    let cpu_before = cpu_seconds(pid);
    let client_before = cpu_seconds(std::process::id());
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let key: Arc<str> = Arc::from(key);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let key = Arc::clone(&key);
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut rng =
                Rng::new(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1).wrapping_mul(0x1000_0000_01b3));
            let mut lat = Vec::with_capacity(65_536);
            let mut errors = 0usize;
            while Instant::now() < deadline {
                let i = rng.below(n);
                let write = match workload {
                    Workload::Put => true,
                    Workload::Mix => rng.below(10) == 0,
                    _ => false,
                };
                let req = if write {
                    let body =
                        json!({ "path": path_of(i), "value": value_of(&mut rng) }).to_string();
                    Request::put("/secrets")
                        .header("host", "bench")
                        .header("x-api-key", &*key)
                        .header("content-type", "application/json")
                        .body(Body::from(body))?
                } else {
                    let uri = match workload {
                        Workload::GetVersion => format!(
                            "/secrets?path={}&version={}",
                            path_of(i),
                            1 + rng.below(versions)
                        ),
                        _ => format!("/secrets?path={}", path_of(i)),
                    };
                    Request::get(uri)
                        .header("host", "bench")
                        .header("x-api-key", &*key)
                        .body(Body::empty())?
                };
                let start = Instant::now();
                sender.ready().await?;
                let res = sender.send_request(req).await?;
                let ok = res.status() == StatusCode::OK;
                let _ = res.into_body().collect().await?;
                lat.push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
                if !ok {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await??;
        all.extend(lat);
        errors += e;
    }
    // Read before sorting: the sort is not load.
    let server_cpu = cpu_seconds(pid) - cpu_before;
    let client_cpu = cpu_seconds(std::process::id()) - client_before;
    all.sort_unstable();
    Ok(Measured {
        requests: all.len(),
        errors,
        rps: all.len() as f64 / secs,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        p999_ms: percentile(&all, 0.999),
        cpu_us_per_req: per_request(server_cpu, all.len()),
        client_cpu_us_per_req: per_request(client_cpu, all.len()),
    })
}

/// CPU microseconds per request, to one decimal.
fn per_request(cpu_secs: f64, requests: usize) -> f64 {
    (cpu_secs * 1e6 / requests.max(1) as f64 * 10.0).round() / 10.0
}

/// CPU seconds (user + system, every thread) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    // Fields 14 and 15 of /proc/PID/stat, counted after the command name
    // (which may hold spaces), in USER_HZ ticks: 100 per second on Linux.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// Peak resident set size of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A child server process that logged `addr=...`.
struct Server {
    child: Child,
    addr: SocketAddr,
    ready_after: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(mut cmd: Command) -> anyhow::Result<Server> {
    use std::io::BufRead;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().context("server exited before listening")??;
        if let Some(a) = line
            .split("addr=")
            .nth(1)
            .and_then(|a| a.split_whitespace().next())
        {
            break a.parse::<SocketAddr>()?;
        }
    };
    // keep draining stderr so the server never blocks on it
    std::thread::spawn(move || for _ in lines {});
    Ok(Server {
        child,
        addr,
        ready_after: started.elapsed(),
    })
}

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..500 {
        if let Ok(s) = TcpStream::connect(addr).await {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await?;
            tokio::spawn(conn);
            let r = sender
                .send_request(
                    Request::get("/readyz")
                        .header("host", "bench")
                        .body(Body::empty())?,
                )
                .await?;
            if r.status() == StatusCode::OK {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("server never became ready")
}

/// The `secretd` binary of the same build.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("exe dir")?;
    let here = dir.join(name);
    if here.exists() {
        return Ok(here);
    }
    Ok(dir.parent().context("target dir")?.join(name))
}

/// Preloads `n` secrets with `versions` versions each, in-process.
async fn preload(
    data_dir: &Path,
    url: Option<&str>,
    n: usize,
    versions: usize,
) -> anyhow::Result<()> {
    let mut cfg = secretd::config::ServeConfig::with_data_dir(data_dir.to_path_buf());
    cfg.master_key = Some(secretd::config::SecretString::new(MASTER_KEY.into()));
    cfg.api_keys = vec![secretd::config::SecretString::new(
        "preload-key-000000".into(),
    )];
    cfg.store.database_url = url.map(|u| secretd::config::SecretString::new(u.to_owned()));
    let opened = secretd::bootstrap::open(&cfg).await?;
    let svc = opened.service;
    let ctx = secretd::service::RequestCtx::operator();
    let sem = Arc::new(tokio::sync::Semaphore::new(512));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let (svc, ctx) = (Arc::clone(&svc), ctx.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let mut rng = Rng::new(i as u64 + 7);
            let path = secretd::path::SecretPath::parse(&path_of(i))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for _ in 0..versions {
                let v = secretd::wipe::WipedString::new(value_of(&mut rng));
                svc.put(&ctx, path.clone(), v)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            anyhow::Ok(())
        });
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

async fn ceiling(listen: &str, key: String) -> anyhow::Result<()> {
    use axum::routing::get;
    let keys = Arc::new(secretd::auth::ApiKeys::new(
        vec![(
            "static-1".into(),
            secretd::auth::KeyHash::of(key.as_bytes()),
        )],
        Vec::new(),
    ));
    let body: &'static str = r#"{"path":"tfy-secret/bench/t0/s0000000","version":1,"value":"ceiling-value-of-a-realistic-length-0123456789"}"#;
    let app = axum::Router::new().route(
        "/secrets",
        get(move |headers: axum::http::HeaderMap| {
            let keys = Arc::clone(&keys);
            async move {
                if keys.authenticate(&headers).is_some() {
                    (StatusCode::OK, [("content-type", "application/json")], body)
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        [("content-type", "application/json")],
                        r#"{"error":{}}"#,
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("ceiling listening addr={}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

fn row(name: &str, m: &Measured, ceiling_rps: f64, rss: f64) -> Value {
    json!({
        "workload": name,
        "requests": m.requests,
        "errors": m.errors,
        "rps": m.rps.round(),
        "ratio_to_ceiling": ratio(m.rps, ceiling_rps),
        "ceiling_rps": ceiling_rps.round(),
        "p50_ms": m.p50_ms,
        "p99_ms": m.p99_ms,
        "p999_ms": m.p999_ms,
        "peak_rss_mib": (rss * 10.0).round() / 10.0,
        "server_cpu_us_per_req": m.cpu_us_per_req,
        "client_cpu_us_per_req": m.client_cpu_us_per_req,
    })
}

/// `rps` as a share of `ceiling_rps`, to three places.
fn ratio(rps: f64, ceiling_rps: f64) -> f64 {
    (rps / ceiling_rps * 1000.0).round() / 1000.0
}

/// The ceiling server, running for the whole benchmark, and the throughput
/// it showed at its last measurement.
struct Ceiling {
    server: Server,
    last_rps: f64,
    /// Every short re-measurement, in order (for results.json).
    checks: Vec<f64>,
}

impl Ceiling {
    /// Measures the ceiling again for `secs`, once `busy` (the secretd
    /// under test, finishing a checkpoint or a sync) has gone idle.
    async fn measure(
        &mut self,
        busy: u32,
        key: &str,
        args: &Args,
        secs: f64,
    ) -> anyhow::Result<f64> {
        wait_idle(busy).await;
        let m = drive(
            self.server.child.id(),
            self.server.addr,
            key,
            Workload::GetLatest,
            args.secrets,
            1,
            args.concurrency,
            secs,
        )
        .await?;
        self.checks.push(m.rps.round());
        Ok(m.rps)
    }

    /// The ceiling to divide the workload just run by: the mean of the
    /// measurements before and after it.
    async fn around_last(
        &mut self,
        busy: u32,
        key: &str,
        args: &Args,
        secs: f64,
    ) -> anyhow::Result<f64> {
        let after = self.measure(busy, key, args, secs).await?;
        let reference = (self.last_rps + after) / 2.0;
        self.last_rps = after;
        Ok(reference)
    }
}

/// Waits (at most 5 s) until process `pid` used no CPU for 100 ms.
async fn wait_idle(pid: u32) {
    let mut before = cpu_seconds(pid);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = cpu_seconds(pid);
        if now == before {
            return;
        }
        before = now;
    }
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    let key = "bench-key-0123456789abcdef0123";
    let backend = if args.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    anyhow::ensure!(
        args.keep_store.is_none() || args.database_url.is_none(),
        "--keep-store is for the embedded store"
    );
    let mut seen = Vec::new();
    args.workloads.retain(|w| {
        let first = !seen.contains(w);
        seen.push(*w);
        first
    });
    std::fs::create_dir_all(&args.out)?;
    let secretd = sibling("secretd")?;
    anyhow::ensure!(
        secretd.exists(),
        "{} not found; build it first (cargo build --release)",
        secretd.display()
    );

    let mut sizes: Vec<usize> = args.sizes.clone();
    if !sizes.contains(&args.secrets) {
        sizes.push(args.secrets);
    }
    sizes.sort_unstable();

    // The ceiling, measured in this run on this machine.
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["ceiling", "--listen", "127.0.0.1:0"])
        .env("SECRETD_API_KEYS", key);
    let ceiling_server = spawn(cmd)?;
    let ceil = drive(
        ceiling_server.child.id(),
        ceiling_server.addr,
        key,
        Workload::GetLatest,
        args.secrets,
        1,
        args.concurrency,
        args.seconds,
    )
    .await?;
    let ceiling_rss = peak_rss_mib(ceiling_server.child.id());
    let mut ceiling = Ceiling {
        server: ceiling_server,
        last_rps: ceil.rps,
        checks: Vec::new(),
    };
    let check_secs = (args.seconds / 4.0).max(0.25);
    eprintln!(
        "ceiling: {:.0} req/s, p99 {:.2} ms, server CPU {:.1} us/req, load generator CPU {:.1} us/req",
        ceil.rps, ceil.p99_ms, ceil.cpu_us_per_req, ceil.client_cpu_us_per_req
    );

    let mut rows = vec![row("ceiling", &ceil, ceil.rps, ceiling_rss)];
    let mut by_size = Vec::new();
    let mut startup = Value::Null;
    for &n in &sizes {
        let dir = tempfile::tempdir()?;
        let kept = args.keep_store.as_ref().filter(|_| n == args.secrets);
        let data = kept.cloned().unwrap_or_else(|| dir.path().join("data"));
        let shape = json!({ "secrets": n, "versions": args.versions });
        if kept.is_some() && kept_store_matches(&data, &shape)? {
            eprintln!("reusing the store in {}", data.display());
        } else {
            let t = Instant::now();
            preload(&data, args.database_url.as_deref(), n, args.versions).await?;
            eprintln!(
                "preloaded {n} secrets x {} versions in {:.1}s",
                args.versions,
                t.elapsed().as_secs_f64()
            );
            if kept.is_some() {
                // Written last: a preload cut short leaves no marker.
                std::fs::write(data.join(KEPT_MARKER), shape.to_string())?;
            }
        }
        let mut cmd = Command::new(&secretd);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("SECRETD_API_KEYS", key)
            .env("SECRETD_MASTER_KEY", MASTER_KEY)
            .env("SECRETD_AUTH_FAIL_LIMIT", "0")
            .env("RUST_LOG", "warn,secretd::cli=info");
        if let Some(u) = &args.database_url {
            cmd.env("SECRETD_DATABASE_URL", u);
        }
        let server = spawn(cmd)?;
        wait_ready(server.addr).await?;
        let ready = server.ready_after;
        let pid = server.child.id();
        // The ceiling just before this size's first workload: the preload
        // and the start-up have run since the last measurement.
        ceiling.last_rps = ceiling.measure(pid, key, &args, check_secs).await?;
        let workloads: &[Workload] = if n == args.secrets {
            if args.workloads.is_empty() {
                &ALL_WORKLOADS
            } else {
                &args.workloads
            }
        } else {
            &[Workload::GetLatest]
        };
        for &w in workloads {
            let m = drive(
                pid,
                server.addr,
                key,
                w,
                n,
                args.versions,
                args.concurrency,
                args.seconds,
            )
            .await?;
            let rss = peak_rss_mib(pid);
            let around = ceiling.around_last(pid, key, &args, check_secs).await?;
            eprintln!(
                "{n} secrets, {}: {:.0} req/s ({:.2} of the ceiling's {around:.0} around it), p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, {} errors, peak RSS {:.1} MiB, server CPU {:.1} us/req, load generator CPU {:.1} us/req",
                w.name(),
                m.rps,
                m.rps / around,
                m.p50_ms,
                m.p99_ms,
                m.p999_ms,
                m.errors,
                rss,
                m.cpu_us_per_req,
                m.client_cpu_us_per_req
            );
            if w == Workload::GetLatest {
                by_size.push(json!({
                    "secrets": n, "rps": m.rps.round(), "ratio_to_ceiling": ratio(m.rps, around), "ceiling_rps": around.round(),
                    "p50_ms": m.p50_ms, "p99_ms": m.p99_ms, "peak_rss_mib": (rss * 10.0).round() / 10.0,
                    "server_cpu_us_per_req": m.cpu_us_per_req,
                    "startup_to_ready_ms": ready.as_millis(),
                }));
            }
            if n == args.secrets {
                rows.push(row(w.name(), &m, around, rss));
                startup = json!(ready.as_millis());
            }
        }
        drop(server);
    }

    let result = json!({
        "backend": backend,
        "secrets": args.secrets,
        "versions": args.versions,
        "concurrency": args.concurrency,
        "seconds_per_workload": args.seconds,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "log_level": "warn",
        "audit": "on",
        "encryption": "on",
        "startup_to_ready_ms": startup,
        "workloads": rows,
        "by_store_size": by_size,
        "ceiling_rechecks_rps": ceiling.checks,
    });
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&result)? + "\n",
    )?;
    let mut md = format!(
        "Backend {backend}, {} secrets x {} versions, concurrency {}, {} s per workload, {} cores, encryption and audit on.\n\n\
         | workload | req/s | ratio to ceiling | ceiling req/s around it | p50 ms | p99 ms | p99.9 ms | errors | peak RSS MiB | server CPU µs/req | load generator CPU µs/req |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        args.secrets, args.versions, args.concurrency, args.seconds, result["cores"]
    );
    for r in result["workloads"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["workload"].as_str().unwrap_or(""),
            r["rps"],
            r["ratio_to_ceiling"],
            r["ceiling_rps"],
            r["p50_ms"],
            r["p99_ms"],
            r["p999_ms"],
            r["errors"],
            r["peak_rss_mib"],
            r["server_cpu_us_per_req"],
            r["client_cpu_us_per_req"]
        ));
    }
    if by_size.len() > 1 {
        md.push_str("\n| secrets | GET latest req/s | ratio | ceiling req/s around it | p50 ms | p99 ms | peak RSS MiB | start-up to ready ms |\n|---|---|---|---|---|---|---|---|\n");
        for r in &by_size {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r["secrets"],
                r["rps"],
                r["ratio_to_ceiling"],
                r["ceiling_rps"],
                r["p50_ms"],
                r["p99_ms"],
                r["peak_rss_mib"],
                r["startup_to_ready_ms"]
            ));
        }
    }
    std::fs::write(args.out.join("results.md"), &md)?;
    println!("{md}");
    if !args.no_chart {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/chart.py");
        let status = Command::new("python3")
            .arg(&script)
            .arg(args.out.join("results.json"))
            .arg(args.out.join("chart.png"))
            .status();
        match status {
            Ok(s) if s.success() => eprintln!("chart: {}", args.out.join("chart.png").display()),
            _ => eprintln!(
                "no chart: run `pip install matplotlib` and `python3 bench/chart.py {0}/results.json {0}/chart.png`",
                args.out.display()
            ),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async move {
        match args.mode {
            Some(Mode::Ceiling { listen, api_key }) => ceiling(&listen, api_key).await,
            None => run(args).await,
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
