//! Connection churn leaves nothing behind: a few rounds of gw-bench's churn scenario (CI runs
//! this small run; the 100-round figures in docs/PERFORMANCE.md come from release runs).

use std::process::Command;

use serde_json::Value;

#[test]
fn rounds_of_opened_and_closed_sockets_all_deliver_and_give_their_files_back() {
    let output = Command::new(env!("CARGO_BIN_EXE_gw-bench"))
        .args(["--scenario", "churn", "--rounds", "3", "--sockets", "100"])
        .output()
        .expect("running gw-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "gw-bench failed:\n{stderr}");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let run: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let rounds = run["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 3, "{run}");
    for round in rounds {
        assert_eq!(round["opened"], 100, "{round}\n{stderr}");
        assert_eq!(round["failed"], 0, "{round}");
        assert_eq!(
            round["missed"], 0,
            "every socket got its notification: {round}"
        );
        assert!(round["rss_kib"].as_u64().is_some(), "{round}");
    }
    assert_eq!(
        run["fds_back_to_baseline"], true,
        "every socket's file is closed after its round: {run}"
    );
    assert_eq!(run["clean"], true, "{run}");
}
