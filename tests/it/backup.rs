//! `secretd backup` / `secretd restore` through the real binary: a snapshot
//! taken under concurrent writes restores consistently into SQLite and
//! PostgreSQL (and back); damaged, truncated, future-format and wrong-key
//! backups are refused before anything is written.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

/// Another valid master key (not the one the stores are made with).
const OTHER_KEY: &str = "HxwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgEAAAA=";

/// Runs `secretd <args>` with only `env` set among secretd's variables.
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args);
    for v in [
        "SECRETD_DATABASE_URL",
        "SECRETD_MASTER_KEY",
        "SECRETD_MASTER_KEY_FILE",
        "SECRETD_DATA_DIR",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run secretd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(r: (bool, String, String)) -> String {
    assert!(r.0, "failed: {}\n{}", r.1, r.2);
    r.1
}

fn refused(r: (bool, String, String), needle: &str) {
    assert!(!r.0, "should have failed: {}", r.1);
    assert!(r.2.contains(needle), "expected {needle:?} in: {}", r.2);
}

const WITH_KEY: [(&str, &str); 1] = [("SECRETD_MASTER_KEY", MASTER_KEY)];

fn server_env(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SECRETD_API_KEYS", KEY.to_owned()),
        ("SECRETD_MASTER_KEY", MASTER_KEY.to_owned()),
    ];
    env.extend_from_slice(extra);
    env
}

fn start(data: &Path, env: &[(&'static str, String)]) -> Proc {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Proc::start(data, &env)
}

/// Every path's metadata and every version's value (or status): what a
/// client can observe, to compare two stores exactly.
async fn observe(c: &Client, paths: &[String]) -> BTreeMap<String, (Value, Vec<(u16, Value)>)> {
    let mut out = BTreeMap::new();
    for p in paths {
        let m = c
            .get_uri(&format!("/secrets?path={}&metadata=true", enc(p)))
            .await;
        assert_eq!(m.status, 200, "{p} metadata");
        let meta = m.json();
        let n = meta["versions"].as_array().expect("versions").len();
        let mut versions = Vec::new();
        for v in 1..=n + 1 {
            let r = c.get(p, Some(&v.to_string())).await;
            let value = if r.status == 200 {
                r.json()["value"].clone()
            } else {
                Value::Null
            };
            versions.push((r.status, value));
        }
        out.insert(p.clone(), (meta, versions));
    }
    out
}

/// The latest version number (live or deleted) of `p`.
async fn last_version(c: &Client, p: &str) -> u64 {
    let m = c
        .get_uri(&format!("/secrets?path={}&metadata=true", enc(p)))
        .await;
    assert_eq!(m.status, 200, "{p} metadata");
    let vs = m.json()["versions"].as_array().expect("versions").clone();
    let nums: Vec<u64> = vs
        .iter()
        .map(|v| v["version"].as_u64().expect("version"))
        .collect();
    let n = nums.len() as u64;
    let mut sorted = nums.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=n).collect::<Vec<_>>(),
        "{p}: versions not contiguous"
    );
    n
}

struct Put {
    path: String,
    version: u64,
    value: String,
    acked: Instant,
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_under_writes_restores_into_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("source");
    let p = start(&data, &server_env(&[]));
    let c = p.client(KEY);
    let paths: Vec<String> = (0..24).map(|k| format!("tfy-secret/bk/p{k}")).collect();
    let puts: Arc<Mutex<Vec<Put>>> = Arc::default();
    let deletes: Arc<Mutex<HashMap<(String, u64), Instant>>> = Arc::default();
    for (k, path) in paths.iter().enumerate() {
        for r in 0..2 {
            let value = format!("seed-{k}-{r}");
            let version = c.put_ok(path, &value).await;
            puts.lock().expect("lock").push(Put {
                path: path.clone(),
                version,
                value,
                acked: Instant::now(),
            });
        }
        if k % 2 == 0 {
            assert_eq!(c.delete(path, Some(json!(1))).await.status, 200);
            deletes
                .lock()
                .expect("lock")
                .insert((path.clone(), 1), Instant::now());
        }
    }

