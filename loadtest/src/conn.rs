//! Subscriber connections on mio event loops.
//!
//! Each event-loop thread owns one `mio::Poll` and its connections in a `Vec`
//! (streams) or a `Slab` (churn), indexed by the mio token. A connection is a
//! small state machine — Connecting → Writing the request → reading the
//! response Head → Streaming — driven by edge-triggered readiness (writes go
//! until `WouldBlock`, reads until a short read: on Linux a later arrival
//! raises a new edge). All reads go into one 64 KiB buffer per
//! thread; a connection keeps only the SSE parser's carry-over, its body
//! framing (close-delimited, chunked or sized) and its sequence tracking.
//!
//! Sockets are non-blocking, bound before connect to a loopback source
//! address chosen round-robin (`IP_BIND_ADDRESS_NO_PORT`, so each source
//! address offers a full ephemeral port range per destination), and send
//! `Accept: text/event-stream` (nchan answers 403 without it).
//!
//! Sequence tracking ([`crate::track`]): in a measured phase each connection
//! expects one class of sequence numbers — all of them (fan-out), or those
//! with `seq % users == index % users` (targeted) — and keeps a 1024-wide
//! bitmap behind the highest one received plus the gaps that slid out of it,
//! which gives exact loss (expected − distinct received), duplicates and
//! reorders even when concurrent publishers make events arrive out of order:
//! 40 bytes in the connection plus a 160-byte heap block during a phase.
//!
//! The controller ([`Streams`]) talks to the threads through a channel plus a
//! waker and reads progress from a few atomics; every wait is bounded. The
//! measured phase of a thread ([`Book`]) and the SSE-to-accounting path
//! ([`feed_sse`]) are shared with the h2 event loops of [`crate::http2`], so
//! both kinds of stream are counted by the same code.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::payload;
use crate::sse::{self, Event, Framing, SseParser};
use crate::sys;
use crate::target::Template;
use crate::track::{Mark, Phase, Track};

const WAKER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 * 1024;
const MAX_HEAD: usize = 64 * 1024;

/// How to open a subscription: where, which request, from which addresses.
pub struct SubSpec {
    pub addr: SocketAddr,
    pub host: String,
    pub path: Template,
    pub headers: Vec<(String, String)>,
    pub sources: Vec<Ipv4Addr>,
    /// Longest from `connect` to the response head (churn: to the first body bytes).
    pub connect_timeout: Duration,
    /// `https://`: a TLS handshake before the request ([`crate::tls`]).
    pub tls: bool,
}

impl SubSpec {
    /// Appends the subscribe path of connection `index` (`{i}` filled in) to `out`.
    pub fn path_of(&self, index: u64, out: &mut Vec<u8>) {
        self.path.render(
            &crate::target::Vars {
                index,
                ..Default::default()
            },
            out,
        );
    }

    /// Writes the subscribe request for connection `index` into `out`.
    pub fn request(&self, index: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"GET ");
        self.path_of(index, out);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n");
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Starts a non-blocking connect for connection `index`.
    fn connect(&self, index: u64) -> io::Result<TcpStream> {
        let src = self.sources[(index % self.sources.len() as u64) as usize];
        sys::connect_from(src, self.addr)
    }
}

