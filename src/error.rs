//! The service error and its single mapping to an HTTP status and JSON body.
//!
//! Handlers return `Result<_, Error>` and use `?`; this is the only place that
//! decides statuses and error codes. Internal details (store errors, which
//! row is corrupt) are logged here and answered with a generic message.
//! Messages never echo a request's input.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::path::{PathError, SecretPath, Version, VersionError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidPath(#[from] PathError),
    #[error("{0}")]
    InvalidVersion(#[from] VersionError),
    /// Any other malformed request; `code` says which kind.
    #[error("{message}")]
    BadRequest { code: ErrorCode, message: String },
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
    TooLarge { code: ErrorCode, message: String },
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

/// Every machine-readable `error.code` an answer can carry. The OpenAPI
/// document's `ErrorCode` enum is derived from this type, so a new code is
/// documented by being added here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: `path` is not a valid secret path.
    InvalidPath,
    /// 400: `version` is not a positive integer.
    InvalidVersion,
    /// 400: a query parameter is malformed, repeated or combined wrongly.
    InvalidQuery,
    /// 400: a required query parameter is missing.
    MissingParameter,
    /// 400: `cursor` is not one this server issued.
    InvalidCursor,
    /// 400: the body is empty, not JSON, not an object, or repeats a field.
    InvalidJson,
    /// 400: the body could not be read.
    InvalidBody,
    /// 400: a required body field is missing.
    MissingField,
    /// 400: a body field has the wrong type or an invalid value.
    InvalidField,
    /// 404 on reads (no such secret, version or token); 400 on DELETE of
    /// something that does not exist or is already deleted.
    NotFound,
    /// 401: no credential, or one that is unknown, expired or revoked.
    Unauthorized,
    /// 403: the credential's role or scope does not allow the request.
    Forbidden,
    /// 429: too many failed authentications from this address.
    RateLimited,
    /// 409: the name is already taken.
    Conflict,
    /// 413: the request body is over the server's limit.
    BodyTooLarge,
    /// 413: the secret value is over the server's limit.
    ValueTooLarge,
    /// 415: the body's Content-Type is not `application/json`.
    UnsupportedMediaType,
    /// 405: the route exists but not with this method (see `Allow`).
    MethodNotAllowed,
    /// 404: no such route.
    RouteNotFound,
    /// 500: a stored value failed its integrity check and was not served.
    Corrupt,
    /// 503: the store (or the audit log) is unavailable; retry.
    Unavailable,
    /// 408: the request body did not arrive within the body timeout.
    RequestTimeout,
    /// 503: the request took longer than the request timeout; retry.
    Timeout,
    /// 500: an unexpected error, logged on the server.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::InvalidVersion => "invalid_version",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::MissingParameter => "missing_parameter",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Conflict => "conflict",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl Error {
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
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

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidPath(_) => ErrorCode::InvalidPath,
            Error::InvalidVersion(_) => ErrorCode::InvalidVersion,
            Error::BadRequest { code, .. } | Error::TooLarge { code, .. } => *code,
            Error::NotFound(_) | Error::NothingToDelete(_) => ErrorCode::NotFound,
            Error::Unauthorized => ErrorCode::Unauthorized,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::RateLimited { .. } => ErrorCode::RateLimited,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            Error::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Error::RouteNotFound => ErrorCode::RouteNotFound,
            Error::Corrupt { .. } => ErrorCode::Corrupt,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::BodyTimeout => ErrorCode::RequestTimeout,
            Error::Timeout => ErrorCode::Timeout,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => Error::Unavailable(d),
            // Only if keys were rotated again after each of the service's
            // reloads during one PUT: worth a retry.
            e @ StoreError::NewerDataKey(_) => Error::Unavailable(e.to_string()),
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

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For people; never echoes the request's input.
    pub message: String,
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
        let body = ErrorBody {
            error: ErrorDetail {
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
    json_response_sized(status, body, 128)
}

/// [`json_response`] into a buffer of `capacity` bytes, sized for the body
/// so it is written once, not regrown (a value with many escaped characters
/// may still outgrow the estimate). Response bodies can hold a secret value
/// or a new token in clear, so the buffer is a [`WipedBuf`]: wiped when
/// hyper is done with it, and on every regrowth.
pub fn json_response_sized(status: StatusCode, body: &impl Serialize, capacity: usize) -> Response {
    json_response_with(status, capacity, |buf| serde_json::to_writer(buf, body))
}

/// A JSON response whose body `write` puts into a [`WipedBuf`] of
/// `capacity` bytes (see [`json_response_sized`]); a 500 if it fails.
pub fn json_response_with<E>(
    status: StatusCode,
    capacity: usize,
    write: impl FnOnce(&mut WipedBuf) -> Result<(), E>,
) -> Response {
    let mut buf = WipedBuf::with_capacity(capacity);
    match write(&mut buf) {
        Ok(()) => {
            let body = axum::body::Body::from(axum::body::Bytes::from_owner(buf));
            let mut r = (status, body).into_response();
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

/// A write buffer that never leaves its contents behind in freed memory:
/// it zeroes the old allocation when it grows and its whole capacity when
/// dropped (as the owner of a response's `Bytes`, once the body is sent).
#[derive(Debug, Default)]
pub struct WipedBuf(Vec<u8>);

impl WipedBuf {
    pub fn with_capacity(capacity: usize) -> Self {
        WipedBuf(Vec::with_capacity(capacity))
    }

    fn wipe(&mut self) {
        // Zeroes the full capacity, then empties the buffer.
        crate::wipe::vec(&mut self.0);
    }
}

impl std::io::Write for WipedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let needed = self.0.len() + data.len();
        if needed > self.0.capacity() {
            let mut grown = Vec::with_capacity(needed.max(self.0.capacity() * 2));
            grown.extend_from_slice(&self.0);
            self.wipe();
            self.0 = grown;
        }
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `s` as a JSON string, byte for byte what `serde_json` writes
/// (it escapes only `"`, `\\` and control characters), but without its
/// byte-at-a-time scan when nothing needs escaping: values are the bulk of
/// a read's response, and most hold no such character.
pub fn write_json_str(buf: &mut WipedBuf, s: &str) -> serde_json::Result<()> {
    if needs_escape(s.as_bytes()) {
        return serde_json::to_writer(buf, s);
    }
    use std::io::Write as _;
    let write = |buf: &mut WipedBuf| -> std::io::Result<()> {
        buf.write_all(b"\"")?;
        buf.write_all(s.as_bytes())?;
        buf.write_all(b"\"")
    };
    write(buf).map_err(serde_json::Error::io)
}

/// Whether `bytes` holds a byte JSON must escape. Checks 32 bytes at a
/// time without an early exit inside a block, which compiles to vector
/// compares.
fn needs_escape(bytes: &[u8]) -> bool {
    let escaped = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        if block.iter().fold(false, |any, &b| any | escaped(b)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&b| escaped(b))
}

impl AsRef<[u8]> for WipedBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for WipedBuf {
    fn drop(&mut self) {
        self.wipe();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write as _;

    #[test]
    fn wiped_buf_keeps_what_is_written_across_regrowth_and_empties_when_wiped() {
        let mut b = WipedBuf::with_capacity(4);
        let mut want = Vec::new();
        for i in 0..100u8 {
            let chunk = [i; 7];
            b.write_all(&chunk).unwrap();
            want.extend_from_slice(&chunk);
        }
        assert_eq!(b.as_ref(), want.as_slice());
        assert!(b.0.capacity() >= 700);
        b.wipe();
        assert!(b.as_ref().is_empty());
        // a response body built on it carries exactly the JSON
        let r = json_response_sized(StatusCode::OK, &serde_json::json!({"value": "v\"1"}), 1);
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn json_strings_are_written_as_serde_json_writes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "quote\" and back\\slash".into(),
            "line\nbreak\ttab\r\u{8}\u{c}".into(),
            "\u{0}\u{1}\u{1f} \u{7f} é 🔑 </script>".into(),
        ];
        // Every ASCII character and a few multi-byte ones at every position
        // of strings around the 32-byte block edges.
        let mut specials: Vec<char> = (0u8..0x80).map(char::from).collect();
        specials.extend([
            'é', 'ß', '€', '🔑', '\u{2028}', '\u{2029}', '\u{feff}', '\u{ffff}',
        ]);
        for len in [1, 2, 31, 32, 33, 63, 64, 65, 97] {
            for at in 0..len {
                for &special in &specials {
                    let mut v: String = "x".repeat(len);
                    v.replace_range(at..=at, &special.to_string());
                    cases.push(v);
                }
            }
        }
        for v in cases {
            let mut b = WipedBuf::with_capacity(1);
            write_json_str(&mut b, &v).unwrap();
            assert_eq!(
                std::str::from_utf8(b.as_ref()).unwrap(),
                serde_json::to_string(&v).unwrap(),
                "{v:?}"
            );
        }
    }
}
