//! `gw-bench worker PLAN`: one client process. It opens its share of the sockets, reads every
//! frame, and checks each against the schedule: right user, new sequence number, latency
//! from the send time carried in the notification. The conductor starts one per ~18k sockets
//! (a process may hold at most 20,000 open files here).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, Stream, StreamExt};
use publisher::wire::StreamId;
use publisher::{Level, Notification};
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::histogram::Histogram;
use crate::protocol::{expected, now_ns, schedule, Command, Event, Report, WorkerPlan};
use e2e::procfs;

pub(crate) type Ws = WebSocketStream<TcpStream>;

pub fn main(args: &[String]) -> ExitCode {
    let plan = match args.first().map(|a| serde_json::from_str::<WorkerPlan>(a)) {
        Some(Ok(plan)) => plan,
        Some(Err(e)) => {
            eprintln!("gw-bench worker: bad plan: {e}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("gw-bench worker: missing plan (started by gw-bench itself)");
            return ExitCode::from(2);
        }
    };
    // One thread: workers are many processes already, and the cores are shared with the
    // gateway and Redis being measured.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(plan));
    ExitCode::SUCCESS
}

fn emit(event: &Event) {
    println!(
        "{}",
        serde_json::to_string(event).expect("events serialise")
    );
}

/// One socket's user and the sequence numbers it has seen (a bitset).
struct SocketState {
    user_index: u64,
    user_id: u64,
    connected: AtomicBool,
    seen: Mutex<Vec<u64>>,
    /// The sending half, on sockets to an echo server only.
    sink: tokio::sync::Mutex<Option<SplitSink<Ws, Message>>>,
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    connect_us: Mutex<Histogram>,
    first_start_ns: AtomicU64,
    last_done_ns: AtomicU64,
    distinct: AtomicU64,
    duplicated: AtomicU64,
    misrouted: AtomicU64,
    malformed: AtomicU64,
    latency_us: Mutex<Histogram>,
    /// With `--trace-frames`: `[user, seq, sent_ns, received_ns]` of every frame.
    trace: Option<Mutex<Vec<[u64; 4]>>>,
    last_rx_ns: AtomicU64,
    closed: Mutex<BTreeMap<String, u64>>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *map.lock().unwrap().entry(key).or_default() += 1;
}

#[derive(Deserialize)]
struct Frame {
    data: FrameData,
}

#[derive(Deserialize)]
struct FrameData {
    u: u64,
    s: u64,
    t: u64,
}

impl Tally {
    fn on_text(&self, socket: &SocketState, text: &str) {
        let now = now_ns();
        let Ok(frame) = serde_json::from_str::<Frame>(text) else {
            self.malformed.fetch_add(1, Relaxed);
            return;
        };
        let FrameData { u, s, t } = frame.data;
        if u != socket.user_id {
            self.misrouted.fetch_add(1, Relaxed);
            return;
        }
        self.latency_us
            .lock()
            .unwrap()
            .record(now.saturating_sub(t) / 1000);
        if let Some(trace) = &self.trace {
            trace.lock().unwrap().push([u, s, t, now]);
        }
        let (word, bit) = ((s / 64) as usize, 1u64 << (s % 64));
        let mut seen = socket.seen.lock().unwrap();
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        if seen[word] & bit != 0 {
            self.duplicated.fetch_add(1, Relaxed);
        } else {
            seen[word] |= bit;
            self.distinct.fetch_add(1, Relaxed);
        }
        drop(seen);
        self.last_rx_ns.fetch_max(now, Relaxed);
    }
}

async fn run(plan: WorkerPlan) {
    let tally = Arc::new(Tally {
        first_start_ns: AtomicU64::new(u64::MAX),
        trace: plan.trace.is_some().then(Mutex::default),
        ..Tally::default()
    });
    let permits = Arc::new(Semaphore::new(plan.connect_inflight.max(1)));
    let connect_timeout = Duration::from_millis(plan.connect_timeout_ms);
    let mut sockets = Vec::new();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    for user_index in plan.users.clone() {
        for j in 0..plan.per_user {
            if plan.connect_rate > 0.0 {
                let due =
                    started + Duration::from_secs_f64(sockets.len() as f64 / plan.connect_rate);
                sleep_until(due).await;
            }
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            let socket = Arc::new(SocketState {
                user_index,
                user_id: plan.user_base + user_index,
                connected: AtomicBool::new(false),
                seen: Mutex::default(),
                sink: tokio::sync::Mutex::default(),
            });
            sockets.push(socket.clone());
            let target = plan.target(user_index, j);
            let mut url = match plan.transport.as_str() {
                "sse" => format!("/sse/notifications/{}/", socket.user_id),
                _ => format!("ws://{target}/ws/notifications/{}/", socket.user_id),
            };
            if let Some(secret) = &plan.jwt_secret {
                // Valid for the longest run; the gateway closes a socket when its token expires.
                let claims = e2e::jwt::access_claims(socket.user_id, 24 * 3600);
                url.push_str("?token=");
                url.push_str(&e2e::jwt::hs256_with(&claims, secret));
            }
            if plan.transport == "sse" {
                tokio::spawn(sse_task(
                    target,
                    plan.source_ip,
                    url,
                    socket,
                    tally.clone(),
                    permit,
                    connect_timeout,
                ));
            } else {
                tokio::spawn(socket_task(
                    target,
                    plan.source_ip,
                    url,
                    socket,
                    tally.clone(),
                    permit,
                    connect_timeout,
                    plan.echo,
                ));
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                progress(&tally);
            }
        }
    }
    let total = sockets.len() as u64;
    while tally.ok.load(Relaxed) + tally.failed.load(Relaxed) < total {
        sleep(Duration::from_millis(20)).await;
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(&tally);
        }
    }
    emit(&Event::Connected {
        ok: tally.ok.load(Relaxed),
        failed: tally.failed.load(Relaxed),
        errors: tally.errors.lock().unwrap().clone(),
        connect_us: tally.connect_us.lock().unwrap().packed(),
        first_start_ns: tally.first_start_ns.load(Relaxed),
        last_done_ns: tally.last_done_ns.load(Relaxed),
        cpu_secs: procfs::own_cpu_time().as_secs_f64(),
    });

    let mut commands = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // EOF on stdin (the conductor finished or died) ends the worker.
    while let Ok(Some(line)) = commands.next_line().await {
        match serde_json::from_str::<Command>(&line) {
            Ok(Command::Drain {
                messages,
                users,
                quiet_ms,
            }) => {
                let report = drain(&sockets, &tally, messages, users, quiet_ms).await;
                write_trace(&plan, &tally);
                emit(&Event::Report(report));
            }
            Ok(Command::Echo {
                messages,
                users,
                rate,
                message_bytes,
                start_ns,
                quiet_ms,
            }) => {
                let message = "x".repeat(message_bytes.max(1));
                let schedule = EchoSchedule {
                    messages,
                    users,
                    rate,
                    start_ns,
                };
                send_echoes(&plan, &sockets, &schedule, Arc::from(message)).await;
                let report = drain(&sockets, &tally, messages, users, quiet_ms).await;
                write_trace(&plan, &tally);
                emit(&Event::Report(report));
            }
            Err(e) => eprintln!("gw-bench worker {}: bad command {line:?}: {e}", plan.worker),
        }
    }
}

