//! One owner for a user's subscription on this node, from its first socket to the end of the
//! linger after its last.
//!
//! - [`Subscriptions::attach`] adds a socket to the [`Hub`] (within the per-user limit) and
//!   waits, bounded by `redis.subscribe_timeout_ms`, until the bus delivers the user's channel.
//!   Every socket waits, not only the user's first: a second socket that arrives while the
//!   first one's SUBSCRIBE is in flight must not miss anything either.
//! - [`Subscriptions::detach`] takes a socket out. When it was the user's last, the
//!   subscription is dropped after `ws.unsubscribe_linger_ms` unless a socket came back, so a
//!   browser that reconnects at once causes no UNSUBSCRIBE/SUBSCRIBE churn.
//!
//! Lingering users wait in one queue, released by one task: a task and timer per user whose
//! last socket closed cost a few hundred bytes each, allocated on whichever worker closed it
//! and freed seconds later, and under connection churn tens of thousands of them scatter
//! over the allocator's arenas (docs/PERFORMANCE.md, "Churn"). The linger is the same for
//! everyone, so the queue is in deadline order and only its front needs a timer.
//!
//! The hub holds the state (who is wanted, the sockets' queues); the bus follows the hub when
//! told that a user's interest changed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use publisher::wire::UserId;

use crate::bus::Bus;
use crate::hub::{Hub, Registration, SocketId};
use crate::presence::Presence;

pub struct Subscriptions {
    hub: Arc<Hub>,
    bus: Arc<dyn Bus>,
    /// How long a user without sockets stays subscribed.
    linger: Duration,
    /// Longest wait for the bus to confirm a subscription before the socket opens anyway.
    confirm_timeout: Duration,
    /// Told of every socket open and close (presence counts).
    presence: Option<Arc<Presence>>,
    /// Users whose last socket closed, with when they may go, in that order.
    lingering: Mutex<VecDeque<(Instant, UserId)>>,
    /// Wakes the release task when the queue stops being empty.
    lingering_added: Arc<Notify>,
    releasing: AtomicBool,
}

/// The user already holds `max_sockets` sockets on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySockets;

impl Subscriptions {
    pub fn new(
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        linger: Duration,
        confirm_timeout: Duration,
    ) -> Self {
        Subscriptions {
            hub,
            bus,
            linger,
            confirm_timeout,
            presence: None,
            lingering: Mutex::new(VecDeque::new()),
            lingering_added: Arc::new(Notify::new()),
            releasing: AtomicBool::new(false),
        }
    }

    /// Counts every attached socket in `presence`.
    pub fn with_presence(mut self, presence: Arc<Presence>) -> Self {
        self.presence = Some(presence);
        self
    }

    /// Adds a socket for `user` and waits until its channel is delivered here (or the wait
    /// times out: the socket opens anyway). A caller that gives up while waiting (its future
    /// is dropped) leaves nothing behind.
    pub async fn attach(
        self: &Arc<Self>,
        user: UserId,
        max_sockets: usize,
    ) -> Result<Registration, TooManySockets> {
        let mut registration = self
            .hub
            .try_register(user, max_sockets)
            .ok_or(TooManySockets)?;
        if let Some(presence) = &self.presence {
            presence.opened(user);
        }
        let pending = DetachOnDrop {
            subscriptions: self,
            user,
            socket: registration.socket,
        };
        let subscribed = self.bus.interest_changed(user);
        registration.subscribed = tokio::time::timeout(self.confirm_timeout, subscribed)
            .await
            .is_ok();
        if !registration.subscribed {
            tracing::warn!(%user, "bus did not confirm the subscription in time; socket opens anyway");
        }
        std::mem::forget(pending);
        Ok(registration)
    }

    /// A socket that opened before its subscription was confirmed was replayed history up to
    /// `replayed`: see [`Hub::replayed_unsubscribed`]. True when history must be read again.
    pub fn replayed_unsubscribed(&self, user: UserId, replayed: publisher::wire::StreamId) -> bool {
        self.hub.replayed_unsubscribed(user, replayed)
    }

