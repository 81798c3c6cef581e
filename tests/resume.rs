//! Resuming with `Last-Event-ID` (or `lastEventId`): exactly the missed events
//! this connection would have received, in order and once, then live ones; an id
//! herald cannot resume from gives `200` and one `RESYNC`.

mod support;

use serde_json::json;
use support::check::{next_ev, next_evs};
use support::{Herald, SseClient, SseEvent, WAIT};

const PATH: &str = "/api/user/sse/connect";

/// Connect with `query` and optional `Last-Event-ID`; assert 200 and consume
/// CONNECTED.
async fn resume(h: &Herald, query: &str, last_event_id: Option<&str>) -> SseClient {
    let headers: Vec<(&str, &str)> = last_event_id
        .map(|id| vec![("Last-Event-ID", id)])
        .unwrap_or_default();
    let mut c = SseClient::connect(h.addr, &format!("{PATH}?{query}"), &headers).await;
    assert_eq!(
        c.status, 200,
        "a resume must be answered 200 (body {:?})",
        c.body
    );
    let ev = c.next_event(WAIT).await.expect("CONNECTED");
    assert_eq!(ev.event, "CONNECTED");
    c
}

fn assert_resync(ev: &SseEvent, what: &str) {
    assert_eq!(ev.event, "RESYNC", "{what}: expected RESYNC, got {ev:?}");
    assert_eq!(ev.id, None, "{what}: RESYNC must carry no id");
}

async fn publish(h: &Herald, data: &str, target: serde_json::Value) -> String {
    h.publish(json!({"data": data, "target": target})).await
}

/// Publish a broadcast and assert it is the next event on `c`.
async fn assert_next_is_live(h: &Herald, c: &mut SseClient, what: &str) {
    let live = publish(h, "live", json!("all")).await;
    let ev = next_ev(c, "the live event").await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(live.as_str()), "live"),
        "{what}: got {ev:?} instead of the live event"
    );
}

/// A stream that has seen two events, then went away; returns the ids seen.
async fn seen_two_then_gone(h: &Herald, user: &str) -> (String, String) {
    let mut c = h.subscribe_connected(&format!("userId={user}")).await;
    let e1 = publish(h, "e1", json!("all")).await;
    let e2 = publish(h, "e2", json!({"users": [user]})).await;
    let got: Vec<_> = next_evs(&mut c, 2, "e1, e2")
        .await
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(got, vec![e1.clone(), e2.clone()]);
    assert_eq!(c.parser.last_event_id, e2);
    drop(c);
    h.wait_connections(0).await;
    (e1, e2)
}

#[tokio::test]
async fn last_event_id_header_replays_exactly_the_missed_events() {
    let h = Herald::start(&["--shards", "2"]);
    let (_, e2) = seen_two_then_gone(&h, "ru").await;
    let e3 = publish(&h, "e3", json!("all")).await;
    let e4 = publish(&h, "e4", json!({"users": ["ru"]})).await;
    let e5 = publish(&h, "e5", json!("all")).await;

    let mut c = resume(&h, "userId=ru", Some(&e2)).await;
    let got: Vec<(String, String)> = next_evs(&mut c, 3, "replay")
        .await
        .into_iter()
        .map(|e| (e.id.unwrap(), e.data))
        .collect();
    assert_eq!(
        got,
        vec![
            (e3, "e3".to_string()),
            (e4, "e4".to_string()),
            (e5, "e5".to_string())
        ]
    );
    // Then live events, and nothing replayed twice.
    assert_next_is_live(&h, &mut c, "after the replay").await;
    assert_next_is_live(&h, &mut c, "second live").await;
}

#[tokio::test]
async fn resume_from_the_latest_id_replays_nothing() {
    let h = Herald::start(&["--shards", "2"]);
    let (_, e2) = seen_two_then_gone(&h, "uptodate").await;
    let mut c = resume(&h, "userId=uptodate", Some(&e2)).await;
    assert_next_is_live(&h, &mut c, "nothing was missed").await;
}

