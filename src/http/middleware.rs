//! Request middleware: request id and log line, authentication (with the
//! failed-auth limiter), and the audit record of every API request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use zeroize::Zeroizing;

use super::AppState;
use crate::audit::AuditRecord;
use crate::authz::Principal;
use crate::error::Error;
use crate::service::{RequestCtx, outcome_of};
use crate::store::now_ms;

/// The id of the key or token that authenticated a request, for the log.
#[derive(Clone, Debug)]
pub struct KeyId(pub String);

/// This request's id (also in the `X-Request-Id` response header).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// What a handler learned while parsing, for the audit record.
#[derive(Debug, Default)]
pub struct AuditInfo {
    pub operation: Option<&'static str>,
    pub path: Option<String>,
    pub version: Option<i64>,
}

pub type AuditSlot = Arc<Mutex<AuditInfo>>;

/// Marks a response whose audit record was committed in the same
/// transaction as its write: the audit layer adds none.
#[derive(Clone, Copy, Debug)]
pub struct Audited;

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

/// The request-log part of a request, begun before it is handled: assigns
/// the request id (into the request's extensions) and notes what the log
/// line and the metrics need.
struct Logged {
    started: Instant,
    id: String,
    method: Method,
    /// A clone of the matched route is a reference count, not a copy.
    matched: Option<MatchedPath>,
}

impl Logged {
    fn begin(req: &mut Request) -> Self {
        let started = Instant::now();
        let id = next_request_id();
        req.extensions_mut().insert(RequestId(id.clone()));
        Logged {
            started,
            id,
            method: req.method().clone(),
            matched: req.extensions().get::<MatchedPath>().cloned(),
        }
    }

    /// Counts the response in the metrics, marks it `Cache-Control:
    /// no-store` with its `X-Request-Id`, and logs one line with the
    /// matched route (never the raw URI: the query holds paths) and the key
    /// id.
    fn finish(self, s: &AppState, mut res: Response) -> Response {
        let route = self
            .matched
            .as_ref()
            .map_or("<unmatched>", MatchedPath::as_str);
        s.metrics.observe(
            route,
            self.method.as_str(),
            res.status().as_u16(),
            self.started.elapsed(),
        );
        let h = res.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.id) {
            h.insert("x-request-id", v);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let key_id = res.extensions().get::<KeyId>().map(|k| k.0.as_str());
        tracing::info!(
            request_id = %self.id,
            method = %self.method,
            route = %route,
            status = res.status().as_u16(),
            latency_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            key_id = %key_id.unwrap_or("-"),
            "request"
        );
        res
    }
}

/// The request log of every route outside the API (health, metrics, the
/// OpenAPI document, 404s): request id, `Cache-Control: no-store`, metrics
/// and one log line. [`protect`] does the same for API routes itself, so a
/// request passes one middleware layer, not two.
pub async fn request_log(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let logged = Logged::begin(&mut req);
    let res = next.run(req).await;
    logged.finish(&s, res)
}

