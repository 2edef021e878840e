//! The WebSocket transport of the session core ([`crate::session`]): notifications as text
//! frames, pings as the heartbeat, and the end as a close frame with its code.

use std::time::Duration;

use actix_ws::{AggregatedMessage, AggregatedMessageStream, ProtocolError, Session};
use futures_util::StreamExt;

use crate::hub::Frame;
use crate::metrics::TransportKind;
use crate::session::{CloseCode, End, Gone, Inbound, Transport};
use crate::state::SessionLimits;

pub struct WebSocket {
    pub session: Session,
    pub stream: AggregatedMessageStream,
}

impl Transport for WebSocket {
    const KIND: TransportKind = TransportKind::WebSocket;

    fn heartbeat_interval(limits: &SessionLimits) -> Duration {
        limits.ping_interval
    }

    fn idle_timeout(limits: &SessionLimits) -> Option<Duration> {
        Some(limits.idle_timeout)
    }

    async fn send(&mut self, frame: &Frame) -> Result<(), Gone> {
        self.session
            .text(frame.text.clone())
            .await
            .map_err(|_| Gone)
    }

    async fn heartbeat(&mut self) -> Result<(), Gone> {
        self.session.ping(b"").await.map_err(|_| Gone)
    }

    async fn pong(&mut self, payload: &[u8]) -> Result<(), Gone> {
        self.session.pong(payload).await.map_err(|_| Gone)
    }

    async fn receive(&mut self) -> Inbound {
        match self.stream.next().await {
            Some(Ok(AggregatedMessage::Ping(payload))) => Inbound::Ping(payload),
            // Clients have nothing to say on this protocol yet: text and binary frames within
            // the size limit are ignored, as Django's consumer did.
            Some(Ok(
                AggregatedMessage::Pong(_)
                | AggregatedMessage::Text(_)
                | AggregatedMessage::Binary(_),
            )) => Inbound::Heard,
            Some(Ok(AggregatedMessage::Close(_))) => Inbound::End(End::Close(CloseCode::Normal)),
            Some(Err(ProtocolError::Overflow)) => {
                Inbound::End(End::Close(CloseCode::MessageTooBig))
            }
            Some(Err(error)) if super::frame_guard::is_oversized(&error) => {
                Inbound::End(End::Close(CloseCode::MessageTooBig))
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "protocol error");
                Inbound::End(End::Close(CloseCode::ProtocolError))
            }
            None => Inbound::End(End::Gone),
        }
    }

    async fn close(self, end: End) {
        if let End::Close(code) = end {
            let _ = self.session.close(Some(code.reason())).await;
        }
        // Dropping the session and stream ends the response body, which closes the connection.
    }
}
