//! herald's own HTTP/2 conformance suite, over TLS with ALPN h2, against a
//! real herald process: one test per h2spec case (`http2/*`: RFC 9113 §3–8,
//! `hpack/*`: RFC 7541, `generic/*`), named after it, then herald's own
//! cases (its choice where h2spec accepts several answers, HPACK as herald
//! encodes, floods).
//!
//! Each test asserts the frames herald answers (type, stream, error code,
//! `:status`) and whether the connection stays: after a stream error the
//! connection is shown alive (a PING answered with its payload and nothing
//! before it, then `GET /health/live` on a new stream answered 200); after a
//! connection error herald sends GOAWAY with the code and the last stream id
//! it processed, then closes. The raw client is tests/support/h2raw.rs, its
//! HPACK tests/support/hpack.rs.
//!
//! Most cases are rows of [`table!`]: the frames to write at once after the
//! handshake, and a [`Then`]. Cases that wait for something between their
//! frames are plain tests. Where h2spec sends a request whose answer would
//! race the frame under test (herald may answer `GET /` or `POST /` at once),
//! the case either waits for the answer first or uses a stream whose state
//! stays put (an SSE stream, `POST /api/broadcast` before its body ends); the
//! case's comment says so.
//!
//! GOAWAY's last stream id: the highest stream whose header block herald took
//! (0 when a block was refused before that).

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use support::certs::{make_cert, TestCert};
use support::h2raw::*;
use support::hpack::{self, Lit, Name, Rep};
use support::tls::start_tls;
use support::{Herald, WAIT};

fn cert() -> &'static TestCert {
    static CERT: OnceLock<TestCert> = OnceLock::new();
    CERT.get_or_init(|| make_cert("h2-conformance", 2099))
}

/// herald with TLS, its defaults, no heartbeats (they would be frames the
/// cases do not expect).
fn herald(extra: &[&str]) -> Herald {
    let mut args = vec!["--heartbeat-interval", "1h"];
    args.extend_from_slice(extra);
    start_tls(cert(), &args, None)
}

/// A connection whose handshake is done, herald's SETTINGS ACKed.
async fn acked() -> (Herald, H2) {
    let h = herald(&[]);
    let c = H2::open(&h, &cert().der, &[], true).await;
    (h, c)
}

/// As [`acked`], herald's SETTINGS not ACKed (its HPACK table is still 4,096).
async fn unacked() -> (Herald, H2) {
    let h = herald(&[]);
    let c = H2::open(&h, &cert().der, &[], false).await;
    (h, c)
}

fn f(kind: u8, flags: u8, stream: u32, payload: impl AsRef<[u8]>) -> Vec<u8> {
    frame(kind, flags, stream, payload.as_ref())
}

fn blk(fields: &[(&str, &str)]) -> Vec<u8> {
    hpack::plain(fields)
}

/// h2spec's request: HEADERS `GET /` ending the stream.
fn get(stream: u32) -> Vec<u8> {
    f(HEADERS, EH_ES, stream, blk(&COMMON))
}

/// h2spec's DummyHeaders(c, 1): one field of 4,000 bytes.
fn dummy() -> Vec<u8> {
    blk(&[("x-dummy0", &"x".repeat(4000))])
}

/// `COMMON` followed by a representation as raw bytes (h2spec's HPACK
/// cases).
fn common_then(rep: &[u8]) -> Vec<u8> {
    [blk(&COMMON), rep.to_vec()].concat()
}

const PUBLISH: &str = "/api/broadcast";

/// HEADERS opening `POST /api/broadcast` without ending the stream: herald
/// answers only once the body has ended, so the stream stays open.
fn open_publish(stream: u32, extra: &[(&str, &str)]) -> Vec<u8> {
    f(
        HEADERS,
        END_HEADERS,
        stream,
        blk(&request("POST", PUBLISH, extra)),
    )
}

/// h2spec's `POST /` without END_STREAM, and herald's answer to it, which
/// comes when the request is complete: `405` whole (the route cannot take a POST).
async fn post_root(c: &mut H2, stream: u32, extra: &[(&str, &str)]) {
    // `POST /` reads no body: herald answers it (405) once the request is
    // complete, dropping what comes meanwhile; nothing is sent before.
    c.send(
        HEADERS,
        END_HEADERS,
        stream,
        &blk(&request("POST", "/", extra)),
    )
    .await;
}

