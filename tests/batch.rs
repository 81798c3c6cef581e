//! Batch publishes (`POST /api/broadcast` with a JSON array of 1–1,000 publish
//! objects): validated whole before anything is published, answered with the ids
//! in the array's order, delivered in that order; on one node and across the
//! pods of a cluster.

mod support;

use serde_json::json;
use support::check::{assert_json_error, next_ev};
use support::redis::Cluster;
use support::{Herald, SseClient};

/// The ids of a `202` batch answer.
fn ids(r: &support::Response) -> Vec<String> {
    assert_eq!(r.status, 202, "batch answered {}: {}", r.status, r.body);
    r.json()["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no ids array: {}", r.body))
        .iter()
        .map(|v| v.as_str().expect("an id string").to_string())
        .collect()
}

/// The next `n` events' `(id, data)`.
async fn take(c: &mut SseClient, n: usize, what: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let ev = next_ev(c, what).await;
        out.push((ev.id.unwrap_or_default(), ev.data));
    }
    out
}

#[tokio::test]
async fn a_batch_is_published_in_its_order_with_its_ids() {
    let h = Herald::start(&["--shards", "2"]);
    let mut a = h.subscribe_connected("userId=ba&topics=bt").await;
    let mut b = h.subscribe_connected("userId=bb").await;
    let batch = json!([
        {"data": "1", "target": "all"},
        {"data": "2", "target": {"users": ["ba"]}},
        {"data": "3", "target": {"topics": ["bt"]}},
        {"data": "4", "target": {"users": ["bb", "ba"]}},
        {"event": "other", "data": {"k": 5}, "target": "all"},
    ]);
    let r = h.post("/api/broadcast", &batch.to_string()).await;
    let ids = ids(&r);
    assert_eq!(ids.len(), 5);
    let n: Vec<u64> = ids.iter().map(|i| i.parse().expect("numeric")).collect();
    assert!(
        n.windows(2).all(|w| w[0] < w[1]),
        "ids in the array's order: {ids:?}"
    );
    let pair = |i: usize, d: &str| (ids[i].clone(), d.to_string());
    assert_eq!(
        take(&mut a, 5, "ba").await,
        vec![
            pair(0, "1"),
            pair(1, "2"),
            pair(2, "3"),
            pair(3, "4"),
            pair(4, r#"{"k":5}"#)
        ]
    );
    assert_eq!(
        take(&mut b, 3, "bb").await,
        vec![pair(0, "1"), pair(3, "4"), pair(4, r#"{"k":5}"#)]
    );
}

#[tokio::test]
async fn a_bad_batch_is_refused_whole_with_the_index_of_its_bad_element() {
    let h = Herald::start(&[]);
    let mut c = h.subscribe_connected("userId=bx").await;
    let cases = [
        (json!([]).to_string(), None),
        (
            format!(
                "[{}]",
                vec![r#"{"target":"all","data":"x"}"#; 1001].join(",")
            ),
            None,
        ),
        (
            json!([{"data": "ok", "target": "all"}, {"data": "no target"}]).to_string(),
            Some("[1]"),
        ),
        (
            json!([{"data": "ok", "target": "all"}, {"target": "all", "event": "bad name"}])
                .to_string(),
            Some("[1]"),
        ),
        (
            json!([{"data": "ok", "target": "all"}, {"data": "x", "target": "all"}, 7]).to_string(),
            Some("[2]"),
        ),
        (
            json!([{"data": "ok", "target": {"users": ["bad user"]}}]).to_string(),
            Some("[0]"),
        ),
        (
            json!([{"data": "ok", "target": "all"}, {"target": "all"}]).to_string(),
            Some("[1] data is required"),
        ),
    ];
    for (body, index) in &cases {
        let r = h.post("/api/broadcast", body).await;
        assert_json_error(&r, 400, &format!("batch {}", &body[..body.len().min(80)]));
        if let Some(index) = index {
            let msg = r.json()["message"].as_str().unwrap_or("").to_string();
            assert!(msg.starts_with(index), "message names {index}: {msg}");
        }
    }
    // Nothing of them was published: the next event is this one.
    let id = h.publish(json!({"data": "after", "target": "all"})).await;
    let ev = next_ev(&mut c, "after the refused batches").await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(id.as_str()), "after")
    );
}

#[tokio::test]
async fn a_batch_published_on_one_pod_reaches_the_others_in_its_order() {
    need_redis!();
    let cl = Cluster::shared("batch");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let mut on_b = b.subscribe_connected("userId=cb&topics=ct").await;
    let batch: Vec<serde_json::Value> = (0..50)
        .map(|i| match i % 3 {
            0 => json!({"data": format!("e{i}"), "target": "all"}),
            1 => json!({"data": format!("e{i}"), "target": {"users": ["cb"]}}),
            _ => json!({"data": format!("e{i}"), "target": {"topics": ["ct"]}}),
        })
        .collect();
    let r = a
        .post(
            "/api/broadcast",
            &serde_json::Value::from(batch).to_string(),
        )
        .await;
    let ids = ids(&r);
    let got = take(&mut on_b, 50, "cb on pod b").await;
    let want: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("e{i}")))
        .collect();
    assert_eq!(
        got, want,
        "every element once, in the array's order, with its id"
    );
}

#[tokio::test]
async fn while_redis_is_down_a_batch_is_buffered_whole_or_refused_whole() {
    need!("redis-server");
    let mut cl = Cluster::own("batch-down");
    let a = cl.pod(&["--publish-buffer", "4", "--redis-timeout", "300ms"]);
    let mut sub = a.subscribe_connected("userId=bd").await;
    cl.server().kill();
    support::check::wait_ready_body(&a, "degraded", support::WAIT).await;
    let batch = |tag: &str, n: usize| {
        let v: Vec<serde_json::Value> = (0..n)
            .map(|i| json!({"data": format!("{tag}{i}"), "target": "all"}))
            .collect();
        serde_json::Value::from(v).to_string()
    };
    let r = a.post("/api/broadcast", &batch("b", 3)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let v = r.json();
    assert_eq!(v["buffered"], json!(true), "{v}");
    assert_eq!(v["ids"], json!([null, null, null]), "{v}");
    // Two more do not fit in the buffer of 4: refused whole, nothing taken.
    let r = a.post("/api/broadcast", &batch("x", 2)).await;
    assert_json_error(&r, 503, "a batch past the buffer");
    cl.server().restart();
    // Redis came back empty: the stream may be told RESYNC (its registration was
    // lost); the buffered events come in the batch's order all the same.
    let mut datas = Vec::new();
    while datas.len() < 3 {
        let ev = next_ev(&mut sub, "the buffered batch").await;
        if ev.event != "RESYNC" {
            datas.push(ev.data);
        }
    }
    assert_eq!(
        datas,
        ["b0", "b1", "b2"],
        "in the batch's order, the refused one absent"
    );
    let end = a.publish(json!({"data": "end", "target": "all"})).await;
    let mut ev = next_ev(&mut sub, "end").await;
    if ev.event == "RESYNC" {
        ev = next_ev(&mut sub, "end").await;
    }
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(end.as_str()), "end"),
        "nothing of the refused batch"
    );
}
