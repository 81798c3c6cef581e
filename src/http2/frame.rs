//! HTTP/2 frames (RFC 9113 §4, §6) as herald writes them, and the HPACK
//! (RFC 7541) of its responses.
//!
//! Responses are encoded without the dynamic table: `:status` from the static
//! table when it is there, every other field a literal that is not indexed.
//! The encoder then keeps no state per connection, and a response head is a few
//! hundred bytes at most. (Requests are decoded by the h2 crate's HPACK decoder;
//! see [`super`].)

use http::HeaderMap;

/// What a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The frame header: length (24 bits), type, flags, stream id (31 bits).
pub const HEAD_LEN: usize = 9;
/// The frame size herald accepts and, until the peer says more, sends.
pub const DEFAULT_MAX_FRAME: usize = 1 << 14;
/// A new stream's or the connection's window until SETTINGS say otherwise.
pub const DEFAULT_WINDOW: i64 = 65_535;
/// The largest window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Settings (RFC 9113 §6.5.2).
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
/// RFC 8441 (extended CONNECT, not offered): 0 or 1.
pub const SETTINGS_ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
/// RFC 9218 §2.1: 0 or 1.
pub const SETTINGS_NO_RFC7540_PRIORITIES: u16 = 0x9;

/// An error code's name (metrics labels, logs).
pub fn code_name(code: u32) -> &'static str {
    match code {
        NO_ERROR => "no_error",
        PROTOCOL_ERROR => "protocol_error",
        INTERNAL_ERROR => "internal_error",
        FLOW_CONTROL_ERROR => "flow_control_error",
        STREAM_CLOSED => "stream_closed",
        FRAME_SIZE_ERROR => "frame_size_error",
        REFUSED_STREAM => "refused_stream",
        CANCEL => "cancel",
        COMPRESSION_ERROR => "compression_error",
        ENHANCE_YOUR_CALM => "enhance_your_calm",
        _ => "other",
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    pub fn parse(b: &[u8]) -> Head {
        Head {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            // The reserved bit is ignored (RFC 9113 §4.1).
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

pub fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let l = (len as u32).to_be_bytes();
    out.extend_from_slice(&[l[1], l[2], l[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

pub fn put_settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    put_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn put_settings_ack(out: &mut Vec<u8>) {
    put_head(out, 0, SETTINGS, ACK, 0);
}

pub fn put_ping_ack(out: &mut Vec<u8>, payload: &[u8]) {
    put_head(out, 8, PING, ACK, 0);
    out.extend_from_slice(payload);
}

pub fn put_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    put_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

pub fn put_rst(out: &mut Vec<u8>, stream: u32, code: u32) {
    put_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&code.to_be_bytes());
}

pub fn put_goaway(out: &mut Vec<u8>, last_stream: u32, code: u32) {
    put_head(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&last_stream.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`
/// (RFC 7541 §5.1).
fn put_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A Dynamic Table Size Update to `size` (RFC 7541 §6.3), at the start of a
/// header block.
pub fn put_table_size_update(out: &mut Vec<u8>, size: usize) {
    put_int(out, 0x20, 5, size);
}

/// A string literal without Huffman coding (RFC 7541 §5.2).
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// The static table's index of `:status` with this code, if it has one.
fn static_status(status: u16) -> Option<u8> {
    Some(match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => return None,
    })
}

/// The header block of a response: `:status`, the headers, and
/// `content-length` when the body's length is known.
pub fn header_block(
    out: &mut Vec<u8>,
    status: u16,
    headers: &HeaderMap,
    content_length: Option<u64>,
) {
    match static_status(status) {
        // Indexed field (§6.1).
        Some(i) => out.push(0x80 | i),
        None => {
            // Literal without indexing, name from the static table (`:status`
            // is index 8; §6.2.2).
            put_int(out, 0, 4, 8);
            let mut digits = [0u8; 3];
            digits[0] = b'0' + (status / 100 % 10) as u8;
            digits[1] = b'0' + (status / 10 % 10) as u8;
            digits[2] = b'0' + (status % 10) as u8;
            put_str(out, &digits);
        }
    }
    for (name, value) in headers {
        // Literal without indexing, new name (§6.2.2). Names are lowercase
        // already (http's HeaderName).
        out.push(0);
        put_str(out, name.as_str().as_bytes());
        put_str(out, value.as_bytes());
    }
    if let Some(len) = content_length {
        // `content-length` is the static table's index 28.
        put_int(out, 0, 4, 28);
        let mut buf = itoa::Buffer::new();
        put_str(out, buf.format(len).as_bytes());
    }
}

/// A header block as HEADERS and, past `max_frame`, CONTINUATION frames.
pub fn put_headers(
    out: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let mut chunks = block.chunks(max_frame.max(1));
    let first = chunks.next().unwrap_or(&[]);
    let last_is_first = block.len() <= max_frame;
    let flags =
        if end_stream { END_STREAM } else { 0 } | if last_is_first { END_HEADERS } else { 0 };
    put_head(out, first.len(), HEADERS, flags, stream);
    out.extend_from_slice(first);
    let mut rest = chunks.peekable();
    while let Some(chunk) = rest.next() {
        let flags = if rest.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        put_head(out, chunk.len(), CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use bytes::BytesMut;
    use h2_hpack::{Decoder, Header};
    use http::header::{HeaderValue, CONTENT_TYPE};

    use super::*;

    fn decode(block: &[u8]) -> Vec<(String, String)> {
        let mut dec = Decoder::new(4096);
        let mut buf = BytesMut::from(block);
        let mut got = Vec::new();
        dec.decode(&mut Cursor::new(&mut buf), |h| {
            match h {
                Header::Status(s) => got.push((":status".into(), s.as_str().to_string())),
                Header::Field { name, value } => {
                    got.push((name.to_string(), value.to_str().unwrap().to_string()))
                }
                other => panic!("unexpected {other:?}"),
            }
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        got
    }

    #[test]
    fn response_heads_decode_with_a_real_hpack_decoder() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert("x-long", HeaderValue::from_str(&"v".repeat(300)).unwrap());
        for status in [200u16, 202, 404, 413, 503, 204] {
            let mut out = Vec::new();
            header_block(&mut out, status, &headers, Some(12_345_678));
            let got = decode(&out);
            assert_eq!(got[0], (":status".into(), status.to_string()));
            assert_eq!(got[1], ("content-type".into(), "text/event-stream".into()));
            assert_eq!(got[2], ("x-long".into(), "v".repeat(300)));
            assert_eq!(got[3], ("content-length".into(), "12345678".into()));
        }
    }

    #[test]
    fn a_long_header_block_continues_in_continuation_frames() {
        let block = vec![7u8; 40];
        let mut out = Vec::new();
        put_headers(&mut out, 3, &block, true, 16);
        let heads: Vec<Head> = [0, 25, 50]
            .iter()
            .map(|&at| Head::parse(&out[at..]))
            .collect();
        assert_eq!(
            heads[0],
            Head {
                len: 16,
                kind: HEADERS,
                flags: END_STREAM,
                stream: 3
            }
        );
        assert_eq!(
            heads[1],
            Head {
                len: 16,
                kind: CONTINUATION,
                flags: 0,
                stream: 3
            }
        );
        assert_eq!(
            heads[2],
            Head {
                len: 8,
                kind: CONTINUATION,
                flags: END_HEADERS,
                stream: 3
            }
        );
        assert_eq!(out.len(), 3 * HEAD_LEN + 40);
        let mut short = Vec::new();
        put_headers(&mut short, 5, &block[..10], false, 16);
        assert_eq!(Head::parse(&short).flags, END_HEADERS);
    }

    #[test]
    fn integers_past_their_prefix_continue() {
        let mut out = Vec::new();
        put_int(&mut out, 0, 7, 1337);
        // RFC 7541 C.1.2 uses a 5-bit prefix for 1337; with 7 bits: 127 + 1210.
        assert_eq!(out, [0x7f, 0xba, 0x09]);
    }
}
