//! `GET /api/notifications/{user_id}?before=<id>&limit=<n>`: a user's retained notifications,
//! newest first, for an inbox shown after the app was closed for hours.
//!
//! Answer: `{"notifications": [<notification with "id">...], "next_before": "<id>" | null}`;
//! pass `next_before` as `before` to get the next (older) page. With `auth.mode = "jwt"` the
//! request carries the user's token (`Authorization: Bearer <jwt>` or `?token=`), as the
//! user's socket does.

use actix_web::{web, HttpRequest, HttpResponse};
use publisher::wire::{StreamId, UserId};
use serde::Deserialize;

use super::{ApiError, AppState};

#[derive(Deserialize)]
struct PageQuery {
    before: Option<String>,
    limit: Option<usize>,
}

/// `before` (empty means from the newest) and `limit`, clamped to 1..=`max` (`max` when absent).
fn parse_page(query: &str, max: usize) -> Result<(Option<StreamId>, usize), ApiError> {
    let query = web::Query::<PageQuery>::from_query(query)
        .map_err(|e| ApiError::InvalidBody(format!("query: {e}")))?;
    let before = match query.before.as_deref().filter(|s| !s.is_empty()) {
        Some(id) => Some(id.parse().map_err(ApiError::InvalidLastId)?),
        None => None,
    };
    Ok((before, query.limit.unwrap_or(max).clamp(1, max)))
}

pub async fn notifications(
    req: HttpRequest,
    user_id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let user: UserId = user_id.parse().map_err(ApiError::InvalidUserId)?;
    // The same token as the user's socket: nobody reads another user's notifications.
    state.gate.authenticate(&req, user).map_err(|error| {
        state.metrics.auth_refused(&error);
        ApiError::Auth(error)
    })?;
    let (before, limit) = parse_page(req.query_string(), state.settings.history.page_limit)?;
    let frames = state.bus.history_page(user, before, limit).await?;
    let next_before = match frames.last().and_then(|f| f.id) {
        Some(id) if frames.len() == limit => format!("\"{id}\""),
        _ => "null".to_owned(),
    };
    // The stored notifications are JSON objects already: join them rather than re-encode.
    let mut body =
        String::with_capacity(frames.iter().map(|f| f.text.len() + 1).sum::<usize>() + 64);
    body.push_str("{\"notifications\":[");
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&frame.text);
    }
    body.push_str("],\"next_before\":");
    body.push_str(&next_before);
    body.push('}');
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_query_gives_the_start_and_a_limit_within_bounds() {
        assert_eq!(parse_page("", 100).unwrap(), (None, 100));
        assert_eq!(parse_page("before=&limit=5", 100).unwrap(), (None, 5));
        assert_eq!(
            parse_page("before=10-2&limit=500", 100).unwrap(),
            (Some(StreamId::new(10, 2)), 100)
        );
        assert_eq!(parse_page("limit=0", 100).unwrap().1, 1);
    }

    #[test]
    fn a_bad_page_query_is_refused() {
        assert!(matches!(
            parse_page("before=x", 100),
            Err(ApiError::InvalidLastId(_))
        ));
        assert!(matches!(
            parse_page("limit=-1", 100),
            Err(ApiError::InvalidBody(_))
        ));
        assert!(matches!(
            parse_page("limit=ten", 100),
            Err(ApiError::InvalidBody(_))
        ));
    }
}
