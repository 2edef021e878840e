//! The local registry: which sockets of which users live on this node, and fan-out to them.
//!
//! The hub is the source of truth for what this node needs from the bus: a user is *wanted*
//! while it has an entry here. An entry is created with the user's first socket and removed
//! only after its last socket left and `ws.unsubscribe_linger_ms` passed without a new one,
//! so a browser that reconnects at once causes no UNSUBSCRIBE/SUBSCRIBE churn.
//!
//! Fan-out never waits: each socket has a bounded queue, filled with `try_send`. A socket whose
//! queue is full is removed on the spot (its sender dropped), which its session task sees as
//! the end of its queue and answers by closing with [`crate::session::CloseCode::SlowConsumer`].
//!
//! Each user also has a cursor: the newest history id delivered to the user's sockets on this
//! node. Frames at or below it are duplicates (a catch-up after a Redis reconnect overlapping
//! live delivery) and are skipped; after a reconnect the bus catches up from it.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::web::Bytes;
use bytestring::ByteString;
use publisher::wire::{self, PayloadError, StreamId, UserId};

use crate::metrics::{DropCause, Metrics};
use crate::outbox::{outbox, OutboxReceiver, OutboxSender, PushError};

/// One notification as written to sockets: the text is shared, never copied per socket.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Its history id, when it has one (plain PUBLISHes are live only).
    pub id: Option<StreamId>,
    pub text: ByteString,
    /// The frame as a Server-Sent Event, built by the first SSE stream that sends it and
    /// shared by the others: once per notification, not once per stream.
    sse_event: OnceLock<Bytes>,
}

impl Frame {
    pub fn new(id: Option<StreamId>, text: ByteString) -> Self {
        Frame {
            id,
            text,
            sse_event: OnceLock::new(),
        }
    }

    /// The frame encoded by `build` (the SSE encoder) the first time it is asked for.
    pub fn sse_event(&self, build: impl FnOnce(&Frame) -> Bytes) -> Bytes {
        self.sse_event.get_or_init(|| build(self)).clone()
    }
}

/// Frames are equal when they say the same; whether one was encoded yet does not matter.
impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.text == other.text
    }
}

impl Eq for Frame {}

pub type SocketId = u64;

const SHARDS: usize = 64;

/// What a socket queue holds: one pointer per slot, the frame itself shared by every socket.
pub type QueuedFrame = Arc<Frame>;

struct Outbox {
    socket: SocketId,
    tx: OutboxSender,
}

#[derive(Default)]
struct UserEntry {
    sockets: Vec<Outbox>,
    cursor: Option<StreamId>,
}

type Shard = HashMap<UserId, UserEntry>;

pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    /// Where subscriptions not started yet must start at the latest: the replay of a socket
    /// that opened before its subscription was confirmed ([`Hub::replayed_unsubscribed`]).
    /// Empty but in that case; locked inside a shard's lock.
    floors: Mutex<HashMap<UserId, StreamId>>,
    next_socket: AtomicU64,
    queue_capacity: usize,
    max_payload_bytes: usize,
    metrics: Arc<Metrics>,
}

/// A socket's end of the hub: its id and the queue the hub fills for it.
pub struct Registration {
    pub user: UserId,
    pub socket: SocketId,
    pub outbox: OutboxReceiver,
    /// The bus confirmed the user's subscription before the socket opened (set by
    /// [`crate::subscriptions::Subscriptions::attach`]).
    pub subscribed: bool,
}

