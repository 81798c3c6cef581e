//! Pending events: user-targeted events for a user with no open connection wait
//! for the user's next connect (oldest first, then removed), bounded per user and
//! by their TTL.

mod support;

use serde_json::json;
use support::check::{self, next_ev};
use support::{Herald, SseClient};

async fn publish_to(h: &Herald, user: &str, data: &str) -> String {
    h.publish(json!({"data": data, "target": {"users": [user]}}))
        .await
}

/// Publish a broadcast and assert it is the next event on `c`: nothing else was
/// queued before it.
async fn assert_nothing_before_live(h: &Herald, c: &mut SseClient, what: &str) {
    let live = h.publish(json!({"data": "live", "target": "all"})).await;
    let ev = next_ev(c, "the live event").await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(live.as_str()), "live"),
        "{what}: got {ev:?} before the live event"
    );
}

#[tokio::test]
async fn offline_user_gets_pending_events_after_connected_oldest_first() {
    let h = Herald::start(&["--shards", "2"]);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish_to(&h, "later", &format!("p{i}")).await);
    }
    let mut c = h.subscribe("userId=later").await;
    let first = c.next_event(support::WAIT).await.expect("CONNECTED");
    assert_eq!(
        first.event, "CONNECTED",
        "pending events must follow CONNECTED"
    );
    for (i, id) in ids.iter().enumerate() {
        let ev = next_ev(&mut c, "pending event").await;
        assert_eq!(ev.id.as_ref(), Some(id), "pending #{i} out of order");
        assert_eq!(ev.data, format!("p{i}"));
    }
    assert_nothing_before_live(&h, &mut c, "after the pending events").await;
}

#[tokio::test]
async fn pending_events_are_delivered_once() {
    let h = Herald::start(&["--shards", "2"]);
    publish_to(&h, "once", "p0").await;
    publish_to(&h, "once", "p1").await;
    {
        let mut c = h.subscribe_connected("userId=once").await;
        assert_eq!(next_ev(&mut c, "p0").await.data, "p0");
        assert_eq!(next_ev(&mut c, "p1").await.data, "p1");
    }
    h.wait_connections(0).await;
    let mut again = h.subscribe_connected("userId=once").await;
    assert_nothing_before_live(&h, &mut again, "second connect").await;
    assert_eq!(
        check::sample_sum(&check::metrics_body(&h).await, "herald_pending_events"),
        Some(0.0)
    );
}

#[tokio::test]
async fn pending_goes_to_the_first_connect_only() {
    let h = Herald::start(&["--shards", "2"]);
    publish_to(&h, "twice", "p0").await;
    let mut first = h.subscribe_connected("userId=twice&connectionId=a").await;
    assert_eq!(next_ev(&mut first, "pending").await.data, "p0");
    // A second, concurrent connection of the same user starts with nothing.
    let mut second = h.subscribe_connected("userId=twice&connectionId=b").await;
    assert_nothing_before_live(&h, &mut second, "second connection").await;
}

#[tokio::test]
async fn max_pending_keeps_only_the_newest() {
    let h = Herald::start(&["--shards", "2", "--max-pending", "3"]);
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(publish_to(&h, "full", &format!("p{i}")).await);
    }
    let text = check::metrics_body(&h).await;
    assert_eq!(check::sample_sum(&text, "herald_pending_events"), Some(3.0));
    let dropped = check::sample_sum(&text, "herald_events_dropped_total").unwrap_or(0.0);
    assert!(
        dropped >= 4.0,
        "the 4 overflowed pending events must be counted as dropped:\n{text}"
    );

    let mut c = h.subscribe_connected("userId=full").await;
    for (i, id) in ids.iter().enumerate().skip(4) {
        let ev = next_ev(&mut c, "newest pending").await;
        assert_eq!(ev.id.as_ref(), Some(id), "expected p{i}, got {ev:?}");
        assert_eq!(ev.data, format!("p{i}"));
    }
    assert_nothing_before_live(&h, &mut c, "after the newest 3").await;
}

#[tokio::test]
async fn max_pending_is_per_user() {
    let h = Herald::start(&["--shards", "1", "--max-pending", "2"]);
    for i in 0..2 {
        publish_to(&h, "pu1", &format!("a{i}")).await;
        publish_to(&h, "pu2", &format!("b{i}")).await;
    }
    let mut c1 = h.subscribe_connected("userId=pu1").await;
    let mut c2 = h.subscribe_connected("userId=pu2").await;
    assert_eq!(next_ev(&mut c1, "a0").await.data, "a0");
    assert_eq!(next_ev(&mut c1, "a1").await.data, "a1");
    assert_eq!(next_ev(&mut c2, "b0").await.data, "b0");
    assert_eq!(next_ev(&mut c2, "b1").await.data, "b1");
}

