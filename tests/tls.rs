//! HTTPS and HTTP/2: herald started with a certificate generated here (rcgen),
//! talked to by rustls clients over real loopback sockets: HTTP/1.1 over TLS,
//! many SSE streams on one HTTP/2 connection, resume, certificate reload on
//! SIGHUP, and the bad inputs (plain HTTP on the HTTPS port, a handshake that
//! never finishes, an unknown ALPN, bad files at start and on reload).

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::certs::{make_cert, TestCert};
use support::sse::{Parser, SseEvent};
use support::tls::{start_tls, tls_connect, tls_connect_rcvbuf};
use support::{Herald, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// An HTTP/2 connection to herald.
async fn h2(h: &Herald, root: &CertificateDer<'static>) -> SendRequest<Full<Bytes>> {
    let tls = tls_connect(h, &[root], &[b"h2"]).await.expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// An SSE stream read from an HTTP/2 response body.
struct H2Stream {
    body: hyper::body::Incoming,
    parser: Parser,
    ready: std::collections::VecDeque<SseEvent>,
}

impl H2Stream {
    async fn open(
        send: &mut SendRequest<Full<Bytes>>,
        query: &str,
        last_id: Option<&str>,
    ) -> H2Stream {
        let mut req =
            hyper::Request::get(format!("https://localhost/api/user/sse/connect?{query}"))
                .header("accept", "text/event-stream");
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        send.ready().await.expect("h2 ready");
        let resp =
            tokio::time::timeout(WAIT, send.send_request(req.body(Full::default()).unwrap()))
                .await
                .expect("answer in time")
                .expect("answer");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        H2Stream {
            body: resp.into_body(),
            parser: Parser::default(),
            ready: Default::default(),
        }
    }

    async fn next(&mut self) -> SseEvent {
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return e;
            }
            let frame = tokio::time::timeout_at(until, self.body.frame())
                .await
                .expect("an event in time")
                .expect("the stream is open")
                .expect("a body frame");
            if let Ok(data) = frame.into_data() {
                self.ready.extend(self.parser.feed(&data));
            }
        }
    }
}

