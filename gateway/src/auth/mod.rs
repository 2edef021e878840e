//! Who may open which socket. Everything here runs before the WebSocket upgrade, so a refusal
//! is a plain HTTP status with a JSON reason (mapped in [`crate::error::ApiError`]).
//!
//! The upgrade handler calls [`Gate::admit`] once per request:
//! 1. the Origin header against `origin.allowed` ([`origin`]), against cross-site WebSocket
//!    hijacking;
//! 2. in `auth.mode = "jwt"`, the one token of the request ([`token`]) is verified with the
//!    pinned algorithm and key ([`jwt`]) and must name the user of the path.
//!
//! The admitted socket carries its token's expiry; its session closes it with 4001 at `exp`
//! plus `auth.expiry_grace_ms`. [`client_ip`] tells who the client is behind trusted proxies.
//! The security model for operators and client authors is `docs/SECURITY.md`.

mod client_ip;
mod jwt;
mod origin;
mod token;

pub use crate::net::{IpNet, OriginPattern};
pub use client_ip::client_ip;
pub use jwt::{JwtVerifier, Verified};
pub use origin::OriginPolicy;
pub use token::{extract as extract_token, Transport, BEARER_PROTOCOL, MAX_TOKEN_BYTES};

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::HttpRequest;
use publisher::wire::UserId;
use tokio::time::Instant;

use crate::config::{ms, AuthMode, ConfigError, Settings};

/// Why a socket is refused. The messages are fixed text: nothing from the request (a token
/// above all) is ever echoed or logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: send ?token=<jwt>, the subprotocols [\"bearer\", <jwt>], or \
         Authorization: Bearer <jwt>"
    )]
    TokenMissing,
    #[error("invalid token: {0}")]
    TokenInvalid(&'static str),
    #[error("token expired: fetch a new token and reconnect")]
    TokenExpired,
    #[error("the token is for another user")]
    TokenForAnotherUser,
    #[error("pages of this origin may not open notification sockets")]
    OriginForbidden,
    #[error("no Origin header: only pages of allowed origins may open notification sockets")]
    OriginMissing,
}

impl AuthError {
    /// Every `code()`, for metrics labels.
    pub const CODES: [&'static str; 5] = [
        "token_missing",
        "token_invalid",
        "token_expired",
        "token_for_another_user",
        "origin_forbidden",
    ];

    /// The index of `code()` in [`AuthError::CODES`].
    pub fn index(&self) -> usize {
        match self {
            AuthError::TokenMissing => 0,
            AuthError::TokenInvalid(_) => 1,
            AuthError::TokenExpired => 2,
            AuthError::TokenForAnotherUser => 3,
            AuthError::OriginForbidden | AuthError::OriginMissing => 4,
        }
    }

    pub fn code(&self) -> &'static str {
        Self::CODES[self.index()]
    }

    /// 401: present a (new) valid token. 403: this credential or page may not have it.
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            AuthError::TokenForAnotherUser | AuthError::OriginForbidden | AuthError::OriginMissing
        )
    }
}

/// What an admitted request brings to its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// When the socket must be closed because its token expired (grace included).
    pub close_at: Option<Instant>,
}

/// The request checks of one node, built once from the settings.
pub struct Gate {
    /// `None`: authentication disabled (`auth.mode` none or unset).
    jwt: Option<JwtVerifier>,
    origins: OriginPolicy,
    trusted_proxies: Vec<IpNet>,
    expiry_grace: Duration,
}

/// The parts of a request the gate looks at, so that tests can build them without HTTP.
pub struct RequestParts<'a, P, A> {
    pub query: &'a str,
    pub origin: Option<&'a str>,
    pub protocols: P,
    pub authorization: A,
}

