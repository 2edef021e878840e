//! The production topology on loopback: the shipped `deploy/nginx/nginx.conf` run by the real
//! nginx with a certificate made at test time, in front of three gateway replicas and one
//! redis-server. Browsers connect with `wss://`; when a replica is drained with SIGTERM its
//! clients reconnect through nginx to the others with their last id, get what was published
//! meanwhile from history, and keep receiving.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::proxy::{free_loopback_addr, Nginx, TestCa, TlsHandshake};
use e2e::{Closed, Gateway, RedisServer, WsClient, DEADLINE};
use serde_json::Value;

use crate::{numbered, publisher, user};

const SHIPPED: &str = include_str!("../../../deploy/nginx/nginx.conf");
const PUBLISH_KEY: &str = "a3f8c1e6b9d2047f5e8a1c3b6d9f2e40";

/// Replaces `from` by `to` in `text`, asserting it occurs exactly `times` times, so a change
/// to the shipped file that this test does not know about fails here instead of being
/// silently left out.
fn substitute(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        times,
        "deploy/nginx/nginx.conf: expected {from:?} {times} time(s)"
    );
    text.replace(from, to)
}

/// The shipped configuration with only addresses and paths changed: the three replicas'
/// addresses, loopback listen addresses for the HTTPS and HTTP servers, the certificate
/// directory, and (so that nginx also runs without root) temp paths inside `prefix`.
pub fn render_nginx_conf(
    replicas: &[SocketAddr; 3],
    https: SocketAddr,
    http: SocketAddr,
    certs: &Path,
    prefix: &Path,
) -> String {
    let mut conf = SHIPPED.to_owned();
    for (i, addr) in replicas.iter().enumerate() {
        let name = format!("server gateway-{}:8080 ", i + 1);
        conf = substitute(&conf, &name, &format!("server {addr} "), 1);
    }
    assert!(
        !conf.contains("server gateway-"),
        "a replica the test does not know"
    );
    conf = substitute(&conf, "listen 443 ssl;", &format!("listen {https} ssl;"), 1);
    conf = substitute(
        &conf,
        "access_log /dev/stdout no_query;",
        &format!("access_log {}/logs/access.log no_query;", prefix.display()),
        1,
    );
    conf = substitute(&conf, "listen 80;", &format!("listen {http};"), 1);
    conf = substitute(
        &conf,
        "/etc/nginx/certs/",
        &format!("{}/", certs.display()),
        2,
    );
    let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|kind| format!("    {kind}_temp_path {}/temp_{kind};\n", prefix.display()))
        .collect();
    substitute(&conf, "http {\n", &format!("http {{\n{temp}"), 1)
}

struct Topology {
    redis: RedisServer,
    replicas: Vec<Gateway>,
    nginx: Nginx,
    ca: TestCa,
    tls: Arc<rustls::ClientConfig>,
    https: SocketAddr,
    http: SocketAddr,
}

impl Topology {
    fn start() -> Self {
        let redis = RedisServer::start();
        let replicas: Vec<Gateway> = (0..3)
            .map(|_| {
                Gateway::start(
                    Some(&redis),
                    &[
                        ("GW__SERVER__DRAIN_TIMEOUT_MS", "5000"),
                        ("GW__PUBLISH__API_KEYS", PUBLISH_KEY),
                    ],
                )
            })
            .collect();
        let ca = TestCa::generate();
        let (https, http) = (free_loopback_addr(), free_loopback_addr());
        let prefix = Nginx::prefix();
        let conf = render_nginx_conf(
            &[replicas[0].addr, replicas[1].addr, replicas[2].addr],
            https,
            http,
            ca.dir(),
            &prefix.0,
        );
        let conf_path = prefix.0.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let nginx = Nginx::start(prefix, &conf_path, https);
        let tls = ca.client_config();
        Topology {
            redis,
            replicas,
            nginx,
            ca,
            tls,
            https,
            http,
        }
    }

    fn wss_url(&self, user: u64, last_id: Option<&str>) -> String {
        let resume = last_id.map_or(String::new(), |id| format!("?last_id={id}"));
        format!(
            "wss://127.0.0.1:{}/ws/notifications/{user}/{resume}",
            self.https.port()
        )
    }

    async fn connect(&self, user: u64) -> WsClient {
        WsClient::try_connect_tls(&self.wss_url(user, None), self.tls.clone())
            .await
            .unwrap_or_else(|e| panic!("wss connect through nginx: {e}\n{}", self.nginx.log()))
    }

