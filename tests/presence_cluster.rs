//! Presence in a cluster: `GET /api/user/sse/connections`, `POST /api/presence`
//! and the `online` / `offline` stream `GET /api/presence/stream`, over four
//! real pods (processes) that share a real Redis.
//!
//! Every body runs on each backend of [`presence_cluster_tests!`]:
//! `<body>::standalone`, four pods on the shared standalone Redis
//! (127.0.0.1:6379, or one of the test's own) under a key prefix of the test's
//! own, and `<body>::redis_cluster_p8`, four pods with `--partitions 8` on the
//! 3-master Redis Cluster this test binary starts once (presence events then
//! carry two-part ids `b.p`, compared part by part).
//!
//! The storm runs 10,000 streams on both backends (about 17 s on the standalone
//! Redis, 25 s on the Redis Cluster, on two cores); storms run one at a time.
//!
//! A presence stream is read by a task of its own ([`Feed`]), so that a burst of
//! transitions (the storm) is taken off the socket as it comes and the stream is
//! never closed as a slow consumer.
//!
//! How "nothing else came" is proved without sleeping (as in `tests/presence.rs`):
//! a *marker* user connected after the thing under test must have its `online`
//! next; a *timer* user closed after it goes offline one linger later, and the
//! cluster's sweep releases users in the order their last connection ended, so
//! a wrongful `offline` of an earlier user would have come first.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::backend::{Backend, TestCluster};
use support::check::{next_ev, wait_ready, Id};
use support::presence::{self, connections, now_ms, SLACK_MS, STREAM};
use support::redis::{pod_flags, wait_cluster, Timing};
use support::{Herald, SseClient, SseEvent, WAIT};
use tokio::sync::mpsc;

/// Pods of every test.
const PODS: usize = 4;

/// Timings of the functional tests: short, but with `--stale-after` well above
/// what a busy two-core machine can delay a heartbeat by, so that no live
/// connection is ever taken for stale (that would be a real offline/online).
const TIMING: Timing = Timing {
    heartbeat: Duration::from_secs(1),
    stale_after: Duration::from_secs(5),
    cleanup: Duration::from_secs(1),
};

macro_rules! presence_cluster_tests {
    (variants $variants:tt bodies { $($body:ident),* $(,)? }) => {
        $(presence_cluster_tests!(@body $body $variants);)*
    };
    (@body $body:ident { $($variant:ident: $backend:expr),* $(,)? }) => {
        mod $body {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $variant() {
                    let backend = $backend;
                    if !backend.available(concat!(stringify!($body), "::", stringify!($variant))) {
                        return;
                    }
                    let started = Instant::now();
                    super::$body(backend).await;
                    eprintln!(
                        "{}::{} took {:?}",
                        stringify!($body),
                        stringify!($variant),
                        started.elapsed()
                    );
                }
            )*
        }
    };
}

presence_cluster_tests! {
    variants {
        standalone: Backend::REDIS,
        redis_cluster_p8: Backend::REDIS_CLUSTER.with_flags(&["--partitions", "8"]),
    }
    bodies {
        a_user_on_two_pods_is_one_online_and_one_offline,
        a_killed_pods_users_go_offline_once_after_the_stale_threshold,
        a_reload_on_another_pod_within_the_linger_is_no_transition,
        a_storm_of_streams_gives_exactly_the_transitions_that_happened,
        counts_and_connections_are_the_same_on_every_pod,
        a_presence_stream_resumes_on_another_pod_after_its_pod_stopped,
        a_stream_that_ends_during_a_heartbeat_is_not_put_back,
        a_storm_of_transitions_leaves_the_other_events_history_whole,
    }
}

/// Start `PODS` pods of `tc` with `extra`, and wait until each is ready and
/// counts all of them.
async fn start_pods(tc: &TestCluster, extra: &[&str]) -> Vec<Herald> {
    let pods: Vec<Herald> = (0..PODS).map(|_| tc.pod(extra)).collect();
    for h in &pods {
        wait_ready(h, 200, WAIT).await;
    }
    for h in &pods {
        wait_cluster(h, (Some(PODS as u64), None, None), WAIT).await;
    }
    pods
}

/// One presence event as a stream delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pres {
    id: String,
    event: String,
    user: String,
    at: u64,
}

impl Pres {
    /// What two streams of the same transition agree on (with partitions, the
    /// id's partition part is the stream's own).
    fn what(&self) -> (&str, &str, u64) {
        (&self.event, &self.user, self.at)
    }
}

/// Parse (and check the shape of) a presence event.
fn pres(ev: &SseEvent) -> Pres {
    let (event, user, at) = presence::parse(ev);
    Pres {
        id: ev
            .id
            .clone()
            .unwrap_or_else(|| panic!("a presence event without an id: {ev:?}")),
        event,
        user,
        at,
    }
}

/// A presence stream, read by a task of its own: its events (heartbeats left
/// out) come through a channel; the channel closes when the stream ends.
struct Feed {
    name: String,
    rx: mpsc::UnboundedReceiver<SseEvent>,
    task: tokio::task::JoinHandle<()>,
    two_part: bool,
    last: Option<Id>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        // Drops the stream, which closes its socket.
        self.task.abort();
    }
}

