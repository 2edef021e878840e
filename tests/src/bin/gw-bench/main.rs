//! `gw-bench`: load generator and referee for the notification gateway.
//!
//! It starts a Redis and gateway replicas (or uses the ones it is pointed at), opens N
//! WebSocket connections from worker processes (itself, re-executed as `gw-bench worker`),
//! publishes M notifications through publisher-lib, and prints ONE JSON line with every
//! figure: connect rate and failures, gateway memory per socket, publish and delivery rate,
//! publish-to-delivery latency, exact lost / duplicated / misrouted counts, and the CPU time
//! of gateway, Redis and the tool itself. Progress goes to stderr.
//!
//! Each notification carries `data: {u: user, s: sequence, t: send time in ns}`; the
//! schedule (notification n goes to user n % users with sequence n / users, see
//! [`protocol::schedule`]) lets every worker know exactly what each socket must receive.
//!
//! See docs/PERFORMANCE.md for the scenarios and how to run them on a release build.

mod histogram;
mod protocol;
mod worker;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{procfs, Gateway, RedisServer};
use publisher::{Level, Notification, Publisher, PublisherOptions, UserId};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{sleep_until, Instant};

use crate::histogram::Histogram;
use crate::protocol::{now_ns, schedule, Command, Event, Report, WorkerPlan};

const USAGE: &str = "\
usage: gw-bench [--scenario NAME] [OPTIONS]      one run, one JSON line on stdout

Scenarios (options given after them override their values):
  smoke  300 sockets (3 per user) on 2 replicas, 1,000 notifications as fast as possible
  a      1,000 sockets, 20,000 notifications as fast as possible
  b      1,000 sockets, 2,000 notifications per second for 10 s, then the echo floor: the
         same sockets, rate and frames against a trivial echo server (--echo-floor off: skip)
  c      10,000 idle sockets (memory), then one notification each
  d      as many sockets as one gateway process can hold (its open-file limit), one each
  d3     the same on each of 3 replicas behind one Redis
  p      publisher-lib alone: 200,000 notifications to 1,000 users, no socket, no gateway
  storm  2 replicas, 20,000 sockets, 2,000/s for 20 s; SIGKILL of one after 5 s, its clients
         reconnect to the other with last_id after 0-1 s of jitter
  churn  100 rounds of 1,000 sockets against one gateway: open (new users each round), one
         notification each, close (half politely, half aborted); RSS and open files per round

Options:
  --sockets N|cap        sockets in all (cap: open-file limit of the gateways, less what they use;
                         0: publish only, no gateway is started)
  --users N              with --sockets 0: users published to (default 1000)
  --per-user C           sockets per user (default 1)
  --messages M           notifications to publish (default: one per user)
  --rate R               notifications per second, one publish call each; 0 = as fast as
                         possible with publish_batch (default 0)
  --duration S           with --rate: publish for S seconds (sets --messages)
  --publish batch|single as fast as possible through publish_batch (default) or publish
  --batch B              notifications per publish_batch call (default 256)
  --inflight K           publish calls in flight at once (default 4)
  --pool N               the publisher's pooled Redis connections (default: --inflight; 16 with
                         --rate, where calls are not limited to --inflight)
  --message-bytes N      length of each notification's message text (default 16)
  --replicas K           gateways to start (default 1)
  --connect-rate R       new sockets per second, in all (default 10000; 0 = unbounded)
  --connect-inflight K   handshakes in flight per worker (default 256)
  --sockets-per-worker N client sockets per worker process (default 18000)
  --hold S               keep the sockets idle S seconds before publishing (default 0)
  --quiet-ms MS          a worker reports once nothing arrived for this long (default 3000)
  --gateway ADDR[,ADDR]  use running gateways instead of starting them (needs --redis)
  --gateway-pid PID[,..] their pids, for memory and CPU figures
  --gateway-internal ADDR[,ADDR]  their internal listeners (server.internal_bind), for the
                         gateways' own socket count from /metrics
  --redis URL            use this Redis instead of starting one
  --cluster M            start a Redis Cluster of M masters (no replicas) instead of one Redis:
                         gateways on redis.cluster_nodes, publishing with SPUBLISH
  --user-base N          first user id (default 1000000)
  --auth jwt|none        jwt (default, production): the gateways verify an HS256 access token
                         that every socket presents (?token=); none: no token
  --jwt-secret S         the HS256 secret (default: the test suite's); for --gateway runs
  --transport ws|sse     WebSocket sockets (default) or Server-Sent Events streams
  --kill-after S         storm: seconds of publishing before replica 0 is killed (default 5)
  --jitter-ms MS         storm: its clients reconnect after a uniform 0..MS pause (default 1000)
  --rounds N             churn: rounds (default 100)
  --churn-from N         churn: RSS growth is measured from the end of this round (default 20)
  --echo-floor on|off    after the run, the same sockets, schedule and timing against a trivial
                         WebSocket echo server, reported beside the gateway's latency (needs
                         --rate; default on for scenario b)
  --trace-frames DIR     each worker writes `user seq sent_ns received_ns` of every frame to
                         DIR/gateway-wN.tsv (and DIR/echo-wN.tsv), for tail analysis
  --set KEY=VALUE[,..]   extra environment of the gateways started (GW__SERVER__WORKERS=1, ...)

The gateways started are $GATEWAY_BIN if set, else gateway-e2e beside this executable:
build both with `cargo build --release -p e2e --bin gw-bench --bin gateway-e2e`.";

