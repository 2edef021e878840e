//! Hostile input against a real gateway process: every malformed token class, user ids that
//! are not ids, oversized requests and frames, slow and half-open connections, and a flood of
//! failed handshakes after which the node still serves, holds no more memory or descriptors
//! than before, and leaked no socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use e2e::{jwt, procfs, Gateway, RawSocket, WsClient, DEADLINE};

fn rss_kib(pid: u32) -> u64 {
    procfs::rss_kib(pid).expect("VmRSS in /proc/<pid>/status")
}

fn open_fds(pid: u32) -> usize {
    procfs::open_files(pid).expect("/proc/<pid>/fd")
}
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

/// A WebSocket upgrade request for `target` with extra header lines.
fn upgrade(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// Sends `request` on a fresh connection and reads one response: its status and JSON body.
/// Status 0 when the server hung up without answering.
fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).expect("connecting to the gateway");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // The server may answer and close before it has read everything we send.
    let _ = stream.write_all(request);
    read_response(&mut stream)
}

fn read_response(stream: &mut TcpStream) -> (u16, Value) {
    let (status, _head, body) = read_response_with_head(stream);
    (status, body)
}

/// The status, the lowercased head and the JSON body of one response.
fn read_response_with_head(stream: &mut TcpStream) -> (u16, String, Value) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return (0, String::new(), Value::Null),
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let body = &data[head_end..data.len().min(head_end + length)];
    (
        status,
        head,
        serde_json::from_slice(body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_full_node_refuses_with_503_and_retry_after() {
    let gateway = Gateway::start(None, &[("GW__SERVER__MAX_CONNECTIONS", "2")]);
    let addr = gateway.addr;
    let _a = WsClient::connect(&gateway.ws_url("1")).await;
    let _b = WsClient::connect(&gateway.ws_url("2")).await;
    let (status, head, body) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
            .write_all(&upgrade(addr, "/ws/notifications/3/", &[]))
            .unwrap();
        read_response_with_head(&mut stream)
    })
    .await
    .unwrap();
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after: 5"), "{head}");
    assert_eq!(body["error"], "too_many_connections");
    assert_eq!(gateway.metric("gateway_sockets_open"), 2);
}

