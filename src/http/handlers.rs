//! Handlers: extract, call the service, shape the response. No logic beyond
//! that lives here.
//!
//! Each handler carries its `#[utoipa::path]` description and each response
//! body is a typed struct deriving `ToSchema`: `http::router` registers the
//! handlers with `utoipa_axum::routes!`, which builds the route and its
//! entry in `GET /openapi.json` from the same annotation.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoResponses, ToSchema};

use std::sync::Arc;

use super::AppState;
use super::body::{
    DeleteBody, PutBody, ReadKind, SecretQuery, TokenBody, optional_version, read_json,
    required_string, required_strings,
};
use super::middleware::{Audited, Ctx};
use crate::authz::{Role, Scope};
use crate::error::{
    Error, ErrorBody, ErrorCode, WipedBuf, json_response, json_response_with, write_json_str,
};
use crate::path::{PathArg, PathError, ROOT, SecretPath};
use crate::service::TokenInfo;

/// A secret's value (`GET /secrets?path=P[&version=V]`).
#[derive(Serialize, ToSchema)]
pub struct SecretOut<'a> {
    #[schema(example = "tfy-secret/acme/db")]
    path: &'a str,
    /// Absent only for the root path `tfy-secret` (the integration's
    /// validation call), whose `value` is always empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    version: Option<u64>,
    value: &'a str,
    /// RFC 3339 with milliseconds; absent for the root path.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "2026-11-23T10:00:00.000Z")]
    created_at: Option<String>,
}

