//! Presence helpers shared by the embedded and the cluster presence tests:
//! the shape of a presence event, the connections and counts endpoints, and
//! opening a plain stream.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{Herald, SseClient, SseEvent, WAIT};

pub const STREAM: &str = "/api/presence/stream";
/// Clock slack between the test and herald (same machine, same clock; ms
/// truncation only).
pub const SLACK_MS: u64 = 20;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// `(event, userId, at)` of a presence event, its shape checked: `online` or
/// `offline`, data exactly `{userId, at}`.
pub fn parse(ev: &SseEvent) -> (String, String, u64) {
    assert!(
        ev.event == "online" || ev.event == "offline",
        "not a presence event: {ev:?}"
    );
    let v: Value = serde_json::from_str(&ev.data)
        .unwrap_or_else(|e| panic!("presence data is not JSON ({e}): {ev:?}"));
    let keys: BTreeSet<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("presence data is not an object: {ev:?}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["at", "userId"]),
        "presence data must be exactly {{userId, at}}: {ev:?}"
    );
    let user = v["userId"]
        .as_str()
        .unwrap_or_else(|| panic!("userId is not a string: {ev:?}"))
        .to_string();
    let at = v["at"]
        .as_u64()
        .unwrap_or_else(|| panic!("at is not unix ms: {ev:?}"));
    (ev.event.clone(), user, at)
}

/// `GET /api/user/sse/connections?userId=U` on `h` (200 asserted): its
/// connections.
pub async fn connections(h: &Herald, user: &str) -> Vec<Value> {
    let r = h
        .get(&format!("/api/user/sse/connections?userId={user}"))
        .await;
    assert_eq!(
        r.status, 200,
        "pod {}: connections of {user}: {}",
        h.pod_id, r.body
    );
    let v = r.json();
    assert_eq!(v["userId"], user, "{v}");
    v["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("connections is not an array: {v}"))
        .clone()
}

/// A listed connection has exactly the contract's fields.
pub fn assert_connection_fields(c: &Value) {
    let keys: BTreeSet<&str> = c
        .as_object()
        .expect("a connection is an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "connectedAt",
            "connectionId",
            "lastHeartbeat",
            "podId",
            "topics"
        ]),
        "{c}"
    );
}

/// `POST /api/presence` on `h` (200 asserted): the answer.
pub async fn query(h: &Herald, body: &Value) -> Value {
    let r = h.post("/api/presence", &body.to_string()).await;
    assert_eq!(
        r.status, 200,
        "pod {}: POST /api/presence {body}: {}",
        h.pod_id, r.body
    );
    r.json()
}

/// Open one stream and wait for its CONNECTED; the socket stays open.
pub async fn open_stream(addr: std::net::SocketAddr, query: String) -> SseClient {
    let mut c = SseClient::connect(addr, &format!("/api/user/sse/connect?{query}"), &[]).await;
    assert_eq!(c.status, 200, "{query}: {} {}", c.status, c.body);
    let ev = c.next_event(WAIT).await.expect("CONNECTED");
    assert_eq!(ev.event, "CONNECTED", "{query}");
    c
}

/// Open every `(address, query)` stream, at most `parallel` connects at a time.
pub async fn open_many(
    streams: impl IntoIterator<Item = (std::net::SocketAddr, String)>,
    parallel: usize,
) -> Vec<SseClient> {
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|(addr, q)| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore");
                open_stream(addr, q).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("opening a stream"));
    }
    out
}

/// Resume the stream at `path` on `addr` after `last`: 200, CONNECTED, then the
/// data of the next `n` events, none of them `RESYNC` (`why`: what a `RESYNC`
/// would mean). Returns the stream too, for what comes live after.
pub async fn resume_exactly(
    addr: std::net::SocketAddr,
    path: &str,
    last: &str,
    n: usize,
    why: &str,
) -> (SseClient, Vec<String>) {
    let mut back = SseClient::connect(addr, path, &[("Last-Event-ID", last)]).await;
    assert_eq!(back.status, 200, "resume answered {}", back.status);
    let connected = super::check::next_ev(&mut back, "CONNECTED on resume").await;
    assert_eq!(connected.event, "CONNECTED", "{connected:?}");
    let mut got = Vec::with_capacity(n);
    for i in 0..n {
        let ev = super::check::next_ev(&mut back, &format!("missed event #{i}")).await;
        assert_ne!(
            ev.event, "RESYNC",
            "a resume after {last} was told RESYNC: {why}"
        );
        got.push(ev.data);
    }
    (back, got)
}
