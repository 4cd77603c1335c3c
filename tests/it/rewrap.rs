//! `secretd key rotate --rewrap` / `key rewrap`: re-encrypting old versions
//! under the newest data key beside a running server, on both backends.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::both_backends;
use crate::common::{Backend, MASTER_KEY, TestServer, bin, pg_connect};

/// Every version row: (path, version) -> envelope (`None` for a tombstone).
type Rows = BTreeMap<(String, i64), Option<Vec<u8>>>;

const ROWS_SQL: &str =
    "SELECT s.path, v.version, v.envelope FROM versions v JOIN secrets s ON s.id = v.secret_id";

async fn rows(s: &TestServer) -> Rows {
    match &s.backend {
        Backend::Sqlite => {
            let db = rusqlite::Connection::open(s.data_dir.join("secretd.db")).expect("open");
            let mut st = db.prepare(ROWS_SQL).expect("prepare");
            st.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
                .expect("query")
                .map(|r| r.expect("row"))
                .collect()
        }
        Backend::Postgres(url) => {
            let c = pg_connect(url).await;
            c.query(ROWS_SQL, &[])
                .await
                .expect("query")
                .iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect()
        }
    }
}

fn generation(envelope: &[u8]) -> u32 {
    u32::from_be_bytes([envelope[1], envelope[2], envelope[3], envelope[4]])
}

/// The generations of the live envelopes, and how many rows are tombstones.
fn generations(rows: &Rows) -> (BTreeSet<u32>, usize) {
    let live = rows.values().flatten().map(|e| generation(e)).collect();
    (live, rows.values().filter(|e| e.is_none()).count())
}

fn value(p: usize, v: usize) -> String {
    format!("välue {p}/{v} \"quoted\" \\ {}", "x".repeat(p * 7 + v))
}

/// Seeds `paths` secrets with `versions` versions each; returns the values.
async fn seed(s: &TestServer, prefix: &str, paths: usize, versions: usize) -> Vec<String> {
    let mut names = Vec::new();
    for p in 0..paths {
        let path = format!("tfy-secret/{prefix}/s{p:03}");
        for v in 1..=versions {
            assert_eq!(s.client.put_ok(&path, &value(p, v)).await, v as u64);
        }
        names.push(path);
    }
    names
}

