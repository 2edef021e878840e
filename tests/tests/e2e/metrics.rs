//! `GET /metrics`: valid Prometheus text, and every series an operator alerts on moves when
//! the thing it counts happens.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::{Gateway, RawSocket, RedisServer, WsClient};

use crate::{numbered, publisher, user};

/// Every series of one scrape, by full name with labels, after checking the text format:
/// each family has HELP and TYPE, each sample line is `name{labels} value`, and histogram
/// buckets are cumulative and end with `+Inf` equal to `_count`.
fn scrape(gateway: &Gateway) -> HashMap<String, f64> {
    let (status, body) = e2e::http_get(gateway.internal, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = Vec::new();
    let mut series = HashMap::new();
    for line in body.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line:?}"));
        let family = name.split('{').next().unwrap();
        assert!(
            family
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                family
                    .strip_suffix(suffix)
                    .filter(|b| typed.get(*b).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(family);
        assert!(typed.contains_key(base), "no # TYPE before {line:?}");
        assert!(helped.iter().any(|h| h == base), "no # HELP for {line:?}");
        if typed[base] == "counter" {
            assert!(
                base.ends_with("_total"),
                "counter names end in _total: {base}"
            );
        }
        assert!(
            series.insert(name.to_owned(), value).is_none(),
            "duplicate series {name}"
        );
    }
    for (name, _) in typed.iter().filter(|(_, kind)| *kind == "histogram") {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = series
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} cumulative"
        );
        assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY), "{name}");
        assert_eq!(
            buckets.last().map(|b| b.1),
            series.get(&format!("{name}_count")).copied(),
            "{name}: +Inf bucket equals _count"
        );
    }
    series
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

const LATENCY: &str = "gateway_delivery_latency_ms";

