//! The fuzz targets' smoke run (goal 6): every entry point of
//! `secretd::fuzzing` (the same functions `fuzz/` drives with cargo-fuzz)
//! over a seed corpus and seeded mutations of it. No coverage guidance —
//! that is the long run's job (fuzz/README.md) — but it keeps the targets
//! compiling and catches shallow panics in every build.

use crate::common::{SeedRng, goal_report, test_seed};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let s = |v: &[&str]| v.iter().map(|x| x.as_bytes().to_vec()).collect::<Vec<_>>();
    match target {
        "path" => s(&[
            "tfy-secret/acme/prod/db-password",
            "tfy-secret",
            "acme:prod:db-password",
            "tfy-secret/a/../b",
            "tfy-secret//a",
            "tfy-secret/a/",
            "tfy-secret/%2e%2e/x",
            "tfy-secret/\u{0430}cme",
            "tfy-secret/a\u{0}b",
            "TFY-SECRET/a",
        ]),
        "version" => s(&[
            "1",
            "0",
            "-1",
            "01",
            "+1",
            "1.0",
            "1e3",
            "9223372036854775807",
            "18446744073709551616",
            " 7",
        ]),
        "body" => s(&[
            r#"{"path":"tfy-secret/a","value":"v"}"#,
            r#"{"path":"tfy-secret/a","version":3}"#,
            r#"{"path":"tfy-secret/a","version":"3"}"#,
            r#"{"name":"ci","role":"editor","scopes":["tfy-secret/acme"],"ttl":"30d"}"#,
            r#"{"path":"tfy-secret/a","value":"v","value":"w"}"#,
            "\u{feff}{\"path\":\"tfy-secret/a\"}",
            r#"[1,2,3]"#,
            r#"{"value":"\ud800"}"#,
        ]),
        "auth" => s(&[
            "Bearer fuzz-key-0123456789abcdef",
            "Bearer fuzz-key-0123456789abcdef\nfuzz-key-0123456789abcdef\nfuzz-key-0123456789abcdef",
            "Basic dXNlcjpmdXp6LWtleS0wMTIzNDU2Nzg5YWJjZGVm",
            "Basic !!!\nx",
            "bearer  x\n\n",
            "Bearer\nBearer ",
        ]),
        "envelope" => vec![
            vec![],
            b"value".to_vec(),
            vec![1u8; 45],
            [&[1u8, 0, 0, 0, 1][..], &[0u8; 60][..]].concat(),
        ],
        "backup" => s(&[
            "{\"magic\":\"secretd-backup\",\"format\":1}\n{\"t\":\"end\",\"file_sha256\":\"00\"}\n",
            "{\"magic\":\"secretd-backup\",\"format\":2}\n",
            "{\"t\":\"secret\",\"path\":\"tfy-secret/a\",\"last_version\":1}\n",
            "",
        ]),
        "audit" => vec![vec![0u8; 200], b"secret.read tfy-secret/a 200".repeat(8)],
        "config" => s(&[
            "listen = \"127.0.0.1:0\"\nmax_connections = 5\napi_keys = [\"a\", \"b\"]\n",
            "lisen = 1\n",
            "[listen]\nx = 1\n",
            "header_timeout = \"10s\"\ntls_cert = \"/x\"\n",
            "api_keys = [\"a,b\"]\n",
            "max_body_bytes = 18446744073709551616\n",
        ]),
        _ => vec![],
    }
}

fn mutate(rng: &mut SeedRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len as u64 + 1) as usize;
                b.insert(i, rng.below(256) as u8);
            }
            2 if len > 0 => {
                let i = rng.below(len as u64) as usize;
                b.remove(i);
            }
            3 => b.truncate(rng.below(len as u64 + 1) as usize),
            4 if !other.is_empty() => {
                let i = rng.below(len as u64 + 1) as usize;
                let j = rng.below(other.len() as u64) as usize;
                let tail = b.split_off(i);
                b.extend_from_slice(&other[j..]);
                b.extend_from_slice(&tail[..tail.len().min(8)]);
            }
            _ if len > 0 => {
                let i = rng.below(len as u64) as usize;
                let j = (i + 1 + rng.below(16) as usize).min(len);
                let chunk = b[i..j].to_vec();
                b.splice(i..i, chunk);
            }
            _ => b.push(b'"'),
        }
    }
    b
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations() {
    let seed = test_seed();
    eprintln!("fuzz smoke seed {seed} (replay with SECRETD_TEST_SEED={seed})");
    let mut rng = SeedRng::new(seed);
    let per_target = 2000;
    let mut runs = 0;
    let mut counts = serde_json::Map::new();
    for (name, target) in secretd::fuzzing::TARGETS {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "no corpus for {name}");
        for s in &seeds {
            target(s);
        }
        for _ in 0..per_target {
            let a = &seeds[rng.below(seeds.len() as u64) as usize];
            let b = &seeds[rng.below(seeds.len() as u64) as usize];
            let input = mutate(&mut rng, a, b);
            // A panic here fails the test; the seed line above replays it.
            target(&input);
        }
        runs += seeds.len() + per_target;
        counts.insert((*name).to_owned(), (seeds.len() + per_target).into());
    }
    goal_report(
        "fuzz_smoke",
        runs,
        &[],
        seed,
        serde_json::Value::Object(counts),
    );
}
