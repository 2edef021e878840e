"""``GatewayChannelLayer``: a Channels layer whose ``group_send("user_<id>", message)``
publishes through the gateway, so code written for Django Channels keeps working with only
``CHANNEL_LAYERS`` changed::

    CHANNEL_LAYERS = {"default": {"BACKEND": "notification_gateway.django.GatewayChannelLayer"}}

It only publishes. The gateway's nodes hold the WebSockets now, so what a consumer did
(``receive``, ``group_add``, ``send`` to a channel) has no place here and raises
:class:`UnsupportedOperation` naming what to do instead.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, Mapping, Optional

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .._wire import CHANNEL_PREFIX, user_id
from ..errors import GatewayError, InvalidInput
from ..events import Event
from ..notification import Notification
from . import publish_with_policy
from .conf import gateway_settings, get_publisher

MessageMapper = Callable[[str, Mapping[str, Any]], Notification]

#: Channels options a channels_redis configuration may carry; meaningless here, accepted so
#: that only BACKEND has to change.
_CHANNELS_OPTIONS = {
    "hosts",
    "prefix",
    "expiry",
    "group_expiry",
    "capacity",
    "channel_capacity",
    "symmetric_encryption_keys",
}


class UnsupportedOperation(GatewayError, NotImplementedError):
    """A channel-layer method the gateway does not provide."""


def default_message_mapper(group: str, message: Mapping[str, Any]) -> Notification:
    """Turns a Channels message into a notification. Understands the shapes Channels code
    sends to a ``send_notification`` handler (the handler name in ``type`` is not used):

    - ``{"type": "send_notification", "level": "success", "message": "Saved"}``, optionally
      with ``"event"`` and ``"data"``;
    - ``{"type": "send_notification", "message": {"type": "success", "message": "Saved", ...}}``
      (also under ``"notification"``): the frame the consumer forwarded as it was;
    - a typed event without level: ``{"type": "send_notification", "event": "booking.expired",
      "data": {...}}``, which gets the event's level and default message.
    """
    body: Mapping[str, Any] = message
    nested = False
    for key in ("message", "notification"):
        inner = message.get(key)
        if isinstance(inner, Mapping):
            body, nested = inner, True
            break
    # At the top level "type" is the consumer handler's name; inside a frame it is the level.
    level = body.get("level", body.get("type") if nested else None)
    text = body.get("message")
    event = body.get("event")
    data = body.get("data")
    if data is not None and not isinstance(data, Mapping):
        raise InvalidInput(f'group_send to {group}: "data" must be a dict, got {data!r}')
    if level is None and isinstance(event, str):
        typed = Event.from_name_and_data(event, data or {})
        return typed.to_notification(text if isinstance(text, str) else None)
    if level is not None and isinstance(text, str):
        return Notification(level, text, event=event, data=dict(data or {}))
    raise InvalidInput(
        f"group_send to {group}: cannot make a notification of {dict(message)!r}. The default "
        "mapping understands {'type': 'send_notification', 'level': 'success', 'message': '...'}, "
        "{'type': 'send_notification', 'message': {'type': 'success', 'message': '...'}} and "
        "{'type': 'send_notification', 'event': '<typed event>', 'data': {...}}; for other "
        "shapes set NOTIFICATION_GATEWAY['MESSAGE_MAPPER'] (or this layer's CONFIG "
        "MESSAGE_MAPPER) to the dotted path of a function (group, message) -> Notification"
    )


def user_of_group(group: str) -> int:
    """The user a ``user_<id>`` group belongs to; InvalidInput for any other group."""
    if isinstance(group, str) and group.startswith(CHANNEL_PREFIX):
        try:
            return user_id(group[len(CHANNEL_PREFIX) :])
        except InvalidInput:
            pass
    raise InvalidInput(
        f"group {group!r} is not a user group: GatewayChannelLayer delivers only to groups named "
        "user_<id> (one per user, as browsers connect to /ws/notifications/<id>/). Send to each "
        "member's user_<id> group, or call notification_gateway.django.notify_many(users, ...)"
    )


class GatewayChannelLayer:
    """A publish-only channel layer over the gateway (see the module doc).

    ``CONFIG`` may hold ``MESSAGE_MAPPER`` (a dotted path, overriding the one in
    ``NOTIFICATION_GATEWAY``) and, ignored, the options of a channels_redis configuration.
    Everything else comes from ``NOTIFICATION_GATEWAY``. Publishes at once (the calling code
    runs in ``async_to_sync``'s thread, outside the caller's transaction); use
    ``notify()`` where a notification must wait for a commit. Redis failures follow
    ``ERROR_POLICY``.
    """

    extensions = ["groups"]

    def __init__(self, MESSAGE_MAPPER: Optional[str] = None, **channels_options: Any) -> None:
        unknown = sorted(set(channels_options) - _CHANNELS_OPTIONS)
        if unknown:
            raise ImproperlyConfigured(
                f"GatewayChannelLayer CONFIG has unknown key(s) {', '.join(unknown)}: it takes "
                "MESSAGE_MAPPER; the Redis settings go in NOTIFICATION_GATEWAY"
            )
        path = MESSAGE_MAPPER or gateway_settings()["MESSAGE_MAPPER"]
        try:
            self.message_mapper: MessageMapper = import_string(path)
        except ImportError as error:
            raise ImproperlyConfigured(
                f"MESSAGE_MAPPER {path!r} cannot be imported: {error}"
            ) from None

    async def group_send(self, group: str, message: Dict[str, Any]) -> None:
        """Publishes ``message``, mapped to a notification, to the user of ``group``."""
        user = user_of_group(group)
        notification = self.message_mapper(group, message)
        if not isinstance(notification, Notification):
            raise InvalidInput(
                f"MESSAGE_MAPPER returned {type(notification).__name__}, not a Notification"
            )
        publisher = get_publisher()
        policy = gateway_settings()["ERROR_POLICY"]
        # The sync publisher in a worker thread: async_to_sync runs each call on a fresh
        # event loop, which redis-py's asyncio connections could not be shared across.
        await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: publish_with_policy(
                lambda: publisher.publish(user, notification), [user], notification, policy
            ),
        )

    async def send(self, channel: str, message: Dict[str, Any]) -> None:
        raise _unsupported(
            "send",
            "messages to a single consumer channel have no consumer any more; send to the "
            "user's group with group_send('user_<id>', ...)",
        )

    async def receive(self, channel: str) -> Dict[str, Any]:
        raise _unsupported(
            "receive",
            "the gateway's nodes receive and deliver to browsers; remove the consumer and its "
            "routing (browsers connect to the gateway's /ws/notifications/<id>/)",
        )

    async def new_channel(self, prefix: str = "specific.") -> str:
        raise _unsupported(
            "new_channel",
            "consumers no longer run in Django; remove them and their routing, the gateway holds "
            "the WebSockets",
        )

    async def group_add(self, group: str, channel: str) -> None:
        raise _unsupported(
            "group_add",
            "the gateway subscribes each browser to its user's channel itself; remove the "
            "consumer's connect()/group_add and its routing",
        )

    async def group_discard(self, group: str, channel: str) -> None:
        raise _unsupported(
            "group_discard",
            "the gateway unsubscribes browsers itself; remove the consumer's disconnect()",
        )

    async def flush(self) -> None:
        """Nothing is buffered here: a no-op, as test suites call it between tests."""

    async def close(self) -> None:
        """The publisher is shared by the process; nothing to close per layer."""


def _unsupported(method: str, instead: str) -> UnsupportedOperation:
    return UnsupportedOperation(
        f"GatewayChannelLayer.{method} is not supported: this layer only publishes "
        f"(group_send to user_<id> groups). {instead}. Code that still needs a full channel "
        "layer can keep one under another CHANNEL_LAYERS alias."
    )
