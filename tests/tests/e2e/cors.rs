//! CORS on the inbox: a front end on an origin of `origin.allowed` may read
//! `GET /api/notifications/{user_id}` cross-origin (preflight answered, the origin echoed in
//! Access-Control-Allow-Origin); any other origin gets no CORS header, so its pages cannot
//! read the answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use e2e::{jwt, Gateway};

const ALLOWED: &str = "https://app.example.com";
const REFUSED: &str = "https://evil.example.net";

/// Sends a raw request; returns the status and the response head's lines, lower-cased names.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<String>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(e2e::DEADLINE)).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let head = response.split("\r\n\r\n").next().unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let lines = head
        .lines()
        .skip(1)
        .map(|l| l.to_ascii_lowercase())
        .collect();
    (status, lines)
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

#[test]
fn the_inbox_answers_cors_for_allowed_origins_only() {
    let mut settings = jwt::HS256_SETTINGS.to_vec();
    settings.push(("GW__ORIGIN__ALLOWED", ALLOWED));
    let gateway = Gateway::start(None, &settings);
    let path = "/api/notifications/31";
    let bearer = format!("Bearer {}", jwt::access(31));

    // The preflight of fetch(url, {headers: {Authorization}}) from the allowed origin.
    let preflight = |origin: &str| {
        exchange(
            gateway.addr,
            "OPTIONS",
            path,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "authorization"),
            ],
        )
    };
    let (status, lines) = preflight(ALLOWED);
    assert_eq!(status, 204, "{lines:?}");
    assert_eq!(header(&lines, "access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(header(&lines, "access-control-allow-methods"), Some("get"));
    assert!(
        header(&lines, "access-control-allow-headers").is_some_and(|h| h.contains("authorization")),
        "{lines:?}"
    );

    // The read itself: the origin is echoed, and caches keep answers per origin apart.
    let (status, lines) = exchange(
        gateway.addr,
        "GET",
        path,
        &[("Origin", ALLOWED), ("Authorization", &bearer)],
    );
    assert_eq!(status, 200, "{lines:?}");
    assert_eq!(header(&lines, "access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(header(&lines, "vary"), Some("origin"));
    // An error answer too, so the front end can read why (here: no token).
    let (status, lines) = exchange(gateway.addr, "GET", path, &[("Origin", ALLOWED)]);
    assert_eq!(status, 401, "{lines:?}");
    assert_eq!(header(&lines, "access-control-allow-origin"), Some(ALLOWED));

    // Another origin: the preflight is refused and no answer carries a CORS header, so the
    // browser does not let that page read it.
    let (status, lines) = preflight(REFUSED);
    assert_eq!(status, 403, "{lines:?}");
    assert_eq!(header(&lines, "access-control-allow-origin"), None);
    let (_, lines) = exchange(
        gateway.addr,
        "GET",
        path,
        &[("Origin", REFUSED), ("Authorization", &bearer)],
    );
    assert_eq!(
        header(&lines, "access-control-allow-origin"),
        None,
        "{lines:?}"
    );
    // A look-alike of the allowed origin is another origin.
    let (status, _) = preflight("https://app.example.com.evil.example.net");
    assert_eq!(status, 403);
}
