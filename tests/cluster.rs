//! Cluster mode, functional: pods that share a Redis (each test under its own
//! key prefix, so tests run in parallel on one Redis) act as one server. Events
//! published on any pod reach their targets on every pod with one cluster-wide
//! id; stats count the whole cluster; pending events, disconnects, replacements
//! and resumes work across pods.
//!
//! Every test body runs on each backend of [`cluster_tests!`]: `<body>::standalone`
//! on the shared standalone Redis, `<body>::redis_cluster` on a 3-master Redis
//! Cluster that this test binary starts once for all of them
//! (`cargo test --test cluster redis_cluster` runs only those).

mod support;

use std::collections::{BTreeSet, HashMap};

use serde_json::json;
use support::backend::Backend;
use support::check::{self, id_of, next_ev, next_evs};
use support::redis::{cluster_counts, cluster_of, wait_cluster_all};
use support::{Herald, SseClient, SseEvent, WAIT};

/// For each body, a module of that name with one `#[tokio::test]` per variant
/// that runs the body on the variant's [`Backend`]. A variant (e.g. pods with
/// `--partitions 8`) is one line in `variants`; a body is one line in `bodies`.
macro_rules! cluster_tests {
    (variants $variants:tt bodies { $($body:ident),* $(,)? }) => {
        $(cluster_tests!(@body $body $variants);)*
    };
    (@body $body:ident { $($variant:ident: $backend:expr),* $(,)? }) => {
        mod $body {
            use super::*;
            $(
                #[tokio::test]
                async fn $variant() {
                    super::$body($backend).await
                }
            )*
        }
    };
}

cluster_tests! {
    variants {
        standalone: Backend::REDIS,
        redis_cluster: Backend::REDIS_CLUSTER,
    }
    bodies {
        stats_count_the_whole_cluster,
        cluster_metrics_are_exported,
        events_published_on_any_pod_reach_every_pod_with_one_id,
        concurrent_publishes_on_two_pods_arrive_in_one_order_everywhere,
        pending_for_a_user_offline_everywhere_is_delivered_once_on_any_pod,
        a_user_online_on_another_pod_gets_events_live_not_pending,
        simultaneous_connects_on_two_pods_share_pending_exactly_once,
        disconnect_sent_to_another_pod_ends_the_stream,
        a_second_connect_on_another_pod_replaces_the_first,
        resume_on_another_pod_replays_exactly_the_missed_events,
        a_pod_that_joins_is_counted_by_every_pod,
    }
}

async fn publish(h: &Herald, data: &str, target: serde_json::Value) -> String {
    h.publish(json!({"data": data, "target": target})).await
}

/// Every non-heartbeat event on `c` up to and including the one with id `until`.
async fn events_until(c: &mut SseClient, until: &str, what: &str) -> Vec<SseEvent> {
    let mut out = Vec::new();
    loop {
        let ev = next_ev(c, &format!("{what}: events up to {until}")).await;
        let done = ev.id.as_deref() == Some(until);
        out.push(ev);
        if done {
            return out;
        }
    }
}

/// Publish a broadcast on `h` and assert it is the next event on `c`.
async fn assert_next_is_live(h: &Herald, c: &mut SseClient, what: &str) {
    let live = publish(h, "live", json!("all")).await;
    let ev = next_ev(c, "the live event").await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(live.as_str()), "live"),
        "{what}: got {ev:?} before the live event"
    );
}

/// Connect with an optional `Last-Event-ID`; assert 200 and consume CONNECTED.
async fn connect_resume(h: &Herald, query: &str, last_event_id: Option<&str>) -> SseClient {
    let headers: Vec<(&str, &str)> = last_event_id
        .map(|id| vec![("Last-Event-ID", id)])
        .unwrap_or_default();
    let path = format!("/api/user/sse/connect?{query}");
    let mut c = SseClient::connect(h.addr, &path, &headers).await;
    assert_eq!(c.status, 200, "connect answered {}: {}", c.status, c.body);
    let ev = c.next_event(WAIT).await.expect("CONNECTED");
    assert_eq!(ev.event, "CONNECTED");
    c
}

