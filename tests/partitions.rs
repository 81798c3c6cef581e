//! `--partitions 8` on a local 3-master Redis Cluster: users are spread over
//! partitions (each under a hash tag of its own, spread over the masters),
//! broadcasts and topics keep their own tag. Ids are two-part (`b.p`) and
//! increase in both parts on every stream; user events keep their publish order,
//! and so do broadcast and topic events; a resume on any pod replays exactly
//! what was missed; a killed pod's connections leave the cluster.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::json;
use support::check::next_ev;
use support::redis::{wait_cluster_all, Timing};
use support::redis_cluster::{Pods, RedisCluster, MASTERS};
use support::{Herald, SseClient, SseEvent, WAIT};

const PARTITIONS: &str = "8";

fn pods(test: &str) -> Pods {
    RedisCluster::shared().pods(test).with_timing(Timing::FAST)
}

fn pod(p: &Pods) -> Herald {
    p.pod(&["--partitions", PARTITIONS])
}

/// A two-part id as its parts.
fn parts(id: &str) -> (u64, u64) {
    let (b, p) = id
        .split_once('.')
        .unwrap_or_else(|| panic!("id {id:?} is not two-part"));
    (
        b.parse().expect("broadcast part"),
        p.parse().expect("partition part"),
    )
}

/// Ids of a stream must grow in herald's comparison: no part goes down, one
/// goes up.
fn assert_increasing(evs: &[SseEvent], what: &str) {
    let ids: Vec<(u64, u64)> = evs
        .iter()
        .map(|e| parts(e.id.as_deref().expect("an id")))
        .collect();
    for w in ids.windows(2) {
        assert!(
            w[1].0 >= w[0].0 && w[1].1 >= w[0].1 && w[1] != w[0],
            "{what}: ids must increase in both parts: {w:?} in {ids:?}"
        );
    }
}

/// The next `n` events (no heartbeats) on `c`.
async fn take(c: &mut SseClient, n: usize, what: &str) -> Vec<SseEvent> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_ev(c, what).await);
    }
    out
}

/// Which published events (by data) a connection of `user` on `topics` gets,
/// in publish order, split into its user events and the rest.
fn expected(
    published: &[(String, serde_json::Value)],
    user: &str,
    topic: Option<&str>,
) -> (Vec<String>, Vec<String>) {
    let mut mine = Vec::new();
    let mut shared = Vec::new();
    for (data, t) in published {
        if t == "all"
            || topic.is_some_and(|tp| {
                t["topics"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == tp))
            })
        {
            shared.push(data.clone());
        } else if t["users"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == user))
        {
            mine.push(data.clone());
        }
    }
    (mine, shared)
}

/// Split received events into the two orders the contract keeps.
fn split(evs: &[SseEvent], mine: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    let (a, b): (Vec<&SseEvent>, Vec<&SseEvent>) = evs.iter().partition(|e| mine.contains(&e.data));
    (
        a.iter().map(|e| e.data.clone()).collect(),
        b.iter().map(|e| e.data.clone()).collect(),
    )
}

#[tokio::test]
async fn partition_tags_spread_over_every_master() {
    need!("redis-server", "redis-cli");
    let rc = RedisCluster::shared();
    let tags = herald::cluster::tags("spread", 8);
    assert_eq!(tags.len(), 9, "{tags:?}");
    let mut per_master: HashMap<usize, usize> = HashMap::new();
    for t in &tags[1..] {
        *per_master
            .entry(rc.node_for_key(&format!("{t}:log")))
            .or_default() += 1;
    }
    assert_eq!(
        per_master.len(),
        MASTERS,
        "every master holds partitions: {per_master:?}"
    );
    assert!(
        per_master.values().all(|&n| n >= 2),
        "8 partitions over 3 masters: at least 2 each, {per_master:?}"
    );
}