/// Writes the frames traced (`user seq sent_ns received_ns`, one a line) to the plan's file.
fn write_trace(plan: &WorkerPlan, tally: &Tally) {
    let (Some(path), Some(trace)) = (&plan.trace, &tally.trace) else {
        return;
    };
    let mut text = String::new();
    for [u, s, t, rx] in trace.lock().unwrap().iter() {
        text.push_str(&format!("{u} {s} {t} {rx}\n"));
    }
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("gw-bench worker {}: writing {path}: {e}", plan.worker);
    }
}

fn progress(tally: &Tally) {
    emit(&Event::Progress {
        ok: tally.ok.load(Relaxed),
        failed: tally.failed.load(Relaxed),
    });
}

/// Waits until every expected frame arrived or nothing arrived for `quiet_ms`, then counts
/// exactly what is missing.
async fn drain(
    sockets: &[Arc<SocketState>],
    tally: &Tally,
    messages: u64,
    users: u64,
    quiet_ms: u64,
) -> Report {
    let connected = || sockets.iter().filter(|s| s.connected.load(Relaxed));
    let expected_total: u64 = connected()
        .map(|s| expected(s.user_index, messages, users))
        .sum();
    let quiet = Duration::from_millis(quiet_ms);
    let mut last_count = tally.distinct.load(Relaxed);
    let mut last_change = Instant::now();
    loop {
        let count = tally.distinct.load(Relaxed);
        if count >= expected_total {
            break;
        }
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        } else if last_change.elapsed() >= quiet {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }

    let mut report = Report {
        expected: expected_total,
        ..Report::default()
    };
    for socket in connected() {
        let want = expected(socket.user_index, messages, users);
        let seen = socket.seen.lock().unwrap();
        let mut got = 0;
        for (word, bits) in seen.iter().enumerate() {
            for bit in 0..64 {
                if bits & (1 << bit) != 0 {
                    let seq = word as u64 * 64 + bit;
                    if seq < want {
                        got += 1;
                    } else {
                        report.unexpected += 1;
                    }
                }
            }
        }
        report.delivered += got;
        report.lost += want - got;
    }
    report.duplicated = tally.duplicated.load(Relaxed);
    report.misrouted = tally.misrouted.load(Relaxed);
    report.malformed = tally.malformed.load(Relaxed);
    report.closed = tally.closed.lock().unwrap().clone();
    report.latency_us = tally.latency_us.lock().unwrap().packed();
    report.last_rx_ns = tally.last_rx_ns.load(Relaxed);
    report.cpu_secs = procfs::own_cpu_time().as_secs_f64();
    report
}

