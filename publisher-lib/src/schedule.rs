//! Scheduled notifications and presence: the Redis layout and scripts shared by publishers
//! (which schedule, cancel and ask) and gateway nodes (which fire and report their sockets).
//!
//! `docs/SCHEDULING.md` describes the same contract for other languages; keep both in step.
//!
//! Every key carries the hash tag `{gw}`, so all of them live in one slot. With one Redis (or
//! Sentinel) a gateway fires with [`FIRE_SCRIPT`], which claims and publishes in one script.
//! On a Redis Cluster users' history streams live in other slots than the schedule, so a
//! gateway fires in three steps instead: [`CLAIM_SCRIPT`] moves due items into claims under a
//! lease, each claim is published with `publish.lua` under the claim's token as a retry (a
//! second publish of the same claim stores and delivers nothing), then the claims are
//! acknowledged (removed from [`CLAIMS_KEY`] and [`LEASES_KEY`]).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::wire::UserId;

/// ZSET of scheduled items: member = the caller's key, score = due time (ms since the epoch).
pub const DUE_KEY: &str = "schedule:{gw}:due";
/// HASH of scheduled items: field = the caller's key, value = `"<user id> <notification JSON>"`.
pub const ITEMS_KEY: &str = "schedule:{gw}:items";
/// HASH of claimed items (Redis Cluster only): field = the claim's token (`s:<sha1 hex>`),
/// value = `"<due ms> <user id> <key> <notification JSON>"`.
pub const CLAIMS_KEY: &str = "schedule:{gw}:claims";
/// ZSET of the claims' leases (Redis Cluster only): member = token, score = ms (Redis clock)
/// after which another gateway may claim the item again.
pub const LEASES_KEY: &str = "schedule:{gw}:leases";
/// ZSET of live gateway nodes: member = node id, score = ms until which its counts hold.
pub const NODES_KEY: &str = "presence:{gw}:nodes";
/// Prefix of a node's HASH of socket counts (field = user id, value = sockets open).
pub const NODE_COUNTS_PREFIX: &str = "presence:{gw}:node:";

/// Longest scheduling key, in bytes.
pub const MAX_KEY_BYTES: usize = 200;
/// Most user ids one presence query may name.
pub const MAX_PRESENCE_USERS: usize = 1000;
/// Due times further ahead than this are refused (most likely seconds where milliseconds
/// were meant, or microseconds).
pub const MAX_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);
/// Due times before this instant (2001-09-09, 1e12 ms) are refused: seconds given where
/// milliseconds were meant.
pub const MIN_DUE_MS: u64 = 1_000_000_000_000;

/// The presence query (read side), run by publishers.
pub const PRESENCE_SCRIPT: &str = include_str!("presence.lua");
/// A gateway node's presence heartbeat.
pub const PRESENCE_BEAT_SCRIPT: &str = include_str!("presence_beat.lua");
/// The firing script gateway nodes run: `publish.lua` as a local function, then `fire.lua`.
/// One source of truth for what publishing means.
pub const FIRE_SCRIPT: &str = concat!(
    "local function publish(KEYS, ARGV)\n",
    include_str!("publish.lua"),
    "end\n",
    include_str!("fire.lua")
);

/// Step 1 of firing on a Redis Cluster: claims due items (and claims whose lease ran out).
pub const CLAIM_SCRIPT: &str = include_str!("claim.lua");

/// The caller's name for a scheduled item, e.g. `booking:1881:expiring`: 1 to 200 bytes of
/// ASCII letters, digits and `_ - . :`. Scheduling the same key again replaces the item.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScheduleKey(String);

