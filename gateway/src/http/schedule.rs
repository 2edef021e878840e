//! Scheduled notifications and presence on the server API, with the same API keys as
//! `POST /api/publish`:
//!
//! - `POST /api/schedule`: `{"key": "booking:1881:expiring", "at": <ms since the epoch>,
//!   "user": N, ...}` plus the notification fields of `/api/publish` (`type` + `message`, or a
//!   typed `event` + `data`). Scheduling a key again replaces its item. Answer
//!   `{"key": ..., "at": ...}`.
//! - `DELETE /api/schedule/{key}`: answer `{"cancelled": true|false}` (false: no such item,
//!   e.g. it already fired).
//! - `POST /api/presence`: `{"users": [N, ...], "nodes": false}` (at most 1000 ids). Answer
//!   `{"presence": {"N": sockets, ...}}`, or with `"nodes": true`
//!   `{"presence": {"N": {"sockets": s, "nodes": {"<node id>": s, ...}}}}`.
//!
//! Details for other languages: docs/SCHEDULING.md.

use actix_web::{web, HttpRequest, HttpResponse};
use publisher::schedule::MAX_PRESENCE_USERS;
use publisher::wire::UserId;
use serde_json::{json, Map, Value};

use super::publish::{authorize, PublishRequest};
use super::{ApiError, AppState};
use crate::schedule::ScheduleError;

impl From<ScheduleError> for ApiError {
    fn from(error: ScheduleError) -> Self {
        match error {
            ScheduleError::Invalid(m) => ApiError::InvalidBody(m),
            ScheduleError::Unavailable(m) => ApiError::BusUnavailable(m),
        }
    }
}

/// `key`, `at` and `user` taken out of a schedule body; the rest is a notification.
fn parse_schedule(body: &[u8]) -> Result<(String, u64, PublishRequest), ApiError> {
    let invalid = |message: &str| ApiError::InvalidBody(message.to_owned());
    let mut object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err(invalid("the body must be a JSON object")),
        Err(e) => return Err(ApiError::InvalidBody(format!("the body is not JSON: {e}"))),
    };
    let key = match object.remove("key") {
        Some(Value::String(key)) => key,
        _ => {
            return Err(invalid(
                "\"key\" must be a string naming the item, e.g. \"booking:1881:expiring\"",
            ))
        }
    };
    let at = object
        .remove("at")
        .and_then(|at| at.as_u64())
        .ok_or_else(|| {
            invalid("\"at\" must be the due time in milliseconds since the Unix epoch")
        })?;
    if object.contains_key("users") {
        return Err(invalid(
            "a scheduled item has one \"user\"; schedule one key per user",
        ));
    }
    if object.contains_key("timestamp") {
        return Err(invalid(
            "\"timestamp\" is the due time \"at\" for scheduled notifications: leave it out",
        ));
    }
    let request =
        PublishRequest::parse(&serde_json::to_vec(&Value::Object(object)).unwrap_or_default())?;
    Ok((key, at, request))
}

pub async fn schedule(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let (key, at, request) = parse_schedule(&body)?;
    let user = request.users[0];
    state
        .scheduler
        .schedule(
            user,
            request.notification,
            at,
            &key,
            state.settings.redis.max_payload_bytes,
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "key": key, "at": at })))
}

pub async fn cancel(
    req: HttpRequest,
    key: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let cancelled = state.scheduler.cancel(&key).await?;
    Ok(HttpResponse::Ok().json(json!({ "cancelled": cancelled })))
}

