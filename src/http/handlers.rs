//! Handlers: extract, call the service, shape the response. No logic beyond
//! that lives here.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::AppState;
use super::body::{SecretQuery, optional_version, read_json, required_string};
use crate::error::{Error, json_response};
use crate::path::{PathArg, PathError, ROOT, SecretPath};

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

/// `GET /secrets?path=P[&version=V]`
pub async fn get_secret(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, Error> {
    let q = SecretQuery::parse(q.as_deref())?;
    match PathArg::parse(&q.path)? {
        // The integration's validation call: the root always answers 200,
        // with a `value` so a client that checks reads also passes.
        PathArg::Root => match q.version {
            None => Ok(json_response(
                StatusCode::OK,
                &json!({ "path": ROOT, "value": "" }),
            )),
            Some(_) => Err(Error::NotFound(
                "the root path tfy-secret has no versions".into(),
            )),
        },
        PathArg::Secret(path) => {
            let v = s.service.get(&path, q.version).await?;
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

/// The body's `path`, which must name a secret (PUT and DELETE on the root
/// itself are refused).
fn secret_path(field: Option<serde_json::Value>) -> Result<SecretPath, Error> {
    match PathArg::parse(&required_string(field, "path")?)? {
        PathArg::Secret(path) => Ok(path),
        PathArg::Root => Err(PathError::IsRoot.into()),
    }
}

/// `PUT /secrets {"path","value"}`
pub async fn put_secret(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let mut b = read_json(&headers, body, s.max_body_bytes).await?;
    let path = secret_path(b.path.take())?;
    let value = required_string(b.value.take(), "value")?;
    let version = s.service.put(path.clone(), value).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "path": path.as_str(), "version": version.get() }),
    ))
}

/// `DELETE /secrets {"path"[, "version"]}`
pub async fn delete_secret(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let mut b = read_json(&headers, body, s.max_body_bytes).await?;
    let path = secret_path(b.path.take())?;
    let version = optional_version(b.version.as_deref())?;
    let deleted = s.service.delete(path.clone(), version).await?;
    let body = match version {
        Some(v) => {
            json!({ "path": path.as_str(), "version": v.get(), "deleted": true, "versions_deleted": 1 })
        }
        None => {
            json!({ "path": path.as_str(), "deleted": true, "versions_deleted": deleted.len() })
        }
    };
    Ok(json_response(StatusCode::OK, &body))
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
