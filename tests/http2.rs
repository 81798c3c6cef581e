//! herald's own HTTP/2, frame by frame: a rustls client over loopback writes
//! raw frames (header blocks as plain HPACK literals) and reads herald's with
//! the h2 crate's HPACK decoder. Requests with bodies, the limits (body size,
//! header size, streams per connection), flow control (a stream without window
//! is closed alone), and the abuse a server must survive (rapid reset,
//! CONTINUATION floods, a bad preface, a preface that never comes).

mod support;

use std::io::Cursor;
use std::time::Duration;

use bytes::BytesMut;
use support::certs::make_cert;
use support::sse::Parser;
use support::tls::{start_tls, tls_connect};
use support::{Herald, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A raw HTTP/2 client connection.
struct Raw {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
    hpack: h2_hpack::Decoder,
    next_id: u32,
}

/// A response read frame by frame.
#[derive(Debug, Default)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

fn literal(out: &mut Vec<u8>, s: &[u8]) {
    assert!(s.len() < 127 || s.len() < 16384);
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

/// A header block of literals without indexing (no Huffman, no table).
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        literal(&mut out, name.as_bytes());
        literal(&mut out, value.as_bytes());
    }
    out
}

fn request(method: &str, path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", method.to_string()),
        (":scheme", "https".into()),
        (":authority", "localhost".into()),
        (":path", path.to_string()),
    ]
}

impl Raw {
    fn over(tls: TlsStream<TcpStream>) -> Raw {
        Raw {
            tls,
            buf: Vec::new(),
            hpack: h2_hpack::Decoder::new(4096),
            next_id: 1001,
        }
    }

