//! The HTTP client side: a minimal HTTP/1.1 client for one server
//! (`Target`, http or https with the webpki roots plus optional private CA
//! certificates), used by `secretd check` and `secretd secret`. No server
//! code here.

pub mod secret;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use zeroize::Zeroizing;

/// One HTTP exchange's outcome. The body is wiped when dropped (it may hold
/// a secret value).
pub struct Reply {
    pub status: u16,
    pub body: Zeroizing<Vec<u8>>,
}

impl Reply {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Why no reply came back: the server is down, unreachable or too slow.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, String),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
}

/// A minimal HTTP/1.1 client for one base URL (http or https). Each request
/// uses a fresh connection.
pub struct Target {
    https: bool,
    host: String,
    port: u16,
    base_path: String,
    headers: Vec<(String, String)>,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
}

/// The default limit on one request, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Target {
    /// `headers` are 'Name: value' lines sent with every request; `ca_file`
    /// holds PEM certificates trusted in addition to the webpki roots.
    pub fn parse(url: &str, headers: &[String], ca_file: Option<&Path>) -> anyhow::Result<Self> {
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
        // user:password@host would put credentials into error messages and
        // the Host header; keys go in --api-key or --header.
        anyhow::ensure!(
            !authority.contains('@'),
            "--url must not carry credentials (user@host); pass the key with --api-key or --header"
        );
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.trim_matches(['[', ']']).to_owned(),
                p.parse().context("bad port in --url")?,
            ),
            _ => (authority.to_owned(), if https { 443 } else { 80 }),
        };
        anyhow::ensure!(!host.is_empty(), "--url has no host");
        let mut hs = Vec::new();
        for h in headers {
            let (k, v) = h
                .split_once(':')
                .context("--header must look like 'Name: value'")?;
            hs.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let extra_roots = match ca_file {
            Some(f) => read_ca_file(f)?,
            None => Vec::new(),
        };
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for c in extra_roots {
                roots
                    .add(c)
                    .context("--ca-file holds a certificate that cannot be a trust anchor")?;
            }
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
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Limits each request (connecting, TLS, sending, reading the reply).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one request; a `body` is sent as JSON. The body buffer is wiped
    /// once the HTTP stack drops it.
    pub async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Zeroizing<Vec<u8>>>,
    ) -> anyhow::Result<Reply> {
        let server = format!("{}:{}", self.host, self.port);
        match tokio::time::timeout(self.timeout, self.exchange(method, path_and_query, body)).await
        {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout(server, self.timeout).into()),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Zeroizing<Vec<u8>>>,
    ) -> anyhow::Result<Reply> {
        let server = format!("{}:{}", self.host, self.port);
        let unreachable =
            |e: &dyn std::fmt::Display| SendError::Unreachable(server.clone(), e.to_string());
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable(&e))?;
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
                Bytes::from_owner(b)
            }
            None => Bytes::new(),
        };
        // The http crate's errors name the part, never a header's value.
        let req = req.body(Full::new(bytes)).context("building the request")?;
        let res = match (&self.tls, self.https) {
            (Some(tls), true) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .context("the --url host is not a valid TLS server name")?;
                let s = tls
                    .connect(name, stream)
                    .await
                    .map_err(|e| unreachable(&format_args!("TLS handshake: {e}")))?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                        .await
                        .map_err(|e| unreachable(&e))?;
                tokio::spawn(conn);
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| unreachable(&e))?
            }
            _ => {
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .map_err(|e| unreachable(&e))?;
                tokio::spawn(conn);
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| unreachable(&e))?
            }
        };
        let status = res.status().as_u16();
        let raw = res
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        // Takes the buffer over (no copy when it is ours alone) so it is wiped.
        Ok(Reply {
            status,
            body: Zeroizing::new(Vec::from(raw)),
        })
    }
}

/// The PEM certificates of a `--ca-file` (at least one).
fn read_ca_file(f: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(f).with_context(|| format!("reading --ca-file {}", f.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--ca-file {} is not valid PEM", f.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "--ca-file {} holds no PEM certificate",
        f.display()
    );
    Ok(certs)
}
