//! Scaled-out bus: exactly one Redis pub/sub connection per node, shared by all its sockets.
//!
//! One task owns the subscriber connection. It reads messages and hands them to the hub, and
//! when woken it reconciles its SUBSCRIBEd channels with what the hub wants, batching every
//! change made since the last round into one SUBSCRIBE and one UNSUBSCRIBE. The connection is
//! PINGed on an interval so that a half-open link is noticed; on any failure the task
//! reconnects with backoff and re-subscribes every channel the hub still wants.
//!
//! Pub/sub loses what is published while a link is down, so every user also has a cursor in
//! the hub (the newest history id delivered here, or the newest stored when the subscription
//! started). After a reconnect the task replays each user's history after its cursor before
//! it reads live messages again; the hub drops the overlap by id.
//!
//! History reads and publishes use a separate pooled connection (publisher-lib's pool).
//!
//! Readiness reflects delivery, not just a connection: every `redis.canary_interval_ms` the
//! node PUBLISHes a canary on a channel of its own and reports not ready while one stays
//! unanswered for longer than `redis.canary_timeout_ms`, so a subscription that broke silently
//! takes the node out of the load balancer.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use publisher::wire::{StreamId, UserId};
use publisher::{Publisher, PublisherOptions};
use redis::Script;
use tokio::sync::{watch, Notify};

use super::{BoxFuture, Bus, BusError};
use crate::config::{ms, HistorySettings, RedisSettings, RedisTopology};
use crate::history::{self, Replay, StreamState};
use crate::hub::{Frame, Hub};
use crate::metrics::Metrics;

/// Channels per SUBSCRIBE/UNSUBSCRIBE command, and users per history pipeline, so that a
/// re-subscription of many users is a few round trips rather than one huge one.
const BATCH: usize = 1024;

static HISTORY_READ: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("history_read.lua")));

pub struct RedisBus {
    shared: Arc<Shared>,
    publisher: Publisher,
    history: HistoryReader,
}

/// State shared between the bus handle and its subscriber task.
struct Shared {
    pending: Mutex<Pending>,
    wake: Notify,
    /// The highest interest epoch whose changes Redis has confirmed.
    applied: watch::Sender<u64>,
    connected: AtomicBool,
    canary: Mutex<Canary>,
    canary_channel: String,
    canary_timeout: Duration,
}

/// The delivery self-check: canaries sent, and the oldest one not yet seen coming back.
#[derive(Default)]
struct Canary {
    sent: u64,
    unanswered_since: Option<(u64, tokio::time::Instant)>,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn canary(&self) -> std::sync::MutexGuard<'_, Canary> {
        self.canary.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn canary_returned(&self, seq: u64) {
        let mut canary = self.canary();
        if canary
            .unanswered_since
            .is_some_and(|(oldest, _)| oldest <= seq)
        {
            canary.unanswered_since = None;
        }
    }

