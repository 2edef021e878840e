//! A replica dies and its clients reconnect to the survivor with `last_id`: nothing is lost,
//! duplicated or reordered. A small run of gw-bench's storm scenario (the full-size figures in
//! docs/PERFORMANCE.md come from release runs).

use std::process::Command;

use serde_json::Value;

#[test]
fn clients_of_a_killed_replica_resume_on_the_survivor_without_loss() {
    let output = Command::new(env!("CARGO_BIN_EXE_gw-bench"))
        .args([
            "--scenario",
            "storm",
            "--sockets",
            "400",
            "--rate",
            "200",
            "--duration",
            "6",
            "--kill-after",
            "2",
            "--jitter-ms",
            "500",
        ])
        .output()
        .expect("running gw-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "gw-bench failed:\n{stderr}");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let run: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let field = |path: &str| -> &Value {
        run.pointer(path)
            .unwrap_or_else(|| panic!("{path} missing from {run}"))
    };
    assert_eq!(field("/connect/ok"), 400, "{run}\n{stderr}");
    assert_eq!(field("/publish/failed"), 0, "{run}");
    assert_eq!(
        field("/resume/disconnected"),
        200,
        "half the sockets were on the killed replica: {run}"
    );
    assert_eq!(field("/resume/resumed"), 200, "{run}");
    assert_eq!(field("/delivery/expected"), 1200, "{run}");
    for exact in [
        "lost",
        "duplicated",
        "out_of_order",
        "misrouted",
        "malformed",
    ] {
        assert_eq!(field(&format!("/delivery/{exact}")), 0, "{exact}: {run}");
    }
    assert_eq!(field("/clean"), true, "{run}");
}