    /// Connect with ALPN h2 and send the preface with `settings`.
    async fn connect(h: &Herald, c: &support::certs::TestCert, settings: &[(u16, u32)]) -> Raw {
        let tls = tls_connect(h, &[&c.der], &[b"h2"]).await.expect("TLS");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut raw = Raw::over(tls);
        let mut payload = Vec::new();
        for (id, v) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&v.to_be_bytes());
        }
        raw.tls.write_all(PREFACE).await.unwrap();
        raw.send(SETTINGS, 0, 0, &payload).await;
        raw
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.try_send(kind, flags, stream, payload)
            .await
            .expect("herald takes the frame");
    }

    /// As [`Raw::send`]; an error once herald has closed the connection.
    async fn try_send(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(9 + payload.len());
        let len = (payload.len() as u32).to_be_bytes();
        f.extend_from_slice(&len[1..]);
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.tls.write_all(&f).await
    }

    async fn headers(&mut self, stream: u32, fields: &[(&str, String)], end_stream: bool) {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.send(HEADERS, flags, stream, &block(&fields)).await;
    }

    /// The next frame, or `None` when herald closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 16384];
            let n = match tokio::time::timeout_at(until, self.tls.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
                Err(_) => panic!("no frame from herald in time"),
            };
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Frames until one on `stream` matches `want`; control frames are
    /// answered as a client would (SETTINGS acked).
    async fn until(&mut self, mut want: impl FnMut(&Frame) -> bool) -> Frame {
        loop {
            let f = self.next().await.expect("connection open");
            if f.kind == SETTINGS && f.flags & 1 == 0 {
                // herald may have closed the connection meanwhile (the tests
                // that expect GOAWAY).
                let _ = self.try_send(SETTINGS, 1, 0, &[]).await;
            }
            if want(&f) {
                return f;
            }
        }
    }

    fn decode(&mut self, block: &[u8], answer: &mut Answer) {
        let mut buf = BytesMut::from(block);
        self.hpack
            .decode(&mut Cursor::new(&mut buf), |h| {
                match h {
                    h2_hpack::Header::Status(s) => answer.status = s.as_u16(),
                    h2_hpack::Header::Field { name, value } => answer
                        .headers
                        .push((name.to_string(), value.to_str().unwrap().to_string())),
                    other => panic!("unexpected field {other:?}"),
                }
                std::ops::ControlFlow::Continue(())
            })
            .expect("herald's header block decodes");
    }

    /// The whole answer on `stream` (its window is granted as data comes).
    async fn answer(&mut self, stream: u32) -> Answer {
        let mut answer = Answer::default();
        loop {
            let f = self.until(|f| f.stream == stream).await;
            match f.kind {
                HEADERS => {
                    self.decode(&f.payload, &mut answer);
                    if f.flags & END_STREAM != 0 {
                        return answer;
                    }
                }
                DATA => {
                    answer.body.extend_from_slice(&f.payload);
                    if f.flags & END_STREAM != 0 {
                        return answer;
                    }
                }
                RST_STREAM => panic!("stream {stream} reset: {:?}", f.payload),
                _ => {}
            }
        }
    }

    /// One request on a new stream (ids counted from 1001 up, apart from the
    /// tests' own), its whole answer.
    async fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let id = self.next_id;
        self.next_id += 2;
        let mut fields = request(method, path);
        if let Some(body) = body {
            fields.push(("content-type", "application/json".into()));
            self.headers(id, &fields, false).await;
            self.send(DATA, END_STREAM, id, body.as_bytes()).await;
        } else {
            self.headers(id, &fields, true).await;
        }
        self.answer(id).await
    }

    async fn publish(&mut self, body: serde_json::Value) {
        let a = self
            .call("POST", "/api/broadcast", Some(&body.to_string()))
            .await;
        assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    }

    async fn connections(&mut self) -> u64 {
        let a = self.call("GET", "/api/user/sse/stats", None).await;
        a.json()["connections"].as_u64().unwrap()
    }

    /// Wait (boundedly) until herald counts `n` streams.
    async fn wait_connections(&mut self, n: u64) {
        let until = std::time::Instant::now() + WAIT;
        while self.connections().await != n {
            assert!(std::time::Instant::now() < until, "never {n} connections");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Read until GOAWAY; its error code. Panics if the connection closes first.
    async fn goaway(&mut self) -> u32 {
        let f = self.until(|f| f.kind == GOAWAY).await;
        u32::from_be_bytes(f.payload[4..8].try_into().unwrap())
    }

    /// After GOAWAY herald closes the connection.
    async fn closed(&mut self) {
        while let Some(f) = self.next().await {
            assert_ne!(f.kind, HEADERS, "no new answer after GOAWAY");
        }
    }
}

#[tokio::test]
async fn requests_with_bodies_pings_and_limits() {
    let c = make_cert("h2-requests", 2099);
    let h = start_tls(
        &c,
        &["--max-body", "2KiB", "--max-header-bytes", "1KiB"],
        None,
    );
    let mut raw = Raw::connect(&h, &c, &[]).await;
    // A PING is answered with the same payload.
    raw.send(PING, 0, 0, b"herald!!").await;
    let pong = raw.until(|f| f.kind == PING).await;
    assert_eq!((pong.flags, &pong.payload[..]), (1, &b"herald!!"[..]));

    raw.headers(1, &request("GET", "/health/live"), true).await;
    let a = raw.answer(1).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "live");
    let len: usize = a
        .headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert_eq!(len, a.body.len());

    // A publish whose body comes in two DATA frames, padded.
    let mut fields = request("POST", "/api/broadcast");
    fields.push(("content-type", "application/json".into()));
    raw.headers(3, &fields, false).await;
    let body = br#"{"event":"news","data":"over h2","target":"all"}"#;
    raw.send(DATA, 0, 3, &body[..10]).await;
    let mut padded = vec![4u8];
    padded.extend_from_slice(&body[10..]);
    padded.extend_from_slice(&[0; 4]);
    raw.send(DATA, END_STREAM | 0x8, 3, &padded).await;
    let a = raw.answer(3).await;
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    assert!(a.json()["id"].is_string());

    // Past --max-body: 413 with the JSON error, before the body has ended.
    raw.headers(5, &fields, false).await;
    raw.send(DATA, 0, 5, &[b'x'; 3000]).await;
    let a = raw.answer(5).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["error"], "body_too_large");

    // Past --max-header-bytes: 431 with the JSON error.
    let mut big = request("GET", "/health/live");
    big.push(("x-big", "v".repeat(2000)));
    raw.headers(7, &big, true).await;
    let a = raw.answer(7).await;
    assert_eq!(a.status, 431);
    assert_eq!(a.json()["error"], "headers_too_large");

    // Unknown route and wrong method: the same JSON errors as over HTTP/1.1.
    raw.headers(9, &request("GET", "/nope"), true).await;
    assert_eq!(raw.answer(9).await.status, 404);
    raw.headers(11, &request("DELETE", "/api/broadcast"), true)
        .await;
    assert_eq!(raw.answer(11).await.status, 405);

    // A request without :path is malformed: the stream is reset, the
    // connection goes on.
    raw.headers(13, &request("GET", "/")[..3], true).await;
    let rst = raw.until(|f| f.stream == 13).await;
    assert_eq!(rst.kind, RST_STREAM);
    raw.headers(15, &request("GET", "/health/ready"), true)
        .await;
    assert_eq!(raw.answer(15).await.status, 200);
}

