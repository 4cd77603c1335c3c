//! `secretd check`: runs TrueFoundry's validation call and the Quick Test
//! flow against any Generic Secret Store server (ours or another), on a
//! scratch path it cleans up, and explains each failure with the likely
//! cause from the vendor's troubleshooting table.

use std::sync::Arc;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};

/// One HTTP exchange's outcome.
struct Reply {
    status: u16,
    body: Option<Value>,
}

/// A minimal HTTP/1.1 client for one base URL (http or https).
struct Target {
    https: bool,
    host: String,
    port: u16,
    base_path: String,
    headers: Vec<(String, String)>,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Target {
    fn parse(url: &str, headers: &[String]) -> anyhow::Result<Self> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            anyhow::bail!("--url must start with http:// or https://");
        };
        let (authority, base_path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_owned()),
            None => (rest, String::new()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.trim_matches(['[', ']']).to_owned(),
                p.parse().context("bad port in --url")?,
            ),
            _ => (authority.to_owned(), if https { 443 } else { 80 }),
        };
        let mut hs = Vec::new();
        for h in headers {
            let (k, v) = h
                .split_once(':')
                .context("--header must look like 'Name: value'")?;
            hs.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
        } else {
            None
        };
        Ok(Target {
            https,
            host,
            port,
            base_path,
            headers: hs,
            tls,
        })
    }

    async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Reply> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connecting to {}:{}", self.host, self.port))?;
        let uri = format!("{}{path_and_query}", self.base_path);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&uri)
            .header("host", &self.host);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(bytes))?;
        let res = match (&self.tls, self.https) {
            (Some(tls), true) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())?;
                let s = tls.connect(name, stream).await.context("TLS handshake")?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await?;
                tokio::spawn(conn);
                sender.send_request(req).await?
            }
            _ => {
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(conn);
                sender.send_request(req).await?
            }
        };
        let status = res.status().as_u16();
        let raw = res.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            body: serde_json::from_slice(&raw).ok(),
        })
    }
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
pub async fn run(url: &str, headers: &[String]) -> anyhow::Result<usize> {
    let t = Target::parse(url, headers)?;
    let mut o = Outcome { failed: 0 };
    let mut rnd = [0u8; 6];
    crate::crypto::random_bytes(&mut rnd)?;
    let path = format!(
        "tfy-secret/secretd-check/run-{}",
        crate::audit::to_hex(&rnd)
    );
    let q = |extra: &str| format!("/secrets?path={path}{extra}");

    // 1. The validation call TrueFoundry makes when the integration is saved.
    let r = t.send("GET", "/secrets?path=tfy-secret", None).await?;
    let ok = (200..300).contains(&r.status);
    o.report(
        "validation call GET /secrets?path=tfy-secret",
        ok,
        &describe(&r),
        hint_for(&r, HINT_ROOT),
    );

    // 2. Create.
    let r = t
        .send(
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
    let r = t.send("GET", &q(""), None).await?;
    let ok = r.status == 200 && value_of(&r) == Some("secretd-check-1");
    o.report(
        "read (GET) answers 200 with the value",
        ok,
        &describe(&r),
        hint_for(&r, HINT_VALUE),
    );

    // 4. Update: a new version.
    let r = t
        .send(
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
        let r = t
            .send("GET", &q(&format!("&version={}", query_version(v1))), None)
            .await?;
        let ok = r.status == 200 && value_of(&r) == Some("secretd-check-1");
        o.report(
            "read a version (GET &version=) answers that version's value",
            ok,
            &describe(&r),
            hint_for(&r, HINT_VALUE),
        );
    }
    let r = t.send("GET", &q(""), None).await?;
    let ok = r.status == 200 && value_of(&r) == Some("secretd-check-2");
    o.report(
        "read after update answers the newest value",
        ok,
        &describe(&r),
        hint_for(&r, HINT_VALUE),
    );

    // 6. Delete one version.
    if let Some(v1) = &v1 {
        let r = t
            .send(
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
        let r = t
            .send("GET", &q(&format!("&version={}", query_version(v1))), None)
            .await?;
        o.report(
            "the deleted version reads as 404",
            r.status == 404,
            &describe(&r),
            "",
        );
    }

    // 7. Delete all versions.
    let r = t
        .send("DELETE", "/secrets", Some(json!({ "path": path })))
        .await?;
    o.report(
        "delete all versions (DELETE) answers 2xx",
        (200..300).contains(&r.status),
        &describe(&r),
        "",
    );
    let r = t.send("GET", &q(""), None).await?;
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
