//! `secretd secret put|get|delete|list|versions`: the secrets API from the
//! command line, against a running server (ours or any Generic Secret Store
//! for put/get/delete). Values never come from arguments, never reach
//! stderr, and live in wiped buffers; every outcome has a stable exit code
//! (`exit`).

use std::io::{IsTerminal as _, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use super::{Reply, SendError, Target};
use crate::config::SecretString;
use crate::path::{PathArg, ROOT, SecretPath};

/// The exit codes of `secretd secret`, stable for scripts.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Anything else: an unexpected reply, a local I/O error.
    pub const OTHER: u8 = 1;
    /// Bad arguments, a bad path or FQN, an unreadable --file or --ca-file
    /// (also clap's code for bad flags).
    pub const USAGE: u8 = 2;
    /// The secret or version does not exist or was deleted (404; a DELETE of
    /// nothing, 400 `not_found`).
    pub const NOT_FOUND: u8 = 3;
    /// The key was refused (401) or lacks the role or scope (403).
    pub const AUTH: u8 = 4;
    /// The server is unreachable, timed out, failed (5xx) or asks to retry
    /// later (429): retrying may help.
    pub const UNAVAILABLE: u8 = 5;
    /// The server refused the request as invalid (other 4xx: bad request,
    /// conflict, too large).
    pub const REFUSED: u8 = 6;
}

/// The exit code table, shown in `--help` (a macro so `concat!` can use it).
macro_rules! exit_codes_help {
    () => {
        "Exit codes: 0 ok, 1 other error, 2 usage (bad flags, path or FQN, unreadable --file), \
         3 not found, 4 authentication or permission refused (401/403), \
         5 server unavailable (unreachable, timeout, 5xx, 429), 6 request refused (other 4xx)."
    };
}
pub const EXIT_CODES_HELP: &str = exit_codes_help!();

