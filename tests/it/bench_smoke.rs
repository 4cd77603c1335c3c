//! The benchmark's own smoke run (tiny store, half a second per workload),
//! so it cannot rot. No timing is asserted: benchmarks are not tests.

use std::path::Path;
use std::process::Command;

/// The `results.json` a run wrote to `out`.
fn results(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    serde_json::from_str(&text).expect("json")
}

#[test]
fn benchmark_runs_end_to_end() {
    let exe = Path::new(env!("CARGO_BIN_EXE_secretd-bench"));
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(exe)
        .args([
            "--secrets",
            "200",
            "--versions",
            "2",
            "--concurrency",
            "4",
            "--seconds",
            "0.5",
            "--sizes",
            "50",
            "--no-chart",
            "--out",
        ])
        .arg(out_dir.path())
        .env_remove("SECRETD_BENCH_DATABASE_URL")
        .output()
        .expect("run bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let res = results(out_dir.path());
    let rows = res["workloads"].as_array().expect("workloads");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["workload"].as_str()).collect();
    assert_eq!(
        names,
        ["ceiling", "get_latest", "get_version", "put", "mix_90_10"]
    );
    for r in rows {
        assert!(r["requests"].as_u64().is_some_and(|n| n > 0), "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(
            r["ratio_to_ceiling"].as_f64().is_some_and(|x| x > 0.0),
            "{r}"
        );
        assert!(r["peak_rss_mib"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        // each ratio is to the ceiling measured around that workload
        let (rps, ceiling) = (r["rps"].as_f64(), r["ceiling_rps"].as_f64());
        let (rps, ceiling) = (rps.expect("rps"), ceiling.expect("ceiling_rps"));
        assert!(ceiling > 0.0, "{r}");
        let ratio = r["ratio_to_ceiling"].as_f64().expect("ratio");
        assert!((ratio - rps / ceiling).abs() <= 0.001, "{r}");
        assert!(
            r["client_cpu_us_per_req"].as_f64().is_some_and(|x| x > 0.0),
            "{r}"
        );
    }
    assert_eq!(res["by_store_size"].as_array().map(Vec::len), Some(2));
    // Re-measured before each size's first workload and after every
    // workload: [before 50, after GET@50, before 200, after each of the 4
    // at 200]. Each workload divides by the mean of the two around it.
    let checks: Vec<f64> = res["ceiling_rechecks_rps"]
        .as_array()
        .expect("rechecks")
        .iter()
        .map(|c| c.as_f64().expect("number"))
        .collect();
    assert_eq!(checks.len(), 7, "{checks:?}");
    assert!(checks.iter().all(|&c| c > 0.0), "{checks:?}");
    let around = |i: usize| (checks[i] + checks[i + 1]) / 2.0;
    let by_size = res["by_store_size"].as_array().expect("by size");
    let used = |r: &serde_json::Value| r["ceiling_rps"].as_f64().expect("ceiling_rps");
    assert!((used(&by_size[0]) - around(0)).abs() <= 1.0, "{res}");
    assert!((used(&by_size[1]) - around(2)).abs() <= 1.0, "{res}");
    for (row, i) in rows[1..].iter().zip(2..) {
        assert!((used(row) - around(i)).abs() <= 1.0, "{row} {checks:?}");
    }
    assert_eq!(used(&rows[0]), rows[0]["rps"].as_f64().expect("rps"));
    let md = std::fs::read_to_string(out_dir.path().join("results.md")).expect("results.md");
    assert!(md.contains("| get_latest |"));
}

/// `--workloads` runs a subset; `--keep-store` preloads once and reuses,
/// and refuses a directory that is not a finished preload of the same shape.
#[test]
fn benchmark_subset_reuses_a_kept_store() {
    let exe = Path::new(env!("CARGO_BIN_EXE_secretd-bench"));
    let dir = tempfile::tempdir().expect("tempdir");
    let bench = |store: &Path, secrets: &str| {
        Command::new(exe)
            .args([
                "--secrets",
                secrets,
                "--concurrency",
                "2",
                "--seconds",
                "0.3",
                "--workloads",
                "get_latest,put,get_latest",
                "--no-chart",
                "--keep-store",
            ])
            .arg(store)
            .arg("--out")
            .arg(dir.path().join("out"))
            .env_remove("SECRETD_BENCH_DATABASE_URL")
            .output()
            .expect("run bench")
    };
    let store = dir.path().join("store");
    let run = || {
        let out = bench(&store, "100");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let res = results(&dir.path().join("out"));
        let rows = res["workloads"].as_array().expect("workloads");
        let names: Vec<&str> = rows.iter().filter_map(|r| r["workload"].as_str()).collect();
        assert_eq!(
            names,
            ["ceiling", "get_latest", "put"],
            "a repeated name runs once"
        );
        for r in rows {
            // A GET of a path the store does not hold would count here.
            assert_eq!(r["errors"], 0, "{r}");
            assert!(r["requests"].as_u64().is_some_and(|n| n > 0), "{r}");
        }
        stderr
    };
    let first = run();
    assert!(first.contains("preloaded 100 secrets"), "{first}");
    assert!(store.join("bench-store.json").exists());
    let second = run();
    assert!(second.contains("reusing the store"), "{second}");
    assert!(!second.contains("preloaded"), "{second}");

    // Another shape, and a directory that is not a preload, are refused.
    let other = bench(&store, "200");
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("holds a preload of"));
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("notes.txt"), "mine").expect("write");
    let refused = bench(&foreign, "100");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not empty"));
    assert_eq!(
        std::fs::read_dir(&foreign).expect("read_dir").count(),
        1,
        "a refused directory is left as it was"
    );
}