    /// Takes a socket out; the user's subscription goes after the linger period. Call exactly
    /// once per attached socket.
    pub fn detach(self: &Arc<Self>, user: UserId, socket: SocketId) {
        if let Some(presence) = &self.presence {
            presence.closed(user);
        }
        if self.hub.unregister(user, socket) {
            if !self.releasing.swap(true, Ordering::AcqRel) {
                tokio::spawn(release_lingering(
                    Arc::downgrade(self),
                    self.lingering_added.clone(),
                ));
            }
            let was_empty = {
                let mut lingering = self.lingering.lock().expect("lingering queue poisoned");
                // The clock is read under the lock, so the queue stays in deadline order.
                lingering.push_back((Instant::now() + self.linger, user));
                lingering.len() == 1
            };
            if was_empty {
                self.lingering_added.notify_one();
            }
        }
    }

    /// Releases the users whose linger is over (unless a socket came back); returns when the
    /// next one is due.
    fn release_due(&self) -> Option<Instant> {
        let now = Instant::now();
        loop {
            let (due, user) = {
                let mut lingering = self.lingering.lock().expect("lingering queue poisoned");
                match lingering.front() {
                    Some(&(due, _)) if due > now => return Some(due),
                    None => return None,
                    Some(_) => lingering.pop_front()?,
                }
            };
            debug_assert!(due <= now);
            if self.hub.release_if_idle(user) {
                // Registered on the call; no need to wait for Redis to confirm the UNSUBSCRIBE.
                drop(self.bus.interest_changed(user));
            }
        }
    }
}

/// The one task that ends lingers, for as long as the subscriptions exist.
async fn release_lingering(subscriptions: Weak<Subscriptions>, added: Arc<Notify>) {
    loop {
        let next = match subscriptions.upgrade() {
            Some(subscriptions) => subscriptions.release_due(),
            None => return,
        };
        match next {
            // A user added meanwhile is due after `due`: no need to watch the queue.
            Some(due) => tokio::time::sleep_until(due).await,
            None => added.notified().await,
        }
    }
}

/// Detaches a socket whose attach was abandoned before it completed.
struct DetachOnDrop<'a> {
    subscriptions: &'a Arc<Subscriptions>,
    user: UserId,
    socket: SocketId,
}

