//! `Idempotency-Key` on publishes and batches: a repeat within the window gets
//! the first answer (status and body) with `Idempotent-Replayed: true` and
//! delivers nothing again: on one node, with repeats in flight at the same
//! time, after the window (publishes again), and across the pods of a cluster
//! (the check is in Redis); bad keys are `400` and publish nothing.

mod support;

use serde_json::json;
use support::check::{assert_json_error, next_ev};
use support::redis::Cluster;
use support::{request, Herald, Response, SseClient};

/// POST a publish body with these extra headers.
async fn post_with(h: &Herald, body: &str, headers: &[(&str, &str)]) -> Response {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request(
        h.addr,
        "POST",
        "/api/broadcast",
        &all,
        Some(body.as_bytes()),
    )
    .await
}

async fn post_key(h: &Herald, body: &serde_json::Value, key: &str) -> Response {
    post_with(h, &body.to_string(), &[("idempotency-key", key)]).await
}

fn replayed(r: &Response) -> bool {
    r.header("idempotent-replayed") == Some("true")
}

/// The data of every event `c` receives until (and without) the event `end`.
async fn datas_until(c: &mut SseClient, end: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let ev = next_ev(c, end).await;
        if ev.event == "RESYNC" {
            continue;
        }
        if ev.data == end {
            return out;
        }
        out.push(ev.data);
    }
}

#[tokio::test]
async fn a_repeat_gets_the_same_answer_and_delivers_nothing() {
    let h = Herald::start(&[]);
    let mut c = h.subscribe_connected("userId=i1").await;
    let body = json!({"data": "once", "target": "all"});
    let first = post_key(&h, &body, "order-1").await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert!(!replayed(&first), "the first is not a replay");
    for _ in 0..3 {
        let again = post_key(&h, &body, "order-1").await;
        assert_eq!(again.status, 202);
        assert_eq!(again.body, first.body, "the same body");
        assert!(replayed(&again), "headers {:?}", again.headers);
    }
    // Whatever the repeat's body: the key decides.
    let other = post_key(&h, &json!({"data": "else", "target": "all"}), "order-1").await;
    assert_eq!(
        (other.status, other.body.as_str()),
        (202, first.body.as_str())
    );
    // Another key publishes.
    let second = post_key(&h, &json!({"data": "two", "target": "all"}), "order-2").await;
    assert!(!replayed(&second));
    assert_ne!(second.body, first.body);
    h.publish(json!({"data": "end", "target": "all"})).await;
    assert_eq!(datas_until(&mut c, "end").await, ["once", "two"]);
    let m = h.get("/metrics").await.body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("herald_idempotency_records") && l.ends_with(" 2")),
        "records counted:\n{}",
        m.lines()
            .filter(|l| l.contains("idempotency"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn a_batch_repeat_gets_the_same_ids() {
    let h = Herald::start(&[]);
    let mut c = h.subscribe_connected("userId=i2").await;
    let batch = json!([
        {"data": "a", "target": "all"},
        {"data": "b", "target": {"users": ["i2"]}},
    ]);
    let first = post_key(&h, &batch, "batch-1").await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.json()["ids"].as_array().map(Vec::len), Some(2));
    let again = post_key(&h, &batch, "batch-1").await;
    assert_eq!((again.status, &again.body), (202, &first.body));
    assert!(replayed(&again));
    h.publish(json!({"data": "end", "target": "all"})).await;
    assert_eq!(datas_until(&mut c, "end").await, ["a", "b"]);
}

#[tokio::test]
async fn repeats_in_flight_together_publish_once() {
    let h = Herald::start(&["--shards", "2"]);
    let mut c = h.subscribe_connected("userId=i3").await;
    let body = json!({"data": "together", "target": "all"}).to_string();
    let addr = h.addr;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                request(
                    addr,
                    "POST",
                    "/api/broadcast",
                    &[
                        ("content-type", "application/json"),
                        ("idempotency-key", "same-time"),
                    ],
                    Some(body.as_bytes()),
                )
                .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("request task"));
    }
    let first = &answers[0];
    for a in &answers {
        assert_eq!(
            (a.status, &a.body),
            (202, &first.body),
            "one answer for all"
        );
    }
    let fresh = answers.iter().filter(|a| !replayed(a)).count();
    assert_eq!(fresh, 1, "exactly one was not a replay");
    h.publish(json!({"data": "end", "target": "all"})).await;
    assert_eq!(datas_until(&mut c, "end").await, ["together"]);
}

