//! Misbehaving clients: silent peers, clients that stop reading, oversized frames, bad ids.
//! Each is closed with its documented code while other sockets are served.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use e2e::{Closed, Gateway, RawSocket, RedisServer, WsClient};

use crate::{numbered, publisher, user};

#[tokio::test]
async fn a_silent_peer_is_closed_by_the_heartbeat() {
    let gateway = Gateway::start(
        None,
        &[
            ("GW__WS__PING_INTERVAL_MS", "100"),
            ("GW__WS__IDLE_TIMEOUT_MS", "400"),
        ],
    );
    // Answers no ping: after the idle timeout the gateway closes with 4000 and hangs up.
    let (status, mut silent) = RawSocket::handshake(gateway.addr, "/ws/notifications/51/");
    assert_eq!(status, 101);
    // A client that keeps reading (and so answers pings, as browsers do) outlives it.
    let mut alive = WsClient::connect(&gateway.ws_url("52")).await;
    let alive = tokio::spawn(async move { alive.next_json().await });
    let code = tokio::task::spawn_blocking(move || silent.read_until_eof())
        .await
        .unwrap();
    assert_eq!(code, Some(4000));
    gateway.wait_metric("gateway_sockets_open", |n| n == 1);
    let (status, _) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user":52,"type":"info","message":"still here"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(alive.await.unwrap()["message"], "still here");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_while_others_receive_everything() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(
        Some(&redis),
        &[
            ("GW__WS__OUTBOUND_QUEUE", "16"),
            ("GW__WS__WRITE_TIMEOUT_MS", "1000"),
        ],
    );
    let (status, mut stalled) = RawSocket::handshake(gateway.addr, "/ws/notifications/61/");
    assert_eq!(status, 101);
    let mut reader = WsClient::connect(&gateway.ws_url("61")).await;
    let publisher = publisher(&redis);
    // 400 × ~40 KiB ≈ 16 MiB: far more than socket buffers and the queue hold.
    let filler = "x".repeat(40 * 1024);
    let count = 400u64;
    // The reading client acknowledges what it got, and the publisher never runs more than a
    // few notifications ahead of it: only the client that stopped reading can fall behind,
    // however loaded the machine is.
    let received = Arc::new(AtomicU64::new(0));
    let acknowledged = received.clone();
    let reading = tokio::spawn(async move {
        for n in 0..count {
            let frame = reader.next_json().await;
            assert_eq!(frame["data"]["n"], n, "the reading client misses nothing");
            acknowledged.store(n + 1, Relaxed);
        }
        reader
    });
    for n in 0..count {
        while n >= received.load(Relaxed) + 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let note = numbered(n).with_data("filler", filler.as_str());
        publisher.publish(user(61), note).await.unwrap();
    }
    let _reader = reading.await.unwrap();
    gateway.wait_metric(
        "gateway_messages_dropped_total{cause=\"slow_client\"}",
        |n| n >= 1,
    );
    gateway.wait_metric("gateway_sockets_open", |n| n == 1);
    // The stalled client finds the connection closed once it reads what was buffered.
    let code = tokio::task::spawn_blocking(move || stalled.read_until_eof())
        .await
        .unwrap();
    assert!(
        matches!(code, Some(4008) | None),
        "closed as a slow consumer, got {code:?}"
    );
}

#[tokio::test]
async fn an_oversized_client_frame_closes_with_1009() {
    let gateway = Gateway::start(None, &[("GW__WS__MAX_FRAME_BYTES", "1024")]);
    let mut chatty = WsClient::connect(&gateway.ws_url("71")).await;
    chatty
        .send_text("ok, small frames are ignored".into())
        .await;
    chatty.send_text("y".repeat(4096)).await;
    assert_eq!(chatty.closed().await, Closed::Code(1009));
    gateway.wait_metric("gateway_sockets_open", |n| n == 0);
}

#[tokio::test]
async fn ids_that_are_not_user_ids_are_refused_before_the_upgrade() {
    let gateway = Gateway::start(None, &[]);
    for path in [
        "0",
        "-1",
        "007",
        "abc",
        "1.5",
        "99999999999999999999",
        "%D9%A1",
        "1%2F..%2F2",
    ] {
        let (status, _) = RawSocket::handshake(gateway.addr, &format!("/ws/notifications/{path}/"));
        assert_eq!(status, 400, "{path}");
    }
    let (status, body) = e2e::http_get(gateway.addr, "/ws/notifications/abc/").unwrap();
    assert_eq!(status, 400);
    assert!(body.contains(r#""error":"invalid_user_id""#), "{body}");
    // Without the trailing slash too, as the issue allows both.
    let (status, _) = RawSocket::handshake(gateway.addr, "/ws/notifications/12");
    assert_eq!(status, 101);
    assert_eq!(gateway.metric("gateway_upgrades_refused_total"), 9);
    let _ = (user, numbered);
}
