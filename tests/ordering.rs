//! Ordering under concurrency (contract "Publish"): event ids increase strictly
//! in the order a connection receives events, every matching event arrives
//! exactly once, across shards and concurrent publishers.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::ops::{id_u64, publish_at};
use support::{Herald, SseClient};

/// Read `n` non-heartbeat events; returns `(id, data)` in arrival order.
async fn read_n(mut c: SseClient, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let ev = c
            .next_non_heartbeat(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("stream ended or stalled after {} of {n} events", out.len()));
        out.push((id_u64(ev.id.as_deref().expect("events carry ids")), ev.data));
    }
    out
}

/// Publish `bodies` one after another; returns the ids with each body's data.
async fn publish_all(addr: SocketAddr, bodies: Vec<Value>) -> Vec<(u64, String)> {
    let mut out = Vec::with_capacity(bodies.len());
    for b in bodies {
        let id = id_u64(&publish_at(addr, &b).await);
        out.push((id, b["data"].as_str().expect("string data").to_string()));
    }
    out
}

fn assert_strictly_increasing(what: &str, ids: &[u64]) {
    for w in ids.windows(2) {
        assert!(
            w[0] < w[1],
            "{what}: ids not strictly increasing: {} then {}",
            w[0],
            w[1]
        );
    }
}

fn assert_spread(stats: &Value) {
    let shards = stats["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    assert!(
        shards.iter().all(|s| s["connections"].as_u64() > Some(0)),
        "connections not spread over both shards: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_every_subscriber_gets_all_in_strict_order() {
    const SUBS: usize = 30;
    const PUBLISHERS: usize = 4;
    const PER: usize = 200;
    let h = Herald::start(&["--shards", "2"]);
    let mut readers = Vec::new();
    for i in 0..SUBS {
        let c = h.subscribe_connected(&format!("userId=ord-{i}")).await;
        readers.push(tokio::spawn(read_n(c, PUBLISHERS * PER)));
    }
    h.wait_connections(SUBS as u64).await;
    assert_spread(&h.stats().await);

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let bodies = (0..PER)
                .map(|i| json!({"event": "seq", "data": format!("{p}-{i}"), "target": "all"}))
                .collect();
            tokio::spawn(publish_all(h.addr, bodies))
        })
        .collect();
    let mut sent: BTreeMap<u64, String> = BTreeMap::new();
    for (p, t) in publishers.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("publisher done")
            .expect("publisher ok");
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert_strictly_increasing(&format!("publisher {p}'s own ids"), &ids);
        for (id, data) in got {
            assert!(sent.insert(id, data).is_none(), "id {id} handed out twice");
        }
    }
    assert_eq!(sent.len(), PUBLISHERS * PER);
    let want: Vec<(u64, String)> = sent.into_iter().collect();

    for (i, r) in readers.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("reader done")
            .expect("reader ok");
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert_strictly_increasing(&format!("subscriber {i}"), &ids);
        assert_eq!(
            got.len(),
            want.len(),
            "subscriber {i}: wrong number of events"
        );
        assert!(
            got == want,
            "subscriber {i}: events differ from what was published (missing, extra or wrong data)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_targets_each_connection_gets_exactly_its_events_in_order() {
    let h = Herald::start(&["--shards", "2"]);
    // (user, topics) of each connection; several per user so they span shards.
    let subs: Vec<(String, Vec<&str>)> = (0..4)
        .flat_map(|i| {
            [
                (format!("alice&connectionId=a{i}"), vec!["a", "b"]),
                (format!("bob&connectionId=b{i}"), vec!["b"]),
                (format!("carol&connectionId=c{i}"), vec![]),
            ]
        })
        .collect();
    let targets = [
        json!("all"),
        json!({"users": ["alice"]}),
        json!({"users": ["bob", "carol"]}),
        json!({"topics": ["a"]}),
        json!({"topics": ["a", "b"]}),
        json!({"topics": ["c"]}),
    ];
    let matches = |user: &str, topics: &[&str], t: usize| -> bool {
        match t {
            0 => true,
            1 => user == "alice",
            2 => user == "bob" || user == "carol",
            3 => topics.contains(&"a"),
            4 => topics.contains(&"a") || topics.contains(&"b"),
            _ => false,
        }
    };
    const PER_TARGET: usize = 40;
    let mut clients = Vec::new();
    for (q, topics) in &subs {
        let query = if topics.is_empty() {
            format!("userId={q}")
        } else {
            format!("userId={q}&topics={}", topics.join(","))
        };
        clients.push(h.subscribe_connected(&query).await);
    }
    h.wait_connections(subs.len() as u64).await;
    assert_spread(&h.stats().await);

    // One publisher per target kind, all at once.
    let publishers: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(t, target)| {
            let bodies = (0..PER_TARGET)
                .map(|i| json!({"event": "mix", "data": format!("{t}-{i}"), "target": target}))
                .collect();
            tokio::spawn(publish_all(h.addr, bodies))
        })
        .collect();
    let mut sent: BTreeMap<u64, (usize, String)> = BTreeMap::new();
    for (t, p) in publishers.into_iter().enumerate() {
        for (id, data) in tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("publisher done")
            .expect("publisher ok")
        {
            assert!(
                sent.insert(id, (t, data)).is_none(),
                "id {id} handed out twice"
            );
        }
    }
    // A final marker so every reader knows where to stop.
    let end = id_u64(
        &h.publish(json!({"event": "end", "data": "end", "target": "all"}))
            .await,
    );

    for ((q, topics), mut c) in subs.iter().zip(clients) {
        let user = q.split('&').next().expect("user");
        let want: BTreeSet<u64> = sent
            .iter()
            .filter(|(_, (t, _))| matches(user, topics, *t))
            .map(|(id, _)| *id)
            .collect();
        let mut got = Vec::new();
        loop {
            let ev = c
                .next_non_heartbeat(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("{q}: stream stalled"));
            let id = id_u64(ev.id.as_deref().expect("id"));
            if id == end {
                break;
            }
            let (_, data) = sent
                .get(&id)
                .unwrap_or_else(|| panic!("{q}: unknown id {id}"));
            assert_eq!(&ev.data, data, "{q}: wrong data for id {id}");
            got.push(id);
        }
        assert_strictly_increasing(q, &got);
        let got_set: BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(got_set.len(), got.len(), "{q}: duplicates");
        let missing: Vec<_> = want.difference(&got_set).collect();
        let extra: Vec<_> = got_set.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{q} (topics {topics:?}): missing {missing:?}, extra {extra:?}"
        );
    }
}
