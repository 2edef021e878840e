//! The client's address, believing X-Forwarded-For only from configured reverse proxies.
//!
//! Anyone can send an X-Forwarded-For header; only a proxy we trust appends to it honestly.
//! So the header is read from the right (the entry the nearest proxy wrote) and entries are
//! skipped while they are themselves trusted proxies; the first other address is the client.

use std::net::IpAddr;

pub use crate::net::IpNet;

/// The client's address for a connection from `peer` carrying the X-Forwarded-For header
/// values `forwarded_for` (in order of appearance).
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_for.rev().flat_map(|v| v.rsplit(',')) {
        // An entry we cannot read ends the chain: the last address we trust is the answer.
        let Ok(hop) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = hop.to_canonical();
        if !is_trusted(client) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| IpNet::parse(s).unwrap()).collect()
    }

    #[test]
    fn ranges_contain_what_they_should() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.200.1.1")));
        assert!(net.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped IPv6");
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(IpNet::parse("::1").unwrap().contains(ip("::1")));
        assert!(!IpNet::parse("::1").unwrap().contains(ip("127.0.0.1")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "", "::/129"] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        // Direct client: its header is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), ["1.2.3.4"].into_iter(), &trusted),
            ip("203.0.113.9")
        );
        // Through our proxy: the rightmost untrusted entry, whatever the client prepended.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                ["6.6.6.6, 198.51.100.7, 10.1.2.3"].into_iter(),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Several header lines are one list.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                ["6.6.6.6", "198.51.100.7"].into_iter(),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            client_ip(ip("127.0.0.1"), ["evil, 10.0.0.5"].into_iter(), &trusted),
            ip("10.0.0.5")
        );
        // A trusted peer with no header is the client itself.
        assert_eq!(
            client_ip(ip("127.0.0.1"), std::iter::empty(), &trusted),
            ip("127.0.0.1")
        );
        // Nothing trusted: the peer, always.
        assert_eq!(
            client_ip(ip("127.0.0.1"), ["1.2.3.4"].into_iter(), &[]),
            ip("127.0.0.1")
        );
    }
}
