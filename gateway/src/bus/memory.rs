//! Single-node bus: publishing hands the payload straight to this node's hub.

use std::sync::Arc;

use publisher::wire::UserId;

use super::{BoxFuture, Bus, BusError};
use crate::hub::Hub;

pub struct MemoryBus {
    hub: Arc<Hub>,
}

impl MemoryBus {
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBus { hub }
    }
}

impl Bus for MemoryBus {
    fn interest_changed(&self, _user: UserId) -> BoxFuture<()> {
        // The hub itself is the subscription table: nothing to reconcile.
        Box::pin(std::future::ready(()))
    }

    fn publish(&self, user: UserId, payload: Vec<u8>) -> BoxFuture<Result<usize, BusError>> {
        let receivers = usize::from(self.hub.wants(user));
        self.hub.deliver(user, &payload);
        Box::pin(std::future::ready(Ok(receivers)))
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
