//! A raw HTTP/2 client over TLS (ALPN h2) for the conformance tests
//! (tests/h2_conformance.rs): it writes any frame (type, flags, stream id,
//! length, padding, priority fields) with header blocks encoded by hand
//! ([`super::hpack`]), and reads herald's frames back, its header blocks
//! decoded. The expectations (`expect_*`) name what herald should send and
//! panic with what it sent instead.
//!
//! Frames that are bookkeeping rather than an answer (WINDOW_UPDATE, SETTINGS
//! ACK, DATA without END_STREAM on a registered SSE stream) are "noise": the
//! expectations step over them but keep them in [`H2::noise`].
//!
//! `HERALD_H2_TRACE=1` prints every frame herald sends as it is read.

use std::collections::HashSet;
use std::fmt::Write as _;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::hpack::{self, Decoded};
use super::tls::tls_connect;
use super::{Herald, WAIT};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;
/// HEADERS that end both the block and the stream.
pub const EH_ES: u8 = END_HEADERS | END_STREAM;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const HEADER_TABLE_SIZE: u16 = 0x1;
pub const ENABLE_PUSH: u16 = 0x2;
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const MAX_FRAME_SIZE: u16 = 0x5;
pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
pub const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
pub const NO_RFC7540_PRIORITIES: u16 = 0x9;

/// h2spec's CommonHeaders (`GET /`), with `localhost` as the authority.
pub const COMMON: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/"),
    (":authority", "localhost"),
];

/// The bytes of one frame (the length is the payload's).
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A SETTINGS payload.
pub fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::with_capacity(6 * entries.len());
    for (id, v) in entries {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    p
}

/// A PRIORITY payload (also the head of a HEADERS with PRIORITY_FLAG); the
/// weight as written on the wire (weight - 1).
pub fn priority(dep: u32, exclusive: bool, weight: u8) -> Vec<u8> {
    let mut p = (dep | if exclusive { 1 << 31 } else { 0 })
        .to_be_bytes()
        .to_vec();
    p.push(weight);
    p
}

/// A four-byte payload (RST_STREAM's code, WINDOW_UPDATE's increment).
pub fn u32be(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub fn goaway_payload(last: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(debug);
    p
}

/// A padded payload: the pad length, `data`, then `pad` zeros.
pub fn padded(data: &[u8], pad: u8) -> Vec<u8> {
    let mut p = vec![pad];
    p.extend_from_slice(data);
    p.extend(std::iter::repeat_n(0, usize::from(pad)));
    p
}

/// `COMMON` with `method` and `path`, then `extra`.
pub fn request<'a>(
    method: &'a str,
    path: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut f = COMMON.to_vec();
    f[0].1 = method;
    f[2].1 = path;
    f.extend_from_slice(extra);
    f
}

/// The name of an error code.
pub fn code_name(code: u32) -> String {
    let name = match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => return format!("code 0x{code:x}"),
    };
    name.to_string()
}

/// A frame from herald. A HEADERS frame carries its whole block (with the
/// CONTINUATION frames that followed it), decoded.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
    pub block: Option<Block>,
}

/// A header block from herald.
#[derive(Debug, Clone)]
pub struct Block {
    pub decoded: Decoded,
    /// It was the first block on the connection, or the first after a
    /// SETTINGS frame of ours carrying SETTINGS_HEADER_TABLE_SIZE: it must
    /// open with a Dynamic Table Size Update.
    pub size_update_due: bool,
    /// CONTINUATION frames it came with.
    pub continuations: usize,
}

impl Frame {
    pub fn end_stream(&self) -> bool {
        matches!(self.kind, DATA | HEADERS) && self.flags & END_STREAM != 0
    }

    pub fn ack(&self) -> bool {
        matches!(self.kind, SETTINGS | PING) && self.flags & ACK != 0
    }

