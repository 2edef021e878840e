//! The one place refusals become HTTP responses, for the HTTP handlers and the WebSocket
//! upgrade alike.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use publisher::wire::{InvalidStreamId, InvalidUserId};
use serde_json::json;

use crate::auth::AuthError;
use crate::bus::BusError;

/// Every refusal the gateway answers over HTTP. The body is always
/// `{"error": "<code>", "message": "<human text>"}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidUserId(InvalidUserId),
    #[error("last_id: {0}")]
    InvalidLastId(InvalidStreamId),
    #[error("query string: {0}")]
    InvalidQuery(String),
    #[error("not a WebSocket upgrade request: {0}")]
    NotWebSocket(String),
    #[error("this node is shutting down, retry")]
    ShuttingDown,
    #[error("this node holds its maximum number of connections, retry later")]
    TooManyConnections,
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("this user already holds the most sockets allowed on this node ({0}); close one")]
    TooManySocketsForUser(usize),
    #[error("request target longer than {0} bytes")]
    UrlTooLong(usize),
    #[error("request headers larger than {0} bytes in total")]
    HeadersTooLarge(usize),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    InvalidBody(String),
    #[error("notification bus unavailable: {0}")]
    BusUnavailable(String),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidUserId(_) => "invalid_user_id",
            ApiError::InvalidLastId(_) => "invalid_last_id",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::NotWebSocket(_) => "not_websocket",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::Auth(e) => e.code(),
            ApiError::TooManySocketsForUser(_) => "too_many_sockets_for_user",
            ApiError::UrlTooLong(_) => "url_too_long",
            ApiError::HeadersTooLarge(_) => "headers_too_large",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::BusUnavailable(_) => "bus_unavailable",
        }
    }

    fn retry_after_secs(&self) -> Option<u32> {
        match self {
            ApiError::ShuttingDown => Some(1),
            ApiError::TooManyConnections => Some(5),
            ApiError::BusUnavailable(_) => Some(1),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidUserId(_)
            | ApiError::InvalidLastId(_)
            | ApiError::InvalidQuery(_)
            | ApiError::NotWebSocket(_)
            | ApiError::InvalidBody(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Auth(e) if e.is_forbidden() => StatusCode::FORBIDDEN,
            ApiError::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiError::TooManySocketsForUser(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UrlTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::ShuttingDown | ApiError::TooManyConnections | ApiError::BusUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after_secs() {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        response.json(json!({ "error": self.code(), "message": self.to_string() }))
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> Self {
        match error {
            BusError::Invalid(m) => ApiError::InvalidBody(m),
            BusError::Unavailable(m) => ApiError::BusUnavailable(m),
        }
    }
}
