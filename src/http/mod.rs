//! HTTP: the route table, shared state and the serve loop.
//!
//! `router(state)` is pure construction (testable without a socket);
//! `serve(listener, state, shutdown)` runs it on a bound listener until the
//! shutdown future completes, then drains in-flight requests.

// Public so the property tests can feed `read_json` arbitrary bytes.
pub mod body;
mod handlers;
mod middleware;
pub mod openapi;
pub mod ratelimit;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::handler::Handler as _;
use tokio::net::TcpListener;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

use crate::auth::ApiKeys;
use crate::service::Service;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub service: Arc<Service>,
    pub api_keys: Arc<ApiKeys>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive (408 after).
    pub body_timeout: Duration,
    /// How long a request may take from header to response (503 after).
    pub request_timeout: Duration,
    /// Failed authentications per client address.
    pub limiter: Arc<ratelimit::FailLimiter>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Serve `/metrics` on this router (false when `--metrics-listen` moves
    /// it to its own address).
    pub public_metrics: bool,
}

/// The served router: the route table plus the 404 fallback and the
/// `/openapi.json` document built from that same table. Every route and the
/// fallback carry the request log: the API routes inside their one layer
/// ([`middleware::protect`]), the others as a layer of their own.
pub fn router(state: AppState) -> Router {
    // One allocation shared by every request (cloning it is one increment).
    let state = Arc::new(state);
    let (routes, doc) = api(&state).split_for_parts();
    routes
        .fallback(
            handlers::route_not_found.layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                middleware::request_log,
            )),
        )
        .layer(axum::Extension(openapi::Document::new(doc)))
        .with_state(state)
}

/// The one route table. Each `routes!` line registers the handlers of one
/// path; the methods, the path and the OpenAPI operation all come from the
/// handlers' `#[utoipa::path]`, so the router and `GET /openapi.json` cannot
/// disagree. Every route answers other methods with 405 and an `Allow`
/// header computed from the same registration.
pub fn api(state: &Arc<AppState>) -> OpenApiRouter<Arc<AppState>> {
    // The 405 fallback inside; the request log, audit, authentication and
    // the read deadline around it (so 401s, 429s, 405s and timeouts are
    // logged and audited).
    let protected = |r: UtoipaMethodRouter<Arc<AppState>>| {
        allow_others(r).map(|m| {
            m.layer(axum::middleware::from_fn_with_state(
                Arc::clone(state),
                middleware::protect,
            ))
        })
    };
    // The routes outside the API: the request log alone.
    let logged = |r: UtoipaMethodRouter<Arc<AppState>>| {
        allow_others(r).map(|m| {
            m.layer(axum::middleware::from_fn_with_state(
                Arc::clone(state),
                middleware::request_log,
            ))
        })
    };
    OpenApiRouter::with_openapi(openapi::base())
        .routes(protected(routes!(
            handlers::get_secret,
            handlers::put_secret,
            handlers::delete_secret
        )))
        .routes(protected(routes!(
            handlers::list_tokens,
            handlers::create_token
        )))
        .routes(protected(routes!(handlers::revoke_token)))
        .routes(logged(routes!(handlers::healthz)))
        .routes(logged(routes!(handlers::readyz)))
        .routes(logged(routes!(openapi::openapi_json)))
        .merge(if state.public_metrics {
            metrics_routes(logged)
        } else {
            OpenApiRouter::default()
        })
}

/// Adds the 405 fallback, its `Allow` header listing the methods registered
/// (and documented) for the path.
fn allow_others(r: UtoipaMethodRouter<Arc<AppState>>) -> UtoipaMethodRouter<Arc<AppState>> {
    let allow = openapi::allow_header(&r.1);
    r.map(|m| m.fallback(move || async move { handlers::method_not_allowed(allow) }))
}

/// `/metrics`, its method router passed through `wrap` (the request log on
/// the main listener, the 405 fallback alone on its own).
fn metrics_routes(
    wrap: impl FnOnce(UtoipaMethodRouter<Arc<AppState>>) -> UtoipaMethodRouter<Arc<AppState>>,
) -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::default().routes(wrap(routes!(handlers::metrics)))
}

/// The router of the separate metrics listener (`--metrics-listen`).
pub fn metrics_router(state: AppState) -> Router {
    Router::from(metrics_routes(allow_others)).with_state(Arc::new(state))
}

/// Limits of the transport, against slow and greedy clients, and TLS.
#[derive(Debug, Clone)]
pub struct Transport {
    /// A client must send a request's whole header (and finish the TLS
    /// handshake) within this time, or the connection is closed (slowloris).
    pub header_timeout: Duration,
    /// Most connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Serve HTTPS with this (reloadable) configuration; plain HTTP if `None`.
    pub tls: Option<Arc<crate::tls::TlsReloader>>,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            tls: None,
        }
    }
}

/// Serves `router(state)` on `listener` with default transport limits until
/// `shutdown` completes, then waits for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, Transport::default(), shutdown).await
}

/// Serves `router(state)` on `listener` until `shutdown` completes: stops
/// accepting, lets in-flight requests finish, closes idle connections.
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    transport: Transport,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tower::ServiceExt as _;

    let app = router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        transport.max_connections.max(1),
    ));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc =
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(addr));
                    req
                });
        let watcher = graceful.watcher();
        let header_timeout = transport.header_timeout;
        // The acceptor is taken now: a reload affects later connections only.
        let tls = transport.tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            let _slot = permit;
            let result = match tls {
                None => serve_connection(stream, svc, header_timeout, watcher).await,
                Some(acceptor) => {
                    // The handshake counts against the header timeout.
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, svc, header_timeout, watcher).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// One HTTP/1.1 connection over `io` (plain TCP or TLS), watched for the
/// graceful shutdown.
async fn serve_connection<I, S>(
    io: I,
    svc: S,
    header_timeout: Duration,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(
            TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(svc),
        );
    watcher.watch(conn).await
}