async fn assert_value(s: &TestServer, path: &str, v: i64, want: &str) {
    let r = s.client.get(path, Some(&v.to_string())).await;
    assert_eq!(
        r.status,
        200,
        "{path} v{v}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["value"].as_str(), Some(want), "{path} v{v}");
}

async fn rewraps_every_live_version(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let names = seed(&s, "rw", 5, 3).await;
    // tombstones: one version of s000, every version of s003
    assert_eq!(
        s.client
            .delete(&names[0], Some(serde_json::json!(2)))
            .await
            .status,
        200
    );
    assert_eq!(s.client.delete(&names[3], None).await.status, 200);
    let before = rows(&s).await;
    assert_eq!(generations(&before), ([1].into(), 4));

    let (ok, out, err) = s.cli(&["key", "rotate", "--rewrap", "--batch", "2", "--pause", "0s"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("generation 2 is active"), "{out}");
    assert!(out.contains("rewrapped 11/11"), "{out}");
    assert!(
        out.contains("done: 11 version(s) re-encrypted under generation 2"),
        "{out}"
    );
    for (p, name) in names.iter().enumerate() {
        assert!(
            !out.contains(name) && !err.contains(name),
            "a path was printed"
        );
        for v in 1..=3 {
            assert!(!out.contains(&value(p, v)) && !err.contains(&value(p, v)));
        }
    }

    let after = rows(&s).await;
    assert_eq!(generations(&after), ([2].into(), 4), "{after:?}");
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "versions changed"
    );
    for (k, old) in &before {
        match (old, &after[k]) {
            (None, None) => {}
            (Some(o), Some(n)) => assert_ne!(o, n, "{k:?} not re-sealed"),
            _ => panic!("{k:?} changed between live and deleted"),
        }
    }
    // every live version reads back byte-identical; tombstones stay deleted
    for (p, name) in names.iter().enumerate() {
        for v in 1..=3i64 {
            if after[&(name.clone(), v)].is_some() {
                assert_value(&s, name, v, &value(p, v as usize)).await;
            } else {
                let r = s.client.get(name, Some(&v.to_string())).await;
                assert_eq!(r.status, 404, "{name} v{v} came back");
            }
        }
    }
    assert_eq!(s.client.get(&names[0], None).await.json()["version"], 3);
    let (ok, out, err) = s.cli(&["key", "status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("generation 1\t") && out.contains("seals 0 live"),
        "{out}"
    );
    assert!(
        out.contains("generation 2 (active)") && out.contains("seals 11 live"),
        "{out}"
    );
    // new versions continue the same counters
    assert_eq!(s.client.put_ok(&names[3], "again").await, 4);
    let (ok, out, err) = s.cli(&["audit", "verify"]);
    assert!(ok, "{out}{err}");
}

async fn resumes_after_an_interruption(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let names = seed(&s, "resume", 4, 3).await;
    let (ok, _, err) = s.cli(&["key", "rotate"]);
    assert!(ok, "{err}");
    let (ok, out, err) = s.cli(&[
        "key",
        "rewrap",
        "--batch",
        "5",
        "--max-batches",
        "1",
        "--pause",
        "0s",
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("rewrapped 5/12") && out.contains("stopped early"),
        "{out}"
    );
    let mid = rows(&s).await;
    let count = |g: u32| {
        mid.values()
            .flatten()
            .filter(|e| generation(e) == g)
            .count()
    };
    assert_eq!((count(1), count(2)), (7, 5));
    let (ok, out, _) = s.cli(&["key", "status"]);
    assert!(ok && out.contains("seals 7 live"), "{out}");
    // a write in between goes straight to generation 2
    assert_eq!(s.client.put_ok(&names[0], "new").await, 4);

    let (ok, out, err) = s.cli(&["key", "rewrap", "--batch", "5"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("rewrapped 7/7") && out.contains("done: 7"),
        "{out}"
    );
    assert_eq!(generations(&rows(&s).await), ([2].into(), 0));
    for (p, name) in names.iter().enumerate() {
        for v in 1..=3 {
            assert_value(&s, name, v, &value(p, v as usize)).await;
        }
    }
    // nothing left: a third run is a no-op
    let (ok, out, err) = s.cli(&["key", "rewrap"]);
    assert!(ok && out.contains("rewrapped 0/0"), "{out}{err}");
}

async fn corrupt_envelopes_are_reported_and_left_alone(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let names = seed(&s, "tamper", 3, 3).await;
    // version 2 of s001 gets version 1's envelope: it no longer opens
    s.sql(
        "UPDATE versions SET envelope = (SELECT v.envelope FROM versions v JOIN secrets s ON s.id = v.secret_id
                                           WHERE s.path = 'tfy-secret/tamper/s001' AND v.version = 1)
         WHERE version = 2 AND secret_id = (SELECT id FROM secrets WHERE path = 'tfy-secret/tamper/s001')",
    )
    .await;
    let key = ("tfy-secret/tamper/s001".to_owned(), 2i64);
    let before = rows(&s).await;
    let (ok, out, err) = s.cli(&["key", "rotate", "--rewrap", "--batch", "4"]);
    assert!(!ok, "a corrupt envelope must fail the run: {out}{err}");
    assert!(
        err.contains("tfy-secret/tamper/s001 version 2") && err.contains("corrupt"),
        "{err}"
    );
    assert!(
        err.contains("1 version(s) could not be re-encrypted"),
        "{err}"
    );
    assert!(out.contains("rewrapped 8/9"), "{out}");
    let after = rows(&s).await;
    assert_eq!(after[&key], before[&key], "the corrupt row was touched");
    for (k, e) in &after {
        if *k != key {
            assert_eq!(generation(e.as_ref().expect("live")), 2, "{k:?}");
        }
    }
    for (p, name) in names.iter().enumerate() {
        for v in 1..=3i64 {
            if (name.as_str(), v) != (key.0.as_str(), key.1) {
                assert_value(&s, name, v, &value(p, v as usize)).await;
            }
        }
    }
    assert_eq!(s.client.get(&key.0, Some("2")).await.status, 500);
    // it stays reported on every run; the rest is done
    let (ok, out, err) = s.cli(&["key", "rewrap"]);
    assert!(!ok && out.contains("rewrapped 0/1"), "{out}{err}");
    assert!(err.contains("tfy-secret/tamper/s001 version 2"), "{err}");
}

/// Runs the CLI on another thread (the test keeps serving meanwhile).
fn spawn_cli(s: &TestServer, args: &[&str]) -> std::thread::JoinHandle<std::process::Output> {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args)
        .args(s.store_args())
        .env_remove("SECRETD_DATABASE_URL")
        .env("SECRETD_MASTER_KEY", MASTER_KEY);
    std::thread::spawn(move || cmd.output().expect("run secretd"))
}

async fn runs_beside_live_traffic(backend: Backend) {
    let s = Arc::new(TestServer::start_on(backend).await);
    const PATHS: usize = 30;
    const VERSIONS: usize = 4;
    let mut seeding = Vec::new();
    for p in 0..PATHS {
        let s = Arc::clone(&s);
        seeding.push(tokio::spawn(async move {
            let path = format!("tfy-secret/live/s{p:03}");
            for v in 1..=VERSIONS {
                assert_eq!(s.client.put_ok(&path, &value(p, v)).await, v as u64);
            }
        }));
    }
    for t in seeding {
        t.await.expect("seed");
    }
    let (ok, _, err) = s.cli(&["key", "rotate"]);
    assert!(ok, "{err}");

    let cli = spawn_cli(&s, &["key", "rewrap", "--batch", "7", "--pause", "2ms"]);
    let running = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    // writers: new versions of seeded paths and new paths
    for w in 0..3 {
        let (s, running) = (Arc::clone(&s), Arc::clone(&running));
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while running.load(Ordering::Relaxed) || i < 10 {
                let path = if i % 2 == 0 {
                    format!("tfy-secret/live/s{:03}", (w * 7 + i) % PATHS)
                } else {
                    format!("tfy-secret/live/new{w}-{i}")
                };
                let val = format!("written {w} {i}");
                let r = s.client.put(&path, &val).await;
                assert_eq!(
                    r.status,
                    200,
                    "PUT {path}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                acked.push((path, r.json()["version"].as_i64().expect("version"), val));
                i += 1;
            }
            (acked, Vec::new())
        }));
    }
    // deleters: seeded versions, in the order the rewrap walks them
    {
        let (s, running) = (Arc::clone(&s), Arc::clone(&running));
        tasks.push(tokio::spawn(async move {
            let mut deleted = Vec::new();
            for p in (0..PATHS).step_by(2) {
                if !running.load(Ordering::Relaxed) && deleted.len() >= 5 {
                    break;
                }
                let path = format!("tfy-secret/live/s{p:03}");
                let v = (p % VERSIONS + 1) as i64;
                let r = s.client.delete(&path, Some(serde_json::json!(v))).await;
                assert_eq!(
                    r.status,
                    200,
                    "DELETE {path} v{v}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                deleted.push((path, v));
            }
            (Vec::new(), deleted)
        }));
    }
    // readers: seeded versions read back exactly, or 404 once deleted
    for r in 0..2 {
        let (s, running) = (Arc::clone(&s), Arc::clone(&running));
        tasks.push(tokio::spawn(async move {
            let mut i = r;
            while running.load(Ordering::Relaxed) || i < 20 {
                let (p, v) = (i % PATHS, i % VERSIONS + 1);
                let path = format!("tfy-secret/live/s{p:03}");
                let resp = s.client.get(&path, Some(&v.to_string())).await;
                match resp.status {
                    200 => assert_eq!(resp.json()["value"].as_str(), Some(value(p, v).as_str())),
                    404 => {}
                    other => panic!(
                        "GET {path} v{v}: {other} {}",
                        String::from_utf8_lossy(&resp.body)
                    ),
                }
                i += 1;
            }
            (Vec::new(), Vec::new())
        }));
    }
    let out = tokio::task::spawn_blocking(move || cli.join().expect("cli thread"))
        .await
        .expect("join");
    running.store(false, Ordering::Relaxed);
    let (mut acked, mut deleted) = (Vec::new(), Vec::new());
    for t in tasks {
        let (a, d) = t.await.expect("traffic task");
        acked.extend(a);
        deleted.extend(d);
    }
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("done:"), "{stdout}");

    let after = rows(&s).await;
    for (path, v) in &deleted {
        assert!(
            after[&(path.clone(), *v)].is_none(),
            "{path} v{v} came back"
        );
        assert_eq!(s.client.get(path, Some(&v.to_string())).await.status, 404);
    }
    // A version deleted after the walk passed it was re-sealed first, one
    // deleted before was skipped: either way it is gone. Every live envelope
    // is under generation 2.
    assert_eq!(generations(&after).0, [2].into(), "{stdout}");
    for (path, v, val) in &acked {
        assert_value(&s, path, *v, val).await;
    }
    let gone: BTreeSet<_> = deleted.iter().cloned().collect();
    for p in 0..PATHS {
        let path = format!("tfy-secret/live/s{p:03}");
        for v in 1..=VERSIONS as i64 {
            if !gone.contains(&(path.clone(), v)) {
                assert_value(&s, &path, v, &value(p, v as usize)).await;
            }
        }
    }
    let (ok, out, err) = s.cli(&["key", "status"]);
    assert!(
        ok && out.contains("generation 1\t") && out.contains("seals 0 live"),
        "{out}{err}"
    );
}

