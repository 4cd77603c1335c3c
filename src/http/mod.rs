//! HTTP: the route table, shared state and the serve loop.
//!
//! `router(state)` is pure construction (testable without a socket);
//! `serve(listener, state, shutdown)` runs it on a bound listener until the
//! shutdown future completes, then drains in-flight requests.

mod body;
mod handlers;
mod middleware;
pub mod ratelimit;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::{MethodRouter, delete, get};
use tokio::net::TcpListener;

use crate::auth::ApiKeys;
use crate::service::Service;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub service: Arc<Service>,
    pub api_keys: Arc<ApiKeys>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Failed authentications per client address.
    pub limiter: Arc<ratelimit::FailLimiter>,
}

/// The one route table.
pub fn router(state: AppState) -> Router {
    // Inner to outer: authenticate, then audit (so 401s and 429s are audited).
    let api = |r: MethodRouter<AppState>| {
        r.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::audit,
        ))
    };
    let not_allowed =
        |allow: &'static str| move || async move { handlers::method_not_allowed(allow) };
    Router::new()
        .route(
            "/secrets",
            api(get(handlers::get_secret)
                .put(handlers::put_secret)
                .delete(handlers::delete_secret)
                .fallback(not_allowed("GET, PUT, DELETE"))),
        )
        .route(
            "/v1/tokens",
            api(get(handlers::list_tokens)
                .post(handlers::create_token)
                .fallback(not_allowed("GET, POST"))),
        )
        .route(
            "/v1/tokens/{id}",
            api(delete(handlers::revoke_token).fallback(not_allowed("DELETE"))),
        )
        .route(
            "/healthz",
            get(handlers::healthz).fallback(not_allowed("GET")),
        )
        .route(
            "/readyz",
            get(handlers::readyz).fallback(not_allowed("GET")),
        )
        .fallback(handlers::route_not_found)
        .layer(axum::middleware::from_fn(middleware::request_log))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` completes, then
/// waits for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
