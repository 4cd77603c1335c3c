//! Handlers: extract, call the service, shape the response. No logic beyond
//! that lives here.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::body::{
    ReadKind, SecretBody, SecretQuery, TokenBody, optional_version, read_json, required_string,
    required_strings,
};
use super::middleware::{Audited, Ctx};
use crate::authz::{Role, Scope};
use crate::error::{Error, ErrorCode, json_response};
use crate::path::{PathArg, PathError, ROOT, SecretPath};
use crate::service::TokenInfo;

#[derive(Serialize)]
struct SecretOut<'a> {
    path: &'a str,
    version: u64,
    value: &'a str,
    created_at: String,
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// A successful write's response: its audit record is already committed.
fn audited(status: StatusCode, body: &impl Serialize) -> Response {
    let mut r = json_response(status, body);
    r.extensions_mut().insert(Audited);
    r
}

/// Default page size of a listing.
const DEFAULT_LIST_LIMIT: usize = 100;

/// `GET /secrets?path=P[&version=V | &list=true[&limit=N&cursor=C] | &metadata=true]`
pub async fn get_secret(
    State(s): State<AppState>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> Result<Response, Error> {
    let q = SecretQuery::parse(q.as_deref())?;
    let op = match q.kind {
        ReadKind::Value => "secret.read",
        ReadKind::List => "secret.list",
        ReadKind::Metadata => "secret.metadata",
    };
    ctx.note(op, None, q.version.map(|v| v.as_i64()));
    let target = PathArg::parse(&q.path)?;
    ctx.note(
        op,
        Some(match &target {
            PathArg::Root => ROOT,
            PathArg::Secret(p) => p.as_str(),
        }),
        None,
    );
    match (q.kind, target) {
        (ReadKind::List, prefix) => list(&s, &ctx, &prefix, q.cursor, q.limit).await,
        (ReadKind::Metadata, PathArg::Secret(path)) => metadata(&s, &ctx, &path).await,
        (ReadKind::Metadata, PathArg::Root) => Err(PathError::IsRoot.into()),
        // The integration's validation call: the root always answers 200,
        // with a `value` so a client that checks reads also passes.
        (ReadKind::Value, PathArg::Root) => match q.version {
            None => Ok(json_response(
                StatusCode::OK,
                &json!({ "path": ROOT, "value": "" }),
            )),
            Some(_) => Err(Error::NotFound(
                "the root path tfy-secret has no versions".into(),
            )),
        },
        (ReadKind::Value, PathArg::Secret(path)) => {
            let v = s.service.get(&ctx.req, &path, q.version).await?;
            ctx.note(op, None, Some(v.version.as_i64()));
            Ok(json_response(
                StatusCode::OK,
                &SecretOut {
                    path: v.path.as_str(),
                    version: v.version.get(),
                    value: &v.value,
                    created_at: rfc3339(v.created_at_ms),
                },
            ))
        }
    }
}

async fn list(
    s: &AppState,
    ctx: &Ctx,
    prefix: &PathArg,
    cursor: Option<String>,
    limit: Option<usize>,
) -> Result<Response, Error> {
    let after = cursor
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c.as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    Error::bad_request(
                        ErrorCode::InvalidCursor,
                        "`cursor` is not one this server issued",
                    )
                })
        })
        .transpose()?;
    let page = s
        .service
        .list(&ctx.req, prefix, after, limit.unwrap_or(DEFAULT_LIST_LIMIT))
        .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|i| json!({ "path": i.path, "version": i.latest_version, "updated_at": rfc3339(i.updated_at) }))
        .collect();
    let prefix = match prefix {
        PathArg::Root => ROOT,
        PathArg::Secret(p) => p.as_str(),
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "path": prefix,
            "secrets": items,
            "next_cursor": page.next_after.map(|a| URL_SAFE_NO_PAD.encode(a.as_bytes())),
        }),
    ))
}

async fn metadata(s: &AppState, ctx: &Ctx, path: &SecretPath) -> Result<Response, Error> {
    let versions = s.service.metadata(&ctx.req, path).await?;
    let latest = versions
        .iter()
        .rev()
        .find(|v| v.deleted_at.is_none())
        .map(|v| v.version);
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "created_at": rfc3339(v.created_at),
                "deleted_at": v.deleted_at.map(rfc3339),
                "created_by": v.created_by,
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "path": path.as_str(), "latest": latest, "versions": versions }),
    ))
}

/// The body's `path`, which must name a secret (PUT and DELETE on the root
/// itself are refused).
fn secret_path(field: Option<Value>) -> Result<SecretPath, Error> {
    match PathArg::parse(&required_string(field, "path")?)? {
        PathArg::Secret(path) => Ok(path),
        PathArg::Root => Err(PathError::IsRoot.into()),
    }
}

