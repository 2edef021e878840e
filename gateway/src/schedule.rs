//! Scheduled notifications: stored until due, then fired through the bus's publish path.
//!
//! - Scaled-out mode ([`Scheduler::Redis`]): items live in Redis (publisher-lib's
//!   `schedule` layout). Every node runs [`fire_loop`]: it fires due items every
//!   `schedule.poll_interval_ms` (with jitter) and at the next due time it saw. With one
//!   Redis or Sentinel one script claims and publishes atomically; on a Redis Cluster items
//!   are claimed under a lease, published idempotently on their users' shards, then
//!   acknowledged (docs/SCHEDULING.md). Either way there is no leader and an item fires once
//!   however many nodes poll and whichever of them dies.
//! - Single-node mode ([`Scheduler::Memory`]): items live in this process and are lost when
//!   it stops.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use publisher::schedule::{FireReport, ScheduleKey};
use publisher::wire::UserId;
use publisher::{Notification, Presence as FleetPresence, PublishError, Publisher};
use tokio::sync::{watch, Notify};

use crate::bus::{Bus, BusError};
use crate::config::{ms, ScheduleSettings};
use crate::metrics::Metrics;
use crate::presence::Presence;

/// Where scheduled items and presence questions go.
pub enum Scheduler {
    Redis(Publisher),
    Memory(Arc<MemorySchedule>),
}

/// Why a scheduling call failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<PublishError> for ScheduleError {
    fn from(e: PublishError) -> Self {
        match e.kind() {
            publisher::ErrorKind::InvalidInput | publisher::ErrorKind::TooLarge => {
                ScheduleError::Invalid(e.to_string())
            }
            _ => ScheduleError::Unavailable(e.to_string()),
        }
    }
}

impl Scheduler {
    /// Stores (or replaces) the item `key`: `notification` for `user` at `at_ms`.
    pub async fn schedule(
        &self,
        user: UserId,
        notification: Notification,
        at_ms: u64,
        key: &str,
        max_payload_bytes: usize,
    ) -> Result<(), ScheduleError> {
        match self {
            Scheduler::Redis(publisher) => {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(at_ms);
                Ok(publisher.schedule(user, notification, at, key).await?)
            }
            Scheduler::Memory(schedule) => {
                let key: ScheduleKey = key.parse().map_err(PublishError::from)?;
                let now = now_ms();
                publisher::schedule::check_due(at_ms, now).map_err(PublishError::from)?;
                let payload = notification
                    .with_timestamp(at_ms)
                    .to_payload(max_payload_bytes)?;
                schedule.insert(key.to_string(), at_ms, user, payload);
                Ok(())
            }
        }
    }

    /// Removes the item `key`; whether there was one.
    pub async fn cancel(&self, key: &str) -> Result<bool, ScheduleError> {
        match self {
            Scheduler::Redis(publisher) => Ok(publisher.cancel(key).await?),
            Scheduler::Memory(schedule) => {
                let key: ScheduleKey = key.parse().map_err(PublishError::from)?;
                Ok(schedule.remove(key.as_str()))
            }
        }
    }

    /// Sockets per user across the fleet (this node alone in single-node mode).
    pub async fn presence(
        &self,
        users: &[UserId],
        with_nodes: bool,
        local: &Presence,
    ) -> Result<Vec<FleetPresence>, ScheduleError> {
        match self {
            Scheduler::Redis(publisher) => Ok(publisher.presence(users, with_nodes).await?),
            Scheduler::Memory(_) => Ok(local
                .local(users)
                .into_iter()
                .map(|sockets| FleetPresence {
                    sockets,
                    nodes: if with_nodes && sockets > 0 {
                        vec![(local.node().to_owned(), sockets)]
                    } else {
                        Vec::new()
                    },
                })
                .collect()),
        }
    }
}

