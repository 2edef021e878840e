"""How a publisher talks to Redis: publisher-lib's ``PublisherOptions``, in seconds."""

from __future__ import annotations

from dataclasses import dataclass

from ._wire import DEFAULT_MAX_PAYLOAD_BYTES
from .errors import InvalidInput


@dataclass(frozen=True)
class PublisherOptions:
    """Options with publisher-lib's defaults. Build with keywords so new fields keep theirs:
    ``PublisherOptions(timeout=0.5)``.

    The Redis topology is chosen by how the publisher connects (today one Redis by URL, or a
    client you built: ``Publisher.from_client``); Sentinel and Cluster will be further ways to
    connect, not options here.
    """

    #: Most Redis connections kept open; a call waits (within ``timeout``) for a free one.
    pool_size: int = 8
    #: Seconds. Bounds connecting, every reply and the wait for a pooled connection; no retry
    #: starts after it. When it passes the call raises :class:`PublishTimeout`.
    timeout: float = 2.0
    #: Largest payload sent, in bytes; keep it no higher than the gateways' setting
    #: ``redis.max_payload_bytes`` or they will drop what you send.
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    #: Extra attempts after a connection error (Redis restarting, failover), with a doubling
    #: pause from 50 ms. Retries carry the notification's token, so a publish whose answer
    #: was lost is never stored or delivered twice. Timeouts and Redis' own errors are not
    #: retried.
    retries: int = 2
    #: Notifications kept per user in the history stream (approximately).
    history_max_len: int = 1000
    #: Seconds after which history entries are trimmed and an idle history expires; 0 keeps
    #: entries regardless of age.
    history_max_age: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if not _is_int(self.pool_size) or self.pool_size < 1:
            raise InvalidInput("pool_size must be an integer of at least 1")
        if not _is_number(self.timeout) or not self.timeout > 0:
            raise InvalidInput("timeout must be a number of seconds above zero")
        if not _is_int(self.max_payload_bytes) or self.max_payload_bytes < 1:
            raise InvalidInput("max_payload_bytes must be a positive integer")
        if not _is_int(self.retries) or self.retries < 0:
            raise InvalidInput("retries must be a non-negative integer")
        if not _is_int(self.history_max_len) or self.history_max_len < 1:
            raise InvalidInput("history_max_len must be an integer of at least 1")
        if not _is_number(self.history_max_age) or not 0 <= self.history_max_age <= 365 * 24 * 3600:
            raise InvalidInput(
                "history_max_age must be between 0 (no age limit) and a year, in seconds"
            )

    @property
    def history_max_age_ms(self) -> int:
        return int(self.history_max_age * 1000)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