/// `PUT /secrets {"path","value"}`
pub async fn put_secret(
    State(s): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    ctx.note("secret.write", None, None);
    let mut b: SecretBody = read_json(&headers, body, s.max_body_bytes).await?;
    let path = secret_path(b.path.take())?;
    ctx.note("secret.write", Some(path.as_str()), None);
    let value = required_string(b.value.take(), "value")?;
    let version = s.service.put(&ctx.req, path.clone(), value).await?;
    Ok(audited(
        StatusCode::OK,
        &json!({ "path": path.as_str(), "version": version.get() }),
    ))
}

/// `DELETE /secrets {"path"[, "version"]}`
pub async fn delete_secret(
    State(s): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    ctx.note("secret.delete", None, None);
    let mut b: SecretBody = read_json(&headers, body, s.max_body_bytes).await?;
    let path = secret_path(b.path.take())?;
    let version = optional_version(b.version.as_deref())?;
    ctx.note(
        "secret.delete",
        Some(path.as_str()),
        version.map(|v| v.as_i64()),
    );
    let deleted = s.service.delete(&ctx.req, path.clone(), version).await?;
    let body = match version {
        Some(v) => {
            json!({ "path": path.as_str(), "version": v.get(), "deleted": true, "versions_deleted": 1 })
        }
        None => {
            json!({ "path": path.as_str(), "deleted": true, "versions_deleted": deleted.len() })
        }
    };
    Ok(audited(StatusCode::OK, &body))
}

fn token_json(t: &TokenInfo) -> Value {
    json!({
        "id": t.row.id,
        "name": t.row.name,
        "role": t.role.as_str(),
        "scopes": t.scopes.iter().map(Scope::as_str).collect::<Vec<_>>(),
        "created_at": rfc3339(t.row.created_at),
        "created_by": t.row.created_by,
        "expires_at": t.row.expires_at.map(rfc3339),
        "last_used_at": t.row.last_used_at.map(rfc3339),
        "revoked_at": t.row.revoked_at.map(rfc3339),
    })
}

/// `POST /v1/tokens {"name","role","scopes":[...],"ttl"?}`: the token is in
/// the response, once.
pub async fn create_token(
    State(s): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let b: TokenBody = read_json(&headers, body, s.max_body_bytes).await?;
    let name = required_string(b.name, "name")?;
    ctx.note(
        "token.create",
        Some(&format!("token:{}", name.as_str())),
        None,
    );
    let role: Role = required_string(b.role, "role")?
        .parse()
        .map_err(|m: String| Error::bad_request(ErrorCode::InvalidField, m))?;
    let scopes = required_strings(b.scopes, "scopes")?
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let ttl = match b.ttl {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(humantime::parse_duration(&t).map_err(|_| {
            Error::bad_request(
                ErrorCode::InvalidField,
                "field `ttl` must be a duration such as 30d or 12h",
            )
        })?),
        Some(_) => {
            return Err(Error::bad_request(
                ErrorCode::InvalidField,
                "field `ttl` must be a duration such as 30d or 12h",
            ));
        }
    };
    let t = s
        .service
        .create_token(&ctx.req, &name, role, scopes, ttl)
        .await?;
    let mut body = token_json(&t.info);
    body["token"] = Value::String(t.token.to_string());
    Ok(audited(StatusCode::CREATED, &body))
}

/// `GET /v1/tokens`: the tokens within the caller's scope (never the tokens
/// themselves).
pub async fn list_tokens(State(s): State<AppState>, ctx: Ctx) -> Result<Response, Error> {
    let tokens = s.service.list_tokens(&ctx.req).await?;
    let tokens: Vec<Value> = tokens.iter().map(token_json).collect();
    Ok(json_response(StatusCode::OK, &json!({ "tokens": tokens })))
}

/// `DELETE /v1/tokens/{id or name}`
pub async fn revoke_token(
    State(s): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()) {
        ctx.note("token.revoke", Some(&format!("token:{id}")), None);
    }
    let t = s.service.revoke_token(&ctx.req, &id).await?;
    Ok(audited(
        StatusCode::OK,
        &json!({ "id": t.row.id, "name": t.row.name, "revoked": true }),
    ))
}

/// `GET /metrics`: Prometheus text format. No key needed (no secrets in it).
pub async fn metrics(State(s): State<AppState>) -> Response {
    let text = s.metrics.render(s.service.gauges().await);
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `GET /healthz`: the process answers. No key needed.
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

/// `GET /readyz`: the store answers and the keys are loaded. No key needed.
pub async fn readyz(State(s): State<AppState>) -> Result<Response, Error> {
    s.service.ready().await?;
    Ok(json_response(StatusCode::OK, &json!({ "status": "ready" })))
}

/// 405 with the `Allow` header listing the route's methods.
pub fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = Error::MethodNotAllowed.into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

pub async fn route_not_found() -> Error {
    Error::RouteNotFound
}
