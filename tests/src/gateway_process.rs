//! The gateway binary as operators run it, configured through `GW__*` variables, and plain
//! HTTP requests to it.

use super::*;

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
    /// The public listener: WebSocket endpoint and inbox.
    pub addr: SocketAddr,
    /// The internal listener (`server.internal_bind`), where the server API answers
    /// (`/api/publish`, `/metrics`, `/healthz`, `/readyz`); none of it answers on `addr`.
    pub internal: SocketAddr,
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
        let internal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(gateway_binary());
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "gateway=debug,info")
            .env("GW__SERVER__BIND", addr.to_string())
            .env("GW__SERVER__INTERNAL_BIND", internal.to_string())
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
            internal,
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
            if let Ok((got, _)) = http_get(self.internal, "/readyz") {
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
        let (status, body) = http_get(self.internal, "/metrics").expect("GET /metrics");
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