#[tokio::test]
async fn streams_past_128_are_refused_and_the_others_go_on() {
    let c = make_cert("h2-limit", 2099);
    let h = start_tls(&c, &[], None);
    let mut raw = Raw::connect(&h, &c, &[]).await;
    for i in 0..129u32 {
        let path = format!("/api/user/sse/connect?userId=u{i}");
        raw.headers(1 + 2 * i, &request("GET", &path), true).await;
    }
    let refused = raw.until(|f| f.kind == RST_STREAM).await;
    assert_eq!(refused.stream, 1 + 2 * 128);
    assert_eq!(
        u32::from_be_bytes(refused.payload[..4].try_into().unwrap()),
        7
    );
    let mut other = Raw::connect(&h, &c, &[]).await;
    other.wait_connections(128).await;
}

#[tokio::test]
async fn a_stream_without_window_is_closed_alone() {
    let c = make_cert("h2-window", 2099);
    let h = start_tls(
        &c,
        &["--max-queue-events", "16", "--heartbeat-interval", "1h"],
        None,
    );
    // Stream windows of 4 KiB; the connection's window is made large, so only
    // the stream that is not given more stops.
    let mut raw = Raw::connect(&h, &c, &[(4, 4096)]).await;
    raw.send(WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes())
        .await;
    raw.headers(
        1,
        &request("GET", "/api/user/sse/connect?userId=stalled"),
        true,
    )
    .await;
    raw.headers(
        3,
        &request("GET", "/api/user/sse/connect?userId=reader"),
        true,
    )
    .await;
    let mut publisher = Raw::connect(&h, &c, &[]).await;
    publisher.wait_connections(2).await;
    let mut parser = Parser::default();
    let mut got = Vec::new();
    let mut stalled_ended = false;
    let data = "z".repeat(1000);
    for published in 1..=60 {
        publisher
            .publish(serde_json::json!({"event": "e", "data": data, "target": "all"}))
            .await;
        // The reader reads (and gives window back) until it has the event.
        while got.len() < published {
            let f = raw.next().await.expect("connection open");
            match (f.kind, f.stream) {
                (DATA, 3) => {
                    got.extend(
                        parser
                            .feed(&f.payload)
                            .into_iter()
                            .filter(|e| e.event == "e"),
                    );
                    if !f.payload.is_empty() {
                        let inc = (f.payload.len() as u32).to_be_bytes();
                        raw.send(WINDOW_UPDATE, 0, 3, &inc).await;
                    }
                    assert_eq!(f.flags & END_STREAM, 0, "the reader's stream stays open");
                }
                (DATA, 1) if f.flags & END_STREAM != 0 => stalled_ended = true,
                (RST_STREAM, s) => panic!("stream {s} reset"),
                (GOAWAY, _) => panic!("the connection must stay"),
                _ => {}
            }
        }
    }
    assert!(stalled_ended, "the stream without window was closed");
    assert_eq!(got.len(), 60);
    publisher.wait_connections(1).await;
}

/// `raw` got GOAWAY with ENHANCE_YOUR_CALM and was closed; herald serves a new
/// connection as before.
async fn ended_calmly(mut raw: Raw, h: &Herald, c: &support::certs::TestCert) {
    assert_eq!(raw.goaway().await, 0xb, "ENHANCE_YOUR_CALM");
    raw.closed().await;
    let mut other = Raw::connect(h, c, &[]).await;
    assert_eq!(other.call("GET", "/health/live", None).await.status, 200);
}

