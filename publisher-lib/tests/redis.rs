//! Against a real `redis-server` (one per test, on a free port, killed on drop).
//!
//! Never skipped: without redis-server these tests fail and say how to install it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use publisher::{ErrorKind, Event, Level, Notification, Publisher, PublisherOptions, UserId};

/// A redis-server child process; killed when dropped, so a failing test leaves nothing behind.
struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free port. Retries with another port if one was taken in the
    /// moment between picking and binding it.
    async fn start() -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = Self::try_start(free_port()).await {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts a server on `port` (used to restart on the same address).
    async fn start_on(port: u16) -> RedisServer {
        match Self::try_start(port).await {
            Some(server) => server,
            None => panic!("redis-server did not start on port {port}"),
        }
    }

    async fn try_start(port: u16) -> Option<RedisServer> {
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server not found: apt-get install -y redis-server")
            }
            Err(err) => panic!("could not run redis-server: {err}"),
        };
        let mut server = RedisServer {
            child: Some(child),
            port,
        };
        let give_up = Instant::now() + Duration::from_secs(10);
        while Instant::now() < give_up {
            if server.exited() {
                return None; // most likely the port was taken
            }
            if server.answers_ping().await {
                return Some(server);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server on port {port} did not answer PING within 10 s");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn exited(&mut self) -> bool {
        // Still running is `Some(Ok(None))`; anything else means it is gone.
        !matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    async fn answers_ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok_and(|pong| pong == "PONG")
    }

    /// Kills the server and waits until it is gone, so the port refuses connections.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn user(id: u64) -> UserId {
    UserId::new(id).expect("valid test id")
}

/// A subscriber the way a gateway node is one: a redis-rs pub/sub connection.
async fn subscribe(url: &str, channels: &[&str]) -> redis::aio::PubSubStream {
    let client = redis::Client::open(url).expect("subscriber URL");
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .expect("subscriber connects");
    for channel in channels {
        pubsub.subscribe(*channel).await.expect("subscribe");
    }
    pubsub.into_on_message()
}

async fn next_message(stream: &mut redis::aio::PubSubStream) -> (String, Vec<u8>) {
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a message within 5 s")
        .expect("subscriber stream still open");
    (
        msg.get_channel_name().to_owned(),
        msg.get_payload_bytes().to_vec(),
    )
}

#[tokio::test]
async fn publish_without_subscriber_returns_zero() {
    let server = RedisServer::start().await;
    let publisher = Publisher::connect(&server.url()).expect("valid URL");
    publisher.ping().await.expect("redis answers");

    let receivers = publisher
        .publish(user(7), Notification::new(Level::Info, "nobody listens"))
        .await
        .expect("publishing to nobody is not an error");
    assert_eq!(receivers, 0);

    let receivers = publisher
        .publish_many(
            &[user(7), user(8)],
            Event::BookingExpired {
                booking_id: 1,
                slot: "A-1".into(),
            },
        )
        .await
        .expect("publishing to nobody is not an error");
    assert_eq!(receivers, 0);
}

