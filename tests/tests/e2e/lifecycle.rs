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
