//! The config file: precedence (flags > env > file > defaults), errors that
//! name the key, redaction in `config check`, the example file, and a server
//! really running on a file's settings.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{Proc, bin, raw};

/// `secretd` with no SECRETD_* variable from the test's environment.
fn secretd(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("SECRETD_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `config check`'s line for a setting: (value, source).
fn setting(out: &str, id: &str) -> (String, String) {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{id} = ")))
        .unwrap_or_else(|| panic!("no line for {id} in:\n{out}"));
    let rest = &line[id.len() + 3..];
    let (value, source) = rest.rsplit_once("  # ").unwrap();
    (value.to_owned(), source.to_owned())
}

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("secretd.example.toml")
}

#[test]
fn precedence_is_flags_then_env_then_file_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secretd.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:7001"
max_connections = 100
header_timeout = "5s"
body_timeout = "3s"
auth_headers = ["X-One", "X-Two"]
"#,
    )
    .unwrap();
    let (code, out, err) = run(secretd(&[
        ("SECRETD_MAX_CONNECTIONS", "50"),
        ("SECRETD_HEADER_TIMEOUT", "6s"),
    ])
    .args(["config", "check", "--config"])
    .arg(&file)
    .args(["--header-timeout", "7s"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        setting(&out, "listen"),
        (r#""127.0.0.1:7001""#.into(), "file".into())
    );
    assert_eq!(
        setting(&out, "max_connections"),
        ("50".into(), "environment".into())
    );
    assert_eq!(
        setting(&out, "header_timeout"),
        (r#""7s""#.into(), "flag".into())
    );
    assert_eq!(
        setting(&out, "body_timeout"),
        (r#""3s""#.into(), "file".into())
    );
    assert_eq!(
        setting(&out, "request_timeout"),
        (r#""30s""#.into(), "default".into())
    );
    assert_eq!(
        setting(&out, "auth_headers"),
        (r#"["X-One", "X-Two"]"#.into(), "file".into())
    );
    // The file named by SECRETD_CONFIG works the same.
    let (code, out, _) =
        run(secretd(&[("SECRETD_CONFIG", file.to_str().unwrap())]).args(["config", "check"]));
    assert_eq!(code, Some(0));
    assert_eq!(
        setting(&out, "max_connections"),
        ("100".into(), "file".into())
    );
}

#[tokio::test]
async fn serve_runs_on_the_files_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-file");
    let file = dir.path().join("secretd.toml");
    let key = "file-key-0123456789abcdef";
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\napi_keys = [{key:?}]\nmax_body_bytes = 200\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut cmd = secretd(&[("RUST_LOG", "info")]);
    cmd.args(["serve", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let p = Proc::spawn(cmd).unwrap();
    assert!(
        data.join("secretd.db").exists(),
        "data_dir from the file not used"
    );
    let c = p.client(key);
    assert_eq!(c.put("tfy-secret/cfg/a", "v").await.status, 200);
    // max_body_bytes from the file: a 300-byte body is refused before reading.
    let big = format!(
        r#"{{"path":"tfy-secret/cfg/b","value":"{}"}}"#,
        "x".repeat(300)
    );
    let r = c.json("PUT", &big).await;
    assert_eq!(r.status, 413);
    // No key was generated: the file's key is the only one.
    assert!(!p.stdout().contains("API key"), "{}", p.stdout());
    let (status, _) = raw(
        p.addr,
        b"GET /secrets?path=tfy-secret HTTP/1.1\r\nhost: x\r\nx-api-key: wrong-key-0123456789\r\nconnection: close\r\n\r\n",
        std::time::Duration::from_secs(5),
    );
    assert_eq!(status, 401);
    p.terminate();
}

#[test]
fn bad_files_are_refused_naming_the_key_and_nothing_starts() {
    let secret = "hunter2-very-secret-api-key";
    let cases: &[(&str, String, i32, &[&str])] = &[
        (
            "unknown key",
            "lisen = \"127.0.0.1:0\"\n".into(),
            2,
            &["unknown key `lisen`", "did you mean `listen`"],
        ),
        (
            "flag spelling",
            "max-connections = 5\n".into(),
            2,
            &["unknown key `max-connections`", "`max_connections`"],
        ),
        (
            "syntax error holding a secret",
            format!("api_keys = [\"{secret}\"\nlisten = 1\n"),
            2,
            &["line ", "column "],
        ),
        (
            "master key in the file",
            "master_key = \"abc\"\n".into(),
            2,
            &["`master_key`", "SECRETD_MASTER_KEY"],
        ),
        (
            "table value",
            "[listen]\nhost = \"x\"\n".into(),
            2,
            &["`listen`", "must be a string"],
        ),
        (
            "list for one value",
            "listen = [\"a\", \"b\"]\n".into(),
            2,
            &["`listen`", "one value"],
        ),
        (
            "bad number",
            "max_connections = \"many\"\n".into(),
            2,
            &["max-connections"],
        ),
        (
            "cert without key",
            "tls_cert = \"/nonexistent.crt\"\n".into(),
            1,
            &["tls_cert is set but tls_key is not"],
        ),
        (
            "client CA without TLS",
            "tls_client_ca = \"/nonexistent.crt\"\n".into(),
            1,
            &["tls_client_ca needs tls_cert"],
        ),
    ];
    for (what, text, want_code, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secretd.toml");
        std::fs::write(&file, text).unwrap();
        let data = dir.path().join("data");
        for sub in [&["serve"][..], &["config", "check"][..]] {
            let (code, out, err) = run(secretd(&[("SECRETD_API_KEYS", "k-0123456789abcdef01")])
                .args(sub)
                .arg("--config")
                .arg(&file)
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen", "127.0.0.1:0"]));
            let all = format!("{out}{err}");
            assert_eq!(code, Some(*want_code), "{what} ({sub:?}): {all}");
            for n in *needles {
                assert!(all.contains(n), "{what} ({sub:?}): no {n:?} in {all}");
            }
            assert!(
                !all.contains(secret),
                "{what}: the file's secret was echoed: {all}"
            );
            assert!(!data.exists(), "{what}: the store was created");
        }
    }
    // A file that does not exist.
    let (code, _, err) = run(secretd(&[]).args(["serve", "--config", "/nonexistent/secretd.toml"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/secretd.toml"), "{err}");
}

#[test]
fn config_check_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secretd.toml");
    std::fs::write(
        &file,
        "api_keys = [\"file-api-key-aaaaaaaaaaaa\", \"file-api-key-bbbbbbbbbbbb\"]\n\
         database_url = \"postgres://u:db-password-cccc@db/x\"\n",
    )
    .unwrap();
    let (code, out, err) = run(secretd(&[
        ("SECRETD_MASTER_KEY", "master-key-dddddddddddddddddddddddd"),
        ("SECRETD_API_KEYS", "env-api-key-eeeeeeeeeeee"),
    ])
    .args(["config", "check", "--config"])
    .arg(&file));
    assert_eq!(code, Some(0), "{out}{err}");
    for s in [
        "aaaaaaaa",
        "bbbbbbbb",
        "db-password",
        "dddddddd",
        "eeeeeeee",
    ] {
        assert!(
            !out.contains(s) && !err.contains(s),
            "{s} printed:\n{out}{err}"
        );
    }
    // The environment's single key wins over the file's two.
    assert_eq!(
        setting(&out, "api_keys"),
        (r#"["<redacted>"]"#.into(), "environment".into())
    );
    assert_eq!(
        setting(&out, "database_url"),
        (r#""<redacted>""#.into(), "file".into())
    );
    assert!(
        out.contains("master_key: set in SECRETD_MASTER_KEY (redacted)"),
        "{out}"
    );
}

#[test]
fn the_example_file_documents_every_setting_and_each_value_is_valid() {
    let text = std::fs::read_to_string(example()).unwrap();
    let (code, out, err) = run(secretd(&[])
        .args(["config", "check", "--config"])
        .arg(example()));
    assert_eq!(code, Some(0), "{out}{err}");
    // Every setting config check knows is in the example, commented out.
    let ids: Vec<String> = out
        .lines()
        .filter(|l| {
            !l.starts_with("# effective")
                && !l.starts_with("# file")
                && !l.starts_with("# master_key:")
                && !l.starts_with("# ok")
        })
        .map(|l| {
            let l = l.trim_start_matches("# ");
            l.split([' ', '=']).next().unwrap().to_owned()
        })
        .collect();
    assert!(ids.len() >= 25, "{ids:?}");
    for id in &ids {
        assert!(
            text.contains(&format!("\n# {id} = ")),
            "the example file does not document `{id}`"
        );
    }
    // Uncommented, every example value is accepted (the TLS files would
    // have to exist, so those three stay out).
    let dir = tempfile::tempdir().unwrap();
    let live: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            let key = l.split(' ').next().unwrap_or("");
            ids.iter().any(|id| id == key) && l.contains(" = ")
        })
        .filter(|l| {
            !l.starts_with("tls_cert")
                && !l.starts_with("tls_key")
                && !l.starts_with("tls_client_ca")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let file = dir.path().join("all.toml");
    std::fs::write(&file, &live).unwrap();
    let (code, out, err) = run(secretd(&[])
        .args(["config", "check", "--config"])
        .arg(&file));
    assert_eq!(code, Some(0), "{live}\n{out}{err}");
    for id in ids
        .iter()
        .filter(|i| !i.starts_with("tls_") || *i == "tls_reload_interval")
    {
        assert_eq!(setting(&out, id).1, "file", "{id}");
    }
}

#[test]
fn settings_combine_across_sources_and_lists_are_literal() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let file = dir.path().join("secretd.toml");
    std::fs::write(
        &file,
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    )
    .unwrap();
    // The file's TLS pair plus mTLS from the environment, and a flag
    // overriding one file value: all one configuration.
    let (code, out, err) = run(
        secretd(&[("SECRETD_TLS_CLIENT_CA", cert.to_str().unwrap())])
            .args(["config", "check", "--config"])
            .arg(&file)
            .arg("--tls-key")
            .arg(&key),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(setting(&out, "tls_cert").1, "file");
    assert_eq!(setting(&out, "tls_key").1, "flag");
    assert_eq!(setting(&out, "tls_client_ca").1, "environment");
    // A comma inside a list item would silently split one key into two.
    std::fs::write(
        &file,
        "api_keys = [\"first-half-aaaaaaaa,second-half-bbbbbbbb\"]\n",
    )
    .unwrap();
    let (code, _, err) = run(secretd(&[])
        .args(["config", "check", "--config"])
        .arg(&file));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`api_keys`") && err.contains("may not contain"),
        "{err}"
    );
    assert!(!err.contains("aaaaaaaa"), "{err}");
}

#[tokio::test]
async fn admin_commands_take_the_store_settings_of_the_servers_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let file = dir.path().join("secretd.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\napi_keys = [\"admin-file-key-0123456789\"]\nmax_connections = 64\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut cmd = secretd(&[
        ("SECRETD_CONFIG", file.to_str().unwrap()),
        ("RUST_LOG", "info"),
    ]);
    cmd.arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let p = Proc::spawn(cmd).unwrap();
    p.client("admin-file-key-0123456789")
        .put_ok("tfy-secret/cfg/x", "v")
        .await;
    // key status and backup find the store through the same file (the
    // server-only keys in it are ignored, not errors) ...
    let work = tempfile::tempdir().unwrap();
    let (code, out, err) = run(secretd(&[("SECRETD_CONFIG", file.to_str().unwrap())])
        .current_dir(work.path())
        .args(["key", "status"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1"), "{out}");
    let backup = dir.path().join("b.jsonl");
    let (code, out, err) = run(secretd(&[])
        .current_dir(work.path())
        .args(["backup", "--config"])
        .arg(&file)
        .arg("--out")
        .arg(&backup));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(backup.exists());
    // ... and nothing was created in the working directory.
    assert!(!work.path().join("secretd-data").exists());
    // A flag still wins over the file.
    let (code, _, err) = run(secretd(&[("SECRETD_CONFIG", file.to_str().unwrap())])
        .current_dir(work.path())
        .args(["key", "status", "--data-dir", "/nonexistent/secretd"]));
    assert_ne!(code, Some(0), "{err}");
    p.terminate();
}
