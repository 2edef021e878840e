//! The Origin check against cross-site WebSocket hijacking: a page on another site must not be
//! able to open a socket with the user's ambient credentials.
//!
//! Patterns are `scheme://host[:port]`, or `scheme://*.domain[:port]` for any subdomain.
//! Comparison is on the parsed origin, case-insensitive, with default ports removed, so
//! `https://App.example.com:443` and `https://app.example.com` are the same origin.

use super::AuthError;
use crate::net::{parse_origin, OriginPattern};

/// Which origins may open sockets.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    /// Empty: no check at all.
    allowed: Vec<OriginPattern>,
    allow_missing: bool,
}

impl OriginPolicy {
    pub fn new(allowed: Vec<OriginPattern>, allow_missing: bool) -> Self {
        OriginPolicy {
            allowed,
            allow_missing,
        }
    }

    pub fn is_enforced(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// `origin` is the request's Origin header, `None` when absent (or not text).
    pub fn check(&self, origin: Option<&str>) -> Result<(), AuthError> {
        if self.allowed.is_empty() {
            return Ok(());
        }
        let Some(origin) = origin else {
            return if self.allow_missing {
                Ok(())
            } else {
                Err(AuthError::OriginMissing)
            };
        };
        // "null" (sandboxed frames, file: pages) and anything unparsable match nothing.
        match parse_origin(origin) {
            Some(origin) if self.allowed.iter().any(|p| p.matches(&origin)) => Ok(()),
            _ => Err(AuthError::OriginForbidden),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str], allow_missing: bool) -> OriginPolicy {
        let allowed = patterns
            .iter()
            .map(|p| OriginPattern::parse(p).unwrap())
            .collect();
        OriginPolicy::new(allowed, allow_missing)
    }

    #[test]
    fn exact_origins_match_case_insensitively_with_default_ports_folded() {
        let p = policy(&["https://App.example.com", "http://localhost:3000"], false);
        for ok in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://app.example.com:443",
            "http://localhost:3000",
        ] {
            assert_eq!(p.check(Some(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.com",
            "https://evilapp.example.com",
            "https://app.example.co",
            "http://localhost:3001",
            "http://localhost",
            "null",
            "",
            "app.example.com",
            "https://app.example.com/path",
        ] {
            assert_eq!(p.check(Some(bad)), Err(AuthError::OriginForbidden), "{bad}");
        }
        assert_eq!(p.check(None), Err(AuthError::OriginMissing));
        assert_eq!(policy(&["https://a.b"], true).check(None), Ok(()));
    }

    #[test]
    fn a_wildcard_matches_subdomains_only() {
        let p = policy(&["https://*.example.com"], false);
        assert_eq!(p.check(Some("https://a.example.com")), Ok(()));
        assert_eq!(p.check(Some("https://a.b.example.com")), Ok(()));
        for bad in [
            "https://example.com",
            "https://.example.com",
            "https://aexample.com",
            "https://a.example.com.evil.net",
            "http://a.example.com",
            "https://*.example.com",
        ] {
            assert!(p.check(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_empty_list_checks_nothing() {
        let p = policy(&[], false);
        assert!(!p.is_enforced());
        assert_eq!(p.check(None), Ok(()));
        assert_eq!(p.check(Some("https://anything")), Ok(()));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for bad in [
            "*",
            "example.com",
            "https://",
            "ftp://example.com",
            "https://example.com/",
            "https://a.*.com",
            "https://*",
            "https://example.com:99999",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(OriginPattern::parse("http://[::1]:8080").is_ok());
    }
}
