//! TLS 1.3 key updates and the AEAD record limit against a real herald over
//! loopback: rustls clients (tokio-rustls) that update their keys before their
//! first request and in the middle of a stream, on lean HTTP/1.1 streams and
//! on HTTP/2 connections (a raw-frame client); herald updating its own keys
//! past a record limit lowered by its test hook (`HERALD_TEST_TLS_RECORD_LIMIT`)
//! on TLS 1.3, and ending TLS 1.2 streams cleanly there; and `openssl
//! s_client`'s `K` before a request (skipped without `openssl`).
//!
//! The client's socket is a [`Tap`]: it keeps what herald sent, so a test can
//! see herald's KeyUpdate arrive (a record of 27 bytes, alone), and can hold
//! back what the client writes, so that its Finished and a KeyUpdate reach
//! herald in one segment (rustls then handles the KeyUpdate before herald
//! takes the keys).

mod support;

use std::io::Cursor;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use support::certs::{make_cert, TestCert};
use support::sse::{Parser, SseEvent};
use support::tls::{connector, tls_connect};
use support::{Herald, WAIT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

/// A KeyUpdate record: header, the 5-byte message, its content type, the tag.
const KEY_UPDATE_RECORD: usize = 5 + 5 + 1 + 16;

/// herald with a certificate, no heartbeats (nothing is sent unless a test
/// publishes), and `limit` as the record limit's test hook.
fn start(c: &TestCert, limit: Option<u64>) -> Herald {
    start_with(c, limit, &[])
}

fn start_with(c: &TestCert, limit: Option<u64>, args: &[&str]) -> Herald {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--listen", "127.0.0.1:0", "--heartbeat-interval", "1h"])
        .args(args)
        .arg("--tls-cert")
        .arg(&c.cert)
        .arg("--tls-key")
        .arg(&c.key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(n) = limit {
        cmd.env("HERALD_TEST_TLS_RECORD_LIMIT", n.to_string());
    }
    Herald::from_started_child(cmd.spawn().expect("spawn herald"))
}

/// What a [`Tap`] saw and holds.
#[derive(Default)]
struct Seen {
    /// Every byte herald sent.
    bytes: Mutex<Vec<u8>>,
    /// Set on every read.
    read: Notify,
    /// Writes past the first are held back while set.
    hold: AtomicBool,
}

impl Seen {
    /// The lengths of the whole records herald sent so far.
    fn records(&self) -> Vec<usize> {
        let bytes = self.bytes.lock().unwrap();
        let mut at = 0;
        let mut out = Vec::new();
        while bytes.len() >= at + 5 {
            let len = 5 + usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
            if bytes.len() < at + len {
                break;
            }
            out.push(len);
            at += len;
        }
        out
    }
}

/// A client socket that records what it reads and can hold back its writes.
struct Tap {
    tcp: TcpStream,
    seen: Arc<Seen>,
    writes: usize,
    held: Vec<u8>,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        self.seen.bytes.lock().unwrap().extend_from_slice(new);
        self.seen.read.notify_waiters();
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.writes += 1;
        let hold = self.writes > 1 && self.seen.hold.load(Ordering::SeqCst);
        if hold || !self.held.is_empty() {
            self.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.seen.hold.load(Ordering::SeqCst) {
            while !this.held.is_empty() {
                let n = ready!(Pin::new(&mut this.tcp).poll_write(cx, &this.held))?;
                this.held.drain(..n);
            }
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A TLS connection to herald over a [`Tap`], offering `alpn`, with only
/// `suite` when given; `hold` holds back what the client writes after its
/// first flight (its Finished) until released.
async fn tap_connect(
    h: &Herald,
    c: &TestCert,
    alpn: &[u8],
    suite: Option<rustls::SupportedCipherSuite>,
    hold: bool,
) -> (TlsStream<Tap>, Arc<Seen>) {
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let seen = Arc::new(Seen::default());
    seen.hold.store(hold, Ordering::SeqCst);
    let tap = Tap {
        tcp,
        seen: seen.clone(),
        writes: 0,
        held: Vec::new(),
    };
    let connector = match suite {
        None => connector(&[&c.der], &[alpn]),
        Some(suite) => {
            let mut store = rustls::RootCertStore::empty();
            store.add(c.der.clone()).unwrap();
            let mut provider = rustls::crypto::ring::default_provider();
            provider.cipher_suites = vec![suite];
            let version = match suite {
                rustls::SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
                rustls::SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
            };
            let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(store)
                .with_no_client_auth();
            cfg.alpn_protocols = vec![alpn.to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
        }
    };
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tap))
        .await
        .expect("handshake in time")
        .expect("handshake");
    (tls, seen)
}

/// The client asks for a key update now (sent with its next flush).
fn refresh(tls: &mut TlsStream<Tap>) {
    tls.get_mut().1.refresh_traffic_keys().unwrap();
}

/// Wait until herald has sent `n` records in all; the lengths of the ones
/// after the first `from`.
async fn records_after(seen: &Seen, from: usize, n: usize, tls: &mut TlsStream<Tap>) -> Vec<usize> {
    let until = Instant::now() + WAIT;
    let mut buf = [0u8; 256];
    loop {
        // Listening before looking: a read between the two is not missed.
        let read = seen.read.notified();
        tokio::pin!(read);
        read.as_mut().enable();
        let records = seen.records();
        if records.len() >= n {
            return records[from..].to_vec();
        }
        // Reading drives the TLS client (it takes herald's KeyUpdate); what a
        // test waits for here carries no data.
        tokio::select! {
            r = tls.read(&mut buf) => panic!("unexpected data or end: {r:?}"),
            () = read => {}
            () = tokio::time::sleep_until(until) => panic!("{n} records never came: {records:?}"),
        }
    }
}

/// One publisher: an HTTP/2 connection (hyper) to herald.
async fn publisher(h: &Herald, c: &TestCert) -> SendRequest<Full<Bytes>> {
    let tls = tls_connect(h, &[&c.der], &[b"h2"]).await.expect("TLS");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

async fn publish(send: &mut SendRequest<Full<Bytes>>, body: serde_json::Value) -> String {
    let req = hyper::Request::post("https://localhost/api/broadcast")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send.ready().await.unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("publish answered in time")
        .expect("publish answer");
    assert_eq!(resp.status(), 202);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["id"].as_str().unwrap().to_string()
}

async fn stream_count(send: &mut SendRequest<Full<Bytes>>) -> u64 {
    let req = hyper::Request::get("https://localhost/api/user/sse/stats")
        .body(Full::default())
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["connections"].as_u64().unwrap()
}

/// Wait (boundedly) until herald counts `n` streams.
async fn wait_streams(send: &mut SendRequest<Full<Bytes>>, n: u64) {
    let until = Instant::now() + WAIT;
    while stream_count(send).await != n {
        assert!(Instant::now() < until, "never {n} streams");
        tokio::task::yield_now().await;
    }
}

async fn metrics(send: &mut SendRequest<Full<Bytes>>) -> String {
    let req = hyper::Request::get("https://localhost/metrics")
        .body(Full::default())
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A lean HTTP/1.1 SSE stream over TLS.
struct Lean<S> {
    tls: TlsStream<S>,
    parser: Parser,
    ready: std::collections::VecDeque<SseEvent>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Lean<S> {
    /// Send the connect of `user` and read its head and CONNECTED event.
    async fn open(mut tls: TlsStream<S>, user: &str) -> Lean<S> {
        let req =
            format!("GET /api/user/sse/connect?userId={user} HTTP/1.1\r\nhost: localhost\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let until = Instant::now() + WAIT;
        let body_at = loop {
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tokio::time::timeout_at(until, tls.read(&mut buf))
                .await
                .expect("a head in time")
                .expect("a readable stream");
            assert!(n > 0, "closed before a head");
            head.extend_from_slice(&buf[..n]);
        };
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut lean = Lean {
            tls,
            parser: Parser::default(),
            ready: Default::default(),
        };
        let rest = head[body_at..].to_vec();
        lean.ready.extend(lean.parser.feed(&rest));
        assert_eq!(lean.next().await.expect("CONNECTED").event, "CONNECTED");
        lean
    }

    /// The next event; `None` on a clean end (close_notify).
    async fn next(&mut self) -> Option<SseEvent> {
        let until = Instant::now() + WAIT;
        let mut buf = [0u8; 16384];
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let n = tokio::time::timeout_at(until, self.tls.read(&mut buf))
                .await
                .expect("an event in time")
                .expect("a readable stream, or a clean end");
            if n == 0 {
                return None;
            }
            self.ready.extend(self.parser.feed(&buf[..n]));
        }
    }
}

/// A lean stream whose client updated its keys before its request (rustls
/// handles the KeyUpdate while reading the head, and owes its answer when
/// herald takes the keys): the stream works (review #1).
#[tokio::test]
async fn a_lean_stream_after_a_key_update_before_its_request() {
    let c = make_cert("ku-lean-before", 2100);
    let h = start(&c, None);
    let mut send = publisher(&h, &c).await;
    let (mut tls, _seen) = tap_connect(&h, &c, b"http/1.1", None, false).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    refresh(&mut tls);
    let mut lean = Lean::open(tls, "ku-before").await;
    for i in 0..3 {
        let id = publish(&mut send, serde_json::json!({"data": i, "target": "all"})).await;
        assert_eq!(lean.next().await.unwrap().id.as_deref(), Some(id.as_str()));
    }
}

/// A lean stream whose client updates its keys mid-stream: herald answers
/// with its own KeyUpdate at once (nothing is published meanwhile), and the
/// events after it arrive, under herald's next key; three times over.
#[tokio::test]
async fn a_lean_stream_answers_key_updates_mid_stream() {
    let c = make_cert("ku-lean-mid", 2100);
    let h = start(&c, None);
    let mut send = publisher(&h, &c).await;
    let (tls, seen) = tap_connect(&h, &c, b"http/1.1", None, false).await;
    let mut lean = Lean::open(tls, "ku-mid").await;
    let id = publish(
        &mut send,
        serde_json::json!({"data": "first", "target": "all"}),
    )
    .await;
    assert_eq!(lean.next().await.unwrap().id.as_deref(), Some(id.as_str()));
    for round in 0..3 {
        let before = seen.records().len();
        refresh(&mut lean.tls);
        lean.tls.flush().await.unwrap();
        let new = records_after(&seen, before, before + 1, &mut lean.tls).await;
        assert_eq!(
            new,
            [KEY_UPDATE_RECORD],
            "round {round}: herald's KeyUpdate alone"
        );
        let id = publish(
            &mut send,
            serde_json::json!({"data": round, "target": "all"}),
        )
        .await;
        assert_eq!(lean.next().await.unwrap().id.as_deref(), Some(id.as_str()));
    }
}

/// What a lean stream's client sends is read as records: part of one that is
/// not completed within `--header-timeout` closes the stream (cleanly, with
/// close_notify); a record that does not open is answered bad_record_mac. A
/// stream that sends nothing is not touched.
#[tokio::test]
async fn a_lean_stream_closes_on_a_late_partial_record_or_a_bad_one() {
    let c = make_cert("ku-partial", 2100);
    let h = start_with(&c, None, &["--header-timeout", "500ms"]);
    let mut send = publisher(&h, &c).await;
    let (tls, _) = tap_connect(&h, &c, b"http/1.1", None, false).await;
    let mut partial = Lean::open(tls, "partial").await;
    let (tls, _) = tap_connect(&h, &c, b"http/1.1", None, false).await;
    let mut bad = Lean::open(tls, "bad").await;
    let (tls, _) = tap_connect(&h, &c, b"http/1.1", None, false).await;
    let mut quiet = Lean::open(tls, "quiet").await;
    wait_streams(&mut send, 3).await;

    // The header and part of a record's body, straight onto the socket.
    let raw = &mut partial.tls.get_mut().0.tcp;
    raw.write_all(&[0x17, 3, 3, 0, 40, 1, 2, 3]).await.unwrap();
    let sent = Instant::now();
    assert!(partial.next().await.is_none(), "a clean end");
    let waited = sent.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(400) && waited < WAIT / 2,
        "closed after {waited:?}"
    );

    // A whole record that does not open.
    let mut forged = vec![0x17, 3, 3, 0, 40];
    forged.extend_from_slice(&[7; 40]);
    bad.tls.get_mut().0.tcp.write_all(&forged).await.unwrap();
    let mut buf = [0u8; 64];
    let err = tokio::time::timeout(WAIT, bad.tls.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect_err("herald's fatal alert");
    assert!(format!("{err:?}").contains("BadRecordMac"), "{err:?}");

    wait_streams(&mut send, 1).await;
    let id = publish(
        &mut send,
        serde_json::json!({"data": "still", "target": "all"}),
    )
    .await;
    assert_eq!(quiet.next().await.unwrap().id.as_deref(), Some(id.as_str()));
}

/// A raw HTTP/2 client: frames written and read by hand, header blocks as
/// HPACK literals.
struct H2 {
    tls: TlsStream<Tap>,
    seen: Arc<Seen>,
    buf: Vec<u8>,
    hpack: h2_hpack::Decoder,
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;

impl H2 {
    async fn start(tls: TlsStream<Tap>, seen: Arc<Seen>) -> H2 {
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut h2 = H2 {
            tls,
            seen,
            buf: Vec::new(),
            hpack: h2_hpack::Decoder::new(4096),
        };
        h2.tls
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        h2.send(SETTINGS, 0, 0, &[]).await;
        // A large connection window: only the streams' windows matter.
        h2.send(WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes())
            .await;
        h2
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.tls.write_all(&f).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// Open an SSE stream for `user` on `id`.
    async fn connect(&mut self, id: u32, user: &str) {
        let mut block = Vec::new();
        let path = format!("/api/user/sse/connect?userId={user}");
        for (name, value) in [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", path.as_str()),
        ] {
            block.push(0);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        // END_HEADERS | END_STREAM
        self.send(HEADERS, 5, id, &block).await;
    }

    /// The next frame: (type, flags, stream, payload); `None` when herald
    /// closed the connection cleanly (close_notify).
    async fn frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        let until = Instant::now() + WAIT;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9).collect();
                    let payload = self.buf.drain(..len).collect();
                    let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    if head[3] == SETTINGS && head[4] & 1 == 0 {
                        self.send(SETTINGS, 1, 0, &[]).await;
                    }
                    return Some((head[3], head[4], stream, payload));
                }
            }
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout_at(until, self.tls.read(&mut chunk))
                .await
                .expect("a frame in time")
                .expect("a readable connection, or a clean end");
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next event on any stream: (stream, event); `None` on a clean end.
    async fn event(&mut self, parsers: &mut [(u32, Parser)]) -> Option<(u32, SseEvent)> {
        loop {
            let (kind, flags, stream, payload) = self.frame().await?;
            match kind {
                HEADERS => {
                    let mut status = 0;
                    let mut b = BytesMut::from(&payload[..]);
                    self.hpack
                        .decode(&mut Cursor::new(&mut b), |h| {
                            if let h2_hpack::Header::Status(s) = h {
                                status = s.as_u16();
                            }
                            std::ops::ControlFlow::Continue(())
                        })
                        .unwrap();
                    assert_eq!(status, 200);
                }
                DATA => {
                    // No window is given back: what the tests send fits in
                    // a stream's first 64 KiB, and the client sends nothing
                    // herald may not have read when it closes.
                    assert_eq!(flags & 1, 0, "stream {stream} stays open");
                    let p = &mut parsers.iter_mut().find(|(s, _)| *s == stream).unwrap().1;
                    if let Some(e) = p.feed(&payload).into_iter().next() {
                        return Some((stream, e));
                    }
                }
                GOAWAY => panic!("GOAWAY {payload:?}"),
                _ => {}
            }
        }
    }
}

/// Every stream of `parsers` gets the event `id`.
async fn each_gets(h2: &mut H2, parsers: &mut [(u32, Parser)], id: &str) {
    let mut got = std::collections::HashSet::new();
    while got.len() < parsers.len() {
        let (stream, e) = h2.event(parsers).await.expect("the connection stays open");
        if e.event == "CONNECTED" {
            continue;
        }
        assert_eq!(e.id.as_deref(), Some(id), "stream {stream}");
        assert!(got.insert(stream), "stream {stream} twice");
    }
}

/// HTTP/2 connections whose client updates its keys: with its Finished (rustls
/// handles it before herald takes the keys, review #1), before the preface,
/// and mid-stream (herald answers at once, nothing published); the streams
/// stay open and get every event.
#[tokio::test]
async fn http2_streams_stay_open_across_key_updates() {
    let c = make_cert("ku-h2", 2100);
    let h = start(&c, None);
    let mut send = publisher(&h, &c).await;
    for (case, held) in [("finished", true), ("preface", false)] {
        let (mut tls, seen) = tap_connect(&h, &c, b"h2", None, held).await;
        refresh(&mut tls);
        tls.flush().await.unwrap();
        if held {
            // The Finished and the KeyUpdate leave together.
            seen.hold.store(false, Ordering::SeqCst);
            tls.get_mut().0.flush().await.unwrap();
        }
        let mut h2 = H2::start(tls, seen).await;
        let mut parsers = vec![(1, Parser::default()), (3, Parser::default())];
        h2.connect(1, &format!("{case}-a")).await;
        h2.connect(3, &format!("{case}-b")).await;
        wait_streams(&mut send, 2).await;
        let id = publish(
            &mut send,
            serde_json::json!({"data": case, "target": "all"}),
        )
        .await;
        each_gets(&mut h2, &mut parsers, &id).await;
        for round in 0..3 {
            let before = h2.seen.records().len();
            refresh(&mut h2.tls);
            h2.tls.flush().await.unwrap();
            let new = records_after(&h2.seen.clone(), before, before + 1, &mut h2.tls).await;
            assert_eq!(new, [KEY_UPDATE_RECORD], "{case} round {round}");
            let id = publish(
                &mut send,
                serde_json::json!({"data": round, "target": "all"}),
            )
            .await;
            each_gets(&mut h2, &mut parsers, &id).await;
        }
        drop(h2);
        wait_streams(&mut send, 0).await;
    }
}

/// A record header no peer may send on an HTTP/2 connection is answered with
/// a record_overflow alert (not an HTTP/2 frame); a record that does not open
/// with bad_record_mac.
#[tokio::test]
async fn http2_answers_bad_records_with_fatal_alerts() {
    let c = make_cert("ku-h2-alerts", 2100);
    let h = start(&c, None);
    for (raw, alert) in [
        (vec![0x17, 3, 3, 0xff, 0xff], "RecordOverflow"),
        (
            [&[0x17, 3, 3, 0, 40][..], &[9; 40]].concat(),
            "BadRecordMac",
        ),
    ] {
        let (tls, seen) = tap_connect(&h, &c, b"h2", None, false).await;
        let mut h2 = H2::start(tls, seen).await;
        h2.tls.get_mut().0.tcp.write_all(&raw).await.unwrap();
        let err = loop {
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(WAIT, h2.tls.read(&mut buf))
                .await
                .expect("an answer in time")
            {
                Ok(0) => panic!("closed without an alert"),
                // herald's SETTINGS and the like, before the alert.
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(format!("{err:?}").contains(alert), "{err:?}");
    }
}

/// With the record limit lowered to 32, a lean stream and an HTTP/2 stream
/// over TLS 1.3 AES-GCM each receive several times that many records, one
/// event per record: herald updated its keys (its KeyUpdate records are
/// seen), and every event arrives in order.
#[tokio::test]
async fn tls13_streams_outlive_the_record_limit() {
    const LIMIT: usize = 32;
    let c = make_cert("ku-limit13", 2100);
    let h = start(&c, Some(LIMIT as u64));
    let mut send = publisher(&h, &c).await;
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let (tls, _) = tap_connect(&h, &c, b"http/1.1", Some(suite), false).await;
    let mut lean = Lean::open(tls, "limit-lean").await;
    let (tls, h2_seen) = tap_connect(&h, &c, b"h2", Some(suite), false).await;
    let mut h2 = H2::start(tls, h2_seen).await;
    let mut parsers = vec![(1, Parser::default())];
    h2.connect(1, "limit-h2").await;
    wait_streams(&mut send, 2).await;
    for i in 0..5 * LIMIT {
        let id = publish(&mut send, serde_json::json!({"data": i, "target": "all"})).await;
        assert_eq!(lean.next().await.unwrap().id.as_deref(), Some(id.as_str()));
        each_gets(&mut h2, &mut parsers, &id).await;
    }
    for (name, seen) in [("lean", &lean.tls.get_ref().0.seen), ("h2", &h2.seen)] {
        let records = seen.records();
        let updates = records.iter().filter(|&&n| n == KEY_UPDATE_RECORD).count();
        // Each key seals at most 32 records: without updates the stream
        // would have ended by the 32nd.
        assert!(
            records.len() > 5 * LIMIT,
            "{name}: {} records",
            records.len()
        );
        assert!(updates >= 4, "{name}: {updates} key updates");
    }
}

/// With the record limit lowered to 32, TLS 1.2 AES-GCM (no key update
/// exists) ends a lean stream and an HTTP/2 connection cleanly before the
/// limit: close_notify, every event before it in order, and the close
/// counted as tls_key_limit.
#[tokio::test]
async fn tls12_streams_end_cleanly_at_the_record_limit() {
    const LIMIT: usize = 32;
    let c = make_cert("ku-limit12", 2100);
    let h = start(&c, Some(LIMIT as u64));
    let mut send = publisher(&h, &c).await;
    let suite = rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
    let (tls, _) = tap_connect(&h, &c, b"http/1.1", Some(suite), false).await;
    let mut lean = Lean::open(tls, "limit12-lean").await;
    let (tls, h2_seen) = tap_connect(&h, &c, b"h2", Some(suite), false).await;
    let mut h2 = H2::start(tls, h2_seen).await;
    let mut parsers = vec![(1, Parser::default())];
    h2.connect(1, "limit12-h2").await;
    wait_streams(&mut send, 2).await;
    let (mut lean_open, mut h2_open) = (true, true);
    let (mut lean_got, mut h2_got) = (0, 0);
    for i in 0..2 * LIMIT {
        let id = publish(&mut send, serde_json::json!({"data": i, "target": "all"})).await;
        if lean_open {
            match lean.next().await {
                Some(e) => {
                    assert_eq!(e.id.as_deref(), Some(id.as_str()));
                    lean_got += 1;
                }
                None => lean_open = false,
            }
        }
        if h2_open {
            let mut e = h2.event(&mut parsers).await;
            if i == 0 {
                assert_eq!(e.expect("CONNECTED").1.event, "CONNECTED");
                e = h2.event(&mut parsers).await;
            }
            match e {
                Some((_, e)) => {
                    assert_eq!(e.id.as_deref(), Some(id.as_str()));
                    h2_got += 1;
                }
                None => h2_open = false,
            }
        }
    }
    assert!(!lean_open && !h2_open, "both ended");
    assert!(
        lean_got > LIMIT / 2 && lean_got < LIMIT,
        "{lean_got} events"
    );
    assert!(h2_got > 0 && h2_got < LIMIT, "{h2_got} events");
    wait_streams(&mut send, 0).await;
    let text = metrics(&mut send).await;
    let closed: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("herald_connections_closed_total{") && l.contains("tls_key_limit")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(closed, 2.0, "{text}");
}

/// `openssl s_client`'s `K` (KeyUpdate, update_requested) before a connect,
/// the reproduction of review #1: the stream answers and gets an event.
#[tokio::test]
async fn openssl_s_client_key_update_before_the_request() {
    need!("openssl");
    let c = make_cert("ku-openssl", 2100);
    let h = start(&c, None);
    let mut send = publisher(&h, &c).await;
    // s_client says KEYUPDATE on stderr: both go to one pipe.
    let script = format!(
        "exec openssl s_client -tls1_3 -alpn http/1.1 -servername localhost -connect {} -CAfile '{}' 2>&1",
        h.addr,
        c.cert.display()
    );
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run openssl");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    // The handshake is done once s_client prints its session.
    read_until(&mut out, &mut seen, "Verify return code").await;
    // `K` alone on its line: s_client sends KeyUpdate(update_requested).
    stdin.write_all(b"K\n").await.unwrap();
    read_until(&mut out, &mut seen, "KEYUPDATE").await;
    stdin
        .write_all(b"GET /api/user/sse/connect?userId=openssl HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut out, &mut seen, "event: CONNECTED").await;
    let id = publish(
        &mut send,
        serde_json::json!({"data": "to openssl", "target": "all"}),
    )
    .await;
    read_until(&mut out, &mut seen, &format!("id: {id}")).await;
    drop(stdin);
}

/// Read `out` into `seen` until `needle` shows up.
async fn read_until(out: &mut tokio::process::ChildStdout, seen: &mut Vec<u8>, needle: &str) {
    let until = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(needle) {
        let n = tokio::time::timeout_at(until, out.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {}", String::from_utf8_lossy(seen)))
            .unwrap();
        assert!(n > 0, "s_client ended: {}", String::from_utf8_lossy(seen));
        seen.extend_from_slice(&buf[..n]);
    }
}
