"""The wire contract shared with publisher-lib (``publisher-lib/src/wire.rs``): channel and
history names, user ids, the publish script and its retry tokens. See docs/PROTOCOL.md."""

from __future__ import annotations

import hashlib
import secrets
from importlib import resources
from typing import Any, List, Union

from .errors import InvalidInput

CHANNEL_PREFIX = "user_"
HISTORY_PREFIX = "history:user_"
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024
#: The largest user id: a signed 64-bit database key (Django's BigAutoField).
MAX_USER_ID = 2**63 - 1

#: The publish script, byte for byte publisher-lib's ``src/publish.lua`` (a Rust test checks).
PUBLISH_SCRIPT: bytes = resources.files(__package__).joinpath("publish.lua").read_bytes()
#: What EVALSHA names it by.
PUBLISH_SCRIPT_SHA: str = hashlib.sha1(PUBLISH_SCRIPT).hexdigest()

UserRef = Union[int, str]


def user_id(user: Any) -> int:
    """The user id in ``user``: an int, a canonical decimal string, or an object with an
    integer ``pk`` (a Django model instance). Raises :class:`InvalidInput` otherwise."""
    pk = getattr(user, "pk", user)
    if isinstance(pk, bool):
        raise InvalidInput(f"user id must be an integer, not {pk!r}")
    if isinstance(pk, int):
        value = pk
    elif isinstance(pk, str) and pk.isascii() and pk.isdigit() and not pk.startswith("0"):
        # One spelling per id, as the gateway's rule: "007", "+7" and " 7" never alias user 7.
        value = int(pk)
    else:
        raise InvalidInput(
            f"user id must be a positive integer (or its decimal text without sign, spaces or "
            f"leading zeros), got {pk!r}"
        )
    if not 1 <= value <= MAX_USER_ID:
        raise InvalidInput(f"user id must be between 1 and {MAX_USER_ID}, got {value}")
    return value


def channel(user: int) -> str:
    return f"{CHANNEL_PREFIX}{user}"


def history_key(user: int) -> str:
    return f"{HISTORY_PREFIX}{user}"


def new_token() -> str:
    """A token unique to one notification, stored with it, so that the script recognises a
    retry of a call whose answer was lost."""
    return secrets.token_hex(12)


def script_args(
    user: int, payload: bytes, max_len: int, max_age_ms: int, token: str, retry: bool
) -> List[Union[str, bytes, int]]:
    """KEYS and ARGV of one run of the publish script, after its numkeys (1), exactly as
    publisher-lib's ``Publisher::invocation`` sends them."""
    return [
        history_key(user),
        channel(user),
        payload,
        max_len,
        max_age_ms,
        token,
        "1" if retry else "0",
    ]
