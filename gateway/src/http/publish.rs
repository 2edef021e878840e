//! `POST /api/publish`: publishing for services that would rather speak HTTP than Redis.
//!
//! Body: the notification object of `docs/PROTOCOL.md` plus `"user": N` or `"users": [N, ...]`.
//! It goes through the same bus (and so the same Redis path as publisher-lib) as any other
//! notification. Answer: `{"receivers": <nodes that received it, summed over users>}`.

use actix_web::{web, HttpRequest, HttpResponse};
use publisher::wire::UserId;
use publisher::Notification;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState};
use crate::bus::BusError;

/// Users one request may address.
const MAX_USERS_PER_REQUEST: usize = 1000;

#[derive(Deserialize)]
struct PublishRequest {
    #[serde(default)]
    user: Option<u64>,
    #[serde(default)]
    users: Vec<u64>,
    #[serde(flatten)]
    notification: Notification,
}

pub async fn publish(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let request: PublishRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let mut users: Vec<UserId> = Vec::with_capacity(request.users.len() + 1);
    for id in request.user.into_iter().chain(request.users) {
        let user = UserId::new(id).ok_or_else(|| {
            ApiError::InvalidBody(format!(
                "user id {id} is not a positive integer up to {}",
                UserId::MAX
            ))
        })?;
        users.push(user);
    }
    if users.is_empty() || users.len() > MAX_USERS_PER_REQUEST {
        return Err(ApiError::InvalidBody(format!(
            "give \"user\" or \"users\" with 1 to {MAX_USERS_PER_REQUEST} ids"
        )));
    }
    let mut notification = request.notification;
    if notification.timestamp.is_none() {
        notification = notification.with_timestamp_now();
    }
    let payload = notification
        .to_payload(state.settings.redis.max_payload_bytes)
        .map_err(|e| ApiError::InvalidBody(e.to_string()))?;

    let mut receivers = 0;
    for user in users {
        receivers += state
            .bus
            .publish(user, payload.clone())
            .await
            .map_err(|e| match e {
                BusError::Invalid(m) => ApiError::InvalidBody(m),
                BusError::Unavailable(m) => ApiError::BusUnavailable(m),
            })?;
    }
    Ok(HttpResponse::Ok().json(json!({ "receivers": receivers })))
}

/// With API keys configured, one must be presented as a bearer token. Without any, only
/// clients on this machine may publish (local development); a request relayed by a proxy on
/// this machine is not local (see [`crate::auth::Gate::is_local`]).
fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
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
