//! The browser-facing WebSocket endpoint: `GET /ws/notifications/{user_id}/`.
//!
//! [`upgrade`] checks the request before anything is upgraded, attaches the socket to the
//! user's subscription ([`crate::subscriptions`]), then hands the socket to its own task: the
//! session core ([`crate::session`]) with the WebSocket framing of [`session`].

mod frame_guard;
mod session;

pub use crate::session::CloseCode;

use std::sync::atomic::Ordering::Relaxed;

use actix_web::{web, HttpRequest, HttpResponse};
use publisher::wire::{StreamId, UserId};

use crate::auth::BEARER_PROTOCOL;
use crate::error::ApiError;
use crate::state::AppState;
use crate::subscriptions::TooManySockets;

/// Query parameters of the upgrade request.
#[derive(Debug, Default, serde::Deserialize)]
pub struct UpgradeQuery {
    /// The id of the last notification the client received: it is replayed everything after.
    pub last_id: Option<String>,
}

/// The user of the path and the id to resume after (`?last_id=`; empty means none).
pub(crate) fn parse_target(
    user_id: &str,
    query: &str,
) -> Result<(UserId, Option<StreamId>), ApiError> {
    let user: UserId = user_id.parse().map_err(ApiError::InvalidUserId)?;
    // A query that does not parse (a parameter given twice, say) is refused rather than read
    // as "no resume", which would lose notifications silently.
    let query = web::Query::<UpgradeQuery>::from_query(query)
        .map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
    let resume_after = match query.last_id.as_deref().filter(|s| !s.is_empty()) {
        Some(id) => Some(id.parse().map_err(ApiError::InvalidLastId)?),
        None => None,
    };
    Ok((user, resume_after))
}

pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    user_id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let refused = |e: ApiError| {
        state.metrics.upgrades_refused_total.fetch_add(1, Relaxed);
        state
            .metrics
            .connection_refused(crate::metrics::TransportKind::WebSocket);
        e
    };
    let (user, resume_after) = parse_target(&user_id, req.query_string()).map_err(refused)?;
    if *state.shutdown.borrow() {
        return Err(refused(ApiError::ShuttingDown));
    }
    if state.metrics.sockets_open.load(Relaxed) >= state.settings.server.max_connections as u64 {
        return Err(refused(ApiError::TooManyConnections));
    }
    // Origin and token, before anything is upgraded or registered.
    let admission = state.gate.admit(&req, user).map_err(|error| {
        state.metrics.auth_refused(&error);
        // Never the token or the query string: only the fixed reason.
        let client = state.gate.client_ip(&req);
        tracing::debug!(%user, ?client, reason = error.code(), "upgrade refused");
        refused(ApiError::Auth(error))
    })?;
    let max_frame = state.settings.ws.max_frame_bytes;
    let body = frame_guard::guard(&req, body, max_frame)
        .await
        .map_err(|e| refused(ApiError::NotWebSocket(e.to_string())))?;
    // A browser that offered the `bearer` subprotocol fails the connection unless the answer
    // names it.
    let (response, session, stream) =
        actix_ws::handle_with_protocols(&req, body, &[BEARER_PROTOCOL])
            .map_err(|e| refused(ApiError::NotWebSocket(e.to_string())))?;
    let stream = stream
        .max_frame_size(max_frame)
        .aggregate_continuations()
        .max_continuation_size(max_frame);

    let max_sockets = state.settings.server.max_sockets_per_user;
    let registration = state
        .subscriptions
        .attach(user, max_sockets)
        .await
        .map_err(|TooManySockets| refused(ApiError::TooManySocketsForUser(max_sockets)))?;
    tracing::debug!(%user, socket = registration.socket, "socket open");
    actix_web::rt::spawn(crate::session::run(
        session::WebSocket { session, stream },
        registration,
        resume_after,
        state.get_ref().clone(),
        admission.close_at,
    ));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_and_query_give_the_user_and_the_resume_point() {
        let user = UserId::new(42).unwrap();
        assert_eq!(parse_target("42", "").unwrap(), (user, None));
        assert_eq!(parse_target("42", "last_id=").unwrap(), (user, None));
        assert_eq!(
            parse_target("42", "last_id=1763775600123-4&token=x").unwrap(),
            (user, Some(StreamId::new(1_763_775_600_123, 4)))
        );
    }

    #[test]
    fn bad_users_ids_and_queries_are_refused_not_ignored() {
        for user in ["0", "042", "-1", "abc", "", "99999999999999999999"] {
            assert!(
                matches!(parse_target(user, ""), Err(ApiError::InvalidUserId(_))),
                "{user:?}"
            );
        }
        for id in ["abc", "12", "1-2-3", "-1"] {
            assert!(
                matches!(
                    parse_target("1", &format!("last_id={id}")),
                    Err(ApiError::InvalidLastId(_))
                ),
                "{id:?}"
            );
        }
        // Given twice: which one would it be? Refused rather than guessed.
        assert!(matches!(
            parse_target("1", "last_id=1-0&last_id=2-0"),
            Err(ApiError::InvalidQuery(_))
        ));
    }
}
