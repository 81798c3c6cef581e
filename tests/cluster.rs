//! Cluster mode, functional: pods that share a Redis (each test under its own
//! key prefix, so tests run in parallel on one Redis) act as one server. Events
//! published on any pod reach their targets on every pod with one cluster-wide
//! id; stats count the whole cluster; pending events, disconnects, replacements
//! and resumes work across pods.
//!
//! Every test body runs on each backend of [`cluster_tests!`]: `<body>::standalone`
//! on the shared standalone Redis, `<body>::redis_cluster` on a 3-master Redis
//! Cluster that this test binary starts once for all of them
//! (`cargo test --test cluster redis_cluster` runs only those), and
//! `<body>::redis_cluster_p8` there with `--partitions 8`.
//!
//! With partitions ([`Backend::two_part_ids`]) the contract is weaker in two
//! ways, and the bodies check what it keeps instead: ids are two-part (`b.p`)
//! and may differ from the publish answer (events are told apart by their
//! data, which the bodies keep unique, and ids must increase part by part), and
//! only a connection's user events and its shared events (`all`, topics) each
//! keep their publish order (so where a body needs "nothing else came", it
//! publishes a marker of each kind).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use support::backend::Backend;
use support::check::{self, next_ev, next_evs, Id, Kind, Sent};
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
                    let backend = $backend;
                    if !backend.available(concat!(stringify!($body), "::", stringify!($variant))) {
                        return;
                    }
                    super::$body(backend).await
                }
            )*
        }
    };
}

