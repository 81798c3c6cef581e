//! herald's own HTTP/2 server, for HTTPS connections whose client chose `h2`.
//!
//! It owns one connection from the end of the TLS handshake to its close: the
//! record layer in both directions (the keys are taken out of rustls,
//! [`crate::tls::record`]), the frames (RFC 9113), the header blocks (RFC 7541,
//! decoded with the h2 crate's HPACK decoder, vendored in `vendor/h2-hpack`), and its
//! streams. An SSE stream is a stream id and a send window here plus its entry
//! in the shard's table, like any other stream: the shard's flush wakes the
//! connection's task, which moves what each stream has queued into DATA frames
//! within the flow-control windows, seals them into records and writes them
//! with one `write`. Other requests go to herald's routes, as HTTP/1.1
//! requests do through hyper.
//!
//! Why not hyper's HTTP/2 (the h2 crate): an idle connection there keeps
//! rustls' buffers and state, h2's connection, stream store and HPACK state and
//! hyper's connection task, and every stream h2's stream state, hyper's stream
//! task and a body: ~17 KB for a connection with one stream and ~2-3 KB per
//! further stream, against ~1 KB for a lean HTTP/1.1 stream (perf/RESULTS.md).
//! Here an idle connection keeps its two keys, its state and no buffer; a
//! stream 32 bytes and its table entry.
//!
//! What it is made of, one job a file, as the h2 crate splits its own:
//! - [`frame`]: frame headers, herald's frames and response header blocks;
//! - [`limits`]: every bound a client meets, with the attack it stops;
//! - [`fields`]: a request's header fields checked (malformed: a stream error);
//! - [`streams`]: stream state, and how the last ones closed;
//! - [`flood`]: what a client makes herald do for nothing, counted;
//! - [`host`]: what the protocol core asks of the shard (routes, budgets, queues);
//! - [`proto`] (connection frames), [`recv`] (requests and bodies), [`reset`]
//!   (streams ending, resets, priorities, windows), [`send`] (answers, DATA),
//!   [`timers`] (deadlines): the protocol core, without I/O or clock;
//! - [`conn`]: the core over a socket and the record layer; [`shard_host`]: the
//!   shard as its host.
//!
//! Requests are routed and authenticated when their headers arrive
//! ([`host::Intake`]): only a body its route takes is kept, up to `--max-body`,
//! on a connection window that comes back only as bodies are answered and
//! within the shard's body budget; everything else a client sends is dropped
//! as it comes. Every wait has a deadline: preface, header blocks, bodies,
//! partial frames and records (`--header-timeout`), answers stuck behind a
//! closed window (three times `--header-timeout`), connections without streams
//! (`--idle-timeout`).

pub mod conn;
pub mod fields;
pub mod flood;
pub mod frame;
pub mod host;
pub mod limits;
pub mod proto;
mod recv;
mod reset;
pub mod send;
mod shard_host;
pub mod streams;
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;
mod timers;

pub use conn::spawn;
pub use limits::MAX_STREAMS;
