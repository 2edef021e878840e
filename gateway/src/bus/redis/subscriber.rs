//! The task that owns the subscriber link: it reads messages and hands them to the hub, and
//! when woken reconciles its SUBSCRIBEd channels with what the hub wants, batching every
//! change made since the last round into one SUBSCRIBE and one UNSUBSCRIBE. The link is PINGed
//! on an interval so that a half-open link is noticed; on any failure the task reconnects with
//! backoff and re-subscribes every channel the hub still wants.
//!
//! Every round, the first on a new link and each later one alike, is the same sequence
//! ([`Subscriber::sync`]), in steps of at most [`STEP`] users: hold their live messages, start
//! the cursors of new users, SUBSCRIBE, catch up from history, release the held messages; then
//! confirm the interest epoch.
//!
//! The link is read all the while: a round runs beside the reading, not instead of it, so a
//! storm of arriving users (a replica died and its clients came here) does not stop delivery
//! to everyone else on the node. Only the messages of the users of the step in flight wait
//! ([`super::held`]). Rounds after the first take at most [`STEP`] users, those whose change
//! is oldest, and confirm up to the epoch before the oldest change left, so the first users
//! of a storm are confirmed (and their sockets open) without waiting for the last.
//!
//! History reads of the subscriber (cursors, catch-ups) go through a connection of their own,
//! so they do not queue behind the sockets' resume replays.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use publisher::wire::{StreamId, UserId};
use tokio::sync::watch;

use super::connection::Connector;
use super::held::Held;
use super::history::HistoryReader;
use super::Shared;
use crate::bus::BusError;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Channels per SUBSCRIBE/UNSUBSCRIBE command, and users per history pipeline, so that a
/// re-subscription of many users is a few round trips rather than one huge one.
const BATCH: usize = 1024;

/// Users per subscribe step (held, cursors, SUBSCRIBE, catch-up, released together), and
/// most users a round after the first takes.
pub(super) const STEP: usize = 1024;

/// Most catch-ups of one user in one step when its held messages overflow (each one reads
/// what was dropped from history); after that it gets the missed frame.
const CATCH_UP_ROUNDS: usize = 3;

/// Why a subscriber link was given up (the task then reconnects).
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("reading history ids failed: {0}")]
    Cursors(#[source] BusError),
    #[error("catch-up failed: {0}")]
    CatchUp(#[source] BusError),
    #[error("{command} failed: {source}")]
    Command {
        command: &'static str,
        source: redis::RedisError,
    },
    #[error("{0} timed out")]
    TimedOut(&'static str),
    #[error("the sentinels name another master than {0}")]
    MasterMoved(redis::ConnectionAddr),
    #[error("connection closed")]
    Closed,
}

/// Runs one command on the link within `timeout`.
async fn bounded<T>(
    command: &'static str,
    timeout: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(LinkError::Command { command, source }),
        Err(_) => Err(LinkError::TimedOut(command)),
    }
}

#[derive(Clone)]
pub(super) struct Timing {
    pub(super) reconnect_min: Duration,
    pub(super) reconnect_max: Duration,
    pub(super) ping_interval: Duration,
}

/// One reconciliation round.
struct Round {
    /// The interest epoch this round makes true.
    epoch: u64,
    /// Users to SUBSCRIBE; caught up from history once subscribed. Those without a cursor
    /// yet start at the newest stored id.
    add: Vec<UserId>,
    /// Users to UNSUBSCRIBE.
    remove: Vec<UserId>,
}

/// One subscriber link and the channels SUBSCRIBEd on it (owned by the round in flight).
struct Link {
    sink: redis::aio::PubSubSink,
    subscribed: HashSet<UserId>,
}

/// A round in flight: it gives the link back when done.
type InFlight<'a> = Pin<Box<dyn Future<Output = (Link, Result<(), LinkError>)> + Send + 'a>>;

pub(super) struct Subscriber {
    pub(super) shared: Arc<Shared>,
    pub(super) hub: Arc<Hub>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) timing: Timing,
    pub(super) history: HistoryReader,
    /// Most frames replayed to one user at once: below its sockets' queue size, so that a
    /// catch-up never evicts a healthy socket; beyond it, the newest and a missed frame.
    pub(super) catch_up_limit: usize,
    /// Live messages of the users being subscribed (bounded per user by `catch_up_limit`).
    pub(super) held: Arc<Held>,
}