async fn disconnect(h: &Herald, user: &str, conn: &str) -> support::Response {
    h.post(
        &format!("/api/user/sse/disconnect?userId={user}&connectionId={conn}"),
        "",
    )
    .await
}

async fn stats_count_the_whole_cluster(be: Backend) {
    let cl = be.cluster("stats");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let _a1 = a.subscribe_connected("userId=s1").await;
    let _a2 = a.subscribe_connected("userId=s2").await;
    let b1 = b.subscribe_connected("userId=s1").await;
    wait_cluster_all(&[&a, &b], 2, 3, 2).await;
    for (h, local) in [(&a, 2), (&b, 1)] {
        let s = h.stats().await;
        assert_eq!(s["podId"].as_str(), Some(h.pod_id.as_str()), "{s}");
        assert_eq!(s["connections"].as_u64(), Some(local), "local count: {s}");
        assert_eq!(s["redis"].as_str(), Some("up"), "{s}");
        assert_eq!(
            cluster_of(&s)["inactive"].as_u64(),
            Some(0),
            "cluster.inactive must be a count, 0 here: {s}"
        );
        let r = h.get("/health/ready").await;
        assert_eq!(r.status, 200, "ready with Redis up: {}", r.body);
    }
    // A stream that goes away leaves the cluster count on every pod.
    drop(b1);
    wait_cluster_all(&[&a, &b], 2, 2, 2).await;
}

async fn cluster_metrics_are_exported(be: Backend) {
    let cl = be.cluster("metrics");
    let a = cl.pod(&[]);
    let _c = a.subscribe_connected("userId=m1").await;
    publish(&a, "m", json!("all")).await;
    check::wait_metric(&a, "herald_redis_up", |v| v == 1.0).await;
    check::wait_metric(&a, "herald_redis_commands_total", |v| v > 0.0).await;
    let text = check::metrics_body(&a).await;
    assert!(
        text.contains("# TYPE herald_redis_roundtrip_seconds histogram"),
        "herald_redis_roundtrip_seconds must be a histogram:\n{text}"
    );
    let buckets = check::samples(&text, "herald_redis_roundtrip_seconds_bucket");
    assert!(
        buckets.len() > 1 && buckets.iter().all(|(l, _)| l.contains("le=")),
        "roundtrip histogram without buckets:\n{text}"
    );
    assert!(
        check::sample_sum(&text, "herald_redis_roundtrip_seconds_count").unwrap_or(0.0) > 0.0,
        "no Redis round trip recorded:\n{text}"
    );
    assert!(
        check::sample_sum(&text, "herald_redis_errors_total").is_some(),
        "herald_redis_errors_total missing:\n{text}"
    );
    assert_eq!(
        check::sample_sum(&text, "herald_publish_buffered"),
        Some(0.0),
        "nothing is buffered while Redis is up:\n{text}"
    );
}