/// Counters of one thread for one phase (merged across threads at the end).
#[derive(Debug)]
pub struct PhaseStats {
    /// Connections that were streaming when the phase began.
    pub subscribers: u64,
    /// Deliveries the phase should have produced.
    pub expected: u64,
    /// First deliveries of expected events.
    pub delivered: u64,
    /// Expected events never received (expected − first deliveries; set at
    /// the end of the phase).
    pub lost: i64,
    /// Events received again (including unclassified ones).
    pub duplicates: u64,
    /// First deliveries that arrived after a later event (counted as
    /// delivered, not lost).
    pub reordered: u64,
    /// Arrivals too late to tell from a duplicate (the per-connection hole
    /// list overflowed): counted as duplicates; 0 means loss and duplicates
    /// are exact.
    pub unclassified: u64,
    /// Stamped events this connection should not have received (wrong user).
    pub unexpected: u64,
    /// Stamped events from before the phase.
    pub stale: u64,
    /// All SSE events dispatched (ours or not).
    pub events: u64,
    /// Streams that ended during the phase.
    pub closed_during: u64,
    /// Latency of first deliveries, µs.
    pub latency_us: Histogram<u64>,
    /// `CLOCK_MONOTONIC` of the last first delivery.
    pub last_delivery_ns: u64,
    /// CPU time of the event-loop thread(s) during the phase.
    pub thread_cpu_ns: u64,
    /// Largest CPU time of one thread (for the client-bound check).
    pub max_thread_cpu_ns: u64,
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

impl Default for PhaseStats {
    fn default() -> Self {
        PhaseStats {
            subscribers: 0,
            expected: 0,
            delivered: 0,
            lost: 0,
            duplicates: 0,
            reordered: 0,
            unclassified: 0,
            unexpected: 0,
            stale: 0,
            events: 0,
            closed_during: 0,
            latency_us: new_hist(),
            last_delivery_ns: 0,
            thread_cpu_ns: 0,
            max_thread_cpu_ns: 0,
        }
    }
}

impl PhaseStats {
    pub fn merge(&mut self, o: &PhaseStats) {
        self.subscribers += o.subscribers;
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.unclassified += o.unclassified;
        self.unexpected += o.unexpected;
        self.stale += o.stale;
        self.events += o.events;
        self.closed_during += o.closed_during;
        let _ = self.latency_us.add(&o.latency_us);
        self.last_delivery_ns = self.last_delivery_ns.max(o.last_delivery_ns);
        self.thread_cpu_ns += o.thread_cpu_ns;
        self.max_thread_cpu_ns = self.max_thread_cpu_ns.max(o.max_thread_cpu_ns);
    }
}

/// Feeds body bytes of stream `index` to its SSE parser and accounts every
/// stamped event it dispatches: the one path of HTTP/1.1 bodies (whatever
/// their framing) and of h2 DATA frames ([`crate::http2`]). `Err` is the
/// reason to end the stream.
pub(crate) fn feed_sse(
    sse: &mut SseParser,
    track: &mut Track,
    index: u64,
    data: &[u8],
    now: u64,
    phase: &Phase,
    stats: &mut PhaseStats,
) -> Result<(), String> {
    sse.feed(data, &mut |e: &Event| {
        stats.events += 1;
        if let Some(st) = payload::decode(e.data) {
            on_stamp(track, index, st, phase, stats, now);
        }
    })
    .map_err(|_| "sse line too long".to_string())
}

/// Accounts one stamped event received by connection `index`.
fn on_stamp(
    track: &mut Track,
    index: u64,
    st: payload::Stamp,
    ph: &Phase,
    s: &mut PhaseStats,
    now: u64,
) {
    if !ph.active || !track.in_phase {
        return;
    }
    if st.seq < ph.first {
        s.stale += 1;
        return;
    }
    let (stride, off) = ph.class(index);
    if st.seq % stride != off {
        s.unexpected += 1;
        return;
    }
    match track.record(st.seq / stride) {
        Mark::Fresh => {}
        Mark::Reordered => s.reordered += 1,
        Mark::Duplicate => {
            s.duplicates += 1;
            return;
        }
        Mark::Unclassified => {
            s.duplicates += 1;
            s.unclassified += 1;
            return;
        }
    }
    s.delivered += 1;
    s.latency_us
        .saturating_record(now.saturating_sub(st.send_ns) / 1000);
    s.last_delivery_ns = now;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    /// TLS only: the handshake, before the request is written.
    Handshake,
    Writing,
    Head,
    Streaming,
    Done,
}

/// One subscriber connection.
pub struct Conn {
    sock: Option<TcpStream>,
    /// The TLS session of an `https://` stream (boxed: plain streams stay small).
    tls: Option<Box<rustls::ClientConnection>>,
    index: u64,
    state: State,
    /// A 2xx response head was received: the stream is open.
    head_ok: bool,
    /// First body bytes received.
    ready: bool,
    written: u16,
    /// When the connect started (for the connect timeout).
    opened: Instant,
    /// Response head bytes, only while it arrives in pieces.
    head: Vec<u8>,
    framing: Framing,
    sse: SseParser,
    track: Track,
}

/// What a call to [`Conn::drive`] changed.
#[derive(Default, Debug)]
struct Step {
    /// A 2xx response head arrived.
    head: bool,
    /// First body bytes arrived.
    ready: bool,
    /// The connection ended (before being ready: a failure), with a reason.
    end: Option<String>,
}

/// Per-thread scratch and counters.
struct Ctx {
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    book: Book,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            rbuf: vec![0; READ_BUF],
            wbuf: Vec::with_capacity(512),
            book: Book::default(),
        }
    }
}

/// What the phase bookkeeping reads from one subscriber stream: an HTTP/1.1
/// connection ([`Conn`]) or an h2 stream ([`crate::http2`]).
pub(crate) trait Tracked {
    /// The connection index `{i}` of its subscribe URL (its user, targeted).
    fn index(&self) -> u64;
    /// Had its 2xx response head and has not ended: a subscriber of a phase
    /// begun now.
    fn open(&self) -> bool;
    /// Has ended (counts as caught up while draining: it will get nothing more).
    fn ended(&self) -> bool;
    fn track(&self) -> &Track;
    fn track_mut(&mut self) -> &mut Track;
}

/// One event-loop thread's measured phase: what it is, its counters, and
/// the controller's commands applied to the thread's streams. Both kinds
/// of event loop (mio for HTTP/1.1, tokio for h2) keep one.
#[derive(Default)]
pub(crate) struct Book {
    pub phase: Phase,
    /// Sequence numbers of the phase that no publisher used (sorted).
    holes: Vec<u64>,
    pub stats: PhaseStats,
    /// Thread CPU time when the phase began.
    cpu0: u64,
}

impl Book {
    /// Applies a controller command to `streams`; returns true on Stop
    /// (the caller then closes them and ends its loop).
    pub fn command<T: Tracked>(&mut self, cmd: Cmd, streams: &mut [T]) -> bool {
        match cmd {
            Cmd::Phase { first, users, ack } => {
                let ph = Phase {
                    active: true,
                    first,
                    users,
                    end: None,
                };
                let mut subs = 0;
                for c in streams.iter_mut() {
                    let live = c.open();
                    *c.track_mut() = if live {
                        Track::begin(ph.below(c.index(), first))
                    } else {
                        Track::default()
                    };
                    subs += live as u64;
                }
                self.phase = ph;
                self.holes.clear();
                self.stats = PhaseStats {
                    subscribers: subs,
                    ..PhaseStats::default()
                };
                self.cpu0 = sys::thread_cpu_ns();
                let _ = ack.send(subs);
                false
            }
            Cmd::End { end, holes } => {
                self.phase.end = Some(end);
                self.holes = holes;
                false
            }
            Cmd::Collect { ack } => {
                let ph = self.phase;
                let end = ph.end.unwrap_or(ph.first);
                let mut s = std::mem::take(&mut self.stats);
                for c in streams.iter_mut().filter(|c| c.track().in_phase) {
                    let e = ph.expect(c.index(), end, &self.holes);
                    s.expected += e.count;
                    s.lost += e.count as i64 - c.track().distinct as i64;
                    *c.track_mut() = Track::default();
                }
                let cpu = sys::thread_cpu_ns().saturating_sub(self.cpu0);
                s.thread_cpu_ns = cpu;
                s.max_thread_cpu_ns = cpu;
                self.phase = Phase::default();
                self.holes.clear();
                let _ = ack.send(s);
                false
            }
            Cmd::Stop => true,
        }
    }