impl Subscriber {
    pub(super) async fn run(self, connector: Connector, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.timing.reconnect_min;
        let mut ever_connected = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match tokio::time::timeout(self.timing.ping_interval, connector.pubsub()).await {
                Ok(Ok((pubsub, addr))) => {
                    if ever_connected {
                        self.metrics.redis_reconnects_total.fetch_add(1, Relaxed);
                    }
                    ever_connected = true;
                    backoff = self.timing.reconnect_min;
                    let outcome = self.serve(pubsub, &connector, &addr, &mut shutdown).await;
                    // A step may have been cut short: the next link catches everyone up.
                    self.held.clear(&self.hub);
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

    /// Serves one subscriber link until it fails (`Err`) or the node shuts down (`Ok`).
    async fn serve(
        &self,
        pubsub: redis::aio::PubSub,
        connector: &Connector,
        addr: &redis::ConnectionAddr,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), LinkError> {
        let (sink, mut stream) = pubsub.split();
        let mut pinger = sink.clone();
        let ping_interval = self.timing.ping_interval;

        let canary = [self.shared.canary.channel.as_str()];
        bounded("subscribe", ping_interval, pinger.subscribe(&canary)).await?;
        // Canaries sent over the previous link are not coming back.
        self.shared.canary.forget_unanswered();
        let link = Link {
            sink,
            subscribed: HashSet::new(),
        };
        let first = self.first_round();
        let mut in_flight: Option<InFlight<'_>> = Some(Box::pin(self.sync(link, first)));
        // The link while no round is in flight.
        let mut idle: Option<Link> = None;
        let mut connected = false;

        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if in_flight.is_none() && !self.shared.pending().dirty.is_empty() {
                if let Some(link) = idle.take() {
                    let round = self.next_round(&link.subscribed);
                    in_flight = Some(Box::pin(self.sync(link, round)));
                }
            }
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err(LinkError::Closed);
                    };
                    self.receive(&message);
                }
                (link, result) = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    result?;
                    if !connected {
                        connected = true;
                        self.shared.connected.store(true, Relaxed);
                        self.metrics.redis_connected.store(1, Relaxed);
                        tracing::info!(
                            channels = link.subscribed.len(),
                            "redis subscriber connected"
                        );
                    }
                    idle = Some(link);
                }
                // Only wakes the loop: the top of the loop starts the next round.
                _ = self.shared.wake.notified(), if in_flight.is_none() => {}
                _ = ping.tick() => {
                    bounded("ping", ping_interval, pinger.ping::<redis::Value>()).await?;
                    if tokio::time::timeout(ping_interval, connector.moved_from(addr)).await == Ok(true) {
                        return Err(LinkError::MasterMoved(addr.clone()));
                    }
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// A message on the link: a canary coming back, or a notification for the hub.
    fn receive(&self, message: &redis::Msg) {
        let channel = message.get_channel_name();
        if channel == self.shared.canary.channel {
            let seq = std::str::from_utf8(message.get_payload_bytes())
                .ok()
                .and_then(|s| s.parse().ok());
            self.shared.canary.returned(seq.unwrap_or(0));
            return;
        }
        match UserId::from_channel(channel.as_bytes()) {
            Some(user) => self
                .held
                .deliver(&self.hub, user, message.get_payload_bytes()),
            None => tracing::debug!(channel, "message on a foreign channel"),
        }
    }

    /// A fresh link has no subscriptions: take everything the hub wants. Interest changes up
    /// to the epoch are reflected in the hub already, so this round confirms them. Users whose
    /// first socket came while the link was down have no cursor yet.
    fn first_round(&self) -> Round {
        let epoch = {
            let mut pending = self.shared.pending();
            pending.dirty.clear();
            pending.requested
        };
        Round {
            epoch,
            add: self
                .hub
                .cursors()
                .into_iter()
                .map(|(user, _)| user)
                .collect(),
            remove: Vec::new(),
        }
    }

    /// The changes made since the last round, against what the link has subscribed: at most
    /// [`STEP`] users, those whose change is oldest. The round confirms every change older
    /// than the oldest one it leaves.
    fn next_round(&self, subscribed: &HashSet<UserId>) -> Round {
        let (dirty, epoch) = self.shared.pending().take_oldest(STEP);
        let (add, remove) = reconcile(dirty, subscribed, |user| self.hub.wants(user));
        Round { epoch, add, remove }
    }

    /// The one subscribe sequence, in steps of at most [`STEP`] users: hold their live
    /// messages; cursors (read before subscribing, so that nothing published in between can
    /// be taken for a duplicate); SUBSCRIBE; replay what was stored in between or while the
    /// link was down; release. Then UNSUBSCRIBE and confirm.
    async fn sync(&self, mut link: Link, round: Round) -> (Link, Result<(), LinkError>) {
        let result = self.sync_steps(&mut link, round).await;
        (link, result)
    }

    async fn sync_steps(&self, link: &mut Link, round: Round) -> Result<(), LinkError> {
        let timeout = self.timing.ping_interval;
        for step in round.add.chunks(STEP) {
            self.held.hold(step);
            let done = async {
                let new: Vec<UserId> = step
                    .iter()
                    .copied()
                    .filter(|u| self.hub.cursor(*u).is_none())
                    .collect();
                self.start_cursors(&new).await.map_err(LinkError::Cursors)?;
                apply(link, step, &[], timeout).await?;
                self.catch_up_held(step).await.map_err(LinkError::CatchUp)
            }
            .await;
            if done.is_err() {
                // The link is given up; the next one catches everyone up from their cursors.
                self.held.release_all(&self.hub, step);
            }
            done?;
        }
        apply(link, &[], &round.remove, timeout).await?;
        self.metrics
            .subscriptions
            .store(link.subscribed.len() as u64, Relaxed);
        self.shared.confirm(round.epoch);
        Ok(())
    }

    /// Catches up held `users` and releases them. A user whose held messages overflowed is
    /// caught up again (what was dropped is in history), at most [`CATCH_UP_ROUNDS`] times;
    /// after that it is told it may have missed notifications.
    pub(super) async fn catch_up_held(&self, users: &[UserId]) -> Result<(), BusError> {
        let mut pending = users.to_vec();
        for _ in 0..CATCH_UP_ROUNDS {
            self.catch_up(&pending).await?;
            pending = self.held.release(&self.hub, &pending);
            if pending.is_empty() {
                return Ok(());
            }
        }
        for user in &pending {
            tracing::warn!(%user, "live messages overflowed three catch-ups in a row");
            if let Some(cursor) = self.hub.cursor(*user) {
                self.hub
                    .deliver_missed(*user, crate::history::missed_frame(cursor, cursor));
            }
        }
        self.held.release_all(&self.hub, &pending);
        Ok(())
    }

    /// For users about to be subscribed: everything already stored was published before
    /// their first socket opened, so their cursor starts at the newest stored id (unless it
    /// got one meanwhile).
    pub(super) async fn start_cursors(&self, users: &[UserId]) -> Result<(), BusError> {
        for batch in users.chunks(BATCH) {
            let newest = self.history.newest_ids(batch).await?;
            for (user, id) in batch.iter().zip(newest) {
                self.hub.start_cursor(*user, id);
            }
        }
        Ok(())
    }

    /// Replays to each of `users` what history holds after its cursor: what was published
    /// while the link was down, or between reading the cursor and SUBSCRIBE. The hub drops
    /// what its sockets already have; a missed frame resets the cursor (history was lost, or
    /// went back after a failover) so that new notifications are not taken for duplicates.
    pub(super) async fn catch_up(&self, users: &[UserId]) -> Result<(), BusError> {
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

/// Which of the `dirty` users to SUBSCRIBE (wanted, not subscribed) and which to UNSUBSCRIBE
/// (subscribed, no longer wanted).
fn reconcile(
    dirty: HashSet<UserId>,
    subscribed: &HashSet<UserId>,
    wants: impl Fn(UserId) -> bool,
) -> (Vec<UserId>, Vec<UserId>) {
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    for user in dirty {
        match (wants(user), subscribed.contains(&user)) {
            (true, false) => add.push(user),
            (false, true) => remove.push(user),
            _ => {}
        }
    }
    (add, remove)
}

/// SUBSCRIBEs `add` and UNSUBSCRIBEs `remove`, in batches, each bounded by `timeout`.
async fn apply(
    link: &mut Link,
    add: &[UserId],
    remove: &[UserId],
    timeout: Duration,
) -> Result<(), LinkError> {
    for batch in add.chunks(BATCH) {
        let channels: Vec<String> = batch.iter().map(|u| u.channel()).collect();
        bounded("subscribe", timeout, link.sink.subscribe(&channels)).await?;
        link.subscribed.extend(batch);
    }
    for batch in remove.chunks(BATCH) {
        let channels: Vec<String> = batch.iter().map(|u| u.channel()).collect();
        bounded("unsubscribe", timeout, link.sink.unsubscribe(&channels)).await?;
        for user in batch {
            link.subscribed.remove(user);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(ids: &[u64]) -> HashSet<UserId> {
        ids.iter()
            .map(|id| id.to_string().parse().unwrap())
            .collect()
    }

    #[test]
    fn a_round_subscribes_the_wanted_and_drops_the_unwanted_only() {
        let wanted = users(&[1, 2, 5]);
        let subscribed = users(&[2, 3, 4]);
        let dirty = users(&[1, 2, 3, 6]);
        let (add, remove) = reconcile(dirty, &subscribed, |u| wanted.contains(&u));
        assert_eq!(add.into_iter().collect::<HashSet<_>>(), users(&[1]));
        assert_eq!(remove.into_iter().collect::<HashSet<_>>(), users(&[3]));
    }

    #[test]
    fn link_errors_say_what_failed() {
        assert_eq!(
            LinkError::TimedOut("subscribe").to_string(),
            "subscribe timed out"
        );
        assert_eq!(LinkError::Closed.to_string(), "connection closed");
        assert_eq!(
            LinkError::CatchUp(BusError::Unavailable("x".into())).to_string(),
            "catch-up failed: bus unavailable: x"
        );
    }
}
