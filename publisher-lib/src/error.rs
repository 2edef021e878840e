//! The one error type of this crate, and the coarse [`ErrorKind`] callers branch on.

use std::error::Error as StdError;
use std::time::Duration;

use deadpool_redis::redis::RedisError;

/// What went wrong, in the few categories a caller acts on differently.
///
/// Match on this rather than on [`PublishError`]'s variants: the variants carry details and
/// may grow, the kinds are the stable contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Redis could not be reached, dropped the connection, or refused the command
    /// (wrong password, ACL). Retrying later may work; the notification was most likely not sent.
    RedisUnavailable,
    /// The caller's input is wrong (empty message, malformed payload, bad Redis URL).
    /// Retrying the same input will fail the same way.
    InvalidInput,
    /// The serialised notification is over the gateway's size limit.
    TooLarge,
    /// Redis did not answer within [`PublisherOptions::timeout`](crate::PublisherOptions::timeout).
    /// The notification may or may not have been delivered.
    Timeout,
}

/// Why a notification was not published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The notification's `message` is empty or only whitespace.
    #[error("notification message is empty: give the user a text to read (Notification::new(level, \"...\"))")]
    EmptyMessage,

    /// An already-serialised payload is not something a gateway would forward.
    #[error("payload is not a valid notification ({reason}): send a UTF-8 JSON object with \"type\" (success|info|warning|error) and a string \"message\", see docs/PROTOCOL.md")]
    MalformedPayload { reason: String },

    /// The notification could not be turned into JSON (should not happen for this crate's types).
    #[error("notification could not be serialised to JSON: {0}")]
    Serialize(#[source] serde_json::Error),

    /// The payload is over the size limit; gateways would drop it.
    #[error("notification is {size} bytes, over the {max} byte limit: put an id in `data` and let the browser fetch the bulky part")]
    TooLarge { size: usize, max: usize },

    /// The Redis URL (or pool configuration) is unusable.
    #[error("invalid Redis URL or TLS settings ({0}): use redis://[user:password@]host[:port][/db], or rediss://... for TLS with a PEM CA certificate")]
    InvalidConfig(#[source] RedisError),

    /// Connecting to Redis failed or the connection broke.
    #[error("Redis is unavailable ({source}): check that Redis is running and reachable at the configured URL; the notification was most likely not sent")]
    RedisUnavailable {
        #[source]
        source: Box<dyn StdError + Send + Sync + 'static>,
    },

    /// Redis answered, but with an error (e.g. NOAUTH, WRONGPASS, NOPERM, READONLY) or a
    /// reply of an unexpected type.
    #[error("Redis rejected the command ({0}): check the password/ACL in the URL and that it points at a writable primary")]
    RedisRejected(#[source] RedisError),

    /// A [`PublisherOptions`](crate::PublisherOptions) value is unusable.
    #[error("invalid publisher options: {0}")]
    InvalidOptions(&'static str),

    /// Neither a free-form notification (`type` + `message`) nor a typed event was given.
    #[error("incomplete notification: {0}")]
    Incomplete(&'static str),

    /// An event name and data that make no [`Event`](crate::Event).
    #[error("{0}")]
    InvalidEvent(#[from] crate::events::EventError),

    /// A scheduling key that is empty, too long, or has other characters than allowed.
    #[error("{0}")]
    InvalidKey(#[from] crate::schedule::InvalidScheduleKey),

    /// A due time that is surely a mistake (seconds for milliseconds, years ahead).
    #[error("{0}")]
    InvalidDueTime(#[from] crate::schedule::InvalidDueTime),

    /// More user ids than one call may name.
    #[error("{given} user ids given, at most {max} per call: split the list")]
    TooManyUsers { given: usize, max: usize },

    /// The overall deadline for one publish call passed.
    #[error("Redis did not answer within {0:?}: check Redis load and network latency, or raise PublisherOptions::timeout; the notification may or may not have been delivered")]
    Timeout(Duration),
}

impl PublishError {
    /// The category of this error; see [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            PublishError::EmptyMessage
            | PublishError::MalformedPayload { .. }
            | PublishError::Serialize(_)
            | PublishError::InvalidConfig(_)
            | PublishError::InvalidOptions(_)
            | PublishError::InvalidEvent(_)
            | PublishError::InvalidKey(_)
            | PublishError::InvalidDueTime(_)
            | PublishError::TooManyUsers { .. }
            | PublishError::Incomplete(_) => ErrorKind::InvalidInput,
            PublishError::TooLarge { .. } => ErrorKind::TooLarge,
            PublishError::RedisUnavailable { .. } | PublishError::RedisRejected(_) => {
                ErrorKind::RedisUnavailable
            }
            PublishError::Timeout(_) => ErrorKind::Timeout,
        }
    }

    /// Whether a retry of the same call could succeed: only for connection failures, which
    /// are usually a Redis restart or failover in progress.
    pub(crate) fn is_connection_error(&self) -> bool {
        matches!(self, PublishError::RedisUnavailable { .. })
    }

    pub(crate) fn unavailable(source: impl StdError + Send + Sync + 'static) -> Self {
        PublishError::RedisUnavailable {
            source: Box::new(source),
        }
    }

    /// Sorts a redis-rs error into "timed out", "connection broke" (retryable), "bad settings"
    /// and "Redis said no" (not retried: the same command would get the same answer). `timeout` is the caller's limit, reported on timeouts.
    pub(crate) fn from_redis(err: RedisError, timeout: Duration) -> Self {
        use deadpool_redis::redis::ErrorKind as K;
        // Checked first: an I/O timeout is an I/O error too, but the command may have reached
        // Redis, so it must not be retried like a refused connection.
        if err.is_timeout() {
            return PublishError::Timeout(timeout);
        }
        if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
            return Self::unavailable(err);
        }
        match err.kind() {
            K::InvalidClientConfig => PublishError::InvalidConfig(err),
            // No sentinel answered, or none knows a reachable master yet (mid-failover).
            K::MasterNameNotFoundBySentinel | K::EmptySentinelList => Self::unavailable(err),
            _ => PublishError::RedisRejected(err),
        }
    }

    /// Maps a pool checkout failure. `timeout` is the caller's deadline, reported on timeouts.
    pub(crate) fn from_sentinel_pool(
        err: deadpool::managed::PoolError<RedisError>,
        timeout: Duration,
    ) -> Self {
        use deadpool::managed::PoolError as P;
        match err {
            P::Backend(e) => Self::from_redis(e, timeout),
            P::Timeout(_) => PublishError::Timeout(timeout),
            other => Self::unavailable(PoolFailure(other.to_string())),
        }
    }

    pub(crate) fn from_pool(err: deadpool_redis::PoolError, timeout: Duration) -> Self {
        use deadpool_redis::PoolError as P;
        match err {
            P::Backend(e) => Self::from_redis(e, timeout),
            P::Timeout(_) => PublishError::Timeout(timeout),
            // Closed, missing runtime, hook failures: nothing a retry fixes, but the caller
            // still cannot reach Redis through this publisher.
            other => Self::unavailable(PoolFailure(other.to_string())),
        }
    }
}

/// A pool failure that has no redis-rs error inside (closed pool, hook error).
#[derive(Debug, thiserror::Error)]
#[error("connection pool: {0}")]
pub(crate) struct PoolFailure(pub(crate) String);

impl From<crate::wire::PayloadError> for PublishError {
    fn from(err: crate::wire::PayloadError) -> Self {
        match err {
            crate::wire::PayloadError::TooLarge { size, max } => {
                PublishError::TooLarge { size, max }
            }
            crate::wire::PayloadError::Malformed(reason) => {
                PublishError::MalformedPayload { reason }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PayloadError;

    #[test]
    fn payload_errors_map_to_kinds() {
        let too_large = PublishError::from(PayloadError::TooLarge { size: 10, max: 4 });
        assert_eq!(too_large.kind(), ErrorKind::TooLarge);
        assert!(too_large.to_string().contains("10 bytes"));

        let malformed = PublishError::from(PayloadError::Malformed("x".into()));
        assert_eq!(malformed.kind(), ErrorKind::InvalidInput);
        assert!(!malformed.is_connection_error());
    }

    #[test]
    fn redis_errors_are_sorted() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let mapped = PublishError::from_redis(refused, Duration::from_secs(1));
        assert_eq!(mapped.kind(), ErrorKind::RedisUnavailable);
        assert!(mapped.is_connection_error());

        let bad_url = RedisError::from((
            deadpool_redis::redis::ErrorKind::InvalidClientConfig,
            "Missing hostname",
        ));
        assert_eq!(
            PublishError::from_redis(bad_url, Duration::from_secs(1)).kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn pool_timeouts_are_timeouts() {
        let err = PublishError::from_pool(
            deadpool_redis::PoolError::Timeout(deadpool_redis::TimeoutType::Wait),
            Duration::from_secs(2),
        );
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.to_string().contains("2s"));
    }
}