fn client_addr(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// Managed tokens carry this prefix; anything else can only be a static key.
const TOKEN_PREFIX: &[u8] = b"sdt_";

/// One presented credential after the in-memory checks.
enum Slot {
    Static(Principal),
    Token(Zeroizing<Vec<u8>>),
}

/// What the request's credentials are, decided without I/O where possible.
enum Resolved {
    /// All credentials are static keys: the first one's principal.
    Static(Principal),
    /// Some credential cannot be valid (no such static key, not a token).
    Invalid,
    /// Managed tokens remain to be looked up in the store.
    Lookup(Vec<Slot>),
}

/// Checks every credential against the static keys once; managed tokens
/// (by their prefix) are left for [`resolve_tokens`].
fn resolve_now(s: &AppState, creds: Option<Vec<Zeroizing<Vec<u8>>>>) -> Resolved {
    let Some(creds) = creds else {
        return Resolved::Invalid;
    };
    let mut slots = Vec::with_capacity(creds.len());
    for c in creds {
        match s.api_keys.lookup(&c) {
            Some(id) => slots.push(Slot::Static(Principal::static_key(id))),
            None if c.starts_with(TOKEN_PREFIX) => slots.push(Slot::Token(c)),
            None => return Resolved::Invalid,
        }
    }
    if slots.iter().any(|s| matches!(s, Slot::Token(_))) {
        return Resolved::Lookup(slots);
    }
    match slots.into_iter().next() {
        Some(Slot::Static(p)) => Resolved::Static(p),
        _ => Resolved::Invalid,
    }
}

/// The principal of the first credential once every managed token among
/// them was found valid in the store; `None` if one was not.
async fn resolve_tokens(s: &AppState, slots: Vec<Slot>) -> Result<Option<Principal>, Error> {
    let mut who = None;
    for slot in slots {
        let p = match slot {
            Slot::Static(p) => p,
            Slot::Token(c) => match s.service.principal_for_token(&c).await? {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        who.get_or_insert(p);
    }
    Ok(who)
}

/// The layer of every API route (secrets and tokens), outer to inner:
/// the request log ([`request_log`]'s part), the audit record, then
/// authentication around the read deadline. One layer rather than four:
/// each layer costs every request a boxed future and a clone of the
/// layers inside it.
pub async fn protect(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let logged = Logged::begin(&mut req);
    let res = audited(&s, req, next).await;
    logged.finish(&s, res)
}

async fn audited(s: &AppState, mut req: Request, next: Next) -> Response {
    let audit = Pending::new(&mut req);
    let ip = client_addr(&req).map(|a| a.ip());
    let (res, principal) = match authenticate(s, ip, req.headers()).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal.clone());
            let mut res = deadline(s, req, next).await;
            res.extensions_mut().insert(KeyId(principal.id.clone()));
            (res, Some(principal))
        }
        Err(refused) => (refused, None),
    };
    audit.finish(s, res, principal).await
}

/// Cuts a read off after the request timeout with 503 `timeout`. Writes
/// are never cut off: once a write reaches the store it may commit, and a
/// "503, try again" would then invite a duplicate (or hide a token shown only
/// once). Their client-facing part is bounded by the body timeout, and the
/// store's own timeouts bound the rest.
async fn deadline(s: &AppState, req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return next.run(req).await;
    }
    match tokio::time::timeout(s.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => Error::Timeout.into_response(),
    }
}

/// Authenticates the request: its principal, or the 401/429 to answer.
///
/// Static keys (which may be weak) are checked with no I/O between the
/// limiter's check and its count, so a concurrent burst of guesses cannot
/// exceed the limit. Managed tokens (256 random bits) need a store lookup:
/// their failures are counted when the lookup answers, and concurrent valid
/// tokens never count against their address.
async fn authenticate(
    s: &AppState,
    ip: Option<std::net::IpAddr>,
    headers: &axum::http::HeaderMap,
) -> Result<Principal, Response> {
    if let Some(ip) = ip
        && let Err(secs) = s.limiter.attempt(ip)
    {
        return Err(Error::RateLimited {
            retry_after_secs: secs,
        }
        .into_response());
    }
    let creds = s.api_keys.credentials(headers);
    match resolve_now(s, creds) {
        Resolved::Static(p) => {
            if let Some(ip) = ip {
                s.limiter.succeeded(ip);
            }
            Ok(p)
        }
        // The attempt stays counted as a failure.
        Resolved::Invalid => Err(Error::Unauthorized.into_response()),
        Resolved::Lookup(slots) => {
            if let Some(ip) = ip {
                s.limiter.succeeded(ip); // un-count before waiting on the store
            }
            match resolve_tokens(s, slots).await {
                Ok(Some(p)) => Ok(p),
                Ok(None) => {
                    if let Some(ip) = ip {
                        s.limiter.fail(ip);
                    }
                    Err(Error::Unauthorized.into_response())
                }
                Err(e) => Err(e.into_response()),
            }
        }
    }
}

