//! Nothing lost: a steady publisher sends numbered notifications to many users while a
//! replica is killed, Redis restarts, or clients drop and reconnect with their last id. Each
//! client must end with every notification of its user since it first connected, exactly
//! once and in order; a client resuming from beyond retained history is told so.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use e2e::{Gateway, RedisServer, WsClient, DEADLINE};
use publisher::{Level, Notification, Publisher, UserId};
use serde_json::Value;

use crate::user;

const SCENARIO_DEADLINE: Duration = Duration::from_secs(90);

/// What one client saw of its user's notifications.
#[derive(Debug, Default)]
struct Tally {
    received: Vec<u64>,
    missed_frames: usize,
    reconnects: usize,
}

impl Tally {
    fn report(&self, expected: u64) -> (u64, u64, u64) {
        let distinct: BTreeSet<u64> = self.received.iter().copied().collect();
        let lost = (0..expected).filter(|n| !distinct.contains(n)).count() as u64;
        let duplicated = self.received.len() as u64 - distinct.len() as u64;
        let out_of_order = self.received.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        (lost, duplicated, out_of_order)
    }
}

/// How a client misbehaves.
#[derive(Clone, Copy)]
enum Chaos {
    None,
    /// Closes its socket and reconnects after a pseudo-random number of frames.
    DropEvery {
        seed: u64,
        max: u64,
    },
}

