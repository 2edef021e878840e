"""Scheduled notifications and presence: the Redis layout of publisher-lib's
``src/schedule.rs`` (docs/SCHEDULING.md). No network I/O here."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import re
import time
from importlib import resources
from typing import Any, Dict, Iterable, List, Tuple, Union

from . import _core
from ._wire import user_id
from .errors import InvalidInput
from .events import Event
from .notification import Notification
from .options import PublisherOptions

DUE_KEY = "schedule:{gw}:due"
ITEMS_KEY = "schedule:{gw}:items"
NODES_KEY = "presence:{gw}:nodes"
NODE_COUNTS_PREFIX = "presence:{gw}:node:"
MAX_KEY_BYTES = 200
MAX_PRESENCE_USERS = 1000
#: Due times before this (2001-09-09) are seconds given where milliseconds were meant.
MIN_DUE_MS = 1_000_000_000_000
MAX_AHEAD_MS = 366 * 24 * 3600 * 1000

#: The presence query, byte for byte publisher-lib's ``src/presence.lua`` (a Rust test checks).
PRESENCE_SCRIPT: bytes = resources.files(__package__).joinpath("presence.lua").read_bytes()
PRESENCE_SCRIPT_SHA: str = hashlib.sha1(PRESENCE_SCRIPT).hexdigest()

_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,200}")

Due = Union[datetime.datetime, int]


def schedule_key(key: Any) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidInput(
            f"schedule key must be 1 to {MAX_KEY_BYTES} bytes of ASCII letters, digits and "
            f"_-.: (e.g. booking:1881:expiring), got {key!r}"
        )
    return key


def due_ms(at: Due) -> int:
    """Milliseconds since the epoch of ``at``: an aware datetime, or an int of milliseconds.
    A time in the past fires at once; one before 2001 or over a year ahead is refused."""
    if isinstance(at, datetime.datetime):
        if at.tzinfo is None:
            raise InvalidInput("the due time must be an aware datetime (with a tzinfo)")
        ms = int(at.timestamp() * 1000)
    elif isinstance(at, int) and not isinstance(at, bool):
        ms = at
    else:
        raise InvalidInput(
            f"the due time must be an aware datetime or milliseconds since the epoch, got {at!r}"
        )
    if ms < MIN_DUE_MS:
        raise InvalidInput(
            f"due time {ms} ms is before 2001: give milliseconds since the Unix epoch, not seconds"
        )
    if ms > int(time.time() * 1000) + MAX_AHEAD_MS:
        raise InvalidInput(f"due time {ms} ms is more than a year ahead")
    return ms


def prepare_schedule(
    user: Any, notification: _core.NotificationLike, at: Due, key: Any, options: PublisherOptions
) -> Tuple[str, int, bytes]:
    """(key, due ms, HASH value) of one item, everything checked."""
    name = schedule_key(key)
    ms = due_ms(at)
    target = user_id(user)
    if isinstance(notification, Event):
        notification = notification.to_notification()
    if not isinstance(notification, Notification):
        raise InvalidInput(
            f"expected a Notification or a typed Event, got {type(notification).__name__}"
        )
    stamped = dataclasses.replace(notification, timestamp=ms)
    payload = _core.serialise(stamped, options)
    return name, ms, str(target).encode() + b" " + payload


def presence_args(users: Iterable[Any], nodes: bool) -> Tuple[List[int], List[Any]]:
    """The distinct ids asked for, and the presence script's KEYS and ARGV after numkeys (1)."""
    ids = _core.distinct_users(users)
    if len(ids) > MAX_PRESENCE_USERS:
        raise InvalidInput(f"{len(ids)} user ids given, at most {MAX_PRESENCE_USERS} per call")
    return ids, [NODES_KEY, NODE_COUNTS_PREFIX, "1" if nodes else "0", *ids]


def parse_presence(ids: List[int], replies: List[Any]) -> Dict[int, Tuple[int, Dict[str, int]]]:
    result: Dict[int, Tuple[int, Dict[str, int]]] = {}
    for user, reply in zip(ids, replies):
        if not isinstance(reply, list):  # without nodes: the total alone
            result[user] = (int(reply), {})
            continue
        nodes = {}
        for i in range(1, len(reply) - 1, 2):
            name = reply[i].decode() if isinstance(reply[i], bytes) else str(reply[i])
            nodes[name] = int(reply[i + 1])
        result[user] = (int(reply[0]), nodes)
    return result
