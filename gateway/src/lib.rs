//! A horizontally scaled WebSocket notification gateway.
//!
//! Browsers hold a WebSocket on `/ws/notifications/{user_id}/` on any replica; backends
//! publish a JSON notification once on the Redis channel `user_<id>`, and every socket of that
//! user on every replica receives it as one text frame. Where WebSockets are blocked, the
//! same stream is served as Server-Sent Events on `/sse/notifications/{user_id}/`.
//!
//! ```text
//!  Redis ──(one pub/sub connection per node)──▶ bus ──deliver──▶ hub ──try_send──▶ socket queue
//!                                               ▲                  │                   │
//!     subscriptions: interest_changed (first/last socket of a user) ┘     session task ▼
//!                                                                              WebSocket
//! ```
//!
//! - [`config`]: layered settings (defaults < file < `GW__*` environment), validated; the
//!   origin and proxy lists parsed once into [`net`] values.
//! - [`auth`]: who may open which socket (origin, JWT), checked before the upgrade.
//! - [`state`]: what every handler and socket task shares ([`state::AppState`]).
//! - [`error`]: every refusal and its HTTP answer ([`error::ApiError`]), for `http` and `ws`.
//! - [`subscriptions`]: a user's subscription from its first socket to the linger after its
//!   last (attach/detach); tells the bus when the hub's interest changes.
//! - [`hub`]: the local registry of users and sockets, and the non-blocking fan-out into each
//!   socket's bounded [`outbox`].
//! - [`bus`]: where notifications come from; [`bus::redis`] (scaled out: connection,
//!   subscriber, history and canary rooms) or [`bus::memory`] (single node), behind one trait.
//! - [`history`]: replay planning, the missed frame, the in-memory history.
//! - [`session`]: the per-connection task both transports share (replay, dedupe, heartbeat,
//!   token expiry, drain, slow consumers) and the close codes.
//! - [`ws`]: the WebSocket upgrade handler and framing.
//! - [`sse`]: the Server-Sent Events endpoint (`/sse/notifications/{user_id}/`) and framing.
//! - [`http`]: routes of the public listener (WebSocket, SSE, inbox, the demo page at `/` with
//!   the browser client of `clients/js`) and of the internal one (`/api/publish`,
//!   `/api/schedule`, `/api/presence`, `/metrics`, `/healthz`, `/readyz`).
//! - [`metrics`]: counters rendered for Prometheus.
//! - [`schedule`]: scheduled notifications (fired from Redis by every node, or in memory);
//!   [`presence`]: this node's socket counts, reported to Redis for fleet-wide presence.
//!
//! Dependencies point one way: `http` → `ws`/`sse` → `session` → `subscriptions` → `hub`/`bus`; `state` and
//! `error` are used by both `http` and `ws`; `config` and `auth` meet only in `net`.
//!
//! [`run`] wires them together; `main.rs` only parses arguments, loads the configuration and
//! installs logging.

pub mod auth;
pub mod bus;
pub mod config;
pub mod error;
pub mod history;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod presence;
pub mod schedule;
pub mod secrets;
pub mod session;
pub mod sse;
pub mod state;
pub mod subscriptions;
pub mod telemetry;
pub mod ws;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::{middleware, web, App, HttpServer};
use tokio::sync::watch;

use crate::bus::{memory::MemoryBus, redis::RedisBus, Bus};
use crate::config::{ms, RedisTopology, Settings};
use crate::history::MemoryHistory;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::state::{AppState, SessionLimits};
use crate::subscriptions::Subscriptions;

/// The two listening sockets: `public` (`server.bind`: WebSockets and the inbox) and
/// `internal` (`server.internal_bind`: publish API, metrics, health).
pub struct Listeners {
    pub public: TcpListener,
    pub internal: TcpListener,
}

impl Listeners {
    /// Binds both addresses of `settings.server`; the error names the key that failed.
    pub fn bind(settings: &Settings) -> Result<Self, String> {
        let server = &settings.server;
        let public = bind(server.bind, server.backlog)
            .map_err(|e| format!("cannot bind server.bind {}: {e}", server.bind))?;
        let internal = bind(server.internal_bind, 1024).map_err(|e| {
            format!(
                "cannot bind server.internal_bind {}: {e}",
                server.internal_bind
            )
        })?;
        Ok(Listeners { public, internal })
    }
}

