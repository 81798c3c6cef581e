//! Connect admission (design "Reconnect storms", contract "Subscribe"): new streams
//! pass a token bucket; a connect that finds no token waits for its turn (still
//! `200`, since EventSource gives up on anything else), and only a wait beyond
//! the queue timeout is refused with `503` and a JSON error. Live streams are
//! unaffected.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::ops::id_u64;
use support::{Herald, SseClient, WAIT};

/// Connect and read the response head; returns the client and how long the
/// head took.
async fn timed_connect(addr: std::net::SocketAddr, user: String) -> (SseClient, Duration) {
    let t = Instant::now();
    let c = SseClient::connect(addr, &format!("/api/user/sse/connect?userId={user}"), &[]).await;
    (c, t.elapsed())
}

/// Connect until admitted (bounded), then consume `CONNECTED`.
async fn admitted_stream(addr: std::net::SocketAddr, user: &str) -> SseClient {
    let until = Instant::now() + WAIT;
    loop {
        let (mut c, _) = timed_connect(addr, user.to_string()).await;
        if c.status == 200 {
            assert_eq!(
                c.next_event(WAIT).await.expect("CONNECTED").event,
                "CONNECTED"
            );
            return c;
        }
        assert_eq!(c.status, 503, "{}", c.body);
        assert!(Instant::now() < until, "never admitted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_fresh_pod_admits_its_burst_at_once() {
    // A token bucket starts full: right after start, `--connect-burst` connects
    // pass without waiting, even at a low rate with a short queue timeout.
    let h = Herald::start(&[
        "--shards",
        "1",
        "--connect-rate",
        "1",
        "--connect-burst",
        "3",
        "--connect-queue-timeout",
        "100ms",
    ]);
    for i in 0..3 {
        let (c, took) = timed_connect(h.addr, format!("fresh-{i}")).await;
        assert_eq!(
            c.status, 200,
            "connect {i} of a burst of 3 on a fresh pod answered {}: {}",
            c.status, c.body
        );
        assert!(
            took < Duration::from_secs(1),
            "connect {i} within the burst waited {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_beyond_the_burst_are_delayed_not_refused() {
    let h = Herald::start(&[
        "--shards",
        "1",
        "--connect-rate",
        "20",
        "--connect-burst",
        "2",
        "--connect-queue-timeout",
        "5s",
    ]);
    let started = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|i| tokio::spawn(timed_connect(h.addr, format!("adm-{i}"))))
        .collect();
    let mut times = Vec::new();
    let mut clients = Vec::new();
    for t in tasks {
        let (mut c, took) = tokio::time::timeout(WAIT, t)
            .await
            .expect("connect in time")
            .expect("task");
        assert_eq!(c.status, 200, "a delayed connect was refused: {}", c.body);
        assert_eq!(
            c.next_event(WAIT).await.expect("CONNECTED").event,
            "CONNECTED"
        );
        times.push(took);
        clients.push(c);
    }
    let total = started.elapsed();
    times.sort();
    // 2 at once, then one every 50 ms: the last is admitted ~400 ms in.
    assert!(
        total >= Duration::from_millis(300),
        "10 connects at 20/s with a burst of 2 took only {total:?}: {times:?}"
    );
    assert!(times[0] < times[9], "no connect was delayed: {times:?}");
    h.wait_connections(10).await;
    // All of them are live streams.
    let id = h
        .publish(json!({"event": "hello", "data": "all", "target": "all"}))
        .await;
    for c in clients.iter_mut() {
        assert_eq!(
            c.next_non_heartbeat(WAIT)
                .await
                .expect("event")
                .id
                .as_deref(),
            Some(id.as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_beyond_the_queue_timeout_get_503_json_while_live_streams_flow() {
    let h = Herald::start(&[
        "--shards",
        "1",
        "--connect-rate",
        "1",
        "--connect-burst",
        "1",
        "--connect-queue-timeout",
        "100ms",
    ]);
    // The live stream takes a token (retried until admitted: whether a fresh
    // pod's bucket starts full is checked by `a_fresh_pod_admits_its_burst_at_once`).
    let mut live = admitted_stream(h.addr, "live").await;

    // A quick burst of connects: the next turn is ~1 s away, beyond 100 ms.
    let tasks: Vec<_> = (0..6)
        .map(|i| tokio::spawn(timed_connect(h.addr, format!("burst-{i}"))))
        .collect();
    // Meanwhile events keep flowing to the live stream.
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            h.publish(json!({"event": "tick", "data": i.to_string(), "target": "all"}))
                .await,
        );
    }
    let mut refused = 0;
    let mut admitted = Vec::new();
    for t in tasks {
        let (c, took) = tokio::time::timeout(WAIT, t)
            .await
            .expect("answer in time")
            .expect("task");
        match c.status {
            503 => {
                refused += 1;
                let body: serde_json::Value = serde_json::from_str(&c.body)
                    .unwrap_or_else(|e| panic!("503 body is not JSON ({e}): {:?}", c.body));
                assert!(
                    body["error"].is_string(),
                    "503 without an error code: {body}"
                );
                assert_eq!(c.header("content-type"), Some("application/json"));
                assert!(took < Duration::from_secs(5), "a refusal took {took:?}");
            }
            200 => admitted.push(c),
            s => panic!("connect answered {s}: {}", c.body),
        }
    }
    assert!(
        refused >= 1,
        "no connect was refused at 1/s with a 100 ms queue timeout"
    );

    for want in &ids {
        let ev = live
            .next_non_heartbeat(WAIT)
            .await
            .expect("the live stream kept receiving");
        assert_eq!(ev.id.as_deref(), Some(want.as_str()));
    }
    let mut last = 0;
    for id in &ids {
        assert!(id_u64(id) > last);
        last = id_u64(id);
    }

    // The refusal is temporary: once the bucket refills, a connect is admitted.
    admitted_stream(h.addr, "later").await;
}