#[tokio::test]
async fn after_the_window_the_key_publishes_again() {
    let h = Herald::start(&["--idempotency-window", "300ms"]);
    let mut c = h.subscribe_connected("userId=i4").await;
    let body = json!({"data": "again", "target": "all"});
    let first = post_key(&h, &body, "short").await;
    assert!(!replayed(&first));
    // Repeats are replays until the window ends; then the key is new.
    let until = std::time::Instant::now() + support::WAIT;
    loop {
        let r = post_key(&h, &body, "short").await;
        assert_eq!(r.status, 202);
        if !replayed(&r) {
            assert_ne!(r.body, first.body, "a new id after the window");
            break;
        }
        assert!(std::time::Instant::now() < until, "the window never ended");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    h.publish(json!({"data": "end", "target": "all"})).await;
    assert_eq!(datas_until(&mut c, "end").await, ["again", "again"]);
}

#[tokio::test]
async fn bad_keys_are_refused_and_publish_nothing() {
    let h = Herald::start(&[]);
    let mut c = h.subscribe_connected("userId=i5").await;
    let body = json!({"data": "bad", "target": "all"}).to_string();
    let long = "k".repeat(129);
    for key in ["", "has space", "slash/no", long.as_str(), "é"] {
        let r = post_with(&h, &body, &[("idempotency-key", key)]).await;
        assert_json_error(&r, 400, &format!("key {key:?}"));
        assert_eq!(r.json()["error"], "invalid_idempotency_key", "{}", r.body);
    }
    let r = post_with(
        &h,
        &body,
        &[("idempotency-key", "a"), ("idempotency-key", "b")],
    )
    .await;
    assert_json_error(&r, 400, "two keys");
    // A key of 128 bytes is fine; a bad body with a good key is a 400 that does
    // not take the key.
    let max = "m".repeat(128);
    let r = post_with(&h, "{\"target\":", &[("idempotency-key", &max)]).await;
    assert_json_error(&r, 400, "bad body");
    let r = post_with(
        &h,
        &body.replace("bad", "good"),
        &[("idempotency-key", &max)],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(!replayed(&r), "the bad body did not take the key");
    h.publish(json!({"data": "end", "target": "all"})).await;
    assert_eq!(datas_until(&mut c, "end").await, ["good"]);
}

/// A cluster: a repeat on another pod is recognised by Redis.
async fn across_pods(partitions: &str) {
    let cl = Cluster::shared(&format!("idem-p{partitions}"));
    let a = cl.pod(&["--partitions", partitions]);
    let b = cl.pod(&["--partitions", partitions]);
    let mut on_a = a.subscribe_connected("userId=ca").await;
    let mut on_b = b.subscribe_connected("userId=cb").await;
    let batch = json!([
        {"data": "x1", "target": "all"},
        {"data": "x2", "target": {"users": ["ca", "cb", "cz"]}},
        {"data": "x3", "target": {"users": ["cb"]}},
    ]);
    let first = post_key(&a, &batch, "cross-1").await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert!(!replayed(&first));
    let on_other = post_key(&b, &batch, "cross-1").await;
    assert_eq!((on_other.status, &on_other.body), (202, &first.body));
    assert!(replayed(&on_other), "the other pod says replayed");
    // Repeats racing on both pods at once, with a new key.
    let single = json!({"data": "race", "target": "all"});
    let (r1, r2, r3, r4) = tokio::join!(
        post_key(&a, &single, "cross-2"),
        post_key(&b, &single, "cross-2"),
        post_key(&b, &single, "cross-2"),
        post_key(&a, &single, "cross-2"),
    );
    let all = [r1, r2, r3, r4];
    for r in &all {
        assert_eq!((r.status, &r.body), (202, &all[0].body), "one answer");
    }
    assert_eq!(all.iter().filter(|r| !replayed(r)).count(), 1, "one first");
    a.publish(json!({"data": "end", "target": "all"})).await;
    // With partitions, events of different sources (broadcasts, a partition's
    // users) keep their order per source only: compare them sorted.
    let seen = |mut v: Vec<String>| {
        if partitions != "1" {
            v.sort();
        }
        v
    };
    let want = |v: &[&str]| seen(v.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        seen(datas_until(&mut on_a, "end").await),
        want(&["x1", "x2", "race"])
    );
    assert_eq!(
        seen(datas_until(&mut on_b, "end").await),
        want(&["x1", "x2", "x3", "race"])
    );
}

#[tokio::test]
async fn a_repeat_on_another_pod_delivers_nothing() {
    need_redis!();
    across_pods("1").await;
}

#[tokio::test]
async fn a_repeat_on_another_pod_delivers_nothing_with_partitions() {
    need_redis!();
    across_pods("8").await;
}
