//! Single-node bus: publishing stores the notification in an in-process history and hands
//! it straight to this node's hub, with the same ids and resume semantics as Redis.

use std::sync::{Arc, Mutex};

use publisher::wire::{self, StreamId, UserId};

use super::{BoxFuture, Bus, BusError};
use crate::history::{self, MemoryHistory, Replay};
use crate::hub::{Frame, Hub};

pub struct MemoryBus {
    hub: Arc<Hub>,
    history: Mutex<MemoryHistory>,
    max_payload_bytes: usize,
    max_age_ms: u64,
}

impl MemoryBus {
    pub fn new(
        hub: Arc<Hub>,
        history: MemoryHistory,
        max_payload_bytes: usize,
        max_age_ms: u64,
    ) -> Self {
        MemoryBus {
            hub,
            history: Mutex::new(history),
            max_payload_bytes,
            max_age_ms,
        }
    }

    fn history(&self) -> std::sync::MutexGuard<'_, MemoryHistory> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Bus for MemoryBus {
    fn interest_changed(&self, _user: UserId) -> BoxFuture<()> {
        // The hub itself is the subscription table: nothing to reconcile.
        Box::pin(std::future::ready(()))
    }

    fn publish(
        &self,
        mut users: Vec<UserId>,
        payload: Vec<u8>,
    ) -> BoxFuture<Result<usize, BusError>> {
        users.sort_unstable();
        users.dedup();
        let result = wire::check_payload(&payload, self.max_payload_bytes)
            .map_err(|e| BusError::Invalid(e.to_string()))
            .and_then(|_| {
                // Appending and delivering under one lock keeps delivery in id order.
                let mut history = self.history();
                let mut receivers = 0;
                for user in users {
                    let id = history.append(user, payload.clone());
                    let framed = wire::with_id(id, &payload)
                        .ok_or_else(|| BusError::Invalid("not a JSON object".into()))?;
                    receivers += usize::from(self.hub.wants(user));
                    self.hub.deliver(user, &framed);
                }
                Ok(receivers)
            });
        Box::pin(std::future::ready(result))
    }

    fn replay_after(
        &self,
        user: UserId,
        after: StreamId,
        limit: usize,
    ) -> BoxFuture<Result<Replay, BusError>> {
        let (state, entries) = self.history().read_after(user, after, limit + 1);
        let replay = history::plan_replay(after, state, entries, limit, self.max_age_ms);
        Box::pin(std::future::ready(Ok(replay)))
    }

    fn history_page(
        &self,
        user: UserId,
        before: Option<StreamId>,
        limit: usize,
    ) -> BoxFuture<Result<Vec<Frame>, BusError>> {
        let frames = self
            .history()
            .page(user, before, limit)
            .into_iter()
            .filter_map(|(id, payload)| history::stored_frame(id, &payload))
            .collect();
        Box::pin(std::future::ready(Ok(frames)))
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
