//! Properties of the HTTP/2 protocol core (`herald::http2::proto`), driven in
//! memory by `MemoryHost`: whatever frames a client sends — plausible ones
//! with random flags, ids, lengths, padding and HPACK blocks, or their bytes
//! mutated — fed in random chunks with a clock of random steps, interleaved
//! with write turns, SSE events and answers that come later, herald keeps its
//! budgets and windows and writes only what the protocol allows. After every
//! step `CheckedConn` (`herald::http2::testing::checked`) asserts:
//!
//! - nothing panics (nor `MemoryHost`'s own asserts);
//! - at most `MAX_STREAMS` streams are open;
//! - the body bytes the host was told are held are what the streams hold, no
//!   more than the connection window, and the answers' count adds up;
//! - the client's connection window plus the bytes held never exceed the
//!   window herald gave (no window is given back twice);
//! - herald's DATA stays within the windows the client gave (its SETTINGS and
//!   WINDOW_UPDATEs, as herald consumed them) and its frame size;
//! - what herald writes parses; no RST_STREAM names an idle stream; nothing
//!   follows a GOAWAY with an error code but GOAWAY; nothing is sent on a
//!   stream after herald's RST_STREAM or END_STREAM;
//! - a timer that fired is not due again at once;
//! - once the connection failed, input has no effect;
//! - after `end_all`, every SSE stream opened was ended once, no route waits
//!   and no body byte is held.
//!
//! Cases: 512 per property (`PROPTEST_CASES` sets another number); the
//! generators are checked to reach what the properties are about
//! (`the_generators_reach_what_the_properties_check`).

use std::cell::RefCell;
use std::collections::BTreeMap;

use herald::config::Config;
use herald::conn::CloseReason;
use herald::http2::frame::*;
use herald::http2::limits::{Limits, ANSWER_BUDGET, MAX_STREAMS, ROUTE_COST};
use herald::http2::testing::checked::CheckedConn;
use herald::http2::testing::*;
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestCaseError, TestRng, TestRunner};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------
// What a client sends.

/// A stream id, relative to those the client opened so far.
#[derive(Debug, Clone)]
enum Id {
    Zero,
    /// The next new id (skipping `skip` odd ids).
    New(u8),
    /// The k-th most recently opened.
    Live(u8),
    Even(u8),
    /// An odd id below the highest opened one (opened or skipped).
    Lower,
    /// Above the highest opened one.
    Idle(u8),
    Raw(u32),
}

#[derive(Debug, Clone)]
enum Break {
    Truncate(u8),
    /// An index past the static table and an empty dynamic one.
    BadIndex,
    /// A reference to the dynamic table (empty).
    Dynamic,
    /// A table size update past the limit, after a field.
    SizeUpdate,
    /// A Huffman-coded literal of junk.
    Huffman,
    /// A literal longer than what follows.
    Overrun,
}

#[derive(Debug, Clone)]
enum Fields {
    Request {
        method: &'static str,
        path: String,
        extra: Vec<(&'static str, &'static str)>,
    },
    /// No pseudo-header: trailers (or a malformed request).
    Trailers(Vec<(&'static str, &'static str)>),
}

#[derive(Debug, Clone)]
struct Block {
    fields: Fields,
    /// A Dynamic Table Size Update to 0 first.
    size_update: bool,
    broken: Option<Break>,
}

#[derive(Debug, Clone)]
enum Body {
    Headers {
        block: Block,
        end_stream: bool,
        end_headers: bool,
        /// Where the block continues in CONTINUATION frames.
        splits: Vec<u16>,
        /// PRIORITY fields: on itself, or another stream.
        priority: Option<bool>,
        pad: Option<u8>,
    },
    Data {
        len: usize,
        end_stream: bool,
        /// Padding, and whether it is longer than the frame.
        pad: Option<(u8, bool)>,
    },
    Priority {
        self_dep: bool,
        len: usize,
    },
    Rst {
        code: u32,
        len: usize,
    },
    Settings {
        ack: bool,
        entries: Vec<(u16, u32)>,
        junk: usize,
    },
    Ping {
        ack: bool,
        len: usize,
    },
    GoAway {
        code: u32,
        len: usize,
    },
    WindowUpdate {
        inc: u32,
        len: usize,
    },
    Continuation {
        len: usize,
        end: bool,
    },
    PushPromise,
    Unknown {
        kind: u8,
        len: usize,
    },
}

#[derive(Debug, Clone)]
enum Spec {
    Frame {
        id: Id,
        body: Body,
        /// Flags flipped (0 mostly).
        flip: u8,
    },
    /// The same small frame many times (a flood, or a burst under its limit).
    Flood { body: Body, id: Id, times: u16 },
    /// Streams opened and reset at once (rapid reset).
    RapidReset { times: u16 },
    /// Many requests at once (up to the stream limit and the answer
    /// budget), then one more (held when the budget is spent), then the
    /// first one reset (which makes room), or not.
    Burst {
        path: &'static str,
        times: u16,
        one_more: bool,
        reset_first: bool,
    },
    /// A request with a body, whole: HEADERS (with its `content-length` or
    /// not), DATA, and its end.
    Upload {
        path: &'static str,
        content_length: bool,
        chunks: Vec<usize>,
        end: UploadEnd,
    },
}

