//! Presence: the sockets each user has open across the fleet follow sockets opening and
//! closing on any replica, and a replica that is SIGKILLed stops counting within the bound
//! (`presence.ttl_ms`, 2 s by default).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::{http_post_json, Gateway, RedisServer, WsClient, DEADLINE};
use serde_json::{json, Value};

/// The fleet's answer for `users`, asked on the server API of `api`.
fn presence(api: SocketAddr, users: &[u64], nodes: bool) -> Value {
    let body = json!({ "users": users, "nodes": nodes }).to_string();
    let (status, answer) =
        http_post_json(api, "/api/presence", &[], &body).expect("POST /api/presence");
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str::<Value>(&answer).unwrap()["presence"].clone()
}

/// Polls until the counts for `users` are `expected`; returns how long that took.
fn wait_counts(api: SocketAddr, users: &[u64], expected: &[u64]) -> Duration {
    let started = Instant::now();
    loop {
        let answer = presence(api, users, false);
        let counts: Vec<u64> = users
            .iter()
            .map(|u| answer[u.to_string()].as_u64().unwrap())
            .collect();
        if counts == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "presence stuck at {counts:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn counts_follow_sockets_on_two_replicas_and_drop_after_one_is_killed() {
    let redis = RedisServer::start();
    let a = Gateway::start(Some(&redis), &[]);
    let mut b = Gateway::start(Some(&redis), &[]);
    let users = [1, 2, 3];

    let alice_a1 = WsClient::connect(&a.ws_url("1")).await;
    let _alice_a2 = WsClient::connect(&a.ws_url("1")).await;
    let _alice_b = WsClient::connect(&b.ws_url("1")).await;
    let _bob_b = WsClient::connect(&b.ws_url("2")).await;
    let took = wait_counts(a.internal, &users, &[3, 1, 0]);
    println!("presence: 4 sockets opened on 2 replicas, counted in {took:?}");

    let with_nodes = presence(b.internal, &[1], true);
    assert_eq!(with_nodes["1"]["sockets"], 3);
    let per_node: Vec<u64> = with_nodes["1"]["nodes"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .collect();
    let mut per_node = per_node;
    per_node.sort_unstable();
    assert_eq!(per_node, [1, 2], "{with_nodes}");

    alice_a1.close().await;
    wait_counts(b.internal, &users, &[2, 1, 0]);

    b.kill(); // SIGKILL: b never says goodbye
    let killed = Instant::now();
    wait_counts(a.internal, &users, &[1, 0, 0]);
    let bound = Duration::from_millis(2000);
    println!(
        "presence: replica SIGKILLed, its sockets stopped counting after {:?} (presence.ttl_ms {bound:?})",
        killed.elapsed()
    );
    // The bound is the TTL after the dead node's last heartbeat; each poll (an HTTP request
    // and a script run on a loaded machine) adds a little.
    assert!(
        killed.elapsed() <= bound + Duration::from_millis(700),
        "took {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn single_node_mode_counts_its_own_sockets_and_bad_queries_are_refused() {
    let gateway = Gateway::start(None, &[]);
    let _one = WsClient::connect(&gateway.ws_url("5")).await;
    let _two = WsClient::connect(&gateway.ws_url("5")).await;
    wait_counts(gateway.internal, &[5, 6], &[2, 0]);
    let too_many: Vec<u64> = (1..=1001).collect();
    for body in [
        json!({ "users": too_many }).to_string(),
        json!({ "users": [0] }).to_string(),
        json!({ "user": 5 }).to_string(),
    ] {
        let (status, answer) =
            http_post_json(gateway.internal, "/api/presence", &[], &body).unwrap();
        assert_eq!(status, 400, "{body}: {answer}");
    }
}

/// A replica that stops cleanly (SIGTERM) removes its counts at once, without waiting for its
/// TTL; the answer comes from publisher-lib here.
#[tokio::test]
async fn a_replica_that_drains_stops_counting_at_once() {
    let redis = RedisServer::start();
    let mut gateway = Gateway::start(
        Some(&redis),
        &[
            ("GW__PRESENCE__TTL_MS", "60000"),
            ("GW__PRESENCE__HEARTBEAT_MS", "500"),
        ],
    );
    let _socket = WsClient::connect(&gateway.ws_url("9")).await;
    let publisher = crate::publisher(&redis);
    let count = || async { publisher.presence(&[crate::user(9)], false).await.unwrap()[0].sockets };
    let deadline = Instant::now() + DEADLINE;
    while count().await != 1 {
        assert!(Instant::now() < deadline, "the socket was never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = gateway.terminate();
    assert!(status.success());
    // With a 60 s TTL, only the goodbye explains a zero now.
    assert_eq!(count().await, 0);
}
