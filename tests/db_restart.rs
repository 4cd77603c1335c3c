//! A real PostgreSQL restart under load. Its own test binary, because it
//! takes the shared server away: cargo runs test binaries one after another,
//! so no other test is using PostgreSQL meanwhile. It restarts the machine's
//! cluster, so it runs only when SECRETD_TEST_PG_RESTART=1 (CI sets it).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "it/common.rs"]
mod common;
#[path = "it/outage.rs"]
mod outage;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// `pg_ctlcluster --skip-systemctl-redirect <version> main <action> [args]` for every cluster.
fn pg_ctl(action: &str, args: &[&str]) {
    let versions = std::fs::read_dir("/etc/postgresql").expect("/etc/postgresql");
    for v in versions.flatten() {
        let v = v.file_name().to_string_lossy().into_owned();
        let status = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &v, "main", action])
            .args(args)
            .status()
            .expect("pg_ctlcluster");
        assert!(status.success(), "pg_ctlcluster {v} main {action} failed");
    }
}

fn pg_ready() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn real_database_restart_under_load() {
    if std::env::var("SECRETD_TEST_PG_RESTART").as_deref() != Ok("1") {
        eprintln!(
            "notice: skipping the PostgreSQL restart test (set SECRETD_TEST_PG_RESTART=1 to restart the local cluster)"
        );
        return;
    }
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (acquire, statement) = (Duration::from_secs(1), Duration::from_secs(2));
    let s = TestServer::start_with(Backend::Postgres(db.url.clone()), |c| {
        c.store.db.db_acquire_timeout = acquire;
        c.store.db.db_statement_timeout = statement;
    })
    .await;
    let limit = acquire + statement + Duration::from_secs(1);
    let mut reports = Vec::new();
    // fast: a clean shutdown; immediate: PostgreSQL's own crash and WAL
    // recovery on the way back.
    for mode in ["fast", "immediate"] {
        let report = outage::under_load(
            &s.client,
            limit,
            async || pg_ctl("stop", &["-m", mode]),
            Duration::from_secs(2),
            async || {
                pg_ctl("start", &[]);
                let t = Instant::now();
                while !pg_ready() {
                    assert!(
                        t.elapsed() < Duration::from_secs(30),
                        "PostgreSQL did not come back"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        )
        .await;
        eprintln!("outage (real restart, -m {mode}): {report}");
        reports.push(report);
    }
    goal_report(
        "pg_real_restart",
        reports.len(),
        &[],
        0,
        serde_json::json!({"fast": reports[0], "immediate": reports[1]}),
    );
    drop(s);
    db.drop_db().await;
}
