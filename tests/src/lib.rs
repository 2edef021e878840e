//! Test harness: real `redis-server` processes on ports of their own, real gateway processes,
//! real WebSocket clients. Every process is killed when its handle drops.
//!
//! - [`RedisServer`]: a private redis-server (never 6379), which can be killed and restarted
//!   on the same port.
//! - [`Gateway`]: the gateway binary built from `gateway/src/main.rs`, configured through the
//!   same `GW__*` environment variables operators use.
//! - [`WsClient`]: a browser stand-in that reads JSON text frames and close codes.
//! - [`SseClient`]: a raw HTTP Server-Sent Events reader (events, comments, last event id).
//! - [`RawSocket`]: a WebSocket peer that completes the handshake and then misbehaves
//!   (never reads, never answers pings).
//! - [`JwtKeys`] and [`jwt`]: keys (made with the openssl CLI at test time) and tokens for
//!   authentication tests.
//! - [`procfs`]: what a process holds (memory, CPU, files), for leak checks and gw-bench.
//! - [`proxy`]: a real nginx in front of the replicas, TLS certificates made at test time,
//!   `wss://` clients.

pub mod procfs;
pub mod proxy;
pub mod topology;

mod gateway_process;
mod redis_server;
mod sse_client;
mod stall_proxy;
mod tokens;
mod ws_client;

pub use gateway_process::*;
pub use redis_server::*;
pub use sse_client::*;
pub use stall_proxy::*;
pub use tokens::*;
pub use ws_client::*;

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

/// Makes sure this process (and so the gateways it spawns) may open `needed` files: raises
/// the soft RLIMIT_NOFILE up to the hard limit when it is lower, says what it did, and fails
/// with the command to run when even the hard limit is too low.
pub fn require_open_files(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
    }
    let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "this test holds about {needed} open files; the hard limit is {hard}: raise it \
         (`ulimit -Hn {needed}` as root, or LimitNOFILE) and run ./tests/run.sh, which raises \
         the soft limit"
    );
    limit.rlim_cur = needed;
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    eprintln!("raised the open-file limit from {soft} to {needed} (hard limit {hard})");
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

pub(crate) fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}