cluster_tests! {
    variants {
        standalone: Backend::REDIS,
        redis_cluster: Backend::REDIS_CLUSTER,
        redis_cluster_p8: Backend::REDIS_CLUSTER.with_flags(&["--partitions", "8"]),
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

/// Publish `data` (event `message`) to `target` on `h`; what a subscriber
/// should receive. The answer's id must be a valid id.
async fn publish(h: &Herald, data: &str, target: serde_json::Value) -> Sent {
    let kind = Kind::of(&target);
    let id = h.publish(json!({"data": data, "target": target})).await;
    check::assert_opaque_id(&id);
    Sent {
        kind,
        id,
        event: "message".into(),
        data: data.into(),
    }
}

/// Every non-heartbeat event on `c` until each of `markers` (data) was seen,
/// the markers included.
async fn events_until(c: &mut SseClient, markers: &[&str], what: &str) -> Vec<SseEvent> {
    let mut out: Vec<SseEvent> = Vec::new();
    while !markers
        .iter()
        .all(|m| out.iter().any(|e| e.data.as_str() == *m))
    {
        let ev = c.next_non_heartbeat(WAIT).await.unwrap_or_else(|| {
            panic!("{what}: no event within {WAIT:?} before the markers {markers:?}; got {out:?}")
        });
        out.push(ev);
    }
    out
}

/// Publish a broadcast on `h`, and a user event to `user`, and assert they are
/// the next events on `c` (a connection of `user`): nothing else came before
/// (with partitions the two kinds are ordered apart, hence a marker of each).
async fn assert_next_is_live(
    h: &Herald,
    c: &mut SseClient,
    user: &str,
    two_part: bool,
    what: &str,
) {
    static LIVE: AtomicUsize = AtomicUsize::new(0);
    let n = LIVE.fetch_add(1, Ordering::Relaxed);
    let want = [
        publish(h, &format!("live-{n}"), json!("all")).await,
        publish(h, &format!("live-{n}-{user}"), json!({"users": [user]})).await,
    ];
    let got = next_evs(c, want.len(), &format!("{what}: the live events")).await;
    check::assert_delivered(&got, &want, two_part, &format!("{what}: live events next"));
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
    let two_part = be.two_part_ids();
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

    // (publishing pod, target, the subscribers it reaches); the last two are
    // end markers, one of each kind, so every subscriber's stream ends with
    // both (each event's data is unique).
    let everyone: &[&str] = &["a_x", "b_x", "b_y", "a_z"];
    let plan: Vec<(&Herald, serde_json::Value, &[&str])> = vec![
        (&a, json!("all"), everyone),
        (&b, json!({"users": ["x"]}), &["a_x", "b_x"]),
        (&a, json!({"topics": ["t"]}), &["a_x", "b_y"]),
        (&b, json!({"users": ["y", "z"]}), &["b_y", "a_z"]),
        (&a, json!({"topics": ["nobody"]}), &[]),
        (&b, json!({"users": ["x", "y"]}), &["a_x", "b_x", "b_y"]),
        (&a, json!("all"), everyone),
        (&b, json!("all"), everyone),
        (&a, json!({"users": ["x", "y", "z"]}), everyone),
    ];
    let mut want: HashMap<&str, Vec<Sent>> = HashMap::new();
    let mut last = 0u64;
    for (i, (h, target, reach)) in plan.iter().enumerate() {
        let (name, data) = (format!("ev{i}"), json!({"n": i, "s": "x y"}));
        let id = h
            .publish(json!({"event": name, "data": data, "target": target}))
            .await;
        if two_part {
            // Opaque, and not comparable across partitions.
            check::assert_opaque_id(&id);
        } else {
            let n = support::ops::id_u64(&id);
            assert!(n > last, "ids must increase cluster-wide: {n} after {last}");
            last = n;
        }
        for s in reach.iter() {
            want.entry(s).or_default().push(Sent {
                kind: Kind::of(target),
                id: id.clone(),
                event: name.clone(),
                data: data.to_string(),
            });
        }
    }
    for ((name, _, _), c) in subs.iter().zip(clients.iter_mut()) {
        let want = want.remove(name).unwrap_or_default();
        let got = next_evs(c, want.len(), name).await;
        check::assert_delivered(&got, &want, two_part, name);
    }
}

async fn concurrent_publishes_on_two_pods_arrive_in_one_order_everywhere(be: Backend) {
    const EACH: usize = 40;
    let two_part = be.two_part_ids();
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
                let mut sent = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let data = format!("p{p}-{i}");
                    let body = json!({"data": data, "target": "all"});
                    sent.push((data, support::ops::publish_at(addr, &body).await));
                }
                sent
            })
        })
        .collect();
    // Each publisher's data in its publish order; data -> publish answer's id.
    let mut per_publisher: Vec<Vec<String>> = Vec::new();
    let mut answer: HashMap<String, String> = HashMap::new();
    for t in tasks {
        let sent = tokio::time::timeout(WAIT, t)
            .await
            .expect("publisher in time")
            .expect("publisher task");
        if two_part {
            sent.iter().for_each(|(_, id)| check::assert_opaque_id(id));
        } else {
            let nums: Vec<u64> = sent.iter().map(|(_, i)| support::ops::id_u64(i)).collect();
            assert!(
                nums.windows(2).all(|w| w[0] < w[1]),
                "one publisher's ids must increase: {nums:?}"
            );
        }
        per_publisher.push(sent.iter().map(|(d, _)| d.clone()).collect());
        answer.extend(sent);
    }
    if !two_part {
        let ids: BTreeSet<&String> = answer.values().collect();
        assert_eq!(ids.len(), 2 * EACH, "ids must be unique");
    }
    let published: BTreeSet<&str> = answer.keys().map(String::as_str).collect();

    // Every client gets every event once, each publisher's in its order, and
    // all clients in one order (with partitions too: these are all broadcasts,
    // which come from one ordered source).
    let mut first: Option<Vec<String>> = None;
    for (i, c) in clients.iter_mut().enumerate() {
        let evs = next_evs(c, 2 * EACH, "every published event").await;
        let what = format!("client {i}");
        check::assert_ids_increase(&evs, two_part, &what);
        if !two_part {
            for e in &evs {
                assert_eq!(
                    e.id.as_ref(),
                    answer.get(&e.data),
                    "{what}: the id of {e:?} is not its publish answer's"
                );
            }
        }
        let got: Vec<String> = evs.into_iter().map(|e| e.data).collect();
        assert_eq!(
            got.iter().map(String::as_str).collect::<BTreeSet<_>>(),
            published,
            "{what}: not the published events: {got:?}"
        );
        assert_eq!(got.len(), 2 * EACH, "{what}: an event came twice: {got:?}");
        for (p, sent) in per_publisher.iter().enumerate() {
            let from_p: Vec<&String> = got.iter().filter(|d| sent.contains(d)).collect();
            assert!(
                from_p.iter().copied().eq(sent.iter()),
                "{what}: publisher {p}'s events out of publish order: {from_p:?}"
            );
        }
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(&got, f, "{what} saw another order"),
        }
    }
    assert_next_is_live(
        &a,
        &mut clients[2],
        "o3",
        two_part,
        "after the concurrent publishes",
    )
    .await;
}

