//! `gw-bench --scenario churn`: rounds of connection churn against one gateway, to tell a
//! node that returns to its baseline from one that creeps.
//!
//! Each round opens `--sockets` sockets (each with its own token, for users never seen
//! before: user ids move on every round), waits until they are open (subscribed), publishes
//! one notification to each and waits for every one to arrive, then closes them: even ones
//! politely (close frame, wait for the server's), odd ones aborted (TCP reset, no close frame).
//! Once the gateway counts no open socket and its open files are back to their idle level
//! (give or take its Redis pool), it records the gateway's RSS and open files. The JSON line has the
//! per-round figures and the growth between round `--churn-from` and the last.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use publisher::{Level, Notification, Publisher, PublisherOptions, UserId};
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::{round, sockets_open, stage, worker, Options, SocketCount, Stage};

/// Open files the gateway may add to its idle count for good: the Redis pool connections it
/// opens on demand (`redis.publish_pool_size`, 4 here).
const FD_SLACK: usize = 4;

/// How long a round's socket may take to open, receive, or be seen closed.
const STEP: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Round {
    opened: u64,
    failed: u64,
    received: u64,
    missed: u64,
    rss_kib: Option<u64>,
    fds: Option<usize>,
    seconds: f64,
}

pub async fn run(o: Options) -> Result<Value, String> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let Stage {
        own_redis,
        own_gateways,
        redis_url,
        targets,
        internals,
        pids,
        ..
    } = stage(&o)?;
    let _own = (&own_redis, &own_gateways);
    let (Some(&target), Some(&pid)) = (targets.first(), pids.first()) else {
        return Err("churn needs one gateway and its pid (--gateway-pid)".into());
    };
    // /metrics answers on the internal listener.
    let Some(&metrics_at) = internals.first() else {
        return Err("churn reads the gateway's /metrics: pass --gateway-internal".into());
    };
    let per_round = match o.sockets {
        SocketCount::Exactly(n) if n > 0 => n,
        _ => return Err("churn needs --sockets N > 0 (per round)".into()),
    };
    let publisher = Publisher::with_options(
        &redis_url,
        PublisherOptions {
            pool_size: 4,
            timeout: Duration::from_secs(10),
            ..PublisherOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    publisher.ping().await.map_err(|e| e.to_string())?;

    let baseline = (e2e::procfs::rss_kib(pid), e2e::procfs::open_files(pid));
    say!(
        "churn: {} rounds of {per_round} sockets against {target}; idle RSS {:?} KiB, {:?} files",
        o.rounds,
        baseline.0,
        baseline.1
    );
    let mut rounds = Vec::new();
    for r in 0..o.rounds {
        let first_user = o.user_base + r * per_round;
        // A source address per round: the client side's ports never run short.
        let source = Ipv4Addr::new(127, 0, 1, 10 + (r % 200) as u8);
        let round = one_round(
            &o, &publisher, target, metrics_at, source, first_user, per_round,
        )
        .await?;
        let round = finish(round, pid, baseline.1.map(|n| n + FD_SLACK)).await;
        say!(
            "round {}: {} open, {} failed, {} received, {} missed; RSS {:?} KiB, {:?} files ({:.1} s)",
            r + 1,
            round.opened,
            round.failed,
            round.received,
            round.missed,
            round.rss_kib,
            round.fds,
            round.seconds
        );
        rounds.push(round);
    }

    let rss = |n: u64| rounds.get(n as usize - 1).and_then(|r: &Round| r.rss_kib);
    let from = o.churn_from.clamp(1, o.rounds.max(1));
    let growth_kib = match (rss(from), rounds.last().and_then(|r| r.rss_kib)) {
        (Some(a), Some(b)) => Some(b as i64 - a as i64),
        _ => None,
    };
    let fds_max = rounds.iter().filter_map(|r| r.fds).max();
    let fds_back = match (fds_max, baseline.1) {
        (Some(max), Some(idle)) => max <= idle + FD_SLACK,
        _ => false,
    };
    let clean = rounds.iter().all(|r| r.failed == 0 && r.missed == 0) && fds_back;
    Ok(json!({
        "scenario": "churn",
        "clean": clean,
        "params": {
            "rounds": o.rounds,
            "sockets_per_round": per_round,
            "auth": if o.jwt_secret.is_some() { "jwt" } else { "none" },
            "gateway_env": o.gateway_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        },
        "conditions": {
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "loadavg_at_start": loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        },
        "baseline": { "rss_kib": baseline.0, "fds": baseline.1 },
        "rounds": rounds.iter().enumerate().map(|(i, r)| json!({
            "round": i + 1,
            "opened": r.opened,
            "failed": r.failed,
            "missed": r.missed,
            "rss_kib": r.rss_kib,
            "fds": r.fds,
            "seconds": round(r.seconds, 2),
        })).collect::<Vec<_>>(),
        "rss_growth_kib": {
            "from_round": from,
            "to_round": o.rounds,
            "kib": growth_kib,
            "bytes_per_connection": growth_kib.map(|g| round(g as f64 * 1024.0 / ((o.rounds - from).max(1) * per_round) as f64, 1)),
        },
        // Every round ends with the idle gateway's open files, give or take its Redis pool.
        "fds_back_to_baseline": fds_back,
        "fds_max": fds_max,
    }))
}

/// Waits (a bounded time) until the gateway's open files are back to at most `fds`: the gateway
/// counts a socket closed when its session ends, its connection closes a moment later. Then
/// takes the round's figures.
async fn finish(mut round: Round, pid: u32, fds: Option<usize>) -> Round {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let (Some(now), Some(want)) = (e2e::procfs::open_files(pid), fds) {
        if now <= want || Instant::now() > deadline {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    round.rss_kib = e2e::procfs::rss_kib(pid);
    round.fds = e2e::procfs::open_files(pid);
    round
}

async fn one_round(
    o: &Options,
    publisher: &Publisher,
    target: SocketAddr,
    metrics_at: SocketAddr,
    source: Ipv4Addr,
    first_user: u64,
    count: u64,
) -> Result<Round, String> {
    let started = Instant::now();
    let mut round = Round::default();
    // Open, at most `connect_inflight` handshakes at once.
    let opened: Vec<(u64, Result<worker::Ws, String>)> =
        futures_util::stream::iter(first_user..first_user + count)
            .map(|user| {
                let mut url = format!("ws://{target}/ws/notifications/{user}/");
                if let Some(secret) = &o.jwt_secret {
                    let claims = e2e::jwt::access_claims(user, 3600);
                    url.push_str("?token=");
                    url.push_str(&e2e::jwt::hs256_with(&claims, secret));
                }
                async move {
                    let ws = match timeout(STEP, worker::open(target, source, &url)).await {
                        Ok(result) => result,
                        Err(_) => Err("timeout".to_owned()),
                    };
                    (user, ws)
                }
            })
            .buffer_unordered(o.connect_inflight.max(1))
            .collect()
            .await;
    let mut sockets = Vec::new();
    for (user, ws) in opened {
        match ws {
            Ok(ws) => sockets.push((user, ws)),
            Err(reason) => {
                round.failed += 1;
                say!("  user {user}: {reason}");
            }
        }
    }
    round.opened = sockets.len() as u64;

    // One notification each, then every one must arrive.
    let notes = sockets.iter().map(|(user, _)| {
        (
            UserId::new(*user).expect("valid ids"),
            Notification::new(Level::Info, "churn").with_data("u", *user),
        )
    });
    let notes: Vec<_> = notes.collect();
    for chunk in notes.chunks(256) {
        publisher
            .publish_batch(chunk.iter().cloned())
            .await
            .map_err(|e| format!("publish: {e}"))?;
    }
    let received: Vec<bool> =
        futures_util::future::join_all(sockets.iter_mut().map(|(user, ws)| async move {
            let user = *user;
            timeout(STEP, async {
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                        return frame["data"]["u"] == user;
                    }
                }
                false
            })
            .await
            .unwrap_or(false)
        }))
        .await;
    round.received = received.iter().filter(|r| **r).count() as u64;
    round.missed = round.opened - round.received;

    // Close: half politely, half aborted.
    futures_util::future::join_all(sockets.into_iter().enumerate().map(
        |(i, (_, mut ws))| async move {
            if i % 2 == 0 {
                let _ = ws.send(Message::Close(None)).await;
                let _ = timeout(STEP, async { while let Some(Ok(_)) = ws.next().await {} }).await;
            } else {
                // Reset instead of FIN: the client vanished.
                let _ = ws.get_ref().set_zero_linger();
                drop(ws);
            }
        },
    ))
    .await;
    let deadline = Instant::now() + STEP;
    while sockets_open(metrics_at) != Some(0) {
        if Instant::now() > deadline {
            return Err(format!(
                "the gateway still counts {:?} open sockets {STEP:?} after the round closed them",
                sockets_open(metrics_at)
            ));
        }
        sleep(Duration::from_millis(20)).await;
    }
    round.seconds = started.elapsed().as_secs_f64();
    Ok(round)
}
