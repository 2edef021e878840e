//! One task per socket: it alone writes to the socket, so nothing else ever awaits it.
//!
//! The task drains the socket's hub queue into the WebSocket, reads (and mostly ignores) what
//! the client sends, pings on an interval, and closes the socket with the code that tells the
//! client what to do (see [`CloseCode`]).

use std::time::Duration;

use actix_ws::{AggregatedMessage, AggregatedMessageStream, ProtocolError, Session};
use futures_util::StreamExt;
use tokio::time::{timeout, Instant, MissedTickBehavior};

use super::CloseCode;
use crate::history::{self, Replay};
use crate::hub::{Registration, SocketId};
use crate::state::AppState;
use publisher::wire::{StreamId, UserId};

/// Upper bound for sending the close frame, so a dead peer cannot hold the task.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a session ended.
enum End {
    /// We close with this code.
    Close(CloseCode),
    /// The client closed or the connection is gone; nothing left to send.
    Gone,
}

pub async fn run(
    mut session: Session,
    mut stream: AggregatedMessageStream,
    registration: Registration,
    resume_after: Option<StreamId>,
    state: AppState,
    token_expiry: Option<Instant>,
) {
    let Registration {
        user,
        socket,
        mut outbox,
    } = registration;
    let limits = state.limits;
    let mut shutdown = state.shutdown.clone();
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // Armed only when the socket was opened with an expiring token.
    let expired = tokio::time::sleep_until(token_expiry.unwrap_or_else(Instant::now));
    tokio::pin!(expired);

    // Resume: replay what the client missed before anything live. Live frames queue up in
    // the outbox meanwhile; those the replay already covered are skipped below by id.
    let replayed_up_to = match resume_after {
        // Boxed, as close() below: cold paths whose state would otherwise be part of every
        // idle socket's task (gw-bench scenario c).
        Some(after) => match Box::pin(replay_missed(&mut session, &state, user, after)).await {
            Ok(caught_up) => caught_up,
            Err(end) => {
                Box::pin(close(session, stream, end, &state, user, socket)).await;
                return;
            }
        },
        None => None,
    };

    let end = loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stopping| *stopping) => break End::Close(CloseCode::ServiceRestart),
            _ = &mut expired, if token_expiry.is_some() => break End::Close(CloseCode::TokenExpired),
            frame = outbox.recv() => match frame {
                Some(frame) if frame.id.is_some() && frame.id <= replayed_up_to => {}
                Some(frame) => match timeout(limits.write_timeout, session.text(frame.text.clone())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_closed)) => break End::Gone,
                    Err(_elapsed) => {
                        state.metrics.dropped(crate::metrics::DropCause::SlowClient, 1);
                        break End::Close(CloseCode::SlowConsumer);
                    }
                },
                // The hub dropped our queue: it overflowed.
                None => break End::Close(CloseCode::SlowConsumer),
            },
            message = stream.next() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(AggregatedMessage::Ping(payload))) => {
                        if timeout(limits.write_timeout, session.pong(&payload)).await.is_err() {
                            break End::Close(CloseCode::SlowConsumer);
                        }
                    }
                    // Clients have nothing to say on this protocol yet: text and binary
                    // frames within the size limit are ignored, as Django's consumer did.
                    Some(Ok(AggregatedMessage::Pong(_) | AggregatedMessage::Text(_) | AggregatedMessage::Binary(_))) => {}
                    Some(Ok(AggregatedMessage::Close(_))) => break End::Close(CloseCode::Normal),
                    Some(Err(ProtocolError::Overflow)) => break End::Close(CloseCode::MessageTooBig),
                    Some(Err(error)) if super::frame_guard::is_oversized(&error) => break End::Close(CloseCode::MessageTooBig),
                    Some(Err(error)) => {
                        tracing::debug!(%user, socket, %error, "protocol error");
                        break End::Close(CloseCode::ProtocolError);
                    }
                    None => break End::Gone,
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= limits.idle_timeout {
                    break End::Close(CloseCode::IdleTimeout);
                }
                if timeout(limits.write_timeout, session.ping(b"")).await.is_err() {
                    break End::Close(CloseCode::SlowConsumer);
                }
            }
        }
    };

    Box::pin(close(session, stream, end, &state, user, socket)).await;
}

/// Sends what history holds after `after`, or the missed frame when it cannot tell. Returns
/// the id the client is caught up to.
async fn replay_missed(
    session: &mut Session,
    state: &AppState,
    user: UserId,
    after: StreamId,
) -> Result<Option<StreamId>, End> {
    let limits = &state.limits;
    let read = state.bus.replay_after(user, after, limits.replay_limit);
    let replay = match timeout(limits.history_timeout, read).await {
        Ok(Ok(replay)) => replay,
        Ok(Err(error)) => history_unavailable(user, after, &error.to_string()),
        Err(_elapsed) => history_unavailable(user, after, "read timed out"),
    };
    // The client has everything up to `after` (unless told otherwise): a node catch-up that
    // re-sends older frames must not reach it twice.
    let caught_up = match replay.missed {
        None => replay.last_id().max(Some(after)),
        Some(_) => replay.last_id(),
    };
    for frame in replay.missed.into_iter().chain(replay.entries) {
        match timeout(limits.write_timeout, session.text(frame.text)).await {
            Ok(Ok(())) => {}
            Ok(Err(_closed)) => return Err(End::Gone),
            Err(_elapsed) => {
                state
                    .metrics
                    .dropped(crate::metrics::DropCause::SlowClient, 1);
                return Err(End::Close(CloseCode::SlowConsumer));
            }
        }
    }
    Ok(caught_up)
}

/// Without history the client can only be told that it may have missed notifications.
fn history_unavailable(user: UserId, after: StreamId, reason: &str) -> Replay {
    tracing::warn!(%user, %reason, "history unavailable for resume");
    Replay {
        missed: Some(history::missed_frame(after, after)),
        entries: Vec::new(),
    }
}

/// Ends the socket: the close frame if we close it, then detached from its subscription.
async fn close(
    session: Session,
    stream: AggregatedMessageStream,
    end: End,
    state: &AppState,
    user: UserId,
    socket: SocketId,
) {
    if let End::Close(code) = end {
        tracing::debug!(%user, socket, code = code.code(), "closing socket");
        let _ = timeout(CLOSE_TIMEOUT, session.close(Some(code.reason()))).await;
    }
    // Dropping the session and stream ends the response body, which closes the connection.
    drop(stream);
    state.subscriptions.detach(user, socket);
}
