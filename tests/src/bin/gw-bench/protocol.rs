//! What the conductor and its worker processes say to each other (one JSON object a line:
//! plans on the command line, commands on the worker's stdin, events on its stdout), and the
//! schedule both sides derive the exact expected deliveries from.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::histogram::Histogram;

/// One worker process: open these sockets, then account for every frame that arrives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub worker: usize,
    /// Gateways; socket `j` of user index `k` goes to `targets[(k * per_user + j) % len]`.
    pub targets: Vec<SocketAddr>,
    /// Every socket of this worker is bound to this loopback address before connecting, so
    /// that each worker has its own ~28k ephemeral ports per gateway.
    pub source_ip: Ipv4Addr,
    /// User indexes this worker holds (user id = `user_base + index`).
    pub users: Range<u64>,
    pub per_user: u32,
    pub user_base: u64,
    /// New sockets per second for this worker; 0 for as fast as the handshakes go.
    pub connect_rate: f64,
    /// Handshakes in flight at once.
    pub connect_inflight: usize,
    pub connect_timeout_ms: u64,
    /// With it, every socket presents an HS256 access token for its user (`?token=`), as a
    /// browser does against a gateway in `auth.mode = "jwt"`.
    pub jwt_secret: Option<String>,
    /// "ws" (WebSocket) or "sse" (Server-Sent Events).
    #[serde(default = "websocket")]
    pub transport: String,
    /// The targets are echo servers ([`crate::echo`]): sockets are opened with `TCP_NODELAY`
    /// and can send, for [`Command::Echo`].
    #[serde(default)]
    pub echo: bool,
    /// Write every frame's `user seq sent_ns received_ns` to this file when reporting.
    #[serde(default)]
    pub trace: Option<String>,
}

fn websocket() -> String {
    "ws".to_owned()
}

impl WorkerPlan {
    pub fn target(&self, user_index: u64, socket: u32) -> SocketAddr {
        let n = (user_index * u64::from(self.per_user) + u64::from(socket)) as usize;
        self.targets[n % self.targets.len()]
    }
}

/// The conductor publishes notification `n` to user index `n % users` with sequence number
/// `n / users`; so user index `k` gets sequence numbers `0..expected(k)`.
pub fn schedule(n: u64, users: u64) -> (u64, u64) {
    (n % users, n / users)
}

/// How many notifications user index `k` is sent when `messages` go out to `users` users.
pub fn expected(k: u64, messages: u64, users: u64) -> u64 {
    messages / users + u64::from(k < messages % users)
}

/// Fields of `data` in every benchmark notification.
pub const FIELD_USER: &str = "u";
pub const FIELD_SEQ: &str = "s";
/// Send time, nanoseconds since the Unix epoch (CLOCK_REALTIME, one machine).
pub const FIELD_SENT_NS: &str = "t";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// `messages` notifications were published in all: report once every expected frame
    /// arrived, or once nothing arrived for `quiet_ms`.
    Drain {
        messages: u64,
        users: u64,
        quiet_ms: u64,
    },
    /// The echo floor: send notification `n` of the schedule as a text frame on each socket of
    /// its user (those this worker holds) at `start_ns + n / rate`, each stamped with its send
    /// time, then report as for `Drain` once the echoes are in.
    Echo {
        messages: u64,
        users: u64,
        rate: f64,
        message_bytes: usize,
        /// When notification 0 is due (CLOCK_REALTIME ns), the same for every worker.
        start_ns: u64,
        quiet_ms: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Progress {
        ok: u64,
        failed: u64,
    },
    Connected {
        ok: u64,
        failed: u64,
        /// Failure reasons and how many sockets each.
        errors: BTreeMap<String, u64>,
        /// Handshake time of each successful socket, µs.
        connect_us: Histogram,
        first_start_ns: u64,
        last_done_ns: u64,
        cpu_secs: f64,
    },
    Report(Report),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Frames the connected sockets should have received.
    pub expected: u64,
    /// Distinct expected frames received.
    pub delivered: u64,
    pub lost: u64,
    /// Frames received again (same user and sequence number on the same socket).
    pub duplicated: u64,
    /// Frames carrying another user's notification.
    pub misrouted: u64,
    /// Frames of this user with a sequence number that was never published.
    pub unexpected: u64,
    /// Frames that are not benchmark notifications.
    pub malformed: u64,
    /// Sockets that closed before the report, by reason.
    pub closed: BTreeMap<String, u64>,
    /// Publish-to-delivery latency, µs.
    pub latency_us: Histogram,
    pub last_rx_ns: u64,
    pub cpu_secs: f64,
}

impl Report {
    /// Adds another worker's report to this one (CPU time is each worker's own: not summed).
    pub fn absorb(&mut self, other: &Report) {
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.misrouted += other.misrouted;
        self.unexpected += other.unexpected;
        self.malformed += other.malformed;
        for (reason, n) in &other.closed {
            *self.closed.entry(reason.clone()).or_default() += n;
        }
        self.latency_us.merge(&other.latency_us);
        self.last_rx_ns = self.last_rx_ns.max(other.last_rx_ns);
    }
}

/// Nanoseconds since the Unix epoch: one clock for publisher and clients on one machine.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_and_the_expectation_agree() {
        for (messages, users) in [(0, 3), (7, 3), (9, 3), (20_000, 1_000), (5, 8)] {
            let mut counts = vec![0u64; users as usize];
            for n in 0..messages {
                let (k, seq) = schedule(n, users);
                assert_eq!(seq, counts[k as usize], "sequence numbers are dense");
                counts[k as usize] += 1;
            }
            for k in 0..users {
                assert_eq!(counts[k as usize], expected(k, messages, users));
            }
        }
    }
}
