//! Request decoding at the edge: the JSON body of PUT/DELETE and the query
//! string of GET, into typed fields. Error messages name a field and a
//! problem, never the input (serde's own messages can quote values, so they
//! are never passed through).

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorCode};
use crate::path::Version;
use crate::wipe::WipedString;

/// The body of `PUT /secrets`; each field is checked for its type by the
/// handler. Unknown fields are ignored, duplicates are refused. Also the
/// request schema of the API description.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct PutBody {
    /// The secret's path, `tfy-secret/...`.
    #[schema(value_type = String, required = true, example = "tfy-secret/acme/db")]
    pub path: Option<Value>,
    /// The value to store as a new version.
    #[schema(value_type = String, required = true, example = "s3cr3t")]
    pub value: Option<Value>,
}

/// The body of `DELETE /secrets`: without `version`, every version of the
/// secret is deleted. Unknown fields are ignored, duplicates are refused.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct DeleteBody {
    /// The secret's path, `tfy-secret/...`.
    #[schema(value_type = String, required = true, example = "tfy-secret/acme/db")]
    pub path: Option<Value>,
    /// One version to delete: a positive integer, also accepted as a numeric
    /// string; `null` or absent deletes every version.
    // Raw JSON text, so numbers are read from their literal digits.
    #[schema(value_type = Option<u64>, minimum = 1, example = 2)]
    pub version: Option<Box<RawValue>>,
}

/// Wipes any string not taken out (e.g. the value of a request refused for
/// its path).
fn wipe(fields: [Option<&mut Value>; 2]) {
    for v in fields.into_iter().flatten() {
        if let Value::String(s) = v {
            crate::wipe::string(s);
        }
    }
}

impl Drop for PutBody {
    fn drop(&mut self) {
        wipe([self.path.as_mut(), self.value.as_mut()]);
    }
}

impl Drop for DeleteBody {
    fn drop(&mut self) {
        wipe([self.path.as_mut(), None]);
    }
}

fn too_large(max: usize) -> Error {
    Error::TooLarge {
        code: ErrorCode::BodyTooLarge,
        message: format!("request body is larger than {max} bytes"),
    }
}

/// Reads and decodes a JSON body of at most `max` bytes. A declared
/// `Content-Length` over the limit is refused before reading anything; a
/// chunked body is cut off at the limit; a body that has not fully arrived
/// within `timeout` gets 408.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    timeout: std::time::Duration,
) -> Result<T, Error> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let mime = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(Error::UnsupportedMediaType);
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, max).collect())
        .await
        .map_err(|_| Error::BodyTimeout)?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large(max)),
        Err(_) => {
            return Err(Error::bad_request(
                ErrorCode::InvalidBody,
                "could not read the request body",
            ));
        }
    };
    let parsed = decode(&bytes);
    // The body may hold a secret value: wipe our copy when we own it alone.
    if let Ok(mut m) = bytes.try_into_mut() {
        crate::wipe::bytes(m.as_mut());
    }
    parsed
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::bad_request(
            ErrorCode::InvalidJson,
            "request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice::<T>(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => {
                // serde's text can quote the input (a value): read the field
                // name out of it, then wipe it.
                let msg = Zeroizing::new(e.to_string());
                let duplicate = msg
                    .strip_prefix("duplicate field `")
                    .and_then(|rest| rest.split('`').next())
                    .and_then(|name| {
                        ["path", "value", "version", "name", "role", "scopes", "ttl"]
                            .into_iter()
                            .find(|f| *f == name)
                    });
                match duplicate {
                    Some(field) => Error::bad_request(
                        ErrorCode::InvalidJson,
                        format!("duplicate field `{field}`"),
                    ),
                    None => Error::bad_request(
                        ErrorCode::InvalidJson,
                        "request body must be a JSON object",
                    ),
                }
            }
            Category::Io | Category::Syntax | Category::Eof => Error::bad_request(
                ErrorCode::InvalidJson,
                format!(
                    "request body is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            ),
        }
    })
}

/// A required string field.
pub fn required_string(field: Option<Value>, name: &'static str) -> Result<WipedString, Error> {
    match field {
        Some(Value::String(s)) => Ok(WipedString::new(s)),
        None => Err(Error::bad_request(
            ErrorCode::MissingField,
            format!("field `{name}` is required"),
        )),
        Some(_) => Err(Error::bad_request(
            ErrorCode::InvalidField,
            format!("field `{name}` must be a string"),
        )),
    }
}

