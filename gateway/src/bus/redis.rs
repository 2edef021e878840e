//! Scaled-out bus: exactly one Redis pub/sub connection per node, shared by all its sockets.
//!
//! One task owns the subscriber connection. It reads messages and hands them to the hub, and
//! when woken it reconciles its SUBSCRIBEd channels with what the hub wants, batching every
//! change made since the last round into one SUBSCRIBE and one UNSUBSCRIBE. The connection is
//! PINGed on an interval so that a half-open link is noticed; on any failure the task
//! reconnects with backoff and re-subscribes every channel the hub still wants. Messages
//! published while the link was down are not replayed here (Redis pub/sub does not keep them).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use publisher::wire::UserId;
use publisher::{Publisher, PublisherOptions};
use tokio::sync::{watch, Notify};

use super::{BoxFuture, Bus, BusError};
use crate::config::{ms, RedisSettings};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Channels per SUBSCRIBE/UNSUBSCRIBE command, so that a re-subscription of many users is a
/// few commands rather than one huge one.
const CHANNELS_PER_COMMAND: usize = 1024;

pub struct RedisBus {
    shared: Arc<Shared>,
    publisher: Publisher,
}

/// State shared between the bus handle and its subscriber task.
struct Shared {
    pending: Mutex<Pending>,
    wake: Notify,
    /// The highest interest epoch whose changes Redis has confirmed.
    applied: watch::Sender<u64>,
    connected: AtomicBool,
}

#[derive(Default)]
struct Pending {
    dirty: HashSet<UserId>,
    /// Incremented on every interest change; the subscriber task confirms epochs in order.
    requested: u64,
}

#[derive(Clone)]
struct Timing {
    reconnect_min: Duration,
    reconnect_max: Duration,
    ping_interval: Duration,
}

impl RedisBus {
    /// Starts the subscriber task. It runs until `shutdown` turns true.
    pub fn start(
        settings: &RedisSettings,
        url: &str,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, BusError> {
        let options = PublisherOptions {
            pool_size: settings.publish_pool_size,
            max_payload_bytes: settings.max_payload_bytes,
            ..PublisherOptions::default()
        };
        let unusable = |e: &dyn std::fmt::Display| BusError::Unavailable(e.to_string());
        let (client, publisher) = match settings.ca_file.trim() {
            "" => (
                redis::Client::open(url).map_err(|e| unusable(&e))?,
                Publisher::with_options(url, options).map_err(|e| unusable(&e))?,
            ),
            path => {
                let ca_pem = std::fs::read(path).map_err(|e| {
                    unusable(&format!("configuration key `redis.ca_file`: {path:?}: {e}"))
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca_pem.clone()),
                };
                (
                    redis::Client::build_with_tls(url, certificates).map_err(|e| unusable(&e))?,
                    Publisher::with_tls_ca(url, &ca_pem, options).map_err(|e| unusable(&e))?,
                )
            }
        };
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            wake: Notify::new(),
            applied: watch::Sender::new(0),
            connected: AtomicBool::new(false),
        });
        let timing = Timing {
            reconnect_min: ms(settings.reconnect_min_ms),
            reconnect_max: ms(settings.reconnect_max_ms),
            ping_interval: ms(settings.ping_interval_ms),
        };
        tokio::spawn(run_subscriber(
            client,
            shared.clone(),
            hub,
            metrics,
            timing,
            shutdown,
        ));
        Ok(RedisBus { shared, publisher })
    }
}

impl Bus for RedisBus {
    fn interest_changed(&self, user: UserId) -> BoxFuture<()> {
        let epoch = {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            pending.dirty.insert(user);
            pending.requested += 1;
            pending.requested
        };
        self.shared.wake.notify_one();
        let mut applied = self.shared.applied.subscribe();
        Box::pin(async move {
            // Err only when the subscriber task is gone, i.e. the node is shutting down.
            let _ = applied.wait_for(|&done| done >= epoch).await;
        })
    }

    fn publish(&self, user: UserId, payload: Vec<u8>) -> BoxFuture<Result<usize, BusError>> {
        let publisher = self.publisher.clone();
        Box::pin(async move {
            publisher
                .publish_payload(user, &payload)
                .await
                .map_err(|e| match e.kind() {
                    publisher::ErrorKind::InvalidInput | publisher::ErrorKind::TooLarge => {
                        BusError::Invalid(e.to_string())
                    }
                    _ => BusError::Unavailable(e.to_string()),
                })
        })
    }