impl SecretOut<'_> {
    /// Writes what `serde_json` writes for `ReadOut::Value(self)`, the
    /// strings through [`write_json_str`] (a read's hot path: the value is
    /// most of the response).
    fn write_json(&self, buf: &mut WipedBuf) -> serde_json::Result<()> {
        use std::io::Write as _;
        // Every field named: a new one does not compile until written here.
        let SecretOut {
            path,
            version,
            value,
            created_at,
        } = self;
        let io = serde_json::Error::io;
        buf.write_all(br#"{"path":"#).map_err(io)?;
        write_json_str(buf, path)?;
        if let Some(v) = version {
            write!(buf, r#","version":{v}"#).map_err(io)?;
        }
        buf.write_all(br#","value":"#).map_err(io)?;
        write_json_str(buf, value)?;
        if let Some(t) = created_at {
            buf.write_all(br#","created_at":"#).map_err(io)?;
            write_json_str(buf, t)?;
        }
        buf.write_all(b"}").map_err(io)
    }
}

/// What `GET /secrets` answers: a value, a listing page or metadata.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ReadOut<'a> {
    Value(SecretOut<'a>),
    List(ListOut<'a>),
    Metadata(MetadataOut<'a>),
}

/// A page of a listing (`GET /secrets?path=P&list=true`).
#[derive(Serialize, ToSchema)]
pub struct ListOut<'a> {
    /// The prefix listed.
    path: &'a str,
    secrets: Vec<ListItem>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ListItem {
    path: String,
    /// The latest live version.
    version: i64,
    updated_at: String,
}

/// Every version of a secret, live or deleted, never a value
/// (`GET /secrets?path=P&metadata=true`).
#[derive(Serialize, ToSchema)]
pub struct MetadataOut<'a> {
    path: &'a str,
    /// The newest live version; `null` if every version is deleted.
    #[schema(required = true)]
    latest: Option<i64>,
    versions: Vec<VersionOut>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionOut {
    version: i64,
    created_at: String,
    /// `null` while the version is live.
    #[schema(required = true)]
    deleted_at: Option<String>,
    /// The token id or static key id that wrote it.
    #[schema(required = true)]
    created_by: Option<String>,
}

/// A committed write (`PUT /secrets`).
#[derive(Serialize, ToSchema)]
pub struct PutOut<'a> {
    path: &'a str,
    /// The new version's number.
    version: u64,
}

/// A committed delete (`DELETE /secrets`).
#[derive(Serialize, ToSchema)]
pub struct DeleteOut<'a> {
    path: &'a str,
    /// Present when one version was deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    deleted: bool,
    versions_deleted: usize,
}

/// A managed token's description; never the token itself.
#[derive(Serialize, ToSchema)]
pub struct TokenOut {
    #[schema(example = "tok_0123abcd")]
    id: String,
    name: String,
    #[schema(value_type = Role)]
    role: &'static str,
    scopes: Vec<String>,
    created_at: String,
    created_by: String,
    #[schema(required = true)]
    expires_at: Option<String>,
    #[schema(required = true)]
    last_used_at: Option<String>,
    #[schema(required = true)]
    revoked_at: Option<String>,
}

/// A new token (`POST /v1/tokens`): the only time `token` is shown.
#[derive(Serialize, ToSchema)]
pub struct NewTokenOut {
    #[serde(flatten)]
    info: TokenOut,
    /// The credential (`sdt_...`): send it as `X-API-Key` or
    /// `Authorization: Bearer`. Stored only as a hash.
    token: String,
}

/// `GET /v1/tokens`.
#[derive(Serialize, ToSchema)]
pub struct TokenList {
    tokens: Vec<TokenOut>,
}

/// A revoked token (`DELETE /v1/tokens/{id}`).
#[derive(Serialize, ToSchema)]
pub struct RevokedOut {
    id: String,
    name: String,
    revoked: bool,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct StatusOut {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Errors of every request that needs a credential (other statuses are
/// listed per operation).
#[derive(IntoResponses)]
#[allow(dead_code)] // documentation only: answers are built from `Error`
pub enum AuthErrors {
    /// `unauthorized`: no credential, or an unknown, expired or revoked one.
    /// The body is the same for every cause.
    #[response(status = 401, headers(("WWW-Authenticate" = String)))]
    Unauthorized(ErrorBody),
    /// `forbidden`: the credential's role or scope does not allow this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `rate_limited`: too many failed authentications from this address;
    /// sent whatever the credential until `Retry-After` seconds pass.
    #[response(status = 429, headers(("Retry-After" = u64)))]
    RateLimited(ErrorBody),
    /// `corrupt` (a stored value failed its integrity check; never served)
    /// or `internal`.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `unavailable`: the store or the audit log cannot be reached; or
    /// `timeout`: a read took longer than `--request-timeout`. Retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Errors of a request with a JSON body.
#[derive(IntoResponses)]
#[allow(dead_code)] // documentation only: answers are built from `Error`
pub enum BodyErrors {
    /// `request_timeout`: the body did not arrive within `--body-timeout`.
    #[response(status = 408)]
    BodyTimeout(ErrorBody),
    /// `body_too_large` (over `--max-body-bytes`, refused before reading
    /// when `Content-Length` says so) or `value_too_large`.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `unsupported_media_type`: a Content-Type other than `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
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
#[utoipa::path(
    get,
    path = "/secrets",
    tag = "secrets",
    summary = "Read a secret, one of its versions, a listing or its version metadata",
    description = "Without `list` or `metadata`: the latest live version's value (or version \
        `version`); the root path `tfy-secret` answers 200 with an empty value (the \
        integration's validation call). With `list=true`: the secrets strictly below `path` \
        that the caller's scope covers, sorted, paged by `limit` and `cursor` (never a value). \
        With `metadata=true`: every version of the secret (never a value). Viewers may list \
        and read metadata but not values. Each parameter at most once; others are ignored.",
    params(
        ("path" = String, Query, description = "`tfy-secret` or `tfy-secret/...`", example = "tfy-secret/acme/db"),
        ("version" = Option<u64>, Query, minimum = 1, description = "A version to read; not with `list` or `metadata`"),
        ("list" = Option<bool>, Query, description = "`true`/`1` to list the secrets below `path`"),
        ("metadata" = Option<bool>, Query, description = "`true`/`1` for the secret's versions"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Page size of a listing (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "The value; or, with `list=true`, a `ListOut`; or, with \
            `metadata=true`, a `MetadataOut`", body = ReadOut),
        (status = 400, description = "`invalid_path`, `invalid_version`, `invalid_query`, \
            `missing_parameter`, `invalid_cursor`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such secret or version, or it was deleted", body = ErrorBody),
        AuthErrors,
    ),
    security(("api_key" = []), ("bearer" = []), ("basic" = [])),
)]
pub async fn get_secret(
    State(s): State<Arc<AppState>>,
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
    ctx.note(op, Some(target.as_str()), None);
    match (q.kind, target) {
        (ReadKind::List, prefix) => list(&s, &ctx, &prefix, q.cursor, q.limit).await,
        (ReadKind::Metadata, PathArg::Secret(path)) => metadata(&s, &ctx, &path).await,
        (ReadKind::Metadata, PathArg::Root) => Err(PathError::IsRoot.into()),
        // The integration's validation call: the root always answers 200,
        // with a `value` so a client that checks reads also passes.
        (ReadKind::Value, PathArg::Root) => match q.version {
            None => Ok(json_response(
                StatusCode::OK,
                &ReadOut::Value(SecretOut {
                    path: ROOT,
                    version: None,
                    value: "",
                    created_at: None,
                }),
            )),
            Some(_) => Err(Error::NotFound(
                "the root path tfy-secret has no versions".into(),
            )),
        },
        (ReadKind::Value, PathArg::Secret(path)) => {
            let v = s.service.get(&ctx.req, &path, q.version).await?;
            ctx.note(op, None, Some(v.version.as_i64()));
            // Room for the value, a few escapes, the path and the fields.
            let capacity = v.value.len() + v.value.len() / 8 + v.path.as_str().len() + 128;
            let out = SecretOut {
                path: v.path.as_str(),
                version: Some(v.version.get()),
                value: &v.value,
                created_at: Some(rfc3339(v.created_at_ms)),
            };
            Ok(json_response_with(StatusCode::OK, capacity, |buf| {
                out.write_json(buf)
            }))
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
    let secrets = page
        .items
        .iter()
        .map(|i| ListItem {
            path: i.path.clone(),
            version: i.latest_version,
            updated_at: rfc3339(i.updated_at),
        })
        .collect();
    let prefix = prefix.as_str();
    Ok(json_response(
        StatusCode::OK,
        &ReadOut::List(ListOut {
            path: prefix,
            secrets,
            next_cursor: page
                .next_after
                .map(|a| URL_SAFE_NO_PAD.encode(a.as_bytes())),
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
    let versions = versions
        .iter()
        .map(|v| VersionOut {
            version: v.version,
            created_at: rfc3339(v.created_at),
            deleted_at: v.deleted_at.map(rfc3339),
            created_by: v.created_by.clone(),
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &ReadOut::Metadata(MetadataOut {
            path: path.as_str(),
            latest,
            versions,
        }),
    ))
}

/// The body's `path`, which must name a secret (PUT and DELETE on the root
/// itself are refused).
fn secret_path(field: Option<Value>) -> Result<SecretPath, Error> {
    Ok(SecretPath::parse(&required_string(field, "path")?)?)
}

/// `PUT /secrets {"path","value"}`
#[utoipa::path(
    put,
    path = "/secrets",
    tag = "secrets",
    summary = "Store a new version of a secret",
    description = "Creates the secret (admin) or adds a version to one with a live version \
        (editor). Answered only after the write is durably committed.",
    request_body(content = PutBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored", body = PutOut),
        (status = 400, description = "`invalid_json`, `invalid_body`, `missing_field`, \
            `invalid_field`, `invalid_path` (also for the root path itself)", body = ErrorBody),
        BodyErrors,
        AuthErrors,
    ),
    security(("api_key" = []), ("bearer" = []), ("basic" = [])),
)]
pub async fn put_secret(
    State(s): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    ctx.note("secret.write", None, None);
    let mut b: PutBody = read_json(&headers, body, s.max_body_bytes, s.body_timeout).await?;
    let path = secret_path(b.path.take())?;
    ctx.note("secret.write", Some(path.as_str()), None);
    let value = required_string(b.value.take(), "value")?;
    let version = s.service.put(&ctx.req, path.clone(), value).await?;
    Ok(audited(
        StatusCode::OK,
        &PutOut {
            path: path.as_str(),
            version: version.get(),
        },
    ))
}

/// `DELETE /secrets {"path"[, "version"]}`
#[utoipa::path(
    delete,
    path = "/secrets",
    tag = "secrets",
    summary = "Delete one version of a secret, or all of them",
    description = "Deleted values are gone from the data directory when this answers; version \
        numbers are never reused.",
    request_body(content = DeleteBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Deleted", body = DeleteOut),
        (status = 400, description = "`not_found` (no such secret or version, or already \
            deleted: 400 as the vendor's contract says), `invalid_json`, `invalid_body`, \
            `missing_field`, `invalid_field`, `invalid_path`, `invalid_version`", body = ErrorBody),
        BodyErrors,
        AuthErrors,
    ),
    security(("api_key" = []), ("bearer" = []), ("basic" = [])),
)]
pub async fn delete_secret(
    State(s): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    ctx.note("secret.delete", None, None);
    let mut b: DeleteBody = read_json(&headers, body, s.max_body_bytes, s.body_timeout).await?;
    let path = secret_path(b.path.take())?;
    let version = optional_version(b.version.as_deref())?;
    ctx.note(
        "secret.delete",
        Some(path.as_str()),
        version.map(|v| v.as_i64()),
    );
    let deleted = s.service.delete(&ctx.req, path.clone(), version).await?;
    let body = DeleteOut {
        path: path.as_str(),
        version: version.map(|v| v.get()),
        deleted: true,
        versions_deleted: if version.is_some() { 1 } else { deleted.len() },
    };
    Ok(audited(StatusCode::OK, &body))
}

fn token_out(t: &TokenInfo) -> TokenOut {
    TokenOut {
        id: t.row.id.clone(),
        name: t.row.name.clone(),
        role: t.role.as_str(),
        scopes: t.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        created_at: rfc3339(t.row.created_at),
        created_by: t.row.created_by.clone(),
        expires_at: t.row.expires_at.map(rfc3339),
        last_used_at: t.row.last_used_at.map(rfc3339),
        revoked_at: t.row.revoked_at.map(rfc3339),
    }
}

/// `POST /v1/tokens {"name","role","scopes":[...],"ttl"?}`: the token is in
/// the response, once.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    summary = "Create a managed token (admins, within their own scopes)",
    request_body(content = TokenBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `token` is shown this once", body = NewTokenOut),
        (status = 400, description = "`invalid_json`, `invalid_body`, `missing_field`, \
            `invalid_field`, `invalid_path` (a scope)", body = ErrorBody),
        (status = 409, description = "`conflict`: a live token already has this name", body = ErrorBody),
        BodyErrors,
        AuthErrors,
    ),
    security(("api_key" = []), ("bearer" = []), ("basic" = [])),
)]
pub async fn create_token(
    State(s): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let b: TokenBody = read_json(&headers, body, s.max_body_bytes, s.body_timeout).await?;
    let name = required_string(b.name, "name")?;
    ctx.note("token.create", Some(&format!("token:{}", &*name)), None);
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
    let body = NewTokenOut {
        info: token_out(&t.info),
        token: t.token.to_string(),
    };
    Ok(audited(StatusCode::CREATED, &body))
}

/// `GET /v1/tokens`: the tokens within the caller's scope (never the tokens
/// themselves).
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "tokens",
    summary = "List the managed tokens within the caller's scope (admins)",
    responses(
        (status = 200, description = "The tokens, never the credentials", body = TokenList),
        AuthErrors,
    ),
    security(("api_key" = []), ("bearer" = []), ("basic" = [])),
)]
pub async fn list_tokens(State(s): State<Arc<AppState>>, ctx: Ctx) -> Result<Response, Error> {
    let tokens = s.service.list_tokens(&ctx.req).await?;
    let tokens = tokens.iter().map(token_out).collect();
    Ok(json_response(StatusCode::OK, &TokenList { tokens }))
}

/// `DELETE /v1/tokens/{id or name}`
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    tag = "tokens",
    summary = "Revoke a managed token, by id or name (admins)",
    description = "Takes effect at once on every replica.",
    params(("id" = String, Path, description = "The token's id (`tok_...`) or name")),
    responses(
        (status = 200, description = "Revoked", body = RevokedOut),
        (status = 404, description = "`not_found`: no such token in the caller's scope, or \
            already revoked", body = ErrorBody),
        AuthErrors,
    ),
    security(("api_key" = []), ("bearer" = []), ("basic" = [])),
)]
pub async fn revoke_token(
    State(s): State<Arc<AppState>>,
    ctx: Ctx,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, Error> {
    // An id that is not UTF-8 (`%FF`) names no token: the same JSON 404 as
    // an unknown one, not the extractor's plain-text 400.
    let Ok(Path(id)) = id else {
        return Err(Error::NotFound(
            "no such token within this token's scope".into(),
        ));
    };
    if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()) {
        ctx.note("token.revoke", Some(&format!("token:{id}")), None);
    }
    let t = s.service.revoke_token(&ctx.req, &id).await?;
    Ok(audited(
        StatusCode::OK,
        &RevokedOut {
            id: t.row.id.clone(),
            name: t.row.name.clone(),
            revoked: true,
        },
    ))
}

/// `GET /metrics`: Prometheus text format. No key needed (no secrets in it).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (no credential; absent here when --metrics-listen moves it)",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4",
        body = String, content_type = "text/plain")),
)]
pub async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let text = s.metrics.render(s.service.gauges().await);
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `GET /healthz`: the process answers. No key needed.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: the process answers (no credential)",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = StatusOut)),
)]
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, &StatusOut { status: "ok" })
}

