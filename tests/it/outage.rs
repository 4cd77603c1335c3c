//! Load through a database outage: writers keep PUTting while `cut` takes
//! the database away for `hold` and `restore` brings it back. Checks: every
//! request ends within `limit` as 200 or 503 JSON, `/readyz` turns 503 within
//! 2 s, writes resume within 5 s of the database returning, and every
//! acknowledged write is still there with versions contiguous.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// Runs the scenario; returns a one-line report of its figures.
pub async fn under_load(
    c: &Client,
    limit: Duration,
    cut: impl AsyncFnOnce(),
    hold: Duration,
    restore: impl AsyncFnOnce(),
) -> String {
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    let outcomes: Arc<Mutex<Vec<(u16, Duration)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (c, stop, acked, outcomes) = (
            c.clone(),
            Arc::clone(&stop),
            Arc::clone(&acked),
            Arc::clone(&outcomes),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let path = format!("tfy-secret/outage/p{w}");
                let value = format!("w{w}-{i}");
                let t = Instant::now();
                let r = c.put(&path, &value).await;
                outcomes.lock().expect("lock").push((r.status, t.elapsed()));
                if r.status == 200 {
                    let v = r.json()["version"].as_u64().expect("version");
                    acked.lock().expect("lock").push((path, v, value));
                } else {
                    assert_eq!(r.error_code(), "unavailable");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = acked.lock().expect("lock").len();
    assert!(before > 0, "no writes before the outage");

    cut().await;
    let cut_at = Instant::now();
    let flip = loop {
        let r = send(c.addr, "GET", "/readyz", &[], None).await;
        if r.status == 503 {
            assert_eq!(r.error_code(), "unavailable");
            let flip = cut_at.elapsed();
            assert!(
                flip < Duration::from_secs(2),
                "/readyz took {flip:?} to turn 503"
            );
            break flip;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(2),
            "/readyz still 200 {:?} after the cut",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(hold).await;
    let during = outcomes
        .lock()
        .expect("lock")
        .iter()
        .filter(|(s, _)| *s == 503)
        .count();
    assert!(during > 0, "no 503 during the outage");

    restore().await;
    let back = Instant::now();
    let acked_at_restore = acked.lock().expect("lock").len();
    while acked.lock().expect("lock").len() == acked_at_restore {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "writes did not resume within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = back.elapsed();
    loop {
        if send(c.addr, "GET", "/readyz", &[], None).await.status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "/readyz did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("writer");
    }

    let outcomes = outcomes.lock().expect("lock").clone();
    for (status, took) in &outcomes {
        assert!(*status == 200 || *status == 503, "status {status}");
        assert!(*took <= limit, "a request took {took:?} (limit {limit:?})");
    }
    let acked = acked.lock().expect("lock").clone();
    let paths: Vec<String> = (0..4).map(|w| format!("tfy-secret/outage/p{w}")).collect();
    verify_acknowledged(c, &acked, &paths).await;
    let worst = outcomes.iter().map(|(_, d)| *d).max().unwrap_or_default();
    format!(
        "{} requests ({} x 503), slowest {worst:?} (limit {limit:?}), /readyz 503 {flip:?} after the cut, \
         writes resumed {recovered:?} after the database returned, {} acknowledged, 0 lost",
        outcomes.len(),
        outcomes.iter().filter(|(s, _)| *s == 503).count(),
        acked.len()
    )
}