/// How an upload ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadEnd {
    /// END_STREAM on its last DATA frame.
    Data,
    Trailers,
    /// It does not (the body's deadline answers it).
    Never,
}

fn id_new() -> impl Strategy<Value = Id> {
    prop_oneof![
        170 => Just(Id::New(0)),
        8 => (1u8..4).prop_map(Id::New),
        6 => (0u8..3).prop_map(Id::Live),
        1 => Just(Id::Lower),
        1 => Just(Id::Zero),
        1 => (0u8..4).prop_map(Id::Even),
        1 => (1u8..4).prop_map(Id::Idle),
        1 => any::<u32>().prop_map(Id::Raw),
    ]
}

fn id_live() -> impl Strategy<Value = Id> {
    prop_oneof![
        120 => Just(Id::Live(0)),
        80 => (1u8..4).prop_map(Id::Live),
        // Any stream opened so far.
        20 => any::<u8>().prop_map(Id::Live),
        1 => Just(Id::Zero),
        1 => (0u8..4).prop_map(Id::Even),
        4 => Just(Id::Lower),
        1 => (0u8..4).prop_map(Id::Idle),
        1 => any::<u32>().prop_map(Id::Raw),
    ]
}

/// A length: right mostly, wrong sometimes.
fn len(right: usize) -> impl Strategy<Value = usize> {
    prop_oneof![40 => Just(right), 1 => 0usize..16]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => Just("/publish".to_string()),
        2 => Just("/refuse".to_string()),
        8 => Just("/events".to_string()),
        6 => Just("/later".to_string()),
        4 => Just("/x".to_string()),
        2 => Just("/publish?x=1".to_string()),
        1 => Just(String::new()),
        1 => Just("*".to_string()),
        1 => Just("relative".to_string()),
        // Past the header list (431), or past the header block (a flood).
        1 => prop_oneof![4 => Just(17_000usize), 1 => Just(33_000)].prop_map(|n| format!("/{}", "a".repeat(n))),
    ]
}

fn method() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        10 => Just("GET"),
        8 => Just("POST"),
        1 => Just("HEAD"),
        1 => Just("PUT"),
        1 => Just("CONNECT"),
        1 => Just(""),
    ]
}

fn field() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop_oneof![
        4 => prop_oneof![
            Just("0"), Just("5"), Just("10"), Just("100"), Just("65536"),
            Just("100000"), Just("abc"), Just("-1")
        ]
        .prop_map(|v| ("content-length", v)),
        1 => Just(("te", "trailers")),
        1 => Just(("te", "gzip")),
        1 => Just(("connection", "close")),
        2 => Just(("x-a", "b")),
        1 => Just(("X-Up", "x")),
        1 => Just((":path", "/dup")),
        1 => Just((":status", "200")),
        1 => Just(("host", "h")),
        1 => Just(("cookie", "a=b")),
    ]
}

fn block() -> impl Strategy<Value = Block> {
    let fields = prop_oneof![
        9 => (method(), path(), prop_oneof![2 => Just(vec![]), 1 => prop::collection::vec(field(), 1..3)])
            .prop_map(|(method, path, extra)| Fields::Request { method, path, extra }),
        1 => prop::collection::vec(field(), 0..3).prop_map(Fields::Trailers),
    ];
    let broken = prop_oneof![
        80 => Just(None),
        1 => prop_oneof![
            any::<u8>().prop_map(Break::Truncate),
            Just(Break::BadIndex),
            Just(Break::Dynamic),
            Just(Break::SizeUpdate),
            Just(Break::Huffman),
            Just(Break::Overrun),
        ]
        .prop_map(Some),
    ];
    (fields, prop::bool::weighted(0.1), broken).prop_map(|(fields, size_update, broken)| Block {
        fields,
        size_update,
        broken,
    })
}

fn headers() -> impl Strategy<Value = Body> {
    (
        block(),
        prop::bool::weighted(0.6),
        prop::bool::weighted(0.99),
        prop_oneof![8 => Just(vec![]), 2 => prop::collection::vec(any::<u16>(), 1..4)],
        prop_oneof![10 => Just(None), 1 => any::<bool>().prop_map(Some)],
        prop_oneof![10 => Just(None), 1 => any::<u8>().prop_map(Some)],
    )
        .prop_map(
            |(block, end_stream, end_headers, splits, priority, pad)| Body::Headers {
                block,
                end_stream,
                end_headers,
                splits,
                priority,
                pad,
            },
        )
}

