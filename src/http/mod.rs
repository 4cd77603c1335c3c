//! HTTP: the route table, shared state and the serve loop.
//!
//! `router(state)` is pure construction (testable without a socket);
//! `serve(listener, state, shutdown)` runs it on a bound listener until the
//! shutdown future completes, then drains in-flight requests.

mod body;
mod handlers;
mod middleware;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
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
}

/// The one route table.
pub fn router(state: AppState) -> Router {
    let secrets = get(handlers::get_secret)
        .put(handlers::put_secret)
        .delete(handlers::delete_secret)
        .fallback(|| async { handlers::method_not_allowed("GET, PUT, DELETE") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_key,
        ));
    Router::new()
        .route("/secrets", secrets)
        .route(
            "/healthz",
            get(handlers::healthz).fallback(|| async { handlers::method_not_allowed("GET") }),
        )
        .route(
            "/readyz",
            get(handlers::readyz).fallback(|| async { handlers::method_not_allowed("GET") }),
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
