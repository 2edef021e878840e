//! A notification published once reaches every socket of its user on every replica, in
//! the frame today's frontend expects, and nobody else.

use e2e::{Gateway, RedisServer, WsClient};
use publisher::Event;

use crate::{numbered, publisher, user};

#[tokio::test]
async fn every_socket_of_a_user_on_every_replica_receives_it_and_no_one_else() {
    let redis = RedisServer::start();
    let a = Gateway::start(Some(&redis), &[]);
    let b = Gateway::start(Some(&redis), &[]);
    let mut alice_on_a1 = WsClient::connect(&a.ws_url("1")).await;
    let mut alice_on_a2 = WsClient::connect(&a.ws_url("1")).await;
    let mut alice_on_b = WsClient::connect(&b.ws_url("1")).await;
    let mut bob_on_a = WsClient::connect(&a.ws_url("2")).await;
    let mut bob_on_b = WsClient::connect(&b.ws_url("2")).await;
    let publisher = publisher(&redis);

    let event = Event::BookingExpiringSoon {
        booking_id: 1881,
        slot: "A-12".into(),
        minutes_left: 5,
    };
    let expected_message = event.default_message();
    let nodes = publisher.publish(user(1), event).await.unwrap();
    assert_eq!(nodes, 2, "both replicas hold a socket of user 1");
    // Then a marker for Bob: if Alice's notification had leaked to Bob, it would come first.
    assert_eq!(publisher.publish(user(2), numbered(99)).await.unwrap(), 2);

    for alice in [&mut alice_on_a1, &mut alice_on_a2, &mut alice_on_b] {
        let frame = alice.next_json().await;
        assert_eq!(frame["type"], "warning");
        assert_eq!(frame["message"], expected_message.as_str(), "{frame}");
        assert_eq!(frame["event"], "booking.expiring_soon");
        assert_eq!(frame["data"]["booking_id"], 1881);
    }
    for bob in [&mut bob_on_a, &mut bob_on_b] {
        assert_eq!(bob.next_json().await["message"], "note 99");
    }
}

#[tokio::test]
async fn frames_arrive_in_publish_order() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[]);
    let mut client = WsClient::connect(&gateway.ws_url("5")).await;
    let publisher = publisher(&redis);
    for n in 0..200 {
        publisher.publish(user(5), numbered(n)).await.unwrap();
    }
    for n in 0..200 {
        assert_eq!(client.next_json().await["data"]["n"], n);
    }
}

#[tokio::test]
async fn a_payload_from_another_language_is_forwarded_byte_for_byte() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[]);
    let mut client = WsClient::connect(&gateway.ws_url("42")).await;
    // What docs/PROTOCOL.md tells a Python service to send, extra fields included, written
    // the way no JSON encoder here would write it: spacing, key order, an escape, `1.50`.
    // A gateway that re-encoded the payload would change every one of them.
    let payload = r#"{ "type": "success", "message": "Caf\u00e9: car wash done", "event":"carwash.completed", "data": {"booking_id": 7, "price": 1.50}, "timestamp":1763775600123, "extra":[1, 2] }"#;
    // A plain PUBLISH (no history): the frame is the payload itself.
    assert_eq!(redis.publish_raw("user_42", payload.as_bytes()), 1);
    assert_eq!(client.next_text().await, payload);
    // Through the publish script, as the Python publisher sends: the payload with only its
    // history id spliced in at the front.
    let nodes = publisher(&redis)
        .publish_payload(user(42), payload.as_bytes())
        .await
        .unwrap();
    assert_eq!(nodes, 1);
    let text = client.next_text().await;
    let id: publisher::StreamId = serde_json::from_str::<serde_json::Value>(&text).unwrap()["id"]
        .as_str()
        .expect("a stored notification carries its id")
        .parse()
        .unwrap();
    let spliced = publisher::wire::with_id(id, payload.as_bytes()).unwrap();
    assert_eq!(text.as_bytes(), spliced.as_slice(), "{text}");
}