impl Hub {
    pub fn new(queue_capacity: usize, max_payload_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            floors: Mutex::default(),
            next_socket: AtomicU64::new(1),
            queue_capacity,
            max_payload_bytes,
            metrics,
        }
    }

    fn shard(&self, user: UserId) -> MutexGuard<'_, Shard> {
        let index = BuildHasherDefault::<DefaultHasher>::default().hash_one(user) as usize % SHARDS;
        // A poisoned shard only means a panic elsewhere while it was held; its map is still
        // consistent (every mutation below is a single insert/remove/retain).
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a socket for `user`, unless `user` already has `max_sockets` sockets here: `None`.
    /// Sockets are attached through [`crate::subscriptions::Subscriptions`], which tells the
    /// bus.
    pub fn try_register(&self, user: UserId, max_sockets: usize) -> Option<Registration> {
        let mut shard = self.shard(user);
        let first = !shard.contains_key(&user);
        let entry = shard.entry(user).or_default();
        if entry.sockets.len() >= max_sockets {
            return None;
        }
        let socket = self.next_socket.fetch_add(1, Relaxed);
        let (tx, outbox) = outbox(self.queue_capacity);
        entry.sockets.push(Outbox { socket, tx });
        drop(shard);
        if first {
            self.metrics.users.fetch_add(1, Relaxed);
        }
        self.metrics.sockets_open.fetch_add(1, Relaxed);
        self.metrics.sockets_opened_total.fetch_add(1, Relaxed);
        Some(Registration {
            user,
            socket,
            outbox,
            subscribed: false,
        })
    }

    /// Removes a socket (it may already be gone if fan-out evicted it). Returns true when the
    /// user has no socket left here, so the caller schedules [`Hub::release_if_idle`].
    /// Call exactly once per registration.
    pub fn unregister(&self, user: UserId, socket: SocketId) -> bool {
        self.metrics.sockets_open.fetch_sub(1, Relaxed);
        let mut shard = self.shard(user);
        let Some(entry) = shard.get_mut(&user) else {
            return false;
        };
        entry.sockets.retain(|o| o.socket != socket);
        entry.sockets.is_empty()
    }

    /// Forgets a user whose sockets are all gone. Returns true if it was removed, so the bus
    /// must drop its subscription.
    pub fn release_if_idle(&self, user: UserId) -> bool {
        let mut shard = self.shard(user);
        let idle = shard.get(&user).is_some_and(|e| e.sockets.is_empty());
        if idle {
            shard.remove(&user);
            self.floors().remove(&user);
            drop(shard);
            self.metrics.users.fetch_sub(1, Relaxed);
        }
        idle
    }

    /// Whether this node needs `user`'s channel.
    pub fn wants(&self, user: UserId) -> bool {
        self.shard(user).contains_key(&user)
    }

    /// Every user this node needs, with the newest history id delivered to it here.
    pub fn cursors(&self) -> Vec<(UserId, Option<StreamId>)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(shard.iter().map(|(user, entry)| (*user, entry.cursor)));
        }
        all
    }

    /// Records that everything up to `id` is accounted for (the newest history id when the
    /// user's subscription started), unless something newer was delivered already.
    pub fn advance_cursor(&self, user: UserId, id: StreamId) {
        if let Some(entry) = self.shard(user).get_mut(&user) {
            entry.cursor = entry.cursor.max(Some(id));
        }
    }

    /// Where `user`'s subscription starts: everything up to `id` is accounted for, unless
    /// the user has a cursor already (something was delivered or replayed from it since;
    /// moving it forward would skip what lies in between).
    pub fn start_cursor(&self, user: UserId, id: StreamId) {
        let mut shard = self.shard(user);
        if let Some(entry) = shard.get_mut(&user) {
            let floor = self.floors().remove(&user);
            entry
                .cursor
                .get_or_insert(floor.map_or(id, |floor| floor.min(id)));
        }
    }

    /// A socket of `user` that opened before its subscription was confirmed has been replayed
    /// history up to `replayed`. If the subscription's cursor is not set yet, it will start no
    /// later than that (its catch-up then covers what the replay did not see). Returns true
    /// when the cursor is past `replayed` already: the subscription may have started after
    /// what the replay saw, so the caller reads history again from `replayed`.
    pub fn replayed_unsubscribed(&self, user: UserId, replayed: StreamId) -> bool {
        let mut shard = self.shard(user);
        let Some(entry) = shard.get_mut(&user) else {
            return false;
        };
        match entry.cursor {
            Some(cursor) => cursor > replayed,
            None => {
                let mut floors = self.floors();
                let floor = floors.entry(user).or_insert(replayed);
                *floor = (*floor).min(replayed);
                false
            }
        }
    }

    fn floors(&self) -> MutexGuard<'_, HashMap<UserId, StreamId>> {
        self.floors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest history id delivered to `user` here (or where its subscription started).
    pub fn cursor(&self, user: UserId) -> Option<StreamId> {
        self.shard(user).get(&user).and_then(|entry| entry.cursor)
    }

    /// Queues a missed-notifications frame to every local socket of `user`, whatever the
    /// cursor says, and moves the cursor to the frame's id, backwards too: after history was
    /// lost or went back (a failover), new ids may be lower than what was delivered before.
    pub fn deliver_missed(&self, user: UserId, frame: Frame) -> usize {
        if let Some(entry) = self.shard(user).get_mut(&user) {
            entry.cursor = frame.id;
        }
        self.deliver_frame(user, Frame::new(None, frame.text))
    }

    /// Validates one payload from the bus and queues it to every local socket of `user`.
    /// Returns the number of sockets it was queued to.
    pub fn deliver(&self, user: UserId, payload: &[u8]) -> usize {
        self.metrics.messages_received_total.fetch_add(1, Relaxed);
        let limit = self.max_payload_bytes + wire::ID_FIELD_MAX_BYTES;
        let info = match wire::check_payload(payload, limit) {
            Ok(info) => info,
            Err(err) => {
                let cause = match err {
                    PayloadError::TooLarge { .. } => DropCause::Oversized,
                    PayloadError::Malformed(_) => DropCause::Malformed,
                };
                self.metrics.dropped(cause, 1);
                tracing::warn!(%user, error = %err, "dropped payload");
                return 0;
            }
        };
        if let Some(sent_ms) = info.timestamp_ms {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.metrics
                .observe_latency_ms(now_ms.saturating_sub(sent_ms));
        }

        // check_payload parsed it as JSON, so this UTF-8 check cannot fail; it runs once per
        // message, and every socket then shares the same bytes.
        let Ok(text) = ByteString::try_from(payload.to_vec()) else {
            return 0;
        };
        self.deliver_frame(user, Frame::new(info.id, text))
    }

    /// Queues a ready frame to every local socket of `user`, unless its id shows the user
    /// already has it. Returns the number of sockets it was queued to.
    pub fn deliver_frame(&self, user: UserId, frame: Frame) -> usize {
        let mut shard = self.shard(user);
        let Some(entry) = shard.get_mut(&user) else {
            return 0;
        };
        if let Some(id) = frame.id {
            if entry.cursor.is_some_and(|seen| id <= seen) {
                return 0;
            }
            entry.cursor = Some(id);
        }
        if entry.sockets.is_empty() {
            return 0;
        }
        let frame = Arc::new(frame);
        let before = entry.sockets.len();
        let mut delivered = 0;
        entry
            .sockets
            .retain(|outbox| match outbox.tx.try_push(frame.clone()) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                // Full: evict as a slow consumer. Closed: the session is ending and unregisters.
                Err(PushError::Full | PushError::Closed) => false,
            });
        let evicted = before - entry.sockets.len();
        drop(shard);
        self.metrics
            .frames_delivered_total
            .fetch_add(delivered as u64, Relaxed);
        if evicted > 0 {
            self.metrics.dropped(DropCause::SlowClient, evicted as u64);
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(queue: usize) -> Hub {
        Hub::new(queue, 1024, Arc::new(Metrics::default()))
    }

    fn user(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    /// A socket without a per-user limit.
    fn register(hub: &Hub, user: UserId) -> Registration {
        hub.try_register(user, usize::MAX).unwrap()
    }

    const NOTE: &[u8] = br#"{"type":"info","message":"hi"}"#;

    #[test]
    fn every_socket_of_a_user_and_no_other_gets_the_frame() {
        let hub = hub(4);
        let mut a1 = register(&hub, user(1));
        let mut a2 = register(&hub, user(1));
        let mut b = register(&hub, user(2));
        assert_eq!(hub.metrics.users.load(Relaxed), 2, "users, not sockets");
        assert_eq!(hub.deliver(user(1), NOTE), 2);
        assert_eq!(a1.outbox.try_recv().unwrap().text.as_bytes(), NOTE);
        assert_eq!(a2.outbox.try_recv().unwrap().text.as_bytes(), NOTE);
        assert!(b.outbox.try_recv().is_err());
    }

    #[test]
    fn last_socket_leaving_releases_the_user_only_when_idle() {
        let hub = hub(4);
        let a = register(&hub, user(1));
        assert!(hub.unregister(user(1), a.socket));
        assert!(hub.wants(user(1)), "lingers until released");
        let b = register(&hub, user(1));
        assert_eq!(
            hub.metrics.users.load(Relaxed),
            1,
            "a quick reconnect reuses the user"
        );
        assert!(!hub.release_if_idle(user(1)));
        assert!(hub.unregister(user(1), b.socket));
        assert!(hub.release_if_idle(user(1)));
        assert!(!hub.wants(user(1)));
    }

    #[test]
    fn a_user_at_the_socket_limit_gets_no_more() {
        let hub = hub(4);
        let a = hub.try_register(user(1), 2).unwrap();
        let _b = hub.try_register(user(1), 2).unwrap();
        assert!(hub.try_register(user(1), 2).is_none());
        assert!(
            hub.try_register(user(2), 2).is_some(),
            "other users are not affected"
        );
        hub.unregister(user(1), a.socket);
        assert!(
            hub.try_register(user(1), 2).is_some(),
            "a freed slot can be reused"
        );
        assert_eq!(hub.metrics.sockets_open.load(Relaxed), 3);
    }

    #[test]
    fn a_full_queue_evicts_only_that_socket() {
        let hub = hub(1);
        let mut slow = register(&hub, user(1));
        let mut fast = register(&hub, user(1));
        assert_eq!(hub.deliver(user(1), NOTE), 2);
        fast.outbox.try_recv().unwrap();
        assert_eq!(
            hub.deliver(user(1), NOTE),
            1,
            "slow socket evicted, fast one served"
        );
        assert_eq!(fast.outbox.try_recv().unwrap().text.as_bytes(), NOTE);
        slow.outbox.try_recv().unwrap();
        assert!(matches!(
            slow.outbox.try_recv(),
            Err(crate::outbox::TryRecvError::Disconnected)
        ));
        assert_eq!(hub.metrics.dropped_count(DropCause::SlowClient), 1);
    }

    #[test]
    fn frames_at_or_below_the_cursor_are_duplicates() {
        let hub = hub(8);
        let mut a = register(&hub, user(1));
        hub.advance_cursor(user(1), StreamId::new(10, 0));
        let note = |id: &str| format!(r#"{{"id":"{id}","type":"info","message":"m"}}"#);
        assert_eq!(
            hub.deliver(user(1), note("9-0").as_bytes()),
            0,
            "older than the subscription"
        );
        assert_eq!(hub.deliver(user(1), note("11-0").as_bytes()), 1);
        assert_eq!(hub.deliver(user(1), note("11-0").as_bytes()), 0, "seen");
        assert_eq!(
            hub.deliver(user(1), NOTE),
            1,
            "live-only frames have no id to compare"
        );
        assert_eq!(a.outbox.try_recv().unwrap().id, Some(StreamId::new(11, 0)));
        assert_eq!(hub.cursors(), vec![(user(1), Some(StreamId::new(11, 0)))]);
    }

    #[test]
    fn a_payload_at_the_limit_still_fits_with_its_id() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(4, 64, metrics);
        let mut a = register(&hub, user(1));
        let body = format!(r#"{{"type":"info","message":"{}"}}"#, "m".repeat(64 - 28));
        assert_eq!(body.len(), 64, "exactly the publisher's limit");
        let framed = wire::with_id(StreamId::new(u64::MAX, u64::MAX), body.as_bytes()).unwrap();
        assert_eq!(hub.deliver(user(1), &framed), 1);
        assert!(a.outbox.try_recv().is_ok());
    }

    #[test]
    fn a_missed_frame_resets_the_cursor_and_is_always_delivered() {
        let hub = hub(8);
        let mut a = register(&hub, user(1));
        hub.advance_cursor(user(1), StreamId::new(50, 0));
        let missed = crate::history::missed_frame(StreamId::new(50, 0), StreamId::new(10, 0));
        assert_eq!(hub.deliver_missed(user(1), missed), 1);
        assert_eq!(hub.cursor(user(1)), Some(StreamId::new(10, 0)));
        let note = br#"{"id":"20-0","type":"info","message":"after a failover"}"#;
        assert_eq!(hub.deliver(user(1), note), 1, "not a duplicate any more");
        assert_eq!(a.outbox.try_recv().unwrap().id, None);
        assert_eq!(a.outbox.try_recv().unwrap().id, Some(StreamId::new(20, 0)));
    }

    #[test]
    fn a_replay_before_the_subscription_holds_back_where_the_subscription_starts() {
        let hub = hub(8);
        let _a = register(&hub, user(1));
        // The socket opened unsubscribed and was replayed up to 10: its subscription starts
        // there even if the newest id is 15 by the time the cursor is read.
        assert!(!hub.replayed_unsubscribed(user(1), StreamId::new(10, 0)));
        hub.start_cursor(user(1), StreamId::new(15, 0));
        assert_eq!(hub.cursor(user(1)), Some(StreamId::new(10, 0)));
        // A cursor already past the replay: read again.
        assert!(hub.replayed_unsubscribed(user(1), StreamId::new(9, 0)));
        assert!(!hub.replayed_unsubscribed(user(1), StreamId::new(10, 0)));
        // Without a replay, the newest id; a floor goes with its user.
        let _b = register(&hub, user(2));
        hub.start_cursor(user(2), StreamId::new(15, 0));
        assert_eq!(hub.cursor(user(2)), Some(StreamId::new(15, 0)));
        let c = register(&hub, user(3));
        hub.replayed_unsubscribed(user(3), StreamId::new(1, 0));
        hub.unregister(user(3), c.socket);
        assert!(hub.release_if_idle(user(3)));
        assert!(hub.floors().is_empty());
    }

    #[test]
    fn malformed_payloads_are_counted_not_delivered() {
        let hub = hub(4);
        let mut a = register(&hub, user(1));
        assert_eq!(hub.deliver(user(1), b"{oops"), 0);
        assert_eq!(hub.deliver(user(1), &[b'x'; 2048]), 0);
        assert!(a.outbox.try_recv().is_err());
        assert_eq!(hub.metrics.dropped_count(DropCause::Malformed), 1);
        assert_eq!(hub.metrics.dropped_count(DropCause::Oversized), 1);
    }
}