impl Feed {
    /// Open a presence stream on `h` (with extra headers, e.g. `Last-Event-ID`);
    /// assert 200, `retry:` and an unnumbered CONNECTED first.
    async fn open(h: &Herald, headers: &[(&str, &str)], two_part: bool) -> Feed {
        let name = format!("the presence stream on pod {}", h.pod_id);
        let mut c = SseClient::connect(h.addr, STREAM, headers).await;
        assert_eq!(c.status, 200, "{name}: answered {}: {}", c.status, c.body);
        let ct = c.header("content-type").unwrap_or("").to_string();
        assert!(
            ct.starts_with("text/event-stream"),
            "{name}: content-type {ct:?}"
        );
        let ev = c
            .next_event(WAIT)
            .await
            .unwrap_or_else(|| panic!("{name}: no CONNECTED"));
        assert_eq!(
            (ev.event.as_str(), ev.id.as_deref()),
            ("CONNECTED", None),
            "{name}: first event {ev:?}"
        );
        assert!(!c.parser.retries.is_empty(), "{name}: no retry: first");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(ev) = c.next_event(Duration::from_secs(3600)).await {
                if ev.event != "HEARTBEAT" && tx.send(ev).is_err() {
                    return;
                }
            }
        });
        Feed {
            name,
            rx,
            task,
            two_part,
            last: None,
        }
    }

    /// The next presence event within `within`; its id must come after the
    /// previous one's.
    async fn next_within(&mut self, within: Duration, what: &str) -> Pres {
        let ev = match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("{}: the stream ended; expected {what}", self.name),
            Err(_) => panic!("{}: no event within {within:?}; expected {what}", self.name),
        };
        self.check(&ev, what)
    }

    /// `ev` as a presence event; its id must come after the previous one's.
    fn check(&mut self, ev: &SseEvent, what: &str) -> Pres {
        let p = pres(ev);
        let id = Id::parse(&p.id, self.two_part);
        if let Some(last) = self.last {
            assert!(
                id.is_after(last),
                "{}: id {id:?} of {p:?} does not come after {last:?} ({what})",
                self.name
            );
        }
        self.last = Some(id);
        p
    }

    async fn next(&mut self, what: &str) -> Pres {
        self.next_within(WAIT, what).await
    }

    /// Assert the next presence event is `event` for `user`; returns it.
    async fn expect(&mut self, event: &str, user: &str, what: &str) -> Pres {
        let p = self.next(&format!("{event} {user} ({what})")).await;
        assert_eq!(
            (p.event.as_str(), p.user.as_str()),
            (event, user),
            "{}: {what}: expected {event} for {user}, got {p:?}",
            self.name
        );
        p
    }

    /// The next `n` events: each `event`, each for a different user; returns
    /// them by user.
    async fn take_set(&mut self, n: usize, event: &str, what: &str) -> BTreeMap<String, Pres> {
        match self.try_take_set(n, event, what).await {
            Ok(got) => got,
            Err((_, why)) => panic!("{why}"),
        }
    }

    /// [`Feed::take_set`], but when an event does not come within [`WAIT`],
    /// `Err` with the ones that came and why (for the caller to say more).
    async fn try_take_set(
        &mut self,
        n: usize,
        event: &str,
        what: &str,
    ) -> Result<BTreeMap<String, Pres>, (BTreeMap<String, Pres>, String)> {
        let mut got = BTreeMap::new();
        for i in 0..n {
            let ev = match tokio::time::timeout(WAIT, self.rx.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    let why = format!(
                        "{}: the stream ended; expected {event} #{i} of {n} ({what})",
                        self.name
                    );
                    return Err((got, why));
                }
                Err(_) => {
                    let why = format!(
                        "{}: no event within {WAIT:?}; expected {event} #{i} of {n} ({what})",
                        self.name
                    );
                    return Err((got, why));
                }
            };
            let p = self.check(&ev, &format!("{event} #{i} of {n} ({what})"));
            assert_eq!(p.event, event, "{}: {what}: #{i} of {n}: {p:?}", self.name);
            let user = p.user.clone();
            if let Some(first) = got.insert(user.clone(), p.clone()) {
                panic!(
                    "{}: {what}: a second {event} for {user}: {first:?} then {p:?}",
                    self.name
                );
            }
        }
        Ok(got)
    }
}

/// Assert a user stream (the client's side) connects: 200 and CONNECTED.
async fn connect(h: &Herald, query: &str) -> SseClient {
    h.subscribe_connected(query).await
}

/// `(connectionId, podId, sorted topics)` of each listed connection, sorted.
fn conn_summary(list: &[Value]) -> Vec<(String, String, Vec<String>)> {
    let mut out: Vec<(String, String, Vec<String>)> = list
        .iter()
        .map(|c| {
            let s = |k: &str| {
                c[k].as_str()
                    .unwrap_or_else(|| panic!("{k} is not a string: {c}"))
                    .to_string()
            };
            let mut topics: Vec<String> = c["topics"]
                .as_array()
                .unwrap_or_else(|| panic!("topics is not an array: {c}"))
                .iter()
                .map(|t| t.as_str().expect("a topic string").to_string())
                .collect();
            topics.sort();
            (s("connectionId"), s("podId"), topics)
        })
        .collect();
    out.sort();
    out
}