#[tokio::test]
async fn subscriber_receives_the_exact_payload() {
    let server = RedisServer::start().await;
    let publisher = Publisher::connect(&server.url()).expect("valid URL");
    let mut messages = subscribe(&server.url(), &["user_7"]).await;

    // A notification with its timestamp set is sent byte for byte as to_payload makes it.
    let notification = Notification::from(Event::BookingExpiringSoon {
        booking_id: 1881,
        slot: "A-12".into(),
        minutes_left: 5,
    })
    .with_timestamp(1_700_000_000_000);
    let expected = notification
        .to_payload(publisher.options().max_payload_bytes)
        .expect("valid notification");
    let receipt = publisher
        .publish_with_receipt(user(7), notification)
        .await
        .expect("publish");
    assert_eq!(receipt.receivers, 1);
    // Live subscribers get it with its history id as the first field.
    assert_eq!(
        next_message(&mut messages).await,
        (
            "user_7".to_owned(),
            publisher::wire::with_id(receipt.id, &expected).unwrap()
        )
    );
    // And the same notification is in the user's history, stored under that id.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let history: Vec<Entry> = redis::cmd("XRANGE")
        .arg(user(7).history_key())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].0, receipt.id.to_string());
    // Field "p" holds the notification ("k" its retry token).
    assert_eq!(history[0].1[0], ("p".to_owned(), expected));

    // Raw payloads go out unchanged but for the id, unknown fields included.
    let raw = br#"{"type":"info","message":"raw","x-trace":"abc","data":{"k":[1,2]}}"#;
    let receivers = publisher
        .publish_payload(user(7), raw)
        .await
        .expect("publish_payload");
    assert_eq!(receivers, 1);
    let received = next_message(&mut messages).await.1;
    let id = publisher::wire::check_payload(&received, 1 << 20)
        .unwrap()
        .id
        .expect("an id");
    assert!(id > receipt.id, "ids of a user increase");
    assert_eq!(received, publisher::wire::with_id(id, raw).unwrap());

    // Without a timestamp, publish stamps the current time.
    let before = now_millis();
    publisher
        .publish(user(7), Notification::new(Level::Success, "stamped"))
        .await
        .expect("publish");
    let (_, payload) = next_message(&mut messages).await;
    let json: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
    let stamp = json["timestamp"]
        .as_u64()
        .expect("timestamp set by publish");
    assert!(stamp >= before && stamp <= now_millis() + 1, "{stamp}");
}

#[tokio::test]
async fn publish_many_sums_receivers_and_sends_each_user_once() {
    let server = RedisServer::start().await;
    let publisher = Publisher::connect(&server.url()).expect("valid URL");
    let mut messages = subscribe(&server.url(), &["user_7", "user_8"]).await;

    let receivers = publisher
        .publish_many(
            &[user(7), user(8), user(7), user(9)],
            Notification::new(Level::Info, "to many"),
        )
        .await
        .expect("publish_many");
    assert_eq!(
        receivers, 2,
        "user_7 and user_8 have a subscriber, user_9 none"
    );

    let mut channels = vec![
        next_message(&mut messages).await.0,
        next_message(&mut messages).await.0,
    ];
    channels.sort();
    assert_eq!(channels, ["user_7", "user_8"]);

    // The duplicate 7 was not sent twice: the next message is this marker.
    publisher
        .publish(user(8), Notification::new(Level::Info, "marker"))
        .await
        .expect("publish");
    let (channel, payload) = next_message(&mut messages).await;
    assert_eq!(channel, "user_8");
    let json: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
    assert_eq!(json["message"], "marker");
}

#[tokio::test]
async fn publish_batch_sends_each_notification_to_its_user_in_order_with_history() {
    let server = RedisServer::start().await;
    let publisher = Publisher::connect(&server.url()).expect("valid URL");
    let mut messages = subscribe(&server.url(), &["user_7", "user_8"]).await;

    let batch = [(7, "a"), (8, "b"), (7, "c"), (9, "nobody")]
        .map(|(id, text)| (user(id), Notification::new(Level::Info, text)));
    let receipts = publisher.publish_batch(batch).await.expect("publish_batch");
    let receivers: Vec<usize> = receipts.iter().map(|r| r.receivers).collect();
    assert_eq!(
        receivers,
        [1, 1, 1, 0],
        "one receipt per notification, in order"
    );
    assert!(receipts[2].id > receipts[0].id, "ids of a user increase");

    let mut seen = Vec::new();
    for _ in 0..3 {
        let (channel, payload) = next_message(&mut messages).await;
        let json: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        seen.push((channel, json["message"].as_str().unwrap().to_owned()));
    }
    let expected = [("user_7", "a"), ("user_8", "b"), ("user_7", "c")]
        .map(|(c, m)| (c.to_owned(), m.to_owned()));
    assert_eq!(seen, expected);

    // Each went through the history script, even the one nobody received live.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for (id, stored) in [(7, 2), (8, 1), (9, 1)] {
        let len: usize = redis::cmd("XLEN")
            .arg(user(id).history_key())
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, stored, "history of user {id}");
    }

    let none = publisher
        .publish_batch(Vec::<(UserId, Notification)>::new())
        .await;
    assert_eq!(none.unwrap(), []);
}

