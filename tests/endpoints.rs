//! Disconnect, stats, health and metrics.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::check::{self, assert_json_error, next_ev, sample_sum, samples};
use support::{Herald, WAIT};

#[tokio::test]
async fn disconnect_ends_that_stream_only() {
    let h = Herald::start(&["--shards", "2"]);
    // Several pairs, so the disconnect request and the stream land on different
    // shards some of the time.
    let mut gone = Vec::new();
    let mut kept = Vec::new();
    for i in 0..8 {
        gone.push(
            h.subscribe_connected(&format!("userId=d{i}&connectionId=bye"))
                .await,
        );
        kept.push(
            h.subscribe_connected(&format!("userId=d{i}&connectionId=stay"))
                .await,
        );
    }
    for (i, c) in gone.iter_mut().enumerate() {
        let r = h
            .post(
                &format!("/api/user/sse/disconnect?userId=d{i}&connectionId=bye"),
                "",
            )
            .await;
        assert_eq!(r.status, 200, "disconnect d{i}: {}", r.body);
        assert_eq!(r.json(), json!({"disconnected": true}));
        assert!(c.wait_closed(WAIT).await, "stream d{i}/bye did not end");
    }
    h.wait_connections(8).await;
    for (i, c) in kept.iter_mut().enumerate() {
        let id = h
            .publish(json!({"data": "still here", "target": {"users": [format!("d{i}")]}}))
            .await;
        let ev = next_ev(c, "event on the kept stream").await;
        assert_eq!(ev.id.as_ref(), Some(&id));
    }
    // Disconnecting it again: no such connection any more.
    let r = h
        .post("/api/user/sse/disconnect?userId=d0&connectionId=bye", "")
        .await;
    assert_json_error(&r, 404, "second disconnect");
}

#[tokio::test]
async fn disconnect_of_unknown_connection_is_404() {
    let h = Herald::start(&["--shards", "2"]);
    let _c = h.subscribe_connected("userId=known&connectionId=c1").await;
    for q in [
        "userId=nobody&connectionId=c1",
        "userId=known&connectionId=other",
    ] {
        let r = h.post(&format!("/api/user/sse/disconnect?{q}"), "").await;
        assert_json_error(&r, 404, q);
    }
    h.wait_connections(1).await;
}

#[tokio::test]
async fn disconnect_without_params_is_400() {
    let h = Herald::start(&["--shards", "1"]);
    for q in [
        "",
        "?userId=u1",
        "?connectionId=c1",
        "?userId=&connectionId=c1",
        "?userId=bad%20name&connectionId=c1",
    ] {
        let r = h.post(&format!("/api/user/sse/disconnect{q}"), "").await;
        assert_json_error(&r, 400, &format!("disconnect{q}"));
    }
}