async fn pending_for_a_user_offline_everywhere_is_delivered_once_on_any_pod(be: Backend) {
    let two_part = be.two_part_ids();
    let cl = be.cluster("pending");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let _other = b.subscribe_connected("userId=someone").await;
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(publish(&a, &format!("p{i}"), json!({"users": ["off"]})).await);
    }
    {
        let mut c = b.subscribe("userId=off").await;
        let first = c.next_event(WAIT).await.expect("CONNECTED");
        assert_eq!(first.event, "CONNECTED", "pending must follow CONNECTED");
        let got = next_evs(&mut c, sent.len(), "pending events").await;
        check::assert_delivered(&got, &sent, two_part, "pending events, oldest first");
        assert_next_is_live(&a, &mut c, "off", two_part, "after the pending events").await;
    }
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;
    // Delivered once: a later connect, on the other pod, gets nothing pending.
    let mut again = a.subscribe_connected("userId=off").await;
    assert_next_is_live(&b, &mut again, "off", two_part, "second connect").await;
}

async fn a_user_online_on_another_pod_gets_events_live_not_pending(be: Backend) {
    let two_part = be.two_part_ids();
    let cl = be.cluster("online");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    {
        let mut c = b.subscribe_connected("userId=on").await;
        wait_cluster_all(&[&a, &b], 2, 1, 1).await;
        let sent = publish(&a, "live-then", json!({"users": ["on"]})).await;
        let ev = next_ev(&mut c, "live delivery on the other pod").await;
        check::assert_delivered(&[ev], &[sent], two_part, "live delivery");
    }
    wait_cluster_all(&[&a, &b], 2, 0, 0).await;
    let mut again = a.subscribe_connected("userId=on").await;
    assert_next_is_live(
        &b,
        &mut again,
        "on",
        two_part,
        "reconnect of an online user",
    )
    .await;
}

async fn simultaneous_connects_on_two_pods_share_pending_exactly_once(be: Backend) {
    let two_part = be.two_part_ids();
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
        // Live markers of both kinds: every pending event comes before them.
        let ends = [
            publish(&b, "end", json!("all")).await,
            publish(&a, "end-user", json!({"users": [&user]})).await,
        ];
        let markers: Vec<&str> = ends.iter().map(|e| e.data.as_str()).collect();
        let mut seen: Vec<usize> = Vec::new();
        let mut split = Vec::new();
        for (name, c) in [("a", &mut ca), ("b", &mut cb)] {
            let what = format!("round {round}, {name}");
            let evs = events_until(c, &markers, &what).await;
            check::assert_ids_increase(&evs, two_part, &what);
            let got: Vec<&SseEvent> = evs
                .iter()
                .filter(|e| !markers.contains(&e.data.as_str()))
                .collect();
            assert_eq!(
                evs.len() - got.len(),
                markers.len(),
                "{what}: a marker came twice: {evs:?}"
            );
            // Pending events, each once, in publish order.
            let mut at = Vec::new();
            for e in &got {
                let i = pending
                    .iter()
                    .position(|p| p.data == e.data)
                    .unwrap_or_else(|| panic!("{what}: not a pending event: {e:?}"));
                if !two_part {
                    assert_eq!(e.id.as_ref(), Some(&pending[i].id), "{what}: id of {e:?}");
                }
                at.push(i);
            }
            assert!(
                at.windows(2).all(|w| w[0] < w[1]),
                "{what}: pending out of order: {evs:?}"
            );
            split.push(at.len());
            seen.extend(at);
        }
        seen.sort();
        assert_eq!(
            seen,
            (0..pending.len()).collect::<Vec<_>>(),
            "round {round}: each pending event must reach exactly one of the two connects"
        );
        eprintln!("round {round}: pending split a={} b={}", split[0], split[1]);
    }
}

