//! Presence, embedded (no Redis): `GET /api/user/sse/connections?userId=U`,
//! `POST /api/presence` and the `online` / `offline` stream
//! `GET /api/presence/stream`, with `--presence-linger`.
//!
//! How "nothing else came" is proved without sleeping: a *timer* user is
//! connected and closed after the thing under test; its `offline` comes one
//! linger later, and the linger releases users in the order their last
//! connection ended, so any wrongful transition of an earlier user would have
//! to arrive before it. A *marker* user's `online` proves nothing arrived in
//! between.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::check::{assert_json_error, id_of, metrics_body, next_ev, sample_sum};
use support::presence::{self, connections, now_ms, SLACK_MS, STREAM};
use support::{request, Herald, Response, SseClient, SseEvent, WAIT};

/// One presence event as the stream delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pres {
    id: u64,
    event: String,
    user: String,
    at: u64,
}

/// Parse (and check the shape of) a presence event.
fn pres(ev: &SseEvent) -> Pres {
    let (event, user, at) = presence::parse(ev);
    Pres {
        id: id_of(ev),
        event,
        user,
        at,
    }
}

/// Open a presence stream (with extra headers); assert 200, `retry:` and an
/// unnumbered CONNECTED first.
async fn open_presence_at(h: &Herald, path: &str, headers: &[(&str, &str)]) -> SseClient {
    let mut c = SseClient::connect(h.addr, path, headers).await;
    assert_eq!(c.status, 200, "{path} answered {}: {}", c.status, c.body);
    let ct = c.header("content-type").unwrap_or("").to_string();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
    let ev = c
        .next_event(WAIT)
        .await
        .expect("CONNECTED on the presence stream");
    assert_eq!(ev.event, "CONNECTED", "first event: {ev:?}");
    assert_eq!(ev.id, None, "CONNECTED carries no id: {ev:?}");
    assert!(
        !c.parser.retries.is_empty(),
        "a presence stream starts with retry:"
    );
    c
}

async fn open_presence(h: &Herald) -> SseClient {
    open_presence_at(h, STREAM, &[]).await
}

/// The next presence event (heartbeats skipped), bounded by WAIT.
async fn next_pres(c: &mut SseClient, what: &str) -> Pres {
    pres(&next_ev(c, what).await)
}

/// Assert the next presence event is `event` for `user`; returns it.
async fn expect_pres(c: &mut SseClient, event: &str, user: &str, what: &str) -> Pres {
    let p = next_pres(c, &format!("{event} {user} ({what})")).await;
    assert_eq!(
        (p.event.as_str(), p.user.as_str()),
        (event, user),
        "{what}: expected {event} for {user}, got {p:?}"
    );
    p
}

