//! `secretd check` against secretd itself and against deliberately broken
//! servers: each defect is reported with the vendor's troubleshooting hint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use crate::common::*;

fn check(url: &str, headers: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["check", "--url", url])
        .env_remove("SECRETD_API_KEY");
    for h in headers {
        cmd.args(["--header", h]);
    }
    let out = cmd.output().expect("run check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_against_secretd_and_cleans_up() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let url = format!("http://{}", s.addr());
    let (ok, out) = check(&url, &[&format!("X-API-Key: {KEY}")]);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PASS")).count(),
        10,
        "{out}"
    );
    assert!(out.contains("all contract points pass"));
    let listed = s
        .client
        .get_uri("/secrets?path=tfy-secret&list=true")
        .await
        .json();
    assert_eq!(
        listed["secrets"].as_array().map(Vec::len),
        Some(0),
        "scratch secret left behind: {listed}"
    );
    // the same with the key from the environment, and with a wrong key
    let out = std::process::Command::new(bin())
        .args(["check", "--url", &url])
        .env("SECRETD_API_KEY", KEY)
        .output()
        .expect("run");
    assert!(out.status.success());
    let (ok, out) = check(&url, &["X-API-Key: wrong"]);
    assert!(!ok);
    assert!(out.contains("Header Auth"), "{out}");
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Defect {
    NoVersion,
    NoValue,
    RootMissing,
    WrongRoot,
}

type Db = Arc<Mutex<HashMap<String, Vec<Option<String>>>>>;

/// A Generic Secret Store with one deliberate defect.
async fn broken_server(defect: Defect) -> std::net::SocketAddr {
    async fn get_h(
        State((db, d)): State<(Db, Defect)>,
        RawQuery(raw): RawQuery,
    ) -> (StatusCode, String) {
        let q: HashMap<String, String> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
        let path = q.get("path").cloned().unwrap_or_default();
        if path == "tfy-secret" {
            return if d == Defect::RootMissing {
                (
                    StatusCode::NOT_FOUND,
                    json!({ "error": "not found" }).to_string(),
                )
            } else {
                (StatusCode::OK, json!({ "value": "" }).to_string())
            };
        }
        if d == Defect::WrongRoot && !path.starts_with("secrets/") {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": "path must start with secrets/" }).to_string(),
            );
        }
        let db = db.lock().expect("lock");
        let versions = db.get(&path).cloned().unwrap_or_default();
        let v = match q.get("version").and_then(|v| v.parse::<usize>().ok()) {
            Some(n) => versions.get(n.wrapping_sub(1)).cloned().flatten(),
            None => versions.iter().rev().find_map(Clone::clone),
        };
        match v {
            Some(v) if d == Defect::NoValue => (StatusCode::OK, json!({ "secret": v }).to_string()),
            Some(v) => (StatusCode::OK, json!({ "value": v }).to_string()),
            None => (
                StatusCode::NOT_FOUND,
                json!({ "error": "not found" }).to_string(),
            ),
        }
    }
    async fn put_h(State((db, d)): State<(Db, Defect)>, body: String) -> (StatusCode, String) {
        let b: Value = serde_json::from_str(&body).unwrap_or_default();
        let path = b["path"].as_str().unwrap_or_default().to_owned();
        if d == Defect::WrongRoot && !path.starts_with("secrets/") {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": "path must start with secrets/" }).to_string(),
            );
        }
        let mut db = db.lock().expect("lock");
        let versions = db.entry(path.clone()).or_default();
        versions.push(b["value"].as_str().map(str::to_owned));
        if d == Defect::NoVersion {
            (StatusCode::OK, json!({ "path": path }).to_string())
        } else {
            (
                StatusCode::OK,
                json!({ "path": path, "version": versions.len() }).to_string(),
            )
        }
    }
    async fn delete_h(State((db, _)): State<(Db, Defect)>, body: String) -> (StatusCode, String) {
        let b: Value = serde_json::from_str(&body).unwrap_or_default();
        let path = b["path"].as_str().unwrap_or_default();
        let mut db = db.lock().expect("lock");
        let Some(versions) = db.get_mut(path) else {
            return (StatusCode::BAD_REQUEST, "{}".into());
        };
        match b["version"].as_u64() {
            Some(n) => {
                if let Some(v) = versions.get_mut((n as usize).wrapping_sub(1)) {
                    *v = None;
                }
            }
            None => versions.iter_mut().for_each(|v| *v = None),
        }
        (StatusCode::OK, "{}".into())
    }
    let db: Db = Arc::default();
    let app = axum::Router::new()
        .route("/secrets", get(get_h).put(put_h).delete(delete_h))
        .with_state((db, defect));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_each_defect_with_its_hint() {
    for (defect, failing, hint) in [
        (
            Defect::NoVersion,
            "create (PUT) answers 2xx with a version",
            "Missing \"version\"",
        ),
        (
            Defect::NoValue,
            "read (GET) answers 200 with the value",
            "Missing \"value\"",
        ),
        (
            Defect::RootMissing,
            "validation call",
            "404 when saving the integration",
        ),
        (Defect::WrongRoot, "create (PUT)", "root path mismatch"),
    ] {
        let addr = broken_server(defect).await;
        let (ok, out) = check(&format!("http://{addr}"), &[]);
        assert!(!ok, "{defect:?} passed: {out}");
        let line = out
            .lines()
            .position(|l| l.starts_with("FAIL") && l.contains(failing));
        let line = line.unwrap_or_else(|| panic!("{defect:?}: no FAIL for {failing:?}: {out}"));
        let next = out.lines().nth(line + 1).unwrap_or_default();
        assert!(next.contains(hint), "{defect:?}: hint {next:?}\n{out}");
    }
}