#[tokio::test]
async fn concurrent_batches_on_a_redis_without_the_script_store_each_notification_once() {
    // Redis forgets scripts on restart. Batches in flight on several pooled connections then
    // meet NOSCRIPT while another connection (here: a one-notification batch, answered first)
    // loads the script: the tail of a long batch may already have run when its head failed,
    // and must not be sent again.
    let server = RedisServer::start().await;
    let options = PublisherOptions {
        pool_size: 8,
        ..PublisherOptions::default()
    };
    let publisher = Publisher::with_options(&server.url(), options).expect("valid URL");
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    const BATCHES: u64 = 6;
    let size = |batch: u64| if batch == 0 { 1 } else { 1000 };
    let user_of = |round: u64, batch: u64, n: u64| user(1 + round * 100_000 + batch * 10_000 + n);
    for round in 0..10u64 {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        let batches = (0..BATCHES).map(|b| {
            let publisher = publisher.clone();
            async move {
                let batch = (0..size(b))
                    .map(|n| (user_of(round, b, n), Notification::new(Level::Info, "once")));
                publisher.publish_batch(batch).await.expect("publish_batch")
            }
        });
        futures_util::future::join_all(batches).await;
        let mut pipe = redis::pipe();
        for b in 0..BATCHES {
            for n in 0..size(b) {
                pipe.cmd("XLEN").arg(user_of(round, b, n).history_key());
            }
        }
        let lengths: Vec<usize> = pipe.query_async(&mut conn).await.unwrap();
        let twice = lengths.iter().filter(|&&n| n != 1).count();
        assert_eq!(
            twice, 0,
            "round {round}: {twice} notifications stored twice"
        );
    }
}

#[tokio::test]
async fn stopped_redis_is_reported_as_unavailable_within_the_timeout() {
    let mut server = RedisServer::start().await;
    let url = server.url();
    let options = PublisherOptions {
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let publisher = Publisher::with_options(&url, options).expect("valid URL");
    // Leave a live connection in the pool, so the failure below is a broken one.
    publisher.ping().await.expect("redis answers");
    server.stop();

    let started = Instant::now();
    let err = publisher
        .publish(user(7), Notification::new(Level::Info, "into the void"))
        .await
        .expect_err("redis is down");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::RedisUnavailable, "{err}");
    assert!(took < options.timeout, "took {took:?}");

    // A publisher that never had a connection fails the same way.
    let fresh = Publisher::with_options(&url, options).expect("valid URL");
    let started = Instant::now();
    let err = fresh.ping().await.expect_err("redis is down");
    assert_eq!(err.kind(), ErrorKind::RedisUnavailable, "{err}");
    assert!(started.elapsed() < options.timeout);

    // And it recovers by itself once Redis is back on the same address.
    let restarted = RedisServer::start_on(server.port).await;
    let receivers = publisher
        .publish(user(7), Notification::new(Level::Info, "back"))
        .await
        .expect("publisher reconnects after a Redis restart");
    assert_eq!(receivers, 0);
    drop(restarted);
}

