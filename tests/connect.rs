//! Subscribe: the response head, the stream's preamble (`retry:` then
//! `CONNECTED`), the CONNECTED payload, and replacement of a stream by a second
//! connect with the same userId and connectionId.

mod support;

use serde_json::json;
use support::check::{self, is_uuid, next_ev, Item};
use support::ops::KeepAlive;
use support::{Herald, SseClient, WAIT};

fn assert_sse_head(c: &SseClient, what: &str) {
    assert_eq!(c.status, 200, "{what}: status (body {:?})", c.body);
    let ct = c.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/event-stream"),
        "{what}: content-type {ct:?}"
    );
    assert_eq!(
        c.header("cache-control"),
        Some("no-cache"),
        "{what}: cache-control"
    );
    assert_eq!(
        c.header("x-accel-buffering"),
        Some("no"),
        "{what}: x-accel-buffering"
    );
}

fn connected_data(ev: &support::SseEvent) -> serde_json::Value {
    assert_eq!(ev.event, "CONNECTED", "expected CONNECTED, got {ev:?}");
    serde_json::from_str(&ev.data)
        .unwrap_or_else(|e| panic!("CONNECTED data not JSON ({e}): {ev:?}"))
}

#[tokio::test]
async fn response_head_is_an_event_stream() {
    let h = Herald::start(&["--shards", "2"]);
    let c = h.subscribe("userId=head-user").await;
    assert_sse_head(&c, "connect");
}

#[tokio::test]
async fn stream_starts_with_retry_then_connected() {
    let h = Herald::start(&["--shards", "2"]);
    let (head, items) = check::preamble(
        h.addr,
        "/api/user/sse/connect?userId=pre-user&connectionId=pre-conn",
        2,
    )
    .await;
    assert_eq!(head.status, 200);
    let Item::Retry(ms) = items[0] else {
        panic!("the stream must start with a retry: field, got {items:?}");
    };
    assert!(ms > 0, "retry hint should be a positive number of ms");
    let Item::Event(ev) = &items[1] else {
        panic!("CONNECTED must follow retry:, got {items:?}");
    };
    let data = connected_data(ev);
    assert_eq!(data["userId"], "pre-user");
    assert_eq!(data["connectionId"], "pre-conn");
}

#[tokio::test]
async fn connected_carries_user_connection_and_pod_and_no_id() {
    let h = Herald::start(&["--shards", "2"]);
    assert!(!h.pod_id.is_empty(), "herald printed no pod id");

    // Given connectionId: echoed.
    let mut c = h
        .subscribe("userId=alice@example.com&connectionId=tab-1")
        .await;
    let ev = c.next_event(WAIT).await.expect("CONNECTED");
    let data = connected_data(&ev);
    assert_eq!(data["userId"], "alice@example.com");
    assert_eq!(data["connectionId"], "tab-1");
    assert_eq!(data["podId"], h.pod_id.as_str());
    assert_eq!(ev.id, None, "CONNECTED must carry no id");
    assert_eq!(
        c.parser.last_event_id, "",
        "CONNECTED must not move the resume point"
    );
    assert_eq!(h.stats().await["podId"], h.pod_id.as_str());

    // No connectionId: a UUID is generated, a fresh one per stream.
    let mut generated = Vec::new();
    for _ in 0..2 {
        let mut c = h.subscribe("userId=bob").await;
        let ev = c.next_event(WAIT).await.expect("CONNECTED");
        let data = connected_data(&ev);
        assert_eq!(ev.id, None);
        assert_eq!(data["userId"], "bob");
        assert_eq!(data["podId"], h.pod_id.as_str());
        let id = data["connectionId"]
            .as_str()
            .expect("connectionId is a string")
            .to_string();
        assert!(is_uuid(&id), "generated connectionId {id:?} is not a UUID");
        generated.push(id);
    }
    assert_ne!(generated[0], generated[1], "generated ids must differ");
}

#[tokio::test]
async fn pod_id_flag_is_reported() {
    let h = Herald::start(&["--shards", "1", "--pod-id", "pod-test-7"]);
    assert_eq!(h.pod_id, "pod-test-7");
    let mut c = h.subscribe("userId=u1").await;
    let data = connected_data(&c.next_event(WAIT).await.expect("CONNECTED"));
    assert_eq!(data["podId"], "pod-test-7");
}

