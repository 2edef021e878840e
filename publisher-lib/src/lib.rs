//! Publish notifications to users' browsers through the notification gateway.
//!
//! Browsers keep a WebSocket open to a gateway node; gateway nodes subscribe to the Redis
//! channel `user_<id>` of every user connected to them. To notify a user, a backend PUBLISHes
//! one JSON object on that channel, and every node holding a socket of that user forwards it
//! unchanged. This crate is the Rust side of that contract: it builds the JSON, checks it the
//! way gateways do, and PUBLISHes it with bounded time and a connection pool.
//! Services in other languages follow `docs/PROTOCOL.md` instead.
//!
//! ```no_run
//! use publisher::{Event, Publisher, UserId};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = Publisher::connect("redis://127.0.0.1:6379")?;
//! let user: UserId = "42".parse()?;
//! let event = Event::BookingExpiringSoon {
//!     booking_id: 1881,
//!     slot: "A-12".into(),
//!     minutes_left: 5,
//! };
//! let nodes = publisher.publish(user, event).await?;
//! // 0 is fine: the user simply has no browser open right now.
//! println!("delivered to {nodes} gateway node(s)");
//! # Ok(())
//! # }
//! ```
//!
//! # Map
//!
//! | module | what it holds |
//! |---|---|
//! | [`wire`] | the contract shared with the gateway: [`UserId`], [`Level`], channel names, [`wire::check_payload`] |
//! | [`events`] | [`Event`], one typed variant per notification the parking app sends; [`Event::from_name_and_data`] for names and JSON from elsewhere |
//! | `notification` | [`Notification`], the JSON envelope (free-form messages), and notifications from events |
//! | `publisher` | [`Publisher`] and [`PublisherOptions`]: pooled, time-bounded PUBLISH |
//! | [`schedule`] | scheduled notifications and presence: Redis keys, scripts, [`ScheduleKey`], [`Presence`] |
//! | [`script`] | running a Lua script Redis may have forgotten (NOSCRIPT reload), shared with the gateway |
//! | `error` | [`PublishError`] and its coarse [`ErrorKind`] |
//!
//! Failures never panic: bad input gives [`ErrorKind::InvalidInput`] or [`ErrorKind::TooLarge`],
//! Redis trouble gives [`ErrorKind::RedisUnavailable`] or [`ErrorKind::Timeout`].

pub mod events;
pub mod schedule;
pub mod script;
pub mod wire;

mod error;
mod notification;
mod publisher;
mod topology;

pub use error::{ErrorKind, PublishError};
pub use events::{Event, EventError};
pub use notification::Notification;
pub use publisher::{Publisher, PublisherOptions, Receipt};
pub use schedule::{FireReport, Presence, ScheduleKey};
pub use topology::{ClusterConfig, PooledConnection, SentinelConfig};
pub use wire::{Level, StreamId, UserId};