    // writers keep going while the backup runs
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (c, paths, puts, deletes, stop) = (
            c.clone(),
            paths.clone(),
            Arc::clone(&puts),
            Arc::clone(&deletes),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let path = &paths[(w * 7 + i * 5) % paths.len()];
                let value = format!("w{w}-{i}");
                let version = c.put_ok(path, &value).await;
                puts.lock().expect("lock").push(Put {
                    path: path.clone(),
                    version,
                    value,
                    acked: Instant::now(),
                });
                if i % 3 == 2 {
                    let r = c.delete(path, Some(json!(version))).await;
                    assert_eq!(r.status, 200, "{path} v{version}");
                    deletes
                        .lock()
                        .expect("lock")
                        .insert((path.clone(), version), Instant::now());
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b1 = dir.path().join("during.backup");
    let t0 = Instant::now();
    let args: Vec<String> = vec![
        "backup".into(),
        "--out".into(),
        b1.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&a, &WITH_KEY)
    })
    .await
    .expect("backup");
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    let stdout = ok(out);
    assert!(stdout.contains("backed up 24 secrets"), "{stdout}");
    let puts = std::mem::take(&mut *puts.lock().expect("lock"));
    let deletes = std::mem::take(&mut *deletes.lock().expect("lock"));
    let during = puts.iter().filter(|p| p.acked > t0 && p.acked < t1).count();
    assert!(during > 0, "no write overlapped the backup");
    eprintln!(
        "{} writes acknowledged, {during} while the backup ran",
        puts.len()
    );

    // restore the mid-traffic snapshot into an empty data dir
    let r1 = dir.path().join("restored1");
    let stdout = ok(run(
        &[
            "restore",
            "--from",
            &b1.display().to_string(),
            "--data-dir",
            &r1.display().to_string(),
        ],
        &WITH_KEY,
    ));
    assert!(stdout.contains("verified"), "{stdout}");
    let rp = start(&r1, &server_env(&[]));
    let rc = rp.client(KEY);
    let by_version: HashMap<(String, u64), &Put> = puts
        .iter()
        .map(|p| ((p.path.clone(), p.version), p))
        .collect();
    for path in &paths {
        let n = last_version(&rc, path).await;
        for v in 1..=n {
            let put = by_version
                .get(&(path.clone(), v))
                .unwrap_or_else(|| panic!("{path} v{v} was never written"));
            let r = rc.get(path, Some(&v.to_string())).await;
            let deleted = deletes.get(&(path.clone(), v));
            match r.status {
                200 => {
                    assert_eq!(r.json()["value"].as_str(), Some(put.value.as_str()));
                    assert!(
                        deleted.is_none_or(|d| *d > t0),
                        "{path} v{v} deleted before the backup but restored live"
                    );
                }
                404 => assert!(
                    deleted.is_some(),
                    "{path} v{v} is in the snapshot but its value is missing"
                ),
                s => panic!("{path} v{v}: {s}"),
            }
        }
        // every write acknowledged before the backup started is in it
        for put in puts.iter().filter(|p| &p.path == path && p.acked < t0) {
            assert!(
                put.version <= n,
                "{path} v{} acknowledged but lost",
                put.version
            );
            if !deletes.contains_key(&(path.clone(), put.version)) {
                let r = rc.get(path, Some(&put.version.to_string())).await;
                assert_eq!(r.status, 200, "{path} v{} lost", put.version);
            }
        }
        // version counters continue
        assert_eq!(rc.put_ok(path, "after-restore").await, n + 1, "{path}");
    }
    drop(rp);
    let (ok_, out, err) = run(
        &["audit", "verify", "--data-dir", &r1.display().to_string()],
        &WITH_KEY,
    );
    assert!(ok_, "audit chain of the restore: {out} {err}");

