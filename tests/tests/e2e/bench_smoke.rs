//! The benchmark tool still works end to end (CI runs only this small run; the figures in
//! docs/PERFORMANCE.md come from full release runs): a few hundred sockets on two replicas,
//! a thousand notifications, and every one accounted for.

use std::process::Command;

use serde_json::Value;

#[test]
fn gw_bench_smoke_run_loses_nothing() {
    smoke(&[]);
}

#[test]
fn gw_bench_smoke_run_over_server_sent_events_loses_nothing() {
    let run = smoke(&["--transport", "sse"]);
    assert_eq!(run["transport"], "sse", "{run}");
}

/// Scenario b's echo floor: the same sockets and schedule against a trivial echo server,
/// every frame timed back, and the ratio reported beside the gateway's latency.
#[test]
fn gw_bench_echo_floor_times_every_frame() {
    let run = smoke(&["--rate", "2000", "--echo-floor", "on"]);
    let floor = &run["echo_floor"];
    assert_eq!(floor["sockets"], 300, "{run}");
    assert_eq!(floor["expected"], 3000, "{run}");
    assert_eq!(floor["echoed"], 3000, "{run}");
    for exact in ["lost", "duplicated", "misrouted"] {
        assert_eq!(floor[exact], 0, "{exact}: {run}");
    }
    assert_eq!(floor["latency_ms"]["count"], 3000, "{run}");
    assert!(
        run["latency_vs_floor"]["p99_ratio"].as_f64().is_some(),
        "{run}"
    );
}

fn smoke(extra: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_gw-bench"))
        .args(["--scenario", "smoke"])
        .args(extra)
        .output()
        .expect("running gw-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "gw-bench failed:\n{stderr}");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line per run, got:\n{stdout}");
    let run: Value = serde_json::from_str(lines[0]).expect("the line is JSON");

    let field = |path: &str| -> &Value {
        run.pointer(path)
            .unwrap_or_else(|| panic!("{path} missing from {run}"))
    };
    assert_eq!(field("/connect/ok"), 300, "{run}\n{stderr}");
    assert_eq!(field("/connect/failed"), 0, "{run}");
    assert_eq!(field("/publish/sent"), 1000, "{run}");
    assert_eq!(field("/delivery/expected"), 3000, "{run}");
    assert_eq!(field("/delivery/delivered"), 3000, "{run}");
    for exact in ["lost", "duplicated", "misrouted", "unexpected", "malformed"] {
        assert_eq!(field(&format!("/delivery/{exact}")), 0, "{exact}: {run}");
    }
    assert_eq!(field("/clean"), true, "{run}");
    // The figures are there (not their values: CI machines vary).
    assert!(
        field("/delivery/latency_ms/p99").as_f64().is_some(),
        "{run}"
    );
    assert!(field("/memory_kib/per_socket").as_f64().is_some(), "{run}");
    assert!(
        field("/cpu_seconds/publish/redis").as_f64().is_some(),
        "{run}"
    );
    run
}
