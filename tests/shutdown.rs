//! Graceful shutdown (contract "Under stress": SIGTERM or SIGINT): stop accepting,
//! readiness `503`, end every stream with a `retry:` hint, exit within the grace
//! period.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::ops::{try_request, KeepAlive};
use support::{Herald, SseClient, WAIT};

const GRACE: Duration = Duration::from_secs(4);
/// Slack for process start-up of the signal path and a loaded machine.
const EXIT_MARGIN: Duration = Duration::from_secs(3);

/// Open `n` streams, send `sig`, check the drain from outside; returns the
/// streams (ended) for further checks.
async fn drain_with(sig: &str, n: usize) -> Vec<SseClient> {
    let mut h = Herald::start(&["--shards", "2", "--grace-period", "4s"]);
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        let c = h.subscribe_connected(&format!("userId=drain-{i}")).await;
        assert_eq!(
            c.parser.retries.len(),
            1,
            "a stream starts with one retry hint"
        );
        streams.push(c);
    }
    h.wait_connections(n as u64).await;
    assert_eq!(h.get("/health/ready").await.status, 200);

    h.signal(sig);
    let signalled = Instant::now();

    // Readiness turns 503 while the streams are being ended.
    let mut ready_503 = None;
    while signalled.elapsed() < Duration::from_secs(3) {
        match try_request(h.addr, "GET", "/health/ready", None, Duration::from_secs(1)).await {
            Some(r) if r.status == 503 => {
                ready_503 = Some(r);
                break;
            }
            Some(r) => assert_eq!(r.status, 200, "ready answered {}: {}", r.status, r.body),
            None => break, // the pod is already gone
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = ready_503.expect("/health/ready never answered 503 during the drain");
    ready.json();

    // A new stream is refused with 503 and a JSON error while draining.
    let late = try_request(
        h.addr,
        "GET",
        "/api/user/sse/connect?userId=late",
        None,
        Duration::from_secs(2),
    )
    .await
    .expect("a connect during the drain is answered");
    assert_eq!(
        late.status, 503,
        "connect during the drain answered {}: {}",
        late.status, late.body
    );
    assert!(
        late.json()["error"].is_string(),
        "503 without a JSON error: {}",
        late.body
    );

    // Every stream gets a final retry hint, then EOF.
    for (i, c) in streams.iter_mut().enumerate() {
        assert!(
            c.wait_closed(GRACE + EXIT_MARGIN).await,
            "stream {i} was not ended by the drain"
        );
        assert_eq!(
            c.parser.retries.len(),
            2,
            "stream {i} did not get a final retry hint: {:?}",
            c.parser.retries
        );
        let rest: Vec<_> = c
            .take_ready()
            .into_iter()
            .filter(|e| e.event != "HEARTBEAT")
            .collect();
        assert!(
            rest.is_empty(),
            "stream {i}: unexpected events during the drain: {rest:?}"
        );
    }

    // The process exits cleanly within the grace period.
    let left = (GRACE + EXIT_MARGIN).saturating_sub(signalled.elapsed());
    let status = h
        .wait_exit(left)
        .unwrap_or_else(|| panic!("herald still running {:?} after {sig}", signalled.elapsed()));
    assert_eq!(
        status.code(),
        Some(0),
        "herald exited with {status} after {sig}"
    );
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_stream_with_a_jittered_retry_hint_and_exits_zero() {
    let streams = drain_with("TERM", 200).await;
    let finals: Vec<u64> = streams
        .iter()
        .take(20)
        .map(|c| c.parser.retries[1])
        .collect();
    let distinct: HashSet<_> = finals.iter().collect();
    assert!(
        distinct.len() > 1,
        "every stream got the same retry hint (no jitter): {finals:?}"
    );
    let initials: HashSet<_> = streams
        .iter()
        .take(20)
        .map(|c| c.parser.retries[0])
        .collect();
    assert!(
        initials.len() > 1,
        "every stream got the same initial retry hint (no jitter)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_the_same_way() {
    drain_with("INT", 40).await;
}

#[tokio::test]
async fn streams_on_both_paths_are_ended_with_a_retry_hint() {
    // A lean stream and one served by hyper (opened on a keep-alive connection
    // after another request) both get the final hint; the pod exits in time.
    let mut h = Herald::start(&["--shards", "1", "--grace-period", "2s"]);
    let lean = h.subscribe_connected("userId=lean").await;
    let mut ka = KeepAlive::connect(h.addr).await;
    assert_eq!(ka.send("GET", "/health/live", &[], None).await.status, 200);
    let mut hyper_stream = ka.into_sse("/api/user/sse/connect?userId=kept", &[]).await;
    assert_eq!(hyper_stream.status, 200);
    assert_eq!(
        hyper_stream
            .next_event(WAIT)
            .await
            .expect("CONNECTED")
            .event,
        "CONNECTED"
    );
    h.wait_connections(2).await;

    h.signal("TERM");
    let signalled = Instant::now();
    for (name, mut c) in [("lean", lean), ("keep-alive", hyper_stream)] {
        assert!(c.wait_closed(WAIT).await, "{name} stream not ended");
        assert_eq!(
            c.parser.retries.len(),
            2,
            "{name} stream: no final retry hint: {:?}",
            c.parser.retries
        );
    }
    let status = h
        .wait_exit(Duration::from_secs(2) + EXIT_MARGIN)
        .expect("exit within the grace period");
    assert_eq!(status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(2) + EXIT_MARGIN);
}
