//! Typed events: every notification the parking app sends today.
//!
//! Each [`Event`] knows its [`Level`], its dotted event name and a default English message, and
//! turns into a [`Notification`](crate::Notification) whose `data` holds the event's fields under their snake_case
//! names. Prefer these over free-form notifications so browsers can rely on the names and
//! fields listed in `docs/PROTOCOL.md`.
//!
//! ```
//! use publisher::{Event, Notification};
//!
//! let n: Notification = Event::BookingExpired { booking_id: 1881, slot: "B-07".into() }.into();
//! assert_eq!(n.event.as_deref(), Some("booking.expired"));
//! assert_eq!(n.message, "Your booking for slot B-07 has expired");
//!
//! // Same event, own wording:
//! let n = Event::BookingExpired { booking_id: 1881, slot: "B-07".into() }
//!     .with_message("Time is up for B-07");
//! assert_eq!(n.message, "Time is up for B-07");
//!
//! // From a name and a JSON object, as an HTTP body or a command line gives them:
//! let data = serde_json::json!({"booking_id": 1881, "slot": "B-07"});
//! let event = Event::from_name_and_data("booking.expired", data.as_object().unwrap()).unwrap();
//! assert_eq!(event, Event::BookingExpired { booking_id: 1881, slot: "B-07".into() });
//! ```

use serde_json::{Map, Value};

use crate::wire::Level;

