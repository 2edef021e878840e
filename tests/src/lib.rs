//! Test harness: real `redis-server` processes on ports of their own, real gateway processes,
//! real WebSocket clients. Every process is killed when its handle drops.
//!
//! - [`RedisServer`]: a private redis-server (never 6379), which can be killed and restarted
//!   on the same port.
//! - [`Gateway`]: the gateway binary built from `gateway/src/main.rs`, configured through the
//!   same `GW__*` environment variables operators use.
//! - [`WsClient`]: a browser stand-in that reads JSON text frames and close codes.
//! - [`RawSocket`]: a WebSocket peer that completes the handshake and then misbehaves
//!   (never reads, never answers pings).
//! - [`JwtKeys`] and [`jwt`]: keys (made with the openssl CLI at test time) and tokens for
//!   authentication tests.
//! - [`rss_kib`], [`open_fds`]: what a process holds, for leak checks.
//! - [`proxy`]: a real nginx in front of the replicas, TLS certificates made at test time,
//!   `wss://` clients.

pub mod proxy;
pub mod topology;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// How long any awaited event may take before a test fails. Generous: CI machines are slow
/// and shared; a passing test never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

pub fn require_program(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} not found: install it with `apt-get install -y {package}` (or run ./tests/run.sh, which does)")
    })
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gw-e2e-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

// ---------------------------------------------------------------------------------------
// redis-server

/// How a test Redis is secured.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// `requirepass`: the default user's password, put in [`RedisServer::url`].
    pub password: Option<String>,
    /// Extra ACL rules, one `--user` argument each (`"gw on >pw &user_* +@pubsub"`).
    pub acl_users: Vec<String>,
    /// Serve TLS only (no plain port), with this CA's server certificate.
    pub tls: Option<Arc<proxy::TestCa>>,
    /// Append-only file, fsynced on every command, so a restart keeps what was acknowledged.
    pub persistent: bool,
}

pub struct RedisServer {
    pub port: u16,
    pub options: RedisOptions,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a redis-server on a free port, without persistence.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a redis-server that writes every command to its append-only file before
    /// answering, so a restart keeps everything acknowledged.
    pub fn start_persistent() -> Self {
        Self::start_with(RedisOptions {
            persistent: true,
            ..RedisOptions::default()
        })
    }