    /// RST_STREAM's code, GOAWAY's code.
    pub fn code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(b.try_into().unwrap()))
    }

    /// GOAWAY's last stream id.
    pub fn last_stream(&self) -> Option<u32> {
        let b = self.payload.get(..4)?;
        (self.kind == GOAWAY).then(|| u32::from_be_bytes(b.try_into().unwrap()) & 0x7fff_ffff)
    }

    /// WINDOW_UPDATE's increment.
    pub fn increment(&self) -> Option<u32> {
        let b = self.payload.get(..4)?;
        (self.kind == WINDOW_UPDATE)
            .then(|| u32::from_be_bytes(b.try_into().unwrap()) & 0x7fff_ffff)
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.block
            .as_ref()?
            .decoded
            .fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn status(&self) -> Option<u16> {
        self.field(":status")?.parse().ok()
    }

    /// SETTINGS entries.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|s| {
                (
                    u16::from_be_bytes([s[0], s[1]]),
                    u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                )
            })
            .collect()
    }

    /// One line naming the frame and what matters in it.
    pub fn describe(&self) -> String {
        let es = if self.end_stream() {
            ", END_STREAM"
        } else {
            ""
        };
        match self.kind {
            DATA => format!(
                "DATA(stream {}, {} bytes{es})",
                self.stream,
                self.payload.len()
            ),
            HEADERS => {
                let status = self.field(":status").unwrap_or("none");
                format!("HEADERS(stream {}, :status {status}{es})", self.stream)
            }
            PRIORITY => format!("PRIORITY(stream {})", self.stream),
            RST_STREAM => format!(
                "RST_STREAM(stream {}, {})",
                self.stream,
                self.code().map_or("short".into(), code_name)
            ),
            SETTINGS if self.ack() => "SETTINGS(ACK)".into(),
            SETTINGS => format!("SETTINGS({:?})", self.settings()),
            PUSH_PROMISE => format!("PUSH_PROMISE(stream {})", self.stream),
            PING => format!(
                "PING({}{:?})",
                if self.ack() { "ACK, " } else { "" },
                String::from_utf8_lossy(&self.payload)
            ),
            GOAWAY => format!(
                "GOAWAY(last_stream_id {}, {})",
                self.last_stream().unwrap_or(0),
                self.code().map_or("short".into(), code_name)
            ),
            WINDOW_UPDATE => format!(
                "WINDOW_UPDATE(stream {}, +{})",
                self.stream,
                self.increment().unwrap_or(0)
            ),
            CONTINUATION => format!("CONTINUATION(stream {})", self.stream),
            k => format!("frame of type 0x{k:x} (stream {})", self.stream),
        }
    }
}

/// What a read brought.
#[derive(Debug)]
pub enum Read {
    Frame(Frame),
    /// herald closed the connection (`clean`: with a TLS close_notify).
    Closed {
        clean: bool,
    },
    /// Nothing until the deadline.
    Timeout,
}

/// The reading side: herald's frames, its header blocks decoded.
pub struct Reader {
    pub rd: ReadHalf<TlsStream<TcpStream>>,
    buf: Vec<u8>,
    pub hpack: hpack::Decoder,
    /// The next block from herald must open with a size update.
    pub size_update_due: bool,
    pub closed: bool,
}

impl Reader {
    async fn fill(&mut self, until: Instant) -> Option<Read> {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(until, self.rd.read(&mut chunk)).await {
            Err(_) => Some(Read::Timeout),
            Ok(Ok(0)) => {
                self.closed = true;
                Some(Read::Closed { clean: true })
            }
            Ok(Err(_)) => {
                self.closed = true;
                Some(Read::Closed { clean: false })
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                None
            }
        }
    }

