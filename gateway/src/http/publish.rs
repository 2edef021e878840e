//! `POST /api/publish`: publishing for services that would rather speak HTTP than Redis.
//!
//! Body: `"user": N` or `"users": [N, ...]`, plus either
//! - a free-form notification of `docs/PROTOCOL.md`: `"type"`, `"message"`, optional
//!   `"event"`, `"data"`, `"timestamp"`; or
//! - a typed event without `"type"`: `"event": "booking.expiring_soon", "data": {...}`, which
//!   gets the event's level and default message (or `"message"` when given).
//!
//! The rule is publisher-lib's [`Notification::from_fields`], so the `notify` CLI behaves the
//! same. It goes through the same bus (and so the same Redis path as publisher-lib) as any
//! other notification. Answer: `{"receivers": <nodes that received it, summed over users>}`.

use actix_web::{web, HttpRequest, HttpResponse};
use publisher::wire::UserId;
use publisher::{Level, Notification};
use serde_json::{json, Map, Value};

use super::{ApiError, AppState};

/// Users one request may address.
const MAX_USERS_PER_REQUEST: usize = 1000;

/// The body's fields; anything else is refused so a misspelt key is not silently ignored.
const FIELDS: [&str; 7] = [
    "user",
    "users",
    "type",
    "message",
    "event",
    "data",
    "timestamp",
];

/// What a publish request asks for, read field by field so every error names its field.
pub(super) struct PublishRequest {
    pub(super) users: Vec<UserId>,
    pub(super) notification: Notification,
}

impl PublishRequest {
    pub(super) fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let invalid = |message: String| ApiError::InvalidBody(message);
        let mut body = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err(invalid("the body must be a JSON object".into())),
            Err(e) => return Err(invalid(format!("the body is not JSON: {e}"))),
        };
        if let Some(unknown) = body.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(invalid(format!(
                "unknown field \"{unknown}\" (fields: {})",
                FIELDS.join(", ")
            )));
        }

        let user_id = |value: &Value| {
            value.as_u64().and_then(UserId::new).ok_or_else(|| {
                invalid(format!(
                    "user id {value} is not a positive integer up to {}",
                    UserId::MAX
                ))
            })
        };
        let mut users = Vec::new();
        if let Some(value) = body.get("user") {
            users.push(user_id(value)?);
        }
        match body.get("users") {
            None => {}
            Some(Value::Array(ids)) if ids.len() <= MAX_USERS_PER_REQUEST => {
                for id in ids {
                    users.push(user_id(id)?);
                }
            }
            Some(_) => {
                return Err(invalid(format!(
                    "\"users\" must be an array of at most {MAX_USERS_PER_REQUEST} user ids"
                )))
            }
        }
        // A user named twice gets the notification once.
        users.sort_unstable();
        users.dedup();
        if users.is_empty() || users.len() > MAX_USERS_PER_REQUEST {
            return Err(invalid(format!(
                "give \"user\" or \"users\" with 1 to {MAX_USERS_PER_REQUEST} ids"
            )));
        }

        let mut text = |field: &'static str| match body.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(format!("\"{field}\" must be a string"))),
        };
        let level = text("type")?
            .map(|name| {
                name.parse::<Level>().map_err(|_| {
                    invalid(format!(
                        "\"type\" {name:?} is none of success, info, warning, error"
                    ))
                })
            })
            .transpose()?;
        let message = text("message")?;
        let event = text("event")?;
        let data = match body.remove("data") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(data)) => data,
            Some(_) => return Err(invalid("\"data\" must be a JSON object".into())),
        };
        let timestamp = match body.remove("timestamp") {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                value
                    .as_f64()
                    .filter(|ms| ms.is_finite() && *ms >= 0.0)
                    .map(|ms| ms as u64)
                    .ok_or_else(|| {
                        invalid(
                            "\"timestamp\" must be a non-negative number of milliseconds since the Unix epoch"
                                .into(),
                        )
                    })?,
            ),
        };

        let notification = Notification::from_fields(level, message, event.as_deref(), data)
            .map_err(|e| invalid(e.to_string()))?;
        let notification = match timestamp {
            Some(ms) => notification.with_timestamp(ms),
            None => notification.with_timestamp_now(),
        };
        Ok(PublishRequest {
            users,
            notification,
        })
    }
}

pub async fn publish(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    deliver(&body, &state).await
}

