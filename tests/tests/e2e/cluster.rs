//! Redis Cluster: sharded pub/sub. Gateways hold one subscriber connection per master shard,
//! users on every shard get their own notifications and nobody else's, and a master SIGKILLed
//! mid-stream loses no acknowledged notification.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use e2e::topology::Cluster;
use e2e::{Gateway, WsClient};
use publisher::{ClusterConfig, Publisher, PublisherOptions};

use crate::sentinel::{bounded_output, docs_snippet};
use crate::{numbered, user};

fn start_gateway(cluster: &Cluster, extra: &[(&str, &str)]) -> Gateway {
    let nodes = cluster.seed_addrs().join(",");
    let mut settings = vec![("GW__REDIS__CLUSTER_NODES", nodes.as_str())];
    settings.extend_from_slice(extra);
    Gateway::start(None, &settings)
}

/// `min_replica_acks` 1: every acknowledged notification is on the shard's replica too, so
/// the replica promoted by a failover has it.
fn cluster_publisher(cluster: &Cluster, timeout: Duration) -> Publisher {
    let options = PublisherOptions {
        timeout,
        min_replica_acks: 1,
        ..PublisherOptions::default()
    };
    Publisher::with_cluster(ClusterConfig::new(cluster.seed_addrs()), options)
        .expect("a publisher for the cluster")
}

/// `per_shard` user ids whose channels hash to each master, from `first` up.
fn users_on_every_shard(cluster: &Cluster, first: u64, per_shard: usize) -> Vec<u64> {
    let shards = cluster.shards();
    let mut by_shard: HashMap<u16, Vec<u64>> = HashMap::new();
    let mut id = first;
    while by_shard.len() < shards.len() || by_shard.values().any(|u| u.len() < per_shard) {
        let slot = cluster.keyslot(&format!("user_{id}"));
        let port = shards.iter().find(|s| s.owns(slot)).expect("an owner").port;
        let users = by_shard.entry(port).or_default();
        if users.len() < per_shard {
            users.push(id);
        }
        id += 1;
    }
    let mut users: Vec<u64> = by_shard.into_values().flatten().collect();
    users.sort_unstable();
    users
}

/// Receives until the notification numbered `last`; returns the numbers before it and the
/// missed frames. Every frame must be for `id` (isolation).
async fn receive_until(client: &mut WsClient, id: u64, last: u64) -> (Vec<u64>, usize) {
    let (mut numbers, mut missed) = (Vec::new(), 0);
    loop {
        let frame = client.next_json().await;
        if frame["event"] == "gateway.missed" {
            missed += 1;
            continue;
        }
        assert_eq!(
            frame["data"]["user"], id,
            "a frame for someone else: {frame}"
        );
        let n = frame["data"]["n"]
            .as_u64()
            .expect("a numbered notification");
        if n == last {
            return (numbers, missed);
        }
        numbers.push(n);
    }
}