    /// Starts one with a password, ACL users, TLS or persistence.
    pub fn start_with(options: RedisOptions) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            options,
            dir: TempDir::new("redis"),
            child: None,
        };
        server.spawn();
        server
    }

    /// The URL clients use: `rediss://` with TLS, the password in it when there is one.
    pub fn url(&self) -> String {
        let credentials = match &self.options.password {
            Some(password) => format!(":{password}@"),
            None => String::new(),
        };
        self.url_with_credentials(&credentials)
    }

    /// The URL with other credentials: `"user:password@"`, or `""` for none.
    pub fn url_with_credentials(&self, credentials: &str) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{credentials}127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let program = require_program("redis-server", "redis-server");
        let mut command = Command::new(program);
        let port = self.port.to_string();
        match &self.options.tls {
            None => command.args(["--port", &port]),
            Some(pki) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(pki.dir().join("tls.crt"))
                .arg("--tls-key-file")
                .arg(pki.dir().join("tls.key"))
                .arg("--tls-ca-cert-file")
                .arg(pki.ca_pem()),
        };
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password]);
        }
        for rules in &self.options.acl_users {
            command.arg("--user").args(rules.split_whitespace());
        }
        let appendonly = if self.options.persistent { "yes" } else { "no" };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", appendonly, "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while self.ping().is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self
            .client()
            .get_connection_with_timeout(Duration::from_millis(500))?;
        redis::cmd("PING").query::<String>(&mut conn).map(|_| ())
    }

    pub fn client(&self) -> redis::Client {
        match &self.options.tls {
            None => redis::Client::open(self.url()).expect("redis url"),
            Some(pki) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(pki.ca_pem()).expect("reading the test CA")),
                },
            )
            .expect("redis TLS client"),
        }
    }

    /// A plain (blocking) connection for assertions and raw PUBLISHes.
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(DEADLINE)
            .expect("connecting to test redis")
    }

    /// SIGKILLs the server: subscribers see their connection drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Subscriber count of a channel, as Redis itself sees it.
    pub fn numsub(&self, channel: &str) -> u64 {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut self.connection())
            .expect("PUBSUB NUMSUB");
        n
    }

    /// Client connections open on the server, not counting the one asking.
    pub fn clients(&self) -> usize {
        self.client_list().len() - 1
    }

    /// Connections subscribed to at least one channel.
    pub fn subscriber_connections(&self) -> usize {
        self.client_list()
            .iter()
            .filter(|line| {
                line.split(' ')
                    .any(|field| field.strip_prefix("sub=").is_some_and(|n| n != "0"))
            })
            .count()
    }

    fn client_list(&self) -> Vec<String> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut self.connection())
            .expect("CLIENT LIST");
        list.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// PUBLISH of raw bytes; returns the receiver count.
    pub fn publish_raw(&self, channel: &str, payload: &[u8]) -> u64 {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query(&mut self.connection())
            .expect("PUBLISH")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// a TCP proxy that can stall a connection without closing it

/// Forwards loopback TCP connections to `target`; any connection can be stalled (the proxy
/// stops reading from the server side, so nothing reaches the client, yet every socket stays
/// open) and resumed. A silently broken link, as a half-dead network path leaves it.
pub struct StallProxy {
    pub port: u16,
    stalled: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>,
}

impl StallProxy {
    pub fn start(target_port: u16) -> Self {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().unwrap().port();
        let stalled: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let registry = stalled.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                registry.lock().unwrap().push(flag.clone());
                let (client_r, server_w) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(client_r, server_w, None));
                std::thread::spawn(move || pump(server, client, Some(flag)));
            }
        });
        StallProxy { port, stalled }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stalls (or resumes) the server-to-client direction of the `n`th connection accepted.
    pub fn set_stalled(&self, n: usize, stalled: bool) {
        let flags = self.stalled.lock().unwrap();
        let flag = flags
            .get(n)
            .unwrap_or_else(|| panic!("only {} connections so far", flags.len()));
        flag.store(stalled, std::sync::atomic::Ordering::SeqCst);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    stall: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        while stall
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

// ---------------------------------------------------------------------------------------
// gateway

/// The gateway executable: `$GATEWAY_BIN`, else the `gateway-e2e` binary cargo builds beside
/// this executable (it is a bin target of this package, so it is always built first). Test
/// executables live in `target/<profile>/deps`, binaries such as gw-bench in `target/<profile>`.
pub fn gateway_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current executable");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("gateway-e2e"))
        .collect();
    candidates
        .iter()
        .find(|binary| binary.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} not built: run `cargo test -p e2e` or `cargo build -p e2e --bin gateway-e2e`",
                candidates[0].display()
            )
        })
}