fn data_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        60 => 0usize..64,
        30 => 64usize..4096,
        20 => 4096usize..=16_384,
        10 => Just(16_384usize),
        // Past the frame size herald accepts.
        1 => 16_385usize..16_400,
    ]
}

fn setting() -> impl Strategy<Value = (u16, u32)> {
    let window = prop_oneof![
        3 => Just(0u32),
        4 => 1u32..100,
        2 => Just(65_535u32),
        2 => Just(1 << 20),
        1 => Just((1 << 31) - 1),
        1 => Just(1 << 31),
    ];
    let frame_size = prop_oneof![
        4 => Just(16_384u32),
        2 => Just(20_000),
        1 => Just((1 << 24) - 1),
        1 => Just(1 << 24),
    ];
    prop_oneof![
        2 => prop_oneof![Just(0u32), Just(4096), any::<u32>()]
            .prop_map(|v| (SETTINGS_HEADER_TABLE_SIZE, v)),
        1 => (0u32..2).prop_map(|v| (SETTINGS_ENABLE_PUSH, v)),
        1 => any::<u32>().prop_map(|v| (SETTINGS_MAX_CONCURRENT_STREAMS, v)),
        6 => window.prop_map(|v| (SETTINGS_INITIAL_WINDOW_SIZE, v)),
        2 => frame_size.prop_map(|v| (SETTINGS_MAX_FRAME_SIZE, v)),
        1 => any::<u32>().prop_map(|v| (SETTINGS_MAX_HEADER_LIST_SIZE, v)),
        1 => (0u32..2).prop_map(|v| (SETTINGS_ENABLE_CONNECT_PROTOCOL, v)),
        1 => (0u32..2).prop_map(|v| (SETTINGS_NO_RFC7540_PRIORITIES, v)),
        1 => (10u16.., any::<u32>()),
        // Anything, valid or not.
        1 => (any::<u16>(), any::<u32>()),
    ]
}

fn window_increment() -> impl Strategy<Value = u32> {
    prop_oneof![
        1 => Just(0u32),
        10 => 1u32..100,
        10 => 100u32..70_000,
        2 => Just(1 << 20),
        1 => Just((1 << 31) - 1),
        1 => Just(1 << 31),
        1 => any::<u32>(),
    ]
}

fn code() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(NO_ERROR),
        Just(CANCEL),
        Just(PROTOCOL_ERROR),
        any::<u32>()
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        100 => headers(),
        80 => (
            data_len(),
            prop::bool::weighted(0.4),
            prop_oneof![10 => Just(None), 1 => (any::<u8>(), prop::bool::weighted(0.2)).prop_map(Some)],
        )
            .prop_map(|(len, end_stream, pad)| Body::Data { len, end_stream, pad }),
        56 => (window_increment(), len(4)).prop_map(|(inc, len)| Body::WindowUpdate { inc, len }),
        24 => (
            prop::bool::weighted(0.2),
            prop_oneof![40 => prop::collection::vec(setting(), 0..4), 1 => prop::collection::vec(setting(), 30..40)],
            prop_oneof![40 => Just(0usize), 1 => 1usize..6],
        )
            .prop_map(|(ack, entries, junk)| Body::Settings { ack, entries, junk }),
        32 => (code(), len(4)).prop_map(|(code, len)| Body::Rst { code, len }),
        20 => (prop::bool::weighted(0.2), len(8)).prop_map(|(ack, len)| Body::Ping { ack, len }),
        20 => (prop::bool::weighted(0.1), len(5)).prop_map(|(self_dep, len)| Body::Priority { self_dep, len }),
        2 => (0usize..40, any::<bool>()).prop_map(|(len, end)| Body::Continuation { len, end }),
        3 => (code(), len(8)).prop_map(|(code, len)| Body::GoAway { code, len }),
        1 => Just(Body::PushPromise),
        16 => (10u8..=255, 0usize..32).prop_map(|(kind, len)| Body::Unknown { kind, len }),
    ]
}

