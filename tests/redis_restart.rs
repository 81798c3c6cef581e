//! Redis SIGKILLed and restarted empty while publishes are in flight, ten times:
//! a publish whose answer was lost is sent again by its pod, and Redis, which
//! lost the record that would have recognised it, appends it again. The pods
//! that deliver it recognise it by its publish token and drop it: every
//! acknowledged event reaches the subscriber once (live, or as pending on its
//! next connect for a user event routed while its registration was lost), none
//! twice.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::check::{self, wait_ready};
use support::redis::{wait_cluster_all, Cluster};
use support::{SseClient, WAIT};

const RUNS: u32 = 10;

/// One run; returns (acknowledged, delivered twice, lost).
async fn run(n: u32) -> (usize, usize, usize) {
    let mut cl = Cluster::own(&format!("restart-empty-{n}"));
    let extra = ["--redis-timeout", "300ms"];
    let a = Arc::new(cl.pod(&extra));
    let b = cl.pod(&extra);
    let mut sub = b.subscribe_connected("userId=ru").await;
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            for k in 0..2_000usize {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                tick.tick().await;
                let target = if k % 2 == 0 {
                    json!("all")
                } else {
                    json!({"users": ["ru"]})
                };
                let body = json!({"data": format!("r{n}-{k}"), "target": target});
                let r = a.post("/api/broadcast", &body.to_string()).await;
                assert_eq!(r.status, 202, "publish {k}: {}", r.body);
                acked.push(format!("r{n}-{k}"));
            }
            acked
        })
    };
    // Kill Redis at a point that varies from run to run, restart it empty.
    tokio::time::sleep(Duration::from_millis(300 + 37 * n as u64)).await;
    cl.server().kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cl.server().restart();
    for h in [&*a, &b] {
        wait_ready(h, 200, WAIT).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let acked = publisher.await.expect("publisher");
    check::wait_metric(&a, "herald_publish_buffered", |v| v == 0.0).await;
    let end = format!("end-{n}");
    a.publish(json!({"data": end, "target": "all"})).await;

    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let ev = sub
            .next_non_heartbeat(WAIT)
            .await
            .unwrap_or_else(|| panic!("run {n}: no end marker"));
        if ev.event == "RESYNC" {
            continue;
        }
        if ev.data == end {
            break;
        }
        *got.entry(ev.data).or_default() += 1;
    }
    drop(sub);
    // User events routed while Redis had lost the registration wait as
    // pending: a new connect (no Last-Event-ID) gets them before anything live.
    let mut again = SseClient::connect(b.addr, "/api/user/sse/connect?userId=ru", &[]).await;
    assert_eq!(again.status, 200, "{}", again.body);
    let marker = format!("pending-end-{n}");
    let mut pending = 0;
    let mut connected = false;
    loop {
        let ev = again
            .next_non_heartbeat(WAIT)
            .await
            .unwrap_or_else(|| panic!("run {n}: no marker on the new stream"));
        if ev.event == "CONNECTED" && !connected {
            connected = true;
            a.publish(json!({"data": marker, "target": {"users": ["ru"]}}))
                .await;
            continue;
        }
        if ev.data == marker {
            break;
        }
        pending += 1;
        *got.entry(ev.data).or_default() += 1;
    }
    let text = check::metrics_body(&b).await;
    let repeats =
        check::sample_sum(&text, "herald_events_dropped_total{reason=\"repeat\"}").unwrap_or(0.0);
    let dups = got.values().filter(|&&c| c > 1).count();
    let lost = acked.iter().filter(|d| !got.contains_key(*d)).count();
    eprintln!(
        "run {n}: {} acknowledged, {} delivered, {pending} of them as pending, {dups} twice, {lost} lost; \
         {repeats} repeats dropped by pod B",
        acked.len(),
        got.len(),
    );
    (acked.len(), dups, lost)
}

#[tokio::test]
async fn redis_restarted_empty_under_load_delivers_each_event_once() {
    need!("redis-server");
    let (mut acked, mut dups, mut lost) = (0, 0, 0);
    for n in 0..RUNS {
        let (a, d, l) = run(n).await;
        acked += a;
        dups += d;
        lost += l;
    }
    eprintln!("{RUNS} runs: {acked} acknowledged, {dups} delivered twice, {lost} lost");
    assert_eq!(dups, 0, "events delivered twice");
    assert_eq!(lost, 0, "acknowledged events lost");
}

/// What a lost answer plus a Redis that lost its record make, done by hand: an
/// entry already delivered appended again (a new stream id, the same publish
/// token) to the broadcast stream and to a pod's inbox. The pod drops both.
#[tokio::test]
async fn an_event_appended_again_is_dropped_by_its_token() {
    need_redis!();
    let cl = Cluster::shared("token-repeat");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let mut sub = b.subscribe_connected("userId=tr&topics=tt").await;
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;
    a.publish(json!({"data": "bcast", "target": "all"})).await;
    a.publish(json!({"data": "topic", "target": {"topics": ["tt"]}}))
        .await;
    for want in ["bcast", "topic"] {
        assert_eq!(check::next_ev(&mut sub, want).await.data, want);
    }
    let mut r = cl.client();
    for (key, data) in [
        (format!("{{{}}}:all", cl.prefix), "bcast"),
        (format!("{{{}}}:inbox:{}", cl.prefix, b.pod_id), "topic"),
    ] {
        let rows = r.cmd(&["XRANGE", &key, "-", "+"]).unwrap();
        let support::redis::Reply::Array(Some(rows)) = rows else {
            panic!("{key}: {rows:?}")
        };
        let fields = rows
            .iter()
            .rev()
            .find_map(|row| {
                let s = row.strings();
                s.contains(&data.to_string()).then(|| s[1..].to_vec())
            })
            .unwrap_or_else(|| panic!("{data} in {key}"));
        assert!(fields.contains(&"q".to_string()), "a token: {fields:?}");
        let mut args = vec!["XADD".to_string(), key.clone(), "*".into()];
        args.extend(fields);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        r.cmd(&args).unwrap();
    }
    check::wait_metric(&b, "herald_events_dropped_total{reason=\"repeat\"}", |v| {
        v == 2.0
    })
    .await;
    a.publish(json!({"data": "end", "target": "all"})).await;
    assert_eq!(check::next_ev(&mut sub, "only the end").await.data, "end");
}
