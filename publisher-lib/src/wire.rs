//! The wire contract between publishers and gateway nodes.
//!
//! A notification for user `N` is one UTF-8 JSON object PUBLISHed on the Redis channel
//! `user_N`. Gateway nodes forward the payload bytes unchanged to every socket of that user,
//! so whatever a publisher puts in the object is what the browser receives.
//! `docs/PROTOCOL.md` describes the same contract for publishers written in other languages;
//! keep both in step.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Every user's channel is this prefix followed by the decimal user id.
pub const CHANNEL_PREFIX: &str = "user_";

/// Every user's history stream is this prefix followed by the decimal user id.
pub const HISTORY_PREFIX: &str = "history:user_";

/// On a Redis Cluster every user's history stream is this prefix, the decimal user id, and
/// `}`: the hash tag `{user_<id>}` puts the stream in the slot of the channel `user_<id>`, so
/// that the publish script (stream and channel) runs on one shard.
pub const CLUSTER_HISTORY_PREFIX: &str = "history:{user_";

/// The stream field holding a notification's JSON in a history entry.
pub const HISTORY_FIELD: &str = "p";

/// The Lua script that appends to a user's history and publishes, atomically. Publishers in
/// other languages run the same script (`EVAL`/`EVALSHA`); `docs/PROTOCOL.md` shows how.
pub const PUBLISH_SCRIPT: &str = include_str!("publish.lua");

/// Largest payload a gateway accepts by default; larger ones are dropped and counted.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// What the publish script adds to a payload (`"id":"<ms>-<seq>",`) at most: gateways allow
/// this much above the payload limit, so that a payload publishers may send is never dropped
/// once it carries its id.
pub const ID_FIELD_MAX_BYTES: usize = 64;

/// A user id: a positive integer that fits a signed 64-bit database key (1 ..= 2^63-1),
/// written in decimal without sign or leading zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(NonZeroU64);

impl UserId {
    /// The largest id accepted: `i64::MAX`, the largest Django `BigAutoField` value.
    pub const MAX: u64 = i64::MAX as u64;

    /// `None` for 0 or for ids above [`UserId::MAX`].
    pub fn new(id: u64) -> Option<Self> {
        if id > Self::MAX {
            return None;
        }
        NonZeroU64::new(id).map(UserId)
    }

    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The Redis channel that carries this user's notifications.
    pub fn channel(self) -> String {
        format!("{CHANNEL_PREFIX}{}", self.0)
    }

    /// The Redis stream holding this user's recent notifications.
    pub fn history_key(self) -> String {
        format!("{HISTORY_PREFIX}{}", self.0)
    }

    /// This user's history stream on a Redis Cluster: `history:{user_<id>}`, which hashes to
    /// the slot of [`UserId::channel`].
    pub fn cluster_history_key(self) -> String {
        format!("{CLUSTER_HISTORY_PREFIX}{}}}", self.0)
    }

    /// The user a channel name belongs to, if it is a user channel.
    pub fn from_channel(channel: &[u8]) -> Option<Self> {
        let digits = channel.strip_prefix(CHANNEL_PREFIX.as_bytes())?;
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a string is not a [`UserId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user id must be a positive decimal integer without leading zeros, at most {max}", max = UserId::MAX)]
pub struct InvalidUserId;

impl FromStr for UserId {
    type Err = InvalidUserId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Strict on purpose: one spelling per id, so "007", "+7" and " 7" never alias user 7.
        let canonical = !s.is_empty()
            && s.len() <= 19
            && s.bytes().all(|b| b.is_ascii_digit())
            && !s.starts_with('0');
        if !canonical {
            return Err(InvalidUserId);
        }
        s.parse::<u64>()
            .ok()
            .and_then(UserId::new)
            .ok_or(InvalidUserId)
    }
}

/// The severity a browser shows; today's frontend calls `notify[type](message)` with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Success,
    Info,
    Warning,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Success => "success",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a [`Level`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected success, info, warning or error")]
pub struct InvalidLevel;

impl Level {
    /// Every level, in the order the docs list them.
    pub const ALL: [Level; 4] = [Level::Success, Level::Info, Level::Warning, Level::Error];
}

impl FromStr for Level {
    type Err = InvalidLevel;

    /// The wire spelling only (lowercase), as serde reads it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|level| level.as_str() == s)
            .ok_or(InvalidLevel)
    }
}

/// A notification's id: the id of its entry in the user's history stream, `<ms>-<seq>`.
/// Ids of one user are strictly increasing; clients resume with the last one they saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub fn new(ms: u64, seq: u64) -> Self {
        StreamId { ms, seq }
    }

    /// The next possible id, for exclusive range starts.
    pub fn successor(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => StreamId { ms: self.ms, seq },
            None => StreamId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a string is not a [`StreamId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a notification id looks like 1763775600123-0 (milliseconds, dash, sequence)")]
pub struct InvalidStreamId;

impl FromStr for StreamId {
    type Err = InvalidStreamId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = |part: &str| {
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidStreamId);
            }
            part.parse::<u64>().map_err(|_| InvalidStreamId)
        };
        let (ms, seq) = s.split_once('-').ok_or(InvalidStreamId)?;
        Ok(StreamId {
            ms: digits(ms)?,
            seq: digits(seq)?,
        })
    }
}

