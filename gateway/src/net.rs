//! Parsed forms of two configured lists: address ranges (`server.trusted_proxies`) and web
//! origins (`origin.allowed`). Configuration parses them once at start-up ([`crate::config`]);
//! [`crate::auth`] matches requests against the parsed values.
//!
//! Origin patterns are `scheme://host[:port]`, or `scheme://*.domain[:port]` for any subdomain.
//! Comparison is on the parsed origin, case-insensitive, with default ports removed, so
//! `https://App.example.com:443` and `https://app.example.com` are the same origin.

use std::net::IpAddr;

/// An address range: `10.0.0.0/8`, `::1/128`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    network: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?
            .to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{text:?}: prefix length must be 0 to {max}")),
            },
        };
        Ok(IpNet { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One allowed origin, or a family of subdomains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: holds `.example.com`; matches `a.example.com`, not `example.com`.
    AnySubdomainOf(String),
}

/// A parsed origin: lowercase scheme and host, port only when not the scheme's default.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

pub(crate) fn parse_origin(text: &str) -> Option<Origin> {
    let text = text.trim().to_ascii_lowercase();
    let (scheme, authority) = text.split_once("://")?;
    if !matches!(scheme, "http" | "https") || authority.is_empty() {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: [::1] or [::1]:8080
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        (format!("[{inside}]"), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>().ok()?)),
            None => (authority, None),
        };
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*'));
        if !valid {
            return None;
        }
        (host.to_owned(), port)
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    Some(Origin {
        scheme: scheme.to_owned(),
        host,
        port: port.filter(|&p| p != default_port),
    })
}

impl OriginPattern {
    /// Parses a configured pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let shape = "must look like https://app.example.com, https://*.example.com or \
                     http://localhost:3000 (scheme, host, optional port; no path)";
        let origin = parse_origin(text).ok_or_else(|| format!("{text:?} {shape}"))?;
        let host = match origin.host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                HostPattern::AnySubdomainOf(format!(".{domain}"))
            }
            None if !origin.host.contains('*') => HostPattern::Exact(origin.host),
            _ => {
                return Err(format!(
                    "{text:?}: a wildcard is only allowed as `*.` before the domain"
                ))
            }
        };
        Ok(OriginPattern {
            scheme: origin.scheme,
            host,
            port: origin.port,
        })
    }

    pub(crate) fn matches(&self, origin: &Origin) -> bool {
        if self.scheme != origin.scheme || self.port != origin.port {
            return false;
        }
        match &self.host {
            HostPattern::Exact(host) => *host == origin.host,
            HostPattern::AnySubdomainOf(suffix) => {
                origin.host.len() > suffix.len()
                    && origin.host.ends_with(suffix.as_str())
                    && !origin.host.contains('*')
            }
        }
    }
}
