//! What every handler and socket task shares, used by [`crate::http`], [`crate::ws`] and [`crate::sse`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::Gate;
use crate::bus::Bus;
use crate::config::{ms, HistorySettings, Settings, SseSettings, WsSettings};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::schedule::Scheduler;
use crate::subscriptions::Subscriptions;

/// What every handler and socket task shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub limits: SessionLimits,
    /// Attaches sockets to their user's subscription and detaches them.
    pub subscriptions: Arc<Subscriptions>,
    pub bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    /// Origin and token checks of WebSocket upgrades.
    pub gate: Arc<Gate>,
    /// Turns true once when the node starts draining.
    pub shutdown: watch::Receiver<bool>,
    /// Scheduled notifications and fleet-wide presence questions.
    pub scheduler: Arc<Scheduler>,
    /// This node's socket counts per user.
    pub presence: Arc<Presence>,
}

/// A socket task's timers and bounds, converted from the settings once.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// How often an SSE stream carries a `: ping` comment.
    pub sse_heartbeat_interval: Duration,
    pub write_timeout: Duration,
    pub replay_limit: usize,
    pub history_timeout: Duration,
}

impl SessionLimits {
    pub fn new(ws: &WsSettings, sse: &SseSettings, history: &HistorySettings) -> Self {
        SessionLimits {
            ping_interval: ms(ws.ping_interval_ms),
            idle_timeout: ms(ws.idle_timeout_ms),
            sse_heartbeat_interval: ms(sse.heartbeat_interval_ms),
            write_timeout: ms(ws.write_timeout_ms),
            replay_limit: history.replay_limit,
            history_timeout: ms(history.read_timeout_ms),
        }
    }
}