/// Poll stats until the per-shard counts add up to `connections` (both are
/// updated as streams open and close); returns those stats.
async fn settled_stats(h: &Herald, connections: u64) -> serde_json::Value {
    h.wait_connections(connections).await;
    let until = Instant::now() + WAIT;
    loop {
        let s = h.stats().await;
        let sum: u64 = s["shards"]
            .as_array()
            .expect("shards is an array")
            .iter()
            .map(|e| e["connections"].as_u64().expect("shard connections"))
            .sum();
        if sum == connections && s["connections"] == connections {
            return s;
        }
        assert!(
            Instant::now() < until,
            "shards never summed to {connections}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stats_report_pod_connections_users_and_shards() {
    let h = Herald::start(&["--shards", "3"]);
    let s = settled_stats(&h, 0).await;
    assert_eq!(s["podId"], h.pod_id.as_str());
    assert_eq!(s["users"], 0);

    let mut streams = Vec::new();
    for (user, conn) in [
        ("s1", "a"),
        ("s1", "b"),
        ("s1", "c"),
        ("s2", "a"),
        ("s2", "b"),
        ("s3", "a"),
        ("s4", "a"),
        ("s5", "a"),
        ("s5", "b"),
    ] {
        streams.push(
            h.subscribe_connected(&format!("userId={user}&connectionId={conn}"))
                .await,
        );
    }
    let s = settled_stats(&h, 9).await;
    assert_eq!(s["users"], 5, "{s}");
    assert_eq!(s["podId"], h.pod_id.as_str());
    let shards = s["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3, "--shards 3 must give 3 entries: {s}");
    for (i, e) in shards.iter().enumerate() {
        assert_eq!(e["shard"], i as u64, "{s}");
    }

    // Closing streams is reflected too.
    streams.truncate(4);
    let s = settled_stats(&h, 4).await;
    assert_eq!(s["users"], 2, "{s}");
}

#[tokio::test]
async fn health_endpoints_answer_200() {
    let h = Herald::start(&["--shards", "1"]);
    assert_eq!(h.get("/health/live").await.status, 200);
    assert_eq!(h.get("/health/ready").await.status, 200);
}

/// Whether every sample line names a `herald_` metric and has a numeric value.
fn assert_prometheus_text(text: &str) {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if let Some(r) = rest
                .strip_prefix("TYPE ")
                .or_else(|| rest.strip_prefix("HELP "))
            {
                assert!(r.starts_with("herald_"), "metric not prefixed: {line:?}");
            }
            continue;
        }
        assert!(line.starts_with("herald_"), "metric not prefixed: {line:?}");
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad sample value in {line:?}"
        );
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_the_contract_names() {
    let h = Herald::start(&[
        "--shards",
        "2",
        "--heartbeat-interval",
        "200ms",
        "--max-pending",
        "1",
    ]);
    // Some traffic: streams, publishes of each kind, a disconnect, and a pending
    // overflow (which counts a dropped event).
    let mut c = h
        .subscribe_connected("userId=m1&connectionId=c1&topics=t")
        .await;
    let _c2 = h.subscribe_connected("userId=m2&connectionId=c2").await;
    h.publish(json!({"data": "a", "target": "all"})).await;
    h.publish(json!({"data": "t", "target": {"topics": ["t"]}}))
        .await;
    h.publish(json!({"data": "u", "target": {"users": ["m1"]}}))
        .await;
    for d in ["p1", "p2"] {
        h.publish(json!({"data": d, "target": {"users": ["offline-m"]}}))
            .await;
    }
    for _ in 0..3 {
        next_ev(&mut c, "delivered event").await;
    }
    let r = h
        .post("/api/user/sse/disconnect?userId=m2&connectionId=c2", "")
        .await;
    assert_eq!(r.status, 200);
    h.wait_connections(1).await;

    let r = h.get("/metrics").await;
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");

    // Counters that are flushed or ticked asynchronously: wait for them.
    check::wait_metric(&h, "herald_heartbeat_batch_duration_seconds_count", |v| {
        v >= 1.0
    })
    .await;
    check::wait_metric(&h, "herald_events_delivered_total", |v| v >= 3.0).await;
    check::wait_metric(&h, "herald_publish_to_socket_seconds_count", |v| v >= 3.0).await;
    check::wait_metric(&h, "herald_connections_closed_total", |v| v >= 1.0).await;

    let text = check::metrics_body(&h).await;
    assert_prometheus_text(&text);
    let must = |name: &str| {
        sample_sum(&text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    };
    assert_eq!(must("herald_connections_open"), 1.0);
    assert!(must("herald_connections_opened_total") >= 2.0);
    assert!(must("herald_connections_closed_total") >= 1.0);
    assert!(must("herald_events_published_total") >= 5.0);
    assert!(must("herald_events_delivered_total") >= 3.0);
    assert!(
        must("herald_events_dropped_total") >= 1.0,
        "pending overflow is a drop"
    );
    assert!(must("herald_heartbeat_batch_duration_seconds_count") >= 1.0);
    assert_eq!(must("herald_redis_errors_total"), 0.0);
    assert_eq!(must("herald_pending_events"), 1.0);

    // Publish-to-socket latency is a histogram with le-labelled buckets.
    assert!(
        text.contains("# TYPE herald_publish_to_socket_seconds histogram"),
        "publish-to-socket must be typed histogram:\n{text}"
    );
    assert!(!text.contains("# TYPE herald_publish_to_socket_seconds summary"));
    let buckets = samples(&text, "herald_publish_to_socket_seconds_bucket");
    assert!(
        buckets.len() >= 2,
        "histogram needs several buckets:\n{text}"
    );
    assert!(buckets.iter().all(|(l, _)| l.contains("le=\"")));
    assert!(buckets.iter().any(|(l, _)| l.contains("le=\"+Inf\"")));
    let inf: f64 = buckets
        .iter()
        .filter(|(l, _)| l.contains("le=\"+Inf\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        inf,
        must("herald_publish_to_socket_seconds_count"),
        "+Inf bucket must equal the count"
    );
    assert!(sample_sum(&text, "herald_publish_to_socket_seconds_sum").is_some());
    drop(c);
}

#[tokio::test]
async fn metrics_without_traffic_already_name_the_basics() {
    let h = Herald::start(&["--shards", "2"]);
    let text = check::metrics_body(&h).await;
    assert_prometheus_text(&text);
    for name in [
        "herald_connections_open",
        "herald_redis_errors_total",
        "herald_pending_events",
    ] {
        assert!(
            sample_sum(&text, name).is_some(),
            "{name} missing on a fresh pod:\n{text}"
        );
    }
}

#[tokio::test]
async fn metrics_labels_carry_no_user_or_connection_ids() {
    let h = Herald::start(&["--shards", "2", "--max-pending", "1"]);
    {
        let mut c = h
            .subscribe_connected(
                "userId=secretuser123&connectionId=secretconn456&topics=secrettopic789",
            )
            .await;
        h.publish(json!({"data": "x", "target": {"users": ["secretuser123"]}}))
            .await;
        h.publish(json!({"data": "y", "target": {"topics": ["secrettopic789"]}}))
            .await;
        next_ev(&mut c, "x").await;
        next_ev(&mut c, "y").await;
    }
    h.wait_connections(0).await;
    // Now offline: pending, and a pending overflow.
    for d in ["p1", "p2"] {
        h.publish(json!({"data": d, "target": {"users": ["secretuser123"]}}))
            .await;
    }
    let _ = h
        .post(
            "/api/user/sse/disconnect?userId=secretuser123&connectionId=secretconn456",
            "",
        )
        .await;
    check::wait_metric(&h, "herald_events_delivered_total", |v| v >= 2.0).await;
    let text = check::metrics_body(&h).await;
    for secret in ["secretuser123", "secretconn456", "secrettopic789"] {
        assert!(
            !text.contains(secret),
            "{secret} appears in /metrics:\n{text}"
        );
    }
}
