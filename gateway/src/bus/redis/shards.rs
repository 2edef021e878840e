//! The subscriber of a Redis Cluster: sharded pub/sub (SSUBSCRIBE, Redis 7+), one connection
//! per master shard, never one per user or per slot.
//!
//! redis-rs 1.8's cluster pub/sub re-subscribes after a reconnect with one SSUBSCRIBE per node
//! naming channels of many slots, which Redis refuses (CROSSSLOT), and delivery then stops
//! silently; its multiplexed connection would also take a server-initiated `sunsubscribe`
//! for the reply of the command in flight. So each shard link here is a plain TCP connection
//! in RESP2 subscribed mode that this task drives itself:
//!
//! - a reader task per link parses what Redis sends: `smessage` goes straight to the hub (the
//!   hot path, no hop through this task), everything else (confirmations, `pong`, errors,
//!   `sunsubscribe` pushes, the link closing) comes here as an [`Event`];
//! - SSUBSCRIBE/SUNSUBSCRIBE are sent per slot (one call may only name channels of one slot)
//!   to the master the slot map names;
//! - a user whose subscription is gone (its shard's link broke, Redis pushed `sunsubscribe`
//!   because the slot changed owner, a MOVED reply) becomes *lost*: the slot map is read again
//!   (`CLUSTER SLOTS`) and the user is SSUBSCRIBEd on the new owner, then caught up from
//!   history after its cursor, the same sequence as the single-server subscriber's; a dead
//!   shard is retried with backoff while the other shards keep delivering;
//! - every `redis.ping_interval_ms` each link is PINGed (a link without a `pong` by the next
//!   tick is dropped) and the slot map is compared with where users are subscribed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use publisher::wire::UserId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::held::Held;
use super::subscriber::{Subscriber, STEP};
use crate::bus::BusError;

/// Channels per SSUBSCRIBE (all of one slot), users per history batch.
const BATCH: usize = 1024;

/// What a shard link's reader reports, other than messages.
#[derive(Debug)]
enum Event {
    /// A reply or a push: `ssubscribe`/`sunsubscribe` confirmations and pushes, `pong`, `+OK`.
    Reply(Resp),
    /// An error reply (`-MOVED ...`, `-NOAUTH ...`).
    Error(String),
    /// The connection ended.
    Closed(String),
}

/// One RESP2 value as a subscribed connection sends it (arrays hold no arrays there).
#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

impl Resp {
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Resp::Bulk(Some(b)) => Some(b),
            Resp::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// `[kind, channel, ...]` of a pub/sub array.
    fn push(&self) -> Option<(&[u8], &[u8])> {
        match self {
            Resp::Array(items) if items.len() >= 2 => Some((items[0].bytes()?, items[1].bytes()?)),
            _ => None,
        }
    }
}

