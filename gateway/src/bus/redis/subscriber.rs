//! The task that owns the subscriber link: it reads messages and hands them to the hub, and
//! when woken reconciles its SUBSCRIBEd channels with what the hub wants, batching every
//! change made since the last round into one SUBSCRIBE and one UNSUBSCRIBE. The link is PINGed
//! on an interval so that a half-open link is noticed; on any failure the task reconnects with
//! backoff and re-subscribes every channel the hub still wants.
//!
//! Every round, the first on a new link and each later one alike, is the same sequence
//! ([`Subscriber::sync`]): start the cursors of new users, SUBSCRIBE, catch up from history,
//! confirm the interest epoch.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use publisher::wire::{StreamId, UserId};
use tokio::sync::watch;

use super::connection::Connector;
use super::history::HistoryReader;
use super::Shared;
use crate::bus::BusError;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Channels per SUBSCRIBE/UNSUBSCRIBE command, and users per history pipeline, so that a
/// re-subscription of many users is a few round trips rather than one huge one.
const BATCH: usize = 1024;

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
    /// Users to SUBSCRIBE; caught up from history once subscribed.
    add: Vec<UserId>,
    /// Those of `add` whose cursor starts at the newest stored id.
    new_cursors: Vec<UserId>,
    /// Users to UNSUBSCRIBE.
    remove: Vec<UserId>,
}

/// One subscriber link and the channels SUBSCRIBEd on it.
struct Link {
    sink: redis::aio::PubSubSink,
    subscribed: HashSet<UserId>,
}

pub(super) struct Subscriber {
    pub(super) shared: Arc<Shared>,
    pub(super) hub: Arc<Hub>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) timing: Timing,
    pub(super) history: HistoryReader,
    /// Most frames replayed to one user at once: below its sockets' queue size, so that a
    /// catch-up never evicts a healthy socket; beyond it, the newest and a missed frame.
    pub(super) catch_up_limit: usize,
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
        let mut link = Link {
            sink,
            subscribed: HashSet::new(),
        };
        let ping_interval = self.timing.ping_interval;

        let canary = [self.shared.canary.channel.as_str()];
        bounded("subscribe", ping_interval, link.sink.subscribe(&canary)).await?;
        // Canaries sent over the previous link are not coming back.
        self.shared.canary.forget_unanswered();
        let first = self.first_round();
        self.sync(&mut link, first).await?;
        self.shared.connected.store(true, Relaxed);
        self.metrics.redis_connected.store(1, Relaxed);
        tracing::info!(
            channels = link.subscribed.len(),
            "redis subscriber connected"
        );

        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err(LinkError::Closed);
                    };
                    self.receive(&message);
                }
                _ = self.shared.wake.notified() => {
                    let round = self.next_round(&link.subscribed);
                    self.sync(&mut link, round).await?;
                }
                _ = ping.tick() => {
                    bounded("ping", ping_interval, link.sink.ping::<redis::Value>()).await?;
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
            Some(user) => {
                self.hub.deliver(user, message.get_payload_bytes());
            }
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
        let cursors = self.hub.cursors();
        Round {
            epoch,
            add: cursors.iter().map(|(user, _)| *user).collect(),
            new_cursors: cursors
                .iter()
                .filter(|(_, cursor)| cursor.is_none())
                .map(|(user, _)| *user)
                .collect(),
            remove: Vec::new(),
        }
    }

    /// The changes made since the last round, against what the link has subscribed.
    fn next_round(&self, subscribed: &HashSet<UserId>) -> Round {
        let (dirty, epoch) = {
            let mut pending = self.shared.pending();
            (std::mem::take(&mut pending.dirty), pending.requested)
        };
        let (add, remove) = reconcile(dirty, subscribed, |user| self.hub.wants(user));
        Round {
            epoch,
            new_cursors: add.clone(),
            add,
            remove,
        }
    }

    /// The one subscribe sequence: cursors first (read before subscribing, so that nothing
    /// published in between can be taken for a duplicate), then SUBSCRIBE/UNSUBSCRIBE, then
    /// replay what was stored in between or while the link was down, then confirm.
    async fn sync(&self, link: &mut Link, round: Round) -> Result<(), LinkError> {
        self.start_cursors(&round.new_cursors)
            .await
            .map_err(LinkError::Cursors)?;
        apply(link, &round.add, &round.remove, self.timing.ping_interval).await?;
        self.catch_up(&round.add)
            .await
            .map_err(LinkError::CatchUp)?;
        self.metrics
            .subscriptions
            .store(link.subscribed.len() as u64, Relaxed);
        self.shared.confirm(round.epoch);
        Ok(())
    }

    /// For users about to be subscribed: everything already stored was published before
    /// their first socket opened, so their cursor starts at the newest stored id.
    pub(super) async fn start_cursors(&self, users: &[UserId]) -> Result<(), BusError> {
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