#[tokio::test]
async fn resume_does_not_repeat_what_was_pending() {
    let h = Herald::start(&["--shards", "2"]);
    let (_, e2) = seen_two_then_gone(&h, "rp").await;
    // While offline: user events (also kept as pending) and a broadcast.
    let e3 = publish(&h, "e3", json!({"users": ["rp"]})).await;
    let e4 = publish(&h, "e4", json!("all")).await;
    {
        let mut c = resume(&h, "userId=rp&connectionId=c1", Some(&e2)).await;
        let ids: Vec<String> = next_evs(&mut c, 2, "replay")
            .await
            .into_iter()
            .map(|e| e.id.unwrap())
            .collect();
        assert_eq!(ids, vec![e3, e4]);
        assert_next_is_live(&h, &mut c, "replay then live, each once").await;
    }
    h.wait_connections(0).await;
    // The replayed user event is not handed out again as pending.
    let mut c = h.subscribe_connected("userId=rp&connectionId=c2").await;
    assert_next_is_live(&h, &mut c, "a later plain connect").await;
}

#[tokio::test]
async fn last_event_id_query_parameter_resumes_too() {
    let h = Herald::start(&["--shards", "2"]);
    let (_, e2) = seen_two_then_gone(&h, "rq").await;
    let e3 = publish(&h, "e3", json!("all")).await;
    let mut c = resume(&h, &format!("userId=rq&lastEventId={e2}"), None).await;
    assert_eq!(next_ev(&mut c, "replay").await.id, Some(e3));
    assert_next_is_live(&h, &mut c, "after the replay").await;
}

#[tokio::test]
async fn header_wins_over_query_parameter() {
    let h = Herald::start(&["--shards", "2"]);
    let (e1, e2) = seen_two_then_gone(&h, "rw").await;
    let e3 = publish(&h, "e3", json!("all")).await;

    // Query says e1 (would replay e2, e3), header says e2: only e3.
    let mut c = resume(&h, &format!("userId=rw&lastEventId={e1}"), Some(&e2)).await;
    assert_eq!(
        next_ev(&mut c, "replay from the header's id").await.id,
        Some(e3.clone())
    );
    assert_next_is_live(&h, &mut c, "header resume").await;
    drop(c);
    h.wait_connections(0).await;

    // Query garbage, header valid: a replay, not RESYNC.
    let mut c = resume(&h, "userId=rw&lastEventId=garbage", Some(&e2)).await;
    let ev = next_ev(&mut c, "replay").await;
    assert_eq!(ev.id, Some(e3), "the header's id must be used: {ev:?}");
    drop(c);
    h.wait_connections(0).await;

    // Query valid, header garbage: the header still wins, so RESYNC.
    let mut c = resume(&h, &format!("userId=rw&lastEventId={e2}"), Some("garbage")).await;
    assert_resync(&next_ev(&mut c, "RESYNC").await, "garbage header");
}

#[tokio::test]
async fn replay_includes_only_this_connections_events() {
    let h = Herald::start(&["--shards", "2"]);
    let mut c = h.subscribe_connected("userId=rf&topics=t1,t3").await;
    let e0 = publish(&h, "e0", json!("all")).await;
    assert_eq!(next_ev(&mut c, "e0").await.id.as_ref(), Some(&e0));
    drop(c);
    h.wait_connections(0).await;

    let a = publish(&h, "all", json!("all")).await;
    let b = publish(&h, "mine", json!({"users": ["rf"]})).await;
    publish(&h, "other user", json!({"users": ["someone-else"]})).await;
    let d = publish(&h, "t1", json!({"topics": ["t1"]})).await;
    publish(&h, "t2", json!({"topics": ["t2"]})).await;
    let f = publish(&h, "t2+t3", json!({"topics": ["t2", "t3"]})).await;
    publish(&h, "t4", json!({"topics": ["t4"]})).await;
    let g = publish(&h, "users incl. me", json!({"users": ["x", "rf"]})).await;

    let mut c = resume(&h, "userId=rf&topics=t1,t3", Some(&e0)).await;
    let ids: Vec<String> = next_evs(&mut c, 5, "replay")
        .await
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(ids, vec![a, b, d, f, g]);
    assert_next_is_live(&h, &mut c, "nothing else replayed").await;
}

