//! [`SseClient`]: a raw HTTP/1.1 Server-Sent Events reader over TCP, parsing the stream as
//! the HTML standard's `EventSource` does (chunked bodies decoded, `data:` lines joined with
//! `\n`, `id:` kept as the last event id, `retry:` recorded), and also reporting comments so
//! that heartbeats can be observed.

use super::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` of this event, if it had one.
    pub id: Option<String>,
    /// The `event:` name; `None` is the default `message` event (`onmessage`).
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Event(SseEvent),
    /// A comment line (`: ping`), without its colon.
    Comment(String),
}

pub struct SseClient {
    stream: tokio::net::TcpStream,
    pub status: u16,
    /// Response headers, names lowercased.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// Bytes read from the socket not yet decoded.
    raw: Vec<u8>,
    /// Decoded body bytes not yet parsed into lines.
    body: Vec<u8>,
    /// The body ended (last chunk, or EOF).
    ended: bool,
    /// The last event id, as `EventSource.lastEventId` would hold it.
    pub last_event_id: Option<String>,
    /// The last `retry:` value.
    pub retry_ms: Option<u64>,
    // The event being assembled.
    data: Vec<String>,
    event: Option<String>,
    id: Option<String>,
}

impl SseClient {
    /// `GET path` with extra headers. A non-200 answer is returned as a [`Refusal`].
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, Refusal> {
        tokio::time::timeout(DEADLINE, Self::try_connect(addr, path, headers))
            .await
            .unwrap_or_else(|_| panic!("GET {path} on {addr}: no answer within the deadline"))
            .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
    }

    /// As [`SseClient::connect`], but an I/O error (nobody listening) is returned.
    pub async fn try_connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Result<Self, Refusal>> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        let head_end = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::other(format!(
                    "connection closed before a response head: {:?}",
                    String::from_utf8_lossy(&raw)
                )));
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let raw = raw[head_end + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let mut client = SseClient {
            stream,
            status,
            headers,
            chunked,
            raw,
            body: Vec::new(),
            ended: false,
            last_event_id: None,
            retry_ms: None,
            data: Vec::new(),
            event: None,
            id: None,
        };
        if status != 200 {
            let mut body = Vec::new();
            while client.fill().await {
                body.append(&mut client.body);
            }
            body.append(&mut client.body);
            return Ok(Err(Refusal {
                status,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            }));
        }
        Ok(Ok(client))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Decodes what `raw` holds into `body`; reads more from the socket when it holds no
    /// complete piece. Returns false once the body has ended.
    async fn fill(&mut self) -> bool {
        loop {
            if self.ended {
                return false;
            }
            let before = self.body.len();
            self.decode();
            if self.body.len() > before || self.ended {
                return !self.ended || !self.body.is_empty();
            }
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    self.ended = true;
                    return false;
                }
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]);
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
            if size == 0 {
                self.ended = true;
                return;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next event or comment; `None` once the stream ended. Panics when nothing arrives
    /// within [`DEADLINE`].
    pub async fn next_item(&mut self) -> Option<SseItem> {
        self.next_item_within(DEADLINE)
            .await
            .expect("no event, comment or end of stream within the deadline")
    }

    /// As [`SseClient::next_item`], `Err` when nothing arrived within `wait`.
    pub async fn next_item_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<SseItem>, tokio::time::error::Elapsed> {
        tokio::time::timeout(wait, self.parse_next()).await
    }

    async fn parse_next(&mut self) -> Option<SseItem> {
        loop {
            while let Some(end) = self.body.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.body.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8(line).expect("event stream is UTF-8");
                if let Some(item) = self.line(&line) {
                    return Some(item);
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// One line, as the HTML standard's "process the field" steps.
    fn line(&mut self, line: &str) -> Option<SseItem> {
        if line.is_empty() {
            let data = std::mem::take(&mut self.data);
            let event = self.event.take();
            let id = self.id.take();
            if id.is_some() {
                self.last_event_id = id.clone();
            }
            if data.is_empty() {
                return None;
            }
            return Some(SseItem::Event(SseEvent {
                id,
                event,
                data: data.join("\n"),
            }));
        }
        if let Some(comment) = line.strip_prefix(':') {
            return Some(SseItem::Comment(comment.trim_start().to_owned()));
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => self.data.push(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            "retry" => self.retry_ms = value.parse().ok(),
            _ => {}
        }
        None
    }

    /// The next event (comments skipped), `None` once the stream ended.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            match self.next_item().await? {
                SseItem::Event(event) => return Some(event),
                SseItem::Comment(_) => continue,
            }
        }
    }

    /// The next default (unnamed) event's data as JSON; panics on anything else.
    pub async fn next_json(&mut self) -> Value {
        let event = self
            .next_event()
            .await
            .expect("the stream ended instead of an event");
        assert_eq!(event.event, None, "expected a default event: {event:?}");
        event.json()
    }

    /// Reads until the stream ends; returns the `gateway.close` event's data if one came,
    /// panicking if a notification arrives first.
    pub async fn closed(&mut self) -> Option<Value> {
        let mut close = None;
        while let Some(event) = self.next_event().await {
            match event.event.as_deref() {
                Some("gateway.close") => close = Some(event.json()),
                _ => panic!("expected the stream to end, got {event:?}"),
            }
        }
        close
    }
}