async fn events_published_on_any_pod_reach_every_pod_with_one_id(be: Backend) {
    let cl = be.cluster("fanout");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    // name, pod, query
    let subs: [(&str, &Herald, &str); 4] = [
        ("a_x", &a, "userId=x&topics=t"),
        ("b_x", &b, "userId=x&connectionId=bx"),
        ("b_y", &b, "userId=y&topics=t"),
        ("a_z", &a, "userId=z"),
    ];
    let mut clients = Vec::new();
    for (_, h, q) in &subs {
        clients.push(h.subscribe_connected(q).await);
    }
    wait_cluster_all(&[&a, &b], 2, 4, 3).await;

    // (publishing pod, target, the subscribers it reaches)
    let plan: Vec<(&Herald, serde_json::Value, &[&str])> = vec![
        (&a, json!("all"), &["a_x", "b_x", "b_y", "a_z"]),
        (&b, json!({"users": ["x"]}), &["a_x", "b_x"]),
        (&a, json!({"topics": ["t"]}), &["a_x", "b_y"]),
        (&b, json!({"users": ["y", "z"]}), &["b_y", "a_z"]),
        (&a, json!({"topics": ["nobody"]}), &[]),
        (&b, json!({"users": ["x", "y"]}), &["a_x", "b_x", "b_y"]),
        (&a, json!("all"), &["a_x", "b_x", "b_y", "a_z"]),
    ];
    let mut want: HashMap<&str, Vec<(String, String, String)>> = HashMap::new();
    let mut last = 0u64;
    for (i, (h, target, reach)) in plan.iter().enumerate() {
        let (name, data) = (format!("ev{i}"), json!({"n": i, "s": "x y"}));
        let id = h
            .publish(json!({"event": name, "data": data, "target": target}))
            .await;
        let n = support::ops::id_u64(&id);
        assert!(n > last, "ids must increase cluster-wide: {n} after {last}");
        last = n;
        for s in reach.iter() {
            want.entry(s)
                .or_default()
                .push((id.clone(), name.clone(), data.to_string()));
        }
    }
    let end = publish(&b, "end", json!("all")).await;
    for ((name, _, _), c) in subs.iter().zip(clients.iter_mut()) {
        let mut got: Vec<(String, String, String)> = events_until(c, &end, name)
            .await
            .into_iter()
            .map(|e| (e.id.unwrap_or_default(), e.event, e.data))
            .collect();
        assert_eq!(got.pop().map(|g| g.0), Some(end.clone()));
        assert_eq!(
            got,
            want.remove(name).unwrap_or_default(),
            "{name}: wrong events (id, event, data)"
        );
    }
}

async fn concurrent_publishes_on_two_pods_arrive_in_one_order_everywhere(be: Backend) {
    const EACH: usize = 40;
    let cl = be.cluster("order");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let mut clients = [
        a.subscribe_connected("userId=o1").await,
        a.subscribe_connected("userId=o2").await,
        b.subscribe_connected("userId=o3").await,
        b.subscribe_connected("userId=o4").await,
    ];
    wait_cluster_all(&[&a, &b], 2, 4, 4).await;
    let tasks: Vec<_> = [a.addr, b.addr]
        .into_iter()
        .enumerate()
        .map(|(p, addr)| {
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let body = json!({"data": format!("p{p}-{i}"), "target": "all"});
                    ids.push(support::ops::publish_at(addr, &body).await);
                }
                ids
            })
        })
        .collect();
    let mut published = BTreeSet::new();
    for t in tasks {
        let ids = tokio::time::timeout(WAIT, t)
            .await
            .expect("publisher in time")
            .expect("publisher task");
        let nums: Vec<u64> = ids.iter().map(|i| support::ops::id_u64(i)).collect();
        assert!(
            nums.windows(2).all(|w| w[0] < w[1]),
            "one publisher's ids must increase: {nums:?}"
        );
        published.extend(nums);
    }
    assert_eq!(published.len(), 2 * EACH, "ids must be unique");

    let mut first: Option<Vec<u64>> = None;
    for (i, c) in clients.iter_mut().enumerate() {
        let got: Vec<u64> = next_evs(c, 2 * EACH, "every published event")
            .await
            .iter()
            .map(id_of)
            .collect();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "client {i}: ids out of order: {got:?}"
        );
        assert_eq!(
            got.iter().copied().collect::<BTreeSet<_>>(),
            published,
            "client {i}: not exactly the published events"
        );
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(&got, f, "client {i} saw another order"),
        }
    }
    assert_next_is_live(&a, &mut clients[2], "after the concurrent publishes").await;
}

