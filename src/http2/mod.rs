//! herald's own HTTP/2 server, for HTTPS connections whose client chose `h2`.
//!
//! It owns one connection from the end of the TLS handshake to its close: the
//! record layer in both directions (the keys are taken out of rustls,
//! [`crate::tls::record`]), the frames (RFC 9113), and its streams. An SSE stream
//! is a stream id and a send window here plus its entry in the shard's table,
//! like any other stream: the shard's flush wakes the connection's task, which
//! moves what each stream has queued into DATA frames within the flow-control
//! windows, seals them into records and writes them with one `write`. Other
//! requests are collected (headers, then a body bounded by `--max-body`) and
//! handed to herald's routes, as HTTP/1.1 requests are by hyper; their answers
//! come back through the connection's mailbox.
//!
//! Why not hyper's HTTP/2 (the h2 crate): an idle connection there keeps
//! rustls' buffers and state, h2's connection, stream store and HPACK state and
//! hyper's connection task, and every stream h2's stream state, hyper's stream
//! task and a body: ~17 KB for a connection with one stream and ~2-3 KB per
//! further stream, against ~1 KB for a lean HTTP/1.1 stream (perf/RESULTS.md).
//! Here an idle connection keeps its two keys, this state and no buffer; a
//! stream its table entry and a slot in [`Conn::streams`].
//!
//! What a client may do is bounded: 128 concurrent streams (more are refused),
//! header blocks of `--max-header-bytes` (a larger one is answered `431`; a
//! CONTINUATION flood past four times that ends the connection), bodies of
//! `--max-body`, at most 200 streams reset by the client a second (rapid
//! reset), and input is not read while the client does not read what it is
//! sent. Requests are answered at once when their route can (the connect of
//! an SSE stream on the embedded bus, a publish, the probes). Request headers are decoded by the h2 crate's HPACK decoder; the
//! dynamic table is set to 0 in herald's SETTINGS, so that no connection keeps
//! a copy of its client's headers.

pub mod frame;

