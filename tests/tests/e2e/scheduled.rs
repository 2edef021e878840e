//! Scheduled notifications: stored in Redis, fired by whichever gateway node gets there
//! first, exactly once, never early, through the history-and-publish path; cancel,
//! reschedule, and the lateness limit when no gateway was running at the due time.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use e2e::{http_post_json, http_request, Gateway, RedisServer, WsClient, DEADLINE};
use publisher::{Level, Notification};
use serde_json::Value;

use crate::{numbered, publisher, user};

fn now_ms() -> u64 {
    publisher::schedule::system_time_ms(SystemTime::now())
}

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// The milliseconds of a history id `<ms>-<seq>`: Redis's clock when the item was published.
fn id_ms(frame: &Value) -> u64 {
    let id = frame["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {frame}"));
    id.split('-').next().unwrap().parse().unwrap()
}

/// Every history entry's `data.n` over `users`, from Redis itself.
fn history_numbers(redis: &RedisServer, users: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut conn = redis.connection();
    let mut numbers = Vec::new();
    for u in users {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("history:user_{u}"))
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        for (_, fields) in entries {
            let payload: Value = serde_json::from_str(&fields[0].1).unwrap();
            numbers.push(payload["data"]["n"].as_u64().unwrap());
        }
    }
    numbers
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_items_fire_exactly_once_none_early_while_a_gateway_is_killed() {
    const ITEMS: u64 = 1000;
    const USERS: u64 = 200;
    let redis = RedisServer::start();
    let a = Gateway::start(Some(&redis), &[]);
    let b = Gateway::start(Some(&redis), &[]);
    let mut c = Gateway::start(Some(&redis), &[]);
    // Sockets on the two replicas that survive; all three fire.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Value, u64)>();
    for u in 1..=USERS {
        let gateway = if u % 2 == 0 { &a } else { &b };
        let mut client = WsClient::connect(&gateway.ws_url(&u.to_string())).await;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(frame) = client.next_frame().await {
                if tx.send((frame, now_ms())).is_err() {
                    return;
                }
            }
        });
    }
    let publisher = publisher(&redis);
    // Due over 8 s from 2 s ahead: item i at start + 2 s + 8 ms * i, for user 1 + i % 200.
    let start = now_ms() + 2000;
    let due = move |i: u64| start + i * 8;
    let mut scheduling = Vec::new();
    for i in 0..ITEMS {
        let publisher = publisher.clone();
        scheduling.push(tokio::spawn(async move {
            publisher
                .schedule(
                    user(1 + i % USERS),
                    numbered(i),
                    at(due(i)),
                    &format!("item:{i}"),
                )
                .await
                .unwrap();
        }));
    }
    for task in scheduling {
        task.await.unwrap();
    }
    // Had scheduling taken longer than the lead on a slow machine, the first items would only
    // be in the past: they fire at once, late, never early, and the checks below still hold.

    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut fire_lateness = Vec::new();
    let mut delivery_lateness = Vec::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(8) + DEADLINE;
    while seen.len() < ITEMS as usize {
        let (frame, received) = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {ITEMS} items arrived", seen.len()))
            .expect("readers alive");
        let n = frame["data"]["n"]
            .as_u64()
            .unwrap_or_else(|| panic!("{frame}"));
        *seen.entry(n).or_default() += 1;
        assert_eq!(
            frame["timestamp"].as_u64(),
            Some(due(n)),
            "timestamp is the due time"
        );
        let fired = id_ms(&frame);
        assert!(
            fired >= due(n),
            "item {n} fired {} ms early",
            due(n) - fired
        );
        assert!(received >= due(n), "item {n} delivered early");
        fire_lateness.push(fired - due(n));
        delivery_lateness.push(received - due(n));
        if !killed && seen.len() >= ITEMS as usize / 2 {
            c.kill(); // SIGKILL, mid-way, whatever it was doing
            killed = true;
        }
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, &count)| count > 1).collect();
    assert!(duplicates.is_empty(), "delivered twice: {duplicates:?}");
    // The authoritative count: one history entry per item, nothing left scheduled.
    let mut stored = history_numbers(&redis, 1..=USERS);
    stored.sort_unstable();
    assert_eq!(
        stored,
        (0..ITEMS).collect::<Vec<_>>(),
        "each item stored exactly once"
    );
    let mut conn = redis.connection();
    let left: u64 = redis::cmd("ZCARD")
        .arg(publisher::schedule::DUE_KEY)
        .query(&mut conn)
        .unwrap();
    let items_left: u64 = redis::cmd("HLEN")
        .arg(publisher::schedule::ITEMS_KEY)
        .query(&mut conn)
        .unwrap();
    assert_eq!((left, items_left), (0, 0));
    let fired_total =
        a.metric("gateway_scheduled_fired_total") + b.metric("gateway_scheduled_fired_total");
    assert!(
        fired_total <= ITEMS,
        "the two survivors fired {fired_total}"
    );

    fire_lateness.sort_unstable();
    delivery_lateness.sort_unstable();
    for (what, values) in [("fired", &fire_lateness), ("delivered", &delivery_lateness)] {
        println!(
            "scheduled 1000 items over 8 s, 200 users, 3 gateways (one SIGKILLed mid-way): {what} late by p50 {} ms, p99 {} ms, max {} ms; each exactly once",
            percentile(values, 0.5),
            percentile(values, 0.99),
            values.last().unwrap()
        );
    }
    // The target is p99 within 100 ms on an idle machine; this bound only catches a broken
    // poll loop on a loaded CI machine.
    assert!(percentile(&delivery_lateness, 0.99) < 1000);
}

