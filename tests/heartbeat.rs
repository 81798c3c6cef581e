//! Heartbeats (contract "Subscribe", item 5): every heartbeat interval each stream
//! gets `event: HEARTBEAT` with `data: <unix ms>` and no `id`, so it never moves
//! the client's resume point.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::{Herald, SseClient, SseEvent, WAIT};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The next event, which must be a HEARTBEAT.
async fn next_heartbeat(c: &mut SseClient) -> SseEvent {
    let ev = c
        .next_event(WAIT)
        .await
        .expect("a heartbeat within the wait");
    assert_eq!(ev.event, "HEARTBEAT", "expected a heartbeat, got {ev:?}");
    ev
}

fn heartbeat_ms(ev: &SseEvent) -> u64 {
    ev.data
        .parse()
        .unwrap_or_else(|_| panic!("heartbeat data is not unix ms: {:?}", ev.data))
}

#[tokio::test]
async fn heartbeat_carries_current_unix_ms_and_no_id() {
    let h = Herald::start(&["--shards", "1", "--heartbeat-interval", "300ms"]);
    let mut c = h.subscribe_connected("userId=hb-1").await;
    let id = h
        .publish(json!({"event": "tick", "data": "x", "target": "all"}))
        .await;
    let ev = c
        .next_non_heartbeat(WAIT)
        .await
        .expect("the published event");
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));
    assert_eq!(c.parser.last_event_id, id);

    for _ in 0..3 {
        let hb = next_heartbeat(&mut c).await;
        let now = unix_ms();
        let ts = heartbeat_ms(&hb);
        // Same host, same clock: the stamp is at most a (loaded) moment old.
        assert!(
            ts <= now + 1_000 && now - ts.min(now) < 5_000,
            "heartbeat stamp {ts} is far from now {now}"
        );
        assert_eq!(hb.id, None, "a heartbeat must not carry an id: {hb:?}");
        assert_eq!(
            c.parser.last_event_id, id,
            "a heartbeat moved the resume point"
        );
    }

    // A later event still moves the resume point as usual.
    let id2 = h
        .publish(json!({"event": "tick", "data": "y", "target": "all"}))
        .await;
    let ev = c.next_non_heartbeat(WAIT).await.expect("the second event");
    assert_eq!(ev.id.as_deref(), Some(id2.as_str()));
    assert_eq!(c.parser.last_event_id, id2);
}

#[tokio::test]
async fn heartbeat_before_any_event_leaves_no_resume_point() {
    let h = Herald::start(&["--shards", "1", "--heartbeat-interval", "300ms"]);
    let mut c = h.subscribe_connected("userId=hb-2").await;
    next_heartbeat(&mut c).await;
    next_heartbeat(&mut c).await;
    assert_eq!(
        c.parser.last_event_id, "",
        "CONNECTED or HEARTBEAT set a resume point"
    );
}

#[tokio::test]
async fn heartbeats_are_spaced_by_the_interval() {
    let h = Herald::start(&["--shards", "1", "--heartbeat-interval", "300ms"]);
    let mut c = h.subscribe_connected("userId=hb-3").await;
    let started = std::time::Instant::now();
    let mut stamps = Vec::new();
    for _ in 0..5 {
        stamps.push(heartbeat_ms(&next_heartbeat(&mut c).await));
    }
    let elapsed = started.elapsed();
    for w in stamps.windows(2) {
        let gap = w[1].saturating_sub(w[0]);
        assert!(
            (150..=1_500).contains(&gap),
            "heartbeats {} ms apart (interval 300 ms): {stamps:?}",
            gap
        );
    }
    // Five heartbeats need at least four intervals after the first; loose bounds.
    assert!(
        elapsed >= Duration::from_millis(4 * 150),
        "5 heartbeats in {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(5 * 1_500),
        "5 heartbeats took {elapsed:?}"
    );
}

#[tokio::test]
async fn every_stream_on_every_shard_gets_heartbeats() {
    let h = Herald::start(&["--shards", "2", "--heartbeat-interval", "300ms"]);
    let mut clients = Vec::new();
    // Open streams until both shards hold some (the kernel spreads them by hash).
    for i in 0..64 {
        clients.push(h.subscribe_connected(&format!("userId=hb-many-{i}")).await);
        if clients.len() >= 10 {
            h.wait_connections(clients.len() as u64).await;
            let s = h.stats().await;
            let per_shard: Vec<u64> = s["shards"]
                .as_array()
                .expect("shards")
                .iter()
                .map(|x| x["connections"].as_u64().unwrap_or(0))
                .collect();
            if per_shard.len() == 2 && per_shard.iter().all(|&n| n > 0) {
                break;
            }
        }
    }
    let s = h.stats().await;
    assert!(
        s["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .all(|x| x["connections"].as_u64() > Some(0)),
        "streams did not spread over both shards: {s}"
    );
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in 0..2 {
            let ev = c
                .next_event(WAIT)
                .await
                .unwrap_or_else(|| panic!("stream {i} got no heartbeat"));
            assert_eq!(ev.event, "HEARTBEAT", "stream {i}: {ev:?}");
            assert_eq!(ev.id, None);
            heartbeat_ms(&ev);
        }
    }
}