/// Serves until `shutdown` resolves, then drains: every socket is closed with 1012 and the
/// function returns within `server.drain_timeout_ms`. The internal listener answers (with
/// `/readyz` reporting the drain) until the public one has drained.
///
/// Must run inside an actix system (`#[actix_web::main]` or `actix_web::rt::System`).
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // redis-rs builds its TLS client with rustls's process-wide default provider, which rustls
    // picks by itself only when exactly one is compiled in: name it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let gate = auth::Gate::from_settings(&settings)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    warn_about_open_doors(&settings, &gate);
    let gate = Arc::new(gate);
    let settings = Arc::new(settings);
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::new(
        settings.ws.outbound_queue,
        settings.redis.max_payload_bytes,
        metrics.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);

    let presence = Arc::new(presence::Presence::new());
    let (bus, scheduler): (Arc<dyn Bus>, schedule::Scheduler) = match settings.redis_topology() {
        Some(topology) => {
            let bus = RedisBus::start(
                &settings.redis,
                &settings.history,
                // Half a socket queue: a catch-up never evicts a socket that keeps up.
                settings
                    .history
                    .replay_limit
                    .min(settings.ws.outbound_queue / 2)
                    .max(1),
                &topology,
                hub.clone(),
                metrics.clone(),
                stop_rx.clone(),
            )
            .map_err(std::io::Error::other)?;
            match &topology {
                RedisTopology::Single(url) => {
                    tracing::info!(redis = %redact_url(url), "scaled-out mode: subscribing through Redis")
                }
                RedisTopology::Sentinel(sentinel) => tracing::info!(
                    sentinels = ?sentinel.sentinels,
                    master = %sentinel.master_name,
                    "scaled-out mode: subscribing through the Redis master the sentinels name"
                ),
                RedisTopology::Cluster(cluster) => tracing::info!(
                    seeds = ?cluster.nodes,
                    "scaled-out mode: sharded pub/sub on a Redis Cluster, one link per master"
                ),
            }
            // On a cluster the firing loop claims, publishes and acknowledges in three steps
            // (publisher-lib's fire_due); the calls are the same on every topology.
            let background = bus.background_publisher();
            tokio::spawn(schedule::fire_loop(
                background.clone(),
                settings.schedule.clone(),
                metrics.clone(),
                stop_rx.clone(),
            ));
            tokio::spawn(presence.clone().run(
                background,
                ms(settings.presence.heartbeat_ms),
                ms(settings.presence.ttl_ms),
                metrics.clone(),
                stop_rx.clone(),
            ));
            let scheduler = schedule::Scheduler::Redis(bus.publisher());
            (Arc::new(bus), scheduler)
        }
        None => {
            tracing::warn!(
                "single-node mode: no redis.url configured, notifications travel on an in-process \
                 bus; run one replica only (set GW__REDIS__URL to scale out)"
            );
            let history = MemoryHistory::new(settings.history.max_len, settings.history.max_age_ms);
            let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(
                hub.clone(),
                history,
                settings.redis.max_payload_bytes,
                settings.history.max_age_ms,
            ));
            // Scheduled notifications in memory: they do not survive a restart.
            let memory = Arc::new(schedule::MemorySchedule::default());
            tokio::spawn(memory.clone().run(
                bus.clone(),
                settings.schedule.clone(),
                metrics.clone(),
                stop_rx.clone(),
            ));
            (bus, schedule::Scheduler::Memory(memory))
        }
    };

    let subscriptions = Arc::new(
        Subscriptions::new(
            hub.clone(),
            bus.clone(),
            ms(settings.ws.unsubscribe_linger_ms),
            ms(settings.redis.subscribe_timeout_ms),
        )
        .with_presence(presence.clone()),
    );
    let state = AppState {
        limits: SessionLimits::new(&settings.ws, &settings.sse, &settings.history),
        settings: settings.clone(),
        subscriptions,
        bus,
        metrics,
        gate,
        shutdown: stop_rx,
        scheduler: Arc::new(scheduler),
        presence,
    };
    let drain = ms(settings.server.drain_timeout_ms);
    let workers = match settings.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let address = listeners.public.local_addr()?;
    let internal_address = listeners.internal.local_addr()?;
    let internal_state = state.clone();
    let demo = settings
        .demo_enabled()
        .then(|| http::demo::DemoPage::new(&settings));
    if demo.is_some() {
        let host = if address.ip().is_unspecified() {
            format!("localhost:{}", address.port())
        } else {
            address.to_string()
        };
        tracing::info!("demo page on: open http://{host}/ (demo.enabled)");
    }
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .wrap(middleware::from_fn(http::limits::request_head))
            .configure(http::public_routes)
            .configure(|cfg| {
                if let Some(page) = &demo {
                    http::demo::routes(cfg, page.clone());
                }
            })
    })
    // Slowloris: the whole request head within this time, or 408 and disconnect. actix-http
    // times only a connection's first request, so a second request trickled on a kept-alive
    // connection would never time out: one request per connection (WebSocket upgrades need
    // no more).
    .client_request_timeout(ms(settings.server.handshake_timeout_ms))
    .keep_alive(actix_web::http::KeepAlive::Disabled)
    .workers(workers)
    .disable_signals()
    // A client's EOF ends its connection at once (actix-extras#550: sockets otherwise linger
    // in CLOSE_WAIT).
    .h1_allow_half_closed(false)
    // Frames are small and latency is the product: without TCP_NODELAY a frame written while
    // the previous one is unacknowledged waits for the client's delayed ACK (up to 40 ms).
    .tcp_nodelay(true)
    .shutdown_timeout(drain.as_secs().max(1))
    .max_connections(settings.server.max_connections + 1024)
    .listen(listeners.public)?
    .run();
    // Short requests from backends, Prometheus and probes: one worker, the same head limits.
    let internal = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(internal_state.clone()))
            .wrap(middleware::from_fn(http::limits::request_head))
            .configure(http::internal_routes)
    })
    .client_request_timeout(ms(settings.server.handshake_timeout_ms))
    .keep_alive(actix_web::http::KeepAlive::Disabled)
    .workers(1)
    .disable_signals()
    .h1_allow_half_closed(false)
    .shutdown_timeout(1)
    .listen(listeners.internal)?
    .run();
    let handle = server.handle();
    let internal_handle = internal.handle();
    tracing::info!(%address, workers, "gateway listening (public: WebSockets, inbox)");
    tracing::info!(
        address = %internal_address,
        "internal listener (publish API, metrics, health)"
    );

    let mut server = std::pin::pin!(server);
    // Spawned, so that it keeps being polled (and answers its stop command) while this task
    // waits on the public server.
    let mut internal = actix_web::rt::spawn(internal);
    tokio::select! {
        result = &mut server => {
            internal_handle.stop(false).await;
            return result;
        }
        result = &mut internal => {
            // The internal listener failed: stop serving altogether (the orchestrator
            // restarts the process) rather than run without probes and metrics.
            return result.map_err(std::io::Error::other).and_then(|served| served);
        }
        _ = shutdown => {}
    }
    tracing::info!(deadline = ?drain, "draining: closing every socket with 1012");
    let _ = stop_tx.send(true);
    let stopping = handle.stop(true);
    let drained =
        tokio::time::timeout(drain, async { tokio::join!(stopping, &mut server).1 }).await;
    // Requests in flight (a publish) finish, within the internal server's 1 s.
    internal_handle.stop(true).await;
    match drained {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("drain deadline reached with connections still open; exiting");
            Ok(())
        }
    }
}

