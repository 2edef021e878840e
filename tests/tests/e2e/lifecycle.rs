//! Start-up and shutdown: invalid configuration stops start-up naming the key, and SIGTERM
//! closes every socket with 1012 so clients reconnect to another replica.

use std::process::Command;
use std::time::Duration;

use e2e::{Closed, Gateway, RedisServer, WsClient};

#[tokio::test]
async fn sigterm_closes_every_socket_with_1012_within_the_deadline() {
    let redis = RedisServer::start();
    let mut gateway = Gateway::start(Some(&redis), &[("GW__SERVER__DRAIN_TIMEOUT_MS", "5000")]);
    let mut clients = Vec::new();
    for id in ["81", "81", "82"] {
        clients.push(WsClient::connect(&gateway.ws_url(id)).await);
    }
    let (status, took) = tokio::task::spawn_blocking(move || {
        let result = gateway.terminate();
        (result, gateway)
    })
    .await
    .map(|(result, _gateway)| result)
    .unwrap();
    for client in &mut clients {
        assert_eq!(client.closed().await, Closed::Code(1012));
    }
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        took < Duration::from_secs(5),
        "exited within the drain deadline ({took:?})"
    );
}

#[test]
fn an_invalid_setting_stops_start_up_naming_the_key() {
    let output = Command::new(env!("CARGO_BIN_EXE_gateway-e2e"))
        .env("GW__WS__PING_INTERVAL_MS", "soon")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ping_interval_ms"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_gateway-e2e"))
        .env("GW__REDIS__URL", "http://not-redis")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("redis.url"));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let gateway = Gateway::start(None, &[("GW__LOG__FORMAT", "json")]);
    let client = WsClient::connect(&gateway.ws_url("90")).await;
    client.close().await;
    let log = gateway.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains(r#""message":"socket open""#), "{log}");
}