/// Poll the connections endpoint until `user` has `n` connections (bounded).
async fn wait_user_connections(h: &Herald, user: &str, n: usize) {
    let until = Instant::now() + WAIT;
    loop {
        let got = connections(h, user).await;
        if got.len() == n {
            return;
        }
        assert!(
            Instant::now() < until,
            "{user} never had {n} connections: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `POST /api/presence` (200 asserted): the answer.
async fn presence_query(h: &Herald, body: Value) -> Value {
    presence::query(h, &body).await
}

fn herald(linger: &str) -> Herald {
    Herald::start(&["--presence-linger", linger])
}

#[tokio::test]
async fn two_connections_one_online_one_offline_after_the_linger() {
    let h = herald("1s");
    let mut p = open_presence(&h).await;
    let t0 = now_ms();

    let tab1 = h
        .subscribe_connected("userId=pr-ann&connectionId=tab-1&topics=news,sport")
        .await;
    let t1 = now_ms();
    let tab2 = h
        .subscribe_connected("userId=pr-ann&connectionId=tab-2&topics=weather")
        .await;
    let online = expect_pres(&mut p, "online", "pr-ann", "first connection").await;
    assert!(
        online.at + SLACK_MS >= t0 && online.at <= t1 + SLACK_MS,
        "online at {} not within the first connect [{t0}, {t1}]",
        online.at
    );
    // The second connection is no transition: the marker's online comes next.
    let marker = h.subscribe_connected("userId=pr-marker").await;
    let m = expect_pres(&mut p, "online", "pr-marker", "marker after 2nd tab").await;
    assert!(m.id > online.id, "ids increase: {online:?} then {m:?}");

    // Both connections listed, with their topics.
    let mut conns = connections(&h, "pr-ann").await;
    let now = now_ms();
    assert_eq!(conns.len(), 2, "{conns:?}");
    conns.sort_by_key(|c| c["connectionId"].as_str().unwrap_or("").to_string());
    let want_topics = [
        ("tab-1", BTreeSet::from(["news", "sport"])),
        ("tab-2", BTreeSet::from(["weather"])),
    ];
    for (c, (id, topics)) in conns.iter().zip(want_topics) {
        presence::assert_connection_fields(c);
        assert_eq!(c["connectionId"], id, "{c}");
        assert_eq!(c["podId"], h.pod_id.as_str(), "{c}");
        let got: BTreeSet<&str> = c["topics"]
            .as_array()
            .expect("topics array")
            .iter()
            .map(|t| t.as_str().expect("topic string"))
            .collect();
        assert_eq!(got, topics, "{c}");
        let connected = c["connectedAt"].as_u64().expect("connectedAt ms");
        let heartbeat = c["lastHeartbeat"].as_u64().expect("lastHeartbeat ms");
        assert!(
            connected + SLACK_MS >= t0 && connected <= now,
            "connectedAt {connected} not within [{t0}, {now}]: {c}"
        );
        assert!(heartbeat >= connected, "lastHeartbeat < connectedAt: {c}");
    }
    assert_ne!(conns[0]["connectionId"], conns[1]["connectionId"]);

    // Counts per user and per topic.
    let counts = presence_query(
        &h,
        json!({"users": ["pr-ann", "pr-nobody"], "topics": ["news", "sport", "weather", "none"]}),
    )
    .await;
    assert_eq!(
        counts,
        json!({"users": {"pr-ann": 2, "pr-nobody": 0},
               "topics": {"news": 1, "sport": 1, "weather": 1, "none": 0}})
    );
    let only_users = presence_query(&h, json!({"users": ["pr-ann"]})).await;
    assert_eq!(only_users, json!({"users": {"pr-ann": 2}, "topics": {}}));
    let only_topics = presence_query(&h, json!({"topics": ["news"]})).await;
    assert_eq!(only_topics, json!({"users": {}, "topics": {"news": 1}}));

    // Closing one tab: no offline. The marker, closed after it, goes offline
    // one linger later; a wrongful offline of pr-ann would come first.
    drop(tab1);
    wait_user_connections(&h, "pr-ann", 1).await;
    drop(marker);
    expect_pres(&mut p, "offline", "pr-marker", "timer after closing tab-1").await;
    assert_eq!(
        presence_query(
            &h,
            json!({"users": ["pr-ann"], "topics": ["news", "weather"]})
        )
        .await,
        json!({"users": {"pr-ann": 1}, "topics": {"news": 0, "weather": 1}})
    );

    // Closing both: exactly one offline, after the linger.
    let closed = now_ms();
    drop(tab2);
    let off = expect_pres(&mut p, "offline", "pr-ann", "last tab closed").await;
    let seen = now_ms();
    assert!(
        off.at + SLACK_MS >= closed && off.at <= seen,
        "offline at {} not within [{closed}, {seen}]",
        off.at
    );
    assert!(
        seen + SLACK_MS >= off.at + 1000,
        "offline seen at {seen}, before the 1s linger from {} passed",
        off.at
    );
    assert_eq!(
        presence_query(
            &h,
            json!({"users": ["pr-ann"], "topics": ["news", "sport", "weather"]})
        )
        .await,
        json!({"users": {"pr-ann": 0}, "topics": {"news": 0, "sport": 0, "weather": 0}})
    );
    let r = h.get("/api/user/sse/connections?userId=pr-ann").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"userId": "pr-ann", "connections": []}));

    // Nothing more for pr-ann: a later user's online and offline come next.
    let later = h.subscribe_connected("userId=pr-later").await;
    expect_pres(&mut p, "online", "pr-later", "marker after offline").await;
    drop(later);
    expect_pres(&mut p, "offline", "pr-later", "timer after offline").await;
}

