//! The API description, `GET /openapi.json`: an OpenAPI document generated
//! from the code. The paths and operations come from the handlers'
//! `#[utoipa::path]` through the same `routes!` registration that builds the
//! router (`http::api`), the bodies from the response and request types'
//! `ToSchema` derives, and the error codes from `error::ErrorCode`. This
//! module adds what belongs to no handler: the document's info, the
//! security schemes and the shared error schema.
//!
//! The document is public, like `/healthz`: it describes the API and holds
//! no secret, path, token or setting (whether `/metrics` is listed is the
//! only thing it says about the configuration).

use axum::Extension;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Bytes;
use utoipa::openapi::path::Paths;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorCode, ErrorDetail};

const DESCRIPTION: &str = "\
A self-hosted secret server implementing TrueFoundry's Generic Secret Store contract. \
This document is generated from the server's own route table; see docs/api.md for people.

**Credentials.** `/secrets` and `/v1/tokens` need a static API key or a managed token \
(`sdt_...`), sent as `X-API-Key`, `Authorization: Bearer`, `Authorization: Basic` \
(any user name, the key as password) or a configured extra header. Every credential \
presented must be valid. `/healthz`, `/readyz`, `/metrics` and this document need none.

**Errors** are JSON `{\"error\":{\"code\",\"message\"}}` (schema `Error`); `code` is one \
of `ErrorCode` and is what clients should match on; `message` is for people and never \
echoes the request. Besides the statuses listed per operation, any path not listed here \
answers 404 `route_not_found`, and a listed path answers other methods with 405 \
`method_not_allowed` and an `Allow` header (on `/secrets` and `/v1/tokens` only once \
the credential is accepted, so 401 comes first). `HEAD` is answered like `GET`.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "secretd",
        description = DESCRIPTION,
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode)),
    modifiers(&Security),
    tags(
        (name = "secrets", description = "The Generic Secret Store contract, plus listing and metadata"),
        (name = "tokens", description = "Managed tokens (admins)"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    ),
)]
struct ApiDoc;

/// The security schemes the protected operations name.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        c.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// The document before the routes are added to it.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The finished document, serialized once when the router is built.
#[derive(Clone, Debug)]
pub struct Document(Bytes);

impl Document {
    pub fn new(doc: utoipa::openapi::OpenApi) -> Self {
        // Serializing plain data with string keys cannot fail.
        Document(Bytes::from(serde_json::to_vec(&doc).unwrap_or_default()))
    }
}

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document (no credential: it holds no secret)",
    responses((status = 200, description = "The OpenAPI document", body = Object,
        content_type = "application/json")),
)]
pub async fn openapi_json(Extension(doc): Extension<Document>) -> Response {
    let mut r = (StatusCode::OK, doc.0).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The `Allow` header of a registered path: its documented methods.
pub fn allow_header(paths: &Paths) -> HeaderValue {
    let mut methods = Vec::new();
    for item in paths.paths.values() {
        for (name, op) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ] {
            if op.is_some() && !methods.contains(&name) {
                methods.push(name);
            }
        }
    }
    HeaderValue::from_str(&methods.join(", ")).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use utoipa::Path as _;

    use super::super::body::SecretQuery;
    use super::super::handlers::__path_get_secret;

    /// `GET /secrets` reads its query by hand: the documented parameters are
    /// the ones it reads.
    #[test]
    fn documented_query_parameters_are_the_parsed_ones() {
        let op = __path_get_secret::operation();
        let names: Vec<String> = op
            .parameters
            .unwrap_or_default()
            .into_iter()
            .map(|p| match p {
                utoipa::openapi::RefOr::T(p) => p.name,
                utoipa::openapi::RefOr::Ref(r) => r.ref_location,
            })
            .collect();
        assert_eq!(names, SecretQuery::PARAMS);
    }
}
