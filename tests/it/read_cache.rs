//! The embedded store's read cache never serves what an acknowledged write
//! replaced or deleted, even while other clients keep reading the same
//! paths (and so keep trying to install what they read).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use crate::common::{Backend, TestServer};

crate::both_backends!(acknowledged_writes_are_read_back_at_once);

async fn acknowledged_writes_are_read_back_at_once(b: Backend) {
    let s = TestServer::start_on(b).await;
    let paths: Vec<String> = (0..4).map(|i| format!("tfy-secret/cache/p{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    // Readers hammer the same paths, latest and by version.
    let mut readers = Vec::new();
    for r in 0..6 {
        let c = s.client.clone();
        let paths = paths.clone();
        let stop = Arc::clone(&stop);
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = &paths[(n as usize + r) % paths.len()];
                let v = (n % 3 + 1).to_string();
                let _ = c
                    .get(p, if n.is_multiple_of(2) { None } else { Some(&v) })
                    .await;
                n += 1;
            }
            n
        }));
    }
    // One writer per path: every acknowledged change is visible at once.
    let mut writers = Vec::new();
    for p in paths.clone() {
        let c = s.client.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..15 {
                let mut versions = Vec::new();
                for k in 0..3 {
                    let value = format!("{p}-{round}-{k}");
                    let v = c.put_ok(&p, &value).await;
                    versions.push((v, value.clone()));
                    let r = c.get(&p, None).await;
                    assert_eq!(r.status, 200);
                    assert_eq!(r.json()["value"], json!(value), "stale latest after PUT");
                    assert_eq!(r.json()["version"], json!(v));
                }
                // Delete the newest version: latest falls back to the previous one.
                let (last, _) = versions[2].clone();
                assert_eq!(c.delete(&p, Some(json!(last))).await.status, 200);
                assert_eq!(
                    c.get(&p, Some(&last.to_string())).await.status,
                    404,
                    "deleted version served"
                );
                let r = c.get(&p, None).await;
                assert_eq!(
                    r.json()["value"],
                    json!(versions[1].1),
                    "stale latest after DELETE"
                );
                // Delete everything: nothing is served.
                assert_eq!(c.delete(&p, None).await.status, 200);
                assert_eq!(c.get(&p, None).await.status, 404, "deleted secret served");
                for (v, _) in &versions {
                    assert_eq!(c.get(&p, Some(&v.to_string())).await.status, 404);
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.await.expect("reader");
    }
    eprintln!("read cache: {reads} concurrent reads during 4 x 15 write rounds");
    assert!(reads > 100, "the readers did not run");
}
