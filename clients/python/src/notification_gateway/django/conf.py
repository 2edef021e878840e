"""The ``NOTIFICATION_GATEWAY`` settings dict, checked once, and the process's publisher."""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from ..errors import InvalidInput
from ..options import PublisherOptions
from ..publisher import Publisher

#: Every key of ``NOTIFICATION_GATEWAY`` with its default (the README's table).
DEFAULTS: Dict[str, Any] = {
    "REDIS_URL": "redis://localhost:6379/0",
    "TLS_CA_FILE": None,
    "TIMEOUT": 2.0,
    "RETRIES": 2,
    "POOL_SIZE": 8,
    "MAX_PAYLOAD_BYTES": 64 * 1024,
    "HISTORY_MAX_LEN": 1000,
    "HISTORY_MAX_AGE": 24 * 3600,
    "ON_COMMIT": True,
    "ERROR_POLICY": "log",
    "MESSAGE_MAPPER": "notification_gateway.django.layer.default_message_mapper",
}

ERROR_POLICIES = ("log", "raise")

_lock = threading.Lock()
_publisher: Optional[Publisher] = None


def gateway_settings() -> Dict[str, Any]:
    """``NOTIFICATION_GATEWAY`` over the defaults; raises ImproperlyConfigured naming a bad
    key."""
    given = getattr(settings, "NOTIFICATION_GATEWAY", {})
    if not isinstance(given, dict):
        raise ImproperlyConfigured('NOTIFICATION_GATEWAY must be a dict, e.g. {"REDIS_URL": ...}')
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(
            f"NOTIFICATION_GATEWAY has unknown key(s) {', '.join(unknown)}; known keys: "
            f"{', '.join(DEFAULTS)}"
        )
    merged = {**DEFAULTS, **given}
    if merged["ERROR_POLICY"] not in ERROR_POLICIES:
        raise ImproperlyConfigured(
            "NOTIFICATION_GATEWAY['ERROR_POLICY'] must be 'log' or 'raise', "
            f"got {merged['ERROR_POLICY']!r}"
        )
    return merged


def publisher_options(config: Dict[str, Any]) -> PublisherOptions:
    try:
        return PublisherOptions(
            pool_size=config["POOL_SIZE"],
            timeout=config["TIMEOUT"],
            max_payload_bytes=config["MAX_PAYLOAD_BYTES"],
            retries=config["RETRIES"],
            history_max_len=config["HISTORY_MAX_LEN"],
            history_max_age=config["HISTORY_MAX_AGE"],
        )
    except InvalidInput as error:
        raise ImproperlyConfigured(f"NOTIFICATION_GATEWAY: {error}") from None


def get_publisher() -> Publisher:
    """The process's publisher, built from the settings on first use."""
    global _publisher
    with _lock:
        if _publisher is None:
            config = gateway_settings()
            try:
                _publisher = Publisher(
                    config["REDIS_URL"],
                    publisher_options(config),
                    tls_ca_file=config["TLS_CA_FILE"],
                )
            except InvalidInput as error:
                raise ImproperlyConfigured(
                    f"NOTIFICATION_GATEWAY REDIS_URL/TLS_CA_FILE: {error}"
                ) from None
        return _publisher


def _reset(setting: str, **_kwargs: Any) -> None:
    # override_settings in tests: the next call builds a publisher from the new settings.
    global _publisher
    if setting == "NOTIFICATION_GATEWAY":
        with _lock:
            old, _publisher = _publisher, None
        if old is not None:
            old.close()


setting_changed.connect(_reset)