    /// Connects as a browser reconnects: with its last id, retrying with a short backoff
    /// until it succeeds.
    async fn reconnect(&self, user: u64, last_id: Option<&str>) -> WsClient {
        let deadline = Instant::now() + DEADLINE;
        let mut backoff = Duration::from_millis(50);
        loop {
            match WsClient::try_connect_tls(&self.wss_url(user, last_id), self.tls.clone()).await {
                Ok(client) => return client,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "no reconnect through nginx: {e}\n{}",
                    self.nginx.log()
                ),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    fn sockets_on(&self, replica: usize) -> u64 {
        self.replicas[replica].metric("gateway_sockets_open")
    }

    /// curl over TLS trusting only the test CA; returns (status, body).
    fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        let curl = e2e::require_program("curl", "curl");
        let url = format!("https://127.0.0.1:{}{path}", self.https.port());
        let out = Command::new(curl)
            .args(["--silent", "--show-error", "--max-time", "10"])
            .arg("--cacert")
            .arg(self.ca.ca_pem())
            .args(["--write-out", "\n%{http_code}"])
            .args(args)
            .arg(&url)
            .output()
            .expect("running curl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {url}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, status) = stdout.rsplit_once('\n').unwrap();
        (status.trim().parse().unwrap(), body.to_owned())
    }
}

#[tokio::test]
async fn wss_clients_through_nginx_keep_receiving_when_a_replica_drains() {
    let mut topology = Topology::start();
    let users: Vec<u64> = (101..=109).collect();
    let mut clients = Vec::new();
    for &id in &users {
        clients.push((id, topology.connect(id).await));
    }
    // No stickiness and least_conn: the nine sockets are spread over all three replicas.
    let spread: Vec<u64> = (0..3).map(|r| topology.sockets_on(r)).collect();
    assert_eq!(spread.iter().sum::<u64>(), 9, "{spread:?}");
    assert!(spread.iter().all(|&n| n >= 1), "{spread:?}");

    // Each client remembers the id of the last notification it saw, as browsers do.
    let mut last_ids: HashMap<u64, String> = HashMap::new();
    let seen = |last_ids: &mut HashMap<u64, String>, id: u64, frame: &Value, n: u64| {
        assert_eq!(frame["data"]["n"], n, "user {id}: {frame}");
        let frame_id = frame["id"].as_str().expect("published with history: an id");
        last_ids.insert(id, frame_id.to_owned());
    };
    let publisher = publisher(&topology.redis);
    for &id in &users {
        publisher.publish(user(id), numbered(id)).await.unwrap();
    }
    for (id, client) in &mut clients {
        seen(&mut last_ids, *id, &client.next_json().await, *id);
    }

    // Drain replica 0 as a deploy does.
    let mut drained: Gateway = topology.replicas.remove(0);
    let (status, took) = tokio::task::spawn_blocking(move || drained.terminate())
        .await
        .unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    assert!(
        took < Duration::from_secs(5),
        "within the drain deadline: {took:?}"
    );

    // Published while the drained replica's clients have no socket: they get it on
    // reconnecting with their last id (resume from history), the others live.
    for &id in &users {
        publisher
            .publish(user(id), numbered(1000 + id))
            .await
            .unwrap();
    }
    let mut moved = 0;
    for (id, client) in &mut clients {
        match client.next_json_or_close().await {
            Ok(frame) => seen(&mut last_ids, *id, &frame, 1000 + *id),
            Err(closed) => {
                assert_eq!(closed, Closed::Code(1012), "user {id}");
                *client = topology
                    .reconnect(*id, last_ids.get(id).map(String::as_str))
                    .await;
                moved += 1;
                seen(&mut last_ids, *id, &client.next_json().await, 1000 + *id);
            }
        }
    }
    assert_eq!(
        moved, spread[0],
        "exactly the drained replica's clients moved"
    );
    let after: u64 = (0..2).map(|r| topology.sockets_on(r)).sum();
    assert_eq!(after, 9, "all nine sockets are on the two replicas left");

    for &id in &users {
        publisher
            .publish(user(id), numbered(2000 + id))
            .await
            .unwrap();
    }
    for (id, client) in &mut clients {
        seen(&mut last_ids, *id, &client.next_json().await, 2000 + *id);
    }
}

#[tokio::test]
async fn nginx_hides_the_internal_api_while_publishing_on_the_internal_port_reaches_its_sockets() {
    let topology = Topology::start();
    let mut client = topology.connect(42).await;

    // The server API is not reachable through nginx, not even with a valid key.
    let body = r#"{"user": 42, "type": "success", "message": "via nginx"}"#;
    let auth = format!("Authorization: Bearer {PUBLISH_KEY}");
    let publish = [
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-H",
        auth.as_str(),
        "--data",
        body,
    ];
    let (status, answer) = topology.curl(&publish, "/api/publish");
    assert_eq!(status, 404, "POST /api/publish through nginx: {answer}");
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(topology.curl(&[], path).0, 404, "{path}");
    }

    // A backend publishes on a replica's internal port; the socket behind nginx (on
    // whichever replica) receives it, and nothing of the refused attempt arrived before.
    let body = r#"{"user": 42, "type": "success", "message": "via the internal port"}"#;
    let auth = format!("Bearer {PUBLISH_KEY}");
    let (status, answer) = e2e::http_post_json(
        topology.replicas[2].internal,
        "/api/publish",
        &[("Authorization", &auth)],
        body,
    )
    .unwrap();
    assert_eq!((status, answer.as_str()), (200, r#"{"receivers":1}"#));
    assert_eq!(client.next_json().await["message"], "via the internal port");

    // The inbox is served through the proxy, newest first.
    let (status, inbox) = topology.curl(&[], "/api/notifications/42?limit=1");
    assert_eq!(status, 200, "{inbox}");
    assert!(inbox.contains("via the internal port"), "{inbox}");
    assert_eq!(topology.curl(&[], "/nginx-health"), (200, "ok\n".into()));

    // Plain HTTP is redirected to HTTPS.
    let (status, _) = e2e::http_get(topology.http, "/ws/notifications/42/").unwrap();
    assert_eq!(status, 301);
}

/// nginx's per-address limits: a burst of WebSocket upgrades (and of inbox reads) from one
/// address is refused with 429 past the burst, while another address still connects.
#[tokio::test]
async fn a_burst_from_one_address_is_limited_while_another_address_connects() {
    let topology = Topology::start();
    let burst_from = |source: [u8; 4], count: u64| {
        let handshakes = (0..count).map(|n| {
            let url = topology.wss_url(500 + n, None);
            let (https, tls) = (topology.https, topology.tls.clone());
            async move { WsClient::connect_tls_from(&url, https, source.into(), tls).await }
        });
        futures_util::future::join_all(handshakes)
    };
    // 60 upgrades at once: the burst (20) plus what 10 per second adds meanwhile pass,
    // the rest get 429.
    let results = burst_from([127, 0, 0, 1], 60).await;
    let connected = results
        .iter()
        .filter(|r| matches!(r, TlsHandshake::Connected(_)))
        .count();
    let limited = results
        .iter()
        .filter(|r| matches!(r, TlsHandshake::Refused(429)))
        .count();
    assert_eq!(connected + limited, 60, "{results:?}");
    // How many pass depends on how fast this machine handshakes; some must be refused.
    assert!(limited >= 1, "none of 60 refused with 429: {results:?}");
    assert!(connected >= 20, "the burst allowance connects: {results:?}");

    eprintln!("60 upgrades at once from 127.0.0.1: {connected} connected, {limited} got 429");

    // Meanwhile a client on another address is not affected.
    let other = burst_from([127, 0, 0, 2], 1).await;
    assert!(
        matches!(other[0], TlsHandshake::Connected(_)),
        "127.0.0.2: {other:?}\n{}",
        topology.nginx.log()
    );

    // The inbox: 30 reads in a row on one connection, 10 in the burst.
    let url = format!(
        "https://127.0.0.1:{}/api/notifications/7",
        topology.https.port()
    );
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 30).collect();
    let curl = e2e::require_program("curl", "curl");
    let out = Command::new(curl)
        .args(["--silent", "--max-time", "20"])
        .arg("--cacert")
        .arg(topology.ca.ca_pem())
        .args(["--write-out", "\nstatus %{http_code}\n"])
        .args(&urls)
        .output()
        .expect("running curl");
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let statuses: Vec<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("status "))
        .collect();
    let ok = statuses.iter().filter(|s| **s == "200").count();
    let limited = statuses.iter().filter(|s| **s == "429").count();
    eprintln!("30 inbox reads in a row from 127.0.0.1: {ok} answered, {limited} got 429");
    assert_eq!(ok + limited, 30, "{statuses:?}");
    assert!(
        ok >= 10 && limited >= 1,
        "{ok} ok, {limited} refused: {statuses:?}"
    );
}

#[tokio::test]
async fn nginx_logs_requests_without_their_query_string() {
    let topology = Topology::start();
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjo0M30.c2lnbmF0dXJlLW5vdC1pbi10aGUtbG9n";
    let url = format!("{}?token={token}", topology.wss_url(43, None));
    let client = WsClient::try_connect_tls(&url, topology.tls.clone())
        .await
        .unwrap_or_else(|e| panic!("wss connect through nginx: {e}\n{}", topology.nginx.log()));
    client.close().await;
    let deadline = Instant::now() + DEADLINE;
    let log = loop {
        let log = topology.nginx.access_log();
        if log.contains("/ws/notifications/43/") {
            break log;
        }
        assert!(Instant::now() < deadline, "no access log line:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!log.contains(token) && !log.contains("token="), "{log}");
}

/// `curl -N` on an event stream through nginx, its lines read as they arrive.
struct CurlStream {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl CurlStream {
    fn open(topology: &Topology, user: u64, last_event_id: Option<&str>) -> Self {
        use std::io::BufRead;
        let curl = e2e::require_program("curl", "curl");
        let url = format!(
            "https://127.0.0.1:{}/sse/notifications/{user}/",
            topology.https.port()
        );
        let mut command = Command::new(curl);
        command
            .args(["--silent", "--no-buffer", "--cacert"])
            .arg(topology.ca.ca_pem())
            .args(["-H", "Accept: text/event-stream"]);
        if let Some(id) = last_event_id {
            command.args(["-H", &format!("Last-Event-ID: {id}")]);
        }
        let mut child = command
            .arg(&url)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("running curl");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        CurlStream { child, lines }
    }

    /// The next line, `None` when the stream ended.
    fn line(&self) -> Option<String> {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(line) => Some(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            Err(timeout) => panic!("no line through nginx within the deadline: {timeout}"),
        }
    }

    /// The data of the next event with a `data:` line, and the `event:` name if it had one.
    fn event(&self) -> Option<(Option<String>, Value)> {
        let mut name = None;
        loop {
            let line = self.line()?;
            if let Some(event) = line.strip_prefix("event: ") {
                name = Some(event.to_owned());
            } else if let Some(data) = line.strip_prefix("data: ") {
                return Some((name, serde_json::from_str(data).unwrap()));
            }
        }
    }
}

impl Drop for CurlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `location /sse/ { ... }`'s `proxy_read_timeout` in seconds.
fn sse_read_timeout_secs(conf: &str) -> u64 {
    let block = conf
        .split("location /sse/ {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("deploy/nginx/nginx.conf has a location /sse/");
    assert!(block.contains("proxy_buffering off;"), "{block}");
    block
        .lines()
        .find_map(|l| l.trim().strip_prefix("proxy_read_timeout "))
        .and_then(|v| v.trim_end_matches(';').strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .expect("location /sse/ sets proxy_read_timeout in seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_pass_nginx_unbuffered_and_resume_on_another_replica_after_a_drain() {
    let defaults = gateway::config::Settings::defaults();
    assert!(
        sse_read_timeout_secs(SHIPPED) * 1000 > defaults.sse.heartbeat_interval_ms * 2,
        "nginx must wait well past a heartbeat before cutting a stream"
    );
    let mut topology = Topology::start();
    let stream = CurlStream::open(&topology, 44, None);
    let sse_on = |topology: &Topology, i: usize| {
        topology.replicas[i].metric("gateway_connections_open{transport=\"sse\"}")
    };
    let deadline = Instant::now() + DEADLINE;
    let serving = loop {
        if let Some(i) = (0..3).find(|&i| sse_on(&topology, i) == 1) {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no stream reached a replica\n{}",
            topology.nginx.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let publisher = publisher(&topology.redis);
    // One small event, and it arrives: nothing sits in a proxy buffer.
    publisher.publish(user(44), numbered(1)).await.unwrap();
    let (name, first) = tokio::task::block_in_place(|| stream.event()).expect("an event");
    assert_eq!((name, first["data"]["n"].as_u64()), (None, Some(1)));
    let last_id = first["id"].as_str().unwrap().to_owned();

    // The replica drains: the stream ends with the documented final event...
    let mut draining = topology.replicas.remove(serving);
    let terminating = std::thread::spawn(move || draining.terminate());
    let (name, close) = tokio::task::block_in_place(|| stream.event()).expect("a final event");
    assert_eq!(name.as_deref(), Some("gateway.close"));
    assert_eq!(close["code"], 1012);
    assert!(
        tokio::task::block_in_place(|| stream.event()).is_none(),
        "then the end"
    );
    assert!(terminating.join().unwrap().0.success());
    // ...what is published meanwhile is replayed to the reconnect, which nginx sends to a
    // live replica, then live delivery continues.
    publisher.publish(user(44), numbered(2)).await.unwrap();
    let resumed = CurlStream::open(&topology, 44, Some(&last_id));
    let (_, replayed) = tokio::task::block_in_place(|| resumed.event()).expect("the replay");
    assert_eq!(replayed["data"]["n"], 2);
    publisher.publish(user(44), numbered(3)).await.unwrap();
    let (_, live) = tokio::task::block_in_place(|| resumed.event()).expect("live");
    assert_eq!(live["data"]["n"], 3);
}
