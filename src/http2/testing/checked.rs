//! A connection driven in memory, every step checked: the protocol core with
//! a [`MemoryHost`], fed by a client whose view of the connection (the windows
//! it gave, the streams it opened, what herald wrote) is kept beside it, and
//! the invariants asserted after each step (a panic says which broke). The
//! property tests (`tests/h2_properties.rs`) drive it with generated frames,
//! the fuzz target (`fuzz/fuzz_targets/h2_frames.rs`) with any bytes
//! ([`run_frames`]), and `tests/fuzz_corpus.rs` replays the fuzz corpus
//! through it on stable.

use std::collections::{HashMap, HashSet};

use http::HeaderMap;

use super::{frames, Events, MemoryHost};
use crate::conn::CloseReason;
use crate::http2::frame::*;
use crate::http2::host::Answer;
use crate::http2::limits::{Limits, MAX_STREAMS};
use crate::http2::proto::Proto;

/// What the client knows of herald's sending side, from the frames herald
/// consumed: the windows it gave and the frame size it accepts.
struct ClientView {
    preface: bool,
    conn_window: i64,
    initial: i64,
    windows: HashMap<u32, i64>,
    max_frame: usize,
    max_frame_ever: usize,
    /// The highest stream id the client opened (HEADERS consumed).
    max_opened: u32,
    /// DATA payload bytes herald consumed.
    data_in: u64,
}

/// What herald wrote, as the client read it.
#[derive(Default)]
struct WireView {
    /// Connection window given back (WINDOW_UPDATEs on stream 0).
    given: u64,
    goaway_error: bool,
    /// Streams herald ended (END_STREAM) or reset.
    ended: HashSet<u32>,
}

/// A connection and its client, checked after every step.
pub struct CheckedConn {
    pub limits: Limits,
    pub proto: Proto,
    pub host: MemoryHost,
    /// The connection's clock.
    pub now: u64,
    /// What herald left of the input (part of a frame), as `conn` keeps it.
    pending: Vec<u8>,
    client: ClientView,
    wire: WireView,
    /// SSE streams opened by [`CheckedConn::answer_later_events`].
    own_events: usize,
}

impl CheckedConn {
    /// A connection at `now` (nanoseconds) whose shard may hold
    /// `body_budget` body bytes.
    pub fn new(limits: Limits, body_budget: usize, now: u64) -> CheckedConn {
        let c = CheckedConn {
            limits,
            proto: Proto::new(limits, now),
            host: MemoryHost {
                body_budget,
                ..MemoryHost::default()
            },
            now,
            pending: Vec::new(),
            client: ClientView {
                preface: false,
                conn_window: DEFAULT_WINDOW,
                initial: DEFAULT_WINDOW,
                windows: HashMap::new(),
                max_frame: DEFAULT_MAX_FRAME,
                max_frame_ever: DEFAULT_MAX_FRAME,
                max_opened: 0,
                data_in: 0,
            },
            wire: WireView::default(),
            own_events: 0,
        };
        c.check();
        c
    }

    /// `bytes` arrive after what herald left of the last ones; false when
    /// the connection had failed already (and they had no effect).
    pub fn receive(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() && self.pending.is_empty() {
            return true;
        }
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(bytes);
        if self.proto.failed().is_some() {
            let before = self.snapshot();
            self.proto.receive(&mut self.host, &input, self.now);
            assert_eq!(before, self.snapshot(), "input had an effect after failure");
            return false;
        }
        let taken = self.proto.receive(&mut self.host, &input, self.now);
        assert!(taken <= input.len());
        self.consumed(&input[..taken]);
        if self.proto.failed().is_none() {
            // As `conn` keeps it; a failed connection reads no more.
            input.drain(..taken);
            self.pending = input;
        }
        self.check();
        true
    }

    /// What input may change: herald's output, its streams, the host.
    fn snapshot(&self) -> [i64; 8] {
        [
            self.proto.out.len() as i64,
            self.proto.streams() as i64,
            self.host.bodies,
            self.host.dispatched.len() as i64,
            self.host.later.len() as i64,
            self.host.cancelled.len() as i64,
            self.host.events.len() as i64,
            self.host.ended.len() as i64,
        ]
    }

