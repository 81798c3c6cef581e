//! Publish: targets reach exactly the right connections, the 202 answer and its
//! ids, the event name default, and how string and JSON data are framed.

mod support;

use serde_json::json;
use support::check::{id_of, next_ev, next_evs};
use support::{Herald, SseClient};

/// `(id, data)` of the next `n` events.
async fn got(c: &mut SseClient, n: usize, what: &str) -> Vec<(String, String)> {
    next_evs(c, n, what)
        .await
        .into_iter()
        .map(|e| (e.id.unwrap_or_default(), e.data))
        .collect()
}

#[tokio::test]
async fn each_target_reaches_exactly_its_connections() {
    let h = Herald::start(&["--shards", "2"]);
    let mut a = h.subscribe_connected("userId=ua&topics=t1").await;
    let mut b = h.subscribe_connected("userId=ub&topics=t2").await;
    let mut c = h.subscribe_connected("userId=uc").await;

    let p = |data: &str, target: serde_json::Value| json!({"data": data, "target": target});
    let e1 = h.publish(p("e1", json!("all"))).await;
    let e2 = h.publish(p("e2", json!({"users": ["ua"]}))).await;
    let e3 = h.publish(p("e3", json!({"topics": ["t2"]}))).await;
    let e4 = h.publish(p("e4", json!({"users": ["uc", "ub"]}))).await;
    h.publish(p("e5", json!({"topics": ["nobody-listens"]})))
        .await;
    h.publish(p("e6", json!({"users": ["offline-user"]}))).await;
    let e7 = h.publish(p("e7", json!("all"))).await;

    // Each stream gets exactly its events, in order; the last broadcast proves
    // nothing else was queued before it.
    let pair = |id: &String, d: &str| (id.clone(), d.to_string());
    assert_eq!(
        got(&mut a, 3, "a").await,
        vec![pair(&e1, "e1"), pair(&e2, "e2"), pair(&e7, "e7")]
    );
    assert_eq!(
        got(&mut b, 4, "b").await,
        vec![
            pair(&e1, "e1"),
            pair(&e3, "e3"),
            pair(&e4, "e4"),
            pair(&e7, "e7")
        ]
    );
    assert_eq!(
        got(&mut c, 3, "c").await,
        vec![pair(&e1, "e1"), pair(&e4, "e4"), pair(&e7, "e7")]
    );
}

#[tokio::test]
async fn topic_subscribers_never_see_other_topics() {
    let h = Herald::start(&["--shards", "2"]);
    let mut on_a = h.subscribe_connected("userId=ta&topics=a").await;
    let mut on_b = h.subscribe_connected("userId=tb&topics=b").await;
    for i in 0..10 {
        h.publish(json!({"data": format!("b{i}"), "target": {"topics": ["b"]}}))
            .await;
    }
    let last = h
        .publish(json!({"data": "a-only", "target": {"topics": ["a"]}}))
        .await;
    let ev = next_ev(&mut on_a, "the topic a event").await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(last.as_str()), "a-only"),
        "a topic-a subscriber got something else first"
    );
    for i in 0..10 {
        assert_eq!(
            next_ev(&mut on_b, "topic b event").await.data,
            format!("b{i}")
        );
    }
    let sentinel = h.publish(json!({"data": "end", "target": "all"})).await;
    assert_eq!(
        next_ev(&mut on_b, "broadcast").await.id.as_deref(),
        Some(sentinel.as_str()),
        "a topic-b subscriber got the topic-a event"
    );
}

#[tokio::test]
async fn user_events_reach_every_connection_of_that_user_only() {
    let h = Herald::start(&["--shards", "2"]);
    let mut mine: Vec<SseClient> = Vec::new();
    for i in 0..4 {
        mine.push(
            h.subscribe_connected(&format!("userId=owner&connectionId=c{i}"))
                .await,
        );
    }
    let mut other = h.subscribe_connected("userId=other-user").await;
    let id = h
        .publish(json!({"data": "private", "target": {"users": ["owner"]}}))
        .await;
    for c in mine.iter_mut() {
        let ev = next_ev(c, "the user's event").await;
        assert_eq!(
            (ev.id.as_deref(), ev.data.as_str()),
            (Some(id.as_str()), "private")
        );
    }
    let sentinel = h.publish(json!({"data": "end", "target": "all"})).await;
    let ev = next_ev(&mut other, "broadcast").await;
    assert_eq!(
        ev.id.as_deref(),
        Some(sentinel.as_str()),
        "another user received a user-targeted event: {ev:?}"
    );
}

