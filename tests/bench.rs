//! `runvisor bench` at a tiny size: every mode runs against the services it starts (tansu, a fresh
//! PostgreSQL database) and prints a line whose counts add up. The figures themselves are not
//! checked: speed is read from the benchmark, never asserted by a test.

mod common;

use serde_json::Value;

#[test]
fn every_mode_runs_and_reports_what_it_measured() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_runvisor"))
        .args(["bench", "--runs", "60", "--latency-runs", "10", "--engine-runs", "300", "--memory-runs", "500"])
        .args(["--postgres-admin-url", &common::postgres_admin_url()])
        .env("RUNVISOR_TEST_TANSU", common::tansu_binary())
        .output()
        .expect("runvisor bench starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let mode = |name: &str| {
        lines.iter().find(|l| l["mode"] == name).unwrap_or_else(|| panic!("no '{name}' line in {lines:?}")).clone()
    };
    assert!(lines[0]["machine"]["cpus"].as_u64().unwrap() >= 1);
    for (name, calls) in [("throughput", 3), ("throughput-10", 10), ("throughput-par8", 9)] {
        let line = mode(name);
        assert_eq!((line["n"].as_u64(), line["failed"].as_u64()), (Some(60), Some(0)), "{line}");
        let (runs_per_s, calls_per_s) = (line["runs_per_s"].as_f64().unwrap(), line["calls_per_s"].as_f64().unwrap());
        assert!(runs_per_s > 0.0 && (calls_per_s - runs_per_s * calls as f64).abs() <= calls as f64, "{line}");
        assert!(line["cpu_ms_per_run"]["executor"].as_f64().unwrap() > 0.0, "{line}");
        assert!(line["share_of_bound"].as_f64().unwrap() > 0.0, "{line}");
    }
    let latency = mode("latency");
    assert_eq!(latency["n"], 10);
    let (p50, max) = (latency["latency"]["p50_ms"].as_f64().unwrap(), latency["latency"]["max_ms"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= max, "{latency}");
    // The executor's share of a run is part of its latency.
    assert!(latency["claim_to_completed"]["p50_ms"].as_f64().unwrap() <= max, "{latency}");
    // …and so is the wait before the claim; the slowest run's two parts are its own.
    assert!(latency["publish_to_claim"]["p50_ms"].as_f64().unwrap() <= max, "{latency}");
    let slowest = &latency["slowest_1pct"];
    assert_eq!(slowest["runs"], 1, "{latency}");
    let parts = slowest["publish_to_claim_ms"].as_f64().unwrap() + slowest["claim_to_completed_ms"].as_f64().unwrap();
    assert!(parts <= slowest["latency_ms"].as_f64().unwrap() + 1.0, "{latency}");
    let bound = mode("bound");
    assert_eq!(bound["figures"]["rows"], 60 * 8);
    let engine = mode("engine");
    assert_eq!(engine["results"][0]["figures"]["calls"], 900);
    let memory = mode("memory");
    assert_eq!(memory["figures"]["runs_in_flight"], 500);
    // The peak is never below what is resident now (the resident set may shrink below its size
    // before the runs: freed memory is returned meanwhile).
    let figures = &memory["figures"];
    assert!(figures["rss_peak_mb"].as_f64().unwrap() >= figures["rss_in_flight_mb"].as_f64().unwrap(), "{memory}");
    assert!(figures["bytes_per_run"].is_u64(), "{memory}");
    assert!(stderr.contains("runs/s"), "the table follows the lines: {stderr}");
}

#[test]
fn the_dashboard_mode_seeds_a_history_and_times_every_page() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_runvisor"))
        .args(["bench", "--modes", "dashboard", "--dashboard-runs", "300", "-o", "json"])
        .args(["--postgres-admin-url", &common::postgres_admin_url()])
        .output()
        .expect("runvisor bench starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line: Value = stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|line| line["mode"] == "dashboard")
        .unwrap_or_else(|| panic!("no dashboard line: {stdout}"));
    assert_eq!((line["runs"].as_u64(), line["attempts"].as_u64()), (Some(300), Some(300 * 3 + 1000)), "{line}");
    let pages = line["pages"].as_object().unwrap();
    assert_eq!(pages.len(), 8, "{line}");
    for (name, page) in pages {
        // Each page answered (the mode fails on an error status) with a body of its own.
        assert!(page["bytes"].as_u64().unwrap() > 1000, "{name}: {page}");
        assert!(page["median_ms"].as_f64().unwrap() > 0.0, "{name}: {page}");
    }
    // The long run's page carries every one of its 1,000 attempts.
    assert!(
        pages["run_1000_attempts"]["bytes"].as_u64().unwrap() > pages["run_3_attempts"]["bytes"].as_u64().unwrap() * 50
    );
}