/// Declares [`Event`] and everything derived from its table: level, name, default message,
/// `data` and parsing from a name and `data`. Field kinds: `id` (`u64`), `count` (`u32`),
/// `text` (`String`) and `optional_text` (`Option<String>`, left out of `data` when `None`).
macro_rules! events {
    ($(
        $(#[$doc:meta])*
        $variant:ident($name:literal, $level:ident) {
            $( $(#[$field_doc:meta])* $field:ident: $kind:ident ),* $(,)?
        } => $message:block
    )*) => {
        /// A notification the parking app sends, with its structured fields.
        ///
        /// Ids are database ids (`u64`); amounts are decimal text (`"12.50"`) so no precision is lost;
        /// times are ISO 8601 text.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Event {
            $(
                $(#[$doc])*
                $variant { $( $(#[$field_doc])* $field: field_type!($kind) ),* },
            )*
        }

        impl Event {
            /// Every event name, in declaration order.
            pub const NAMES: [&'static str; [$($name),*].len()] = [$($name),*];

            /// The severity the browser shows.
            pub fn level(&self) -> Level {
                match self {
                    $( Event::$variant { .. } => Level::$level, )*
                }
            }

            /// The dotted event name that goes in the notification's `event` field.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Event::$variant { .. } => $name, )*
                }
            }

            /// The English text shown when the caller gives none.
            pub fn default_message(&self) -> String {
                match self {
                    $(
                        #[allow(unused_variables)]
                        Event::$variant { $($field),* } => $message,
                    )*
                }
            }

            /// The event's fields as the notification's `data` object.
            pub fn data(&self) -> Map<String, Value> {
                // Keys are the Rust field names; docs/PROTOCOL.md lists them for other languages.
                let mut data = Map::new();
                match self {
                    $(
                        Event::$variant { $($field),* } => {
                            $(
                                if let Some(value) = data_value!($kind, $field) {
                                    data.insert(stringify!($field).to_owned(), value);
                                }
                            )*
                        }
                    )*
                }
                data
            }

            /// The event called `name` (one of [`Event::NAMES`]) with the fields in `data`, as
            /// services in other languages send them through the HTTP endpoint or the `notify` CLI.
            ///
            /// Strict, so that a typo is an error instead of a notification with a missing field:
            /// every field of the event must be present with its JSON type (ids are non-negative
            /// integers, the rest strings; `booking.declined`'s `reason` may be absent or `null`) and
            /// no other field may be given.
            pub fn from_name_and_data(
                name: &str,
                data: &Map<String, Value>,
            ) -> Result<Event, EventError> {
                Ok(match name {
                    $(
                        $name => {
                            let f = Fields::new(
                                $name,
                                &[$(stringify!($field)),*],
                                &[$(required!($kind)),*],
                                data,
                            )?;
                            Event::$variant { $( $field: f.$kind(stringify!($field))? ),* }
                        }
                    )*
                    _ => {
                        return Err(EventError::UnknownEvent {
                            name: name.to_owned(),
                        })
                    }
                })
            }
        }
    };
}

macro_rules! field_type {
    (id) => { u64 };
    (count) => { u32 };
    (text) => { String };
    (optional_text) => { Option<String> };
}

macro_rules! data_value {
    (id, $value:expr) => {
        Some(Value::from(*$value))
    };
    (count, $value:expr) => {
        Some(Value::from(*$value))
    };
    (text, $value:expr) => {
        Some(Value::from($value.as_str()))
    };
    (optional_text, $value:expr) => {
        $value.as_deref().map(Value::from)
    };
}

macro_rules! required {
    (optional_text) => {
        false
    };
    ($kind:ident) => {
        true
    };
}

events! {
    /// The user's booking ends soon. Level warning, `booking.expiring_soon`.
    BookingExpiringSoon("booking.expiring_soon", Warning) {
        booking_id: id,
        slot: text,
        minutes_left: count,
    } => {
        let unit = if *minutes_left == 1 { "minute" } else { "minutes" };
        format!("Your booking for slot {slot} expires in {minutes_left} {unit}")
    }
    /// The user's booking has ended. Level info, `booking.expired`.
    BookingExpired("booking.expired", Info) { booking_id: id, slot: text } => {
        format!("Your booking for slot {slot} has expired")
    }
    /// The booking was extended. Level success, `booking.renewed`.
    BookingRenewed("booking.renewed", Success) {
        booking_id: id,
        /// New end time, ISO 8601 (e.g. `"2025-06-01T18:30:00+02:00"`).
        new_end: text,
    } => {
        format!("Your booking has been renewed until {new_end}")
    }
    /// Extending the booking failed. Level error, `booking.renewal_failed`.
    BookingRenewalFailed("booking.renewal_failed", Error) { booking_id: id, reason: text } => {
        format!("Your booking could not be renewed: {reason}")
    }
    /// The system released the slot because the booking ran out. Level warning,
    /// `booking.slot_auto_expired`.
    SlotAutoExpired("booking.slot_auto_expired", Warning) { booking_id: id, slot: text } => {
        format!("Slot {slot} was released automatically because your booking ended")
    }
    /// The lot owner declined the booking. Level warning, `booking.declined`.
    /// `reason` is left out of `data` when `None`.
    BookingDeclined("booking.declined", Warning) {
        booking_id: id,
        reason: optional_text,
    } => {
        match reason.as_deref().map(str::trim) {
            Some(reason) if !reason.is_empty() => format!("Your booking was declined: {reason}"),
            _ => "Your booking was declined".to_owned(),
        }
    }
    /// Staff confirmed a cash payment. Level success, `payment.cash_verified`.
    CashPaymentVerified("payment.cash_verified", Success) {
        booking_id: id,
        /// Decimal text, e.g. `"12.50"`.
        amount: text,
        /// ISO 4217 code, e.g. `"EUR"`.
        currency: text,
    } => {
        format!("Your cash payment of {amount} {currency} has been verified")
    }
    /// Sent to the lot owner when a customer books. Level info, `booking.created`.
    BookingCreated("booking.created", Info) {
        booking_id: id,
        lot: text,
        customer: text,
    } => {
        format!("New booking at {lot} by {customer}")
    }
    /// The car wash ordered with a booking is done. Level success, `carwash.completed`.
    CarWashCompleted("carwash.completed", Success) { booking_id: id, service: text } => {
        format!("Your car wash ({service}) is complete")
    }
    /// Sent to the lot owner when an employee is assigned to a lot. Level info,
    /// `employee.assigned`.
    EmployeeAssigned("employee.assigned", Info) {
        employee_id: id,
        employee_name: text,
        lot: text,
    } => {
        format!("{employee_name} has been assigned to {lot}")
    }
}

/// Why an event name and its `data` do not make an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The name is none of [`Event::NAMES`].
    #[error("unknown event {name:?}: known events are {}; for anything else send a free-form notification with \"type\" and \"message\"", Event::NAMES.join(", "))]
    UnknownEvent { name: String },
    /// A field the event needs is absent.
    #[error("event {event} needs field `{field}` in data (fields: {})", expected_fields(.allowed))]
    MissingField {
        event: &'static str,
        field: &'static str,
        allowed: &'static [&'static str],
    },
    /// A field has the wrong JSON type or is out of range.
    #[error("event {event}: data field `{field}` must be {expected}")]
    InvalidField {
        event: &'static str,
        field: &'static str,
        expected: &'static str,
    },
    /// `data` holds a field the event does not have (often a misspelling).
    #[error("event {event} has no data field `{field}` (fields: {})", expected_fields(.allowed))]
    UnknownField {
        event: &'static str,
        field: String,
        allowed: &'static [&'static str],
    },
}

fn expected_fields(allowed: &[&str]) -> String {
    allowed.join(", ")
}

/// Reads one event's fields out of a `data` object, naming the event and field on failure.
struct Fields<'a> {
    event: &'static str,
    data: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// `required[i]` tells whether `allowed[i]` must be present.
    fn new(
        event: &'static str,
        allowed: &'static [&'static str],
        required: &[bool],
        data: &'a Map<String, Value>,
    ) -> Result<Self, EventError> {
        if let Some(unknown) = data.keys().find(|key| !allowed.contains(&key.as_str())) {
            return Err(EventError::UnknownField {
                event,
                field: unknown.clone(),
                allowed,
            });
        }
        for (field, required) in allowed.iter().zip(required) {
            if *required && !data.contains_key(*field) {
                return Err(EventError::MissingField {
                    event,
                    field,
                    allowed,
                });
            }
        }
        Ok(Fields { event, data })
    }

    fn invalid(&self, field: &'static str, expected: &'static str) -> EventError {
        EventError::InvalidField {
            event: self.event,
            field,
            expected,
        }
    }

    fn id(&self, field: &'static str) -> Result<u64, EventError> {
        self.data[field]
            .as_u64()
            .ok_or_else(|| self.invalid(field, "a non-negative integer (an id)"))
    }

    fn count(&self, field: &'static str) -> Result<u32, EventError> {
        self.data[field]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.invalid(field, "a non-negative integer below 2^32"))
    }

    fn text(&self, field: &'static str) -> Result<String, EventError> {
        self.data[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.invalid(field, "a string"))
    }

    fn optional_text(&self, field: &'static str) -> Result<Option<String>, EventError> {
        match self.data.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.text(field).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::notification::Notification;
    use crate::wire::{check_payload, DEFAULT_MAX_PAYLOAD_BYTES};

    /// Serialises the way the publisher does (minus the timestamp) and checks the gateway
    /// would accept it.
    fn wire_json(event: Event) -> Value {
        let payload = Notification::from(event)
            .to_payload(DEFAULT_MAX_PAYLOAD_BYTES)
            .expect("typed events always serialise");
        check_payload(&payload, DEFAULT_MAX_PAYLOAD_BYTES).expect("gateway accepts it");
        serde_json::from_slice(&payload).expect("valid JSON")
    }

    #[test]
    fn booking_expiring_soon() {
        let event = Event::BookingExpiringSoon {
            booking_id: 1881,
            slot: "A-12".into(),
            minutes_left: 5,
        };
        assert_eq!(
            wire_json(event),
            json!({
                "type": "warning",
                "message": "Your booking for slot A-12 expires in 5 minutes",
                "event": "booking.expiring_soon",
                "data": {"booking_id": 1881, "slot": "A-12", "minutes_left": 5},
            })
        );
        let one = Event::BookingExpiringSoon {
            booking_id: 1,
            slot: "A-1".into(),
            minutes_left: 1,
        };
        assert_eq!(
            one.default_message(),
            "Your booking for slot A-1 expires in 1 minute"
        );
    }

    #[test]
    fn booking_expired() {
        let event = Event::BookingExpired {
            booking_id: 1881,
            slot: "A-12".into(),
        };
        assert_eq!(
            wire_json(event),
            json!({
                "type": "info",
                "message": "Your booking for slot A-12 has expired",
                "event": "booking.expired",
                "data": {"booking_id": 1881, "slot": "A-12"},
            })
        );
    }

    #[test]
    fn booking_renewed() {
        let event = Event::BookingRenewed {
            booking_id: 1881,
            new_end: "2025-06-01T18:30:00+02:00".into(),
        };
        assert_eq!(
            wire_json(event),
            json!({
                "type": "success",
                "message": "Your booking has been renewed until 2025-06-01T18:30:00+02:00",
                "event": "booking.renewed",
                "data": {"booking_id": 1881, "new_end": "2025-06-01T18:30:00+02:00"},
            })
        );
    }

    #[test]
    fn booking_renewal_failed() {
        let event = Event::BookingRenewalFailed {
            booking_id: 1881,
            reason: "the slot is booked by someone else".into(),
        };
        assert_eq!(
            wire_json(event),
            json!({
                "type": "error",
                "message": "Your booking could not be renewed: the slot is booked by someone else",
                "event": "booking.renewal_failed",
                "data": {"booking_id": 1881, "reason": "the slot is booked by someone else"},
            })
        );
    }

    #[test]
    fn slot_auto_expired() {
        let event = Event::SlotAutoExpired {
            booking_id: 1881,
            slot: "A-12".into(),
        };
        assert_eq!(
            wire_json(event),
            json!({
                "type": "warning",
                "message": "Slot A-12 was released automatically because your booking ended",
                "event": "booking.slot_auto_expired",
                "data": {"booking_id": 1881, "slot": "A-12"},
            })
        );
    }

    #[test]
    fn booking_declined_with_and_without_reason() {
        let event = Event::BookingDeclined {
            booking_id: 1881,
            reason: Some("lot closed for maintenance".into()),
        };
        assert_eq!(
            wire_json(event),
            json!({
                "type": "warning",
                "message": "Your booking was declined: lot closed for maintenance",
                "event": "booking.declined",
                "data": {"booking_id": 1881, "reason": "lot closed for maintenance"},
            })
        );
        let event = Event::BookingDeclined {
            booking_id: 1881,
            reason: None,
        };
        assert_eq!(
            wire_json(event),
            json!({
                "type": "warning",
                "message": "Your booking was declined",
                "event": "booking.declined",
                "data": {"booking_id": 1881},
            })
        );
    }

    #[test]
    fn cash_payment_verified() {
        let event = Event::CashPaymentVerified {
            booking_id: 1881,
            amount: "12.50".into(),
            currency: "EUR".into(),
        };
        assert_eq!(
            wire_json(event),
            json!({
                "type": "success",
                "message": "Your cash payment of 12.50 EUR has been verified",
                "event": "payment.cash_verified",
                "data": {"booking_id": 1881, "amount": "12.50", "currency": "EUR"},
            })
        );
    }

    #[test]
    fn booking_created() {
        let event = Event::BookingCreated {
            booking_id: 1881,
            lot: "Central Garage".into(),
            customer: "Dana Smith".into(),
        };
        assert_eq!(
            wire_json(event),
            json!({
                "type": "info",
                "message": "New booking at Central Garage by Dana Smith",
                "event": "booking.created",
                "data": {"booking_id": 1881, "lot": "Central Garage", "customer": "Dana Smith"},
            })
        );
    }

    #[test]
    fn car_wash_completed() {
        let event = Event::CarWashCompleted {
            booking_id: 1881,
            service: "Premium wash".into(),
        };
        assert_eq!(
            wire_json(event),
            json!({
                "type": "success",
                "message": "Your car wash (Premium wash) is complete",
                "event": "carwash.completed",
                "data": {"booking_id": 1881, "service": "Premium wash"},
            })
        );
    }

    #[test]
    fn employee_assigned() {
        let event = Event::EmployeeAssigned {
            employee_id: 311,
            employee_name: "Sam Lee".into(),
            lot: "Central Garage".into(),
        };
        assert_eq!(
            wire_json(event),
            json!({
                "type": "info",
                "message": "Sam Lee has been assigned to Central Garage",
                "event": "employee.assigned",
                "data": {"employee_id": 311, "employee_name": "Sam Lee", "lot": "Central Garage"},
            })
        );
    }

    #[test]
    fn custom_message_keeps_level_name_and_data() {
        let n = Event::CarWashCompleted {
            booking_id: 9,
            service: "Basic".into(),
        }
        .with_message("Votre voiture est prête");
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            json!({
                "type": "success",
                "message": "Votre voiture est prête",
                "event": "carwash.completed",
                "data": {"booking_id": 9, "service": "Basic"},
            })
        );
    }

    /// One of each event, with every optional field set.
    fn samples() -> Vec<Event> {
        vec![
            Event::BookingExpiringSoon {
                booking_id: 1,
                slot: "s".into(),
                minutes_left: 2,
            },
            Event::BookingExpired {
                booking_id: 1,
                slot: "s".into(),
            },
            Event::BookingRenewed {
                booking_id: 1,
                new_end: "t".into(),
            },
            Event::BookingRenewalFailed {
                booking_id: 1,
                reason: "r".into(),
            },
            Event::SlotAutoExpired {
                booking_id: 1,
                slot: "s".into(),
            },
            Event::BookingDeclined {
                booking_id: 1,
                reason: Some("r".into()),
            },
            Event::CashPaymentVerified {
                booking_id: 1,
                amount: "1.00".into(),
                currency: "EUR".into(),
            },
            Event::BookingCreated {
                booking_id: 1,
                lot: "l".into(),
                customer: "c".into(),
            },
            Event::CarWashCompleted {
                booking_id: 1,
                service: "s".into(),
            },
            Event::EmployeeAssigned {
                employee_id: 1,
                employee_name: "n".into(),
                lot: "l".into(),
            },
        ]
    }

    #[test]
    fn protocol_doc_lists_every_event_with_its_level_and_fields() {
        // docs/PROTOCOL.md is what non-Rust publishers read: keep its table in step.
        let doc = include_str!("../../docs/PROTOCOL.md");
        for event in samples() {
            let prefix = format!("| `{}` | {} |", event.name(), event.level());
            let row = doc
                .lines()
                .find(|line| line.starts_with(&prefix))
                .unwrap_or_else(|| panic!("PROTOCOL.md has no row starting {prefix:?}"));
            for key in event.data().keys() {
                assert!(
                    row.contains(&format!("`{key}`")),
                    "{prefix}: field {key} missing"
                );
            }
        }
    }

    #[test]
    fn largest_ids_stay_exact() {
        // JSON numbers above 2^53 lose precision in JavaScript, but the wire text must be exact.
        let n = Notification::from(Event::BookingExpired {
            booking_id: u64::MAX,
            slot: "Z".into(),
        });
        let text = String::from_utf8(n.to_payload(DEFAULT_MAX_PAYLOAD_BYTES).unwrap()).unwrap();
        assert!(text.contains("18446744073709551615"), "{text}");
    }

    #[test]
    fn every_event_is_found_again_from_its_name_and_data() {
        let events = samples();
        assert_eq!(events.len(), Event::NAMES.len(), "one sample per event");
        for (event, name) in events.into_iter().zip(Event::NAMES) {
            assert_eq!(event.name(), name, "NAMES is in declaration order");
            assert_eq!(
                Event::from_name_and_data(name, &event.data()),
                Ok(event.clone())
            );
        }
        let without_reason = Event::BookingDeclined {
            booking_id: 3,
            reason: None,
        };
        let data = json!({"booking_id": 3, "reason": null});
        assert_eq!(
            Event::from_name_and_data("booking.declined", data.as_object().unwrap()),
            Ok(without_reason.clone())
        );
        assert_eq!(
            Event::from_name_and_data("booking.declined", &without_reason.data()),
            Ok(without_reason)
        );
    }

    #[test]
    fn bad_names_and_data_are_typed_errors_that_say_what_to_send() {
        let lookup = |name: &str, data: Value| {
            Event::from_name_and_data(name, data.as_object().expect("object")).unwrap_err()
        };
        let err = lookup("booking.exploded", json!({}));
        assert_eq!(
            err,
            EventError::UnknownEvent {
                name: "booking.exploded".into()
            }
        );
        assert!(err.to_string().contains("booking.expiring_soon"), "{err}");

        let err = lookup("booking.expired", json!({"booking_id": 1}));
        assert!(
            matches!(err, EventError::MissingField { field: "slot", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("booking_id, slot"), "{err}");

        let err = lookup("booking.expired", json!({"bookingId": 1, "slot": "A"}));
        assert!(
            matches!(&err, EventError::UnknownField { field, .. } if field == "bookingId"),
            "{err:?}"
        );

        for (data, field) in [
            (json!({"booking_id": "1", "slot": "A"}), "booking_id"),
            (json!({"booking_id": -1, "slot": "A"}), "booking_id"),
            (json!({"booking_id": 1.5, "slot": "A"}), "booking_id"),
            (json!({"booking_id": 1, "slot": 7}), "slot"),
            (json!({"booking_id": 1, "slot": null}), "slot"),
        ] {
            let err = lookup("booking.expired", data.clone());
            assert!(
                matches!(err, EventError::InvalidField { field: f, .. } if f == field),
                "{data}: {err:?}"
            );
        }
        let err = lookup(
            "booking.expiring_soon",
            json!({"booking_id": 1, "slot": "A", "minutes_left": 1u64 << 40}),
        );
        assert!(
            matches!(
                err,
                EventError::InvalidField {
                    field: "minutes_left",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = lookup("booking.declined", json!({"booking_id": 1, "reason": 5}));
        assert!(
            matches!(
                err,
                EventError::InvalidField {
                    field: "reason",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