/// A masked client frame (mask key zero, so the payload goes unchanged).
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// What is tried, the token in the query, extra headers, the expected status and error code.
type TokenCase = (
    &'static str,
    Option<String>,
    Vec<(&'static str, String)>,
    u16,
    &'static str,
);

#[tokio::test]
async fn every_malformed_token_class_is_refused() {
    let gateway = Gateway::start(None, &jwt::HS256_SETTINGS);
    let addr = gateway.addr;
    let claims = jwt::access_claims(7, 300);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        edit(&mut c);
        jwt::hs256(&c)
    };
    let remove = |name: &'static str| {
        move |c: &mut Value| {
            c.as_object_mut().unwrap().remove(name);
        }
    };
    let genuine = jwt::access(7);
    let (unsigned_part, _) = genuine.rsplit_once('.').unwrap();
    let huge = "a".repeat(10_000);

    // (what, token in the query, extra headers, status, error code)
    let cases: Vec<TokenCase> = vec![
        ("no token", None, vec![], 401, "token_missing"),
        (
            "empty token",
            Some(String::new()),
            vec![],
            401,
            "token_missing",
        ),
        (
            "alg none",
            Some(jwt::unsigned(r#"{"alg":"none","typ":"JWT"}"#, &claims)),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "alg None",
            Some(jwt::unsigned(r#"{"alg":"None"}"#, &claims)),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "no alg",
            Some(jwt::unsigned(r#"{"typ":"JWT"}"#, &claims)),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "HS512 with the right secret",
            Some(jwt::hmac_with_alg(
                Algorithm::HS512,
                &claims,
                jwt::SECRET.as_bytes(),
            )),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "RS256 header, HMAC signature",
            Some(jwt::hmac_with_alg(
                Algorithm::RS256,
                &claims,
                jwt::SECRET.as_bytes(),
            )),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "signature by another key",
            Some(jwt::hs256_with(
                &claims,
                "not-the-backend-key-but-long-enough",
            )),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "signature stripped",
            Some(format!("{unsigned_part}.")),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "two segments",
            Some(unsigned_part.to_owned()),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "expired",
            Some(with(&|c| c["exp"] = json!(jwt::now() - 10))),
            vec![],
            401,
            "token_expired",
        ),
        (
            "no exp",
            Some(with(&remove("exp"))),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "exp not a number",
            Some(with(&|c| c["exp"] = json!("soon"))),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "nbf in the future",
            Some(with(&|c| c["nbf"] = json!(jwt::now() + 120))),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "refresh token",
            Some(with(&|c| c["token_type"] = json!("refresh"))),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "no token_type",
            Some(with(&remove("token_type"))),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "no user_id",
            Some(with(&remove("user_id"))),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "negative user_id",
            Some(with(&|c| c["user_id"] = json!(-7))),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "user_id 007",
            Some(with(&|c| c["user_id"] = json!("007"))),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "user_id 7.5",
            Some(with(&|c| c["user_id"] = json!(7.5))),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "user_id object",
            Some(with(&|c| c["user_id"] = json!({"id": 7}))),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "an aud nobody asked for",
            Some(with(&|c| c["aud"] = json!("another-service"))),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "another user's token",
            Some(jwt::access(8)),
            vec![],
            403,
            "token_for_another_user",
        ),
        (
            "garbage",
            Some("not.a.jwt".into()),
            vec![],
            401,
            "token_invalid",
        ),
        ("dots", Some("....".into()), vec![], 401, "token_invalid"),
        (
            "bytes that are not UTF-8",
            Some("%FF%FE%00.%C0%AF.x".into()),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "10 KB token",
            None,
            vec![("Authorization", format!("Bearer {huge}"))],
            401,
            "token_invalid",
        ),
        (
            "token in two places",
            Some(genuine.clone()),
            vec![("Authorization", format!("Bearer {genuine}"))],
            401,
            "token_invalid",
        ),
        (
            "token twice in the query",
            Some(format!("{genuine}&token={genuine}")),
            vec![],
            401,
            "token_invalid",
        ),
        (
            "Basic credentials",
            None,
            vec![("Authorization", "Basic dXNlcjpwYXNz".into())],
            401,
            "token_invalid",
        ),
        (
            "bearer subprotocol without a token",
            None,
            vec![("Sec-WebSocket-Protocol", "bearer".into())],
            401,
            "token_invalid",
        ),
    ];
    let total = cases.len();
    let mut refused_by_code = std::collections::HashMap::<&str, u64>::new();
    for (what, token, headers, status, code) in cases {
        let target = match token {
            Some(token) => format!("/ws/notifications/7/?token={token}"),
            None => "/ws/notifications/7/".to_owned(),
        };
        let (got, body) = tokio::task::spawn_blocking(move || {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            exchange(addr, &upgrade(addr, &target, &headers))
        })
        .await
        .unwrap();
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
        assert!(body["message"].is_string(), "{what}: {body}");
        *refused_by_code.entry(code).or_default() += 1;
    }
    assert_eq!(
        gateway.metric("gateway_upgrades_refused_total"),
        total as u64
    );
    for (code, count) in refused_by_code {
        let series = format!("gateway_auth_refused_total{{reason=\"{code}\"}}");
        assert_eq!(gateway.metric(&series), count, "{series}");
    }
    assert_eq!(gateway.metric("gateway_sockets_open"), 0);
    // After all that, the genuine token still opens its socket.
    WsClient::connect(&format!("{}?token={genuine}", gateway.ws_url("7"))).await;
}

#[tokio::test]
async fn user_ids_that_are_not_ids_never_open_a_socket() {
    let gateway = Gateway::start(None, &jwt::HS256_SETTINGS);
    let addr = gateway.addr;
    let token = jwt::access(1);
    let paths = [
        "-1",
        "0",
        "01",
        "+1",
        "1.0",
        "1e0",
        "%201",
        "1%00",
        "%00",
        "9223372036854775808",
        "99999999999999999999999999999999999999",
        "..",
        "%2E%2E",
        "..%2F1",
        "1%2F..%2F2",
        "%D9%A1",       // ١ ARABIC-INDIC DIGIT ONE
        "%EF%BC%91",    // １ FULLWIDTH DIGIT ONE
        "%F0%9D%9F%8F", // 𝟏 MATHEMATICAL BOLD DIGIT ONE
        "0x1",
        "1,2",
        "",
        "1/../2",
        "../1",
        "1/2",
        "%",
    ];
    for path in paths {
        let target = format!("/ws/notifications/{path}/?token={token}");
        let (status, body) = exchange(addr, &upgrade(addr, &target, &[]));
        assert!(matches!(status, 400 | 404), "{path:?}: {status} {body}");
        if status == 400 {
            assert_eq!(body["error"], "invalid_user_id", "{path:?}");
        }
    }
    assert_eq!(gateway.metric("gateway_sockets_open"), 0);
    assert_eq!(gateway.metric("gateway_users"), 0);
    let _ = WsClient::connect(&format!("{}?token={token}", gateway.ws_url("1"))).await;
}

#[test]
fn oversized_request_lines_and_headers_are_refused() {
    let gateway = Gateway::start(
        None,
        &[
            ("GW__SERVER__MAX_URL_BYTES", "1024"),
            ("GW__SERVER__MAX_HEADER_BYTES", "4096"),
        ],
    );
    let addr = gateway.addr;
    let long_target = format!("/ws/notifications/1/?pad={}", "x".repeat(1100));
    let (status, body) = exchange(addr, &upgrade(addr, &long_target, &[]));
    assert_eq!(
        (status, body["error"].as_str()),
        (414, Some("url_too_long")),
        "{body}"
    );

    let cookie = "c".repeat(5000);
    let (status, body) = exchange(
        addr,
        &upgrade(addr, "/ws/notifications/1/", &[("Cookie", &cookie)]),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (431, Some("headers_too_large")),
        "{body}"
    );

    // Beyond what actix-web buffers at all (128 KiB) or parses (96 headers): 431 or a hang-up,
    // never an upgrade.
    let enormous = "e".repeat(200 * 1024);
    let (status, _) = exchange(
        addr,
        &upgrade(addr, "/ws/notifications/1/", &[("X-Big", &enormous)]),
    );
    assert!(matches!(status, 0 | 431), "{status}");
    let many: Vec<(String, String)> = (0..200).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let (status, _) = exchange(addr, &upgrade(addr, "/ws/notifications/1/", &many));
    assert!(matches!(status, 0 | 431), "{status}");
    // A request line that is not HTTP at all.
    let (status, _) = exchange(
        addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    );
    assert!(matches!(status, 0 | 400), "{status}");

    assert_eq!(
        e2e::http_get(gateway.internal, "/healthz").unwrap().0,
        200,
        "still serving"
    );
    let (status, _) = RawSocket::handshake(addr, "/ws/notifications/1/");
    assert_eq!(status, 101);
}

#[tokio::test]
async fn oversized_and_malformed_frames_close_only_their_socket() {
    let gateway = Gateway::start(None, &[("GW__WS__MAX_FRAME_BYTES", "1024")]);
    let addr = gateway.addr;
    let mut bystander = WsClient::connect(&gateway.ws_url("9")).await;

    // Each misbehaviour on its own socket: (frames to send, expected close code).
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "one 64 KiB frame",
            client_frame(true, 0x1, &[b'x'; 64 * 1024]),
            1009,
        ),
        (
            "a 1 MB length announced, 10 bytes sent",
            {
                let mut f = client_frame(true, 0x2, &[0u8; 10]);
                f[1] = 0x80 | 127;
                f.splice(2..2, [0u8, 0, 0, 0, 0, 0x10, 0, 0]);
                f.truncate(2 + 8 + 4 + 10);
                f
            },
            1009,
        ),
        (
            "continuations adding up past the limit",
            [
                client_frame(false, 0x1, &[b'a'; 600]),
                client_frame(false, 0x0, &[b'b'; 600]),
                client_frame(true, 0x0, &[b'c'; 600]),
            ]
            .concat(),
            1009,
        ),
        ("a reserved opcode", client_frame(true, 0x3, b"?"), 1002),
        ("an unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        (
            "a 200-byte ping",
            client_frame(true, 0x9, &[b'p'; 200]),
            1002,
        ),
    ];
    for (what, bytes, code) in cases {
        let closed = tokio::task::spawn_blocking(move || {
            let (status, mut raw) = RawSocket::handshake(addr, "/ws/notifications/10/");
            assert_eq!(status, 101);
            raw.stream.write_all(&bytes).unwrap();
            raw.read_until_eof()
        })
        .await
        .unwrap();
        assert_eq!(closed, Some(code), "{what}");
    }
    gateway.wait_metric("gateway_sockets_open", |n| n == 1);
    let (status, _) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user":9,"type":"info","message":"unharmed"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(bystander.next_json().await["message"], "unharmed");
}

#[tokio::test]
async fn a_huge_announced_frame_is_refused_before_it_is_buffered() {
    // actix-http alone buffers a whole frame before checking its size: 200 MiB sent in a
    // frame announced as 1 GiB grew the process by 200 MiB. The gateway refuses the header.
    let gateway = Gateway::start(None, &[]);
    let (addr, pid) = (gateway.addr, gateway.pid());
    let before = rss_kib(pid);
    let (closed, sent) = tokio::task::spawn_blocking(move || {
        let (status, mut raw) = RawSocket::handshake(addr, "/ws/notifications/11/");
        assert_eq!(status, 101);
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 30).to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0]);
        raw.stream.write_all(&header).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut sent = 0usize;
        // Keep sending until the server hangs up (or 64 MiB went through).
        while sent < 64 << 20 && raw.stream.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        (raw.read_until_eof(), sent)
    })
    .await
    .unwrap();
    let after = rss_kib(pid);
    assert!(matches!(closed, Some(1009) | None), "{closed:?}");
    assert!(
        after < before + 8 * 1024,
        "rss grew from {before} KiB to {after} KiB after {sent} bytes were sent"
    );
    gateway.wait_metric("gateway_sockets_open", |n| n == 0);
}

