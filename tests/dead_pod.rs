//! A user event routed to a pod that has died (SIGKILL, before the registry
//! knows it) is not lost with the pod's inbox (contract v1.2): once the pod is
//! known dead, each event it had not read goes to its user elsewhere, once:
//! * a user who reconnects later without `Last-Event-ID` gets it as pending;
//! * a user who reconnects later with `Last-Event-ID` gets it from the log
//!   (and not also as pending);
//! * a user already reconnected on another pod without `Last-Event-ID` gets
//!   it there, live, under a new id;
//! * a user already reconnected with `Last-Event-ID` had it replayed, and gets
//!   nothing more.
//!
//! Each with one partition and with `--partitions 8` (the dead pod's inbox
//! then lives in the user's partition, on a Redis Cluster in the other tests).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::check::{self, next_ev};
use support::redis::{wait_cluster_all, Cluster};
use support::{Herald, SseClient, SseEvent, WAIT};

async fn publish_to(h: &Herald, user: &str, data: &str) {
    h.publish(json!({"data": data, "target": {"users": [user]}}))
        .await;
}

/// Every non-heartbeat event of `c` up to the one whose data is `end`.
async fn until_end(c: &mut SseClient, end: &str, what: &str) -> Vec<SseEvent> {
    let mut out = Vec::new();
    loop {
        let ev = next_ev(c, &format!("{what}: events up to {end}")).await;
        if ev.data == end {
            return out;
        }
        out.push(ev);
    }
}

fn datas(evs: &[SseEvent]) -> Vec<&str> {
    evs.iter()
        .filter(|e| e.event != "RESYNC")
        .map(|e| e.data.as_str())
        .collect()
}

/// Wait until no inbox of `pod` holds an event (`i` entries).
async fn wait_inbox_read(cl: &Cluster, pod: &str) {
    let mut r = cl.client();
    let until = Instant::now() + WAIT;
    loop {
        let keys = r.keys_containing(&format!(":inbox:{pod}")).unwrap();
        let mut left = 0;
        for k in &keys {
            let all = r.cmd(&["XRANGE", k, "-", "+"]).unwrap().strings();
            left += all.iter().filter(|s| *s == "i").count();
        }
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "{left} events still unread in {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn dead_pod(flags: &[&str]) {
    let cl = Cluster::shared(&format!("dead-pod{}", flags.len()));
    let a = cl.pod(flags);
    let mut b = cl.pod(flags);
    let users = ["kim", "lee", "max", "ned"];
    let mut on_b = BTreeMap::new();
    let mut pre_ids = BTreeMap::new();
    for u in users {
        on_b.insert(u, b.subscribe_connected(&format!("userId={u}")).await);
    }
    wait_cluster_all(&[&a, &b], 2, 4, 4).await;
    for u in users {
        publish_to(&a, u, &format!("pre-{u}")).await;
        let ev = next_ev(on_b.get_mut(u).unwrap(), "the event before the kill").await;
        assert_eq!(ev.data, format!("pre-{u}"));
        pre_ids.insert(u, ev.id.expect("an id"));
    }

    // B has told Redis it read them (it deletes them from its inbox as it
    // reads): what a pod delivered just before a SIGKILL, before its delete
    // reached Redis, is the one window where an event can reach its user twice.
    wait_inbox_read(&cl, &b.pod_id).await;
    b.child.kill().expect("SIGKILL pod B");
    b.child.wait().expect("reap pod B");
    let killed = Instant::now();
    drop(on_b);

    // Routed to B's inbox: B still holds all four in the registry.
    for u in users {
        publish_to(&a, u, &format!("post1-{u}")).await;
    }
    // lee comes back on A at once without Last-Event-ID (a page reload);
    // max with it (EventSource's reconnect).
    let mut lee = a.subscribe_connected("userId=lee").await;
    let mut max = SseClient::connect(
        a.addr,
        "/api/user/sse/connect?userId=max",
        &[("Last-Event-ID", pre_ids["max"].as_str())],
    )
    .await;
    assert_eq!(max.status, 200, "{}", max.body);
    assert_eq!(next_ev(&mut max, "CONNECTED").await.event, "CONNECTED");
    assert_eq!(next_ev(&mut max, "max's replay").await.data, "post1-max");
    // Routed to B and to A for lee and max, to B alone for kim and ned.
    for u in users {
        publish_to(&a, u, &format!("post2-{u}")).await;
    }
    assert_eq!(next_ev(&mut lee, "lee live").await.data, "post2-lee");
    assert_eq!(next_ev(&mut max, "max live").await.data, "post2-max");

    // B is found dead; its unread events go to their users.
    check::wait_metric(&a, "herald_events_salvaged_total", |v| v >= 5.0).await;
    eprintln!("salvaged {:?} after the kill", killed.elapsed());
    let text = check::metrics_body(&a).await;
    let got = |to: &str| {
        check::sample_sum(
            &text,
            &format!("herald_events_salvaged_total{{to=\"{to}\"}}"),
        )
        .unwrap_or(0.0)
    };
    // kim and ned: both events pending; lee: post1 again; max: post1 replayed.
    assert_eq!(
        (got("pending"), got("again"), got("replayed")),
        (4.0, 1.0, 1.0),
        "{text}"
    );

    // lee gets post1 now, live, under a new id; max nothing more.
    for u in users {
        publish_to(&a, u, &format!("end-{u}")).await;
    }
    assert_eq!(
        datas(&until_end(&mut lee, "end-lee", "lee").await),
        ["post1-lee"]
    );
    assert!(until_end(&mut max, "end-max", "max").await.is_empty());

    // kim without Last-Event-ID: the pending events, in order, then live.
    let mut kim = a.subscribe("userId=kim").await;
    assert_eq!(next_ev(&mut kim, "CONNECTED").await.event, "CONNECTED");
    let kim_got = until_end(&mut kim, "after-kim", "kim");
    publish_to(&a, "kim", "after-kim").await;
    assert_eq!(datas(&kim_got.await), ["post1-kim", "post2-kim", "end-kim"]);
    // ned with Last-Event-ID: from the log, once (the pending copies dropped).
    let mut ned = SseClient::connect(
        a.addr,
        "/api/user/sse/connect?userId=ned",
        &[("Last-Event-ID", pre_ids["ned"].as_str())],
    )
    .await;
    assert_eq!(ned.status, 200, "{}", ned.body);
    assert_eq!(next_ev(&mut ned, "CONNECTED").await.event, "CONNECTED");
    publish_to(&a, "ned", "after-ned").await;
    assert_eq!(
        datas(&until_end(&mut ned, "after-ned", "ned").await),
        ["post1-ned", "post2-ned", "end-ned"]
    );
    // Nothing more anywhere.
    for (name, c) in [
        ("lee", &mut lee),
        ("max", &mut max),
        ("kim", &mut kim),
        ("ned", &mut ned),
    ] {
        let late = c.next_non_heartbeat(Duration::from_millis(300)).await;
        assert!(late.is_none(), "{name}: {late:?}");
    }
    let _ = WAIT;
}

#[tokio::test]
async fn a_dead_pods_unread_user_events_reach_their_users_once() {
    need_redis!();
    dead_pod(&[]).await;
}

#[tokio::test]
async fn a_dead_pods_unread_user_events_reach_their_users_once_with_partitions() {
    need_redis!();
    dead_pod(&["--partitions", "8"]).await;
}
