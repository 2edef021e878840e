//! Size limits on every request head (`server.max_url_bytes`, `server.max_header_bytes`),
//! checked before any handler runs. actix-web itself refuses heads over 128 KiB or with more
//! than 96 headers (431) and, through `server.handshake_timeout_ms`, heads that arrive too
//! slowly (408).

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};

use super::{ApiError, AppState};

pub async fn request_head(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let refusal = req.app_data::<web::Data<AppState>>().and_then(|state| {
        let server = &state.settings.server;
        let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if target > server.max_url_bytes {
            return Some(ApiError::UrlTooLong(server.max_url_bytes));
        }
        let headers: usize = req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        (headers > server.max_header_bytes)
            .then_some(ApiError::HeadersTooLarge(server.max_header_bytes))
    });
    match refusal {
        Some(error) => {
            let response = error.error_response().map_into_right_body();
            Ok(req.into_response(response))
        }
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
    }
}