#[tokio::test]
async fn expired_pending_events_are_removed() {
    let h = Herald::start(&["--shards", "2", "--cleanup-interval", "200ms"]);
    h.publish(json!({"data": "short", "target": {"users": ["ttl-user"]}, "ttlSeconds": 1}))
        .await;
    assert_eq!(
        check::sample_sum(&check::metrics_body(&h).await, "herald_pending_events"),
        Some(1.0),
        "the event must be pending first"
    );
    // Expires after 1 s; the cleanup job (every 200 ms) removes it.
    check::wait_metric(&h, "herald_pending_events", |v| v == 0.0).await;
    let mut c = h.subscribe_connected("userId=ttl-user").await;
    assert_nothing_before_live(&h, &mut c, "expired event").await;
}

#[tokio::test]
async fn expiry_removes_only_expired_events() {
    let h = Herald::start(&["--shards", "2", "--cleanup-interval", "200ms"]);
    h.publish(json!({"data": "short", "target": {"users": ["mix"]}, "ttlSeconds": 1}))
        .await;
    let kept = h
        .publish(json!({"data": "long", "target": {"users": ["mix"]}, "ttlSeconds": 3600}))
        .await;
    let kept_default = publish_to(&h, "mix", "default-ttl").await;
    check::wait_metric(&h, "herald_pending_events", |v| v == 2.0).await;
    let mut c = h.subscribe_connected("userId=mix").await;
    let ev = next_ev(&mut c, "long-lived pending").await;
    assert_eq!((ev.id.as_ref(), ev.data.as_str()), (Some(&kept), "long"));
    let ev = next_ev(&mut c, "default-ttl pending").await;
    assert_eq!(ev.id.as_ref(), Some(&kept_default));
    assert_nothing_before_live(&h, &mut c, "after the unexpired events").await;
}

#[tokio::test]
async fn online_users_events_are_not_kept_as_pending() {
    let h = Herald::start(&["--shards", "2"]);
    {
        let mut c = h.subscribe_connected("userId=online").await;
        let id = publish_to(&h, "online", "live-then").await;
        let ev = next_ev(&mut c, "live delivery").await;
        assert_eq!(ev.id.as_ref(), Some(&id));
        assert_eq!(
            check::sample_sum(&check::metrics_body(&h).await, "herald_pending_events"),
            Some(0.0)
        );
    }
    h.wait_connections(0).await;
    let mut again = h.subscribe_connected("userId=online").await;
    assert_nothing_before_live(&h, &mut again, "reconnect of an online user").await;
}

#[tokio::test]
async fn mixed_targets_split_between_live_and_pending() {
    let h = Herald::start(&["--shards", "2"]);
    let mut on = h.subscribe_connected("userId=here").await;
    let id = h
        .publish(json!({"data": "both", "target": {"users": ["here", "away"]}}))
        .await;
    let ev = next_ev(&mut on, "live").await;
    assert_eq!(ev.id.as_ref(), Some(&id));
    let mut away = h.subscribe_connected("userId=away").await;
    let ev = next_ev(&mut away, "pending").await;
    assert_eq!((ev.id.as_ref(), ev.data.as_str()), (Some(&id), "both"));
}

#[tokio::test]
async fn events_published_while_connecting_arrive_exactly_once_in_order() {
    const TOTAL: usize = 300;
    let h = Herald::start(&["--shards", "2", "--max-pending", "1000"]);
    let addr = h.addr;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let publisher = tokio::spawn(async move {
        let mut started = Some(started_tx);
        let mut ids = Vec::with_capacity(TOTAL);
        for i in 0..TOTAL {
            let id = support::ops::publish_at(
                addr,
                &json!({"data": i.to_string(), "target": {"users": ["racer"]}}),
            )
            .await;
            ids.push(id);
            if i == 50 {
                let _ = started.take().map(|tx| tx.send(()));
            }
        }
        ids
    });
    tokio::time::timeout(support::WAIT, started_rx)
        .await
        .expect("publisher started in time")
        .expect("publisher running");
    // Connect while the publisher is still going: what was published before is
    // pending, what comes after is live; each exactly once, in id order.
    let mut c = h.subscribe_connected("userId=racer").await;
    let ids = tokio::time::timeout(support::WAIT * 3, publisher)
        .await
        .expect("publisher in time")
        .expect("publisher task");
    let got: Vec<String> = check::next_evs(&mut c, TOTAL, "every event")
        .await
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(got, ids);
    assert_nothing_before_live(&h, &mut c, "after all events").await;
}
