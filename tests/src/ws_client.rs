//! Browser stand-ins: [`WsClient`] reads frames and close codes; [`RawSocket`] completes the
//! handshake and then misbehaves.

use super::*;

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a browser sees: JSON text frames, then a close code.
pub struct WsClient {
    pub(crate) ws: Ws,
}

/// How a socket ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The connection ended without a close frame.
    Abrupt,
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        Self::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"))
    }

    pub async fn try_connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (ws, _response) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| {
                tokio_tungstenite::tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into())
            })??;
        Ok(WsClient { ws })
    }

    /// The next text frame exactly as sent (pings are answered as a browser would).
    pub async fn next_text(&mut self) -> String {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("no frame within the deadline");
            match frame {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next JSON text frame (pings are answered by tungstenite as a browser would).
    pub async fn next_json(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("no frame within the deadline");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next JSON text frame, or how the socket ended if it ends first.
    pub async fn next_json_or_close(&mut self) -> Result<Value, Closed> {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("neither a frame nor a close within the deadline");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}")))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(Some(close)))) => {
                    return Err(Closed::Code(u16::from(close.code)))
                }
                Some(Ok(Message::Close(None))) => {
                    return Err(Closed::Code(u16::from(CloseCode::Status)))
                }
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(_)) | None => return Err(Closed::Abrupt),
            }
        }
    }

    /// Reads until the socket closes; panics if a text frame arrives first.
    pub async fn closed(&mut self) -> Closed {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("socket not closed within the deadline");
            match frame {
                Some(Ok(Message::Close(Some(close)))) => {
                    return Closed::Code(u16::from(close.code))
                }
                Some(Ok(Message::Close(None))) => {
                    return Closed::Code(u16::from(CloseCode::Status))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected the socket to close, got {other:?}"),
                Some(Err(_)) | None => return Closed::Abrupt,
            }
        }
    }

    /// The next JSON text frame, or `None` once the socket ended (closed, broken, or
    /// silent for the deadline).
    pub async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(DEADLINE, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("sending a text frame");
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close arrives so the server has seen it.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, self.ws.next()).await {}
    }
}

/// A WebSocket peer that does the handshake and then only does what the test says.
pub struct RawSocket {
    pub stream: TcpStream,
}

impl RawSocket {
    /// Opens the socket; returns the HTTP status of the handshake response and the socket.
    pub fn handshake(addr: SocketAddr, path: &str) -> (u16, Self) {
        let mut stream = TcpStream::connect(addr).expect("connecting to the gateway");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        // Read the response head byte by byte so no frame byte is consumed with it.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream
                .read_exact(&mut byte)
                .expect("reading the handshake response");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, RawSocket { stream })
    }

    /// Sends a handshake and waits briefly for the answer: `None` when none came within
    /// 300 ms (the server is still deciding), else its status. The socket is returned open.
    pub fn start_handshake(addr: SocketAddr, path: &str) -> (Option<u16>, Self) {
        let mut stream = TcpStream::connect(addr).expect("connecting to the gateway");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut head = [0u8; 12];
        let status = match stream.read(&mut head) {
            Ok(n) if n >= 12 => std::str::from_utf8(&head[9..12])
                .ok()
                .and_then(|s| s.parse().ok()),
            _ => None,
        };
        (status, RawSocket { stream })
    }

    /// Reads frames (answering nothing) until the server closes the TCP connection.
    /// Returns the close code of the close frame seen, if any.
    pub fn read_until_eof(&mut self) -> Option<u16> {
        let mut data = Vec::new();
        let started = Instant::now();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading after {:?}: {e}", started.elapsed()),
            }
        }
        parse_close_code(&data)
    }
}

/// Walks server-to-client (unmasked) frames and returns the code of the first close frame.
fn parse_close_code(mut data: &[u8]) -> Option<u16> {
    while data.len() >= 2 {
        let opcode = data[0] & 0x0f;
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
        if opcode == 0x8 && len >= 2 {
            return Some(u16::from_be_bytes([data[header], data[header + 1]]));
        }
        data = &data[header + len..];
    }
    None
}

/// A refused WebSocket handshake: the HTTP status and the JSON body.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub body: Value,
}

impl WsClient {
    /// Connects with extra request headers. Returns the client and the subprotocol the
    /// server selected, or the refusal. Panics on anything else (I/O errors, timeouts).
    pub async fn connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Self, Option<String>), Refusal> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut request = url.into_client_request().expect("a ws:// URL");
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let connected = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
            .await
            .unwrap_or_else(|_| panic!("handshake with {url} timed out"));
        match connected {
            Ok((ws, response)) => {
                let protocol = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap().to_owned());
                Ok((WsClient { ws }, protocol))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().clone().unwrap_or_default();
                Err(Refusal {
                    status: response.status().as_u16(),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                })
            }
            Err(other) => panic!("handshake with {url} failed: {other}"),
        }
    }

    /// The refusal of a handshake that must fail.
    pub async fn refused(url: &str, headers: &[(&str, &str)]) -> Refusal {
        match Self::connect_with(url, headers).await {
            Ok(_) => panic!("{url} with {headers:?} was accepted"),
            Err(refusal) => refusal,
        }
    }
}
