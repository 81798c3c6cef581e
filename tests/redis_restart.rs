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
use std::time::{Duration, Instant};

use serde_json::json;
use support::check::{self, wait_ready};
use support::redis::{wait_cluster_all, Cluster};
use support::{SseClient, WAIT};

const RUNS: u32 = 40;

/// One publish as the test saw it.
struct Pub {
    k: usize,
    data: String,
    sent: Instant,
    answered: Instant,
    /// The log id in the answer; `None`: answered "buffered".
    id: Option<u64>,
}

fn ms_since(t: Instant, base: Instant) -> f64 {
    if t >= base {
        (t - base).as_secs_f64() * 1e3
    } else {
        -((base - t).as_secs_f64() * 1e3)
    }
}

/// One run; returns (acknowledged, delivered twice, lost).
async fn run(n: u32) -> (usize, usize, usize) {
    let mut cl = Cluster::own(&format!("restart-empty-{n}"));
    let extra = ["--redis-timeout", "300ms", "--max-pending", "100000"];
    let a = Arc::new(cl.pod(&extra));
    let b = {
        let (_id, flags) = support::redis::pod_flags(&cl.redis_url(), &cl.prefix, cl.timing, 1);
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend_from_slice(&extra);
        args.extend_from_slice(&["--log", "info"]);
        support::Herald::start_with_stderr_file(
            &args,
            std::path::Path::new(&format!("/tmp/rrlog/b-{n}.log")),
        )
    };
    let mut sub = b.subscribe_connected("userId=ru").await;
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;

    let mut mon = std::process::Command::new("redis-cli")
        .args(["-p", &cl.port.to_string(), "monitor"])
        .stdout(std::fs::File::create(format!("/tmp/rrlog/mon-{n}.log")).unwrap())
        .spawn()
        .unwrap();
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
                let sent = Instant::now();
                let r = a.post("/api/broadcast", &body.to_string()).await;
                let answered = Instant::now();
                assert_eq!(r.status, 202, "publish {k}: {}", r.body);
                let v: serde_json::Value = serde_json::from_str(&r.body).expect("json answer");
                let id = v["id"].as_str().and_then(|s| s.parse().ok());
                acked.push(Pub {
                    k,
                    data: format!("r{n}-{k}"),
                    sent,
                    answered,
                    id,
                });
            }
            acked
        })
    };
    // Kill Redis at a point that varies from run to run, restart it empty.
    tokio::time::sleep(Duration::from_millis(300 + 37 * n as u64)).await;
    let kill_at = Instant::now();
    eprintln!(
        "run {n}: kill at unix {:?}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    );
    let kill_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    cl.server().kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restart_at = Instant::now();
    cl.server().restart();
    let _ = mon.kill();
    let _ = mon.wait();
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
    let mut how: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let ev = sub
            .next_non_heartbeat(WAIT)
            .await
            .unwrap_or_else(|| panic!("run {n}: no end marker"));
        if ev.event == "RESYNC" {
            eprintln!("run {n}: RESYNC live after {} events", got.len());
            how.entry("RESYNC".into()).or_default().push("live".into());
            continue;
        }
        if ev.data == end {
            break;
        }
        how.entry(ev.data.clone())
            .or_default()
            .push(format!("live id {:?}", ev.id));
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
        how.entry(ev.data.clone())
            .or_default()
            .push(format!("pending {} id {:?}", ev.event, ev.id));
        *got.entry(ev.data).or_default() += 1;
    }
    let text = check::metrics_body(&b).await;
    let repeats =
        check::sample_sum(&text, "herald_events_dropped_total{reason=\"repeat\"}").unwrap_or(0.0);
    let dups = got.values().filter(|&&c| c > 1).count();
    let lost = acked.iter().filter(|p| !got.contains_key(&p.data)).count();
    for p in acked.iter().filter(|p| !got.contains_key(&p.data)) {
        eprintln!(
            "run {n}: LOST {} ({}) sent {:+.1} ms answered {:+.1} ms from the kill \
             (kill took {:.1} ms, restart at {:+.1} ms); answer {}",
            p.data,
            if p.k % 2 == 0 { "all" } else { "user ru" },
            ms_since(p.sent, kill_at),
            ms_since(p.answered, kill_at),
            ms_since(killed_at, kill_at),
            ms_since(restart_at, kill_at),
            match p.id {
                Some(id) => format!(
                    "id {id} (Redis time {:+} ms from the kill)",
                    (id >> 20) as i64 - kill_unix_ms as i64
                ),
                None => "buffered".to_string(),
            },
        );
    }
    for p in acked
        .iter()
        .filter(|p| got.get(&p.data).is_some_and(|&c| c > 1))
    {
        eprintln!(
            "run {n}: TWICE {} ({}) sent {:+.1} ms answered {:+.1} ms from the kill, answer {:?}: {:?}",
            p.data,
            if p.k % 2 == 0 { "all" } else { "user ru" },
            ms_since(p.sent, kill_at),
            ms_since(p.answered, kill_at),
            p.id,
            how.get(&p.data)
        );
    }
    let last_ids = acked
        .iter()
        .filter(|p| p.id.is_some() && p.sent < kill_at)
        .last()
        .map(|p| (p.data.clone(), ms_since(p.answered, kill_at)));
    let first_buf = acked
        .iter()
        .find(|p| p.id.is_none())
        .map(|p| (p.data.clone(), ms_since(p.sent, kill_at)));
    eprintln!("run {n}: last ids-answer before kill {last_ids:?}, first buffered {first_buf:?}");
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
