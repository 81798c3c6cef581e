//! The protocol core of one HTTP/2 connection, without I/O and without a
//! clock (time is passed in, as quinn-proto does): bytes in
//! ([`Proto::receive`]), frames out ([`Proto::out`] and [`Proto::produce`]),
//! deadlines to keep ([`Proto::next_deadline`], [`Proto::on_timer`]). The
//! connection-level frames are here; stream frames in [`super::recv`], answers
//! and DATA in [`super::send`]. [`super::conn`] drives it over a socket;
//! tests and property tests drive it in memory.

use bytes::BytesMut;
use h2_hpack::Decoder;
use tracing::debug;

use super::flood::{Flood, Floods};
use super::frame::*;
use super::host::Host;
use super::limits::{Limits, MAX_SETTINGS_ENTRIES, MAX_STREAMS};
use super::streams::{AtEnd, Closed, Ended, Stream, StreamState};
use crate::conn::CloseReason;

/// The connection ends with this GOAWAY code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnError(pub u32);

/// A header block being received (HEADERS, then CONTINUATION frames).
pub(super) struct Block {
    pub stream: u32,
    pub end_stream: bool,
    /// Its PRIORITY fields made the stream depend on itself (§5.3.1).
    pub self_dep: bool,
    pub buf: BytesMut,
}

/// Where a stream id stands (RFC 9113 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Where {
    /// Not opened yet (or an even id: never the client's).
    Idle,
    /// Open: its index in [`Proto::streams`].
    Open(usize),
    /// Closed: how, when herald still remembers.
    Closed(Option<Ended>),
}

pub struct Proto {
    pub(super) limits: Limits,
    pub(super) hpack: Decoder,
    pub(super) block: Option<Box<Block>>,
    pub(super) streams: Vec<Stream>,
    pub(super) closed: Option<Box<Closed>>,
    /// Frames to send before any DATA: control frames, answers' heads.
    pub out: Vec<u8>,
    preface: bool,
    pub(super) settings_seen: bool,
    /// The highest stream id the client opened.
    pub(super) last_stream: u32,
    pub(super) goaway_sent: bool,
    peer_goaway: bool,
    failed: Option<u32>,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    pub(super) peer_window: i32,
    pub(super) peer_max_frame: u32,
    /// What herald may still send on the connection.
    pub(super) send_window: i64,
    /// What the client may still send on the connection.
    pub(super) recv_window: i64,
    /// Connection window to give back at the end of this pass.
    pub(super) give_back: u32,
    /// Bytes of answers waiting on a window, plus ROUTE_COST per request with
    /// the routes.
    pub(super) answers: u32,
    /// Sizes of the request heads kept (see [`Limits::request_heads`]).
    pub(super) heads: u32,
    /// herald's next header block starts with a table size update (RFC 7541
    /// §4.2): at the first one, and after every client SETTINGS that set
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub(super) table_update_due: bool,
    pub(super) floods: Floods,
    /// Where the next write turn starts among the streams (fairness).
    pub(super) rr: u16,
    pub(super) started: u64,
    pub(super) block_since: u64,
    /// Since when the connection has had no stream (0: it has some).
    pub(super) idle_since: u64,
}