async fn pending_for_a_user_offline_everywhere_is_delivered_once_on_any_pod(be: Backend) {
    let cl = be.cluster("pending");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let _other = b.subscribe_connected("userId=someone").await;
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(&a, &format!("p{i}"), json!({"users": ["off"]})).await);
    }
    {
        let mut c = b.subscribe("userId=off").await;
        let first = c.next_event(WAIT).await.expect("CONNECTED");
        assert_eq!(first.event, "CONNECTED", "pending must follow CONNECTED");
        for (i, id) in ids.iter().enumerate() {
            let ev = next_ev(&mut c, "pending event").await;
            assert_eq!(
                (ev.id.as_ref(), ev.data.as_str()),
                (Some(id), format!("p{i}").as_str()),
                "pending #{i}"
            );
        }
        assert_next_is_live(&a, &mut c, "after the pending events").await;
    }
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;
    // Delivered once: a later connect, on the other pod, gets nothing pending.
    let mut again = a.subscribe_connected("userId=off").await;
    assert_next_is_live(&b, &mut again, "second connect").await;
}

async fn a_user_online_on_another_pod_gets_events_live_not_pending(be: Backend) {
    let cl = be.cluster("online");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    {
        let mut c = b.subscribe_connected("userId=on").await;
        wait_cluster_all(&[&a, &b], 2, 1, 1).await;
        let id = publish(&a, "live-then", json!({"users": ["on"]})).await;
        let ev = next_ev(&mut c, "live delivery on the other pod").await;
        assert_eq!(ev.id.as_ref(), Some(&id));
    }
    wait_cluster_all(&[&a, &b], 2, 0, 0).await;
    let mut again = a.subscribe_connected("userId=on").await;
    assert_next_is_live(&b, &mut again, "reconnect of an online user").await;
}

async fn simultaneous_connects_on_two_pods_share_pending_exactly_once(be: Backend) {
    let cl = be.cluster("pendrace");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    for round in 0..3 {
        let user = format!("race{round}");
        let mut pending = Vec::new();
        for i in 0..6 {
            pending.push(publish(&a, &format!("p{i}"), json!({"users": [&user]})).await);
        }
        let (qa, qb) = (
            format!("userId={user}&connectionId=a"),
            format!("userId={user}&connectionId=b"),
        );
        let (mut ca, mut cb) = tokio::join!(a.subscribe_connected(&qa), b.subscribe_connected(&qb));
        let end = publish(&b, "end", json!("all")).await;
        let mut seen: Vec<String> = Vec::new();
        let mut split = Vec::new();
        for (name, c) in [("a", &mut ca), ("b", &mut cb)] {
            let mut evs = events_until(c, &end, name).await;
            evs.pop();
            let ids: Vec<u64> = evs.iter().map(id_of).collect();
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "round {round}, {name}: pending out of order: {evs:?}"
            );
            split.push(evs.len());
            seen.extend(evs.into_iter().map(|e| e.id.unwrap()));
        }
        seen.sort_by_key(|id| support::ops::id_u64(id));
        assert_eq!(
            seen, pending,
            "round {round}: each pending event must reach exactly one of the two connects"
        );
        eprintln!("round {round}: pending split a={} b={}", split[0], split[1]);
    }
}

async fn disconnect_sent_to_another_pod_ends_the_stream(be: Backend) {
    let cl = be.cluster("disc");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let mut c1 = a.subscribe_connected("userId=dc&connectionId=c1").await;
    let mut c2 = a.subscribe_connected("userId=dc&connectionId=c2").await;
    wait_cluster_all(&[&a, &b], 2, 2, 1).await;

    let r = disconnect(&b, "dc", "c1").await;
    assert_eq!(r.status, 200, "disconnect via the other pod: {}", r.body);
    assert_eq!(r.json(), json!({"disconnected": true}));
    assert!(
        c1.wait_closed(WAIT).await,
        "the stream on pod A must end after a disconnect sent to pod B"
    );
    for h in [&b, &a] {
        let r = disconnect(h, "dc", "c1").await;
        assert_eq!(
            r.status, 404,
            "second disconnect on {}: {}",
            h.pod_id, r.body
        );
    }
    let r = disconnect(&b, "dc", "never-was").await;
    assert_eq!(r.status, 404, "unknown connection: {}", r.body);

    // The user's other stream is untouched.
    let id = publish(&b, "still", json!({"users": ["dc"]})).await;
    assert_eq!(next_ev(&mut c2, "event to c2").await.id, Some(id));
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;
}

