//! The JSON envelope every browser receives.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::PublishError;
use crate::events::Event;
use crate::wire::Level;

/// One notification, exactly as it travels to the browser.
///
/// Serialises to `{"type": ..., "message": ..., "event"?: ..., "data"?: {...}, "timestamp"?: ...}`
/// with the optional fields left out when unset, in that order. Today's frontend only reads
/// `type` and `message`; `event` and `data` let newer code react to specific events.
///
/// ```
/// use publisher::{Level, Notification};
///
/// let n = Notification::new(Level::Info, "Your car is ready")
///     .with_event("carwash.completed")
///     .with_data("booking_id", 1881);
/// assert_eq!(
///     serde_json::to_string(&n).unwrap(),
///     r#"{"type":"info","message":"Your car is ready","event":"carwash.completed","data":{"booking_id":1881}}"#
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Notification {
    /// Severity; the browser picks the toast style from it.
    #[serde(rename = "type")]
    pub level: Level,
    /// Human-readable text shown to the user. Must not be blank.
    pub message: String,
    /// Machine-readable event name such as `"booking.expired"`; see [`crate::Event`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Structured fields of the event (ids, amounts) for code that reacts to it.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub data: Map<String, Value>,
    /// When the event happened, in milliseconds since the Unix epoch.
    /// [`Publisher::publish`](crate::Publisher::publish) fills it in when left `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

impl Notification {
    /// A free-form notification with no event name, data or timestamp.
    pub fn new(level: Level, message: impl Into<String>) -> Self {
        Notification {
            level,
            message: message.into(),
            event: None,
            data: Map::new(),
            timestamp: None,
        }
    }

    /// Sets the machine-readable event name.
    pub fn with_event(mut self, event: impl Into<String>) -> Self {
        self.event = Some(event.into());
        self
    }

    /// Adds (or replaces) one field of `data`.
    pub fn with_data(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.data.insert(key.into(), value.into());
        self
    }

    /// Sets `timestamp` explicitly (milliseconds since the Unix epoch).
    pub fn with_timestamp(mut self, millis: u64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    /// Sets `timestamp` to the current time.
    pub fn with_timestamp_now(self) -> Self {
        self.with_timestamp(now_millis())
    }

    /// A notification from the loose fields a service in another language sends (the HTTP
    /// publish endpoint and the `notify` CLI take these):
    ///
    /// - with `level`: a free-form notification; `message` is required, `event` and `data`
    ///   are passed on as given;
    /// - without `level`: `event` must name a typed [`Event`](crate::Event) and `data` carry
    ///   its fields ([`Event::from_name_and_data`](Event::from_name_and_data)); the
    ///   event's level applies, and its default message unless `message` is given.
    ///
    /// ```
    /// use publisher::{Level, Notification};
    ///
    /// let data = serde_json::json!({"booking_id": 7, "service": "Basic"});
    /// let n = Notification::from_fields(None, None, Some("carwash.completed"), data.as_object().unwrap().clone()).unwrap();
    /// assert_eq!((n.level, n.message.as_str()), (Level::Success, "Your car wash (Basic) is complete"));
    /// ```
    pub fn from_fields(
        level: Option<Level>,
        message: Option<String>,
        event: Option<&str>,
        data: Map<String, Value>,
    ) -> Result<Notification, PublishError> {
        match (level, event) {
            (Some(level), _) => {
                let message = message.ok_or(PublishError::Incomplete(
                    "a notification with \"type\" needs a \"message\"",
                ))?;
                let mut notification = Notification::new(level, message);
                notification.event = event.map(str::to_owned);
                notification.data = data;
                Ok(notification)
            }
            (None, Some(name)) => {
                let event = Event::from_name_and_data(name, &data)?;
                Ok(match message {
                    Some(message) => event.with_message(message),
                    None => event.into_notification(),
                })
            }
            (None, None) => Err(PublishError::Incomplete(
                "give \"type\" (success|info|warning|error) and \"message\", or a typed \"event\" with its \"data\"",
            )),
        }
    }

    /// Validates and serialises the notification to the bytes that go on the wire.
    ///
    /// Fails with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the message
    /// is blank, and with [`ErrorKind::TooLarge`](crate::ErrorKind::TooLarge) when the JSON is
    /// over `max_bytes` (gateways would drop it).
    pub fn to_payload(&self, max_bytes: usize) -> Result<Vec<u8>, PublishError> {
        if self.message.trim().is_empty() {
            return Err(PublishError::EmptyMessage);
        }
        let payload = serde_json::to_vec(self).map_err(PublishError::Serialize)?;
        if payload.len() > max_bytes {
            return Err(PublishError::TooLarge {
                size: payload.len(),
                max: max_bytes,
            });
        }
        Ok(payload)
    }
}

/// Milliseconds since the Unix epoch; 0 if the clock is set before 1970.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Notifications from typed events. Here rather than in `events`, so that events know
/// nothing of notifications and the modules form no cycle.
impl Event {
    /// The notification with the default English message.
    pub fn into_notification(self) -> Notification {
        let message = self.default_message();
        self.with_message(message)
    }

    /// The notification with your own message (e.g. a translation) instead of the default.
    pub fn with_message(self, message: impl Into<String>) -> Notification {
        let mut notification = Notification::new(self.level(), message).with_event(self.name());
        notification.data = self.data();
        notification
    }
}

impl From<Event> for Notification {
    fn from(event: Event) -> Self {
        event.into_notification()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::ErrorKind;
    use crate::wire::{check_payload, DEFAULT_MAX_PAYLOAD_BYTES};

    fn as_json(payload: &[u8]) -> Value {
        serde_json::from_slice(payload).expect("payload is JSON")
    }

    #[test]
    fn free_form_notification_has_only_the_required_fields() {
        let n = Notification::new(Level::Success, "Saved");
        let payload = n.to_payload(DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
        assert_eq!(payload, br#"{"type":"success","message":"Saved"}"#);
        check_payload(&payload, DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
    }

    #[test]
    fn all_fields_serialise_in_order() {
        let n = Notification::new(Level::Error, "Payment failed")
            .with_event("payment.failed")
            .with_data("booking_id", 7u64)
            .with_data("note", "card declined")
            .with_timestamp(1_700_000_000_000);
        let payload = n.to_payload(DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
        assert_eq!(
            as_json(&payload),
            json!({
                "type": "error",
                "message": "Payment failed",
                "event": "payment.failed",
                "data": {"booking_id": 7, "note": "card declined"},
                "timestamp": 1_700_000_000_000u64,
            })
        );
        // Field order is part of the documented shape, so check the text too.
        let text = String::from_utf8(payload.clone()).unwrap();
        let positions: Vec<usize> = [
            "\"type\"",
            "\"message\"",
            "\"event\"",
            "\"data\"",
            "\"timestamp\"",
        ]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");

        let info = check_payload(&payload, DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
        assert_eq!(info.level, Level::Error);
        assert_eq!(info.timestamp_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn round_trips_through_serde() {
        let n = Notification::new(Level::Warning, "ünïcödé ✓ \"quoted\"\n")
            .with_event("x")
            .with_data("nested", json!({"a": [1, 2]}))
            .with_timestamp_now();
        let payload = n.to_payload(DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
        let back: Notification = serde_json::from_slice(&payload).unwrap();
        assert_eq!(back, n);
        // Absent optional fields deserialise to their defaults.
        let minimal: Notification =
            serde_json::from_str(r#"{"type":"info","message":"hi"}"#).unwrap();
        assert_eq!(minimal, Notification::new(Level::Info, "hi"));
    }

    #[test]
    fn blank_messages_are_invalid_input() {
        for blank in ["", "   ", "\n\t"] {
            let err = Notification::new(Level::Info, blank)
                .to_payload(DEFAULT_MAX_PAYLOAD_BYTES)
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{blank:?}");
        }
    }

    #[test]
    fn oversized_notifications_are_too_large() {
        let n = Notification::new(Level::Info, "big").with_data("blob", "x".repeat(100));
        let err = n.to_payload(64).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert!(matches!(err, PublishError::TooLarge { max: 64, .. }));

        // The limit is inclusive: a payload of exactly max_bytes is fine.
        let exact = n.to_payload(usize::MAX).unwrap().len();
        assert_eq!(n.to_payload(exact).unwrap().len(), exact);
        assert_eq!(
            n.to_payload(exact - 1).unwrap_err().kind(),
            ErrorKind::TooLarge
        );
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_millis() > 1_577_836_800_000);
    }

    #[test]
    fn loose_fields_make_free_form_or_typed_notifications() {
        let free = Notification::from_fields(
            Some(Level::Info),
            Some("hi".into()),
            Some("custom.thing"),
            json!({"any": [1]}).as_object().unwrap().clone(),
        )
        .unwrap();
        assert_eq!(
            free,
            Notification::new(Level::Info, "hi")
                .with_event("custom.thing")
                .with_data("any", json!([1]))
        );

        let data = json!({"booking_id": 1, "slot": "A-1"});
        let typed = |message: Option<&str>| {
            Notification::from_fields(
                None,
                message.map(str::to_owned),
                Some("booking.expired"),
                data.as_object().unwrap().clone(),
            )
        };
        let n = typed(None).unwrap();
        assert_eq!(n.level, Level::Info);
        assert_eq!(n.message, "Your booking for slot A-1 has expired");
        assert_eq!(typed(Some("Expirée")).unwrap().message, "Expirée");

        let missing_message = Notification::from_fields(Some(Level::Info), None, None, Map::new());
        assert!(matches!(missing_message, Err(PublishError::Incomplete(_))));
        let nothing = Notification::from_fields(None, Some("x".into()), None, Map::new());
        assert_eq!(nothing.unwrap_err().kind(), ErrorKind::InvalidInput);
        let unknown = Notification::from_fields(None, None, Some("nope"), Map::new());
        assert!(matches!(
            unknown,
            Err(PublishError::InvalidEvent(
                crate::EventError::UnknownEvent { .. }
            ))
        ));
    }
}