/// `INFO commandstats`' call count of `command` (0 when it never ran).
async fn calls_of(url: &str, command: &str) -> u64 {
    let client = redis::Client::open(url).expect("valid URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis answers");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_busy_pool_makes_one_round_trip_per_publish_and_rides_out_a_restart() {
    let server = RedisServer::start().await;
    let url = server.url();
    let publisher = Publisher::with_options(
        &url,
        PublisherOptions {
            pool_size: 2,
            ..Default::default()
        },
    )
    .expect("valid URL");
    publisher.ping().await.expect("redis answers");
    let pings_before = calls_of(&url, "ping").await;
    for n in 0..200 {
        publisher
            .publish(user(7), Notification::new(Level::Info, format!("n{n}")))
            .await
            .expect("published");
    }
    // A connection in steady use goes back into service unchecked: no PING (nor UNWATCH)
    // per checkout, as deadpool-redis's own manager sends.
    let pings = calls_of(&url, "ping").await - pings_before;
    assert!(pings <= 2, "{pings} PINGs for 200 publishes");
    assert_eq!(calls_of(&url, "unwatch").await, 0);

    // Redis restarts on the same address between two publishes: the pooled connections are
    // dead, and the next publish still goes through (a failed call drops them all).
    let port = server.port;
    drop(server);
    let restarted = RedisServer::start_on(port).await;
    publisher
        .publish(user(7), Notification::new(Level::Info, "after the restart"))
        .await
        .expect("publisher reconnects after a Redis restart");
    drop(restarted);
}

#[tokio::test]
async fn server_that_never_answers_times_out() {
    // Accepts connections and never replies: what a hung Redis or a half-open link looks like.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });

    let options = PublisherOptions {
        timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let publisher =
        Publisher::with_options(&format!("redis://127.0.0.1:{port}"), options).expect("valid URL");
    let started = Instant::now();
    let err = publisher
        .publish(user(7), Notification::new(Level::Info, "hello?"))
        .await
        .expect_err("nobody answers");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(took < Duration::from_millis(800), "took {took:?}");
    holder.abort();
}

fn now_millis() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since_epoch.as_millis()).expect("millis fit u64")
}

