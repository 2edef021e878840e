//! The session core both transports share: one task per connection, whatever carries it.
//!
//! [`run`] owns a connection from registration to detach: it replays what a resuming client
//! missed (or sends the missed frame), then drains the connection's hub queue with the
//! dedupe rule (frames the replay already covered are skipped by id), beats the heartbeat,
//! ends the session when the token expires or the node drains, and closes a slow consumer.
//! Every write is bounded by `ws.write_timeout_ms`.
//!
//! A [`Transport`] only frames: [`crate::ws`] writes WebSocket text frames and close frames,
//! [`crate::sse`] writes `text/event-stream` events and a final `gateway.close` event. The
//! reasons a session ends are one table for both, [`CloseCode`].

mod close;

pub use close::CloseCode;

use std::future::Future;
use std::time::Duration;

use actix_web::web::Bytes;
use tokio::time::{timeout, Instant, MissedTickBehavior};

use crate::history::{self, Replay};
use crate::hub::{Frame, Registration, SocketId};
use crate::metrics::{DropCause, TransportKind};
use crate::state::{AppState, SessionLimits};
use publisher::wire::{StreamId, UserId};

/// Upper bound for sending the close frame or final event, so a dead peer cannot hold the
/// task.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The connection is gone: nothing more can be written to it.
#[derive(Debug)]
pub struct Gone;

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// We end it for this reason, and tell the client.
    Close(CloseCode),
    /// The client closed or the connection is gone; nothing left to send.
    Gone,
}

/// What the client sent, as far as the session cares.
pub enum Inbound {
    /// Something arrived: the client is alive.
    Heard,
    /// A ping to answer with this payload.
    Ping(Bytes),
    /// The session is over.
    End(End),
}

/// The framing of one kind of connection. The core calls these from its one task, never
/// concurrently, and bounds every write with `ws.write_timeout_ms`.
#[allow(async_fn_in_trait)] // Used generically within this crate, never as `dyn` nor `Send`.
pub trait Transport {
    const KIND: TransportKind;

    /// How often [`Transport::heartbeat`] is called.
    fn heartbeat_interval(limits: &SessionLimits) -> Duration;

    /// Silence after which the client is given up, `None` when the client never speaks.
    fn idle_timeout(limits: &SessionLimits) -> Option<Duration>;

    /// Writes one notification (or missed frame).
    async fn send(&mut self, frame: &Frame) -> Result<(), Gone>;

    /// Keeps the connection (and every proxy on the way) from being idle.
    async fn heartbeat(&mut self) -> Result<(), Gone>;

    /// Answers a ping the client sent ([`Inbound::Ping`]).
    async fn pong(&mut self, _payload: &[u8]) -> Result<(), Gone> {
        Ok(())
    }

    /// Waits for the client. Must be cancel-safe: it is raced against everything else.
    async fn receive(&mut self) -> Inbound;

    /// Tells the client why the session ends, if we end it, and ends the connection.
    async fn close(self, end: End);
}

/// The heartbeat rule: beat every interval; a client heard from by no frame at all (pongs
/// included) for the idle timeout is given up at the next beat. (The timeout is passed to
/// [`Heartbeat::tick`] rather than stored: this lives in every idle connection's task.)
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

    async fn tick(&mut self, idle_timeout: Option<Duration>) -> Beat {
        self.beats.tick().await;
        match idle_timeout {
            Some(idle) if self.last_heard.elapsed() >= idle => Beat::Silent,
            _ => Beat::Ping,
        }
    }
}

/// The timer that ends a session when its token expires, and whether it is armed (the
/// connection was opened with an expiring token).
fn expiry_timer(expiry: Option<Instant>) -> (tokio::time::Sleep, bool) {
    (
        tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)),
        expiry.is_some(),
    )
}

/// Runs one connection until it ends, then detaches it from its user's subscription.
pub async fn run<T: Transport>(
    mut transport: T,
    registration: Registration,
    resume_after: Option<StreamId>,
    state: AppState,
    token_expiry: Option<Instant>,
) {
    let Registration {
        user,
        socket,
        mut outbox,
        subscribed,
    } = registration;
    state.metrics.session_opened(T::KIND);
    let limits = state.limits;
    let idle_timeout = T::idle_timeout(&limits);
    let mut shutdown = state.shutdown.clone();
    let mut heartbeat = Heartbeat::new(T::heartbeat_interval(&limits));
    let (expired, expires) = expiry_timer(token_expiry);
    tokio::pin!(expired);

    // Resume: replay what the client missed before anything live. Live frames queue up in
    // the outbox meanwhile; those the replay already covered are skipped below by id.
    let replayed_up_to = match resume_after {
        // Boxed, as finish() below: cold paths whose state would otherwise be part of every
        // idle connection's task (gw-bench scenario c).
        Some(after) => match Box::pin(replay_missed(
            &mut transport,
            &state,
            user,
            after,
            subscribed,
        ))
        .await
        {
            Ok(caught_up) => caught_up,
            Err(end) => {
                Box::pin(finish(transport, end, &state, user, socket)).await;
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
                Some(frame) => {
                    if let Err(end) = write(&state, transport.send(&frame), true).await {
                        break end;
                    }
                }
                // The hub dropped our queue: it overflowed.
                None => break End::Close(CloseCode::SlowConsumer),
            },
            inbound = transport.receive() => {
                heartbeat.heard();
                match inbound {
                    Inbound::Heard => {}
                    Inbound::Ping(payload) => {
                        if let Err(end) = write(&state, transport.pong(&payload), false).await {
                            break end;
                        }
                    }
                    Inbound::End(end) => break end,
                }
            }
            beat = heartbeat.tick(idle_timeout) => {
                if beat == Beat::Silent {
                    break End::Close(CloseCode::IdleTimeout);
                }
                if let Err(end) = write(&state, transport.heartbeat(), false).await {
                    break end;
                }
            }
        }
    };

    Box::pin(finish(transport, end, &state, user, socket)).await;
}

