//! A stalled Redis (SIGSTOP, then SIGCONT: commands hang instead of failing,
//! and run late). Two pods on one Redis of the test's own, subscribers on pod B,
//! publishes on pod A at a steady pace while Redis is frozen for two seconds:
//! every publish is answered `202` (buffered while Redis does not answer), and
//! every subscriber receives every event exactly once: the publish calls that
//! timed out but that Redis ran when it continued are recognised when pod A
//! sends them again, not appended twice.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::check::next_ev;
use support::redis::{Cluster, Timing};
use support::SseClient;

const SUBSCRIBERS: usize = 100;
const PACE: Duration = Duration::from_millis(10);
const FROZEN: Duration = Duration::from_secs(2);

/// Every event's data up to `end`, with how often each came.
async fn counts_until(c: &mut SseClient, end: &str) -> HashMap<String, u32> {
    let mut seen = HashMap::new();
    loop {
        let ev = next_ev(c, end).await;
        assert_ne!(ev.event, "RESYNC", "no RESYNC: nothing was lost");
        if ev.data == end {
            return seen;
        }
        *seen.entry(ev.data).or_insert(0) += 1;
    }
}

async fn stalled_redis(partitions: &str) {
    // Heartbeats every 500 ms, but connections stale only after 10 s: the
    // freeze must not look like a dead pod.
    let mut cl = Cluster::own(&format!("stall-p{partitions}")).with_timing(Timing {
        heartbeat: Duration::from_millis(500),
        stale_after: Duration::from_secs(10),
        cleanup: Duration::from_millis(500),
    });
    let flags = ["--redis-timeout", "300ms", "--partitions", partitions];
    let a = cl.pod(&flags);
    let b = cl.pod(&flags);
    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        subs.push(b.subscribe_connected(&format!("userId=s{i}")).await);
    }
    // Half the events to everyone, half to a user each (pod B holds them all).
    let event = |n: usize| {
        if n % 2 == 0 {
            json!({"data": format!("e{n}"), "target": "all"})
        } else {
            json!({"data": format!("e{n}"), "target": {"users": [format!("s{}", n % SUBSCRIBERS)]}})
        }
    };
    let mut sent = 0;
    let mut buffered = 0;
    let publish = |n: usize| {
        let a = &a;
        async move {
            let r = a.post("/api/broadcast", &event(n).to_string()).await;
            assert_eq!(
                r.status, 202,
                "publish {n} answered {}: {}",
                r.status, r.body
            );
            r.json()["buffered"] == json!(true)
        }
    };
    // Before, during and after the freeze, at a steady pace.
    for _ in 0..50 {
        buffered += publish(sent).await as usize;
        sent += 1;
        tokio::time::sleep(PACE).await;
    }
    cl.server().freeze();
    let thaw = Instant::now() + FROZEN;
    while Instant::now() < thaw {
        buffered += publish(sent).await as usize;
        sent += 1;
        tokio::time::sleep(PACE).await;
    }
    cl.server().resume();
    for _ in 0..50 {
        buffered += publish(sent).await as usize;
        sent += 1;
        tokio::time::sleep(PACE).await;
    }
    assert!(
        buffered > 0,
        "some publishes were buffered during the freeze"
    );
    a.publish(json!({"data": "end", "target": "all"})).await;
    let (mut lost, mut duplicates) = (0, 0);
    for (i, s) in subs.iter_mut().enumerate() {
        let seen = counts_until(s, "end").await;
        for n in 0..sent {
            let mine = n % 2 == 0 || n % SUBSCRIBERS == i;
            let got = seen.get(&format!("e{n}")).copied().unwrap_or(0);
            match (mine, got) {
                (true, 0) => lost += 1,
                (true, k) => duplicates += k - 1,
                (false, k) => duplicates += k,
            }
        }
    }
    assert_eq!(
        (lost, duplicates),
        (0, 0),
        "{sent} events ({buffered} buffered) to {SUBSCRIBERS} subscribers: lost, duplicates"
    );
    let m = a.get("/metrics").await.body;
    let recognised: f64 = m
        .lines()
        .filter(|l| l.starts_with("herald_publish_retries_recognised_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!("{sent} events, {buffered} buffered, {recognised} re-sends recognised by Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_loses_nothing_and_delivers_nothing_twice() {
    need!("redis-server");
    stalled_redis("1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_loses_nothing_and_delivers_nothing_twice_with_partitions() {
    need!("redis-server");
    stalled_redis("4").await;
}