pub struct Gateway {
    pub addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl Gateway {
    /// Starts a gateway subscribed to `redis` (or in single-node mode with `None`), with
    /// extra `GW__*` settings, and waits until it is ready.
    pub fn start(redis: Option<&RedisServer>, settings: &[(&str, &str)]) -> Self {
        let gateway = Self::spawn(redis, settings);
        gateway.wait_ready();
        gateway
    }

    /// Starts it without waiting for readiness.
    pub fn spawn(redis: Option<&RedisServer>, settings: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("gateway");
        let log = dir.0.join("gateway.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(gateway_binary());
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "gateway=debug,info")
            .env("GW__SERVER__BIND", addr.to_string())
            .env("GW__SERVER__WORKERS", "2")
            .env("GW__REDIS__URL", redis.map(|r| r.url()).unwrap_or_default())
            .env("GW__REDIS__RECONNECT_MAX_MS", "500")
            .env("GW__REDIS__PING_INTERVAL_MS", "1000")
            // Explicit, as a scaled-out gateway refuses to start without it; tests of
            // authentication override it.
            .env("GW__AUTH__MODE", "none");
        if let Some(pki) = redis.and_then(|r| r.options.tls.as_ref()) {
            command.env("GW__REDIS__CA_FILE", pki.ca_pem());
        }
        for (key, value) in settings {
            command.env(key, value);
        }
        let log_file = std::fs::File::create(&log).expect("creating gateway log");
        let child = command
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawning the gateway binary");
        Gateway {
            addr,
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/ws/notifications/{user}/", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The gateway's own log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the gateway's log contains `text`.
    pub fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "gateway never logged {text:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        self.wait_for_readiness(200);
    }

    /// Waits until `/readyz` answers `status` (200 ready, 503 not ready).
    pub fn wait_for_readiness(&self, status: u16) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok((got, _)) = http_get(self.addr, "/readyz") {
                if got == status {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gateway /readyz never answered {status}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// A metric's value from `/metrics` (a full series name, labels included).
    pub fn metric(&self, series: &str) -> u64 {
        let (status, body) = http_get(self.addr, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|line| {
                line.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("metric {series} not found in\n{body}"))
    }

    /// Polls a metric until `predicate` holds.
    pub fn wait_metric(&self, series: &str, predicate: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self.metric(series);
            if predicate(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "metric {series} stuck at {value}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway running").id()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("gateway running");
        let started = Instant::now();
        signal(&child, libc::SIGTERM);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the gateway") {
                return (status, started.elapsed());
            }
            if started.elapsed() > DEADLINE {
                kill(&mut child);
                panic!("gateway did not exit after SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: the replica dies without closing anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal blocking HTTP/1.1 request; returns (status, body).
pub fn http_request(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

pub fn http_post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    http_request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

// ---------------------------------------------------------------------------------------
// WebSocket clients

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a browser sees: JSON text frames, then a close code.
pub struct WsClient {
    ws: Ws,
}

/// How a socket ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The connection ended without a close frame.
    Abrupt,
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        Self::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"))
    }

    pub async fn try_connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (ws, _response) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| {
                tokio_tungstenite::tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into())
            })??;
        Ok(WsClient { ws })
    }

    /// The next JSON text frame (pings are answered by tungstenite as a browser would).
    pub async fn next_json(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("no frame within the deadline");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next JSON text frame, or how the socket ended if it ends first.
    pub async fn next_json_or_close(&mut self) -> Result<Value, Closed> {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("neither a frame nor a close within the deadline");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}")))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(Some(close)))) => {
                    return Err(Closed::Code(u16::from(close.code)))
                }
                Some(Ok(Message::Close(None))) => {
                    return Err(Closed::Code(u16::from(CloseCode::Status)))
                }
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(_)) | None => return Err(Closed::Abrupt),
            }
        }
    }

    /// Reads until the socket closes; panics if a text frame arrives first.
    pub async fn closed(&mut self) -> Closed {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("socket not closed within the deadline");
            match frame {
                Some(Ok(Message::Close(Some(close)))) => {
                    return Closed::Code(u16::from(close.code))
                }
                Some(Ok(Message::Close(None))) => {
                    return Closed::Code(u16::from(CloseCode::Status))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected the socket to close, got {other:?}"),
                Some(Err(_)) | None => return Closed::Abrupt,
            }
        }
    }

    /// The next JSON text frame, or `None` once the socket ended (closed, broken, or
    /// silent for the deadline).
    pub async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(DEADLINE, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("sending a text frame");
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close arrives so the server has seen it.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, self.ws.next()).await {}
    }
}

/// A WebSocket peer that does the handshake and then only does what the test says.
pub struct RawSocket {
    pub stream: TcpStream,
}