/// Where the server is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// The server's base URL (http:// or https://).
    #[arg(long, env = "SECRETD_URL")]
    pub url: String,
    /// Sent as X-API-Key. Prefer the environment variable: flags show in the
    /// process list and shell history.
    #[arg(long, env = "SECRETD_API_KEY", hide_env_values = true)]
    pub api_key: Option<SecretString>,
    /// PEM file of CA certificates to trust for https, besides the usual public roots.
    #[arg(long, env = "SECRETD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Limit on each request, e.g. 10s.
    #[arg(long, default_value = "30s", value_parser = crate::config::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Store a new version; the value is read from stdin (or --file) byte for
    /// byte, never from an argument. Prints the new version number.
    #[command(after_help = PUT_HELP)]
    Put {
        /// A path (tfy-secret/acme/prod/db-password) or an FQN (acme:prod:db-password).
        name: String,
        /// Read the value from this file instead of stdin (- is stdin).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Drop one trailing newline (\n or \r\n) from the value, as `echo` adds.
        #[arg(long)]
        trim_newline: bool,
        /// Print the server's JSON reply instead of the version.
        #[arg(long)]
        json: bool,
        /// Refused: a value given as an argument would land in shell history.
        #[arg(hide = true)]
        refused: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print a value, exactly as stored (a newline is added only when stdout
    /// is a terminal).
    #[command(after_help = EXIT_CODES_HELP)]
    Get {
        /// A path or an FQN.
        name: String,
        /// This version instead of the newest.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
        /// Print the server's JSON reply (path, version, value, created_at).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete one version, or every version of a secret.
    #[command(after_help = EXIT_CODES_HELP)]
    Delete {
        /// A path or an FQN.
        name: String,
        /// Only this version (default: all of them).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
        /// Print the server's JSON reply.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the paths of the live secrets below a prefix (default: all),
    /// one per line, sorted; pages through the whole listing.
    #[command(after_help = EXIT_CODES_HELP)]
    List {
        /// A path prefix (tfy-secret/acme) or an FQN prefix (acme:prod).
        prefix: Option<String>,
        /// JSON lines: {"path","version","updated_at"} per secret.
        #[arg(long)]
        json: bool,
        /// Secrets per request (1-1000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
        page_size: u16,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print a secret's versions, oldest first: version, created, and
    /// `live` or `deleted <time>`, tab-separated.
    #[command(after_help = EXIT_CODES_HELP)]
    Versions {
        /// A path or an FQN.
        name: String,
        /// Print the server's JSON reply (path, latest, versions).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

const PUT_HELP: &str = concat!(
    "The value is stored exactly as read: `echo x |` stores \"x\\n\"; \
     use `printf %s x |`, a file, or --trim-newline.\n\n",
    exit_codes_help!()
);

/// Why a command failed: the exit code and one line for stderr.
struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn usage(message: impl Into<String>) -> Failure {
    fail(exit::USAGE, message)
}

/// Runs one command; errors are reported on stderr as one line.
pub async fn run(cmd: SecretCommand) -> ExitCode {
    match dispatch(cmd).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            let one_line = f.message.replace(['\n', '\r'], " ");
            eprintln!("secretd: {one_line}");
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(cmd: SecretCommand) -> Result<(), Failure> {
    match cmd {
        SecretCommand::Put {
            name,
            file,
            trim_newline,
            json,
            refused,
            conn,
        } => {
            if !refused.is_empty() {
                return Err(usage(
                    "secret put takes no value argument (it would be kept in shell history); \
                     pipe the value on stdin or use --file",
                ));
            }
            let path = secret_path(&name)?;
            let t = connect(&conn)?;
            let value = read_value(file.as_deref(), trim_newline)?;
            let body = json_body(&PutBody {
                path: path.as_str(),
                value: &value,
            })?;
            drop(value);
            let r = ok(t.send("PUT", "/secrets", Some(body)).await)?;
            if json {
                print_raw(&r.body)
            } else {
                let v: VersionReply = parse(&r)?;
                println!("{}", version_text(&v.version));
                Ok(())
            }
        }
        SecretCommand::Get {
            name,
            version,
            json,
            conn,
        } => {
            let path = secret_path(&name)?;
            let t = connect(&conn)?;
            let mut q = format!("/secrets?path={}", enc(path.as_str()));
            if let Some(v) = version {
                q.push_str(&format!("&version={v}"));
            }
            let r = ok(t.send("GET", &q, None).await)?;
            if json {
                return print_raw(&r.body);
            }
            let v: ValueReply = parse(&r)?;
            let value = Zeroizing::new(v.value);
            let mut out = std::io::stdout().lock();
            out.write_all(value.as_bytes())
                .and_then(|()| {
                    if std::io::stdout().is_terminal() {
                        out.write_all(b"\n")?;
                    }
                    out.flush()
                })
                .map_err(|e| fail(exit::OTHER, format!("writing the value: {e}")))
        }
        SecretCommand::Delete {
            name,
            version,
            json,
            conn,
        } => {
            let path = secret_path(&name)?;
            let t = connect(&conn)?;
            let mut b = serde_json::json!({ "path": path.as_str() });
            if let Some(v) = version {
                b["version"] = v.into();
            }
            let body = Zeroizing::new(b.to_string().into_bytes());
            let r = ok(t.send("DELETE", "/secrets", Some(body)).await)?;
            if json {
                return print_raw(&r.body);
            }
            match version {
                Some(v) => println!("deleted {path} version {v}"),
                None => {
                    let n = r
                        .json()
                        .and_then(|b| b.get("versions_deleted").and_then(Value::as_u64));
                    match n {
                        Some(n) => println!("deleted {path}: {n} version(s)"),
                        None => println!("deleted {path}"),
                    }
                }
            }
            Ok(())
        }
        SecretCommand::List {
            prefix,
            json,
            page_size,
            conn,
        } => {
            let prefix = match prefix.as_deref() {
                None => ROOT.to_owned(),
                // A prefix may end in '/' (tfy-secret/acme/), as a group often is written.
                Some(p) => parse_name(p.strip_suffix('/').unwrap_or(p))?
                    .as_str()
                    .to_owned(),
            };
            let t = connect(&conn)?;
            let mut cursor: Option<String> = None;
            let mut out = std::io::stdout().lock();
            loop {
                let mut q = format!("/secrets?path={}&list=true&limit={page_size}", enc(&prefix));
                if let Some(c) = &cursor {
                    q.push_str(&format!("&cursor={}", enc(c)));
                }
                let r = ok(t.send("GET", &q, None).await)?;
                let page: ListReply = parse(&r)?;
                for item in &page.secrets {
                    let line = if json {
                        item.to_string()
                    } else {
                        item.get("path")
                            .and_then(Value::as_str)
                            .ok_or_else(|| unexpected(&r))?
                            .to_owned()
                    };
                    writeln!(out, "{line}")
                        .map_err(|e| fail(exit::OTHER, format!("writing the listing: {e}")))?;
                }
                match page.next_cursor {
                    Some(next) if cursor.as_ref() != Some(&next) && !page.secrets.is_empty() => {
                        cursor = Some(next);
                    }
                    Some(_) => {
                        return Err(fail(
                            exit::OTHER,
                            "the server's listing does not advance (same cursor twice)",
                        ));
                    }
                    None => return Ok(()),
                }
            }
        }
        SecretCommand::Versions { name, json, conn } => {
            let path = secret_path(&name)?;
            let t = connect(&conn)?;
            let q = format!("/secrets?path={}&metadata=true", enc(path.as_str()));
            let r = ok(t.send("GET", &q, None).await)?;
            if json {
                return print_raw(&r.body);
            }
            let m: MetadataReply = parse(&r)?;
            for v in m.versions {
                let state = v
                    .deleted_at
                    .map_or_else(|| "live".to_owned(), |d| format!("deleted {d}"));
                println!("{}\t{}\t{state}", v.version, v.created_at);
            }
            Ok(())
        }
    }
}

/// A path has slashes (or is the root); anything else is an FQN.
fn parse_name(name: &str) -> Result<PathArg, Failure> {
    PathArg::parse_name(name).map_err(|e| usage(format!("invalid path or FQN: {e}")))
}

fn secret_path(name: &str) -> Result<SecretPath, Failure> {
    match parse_name(name)? {
        PathArg::Secret(p) => Ok(p),
        PathArg::Root => Err(usage("tfy-secret is the root, not a secret")),
    }
}

fn connect(c: &Conn) -> Result<Target, Failure> {
    let headers: Vec<String> = c
        .api_key
        .iter()
        .map(|k| format!("X-API-Key: {}", k.expose()))
        .collect();
    Target::parse(&c.url, &headers, c.ca_file.as_deref())
        .map(|t| t.with_timeout(c.timeout))
        .map_err(|e| usage(format!("{e:#}")))
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Reads the value: the file or stdin, verbatim (minus one trailing newline
/// with `trim_newline`); it must be UTF-8 (the API carries JSON strings).
fn read_value(file: Option<&Path>, trim_newline: bool) -> Result<Zeroizing<String>, Failure> {
    let mut buf = match file {
        Some(f) if f != Path::new("-") => {
            let mut fh = std::fs::File::open(f)
                .map_err(|e| usage(format!("reading --file {}: {e}", f.display())))?;
            read_all(&mut fh).map_err(|e| usage(format!("reading --file {}: {e}", f.display())))?
        }
        _ => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("secretd: reading the value from the terminal; end it with Ctrl-D");
            }
            read_all(&mut stdin.lock())
                .map_err(|e| fail(exit::OTHER, format!("reading stdin: {e}")))?
        }
    };
    if trim_newline && buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if std::str::from_utf8(&buf).is_err() {
        return Err(usage("the value is not UTF-8 text"));
    }
    let bytes = std::mem::take(&mut *buf);
    String::from_utf8(bytes)
        .map(Zeroizing::new)
        .map_err(|_| usage("the value is not UTF-8 text"))
}

/// Reads to the end into a buffer that is wiped, growing it by hand so no
/// reallocation leaves a copy behind.
fn read_all(r: &mut impl Read) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = match r.read(&mut chunk[..]) {
            Ok(0) => return Ok(buf),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.len() + n > buf.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity((buf.len() + n) * 2));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[derive(Serialize)]
struct PutBody<'a> {
    path: &'a str,
    value: &'a str,
}

/// Serializes into a buffer large enough for any escaping (at most 6 bytes
/// per input byte), so it never reallocates, and that is wiped.
fn json_body(b: &PutBody<'_>) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut out = Zeroizing::new(Vec::with_capacity(64 + 6 * (b.path.len() + b.value.len())));
    serde_json::to_writer(&mut *out, b).map_err(|e| fail(exit::OTHER, e.to_string()))?;
    Ok(out)
}

#[derive(Deserialize)]
struct VersionReply {
    version: Value,
}

#[derive(Deserialize)]
struct ValueReply {
    value: String,
}

#[derive(Deserialize)]
struct ListReply {
    secrets: Vec<Value>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct MetadataReply {
    versions: Vec<VersionMeta>,
}

#[derive(Deserialize)]
struct VersionMeta {
    version: u64,
    created_at: String,
    deleted_at: Option<String>,
}

/// A version as the server sent it (a number, or a string on other servers).
fn version_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn unexpected(r: &Reply) -> Failure {
    fail(
        exit::OTHER,
        format!("unexpected reply from the server (HTTP {})", r.status),
    )
}

fn parse<T: serde::de::DeserializeOwned>(r: &Reply) -> Result<T, Failure> {
    serde_json::from_slice(&r.body).map_err(|_| unexpected(r))
}

fn print_raw(body: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(body)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| fail(exit::OTHER, format!("writing the reply: {e}")))
}

/// A 2xx reply, or the failure it stands for.
fn ok(sent: anyhow::Result<Reply>) -> Result<Reply, Failure> {
    let r = match sent {
        Ok(r) => r,
        Err(e) if e.downcast_ref::<SendError>().is_some() => {
            return Err(fail(exit::UNAVAILABLE, format!("{e:#}")));
        }
        Err(e) => return Err(fail(exit::OTHER, format!("{e:#}"))),
    };
    if (200..300).contains(&r.status) {
        return Ok(r);
    }
    Err(http_failure(&r))
}

/// Maps an error reply to its exit code and a line naming the server's
/// error code and message (`{"error":{"code","message"}}`) when it sent one.
fn http_failure(r: &Reply) -> Failure {
    let body = r.json();
    let err = body.as_ref().and_then(|b| b.get("error"));
    let code = err.and_then(|e| e.get("code")).and_then(Value::as_str);
    let message = err
        .and_then(|e| {
            e.get("message")
                .and_then(Value::as_str)
                .or_else(|| e.as_str())
        })
        .unwrap_or("");
    let exit = match (r.status, code) {
        (404, Some("route_not_found")) => exit::OTHER,
        (404, _) | (400, Some("not_found")) => exit::NOT_FOUND,
        (401 | 403, _) => exit::AUTH,
        (429, _) | (500..=599, _) => exit::UNAVAILABLE,
        (400..=499, _) => exit::REFUSED,
        _ => exit::OTHER,
    };
    let mut line = format!("HTTP {}", r.status);
    if let Some(c) = code {
        line.push_str(&format!(" {c}"));
    }
    if !message.is_empty() {
        line.push_str(&format!(": {message}"));
    }
    if code == Some("route_not_found") {
        line.push_str(" (is --url the server's base URL?)");
    }
    fail(exit, line)
}