/// `GET /readyz`: the store answers and the keys are loaded. No key needed.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: the store answers and the keys are loaded (no credential)",
    responses(
        (status = 200, description = "`{\"status\":\"ready\"}`", body = StatusOut),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store cannot be reached", body = ErrorBody),
    ),
)]
pub async fn readyz(State(s): State<Arc<AppState>>) -> Result<Response, Error> {
    // A load balancer must learn of an unreachable store within its probe
    // interval, not after the store's own (longer) operation deadline.
    tokio::time::timeout(READY_TIMEOUT, s.service.ready())
        .await
        .map_err(|_| Error::Unavailable("readiness check timed out".into()))??;
    Ok(json_response(
        StatusCode::OK,
        &StatusOut { status: "ready" },
    ))
}

/// Longest `/readyz` waits for the store.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// 405 with the `Allow` header listing the route's methods.
pub fn method_not_allowed(allow: HeaderValue) -> Response {
    let mut r = Error::MethodNotAllowed.into_response();
    r.headers_mut().insert(header::ALLOW, allow);
    r
}

pub async fn route_not_found() -> Error {
    Error::RouteNotFound
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_value_body_is_what_serde_writes() {
        let created = rfc3339(1_764_000_000_123);
        for (path, version, value, created_at) in [
            ("tfy-secret/a", Some(7), "v", Some(created.clone())),
            (
                "tfy-secret/a",
                Some(u64::MAX),
                "quo\"te\\ \n\u{1} é",
                Some(created),
            ),
            (ROOT, None, "", None),
        ] {
            let out = SecretOut {
                path,
                version,
                value,
                created_at,
            };
            let mut buf = WipedBuf::with_capacity(1);
            out.write_json(&mut buf).unwrap();
            assert_eq!(
                std::str::from_utf8(buf.as_ref()).unwrap(),
                serde_json::to_string(&ReadOut::Value(out)).unwrap()
            );
        }
    }
}