#[tokio::test]
async fn second_connect_with_same_ids_replaces_the_first() {
    let h = Herald::start(&["--shards", "1"]);
    let mut first = h.subscribe_connected("userId=rep&connectionId=same").await;
    let mut second = h.subscribe_connected("userId=rep&connectionId=same").await;
    assert!(
        first.wait_closed(WAIT).await,
        "the replaced stream must end"
    );
    let other = first.take_ready();
    assert!(
        other.iter().all(|e| e.event == "HEARTBEAT"),
        "the replaced stream got events after CONNECTED: {other:?}"
    );
    h.wait_connections(1).await;
    let id = h
        .publish(json!({"data": "after", "target": {"users": ["rep"]}}))
        .await;
    let ev = next_ev(&mut second, "the event on the replacing stream").await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(id.as_str()), "after")
    );
    assert!(!second.eof, "the replacing stream must stay open");
}

#[tokio::test]
async fn replacement_works_across_shards() {
    const PAIRS: usize = 20;
    let h = Herald::start(&["--shards", "2"]);
    let mut olds = Vec::new();
    let mut news = Vec::new();
    for i in 0..PAIRS {
        let q = format!("userId=xs-{i}&connectionId=tab");
        olds.push(h.subscribe_connected(&q).await);
        news.push(h.subscribe_connected(&q).await);
    }
    for (i, old) in olds.iter_mut().enumerate() {
        assert!(
            old.wait_closed(WAIT).await,
            "replaced stream of xs-{i} did not end"
        );
    }
    h.wait_connections(PAIRS as u64).await;
    let stats = h.stats().await;
    assert_eq!(stats["users"], PAIRS as u64, "{stats}");

    // Each replacing stream gets its own user's event and the broadcast.
    for i in 0..PAIRS {
        h.publish(json!({"data": format!("for-{i}"), "target": {"users": [format!("xs-{i}")]}}))
            .await;
    }
    let all = h
        .publish(json!({"data": "everyone", "target": "all"}))
        .await;
    for (i, new) in news.iter_mut().enumerate() {
        let ev = next_ev(new, "own user event").await;
        assert_eq!(ev.data, format!("for-{i}"));
        let ev = next_ev(new, "broadcast").await;
        assert_eq!(ev.id.as_deref(), Some(all.as_str()));
        assert!(!new.eof);
    }
}

#[tokio::test]
async fn replacement_does_not_count_against_the_per_user_limit() {
    let h = Herald::start(&["--shards", "2", "--max-connections-per-user", "1"]);
    let mut prev = h.subscribe_connected("userId=lim&connectionId=c1").await;
    for _ in 0..5 {
        let next = h.subscribe_connected("userId=lim&connectionId=c1").await;
        assert!(prev.wait_closed(WAIT).await, "replaced stream did not end");
        prev = next;
    }
    // A different connection of the same user is over the limit.
    let extra = SseClient::connect(
        h.addr,
        "/api/user/sse/connect?userId=lim&connectionId=c2",
        &[],
    )
    .await;
    assert_eq!(extra.status, 429, "body {:?}", extra.body);
    h.wait_connections(1).await;
}

#[tokio::test]
async fn connect_on_a_keep_alive_connection_is_a_stream_too() {
    let h = Herald::start(&["--shards", "1"]);
    let mut ka = KeepAlive::connect(h.addr).await;
    let r = ka.send("GET", "/health/live", &[], None).await;
    assert_eq!(r.status, 200);
    let mut c = ka
        .into_sse("/api/user/sse/connect?userId=ka&connectionId=ka-1", &[])
        .await;
    assert_sse_head(&c, "connect after another request");
    let data = connected_data(&c.next_event(WAIT).await.expect("CONNECTED"));
    assert_eq!(data["connectionId"], "ka-1");
    assert!(
        !c.parser.retries.is_empty(),
        "the stream must carry a retry: field"
    );
    let id = h
        .publish(json!({"data": "x", "target": {"users": ["ka"]}}))
        .await;
    let ev = next_ev(&mut c, "live event").await;
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));
}
