"""What a browser receives from the Python publishers: the same frames as a Rust publish, with
the ids the publishers return, only on the addressed user's sockets."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import GatewayProcess, RedisProcess, cargo_binary, make_test_ca

from notification_gateway import (
    AsyncPublisher,
    BookingExpiringSoon,
    CarWashCompleted,
    InvalidInput,
    Notification,
    Publisher,
    RedisUnavailable,
)

ID = re.compile(r'^\{"id":"(\d+-\d+)",')


def without_id_and_timestamp(frame: str) -> str:
    return re.sub(r',"timestamp":\d+', "", ID.sub("{", frame))


def test_a_python_publish_is_the_same_frame_as_a_rust_publish(stack: GatewayProcess) -> None:
    browser = stack.socket(101)
    rust = subprocess.run(
        [
            cargo_binary("notify-e2e"),
            "--redis",
            stack.redis.url,
            "--user",
            "101",
            "--event",
            "booking.expiring_soon",
            "--data",
            json.dumps({"booking_id": 1881, "slot": "A-12", "minutes_left": 5}),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert rust.returncode == 0, rust.stderr
    rust_frame = browser.next_text()

    with Publisher(stack.redis.url) as publisher:
        receipt = publisher.publish(
            101, BookingExpiringSoon(booking_id=1881, slot="A-12", minutes_left=5)
        )
    python_frame = browser.next_text()

    assert receipt.receivers == 1
    match = ID.match(python_frame)
    assert match and match.group(1) == receipt.id, python_frame
    rust_id = ID.match(rust_frame)
    assert rust_id, rust_frame
    # Ids increase per user, whichever language published.
    assert tuple(map(int, rust_id.group(1).split("-"))) < tuple(map(int, receipt.id.split("-")))
    assert without_id_and_timestamp(python_frame) == without_id_and_timestamp(rust_frame)
    assert '"timestamp":' in python_frame
    # And it is what history keeps for a reconnecting tab.
    [(entry_id, fields)] = stack.redis.history(101)[1:]
    assert entry_id.decode() == receipt.id
    browser.close()


def test_free_form_notifications_keep_their_fields_in_the_documented_order(
    stack: GatewayProcess,
) -> None:
    browser = stack.socket(102)
    with Publisher(stack.redis.url) as publisher:
        publisher.publish(
            102, Notification("info", "Parking B closes at 22:00", timestamp=1717171717000)
        )
        publisher.publish(
            102,
            Notification(
                "error",
                "Payment failed",
                event="payment.failed",
                data={"note": "déclinée", "booking_id": 7},
            ),
        )
    first = browser.next_text()
    assert (
        ID.sub("{", first)
        == '{"type":"info","message":"Parking B closes at 22:00","timestamp":1717171717000}'
    )
    second = json.loads(browser.next_text())
    assert list(second) == ["id", "type", "message", "event", "data", "timestamp"]
    assert second["data"] == {"booking_id": 7, "note": "déclinée"}
    browser.close()


def test_publish_many_reaches_each_user_once_and_nobody_else(stack: GatewayProcess) -> None:
    first, second, bystander = stack.socket(103), stack.socket(104), stack.socket(105)
    event = CarWashCompleted(booking_id=9, service="Premium")
    with Publisher(stack.redis.url) as publisher:
        receipts = publisher.publish_many([103, 104, 103], event)
        assert set(receipts) == {103, 104}
        for user, browser in ((103, first), (104, second)):
            frame = browser.next_json()
            assert frame["id"] == receipts[user].id
            assert frame["message"] == "Your car wash (Premium) is complete"
            assert receipts[user].receivers == 1
        # The bystander's next frame is its own, not one of the above.
        publisher.publish(105, Notification("info", "for 105 only"))
    assert bystander.next_json()["message"] == "for 105 only"
    for browser in (first, second, bystander):
        browser.close()


def test_publish_batch_sends_each_notification_to_its_own_user_in_order(
    stack: GatewayProcess,
) -> None:
    browser = stack.socket(106)
    with Publisher(stack.redis.url) as publisher:
        receipts = publisher.publish_batch(
            [(106, Notification("info", f"number {n}")) for n in range(5)]
            + [(107, Notification("info", "elsewhere"))]
        )
    assert [r.receivers for r in receipts] == [1, 1, 1, 1, 1, 0]
    for n in range(5):
        frame = browser.next_json()
        assert (frame["message"], frame["id"]) == (f"number {n}", receipts[n].id)
    assert [e[0].decode() for e in stack.redis.history(107)] == [receipts[5].id]
    browser.close()


def test_the_async_publisher_has_the_same_methods_and_results(stack: GatewayProcess) -> None:
    browser = stack.socket(108)

    async def main() -> None:
        async with AsyncPublisher(stack.redis.url) as publisher:
            await publisher.ping()
            one = await publisher.publish(108, Notification("success", "async one"))
            many = await publisher.publish_many([108], Notification("success", "async many"))
            batch = await publisher.publish_batch([(108, Notification("success", "async batch"))])
        for receipt, text in (
            (one, "async one"),
            (many[108], "async many"),
            (batch[0], "async batch"),
        ):
            frame = browser.next_json()
            assert (frame["id"], frame["message"], receipt.receivers) == (receipt.id, text, 1)

    asyncio.run(main())
    browser.close()


def test_a_redis_that_forgot_the_script_gets_it_again(stack: GatewayProcess) -> None:
    browser = stack.socket(109)
    with Publisher(stack.redis.url) as publisher:
        publisher.publish(109, Notification("info", "before"))
        stack.redis.client().script_flush()
        assert publisher.publish(109, Notification("info", "after")).receivers == 1
        stack.redis.client().script_flush()
        # A batch loads the script on its own connection before running it.
        assert [
            r.receivers for r in publisher.publish_batch([(109, Notification("info", "batch"))] * 2)
        ] == [1, 1]
    assert [browser.next_json()["message"] for _ in range(4)] == [
        "before",
        "after",
        "batch",
        "batch",
    ]
    browser.close()


def test_a_rediss_url_with_a_private_ca(tmp_path: Path) -> None:
    ca = make_test_ca(tmp_path)
    server = RedisProcess(tls=tmp_path)
    try:
        with Publisher(server.url, tls_ca_file=str(ca)) as publisher:
            receipt = publisher.publish(110, Notification("info", "over TLS"))
        assert [e[0].decode() for e in server.history(110)] == [receipt.id]

        async def main() -> None:
            async with AsyncPublisher(server.url, tls_ca_file=str(ca)) as publisher:
                await publisher.publish(110, Notification("info", "over TLS, asyncio"))

        asyncio.run(main())
        assert len(server.history(110)) == 2
        # Without the CA the server's certificate is not trusted.
        with Publisher(server.url) as publisher:
            with pytest.raises(RedisUnavailable, match="certificate"):
                publisher.publish(110, Notification("info", "x"))
        (tmp_path / "empty.pem").write_text("no certificate here\n")
        for url, ca_file, hint in [
            (server.url, str(tmp_path / "empty.pem"), "holds no PEM certificate"),
            (server.url, str(tmp_path / "missing.pem"), "cannot read"),
            (server.url.replace("rediss://", "redis://"), str(ca), "rediss://"),
        ]:
            with pytest.raises(InvalidInput, match=hint):
                Publisher(url, tls_ca_file=ca_file)
    finally:
        server.kill()
