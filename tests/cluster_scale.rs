//! Cluster at scale: a pod receives from Redis only what its connections need
//! (route by interest), so what Redis sends per user or topic event does not
//! grow with the number of pods; topic interest follows subscribers with a
//! linger; the pod's inbox and the broadcast stream merge in log order; the
//! delivery probe notices a delivery path that stopped and restores it.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::check::{self, id_of, next_ev, wait_ready};
use support::redis::{Cluster, Resp, Timing};
use support::{Herald, SseClient, WAIT};

/// Slow background (heartbeats, probes, cleanup), so that Redis's counters move
/// with the events a test publishes, not with time.
const QUIET: Timing = Timing {
    heartbeat: Duration::from_secs(10),
    stale_after: Duration::from_secs(30),
    cleanup: Duration::from_secs(10),
};

fn info(r: &mut Resp, field: &str) -> u64 {
    r.info_field("stats", field)
}

async fn stats_events(h: &Herald) -> u64 {
    h.stats().await["events"]["published"]
        .as_u64()
        .expect("stats.events.published")
}

/// Redis's bytes sent and commands run per event, for `n` events of `body`
/// published on `on` and all received by `sub`.
async fn cost_per_event(
    cl: &Cluster,
    on: &Herald,
    sub: &mut SseClient,
    body: serde_json::Value,
    n: usize,
) -> (f64, f64) {
    let mut r = cl.client();
    let (bytes0, cmds0) = (
        info(&mut r, "total_net_output_bytes"),
        info(&mut r, "total_commands_processed"),
    );
    let mut last = String::new();
    for _ in 0..n {
        last = on.publish(body.clone()).await;
    }
    loop {
        let ev = next_ev(sub, "the measured events").await;
        if ev.id.as_deref() == Some(last.as_str()) {
            break;
        }
    }
    let (bytes1, cmds1) = (
        info(&mut r, "total_net_output_bytes"),
        info(&mut r, "total_commands_processed"),
    );
    // The first INFO reply and the second INFO command are ours, not herald's.
    (
        (bytes1 - bytes0) as f64 / n as f64,
        (cmds1 - cmds0).saturating_sub(1) as f64 / n as f64,
    )
}