#[tokio::test]
async fn publish_answers_202_with_a_string_id() {
    let h = Herald::start(&["--shards", "1"]);
    let r = h
        .post("/api/broadcast", r#"{"data":"x","target":"all"}"#)
        .await;
    assert_eq!(r.status, 202, "body {:?}", r.body);
    let v = r.json();
    let id = v["id"].as_str().expect("id is a string");
    assert!(!id.is_empty());
}

#[tokio::test]
async fn ids_increase_strictly_and_match_the_stream() {
    let h = Herald::start(&["--shards", "2"]);
    let mut c = h.subscribe_connected("userId=seq&topics=t").await;
    let mut returned = Vec::new();
    for i in 0..30 {
        let target = match i % 3 {
            0 => json!("all"),
            1 => json!({"users": ["seq"]}),
            _ => json!({"topics": ["t"]}),
        };
        returned.push(
            h.publish(json!({"data": i.to_string(), "target": target}))
                .await,
        );
    }
    let nums: Vec<u64> = returned
        .iter()
        .map(|s| s.parse().expect("numeric id"))
        .collect();
    assert!(
        nums.windows(2).all(|w| w[0] < w[1]),
        "returned ids not strictly increasing: {nums:?}"
    );
    for (i, want) in returned.iter().enumerate() {
        let ev = next_ev(&mut c, "published event").await;
        assert_eq!(ev.id.as_ref(), Some(want), "event #{i}");
        assert_eq!(ev.data, i.to_string());
    }
}

#[tokio::test]
async fn concurrent_publishers_still_give_strictly_increasing_ids() {
    let h = Herald::start(&["--shards", "2"]);
    let mut c1 = h.subscribe_connected("userId=cc1").await;
    let mut c2 = h.subscribe_connected("userId=cc2&topics=x").await;
    let addr = h.addr;
    let mut tasks = Vec::new();
    for t in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let target = if i % 2 == 0 {
                    json!("all")
                } else {
                    json!({"topics": ["x"]})
                };
                let id = support::ops::publish_at(
                    addr,
                    &json!({"data": format!("{t}-{i}"), "target": target}),
                )
                .await;
                ids.push((i % 2 == 0, id));
            }
            ids
        }));
    }
    let mut all_ids = Vec::new();
    let mut broadcast_ids = Vec::new();
    for t in tasks {
        for (to_all, id) in t.await.expect("publisher task") {
            if to_all {
                broadcast_ids.push(id.clone());
            }
            all_ids.push(id);
        }
    }
    // c1 (no topics) gets the broadcasts, c2 everything; both in strictly
    // increasing id order, each event once.
    let ev1 = next_evs(&mut c1, broadcast_ids.len(), "broadcasts").await;
    let ev2 = next_evs(&mut c2, all_ids.len(), "broadcasts and topic events").await;
    for (name, evs, mut want) in [("c1", &ev1, broadcast_ids), ("c2", &ev2, all_ids)] {
        let ids: Vec<u64> = evs.iter().map(id_of).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{name} received ids out of order: {ids:?}"
        );
        let mut got: Vec<String> = evs.iter().map(|e| e.id.clone().unwrap()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name} must get each of its events exactly once");
    }
}

#[tokio::test]
async fn event_name_defaults_to_message_and_is_kept_when_given() {
    let h = Herald::start(&["--shards", "1"]);
    let mut c = h.subscribe_connected("userId=names").await;
    h.publish(json!({"data": "x", "target": "all"})).await;
    h.publish(json!({"event": "note.created:v1@x_y-z", "data": "y", "target": "all"}))
        .await;
    assert_eq!(next_ev(&mut c, "default name").await.event, "message");
    assert_eq!(
        next_ev(&mut c, "given name").await.event,
        "note.created:v1@x_y-z"
    );
}