#[tokio::test]
async fn a_retry_with_the_same_token_is_stored_and_published_once() {
    let server = RedisServer::start().await;
    let mut messages = subscribe(&server.url(), &["user_5"]).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(publisher::wire::PUBLISH_SCRIPT);
    let call = |message: &str, token: &str, retry: &str| {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(user(5).history_key())
            .arg(user(5).channel())
            .arg(format!(r#"{{"type":"info","message":"{message}"}}"#))
            .arg(1000)
            .arg(0)
            .arg(token.to_owned())
            .arg(retry.to_owned());
        invocation
    };
    let (first, receivers): (String, usize) = call("once", "token-1", "0")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(receivers, 1);
    // Other notifications in between do not hide the first attempt from its retry.
    for n in 0..10 {
        let _: (String, usize) = call(&format!("other {n}"), &format!("t{n}"), "0")
            .invoke_async(&mut conn)
            .await
            .unwrap();
    }
    let (again, receivers): (String, usize) = call("once", "token-1", "1")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (again.as_str(), receivers),
        (first.as_str(), 0),
        "answered with the first id"
    );
    let stored: usize = redis::cmd("XLEN")
        .arg(user(5).history_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 11, "stored once");
    // A retry whose first attempt never ran is stored and published.
    let (fresh, receivers): (String, usize) = call("lost", "token-2", "1")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert!(fresh > first);
    assert_eq!(receivers, 1);
    // Published once each: "once", ten others, then "lost".
    let mut seen = Vec::new();
    for _ in 0..12 {
        seen.push(String::from_utf8(next_message(&mut messages).await.1).unwrap());
    }
    assert_eq!(
        seen.iter()
            .filter(|m| m.contains(r#""message":"once""#))
            .count(),
        1
    );
    assert!(seen[11].contains(r#""message":"lost""#));
}

/// The scheduling contract against a real Redis: an item fires once, through the history
/// script, with its due time as timestamp; cancel and reschedule; too-late items dropped.
#[tokio::test]
async fn scheduled_items_fire_once_through_history_and_can_be_cancelled() {
    use std::time::SystemTime;
    let server = RedisServer::start().await;
    let publisher = Publisher::connect(&server.url()).unwrap();
    let mut live = subscribe(&server.url(), &["user_7"]).await;
    let past = SystemTime::now() - Duration::from_millis(10);
    let event = Event::BookingExpired {
        booking_id: 1881,
        slot: "A-12".into(),
    };
    publisher
        .schedule(user(7), event.clone(), past, "booking:1881:expired")
        .await
        .unwrap();
    publisher
        .schedule(user(7), event.clone(), past, "booking:1882:expired")
        .await
        .unwrap();
    assert!(publisher.cancel("booking:1882:expired").await.unwrap());
    assert!(!publisher.cancel("booking:1882:expired").await.unwrap());
    let far = SystemTime::now() + Duration::from_secs(3600);
    publisher
        .schedule(user(7), event.clone(), far, "booking:1883:expired")
        .await
        .unwrap();

    let report = publisher.fire_due(100, 0).await.unwrap();
    assert_eq!(report.fired.len(), 1, "{report:?}");
    assert_eq!(report.fired[0].0, "booking:1881:expired");
    assert!(report.dropped.is_empty());
    let at_ms = publisher::schedule::system_time_ms(past) as i64;
    assert_eq!(
        report.next_due_ms.map(|n| n / 1000),
        Some(at_ms / 1000 + 3600)
    );
    let (channel, payload) = next_message(&mut live).await;
    assert_eq!(channel, "user_7");
    let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(json["event"], "booking.expired");
    assert_eq!(json["timestamp"].as_i64(), Some(at_ms));
    assert!(json["id"].is_string(), "published through history: {json}");

    // Nothing more is due: a second run fires nothing.
    assert!(publisher.fire_due(100, 0).await.unwrap().fired.is_empty());

    // Too late for a 5 ms limit: dropped, not delivered.
    let late = SystemTime::now() - Duration::from_secs(1);
    publisher
        .schedule(user(7), event, late, "booking:1884:expired")
        .await
        .unwrap();
    let report = publisher.fire_due(100, 5).await.unwrap();
    assert!(report.fired.is_empty());
    assert_eq!(report.dropped.len(), 1);
    assert!(report.dropped[0].1 >= 1000, "{report:?}");

    for (key, at) in [
        ("", far),
        ("with space", far),
        (
            "ok",
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_765_000_000),
        ),
        (
            "ok",
            SystemTime::now() + Duration::from_secs(400 * 24 * 3600),
        ),
    ] {
        let err = publisher
            .schedule(user(7), Notification::new(Level::Info, "x"), at, key)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{key:?}: {err}");
    }
}

#[tokio::test]
async fn presence_sums_live_nodes_and_forgets_lapsed_ones() {
    let server = RedisServer::start().await;
    let publisher = Publisher::connect(&server.url()).unwrap();
    let ttl = Duration::from_millis(300);
    assert!(publisher
        .presence_beat("a", ttl, false, false, &[(user(1), 2), (user(2), 1)])
        .await
        .unwrap());
    assert!(publisher
        .presence_beat("b", Duration::from_secs(60), false, false, &[(user(1), 1)])
        .await
        .unwrap());
    assert!(publisher
        .presence_beat(
            "b",
            Duration::from_secs(60),
            false,
            true,
            &[(user(1), -1), (user(3), 1)]
        )
        .await
        .unwrap());
    let counts = publisher
        .presence(&[user(1), user(2), user(3), user(4)], true)
        .await
        .unwrap();
    let totals: Vec<u64> = counts.iter().map(|p| p.sockets).collect();
    assert_eq!(totals, [2, 1, 1, 0]);
    assert_eq!(counts[0].nodes, [("a".to_owned(), 2)]);
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let totals: Vec<u64> = publisher
        .presence(&[user(1), user(2), user(3)], false)
        .await
        .unwrap()
        .iter()
        .map(|p| p.sockets)
        .collect();
    assert_eq!(totals, [0, 0, 1], "node a's heartbeat lapsed");
    // Node a comes back believing it has sockets: its counts are gone, it must send them all.
    assert!(!publisher
        .presence_beat("a", ttl, false, true, &[(user(1), 1)])
        .await
        .unwrap());
    let too_many: Vec<UserId> = (1..=1001).map(user).collect();
    assert_eq!(
        publisher
            .presence(&too_many, false)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
}