/// Poll `h` until `user`'s connections are `want` (summaries), bounded by `within`.
async fn wait_conns(
    h: &Herald,
    user: &str,
    want: &[(String, String, Vec<String>)],
    within: Duration,
) {
    let start = Instant::now();
    loop {
        let got = conn_summary(&connections(h, user).await);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < within,
            "pod {}: connections of {user} never became {want:?} within {within:?}: {got:?}",
            h.pod_id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll `POST /api/presence` with `body` on every pod until it answers `want`,
/// each bounded by [`WAIT`].
async fn wait_counts(pods: &[&Herald], body: &Value, want: &Value) {
    for h in pods {
        let start = Instant::now();
        loop {
            let got = presence::query(h, body).await;
            if &got == want {
                break;
            }
            assert!(
                start.elapsed() < WAIT,
                "pod {}: POST /api/presence {body} never answered {want} within {WAIT:?}; last {got}",
                h.pod_id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn all(pods: &[Herald]) -> Vec<&Herald> {
    pods.iter().collect()
}

/// 1. A user connected on two pods (two connections, different topics): a
///    presence stream on a third pod (and one on the fourth) gets exactly one
///    online; closing one connection nothing; closing both exactly one offline,
///    after the 1 s linger and within linger + linger/4 (+ slack).
async fn a_user_on_two_pods_is_one_online_and_one_offline(backend: Backend) {
    const LINGER_MS: u64 = 1000;
    let tc = backend.cluster("pc-two-pods").with_timing(TIMING);
    let pods = start_pods(&tc, &["--presence-linger", "1s"]).await;
    let two = backend.two_part_ids();
    let mut feeds = [
        Feed::open(&pods[2], &[], two).await,
        Feed::open(&pods[3], &[], two).await,
    ];

    let t0 = now_ms();
    let tab1 = connect(
        &pods[0],
        "userId=pc-ann&connectionId=tab-1&topics=news,sport",
    )
    .await;
    let t1 = now_ms();
    let tab2 = connect(&pods[1], "userId=pc-ann&connectionId=tab-2&topics=weather").await;
    let mut onlines = Vec::new();
    for f in feeds.iter_mut() {
        let on = f
            .expect("online", "pc-ann", "first connection, pod 0")
            .await;
        assert!(
            on.at + SLACK_MS >= t0 && on.at <= t1 + SLACK_MS,
            "online at {} not within the first connect [{t0}, {t1}]: {on:?}",
            on.at
        );
        onlines.push(on);
    }
    assert_eq!(
        onlines[0].what(),
        onlines[1].what(),
        "the two streams disagree"
    );

    // The second connection (another pod) is no transition: the marker's
    // online is next.
    let marker = connect(&pods[3], "userId=pc-marker").await;
    for f in feeds.iter_mut() {
        f.expect("online", "pc-marker", "marker after the second pod")
            .await;
    }
    // Closing one of the two: no offline. The marker, closed after it, goes
    // offline one linger later; a wrongful offline of pc-ann would come first.
    drop(tab1);
    let tab2_only = [(
        "tab-2".to_string(),
        pods[1].pod_id.clone(),
        vec!["weather".to_string()],
    )];
    wait_conns(&pods[2], "pc-ann", &tab2_only, WAIT).await;
    drop(marker);
    for f in feeds.iter_mut() {
        f.expect("offline", "pc-marker", "timer after closing tab-1")
            .await;
    }

    // Closing both: exactly one offline, after the linger.
    let closed = now_ms();
    drop(tab2);
    for f in feeds.iter_mut() {
        let off = f.expect("offline", "pc-ann", "both closed").await;
        let seen = now_ms();
        assert!(
            off.at + SLACK_MS >= closed && off.at <= seen,
            "offline at {} not within [{closed}, {seen}]: {off:?}",
            off.at
        );
        assert!(
            seen + SLACK_MS >= off.at + LINGER_MS,
            "offline seen at {seen}, before the {LINGER_MS} ms linger from {} passed",
            off.at
        );
        // Within linger + linger/4 of the end, plus a second for the publish on
        // a busy machine.
        assert!(
            seen <= off.at + LINGER_MS + LINGER_MS / 4 + 1000,
            "offline seen {} ms after the last connection ended: more than linger + linger/4 (+1 s)",
            seen - off.at
        );
    }
    for h in &pods {
        assert_eq!(connections(h, "pc-ann").await, Vec::<Value>::new());
    }
    wait_counts(
        &all(&pods),
        &json!({"users": ["pc-ann"], "topics": ["news", "sport", "weather"]}),
        &json!({"users": {"pc-ann": 0}, "topics": {"news": 0, "sport": 0, "weather": 0}}),
    )
    .await;

    // Nothing more: a later user's online is next, and its offline after it.
    let later = connect(&pods[0], "userId=pc-later").await;
    for f in feeds.iter_mut() {
        f.expect("online", "pc-later", "marker after the offline")
            .await;
    }
    drop(later);
    for f in feeds.iter_mut() {
        f.expect("offline", "pc-later", "timer after the offline")
            .await;
    }
}

/// 2. A SIGKILLed pod's users go offline once their connections are stale
///    (`--stale-after 3s`, removed by the cleanup every 1 s, then the 1 s
///    linger), exactly once each; a user also connected on a surviving pod
///    does not go offline.
async fn a_killed_pods_users_go_offline_once_after_the_stale_threshold(backend: Backend) {
    const KILL_TIMING: Timing = Timing {
        heartbeat: Duration::from_secs(1),
        stale_after: Duration::from_secs(3),
        cleanup: Duration::from_secs(1),
    };
    const LINGER_MS: u64 = 1000;
    let tc = backend.cluster("pc-kill").with_timing(KILL_TIMING);
    let mut pods = start_pods(&tc, &["--presence-linger", "1s"]).await;
    let two = backend.two_part_ids();
    let mut feed = Feed::open(&pods[0], &[], two).await;
    let mut feed2 = Feed::open(&pods[1], &[], two).await;

    // On the victim (pod 3): k-solo (one stream), k-duo (two streams), k-both
    // (one stream, and one on pod 1).
    let victim_streams = vec![
        connect(&pods[3], "userId=k-solo&connectionId=a").await,
        connect(&pods[3], "userId=k-duo&connectionId=a").await,
        connect(&pods[3], "userId=k-duo&connectionId=b").await,
        connect(&pods[3], "userId=k-both&connectionId=a&topics=kt").await,
    ];
    let _both_elsewhere = connect(&pods[1], "userId=k-both&connectionId=b&topics=kt").await;
    let users = ["k-both", "k-duo", "k-solo"];
    for f in [&mut feed, &mut feed2] {
        let on = f.take_set(3, "online", "the victim's users").await;
        assert_eq!(on.keys().map(String::as_str).collect::<Vec<_>>(), users);
    }
    let body = json!({"users": users, "topics": ["kt"]});
    wait_counts(
        &all(&pods),
        &body,
        &json!({"users": {"k-both": 2, "k-duo": 2, "k-solo": 1}, "topics": {"kt": 2}}),
    )
    .await;

    let victim = pods.pop().expect("pod 3");
    let mut victim = victim;
    let killed_ms = now_ms();
    victim.child.kill().expect("SIGKILL pod 3");
    victim.child.wait().expect("reap pod 3");
    let killed = Instant::now();
    drop(victim_streams);

    // Exactly one offline for each user who was only on the victim; the
    // bound: stale-after + cleanup + linger + linger/4, and slack.
    let bound = KILL_TIMING.stale_after
        + KILL_TIMING.cleanup
        + Duration::from_millis(LINGER_MS + LINGER_MS / 4)
        + Duration::from_secs(3);
    let mut offs = Vec::new();
    for f in [&mut feed, &mut feed2] {
        let mut got = BTreeMap::new();
        for i in 0..2 {
            let left = bound.saturating_sub(killed.elapsed());
            let p = f
                .next_within(left, &format!("offline #{i} of 2 after the kill"))
                .await;
            assert_eq!(p.event, "offline", "after the kill: {p:?}");
            assert!(
                got.insert(p.user.clone(), p.clone()).is_none(),
                "a second offline for {}: {p:?}",
                p.user
            );
        }
        let seen = killed.elapsed();
        assert_eq!(
            got.keys().map(String::as_str).collect::<Vec<_>>(),
            ["k-duo", "k-solo"],
            "offline after the kill: {got:?}"
        );
        // Not before the connections were stale: their last heartbeat was at
        // most one interval before the kill, and the linger follows.
        let earliest =
            killed_ms + (KILL_TIMING.stale_after - KILL_TIMING.heartbeat).as_millis() as u64;
        for p in got.values() {
            assert!(
                p.at + 250 >= earliest,
                "{p:?}: offline at {} ms after the kill, before the connections could be stale \
                 ({} ms)",
                p.at as i64 - killed_ms as i64,
                earliest - killed_ms
            );
        }
        assert!(
            seen >= (KILL_TIMING.stale_after - KILL_TIMING.heartbeat)
                + Duration::from_millis(LINGER_MS - 250),
            "the offlines came {seen:?} after the kill: before stale + linger"
        );
        eprintln!("the victim's users went offline {seen:?} after the kill");
        offs.push(got);
    }
    assert_eq!(
        offs[0].values().map(Pres::what).collect::<Vec<_>>(),
        offs[1].values().map(Pres::what).collect::<Vec<_>>(),
        "the two presence streams disagree"
    );

    // The survivors agree: k-both has its pod-1 connection only.
    let want_both = [(
        "b".to_string(),
        pods[1].pod_id.clone(),
        vec!["kt".to_string()],
    )];
    for h in &pods {
        wait_conns(h, "k-both", &want_both, WAIT).await;
        for u in ["k-solo", "k-duo"] {
            assert_eq!(connections(h, u).await, Vec::<Value>::new(), "{u}");
        }
    }
    wait_counts(
        &all(&pods),
        &body,
        &json!({"users": {"k-both": 1, "k-duo": 0, "k-solo": 0}, "topics": {"kt": 1}}),
    )
    .await;

    // Nothing more (no offline for k-both, no second one for the others): a
    // marker's online is next, then its offline.
    let marker = connect(&pods[2], "userId=k-marker").await;
    for f in [&mut feed, &mut feed2] {
        f.expect("online", "k-marker", "marker after the kill")
            .await;
    }
    drop(marker);
    for f in [&mut feed, &mut feed2] {
        f.expect("offline", "k-marker", "timer after the kill")
            .await;
    }
}

/// 3. A reload within the linger (`--presence-linger 3s`): the stream closes
///    and comes back on ANOTHER pod, twice; no transition.
async fn a_reload_on_another_pod_within_the_linger_is_no_transition(backend: Backend) {
    const LINGER: Duration = Duration::from_secs(3);
    let tc = backend.cluster("pc-reload").with_timing(TIMING);
    let pods = start_pods(&tc, &["--presence-linger", "3s"]).await;
    let two = backend.two_part_ids();
    let mut feed = Feed::open(&pods[0], &[], two).await;

    let first = connect(&pods[1], "userId=rl-bob&connectionId=page").await;
    feed.expect("online", "rl-bob", "first load").await;

    // Reload: pod 1 sees the stream end, then it comes back on pod 2.
    let left = Instant::now();
    drop(first);
    wait_conns(&pods[0], "rl-bob", &[], WAIT).await;
    let again = connect(&pods[2], "userId=rl-bob&connectionId=page").await;
    // And once more, onto pod 3.
    let left2 = Instant::now();
    drop(again);
    wait_conns(&pods[0], "rl-bob", &[], WAIT).await;
    let _third = connect(&pods[3], "userId=rl-bob&connectionId=page").await;
    assert!(
        left2.elapsed() < LINGER,
        "the second reload took {:?}, longer than the linger: the test proves nothing",
        left2.elapsed()
    );
    assert!(
        left.elapsed() < LINGER * 2,
        "the reloads took {:?}",
        left.elapsed()
    );
    let on3 = [(
        "page".to_string(),
        pods[3].pod_id.clone(),
        Vec::<String>::new(),
    )];
    for h in &pods {
        wait_conns(h, "rl-bob", &on3, WAIT).await;
    }

    // No online came for the reloads: the marker's online is next; no offline
    // came when the lingers passed: the marker, closed after them, goes offline
    // next.
    let marker = connect(&pods[1], "userId=rl-marker").await;
    feed.expect("online", "rl-marker", "marker after the reloads")
        .await;
    drop(marker);
    feed.expect("offline", "rl-marker", "timer after the reloads")
        .await;
    assert!(
        left2.elapsed() > LINGER,
        "the timer's offline came before rl-bob's linger could have passed"
    );
    wait_counts(
        &all(&pods),
        &json!({"users": ["rl-bob", "rl-marker"]}),
        &json!({"users": {"rl-bob": 1, "rl-marker": 0}, "topics": {}}),
    )
    .await;
}

/// Raise this process's soft open-file limit to the hard one; assert it
/// leaves room for `need` descriptors.
fn raise_nofile(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= need,
        "the storm needs {need} open files; the hard limit is {}",
        lim.rlim_max
    );
}

/// Open every `(pod, query)` stream, at most `parallel` connects at a time.
async fn open_many(
    pods: &[Herald],
    streams: Vec<(usize, String)>,
    parallel: usize,
) -> Vec<SseClient> {
    let streams = streams.into_iter().map(|(pod, q)| (pods[pod].addr, q));
    presence::open_many(streams, parallel).await
}

/// Every pod's `POST /api/presence` for `users` (in queries of at most 1,000)
/// answers `want(i)` for user `i`, bounded by [`WAIT`].
async fn wait_user_counts(pods: &[Herald], users: &[String], want: impl Fn(usize) -> u64) {
    for (k, chunk) in users.chunks(1000).enumerate() {
        let body = json!({ "users": chunk });
        let counts: serde_json::Map<String, Value> = chunk
            .iter()
            .enumerate()
            .map(|(j, u)| (u.clone(), json!(want(k * 1000 + j))))
            .collect();
        wait_counts(&all(pods), &body, &json!({"users": counts, "topics": {}})).await;
    }
}

/// What every pod says of `users`: counts, and connections (for a report).
async fn diagnose(pods: &[Herald], users: &[&str]) -> String {
    let mut out = String::new();
    for h in pods {
        let counts = presence::query(h, &json!({ "users": users })).await;
        out.push_str(&format!("pod {}: POST /api/presence: {counts}\n", h.pod_id));
    }
    for u in users {
        let list = connections(&pods[0], u).await;
        out.push_str(&format!(
            "pod {}: connections of {u}: {}\n",
            pods[0].pod_id,
            Value::from(list)
        ));
    }
    out
}

/// Storms run one at a time in this process (each holds 10,000 sockets).
static STORM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Quiet timings for the storm: 10,000 streams get a heartbeat each interval.
const STORM_TIMING: Timing = Timing {
    heartbeat: Duration::from_secs(5),
    stale_after: Duration::from_secs(20),
    cleanup: Duration::from_secs(2),
};

/// 4. A storm: 10,000 streams (5,000 users × 2, each user's two on different
///    pods) opened over the four pods, then all closed, with a quarter of the
///    users back within the linger (half of those with two streams, half with
///    one, on other pods than before). Two presence streams (pods 0 and 2) show
///    exactly the transitions that happened: one online per user; one offline
///    per user who stayed away, none for those back in time.
async fn a_storm_of_streams_gives_exactly_the_transitions_that_happened(backend: Backend) {
    const STREAMS: usize = 10_000;
    const USERS: usize = STREAMS / 2;
    const TOPICS: usize = 10;
    const LINGER: Duration = Duration::from_secs(4);
    let _one_at_a_time = STORM.lock().await;
    raise_nofile(STREAMS as u64 + 2_000);
    let started = Instant::now();
    let tc = backend.cluster("pc-storm").with_timing(STORM_TIMING);
    let pods = start_pods(&tc, &["--presence-linger", "4s"]).await;
    let two = backend.two_part_ids();
    let mut feeds = [
        Feed::open(&pods[0], &[], two).await,
        Feed::open(&pods[2], &[], two).await,
    ];
    let user = |i: usize| format!("st-{i:05}");
    let topic = |i: usize| format!("st-t{}", i % TOPICS);
    let users: Vec<String> = (0..USERS).map(user).collect();

    let plan: Vec<(usize, String)> = (0..USERS)
        .flat_map(|i| {
            (0..2).map(move |k| {
                (
                    (i + k) % PODS,
                    format!("userId={}&connectionId=c{k}&topics={}", user(i), topic(i)),
                )
            })
        })
        .collect();
    let streams = open_many(&pods, plan, 128).await;
    assert_eq!(streams.len(), STREAMS);
    for h in &pods {
        h.wait_connections((STREAMS / PODS) as u64).await;
    }
    eprintln!(
        "storm ({STREAMS} streams): open after {:?}",
        started.elapsed()
    );

    // Exactly one online per user, on both presence streams.
    let want: BTreeSet<&str> = users.iter().map(String::as_str).collect();
    let mut onlines = Vec::new();
    for f in feeds.iter_mut() {
        let on = f.take_set(USERS, "online", "the storm's connects").await;
        assert!(
            on.keys().map(String::as_str).eq(want.iter().copied()),
            "the onlines are not one per user"
        );
        onlines.push(on);
    }
    for u in &users {
        assert_eq!(
            onlines[0][u].what(),
            onlines[1][u].what(),
            "the streams disagree on {u}"
        );
    }
    eprintln!("storm: {USERS} onlines after {:?}", started.elapsed());

    // Counts: 2 per user, STREAMS / TOPICS per topic, on every pod.
    wait_user_counts(&pods, &users, |_| 2).await;
    let topics: Vec<String> = (0..TOPICS).map(topic).collect();
    let per_topic: serde_json::Map<String, Value> = topics
        .iter()
        .map(|t| (t.clone(), json!(STREAMS / TOPICS)))
        .collect();
    wait_counts(
        &all(&pods),
        &json!({ "topics": topics }),
        &json!({"users": {}, "topics": per_topic}),
    )
    .await;

    // All close; a quarter come back within the linger, on other pods: users
    // i % 8 == 0 with two streams, i % 8 == 4 with one.
    drop(streams);
    let closed = Instant::now();
    for h in &pods {
        h.wait_connections(0).await;
    }
    let back: Vec<(usize, String)> = (0..USERS)
        .filter(|i| i % 4 == 0)
        .flat_map(|i| {
            let n = if i % 8 == 0 { 2 } else { 1 };
            (0..n).map(move |k| {
                (
                    (i + 2 + k) % PODS,
                    format!("userId={}&connectionId=r{k}", user(i)),
                )
            })
        })
        .collect();
    let n_back = back.len();
    let reopened = open_many(&pods, back, 128).await;
    let took = closed.elapsed();
    assert!(
        took < LINGER,
        "closing and reconnecting took {took:?}, longer than the linger: the test proves nothing"
    );
    eprintln!("storm: all closed and {n_back} streams back {took:?} later");

    // Exactly one offline per user who stayed away; none for the others.
    let away: BTreeSet<&str> = (0..USERS)
        .filter(|i| i % 4 != 0)
        .map(|i| users[i].as_str())
        .collect();
    let mut offlines = Vec::new();
    for f in feeds.iter_mut() {
        let off = match f
            .try_take_set(away.len(), "offline", "the storm's ends")
            .await
        {
            Ok(off) => off,
            Err((got, why)) => {
                let missing: Vec<&str> = away
                    .iter()
                    .copied()
                    .filter(|u| !got.contains_key(*u))
                    .collect();
                panic!(
                    "{why}\n{} users who stayed away got no offline; what the cluster says \
                     of the first of them (their streams were closed {:?} ago; every pod \
                     counts 0 connections of its own):\n{}",
                    missing.len(),
                    closed.elapsed(),
                    diagnose(&pods, &missing[..missing.len().min(5)]).await
                );
            }
        };
        let got: BTreeSet<&str> = off.keys().map(String::as_str).collect();
        let wrong: Vec<&&str> = got.difference(&away).take(10).collect();
        assert!(
            wrong.is_empty(),
            "offline for users who came back: {wrong:?}"
        );
        assert_eq!(
            got, away,
            "the offlines are not one per user who stayed away"
        );
        offlines.push(off);
    }
    for u in &away {
        assert_eq!(
            offlines[0][*u].what(),
            offlines[1][*u].what(),
            "the streams disagree on {u}"
        );
    }
    eprintln!(
        "storm: {} offlines after {:?}",
        away.len(),
        started.elapsed()
    );
    wait_user_counts(&pods, &users, |i| match i % 8 {
        0 => 2,
        4 => 1,
        _ => 0,
    })
    .await;

    // Nothing else: a marker's online is next, and its offline (a linger later)
    // next after that.
    let marker = connect(&pods[1], "userId=st-marker").await;
    for f in feeds.iter_mut() {
        f.expect("online", "st-marker", "marker after the storm")
            .await;
    }
    drop(marker);
    for f in feeds.iter_mut() {
        f.expect("offline", "st-marker", "timer after the storm")
            .await;
    }
    drop(reopened);
    eprintln!("storm: done after {:?}", started.elapsed());
}

/// 5. Counts: known connections and topics over the four pods; `POST
///    /api/presence` on every pod answers exactly the expected per-user and
///    per-topic counts, and `GET connections` lists each connection with its
///    pod and topics; after some close, both follow.
async fn counts_and_connections_are_the_same_on_every_pod(backend: Backend) {
    let tc = backend.cluster("pc-counts").with_timing(TIMING);
    let pods = start_pods(&tc, &["--presence-linger", "1s"]).await;
    // (pod, user, connection id, topics)
    let plan: [(usize, &str, &str, &[&str]); 9] = [
        (0, "c-amy", "a0", &["t-a", "t-b"]),
        (1, "c-amy", "a1", &["t-a"]),
        (2, "c-amy", "a2", &[]),
        (3, "c-ben", "b0", &["t-c"]),
        (1, "c-cal", "c0", &["t-a", "t-c"]),
        (1, "c-cal", "c1", &["t-b"]),
        (2, "c-dee", "d0", &["t-b"]),
        (3, "c-dee", "d1", &["t-b"]),
        (0, "c-eve", "e0", &["t-a", "t-b", "t-c"]),
    ];
    let t0 = now_ms();
    let mut open = BTreeMap::new();
    for (pod, user, conn, topics) in plan {
        let mut q = format!("userId={user}&connectionId={conn}");
        if !topics.is_empty() {
            q.push_str(&format!("&topics={}", topics.join(",")));
        }
        open.insert(conn, connect(&pods[pod], &q).await);
    }
    let t1 = now_ms();
    let users = ["c-amy", "c-ben", "c-cal", "c-dee", "c-eve", "c-nobody"];
    let topics = ["t-a", "t-b", "t-c", "t-none"];
    let body = json!({"users": users, "topics": topics});

    // What the plan says, for the connections still open.
    let expect = |open: &BTreeMap<&str, SseClient>| {
        let live: Vec<_> = plan
            .iter()
            .filter(|(_, _, c, _)| open.contains_key(c))
            .collect();
        let users: serde_json::Map<String, Value> = users
            .iter()
            .map(|u| {
                let n = live.iter().filter(|(_, pu, _, _)| pu == u).count();
                (u.to_string(), json!(n))
            })
            .collect();
        let topics: serde_json::Map<String, Value> = topics
            .iter()
            .map(|t| {
                let n = live.iter().filter(|(_, _, _, ts)| ts.contains(t)).count();
                (t.to_string(), json!(n))
            })
            .collect();
        json!({"users": users, "topics": topics})
    };
    let conns_of = |open: &BTreeMap<&str, SseClient>, user: &str| {
        let mut v: Vec<(String, String, Vec<String>)> = plan
            .iter()
            .filter(|(_, u, c, _)| *u == user && open.contains_key(c))
            .map(|(pod, _, c, ts)| {
                let mut ts: Vec<String> = ts.iter().map(|t| t.to_string()).collect();
                ts.sort();
                (c.to_string(), pods[*pod].pod_id.clone(), ts)
            })
            .collect();
        v.sort();
        v
    };

    let want = expect(&open);
    assert_eq!(
        want,
        json!({"users": {"c-amy": 3, "c-ben": 1, "c-cal": 2, "c-dee": 2, "c-eve": 1, "c-nobody": 0},
               "topics": {"t-a": 4, "t-b": 5, "t-c": 3, "t-none": 0}}),
        "the test's own arithmetic"
    );
    // User counts are exact at once (a connect is registered before its
    // CONNECTED); topic counts follow within a tick.
    for h in &pods {
        let got = presence::query(h, &json!({ "users": users })).await;
        assert_eq!(
            got,
            json!({"users": want["users"], "topics": {}}),
            "pod {}: user counts right after the connects",
            h.pod_id
        );
    }
    wait_counts(&all(&pods), &body, &want).await;
    // Only users, only topics: the same numbers.
    wait_counts(
        &all(&pods),
        &json!({"topics": ["t-c", "t-a"]}),
        &json!({"users": {}, "topics": {"t-c": 3, "t-a": 4}}),
    )
    .await;

    // Every connection listed, on every pod, with its pod and topics.
    let now = now_ms();
    for h in &pods {
        for u in users {
            let list = connections(h, u).await;
            assert_eq!(
                conn_summary(&list),
                conns_of(&open, u),
                "pod {}: {u}",
                h.pod_id
            );
            for c in &list {
                presence::assert_connection_fields(c);
                let connected = c["connectedAt"].as_u64().expect("connectedAt ms");
                let beat = c["lastHeartbeat"].as_u64().expect("lastHeartbeat ms");
                assert!(
                    connected + SLACK_MS >= t0 && connected <= t1 + SLACK_MS,
                    "connectedAt {connected} not within the connects [{t0}, {t1}]: {c}"
                );
                assert!(
                    beat + SLACK_MS >= connected && beat <= now + SLACK_MS,
                    "lastHeartbeat {beat} not within [connectedAt, now {now}]: {c}"
                );
            }
        }
    }

    // Some close: both follow, on every pod.
    for conn in ["a1", "c0", "c1", "d1"] {
        drop(open.remove(conn));
    }
    let want = expect(&open);
    assert_eq!(
        want,
        json!({"users": {"c-amy": 2, "c-ben": 1, "c-cal": 0, "c-dee": 1, "c-eve": 1, "c-nobody": 0},
               "topics": {"t-a": 2, "t-b": 3, "t-c": 2, "t-none": 0}}),
        "the test's own arithmetic"
    );
    wait_counts(&all(&pods), &body, &want).await;
    for h in &pods {
        for u in users {
            wait_conns(h, u, &conns_of(&open, u), WAIT).await;
        }
    }
}

/// 6. A presence stream on pod A notes an id; A stops (SIGTERM); transitions
///    happen; a stream opened with that `Last-Event-ID` on pod B, and one on A
///    restarted (same pod id), get exactly the missed events, in order, then
///    live ones.
async fn a_presence_stream_resumes_on_another_pod_after_its_pod_stopped(backend: Backend) {
    let tc = backend.cluster("pc-resume").with_timing(TIMING);
    let extra = ["--presence-linger", "1s", "--grace-period", "1s"];
    let mut pods = start_pods(&tc, &extra).await;
    let two = backend.two_part_ids();
    // A watcher on pod 1 stays throughout: it says what the others missed.
    let mut watcher = Feed::open(&pods[1], &[], two).await;
    let mut on_a = Feed::open(&pods[0], &[], two).await;

    let u1 = connect(&pods[2], "userId=rs-one").await;
    let seen = on_a.expect("online", "rs-one", "before A stops").await;
    let w = watcher.expect("online", "rs-one", "watcher").await;
    assert_eq!(w.what(), seen.what());

    // Stop pod A.
    pods[0].signal("TERM");
    let status = pods[0]
        .wait_exit(Duration::from_secs(15))
        .expect("pod A exits after SIGTERM");
    assert!(status.success(), "pod A exited with {status}");
    drop(on_a);
    let a_id = pods[0].pod_id.clone();

    // Transitions while no stream of A's is open.
    let u2 = connect(&pods[3], "userId=rs-two").await;
    let mut missed = vec![watcher.expect("online", "rs-two", "watcher").await];
    drop(u1);
    let _u3 = connect(&pods[2], "userId=rs-three").await;
    missed.push(watcher.expect("online", "rs-three", "watcher").await);
    missed.push(watcher.expect("offline", "rs-one", "watcher").await);
    drop(u2);
    missed.push(watcher.expect("offline", "rs-two", "watcher").await);

    // On pod B, with Last-Event-ID: exactly the missed ones, in order.
    let mut on_b = Feed::open(&pods[1], &[("Last-Event-ID", &seen.id)], two).await;
    let mut got = Vec::new();
    for m in &missed {
        got.push(on_b.next(&format!("replay of {m:?} on pod B")).await);
    }
    assert_eq!(
        got.iter().map(Pres::what).collect::<Vec<_>>(),
        missed.iter().map(Pres::what).collect::<Vec<_>>(),
        "replay on pod B after {}",
        seen.id
    );
    if !two {
        assert_eq!(got, missed, "replay on pod B: the same ids as live");
    }

    // Pod A again, same pod id and flags: the same replay there.
    let restarted = {
        let (_, mut flags) = pod_flags(&tc.redis_url(), tc.prefix(), TIMING, 0);
        let at = flags
            .iter()
            .position(|f| f == "--pod-id")
            .expect("--pod-id in the pod flags");
        flags[at + 1] = a_id.clone();
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend_from_slice(backend.flags);
        args.extend_from_slice(&extra);
        let h = Herald::start(&args);
        assert_eq!(h.pod_id, a_id, "the restarted pod A keeps its id");
        h
    };
    wait_ready(&restarted, 200, WAIT).await;
    let mut on_a2 = Feed::open(&restarted, &[("Last-Event-ID", &seen.id)], two).await;
    let mut got2 = Vec::new();
    for m in &missed {
        got2.push(
            on_a2
                .next(&format!("replay of {m:?} on the restarted pod A"))
                .await,
        );
    }
    assert_eq!(
        got2.iter().map(Pres::what).collect::<Vec<_>>(),
        missed.iter().map(Pres::what).collect::<Vec<_>>(),
        "replay on the restarted pod A after {}",
        seen.id
    );
    if !two {
        assert_eq!(got2, missed, "replay on pod A: the same ids as live");
    }

    // Then live, on all three: nothing came between the replay and the marker.
    let _marker = connect(&pods[3], "userId=rs-marker").await;
    let live = watcher.expect("online", "rs-marker", "watcher").await;
    for f in [&mut on_b, &mut on_a2] {
        let p = f
            .expect("online", "rs-marker", "live after the replay")
            .await;
        assert_eq!(p.what(), live.what());
    }
}

/// 7. (Found by the storm.) A stream that ends while its pod's registry
///    heartbeat is on its way to Redis is not put back: once every pod has
///    seen its streams end, the cluster counts none of them and lists none
///    (a connection put back would keep its user online, and be counted and
///    listed, until it is stale). Heartbeats every 100 ms and
///    cycles of 500 streams opened and closed over the four pods make the race
///    likely (it is a race: a run can pass by luck, never fail without a bug).
async fn a_stream_that_ends_during_a_heartbeat_is_not_put_back(backend: Backend) {
    const CYCLES: usize = 30;
    const STREAMS: usize = 500;
    let tc = backend.cluster("pc-hb-race").with_timing(Timing {
        heartbeat: Duration::from_millis(100),
        stale_after: Duration::from_secs(30),
        cleanup: Duration::from_secs(5),
    });
    let pods = start_pods(&tc, &["--presence-linger", "1s"]).await;
    let users: Vec<String> = (0..STREAMS).map(|i| format!("hb-{i:03}")).collect();
    for cycle in 0..CYCLES {
        let plan: Vec<(usize, String)> = users
            .iter()
            .enumerate()
            .map(|(i, u)| (i % PODS, format!("userId={u}&connectionId=c{cycle}")))
            .collect();
        let streams = open_many(&pods, plan, 64).await;
        drop(streams);
        let closed = Instant::now();
        for h in &pods {
            h.wait_connections(0).await;
        }
        // Every end is sent to Redis at once (in a batch): allow a moment.
        let until = Instant::now() + Duration::from_secs(3);
        loop {
            let counts = presence::query(&pods[0], &json!({ "users": users })).await;
            let ghosts: Vec<&str> = users
                .iter()
                .map(String::as_str)
                .filter(|u| counts["users"][*u] != 0)
                .collect();
            if ghosts.is_empty() {
                break;
            }
            if Instant::now() >= until {
                let list = connections(&pods[0], ghosts[0]).await;
                panic!(
                    "cycle {cycle}: {} closed {:?} ago on pods that count 0 streams of their own, \
                     the cluster still counts {} users as connected (e.g. {:?}); connections of \
                     {}: {}",
                    STREAMS,
                    closed.elapsed(),
                    ghosts.len(),
                    &ghosts[..ghosts.len().min(5)],
                    ghosts[0],
                    Value::from(list)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// 8. (Found by the scale rehearsal.) Presence transitions have a history of
///    their own: a storm of them, many times `--history-events`, does not push
///    the events other streams resume from out of the history. A topic stream
///    that left before the storm resumes after it, on another pod, with exactly
///    the topic and user events it missed, no `RESYNC` (before, the
///    transitions filled the shared log and the resume was told `RESYNC`);
///    a presence stream from before the storm is told `RESYNC` (its own
///    history is what the storm filled).
async fn a_storm_of_transitions_leaves_the_other_events_history_whole(backend: Backend) {
    // Well past what `MAXLEN ~ 30` keeps: Redis trims whole nodes of 100.
    const USERS: usize = 400;
    let tc = backend.cluster("pc-hist").with_timing(TIMING);
    let pods = start_pods(&tc, &["--history-events", "30"]).await;
    let two = backend.two_part_ids();
    let mut watcher = Feed::open(&pods[1], &[], two).await;
    let marker = connect(&pods[2], "userId=hs-first").await;
    let before = watcher
        .expect("online", "hs-first", "before the storm")
        .await;
    drop(marker);

    // A topic stream receives one event, then leaves.
    let mut reader = connect(&pods[0], "userId=hs-reader&topics=hs-news").await;
    watcher
        .expect("online", "hs-reader", "the reader comes")
        .await;
    pods[3]
        .publish(json!({"data": "one", "target": {"topics": ["hs-news"]}}))
        .await;
    let one = next_ev(&mut reader, "the reader's first event").await;
    assert_eq!(one.data, "one", "{one:?}");
    let last_id = one.id.clone().expect("a topic event has an id");
    drop(reader);

    // The storm: USERS users come online, every transition seen live.
    let streams: Vec<(usize, String)> = (0..USERS)
        .map(|i| (i % PODS, format!("userId=hs-u{i}")))
        .collect();
    let _open = open_many(&pods, streams, 64).await;
    let storm = watcher.take_set(USERS, "online", "the storm").await;
    assert_eq!(storm.len(), USERS, "one online per user");

    // What the reader misses after the storm: a topic event and a user event.
    pods[2]
        .publish(json!({"data": "two", "target": {"topics": ["hs-news"]}}))
        .await;
    pods[3]
        .publish(json!({"data": "three", "target": {"users": ["hs-reader"]}}))
        .await;

    // Resumed on another pod: exactly those two, in order, then live.
    let (mut back, mut got) = presence::resume_exactly(
        pods[1].addr,
        "/api/user/sse/connect?userId=hs-reader&topics=hs-news",
        &last_id,
        2,
        "the transitions pushed the topic's events out of the history",
    )
    .await;
    if two {
        // Two sources (the topic's and the user's partition): each in its
        // order, not one order between them.
        got.sort();
        assert_eq!(got, ["three", "two"], "the replay after {last_id}");
    } else {
        assert_eq!(got, ["two", "three"], "the replay after {last_id}");
    }
    pods[0]
        .publish(json!({"data": "four", "target": {"topics": ["hs-news"]}}))
        .await;
    let live = next_ev(&mut back, "live after the replay").await;
    assert_eq!(
        live.data, "four",
        "nothing between the replay and live: {live:?}"
    );

    // A presence stream from before the storm: its history is gone.
    let mut old = SseClient::connect(pods[2].addr, STREAM, &[("Last-Event-ID", &before.id)]).await;
    assert_eq!(old.status, 200, "presence resume answered {}", old.status);
    let connected = next_ev(&mut old, "CONNECTED on the presence resume").await;
    assert_eq!(connected.event, "CONNECTED", "{connected:?}");
    let ev = next_ev(&mut old, "the presence resume's first event").await;
    assert_eq!(
        ev.event, "RESYNC",
        "a presence stream from before {USERS} transitions with --history-events 30: {ev:?}"
    );
}