#[tokio::test]
async fn a_reload_within_the_linger_is_no_transition() {
    let h = herald("2s");
    let mut p = open_presence(&h).await;
    let first = h
        .subscribe_connected("userId=pr-bob&connectionId=page")
        .await;
    let online = expect_pres(&mut p, "online", "pr-bob", "first load").await;

    // Reload: the page's stream ends (herald sees it), then comes back.
    let left = Instant::now();
    drop(first);
    wait_user_connections(&h, "pr-bob", 0).await;
    // Lingering users are online: counted by the gauge, not by the query.
    assert_eq!(
        presence_query(&h, json!({"users": ["pr-bob"]})).await,
        json!({"users": {"pr-bob": 0}, "topics": {}})
    );
    let again = h
        .subscribe_connected("userId=pr-bob&connectionId=page")
        .await;
    assert!(
        left.elapsed() < Duration::from_secs(2),
        "the reload took {:?}, longer than the linger: the test proves nothing",
        left.elapsed()
    );
    // A second reload, for good measure.
    let second = h
        .subscribe_connected("userId=pr-bob&connectionId=page-2")
        .await;
    drop(again);
    wait_user_connections(&h, "pr-bob", 1).await;
    drop(second);
    wait_user_connections(&h, "pr-bob", 0).await;
    let third = h
        .subscribe_connected("userId=pr-bob&connectionId=page")
        .await;
    assert!(left.elapsed() < Duration::from_secs(2));
    // A reconnect with the same connection id while the old stream is still
    // open replaces it: no transition either, and the old one ends.
    let mut replaced = third;
    let _fourth = h
        .subscribe_connected("userId=pr-bob&connectionId=page")
        .await;
    assert!(
        replaced.wait_closed(WAIT).await,
        "the replaced stream was not ended"
    );
    wait_user_connections(&h, "pr-bob", 1).await;

    // No online came for the reloads: the marker's online is next; no offline
    // came when the linger passed: the marker, closed later, goes offline next.
    let marker = h.subscribe_connected("userId=pr-marker").await;
    let m = expect_pres(&mut p, "online", "pr-marker", "marker after reload").await;
    assert!(m.id > online.id);
    drop(marker);
    let off = expect_pres(&mut p, "offline", "pr-marker", "timer after reload").await;
    assert!(
        left.elapsed() > Duration::from_secs(2),
        "the timer's offline came before pr-bob's linger could have passed"
    );
    assert!(off.id > m.id);
    assert_eq!(
        presence_query(&h, json!({"users": ["pr-bob", "pr-marker"]})).await,
        json!({"users": {"pr-bob": 1, "pr-marker": 0}, "topics": {}})
    );
}