/// The optional `version` of a DELETE body: a JSON number or numeric string
/// (`null` is the same as absent).
pub fn optional_version(field: Option<&RawValue>) -> Result<Option<Version>, Error> {
    match field.map(RawValue::get).map(str::trim) {
        None | Some("null") => Ok(None),
        Some(raw) => Ok(Some(Version::from_json_text(raw)?)),
    }
}

/// The body of `POST /v1/tokens`; each field is checked by the handler.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct TokenBody {
    /// 1-64 characters of `A-Z a-z 0-9 - _ . @`, not starting with `tok_`;
    /// unique among live tokens.
    #[schema(value_type = String, required = true, example = "ci-acme")]
    pub name: Option<Value>,
    #[schema(value_type = crate::authz::Role, required = true)]
    pub role: Option<Value>,
    /// Path prefixes of whole segments; `tfy-secret` alone is everything.
    /// Must lie within the caller's own scopes.
    #[schema(value_type = Vec<String>, required = true, example = json!(["tfy-secret/acme"]))]
    pub scopes: Option<Value>,
    /// Lifetime such as `30d` or `12h`; absent or `null`: no expiry.
    #[schema(value_type = Option<String>, example = "30d")]
    pub ttl: Option<Value>,
}

/// A required array of strings.
pub fn required_strings(field: Option<Value>, name: &'static str) -> Result<Vec<String>, Error> {
    let bad = || {
        Error::bad_request(
            ErrorCode::InvalidField,
            format!("field `{name}` must be an array of strings"),
        )
    };
    match field {
        None => Err(Error::bad_request(
            ErrorCode::MissingField,
            format!("field `{name}` is required"),
        )),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// What `GET /secrets` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    Value,
    List,
    Metadata,
}

/// The query of `GET /secrets`.
#[derive(Debug)]
pub struct SecretQuery {
    pub path: String,
    pub version: Option<Version>,
    pub kind: ReadKind,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

fn flag(v: Option<String>, name: &str) -> Result<bool, Error> {
    match v.as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(_) => Err(Error::bad_request(
            ErrorCode::InvalidQuery,
            format!("query parameter `{name}` must be true or false"),
        )),
    }
}

/// Most items a listing page may hold.
pub const MAX_LIST_LIMIT: usize = 1000;

impl SecretQuery {
    /// The parameters read (documented on `handlers::get_secret`; a test
    /// checks the two lists agree).
    pub const PARAMS: [&'static str; 6] =
        ["path", "version", "list", "metadata", "limit", "cursor"];

    /// Parses `path` (required), `version`, `list`, `metadata`, `limit` and
    /// `cursor`; any of them given twice is refused. Other parameters are
    /// ignored (an API key there is never read).
    pub fn parse(raw: Option<&str>) -> Result<Self, Error> {
        const NAMES: [&str; 6] = SecretQuery::PARAMS;
        let mut vals: [Option<String>; 6] = Default::default();
        // RFC 3986 query: `+` is a literal plus (a valid path character),
        // not a space as in HTML forms.
        let raw = raw.unwrap_or("").replace('+', "%2B");
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            let Some(i) = NAMES.iter().position(|n| *n == k.as_ref()) else {
                continue;
            };
            if vals[i].is_some() {
                return Err(Error::bad_request(
                    ErrorCode::InvalidQuery,
                    format!("query parameter `{}` is given more than once", NAMES[i]),
                ));
            }
            vals[i] = Some(v.into_owned());
        }
        let [path, version, list, metadata, limit, cursor] = vals;
        let path = path.ok_or_else(|| {
            Error::bad_request(
                ErrorCode::MissingParameter,
                "query parameter `path` is required",
            )
        })?;
        let version = version.as_deref().map(Version::parse).transpose()?;
        let kind = match (flag(list, "list")?, flag(metadata, "metadata")?) {
            (false, false) => ReadKind::Value,
            (true, false) => ReadKind::List,
            (false, true) => ReadKind::Metadata,
            (true, true) => {
                return Err(Error::bad_request(
                    ErrorCode::InvalidQuery,
                    "`list` and `metadata` cannot be combined",
                ));
            }
        };
        if kind != ReadKind::Value && version.is_some() {
            return Err(Error::bad_request(
                ErrorCode::InvalidQuery,
                "`version` cannot be combined with `list` or `metadata`",
            ));
        }
        let limit = limit
            .map(|l| match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
                _ => Err(Error::bad_request(
                    ErrorCode::InvalidQuery,
                    format!("`limit` must be 1 to {MAX_LIST_LIMIT}"),
                )),
            })
            .transpose()?;
        Ok(SecretQuery {
            path,
            version,
            kind,
            limit,
            cursor,
        })
    }
}