    /// Publishes how far `streams` are once the phase's end is known.
    pub fn report_drain<T: Tracked>(&self, streams: &[T], drain: &DrainProgress) {
        let Some(end) = self.phase.end else {
            return;
        };
        let (mut caught_up, mut complete) = (0u64, 0u64);
        for c in streams.iter().filter(|c| c.track().in_phase) {
            let e = self.phase.expect(c.index(), end, &self.holes);
            let t = c.track();
            caught_up += (c.ended() || t.top >= e.last_top) as u64;
            complete += (c.ended() || t.distinct >= e.count) as u64;
        }
        drain.caught_up.store(caught_up, Ordering::Relaxed);
        drain.complete.store(complete, Ordering::Relaxed);
        drain.progress.store(
            self.stats.delivered + self.stats.duplicates,
            Ordering::Relaxed,
        );
    }

    /// Counts a stream that ended: one that had its 2xx head closed (during
    /// the phase, if one is on), any other failed; `reason` is noted.
    pub fn ended(&mut self, shared: &Shared, was_open: bool, reason: String) {
        if was_open {
            shared.closed.fetch_add(1, Ordering::Relaxed);
            if self.phase.active {
                self.stats.closed_during += 1;
            }
        } else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        shared.note(reason);
    }
}

impl Tracked for Conn {
    fn index(&self) -> u64 {
        self.index
    }
    fn open(&self) -> bool {
        self.alive() && self.head_ok
    }
    fn ended(&self) -> bool {
        !self.alive()
    }
    fn track(&self) -> &Track {
        &self.track
    }
    fn track_mut(&mut self) -> &mut Track {
        &mut self.track
    }
}

impl Conn {
    fn open(spec: &SubSpec, index: u64, registry: &Registry, token: Token) -> io::Result<Conn> {
        let mut sock = spec.connect(index)?;
        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        let mut conn = Conn::slot(index, Some(sock), State::Connecting);
        if spec.tls {
            conn.tls = Some(Box::new(crate::tls::connection(spec.addr)?));
        }
        Ok(conn)
    }

    /// A slot for a connection whose connect could not even start.
    fn dead(index: u64) -> Conn {
        Conn::slot(index, None, State::Done)
    }

    /// A fresh slot: nothing read, nothing written yet.
    fn slot(index: u64, sock: Option<TcpStream>, state: State) -> Conn {
        Conn {
            sock,
            tls: None,
            index,
            state,
            head_ok: false,
            ready: false,
            written: 0,
            opened: Instant::now(),
            head: Vec::new(),
            framing: Framing::Close,
            sse: SseParser::default(),
            track: Track::default(),
        }
    }

    fn alive(&self) -> bool {
        self.state != State::Done
    }

    fn close(&mut self, step: &mut Step, reason: String) {
        self.state = State::Done;
        self.sock = None;
        self.tls = None;
        self.head = Vec::new();
        self.sse = SseParser::default();
        step.end = Some(reason);
    }

