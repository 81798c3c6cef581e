//! Event → SSE bytes. Pure functions: every published event is framed exactly once
//! here and the resulting [`Bytes`] is shared by every connection that receives it.
//!
//! Framing rules (contract "Subscribe"): `id:` then `event:` then one `data:` line per
//! line of the data, where CR, LF and CRLF all end a line; data ending in a line
//! break keeps its empty last line; an empty line is written as a bare `data:`.
//! `CONNECTED`, `HEARTBEAT` and `RESYNC` carry no `id:` so they never move a
//! client's resume point.

use bytes::{BufMut, Bytes, BytesMut};

/// Frame a published event carrying `id`.
pub fn event(id: u64, name: &str, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(event_len_bound(name, data));
    put_event(&mut buf, id, name, data);
    shared(buf)
}

/// At least the bytes [`put_event`] writes: the id takes at most 20 digits
/// after `id: `.
fn event_len_bound(name: &str, data: &str) -> usize {
    framed_len_estimate(name, data) + 25
}

/// A numbered event's frame: its `id:` line, then the body.
fn put_event(buf: &mut BytesMut, id: u64, name: &str, data: &str) {
    buf.put_slice(b"id: ");
    let mut itoa = itoa_buf();
    buf.put_slice(fmt_u64(id, &mut itoa));
    buf.put_u8(b'\n');
    put_body(buf, name, data);
}

/// Frames published events side by side in shared chunks, so that an event
/// costs neither an allocation of its own nor a free when the history lets it
/// go (that free touched memory last used 10,000 events earlier: a cache miss
/// on every publish). A chunk's memory returns once every frame cut from it is
/// dropped, so only frames that leave in publish order belong here: broadcast
/// and topic events (history, bounded queues). A user-targeted event may wait
/// for days as a pending event and would pin its whole chunk: those, and
/// frames larger than [`ARENA_MAX_FRAME`], get an allocation of their own.
#[derive(Debug, Default)]
pub struct FrameArena {
    chunk: BytesMut,
}

/// Bytes of one arena chunk.
pub const ARENA_CHUNK: usize = 32 << 10;
/// Largest frame cut from an arena chunk.
pub const ARENA_MAX_FRAME: usize = 2 << 10;

impl FrameArena {
    /// [`event`], its bytes cut from the current chunk.
    pub fn event(&mut self, id: u64, name: &str, data: &str) -> Bytes {
        let need = event_len_bound(name, data);
        if need > ARENA_MAX_FRAME {
            return event(id, name, data);
        }
        if self.chunk.capacity() < need {
            self.chunk = BytesMut::with_capacity(ARENA_CHUNK);
        }
        put_event(&mut self.chunk, id, name, data);
        // The first cut makes the chunk's shared header; every later one only
        // counts a reference on it.
        self.chunk.split().freeze()
    }
}

/// The same framed event with another `id:` (its first line replaced): a cluster
/// with partitions gives one event the ids of several positions.
pub fn with_id(framed: &Bytes, id: &str) -> Bytes {
    let rest = framed
        .iter()
        .position(|&b| b == b'\n')
        .map_or(&framed[..], |i| &framed[i + 1..]);
    let mut buf = BytesMut::with_capacity(rest.len() + id.len() + 5);
    buf.put_slice(b"id: ");
    buf.put_slice(id.as_bytes());
    buf.put_u8(b'\n');
    buf.put_slice(rest);
    shared(buf)
}

/// Frame an event without an id (`CONNECTED`, `HEARTBEAT`, `RESYNC`).
pub fn unnumbered(name: &str, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(framed_len_estimate(name, data));
    put_body(&mut buf, name, data);
    shared(buf)
}

/// Freeze into a `Bytes` whose shared header already exists. A buffer frozen at
/// exactly its capacity is "promotable": its first clone allocates the refcount
/// header. Doing that here, once per frame, keeps the first delivery of a frame
/// (a heartbeat, or an event with a 19-digit id) free of allocation.
fn shared(buf: BytesMut) -> Bytes {
    let bytes = buf.freeze();
    drop(bytes.clone());
    bytes
}

/// The line `retry: <ms>`, with no blank line after it: a client applies a
/// `retry:` field when it reads the line, and a blank line would dispatch a block
/// that sets a field, which some clients (Python's httpx-sse) hand to the
/// application as an empty `message` event. A stream's first `retry:` therefore
/// opens the `CONNECTED` block, and its last one ends the stream by itself.
pub fn retry(ms: u64) -> Bytes {
    let mut itoa = itoa_buf();
    let digits = fmt_u64(ms, &mut itoa);
    let mut buf = BytesMut::with_capacity(digits.len() + 8);
    buf.put_slice(b"retry: ");
    buf.put_slice(digits);
    buf.put_u8(b'\n');
    buf.freeze()
}

/// A heartbeat frame carrying the unix time in milliseconds.
pub fn heartbeat(unix_ms: u64) -> Bytes {
    let mut itoa = itoa_buf();
    unnumbered(
        "HEARTBEAT",
        std::str::from_utf8(fmt_u64(unix_ms, &mut itoa)).unwrap_or("0"),
    )
}