#[allow(clippy::too_many_arguments)]
async fn socket_task(
    target: SocketAddr,
    source: Ipv4Addr,
    url: String,
    socket: Arc<SocketState>,
    tally: Arc<Tally>,
    permit: OwnedSemaphorePermit,
    connect_timeout: Duration,
    echo: bool,
) {
    let begun = Instant::now();
    tally.first_start_ns.fetch_min(now_ns(), Relaxed);
    let opened = timeout(connect_timeout, open(target, source, &url)).await;
    tally.last_done_ns.fetch_max(now_ns(), Relaxed);
    drop(permit);
    let ws = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(reason)) => {
            tally.failed.fetch_add(1, Relaxed);
            bump(&tally.errors, reason);
            return;
        }
        Err(_) => {
            tally.failed.fetch_add(1, Relaxed);
            bump(&tally.errors, "timeout".into());
            return;
        }
    };
    tally
        .connect_us
        .lock()
        .unwrap()
        .record(begun.elapsed().as_micros() as u64);
    let reason = if echo {
        // This socket sends too: as the gateway does on its side, no Nagle delay.
        let _ = ws.get_ref().set_nodelay(true);
        let (sink, stream) = ws.split();
        *socket.sink.lock().await = Some(sink);
        socket.connected.store(true, Relaxed);
        tally.ok.fetch_add(1, Relaxed);
        read_frames(stream, &socket, &tally).await
    } else {
        socket.connected.store(true, Relaxed);
        tally.ok.fetch_add(1, Relaxed);
        read_frames(ws, &socket, &tally).await
    };
    bump(&tally.closed, reason);
}

/// Reads a socket until it ends, accounting for every frame; returns why it ended.
async fn read_frames(
    mut ws: impl Stream<Item = Result<Message, WsError>> + Unpin,
    socket: &SocketState,
    tally: &Tally,
) -> String {
    // Reading also answers the gateway's pings (tungstenite queues the pong).
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => tally.on_text(socket, text.as_str()),
            Some(Ok(Message::Close(frame))) => {
                break match frame {
                    Some(f) => format!("close {}", u16::from(f.code)),
                    None => "close".to_owned(),
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("error: {}", short_error(&e)),
            None => break "eof".to_owned(),
        }
    }
}

struct EchoSchedule {
    messages: u64,
    users: u64,
    rate: f64,
    start_ns: u64,
}