/// Bodies small enough to flood with.
fn small_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        Just(Body::Ping { ack: false, len: 8 }),
        Just(Body::Ping { ack: true, len: 8 }),
        Just(Body::Settings {
            ack: false,
            entries: vec![],
            junk: 0
        }),
        Just(Body::Rst {
            code: CANCEL,
            len: 4
        }),
        Just(Body::Priority {
            self_dep: false,
            len: 5
        }),
        Just(Body::Unknown { kind: 0x20, len: 0 }),
        Just(Body::Data {
            len: 0,
            end_stream: false,
            pad: None
        }),
        Just(Body::WindowUpdate { inc: 1, len: 4 }),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let flip = prop_oneof![200 => Just(0u8), 1 => any::<u8>()];
    prop_oneof![
        100 => body().prop_flat_map(move |body| {
            let id = match body {
                Body::Headers { .. } => id_new().boxed(),
                Body::Settings { .. } | Body::Ping { .. } | Body::GoAway { .. } => {
                    prop_oneof![100 => Just(Id::Zero), 1 => id_live()].boxed()
                }
                Body::WindowUpdate { .. } => prop_oneof![1 => Just(Id::Zero), 2 => id_live()].boxed(),
                _ => id_live().boxed(),
            };
            (Just(body), id, flip.clone()).prop_map(|(body, id, flip)| Spec::Frame { id, body, flip })
        }),
        1 => (small_body(), id_live(), 50u16..1_100).prop_map(|(body, id, times)| Spec::Flood { body, id, times }),
        1 => (50u16..500).prop_map(|times| Spec::RapidReset { times }),
        2 => (
            prop_oneof![Just("/events"), Just("/later"), Just("/x")],
            // Around the answer budget's 64 routes, or past the stream limit.
            prop_oneof![60u16..70, 100u16..200],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(path, times, one_more, reset_first)| Spec::Burst { path, times, one_more, reset_first }),
        10 => (
            prop_oneof![6 => Just("/publish"), 1 => Just("/refuse"), 1 => Just("/x")],
            any::<bool>(),
            prop::collection::vec(prop_oneof![4 => 0usize..2000, 1 => 2000usize..=16_384], 0..5),
            prop_oneof![10 => Just(UploadEnd::Data), 2 => Just(UploadEnd::Trailers), 1 => Just(UploadEnd::Never)],
        )
            .prop_map(|(path, content_length, chunks, end)| Spec::Upload { path, content_length, chunks, end }),
    ]
}

// ---------------------------------------------------------------------------
// Encoding, as a client would (or would not).

/// Literal fields without indexing, no Huffman coding (RFC 7541 §6.2.2).
fn literals(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        for s in [name.as_bytes(), value.as_bytes()] {
            assert!(s.len() < 127);
            out.push(s.len() as u8);
            out.extend_from_slice(s);
        }
    }
    out
}

fn encode_block(b: &Block) -> Vec<u8> {
    let mut out = Vec::new();
    if b.size_update {
        out.push(0x20);
    }
    match &b.fields {
        Fields::Request {
            method,
            path,
            extra,
        } => out.extend(request_block(method, path, extra)),
        Fields::Trailers(fields) => out.extend(literals(fields)),
    }
    match b.broken {
        None => {}
        Some(Break::Truncate(at)) => out.truncate(out.len() * usize::from(at) / 256),
        Some(Break::BadIndex) => out.extend([0xff, 0x00]),
        Some(Break::Dynamic) => out.push(0xbe),
        Some(Break::SizeUpdate) => out.extend([0x3f, 0xe1, 0x7f]),
        Some(Break::Huffman) => out.extend([0x00, 0x83, 0xff, 0xff, 0xff, 0x01, b'x']),
        Some(Break::Overrun) => out.extend([0x00, 0x7f, 0xff, 0x7f, b'a']),
    }
    out
}

/// The client's ids so far.
#[derive(Default)]
struct Encoder {
    next: u32,
    opened: Vec<u32>,
    /// Where each frame starts (for mutations).
    starts: Vec<usize>,
}

impl Encoder {
    fn id(&mut self, id: &Id) -> u32 {
        let max = self.opened.last().copied().unwrap_or(0);
        match *id {
            Id::Zero => 0,
            Id::New(skip) => {
                let id = self.next.max(1) + 2 * u32::from(skip);
                self.next = id + 2;
                self.opened.push(id);
                id
            }
            Id::Live(k) => match self.opened.len() {
                0 => 1,
                n => self.opened[n - 1 - usize::from(k) % n],
            },
            Id::Even(k) => 2 * (u32::from(k) + 1),
            Id::Lower => (1..max)
                .step_by(2)
                .find(|i| !self.opened.contains(i))
                .unwrap_or(1),
            Id::Idle(k) => self.next.max(1) + 2 * u32::from(k),
            Id::Raw(v) => v,
        }
    }

    fn put(&mut self, out: &mut Vec<u8>, kind: u8, flags: u8, id: u32, payload: &[u8]) {
        self.starts.push(out.len());
        out.extend(frame(kind, flags, id, payload));
    }

