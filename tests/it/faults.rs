//! Faults on the real binary (issue #7, goals 1, 2 and 10):
//!
//! * crash durability: SIGKILL at random moments and at fail points inside
//!   the write path (`sqlite-before-commit`, `sqlite-after-commit`,
//!   `sqlite-between-jobs`), then an integrity check and a read-back of
//!   everything acknowledged;
//! * power-loss discipline: under strace, every 200 to a PUT follows an
//!   fsync of the WAL that covers that PUT's frames; and the start-up
//!   refusal of `synchronous=NORMAL`;
//! * a full disk (a small tmpfs): 5xx, never a false 2xx, and recovery
//!   without a restart once space is back.
//!
//! All randomness comes from one seed (SECRETD_TEST_SEED, else random),
//! printed first. Each goal ends with one JSON line on stderr.
//! SECRETD_LONG_TESTS=1 runs the long variants.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

/// The run's seed: SECRETD_TEST_SEED, else a random one; printed.
fn seed(goal: &str) -> u64 {
    let s = match std::env::var("SECRETD_TEST_SEED") {
        Ok(v) => v.trim().parse().expect("SECRETD_TEST_SEED is a u64"),
        Err(_) => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).expect("random");
            u64::from_le_bytes(b) >> 1
        }
    };
    eprintln!("{goal}: seed {s} (replay with SECRETD_TEST_SEED={s})");
    s
}

fn long_tests() -> bool {
    std::env::var("SECRETD_LONG_TESTS").as_deref() == Ok("1")
}

/// SplitMix64: small, seedable, good enough to pick moments and paths.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn fork(&mut self, salt: u64) -> Rng {
        Rng(self.next() ^ salt.wrapping_mul(0xa076_1d64_78bd_642f))
    }
}

/// One request that may fail because the server died or hung: `None` then.
/// A status counts only with its whole body read.
async fn try_send(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    body: Option<String>,
    timeout: Duration,
) -> Option<(u16, Vec<u8>)> {
    use http_body_util::{BodyExt, Full};
    let go = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "x")
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .body(Full::new(hyper::body::Bytes::from(
                body.unwrap_or_default(),
            )))
            .ok()?;
        let res = sender.send_request(req).await.ok()?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.ok()?.to_bytes().to_vec();
        Some((status, body))
    };
    tokio::time::timeout(timeout, go).await.ok().flatten()
}

/// Opens the database read-only and runs `PRAGMA integrity_check`.
fn integrity_check(data: &Path) -> Result<(), String> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("secretd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .map_err(|e| format!("open read-only: {e}"))?;
    let rows: Vec<String> = db
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()
        })
        .map_err(|e| format!("integrity_check: {e}"))?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(format!("integrity_check: {rows:?}"))
    }
}

// ---------------------------------------------------------------------------
// Goal 1: crash durability
// ---------------------------------------------------------------------------

/// Where a cycle's SIGKILL lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KillAt {
    /// A random moment of the load.
    Random,
    /// The writer thread sleeps at this fail point; killed while it does.
    Point(&'static str),
}

const POINTS: [&str; 3] = [
    "sqlite-before-commit",
    "sqlite-after-commit",
    "sqlite-between-jobs",
];

/// What the clients know. A write is acknowledged only once its full 2xx
/// body was read; anything else sent is "unknown" until the next restart
/// shows whether it is there (then it is as durable as an acknowledged one)
/// or not (then it must never appear).
#[derive(Default)]
struct Model {
    /// (path, version) -> value, acknowledged (or found after a restart).
    puts: BTreeMap<(String, u64), String>,
    /// Versions whose delete was acknowledged (or found done).
    deleted: HashSet<(String, u64)>,
    /// PUTs sent this cycle without an acknowledgement: path -> values.
    unknown_puts: HashMap<String, Vec<String>>,
    /// DELETEs of one version sent this cycle without an acknowledgement.
    unknown_deletes: HashSet<(String, u64)>,
    /// Acknowledged this cycle (read back in full after the restart).
    fresh: Vec<(String, u64)>,
    acked_puts: u64,
    acked_deletes: u64,
}

