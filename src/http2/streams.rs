//! A connection's streams: the client's side and herald's side of each open
//! one (RFC 9113 §5.1), and a short memory of how the last ones closed.
//!
//! An open stream is 32 bytes ([`Stream`]): what only some streams need (a
//! request body being received, an answer being sent) is boxed. An SSE stream
//! whose request is complete keeps its id, its send window and its table key.

use bytes::{Bytes, BytesMut};

use super::limits::CLOSED_MEMORY;

/// One open stream.
pub struct Stream {
    pub id: u32,
    /// What herald may still send on it (flow control; within ±2^31).
    pub window: i32,
    /// The client's side while it is open; `None` once the client ended it
    /// (half-closed remote).
    pub recv: Option<Box<Recv>>,
    /// herald's side.
    pub state: StreamState,
}

/// The client's side of a stream whose request is not complete.
pub struct Recv {
    /// The request must be complete by then (`--header-timeout` after its
    /// HEADERS).
    pub deadline: u64,
    /// What the client may still send on the stream.
    pub window: i64,
    /// `content-length` minus the DATA received so far.
    pub length_left: Option<u64>,
    /// Body bytes received, kept or not.
    pub received: u64,
    /// The size of the request head kept in `at_end` (counted in the
    /// connection's [`super::limits::Limits::request_heads`]).
    pub head_size: u32,
    pub at_end: AtEnd,
}

/// What happens when the request is complete.
pub enum AtEnd {
    /// Serve it with the body buffered here (held on the connection window
    /// and the shard's body budget).
    Serve {
        req: Box<http::request::Parts>,
        body: BytesMut,
        head: bool,
    },
    /// Serve it without a body (what comes is dropped).
    ServeEmpty {
        req: Box<http::request::Parts>,
        head: bool,
    },
    /// Already answered (a body too large, a timeout): once the answer is
    /// sent, the stream is reset with NO_ERROR (§8.1) and what comes dropped.
    Drop,
}

/// A complete request, for the routes (or waiting for the answer budget).
pub struct Request {
    pub req: http::request::Parts,
    pub body: Bytes,
    pub head: bool,
    /// Its head's size, counted until it is answered.
    pub size: u32,
}

/// An answer's body being sent.
pub struct Outgoing {
    pub data: Bytes,
    pub sent: usize,
    /// When it last moved (the send timeout counts from here).
    pub since: u64,
}

/// herald's side of a stream.
pub enum StreamState {
    /// The request is coming ([`Stream::recv`] says what happens then).
    Receiving,
    /// Complete, waiting until answers drain ([`super::limits::ANSWER_BUDGET`]).
    Queued(Box<Request>),
    /// With the routes: the answer comes later. `held` body bytes stay on the
    /// connection window and the shard's budget until it does, its head's
    /// `size` on the connection's head budget; a HEAD request's answer
    /// carries no body.
    Routing {
        head: bool,
        held: u32,
        size: u32,
    },
    Sending(Box<Outgoing>),
    /// An SSE stream: its entry in the shard's table.
    Events {
        key: u32,
        serial: u64,
    },
    /// Over on herald's side; removed at the end of the pass, remembered as
    /// ended this way.
    Done(Ended),
}

impl Stream {
    /// Whether herald is done and the client too: the stream can go.
    pub fn is_over(&self) -> bool {
        matches!(self.state, StreamState::Done(_)) && self.recv.is_none()
    }
}

/// How a stream closed: what the client may still send on it differs
/// (RFC 9113 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides ended it: DATA is a stream error, HEADERS a connection
    /// error (STREAM_CLOSED).
    Normally,
    /// The client reset it: DATA and HEADERS are stream errors.
    ByPeer,
    /// herald reset it: whatever the client had in flight is ignored.
    ByUs,
}

/// The last [`CLOSED_MEMORY`] streams closed and how.
pub struct Closed {
    ids: [u32; CLOSED_MEMORY],
    kinds: [Ended; CLOSED_MEMORY],
    next: usize,
}

impl Default for Closed {
    fn default() -> Self {
        Closed {
            ids: [0; CLOSED_MEMORY],
            kinds: [Ended::Normally; CLOSED_MEMORY],
            next: 0,
        }
    }
}

impl Closed {
    pub fn push(&mut self, id: u32, how: Ended) {
        self.ids[self.next] = id;
        self.kinds[self.next] = how;
        self.next = (self.next + 1) % CLOSED_MEMORY;
    }

    /// How `id` closed, if it is among the last ones.
    pub fn get(&self, id: u32) -> Option<Ended> {
        // Id 0 marks an empty slot (no stream has it).
        self.ids
            .iter()
            .position(|&i| i == id && id != 0)
            .map(|at| self.kinds[at])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_stream_is_32_bytes() {
        assert!(std::mem::size_of::<Stream>() <= 32);
    }

    #[test]
    fn closed_streams_are_remembered_until_pushed_out() {
        let mut c = Closed::default();
        assert_eq!(c.get(0), None);
        c.push(1, Ended::ByUs);
        c.push(3, Ended::Normally);
        assert_eq!(c.get(1), Some(Ended::ByUs));
        assert_eq!(c.get(3), Some(Ended::Normally));
        for i in 0..CLOSED_MEMORY as u32 {
            c.push(101 + 2 * i, Ended::ByPeer);
        }
        assert_eq!(c.get(1), None);
        assert_eq!(c.get(101), Some(Ended::ByPeer));
    }
}
