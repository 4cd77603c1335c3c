//! `secretd check`: runs TrueFoundry's validation call and the Quick Test
//! flow against any Generic Secret Store server (ours or another), on a
//! scratch path it cleans up, and explains each failure with the likely
//! cause from the vendor's troubleshooting table.

use std::path::Path;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::client::Target;

/// One HTTP exchange's outcome, as the checks read it.
struct Reply {
    status: u16,
    body: Option<Value>,
}

async fn send(
    t: &Target,
    method: &str,
    path_and_query: &str,
    body: Option<Value>,
) -> anyhow::Result<Reply> {
    let body = body.map(|b| Zeroizing::new(b.to_string().into_bytes()));
    let r = t.send(method, path_and_query, body).await?;
    Ok(Reply {
        status: r.status,
        body: r.json(),
    })
}

/// The result of one contract point.
struct Outcome {
    failed: usize,
}

impl Outcome {
    fn report(&mut self, point: &str, ok: bool, detail: &str, hint: &str) {
        if ok {
            println!("PASS  {point}: {detail}");
        } else {
            self.failed += 1;
            println!("FAIL  {point}: {detail}");
            if !hint.is_empty() {
                println!("      likely cause: {hint}");
            }
        }
    }
}

const HINT_ROOT: &str = "404 when saving the integration: GET /secrets?path=tfy-secret could not reach the server \
                         or the path does not exist. Ensure the root path is available.";
const HINT_VERSION: &str =
    "Missing \"version\": response shape mismatch. PUT must return { \"version\": ... }.";
const HINT_VALUE: &str =
    "Missing \"value\": response shape mismatch. GET must return { \"value\": \"...\" }.";
const HINT_PREFIX: &str = "\"path must start with ...\": root path mismatch. TrueFoundry uses tfy-secret as the root; \
                           the server must use the same.";
const HINT_AUTH: &str =
    "the server refused the Header Auth headers: check --header against the server's API key.";

fn describe(r: &Reply) -> String {
    match &r.body {
        Some(b) => format!("HTTP {} {}", r.status, b),
        None => format!("HTTP {} (no JSON body)", r.status),
    }
}

fn hint_for(r: &Reply, default: &'static str) -> &'static str {
    let text = r.body.as_ref().map(Value::to_string).unwrap_or_default();
    if r.status == 401 || r.status == 403 {
        HINT_AUTH
    } else if text.contains("must start with") {
        HINT_PREFIX
    } else {
        default
    }
}

fn version_of(r: &Reply) -> Option<Value> {
    r.body
        .as_ref()
        .and_then(|b| b.get("version"))
        .filter(|v| v.is_number() || v.is_string())
        .cloned()
}

fn value_of(r: &Reply) -> Option<&str> {
    r.body
        .as_ref()
        .and_then(|b| b.get("value"))
        .and_then(Value::as_str)
}

fn query_version(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs the check; returns the number of failed points.
pub async fn run(url: &str, headers: &[String], ca_file: Option<&Path>) -> anyhow::Result<usize> {
    let t = Target::parse(url, headers, ca_file)?;
    let mut o = Outcome { failed: 0 };
    let mut rnd = [0u8; 6];
    crate::crypto::random_bytes(&mut rnd)?;
    let path = format!(
        "tfy-secret/secretd-check/run-{}",
        crate::audit::to_hex(&rnd)
    );
    let q = |extra: &str| format!("/secrets?path={path}{extra}");

    // 1. The validation call TrueFoundry makes when the integration is saved.
    let r = send(&t, "GET", "/secrets?path=tfy-secret", None).await?;
    let ok = (200..300).contains(&r.status);
    o.report(
        "validation call GET /secrets?path=tfy-secret",
        ok,
        &describe(&r),
        hint_for(&r, HINT_ROOT),
    );

    // 2. Create.
    let r = send(
        &t,
        "PUT",
        "/secrets",
        Some(json!({ "path": path, "value": "secretd-check-1" })),
    )
    .await?;
    let v1 = version_of(&r);
    let ok = (200..300).contains(&r.status) && v1.is_some();
    o.report(
        "create (PUT) answers 2xx with a version",
        ok,
        &describe(&r),
        hint_for(&r, HINT_VERSION),
    );

    // 3. Read latest.
    let r = send(&t, "GET", &q(""), None).await?;
    let ok = r.status == 200 && value_of(&r) == Some("secretd-check-1");
    o.report(
        "read (GET) answers 200 with the value",
        ok,
        &describe(&r),
        hint_for(&r, HINT_VALUE),
    );

    // 4. Update: a new version.
    let r = send(
        &t,
        "PUT",
        "/secrets",
        Some(json!({ "path": path, "value": "secretd-check-2" })),
    )
    .await?;
    let v2 = version_of(&r);
    let ok = (200..300).contains(&r.status) && v2.is_some() && v2 != v1;
    o.report(
        "update (PUT) answers a new version",
        ok,
        &describe(&r),
        hint_for(&r, HINT_VERSION),
    );

    // 5. Read a version, then the latest.
    if let Some(v1) = &v1 {
        let r = send(
            &t,
            "GET",
            &q(&format!("&version={}", query_version(v1))),
            None,
        )
        .await?;
        let ok = r.status == 200 && value_of(&r) == Some("secretd-check-1");
        o.report(
            "read a version (GET &version=) answers that version's value",
            ok,
            &describe(&r),
            hint_for(&r, HINT_VALUE),
        );
    }
    let r = send(&t, "GET", &q(""), None).await?;
    let ok = r.status == 200 && value_of(&r) == Some("secretd-check-2");
    o.report(
        "read after update answers the newest value",
        ok,
        &describe(&r),
        hint_for(&r, HINT_VALUE),
    );

    // 6. Delete one version.
    if let Some(v1) = &v1 {
        let r = send(
            &t,
            "DELETE",
            "/secrets",
            Some(json!({ "path": path, "version": v1 })),
        )
        .await?;
        o.report(
            "delete one version (DELETE with version) answers 2xx",
            (200..300).contains(&r.status),
            &describe(&r),
            "",
        );
        let r = send(
            &t,
            "GET",
            &q(&format!("&version={}", query_version(v1))),
            None,
        )
        .await?;
        o.report(
            "the deleted version reads as 404",
            r.status == 404,
            &describe(&r),
            "",
        );
    }

    // 7. Delete all versions.
    let r = send(&t, "DELETE", "/secrets", Some(json!({ "path": path }))).await?;
    o.report(
        "delete all versions (DELETE) answers 2xx",
        (200..300).contains(&r.status),
        &describe(&r),
        "",
    );
    let r = send(&t, "GET", &q(""), None).await?;
    o.report(
        "the deleted secret reads as 404",
        r.status == 404,
        &describe(&r),
        "",
    );

    if o.failed == 0 {
        println!(
            "all contract points pass: this server works as a TrueFoundry Generic Secret Store"
        );
    } else {
        println!("{} contract point(s) failed", o.failed);
    }
    Ok(o.failed)
}