/// Parses a publish body and sends it through the bus; shared with the demo page's form.
pub(super) async fn deliver(body: &[u8], state: &AppState) -> Result<HttpResponse, ApiError> {
    let PublishRequest {
        users,
        notification,
    } = PublishRequest::parse(body)?;
    let payload = notification
        .to_payload(state.settings.redis.max_payload_bytes)
        .map_err(|e| ApiError::InvalidBody(e.to_string()))?;

    // One pipelined call for every user: a retry inside it never publishes twice.
    let receivers = state.bus.publish(users, payload).await?;
    Ok(HttpResponse::Ok().json(json!({ "receivers": receivers })))
}

/// With API keys configured, one must be presented as a bearer token. Without any, only
/// clients on this machine may publish (local development); a request relayed by a proxy on
/// this machine is not local (see [`crate::auth::Gate::is_local`]).
pub(super) fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let keys = &state.settings.publish.api_keys;
    if keys.is_empty() {
        return if state.gate.is_local(req) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized(
                "no publish API key is configured: only loopback clients may publish",
            ))
        };
    }
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized(
            "missing header Authorization: Bearer <publish API key>",
        ))?;
    // Compare every key in full so the time taken does not tell how much of a key matched.
    let matched = keys.iter().fold(false, |found, key| {
        found | constant_time_eq(key.as_bytes(), presented.as_bytes())
    });
    if matched {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("invalid publish API key"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<PublishRequest, String> {
        PublishRequest::parse(body.as_bytes()).map_err(|e| match e {
            ApiError::InvalidBody(message) => message,
            other => panic!("not an invalid-body error: {other:?}"),
        })
    }

    fn user(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn a_free_form_notification_to_several_users_each_once() {
        let request = parse(
            r#"{"user": 3, "users": [1, 3, 2], "type": "info", "message": "hi", "timestamp": 1700000000000}"#,
        )
        .unwrap();
        assert_eq!(request.users, vec![user(1), user(2), user(3)]);
        assert_eq!(request.notification.level, Level::Info);
        assert_eq!(request.notification.message, "hi");
        assert_eq!(request.notification.timestamp, Some(1_700_000_000_000));
    }

    #[test]
    fn a_typed_event_gets_its_level_and_default_message() {
        let request = parse(
            r#"{"user": 7, "event": "carwash.completed", "data": {"booking_id": 7, "service": "Basic"}}"#,
        )
        .unwrap();
        assert_eq!(request.notification.level, Level::Success);
        assert_eq!(
            request.notification.message,
            "Your car wash (Basic) is complete"
        );
        assert!(request.notification.timestamp.is_some(), "stamped now");
    }

    #[test]
    fn every_bad_body_names_what_is_wrong() {
        let cases = [
            ("not json", "not JSON"),
            ("[1]", "must be a JSON object"),
            (
                r#"{"user": 1, "type": "info", "message": "x", "mesage": 1}"#,
                "unknown field \"mesage\"",
            ),
            (
                r#"{"type": "info", "message": "x"}"#,
                "give \"user\" or \"users\"",
            ),
            (
                r#"{"user": 0, "type": "info", "message": "x"}"#,
                "user id 0",
            ),
            (
                r#"{"user": -1, "type": "info", "message": "x"}"#,
                "user id -1",
            ),
            (
                r#"{"user": "1", "type": "info", "message": "x"}"#,
                "user id \"1\"",
            ),
            (
                r#"{"users": 1, "type": "info", "message": "x"}"#,
                "\"users\" must be an array",
            ),
            (
                r#"{"user": 1, "type": "debug", "message": "x"}"#,
                "\"type\" \"debug\" is none of",
            ),
            (
                r#"{"user": 1, "type": 1, "message": "x"}"#,
                "\"type\" must be a string",
            ),
            (r#"{"user": 1, "type": "info"}"#, "needs a \"message\""),
            (
                r#"{"user": 1, "type": "info", "message": "x", "data": []}"#,
                "\"data\" must be a JSON object",
            ),
            (
                r#"{"user": 1, "type": "info", "message": "x", "timestamp": -5}"#,
                "\"timestamp\" must be",
            ),
            (r#"{"user": 1, "event": "nope"}"#, "unknown event \"nope\""),
            (
                r#"{"user": 1, "event": "carwash.completed", "data": {"booking_id": 7}}"#,
                "needs field `service`",
            ),
        ];
        for (body, expected) in cases {
            let error = parse(body)
                .err()
                .unwrap_or_else(|| panic!("accepted {body}"));
            assert!(
                error.contains(expected),
                "{body}: {error:?} lacks {expected:?}"
            );
        }
        let too_many: Vec<u64> = (1..=MAX_USERS_PER_REQUEST as u64 + 1).collect();
        let body = format!(r#"{{"users": {too_many:?}, "type": "info", "message": "x"}}"#);
        assert!(parse(&body).err().unwrap().contains("at most 1000"));
    }
}