/// `payload` (a JSON object) with `"id"` added as its first field, as the publish script
/// does. `None` if the payload is not an object.
pub fn with_id(id: StreamId, payload: &[u8]) -> Option<Vec<u8>> {
    let start = payload.iter().position(|b| !b.is_ascii_whitespace())?;
    if payload[start] != b'{' {
        return None;
    }
    let body = &payload[start + 1..];
    let empty = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut framed = Vec::with_capacity(payload.len() + 32);
    framed.extend_from_slice(format!("{{\"id\":\"{id}\"").as_bytes());
    if !empty {
        framed.push(b',');
    }
    framed.extend_from_slice(body);
    Some(framed)
}

/// What a gateway needs to know about a payload it received from a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadInfo {
    pub level: Level,
    /// The history id the publish script added; `None` for a plain PUBLISH (live only).
    pub id: Option<StreamId>,
    /// The publisher's `timestamp` (milliseconds since the Unix epoch), when present.
    pub timestamp_ms: Option<u64>,
}

/// Why a channel payload is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload of {size} bytes exceeds the {max} byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("payload is not a JSON object with a \"type\" (success|info|warning|error) and a string \"message\": {0}")]
    Malformed(String),
}

/// Checks a payload the way every gateway node does before forwarding it.
///
/// Parses once, borrowing; unknown fields are allowed so publishers can add data without
/// a gateway upgrade.
pub fn check_payload(payload: &[u8], max_bytes: usize) -> Result<PayloadInfo, PayloadError> {
    if payload.len() > max_bytes {
        return Err(PayloadError::TooLarge {
            size: payload.len(),
            max: max_bytes,
        });
    }
    // serde's derived struct parsing also accepts a JSON array of the fields in order
    // (`["info","hi"]`), which browsers would then receive: only an object is a notification.
    let first = payload
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(PayloadError::Malformed("expected a JSON object".to_owned()));
    }
    #[derive(Deserialize)]
    struct Shape<'a> {
        #[serde(rename = "type")]
        level: Level,
        #[serde(borrow)]
        #[allow(dead_code)] // only its presence and type are checked
        message: std::borrow::Cow<'a, str>,
        // Any JSON number: Python's `time.time() * 1000` is a float, and a latency metric
        // is no reason to refuse a notification.
        #[serde(default)]
        timestamp: Option<f64>,
        #[serde(default, borrow)]
        id: Option<std::borrow::Cow<'a, str>>,
    }
    let shape: Shape<'_> =
        serde_json::from_slice(payload).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    let id = match shape.id {
        Some(id) => Some(
            id.parse()
                .map_err(|e: InvalidStreamId| PayloadError::Malformed(format!("\"id\": {e}")))?,
        ),
        None => None,
    };
    Ok(PayloadInfo {
        level: shape.level,
        id,
        timestamp_ms: shape
            .timestamp
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map(|t| t as u64),
    })
}