    fn is_ready(&self) -> bool {
        self.shared.connected.load(Relaxed)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

async fn run_subscriber(
    client: redis::Client,
    shared: Arc<Shared>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    timing: Timing,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = timing.reconnect_min;
    let mut ever_connected = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match tokio::time::timeout(timing.ping_interval, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => {
                if ever_connected {
                    metrics.redis_reconnects_total.fetch_add(1, Relaxed);
                }
                ever_connected = true;
                backoff = timing.reconnect_min;
                let outcome = serve(pubsub, &shared, &hub, &metrics, &timing, &mut shutdown).await;
                shared.connected.store(false, Relaxed);
                metrics.redis_connected.store(0, Relaxed);
                metrics.subscriptions.store(0, Relaxed);
                match outcome {
                    Ok(()) => return,
                    Err(reason) => tracing::warn!(%reason, "redis subscriber connection lost"),
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, retry_in = ?backoff, "redis connect failed"),
            Err(_) => tracing::warn!(retry_in = ?backoff, "redis connect timed out"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(timing.reconnect_max);
    }
}

/// Serves one subscriber connection until it fails (`Err`) or the node shuts down (`Ok`).
async fn serve(
    pubsub: redis::aio::PubSub,
    shared: &Shared,
    hub: &Hub,
    metrics: &Metrics,
    timing: &Timing,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let (mut sink, mut stream) = pubsub.split();
    let mut subscribed = HashSet::new();

    // A fresh connection has no subscriptions: take everything the hub wants. Interest changes
    // up to `epoch` are reflected in the hub already, so this round confirms them all.
    let epoch = {
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.dirty.clear();
        pending.requested
    };
    let wanted = hub.users();
    apply(
        &mut sink,
        &mut subscribed,
        wanted,
        Vec::new(),
        timing.ping_interval,
    )
    .await?;
    shared.connected.store(true, Relaxed);
    metrics.redis_connected.store(1, Relaxed);
    metrics
        .subscriptions
        .store(subscribed.len() as u64, Relaxed);
    confirm(shared, epoch);
    tracing::info!(channels = subscribed.len(), "redis subscriber connected");

    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + timing.ping_interval,
        timing.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return Err("connection closed".into());
                };
                match UserId::from_channel(message.get_channel_name().as_bytes()) {
                    Some(user) => {
                        hub.deliver(user, message.get_payload_bytes());
                    }
                    None => tracing::debug!(channel = message.get_channel_name(), "message on a foreign channel"),
                }
            }
            _ = shared.wake.notified() => {
                let (dirty, epoch) = {
                    let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
                    (std::mem::take(&mut pending.dirty), pending.requested)
                };
                let (mut add, mut remove) = (Vec::new(), Vec::new());
                for user in dirty {
                    match (hub.wants(user), subscribed.contains(&user)) {
                        (true, false) => add.push(user),
                        (false, true) => remove.push(user),
                        _ => {}
                    }
                }
                apply(&mut sink, &mut subscribed, add, remove, timing.ping_interval).await?;
                metrics.subscriptions.store(subscribed.len() as u64, Relaxed);
                confirm(shared, epoch);
            }
            _ = ping.tick() => {
                match tokio::time::timeout(timing.ping_interval, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return Err(format!("ping failed: {error}")),
                    Err(_) => return Err("ping timed out".into()),
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// SUBSCRIBEs `add` and UNSUBSCRIBEs `remove`, in batches, each bounded by `timeout`.
async fn apply(
    sink: &mut redis::aio::PubSubSink,
    subscribed: &mut HashSet<UserId>,
    add: Vec<UserId>,
    remove: Vec<UserId>,
    timeout: Duration,
) -> Result<(), String> {
    for batch in add.chunks(CHANNELS_PER_COMMAND) {
        let channels: Vec<String> = batch.iter().map(|u| u.channel()).collect();
        match tokio::time::timeout(timeout, sink.subscribe(&channels)).await {
            Ok(Ok(())) => subscribed.extend(batch),
            Ok(Err(error)) => return Err(format!("subscribe failed: {error}")),
            Err(_) => return Err("subscribe timed out".into()),
        }
    }
    for batch in remove.chunks(CHANNELS_PER_COMMAND) {
        let channels: Vec<String> = batch.iter().map(|u| u.channel()).collect();
        match tokio::time::timeout(timeout, sink.unsubscribe(&channels)).await {
            Ok(Ok(())) => batch.iter().for_each(|u| {
                subscribed.remove(u);
            }),
            Ok(Err(error)) => return Err(format!("unsubscribe failed: {error}")),
            Err(_) => return Err("unsubscribe timed out".into()),
        }
    }
    Ok(())
}

fn confirm(shared: &Shared, epoch: u64) {
    shared.applied.send_if_modified(|applied| {
        let newer = epoch > *applied;
        if newer {
            *applied = epoch;
        }
        newer
    });
}