/// Fires due items from Redis until `shutdown`.
pub async fn fire_loop(
    publisher: Publisher,
    settings: ScheduleSettings,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let poll = ms(settings.poll_interval_ms);
    let mut jitter = Jitter::new();
    let mut failing = false;
    loop {
        let wait = match publisher
            .fire_due(settings.batch, settings.max_lateness_ms)
            .await
        {
            Ok(report) => {
                if failing {
                    tracing::info!("scheduled notifications: Redis answers again");
                    failing = false;
                }
                record(&report, &settings, &metrics);
                let handled = report.fired.len() + report.dropped.len() + report.pending.len();
                if handled >= settings.batch {
                    Duration::ZERO
                } else {
                    let poll = jitter.around(poll);
                    match report.next_due_ms {
                        Some(next) => poll.min(Duration::from_millis(
                            next.saturating_sub(report.now_ms).max(0) as u64,
                        )),
                        None => poll,
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "scheduled notifications cannot be fired while Redis fails; retrying");
                    failing = true;
                }
                poll.max(Duration::from_millis(250))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

fn record(report: &FireReport, settings: &ScheduleSettings, metrics: &Metrics) {
    metrics
        .scheduled_fired_total
        .fetch_add(report.fired.len() as u64, Relaxed);
    metrics
        .scheduled_dropped_total
        .fetch_add(report.dropped.len() as u64, Relaxed);
    for (key, lateness_ms) in &report.dropped {
        tracing::warn!(
            key,
            lateness_ms,
            max_lateness_ms = settings.max_lateness_ms,
            "scheduled notification dropped: claimed too late after its due time (no gateway was running?)"
        );
    }
    for (key, lateness_ms) in &report.pending {
        tracing::warn!(
            key,
            lateness_ms,
            "scheduled notification claimed but its user's Redis shard did not answer; it is \
             claimed again (by any node) when its lease runs out, and published once"
        );
    }
    for (key, lateness_ms) in &report.fired {
        tracing::debug!(key, lateness_ms, "scheduled notification fired");
    }
}

/// +-20 % around a period, from a small xorshift generator (no rand dependency).
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        Jitter(hasher.finish() | 1)
    }

    fn around(&mut self, period: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let permille = 800 + self.0 % 401; // 0.8 ..= 1.2
        period * permille as u32 / 1000
    }
}

/// An item taken for firing: key, lateness in ms, user, payload.
type DueItem = (String, u64, UserId, Vec<u8>);

/// Single-node mode's schedule: in memory, lost on restart.
#[derive(Default)]
pub struct MemorySchedule {
    items: Mutex<Items>,
    changed: Notify,
}

#[derive(Default)]
struct Items {
    due: BTreeSet<(u64, String)>,
    by_key: HashMap<String, (u64, UserId, Vec<u8>)>,
}

impl MemorySchedule {
    fn items(&self) -> std::sync::MutexGuard<'_, Items> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, key: String, at_ms: u64, user: UserId, payload: Vec<u8>) {
        let mut items = self.items();
        if let Some((old, _, _)) = items.by_key.remove(&key) {
            items.due.remove(&(old, key.clone()));
        }
        items.due.insert((at_ms, key.clone()));
        items.by_key.insert(key, (at_ms, user, payload));
        drop(items);
        self.changed.notify_one();
    }

    fn remove(&self, key: &str) -> bool {
        let mut items = self.items();
        match items.by_key.remove(key) {
            Some((at, _, _)) => {
                items.due.remove(&(at, key.to_owned()));
                true
            }
            None => false,
        }
    }

    /// Takes the items due at `now`: (key, lateness, user, payload).
    fn take_due(&self, now: u64) -> (Vec<DueItem>, Option<u64>) {
        let mut items = self.items();
        let mut due = Vec::new();
        while let Some((at, key)) = items.due.first().cloned() {
            if at > now {
                break;
            }
            items.due.pop_first();
            if let Some((_, user, payload)) = items.by_key.remove(&key) {
                due.push((key, now - at, user, payload));
            }
        }
        let next = items.due.first().map(|(at, _)| *at);
        (due, next)
    }

    /// Fires due items through `bus` until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        bus: Arc<dyn Bus>,
        settings: ScheduleSettings,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let poll = ms(settings.poll_interval_ms);
        loop {
            let now = now_ms();
            let (due, next) = self.take_due(now);
            let mut report = FireReport::default();
            for (key, lateness, user, payload) in due {
                let late = lateness as i64;
                if settings.max_lateness_ms > 0 && lateness > settings.max_lateness_ms {
                    report.dropped.push((key, late));
                    continue;
                }
                match bus.publish(vec![user], payload).await {
                    Ok(_) => report.fired.push((key, late)),
                    Err(BusError::Invalid(e) | BusError::Unavailable(e)) => {
                        tracing::warn!(key, error = %e, "scheduled notification could not be published");
                        report.dropped.push((key, late));
                    }
                }
            }
            record(&report, &settings, &metrics);
            let wait = next.map_or(poll, |n| {
                Duration::from_millis(n.saturating_sub(now_ms())).min(poll)
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.changed.notified() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

fn now_ms() -> u64 {
    publisher::schedule::system_time_ms(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_items_are_replaced_cancelled_and_taken_in_due_order() {
        let schedule = MemorySchedule::default();
        let user = UserId::new(1).unwrap();
        schedule.insert("a".into(), 300, user, b"a".to_vec());
        schedule.insert("b".into(), 100, user, b"b".to_vec());
        schedule.insert("a".into(), 200, user, b"a2".to_vec()); // reschedule
        schedule.insert("c".into(), 150, user, b"c".to_vec());
        assert!(schedule.remove("c"));
        assert!(!schedule.remove("c"));
        let (due, next) = schedule.take_due(250);
        let keys: Vec<_> = due.iter().map(|d| (d.0.as_str(), d.1)).collect();
        assert_eq!(keys, [("b", 150), ("a", 50)]);
        assert_eq!(due[1].3, b"a2");
        assert_eq!(next, None, "the old time of a was replaced");
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut jitter = Jitter::new();
        for _ in 0..1000 {
            let d = jitter.around(Duration::from_millis(50));
            assert!(d >= Duration::from_millis(40) && d <= Duration::from_millis(60));
        }
    }
}
