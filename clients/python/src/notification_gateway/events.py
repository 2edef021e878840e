"""Typed events: every notification the parking app sends, with the same names, levels,
default messages and ``data`` fields as publisher-lib's ``Event`` enum (a Rust test compares
the two catalogues) and the table in docs/PROTOCOL.md.

>>> BookingExpired(booking_id=1881, slot="B-07").to_notification().message
'Your booking for slot B-07 has expired'

Ids are ints, amounts decimal strings (``"12.50"``), times ISO 8601 strings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Type

from .errors import InvalidInput
from .notification import Level, Notification

_U64 = 2**64
_U32 = 2**32


@dataclass(frozen=True)
class Event:
    """Base class of the typed events. Subclasses set ``name`` and ``level`` and give their
    fields; every field is required except ``BookingDeclined.reason``."""

    #: The dotted event name sent in the notification's ``event`` field.
    name: ClassVar[str] = ""
    #: The severity the browser shows.
    level: ClassVar[Level] = Level.INFO

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            _check_field(self.name, spec.name, str(spec.type), getattr(self, spec.name))

    def default_message(self) -> str:
        """The English text shown when the caller gives none."""
        raise NotImplementedError

    def data(self) -> Dict[str, Any]:
        """The event's fields as the notification's ``data`` object (``None`` left out)."""
        return {
            spec.name: getattr(self, spec.name)
            for spec in dataclasses.fields(self)
            if getattr(self, spec.name) is not None
        }

    def to_notification(self, message: Optional[str] = None) -> Notification:
        """The notification, with the default message or your own (e.g. a translation)."""
        text = self.default_message() if message is None else message
        return Notification(self.level, text, event=self.name, data=self.data())

    @staticmethod
    def from_name_and_data(name: str, data: Mapping[str, Any]) -> "Event":
        """The event called ``name`` with the fields in ``data``, as publisher-lib's
        ``Event::from_name_and_data``: strict, so that a typo is an error instead of a
        notification with a missing field."""
        cls = EVENTS.get(name)
        if cls is None:
            raise InvalidInput(
                f"unknown event {name!r}: known events are {', '.join(EVENTS)}; for anything "
                'else send a free-form notification with "type" and "message"'
            )
        fields = [spec.name for spec in dataclasses.fields(cls)]
        for key in data:
            if key not in fields:
                raise InvalidInput(
                    f"event {name} has no data field `{key}` (fields: {', '.join(fields)})"
                )
        optional = {
            spec.name for spec in dataclasses.fields(cls) if spec.default is not dataclasses.MISSING
        }
        for key in fields:
            if key not in data and key not in optional:
                raise InvalidInput(
                    f"event {name} needs field `{key}` in data (fields: {', '.join(fields)})"
                )
        return cls(**dict(data))


def _check_field(event: str, field: str, annotation: str, value: Any) -> None:
    if annotation == "Optional[str]":
        if value is None or isinstance(value, str):
            return
        expected = "a string or None"
    elif annotation == "str":
        if isinstance(value, str):
            return
        expected = "a string"
    elif field == "minutes_left":
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U32:
            return
        expected = "a non-negative integer below 2^32"
    else:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64:
            return
        expected = "a non-negative integer (an id)"
    raise InvalidInput(f"event {event}: data field `{field}` must be {expected}, got {value!r}")


@dataclass(frozen=True)
class BookingExpiringSoon(Event):
    """The user's booking ends soon."""

    name: ClassVar[str] = "booking.expiring_soon"
    level: ClassVar[Level] = Level.WARNING
    booking_id: int
    slot: str
    minutes_left: int

    def default_message(self) -> str:
        unit = "minute" if self.minutes_left == 1 else "minutes"
        return f"Your booking for slot {self.slot} expires in {self.minutes_left} {unit}"