/// Reads one RESP2 value; an error reply is `Ok(Err(text))`. `line` is a scratch buffer
/// kept across calls (no allocation per line on the message path).
async fn read_value(
    reader: &mut BufReader<OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> std::io::Result<Result<Resp, String>> {
    let len = match read_scalar_or_header(reader, line).await? {
        Ok(Resp::Array(header)) => match header[..] {
            [Resp::Int(n)] => n.max(0),
            _ => 0,
        },
        other => return Ok(other),
    };
    let mut items = Vec::with_capacity(len as usize);
    for _ in 0..len {
        match read_scalar_or_header(reader, line).await? {
            Ok(Resp::Array(_)) => return Err(protocol("nested array on a pub/sub link")),
            Ok(item) => items.push(item),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(Resp::Array(items)))
}

fn protocol(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// A scalar, or for `*n` an `Array` holding only `Int(n)` (the caller reads the items).
async fn read_scalar_or_header(
    reader: &mut BufReader<OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> std::io::Result<Result<Resp, String>> {
    line.clear();
    if reader.read_until(b'\n', line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") || line.len() < 3 {
        return Err(protocol("truncated RESP line"));
    }
    let body = &line[1..line.len() - 2];
    let text = || String::from_utf8_lossy(body).into_owned();
    let number = || {
        std::str::from_utf8(body)
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| protocol("bad RESP number"))
    };
    Ok(Ok(match line[0] {
        b'+' => Resp::Simple(text()),
        b'-' => return Ok(Err(text())),
        b':' => Resp::Int(number()?),
        b'$' => {
            let len = number()?;
            if len < 0 {
                Resp::Bulk(None)
            } else {
                let mut data = vec![0; len as usize + 2];
                reader.read_exact(&mut data).await?;
                data.truncate(len as usize);
                Resp::Bulk(Some(data))
            }
        }
        b'*' => Resp::Array(vec![Resp::Int(number()?)]),
        _ => return Err(protocol("unknown RESP type")),
    }))
}

/// A command as RESP2 bytes.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One subscriber connection to a master.
struct Link {
    id: u64,
    writer: OwnedWriteHalf,
    reader: tokio::task::JoinHandle<()>,
    /// A PING sent and not answered yet.
    ping_outstanding: bool,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Slot ranges and the address (`host:port`) of the master serving each.
#[derive(Default, Debug, Clone, PartialEq)]
struct SlotMap(Vec<(u16, u16, String)>);

impl SlotMap {
    fn owner(&self, slot: u16) -> Option<&str> {
        self.0
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, addr)| addr.as_str())
    }

    /// From a `CLUSTER SLOTS` reply; an empty host means the node that answered.
    fn parse(reply: redis::Value, asked: &str) -> Option<Self> {
        let redis::Value::Array(ranges) = reply else {
            return None;
        };
        let mut map = Vec::new();
        for range in ranges {
            let redis::Value::Array(fields) = range else {
                return None;
            };
            let int = |v: &redis::Value| match v {
                redis::Value::Int(n) => u16::try_from(*n).ok(),
                _ => None,
            };
            let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
            let redis::Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                redis::Value::BulkString(h) => String::from_utf8_lossy(h).into_owned(),
                redis::Value::SimpleString(h) => h.clone(),
                _ => return None,
            };
            let port = match master.get(1)? {
                redis::Value::Int(p) => *p,
                _ => return None,
            };
            let host = if host.is_empty() || host == "?" {
                asked.rsplit_once(':')?.0.to_owned()
            } else {
                host
            };
            map.push((start, end, format!("{host}:{port}")));
        }
        Some(SlotMap(map))
    }
}

/// The cluster slot of a key or shard channel, as Redis computes it: CRC16 (XMODEM) of the
/// hash tag (the part between the first `{` and the next `}`, when not empty) or of the whole
/// name, modulo 16384. (redis-rs computes it too, but keeps that private.)
fn slot_of(name: &str) -> u16 {
    let bytes = name.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// Why one shard could not be (re)subscribed this round.
#[derive(Debug, thiserror::Error)]
enum ShardError {
    #[error("connect to {0} failed: {1}")]
    Connect(String, String),
    #[error("{0}: {1}")]
    Command(String, String),
    #[error("{0} timed out")]
    TimedOut(String),
    #[error("slot {slot} moved to {to}")]
    Moved { slot: u16, to: String },
    #[error("no master known for slot {0}")]
    NoOwner(u16),
    #[error("{0} is not a master (the slot map is stale)")]
    NotMaster(String),
    #[error("history: {0}")]
    History(#[from] BusError),
}

pub(super) struct ClusterSubscriber {
    pub(super) base: Subscriber,
    pub(super) seeds: Vec<String>,
    pub(super) password: Option<String>,
    pub(super) publisher: publisher::Publisher,
    map: SlotMap,
    links: HashMap<String, Link>,
    next_link_id: u64,
    events_tx: mpsc::UnboundedSender<(u64, Event)>,
    events: mpsc::UnboundedReceiver<(u64, Event)>,
    /// Users SSUBSCRIBEd, and the link (address) they are on.
    subscribed: HashMap<UserId, String>,
    /// Users whose subscription is gone: re-subscribe and catch up.
    lost: HashSet<UserId>,
    /// The link the canary channel is SSUBSCRIBEd on.
    canary_on: Option<String>,
    /// Nodes that pushed `sunsubscribe`: checked before anything is subscribed there again.
    suspects: HashSet<String>,
}

impl ClusterSubscriber {
    pub(super) fn new(
        base: Subscriber,
        seeds: Vec<String>,
        password: Option<String>,
        publisher: publisher::Publisher,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        ClusterSubscriber {
            base,
            seeds,
            password,
            publisher,
            map: SlotMap::default(),
            links: HashMap::new(),
            next_link_id: 0,
            events_tx,
            events,
            subscribed: HashMap::new(),
            lost: HashSet::new(),
            canary_on: None,
            suspects: HashSet::new(),
        }
    }

    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let timing = self.base.timing.clone();
        let mut ping = tokio::time::interval(timing.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = timing.reconnect_min;
        let mut retry_at: Option<Instant> = Some(Instant::now());
        // Everything the hub wants now starts as lost: subscribed and caught up on the first
        // pass (users without a cursor get theirs first).
        {
            let mut pending = self.base.shared.pending();
            pending.dirty.clear();
        }
        let mut confirm_epoch = self.base.shared.pending().requested;
        self.lost
            .extend(self.base.hub.cursors().into_iter().map(|(u, _)| u));
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.base.shared.wake.notified() => {
                    let (dirty, epoch) = {
                        let mut pending = self.base.shared.pending();
                        (std::mem::take(&mut pending.dirty), pending.requested)
                    };
                    self.lost.extend(dirty.into_keys());
                    confirm_epoch = epoch;
                    retry_at = Some(Instant::now());
                }
                event = self.events.recv() => {
                    let Some((link, event)) = event else { return };
                    self.handle(link, event);
                    if !self.lost.is_empty() || self.canary_on.is_none() {
                        retry_at.get_or_insert(Instant::now());
                    }
                }
                _ = ping.tick() => {
                    self.ping_links().await;
                    if let Some(map) = self.read_slot_map().await {
                        self.follow(map);
                    }
                    if !self.lost.is_empty() || self.canary_on.is_none() {
                        retry_at.get_or_insert(Instant::now());
                    }
                }
                _ = retry => {
                    let done = self.reconcile().await;
                    // Confirmed even when a shard is down: its users are retried (and caught
                    // up) as soon as it is back, and the others must not wait for it.
                    self.base.shared.confirm(confirm_epoch);
                    self.publish_state();
                    if done {
                        backoff = timing.reconnect_min;
                        retry_at = None;
                    } else {
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(timing.reconnect_max);
                    }
                }
            }
        }
    }

    /// Readiness and gauges. The node is ready while its canary's shard link is up and
    /// canaries come back; users of a shard that is down (no replica took over yet) do not
    /// make it unready: every gateway shares that outage, and taking them all out of the load
    /// balancer would stop delivery for the other shards too. Those users are re-subscribed
    /// and caught up as soon as their slots are served again.
    fn publish_state(&self) {
        let linked = self.canary_on.is_some();
        self.base.shared.connected.store(linked, Relaxed);
        self.base
            .metrics
            .redis_connected
            .store(u64::from(linked), Relaxed);
        self.base
            .metrics
            .subscriptions
            .store(self.subscribed.len() as u64, Relaxed);
    }

    /// An event from a link outside a command of ours: a `sunsubscribe` pushed because its
    /// slot changed owner, or the link closing.
    fn handle(&mut self, link: u64, event: Event) {
        let Some(addr) = self.address_of(link) else {
            return;
        };
        match event {
            Event::Closed(reason) => {
                tracing::warn!(shard = %addr, %reason, "redis shard link lost");
                self.drop_link(&addr);
            }
            Event::Reply(reply) => match reply.push() {
                Some((b"sunsubscribe", channel)) => self.unsubscribed_by_redis(&addr, channel),
                Some((b"pong", _)) => {
                    if let Some(l) = self.links.get_mut(&addr) {
                        l.ping_outstanding = false;
                    }
                }
                _ => tracing::debug!(shard = %addr, ?reply, "unexpected reply on a shard link"),
            },
            Event::Error(error) => {
                tracing::warn!(shard = %addr, %error, "error on a shard link");
            }
        }
    }

    fn address_of(&self, link: u64) -> Option<String> {
        self.links
            .iter()
            .find(|(_, l)| l.id == link)
            .map(|(a, _)| a.clone())
    }

    fn unsubscribed_by_redis(&mut self, addr: &str, channel: &[u8]) {
        self.suspects.insert(addr.to_owned());
        if channel == self.base.shared.canary.channel.as_bytes() {
            if self.canary_on.as_deref() == Some(addr) {
                self.canary_on = None;
            }
            return;
        }
        if let Some(user) = UserId::from_channel(channel) {
            if self.subscribed.get(&user).is_some_and(|a| a == addr) {
                self.subscribed.remove(&user);
                self.lost.insert(user);
            }
        }
    }

    /// Forgets a link: its users are lost, its canary too.
    fn drop_link(&mut self, addr: &str) {
        self.links.remove(addr);
        let gone: Vec<UserId> = self
            .subscribed
            .iter()
            .filter(|(_, a)| *a == addr)
            .map(|(u, _)| *u)
            .collect();
        for user in gone {
            self.subscribed.remove(&user);
            self.lost.insert(user);
        }
        if self.canary_on.as_deref() == Some(addr) {
            self.canary_on = None;
        }
        self.base
            .metrics
            .redis_reconnects_total
            .fetch_add(1, Relaxed);
        self.publish_state();
    }

    /// PINGs every link; one that did not answer the previous PING is dropped.
    async fn ping_links(&mut self) {
        let addrs: Vec<String> = self.links.keys().cloned().collect();
        for addr in addrs {
            let silent = self.links.get(&addr).is_some_and(|l| l.ping_outstanding);
            if silent {
                tracing::warn!(shard = %addr, "redis shard link did not answer PING");
                self.drop_link(&addr);
                continue;
            }
            let timeout = self.base.timing.ping_interval;
            let Some(link) = self.links.get_mut(&addr) else {
                continue;
            };
            link.ping_outstanding = true;
            let ping = encode(&[b"PING"]);
            let sent = tokio::time::timeout(timeout, link.writer.write_all(&ping));
            if !matches!(sent.await, Ok(Ok(()))) {
                self.drop_link(&addr);
            }
        }
    }

    /// Users (and the canary) subscribed where the slot map no longer puts their slot move.
    fn follow(&mut self, map: SlotMap) {
        if map == self.map {
            return;
        }
        self.map = map;
        let misplaced: Vec<UserId> = self
            .subscribed
            .iter()
            .filter(|(user, addr)| self.map.owner(slot_of(&user.channel())) != Some(addr.as_str()))
            .map(|(u, _)| *u)
            .collect();
        if !misplaced.is_empty() {
            tracing::info!(
                users = misplaced.len(),
                "slot map changed: moving subscriptions"
            );
        }
        for user in misplaced {
            self.subscribed.remove(&user);
            self.lost.insert(user);
        }
        let canary_slot = slot_of(&self.base.shared.canary.channel);
        if self.canary_on.is_some() && self.map.owner(canary_slot) != self.canary_on.as_deref() {
            self.canary_on = None;
        }
        // Links to nodes that serve no slot any more (demoted, removed) are closed.
        let masters: HashSet<&str> = self.map.0.iter().map(|(_, _, a)| a.as_str()).collect();
        let stale: Vec<String> = self
            .links
            .keys()
            .filter(|a| !masters.contains(a.as_str()))
            .cloned()
            .collect();
        for addr in stale {
            self.drop_link(&addr);
        }
    }

    /// `CLUSTER SLOTS`, through the publisher's cluster connection, else from a seed.
    async fn read_slot_map(&self) -> Option<SlotMap> {
        let timeout = self.base.timing.ping_interval;
        let via_pool = async {
            let mut conn = self.publisher.connection().await.ok()?;
            let reply: redis::Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await
                .ok()?;
            SlotMap::parse(reply, self.seeds.first()?)
        };
        if let Ok(Some(map)) = tokio::time::timeout(timeout, via_pool).await {
            if !map.0.is_empty() {
                return Some(map);
            }
        }
        for seed in &self.seeds {
            if let Some(map) = self.slots_from(seed).await {
                return Some(map);
            }
        }
        None
    }

    /// A short-lived plain connection to `node` (not a subscribed link: those only take
    /// pub/sub commands).
    async fn ask<T: redis::FromRedisValue>(&self, node: &str, cmd: &redis::Cmd) -> Option<T> {
        let ask = async {
            let url = match &self.password {
                Some(p) => format!("redis://:{}@{node}", publisher::wire::percent_encode(p)),
                None => format!("redis://{node}"),
            };
            let client = redis::Client::open(url).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            cmd.query_async(&mut conn).await.ok()
        };
        tokio::time::timeout(self.base.timing.ping_interval, ask)
            .await
            .ok()
            .flatten()
    }

    /// `CLUSTER SLOTS` as `node` sees it.
    async fn slots_from(&self, node: &str) -> Option<SlotMap> {
        let reply: redis::Value = self.ask(node, redis::cmd("CLUSTER").arg("SLOTS")).await?;
        SlotMap::parse(reply, node).filter(|map| !map.0.is_empty())
    }

    /// Whether `node` is a master now (`None`: it did not answer). A replica accepts
    /// SSUBSCRIBE for its master's slots, but after a full resynchronisation (a demoted
    /// master, a new replica) it never relays what was published before it was in sync: a
    /// subscription there would skip notifications silently.
    async fn is_master(&self, node: &str) -> Option<bool> {
        let info: String = self
            .ask(node, redis::cmd("INFO").arg("replication"))
            .await?;
        Some(info.lines().any(|l| l.trim() == "role:master"))
    }

    /// Subscribes the lost users the hub still wants (and the canary), unsubscribes the ones
    /// it no longer wants. `true` when nothing is left to retry.
    async fn reconcile(&mut self) -> bool {
        if self.map.0.is_empty() {
            match self.read_slot_map().await {
                Some(map) => self.map = map,
                None => {
                    tracing::warn!("no cluster node answered CLUSTER SLOTS");
                    return false;
                }
            }
        }
        // A node that pushed sunsubscribe lost slots: to a migration (it is still a master),
        // or to a failover (it is a replica now). Its own slot map is the freshest.
        let suspects: Vec<String> = self.suspects.drain().collect();
        for node in suspects {
            if self.is_master(&node).await == Some(false) {
                tracing::info!(shard = %node, "no longer a master: leaving it");
                self.drop_link(&node);
            }
            if let Some(map) = self.slots_from(&node).await {
                self.follow(map);
            }
        }
        let lost: Vec<UserId> = self.lost.drain().collect();
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for user in lost {
            match (
                self.base.hub.wants(user),
                self.subscribed.contains_key(&user),
            ) {
                (true, false) => add.push(user),
                (false, true) => remove.push(user),
                _ => {}
            }
        }
        let mut ok = true;
        if let Err(error) = self.unsubscribe(&remove).await {
            tracing::warn!(%error, "SUNSUBSCRIBE failed");
        }
        if self.canary_on.is_none() {
            if let Err(error) = self.subscribe_canary().await {
                tracing::warn!(%error, "canary SSUBSCRIBE failed");
                ok = false;
            }
        }
        // Per shard: a shard that is down must not hold up the others.
        let mut by_owner: HashMap<String, Vec<UserId>> = HashMap::new();
        for user in add {
            match self.map.owner(slot_of(&user.channel())) {
                Some(addr) => by_owner.entry(addr.to_owned()).or_default().push(user),
                None => {
                    self.lost.insert(user);
                }
            }
        }
        let mut moved = false;
        for (addr, users) in by_owner {
            // In steps: the users of a step have their live messages held until caught up.
            let mut failed = false;
            for step in users.chunks(STEP) {
                if !failed {
                    if let Err(error) = self.subscribe_on(&addr, step).await {
                        tracing::warn!(shard = %addr, users = users.len(), %error, "re-subscription failed; retrying");
                        moved |= matches!(error, ShardError::Moved { .. });
                        failed = true;
                        ok = false;
                    }
                }
                for user in step {
                    if !self.subscribed.contains_key(user) {
                        self.lost.insert(*user);
                    }
                }
            }
        }
        if moved || !ok {
            if let Some(map) = self.read_slot_map().await {
                self.follow(map);
            }
        }
        ok && self.lost.is_empty()
    }

    /// The one subscribe sequence, per shard: cursors of new users, SSUBSCRIBE per slot,
    /// catch-up from history, as in the single-server subscriber.
    async fn subscribe_on(&mut self, addr: &str, users: &[UserId]) -> Result<(), ShardError> {
        // The link first: a shard that is down refuses it at once, where its history reads
        // would wait out their timeout and hold up the other shards.
        self.link(addr).await?;
        let new: Vec<UserId> = users
            .iter()
            .copied()
            .filter(|u| self.base.hub.cursor(*u).is_none())
            .collect();
        self.base.start_cursors(&new).await?;
        let mut by_slot: HashMap<u16, Vec<UserId>> = HashMap::new();
        for user in users {
            by_slot
                .entry(slot_of(&user.channel()))
                .or_default()
                .push(*user);
        }
        let mut done = Vec::with_capacity(users.len());
        let mut failure = None;
        self.base.held.hold(users);
        for (slot, group) in by_slot {
            for batch in group.chunks(BATCH) {
                let channels: Vec<String> = batch.iter().map(|u| u.channel()).collect();
                match self.command(addr, b"SSUBSCRIBE", &channels).await {
                    Ok(()) => {
                        for user in batch {
                            self.subscribed.insert(*user, addr.to_owned());
                        }
                        done.extend_from_slice(batch);
                    }
                    Err(ShardError::Moved { to, .. }) => {
                        failure = Some(ShardError::Moved { slot, to });
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if matches!(
                failure,
                Some(ShardError::Connect(..) | ShardError::TimedOut(_) | ShardError::Command(..))
            ) {
                break;
            }
        }
        // Caught up even when some slots failed: the users subscribed here are live now.
        let caught_up = self.base.catch_up_held(&done).await;
        self.base.held.release_all(&self.base.hub, users);
        caught_up?;
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn subscribe_canary(&mut self) -> Result<(), ShardError> {
        let channel = self.base.shared.canary.channel.clone();
        let slot = slot_of(&channel);
        let addr = self
            .map
            .owner(slot)
            .ok_or(ShardError::NoOwner(slot))?
            .to_owned();
        self.command(&addr, b"SSUBSCRIBE", &[channel]).await?;
        self.base.shared.canary.forget_unanswered();
        self.canary_on = Some(addr);
        Ok(())
    }

    async fn unsubscribe(&mut self, users: &[UserId]) -> Result<(), ShardError> {
        let mut groups: HashMap<(String, u16), Vec<UserId>> = HashMap::new();
        for user in users {
            if let Some(addr) = self.subscribed.remove(user) {
                groups
                    .entry((addr, slot_of(&user.channel())))
                    .or_default()
                    .push(*user);
            }
        }
        for ((addr, _), group) in groups {
            for batch in group.chunks(BATCH) {
                let channels: Vec<String> = batch.iter().map(|u| u.channel()).collect();
                if self.links.contains_key(&addr) {
                    self.command(&addr, b"SUNSUBSCRIBE", &channels).await?;
                }
            }
        }
        Ok(())
    }

    /// The link to `addr`, connected (and authenticated) if there is none.
    async fn link(&mut self, addr: &str) -> Result<u64, ShardError> {
        if let Some(link) = self.links.get(addr) {
            return Ok(link.id);
        }
        if self.is_master(addr).await == Some(false) {
            return Err(ShardError::NotMaster(addr.to_owned()));
        }
        let timeout = self.base.timing.ping_interval;
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| ShardError::TimedOut(format!("connect to {addr}")))?
            .map_err(|e| ShardError::Connect(addr.to_owned(), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (read, writer) = stream.into_split();
        self.next_link_id += 1;
        let id = self.next_link_id;
        let reader = tokio::spawn(read_link(
            id,
            BufReader::with_capacity(64 * 1024, read),
            self.events_tx.clone(),
            self.base.hub.clone(),
            self.base.shared.clone(),
            self.base.held.clone(),
        ));
        self.links.insert(
            addr.to_owned(),
            Link {
                id,
                writer,
                reader,
                ping_outstanding: false,
            },
        );
        if let Some(password) = self.password.clone() {
            if let Err(e) = self.auth(addr, &password).await {
                self.links.remove(addr);
                return Err(e);
            }
        }
        tracing::info!(shard = %addr, "redis shard link connected");
        Ok(id)
    }

    async fn auth(&mut self, addr: &str, password: &str) -> Result<(), ShardError> {
        self.send(addr, &encode(&[b"AUTH", password.as_bytes()]))
            .await?;
        let id = self.links.get(addr).map(|l| l.id).unwrap_or_default();
        match self.reply(id, addr).await? {
            Event::Reply(Resp::Simple(ok)) if ok == "OK" => Ok(()),
            other => Err(ShardError::Command(
                addr.to_owned(),
                format!("AUTH: {other:?}"),
            )),
        }
    }

    async fn send(&mut self, addr: &str, bytes: &[u8]) -> Result<(), ShardError> {
        let timeout = self.base.timing.ping_interval;
        let link = self
            .links
            .get_mut(addr)
            .ok_or_else(|| ShardError::Connect(addr.to_owned(), "no link".into()))?;
        match tokio::time::timeout(timeout, link.writer.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.drop_link(addr);
                Err(ShardError::Command(addr.to_owned(), e.to_string()))
            }
            Err(_) => {
                self.drop_link(addr);
                Err(ShardError::TimedOut(format!("write to {addr}")))
            }
        }
    }

    /// The next event of link `id`; events of other links are handled meanwhile.
    async fn reply(&mut self, id: u64, addr: &str) -> Result<Event, ShardError> {
        let deadline = Instant::now() + self.base.timing.ping_interval;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv()).await;
            match next {
                Err(_) => {
                    self.drop_link(addr);
                    return Err(ShardError::TimedOut(format!("reply from {addr}")));
                }
                Ok(None) => return Err(ShardError::Connect(addr.to_owned(), "closed".into())),
                Ok(Some((link, event))) if link == id => {
                    if let Event::Closed(reason) = &event {
                        let reason = reason.clone();
                        self.drop_link(addr);
                        return Err(ShardError::Connect(addr.to_owned(), reason));
                    }
                    return Ok(event);
                }
                Ok(Some((link, event))) => self.handle(link, event),
            }
        }
    }

    /// SSUBSCRIBE/SUNSUBSCRIBE `channels` (all of one slot) on `addr`, waiting for one
    /// confirmation per channel. A `sunsubscribe` for another channel meanwhile is a push.
    async fn command(
        &mut self,
        addr: &str,
        command: &'static [u8],
        channels: &[String],
    ) -> Result<(), ShardError> {
        let id = self.link(addr).await?;
        let mut args: Vec<&[u8]> = vec![command];
        args.extend(channels.iter().map(|c| c.as_bytes()));
        self.send(addr, &encode(&args)).await?;
        let expect: &[u8] = if command == b"SSUBSCRIBE" {
            b"ssubscribe"
        } else {
            b"sunsubscribe"
        };
        let mut waiting: HashSet<&[u8]> = channels.iter().map(|c| c.as_bytes()).collect();
        while !waiting.is_empty() {
            match self.reply(id, addr).await? {
                Event::Error(error) => {
                    if let Some(rest) = error.strip_prefix("MOVED ") {
                        let mut parts = rest.split_whitespace();
                        let slot = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                        let to = parts.next().unwrap_or_default().to_owned();
                        // Redis sends one error for the whole command: nothing subscribed.
                        return Err(ShardError::Moved { slot, to });
                    }
                    return Err(ShardError::Command(addr.to_owned(), error));
                }
                Event::Reply(reply) => match reply.push() {
                    Some((kind, channel)) if kind == expect && waiting.contains(channel) => {
                        waiting.remove(channel);
                    }
                    Some((b"sunsubscribe", channel)) => self.unsubscribed_by_redis(addr, channel),
                    Some((b"pong", _)) => {
                        if let Some(l) = self.links.get_mut(addr) {
                            l.ping_outstanding = false;
                        }
                    }
                    _ => tracing::debug!(shard = %addr, ?reply, "unexpected reply"),
                },
                Event::Closed(reason) => return Err(ShardError::Connect(addr.to_owned(), reason)),
            }
        }
        Ok(())
    }
}

/// Reads a shard link until it ends: messages to the hub (or the canary), the rest to the
/// subscriber task.
async fn read_link(
    id: u64,
    mut reader: BufReader<OwnedReadHalf>,
    events: mpsc::UnboundedSender<(u64, Event)>,
    hub: Arc<crate::hub::Hub>,
    shared: Arc<super::Shared>,
    held: Arc<Held>,
) {
    let mut line = Vec::with_capacity(128);
    loop {
        let event = match read_value(&mut reader, &mut line).await {
            Err(e) => Event::Closed(e.to_string()),
            Ok(Err(error)) => Event::Error(error),
            Ok(Ok(value)) => {
                if let Resp::Array(items) = &value {
                    if items.len() == 3 && items[0].bytes() == Some(b"smessage") {
                        let channel = items[1].bytes().unwrap_or_default();
                        let payload = items[2].bytes().unwrap_or_default();
                        if channel == shared.canary.channel.as_bytes() {
                            let seq = std::str::from_utf8(payload)
                                .ok()
                                .and_then(|s| s.parse().ok());
                            shared.canary.returned(seq.unwrap_or(0));
                        } else if let Some(user) = UserId::from_channel(channel) {
                            held.deliver(&hub, user, payload);
                        }
                        continue;
                    }
                }
                Event::Reply(value)
            }
        };
        let closed = matches!(event, Event::Closed(_));
        if events.send((id, event)).is_err() || closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_s_channel_and_cluster_history_key_share_a_slot() {
        for id in [1u64, 42, 9_223_372_036_854_775_807] {
            let user = UserId::new(id).unwrap();
            assert_eq!(
                slot_of(&user.channel()),
                slot_of(&user.cluster_history_key())
            );
        }
        // As Redis computes them (CLUSTER KEYSLOT).
        assert_eq!(slot_of("user_42"), 3731);
        assert_eq!(slot_of("history:{user_42}"), 3731);
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{}foo"), slot_of("{}foo"));
        assert_ne!(
            slot_of("{}foo"),
            slot_of("foo"),
            "an empty tag hashes the whole name"
        );
    }

    #[tokio::test]
    async fn the_reader_parses_what_a_subscribed_connection_sends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        server
            .write_all(
                b"*3\r\n$10\r\nssubscribe\r\n$6\r\nuser_1\r\n:1\r\n\
                  *3\r\n$8\r\nsmessage\r\n$6\r\nuser_1\r\n$0\r\n\r\n\
                  -MOVED 3999 127.0.0.1:7001\r\n\
                  *2\r\n$4\r\npong\r\n$0\r\n\r\n",
            )
            .await
            .unwrap();
        drop(server);
        let (read, _write) = client.into_split();
        let mut reader = BufReader::new(read);
        let mut line = Vec::new();
        let bulk = |b: &[u8]| Resp::Bulk(Some(b.to_vec()));
        assert_eq!(
            read_value(&mut reader, &mut line).await.unwrap(),
            Ok(Resp::Array(vec![
                bulk(b"ssubscribe"),
                bulk(b"user_1"),
                Resp::Int(1)
            ]))
        );
        assert_eq!(
            read_value(&mut reader, &mut line).await.unwrap(),
            Ok(Resp::Array(vec![
                bulk(b"smessage"),
                bulk(b"user_1"),
                bulk(b"")
            ]))
        );
        assert_eq!(
            read_value(&mut reader, &mut line).await.unwrap(),
            Err("MOVED 3999 127.0.0.1:7001".to_owned())
        );
        assert_eq!(
            read_value(&mut reader, &mut line)
                .await
                .unwrap()
                .unwrap()
                .push(),
            Some((&b"pong"[..], &b""[..]))
        );
        assert!(
            read_value(&mut reader, &mut line).await.is_err(),
            "end of stream"
        );
    }

    #[test]
    fn commands_are_encoded_as_resp_arrays() {
        assert_eq!(
            encode(&[b"SSUBSCRIBE", b"user_1"]),
            b"*2\r\n$10\r\nSSUBSCRIBE\r\n$6\r\nuser_1\r\n"
        );
    }

    #[test]
    fn the_slot_map_reads_cluster_slots() {
        use redis::Value::{Array, BulkString, Int};
        let reply = Array(vec![
            Array(vec![
                Int(0),
                Int(5460),
                Array(vec![BulkString(b"127.0.0.1".to_vec()), Int(7000)]),
            ]),
            Array(vec![
                Int(5461),
                Int(16383),
                Array(vec![BulkString(Vec::new()), Int(7001)]),
            ]),
        ]);
        let map = SlotMap::parse(reply, "10.0.0.9:7005").unwrap();
        assert_eq!(map.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5461), Some("10.0.0.9:7001"));
    }
}