    // quiescent now: an online backup of the source must restore exactly
    let b2 = dir.path().join("after.backup");
    ok(run(
        &[
            "backup",
            "--out",
            &b2.display().to_string(),
            "--data-dir",
            &data.display().to_string(),
        ],
        &WITH_KEY,
    ));
    let want = observe(&c, &paths).await;
    assert_eq!(p.terminate(), Some(0));

    let Some(db) = TestDb::create().await else {
        return;
    };
    let unused = dir.path().join("unused");
    ok(run(
        &[
            "restore",
            "--from",
            &b2.display().to_string(),
            "--database-url",
            &db.url,
        ],
        &WITH_KEY,
    ));
    let pg = start(
        &unused,
        &server_env(&[("SECRETD_DATABASE_URL", db.url.clone())]),
    );
    assert!(
        observe(&pg.client(KEY), &paths).await == want,
        "SQLite -> PostgreSQL differs"
    );
    // and from PostgreSQL (online) back into a data dir
    let b3 = dir.path().join("pg.backup");
    let stdout = ok(run(
        &[
            "backup",
            "--out",
            &b3.display().to_string(),
            "--database-url",
            &db.url,
        ],
        &WITH_KEY,
    ));
    assert!(!stdout.contains(&db.url), "{stdout}");
    drop(pg);
    let r3 = dir.path().join("restored3");
    ok(run(
        &[
            "restore",
            "--from",
            &b3.display().to_string(),
            "--data-dir",
            &r3.display().to_string(),
        ],
        &WITH_KEY,
    ));
    let rp = start(&r3, &server_env(&[]));
    let rc = rp.client(KEY);
    assert!(
        observe(&rc, &paths).await == want,
        "PostgreSQL -> SQLite differs"
    );
    for path in &paths {
        let n = want[path].0["versions"].as_array().expect("versions").len() as u64;
        assert_eq!(rc.put_ok(path, "next").await, n + 1, "{path}");
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_leave_the_target_empty() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let canary = "canary-3b9f1e7c-value";
    s.client.put_ok("tfy-secret/r/canary", canary).await;
    s.client.put_ok("tfy-secret/r/other", "x").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("store.backup");
    let f = file.display().to_string();
    let (ok_, out, err) = s.cli(&["backup", "--out", &f]);
    assert!(ok_, "{out} {err}");
    let bytes = std::fs::read(&file).expect("read backup");
    assert!(
        !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
        "the backup holds a value in clear"
    );
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // no overwrite without --force
    let (ok_, _, err) = s.cli(&["backup", "--out", &f]);
    assert!(!ok_ && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&file).expect("read"), bytes);
    let (ok_, _, err) = s.cli(&["backup", "--out", &f, "--force"]);
    assert!(ok_, "{err}");
    let bytes = std::fs::read(&file).expect("read backup");

