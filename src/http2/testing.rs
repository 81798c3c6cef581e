//! A [`Host`] in memory, to drive the protocol core without sockets or a
//! shard: the unit tests, the property tests (`tests/h2_properties.rs`) and
//! the fuzz target (`fuzz/fuzz_targets/h2_frames.rs`) use it. It keeps what
//! the core asked of it, so that tests can check the core's bookkeeping
//! against it.
//!
//! Its routes: `POST /publish` takes a body (answered `202` with the body's
//! length); `POST /refuse` is refused at its headers (`401`); `GET /events`
//! opens an SSE stream (its queue is [`MemoryHost::push`]ed); `GET /later`
//! is answered later ([`MemoryHost::later`]); anything else `200 ok`.
//!
//! Property tests and fuzzing: [`checked::CheckedConn`] drives a connection
//! with this host and a client's view beside it, and asserts after every step
//! what herald promises whatever a client sends: at most `MAX_STREAMS`
//! streams; the body bytes the host was told are held are what the streams
//! hold ([`Proto::held_bytes`]), within the connection window, and the
//! answers' count adds up ([`Proto::answers_accounted`]); the client's window
//! plus what is held never exceeds the window herald gave; herald's DATA
//! stays within the client's windows and frame size; what herald writes
//! parses, names no idle stream, follows no GOAWAY with an error code and no
//! end of its stream; input after a connection error has no effect; after
//! [`Proto::end_all`] every SSE stream was ended once and nothing is held.
//! `tests/h2_properties.rs` feeds it generated frame sequences (plausible
//! ones, and their bytes mutated) in random chunks, with a random clock,
//! write turns, SSE events and later answers between them, and checks that
//! its generators reach the states the properties are about; the fuzz target
//! `fuzz/fuzz_targets/h2_frames.rs` feeds it any bytes
//! ([`checked::run_frames`]), and `tests/fuzz_corpus.rs` replays its corpus
//! (seeded with the frame sequences of the unit tests in `tests.rs`) on
//! stable. A failure they find becomes a unit test in `tests.rs`.
//!
//! [`Proto::held_bytes`]: super::proto::Proto::held_bytes
//! [`Proto::answers_accounted`]: super::proto::Proto::answers_accounted
//! [`Proto::end_all`]: super::proto::Proto::end_all

pub mod checked;

use std::collections::HashMap;

use bytes::Bytes;
use http::HeaderMap;

use super::frame::{put_head, DATA};
use super::host::{Answer, Host, Intake, Pull};
use crate::conn::CloseReason;
use crate::error::ApiError;

/// One SSE stream of the memory host.
#[derive(Debug, Default)]
pub struct Events {
    pub serial: u64,
    pub queue: Vec<u8>,
    /// Closed by the host (as a disconnect or a slow consumer would).
    pub closing: Option<CloseReason>,
}

#[derive(Debug)]
pub struct MemoryHost {
    /// Body bytes the shard may hold (the shard's `--body-budget`).
    pub body_budget: usize,
    /// Body bytes held now, as the core reported them.
    pub bodies: i64,
    /// Streams served, with their path and body length.
    pub dispatched: Vec<(u32, String, usize)>,
    /// Streams whose answer is to come (`GET /later`).
    pub later: Vec<u32>,
    pub cancelled: Vec<u32>,
    /// Open SSE streams by key.
    pub events: HashMap<u32, Events>,
    /// SSE streams ended, with how.
    pub ended: Vec<(u32, u64, CloseReason)>,
    next_key: u32,
}

impl Default for MemoryHost {
    fn default() -> Self {
        MemoryHost {
            body_budget: 16 << 20,
            bodies: 0,
            dispatched: Vec::new(),
            later: Vec::new(),
            cancelled: Vec::new(),
            events: HashMap::new(),
            ended: Vec::new(),
            next_key: 1,
        }
    }
}

impl MemoryHost {
    /// Queue `bytes` on SSE stream `key`.
    pub fn push(&mut self, key: u32, bytes: &[u8]) {
        if let Some(e) = self.events.get_mut(&key) {
            e.queue.extend_from_slice(bytes);
        }
    }

    /// The answer to a `GET /later` stream, for [`super::proto::Proto::answer`].
    pub fn answer_later(&mut self) -> Option<(u32, Answer)> {
        let id = self.later.pop()?;
        Some((id, full(200, Bytes::from_static(b"later"))))
    }
}

fn full(status: u16, body: Bytes) -> Answer {
    Answer::Full {
        status,
        headers: HeaderMap::new(),
        body,
    }
}