    fn delivering(&self) -> bool {
        self.connected.load(Relaxed)
            && self
                .canary()
                .unanswered_since
                .is_none_or(|(_, since)| since.elapsed() <= self.canary_timeout)
    }
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
    /// `catch_up_limit`: most frames replayed to one user after a reconnect (keep it below
    /// the sockets' queue size).
    pub fn start(
        settings: &RedisSettings,
        history: &HistorySettings,
        catch_up_limit: usize,
        topology: &RedisTopology,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, BusError> {
        let options = PublisherOptions {
            pool_size: settings.publish_pool_size,
            max_payload_bytes: settings.max_payload_bytes,
            history_max_len: history.max_len,
            history_max_age: ms(history.max_age_ms),
            min_replica_acks: settings.min_replica_acks,
            ..PublisherOptions::default()
        };
        let unusable = |e: &dyn std::fmt::Display| BusError::Unavailable(e.to_string());
        let (master, publisher) = match (topology, settings.ca_file.trim()) {
            (RedisTopology::Sentinel(sentinel), _) => {
                let publisher = Publisher::with_sentinel(sentinel.clone(), options)
                    .map_err(|e| unusable(&e))?;
                (Master::Sentinel(publisher.clone()), publisher)
            }
            (RedisTopology::Single(url), "") => (
                Master::Fixed(redis::Client::open(url.as_str()).map_err(|e| unusable(&e))?),
                Publisher::with_options(url, options).map_err(|e| unusable(&e))?,
            ),
            (RedisTopology::Single(url), path) => {
                let ca_pem = std::fs::read(path).map_err(|e| {
                    unusable(&format!("configuration key `redis.ca_file`: {path:?}: {e}"))
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca_pem.clone()),
                };
                (
                    Master::Fixed(
                        redis::Client::build_with_tls(url.as_str(), certificates)
                            .map_err(|e| unusable(&e))?,
                    ),
                    Publisher::with_tls_ca(url, &ca_pem, options).map_err(|e| unusable(&e))?,
                )
            }
        };
        let reader = HistoryReader {
            publisher: publisher.clone(),
            timeout: ms(history.read_timeout_ms),
            max_age_ms: history.max_age_ms,
        };
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            wake: Notify::new(),
            applied: watch::Sender::new(0),
            connected: AtomicBool::new(false),
            canary: Mutex::default(),
            canary_channel: format!("gateway_canary:{}", node_id()),
            canary_timeout: ms(settings.canary_timeout_ms),
        });
        let timing = Timing {
            reconnect_min: ms(settings.reconnect_min_ms),
            reconnect_max: ms(settings.reconnect_max_ms),
            ping_interval: ms(settings.ping_interval_ms),
        };
        let subscriber = Subscriber {
            shared: shared.clone(),
            hub,
            metrics,
            timing,
            history: reader.clone(),
            catch_up_limit,
        };
        tokio::spawn(subscriber.run(master, shutdown.clone()));
        tokio::spawn(send_canaries(
            shared.clone(),
            publisher.clone(),
            ms(settings.canary_interval_ms),
            shutdown,
        ));
        Ok(RedisBus {
            shared,
            publisher,
            history: reader,
        })
    }
}

