//! Request middleware: the per-request log line and API-key check.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::Error;

/// The id of the key that authenticated a request, for the log line.
#[derive(Clone, Debug)]
pub struct KeyId(pub String);

/// A request id: a random per-process prefix and a counter, 16 hex digits.
fn next_request_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        // A weak prefix only makes ids less unique across restarts.
        let _ = crate::crypto::random_bytes(&mut b);
        u32::from_be_bytes(b)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:08x}{:08x}", n & 0xffff_ffff)
}

/// Outermost layer: assigns a request id, marks every response
/// `Cache-Control: no-store`, and logs one line per request with the matched
/// route (never the raw URI: the query holds paths) and the key id.
pub async fn request_log(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = next_request_id();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "<unmatched>".to_owned());
    let mut res = next.run(req).await;
    let key_id = res.extensions().get::<KeyId>().map(|k| k.0.clone());
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    tracing::info!(
        request_id = %id,
        method = %method,
        route = %route,
        status = res.status().as_u16(),
        latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        key_id = %key_id.as_deref().unwrap_or("-"),
        "request"
    );
    res
}

/// Refuses requests without a valid API key (401), before anything else
/// about the request is looked at.
pub async fn require_key(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key_id) = s.api_keys.authenticate(req.headers()).map(str::to_owned) else {
        return Error::Unauthorized.into_response();
    };
    let mut res = next.run(req).await;
    res.extensions_mut().insert(KeyId(key_id));
    res
}
