//! End-to-end tests: real redis-server, real gateway processes, real WebSocket clients.
//! One binary, one module per behaviour a user relies on.

mod cross_language;
mod delivery;
mod deploy;
mod faults;
mod lifecycle;
mod metrics;
mod nginx;
mod readiness;
mod resume;
mod socket_limits;
mod subscriptions;

use publisher::{Level, Notification, Publisher, UserId};

pub fn user(id: u64) -> UserId {
    UserId::new(id).expect("valid test user id")
}

pub fn publisher(redis: &e2e::RedisServer) -> Publisher {
    Publisher::connect(&redis.url()).expect("publisher for the test redis")
}

/// A notification whose message says which one it is, for order and isolation checks.
pub fn numbered(n: u64) -> Notification {
    Notification::new(Level::Info, format!("note {n}")).with_data("n", n)
}
