//! One Redis subscriber connection per node, one subscription per user per node, released
//! when the user's last socket leaves (after the linger period), never per socket.

use std::time::{Duration, Instant};

use e2e::{Gateway, RedisServer, StallProxy, WsClient, DEADLINE};

use crate::{numbered, publisher, user};

fn wait_numsub(redis: &RedisServer, channel: &str, expected: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let n = redis.numsub(channel);
        if n == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "NUMSUB {channel} stuck at {n}, expected {expected}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn subscriptions_are_counted_per_node_not_per_socket() {
    let redis = RedisServer::start();
    let linger = [("GW__WS__UNSUBSCRIBE_LINGER_MS", "200")];
    let a = Gateway::start(Some(&redis), &linger);
    let b = Gateway::start(Some(&redis), &linger);

    let s1 = WsClient::connect(&a.ws_url("11")).await;
    let s2 = WsClient::connect(&a.ws_url("11")).await;
    let s3 = WsClient::connect(&a.ws_url("11")).await;
    let other = WsClient::connect(&a.ws_url("12")).await;
    // The upgrade returns once Redis confirmed the SUBSCRIBE, so no waiting is needed here.
    assert_eq!(
        redis.numsub("user_11"),
        1,
        "three sockets on one node share one subscription"
    );
    assert_eq!(redis.numsub("user_12"), 1);
    assert_eq!(
        redis.subscriber_connections(),
        2,
        "each node subscribes on one connection"
    );

    let on_b = WsClient::connect(&b.ws_url("11")).await;
    assert_eq!(redis.numsub("user_11"), 2, "one per node holding the user");
    assert_eq!(
        redis.subscriber_connections(),
        2,
        "one subscriber connection per node"
    );

    // Sockets cost no Redis connection: forty more leave the count unchanged.
    let connections = redis.clients();
    let mut more = Vec::new();
    for id in 100..140 {
        more.push(WsClient::connect(&a.ws_url(&id.to_string())).await);
    }
    assert_eq!(redis.clients(), connections, "no connection per socket");
    assert_eq!(redis.subscriber_connections(), 2);
    futures_util::future::join_all(more.into_iter().map(WsClient::close)).await;

    s1.close().await;
    s2.close().await;
    assert_eq!(
        redis.numsub("user_11"),
        2,
        "a socket of user 11 is still on node a"
    );
    s3.close().await;
    wait_numsub(&redis, "user_11", 1);
    assert_eq!(redis.numsub("user_12"), 1, "other users keep theirs");
    a.wait_metric("gateway_redis_subscriptions", |n| n == 1);

    on_b.close().await;
    other.close().await;
    wait_numsub(&redis, "user_11", 0);
    wait_numsub(&redis, "user_12", 0);
}

#[tokio::test]
async fn a_quick_reconnect_keeps_the_subscription() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[("GW__WS__UNSUBSCRIBE_LINGER_MS", "60000")]);
    let first = WsClient::connect(&gateway.ws_url("21")).await;
    first.close().await;
    gateway.wait_metric("gateway_sockets_open", |n| n == 0);
    assert_eq!(redis.numsub("user_21"), 1, "kept during the linger period");
    let mut again = WsClient::connect(&gateway.ws_url("21")).await;
    assert_eq!(redis.numsub("user_21"), 1);
    crate::publisher(&redis)
        .publish(crate::user(21), crate::numbered(1))
        .await
        .unwrap();
    assert_eq!(again.next_json().await["message"], "note 1");
}

/// A user whose subscription is stuck on Redis (the history read that starts its cursor gets
/// no answer) holds up no one else: the node keeps delivering to its other users meanwhile.
/// The stuck user's socket opens when the subscribe wait runs out, and what is published to
/// it from then on reaches it once the read answers (caught up from history).
// Two threads: the proxy is waited on with blocking calls while Alice's handshake runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_stuck_on_redis_holds_up_no_other_user() {
    let redis = RedisServer::start();
    let proxy = StallProxy::start(redis.port);
    let url = proxy.url();
    let gateway = Gateway::start(
        None,
        &[
            ("GW__REDIS__URL", url.as_str()),
            // The stuck read stays stuck for the whole test rather than failing the link.
            ("GW__HISTORY__READ_TIMEOUT_MS", "120000"),
            ("GW__REDIS__SUBSCRIBE_TIMEOUT_MS", "300"),
        ],
    );
    let mut bob = WsClient::connect(&gateway.ws_url("2")).await;
    let publisher = publisher(&redis);

    // Only the subscriber's own history connection sends XREVRANGE (a new user's cursor).
    proxy.stall_on(b"XREVRANGE");
    let alice_url = gateway.ws_url("1");
    let alice = tokio::spawn(async move { WsClient::connect(&alice_url).await });
    proxy.wait_stalled(1);

    // Bob's notifications keep flowing while Alice's subscription waits on Redis.
    for n in 1..=3 {
        assert_eq!(publisher.publish(user(2), numbered(n)).await.unwrap(), 1);
        assert_eq!(bob.next_json().await["message"], format!("note {n}"));
    }
    // Alice's socket opens anyway; her subscription is still stuck.
    let mut alice = alice.await.unwrap();
    assert_eq!(
        publisher.publish(user(1), numbered(10)).await.unwrap(),
        0,
        "not subscribed yet"
    );
    assert_eq!(publisher.publish(user(2), numbered(4)).await.unwrap(), 1);
    assert_eq!(bob.next_json().await["message"], "note 4");

    proxy.release_all();
    assert_eq!(
        alice.next_json().await["message"],
        "note 10",
        "caught up from history once subscribed"
    );
    assert_eq!(publisher.publish(user(1), numbered(11)).await.unwrap(), 1);
    assert_eq!(alice.next_json().await["message"], "note 11");
}