impl Gate {
    /// Reads key files; the lists come parsed with the settings. Errors name the key.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let jwt = match settings.auth.mode {
            AuthMode::Jwt => Some(JwtVerifier::from_settings(&settings.auth)?),
            AuthMode::None | AuthMode::Unset => None,
        };
        Ok(Gate {
            jwt,
            origins: OriginPolicy::new(
                settings.origin.patterns.clone(),
                settings.origin.allow_missing,
            ),
            trusted_proxies: settings.server.proxy_ranges.clone(),
            expiry_grace: ms(settings.auth.expiry_grace_ms),
        })
    }

    pub fn requires_token(&self) -> bool {
        self.jwt.is_some()
    }

    pub fn checks_origin(&self) -> bool {
        self.origins.is_enforced()
    }

    /// May this request open `user`'s socket?
    pub fn admit(&self, req: &HttpRequest, user: UserId) -> Result<Admission, AuthError> {
        let headers = req.headers();
        self.admit_parts(
            RequestParts {
                query: req.query_string(),
                // A non-text Origin is no valid origin: checked like an unknown one.
                origin: headers
                    .get(header::ORIGIN)
                    .map(|v| v.to_str().unwrap_or("\u{0}")),
                protocols: headers
                    .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                    .map(|v| v.as_bytes()),
                authorization: headers.get_all(header::AUTHORIZATION).map(|v| v.as_bytes()),
            },
            user,
        )
    }

    pub fn admit_parts<'a>(
        &self,
        parts: RequestParts<'a, impl Iterator<Item = &'a [u8]>, impl Iterator<Item = &'a [u8]>>,
        user: UserId,
    ) -> Result<Admission, AuthError> {
        self.origins.check(parts.origin)?;
        self.check_token(parts, user)
    }

    /// May this request open `user`'s Server-Sent Events stream? The token from `?token=` or
    /// `Authorization: Bearer`. An Origin header, when present, must be allowed; a missing one
    /// is accepted whatever `origin.allow_missing` says: browsers send none on a same-origin
    /// `EventSource`, and a page of another site cannot read the stream anyway unless the
    /// answer allows its origin (CORS), which only an allowed origin gets.
    pub fn admit_stream(&self, req: &HttpRequest, user: UserId) -> Result<Admission, AuthError> {
        let headers = req.headers();
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        if origin.is_some() {
            self.origins.check(origin)?;
        }
        self.check_token(
            RequestParts {
                query: req.query_string(),
                origin,
                protocols: std::iter::empty(),
                authorization: headers.get_all(header::AUTHORIZATION).map(|v| v.as_bytes()),
            },
            user,
        )
    }

    /// Whether `origin` may read answers (CORS): the Origin check alone.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.origins.check(Some(origin)).is_ok()
    }

    /// May this HTTP API request read `user`'s data (`GET /api/notifications/{user}`)? The
    /// token alone: browsers send no Origin on same-origin GETs, and a bearer token, unlike a
    /// cookie, is never attached by the browser on its own, so another site's page cannot
    /// make a request that carries it.
    pub fn authenticate(&self, req: &HttpRequest, user: UserId) -> Result<Admission, AuthError> {
        let headers = req.headers();
        self.check_token(
            RequestParts {
                query: req.query_string(),
                origin: None,
                protocols: std::iter::empty(),
                authorization: headers.get_all(header::AUTHORIZATION).map(|v| v.as_bytes()),
            },
            user,
        )
    }

    fn check_token<'a>(
        &self,
        parts: RequestParts<'a, impl Iterator<Item = &'a [u8]>, impl Iterator<Item = &'a [u8]>>,
        user: UserId,
    ) -> Result<Admission, AuthError> {
        let Some(jwt) = &self.jwt else {
            return Ok(Admission { close_at: None });
        };
        let (token, _transport) =
            token::extract(parts.query, parts.protocols, parts.authorization)?
                .ok_or(AuthError::TokenMissing)?;
        let verified = jwt.verify(&token)?;
        if verified.user != user {
            return Err(AuthError::TokenForAnotherUser);
        }
        Ok(Admission {
            close_at: close_at(verified.expires_at, self.expiry_grace),
        })
    }

    /// The client's address: the peer, or what trusted proxies say in X-Forwarded-For.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>();
        Some(client_ip(
            peer,
            forwarded.into_iter(),
            &self.trusted_proxies,
        ))
    }

    /// Whether the client is on this machine. A request from a loopback peer that is not a
    /// trusted proxy yet carries forwarding headers came through some proxy: not local.
    pub fn is_local(&self, req: &HttpRequest) -> bool {
        let Some(peer) = req.peer_addr().map(|a| a.ip().to_canonical()) else {
            return false;
        };
        let peer_trusted = self.trusted_proxies.iter().any(|n| n.contains(peer));
        let forwarded = ["x-forwarded-for", "forwarded", "x-real-ip"]
            .iter()
            .any(|h| req.headers().contains_key(*h));
        if forwarded && !peer_trusted {
            return false;
        }
        self.client_ip(req).is_some_and(|ip| ip.is_loopback())
    }
}

/// The instant a socket whose token expires at `exp` (Unix seconds) is closed. `None` when
/// that is too far away to represent: such a token never expires in practice.
fn close_at(exp: u64, grace: Duration) -> Option<Instant> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let remaining = Duration::from_secs(exp)
        .saturating_sub(now)
        .checked_add(grace)?;
    Instant::now().checked_add(remaining)
}

#[cfg(test)]
mod tests;