#[tokio::test]
async fn every_series_moves_when_what_it_counts_happens() {
    let mut redis = RedisServer::start();
    let gateway = Gateway::start(
        Some(&redis),
        &[
            ("GW__WS__UNSUBSCRIBE_LINGER_MS", "50"),
            ("GW__REDIS__MAX_PAYLOAD_BYTES", "1024"),
        ],
    );
    let start = scrape(&gateway);
    for series in [
        "gateway_sockets_open",
        "gateway_users",
        "gateway_redis_subscriptions",
        "gateway_messages_received_total",
        "gateway_frames_delivered_total",
        "gateway_messages_dropped_total{cause=\"malformed\"}",
        "gateway_messages_dropped_total{cause=\"oversized\"}",
        "gateway_messages_dropped_total{cause=\"slow_client\"}",
        "gateway_redis_reconnects_total",
        "gateway_upgrades_refused_total",
        "gateway_delivery_latency_ms_count",
    ] {
        assert_eq!(start.get(series), Some(&0.0), "{series} starts at 0");
    }
    assert_eq!(start["gateway_redis_connected"], 1.0);

    // Sockets, users, subscriptions.
    let mut alice_1 = WsClient::connect(&gateway.ws_url("11")).await;
    let mut alice_2 = WsClient::connect(&gateway.ws_url("11")).await;
    let mut bob = WsClient::connect(&gateway.ws_url("12")).await;
    let m = scrape(&gateway);
    assert_eq!(m["gateway_sockets_open"], 3.0);
    assert_eq!(m["gateway_sockets_opened_total"], 3.0);
    assert_eq!(m["gateway_users"], 2.0);
    assert_eq!(m["gateway_redis_subscriptions"], 2.0);
    assert_eq!(redis.numsub("user_11"), 1, "the gauge matches Redis");

    // Received once per message, delivered once per socket; latency from the timestamp.
    let publisher = publisher(&redis);
    assert_eq!(publisher.publish(user(11), numbered(1)).await.unwrap(), 1);
    for alice in [&mut alice_1, &mut alice_2] {
        assert_eq!(alice.next_json().await["message"], "note 1");
    }
    // The hub counts a fan-out after queueing it, so a fast client can see its frame first.
    gateway.wait_metric("gateway_frames_delivered_total", |n| n >= 2);
    let m = scrape(&gateway);
    assert_eq!(m["gateway_messages_received_total"], 1.0);
    assert_eq!(m["gateway_frames_delivered_total"], 2.0);
    assert_eq!(m[&format!("{LATENCY}_count")], 1.0);
    assert_eq!(
        m[&format!("{LATENCY}_bucket{{le=\"1000\"}}")],
        1.0,
        "loopback delivery is well under a second"
    );

    // A notification stamped 2 s ago lands between the 1 s and 2.5 s buckets: the histogram
    // measures from the publisher's timestamp, not from arrival.
    let stale = format!(
        r#"{{"type":"info","message":"stale","timestamp":{}}}"#,
        now_ms() - 2000
    );
    assert_eq!(redis.publish_raw("user_12", stale.as_bytes()), 1);
    assert_eq!(bob.next_json().await["message"], "stale");
    let m = scrape(&gateway);
    assert_eq!(m[&format!("{LATENCY}_count")], 2.0);
    assert_eq!(m[&format!("{LATENCY}_bucket{{le=\"1000\"}}")], 1.0);
    assert_eq!(m[&format!("{LATENCY}_bucket{{le=\"2500\"}}")], 2.0);
    assert!(m[&format!("{LATENCY}_sum")] >= 2000.0);

    // Drops by cause: malformed and oversized (each still counted as received).
    assert_eq!(redis.publish_raw("user_12", b"{not json"), 1);
    let big = format!(r#"{{"type":"info","message":"{}"}}"#, "x".repeat(2000));
    assert_eq!(redis.publish_raw("user_12", big.as_bytes()), 1);
    gateway.wait_metric("gateway_messages_dropped_total{cause=\"oversized\"}", |n| {
        n == 1
    });
    let m = scrape(&gateway);
    assert_eq!(
        m["gateway_messages_dropped_total{cause=\"malformed\"}"],
        1.0
    );
    assert_eq!(m["gateway_messages_received_total"], 4.0);
    assert_eq!(m["gateway_frames_delivered_total"], 3.0);

    // Refused upgrades.
    let (status, _) = RawSocket::handshake(gateway.addr, "/ws/notifications/abc/");
    assert_eq!(status, 400);
    assert_eq!(gateway.metric("gateway_upgrades_refused_total"), 1);

    // Closing sockets: the gauges come down, the subscription leaves after the linger.
    alice_1.close().await;
    alice_2.close().await;
    gateway.wait_metric("gateway_sockets_open", |n| n == 1);
    gateway.wait_metric("gateway_users", |n| n == 1);
    gateway.wait_metric("gateway_redis_subscriptions", |n| n == 1);
    assert_eq!(redis.numsub("user_11"), 0);

    // Redis going away and coming back.
    redis.kill();
    gateway.wait_metric("gateway_redis_connected", |n| n == 0);
    redis.restart();
    gateway.wait_metric("gateway_redis_connected", |n| n == 1);
    gateway.wait_metric("gateway_redis_reconnects_total", |n| n >= 1);
    gateway.wait_metric("gateway_redis_subscriptions", |n| n == 1);
    assert_eq!(
        publisher.publish(user(12), numbered(2)).await.unwrap(),
        1,
        "re-subscribed"
    );
    assert_eq!(bob.next_json().await["message"], "note 2");
    scrape(&gateway);
}

#[tokio::test]
async fn a_client_that_stops_reading_counts_as_a_slow_client_drop() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(
        Some(&redis),
        &[
            ("GW__WS__OUTBOUND_QUEUE", "4"),
            ("GW__WS__WRITE_TIMEOUT_MS", "300"),
        ],
    );
    // Completes the handshake, then never reads.
    let (status, _stalled) = RawSocket::handshake(gateway.addr, "/ws/notifications/21/");
    assert_eq!(status, 101);
    let frame = format!(
        r#"{{"type":"info","message":"filler","data":{{"x":"{}"}}}}"#,
        "x".repeat(32 * 1024)
    );
    // Publish until the gateway gives up on the socket; bounded (≈ 64 MiB at most).
    let deadline = std::time::Instant::now() + e2e::DEADLINE;
    let mut sent = 0;
    while gateway.metric("gateway_messages_dropped_total{cause=\"slow_client\"}") == 0 {
        assert!(
            sent < 2000 && std::time::Instant::now() < deadline,
            "no slow_client drop after {sent} frames\n{}",
            gateway.log()
        );
        for _ in 0..20 {
            redis.publish_raw("user_21", frame.as_bytes());
        }
        sent += 20;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.wait_metric("gateway_sockets_open", |n| n == 0);
    let m = scrape(&gateway);
    assert!(m["gateway_messages_dropped_total{cause=\"slow_client\"}"] >= 1.0);
    assert_eq!(
        m["gateway_messages_dropped_total{cause=\"malformed\"}"],
        0.0
    );
}
