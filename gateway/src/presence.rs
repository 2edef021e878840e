//! Presence: how many sockets each user has open, on this node and across the fleet.
//!
//! Every socket open/close changes this node's count for its user ([`Presence::opened`],
//! [`Presence::closed`]: a map update under a lock, nothing else). In scaled-out mode a task
//! sends the accumulated changes to Redis (one HINCRBY per changed user, in one script run
//! for all of them) soon after a change, and at least every `presence.heartbeat_ms` extends
//! the node's TTL (`presence.ttl_ms`). A node that dies stops counting when its TTL lapses;
//! see publisher-lib's `presence_beat.lua` and `presence.lua`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use publisher::wire::UserId;
use publisher::Publisher;
use tokio::sync::{watch, Notify};

use crate::metrics::Metrics;

/// Changes arriving within this time of each other go to Redis in one heartbeat.
const COALESCE: Duration = Duration::from_millis(10);

pub struct Presence {
    state: Mutex<State>,
    changed: Notify,
    /// This process's id among the fleet's nodes (random, new on every start).
    node: String,
}

#[derive(Default)]
struct State {
    /// Sockets per user on this node (users with none are absent).
    counts: HashMap<UserId, i64>,
    /// Changes not yet in Redis.
    delta: HashMap<UserId, i64>,
    /// Whether Redis holds counts of this node (they were non-empty at the last heartbeat).
    remote_nonempty: bool,
    /// The next heartbeat must replace Redis's counts (after a failure or a lapse).
    needs_full: bool,
    /// A task reports to Redis (scaled-out mode): only then are changes kept in `delta`.
    reporting: bool,
}

impl Presence {
    pub fn new() -> Self {
        Presence {
            state: Mutex::default(),
            changed: Notify::new(),
            node: node_id(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn opened(&self, user: UserId) {
        self.change(user, 1);
    }

    pub fn closed(&self, user: UserId) {
        self.change(user, -1);
    }

    fn change(&self, user: UserId, by: i64) {
        let mut state = self.state();
        let count = state.counts.entry(user).or_default();
        *count += by;
        if *count <= 0 {
            state.counts.remove(&user);
        }
        if state.reporting {
            *state.delta.entry(user).or_default() += by;
        }
        drop(state);
        self.changed.notify_one();
    }

    /// Sockets open on this node for each of `users`.
    pub fn local(&self, users: &[UserId]) -> Vec<u64> {
        let state = self.state();
        users
            .iter()
            .map(|u| state.counts.get(u).copied().unwrap_or(0).max(0) as u64)
            .collect()
    }

    /// Keeps this node's counts in Redis until `shutdown`, then removes them.
    pub async fn run(
        self: Arc<Self>,
        publisher: Publisher,
        heartbeat: Duration,
        ttl: Duration,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tracing::info!(node = %self.node, "presence: reporting this node's sockets to Redis");
        {
            let mut state = self.state();
            state.reporting = true;
            state.needs_full = true;
        }
        loop {
            if let Err(e) = self.beat(&publisher, ttl).await {
                metrics.presence_beat_failures_total.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "presence heartbeat failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(heartbeat) => {}
                _ = self.changed.notified() => tokio::time::sleep(COALESCE).await,
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
        if let Err(e) = publisher.presence_leave(&self.node).await {
            tracing::warn!(error = %e, "could not remove this node's presence counts; they lapse with their TTL");
        }
    }

    /// One heartbeat: the changes since the last one, or all counts when Redis lost them.
    async fn beat(
        &self,
        publisher: &Publisher,
        ttl: Duration,
    ) -> Result<(), publisher::PublishError> {
        let (full, had, pairs, nonempty) = {
            let mut state = self.state();
            let delta = std::mem::take(&mut state.delta);
            let nonempty = !state.counts.is_empty();
            if state.needs_full {
                let pairs: Vec<_> = state.counts.iter().map(|(u, n)| (*u, *n)).collect();
                (true, state.remote_nonempty, pairs, nonempty)
            } else {
                let pairs: Vec<_> = delta.into_iter().filter(|(_, n)| *n != 0).collect();
                (false, state.remote_nonempty, pairs, nonempty)
            }
        };
        let applied = match publisher
            .presence_beat(&self.node, ttl, full, had, &pairs)
            .await
        {
            Ok(applied) => applied,
            Err(e) => {
                self.state().needs_full = true;
                return Err(e);
            }
        };
        if !applied {
            // Our counts lapsed (heartbeats stopped longer than the TTL): send them all.
            tracing::warn!(node = %self.node, "presence counts had expired in Redis; sending them all");
            self.state().needs_full = true;
            return Box::pin(self.beat(publisher, ttl)).await;
        }
        let mut state = self.state();
        if full {
            state.needs_full = false;
        }
        // What Redis holds now: the counts as they were when this heartbeat was taken.
        state.remote_nonempty = nonempty;
        Ok(())
    }
}

impl Default for Presence {
    fn default() -> Self {
        Self::new()
    }
}

use std::sync::atomic::Ordering::Relaxed;

/// 12 hex digits, random per process (no rand dependency: RandomState is seeded by the OS).
fn node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_counts_follow_opens_and_closes() {
        let presence = Presence::new();
        let (a, b) = (UserId::new(1).unwrap(), UserId::new(2).unwrap());
        presence.opened(a);
        presence.opened(a);
        presence.opened(b);
        presence.closed(a);
        assert_eq!(presence.local(&[a, b, UserId::new(3).unwrap()]), [1, 1, 0]);
        presence.closed(b);
        assert_eq!(presence.local(&[b]), [0]);
        // Nothing reports to Redis (single-node mode): no changes pile up.
        assert!(presence.state().delta.is_empty());
        assert_eq!(presence.node().len(), 12);
    }
}
