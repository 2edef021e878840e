//! After a close handshake the server closes the TCP connection at once (RFC 6455 §7.1.1: the
//! server closes first), whichever side started it: clients (browsers, Python websockets) wait
//! for that end-of-stream before they reconnect, and the socket's memory is held until then.
//!
//! Measured with a raw socket: the time from the close frame's arrival to end-of-stream, for
//! the client's close and for each close the gateway sends.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::{jwt, Gateway, RawSocket, DEADLINE};

/// The longest a client may wait for end-of-stream after the close frame.
const PROMPT: Duration = Duration::from_millis(50);

/// A masked client frame (mask key zero, so the payload goes unchanged).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// The code of the first close frame in server-to-client (unmasked) frames, if one is
/// complete.
fn close_code(mut data: &[u8]) -> Option<u16> {
    while data.len() >= 2 {
        let (len, header) = match data[1] & 0x7f {
            126 if data.len() >= 4 => (u16::from_be_bytes([data[2], data[3]]) as usize, 4),
            127 if data.len() >= 10 => (
                u64::from_be_bytes(data[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n if n < 126 => (n as usize, 2),
            _ => return None,
        };
        if data.len() < header + len {
            return None;
        }
        if data[0] & 0x0f == 0x8 && len >= 2 {
            return Some(u16::from_be_bytes([data[header], data[header + 1]]));
        }
        data = &data[header + len..];
    }
    None
}

/// Reads (answering pings with nothing) until the server's close frame, answers it as a
/// client does, and reads on until end-of-stream. Returns the close code and the time from
/// the close frame's arrival to end-of-stream.
fn close_handshake(raw: &mut RawSocket) -> (u16, Duration) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut closed: Option<(u16, Instant)> = None;
    let started = Instant::now();
    loop {
        let read = raw.stream.read(&mut buf);
        let at = Instant::now();
        match read {
            Ok(0) => break,
            Ok(n) => {
                if closed.is_none() {
                    data.extend_from_slice(&buf[..n]);
                    if let Some(code) = close_code(&data) {
                        closed = Some((code, at));
                        // The client's half of the handshake; the server may have closed its
                        // side already, which is what is measured.
                        let _ = raw
                            .stream
                            .write_all(&client_frame(0x8, &code.to_be_bytes()));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "no end-of-stream after {:?} (close frame: {closed:?}): {e}",
                started.elapsed()
            ),
        }
    }
    let eof = Instant::now();
    let (code, at) = closed.expect("the connection ended without a close frame");
    (code, eof - at)
}

fn assert_prompt(what: &str, (code, took): (u16, Duration), expected: u16) {
    assert_eq!(code, expected, "{what}: close code");
    assert!(
        took <= PROMPT,
        "{what}: the server kept the TCP connection {took:?} after the close frame"
    );
    eprintln!("{what}: close {code}, end-of-stream {took:?} after the close frame");
}

fn open(addr: SocketAddr, path: &str) -> RawSocket {
    let (status, raw) = RawSocket::handshake(addr, path);
    assert_eq!(status, 101, "handshake of {path}");
    raw
}

#[tokio::test]
async fn client_close_too_big_and_idle_closes_end_the_connection_at_once() {
    let gateway = Gateway::start(
        None,
        &[
            ("GW__WS__MAX_FRAME_BYTES", "1024"),
            ("GW__WS__PING_INTERVAL_MS", "100"),
            ("GW__WS__IDLE_TIMEOUT_MS", "400"),
        ],
    );
    let addr = gateway.addr;
    tokio::task::spawn_blocking(move || {
        // The client closes: the server answers 1000 and hangs up.
        let mut raw = open(addr, "/ws/notifications/1/");
        raw.stream
            .write_all(&client_frame(0x8, &1000u16.to_be_bytes()))
            .unwrap();
        assert_prompt("client close", close_handshake(&mut raw), 1000);

        let mut raw = open(addr, "/ws/notifications/2/");
        raw.stream
            .write_all(&client_frame(0x1, &[b'y'; 4096]))
            .unwrap();
        assert_prompt("frame too big", close_handshake(&mut raw), 1009);

        // Answers no ping: closed with 4000 after the idle timeout.
        let mut raw = open(addr, "/ws/notifications/3/");
        assert_prompt("idle", close_handshake(&mut raw), 4000);
    })
    .await
    .unwrap();
    gateway.wait_metric("gateway_sockets_open", |n| n == 0);
}

#[tokio::test]
async fn token_expiry_and_shutdown_closes_end_the_connection_at_once() {
    let mut settings = jwt::HS256_SETTINGS.to_vec();
    settings.push(("GW__AUTH__EXPIRY_GRACE_MS", "0"));
    let mut gateway = Gateway::start(None, &settings);
    let addr = gateway.addr;
    tokio::task::spawn_blocking(move || {
        let short_lived = jwt::hs256(&jwt::access_claims(4, 1));
        let mut raw = open(addr, &format!("/ws/notifications/4/?token={short_lived}"));
        assert_prompt("token expired", close_handshake(&mut raw), 4001);

        let mut raw = open(
            addr,
            &format!("/ws/notifications/5/?token={}", jwt::access(5)),
        );
        let stopping = std::thread::spawn(move || gateway.terminate());
        assert_prompt("shutdown", close_handshake(&mut raw), 1012);
        let (status, _) = stopping.join().unwrap();
        assert!(status.success(), "{status:?}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_slow_consumer_is_hung_up_on_right_after_its_close_frame() {
    let gateway = Gateway::start(
        None,
        &[
            ("GW__WS__OUTBOUND_QUEUE", "4"),
            ("GW__WS__WRITE_TIMEOUT_MS", "300"),
        ],
    );
    // Never reads until the gateway gave up on it.
    let mut raw = open(gateway.addr, "/ws/notifications/6/");
    let body = format!(
        r#"{{"user":6,"type":"info","message":"filler","data":{{"x":"{}"}}}}"#,
        "x".repeat(32 * 1024)
    );
    let deadline = Instant::now() + DEADLINE;
    let dropped = "gateway_messages_dropped_total{cause=\"slow_client\"}";
    let mut sent = 0;
    while gateway.metric(dropped) == 0 {
        assert!(
            sent < 2000 && Instant::now() < deadline,
            "no slow_client drop after {sent} notifications\n{}",
            gateway.log()
        );
        for _ in 0..10 {
            let (status, _) =
                e2e::http_post_json(gateway.internal, "/api/publish", &[], &body).unwrap();
            assert_eq!(status, 200);
        }
        sent += 10;
    }
    // Reading now lets the close frame through (the gateway waits up to a second to send
    // it), then end-of-stream must follow at once.
    let closed = tokio::task::spawn_blocking(move || close_handshake(&mut raw))
        .await
        .unwrap();
    assert_prompt("slow consumer", closed, 4008);
    gateway.wait_metric("gateway_sockets_open", |n| n == 0);
}