impl RawSocket {
    /// Opens the socket; returns the HTTP status of the handshake response and the socket.
    pub fn handshake(addr: SocketAddr, path: &str) -> (u16, Self) {
        let mut stream = TcpStream::connect(addr).expect("connecting to the gateway");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        // Read the response head byte by byte so no frame byte is consumed with it.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream
                .read_exact(&mut byte)
                .expect("reading the handshake response");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, RawSocket { stream })
    }

    /// Sends a handshake and waits briefly for the answer: `None` when none came within
    /// 300 ms (the server is still deciding), else its status. The socket is returned open.
    pub fn start_handshake(addr: SocketAddr, path: &str) -> (Option<u16>, Self) {
        let mut stream = TcpStream::connect(addr).expect("connecting to the gateway");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut head = [0u8; 12];
        let status = match stream.read(&mut head) {
            Ok(n) if n >= 12 => std::str::from_utf8(&head[9..12])
                .ok()
                .and_then(|s| s.parse().ok()),
            _ => None,
        };
        (status, RawSocket { stream })
    }

    /// Reads frames (answering nothing) until the server closes the TCP connection.
    /// Returns the close code of the close frame seen, if any.
    pub fn read_until_eof(&mut self) -> Option<u16> {
        let mut data = Vec::new();
        let started = Instant::now();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading after {:?}: {e}", started.elapsed()),
            }
        }
        parse_close_code(&data)
    }
}

/// Walks server-to-client (unmasked) frames and returns the code of the first close frame.
fn parse_close_code(mut data: &[u8]) -> Option<u16> {
    while data.len() >= 2 {
        let opcode = data[0] & 0x0f;
        let (len, header) = match data[1] & 0x7f {
            126 if data.len() >= 4 => (u16::from_be_bytes([data[2], data[3]]) as usize, 4),
            127 if data.len() >= 10 => (
                u64::from_be_bytes(data[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n if n < 126 => (n as usize, 2),
            _ => return None,
        };
        if data.len() < header + len {
            return None;
        }
        if opcode == 0x8 && len >= 2 {
            return Some(u16::from_be_bytes([data[header], data[header + 1]]));
        }
        data = &data[header + len..];
    }
    None
}

/// A refused WebSocket handshake: the HTTP status and the JSON body.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub body: Value,
}

impl WsClient {
    /// Connects with extra request headers. Returns the client and the subprotocol the
    /// server selected, or the refusal. Panics on anything else (I/O errors, timeouts).
    pub async fn connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Self, Option<String>), Refusal> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut request = url.into_client_request().expect("a ws:// URL");
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let connected = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
            .await
            .unwrap_or_else(|_| panic!("handshake with {url} timed out"));
        match connected {
            Ok((ws, response)) => {
                let protocol = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap().to_owned());
                Ok((WsClient { ws }, protocol))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().clone().unwrap_or_default();
                Err(Refusal {
                    status: response.status().as_u16(),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                })
            }
            Err(other) => panic!("handshake with {url} failed: {other}"),
        }
    }

    /// The refusal of a handshake that must fail.
    pub async fn refused(url: &str, headers: &[(&str, &str)]) -> Refusal {
        match Self::connect_with(url, headers).await {
            Ok(_) => panic!("{url} with {headers:?} was accepted"),
            Err(refusal) => refusal,
        }
    }
}

// ---------------------------------------------------------------------------------------
// certificates, keys, tokens

