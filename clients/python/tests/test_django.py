"""A real Django project (tests/django_project: settings, a model, post_save signals) on
sqlite, publishing to a real gateway: on commit only, once; unchanged group_send code through
the channel layer; clear errors for what the layer cannot do; the error policy."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import GatewayProcess, RedisProcess

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")


@pytest.fixture(scope="module")
def django_stack(stack: GatewayProcess) -> Iterator[GatewayProcess]:
    """Django set up against the module's Redis, with its tables created."""
    sys.path.insert(0, str(Path(__file__).parent / "django_project"))
    db = tempfile.NamedTemporaryFile(prefix="ng-django-", suffix=".sqlite3", delete=False)
    os.environ["TEST_SQLITE_PATH"] = db.name
    os.environ["TEST_REDIS_URL"] = stack.redis.url
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    yield stack
    os.unlink(db.name)


def user(username: str) -> Any:
    from django.contrib.auth.models import User

    return User.objects.create(username=username)


def sentinel(stack: GatewayProcess, user_id: int) -> None:
    """A last notification: whatever a socket received before it was all it would get."""
    from notification_gateway import Notification, Publisher

    with Publisher(stack.redis.url) as publisher:
        publisher.publish(user_id, Notification("info", "sentinel"))


def test_a_committed_save_notifies_once_after_the_commit(django_stack: GatewayProcess) -> None:
    from django.db import transaction
    from parking.models import Booking

    customer = user("dana")
    booking = Booking.objects.create(customer=customer, lot_owner_id=9001, lot="Central")
    browser = django_stack.socket(customer.pk)
    with transaction.atomic():
        booking.status, booking.wash_service = "washed", "Premium"
        booking.save()
        assert django_stack.redis.history(customer.pk) == [], "published before the commit"
    frame = browser.next_json()
    assert (frame["type"], frame["message"], frame["event"], frame["data"]) == (
        "success",
        "Your car wash (Premium) is complete",
        "carwash.completed",
        {"booking_id": booking.pk, "service": "Premium"},
    )
    sentinel(django_stack, customer.pk)
    assert browser.next_json()["message"] == "sentinel", "notified twice"
    assert len(django_stack.redis.history(customer.pk)) == 2
    browser.close()


def test_a_rolled_back_save_never_notifies(django_stack: GatewayProcess) -> None:
    from django.db import transaction
    from parking.models import Booking

    customer = user("sam")
    booking = Booking.objects.create(customer=customer, lot_owner_id=9002, lot="Central")
    browser = django_stack.socket(customer.pk)
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            booking.status, booking.wash_service = "washed", "Basic"
            booking.save()
            raise RuntimeError("payment failed, roll back")
    sentinel(django_stack, customer.pk)
    assert browser.next_json()["message"] == "sentinel"
    assert len(django_stack.redis.history(customer.pk)) == 1
    browser.close()


def test_unchanged_group_send_code_reaches_the_socket_through_the_channel_layer(
    django_stack: GatewayProcess,
) -> None:
    from parking.models import Booking

    owner_id = 9003
    browser = django_stack.socket(owner_id)
    Booking.objects.create(customer=user("lee"), lot_owner_id=owner_id, lot="Harbour")
    frame = browser.next_json()
    assert (frame["type"], frame["message"]) == ("info", "New booking at Harbour by lee")
    [(entry_id, _)] = django_stack.redis.history(owner_id)
    assert frame["id"] == entry_id.decode()
    browser.close()


def test_the_layer_maps_the_common_message_shapes(django_stack: GatewayProcess) -> None:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    browser = django_stack.socket(9004)
    group_send = async_to_sync(get_channel_layer().group_send)
    group_send("user_9004", {"type": "send_notification", "level": "warning", "message": "flat"})
    group_send(
        "user_9004",
        {"type": "send_notification", "notification": {"type": "error", "message": "nested"}},
    )
    group_send(
        "user_9004",
        {
            "type": "send_notification",
            "event": "booking.expired",
            "data": {"booking_id": 5, "slot": "C-3"},
        },
    )
    assert [(f["type"], f["message"]) for f in (browser.next_json() for _ in range(3))] == [
        ("warning", "flat"),
        ("error", "nested"),
        ("info", "Your booking for slot C-3 has expired"),
    ]
    browser.close()


def test_what_the_layer_cannot_do_raises_an_error_naming_the_way_out(
    django_stack: GatewayProcess,
) -> None:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from notification_gateway import InvalidInput
    from notification_gateway.django import UnsupportedOperation

    layer = get_channel_layer()
    with pytest.raises(InvalidInput, match="notify_many"):
        async_to_sync(layer.group_send)(
            "lot_7_staff", {"type": "send_notification", "level": "info", "message": "x"}
        )
    with pytest.raises(InvalidInput, match="MESSAGE_MAPPER"):
        async_to_sync(layer.group_send)("user_9005", {"type": "chat.message", "text": "hello"})
    with pytest.raises(UnsupportedOperation, match="remove the consumer"):
        async_to_sync(layer.receive)("specific.abc")
    with pytest.raises(UnsupportedOperation, match="group_add"):
        async_to_sync(layer.group_add)("user_9005", "specific.abc")
    with pytest.raises(UnsupportedOperation, match="group_send"):
        async_to_sync(layer.send)("specific.abc", {"type": "x"})
    assert django_stack.redis.history(9005) == []