impl ScheduleKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ScheduleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not a [`ScheduleKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule key must be 1 to {MAX_KEY_BYTES} bytes of ASCII letters, digits and _-.: (e.g. booking:1881:expiring), got {0:?}")]
pub struct InvalidScheduleKey(pub String);

impl FromStr for ScheduleKey {
    type Err = InvalidScheduleKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= MAX_KEY_BYTES
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
        if ok {
            Ok(ScheduleKey(s.to_owned()))
        } else {
            let shown: String = s.chars().take(64).collect();
            Err(InvalidScheduleKey(shown))
        }
    }
}

impl TryFrom<&str> for ScheduleKey {
    type Error = InvalidScheduleKey;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Why a due time is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDueTime {
    #[error("due time {0} ms is before 2001: give milliseconds since the Unix epoch, not seconds")]
    TooEarly(u64),
    #[error("due time {0} ms is more than a year ahead: give milliseconds since the Unix epoch")]
    TooFar(u64),
}

/// Checks a due time (ms since the epoch). A time in the past is accepted: it fires at once.
pub fn check_due(at_ms: u64, now_ms: u64) -> Result<(), InvalidDueTime> {
    if at_ms < MIN_DUE_MS {
        return Err(InvalidDueTime::TooEarly(at_ms));
    }
    if at_ms > now_ms.saturating_add(MAX_AHEAD.as_millis() as u64) {
        return Err(InvalidDueTime::TooFar(at_ms));
    }
    Ok(())
}

/// Milliseconds since the epoch of `at` (0 before 1970).
pub fn system_time_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The HASH value of an item.
pub fn item_value(user: UserId, payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(payload.len() + 21);
    value.extend_from_slice(user.to_string().as_bytes());
    value.push(b' ');
    value.extend_from_slice(payload);
    value
}

/// The key of a node's socket counts.
pub fn node_counts_key(node: &str) -> String {
    format!("{NODE_COUNTS_PREFIX}{node}")
}

/// What one run of the firing script did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FireReport {
    /// Redis's clock when it ran (ms since the epoch).
    pub now_ms: i64,
    /// The earliest due time left, if any.
    pub next_due_ms: Option<i64>,
    /// Items published: (key, lateness in ms).
    pub fired: Vec<(String, i64)>,
    /// Items removed unpublished because they were later than the limit: (key, lateness).
    pub dropped: Vec<(String, i64)>,
    /// Redis Cluster only: items claimed whose publish got no answer (their user's shard
    /// failed): (key, lateness when claimed). They are not lost: any gateway claims them
    /// again when their lease runs out and publishes them once.
    pub pending: Vec<(String, i64)>,
}

/// One user's sockets across the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// Sockets open on all live nodes.
    pub sockets: u64,
    /// (node id, sockets) for each node holding some; empty unless asked for.
    pub nodes: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_one_strict_form() {
        assert!("booking:1881:expiring".parse::<ScheduleKey>().is_ok());
        assert!("a".repeat(MAX_KEY_BYTES).parse::<ScheduleKey>().is_ok());
        for bad in [
            "",
            "has space",
            "é",
            "new\nline",
            &"a".repeat(MAX_KEY_BYTES + 1),
        ] {
            let err = bad.parse::<ScheduleKey>().unwrap_err();
            assert!(err.to_string().contains("1 to 200 bytes"), "{err}");
        }
    }

    #[test]
    fn due_times_in_seconds_or_far_ahead_are_refused_past_ones_accepted() {
        let now = 1_765_000_000_000;
        assert!(
            check_due(now - 60_000, now).is_ok(),
            "the past fires at once"
        );
        assert!(check_due(now + 3_600_000, now).is_ok());
        assert!(matches!(
            check_due(1_765_000_000, now),
            Err(InvalidDueTime::TooEarly(_))
        ));
        assert!(matches!(
            check_due(now * 1000, now),
            Err(InvalidDueTime::TooFar(_))
        ));
    }

    #[test]
    fn the_fire_script_embeds_publish_lua_verbatim() {
        assert!(FIRE_SCRIPT.contains(crate::wire::PUBLISH_SCRIPT));
        assert!(FIRE_SCRIPT.starts_with("local function publish(KEYS, ARGV)\n"));
    }

    #[test]
    fn item_values_start_with_the_user() {
        let user = UserId::new(42).unwrap();
        assert_eq!(item_value(user, b"{}"), b"42 {}");
    }
}