impl Proto {
    /// A connection whose TLS handshake completed at `now`; herald's SETTINGS
    /// and connection window are in [`Proto::out`].
    pub fn new(limits: Limits, now: u64) -> Proto {
        let mut p = Proto {
            limits,
            hpack: Decoder::new(4096),
            block: None,
            streams: Vec::new(),
            closed: None,
            out: Vec::new(),
            preface: false,
            settings_seen: false,
            last_stream: 0,
            goaway_sent: false,
            peer_goaway: false,
            failed: None,
            peer_window: DEFAULT_WINDOW as i32,
            peer_max_frame: DEFAULT_MAX_FRAME as u32,
            send_window: DEFAULT_WINDOW,
            recv_window: DEFAULT_WINDOW,
            give_back: 0,
            answers: 0,
            heads: 0,
            table_update_due: true,
            floods: Floods::default(),
            rr: 0,
            started: now,
            block_since: 0,
            idle_since: now,
        };
        // Herald's settings go first (RFC 9113 §3.4): no dynamic table for
        // request headers (no connection keeps a copy of its client's
        // headers), the stream limit, the header list limit, and a window of
        // one body per stream.
        put_settings(
            &mut p.out,
            &[
                (SETTINGS_HEADER_TABLE_SIZE, 0),
                (SETTINGS_ENABLE_PUSH, 0),
                (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                (SETTINGS_INITIAL_WINDOW_SIZE, limits.stream_window),
                (SETTINGS_MAX_HEADER_LIST_SIZE, limits.header_list),
            ],
        );
        let extra = i64::from(limits.conn_window) - DEFAULT_WINDOW;
        if extra > 0 {
            put_window_update(&mut p.out, 0, extra as u32);
            p.recv_window += extra;
        }
        p
    }

    /// The connection failed (GOAWAY with this code is queued).
    pub fn failed(&self) -> Option<u32> {
        self.failed
    }

    /// Nothing more to do: failed, or GOAWAY sent or received and every
    /// stream over.
    pub fn is_done(&self) -> bool {
        self.failed.is_some() || ((self.goaway_sent || self.peer_goaway) && self.streams.is_empty())
    }

    /// Streams open (either side).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Body bytes the streams hold, recomputed from them: what the host was
    /// told through [`Host::body_bytes`] must add up to it (property tests).
    #[doc(hidden)]
    pub fn held_bytes(&self) -> usize {
        self.streams
            .iter()
            .map(|s| {
                let receiving = match s.recv.as_ref().map(|r| &r.at_end) {
                    Some(AtEnd::Serve { body, .. }) => body.len(),
                    _ => 0,
                };
                receiving
                    + match &s.state {
                        StreamState::Queued(q) => q.body.len(),
                        StreamState::Routing { held, .. } => *held as usize,
                        _ => 0,
                    }
            })
            .sum()
    }

    /// The running count of answers against [`super::limits::ANSWER_BUDGET`],
    /// and the same recomputed from the streams (property tests).
    #[doc(hidden)]
    pub fn answers_accounted(&self) -> (usize, usize) {
        let recomputed = self
            .streams
            .iter()
            .map(|s| match &s.state {
                StreamState::Sending(o) => o.data.len() - o.sent,
                StreamState::Routing { .. } => super::limits::ROUTE_COST,
                _ => 0,
            })
            .sum();
        (self.answers as usize, recomputed)
    }

    /// The SSE streams, for the shard to wake the connection when they have
    /// news.
    pub fn event_streams(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.streams.iter().filter_map(|s| match s.state {
            StreamState::Events { key, serial } => Some((key, serial)),
            _ => None,
        })
    }

    /// Handle the whole frames at the front of `input` (the preface first);
    /// returns how many bytes they were. A connection error is recorded
    /// ([`Proto::failed`]).
    pub fn receive<H: Host>(&mut self, host: &mut H, input: &[u8], now: u64) -> usize {
        let mut at = 0;
        let result = loop {
            if self.failed.is_some() {
                break Ok(());
            }
            if !self.preface {
                let have = &input[at..];
                let n = have.len().min(PREFACE.len());
                if have[..n] != PREFACE[..n] {
                    break Err(ConnError(PROTOCOL_ERROR));
                }
                if n < PREFACE.len() {
                    break Ok(());
                }
                at += n;
                self.preface = true;
                continue;
            }
            if input.len() - at < HEAD_LEN {
                break Ok(());
            }
            let head = Head::parse(&input[at..]);
            if head.len > DEFAULT_MAX_FRAME {
                // herald never raises SETTINGS_MAX_FRAME_SIZE.
                break Err(ConnError(FRAME_SIZE_ERROR));
            }
            if input.len() - at < HEAD_LEN + head.len {
                break Ok(());
            }
            let payload = &input[at + HEAD_LEN..at + HEAD_LEN + head.len];
            at += HEAD_LEN + head.len;
            if let Err(e) = self.frame(host, head, payload, now) {
                debug!(
                    kind = head.kind,
                    stream = head.stream,
                    len = head.len,
                    code = e.0,
                    "HTTP/2 frame refused"
                );
                break Err(e);
            }
        };
        if let Err(e) = result {
            self.fail(e.0);
        }
        self.settle(host, now);
        at
    }

    /// After a pass: the connection window given back, finished streams
    /// swept, waiting requests served when answers drained.
    pub(super) fn settle<H: Host>(&mut self, host: &mut H, now: u64) {
        if self.give_back > 0 && self.failed.is_none() {
            self.recv_window += i64::from(self.give_back);
            put_window_update(&mut self.out, 0, self.give_back);
        }
        self.give_back = 0;
        self.sweep(now);
        // Not once the connection failed: a held request served now would
        // write its answer after the GOAWAY, where nothing may follow
        // (RFC 9113 §5.4.1). A reset in the pass that failed frees the
        // budget it waits for.
        if self.failed.is_none() {
            self.run_queued(host, now);
        }
    }

    fn frame<H: Host>(
        &mut self,
        host: &mut H,
        head: Head,
        payload: &[u8],
        now: u64,
    ) -> Result<(), ConnError> {
        if !self.settings_seen && (head.kind != SETTINGS || head.flags & ACK != 0) {
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
            DATA => self.on_data(host, head, payload, now),
            HEADERS => self.on_headers(host, head, payload, now),
            PRIORITY => self.on_priority(host, head, payload, now),
            RST_STREAM => self.on_rst(host, head, payload, now),
            SETTINGS => self.on_settings(head, payload, now),
            PUSH_PROMISE => Err(ConnError(PROTOCOL_ERROR)),
            PING => self.on_ping(head, payload, now),
            GOAWAY => {
                if head.stream != 0 {
                    return Err(ConnError(PROTOCOL_ERROR));
                }
                if payload.len() < 8 {
                    return Err(ConnError(FRAME_SIZE_ERROR));
                }
                self.peer_goaway = true;
                Ok(())
            }
            WINDOW_UPDATE => self.on_window_update(host, head, payload, now),
            CONTINUATION => self.on_continuation(host, head, payload, now),
            // Unknown frame types are ignored (§5.5), and counted.
            _ => self.count(Flood::Useless, now),
        }
    }

    fn on_settings(&mut self, head: Head, payload: &[u8], now: u64) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        self.count(Flood::Settings, now)?;
        if head.flags & ACK != 0 {
            if !payload.is_empty() {
                return Err(ConnError(FRAME_SIZE_ERROR));
            }
            // The client now knows herald keeps no dynamic table: nothing in
            // it can be referenced any more. It goes now, rather than when
            // (if ever) the client's next block shrinks it: a client that
            // opened streams before this ACK would otherwise leave its first
            // requests' headers in it for the connection's life.
            self.hpack = Decoder::new(0);
            return Ok(());
        }
        if payload.len() % 6 != 0 {
            return Err(ConnError(FRAME_SIZE_ERROR));
        }
        if payload.len() / 6 > MAX_SETTINGS_ENTRIES {
            return Err(self.calm(Flood::Settings));
        }
        let mut window = None;
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                SETTINGS_HEADER_TABLE_SIZE => self.table_update_due = true,
                SETTINGS_ENABLE_PUSH
                | SETTINGS_ENABLE_CONNECT_PROTOCOL
                | SETTINGS_NO_RFC7540_PRIORITIES
                    if value > 1 =>
                {
                    return Err(ConnError(PROTOCOL_ERROR))
                }
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err(ConnError(FLOW_CONTROL_ERROR));
                    }
                    // Only the last value matters (§6.5.3): applied once below.
                    window = Some(value as i32);
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(1 << 14..1 << 24).contains(&value) {
                        return Err(ConnError(PROTOCOL_ERROR));
                    }
                    self.peer_max_frame = value;
                }
                _ => {}
            }
        }
        if let Some(value) = window {
            let delta = i64::from(value) - i64::from(self.peer_window);
            self.peer_window = value;
            for s in &mut self.streams {
                let w = i64::from(s.window) + delta;
                if w > MAX_WINDOW {
                    return Err(ConnError(FLOW_CONTROL_ERROR));
                }
                // A window lowered by a new setting may go below zero (§6.9.2).
                s.window = w.max(i64::from(i32::MIN)) as i32;
            }
        }
        self.settings_seen = true;
        put_settings_ack(&mut self.out);
        Ok(())
    }

    fn on_ping(&mut self, head: Head, payload: &[u8], now: u64) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        if payload.len() != 8 {
            return Err(ConnError(FRAME_SIZE_ERROR));
        }
        if head.flags & ACK != 0 {
            // herald sends no PING: an ACK answers nothing.
            return self.count(Flood::Useless, now);
        }
        self.count(Flood::Pings, now)?;
        put_ping_ack(&mut self.out, payload);
        Ok(())
    }

    /// Count a frame against its flood bucket.
    pub(super) fn count(&mut self, kind: Flood, now: u64) -> Result<(), ConnError> {
        if kind == Flood::Useless {
            crate::metrics::h2_ignored_frame();
        }
        match self.floods.count(kind, now) {
            Ok(()) => Ok(()),
            Err(kind) => Err(self.calm(kind)),
        }
    }

    fn calm(&self, kind: Flood) -> ConnError {
        debug!(kind = kind.label(), "HTTP/2 flood");
        crate::metrics::h2_flood(kind.label());
        ConnError(ENHANCE_YOUR_CALM)
    }

    /// Where stream `id` stands.
    pub(super) fn locate(&self, id: u32) -> Where {
        if id % 2 == 0 || id > self.last_stream {
            return Where::Idle;
        }
        match self.streams.iter().position(|s| s.id == id) {
            // Ended in this pass, not swept yet: closed already.
            Some(i) if self.streams[i].is_over() => match self.streams[i].state {
                StreamState::Done(how) => Where::Closed(Some(how)),
                _ => unreachable!("an ended stream is Done"),
            },
            Some(i) => Where::Open(i),
            None => Where::Closed(self.closed.as_ref().and_then(|c| c.get(id))),
        }
    }

    /// Remember that `id` closed `how` (a stream never pushed, or swept).
    pub(super) fn remember(&mut self, id: u32, how: Ended) {
        self.closed
            .get_or_insert_with(Default::default)
            .push(id, how);
    }

    /// Take finished streams out, remembering how each ended.
    pub(super) fn sweep(&mut self, now: u64) {
        if !self.streams.iter().any(Stream::is_over) {
            return;
        }
        let closed = self.closed.get_or_insert_with(Default::default);
        self.streams.retain(|s| match (&s.state, &s.recv) {
            (StreamState::Done(how), None) => {
                closed.push(s.id, *how);
                false
            }
            _ => true,
        });
        if self.streams.is_empty() {
            self.idle_since = now;
        }
        // A burst of streams does not keep its slots for the connection's life.
        let cap = self.streams.capacity();
        if cap > 8 && self.streams.len() < cap / 4 {
            self.streams.shrink_to(self.streams.len() * 2);
        }
    }

    /// Queue GOAWAY(NO_ERROR): no new streams; the connection closes once
    /// its streams end (the pod drains, or the connection was idle).
    pub fn go_away(&mut self) {
        if !self.goaway_sent {
            put_goaway(&mut self.out, self.last_stream, NO_ERROR);
            self.goaway_sent = true;
        }
    }

    /// A connection error: GOAWAY with `code` (a second one after a
    /// graceful GOAWAY, as §6.8 allows), then the connection closes.
    pub fn fail(&mut self, code: u32) {
        if self.failed.is_some() {
            return;
        }
        debug!(code, "HTTP/2 connection error");
        crate::metrics::h2_connection_error(code_name(code));
        put_goaway(&mut self.out, self.last_stream, code);
        self.goaway_sent = true;
        self.failed = Some(code);
    }

    /// Let go of `n` body bytes: the connection window is given back and the
    /// shard's budget lightened.
    pub(super) fn release<H: Host>(&mut self, host: &mut H, n: usize) {
        if n > 0 {
            self.give_back += n as u32;
            host.body_bytes(-(n as i64));
        }
    }

    /// The connection is going: its SSE streams end, its routes stop, what it
    /// held is let go.
    pub fn end_all<H: Host>(&mut self, host: &mut H) {
        self.end_all_as(host, CloseReason::ClientClosed);
    }

    /// As [`Proto::end_all`], the SSE streams reported ended for `reason`.
    pub fn end_all_as<H: Host>(&mut self, host: &mut H, reason: CloseReason) {
        for i in 0..self.streams.len() {
            self.end_stream(host, i, Ended::ByUs, reason);
        }
        self.streams.clear();
        self.give_back = 0;
    }
}
