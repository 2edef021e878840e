//! `gw-bench --scenario storm`: a replica dies under load and its clients all come back at once.
//!
//! Two replicas (the first is killed), `--sockets` sockets in all, one per user, split evenly;
//! notifications published at `--rate` through the history script for `--duration` seconds.
//! After `--kill-after` seconds the first replica gets SIGKILL; each of its clients waits a
//! uniform random 0..`--jitter-ms` and reconnects to the survivor with `last_id` (the id of
//! the last notification it received), as a browser does. Clients are worker processes
//! (`gw-bench storm-worker PLAN`, each holding at most `--sockets-per-worker`), as many for
//! the clients of one replica as for the other's, so that the sockets that are never
//! disconnected are not read by the event loop that also runs the reconnects.
//!
//! Reported: the time from the kill until every client of the dead replica was open again
//! (and its p50/p99), lost / duplicated / out-of-order / missed-frame counts over every
//! socket, the latency p99 of the sockets that were never disconnected for notifications
//! sent after the kill, and the survivor's RSS before and at its peak. Where loss happens:
//! per class of socket (never disconnected, reconnected), the lost notifications by when they
//! were sent (before the kill, while the socket was away, after it reopened), missed frames,
//! and the survivor's warnings counted by message.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use publisher::{Publisher, PublisherOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::histogram::Histogram;
use crate::protocol::{expected, now_ns};
use crate::{
    millis, publish_at_rate, round, spawn_self, stage, worker, Options, SocketCount, Source, Stage,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StormPlan {
    /// `targets[0]` is the replica that is killed, `targets[1]` the survivor.
    targets: Vec<SocketAddr>,
    source_ip: Ipv4Addr,
    /// User indexes of this worker (id = `user_base + index`): `2 * j + parity` for j in
    /// `first..first + count`. Index k starts on `targets[k % 2]`, so a worker holds the
    /// clients of one replica only: the undisturbed sockets' latency is not measured on the
    /// event loop that also runs the reconnects.
    parity: u64,
    first: u64,
    count: u64,
    user_base: u64,
    users: u64,
    jwt_secret: Option<String>,
    jitter_ms: u64,
    connect_inflight: usize,
}

impl StormPlan {
    /// The user index of this worker's `i`th socket.
    fn user_index(&self, i: u64) -> u64 {
        (self.first + i) * 2 + self.parity
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StormCommand {
    /// The first replica was killed at `at_ns` (ns since the epoch); notification `n` was
    /// sent at `publish_start_ns + n / rate` s (for the send time of lost notifications).
    Killed {
        at_ns: u64,
        publish_start_ns: u64,
        rate: f64,
    },
    /// `messages` were published in all: report once they arrived or `quiet_ms` passed.
    Drain { messages: u64, quiet_ms: u64 },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StormReport {
    opened: u64,
    failed: u64,
    disconnected: u64,
    resumed: u64,
    /// Kill to reopened, µs, of each disconnected socket that reopened.
    resume_us: Histogram,
    last_resume_ns: u64,
    expected: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    missed_frames: u64,
    misrouted: u64,
    malformed: u64,
    reconnect_failures: BTreeMap<String, u64>,
    /// Latency, µs, on sockets never disconnected, of notifications sent after the kill.
    undisturbed_after_kill_us: Histogram,
    /// The same before the kill.
    before_kill_us: Histogram,
    /// The highest of those latencies (µs) per 250 ms of send time after the kill: when the
    /// undisturbed sockets waited.
    undisturbed_max_us_by_window: Vec<u64>,
    /// Where the loss is: sockets never disconnected and sockets that reconnected.
    undisturbed: ClassReport,
    reconnected: ClassReport,
}

/// Loss detail of one class of sockets.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ClassReport {
    sockets: u64,
    lost: u64,
    sockets_with_loss: u64,
    duplicated: u64,
    out_of_order: u64,
    missed_frames: u64,
    sockets_with_missed_frame: u64,
    /// Lost on sockets that got a missed frame (the gateway said so).
    lost_with_missed_frame: u64,
    /// Lost notifications by when they were sent: before the kill, between the kill and the
    /// socket's reopening (the resume replay's part), after it (live delivery's part).
    lost_sent_before_kill: u64,
    lost_sent_while_away: u64,
    lost_sent_after_reopen: u64,
    /// Send time of each lost notification relative to its socket's reopening (or to the
    /// kill for undisturbed sockets), ms.
    lost_at_ms: Vec<i32>,
}

impl ClassReport {
    fn merge(&mut self, other: &ClassReport) {
        self.sockets += other.sockets;
        self.lost += other.lost;
        self.sockets_with_loss += other.sockets_with_loss;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.missed_frames += other.missed_frames;
        self.sockets_with_missed_frame += other.sockets_with_missed_frame;
        self.lost_with_missed_frame += other.lost_with_missed_frame;
        self.lost_sent_before_kill += other.lost_sent_before_kill;
        self.lost_sent_while_away += other.lost_sent_while_away;
        self.lost_sent_after_reopen += other.lost_sent_after_reopen;
        self.lost_at_ms.extend_from_slice(&other.lost_at_ms);
    }

    fn json(&self, reference: &str) -> Value {
        let mut at = self.lost_at_ms.clone();
        at.sort_unstable();
        let mut out = json!({
            "sockets": self.sockets,
            "lost": self.lost,
            "sockets_with_loss": self.sockets_with_loss,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "missed_frames": self.missed_frames,
            "sockets_with_missed_frame": self.sockets_with_missed_frame,
            "lost_with_missed_frame": self.lost_with_missed_frame,
            "lost_sent": {
                "before_kill": self.lost_sent_before_kill,
                "while_away": self.lost_sent_while_away,
                "after_reopen": self.lost_sent_after_reopen,
            },
        });
        out[format!("lost_sent_ms_after_{reference}")] = json!({
            "min": at.first(),
            "p50": at.get(at.len() / 2),
            "max": at.last(),
        });
        out
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StormEvent {
    Open { opened: u64, failed: u64 },
    Report(Box<StormReport>),
}

/// Windows of send time after the kill for [`StormReport::undisturbed_max_us_by_window`].
const WINDOW_NS: u64 = 250_000_000;
const WINDOWS: usize = 40;

/// One client: what it saw.
#[derive(Default)]
struct Client {
    seen: Vec<u64>,
    max_seq: Option<u64>,
    last_id: Option<String>,
    disconnected: bool,
    resumed_ns: Option<u64>,
    duplicated: u64,
    out_of_order: u64,
    missed_frames: u64,
}

#[derive(Default)]
struct Shared {
    kill_ns: AtomicU64,
    publish_start_ns: AtomicU64,
    /// Notifications per second, as `f64` bits.
    rate_bits: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    missed_frames: AtomicU64,
    misrouted: AtomicU64,
    malformed: AtomicU64,
    distinct: AtomicU64,
    undisturbed: Mutex<Histogram>,
    undisturbed_windows: Mutex<Vec<u64>>,
    before: Mutex<Histogram>,
    failures: Mutex<BTreeMap<String, u64>>,
}

pub fn worker_main(args: &[String]) -> ExitCode {
    let Some(Ok(plan)) = args.first().map(|a| serde_json::from_str::<StormPlan>(a)) else {
        eprintln!("gw-bench storm-worker: bad or missing plan (started by gw-bench itself)");
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(worker_run(plan));
    ExitCode::SUCCESS
}

fn emit(event: &StormEvent) {
    println!(
        "{}",
        serde_json::to_string(event).expect("events serialise")
    );
}

fn url(plan: &StormPlan, target: SocketAddr, user: u64, last_id: Option<&str>) -> String {
    let mut url = format!("ws://{target}/ws/notifications/{user}/?");
    if let Some(id) = last_id {
        url.push_str(&format!("last_id={id}&"));
    }
    if let Some(secret) = &plan.jwt_secret {
        let claims = e2e::jwt::access_claims(user, 3600);
        url.push_str("token=");
        url.push_str(&e2e::jwt::hs256_with(&claims, secret));
    }
    url
}

async fn worker_run(plan: StormPlan) {
    let plan = Arc::new(plan);
    let shared = Arc::new(Shared::default());
    let clients: Vec<Arc<Mutex<Client>>> = (0..plan.count)
        .map(|_| Arc::new(Mutex::new(Client::default())))
        .collect();
    // Open every socket.
    let opened: Vec<Option<worker::Ws>> = futures_util::stream::iter(0..plan.count)
        .map(|i| {
            let plan = plan.clone();
            async move {
                let k = plan.user_index(i);
                let target = plan.targets[(k % 2) as usize];
                let url = url(&plan, target, plan.user_base + k, None);
                worker::open(target, plan.source_ip, &url).await.ok()
            }
        })
        .buffered(plan.connect_inflight.max(1))
        .collect()
        .await;
    let failed = opened.iter().filter(|w| w.is_none()).count() as u64;
    emit(&StormEvent::Open {
        opened: plan.count - failed,
        failed,
    });
    for (i, ws) in opened.into_iter().enumerate() {
        if let Some(ws) = ws {
            tokio::spawn(client_task(
                plan.clone(),
                shared.clone(),
                clients[i].clone(),
                plan.user_index(i as u64),
                ws,
            ));
        }
    }

    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = commands.next_line().await {
        match serde_json::from_str::<StormCommand>(&line) {
            Ok(StormCommand::Killed {
                at_ns,
                publish_start_ns,
                rate,
            }) => {
                shared.publish_start_ns.store(publish_start_ns, Relaxed);
                shared.rate_bits.store(rate.to_bits(), Relaxed);
                shared.kill_ns.store(at_ns, Relaxed);
            }
            Ok(StormCommand::Drain { messages, quiet_ms }) => {
                let report = drain(&plan, &shared, &clients, messages, quiet_ms, failed).await;
                emit(&StormEvent::Report(Box::new(report)));
            }
            Err(e) => eprintln!("gw-bench storm-worker: bad command {line:?}: {e}"),
        }
    }
}

#[derive(Deserialize)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    u: Option<u64>,
    s: Option<u64>,
    t: Option<u64>,
}

async fn client_task(
    plan: Arc<StormPlan>,
    shared: Arc<Shared>,
    client: Arc<Mutex<Client>>,
    k: u64,
    mut ws: worker::Ws,
) {
    let user = plan.user_base + k;
    loop {
        // Read until the connection ends.
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let now = now_ns();
            let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
                shared.malformed.fetch_add(1, Relaxed);
                continue;
            };
            let mut c = client.lock().unwrap();
            if frame.id.is_some() {
                c.last_id = frame.id.clone();
            }
            if frame.event.as_deref() == Some("gateway.missed") {
                shared.missed_frames.fetch_add(1, Relaxed);
                c.missed_frames += 1;
                continue;
            }
            let Some(Data {
                u: Some(u),
                s: Some(s),
                t: Some(t),
            }) = frame.data
            else {
                shared.malformed.fetch_add(1, Relaxed);
                continue;
            };
            if u != user {
                shared.misrouted.fetch_add(1, Relaxed);
                continue;
            }
            let (word, bit) = ((s / 64) as usize, 1u64 << (s % 64));
            if c.seen.len() <= word {
                c.seen.resize(word + 1, 0);
            }
            if c.seen[word] & bit != 0 {
                shared.duplicated.fetch_add(1, Relaxed);
                c.duplicated += 1;
                continue;
            }
            c.seen[word] |= bit;
            shared.distinct.fetch_add(1, Relaxed);
            if c.max_seq.is_some_and(|m| s < m) {
                shared.out_of_order.fetch_add(1, Relaxed);
                c.out_of_order += 1;
            }
            c.max_seq = c.max_seq.max(Some(s));
            let latency = now.saturating_sub(t) / 1000;
            let kill = shared.kill_ns.load(Relaxed);
            if kill == 0 || t < kill {
                shared.before.lock().unwrap().record(latency);
            } else if !c.disconnected {
                shared.undisturbed.lock().unwrap().record(latency);
                let window = ((t - kill) / WINDOW_NS) as usize;
                if window < WINDOWS {
                    let mut windows = shared.undisturbed_windows.lock().unwrap();
                    if windows.len() <= window {
                        windows.resize(window + 1, 0);
                    }
                    windows[window] = windows[window].max(latency);
                }
            }
        }
        // The replica is gone: back to the survivor after a random pause, with the last id.
        let last_id = {
            let mut c = client.lock().unwrap();
            if c.disconnected {
                // The survivor closed us too: nothing more to do in this scenario.
                return;
            }
            c.disconnected = true;
            // Every client connected before the first notification: one that has received
            // nothing yet resumes from the start of its history, as a client that fetched its
            // inbox first would pass the newest id it saw.
            c.last_id.clone().or_else(|| Some("0-0".to_owned()))
        };
        let pause = if plan.jitter_ms > 0 {
            rand_below(plan.jitter_ms * 1000, k)
        } else {
            0
        };
        sleep(Duration::from_micros(pause)).await;
        let survivor = plan.targets[1];
        let url = url(&plan, survivor, user, last_id.as_deref());
        let mut attempt = 0;
        ws = loop {
            match worker::open(survivor, plan.source_ip, &url).await {
                Ok(ws) => break ws,
                Err(reason) => {
                    *shared.failures.lock().unwrap().entry(reason).or_default() += 1;
                    attempt += 1;
                    if attempt > 20 {
                        return;
                    }
                    sleep(Duration::from_millis(100 * attempt)).await;
                }
            }
        };
        client.lock().unwrap().resumed_ns = Some(now_ns());
    }
}

/// A cheap uniform-ish number below `bound` (no rand crate): a hash of the socket index and
/// the time.
fn rand_below(bound: u64, salt: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one((salt, now_ns())) % bound.max(1)
}

async fn drain(
    plan: &StormPlan,
    shared: &Shared,
    clients: &[Arc<Mutex<Client>>],
    messages: u64,
    quiet_ms: u64,
    failed: u64,
) -> StormReport {
    let expected_total: u64 = (0..plan.count)
        .map(|i| expected(plan.user_index(i), messages, plan.users))
        .sum();
    let (mut last, mut since) = (shared.distinct.load(Relaxed), Instant::now());
    while shared.distinct.load(Relaxed) < expected_total {
        let now = shared.distinct.load(Relaxed);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= Duration::from_millis(quiet_ms) {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    let kill = shared.kill_ns.load(Relaxed);
    let mut report = StormReport {
        opened: plan.count - failed,
        failed,
        expected: expected_total,
        ..StormReport::default()
    };
    let mut resume_us = Histogram::default();
    let publish_start = shared.publish_start_ns.load(Relaxed);
    let rate = f64::from_bits(shared.rate_bits.load(Relaxed));
    for (i, client) in clients.iter().enumerate() {
        let c = client.lock().unwrap();
        let k = plan.user_index(i as u64);
        let want = expected(k, messages, plan.users);
        let lost: Vec<u64> = (0..want)
            .filter(|s| {
                c.seen
                    .get((s / 64) as usize)
                    .is_none_or(|w| w & (1 << (s % 64)) == 0)
            })
            .collect();
        report.delivered += want - lost.len() as u64;
        report.lost += lost.len() as u64;
        if c.disconnected {
            report.disconnected += 1;
        }
        let class = if c.disconnected {
            &mut report.reconnected
        } else {
            &mut report.undisturbed
        };
        class.sockets += 1;
        class.lost += lost.len() as u64;
        class.sockets_with_loss += u64::from(!lost.is_empty());
        class.duplicated += c.duplicated;
        class.out_of_order += c.out_of_order;
        class.missed_frames += c.missed_frames;
        if c.missed_frames > 0 {
            class.sockets_with_missed_frame += 1;
            class.lost_with_missed_frame += lost.len() as u64;
        }
        // Reconnected sockets: relative to their reopening (the kill if they never did).
        let reference = match (c.disconnected, c.resumed_ns) {
            (true, Some(at)) => at,
            _ => kill,
        };
        for s in lost {
            let sent = publish_start + ((s * plan.users + k) as f64 / rate * 1e9) as u64;
            if sent < kill {
                class.lost_sent_before_kill += 1;
            } else if sent < reference {
                class.lost_sent_while_away += 1;
            } else {
                class.lost_sent_after_reopen += 1;
            }
            class
                .lost_at_ms
                .push(((sent as i64 - reference as i64) / 1_000_000) as i32);
        }
        if let Some(at) = c.resumed_ns {
            report.resumed += 1;
            resume_us.record(at.saturating_sub(kill) / 1_000);
            report.last_resume_ns = report.last_resume_ns.max(at);
        }
    }
    report.resume_us = resume_us.packed();
    report.duplicated = shared.duplicated.load(Relaxed);
    report.out_of_order = shared.out_of_order.load(Relaxed);
    report.missed_frames = shared.missed_frames.load(Relaxed);
    report.misrouted = shared.misrouted.load(Relaxed);
    report.malformed = shared.malformed.load(Relaxed);
    report.reconnect_failures = shared.failures.lock().unwrap().clone();
    report.undisturbed_after_kill_us = shared.undisturbed.lock().unwrap().packed();
    report.before_kill_us = shared.before.lock().unwrap().packed();
    report.undisturbed_max_us_by_window = shared.undisturbed_windows.lock().unwrap().clone();
    report
}

/// Calls and µs per command from `INFO commandstats` (scripts count under evalsha, the
/// commands they run under their own names too).
fn command_stats(conn: &mut redis::Connection) -> BTreeMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))?
                    .parse::<u64>()
                    .ok()
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// The cumulative buckets of a gateway's publish-to-fan-out latency histogram (`/metrics`).
fn hub_latency(internal: SocketAddr) -> Option<Vec<(String, u64)>> {
    let (status, body) = e2e::http_get(internal, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    Some(
        body.lines()
            .filter_map(|l| l.strip_prefix("gateway_delivery_latency_ms_bucket{le=\""))
            .filter_map(|rest| {
                let (le, n) = rest.split_once("\"} ")?;
                Some((le.to_owned(), n.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// The survivor's warnings, counted by message (fields and timestamps dropped), most
/// frequent first: what went wrong on the gateway side, in a few lines.
fn warnings(log: &str) -> Vec<(String, u64)> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for line in log.lines() {
        // Strip colour codes.
        let mut plain = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(ch) = chars.next() {
            if ch == '\u{1b}' {
                for end in chars.by_ref() {
                    if end.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(ch);
            }
        }
        let Some((_, rest)) = plain.split_once(" WARN ") else {
            continue;
        };
        let message = rest.split_once(": ").map_or(rest, |(_, m)| m);
        let words: Vec<&str> = message
            .split_whitespace()
            .take_while(|w| !w.contains('='))
            .collect();
        *counts.entry(words.join(" ")).or_default() += 1;
    }
    let mut sorted: Vec<(String, u64)> = counts.into_iter().collect();
    sorted.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    sorted.truncate(6);
    sorted
}

pub async fn run(o: Options) -> Result<Value, String> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let Stage {
        own_redis,
        own_cluster,
        own_gateways,
        redis_url,
        targets,
        internals,
        pids,
        mut redis_conn,
        ..
    } = stage(&o)?;
    let _redis = &own_redis;
    if own_gateways.len() != 2 {
        return Err("storm starts its own two replicas (no --gateway, --replicas 2)".into());
    }
    let users = match o.sockets {
        SocketCount::Exactly(n) if n > 0 => n,
        _ => return Err("storm needs --sockets N > 0".into()),
    };
    let rate = if o.rate > 0.0 { o.rate } else { 2000.0 };
    let duration = o.duration_secs.unwrap_or(20.0);
    let messages = (rate * duration).round() as u64;
    // The same number of workers for each replica's clients.
    let per_replica = users.div_ceil(2).div_ceil(o.sockets_per_worker).max(1);
    let workers = 2 * per_replica;
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let (events_tx, mut events) = tokio::sync::mpsc::channel::<(usize, StormEvent)>(64);
    let mut stdins = Vec::new();
    let mut children = Vec::new();
    say!(
        "storm: {users} sockets on 2 replicas from {workers} worker(s); {rate}/s for {duration} s; SIGKILL of replica 0 after {} s",
        o.kill_after_secs
    );
    for w in 0..workers {
        let parity = w % 2;
        let class = (users + 1 - parity) / 2;
        let per_worker = class.div_ceil(per_replica);
        let first = (w / 2 * per_worker).min(class);
        let plan = StormPlan {
            targets: targets.clone(),
            source_ip: Ipv4Addr::new(127, 0, 2, 10 + w as u8),
            parity,
            first,
            count: per_worker.min(class - first),
            user_base: o.user_base,
            users,
            jwt_secret: o.jwt_secret.clone(),
            jitter_ms: o.jitter_ms,
            connect_inflight: o.connect_inflight,
        };
        let mut child = spawn_self(&exe, "storm-worker", &plan)
            .map_err(|e| format!("spawning storm worker {w}: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        stdins.push(child.stdin.take().expect("piped"));
        children.push(child);
        let tx = events_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str::<StormEvent>(&line) {
                    if tx.send((w as usize, event)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(events_tx);
    let (mut opened, mut failed) = (0, 0);
    for _ in 0..workers {
        match events.recv().await {
            Some((
                _,
                StormEvent::Open {
                    opened: o_,
                    failed: f_,
                },
            )) => {
                opened += o_;
                failed += f_;
            }
            _ => return Err("a storm worker ended before it opened its sockets".into()),
        }
    }
    say!("{opened} sockets open, {failed} failed");
    let survivor_pid = pids[1];
    let rss_before = e2e::procfs::rss_kib(survivor_pid);

    let options = PublisherOptions {
        pool_size: 16,
        timeout: Duration::from_secs(10),
        ..PublisherOptions::default()
    };
    let publisher = match &own_cluster {
        Some(cluster) => {
            Publisher::with_cluster(publisher::ClusterConfig::new(cluster.seed_addrs()), options)
        }
        None => Publisher::with_options(&redis_url, options),
    }
    .map_err(|e| e.to_string())?;
    publisher.ping().await.map_err(|e| e.to_string())?;
    let source = Arc::new(Source {
        users,
        user_base: o.user_base,
        message: "x".repeat(o.message_bytes.max(1)),
    });
    // Sample the survivor's RSS while the storm runs.
    let peak = Arc::new(AtomicU64::new(rss_before.unwrap_or(0)));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(rss) = e2e::procfs::rss_kib(survivor_pid) {
                    peak.fetch_max(rss, Relaxed);
                }
                sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let publish_start_ns = now_ns();
    let publishing = {
        let (publisher, source) = (publisher.clone(), source.clone());
        tokio::spawn(async move { publish_at_rate(&publisher, &source, messages, rate).await })
    };
    sleep(Duration::from_secs_f64(o.kill_after_secs)).await;
    // SIGKILL without waiting for the process to be reaped: tearing down 10,000 sockets
    // takes the kernel a while, and this thread also publishes (the handle reaps it at the
    // end).
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(pids[0] as libc::pid_t, libc::SIGKILL);
    }
    let kill_ns = now_ns();
    let hub_latency_at_kill = internals.get(1).and_then(|a| hub_latency(*a));
    // CPU time from the kill to the end of publishing: who was busy during the storm (on a
    // cluster, Redis is its first master).
    let cpu_at_kill = (
        redis_conn.first_mut().and_then(crate::redis_cpu),
        e2e::procfs::cpu_time(pids[1]),
    );
    let commands_at_kill = redis_conn
        .first_mut()
        .map(command_stats)
        .unwrap_or_default();
    say!("replica 0 killed");
    let line = format!(
        "{}\n",
        serde_json::to_string(&StormCommand::Killed {
            at_ns: kill_ns,
            publish_start_ns,
            rate
        })
        .expect("serialises")
    );
    for stdin in &mut stdins {
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    let outcome = publishing.await.map_err(|e| e.to_string())?;
    let storm_secs = (now_ns() - kill_ns) as f64 / 1e9;
    let storm_cpu = json!({
        "wall": round(storm_secs, 2),
        "redis": cpu_at_kill
            .0
            .zip(redis_conn.first_mut().and_then(crate::redis_cpu))
            .map(|(a, b)| round(b - a, 2)),
        "survivor": cpu_at_kill
            .1
            .zip(e2e::procfs::cpu_time(pids[1]))
            .map(|(a, b)| round((b - a).as_secs_f64(), 2)),
    });
    say!("CPU seconds from the kill to the last publish: {storm_cpu}");
    // Redis's own accounting of what it spent that time on, costliest first.
    let mut redis_commands: Vec<(String, u64, u64)> = redis_conn
        .first_mut()
        .map(command_stats)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, (calls, usec))| {
            let (c0, u0) = commands_at_kill.get(&name).copied().unwrap_or_default();
            (name, calls.saturating_sub(c0), usec.saturating_sub(u0))
        })
        .filter(|(_, calls, _)| *calls > 0)
        .collect();
    redis_commands.sort_by_key(|(_, _, usec)| std::cmp::Reverse(*usec));
    redis_commands.truncate(6);
    say!("Redis after the kill (command, calls, µs): {redis_commands:?}");
    say!(
        "published {} ({} failed); publish call p99 {:?} µs, max {:?} µs",
        outcome.sent,
        outcome.failed,
        outcome.call_us.quantile(0.99),
        outcome.call_us.max()
    );
    let line = format!(
        "{}\n",
        serde_json::to_string(&StormCommand::Drain {
            messages,
            quiet_ms: o.quiet_ms
        })
        .expect("serialises")
    );
    for stdin in &mut stdins {
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut total = StormReport::default();
    for _ in 0..workers {
        match events.recv().await {
            Some((_, StormEvent::Report(r))) => {
                total.opened += r.opened;
                total.failed += r.failed;
                total.disconnected += r.disconnected;
                total.resumed += r.resumed;
                total.resume_us.merge(&r.resume_us);
                total.last_resume_ns = total.last_resume_ns.max(r.last_resume_ns);
                total.expected += r.expected;
                total.delivered += r.delivered;
                total.lost += r.lost;
                total.duplicated += r.duplicated;
                total.out_of_order += r.out_of_order;
                total.missed_frames += r.missed_frames;
                total.misrouted += r.misrouted;
                total.malformed += r.malformed;
                for (k, n) in r.reconnect_failures {
                    *total.reconnect_failures.entry(k).or_default() += n;
                }
                total
                    .undisturbed_after_kill_us
                    .merge(&r.undisturbed_after_kill_us);
                total.before_kill_us.merge(&r.before_kill_us);
                let windows = &mut total.undisturbed_max_us_by_window;
                if windows.len() < r.undisturbed_max_us_by_window.len() {
                    windows.resize(r.undisturbed_max_us_by_window.len(), 0);
                }
                for (w, us) in windows.iter_mut().zip(&r.undisturbed_max_us_by_window) {
                    *w = (*w).max(*us);
                }
                total.undisturbed.merge(&r.undisturbed);
                total.reconnected.merge(&r.reconnected);
            }
            _ => return Err("a storm worker ended before it reported".into()),
        }
    }
    sampling.abort();
    drop(stdins);
    for mut child in children {
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        let _ = child.kill().await;
    }
    let all_resumed_secs = (total.resumed > 0 && total.resumed == total.disconnected)
        .then(|| round(total.last_resume_ns.saturating_sub(kill_ns) as f64 / 1e9, 3));
    let survivor_warnings = warnings(&own_gateways[1].log());
    // The survivor's own publish-to-fan-out latency after the kill: where the undisturbed
    // sockets' wait was spent (before the hub: Redis and the subscriber; after: the sockets).
    let hub_latency_after_kill = match (
        hub_latency_at_kill,
        internals.get(1).and_then(|a| hub_latency(*a)),
    ) {
        (Some(before), Some(after)) => after
            .iter()
            .zip(&before)
            .map(|((le, n), (_, m))| (le.clone(), n.saturating_sub(*m)))
            .collect(),
        _ => Vec::new(),
    };
    let clean = failed == 0
        && outcome.failed == 0
        && total.lost == 0
        && total.duplicated == 0
        && total.out_of_order == 0
        && total.misrouted == 0
        && total.resumed == total.disconnected;
    if !clean {
        let log = own_gateways[1].log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        say!("survivor's log (last {} lines):", tail.len());
        for line in tail.iter().rev() {
            eprintln!("    {line}");
        }
    }
    say!(
        "resumed {} of {} in {:?} s; lost {}, duplicated {}, out of order {}, missed frames {}",
        total.resumed,
        total.disconnected,
        all_resumed_secs,
        total.lost,
        total.duplicated,
        total.out_of_order,
        total.missed_frames
    );
    for (name, class) in [
        ("undisturbed", &total.undisturbed),
        ("reconnected", &total.reconnected),
    ] {
        let mut at = class.lost_at_ms.clone();
        at.sort_unstable();
        say!(
            "{name}: {} sockets, lost {} on {} (sent before the kill {}, while away {}, after reopening {}; ms after {}: min {:?} p50 {:?} max {:?}), missed frames {} on {} (lost there {}), duplicated {}, out of order {}",
            class.sockets,
            class.lost,
            class.sockets_with_loss,
            class.lost_sent_before_kill,
            class.lost_sent_while_away,
            class.lost_sent_after_reopen,
            if name == "undisturbed" { "the kill" } else { "reopening" },
            at.first(),
            at.get(at.len() / 2),
            at.last(),
            class.missed_frames,
            class.sockets_with_missed_frame,
            class.lost_with_missed_frame,
            class.duplicated,
            class.out_of_order
        );
    }
    let windows: Vec<u64> = total
        .undisturbed_max_us_by_window
        .iter()
        .map(|us| us / 1000)
        .collect();
    say!("undisturbed: highest latency (ms) per 250 ms after the kill: {windows:?}");
    say!("survivor: fan-out latency after the kill (cumulative ≤ ms): {hub_latency_after_kill:?}");
    for (message, n) in &survivor_warnings {
        say!("survivor warned {n}x: {message}");
    }
    Ok(json!({
        "scenario": "storm",
        "clean": clean,
        "params": {
            "sockets": users,
            "replicas": 2,
            "rate": rate,
            "duration_secs": duration,
            "kill_after_secs": o.kill_after_secs,
            "jitter_ms": o.jitter_ms,
            "workers": workers,
            "auth": if o.jwt_secret.is_some() { "jwt" } else { "none" },
            "gateway_env": o.gateway_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        },
        "conditions": {
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "loadavg_at_start": loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        },
        "connect": { "ok": opened, "failed": failed },
        "publish": {
            "sent": outcome.sent,
            "failed": outcome.failed,
            "first_error": outcome.first_error,
            // A slow publish call means Redis (or this process) was the bottleneck.
            "call_ms": millis(&outcome.call_us),
        },
        "resume": {
            "disconnected": total.disconnected,
            "resumed": total.resumed,
            "all_resumed_secs": all_resumed_secs,
            "ms_after_kill": millis(&total.resume_us),
            "reconnect_failures": total.reconnect_failures,
        },
        "delivery": {
            "expected": total.expected,
            "delivered": total.delivered,
            "lost": total.lost,
            "duplicated": total.duplicated,
            "out_of_order": total.out_of_order,
            "missed_frames": total.missed_frames,
            "misrouted": total.misrouted,
            "malformed": total.malformed,
            "latency_ms_undisturbed_after_kill": millis(&total.undisturbed_after_kill_us),
            "latency_ms_before_kill": millis(&total.before_kill_us),
            "undisturbed_max_ms_per_250ms_after_kill": windows,
            "survivor_fan_out_latency_after_kill": hub_latency_after_kill
                .iter()
                .map(|(le, n)| json!({"le_ms": le, "count": n}))
                .collect::<Vec<_>>(),
            "undisturbed": total.undisturbed.json("kill"),
            "reconnected": total.reconnected.json("reopen"),
        },
        "survivor_warnings": survivor_warnings
            .iter()
            .map(|(m, n)| json!({"message": m, "count": n}))
            .collect::<Vec<_>>(),
        "survivor_rss_kib": { "before": rss_before, "peak": peak.load(Relaxed) },
        "cpu_seconds_after_kill": storm_cpu,
        "redis_commands_after_kill": redis_commands
            .iter()
            .map(|(name, calls, usec)| json!({"command": name, "calls": calls, "usec": usec}))
            .collect::<Vec<_>>(),
    }))
}
