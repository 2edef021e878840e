//! The browser-facing WebSocket endpoint: `GET /ws/notifications/{user_id}/`.
//!
//! [`upgrade`] checks the request before anything is upgraded, registers the socket with the
//! hub, waits (bounded) until the bus delivers the user's channel, then hands the socket to
//! its own task in [`session`].

mod close;
mod frame_guard;
mod session;

pub use close::CloseCode;

use std::sync::atomic::Ordering::Relaxed;

use actix_web::{web, HttpRequest, HttpResponse};
use publisher::wire::{StreamId, UserId};

use crate::auth::BEARER_PROTOCOL;
use crate::config::ms;
use crate::error::ApiError;
use crate::hub::SocketId;
use crate::state::AppState;

/// Query parameters of the upgrade request.
#[derive(Debug, Default, serde::Deserialize)]
pub struct UpgradeQuery {
    /// The id of the last notification the client received: it is replayed everything after.
    pub last_id: Option<String>,
}

pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    user_id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let refused = |e: ApiError| {
        state.metrics.upgrades_refused_total.fetch_add(1, Relaxed);
        e
    };
    let user: UserId = user_id
        .parse()
        .map_err(|e| refused(ApiError::InvalidUserId(e)))?;
    // A query that does not parse (a parameter given twice, say) is refused rather than read
    // as "no resume", which would lose notifications silently.
    let query = web::Query::<UpgradeQuery>::from_query(req.query_string())
        .map_err(|e| refused(ApiError::InvalidQuery(e.to_string())))?;
    let resume_after: Option<StreamId> = match query.last_id.as_deref().filter(|s| !s.is_empty()) {
        Some(id) => Some(
            id.parse()
                .map_err(|e| refused(ApiError::InvalidLastId(e)))?,
        ),
        None => None,
    };
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
    let (registration, _first) = state
        .hub
        .try_register(user, max_sockets)
        .ok_or_else(|| refused(ApiError::TooManySocketsForUser(max_sockets)))?;
    // Until the socket task owns the registration, a client that gives up (actix then drops
    // this future mid-await) must not leave it behind.
    let pending = PendingSocket {
        state: state.get_ref(),
        user,
        socket: registration.socket,
    };
    // Every socket waits for the subscription, not only the user's first: a second socket
    // that arrives while the first one's SUBSCRIBE is in flight must not miss anything either.
    let subscribed = state.bus.interest_changed(user);
    if tokio::time::timeout(ms(state.settings.redis.subscribe_timeout_ms), subscribed)
        .await
        .is_err()
    {
        tracing::warn!(%user, "bus did not confirm the subscription in time; socket opens anyway");
    }
    tracing::debug!(%user, socket = registration.socket, "socket open");
    std::mem::forget(pending);
    actix_web::rt::spawn(session::run(
        session,
        stream,
        registration,
        resume_after,
        state.get_ref().clone(),
        admission.close_at,
    ));
    Ok(response)
}

/// Unregisters a socket whose upgrade was abandoned before its task took over.
struct PendingSocket<'a> {
    state: &'a AppState,
    user: UserId,
    socket: SocketId,
}

impl Drop for PendingSocket<'_> {
    fn drop(&mut self) {
        session::unregister(self.state, self.user, self.socket);
    }
}
