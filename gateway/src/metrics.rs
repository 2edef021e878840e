//! Process-wide counters, rendered in the Prometheus text format at `GET /metrics`.
//!
//! Plain atomics: the hot path adds to a counter once per message, never per socket.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::auth::AuthError;
use crate::session::{CloseCode, End};

/// What carries a connection, for the `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    WebSocket,
    Sse,
}

impl TransportKind {
    pub const ALL: [TransportKind; 2] = [TransportKind::WebSocket, TransportKind::Sse];

    pub fn label(self) -> &'static str {
        match self {
            TransportKind::WebSocket => "websocket",
            TransportKind::Sse => "sse",
        }
    }
}

/// Ways a connection ends: every [`CloseCode`], then "gone" (the client left).
const END_REASONS: usize = CloseCode::ALL.len() + 1;

fn end_index(end: End) -> usize {
    match end {
        End::Close(code) => CloseCode::ALL.iter().position(|c| *c == code).unwrap_or(0),
        End::Gone => CloseCode::ALL.len(),
    }
}

fn end_label(index: usize) -> &'static str {
    CloseCode::ALL.get(index).map_or("gone", |c| c.label())
}

/// Why a notification did not reach a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// The payload on the channel was not a notification object.
    Malformed,
    /// The payload was larger than `redis.max_payload_bytes`.
    Oversized,
    /// The socket's outbound queue was full; the socket was closed as a slow consumer.
    SlowClient,
}

impl DropCause {
    const ALL: [DropCause; 3] = [
        DropCause::Malformed,
        DropCause::Oversized,
        DropCause::SlowClient,
    ];

    fn label(self) -> &'static str {
        match self {
            DropCause::Malformed => "malformed",
            DropCause::Oversized => "oversized",
            DropCause::SlowClient => "slow_client",
        }
    }
}

/// Upper bounds (milliseconds) of the publish-to-delivery latency histogram.
const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

#[derive(Default)]
pub struct Metrics {
    pub sockets_open: AtomicU64,
    pub sockets_opened_total: AtomicU64,
    pub users: AtomicU64,
    pub subscriptions: AtomicU64,
    pub messages_received_total: AtomicU64,
    pub frames_delivered_total: AtomicU64,
    dropped: [AtomicU64; 3],
    pub redis_reconnects_total: AtomicU64,
    pub redis_connected: AtomicU64,
    pub upgrades_refused_total: AtomicU64,
    pub scheduled_fired_total: AtomicU64,
    pub scheduled_dropped_total: AtomicU64,
    pub presence_beat_failures_total: AtomicU64,
    auth_refused: [AtomicU64; AuthError::CODES.len()],
    /// Per [`TransportKind`].
    connections_open: [AtomicU64; 2],
    connections_opened_total: [AtomicU64; 2],
    connections_refused_total: [AtomicU64; 2],
    connections_closed_total: [[AtomicU64; END_REASONS]; 2],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_count: AtomicU64,
    latency_sum_ms: AtomicU64,
}

impl Metrics {
    pub fn dropped(&self, cause: DropCause, n: u64) {
        self.dropped[cause as usize].fetch_add(n, Relaxed);
    }

    pub fn dropped_count(&self, cause: DropCause) -> u64 {
        self.dropped[cause as usize].load(Relaxed)
    }