/// Writes `bytes` one at a time every `pace` until the server hangs up; returns how long the
/// connection lasted and the status the server answered with (0 for none).
fn trickle(addr: SocketAddr, prefix: &[u8], bytes: &[u8], pace: Duration) -> (Duration, u16) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    stream.write_all(prefix).unwrap();
    if !prefix.is_empty() && prefix.ends_with(b"\r\n\r\n") {
        // A complete first request: read its response, then misbehave on the second.
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        assert_eq!(read_response(&mut stream).0, 200);
    }
    let mut reader = stream.try_clone().unwrap();
    let watcher = std::thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = reader.read_to_end(&mut answer);
        let status = String::from_utf8_lossy(&answer)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (started.elapsed(), status)
    });
    let mut next = bytes.iter().cycle();
    while !watcher.is_finished() && started.elapsed() < DEADLINE {
        if let Some(byte) = next.next() {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
        }
        std::thread::sleep(pace);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    watcher.join().unwrap()
}

#[test]
fn slow_and_silent_connections_are_cut_at_the_handshake_timeout() {
    let gateway = Gateway::start(None, &[("GW__SERVER__HANDSHAKE_TIMEOUT_MS", "800")]);
    let addr = gateway.addr;
    let limit = Duration::from_millis(800);
    let slack = Duration::from_secs(2);
    let head = upgrade(
        addr,
        "/ws/notifications/1/",
        &[("X-Padding", &"p".repeat(200))],
    );

    // Connects and says nothing.
    let (lasted, _) = trickle(addr, b"", b"", Duration::from_millis(50));
    assert!(
        lasted < limit + slack,
        "silent connection lasted {lasted:?}"
    );
    // Sends the head a byte every 50 ms: 400+ bytes would take 20 s.
    let (lasted, status) = trickle(addr, b"", &head, Duration::from_millis(50));
    // actix-http reads its clock from a cache refreshed every 500 ms: the cut may come early.
    assert!(
        lasted >= limit / 2 && lasted < limit + slack,
        "slowloris lasted {lasted:?}"
    );
    assert_eq!(status, 408);
    // A second request on the same connection: actix-http would not time it, so the gateway
    // closes every connection after its first response.
    let first = format!("GET /api/notifications/1 HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let (lasted, _) = trickle(addr, first.as_bytes(), &head, Duration::from_millis(50));
    assert!(
        lasted < limit + slack,
        "slowloris after a first request lasted {lasted:?}"
    );
    // Meanwhile and after, prompt clients are served.
    assert_eq!(RawSocket::handshake(addr, "/ws/notifications/1/").0, 101);
}

/// `count` refused handshakes of assorted kinds, from `threads` threads.
fn failed_handshakes(addr: SocketAddr, count: usize, threads: usize) {
    let valid_for_other = jwt::access(99);
    let forged = jwt::hs256_with(
        &jwt::access_claims(5, 300),
        "an-attackers-guess-at-the-secret-key",
    );
    let expired = jwt::hs256(&jwt::access_claims(5, -60));
    let none = jwt::unsigned(r#"{"alg":"none"}"#, &jwt::access_claims(5, 300));
    let targets: Vec<String> = [
        String::new(),
        format!("?token={valid_for_other}"),
        format!("?token={forged}"),
        format!("?token={expired}"),
        format!("?token={none}"),
        "?token=garbage".into(),
    ]
    .iter()
    .map(|query| format!("/ws/notifications/5/{query}"))
    .collect();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let targets = &targets;
            scope.spawn(move || {
                for i in (t..count).step_by(threads) {
                    let target = &targets[i % targets.len()];
                    let (status, _) = exchange(addr, &upgrade(addr, target, &[]));
                    assert!(matches!(status, 401 | 403), "{target}: {status}");
                }
            });
        }
    });
}

