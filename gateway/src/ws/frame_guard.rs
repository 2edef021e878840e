//! Refuses an oversized client frame as soon as its header announces the size.
//!
//! actix-http's frame parser (3.20) compares a frame's length with the limit only once the
//! whole frame is buffered, so a client that announces a 1 GiB frame and keeps sending makes
//! the server buffer all of it (measured: 200 MiB sent, RSS grew by 200 MiB with
//! `ws.max_frame_bytes` = 4096). This wrapper around the request body reads frame headers as
//! the bytes pass and fails the stream on the first header over the limit; the session closes
//! the socket with 1009. It only looks at headers and skips payloads, so it costs a few
//! comparisons per chunk.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::{self, Bytes};
use actix_web::{dev, FromRequest, HttpRequest};
use futures_util::Stream;

/// The request body of an upgrade, behind a [`FrameGuard`].
pub async fn guard(
    req: &HttpRequest,
    body: web::Payload,
    max_frame_bytes: usize,
) -> Result<web::Payload, actix_web::Error> {
    let guarded = FrameGuard::new(body.into_inner(), max_frame_bytes);
    let mut payload: dev::Payload = dev::Payload::Stream {
        payload: Box::pin(guarded),
    };
    // The only way to make a `web::Payload` of another stream; it takes it, nothing more.
    web::Payload::from_request(req, &mut payload).await
}

/// Where the guard is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a frame header: `have` of its bytes seen so far.
    Header { header: [u8; 14], have: usize },
    /// Skipping this many payload bytes.
    Payload { remaining: u64 },
    /// A frame over the limit was announced; nothing more is passed on.
    Refused,
}

pub struct FrameGuard<S> {
    inner: S,
    max_frame_bytes: u64,
    state: State,
}

impl<S> FrameGuard<S> {
    pub fn new(inner: S, max_frame_bytes: usize) -> Self {
        FrameGuard {
            inner,
            max_frame_bytes: max_frame_bytes as u64,
            state: State::Header {
                header: [0; 14],
                have: 0,
            },
        }
    }

    /// Follows `chunk` through frame boundaries; `false` once a frame is over the limit.
    fn admit(&mut self, mut chunk: &[u8]) -> bool {
        while !chunk.is_empty() {
            match &mut self.state {
                State::Refused => return false,
                State::Payload { remaining } => {
                    let skip = (*remaining).min(chunk.len() as u64);
                    *remaining -= skip;
                    chunk = &chunk[skip as usize..];
                    if *remaining == 0 {
                        self.state = State::Header {
                            header: [0; 14],
                            have: 0,
                        };
                    }
                }
                State::Header { header, have } => {
                    header[*have] = chunk[0];
                    *have += 1;
                    chunk = &chunk[1..];
                    let Some((length, header_len)) = announced_length(&header[..*have]) else {
                        continue;
                    };
                    if *have < header_len {
                        continue;
                    }
                    if length > self.max_frame_bytes {
                        self.state = State::Refused;
                        return false;
                    }
                    self.state = if length == 0 {
                        State::Header {
                            header: [0; 14],
                            have: 0,
                        }
                    } else {
                        State::Payload { remaining: length }
                    };
                }
            }
        }
        true
    }
}

/// The payload length a frame header announces and the header's full size (mask included),
/// once enough of it is known.
fn announced_length(header: &[u8]) -> Option<(u64, usize)> {
    let second = *header.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    match second & 0x7f {
        126 => {
            let len = u16::from_be_bytes([*header.get(2)?, *header.get(3)?]);
            Some((u64::from(len), 4 + mask))
        }
        127 => {
            let bytes: [u8; 8] = header.get(2..10)?.try_into().ok()?;
            Some((u64::from_be_bytes(bytes), 10 + mask))
        }
        len => Some((u64::from(len), 2 + mask)),
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.state == State::Refused {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if self.admit(&chunk) {
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            }
            other => other,
        }
    }
}

/// Whether a stream error means the client sent too much: this guard's refusal, or actix-ws's
/// limit on a message in continuation frames (an untyped I/O error; matched on its text, and
/// should that text change the socket still closes, with 1002).
pub fn is_oversized(error: &actix_ws::ProtocolError) -> bool {
    let actix_ws::ProtocolError::Io(io) = error else {
        return false;
    };
    let ours = io
        .get_ref()
        .and_then(|e| e.downcast_ref::<PayloadError>())
        .is_some_and(|e| matches!(e, PayloadError::Overflow));
    ours || io.to_string() == "Exceeded maximum continuation size"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len_field: &[u8], masked: bool, payload: usize) -> Vec<u8> {
        let mut f = vec![0x81, len_field[0] | if masked { 0x80 } else { 0 }];
        f.extend_from_slice(&len_field[1..]);
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', payload));
        f
    }

    #[test]
    fn frames_within_the_limit_pass_whatever_the_chunking() {
        let stream: Vec<u8> = [
            frame(&[5], true, 5),
            frame(&[0], true, 0),
            frame(&[126, 0x01, 0x00], true, 256),
            frame(&[127, 0, 0, 0, 0, 0, 0, 0x03, 0xe8], true, 1000),
        ]
        .concat();
        for chunk_size in [1, 2, 3, 7, 64, stream.len()] {
            let mut guard = FrameGuard::new((), 1000);
            for chunk in stream.chunks(chunk_size) {
                assert!(guard.admit(chunk), "chunks of {chunk_size}");
            }
            assert!(matches!(guard.state, State::Header { have: 0, .. }));
        }
    }

    #[test]
    fn an_oversized_announcement_is_refused_before_its_payload() {
        for len_field in [
            &[126u8, 0x03, 0xe9][..],
            &[127, 0, 0, 0, 0, 0x40, 0, 0, 0],
            &[127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            let header = frame(len_field, true, 0);
            let mut guard = FrameGuard::new((), 1000);
            assert!(guard.admit(&frame(&[3], true, 3)));
            assert!(!guard.admit(&header), "{len_field:?}");
            assert!(!guard.admit(b"more"), "stays refused");
        }
    }
}
