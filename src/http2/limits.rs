//! Every bound an HTTP/2 client meets, in one place, each with the attack it
//! stops (as nghttp2's `nghttp2_option` and the h2 crate's `Builder` keep
//! theirs). What one connection may hold, whatever its client sends, is the sum
//! of the budgets below ([`Limits::connection_bound`]); the README states it.

use std::time::Duration;

use super::frame::{DEFAULT_MAX_FRAME, DEFAULT_WINDOW, MAX_WINDOW};
use crate::config::Config;

/// Concurrent streams per connection (SSE streams and requests): more are
/// refused (`REFUSED_STREAM`). Bounds the stream slots and their answers.
pub const MAX_STREAMS: u32 = 128;

/// Entries in one SETTINGS frame: a frame of thousands of entries costs
/// herald a walk each (CVE-2020-11080's shape); past it, ENHANCE_YOUR_CALM.
/// nghttp2's default is the same.
pub const MAX_SETTINGS_ENTRIES: usize = 32;

/// Output waiting for the socket (control frames and sealed records) past
/// which the connection's input is not read: a client that sends PINGs,
/// SETTINGS or resets but does not read cannot grow herald's output.
pub const OUTPUT_BACKLOG: usize = 32 << 10;

/// Answers waiting on the client's window, plus [`ROUTE_COST`] for each
/// request still with the routes: past it, complete requests wait their turn
/// (they are not refused) until answers drain. Stops a client that opens its
/// windows at 0 from pinning 128 rendered answers.
pub const ANSWER_BUDGET: usize = 32 << 10;

/// What a request with the routes counts against [`ANSWER_BUDGET`] (its
/// future and its answer to come).
pub const ROUTE_COST: usize = 1 << 10;

/// What a request head kept for later costs besides its fields' bytes (its
/// parsed parts, header map and stream state: ~1.3 KB measured with 128
/// pending requests), counted against [`Limits::request_heads`].
pub const HEAD_COST: usize = 1 << 10;

/// Streams whose end herald remembers (how they closed: the frames a client
/// may still send on them are told apart, RFC 9113 §5.1); older ones are
/// treated as closed long ago.
pub const CLOSED_MEMORY: usize = 16;

/// After herald's GOAWAY and close_notify, input is read and dropped for at
/// most this long before the socket is closed: closing with unread input
/// makes the kernel send a reset, which can destroy the GOAWAY in flight.
pub const LINGER: Duration = Duration::from_secs(1);

/// A leaky bucket's size and drain rate.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Frames that may arrive at once.
    pub burst: u32,
    /// Frames per second drained.
    pub per_sec: u32,
}

/// Frames that do nothing: zero-length DATA without END_STREAM, empty
/// CONTINUATION, PRIORITY, unknown types, frames on streams already closed
/// (CVE-2019-9518 and its kind). Browsers send a handful.
pub const USELESS_FRAMES: Rate = Rate {
    burst: 1000,
    per_sec: 100,
};

/// SETTINGS frames, each answered with an ACK (CVE-2019-9515).
pub const SETTINGS_FRAMES: Rate = Rate {
    burst: 200,
    per_sec: 20,
};

/// PINGs, each answered with an ACK (CVE-2019-9512).
pub const PINGS: Rate = Rate {
    burst: 500,
    per_sec: 50,
};

/// Streams reset, by the client (rapid reset, CVE-2023-44487) or by herald
/// because of what the client sent (MadeYouReset, CVE-2025-8671): each cost
/// a stream's setup for nothing.
pub const RESETS: Rate = Rate {
    burst: 400,
    per_sec: 200,
};

/// The bounds of one connection, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The header list (`--max-header-bytes`; a larger request is answered 431).
    pub header_list: u32,
    /// A header block as received (HEADERS and CONTINUATION payloads): twice
    /// the header list, past which the block is a flood, not a request.
    pub header_block: u32,
    /// A request body (`--max-body`; 413 beyond).
    pub max_body: u32,
    /// Request heads the connection keeps at once (those waiting for their
    /// body, their turn or their answer), each counted as its fields' bytes
    /// plus [`HEAD_COST`]: four full ones, or some sixty small ones; past it a
    /// new stream is refused (`REFUSED_STREAM`). Stops 128 pending requests
    /// of 16 KiB headers each.
    pub request_heads: u32,
    /// Body bytes the connection may hold at once: the connection window
    /// herald gives (it is given back only as bodies are answered).
    pub conn_window: u32,
    /// The window of each stream (SETTINGS_INITIAL_WINDOW_SIZE): one body
    /// and the byte past the limit that makes it a 413.
    pub stream_window: u32,
    /// Header blocks, bodies, partial frames and records complete within this
    /// (`--header-timeout`, in milliseconds); so does the preface.
    header_timeout_ms: u32,
    /// A connection with no stream closes after this (`--idle-timeout`).
    idle_timeout_ms: u32,
}

impl Limits {
    pub fn from_config(cfg: &Config) -> Limits {
        // Kept in 4 bytes each (a connection holds a copy): the configuration
        // bounds the sizes (1 MiB of headers, 64 MiB of body).
        let header_list = cfg.max_header_bytes as u32;
        let window = (cfg.max_body as i64 + 1).clamp(DEFAULT_WINDOW, MAX_WINDOW) as u32;
        let max = header_list.max(DEFAULT_MAX_FRAME as u32);
        Limits {
            header_list,
            header_block: 2 * max,
            request_heads: 4 * max,
            max_body: cfg.max_body as u32,
            conn_window: window,
            stream_window: window,
            header_timeout_ms: ms(cfg.header_timeout),
            idle_timeout_ms: ms(cfg.idle_timeout),
        }
    }

    /// `--header-timeout` in nanoseconds.
    pub fn header_timeout_ns(&self) -> u64 {
        u64::from(self.header_timeout_ms) * 1_000_000
    }

    /// `--idle-timeout` in nanoseconds.
    pub fn idle_timeout_ns(&self) -> u64 {
        u64::from(self.idle_timeout_ms) * 1_000_000
    }

    /// An answer that has made no progress (the client gives no window) for
    /// this long is reset (`CANCEL`), so that a stalled reader cannot keep
    /// it: three times `--header-timeout` (30 s by default).
    pub fn send_timeout_ns(&self) -> u64 {
        3 * self.header_timeout_ns()
    }

    /// What one connection may hold at most besides its SSE streams' queues
    /// (each bounded by `--max-queue-bytes` like any stream's): the state and
    /// stream slots, a partial record and frame, a header block and the HPACK
    /// table its client may fill before herald's SETTINGS apply, the bodies
    /// (the connection window), answers, and output.
    pub fn connection_bound(&self) -> usize {
        // The connection's state, and per stream its slot and what a request
        // waiting for its body keeps besides its head.
        let state = 1024 + MAX_STREAMS as usize * 160;
        let record = crate::tls::record::MAX_RECORD;
        let frame = super::frame::HEAD_LEN + DEFAULT_MAX_FRAME;
        let hpack = 4096 + 64 * 32;
        state
            + record
            + frame
            + self.header_block as usize
            + self.request_heads as usize
            + hpack
            + self.conn_window as usize
            + ANSWER_BUDGET
            + OUTPUT_BACKLOG
    }
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
