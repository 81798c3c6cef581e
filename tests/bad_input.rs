//! Bad input: every refusal has its status and a JSON body with an `error` field;
//! oversized and slow request heads are cut off; nothing of it harms the server.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::check::{assert_json_error, next_ev, send_while_reading};
use support::{raw_request, request, Herald, SseClient, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECT: &str = "/api/user/sse/connect";

async fn connect_refused(h: &Herald, query: &str, status: u16) {
    let r = h.get(&format!("{CONNECT}?{query}")).await;
    assert_json_error(&r, status, &format!("connect ?{query}"));
}

async fn bad_connects(h: &Herald) {
    connect_refused(h, "", 400).await;
    connect_refused(h, "connectionId=c1", 400).await;
    connect_refused(h, "userId=", 400).await;
    for bad in [
        "a%20b", "a/b", "%C3%BC", "a%2Cb", "a%00b", "a+b", "a%22b", "a%0Ab",
    ] {
        connect_refused(h, &format!("userId={bad}"), 400).await;
    }
    connect_refused(h, &format!("userId={}", "u".repeat(129)), 400).await;
    for bad in ["", "a%20b", "c/1", "%C3%A9"] {
        connect_refused(h, &format!("userId=ok&connectionId={bad}"), 400).await;
    }
    connect_refused(
        h,
        &format!("userId=ok&connectionId={}", "c".repeat(129)),
        400,
    )
    .await;
    for bad in ["ok,b%2Fad", "a%20b", "x,y z", &"t".repeat(129)] {
        connect_refused(h, &format!("userId=ok&topics={bad}"), 400).await;
    }
    let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    connect_refused(h, &format!("userId=ok&topics={}", many.join(",")), 400).await;
}

async fn bad_publishes(h: &Herald) {
    let cases: &[(&str, &str)] = &[
        ("{", "invalid JSON"),
        ("{\"target\":\"all\",", "truncated JSON"),
        ("not json at all", "text"),
        ("", "empty body"),
        ("[1,2]", "array body"),
        ("\"all\"", "string body"),
        ("42", "number body"),
        ("null", "null body"),
        (r#"{"data":"x"}"#, "missing target"),
        (r#"{"data":"x","target":null}"#, "null target"),
        (r#"{"target":"some"}"#, "unknown target string"),
        (r#"{"target":"ALL"}"#, "target is case-sensitive"),
        (r#"{"target":42}"#, "numeric target"),
        (r#"{"target":{}}"#, "empty target object"),
        (r#"{"target":{"groups":["a"]}}"#, "unknown target kind"),
        (r#"{"target":{"users":"u1"}}"#, "users not a list"),
        (r#"{"target":{"users":[]}}"#, "empty users list"),
        (r#"{"target":{"topics":[]}}"#, "empty topics list"),
        (r#"{"target":{"users":["a b"]}}"#, "bad user name"),
        (r#"{"target":{"users":[1]}}"#, "numeric user name"),
        (r#"{"target":{"topics":["t/1"]}}"#, "bad topic name"),
        (
            r#"{"target":{"users":["a"],"topics":["b"]}}"#,
            "two target kinds",
        ),
        (r#"{"target":"all","event":"bad name"}"#, "bad event name"),
        (
            r#"{"target":"all","event":"a\nb"}"#,
            "event name with a line break",
        ),
        (r#"{"target":"all","event":""}"#, "empty event name"),
        (r#"{"target":"all","event":5}"#, "numeric event name"),
    ];
    for (body, what) in cases {
        let r = h.post("/api/broadcast", body).await;
        assert_ne!(r.status, 422, "{what}: must be 400, not 422");
        assert_json_error(&r, 400, what);
    }
    let long = format!(r#"{{"target":"all","event":"{}"}}"#, "e".repeat(129));
    assert_json_error(
        &h.post("/api/broadcast", &long).await,
        400,
        "129-byte event name",
    );
}

/// A valid publish body of exactly `len` bytes.
fn body_of_len(len: usize) -> Vec<u8> {
    let prefix = br#"{"target":"all","data":""#;
    let suffix = br#""}"#;
    let mut b = prefix.to_vec();
    b.resize(len - suffix.len(), b'x');
    b.extend_from_slice(suffix);
    assert_eq!(b.len(), len);
    b
}

fn publish_request(body: &[u8], chunked: bool) -> Vec<u8> {
    let mut raw = b"POST /api/broadcast HTTP/1.1\r\nhost: herald\r\nconnection: close\r\n\
content-type: application/json\r\n"
        .to_vec();
    if chunked {
        raw.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        for part in body.chunks(700) {
            raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            raw.extend_from_slice(part);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
    } else {
        raw.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        raw.extend_from_slice(body);
    }
    raw
}

async fn body_limit(h: &Herald, max: usize) {
    for chunked in [false, true] {
        let what = if chunked { "chunked" } else { "content-length" };
        let r = send_while_reading(h.addr, publish_request(&body_of_len(max + 1), chunked)).await;
        assert_json_error(&r, 413, &format!("{what} body of {} bytes", max + 1));
        let r = send_while_reading(h.addr, publish_request(&body_of_len(max * 4), chunked)).await;
        assert_json_error(&r, 413, &format!("{what} body of {} bytes", max * 4));
        let r = send_while_reading(h.addr, publish_request(&body_of_len(max), chunked)).await;
        assert_eq!(
            r.status, 202,
            "{what} body of exactly {max} bytes: {}",
            r.body
        );
    }
}

async fn unknown_paths_and_methods(h: &Herald) {
    for path in [
        "/nope",
        "/index.htm",
        "/api/user/sse/connectx",
        "/api/broadcast/x",
        "/metricsz",
    ] {
        let r = h.get(path).await;
        assert_json_error(&r, 404, &format!("GET {path}"));
    }
    for (method, path) in [
        ("POST", CONNECT),
        ("GET", "/api/broadcast"),
        ("PUT", "/api/broadcast"),
        ("GET", "/api/user/sse/disconnect"),
        ("DELETE", "/api/user/sse/stats"),
        ("POST", "/health/live"),
        ("POST", "/health/ready"),
        ("DELETE", "/metrics"),
    ] {
        let r = request(h.addr, method, path, &[], None).await;
        assert_json_error(&r, 405, &format!("{method} {path}"));
    }
}

async fn oversized_headers(h: &Herald) {
    let big = "a".repeat(17 * 1024);
    for path in ["/health/live", &format!("{CONNECT}?userId=big")] {
        let r = request(h.addr, "GET", path, &[("x-big", &big)], None).await;
        assert_json_error(&r, 431, &format!("one 17 KiB header on {path}"));
    }
    // Many headers that only together pass 16 KiB.
    let part = "b".repeat(500);
    let names: Vec<String> = (0..40).map(|i| format!("x-part-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), part.as_str())).collect();
    let r = request(h.addr, "GET", "/health/live", &headers, None).await;
    assert_json_error(&r, 431, "40 headers of 500 bytes");
    // A long URL counts too.
    let r = h
        .get(&format!("/health/live?pad={}", "p".repeat(17 * 1024)))
        .await;
    assert_json_error(&r, 431, "17 KiB request target");
    // Well under the limit is fine.
    let r = request(
        h.addr,
        "GET",
        "/health/live",
        &[("x-ok", &"c".repeat(8 * 1024))],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "an 8 KiB header must be accepted");
}

async fn garbage_requests(h: &Herald) {
    let cases: &[&[u8]] = &[
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"GET / FTP/1.0\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nno colon here\r\n\r\n",
    ];
    for raw in cases {
        let r = raw_request(h.addr, raw).await;
        assert_json_error(&r, 400, &format!("{:?}", String::from_utf8_lossy(raw)));
    }
}

/// Read until the server closes; true if it did within `bound`.
async fn closed_within(s: &mut TcpStream, bound: Duration) -> bool {
    tokio::time::timeout(bound, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// With `--header-timeout 300ms`: heads that never complete are cut off.
async fn slow_heads(h: &Herald) {
    const BOUND: Duration = Duration::from_secs(5);
    let partials: &[&[u8]] = &[
        b"",
        b"GET /health/live HTTP/1.1\r\nhost: x\r\n",
        b"GET /api/user/sse/connect?userId=slow HTTP/1.1\r\n",
        b"POST /api/broadcast HTTP/1.1\r\ncontent-le",
    ];
    for partial in partials {
        let mut s = TcpStream::connect(h.addr).await.expect("connect");
        let started = Instant::now();
        s.write_all(partial).await.expect("write partial head");
        assert!(
            closed_within(&mut s, BOUND).await,
            "a partial head {:?} was not cut off within {BOUND:?}",
            String::from_utf8_lossy(partial)
        );
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "closed before the header timeout"
        );
    }

    // Slowloris: one byte every 50 ms never completes the head in time.
    let s = TcpStream::connect(h.addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let started = Instant::now();
    let drip = tokio::spawn(async move {
        let head = b"GET /health/live HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in head.iter() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let closed = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    drip.abort();
    assert!(closed, "a dripping head was not cut off within {BOUND:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

/// A normal connect and publish still work.
async fn still_serves(h: &Herald) {
    let mut c = h.subscribe_connected("userId=after-all").await;
    let id = h
        .publish(json!({"data": "fine", "target": {"users": ["after-all"]}}))
        .await;
    let ev = next_ev(&mut c, "event after the bad input").await;
    assert_eq!((ev.id.as_ref(), ev.data.as_str()), (Some(&id), "fine"));
    assert_eq!(h.get("/health/ready").await.status, 200);
}

#[tokio::test]
async fn connect_with_bad_params_is_400() {
    let h = Herald::start(&["--shards", "2"]);
    bad_connects(&h).await;
    h.wait_connections(0).await;
}

#[tokio::test]
async fn connect_at_the_name_and_topic_bounds_is_accepted() {
    let h = Herald::start(&["--shards", "2"]);
    let user = "u".repeat(128);
    let conn = "c".repeat(128);
    let topics: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
    let q = format!(
        "userId={user}&connectionId={conn}&topics={}",
        topics.join(",")
    );
    let mut c = SseClient::connect(h.addr, &format!("{CONNECT}?{q}"), &[]).await;
    assert_eq!(c.status, 200, "128-byte names and 64 topics: {}", c.body);
    let ev = c.next_event(WAIT).await.expect("CONNECTED");
    assert_eq!(ev.event, "CONNECTED");
    let id = h
        .publish(json!({"data": "t63", "target": {"topics": ["t63"]}}))
        .await;
    assert_eq!(next_ev(&mut c, "topic event").await.id, Some(id));
    let odd = h.subscribe_connected("userId=A.z_0:9@x-Y").await;
    drop(odd);
}

#[tokio::test]
async fn publish_with_bad_body_is_400() {
    let h = Herald::start(&["--shards", "2"]);
    bad_publishes(&h).await;
}

#[tokio::test]
async fn publish_over_the_default_body_limit_is_413() {
    let h = Herald::start(&["--shards", "2"]);
    body_limit(&h, 64 * 1024).await;
}

#[tokio::test]
async fn publish_over_a_configured_body_limit_is_413() {
    let h = Herald::start(&["--shards", "2", "--max-body", "1KiB"]);
    body_limit(&h, 1024).await;
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let h = Herald::start(&["--shards", "2"]);
    unknown_paths_and_methods(&h).await;
}

#[tokio::test]
async fn request_headers_over_16_kib_are_431() {
    let h = Herald::start(&["--shards", "2"]);
    oversized_headers(&h).await;
}

#[tokio::test]
async fn garbage_request_is_400() {
    let h = Herald::start(&["--shards", "2"]);
    garbage_requests(&h).await;
}

#[tokio::test]
async fn incomplete_request_head_is_cut_off_after_the_header_timeout() {
    let h = Herald::start(&["--shards", "2", "--header-timeout", "300ms"]);
    slow_heads(&h).await;
}

#[tokio::test]
async fn server_survives_all_bad_input() {
    let h = Herald::start(&["--shards", "2", "--header-timeout", "300ms"]);
    bad_connects(&h).await;
    bad_publishes(&h).await;
    body_limit(&h, 64 * 1024).await;
    unknown_paths_and_methods(&h).await;
    oversized_headers(&h).await;
    garbage_requests(&h).await;
    slow_heads(&h).await;
    // Clients that vanish mid-request.
    for partial in [
        &b"GET /api/user/sse/connect?userId=x HTTP/1.1\r\n"[..],
        b"POST /api/broadcast HTTP/1.1\r\ncontent-length: 100\r\n\r\n{\"tar",
    ] {
        let mut s = TcpStream::connect(h.addr).await.expect("connect");
        s.write_all(partial).await.expect("write");
        drop(s);
    }
    still_serves(&h).await;
}
