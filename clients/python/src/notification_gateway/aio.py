"""The asyncio publisher: the same methods as :class:`Publisher`, as coroutines."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rx

from . import _core, _schedule
from ._core import NotificationLike, Receipt
from ._schedule import Due
from ._wire import PUBLISH_SCRIPT, PUBLISH_SCRIPT_SHA, new_token, script_args, user_id
from .errors import GatewayError, InvalidInput
from .options import PublisherOptions

T = TypeVar("T")


class AsyncPublisher:
    """:class:`notification_gateway.Publisher` for asyncio code. Every call, retries
    included, completes within ``options.timeout``. Use it from one event loop (redis-py's
    asyncio connections belong to the loop that opened them)."""

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
            pool = aioredis.BlockingConnectionPool.from_url(url, **kwargs)
        except (ValueError, TypeError) as error:
            raise InvalidInput(
                f"invalid Redis URL ({error}): use redis://[user:password@]host[:port][/db], "
                "or rediss://... for TLS"
            ) from None
        self._client = aioredis.Redis(connection_pool=pool)

    @classmethod
    def from_client(
        cls, client: "aioredis.Redis", options: Optional[PublisherOptions] = None
    ) -> "AsyncPublisher":
        """Over a ``redis.asyncio`` client you built; see ``Publisher.from_client``."""
        publisher = cls.__new__(cls)
        publisher.options = options or PublisherOptions()
        publisher._client = client
        return publisher

    async def close(self) -> None:
        """Closes the pooled connections."""
        await self._client.aclose()
        await self._client.connection_pool.disconnect()

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncPublisher(options={self.options!r})"

    async def ping(self) -> None:
        await self._execute(lambda _retry: self._client.ping())

    async def publish(self, user: Any, notification: NotificationLike) -> Receipt:
        target = user_id(user)
        payload = _core.serialise(notification, self.options)
        return await self._publish_one(target, payload)

    async def publish_many(
        self, users: Iterable[Any], notification: NotificationLike
    ) -> Dict[int, Receipt]:
        payload = _core.serialise(notification, self.options)
        targets = _core.distinct_users(users)
        receipts = await self._publish_batch([(user, payload) for user in targets])
        return dict(zip(targets, receipts))

    async def publish_batch(self, batch: Iterable[Tuple[Any, NotificationLike]]) -> List[Receipt]:
        return await self._publish_batch(_core.prepare_batch(batch, self.options))

    async def schedule(self, user: Any, notification: NotificationLike, at: Due, key: str) -> None:
        """See :meth:`Publisher.schedule`."""
        name, ms, value = _schedule.prepare_schedule(user, notification, at, key, self.options)

        async def attempt(_retry: bool) -> Any:
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(_schedule.DUE_KEY, {name: ms})
            pipe.hset(_schedule.ITEMS_KEY, name, value)
            return await pipe.execute()

        await self._execute(attempt)

    async def cancel(self, key: str) -> bool:
        """See :meth:`Publisher.cancel`."""
        name = _schedule.schedule_key(key)

        async def attempt(_retry: bool) -> Any:
            pipe = self._client.pipeline(transaction=True)
            pipe.zrem(_schedule.DUE_KEY, name)
            pipe.hdel(_schedule.ITEMS_KEY, name)
            return await pipe.execute()

        return bool((await self._execute(attempt))[0])

    async def presence(self, users: Iterable[Any]) -> Dict[int, int]:
        """See :meth:`Publisher.presence`."""
        answer = await self._presence(users, False)
        return {user: total for user, (total, _) in answer.items()}

    async def presence_nodes(self, users: Iterable[Any]) -> Dict[int, Dict[str, int]]:
        """See :meth:`Publisher.presence_nodes`."""
        answer = await self._presence(users, True)
        return {user: nodes for user, (_, nodes) in answer.items()}

    async def _presence(
        self, users: Iterable[Any], nodes: bool
    ) -> Dict[int, Tuple[int, Dict[str, int]]]:
        ids, args = _schedule.presence_args(users, nodes)
        if not ids:
            return {}

        async def attempt(_retry: bool) -> Any:
            try:
                return await self._client.evalsha(_schedule.PRESENCE_SCRIPT_SHA, 1, *args)
            except rx.NoScriptError:
                await self._client.script_load(_schedule.PRESENCE_SCRIPT)
                return await self._client.evalsha(_schedule.PRESENCE_SCRIPT_SHA, 1, *args)

        return _schedule.parse_presence(ids, await self._execute(attempt))

    async def _publish_one(self, user: int, payload: bytes) -> Receipt:
        token = new_token()

        async def attempt(retry: bool) -> Any:
            args = script_args(user, payload, *self._history(), token, retry)
            try:
                return await self._client.evalsha(PUBLISH_SCRIPT_SHA, 1, *args)
            except rx.NoScriptError:
                await self._client.script_load(PUBLISH_SCRIPT)
                return await self._client.evalsha(PUBLISH_SCRIPT_SHA, 1, *args)

        return _core.receipt(await self._execute(attempt))

    async def _publish_batch(self, batch: List[Tuple[int, bytes]]) -> List[Receipt]:
        if not batch:
            return []
        if len(batch) == 1:
            return [await self._publish_one(*batch[0])]
        tokens = [new_token() for _ in batch]

        async def attempt(retry: bool) -> List[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.script_load(PUBLISH_SCRIPT)
            for (user, payload), token in zip(batch, tokens):
                pipe.evalsha(
                    PUBLISH_SCRIPT_SHA,
                    1,
                    *script_args(user, payload, *self._history(), token, retry),
                )
            replies = await pipe.execute()
            return list(replies[1:])

        return [_core.receipt(reply) for reply in await self._execute(attempt)]

    def _history(self) -> Tuple[int, int]:
        return self.options.history_max_len, self.options.history_max_age_ms

    async def _execute(self, attempt: Callable[[bool], Awaitable[T]]) -> T:
        try:
            return await asyncio.wait_for(self._with_retries(attempt), self.options.timeout)
        except GatewayError:
            raise
        except asyncio.TimeoutError as raw:
            raise _core.map_error(TimeoutError(), self.options.timeout) from raw

    async def _with_retries(self, attempt: Callable[[bool], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.timeout
        retries_left = self.options.retries
        backoff = _core.RETRY_BACKOFF
        retry = False
        while True:
            try:
                return await attempt(retry)
            except Exception as raw:  # noqa: BLE001 - every failure leaves as a GatewayError
                error = _core.map_error(raw, self.options.timeout)
                if (
                    not _core.is_retryable(error)
                    or retries_left == 0
                    or loop.time() + backoff >= deadline
                ):
                    raise error from raw
            retries_left -= 1
            await asyncio.sleep(backoff)
            backoff *= 2
            retry = True