    async fn raw_frame(&mut self, until: Instant) -> Read {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                        block: None,
                    };
                    self.buf.drain(..9 + len);
                    return Read::Frame(f);
                }
            }
            if self.closed {
                return Read::Closed { clean: true };
            }
            if let Some(r) = self.fill(until).await {
                return r;
            }
        }
    }

    /// The next frame from herald, by `until`; a HEADERS frame with its
    /// CONTINUATION frames, decoded.
    pub async fn read(&mut self, until: Instant) -> Read {
        let r = self.read_inner(until).await;
        if std::env::var_os("HERALD_H2_TRACE").is_some() {
            match &r {
                Read::Frame(f) => eprintln!("herald -> {}", f.describe()),
                other => eprintln!("herald -> {other:?}"),
            }
        }
        r
    }

    async fn read_inner(&mut self, until: Instant) -> Read {
        let mut f = match self.raw_frame(until).await {
            Read::Frame(f) => f,
            other => return other,
        };
        if f.kind != HEADERS {
            return Read::Frame(f);
        }
        let mut block = f.payload.clone();
        if f.flags & PADDED != 0 {
            let pad = usize::from(block[0]);
            block = block[1..block.len() - pad].to_vec();
        }
        if f.flags & PRIORITY_FLAG != 0 {
            block = block[5..].to_vec();
        }
        let mut continuations = 0;
        let mut flags = f.flags;
        while flags & END_HEADERS == 0 {
            match self.raw_frame(until).await {
                Read::Frame(c) if c.kind == CONTINUATION && c.stream == f.stream => {
                    block.extend_from_slice(&c.payload);
                    flags = c.flags;
                    continuations += 1;
                }
                Read::Frame(c) => panic!(
                    "herald broke its header block on stream {} with {}",
                    f.stream,
                    c.describe()
                ),
                other => panic!(
                    "herald's header block on stream {} was cut short: {other:?}",
                    f.stream
                ),
            }
        }
        let decoded = self.hpack.decode(&block).unwrap_or_else(|e| {
            panic!(
                "herald's header block on stream {} does not decode: {e}",
                f.stream
            )
        });
        assert!(
            !decoded.indexes,
            "herald's header block on stream {} uses the dynamic table: {block:02x?}",
            f.stream
        );
        f.block = Some(Block {
            decoded,
            size_update_due: std::mem::take(&mut self.size_update_due),
            continuations,
        });
        Read::Frame(f)
    }
}

/// An answer read whole.
#[derive(Debug, Default)]
pub struct Answer {
    pub status: u16,
    pub fields: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// HEADERS carried END_STREAM.
    pub headers_ended: bool,
    pub data_frames: usize,
}

impl Answer {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// One connection to herald.
pub struct H2 {
    pub r: Reader,
    pub wr: WriteHalf<TlsStream<TcpStream>>,
    /// herald's first frames up to its ACK of our SETTINGS ([`H2::open`]).
    pub preface: Vec<Frame>,
    /// Frames the expectations stepped over.
    pub noise: Vec<Frame>,
    /// Streams whose DATA without END_STREAM is noise (open SSE streams).
    pub sse: HashSet<u32>,
    /// The next stream id [`H2::alive`] uses.
    pub next_id: u32,
    pings: u64,
}

impl H2 {
    /// TLS with ALPN h2, nothing sent yet.
    pub async fn tls(h: &Herald, der: &CertificateDer<'static>) -> H2 {
        let tls = tls_connect(h, &[der], &[b"h2"])
            .await
            .expect("TLS handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "herald chose h2"
        );
        let (rd, wr) = tokio::io::split(tls);
        H2 {
            r: Reader {
                rd,
                buf: Vec::new(),
                hpack: hpack::Decoder::new(4096),
                size_update_due: true,
                closed: false,
            },
            wr,
            preface: Vec::new(),
            noise: Vec::new(),
            sse: HashSet::new(),
            next_id: 101,
            pings: 0,
        }
    }

