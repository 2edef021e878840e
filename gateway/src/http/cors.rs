//! CORS for the inbox (`GET /api/notifications/{user_id}`), so that a front end on another
//! origin can read it with `fetch`, and for the socket path, so that the browser client's
//! probe (a plain GET of the socket URL after a refused upgrade) can read why: only origins of `origin.allowed` (the same list, and the
//! same matching, as the WebSocket Origin check) get `Access-Control-Allow-Origin`, echoed
//! back, never `*`. With the list empty no origin is allowed to read cross-origin.
//!
//! The token travels in `Authorization: Bearer` (a header a preflight must allow) or
//! `?token=`; no cookies are used, so no `Access-Control-Allow-Credentials`.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

use super::AppState;
use crate::config::Settings;
use crate::net::parse_origin;

/// How long a browser may cache a preflight answer.
const MAX_AGE_SECS: &str = "600";

/// The request's Origin when `origin.allowed` lists it.
fn allowed_origin(settings: &Settings, headers: &header::HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(header::ORIGIN)?;
    let origin = parse_origin(value.to_str().ok()?)?;
    settings
        .origin
        .patterns
        .iter()
        .any(|p| p.matches(&origin))
        .then(|| value.clone())
}

/// Adds `Access-Control-Allow-Origin` to every inbox answer (errors included, so a front end
/// can read why) for an allowed Origin; nothing for any other.
pub async fn inbox_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let allowed = req
        .app_data::<web::Data<AppState>>()
        .and_then(|state| allowed_origin(&state.settings, req.headers()));
    let mut response = next.call(req).await?;
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    Ok(response)
}

/// `OPTIONS` (the preflight of a `fetch` with an `Authorization` header): 204 with what may
/// be sent for an allowed Origin, 403 without any CORS header otherwise.
pub async fn preflight(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if allowed_origin(&state.settings, req.headers()).is_none() {
        return HttpResponse::Forbidden().finish();
    }
    HttpResponse::NoContent()
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "Authorization"))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, MAX_AGE_SECS))
        .finish()
}
