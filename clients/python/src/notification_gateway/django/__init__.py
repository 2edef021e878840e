"""Django integration: ``notify()`` on commit, and a channel layer for ``group_send`` code.

Settings, in one dict (every key optional; see the package README)::

    NOTIFICATION_GATEWAY = {"REDIS_URL": "redis://redis:6379/0"}

Publishing::

    from notification_gateway import CarWashCompleted
    from notification_gateway.django import notify

    notify(booking.customer, CarWashCompleted(booking_id=booking.pk, service="Premium"))

``notify`` publishes when the current transaction commits (never for a rolled-back one), and
by default logs and counts Redis failures instead of raising them into your request.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, TypeVar

from django.db import transaction

from .._core import NotificationLike, Receipt, distinct_users, serialise
from .._wire import user_id
from ..errors import GatewayError, InvalidInput
from ..events import Event
from ..notification import Notification, stamped
from .conf import gateway_settings, get_publisher

logger = logging.getLogger("notification_gateway")

T = TypeVar("T")

_failures_lock = threading.Lock()
_failures = 0


def failed_publishes() -> int:
    """Notifications not published because of a Redis error under the ``"log"`` policy, since
    the process started (export it to your metrics)."""
    return _failures


def notify(
    user_or_id: Any,
    notification: NotificationLike,
    *,
    on_commit: Optional[bool] = None,
    using: Optional[str] = None,
) -> Optional[Receipt]:
    """Sends ``notification`` (a typed event or a :class:`Notification`) to the user (a
    model instance or an id).

    Bad input (a user id, a blank message, a missing event field) raises
    :class:`InvalidInput` here, at the call. The publish itself happens when the transaction
    of ``using`` commits (``ON_COMMIT``, default True; now when there is no transaction) and
    returns None; with ``on_commit=False`` it happens now and returns the receipt. A Redis
    failure is logged and counted (``ERROR_POLICY`` "log", then None is returned) or raised
    ("raise").
    """
    user = user_id(user_or_id)
    ready = _checked(notification)
    return _dispatch(lambda: get_publisher().publish(user, ready), [user], ready, on_commit, using)


def notify_many(
    users: Iterable[Any],
    notification: NotificationLike,
    *,
    on_commit: Optional[bool] = None,
    using: Optional[str] = None,
) -> Optional[Dict[int, Receipt]]:
    """:func:`notify` for several users in one Redis round trip; returns each user's receipt
    when published now."""
    targets = distinct_users(users)
    ready = _checked(notification)
    return _dispatch(
        lambda: get_publisher().publish_many(targets, ready), targets, ready, on_commit, using
    )


def _checked(notification: NotificationLike) -> Notification:
    """The notification with its timestamp (the time of the event, not of the commit),
    validated now so that bad input fails at the call site."""
    if isinstance(notification, Event):
        notification = notification.to_notification()
    if not isinstance(notification, Notification):
        raise InvalidInput(
            f"expected a Notification or a typed Event, got {type(notification).__name__}"
        )
    ready = stamped(notification)
    serialise(ready, get_publisher().options)
    return ready


def _dispatch(
    publish: Callable[[], T],
    users: List[int],
    notification: Notification,
    on_commit: Optional[bool],
    using: Optional[str],
) -> Optional[T]:
    config = gateway_settings()
    deferred = config["ON_COMMIT"] if on_commit is None else on_commit
    policy = config["ERROR_POLICY"]

    def run() -> Optional[T]:
        return publish_with_policy(publish, users, notification, policy)

    if deferred:
        transaction.on_commit(run, using=using)
        return None
    return run()


def publish_with_policy(
    publish: Callable[[], T], users: List[int], notification: Notification, policy: str
) -> Optional[T]:
    """Runs ``publish()``; under the "log" policy a Redis failure is logged and counted and
    None returned, under "raise" it propagates. Bad input always raises."""
    global _failures
    try:
        return publish()
    except InvalidInput:
        raise
    except GatewayError as error:
        if policy == "raise":
            raise
        with _failures_lock:
            _failures += 1
        logger.error(
            "notification not published: %s (users %s, event %s)",
            error,
            users,
            notification.event or notification.level,
        )
        return None


__all__ = ["failed_publishes", "notify", "notify_many"]

# Last: the layer module imports publish_with_policy from here.
from .layer import GatewayChannelLayer, UnsupportedOperation, default_message_mapper  # noqa: E402

__all__ += ["GatewayChannelLayer", "UnsupportedOperation", "default_message_mapper"]
