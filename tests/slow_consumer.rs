//! Slow consumers (contract "Under stress"): a connection whose bounded outbound
//! queue fills up is closed with reason `slow_consumer` and counted; nobody else
//! waits for it or loses anything; it resumes from history when it reconnects.

mod support;

use std::time::Duration;

use serde_json::json;
use support::ops::{connect_with_rcvbuf, id_u64, metric_sum, metrics_text};
use support::{Herald, SseClient, WAIT};
use tokio::sync::watch;

const EVENT_BYTES: usize = 16 * 1024;
const MAX_EVENTS: usize = 2000;
/// The publisher never runs further ahead of the fast reader than this, so the
/// fast reader's queue (16 events of 16 KiB at 256 KiB) can never fill up.
const MAX_LAG: u64 = 8;

/// Read `c` until an event named `last`; report progress on `progress`. The
/// stream is handed back, still open.
async fn read_all(mut c: SseClient, progress: watch::Sender<u64>) -> (Vec<u64>, SseClient) {
    let mut ids = Vec::new();
    loop {
        // A stream that ends or stalls returns short; the caller reports it.
        let Some(ev) = c.next_non_heartbeat(Duration::from_secs(20)).await else {
            return (ids, c);
        };
        ids.push(id_u64(ev.id.as_deref().expect("events carry ids")));
        let _ = progress.send(ids.len() as u64);
        if ev.event == "last" {
            return (ids, c);
        }
        assert_eq!(ev.event, "bulk");
        assert_eq!(ev.data.len(), EVENT_BYTES);
    }
}

/// What the server says about slow consumers, for failure messages.
async fn diagnosis(h: &Herald) -> String {
    let text = metrics_text(h.addr).await;
    format!(
        "closed{{slow_consumer}}={} dropped{{slow_consumer}}={} stats={}",
        metric_sum(
            &text,
            "herald_connections_closed_total",
            &[("reason", "slow_consumer")]
        ),
        metric_sum(
            &text,
            "herald_events_dropped_total",
            &[("reason", "slow_consumer")]
        ),
        h.stats().await
    )
}