async fn disconnect_sent_to_another_pod_ends_the_stream(be: Backend) {
    let two_part = be.two_part_ids();
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
    let sent = publish(&b, "still", json!({"users": ["dc"]})).await;
    let ev = next_ev(&mut c2, "event to c2").await;
    check::assert_delivered(&[ev], &[sent], two_part, "event to c2");
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;
}

async fn a_second_connect_on_another_pod_replaces_the_first(be: Backend) {
    let two_part = be.two_part_ids();
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

    let sent = publish(&a, "to-rp", json!({"users": ["rp"]})).await;
    let ev = next_ev(&mut new, "event to the new stream").await;
    check::assert_delivered(&[ev], &[sent], two_part, "event to the new stream");
    assert_next_is_live(&a, &mut new, "rp", two_part, "each event once").await;
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;
    a.wait_connections(0).await;
}

async fn resume_on_another_pod_replays_exactly_the_missed_events(be: Backend) {
    let two_part = be.two_part_ids();
    let cl = be.cluster("resume");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    // The last id the client saw (with one-part ids: e2's, the later event).
    let seen = {
        let mut c = a.subscribe_connected("userId=ru&topics=t1").await;
        let e1 = publish(&a, "e1", json!("all")).await;
        let e2 = publish(&b, "e2", json!({"users": ["ru"]})).await;
        let got = next_evs(&mut c, 2, "e1, e2").await;
        check::assert_delivered(&got, &[e1, e2], two_part, "e1, e2");
        let last = got[1].id.clone().expect("an id");
        assert_eq!(c.parser.last_event_id, last);
        last
    };
    a.wait_connections(0).await;

    let e3 = publish(&b, "e3", json!("all")).await;
    let e4 = publish(&a, "e4", json!({"users": ["ru"]})).await;
    publish(&b, "not mine", json!({"users": ["someone-else"]})).await;
    let e6 = publish(&a, "t1", json!({"topics": ["t1"]})).await;
    publish(&b, "t2", json!({"topics": ["t2"]})).await;
    let e8 = publish(&a, "e8", json!("all")).await;

    let mut c = connect_resume(&b, "userId=ru&topics=t1", Some(&seen)).await;
    let got = next_evs(&mut c, 4, "replay").await;
    let what = format!("replay after {seen}");
    check::assert_delivered(&got, &[e3, e4, e6, e8], two_part, &what);
    let first = Id::of(&got[0], two_part);
    assert!(
        first.is_after(Id::parse(&seen, two_part)),
        "{what}: the first replayed id {first:?} must come after it: {got:?}"
    );
    assert_next_is_live(&a, &mut c, "ru", two_part, "after the replay").await;
    assert_next_is_live(&b, &mut c, "ru", two_part, "nothing replayed twice").await;
    let future = Id::parse(&c.parser.last_event_id, two_part).future();
    drop(c);
    b.wait_connections(0).await;

    for (h, other, bad) in [(&a, &b, "garbage"), (&b, &a, future.as_str())] {
        let mut c = connect_resume(h, "userId=ru", Some(bad)).await;
        let ev = next_ev(&mut c, "RESYNC").await;
        assert_eq!(ev.event, "RESYNC", "unknown id {bad:?}: {ev:?}");
        assert_eq!(ev.id, None, "RESYNC carries no id");
        assert_next_is_live(other, &mut c, "ru", two_part, "after RESYNC").await;
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