#[tokio::test]
async fn unknown_ids_give_200_and_one_resync() {
    let h = Herald::start(&["--shards", "2"]);
    let (_, e2) = seen_two_then_gone(&h, "ru-seed").await;
    let future = (e2.parse::<u64>().unwrap() + 1_000_000_000).to_string();
    for (i, bad) in [
        "garbage",
        "0",
        future.as_str(),
        "-1",
        "99999999999999999999999",
    ]
    .into_iter()
    .enumerate()
    {
        for via_header in [true, false] {
            let user = format!("unk-{i}-{via_header}");
            let mut c = if via_header {
                resume(&h, &format!("userId={user}"), Some(bad)).await
            } else {
                resume(&h, &format!("userId={user}&lastEventId={bad}"), None).await
            };
            let what = format!("id {bad:?} (header: {via_header})");
            assert_resync(&next_ev(&mut c, "RESYNC").await, &what);
            assert_eq!(
                c.parser.last_event_id, "",
                "{what}: RESYNC moved the resume point"
            );
            // Exactly one RESYNC, then live events.
            assert_next_is_live(&h, &mut c, &what).await;
        }
    }
}

#[tokio::test]
async fn resume_older_than_history_gives_resync() {
    let h = Herald::start(&["--shards", "2", "--history-events", "3"]);
    let mut c = h.subscribe_connected("userId=rh").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(publish(&h, &format!("e{i}"), json!("all")).await);
    }
    let got: Vec<String> = next_evs(&mut c, 6, "events")
        .await
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(got, ids);
    drop(c);
    h.wait_connections(0).await;

    // Only e3, e4, e5 are retained: resuming after e0 or e1 missed too much.
    for old in [&ids[0], &ids[1]] {
        let mut c = resume(&h, "userId=rh", Some(old)).await;
        assert_resync(&next_ev(&mut c, "RESYNC").await, "resume before history");
        assert_next_is_live(&h, &mut c, "after RESYNC").await;
        drop(c);
        h.wait_connections(0).await;
    }
}

#[tokio::test]
async fn resume_inside_history_bound_replays() {
    let h = Herald::start(&["--shards", "2", "--history-events", "3"]);
    let mut c = h.subscribe_connected("userId=rb").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(publish(&h, &format!("e{i}"), json!("all")).await);
    }
    next_evs(&mut c, 6, "events").await;
    drop(c);
    h.wait_connections(0).await;
    // After e2, the missed events e3, e4, e5 are exactly the 3 retained.
    let mut c = resume(&h, "userId=rb", Some(&ids[2])).await;
    let got: Vec<String> = next_evs(&mut c, 3, "replay")
        .await
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(got, ids[3..].to_vec());
    assert_next_is_live(&h, &mut c, "after the replay").await;
}

#[tokio::test]
async fn id_from_before_a_restart_gives_resync() {
    let old_id = {
        let h = Herald::start(&["--shards", "2"]);
        let mut c = h.subscribe_connected("userId=rr").await;
        let id = publish(&h, "before", json!("all")).await;
        let ev = next_ev(&mut c, "event before the restart").await;
        assert_eq!(ev.id.as_ref(), Some(&id));
        id
        // `h` is SIGKILLed here.
    };
    let h = Herald::start(&["--shards", "2"]);
    for i in 0..3 {
        publish(&h, &format!("new-{i}"), json!("all")).await;
    }
    let mut c = resume(&h, "userId=rr", Some(&old_id)).await;
    assert_resync(&next_ev(&mut c, "RESYNC").await, "id of the old process");
    assert_next_is_live(&h, &mut c, "after RESYNC").await;

    // Also right after a restart, before anything is published.
    let h2 = Herald::start(&["--shards", "2"]);
    let mut c = resume(&h2, "userId=rr", Some(&old_id)).await;
    assert_resync(
        &next_ev(&mut c, "RESYNC").await,
        "old id on a fresh process",
    );
    assert_next_is_live(&h2, &mut c, "after RESYNC").await;
}