async fn a_second_connect_on_another_pod_replaces_the_first(be: Backend) {
    let cl = be.cluster("replace");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let mut old = a.subscribe_connected("userId=rp&connectionId=same").await;
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;

    let mut new = b.subscribe("userId=rp&connectionId=same").await;
    let ev = new.next_event(WAIT).await.expect("CONNECTED");
    assert_eq!(ev.event, "CONNECTED");
    let data: serde_json::Value = serde_json::from_str(&ev.data).expect("CONNECTED data");
    assert_eq!(data["connectionId"], "same");
    assert_eq!(data["podId"].as_str(), Some(b.pod_id.as_str()));
    assert!(
        old.wait_closed(WAIT).await,
        "the first stream (pod A) must end when pod B takes its connection id"
    );

    let id = publish(&a, "to-rp", json!({"users": ["rp"]})).await;
    assert_eq!(
        next_ev(&mut new, "event to the new stream").await.id,
        Some(id)
    );
    assert_next_is_live(&a, &mut new, "each event once").await;
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;
    a.wait_connections(0).await;
}

async fn resume_on_another_pod_replays_exactly_the_missed_events(be: Backend) {
    let cl = be.cluster("resume");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let e2 = {
        let mut c = a.subscribe_connected("userId=ru&topics=t1").await;
        let e1 = publish(&a, "e1", json!("all")).await;
        let e2 = publish(&b, "e2", json!({"users": ["ru"]})).await;
        let got: Vec<_> = next_evs(&mut c, 2, "e1, e2")
            .await
            .into_iter()
            .map(|e| e.id.unwrap())
            .collect();
        assert_eq!(got, vec![e1, e2.clone()]);
        assert_eq!(c.parser.last_event_id, e2);
        e2
    };
    a.wait_connections(0).await;

    let e3 = publish(&b, "e3", json!("all")).await;
    let e4 = publish(&a, "e4", json!({"users": ["ru"]})).await;
    publish(&b, "not mine", json!({"users": ["someone-else"]})).await;
    let e6 = publish(&a, "t1", json!({"topics": ["t1"]})).await;
    publish(&b, "t2", json!({"topics": ["t2"]})).await;
    let e8 = publish(&a, "e8", json!("all")).await;

    let mut c = connect_resume(&b, "userId=ru&topics=t1", Some(&e2)).await;
    let got: Vec<(String, String)> = next_evs(&mut c, 4, "replay")
        .await
        .into_iter()
        .map(|e| (e.id.unwrap(), e.data))
        .collect();
    assert_eq!(
        got,
        vec![
            (e3, "e3".into()),
            (e4, "e4".into()),
            (e6, "t1".into()),
            (e8.clone(), "e8".into())
        ]
    );
    assert_next_is_live(&a, &mut c, "after the replay").await;
    assert_next_is_live(&b, &mut c, "nothing replayed twice").await;
    drop(c);
    b.wait_connections(0).await;

    let future = (support::ops::id_u64(&e8) + 1_000_000_000).to_string();
    for (h, other, bad) in [(&a, &b, "garbage"), (&b, &a, future.as_str())] {
        let mut c = connect_resume(h, "userId=ru", Some(bad)).await;
        let ev = next_ev(&mut c, "RESYNC").await;
        assert_eq!(ev.event, "RESYNC", "unknown id {bad:?}: {ev:?}");
        assert_eq!(ev.id, None, "RESYNC carries no id");
        assert_next_is_live(other, &mut c, "after RESYNC").await;
        drop(c);
        h.wait_connections(0).await;
    }
}

async fn a_pod_that_joins_is_counted_by_every_pod(be: Backend) {
    // A pod that just joined reports the cluster as soon as it answers stats.
    let cl = be.cluster("fresh");
    let a = cl.pod(&[]);
    let (pods, conns, users) = cluster_counts(&a.stats().await);
    assert!(pods <= 1, "one pod started, stats say {pods}");
    assert_eq!((conns, users), (0, 0));
    let b = cl.pod(&[]);
    wait_cluster_all(&[&a, &b], 2, 0, 0).await;
}
