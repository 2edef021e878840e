"""Publish notifications to the notification gateway's browsers from Python.

The same publish script and semantics as the Rust ``publisher-lib``: every notification is
stored in its user's history and published in one atomic step, gets an id, and a retry after a
lost answer never delivers it twice.

Example::

    from notification_gateway import BookingExpiringSoon, Publisher

    publisher = Publisher("redis://localhost:6379/0")
    event = BookingExpiringSoon(booking_id=1881, slot="A-12", minutes_left=5)
    receipt = publisher.publish(42, event)
    receipt.id, receipt.receivers  # ('1717171717000-0', 1)

Django projects: :mod:`notification_gateway.django` (``pip install notification-gateway[django]``);
it is not imported here, so this package never needs Django.
"""

from __future__ import annotations

from ._core import Receipt
from ._wire import MAX_USER_ID, PUBLISH_SCRIPT, PUBLISH_SCRIPT_SHA, channel, history_key, user_id
from .aio import AsyncPublisher
from .errors import (
    GatewayError,
    InvalidInput,
    PayloadTooLarge,
    PublishTimeout,
    RedisRejected,
    RedisUnavailable,
)
from .events import (
    EVENTS,
    BookingCreated,
    BookingDeclined,
    BookingExpired,
    BookingExpiringSoon,
    BookingRenewalFailed,
    BookingRenewed,
    CarWashCompleted,
    CashPaymentVerified,
    EmployeeAssigned,
    Event,
    SlotAutoExpired,
)
from .notification import Level, Notification
from .options import PublisherOptions
from .publisher import Publisher

__version__ = "0.1.0"

__all__ = [
    "AsyncPublisher",
    "BookingCreated",
    "BookingDeclined",
    "BookingExpired",
    "BookingExpiringSoon",
    "BookingRenewalFailed",
    "BookingRenewed",
    "CarWashCompleted",
    "CashPaymentVerified",
    "EVENTS",
    "EmployeeAssigned",
    "Event",
    "GatewayError",
    "InvalidInput",
    "Level",
    "MAX_USER_ID",
    "Notification",
    "PUBLISH_SCRIPT",
    "PUBLISH_SCRIPT_SHA",
    "PayloadTooLarge",
    "PublishTimeout",
    "Publisher",
    "PublisherOptions",
    "Receipt",
    "RedisRejected",
    "RedisUnavailable",
    "SlotAutoExpired",
    "channel",
    "history_key",
    "user_id",
]
