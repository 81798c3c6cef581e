//! A WHATWG-conformant `text/event-stream` client for the tests: lines end in
//! CR, LF or CRLF; `data` fields join with LF; a blank line dispatches; comments
//! are ignored; `id` sets the last event id; `retry` takes digits only; an event
//! with an empty data buffer is not dispatched.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event's own `id:` field, if it had one.
    pub id: Option<String>,
    /// The `event:` name (`message` when absent).
    pub event: String,
    pub data: String,
}

/// Incremental parser state.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    last_was_cr: bool,
    data: String,
    event: String,
    id_field: Option<String>,
    /// The last event ID buffer: set by `id:` lines, persists across events.
    id_buffer: String,
    /// The stream's last event id: the buffer as of the last dispatch (WHATWG
    /// "dispatch the event", step 1), so an event cut off before its blank line
    /// does not move it.
    pub last_event_id: String,
    /// Every `retry:` value seen, in order.
    pub retries: Vec<u64>,
    /// Comment lines seen.
    pub comments: usize,
}

impl Parser {
    /// Feed bytes; returns the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            match b {
                b'\n' if self.last_was_cr => self.last_was_cr = false,
                b'\n' | b'\r' => {
                    self.last_was_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&String::from_utf8_lossy(&line), &mut out);
                }
                _ => {
                    self.last_was_cr = false;
                    self.line.push(b);
                }
            }
        }
        out
    }

    fn line_done(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            let id = self.id_field.take();
            self.last_event_id = self.id_buffer.clone();
            if self.data.is_empty() {
                self.event.clear();
                return;
            }
            let mut data = std::mem::take(&mut self.data);
            if data.ends_with('\n') {
                data.pop();
            }
            let event = std::mem::take(&mut self.event);
            out.push(SseEvent {
                id,
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data,
            });
            return;
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                self.id_buffer = value.to_string();
                self.id_field = Some(value.to_string());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(v) = value.parse() {
                    self.retries.push(v);
                }
            }
            _ => {}
        }
    }
}

/// An open SSE stream over a real socket.
pub struct SseClient {
    pub stream: TcpStream,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Non-SSE bodies (errors) are read whole into here.
    pub body: String,
    pub parser: Parser,
    chunked: bool,
    raw: Vec<u8>,
    ready: std::collections::VecDeque<SseEvent>,
    pub eof: bool,
}

impl SseClient {
    /// Send `GET path` with extra headers and read the response head.
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut stream = tokio::time::timeout(super::WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut req =
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .expect("send request");
        Self::read_head(stream).await
    }

    /// Read a response head from an already-sent request.
    pub async fn read_head(mut stream: TcpStream) -> SseClient {
        let mut raw = Vec::new();
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(super::WAIT, stream.read(&mut buf))
                .await
                .expect("head in time")
                .expect("read head");
            assert!(
                n > 0,
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..n]);
        };
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hs);
        resp.parse(&raw[..head_end]).expect("valid head");
        let status = resp.code.unwrap_or(0);
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let rest = raw[head_end..].to_vec();
        let mut c = SseClient {
            stream,
            status,
            headers,
            body: String::new(),
            parser: Parser::default(),
            chunked,
            raw: Vec::new(),
            ready: Default::default(),
            eof: false,
        };
        if status != 200 {
            let mut body = rest;
            let _ = tokio::time::timeout(super::WAIT, c.stream.read_to_end(&mut body)).await;
            c.body = String::from_utf8_lossy(&body).into_owned();
            c.eof = true;
        } else {
            c.ingest(&rest);
        }
        c
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn ingest(&mut self, bytes: &[u8]) {
        if !self.chunked {
            let evs = self.parser.feed(bytes);
            self.ready.extend(evs);
            return;
        }
        self.raw.extend_from_slice(bytes);
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.raw[..eol]).unwrap_or("0").trim(),
                16,
            )
            .unwrap_or(0);
            if size == 0 {
                self.eof = true;
                return;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            let chunk: Vec<u8> = self.raw[eol + 2..eol + 2 + size].to_vec();
            self.raw.drain(..eol + 2 + size + 2);
            let evs = self.parser.feed(&chunk);
            self.ready.extend(evs);
        }
    }

    /// The next dispatched event, or `None` when the stream ended or `timeout` passed.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(ev);
            }
            if self.eof {
                return None;
            }
            let mut buf = [0u8; 16384];
            match tokio::time::timeout_at(until, self.stream.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(n)) => self.ingest(&buf[..n]),
            }
        }
    }

    /// The next event that is not a HEARTBEAT.
    pub async fn next_non_heartbeat(&mut self, timeout: Duration) -> Option<SseEvent> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let ev = self.next_event(left).await?;
            if ev.event != "HEARTBEAT" {
                return Some(ev);
            }
        }
    }

    /// Read until a HEARTBEAT arrives within `timeout`; the events before it, or
    /// `None` when none came.
    pub async fn until_heartbeat(&mut self, timeout: Duration) -> Option<Vec<SseEvent>> {
        let until = tokio::time::Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let ev = self.next_event(left).await?;
            if ev.event == "HEARTBEAT" {
                return Some(before);
            }
            before.push(ev);
        }
    }

    /// Wait until the server ends the stream; true if it did within `timeout`.
    /// Events that arrive meanwhile are kept and returned by later calls.
    pub async fn wait_closed(&mut self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        while !self.eof {
            let mut buf = [0u8; 16384];
            match tokio::time::timeout_at(until, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(n)) => self.ingest(&buf[..n]),
            }
        }
        true
    }

    /// Events already parsed and not yet taken.
    pub fn take_ready(&mut self) -> Vec<SseEvent> {
        self.ready.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_line_ending_and_multiline_data() {
        let mut p = Parser::default();
        let evs =
            p.feed(b"retry: 100\r\n\r\n: comment\nid: 1\revent: x\r\ndata: a\ndata:\ndata:  b\n\n");
        assert_eq!(p.retries, vec![100]);
        assert_eq!(p.comments, 1);
        assert_eq!(
            evs,
            vec![SseEvent {
                id: Some("1".into()),
                event: "x".into(),
                data: "a\n\n b".into()
            }]
        );
    }
}