    /// The client's preface and SETTINGS (`entries`), then herald's preface
    /// read up to its ACK of ours (kept in [`H2::preface`]; its values are
    /// checked by the tests of the preface, not here); herald's SETTINGS are
    /// ACKed when `ack`.
    pub async fn open(
        h: &Herald,
        der: &CertificateDer<'static>,
        entries: &[(u16, u32)],
        ack: bool,
    ) -> H2 {
        let mut c = H2::tls(h, der).await;
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &settings(entries)));
        c.write(&hello).await;
        c.read_preface().await;
        if ack {
            c.write(&frame(SETTINGS, ACK, 0, &[])).await;
        }
        c
    }

    /// herald's SETTINGS, what follows it, up to its ACK of ours.
    pub async fn read_preface(&mut self) {
        let until = Instant::now() + WAIT;
        loop {
            let f = match self.r.read(until).await {
                Read::Frame(f) => f,
                other => panic!(
                    "herald's preface: {other:?} after {:?}",
                    self.described(&self.preface)
                ),
            };
            if self.preface.is_empty() {
                assert!(
                    f.kind == SETTINGS && !f.ack(),
                    "herald's first frame must be its SETTINGS, it sent {}",
                    f.describe()
                );
            }
            let done = f.kind == SETTINGS && f.ack();
            assert!(
                matches!(f.kind, SETTINGS | WINDOW_UPDATE),
                "herald sent {} in its preface",
                f.describe()
            );
            self.preface.push(f);
            if done {
                return;
            }
        }
    }

    fn described(&self, frames: &[Frame]) -> Vec<String> {
        frames.iter().map(Frame::describe).collect()
    }

    /// Write `bytes` (any number of frames) at once. A failed write is not an
    /// error here: herald may have closed the connection, which the reads
    /// report.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.note_streams(bytes);
        let written = tokio::time::timeout(WAIT, put(&mut self.wr, bytes)).await;
        assert!(written.is_ok(), "herald took no more input for {WAIT:?}");
    }

    /// When `bytes` are whole frames, [`H2::fresh_id`] goes past the streams
    /// their HEADERS open.
    fn note_streams(&mut self, bytes: &[u8]) {
        let mut at = 0;
        let mut highest = 0;
        while at + 9 <= bytes.len() {
            let len = (usize::from(bytes[at]) << 16)
                | (usize::from(bytes[at + 1]) << 8)
                | usize::from(bytes[at + 2]);
            if bytes[at + 3] == HEADERS {
                let id =
                    u32::from_be_bytes(bytes[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
                highest = highest.max(id);
            }
            at += 9 + len;
        }
        if at == bytes.len() && highest >= self.next_id {
            self.next_id = (highest + 2) | 1;
        }
    }

    pub async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.write(&frame(kind, flags, stream, payload)).await;
    }

    /// A SETTINGS frame; one carrying SETTINGS_HEADER_TABLE_SIZE makes
    /// herald's next header block due to open with a size update.
    pub async fn send_settings(&mut self, entries: &[(u16, u32)]) {
        if entries.iter().any(|(id, _)| *id == HEADER_TABLE_SIZE) {
            self.r.size_update_due = true;
        }
        self.send(SETTINGS, 0, 0, &settings(entries)).await;
    }

    /// HEADERS with a plain block of `fields` (END_HEADERS always).
    pub async fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.send(HEADERS, flags, stream, &hpack::plain(fields))
            .await;
    }

    /// The next frame that is not noise; `None` once herald closed.
    pub async fn next(&mut self) -> Option<Frame> {
        self.next_by(Instant::now() + WAIT, "a frame").await
    }

    async fn next_by(&mut self, until: Instant, what: &str) -> Option<Frame> {
        loop {
            match self.r.read(until).await {
                Read::Frame(f) => {
                    let noise = f.kind == WINDOW_UPDATE
                        || (f.kind == SETTINGS && f.ack())
                        || (f.kind == DATA && !f.end_stream() && self.sse.contains(&f.stream));
                    if !noise {
                        return Some(f);
                    }
                    self.noise.push(f);
                }
                Read::Closed { .. } => return None,
                Read::Timeout => panic!(
                    "waiting for {what}: herald sent nothing more for {WAIT:?} (stepped over: {:?})",
                    self.described(&self.noise)
                ),
            }
        }
    }

    /// The next frame that is not noise, which must be there.
    pub async fn must(&mut self, what: &str) -> Frame {
        match self.next_by(Instant::now() + WAIT, what).await {
            Some(f) => f,
            None => panic!("expected {what}; herald closed the connection"),
        }
    }

    /// GOAWAY with `code` and `last` as its last stream id, then the close.
    pub async fn expect_goaway(&mut self, code: u32, last: u32) {
        let want = format!("GOAWAY(last_stream_id {last}, {})", code_name(code));
        let f = self.must(&want).await;
        assert_eq!(
            f.describe(),
            want,
            "expected {want}, herald sent {}",
            f.describe()
        );
        self.expect_close().await;
    }

    /// herald closes the connection and sends nothing before that.
    pub async fn expect_close(&mut self) {
        match self.r.read(Instant::now() + WAIT).await {
            Read::Frame(f) => panic!(
                "expected the connection to close; herald sent {}",
                f.describe()
            ),
            Read::Closed { .. } => {}
            Read::Timeout => panic!("herald did not close the connection within {WAIT:?}"),
        }
    }

    /// RST_STREAM on `stream` with `code`, then the connection is alive.
    pub async fn expect_rst(&mut self, stream: u32, code: u32) {
        self.expect_rst_only(stream, code).await;
        self.alive().await;
    }

    /// RST_STREAM on `stream` with `code`, nothing before it.
    pub async fn expect_rst_only(&mut self, stream: u32, code: u32) {
        let want = format!("RST_STREAM(stream {stream}, {})", code_name(code));
        let f = self.must(&want).await;
        assert_eq!(
            f.describe(),
            want,
            "expected {want}, herald sent {}",
            f.describe()
        );
    }

    /// As [`H2::expect_rst`], where herald may have answered on `stream`
    /// (HEADERS with `status`, DATA) before it read what it resets the
    /// stream for.
    pub async fn expect_rst_after_answer(&mut self, stream: u32, code: u32, status: u16) {
        let want = format!("RST_STREAM(stream {stream}, {})", code_name(code));
        loop {
            let f = self.must(&want).await;
            if f.stream == stream
                && f.kind == HEADERS
                && f.status() == Some(status)
                && !f.end_stream()
            {
                continue;
            }
            if f.stream == stream && f.kind == DATA && !f.end_stream() {
                continue;
            }
            if f.stream == stream && f.kind == DATA && f.end_stream() {
                // The whole answer went out first; the reset follows.
                continue;
            }
            assert_eq!(
                f.describe(),
                want,
                "expected {want}, herald sent {}",
                f.describe()
            );
            break;
        }
        self.alive().await;
    }

    /// A PING is answered with its payload and nothing else comes first.
    pub async fn ping(&mut self) {
        self.pings += 1;
        let payload = format!("ping{:04}", self.pings % 10000).into_bytes();
        self.send(PING, 0, 0, &payload).await;
        self.expect_ping_ack(&payload).await;
    }

    pub async fn expect_ping_ack(&mut self, payload: &[u8]) {
        let want = format!("PING(ACK, {:?})", String::from_utf8_lossy(payload));
        let f = self.must(&want).await;
        assert_eq!(
            f.describe(),
            want,
            "expected {want}, herald sent {}",
            f.describe()
        );
    }

    /// The connection is alive: a PING round trip with nothing else first,
    /// then `GET /health/live` on a new stream answered 200.
    pub async fn alive(&mut self) {
        self.ping().await;
        let id = self.fresh_id();
        self.headers(id, &request("GET", "/health/live", &[]), true)
            .await;
        let a = self.expect_answer(id, 200).await;
        assert_eq!(a.json()["status"], "live");
    }

    /// A stream id above every one used so far.
    pub fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        id
    }

    /// The whole answer on `stream` with `status`; nothing else may come
    /// meanwhile (but noise).
    pub async fn expect_answer(&mut self, stream: u32, status: u16) -> Answer {
        let mut a = Answer::default();
        let want = format!("the answer on stream {stream} (:status {status})");
        loop {
            let f = self.must(&want).await;
            match f.kind {
                HEADERS if f.stream == stream && a.status == 0 => {
                    let b = f.block.as_ref().unwrap();
                    a.fields = b.decoded.fields.clone();
                    a.status = f
                        .status()
                        .unwrap_or_else(|| panic!("{} has no :status", f.describe()));
                    assert_eq!(
                        a.status,
                        status,
                        "expected {want}, herald sent {}",
                        f.describe()
                    );
                    a.headers_ended = f.end_stream();
                }
                DATA if f.stream == stream && a.status != 0 => {
                    a.body.extend_from_slice(&f.payload);
                    a.data_frames += 1;
                }
                _ => panic!("expected {want}, herald sent {}", f.describe()),
            }
            if f.end_stream() {
                if let Some(len) = a.field("content-length") {
                    assert_eq!(
                        len,
                        a.body.len().to_string(),
                        "content-length of {}",
                        f.describe()
                    );
                }
                return a;
            }
        }
    }

    /// HEADERS on `stream` with `status` (and `end_stream` as given).
    pub async fn expect_headers(&mut self, stream: u32, status: u16, end_stream: bool) -> Frame {
        let want = format!(
            "HEADERS(stream {stream}, :status {status}{})",
            if end_stream { ", END_STREAM" } else { "" }
        );
        let f = self.must(&want).await;
        assert_eq!(
            f.describe(),
            want,
            "expected {want}, herald sent {}",
            f.describe()
        );
        f
    }

    /// DATA on `stream` of `len` bytes, not ending it.
    pub async fn expect_data(&mut self, stream: u32, len: usize) -> Frame {
        let want = format!("DATA(stream {stream}, {len} bytes)");
        let f = self.must(&want).await;
        assert_eq!(
            f.describe(),
            want,
            "expected {want}, herald sent {}",
            f.describe()
        );
        f
    }

    /// herald's ACK of a SETTINGS frame of ours (WINDOW_UPDATE may come
    /// first).
    pub async fn expect_settings_ack(&mut self) {
        let until = Instant::now() + WAIT;
        loop {
            match self.r.read(until).await {
                Read::Frame(f) if f.kind == WINDOW_UPDATE => self.noise.push(f),
                Read::Frame(f) if f.kind == SETTINGS && f.ack() => return,
                Read::Frame(f) => panic!("expected SETTINGS(ACK), herald sent {}", f.describe()),
                other => panic!("expected SETTINGS(ACK): {other:?}"),
            }
        }
    }

    /// An SSE stream on `stream`: HEADERS 200, then its CONNECTED event;
    /// its DATA is noise from then on.
    pub async fn open_sse(&mut self, stream: u32, user: &str) {
        let path = format!("/api/user/sse/connect?userId={user}");
        self.headers(stream, &request("GET", &path, &[]), true)
            .await;
        self.expect_headers(stream, 200, false).await;
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("CONNECTED") {
            let f = self.must("the SSE stream's CONNECTED").await;
            assert!(
                f.kind == DATA && f.stream == stream && !f.end_stream(),
                "expected DATA with CONNECTED on stream {stream}, herald sent {}",
                f.describe()
            );
            seen.extend_from_slice(&f.payload);
        }
        self.sse.insert(stream);
    }

    /// Everything herald sends until it closes or `within` passes (frames
    /// decoded as [`Reader::read`] does); `true` if it closed.
    pub async fn drain(&mut self, within: std::time::Duration) -> (Vec<Frame>, bool) {
        drain(&mut self.r, within).await
    }
}