impl Host for MemoryHost {
    fn intake(&mut self, req: &http::request::Parts) -> Intake {
        match (req.method.as_str(), req.uri.path()) {
            ("POST", "/publish") => Intake::Body,
            ("POST", "/refuse") => Intake::Refuse(Answer::error(&ApiError::new(
                401,
                "missing_token",
                "no credential",
            ))),
            _ => Intake::NoBody,
        }
    }

    fn dispatch(&mut self, stream: u32, req: http::request::Parts, body: Bytes) -> Option<Answer> {
        let path = req.uri.path().to_string();
        self.dispatched.push((stream, path.clone(), body.len()));
        match path.as_str() {
            "/publish" => Some(full(202, Bytes::from(body.len().to_string()))),
            "/later" => {
                self.later.push(stream);
                None
            }
            "/events" => {
                let key = self.next_key;
                self.next_key += 1;
                let serial = u64::from(key) * 7;
                self.events.insert(
                    key,
                    Events {
                        serial,
                        queue: b"retry: 1000\n\n".to_vec(),
                        closing: None,
                    },
                );
                Some(Answer::Events {
                    headers: HeaderMap::new(),
                    key,
                    serial,
                })
            }
            _ => Some(full(200, Bytes::from_static(b"ok"))),
        }
    }

    fn cancel(&mut self, stream: u32) {
        self.later.retain(|&s| s != stream);
        self.cancelled.push(stream);
    }

    fn error(&mut self, _req: Option<&http::request::Parts>, e: &ApiError) -> Answer {
        Answer::error(e)
    }

    fn body_room(&self) -> bool {
        (self.bodies as usize) < self.body_budget
    }

    fn body_bytes(&mut self, delta: i64) {
        self.bodies += delta;
        assert!(self.bodies >= 0, "more body bytes let go than held");
    }

    fn pull(
        &mut self,
        key: u32,
        serial: u64,
        stream: u32,
        room: usize,
        out: &mut Vec<u8>,
        _now: u64,
    ) -> Pull {
        let Some(e) = self.events.get_mut(&key).filter(|e| e.serial == serial) else {
            return Pull::Gone;
        };
        if let Some(reason) = e.closing {
            if reason != CloseReason::Shutdown || e.queue.is_empty() {
                return Pull::End(reason);
            }
        }
        if e.queue.is_empty() || room == 0 {
            return Pull::Idle;
        }
        let n = room.min(e.queue.len());
        put_head(out, n, DATA, 0, stream);
        out.extend(e.queue.drain(..n));
        Pull::Wrote {
            taken: n,
            more: !e.queue.is_empty() || e.closing.is_some(),
        }
    }

    fn end_events(&mut self, key: u32, serial: u64, reason: CloseReason) {
        let e = self.events.remove(&key);
        assert!(
            e.is_some_and(|e| e.serial == serial),
            "SSE stream {key} ended twice or never opened"
        );
        self.ended.push((key, serial, reason));
    }
}

/// A frame as a client writes it.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(super::frame::HEAD_LEN + payload.len());
    put_head(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

/// The client's preface and its first SETTINGS (empty).
pub fn client_preface() -> Vec<u8> {
    let mut out = super::frame::PREFACE.to_vec();
    out.extend(frame(super::frame::SETTINGS, 0, 0, &[]));
    out
}

/// A request's header block: every field a literal without indexing, no
/// Huffman coding (RFC 7541 §6.2.2).
pub fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    let fields = [
        (":method", method),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
    ];
    for (name, value) in fields.iter().chain(extra) {
        out.push(0);
        literal(&mut out, name.as_bytes());
        literal(&mut out, value.as_bytes());
    }
    out
}

fn literal(out: &mut Vec<u8>, s: &[u8]) {
    if s.len() < 127 {
        out.push(s.len() as u8);
    } else {
        out.push(127);
        let mut v = s.len() - 127;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }
    out.extend_from_slice(s);
}

/// The frames in what herald wrote.
pub fn frames(mut out: &[u8]) -> Vec<(super::frame::Head, Vec<u8>)> {
    let mut got = Vec::new();
    while out.len() >= super::frame::HEAD_LEN {
        let head = super::frame::Head::parse(out);
        let end = super::frame::HEAD_LEN + head.len;
        if out.len() < end {
            break;
        }
        got.push((head, out[super::frame::HEAD_LEN..end].to_vec()));
        out = &out[end..];
    }
    got
}