struct Violations(Mutex<Vec<String>>);

impl Violations {
    fn new() -> Self {
        Violations(Mutex::new(Vec::new()))
    }
    fn add(&self, v: String) {
        eprintln!("VIOLATION: {v}");
        self.0.lock().expect("lock").push(v);
    }
    fn count(&self) -> usize {
        self.0.lock().expect("lock").len()
    }
}

const PATHS: u64 = 24;

fn crash_path(k: u64) -> String {
    format!("tfy-secret/crash/p{k:02}")
}

/// One client: PUTs of unique values (and some DELETEs of acknowledged
/// versions) until `stop`.
async fn crash_client(
    addr: SocketAddr,
    mut rng: Rng,
    tag: String,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let path = crash_path(rng.range(0, PATHS));
        let target = if rng.range(0, 10) == 0 {
            let m = model.lock().expect("lock");
            let live: Vec<u64> = m
                .puts
                .range((path.clone(), 0)..=(path.clone(), u64::MAX))
                .map(|((_, v), _)| *v)
                .filter(|v| {
                    let k = (path.clone(), *v);
                    !m.deleted.contains(&k) && !m.unknown_deletes.contains(&k)
                })
                .collect();
            (!live.is_empty()).then(|| live[rng.range(0, live.len() as u64) as usize])
        } else {
            None
        };
        if let Some(v) = target {
            let key = (path.clone(), v);
            model
                .lock()
                .expect("lock")
                .unknown_deletes
                .insert(key.clone());
            let body = json!({ "path": path, "version": v }).to_string();
            let r = try_send(
                addr,
                "DELETE",
                "/secrets",
                Some(body),
                Duration::from_secs(90),
            )
            .await;
            progress.fetch_add(1, Ordering::Relaxed);
            let ok = r.as_ref().is_some_and(|(s, b)| {
                *s == 200
                    && serde_json::from_slice::<Value>(b).is_ok_and(|j| j["deleted"] == json!(true))
            });
            if ok {
                let mut m = model.lock().expect("lock");
                m.unknown_deletes.remove(&key);
                m.deleted.insert(key);
                m.acked_deletes += 1;
            } else if r.is_none() {
                break;
            }
            continue;
        }
        let filler = "x".repeat(rng.range(0, 300) as usize);
        let value = format!("{tag}-i{i}-{:016x}-{filler}", rng.next());
        model
            .lock()
            .expect("lock")
            .unknown_puts
            .entry(path.clone())
            .or_default()
            .push(value.clone());
        let body = json!({ "path": path, "value": value }).to_string();
        let r = try_send(addr, "PUT", "/secrets", Some(body), Duration::from_secs(90)).await;
        progress.fetch_add(1, Ordering::Relaxed);
        let version = r.as_ref().and_then(|(s, b)| {
            (*s == 200)
                .then(|| serde_json::from_slice::<Value>(b).ok())
                .flatten()
                .and_then(|j| j["version"].as_u64())
        });
        match version {
            Some(v) => {
                let mut m = model.lock().expect("lock");
                if let Some(u) = m.unknown_puts.get_mut(&path) {
                    u.retain(|x| *x != value);
                }
                m.puts.insert((path.clone(), v), value);
                m.fresh.push((path, v));
                m.acked_puts += 1;
            }
            // A refusal or error stays unknown; a dead server ends the client.
            None if r.is_none() => break,
            None => {}
        }
    }
}