/// Write and flush `bytes`; `false` if the connection failed.
pub async fn put(wr: &mut WriteHalf<TlsStream<TcpStream>>, bytes: &[u8]) -> bool {
    wr.write_all(bytes).await.is_ok() && wr.flush().await.is_ok()
}

/// Everything herald sends until it closes or `within` passes; `true` if it
/// closed.
pub async fn drain(r: &mut Reader, within: std::time::Duration) -> (Vec<Frame>, bool) {
    let until = Instant::now() + within;
    let mut frames = Vec::new();
    loop {
        match r.read(until).await {
            Read::Frame(f) => frames.push(f),
            Read::Closed { .. } => return (frames, true),
            Read::Timeout => return (frames, false),
        }
    }
}

/// A summary of many frames: each kind (as described, numbers aside) with
/// how often it came.
pub fn summary(frames: &[Frame]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for f in frames {
        let key = match f.kind {
            RST_STREAM | GOAWAY | SETTINGS => {
                let d = f.describe();
                if f.kind == RST_STREAM {
                    format!("RST_STREAM({})", f.code().map_or("short".into(), code_name))
                } else {
                    d
                }
            }
            PING if f.ack() => "PING(ACK)".into(),
            DATA => "DATA".into(),
            HEADERS => format!("HEADERS(:status {})", f.field(":status").unwrap_or("none")),
            WINDOW_UPDATE => format!(
                "WINDOW_UPDATE(stream {})",
                if f.stream == 0 { "0" } else { "n" }
            ),
            _ => f.describe(),
        };
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => counts.push((key, 1)),
        }
    }
    let mut s = String::new();
    for (k, n) in counts {
        let _ = write!(s, "{n} × {k}; ");
    }
    s
}
