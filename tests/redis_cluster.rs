//! Cluster mode on a real Redis Cluster (three masters of the test's own, see
//! `support::redis_cluster`): pods joined through a `redis-cluster://` URL act as
//! one server, and they recover when the master holding their slot (every key
//! carries the hash tag `{prefix}`) is SIGKILLed and comes back empty.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::check::{id_of, next_ev};
use support::redis::wait_cluster_all;
use support::redis_cluster::RedisCluster;
use support::{Herald, SseClient, WAIT};

/// How long pods may take to be ready again once the restarted master has
/// re-joined (fred reconnects with a backoff of at most 2 s).
const RECOVERY: Duration = Duration::from_secs(30);

/// Publish on `h`; asserts `202` with an id (not buffered) and returns the id.
async fn publish(h: &Herald, data: &str, target: serde_json::Value, what: &str) -> String {
    let body = json!({"data": data, "target": target});
    let r = h.post("/api/broadcast", &body.to_string()).await;
    assert_eq!(
        r.status, 202,
        "{what}: publish on pod {} answered {}: {}",
        h.pod_id, r.status, r.body
    );
    r.json()["id"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "{what}: publish on pod {} got no id (buffered?): {}",
                h.pod_id, r.body
            )
        })
        .to_string()
}

/// Poll `/health/ready` until it answers 200, at most `within`; returns how long
/// it took.
async fn wait_ready(h: &Herald, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let r = h.get("/health/ready").await;
        if r.status == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{what}: pod {} /health/ready did not answer 200 within {within:?}; last {} {}",
            h.pod_id,
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Publish an `all` event on `h` and assert it is the very next event on `c`
/// (so nothing, e.g. a duplicate, came before it).
async fn assert_next_is(h: &Herald, c: &mut SseClient, what: &str) -> String {
    let id = publish(h, what, json!("all"), what).await;
    let ev = next_ev(c, what).await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(id.as_str()), what),
        "{what}: expected it next, got {ev:?}"
    );
    id
}

#[tokio::test]
async fn user_topic_and_all_events_published_on_one_pod_reach_a_subscriber_on_another_once() {
    let rc = RedisCluster::start();
    let pods = rc.pods("rc-smoke");
    let a = pods.pod(&[]);
    let b = pods.pod(&[]);
    for h in [&a, &b] {
        wait_ready(h, WAIT, "pod on the Redis Cluster").await;
    }
    let mut c = a.subscribe_connected("userId=u1&topics=t1").await;
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;

    let sent = [
        ("to-user", json!({"users": ["u1"]})),
        ("to-topic", json!({"topics": ["t1"]})),
        ("to-all", json!("all")),
    ];
    let mut ids = Vec::new();
    for (data, target) in &sent {
        ids.push(publish(&b, data, target.clone(), data).await);
    }
    let mut last = 0;
    for ((data, _), id) in sent.iter().zip(&ids) {
        let ev = next_ev(&mut c, &format!("the {data} event published on pod B")).await;
        assert_eq!(
            (ev.id.as_deref(), ev.data.as_str()),
            (Some(id.as_str()), *data),
            "the subscriber on pod A must get the {data} event (id {id}) next; got {ev:?}"
        );
        let n = id_of(&ev);
        assert!(
            n > last,
            "ids must strictly increase: {data} has id {n} after {last}"
        );
        last = n;
    }
    // Exactly once: the next event is a fresh one, not a duplicate of the three.
    let end = assert_next_is(&b, &mut c, "end-marker").await;
    assert!(
        end.parse::<u64>().is_ok_and(|n| n > last),
        "the end marker's id {end} must be greater than {last}"
    );
}

#[tokio::test]
async fn pods_recover_when_the_master_of_their_slot_is_killed_and_restarts_empty() {
    let mut rc = RedisCluster::start();
    let pods = rc.pods("rc-restart");
    let a = pods.pod(&[]);
    let b = pods.pod(&[]);
    for h in [&a, &b] {
        wait_ready(h, WAIT, "before the kill").await;
    }
    let mut old = a.subscribe_connected("userId=r1").await;
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;
    let before = assert_next_is(&b, &mut old, "before-kill").await;

    let key = pods.log_key();
    let victim = rc.node_for_key(&key);
    eprintln!(
        "{key} is in slot {} on node {victim} (port {}) of {:?}",
        rc.key_slot(&key),
        rc.ports()[victim],
        rc.ports()
    );
    rc.kill(victim);
    let killed = Instant::now();
    rc.restart_empty(victim);
    eprintln!(
        "node {victim} restarted empty and re-joined {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(
        rc.node_for_key(&key),
        victim,
        "the restarted node must serve {key}'s slot again"
    );

    for h in [&a, &b] {
        let took = wait_ready(h, RECOVERY, "after the master restarted empty").await;
        eprintln!("pod {} ready again {took:?} after the re-join", h.pod_id);
    }
    let mut fresh = a.subscribe_connected("userId=r2").await;
    let after = publish(&b, "after-restart", json!("all"), "after-restart").await;
    let ev = next_ev(&mut fresh, "after-restart on a new subscriber of pod A").await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(after.as_str()), "after-restart"),
        "a new subscriber on pod A (no Last-Event-ID) must get, as its first event, the one \
         published on pod B after the restart; got {ev:?}"
    );
    assert!(
        id_of(&ev) > before.parse::<u64>().expect("numeric id"),
        "ids must keep increasing across the loss of the log: {after} after {before}"
    );
    // The stream opened before the kill is told that it may have missed events
    // (its registration was lost with the master's data), then goes on.
    let ev = next_ev(&mut old, "RESYNC on the stream opened before the kill").await;
    assert_eq!(
        (ev.id.as_deref(), ev.event.as_str()),
        (None, "RESYNC"),
        "the stream opened before the kill must get RESYNC first; got {ev:?}"
    );
    let ev = next_ev(
        &mut old,
        "after-restart on the stream opened before the kill",
    )
    .await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(after.as_str()), "after-restart"),
        "the stream opened on pod A before the kill must get the event published after the restart; got {ev:?}"
    );
    // Once the heartbeats have put both streams back into the emptied registry,
    // user events reach each of them live (not as pending).
    wait_cluster_all(&[&a, &b], 2, 2, 2).await;
    for (user, c, which) in [
        ("r1", &mut old, "the stream opened before the kill"),
        ("r2", &mut fresh, "the stream opened after the restart"),
    ] {
        let data = format!("to-{user}");
        let id = publish(&b, &data, json!({"users": [user]}), &data).await;
        let ev = next_ev(c, &format!("{data} on {which}")).await;
        assert_eq!(
            (ev.id.as_deref(), ev.data.as_str()),
            (Some(id.as_str()), data.as_str()),
            "{which} (user {user}, pod A) must get the user event published on pod B after the \
             restart; got {ev:?}"
        );
    }
}
