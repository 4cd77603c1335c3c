//! Issue #7, goal 5: bad input, table-driven, several hundred rows.
//!
//! Every row is one request (sent with the test client, or as raw bytes for
//! malformed HTTP) and its exact expected answer: status and error `code`
//! for everything the router sees, status alone for what the HTTP layer
//! (hyper) refuses before any route runs. For every row: the status and code
//! are exact, errors are JSON, nothing is a 5xx, each answer takes under a
//! second, and a row that tries to write leaves the store exactly as it was
//! (the listing, a sentinel's metadata and the token list are compared
//! after it). The rows run in an order shuffled by the printed seed, and the
//! server must still be healthy at the end. It runs on both backends, one
//! summary line each: `{"goal":"bad_input","runs":N,"violations":0,"seed":S}`
//! (`bad_input_postgres` on PostgreSQL).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::common::*;

const SENTINEL: &str = "tfy-secret/matrix/sentinel";
const ABSENT: &str = "tfy-secret/matrix/absent";
/// The server's body timeout in this suite (the 408 rows wait for it).
const BODY_TIMEOUT: Duration = Duration::from_millis(500);
/// Every answer must come faster than this.
const MAX_LATENCY: Duration = Duration::from_secs(1);

/// What a row expects.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// A JSON error with this status and `error.code`.
    Err(u16, &'static str),
    /// A success with this status.
    Ok(u16),
    /// Refused by the HTTP/1.1 parser before routing: this status, no body
    /// shape promised.
    Transport(u16),
}

enum Req {
    Http {
        method: String,
        uri: String,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
    },
    /// Bytes written as they are on a fresh connection; `half_close` shuts
    /// the write side afterwards.
    Raw { bytes: Vec<u8>, half_close: bool },
}

/// Header pairs, in order.
type Headers = Vec<(String, String)>;
/// Status, lower-cased headers, body.
type Answer = (u16, Headers, Vec<u8>);

struct Case {
    name: String,
    req: Req,
    want: Want,
    /// A write attempt: the store must be unchanged afterwards.
    write: bool,
}

fn auth() -> Vec<(String, String)> {
    vec![("x-api-key".into(), KEY.into())]
}

fn json_auth() -> Vec<(String, String)> {
    vec![
        ("x-api-key".into(), KEY.into()),
        ("content-type".into(), "application/json".into()),
    ]
}

/// The rows, built from the grammar's edges.
struct Table(Vec<Case>);

impl Table {
    fn http(
        &mut self,
        name: impl Into<String>,
        method: &str,
        uri: impl Into<String>,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
        want: Want,
    ) {
        let write = !matches!(method, "GET" | "HEAD");
        self.0.push(Case {
            name: name.into(),
            req: Req::Http {
                method: method.into(),
                uri: uri.into(),
                headers,
                body,
            },
            want,
            write,
        });
    }

    fn get_query(&mut self, name: impl Into<String>, query: &str, want: Want) {
        self.http(name, "GET", format!("/secrets?{query}"), auth(), None, want);
    }

    fn get_path(&mut self, path: &str, want: Want) {
        self.get_query(
            format!("GET path={path:?}"),
            &format!("path={}", enc(path)),
            want,
        );
    }

    fn body(
        &mut self,
        method: &str,
        name: impl Into<String>,
        body: impl Into<Vec<u8>>,
        want: Want,
    ) {
        let uri = if method == "POST" {
            "/v1/tokens"
        } else {
            "/secrets"
        };
        self.http(name, method, uri, json_auth(), Some(body.into()), want);
    }

    fn raw(
        &mut self,
        name: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
        half_close: bool,
        want: Want,
    ) {
        let bytes = bytes.into();
        let write = bytes.starts_with(b"PUT") || bytes.starts_with(b"DELETE");
        self.0.push(Case {
            name: name.into(),
            req: Req::Raw { bytes, half_close },
            want,
            write,
        });
    }
}

const E_PATH: Want = Want::Err(400, "invalid_path");
const E_VERSION: Want = Want::Err(400, "invalid_version");
const E_QUERY: Want = Want::Err(400, "invalid_query");
const E_JSON: Want = Want::Err(400, "invalid_json");
const E_BODY: Want = Want::Err(400, "invalid_body");
const E_MISSING: Want = Want::Err(400, "missing_field");
const E_FIELD: Want = Want::Err(400, "invalid_field");
const E_GONE: Want = Want::Err(400, "not_found");
const E_404: Want = Want::Err(404, "not_found");
const E_ROUTE: Want = Want::Err(404, "route_not_found");
const E_METHOD: Want = Want::Err(405, "method_not_allowed");
const E_401: Want = Want::Err(401, "unauthorized");
const E_415: Want = Want::Err(415, "unsupported_media_type");
const OK: Want = Want::Ok(200);

/// Paths every verb refuses with 400 `invalid_path`.
fn bad_paths() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        "/",
        "secret",
        "tfy-secrets/a",
        "tfy-secretx",
        "tfy-secretx/a",
        "TFY-SECRET/a",
        "Tfy-Secret/a",
        "//tfy-secret/a",
        "///tfy-secret/a",
        "tfy-secret//a",
        "tfy-secret/a/",
        "tfy-secret/a//b",
        "tfy-secret/a/b/",
        "/tfy-secret//",
        "tfy-secret/.",
        "tfy-secret/..",
        "tfy-secret/a/..",
        "tfy-secret/a/.",
        "tfy-secret/a/../b",
        "tfy-secret/./a",
        "tfy-secret/../tfy-secret/a",
        "../tfy-secret/a",
        "./tfy-secret/a",
        "tfy-secret/%2e%2e",
        "tfy-secret/%2E%2E/a",
        "tfy-secret/a%2Fb",
        "tfy-secret/a%00b",
        "tfy-secret/a b",
        "tfy-secret/a\tb",
        "tfy-secret/a\nb",
        "tfy-secret/a\rb",
        "tfy-secret/a\r\nX-Injected: 1",
        "tfy-secret/a\u{0}b",
        "tfy-secret/\u{0}",
        "tfy-secret\u{0}/a",
        "tfy-secret/a\u{7f}b",
        "tfy-secret/a\u{1b}b",
        "tfy-secret/a\u{8}b",
        "tfy-secret/a\\b",
        "tfy-secret\\a",
        "tfy-secret/..\\a",
        "tfy-secret/a?b",
        "tfy-secret/a#b",
        "tfy-secret/a%b",
        "tfy-secret/a:b",
        "tfy-secret/a*b",
        "tfy-secret/a;b",
        "tfy-secret/a&b",
        "tfy-secret/a'b",
        "tfy-secret/a\"b",
        "tfy-secret/a<b>",
        "tfy-secret/a|b",
        "tfy-secret/a$b",
        "tfy-secret/a!b",
        "tfy-secret/a(b)",
        "tfy-secret/a[b]",
        "tfy-secret/a{b}",
        "tfy-secret/a^b",
        "tfy-secret/a`b",
        "tfy-secret/\u{0430}cme",
        "tfy-secret/caf\u{e9}",
        "tfy-secret/cafe\u{301}",
        "tfy-secret/\u{ff0e}\u{ff0e}",
        "tfy-secret/\u{2024}\u{2024}",
        "tfy-secret/\u{ff0e}\u{ff0e}/a",
        "tfy-secret\u{2215}a",
        "tfy-secret/a\u{2215}b",
        "tfy-secret/a\u{ff0f}b",
        "tfy-secret/a\u{29f8}b",
        "tfy-secret/a\u{ff3c}b",
        "tfy-secret/a\u{200b}b",
        "tfy-secret/a\u{200d}",
        "tfy-secret/a\u{feff}",
        "\u{feff}tfy-secret/a",
        "tfy-secret/a\u{a0}b",
        "tfy-secret/a\u{85}b",
        "tfy-secret/a\u{2028}b",
        "tfy-secret/\u{1F600}",
        "tfy\u{2010}secret/a",
        "tfy\u{2011}secret/a",
        "tfy-secret/a\u{fffd}",
        " tfy-secret/a",
        "tfy-secret/a ",
        "tfy-secret /a",
        "\ttfy-secret/a",
        "tfy-secret/a\n",
        "file:///etc/passwd",
        "http://tfy-secret/a",
        "tfy-secret:a",
        "C:\\tfy-secret\\a",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let seg = "a".repeat(128);
    // one past each limit
    v.push(format!("tfy-secret/{seg}b"));
    v.push(format!("tfy-secret/x/{seg}b/y"));
    v.push(format!("tfy-secret/{}", vec!["s"; 16].join("/")));
    v.push(format!("tfy-secret/{}", vec!["s"; 100].join("/")));
    v.push(format!(
        "tfy-secret/{seg}/{seg}/{seg}/{}",
        "b".repeat(512 - 11 - 3 * 129 + 1)
    ));
    v.push(format!("tfy-secret/{}", vec![seg.as_str(); 30].join("/")));
    v.push(format!("tfy-secret/{}", "a".repeat(4096)));
    v
}