fn framed_len_estimate(name: &str, data: &str) -> usize {
    // "event: " + name + "\n" + ("data: " + "\n") per line + data + "\n"
    // memchr's SIMD scan: this runs on every publish, over the whole payload.
    let lines = 1 + memchr::memchr2_iter(b'\n', b'\r', data.as_bytes()).count();
    8 + name.len() + lines * 7 + data.len() + 1
}

fn put_body(buf: &mut BytesMut, name: &str, data: &str) {
    buf.put_slice(b"event: ");
    buf.put_slice(name.as_bytes());
    buf.put_u8(b'\n');
    for line in Lines::new(data) {
        if line.is_empty() {
            buf.put_slice(b"data:\n");
        } else {
            buf.put_slice(b"data: ");
            buf.put_slice(line.as_bytes());
            buf.put_u8(b'\n');
        }
    }
    buf.put_u8(b'\n');
}

/// Splits on CR, LF and CRLF, yielding a final empty line when the data ends in a
/// line break (and one empty line for empty data), as the contract requires.
struct Lines<'a> {
    rest: Option<&'a str>,
}

impl<'a> Lines<'a> {
    fn new(data: &'a str) -> Self {
        Lines { rest: Some(data) }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match memchr::memchr2(b'\r', b'\n', rest.as_bytes()) {
            None => {
                self.rest = None;
                Some(rest)
            }
            Some(i) => {
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                self.rest = Some(&rest[i + skip..]);
                Some(&rest[..i])
            }
        }
    }
}

type ItoaBuf = itoa::Buffer;

/// `n` in decimal, appended to `out` (no `fmt` machinery: it runs on every
/// publish answer).
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut itoa = itoa_buf();
    out.extend_from_slice(fmt_u64(n, &mut itoa));
}

fn itoa_buf() -> ItoaBuf {
    itoa::Buffer::new()
}

/// `n` in decimal (itoa: two digits per step; every event's id goes through it).
fn fmt_u64(n: u64, buf: &mut ItoaBuf) -> &[u8] {
    buf.format(n).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn arena_frames_are_the_plain_frames() {
        let mut arena = FrameArena::default();
        let big = "x".repeat(ARENA_MAX_FRAME);
        let datas = ["hello", "", "a\nb\r\nc\r", "\n\n", big.as_str(), "tail"];
        let mut kept = Vec::new();
        // Enough frames to cross several chunks.
        for id in 0..2_000u64 {
            let data = datas[id as usize % datas.len()];
            let id = id * 7_919_000_000_000_000 % u64::MAX;
            let framed = arena.event(id, "message", data);
            assert_eq!(framed, event(id, "message", data));
            kept.push(framed);
        }
        // Frames outlive the arena and stay intact when their neighbours go.
        drop(arena);
        kept.retain(|f| f.len() % 2 == 0);
        for f in &kept {
            assert!(f.starts_with(b"id: ") && f.ends_with(b"\n\n"));
        }
    }

    #[test]
    fn single_line() {
        assert_eq!(
            s(&event(7, "message", "hello")),
            "id: 7\nevent: message\ndata: hello\n\n"
        );
    }

    #[test]
    fn every_line_break_kind_splits() {
        assert_eq!(
            s(&event(1, "m", "a\nb\rc\r\nd")),
            "id: 1\nevent: m\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn trailing_break_keeps_empty_last_line() {
        assert_eq!(
            s(&event(1, "m", "a\n")),
            "id: 1\nevent: m\ndata: a\ndata:\n\n"
        );
        assert_eq!(
            s(&event(1, "m", "a\r\n")),
            "id: 1\nevent: m\ndata: a\ndata:\n\n"
        );
    }

    #[test]
    fn empty_data_is_one_empty_data_line() {
        assert_eq!(s(&event(1, "m", "")), "id: 1\nevent: m\ndata:\n\n");
    }

    #[test]
    fn leading_space_survives_the_one_stripped_space() {
        assert_eq!(s(&event(1, "m", " x")), "id: 1\nevent: m\ndata:  x\n\n");
    }

    #[test]
    fn with_id_replaces_only_the_id_line() {
        let f = event(7, "news", "a\nb");
        assert_eq!(
            &with_id(&f, "3.9")[..],
            b"id: 3.9\nevent: news\ndata: a\ndata: b\n\n"
        );
    }

    #[test]
    fn unnumbered_frames_have_no_id() {
        assert_eq!(
            s(&unnumbered("RESYNC", "{}")),
            "event: RESYNC\ndata: {}\n\n"
        );
        assert_eq!(s(&heartbeat(1234)), "event: HEARTBEAT\ndata: 1234\n\n");
        assert_eq!(s(&retry(2500)), "retry: 2500\n");
        assert_eq!(s(&retry(0)), "retry: 0\n");
    }

    #[test]
    fn max_id() {
        assert_eq!(
            s(&event(u64::MAX, "m", "x")),
            format!("id: {}\nevent: m\ndata: x\n\n", u64::MAX)
        );
    }
}
