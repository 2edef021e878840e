//! Bad input from Redis and Redis going away: nothing crashes, nothing is disconnected,
//! and delivery resumes.

use e2e::{Gateway, RedisServer, WsClient};

use crate::{numbered, publisher, user};

#[tokio::test]
async fn malformed_payloads_are_dropped_counted_and_harm_no_socket() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[("GW__REDIS__MAX_PAYLOAD_BYTES", "1024")]);
    let mut client = WsClient::connect(&gateway.ws_url("31")).await;

    let huge = format!(r#"{{"type":"info","message":"{}"}}"#, "x".repeat(2000));
    for bad in [
        &b"not json at all"[..],
        br#"{"type":"fatal","message":"unknown level"}"#,
        br#"{"type":"info"}"#,
        br#"["info","array"]"#,
        &[0xff, 0xfe, 0x00][..],
        huge.as_bytes(),
    ] {
        assert_eq!(redis.publish_raw("user_31", bad), 1);
    }
    publisher(&redis)
        .publish(user(31), numbered(1))
        .await
        .unwrap();

    assert_eq!(
        client.next_json().await["message"],
        "note 1",
        "only the valid one, the socket still open"
    );
    assert_eq!(
        gateway.metric("gateway_messages_dropped_total{cause=\"malformed\"}"),
        5
    );
    assert_eq!(
        gateway.metric("gateway_messages_dropped_total{cause=\"oversized\"}"),
        1
    );
    assert_eq!(gateway.metric("gateway_sockets_open"), 1);
}

#[tokio::test]
async fn redis_restart_keeps_sockets_open_and_delivery_resumes() {
    let mut redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[]);
    let mut alice = WsClient::connect(&gateway.ws_url("41")).await;
    let mut bob = WsClient::connect(&gateway.ws_url("42")).await;
    publisher(&redis)
        .publish(user(41), numbered(1))
        .await
        .unwrap();
    assert_eq!(alice.next_json().await["message"], "note 1");

    redis.kill();
    gateway.wait_for_readiness(503);
    // A socket opened while Redis is down is accepted and subscribed once it is back.
    let mut carol = WsClient::connect(&gateway.ws_url("43")).await;
    redis.restart();
    gateway.wait_for_readiness(200);
    assert!(gateway.metric("gateway_redis_reconnects_total") >= 1);

    let publisher = publisher(&redis);
    assert_eq!(
        publisher.publish(user(41), numbered(2)).await.unwrap(),
        1,
        "re-subscribed"
    );
    assert_eq!(publisher.publish(user(42), numbered(3)).await.unwrap(), 1);
    assert_eq!(publisher.publish(user(43), numbered(4)).await.unwrap(), 1);
    // This Redis keeps nothing across a restart: Alice, who had received note 1, is told
    // that history is gone; Bob and Carol, who had nothing yet, are not.
    assert_eq!(alice.next_json().await["event"], "gateway.missed");
    assert_eq!(
        alice.next_json().await["message"],
        "note 2",
        "same socket, never closed"
    );
    assert_eq!(bob.next_json().await["message"], "note 3");
    assert_eq!(carol.next_json().await["message"], "note 4");
    assert_eq!(gateway.metric("gateway_sockets_open"), 3);
}

#[tokio::test]
async fn publishing_to_a_stopped_redis_is_a_clear_error() {
    let mut redis = RedisServer::start();
    let publisher = publisher(&redis);
    publisher.publish(user(1), numbered(0)).await.unwrap();
    redis.kill();
    let error = publisher.publish(user(1), numbered(1)).await.unwrap_err();
    assert_eq!(
        error.kind(),
        publisher::ErrorKind::RedisUnavailable,
        "{error}"
    );
}

#[tokio::test]
async fn a_client_that_gives_up_during_the_upgrade_leaves_nothing_behind() {
    let mut redis = RedisServer::start();
    let gateway = Gateway::start(
        Some(&redis),
        &[
            // Longer than the test waits for anything: the upgrades stay pending until the
            // clients hang up, so the registrations seen below are those of pending upgrades.
            ("GW__REDIS__SUBSCRIBE_TIMEOUT_MS", "60000"),
            ("GW__WS__UNSUBSCRIBE_LINGER_MS", "100"),
        ],
    );
    // With Redis down the upgrade waits for the subscription; these clients hang up meanwhile.
    redis.kill();
    gateway.wait_for_readiness(503);
    let mut hanging = Vec::new();
    for user in 300..303 {
        let (status, socket) = tokio::task::spawn_blocking({
            let addr = gateway.addr;
            move || e2e::RawSocket::start_handshake(addr, &format!("/ws/notifications/{user}/"))
        })
        .await
        .unwrap();
        assert_eq!(status, None, "no answer while the subscription is pending");
        hanging.push(socket);
    }
    // First see them registered (else "nothing left behind" would prove nothing), then hang up.
    gateway.wait_metric("gateway_sockets_open", |n| n == 3);
    gateway.wait_metric("gateway_users", |n| n == 3);
    drop(hanging);
    gateway.wait_metric("gateway_sockets_open", |n| n == 0);
    gateway.wait_metric("gateway_users", |n| n == 0);
    redis.restart();
    gateway.wait_ready();
}

#[tokio::test]
async fn history_lost_with_a_redis_restart_is_reported_not_silent() {
    // No persistence: a restart loses every history stream.
    let mut redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[]);
    let mut client = WsClient::connect(&gateway.ws_url("310")).await;
    publisher(&redis)
        .publish(user(310), numbered(1))
        .await
        .unwrap();
    assert_eq!(client.next_json().await["message"], "note 1");

    redis.kill();
    gateway.wait_for_readiness(503);
    redis.restart();
    gateway.wait_for_readiness(200);
    // The node cannot replay what it may have missed: it says so, once.
    let missed = client.next_json().await;
    assert_eq!(missed["event"], "gateway.missed", "{missed}");
    // And later notifications are not taken for duplicates of the lost ones.
    publisher(&redis)
        .publish(user(310), numbered(2))
        .await
        .unwrap();
    assert_eq!(client.next_json().await["message"], "note 2");
}