    /// Advances the state machine as far as readiness allows.
    fn drive(&mut self, registry: &Registry, token: Token, spec: &SubSpec, ctx: &mut Ctx) -> Step {
        let mut step = Step::default();
        loop {
            let Some(sock) = self.sock.as_mut() else {
                return step;
            };
            match self.state {
                State::Connecting => {
                    match sock.take_error() {
                        Ok(None) => {}
                        Ok(Some(e)) | Err(e) => {
                            self.close(&mut step, format!("connect: {e}"));
                            return step;
                        }
                    }
                    match sock.peer_addr() {
                        Ok(_) if self.tls.is_some() => self.state = State::Handshake,
                        Ok(_) => self.state = State::Writing,
                        Err(e) if e.kind() == ErrorKind::NotConnected => return step,
                        Err(e) => {
                            self.close(&mut step, format!("connect: {e}"));
                            return step;
                        }
                    }
                }
                State::Handshake => {
                    let tls = self.tls.as_mut().expect("a TLS stream");
                    match drive_tls(tls, sock, false) {
                        Ok(true) if !tls.is_handshaking() => self.state = State::Writing,
                        Ok(_) => return step,
                        Err(e) => {
                            self.close(&mut step, format!("tls handshake: {e}"));
                            return step;
                        }
                    }
                }
                State::Writing if self.tls.is_some() => {
                    let tls = self.tls.as_mut().expect("a TLS stream");
                    if self.written == 0 {
                        spec.request(self.index, &mut ctx.wbuf);
                        // Into rustls' buffer at once; flushed below, and again
                        // on the next writable edge when the socket is full.
                        if let Err(e) = tls.writer().write_all(&ctx.wbuf) {
                            self.close(&mut step, format!("write: {e}"));
                            return step;
                        }
                        self.written = 1;
                    }
                    match drive_tls(tls, sock, true) {
                        Ok(true) => {
                            let _ = registry.reregister(sock, token, Interest::READABLE);
                            self.state = State::Head;
                        }
                        Ok(false) => return step,
                        Err(e) => {
                            self.close(&mut step, format!("write: {e}"));
                            return step;
                        }
                    }
                }
                State::Writing => {
                    spec.request(self.index, &mut ctx.wbuf);
                    while (self.written as usize) < ctx.wbuf.len() {
                        match sock.write(&ctx.wbuf[self.written as usize..]) {
                            Ok(0) => {
                                self.close(&mut step, "write: closed".into());
                                return step;
                            }
                            Ok(n) => self.written += n as u16,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => return step,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) => {
                                self.close(&mut step, format!("write: {e}"));
                                return step;
                            }
                        }
                    }
                    let _ = registry.reregister(sock, token, Interest::READABLE);
                    self.state = State::Head;
                }
                State::Head | State::Streaming => {
                    self.read_all(ctx, &mut step);
                    return step;
                }
                State::Done => return step,
            }
        }
    }

    fn read_all(&mut self, ctx: &mut Ctx, step: &mut Step) {
        if self.tls.is_some() {
            return self.read_all_tls(ctx, step);
        }
        loop {
            let Some(sock) = self.sock.as_mut() else {
                return;
            };
            let n = match sock.read(&mut ctx.rbuf) {
                Ok(0) => {
                    let why = match (self.state, self.ready) {
                        (State::Head, _) => "eof before the response head",
                        (_, false) => "closed by the server before any body bytes",
                        _ => "closed by the server",
                    };
                    self.close(step, why.into());
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.close(step, format!("read: {e}"));
                    return;
                }
            };
            let now = sys::now_ns();
            let Ctx { rbuf, book, .. } = ctx;
            if let Err(why) = self.on_bytes(&rbuf[..n], now, &book.phase, &mut book.stats, step) {
                self.close(step, why);
                return;
            }
            // A short read emptied the receive queue: on Linux any later
            // arrival (data or FIN) raises a new edge, so the usual extra
            // read that returns EAGAIN is skipped (one syscall per wakeup).
            if n < rbuf.len() {
                return;
            }
        }
    }

    /// [`Conn::read_all`] for a TLS stream: records read until the socket is
    /// empty, their plaintext handed to [`Conn::on_bytes`] as it comes.
    fn read_all_tls(&mut self, ctx: &mut Ctx, step: &mut Step) {
        loop {
            let (Some(sock), Some(tls)) = (self.sock.as_mut(), self.tls.as_mut()) else {
                return;
            };
            match tls.read_tls(sock) {
                Ok(0) => return self.close(step, "closed by the server".into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return self.close(step, format!("read: {e}")),
            }
            if let Err(e) = tls.process_new_packets() {
                return self.close(step, format!("tls: {e}"));
            }
            loop {
                let Some(tls) = self.tls.as_mut() else {
                    return;
                };
                let n = match tls.reader().read(&mut ctx.rbuf) {
                    Ok(0) => return self.close(step, "closed by the server (close_notify)".into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return self.close(step, format!("tls read: {e}")),
                };
                let now = sys::now_ns();
                let Ctx { rbuf, book, .. } = ctx;
                if let Err(why) = self.on_bytes(&rbuf[..n], now, &book.phase, &mut book.stats, step)
                {
                    return self.close(step, why);
                }
            }
        }
    }

    fn on_bytes(
        &mut self,
        data: &[u8],
        now: u64,
        phase: &Phase,
        stats: &mut PhaseStats,
        step: &mut Step,
    ) -> Result<(), String> {
        if self.state == State::Streaming {
            return self.on_body(data, now, phase, stats, step);
        }
        // Response head, possibly in pieces.
        let mut held = std::mem::take(&mut self.head);
        match sse::feed_head(&mut held, data, MAX_HEAD) {
            Err(e) => Err(e.to_string()),
            Ok(None) => {
                self.head = held;
                Ok(())
            }
            Ok(Some((h, body))) => {
                if !(200..300).contains(&h.status) {
                    return Err(format!("status {}", h.status));
                }
                if matches!(h.framing, Framing::Length(0)) {
                    return Err(format!("status {} with an empty body", h.status));
                }
                self.framing = h.framing;
                self.state = State::Streaming;
                self.head_ok = true;
                step.head = true;
                self.on_body(body, now, phase, stats, step)
            }
        }
    }

    fn on_body(
        &mut self,
        data: &[u8],
        now: u64,
        phase: &Phase,
        stats: &mut PhaseStats,
        step: &mut Step,
    ) -> Result<(), String> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.ready {
            self.ready = true;
            step.ready = true;
        }
        let Conn {
            framing,
            sse,
            track,
            index,
            ..
        } = self;
        let index = *index;
        match framing {
            Framing::Close => feed_sse(sse, track, index, data, now, phase, stats),
            Framing::Length(rem) => {
                let n = (*rem).min(data.len() as u64) as usize;
                *rem -= n as u64;
                feed_sse(sse, track, index, &data[..n], now, phase, stats)?;
                if *rem == 0 {
                    return Err("end of the sized body".into());
                }
                Ok(())
            }
            Framing::Chunked(dec) => {
                let mut bad = None;
                let done = dec
                    .feed(data, &mut |chunk: &[u8]| {
                        if bad.is_none() {
                            bad = feed_sse(sse, track, index, chunk, now, phase, stats).err();
                        }
                    })
                    .map_err(|_| "bad chunked body".to_string())?;
                if let Some(why) = bad {
                    return Err(why);
                }
                if done {
                    return Err("end of the chunked body".into());
                }
                Ok(())
            }
        }
    }
}