impl Drop for DetachOnDrop<'_> {
    fn drop(&mut self) {
        self.subscriptions.detach(self.user, self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::history::MemoryHistory;
    use crate::metrics::Metrics;

    const LINGER: Duration = Duration::from_secs(5);

    fn setup() -> (Arc<Hub>, Arc<Subscriptions>) {
        let hub = Arc::new(Hub::new(8, 4096, Arc::new(Metrics::default())));
        let bus = Arc::new(MemoryBus::new(
            hub.clone(),
            MemoryHistory::new(10, 60_000),
            4096,
            60_000,
        ));
        let subscriptions = Arc::new(Subscriptions::new(
            hub.clone(),
            bus,
            LINGER,
            Duration::from_secs(1),
        ));
        (hub, subscriptions)
    }

    fn user(id: u64) -> UserId {
        id.to_string().parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_subscription_outlives_the_last_socket_by_the_linger_only() {
        let (hub, subscriptions) = setup();
        let socket = subscriptions.attach(user(1), 10).await.unwrap();
        subscriptions.detach(user(1), socket.socket);
        tokio::time::sleep(LINGER - Duration::from_millis(1)).await;
        assert!(hub.wants(user(1)), "still lingering");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(!hub.wants(user(1)), "released after the linger");
    }

    #[tokio::test(start_paused = true)]
    async fn users_leaving_at_different_times_are_each_released_after_their_own_linger() {
        let (hub, subscriptions) = setup();
        let first = subscriptions.attach(user(1), 10).await.unwrap();
        let second = subscriptions.attach(user(2), 10).await.unwrap();
        subscriptions.detach(user(1), first.socket);
        tokio::time::sleep(LINGER / 2).await;
        subscriptions.detach(user(2), second.socket);
        tokio::time::sleep(LINGER / 2 + Duration::from_millis(1)).await;
        assert!(!hub.wants(user(1)), "the first released after its linger");
        assert!(hub.wants(user(2)), "the second still lingering");
        tokio::time::sleep(LINGER / 2).await;
        assert!(
            !hub.wants(user(2)),
            "the second released after its own linger"
        );
        // The queue emptied; a later detach wakes the release task again.
        let third = subscriptions.attach(user(3), 10).await.unwrap();
        subscriptions.detach(user(3), third.socket);
        tokio::time::sleep(LINGER + Duration::from_millis(1)).await;
        assert!(!hub.wants(user(3)), "released after an idle queue");
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_back_within_the_linger_keeps_the_subscription() {
        let (hub, subscriptions) = setup();
        let first = subscriptions.attach(user(1), 10).await.unwrap();
        subscriptions.detach(user(1), first.socket);
        tokio::time::sleep(LINGER / 2).await;
        let _second = subscriptions.attach(user(1), 10).await.unwrap();
        tokio::time::sleep(LINGER * 2).await;
        assert!(hub.wants(user(1)), "the returning socket keeps it");
    }

    #[tokio::test(start_paused = true)]
    async fn the_per_user_limit_refuses_more_sockets() {
        let (_hub, subscriptions) = setup();
        let _a = subscriptions.attach(user(1), 1).await.unwrap();
        assert!(matches!(
            subscriptions.attach(user(1), 1).await,
            Err(TooManySockets)
        ));
        assert!(subscriptions.attach(user(2), 1).await.is_ok());
    }

    /// A bus that never confirms a subscription.
    struct Unconfirmed;

    impl Bus for Unconfirmed {
        fn interest_changed(&self, _user: UserId) -> crate::bus::BoxFuture<()> {
            Box::pin(std::future::pending())
        }
        fn publish(
            &self,
            _: Vec<UserId>,
            _: Vec<u8>,
        ) -> crate::bus::BoxFuture<Result<usize, crate::bus::BusError>> {
            unimplemented!()
        }
        fn replay_after(
            &self,
            _: UserId,
            _: publisher::wire::StreamId,
            _: usize,
        ) -> crate::bus::BoxFuture<Result<crate::history::Replay, crate::bus::BusError>> {
            unimplemented!()
        }
        fn history_page(
            &self,
            _: UserId,
            _: Option<publisher::wire::StreamId>,
            _: usize,
        ) -> crate::bus::BoxFuture<Result<Vec<crate::hub::Frame>, crate::bus::BusError>> {
            unimplemented!()
        }
        fn is_ready(&self) -> bool {
            false
        }
        fn kind(&self) -> &'static str {
            "unconfirmed"
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unconfirmed_subscription_opens_after_the_timeout_and_an_abandoned_one_leaves_nothing(
    ) {
        let hub = Arc::new(Hub::new(8, 4096, Arc::new(Metrics::default())));
        let confirm_timeout = Duration::from_secs(1);
        let subscriptions = Arc::new(Subscriptions::new(
            hub.clone(),
            Arc::new(Unconfirmed),
            LINGER,
            confirm_timeout,
        ));
        let start = tokio::time::Instant::now();
        subscriptions.attach(user(1), 10).await.unwrap();
        assert_eq!(start.elapsed(), confirm_timeout);

        let mut abandoned = Box::pin(subscriptions.attach(user(2), 10));
        assert!(futures_util::poll!(abandoned.as_mut()).is_pending());
        assert!(hub.wants(user(2)), "registered while waiting");
        drop(abandoned);
        tokio::time::sleep(LINGER + Duration::from_millis(1)).await;
        assert!(!hub.wants(user(2)), "the abandoned socket was detached");
    }
}
