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

/// The heartbeat rule: ping every interval; a client heard from by no frame at all (pongs
/// included) for the idle timeout is given up at the next beat. (The timeout is passed to
/// [`Heartbeat::tick`] rather than stored: this lives in every idle socket's task.)
struct Heartbeat {
    beats: tokio::time::Interval,
    last_heard: Instant,
}

#[derive(Debug, PartialEq, Eq)]
enum Beat {
    /// Time to ping.
    Ping,
    /// Nothing heard for the idle timeout.
    Silent,
}

impl Heartbeat {
    fn new(interval: Duration) -> Self {
        let mut beats = tokio::time::interval_at(Instant::now() + interval, interval);
        beats.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Heartbeat {
            beats,
            last_heard: Instant::now(),
        }
    }

    /// The client sent something.
    fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    async fn tick(&mut self, idle_timeout: Duration) -> Beat {
        self.beats.tick().await;
        if self.last_heard.elapsed() >= idle_timeout {
            Beat::Silent
        } else {
            Beat::Ping
        }
    }
}

/// The timer that closes a socket when its token expires, and whether it is armed (the
/// socket was opened with an expiring token).
fn expiry_timer(expiry: Option<Instant>) -> (tokio::time::Sleep, bool) {
    (
        tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)),
        expiry.is_some(),
    )
}

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
    let mut heartbeat = Heartbeat::new(limits.ping_interval);
    let (expired, expires) = expiry_timer(token_expiry);
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
            _ = &mut expired, if expires => break End::Close(CloseCode::TokenExpired),
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
                heartbeat.heard();
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
            beat = heartbeat.tick(limits.idle_timeout) => {
                if beat == Beat::Silent {
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

#[cfg(test)]
mod tests {
    use super::*;

    const PING: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(25);

    /// The beats of `heartbeat` until it gives up, with the seconds since `start` of each.
    async fn beats_until_silent(heartbeat: &mut Heartbeat, start: Instant) -> Vec<(u64, Beat)> {
        let mut beats = Vec::new();
        loop {
            let beat = heartbeat.tick(IDLE).await;
            let at = start.elapsed().as_secs();
            let silent = beat == Beat::Silent;
            beats.push((at, beat));
            if silent {
                return beats;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_given_up_at_the_first_beat_past_the_idle_timeout() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(PING);
        assert_eq!(
            beats_until_silent(&mut heartbeat, start).await,
            vec![(10, Beat::Ping), (20, Beat::Ping), (30, Beat::Silent)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn anything_heard_from_the_client_restarts_the_idle_clock() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(PING);
        assert_eq!(heartbeat.tick(IDLE).await, Beat::Ping);
        tokio::time::sleep_until(start + Duration::from_secs(15)).await;
        heartbeat.heard();
        assert_eq!(
            beats_until_silent(&mut heartbeat, start).await,
            // Heard at 15: 40 is the first beat at least 25 s later.
            vec![(20, Beat::Ping), (30, Beat::Ping), (40, Beat::Silent)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_closes_its_socket_at_its_expiry_and_no_token_never_does() {
        let start = Instant::now();
        let (timer, armed) = expiry_timer(Some(start + Duration::from_secs(3600)));
        assert!(armed);
        timer.await;
        assert_eq!(start.elapsed(), Duration::from_secs(3600));
        let (_, armed) = expiry_timer(None);
        assert!(!armed, "no expiry: the timer is never selected");
    }
}