/// Opens `count` connections that send half a request head and then nothing.
fn half_open(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("opening a half-open connection");
            stream
                .write_all(b"GET /ws/notifications/5/ HTTP/1.1\r\nUpgrade: websocket\r\nX-Sl")
                .unwrap();
            stream
        })
        .collect()
}

/// Waits until the gateway holds at most `fds` descriptors.
fn wait_fds(pid: u32, fds: usize) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = open_fds(pid);
        if now <= fds {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "gateway still holds {now} fds, expected {fds}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Holds `count` half-open connections until the gateway has dropped every one of them on its
/// own (the client never closes them), then lets go.
fn half_open_burst(addr: SocketAddr, pid: u32, count: usize, fds_before: usize) {
    let held = half_open(addr, count);
    wait_fds(pid, fds_before + 1);
    drop(held);
}

#[tokio::test]
async fn a_flood_of_failed_handshakes_and_half_open_connections_leaves_no_trace() {
    // 1000 half-open connections at once, on both ends, plus the gateway's own files.
    e2e::require_open_files(4096);
    let mut settings = jwt::HS256_SETTINGS.to_vec();
    settings.push(("GW__SERVER__HANDSHAKE_TIMEOUT_MS", "1000"));
    let gateway = Gateway::start(None, &settings);
    let (addr, pid) = (gateway.addr, gateway.pid());
    let (idle_rss, idle_fds) = (rss_kib(pid), open_fds(pid));
    let blocking = |f: Box<dyn FnOnce() + Send>| tokio::task::spawn_blocking(f);

    // 1. Failed handshakes, thousands in a row, while a legitimate user is served. After a
    //    warm-up the memory does not move: nothing is kept per refused request.
    blocking(Box::new(move || failed_handshakes(addr, 1000, 4)))
        .await
        .unwrap();
    let before_failures = rss_kib(pid);
    let started = Instant::now();
    let flood = blocking(Box::new(move || failed_handshakes(addr, 5000, 4)));
    let mut legit = WsClient::connect(&format!(
        "{}?token={}",
        gateway.ws_url("77"),
        jwt::access(77)
    ))
    .await;
    let (status, _) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user":77,"type":"success","message":"served during the flood"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        legit.next_json().await["message"],
        "served during the flood"
    );
    flood.await.unwrap();
    let failures_took = started.elapsed();
    let after_failures = rss_kib(pid);

    // 2. Bursts of 1000 half-open connections: the gateway cuts each after the handshake
    //    timeout. The first two bursts set the allocator's working size (over 10 identical
    //    bursts the RSS rose by 7, 2, 1, then under 1 MiB per burst, levelling off); two more
    //    must then leave the memory where it was.
    for _ in 0..2 {
        let fds = open_fds(pid);
        blocking(Box::new(move || half_open_burst(addr, pid, 1000, fds)))
            .await
            .unwrap();
    }
    let (before_bursts, fds_before) = (rss_kib(pid), open_fds(pid));
    let started = Instant::now();
    for _ in 0..2 {
        blocking(Box::new(move || {
            half_open_burst(addr, pid, 1000, fds_before)
        }))
        .await
        .unwrap();
    }
    let bursts_took = started.elapsed();
    let (after_bursts, fds_after) = (rss_kib(pid), open_fds(pid));
    legit.close().await;
    gateway.wait_metric("gateway_sockets_open", |n| n == 0);
    eprintln!(
        "flood: idle rss {idle_rss} KiB, fds {idle_fds}; 5000 failed handshakes in \
         {failures_took:?}: rss {before_failures} -> {after_failures} KiB; two bursts of 1000 \
         half-open connections in {bursts_took:?}: rss {before_bursts} -> {after_bursts} KiB, \
         fds {fds_before} -> {fds_after}"
    );
    // Tolerances sit between what the allocator does on its own (measured: +0.4 to +0.5 MiB
    // after 5000 refusals, +1.3 to +2.8 MiB after two bursts) and the smallest leak worth
    // catching: 1 KiB kept per refused request is 5 MiB here, one 8 KiB read buffer kept per
    // half-open connection 16 MiB. Leaked connections themselves show in the fd count, exact.
    assert!(
        after_failures <= before_failures + 2 * 1024,
        "5000 failed handshakes grew the rss from {before_failures} to {after_failures} KiB"
    );
    let tolerance = (before_bursts / 5).max(4 * 1024);
    assert!(
        after_bursts <= before_bursts + tolerance,
        "half-open bursts grew the rss from {before_bursts} to {after_bursts} KiB"
    );
    assert!(fds_after <= fds_before, "fds {fds_before} -> {fds_after}");
    assert_eq!(gateway.metric("gateway_upgrades_refused_total"), 6000);
    assert_eq!(gateway.metric("gateway_sockets_open"), 0);
    // And the node serves as before.
    WsClient::connect(&format!(
        "{}?token={}",
        gateway.ws_url("78"),
        jwt::access(78)
    ))
    .await;
}
