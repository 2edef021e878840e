//! Redis Sentinel: gateways and publishers follow the master through a failover; sockets stay
//! open and every acknowledged notification reaches its user or is reported missed.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use e2e::topology::SentinelSet;
use e2e::{Gateway, WsClient};
use publisher::{Publisher, PublisherOptions, SentinelConfig};

use crate::{numbered, user};

/// The gateway settings that point at `set`'s sentinels.
fn sentinel_settings(set: &SentinelSet) -> Vec<(&'static str, String)> {
    vec![
        ("GW__REDIS__SENTINELS", set.sentinel_addrs().join(",")),
        (
            "GW__REDIS__SENTINEL_MASTER",
            SentinelSet::MASTER_NAME.to_owned(),
        ),
    ]
}

fn start_gateway(set: &SentinelSet) -> Gateway {
    start_gateway_with(set, &[])
}

fn start_gateway_with(set: &SentinelSet, extra: &[(&'static str, &str)]) -> Gateway {
    let mut settings = sentinel_settings(set);
    settings.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Gateway::start(None, &settings)
}

/// `min_replica_acks` 1 (when the set has a replica): every acknowledged notification is on
/// a replica too, so the one promoted has it.
fn sentinel_publisher(set: &SentinelSet, timeout: Duration) -> Publisher {
    let options = PublisherOptions {
        timeout,
        min_replica_acks: u32::from(set.servers.len() > 1),
        ..PublisherOptions::default()
    };
    Publisher::with_sentinel(
        SentinelConfig::new(set.sentinel_addrs(), SentinelSet::MASTER_NAME),
        options,
    )
    .expect("a publisher for the sentinel set")
}

/// What one user's socket received, in order.
#[derive(Default, Debug)]
struct Received {
    numbers: Vec<u64>,
    missed: usize,
}

/// The accounting of a fault scenario, printed for the report.
#[derive(Debug, Default)]
struct Counts {
    published: usize,
    acknowledged: usize,
    delivered: usize,
    lost: usize,
    duplicated: usize,
    out_of_order: usize,
    missed_frames: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_mid_stream_loses_no_acknowledged_notification() {
    const USERS: u64 = 24;
    const ROUNDS: u64 = 40;
    const KILL_AFTER: usize = (USERS * ROUNDS / 3) as usize;
    const LAST: u64 = 1_000_000;
    let mut set = SentinelSet::start(2);
    let acks = [("GW__REDIS__MIN_REPLICA_ACKS", "1")];
    let gateways = [
        start_gateway_with(&set, &acks),
        start_gateway_with(&set, &acks),
    ];
    let mut clients = Vec::new();
    for id in 0..USERS {
        let gateway = &gateways[(id % 2) as usize];
        clients.push(WsClient::connect(&gateway.ws_url(&(1000 + id).to_string())).await);
    }
    // Subscriptions are confirmed before the socket is accepted: a notification sent now is
    // delivered live.
    let publisher = sentinel_publisher(&set, Duration::from_secs(10));

    // Steady publishing, one user after another; the master dies a third of the way in.
    let published = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let publisher = publisher.clone();
        let published = published.clone();
        tokio::spawn(async move {
            let mut acknowledged: HashMap<u64, Vec<u64>> = HashMap::new();
            for n in 1..=ROUNDS {
                for id in 0..USERS {
                    published.fetch_add(1, SeqCst);
                    if publisher
                        .publish(user(1000 + id), numbered(n))
                        .await
                        .is_ok()
                    {
                        acknowledged.entry(id).or_default().push(n);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            acknowledged
        })
    };
    let killer = {
        let published = published.clone();
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            e2e::topology::wait_until(e2e::DEADLINE, "a third was published", || {
                published.load(SeqCst) >= KILL_AFTER || stop.load(SeqCst)
            });
            let old = set.kill_master();
            let new = set.wait_failover(old);
            (set, old, new)
        })
    };
    let acknowledged = publishing.await.expect("publishing task");
    stop.store(true, SeqCst);
    let (set, old, new) = killer.await.expect("failover");
    assert_ne!(old, new);
    for gateway in &gateways {
        gateway.wait_ready();
    }
    // A last notification per user, published after the failover: once a socket has it,
    // everything before it that the socket will ever get has arrived.
    for id in 0..USERS {
        publisher
            .publish(user(1000 + id), numbered(LAST))
            .await
            .expect("publishing to the new master");
    }
    let mut received: Vec<Received> = Vec::new();
    for client in &mut clients {
        let mut got = Received::default();
        loop {
            let frame = client.next_json().await;
            if frame["event"] == "gateway.missed" {
                got.missed += 1;
                continue;
            }
            let n = frame["data"]["n"]
                .as_u64()
                .expect("a numbered notification");
            if n == LAST {
                break;
            }
            got.numbers.push(n);
        }
        received.push(got);
    }

    let mut counts = Counts {
        published: published.load(SeqCst),
        acknowledged: acknowledged.values().map(Vec::len).sum(),
        ..Counts::default()
    };
    for (id, got) in received.iter().enumerate() {
        let id = id as u64;
        counts.delivered += got.numbers.len();
        counts.missed_frames += got.missed;
        let mut seen = std::collections::HashSet::new();
        counts.duplicated += got.numbers.iter().filter(|n| !seen.insert(**n)).count();
        counts.out_of_order += got.numbers.windows(2).filter(|w| w[0] >= w[1]).count();
        let lost = acknowledged.get(&id).map_or(0, |acked| {
            acked.iter().filter(|n| !seen.contains(n)).count()
        });
        // A loss covered by a missed frame was reported to the user: not silent.
        if got.missed == 0 {
            counts.lost += lost;
        }
    }
    eprintln!("sentinel failover {old} -> {new}: {counts:?}");
    assert!(counts.acknowledged > 0 && counts.acknowledged <= counts.published);
    assert_eq!(
        counts.lost, 0,
        "acknowledged notifications vanished: {counts:?}"
    );
    assert_eq!(counts.duplicated, 0, "{counts:?}");
    assert_eq!(counts.out_of_order, 0, "{counts:?}");
    for gateway in &gateways {
        assert_eq!(
            gateway.metric("gateway_sockets_open"),
            USERS / 2,
            "sockets stayed open"
        );
    }
    drop(set);
}

#[tokio::test]
async fn readiness_follows_whether_a_master_is_reachable() {
    // No replica: killing the master leaves nothing to fail over to.
    let mut set = SentinelSet::start(0);
    let gateway = start_gateway(&set);
    let mut client = WsClient::connect(&gateway.ws_url("77")).await;
    set.master().kill();
    gateway.wait_for_readiness(503);
    // No master within the publisher's timeout: the caller gets the typed error.
    let err = sentinel_publisher(&set, Duration::from_millis(500))
        .publish(user(77), numbered(0))
        .await
        .expect_err("no master to publish to");
    assert!(
        matches!(
            err.kind(),
            publisher::ErrorKind::RedisUnavailable | publisher::ErrorKind::Timeout
        ),
        "{err}"
    );
    set.master().restart();
    gateway.wait_for_readiness(200);
    sentinel_publisher(&set, Duration::from_secs(5))
        .publish(user(77), numbered(1))
        .await
        .expect("publishing once the master is back");
    assert_eq!(client.next_json().await["message"], "note 1");
}

const API_KEY: &str = "e5b2d8f1a4c7093e6b1d4f8a2c5e9b07";

#[tokio::test]
async fn every_publishing_path_takes_the_sentinel_setting() {
    let set = SentinelSet::start(1);
    let gateway = start_gateway_with(&set, &[("GW__PUBLISH__API_KEYS", API_KEY)]);
    let mut client = WsClient::connect(&gateway.ws_url("42")).await;
    let sentinels = set.sentinel_addrs().join(",");

    // publisher-lib
    sentinel_publisher(&set, Duration::from_secs(5))
        .publish(user(42), numbered(1))
        .await
        .expect("publisher-lib through the sentinels");
    assert_eq!(client.next_json().await["message"], "note 1");

    // POST /api/publish on a gateway configured with redis.sentinels
    let auth = format!("Bearer {API_KEY}");
    let (status, answer) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[("Authorization", &auth)],
        r#"{"user": 42, "type": "info", "message": "from the API"}"#,
    )
    .expect("POST /api/publish");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(client.next_json().await["message"], "from the API");

    // the notify CLI
    let out = Command::new(env!("CARGO_BIN_EXE_notify-e2e"))
        .args([
            "--sentinels",
            &sentinels,
            "--sentinel-master",
            SentinelSet::MASTER_NAME,
        ])
        .args(["--user", "42", "--type", "info", "--message", "from notify"])
        .output()
        .expect("running notify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(client.next_json().await["message"], "from notify");
    let out = Command::new(env!("CARGO_BIN_EXE_notify-e2e"))
        .args(["--sentinels", &sentinels])
        .args(["--user", "42", "--type", "info", "--message", "x"])
        .output()
        .expect("running notify");
    assert_eq!(
        out.status.code(),
        Some(2),
        "half a Sentinel setting is bad input"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sentinel-master"));

    // docs/PROTOCOL.md's redis-py snippet
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let snippet = docs_snippet(
        &root.join("docs/PROTOCOL.md"),
        "<!-- snippet:python-sentinel -->",
    );
    let python = e2e::require_program("python3", "python3");
    let out = bounded_output(
        Command::new(python)
            .current_dir(root)
            .arg("-c")
            .arg(&snippet)
            .env("REDIS_SENTINELS", &sentinels)
            .env("REDIS_SENTINEL_MASTER", SentinelSet::MASTER_NAME),
    );
    assert!(
        out.status.success(),
        "the Sentinel snippet of docs/PROTOCOL.md failed:\n{snippet}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(client.next_json().await["message"], "Your car is ready");

    // docs/PROTOCOL.md's node-redis snippet, with tests/node's pinned node-redis
    let snippet = docs_snippet(
        &root.join("docs/PROTOCOL.md"),
        "<!-- snippet:node-sentinel -->",
    );
    let node_modules = root.join("tests/node/node_modules");
    assert!(
        node_modules.join("redis").is_dir(),
        "node-redis missing: run ./tests/node.sh (./tests/run.sh does)"
    );
    let dir = e2e::TempDir::new("node-snippet");
    std::os::unix::fs::symlink(&node_modules, dir.0.join("node_modules")).unwrap();
    std::fs::copy(
        root.join("publisher-lib/src/publish.lua"),
        dir.0.join("publish.lua"),
    )
    .unwrap();
    std::fs::write(dir.0.join("snippet.mjs"), &snippet).unwrap();
    let out = bounded_output(
        Command::new(e2e::require_program("node", "nodejs"))
            .current_dir(&dir.0)
            .arg("snippet.mjs")
            .env("REDIS_SENTINELS", &sentinels)
            .env("REDIS_SENTINEL_MASTER", SentinelSet::MASTER_NAME),
    );
    assert!(
        out.status.success(),
        "the node-redis Sentinel snippet of docs/PROTOCOL.md failed:\n{snippet}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(client.next_json().await["message"], "Your car is ready too");
}

/// Runs `command` to its end, killing it (and failing) if it outlives the harness deadline:
/// a snippet that leaves a connection open never exits by itself.
pub(crate) fn bounded_output(command: &mut Command) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let started = std::time::Instant::now();
    while child.try_wait().expect("waiting for the snippet").is_none() {
        if started.elapsed() > e2e::DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().expect("snippet output");
            panic!(
                "{command:?} did not exit within {:?}:\n{}",
                e2e::DEADLINE,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("snippet output")
}

/// The first fenced block after `marker` in the Markdown file at `path`.
pub(crate) fn docs_snippet(path: &Path, marker: &str) -> String {
    let text = std::fs::read_to_string(path).expect("reading the docs");
    let after = &text[text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} missing"))..];
    let start = after.find("```").expect("a fenced block");
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n```").expect("a closing fence") + 1].to_owned()
}

#[test]
fn a_gateway_given_both_a_url_and_sentinels_refuses_to_start_naming_the_key() {
    let stderr = crate::start_fails(&[
        ("GW__REDIS__URL", "redis://127.0.0.1:6390"),
        ("GW__REDIS__SENTINELS", "127.0.0.1:26390"),
        ("GW__REDIS__SENTINEL_MASTER", "m"),
        ("GW__AUTH__MODE", "none"),
    ]);
    assert!(stderr.contains("redis.sentinels"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switchover_that_keeps_the_old_master_alive_is_followed_too() {
    // SENTINEL FAILOVER demotes a live master: its connections stay open and it answers
    // PING, but refuses writes. Gateways and publishers must move anyway.
    let set = SentinelSet::start(2);
    let gateway = start_gateway(&set);
    let mut client = WsClient::connect(&gateway.ws_url("88")).await;
    let publisher = sentinel_publisher(&set, Duration::from_secs(10));
    publisher.publish(user(88), numbered(1)).await.unwrap();
    assert_eq!(client.next_json().await["message"], "note 1");

    let old = set.master_port().expect("a master");
    set.sentinels[0].query::<()>(
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SentinelSet::MASTER_NAME),
    );
    let new = set.wait_failover(old);
    let demoted = set.servers.iter().find(|s| s.port == old).unwrap();
    e2e::topology::wait_until(e2e::DEADLINE, "the old master is a replica", || {
        demoted.role().as_deref() == Some("slave")
    });

    // The publisher's pooled connection to the old master is not reused for writes, and
    // the gateway's subscriber moves to the new master (not just to any node that still
    // relays the replication stream).
    for n in 2..=5 {
        publisher
            .publish(user(88), numbered(n))
            .await
            .expect("published on the new master");
    }
    for n in 2..=5 {
        assert_eq!(client.next_json().await["message"], format!("note {n}"));
    }
    let on_new = set.servers.iter().find(|s| s.port == new).unwrap();
    // Sentinels hold subscriber connections of their own (named sentinel-...).
    let gateway_subscribers = |node: &e2e::topology::RedisNode| {
        node.subscriber_clients("sub")
            .iter()
            .filter(|line| !line.contains(" name=sentinel-"))
            .count()
    };
    e2e::topology::wait_until(
        e2e::DEADLINE,
        "the gateway subscribed on the new master",
        || gateway_subscribers(on_new) == 1 && gateway_subscribers(demoted) == 0,
    );
    // Its canaries go through the new master too: it reports ready.
    gateway.wait_ready();
    assert_eq!(gateway.metric("gateway_sockets_open"), 1);
}

#[tokio::test]
async fn passwords_of_the_sentinels_and_of_the_master_are_used_and_checked() {
    const PASSWORD: &str = "master pw:with@odd/chars";
    const SENTINEL_PASSWORD: &str = "sentinel-secret";
    let set = SentinelSet::start_secured(1, Some(PASSWORD), Some(SENTINEL_PASSWORD));
    let gateway = start_gateway_with(
        &set,
        &[
            ("GW__REDIS__PASSWORD", PASSWORD),
            ("GW__REDIS__SENTINEL_PASSWORD", SENTINEL_PASSWORD),
        ],
    );
    let mut client = WsClient::connect(&gateway.ws_url("61")).await;
    let mut config = SentinelConfig::new(set.sentinel_addrs(), SentinelSet::MASTER_NAME);
    config.password = Some(PASSWORD.into());
    config.sentinel_password = Some(SENTINEL_PASSWORD.into());
    let options = PublisherOptions {
        timeout: Duration::from_secs(5),
        min_replica_acks: 1,
        ..PublisherOptions::default()
    };
    Publisher::with_sentinel(config.clone(), options)
        .unwrap()
        .publish(user(61), numbered(1))
        .await
        .expect("publishing with both passwords");
    assert_eq!(client.next_json().await["message"], "note 1");

    // A wrong password is an error the caller sees, not a silent drop.
    let short = PublisherOptions {
        timeout: Duration::from_millis(800),
        ..options
    };
    for (sentinel_password, password) in [
        (Some("wrong"), Some(PASSWORD)),
        (Some(SENTINEL_PASSWORD), Some("wrong")),
    ] {
        let mut wrong = config.clone();
        wrong.sentinel_password = sentinel_password.map(str::to_owned);
        wrong.password = password.map(str::to_owned);
        let err = Publisher::with_sentinel(wrong, short)
            .unwrap()
            .publish(user(61), numbered(2))
            .await
            .expect_err("a wrong password");
        assert_eq!(err.kind(), publisher::ErrorKind::RedisUnavailable, "{err}");
    }
    let refused = start_gateway_unready(&set, &[("GW__REDIS__PASSWORD", "wrong")]);
    refused.wait_for_readiness(503);
}

/// A gateway pointed at `set` that is not expected to become ready.
fn start_gateway_unready(set: &SentinelSet, extra: &[(&'static str, &str)]) -> Gateway {
    let mut settings = sentinel_settings(set);
    settings.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Gateway::spawn(None, &settings)
}

/// Scheduled notifications and presence on Sentinel: gateways fire through the master the
/// sentinels name, before and after a failover, and presence follows the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_items_and_presence_follow_a_failover() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let mut set = SentinelSet::start(1);
    let a = start_gateway(&set);
    let b = start_gateway(&set);
    let mut on_a = WsClient::connect(&a.ws_url("1")).await;
    let _on_b = WsClient::connect(&b.ws_url("1")).await;
    // No replica acks: after the failover the set has no replica left to acknowledge.
    let publisher = Publisher::with_sentinel(
        SentinelConfig::new(set.sentinel_addrs(), SentinelSet::MASTER_NAME),
        PublisherOptions {
            timeout: Duration::from_secs(20),
            ..PublisherOptions::default()
        },
    )
    .unwrap();
    let wait_presence = |expected: u64| {
        let publisher = publisher.clone();
        async move {
            let deadline = tokio::time::Instant::now() + e2e::DEADLINE;
            loop {
                let sockets = publisher.presence(&[user(1)], false).await.unwrap()[0].sockets;
                if sockets == expected {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "presence stuck at {sockets}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_presence(2).await;

    let soon = SystemTime::now() + Duration::from_millis(300);
    publisher
        .schedule(user(1), numbered(1), soon, "before")
        .await
        .unwrap();
    // Due long after the failover; rescheduled to soon once it is over.
    let later = SystemTime::now() + Duration::from_secs(600);
    publisher
        .schedule(user(1), numbered(2), later, "after")
        .await
        .unwrap();
    assert_eq!(on_a.next_json().await["data"]["n"], 1);

    let old = set.kill_master();
    set.wait_failover(old);
    let soon = SystemTime::now() + Duration::from_millis(300);
    publisher
        .schedule(user(1), numbered(2), soon, "after")
        .await
        .unwrap();
    let frame = on_a.next_json().await;
    assert_eq!(frame["data"]["n"], 2, "{frame}");
    let due = soon.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert_eq!(frame["timestamp"].as_u64(), Some(due));
    // Presence is answered by the new master too.
    wait_presence(2).await;
}