#[tokio::test]
async fn rapid_reset_ends_the_connection() {
    let c = make_cert("h2-reset", 2099);
    let h = start_tls(&c, &[], None);
    let mut raw = Raw::connect(&h, &c, &[]).await;
    let fields = request("GET", "/api/user/sse/stats");
    let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let block = block(&fields);
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        let sent = async {
            raw.try_send(HEADERS, END_HEADERS | END_STREAM, id, &block)
                .await?;
            raw.try_send(RST_STREAM, 0, id, &8u32.to_be_bytes()).await
        };
        if sent.await.is_err() {
            // herald has had enough and closed the connection.
            break;
        }
    }
    ended_calmly(raw, &h, &c).await;
}

#[tokio::test]
async fn a_continuation_flood_ends_the_connection() {
    let c = make_cert("h2-flood", 2099);
    let h = start_tls(&c, &[], None);
    let mut raw = Raw::connect(&h, &c, &[]).await;
    let fields: Vec<(&str, &str)> = vec![(":method", "GET"), (":path", "/")];
    raw.send(HEADERS, 0, 1, &block(&fields)).await;
    let junk = block(&[("x-flood", &"f".repeat(16_000))]);
    for _ in 0..100 {
        if raw.try_send(CONTINUATION, 0, 1, &junk).await.is_err() {
            break;
        }
    }
    ended_calmly(raw, &h, &c).await;
}

#[tokio::test]
async fn a_bad_preface_or_none_ends_the_connection() {
    let c = make_cert("h2-preface", 2099);
    let h = start_tls(&c, &["--header-timeout", "500ms"], None);
    // HTTP/1.1 on a connection that chose h2.
    let mut tls = tls_connect(&h, &[&c.der], &[b"h2"]).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Raw::over(tls);
    assert_eq!(raw.goaway().await, 1, "PROTOCOL_ERROR");
    raw.closed().await;
    // Nothing at all: closed after the header timeout.
    let mut tls = tls_connect(&h, &[&c.der], &[b"h2"]).await.unwrap();
    let mut sink = Vec::new();
    let start = std::time::Instant::now();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut sink))
        .await
        .expect("closed in time");
    assert!(start.elapsed() < Duration::from_secs(5));
    // A frame before the SETTINGS that must come first.
    let mut raw = Raw::over(tls_connect(&h, &[&c.der], &[b"h2"]).await.unwrap());
    raw.tls.write_all(PREFACE).await.unwrap();
    raw.send(PING, 0, 0, &[0; 8]).await;
    assert_eq!(raw.goaway().await, 1, "PROTOCOL_ERROR");
    raw.closed().await;
}

#[tokio::test]
async fn a_route_that_waits_answers_later_on_the_same_connection() {
    let c = make_cert("h2-waits", 2099);
    // One connect at once, then 20 a second: the second and third connects wait
    // for admission, so their routes answer through the connection's mailbox.
    let h = start_tls(&c, &["--connect-rate", "20", "--connect-burst", "1"], None);
    let mut raw = Raw::connect(&h, &c, &[]).await;
    for (i, id) in [1u32, 3, 5].iter().enumerate() {
        let path = format!("/api/user/sse/connect?userId=wait{i}");
        raw.headers(*id, &request("GET", &path), true).await;
    }
    let mut connected = std::collections::HashSet::new();
    let mut parsers: std::collections::HashMap<u32, Parser> = Default::default();
    while connected.len() < 3 {
        let f = raw.until(|f| matches!(f.stream, 1 | 3 | 5)).await;
        match f.kind {
            HEADERS => {
                let mut a = Answer::default();
                raw.decode(&f.payload, &mut a);
                assert_eq!(a.status, 200, "stream {}", f.stream);
            }
            DATA => {
                let events = parsers.entry(f.stream).or_default().feed(&f.payload);
                if events.iter().any(|e| e.event == "CONNECTED") {
                    connected.insert(f.stream);
                }
            }
            other => panic!("frame {other} on stream {}", f.stream),
        }
    }
    raw.publish(serde_json::json!({"event": "after", "data": "x", "target": "all"}))
        .await;
    let mut got = std::collections::HashSet::new();
    while got.len() < 3 {
        let f = raw
            .until(|f| f.kind == DATA && matches!(f.stream, 1 | 3 | 5))
            .await;
        let events = parsers.entry(f.stream).or_default().feed(&f.payload);
        if events.iter().any(|e| e.event == "after") {
            got.insert(f.stream);
        }
    }
}