    let target = dir.path().join("target");
    let t = target.display().to_string();
    let restore = |from: &Path, env: &[(&str, &str)]| {
        run(
            &[
                "restore",
                "--from",
                &from.display().to_string(),
                "--data-dir",
                &t,
            ],
            env,
        )
    };
    let variant = |name: &str, b: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, b).expect("write");
        p
    };

    // wrong master key, no master key
    refused(
        restore(&file, &[("SECRETD_MASTER_KEY", OTHER_KEY)]),
        "the master key does not open this backup",
    );
    refused(restore(&file, &[]), "needs the master key");
    // one flipped byte in the middle, truncation, a future format
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    refused(
        restore(&variant("flipped", &flipped), &WITH_KEY),
        "checksum",
    );
    refused(
        restore(&variant("half", &bytes[..bytes.len() / 2]), &WITH_KEY),
        "truncated",
    );
    let last_line = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .expect("lines")
        + 1;
    refused(
        restore(&variant("no-end", &bytes[..last_line]), &WITH_KEY),
        "truncated",
    );
    let text = String::from_utf8(bytes.clone()).expect("utf-8");
    assert!(text.starts_with("{\"magic\":\"secretd-backup\",\"format\":1,"));
    let future = text.replacen("\"format\":1,", "\"format\":2,", 1);
    refused(
        restore(&variant("future", future.as_bytes()), &WITH_KEY),
        "newer than this secretd understands",
    );
    // a header count edited (the file checksum catches it first)
    let edited = text.replacen("\"secrets\":2,", "\"secrets\":3,", 1);
    assert_ne!(edited, text);
    refused(
        restore(&variant("edited", edited.as_bytes()), &WITH_KEY),
        "checksum",
    );
    assert!(!target.exists(), "a refused restore created the target");

    // the real thing, then a second restore refuses the non-empty target
    let stdout = ok(restore(&file, &WITH_KEY));
    assert!(stdout.contains("restored 2 secrets"), "{stdout}");
    let mode = std::fs::metadata(&target)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    refused(restore(&file, &WITH_KEY), "not empty");
    // into the live source's store: it holds the data dir
    refused(
        run(
            &[
                "restore",
                "--from",
                &f,
                "--data-dir",
                &s.data_dir.display().to_string(),
            ],
            &WITH_KEY,
        ),
        "held by another secretd process",
    );
    let p = Proc::start(
        &target,
        &[
            ("SECRETD_API_KEYS", KEY),
            ("SECRETD_MASTER_KEY", MASTER_KEY),
        ],
    );
    let c = p.client(KEY);
    assert_eq!(
        c.get("tfy-secret/r/canary", None).await.json()["value"],
        canary
    );
    c.put_ok("tfy-secret/r/canary", "changed").await;
    drop(p);
    // --replace overwrites a non-empty target with the backup
    ok(run(
        &["restore", "--from", &f, "--data-dir", &t, "--replace"],
        &WITH_KEY,
    ));
    let p = Proc::start(
        &target,
        &[
            ("SECRETD_API_KEYS", KEY),
            ("SECRETD_MASTER_KEY", MASTER_KEY),
        ],
    );
    let r = p.client(KEY).get("tfy-secret/r/canary", None).await;
    assert_eq!(r.json()["value"], canary);
    assert_eq!(r.json()["version"], 1);
}

/// A restore over a data dir that served another store (another audit
/// key) sets that dir's access log aside, refuses while a server holds
/// it, and leaves a dir that serves and verifies: a new access chain.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_sets_the_replaced_access_log_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let file = dir.path().join("src.backup").display().to_string();
    let env = server_env(&[]);
    for data in [&src, &dst] {
        let p = start(data, &env);
        p.client(KEY).put_ok("tfy-secret/ra/a", "v").await;
        assert_eq!(p.client(KEY).get("tfy-secret/ra/a", None).await.status, 200);
        drop(p);
        // the next start anchors the source's access record 1
        drop(start(data, &env));
    }
    let (s, d) = (src.display().to_string(), dst.display().to_string());
    ok(run(
        &["backup", "--out", &file, "--data-dir", &s],
        &WITH_KEY,
    ));
    let restore = || {
        run(
            &["restore", "--from", &file, "--data-dir", &d, "--replace"],
            &WITH_KEY,
        )
    };
    let p = start(&dst, &env);
    refused(restore(), "held by another secretd process");
    drop(p);
    let out = ok(restore());
    assert!(out.contains("access log moved to"), "{out}");
    // the backup's anchors name the source's log, which is not here: the
    // restore began a new chain
    let out = ok(run(&["audit", "verify", "--data-dir", &d], &WITH_KEY));
    assert!(out.contains("a new chain began"), "{out}");
    let aside: Vec<_> = std::fs::read_dir(&dst)
        .expect("read_dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("access.log."))
        .collect();
    assert_eq!(aside.len(), 1);
    assert!(!dst.join("access.log").exists());
    let p = start(&dst, &env);
    assert_eq!(p.client(KEY).get("tfy-secret/ra/a", None).await.status, 200);
    drop(p);
    let out = ok(run(&["audit", "verify", "--data-dir", &d], &WITH_KEY));
    assert!(out.contains("access log intact: 1 records"), "{out}");
}