#[tokio::test]
async fn a_cancelled_item_never_fires_and_a_rescheduled_one_fires_once_at_its_new_time() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[]);
    let mut client = WsClient::connect(&gateway.ws_url("3")).await;
    let publisher = publisher(&redis);
    let now = now_ms();
    let note = |text: &str| Notification::new(Level::Info, text);
    publisher
        .schedule(
            user(3),
            note("cancelled"),
            at(now + 300),
            "booking:1:expiring",
        )
        .await
        .unwrap();
    publisher
        .schedule(
            user(3),
            note("first time"),
            at(now + 300),
            "booking:2:expiring",
        )
        .await
        .unwrap();
    publisher
        .schedule(user(3), note("marker"), at(now + 1500), "marker")
        .await
        .unwrap();
    assert!(publisher.cancel("booking:1:expiring").await.unwrap());
    // The booking was renewed: same key, new time and text.
    publisher
        .schedule(
            user(3),
            note("renewed time"),
            at(now + 900),
            "booking:2:expiring",
        )
        .await
        .unwrap();

    let frame = client.next_json().await;
    assert_eq!(frame["message"], "renewed time", "{frame}");
    assert_eq!(frame["timestamp"].as_u64(), Some(now + 900));
    assert!(id_ms(&frame) >= now + 900, "fired before its new time");
    // Nothing else until the marker: the old time and the cancelled item never fired.
    assert_eq!(client.next_json().await["message"], "marker");
    assert!(
        !publisher.cancel("booking:2:expiring").await.unwrap(),
        "already fired"
    );
}

/// No gateway runs at the due time: the first one back delivers the item late, or drops it
/// (counted and logged) when it is later than `schedule.max_lateness_ms`.
#[tokio::test]
async fn items_due_while_every_gateway_is_down_fire_late_or_are_dropped_per_the_limit() {
    let redis = RedisServer::start();
    let publisher = publisher(&redis);
    let due = now_ms() + 100;
    publisher
        .schedule(user(4), numbered(1), at(due), "too-late")
        .await
        .unwrap();
    // Wait out the due time with no gateway running (the time itself is the event here).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let strict = Gateway::start(Some(&redis), &[("GW__SCHEDULE__MAX_LATENESS_MS", "300")]);
    strict.wait_metric("gateway_scheduled_dropped_total", |n| n == 1);
    strict.wait_log("scheduled notification dropped");
    assert!(strict.log().contains("too-late"), "the log names the key");
    assert_eq!(strict.metric("gateway_scheduled_fired_total"), 0);
    drop(strict);
    assert!(
        history_numbers(&redis, 4..=4).is_empty(),
        "a dropped item is not stored"
    );

    let due = now_ms() + 100;
    publisher
        .schedule(user(4), numbered(2), at(due), "late-but-wanted")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let lenient = Gateway::start(Some(&redis), &[("GW__SCHEDULE__MAX_LATENESS_MS", "60000")]);
    lenient.wait_metric("gateway_scheduled_fired_total", |n| n == 1);
    assert_eq!(history_numbers(&redis, 4..=4), [2], "delivered once");
    // A browser that comes back resumes from history and gets it, late, with its due time.
    let mut client = WsClient::connect(&format!("{}?last_id=0-0", lenient.ws_url("4"))).await;
    let frame = client.next_json().await;
    assert_eq!(frame["data"]["n"], 2);
    assert_eq!(frame["timestamp"].as_u64(), Some(due));
    assert!(
        id_ms(&frame) >= due + 600,
        "fired late, when the gateway came back"
    );
    assert_eq!(lenient.metric("gateway_scheduled_dropped_total"), 0);
}