async fn h2_publish(send: &mut SendRequest<Full<Bytes>>, body: serde_json::Value) -> String {
    let req = hyper::Request::post("https://localhost/api/broadcast")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.expect("publish answer");
    assert_eq!(resp.status(), 202);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// One HTTP/1.1 request over TLS; returns the status line and the rest.
async fn h1_request(tls: &mut TlsStream<TcpStream>, raw: &str) -> String {
    tls.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + WAIT;
    while !String::from_utf8_lossy(&out).contains("\r\n\r\n") {
        assert!(Instant::now() < until, "no answer");
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before an answer");
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn http11_over_tls_streams_and_publishes() {
    let c = make_cert("h1", 2100);
    let h = start_tls(&c, &[], None);
    let mut tls = tls_connect(&h, &[&c.der], &[b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let head = h1_request(
        &mut tls,
        "GET /api/user/sse/connect?userId=tls-h1 HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Publish on a second HTTPS connection, no ALPN at all (HTTP/1.1).
    let mut pubc = tls_connect(&h, &[&c.der], &[]).await.unwrap();
    let body = r#"{"data":"over tls","target":{"users":["tls-h1"]}}"#;
    let answer = h1_request(
        &mut pubc,
        &format!(
            "POST /api/broadcast HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    // The stream: CONNECTED, then the event (chunked over hyper's HTTP/1.1).
    let mut seen = head.into_bytes();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + WAIT;
    while !String::from_utf8_lossy(&seen).contains("data: over tls") {
        assert!(
            Instant::now() < until,
            "event not received: {}",
            String::from_utf8_lossy(&seen)
        );
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("event: CONNECTED"));
}

#[tokio::test]
async fn http2_carries_ten_streams_on_one_connection() {
    let c = make_cert("h2", 2100);
    let h = start_tls(&c, &[], None);
    let mut send = h2(&h, &c.der).await;
    let mut streams = Vec::new();
    for i in 0..10 {
        let mut s = H2Stream::open(&mut send, &format!("userId=h2-{i}"), None).await;
        let ev = s.next().await;
        assert_eq!(ev.event, "CONNECTED");
        streams.push(s);
    }
    let stats = h2_get_json(&mut send, "/api/user/sse/stats").await;
    assert_eq!(stats["connections"], 10, "{stats}");
    let id = h2_publish(
        &mut send,
        serde_json::json!({"data": "to all", "target": "all"}),
    )
    .await;
    for s in &mut streams {
        let ev = s.next().await;
        assert_eq!(
            (ev.data.as_str(), ev.id.as_deref()),
            ("to all", Some(id.as_str()))
        );
    }
    // One stream ends (the client drops it); the others go on.
    drop(streams.pop());
    wait_connections_h2(&mut send, 9).await;
    let id = h2_publish(
        &mut send,
        serde_json::json!({"data": "again", "target": "all"}),
    )
    .await;
    for s in &mut streams {
        assert_eq!(s.next().await.id.as_deref(), Some(id.as_str()));
    }
}

async fn h2_get_json(send: &mut SendRequest<Full<Bytes>>, path: &str) -> serde_json::Value {
    serde_json::from_str(&h2_get_text(send, path).await).unwrap()
}

async fn h2_get_text(send: &mut SendRequest<Full<Bytes>>, path: &str) -> String {
    let req = hyper::Request::get(format!("https://localhost{path}"))
        .body(Full::default())
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Wait until the stats (over HTTP/2) report `n` streams.
async fn wait_connections_h2(send: &mut SendRequest<Full<Bytes>>, n: u64) {
    let until = Instant::now() + WAIT;
    loop {
        let s = h2_get_json(send, "/api/user/sse/stats").await;
        if s["connections"].as_u64() == Some(n) {
            return;
        }
        assert!(Instant::now() < until, "connections never reached {n}: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn http2_resumes_from_last_event_id() {
    let c = make_cert("resume", 2100);
    let h = start_tls(&c, &[], None);
    let mut send = h2(&h, &c.der).await;
    let first = h2_publish(&mut send, serde_json::json!({"data": "1", "target": "all"})).await;
    let second = h2_publish(&mut send, serde_json::json!({"data": "2", "target": "all"})).await;
    let third = h2_publish(&mut send, serde_json::json!({"data": "3", "target": "all"})).await;
    let mut s = H2Stream::open(&mut send, "userId=resumer", Some(&first)).await;
    assert_eq!(s.next().await.event, "CONNECTED");
    assert_eq!(s.next().await.id.as_deref(), Some(second.as_str()));
    assert_eq!(s.next().await.id.as_deref(), Some(third.as_str()));
}

fn wait_log(path: &Path, needle: &str) {
    let until = Instant::now() + WAIT;
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(Instant::now() < until, "no log line with {needle:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn peer_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_streams_stay() {
    let a = make_cert("reload-a", 2100);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls");
    let (cert, key) = (dir.join("live.crt"), dir.join("live.key"));
    std::fs::copy(&a.cert, &cert).unwrap();
    std::fs::copy(&a.key, &key).unwrap();
    let live = TestCert {
        der: a.der.clone(),
        cert: cert.clone(),
        key: key.clone(),
    };
    let log = dir.join("reload.stderr");
    let h = start_tls(&live, &[], Some(&log));
    let mut send = h2(&h, &a.der).await;
    let mut s = H2Stream::open(&mut send, "userId=stays", None).await;
    assert_eq!(s.next().await.event, "CONNECTED");

    // New files, SIGHUP: new handshakes get the new certificate.
    let b = make_cert("reload-b", 2100);
    std::fs::copy(&b.cert, &cert).unwrap();
    std::fs::copy(&b.key, &key).unwrap();
    h.signal("HUP");
    wait_log(&log, "TLS certificate reloaded");
    let tls = tls_connect(&h, &[&a.der, &b.der], &[b"h2"]).await.unwrap();
    assert_eq!(
        peer_cert(&tls),
        b.der,
        "a new handshake gets the new certificate"
    );
    // The stream opened before the reload still receives events.
    let id = h2_publish(
        &mut send,
        serde_json::json!({"data": "after", "target": "all"}),
    )
    .await;
    assert_eq!(s.next().await.id.as_deref(), Some(id.as_str()));

    // Unreadable files on SIGHUP: logged, the previous certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    h.signal("HUP");
    wait_log(&log, "not reloaded");
    let tls = tls_connect(&h, &[&a.der, &b.der], &[b"h2"]).await.unwrap();
    assert_eq!(peer_cert(&tls), b.der);
    let id = h2_publish(
        &mut send,
        serde_json::json!({"data": "still", "target": "all"}),
    )
    .await;
    assert_eq!(s.next().await.id.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn bad_inputs_on_the_https_port() {
    let c = make_cert("bad", 2100);
    let h = start_tls(&c, &["--header-timeout", "500ms"], None);
    // Plain HTTP: a plain 400 that says so, then the connection closes.
    let r = support::raw_request(h.addr, b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "https_required");
    // A handshake that never finishes is dropped within the header timeout.
    let mut idle = TcpStream::connect(h.addr).await.unwrap();
    idle.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // An ALPN herald does not speak is refused at the handshake.
    assert!(tls_connect(&h, &[&c.der], &[b"spdy/3"]).await.is_err());
    // The server is fine afterwards.
    let mut send = h2(&h, &c.der).await;
    assert_eq!(
        h2_get_json(&mut send, "/health/live").await["status"],
        "live"
    );
}

fn start_fails(cert: &Path, key: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .output()
        .expect("run herald");
    assert!(!out.status.success(), "herald started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_certificate_files_at_start_are_a_clear_error() {
    let expired = make_cert("expired", 2021);
    let msg = start_fails(&expired.cert, &expired.key);
    assert!(msg.contains("expired"), "{msg}");
    let a = make_cert("mismatch-a", 2100);
    let b = make_cert("mismatch-b", 2100);
    let msg = start_fails(&a.cert, &b.key);
    assert!(msg.contains("does not belong"), "{msg}");
    let msg = start_fails(Path::new("/nonexistent/cert.pem"), &a.key);
    assert!(msg.contains("--tls-cert"), "{msg}");
    // Only one of the two flags: clap says the other is required.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--tls-cert")
        .arg(&a.cert)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

#[tokio::test]
async fn sigterm_ends_http2_streams_and_sends_goaway() {
    let c = make_cert("drain", 2100);
    let mut h = start_tls(&c, &["--grace-period", "2s"], None);
    let mut send = h2(&h, &c.der).await;
    let mut streams = Vec::new();
    for i in 0..3 {
        let mut s = H2Stream::open(&mut send, &format!("userId=drain-{i}"), None).await;
        assert_eq!(s.next().await.event, "CONNECTED");
        streams.push(s);
    }
    h.signal("TERM");
    // Every stream ends, its last line a retry: hint.
    for s in &mut streams {
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(until, s.body.frame())
                .await
                .expect("the stream ends in time");
            match frame {
                None => break,
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        s.ready.extend(s.parser.feed(&data));
                    }
                }
                Some(Err(_)) => break,
            }
        }
        assert_eq!(
            s.parser.retries.len(),
            2,
            "the opening and a final retry: hint"
        );
    }
    // GOAWAY: the connection takes no new stream.
    let req = hyper::Request::get("https://localhost/health/live")
        .body(Full::default())
        .unwrap();
    let refused = match tokio::time::timeout(WAIT, send.ready()).await {
        Ok(Err(_)) => true,
        Ok(Ok(())) => tokio::time::timeout(WAIT, send.send_request(req))
            .await
            .map_or(true, |r| r.is_err()),
        Err(_) => false,
    };
    assert!(refused, "a new stream after GOAWAY was served");
    let status = h.wait_exit(WAIT).expect("herald exits");
    assert!(status.success(), "{status}");
}

/// Read an HTTP/1.1-over-TLS stream until `needle` shows up; returns all read.
async fn read_until(tls: &mut TlsStream<TcpStream>, seen: &mut Vec<u8>, needle: &str) {
    let mut buf = [0u8; 4096];
    let until = Instant::now() + WAIT;
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            Instant::now() < until,
            "no {needle:?} in {}",
            String::from_utf8_lossy(seen)
        );
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before {needle:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn http11_tls_streams_end_on_client_close_and_on_drain() {
    let c = make_cert("h1-end", 2100);
    let mut h = start_tls(&c, &["--grace-period", "2s"], None);
    let open = |user: &'static str| {
        let h = &h;
        let c = &c;
        async move {
            let mut tls = tls_connect(h, &[&c.der], &[b"http/1.1"]).await.unwrap();
            tls.write_all(
                format!(
                    "GET /api/user/sse/connect?userId={user} HTTP/1.1\r\nhost: localhost\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let mut seen = Vec::new();
            read_until(&mut tls, &mut seen, "event: CONNECTED").await;
            assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200 OK\r\n"));
            (tls, seen)
        }
    };
    let (a, _) = open("gone").await;
    let (mut b, mut seen) = open("stays").await;
    let mut send = h2(&h, &c.der).await;
    wait_connections_h2(&mut send, 2).await;
    // The client goes away: herald sees it without writing to it.
    drop(a);
    wait_connections_h2(&mut send, 1).await;
    // SIGTERM: the stream ends with its final retry: line and a TLS close.
    drop(send);
    h.signal("TERM");
    let mut buf = [0u8; 4096];
    loop {
        // A clean end: close_notify, not a truncation (an UnexpectedEof error).
        let n = tokio::time::timeout(WAIT, b.read(&mut buf))
            .await
            .expect("the stream ends in time")
            .expect("the stream ends with close_notify");
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    let last = text.trim_end_matches('\n').rsplit('\n').next().unwrap();
    assert!(last.starts_with("retry: "), "last line {last:?} of {text}");
    assert!(h.wait_exit(WAIT).is_some_and(|s| s.success()));
}

#[tokio::test]
async fn health_check_speaks_https_when_herald_does() {
    let c = make_cert("health", 2100);
    let h = start_tls(&c, &[], None);
    let check = |addr: String| {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--health-check", "--listen", &addr])
            .arg("--tls-cert")
            .arg(&c.cert)
            .arg("--tls-key")
            .arg(&c.key)
            .output()
            .expect("run the health check")
    };
    let ok = check(h.addr.to_string());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Another certificate than the one served: refused.
    let other = make_cert("health-other", 2100);
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--health-check", "--listen", &h.addr.to_string()])
        .arg("--tls-cert")
        .arg(&other.cert)
        .arg("--tls-key")
        .arg(&other.key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// A client offering only `suite` (and its protocol version), HTTP/1.1.
fn connector_with(
    root: &CertificateDer<'static>,
    suite: rustls::SupportedCipherSuite,
) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    store.add(root.clone()).unwrap();
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
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

/// Read SSE events from an HTTP/1.1-over-TLS stream (after its head) until one
/// named `last`; returns them in order.
async fn events_until_last(tls: &mut TlsStream<TcpStream>, mut seen: Vec<u8>) -> Vec<SseEvent> {
    let body_at = seen
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head read")
        + 4;
    let mut parser = Parser::default();
    let mut events = parser.feed(&seen[body_at..]);
    seen.clear();
    let mut buf = vec![0u8; 64 << 10];
    let until = Instant::now() + WAIT;
    while !events.iter().any(|e| e.event == "last") {
        assert!(
            Instant::now() < until,
            "no last event; got {}",
            events.len()
        );
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .expect("events in time")
            .expect("a readable TLS stream");
        assert!(n > 0, "closed after {} events", events.len());
        events.extend(parser.feed(&buf[..n]));
    }
    events
}

/// Send a connect with `query` on an HTTP/1.1-over-TLS connection and read up
/// to its CONNECTED event; returns what was read.
async fn open_stream(tls: &mut TlsStream<TcpStream>, query: &str) -> Vec<u8> {
    let req = format!("GET /api/user/sse/connect?{query} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    read_until(tls, &mut seen, "event: CONNECTED").await;
    seen
}

/// Lean HTTP/1.1 streams seal their own records once the handshake is done:
/// every suite a P-256 certificate allows, TLS 1.2 (explicit GCM nonce, and
/// ChaCha20) and TLS 1.3, gets every event whole and in order, small events
/// coalesced and an event larger than one TLS record split across records.
#[tokio::test]
async fn http11_tls_streams_with_every_cipher_suite_get_every_event() {
    let c = make_cert("h1-suites", 2100);
    let h = start_tls(&c, &[], None);
    let suites: Vec<_> = rustls::crypto::ring::default_provider()
        .cipher_suites
        .into_iter()
        .filter(|s| !format!("{:?}", s.suite()).contains("_RSA_"))
        .collect();
    assert_eq!(suites.len(), 6);
    let mut streams = Vec::new();
    for (i, suite) in suites.iter().enumerate() {
        let tcp = TcpStream::connect(h.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = tokio::time::timeout(WAIT, connector_with(&c.der, *suite).connect(name, tcp))
            .await
            .expect("handshake in time")
            .unwrap_or_else(|e| panic!("{suite:?}: {e}"));
        assert_eq!(tls.get_ref().1.negotiated_cipher_suite(), Some(*suite));
        let seen = open_stream(&mut tls, &format!("userId=suite-{i}&topics=all-suites")).await;
        streams.push((tls, seen));
    }
    let mut send = h2(&h, &c.der).await;
    wait_connections_h2(&mut send, suites.len() as u64).await;
    let big = "x".repeat(40_000);
    let mut published = Vec::new();
    for i in 0..60 {
        let data = if i == 30 {
            big.clone()
        } else {
            format!("event {i}")
        };
        let body =
            serde_json::json!({"event": "n", "data": data, "target": {"topics": ["all-suites"]}});
        published.push((h2_publish(&mut send, body).await, data));
    }
    let last =
        serde_json::json!({"event": "last", "data": "end", "target": {"topics": ["all-suites"]}});
    h2_publish(&mut send, last).await;
    for ((mut tls, seen), suite) in streams.into_iter().zip(&suites) {
        let got: Vec<(String, String)> = events_until_last(&mut tls, seen)
            .await
            .into_iter()
            .filter(|e| e.event == "n")
            .map(|e| (e.id.unwrap_or_default(), e.data))
            .collect();
        assert_eq!(got.len(), published.len(), "{suite:?}");
        assert!(got == published, "{suite:?}: events differ");
    }
}

/// A TLS stream that stops reading is closed as a slow consumer alone: the
/// sealed bytes the kernel does not take wait with the stream (bounded), the
/// queue behind them fills, and a reading TLS stream gets every event.
#[tokio::test]
async fn a_stalled_tls_stream_is_closed_alone() {
    let c = make_cert("h1-slow", 2100);
    let h = start_tls(
        &c,
        &["--max-queue-bytes", "262144", "--max-queue-events", "64"],
        None,
    );
    let open = |user: &'static str, rcvbuf: Option<u32>| {
        let (h, c) = (&h, &c);
        async move {
            let mut tls = tls_connect_rcvbuf(h, &[&c.der], &[b"http/1.1"], rcvbuf)
                .await
                .unwrap();
            let seen = open_stream(&mut tls, &format!("userId={user}&topics=slow")).await;
            (tls, seen)
        }
    };
    let (stalled, _) = open("stalled", Some(16 << 10)).await;
    let (mut reader, seen) = open("reader", None).await;
    let mut send = h2(&h, &c.der).await;
    wait_connections_h2(&mut send, 2).await;
    // The reader reads while the events are published; the stalled one never
    // does. 16 KiB events: the stalled socket's buffers fill within a few MB.
    let chunk = "y".repeat(16 << 10);
    let reading = tokio::spawn(async move {
        let events = events_until_last(&mut reader, seen).await;
        (events, reader)
    });
    let mut published = Vec::new();
    let mut closed = false;
    for i in 0..1500 {
        let body =
            serde_json::json!({"event": "bulk", "data": chunk, "target": {"topics": ["slow"]}});
        published.push(h2_publish(&mut send, body).await);
        if i % 50 == 49 {
            let stats = h2_get_json(&mut send, "/api/user/sse/stats").await;
            if stats["connections"].as_u64() == Some(1) {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the stalled TLS stream was never closed");
    let last = serde_json::json!({"event": "last", "data": "end", "target": {"topics": ["slow"]}});
    published.push(h2_publish(&mut send, last).await);
    let (events, _reader) = tokio::time::timeout(WAIT * 2, reading)
        .await
        .expect("the reader is done in time")
        .unwrap();
    let ids: Vec<String> = events.into_iter().filter_map(|e| e.id).collect();
    assert_eq!(
        ids, published,
        "the reading stream missed or reordered events"
    );
    let metrics = h2_get_text(&mut send, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herald_connections_closed_total{")
                && l.contains("reason=\"slow_consumer\"")
                && !l.ends_with(" 0")),
        "no slow_consumer close counted"
    );
    drop(stalled);
}
