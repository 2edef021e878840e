"""What the sync and the asyncio publisher share: input checks, redis-py connection settings,
reply parsing and the error mapping. No network I/O here."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

import redis.exceptions as rx
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._wire import user_id
from .errors import GatewayError, InvalidInput, PublishTimeout, RedisRejected, RedisUnavailable
from .events import Event
from .notification import Notification, stamped
from .options import PublisherOptions

#: First pause before retrying a connection error; doubles on each further retry.
RETRY_BACKOFF = 0.05

NotificationLike = Union[Notification, Event]


class Receipt(NamedTuple):
    """What Redis answered to one publish."""

    #: The notification's id in the user's history (``"<ms>-<seq>"``), also sent to browsers.
    id: str
    #: Gateway nodes that received it live: 0 means no browser of the user is open anywhere
    #: (not an error: it is in history).
    receivers: int


def serialise(notification: NotificationLike, options: PublisherOptions) -> bytes:
    if isinstance(notification, Event):
        notification = notification.to_notification()
    elif not isinstance(notification, Notification):
        raise InvalidInput(
            f"expected a Notification or a typed Event, got {type(notification).__name__}"
        )
    return stamped(notification).to_payload(options.max_payload_bytes)


def prepare_batch(
    batch: Iterable[Tuple[Any, NotificationLike]], options: PublisherOptions
) -> List[Tuple[int, bytes]]:
    """Every (user, payload) of a batch, all validated before anything is sent."""
    prepared = []
    for item in batch:
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidInput(f"a batch holds (user, notification) pairs, got {item!r}")
        user, notification = item
        prepared.append((user_id(user), serialise(notification, options)))
    return prepared


def distinct_users(users: Iterable[Any]) -> List[int]:
    seen: Dict[int, None] = {}
    for user in users:
        seen[user_id(user)] = None
    return list(seen)


def connection_kwargs(
    url: str, options: PublisherOptions, tls_ca_file: Optional[str]
) -> Dict[str, Any]:
    """redis-py pool settings: every wait bounded by the timeout, and no retries of its own
    (redis-py's would resend the script without the retry flag, and could publish twice)."""
    if not isinstance(url, str):
        raise InvalidInput(f"the Redis URL must be a string, got {type(url).__name__}")
    kwargs: Dict[str, Any] = {
        "max_connections": options.pool_size,
        "timeout": options.timeout,
        "socket_timeout": options.timeout,
        "socket_connect_timeout": options.timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_error": [],
    }
    if url.startswith("rediss://"):
        # Explicit: redis-py's defaults for these changed between versions.
        kwargs.update(ssl_cert_reqs="required", ssl_check_hostname=True)
    if tls_ca_file is not None:
        if not url.startswith("rediss://"):
            raise InvalidInput("tls_ca_file is for a rediss:// URL (TLS); this URL is not one")
        try:
            with open(tls_ca_file, "rb") as pem:
                has_certificate = b"-----BEGIN CERTIFICATE-----" in pem.read()
        except OSError as error:
            raise InvalidInput(f"cannot read tls_ca_file {tls_ca_file!r}: {error}") from None
        if not has_certificate:
            # redis-py would take it as an empty trust store and fail every connection later.
            raise InvalidInput(f"tls_ca_file {tls_ca_file!r} holds no PEM certificate")
        kwargs["ssl_ca_certs"] = tls_ca_file
    return kwargs


def receipt(reply: Any) -> Receipt:
    try:
        raw_id, receivers = reply
        text = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        return Receipt(text, int(receivers))
    except (TypeError, ValueError):
        raise RedisRejected(f"Redis answered the publish script unexpectedly: {reply!r}") from None


def is_retryable(error: GatewayError) -> bool:
    return isinstance(error, RedisUnavailable) and not isinstance(error, RedisRejected)


def map_error(error: BaseException, timeout: float) -> GatewayError:
    """Sorts a redis-py error into timeout, connection broke (retryable) and Redis said no."""
    if isinstance(error, GatewayError):
        return error
    # redis-py's BlockingConnectionPool says so when no connection freed up within its timeout.
    pool_exhausted = isinstance(error, rx.ConnectionError) and "No connection available" in str(
        error
    )
    if isinstance(error, (rx.TimeoutError, TimeoutError)) or pool_exhausted:
        return PublishTimeout(
            f"Redis did not answer within {timeout} s: check Redis load and network latency, "
            "or raise the timeout; the notification may or may not have been delivered"
        )
    if isinstance(error, (rx.AuthenticationError, rx.AuthorizationError, rx.ResponseError)):
        return RedisRejected(
            f"Redis rejected the command ({error}): check the password/ACL in the URL and "
            "that it points at a writable primary"
        )
    return RedisUnavailable(
        f"Redis is unavailable ({type(error).__name__}: {error}): check that Redis is running "
        "and reachable at the configured URL; the notification was most likely not sent"
    )
