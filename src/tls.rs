//! Server TLS: a rustls configuration built from PEM files, re-read on
//! SIGHUP or when the files change, without a restart.
//!
//! Each accepted connection takes the configuration current at that moment
//! ([`TlsReloader::acceptor`]); a reload swaps in a new one for the next
//! connections, so established connections are never dropped. A reload that
//! fails (a half-written file, a key that does not match the certificate)
//! keeps the previous configuration and logs why.
//!
//! TLS 1.2 and 1.3 only (rustls has nothing older), ALPN `http/1.1`. With a
//! client CA file every client must present a certificate that chains to it
//! (mTLS); the CA file is reloaded like the certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {what}")]
    Pem { file: PathBuf, what: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(String),
}

/// The PEM files of the server's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// What identifies one version of the files: size, modification time and
/// inode of each (following symlinks, so a Kubernetes secret volume's
/// atomic symlink swap counts as a change).
type Stamp = Vec<Option<(u64, Option<SystemTime>, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().ok(), m.ino()))
    })
    .collect()
}

/// The current server configuration and how to rebuild it.
#[derive(Debug)]
pub struct TlsReloader {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    stamp: Mutex<Stamp>,
}

fn read(file: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    std::fs::read(file)
        .map(Zeroizing::new)
        .map_err(|source| TlsError::Read {
            file: file.to_owned(),
            source,
        })
}

fn certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            file: file.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            file: file.to_owned(),
            what: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Builds a server configuration from the files as they are now.
pub fn build(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = certs(&files.cert)?;
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        file: files.key.clone(),
        // The message names the problem (no key, bad encoding), never key bytes.
        what: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::ClientCa(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    // Checks that the key matches the leaf certificate.
    let mut cfg = builder.with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

impl TlsReloader {
    /// Loads the files; an error here stops start-up.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let st = stamp(&files);
        let cfg = build(&files)?;
        Ok(TlsReloader {
            files,
            current: RwLock::new(Arc::new(cfg)),
            stamp: Mutex::new(st),
        })
    }

    /// An acceptor with the configuration current now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }

    /// Re-reads the files and swaps the configuration in. On error the old
    /// one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.reload_if(false).map(|_| ())
    }

    /// Re-reads the files (with `only_if_changed`, only if they differ
    /// from the last attempt); `Ok(false)` if it did not. The lock is held
    /// throughout, so a SIGHUP and a poll reloading at once cannot finish
    /// out of order (an older build replacing a newer one). The stamp is
    /// remembered even if the build fails, so a broken file is reported once,
    /// not every poll; the next change (or SIGHUP) tries again.
    fn reload_if(&self, only_if_changed: bool) -> Result<bool, TlsError> {
        let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        let now = stamp(&self.files);
        if only_if_changed && *last == now {
            return Ok(false);
        }
        *last = now;
        let cfg = build(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(cfg);
        Ok(true)
    }

    fn reload_logged(&self, why: &str, only_if_changed: bool) {
        match self.reload_if(only_if_changed) {
            Ok(false) => {}
            Ok(true) => tracing::info!(reason = why, "TLS certificate reloaded"),
            Err(e) => tracing::error!(
                reason = why,
                error = %e,
                "TLS reload failed; still serving the previous certificate"
            ),
        }
    }

    /// Reloads on SIGHUP and whenever the files change (polled every
    /// `interval`; zero turns polling off), until the runtime stops.
    pub fn spawn_watch(self: Arc<Self>, interval: Duration) {
        let me = Arc::clone(&self);
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!("cannot listen for SIGHUP; TLS reload by SIGHUP is off");
                return;
            };
            while hup.recv().await.is_some() {
                me.reload_logged("SIGHUP", false);
            }
        });
        if interval.is_zero() {
            return;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                self.reload_logged("files changed", true);
            }
        });
    }
}