fn default_operation(method: &Method, route: &str) -> &'static str {
    match (route.starts_with("/v1/tokens"), method.as_str()) {
        (false, "GET" | "HEAD") => "secret.read",
        (false, "PUT") => "secret.write",
        (false, "DELETE") => "secret.delete",
        (false, _) => "secret.other",
        (true, "GET") => "token.list",
        (true, "POST") => "token.create",
        (true, "DELETE") => "token.revoke",
        (true, _) => "token.other",
    }
}

/// The audit record of one API request, begun before it is handled.
struct Pending {
    slot: AuditSlot,
    default_op: &'static str,
    request_id: String,
    /// Formatted only if a record is written (not for a write that
    /// committed its own).
    client: Option<SocketAddr>,
}

impl Pending {
    fn new(req: &mut Request) -> Self {
        let slot: AuditSlot = Arc::default();
        req.extensions_mut().insert(Arc::clone(&slot));
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        let default_op = default_operation(req.method(), route.unwrap_or_default());
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        Pending {
            slot,
            default_op,
            request_id,
            client: client_addr(req),
        }
    }

    /// Appends the record of every request that reached the API, unless its
    /// write already committed one. Fails closed: if the record cannot be
    /// stored, the response (and any value in it) is replaced by a 503.
    async fn finish(self, s: &AppState, res: Response, principal: Option<Principal>) -> Response {
        if res.extensions().get::<Audited>().is_some() {
            return res;
        }
        let status = res.status().as_u16();
        let (operation, path, version) = match self.slot.lock() {
            Ok(mut i) => (
                i.operation.unwrap_or(self.default_op),
                i.path.take(),
                i.version,
            ),
            Err(_) => (self.default_op, None, None),
        };
        let (token_id, token_name) = match principal {
            Some(p) => (Some(p.id), Some(p.name)),
            None => (None, None),
        };
        let record = AuditRecord {
            time_ms: now_ms(),
            request_id: self.request_id,
            token_id,
            token_name,
            client: self.client.map(|a| a.to_string()),
            operation: operation.to_owned(),
            path,
            version,
            outcome: outcome_of(status).to_owned(),
            status,
        };
        if status == 503 {
            // Nothing was served (the store or the deadline refused it): record
            // it as soon as the store can take it, without making the client
            // wait out a second store timeout for an answer that is already 503.
            let service = Arc::clone(&s.service);
            tokio::spawn(async move {
                if let Err(e) = service.audit(record).await {
                    tracing::warn!(error = %e, "audit record of a 503 could not be stored");
                }
            });
            return res;
        }
        match s.service.audit(record).await {
            Ok(()) => res,
            Err(e) => {
                tracing::error!(error = %e, "audit record could not be stored; refusing the response");
                Error::Unavailable("audit log unavailable".into()).into_response()
            }
        }
    }
}

/// What a handler needs about its caller: the request context for the
/// service, and the slot to describe the request for the audit record.
#[derive(Debug)]
pub struct Ctx {
    pub req: RequestCtx,
    pub audit: AuditSlot,
}

impl Ctx {
    /// Records the operation, path and version for the audit record.
    pub fn note(&self, operation: &'static str, path: Option<&str>, version: Option<i64>) {
        if let Ok(mut i) = self.audit.lock() {
            i.operation = Some(operation);
            if path.is_some() {
                i.path = path.map(str::to_owned);
            }
            if version.is_some() {
                i.version = version;
            }
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Ctx {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        _s: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        // Moved out: the protect layer keeps its own copy for the audit.
        let principal = parts
            .extensions
            .remove::<Principal>()
            .ok_or(Error::Unauthorized)?;
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let audit = parts
            .extensions
            .get::<AuditSlot>()
            .cloned()
            .unwrap_or_default();
        Ok(Ctx {
            req: RequestCtx {
                principal,
                request_id,
                client,
            },
            audit,
        })
    }
}
