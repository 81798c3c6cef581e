//! herald on Redis behind Sentinel (`redis-sentinel://`): two pods, user
//! events published on one at a steady rate to subscribers on the other, through
//! an operator's `SENTINEL FAILOVER` and then a SIGKILL of the master. The pods
//! find each new master through the sentinels and go on delivering; readiness
//! stays 200 (degraded while there is no master, ready after); no event is
//! delivered twice, and every acknowledged event is delivered unless Redis
//! itself lost it (acknowledged by the old master, not yet copied to its
//! replica: counted and reported, and checked against the new master's log).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::check::{self, wait_ready};
use support::redis::{start_pod, unique_prefix, wait_cluster_all, Resp, Timing};
use support::sentinel::Sentinels;
use support::{Herald, WAIT};

const USERS: usize = 20;
/// Publishes per second during the test.
const RATE: u64 = 100;

/// Poll readiness of `h` until its body says `state`, remembering every
/// status code seen on the way.
async fn watch_until(h: &Herald, state: &str, within: Duration, codes: &mut BTreeSet<u16>) {
    let until = Instant::now() + within;
    loop {
        let r = h.get("/health/ready").await;
        codes.insert(r.status);
        if r.json()["status"] == state {
            return;
        }
        assert!(
            Instant::now() < until,
            "pod {}: readiness never {state} within {within:?}: {} {}",
            h.pod_id,
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn pods_follow_sentinel_failovers_and_deliver_once() {
    need!("redis-server");
    let mut s = Sentinels::start();
    let url = s.url();
    let prefix = unique_prefix("sentinel");
    let extra = ["--redis-timeout", "500ms"];
    let a = Arc::new(start_pod(&url, &prefix, Timing::FAST, 0, &extra));
    let b = start_pod(&url, &prefix, Timing::FAST, 1, &extra);
    for h in [&*a, &b] {
        wait_ready(h, 200, WAIT).await;
    }
    let users: Vec<String> = (0..USERS).map(|i| format!("sv{i}")).collect();
    let mut subs = Vec::new();
    for u in &users {
        subs.push(b.subscribe_connected(&format!("userId={u}")).await);
    }
    wait_cluster_all(&[&a, &b], 2, USERS as u64, USERS as u64).await;

    // The publisher: event k to user k % USERS, at RATE, until told to stop;
    // what pod A answered for each.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut refused = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            let mut k = 0usize;
            while !stop.load(Ordering::Acquire) && k < 20_000 {
                tick.tick().await;
                let body = json!({"data": format!("ev-{k}-end"), "target": {"users": [format!("sv{}", k % USERS)]}});
                let r = a.post("/api/broadcast", &body.to_string()).await;
                if r.status == 202 {
                    acked.push(k);
                } else {
                    refused += 1;
                }
                k += 1;
            }
            (acked, refused)
        })
    };

    // 1. An operator's failover.
    let mut codes = BTreeSet::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m0 = s.master_port().expect("a master");
    let t0 = Instant::now();
    s.failover();
    let m1 = s.wait_new_master(m0, Duration::from_secs(30));
    eprintln!("SENTINEL FAILOVER: {m0} -> {m1} after {:?}", t0.elapsed());
    for h in [&*a, &b] {
        watch_until(h, "ready", Duration::from_secs(20), &mut codes).await;
    }
    s.wait_in_sync(m1, Duration::from_secs(20));

    // 2. The master SIGKILLed. The failover gap: from the kill to the first
    // event published after it that reaches a subscriber.
    let mut gap_sub = b.subscribe_connected("userId=svgap").await;
    wait_cluster_all(&[&a, &b], 2, USERS as u64 + 1, USERS as u64 + 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t1 = Instant::now();
    s.node(m1).kill();
    let gap_stop = Arc::new(AtomicBool::new(false));
    let gap_publisher = {
        let (a, stop) = (a.clone(), gap_stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Acquire) && i < 3_000 {
                let body = json!({"data": format!("gap-{i}"), "target": {"users": ["svgap"]}});
                let _ = a.post("/api/broadcast", &body.to_string()).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let m2 = s.wait_new_master(m1, Duration::from_secs(30));
    eprintln!("master {m1} killed: {m2} promoted after {:?}", t1.elapsed());
    // A RESYNC may come first (the replica lacked this stream's registration:
    // replication is asynchronous); the gap is to the first event.
    let first = loop {
        let ev = gap_sub
            .next_non_heartbeat(Duration::from_secs(30))
            .await
            .expect("an event through the new master");
        if ev.event != "RESYNC" {
            break ev;
        }
    };
    let gap = t1.elapsed();
    gap_stop.store(true, Ordering::Release);
    let _ = gap_publisher.await;
    assert!(first.data.starts_with("gap-"), "{first:?}");
    eprintln!("failover gap (master killed -> first event delivered through the new one): {gap:?}");
    let mut degraded_seen = false;
    for h in [&*a, &b] {
        let r = h.get("/health/ready").await;
        codes.insert(r.status);
        degraded_seen |= r.json()["status"] == "degraded";
        watch_until(h, "ready", Duration::from_secs(30), &mut codes).await;
    }
    let ready_after = t1.elapsed();
    eprintln!("both pods ready {ready_after:?} after the kill (degraded seen: {degraded_seen})");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let (acked, refused) = publisher.await.expect("the publisher");
    assert_eq!(refused, 0, "publishes refused during the failovers");
    assert!(
        !codes.contains(&503),
        "readiness must stay 200 through a failover: saw {codes:?}"
    );

    // An end marker per user; read every stream up to it.
    for u in &users {
        a.publish(json!({"data": format!("end-{u}"), "target": {"users": [u]}}))
            .await;
    }
    let mut got: BTreeMap<usize, usize> = BTreeMap::new();
    let mut resyncs = 0;
    for (u, sub) in users.iter().zip(subs.iter_mut()) {
        loop {
            let ev = sub
                .next_non_heartbeat(WAIT * 2)
                .await
                .unwrap_or_else(|| panic!("{u}: stream ended or stalled before its end marker"));
            if ev.event == "RESYNC" {
                resyncs += 1;
                continue;
            }
            if ev.data == format!("end-{u}") {
                break;
            }
            let k: usize = ev
                .data
                .strip_prefix("ev-")
                .and_then(|r| r.strip_suffix("-end"))
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("{u}: unexpected event {ev:?}"));
            assert_eq!(
                format!("sv{}", k % USERS),
                *u,
                "{u} got another user's event {k}"
            );
            *got.entry(k).or_default() += 1;
        }
    }
    let dups: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "events delivered twice: {dups:?}");
    let lost: Vec<usize> = acked
        .iter()
        .copied()
        .filter(|k| !got.contains_key(k))
        .collect();
    // What Redis lost: acknowledged by a master that died before its replica had
    // it. Such an event is not in the new master's log.
    let mut r = Resp::connect(m2).expect("the new master");
    let log = r
        .cmd(&["XRANGE", &format!("{{{prefix}}}:log"), "-", "+"])
        .expect("XRANGE");
    let in_log: BTreeSet<String> = log.strings().into_iter().collect();
    let lost_by_herald: Vec<usize> = lost
        .iter()
        .copied()
        .filter(|k| in_log.contains(&format!("ev-{k}-end")))
        .collect();
    eprintln!(
        "{} publishes acknowledged, {} delivered once, {} lost by Redis (not in the new \
         master's log), {} RESYNC",
        acked.len(),
        got.len(),
        lost.len(),
        resyncs
    );
    assert!(
        lost_by_herald.is_empty(),
        "events Redis kept but herald did not deliver: {lost_by_herald:?}"
    );
    assert!(
        acked.len() > RATE as usize * 3,
        "too few publishes: {}",
        acked.len()
    );
    let _ = check::metrics_body(&a).await;
}

#[tokio::test]
async fn a_sentinel_that_does_not_know_the_service_is_named() {
    need!("redis-server");
    let s = Sentinels::start();
    let url = format!(
        "redis-sentinel://127.0.0.1:{}?sentinelServiceName=nosuch",
        s.ports[0]
    );
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sentinel-unknown-{}.log", std::process::id()));
    let h = Herald::start_with_stderr_file(
        &[
            "--log",
            "info",
            "--redis",
            &url,
            "--redis-prefix",
            &unique_prefix("sentinel-unknown"),
            "--redis-timeout",
            "500ms",
            "--heartbeat-interval",
            "300ms",
        ],
        &log,
    );
    let r = check::wait_ready_body(&h, "degraded", WAIT).await;
    let until = Instant::now() + WAIT;
    loop {
        let r = h.get("/health/ready").await;
        if r.json()["redis"] == "sentinel" {
            assert_eq!(r.status, 200);
            assert!(
                r.json()["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("service name")),
                "{}",
                r.body
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "never said sentinel: {} / {}",
            r.body,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(r);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        text.matches("redis sentinel: the sentinels do not know")
            .count(),
        1,
        "{text}"
    );
}