async fn slow_closed(h: &Herald) -> f64 {
    metric_sum(
        &metrics_text(h.addr).await,
        "herald_connections_closed_total",
        &[("reason", "slow_consumer")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_is_closed_while_fast_reader_gets_every_event() {
    let h = Herald::start(&[
        "--shards",
        "1",
        "--max-queue-events",
        "64",
        "--max-queue-bytes",
        "256KiB",
    ]);
    let fast = h.subscribe_connected("userId=fast").await;
    // A small receive window: the stall reaches the server's queue sooner.
    let slow = connect_with_rcvbuf(h.addr, "/api/user/sse/connect?userId=slow", 4096).await;
    assert_eq!(slow.status, 200);
    h.wait_connections(2).await;

    let (tx, mut rx) = watch::channel(0u64);
    let reader = tokio::spawn(read_all(fast, tx));
    let payload = "x".repeat(EVENT_BYTES);
    let mut published: Vec<u64> = Vec::new();
    let mut closed_at = None;
    for i in 0..MAX_EVENTS {
        let behind = published.len() as u64;
        tokio::time::timeout(WAIT, rx.wait_for(|&n| behind - n.min(behind) <= MAX_LAG))
            .await
            .expect("the fast reader fell behind (it should never wait for the slow one)")
            .expect("fast reader alive");
        let id = h
            .publish(json!({"event": "bulk", "data": payload, "target": "all"}))
            .await;
        published.push(id_u64(&id));
        if closed_at.is_none() && i % 16 == 15 && slow_closed(&h).await >= 1.0 {
            closed_at = Some(i);
        }
        // Keep publishing a little after the close: the fast one must not notice.
        if closed_at.is_some_and(|at| i >= at + 20) {
            break;
        }
    }
    let Some(closed_at) = closed_at else {
        panic!(
            "the stalled stream was never closed after {MAX_EVENTS} events of 16 KiB: {}",
            diagnosis(&h).await
        );
    };
    let last = h
        .publish(json!({"event": "last", "data": "end", "target": "all"}))
        .await;
    published.push(id_u64(&last));

    let (got, _fast) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("fast reader done")
        .expect("fast reader ok");
    assert_eq!(
        got.len(),
        published.len(),
        "the fast reader missed events (slow one closed after {closed_at} publishes)"
    );
    assert_eq!(
        got, published,
        "the fast reader got events out of order or other ids"
    );

    let text = metrics_text(h.addr).await;
    assert!(
        metric_sum(
            &text,
            "herald_connections_closed_total",
            &[("reason", "slow_consumer")]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &text,
            "herald_events_dropped_total",
            &[("reason", "slow_consumer")]
        ) >= 1.0,
        "no herald_events_dropped_total{{reason=\"slow_consumer\"}} in:\n{text}"
    );
    // The reader that stays is the only connection left.
    h.wait_connections(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_slow_consumer_gets_a_clean_prefix_then_resumes_from_history() {
    let h = Herald::start(&[
        "--shards",
        "1",
        "--max-queue-events",
        "64",
        "--max-queue-bytes",
        "256KiB",
    ]);
    let mut slow = connect_with_rcvbuf(h.addr, "/api/user/sse/connect?userId=slow2", 4096).await;
    assert_eq!(slow.status, 200);
    h.wait_connections(1).await;

    // A small first event: it surely fits the client's buffers whole.
    let first = h
        .publish(json!({"event": "first", "data": "0", "target": "all"}))
        .await;
    let mut published: Vec<u64> = vec![id_u64(&first)];
    let payload = "y".repeat(EVENT_BYTES);
    let mut closed = false;
    for i in 0..MAX_EVENTS {
        let id = h
            .publish(json!({"event": "bulk", "data": payload, "target": "all"}))
            .await;
        published.push(id_u64(&id));
        if i % 16 == 15 && slow_closed(&h).await >= 1.0 {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the stalled stream was never closed after {MAX_EVENTS} events of 16 KiB: {}",
        diagnosis(&h).await
    );
    // More events after the close, which the stream never saw.
    for _ in 0..5 {
        published.push(id_u64(
            &h.publish(json!({"event": "bulk", "data": "after", "target": "all"}))
                .await,
        ));
    }

    // Now read what the kernel held: whole events, in order, no gap, then EOF.
    assert!(
        slow.wait_closed(Duration::from_secs(20)).await,
        "the closed slow consumer never saw EOF"
    );
    // Whole events only: a frame cut off by the close is not dispatched (and
    // does not move an EventSource's resume point).
    let mut got = Vec::new();
    while let Some(ev) = slow.next_event(Duration::ZERO).await {
        if ev.event != "CONNECTED" && ev.event != "HEARTBEAT" {
            got.push(id_u64(ev.id.as_deref().expect("id")));
        }
    }
    assert!(
        got.len() < published.len(),
        "the slow consumer got everything: it was not cut off"
    );
    assert_eq!(
        got[..],
        published[..got.len()],
        "the slow consumer's events are not a gap-free prefix"
    );

    // Reconnect from where it stopped: history gives exactly the rest, in order.
    let resume_from = got
        .last()
        .expect("the small first event reached the client")
        .to_string();
    let hdr = [("last-event-id", resume_from.as_str())];
    let mut again = SseClient::connect(h.addr, "/api/user/sse/connect?userId=slow2", &hdr).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.next_event(WAIT).await.expect("CONNECTED").event,
        "CONNECTED"
    );
    let rest = &published[got.len()..];
    for want in rest {
        let ev = again
            .next_non_heartbeat(WAIT)
            .await
            .expect("replayed event");
        assert_ne!(
            ev.event, "RESYNC",
            "history should cover the gap (resume from {resume_from:?})"
        );
        assert_eq!(id_u64(ev.id.as_deref().expect("id")), *want);
    }
    let live = h
        .publish(json!({"event": "live", "data": "z", "target": "all"}))
        .await;
    let ev = again
        .next_non_heartbeat(WAIT)
        .await
        .expect("live event after the replay");
    assert_eq!(
        ev.id.as_deref(),
        Some(live.as_str()),
        "duplicate or missing event after the replay: {ev:?}"
    );
}
