//! The Server-Sent Events endpoint, for networks that break WebSocket upgrades:
//! `GET /sse/notifications/{user_id}/`, answering `text/event-stream`.
//!
//! [`stream`] checks the request as the WebSocket upgrade does (user id, resume id, limits,
//! origin and token), attaches the connection to the user's subscription, and runs the same
//! session core ([`crate::session`]) with [`EventStream`] as its transport: the response body
//! is a bounded channel the session task writes events into. A reader that stops reading
//! stops actix from taking from the channel; the task's write then times out and the
//! connection is ended as a slow consumer, exactly as a WebSocket's would be.
//!
//! Wire format (docs/PROTOCOL.md): a `retry:` hint first; each notification one event whose
//! `id:` is its history id and whose `data:` is the JSON object a WebSocket frame carries;
//! the missed frame the same way (a default event, so `onmessage` sees it); `: ping` comments
//! as the heartbeat; when the gateway ends the stream, a final `event: gateway.close` whose
//! data is `{"code":…,"reason":…}` with the WebSocket close code of the same reason.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use publisher::wire::StreamId;
use serde_json::json;
use tokio::sync::mpsc;

use crate::auth::Gate;
use crate::error::ApiError;
use crate::hub::Frame;
use crate::metrics::TransportKind;
use crate::session::{CloseCode, End, Gone, Inbound, Transport};
use crate::state::{AppState, SessionLimits};
use crate::subscriptions::TooManySockets;

/// Events buffered between the session task and actix's writer. Small: the hub queue
/// (`ws.outbound_queue`) is where notifications wait; this only decouples the two tasks, and a
/// reader that stops reading fills it quickly, so its write times out.
const BODY_QUEUE: usize = 8;

/// The event name of the final event of a stream the gateway ends.
pub const CLOSE_EVENT: &str = "gateway.close";

const HEARTBEAT: &[u8] = b": ping\n\n";

/// The SSE transport: events into the response body.
pub struct EventStream {
    body: mpsc::Sender<Bytes>,
}

impl Transport for EventStream {
    const KIND: TransportKind = TransportKind::Sse;

    fn heartbeat_interval(limits: &SessionLimits) -> Duration {
        limits.sse_heartbeat_interval
    }

    /// The client never writes after its request: it cannot be timed out for silence. A
    /// vanished client is found when the connection closes or a heartbeat write fails.
    fn idle_timeout(_limits: &SessionLimits) -> Option<Duration> {
        None
    }

    async fn send(&mut self, frame: &Frame) -> Result<(), Gone> {
        self.body
            .send(frame.sse_event(event))
            .await
            .map_err(|_| Gone)
    }

    async fn heartbeat(&mut self) -> Result<(), Gone> {
        self.body
            .send(Bytes::from_static(HEARTBEAT))
            .await
            .map_err(|_| Gone)
    }

    /// Ends when actix drops the body: the client closed the connection.
    async fn receive(&mut self) -> Inbound {
        self.body.closed().await;
        Inbound::End(End::Gone)
    }

    async fn close(self, end: End) {
        if let End::Close(code) = end {
            let _ = self.body.send(close_event(code)).await;
        }
        // Dropping the sender ends the body once actix has written what it holds.
    }
}

/// One notification as an event. The text is JSON, which may hold line breaks only as
/// whitespace between tokens: each line becomes a `data:` line, and the browser joins them
/// with `\n` into an equivalent JSON text.
fn event(frame: &Frame) -> Bytes {
    let text = frame.text.as_bytes();
    let mut out = BytesMut::with_capacity(text.len() + 64);
    if let Some(id) = frame.id {
        let _ = writeln!(out, "id: {id}");
    }
    let mut lines = text
        .split(|b| matches!(b, b'\n' | b'\r'))
        .filter(|line| !line.is_empty())
        .peekable();
    if lines.peek().is_none() {
        out.extend_from_slice(b"data:\n");
    }
    for line in lines {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
    out.freeze()
}

fn close_event(code: CloseCode) -> Bytes {
    let data = json!({ "code": code.code(), "reason": code.description() });
    Bytes::from(format!("event: {CLOSE_EVENT}\ndata: {data}\n\n"))
}

/// The `Last-Event-ID` header a browser sends when it reconnects by itself; empty is none.
fn last_event_id(req: &HttpRequest) -> Result<Option<StreamId>, ApiError> {
    let mut values = req.headers().get_all("last-event-id");
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidQuery(
            "more than one Last-Event-ID header".into(),
        ));
    }
    let value = value.to_str().unwrap_or("\u{0}").trim();
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(ApiError::InvalidLastId)
}

/// CORS for a page of an origin `origin.allowed` lists: it may read the stream, with
/// credentials (`EventSource`'s `withCredentials`; no cookie ever authenticates a stream).
fn allow_origin(response: &mut HttpResponseBuilder, req: &HttpRequest, gate: &Gate) {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| o.to_str().is_ok_and(|o| gate.allows_origin(o)));
    if let Some(origin) = origin {
        response
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()))
            .insert_header((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
    }
    response.insert_header((header::VARY, HeaderValue::from_static("Origin")));
}