/// The echo floor's sender: the conductor's `publish_at_rate`, with a text frame on each of
/// the user's sockets in place of the publish call. Notification `n` is due at
/// `start + n / rate`; its frame is built (and stamped) in its own task just before it is
/// written, as the conductor builds each notification in the task that publishes it.
async fn send_echoes(
    plan: &WorkerPlan,
    sockets: &[Arc<SocketState>],
    s: &EchoSchedule,
    message: Arc<str>,
) {
    let start = Instant::now() + Duration::from_nanos(s.start_ns.saturating_sub(now_ns()));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..s.messages {
        let (k, seq) = schedule(n, s.users);
        if !plan.users.contains(&k) {
            continue;
        }
        sleep_until(start + Duration::from_secs_f64(n as f64 / s.rate)).await;
        let first = ((k - plan.users.start) * u64::from(plan.per_user)) as usize;
        for socket in &sockets[first..first + plan.per_user as usize] {
            if !socket.connected.load(Relaxed) {
                continue;
            }
            let (socket, message) = (socket.clone(), message.clone());
            tasks.spawn(async move {
                let text = echo_frame(socket.user_id, seq, &message);
                if let Some(sink) = socket.sink.lock().await.as_mut() {
                    // A failed send shows as a lost frame.
                    let _ = sink.send(Message::text(text)).await;
                }
            });
        }
        // Reap finished sends so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// The frame the gateway would deliver for this notification, byte for byte in shape and
/// length: the publisher's payload (`type`, `message`, `data` {u, s, t}, `timestamp`) with
/// the history id spliced in first, `t` being the time now.
fn echo_frame(user_id: u64, seq: u64, message: &str) -> String {
    let t = now_ns();
    let ms = t / 1_000_000;
    let payload = Notification::new(Level::Info, message)
        .with_data(crate::protocol::FIELD_USER, user_id)
        .with_data(crate::protocol::FIELD_SEQ, seq)
        .with_data(crate::protocol::FIELD_SENT_NS, t)
        .with_timestamp(ms)
        .to_payload(usize::MAX)
        .expect("benchmark notifications serialise");
    let framed = publisher::wire::with_id(StreamId::new(ms, 0), &payload).expect("an object");
    String::from_utf8(framed).expect("JSON is UTF-8")
}

async fn connect(target: SocketAddr, source: Ipv4Addr) -> Result<TcpStream, String> {
    let io = |stage: &str, e: std::io::Error| format!("{stage}: {:?}", e.kind());
    let socket = TcpSocket::new_v4().map_err(|e| io("socket", e))?;
    // Pick the port at connect time, per destination: otherwise bind() reserves a port per
    // socket and one source address runs out at ~28k sockets across all gateways.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| io("bind", e))?;
    socket.connect(target).await.map_err(|e| io("connect", e))
}

pub(crate) async fn open(target: SocketAddr, source: Ipv4Addr, url: &str) -> Result<Ws, String> {
    let stream = connect(target, source).await?;
    // Small buffers: the client side holds tens of thousands of sockets.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("handshake: {}", short_error(&e)))?;
    Ok(ws)
}

/// A Server-Sent Events stream: `GET path`, then every `data:` line is a notification.
async fn sse_task(
    target: SocketAddr,
    source: Ipv4Addr,
    path: String,
    socket: Arc<SocketState>,
    tally: Arc<Tally>,
    permit: OwnedSemaphorePermit,
    connect_timeout: Duration,
) {
    let begun = Instant::now();
    tally.first_start_ns.fetch_min(now_ns(), Relaxed);
    let opened = timeout(connect_timeout, open_sse(target, source, &path)).await;
    tally.last_done_ns.fetch_max(now_ns(), Relaxed);
    drop(permit);
    let (mut stream, mut body) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(reason)) => {
            tally.failed.fetch_add(1, Relaxed);
            bump(&tally.errors, reason);
            return;
        }
        Err(_) => {
            tally.failed.fetch_add(1, Relaxed);
            bump(&tally.errors, "timeout".into());
            return;
        }
    };
    tally
        .connect_us
        .lock()
        .unwrap()
        .record(begun.elapsed().as_micros() as u64);
    socket.connected.store(true, Relaxed);
    tally.ok.fetch_add(1, Relaxed);

    // `body` holds raw chunked bytes: `<hex size>\r\n<data>\r\n`. Decoded data goes to
    // `events`, whose complete lines are handled.
    let mut events: Vec<u8> = Vec::new();
    let mut close = None;
    let reason = 'read: loop {
        while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&body[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
            let Some(size) = size else {
                break 'read "bad chunk".to_owned();
            };
            if size == 0 {
                break 'read close.take().unwrap_or_else(|| "end".to_owned());
            }
            if body.len() < line_end + 2 + size + 2 {
                break;
            }
            events.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
            body.drain(..line_end + 2 + size + 2);
        }
        while let Some(end) = events.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = events.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            if let Some(data) = line.strip_prefix("data: ") {
                if data.starts_with("{\"code\"") {
                    close = Some(format!("close {}", data.get(8..12).unwrap_or("?")));
                } else {
                    tally.on_text(&socket, data);
                }
            }
        }
        let mut buf = [0u8; 4096];
        match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
            Ok(0) => break close.take().unwrap_or_else(|| "eof".to_owned()),
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) => break format!("error: {:?}", e.kind()),
        }
    };
    bump(&tally.closed, reason);
}

/// Connects and reads the response head; returns the stream and the body bytes read with it.
async fn open_sse(
    target: SocketAddr,
    source: Ipv4Addr,
    path: &str,
) -> Result<(TcpStream, Vec<u8>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect(target, source).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nAccept: text/event-stream\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {:?}", e.kind()))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let at = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        match stream.read(&mut buf).await {
            Ok(0) => return Err("eof before the response".into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {:?}", e.kind())),
        }
    };
    let status = String::from_utf8_lossy(&head[..at.min(12)]).into_owned();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("http {}", status.get(9..12).unwrap_or("?")));
    }
    Ok((stream, head.split_off(at + 4)))
}

fn short_error(error: &WsError) -> String {
    match error {
        WsError::Http(response) => format!("http {}", response.status().as_u16()),
        WsError::Io(e) => format!("{:?}", e.kind()),
        WsError::Protocol(p) => format!("protocol {p:?}"),
        other => {
            let mut text = other.to_string();
            text.truncate(60);
            text
        }
    }
}