fn openssl(args: &[&str], dir: &Path) {
    let program = require_program("openssl", "openssl");
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// RSA (2048) and P-256 key pairs for RS256/ES256 tokens: PKCS#8 private keys, SPKI public.
pub struct JwtKeys {
    pub rsa_private: Vec<u8>,
    pub rsa_public_file: PathBuf,
    pub ec_private: Vec<u8>,
    pub ec_public_file: PathBuf,
    pub ec_private_file: PathBuf,
    _dir: TempDir,
}

impl JwtKeys {
    pub fn generate() -> Self {
        let dir = TempDir::new("jwt-keys");
        for (algorithm, option, name) in [
            ("RSA", "rsa_keygen_bits:2048", "rsa"),
            ("EC", "ec_paramgen_curve:P-256", "ec"),
        ] {
            let key = format!("{name}.key");
            openssl(
                &[
                    "genpkey",
                    "-algorithm",
                    algorithm,
                    "-pkeyopt",
                    option,
                    "-out",
                    &key,
                ],
                &dir.0,
            );
            openssl(
                &[
                    "pkey",
                    "-in",
                    &key,
                    "-pubout",
                    "-out",
                    &format!("{name}.pub"),
                ],
                &dir.0,
            );
        }
        JwtKeys {
            rsa_private: std::fs::read(dir.0.join("rsa.key")).unwrap(),
            rsa_public_file: dir.0.join("rsa.pub"),
            ec_private: std::fs::read(dir.0.join("ec.key")).unwrap(),
            ec_public_file: dir.0.join("ec.pub"),
            ec_private_file: dir.0.join("ec.key"),
            _dir: dir,
        }
    }
}

/// Tokens as the Django backend (djangorestframework-simplejwt) issues them, and broken ones.
pub mod jwt {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};

    /// The backend's signing key in the tests (simplejwt's SIGNING_KEY).
    pub const SECRET: &str = "django-insecure-e2e-signing-key-with-enough-length";

    /// `GW__*` settings of a gateway that verifies [`SECRET`]-signed HS256 tokens.
    pub const HS256_SETTINGS: [(&str, &str); 2] = [
        ("GW__AUTH__MODE", "jwt"),
        ("GW__AUTH__HS256_SECRET", SECRET),
    ];

    pub fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// An access token's claims, expiring `ttl_secs` from now (negative: in the past).
    pub fn access_claims(user: u64, ttl_secs: i64) -> Value {
        json!({
            "token_type": "access",
            "exp": now() + ttl_secs,
            "iat": now(),
            "jti": format!("{:032x}", now() as u128 * 7919 + u128::from(user)),
            "user_id": user,
        })
    }

    pub fn hs256(claims: &Value) -> String {
        hs256_with(claims, SECRET)
    }

    pub fn hs256_with(claims: &Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    /// A simplejwt access token for `user`, valid five minutes.
    pub fn access(user: u64) -> String {
        hs256(&access_claims(user, 300))
    }

    pub fn rs256(claims: &Value, private_pem: &[u8]) -> String {
        let key = EncodingKey::from_rsa_pem(private_pem).unwrap();
        encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
    }

    pub fn es256(claims: &Value, private_pem: &[u8]) -> String {
        let key = EncodingKey::from_ec_pem(private_pem).unwrap();
        encode(&Header::new(Algorithm::ES256), claims, &key).unwrap()
    }

    /// HS-signed with `secret` bytes but any `alg` header: the key-confusion attack.
    pub fn hmac_with_alg(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
        let header = Header::new(alg);
        let signing_alg = match alg {
            Algorithm::HS384 => Algorithm::HS384,
            Algorithm::HS512 => Algorithm::HS512,
            _ => Algorithm::HS256,
        };
        let signed = encode(
            &Header::new(signing_alg),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        if signing_alg == alg {
            return signed;
        }
        // Re-sign the claims under the forged header with the same HMAC key.
        let claims_part = signed.split('.').nth(1).unwrap();
        let header_part = b64(serde_json::to_string(&header).unwrap().as_bytes());
        let message = format!("{header_part}.{claims_part}");
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(secret),
            signing_alg,
        )
        .unwrap();
        format!("{message}.{signature}")
    }

    /// A token with a hand-written header and no signature (`alg: none` and friends).
    pub fn unsigned(header_json: &str, claims: &Value) -> String {
        format!(
            "{}.{}.",
            b64(header_json.as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    /// base64url without padding, as JWTs use.
    pub fn b64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// process accounting

/// Resident memory of a process, KiB (VmRSS in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// File descriptors a process holds open (sockets included).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .count()
}