/// A client that reconnects with its last id whenever its socket ends, cycling through the
/// given gateways, until it has received notification `expected - 1` of its user. It says
/// `ready` once its first socket is open.
async fn resuming_client(
    user: u64,
    gateways: Vec<SocketAddr>,
    expected: u64,
    chaos: Chaos,
    ready: mpsc::Sender<()>,
) -> Tally {
    let mut tally = Tally::default();
    let mut last_id: Option<String> = None;
    let mut target = 0;
    let mut rng = match chaos {
        Chaos::DropEvery { seed, .. } => seed ^ user.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        Chaos::None => 0,
    };
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < SCENARIO_DEADLINE,
            "user {user}: gave up, saw {tally:?}"
        );
        let addr = gateways[target % gateways.len()];
        let url = match &last_id {
            Some(id) => format!("ws://{addr}/ws/notifications/{user}/?last_id={id}"),
            None => format!("ws://{addr}/ws/notifications/{user}/"),
        };
        let Ok(mut socket) = WsClient::try_connect(&url).await else {
            // That replica is gone: try the next one, as a load balancer would.
            target += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if tally.reconnects == 0 {
            let _ = ready.send(()).await;
        }
        let mut frames_left = match chaos {
            Chaos::DropEvery { max, .. } => {
                rng = xorshift(rng);
                1 + rng % max
            }
            Chaos::None => u64::MAX,
        };
        while let Some(frame) = socket.next_frame().await {
            last_id = frame["id"].as_str().map(str::to_owned).or(last_id);
            if frame["event"] == "gateway.missed" {
                tally.missed_frames += 1;
                continue;
            }
            let n = frame["data"]["n"].as_u64().expect("numbered notification");
            assert_eq!(frame["data"]["user"], user, "misrouted: {frame}");
            tally.received.push(n);
            if n + 1 == expected {
                return tally;
            }
            frames_left -= 1;
            if frames_left == 0 {
                socket.close().await;
                break;
            }
        }
        tally.reconnects += 1;
        target += 1;
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn note(user: u64, n: u64) -> Notification {
    Notification::new(Level::Info, format!("note {n} for {user}"))
        .with_data("n", n)
        .with_data("user", user)
}

/// Publishes `per_user` numbered notifications to each user, round robin, one every `pace`,
/// counting them in `progress`. A publish that fails (Redis restarting) is retried, unless
/// history shows it was stored before the connection broke, so each number is published
/// exactly once.
async fn steady_publisher(
    redis_url: String,
    users: u64,
    per_user: u64,
    pace: Duration,
    progress: Arc<AtomicU64>,
) -> u64 {
    let publisher = Publisher::connect(&redis_url).unwrap();
    let history = redis::Client::open(redis_url).unwrap();
    let mut tick = tokio::time::interval(pace);
    for n in 0..per_user {
        for u in 1..=users {
            tick.tick().await;
            let started = Instant::now();
            loop {
                match publisher.publish(user(u), note(u, n)).await {
                    Ok(_) => break,
                    Err(error) => {
                        // Did the script run before the connection broke? Ask once Redis
                        // answers again, so the number is neither lost nor stored twice.
                        let stored = loop {
                            assert!(
                                started.elapsed() < DEADLINE,
                                "publishing kept failing: {error}"
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            if let Ok(newest) = newest_number(&history, user(u)).await {
                                break newest == Some(n);
                            }
                        };
                        if stored {
                            break;
                        }
                    }
                }
            }
            progress.fetch_add(1, Relaxed);
        }
    }
    progress.load(Relaxed)
}

/// The `n` of the newest notification in a user's history; `Err` while Redis does not answer.
async fn newest_number(
    client: &redis::Client,
    user: UserId,
) -> Result<Option<u64>, redis::RedisError> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    type Entry = (String, Vec<(String, String)>);
    let newest: Vec<Entry> = redis::cmd("XREVRANGE")
        .arg(user.history_key())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    Ok(newest
        .first()
        .and_then(|(_, fields)| fields.first())
        .and_then(|(_, payload)| serde_json::from_str::<Value>(payload).ok())
        .and_then(|payload| payload["data"]["n"].as_u64()))
}

/// Waits until the publisher has sent `share` of `total`.
async fn when_published(progress: &AtomicU64, at_least: u64) {
    let deadline = Instant::now() + SCENARIO_DEADLINE;
    while progress.load(Relaxed) < at_least {
        assert!(
            Instant::now() < deadline,
            "publisher stalled at {}",
            progress.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Scenario {
    name: &'static str,
    users: u64,
    per_user: u64,
    chaos: Chaos,
}

/// Connects every client (before the first publish), runs the publisher and `disruption`
/// (given the publisher's progress), then checks the guarantee and prints the counts.
async fn run<F, Fut>(scenario: Scenario, redis_url: String, gateways: &[SocketAddr], disruption: F)
where
    F: FnOnce(Arc<AtomicU64>, u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Scenario {
        name,
        users,
        per_user,
        chaos,
    } = scenario;
    let (ready_tx, mut ready) = mpsc::channel(users as usize);
    let mut clients = Vec::new();
    for u in 1..=users {
        // Spread users over the replicas; each client fails over to the next one.
        let mut order = gateways.to_vec();
        order.rotate_left(u as usize % gateways.len());
        clients.push(tokio::spawn(resuming_client(
            u,
            order,
            per_user,
            chaos,
            ready_tx.clone(),
        )));
    }
    for _ in 0..users {
        tokio::time::timeout(DEADLINE, ready.recv())
            .await
            .expect("every client connects");
    }
    let progress = Arc::new(AtomicU64::new(0));
    let total = users * per_user;
    let publisher = tokio::spawn(steady_publisher(
        redis_url,
        users,
        per_user,
        Duration::from_micros(500),
        progress.clone(),
    ));
    disruption(progress, total).await;
    let published = publisher.await.unwrap();

    let (mut delivered, mut lost, mut duplicated, mut disordered, mut missed, mut reconnects) =
        (0, 0, 0, 0, 0, 0);
    for client in clients {
        let tally = tokio::time::timeout(SCENARIO_DEADLINE, client)
            .await
            .expect("client finished")
            .unwrap();
        let (l, d, o) = tally.report(per_user);
        delivered += tally.received.len() as u64;
        lost += l;
        duplicated += d;
        disordered += o;
        missed += tally.missed_frames;
        reconnects += tally.reconnects;
    }
    eprintln!(
        "resume scenario {name}: published {published}, delivered {delivered}, lost {lost}, \
         duplicated {duplicated}, out of order {disordered}, missed frames {missed}, reconnects {reconnects}"
    );
    assert_eq!(published, total);
    assert_eq!((lost, duplicated, disordered), (0, 0, 0), "scenario {name}");
    assert_eq!(delivered, published);
    assert_eq!(missed, 0, "history covered every gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_loses_nothing_for_clients_that_resume_elsewhere() {
    let redis = RedisServer::start();
    let mut doomed = Gateway::start(Some(&redis), &[]);
    let survivor = Gateway::start(Some(&redis), &[]);
    let scenario = Scenario {
        name: "replica SIGKILL",
        users: 20,
        per_user: 60,
        chaos: Chaos::None,
    };
    run(
        scenario,
        redis.url(),
        &[doomed.addr, survivor.addr],
        |progress, total| async move {
            when_published(&progress, total / 3).await;
            doomed.kill();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_for_connected_clients() {
    let mut redis = RedisServer::start_persistent();
    let gateway = Gateway::start(Some(&redis), &[]);
    let scenario = Scenario {
        name: "Redis restart",
        users: 20,
        per_user: 60,
        chaos: Chaos::None,
    };
    let (url, addr) = (redis.url(), gateway.addr);
    let (redis_handle, gateway_handle) = (&mut redis, &gateway);
    run(scenario, url, &[addr], |progress, total| async move {
        let (redis, gateway) = (redis_handle, gateway_handle);
        when_published(&progress, total / 3).await;
        tokio::task::block_in_place(|| {
            redis.kill();
            // The node has noticed (its subscriber link is down) before Redis comes back.
            gateway.wait_for_readiness(503);
            redis.restart();
            gateway.wait_for_readiness(200);
        });
    })
    .await;
    assert!(gateway.metric("gateway_redis_reconnects_total") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_dropping_at_random_lose_nothing() {
    let redis = RedisServer::start();
    let a = Gateway::start(Some(&redis), &[]);
    let b = Gateway::start(Some(&redis), &[]);
    let scenario = Scenario {
        name: "random reconnects",
        users: 20,
        per_user: 60,
        chaos: Chaos::DropEvery {
            seed: 0x5eed,
            max: 15,
        },
    };
    run(scenario, redis.url(), &[a.addr, b.addr], |_, _| async {}).await;
}

#[tokio::test]
async fn resuming_from_beyond_retained_history_says_so_then_continues() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[("GW__HISTORY__REPLAY_LIMIT", "50")]);
    let options = publisher::PublisherOptions {
        history_max_len: 10,
        ..Default::default()
    };
    let publisher = Publisher::with_options(&redis.url(), options).unwrap();
    let first = publisher
        .publish_with_receipt(user(9), note(9, 0))
        .await
        .unwrap()
        .id;
    // Far more than the history keeps (Redis trims in whole blocks, so roughly).
    let mut last = first;
    for n in 1..400 {
        last = publisher
            .publish_with_receipt(user(9), note(9, n))
            .await
            .unwrap()
            .id;
    }
    let mut client = WsClient::connect(&format!("{}?last_id={first}", gateway.ws_url("9"))).await;
    let missed = client.next_json().await;
    assert_eq!(
        missed["event"], "gateway.missed",
        "an explicit frame, never a silent gap: {missed}"
    );
    assert_eq!(
        missed["type"], "warning",
        "today's frontend shows it as a toast"
    );
    assert_eq!(missed["data"]["since"], first.to_string());
    // Then the newest retained ones (at most the replay limit), in order, up to the last.
    let mut previous = None;
    let mut count = 0;
    loop {
        let frame = client.next_json().await;
        let n = frame["data"]["n"].as_u64().unwrap();
        assert!(previous < Some(n), "in order");
        previous = Some(n);
        count += 1;
        if frame["id"] == last.to_string() {
            break;
        }
    }
    let retained: usize = redis::cmd("XLEN")
        .arg(user(9).history_key())
        .query(&mut redis.connection())
        .unwrap();
    assert!(retained < 400, "history was trimmed");
    assert_eq!(
        count,
        retained.min(50),
        "everything retained, up to the replay limit"
    );
    // And live delivery continues after the replay.
    publisher.publish(user(9), note(9, 400)).await.unwrap();
    assert_eq!(client.next_json().await["data"]["n"], 400);

    // A client that saw up to 399 is replayed 400 (no missed frame), then gets 401 live.
    let mut current = WsClient::connect(&format!("{}?last_id={last}", gateway.ws_url("9"))).await;
    publisher.publish(user(9), note(9, 401)).await.unwrap();
    assert_eq!(current.next_json().await["data"]["n"], 400);
    assert_eq!(current.next_json().await["data"]["n"], 401);
}

#[tokio::test]
async fn a_malformed_last_id_is_refused_before_the_upgrade() {
    let gateway = Gateway::start(None, &[]);
    let (status, body) =
        e2e::http_get(gateway.addr, "/ws/notifications/1/?last_id=yesterday").unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("invalid_last_id"), "{body}");
}

#[tokio::test]
async fn single_node_mode_resumes_from_its_memory_history() {
    let gateway = Gateway::start(None, &[]);
    let publish = |n: u64| {
        let body = format!(
            r#"{{"user": 5, "type": "info", "message": "note {n}", "data": {{"n": {n}, "user": 5}}}}"#
        );
        let (status, answer) =
            e2e::http_post_json(gateway.internal, "/api/publish", &[], &body).unwrap();
        assert_eq!(status, 200, "{answer}");
    };
    let mut client = WsClient::connect(&gateway.ws_url("5")).await;
    publish(0);
    let first = client.next_json().await;
    let last_id = first["id"]
        .as_str()
        .expect("frames carry their id")
        .to_owned();
    client.close().await;
    for n in 1..=3 {
        publish(n);
    }
    let mut resumed =
        WsClient::connect(&format!("{}?last_id={last_id}", gateway.ws_url("5"))).await;
    for n in 1..=3 {
        assert_eq!(resumed.next_json().await["data"]["n"], n);
    }

    // The inbox endpoint pages through the same history, newest first.
    let (status, body) = e2e::http_get(gateway.addr, "/api/notifications/5?limit=3").unwrap();
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let ns: Vec<u64> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![3, 2, 1]);
    let before = page["next_before"].as_str().unwrap();
    let (_, body) = e2e::http_get(
        gateway.addr,
        &format!("/api/notifications/5?limit=3&before={before}"),
    )
    .unwrap();
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["notifications"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_before"], Value::Null);
}