    fn spec(&mut self, out: &mut Vec<u8>, spec: &Spec) {
        match spec {
            Spec::Frame { id, body, flip } => {
                if matches!(id, Id::Live(_)) && self.opened.is_empty() {
                    // A client uses the streams it opened.
                    let id = self.id(&Id::New(0));
                    let block = request_block("GET", "/events", &[]);
                    self.put(out, HEADERS, END_HEADERS | END_STREAM, id, &block);
                }
                let id = self.id(id);
                self.body(out, id, body, *flip);
            }
            Spec::Flood { body, id, times } => {
                let id = self.id(id);
                for _ in 0..*times {
                    self.body(out, id, body, 0);
                }
            }
            Spec::RapidReset { times } => {
                let block = request_block("GET", "/events", &[]);
                for _ in 0..*times {
                    let id = self.id(&Id::New(0));
                    self.put(out, HEADERS, END_HEADERS | END_STREAM, id, &block);
                    self.put(out, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
                }
            }
            Spec::Upload {
                path,
                content_length,
                chunks,
                end,
            } => {
                let total = chunks.iter().sum::<usize>().to_string();
                let mut fields = vec![];
                if *content_length {
                    fields.push(("content-length", total.as_str()));
                }
                let id = self.id(&Id::New(0));
                let block = request_block("POST", path, &fields);
                self.put(out, HEADERS, END_HEADERS, id, &block);
                for (k, len) in chunks.iter().enumerate() {
                    let last = k + 1 == chunks.len() && *end == UploadEnd::Data;
                    let flags = if last { END_STREAM } else { 0 };
                    self.put(out, DATA, flags, id, &vec![b'b'; *len]);
                }
                match end {
                    UploadEnd::Data if chunks.is_empty() => {
                        self.put(out, DATA, END_STREAM, id, &[]);
                    }
                    UploadEnd::Trailers => {
                        let trailers = literals(&[("x-checksum", "1")]);
                        self.put(out, HEADERS, END_HEADERS | END_STREAM, id, &trailers);
                    }
                    UploadEnd::Data | UploadEnd::Never => {}
                }
            }
            Spec::Burst {
                path,
                times,
                one_more,
                reset_first,
            } => {
                let block = request_block("GET", path, &[]);
                let mut first = None;
                for _ in 0..*times {
                    let id = self.id(&Id::New(0));
                    first = first.or(Some(id));
                    self.put(out, HEADERS, END_HEADERS | END_STREAM, id, &block);
                }
                if *one_more {
                    let id = self.id(&Id::New(0));
                    let block = request_block("GET", "/x", &[]);
                    self.put(out, HEADERS, END_HEADERS | END_STREAM, id, &block);
                }
                if let (true, Some(id)) = (*reset_first, first) {
                    self.put(out, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
                }
            }
        }
    }

    fn body(&mut self, out: &mut Vec<u8>, id: u32, body: &Body, flip: u8) {
        let sized = |bytes: &[u8], len: usize| -> Vec<u8> {
            let mut v = bytes.to_vec();
            v.resize(len, 0);
            v
        };
        match body {
            Body::Headers {
                block,
                end_stream,
                end_headers,
                splits,
                priority,
                pad,
            } => {
                let block = encode_block(block);
                let mut first = Vec::new();
                let mut flags = if *end_stream { END_STREAM } else { 0 };
                if let Some(pad) = pad {
                    flags |= PADDED;
                    first.push(*pad);
                }
                if let Some(self_dep) = priority {
                    flags |= PRIORITY_FLAG;
                    let dep = if *self_dep { id } else { id.saturating_sub(2) };
                    first.extend(dep.to_be_bytes());
                    first.push(16);
                }
                // Cut points: the generator's, and every 16,000 bytes.
                let mut cuts: Vec<usize> = splits
                    .iter()
                    .map(|&s| usize::from(s) % (block.len() + 1))
                    .chain((16_000..block.len()).step_by(16_000))
                    .collect();
                cuts.push(block.len());
                cuts.sort_unstable();
                cuts.dedup();
                let mut pieces = Vec::new();
                let mut at = 0;
                for cut in cuts {
                    pieces.push(&block[at..cut]);
                    at = cut;
                }
                let n = pieces.len();
                for (k, piece) in pieces.into_iter().enumerate() {
                    let last = k + 1 == n;
                    let end = if last && *end_headers { END_HEADERS } else { 0 };
                    if k == 0 {
                        first.extend_from_slice(piece);
                        if let Some(pad) = pad {
                            first.extend(std::iter::repeat_n(0, usize::from(*pad)));
                        }
                        self.put(out, HEADERS, (flags | end) ^ flip, id, &first);
                    } else {
                        self.put(out, CONTINUATION, end, id, piece);
                    }
                }
            }
            Body::Data {
                len,
                end_stream,
                pad,
            } => {
                let mut payload = Vec::new();
                let mut flags = if *end_stream { END_STREAM } else { 0 };
                match pad {
                    None => payload.resize(*len, 0),
                    Some((pad, too_long)) => {
                        flags |= PADDED;
                        let pad = usize::from(*pad);
                        if *too_long {
                            // More padding than the frame holds.
                            payload.push(255);
                            payload.resize(1 + (*len).min(254), 0);
                        } else {
                            let data = (*len).min(DEFAULT_MAX_FRAME - 1 - pad);
                            payload.push(pad as u8);
                            payload.resize(1 + data + pad, 0);
                        }
                    }
                }
                self.put(out, DATA, flags ^ flip, id, &payload);
            }
            Body::Priority { self_dep, len } => {
                let dep = if *self_dep { id } else { id.saturating_sub(2) };
                let mut p = dep.to_be_bytes().to_vec();
                p.push(16);
                self.put(out, PRIORITY, flip, id, &sized(&p, *len));
            }
            Body::Rst { code, len } => {
                self.put(out, RST_STREAM, flip, id, &sized(&code.to_be_bytes(), *len))
            }
            Body::Settings { ack, entries, junk } => {
                let mut p = Vec::new();
                if !ack {
                    for (k, v) in entries {
                        p.extend(k.to_be_bytes());
                        p.extend(v.to_be_bytes());
                    }
                }
                p.extend(std::iter::repeat_n(7, *junk));
                let flags = if *ack { ACK } else { 0 };
                self.put(out, SETTINGS, flags ^ flip, id, &p);
            }
            Body::Ping { ack, len } => {
                let p = sized(b"pingpong", *len);
                let flags = if *ack { ACK } else { 0 };
                self.put(out, PING, flags ^ flip, id, &p);
            }
            Body::GoAway { code, len } => {
                let mut p = self.next.saturating_sub(2).to_be_bytes().to_vec();
                p.extend(code.to_be_bytes());
                self.put(out, GOAWAY, flip, id, &sized(&p, *len));
            }
            Body::WindowUpdate { inc, len } => self.put(
                out,
                WINDOW_UPDATE,
                flip,
                id,
                &sized(&inc.to_be_bytes(), *len),
            ),
            Body::Continuation { len, end } => {
                let p = sized(&request_block("GET", "/x", &[]), *len);
                let flags = if *end { END_HEADERS } else { 0 };
                self.put(out, CONTINUATION, flags ^ flip, id, &p);
            }
            Body::PushPromise => {
                let mut p = id.wrapping_add(1).to_be_bytes().to_vec();
                p.extend(request_block("GET", "/x", &[]));
                self.put(out, PUSH_PROMISE, END_HEADERS ^ flip, id, &p);
            }
            Body::Unknown { kind, len } => self.put(out, *kind, flip, id, &vec![1; *len]),
        }
    }
}

/// The preface and the frames, as bytes; where each frame starts.
fn encode(specs: &[Spec], setup: &Setup) -> (Vec<u8>, Vec<usize>) {
    let mut out = PREFACE.to_vec();
    let mut enc = Encoder::default();
    let settings: Vec<u8> = match setup.window {
        Some(w) => [
            &SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes()[..],
            &w.to_be_bytes(),
        ]
        .concat(),
        None => vec![],
    };
    enc.put(&mut out, SETTINGS, 0, 0, &settings);
    if setup.ack {
        enc.put(&mut out, SETTINGS, ACK, 0, &[]);
    }
    for spec in specs {
        enc.spec(&mut out, spec);
    }
    (out, enc.starts)
}

/// A byte-level change to an encoded sequence.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: At, bit: u8 },
    Set { at: At, byte: u8 },
    Insert { at: At, bytes: Vec<u8> },
    Delete { at: At, len: u8 },
    Truncate { at: At },
}

/// A position: near a frame's start (its header, or the start of its
/// payload), or anywhere.
#[derive(Debug, Clone)]
enum At {
    Frame(u16, u8),
    Anywhere(u32),
}

fn at() -> impl Strategy<Value = At> {
    prop_oneof![
        3 => (any::<u16>(), 0u8..16).prop_map(|(f, o)| At::Frame(f, o)),
        1 => any::<u32>().prop_map(At::Anywhere),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (at(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        3 => (at(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        2 => (at(), prop::collection::vec(any::<u8>(), 1..10)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        2 => (at(), 1u8..32).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => at().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, starts: &[usize], mutations: &[Mutation]) {
    for m in mutations {
        let pos = |at: &At, len: usize| -> usize {
            let p = match *at {
                At::Frame(f, o) => starts[usize::from(f) % starts.len()] + usize::from(o),
                At::Anywhere(a) => a as usize,
            };
            if len == 0 {
                0
            } else {
                p % len
            }
        };
        match m {
            Mutation::Flip { at, bit } => {
                let p = pos(at, bytes.len());
                if let Some(b) = bytes.get_mut(p) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::Set { at, byte } => {
                let p = pos(at, bytes.len());
                if let Some(b) = bytes.get_mut(p) {
                    *b = *byte;
                }
            }
            Mutation::Insert { at, bytes: new } => {
                let p = pos(at, bytes.len() + 1);
                bytes.splice(p..p, new.iter().copied());
            }
            Mutation::Delete { at, len } => {
                let p = pos(at, bytes.len());
                let end = (p + usize::from(*len)).min(bytes.len());
                bytes.drain(p..end);
            }
            Mutation::Truncate { at } => {
                let p = pos(at, bytes.len());
                bytes.truncate(p);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// What happens around the connection.

#[derive(Debug, Clone)]
enum Op {
    /// The next bytes of input arrive.
    Feed(usize),
    /// A write turn.
    Produce,
    /// The clock moves.
    Advance(u64),
    /// An SSE stream gets an event.
    Push { which: u8, len: u16 },
    /// The shard closes an SSE stream.
    Close { which: u8, reason: u8 },
    /// A `GET /later` is answered.
    AnswerLater,
    /// A `GET /later` is answered with an SSE stream.
    AnswerLaterEvents,
    /// The pod drains: GOAWAY(NO_ERROR).
    GoAway,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        40 => prop_oneof![
            3 => 1usize..16,
            7 => 16usize..512,
            7 => 512usize..20_000,
            3 => Just(usize::MAX),
        ]
        .prop_map(Op::Feed),
        25 => Just(Op::Produce),
        12 => prop_oneof![
            35 => 0..50 * MS,
            10 => 50 * MS..2 * SEC,
            4 => 5 * SEC..35 * SEC,
            1 => 60 * SEC..70 * SEC,
        ]
        .prop_map(Op::Advance),
        10 => (any::<u8>(), 1u16..3000).prop_map(|(which, len)| Op::Push { which, len }),
        8 => (any::<u8>(), any::<u8>()).prop_map(|(which, reason)| Op::Close { which, reason }),
        7 => Just(Op::AnswerLater),
        3 => Just(Op::AnswerLaterEvents),
        1 => Just(Op::GoAway),
    ]
}

/// How herald is configured and what the shard allows.
#[derive(Debug, Clone)]
struct Setup {
    max_body: usize,
    body_budget: usize,
    /// The client acknowledges herald's SETTINGS first.
    ack: bool,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE in its preface.
    window: Option<u32>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![3 => Just(64usize << 10), 1 => Just(1000), 1 => Just(200_000)],
        prop_oneof![6 => Just(16usize << 20), 1 => Just(0), 1 => Just(3000)],
        prop::bool::weighted(0.7),
        prop_oneof![4 => Just(None), 1 => Just(Some(0)), 1 => Just(Some(10))],
    )
        .prop_map(|(max_body, body_budget, ack, window)| Setup {
            max_body,
            body_budget,
            ack,
            window,
        })
}

// ---------------------------------------------------------------------------
// The driver: `CheckedConn` asserts the invariants after every step.

/// What runs went through, counted: the generators must reach it
/// (`the_generators_reach_what_the_properties_check`).
#[derive(Default)]
struct Reached(BTreeMap<String, usize>);

impl Reached {
    fn bump(&mut self, what: impl Into<String>) {
        *self.0.entry(what.into()).or_default() += 1;
    }
}

struct Harness {
    conn: CheckedConn,
    input: Vec<u8>,
    fed: usize,
    reached: Reached,
}

impl Harness {
    fn new(setup: &Setup, input: Vec<u8>) -> Harness {
        let mut cfg = Config::defaults();
        cfg.max_body = setup.max_body;
        let limits = Limits::from_config(&cfg);
        Harness {
            conn: CheckedConn::new(limits, setup.body_budget, SEC),
            input,
            fed: 0,
            reached: Reached::default(),
        }
    }

    /// The ops, then what is left of the input, write turns, the timers,
    /// and the connection's end.
    fn run(mut self, ops: &[Op]) -> Reached {
        for op in ops {
            self.op(op);
        }
        self.op(&Op::Feed(usize::MAX));
        for _ in 0..4 {
            self.op(&Op::Produce);
        }
        self.op(&Op::Advance(100 * SEC));
        self.op(&Op::Produce);
        self.conn.end();
        for (_, path, len) in &self.conn.host.dispatched {
            self.reached.bump(format!("dispatched {path}"));
            if *len > 0 {
                self.reached.bump("dispatched with a body");
            }
        }
        for (_, _, reason) in &self.conn.host.ended {
            self.reached.bump(format!("SSE ended {reason:?}"));
        }
        self.reached
    }

    fn op(&mut self, op: &Op) {
        let c = &mut self.conn;
        match *op {
            Op::Feed(n) => {
                let end = self.fed.saturating_add(n).min(self.input.len());
                if !c.receive(&self.input[self.fed..end]) {
                    self.reached.bump("input after failure");
                }
                self.fed = end;
            }
            Op::Produce => {
                for (head, payload) in c.produce() {
                    let code =
                        || u32::from_be_bytes(payload[payload.len() - 4..].try_into().unwrap());
                    match head.kind {
                        DATA => {
                            self.reached.bump("DATA");
                            let (stream, conn) = c.windows(head.stream);
                            if head.len > 0 && (stream == Some(0) || conn == 0) {
                                self.reached.bump("DATA up to a window");
                            }
                        }
                        RST_STREAM => self
                            .reached
                            .bump(format!("RST_STREAM {}", code_name(code()))),
                        GOAWAY => self.reached.bump(format!("GOAWAY {}", code_name(code()))),
                        WINDOW_UPDATE => self.reached.bump("window given back"),
                        _ => {}
                    }
                }
            }
            Op::Advance(ns) => {
                if c.advance(ns) {
                    self.reached.bump("timer");
                }
            }
            Op::Push { which, len } => c.push(usize::from(which), usize::from(len)),
            Op::Close { which, reason } => {
                let reason = CloseReason::ALL[usize::from(reason) % CloseReason::ALL.len()];
                c.close(usize::from(which), reason);
            }
            Op::AnswerLater => {
                if c.answer_later() {
                    self.reached.bump("answered later");
                }
            }
            Op::AnswerLaterEvents => {
                if c.answer_later_events() {
                    self.reached.bump("answered later with an SSE stream");
                }
            }
            Op::GoAway => c.go_away(),
        }
        // What the step left.
        if c.host.bodies > 0 {
            self.reached.bump("body held");
        }
        if c.proto.answers_accounted().0 + ROUTE_COST > ANSWER_BUDGET {
            self.reached.bump("answer budget spent");
        }
        if c.proto.streams() == MAX_STREAMS as usize {
            self.reached.bump("stream limit");
        }
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn plausible_frames_keep_the_invariants(
        setup in setup(),
        specs in prop::collection::vec(spec(), 1..40),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let (input, _) = encode(&specs, &setup);
        Harness::new(&setup, input).run(&ops);
    }

    #[test]
    fn mutated_frames_keep_the_invariants(
        setup in setup(),
        specs in prop::collection::vec(spec(), 1..40),
        mutations in prop::collection::vec(mutation(), 1..6),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let (mut input, starts) = encode(&specs, &setup);
        mutate(&mut input, &starts, &mutations);
        Harness::new(&setup, input).run(&ops);
    }
}

/// The generators are not vacuous: over a fixed sample, runs reach every
/// state the properties are about (deterministic: a fixed seed).
#[test]
fn the_generators_reach_what_the_properties_check() {
    let reached = RefCell::new(Reached::default());
    let run = |setup: &Setup, input: Vec<u8>, ops: &[Op]| -> Result<(), TestCaseError> {
        let got = Harness::new(setup, input).run(ops);
        let mut all = reached.borrow_mut();
        for (what, n) in got.0 {
            *all.0.entry(what).or_default() += n;
        }
        Ok(())
    };
    let runner = || {
        let cfg = ProptestConfig {
            cases: 192,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        TestRunner::new_with_rng(cfg, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
    };
    let specs = || prop::collection::vec(spec(), 1..40);
    let ops = || prop::collection::vec(op(), 1..80);
    runner()
        .run(&(setup(), specs(), ops()), |(setup, specs, ops)| {
            run(&setup, encode(&specs, &setup).0, &ops)
        })
        .unwrap();
    let plausible = std::mem::take(&mut *reached.borrow_mut());
    let mutations = prop::collection::vec(mutation(), 1..6);
    runner()
        .run(
            &(setup(), specs(), mutations, ops()),
            |(setup, specs, mutations, ops)| {
                let (mut input, starts) = encode(&specs, &setup);
                mutate(&mut input, &starts, &mutations);
                run(&setup, input, &ops)
            },
        )
        .unwrap();
    let mutated = reached.into_inner();
    let want = [
        "dispatched /publish",
        "dispatched /events",
        "dispatched /later",
        "dispatched with a body",
        "body held",
        "answered later",
        "answered later with an SSE stream",
        "answer budget spent",
        "stream limit",
        "timer",
        "DATA",
        "DATA up to a window",
        "window given back",
        "SSE ended SlowConsumer",
        "SSE ended ClientClosed",
        "RST_STREAM no_error",
        "RST_STREAM refused_stream",
        "RST_STREAM cancel",
        "RST_STREAM protocol_error",
        "RST_STREAM stream_closed",
        "RST_STREAM flow_control_error",
        "GOAWAY no_error",
        "GOAWAY protocol_error",
        "GOAWAY frame_size_error",
        "GOAWAY flow_control_error",
        "GOAWAY compression_error",
        "GOAWAY enhance_your_calm",
        "input after failure",
    ];
    for (name, got) in [("plausible", &plausible), ("mutated", &mutated)] {
        eprintln!("{name}: {:?}", got.0);
    }
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|w| !plausible.0.contains_key(*w))
        .collect();
    assert!(
        missing.is_empty(),
        "plausible frames never reach {missing:?}"
    );
    for w in [
        "GOAWAY protocol_error",
        "GOAWAY frame_size_error",
        "dispatched /events",
    ] {
        assert!(mutated.0.contains_key(w), "mutated frames never reach {w}");
    }
}
