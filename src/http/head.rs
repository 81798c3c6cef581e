//! Reading a request head ourselves (httparse), before deciding who serves the
//! connection: SSE streams go to the lean writer, everything else to hyper, which
//! is handed the bytes already read through [`Rewind`]. The head is bounded in size
//! (431 beyond) and, by the caller, in time (slowloris).

use std::borrow::Cow;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Most headers accepted in one request.
pub const MAX_HEADERS: usize = 64;

/// Why no head could be read.
#[derive(Debug)]
pub enum HeadError {
    /// The client closed (or reset) before sending a whole head.
    Closed,
    /// Larger than the limit, or too many headers: 431.
    TooLarge,
    /// Not HTTP/1.x: 400.
    Malformed,
}

/// What herald needs from a request head.
#[derive(Debug)]
pub struct Head {
    /// `GET`, `POST`, `OPTIONS`, `HEAD` or `OTHER`.
    pub method: &'static str,
    /// Herald's own routes borrowed, any other path owned.
    pub path: Cow<'static, str>,
    pub query: String,
    pub last_event_id: Option<String>,
    /// The `Authorization` header (never logged).
    pub authorization: Option<String>,
    /// The `Origin` header (CORS).
    pub origin: Option<String>,
    /// Bytes of the head: where the body starts.
    pub len: usize,
    /// The connection stays open after the answer (HTTP/1.1 without
    /// `Connection: close`).
    pub keep_alive: bool,
    /// The body's length when it is framed plainly: one valid `Content-Length`
    /// (or none: 0), no `Transfer-Encoding`, no `Expect`. `None`: anything else.
    pub plain_body: Option<u64>,
    /// The `Idempotency-Key` header, validated (see [`crate::idempotency`]).
    pub idempotency_key: Result<Option<Box<str>>, crate::error::ApiError>,
}

/// Read from `io` into `buf` until a whole head is there; returns it parsed.
pub async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Head, HeadError> {
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse(buf)? {
                return Ok(head);
            }
        }
        if buf.len() >= max {
            return Err(HeadError::TooLarge);
        }
        let room = (max + 1 - buf.len()).min(4096);
        buf.reserve(room);
        let mut limited = (&mut *io).take(room as u64);
        match limited.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(_) => {}
        }
    }
}

/// The methods herald routes itself (any other is served by hyper, which
/// parses the head again).
fn method_name(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "OPTIONS" => "OPTIONS",
        "HEAD" => "HEAD",
        _ => "OTHER",
    }
}

/// The paths herald routes itself as static strings: no allocation for them.
fn route(path: &str) -> Cow<'static, str> {
    match path {
        super::CONNECT_PATH => Cow::Borrowed(super::CONNECT_PATH),
        super::lean::PUBLISH_PATH => Cow::Borrowed(super::lean::PUBLISH_PATH),
        other => Cow::Owned(other.to_owned()),
    }
}

/// Parse a request head from `buf`: `None` while incomplete. Pure (fuzzed).
pub fn parse(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    // Left uninitialised: httparse fills what it parses (zeroing 64 headers
    // cost more than parsing a publish's three).
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            // One pass over the headers (this runs for every request).
            let text = |v: &[u8]| {
                std::str::from_utf8(v)
                    .ok()
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
            };
            let (mut last_event_id, mut authorization, mut origin) = (None, None, None);
            let (mut close, mut framed_otherwise) = (false, false);
            let (mut lengths, mut length) = (0, None);
            let mut keys = false;
            for h in req.headers.iter() {
                let n = h.name.as_bytes();
                let is = |name: &str| n.eq_ignore_ascii_case(name.as_bytes());
                match n.len() {
                    6 if is("origin") => origin = origin.or_else(|| text(h.value)),
                    6 if is("expect") => framed_otherwise = true,
                    10 if is("connection") => {
                        close |= h
                            .value
                            .split(|&b| b == b',')
                            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                    }
                    13 if is("last-event-id") => {
                        last_event_id = last_event_id.or_else(|| text(h.value))
                    }
                    13 if is("authorization") => {
                        authorization = authorization.or_else(|| text(h.value))
                    }
                    14 if is("content-length") => {
                        lengths += 1;
                        length = Some(h.value);
                    }
                    15 if is("idempotency-key") => keys = true,
                    17 if is("transfer-encoding") => framed_otherwise = true,
                    _ => {}
                }
            }
            let keep_alive = req.version == Some(1) && !close;
            let plain_body = match (lengths, length) {
                _ if framed_otherwise || lengths > 1 => None,
                (_, None) => Some(0),
                (_, Some(v)) => std::str::from_utf8(v)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse().ok()),
            };
            let idempotency_key = if keys {
                crate::idempotency::key_of(
                    req.headers
                        .iter()
                        .filter(|h| h.name.eq_ignore_ascii_case("idempotency-key"))
                        .map(|h| h.value),
                )
            } else {
                Ok(None)
            };
            Ok(Some(Head {
                method: method_name(req.method.unwrap_or("")),
                path: route(path),
                query: query.to_string(),
                last_event_id,
                authorization,
                origin,
                len,
                keep_alive,
                plain_body,
                idempotency_key,
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// An I/O object that first yields `prefix`, then reads from `inner`.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Give the memory back: this connection may live long.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_head_in_pieces() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for part in [
                "GET /api/user/sse/connect?userId=u HTTP/1.1\r\n",
                "Last-Event-ID: 7\r\n",
                "\r\n",
            ] {
                client.write_all(part.as_bytes()).await.unwrap();
            }
            client
        });
        let mut buf = BytesMut::new();
        let head = read(&mut server, &mut buf, 16 << 10).await.unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/api/user/sse/connect");
        assert_eq!(head.query, "userId=u");
        assert_eq!(head.last_event_id.as_deref(), Some("7"));
    }

    #[tokio::test]
    async fn refuses_oversized_heads_and_garbage() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(3000));
        let mut io = big.as_bytes();
        assert!(matches!(
            read(&mut io, &mut BytesMut::new(), 2048).await,
            Err(HeadError::TooLarge)
        ));
        let mut io = &b"\x16\x03\x01 not http\r\n\r\n"[..];
        assert!(matches!(
            read(&mut io, &mut BytesMut::new(), 2048).await,
            Err(HeadError::Malformed)
        ));
        let mut io = &b"GET / HTTP/1.1\r\n"[..];
        assert!(matches!(
            read(&mut io, &mut BytesMut::new(), 2048).await,
            Err(HeadError::Closed)
        ));
    }
}
