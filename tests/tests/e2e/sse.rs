//! The Server-Sent Events endpoint, for networks that break WebSockets: the same ids, order,
//! resume, missed event, authentication, slow-consumer rule and drain as the WebSocket path,
//! read by a raw HTTP client that parses the stream as `EventSource` does. (The same in real
//! Chromium: tests/sse-browser.sh.)

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{jwt, Gateway, RedisServer, SseClient, SseItem, WsClient, DEADLINE};
use publisher::{Level, Notification, Publisher};
use serde_json::Value;

use crate::{numbered, publisher, user};

fn path(user: u64) -> String {
    format!("/sse/notifications/{user}/")
}

async fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> SseClient {
    match SseClient::connect(addr, target, headers).await {
        Ok(client) => client,
        Err(refusal) => panic!("GET {target} refused: {refusal:?}"),
    }
}

/// (id, n) of the next `count` notifications of a WebSocket.
async fn ws_ids(socket: &mut WsClient, count: usize) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    for _ in 0..count {
        let frame = socket.next_json().await;
        seen.push((
            frame["id"].as_str().unwrap().to_owned(),
            frame["data"]["n"].as_u64().unwrap(),
        ));
    }
    seen
}

/// (id, n) of the next `count` notifications of an event stream, checking that each event's
/// `id:` is the notification's own id.
async fn sse_ids(stream: &mut SseClient, count: usize) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    for _ in 0..count {
        let event = stream.next_event().await.expect("stream ended early");
        assert_eq!(event.event, None, "notifications are default events");
        let json = event.json();
        let id = json["id"].as_str().unwrap().to_owned();
        assert_eq!(
            event.id.as_deref(),
            Some(id.as_str()),
            "id: is the history id"
        );
        seen.push((id, json["data"]["n"].as_u64().unwrap()));
    }
    seen
}

#[tokio::test]
async fn sse_and_websocket_on_two_replicas_get_the_same_ids_in_the_same_order() {
    let redis = RedisServer::start();
    let a = Gateway::start(Some(&redis), &[("GW__SSE__RETRY_MS", "1500")]);
    let b = Gateway::start(Some(&redis), &[]);
    let mut sse_a = open(a.addr, &path(31), &[]).await;
    assert_eq!(sse_a.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse_a.header("cache-control"), Some("no-cache"));
    assert_eq!(sse_a.header("x-accel-buffering"), Some("no"));
    let mut sse_b = open(b.addr, "/sse/notifications/31", &[]).await;
    let mut ws_a = WsClient::connect(&a.ws_url("31")).await;
    let mut ws_b = WsClient::connect(&b.ws_url("31")).await;
    a.wait_metric("gateway_connections_open{transport=\"sse\"}", |n| n == 1);
    a.wait_metric("gateway_connections_open{transport=\"websocket\"}", |n| {
        n == 1
    });
    assert_eq!(a.metric("gateway_sockets_open"), 2, "both transports count");

    let publisher = publisher(&redis);
    let count = 50;
    for n in 0..count {
        assert_eq!(
            publisher.publish(user(31), numbered(n)).await.unwrap(),
            2,
            "one subscriber per replica"
        );
    }
    let reference = ws_ids(&mut ws_a, count as usize).await;
    let numbers: Vec<u64> = reference.iter().map(|(_, n)| *n).collect();
    assert_eq!(numbers, (0..count).collect::<Vec<_>>());
    assert_eq!(ws_ids(&mut ws_b, count as usize).await, reference);
    assert_eq!(sse_ids(&mut sse_a, count as usize).await, reference);
    assert_eq!(sse_ids(&mut sse_b, count as usize).await, reference);
    assert_eq!(sse_a.retry_ms, Some(1500), "the retry: hint came first");
    assert_eq!(sse_b.retry_ms, Some(1000), "sse.retry_ms's default");
    assert_eq!(
        sse_a.last_event_id.as_deref(),
        Some(reference.last().unwrap().0.as_str())
    );

    // Another user's notification reaches neither.
    publisher.publish(user(32), numbered(99)).await.unwrap();
    publisher.publish(user(31), numbered(100)).await.unwrap();
    assert_eq!(sse_a.next_json().await["data"]["n"], 100);

    // A client that leaves is noticed without waiting for a heartbeat.
    drop(sse_a);
    a.wait_metric("gateway_connections_open{transport=\"sse\"}", |n| n == 0);
    a.wait_metric(
        "gateway_connections_closed_total{transport=\"sse\",reason=\"gone\"}",
        |n| n == 1,
    );
}