/// Paths exactly at a limit: valid, and naming nothing.
fn at_limit_paths() -> Vec<String> {
    let seg = "a".repeat(128);
    vec![
        format!("tfy-secret/{seg}"),
        format!("tfy-secret/{}", vec!["s"; 15].join("/")),
        format!(
            "tfy-secret/{seg}/{seg}/{seg}/{}",
            "b".repeat(512 - 11 - 3 * 129)
        ),
        "/tfy-secret/A-Z_a.z~0+9=@,x".to_owned(),
        "tfy-secret/...".to_owned(),
        "tfy-secret/.a".to_owned(),
    ]
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn path_rows(t: &mut Table) {
    for p in bad_paths() {
        t.get_path(&p, E_PATH);
        t.body(
            "PUT",
            format!("PUT path={p:?}"),
            format!(r#"{{"path":{},"value":"x"}}"#, json_str(&p)),
            E_PATH,
        );
        t.body(
            "DELETE",
            format!("DELETE path={p:?}"),
            format!(r#"{{"path":{}}}"#, json_str(&p)),
            E_PATH,
        );
    }
    for p in at_limit_paths() {
        t.get_path(&p, E_404);
        t.body(
            "DELETE",
            format!("DELETE at-limit path={p:?}"),
            format!(r#"{{"path":{}}}"#, json_str(&p)),
            E_GONE,
        );
    }
    // The root: readable (the integration's validation call), never written.
    for p in ["tfy-secret", "/tfy-secret", "tfy-secret/"] {
        t.get_path(p, OK);
        t.body(
            "PUT",
            format!("PUT root {p:?}"),
            format!(r#"{{"path":"{p}","value":"x"}}"#),
            E_PATH,
        );
        t.body(
            "DELETE",
            format!("DELETE root {p:?}"),
            format!(r#"{{"path":"{p}"}}"#),
            E_PATH,
        );
        t.body(
            "DELETE",
            format!("DELETE root {p:?} version 1"),
            format!(r#"{{"path":"{p}","version":1}}"#),
            E_PATH,
        );
    }
    t.get_query("root with a version", "path=tfy-secret&version=1", E_404);
    t.get_query("root metadata", "path=tfy-secret&metadata=true", E_PATH);
    // JSON escapes decode before the grammar applies.
    for (body, want) in [
        (r#"{"path":"tfy-secret/\u002e\u002e","value":"x"}"#, E_PATH),
        (r#"{"path":"tfy-secret/a\u0000b","value":"x"}"#, E_PATH),
        (r#"{"path":"tfy-secret/a\u002fb/","value":"x"}"#, E_PATH),
        (r#"{"path":"tfy-secret/\u0430","value":"x"}"#, E_PATH),
        (r#"{"path":"tfy-secret/\ud83d\ude00","value":"x"}"#, E_PATH),
        (r#"{"path":"tfy-secret\\a","value":"x"}"#, E_PATH),
    ] {
        t.body("PUT", format!("PUT escaped {body}"), body, want);
    }
    // Percent-encoding in the query decodes once, then the grammar applies.
    for (q, want) in [
        ("path=tfy-secret/%2e%2e/x", E_PATH),
        ("path=tfy-secret/%2E%2E", E_PATH),
        ("path=tfy-secret/.%2e", E_PATH),
        ("path=tfy-secret/a%2F%2Fb", E_PATH),
        ("path=tfy-secret%2F", OK),
        ("path=tfy-secret%2Fmatrix%2Fsentinel", OK),
        ("path=%2Ftfy-secret%2Fmatrix%2Fsentinel", OK),
        ("path=tfy-secret/matrix/sentinel%00", E_PATH),
        ("path=tfy-secret/matrix/sentinel%0A", E_PATH),
        ("path=tfy-secret/a%5Cb", E_PATH),
        ("path=tfy-secret/a%C0%AEb", E_PATH),
        ("path=tfy-secret/%C0%AE%C0%AE", E_PATH),
        ("path=tfy-secret/a%ff", E_PATH),
        ("path=tfy-secret/a%ZZ", E_PATH),
        ("path=tfy-secret/a%", E_PATH),
        ("path=tfy-secret/a%2", E_PATH),
        ("path=tfy-secret/%252e%252e", E_PATH),
        ("path=%20tfy-secret/a", E_PATH),
        ("path=tfy-secret/a%0D%0AX-Injected:%201", E_PATH),
        ("path=tfy-secret/matrix/sentinel+x", E_404),
        ("path=tfy-secret/matrix/sentinel%2Bx", E_404),
        ("path", E_PATH),
        ("path=", E_PATH),
        ("path&version=1", E_PATH),
    ] {
        t.get_query(format!("GET ?{q}"), q, want);
    }
}

fn query_rows(t: &mut Table) {
    let s = format!("path={SENTINEL}");
    for (q, want) in [
        (String::new(), Want::Err(400, "missing_parameter")),
        ("version=1".to_owned(), Want::Err(400, "missing_parameter")),
        (
            format!("PATH={SENTINEL}"),
            Want::Err(400, "missing_parameter"),
        ),
        (
            format!("path%00={SENTINEL}"),
            Want::Err(400, "missing_parameter"),
        ),
        (format!("{s}&path={SENTINEL}"), E_QUERY),
        (format!("{s}&path={ABSENT}"), E_QUERY),
        (format!("path={ABSENT}&{s}"), E_QUERY),
        (format!("{s}&version=1&version=1"), E_QUERY),
        (format!("{s}&version=1&version=2"), E_QUERY),
        (format!("{s}&version=1&version=abc"), E_QUERY),
        (format!("{s}&list=yes"), E_QUERY),
        (format!("{s}&list="), E_QUERY),
        (format!("{s}&metadata=TRUE"), E_QUERY),
        (format!("{s}&list=true&metadata=true"), E_QUERY),
        (format!("{s}&list=true&list=true"), E_QUERY),
        (format!("{s}&metadata=true&version=1"), E_QUERY),
        (format!("{s}&list=true&version=1"), E_QUERY),
        ("path=tfy-secret&list=true&limit=0".to_owned(), E_QUERY),
        ("path=tfy-secret&list=true&limit=1001".to_owned(), E_QUERY),
        ("path=tfy-secret&list=true&limit=-1".to_owned(), E_QUERY),
        ("path=tfy-secret&list=true&limit=abc".to_owned(), E_QUERY),
        ("path=tfy-secret&list=true&limit=1.0".to_owned(), E_QUERY),
        ("path=tfy-secret&list=true&limit=".to_owned(), E_QUERY),
        (
            "path=tfy-secret&list=true&limit=99999999999999999999999".to_owned(),
            E_QUERY,
        ),
        (
            "path=tfy-secret&list=true&cursor=!!!".to_owned(),
            Want::Err(400, "invalid_cursor"),
        ),
        (
            "path=tfy-secret&list=true&cursor=%FF%FE".to_owned(),
            Want::Err(400, "invalid_cursor"),
        ),
        (
            "path=tfy-secret&list=true&cursor=_w".to_owned(),
            Want::Err(400, "invalid_cursor"),
        ),
        ("path=tfy-secret&list=true&limit=1000".to_owned(), OK),
        (format!("{s}&unknown=1&api=2"), OK),
        (format!("{s}&metadata=1"), OK),
        (format!("{s}&list=0&metadata=false"), OK),
        // a bad version is reported before a bad path
        ("path=../x&version=abc".to_owned(), E_VERSION),
    ] {
        t.get_query(format!("GET ?{q}"), &q, want);
    }
    // versions in the query
    for v in [
        "0",
        "00",
        "0.0",
        "-1",
        "-0",
        "1.5",
        "1.01",
        "1.0000000000000000001",
        "abc",
        "",
        " ",
        "1 ",
        " 1",
        "\t1",
        "NaN",
        "nan",
        "inf",
        "Infinity",
        "-inf",
        "1e2",
        "1E2",
        "1e0",
        "+1",
        "0x10",
        "0b1",
        "0o1",
        "1.",
        "..",
        ".5",
        ".0",
        "1..0",
        "1.0.0",
        "9223372036854775808",
        "9223372036854775808.0",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999",
        "-9223372036854775808",
        "\u{ff11}",
        "\u{661}",
        "1_000",
        "1,0",
        "1/2",
        "v1",
        "\u{0}1",
        "1\u{0}",
        "true",
        "null",
        "[1]",
        "\"1\"",
        "1;2",
    ] {
        t.get_query(
            format!("GET version={v:?}"),
            &format!("path={SENTINEL}&version={}", enc(v)),
            E_VERSION,
        );
    }
    // a literal `+` in the query is a plus, not a space
    t.get_query(
        "GET version=+1 (raw plus)",
        &format!("path={SENTINEL}&version=+1"),
        E_VERSION,
    );
    for (v, want) in [
        ("1", OK),
        ("2", OK),
        ("01", OK),
        ("0001", OK),
        ("1.0", OK),
        ("2.000", OK),
        ("3", E_404),
        ("9223372036854775807", E_404),
        ("9223372036854775807.0", E_404),
    ] {
        t.get_query(
            format!("GET version={v:?}"),
            &format!("path={SENTINEL}&version={v}"),
            want,
        );
    }
    t.get_query("GET absent secret", &format!("path={ABSENT}"), E_404);
}

fn delete_version_rows(t: &mut Table) {
    // Refused forms, aimed at the sentinel: a wrong acceptance would show.
    for (lit, want) in [
        ("0", E_VERSION),
        ("-1", E_VERSION),
        ("-0", E_VERSION),
        ("1.5", E_VERSION),
        ("0.5", E_VERSION),
        ("1e0", E_VERSION),
        ("1E0", E_VERSION),
        ("0.1e1", E_VERSION),
        ("1.0e0", E_VERSION),
        ("3.9999999999999999", E_VERSION),
        ("1.0000000000000001", E_VERSION),
        ("9223372036854775808", E_VERSION),
        ("18446744073709551616", E_VERSION),
        ("1e300", E_VERSION),
        ("-1e300", E_VERSION),
        ("true", E_VERSION),
        ("false", E_VERSION),
        ("[1]", E_VERSION),
        ("[]", E_VERSION),
        ("{}", E_VERSION),
        (r#"{"v":1}"#, E_VERSION),
        (r#""0""#, E_VERSION),
        (r#""-1""#, E_VERSION),
        (r#""1.5""#, E_VERSION),
        (r#""abc""#, E_VERSION),
        (r#""""#, E_VERSION),
        (r#"" ""#, E_VERSION),
        (r#""1 ""#, E_VERSION),
        (r#"" 1""#, E_VERSION),
        (r#""NaN""#, E_VERSION),
        (r#""+1""#, E_VERSION),
        (r#""1e0""#, E_VERSION),
        (r#""0x1""#, E_VERSION),
        (r#""\u0661""#, E_VERSION),
        (r#""9223372036854775808""#, E_VERSION),
        // not JSON at all
        ("NaN", E_JSON),
        ("Infinity", E_JSON),
        ("-Infinity", E_JSON),
        ("+1", E_JSON),
        ("01", E_JSON),
        (".5", E_JSON),
        ("1.", E_JSON),
        ("0x1", E_JSON),
        ("-", E_JSON),
        ("'1'", E_JSON),
        ("1 2", E_JSON),
        ("undefined", E_JSON),
    ] {
        t.body(
            "DELETE",
            format!("DELETE version={lit}"),
            format!(r#"{{"path":"{SENTINEL}","version":{lit}}}"#),
            want,
        );
    }
    // Accepted forms, aimed at a secret that does not exist: 400 not_found.
    for lit in [
        "1",
        "1.0",
        "1.000",
        r#""1""#,
        r#""1.0""#,
        r#""01""#,
        r#""\u0031""#,
        "null",
        " 1 ",
        "9223372036854775807",
    ] {
        t.body(
            "DELETE",
            format!("DELETE absent version={lit}"),
            format!(r#"{{"path":"{ABSENT}","version":{lit}}}"#),
            E_GONE,
        );
    }
    for lit in ["3", "999", r#""3""#, "9223372036854775807"] {
        t.body(
            "DELETE",
            format!("DELETE sentinel missing version={lit}"),
            format!(r#"{{"path":"{SENTINEL}","version":{lit}}}"#),
            E_GONE,
        );
    }
    // DELETE reads its body only: query parameters are ignored.
    t.http(
        "DELETE with the sentinel in the query",
        "DELETE",
        format!("/secrets?path={SENTINEL}&version=1"),
        json_auth(),
        Some(format!(r#"{{"path":"{ABSENT}"}}"#).into_bytes()),
        E_GONE,
    );
    t.http(
        "DELETE with the query only",
        "DELETE",
        format!("/secrets?path={SENTINEL}"),
        json_auth(),
        None,
        E_JSON,
    );
    t.http(
        "DELETE with the version in the query only",
        "DELETE",
        "/secrets?version=1",
        json_auth(),
        Some(format!(r#"{{"path":"{ABSENT}"}}"#).into_bytes()),
        E_GONE,
    );
}

fn deep(n: usize, open: &str, close: &str) -> String {
    format!("{}{}", open.repeat(n), close.repeat(n))
}

fn body_rows(t: &mut Table) {
    let p = json_str(SENTINEL);
    let ok_put = format!(r#"{{"path":{p},"value":"x"}}"#);
    let mut put: Vec<(String, Want)> = vec![
        (String::new(), E_JSON),
        ("   ".into(), E_JSON),
        ("\r\n".into(), E_JSON),
        ("not json".into(), E_JSON),
        ("{".into(), E_JSON),
        ("}".into(), E_JSON),
        ("{}}".into(), E_JSON),
        ("[]".into(), E_JSON),
        (format!("[{ok_put}]"), E_JSON),
        ("1".into(), E_JSON),
        ("-1".into(), E_JSON),
        ("1.5".into(), E_JSON),
        (p.clone(), E_JSON),
        ("null".into(), E_JSON),
        ("true".into(), E_JSON),
        ("false".into(), E_JSON),
        ("{}".into(), E_MISSING),
        (format!(r#"{{"path":{p}}}"#), E_MISSING),
        (r#"{"value":"x"}"#.into(), E_MISSING),
        (r#"{"path":null,"value":"x"}"#.into(), E_MISSING),
        (format!(r#"{{"path":{p},"value":null}}"#), E_MISSING),
        (format!(r#"{{"Path":{p},"Value":"x"}}"#), E_MISSING),
        (format!(r#"{{"path ":{p},"value":"x"}}"#), E_MISSING),
        // duplicates
        (format!(r#"{{"path":{p},"value":"x","value":"y"}}"#), E_JSON),
        (format!(r#"{{"path":{p},"path":{p},"value":"y"}}"#), E_JSON),
        (
            format!(r#"{{"path":"tfy-secret/matrix/other","path":{p},"value":"y"}}"#),
            E_JSON,
        ),
        (format!(r#"{{"path":{p},"value":"x","path":{p}}}"#), E_JSON),
        (
            format!(r#"{{"path":{p},"value":null,"value":"y"}}"#),
            E_JSON,
        ),
        // trailing data and non-JSON syntax
        (format!("{ok_put} trailing"), E_JSON),
        (format!("{ok_put}{{}}"), E_JSON),
        (format!("{ok_put}{ok_put}"), E_JSON),
        (format!("{ok_put},"), E_JSON),
        (format!("{ok_put}\0"), E_JSON),
        (format!("{ok_put} // comment"), E_JSON),
        (format!("\u{feff}{ok_put}"), E_JSON),
        (format!(r#"{{"path":{p},"value":"x",}}"#), E_JSON),
        (format!(r#"{{"path":{p} /* c */,"value":"x"}}"#), E_JSON),
        (format!(r#"{{'path':{p},'value':'x'}}"#), E_JSON),
        (format!(r#"{{path:{p},value:"x"}}"#), E_JSON),
        (format!(r#"{{"path":{p},"value":"x""#), E_JSON),
        (format!(r#"{{"path":{p},"value":"x"#), E_JSON),
        (format!(r#"{{"path":{p},"value"}}"#), E_JSON),
        (format!(r#"{{"path":{p};"value":"x"}}"#), E_JSON),
        // strings JSON refuses
        (format!(r#"{{"path":{p},"value":"\ud800"}}"#), E_JSON),
        (format!(r#"{{"path":{p},"value":"\udc00"}}"#), E_JSON),
        (format!(r#"{{"path":{p},"value":"\ud800\u0041"}}"#), E_JSON),
        (format!(r#"{{"path":{p},"value":"a\ud83d"}}"#), E_JSON),
        (r#"{"path":"tfy-secret/\ud800","value":"x"}"#.into(), E_JSON),
        (format!(r#"{{"path":{p},"value":"\u12"}}"#), E_JSON),
        (format!(r#"{{"path":{p},"value":"\x41"}}"#), E_JSON),
        (format!(r#"{{"path":{p},"value":"\'"}}"#), E_JSON),
        (format!("{{\"path\":{p},\"value\":\"a\u{1}b\"}}"), E_JSON),
        (format!("{{\"path\":{p},\"value\":\"a\nb\"}}"), E_JSON),
        (format!("{{\"path\":{p},\"value\":\"a\tb\"}}"), E_JSON),
        (format!("{{\"path\":{p},\"value\":\"a\u{0}b\"}}"), E_JSON),
        // nesting far past any sane depth (10^5)
        (
            format!(r#"{{"path":{p},"value":{}}}"#, deep(100_000, "[", "]")),
            E_JSON,
        ),
        (
            format!(
                r#"{{"path":{p},"value":{}1{}}}"#,
                "{\"a\":".repeat(100_000),
                "}".repeat(100_000)
            ),
            E_JSON,
        ),
        (
            // an unknown field is skipped without recursing: read to the end,
            // then the fields are checked
            format!(
                r#"{{"path":{p},"value":5,"extra":{}}}"#,
                deep(100_000, "[", "]")
            ),
            E_FIELD,
        ),
        (deep(100_000, "[", "]"), E_JSON),
        (deep(100_000, "{\"a\":", "}"), E_JSON),
        // numbers JSON cannot hold
        (format!(r#"{{"path":{p},"value":1e400}}"#), E_JSON),
        (format!(r#"{{"path":{p},"value":-}}"#), E_JSON),
    ];
    // wrong types, each field
    for bad in [
        "7",
        "1.5",
        "-1",
        "true",
        "false",
        "[]",
        "[\"x\"]",
        "{}",
        r#"{"a":1}"#,
    ] {
        put.push((format!(r#"{{"path":{p},"value":{bad}}}"#), E_FIELD));
        put.push((format!(r#"{{"path":{bad},"value":"x"}}"#), E_FIELD));
    }
    put.push((format!(r#"{{"path":[{p}],"value":"x"}}"#), E_FIELD));
    put.push((format!(r#"{{"path":{{"path":{p}}},"value":"x"}}"#), E_FIELD));
    // the value is over --max-value-bytes (64 KiB)
    put.push((
        format!(r#"{{"path":{p},"value":"{}"}}"#, "v".repeat(64 * 1024 + 1)),
        Want::Err(413, "value_too_large"),
    ));
    put.push((
        format!(
            r#"{{"path":"{ABSENT}","value":"{}"}}"#,
            "v".repeat(256 * 1024)
        ),
        Want::Err(413, "value_too_large"),
    ));
    for (b, want) in put {
        let shown: String = b.chars().take(70).collect();
        t.body(
            "PUT",
            format!("PUT body {shown:?} ({} bytes)", b.len()),
            b,
            want,
        );
    }

    let mut del: Vec<(String, Want)> = vec![
        (String::new(), E_JSON),
        (" ".into(), E_JSON),
        ("[]".into(), E_JSON),
        ("null".into(), E_JSON),
        (p.clone(), E_JSON),
        ("2".into(), E_JSON),
        ("{}".into(), E_MISSING),
        (r#"{"version":1}"#.into(), E_MISSING),
        (r#"{"path":null}"#.into(), E_MISSING),
        (r#"{"path":null,"version":1}"#.into(), E_MISSING),
        (format!(r#"{{"path":{p},"path":{p}}}"#), E_JSON),
        (format!(r#"{{"path":{p},"version":1,"version":2}}"#), E_JSON),
        (format!(r#"{{"path":{p},"version":1,"version":1}}"#), E_JSON),
        (
            format!(r#"{{"path":{p},"version":null,"version":1}}"#),
            E_JSON,
        ),
        (format!(r#"{{"path":{p}}} trailing"#), E_JSON),
        (format!(r#"{{"path":{p}}}{{"path":{p}}}"#), E_JSON),
        (format!("\u{feff}{{\"path\":{p}}}"), E_JSON),
        (format!(r#"{{"path":{p},}}"#), E_JSON),
        (r#"{"path":"tfy-secret/\udfff"}"#.into(), E_JSON),
        (
            format!(
                r#"{{"path":"{ABSENT}","extra":{}}}"#,
                deep(100_000, "[", "]")
            ),
            E_GONE,
        ),
        (
            format!(r#"{{"path":{p},"version":{}}}"#, deep(100_000, "[", "]")),
            E_VERSION,
        ),
    ];
    for bad in [
        "1",
        "true",
        "[]",
        "{}",
        "1.5",
        r#"["tfy-secret/matrix/sentinel"]"#,
    ] {
        del.push((format!(r#"{{"path":{bad}}}"#), E_FIELD));
    }
    for (b, want) in del {
        let shown: String = b.chars().take(70).collect();
        t.body("DELETE", format!("DELETE body {shown:?}"), b, want);
    }

    // invalid UTF-8, inside and outside strings
    let pre = format!(r#"{{"path":{p},"value":""#).into_bytes();
    for (what, bytes) in [
        ("0xff 0xfe", &[0xffu8, 0xfe][..]),
        ("overlong '.'", &[0xc0, 0xae]),
        ("truncated sequence", &[0xe2, 0x82]),
        ("encoded surrogate", &[0xed, 0xa0, 0x80]),
        ("past U+10FFFF", &[0xf4, 0x90, 0x80, 0x80]),
        ("lone continuation", &[0x80]),
    ] {
        let mut b = pre.clone();
        b.extend_from_slice(bytes);
        b.extend_from_slice(br#""}"#);
        t.body("PUT", format!("PUT value with {what}"), b, E_JSON);
        let mut b = br#"{"path":"tfy-secret/a"#.to_vec();
        b.extend_from_slice(bytes);
        b.extend_from_slice(br#"","value":"x"}"#);
        t.body("PUT", format!("PUT path with {what}"), b, E_JSON);
    }
    let mut b = vec![0xff, 0xfe];
    b.extend_from_slice(ok_put.as_bytes());
    t.body("PUT", "PUT UTF-16 byte order mark", b, E_JSON);
    let utf16: Vec<u8> = ok_put.encode_utf16().flat_map(u16::to_le_bytes).collect();
    t.body("PUT", "PUT UTF-16LE body", utf16, E_JSON);

    // token bodies (POST /v1/tokens): nothing may be created
    for (b, want) in [
        ("", E_JSON),
        ("[]", E_JSON),
        ("{}", E_MISSING),
        (r#"{"name":"t"}"#, E_MISSING),
        (r#"{"name":"t","role":"viewer"}"#, E_MISSING),
        (r#"{"role":"viewer","scopes":["tfy-secret"]}"#, E_MISSING),
        (
            r#"{"name":1,"role":"viewer","scopes":["tfy-secret"]}"#,
            E_FIELD,
        ),
        (
            r#"{"name":"t","role":"root","scopes":["tfy-secret"]}"#,
            E_FIELD,
        ),
        (
            r#"{"name":"t","role":"Admin ","scopes":["tfy-secret"]}"#,
            E_FIELD,
        ),
        (r#"{"name":"t","role":1,"scopes":["tfy-secret"]}"#, E_FIELD),
        (
            r#"{"name":"t","role":"viewer","scopes":"tfy-secret"}"#,
            E_FIELD,
        ),
        (r#"{"name":"t","role":"viewer","scopes":[1]}"#, E_FIELD),
        (r#"{"name":"t","role":"viewer","scopes":[null]}"#, E_FIELD),
        (r#"{"name":"t","role":"viewer","scopes":["other"]}"#, E_PATH),
        (
            r#"{"name":"t","role":"viewer","scopes":["tfy-secret/.."]}"#,
            E_PATH,
        ),
        (
            r#"{"name":"t","role":"viewer","scopes":["tfy-secret/a/"]}"#,
            E_PATH,
        ),
        (
            r#"{"name":"t","role":"viewer","scopes":["tfy-secret"],"ttl":"forever"}"#,
            E_FIELD,
        ),
        (
            r#"{"name":"t","role":"viewer","scopes":["tfy-secret"],"ttl":5}"#,
            E_FIELD,
        ),
        (
            r#"{"name":"t","role":"viewer","scopes":["tfy-secret"],"ttl":"-1d"}"#,
            E_FIELD,
        ),
        (
            r#"{"name":"t","role":"viewer","scopes":["tfy-secret"],"ttl":""}"#,
            E_FIELD,
        ),
        (
            r#"{"name":"t","name":"u","role":"viewer","scopes":["tfy-secret"]}"#,
            E_JSON,
        ),
        (
            r#"{"name":"t","role":"viewer","scopes":["tfy-secret"]} x"#,
            E_JSON,
        ),
    ] {
        t.body("POST", format!("POST /v1/tokens {b}"), b, want);
    }
}

fn content_type_rows(t: &mut Table) {
    let put = format!(r#"{{"path":"{SENTINEL}","value":"x"}}"#);
    let del = format!(r#"{{"path":"{SENTINEL}"}}"#);
    for ct in [
        "text/plain",
        "text/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/xml",
        "json",
        "",
        "*/*",
        "application/*",
        "application/json, text/plain",
        "application/octet-stream",
    ] {
        for (m, body) in [("PUT", &put), ("DELETE", &del)] {
            t.http(
                format!("{m} content-type {ct:?}"),
                m,
                "/secrets",
                vec![
                    ("x-api-key".into(), KEY.into()),
                    ("content-type".into(), ct.into()),
                ],
                Some(body.clone().into_bytes()),
                E_415,
            );
        }
    }
    // no content type: the body is still read as JSON
    t.http(
        "PUT without content-type, bad body",
        "PUT",
        "/secrets",
        auth(),
        Some(b"path=tfy-secret/matrix/sentinel&value=x".to_vec()),
        E_JSON,
    );
    t.http(
        "DELETE without content-type, empty body",
        "DELETE",
        "/secrets",
        auth(),
        None,
        E_JSON,
    );
}

fn basic(user_key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_key)
    )
}

fn header_rows(t: &mut Table) {
    let get = format!("/secrets?path={SENTINEL}");
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let bearer = format!("Bearer {KEY}");
    let bearer2 = format!("Bearer {KEY2}");
    let no_space = format!("Bearer{KEY}");
    let two_spaces = format!("Bearer  {KEY}");
    let extra = format!("Bearer {KEY} extra");
    let tab = format!("Bearer\t{KEY}");
    let lower = format!("bearer {KEY}");
    let basic_ok = basic(&format!("u:{KEY}"));
    let basic_no_colon = basic(KEY);
    let basic_empty_key = basic("u:");
    let basic_unpadded = basic(&format!("uu:{KEY}")).trim_end_matches('=').to_owned();
    let basic_url = format!(
        "Basic {}",
        base64::engine::general_purpose::URL_SAFE.encode(format!("u:{KEY}"))
    );
    let big = "k".repeat(64 * 1024);
    let big_bearer = format!("Bearer {big}");
    let rows: Vec<(&str, Headers, Want)> = vec![
        ("no credential", h(&[]), E_401),
        ("empty x-api-key", h(&[("x-api-key", "")]), E_401),
        ("wrong x-api-key", h(&[("x-api-key", "wrong")]), E_401),
        (
            "x-api-key with a space",
            h(&[("x-api-key", &format!("{KEY} "))]),
            OK,
        ),
        (
            "x-api-key prefix",
            h(&[("x-api-key", &KEY[..KEY.len() - 1])]),
            E_401,
        ),
        (
            "x-api-key + 1 char",
            h(&[("x-api-key", &format!("{KEY}0"))]),
            E_401,
        ),
        (
            "x-api-key upper-cased",
            h(&[("x-api-key", &KEY.to_uppercase())]),
            E_401,
        ),
        (
            "good x-api-key twice",
            h(&[("x-api-key", KEY), ("x-api-key", KEY)]),
            OK,
        ),
        (
            "two good x-api-keys",
            h(&[("x-api-key", KEY), ("x-api-key", KEY2)]),
            OK,
        ),
        (
            "good then bad x-api-key",
            h(&[("x-api-key", KEY), ("x-api-key", "wrong")]),
            E_401,
        ),
        (
            "bad then good x-api-key",
            h(&[("x-api-key", "wrong"), ("x-api-key", KEY)]),
            E_401,
        ),
        (
            "good x-api-key, bad bearer",
            h(&[("x-api-key", KEY), ("authorization", "Bearer wrong")]),
            E_401,
        ),
        (
            "good x-api-key, empty bearer",
            h(&[("x-api-key", KEY), ("authorization", "Bearer")]),
            E_401,
        ),
        (
            "good x-api-key, bad basic",
            h(&[("x-api-key", KEY), ("authorization", "Basic !!!")]),
            E_401,
        ),
        (
            "bad x-api-key, good bearer",
            h(&[("x-api-key", "wrong"), ("authorization", &bearer)]),
            E_401,
        ),
        (
            "good x-api-key and bearer",
            h(&[("x-api-key", KEY), ("authorization", &bearer)]),
            OK,
        ),
        (
            "two good bearers",
            h(&[("authorization", &bearer), ("authorization", &bearer2)]),
            OK,
        ),
        (
            "good and bad bearer",
            h(&[("authorization", &bearer), ("authorization", "Bearer x")]),
            E_401,
        ),
        (
            "good bearer, bad basic",
            h(&[
                ("authorization", &bearer),
                ("authorization", &basic_no_colon),
            ]),
            E_401,
        ),
        ("Bearer alone", h(&[("authorization", "Bearer")]), E_401),
        (
            "Bearer and spaces",
            h(&[("authorization", "Bearer    ")]),
            E_401,
        ),
        (
            "Bearer without a space",
            h(&[("authorization", &no_space)]),
            E_401,
        ),
        (
            "Bearer with two spaces",
            h(&[("authorization", &two_spaces)]),
            OK,
        ),
        ("Bearer with a tab", h(&[("authorization", &tab)]), E_401),
        ("bearer lower-case", h(&[("authorization", &lower)]), OK),
        (
            "Bearer with trailing words",
            h(&[("authorization", &extra)]),
            E_401,
        ),
        (
            "key as the whole Authorization",
            h(&[("authorization", KEY)]),
            E_401,
        ),
        ("empty Authorization", h(&[("authorization", "")]), E_401),
        (
            "Token scheme",
            h(&[("authorization", &format!("Token {KEY}"))]),
            E_401,
        ),
        (
            "Digest scheme",
            h(&[("authorization", &format!("Digest {KEY}"))]),
            E_401,
        ),
        (
            "ApiKey scheme",
            h(&[("authorization", &format!("ApiKey {KEY}"))]),
            E_401,
        ),
        ("Basic ok", h(&[("authorization", &basic_ok)]), OK),
        ("Basic alone", h(&[("authorization", "Basic")]), E_401),
        (
            "Basic bad base64",
            h(&[("authorization", "Basic !!!")]),
            E_401,
        ),
        (
            "Basic bad base64 2",
            h(&[("authorization", "Basic dTp=a")]),
            E_401,
        ),
        (
            "Basic without a colon",
            h(&[("authorization", &basic_no_colon)]),
            E_401,
        ),
        (
            "Basic with an empty key",
            h(&[("authorization", &basic_empty_key)]),
            E_401,
        ),
        (
            "Basic unpadded",
            h(&[("authorization", &basic_unpadded)]),
            E_401,
        ),
        (
            "Basic url-safe alphabet",
            h(&[("authorization", &basic_url)]),
            OK,
        ),
        (
            "Basic raw key",
            h(&[("authorization", &format!("Basic {KEY}"))]),
            E_401,
        ),
        ("64 KiB x-api-key", h(&[("x-api-key", &big)]), E_401),
        ("64 KiB bearer", h(&[("authorization", &big_bearer)]), E_401),
        (
            "64 KiB unrelated header",
            h(&[("x-api-key", KEY), ("x-junk", &big)]),
            OK,
        ),
        (
            "key in a lookalike header",
            h(&[("x-api-keys", KEY)]),
            E_401,
        ),
        ("key in x-auth-token", h(&[("x-auth-token", KEY)]), E_401),
        (
            "key in cookie",
            h(&[("cookie", &format!("api_key={KEY}"))]),
            E_401,
        ),
        (
            "key in proxy-authorization",
            h(&[("proxy-authorization", &bearer)]),
            E_401,
        ),
    ];
    for (name, headers, want) in rows {
        t.http(name, "GET", get.clone(), headers, None, want);
    }
    // writes with bad credentials
    let body = format!(r#"{{"path":"{SENTINEL}","value":"evil"}}"#).into_bytes();
    for (name, cred) in [
        ("no key", None),
        ("wrong key", Some(("x-api-key", "wrong"))),
        ("empty bearer", Some(("authorization", "Bearer "))),
    ] {
        let mut hs = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Some((k, v)) = cred {
            hs.push((k.into(), v.into()));
        }
        t.http(
            format!("PUT, {name}"),
            "PUT",
            "/secrets",
            hs.clone(),
            Some(body.clone()),
            E_401,
        );
        t.http(
            format!("DELETE, {name}"),
            "DELETE",
            "/secrets",
            hs.clone(),
            Some(format!(r#"{{"path":"{SENTINEL}"}}"#).into_bytes()),
            E_401,
        );
        t.http(
            format!("POST /v1/tokens, {name}"),
            "POST",
            "/v1/tokens",
            hs,
            Some(br#"{"name":"evil","role":"admin","scopes":["tfy-secret"]}"#.to_vec()),
            E_401,
        );
    }
    // a key in the query string is never accepted
    for q in [
        format!("api_key={KEY}"),
        format!("key={KEY}"),
        format!("x-api-key={KEY}"),
        format!("apikey={KEY}"),
        format!("token={KEY}"),
        format!("access_token={KEY}"),
        format!("authorization=Bearer%20{KEY}"),
    ] {
        t.http(
            format!("key in the query: {}", q.split('=').next().unwrap_or("")),
            "GET",
            format!("/secrets?path={SENTINEL}&{q}"),
            vec![],
            None,
            E_401,
        );
    }
    t.http(
        "bad header key, good query key",
        "GET",
        format!("/secrets?path={SENTINEL}&api_key={KEY}"),
        vec![("x-api-key".into(), "wrong".into())],
        None,
        E_401,
    );
    t.http(
        "key in the query of a PUT",
        "PUT",
        format!("/secrets?api_key={KEY}"),
        vec![("content-type".into(), "application/json".into())],
        Some(body),
        E_401,
    );
}

fn route_rows(t: &mut Table) {
    for uri in [
        "/",
        "/secret",
        "/secrets/",
        "/Secrets",
        "/SECRETS",
        "/secrets/x",
        "/secrets/tfy-secret/a",
        "//secrets",
        "/secrets%2F",
        "/secrets%00",
        "/%73ecrets",
        "/./secrets",
        "/../secrets",
        "/secrets/..",
        "/secrets.json",
        "/v1/tokens/",
        "/v1/tokens/a/b",
        "/v1/token",
        "/v2/tokens",
        "/v1/Tokens",
        "/healthz/",
        "/Healthz",
        "/openapi.json/",
        "/.env",
        "/admin",
        "/v1/secrets",
    ] {
        t.http(
            format!("GET {uri}"),
            "GET",
            format!("{uri}?path={SENTINEL}"),
            auth(),
            None,
            E_ROUTE,
        );
        t.http(
            format!("GET {uri} without key"),
            "GET",
            uri,
            vec![],
            None,
            E_ROUTE,
        );
    }
    for (m, uri) in [
        ("POST", "/secrets"),
        ("PATCH", "/secrets"),
        ("OPTIONS", "/secrets"),
        ("TRACE", "/secrets"),
        ("FOO", "/secrets"),
        ("get", "/secrets"),
        ("PUT", "/v1/tokens"),
        ("PATCH", "/v1/tokens"),
        ("DELETE", "/v1/tokens"),
        ("GET", "/v1/tokens/x"),
        ("POST", "/v1/tokens/x"),
        ("PUT", "/v1/tokens/x"),
        ("POST", "/healthz"),
        ("DELETE", "/healthz"),
        ("PUT", "/readyz"),
        ("POST", "/openapi.json"),
        ("DELETE", "/metrics"),
    ] {
        let body = Some(format!(r#"{{"path":"{SENTINEL}","value":"evil"}}"#).into_bytes());
        t.http(
            format!("{m} {uri}"),
            m,
            format!("{uri}?path={SENTINEL}"),
            json_auth(),
            body,
            E_METHOD,
        );
    }
    for m in ["POST", "PATCH", "FOO"] {
        t.http(
            format!("{m} /secrets without key"),
            m,
            "/secrets",
            vec![],
            None,
            E_401,
        );
    }
    t.http(
        "HEAD /secrets",
        "HEAD",
        format!("/secrets?path={SENTINEL}"),
        auth(),
        None,
        OK,
    );
    t.http(
        "revoke an unknown token",
        "DELETE",
        "/v1/tokens/no-such-token",
        auth(),
        None,
        E_404,
    );
    t.http(
        "revoke a token id that is a path",
        "DELETE",
        "/v1/tokens/..%2Fsecrets",
        auth(),
        None,
        E_404,
    );
}

/// A request line plus headers with `Connection: close` (so the first answer
/// is the only one).
fn req(head: &str, extra: &[&str], body: &[u8]) -> Vec<u8> {
    let mut s = format!("{head}\r\nHost: x\r\nConnection: close\r\nX-API-Key: {KEY}\r\n");
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    let mut b = s.into_bytes();
    b.extend_from_slice(body);
    b
}

fn raw_rows(t: &mut Table) {
    let put = format!(r#"{{"path":"{SENTINEL}","value":"evil"}}"#);
    let pb = put.as_bytes();
    let ct = "Content-Type: application/json";
    let n = pb.len();
    let get = format!("GET /secrets?path={SENTINEL} HTTP/1.1");
    let put_line = "PUT /secrets HTTP/1.1";
    let cl = |k: usize| format!("Content-Length: {k}");
    let rows: Vec<(&str, Vec<u8>, bool, Want)> = vec![
        ("a valid GET, raw", req(&get, &[], b""), false, OK),
        (
            "HTTP/1.0",
            req(&get.replace("1.1", "1.0"), &[], b""),
            false,
            OK,
        ),
        (
            "absolute-form URI",
            req(
                &format!("GET http://x/secrets?path={SENTINEL} HTTP/1.1"),
                &[],
                b"",
            ),
            false,
            OK,
        ),
        (
            "no Host header",
            format!("{get}\r\nConnection: close\r\nX-API-Key: {KEY}\r\n\r\n").into_bytes(),
            false,
            OK,
        ),
        // the short Content-Length cuts the JSON
        (
            "Content-Length shorter than the body",
            req(put_line, &[ct, &cl(n - 5)], pb),
            false,
            E_JSON,
        ),
        (
            "Content-Length 0 with a body",
            req(put_line, &[ct, &cl(0)], pb),
            false,
            E_JSON,
        ),
        (
            "Content-Length longer than the body, then EOF",
            req(put_line, &[ct, &cl(n + 10)], pb),
            true,
            E_BODY,
        ),
        (
            "Content-Length longer than the body, connection kept open",
            req(put_line, &[ct, &cl(n + 10)], pb),
            false,
            Want::Err(408, "request_timeout"),
        ),
        (
            "declared body over the limit",
            req(put_line, &[ct, &cl(2 * 1024 * 1024)], pb),
            false,
            Want::Err(413, "body_too_large"),
        ),
        (
            "declared body of 2^63",
            req(put_line, &[ct, "Content-Length: 9223372036854775808"], pb),
            false,
            Want::Err(413, "body_too_large"),
        ),
        (
            "chunked body over the limit",
            {
                let big = format!(
                    r#"{{"path":"{SENTINEL}","value":"{}"}}"#,
                    "v".repeat(1024 * 1024)
                );
                let mut body = format!("{:x}\r\n", big.len()).into_bytes();
                body.extend_from_slice(big.as_bytes());
                body.extend_from_slice(b"\r\n0\r\n\r\n");
                req(put_line, &[ct, "Transfer-Encoding: chunked"], &body)
            },
            false,
            Want::Err(413, "body_too_large"),
        ),
        (
            "chunked, bad chunk size",
            req(
                put_line,
                &[ct, "Transfer-Encoding: chunked"],
                b"zz\r\nabc\r\n0\r\n\r\n",
            ),
            false,
            E_BODY,
        ),
        (
            "chunked, cut off, then EOF",
            req(
                put_line,
                &[ct, "Transfer-Encoding: chunked"],
                b"ff\r\n{\"path\"",
            ),
            true,
            E_BODY,
        ),
        (
            "chunked, valid chunks, bad JSON",
            req(
                put_line,
                &[ct, "Transfer-Encoding: chunked"],
                b"3\r\n{\"p\r\n0\r\n\r\n",
            ),
            false,
            E_JSON,
        ),
        (
            "two different Content-Lengths",
            req(put_line, &[ct, &cl(n), &cl(n + 1)], pb),
            false,
            Want::Transport(400),
        ),
        (
            "Content-Length and chunked",
            req(put_line, &[ct, &cl(n), "Transfer-Encoding: chunked"], pb),
            false,
            Want::Transport(400),
        ),
        (
            "negative Content-Length",
            req(put_line, &[ct, "Content-Length: -1"], pb),
            false,
            Want::Transport(400),
        ),
        (
            "non-numeric Content-Length",
            req(put_line, &[ct, "Content-Length: abc"], pb),
            false,
            Want::Transport(400),
        ),
        (
            "Content-Length of 2^64",
            req(put_line, &[ct, "Content-Length: 18446744073709551616"], pb),
            false,
            Want::Transport(400),
        ),
        (
            "Transfer-Encoding gzip",
            req(put_line, &[ct, "Transfer-Encoding: gzip"], pb),
            false,
            Want::Transport(400),
        ),
        (
            "garbage request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            false,
            Want::Transport(400),
        ),
        (
            "empty request line",
            b"\r\n\r\n\r\n".to_vec(),
            true,
            Want::Transport(0),
        ),
        (
            "binary junk",
            vec![0u8, 0xff, 0x16, 0x03, 0x01, 0, 0, 0x0d, 0x0a, 0x0d, 0x0a],
            false,
            Want::Transport(400),
        ),
        (
            "TLS ClientHello on plain HTTP",
            vec![
                0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
            ],
            true,
            Want::Transport(400),
        ),
        (
            "space in the URI",
            req(
                &format!("GET /secrets?path={SENTINEL} x HTTP/1.1"),
                &[],
                b"",
            ),
            false,
            Want::Transport(400),
        ),
        (
            "raw UTF-8 in the URI",
            req("GET /secrets?path=tfy-secret/caf\u{e9} HTTP/1.1", &[], b""),
            false,
            Want::Transport(400),
        ),
        (
            "backslash in the URI",
            req("GET /secrets?path=tfy-secret\\a HTTP/1.1", &[], b""),
            false,
            Want::Transport(400),
        ),
        (
            "NUL in the URI",
            req("GET /secrets?path=tfy-secret/a\0 HTTP/1.1", &[], b""),
            false,
            Want::Transport(400),
        ),
        (
            "HTTP/2.0 request line",
            req(&get.replace("HTTP/1.1", "HTTP/2.0"), &[], b""),
            false,
            Want::Transport(400),
        ),
        (
            "HTTP/1.2 request line",
            req(&get.replace("HTTP/1.1", "HTTP/1.2"), &[], b""),
            false,
            Want::Transport(400),
        ),
        (
            "lower-case http version",
            req(&get.replace("HTTP/1.1", "http/1.1"), &[], b""),
            false,
            Want::Transport(400),
        ),
        (
            "header name with a space",
            req(&get, &["Bad Header: v"], b""),
            false,
            Want::Transport(400),
        ),
        (
            "header without a colon",
            req(&get, &["NoColon"], b""),
            false,
            Want::Transport(400),
        ),
        (
            "NUL in a header value",
            req(&get, &["X-Junk: a\0b"], b""),
            false,
            Want::Transport(400),
        ),
        (
            "CR in a header value",
            req(&get, &["X-Junk: a\rb"], b""),
            false,
            Want::Transport(400),
        ),
        (
            "obsolete line folding",
            req(&get, &["X-Junk: a", " b"], b""),
            false,
            Want::Transport(400),
        ),
        (
            "control byte in a header name",
            req(&get, &["X-Ju\u{1}nk: a"], b""),
            false,
            Want::Transport(400),
        ),
        (
            "URI of 70 KB",
            req(
                &format!("GET /secrets?path={} HTTP/1.1", "a".repeat(70_000)),
                &[],
                b"",
            ),
            false,
            Want::Transport(414),
        ),
        (
            "120 headers",
            req(
                &get,
                &(0..120)
                    .map(|i| format!("X-H{i}: v"))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                b"",
            ),
            false,
            Want::Transport(431),
        ),
        (
            "1 MiB of headers",
            req(
                &get,
                &[&format!("X-Junk: {}", "a".repeat(1024 * 1024))],
                b"",
            ),
            false,
            Want::Transport(431),
        ),
        (
            "CONNECT",
            req("CONNECT x:443 HTTP/1.1", &[], b""),
            false,
            E_ROUTE,
        ),
        (
            "asterisk-form OPTIONS",
            req("OPTIONS * HTTP/1.1", &[], b""),
            false,
            E_ROUTE,
        ),
    ];
    for (name, bytes, half_close, want) in rows {
        t.raw(name, bytes, half_close, want);
    }
    // header values that are not UTF-8
    for (name, v) in [
        ("x-api-key of bytes 0xff 0xfe", &b"X-API-Key: \xff\xfe"[..]),
        (
            "Authorization of bytes 0x80",
            &b"Authorization: Bearer \x80\x81"[..],
        ),
    ] {
        let mut b = format!("{get}\r\nHost: x\r\nConnection: close\r\n").into_bytes();
        b.extend_from_slice(v);
        b.extend_from_slice(b"\r\n\r\n");
        t.raw(name, b, false, E_401);
    }
    let mut b =
        format!("{put_line}\r\nHost: x\r\nConnection: close\r\nX-API-Key: {KEY}\r\n").into_bytes();
    b.extend_from_slice(b"Content-Type: \xff\r\n");
    b.extend_from_slice(format!("{}\r\n\r\n", cl(n)).as_bytes());
    b.extend_from_slice(pb);
    t.raw("content type of a byte 0xff", b, false, E_415);
}

/// The first HTTP response in `bytes`: status, lower-cased headers, body.
fn parse_response(bytes: &[u8]) -> Option<Answer> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &bytes[end + 4..];
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(rest.len());
    Some((status, headers, rest[..len.min(rest.len())].to_vec()))
}

fn send_raw(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Option<Answer> {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            // A reset after the answer (unread request bytes) still leaves
            // the answer in `out`.
            Err(_) => break,
        }
    }
    parse_response(&out)
}

/// The store as the sentinel checks see it.
async fn snapshot(c: &Client) -> String {
    let mut out = String::new();
    for uri in [
        "/secrets?path=tfy-secret&list=true&limit=1000".to_owned(),
        format!("/secrets?path={SENTINEL}&metadata=true"),
        format!("/secrets?path={SENTINEL}&version=1"),
        format!("/secrets?path={SENTINEL}&version=2"),
        "/v1/tokens".to_owned(),
    ] {
        let r = c.get_uri(&uri).await;
        out.push_str(&format!("{} ", r.status));
        out.push_str(&String::from_utf8_lossy(&r.body));
        out.push('\n');
    }
    out
}

fn check(
    name: &str,
    want: Want,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let shown: String = text.chars().take(200).collect();
    if status >= 500 {
        return Some(format!("{name}: 5xx {status} {shown}"));
    }
    match want {
        Want::Ok(s) => (status != s).then(|| format!("{name}: want {s}, got {status} {shown}")),
        Want::Transport(s) => {
            (status != s).then(|| format!("{name}: want bare {s}, got {status} {shown}"))
        }
        Want::Err(s, code) => {
            if status != s {
                return Some(format!("{name}: want {s} {code}, got {status} {shown}"));
            }
            let ct = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            if ct != "application/json" {
                return Some(format!("{name}: content-type {ct:?}"));
            }
            let Ok(j) = serde_json::from_slice::<serde_json::Value>(body) else {
                return Some(format!("{name}: body is not JSON: {shown}"));
            };
            let got = j["error"]["code"].as_str().unwrap_or("<none>");
            let msg_ok = j["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty());
            if got != code || !msg_ok {
                return Some(format!("{name}: want code {code}, got {got} ({j})"));
            }
            None
        }
    }
}

fn table() -> Vec<Case> {
    let mut t = Table(Vec::new());
    path_rows(&mut t);
    query_rows(&mut t);
    delete_version_rows(&mut t);
    body_rows(&mut t);
    content_type_rows(&mut t);
    header_rows(&mut t);
    route_rows(&mut t);
    raw_rows(&mut t);
    t.0
}

crate::both_backends!(bad_input_matrix);

async fn bad_input_matrix(b: Backend) {
    let seed = test_seed();
    let goal = match b {
        Backend::Sqlite => "bad_input",
        Backend::Postgres(_) => "bad_input_postgres",
    };
    let s = TestServer::start_with(b, |c| c.body_timeout = BODY_TIMEOUT).await;
    let c = &s.client;
    c.put_ok(SENTINEL, "s1").await;
    c.put_ok(SENTINEL, "s2").await;
    let mut before = snapshot(c).await;
    let mut cases = table();
    assert!(cases.len() >= 300, "only {} rows", cases.len());
    SeedRng::new(seed).shuffle(&mut cases);
    let addr = s.addr();
    let mut violations = Vec::new();
    for case in &cases {
        let started = Instant::now();
        let (status, headers, body) = match &case.req {
            Req::Http {
                method,
                uri,
                headers,
                body,
            } => {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let r = send(addr, method, uri, &h, body.as_deref()).await;
                let hs = r
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                (r.status, hs, r.body)
            }
            Req::Raw { bytes, half_close } => {
                let (bytes, hc) = (bytes.clone(), *half_close);
                tokio::task::spawn_blocking(move || send_raw(addr, &bytes, hc))
                    .await
                    .expect("join")
                    .unwrap_or((0, Vec::new(), Vec::new()))
            }
        };
        let took = started.elapsed();
        if let Some(v) = check(&case.name, case.want, status, &headers, &body) {
            violations.push(v);
        }
        if took >= MAX_LATENCY {
            violations.push(format!("{}: took {took:?}", case.name));
        }
        if case.write && snapshot(c).await != before {
            violations.push(format!("{}: the store changed", case.name));
            // measure later rows against the new state
            before = snapshot(c).await;
        }
    }
    // alive and unchanged afterwards
    let health = send(addr, "GET", "/healthz", &[], None).await;
    if health.status != 200 {
        violations.push(format!("healthz after the matrix: {}", health.status));
    }
    if snapshot(c).await != before {
        violations.push("the store changed during the matrix".into());
    }
    goal_summary(goal, cases.len() as u64, violations.len() as u64, seed);
    assert!(
        violations.is_empty(),
        "{} of {} rows failed (seed {seed}):\n{}",
        violations.len(),
        cases.len(),
        violations.join("\n")
    );
}