/// One write within `ws.write_timeout_ms`; a write that takes longer makes the client a slow
/// consumer (counted as a dropped notification when `notification` is true).
async fn write(
    state: &AppState,
    write: impl Future<Output = Result<(), Gone>>,
    notification: bool,
) -> Result<(), End> {
    match timeout(state.limits.write_timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(Gone)) => Err(End::Gone),
        Err(_elapsed) => {
            if notification {
                state.metrics.dropped(DropCause::SlowClient, 1);
            }
            Err(End::Close(CloseCode::SlowConsumer))
        }
    }
}

/// Sends what history holds after `after`, or the missed frame when it cannot tell. Returns
/// the id the client is caught up to.
///
/// A socket that opened before its user's subscription was confirmed (`subscribed` false)
/// may be replayed before the subscription's starting point is read: what is published in
/// between would then reach it neither way. So the hub is told where the replay ended (the
/// subscription starts no later), or, when the subscription already started past it, history
/// is read once more from there.
async fn replay_missed<T: Transport>(
    transport: &mut T,
    state: &AppState,
    user: UserId,
    mut after: StreamId,
    subscribed: bool,
) -> Result<Option<StreamId>, End> {
    let limits = &state.limits;
    let mut reads = 0;
    loop {
        reads += 1;
        let read = state.bus.replay_after(user, after, limits.replay_limit);
        let replay = match timeout(limits.history_timeout, read).await {
            Ok(Ok(replay)) => replay,
            Ok(Err(error)) => history_unavailable(user, after, &error.to_string()),
            Err(_elapsed) => history_unavailable(user, after, "read timed out"),
        };
        // The client has everything up to `after` (unless told otherwise): a node catch-up
        // that re-sends older frames must not reach it twice.
        let caught_up = match replay.missed {
            None => replay.last_id().max(Some(after)),
            Some(_) => replay.last_id(),
        };
        for frame in replay.missed.iter().chain(&replay.entries) {
            write(state, transport.send(frame), true).await?;
        }
        match caught_up {
            Some(upto)
                if !subscribed
                    && reads == 1
                    && state.subscriptions.replayed_unsubscribed(user, upto) =>
            {
                after = upto;
            }
            _ => return Ok(caught_up),
        }
    }
}

/// Without history the client can only be told that it may have missed notifications.
fn history_unavailable(user: UserId, after: StreamId, reason: &str) -> Replay {
    tracing::warn!(%user, %reason, "history unavailable for resume");
    Replay {
        missed: Some(history::missed_frame(after, after)),
        entries: Vec::new(),
    }
}

/// Ends the connection: told why if we end it, then detached from its subscription.
async fn finish<T: Transport>(
    transport: T,
    end: End,
    state: &AppState,
    user: UserId,
    socket: SocketId,
) {
    if let End::Close(code) = end {
        tracing::debug!(%user, socket, code = code.code(), transport = T::KIND.label(), "closing");
    }
    let _ = timeout(CLOSE_TIMEOUT, transport.close(end)).await;
    state.metrics.session_closed(T::KIND, end);
    state.subscriptions.detach(user, socket);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: Duration = Duration::from_secs(10);
    const IDLE: Option<Duration> = Some(Duration::from_secs(25));

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
    async fn a_client_that_never_speaks_is_never_given_up_for_silence() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(PING);
        for _ in 0..100 {
            assert_eq!(heartbeat.tick(None).await, Beat::Ping);
        }
        assert_eq!(start.elapsed(), Duration::from_secs(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_ends_its_session_at_its_expiry_and_no_token_never_does() {
        let start = Instant::now();
        let (timer, armed) = expiry_timer(Some(start + Duration::from_secs(3600)));
        assert!(armed);
        timer.await;
        assert_eq!(start.elapsed(), Duration::from_secs(3600));
        let (_, armed) = expiry_timer(None);
        assert!(!armed, "no expiry: the timer is never selected");
    }
}
