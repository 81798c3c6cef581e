//! A stream opened on a keep-alive connection that already carried other
//! requests (served by hyper, chunked) behaves like any other stream: same
//! headers, `retry:`, `CONNECTED`, pending events, live events, heartbeats, and
//! it ends when disconnected or when the client goes away.

mod support;

use serde_json::json;
use support::ops::KeepAlive;
use support::{Herald, WAIT};

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn publish_then_stream_on_one_keep_alive_connection() {
    let h = Herald::start(&["--shards", "1", "--heartbeat-interval", "500ms"]);
    let mut ka = KeepAlive::connect(h.addr).await;

    // A publish to a user with no stream yet: kept as pending.
    let body =
        json!({"event": "queued", "data": "p1", "target": {"users": ["ka-user"]}}).to_string();
    let r = ka
        .send("POST", "/api/broadcast", &[JSON], Some(body.as_bytes()))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_ne!(
        r.header("connection"),
        Some("close"),
        "the publish response closed the keep-alive connection"
    );
    let pending_id = r.json()["id"].as_str().expect("id").to_string();

    // Another request on the same connection, to be sure it is kept alive.
    let r = ka.send("GET", "/health/live", &[], None).await;
    assert_eq!(r.status, 200);

    let mut c = ka
        .into_sse("/api/user/sse/connect?userId=ka-user", &[])
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.header("content-type"), Some("text/event-stream"));
    assert_eq!(c.header("cache-control"), Some("no-cache"));
    assert_eq!(c.header("x-accel-buffering"), Some("no"));

    let ev = c.next_event(WAIT).await.expect("CONNECTED");
    assert_eq!(ev.event, "CONNECTED");
    assert_eq!(c.parser.retries.len(), 1, "no retry hint before CONNECTED");
    assert_eq!(ev.id, None);
    let connected: serde_json::Value =
        serde_json::from_str(&ev.data).expect("CONNECTED data is JSON");
    assert_eq!(connected["userId"], "ka-user");
    assert!(connected["connectionId"].is_string());
    assert_eq!(connected["podId"].as_str(), Some(h.pod_id.as_str()));

    let ev = c.next_non_heartbeat(WAIT).await.expect("the pending event");
    assert_eq!(
        (ev.id.as_deref(), ev.event.as_str(), ev.data.as_str()),
        (Some(pending_id.as_str()), "queued", "p1")
    );

    let live = h
        .publish(json!({"event": "live", "data": {"n": 1}, "target": "all"}))
        .await;
    let ev = c.next_non_heartbeat(WAIT).await.expect("the live event");
    assert_eq!(ev.id.as_deref(), Some(live.as_str()));
    assert_eq!(ev.event, "live");
    assert_eq!(ev.data, r#"{"n":1}"#);

    // Heartbeats reach it too, without moving the resume point.
    let ev = c.next_event(WAIT).await.expect("a heartbeat");
    assert_eq!(ev.event, "HEARTBEAT");
    assert_eq!(ev.id, None);
    assert_eq!(c.parser.last_event_id, live);

    // The client goes away: the stream is cleaned up.
    drop(c);
    h.wait_connections(0).await;
}

#[tokio::test]
async fn keep_alive_stream_ends_on_disconnect() {
    let h = Herald::start(&["--shards", "2"]);
    let mut ka = KeepAlive::connect(h.addr).await;
    let r = ka.send("GET", "/api/user/sse/stats", &[], None).await;
    assert_eq!(r.status, 200);
    let mut c = ka
        .into_sse("/api/user/sse/connect?userId=ka-2&connectionId=c-1", &[])
        .await;
    assert_eq!(c.status, 200);
    assert_eq!(
        c.next_event(WAIT).await.expect("CONNECTED").event,
        "CONNECTED"
    );
    h.wait_connections(1).await;

    let r = h
        .post("/api/user/sse/disconnect?userId=ka-2&connectionId=c-1", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["disconnected"], true);
    assert!(
        c.wait_closed(WAIT).await,
        "the keep-alive stream did not end after disconnect"
    );
    h.wait_connections(0).await;
}

#[tokio::test]
async fn keep_alive_stream_resumes_with_last_event_id() {
    let h = Herald::start(&["--shards", "1"]);
    let first = h
        .publish(json!({"event": "e", "data": "1", "target": "all"}))
        .await;
    let second = h
        .publish(json!({"event": "e", "data": "2", "target": "all"}))
        .await;
    let third = h
        .publish(json!({"event": "e", "data": "3", "target": "all"}))
        .await;

    let mut ka = KeepAlive::connect(h.addr).await;
    assert_eq!(ka.send("GET", "/health/ready", &[], None).await.status, 200);
    let mut c = ka
        .into_sse(
            "/api/user/sse/connect?userId=ka-3",
            &[("last-event-id", first.as_str())],
        )
        .await;
    assert_eq!(c.status, 200);
    assert_eq!(
        c.next_event(WAIT).await.expect("CONNECTED").event,
        "CONNECTED"
    );
    for want in [&second, &third] {
        let ev = c.next_non_heartbeat(WAIT).await.expect("replayed event");
        assert_eq!(ev.id.as_deref(), Some(want.as_str()));
    }
}