/// After a restart: the store's view of every path against the model.
/// Resolves the cycle's unknown writes (present -> durable from now on).
async fn verify_after_restart(
    c: &Client,
    model: &Mutex<Model>,
    rng: &mut Rng,
    sample: usize,
    full: bool,
    viol: &Violations,
) -> (u64, u64) {
    let (mut present, mut absent) = (0u64, 0u64);
    let mut m = std::mem::take(&mut *model.lock().expect("lock"));
    for k in 0..PATHS {
        let path = crash_path(k);
        let r = c
            .get_uri(&format!("/secrets?path={}&metadata=true", enc(&path)))
            .await;
        let versions: Vec<(u64, bool)> = match r.status {
            200 => r.json()["versions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|v| {
                    (
                        v["version"].as_u64().unwrap_or(0),
                        !v["deleted_at"].is_null(),
                    )
                })
                .collect(),
            404 => Vec::new(),
            s => {
                viol.add(format!("metadata of {path}: status {s}"));
                continue;
            }
        };
        // contiguous: exactly 1..=last, each live or tombstoned
        for (i, (v, _)) in versions.iter().enumerate() {
            if *v != i as u64 + 1 {
                viol.add(format!("{path}: versions not contiguous: {versions:?}"));
                break;
            }
        }
        let state: HashMap<u64, bool> = versions.iter().copied().collect();
        let acked: Vec<u64> = m
            .puts
            .range((path.clone(), 0)..=(path.clone(), u64::MAX))
            .map(|((_, v), _)| *v)
            .collect();
        for v in &acked {
            let key = (path.clone(), *v);
            match state.get(v) {
                None => viol.add(format!("acknowledged {path} v{v} lost")),
                Some(true) if m.unknown_deletes.remove(&key) => {
                    m.deleted.insert(key);
                }
                Some(true) if !m.deleted.contains(&key) => {
                    viol.add(format!("{path} v{v} deleted but never asked to be"))
                }
                Some(false) if m.deleted.contains(&key) => {
                    viol.add(format!("acknowledged delete of {path} v{v} lost"))
                }
                _ => {}
            }
        }
        // every version nobody acknowledged must be a whole in-flight PUT
        let acked: HashSet<u64> = acked.into_iter().collect();
        let mut candidates = m.unknown_puts.remove(&path).unwrap_or_default();
        for &(v, dead) in &versions {
            if acked.contains(&v) {
                continue;
            }
            if dead {
                viol.add(format!("{path} v{v}: unacknowledged and tombstoned"));
                continue;
            }
            let r = c.get(&path, Some(&v.to_string())).await;
            let got = (r.status == 200)
                .then(|| r.json()["value"].as_str().map(str::to_owned))
                .flatten();
            match got.and_then(|g| candidates.iter().position(|x| *x == g)) {
                Some(i) => {
                    present += 1;
                    let value = candidates.swap_remove(i);
                    m.puts.insert((path.clone(), v), value);
                }
                None => viol.add(format!(
                    "{path} v{v}: not a value any in-flight PUT sent (status {})",
                    r.status
                )),
            }
        }
        absent += candidates.len() as u64;
    }
    // deletes in flight to versions that stayed live: simply not done
    m.unknown_deletes.clear();
    // read back values: this cycle's acknowledgements, a sample of older
    // ones (all of them when `full`)
    let fresh: HashSet<(String, u64)> = std::mem::take(&mut m.fresh).into_iter().collect();
    let mut to_read: Vec<(String, u64)> = fresh.iter().cloned().collect();
    let older: Vec<&(String, u64)> = m.puts.keys().filter(|k| !fresh.contains(*k)).collect();
    if full {
        to_read.extend(older.into_iter().cloned());
    } else if !older.is_empty() {
        for _ in 0..sample {
            to_read.push(older[rng.range(0, older.len() as u64) as usize].clone());
        }
    }
    let jobs: Vec<(String, u64, Option<String>)> = to_read
        .into_iter()
        .map(|k| {
            let want = (!m.deleted.contains(&k)).then(|| m.puts[&k].clone());
            (k.0, k.1, want)
        })
        .collect();
    let jobs = Arc::new(Mutex::new(jobs));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, jobs) = (c.clone(), Arc::clone(&jobs));
        tasks.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            loop {
                let Some((path, v, want)) = jobs.lock().expect("lock").pop() else {
                    break;
                };
                let r = c.get(&path, Some(&v.to_string())).await;
                match want {
                    Some(want) => {
                        let got = (r.status == 200)
                            .then(|| r.json()["value"].as_str().map(str::to_owned))
                            .flatten();
                        if got.as_deref() != Some(want.as_str()) {
                            bad.push(format!(
                                "acknowledged {path} v{v} does not read back (status {})",
                                r.status
                            ));
                        }
                    }
                    None if r.status != 404 => {
                        bad.push(format!("deleted {path} v{v} reads: {}", r.status))
                    }
                    None => {}
                }
            }
            bad
        }));
    }
    for t in tasks {
        for b in t.await.expect("reader") {
            viol.add(b);
        }
    }
    *model.lock().expect("lock") = m;
    (present, absent)
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_durability() {
    let seed = seed("crash_durability");
    let mut rng = Rng(seed);
    let cycles = if long_tests() { 200 } else { 30 };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let model: Arc<Mutex<Model>> = Arc::default();
    let viol = Violations::new();
    let mut kills: BTreeMap<String, u64> = BTreeMap::new();
    let (mut present, mut absent) = (0u64, 0u64);
    let started = Instant::now();
    for cycle in 0..cycles {
        let at = match cycle % 4 {
            0 => KillAt::Random,
            n => KillAt::Point(POINTS[n as usize - 1]),
        };
        let mut env = vec![("SECRETD_API_KEYS", KEY.to_owned())];
        if let KillAt::Point(name) = at {
            // pass the point this many times, then hang in it
            let skip = match name {
                "sqlite-between-jobs" => rng.range(0, 40),
                _ => rng.range(1, 60),
            };
            env.push(("FAILPOINTS", format!("{name}={skip}*off->sleep(60000)")));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let p = Proc::start(&data, &env);
        let addr = p.addr;
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..16 {
            tasks.push(tokio::spawn(crash_client(
                addr,
                rng.fork(w),
                format!("s{seed}-c{cycle}-w{w}"),
                Arc::clone(&model),
                Arc::clone(&stop),
                Arc::clone(&progress),
            )));
        }
        let load = Duration::from_millis(rng.range(150, 900));
        let t0 = Instant::now();
        let how = match at {
            KillAt::Random => {
                tokio::time::sleep(load).await;
                "random".to_owned()
            }
            KillAt::Point(name) => {
                // a writer asleep at the point stops every write: no
                // answer for 300 ms while 16 clients are busy means we are
                // there (or load ran out: then it is a random-moment kill)
                let mut last = (progress.load(Ordering::Relaxed), Instant::now());
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let n = progress.load(Ordering::Relaxed);
                    if n != last.0 {
                        last = (n, Instant::now());
                    } else if last.1.elapsed() >= Duration::from_millis(300) {
                        break name.to_owned();
                    }
                    if t0.elapsed() > load + Duration::from_secs(2) {
                        break format!("{name}-not-reached");
                    }
                }
            }
        };
        *kills.entry(how).or_default() += 1;
        p.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("client");
        }
        if let Err(e) = integrity_check(&data) {
            viol.add(format!("cycle {cycle}: {e}"));
        }
        let p = Proc::start(&data, &[("SECRETD_API_KEYS", KEY)]);
        let last = cycle + 1 == cycles;
        let (pr, ab) =
            verify_after_restart(&p.client(KEY), &model, &mut rng, 50, last, &viol).await;
        present += pr;
        absent += ab;
        drop(p);
    }
    let m = model.lock().expect("lock");
    let summary = json!({
        "goal": "crash_durability",
        "runs": cycles,
        "violations": viol.count(),
        "seed": seed,
        "acked_puts": m.acked_puts,
        "acked_deletes": m.acked_deletes,
        "versions_verified_at_end": m.puts.len(),
        "in_flight_present": present,
        "in_flight_absent": absent,
        "kills": kills,
        "secs": started.elapsed().as_secs_f64().round(),
    });
    eprintln!("{summary}");
    assert_eq!(viol.count(), 0, "see VIOLATION lines above");
    assert!(
        m.acked_puts >= cycles as u64 * 20,
        "too little load: {summary}"
    );
}
