//! Scaled-out bus: exactly one Redis pub/sub connection per node, shared by all its sockets.
//!
//! Pub/sub loses what is published while a link is down, so every user also has a cursor in
//! the hub (the newest history id delivered here, or the newest stored when the subscription
//! started). After a reconnect the subscriber replays each user's history after its cursor
//! before it reads live messages again; the hub drops the overlap by id.
//!
//! | room | what |
//! |---|---|
//! | `mod.rs` | [`RedisBus`]: the handle and its [`Bus`] impl; interest epochs shared with the subscriber |
//! | `connection` | how links are obtained: one Redis, or the master the sentinels name |
//! | `subscriber` | the task owning the subscriber link: the subscribe sequence, reconnects, pings |
//! | `held` | live messages of users being subscribed, held until their catch-up is delivered |
//! | `shards` | on a Redis Cluster instead: one SSUBSCRIBE link per master shard, following the slot map |
//! | `history` | history reads (replay, newest ids, pages); resume replays batched into pipelines |
//! | `canary` | the delivery self-check behind readiness |
//!
//! History reads and publishes use a separate pooled connection (publisher-lib's pool); the
//! subscriber's own history reads (cursors, catch-ups) use a connection of their own.

mod canary;
mod connection;
mod held;
mod history;
mod shards;
mod subscriber;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use publisher::wire::{StreamId, UserId};
use publisher::{Publisher, PublisherOptions};
use tokio::sync::{oneshot, watch, Notify};

use super::{BoxFuture, Bus, BusError};
use crate::config::{ms, HistorySettings, RedisSettings, RedisTopology};
use crate::history::Replay;
use crate::hub::{Frame, Hub};
use crate::metrics::Metrics;
use canary::Canary;
use held::Held;
use history::{HistoryReader, ReplayQueue};
use subscriber::{Subscriber, Timing};

pub struct RedisBus {
    shared: Arc<Shared>,
    publisher: Publisher,
    /// One connection of its own for the node's background loops (scheduled notifications,
    /// presence heartbeats), so that they never grow the pool requests use.
    background: Publisher,
    history: HistoryReader,
    replays: ReplayQueue,
}

/// State shared between the bus handle and its subscriber task.
struct Shared {
    pending: Mutex<Pending>,
    wake: Notify,
    connected: AtomicBool,
    canary: Canary,
}

#[derive(Default)]
struct Pending {
    /// Users whose interest changed, with the epoch of their latest change.
    dirty: HashMap<UserId, u64>,
    /// Incremented on every interest change; the subscriber task confirms epochs in order.
    requested: u64,
    /// The highest interest epoch whose changes Redis has confirmed.
    applied: u64,
    /// Callers of [`Bus::interest_changed`] waiting for their epoch, oldest first. Each is
    /// woken once, by the confirmation that covers it (a watch channel would wake every
    /// waiter on every confirmation: thousands of sockets, each time a storm's round ends).
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
}

impl Pending {
    /// Takes the (at most) `n` users whose change is oldest, and the epoch their round may
    /// confirm: every change before the oldest one left (all of them when none is left).
    fn take_oldest(&mut self, n: usize) -> (HashSet<UserId>, u64) {
        if self.dirty.len() <= n {
            let users = std::mem::take(&mut self.dirty).into_keys().collect();
            return (users, self.requested);
        }
        let mut all: Vec<(u64, UserId)> = self.dirty.iter().map(|(u, e)| (*e, *u)).collect();
        all.select_nth_unstable(n);
        // Epochs are unique: everything before position n is older than all[n].
        let confirm = all[n].0 - 1;
        let users: HashSet<UserId> = all[..n].iter().map(|(_, u)| *u).collect();
        for user in &users {
            self.dirty.remove(user);
        }
        (users, confirm)
    }
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notifications published now reach this node: the link is up and canaries come back.
    fn delivering(&self) -> bool {
        self.connected.load(Relaxed) && self.canary.answered_in_time()
    }

