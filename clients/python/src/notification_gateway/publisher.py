"""The synchronous publisher: publisher-lib's ``Publisher`` for Django views, signals and
scripts."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar

import redis
import redis.exceptions as rx

from . import _core, _schedule
from ._core import NotificationLike, Receipt
from ._schedule import Due
from ._wire import PUBLISH_SCRIPT, PUBLISH_SCRIPT_SHA, new_token, script_args, user_id
from .errors import InvalidInput
from .options import PublisherOptions

T = TypeVar("T")


class Publisher:
    """Sends notifications to users through Redis, with the publish script publisher-lib
    runs: each notification is stored in its user's history and published atomically.

    ``url`` is ``redis://[user:password@]host[:port][/db]``, or ``rediss://...`` for TLS,
    verified against the system's trusted roots or, with ``tls_ca_file``, against that PEM
    CA certificate (a private CA); the server's name or IP must match its certificate.

    Thread-safe; build one per process and share it. Does not touch the network until the
    first call (use :meth:`ping` at start-up to fail fast).

    Example::

        publisher = Publisher("redis://localhost:6379/0")
        publisher.publish(42, BookingExpired(booking_id=1881, slot="A-12"))
        # Receipt(id='1717171717000-0', receivers=1)
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        options: Optional[PublisherOptions] = None,
        *,
        tls_ca_file: Optional[str] = None,
    ) -> None:
        self.options = options or PublisherOptions()
        kwargs = _core.connection_kwargs(url, self.options, tls_ca_file)
        try:
            pool = redis.BlockingConnectionPool.from_url(url, **kwargs)
        except (ValueError, TypeError) as error:
            raise InvalidInput(
                f"invalid Redis URL ({error}): use redis://[user:password@]host[:port][/db], "
                "or rediss://... for TLS"
            ) from None
        self._client = redis.Redis(connection_pool=pool)

    @classmethod
    def from_client(
        cls, client: "redis.Redis", options: Optional[PublisherOptions] = None
    ) -> "Publisher":
        """A publisher over a redis-py client you built (TLS with a private CA, a shared
        pool). Build it with ``retry=Retry(NoBackoff(), 0)``: this class retries connection
        errors itself, with the retry token; redis-py's own retries would not carry it.
        ``options.pool_size`` is then ignored."""
        publisher = cls.__new__(cls)
        publisher.options = options or PublisherOptions()
        publisher._client = client
        return publisher

    def close(self) -> None:
        """Closes the pooled connections."""
        self._client.close()
        self._client.connection_pool.disconnect()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never the URL: it may hold a password.
        return f"Publisher(options={self.options!r})"

    def ping(self) -> None:
        """Checks that Redis answers (start-up and health checks)."""
        self._execute(lambda _retry: self._client.ping())

    def publish(self, user: Any, notification: NotificationLike) -> Receipt:
        """Sends ``notification`` (a :class:`Notification` or a typed event) to every open
        tab of ``user`` (an id or a model instance) and returns its history id and how many
        gateway nodes received it live (0: no tab open, not an error)."""
        target = user_id(user)
        payload = _core.serialise(notification, self.options)
        return self._publish_one(target, payload)

    def publish_many(
        self, users: Iterable[Any], notification: NotificationLike
    ) -> Dict[int, Receipt]:
        """Sends one notification to several users in one round trip (a pipeline), each
        with its own id and retry token. Duplicate users are sent once. Returns each user's
        receipt. The call shares one timeout: split audiences above a few thousand."""
        payload = _core.serialise(notification, self.options)
        targets = _core.distinct_users(users)
        receipts = self._publish_batch([(user, payload) for user in targets])
        return dict(zip(targets, receipts))

    def publish_batch(self, batch: Iterable[Tuple[Any, NotificationLike]]) -> List[Receipt]:
        """Sends many notifications, each to its own user, in one round trip. Every one is
        validated before anything is sent; returns one receipt per notification, in order."""
        return self._publish_batch(_core.prepare_batch(batch, self.options))

    def schedule(self, user: Any, notification: NotificationLike, at: Due, key: str) -> None:
        """Schedules ``notification`` for ``user`` at ``at`` (an aware datetime or
        milliseconds since the epoch) under your ``key`` (e.g. ``"booking:1881:expiring"``).
        A gateway node publishes it when due, exactly once, with ``timestamp`` = ``at``.
        Scheduling a key again replaces its item (reschedule). A time in the past fires at
        once. See docs/SCHEDULING.md."""
        name, ms, value = _schedule.prepare_schedule(user, notification, at, key, self.options)

        def attempt(_retry: bool) -> Any:
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(_schedule.DUE_KEY, {name: ms})
            pipe.hset(_schedule.ITEMS_KEY, name, value)
            return pipe.execute()

        self._execute(attempt)

    def cancel(self, key: str) -> bool:
        """Removes the item scheduled under ``key``; whether there was one (False once it
        fired)."""
        name = _schedule.schedule_key(key)

        def attempt(_retry: bool) -> Any:
            pipe = self._client.pipeline(transaction=True)
            pipe.zrem(_schedule.DUE_KEY, name)
            pipe.hdel(_schedule.ITEMS_KEY, name)
            return pipe.execute()

        return bool(self._execute(attempt)[0])

    def presence(self, users: Iterable[Any]) -> Dict[int, int]:
        """Sockets each user has open across all live gateway nodes (at most 1,000 ids). A
        node that died stops counting within ``presence.ttl_ms`` (2 s by default)."""
        return {user: total for user, (total, _) in self._presence(users, False).items()}

    def presence_nodes(self, users: Iterable[Any]) -> Dict[int, Dict[str, int]]:
        """Like :meth:`presence`, per gateway node: ``{user: {node id: sockets}}``."""
        return {user: nodes for user, (_, nodes) in self._presence(users, True).items()}

    def _presence(self, users: Iterable[Any], nodes: bool) -> Dict[int, Tuple[int, Dict[str, int]]]:
        ids, args = _schedule.presence_args(users, nodes)
        if not ids:
            return {}

        def attempt(_retry: bool) -> Any:
            try:
                return self._client.evalsha(_schedule.PRESENCE_SCRIPT_SHA, 1, *args)
            except rx.NoScriptError:
                self._client.script_load(_schedule.PRESENCE_SCRIPT)
                return self._client.evalsha(_schedule.PRESENCE_SCRIPT_SHA, 1, *args)

        return _schedule.parse_presence(ids, self._execute(attempt))

    def _publish_one(self, user: int, payload: bytes) -> Receipt:
        token = new_token()

        def attempt(retry: bool) -> Any:
            args = script_args(user, payload, *self._history(), token, retry)
            try:
                return self._client.evalsha(PUBLISH_SCRIPT_SHA, 1, *args)
            except rx.NoScriptError:
                # A restarted Redis has forgotten the script; nothing ran: load and resend.
                self._client.script_load(PUBLISH_SCRIPT)
                return self._client.evalsha(PUBLISH_SCRIPT_SHA, 1, *args)

        return _core.receipt(self._execute(attempt))

    def _publish_batch(self, batch: List[Tuple[int, bytes]]) -> List[Receipt]:
        if not batch:
            return []
        if len(batch) == 1:
            return [self._publish_one(*batch[0])]
        tokens = [new_token() for _ in batch]

        def attempt(retry: bool) -> List[Any]:
            pipe = self._client.pipeline(transaction=False)
            # SCRIPT LOAD first on the same connection, so no invocation of the batch can meet
            # NOSCRIPT while others ran (resending would then deliver those twice).
            pipe.script_load(PUBLISH_SCRIPT)
            for (user, payload), token in zip(batch, tokens):
                pipe.evalsha(
                    PUBLISH_SCRIPT_SHA,
                    1,
                    *script_args(user, payload, *self._history(), token, retry),
                )
            return pipe.execute()[1:]

        return [_core.receipt(reply) for reply in self._execute(attempt)]

    def _history(self) -> Tuple[int, int]:
        return self.options.history_max_len, self.options.history_max_age_ms

    def _execute(self, attempt: Callable[[bool], T]) -> T:
        """Runs ``attempt(retry)``, retrying connection errors with ``retry`` true while the
        deadline allows."""
        deadline = time.monotonic() + self.options.timeout
        retries_left = self.options.retries
        backoff = _core.RETRY_BACKOFF
        retry = False
        while True:
            try:
                return attempt(retry)
            except Exception as raw:  # noqa: BLE001 - every failure leaves as a GatewayError
                error = _core.map_error(raw, self.options.timeout)
                if (
                    not _core.is_retryable(error)
                    or retries_left == 0
                    or time.monotonic() + backoff >= deadline
                ):
                    raise error from raw
            retries_left -= 1
            time.sleep(backoff)
            backoff *= 2
            retry = True