#[tokio::test]
async fn the_http_api_schedules_reschedules_and_cancels_with_clear_errors() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[]);
    let mut client = WsClient::connect(&gateway.ws_url("6")).await;
    let due = now_ms() + 400;
    let body = format!(
        r#"{{"key": "booking:1881:expired", "at": {due}, "user": 6, "event": "booking.expired", "data": {{"booking_id": 1881, "slot": "A-12"}}}}"#
    );
    let (status, answer) = http_post_json(gateway.internal, "/api/schedule", &[], &body).unwrap();
    assert_eq!(status, 200, "{answer}");
    let cancel = |key: &str| {
        http_request(
            gateway.internal,
            &format!(
                "DELETE /api/schedule/{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            ),
        )
        .unwrap()
    };
    let other = format!(
        r#"{{"key": "other", "at": {due}, "user": 6, "type": "info", "message": "cancelled"}}"#
    );
    assert_eq!(
        http_post_json(gateway.internal, "/api/schedule", &[], &other)
            .unwrap()
            .0,
        200
    );
    let (status, answer) = cancel("other");
    assert_eq!((status, answer.as_str()), (200, r#"{"cancelled":true}"#));
    let (status, answer) = cancel("other");
    assert_eq!((status, answer.as_str()), (200, r#"{"cancelled":false}"#));

    let frame = client.next_json().await;
    assert_eq!(frame["event"], "booking.expired");
    assert_eq!(frame["timestamp"].as_u64(), Some(due));

    for (body, expected) in [
        (
            r#"{"key": "k k", "at": 1765000000000, "user": 6, "type": "info", "message": "x"}"#
                .to_owned(),
            "schedule key must be",
        ),
        (
            format!(
                r#"{{"key": "{}", "at": 1765000000000, "user": 6, "type": "info", "message": "x"}}"#,
                "k".repeat(201)
            ),
            "schedule key must be",
        ),
        (
            r#"{"key": "k", "at": 1765000000, "user": 6, "type": "info", "message": "x"}"#
                .to_owned(),
            "not seconds",
        ),
        (
            r#"{"key": "k", "at": 1765000000000, "user": 6, "event": "booking.unknown"}"#
                .to_owned(),
            "unknown event",
        ),
        (
            r#"{"key": "k", "at": 1765000000000, "user": 0, "type": "info", "message": "x"}"#
                .to_owned(),
            "user id 0",
        ),
    ] {
        let (status, answer) =
            http_post_json(gateway.internal, "/api/schedule", &[], &body).unwrap();
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(expected), "{body}: {answer}");
    }
}

/// Single-node mode schedules in memory (documented: items do not survive a restart).
#[tokio::test]
async fn single_node_mode_schedules_in_memory() {
    let gateway = Gateway::start(None, &[]);
    let mut client = WsClient::connect(&gateway.ws_url("8")).await;
    let due = now_ms() + 300;
    for (key, message) in [("a", "cancelled"), ("b", "fired")] {
        let body = format!(
            r#"{{"key": "{key}", "at": {due}, "user": 8, "type": "info", "message": "{message}"}}"#
        );
        let (status, answer) =
            http_post_json(gateway.internal, "/api/schedule", &[], &body).unwrap();
        assert_eq!(status, 200, "{answer}");
    }
    let (status, _) = http_request(
        gateway.internal,
        "DELETE /api/schedule/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 200);
    let frame = client.next_json().await;
    assert_eq!(frame["message"], "fired");
    assert_eq!(frame["timestamp"].as_u64(), Some(due));
    assert!(now_ms() >= due);
}