/// Open every stream of `queries` on `h`, at most `parallel` connects at a time.
async fn open_many(h: &Herald, queries: Vec<String>, parallel: usize) -> Vec<SseClient> {
    presence::open_many(queries.into_iter().map(|q| (h.addr, q)), parallel).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_2000_streams_gives_exactly_the_transitions_that_happened() {
    const USERS: usize = 1000;
    const LINGER: Duration = Duration::from_secs(2);
    let started = Instant::now();
    let h = Herald::start(&["--presence-linger", "2s", "--shards", "2"]);
    let mut p = open_presence(&h).await;
    let user = |i: usize| format!("st-{i:04}");
    let topic = |i: usize| format!("st-t{}", i % 10);

    // 2,000 streams: two per user, each on its user's topic.
    let queries: Vec<String> = (0..USERS)
        .flat_map(|i| {
            (0..2).map(move |k| format!("userId={}&connectionId=c{k}&topics={}", user(i), topic(i)))
        })
        .collect();
    let streams = open_many(&h, queries, 64).await;
    assert_eq!(streams.len(), 2 * USERS);
    h.wait_connections(2 * USERS as u64).await;
    eprintln!("storm: 2000 streams open after {:?}", started.elapsed());

    // Exactly one online per user.
    let mut online = BTreeMap::new();
    let mut last_id = 0;
    for n in 0..USERS {
        let e = next_pres(&mut p, &format!("online #{n} of {USERS}")).await;
        assert_eq!(e.event, "online", "{e:?}");
        assert!(e.id > last_id, "ids increase: {e:?} after {last_id}");
        last_id = e.id;
        assert!(
            online.insert(e.user.clone(), e).is_none(),
            "a second online for a user (#{n})"
        );
    }
    let want: BTreeSet<String> = (0..USERS).map(user).collect();
    assert_eq!(online.keys().cloned().collect::<BTreeSet<_>>(), want);

    let all_users: Vec<String> = (0..USERS).map(user).collect();
    let topics: Vec<String> = (0..10).map(topic).collect();
    let counts = presence_query(&h, json!({"users": all_users, "topics": topics})).await;
    for u in &all_users {
        assert_eq!(counts["users"][u], 2, "{u}: {}", counts["users"][u]);
    }
    for t in &topics {
        assert_eq!(counts["topics"][t], 200, "{t}: {}", counts["topics"][t]);
    }

    // All close; a quarter of the users come back within the linger (an
    // eighth with two streams, an eighth with one).
    drop(streams);
    let closed = Instant::now();
    h.wait_connections(0).await;
    let back: Vec<usize> = (0..USERS).filter(|i| i % 4 == 0).collect();
    let again: Vec<String> = back
        .iter()
        .flat_map(|&i| {
            let n = if i % 8 == 0 { 2 } else { 1 };
            (0..n).map(move |k| format!("userId={}&connectionId=r{k}", user(i)))
        })
        .collect();
    let reopened = open_many(&h, again, 64).await;
    assert!(
        closed.elapsed() < LINGER,
        "closing and reconnecting took {:?}, longer than the linger",
        closed.elapsed()
    );
    eprintln!(
        "storm: closed and {} streams back after {:?}",
        reopened.len(),
        closed.elapsed()
    );

    // Exactly one offline per user that stayed away, none for the others.
    let away: BTreeSet<String> = (0..USERS).filter(|i| i % 4 != 0).map(user).collect();
    let mut offline = BTreeSet::new();
    for n in 0..away.len() {
        let e = next_pres(&mut p, &format!("offline #{n} of {}", away.len())).await;
        assert_eq!(e.event, "offline", "{e:?}");
        assert!(
            away.contains(&e.user),
            "offline for {} who came back: {e:?}",
            e.user
        );
        assert!(offline.insert(e.user.clone()), "a second offline: {e:?}");
        assert!(e.id > last_id, "ids increase: {e:?} after {last_id}");
        last_id = e.id;
    }
    assert_eq!(offline, away);

    let counts = presence_query(&h, json!({"users": all_users})).await;
    for (i, u) in all_users.iter().enumerate() {
        let want = match i % 8 {
            0 => 2,
            4 => 1,
            _ => 0,
        };
        assert_eq!(counts["users"][u], want, "{u}");
    }

    // Nothing else: a marker's online is next, and its offline (a linger
    // later) next after that.
    let marker = h.subscribe_connected("userId=st-marker").await;
    expect_pres(&mut p, "online", "st-marker", "marker after the storm").await;
    drop(marker);
    expect_pres(&mut p, "offline", "st-marker", "timer after the storm").await;
    drop(reopened);
    eprintln!("storm: done after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_presence_stream_resumes_with_exactly_the_missed_events() {
    let h = herald("1s");
    let mut watcher = open_presence(&h).await;
    let mut first = open_presence(&h).await;

    let u1 = h.subscribe_connected("userId=rs-one").await;
    let seen = expect_pres(&mut first, "online", "rs-one", "before going away").await;
    assert_eq!(
        expect_pres(&mut watcher, "online", "rs-one", "watcher").await,
        seen
    );
    drop(first);

    // Transitions while the first stream is gone.
    let u2 = h.subscribe_connected("userId=rs-two").await;
    drop(u1);
    let _u3 = h.subscribe_connected("userId=rs-three").await;
    let mut missed = vec![
        expect_pres(&mut watcher, "online", "rs-two", "watcher").await,
        expect_pres(&mut watcher, "online", "rs-three", "watcher").await,
        expect_pres(&mut watcher, "offline", "rs-one", "watcher").await,
    ];
    drop(u2);
    missed.push(expect_pres(&mut watcher, "offline", "rs-two", "watcher").await);

    // Resume with Last-Event-ID: exactly the missed ones, in order, then live.
    let last = seen.id.to_string();
    let mut back = open_presence_at(&h, STREAM, &[("Last-Event-ID", &last)]).await;
    let mut got = Vec::new();
    for m in &missed {
        got.push(next_pres(&mut back, &format!("replay of {m:?}")).await);
    }
    assert_eq!(got, missed, "replay after {last}");
    let _marker = h.subscribe_connected("userId=rs-marker").await;
    let live = expect_pres(&mut back, "online", "rs-marker", "live after replay").await;
    assert_eq!(
        expect_pres(&mut watcher, "online", "rs-marker", "watcher").await,
        live
    );

    // The same with ?lastEventId=, from the middle.
    let path = format!("{STREAM}?lastEventId={}", missed[1].id);
    let mut mid = open_presence_at(&h, &path, &[]).await;
    let mut got = Vec::new();
    for m in missed[2..].iter().chain([&live]) {
        got.push(next_pres(&mut mid, &format!("replay of {m:?}")).await);
    }
    let mut want = missed[2..].to_vec();
    want.push(live.clone());
    assert_eq!(got, want, "replay after {}", missed[1].id);
    let _marker2 = h.subscribe_connected("userId=rs-marker-2").await;
    expect_pres(&mut mid, "online", "rs-marker-2", "live after the replay").await;
    expect_pres(&mut back, "online", "rs-marker-2", "live").await;
}

/// (Found by the scale rehearsal.) Presence transitions have a history of
/// their own: a storm of them, many times `--history-events`, does not push
/// the events other streams resume from out of the history. A topic stream
/// that left before the storm resumes after it with exactly what it missed,
/// no `RESYNC`; a presence stream from before the storm is told `RESYNC`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_transitions_leaves_the_other_events_history_whole() {
    const USERS: usize = 100;
    let h = Herald::start(&["--presence-linger", "1s", "--history-events", "20"]);
    let mut watcher = open_presence(&h).await;
    let marker = h.subscribe_connected("userId=hs-first").await;
    let before = expect_pres(&mut watcher, "online", "hs-first", "before the storm").await;
    drop(marker);

    let mut reader = h
        .subscribe_connected("userId=hs-reader&topics=hs-news")
        .await;
    expect_pres(&mut watcher, "online", "hs-reader", "the reader comes").await;
    h.publish(json!({"data": "one", "target": {"topics": ["hs-news"]}}))
        .await;
    let one = next_ev(&mut reader, "the reader's first event").await;
    assert_eq!(one.data, "one", "{one:?}");
    let last = id_of(&one).to_string();
    drop(reader);

    // The storm: USERS users come online (five times the history).
    let queries = (0..USERS).map(|i| format!("userId=hs-u{i}")).collect();
    let _open = open_many(&h, queries, 32).await;
    let mut seen = BTreeSet::new();
    for i in 0..USERS {
        let p = next_pres(&mut watcher, &format!("storm online #{i}")).await;
        assert_eq!(p.event, "online", "{p:?}");
        seen.insert(p.user);
    }
    assert_eq!(seen.len(), USERS, "one online per user");

    h.publish(json!({"data": "two", "target": {"topics": ["hs-news"]}}))
        .await;
    h.publish(json!({"data": "three", "target": {"users": ["hs-reader"]}}))
        .await;
    let (_back, got) = presence::resume_exactly(
        h.addr,
        "/api/user/sse/connect?userId=hs-reader&topics=hs-news",
        &last,
        2,
        "the transitions pushed the topic's events out of the history",
    )
    .await;
    assert_eq!(got, ["two", "three"], "the replay after {last}");

    let mut old = open_presence_at(&h, STREAM, &[("Last-Event-ID", &before.id.to_string())]).await;
    let ev = next_ev(&mut old, "the presence resume's first event").await;
    assert_eq!(
        ev.event, "RESYNC",
        "a presence stream from before {USERS} transitions with --history-events 20: {ev:?}"
    );
}

/// Assert `r` is `status` with a JSON `{"error": code, "message": "…"}`.
fn assert_error(r: &Response, status: u16, code: &str, what: &str) {
    assert_json_error(r, status, what);
    let v = r.json();
    assert_eq!(v["error"], code, "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no message: {v}"
    );
}

#[tokio::test]
async fn bad_presence_requests_are_400_with_a_json_error() {
    let h = herald("1s");
    let many = |n: usize| (0..n).map(|i| format!("u{i}")).collect::<Vec<_>>();
    let long = "a".repeat(129);
    let cases: Vec<(String, &str)> = vec![
        (json!({"users": many(1001)}).to_string(), "too_many"),
        (json!({"topics": many(1001)}).to_string(), "too_many"),
        (
            json!({"users": ["a"], "topics": many(1001)}).to_string(),
            "too_many",
        ),
        (json!({"users": []}).to_string(), "empty_list"),
        (json!({"topics": []}).to_string(), "empty_list"),
        (
            json!({"users": ["a"], "topics": []}).to_string(),
            "empty_list",
        ),
        ("{}".into(), "missing_field"),
        (json!({"users": null}).to_string(), "missing_field"),
        (json!({"users": ["a b"]}).to_string(), "invalid_user_id"),
        (json!({"users": [""]}).to_string(), "invalid_user_id"),
        (json!({"users": [long]}).to_string(), "invalid_user_id"),
        (
            json!({"users": ["ok", "#presence"]}).to_string(),
            "invalid_user_id",
        ),
        (json!({"users": ["é"]}).to_string(), "invalid_user_id"),
        (json!({"topics": ["a/b"]}).to_string(), "invalid_topic"),
        (
            json!({"topics": ["#presence"]}).to_string(),
            "invalid_topic",
        ),
        (json!({"topics": [long]}).to_string(), "invalid_topic"),
        (
            json!({"users": ["a"], "topic": ["t"]}).to_string(),
            "unknown_field",
        ),
        (json!({"user": ["a"]}).to_string(), "unknown_field"),
        ("nope".into(), "invalid_json"),
        ("".into(), "invalid_json"),
        (r#"{"users": ["a"]"#.into(), "invalid_json"),
        (json!({"users": "a"}).to_string(), "invalid_json"),
        (json!({"users": [1]}).to_string(), "invalid_json"),
        (json!(["a"]).to_string(), "invalid_json"),
    ];
    for (body, code) in &cases {
        let shown: String = body.chars().take(80).collect();
        let r = h.post("/api/presence", body).await;
        assert_error(&r, 400, code, &format!("POST /api/presence {shown}"));
    }

    // The limits themselves are accepted.
    let ok = "a".repeat(128);
    let r = presence_query(
        &h,
        json!({"users": many(1000), "topics": [ok.clone(), "x.y_z:1@2-3"]}),
    )
    .await;
    assert_eq!(r["users"].as_object().map(|m| m.len()), Some(1000), "{r}");
    assert!(r["users"].as_object().unwrap().values().all(|v| v == 0));
    assert_eq!(r["topics"], json!({ok.clone(): 0, "x.y_z:1@2-3": 0}));
    // Duplicates are answered once.
    assert_eq!(
        presence_query(&h, json!({"users": ["d", "d"]})).await,
        json!({"users": {"d": 0}, "topics": {}})
    );

    // The connections endpoint.
    let conn_cases = [
        ("/api/user/sse/connections", "missing_user_id"),
        ("/api/user/sse/connections?user=a", "missing_user_id"),
        ("/api/user/sse/connections?userId=", "invalid_user_id"),
        ("/api/user/sse/connections?userId=a%20b", "invalid_user_id"),
        ("/api/user/sse/connections?userId=a/b", "invalid_user_id"),
        (
            "/api/user/sse/connections?userId=%23presence",
            "invalid_user_id",
        ),
    ];
    for (path, code) in conn_cases {
        let r = h.get(path).await;
        assert_error(&r, 400, code, &format!("GET {path}"));
    }
    let path = format!("/api/user/sse/connections?userId={long}");
    assert_error(
        &h.get(&path).await,
        400,
        "invalid_user_id",
        "129-byte userId",
    );
    let path = format!("/api/user/sse/connections?userId={ok}");
    let r = h.get(&path).await;
    assert_eq!(r.status, 200, "128-byte userId: {}", r.body);
    assert_eq!(r.json(), json!({"userId": ok, "connections": []}));
}

#[tokio::test]
async fn presence_endpoints_need_the_publisher_credential() {
    const TOKEN: &str = "presence-publisher-token-0123456789";
    let h = Herald::start(&["--presence-linger", "1s", "--publisher-token", TOKEN]);
    let right = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");
    let body = json!({"users": ["a"], "topics": ["t"]}).to_string();
    let conns = "/api/user/sse/connections?userId=a";

    for (auth, what) in [
        (None, "no credential"),
        (Some(wrong.as_str()), "wrong token"),
    ] {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let r = request(
            h.addr,
            "POST",
            "/api/presence",
            &headers,
            Some(body.as_bytes()),
        )
        .await;
        assert_error_401(&r, &format!("POST /api/presence, {what}"));
        let r = request(h.addr, "GET", conns, &headers[1..], None).await;
        assert_error_401(&r, &format!("GET connections, {what}"));
        let c = SseClient::connect(h.addr, STREAM, &headers[1..]).await;
        let r = Response {
            status: c.status,
            headers: c.headers.clone(),
            body: c.body.clone(),
        };
        assert_error_401(&r, &format!("GET {STREAM}, {what}"));
    }
    // Bad input is still checked only after the credential.
    let r = request(h.addr, "POST", "/api/presence", &[], Some(b"nope")).await;
    assert_error_401(&r, "POST /api/presence, bad body, no credential");

    let auth = [("authorization", right.as_str())];
    let with_ct = [
        ("authorization", right.as_str()),
        ("content-type", "application/json"),
    ];
    let r = request(
        h.addr,
        "POST",
        "/api/presence",
        &with_ct,
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"users": {"a": 0}, "topics": {"t": 0}}));
    let r = request(h.addr, "GET", conns, &auth, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"userId": "a", "connections": []}));
    let mut p = open_presence_at(&h, STREAM, &auth).await;
    // And it works: a user's online comes through.
    let _u = h.subscribe_connected("userId=auth-user").await;
    expect_pres(&mut p, "online", "auth-user", "authenticated stream").await;
    let r = request(
        h.addr,
        "GET",
        "/api/user/sse/connections?userId=auth-user",
        &auth,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["connections"].as_array().map(Vec::len), Some(1));
    // Bad input with the credential is a 400.
    let r = request(h.addr, "POST", "/api/presence", &with_ct, Some(b"{}")).await;
    assert_error(&r, 400, "missing_field", "{} with the credential");
}

