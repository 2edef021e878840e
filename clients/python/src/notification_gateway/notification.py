"""The JSON object every browser receives, and its serialisation (publisher-lib's
``notification.rs``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Mapping, Optional, Union

from .errors import InvalidInput, PayloadTooLarge


class Level(str, Enum):
    """The severity a browser shows; today's frontend calls ``notify[type](message)``."""

    SUCCESS = "success"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


LevelLike = Union[Level, str]


def level_of(value: LevelLike) -> Level:
    try:
        return Level(value)
    except ValueError:
        raise InvalidInput(
            f"notification type must be one of success, info, warning, error; got {value!r}"
        ) from None


def now_millis() -> int:
    return time.time_ns() // 1_000_000


def _sorted_keys(value: Any) -> Any:
    # publisher-lib (serde_json's map) writes object keys in sorted order: do the same, so
    # that a Python and a Rust publish of the same event are the same bytes.
    if isinstance(value, Mapping):
        return {
            str(k): _sorted_keys(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
        }
    if isinstance(value, (list, tuple)):
        return [_sorted_keys(v) for v in value]
    return value


@dataclass
class Notification:
    """One notification: ``{"type", "message", "event"?, "data"?, "timestamp"?}``.

    A free-form one needs only a level and a message; typed events
    (:mod:`notification_gateway.events`) fill in ``event`` and ``data``. The publisher sets
    ``timestamp`` (milliseconds since the epoch) to now when it is ``None``.
    """

    level: LevelLike
    message: str
    event: Optional[str] = None
    data: Dict[str, Any] = field(default_factory=dict)
    timestamp: Optional[int] = None

    def to_payload(self, max_bytes: int) -> bytes:
        """The UTF-8 JSON bytes sent, with the same field order and spelling as
        publisher-lib. Raises :class:`InvalidInput` or :class:`PayloadTooLarge`."""
        level = level_of(self.level)
        if not isinstance(self.message, str) or not self.message.strip():
            raise InvalidInput("notification message is empty: give the user a text to read")
        body: Dict[str, Any] = {"type": level.value, "message": self.message}
        if self.event is not None:
            if not isinstance(self.event, str):
                raise InvalidInput(f"event must be a string, got {self.event!r}")
            body["event"] = self.event
        if self.data:
            if not isinstance(self.data, Mapping):
                raise InvalidInput(f"data must be a dict, got {type(self.data).__name__}")
            body["data"] = _sorted_keys(self.data)
        if self.timestamp is not None:
            if (
                isinstance(self.timestamp, bool)
                or not isinstance(self.timestamp, int)
                or self.timestamp < 0
            ):
                raise InvalidInput(
                    "timestamp must be milliseconds since the epoch (a non-negative int), "
                    f"got {self.timestamp!r}"
                )
            body["timestamp"] = self.timestamp
        try:
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise InvalidInput(f"notification data is not JSON: {error}") from None
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(
                "notification holds a lone surrogate: it is not valid UTF-8"
            ) from None
        if len(payload) > max_bytes:
            raise PayloadTooLarge(len(payload), max_bytes)
        return payload


def stamped(notification: Notification) -> Notification:
    """``notification`` with its timestamp set to now when unset (a copy; the caller's
    object is not changed)."""
    if notification.timestamp is not None:
        return notification
    return Notification(
        notification.level,
        notification.message,
        notification.event,
        notification.data,
        now_millis(),
    )


__all__ = ["Level", "LevelLike", "Notification", "level_of", "now_millis", "stamped"]