fn note(id: u64, n: u64) -> publisher::Notification {
    numbered(n).with_data("user", id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_on_every_shard_get_their_own_notifications_over_one_link_per_shard() {
    let cluster = Cluster::start(3, 1);
    let gateways = [start_gateway(&cluster, &[]), start_gateway(&cluster, &[])];
    let users = users_on_every_shard(&cluster, 1, 3);
    let mut clients = Vec::new();
    for (i, id) in users.iter().enumerate() {
        let gateway = &gateways[i % 2];
        clients.push(WsClient::connect(&gateway.ws_url(&id.to_string())).await);
    }
    let publisher = cluster_publisher(&cluster, Duration::from_secs(5));
    for n in 1..=5 {
        for id in &users {
            let receivers = publisher.publish(user(*id), note(*id, n)).await.unwrap();
            assert_eq!(receivers, 1, "user {id}: one gateway node subscribed");
        }
    }
    for (client, id) in clients.iter_mut().zip(&users) {
        client_publish_last(&publisher, *id).await;
        let (numbers, missed) = receive_until(client, *id, LAST).await;
        assert_eq!(numbers, [1, 2, 3, 4, 5], "user {id}");
        assert_eq!(missed, 0);
    }
    // One subscriber connection per gateway on each master, however many users it serves.
    for shard in cluster.shards() {
        let node = cluster.nodes.iter().find(|n| n.port == shard.port).unwrap();
        let subscribers = node.subscriber_clients("ssub");
        assert_eq!(
            subscribers.len(),
            2,
            "master {}: one SSUBSCRIBE connection per gateway node:\n{}",
            shard.port,
            subscribers.join("\n")
        );
        // And nothing on the broadcast pub/sub of the cluster bus.
        assert!(node.subscriber_clients("sub").is_empty());
    }
    // Every other user on each gateway, each subscribed once.
    let expected = [users.len().div_ceil(2), users.len() / 2];
    for (gateway, expected) in gateways.iter().zip(expected) {
        assert_eq!(
            gateway.metric("gateway_redis_subscriptions") as usize,
            expected
        );
    }
}

const LAST: u64 = 1_000_000;

async fn client_publish_last(publisher: &Publisher, id: u64) {
    publisher
        .publish(user(id), note(id, LAST))
        .await
        .expect("publishing the last notification");
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
    const ROUNDS: u64 = 40;
    let mut cluster = Cluster::start(3, 1);
    let gateways = [start_gateway(&cluster, &[]), start_gateway(&cluster, &[])];
    let users = users_on_every_shard(&cluster, 2000, 8);
    let kill_after = users.len() * ROUNDS as usize / 3;
    let victim_slot = cluster.keyslot(&format!("user_{}", users[0]));
    let mut clients = Vec::new();
    for (i, id) in users.iter().enumerate() {
        let gateway = &gateways[i % 2];
        clients.push(WsClient::connect(&gateway.ws_url(&id.to_string())).await);
    }
    let publisher = cluster_publisher(&cluster, Duration::from_secs(3));

    let published = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let publisher = publisher.clone();
        let published = published.clone();
        let users = users.clone();
        tokio::spawn(async move {
            let mut acknowledged: HashMap<u64, Vec<u64>> = HashMap::new();
            for n in 1..=ROUNDS {
                for id in &users {
                    published.fetch_add(1, SeqCst);
                    let started = std::time::Instant::now();
                    match publisher.publish(user(*id), note(*id, n)).await {
                        Ok(_) => acknowledged.entry(*id).or_default().push(n),
                        Err(e) => {
                            eprintln!("publish {id}/{n} failed after {:?}: {e}", started.elapsed())
                        }
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
                published.load(SeqCst) >= kill_after || stop.load(SeqCst)
            });
            let old = cluster.kill_owner(victim_slot);
            let new = cluster.wait_failover(old, victim_slot);
            // The promoted replica has no replica of its own, so WAIT 1 cannot be satisfied
            // there (those publishes fail, unacknowledged) until the old master is back as
            // its replica.
            cluster.node(old).restart();
            cluster.wait_settled(3);
            (cluster, old, new)
        })
    };
    let acknowledged = publishing.await.expect("publishing task");
    stop.store(true, SeqCst);
    let (cluster, old, new) = killer.await.expect("failover");
    assert_ne!(old, new);
    for gateway in &gateways {
        gateway.wait_ready();
    }
    for id in &users {
        client_publish_last(&publisher, *id).await;
    }
    let mut counts = Counts {
        published: published.load(SeqCst),
        acknowledged: acknowledged.values().map(Vec::len).sum(),
        ..Counts::default()
    };
    for (client, id) in clients.iter_mut().zip(&users) {
        let (numbers, missed) = receive_until(client, *id, LAST).await;
        counts.delivered += numbers.len();
        counts.missed_frames += missed;
        let mut seen = HashSet::new();
        counts.duplicated += numbers.iter().filter(|n| !seen.insert(**n)).count();
        counts.out_of_order += numbers.windows(2).filter(|w| w[0] >= w[1]).count();
        let lost = acknowledged.get(id).map_or(0, |acked| {
            acked.iter().filter(|n| !seen.contains(n)).count()
        });
        // A loss covered by a missed frame was reported to the user: not silent.
        if missed == 0 {
            counts.lost += lost;
        }
    }
    eprintln!("cluster failover {old} -> {new}: {counts:?}");
    assert!(counts.acknowledged > 0 && counts.acknowledged <= counts.published);
    assert_eq!(
        counts.lost, 0,
        "acknowledged notifications vanished: {counts:?}"
    );
    assert_eq!(counts.duplicated, 0, "{counts:?}");
    assert_eq!(counts.out_of_order, 0, "{counts:?}");
    for gateway in &gateways {
        assert_eq!(
            gateway.metric("gateway_sockets_open") as usize,
            users.len() / 2,
            "sockets stayed open"
        );
    }
    // The promoted replica serves the victim's users over one link per gateway, too.
    let promoted = cluster.nodes.iter().find(|n| n.port == new).unwrap();
    assert_eq!(promoted.subscriber_clients("ssub").len(), 2);
    drop(cluster);
}

#[test]
fn a_gateway_given_a_url_and_cluster_nodes_refuses_to_start_naming_the_key() {
    let stderr = crate::start_fails(&[
        ("GW__REDIS__URL", "redis://127.0.0.1:6390"),
        ("GW__REDIS__CLUSTER_NODES", "127.0.0.1:7000"),
        ("GW__AUTH__MODE", "none"),
    ]);
    assert!(stderr.contains("redis.cluster_nodes"), "{stderr}");
    let stderr = crate::start_fails(&[
        ("GW__REDIS__CLUSTER_NODES", "127.0.0.1"),
        ("GW__AUTH__MODE", "none"),
    ]);
    assert!(stderr.contains("redis.cluster_nodes"), "{stderr}");
}

const API_KEY: &str = "c1a55e8d4f0b7a9e3c6d2b1f8e4a7c0d9b3e6f1a2c5d8e0b";

#[tokio::test]
async fn every_publishing_path_takes_the_cluster_setting() {
    let cluster = Cluster::start(3, 0);
    let gateway = start_gateway(&cluster, &[("GW__PUBLISH__API_KEYS", API_KEY)]);
    let id = 42;
    let mut client = WsClient::connect(&gateway.ws_url("42")).await;
    let nodes = cluster.seed_addrs().join(",");

    // publisher-lib
    let options = PublisherOptions {
        timeout: Duration::from_secs(5),
        ..PublisherOptions::default()
    };
    Publisher::with_cluster(ClusterConfig::new(cluster.seed_addrs()), options)
        .unwrap()
        .publish(user(id), numbered(1))
        .await
        .expect("publisher-lib through the cluster");
    assert_eq!(client.next_json().await["message"], "note 1");
    // Stored where the script's slot is: history:{user_42}.
    let stored: usize = cluster
        .nodes
        .iter()
        .filter(|n| n.role().as_deref() == Some("master"))
        .map(|n| {
            n.try_query::<usize>(redis::cmd("XLEN").arg("history:{user_42}"))
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(stored, 1);

    // POST /api/publish on a gateway configured with redis.cluster_nodes
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
        .args(["--cluster-nodes", &nodes])
        .args(["--user", "42", "--type", "info", "--message", "from notify"])
        .output()
        .expect("running notify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(client.next_json().await["message"], "from notify");

    // docs/PROTOCOL.md's redis-py snippet
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let snippet = docs_snippet(
        &root.join("docs/PROTOCOL.md"),
        "<!-- snippet:python-cluster -->",
    );
    let python = e2e::require_program("python3", "python3");
    let out = bounded_output(
        Command::new(python)
            .current_dir(root)
            .arg("-c")
            .arg(&snippet)
            .env("REDIS_CLUSTER_NODES", &nodes),
    );
    assert!(
        out.status.success(),
        "the Cluster snippet of docs/PROTOCOL.md failed:\n{snippet}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(client.next_json().await["message"], "Your car is ready");

    // docs/PROTOCOL.md's node-redis snippet, with tests/node's pinned node-redis
    let snippet = docs_snippet(
        &root.join("docs/PROTOCOL.md"),
        "<!-- snippet:node-cluster -->",
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
            .env("REDIS_CLUSTER_NODES", &nodes),
    );
    assert!(
        out.status.success(),
        "the node-redis Cluster snippet of docs/PROTOCOL.md failed:\n{snippet}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(client.next_json().await["message"], "Your car is ready too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resharding_live_users_slots_moves_their_subscriptions_and_loses_nothing() {
    const ROUNDS: u64 = 60;
    let cluster = Cluster::start(3, 0);
    let gateways = [start_gateway(&cluster, &[]), start_gateway(&cluster, &[])];
    let users = users_on_every_shard(&cluster, 3000, 4);
    let mut clients = Vec::new();
    for (i, id) in users.iter().enumerate() {
        let gateway = &gateways[i % 2];
        clients.push(WsClient::connect(&gateway.ws_url(&id.to_string())).await);
    }
    // The slots of every user of the first master move to the second, one after another,
    // while notifications flow.
    let shards = cluster.shards();
    let (from, to) = (shards[0].port, shards[1].port);
    let moving: Vec<(u64, u16)> = users
        .iter()
        .map(|id| (*id, cluster.keyslot(&format!("user_{id}"))))
        .filter(|(_, slot)| shards[0].owns(*slot))
        .collect();
    assert!(!moving.is_empty());
    let options = PublisherOptions {
        timeout: Duration::from_secs(5),
        ..PublisherOptions::default()
    };
    let publisher =
        Publisher::with_cluster(ClusterConfig::new(cluster.seed_addrs()), options).unwrap();
    let published = Arc::new(AtomicUsize::new(0));
    let publishing = {
        let publisher = publisher.clone();
        let published = published.clone();
        let users = users.clone();
        tokio::spawn(async move {
            let mut acknowledged: HashMap<u64, Vec<u64>> = HashMap::new();
            for n in 1..=ROUNDS {
                for id in &users {
                    published.fetch_add(1, SeqCst);
                    match publisher.publish(user(*id), note(*id, n)).await {
                        Ok(_) => acknowledged.entry(*id).or_default().push(n),
                        Err(e) => eprintln!("publish {id}/{n} failed: {e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            acknowledged
        })
    };
    let migrating = {
        let published = published.clone();
        let moving = moving.clone();
        let total = users.len() * ROUNDS as usize;
        tokio::task::spawn_blocking(move || {
            for (i, (_, slot)) in moving.iter().enumerate() {
                let at = total * (i + 1) / (moving.len() + 2);
                e2e::topology::wait_until(e2e::DEADLINE, "publishing went on", || {
                    published.load(SeqCst) >= at
                });
                cluster.migrate_slot(*slot, to);
            }
            cluster
        })
    };
    let acknowledged = publishing.await.expect("publishing task");
    let cluster = migrating.await.expect("migrations");
    for id in &users {
        client_publish_last(&publisher, *id).await;
    }
    let mut counts = Counts {
        published: published.load(SeqCst),
        acknowledged: acknowledged.values().map(Vec::len).sum(),
        ..Counts::default()
    };
    for (client, id) in clients.iter_mut().zip(&users) {
        let (numbers, missed) = receive_until(client, *id, LAST).await;
        counts.delivered += numbers.len();
        counts.missed_frames += missed;
        let mut seen = HashSet::new();
        counts.duplicated += numbers.iter().filter(|n| !seen.insert(**n)).count();
        counts.out_of_order += numbers.windows(2).filter(|w| w[0] >= w[1]).count();
        let lost = acknowledged.get(id).map_or(0, |acked| {
            acked.iter().filter(|n| !seen.contains(n)).count()
        });
        if missed == 0 {
            counts.lost += lost;
        }
    }
    eprintln!(
        "cluster resharding of {} slots {from} -> {to}: {counts:?}",
        moving.len()
    );
    assert_eq!(
        counts.lost, 0,
        "acknowledged notifications vanished: {counts:?}"
    );
    assert_eq!(counts.duplicated, 0, "{counts:?}");
    assert_eq!(counts.out_of_order, 0, "{counts:?}");
    assert_eq!(
        counts.missed_frames, 0,
        "nothing was lost, so nothing is reported missed"
    );
    // The subscriptions followed the slots: the moved users' channels are subscribed on the
    // new owner (by the one gateway holding the socket) and no longer on the old one.
    let node = |port: u16| cluster.nodes.iter().find(|n| n.port == port).unwrap();
    for (id, _) in &moving {
        let channel = format!("user_{id}");
        let count = |port: u16| -> u64 {
            let reply: (String, u64) =
                node(port).query(redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(&channel));
            reply.1
        };
        assert_eq!(count(to), 1, "{channel} on the new owner");
        assert_eq!(count(from), 0, "{channel} left the old owner");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_started_while_a_shard_is_down_subscribes_there_once_it_is_back() {
    let mut cluster = Cluster::start(3, 0);
    let users = users_on_every_shard(&cluster, 4000, 1);
    let shards = cluster.shards();
    let down_port = shards[0].port;
    let owner = |id: u64| {
        let slot = cluster.keyslot(&format!("user_{id}"));
        shards.iter().find(|s| s.owns(slot)).unwrap().port
    };
    let (down_users, up_users): (Vec<u64>, Vec<u64>) =
        users.iter().partition(|id| owner(**id) == down_port);
    cluster.node(down_port).kill();

    let nodes = cluster.seed_addrs().join(",");
    let gateway = Gateway::spawn(None, &[("GW__REDIS__CLUSTER_NODES", nodes.as_str())]);
    gateway.wait_log("gateway listening");
    let mut clients = Vec::new();
    for id in &users {
        // The upgrade waits for the subscription at most redis.subscribe_timeout_ms.
        clients.push((
            *id,
            WsClient::connect(&gateway.ws_url(&id.to_string())).await,
        ));
    }
    let options = PublisherOptions {
        timeout: Duration::from_secs(5),
        ..PublisherOptions::default()
    };
    let publisher =
        Publisher::with_cluster(ClusterConfig::new(cluster.seed_addrs()), options).unwrap();
    // The other shards deliver meanwhile.
    for id in &up_users {
        publisher.publish(user(*id), note(*id, 1)).await.unwrap();
    }
    for (id, client) in clients.iter_mut().filter(|(id, _)| up_users.contains(id)) {
        let frame = tokio::time::timeout(Duration::from_secs(5), client.next_json()).await;
        let frame = frame.unwrap_or_else(|_| panic!("user {id}: nothing\n{}", gateway.log()));
        assert_eq!(frame["data"]["n"], 1, "user {id}");
    }
    cluster.node(down_port).restart();
    cluster.wait_settled(3);
    // Once the shard is back the gateway subscribes its users there by itself, on one link.
    // (A user whose first socket opened during the outage has no cursor yet: its history
    // starts when it is subscribed, so publish only once it is.)
    let back = cluster.nodes.iter().find(|n| n.port == down_port).unwrap();
    e2e::topology::wait_until(e2e::DEADLINE, "the gateway subscribed its users", || {
        down_users.iter().all(|id| {
            back.try_query::<(String, u64)>(
                redis::cmd("PUBSUB")
                    .arg("SHARDNUMSUB")
                    .arg(format!("user_{id}")),
            )
            .is_ok_and(|(_, n)| n == 1)
        })
    });
    assert_eq!(back.subscriber_clients("ssub").len(), 1);
    for id in &down_users {
        publisher.publish(user(*id), note(*id, 2)).await.unwrap();
    }
    for (id, client) in clients.iter_mut().filter(|(id, _)| down_users.contains(id)) {
        let frame = tokio::time::timeout(Duration::from_secs(10), client.next_json()).await;
        let frame = frame.unwrap_or_else(|_| panic!("user {id}: nothing\n{}", gateway.log()));
        assert_eq!(frame["data"]["n"], 2, "user {id}: {frame}");
    }
    gateway.wait_ready();
}

#[tokio::test]
async fn a_password_protected_cluster_is_reached_with_redis_password() {
    let password = "c7f3a91e5b2d4086af1e9c3b7d5a2f60";
    let cluster = Cluster::start_secured(3, 0, password);
    let gateway = start_gateway(&cluster, &[("GW__REDIS__PASSWORD", password)]);
    let users = users_on_every_shard(&cluster, 5000, 1);
    let mut clients = Vec::new();
    for id in &users {
        clients.push(WsClient::connect(&gateway.ws_url(&id.to_string())).await);
    }
    let options = PublisherOptions {
        timeout: Duration::from_secs(2),
        ..PublisherOptions::default()
    };
    let mut config = ClusterConfig::new(cluster.seed_addrs());
    let err = Publisher::with_cluster(config.clone(), options)
        .unwrap()
        .publish(user(users[0]), numbered(0))
        .await
        .expect_err("no password: refused");
    assert_ne!(err.kind(), publisher::ErrorKind::InvalidInput, "{err}");
    config.password = Some(password.to_owned());
    let publisher = Publisher::with_cluster(config, options).unwrap();
    for id in &users {
        publisher.publish(user(*id), note(*id, 1)).await.unwrap();
    }
    // Every shard link authenticated: each user, on each master, got theirs.
    for (client, id) in clients.iter_mut().zip(&users) {
        let frame = client.next_json().await;
        assert_eq!(
            (frame["data"]["user"].as_u64(), frame["data"]["n"].as_u64()),
            (Some(*id), Some(1))
        );
    }
    // The firing loop and the presence heartbeat use the password too.
    publisher
        .schedule(
            user(users[0]),
            note(users[0], 2),
            std::time::SystemTime::now(),
            "pw",
        )
        .await
        .unwrap();
    assert_eq!(clients[0].next_json().await["data"]["n"], 2);
    assert_eq!(gateway.metric("gateway_presence_beat_failures_total"), 0);
    assert!(
        !gateway.log().contains(password),
        "the password reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manual_failover_that_keeps_the_old_master_alive_is_followed_too() {
    // CLUSTER FAILOVER on a replica demotes a live master: its connections stay open and it
    // answers PING, but no longer serves the slots. Gateways must move their subscriptions.
    const ROUNDS: u64 = 30;
    let cluster = Cluster::start(3, 1);
    let gateways = [start_gateway(&cluster, &[]), start_gateway(&cluster, &[])];
    let users = users_on_every_shard(&cluster, 6000, 3);
    let slot = cluster.keyslot(&format!("user_{}", users[0]));
    let old = cluster.owner(slot).port;
    let mut clients = Vec::new();
    for (i, id) in users.iter().enumerate() {
        clients.push(WsClient::connect(&gateways[i % 2].ws_url(&id.to_string())).await);
    }
    let publisher = cluster_publisher(&cluster, Duration::from_secs(5));
    let published = Arc::new(AtomicUsize::new(0));
    let publishing = {
        let (publisher, published, users) = (publisher.clone(), published.clone(), users.clone());
        tokio::spawn(async move {
            let mut acknowledged: HashMap<u64, Vec<u64>> = HashMap::new();
            for n in 1..=ROUNDS {
                for id in &users {
                    published.fetch_add(1, SeqCst);
                    if publisher.publish(user(*id), note(*id, n)).await.is_ok() {
                        acknowledged.entry(*id).or_default().push(n);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            acknowledged
        })
    };
    let switching = {
        let published = published.clone();
        let total = users.len() * ROUNDS as usize;
        tokio::task::spawn_blocking(move || {
            e2e::topology::wait_until(e2e::DEADLINE, "a third was published", || {
                published.load(SeqCst) >= total / 3
            });
            let replica = cluster
                .nodes
                .iter()
                .find(|n| {
                    n.role().as_deref() == Some("slave")
                        && n.query::<String>(redis::cmd("INFO").arg("replication"))
                            .contains(&format!("master_port:{old}"))
                })
                .expect("the replica of the victim's master");
            replica.query::<()>(redis::cmd("CLUSTER").arg("FAILOVER"));
            let new = replica.port;
            e2e::topology::wait_until(e2e::DEADLINE, "the replica took over", || {
                cluster.owner(slot).port == new
            });
            (cluster, new)
        })
    };
    let acknowledged = publishing.await.expect("publishing task");
    let (cluster, new) = switching.await.expect("switchover");
    for id in &users {
        client_publish_last(&publisher, *id).await;
    }
    let mut counts = Counts {
        published: published.load(SeqCst),
        acknowledged: acknowledged.values().map(Vec::len).sum(),
        ..Counts::default()
    };
    for (client, id) in clients.iter_mut().zip(&users) {
        let (numbers, missed) = receive_until(client, *id, LAST).await;
        counts.delivered += numbers.len();
        counts.missed_frames += missed;
        let mut seen = HashSet::new();
        counts.duplicated += numbers.iter().filter(|n| !seen.insert(**n)).count();
        counts.out_of_order += numbers.windows(2).filter(|w| w[0] >= w[1]).count();
        let lost = acknowledged.get(id).map_or(0, |acked| {
            acked.iter().filter(|n| !seen.contains(n)).count()
        });
        if missed == 0 {
            counts.lost += lost;
        }
        if lost > 0 {
            let gone: Vec<u64> = acknowledged[id]
                .iter()
                .filter(|n| !seen.contains(n))
                .copied()
                .collect();
            eprintln!(
                "user {id} (slot {}) lost {gone:?}",
                cluster.keyslot(&format!("user_{id}"))
            );
        }
    }
    eprintln!("cluster switchover {old} -> {new}: {counts:?}");
    if counts.lost > 0 {
        for g in &gateways {
            eprintln!(
                "{}",
                g.log()
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("INFO"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert_eq!(
        counts.lost, 0,
        "acknowledged notifications vanished: {counts:?}"
    );
    assert_eq!(counts.duplicated, 0, "{counts:?}");
    assert_eq!(counts.out_of_order, 0, "{counts:?}");
    // The subscriptions moved to the new master and left the demoted one.
    let node = |port: u16| cluster.nodes.iter().find(|n| n.port == port).unwrap();
    e2e::topology::wait_until(
        e2e::DEADLINE,
        "the demoted master lost its subscribers",
        || node(old).subscriber_clients("ssub").is_empty(),
    );
    assert_eq!(node(new).subscriber_clients("ssub").len(), 2);
}