impl Bus for RedisBus {
    fn interest_changed(&self, user: UserId) -> BoxFuture<()> {
        let epoch = {
            let mut pending = self.shared.pending();
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

    fn publish(&self, users: Vec<UserId>, payload: Vec<u8>) -> BoxFuture<Result<usize, BusError>> {
        let publisher = self.publisher.clone();
        Box::pin(async move {
            publisher
                .publish_payload_many(&users, &payload)
                .await
                .map_err(|e| match e.kind() {
                    publisher::ErrorKind::InvalidInput | publisher::ErrorKind::TooLarge => {
                        BusError::Invalid(e.to_string())
                    }
                    _ => BusError::Unavailable(e.to_string()),
                })
        })
    }

    fn replay_after(
        &self,
        user: UserId,
        after: StreamId,
        limit: usize,
    ) -> BoxFuture<Result<Replay, BusError>> {
        let history = self.history.clone();
        Box::pin(async move {
            history
                .replay_after(&[(user, after)], limit)
                .await
                .map(|mut r| r.remove(0))
        })
    }

    fn history_page(
        &self,
        user: UserId,
        before: Option<StreamId>,
        limit: usize,
    ) -> BoxFuture<Result<Vec<Frame>, BusError>> {
        let history = self.history.clone();
        Box::pin(async move { history.page(user, before, limit).await })
    }

    fn is_ready(&self) -> bool {
        self.shared.delivering()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// Where the subscriber connects: a fixed server, or wherever the sentinels say the master is
/// (asked again on every reconnect).
enum Master {
    Fixed(redis::Client),
    Sentinel(Publisher),
}

impl Master {
    async fn client(&self) -> Result<redis::Client, String> {
        match self {
            Master::Fixed(client) => Ok(client.clone()),
            Master::Sentinel(publisher) => match publisher.master_client().await {
                Ok(Some(client)) => Ok(client),
                Ok(None) => Err("no master known".into()),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// Whether the sentinels now name another master than `connected`: a failover the
    /// subscriber did not notice as a broken link (the old master demoted, not dead).
    async fn moved_from(&self, connected: &redis::ConnectionAddr) -> bool {
        match self {
            Master::Fixed(_) => false,
            Master::Sentinel(_) => self
                .client()
                .await
                .is_ok_and(|now| now.get_connection_info().addr() != connected),
        }
    }
}

/// Reads users' history streams through the publisher's pool.
#[derive(Clone)]
struct HistoryReader {
    publisher: Publisher,
    timeout: Duration,
    max_age_ms: u64,
}

type StoredEntry = (String, Vec<(String, Vec<u8>)>);
type ReadReply = Option<(String, u64, u64, String, String, Vec<StoredEntry>)>;

impl HistoryReader {
    async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, BusError> {
        let run = async {
            let mut conn = self
                .publisher
                .connection()
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?;
            let mut result = pipe.query_async(&mut conn).await;
            if matches!(&result, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
            {
                HISTORY_READ
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await
                    .map_err(|e| BusError::Unavailable(e.to_string()))?;
                result = pipe.query_async(&mut conn).await;
            }
            result.map_err(|e| BusError::Unavailable(e.to_string()))
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .unwrap_or_else(|_| Err(BusError::Unavailable("history read timed out".into())))
    }

    /// One replay per `(user, after)`, in one round trip.
    async fn replay_after(
        &self,
        reads: &[(UserId, StreamId)],
        limit: usize,
    ) -> Result<Vec<Replay>, BusError> {
        let mut pipe = redis::pipe();
        for (user, after) in reads {
            pipe.invoke_script(
                HISTORY_READ
                    .key(user.history_key())
                    .arg(format!("({after}"))
                    .arg(limit + 1),
            );
        }
        let replies: Vec<ReadReply> = self.query(&pipe).await?;
        Ok(reads
            .iter()
            .zip(replies)
            .map(|((_, after), reply)| {
                let (state, entries) = match reply {
                    None => (None, Vec::new()),
                    Some((last, _added, _length, first, now_ms, entries)) => {
                        let state = StreamState {
                            last_id: last.parse().unwrap_or_default(),
                            first_id: first.parse().ok(),
                            now_ms: now_ms.parse().unwrap_or_else(|_| history::now_ms()),
                        };
                        (Some(state), parse_entries(entries))
                    }
                };
                history::plan_replay(*after, state, entries, limit, self.max_age_ms)
            })
            .collect())
    }

    /// The newest stored id of each user, `ZERO` for users without history.
    async fn newest_ids(&self, users: &[UserId]) -> Result<Vec<StreamId>, BusError> {
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("XREVRANGE")
                .arg(user.history_key())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<Vec<StoredEntry>> = self.query(&pipe).await?;
        Ok(replies
            .into_iter()
            .map(|newest| {
                newest
                    .first()
                    .and_then(|(id, _)| id.parse().ok())
                    .unwrap_or(StreamId::ZERO)
            })
            .collect())
    }

    async fn page(
        &self,
        user: UserId,
        before: Option<StreamId>,
        limit: usize,
    ) -> Result<Vec<Frame>, BusError> {
        let mut pipe = redis::pipe();
        let end = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        pipe.cmd("XREVRANGE")
            .arg(user.history_key())
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(limit);
        let (entries,): (Vec<StoredEntry>,) = self.query(&pipe).await?;
        Ok(parse_entries(entries)
            .into_iter()
            .filter_map(|(id, payload)| history::stored_frame(id, &payload))
            .collect())
    }
}

fn parse_entries(entries: Vec<StoredEntry>) -> Vec<(StreamId, Vec<u8>)> {
    entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let id = id.parse().ok()?;
            let payload = fields
                .into_iter()
                .find(|(f, _)| f == publisher::wire::HISTORY_FIELD)?
                .1;
            Some((id, payload))
        })
        .collect()
}

/// The task that owns the subscriber connection.
struct Subscriber {
    shared: Arc<Shared>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    timing: Timing,
    history: HistoryReader,
    /// Most frames replayed to one user at once: below its sockets' queue size, so that a
    /// catch-up never evicts a healthy socket; beyond it, the newest and a missed frame.
    catch_up_limit: usize,
}

impl Subscriber {
    async fn run(self, master: Master, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.timing.reconnect_min;
        let mut ever_connected = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let connect = async {
                let client = master
                    .client()
                    .await
                    .map_err(|e| redis::RedisError::from((redis::ErrorKind::Io, "no master", e)))?;
                let pubsub = client.get_async_pubsub().await?;
                Ok::<_, redis::RedisError>((pubsub, client.get_connection_info().addr().clone()))
            };
            match tokio::time::timeout(self.timing.ping_interval, connect).await {
                Ok(Ok((pubsub, addr))) => {
                    if ever_connected {
                        self.metrics.redis_reconnects_total.fetch_add(1, Relaxed);
                    }
                    ever_connected = true;
                    backoff = self.timing.reconnect_min;
                    let outcome = self.serve(pubsub, &master, &addr, &mut shutdown).await;
                    self.shared.connected.store(false, Relaxed);
                    self.metrics.redis_connected.store(0, Relaxed);
                    self.metrics.subscriptions.store(0, Relaxed);
                    match outcome {
                        Ok(()) => return,
                        Err(reason) => tracing::warn!(%reason, "redis subscriber connection lost"),
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, retry_in = ?backoff, "redis connect failed")
                }
                Err(_) => tracing::warn!(retry_in = ?backoff, "redis connect timed out"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(self.timing.reconnect_max);
        }
    }

    /// Serves one subscriber connection until it fails (`Err`) or the node shuts down (`Ok`).
    async fn serve(
        &self,
        pubsub: redis::aio::PubSub,
        master: &Master,
        addr: &redis::ConnectionAddr,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let (mut sink, mut stream) = pubsub.split();
        let mut subscribed = HashSet::new();

        // A fresh connection has no subscriptions: take everything the hub wants. Interest
        // changes up to `epoch` are reflected in the hub already, so this round confirms them.
        let epoch = {
            let mut pending = self.shared.pending();
            pending.dirty.clear();
            pending.requested
        };
        let cursors = self.hub.cursors();
        let wanted: Vec<UserId> = cursors.iter().map(|(user, _)| *user).collect();
        // Users whose first socket came while the link was down have no cursor yet: it starts
        // at the newest stored id, read before subscribing so that nothing published in
        // between can be taken for a duplicate (the catch-up below replays it).
        let unknown: Vec<UserId> = cursors
            .iter()
            .filter(|(_, cursor)| cursor.is_none())
            .map(|(user, _)| *user)
            .collect();
        self.start_cursors(&unknown)
            .await
            .map_err(|e| format!("reading history ids failed: {e}"))?;
        let canary = [self.shared.canary_channel.as_str()];
        match tokio::time::timeout(self.timing.ping_interval, sink.subscribe(&canary)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(format!("subscribe failed: {error}")),
            Err(_) => return Err("subscribe timed out".into()),
        }
        // Canaries sent over the previous link are not coming back.
        self.shared.canary().unanswered_since = None;
        apply(
            &mut sink,
            &mut subscribed,
            wanted.clone(),
            Vec::new(),
            self.timing.ping_interval,
        )
        .await?;
        // Subscribed again: what was published while the link was down is in history.
        self.catch_up(&wanted)
            .await
            .map_err(|e| format!("catch-up failed: {e}"))?;
        self.shared.connected.store(true, Relaxed);
        self.metrics.redis_connected.store(1, Relaxed);
        self.metrics
            .subscriptions
            .store(subscribed.len() as u64, Relaxed);
        confirm(&self.shared, epoch);
        tracing::info!(channels = subscribed.len(), "redis subscriber connected");

        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + self.timing.ping_interval,
            self.timing.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err("connection closed".into());
                    };
                    if message.get_channel_name() == self.shared.canary_channel {
                        let seq = std::str::from_utf8(message.get_payload_bytes()).ok().and_then(|s| s.parse().ok());
                        self.shared.canary_returned(seq.unwrap_or(0));
                        continue;
                    }
                    match UserId::from_channel(message.get_channel_name().as_bytes()) {
                        Some(user) => {
                            self.hub.deliver(user, message.get_payload_bytes());
                        }
                        None => tracing::debug!(channel = message.get_channel_name(), "message on a foreign channel"),
                    }
                }
                _ = self.shared.wake.notified() => {
                    let (dirty, epoch) = {
                        let mut pending = self.shared.pending();
                        (std::mem::take(&mut pending.dirty), pending.requested)
                    };
                    let (mut add, mut remove) = (Vec::new(), Vec::new());
                    for user in dirty {
                        match (self.hub.wants(user), subscribed.contains(&user)) {
                            (true, false) => add.push(user),
                            (false, true) => remove.push(user),
                            _ => {}
                        }
                    }
                    // Cursors first, then SUBSCRIBE, then replay what was stored in between.
                    self.start_cursors(&add).await.map_err(|e| format!("reading history ids failed: {e}"))?;
                    apply(&mut sink, &mut subscribed, add.clone(), remove, self.timing.ping_interval).await?;
                    self.catch_up(&add).await.map_err(|e| format!("catch-up failed: {e}"))?;
                    self.metrics.subscriptions.store(subscribed.len() as u64, Relaxed);
                    confirm(&self.shared, epoch);
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(self.timing.ping_interval, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(format!("ping failed: {error}")),
                        Err(_) => return Err("ping timed out".into()),
                    }
                    if tokio::time::timeout(self.timing.ping_interval, master.moved_from(addr)).await == Ok(true) {
                        return Err(format!("the master moved away from {addr}"));
                    }
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// For users about to be subscribed: everything already stored was published before
    /// their first socket opened, so their cursor starts at the newest stored id.
    async fn start_cursors(&self, users: &[UserId]) -> Result<(), BusError> {
        for batch in users.chunks(BATCH) {
            let newest = self.history.newest_ids(batch).await?;
            for (user, id) in batch.iter().zip(newest) {
                self.hub.advance_cursor(*user, id);
            }
        }
        Ok(())
    }

    /// Replays to each of `users` what history holds after its cursor: what was published
    /// while the link was down, or between reading the cursor and SUBSCRIBE. The hub drops
    /// what its sockets already have; a missed frame resets the cursor (history was lost, or
    /// went back after a failover) so that new notifications are not taken for duplicates.
    async fn catch_up(&self, users: &[UserId]) -> Result<(), BusError> {
        let reads: Vec<(UserId, StreamId)> = users
            .iter()
            .filter_map(|user| Some((*user, self.hub.cursor(*user)?)))
            .collect();
        let mut replayed = 0;
        for batch in reads.chunks(BATCH) {
            let replays = self
                .history
                .replay_after(batch, self.catch_up_limit)
                .await?;
            for ((user, _), replay) in batch.iter().zip(replays) {
                if let Some(missed) = replay.missed {
                    replayed += 1;
                    self.hub.deliver_missed(*user, missed);
                }
                for frame in replay.entries {
                    replayed += 1;
                    self.hub.deliver_frame(*user, frame);
                }
            }
        }
        if replayed > 0 {
            tracing::info!(
                users = reads.len(),
                frames = replayed,
                "caught up from history"
            );
        }
        Ok(())
    }
}

/// Publishes a canary to this node's own channel every `interval` while the subscriber link is
/// up. One that fails to publish counts as unanswered too: the node cannot reach Redis.
async fn send_canaries(
    shared: Arc<Shared>,
    publisher: Publisher,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if !shared.connected.load(Relaxed) {
            continue;
        }
        let seq = {
            let mut canary = shared.canary();
            canary.sent += 1;
            let seq = canary.sent;
            canary
                .unanswered_since
                .get_or_insert((seq, tokio::time::Instant::now()));
            seq
        };
        let publish = async {
            let mut conn = publisher.connection().await.map_err(|e| e.to_string())?;
            redis::cmd("PUBLISH")
                .arg(&shared.canary_channel)
                .arg(seq)
                .query_async::<u64>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(shared.canary_timeout, publish).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "canary publish failed"),
            Err(_) => tracing::warn!("canary publish timed out"),
        }
        if !shared.delivering() {
            tracing::warn!(seq, "canary not delivered in time: reporting not ready");
        }
    }
}

/// A name for this node's canary channel, unique enough among replicas.
fn node_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", std::process::id(), nanos)
}

/// SUBSCRIBEs `add` and UNSUBSCRIBEs `remove`, in batches, each bounded by `timeout`.
async fn apply(
    sink: &mut redis::aio::PubSubSink,
    subscribed: &mut HashSet<UserId>,
    add: Vec<UserId>,
    remove: Vec<UserId>,
    timeout: Duration,
) -> Result<(), String> {
    for batch in add.chunks(BATCH) {
        let channels: Vec<String> = batch.iter().map(|u| u.channel()).collect();
        match tokio::time::timeout(timeout, sink.subscribe(&channels)).await {
            Ok(Ok(())) => subscribed.extend(batch),
            Ok(Err(error)) => return Err(format!("subscribe failed: {error}")),
            Err(_) => return Err("subscribe timed out".into()),
        }
    }
    for batch in remove.chunks(BATCH) {
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
