//! Lets a page of an allowed origin read why its socket was refused.
//!
//! A browser never shows a page the HTTP answer to a refused WebSocket upgrade, so the browser
//! client (`clients/js`) asks the same URL with a plain `GET` and the token in
//! `Authorization` (docs/PROTOCOL.md, "Connecting"). From a page of another origin that GET
//! needs CORS: a preflight (`OPTIONS`, because of the `Authorization` header) and
//! `Access-Control-Allow-Origin` on the answer. Both are given on the socket path only, and
//! only to origins that may open sockets anyway (`origin.allowed`; any origin while that list
//! is empty, when any page may open sockets). No cookies are involved (no
//! `Access-Control-Allow-Credentials`), and what such a page can read is the refusal's code
//! and fixed message.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::AppState;

const SOCKET_PATH: &str = "/ws/notifications/";

pub async fn socket_probe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let origin = req
        .path()
        .starts_with(SOCKET_PATH)
        .then(|| req.headers().get(header::ORIGIN).cloned())
        .flatten()
        .filter(|origin| {
            let state = req.app_data::<web::Data<AppState>>();
            let text = origin.to_str().ok();
            state
                .zip(text)
                .is_some_and(|(state, origin)| state.gate.allows_origin(origin))
        });
    let Some(origin) = origin else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    if req.method() == Method::OPTIONS {
        let preflight = HttpResponse::NoContent()
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET"))
            .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "authorization"))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
            .insert_header((header::VARY, "Origin"))
            .finish()
            .map_into_right_body();
        return Ok(req.into_response(preflight));
    }
    let mut response = next.call(req).await?;
    if response.status().is_client_error() || response.status().is_server_error() {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    Ok(response.map_into_left_body())
}
