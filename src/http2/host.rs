//! What the protocol core ([`super::proto`]) asks of the world around it: the
//! routes (decide at HEADERS, serve a complete request), the shard-wide budget
//! of request bodies, and the queues of SSE streams. The shard is one host
//! ([`super::conn`]); the tests and the property tests drive the core with a
//! host of their own, in memory, without sockets.

use bytes::Bytes;
use http::HeaderMap;

use crate::conn::CloseReason;
use crate::error::ApiError;

/// What to do with a request whose headers are in, before its body.
pub enum Intake {
    /// The route takes a body: buffer it (up to `--max-body`), then serve.
    Body,
    /// The route reads no body: whatever comes is dropped, the request is
    /// served once it is complete.
    NoBody,
    /// Refused already (authentication): this is the answer, sent at once;
    /// a body is dropped as it comes.
    Refuse(Answer),
}

/// An answer from the routes.
#[derive(Debug)]
pub enum Answer {
    /// A complete response.
    Full {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    },
    /// An SSE stream, registered in the shard's table under `key` and
    /// `serial`; the connection writes it from its queue and ends it.
    Events {
        headers: HeaderMap,
        key: u32,
        serial: u64,
    },
}

impl Answer {
    /// A JSON error answer (no CORS lines: see [`Host::error`]).
    pub fn error(e: &ApiError) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Answer::Full {
            status: e.status,
            headers,
            body: Bytes::from(e.body()),
        }
    }
}

/// What one pull of an SSE stream's queue gave ([`Host::pull`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    /// One DATA frame of this many payload bytes was written; `more`: the
    /// next pull may give something (the queue has more, or the stream is
    /// closing); else it would be [`Pull::Idle`], and is not made.
    Wrote { taken: usize, more: bool },
    /// Nothing to write now (an empty queue, or no room).
    Idle,
    /// The stream is over: end it (END_STREAM) and report it closed.
    End(CloseReason),
    /// Its table entry is gone: reset it.
    Gone,
}

pub trait Host {
    /// Route and authenticate a request when its headers arrive.
    fn intake(&mut self, req: &http::request::Parts) -> Intake;

    /// Serve a complete request: its answer now, or `None` when it comes
    /// later through [`super::proto::Proto::answer`].
    fn dispatch(&mut self, stream: u32, req: http::request::Parts, body: Bytes) -> Option<Answer>;

    /// The stream of a request still with the routes was reset: stop serving it.
    fn cancel(&mut self, stream: u32);

    /// An error answer for a request (CORS lines for its origin, when any).
    fn error(&mut self, req: Option<&http::request::Parts>, e: &ApiError) -> Answer;

    /// Whether a new request body may start (the shard-wide budget).
    fn body_room(&self) -> bool;

    /// Body bytes held on this shard grew (positive) or were let go.
    fn body_bytes(&mut self, delta: i64);

    /// Write at most `room` bytes of the SSE stream `key`/`serial` as one DATA
    /// frame on `stream` into `out` (with its frame header).
    fn pull(
        &mut self,
        key: u32,
        serial: u64,
        stream: u32,
        room: usize,
        out: &mut Vec<u8>,
        now: u64,
    ) -> Pull;

    /// An SSE stream ended: out of the table, reported closed.
    fn end_events(&mut self, key: u32, serial: u64, reason: CloseReason);
}
