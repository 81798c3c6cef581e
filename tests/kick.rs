//! Kicking a user so that it sticks: `POST /api/user/sse/disconnect?userId=U
//! &reconnect=false[&for=D]` ends every stream of the user and answers its
//! connects `204 No Content` (which makes an EventSource stop for good) for D
//! (default 5 minutes), on every pod, a pod started later included. The browser
//! side (an EventSource reaching CLOSED) is in tests/browser.rs.

mod support;

use std::time::{Duration, Instant};

use support::redis::{wait_cluster_all, Cluster};
use support::{Herald, SseClient, WAIT};

async fn connect_status(h: &Herald, user: &str) -> u16 {
    SseClient::connect(h.addr, &format!("/api/user/sse/connect?userId={user}"), &[])
        .await
        .status
}

#[tokio::test]
async fn a_kicked_user_is_answered_204_until_the_block_ends() {
    let h = Herald::start(&[]);
    let mut one = h
        .subscribe_connected("userId=kick-kim&connectionId=tab-1")
        .await;
    let mut two = h
        .subscribe_connected("userId=kick-kim&connectionId=tab-2")
        .await;
    let mut other = h.subscribe_connected("userId=kick-lee").await;
    let r = h
        .post(
            "/api/user/sse/disconnect?userId=kick-kim&reconnect=false&for=2s",
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["disconnected"], 2, "{v}");
    assert!(v["blockedUntil"].as_u64().is_some(), "{v}");
    assert!(one.wait_closed(WAIT).await && two.wait_closed(WAIT).await);
    let kicked_at = Instant::now();
    // Refused with 204 and no body; others unaffected.
    let c = SseClient::connect(h.addr, "/api/user/sse/connect?userId=kick-kim", &[]).await;
    assert_eq!(c.status, 204);
    assert!(c.body.is_empty(), "{:?}", c.body);
    assert_eq!(connect_status(&h, "kick-lee").await, 200);
    // The other user's stream stays open.
    h.publish(serde_json::json!({"data": "still here", "target": {"users": ["kick-lee"]}}))
        .await;
    assert_eq!(
        other.next_non_heartbeat(WAIT).await.expect("an event").data,
        "still here"
    );
    // Once the block ends, the user connects again.
    let until = Instant::now() + WAIT;
    while connect_status(&h, "kick-kim").await != 200 {
        assert!(Instant::now() < until, "still refused after the block");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kicked_at.elapsed() >= Duration::from_millis(1500));
    // Without reconnect=false a connection id is still required.
    let r = h.post("/api/user/sse/disconnect?userId=kick-kim", "").await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn a_kick_holds_on_every_pod_and_on_a_pod_started_later() {
    need_redis!();
    let cl = Cluster::shared("kick");
    let a = cl.pod(&[]);
    let b = cl.pod(&[]);
    let mut on_b = b.subscribe_connected("userId=kick-ned").await;
    wait_cluster_all(&[&a, &b], 2, 1, 1).await;
    let r = a
        .post(
            "/api/user/sse/disconnect?userId=kick-ned&reconnect=false",
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        on_b.wait_closed(WAIT).await,
        "the stream on the other pod ends"
    );
    for h in [&a, &b] {
        let until = Instant::now() + WAIT;
        // The other pod learns it through the broadcast stream (milliseconds).
        while connect_status(h, "kick-ned").await != 204 {
            assert!(
                Instant::now() < until,
                "pod {} still lets kick-ned in",
                h.pod_id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let c = cl.pod(&[]);
    assert_eq!(
        connect_status(&c, "kick-ned").await,
        204,
        "a pod started later"
    );
    assert_eq!(connect_status(&c, "kick-other").await, 200);
}