#[tokio::test]
async fn mixed_events_on_partitions_arrive_once_in_order_and_resume_exactly_on_another_pod() {
    need!("redis-server", "redis-cli");
    let p = pods("parts-mix");
    let a = pod(&p);
    let b = pod(&p);
    let c = pod(&p);
    // Users spread over partitions, on two pods; some on topic pt.
    let users: Vec<String> = (0..6).map(|i| format!("pu{i}")).collect();
    let mut subs: Vec<(String, Option<&str>, SseClient)> = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let (h, topic) = if i % 2 == 0 {
            (&a, Some("pt"))
        } else {
            (&b, None)
        };
        let q = match topic {
            Some(t) => format!("userId={u}&connectionId=c{i}&topics={t}"),
            None => format!("userId={u}&connectionId=c{i}"),
        };
        subs.push((u.clone(), topic, h.subscribe_connected(&q).await));
    }
    let mut published = Vec::new();
    let publish_mix = |n: usize, tag: &str| {
        let mut batch = Vec::new();
        for i in 0..n {
            let t = match fastrand::usize(..4) {
                0 => json!("all"),
                1 => json!({"topics": ["pt"]}),
                2 => json!({"users": [users[fastrand::usize(..users.len())]]}),
                _ => {
                    json!({"users": [users[fastrand::usize(..users.len())], users[fastrand::usize(..users.len())]]})
                }
            };
            batch.push((format!("{tag}{i}"), t));
        }
        batch
    };
    let first = publish_mix(40, "e");
    for (data, t) in &first {
        c.publish(json!({"data": data, "target": t})).await;
    }
    published.extend(first);
    let mut last_ids = HashMap::new();
    for (user, topic, sub) in subs.iter_mut() {
        let (mine, shared) = expected(&published, user, *topic);
        let got = take(sub, mine.len() + shared.len(), user).await;
        assert_increasing(&got, user);
        let mine_set: BTreeSet<String> = mine.iter().cloned().collect();
        assert_eq!(
            split(&got, &mine_set),
            (mine, shared),
            "{user}: events or their order"
        );
        last_ids.insert(user.clone(), got.last().and_then(|e| e.id.clone()));
    }
    // pu0 (pod a, topic pt) goes away; more events; it resumes on pod b.
    let (user, topic, gone) = subs.remove(0);
    drop(gone);
    a.wait_connections(2).await;
    let second = publish_mix(30, "f");
    for (data, t) in &second {
        c.publish(json!({"data": data, "target": t})).await;
    }
    let (mine, shared) = expected(&second, &user, topic);
    let last = last_ids[&user].clone().expect("pu0 got events");
    let path = format!("/api/user/sse/connect?userId={user}&connectionId=c0&topics=pt");
    let mut back = SseClient::connect(b.addr, &path, &[("Last-Event-ID", last.as_str())]).await;
    assert_eq!(back.status, 200, "{}", back.body);
    assert_eq!(next_ev(&mut back, "CONNECTED").await.event, "CONNECTED");
    let got = take(&mut back, mine.len() + shared.len(), "resumed pu0").await;
    let mine_set: BTreeSet<String> = mine.iter().cloned().collect();
    assert_eq!(
        split(&got, &mine_set),
        (mine, shared),
        "resume on another pod: exactly the missed events, each kind in order"
    );
    let mut all = vec![SseEvent {
        id: Some(last.clone()),
        event: "message".into(),
        data: String::new(),
    }];
    all.extend(got);
    assert_increasing(&all, "resumed pu0 (from its last id)");
    // Nothing more: a marker event is the very next one.
    let end = c.publish(json!({"data": "end", "target": "all"})).await;
    let ev = next_ev(&mut back, "end marker").await;
    assert_eq!(
        ev.data, "end",
        "nothing before the end marker: {ev:?} (publish answered {end})"
    );
    // A plain (one-part) id cannot be resumed with partitions: RESYNC.
    let mut odd = SseClient::connect(
        b.addr,
        "/api/user/sse/connect?userId=pu9",
        &[("Last-Event-ID", "12345")],
    )
    .await;
    assert_eq!(odd.status, 200);
    assert_eq!(next_ev(&mut odd, "CONNECTED").await.event, "CONNECTED");
    assert_eq!(next_ev(&mut odd, "RESYNC").await.event, "RESYNC");
}

