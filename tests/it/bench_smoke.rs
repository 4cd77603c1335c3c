//! The benchmark's own smoke run (tiny store, half a second per workload),
//! so it cannot rot. No timing is asserted: benchmarks are not tests.

use std::path::Path;
use std::process::Command;

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
    let res: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.path().join("results.json")).expect("results.json"),
    )
    .expect("json");
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
        assert!(
            r["client_cpu_us_per_req"]
                .as_f64()
                .is_some_and(|x| x >= 0.0),
            "{r}"
        );
    }
    assert_eq!(res["by_store_size"].as_array().map(Vec::len), Some(2));
    let md = std::fs::read_to_string(out_dir.path().join("results.md")).expect("results.md");
    assert!(md.contains("| get_latest |"));
}

/// `--workloads` runs a subset; `--keep-store` preloads once and reuses.
#[test]
fn benchmark_subset_reuses_a_kept_store() {
    let exe = Path::new(env!("CARGO_BIN_EXE_secretd-bench"));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let run = || {
        let out = Command::new(exe)
            .args([
                "--secrets",
                "100",
                "--concurrency",
                "2",
                "--seconds",
                "0.3",
                "--workloads",
                "get_latest,put",
                "--no-chart",
                "--keep-store",
            ])
            .arg(&store)
            .arg("--out")
            .arg(dir.path().join("out"))
            .env_remove("SECRETD_BENCH_DATABASE_URL")
            .output()
            .expect("run bench");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let res: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("out/results.json")).expect("results.json"),
        )
        .expect("json");
        let names: Vec<String> = res["workloads"]
            .as_array()
            .expect("workloads")
            .iter()
            .filter_map(|r| r["workload"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(names, ["ceiling", "get_latest", "put"]);
        stderr
    };
    let first = run();
    assert!(first.contains("preloaded 100 secrets"), "{first}");
    assert!(store.join("secretd.db").exists());
    let second = run();
    assert!(second.contains("reusing the store"), "{second}");
    assert!(!second.contains("preloaded"), "{second}");
}
