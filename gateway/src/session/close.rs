//! Why the gateway ends a session, and what a client should do on each: WebSocket close
//! codes, and the `code` of the final `gateway.close` event of a Server-Sent Events stream.

use actix_ws::{CloseCode as WireCode, CloseReason};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: the client closed; nothing to do.
    Normal,
    /// 1002: the client sent a frame that is not valid WebSocket; reconnecting is pointless
    /// until the client is fixed.
    ProtocolError,
    /// 1009: the client sent a frame larger than `ws.max_frame_bytes`.
    MessageTooBig,
    /// 1012: this node is shutting down; reconnect (the proxy picks another replica).
    ServiceRestart,
    /// 4001: the token this socket was opened with expired (`exp` plus
    /// `auth.expiry_grace_ms`). Fetch a new token and reconnect with it.
    TokenExpired,
    /// 4000: nothing arrived from the client (not even a pong) within `ws.idle_timeout_ms`.
    IdleTimeout,
    /// 4008: the client did not read fast enough and its queue overflowed; notifications
    /// were dropped for it. Reconnect.
    SlowConsumer,
}

impl CloseCode {
    pub const ALL: [CloseCode; 7] = [
        CloseCode::Normal,
        CloseCode::ProtocolError,
        CloseCode::MessageTooBig,
        CloseCode::ServiceRestart,
        CloseCode::IdleTimeout,
        CloseCode::TokenExpired,
        CloseCode::SlowConsumer,
    ];

    /// For metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::ServiceRestart => "service_restart",
            CloseCode::IdleTimeout => "idle_timeout",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::SlowConsumer => "slow_consumer",
        }
    }

    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::ProtocolError => 1002,
            CloseCode::MessageTooBig => 1009,
            CloseCode::ServiceRestart => 1012,
            CloseCode::IdleTimeout => 4000,
            CloseCode::TokenExpired => 4001,
            CloseCode::SlowConsumer => 4008,
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::MessageTooBig => "frame too large",
            CloseCode::ServiceRestart => "server restarting, reconnect",
            CloseCode::IdleTimeout => "idle timeout",
            CloseCode::TokenExpired => "token expired, fetch a new token and reconnect",
            CloseCode::SlowConsumer => "slow consumer, reconnect",
        }
    }

    pub fn reason(self) -> CloseReason {
        let code = match self {
            CloseCode::Normal => WireCode::Normal,
            CloseCode::ProtocolError => WireCode::Protocol,
            CloseCode::MessageTooBig => WireCode::Size,
            CloseCode::ServiceRestart => WireCode::Restart,
            CloseCode::IdleTimeout | CloseCode::TokenExpired | CloseCode::SlowConsumer => {
                WireCode::Other(self.code())
            }
        };
        CloseReason {
            code,
            description: Some(self.description().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_match_the_documented_table() {
        for close in CloseCode::ALL {
            assert_eq!(u16::from(close.reason().code), close.code());
        }
    }
}