@dataclass(frozen=True)
class BookingExpired(Event):
    """The user's booking has ended."""

    name: ClassVar[str] = "booking.expired"
    level: ClassVar[Level] = Level.INFO
    booking_id: int
    slot: str

    def default_message(self) -> str:
        return f"Your booking for slot {self.slot} has expired"


@dataclass(frozen=True)
class BookingRenewed(Event):
    """The booking was extended; ``new_end`` is ISO 8601."""

    name: ClassVar[str] = "booking.renewed"
    level: ClassVar[Level] = Level.SUCCESS
    booking_id: int
    new_end: str

    def default_message(self) -> str:
        return f"Your booking has been renewed until {self.new_end}"


@dataclass(frozen=True)
class BookingRenewalFailed(Event):
    """Extending the booking failed."""

    name: ClassVar[str] = "booking.renewal_failed"
    level: ClassVar[Level] = Level.ERROR
    booking_id: int
    reason: str

    def default_message(self) -> str:
        return f"Your booking could not be renewed: {self.reason}"


@dataclass(frozen=True)
class SlotAutoExpired(Event):
    """The system released the slot because the booking ran out."""

    name: ClassVar[str] = "booking.slot_auto_expired"
    level: ClassVar[Level] = Level.WARNING
    booking_id: int
    slot: str

    def default_message(self) -> str:
        return f"Slot {self.slot} was released automatically because your booking ended"


@dataclass(frozen=True)
class BookingDeclined(Event):
    """The lot owner declined the booking; ``reason`` is left out of ``data`` when None."""

    name: ClassVar[str] = "booking.declined"
    level: ClassVar[Level] = Level.WARNING
    booking_id: int
    reason: Optional[str] = None

    def default_message(self) -> str:
        reason = (self.reason or "").strip()
        if reason:
            return f"Your booking was declined: {reason}"
        return "Your booking was declined"


@dataclass(frozen=True)
class CashPaymentVerified(Event):
    """Staff confirmed a cash payment; ``amount`` is decimal text, ``currency`` ISO 4217."""

    name: ClassVar[str] = "payment.cash_verified"
    level: ClassVar[Level] = Level.SUCCESS
    booking_id: int
    amount: str
    currency: str

    def default_message(self) -> str:
        return f"Your cash payment of {self.amount} {self.currency} has been verified"


@dataclass(frozen=True)
class BookingCreated(Event):
    """Sent to the lot owner when a customer books."""

    name: ClassVar[str] = "booking.created"
    level: ClassVar[Level] = Level.INFO
    booking_id: int
    lot: str
    customer: str

    def default_message(self) -> str:
        return f"New booking at {self.lot} by {self.customer}"


@dataclass(frozen=True)
class CarWashCompleted(Event):
    """The car wash ordered with a booking is done."""

    name: ClassVar[str] = "carwash.completed"
    level: ClassVar[Level] = Level.SUCCESS
    booking_id: int
    service: str

    def default_message(self) -> str:
        return f"Your car wash ({self.service}) is complete"


@dataclass(frozen=True)
class EmployeeAssigned(Event):
    """Sent to the lot owner when an employee is assigned to a lot."""

    name: ClassVar[str] = "employee.assigned"
    level: ClassVar[Level] = Level.INFO
    employee_id: int
    employee_name: str
    lot: str

    def default_message(self) -> str:
        return f"{self.employee_name} has been assigned to {self.lot}"


_ALL: List[Type[Event]] = [
    BookingExpiringSoon,
    BookingExpired,
    BookingRenewed,
    BookingRenewalFailed,
    SlotAutoExpired,
    BookingDeclined,
    CashPaymentVerified,
    BookingCreated,
    CarWashCompleted,
    EmployeeAssigned,
]

#: Every event class by name, in publisher-lib's declaration order.
EVENTS: Dict[str, Type[Event]] = {cls.name: cls for cls in _ALL}

__all__ = ["EVENTS", "Event"] + [cls.__name__ for cls in _ALL]
