"""The exceptions of this package, all rooted in :class:`GatewayError`.

Catch :class:`GatewayError` to handle every failure of a publish; catch a subclass to act on
one cause. The categories are the ones publisher-lib's ``ErrorKind`` has, so Rust and Python
services can be operated the same way.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error this package raises."""


class InvalidInput(GatewayError, ValueError):
    """The caller's input is wrong (blank message, unknown level, bad user id, bad Redis URL,
    an event with a missing field). Retrying the same input fails the same way; nothing was
    sent."""


class PayloadTooLarge(InvalidInput):
    """The serialised notification is over ``max_payload_bytes``: gateways would drop it.
    Put an id in ``data`` and let the browser fetch the bulky part."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"notification is {size} bytes, over the {limit} byte limit: put an id in `data` "
            "and let the browser fetch the bulky part"
        )
        self.size = size
        self.limit = limit


class RedisUnavailable(GatewayError, ConnectionError):
    """Redis could not be reached or dropped the connection, even after the retries. The
    notification was most likely not sent; retrying later may work."""


class RedisRejected(RedisUnavailable):
    """Redis answered with an error (wrong password, ACL, read-only replica). Not retried:
    the same command would get the same answer. Check the URL's credentials and that it
    points at a writable primary."""


class PublishTimeout(GatewayError, TimeoutError):
    """Redis did not answer within the publisher's ``timeout``. The notification may or may
    not have been delivered."""
