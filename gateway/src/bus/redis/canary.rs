//! The delivery self-check behind readiness: every `redis.canary_interval_ms` the node
//! PUBLISHes a canary on a channel of its own and reports not ready while one stays unanswered
//! for longer than `redis.canary_timeout_ms`, so a subscription that broke silently takes the
//! node out of the load balancer.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Shared;

/// Canaries sent, and the oldest one not yet seen coming back.
pub(super) struct Canary {
    /// This node's own channel.
    pub(super) channel: String,
    timeout: Duration,
    state: Mutex<CanaryState>,
}

#[derive(Default)]
struct CanaryState {
    sent: u64,
    unanswered_since: Option<(u64, Instant)>,
}

impl Canary {
    pub(super) fn new(timeout: Duration) -> Self {
        Canary {
            channel: format!("gateway_canary:{}", node_id()),
            timeout,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, CanaryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers the next canary; it is unanswered from now unless an older one still is.
    fn send_next(&self) -> u64 {
        let mut state = self.state();
        state.sent += 1;
        let seq = state.sent;
        state.unanswered_since.get_or_insert((seq, Instant::now()));
        seq
    }

    /// A canary came back: it and every older one are answered.
    pub(super) fn returned(&self, seq: u64) {
        let mut state = self.state();
        if state
            .unanswered_since
            .is_some_and(|(oldest, _)| oldest <= seq)
        {
            state.unanswered_since = None;
        }
    }

    /// Canaries sent over a previous link are not coming back.
    pub(super) fn forget_unanswered(&self) {
        self.state().unanswered_since = None;
    }

    /// Whether no canary has been unanswered for longer than the timeout.
    pub(super) fn answered_in_time(&self) -> bool {
        self.state()
            .unanswered_since
            .is_none_or(|(_, since)| since.elapsed() <= self.timeout)
    }
}

/// Publishes a canary to this node's own channel every `interval` while the subscriber link is
/// up. One that fails to publish counts as unanswered too: the node cannot reach Redis.
pub(super) async fn send_canaries(
    shared: Arc<Shared>,
    publisher: publisher::Publisher,
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
        let canary = &shared.canary;
        let seq = canary.send_next();
        let publish = async {
            let mut conn = publisher.connection().await.map_err(|e| e.to_string())?;
            // On a cluster the subscriber SSUBSCRIBEs it on the shard of its slot.
            redis::cmd(if publisher.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            })
            .arg(&canary.channel)
            .arg(seq)
            .query_async::<u64>(&mut conn)
            .await
            .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(canary.timeout, publish).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "canary publish failed");
                publisher.forget_connections();
            }
            Err(_) => {
                tracing::warn!("canary publish timed out");
                publisher.forget_connections();
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_canary_fails_readiness_only_after_the_timeout() {
        let canary = Canary::new(Duration::from_secs(2));
        assert!(canary.answered_in_time());
        let first = canary.send_next();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(canary.answered_in_time(), "at the timeout, not yet late");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!canary.answered_in_time());
        canary.returned(first);
        assert!(canary.answered_in_time());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_to_a_newer_canary_counts_for_the_older_ones() {
        let canary = Canary::new(Duration::from_secs(1));
        let first = canary.send_next();
        let second = canary.send_next();
        tokio::time::advance(Duration::from_secs(5)).await;
        canary.returned(first - 1);
        assert!(
            !canary.answered_in_time(),
            "an older canary answers nothing"
        );
        canary.returned(second);
        assert!(canary.answered_in_time());
        canary.send_next();
        tokio::time::advance(Duration::from_secs(5)).await;
        canary.forget_unanswered();
        assert!(canary.answered_in_time(), "a new link starts clean");
    }
}