    /// The client's view of the frames herald consumed.
    fn consumed(&mut self, mut bytes: &[u8]) {
        let c = &mut self.client;
        if !c.preface && !bytes.is_empty() {
            assert!(bytes.starts_with(PREFACE), "part of the preface consumed");
            bytes = &bytes[PREFACE.len()..];
            c.preface = true;
        }
        while !bytes.is_empty() {
            assert!(bytes.len() >= HEAD_LEN, "part of a frame consumed");
            let head = Head::parse(bytes);
            let end = HEAD_LEN + head.len;
            assert!(bytes.len() >= end, "part of a frame consumed");
            let payload = &bytes[HEAD_LEN..end];
            bytes = &bytes[end..];
            match head.kind {
                DATA => c.data_in += payload.len() as u64,
                HEADERS if head.stream % 2 == 1 => {
                    c.max_opened = c.max_opened.max(head.stream);
                    c.windows.entry(head.stream).or_insert(c.initial);
                }
                SETTINGS if head.flags & ACK == 0 && head.len % 6 == 0 => {
                    // What herald does with a frame it refuses does not
                    // matter: the connection fails.
                    let mut initial = None;
                    for s in payload.chunks_exact(6) {
                        let id = u16::from_be_bytes([s[0], s[1]]);
                        let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                        match id {
                            SETTINGS_INITIAL_WINDOW_SIZE => initial = Some(i64::from(v)),
                            SETTINGS_MAX_FRAME_SIZE if (1 << 14..1 << 24).contains(&v) => {
                                c.max_frame = v as usize;
                                c.max_frame_ever = c.max_frame_ever.max(c.max_frame);
                            }
                            _ => {}
                        }
                    }
                    if let Some(v) = initial {
                        let delta = v - c.initial;
                        c.initial = v;
                        for w in c.windows.values_mut() {
                            *w += delta;
                        }
                    }
                }
                WINDOW_UPDATE if head.len == 4 => {
                    let inc = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    let inc = i64::from(inc & 0x7fff_ffff);
                    if head.stream == 0 {
                        c.conn_window += inc;
                    } else if let Some(w) = c.windows.get_mut(&head.stream) {
                        *w += inc;
                    }
                }
                _ => {}
            }
        }
    }

    /// A write turn as `conn` does it (control frames, then the streams'
    /// DATA, while there is more); the frames written.
    pub fn produce(&mut self) -> Vec<(Head, Vec<u8>)> {
        let mut written = Vec::new();
        for _ in 0..16 {
            let mut plain = std::mem::take(&mut self.proto.out);
            let produced = self.proto.produce(&mut self.host, &mut plain, self.now);
            written.extend(self.written(&plain));
            if plain.is_empty() || (!produced.more && self.proto.out.is_empty()) {
                break;
            }
        }
        self.check();
        written
    }

