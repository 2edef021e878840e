"""Failures: a publish whose answer was lost is retried without a duplicate, Redis down or
hanging is a typed error within the timeout, bad input is refused before anything is sent."""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any, Callable

import pytest
from conftest import CuttingProxy, GatewayProcess, RedisProcess, SilentServer

from notification_gateway import (
    AsyncPublisher,
    BookingExpired,
    GatewayError,
    InvalidInput,
    Notification,
    PayloadTooLarge,
    Publisher,
    PublisherOptions,
    PublishTimeout,
    RedisUnavailable,
)


def sync_publish(url: str) -> Callable[[int, Notification], Any]:
    publisher = Publisher(url)
    return publisher.publish


def async_publish(url: str) -> Callable[[int, Notification], Any]:
    def publish(user: int, notification: Notification) -> Any:
        async def main() -> Any:
            async with AsyncPublisher(url) as publisher:
                return await publisher.publish(user, notification)

        return asyncio.run(main())

    return publish


@pytest.mark.parametrize("make_publish", [sync_publish, async_publish], ids=["sync", "asyncio"])
def test_a_publish_whose_answer_was_lost_is_retried_without_a_duplicate(
    stack: GatewayProcess, make_publish: Callable[[str], Callable[[int, Notification], Any]]
) -> None:
    user = 201 if make_publish is sync_publish else 202
    browser = stack.socket(user)
    proxy = CuttingProxy(stack.redis.port)
    try:
        publish = make_publish(proxy.url)
        publish(user, Notification("info", "first"))  # loads the script through the proxy
        proxy.arm()
        receipt = publish(user, Notification("info", "second"))
    finally:
        proxy.close()

    # The first attempt ran (Redis answered [id, 1]) and its answer was dropped with the
    # connection; the retry found it by its token and returned the same id.
    assert proxy.cut.is_set()
    assert proxy.dropped_reply is not None and proxy.dropped_reply.startswith(b"*2\r\n"), (
        proxy.dropped_reply
    )
    assert receipt.id.encode() in proxy.dropped_reply
    history = stack.redis.history(user)
    assert [entry_id.decode() for entry_id, _ in history][1:] == [receipt.id]
    assert browser.next_json()["message"] == "first"
    assert browser.next_json() == {**browser_frame(history[1]), "id": receipt.id}
    with Publisher(stack.redis.url) as direct:
        direct.publish(user, Notification("info", "sentinel"))
    assert browser.next_json()["message"] == "sentinel", "the retried notification arrived twice"
    browser.close()


def browser_frame(entry: Any) -> Any:
    import json

    return json.loads(entry[1][b"p"])


def test_redis_down_is_a_typed_error_within_the_timeout(redis_server: RedisProcess) -> None:
    options = PublisherOptions(timeout=1.0)
    publisher = Publisher(redis_server.url, options)
    publisher.publish(301, Notification("info", "while up"))
    redis_server.kill()

    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as raised:
        publisher.publish(301, BookingExpired(booking_id=1, slot="A-1"))
    assert time.monotonic() - started < 2 * options.timeout
    assert isinstance(raised.value, GatewayError) and isinstance(raised.value, ConnectionError)
    assert "check that Redis is running" in str(raised.value)

    async def main() -> None:
        async with AsyncPublisher(redis_server.url, options) as publisher:
            await publisher.publish(301, Notification("info", "x"))

    with pytest.raises(RedisUnavailable):
        asyncio.run(main())

    # Back up on the same port: the same publisher works again.
    redis_server.start()
    assert publisher.publish(301, Notification("info", "after restart")).receivers == 0
    assert [e[1][b"p"].count(b"after restart") for e in redis_server.history(301)] == [1]
    publisher.close()


def test_a_redis_that_never_answers_is_a_timeout() -> None:
    silent = SilentServer()
    options = PublisherOptions(timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(PublishTimeout):
            Publisher(silent.url, options).publish(1, Notification("info", "x"))
        assert time.monotonic() - started < 3 * options.timeout

        async def main() -> None:
            await AsyncPublisher(silent.url, options).publish(1, Notification("info", "x"))

        started = time.monotonic()
        with pytest.raises(PublishTimeout):
            asyncio.run(main())
        assert time.monotonic() - started < 3 * options.timeout
    finally:
        silent.close()


def test_waiting_for_a_pooled_connection_is_bounded_by_the_timeout(
    redis_server: RedisProcess,
) -> None:
    options = PublisherOptions(timeout=0.3, pool_size=1)
    with Publisher(redis_server.url, options) as publisher:
        pool = publisher._client.connection_pool
        with warnings.catch_warnings():
            # redis-py before 5.3 requires the command name, later ones deprecate it.
            warnings.simplefilter("ignore", DeprecationWarning)
            held = pool.get_connection("PING")  # the pool's only connection, busy elsewhere
        started = time.monotonic()
        with pytest.raises(PublishTimeout):
            publisher.publish(1, Notification("info", "x"))
        assert time.monotonic() - started < 3 * options.timeout
        pool.release(held)
        assert publisher.publish(1, Notification("info", "x")).receivers == 0


@pytest.mark.parametrize(
    "user, notification, error, hint",
    [
        (0, Notification("info", "x"), InvalidInput, "between 1 and"),
        (2**63, Notification("info", "x"), InvalidInput, "between 1 and"),
        ("042", Notification("info", "x"), InvalidInput, "leading zeros"),
        (True, Notification("info", "x"), InvalidInput, "integer"),
        (7, Notification("info", "  "), InvalidInput, "empty"),
        (7, Notification("loud", "x"), InvalidInput, "success, info, warning, error"),
        (7, Notification("info", "x", data={"when": object()}), InvalidInput, "not JSON"),
        (7, Notification("info", "x", data={"n": float("nan")}), InvalidInput, "not JSON"),
        (7, Notification("info", "x" * 70_000), PayloadTooLarge, "byte limit"),
        (7, "just text", InvalidInput, "Notification or a typed Event"),
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(
    redis_server: RedisProcess, user: Any, notification: Any, error: type, hint: str
) -> None:
    with Publisher(redis_server.url) as publisher:
        with pytest.raises(error, match=hint):
            publisher.publish(user, notification)
        with pytest.raises(error, match=hint):
            publisher.publish_batch([(8, Notification("info", "fine")), (user, notification)])
    assert redis_server.client().keys("history:*") == []


def test_a_batch_item_that_is_not_a_pair_is_invalid_input(redis_server: RedisProcess) -> None:
    with Publisher(redis_server.url) as publisher:
        with pytest.raises(InvalidInput, match=r"\(user, notification\) pairs"):
            publisher.publish_batch([(1, Notification("info", "x")), Notification("info", "y")])  # type: ignore[list-item]
    assert redis_server.client().keys("history:*") == []


def test_bad_urls_and_options_are_invalid_input() -> None:
    for url in ["http://localhost", "not a url"]:
        with pytest.raises(InvalidInput, match="invalid Redis URL"):
            Publisher(url)
    for options in [
        dict(timeout=0),
        dict(pool_size=0),
        dict(retries=-1),
        dict(history_max_len=0),
        dict(history_max_age=-1),
        dict(timeout="2"),
    ]:
        with pytest.raises(InvalidInput):
            PublisherOptions(**options)  # type: ignore[arg-type]
    assert "hunter2" not in repr(Publisher("redis://:hunter2@localhost:6379"))