#[tokio::test]
async fn pending_and_a_killed_pod_with_partitions() {
    need!("redis-server", "redis-cli");
    let p = pods("parts-kill");
    let a = pod(&p);
    let mut b = pod(&p);
    // Pending for offline users in several partitions, delivered once on connect.
    for i in 0..4 {
        a.publish(json!({"data": format!("p{i}"), "target": {"users": [format!("off{i}")]}}))
            .await;
    }
    for i in 0..4 {
        let mut s = b.subscribe_connected(&format!("userId=off{i}")).await;
        let ev = next_ev(&mut s, "pending").await;
        assert_eq!(ev.data, format!("p{i}"));
        parts(ev.id.as_deref().expect("id"));
    }
    let _k1 = b.subscribe_connected("userId=k1").await;
    let _k2 = b.subscribe_connected("userId=k2").await;
    let _a1 = a.subscribe_connected("userId=k3").await;
    wait_cluster_all(&[&a, &b], 2, 3, 3).await;
    b.signal("KILL");
    b.wait_exit(WAIT);
    // Gone within stale-after plus a cleanup interval (FAST: 0.9 s + 0.3 s).
    let started = std::time::Instant::now();
    wait_cluster_all(&[&a], 1, 1, 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a killed pod's connections took {:?} to leave",
        started.elapsed()
    );
}

/// (Found with the presence history split.) A stream whose partition's log had
/// no event yet when it connected resumes exactly once its partition's first
/// events came: a log that lost nothing since it was created is not "trimmed
/// past the resume point" (it was told `RESYNC`, the first retained event
/// being later than the stream's id). A stream from before the log was created
/// is still told `RESYNC`.
#[tokio::test]
async fn a_resume_after_a_partitions_first_events_is_exact() {
    need!("redis-server", "redis-cli");
    let p = pods("parts-fresh");
    let a = pod(&p);
    let b = pod(&p);
    let mut sub = a
        .subscribe_connected("userId=pf-user&connectionId=c1&topics=pf-t")
        .await;
    // One topic event gives the stream an id: its partition part is the
    // partition log's position at registration (no event there yet).
    b.publish(json!({"data": "t1", "target": {"topics": ["pf-t"]}}))
        .await;
    let t1 = next_ev(&mut sub, "t1").await;
    assert_eq!(t1.data, "t1");
    let last = t1.id.clone().expect("an id");
    drop(sub);
    a.wait_connections(0).await;
    // The partition's first events, while the stream is away.
    for i in 0..3 {
        b.publish(json!({"data": format!("u{i}"), "target": {"users": ["pf-user"]}}))
            .await;
    }
    let mut back = SseClient::connect(
        b.addr,
        "/api/user/sse/connect?userId=pf-user&connectionId=c1&topics=pf-t",
        &[("Last-Event-ID", last.as_str())],
    )
    .await;
    assert_eq!(back.status, 200, "{}", back.body);
    assert_eq!(next_ev(&mut back, "CONNECTED").await.event, "CONNECTED");
    let got: Vec<String> = take(&mut back, 3, "the partition's first events")
        .await
        .into_iter()
        .map(|e| {
            assert_ne!(e.event, "RESYNC", "a resume after {last}: {e:?}");
            e.data
        })
        .collect();
    assert_eq!(got, ["u0", "u1", "u2"], "the replay after {last}");
    // An id from before this cluster's logs existed: RESYNC.
    let (b0, p0) = parts(&last);
    let old = format!("{}.{}", b0 / 2, p0 / 2);
    let mut odd = SseClient::connect(
        b.addr,
        "/api/user/sse/connect?userId=pf-user&connectionId=c2",
        &[("Last-Event-ID", old.as_str())],
    )
    .await;
    assert_eq!(odd.status, 200);
    assert_eq!(next_ev(&mut odd, "CONNECTED").await.event, "CONNECTED");
    assert_eq!(next_ev(&mut odd, "RESYNC").await.event, "RESYNC");
}
