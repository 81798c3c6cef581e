//! Redis SIGKILLed and restarted empty while publishes are in flight, ten times:
//! a publish whose answer was lost is sent again by its pod, and Redis, which
//! lost the record that would have recognised it, appends it again. The pods
//! that deliver it recognise it by its publish token and drop it: every
//! acknowledged event reaches the subscriber once (live, or as pending on its
//! next connect for a user event routed while its registration was lost), none
//! twice.
//!
//! One kind of loss is Redis's, not herald's, and is told apart: an event Redis
//! appended (to pod B's inbox or the broadcast stream) and acknowledged in the
//! last instant before the SIGKILL, before pod B's reader had it. Its publish
//! was answered with its id, so pod A is done with it; pod B never read it; the
//! data died with Redis. Nothing can deliver it, and the contract promises only
//! "never delivered twice" when Redis restarts empty. It is rare (once in CI,
//! twice in some 600 runs here; traced with `MONITOR`: the `XREAD` of pod B that
//! would have returned the entry ran 23 µs before the kill and its reply never
//! reached pod B, while pod A's answer, written before, carried the id). Such an
//! event is recognised from outside: its id (Redis's clock at the
//! append) is at most [`LAST_INSTANT_MS`] before the kill, it comes from the
//! Redis that was killed, and pod B delivered no later event of the same stream
//! (each stream is read in order, so a later one delivered means this one was
//! read, and then losing it would be herald's). Those are reported, not counted
//! as lost; every other acknowledged event must arrive: buffered ones,
//! everything published after the restart, user events routed to pending.
//! Twice on one connection is never allowed.
//!
//! Twice across two connections is reported, not failed: the contract promises
//! "never delivered twice to a connection" when Redis restarts empty, and one
//! gap is known (twice in some 640 runs here): a user event Redis applied and
//! pod B delivered live, whose answer to pod A died with the kill; pod A sends
//! it again, Redis (which lost both the record and `ru`'s registration) keeps
//! it as pending, and the next connect without `Last-Event-ID` gets it again.
//!
//! The pods keep up to 10,000 pending events per user instead of 100: from the
//! restart until pod B registers `ru` again every user event waits as pending,
//! and the contract drops the oldest beyond the cap (a slow re-registration on
//! a busy machine would look like loss here).

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

/// How long before the SIGKILL Redis may have acknowledged an event that pod B
/// had not read yet (it reads within a millisecond; the margin is for a busy
/// machine).
const LAST_INSTANT_MS: u64 = 100;

/// One acknowledged publish.
struct Acked {
    k: usize,
    data: String,
    /// The id of the `202` answer; `None` when answered "buffered".
    id: Option<u64>,
}

impl Acked {
    /// The unix ms of Redis's clock when it appended the event.
    fn redis_ms(&self) -> Option<u64> {
        self.id.map(|id| id >> 20)
    }

