//! Where a client puts its token. Browsers cannot set headers on a WebSocket, so they use the
//! query string or the subprotocol list; other clients may also use `Authorization`.
//!
//! - `?token=<jwt>`
//! - `Sec-WebSocket-Protocol: bearer, <jwt>` (JavaScript: `new WebSocket(url, ["bearer", jwt])`);
//!   the server answers with the `bearer` protocol, never the token.
//! - `Authorization: Bearer <jwt>`
//!
//! A request that carries a token in more than one place, or twice in one place, is refused:
//! a proxy and the gateway must never disagree about which token counts.

use actix_web::web::Query;

use super::AuthError;

/// The subprotocol name that announces a token as the next offered protocol.
pub const BEARER_PROTOCOL: &str = "bearer";

/// Longer tokens are refused unread. A simplejwt access token is about 230 bytes.
pub const MAX_TOKEN_BYTES: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Query,
    Subprotocol,
    AuthorizationHeader,
}

/// Finds the one token of a request. `Ok(None)`: no token anywhere.
///
/// `protocols` and `authorization` are the raw values of every `Sec-WebSocket-Protocol` and
/// `Authorization` header, in order.
pub fn extract<'a>(
    query: &str,
    protocols: impl Iterator<Item = &'a [u8]>,
    authorization: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<(String, Transport)>, AuthError> {
    let found = [
        from_query(query)?.map(|t| (t, Transport::Query)),
        from_protocols(protocols)?.map(|t| (t, Transport::Subprotocol)),
        from_authorization(authorization)?.map(|t| (t, Transport::AuthorizationHeader)),
    ];
    let mut found = found.into_iter().flatten();
    let first = found.next();
    if found.next().is_some() {
        return Err(AuthError::TokenInvalid(
            "token sent more than one way: use one",
        ));
    }
    match first {
        Some((token, _)) if token.len() > MAX_TOKEN_BYTES => {
            Err(AuthError::TokenInvalid("token too long"))
        }
        Some((token, _)) if token.is_empty() => Err(AuthError::TokenMissing),
        other => Ok(other),
    }
}

fn from_query(query: &str) -> Result<Option<String>, AuthError> {
    if query.is_empty() {
        return Ok(None);
    }
    let pairs = Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|_| AuthError::TokenInvalid("query string is not valid"))?
        .into_inner();
    let mut tokens = pairs.into_iter().filter(|(k, _)| k == "token");
    let token = tokens.next().map(|(_, v)| v);
    if tokens.next().is_some() {
        return Err(AuthError::TokenInvalid("more than one token parameter"));
    }
    Ok(token)
}

fn from_protocols<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<String>, AuthError> {
    let mut offered = Vec::new();
    for value in values {
        let value = std::str::from_utf8(value)
            .map_err(|_| AuthError::TokenInvalid("Sec-WebSocket-Protocol is not text"))?;
        offered.extend(value.split(',').map(str::trim));
    }
    let mut at = offered
        .iter()
        .enumerate()
        .filter(|(_, p)| **p == BEARER_PROTOCOL)
        .map(|(i, _)| i);
    let Some(i) = at.next() else {
        return Ok(None);
    };
    if at.next().is_some() {
        return Err(AuthError::TokenInvalid("bearer subprotocol offered twice"));
    }
    match offered.get(i + 1) {
        Some(token) if !token.is_empty() => Ok(Some((*token).to_owned())),
        _ => Err(AuthError::TokenInvalid(
            "the bearer subprotocol must be followed by the token",
        )),
    }
}

fn from_authorization<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<String>, AuthError> {
    let mut token = None;
    for value in values {
        if token.is_some() {
            return Err(AuthError::TokenInvalid(
                "more than one Authorization header",
            ));
        }
        let value = std::str::from_utf8(value)
            .map_err(|_| AuthError::TokenInvalid("Authorization is not text"))?;
        let value = value.trim();
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::TokenInvalid(
                "Authorization must be `Bearer <token>`",
            ));
        }
        token = Some(credentials.trim().to_owned());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        query: &str,
        protocols: &[&str],
        authorization: &[&str],
    ) -> Result<Option<(String, Transport)>, AuthError> {
        extract(
            query,
            protocols.iter().map(|s| s.as_bytes()),
            authorization.iter().map(|s| s.as_bytes()),
        )
    }

    #[test]
    fn each_transport_yields_the_token() {
        assert_eq!(
            run("token=a.b.c", &[], &[]),
            Ok(Some(("a.b.c".into(), Transport::Query)))
        );
        assert_eq!(
            run("x=1&token=a%2Eb.c", &[], &[]),
            Ok(Some(("a.b.c".into(), Transport::Query))),
            "percent-decoded"
        );
        assert_eq!(
            run("", &["bearer, a.b.c"], &[]),
            Ok(Some(("a.b.c".into(), Transport::Subprotocol)))
        );
        assert_eq!(
            run("", &["chat", "bearer", "a.b.c"], &[]),
            Ok(Some(("a.b.c".into(), Transport::Subprotocol))),
            "split across header lines"
        );
        assert_eq!(
            run("", &[], &["Bearer a.b.c"]),
            Ok(Some(("a.b.c".into(), Transport::AuthorizationHeader)))
        );
        assert_eq!(run("other=1", &["chat"], &[]), Ok(None));
    }

    #[test]
    fn ambiguous_or_malformed_transports_are_refused() {
        let invalid = |r: Result<_, AuthError>| matches!(r, Err(AuthError::TokenInvalid(_)));
        assert!(invalid(run("token=a&token=b", &[], &[])));
        assert!(invalid(run("token=a", &["bearer, b"], &[])));
        assert!(invalid(run("", &["bearer, a"], &["Bearer b"])));
        assert!(invalid(run("", &["bearer"], &[])));
        assert!(invalid(run("", &["bearer, , x"], &[])));
        assert!(invalid(run("", &["bearer, a, bearer, b"], &[])));
        assert!(invalid(run("", &[], &["Basic dXNlcjpwYXNz"])));
        assert!(invalid(run("", &[], &["Bearer a", "Bearer a"])));
        let long = format!("token={}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(invalid(run(&long, &[], &[])));
        assert_eq!(run("token=", &[], &[]), Err(AuthError::TokenMissing));
        assert_eq!(run("", &[], &["Bearer "]), Err(AuthError::TokenMissing));
    }
}