#[tokio::test]
async fn string_data_line_breaks_become_data_lines() {
    let h = Herald::start(&["--shards", "1"]);
    let mut c = h.subscribe_connected("userId=lines").await;
    // (sent, as a conformant client must read it)
    let cases: &[(&str, &str)] = &[
        ("plain", "plain"),
        ("a\nb", "a\nb"),
        ("a\rb", "a\nb"),
        ("a\r\nb", "a\nb"),
        ("x\r\ny\rz\n\nw", "x\ny\nz\n\nw"),
        ("ends with lf\n", "ends with lf\n"),
        ("ends with crlf\r\n", "ends with crlf\n"),
        ("ends with cr\r", "ends with cr\n"),
        ("\n", "\n"),
        ("\r\n\r\n", "\n\n"),
        (" leading space", " leading space"),
        ("héllo ✓ 🚀\nzweite Zeile", "héllo ✓ 🚀\nzweite Zeile"),
        ("a\u{2028}b\u{85}c", "a\u{2028}b\u{85}c"),
        (
            "data: looks like a field\nid: 5",
            "data: looks like a field\nid: 5",
        ),
        ("", ""),
    ];
    let mut ids = Vec::new();
    for (sent, _) in cases {
        ids.push(h.publish(json!({"data": sent, "target": "all"})).await);
    }
    for ((sent, want), id) in cases.iter().zip(&ids) {
        let ev = next_ev(&mut c, &format!("event for {sent:?}")).await;
        assert_eq!(ev.id.as_ref(), Some(id), "data {sent:?}: wrong event");
        assert_eq!(ev.data, *want, "data {sent:?} came back wrong");
        assert_eq!(ev.event, "message");
    }
}

#[tokio::test]
async fn empty_data_dispatches_an_event() {
    let h = Herald::start(&["--shards", "1"]);
    let mut c = h.subscribe_connected("userId=empty").await;
    let a = h
        .publish(json!({"event": "ping", "data": "", "target": "all"}))
        .await;
    // An absent `data` is refused, not sent as an empty one (issue 23).
    let r = h
        .post("/api/broadcast", r#"{"event":"nodata","target":"all"}"#)
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "missing_data");
    let ev = next_ev(&mut c, "empty data").await;
    assert_eq!(
        (ev.id.as_deref(), ev.event.as_str(), ev.data.as_str()),
        (Some(a.as_str()), "ping", "")
    );
}

#[tokio::test]
async fn json_data_is_sent_compact_on_one_line() {
    let h = Herald::start(&["--shards", "1"]);
    let mut c = h.subscribe_connected("userId=json").await;
    let values = [
        json!({"a": [1, 2, {"b": null}], "b": {"c": "multi\nline\r\ntext", "d": true}}),
        json!([1, "two", 3.5]),
        json!(42),
        json!(true),
    ];
    for v in &values {
        // Sent pretty-printed: herald must compact it.
        let body = format!(
            "{{\"target\": \"all\", \"data\": {}}}",
            serde_json::to_string_pretty(v).unwrap()
        );
        let r = h.post("/api/broadcast", &body).await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    for v in &values {
        let ev = next_ev(&mut c, "JSON event").await;
        assert!(
            !ev.data.contains('\n'),
            "JSON data must be one data line: {:?}",
            ev.data
        );
        let parsed: serde_json::Value =
            serde_json::from_str(&ev.data).expect("data is the JSON sent");
        assert_eq!(&parsed, v);
        assert_eq!(ev.data, serde_json::to_string(v).unwrap(), "not compact");
    }
}

#[tokio::test]
async fn two_matching_topics_deliver_once() {
    let h = Herald::start(&["--shards", "2"]);
    let mut c = h.subscribe_connected("userId=dup&topics=a,b,c").await;
    let both = h
        .publish(json!({"data": "both", "target": {"topics": ["a", "b"]}}))
        .await;
    let three = h
        .publish(json!({"data": "three", "target": {"topics": ["c", "b", "a"]}}))
        .await;
    let end = h.publish(json!({"data": "end", "target": "all"})).await;
    let ids: Vec<String> = next_evs(&mut c, 3, "events")
        .await
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(ids, vec![both, three, end], "an event arrived twice");
}
