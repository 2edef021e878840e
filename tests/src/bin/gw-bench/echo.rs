//! The echo floor: the load generator's own publish-to-delivery floor, measured in the same
//! run as the gateway's (scenario b).
//!
//! `gw-bench echo-server` is a trivial WebSocket echo server (tokio-tungstenite, one thread,
//! `TCP_NODELAY` as the gateway sets it): every text frame a socket sends comes back on the same
//! socket. After the gateway phase, the conductor starts it, opens the same number of sockets
//! from the same worker processes (same plans, same users), and has each worker send the same
//! schedule at the same rate (notification `n` at `start + n / rate` to user `n mod users`) as a
//! text frame of the gateway's frame shape and length, stamped with its send time just before
//! it is written. The worker times the echo exactly as it times a gateway frame: `now - t` at
//! receive, into the same histogram. No Redis, no gateway.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::histogram::Histogram;
use crate::protocol::{now_ns, Command, Event, Report, WorkerPlan};
use crate::{millis, round, spawn_self, Options};
use e2e::procfs;

/// `gw-bench echo-server`: prints its address on stdout, then echoes until killed.
pub fn server_main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("gw-bench echo-server: bind: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().expect("bound");
        println!("{addr}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_close() {
                        return;
                    }
                    let data = message.is_text() || message.is_binary();
                    if data && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// What the floor run measured.
pub struct Floor {
    pub latency_us: Histogram,
    pub json: Value,
}

/// Runs the echo phase with the gateway phase's sizes: `sockets` sockets of `per_user` per
/// user from `workers` workers, `messages` frames at `o.rate`.
pub async fn floor(
    o: &Options,
    users: u64,
    messages: u64,
    workers: u64,
    users_per_worker: u64,
) -> Result<Floor, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut server = tokio::process::Command::new(&exe)
        .arg("echo-server")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawning the echo server: {e}"))?;
    let server_pid = server.id().unwrap_or(0);
    let mut first = String::new();
    BufReader::new(server.stdout.take().expect("piped"))
        .read_line(&mut first)
        .await
        .map_err(|e| format!("reading the echo server's address: {e}"))?;
    let target: SocketAddr = first
        .trim()
        .parse()
        .map_err(|_| format!("the echo server said {first:?}, not its address"))?;

    let (events_tx, mut events) = mpsc::channel::<(usize, Event)>(64);
    let mut children = Vec::new();
    for w in 0..workers as usize {
        let start = w as u64 * users_per_worker;
        let plan = WorkerPlan {
            worker: w,
            targets: vec![target],
            source_ip: Ipv4Addr::new(127, 0, 0, 10 + w as u8),
            users: start.min(users)..(start + users_per_worker).min(users),
            per_user: o.per_user,
            user_base: o.user_base,
            connect_rate: o.connect_rate / workers as f64,
            connect_inflight: o.connect_inflight,
            connect_timeout_ms: 30_000,
            jwt_secret: o.jwt_secret.clone(),
            transport: "ws".to_owned(),
            echo: true,
            trace: o.trace_dir.as_ref().map(|d| format!("{d}/echo-w{w}.tsv")),
        };
        let mut child = spawn_self(&exe, "worker", &plan)
            .map_err(|e| format!("spawning echo worker {w}: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let tx = events_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str::<Event>(&line) {
                    if tx.send((w, event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        children.push(child);
    }
    drop(events_tx);

    let (mut ok, mut failed, mut connected) = (0u64, 0u64, 0u64);
    while connected < workers {
        let (_, event) = events
            .recv()
            .await
            .ok_or("an echo worker exited before it finished connecting")?;
        if let Event::Connected {
            ok: o_, failed: f_, ..
        } = event
        {
            connected += 1;
            ok += o_;
            failed += f_;
        }
    }
    say!("echo floor: {ok} sockets open on the echo server, {failed} failed; sending {messages} frames at {}/s", o.rate);

    let server_cpu_before = procfs::cpu_time(server_pid).map(|d| d.as_secs_f64());
    let mut waiting = crate::sched::Groups::default();
    waiting.add("echo_server", [server_pid]);
    waiting.add("tool", [std::process::id()]);
    waiting.add("workers", children.iter().filter_map(|c| c.id()));
    let waits_before = waiting.read();
    // Notification 0 is due shortly after every worker has the command.
    let command = Command::Echo {
        messages,
        users,
        rate: o.rate,
        message_bytes: o.message_bytes,
        start_ns: now_ns() + 100_000_000,
        quiet_ms: o.quiet_ms,
    };
    let line = format!(
        "{}\n",
        serde_json::to_string(&command).expect("commands serialise")
    );
    for child in &mut children {
        child
            .stdin
            .as_mut()
            .expect("piped")
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("telling an echo worker to send: {e}"))?;
    }
    let mut total = Report::default();
    let mut reports = 0;
    while reports < workers {
        let (_, event) = events
            .recv()
            .await
            .ok_or("an echo worker exited before it reported")?;
        if let Event::Report(r) = event {
            reports += 1;
            total.absorb(&r);
        }
    }
    let waits_after = waiting.read();
    let server_cpu = server_cpu_before
        .zip(procfs::cpu_time(server_pid).map(|d| d.as_secs_f64()))
        .map(|(a, b)| round(b - a, 3));
    for mut child in children {
        drop(child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    let _ = server.kill().await;

    let json = json!({
        "server": "gw-bench echo-server (tokio-tungstenite, one thread)",
        "sockets": ok,
        "failed": failed,
        "expected": total.expected,
        "echoed": total.delivered,
        "lost": total.lost,
        "duplicated": total.duplicated,
        "misrouted": total.misrouted,
        "latency_ms": millis(&total.latency_us),
        "server_cpu_seconds": server_cpu,
        "run_queue_wait_us_per_notification": crate::sched::per_event_us(&waits_before, &waits_after, messages),
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
            .split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    });
    Ok(Floor {
        latency_us: total.latency_us,
        json,
    })
}