#[tokio::test]
async fn single_node_mode_delivers_without_redis() {
    let gateway = Gateway::start(None, &[]);
    let (status, body) = e2e::http_get(gateway.internal, "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""bus":"memory""#), "{body}");
    assert!(
        gateway.log().contains("single-node mode"),
        "start-up log says so:\n{}",
        gateway.log()
    );

    let mut client = WsClient::connect(&gateway.ws_url("3")).await;
    let (status, body) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user": 3, "type": "info", "message": "hello from the in-process bus"}"#,
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"receivers":1}"#));
    let frame = client.next_json().await;
    assert_eq!(frame["type"], "info");
    assert_eq!(frame["message"], "hello from the in-process bus");
    assert!(
        frame["timestamp"].as_u64().is_some(),
        "the endpoint stamps it: {frame}"
    );
}

#[tokio::test]
async fn http_publish_goes_through_redis_to_every_replica() {
    let redis = RedisServer::start();
    let key = "b7e1c4a9f2d6083b5e9c1a4f7d2b6e08";
    let a = Gateway::start(Some(&redis), &[("GW__PUBLISH__API_KEYS", key)]);
    let b = Gateway::start(Some(&redis), &[]);
    let mut on_b = WsClient::connect(&b.ws_url("8")).await;

    let body = r#"{"users": [8, 9], "type": "success", "message": "Cash payment verified"}"#;
    let (status, answer) = e2e::http_post_json(a.internal, "/api/publish", &[], body).unwrap();
    assert_eq!(
        status, 401,
        "a key is configured, so one is required: {answer}"
    );
    let (status, answer) = e2e::http_post_json(
        a.internal,
        "/api/publish",
        &[("Authorization", "Bearer wrong-key-wrong-key")],
        body,
    )
    .unwrap();
    assert_eq!(status, 401, "{answer}");
    let auth = format!("Bearer {key}");
    let (status, answer) = e2e::http_post_json(
        a.internal,
        "/api/publish",
        &[("Authorization", &auth)],
        body,
    )
    .unwrap();
    assert_eq!(
        (status, answer.as_str()),
        (200, r#"{"receivers":1}"#),
        "user 8 on replica b, user 9 nowhere"
    );
    assert_eq!(on_b.next_json().await["message"], "Cash payment verified");

    for (bad, why) in [
        (
            r#"{"users": [8], "type": "fatal", "message": "x"}"#,
            "unknown level",
        ),
        (r#"{"users": [8], "type": "info"}"#, "no message"),
        (
            r#"{"users": [0], "type": "info", "message": "x"}"#,
            "user 0",
        ),
        (r#"{"type": "info", "message": "x"}"#, "no user"),
        (r#"not json"#, "not JSON"),
    ] {
        let (status, answer) =
            e2e::http_post_json(a.internal, "/api/publish", &[("Authorization", &auth)], bad)
                .unwrap();
        assert_eq!(status, 400, "{why}: {answer}");
        assert!(
            answer.contains(r#""error":"invalid_body""#),
            "{why}: {answer}"
        );
    }
}

#[tokio::test]
async fn http_publish_to_several_users_reaches_each_once() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[]);
    let mut eight = WsClient::connect(&gateway.ws_url("8")).await;
    let mut nine = WsClient::connect(&gateway.ws_url("9")).await;
    let body = r#"{"users": [8, 9, 8], "type": "info", "message": "to both"}"#;
    let (status, answer) =
        e2e::http_post_json(gateway.internal, "/api/publish", &[], body).unwrap();
    assert_eq!((status, answer.as_str()), (200, r#"{"receivers":2}"#));
    publisher(&redis)
        .publish(user(8), numbered(1))
        .await
        .unwrap();
    assert_eq!(eight.next_json().await["message"], "to both");
    assert_eq!(
        eight.next_json().await["message"],
        "note 1",
        "user 8 named twice, served once"
    );
    assert_eq!(nine.next_json().await["message"], "to both");
}