fn note(n: u64) -> Notification {
    Notification::new(Level::Info, format!("note {n}")).with_data("n", n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_loses_nothing_for_a_stream_that_resumes_elsewhere_with_last_event_id() {
    let redis = RedisServer::start();
    let mut doomed = Gateway::start(Some(&redis), &[]);
    let survivor = Gateway::start(Some(&redis), &[]);
    let total = 300u64;
    let published = Arc::new(AtomicU64::new(0));
    let mut stream = open(doomed.addr, &path(41), &[]).await;

    let progress = published.clone();
    let url = redis.url();
    let publishing = tokio::spawn(async move {
        let publisher = Publisher::connect(&url).unwrap();
        for n in 0..total {
            publisher.publish(user(41), note(n)).await.unwrap();
            progress.store(n + 1, Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let mut received = Vec::new();
    let mut reconnects = 0;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "gave up at {received:?}"
        );
        match stream.next_event().await {
            Some(event) => {
                let n = event.json()["data"]["n"].as_u64().expect("a numbered note");
                received.push(n);
                if n == total / 3 && reconnects == 0 {
                    // Mid-stream, while the publisher keeps going.
                    doomed.kill();
                }
                if n + 1 == total {
                    break;
                }
            }
            None => {
                // What EventSource does by itself: reconnect (the proxy picks a live replica)
                // sending the id of the last event it saw.
                reconnects += 1;
                let last = stream.last_event_id.clone().expect("events carried ids");
                stream = open(survivor.addr, &path(41), &[("Last-Event-ID", &last)]).await;
            }
        }
    }
    publishing.await.unwrap();
    assert_eq!(reconnects, 1, "one reconnect, after the kill");
    let distinct: BTreeSet<u64> = received.iter().copied().collect();
    assert_eq!(distinct.len(), total as usize, "nothing lost");
    assert_eq!(received.len(), total as usize, "nothing twice");
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(published.load(Relaxed) == total);
}

#[tokio::test]
async fn resuming_from_an_id_trimmed_out_of_history_gets_the_missed_event_first() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[("GW__HISTORY__REPLAY_LIMIT", "50")]);
    let options = publisher::PublisherOptions {
        history_max_len: 10,
        ..Default::default()
    };
    let publisher = Publisher::with_options(&redis.url(), options).unwrap();
    let first = publisher
        .publish_with_receipt(user(51), note(0))
        .await
        .unwrap()
        .id;
    let mut last = first;
    for n in 1..300 {
        last = publisher
            .publish_with_receipt(user(51), note(n))
            .await
            .unwrap()
            .id;
    }
    // Both resume forms: the header the browser sends, and `last_id` for a fresh page.
    let from = first.to_string();
    let by_header = open(gateway.addr, &path(51), &[("Last-Event-ID", &from)]).await;
    let by_query = open(gateway.addr, &format!("{}?last_id={from}", path(51)), &[]).await;
    for mut stream in [by_header, by_query] {
        let missed = stream.next_event().await.unwrap();
        assert_eq!(missed.event, None, "onmessage users see it too: {missed:?}");
        let body = missed.json();
        assert_eq!(body["event"], "gateway.missed", "{body}");
        assert_eq!(body["type"], "warning");
        assert_eq!(body["data"]["since"], first.to_string());
        assert_eq!(
            missed.id.as_ref(),
            body["id"].as_str().map(str::to_owned).as_ref()
        );
        // Then the newest retained ones, in order, up to the last.
        let mut previous = None;
        loop {
            let event = stream.next_event().await.unwrap();
            let n = event.json()["data"]["n"].as_u64().unwrap();
            assert!(previous < Some(n), "in order");
            previous = Some(n);
            if event.id == Some(last.to_string()) {
                break;
            }
        }
    }
    // A resume from the newest id gets nothing old, then live notifications.
    let mut current = open(
        gateway.addr,
        &path(51),
        &[("Last-Event-ID", &last.to_string())],
    )
    .await;
    publisher.publish(user(51), note(300)).await.unwrap();
    assert_eq!(current.next_json().await["data"]["n"], 300);
    // A malformed id is refused, not ignored (that would lose notifications silently).
    let refusal = SseClient::connect(gateway.addr, &path(51), &[("Last-Event-ID", "yesterday")])
        .await
        .err()
        .expect("refused");
    assert_eq!(refusal.status, 400);
    assert_eq!(refusal.body["error"], "invalid_last_id");
}

#[tokio::test]
async fn only_the_users_own_token_from_an_allowed_origin_opens_its_stream() {
    let mut settings = jwt::HS256_SETTINGS.to_vec();
    settings.push(("GW__ORIGIN__ALLOWED", "https://app.example.com"));
    let gateway = Gateway::start(None, &settings);
    let refused = |target: String, headers: Vec<(&'static str, String)>| {
        let addr = gateway.addr;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            match SseClient::connect(addr, &target, &headers).await {
                Ok(_) => panic!("{target} with {headers:?} was accepted"),
                Err(refusal) => refusal,
            }
        }
    };
    let alice = jwt::access(61);
    let refusal = refused(path(62), vec![]).await;
    assert_eq!(refusal.status, 401);
    assert_eq!(refusal.body["error"], "token_missing");
    let refusal = refused(format!("{}?token={alice}", path(62)), vec![]).await;
    assert_eq!(refusal.status, 403);
    assert_eq!(refusal.body["error"], "token_for_another_user");
    let refusal = refused(path(62), vec![("Authorization", format!("Bearer {alice}"))]).await;
    assert_eq!(refusal.body["error"], "token_for_another_user");
    let expired = jwt::hs256(&jwt::access_claims(61, -60));
    let refusal = refused(format!("{}?token={expired}", path(61)), vec![]).await;
    assert_eq!(refusal.status, 401);
    assert_eq!(refusal.body["error"], "token_expired");
    let refusal = refused(
        format!("{}?token={alice}", path(61)),
        vec![("Origin", "https://evil.example.net".into())],
    )
    .await;
    assert_eq!(refusal.status, 403);
    assert_eq!(refusal.body["error"], "origin_forbidden");

    // An allowed page may read it with credentials (CORS); a same-origin EventSource sends
    // no Origin at all; a service sends the Authorization header.
    let page = open(
        gateway.addr,
        &format!("{}?token={alice}", path(61)),
        &[("Origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(
        page.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        page.header("access-control-allow-credentials"),
        Some("true")
    );
    let same_origin = open(gateway.addr, &format!("{}?token={alice}", path(61)), &[]).await;
    assert_eq!(same_origin.header("access-control-allow-origin"), None);
    let bearer = format!("Bearer {alice}");
    let mut service = open(gateway.addr, &path(61), &[("Authorization", &bearer)]).await;
    let (status, _) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user":61,"type":"info","message":"for alice"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(service.next_json().await["message"], "for alice");
    assert_eq!(
        gateway.metric("gateway_connections_refused_total{transport=\"sse\"}"),
        5
    );
    drop((page, same_origin));

    // The preflight of a cross-origin client that sends Authorization.
    let preflight = |origin: &str| {
        e2e::http_request(
            gateway.addr,
            &format!(
                "OPTIONS {} HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n",
                path(61)
            ),
        )
        .unwrap()
        .0
    };
    assert_eq!(preflight("https://app.example.com"), 204);
    assert_eq!(preflight("https://evil.example.net"), 403);
}

#[tokio::test]
async fn an_expiring_token_ends_the_stream_at_exp_with_a_final_close_event() {
    let mut settings = jwt::HS256_SETTINGS.to_vec();
    settings.push(("GW__AUTH__EXPIRY_GRACE_MS", "300"));
    let gateway = Gateway::start(None, &settings);
    let short_lived = jwt::hs256(&jwt::access_claims(71, 2));
    let opened = Instant::now();
    let mut expiring = open(
        gateway.addr,
        &format!("{}?token={short_lived}", path(71)),
        &[],
    )
    .await;
    let lasting = format!("{}?token={}", path(71), jwt::access(71));
    let mut lasting = open(gateway.addr, &lasting, &[]).await;

    let close = expiring
        .closed()
        .await
        .expect("a gateway.close event before the end");
    let lived = opened.elapsed();
    assert_eq!(close["code"], 4001, "{close}");
    assert!(
        close["reason"].as_str().unwrap().contains("token"),
        "{close}"
    );
    // `exp` has whole seconds: 2 s from a truncated now is 1 to 2 s away, plus the grace.
    assert!(
        lived >= Duration::from_millis(1000) && lived < Duration::from_secs(5),
        "ended after {lived:?}"
    );
    // The same user's stream with a fresh token is untouched.
    let (status, _) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user":71,"type":"info","message":"still here"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(lasting.next_json().await["message"], "still here");
    gateway.wait_metric(
        "gateway_connections_closed_total{transport=\"sse\",reason=\"token_expired\"}",
        |n| n == 1,
    );
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_while_others_keep_receiving() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(
        Some(&redis),
        &[
            ("GW__WS__OUTBOUND_QUEUE", "16"),
            ("GW__WS__WRITE_TIMEOUT_MS", "1000"),
        ],
    );
    // Sends its request, then never reads a byte.
    let mut stalled = TcpStream::connect(gateway.addr).unwrap();
    write!(
        stalled,
        "GET {} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        path(81)
    )
    .unwrap();
    gateway.wait_metric("gateway_connections_open{transport=\"sse\"}", |n| n == 1);
    let mut reader = open(gateway.addr, &path(81), &[]).await;
    let publisher = publisher(&redis);
    // 400 × ~40 KiB ≈ 16 MiB: far more than socket buffers and the queues hold.
    let filler = "x".repeat(40 * 1024);
    let count = 400u64;
    // The reading client acknowledges what it got, and the publisher never runs more than a
    // few notifications ahead of it: only the client that stopped reading can fall behind.
    let received = Arc::new(AtomicU64::new(0));
    let acknowledged = received.clone();
    let reading = tokio::spawn(async move {
        for n in 0..count {
            let note = reader.next_json().await;
            assert_eq!(note["data"]["n"], n, "the reading client misses nothing");
            acknowledged.store(n + 1, Relaxed);
        }
        reader
    });
    for n in 0..count {
        while n >= received.load(Relaxed) + 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let note = numbered(n).with_data("filler", filler.as_str());
        publisher.publish(user(81), note).await.unwrap();
    }
    let _reader = reading.await.unwrap();
    gateway.wait_metric(
        "gateway_connections_closed_total{transport=\"sse\",reason=\"slow_consumer\"}",
        |n| n == 1,
    );
    gateway.wait_metric("gateway_connections_open{transport=\"sse\"}", |n| n == 1);
    assert!(gateway.metric("gateway_messages_dropped_total{cause=\"slow_client\"}") >= 1);
    drop(stalled);
}

#[tokio::test]
async fn heartbeat_comments_arrive_at_the_configured_interval() {
    let gateway = Gateway::start(None, &[("GW__SSE__HEARTBEAT_INTERVAL_MS", "300")]);
    let mut stream = open(gateway.addr, &path(91), &[]).await;
    let opened = Instant::now();
    let mut pings = Vec::new();
    while pings.len() < 5 {
        match stream.next_item().await {
            Some(SseItem::Comment(text)) => {
                assert_eq!(text, "ping");
                pings.push(opened.elapsed());
            }
            other => panic!("expected a heartbeat, got {other:?}"),
        }
    }
    // Not faster than configured (each beat is scheduled from the previous one)...
    for pair in pings.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(250), "{pings:?}");
    }
    // ...and not slower than a loaded machine explains: 5 beats of 300 ms.
    assert!(pings[0] >= Duration::from_millis(250), "{pings:?}");
    assert!(pings[4] < Duration::from_millis(1500 + 1500), "{pings:?}");
    // A notification between beats is not delayed by them.
    let (status, _) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user":91,"type":"info","message":"between beats"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(stream.next_json().await["message"], "between beats");
}

#[tokio::test]
async fn draining_ends_every_stream_with_1012_so_browsers_reconnect_elsewhere() {
    let mut gateway = Gateway::start(None, &[]);
    let mut stream = open(gateway.addr, &path(95), &[]).await;
    gateway.wait_metric("gateway_connections_open{transport=\"sse\"}", |n| n == 1);
    let pid = gateway.pid();
    let terminating = tokio::task::spawn_blocking(move || {
        let (status, took) = gateway.terminate();
        (status, took, gateway)
    });
    let close: Value = stream.closed().await.expect("a gateway.close event");
    assert_eq!(close["code"], 1012, "{close}");
    let (status, took, _gateway) = terminating.await.unwrap();
    assert!(status.success(), "pid {pid} exited with {status:?}");
    assert!(took < DEADLINE);
}

/// A load balancer in miniature: each connection goes to the first backend that accepts it,
/// as nginx skips a dead replica. Records each request's `Last-Event-ID` header.
struct Balancer {
    addr: SocketAddr,
    last_event_ids: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

impl Balancer {
    async fn start(backends: Vec<SocketAddr>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let last_event_ids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = last_event_ids.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let backends = backends.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if text.contains("/sse/") {
                        let id = text
                            .lines()
                            .find_map(|l| l.strip_prefix("last-event-id:"))
                            .map(|v| v.trim().to_owned());
                        seen.lock().unwrap().push(id);
                    }
                    for backend in backends {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(backend).await {
                            if server.write_all(&head).await.is_ok() {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                            return;
                        }
                    }
                });
            }
        });
        Balancer {
            addr,
            last_event_ids,
        }
    }
}

