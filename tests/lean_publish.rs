//! Publishes on keep-alive connections (served without hyper, see
//! `src/http/lean.rs`) answer exactly as the route does: many requests on one
//! connection, pipelined, a body in pieces, errors that keep the connection,
//! auth, CORS and idempotency headers, limits that close it, and a connection
//! that turns to another route half-way.

mod support;

use std::time::Duration;

use serde_json::json;
use support::check::next_ev;
use support::{parse_response, Herald, Response, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "publisher-token-lean-0123456789";

/// A keep-alive client: writes raw requests, reads responses framed by
/// `content-length`.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(h: &Herald) -> Conn {
        Conn {
            s: TcpStream::connect(h.addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.s.write_all(raw).await.expect("write");
    }

    /// The next whole response (panics past [`WAIT`]).
    async fn response(&mut self) -> Response {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().expect("content-length"))
                        .unwrap_or(0);
                    let total = end + 4 + len;
                    if self.buf.len() >= total {
                        let r = parse_response(&self.buf[..total]);
                        self.buf.drain(..total);
                        return r;
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = self.s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "closed before a whole response: {:?}", self.buf);
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("a response in time")
    }

    /// Whether the server closed the connection (EOF within [`WAIT`]).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(WAIT, self.s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn publish_req(body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST /api/broadcast HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn ev(data: &str) -> String {
    json!({"data": data, "target": "all"}).to_string()
}

#[tokio::test]
async fn many_publishes_on_one_connection_pipelined_or_not() {
    let h = Herald::start(&[]);
    let mut sub = h.subscribe_connected("userId=l1").await;
    let mut c = Conn::open(&h).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        c.send(&publish_req(&ev(&format!("k{i}")), "")).await;
        let r = c.response().await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        ids.push(r.json()["id"].as_str().expect("id").to_string());
    }
    // Three in one write, and a body that comes in two pieces.
    let mut raw = Vec::new();
    for i in 5..8 {
        raw.extend(publish_req(&ev(&format!("k{i}")), ""));
    }
    c.send(&raw).await;
    for _ in 5..8 {
        let r = c.response().await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.json()["id"].as_str().expect("id").to_string());
    }
    let split = publish_req(&ev("k8"), "");
    let (a, b) = split.split_at(split.len() - 5);
    c.send(a).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b).await;
    let r = c.response().await;
    ids.push(r.json()["id"].as_str().expect("id").to_string());
    for (i, id) in ids.iter().enumerate() {
        let e = next_ev(&mut sub, "a publish").await;
        assert_eq!(
            (e.id.as_deref(), e.data.as_str()),
            (Some(id.as_str()), &*format!("k{i}"))
        );
    }
}

#[tokio::test]
async fn errors_keep_the_connection_and_limits_close_it() {
    let h = Herald::start(&["--max-body", "1KiB"]);
    let mut c = Conn::open(&h).await;
    c.send(&publish_req("{not json", "")).await;
    let r = c.response().await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_json"))
    );
    c.send(&publish_req(&ev("ok"), "idempotency-key: bad key\r\n"))
        .await;
    let r = c.response().await;
    assert_eq!(r.json()["error"], "invalid_idempotency_key");
    c.send(&publish_req(&ev("ok"), "")).await;
    assert_eq!(c.response().await.status, 202, "still usable after 400s");
    // Over --max-body: 413, and the connection ends.
    c.send(&publish_req(&ev(&"x".repeat(2000)), "")).await;
    let r = c.response().await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("body_too_large"))
    );
    assert!(c.closed().await, "closed after a 413");
}

#[tokio::test]
async fn a_body_that_never_comes_is_timed_out() {
    let h = Herald::start(&["--header-timeout", "300ms"]);
    let mut c = Conn::open(&h).await;
    c.send(b"POST /api/broadcast HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n\r\n{\"tar")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 408, "{}", r.body);
    assert!(c.closed().await);
}

#[tokio::test]
async fn auth_cors_and_replays_answer_as_the_route_does() {
    let h = Herald::start(&[
        "--publisher-token",
        TOKEN,
        "--cors-origin",
        "https://app.example.com",
    ]);
    let mut c = Conn::open(&h).await;
    c.send(&publish_req(&ev("x"), "")).await;
    let r = c.response().await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.header("vary"), Some("origin"));
    let auth = format!("authorization: Bearer {TOKEN}\r\norigin: https://app.example.com\r\n");
    c.send(&publish_req(
        &ev("x"),
        &format!("{auth}idempotency-key: lean-1\r\n"),
    ))
    .await;
    let first = c.response().await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(
        first.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        first.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(first.header("idempotent-replayed"), None);
    c.send(&publish_req(
        &ev("x"),
        &format!("{auth}idempotency-key: lean-1\r\n"),
    ))
    .await;
    let again = c.response().await;
    assert_eq!((again.status, &again.body), (202, &first.body));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn a_connection_can_turn_to_other_routes() {
    let h = Herald::start(&[]);
    let mut c = Conn::open(&h).await;
    c.send(&publish_req(&ev("a"), "")).await;
    assert_eq!(c.response().await.status, 202);
    c.send(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("live")));
    // hyper serves the rest, publishes included.
    c.send(&publish_req(&ev("b"), "")).await;
    assert_eq!(c.response().await.status, 202);
    // A chunked publish is hyper's from the start.
    let mut c = Conn::open(&h).await;
    let body = ev("c");
    c.send(
        format!(
            "POST /api/broadcast HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(c.response().await.status, 202);
}
