//! The service error and its single mapping to an HTTP status and JSON body.
//!
//! Handlers return `Result<_, Error>` and use `?`; this is the only place that
//! decides statuses and error codes. Internal details (store errors, which
//! row is corrupt) are logged here and answered with a generic message.
//! Messages never echo a request's input.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::path::{PathError, SecretPath, Version, VersionError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidPath(#[from] PathError),
    #[error("{0}")]
    InvalidVersion(#[from] VersionError),
    /// Any other malformed request; `code` is a stable machine-readable word.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// `GET` of a secret or version that does not exist or was deleted.
    #[error("{0}")]
    NotFound(String),
    /// `DELETE` of a secret or version that does not exist or was already
    /// deleted: 400, as the vendor's contract says.
    #[error("{0}")]
    NothingToDelete(String),
    #[error("missing or invalid API key")]
    Unauthorized,
    /// Authenticated, but the role or scope does not allow it (403).
    #[error("{0}")]
    Forbidden(String),
    /// Too many failed authentications from this client (429).
    #[error("too many failed authentication attempts; retry later")]
    RateLimited { retry_after_secs: u64 },
    /// A name already taken (409).
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("no such route")]
    RouteNotFound,
    /// A stored value failed authentication: never served.
    #[error("stored data failed its integrity check")]
    Corrupt {
        path: Option<SecretPath>,
        version: Option<Version>,
        detail: String,
    },
    #[error("service unavailable, try again")]
    Unavailable(String),
    /// The client did not send its body within the body timeout (408).
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The request took longer than the request timeout (503).
    #[error("the request took too long; try again")]
    Timeout,
    #[error("internal error")]
    Internal(String),
}

impl Error {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Error::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidPath(_)
            | Error::InvalidVersion(_)
            | Error::BadRequest { .. }
            | Error::NothingToDelete(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) | Error::RouteNotFound => StatusCode::NOT_FOUND,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Corrupt { .. } | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Unavailable(_) | Error::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            Error::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidPath(_) => "invalid_path",
            Error::InvalidVersion(_) => "invalid_version",
            Error::BadRequest { code, .. } | Error::TooLarge { code, .. } => code,
            Error::NotFound(_) | Error::NothingToDelete(_) => "not_found",
            Error::Unauthorized => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::RateLimited { .. } => "rate_limited",
            Error::Conflict(_) => "conflict",
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::RouteNotFound => "route_not_found",
            Error::Corrupt { .. } => "corrupt",
            Error::Unavailable(_) => "unavailable",
            Error::BodyTimeout => "request_timeout",
            Error::Timeout => "timeout",
            Error::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => Error::Unavailable(d),
            StoreError::Conflict(m) => Error::Conflict(m),
            StoreError::Corrupt(detail) => Error::Corrupt {
                path: None,
                version: None,
                detail,
            },
            other => Error::Internal(other.to_string()),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::Corrupt {
                path,
                version,
                detail,
            } => tracing::error!(
                path = %path.as_ref().map_or("-", SecretPath::as_str),
                version = %version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                detail = %detail,
                "stored value failed its integrity check; not served"
            ),
            Error::Internal(d) => tracing::error!(detail = %d, "internal error"),
            Error::Unavailable(d) => tracing::warn!(detail = %d, "store unavailable"),
            _ => {}
        }
        let body = Body {
            error: Detail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let mut r = json_response(self.status(), &body);
        match self {
            Error::Unauthorized => {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="secretd", Basic realm="secretd""#),
                );
            }
            Error::RateLimited { retry_after_secs } => {
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
            }
            _ => {}
        }
        r
    }
}

/// A JSON response with `Content-Type: application/json`.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut r = (status, bytes).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(_) => {
            let mut r = (
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":{"code":"internal","message":"internal error"}}"#,
            )
                .into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    }
}