/// Every gateway setting the benchmark sets, in one place. The harness adds the bind address
/// and 2 workers; everything else is the production default.
fn gateway_settings(redis_url: &str, jwt_secret: Option<&str>) -> Vec<(&'static str, String)> {
    let auth = match jwt_secret {
        Some(secret) => vec![
            ("GW__AUTH__MODE", "jwt".to_owned()),
            ("GW__AUTH__HS256_SECRET", secret.to_owned()),
        ],
        None => vec![("GW__AUTH__MODE", "none".to_owned())],
    };
    auth.into_iter()
        .chain([
            // Per-socket debug logs (the harness default) would be measured too.
            ("RUST_LOG", "warn".to_owned()),
            ("GW__REDIS__URL", redis_url.to_owned()),
            // The harness shortens these for fault tests; a 1 s ping deadline is too tight for a
            // saturated machine and would measure reconnects instead of delivery.
            ("GW__REDIS__PING_INTERVAL_MS", "5000".to_owned()),
            ("GW__REDIS__RECONNECT_MAX_MS", "5000".to_owned()),
        ])
        .collect()
}

/// Publisher connections with --rate (and no --pool).
const RATE_POOL: usize = 16;

/// Files a gateway may still need with every socket open (Redis connections, accept
/// headroom) when `--sockets cap` is computed from its open-file limit.
const CAP_MARGIN: usize = 32;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        return worker::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("echo-server") {
        return echo::server_main();
    }
    if args.first().map(String::as_str) == Some("storm-worker") {
        return storm::worker_main(&args[1..]);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("gw-bench: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let run = async {
        match options.scenario.as_str() {
            "churn" => churn::run(options).await,
            "storm" => storm::run(options).await,
            _ => conduct(options).await,
        }
    };
    match runtime.block_on(run) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("gw-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

macro_rules! say {
    ($($arg:tt)*) => { eprintln!("[gw-bench] {}", format!($($arg)*)) };
}

mod churn;
mod echo;
mod sched;
mod storm;

#[derive(Debug, Clone, Copy, PartialEq)]
enum SocketCount {
    Exactly(u64),
    /// As many as the gateways' open-file limits allow.
    Cap,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PublishMode {
    Batch,
    Single,
}

#[derive(Debug, Clone)]
struct Options {
    scenario: String,
    sockets: SocketCount,
    per_user: u32,
    users: Option<u64>,
    messages: Option<u64>,
    rate: f64,
    duration_secs: Option<f64>,
    publish: PublishMode,
    batch: usize,
    inflight: usize,
    message_bytes: usize,
    replicas: usize,
    connect_rate: f64,
    connect_inflight: usize,
    sockets_per_worker: u64,
    hold_secs: f64,
    quiet_ms: u64,
    gateways: Vec<SocketAddr>,
    gateway_pids: Vec<u32>,
    gateway_internals: Vec<SocketAddr>,
    redis_url: Option<String>,
    /// Masters of a Redis Cluster started for the run; 0: one plain Redis.
    cluster: usize,
    user_base: u64,
    gateway_env: Vec<(String, String)>,
    /// The HS256 secret sockets sign their tokens with; `None`: auth.mode = none.
    jwt_secret: Option<String>,
    /// "ws" or "sse".
    transport: String,
    rounds: u64,
    churn_from: u64,
    kill_after_secs: f64,
    jitter_ms: u64,
    /// Measure the echo floor after the run ([`echo`]).
    echo_floor: bool,
    /// Each worker writes every frame's send and receive time into this directory.
    trace_dir: Option<String>,
    /// The publisher's connection pool (default: --inflight, or RATE_POOL with --rate).
    pool: Option<usize>,
}

impl Options {
    fn preset(name: &str) -> Result<Self, String> {
        let mut o = Options {
            scenario: name.to_owned(),
            sockets: SocketCount::Exactly(1000),
            per_user: 1,
            users: None,
            messages: None,
            rate: 0.0,
            duration_secs: None,
            publish: PublishMode::Batch,
            batch: 256,
            inflight: 4,
            message_bytes: 16,
            replicas: 1,
            connect_rate: 10_000.0,
            connect_inflight: 256,
            sockets_per_worker: 18_000,
            hold_secs: 0.0,
            quiet_ms: 3000,
            gateways: Vec::new(),
            gateway_pids: Vec::new(),
            gateway_internals: Vec::new(),
            redis_url: None,
            cluster: 0,
            user_base: 1_000_000,
            gateway_env: Vec::new(),
            jwt_secret: Some(e2e::jwt::SECRET.to_owned()),
            transport: "ws".to_owned(),
            rounds: 100,
            churn_from: 20,
            kill_after_secs: 5.0,
            jitter_ms: 1000,
            echo_floor: false,
            trace_dir: None,
            pool: None,
        };
        match name {
            "custom" => {}
            "smoke" => {
                o.sockets = SocketCount::Exactly(300);
                o.per_user = 3;
                o.replicas = 2;
                o.messages = Some(1000);
                o.quiet_ms = 2000;
            }
            "a" => o.messages = Some(20_000),
            "b" => {
                o.rate = 2000.0;
                o.duration_secs = Some(10.0);
                o.echo_floor = true;
            }
            "c" => o.sockets = SocketCount::Exactly(10_000),
            "d" => o.sockets = SocketCount::Cap,
            "d3" => {
                o.sockets = SocketCount::Cap;
                o.replicas = 3;
            }
            "churn" => {}
            "storm" => {
                o.sockets = SocketCount::Exactly(20_000);
                o.replicas = 2;
                o.rate = 2000.0;
                o.duration_secs = Some(20.0);
                o.sockets_per_worker = 10_000;
                o.quiet_ms = 10_000;
            }
            "p" => {
                o.sockets = SocketCount::Exactly(0);
                o.users = Some(1000);
                o.messages = Some(200_000);
            }
            other => return Err(format!("unknown scenario {other:?}")),
        }
        Ok(o)
    }

    fn parse(args: &[String]) -> Result<Self, String> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            pairs.push((flag.as_str(), value.as_str()));
        }
        let scenario = pairs
            .iter()
            .find(|(f, _)| *f == "--scenario")
            .map_or("custom", |(_, v)| v);
        let mut o = Options::preset(scenario)?;
        fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
        }
        fn list<T: std::str::FromStr>(flag: &str, v: &str) -> Result<Vec<T>, String> {
            v.split(',')
                .map(|s| {
                    s.trim()
                        .parse()
                        .map_err(|_| format!("{flag}: bad value {s:?}"))
                })
                .collect()
        }
        let mut echo_given = false;
        for (flag, v) in pairs {
            match flag {
                "--scenario" => {}
                "--sockets" if v == "cap" => o.sockets = SocketCount::Cap,
                "--sockets" => o.sockets = SocketCount::Exactly(num(flag, v)?),
                "--per-user" => o.per_user = num(flag, v)?,
                "--users" => o.users = Some(num(flag, v)?),
                "--messages" => o.messages = Some(num(flag, v)?),
                "--rate" => o.rate = num(flag, v)?,
                "--duration" => o.duration_secs = Some(num(flag, v)?),
                "--publish" => {
                    o.publish = match v {
                        "batch" => PublishMode::Batch,
                        "single" => PublishMode::Single,
                        _ => return Err(format!("--publish: {v:?} is not batch or single")),
                    }
                }
                "--batch" => o.batch = num(flag, v)?,
                "--inflight" => o.inflight = num(flag, v)?,
                "--message-bytes" => o.message_bytes = num(flag, v)?,
                "--replicas" => o.replicas = num(flag, v)?,
                "--connect-rate" => o.connect_rate = num(flag, v)?,
                "--connect-inflight" => o.connect_inflight = num(flag, v)?,
                "--sockets-per-worker" => o.sockets_per_worker = num(flag, v)?,
                "--hold" => o.hold_secs = num(flag, v)?,
                "--quiet-ms" => o.quiet_ms = num(flag, v)?,
                "--gateway" => o.gateways = list(flag, v)?,
                "--gateway-pid" => o.gateway_pids = list(flag, v)?,
                "--gateway-internal" => o.gateway_internals = list(flag, v)?,
                "--redis" => o.redis_url = Some(v.to_owned()),
                "--cluster" => o.cluster = num(flag, v)?,
                "--user-base" => o.user_base = num(flag, v)?,
                "--auth" => {
                    o.jwt_secret = match v {
                        "jwt" => o.jwt_secret.or_else(|| Some(e2e::jwt::SECRET.to_owned())),
                        "none" => None,
                        _ => return Err(format!("--auth: {v:?} is not jwt or none")),
                    }
                }
                "--jwt-secret" => o.jwt_secret = Some(v.to_owned()),
                "--transport" => {
                    if !matches!(v, "ws" | "sse") {
                        return Err(format!("--transport: {v:?} is not ws or sse"));
                    }
                    o.transport = v.to_owned();
                }
                "--rounds" => o.rounds = num(flag, v)?,
                "--kill-after" => o.kill_after_secs = num(flag, v)?,
                "--jitter-ms" => o.jitter_ms = num(flag, v)?,
                "--churn-from" => o.churn_from = num(flag, v)?,
                "--trace-frames" => o.trace_dir = Some(v.to_owned()),
                "--pool" => o.pool = Some(num(flag, v)?),
                "--echo-floor" => {
                    echo_given = true;
                    o.echo_floor = match v {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("--echo-floor: {v:?} is not on or off")),
                    }
                }
                "--set" => {
                    for pair in v.split(',') {
                        let (key, value) = pair
                            .split_once('=')
                            .ok_or_else(|| format!("--set: {pair:?} is not KEY=VALUE"))?;
                        o.gateway_env
                            .push((key.trim().to_owned(), value.to_owned()));
                    }
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        if o.per_user == 0 || o.batch == 0 || o.inflight == 0 || o.sockets_per_worker == 0 {
            return Err(
                "--per-user, --batch, --inflight and --sockets-per-worker must be > 0".into(),
            );
        }
        if o.replicas == 0 {
            return Err("--replicas must be at least 1".into());
        }
        if o.cluster > 0 && (o.redis_url.is_some() || !o.gateways.is_empty()) {
            return Err("--cluster starts its own Redis and gateways: no --redis/--gateway".into());
        }
        if !o.gateways.is_empty() && o.redis_url.is_none() {
            return Err("--gateway needs --redis: the URL the gateways subscribe to".into());
        }
        if o.rate < 0.0 || o.connect_rate < 0.0 {
            return Err("rates cannot be negative".into());
        }
        let floor_possible =
            o.rate > 0.0 && o.transport == "ws" && o.sockets != SocketCount::Exactly(0);
        if !echo_given && !floor_possible {
            // Scenario b's default, where the options given make a floor meaningless.
            o.echo_floor = false;
        }
        if o.echo_floor && o.rate == 0.0 {
            return Err("--echo-floor on needs --rate: the floor replays a steady schedule".into());
        }
        if o.echo_floor && (o.transport != "ws" || o.sockets == SocketCount::Exactly(0)) {
            return Err(
                "--echo-floor on needs WebSocket sockets (--transport ws, --sockets > 0); \
                 give --echo-floor off"
                    .into(),
            );
        }
        Ok(o)
    }
}

/// What the processes measured had used at one moment.
struct Snapshot {
    rss_kib: Vec<Option<u64>>,
    gateway_cpu: Vec<Option<f64>>,
    redis_cpu: Option<f64>,
    /// Per Redis process (each master of a cluster).
    redis_cpu_nodes: Vec<Option<f64>>,
    own_cpu: f64,
}

fn snapshot(pids: &[u32], redis: &mut [redis::Connection]) -> Snapshot {
    let nodes: Vec<Option<f64>> = redis.iter_mut().map(redis_cpu).collect();
    Snapshot {
        rss_kib: pids.iter().map(|&p| procfs::rss_kib(p)).collect(),
        gateway_cpu: pids
            .iter()
            .map(|&p| procfs::cpu_time(p).map(|d| d.as_secs_f64()))
            .collect(),
        redis_cpu: nodes.iter().copied().sum(),
        redis_cpu_nodes: nodes,
        own_cpu: procfs::own_cpu_time().as_secs_f64(),
    }
}

/// Redis's own CPU time (INFO cpu), so a Redis the tool did not start is measured too.
fn redis_cpu(conn: &mut redis::Connection) -> Option<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query(conn).ok()?;
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
}

/// The pid of a local Redis (INFO server).
fn redis_pid(conn: &mut redis::Connection) -> Option<u32> {
    let info: String = redis::cmd("INFO").arg("server").query(conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()
}

/// None when a value is missing, or when there is none (gateways without a known pid).
fn sum(values: &[Option<u64>]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.iter().copied().sum()
}

fn cpu_delta(before: &[Option<f64>], after: &[Option<f64>]) -> Option<f64> {
    if before.is_empty() {
        return None;
    }
    before
        .iter()
        .zip(after)
        .map(|(b, a)| Some(a.as_ref()? - b.as_ref()?))
        .sum()
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// Percentiles of a µs histogram, in milliseconds.
fn millis(h: &Histogram) -> Value {
    let ms = |v: Option<u64>| v.map(|us| round(us as f64 / 1000.0, 3));
    json!({
        "p50": ms(h.quantile(0.50)),
        "p90": ms(h.quantile(0.90)),
        "p99": ms(h.quantile(0.99)),
        "p999": ms(h.quantile(0.999)),
        "max": ms(h.max()),
        "count": h.count(),
    })
}

struct WorkerHandle {
    child: Child,
    stdin: ChildStdin,
}

/// What a run measures: Redis and the gateways, started here unless given.
struct Stage {
    own_redis: Option<RedisServer>,
    own_cluster: Option<e2e::topology::Cluster>,
    own_gateways: Vec<Gateway>,
    redis_url: String,
    /// One per Redis process measured (each master of a cluster).
    redis_conn: Vec<redis::Connection>,
    publish_only: bool,
    targets: Vec<SocketAddr>,
    /// Their internal listeners, where /metrics answers (empty when not known).
    internals: Vec<SocketAddr>,
    pids: Vec<u32>,
}

/// Step 1: Redis and gateways.
fn stage(o: &Options) -> Result<Stage, String> {
    let own_cluster = (o.cluster > 0).then(|| {
        say!("starting a Redis Cluster of {} masters", o.cluster);
        e2e::topology::Cluster::start(o.cluster, 0)
    });
    let own_redis = (o.redis_url.is_none() && own_cluster.is_none()).then(RedisServer::start);
    let redis_urls: Vec<String> = match (&o.redis_url, &own_redis, &own_cluster) {
        (Some(url), _, _) => vec![url.clone()],
        (None, Some(redis), _) => vec![redis.url()],
        (None, None, Some(cluster)) => cluster.nodes.iter().map(|n| n.url()).collect(),
        (None, None, None) => unreachable!("started above"),
    };
    let redis_url = match &own_cluster {
        Some(_) => String::new(),
        None => redis_urls[0].clone(),
    };
    let redis_conn = redis_urls
        .iter()
        .map(|url| {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
                .map_err(|e| format!("cannot reach Redis at {url}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let publish_only = o.sockets == SocketCount::Exactly(0);
    let own_gateways: Vec<Gateway> = if o.gateways.is_empty() && !publish_only {
        let mut settings = gateway_settings(&redis_url, o.jwt_secret.as_deref());
        if let Some(cluster) = &own_cluster {
            settings.push(("GW__REDIS__CLUSTER_NODES", cluster.seed_addrs().join(",")));
        }
        let settings: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(o.gateway_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        say!(
            "starting {} gateway(s): {}",
            o.replicas,
            e2e::gateway_binary().display()
        );
        (0..o.replicas)
            .map(|_| Gateway::start(None, &settings))
            .collect()
    } else {
        Vec::new()
    };
    let targets: Vec<SocketAddr> = if own_gateways.is_empty() {
        o.gateways.clone()
    } else {
        own_gateways.iter().map(|g| g.addr).collect()
    };
    // /metrics answers on the internal listener.
    let internals: Vec<SocketAddr> = if own_gateways.is_empty() {
        o.gateway_internals.clone()
    } else {
        own_gateways.iter().map(|g| g.internal).collect()
    };
    let pids: Vec<u32> = if own_gateways.is_empty() {
        o.gateway_pids.clone()
    } else {
        own_gateways.iter().map(Gateway::pid).collect()
    };

    Ok(Stage {
        own_redis,
        own_cluster,
        own_gateways,
        redis_url,
        redis_conn,
        publish_only,
        targets,
        internals,
        pids,
    })
}

/// How many sockets, users, notifications and worker processes a run uses.
struct Sizes {
    sockets: u64,
    per_user: u64,
    users: u64,
    messages: u64,
    workers: u64,
    users_per_worker: u64,
}

/// Step 2: the sizes, from the options and (for `--sockets cap`) the gateways' file limits.
fn sizes(
    o: &Options,
    publish_only: bool,
    targets: &[SocketAddr],
    pids: &[u32],
) -> Result<Sizes, String> {
    let sockets = match o.sockets {
        SocketCount::Exactly(n) => n,
        SocketCount::Cap => {
            if pids.len() != targets.len() {
                return Err("--sockets cap needs the pid of every gateway (--gateway-pid)".into());
            }
            let per_gateway = pids
                .iter()
                .map(|&pid| {
                    let limit = procfs::open_files_limit(pid).ok_or("no /proc limits")?;
                    let open = procfs::open_files(pid).ok_or("no /proc fd")?;
                    Ok::<_, String>(limit.saturating_sub(open + CAP_MARGIN) as u64)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let cap = per_gateway.iter().copied().min().unwrap_or(0);
            say!("open-file cap: {cap} sockets per gateway ({CAP_MARGIN} files kept spare)");
            cap * targets.len() as u64
        }
    };
    let per_user = u64::from(o.per_user);
    let users = match o.users {
        Some(users) if publish_only => users,
        _ => sockets / per_user,
    };
    let sockets = if publish_only { 0 } else { users * per_user };
    if users == 0 {
        return Err("no user to publish to: give --sockets or, with --sockets 0, --users".into());
    }
    let messages = match (o.messages, o.duration_secs) {
        (Some(m), _) => m,
        (None, Some(secs)) if o.rate > 0.0 => (o.rate * secs).round() as u64,
        _ => users,
    };
    let workers = sockets.div_ceil(o.sockets_per_worker);
    if workers > 200 {
        return Err("more than 200 worker processes: raise --sockets-per-worker".into());
    }
    let users_per_worker = users.div_ceil(workers.max(1));

    Ok(Sizes {
        sockets,
        per_user,
        users,
        messages,
        workers,
        users_per_worker,
    })
}

async fn conduct(o: Options) -> Result<Value, String> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let Stage {
        own_redis,
        own_cluster,
        own_gateways,
        redis_url,
        redis_conn: mut redis_conns,
        publish_only,
        targets,
        internals,
        pids,
    } = stage(&o)?;
    let Sizes {
        sockets,
        per_user,
        users,
        messages,
        workers,
        users_per_worker,
    } = sizes(&o, publish_only, &targets, &pids)?;
    // Keep what this run started alive until it ends.
    let _own = (&own_redis, &own_cluster, &own_gateways);

    // Connect.
    let idle = snapshot(&pids, &mut redis_conns);
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let (events_tx, mut events) = mpsc::channel::<(usize, Event)>(1024);
    let mut handles = Vec::new();
    say!(
        "opening {sockets} sockets ({users} users x {per_user}) on {} gateway(s) from {workers} worker(s)",
        targets.len()
    );
    for w in 0..workers as usize {
        let first = w as u64 * users_per_worker;
        let plan = WorkerPlan {
            worker: w,
            targets: targets.clone(),
            source_ip: Ipv4Addr::new(127, 0, 0, 10 + w as u8),
            users: first.min(users)..(first + users_per_worker).min(users),
            per_user: o.per_user,
            user_base: o.user_base,
            connect_rate: o.connect_rate / workers as f64,
            connect_inflight: o.connect_inflight,
            connect_timeout_ms: 30_000,
            jwt_secret: o.jwt_secret.clone(),
            transport: o.transport.clone(),
            echo: false,
            trace: o
                .trace_dir
                .as_ref()
                .map(|d| format!("{d}/gateway-w{w}.tsv")),
        };
        let mut child =
            spawn_self(&exe, "worker", &plan).map_err(|e| format!("spawning worker {w}: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take().expect("piped");
        let tx = events_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(event) => {
                        if tx.send((w, event)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("[gw-bench] worker {w} said {line:?}: {e}"),
                }
            }
        });
        handles.push(WorkerHandle { child, stdin });
    }
    drop(events_tx);

    let mut progress = vec![(0u64, 0u64); workers as usize];
    let mut connected = 0;
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut handshake_us = Histogram::default();
    let (mut first_start, mut last_done) = (u64::MAX, 0u64);
    let mut worker_cpu_connected = vec![0f64; workers as usize];
    let mut last_say = Instant::now();
    while connected < workers {
        let (w, event) = events
            .recv()
            .await
            .ok_or("a worker exited before it finished connecting")?;
        match event {
            Event::Progress { ok, failed } => {
                progress[w] = (ok, failed);
                if last_say.elapsed() >= Duration::from_secs(2) {
                    last_say = Instant::now();
                    let (o, f) = progress
                        .iter()
                        .fold((0, 0), |(a, b), (o, f)| (a + o, b + f));
                    say!("  {o} open, {f} failed");
                }
            }
            Event::Connected {
                ok: o_,
                failed: f_,
                errors: e_,
                connect_us,
                first_start_ns,
                last_done_ns,
                cpu_secs,
            } => {
                connected += 1;
                ok += o_;
                failed += f_;
                for (k, n) in e_ {
                    *errors.entry(k).or_default() += n;
                }
                handshake_us.merge(&connect_us);
                first_start = first_start.min(first_start_ns);
                last_done = last_done.max(last_done_ns);
                worker_cpu_connected[w] = cpu_secs;
            }
            Event::Report(_) => return Err(format!("worker {w} reported before it was asked")),
        }
    }
    let ramp_secs = last_done.saturating_sub(first_start) as f64 / 1e9;
    let at_connect = snapshot(&pids, &mut redis_conns);
    say!(
        "{ok} sockets open, {failed} failed, in {ramp_secs:.2} s ({:.0}/s)",
        ok as f64 / ramp_secs.max(1e-9)
    );
    let gateway_count: Option<u64> = if internals.is_empty() {
        None
    } else {
        internals.iter().map(|&a| sockets_open(a)).sum()
    };

    let mut at_hold = None;
    if o.hold_secs > 0.0 {
        say!("holding the sockets idle for {} s", o.hold_secs);
        tokio::time::sleep(Duration::from_secs_f64(o.hold_secs)).await;
        at_hold = Some(snapshot(&pids, &mut redis_conns));
    }

    // Publish.
    // With --rate, calls are not limited to --inflight: the pool is all that bounds them, and
    // one of four connections was too few (a Redis or conductor stall of a few ms held all four,
    // and the notifications stamped meanwhile queued for a connection: the tool's own tail).
    let pool_size = o
        .pool
        .unwrap_or(if o.rate > 0.0 { RATE_POOL } else { o.inflight })
        .clamp(1, 64);
    let options = PublisherOptions {
        pool_size,
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
    // Open every pooled connection now, not in the middle of the measurement.
    for result in futures_util::future::join_all((0..pool_size).map(|_| publisher.ping())).await {
        result.map_err(|e| e.to_string())?;
    }
    let before_publish = snapshot(&pids, &mut redis_conns);
    // Who waited for a CPU while notifications flowed (local processes only).
    let mut waiting = sched::Groups::default();
    waiting.add("gateway", pids.iter().copied());
    if o.redis_url.is_none() {
        waiting.add("redis", redis_conns.iter_mut().filter_map(redis_pid));
    }
    waiting.add("tool", [std::process::id()]);
    waiting.add("workers", handles.iter().filter_map(|h| h.child.id()));
    let waits_before = waiting.read();
    say!(
        "publishing {messages} notifications ({})",
        if o.rate > 0.0 {
            format!("{} per second, one publish call each", o.rate)
        } else {
            match o.publish {
                PublishMode::Batch => format!(
                    "as fast as possible, publish_batch of {}, {} in flight",
                    o.batch, o.inflight
                ),
                PublishMode::Single => {
                    format!("as fast as possible, publish, {} in flight", o.inflight)
                }
            }
        }
    );
    let source = Arc::new(Source {
        users,
        user_base: o.user_base,
        message: "x".repeat(o.message_bytes.max(1)),
    });
    let publish_start_ns = now_ns();
    let started = Instant::now();
    let outcome = if o.rate > 0.0 {
        publish_at_rate(&publisher, &source, messages, o.rate).await
    } else {
        publish_fast(&publisher, &source, messages, &o).await
    };
    let publish_secs = started.elapsed().as_secs_f64();
    say!(
        "published {} in {publish_secs:.2} s ({:.0}/s), {} failed",
        outcome.sent,
        outcome.sent as f64 / publish_secs.max(1e-9),
        outcome.failed
    );

    // Collect.
    let drain = Command::Drain {
        messages,
        users,
        quiet_ms: o.quiet_ms,
    };
    let line = format!(
        "{}\n",
        serde_json::to_string(&drain).expect("commands serialise")
    );
    for handle in &mut handles {
        handle
            .stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("telling a worker to report: {e}"))?;
    }
    let mut total = Report::default();
    let mut worker_cpu_publish = 0.0;
    let mut reports = 0;
    while reports < workers {
        let (w, event) = events
            .recv()
            .await
            .ok_or("a worker exited before it reported")?;
        if let Event::Report(r) = event {
            reports += 1;
            total.absorb(&r);
            worker_cpu_publish += r.cpu_secs - worker_cpu_connected[w];
        }
    }
    let waits_after = waiting.read();
    let end = snapshot(&pids, &mut redis_conns);
    let delivery_secs = total.last_rx_ns.saturating_sub(publish_start_ns) as f64 / 1e9;
    let frames = total.delivered + total.duplicated + total.misrouted + total.unexpected;
    say!(
        "delivered {} of {} ({:.0}/s), lost {}, duplicated {}, misrouted {}; latency p99 {:?} ms",
        total.delivered,
        total.expected,
        total.delivered as f64 / delivery_secs.max(1e-9),
        total.lost,
        total.duplicated,
        total.misrouted,
        total.latency_us.quantile(0.99).map(|us| us as f64 / 1000.0)
    );

    for mut handle in handles {
        drop(handle.stdin);
        if tokio::time::timeout(Duration::from_secs(5), handle.child.wait())
            .await
            .is_err()
        {
            let _ = handle.child.kill().await;
        }
    }

    // The echo floor, with the gateway and Redis idle beside it.
    let floor = if o.echo_floor {
        Some(echo::floor(&o, users, messages, workers, users_per_worker).await?)
    } else {
        None
    };
    let ratio = |q: f64| -> Option<f64> {
        let floor = floor.as_ref()?.latency_us.quantile(q)?;
        let gateway = total.latency_us.quantile(q)?;
        Some(round(gateway as f64 / floor.max(1) as f64, 2))
    };
    if let Some(floor) = &floor {
        let ms = |h: &Histogram, q: f64| h.quantile(q).map_or(f64::NAN, |us| us as f64 / 1000.0);
        say!(
            "latency p50 / p99: gateway {:.3} / {:.3} ms, echo floor {:.3} / {:.3} ms; p99 / floor p99 = {}",
            ms(&total.latency_us, 0.5),
            ms(&total.latency_us, 0.99),
            ms(&floor.latency_us, 0.5),
            ms(&floor.latency_us, 0.99),
            ratio(0.99).map_or("-".to_owned(), |r| format!("{r:.2}"))
        );
    }

    let rss_idle = sum(&idle.rss_kib);
    let rss_connected = sum(&at_connect.rss_kib);
    let per_socket_kib = match (rss_idle, rss_connected) {
        (Some(a), Some(b)) if ok > 0 => Some(round((b as f64 - a as f64) / ok as f64, 2)),
        _ => None,
    };
    let tool_connect = at_connect.own_cpu - idle.own_cpu + worker_cpu_connected.iter().sum::<f64>();
    let tool_publish = end.own_cpu - before_publish.own_cpu + worker_cpu_publish;
    let gateway_publish = cpu_delta(&before_publish.gateway_cpu, &end.gateway_cpu);
    let redis_publish = before_publish
        .redis_cpu
        .zip(end.redis_cpu)
        .map(|(a, b)| b - a);
    // Each Redis process's share: with a cluster, the CPU of each master per notification.
    let redis_per_node_us: Vec<Option<f64>> = before_publish
        .redis_cpu_nodes
        .iter()
        .zip(&end.redis_cpu_nodes)
        .map(|(a, b)| {
            a.zip(*b)
                .filter(|_| outcome.sent > 0)
                .map(|(a, b)| round((b - a) * 1e6 / outcome.sent as f64, 2))
        })
        .collect();
    let per_frame_us = |cpu: Option<f64>| {
        cpu.filter(|_| frames > 0)
            .map(|c| round(c * 1e6 / frames as f64, 2))
    };
    let clean = failed == 0
        && outcome.failed == 0
        && total.lost == 0
        && total.duplicated == 0
        && total.misrouted == 0
        && total.unexpected == 0
        && total.malformed == 0;
    if !clean {
        // The gateways' warnings (RUST_LOG=warn) usually say why: a Redis reconnect, a slow
        // consumer. Their log files go with them.
        for (n, gateway) in own_gateways.iter().enumerate() {
            let log = gateway.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            say!("gateway {n} log (last {} lines):", tail.len());
            for line in tail.iter().rev() {
                eprintln!("    {line}");
            }
        }
    }

    Ok(json!({
        "scenario": o.scenario,
        "transport": o.transport,
        "clean": clean,
        "params": {
            "sockets": sockets,
            "per_user": per_user,
            "users": users,
            "messages": messages,
            "rate": o.rate,
            "publish": if o.rate > 0.0 { "single" } else { match o.publish { PublishMode::Batch => "batch", PublishMode::Single => "single" } },
            "batch": o.batch,
            "inflight": o.inflight,
            "pool": pool_size,
            "message_bytes": o.message_bytes,
            "replicas": targets.len(),
            "cluster_masters": o.cluster,
            "workers": workers,
            "connect_rate": o.connect_rate,
            "connect_inflight": o.connect_inflight,
            "auth": if o.jwt_secret.is_some() { "jwt" } else { "none" },
            "echo_floor": o.echo_floor,
            "gateway_env": o.gateway_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        },
        "conditions": {
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "loadavg_at_start": loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            "gateway_bin": own_gateways.first().map(|_| e2e::gateway_binary().display().to_string()),
        },
        "connect": {
            "ok": ok,
            "failed": failed,
            "errors": errors,
            "seconds": round(ramp_secs, 3),
            "per_second": round(ok as f64 / ramp_secs.max(1e-9), 0),
            "handshake_ms": millis(&handshake_us),
            "gateway_sockets_open": gateway_count,
        },
        "memory_kib": {
            "gateway_rss_idle": idle.rss_kib,
            "gateway_rss_connected": at_connect.rss_kib,
            "gateway_rss_after_hold": at_hold.as_ref().map(|s| s.rss_kib.clone()),
            "gateway_rss_end": end.rss_kib,
            "per_socket": per_socket_kib,
        },
        "publish": {
            "sent": outcome.sent,
            "failed": outcome.failed,
            "first_error": outcome.first_error,
            "seconds": round(publish_secs, 3),
            "per_second": round(outcome.sent as f64 / publish_secs.max(1e-9), 0),
            "receivers": outcome.receivers,
            "call_ms": millis(&outcome.call_us),
            // Publishing alone (scenario p) is all of the tool's and Redis's work.
            "cpu_us_per_notification": {
                "redis": redis_publish.filter(|_| outcome.sent > 0).map(|c| round(c * 1e6 / outcome.sent as f64, 2)),
                "tool": (outcome.sent > 0).then(|| round(tool_publish * 1e6 / outcome.sent as f64, 2)),
                // One entry per Redis process (each cluster master), over all notifications.
                "redis_per_process": redis_per_node_us,
            },
        },
        "delivery": {
            "expected": total.expected,
            "delivered": total.delivered,
            "lost": total.lost,
            "duplicated": total.duplicated,
            "misrouted": total.misrouted,
            "unexpected": total.unexpected,
            "malformed": total.malformed,
            "sockets_closed": total.closed,
            "seconds": round(delivery_secs, 3),
            "per_second": round(total.delivered as f64 / delivery_secs.max(1e-9), 0),
            "latency_ms": millis(&total.latency_us),
        },
        // The same sockets, schedule and timing against a trivial echo server (see echo.rs).
        "echo_floor": floor.as_ref().map(|f| f.json.clone()),
        "latency_vs_floor": floor.as_ref().map(|_| json!({
            "p50_ratio": ratio(0.5),
            "p99_ratio": ratio(0.99),
        })),
        "cpu_seconds": {
            "connect": {
                "gateway": cpu_delta(&idle.gateway_cpu, &at_connect.gateway_cpu).map(|c| round(c, 3)),
                "redis": idle.redis_cpu.zip(at_connect.redis_cpu).map(|(a, b)| round(b - a, 3)),
                "tool": round(tool_connect, 3),
            },
            "publish": {
                "gateway": gateway_publish.map(|c| round(c, 3)),
                "redis": redis_publish.map(|c| round(c, 3)),
                "tool": round(tool_publish, 3),
            },
        },
        // Time runnable threads waited for a core while notifications flowed, from
        // /proc/<pid>/task/*/schedstat, per notification published.
        "run_queue_wait_us_per_notification": sched::per_event_us(&waits_before, &waits_after, outcome.sent),
        "cpu_us_per_frame": {
            "gateway": per_frame_us(gateway_publish),
            "redis": per_frame_us(redis_publish),
            "tool": per_frame_us(Some(tool_publish)),
        },
    }))
}

/// The gateway's own count of open sockets (`/metrics`), as a cross-check.
fn sockets_open(addr: SocketAddr) -> Option<u64> {
    let (status, body) = e2e::http_get(addr, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix("gateway_sockets_open "))?
        .trim()
        .parse()
        .ok()
}

/// Builds notification `n` of the schedule, stamped with the time it is built.
struct Source {
    users: u64,
    user_base: u64,
    message: String,
}

impl Source {
    fn notification(&self, n: u64) -> (UserId, Notification) {
        let (k, seq) = schedule(n, self.users);
        let id = self.user_base + k;
        let user = UserId::new(id).expect("benchmark user ids are valid");
        let notification = Notification::new(Level::Info, self.message.as_str())
            .with_data(protocol::FIELD_USER, id)
            .with_data(protocol::FIELD_SEQ, seq)
            .with_data(protocol::FIELD_SENT_NS, now_ns());
        (user, notification)
    }
}

#[derive(Default)]
struct PublishOutcome {
    sent: u64,
    failed: u64,
    receivers: u64,
    first_error: Option<String>,
    /// How long each publish call took (one batch, or one notification), µs.
    call_us: Histogram,
}

impl PublishOutcome {
    fn add(&mut self, count: u64, began: Instant, result: Result<u64, publisher::PublishError>) {
        self.call_us.record(began.elapsed().as_micros() as u64);
        match result {
            Ok(receivers) => {
                self.sent += count;
                self.receivers += receivers;
            }
            Err(e) => {
                self.failed += count;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// As fast as the path accepts: `inflight` loops, each taking the next batch.
async fn publish_fast(
    publisher: &Publisher,
    source: &Arc<Source>,
    messages: u64,
    o: &Options,
) -> PublishOutcome {
    let next = Arc::new(AtomicU64::new(0));
    let outcome = Arc::new(Mutex::new(PublishOutcome::default()));
    let step = match o.publish {
        PublishMode::Batch => o.batch as u64,
        PublishMode::Single => 1,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..o.inflight {
        let (publisher, source, next, outcome) = (
            publisher.clone(),
            source.clone(),
            next.clone(),
            outcome.clone(),
        );
        let mode = o.publish;
        tasks.spawn(async move {
            loop {
                let start = next.fetch_add(step, Relaxed);
                if start >= messages {
                    return;
                }
                let end = (start + step).min(messages);
                let began = Instant::now();
                let result = match mode {
                    PublishMode::Batch => publisher
                        .publish_batch((start..end).map(|n| source.notification(n)))
                        .await
                        .map(|rs| rs.iter().map(|r| r.receivers as u64).sum()),
                    PublishMode::Single => {
                        let (user, notification) = source.notification(start);
                        publisher
                            .publish(user, notification)
                            .await
                            .map(|r| r as u64)
                    }
                };
                outcome.lock().unwrap().add(end - start, began, result);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(outcome)
        .ok()
        .expect("every task ended")
        .into_inner()
        .unwrap()
}

/// A steady rate: notification n is published at start + n / rate, each with its own
/// publish call, without waiting for earlier ones (so a slow reply does not delay the rest).
async fn publish_at_rate(
    publisher: &Publisher,
    source: &Arc<Source>,
    messages: u64,
    rate: f64,
) -> PublishOutcome {
    const MAX_IN_FLIGHT: u32 = 4096;
    let outcome = Arc::new(Mutex::new(PublishOutcome::default()));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize));
    let started = Instant::now();
    for n in 0..messages {
        sleep_until(started + Duration::from_secs_f64(n as f64 / rate)).await;
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let (publisher, source, outcome) = (publisher.clone(), source.clone(), outcome.clone());
        tokio::spawn(async move {
            let (user, notification) = source.notification(n);
            let began = Instant::now();
            let result = publisher
                .publish(user, notification)
                .await
                .map(|r| r as u64);
            outcome.lock().unwrap().add(1, began, result);
            drop(permit);
        });
    }
    let _all = in_flight.acquire_many(MAX_IN_FLIGHT).await;
    Arc::try_unwrap(outcome)
        .ok()
        .expect("every task ended")
        .into_inner()
        .unwrap()
}

/// Starts this executable again as `subcommand` with `plan` as its JSON argument, stdin and
/// stdout piped to the conductor; killed if the conductor drops it.
pub(crate) fn spawn_self(
    exe: &std::path::Path,
    subcommand: &str,
    plan: &impl serde::Serialize,
) -> std::io::Result<Child> {
    tokio::process::Command::new(exe)
        .arg(subcommand)
        .arg(serde_json::to_string(plan).expect("plans serialise"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
}