#[tokio::test]
async fn redis_bytes_and_commands_per_user_and_topic_event_do_not_grow_with_pods() {
    need!("redis-server");
    const EVENTS: usize = 300;
    let mut figures = Vec::new();
    for pods in [1usize, 2, 4] {
        let cl = Cluster::own("flat").with_timing(QUIET);
        let hs: Vec<Herald> = (0..pods).map(|_| cl.pod(&[])).collect();
        // One user (and one topic subscriber) on the first pod; publishes come in
        // on the last pod, so with more than one pod every event crosses Redis.
        let mut sub = hs[0]
            .subscribe_connected("userId=flat-u&topics=flat-t")
            .await;
        let on = &hs[pods - 1];
        let user = cost_per_event(
            &cl,
            on,
            &mut sub,
            json!({"data": "x".repeat(100), "target": {"users": ["flat-u"]}}),
            EVENTS,
        )
        .await;
        let topic = cost_per_event(
            &cl,
            on,
            &mut sub,
            json!({"data": "x".repeat(100), "target": {"topics": ["flat-t"]}}),
            EVENTS,
        )
        .await;
        // Pods without the user or topic received none of it.
        for h in &hs[1..] {
            assert_eq!(stats_events(h).await, 0, "pod {} read events", h.pod_id);
        }
        eprintln!("{pods} pods: user event {user:?}, topic event {topic:?} (bytes, commands)");
        figures.push((pods, user, topic));
        drop(sub);
        drop(hs);
    }
    let (_, user1, topic1) = figures[0];
    for &(pods, user, topic) in &figures[1..] {
        for (what, one, now) in [("user", user1, user), ("topic", topic1, topic)] {
            assert!(
                now.0 <= one.0 * 1.1 && now.1 <= one.1 * 1.1,
                "a {what} event costs Redis {now:?} (bytes, commands) with {pods} pods vs {one:?} \
                 with 1: must stay within 10%; all figures: {figures:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_pod_reads_only_events_for_its_own_users_and_topics_and_every_broadcast() {
    need_redis!();
    let cl = Cluster::shared("interest");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let mut ua = a.subscribe_connected("userId=i-a&topics=i-ta").await;
    let mut ub = b.subscribe_connected("userId=i-b").await;
    let to_a = a
        .publish(json!({"data": "for a", "target": {"users": ["i-a"]}}))
        .await;
    let topic_a = b
        .publish(json!({"data": "topic a", "target": {"topics": ["i-ta"]}}))
        .await;
    let everyone = b.publish(json!({"data": "all", "target": "all"})).await;
    for (c, want) in [
        (
            &mut ua,
            vec![to_a.as_str(), topic_a.as_str(), everyone.as_str()],
        ),
        (&mut ub, vec![everyone.as_str()]),
    ] {
        for id in want {
            let ev = next_ev(c, "routed event").await;
            assert_eq!(ev.id.as_deref(), Some(id), "{ev:?}");
        }
    }
    assert_eq!(
        stats_events(&a).await,
        3,
        "pod a: its user, its topic, the broadcast"
    );
    assert_eq!(stats_events(&b).await, 1, "pod b: only the broadcast");
}

fn topic_pods(r: &mut Resp, prefix: &str, topic: &str) -> Vec<String> {
    let key = format!("{{{prefix}}}:tpods:{topic}");
    match r.cmd(&["SMEMBERS", &key]).expect("SMEMBERS") {
        support::redis::Reply::Array(Some(items)) => {
            let mut v: Vec<String> = items.iter().filter_map(|i| i.text()).collect();
            v.sort();
            v
        }
        other => panic!("SMEMBERS {key}: {other:?}"),
    }
}

async fn wait_topic_pods(r: &mut Resp, prefix: &str, topic: &str, want: &[&str], what: &str) {
    let until = Instant::now() + WAIT;
    loop {
        let now = topic_pods(r, prefix, topic);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "{what}: pods of topic {topic} are {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn topic_interest_joins_with_the_first_subscriber_and_leaves_after_the_linger() {
    need_redis!();
    let cl = Cluster::shared("linger");
    let a = cl.pod(&["--topic-linger", "600ms"]);
    let b = cl.pod(&[]);
    let mut r = cl.client();
    assert!(topic_pods(&mut r, &cl.prefix, "lt").is_empty());
    let first = a.subscribe_connected("userId=l1&topics=lt").await;
    // Joined by the connect itself: a publish right after it reaches it.
    assert_eq!(topic_pods(&mut r, &cl.prefix, "lt"), vec![a.pod_id.clone()]);
    let second = a.subscribe_connected("userId=l2&topics=lt").await;
    drop(first);
    drop(second);
    a.wait_connections(0).await;
    // A subscriber back within the linger: the pod never left.
    assert_eq!(
        topic_pods(&mut r, &cl.prefix, "lt"),
        vec![a.pod_id.clone()],
        "left before the linger"
    );
    let mut back = a.subscribe_connected("userId=l1&topics=lt").await;
    let id = b
        .publish(json!({"data": "t", "target": {"topics": ["lt"]}}))
        .await;
    let ev = next_ev(&mut back, "topic event after reconnect").await;
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));
    drop(back);
    a.wait_connections(0).await;
    let left_at = Instant::now();
    wait_topic_pods(&mut r, &cl.prefix, "lt", &[], "after the last subscriber").await;
    assert!(
        left_at.elapsed() >= Duration::from_millis(400),
        "left {:?} after the last subscriber: the linger is 600ms",
        left_at.elapsed()
    );
    // With nobody subscribed anywhere, a topic event reaches no pod.
    let before = stats_events(&a).await;
    b.publish(json!({"data": "t", "target": {"topics": ["lt"]}}))
        .await;
    let c = a.subscribe_connected("userId=l3&topics=lt").await;
    assert_eq!(
        stats_events(&a).await,
        before,
        "pod a read an event for no one"
    );
    drop(c);
}

/// A mix of broadcasts, user and topic events from a third pod must reach each
/// connection in publish order (pods merge their inbox and the broadcast stream
/// by log id), and a resume on another pod replays exactly what was missed.
#[tokio::test]
async fn mixed_broadcast_user_and_topic_events_arrive_in_publish_order_and_resume_exactly() {
    need_redis!();
    let cl = Cluster::shared("merge");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let c = cl.pod(&[]);
    let mut on_a = a
        .subscribe_connected("userId=m-u&connectionId=ca&topics=m-t")
        .await;
    let mut on_b = b.subscribe_connected("userId=m-u&connectionId=cb").await;
    let mut other = b.subscribe_connected("userId=m-other&topics=m-t").await;
    let targets = [
        json!("all"),
        json!({"users": ["m-u"]}),
        json!({"topics": ["m-t"]}),
        json!({"users": ["m-nobody"]}),
        json!({"users": ["m-other", "m-u"]}),
    ];
    let mut published = Vec::new();
    for i in 0..60 {
        let t = targets[fastrand::usize(..targets.len())].clone();
        let on = [&a, &b, &c][i % 3];
        let id = on
            .publish(json!({"data": format!("e{i}"), "target": t}))
            .await;
        published.push((id, t));
    }
    let wants = |user: &str, topic: bool| -> Vec<String> {
        published
            .iter()
            .filter(|(_, t)| {
                t == "all"
                    || t["users"]
                        .as_array()
                        .is_some_and(|u| u.iter().any(|x| x == user))
                    || (topic && t["topics"].is_array())
            })
            .map(|(id, _)| id.clone())
            .collect()
    };
    for (client, want, what) in [
        (&mut on_a, wants("m-u", true), "m-u on a (topic)"),
        (&mut on_b, wants("m-u", false), "m-u on b"),
        (&mut other, wants("m-other", true), "m-other on b (topic)"),
    ] {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(next_ev(client, what).await.id.expect("id"));
        }
        assert_eq!(got, want, "{what}: events or their order differ");
    }
    // Resume m-u/ca on pod c from the middle: exactly the rest, in order.
    let mine = wants("m-u", true);
    let from = &mine[mine.len() / 2];
    drop(on_a);
    a.wait_connections(0).await;
    let extra = c
        .publish(json!({"data": "after", "target": {"topics": ["m-t"]}}))
        .await;
    let path = "/api/user/sse/connect?userId=m-u&connectionId=ca&topics=m-t";
    let mut resumed = SseClient::connect(c.addr, path, &[("Last-Event-ID", from)]).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(next_ev(&mut resumed, "CONNECTED").await.event, "CONNECTED");
    let mut want: Vec<String> = mine[mine.len() / 2 + 1..].to_vec();
    want.push(extra);
    let mut got = Vec::new();
    for _ in 0..want.len() {
        got.push(next_ev(&mut resumed, "replay").await.id.expect("id"));
    }
    assert_eq!(got, want, "resume on another pod");
    let ids: Vec<u64> = got.iter().map(|s| s.parse().expect("numeric id")).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids must increase: {ids:?}"
    );
}

