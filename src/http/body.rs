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
use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;
use crate::path::Version;

/// The fields of a `/secrets` request body; each is checked for its type
/// by the handler that needs it. Unknown fields are ignored, duplicates are
/// refused.
#[derive(Deserialize)]
pub struct SecretBody {
    pub path: Option<Value>,
    pub value: Option<Value>,
    /// Raw JSON text, so numbers are read from their literal digits.
    pub version: Option<Box<RawValue>>,
}

impl Drop for SecretBody {
    /// Wipes any string not taken out (e.g. the value of a request refused
    /// for its path).
    fn drop(&mut self) {
        for v in [self.path.as_mut(), self.value.as_mut()]
            .into_iter()
            .flatten()
        {
            if let Value::String(s) = v {
                s.zeroize();
            }
        }
    }
}

fn too_large(max: usize) -> Error {
    Error::TooLarge {
        code: "body_too_large",
        message: format!("request body is larger than {max} bytes"),
    }
}

/// Reads and decodes a JSON body of at most `max` bytes. A declared
/// `Content-Length` over the limit is refused before reading anything; a
/// chunked body is cut off at the limit.
pub async fn read_json(headers: &HeaderMap, body: Body, max: usize) -> Result<SecretBody, Error> {
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
    let bytes = match Limited::new(body, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large(max)),
        Err(_) => {
            return Err(Error::bad_request(
                "invalid_body",
                "could not read the request body",
            ));
        }
    };
    let parsed = decode(&bytes);
    // The body may hold a secret value: wipe our copy when we own it alone.
    if let Ok(mut m) = bytes.try_into_mut() {
        m.as_mut().zeroize();
    }
    parsed
}

fn decode(bytes: &[u8]) -> Result<SecretBody, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::bad_request(
            "invalid_json",
            "request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice::<SecretBody>(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => {
                let msg = e.to_string();
                for field in ["path", "value", "version"] {
                    if msg.starts_with(&format!("duplicate field `{field}`")) {
                        return Error::bad_request(
                            "invalid_json",
                            format!("duplicate field `{field}`"),
                        );
                    }
                }
                Error::bad_request("invalid_json", "request body must be a JSON object")
            }
            Category::Io | Category::Syntax | Category::Eof => Error::bad_request(
                "invalid_json",
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
pub fn required_string(
    field: Option<Value>,
    name: &'static str,
) -> Result<Zeroizing<String>, Error> {
    match field {
        Some(Value::String(s)) => Ok(Zeroizing::new(s)),
        None => Err(Error::bad_request(
            "missing_field",
            format!("field `{name}` is required"),
        )),
        Some(_) => Err(Error::bad_request(
            "invalid_field",
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

/// The query of `GET /secrets`.
#[derive(Debug)]
pub struct SecretQuery {
    pub path: String,
    pub version: Option<Version>,
}

impl SecretQuery {
    /// Parses `path` (required) and `version` (optional); either given twice
    /// is refused. Other parameters are ignored (an API key there is never
    /// read).
    pub fn parse(raw: Option<&str>) -> Result<Self, Error> {
        let mut path = None;
        let mut version = None;
        // RFC 3986 query: `+` is a literal plus (a valid path character),
        // not a space as in HTML forms.
        let raw = raw.unwrap_or("").replace('+', "%2B");
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            let slot = match k.as_ref() {
                "path" => &mut path,
                "version" => &mut version,
                _ => continue,
            };
            if slot.is_some() {
                return Err(Error::bad_request(
                    "invalid_query",
                    format!("query parameter `{k}` is given more than once"),
                ));
            }
            *slot = Some(v.into_owned());
        }
        let path = path.ok_or_else(|| {
            Error::bad_request("missing_parameter", "query parameter `path` is required")
        })?;
        let version = version.as_deref().map(Version::parse).transpose()?;
        Ok(SecretQuery { path, version })
    }
}