#[tokio::test]
async fn resume_replacing_a_stream_that_is_still_open() {
    let h = Herald::start(&["--shards", "2"]);
    let mut old = h.subscribe_connected("userId=rx&connectionId=tab").await;
    let e1 = publish(&h, "e1", json!("all")).await;
    assert_eq!(next_ev(&mut old, "e1").await.id.as_ref(), Some(&e1));
    // The client lost e2 and e3 on the way and reconnects before the server
    // noticed the old stream was dead.
    let e2 = publish(&h, "e2", json!({"users": ["rx"]})).await;
    let e3 = publish(&h, "e3", json!("all")).await;
    let mut new = resume(&h, "userId=rx&connectionId=tab", Some(&e1)).await;
    let ids: Vec<String> = next_evs(&mut new, 2, "replay")
        .await
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(ids, vec![e2, e3]);
    assert!(old.wait_closed(WAIT).await, "the replaced stream must end");
    assert_next_is_live(&h, &mut new, "after the replay").await;
    h.wait_connections(1).await;
}

#[tokio::test]
async fn resume_while_publishing_has_no_gap_and_no_duplicate() {
    const TOTAL: usize = 400;
    let h = Herald::start(&["--shards", "2"]);
    let mut first = h.subscribe_connected("userId=rc&connectionId=a").await;
    let addr = h.addr;
    let publisher = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(TOTAL);
        for i in 0..TOTAL {
            let target = if i % 2 == 0 {
                json!("all")
            } else {
                json!({"users": ["rc"]})
            };
            let id =
                support::ops::publish_at(addr, &json!({"data": i.to_string(), "target": target}))
                    .await;
            ids.push(id);
        }
        ids
    });
    // Read a few, then go away mid-stream and resume from the last one seen.
    let seen = next_evs(&mut first, 20, "first events").await;
    let last = seen.last().unwrap().id.clone().unwrap();
    drop(first);
    let mut second = resume(&h, "userId=rc&connectionId=b", Some(&last)).await;
    let ids = tokio::time::timeout(WAIT * 3, publisher)
        .await
        .expect("publisher in time")
        .expect("publisher task");
    let from = ids.iter().position(|id| *id == last).expect("seen id") + 1;
    let want = &ids[from..];
    let got: Vec<String> = next_evs(&mut second, want.len(), "rest after resume")
        .await
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(got, want, "the resumed stream must continue exactly");
    assert_next_is_live(&h, &mut second, "nothing after the last").await;
}

#[tokio::test]
async fn resume_on_a_keep_alive_connection() {
    let h = Herald::start(&["--shards", "1"]);
    let (_, e2) = seen_two_then_gone(&h, "rk").await;
    let e3 = publish(&h, "e3", json!("all")).await;
    let mut ka = support::ops::KeepAlive::connect(h.addr).await;
    assert_eq!(ka.send("GET", "/health/ready", &[], None).await.status, 200);
    let mut c = ka
        .into_sse(
            &format!("{PATH}?userId=rk&lastEventId=garbage"),
            &[("Last-Event-ID", &e2)],
        )
        .await;
    assert_eq!(c.status, 200);
    assert_eq!(next_ev(&mut c, "CONNECTED").await.event, "CONNECTED");
    assert_eq!(next_ev(&mut c, "replay").await.id, Some(e3));
    assert_next_is_live(&h, &mut c, "after the replay").await;
}