/// A listening socket on `address` with room for `backlog` pending connections.
///
/// `std::net::TcpListener::bind` always asks for 128, which a reconnect storm overflows
/// (measured with gw-bench: 10,000 sockets at full speed, 1 % of them waited 1 s for a SYN
/// retransmit). The kernel caps the value at `net.core.somaxconn`.
pub fn bind(address: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // As std does: a restarted gateway can bind while old connections are in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Start-up warnings for settings that let anyone in.
fn warn_about_open_doors(settings: &Settings, gate: &auth::Gate) {
    if !gate.requires_token() {
        tracing::warn!(
            "AUTHENTICATION IS DISABLED (auth.mode = {:?}): anyone who knows a user id can open \
             /ws/notifications/<id>/ and read that user's notifications. Set auth.mode = \"jwt\" \
             before exposing this gateway (docs/SECURITY.md)",
            match settings.auth.mode {
                config::AuthMode::None => "none",
                _ => "unset",
            }
        );
    }
    if gate.requires_token() && !gate.checks_origin() {
        tracing::warn!(
            "origin.allowed is empty: pages of any site may open sockets (cross-site WebSocket \
             hijacking); list your front-end origins there (docs/SECURITY.md)"
        );
    }
}

/// Runs the gateway on its own actix system until SIGTERM/SIGINT, then drains.
pub fn serve(settings: Settings, listeners: Listeners) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(run(settings, listeners, shutdown_signal()))
}

/// A URL safe to log: the password, if any, replaced.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_listener_queues_more_than_std_s_128_connections() {
        let listener = super::bind("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        let address = listener.local_addr().unwrap();
        // Nothing accepts: every handshake the kernel completes waits in the backlog, and
        // one past a full backlog would time out (its SYN dropped).
        let queued: Vec<_> = (0..300)
            .map(|n| {
                std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("connection {n} not queued: {e}"))
            })
            .collect();
        assert_eq!(queued.len(), 300);
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            super::redact_url("redis://:s3cret@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(
            super::redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
