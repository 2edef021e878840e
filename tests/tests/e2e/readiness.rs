//! Readiness reflects delivery: a node whose subscription silently stops delivering (the
//! connection stays open, nothing arrives) reports not ready, and ready again once it heals.

use e2e::{Gateway, RedisServer, StallProxy};

#[tokio::test]
async fn a_silently_broken_subscription_makes_the_node_not_ready() {
    let redis = RedisServer::start();
    let proxy = StallProxy::start(redis.port);
    let url = proxy.url();
    let gateway = Gateway::start(
        None,
        &[
            ("GW__REDIS__URL", url.as_str()),
            ("GW__REDIS__CANARY_INTERVAL_MS", "100"),
            ("GW__REDIS__CANARY_TIMEOUT_MS", "600"),
            // Long enough that only the canary, not the link PING, can notice.
            ("GW__REDIS__PING_INTERVAL_MS", "60000"),
        ],
    );
    // The subscriber connection is the node's first; the canary publishes on another one.
    proxy.set_stalled(0, true);
    gateway.wait_for_readiness(503);
    // Not ready because of the bus, not because the node is draining.
    let (_, body) = e2e::http_get(gateway.internal, "/readyz").unwrap();
    let readyz: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readyz["bus_connected"], false, "{body}");
    assert_eq!(readyz["draining"], false, "{body}");
    assert_eq!(
        gateway.metric("gateway_redis_connected"),
        1,
        "the connection itself looks fine"
    );

    proxy.set_stalled(0, false);
    gateway.wait_for_readiness(200);
}