/// Moves TLS records between `tls` and the socket as far as it goes without
/// blocking: writes what rustls has to send, and (unless `write_only`) reads and
/// processes what the server sent while the handshake needs it. `Ok(true)` once
/// nothing is left to write and the handshake is over; `Ok(false)` when the
/// socket would block (a later readiness edge resumes it).
fn drive_tls(
    tls: &mut rustls::ClientConnection,
    sock: &mut TcpStream,
    write_only: bool,
) -> io::Result<bool> {
    loop {
        while tls.wants_write() {
            match tls.write_tls(sock) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !tls.is_handshaking() {
            return Ok(true);
        }
        if write_only || !tls.wants_read() {
            return Ok(false);
        }
        match tls.read_tls(sock) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) => {
                tls.process_new_packets().map_err(io::Error::other)?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Progress every thread reports to the controller.
#[derive(Default)]
pub struct Shared {
    /// `--h2`: TCP connections whose h2 handshake completed.
    pub tcp_open: AtomicU64,
    /// A failure that makes the whole run pointless (the server does not
    /// speak the protocol asked for): the controller stops at once.
    pub fatal: Mutex<Option<String>>,
    /// Streams open: a 2xx response head arrived.
    pub open: AtomicU64,
    /// Open streams that also received body bytes.
    pub first_bytes: AtomicU64,
    /// Connections that ended before their response head.
    pub failed: AtomicU64,
    /// Streams that ended after being open.
    pub closed: AtomicU64,
    /// Failure and close reasons with counts.
    pub reasons: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    pub(crate) fn note(&self, reason: String) {
        *self.reasons.lock().unwrap().entry(reason).or_insert(0) += 1;
    }

    /// Records the first fatal failure (later ones are the same story).
    pub(crate) fn set_fatal(&self, why: String) {
        self.fatal.lock().unwrap().get_or_insert(why);
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap().clone()
    }
}

/// The controller's commands to an event-loop thread.
pub(crate) enum Cmd {
    Phase {
        first: u64,
        users: u64,
        ack: Sender<u64>,
    },
    End {
        end: u64,
        holes: Vec<u64>,
    },
    Collect {
        ack: Sender<PhaseStats>,
    },
    Stop,
}

/// How the controller wakes a thread after queueing a command.
pub(crate) enum Wake {
    /// A mio event loop.
    Mio(Arc<Waker>),
    /// A tokio event loop ([`crate::http2`]): it waits on this between ticks.
    Notify(Arc<tokio::sync::Notify>),
}

/// One event-loop thread, seen from the controller.
pub(crate) struct Handle {
    pub tx: Sender<Cmd>,
    pub wake: Wake,
    pub drain: Arc<DrainProgress>,
    pub join: Option<JoinHandle<()>>,
}

/// The stream event-loop threads, seen from the controller.
pub struct Streams {
    handles: Vec<Handle>,
    pub shared: Arc<Shared>,
    pub n: u64,
}

impl Streams {
    /// Starts `threads` event loops opening `n` streams between them (index
    /// `i` on thread `i % threads`), at most `inflight` connects at a time.
    pub fn start(
        spec: Arc<SubSpec>,
        n: u64,
        threads: usize,
        inflight: usize,
    ) -> io::Result<Streams> {
        let shared = Arc::new(Shared::default());
        let mut handles = Vec::new();
        for t in 0..threads {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = channel();
            let drain = Arc::new(DrainProgress::default());
            let mut w = StreamWorker {
                t: t as u64,
                threads: threads as u64,
                n,
                spec: spec.clone(),
                poll,
                conns: Vec::new(),
                inflight: 0,
                max_inflight: inflight.div_ceil(threads).max(1),
                ctx: Ctx::new(),
                shared: shared.clone(),
                rx,
                drain: drain.clone(),
            };
            let join = std::thread::Builder::new()
                .name(format!("loop-{t}"))
                .spawn(move || w.run())?;
            handles.push(Handle {
                tx,
                wake: Wake::Mio(waker),
                drain,
                join: Some(join),
            });
        }
        Ok(Streams::from_handles(handles, shared, n))
    }

    /// The controller's side of threads started elsewhere ([`crate::http2`]).
    pub(crate) fn from_handles(handles: Vec<Handle>, shared: Arc<Shared>, n: u64) -> Streams {
        Streams { handles, shared, n }
    }

    fn send(&self, h: &Handle, cmd: Cmd) {
        let _ = h.tx.send(cmd);
        match &h.wake {
            Wake::Mio(w) => {
                let _ = w.wake();
            }
            Wake::Notify(n) => n.notify_one(),
        }
    }

    /// Waits until every stream is open or has failed, a thread reported a
    /// fatal failure, or `limit` passes. Returns (open, failed).
    pub fn wait_open(&self, limit: Duration) -> (u64, u64) {
        let end = Instant::now() + limit;
        loop {
            let r = self.shared.open.load(Ordering::Relaxed);
            let f = self.shared.failed.load(Ordering::Relaxed);
            let fatal = self.shared.fatal.lock().unwrap().is_some();
            if r + f >= self.n || fatal || Instant::now() >= end {
                return (r, f);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until every open stream had body bytes, or `limit` passes.
    /// Returns how many did.
    pub fn wait_first_bytes(&self, limit: Duration) -> u64 {
        let end = Instant::now() + limit;
        loop {
            let open = self.shared.open.load(Ordering::Relaxed);
            let closed = self.shared.closed.load(Ordering::Relaxed);
            let fb = self.shared.first_bytes.load(Ordering::Relaxed);
            if fb + closed >= open || Instant::now() >= end {
                return fb;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Starts a measured phase on every thread; returns the subscribers in it.
    pub fn begin_phase(&self, first: u64, users: u64) -> u64 {
        let mut acks = Vec::new();
        for h in &self.handles {
            let (tx, rx) = channel();
            h.drain.reset();
            self.send(
                h,
                Cmd::Phase {
                    first,
                    users,
                    ack: tx,
                },
            );
            acks.push(rx);
        }
        acks.into_iter()
            .map(|rx| rx.recv_timeout(Duration::from_secs(10)).unwrap_or(0))
            .sum()
    }

    /// Tells the threads the phase's end (one past the last sequence number
    /// used, and the unused ones below it) and waits, at most `timeout`,
    /// until every subscriber has its last expected event or has ended.
    /// Returns whether all did. With `reordering` (several publishers) it
    /// then also waits, within the same `timeout`, until every subscriber has
    /// every expected event, or no event arrived for 100 ms: an earlier event
    /// may still be on its way after the last one.
    pub fn drain(
        &self,
        end: u64,
        holes: &[u64],
        subscribers: u64,
        timeout: Duration,
        reordering: bool,
    ) -> bool {
        for h in &self.handles {
            h.drain.reset();
            self.send(
                h,
                Cmd::End {
                    end,
                    holes: holes.to_vec(),
                },
            );
        }
        let deadline = Instant::now() + timeout;
        let sum = |f: fn(&DrainProgress) -> &AtomicU64| -> u64 {
            self.handles
                .iter()
                .map(|h| f(&h.drain).load(Ordering::Relaxed))
                .sum()
        };
        let drained = loop {
            if sum(|d| &d.caught_up) >= subscribers {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if drained && reordering {
            let mut seen = sum(|d| &d.progress);
            let mut quiet_since = Instant::now();
            while sum(|d| &d.complete) < subscribers
                && quiet_since.elapsed() < Duration::from_millis(100)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
                let p = sum(|d| &d.progress);
                if p != seen {
                    seen = p;
                    quiet_since = Instant::now();
                }
            }
        }
        drained
    }

    /// Ends the phase and returns the merged counters.
    pub fn collect(&self) -> PhaseStats {
        let mut total = PhaseStats::default();
        let mut acks = Vec::new();
        for h in &self.handles {
            let (tx, rx) = channel();
            self.send(h, Cmd::Collect { ack: tx });
            acks.push(rx);
        }
        for rx in acks {
            if let Ok(s) = rx.recv_timeout(Duration::from_secs(10)) {
                total.merge(&s);
            }
        }
        total
    }

    /// Closes every stream and joins the threads.
    pub fn stop(mut self) {
        for h in &self.handles {
            self.send(h, Cmd::Stop);
        }
        for h in &mut self.handles {
            if let Some(j) = h.join.take() {
                let _ = j.join();
            }
        }
    }
}

struct StreamWorker {
    t: u64,
    threads: u64,
    n: u64,
    spec: Arc<SubSpec>,
    poll: Poll,
    conns: Vec<Conn>,
    inflight: usize,
    max_inflight: usize,
    ctx: Ctx,
    shared: Arc<Shared>,
    rx: Receiver<Cmd>,
    drain: Arc<DrainProgress>,
}

/// Drain progress of one event-loop thread, refreshed every millisecond once
/// the phase's end is known.
#[derive(Default)]
pub(crate) struct DrainProgress {
    /// Subscribers that have their last expected event, or ended.
    caught_up: AtomicU64,
    /// Subscribers that have every expected event, or ended.
    complete: AtomicU64,
    /// Stamped events received in the phase (first deliveries and duplicates).
    progress: AtomicU64,
}

impl DrainProgress {
    fn reset(&self) {
        self.caught_up.store(0, Ordering::Relaxed);
        self.complete.store(0, Ordering::Relaxed);
    }
}

impl StreamWorker {
    /// Number of streams this thread owns.
    fn count(&self) -> usize {
        if self.t >= self.n {
            0
        } else {
            ((self.n - self.t).div_ceil(self.threads)) as usize
        }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let total = self.count();
        let mut last_sweep = Instant::now();
        let mut last_drain_check = Instant::now();
        let mut stop = false;
        while !stop {
            // Open more while under the in-flight bound.
            while self.inflight < self.max_inflight && self.conns.len() < total {
                let j = self.conns.len();
                let index = self.t + j as u64 * self.threads;
                match Conn::open(&self.spec, index, self.poll.registry(), Token(j)) {
                    Ok(c) => {
                        self.conns.push(c);
                        self.inflight += 1;
                    }
                    Err(e) => {
                        // Keep the slot (as a dead connection) so indexes stay aligned.
                        let c = Conn::dead(index);
                        self.conns.push(c);
                        self.shared.failed.fetch_add(1, Ordering::Relaxed);
                        self.shared.note(format!("connect: {e}"));
                    }
                }
            }
            let timeout = if self.ctx.book.phase.end.is_some() {
                Duration::from_millis(1)
            } else if self.inflight > 0 {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(50)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    eprintln!("loadtest: poll failed: {e}");
                    return;
                }
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let j = ev.token().0;
                let Some(conn) = self.conns.get_mut(j) else {
                    continue;
                };
                let was_open = conn.head_ok;
                let step = conn.drive(self.poll.registry(), ev.token(), &self.spec, &mut self.ctx);
                self.apply(was_open, step);
            }
            loop {
                match self.rx.try_recv() {
                    Ok(cmd) => {
                        if self.ctx.book.command(cmd, &mut self.conns) {
                            self.conns.clear();
                            stop = true;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    // The controller is gone: stop.
                    Err(TryRecvError::Disconnected) => {
                        stop = true;
                        break;
                    }
                }
            }
            if self.inflight > 0 && last_sweep.elapsed() >= Duration::from_millis(100) {
                last_sweep = Instant::now();
                self.sweep_timeouts();
            }
            if self.ctx.book.phase.end.is_some()
                && last_drain_check.elapsed() >= Duration::from_millis(1)
            {
                last_drain_check = Instant::now();
                self.ctx.book.report_drain(&self.conns, &self.drain);
            }
        }
    }

    fn apply(&mut self, was_open: bool, step: Step) {
        if step.head {
            self.inflight -= 1;
            self.shared.open.fetch_add(1, Ordering::Relaxed);
        }
        if step.ready {
            self.shared.first_bytes.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(reason) = step.end {
            let was_open = was_open || step.head;
            if !was_open {
                self.inflight -= 1;
            }
            self.ctx.book.ended(&self.shared, was_open, reason);
        }
    }

    fn sweep_timeouts(&mut self) {
        let limit = self.spec.connect_timeout;
        for c in self.conns.iter_mut() {
            if c.alive() && !c.head_ok && c.opened.elapsed() > limit {
                let mut step = Step::default();
                c.close(&mut step, "timeout before the response head".into());
                self.inflight -= 1;
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
                self.shared.note(step.end.unwrap_or_default());
            }
        }
    }
}

/// Result of a churn run (merged over threads).
#[derive(Debug)]
pub struct ChurnStats {
    /// Cycles that got their first body bytes.
    pub ok: u64,
    pub failed: u64,
    /// Cycles still in flight when the run was cut off.
    pub abandoned: u64,
    pub reasons: BTreeMap<String, u64>,
    /// Time from `connect` to the first body bytes, µs.
    pub first_bytes_us: Histogram<u64>,
    pub thread_cpu_ns: u64,
    pub max_thread_cpu_ns: u64,
}

/// Churn parameters.
#[derive(Clone, Copy)]
pub struct ChurnPlan {
    pub threads: usize,
    pub concurrency: usize,
    pub deadline: Instant,
    pub max_cycles: u64,
    /// `{i}` is the cycle number modulo this.
    pub index_modulo: u64,
}

/// Repeatedly opens a stream, waits for its first body bytes and closes it,
/// `concurrency` cycles in flight, until the deadline or `max_cycles`.
pub fn churn(spec: Arc<SubSpec>, plan: ChurnPlan) -> io::Result<ChurnStats> {
    let counter = Arc::new(AtomicU64::new(0));
    let mut joins = Vec::new();
    for t in 0..plan.threads {
        let spec = spec.clone();
        let counter = counter.clone();
        let share =
            plan.concurrency / plan.threads + usize::from(t < plan.concurrency % plan.threads);
        joins.push(
            std::thread::Builder::new()
                .name(format!("churn-{t}"))
                .spawn(move || churn_thread(&spec, plan, share.max(1), &counter))?,
        );
    }
    let mut total = ChurnStats {
        ok: 0,
        failed: 0,
        abandoned: 0,
        reasons: BTreeMap::new(),
        first_bytes_us: new_hist(),
        thread_cpu_ns: 0,
        max_thread_cpu_ns: 0,
    };
    for j in joins {
        let s = j
            .join()
            .map_err(|_| io::Error::other("churn thread panicked"))??;
        total.ok += s.ok;
        total.failed += s.failed;
        total.abandoned += s.abandoned;
        for (k, v) in s.reasons {
            *total.reasons.entry(k).or_insert(0) += v;
        }
        let _ = total.first_bytes_us.add(&s.first_bytes_us);
        total.thread_cpu_ns += s.thread_cpu_ns;
        total.max_thread_cpu_ns = total.max_thread_cpu_ns.max(s.thread_cpu_ns);
    }
    Ok(total)
}

fn churn_thread(
    spec: &SubSpec,
    plan: ChurnPlan,
    conc: usize,
    counter: &AtomicU64,
) -> io::Result<ChurnStats> {
    let cpu0 = sys::thread_cpu_ns();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut conns: Slab<Conn> = Slab::with_capacity(conc);
    let mut ctx = Ctx::new();
    let mut s = ChurnStats {
        ok: 0,
        failed: 0,
        abandoned: 0,
        reasons: BTreeMap::new(),
        first_bytes_us: new_hist(),
        thread_cpu_ns: 0,
        max_thread_cpu_ns: 0,
    };
    let hard_stop = plan.deadline + spec.connect_timeout + Duration::from_secs(1);
    let mut exhausted = false;
    let mut last_sweep = Instant::now();
    let fail = |s: &mut ChurnStats, reason: String| {
        s.failed += 1;
        *s.reasons.entry(reason).or_insert(0) += 1;
    };
    loop {
        let now = Instant::now();
        let may_start = now < plan.deadline && !exhausted;
        while may_start && conns.len() < conc {
            let c = counter.fetch_add(1, Ordering::Relaxed);
            if c >= plan.max_cycles {
                exhausted = true;
                break;
            }
            let entry = conns.vacant_entry();
            let token = Token(entry.key());
            match Conn::open(spec, c % plan.index_modulo.max(1), poll.registry(), token) {
                Ok(conn) => {
                    entry.insert(conn);
                }
                Err(e) => {
                    fail(&mut s, format!("connect: {e}"));
                    // Likely out of ports or descriptors: do not spin.
                    std::thread::sleep(Duration::from_millis(1));
                    break;
                }
            }
        }
        if conns.is_empty() && (now >= plan.deadline || exhausted) {
            break;
        }
        if now >= hard_stop {
            s.abandoned += conns.len() as u64;
            break;
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(10))) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
        for ev in events.iter() {
            let key = ev.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let step = conn.drive(poll.registry(), ev.token(), spec, &mut ctx);
            if step.ready {
                let us = conn.opened.elapsed().as_micros() as u64;
                s.first_bytes_us.saturating_record(us);
                s.ok += 1;
                conns.remove(key);
            } else if let Some(reason) = step.end {
                fail(&mut s, reason);
                conns.remove(key);
            }
        }
        if last_sweep.elapsed() >= Duration::from_millis(100) {
            last_sweep = Instant::now();
            let limit = spec.connect_timeout;
            let late: Vec<usize> = conns
                .iter()
                .filter(|(_, c)| c.opened.elapsed() > limit)
                .map(|(k, _)| k)
                .collect();
            for k in late {
                conns.remove(k);
                fail(&mut s, "timeout before the first body bytes".into());
            }
        }
    }
    s.thread_cpu_ns = sys::thread_cpu_ns().saturating_sub(cpu0);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(seq: u64) -> payload::Stamp {
        payload::Stamp { send_ns: 0, seq }
    }

    fn phase(first: u64, users: u64) -> Phase {
        Phase {
            active: true,
            first,
            users,
            end: None,
        }
    }

    /// Loss of one connection at the end of a phase ending at `end`.
    fn lost(ph: &Phase, index: u64, end: u64, holes: &[u64], t: &Track) -> i64 {
        ph.expect(index, end, holes).count as i64 - t.distinct as i64
    }

    #[test]
    fn fanout_tracking_counts_gaps_dups_reorders() {
        let ph = phase(10, 0);
        let mut s = PhaseStats::default();
        let mut t = Track::begin(ph.below(0, 10));
        for seq in [10, 11, 13, 12, 12, 14, 5, 20] {
            on_stamp(&mut t, 0, stamp(seq), &ph, &mut s, 1000);
        }
        // 10 11 13 12 (late: reordered) 12 (dup) 14, 5 (stale), 20 (gap 15..19)
        assert_eq!(s.delivered, 6);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.stale, 1);
        assert_eq!(s.latency_us.len(), 6);
        assert_eq!(lost(&ph, 0, 21, &[], &t), 5);
        // Tail: end 25 → 21..24 missing too.
        assert_eq!(lost(&ph, 0, 25, &[], &t), 9);
        // 15 and 16 were never used by a publisher: not lost.
        assert_eq!(lost(&ph, 0, 25, &[15, 16], &t), 7);
    }

    #[test]
    fn targeted_tracking_by_residue() {
        // 4 users; connection 6 is user 2: expects 2, 6, 10, 14 ...
        let ph = phase(5, 4);
        let mut s = PhaseStats::default();
        let mut t = Track::begin(ph.below(6, 5));
        assert_eq!(t.top, 1); // first expected is seq 6 (class index 1)
        for seq in [6, 7, 14, 10] {
            on_stamp(&mut t, 6, stamp(seq), &ph, &mut s, 0);
        }
        assert_eq!(s.unexpected, 1);
        assert_eq!(s.delivered, 3);
        assert_eq!(s.reordered, 1);
        assert_eq!(lost(&ph, 6, 15, &[], &t), 0);
        // Published 5..20: expects 6, 10, 14, 18 → 4 in all; tail 18 missing.
        assert_eq!(ph.expect(6, 20, &[]).count, 4);
        assert_eq!(lost(&ph, 6, 20, &[], &t), 1);
    }

    #[test]
    fn concurrent_publishers_reorder_without_loss() {
        // Events 0..3000 arrive in blocks of 16 published concurrently, each
        // block in a scrambled order, every 100th one twice.
        let ph = phase(0, 0);
        let mut s = PhaseStats::default();
        let mut t = Track::begin(0);
        for block in 0..3000 / 16 + 1 {
            let base = block * 16;
            for j in [5u64, 0, 15, 3, 1, 2, 4, 9, 8, 7, 6, 10, 14, 13, 12, 11] {
                let seq = base + j;
                if seq < 3000 {
                    on_stamp(&mut t, 0, stamp(seq), &ph, &mut s, 0);
                    if seq % 100 == 0 {
                        on_stamp(&mut t, 0, stamp(seq), &ph, &mut s, 0);
                    }
                }
            }
        }
        assert_eq!(s.delivered, 3000);
        assert_eq!(s.duplicates, 30);
        assert!(s.reordered > 0);
        assert_eq!(s.unclassified, 0);
        assert_eq!(lost(&ph, 0, 3000, &[], &t), 0);
        assert!(t.top >= ph.expect(0, 3000, &[]).last_top);
    }

    #[test]
    fn far_gap_and_very_late_arrivals() {
        let ph = phase(0, 0);
        let mut s = PhaseStats::default();
        let mut t = Track::begin(0);
        for seq in [0, 100, 50, 1, 5000, 2, 1] {
            on_stamp(&mut t, 0, stamp(seq), &ph, &mut s, 0);
        }
        // 50 and 1 inside the window, 2 after sliding out: reordered; 1 again: a duplicate.
        assert_eq!(s.delivered, 6);
        assert_eq!(s.reordered, 3);
        assert_eq!(s.duplicates, 1);
        assert_eq!(lost(&ph, 0, 5001, &[], &t), 5001 - 6);
    }

    #[test]
    fn connection_state_is_small() {
        // Everything a stream keeps between reads (buffers are empty Vecs until used).
        let size = std::mem::size_of::<Conn>();
        eprintln!("Conn: {size} bytes");
        assert!(size <= 256, "Conn is {size} bytes");
    }

    #[test]
    fn request_has_accept_header() {
        let spec = SubSpec {
            addr: "127.0.0.1:1".parse().unwrap(),
            host: "127.0.0.1:1".into(),
            path: Template::new("/sub/{i}"),
            headers: vec![("X-A".into(), "b".into())],
            sources: vec![Ipv4Addr::LOCALHOST],
            connect_timeout: Duration::from_secs(1),
            tls: false,
        };
        let mut out = Vec::new();
        spec.request(42, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /sub/42 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nX-A: b\r\n\r\n"
        );
    }
}