fn assert_error_401(r: &Response, what: &str) {
    assert_json_error(r, 401, what);
    let v = r.json();
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no message: {v}"
    );
}

#[tokio::test]
async fn presence_metrics_count_transitions_and_online_users() {
    let h = herald("3s");
    let mut p = open_presence(&h).await;
    let text = metrics_body(&h).await;
    assert_eq!(sample_sum(&text, "herald_presence_online_users"), Some(0.0));
    let metric = |text: &str, name: &str| {
        sample_sum(text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    };

    let a1 = h.subscribe_connected("userId=mx-a&connectionId=1").await;
    let _a2 = h.subscribe_connected("userId=mx-a&connectionId=2").await;
    let b = h.subscribe_connected("userId=mx-b").await;
    let _c = h.subscribe_connected("userId=mx-c").await;
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let e = next_pres(&mut p, "online").await;
        assert_eq!(e.event, "online", "{e:?}");
        assert!(seen.insert(e.user));
    }
    assert_eq!(
        seen,
        BTreeSet::from(["mx-a".to_string(), "mx-b".into(), "mx-c".into()])
    );
    let text = metrics_body(&h).await;
    let on = metric(&text, r#"herald_presence_events_total{event="online"}"#);
    assert!(on >= 3.0, "online events {on} < 3 seen");
    assert_eq!(on, 3.0, "a fresh pod counted {on} online events, saw 3");
    assert_eq!(
        metric(&text, r#"herald_presence_events_total{event="offline"}"#),
        0.0
    );
    assert_eq!(metric(&text, "herald_presence_online_users"), 3.0);

    // A closed user lingers: still online for the gauge.
    drop(b);
    drop(a1);
    wait_user_connections(&h, "mx-b", 0).await;
    wait_user_connections(&h, "mx-a", 1).await;
    let text = metrics_body(&h).await;
    assert_eq!(
        metric(&text, "herald_presence_online_users"),
        3.0,
        "a lingering user is online"
    );
    expect_pres(&mut p, "offline", "mx-b", "after the linger").await;
    let text = metrics_body(&h).await;
    assert_eq!(
        metric(&text, r#"herald_presence_events_total{event="offline"}"#),
        1.0
    );
    assert_eq!(
        metric(&text, r#"herald_presence_events_total{event="online"}"#),
        3.0
    );
    assert_eq!(metric(&text, "herald_presence_online_users"), 2.0);
    // The presence stream itself is no user.
    let stats = h.stats().await;
    assert_eq!(stats["users"], 2, "{stats}");
    assert_eq!(stats["connections"], 2, "{stats}");
}

#[tokio::test]
async fn a_disconnect_or_kick_of_the_last_connection_is_one_offline() {
    let h = herald("1s");
    let mut p = open_presence(&h).await;
    let mut one = h
        .subscribe_connected("userId=dc-dan&connectionId=one")
        .await;
    let mut two = h
        .subscribe_connected("userId=dc-dan&connectionId=two")
        .await;
    expect_pres(&mut p, "online", "dc-dan", "connect").await;
    let r = h
        .post(
            "/api/user/sse/disconnect?userId=dc-dan&connectionId=one",
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(one.wait_closed(WAIT).await);
    let closed = now_ms();
    let r = h
        .post(
            "/api/user/sse/disconnect?userId=dc-dan&connectionId=two",
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(two.wait_closed(WAIT).await);
    let off = expect_pres(&mut p, "offline", "dc-dan", "both disconnected").await;
    assert!(off.at + SLACK_MS >= closed, "{off:?} before {closed}");

    // A kick (reconnect=false) of a user with two streams: one offline.
    let mut k1 = h.subscribe_connected("userId=dc-kim&connectionId=1").await;
    let mut k2 = h.subscribe_connected("userId=dc-kim&connectionId=2").await;
    expect_pres(&mut p, "online", "dc-kim", "connect").await;
    let r = h
        .post(
            "/api/user/sse/disconnect?userId=dc-kim&reconnect=false&for=1s",
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(k1.wait_closed(WAIT).await && k2.wait_closed(WAIT).await);
    expect_pres(&mut p, "offline", "dc-kim", "kicked").await;
    // Nothing more: a marker's online, then its offline, come next.
    let m = h.subscribe_connected("userId=dc-marker").await;
    expect_pres(&mut p, "online", "dc-marker", "marker").await;
    drop(m);
    expect_pres(&mut p, "offline", "dc-marker", "timer").await;
}

/// The contract's body is an object with `users` and/or `topics`; a JSON
/// array is not one (serde would read a struct from a sequence).
#[tokio::test]
async fn a_json_array_is_not_a_presence_query() {
    let h = herald("1s");
    for body in [
        r#"[["a"],["t"]]"#,
        r#"[["a"]]"#,
        "[]",
        r#""a""#,
        "1",
        "null",
    ] {
        let r = h.post("/api/presence", body).await;
        assert_error(
            &r,
            400,
            "invalid_json",
            &format!("POST /api/presence {body}"),
        );
    }
}