    /// A session of `kind` started (its socket is registered in the hub).
    pub fn session_opened(&self, kind: TransportKind) {
        self.connections_open[kind as usize].fetch_add(1, Relaxed);
        self.connections_opened_total[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn session_closed(&self, kind: TransportKind, end: End) {
        self.connections_open[kind as usize].fetch_sub(1, Relaxed);
        self.connections_closed_total[kind as usize][end_index(end)].fetch_add(1, Relaxed);
    }

    /// A request for a connection of `kind` was refused (bad id, auth, limits, draining).
    pub fn connection_refused(&self, kind: TransportKind) {
        self.connections_refused_total[kind as usize].fetch_add(1, Relaxed);
    }

    /// Counts an upgrade refused by the origin or token check.
    pub fn auth_refused(&self, error: &AuthError) {
        self.auth_refused[error.index()].fetch_add(1, Relaxed);
    }

    /// Records how long a notification took from its publisher's timestamp to our fan-out.
    pub fn observe_latency_ms(&self, ms: u64) {
        if let Some(i) = LATENCY_BUCKETS_MS.iter().position(|&le| ms <= le) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_ms.fetch_add(ms, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut line = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        line(
            "gateway_sockets_open",
            "gauge",
            "Connections currently open (WebSocket and SSE; by transport: gateway_connections_open).",
            self.sockets_open.load(Relaxed),
        );
        line(
            "gateway_sockets_opened_total",
            "counter",
            "Connections accepted (WebSocket and SSE).",
            self.sockets_opened_total.load(Relaxed),
        );
        line(
            "gateway_users",
            "gauge",
            "Users with at least one socket (or a lingering subscription) on this node.",
            self.users.load(Relaxed),
        );
        line(
            "gateway_redis_subscriptions",
            "gauge",
            "Redis channels this node is subscribed to.",
            self.subscriptions.load(Relaxed),
        );
        line(
            "gateway_messages_received_total",
            "counter",
            "Notifications received from the bus.",
            self.messages_received_total.load(Relaxed),
        );
        line(
            "gateway_frames_delivered_total",
            "counter",
            "Frames queued to sockets.",
            self.frames_delivered_total.load(Relaxed),
        );
        line(
            "gateway_redis_reconnects_total",
            "counter",
            "Times the subscriber connection was re-established.",
            self.redis_reconnects_total.load(Relaxed),
        );
        line(
            "gateway_redis_connected",
            "gauge",
            "1 while the subscriber connection is up.",
            self.redis_connected.load(Relaxed),
        );
        line(
            "gateway_upgrades_refused_total",
            "counter",
            "WebSocket upgrades and SSE requests refused (bad id, limits, shutdown).",
            self.upgrades_refused_total.load(Relaxed),
        );
        line(
            "gateway_scheduled_fired_total",
            "counter",
            "Scheduled notifications this node fired (published when due).",
            self.scheduled_fired_total.load(Relaxed),
        );
        line(
            "gateway_scheduled_dropped_total",
            "counter",
            "Scheduled notifications this node dropped: later than schedule.max_lateness_ms, or unreadable.",
            self.scheduled_dropped_total.load(Relaxed),
        );
        line(
            "gateway_presence_beat_failures_total",
            "counter",
            "Presence heartbeats that did not reach Redis.",
            self.presence_beat_failures_total.load(Relaxed),
        );

        let name = "gateway_connections_open";
        let _ = writeln!(
            out,
            "# HELP {name} Connections currently open, by transport (websocket, sse).\n# TYPE {name} gauge"
        );
        for kind in TransportKind::ALL {
            let value = self.connections_open[kind as usize].load(Relaxed);
            let _ = writeln!(out, "{name}{{transport=\"{}\"}} {value}", kind.label());
        }
        let name = "gateway_connections_opened_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections accepted, by transport.\n# TYPE {name} counter"
        );
        for kind in TransportKind::ALL {
            let value = self.connections_opened_total[kind as usize].load(Relaxed);
            let _ = writeln!(out, "{name}{{transport=\"{}\"}} {value}", kind.label());
        }
        let name = "gateway_connections_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connection requests refused (bad id, auth, limits, draining), by transport.\n# TYPE {name} counter"
        );
        for kind in TransportKind::ALL {
            let value = self.connections_refused_total[kind as usize].load(Relaxed);
            let _ = writeln!(out, "{name}{{transport=\"{}\"}} {value}", kind.label());
        }
        let name = "gateway_connections_closed_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections ended, by transport and reason (a close code's name, or gone: the client left).\n# TYPE {name} counter"
        );
        for kind in TransportKind::ALL {
            for (reason, count) in self.connections_closed_total[kind as usize]
                .iter()
                .enumerate()
            {
                let _ = writeln!(
                    out,
                    "{name}{{transport=\"{}\",reason=\"{}\"}} {}",
                    kind.label(),
                    end_label(reason),
                    count.load(Relaxed)
                );
            }
        }

        let name = "gateway_auth_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Upgrades refused by the origin or token check, by reason.\n# TYPE {name} counter"
        );
        for (reason, count) in AuthError::CODES.iter().zip(&self.auth_refused) {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", count.load(Relaxed));
        }

        let name = "gateway_messages_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Notifications not delivered, by cause.\n# TYPE {name} counter"
        );
        for cause in DropCause::ALL {
            let _ = writeln!(
                out,
                "{name}{{cause=\"{}\"}} {}",
                cause.label(),
                self.dropped_count(cause)
            );
        }

        let name = "gateway_delivery_latency_ms";
        let _ = writeln!(out, "# HELP {name} From the notification's timestamp to fan-out on this node.\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (le, bucket) in LATENCY_BUCKETS_MS.iter().zip(&self.latency_buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.latency_sum_ms.load(Relaxed));
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_latency_ms(0);
        m.observe_latency_ms(3);
        m.observe_latency_ms(99_999);
        let text = m.render();
        assert!(
            text.contains("gateway_delivery_latency_ms_bucket{le=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gateway_delivery_latency_ms_bucket{le=\"5\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("gateway_delivery_latency_ms_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        m.session_opened(TransportKind::Sse);
        m.session_closed(TransportKind::Sse, End::Close(CloseCode::TokenExpired));
        let text = m.render();
        assert!(
            text.contains(
                "gateway_connections_closed_total{transport=\"sse\",reason=\"token_expired\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "gateway_connections_closed_total{transport=\"websocket\",reason=\"gone\"} 0"
            ),
            "{text}"
        );
        m.dropped(DropCause::Malformed, 2);
        assert!(m
            .render()
            .contains("gateway_messages_dropped_total{cause=\"malformed\"} 2"));
    }
}