#[tokio::test]
async fn a_replay_larger_than_one_write_arrives_whole() {
    let c = make_cert("h2-replay", 2099);
    let h = start_tls(&c, &["--heartbeat-interval", "1h"], None);
    // Windows far above the replay: only herald's own write turns split it.
    let mut raw = Raw::connect(&h, &c, &[(4, 1 << 20)]).await;
    raw.send(WINDOW_UPDATE, 0, 0, &(1u32 << 20).to_be_bytes())
        .await;
    // 60 events of 1 KB: the replay is several write turns' worth.
    let data = "r".repeat(1000);
    let body = serde_json::json!({"event": "r", "data": data, "target": "all"}).to_string();
    let first = raw.call("POST", "/api/broadcast", Some(&body)).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 1..60 {
        raw.publish(serde_json::json!({"event": "r", "data": data, "target": "all"}))
            .await;
    }
    let mut fields = request("GET", "/api/user/sse/connect?userId=replayer");
    fields.push(("last-event-id", first));
    // Stream ids only grow: past the ids the publishes used.
    let id = raw.next_id;
    raw.headers(id, &fields, true).await;
    let mut parser = Parser::default();
    let mut replayed = 0;
    while replayed < 59 {
        let f = raw.until(|f| f.stream == id).await;
        assert_ne!(f.kind, RST_STREAM, "stream reset");
        if f.kind == DATA {
            assert_eq!(f.flags & END_STREAM, 0, "the stream stays open");
            replayed += parser
                .feed(&f.payload)
                .iter()
                .filter(|e| e.event == "r")
                .count();
        }
    }
    assert_eq!(replayed, 59);
}

/// A field that is well-formed HPACK but no valid HTTP/2 request field makes
/// its request malformed (RFC 9113 §8.1.1): that stream is reset, and the
/// connection and its SSE stream go on (the decoder once failed the header
/// block, which could only end the connection with COMPRESSION_ERROR).
#[tokio::test]
async fn a_field_http2_refuses_resets_its_stream_alone() {
    let c = make_cert("h2-invalid-field", 2099);
    let h = start_tls(&c, &["--heartbeat-interval", "1h"], None);
    let mut raw = Raw::connect(&h, &c, &[]).await;
    raw.headers(
        1,
        &request("GET", "/api/user/sse/connect?userId=kept"),
        true,
    )
    .await;
    let mut publisher = Raw::connect(&h, &c, &[]).await;
    publisher.wait_connections(1).await;
    let refused = [
        ("X-Upper", "v"),
        (":foo", "bar"),
        ("x-cr", "a\rb"),
        ("", "empty name"),
    ];
    for (i, (name, value)) in refused.into_iter().enumerate() {
        let id = 3 + 2 * i as u32;
        let mut fields = request("GET", "/health/live");
        fields.push((name, value.into()));
        raw.headers(id, &fields, true).await;
        let f = raw.until(|f| f.stream == id).await;
        assert_eq!(f.kind, RST_STREAM, "{name:?}");
        assert_eq!(f.payload, 1u32.to_be_bytes(), "PROTOCOL_ERROR for {name:?}");
    }
    // A bad method too.
    raw.headers(11, &request("GE T", "/health/live"), true)
        .await;
    assert_eq!(raw.until(|f| f.stream == 11).await.kind, RST_STREAM);

    publisher
        .publish(serde_json::json!({"event": "e", "data": "still here", "target": "all"}))
        .await;
    let mut parser = Parser::default();
    loop {
        let f = raw.next().await.expect("connection open");
        assert!(f.kind != GOAWAY && f.kind != RST_STREAM, "{f:?}");
        if f.kind == DATA && f.stream == 1 && parser.feed(&f.payload).iter().any(|e| e.event == "e")
        {
            break;
        }
    }
    assert_eq!(raw.call("GET", "/health/live", None).await.status, 200);
}
