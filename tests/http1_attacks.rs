//! What one HTTP/1.1 client can make herald hold, and for how long: request
//! bodies count against the shard's `--body-budget` (past it, `503` before
//! the body is read), a body must arrive within `--header-timeout` (`408`),
//! and a publish without the publisher credential is refused from its head
//! (`401`) before any of its body is read. Real sockets, a real herald.

mod support;

use std::time::{Duration, Instant};

use support::{Herald, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read what herald answers until it closes (bounded): the status line's code.
async fn status_then_close(s: &mut TcpStream) -> (Option<u16>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    let text = String::from_utf8_lossy(&got);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok());
    (status, closed)
}

const HEAD: &str = "POST /api/broadcast HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 65536\r\n\r\n";

#[tokio::test]
async fn http1_bodies_stay_within_the_shards_body_budget_and_time() {
    let h = Herald::start(&[
        "--shards",
        "1",
        "--body-budget",
        "1MiB",
        "--header-timeout",
        "1500ms",
    ]);
    let before = h.rss_bytes();
    let mut conns = Vec::new();
    let body = vec![b' '; 60_000];
    for _ in 0..300 {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        s.write_all(HEAD.as_bytes()).await.unwrap();
        // herald may have answered 503 and closed already: not an error here.
        let _ = tokio::time::timeout(Duration::from_millis(200), s.write_all(&body)).await;
        conns.push(s);
    }
    let grown = h.rss_bytes().saturating_sub(before);
    eprintln!("300 connections holding 60,000 of 65,536 body bytes: herald grew by {grown} B");
    // At most the budget of bodies (1 MiB, 16 of them), plus what each
    // connection costs (its task, socket and head buffer).
    assert!(
        grown <= (1 << 20) + 300 * (16 << 10),
        "herald grew by {grown} B"
    );
    let started = Instant::now();
    let (mut refused, mut timed_out) = (0, 0);
    for s in &mut conns {
        match status_then_close(s).await {
            (Some(503), true) => refused += 1,
            (Some(408), true) => timed_out += 1,
            other => panic!("{other:?}"),
        }
    }
    eprintln!("{refused} refused (503), {timed_out} timed out (408)");
    assert!((1..=17).contains(&timed_out), "{timed_out} bodies held");
    assert_eq!(refused + timed_out, 300);
    assert!(started.elapsed() <= Duration::from_secs(4));
    // The budget is back: a publish goes through.
    let r = h
        .post(
            "/api/broadcast",
            r#"{"event":"x","data":"y","target":"all"}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
}

#[tokio::test]
async fn http1_publish_without_credential_is_refused_before_its_body() {
    let h = Herald::start(&["--publisher-token", "attack-test-publisher-token"]);
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(HEAD.as_bytes()).await.unwrap();
    s.write_all(&[b' '; 1000]).await.unwrap();
    // The answer comes though 64,536 body bytes are still to come.
    let (status, closed) = status_then_close(&mut s).await;
    assert_eq!(status, Some(401));
    assert!(closed, "the connection is closed: its body is not read");
}