/// The node script of tests/sse-browser driving chromium; killed on drop.
struct Browser {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Browser {
    /// Runs `script` in the page instead of the plain `EventSource`.
    fn run_script(origin: &str, script: &str) -> (Self, e2e::TempDir) {
        let dir = e2e::TempDir::new("sse-page");
        let file = dir.0.join("page.js");
        std::fs::write(&file, script).unwrap();
        let browser = Self::spawn(&[origin, "--script", file.to_str().unwrap()]);
        (browser, dir)
    }

    fn open(origin: &str, path: &str) -> Self {
        Self::spawn(&[origin, path])
    }

    fn spawn(args: &[&str]) -> Self {
        use std::io::BufRead;
        let node = e2e::require_program("node", "nodejs");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        assert!(
            std::path::Path::new("/usr/bin/chromium").is_file(),
            "chromium not found: install it with `apt-get install -y chromium` (or run ./tests/sse-browser.sh)"
        );
        assert!(
            root.join("tests/sse-browser/node_modules/playwright-core")
                .is_dir(),
            "playwright-core not installed: run ./tests/sse-browser.sh"
        );
        let mut child = std::process::Command::new(node)
            .current_dir(&root)
            .arg("tests/sse-browser/eventsource.mjs")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("running node");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("browser script printed {line:?}: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Browser { child, lines }
    }

    /// The next callback the page reported.
    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(30), self.lines.recv())
            .await
            .expect("the browser reported nothing within 30 s")
            .expect("the browser script exited")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_eventsource_reconnects_by_itself_with_last_event_id_after_a_replica_sigkill() {
    let redis = RedisServer::start();
    let settings = [("GW__SSE__RETRY_MS", "300")];
    let mut doomed = Gateway::start(Some(&redis), &settings);
    let survivor = Gateway::start(Some(&redis), &settings);
    let balancer = Balancer::start(vec![doomed.addr, survivor.addr]).await;
    let mut browser = Browser::open(&format!("http://{}", balancer.addr), &path(97));
    assert_eq!(browser.next().await, serde_json::json!({ "open": true }));
    doomed.wait_metric("gateway_connections_open{transport=\"sse\"}", |n| n == 1);

    let total = 200u64;
    let url = redis.url();
    let publishing = tokio::spawn(async move {
        let publisher = Publisher::connect(&url).unwrap();
        for n in 0..total {
            publisher.publish(user(97), note(n)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut received = Vec::new();
    let mut opens = 1;
    let mut last_before_reopen = None;
    let mut last_id = None;
    loop {
        let line = browser.next().await;
        if let Some(message) = line.get("message") {
            let body: Value = serde_json::from_str(message["data"].as_str().unwrap()).unwrap();
            assert_eq!(message["lastEventId"], body["id"], "id: is the history id");
            last_id = body["id"].as_str().map(str::to_owned);
            let n = body["data"]["n"].as_u64().expect("a numbered note");
            received.push(n);
            if n == total / 3 && opens == 1 {
                doomed.kill();
            }
            if n + 1 == total {
                break;
            }
        } else if line.get("open").is_some() {
            opens += 1;
            last_before_reopen = last_id.clone();
        } else {
            // {"error": 0}: CONNECTING, the browser is reconnecting by itself.
            assert_eq!(line, serde_json::json!({ "error": 0 }), "unexpected {line}");
        }
    }
    publishing.await.unwrap();
    assert_eq!(opens, 2, "one reconnect, after the kill");
    let distinct: BTreeSet<u64> = received.iter().copied().collect();
    assert_eq!(distinct.len(), total as usize, "nothing lost");
    assert_eq!(received.len(), total as usize, "nothing twice");
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order");
    let requests = balancer.last_event_ids.lock().unwrap().clone();
    assert_eq!(
        requests,
        vec![None, last_before_reopen],
        "the reconnect carried the id of the last event seen"
    );
}

/// The paste-able client of docs/PROTOCOL.md, as written there.
fn documented_client() -> String {
    let doc = include_str!("../../../docs/PROTOCOL.md");
    let section = doc
        .split("Paste-able client:")
        .nth(1)
        .expect("docs/PROTOCOL.md has the paste-able EventSource client");
    let start = section.find("```js\n").expect("a js block") + "```js\n".len();
    let end = start
        + section[start..]
            .find("```")
            .expect("the end of the js block");
    section[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_client_in_chromium_outlives_its_token_and_loses_nothing() {
    let mut settings = jwt::HS256_SETTINGS.to_vec();
    settings.push(("GW__AUTH__EXPIRY_GRACE_MS", "300"));
    let gateway = Gateway::start(None, &settings);
    let balancer = Balancer::start(vec![gateway.addr]).await;
    let origin = format!("http://{}", balancer.addr);
    let snippet = documented_client();
    assert_eq!(snippet.matches("https://notify.example.com").count(), 1);
    // The first token expires within 10 s (time for Chromium to start); getToken() then
    // hands out a fresh one.
    let tokens = serde_json::json!([
        jwt::hs256(&jwt::access_claims(98, 10)),
        jwt::access(98),
        jwt::access(98),
    ]);
    let script = format!(
        "window.refetchEverything = () => report({{ refetch: true }});\n\
         const tokens = {tokens};\n\
         const getToken = async () => tokens.shift();\n\
         {}\n\
         listen(98, getToken, (n) => report({{ message: n }}));\n",
        snippet.replace("https://notify.example.com", &origin)
    );
    let (mut browser, _dir) = Browser::run_script(&origin, &script);
    gateway.wait_metric("gateway_connections_open{transport=\"sse\"}", |n| n == 1);

    // Publishes steadily until the stream has ended at its token's expiry and 40 more
    // notifications went out, then a last one that says so.
    let addr = gateway.internal;
    let expired = "gateway_connections_closed_total{transport=\"sse\",reason=\"token_expired\"}";
    let publishing = tokio::task::spawn_blocking({
        let gateway_metric = move || {
            let (_, body) = e2e::http_get(addr, "/metrics").unwrap();
            body.lines().any(|l| l.strip_prefix(expired) == Some(" 1"))
        };
        move || {
            let publish = |n: u64, last: bool| {
                let body = format!(
                    r#"{{"user":98,"type":"info","message":"note {n}","data":{{"n":{n},"last":{last}}}}}"#
                );
                let (status, _) = e2e::http_post_json(addr, "/api/publish", &[], &body).unwrap();
                assert_eq!(status, 200);
            };
            let started = Instant::now();
            let mut after_expiry = None;
            let mut n = 0;
            while after_expiry.is_none_or(|at| n < at + 40) {
                assert!(
                    started.elapsed() < Duration::from_secs(40),
                    "the token never expired"
                );
                publish(n, false);
                if after_expiry.is_none() && gateway_metric() {
                    after_expiry = Some(n);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            publish(n, true);
            n + 1
        }
    });
    let mut received = Vec::new();
    loop {
        let line = browser.next().await;
        let n = line["message"]["data"]["n"]
            .as_u64()
            .unwrap_or_else(|| panic!("expected a notification, got {line}"));
        received.push(n);
        if line["message"]["data"]["last"] == true {
            break;
        }
    }
    let total = publishing.await.unwrap();
    let distinct: BTreeSet<u64> = received.iter().copied().collect();
    assert_eq!(distinct.len(), total as usize, "nothing lost");
    assert_eq!(received.len(), total as usize, "nothing twice");
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order");
    let requests = balancer.last_event_ids.lock().unwrap().clone();
    assert_eq!(
        requests.len(),
        2,
        "reopened once, by the snippet: {requests:?}"
    );
}