    /// What herald wrote, read by the client.
    fn written(&mut self, bytes: &[u8]) -> Vec<(Head, Vec<u8>)> {
        let got = frames(bytes);
        let parsed: usize = got.iter().map(|(h, _)| HEAD_LEN + h.len).sum();
        assert_eq!(parsed, bytes.len(), "herald wrote part of a frame");
        let (w, c) = (&mut self.wire, &mut self.client);
        for (head, payload) in &got {
            assert!(
                !w.goaway_error || head.kind == GOAWAY,
                "{head:?} after GOAWAY with an error"
            );
            assert!(head.len <= c.max_frame_ever, "{head:?} too large");
            let opened = head.stream % 2 == 1 && head.stream <= c.max_opened;
            let code = || u32::from_be_bytes(payload[payload.len() - 4..].try_into().unwrap());
            match head.kind {
                DATA => {
                    assert!(opened, "DATA on an idle stream: {head:?}");
                    assert!(
                        !w.ended.contains(&head.stream),
                        "DATA after the end: {head:?}"
                    );
                    assert!(head.len <= c.max_frame, "{head:?} past the frame size");
                    let window = c
                        .windows
                        .get_mut(&head.stream)
                        .unwrap_or_else(|| panic!("DATA on a stream never opened: {head:?}"));
                    let n = head.len as i64;
                    assert!(
                        n <= (*window).max(0) && n <= c.conn_window.max(0),
                        "DATA {head:?} past the windows: stream {window}, connection {}",
                        c.conn_window
                    );
                    *window -= n;
                    c.conn_window -= n;
                    if head.flags & END_STREAM != 0 {
                        w.ended.insert(head.stream);
                    }
                }
                HEADERS => {
                    assert!(opened, "HEADERS on an idle stream: {head:?}");
                    assert!(
                        !w.ended.contains(&head.stream),
                        "HEADERS after the end: {head:?}"
                    );
                    if head.flags & END_STREAM != 0 {
                        w.ended.insert(head.stream);
                    }
                }
                CONTINUATION => assert!(opened, "CONTINUATION on an idle stream: {head:?}"),
                RST_STREAM => {
                    assert!(opened, "RST_STREAM on an idle stream: {head:?}");
                    assert_eq!(payload.len(), 4);
                    w.ended.insert(head.stream);
                }
                WINDOW_UPDATE => {
                    assert_eq!(head.stream, 0, "herald gives stream windows in SETTINGS");
                    assert_eq!(payload.len(), 4);
                    let inc = code();
                    assert!(inc > 0 && inc <= 0x7fff_ffff, "increment {inc}");
                    w.given += u64::from(inc);
                }
                GOAWAY => {
                    assert_eq!((head.stream, payload.len()), (0, 8));
                    w.goaway_error |= code() != NO_ERROR;
                }
                SETTINGS | PING => assert_eq!(head.stream, 0),
                other => panic!("herald wrote a frame of type {other}"),
            }
        }
        got
    }

    /// The clock moves by `ns`; the timer fires when something is due
    /// (not once the connection failed: `conn` closes it). Whether it fired.
    pub fn advance(&mut self, ns: u64) -> bool {
        self.now += ns;
        if self.proto.failed().is_some()
            || self.proto.next_deadline().is_none_or(|due| due > self.now)
        {
            return false;
        }
        self.proto.on_timer(&mut self.host, self.now);
        if self.proto.failed().is_none() {
            let due = self.proto.next_deadline();
            assert!(
                due.is_none_or(|d| d > self.now),
                "due again at once: {due:?} <= {}",
                self.now
            );
        }
        self.check();
        true
    }

    /// The key of the open SSE stream `which` (modulo their number).
    fn event_key(&self, which: usize) -> Option<u32> {
        let mut keys: Vec<u32> = self.host.events.keys().copied().collect();
        keys.sort_unstable();
        (!keys.is_empty()).then(|| keys[which % keys.len()])
    }

    /// An SSE stream gets `len` bytes.
    pub fn push(&mut self, which: usize, len: usize) {
        if let Some(key) = self.event_key(which) {
            self.host.push(key, &vec![b'd'; len]);
        }
    }

    /// The shard closes an SSE stream.
    pub fn close(&mut self, which: usize, reason: CloseReason) {
        if let Some(key) = self.event_key(which) {
            if let Some(e) = self.host.events.get_mut(&key) {
                e.closing = Some(reason);
            }
        }
    }

    /// A `GET /later` is answered; false when none waits.
    pub fn answer_later(&mut self) -> bool {
        let Some((id, answer)) = self.host.answer_later() else {
            return false;
        };
        self.proto.answer(&mut self.host, id, answer, self.now);
        self.check();
        true
    }

    /// A `GET /later` is answered with an SSE stream; false when none waits.
    pub fn answer_later_events(&mut self) -> bool {
        let Some(id) = self.host.later.pop() else {
            return false;
        };
        let key = 1_000_000 + self.own_events as u32;
        self.own_events += 1;
        let events = Events {
            serial: 1,
            queue: b"data: later\n\n".to_vec(),
            closing: None,
        };
        self.host.events.insert(key, events);
        let answer = Answer::Events {
            headers: HeaderMap::new(),
            key,
            serial: 1,
        };
        self.proto.answer(&mut self.host, id, answer, self.now);
        self.check();
        true
    }

    /// The pod drains: GOAWAY(NO_ERROR).
    pub fn go_away(&mut self) {
        self.proto.go_away();
        self.check();
    }