fn parse_presence(body: &[u8]) -> Result<(Vec<UserId>, bool), ApiError> {
    let invalid = |message: String| ApiError::InvalidBody(message);
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err(invalid("the body must be a JSON object".into())),
        Err(e) => return Err(invalid(format!("the body is not JSON: {e}"))),
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !["users", "nodes"].contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "unknown field \"{unknown}\" (fields: users, nodes)"
        )));
    }
    let ids = match object.get("users") {
        Some(Value::Array(ids)) if !ids.is_empty() && ids.len() <= MAX_PRESENCE_USERS => ids,
        _ => {
            return Err(invalid(format!(
                "\"users\" must be an array of 1 to {MAX_PRESENCE_USERS} user ids"
            )))
        }
    };
    let users = ids
        .iter()
        .map(|value| {
            value.as_u64().and_then(UserId::new).ok_or_else(|| {
                invalid(format!(
                    "user id {value} is not a positive integer up to {}",
                    UserId::MAX
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let nodes = match object.get("nodes") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("\"nodes\" must be true or false".into())),
    };
    Ok((users, nodes))
}

pub async fn presence(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let (users, with_nodes) = parse_presence(&body)?;
    let counts = state
        .scheduler
        .presence(&users, with_nodes, &state.presence)
        .await?;
    let mut answer = Map::new();
    for (user, presence) in users.iter().zip(counts) {
        let value = if with_nodes {
            let nodes: Map<String, Value> = presence
                .nodes
                .into_iter()
                .map(|(node, n)| (node, json!(n)))
                .collect();
            json!({ "sockets": presence.sockets, "nodes": nodes })
        } else {
            json!(presence.sockets)
        };
        answer.insert(user.to_string(), value);
    }
    Ok(HttpResponse::Ok().json(json!({ "presence": answer })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error<T>(result: Result<T, ApiError>) -> String {
        match result {
            Err(ApiError::InvalidBody(m)) => m,
            Err(other) => panic!("not an invalid-body error: {other:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn schedule_bodies_are_checked_field_by_field() {
        let (key, at, request) = parse_schedule(
            br#"{"key": "booking:1:expired", "at": 1765000000000, "user": 7, "event": "booking.expired", "data": {"booking_id": 1, "slot": "A-1"}}"#,
        )
        .unwrap();
        assert_eq!((key.as_str(), at), ("booking:1:expired", 1_765_000_000_000));
        assert_eq!(request.users, [UserId::new(7).unwrap()]);
        for (body, expected) in [
            (
                r#"{"at": 1, "user": 1, "type": "info", "message": "x"}"#,
                "\"key\" must be",
            ),
            (
                r#"{"key": "k", "user": 1, "type": "info", "message": "x"}"#,
                "\"at\" must be",
            ),
            (
                r#"{"key": "k", "at": -1, "user": 1, "type": "info", "message": "x"}"#,
                "\"at\" must be",
            ),
            (
                r#"{"key": "k", "at": 1, "users": [1], "type": "info", "message": "x"}"#,
                "one \"user\"",
            ),
            (
                r#"{"key": "k", "at": 1, "user": 1, "timestamp": 1, "type": "info", "message": "x"}"#,
                "leave it out",
            ),
            (
                r#"{"key": "k", "at": 1, "user": 1, "event": "nope"}"#,
                "unknown event",
            ),
            (
                r#"{"key": "k", "at": 1, "user": 0, "type": "info", "message": "x"}"#,
                "user id 0",
            ),
        ] {
            let message = error(parse_schedule(body.as_bytes()));
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[test]
    fn presence_bodies_are_checked() {
        let (users, nodes) = parse_presence(br#"{"users": [1, 2], "nodes": true}"#).unwrap();
        assert_eq!(users.len(), 2);
        assert!(nodes);
        let too_many: Vec<u64> = (1..=1001).collect();
        for body in [
            "{}".to_owned(),
            r#"{"users": []}"#.to_owned(),
            r#"{"users": [0]}"#.to_owned(),
            r#"{"users": [1], "nodes": 1}"#.to_owned(),
            r#"{"users": [1], "extra": 1}"#.to_owned(),
            format!(r#"{{"users": {too_many:?}}}"#),
        ] {
            error(parse_presence(body.as_bytes()));
        }
    }
}