    /// Wakes the callers of [`Bus::interest_changed`] waiting for `epoch` or an older one.
    fn confirm(&self, epoch: u64) {
        let ready: Vec<oneshot::Sender<()>> = {
            let mut pending = self.pending();
            pending.applied = pending.applied.max(epoch);
            let applied = pending.applied;
            let done = pending.waiters.partition_point(|(e, _)| *e <= applied);
            pending.waiters.drain(..done).map(|(_, tx)| tx).collect()
        };
        for waiter in ready {
            let _ = waiter.send(());
        }
    }
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
        let background_options = PublisherOptions {
            pool_size: 1,
            ..options
        };
        let (connector, publisher, background, subscriber_reads) = match topology {
            RedisTopology::Cluster(cluster) => {
                let publisher = Publisher::with_cluster(cluster.clone(), options)
                    .map_err(|e| BusError::Unavailable(e.to_string()))?;
                // Its own cluster connection (one multiplexed link per master).
                let background = Publisher::with_cluster(cluster.clone(), background_options)
                    .map_err(|e| BusError::Unavailable(e.to_string()))?;
                // The request publisher's connection is multiplexed: the subscriber's history
                // reads share it.
                (None, publisher.clone(), background, publisher)
            }
            _ => {
                let (connector, publisher) = connection::open(settings, topology, options)?;
                let (_, background) = connection::open(settings, topology, background_options)?;
                let (_, reads) = connection::open(settings, topology, background_options)?;
                (Some(connector), publisher, background, reads)
            }
        };
        let reader = HistoryReader {
            publisher: publisher.clone(),
            timeout: ms(history.read_timeout_ms),
            max_age_ms: history.max_age_ms,
        };
        // Half the pool at most for resume replays: publishes and inbox pages keep the rest.
        let replays = ReplayQueue::start(reader.clone(), settings.publish_pool_size / 2);
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            wake: Notify::new(),
            connected: AtomicBool::new(false),
            canary: Canary::new(ms(settings.canary_timeout_ms)),
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
            history: HistoryReader {
                publisher: subscriber_reads,
                ..reader.clone()
            },
            catch_up_limit,
            held: Arc::new(Held::new(catch_up_limit)),
        };
        match (connector, topology) {
            (Some(connector), _) => {
                tokio::spawn(subscriber.run(connector, shutdown.clone()));
            }
            (None, RedisTopology::Cluster(cluster)) => {
                let shards = shards::ClusterSubscriber::new(
                    subscriber,
                    cluster.nodes.clone(),
                    cluster.password.clone(),
                    publisher.clone(),
                );
                tokio::spawn(shards.run(shutdown.clone()));
            }
            (None, _) => unreachable!("only a cluster has no connector"),
        }
        tokio::spawn(canary::send_canaries(
            shared.clone(),
            publisher.clone(),
            ms(settings.canary_interval_ms),
            shutdown,
        ));
        Ok(RedisBus {
            shared,
            publisher,
            background,
            history: reader,
            replays,
        })
    }
}

impl RedisBus {
    /// The pooled publisher this bus publishes and reads history with (the scheduling and
    /// presence endpoints share it).
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// A publisher on one connection of its own, for the node's background loops: firing
    /// scheduled notifications and presence heartbeats.
    pub fn background_publisher(&self) -> Publisher {
        self.background.clone()
    }
}

impl Bus for RedisBus {
    fn interest_changed(&self, user: UserId) -> BoxFuture<()> {
        let confirmed = {
            let mut pending = self.shared.pending();
            pending.requested += 1;
            let epoch = pending.requested;
            pending.dirty.insert(user, epoch);
            let (tx, rx) = oneshot::channel();
            // Callers that stopped waiting (their timeout) are forgotten now and then, so that
            // a long outage does not pile them up.
            if pending.waiters.len() >= 1024 && pending.waiters.len().is_power_of_two() {
                pending.waiters.retain(|(_, tx)| !tx.is_closed());
            }
            pending.waiters.push_back((epoch, tx));
            rx
        };
        self.shared.wake.notify_one();
        Box::pin(async move {
            // Err only when the bus is gone, i.e. the node is shutting down.
            let _ = confirmed.await;
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
        let replays = self.replays.clone();
        Box::pin(async move { replays.replay_after(user, after, limit).await })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    /// Records a change as `interest_changed` does.
    fn change(pending: &mut Pending, id: u64) {
        pending.requested += 1;
        pending.dirty.insert(user(id), pending.requested);
    }

    #[test]
    fn a_bounded_round_takes_the_oldest_changes_and_confirms_only_up_to_them() {
        let mut pending = Pending::default();
        for id in [1, 2, 3, 4] {
            change(&mut pending, id);
        }
        change(&mut pending, 1); // user 1 changed again: its change is now the newest
        let (users, confirm) = pending.take_oldest(2);
        assert_eq!(users, HashSet::from([user(2), user(3)]));
        assert_eq!(confirm, 3, "user 4's change (epoch 4) is still pending");
        let (users, confirm) = pending.take_oldest(2);
        assert_eq!(users, HashSet::from([user(4), user(1)]));
        assert_eq!(confirm, 5, "nothing left: everything requested");
        assert!(pending.dirty.is_empty());
    }

    #[test]
    fn a_confirmation_wakes_exactly_the_waiters_it_covers() {
        let shared = Shared {
            pending: Mutex::default(),
            wake: Notify::new(),
            connected: AtomicBool::new(false),
            canary: Canary::new(std::time::Duration::from_secs(1)),
        };
        let mut waiters: Vec<_> = (1..=3)
            .map(|epoch| {
                let (tx, rx) = oneshot::channel();
                shared.pending().waiters.push_back((epoch, tx));
                rx
            })
            .collect();
        shared.confirm(2);
        assert!(waiters[0].try_recv().is_ok());
        assert!(waiters[1].try_recv().is_ok());
        assert!(
            waiters[2].try_recv().is_err(),
            "epoch 3 is not confirmed yet"
        );
        shared.confirm(1);
        assert!(
            waiters[2].try_recv().is_err(),
            "confirmations never go back"
        );
        shared.confirm(3);
        assert!(waiters[2].try_recv().is_ok());
        assert!(shared.pending().waiters.is_empty());
    }
}
