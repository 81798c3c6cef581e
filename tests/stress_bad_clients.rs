//! Misbehaving clients (contract "Under stress, faults and bad input"): clients
//! that reset, close mid-request or mid-stream, send garbage or never finish
//! their head do not crash herald, leak no connection, and do not disturb the
//! streams that behave.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::ops::{metric_sum, metrics_text, publish_at};
use support::{Herald, SseClient, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Close with a reset (RST) instead of a FIN.
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// Read until `needle` shows up (or EOF / a short timeout); whether it did.
async fn read_until(s: &mut TcpStream, needle: &[u8]) -> bool {
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        while !seen.windows(needle.len()).any(|w| w == needle) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await
    .unwrap_or(false)
}

/// One misbehaving client of kind `i % 10`; false if it did not get as far as
/// it meant to (so the storm really exercises open streams).
async fn bad_client(addr: SocketAddr, i: usize) -> bool {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head =
        format!("GET /api/user/sse/connect?userId=bad-{i}&topics=t HTTP/1.1\r\nhost: x\r\n\r\n");
    match i % 10 {
        // Connect and go away, politely or not.
        0 => drop(s),
        1 => reset(s),
        // Half a request head, then FIN or RST.
        2 => {
            let _ = s.write_all(&head.as_bytes()[..20]).await;
            drop(s);
        }
        3 => {
            let _ = s.write_all(&head.as_bytes()[..30]).await;
            reset(s);
        }
        // A whole connect, gone before reading anything.
        4 => {
            let _ = s.write_all(head.as_bytes()).await;
            drop(s);
        }
        5 => {
            let _ = s.write_all(head.as_bytes()).await;
            reset(s);
        }
        // Mid-stream: after CONNECTED (and maybe some events), FIN or RST.
        6 => {
            let _ = s.write_all(head.as_bytes()).await;
            let ok = read_until(&mut s, b"CONNECTED").await;
            drop(s);
            return ok;
        }
        7 => {
            let _ = s.write_all(head.as_bytes()).await;
            let ok = read_until(&mut s, b"CONNECTED").await && read_until(&mut s, b"id: ").await;
            reset(s);
            return ok;
        }
        // Garbage, and a publish whose body never fully arrives.
        8 => {
            let _ = s.write_all(b"\x00\xff\x13garbage\r\n\r\n").await;
            let ok = read_until(&mut s, b"HTTP/1.1 400").await;
            reset(s);
            return ok;
        }
        _ => {
            let req = b"POST /api/broadcast HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"event\":";
            let _ = s.write_all(req).await;
            reset(s);
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_reset_storm_leaves_no_connection_and_no_damage() {
    const CYCLES: usize = 1000;
    const BATCH: usize = 50;
    let h = Herald::start(&["--shards", "2", "--heartbeat-interval", "200ms"]);
    // A well-behaved stream through the whole storm.
    let mut good = h.subscribe_connected("userId=good&topics=t").await;

    // Events flow during the storm (so streams die mid-write too).
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let addr = h.addr;
        tokio::spawn(async move {
            let mut ids = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                ids.push(publish_at(addr, &json!({"event": "storm", "data": "x".repeat(512), "target": {"topics": ["t"]}})).await);
            }
            ids
        })
    };

    let started = Instant::now();
    for batch in 0..CYCLES / BATCH {
        let tasks: Vec<_> = (0..BATCH)
            .map(|j| tokio::spawn(bad_client(h.addr, batch * BATCH + j)))
            .collect();
        for (j, t) in tasks.into_iter().enumerate() {
            let ok = tokio::time::timeout(WAIT, t)
                .await
                .expect("bad client finished")
                .expect("bad client task");
            assert!(
                ok,
                "bad client {} (kind {}) did not get the answer it expected",
                batch * BATCH + j,
                j % 10
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let ids = tokio::time::timeout(WAIT, publisher)
        .await
        .expect("publisher done")
        .expect("publisher ok");
    eprintln!(
        "{CYCLES} bad clients in {:?}, {} events published meanwhile",
        started.elapsed(),
        ids.len()
    );

    let mut h = h;
    assert!(
        h.child.try_wait().expect("try_wait").is_none(),
        "herald died during the storm"
    );

    // The good stream got every event, in order.
    for want in &ids {
        let ev = good
            .next_non_heartbeat(WAIT)
            .await
            .expect("the good stream kept receiving");
        assert_eq!(ev.id.as_deref(), Some(want.as_str()));
    }

    // Only the good stream is left (bounded poll: some writers notice late).
    h.wait_connections(1).await;
    drop(good);
    h.wait_connections(0).await;
    let s = h.stats().await;
    assert_eq!(s["users"].as_u64(), Some(0), "users left behind: {s}");
    let text = metrics_text(h.addr).await;
    assert!(
        metric_sum(&text, "herald_connections_open", &[]) == 0.0,
        "connections_open gauge is not 0"
    );

    // A normal stream works afterwards.
    let mut c = h.subscribe_connected("userId=after").await;
    let id = h
        .publish(json!({"event": "after", "data": "ok", "target": {"users": ["after"]}}))
        .await;
    assert_eq!(
        c.next_non_heartbeat(WAIT)
            .await
            .expect("event")
            .id
            .as_deref(),
        Some(id.as_str())
    );
    assert_eq!(h.get("/health/ready").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_heads_time_out_without_holding_up_anyone() {
    let h = Herald::start(&["--shards", "2", "--header-timeout", "500ms"]);
    let mut hanging = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(h.addr).await.expect("connect");
        s.write_all(
            format!("GET /api/user/sse/connect?userId=slow-{i} HTTP/1.1\r\nhost: x\r\n").as_bytes(),
        )
        .await
        .expect("write half a head");
        hanging.push(s);
    }
    // Meanwhile, a normal stream and a publish go through at once.
    let mut c = SseClient::connect(h.addr, "/api/user/sse/connect?userId=ok", &[]).await;
    assert_eq!(c.status, 200);
    assert_eq!(
        c.next_event(WAIT).await.expect("CONNECTED").event,
        "CONNECTED"
    );
    let id = h
        .publish(json!({"event": "e", "data": "d", "target": "all"}))
        .await;
    assert_eq!(
        c.next_non_heartbeat(WAIT)
            .await
            .expect("event")
            .id
            .as_deref(),
        Some(id.as_str())
    );

    // Every hanging client is answered (408) and closed after the timeout.
    for (i, s) in hanging.iter_mut().enumerate() {
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("hanging client {i} was never closed"))
            .ok();
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "hanging client {i} got {text:?}"
        );
    }
    h.wait_connections(1).await;
}