/// What herald must do after a row's frames.
enum Then {
    /// Answer stream 1 whole with this `:status`; the connection is alive.
    Answer(u16),
    /// RST_STREAM on stream 1 with this code; the connection is alive.
    Rst(u32),
    /// GOAWAY with this code and last stream id, then close.
    Goaway(u32, u32),
    /// Answer the row's PING (this payload) and send nothing before; the
    /// connection is alive.
    Ping(&'static [u8]),
    /// Nothing: the connection is alive.
    Quiet,
}

async fn then(c: &mut H2, t: Then) {
    match t {
        Then::Answer(status) => {
            c.expect_answer(1, status).await;
            c.alive().await;
        }
        Then::Rst(code) => c.expect_rst(1, code).await,
        Then::Goaway(code, last) => c.expect_goaway(code, last).await,
        Then::Ping(payload) => {
            c.expect_ping_ack(payload).await;
            c.alive().await;
        }
        Then::Quiet => c.alive().await,
    }
}

/// After a GOAWAY from the client, herald answers its PING or ends the
/// connection (GOAWAY NO_ERROR and close, or just the close), as h2spec
/// accepts; an error is not an option.
async fn ping_or_close(c: &mut H2, payload: &[u8]) {
    match c.next().await {
        None => {}
        Some(p) if p.kind == PING && p.ack() && p.payload == payload => {}
        Some(g) if g.kind == GOAWAY && g.code() == Some(NO_ERROR) => c.expect_close().await,
        Some(other) => panic!(
            "expected the PING answered or the close, herald sent {}",
            other.describe()
        ),
    }
}

const ZEROS: &[u8] = &[0; 8];
const H2SPEC: &[u8] = b"h2spec\0\0";

/// One test per row: `name: setup, frames => Then;` (the frames are written at once).
macro_rules! table {
    ($($(#[$m:meta])* $name:ident: $setup:ident, $frames:expr => $then:expr;)*) => {$(
        $(#[$m])*
        #[tokio::test]
        async fn $name() {
            let (_h, mut c) = $setup().await;
            let frames: Vec<u8> = $frames;
            c.write(&frames).await;
            then(&mut c, $then).await;
        }
    )*};
}

/// A malformed request (RFC 9113 §8.1.1): RST_STREAM PROTOCOL_ERROR on its
/// stream, no answer, the connection stays.
macro_rules! malformed {
    ($($(#[$m:meta])* $name:ident: $fields:expr;)*) => {$(
        $(#[$m])*
        #[tokio::test]
        async fn $name() {
            let (_h, mut c) = acked().await;
            let fields: Vec<(&str, &str)> = $fields;
            c.send(HEADERS, EH_ES, 1, &blk(&fields)).await;
            c.expect_rst(1, PROTOCOL_ERROR).await;
        }
    )*};
}

/// herald's preface as the brief has it: SETTINGS with exactly these values,
/// then WINDOW_UPDATE raising the connection's window to 65,537, then the
/// ACK of the client's SETTINGS.
fn assert_server_preface(preface: &[Frame]) {
    let described: Vec<String> = preface.iter().map(Frame::describe).collect();
    assert_eq!(preface.len(), 3, "herald's preface: {described:?}");
    let mut got = preface[0].settings();
    got.sort();
    let want = vec![
        (HEADER_TABLE_SIZE, 0),
        (ENABLE_PUSH, 0),
        (MAX_CONCURRENT_STREAMS, 128),
        (INITIAL_WINDOW_SIZE, 65_537),
        (MAX_HEADER_LIST_SIZE, 16_384),
    ];
    assert_eq!(
        got, want,
        "herald's SETTINGS (sorted by id); preface {described:?}"
    );
    assert_eq!(
        described[1], "WINDOW_UPDATE(stream 0, +2)",
        "preface {described:?}"
    );
    assert_eq!(described[2], "SETTINGS(ACK)", "preface {described:?}");
}

/// The client's preface and SETTINGS (h2spec's: INITIAL_WINDOW_SIZE 65,535),
/// herald's preface checked exactly.
async fn preface_case() {
    let h = herald(&[]);
    let mut c = H2::tls(&h, &cert().der).await;
    let hello = [
        PREFACE.to_vec(),
        f(SETTINGS, 0, 0, settings(&[(INITIAL_WINDOW_SIZE, 65_535)])),
    ]
    .concat();
    c.write(&hello).await;
    c.read_preface().await;
    assert_server_preface(&c.preface);
    c.send(SETTINGS, ACK, 0, &[]).await;
    c.alive().await;
}

// ---------------------------------------------------------------------------
// http2/3.5 · RFC 9113 §3.4 HTTP/2 Connection Preface

/// h2spec http2/3.5/1 · RFC 9113 §3.4: herald's first frame is its SETTINGS.
#[tokio::test]
async fn s3_5_client_preface() {
    preface_case().await;
}

/// h2spec http2/3.5/2 · RFC 9113 §3.4: an invalid preface is a connection
/// error PROTOCOL_ERROR (herald's own SETTINGS may come first).
#[tokio::test]
async fn s3_5_invalid_preface() {
    let h = herald(&[]);
    let mut c = H2::tls(&h, &cert().der).await;
    c.write(b"INVALID CONNECTION PREFACE\r\n\r\n").await;
    let first = c.must("herald's SETTINGS").await;
    assert!(
        first.kind == SETTINGS && !first.ack(),
        "herald sent {}",
        first.describe()
    );
    c.expect_goaway(PROTOCOL_ERROR, 0).await;
}

// ---------------------------------------------------------------------------
// http2/4 · RFC 9113 §4 HTTP Frames

table! {
    /// h2spec http2/4.1/1 · RFC 9113 §4.1: a frame of unknown type is ignored.
    s4_1_unknown_frame_type: acked,
        [f(0x16, 0, 0, ZEROS), f(PING, 0, 0, ZEROS)].concat() => Then::Ping(ZEROS);
    /// h2spec http2/4.1/2 · RFC 9113 §4.1: undefined flags are ignored.
    s4_1_undefined_flag: acked, f(PING, 0x16, 0, ZEROS) => Then::Ping(ZEROS);
    /// h2spec http2/4.1/3 · RFC 9113 §4.1: the reserved bit is ignored.
    s4_1_reserved_bit: acked, f(PING, 0x16, 1 << 31, ZEROS) => Then::Ping(ZEROS);
    /// h2spec http2/4.2/1 · RFC 9113 §4.2: DATA of 2^14 bytes is taken
    /// (`POST /` is answered 405).
    s4_2_data_16384: acked,
        [f(HEADERS, END_HEADERS, 1, blk(&request("POST", "/", &[]))),
         f(DATA, END_STREAM, 1, vec![b'x'; 16_384])].concat() => Then::Answer(405);
    /// h2spec http2/4.2/3 · RFC 9113 §4.2: HEADERS past SETTINGS_MAX_FRAME_SIZE
    /// is a connection error FRAME_SIZE_ERROR.
    s4_2_headers_over_max_frame: acked, {
        let d = "x".repeat(4000);
        let mut fields = COMMON.to_vec();
        let names: Vec<String> = (0..5).map(|i| format!("x-dummy{i}")).collect();
        fields.extend(names.iter().map(|n| (n.as_str(), d.as_str())));
        f(HEADERS, EH_ES, 1, blk(&fields))
    } => Then::Goaway(FRAME_SIZE_ERROR, 0);
    /// h2spec http2/4.3/1 · RFC 9113 §4.3: a header block that does not
    /// decode is a connection error COMPRESSION_ERROR.
    s4_3_invalid_header_block: acked,
        f(HEADERS, EH_ES, 1, [0x40]) => Then::Goaway(COMPRESSION_ERROR, 0);
    /// h2spec http2/4.3/2 · RFC 9113 §4.3: PRIORITY inside a header block is a
    /// connection error PROTOCOL_ERROR.
    s4_3_priority_in_header_block: acked,
        [f(HEADERS, 0, 1, blk(&COMMON)), f(PRIORITY, 0, 1, priority(0, false, 255)),
         f(CONTINUATION, END_HEADERS, 1, dummy())].concat() => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/4.3/3 · RFC 9113 §4.3: HEADERS of another stream inside a
    /// header block is a connection error PROTOCOL_ERROR.
    s4_3_headers_other_stream_in_header_block: acked,
        [f(HEADERS, 0, 1, blk(&COMMON)), get(3), f(CONTINUATION, END_HEADERS, 1, dummy())].concat()
        => Then::Goaway(PROTOCOL_ERROR, 0);
}

/// h2spec http2/4.2/2 · RFC 9113 §4.2: DATA past SETTINGS_MAX_FRAME_SIZE is a
/// connection error FRAME_SIZE_ERROR (herald's rule for any frame over
/// 16,384). `POST /` is answered first, so the GOAWAY is all that follows.
#[tokio::test]
async fn s4_2_data_over_max_frame() {
    let (_h, mut c) = acked().await;
    post_root(&mut c, 1, &[]).await;
    c.send(DATA, END_STREAM, 1, &[b'x'; 16_385]).await;
    c.expect_goaway(FRAME_SIZE_ERROR, 1).await;
}

// ---------------------------------------------------------------------------
// http2/5.1 · RFC 9113 §5.1 Stream States

table! {
    /// h2spec http2/5.1/1 · RFC 9113 §5.1 idle: DATA is a connection error
    /// PROTOCOL_ERROR (h2spec also takes STREAM_CLOSED, or a stream error).
    s5_1_idle_data: acked, f(DATA, END_STREAM, 1, "test") => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/5.1/2 · RFC 9113 §5.1 idle: RST_STREAM.
    s5_1_idle_rst_stream: acked,
        f(RST_STREAM, 0, 1, u32be(CANCEL)) => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/5.1/3 · RFC 9113 §5.1 idle: WINDOW_UPDATE.
    s5_1_idle_window_update: acked,
        f(WINDOW_UPDATE, 0, 1, u32be(100)) => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/5.1/4 · RFC 9113 §5.1 idle: CONTINUATION.
    s5_1_idle_continuation: acked,
        f(CONTINUATION, END_HEADERS, 1, blk(&COMMON)) => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/5.1/8 · RFC 9113 §5.1 closed (reset by the client): DATA
    /// is a stream error STREAM_CLOSED. (h2spec opens `GET /` without
    /// END_STREAM; a publish waits for its body, so nothing is answered.)
    s5_1_closed_data_after_rst: acked,
        [open_publish(1, &[]), f(RST_STREAM, 0, 1, u32be(CANCEL)),
         f(DATA, END_STREAM, 1, "test")].concat()
        => Then::Rst(STREAM_CLOSED);
    /// h2spec http2/5.1/9 · RFC 9113 §5.1 closed (reset by the client):
    /// HEADERS is a stream error STREAM_CLOSED.
    s5_1_closed_headers_after_rst: acked,
        [open_publish(1, &[]), f(RST_STREAM, 0, 1, u32be(CANCEL)), get(1)].concat()
        => Then::Rst(STREAM_CLOSED);
    /// h2spec http2/5.1/10 · RFC 9113 §5.1, §6.10 closed (reset by the
    /// client): CONTINUATION without a header block is a connection error
    /// PROTOCOL_ERROR.
    s5_1_closed_continuation_after_rst: acked,
        [open_publish(1, &[]), f(RST_STREAM, 0, 1, u32be(CANCEL)),
         f(CONTINUATION, END_HEADERS, 1, dummy())].concat()
        => Then::Goaway(PROTOCOL_ERROR, 1);
    /// h2spec http2/5.1.1/1 · RFC 9113 §5.1.1: an even stream id from the
    /// client is a connection error PROTOCOL_ERROR.
    s5_1_1_even_stream_id: acked, get(2) => Then::Goaway(PROTOCOL_ERROR, 0);
}

/// h2spec http2/5.1/5 · RFC 9113 §5.1 half-closed (remote): DATA is a
/// stream error STREAM_CLOSED. (An SSE stream stays half-closed; h2spec's
/// `GET /` may be answered and closed first.)
#[tokio::test]
async fn s5_1_half_closed_remote_data() {
    let (_h, mut c) = acked().await;
    c.open_sse(1, "u1").await;
    c.send(DATA, END_STREAM, 1, b"test").await;
    c.sse.remove(&1);
    c.expect_rst(1, STREAM_CLOSED).await;
}

/// h2spec http2/5.1/6 · RFC 9113 §5.1 half-closed (remote): HEADERS is a
/// stream error STREAM_CLOSED.
#[tokio::test]
async fn s5_1_half_closed_remote_headers() {
    let (_h, mut c) = acked().await;
    c.open_sse(1, "u1").await;
    c.write(&get(1)).await;
    c.sse.remove(&1);
    c.expect_rst(1, STREAM_CLOSED).await;
}

/// h2spec http2/5.1/7 · RFC 9113 §5.1, §6.10 half-closed (remote):
/// CONTINUATION without a header block is a connection error
/// PROTOCOL_ERROR.
#[tokio::test]
async fn s5_1_half_closed_remote_continuation() {
    let (_h, mut c) = acked().await;
    c.open_sse(1, "u1").await;
    c.send(CONTINUATION, END_HEADERS, 1, &blk(&COMMON)).await;
    c.expect_goaway(PROTOCOL_ERROR, 1).await;
}

/// h2spec http2/5.1/11 · RFC 9113 §5.1 closed (both sides ended): DATA is
/// a stream error STREAM_CLOSED.
#[tokio::test]
async fn s5_1_closed_data() {
    let (_h, mut c) = acked().await;
    c.write(&get(1)).await;
    c.expect_answer(1, 200).await;
    c.send(DATA, END_STREAM, 1, b"test").await;
    c.expect_rst(1, STREAM_CLOSED).await;
}

/// h2spec http2/5.1/12 · RFC 9113 §5.1 closed (both sides ended): HEADERS
/// is a connection error STREAM_CLOSED.
#[tokio::test]
async fn s5_1_closed_headers() {
    let (_h, mut c) = acked().await;
    c.write(&get(1)).await;
    c.expect_answer(1, 200).await;
    c.write(&get(1)).await;
    c.expect_goaway(STREAM_CLOSED, 1).await;
}

/// h2spec http2/5.1/13 · RFC 9113 §5.1, §6.10 closed (both sides ended):
/// CONTINUATION is a connection error PROTOCOL_ERROR.
#[tokio::test]
async fn s5_1_closed_continuation() {
    let (_h, mut c) = acked().await;
    c.write(&get(1)).await;
    c.expect_answer(1, 200).await;
    c.send(CONTINUATION, END_HEADERS, 1, &dummy()).await;
    c.expect_goaway(PROTOCOL_ERROR, 1).await;
}

/// h2spec http2/5.1.1/2 · RFC 9113 §5.1.1: HEADERS on a stream id below
/// one already used is a connection error PROTOCOL_ERROR. (Stream 5's
/// answer is read first, so that the GOAWAY is all that follows.)
#[tokio::test]
async fn s5_1_1_smaller_stream_id() {
    let (_h, mut c) = acked().await;
    c.write(&get(5)).await;
    c.expect_answer(5, 200).await;
    c.write(&get(3)).await;
    c.expect_goaway(PROTOCOL_ERROR, 5).await;
}

/// h2spec http2/5.1.2/1 · RFC 9113 §5.1.2: a stream past
/// SETTINGS_MAX_CONCURRENT_STREAMS (128) is refused (RST_STREAM
/// REFUSED_STREAM) and the others go on.
#[tokio::test]
async fn s5_1_2_exceed_concurrent_streams() {
    let (_h, mut c) = acked().await;
    // Windows of 0 keep the answers from ending (small answers: 128 of
    // them fit herald's answer budget, so every HEADERS comes now).
    let mut bytes = f(SETTINGS, 0, 0, settings(&[(INITIAL_WINDOW_SIZE, 0)]));
    let live = blk(&request("GET", "/health/live", &[]));
    for i in 0..=128u32 {
        bytes.extend(f(HEADERS, EH_ES, 1 + 2 * i, &live));
    }
    c.write(&bytes).await;
    let mut answered = std::collections::BTreeSet::new();
    loop {
        let fr = c.must("RST_STREAM(stream 257, REFUSED_STREAM)").await;
        match (fr.kind, fr.stream) {
            (HEADERS, s) if s < 257 && fr.status() == Some(200) && !fr.end_stream() => {
                assert!(answered.insert(s), "a second HEADERS on stream {s}");
            }
            (RST_STREAM, 257) if fr.code() == Some(REFUSED_STREAM) => break,
            _ => panic!(
                "expected HEADERS and RST_STREAM(stream 257, REFUSED_STREAM), herald sent {}",
                fr.describe()
            ),
        }
    }
    assert_eq!(answered.len(), 128, "every answer starts at once");
    c.ping().await;
    // The others go on: with windows, every answer comes and ends.
    c.write(
        &[
            f(WINDOW_UPDATE, 0, 0, u32be(1 << 30)),
            f(SETTINGS, 0, 0, settings(&[(INITIAL_WINDOW_SIZE, 65_535)])),
        ]
        .concat(),
    )
    .await;
    let mut ended = 0;
    while ended < 128 {
        let fr = c.must("the 128 answers").await;
        match (fr.kind, fr.stream) {
            (HEADERS, s) if s < 257 && fr.status() == Some(200) && !fr.end_stream() => {
                assert!(answered.insert(s), "a second HEADERS on stream {s}");
            }
            (DATA, s) if s < 257 => {
                assert!(answered.contains(&s), "DATA before HEADERS on stream {s}");
                ended += usize::from(fr.end_stream());
            }
            _ => panic!("expected the answers, herald sent {}", fr.describe()),
        }
    }
    assert_eq!(answered.len(), 128);
    c.alive().await;
}

// ---------------------------------------------------------------------------
// http2/5.3.1 · RFC 9113 §5.3.1 Stream Dependencies, http2/5.4.1, http2/5.5

table! {
    /// h2spec http2/5.3.1/1 · RFC 9113 §5.3.1: HEADERS depending on its own
    /// stream is a stream error PROTOCOL_ERROR (and is not answered).
    s5_3_1_headers_depends_on_itself: acked,
        f(HEADERS, EH_ES | PRIORITY_FLAG, 1, [priority(1, false, 255), blk(&COMMON)].concat())
        => Then::Rst(PROTOCOL_ERROR);
    /// h2spec http2/5.3.1/2 · RFC 9113 §5.3.1, §6.4: PRIORITY depending on its
    /// own stream, here an idle one, where RST_STREAM may not be sent: a
    /// connection error PROTOCOL_ERROR (which h2spec accepts).
    s5_3_1_priority_depends_on_itself: acked, f(PRIORITY, 0, 1, priority(1, false, 255))
        => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/5.4.1/1 · RFC 9113 §5.4.1: after a connection error
    /// (PING on stream 3) herald closes the connection.
    s5_4_1_invalid_ping_closes: acked, f(PING, 0, 3, ZEROS) => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/5.4.1/2 · RFC 9113 §5.4.1: ... and sends GOAWAY first.
    s5_4_1_invalid_ping_goaway: acked, f(PING, 0, 3, ZEROS) => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/5.5/1 · RFC 9113 §5.5: an unknown extension frame is
    /// ignored.
    s5_5_unknown_extension_frame: acked,
        [f(0x16, 0, 0, ZEROS), f(PING, 0, 0, ZEROS)].concat() => Then::Ping(ZEROS);
    /// h2spec http2/5.5/2 · RFC 9113 §5.5: an unknown frame inside a header
    /// block is a connection error PROTOCOL_ERROR.
    s5_5_unknown_frame_in_header_block: acked,
        [f(HEADERS, END_STREAM, 1, blk(&COMMON)), f(0x16, 0, 0, ZEROS)].concat()
        => Then::Goaway(PROTOCOL_ERROR, 0);
}

// ---------------------------------------------------------------------------
// http2/6.1 DATA, 6.2 HEADERS, 6.3 PRIORITY, 6.4 RST_STREAM · RFC 9113 §6.1–6.4

table! {
    /// h2spec http2/6.1/1 · RFC 9113 §6.1: DATA on stream 0 is a connection
    /// error PROTOCOL_ERROR.
    s6_1_data_stream_0: acked, f(DATA, END_STREAM, 0, "test") => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.2/1 · RFC 9113 §6.2: HEADERS without END_HEADERS then
    /// PRIORITY is a connection error PROTOCOL_ERROR.
    s6_2_headers_no_end_headers_then_priority: acked,
        [f(HEADERS, 0, 1, blk(&COMMON)), f(PRIORITY, 0, 1, priority(0, false, 255)),
         f(CONTINUATION, END_HEADERS, 1, dummy())].concat() => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.2/2 · RFC 9113 §6.2: HEADERS of another stream inside a
    /// header block is a connection error PROTOCOL_ERROR.
    s6_2_headers_other_stream_in_block: acked,
        [f(HEADERS, 0, 1, blk(&COMMON)), get(3), f(CONTINUATION, END_HEADERS, 1, dummy())].concat()
        => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.2/3 · RFC 9113 §6.2: HEADERS on stream 0 is a
    /// connection error PROTOCOL_ERROR.
    s6_2_headers_stream_0: acked, get(0) => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.2/4 · RFC 9113 §6.2: padding as long as the payload is a
    /// connection error PROTOCOL_ERROR (h2spec also takes a stream error).
    s6_2_headers_invalid_pad_length: acked, {
        let b = blk(&COMMON);
        let mut fr = f(HEADERS, EH_ES | PADDED, 1, [vec![b.len() as u8 + 2], b.clone()].concat());
        fr[2] = b.len() as u8 + 1;
        fr
    } => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.3/1 · RFC 9113 §6.3: PRIORITY on stream 0 is a
    /// connection error PROTOCOL_ERROR.
    s6_3_priority_stream_0: acked,
        f(PRIORITY, 0, 0, priority(0, false, 255)) => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.4/1 · RFC 9113 §6.4: RST_STREAM on stream 0 is a
    /// connection error PROTOCOL_ERROR.
    s6_4_rst_stream_0: acked, f(RST_STREAM, 0, 0, u32be(CANCEL)) => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.4/2 · RFC 9113 §6.4: RST_STREAM on an idle stream is a
    /// connection error PROTOCOL_ERROR.
    s6_4_rst_idle: acked, f(RST_STREAM, 0, 1, u32be(CANCEL)) => Then::Goaway(PROTOCOL_ERROR, 0);
}

#[tokio::test]
/// h2spec http2/6.1/2 · RFC 9113 §6.1: DATA on a stream not open (here
/// half-closed (remote), or closed once `405` is out) is a stream error
/// STREAM_CLOSED; herald's `405` may go out before it reads the DATA.
async fn s6_1_data_not_open() {
    let (_h, mut c) = acked().await;
    let bytes = [
        f(HEADERS, EH_ES, 1, blk(&request("POST", "/", &[]))),
        f(DATA, END_STREAM, 1, "test"),
    ]
    .concat();
    c.write(&bytes).await;
    c.expect_rst_after_answer(1, STREAM_CLOSED, 405).await;
}

/// h2spec http2/6.1/3 · RFC 9113 §6.1: padding as long as the payload is
/// a connection error PROTOCOL_ERROR.
#[tokio::test]
async fn s6_1_data_invalid_pad_length() {
    let (_h, mut c) = acked().await;
    post_root(&mut c, 1, &[("content-length", "4")]).await;
    c.write(b"\x00\x00\x05\x00\x09\x00\x00\x00\x01\x06\x54\x65\x73\x74")
        .await;
    c.expect_goaway(PROTOCOL_ERROR, 1).await;
}

/// h2spec http2/6.3/2 · RFC 9113 §6.3: PRIORITY of 4 bytes is a stream
/// error FRAME_SIZE_ERROR on its stream (here `GET /`, which herald may
/// have answered before).
#[tokio::test]
async fn s6_3_priority_bad_length() {
    let (_h, mut c) = acked().await;
    c.write(
        &[
            get(1),
            b"\x00\x00\x04\x02\x00\x00\x00\x00\x01\x80\x00\x00\x01".to_vec(),
        ]
        .concat(),
    )
    .await;
    c.expect_rst_after_answer(1, FRAME_SIZE_ERROR, 200).await;
}

/// h2spec http2/6.4/3 · RFC 9113 §6.4: RST_STREAM of 3 bytes is a
/// connection error FRAME_SIZE_ERROR (here on an open SSE stream).
#[tokio::test]
async fn s6_4_rst_bad_length() {
    let (_h, mut c) = acked().await;
    c.open_sse(1, "u1").await;
    c.write(b"\x00\x00\x03\x03\x00\x00\x00\x00\x01\x00\x00\x00")
        .await;
    c.expect_goaway(FRAME_SIZE_ERROR, 1).await;
}

// ---------------------------------------------------------------------------
// http2/6.5 SETTINGS · RFC 9113 §6.5

table! {
    /// h2spec http2/6.5/1 · RFC 9113 §6.5: SETTINGS ACK with a payload is a
    /// connection error FRAME_SIZE_ERROR.
    s6_5_settings_ack_with_payload: acked,
        f(SETTINGS, ACK, 0, [0]) => Then::Goaway(FRAME_SIZE_ERROR, 0);
    /// h2spec http2/6.5/2 · RFC 9113 §6.5: SETTINGS on a stream is a
    /// connection error PROTOCOL_ERROR.
    s6_5_settings_nonzero_stream: acked,
        f(SETTINGS, 0, 1, settings(&[(MAX_CONCURRENT_STREAMS, 100)]))
        => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.5/3 · RFC 9113 §6.5: SETTINGS not a multiple of 6 bytes
    /// is a connection error FRAME_SIZE_ERROR (h2spec also takes
    /// PROTOCOL_ERROR).
    s6_5_settings_bad_length: acked,
        f(SETTINGS, 0, 0, [0, 3, 0]) => Then::Goaway(FRAME_SIZE_ERROR, 0);
    /// h2spec http2/6.5.2/1 · RFC 9113 §6.5.2: SETTINGS_ENABLE_PUSH of 2 is a
    /// connection error PROTOCOL_ERROR.
    s6_5_2_enable_push_2: acked,
        f(SETTINGS, 0, 0, settings(&[(ENABLE_PUSH, 2)])) => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.5.2/2 · RFC 9113 §6.5.2: SETTINGS_INITIAL_WINDOW_SIZE
    /// of 2^31 is a connection error FLOW_CONTROL_ERROR.
    s6_5_2_initial_window_size_too_large: acked,
        f(SETTINGS, 0, 0, settings(&[(INITIAL_WINDOW_SIZE, 1 << 31)]))
        => Then::Goaway(FLOW_CONTROL_ERROR, 0);
    /// h2spec http2/6.5.2/3 · RFC 9113 §6.5.2: SETTINGS_MAX_FRAME_SIZE below
    /// 2^14 is a connection error PROTOCOL_ERROR.
    s6_5_2_max_frame_size_too_small: acked, f(SETTINGS, 0, 0, settings(&[(MAX_FRAME_SIZE, 16_383)]))
        => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.5.2/4 · RFC 9113 §6.5.2: SETTINGS_MAX_FRAME_SIZE of 2^24
    /// is a connection error PROTOCOL_ERROR.
    s6_5_2_max_frame_size_too_large: acked,
        f(SETTINGS, 0, 0, settings(&[(MAX_FRAME_SIZE, 1 << 24)]))
        => Then::Goaway(PROTOCOL_ERROR, 0);
}

/// h2spec http2/6.5.2/5 · RFC 9113 §6.5.2: an unknown setting is ignored
/// (SETTINGS ACKed, the PING answered).
#[tokio::test]
async fn s6_5_2_unknown_setting() {
    let (_h, mut c) = acked().await;
    c.write(
        &[
            f(SETTINGS, 0, 0, settings(&[(0xff, 1)])),
            f(PING, 0, 0, ZEROS),
        ]
        .concat(),
    )
    .await;
    c.expect_settings_ack().await;
    c.expect_ping_ack(ZEROS).await;
    c.alive().await;
}

/// h2spec http2/6.5.3/1 · RFC 9113 §6.5.3: values are processed in order
/// (INITIAL_WINDOW_SIZE 100 then 1: DATA of 1 byte).
#[tokio::test]
async fn s6_5_3_multiple_initial_window_size() {
    let (_h, mut c) = acked().await;
    c.send_settings(&[(INITIAL_WINDOW_SIZE, 100), (INITIAL_WINDOW_SIZE, 1)])
        .await;
    c.expect_settings_ack().await;
    c.write(&get(1)).await;
    c.expect_headers(1, 200, false).await;
    c.expect_data(1, 1).await;
    c.ping().await;
}

/// h2spec http2/6.5.3/2 · RFC 9113 §6.5.3: SETTINGS is ACKed at once.
#[tokio::test]
async fn s6_5_3_settings_ack() {
    let (_h, mut c) = acked().await;
    c.send_settings(&[(ENABLE_PUSH, 0)]).await;
    c.expect_settings_ack().await;
    c.alive().await;
}

// ---------------------------------------------------------------------------
// http2/6.7 PING, 6.8 GOAWAY · RFC 9113 §6.7, §6.8

table! {
    /// h2spec http2/6.7/1 · RFC 9113 §6.7: PING is answered with its payload.
    s6_7_ping: acked, f(PING, 0, 0, H2SPEC) => Then::Ping(H2SPEC);
    /// h2spec http2/6.7/2 · RFC 9113 §6.7: a PING ACK is not answered.
    s6_7_ping_ack_not_answered: acked,
        [f(PING, ACK, 0, b"invalid\0"), f(PING, 0, 0, H2SPEC)].concat()
        => Then::Ping(H2SPEC);
    /// h2spec http2/6.7/3 · RFC 9113 §6.7: PING on a stream is a connection
    /// error PROTOCOL_ERROR.
    s6_7_ping_nonzero_stream: acked, f(PING, 0, 1, ZEROS) => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.7/4 · RFC 9113 §6.7: PING of 6 bytes is a connection
    /// error FRAME_SIZE_ERROR.
    s6_7_ping_bad_length: acked, f(PING, 0, 0, [0; 6]) => Then::Goaway(FRAME_SIZE_ERROR, 0);
    /// h2spec http2/6.8/1 · RFC 9113 §6.8: GOAWAY on a stream is a connection
    /// error PROTOCOL_ERROR.
    s6_8_goaway_nonzero_stream: acked, f(GOAWAY, 0, 1, [0; 8]) => Then::Goaway(PROTOCOL_ERROR, 0);
}

// ---------------------------------------------------------------------------
// http2/6.9 WINDOW_UPDATE · RFC 9113 §6.9

table! {
    /// h2spec http2/6.9/1 · RFC 9113 §6.9: an increment of 0 on the
    /// connection is a connection error PROTOCOL_ERROR.
    s6_9_window_update_0_connection: acked,
        f(WINDOW_UPDATE, 0, 0, u32be(0)) => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.9/3 · RFC 9113 §6.9: WINDOW_UPDATE of 3 bytes is a
    /// connection error FRAME_SIZE_ERROR.
    s6_9_window_update_bad_length: acked,
        f(WINDOW_UPDATE, 0, 0, [0, 0, 1]) => Then::Goaway(FRAME_SIZE_ERROR, 0);
    /// h2spec http2/6.9.1/2 · RFC 9113 §6.9.1: the connection's window past
    /// 2^31-1 is a connection error FLOW_CONTROL_ERROR.
    s6_9_1_connection_window_overflow: acked,
        [f(WINDOW_UPDATE, 0, 0, u32be(0x7fff_ffff)),
         f(WINDOW_UPDATE, 0, 0, u32be(0x7fff_ffff))].concat()
        => Then::Goaway(FLOW_CONTROL_ERROR, 0);
    /// h2spec http2/6.9.2/3 · RFC 9113 §6.9.2: SETTINGS_INITIAL_WINDOW_SIZE
    /// of 2^31 is a connection error FLOW_CONTROL_ERROR.
    s6_9_2_initial_window_size_too_large_raw: acked, f(SETTINGS, 0, 0, [0, 4, 0x80, 0, 0, 0])
        => Then::Goaway(FLOW_CONTROL_ERROR, 0);
}

/// h2spec http2/6.9/2 · RFC 9113 §6.9: an increment of 0 on a stream is a
/// stream error PROTOCOL_ERROR (h2spec also takes a connection error;
/// herald's choice is the stream error). On an SSE stream, which stays
/// open.
#[tokio::test]
async fn s6_9_window_update_0_stream() {
    let (_h, mut c) = acked().await;
    c.open_sse(1, "u1").await;
    c.send(WINDOW_UPDATE, 0, 1, &u32be(0)).await;
    c.sse.remove(&1);
    c.expect_rst(1, PROTOCOL_ERROR).await;
}

/// h2spec http2/6.9.1/1 · RFC 9113 §6.9.1: with a window of 1 herald
/// sends DATA of 1 byte and no more.
#[tokio::test]
async fn s6_9_1_initial_window_1() {
    let (_h, mut c) = acked().await;
    c.send_settings(&[(INITIAL_WINDOW_SIZE, 1)]).await;
    c.expect_settings_ack().await;
    c.write(&get(1)).await;
    c.expect_headers(1, 200, false).await;
    c.expect_data(1, 1).await;
    c.ping().await;
}

/// h2spec http2/6.9.1/3 · RFC 9113 §6.9.1: a stream's window past 2^31-1
/// is a stream error FLOW_CONTROL_ERROR. On an SSE stream (h2spec's
/// `GET /` without END_STREAM may be answered first).
#[tokio::test]
async fn s6_9_1_stream_window_overflow() {
    let (_h, mut c) = acked().await;
    c.open_sse(1, "u1").await;
    c.write(
        &[
            f(WINDOW_UPDATE, 0, 1, u32be(0x7fff_ffff)),
            f(WINDOW_UPDATE, 0, 1, u32be(0x7fff_ffff)),
        ]
        .concat(),
    )
    .await;
    c.sse.remove(&1);
    c.expect_rst(1, FLOW_CONTROL_ERROR).await;
}

/// h2spec http2/6.9.2/1 · RFC 9113 §6.9.2: a new
/// SETTINGS_INITIAL_WINDOW_SIZE changes the open streams' windows (0,
/// then 1: DATA of 1 byte).
#[tokio::test]
async fn s6_9_2_initial_window_change_after_headers() {
    let (_h, mut c) = acked().await;
    c.send_settings(&[(INITIAL_WINDOW_SIZE, 0)]).await;
    c.expect_settings_ack().await;
    c.write(
        &[
            get(1),
            f(SETTINGS, 0, 0, settings(&[(INITIAL_WINDOW_SIZE, 1)])),
        ]
        .concat(),
    )
    .await;
    c.expect_headers(1, 200, false).await;
    c.expect_data(1, 1).await;
    c.ping().await;
}

/// h2spec http2/6.9.2/2 · RFC 9113 §6.9.2: a window made negative by
/// SETTINGS is tracked (3 sent, window 2 → -1, +2 → 1 byte more).
#[tokio::test]
async fn s6_9_2_negative_window() {
    let (_h, mut c) = acked().await;
    c.send_settings(&[(INITIAL_WINDOW_SIZE, 3)]).await;
    c.expect_settings_ack().await;
    c.write(&get(1)).await;
    c.expect_headers(1, 200, false).await;
    c.expect_data(1, 3).await;
    c.send_settings(&[(INITIAL_WINDOW_SIZE, 2)]).await;
    c.expect_settings_ack().await;
    c.send(WINDOW_UPDATE, 0, 1, &u32be(2)).await;
    c.expect_data(1, 1).await;
    c.ping().await;
}

// ---------------------------------------------------------------------------
// http2/6.10 CONTINUATION · RFC 9113 §6.10

table! {
    /// h2spec http2/6.10/1 · RFC 9113 §6.10: HEADERS then several
    /// CONTINUATION frames make one block.
    s6_10_multiple_continuation: acked,
        [f(HEADERS, END_STREAM, 1, blk(&COMMON)), f(CONTINUATION, 0, 1, dummy()),
         f(CONTINUATION, END_HEADERS, 1, dummy())].concat() => Then::Answer(200);
    /// h2spec http2/6.10/2 · RFC 9113 §6.10: a block cut by DATA is a
    /// connection error PROTOCOL_ERROR.
    s6_10_continuation_then_data: acked,
        [f(HEADERS, 0, 1, blk(&request("POST", "/", &[]))), f(CONTINUATION, 0, 1, dummy()),
         f(DATA, END_STREAM, 1, "test")].concat() => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.10/3 · RFC 9113 §6.10: CONTINUATION on stream 0 is a
    /// connection error PROTOCOL_ERROR.
    s6_10_continuation_stream_0: acked,
        [f(HEADERS, END_STREAM, 1, blk(&COMMON)), f(CONTINUATION, END_HEADERS, 0, dummy())].concat()
        => Then::Goaway(PROTOCOL_ERROR, 0);
    /// h2spec http2/6.10/4 · RFC 9113 §6.10: CONTINUATION after HEADERS with
    /// END_HEADERS is a connection error PROTOCOL_ERROR. (On an open publish,
    /// which is not answered meanwhile; h2spec's `GET /` may be.)
    s6_10_continuation_after_end_headers: acked,
        [open_publish(1, &[]), f(CONTINUATION, END_HEADERS, 1, dummy())].concat()
        => Then::Goaway(PROTOCOL_ERROR, 1);
    /// h2spec http2/6.10/5 · RFC 9113 §6.10: CONTINUATION after CONTINUATION
    /// with END_HEADERS is a connection error PROTOCOL_ERROR. (On a publish.)
    s6_10_continuation_after_continuation_end_headers: acked,
        [f(HEADERS, 0, 1, blk(&request("POST", PUBLISH, &[]))),
         f(CONTINUATION, END_HEADERS, 1, dummy()),
         f(CONTINUATION, END_HEADERS, 1, dummy())].concat() => Then::Goaway(PROTOCOL_ERROR, 1);
    /// h2spec http2/6.10/6 · RFC 9113 §6.10: CONTINUATION after DATA: the
    /// DATA inside the block is already a connection error PROTOCOL_ERROR.
    s6_10_continuation_after_data: acked,
        [f(HEADERS, 0, 1, blk(&request("POST", "/", &[]))), f(DATA, END_STREAM, 1, "test"),
         f(CONTINUATION, 0, 1, dummy()), f(CONTINUATION, END_HEADERS, 0, dummy())].concat()
        => Then::Goaway(PROTOCOL_ERROR, 0);
}

// ---------------------------------------------------------------------------
// http2/7 · RFC 9113 §7 Error Codes

/// h2spec http2/7/1 · RFC 9113 §7: GOAWAY with an unknown code triggers
/// nothing special: the PING is answered, or the connection ends without
/// an error.
#[tokio::test]
async fn s7_goaway_unknown_error_code() {
    let (_h, mut c) = acked().await;
    c.write(
        &[
            f(GOAWAY, 0, 0, goaway_payload(0, 0xff, b"")),
            f(PING, 0, 0, H2SPEC),
        ]
        .concat(),
    )
    .await;
    ping_or_close(&mut c, H2SPEC).await;
}

table! {
    /// h2spec http2/7/2 · RFC 9113 §7: RST_STREAM with an unknown code
    /// triggers nothing special. (On an open publish rather than `POST /`,
    /// which herald answers at once.)
    s7_rst_stream_unknown_error_code: acked,
        [open_publish(1, &[]), f(RST_STREAM, 0, 1, u32be(0xff)), f(PING, 0, 0, ZEROS)].concat()
        => Then::Ping(ZEROS);
}

// ---------------------------------------------------------------------------
// http2/8 · RFC 9113 §8 HTTP Message Exchanges

table! {
    /// h2spec http2/8.1/1 · RFC 9113 §8.1: a second HEADERS without
    /// END_STREAM (trailers must end the stream) is a stream error
    /// PROTOCOL_ERROR. On a publish: no answer.
    s8_1_second_headers_without_end_stream: acked,
        [open_publish(1, &[]), f(DATA, 0, 1, "test"),
         f(HEADERS, END_HEADERS, 1, blk(&[("x-test", "ok")]))].concat()
        => Then::Rst(PROTOCOL_ERROR);
    /// h2spec http2/8.1.2.1/3 · RFC 9113 §8.1: pseudo-header fields in
    /// trailers are a stream error PROTOCOL_ERROR. On a publish.
    s8_1_2_1_pseudo_header_in_trailers: acked,
        [open_publish(1, &[]), f(DATA, 0, 1, "test"),
         f(HEADERS, END_HEADERS, 1, blk(&[(":method", "POST")]))].concat()
        => Then::Rst(PROTOCOL_ERROR);
    /// h2spec http2/8.1.2.6/1 · RFC 9113 §8.1.1: content-length unlike the
    /// DATA is a stream error PROTOCOL_ERROR. On a publish: no answer.
    s8_1_2_6_content_length_mismatch: acked,
        [open_publish(1, &[("content-length", "1")]), f(DATA, END_STREAM, 1, "test")].concat()
        => Then::Rst(PROTOCOL_ERROR);
    /// h2spec http2/8.1.2.6/2 · RFC 9113 §8.1.1: content-length unlike the sum
    /// of the DATA frames. On a publish.
    s8_1_2_6_content_length_mismatch_multiple_data: acked,
        [open_publish(1, &[("content-length", "1")]), f(DATA, 0, 1, "test"),
         f(DATA, END_STREAM, 1, "test")].concat()
        => Then::Rst(PROTOCOL_ERROR);
    /// h2spec http2/8.2/1 · RFC 9113 §8.4: PUSH_PROMISE from a client is a
    /// connection error PROTOCOL_ERROR.
    s8_2_push_promise: acked, f(PUSH_PROMISE, END_HEADERS, 1, [u32be(3), blk(&COMMON)].concat())
        => Then::Goaway(PROTOCOL_ERROR, 0);
}

/// h2spec's `POST /` variants of the body cases: the frames under test
/// make the request malformed before it is complete, so it is never
/// answered: RST_STREAM PROTOCOL_ERROR on the stream.
async fn root_variant(extra: &[(&str, &str)], frames: Vec<u8>) {
    let (_h, mut c) = acked().await;
    post_root(&mut c, 1, extra).await;
    c.write(&frames).await;
    c.expect_rst(1, PROTOCOL_ERROR).await;
}

/// h2spec http2/8.1/1 · RFC 9113 §8.1, as h2spec sends it (`POST /`).
#[tokio::test]
async fn s8_1_second_headers_without_end_stream_root() {
    root_variant(
        &[],
        [
            f(DATA, 0, 1, "test"),
            f(HEADERS, END_HEADERS, 1, blk(&[("x-test", "ok")])),
        ]
        .concat(),
    )
    .await;
}

/// h2spec http2/8.1.2.1/3 · RFC 9113 §8.1, as h2spec sends it (`POST /`).
#[tokio::test]
async fn s8_1_2_1_pseudo_header_in_trailers_root() {
    root_variant(
        &[],
        [
            f(DATA, 0, 1, "test"),
            f(HEADERS, END_HEADERS, 1, blk(&[(":method", "POST")])),
        ]
        .concat(),
    )
    .await;
}

/// h2spec http2/8.1.2.6/1 · RFC 9113 §8.1.1, as h2spec sends it (`POST /`).
#[tokio::test]
async fn s8_1_2_6_content_length_mismatch_root() {
    root_variant(&[("content-length", "1")], f(DATA, END_STREAM, 1, "test")).await;
}

/// h2spec http2/8.1.2.6/2 · RFC 9113 §8.1.1, as h2spec sends it (`POST /`).
#[tokio::test]
async fn s8_1_2_6_content_length_mismatch_multiple_data_root() {
    root_variant(
        &[("content-length", "1")],
        [f(DATA, 0, 1, "test"), f(DATA, END_STREAM, 1, "test")].concat(),
    )
    .await;
}

malformed! {
    /// h2spec http2/8.1.2/1 · RFC 9113 §8.2.1: an uppercase field name.
    s8_1_2_uppercase_header_name: request("GET", "/", &[("X-TEST", "ok")]);
    /// h2spec http2/8.1.2.1/1 · RFC 9113 §8.3: an unknown pseudo-header.
    s8_1_2_1_unknown_pseudo_header: request("GET", "/", &[(":test", "ok")]);
    /// h2spec http2/8.1.2.1/2 · RFC 9113 §8.3: `:status` in a request.
    s8_1_2_1_response_pseudo_header: request("GET", "/", &[(":status", "200")]);
    /// h2spec http2/8.1.2.1/4 · RFC 9113 §8.3: a pseudo-header after a
    /// regular field.
    s8_1_2_1_pseudo_header_after_regular: [vec![("x-test", "ok")], COMMON.to_vec()].concat();
    /// h2spec http2/8.1.2.2/1 · RFC 9113 §8.2.2: a connection-specific field
    /// (`connection`).
    s8_1_2_2_connection_header: request("GET", "/", &[("connection", "keep-alive")]);
    /// h2spec http2/8.1.2.2/2 · RFC 9113 §8.2.2: `te` other than `trailers`.
    s8_1_2_2_te_not_trailers:
        request("GET", "/", &[("trailers", "test"), ("te", "trailers, deflate")]);
    /// h2spec http2/8.1.2.3/1 · RFC 9113 §8.3.1: an empty `:path`.
    s8_1_2_3_empty_path: request("GET", "", &[]);
    /// h2spec http2/8.1.2.3/2 · RFC 9113 §8.3.1: no `:method`.
    s8_1_2_3_missing_method: COMMON[1..].to_vec();
    /// h2spec http2/8.1.2.3/3 · RFC 9113 §8.3.1: no `:scheme`.
    s8_1_2_3_missing_scheme: vec![COMMON[0], COMMON[2], COMMON[3]];
    /// h2spec http2/8.1.2.3/4 · RFC 9113 §8.3.1: no `:path`.
    s8_1_2_3_missing_path: vec![COMMON[0], COMMON[1], COMMON[3]];
    /// h2spec http2/8.1.2.3/5 · RFC 9113 §8.3.1: `:method` twice.
    s8_1_2_3_duplicated_method: request("GET", "/", &[(":method", "GET")]);
    /// h2spec http2/8.1.2.3/6 · RFC 9113 §8.3.1: `:scheme` twice.
    s8_1_2_3_duplicated_scheme: request("GET", "/", &[(":scheme", "https")]);
    /// h2spec http2/8.1.2.3/7 · RFC 9113 §8.3.1: `:path` twice.
    s8_1_2_3_duplicated_path: request("GET", "/", &[(":path", "/")]);
}

// ---------------------------------------------------------------------------
// hpack/* · RFC 7541 (herald decoding)

table! {
    /// h2spec hpack/2.3.3/1 · RFC 7541 §2.3.3: an index past both tables is a
    /// decoding error (COMPRESSION_ERROR).
    hpack_2_3_3_indexed_invalid_index: acked, f(HEADERS, EH_ES, 1, common_then(b"\xc6"))
        => Then::Goaway(COMPRESSION_ERROR, 0);
    /// h2spec hpack/2.3.3/2 · RFC 7541 §2.3.3: a literal naming an index past
    /// both tables.
    hpack_2_3_3_literal_invalid_index: acked, f(HEADERS, EH_ES, 1, common_then(b"\x7f\x07\x00"))
        => Then::Goaway(COMPRESSION_ERROR, 0);
    /// h2spec hpack/4.2/1 · RFC 7541 §4.2: a size update at the end of a block.
    hpack_4_2_size_update_at_end: acked, f(HEADERS, EH_ES, 1, common_then(b"\x21"))
        => Then::Goaway(COMPRESSION_ERROR, 0);
    /// h2spec hpack/5.2/1 · RFC 7541 §5.2: Huffman padding longer than 7 bits.
    hpack_5_2_huffman_padding_over_7_bits: acked,
        f(HEADERS, EH_ES, 1, common_then(b"\x00\x85\xf2\xb2\x4a\x84\xff\x84\x49\x50\x9f\xff"))
        => Then::Goaway(COMPRESSION_ERROR, 0);
    /// h2spec hpack/5.2/2 · RFC 7541 §5.2: Huffman padding of zeros.
    hpack_5_2_huffman_padded_by_zero: acked,
        f(HEADERS, EH_ES, 1, common_then(b"\x00\x85\xf2\xb2\x4a\x84\xff\x83\x49\x50\x90"))
        => Then::Goaway(COMPRESSION_ERROR, 0);
    /// h2spec hpack/5.2/3 · RFC 7541 §5.2: a Huffman string holding EOS.
    hpack_5_2_huffman_eos: acked,
        f(HEADERS, EH_ES, 1, common_then(b"\x00\x85\xf2\xb2\x4a\x84\xff\x87\x49\x51\xff\xff\xff\xfa\x7f"))
        => Then::Goaway(COMPRESSION_ERROR, 0);
    /// h2spec hpack/6.1/1 · RFC 7541 §6.1: index 0.
    hpack_6_1_index_0: acked,
        f(HEADERS, EH_ES, 1, common_then(b"\x80")) => Then::Goaway(COMPRESSION_ERROR, 0);
    /// h2spec hpack/6.3/1 · RFC 7541 §6.3, §4.2: a size update above herald's
    /// SETTINGS_HEADER_TABLE_SIZE (0, ACKed): to 1.
    hpack_6_3_size_update_over_settings: acked,
        f(HEADERS, EH_ES, 1, [hpack::encode(&[Rep::SizeUpdate(1)]), blk(&COMMON)].concat())
        => Then::Goaway(COMPRESSION_ERROR, 0);
    /// herald · RFC 7541 §6.3: before the ACK the limit is 4,096: an update
    /// to 4,097 is a decoding error too.
    herald_hpack_size_update_over_4096_before_ack: unacked,
        f(HEADERS, EH_ES, 1, [hpack::encode(&[Rep::SizeUpdate(4097)]), blk(&COMMON)].concat())
        => Then::Goaway(COMPRESSION_ERROR, 0);
}

// ---------------------------------------------------------------------------
// generic/* (h2spec's generic tests: what a server must take)

/// h2spec generic/1/1 · RFC 9113 §3.4: the client's preface is answered with
/// herald's SETTINGS.
#[tokio::test]
async fn generic_1_client_preface() {
    preface_case().await;
}

table! {
    /// h2spec generic/2/1 · RFC 9113 §5.1: PRIORITY on an idle stream is taken.
    generic_2_priority_idle: acked,
        [f(PRIORITY, 0, 1, priority(0, false, 255)), f(PING, 0, 0, ZEROS)].concat()
        => Then::Ping(ZEROS);
    /// h2spec generic/3.1/1 · RFC 9113 §6.1: DATA (`POST /`: 405).
    generic_3_1_data: acked,
        [f(HEADERS, END_HEADERS, 1, blk(&request("POST", "/", &[]))),
         f(DATA, END_STREAM, 1, "test")].concat()
        => Then::Answer(405);
    /// h2spec generic/3.1/2 · RFC 9113 §6.1: several DATA frames.
    generic_3_1_multiple_data: acked,
        [f(HEADERS, END_HEADERS, 1, blk(&request("POST", "/", &[]))), f(DATA, 0, 1, "test"),
         f(DATA, END_STREAM, 1, "test")].concat() => Then::Answer(405);
    /// h2spec generic/3.1/3 · RFC 9113 §6.1: padded DATA.
    generic_3_1_data_padded: acked,
        [f(HEADERS, END_HEADERS, 1, blk(&request("POST", "/", &[]))),
         f(DATA, END_STREAM | PADDED, 1, padded(b"test", 5))].concat() => Then::Answer(405);
    /// h2spec generic/3.2/1 · RFC 9113 §6.2: HEADERS.
    generic_3_2_headers: acked, get(1) => Then::Answer(200);
    /// h2spec generic/3.2/2 · RFC 9113 §6.2: padded HEADERS.
    generic_3_2_headers_padded: acked,
        f(HEADERS, EH_ES | PADDED, 1, padded(&blk(&COMMON), 8)) => Then::Answer(200);
    /// h2spec generic/3.2/3 · RFC 9113 §6.2: HEADERS with priority.
    generic_3_2_headers_priority: acked,
        f(HEADERS, EH_ES | PRIORITY_FLAG, 1, [priority(0, false, 255), blk(&COMMON)].concat())
        => Then::Answer(200);
    /// h2spec generic/3.3/1 · RFC 9113 §6.3: PRIORITY of weight 1.
    generic_3_3_priority_weight_1: acked,
        [f(PRIORITY, 0, 1, priority(0, false, 0)), get(1)].concat() => Then::Answer(200);
    /// h2spec generic/3.3/2 · RFC 9113 §6.3: PRIORITY of weight 256.
    generic_3_3_priority_weight_256: acked,
        [f(PRIORITY, 0, 1, priority(0, false, 255)), get(1)].concat() => Then::Answer(200);
    /// h2spec generic/3.3/3 · RFC 9113 §6.3: PRIORITY with a dependency.
    generic_3_3_priority_dependency: acked,
        [f(PRIORITY, 0, 3, priority(1, false, 0)), get(1)].concat() => Then::Answer(200);
    /// h2spec generic/3.3/4 · RFC 9113 §6.3: exclusive PRIORITY.
    generic_3_3_priority_exclusive: acked,
        [f(PRIORITY, 0, 1, priority(0, true, 0)), get(1)].concat() => Then::Answer(200);
    /// h2spec generic/3.3/5 · RFC 9113 §6.3, §5.1.1: PRIORITY on idle stream
    /// 3 does not open it: HEADERS on stream 1 is still taken.
    generic_3_3_priority_idle_then_lower_headers: acked,
        [f(PRIORITY, 0, 3, priority(0, false, 255)), get(1)].concat() => Then::Answer(200);
    /// h2spec generic/3.4/1 · RFC 9113 §6.4: RST_STREAM. (On an open publish.)
    generic_3_4_rst_stream: acked,
        [open_publish(1, &[]), f(RST_STREAM, 0, 1, u32be(CANCEL))].concat() => Then::Quiet;
    /// h2spec generic/3.7/1 · RFC 9113 §6.7: PING.
    generic_3_7_ping: acked, f(PING, 0, 0, H2SPEC) => Then::Ping(H2SPEC);
    /// h2spec generic/3.9/1 · RFC 9113 §6.9: WINDOW_UPDATE on the connection.
    generic_3_9_window_update_connection: acked,
        [f(WINDOW_UPDATE, 0, 0, u32be(1)), f(PING, 0, 0, ZEROS)].concat()
        => Then::Ping(ZEROS);
    /// h2spec generic/3.9/2 · RFC 9113 §6.9: WINDOW_UPDATE on a stream (open
    /// or, once answered, closed: either way taken).
    generic_3_9_window_update_stream: acked,
        [get(1), f(WINDOW_UPDATE, 0, 1, u32be(1))].concat() => Then::Answer(200);
    /// h2spec generic/3.10/1 · RFC 9113 §6.10: CONTINUATION.
    generic_3_10_continuation: acked, {
        let b = blk(&COMMON);
        [f(HEADERS, END_STREAM, 1, &b[..5]), f(CONTINUATION, END_HEADERS, 1, &b[5..])].concat()
    } => Then::Answer(200);
    /// h2spec generic/3.10/2 · RFC 9113 §6.10: several CONTINUATION frames.
    generic_3_10_multiple_continuation: acked, {
        let b = blk(&COMMON);
        [f(HEADERS, END_STREAM, 1, &b[..5]), f(CONTINUATION, 0, 1, &b[5..10]),
         f(CONTINUATION, END_HEADERS, 1, &b[10..])].concat()
    } => Then::Answer(200);
    /// h2spec generic/4/1 · RFC 9113 §8.1: GET.
    generic_4_get: acked, get(1) => Then::Answer(200);
    /// h2spec generic/4/3 · RFC 9113 §8.1: POST (`/`: 405).
    generic_4_post: acked,
        [f(HEADERS, END_HEADERS, 1, blk(&request("POST", "/", &[]))),
         f(DATA, END_STREAM, 1, "test")].concat()
        => Then::Answer(405);
    /// h2spec generic/4/4 · RFC 9113 §8.1: POST with trailers (`/`: 405,
    /// the trailers taken).
    generic_4_post_trailers: acked,
        [f(HEADERS, END_HEADERS, 1, blk(&request("POST", "/", &[("trailer", "x-test")]))),
         f(DATA, 0, 1, "test"),
         f(HEADERS, EH_ES, 1, blk(&[("x-test", "ok")]))].concat() => Then::Answer(405);
}

/// h2spec generic/2/2 · RFC 9113 §5.1: WINDOW_UPDATE on a half-closed
/// (remote) stream lets DATA out.
#[tokio::test]
async fn generic_2_window_update_half_closed_remote() {
    let (_h, mut c) = acked().await;
    c.write(
        &[
            f(SETTINGS, 0, 0, settings(&[(INITIAL_WINDOW_SIZE, 0)])),
            get(1),
            f(WINDOW_UPDATE, 0, 1, u32be(1)),
        ]
        .concat(),
    )
    .await;
    c.expect_headers(1, 200, false).await;
    c.expect_data(1, 1).await;
    c.ping().await;
}

/// h2spec generic/2/3 · RFC 9113 §5.1: PRIORITY on a half-closed (remote)
/// stream is taken.
#[tokio::test]
async fn generic_2_priority_half_closed_remote() {
    let (_h, mut c) = acked().await;
    c.write(
        &[
            f(SETTINGS, 0, 0, settings(&[(INITIAL_WINDOW_SIZE, 0)])),
            get(1),
            f(PRIORITY, 0, 1, priority(0, false, 255)),
            f(WINDOW_UPDATE, 0, 1, u32be(1)),
        ]
        .concat(),
    )
    .await;
    c.expect_headers(1, 200, false).await;
    c.expect_data(1, 1).await;
    c.ping().await;
}

/// h2spec generic/2/4 · RFC 9113 §5.1: RST_STREAM on a half-closed
/// (remote) stream is taken (an SSE stream: nothing more on it).
#[tokio::test]
async fn generic_2_rst_half_closed_remote() {
    let (_h, mut c) = acked().await;
    c.open_sse(1, "u1").await;
    c.send(RST_STREAM, 0, 1, &u32be(CANCEL)).await;
    c.sse.remove(&1);
    c.alive().await;
}

/// h2spec generic/2/5 · RFC 9113 §5.1: PRIORITY on a closed stream is
/// taken.
#[tokio::test]
async fn generic_2_priority_closed() {
    let (_h, mut c) = acked().await;
    c.write(&get(1)).await;
    c.expect_answer(1, 200).await;
    c.send(PRIORITY, 0, 1, &priority(0, false, 255)).await;
    c.alive().await;
}

/// h2spec generic/3.5/1 · RFC 9113 §6.5: SETTINGS with every defined
/// parameter is ACKed.
#[tokio::test]
async fn generic_3_5_settings() {
    let (_h, mut c) = acked().await;
    c.send_settings(&[
        (HEADER_TABLE_SIZE, 4096),
        (ENABLE_PUSH, 1),
        (MAX_CONCURRENT_STREAMS, 100),
        (INITIAL_WINDOW_SIZE, 65_535),
        (MAX_FRAME_SIZE, 16_384),
        (MAX_HEADER_LIST_SIZE, 100),
    ])
    .await;
    c.expect_settings_ack().await;
    c.alive().await;
}

/// h2spec generic/3.8/1 · RFC 9113 §6.8: GOAWAY from the client: the PING
/// is answered, or the connection ends without an error.
#[tokio::test]
async fn generic_3_8_goaway() {
    let (_h, mut c) = acked().await;
    c.write(
        &[
            f(GOAWAY, 0, 0, goaway_payload(0, NO_ERROR, b"h2spec")),
            f(PING, 0, 0, H2SPEC),
        ]
        .concat(),
    )
    .await;
    ping_or_close(&mut c, H2SPEC).await;
}

/// HEAD `path`: HEADERS `:status 200` with END_STREAM and a content-length
/// (the GET's body length), no DATA; the connection goes on.
async fn head(path: &str) {
    let (_h, mut c) = acked().await;
    c.headers(1, &request("GET", path, &[]), true).await;
    let body = c.expect_answer(1, 200).await.body.len();
    c.headers(3, &request("HEAD", path, &[]), true).await;
    let h = c.expect_headers(3, 200, true).await;
    assert_eq!(
        h.field("content-length"),
        Some(body.to_string().as_str()),
        "HEAD's content-length"
    );
    c.alive().await;
}

/// h2spec generic/4/2 · RFC 9113 §8.1, RFC 9110 §9.3.2: HEAD.
#[tokio::test]
async fn generic_4_head() {
    head("/").await;
}

/// herald · RFC 9110 §9.3.2: HEAD /health/live.
#[tokio::test]
async fn herald_head_health_live() {
    head("/health/live").await;
}

/// `COMMON` then `rep`, as one representation of h2spec's generic/5 cases.
fn hpack_case(rep: &'static [u8]) -> Vec<u8> {
    f(HEADERS, EH_ES, 1, common_then(rep))
}

const INC_INDEXED_NAME: &[u8] = b"\x40\x87\xb5\x05\xb1\x61\xcc\x5a\x93\x84\x9c\x48\xac\xa4";
const INC_INDEXED_NAME_HUFFMAN: &[u8] =
    b"\x40\x0a\x75\x73\x65\x72\x2d\x61\x67\x65\x6e\x74\x06\x68\x32\x73\x70\x65\x63";
const INC_NEW_NAME: &[u8] = b"\x40\x06\x78\x2d\x74\x65\x73\x74\x06\x68\x32\x73\x70\x65\x63";
const INC_NEW_NAME_HUFFMAN: &[u8] = b"\x40\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4";

table! {
    /// h2spec generic/5/1 · RFC 7541 §6.1: an indexed field (58, user-agent).
    generic_5_1_indexed: acked, hpack_case(b"\xba") => Then::Answer(200);
    /// h2spec generic/5/2 · RFC 7541 §6.2.1: literal with incremental
    /// indexing (h2spec's bytes: a new name, Huffman), after herald's SETTINGS
    /// are ACKed (table 0: the entry is evicted at once).
    generic_5_2_literal_incremental_indexed_name: acked,
        hpack_case(INC_INDEXED_NAME) => Then::Answer(200);
    /// h2spec generic/5/2, before the ACK (table 4,096).
    generic_5_2_literal_incremental_indexed_name_before_ack: unacked,
        hpack_case(INC_INDEXED_NAME) => Then::Answer(200);
    /// h2spec generic/5/3 · RFC 7541 §6.2.1 (h2spec's bytes: a new name, no
    /// Huffman), after the ACK.
    generic_5_3_literal_incremental_indexed_name_huffman: acked,
        hpack_case(INC_INDEXED_NAME_HUFFMAN) => Then::Answer(200);
    /// h2spec generic/5/3, before the ACK.
    generic_5_3_literal_incremental_indexed_name_huffman_before_ack: unacked,
        hpack_case(INC_INDEXED_NAME_HUFFMAN) => Then::Answer(200);
    /// h2spec generic/5/4 · RFC 7541 §6.2.1: a new name, after the ACK.
    generic_5_4_literal_incremental_new_name: acked, hpack_case(INC_NEW_NAME) => Then::Answer(200);
    /// h2spec generic/5/4, before the ACK.
    generic_5_4_literal_incremental_new_name_before_ack: unacked,
        hpack_case(INC_NEW_NAME) => Then::Answer(200);
    /// h2spec generic/5/5 · RFC 7541 §6.2.1: a new name, Huffman, after the ACK.
    generic_5_5_literal_incremental_new_name_huffman: acked,
        hpack_case(INC_NEW_NAME_HUFFMAN) => Then::Answer(200);
    /// h2spec generic/5/5, before the ACK.
    generic_5_5_literal_incremental_new_name_huffman_before_ack: unacked,
        hpack_case(INC_NEW_NAME_HUFFMAN) => Then::Answer(200);
    /// h2spec generic/5/6 · RFC 7541 §6.2.2: literal without indexing.
    generic_5_6_literal_without_indexing_indexed_name: acked,
        hpack_case(b"\x00\x0a\x75\x73\x65\x72\x2d\x61\x67\x65\x6e\x74\x06\x68\x32\x73\x70\x65\x63")
        => Then::Answer(200);
    /// h2spec generic/5/7 · RFC 7541 §6.2.2 (Huffman).
    generic_5_7_literal_without_indexing_indexed_name_huffman: acked,
        hpack_case(b"\x00\x87\xb5\x05\xb1\x61\xcc\x5a\x93\x84\x9c\x48\xac\xa4")
        => Then::Answer(200);
    /// h2spec generic/5/8 · RFC 7541 §6.2.2: a new name.
    generic_5_8_literal_without_indexing_new_name: acked,
        hpack_case(b"\x00\x06\x78\x2d\x74\x65\x73\x74\x06\x68\x32\x73\x70\x65\x63")
        => Then::Answer(200);
    /// h2spec generic/5/9 · RFC 7541 §6.2.2: a new name, Huffman.
    generic_5_9_literal_without_indexing_new_name_huffman: acked,
        hpack_case(b"\x00\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4") => Then::Answer(200);
    /// h2spec generic/5/10 · RFC 7541 §6.2.3: literal never indexed.
    generic_5_10_literal_never_indexed_indexed_name: acked,
        hpack_case(b"\x10\x0a\x75\x73\x65\x72\x2d\x61\x67\x65\x6e\x74\x06\x68\x32\x73\x70\x65\x63")
        => Then::Answer(200);
    /// h2spec generic/5/11 · RFC 7541 §6.2.3 (Huffman).
    generic_5_11_literal_never_indexed_indexed_name_huffman: acked,
        hpack_case(b"\x10\x87\xb5\x05\xb1\x61\xcc\x5a\x93\x84\x9c\x48\xac\xa4")
        => Then::Answer(200);
    /// h2spec generic/5/12 · RFC 7541 §6.2.3: a new name.
    generic_5_12_literal_never_indexed_new_name: acked,
        hpack_case(b"\x10\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4") => Then::Answer(200);
    /// h2spec generic/5/13 · RFC 7541 §6.2.3: a new name, Huffman (h2spec
    /// sends the same bytes as generic/5/12).
    generic_5_13_literal_never_indexed_new_name_huffman: acked,
        hpack_case(b"\x10\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4") => Then::Answer(200);
    /// h2spec generic/5/14 · RFC 7541 §6.3: a dynamic table size update;
    /// after the ACK only an update to 0 is allowed: to 0.
    generic_5_14_size_update: acked,
        f(HEADERS, EH_ES, 1, [hpack::encode(&[Rep::SizeUpdate(0)]), blk(&COMMON)].concat())
        => Then::Answer(200);
    /// h2spec generic/5/14 as h2spec sends it (an update to 128), before the
    /// ACK, when the limit is 4,096.
    generic_5_14_size_update_before_ack: unacked,
        f(HEADERS, EH_ES, 1, [hpack::encode(&[Rep::SizeUpdate(128)]), blk(&COMMON)].concat())
        => Then::Answer(200);
    /// h2spec generic/5/14 as h2spec sends it, after the ACK: above herald's
    /// SETTINGS_HEADER_TABLE_SIZE of 0, a decoding error (herald's rule;
    /// h2spec itself would count this case failed).
    generic_5_14_size_update_128_after_ack: acked,
        f(HEADERS, EH_ES, 1, [hpack::encode(&[Rep::SizeUpdate(128)]), blk(&COMMON)].concat())
        => Then::Goaway(COMPRESSION_ERROR, 0);
    /// h2spec generic/5/15 · RFC 7541 §4.2: several size updates at the start
    /// of a block, after the ACK: to 0 twice.
    generic_5_15_multiple_size_updates: acked,
        f(HEADERS, EH_ES, 1, [b"\x20\x20".to_vec(), blk(&COMMON)].concat()) => Then::Answer(200);
    /// h2spec generic/5/15 as h2spec sends it (128, then 4,096), before the ACK.
    generic_5_15_multiple_size_updates_before_ack: unacked,
        f(HEADERS, EH_ES, 1, [b"\x3f\x61\x3f\xe1\x1f".to_vec(), blk(&COMMON)].concat())
        => Then::Answer(200);
    /// h2spec generic/5/15 as h2spec sends it, after the ACK: a decoding
    /// error (herald's rule).
    generic_5_15_multiple_size_updates_over_0_after_ack: acked,
        f(HEADERS, EH_ES, 1, [b"\x3f\x61\x3f\xe1\x1f".to_vec(), blk(&COMMON)].concat())
        => Then::Goaway(COMPRESSION_ERROR, 0);
}

// ---------------------------------------------------------------------------
// herald's own cases: HPACK

/// The client side of these tests encodes as RFC 7541's examples and
/// h2spec's bytes have it (a check on the client, not on herald).
#[test]
fn client_hpack_matches_the_rfc() {
    assert_eq!(
        hpack::huffman_encode(b"www.example.com"),
        b"\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff"
    );
    assert_eq!(hpack::huffman_encode(b"x-test"), b"\xf2\xb2\x4a\x84\xff");
    assert_eq!(hpack::huffman_encode(b"h2spec"), b"\x9c\x48\xac\xa4");
    assert_eq!(
        hpack::huffman_encode(b"user-agent"),
        b"\xb5\x05\xb1\x61\xcc\x5a\x93"
    );
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(
        hpack::huffman_decode(&hpack::huffman_encode(&all)).unwrap(),
        all
    );
    let block = hpack::encode(&[
        Rep::SizeUpdate(0),
        Rep::Indexed(2),
        Rep::Literal {
            lit: Lit::Incremental,
            name: Name::New("x-test"),
            value: "h2spec",
            huffman: true,
        },
        Rep::Literal {
            lit: Lit::Without,
            name: Name::Index(1),
            value: "localhost",
            huffman: false,
        },
        Rep::Literal {
            lit: Lit::Never,
            name: Name::Index(58),
            value: "h2spec",
            huffman: true,
        },
    ]);
    assert_eq!(&block[..1], b"\x20");
    assert_eq!(&block[2..14], INC_NEW_NAME_HUFFMAN);
    let mut d = hpack::Decoder::new(4096);
    let got = d.decode(&block).unwrap();
    let fields: Vec<(&str, &str)> = got
        .fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            (":method", "GET"),
            ("x-test", "h2spec"),
            (":authority", "localhost"),
            ("user-agent", "h2spec")
        ]
    );
    assert_eq!((got.size_updates, got.indexes), (vec![0], true));
    for bad in [
        &b"\x00\x85\xf2\xb2\x4a\x84\xff\x84\x49\x50\x9f\xff"[..],
        b"\x00\x85\xf2\xb2\x4a\x84\xff\x83\x49\x50\x90",
        b"\x00\x85\xf2\xb2\x4a\x84\xff\x87\x49\x51\xff\xff\xff\xfa\x7f",
        b"\x80",
        b"\xc6",
    ] {
        assert!(
            hpack::Decoder::new(4096).decode(bad).is_err(),
            "{bad:02x?} decodes"
        );
    }
}

/// herald · RFC 7541 §4.2: herald's first header block on a connection
/// opens with a Dynamic Table Size Update to 0 (0x20); no block indexes
/// anything (checked on every block the client reads).
#[tokio::test]
async fn herald_hpack_encoder_first_block_opens_with_size_update() {
    let (_h, mut c) = acked().await;
    c.headers(1, &request("GET", "/health/live", &[]), true)
        .await;
    let h = c.expect_headers(1, 200, false).await;
    let b = h.block.unwrap();
    assert!(b.size_update_due);
    assert_eq!(
        b.decoded.first_byte,
        Some(0x20),
        "herald's first block: {:?}",
        b.decoded
    );
    assert_eq!(b.decoded.size_updates, vec![0]);
    c.must("the DATA").await;
    c.alive().await;
}

/// herald · RFC 7541 §4.2: after each SETTINGS of the client carrying
/// SETTINGS_HEADER_TABLE_SIZE, herald's next block opens with 0x20.
#[tokio::test]
async fn herald_hpack_encoder_size_update_after_settings() {
    let (_h, mut c) = acked().await;
    c.headers(1, &request("GET", "/health/live", &[]), true)
        .await;
    c.expect_answer(1, 200).await;
    for (id, size) in [(3u32, 4096u32), (5, 0), (7, 100)] {
        c.send_settings(&[(HEADER_TABLE_SIZE, size)]).await;
        c.expect_settings_ack().await;
        c.headers(id, &request("GET", "/health/live", &[]), true)
            .await;
        let h = c.expect_headers(id, 200, false).await;
        let b = h.block.unwrap();
        assert!(b.size_update_due);
        assert_eq!(
            b.decoded.first_byte,
            Some(0x20),
            "block after SETTINGS_HEADER_TABLE_SIZE {size}: {:?}",
            b.decoded
        );
        c.must("the DATA").await;
    }
    c.alive().await;
}

/// A literal with incremental indexing of `x-test: h2spec` (table entry 62).
const X_TEST_INC: &[u8] = b"\x40\x06x-test\x06h2spec";

/// herald · RFC 7541 §2.3.3, §4.2: after the ACK herald's table is 0: a
/// reference to dynamic index 62 is a decoding error, even right after a
/// literal with incremental indexing (which is taken, and evicted).
#[tokio::test]
async fn herald_hpack_dynamic_reference_after_ack() {
    let (_h, mut c) = acked().await;
    c.send(HEADERS, EH_ES, 1, &common_then(X_TEST_INC)).await;
    c.expect_answer(1, 200).await;
    c.send(HEADERS, EH_ES, 3, &common_then(b"\xbe")).await;
    c.expect_goaway(COMPRESSION_ERROR, 1).await;
}

/// herald · RFC 7541 §2.3.2: before the ACK the table is 4,096: an entry
/// added by one block is referred to by the next.
#[tokio::test]
async fn herald_hpack_dynamic_reference_before_ack() {
    let (_h, mut c) = unacked().await;
    c.send(HEADERS, EH_ES, 1, &common_then(X_TEST_INC)).await;
    c.expect_answer(1, 200).await;
    c.send(HEADERS, EH_ES, 3, &common_then(b"\xbe")).await;
    c.expect_answer(3, 200).await;
    c.alive().await;
}

/// herald · RFC 7541 §4.2: the entries added before the ACK are gone once
/// the client ACKs (the table shrinks to 0).
#[tokio::test]
async fn herald_hpack_entries_gone_after_ack() {
    let (_h, mut c) = unacked().await;
    c.send(HEADERS, EH_ES, 1, &common_then(X_TEST_INC)).await;
    c.expect_answer(1, 200).await;
    c.write(
        &[
            f(SETTINGS, ACK, 0, []),
            f(HEADERS, EH_ES, 3, common_then(b"\xbe")),
        ]
        .concat(),
    )
    .await;
    c.expect_goaway(COMPRESSION_ERROR, 1).await;
}

// ---------------------------------------------------------------------------
// herald's own cases: stream states, priority, SETTINGS, GOAWAY, requests

/// herald · RFC 9113 §5.1 half-closed (remote): WINDOW_UPDATE, PRIORITY
/// are taken and the stream goes on (an event published later arrives).
#[tokio::test]
async fn herald_half_closed_remote_window_update_and_priority_taken() {
    let (_h, mut c) = acked().await;
    c.open_sse(1, "u1").await;
    c.write(
        &[
            f(WINDOW_UPDATE, 0, 1, u32be(1000)),
            f(PRIORITY, 0, 1, priority(0, false, 16)),
        ]
        .concat(),
    )
    .await;
    c.ping().await;
    c.sse.remove(&1);
    let body = r#"{"event":"after","data":"x","target":"all"}"#;
    c.send(
        HEADERS,
        END_HEADERS,
        3,
        &blk(&request(
            "POST",
            PUBLISH,
            &[("content-type", "application/json")],
        )),
    )
    .await;
    c.send(DATA, END_STREAM, 3, body.as_bytes()).await;
    let mut answered = false;
    let mut event = false;
    while !(answered && event) {
        let fr = c
            .must("the publish's answer and the event on stream 1")
            .await;
        match (fr.kind, fr.stream) {
            (HEADERS, 3) => assert_eq!(fr.status(), Some(202), "{}", fr.describe()),
            (DATA, 3) => answered |= fr.end_stream(),
            (DATA, 1) if !fr.end_stream() => {
                event |= String::from_utf8_lossy(&fr.payload).contains("after")
            }
            _ => panic!("herald sent {}", fr.describe()),
        }
    }
    c.alive().await;
}

/// herald · RFC 9113 §5.1 closed (both sides ended): WINDOW_UPDATE,
/// RST_STREAM and PRIORITY are ignored (nothing sent, the connection
/// stays).
#[tokio::test]
async fn herald_closed_window_update_rst_priority_ignored() {
    let (_h, mut c) = acked().await;
    c.write(&get(1)).await;
    c.expect_answer(1, 200).await;
    c.write(
        &[
            f(WINDOW_UPDATE, 0, 1, u32be(1)),
            f(RST_STREAM, 0, 1, u32be(CANCEL)),
            f(PRIORITY, 0, 1, priority(0, false, 255)),
        ]
        .concat(),
    )
    .await;
    c.alive().await;
}

/// herald · RFC 9113 §5.4.2, §6.4: a stream herald reset (a malformed
/// request) ignores every frame after it; DATA's length is still given
/// back to the connection's window (WINDOW_UPDATE on stream 0).
#[tokio::test]
async fn herald_closed_by_herald_frames_ignored() {
    let (_h, mut c) = acked().await;
    c.send(
        HEADERS,
        END_HEADERS,
        1,
        &blk(&request("POST", PUBLISH, &[("connection", "close")])),
    )
    .await;
    c.expect_rst_only(1, PROTOCOL_ERROR).await;
    let noise = c.noise.len();
    c.write(
        &[
            f(DATA, 0, 1, "test"),
            get(1),
            f(WINDOW_UPDATE, 0, 1, u32be(1)),
            f(PRIORITY, 0, 1, priority(0, false, 255)),
            f(RST_STREAM, 0, 1, u32be(CANCEL)),
        ]
        .concat(),
    )
    .await;
    c.ping().await;
    let after: Vec<String> = c.noise[noise..].iter().map(Frame::describe).collect();
    assert_eq!(
        after,
        ["WINDOW_UPDATE(stream 0, +4)"],
        "what herald sent for the ignored frames"
    );
    c.alive().await;
}

/// herald · RFC 9113 §5.3.1: PRIORITY depending on its own stream, an
/// open one: a stream error PROTOCOL_ERROR.
#[tokio::test]
async fn herald_priority_self_dependency_open_stream() {
    let (_h, mut c) = acked().await;
    c.open_sse(1, "u1").await;
    c.send(PRIORITY, 0, 1, &priority(1, false, 255)).await;
    c.sse.remove(&1);
    c.expect_rst(1, PROTOCOL_ERROR).await;
}

/// herald · RFC 9113 §6.3: PRIORITY of 4 bytes on an open SSE stream: a
/// stream error FRAME_SIZE_ERROR, and no DATA on it after (an event
/// published later does not arrive there).
#[tokio::test]
async fn herald_priority_bad_length_open_sse_stream() {
    let (_h, mut c) = acked().await;
    c.open_sse(1, "u1").await;
    c.write(b"\x00\x00\x04\x02\x00\x00\x00\x00\x01\x80\x00\x00\x03")
        .await;
    c.sse.remove(&1);
    c.expect_rst_only(1, FRAME_SIZE_ERROR).await;
    let body = r#"{"event":"after","data":"x","target":"all"}"#;
    c.send(
        HEADERS,
        END_HEADERS,
        3,
        &blk(&request("POST", PUBLISH, &[])),
    )
    .await;
    c.send(DATA, END_STREAM, 3, body.as_bytes()).await;
    c.expect_answer(3, 202).await;
    c.alive().await;
}

table! {
    /// herald · RFC 9113 §6.3, §6.4: PRIORITY of 4 bytes on an idle stream,
    /// where RST_STREAM may not be sent: a connection error FRAME_SIZE_ERROR
    /// (h2spec's check for http2/6.3/2 takes that too).
    herald_priority_bad_length_idle: acked,
        b"\x00\x00\x04\x02\x00\x00\x00\x00\x01\x80\x00\x00\x03".to_vec()
        => Then::Goaway(FRAME_SIZE_ERROR, 0);
    /// herald · RFC 9113 §6.2, §4.2: HEADERS with the PRIORITY flag and fewer
    /// than its 5 bytes: a connection error FRAME_SIZE_ERROR.
    herald_headers_priority_too_short: acked,
        f(HEADERS, EH_ES | PRIORITY_FLAG, 1, [0, 0, 0]) => Then::Goaway(FRAME_SIZE_ERROR, 0);
    /// herald · RFC 9113 §6.5: more than 32 settings in one frame: a
    /// connection error ENHANCE_YOUR_CALM.
    herald_settings_over_32_entries: acked, f(SETTINGS, 0, 0, settings(&[(ENABLE_PUSH, 0); 33]))
        => Then::Goaway(ENHANCE_YOUR_CALM, 0);
    /// herald · RFC 9218 §2.1: SETTINGS_NO_RFC7540_PRIORITIES above 1: a
    /// connection error PROTOCOL_ERROR.
    herald_settings_no_rfc7540_priorities_2: acked,
        f(SETTINGS, 0, 0, settings(&[(NO_RFC7540_PRIORITIES, 2)]))
        => Then::Goaway(PROTOCOL_ERROR, 0);
    /// herald · RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL above 1: a
    /// connection error PROTOCOL_ERROR.
    herald_settings_enable_connect_protocol_2: acked,
        f(SETTINGS, 0, 0, settings(&[(ENABLE_CONNECT_PROTOCOL, 2)]))
        => Then::Goaway(PROTOCOL_ERROR, 0);
    /// herald · RFC 9113 §6.8: GOAWAY shorter than 8 bytes: a connection error
    /// FRAME_SIZE_ERROR.
    herald_goaway_too_short: acked, f(GOAWAY, 0, 0, [0; 4]) => Then::Goaway(FRAME_SIZE_ERROR, 0);
    /// herald · RFC 9113 §4.2: DATA of 16,384 bytes is a body like any other
    /// (a publish of exactly that size: 202).
    herald_data_16384_body_route: acked, {
        let body = serde_json::json!({"event": "x", "data": "", "target": "all"}).to_string();
        let data = "y".repeat(16_384 - body.len());
        let body = serde_json::json!({"event": "x", "data": data, "target": "all"}).to_string();
        assert_eq!(body.len(), 16_384);
        [open_publish(1, &[]), f(DATA, END_STREAM, 1, body)].concat()
    } => Then::Answer(202);
    /// herald · RFC 9113 §8.1.1: content-length above the body: a stream
    /// error PROTOCOL_ERROR, no answer.
    herald_content_length_longer_than_body: acked,
        [open_publish(1, &[("content-length", "10")]), f(DATA, END_STREAM, 1, "test")].concat()
        => Then::Rst(PROTOCOL_ERROR);
}

table! {
    /// herald · RFC 9113 §8.1: pseudo-header fields in trailers that end the
    /// stream: a stream error PROTOCOL_ERROR (no answer).
    herald_pseudo_header_in_trailers_ending_stream: acked,
        [open_publish(1, &[]), f(DATA, 0, 1, r#"{"event":"x","data":"y","target":"all"}"#),
         f(HEADERS, EH_ES, 1, blk(&[(":path", "/")]))].concat() => Then::Rst(PROTOCOL_ERROR);
    /// herald · routes: an unknown path is 404 (JSON), as over HTTP/1.1.
    herald_unknown_path_404: acked, f(HEADERS, EH_ES, 1, blk(&request("GET", "/nope", &[])))
        => Then::Answer(404);
    /// herald · routes: a method a route does not take is 405 (JSON).
    herald_wrong_method_405: acked,
        f(HEADERS, EH_ES, 1, blk(&request("DELETE", "/health/live", &[])))
        => Then::Answer(405);
}

/// herald · routes: OPTIONS without an Origin is 204 with `allow`, the
/// HEADERS ending the stream.
#[tokio::test]
async fn herald_options() {
    let (_h, mut c) = acked().await;
    c.headers(1, &request("OPTIONS", "/api/broadcast", &[]), true)
        .await;
    let a = c.expect_answer(1, 204).await;
    assert!(a.headers_ended && a.body.is_empty(), "{a:?}");
    assert!(a.field("allow").is_some(), "{a:?}");
    c.alive().await;
}

/// The preface, then `frames` as the first frames: a connection error
/// PROTOCOL_ERROR (RFC 9113 §3.4: the client's first frame is SETTINGS).
async fn first_frame(frames: Vec<u8>) {
    let h = herald(&[]);
    let mut c = H2::tls(&h, &cert().der).await;
    c.write(&[PREFACE.to_vec(), frames].concat()).await;
    let first = c.must("herald's SETTINGS").await;
    assert!(
        first.kind == SETTINGS && !first.ack(),
        "herald sent {}",
        first.describe()
    );
    c.expect_goaway(PROTOCOL_ERROR, 0).await;
}

/// herald · RFC 9113 §3.4: a first frame other than SETTINGS.
#[tokio::test]
async fn herald_first_frame_not_settings() {
    first_frame(f(PING, 0, 0, ZEROS)).await;
}

/// herald · RFC 9113 §3.4: a SETTINGS ACK as the first frame.
#[tokio::test]
async fn herald_first_frame_settings_ack() {
    first_frame(f(SETTINGS, ACK, 0, [])).await;
}

/// herald · RFC 9113 §6.5.3: SETTINGS_INITIAL_WINDOW_SIZE many times in
/// one frame: the last applies (2 bytes of DATA).
#[tokio::test]
async fn herald_settings_initial_window_many_last_applies() {
    let (_h, mut c) = acked().await;
    let mut entries = Vec::new();
    for v in [0u32, 100, 1, 65_535, 7] {
        entries.push((INITIAL_WINDOW_SIZE, v));
    }
    entries.push((INITIAL_WINDOW_SIZE, 2));
    c.send_settings(&entries).await;
    c.expect_settings_ack().await;
    c.write(&get(1)).await;
    c.expect_headers(1, 200, false).await;
    c.expect_data(1, 2).await;
    c.ping().await;
}

/// herald · GET /health/live: 200 with its JSON body, its content-length.
#[tokio::test]
async fn herald_get_health_live() {
    let (_h, mut c) = acked().await;
    c.headers(1, &request("GET", "/health/live", &[]), true)
        .await;
    let a = c.expect_answer(1, 200).await;
    assert_eq!(a.json()["status"], "live");
    assert_eq!(
        a.field("content-length"),
        Some(a.body.len().to_string().as_str())
    );
    c.alive().await;
}

/// herald · RFC 9113 §8.2.2: `te: trailers` is allowed.
#[tokio::test]
async fn herald_te_trailers_accepted() {
    let (_h, mut c) = acked().await;
    c.headers(
        1,
        &request("GET", "/health/live", &[("te", "trailers")]),
        true,
    )
    .await;
    c.expect_answer(1, 200).await;
    c.alive().await;
}

malformed! {
    /// herald · RFC 9113 §8.2.2: `keep-alive`.
    herald_malformed_keep_alive: request("GET", "/", &[("keep-alive", "timeout=5")]);
    /// herald · RFC 9113 §8.2.2: `proxy-connection`.
    herald_malformed_proxy_connection: request("GET", "/", &[("proxy-connection", "keep-alive")]);
    /// herald · RFC 9113 §8.2.2: `transfer-encoding`.
    herald_malformed_transfer_encoding: request("GET", "/", &[("transfer-encoding", "chunked")]);
    /// herald · RFC 9113 §8.2.2: `upgrade`.
    herald_malformed_upgrade: request("GET", "/", &[("upgrade", "websocket")]);
    /// herald · RFC 9113 §8.2.1: a value holding CR.
    herald_malformed_value_cr: request("GET", "/", &[("x-test", "a\rb")]);
    /// herald · RFC 9113 §8.2.1: a value holding LF.
    herald_malformed_value_lf: request("GET", "/", &[("x-test", "a\nb")]);
    /// herald · RFC 9113 §8.2.1: a value holding NUL.
    herald_malformed_value_nul: request("GET", "/", &[("x-test", "a\0b")]);
    /// herald · RFC 9113 §8.2.1: a value starting with a space.
    herald_malformed_value_leading_space: request("GET", "/", &[("x-test", " ab")]);
    /// herald · RFC 9113 §8.2.1: a value ending with a space.
    herald_malformed_value_trailing_space: request("GET", "/", &[("x-test", "ab ")]);
    /// herald · RFC 9113 §8.2.1: a value starting with a tab.
    herald_malformed_value_leading_tab: request("GET", "/", &[("x-test", "\tab")]);
    /// herald · RFC 9113 §8.2.1: a value ending with a tab.
    herald_malformed_value_trailing_tab: request("GET", "/", &[("x-test", "ab\t")]);
}

// ---------------------------------------------------------------------------
// herald's own cases: floods (each ends the connection with GOAWAY
// ENHANCE_YOUR_CALM), and a normal exchange that is not one

/// Write `prelude`, then `frames` in writes of 64, while reading everything
/// herald sends: it must end with GOAWAY(ENHANCE_YOUR_CALM) (last stream id
/// at most `max_last`) and close.
async fn flood(prelude: Vec<u8>, frames: impl Iterator<Item = Vec<u8>>, max_last: u32) {
    let (_h, c) = acked().await;
    let H2 { mut r, mut wr, .. } = c;
    // Each write is bounded: one that herald does not take in time ends the
    // flood (what herald sent by then is judged below).
    let writer = async move {
        let mut batch = prelude;
        for (i, fr) in frames.enumerate() {
            batch.extend(fr);
            if i % 64 == 63 {
                if !matches!(
                    tokio::time::timeout(WAIT, put(&mut wr, &batch)).await,
                    Ok(true)
                ) {
                    return wr;
                }
                batch.clear();
            }
        }
        let _ = tokio::time::timeout(WAIT, put(&mut wr, &batch)).await;
        wr
    };
    let (_wr, (frames, closed)) = tokio::join!(writer, drain(&mut r, Duration::from_secs(10)));
    let what = format!(
        "herald sent {}; {}",
        summary(&frames),
        if closed {
            "then closed"
        } else {
            "and kept the connection"
        }
    );
    let last = frames
        .last()
        .unwrap_or_else(|| panic!("expected GOAWAY(ENHANCE_YOUR_CALM): {what}"));
    assert!(
        closed && last.kind == GOAWAY && last.code() == Some(ENHANCE_YOUR_CALM),
        "expected GOAWAY(ENHANCE_YOUR_CALM), then the close: {what}"
    );
    assert!(
        last.last_stream().unwrap() <= max_last,
        "{}: {what}",
        last.describe()
    );
    assert_eq!(
        frames.iter().filter(|f| f.kind == GOAWAY).count(),
        1,
        "{what}"
    );
}

/// herald · flood: 2,000 empty DATA frames without END_STREAM on an open
/// stream (CVE-2019-9518).
#[tokio::test]
async fn flood_empty_data() {
    flood(
        open_publish(1, &[]),
        (0..2000).map(|_| f(DATA, 0, 1, [])),
        1,
    )
    .await;
}

/// herald · flood: 2,000 empty CONTINUATION frames after HEADERS without
/// END_HEADERS (CVE-2024-27316 and kin).
#[tokio::test]
async fn flood_empty_continuation() {
    flood(
        f(HEADERS, 0, 1, blk(&COMMON)),
        (0..2000).map(|_| f(CONTINUATION, 0, 1, [])),
        0,
    )
    .await;
}

/// herald · flood: 2,000 PRIORITY frames (on as many idle streams).
#[tokio::test]
async fn flood_priority() {
    flood(
        vec![],
        (0..2000u32).map(|i| f(PRIORITY, 0, 1 + 2 * i, priority(0, false, 15))),
        0,
    )
    .await;
}

/// herald · flood: 2,000 frames of an unknown type.
#[tokio::test]
async fn flood_unknown_frames() {
    flood(vec![], (0..2000).map(|_| f(0x16, 0, 0, ZEROS)), 0).await;
}

/// herald · flood: 1,000 SETTINGS frames (CVE-2019-9515).
#[tokio::test]
async fn flood_settings() {
    flood(
        vec![],
        (0..1000).map(|_| f(SETTINGS, 0, 0, settings(&[(ENABLE_PUSH, 0)]))),
        0,
    )
    .await;
}

/// herald · flood: 1,000 PINGs (CVE-2019-9512), read as they are answered.
#[tokio::test]
async fn flood_ping() {
    flood(
        vec![],
        (0..1000u32).map(|i| f(PING, 0, 0, (u64::from(i)).to_be_bytes())),
        0,
    )
    .await;
}

/// herald · flood: 1,000 streams opened and reset by the client (rapid
/// reset, CVE-2023-44487).
#[tokio::test]
async fn flood_client_resets() {
    let frames = (0..1000u32).map(|i| {
        let id = 1 + 2 * i;
        [
            f(
                HEADERS,
                EH_ES,
                id,
                blk(&request("GET", "/health/live", &[])),
            ),
            f(RST_STREAM, 0, id, u32be(CANCEL)),
        ]
        .concat()
    });
    flood(vec![], frames, 1999).await;
}

/// herald · flood: 1,000 streams each made to be reset by herald (HEADERS,
/// then WINDOW_UPDATE of 0 on it: MadeYouReset, CVE-2025-8671).
#[tokio::test]
async fn flood_server_resets() {
    let frames = (0..1000u32).map(|i| {
        let id = 1 + 2 * i;
        [open_publish(id, &[]), f(WINDOW_UPDATE, 0, id, u32be(0))].concat()
    });
    flood(vec![], frames, 1999).await;
}

/// herald · the control for the floods: 100 PINGs, 50 SETTINGS and 100
/// PRIORITY frames spread over 50 requests are a normal exchange: all
/// answered, the connection stays.
#[tokio::test]
async fn flood_control_normal_exchange() {
    let (_h, mut c) = acked().await;
    let noise = c.noise.len();
    for round in 0..50u32 {
        let id = 1 + 2 * round;
        let (a, b) = (
            (2 * round as u64).to_be_bytes(),
            (2 * round as u64 + 1).to_be_bytes(),
        );
        c.write(
            &[
                f(PRIORITY, 0, id, priority(0, false, 15)),
                f(
                    HEADERS,
                    EH_ES,
                    id,
                    blk(&request("GET", "/health/live", &[])),
                ),
                f(PING, 0, 0, a),
                f(SETTINGS, 0, 0, settings(&[(ENABLE_PUSH, 0)])),
                f(PING, 0, 0, b),
                f(PRIORITY, 0, id, priority(0, false, 200)),
            ]
            .concat(),
        )
        .await;
        let (mut pings, mut ended) = (0, false);
        while pings < 2 || !ended {
            let fr = c.must("the answer and two PING ACKs").await;
            match fr.kind {
                PING if fr.ack() && (fr.payload == a || fr.payload == b) => pings += 1,
                HEADERS if fr.stream == id && fr.status() == Some(200) => ended |= fr.end_stream(),
                DATA if fr.stream == id => ended |= fr.end_stream(),
                _ => panic!("round {round}: herald sent {}", fr.describe()),
            }
        }
    }
    c.ping().await;
    let acks = c.noise[noise..]
        .iter()
        .filter(|f| f.kind == SETTINGS && f.ack())
        .count();
    assert_eq!(acks, 50, "SETTINGS ACKs");
    c.alive().await;
}