    fn stream(&self) -> &'static str {
        if self.k % 2 == 0 {
            "all"
        } else {
            "user ru"
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// What one run saw.
#[derive(Default)]
struct Outcome {
    acked: usize,
    dups: usize,
    /// Delivered once live and once as pending (two connections).
    across: usize,
    lost: usize,
    /// Lost with Redis's data (see the module doc).
    lost_with_redis: usize,
}

/// One run.
async fn run(n: u32) -> Outcome {
    let mut cl = Cluster::own(&format!("restart-empty-{n}"));
    let extra = ["--redis-timeout", "300ms", "--max-pending", "10000"];
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
                let answer: serde_json::Value = serde_json::from_str(&r.body)
                    .unwrap_or_else(|e| panic!("publish {k}: {e}: {}", r.body));
                let id = answer["id"].as_str().map(|id| {
                    id.parse()
                        .unwrap_or_else(|e| panic!("publish {k}: {e}: {}", r.body))
                });
                assert!(
                    id.is_some() || answer["buffered"] == true,
                    "publish {k}: neither an id nor buffered: {}",
                    r.body
                );
                acked.push(Acked {
                    k,
                    data: format!("r{n}-{k}"),
                    id,
                });
            }
            acked
        })
    };
    // Kill Redis at a point that varies from run to run, restart it empty.
    tokio::time::sleep(Duration::from_millis(300 + 37 * n as u64)).await;
    let kill_ms = unix_ms();
    cl.server().kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restart_ms = unix_ms();
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

    // Each event's deliveries: how (live or pending) and under which id.
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
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
        let how = format!("live, id {}", ev.id.as_deref().unwrap_or("none"));
        got.entry(ev.data).or_default().push(how);
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
        let how = format!("pending, id {}", ev.id.as_deref().unwrap_or("none"));
        got.entry(ev.data).or_default().push(how);
    }
    let text = check::metrics_body(&b).await;
    let repeats =
        check::sample_sum(&text, "herald_events_dropped_total{reason=\"repeat\"}").unwrap_or(0.0);
    // Twice on one connection: two live deliveries, or two pending ones.
    let on_one = |d: &Vec<String>, how: &str| d.iter().filter(|h| h.starts_with(how)).count() > 1;
    let dups = got
        .values()
        .filter(|d| on_one(d, "live") || on_one(d, "pending"))
        .count();
    let across = got.values().filter(|d| d.len() > 1).count() - dups;
    for p in acked
        .iter()
        .filter(|p| got.get(&p.data).is_some_and(|d| d.len() > 1))
    {
        eprintln!(
            "run {n}: TWICE {} ({}, answered {}): {:?}",
            p.data,
            p.stream(),
            p.id.map_or("buffered".to_string(), |id| format!("id {id}")),
            got[&p.data]
        );
    }
    // Appended by the Redis that was killed: an id from before the restart
    // (the new Redis's ids are later).
    let by_killed_redis = |p: &Acked| p.redis_ms().is_some_and(|ms| ms < restart_ms);
    let delivered = |p: &Acked| got.contains_key(&p.data);
    // Appended by Redis in the last instant before the SIGKILL and unread by
    // pod B: no later event of its stream from that Redis was delivered.
    let lost_with_redis = |p: &Acked| {
        by_killed_redis(p)
            && p.redis_ms()
                .is_some_and(|ms| ms + LAST_INSTANT_MS >= kill_ms)
            && !acked
                .iter()
                .any(|q| q.k > p.k && q.k % 2 == p.k % 2 && by_killed_redis(q) && delivered(q))
    };
    let (mut lost, mut with_redis) = (0, 0);
    for p in acked.iter().filter(|p| !delivered(p)) {
        let excused = lost_with_redis(p);
        if excused {
            with_redis += 1;
        } else {
            lost += 1;
        }
        eprintln!(
            "run {n}: {} {} ({}): {}",
            if excused {
                "lost with Redis's data:"
            } else {
                "LOST"
            },
            p.data,
            p.stream(),
            match p.redis_ms() {
                Some(ms) => format!(
                    "answered id {} (appended {:+} ms from the kill, {})",
                    p.id.unwrap_or(0),
                    ms as i64 - kill_ms as i64,
                    if by_killed_redis(p) {
                        "by the killed Redis"
                    } else {
                        "after the restart"
                    }
                ),
                None => "answered buffered".to_string(),
            }
        );
    }
    let buffered = acked.iter().filter(|p| p.id.is_none()).count();
    eprintln!(
        "run {n}: {} acknowledged ({buffered} buffered), {} delivered, {pending} of them as pending, \
         {dups} twice on one connection, {across} once live and once pending, {lost} lost, \
         {with_redis} lost with Redis's data; \
         {repeats} repeats dropped by pod B",
        acked.len(),
        got.len(),
    );
    Outcome {
        acked: acked.len(),
        dups,
        across,
        lost,
        lost_with_redis: with_redis,
    }
}

#[tokio::test]
async fn redis_restarted_empty_under_load_delivers_each_event_once() {
    need!("redis-server");
    let mut all = Outcome::default();
    for n in 0..RUNS {
        let o = run(n).await;
        all.acked += o.acked;
        all.dups += o.dups;
        all.across += o.across;
        all.lost += o.lost;
        all.lost_with_redis += o.lost_with_redis;
    }
    eprintln!(
        "{RUNS} runs: {} acknowledged, {} delivered twice on one connection, {} once live and \
         once pending (the known gap, see the module doc), {} lost, {} lost with Redis's data",
        all.acked, all.dups, all.across, all.lost, all.lost_with_redis
    );
    assert_eq!(all.dups, 0, "events delivered twice to one connection");
    assert_eq!(all.lost, 0, "acknowledged events lost");
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
