//! How notifications reach this node: one trait, two implementations.
//!
//! - [`memory::MemoryBus`]: single-node mode, the role Django's `InMemoryChannelLayer` played.
//! - [`redis::RedisBus`]: scaled-out mode, one Redis pub/sub connection per node.
//!
//! A bus follows the [`Hub`](crate::hub::Hub): when the hub gains or loses a user it calls
//! [`Bus::interest_changed`], and the bus reconciles its subscriptions with what the hub wants
//! at that moment. Being level-triggered (not a queue of subscribe/unsubscribe commands)
//! makes races between a user leaving and coming back harmless, batches changes, and makes a
//! full re-subscription after a reconnect the same code path.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;

use publisher::wire::{StreamId, UserId};

use crate::history::Replay;
use crate::hub::Frame;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a publish through the bus failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("invalid notification: {0}")]
    Invalid(String),
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

pub trait Bus: Send + Sync + 'static {
    /// The hub's interest in `user` changed. The change is registered by the call itself; the
    /// returned future only waits until the bus follows the hub's state as of this call
    /// (Redis confirmed the SUBSCRIBE/UNSUBSCRIBE). Callers bound the wait.
    fn interest_changed(&self, user: UserId) -> BoxFuture<()>;

    /// Sends an already-serialised notification to each of `users` (each once) in one step.
    /// Returns how many nodes received it, summed over the users.
    fn publish(&self, users: Vec<UserId>, payload: Vec<u8>) -> BoxFuture<Result<usize, BusError>>;

    /// What a client that last saw `after` must be sent to be caught up: at most `limit`
    /// notifications, oldest first, and the missed frame when some may be gone.
    fn replay_after(
        &self,
        user: UserId,
        after: StreamId,
        limit: usize,
    ) -> BoxFuture<Result<Replay, BusError>>;

    /// Up to `limit` retained notifications older than `before` (all when `None`), newest first.
    fn history_page(
        &self,
        user: UserId,
        before: Option<StreamId>,
        limit: usize,
    ) -> BoxFuture<Result<Vec<Frame>, BusError>>;

    /// Whether notifications published now would reach this node.
    fn is_ready(&self) -> bool;

    /// A short name for logs and `/readyz`.
    fn kind(&self) -> &'static str;
}