/// `GET /sse/notifications/{user_id}/`.
pub async fn stream(
    req: HttpRequest,
    user_id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let refused = |e: ApiError| {
        state.metrics.upgrades_refused_total.fetch_add(1, Relaxed);
        state.metrics.connection_refused(TransportKind::Sse);
        e
    };
    let (user, from_query) =
        crate::ws::parse_target(&user_id, req.query_string()).map_err(refused)?;
    // The header is what the browser sends by itself on every reconnect, so it is newer than
    // a `last_id` the page put in the URL when it first connected.
    let resume_after = last_event_id(&req).map_err(refused)?.or(from_query);
    if *state.shutdown.borrow() {
        return Err(refused(ApiError::ShuttingDown));
    }
    if state.metrics.sockets_open.load(Relaxed) >= state.settings.server.max_connections as u64 {
        return Err(refused(ApiError::TooManyConnections));
    }
    let admission = state.gate.admit_stream(&req, user).map_err(|error| {
        state.metrics.auth_refused(&error);
        let client = state.gate.client_ip(&req);
        tracing::debug!(%user, ?client, reason = error.code(), "event stream refused");
        refused(ApiError::Auth(error))
    })?;
    let max_sockets = state.settings.server.max_sockets_per_user;
    let registration = state
        .subscriptions
        .attach(user, max_sockets)
        .await
        .map_err(|TooManySockets| refused(ApiError::TooManySocketsForUser(max_sockets)))?;
    tracing::debug!(%user, socket = registration.socket, "event stream open");

    let (body, mut events) = mpsc::channel(BODY_QUEUE);
    // First, before any event: how long the browser waits before reconnecting by itself.
    let retry = format!("retry: {}\n\n", state.settings.sse.retry_ms);
    let _ = body.try_send(Bytes::from(retry));
    actix_web::rt::spawn(crate::session::run(
        EventStream { body },
        registration,
        resume_after,
        state.get_ref().clone(),
        admission.close_at,
    ));

    let mut response = HttpResponse::Ok();
    response
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        // nginx (and proxies that follow it) must pass each event on at once.
        .insert_header(("x-accel-buffering", HeaderValue::from_static("no")));
    allow_origin(&mut response, &req, &state.gate);
    let body = futures_util::stream::poll_fn(move |cx| {
        events
            .poll_recv(cx)
            .map(|event| event.map(Ok::<_, Infallible>))
    });
    Ok(response.streaming(body))
}

/// `OPTIONS /sse/notifications/{user_id}/`: the CORS preflight of a cross-origin client that
/// sends `Authorization` (an `EventSource` never needs one).
pub async fn preflight(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let allowed = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|origin| state.gate.allows_origin(origin));
    if !allowed {
        return HttpResponse::Forbidden().finish();
    }
    let mut response = HttpResponse::NoContent();
    allow_origin(&mut response, &req, &state.gate);
    response
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET"),
        ))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, last-event-id, cache-control"),
        ))
        .insert_header((
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        ))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Bytes) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn a_notification_is_one_event_with_its_id() {
        let frame = Frame::new(
            Some(StreamId::new(1_763_775_600_123, 4)),
            r#"{"id":"1763775600123-4","type":"info","message":"hi"}"#.into(),
        );
        assert_eq!(
            text(event(&frame)),
            "id: 1763775600123-4\ndata: {\"id\":\"1763775600123-4\",\"type\":\"info\",\"message\":\"hi\"}\n\n"
        );
        let live_only = Frame::new(None, r#"{"type":"info"}"#.into());
        assert_eq!(
            text(event(&live_only)),
            "data: {\"type\":\"info\"}\n\n",
            "no id: the browser keeps its last one"
        );
    }

    #[test]
    fn a_notification_is_encoded_once_for_every_stream() {
        let frame = Frame::new(None, r#"{"type":"info"}"#.into());
        let first = frame.sse_event(event);
        let second = frame.sse_event(|_| unreachable!("encoded again"));
        assert_eq!(first.as_ptr(), second.as_ptr(), "the same bytes, shared");
        assert_eq!(text(second), "data: {\"type\":\"info\"}\n\n");
    }

    #[test]
    fn line_breaks_in_the_json_cannot_end_the_event_early() {
        let frame = Frame::new(
            None,
            "{\r\n  \"type\": \"info\",\r  \"message\": \"a\\nb\"\n}".into(),
        );
        let got = text(event(&frame));
        assert_eq!(
            got,
            "data: {\ndata:   \"type\": \"info\",\ndata:   \"message\": \"a\\nb\"\ndata: }\n\n"
        );
        // What a browser hands to onmessage: the data lines joined with \n.
        let data: Vec<&str> = got
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        let value: serde_json::Value = serde_json::from_str(&data.join("\n")).unwrap();
        assert_eq!(value["message"], "a\nb");
    }

    #[test]
    fn the_final_event_carries_the_close_code() {
        assert_eq!(
            text(close_event(CloseCode::TokenExpired)),
            "event: gateway.close\ndata: {\"code\":4001,\"reason\":\"token expired, fetch a new token and reconnect\"}\n\n"
        );
    }
}