    /// What the client may still send on stream `id` and on the connection
    /// (its view of herald's windows: `None` for a stream it never opened).
    pub fn windows(&self, id: u32) -> (Option<i64>, i64) {
        (
            self.client.windows.get(&id).copied(),
            self.client.conn_window,
        )
    }

    /// The invariants that hold after every step.
    pub fn check(&self) {
        assert!(
            self.proto.streams() <= MAX_STREAMS as usize,
            "too many streams"
        );
        let bodies = self.host.bodies;
        assert!(bodies >= 0);
        assert!(
            bodies as u64 <= u64::from(self.limits.conn_window),
            "{bodies} body bytes held: past the connection window"
        );
        assert_eq!(bodies as usize, self.proto.held_bytes(), "body bytes held");
        let (counted, recomputed) = self.proto.answers_accounted();
        assert_eq!(counted, recomputed, "answers' bytes");
        // Window given back but not written yet counts as given.
        let out = frames(&self.proto.out);
        let parsed: usize = out.iter().map(|(h, _)| HEAD_LEN + h.len).sum();
        assert_eq!(
            parsed,
            self.proto.out.len(),
            "herald queued part of a frame"
        );
        let queued: u64 = out
            .iter()
            .filter(|(h, p)| h.kind == WINDOW_UPDATE && h.stream == 0 && p.len() == 4)
            .map(|(_, p)| u64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]])))
            .sum();
        let given = DEFAULT_WINDOW as u64 + self.wire.given + queued;
        let remaining = given as i64 - self.client.data_in as i64;
        assert!(
            remaining + bodies <= i64::from(self.limits.conn_window),
            "the client may send {remaining} with {bodies} held: past the window {}",
            self.limits.conn_window
        );
    }

    /// The connection goes ([`Proto::end_all`]): every SSE stream opened
    /// was ended once, no route waits, no body byte is held.
    pub fn end(&mut self) {
        self.proto.end_all(&mut self.host);
        self.check();
        assert_eq!(self.proto.streams(), 0);
        assert_eq!(self.host.bodies, 0);
        assert_eq!(self.proto.answers_accounted(), (0, 0));
        assert!(self.host.later.is_empty(), "routes still waiting");
        assert!(
            self.host.events.is_empty(),
            "SSE streams never ended: {:?}",
            self.host.events.keys()
        );
        let opened = self
            .host
            .dispatched
            .iter()
            .filter(|(_, path, _)| path == "/events")
            .count()
            + self.own_events;
        let keys: HashSet<u32> = self.host.ended.iter().map(|e| e.0).collect();
        assert_eq!(self.host.ended.len(), opened, "SSE streams ended");
        assert_eq!(keys.len(), opened, "SSE streams ended once each");
    }
}

/// What the fuzz target does with its input: `data` after the client's
/// preface, fed in chunks with the clock moving, write turns, SSE events and
/// later answers between them (their schedule drawn from the input's hash),
/// then the connection's end; every step checked. The connection, ended.
pub fn run_frames(limits: Limits, data: &[u8]) -> CheckedConn {
    // FNV-1a, then xorshift: the same input, the same schedule.
    let mut seed = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(data);
    let mut c = CheckedConn::new(limits, 16 << 20, 1_000_000_000);
    let mut at = 0;
    while at < input.len() {
        let r = next();
        // Chunks of 1 byte to 16 KB, most of them small.
        let n = 1 + (r as usize % (1 << (r >> 60)));
        let end = (at + n).min(input.len());
        c.receive(&input[at..end]);
        at = end;
        match (r >> 8) % 16 {
            0..=5 => {
                c.produce();
            }
            6 => {
                c.push((r >> 16) as usize, (r >> 32) as usize % 2000);
            }
            7 => {
                c.answer_later();
            }
            8 => {
                c.answer_later_events();
            }
            9 => {
                let reason = CloseReason::ALL[(r >> 16) as usize % CloseReason::ALL.len()];
                c.close((r >> 24) as usize, reason);
            }
            10 => {
                // Past a deadline, sometimes.
                c.advance((r >> 16) % 40_000_000_000);
            }
            _ => {
                c.advance((r >> 16) % 50_000_000);
            }
        }
    }
    c.produce();
    c.advance(100_000_000_000);
    c.produce();
    c.end();
    c
}