/// `text` percent-encoded for the user or password part of a `redis://` URL (passwords may
/// hold URL-special characters).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_exactly_as_serde_reads_them() {
        for level in Level::ALL {
            assert_eq!(level.as_str().parse::<Level>(), Ok(level));
            let via_serde: Level = serde_json::from_value(level.as_str().into()).unwrap();
            assert_eq!(via_serde, level);
        }
        for bad in ["Info", "INFO", " info", "", "debug"] {
            assert_eq!(bad.parse::<Level>(), Err(InvalidLevel), "{bad:?}");
        }
    }

    #[test]
    fn user_ids_have_one_spelling() {
        assert_eq!("42".parse::<UserId>().unwrap().get(), 42);
        assert_eq!(
            "9223372036854775807".parse::<UserId>().unwrap().get(),
            UserId::MAX
        );
        for bad in [
            "",
            "0",
            "007",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "9223372036854775808",
            "99999999999999999999",
            "../1",
            "١",
            "abc",
        ] {
            assert_eq!(bad.parse::<UserId>(), Err(InvalidUserId), "{bad:?}");
        }
    }

    #[test]
    fn stream_ids_parse_order_and_splice() {
        let id: StreamId = "1763775600123-7".parse().unwrap();
        assert_eq!(id, StreamId::new(1763775600123, 7));
        assert_eq!(id.to_string(), "1763775600123-7");
        assert!(StreamId::new(5, 9) < StreamId::new(6, 0));
        assert_eq!(StreamId::new(5, u64::MAX).successor(), StreamId::new(6, 0));
        for bad in ["", "1", "1-", "-1", "a-b", "1-2-3", "1 -2", "+1-2"] {
            assert_eq!(bad.parse::<StreamId>(), Err(InvalidStreamId), "{bad:?}");
        }
        let framed = with_id(id, br#" {"type":"info","message":"m"}"#).unwrap();
        assert_eq!(
            framed,
            br#"{"id":"1763775600123-7","type":"info","message":"m"}"#
        );
        assert_eq!(
            with_id(id, b"{ }").unwrap(),
            br#"{"id":"1763775600123-7" }"#
        );
        assert_eq!(with_id(id, b"[1]"), None);
        let info = check_payload(&framed, 1024).unwrap();
        assert_eq!(info.id, Some(id));
        assert!(check_payload(br#"{"id":"x","type":"info","message":"m"}"#, 1024).is_err());
    }

    #[test]
    fn the_protocol_document_carries_the_exact_publish_script() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        assert!(
            doc.contains(PUBLISH_SCRIPT),
            "docs/PROTOCOL.md must reproduce publisher-lib/src/publish.lua verbatim"
        );
    }

    #[test]
    fn channels_round_trip() {
        let id = UserId::new(17).unwrap();
        assert_eq!(id.channel(), "user_17");
        assert_eq!(UserId::from_channel(b"user_17"), Some(id));
        assert_eq!(id.cluster_history_key(), "history:{user_17}");
        assert_eq!(UserId::from_channel(b"user_017"), None);
        assert_eq!(UserId::from_channel(b"other_17"), None);
    }

    #[test]
    fn payload_check_accepts_the_frontend_shape_and_extra_fields() {
        let info = check_payload(
            br#"{"type":"warning","message":"hi","event":"x","data":{"a":1},"timestamp":5}"#,
            1024,
        )
        .unwrap();
        assert_eq!(info.level, Level::Warning);
        assert_eq!(info.timestamp_ms, Some(5));
    }

    #[test]
    fn payload_check_allows_json_whitespace_around_the_object() {
        let info = check_payload(b" \r\n\t{\"type\":\"info\",\"message\":\"\"} \n", 1024).unwrap();
        assert_eq!(info.level, Level::Info);
        for bad in [
            &b""[..],
            b"   ",
            b"\xef\xbb\xbf{\"type\":\"info\",\"message\":\"x\"}",
        ] {
            assert!(matches!(
                check_payload(bad, 1024),
                Err(PayloadError::Malformed(_))
            ));
        }
    }

    #[test]
    fn payload_check_refuses_bad_shapes() {
        for bad in [
            &b"not json"[..],
            br#"{"type":"fatal","message":"x"}"#,
            br#"{"type":"info"}"#,
            br#"{"message":"x"}"#,
            br#"{"type":"info","message":3}"#,
            br#"["info","x"]"#,
        ] {
            assert!(
                matches!(check_payload(bad, 1024), Err(PayloadError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            check_payload(&[b' '; 10], 4),
            Err(PayloadError::TooLarge { size: 10, max: 4 })
        );
    }
}