/// The store's swap is a compare-and-swap: a version deleted after the
/// rewrap read it stays deleted; one still holding the envelope read is
/// swapped. The walk is keyset-paginated and skips tombstones.
async fn swap_never_undoes_a_delete(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let names = seed(&s, "cas", 2, 2).await;
    let loc = match &s.backend {
        Backend::Sqlite => secretd::bootstrap::Location::DataDir(s.data_dir.clone()),
        Backend::Postgres(url) => secretd::bootstrap::Location::parse(url),
    };
    let store = secretd::bootstrap::open_existing_store(&loc, &Default::default())
        .await
        .expect("open store");
    let first = store.sealed_below(2, ("", 0), 3).await.expect("page");
    let keys: Vec<_> = first.iter().map(|r| (r.path.as_str(), r.version)).collect();
    assert_eq!(
        keys,
        [
            (names[0].as_str(), 1),
            (names[0].as_str(), 2),
            (names[1].as_str(), 1)
        ]
    );
    let rest = store
        .sealed_below(2, (&names[1], 1), 3)
        .await
        .expect("page");
    assert_eq!(rest.len(), 1);
    assert!(
        store
            .sealed_below(1, ("", 0), 10)
            .await
            .expect("page")
            .is_empty()
    );
    // delete s000 v1 after it was read, then swap both rows read
    assert_eq!(
        s.client
            .delete(&names[0], Some(serde_json::json!(1)))
            .await
            .status,
        200
    );
    let swaps = first[..2]
        .iter()
        .map(|r| secretd::store::EnvelopeSwap {
            path: r.path.clone(),
            version: r.version,
            old: r.envelope.clone(),
            new: first[2].envelope.clone(),
        })
        .collect();
    assert_eq!(store.swap_envelopes(swaps).await.expect("swap"), 1);
    let after = rows(&s).await;
    assert!(
        after[&(names[0].clone(), 1)].is_none(),
        "the delete was undone"
    );
    assert_eq!(
        after[&(names[0].clone(), 2)].as_ref(),
        Some(&first[2].envelope)
    );
    // the tombstone is not offered again
    let again = store.sealed_below(2, ("", 0), 10).await.expect("page");
    assert!(again.iter().all(|r| r.version != 1 || r.path != names[0]));
}

both_backends!(
    swap_never_undoes_a_delete,
    rewraps_every_live_version,
    resumes_after_an_interruption,
    corrupt_envelopes_are_reported_and_left_alone,
    runs_beside_live_traffic,
);
