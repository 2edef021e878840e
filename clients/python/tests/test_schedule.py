"""Scheduled notifications and presence from Python, against a real gateway: the same Redis
layout as publisher-lib (docs/SCHEDULING.md), fired by the gateway exactly once."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Callable, Dict

import pytest
from conftest import GatewayProcess

from notification_gateway import (
    AsyncPublisher,
    BookingExpired,
    InvalidInput,
    Notification,
    Publisher,
)


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 15
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_scheduled_rescheduled_and_cancelled_items(stack: GatewayProcess) -> None:
    browser = stack.socket(301)
    with Publisher(stack.redis.url) as publisher:
        base = now_ms()
        publisher.schedule(
            301, Notification("info", "cancelled"), base + 300, "booking:301:expiring"
        )
        publisher.schedule(
            301, BookingExpired(booking_id=301, slot="B-07"), base + 300, "booking:301:expired"
        )
        # Renewed: the same key, a later time (an aware datetime works as well as ms).
        renewed = datetime.datetime.fromtimestamp((base + 700) / 1000, datetime.timezone.utc)
        publisher.schedule(
            301, BookingExpired(booking_id=301, slot="B-07"), renewed, "booking:301:expired"
        )
        publisher.schedule(301, Notification("info", "marker"), base + 1200, "marker:301")
        assert publisher.cancel("booking:301:expiring") is True
        assert publisher.cancel("booking:301:expiring") is False

        frame = browser.next_json()
        assert frame["event"] == "booking.expired"
        assert frame["timestamp"] == base + 700
        assert int(frame["id"].split("-")[0]) >= base + 700, "not early"
        # Nothing in between: the cancelled item and the old time never fired.
        assert browser.next_json()["message"] == "marker"
        assert len(stack.redis.history(301)) == 2, "each item stored once"


def test_presence_counts_sockets(stack: GatewayProcess) -> None:
    with Publisher(stack.redis.url) as publisher:
        assert publisher.presence([302, 303]) == {302: 0, 303: 0}
        one = stack.socket(302)
        two = stack.socket(302)
        wait_for(lambda: publisher.presence([302, 303]) == {302: 2, 303: 0}, "2 sockets counted")
        nodes: Dict[int, Dict[str, int]] = publisher.presence_nodes([302])
        assert list(nodes[302].values()) == [2], nodes
        one.close()
        two.close()
        wait_for(lambda: publisher.presence([302]) == {302: 0}, "closed sockets uncounted")


def test_the_async_publisher_schedules_cancels_and_asks(stack: GatewayProcess) -> None:
    browser = stack.socket(304)

    async def run() -> None:
        async with AsyncPublisher(stack.redis.url) as publisher:
            due = now_ms() + 200
            await publisher.schedule(304, Notification("info", "gone"), due, "a:304")
            await publisher.schedule(304, Notification("success", "kept"), due, "b:304")
            assert await publisher.cancel("a:304")
            deadline = time.monotonic() + 15
            while (await publisher.presence([304]))[304] != 1:  # counted within milliseconds
                assert time.monotonic() < deadline, "the socket was never counted"
                await asyncio.sleep(0.02)
            assert len((await publisher.presence_nodes([304]))[304]) == 1

    asyncio.run(run())
    frame = browser.next_json()
    assert frame["message"] == "kept"


def test_bad_input_is_refused_before_redis() -> None:
    publisher = Publisher("redis://127.0.0.1:1")
    later = now_ms() + 60_000
    note = Notification("info", "x")
    for key, at in [
        ("has space", later),
        ("", later),
        ("k" * 201, later),
        ("a/b", later),
        ("ok", 1_765_000_000),  # seconds, not milliseconds
        ("ok", now_ms() + 400 * 24 * 3600 * 1000),
        ("ok", datetime.datetime(2030, 1, 1)),  # naive
    ]:
        with pytest.raises(InvalidInput):
            publisher.schedule(1, note, at, key)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        publisher.schedule(0, note, later, "ok")
    with pytest.raises(InvalidInput):
        publisher.cancel("bad key")
    with pytest.raises(InvalidInput):
        publisher.presence(range(1, 1002))
