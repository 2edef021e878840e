"""The typed events and free-form notifications, without Redis: the wire bytes, and the
strict lookup by name that the channel layer uses. Parity with publisher-lib's catalogue is
checked from the Rust side (publisher-lib/tests/python_parity.rs)."""

from __future__ import annotations

import json

import pytest

from notification_gateway import (
    EVENTS,
    BookingDeclined,
    BookingExpiringSoon,
    CashPaymentVerified,
    Event,
    InvalidInput,
    Level,
    Notification,
)


def wire(notification: Notification) -> str:
    return notification.to_payload(65536).decode()


def test_a_typed_event_serialises_as_publisher_lib_does() -> None:
    event = BookingExpiringSoon(booking_id=1881, slot="A-12", minutes_left=5)
    assert wire(event.to_notification()) == (
        '{"type":"warning","message":"Your booking for slot A-12 expires in 5 minutes",'
        '"event":"booking.expiring_soon","data":{"booking_id":1881,"minutes_left":5,"slot":"A-12"}}'
    )
    assert BookingExpiringSoon(booking_id=1, slot="A-1", minutes_left=1).default_message() == (
        "Your booking for slot A-1 expires in 1 minute"
    )


def test_own_wording_keeps_level_name_and_data() -> None:
    n = CashPaymentVerified(booking_id=9, amount="12.50", currency="EUR").to_notification(
        "Paiement vérifié"
    )
    assert json.loads(wire(n)) == {
        "type": "success",
        "message": "Paiement vérifié",
        "event": "payment.cash_verified",
        "data": {"booking_id": 9, "amount": "12.50", "currency": "EUR"},
    }
    assert "Paiement vérifié" in wire(n), "UTF-8 as is, like serde_json"


def test_a_declined_booking_without_reason_leaves_it_out() -> None:
    assert json.loads(wire(BookingDeclined(booking_id=3).to_notification())) == {
        "type": "warning",
        "message": "Your booking was declined",
        "event": "booking.declined",
        "data": {"booking_id": 3},
    }


def test_the_catalogue_has_the_ten_events_in_publisher_lib_order() -> None:
    assert list(EVENTS) == [
        "booking.expiring_soon",
        "booking.expired",
        "booking.renewed",
        "booking.renewal_failed",
        "booking.slot_auto_expired",
        "booking.declined",
        "payment.cash_verified",
        "booking.created",
        "carwash.completed",
        "employee.assigned",
    ]
    assert all(isinstance(cls.level, Level) for cls in EVENTS.values())


@pytest.mark.parametrize(
    "name, data, hint",
    [
        ("booking.exploded", {}, "known events are booking.expiring_soon"),
        ("booking.expired", {"booking_id": 1}, "needs field `slot`"),
        ("booking.expired", {"bookingId": 1, "slot": "A"}, "no data field `bookingId`"),
        ("booking.expired", {"booking_id": "1", "slot": "A"}, "`booking_id` must be"),
        ("booking.expired", {"booking_id": -1, "slot": "A"}, "`booking_id` must be"),
        ("booking.expired", {"booking_id": 1.5, "slot": "A"}, "`booking_id` must be"),
        ("booking.expired", {"booking_id": 1, "slot": None}, "`slot` must be a string"),
        (
            "booking.expiring_soon",
            {"booking_id": 1, "slot": "A", "minutes_left": 2**40},
            "below 2^32",
        ),
        ("booking.declined", {"booking_id": 1, "reason": 5}, "`reason` must be"),
    ],
)
def test_bad_event_data_is_an_error_naming_the_field(name: str, data: dict, hint: str) -> None:
    with pytest.raises(InvalidInput, match=hint.replace("^", r"\^")):
        Event.from_name_and_data(name, data)


def test_an_event_is_found_again_from_its_name_and_data() -> None:
    event = BookingDeclined(booking_id=3)
    assert Event.from_name_and_data("booking.declined", {"booking_id": 3, "reason": None}) == event
    assert Event.from_name_and_data(event.name, event.data()) == event