use std::cell::RefCell;
use std::future::Future;
use std::io::{Cursor, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use h2::hpack::{Decoder, Header};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Body;
use tokio::net::TcpStream;
use tracing::debug;

use self::frame::*;
use crate::clock;
use crate::conn::{CloseReason, ConnState};
use crate::error::ApiError;
use crate::http::routes::{self, HeraldBody};
use crate::shard::stream::StreamGuard;
use crate::shard::{Phase, Shard};
use crate::tls::record::{BadRecord, Opened, RecordRx, RecordTx, SealError, MAX_PLAINTEXT};

/// Most concurrent streams per connection (SSE streams and requests).
pub const MAX_STREAMS: u32 = 128;
/// Plaintext gathered for one write: one full record, as the HTTP/1.1 TLS path
/// seals (more goes in further writes while the kernel takes everything).
const WRITE_BUDGET: usize = MAX_PLAINTEXT;
/// Output waiting for the socket past which the connection's input is not
/// read (a client that sends but does not read: pings, settings).
const MAX_BACKLOG: usize = 256 << 10;
/// Streams a client may reset per second (rapid reset, CVE-2023-44487); past
/// it the connection ends with ENHANCE_YOUR_CALM.
const MAX_RESETS_PER_SEC: u32 = 200;
/// Reads and write turns per wake-up before the task yields to the others.
const TURNS: usize = 16;

/// Serve an HTTP/2 connection whose handshake is done: `records` were read
/// from the socket and not opened yet, `plain` opened by rustls and not read.
pub fn spawn(
    shard: Rc<Shard>,
    tcp: TcpStream,
    keys: (Box<RecordTx>, Box<RecordRx>),
    records: Vec<u8>,
    plain: Vec<u8>,
) {
    let cfg = &shard.shared.config;
    let deadline = Box::pin(tokio::time::sleep(cfg.header_timeout));
    let max_header = cfg.max_header_bytes as u32;
    let mut conn = Box::new(Conn {
        shard,
        tcp,
        tx: keys.0,
        rx: keys.1,
        records: Vec::new(),
        input: Vec::new(),
        out: Vec::new(),
        hpack: Decoder::new(4096),
        block: None,
        streams: Vec::new(),
        mailbox: None,
        drain_key: None,
        deadline: Some(deadline),
        preface: false,
        settings_seen: false,
        last_stream: 0,
        goaway_sent: false,
        peer_goaway: false,
        failed: None,
        eof: false,
        peer_window: DEFAULT_WINDOW,
        peer_max_frame: DEFAULT_MAX_FRAME,
        send_window: DEFAULT_WINDOW,
        recv_window: DEFAULT_WINDOW,
        resets: 0,
        resets_since: 0,
        rr: 0,
    });
    // Herald's settings go first (RFC 9113 §3.4): no dynamic table for request
    // headers, the stream limit, the header list limit.
    put_settings(
        &mut conn.out,
        &[
            (SETTINGS_HEADER_TABLE_SIZE, 0),
            (SETTINGS_ENABLE_PUSH, 0),
            (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
            (SETTINGS_MAX_HEADER_LIST_SIZE, max_header),
        ],
    );
    // What the handshake left: what rustls opened comes before the records
    // after it.
    conn.frames_in(&plain);
    let mut records = records;
    conn.received(&mut records);
    tokio::task::spawn_local(Serve(conn));
}

struct Serve(Box<Conn>);

impl Future for Serve {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll(cx)
    }
}

/// A header block being received (HEADERS, then CONTINUATION frames).
struct Block {
    stream: u32,
    end_stream: bool,
    buf: BytesMut,
}

/// One stream: 32 bytes, most of an extra SSE stream's cost on a connection
/// besides its table entry (what only some streams need is boxed).
struct Stream {
    id: u32,
    /// What herald may still send on it (flow control; within ±2^31).
    window: i32,
    /// The client has not ended its side.
    recv_open: bool,
    state: StreamState,
}

impl Stream {
    /// Done on herald's side; the SSE stream it was, to end in the table.
    fn finish(&mut self) -> Option<(u32, u64)> {
        match std::mem::replace(&mut self.state, StreamState::Done) {
            StreamState::Events { key, serial } => Some((key, serial)),
            _ => None,
        }
    }

    /// A request whose body is in, for the routes; the stream waits for its
    /// answer.
    fn take_body(&mut self) -> Option<Box<Incoming>> {
        match std::mem::replace(&mut self.state, StreamState::Routing) {
            StreamState::Body(inc) => Some(inc),
            other => {
                self.state = other;
                None
            }
        }
    }
}

/// A request whose body is coming.
struct Incoming {
    req: http::request::Parts,
    body: BytesMut,
    /// What the client may still send on the stream.
    window: i64,
}

/// An answer's body being sent.
struct Outgoing {
    data: Bytes,
    sent: usize,
}

enum StreamState {
    /// Headers in, body coming.
    Body(Box<Incoming>),
    /// With the routes; the answer comes through the mailbox.
    Routing,
    Sending(Box<Outgoing>),
    /// An SSE stream: its entry in the shard's table.
    Events {
        key: u32,
        serial: u64,
    },
    /// Done; removed after the current pass.
    Done,
}

/// Answers of the routes, for the connection's task.
#[derive(Default)]
struct Mailbox {
    answers: Vec<(u32, Response<HeraldBody>)>,
    waker: Option<Waker>,
}

/// The connection ends with this GOAWAY code.
#[derive(Debug, Clone, Copy)]
struct ConnError(u32);

struct Conn {
    shard: Rc<Shard>,
    tcp: TcpStream,
    tx: Box<RecordTx>,
    rx: Box<RecordRx>,
    /// Received bytes not opened yet (part of a record); empty (unallocated)
    /// otherwise.
    records: Vec<u8>,
    /// Opened bytes not handled yet (part of a frame); empty (unallocated)
    /// otherwise.
    input: Vec<u8>,
    /// Frames to seal and send; freed after each write.
    out: Vec<u8>,
    hpack: Decoder,
    block: Option<Box<Block>>,
    streams: Vec<Stream>,
    mailbox: Option<Rc<RefCell<Mailbox>>>,
    /// Its place in the shard's list of HTTP/2 connections (woken to send
    /// GOAWAY when the pod drains).
    drain_key: Option<usize>,
    /// Until the client's preface and first SETTINGS are in.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    preface: bool,
    settings_seen: bool,
    /// The highest stream id the client opened.
    last_stream: u32,
    /// herald sent GOAWAY.
    goaway_sent: bool,
    peer_goaway: bool,
    failed: Option<ConnError>,
    /// The client closed its side, or the socket failed.
    eof: bool,
    /// SETTINGS_INITIAL_WINDOW_SIZE of the client.
    peer_window: i64,
    peer_max_frame: usize,
    /// Connection-level windows: what herald may send, what the client may.
    send_window: i64,
    recv_window: i64,
    /// Streams reset by the client since `resets_since`.
    resets: u32,
    resets_since: u64,
    /// Where the next write turn starts among the streams (fairness).
    rr: usize,
}

impl Conn {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(d) = self.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                debug!("HTTP/2 preface did not arrive in time");
                return self.close();
            }
        }
        if !self.goaway_sent && *self.shard.phase.borrow() == Phase::Draining {
            self.go_away(NO_ERROR);
        }
        let mut drained = false;
        for _ in 0..TURNS {
            if self.eof || self.failed.is_some() || self.backlog() > MAX_BACKLOG {
                // Not reading past the backlog: the socket's writable edge
                // brings the task back.
                drained = true;
                break;
            }
            if self.read(cx).is_pending() {
                drained = true;
                break;
            }
        }
        if !drained {
            // More input than one turn takes: the others get theirs first.
            cx.waker().wake_by_ref();
        }
        self.take_answers();
        if self.eof {
            return self.close();
        }
        match self.write(cx) {
            Err(()) => return self.close(),
            Ok(true) => cx.waker().wake_by_ref(),
            Ok(false) => {}
        }
        if self.eof {
            // The write found the client not reading at all (see `produce`).
            return self.close();
        }
        if self.failed.is_some() {
            // GOAWAY went out with the write above, unless the client does not
            // read: it is not waited for.
            return self.close();
        }
        let quiet = self.streams.is_empty() && self.tx.pending.is_empty() && self.out.is_empty();
        if quiet && (self.goaway_sent || self.peer_goaway) {
            return self.close();
        }
        self.register(cx);
        Poll::Pending
    }

    fn backlog(&self) -> usize {
        self.tx.pending.len() + self.out.len()
    }

    /// One read from the socket and what it brings; `Pending` once the socket
    /// has nothing more.
    fn read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.tcp.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => {
                self.eof = true;
                return Poll::Ready(());
            }
            Poll::Ready(Ok(())) => {}
        }
        let shard = self.shard.clone();
        // Reads go into the shard's buffer; only part of a record or of a frame
        // is kept by the connection (in a buffer of its size), so that a burst
        // of connections does not leave a read buffer each in the heap.
        let mut rx = shard.io.rx();
        rx.clear();
        rx.extend_from_slice(&self.records);
        self.records = Vec::new();
        rx.reserve(crate::tls::record::MAX_RECORD);
        match self.tcp.try_read_buf(&mut *rx) {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.eof = true,
        }
        self.received(&mut rx);
        Poll::Ready(())
    }

    /// Handle the whole records in `buf` and keep what is left of the last one.
    fn received(&mut self, buf: &mut [u8]) {
        let opened = self.open_records(buf);
        if opened < buf.len() && !self.eof && self.failed.is_none() {
            self.records = buf[opened..].to_vec();
        }
    }

    /// Open the whole records at the front of `buf` and handle the frames they
    /// hold; how many bytes were whole records.
    fn open_records(&mut self, buf: &mut [u8]) -> usize {
        let mut at = 0;
        let mut fatal = None;
        while let Some(len) = RecordRx::record_len(&buf[at..]) {
            let len = match len {
                Ok(len) => len,
                Err(BadRecord(alert)) => {
                    fatal = Some(alert);
                    break;
                }
            };
            if buf.len() - at < len {
                break;
            }
            match self.rx.open(&mut buf[at..at + len]) {
                Ok(Opened::Data(range)) => {
                    self.frames_in(&buf[at + range.start..at + range.end]);
                }
                // The receiving key is the next one already; herald's own
                // KeyUpdate, when asked for, goes before its next record.
                Ok(Opened::KeyUpdate { requested }) => {
                    if requested {
                        self.tx.request_update();
                    }
                }
                Ok(Opened::Alert(_)) => self.eof = true,
                Err(BadRecord(alert)) => {
                    debug!(?alert, "HTTP/2 connection sent a record herald refuses");
                    fatal = Some(alert);
                }
            }
            at += len;
            if fatal.is_some() || self.eof || self.failed.is_some() {
                break;
            }
        }
        if let Some(alert) = fatal {
            // The fatal alert (RFC 8446 §6), then close's FIN; unless a
            // record is half written.
            let mut out = Vec::new();
            if self.tx.pending.is_empty() && self.tx.fatal_alert(&mut out, alert).is_ok() {
                let _ = self.tcp.try_write(&out);
            }
            self.eof = true;
        }
        at
    }

    /// Handle the frames of `plain` after what `input` kept of an earlier
    /// record (part of a frame); keep what is left of the last one.
    fn frames_in(&mut self, plain: &[u8]) {
        if self.input.is_empty() {
            let taken = self.frames(plain);
            if taken < plain.len() && self.failed.is_none() {
                self.input = plain[taken..].to_vec();
            }
        } else {
            let mut input = std::mem::take(&mut self.input);
            input.extend_from_slice(plain);
            let taken = self.frames(&input);
            if taken < input.len() && self.failed.is_none() {
                input.drain(..taken);
                self.input = input;
            }
        }
    }

    /// Handle the whole frames at the front of `input`; how many bytes they
    /// were. A connection error is recorded ([`Conn::fail`]).
    fn frames(&mut self, input: &[u8]) -> usize {
        let mut at = 0;
        let result = loop {
            if self.failed.is_some() {
                break Ok(());
            }
            if !self.preface {
                let want = PREFACE.len();
                if input.len() - at < want {
                    if !PREFACE.starts_with(&input[at..]) {
                        break Err(ConnError(PROTOCOL_ERROR));
                    }
                    break Ok(());
                }
                if &input[at..at + want] != PREFACE {
                    break Err(ConnError(PROTOCOL_ERROR));
                }
                at += want;
                self.preface = true;
                continue;
            }
            if input.len() - at < HEAD_LEN {
                break Ok(());
            }
            let head = Head::parse(&input[at..]);
            if head.len > DEFAULT_MAX_FRAME {
                break Err(ConnError(FRAME_SIZE_ERROR));
            }
            if input.len() - at < HEAD_LEN + head.len {
                break Ok(());
            }
            let payload = &input[at + HEAD_LEN..at + HEAD_LEN + head.len];
            at += HEAD_LEN + head.len;
            if let Err(e) = self.frame(head, payload) {
                debug!(
                    kind = head.kind,
                    stream = head.stream,
                    len = head.len,
                    "HTTP/2 frame refused"
                );
                break Err(e);
            }
        };
        if let Err(e) = result {
            self.fail(e);
        }
        at
    }

    fn frame(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if !self.settings_seen && head.kind != SETTINGS {
            // The preface's SETTINGS come first (RFC 9113 §3.4).
            return Err(ConnError(PROTOCOL_ERROR));
        }
        if let Some(block) = &self.block {
            // Nothing may come between a header block's frames (§6.10).
            if head.kind != CONTINUATION || head.stream != block.stream {
                return Err(ConnError(PROTOCOL_ERROR));
            }
        }
        match head.kind {
            DATA => self.on_data(head, payload),
            HEADERS => self.on_headers(head, payload),
            PRIORITY => {
                if head.stream == 0 {
                    return Err(ConnError(PROTOCOL_ERROR));
                }
                if payload.len() != 5 {
                    put_rst(&mut self.out, head.stream, FRAME_SIZE_ERROR);
                }
                Ok(())
            }
            RST_STREAM => self.on_rst(head, payload),
            SETTINGS => self.on_settings(head, payload),
            PUSH_PROMISE => Err(ConnError(PROTOCOL_ERROR)),
            PING => {
                if head.stream != 0 {
                    return Err(ConnError(PROTOCOL_ERROR));
                }
                if payload.len() != 8 {
                    return Err(ConnError(FRAME_SIZE_ERROR));
                }
                if head.flags & ACK == 0 {
                    put_ping_ack(&mut self.out, payload);
                }
                Ok(())
            }
            GOAWAY => {
                if head.stream != 0 {
                    return Err(ConnError(PROTOCOL_ERROR));
                }
                self.peer_goaway = true;
                Ok(())
            }
            WINDOW_UPDATE => self.on_window_update(head, payload),
            CONTINUATION => self.on_continuation(head, payload),
            // Unknown frame types are ignored (§5.5).
            _ => Ok(()),
        }
    }

    /// Where stream `id` is in `streams`, unless it is done.
    fn stream_at(&self, id: u32) -> Option<usize> {
        self.streams
            .iter()
            .position(|s| s.id == id && !matches!(s.state, StreamState::Done))
    }

    fn stream_mut(&mut self, id: u32) -> Option<&mut Stream> {
        let i = self.stream_at(id)?;
        Some(&mut self.streams[i])
    }

    /// A stream id the client has not opened yet (frames on it are errors).
    fn is_idle(&self, id: u32) -> bool {
        id > self.last_stream
    }

    fn on_data(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 || self.is_idle(head.stream) {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        let len = payload.len() as i64;
        self.recv_window -= len;
        if self.recv_window < 0 {
            return Err(ConnError(FLOW_CONTROL_ERROR));
        }
        // The connection's window is given back at once: a body is bounded by
        // --max-body per stream, and a closed stream's data is dropped.
        if len > 0 {
            self.recv_window += len;
            put_window_update(&mut self.out, 0, len as u32);
        }
        let data = unpad(head.flags, payload)?;
        let end = head.flags & END_STREAM != 0;
        let max_body = self.shard.shared.config.max_body;
        let open = self
            .stream_at(head.stream)
            .filter(|&i| self.streams[i].recv_open);
        let Some(i) = open else {
            // Data on a stream the client had already ended, or that is
            // closed (§5.1).
            put_rst(&mut self.out, head.stream, STREAM_CLOSED);
            return Ok(());
        };
        let s = &mut self.streams[i];
        let StreamState::Body(inc) = &mut s.state else {
            // Data past a body's limit, after it went to the routes (its window
            // is not given back): dropped.
            s.recv_open &= !end;
            return Ok(());
        };
        inc.window -= len;
        // One byte past the limit is kept: the route answers 413.
        let room = (max_body + 1).saturating_sub(inc.body.len());
        inc.body.extend_from_slice(&data[..data.len().min(room)]);
        if inc.window < 0 {
            put_rst(&mut self.out, s.id, FLOW_CONTROL_ERROR);
            s.state = StreamState::Done;
        } else if end || inc.body.len() > max_body {
            s.recv_open = !end;
            let (id, body) = (s.id, s.take_body());
            if let Some(inc) = body {
                self.dispatch(id, inc.req, inc.body.freeze());
            }
        } else if len > 0 {
            inc.window += len;
            put_window_update(&mut self.out, s.id, len as u32);
        }
        Ok(())
    }

    fn on_headers(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        let mut block = unpad(head.flags, payload)?;
        if head.flags & PRIORITY_FLAG != 0 {
            block = block.get(5..).ok_or(ConnError(PROTOCOL_ERROR))?;
        }
        let block = Block {
            stream: head.stream,
            end_stream: head.flags & END_STREAM != 0,
            buf: BytesMut::from(block),
        };
        if head.flags & END_HEADERS != 0 {
            self.end_block(block)
        } else {
            self.block = Some(Box::new(block));
            Ok(())
        }
    }

    fn on_continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let Some(mut block) = self.block.take() else {
            return Err(ConnError(PROTOCOL_ERROR));
        };
        block.buf.extend_from_slice(payload);
        // A header block is decoded whole (HPACK's state depends on it); past
        // four times the header limit it is a flood, not a request.
        let max_header = self.shard.shared.config.max_header_bytes;
        if block.buf.len() > 4 * max_header.max(DEFAULT_MAX_FRAME) {
            return Err(ConnError(ENHANCE_YOUR_CALM));
        }
        if head.flags & END_HEADERS != 0 {
            self.end_block(*block)
        } else {
            self.block = Some(block);
            Ok(())
        }
    }

    /// A whole header block: a new request, or a request's trailers.
    fn end_block(&mut self, mut block: Block) -> Result<(), ConnError> {
        let id = block.stream;
        let mut fields = Fields::default();
        let max = self.shard.shared.config.max_header_bytes;
        self.hpack
            .decode(&mut Cursor::new(&mut block.buf), |h| {
                fields.add(h, max);
                std::ops::ControlFlow::Continue(())
            })
            .map_err(|_| ConnError(COMPRESSION_ERROR))?;
        drop(block.buf);
        if !self.is_idle(id) {
            // Trailers: they end a body being received; anything else is a
            // HEADERS frame on a stream that cannot take one.
            let Some(s) = self.stream_mut(id) else {
                // A stream herald has already closed or refused: the client may
                // not have seen that yet (RFC 9113 §5.4.2); the block was
                // decoded, so HPACK stays in step, and is otherwise ignored.
                return Ok(());
            };
            if !(s.recv_open && block.end_stream) {
                return Err(ConnError(PROTOCOL_ERROR));
            }
            s.recv_open = false;
            if let Some(inc) = s.take_body() {
                self.dispatch(id, inc.req, inc.body.freeze());
            }
            return Ok(());
        }
        if id % 2 == 0 {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        self.last_stream = id;
        if self.goaway_sent {
            // Opened after herald's GOAWAY: ignored (§6.8).
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS as usize {
            put_rst(&mut self.out, id, REFUSED_STREAM);
            return Ok(());
        }
        // Grown one slot at a time (at most 128, rarely): doubling would leave
        // up to half the slots of a connection's streams empty for its life.
        self.streams.reserve_exact(1);
        self.streams.push(Stream {
            id,
            window: self.peer_window as i32,
            recv_open: !block.end_stream,
            state: StreamState::Routing,
        });
        if fields.size > max {
            let e = ApiError::new(
                431,
                "headers_too_large",
                format!("request headers exceed {max} bytes"),
            );
            self.answer(id, routes::error_response(&e));
            return Ok(());
        }
        let Some(req) = fields.request() else {
            put_rst(&mut self.out, id, PROTOCOL_ERROR);
            self.streams.pop();
            return Ok(());
        };
        if block.end_stream {
            self.dispatch(id, req, Bytes::new());
        } else if let Some(s) = self.streams.last_mut() {
            s.state = StreamState::Body(Box::new(Incoming {
                req,
                body: BytesMut::new(),
                window: DEFAULT_WINDOW,
            }));
        }
        Ok(())
    }

    fn on_rst(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 || self.is_idle(head.stream) {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        if payload.len() != 4 {
            return Err(ConnError(FRAME_SIZE_ERROR));
        }
        // Every reset counts: a client resetting streams as fast as it opens
        // them makes herald work for nothing (the rapid reset attack), and no
        // browser resets hundreds of streams a second on one connection.
        let now = clock::now_ns();
        if now.saturating_sub(self.resets_since) > 1_000_000_000 {
            self.resets_since = now;
            self.resets = 0;
        }
        self.resets += 1;
        if self.resets > MAX_RESETS_PER_SEC {
            return Err(ConnError(ENHANCE_YOUR_CALM));
        }
        if let Some((key, serial)) = self.stream_mut(head.stream).and_then(Stream::finish) {
            self.end_events(key, serial, CloseReason::ClientClosed);
        }
        Ok(())
    }

    fn on_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        if head.flags & ACK != 0 {
            if !payload.is_empty() {
                return Err(ConnError(FRAME_SIZE_ERROR));
            }
            // The client now knows herald keeps no dynamic table: its next
            // header block must open by shrinking the table to 0 (RFC 7541
            // §4.2), so nothing in it can be referenced any more. It goes now,
            // rather than whenever (if ever) that block comes: a client that
            // opened its streams before this ACK would otherwise leave its
            // first requests' headers in the table for the connection's life.
            self.hpack = Decoder::new(0);
            return Ok(());
        }
        if payload.len() % 6 != 0 {
            return Err(ConnError(FRAME_SIZE_ERROR));
        }
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                SETTINGS_ENABLE_PUSH if value > 1 => return Err(ConnError(PROTOCOL_ERROR)),
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(ConnError(FLOW_CONTROL_ERROR));
                    }
                    let delta = value - self.peer_window;
                    self.peer_window = value;
                    for s in &mut self.streams {
                        let window = i64::from(s.window) + delta;
                        if window > MAX_WINDOW {
                            return Err(ConnError(FLOW_CONTROL_ERROR));
                        }
                        // A window lowered by a new setting may go below zero
                        // (§6.9.2).
                        s.window = window.max(i64::from(i32::MIN)) as i32;
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(1 << 14..1 << 24).contains(&value) {
                        return Err(ConnError(PROTOCOL_ERROR));
                    }
                    self.peer_max_frame = value as usize;
                }
                _ => {}
            }
        }
        if !self.settings_seen {
            self.settings_seen = true;
            self.deadline = None;
        }
        put_settings_ack(&mut self.out);
        Ok(())
    }

    fn on_window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(ConnError(FRAME_SIZE_ERROR));
        }
        let inc = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        if head.stream == 0 {
            if inc == 0 {
                return Err(ConnError(PROTOCOL_ERROR));
            }
            self.send_window += inc;
            if self.send_window > MAX_WINDOW {
                return Err(ConnError(FLOW_CONTROL_ERROR));
            }
            return Ok(());
        }
        if self.is_idle(head.stream) {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        let Some(i) = self.stream_at(head.stream) else {
            return Ok(());
        };
        let s = &mut self.streams[i];
        let window = i64::from(s.window) + inc;
        if inc != 0 && window <= MAX_WINDOW {
            s.window = window as i32;
            return Ok(());
        }
        let code = if inc == 0 {
            PROTOCOL_ERROR
        } else {
            FLOW_CONTROL_ERROR
        };
        put_rst(&mut self.out, s.id, code);
        if let Some((key, serial)) = s.finish() {
            self.end_events(key, serial, CloseReason::ClientClosed);
        }
        Ok(())
    }

    /// Hand a complete request to the routes. Most answer at once (a connect
    /// on the embedded bus, a publish, the probes): the route's future is polled
    /// here and freed before the next request allocates its own. One that waits
    /// (Redis, a full round, admission) goes on in a task of its own and answers
    /// through the mailbox. Were every route a task, the futures of a burst of
    /// connects (~2 KB each) would all be alive at once, and the heap they leave
    /// behind would stay in the process's memory next to the streams.
    fn dispatch(&mut self, id: u32, parts: http::request::Parts, body: Bytes) {
        let req = Request::from_parts(parts, Full::new(body));
        let mut route = Box::pin(routes::handle(self.shard.clone(), req));
        // The no-op waker only stands in for this first poll: a task is always
        // polled once it is spawned, and a route registers its wakers anew on
        // every poll.
        let mut noop = Context::from_waker(Waker::noop());
        if let Poll::Ready(Ok(resp)) = route.as_mut().poll(&mut noop) {
            drop(route);
            return self.answer(id, resp);
        }
        let mailbox = self
            .mailbox
            .get_or_insert_with(|| Rc::new(RefCell::new(Mailbox::default())))
            .clone();
        tokio::task::spawn_local(async move {
            let Ok(resp) = route.await;
            let mut m = mailbox.borrow_mut();
            m.answers.push((id, resp));
            if let Some(w) = m.waker.take() {
                w.wake();
            }
        });
    }

    fn take_answers(&mut self) {
        let Some(mailbox) = &self.mailbox else {
            return;
        };
        let answers = std::mem::take(&mut mailbox.borrow_mut().answers);
        for (id, resp) in answers {
            self.answer(id, resp);
        }
        // No request with the routes: the mailbox is freed.
        if self
            .mailbox
            .as_ref()
            .is_some_and(|m| Rc::strong_count(m) == 1)
        {
            self.mailbox = None;
        }
    }

    /// Start sending the answer to stream `id` (if the client still wants it).
    fn answer(&mut self, id: u32, resp: Response<HeraldBody>) {
        let max_frame = self.peer_max_frame;
        let (parts, body) = resp.into_parts();
        let Some(s) = self
            .streams
            .iter_mut()
            .find(|s| s.id == id && matches!(s.state, StreamState::Routing))
        else {
            // Reset meanwhile: an SSE body's guard ends its stream when dropped.
            return;
        };
        let mut block = Vec::with_capacity(128);
        match body {
            Either::Right(events) => {
                let (key, serial) = events.into_stream();
                frame::header_block(&mut block, parts.status.as_u16(), &parts.headers, None);
                put_headers(&mut self.out, id, &block, false, max_frame);
                // Its first frames (CONNECTED, the replay) are queued already:
                // this poll's write sends them.
                s.state = StreamState::Events {
                    key: key as u32,
                    serial,
                };
            }
            Either::Left(full) => {
                let data = full_bytes(full);
                frame::header_block(
                    &mut block,
                    parts.status.as_u16(),
                    &parts.headers,
                    Some(data.len() as u64),
                );
                let empty = data.is_empty();
                put_headers(&mut self.out, id, &block, empty, max_frame);
                if empty {
                    s.state = StreamState::Done;
                    if s.recv_open {
                        // Answered before the client finished its body (§8.1).
                        put_rst(&mut self.out, id, NO_ERROR);
                    }
                } else {
                    s.state = StreamState::Sending(Box::new(Outgoing { data, sent: 0 }));
                }
            }
        }
    }

    /// End an SSE stream: out of the table, reported closed.
    fn end_events(&self, key: u32, serial: u64, fallback: CloseReason) {
        StreamGuard::new(self.shard.clone(), key as usize, serial).finish(fallback);
    }

    /// Queue GOAWAY: no new streams; the connection closes once its streams end.
    fn go_away(&mut self, code: u32) {
        if !self.goaway_sent {
            put_goaway(&mut self.out, self.last_stream, code);
            self.goaway_sent = true;
        }
    }

    fn fail(&mut self, e: ConnError) {
        debug!(code = e.0, "HTTP/2 connection error");
        self.go_away(e.0);
        self.failed = Some(e);
    }

    /// Move what the streams have into DATA frames in `out` within the
    /// windows, up to [`WRITE_BUDGET`]; true when a stream was left with more to
    /// send.
    fn produce(&mut self, out: &mut Vec<u8>) -> bool {
        let n = self.streams.len();
        if n == 0 || self.failed.is_some() {
            return false;
        }
        let max_frame = self.peer_max_frame.min(MAX_PLAINTEXT);
        let now = clock::now_ns();
        let shard = self.shard.clone();
        let mut ended: smallvec::SmallVec<[(u32, u64, CloseReason); 4]> = smallvec::SmallVec::new();
        let mut more = false;
        let start = self.rr % n;
        {
            let mut table = shard.table.borrow_mut();
            for i in 0..n {
                let idx = (start + i) % n;
                if out.len() >= WRITE_BUDGET {
                    self.rr = idx;
                    more = true;
                    break;
                }
                let s = &mut self.streams[idx];
                match &mut s.state {
                    StreamState::Sending(o) => {
                        let (data, sent) = (&o.data, &mut o.sent);
                        while *sent < data.len() {
                            let room =
                                room(self.send_window, s.window.into(), max_frame, out.len());
                            if room == 0 {
                                break;
                            }
                            let chunk = room.min(data.len() - *sent);
                            let last = *sent + chunk == data.len();
                            put_head(out, chunk, DATA, if last { END_STREAM } else { 0 }, s.id);
                            out.extend_from_slice(&data[*sent..*sent + chunk]);
                            *sent += chunk;
                            self.send_window -= chunk as i64;
                            s.window -= chunk as i32;
                        }
                        if *sent == data.len() {
                            if s.recv_open {
                                put_rst(out, s.id, NO_ERROR);
                            }
                            s.state = StreamState::Done;
                        }
                    }
                    StreamState::Events { key, serial } => {
                        let (key, serial) = (*key, *serial);
                        let Some(conn) = table.get_mut(key as usize).filter(|c| c.serial == serial)
                        else {
                            put_rst(out, s.id, CANCEL);
                            s.state = StreamState::Done;
                            continue;
                        };
                        let closing = match conn.state {
                            ConnState::Closing(r) => Some(r),
                            ConnState::Open => None,
                        };
                        // A stream closed for any reason but the drain ends now; a
                        // drain's last frames (the retry: hint) go out first.
                        if closing.is_none_or(|r| r == CloseReason::Shutdown) {
                            while !conn.queue.is_empty() {
                                let room =
                                    room(self.send_window, s.window.into(), max_frame, out.len());
                                if room == 0 {
                                    break;
                                }
                                let taken = put_queued(out, s.id, &conn.queue, room);
                                conn.queue.consume(taken, |published| {
                                    shard.local.frame_written(published, now)
                                });
                                self.send_window -= taken as i64;
                                s.window -= taken as i32;
                            }
                        }
                        if let Some(reason) = closing {
                            if reason != CloseReason::Shutdown || conn.queue.is_empty() {
                                put_head(out, 0, DATA, END_STREAM, s.id);
                                s.state = StreamState::Done;
                                ended.push((key, serial, reason));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if out.len() >= WRITE_BUDGET {
            // A stream may have been cut short by the budget rather than by its
            // window: another turn looks again.
            more = true;
        }
        for (key, serial, reason) in ended {
            if reason == CloseReason::SlowConsumer && !self.tx.pending.is_empty() {
                // The client does not read the connection at all: the
                // connection, not one stream, is the slow consumer.
                self.eof = true;
            }
            self.end_events(key, serial, reason);
        }
        self.streams
            .retain(|s| !matches!(s.state, StreamState::Done));
        more
    }

    /// Write what is pending, then what the streams have, while the socket
    /// takes it all. `Ok(true)`: more to do after a yield.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        for _ in 0..TURNS {
            if !self.tx.pending.is_empty() {
                match self.tcp.try_write(&self.tx.pending) {
                    Ok(0) => return Err(()),
                    Ok(n) if n == self.tx.pending.len() => self.tx.pending = Vec::new(),
                    Ok(n) => {
                        self.tx.pending.drain(..n);
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        return match self.tcp.poll_write_ready(cx) {
                            Poll::Ready(Ok(())) => Ok(true),
                            Poll::Ready(Err(_)) => Err(()),
                            Poll::Pending => Ok(false),
                        };
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return Err(()),
                }
            }
            // Control frames first, then the streams' data, in the shard's
            // plaintext buffer (no allocation per write), sealed into its
            // sealing buffer.
            let shard = self.shard.clone();
            let mut plain = shard.io.plain();
            plain.clear();
            if !self.out.is_empty() {
                plain.extend_from_slice(&self.out);
                self.out = Vec::new();
            }
            let more = self.produce(&mut plain);
            // A KeyUpdate that is due goes out even with no frames.
            if plain.is_empty() && !self.tx.update_pending() {
                return Ok(false);
            }
            let mut scratch = shard.io.scratch();
            scratch.clear();
            let sealed = self
                .tx
                .seal_chunks(&mut scratch, &[IoSlice::new(&plain)], usize::MAX);
            drop(plain);
            if let Err(e) = sealed {
                if e == SealError::KeyExhausted {
                    // A TLS 1.2 key is used up (no key update exists there):
                    // close_notify, and the clients resume on a new session.
                    for mut s in std::mem::take(&mut self.streams) {
                        if let Some((key, serial)) = s.finish() {
                            self.end_events(key, serial, CloseReason::TlsKeyLimit);
                        }
                    }
                }
                return Err(());
            }
            match self.tcp.try_write(&scratch) {
                Ok(n) if n == scratch.len() => {}
                Ok(n) => self.tx.pending = scratch[n..].to_vec(),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    self.tx.pending = scratch.clone();
                }
                Err(_) => return Err(()),
            }
            if !more && self.tx.pending.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Wakers: the socket's are registered by the reads and writes; the
    /// mailbox, the SSE streams' table entries and the drain list get this
    /// task's.
    fn register(&mut self, cx: &mut Context<'_>) {
        let waker = cx.waker();
        if let Some(m) = &self.mailbox {
            let mut m = m.borrow_mut();
            if !m.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                m.waker = Some(waker.clone());
            }
        }
        let mut table = self.shard.table.borrow_mut();
        for s in &self.streams {
            if let StreamState::Events { key, serial } = s.state {
                if let Some(c) = table.get_mut(key as usize).filter(|c| c.serial == serial) {
                    if c.waker.is_none() {
                        c.waker = Some(waker.clone());
                    }
                }
            }
        }
        drop(table);
        if self.drain_key.is_none() {
            self.drain_key = Some(self.shard.h2_conns.borrow_mut().insert(waker.clone()));
        }
    }

    /// End the connection: a `close_notify`, a FIN. Its SSE streams end when
    /// the task drops it ([`Drop`]).
    fn close(&mut self) -> Poll<()> {
        if !self.eof && self.tx.pending.is_empty() {
            let mut alert = Vec::new();
            if !self.out.is_empty() {
                let out = std::mem::take(&mut self.out);
                let _ = self
                    .tx
                    .seal_chunks(&mut alert, &[IoSlice::new(&out)], usize::MAX);
            }
            if self.tx.close_notify(&mut alert).is_ok() {
                let _ = self.tcp.try_write(&alert);
            }
        }
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
        Poll::Ready(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(key) = self.drain_key.take() {
            self.shard.h2_conns.borrow_mut().try_remove(key);
        }
        for mut s in std::mem::take(&mut self.streams) {
            if let Some((key, serial)) = s.finish() {
                self.end_events(key, serial, CloseReason::ClientClosed);
            }
        }
    }
}

/// What may go in one DATA frame now.
fn room(conn_window: i64, stream_window: i64, max_frame: usize, out_len: usize) -> usize {
    let window = conn_window.min(stream_window).max(0) as usize;
    window
        .min(max_frame)
        .min(WRITE_BUDGET.saturating_sub(out_len))
}

/// One DATA frame of up to `room` bytes from the front of `queue`; returns
/// how many bytes it took.
fn put_queued(
    out: &mut Vec<u8>,
    stream: u32,
    queue: &crate::conn::queue::OutQueue,
    room: usize,
) -> usize {
    let head_at = out.len();
    put_head(out, 0, DATA, 0, stream);
    let mut slices = [IoSlice::new(&[]); 16];
    let n = queue.slices(&mut slices);
    let mut taken = 0;
    for slice in &slices[..n] {
        let k = slice.len().min(room - taken);
        out.extend_from_slice(&slice[..k]);
        taken += k;
        if taken == room {
            break;
        }
    }
    let len = (taken as u32).to_be_bytes();
    out[head_at..head_at + 3].copy_from_slice(&len[1..]);
    taken
}

/// The data of a frame without its padding (§6.1).
fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], ConnError> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or(ConnError(PROTOCOL_ERROR))?;
    let end = rest
        .len()
        .checked_sub(usize::from(pad))
        .ok_or(ConnError(PROTOCOL_ERROR))?;
    Ok(&rest[..end])
}

/// The bytes of a complete response body.
fn full_bytes(mut full: Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut full).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// A request's header fields as decoded, checked as RFC 9113 §8.3 asks.
#[derive(Default)]
struct Fields {
    method: Option<Method>,
    scheme: bool,
    path: Option<h2::hpack::BytesStr>,
    headers: HeaderMap,
    /// The header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it.
    size: usize,
    malformed: bool,
    regular_seen: bool,
}

impl Fields {
    fn add(&mut self, h: Header, max: usize) {
        self.size += h.len();
        if self.size > max {
            // Counted, not kept: the request is answered 431.
            return;
        }
        let pseudo = !matches!(h, Header::Field { .. });
        if pseudo && self.regular_seen {
            self.malformed = true;
        }
        match h {
            Header::Method(m) => self.malformed |= self.method.replace(m).is_some(),
            Header::Scheme(_) => self.malformed |= std::mem::replace(&mut self.scheme, true),
            Header::Path(p) => {
                self.malformed |= p.is_empty();
                self.malformed |= self.path.replace(p).is_some();
            }
            Header::Authority(_) => {}
            Header::Protocol(_) | Header::Status(_) => self.malformed = true,
            Header::Field { name, value } => {
                self.regular_seen = true;
                // Connection-specific fields are malformed in HTTP/2 (§8.2.2).
                let connection_specific = matches!(
                    name.as_str(),
                    "connection"
                        | "keep-alive"
                        | "proxy-connection"
                        | "transfer-encoding"
                        | "upgrade"
                ) || (name == http::header::TE && value != "trailers");
                self.malformed |= connection_specific;
                self.headers.append(name, value);
            }
        }
    }

    /// The request's parts, or `None` when it is malformed.
    fn request(self) -> Option<http::request::Parts> {
        if self.malformed || !self.scheme {
            return None;
        }
        let method = self.method?;
        if method == Method::CONNECT {
            return None;
        }
        let uri =
            http::Uri::from_maybe_shared(Bytes::copy_from_slice(self.path?.as_bytes())).ok()?;
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        parts.version = http::Version::HTTP_2;
        parts.headers = self.headers;
        Some(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection and a stream cost besides their keys and table
    /// entries (perf/RESULTS.md has the measured figures).
    #[test]
    fn connection_and_stream_state_stay_small() {
        let conn = std::mem::size_of::<Conn>();
        let stream = std::mem::size_of::<Stream>();
        eprintln!("Conn {conn} B, Stream {stream} B");
        assert!(conn <= 512, "Conn is {conn} bytes");
        assert!(stream <= 32, "Stream is {stream} bytes");
    }

    #[test]
    fn padding_is_removed_and_checked() {
        assert_eq!(unpad(0, b"abc").unwrap(), b"abc");
        assert_eq!(unpad(PADDED, b"\x02abcxx").unwrap(), b"abc");
        assert!(unpad(PADDED, b"\x05ab").is_err());
        assert!(unpad(PADDED, b"").is_err());
    }
}