#[tokio::test]
async fn a_stalled_redis_fails_the_delivery_probe_and_delivery_recovers() {
    need!("redis-server");
    let cl = Cluster::own("probe-stall");
    let a = cl.pod(&["--redis-timeout", "300ms"]);
    let b = cl.pod(&["--redis-timeout", "300ms"]);
    let mut sub = a.subscribe_connected("userId=p-u").await;
    wait_ready(&a, 200, WAIT).await;
    let pid = cl.client().info_field("server", "process_id");
    assert!(pid > 0, "redis process id");
    {
        let _stopped = Stopped::new(pid);
        // A frozen Redis stops every pod alike: ready (200), and degraded.
        let r = check::wait_ready_body(&a, "degraded", Duration::from_secs(5)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        check::wait_metric(&a, "herald_delivery_probe_failures_total", |v| v >= 1.0).await;
    }
    check::wait_ready_body(&a, "ready", Duration::from_secs(10)).await;
    check::wait_metric(&a, "herald_delivery_ok", |v| v == 1.0).await;
    let id = b
        .publish(json!({"data": "back", "target": {"users": ["p-u"]}}))
        .await;
    loop {
        let ev = next_ev(&mut sub, "event after the stall").await;
        if ev.id.as_deref() == Some(id.as_str()) {
            break;
        }
    }
}

/// A process stopped with SIGSTOP until dropped (then SIGCONT), so that a
/// failing assertion does not leave Redis frozen.
struct Stopped(u64);

impl Stopped {
    fn new(pid: u64) -> Stopped {
        signal("-STOP", pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(sig: &str, pid: u64) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn an_inbox_recreated_behind_the_reader_is_found_by_the_probe() {
    need_redis!();
    let cl = Cluster::shared("probe-behind");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let mut sub = a.subscribe_connected("userId=pb-u").await;
    let inbox = format!("{{{}}}:inbox:{}", cl.prefix, a.pod_id);
    let mut r = cl.client();
    // An entry from far in the future moves the reader there; then the stream
    // is lost (a failover to a replica that never had it): new entries get
    // lower ids than the reader's position.
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        + 3_600_000;
    let ahead = format!("{ahead}-0");
    r.cmd(&["XADD", &inbox, &ahead, "o", "probe", "n", "0"])
        .expect("XADD");
    let first = b
        .publish(json!({"data": "1", "target": {"users": ["pb-u"]}}))
        .await;
    assert_eq!(
        next_ev(&mut sub, "before").await.id.as_deref(),
        Some(first.as_str())
    );
    r.cmd(&["DEL", &inbox]).expect("DEL");
    let started = Instant::now();
    let lost = b
        .publish(json!({"data": "2", "target": {"users": ["pb-u"]}}))
        .await;
    let ev = next_ev(&mut sub, "the event published into the recreated inbox").await;
    assert_eq!(ev.id.as_deref(), Some(lost.as_str()));
    eprintln!("delivery restored after {:?}", started.elapsed());
    assert!(id_of(&ev) > 0);
}

/// A connection whose registration Redis lost (a partition's master restarted
/// without its data, say) is registered again by its pod's next heartbeat and
/// told `RESYNC`, since events routed meanwhile did not reach it; the pod's
/// other streams are not.
#[tokio::test]
async fn a_stream_whose_registration_was_lost_gets_resync_and_is_routed_again() {
    need_redis!();
    let cl = Cluster::shared("lost-one");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let mut lost = a.subscribe_connected("userId=lo-1&connectionId=c1").await;
    let mut kept = a.subscribe_connected("userId=lo-2&connectionId=c2").await;
    let mut r = cl.client();
    let t = format!("{{{}}}", cl.prefix);
    for cmd in [
        vec!["HDEL".to_string(), format!("{t}:conns"), "lo-1/c1".into()],
        vec!["ZREM".into(), format!("{t}:hb"), "lo-1/c1".into()],
        vec!["HDEL".into(), format!("{t}:ucount"), "lo-1".into()],
        vec!["DEL".into(), format!("{t}:uconns:lo-1")],
    ] {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        r.cmd(&args).expect("redis command");
    }
    // While unregistered its user's events go to pending, not to the stream.
    let missed = b
        .publish(json!({"data": "missed", "target": {"users": ["lo-1"]}}))
        .await;
    let ev = next_ev(&mut lost, "RESYNC after the registration came back").await;
    assert_eq!(
        (ev.event.as_str(), ev.id.as_deref()),
        ("RESYNC", None),
        "the stream whose registration was lost: {ev:?} (missed {missed})"
    );
    let live = b
        .publish(json!({"data": "live", "target": {"users": ["lo-1", "lo-2"]}}))
        .await;
    for (c, what) in [(&mut lost, "re-registered"), (&mut kept, "kept")] {
        let ev = next_ev(c, what).await;
        assert_eq!(
            (ev.id.as_deref(), ev.data.as_str()),
            (Some(live.as_str()), "live"),
            "{what} stream: the next event is the live one (no RESYNC on the kept one)"
        );
    }
}

/// Every Lua script herald sends compiles in a real Redis (a syntax error would
/// otherwise show only as the failing calls of one path).
#[test]
fn every_script_compiles_in_redis() {
    need_redis!();
    let mut r = Resp::connect(6379).expect("redis on 6379");
    for (name, body) in herald::cluster::scripts::bodies() {
        match r.cmd(&["SCRIPT", "LOAD", &body]).expect("SCRIPT LOAD") {
            support::redis::Reply::Bulk(Some(sha)) => assert_eq!(sha.len(), 40, "{name}"),
            other => panic!("script {name} does not load: {other:?}"),
        }
    }
}

/// Redis's time in scripts (`cmdstat_evalsha` and `cmdstat_eval`), µs.
fn script_usec(r: &mut Resp) -> u64 {
    let reply = r.cmd(&["INFO", "commandstats"]).expect("INFO");
    let text = reply.text().expect("INFO text");
    text.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split(',').find_map(|kv| kv.strip_prefix("usec=")))
        .map(|v| v.parse::<u64>().expect("usec"))
        .sum()
}

/// Found by the scale rehearsal (perf/SCALE.md, "Rehearsal at 100,000
/// streams"): after a drain, each registration batch of resumes (up to 512
/// streams) looked at every log row it had read once per resume; against a
/// log of a few thousand rows one call held the Redis master for more than a
/// second, past `cluster-node-timeout`, the cluster marked it failing, other
/// pods' registrations timed out and 60,000 streams got RESYNC. The register
/// script now indexes the rows once: a burst of resumes costs the rows read
/// plus what each replays. Checked by Redis's own account of its script time,
/// with a wide margin between the two behaviours (512 resumes × 5,000 rows is
/// seconds of Lua; indexing them is milliseconds).
#[tokio::test]
async fn a_burst_of_resumes_costs_the_rows_read_not_resumes_times_rows() {
    need_redis!();
    const ROWS: usize = 5_000;
    const RESUMES: usize = 512;
    let cl = Cluster::own("resume-burst").with_timing(QUIET);
    let a = cl.pod(&[]);
    let from = a
        .publish(json!({"data": "mark", "target": {"topics": ["rb-t"]}}))
        .await;
    // Rows no resuming stream wants (another topic, another user), in batches.
    for k in 0..ROWS / 1_000 {
        let batch = (0..1_000)
            .map(|i| {
                let target = if i % 2 == 0 {
                    json!({"topics": ["rb-noise"]})
                } else {
                    json!({"users": ["rb-nobody"]})
                };
                json!({"data": format!("n{k}-{i}"), "target": target})
            })
            .collect();
        a.publish_batch(batch).await;
    }
    let wanted = a
        .publish(json!({"data": "wanted", "target": {"topics": ["rb-t"]}}))
        .await;
    let mut r = cl.client();
    let usec0 = script_usec(&mut r);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(RESUMES));
    let tasks: Vec<_> = (0..RESUMES)
        .map(|i| {
            let (addr, from, sem) = (a.addr, from.clone(), sem.clone());
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore");
                let path = format!("/api/user/sse/connect?userId=rb-u{i}&topics=rb-t");
                let mut c = SseClient::connect(addr, &path, &[("Last-Event-ID", &from)]).await;
                assert_eq!(c.status, 200, "{path}: {}", c.body);
                let ev = next_ev(&mut c, "CONNECTED").await;
                assert_eq!(ev.event, "CONNECTED");
                next_ev(&mut c, "the replayed event").await.id
            })
        })
        .collect();
    for t in tasks {
        let id = t.await.expect("a resuming stream");
        assert_eq!(
            id.as_deref(),
            Some(wanted.as_str()),
            "a resume replays exactly the one row it wants"
        );
    }
    let spent = script_usec(&mut r) - usec0;
    eprintln!("{RESUMES} resumes over {ROWS} rows: {spent} µs of Redis script time");
    assert!(
        spent < 1_000_000,
        "{RESUMES} resumes over {ROWS} log rows took {spent} µs of Redis script time: \
         the register script must not look at every row once per resume"
    );
}