def test_bad_input_raises_at_the_call_not_at_commit(django_stack: GatewayProcess) -> None:
    from django.db import transaction

    from notification_gateway import InvalidInput, Notification
    from notification_gateway.django import notify

    with transaction.atomic():
        with pytest.raises(InvalidInput, match="empty"):
            notify(9006, Notification("info", " "))
        with pytest.raises(InvalidInput, match="user id"):
            notify("user_9006", Notification("info", "x"))


def test_redis_errors_are_logged_and_counted_or_raised(
    django_stack: GatewayProcess, caplog: pytest.LogCaptureFixture
) -> None:
    from django.test import override_settings

    from notification_gateway import Notification, RedisUnavailable
    from notification_gateway.django import failed_publishes, notify

    down = RedisProcess()
    down.kill()
    before = failed_publishes()
    with override_settings(NOTIFICATION_GATEWAY={"REDIS_URL": down.url, "TIMEOUT": 0.5}):
        with caplog.at_level(logging.ERROR, logger="notification_gateway"):
            assert notify(9007, Notification("info", "lost"), on_commit=False) is None
        assert failed_publishes() == before + 1
        assert "notification not published" in caplog.text and "9007" in caplog.text
    with override_settings(
        NOTIFICATION_GATEWAY={"REDIS_URL": down.url, "TIMEOUT": 0.5, "ERROR_POLICY": "raise"}
    ):
        with pytest.raises(RedisUnavailable):
            notify(9007, Notification("info", "lost"), on_commit=False)


def test_settings_with_an_unknown_key_are_refused_by_name(django_stack: GatewayProcess) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from notification_gateway import Notification
    from notification_gateway.django import notify

    with override_settings(NOTIFICATION_GATEWAY={"REDIS_URI": "redis://x"}):
        with pytest.raises(ImproperlyConfigured, match="REDIS_URI"):
            notify(1, Notification("info", "x"))


def test_a_project_maps_its_own_message_shapes(django_stack: GatewayProcess) -> None:
    from asgiref.sync import async_to_sync
    from django.core.exceptions import ImproperlyConfigured

    from notification_gateway.django import GatewayChannelLayer

    browser = django_stack.socket(9008)
    layer = GatewayChannelLayer(
        MESSAGE_MAPPER="parking.mappers.chat_to_notification", hosts=[("127.0.0.1", 6379)]
    )
    async_to_sync(layer.group_send)("user_9008", {"type": "chat.message", "text": "hello"})
    frame = browser.next_json()
    assert (frame["message"], frame["event"]) == ("New message: hello", "chat.message")
    browser.close()
    with pytest.raises(ImproperlyConfigured, match="HOSTS"):
        GatewayChannelLayer(HOSTS=[("127.0.0.1", 6379)])
    with pytest.raises(ImproperlyConfigured, match="cannot be imported"):
        GatewayChannelLayer(MESSAGE_MAPPER="parking.mappers.nothing_here")


def test_the_layer_follows_the_error_policy(django_stack: GatewayProcess) -> None:
    from asgiref.sync import async_to_sync
    from django.test import override_settings

    from notification_gateway import RedisUnavailable
    from notification_gateway.django import GatewayChannelLayer, failed_publishes

    down = RedisProcess()
    down.kill()
    message = {"type": "send_notification", "level": "info", "message": "lost"}
    before = failed_publishes()
    with override_settings(NOTIFICATION_GATEWAY={"REDIS_URL": down.url, "TIMEOUT": 0.5}):
        async_to_sync(GatewayChannelLayer().group_send)("user_9009", message)
        assert failed_publishes() == before + 1
    raising = {"REDIS_URL": down.url, "TIMEOUT": 0.5, "ERROR_POLICY": "raise"}
    with override_settings(NOTIFICATION_GATEWAY=raising):
        with pytest.raises(RedisUnavailable):
            async_to_sync(GatewayChannelLayer().group_send)("user_9009", message)


def test_notify_many_sends_once_per_user_after_the_commit(django_stack: GatewayProcess) -> None:
    from django.db import transaction

    from notification_gateway import BookingCreated
    from notification_gateway.django import notify_many

    owners = [django_stack.socket(9010), django_stack.socket(9011)]
    event = BookingCreated(booking_id=77, lot="Harbour", customer="Dana")
    with transaction.atomic():
        assert notify_many([9010, 9011, 9010], event) is None
        assert django_stack.redis.history(9010) == []
    for user, browser in zip((9010, 9011), owners):
        frame = browser.next_json()
        assert (frame["event"], frame["message"]) == (
            "booking.created",
            "New booking at Harbour by Dana",
        )
        [(entry_id, _)] = django_stack.redis.history(user)
        assert frame["id"] == entry_id.decode()
        browser.close()
    receipts = notify_many([9012], event, on_commit=False)
    assert receipts is not None and list(receipts) == [9012] and receipts[9012].receivers == 0
