//! deploy/grafana-dashboard.json queries only metrics herald really exports: every
//! `herald_*` name in every panel's expression is checked against a live scrape of
//! `/metrics` from a cluster-mode pod (so the Redis series exist too), after some
//! traffic. Histogram queries name `_bucket`; the scrape must have that histogram.
//! A gauge every pod reports for the whole cluster (online users) is taken with
//! `max`, never summed over the pods. Also checks deploy/prometheus.yml scrapes
//! `/metrics`.

mod support;

use std::collections::BTreeSet;

use support::redis::Cluster;
use support::{ops, SseClient, WAIT};

/// Gauges each pod reports for the whole cluster: summing them over the pods
/// would count every user once per pod.
const CLUSTER_WIDE: &[&str] = &["herald_presence_online_users"];

fn dashboard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read dashboard"))
        .expect("dashboard is JSON")
}

/// Every panel's expressions.
fn exprs(dash: &serde_json::Value) -> Vec<String> {
    dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

fn dashboard_metrics() -> BTreeSet<String> {
    let dash = dashboard();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6, "the dashboard has its panels");
    let mut names = BTreeSet::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("every panel has targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("every target has an expr");
            let found: Vec<&str> = expr
                .match_indices("herald_")
                .map(|(i, _)| {
                    let rest = &expr[i..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    &rest[..end]
                })
                .collect();
            assert!(
                !found.is_empty(),
                "panel {} queries no herald metric: {expr}",
                p["title"]
            );
            names.extend(found.into_iter().map(str::to_string));
        }
    }
    names
}

/// `(name, type)` of every `# TYPE` line, and every series name.
fn exported(text: &str) -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let mut types = BTreeSet::new();
    let mut series = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                types.insert((n.to_string(), t.to_string()));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            series.insert(line[..end].to_string());
        }
    }
    (types, series)
}

#[tokio::test]
async fn every_dashboard_metric_is_exported() {
    need_redis!();
    let cl = Cluster::shared("dashboard");
    let pod = cl.pod(&[]);
    // Traffic, so that per-shard and per-operation series exist.
    let mut sub =
        SseClient::connect(pod.addr, "/api/user/sse/connect?userId=dash&topics=t", &[]).await;
    assert_eq!(sub.status, 200);
    let connected = sub.next_event(WAIT).await.expect("CONNECTED");
    assert_eq!(connected.event, "CONNECTED");
    ops::publish_at(pod.addr, &serde_json::json!({"data": "x", "target": "all"})).await;
    loop {
        let ev = sub.next_event(WAIT).await.expect("the published event");
        if ev.event == "message" {
            break;
        }
    }
    ops::publish_at(
        pod.addr,
        &serde_json::json!({"data": "y", "target": {"users": ["offline-user"]}}),
    )
    .await;
    drop(sub);
    // Shard counters are flushed once a second; wait for the delivery to show.
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let text = pod.get("/metrics").await.body;
        if ops::metric_sum(&text, "herald_events_delivered_total", &[]) >= 1.0
            && text.contains("herald_redis_roundtrip_seconds_bucket")
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never showed the traffic:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let (types, series) = exported(&text);
    let mut missing = Vec::new();
    for name in dashboard_metrics() {
        let ok = if let Some(base) = name.strip_suffix("_bucket") {
            types.contains(&(base.to_string(), "histogram".to_string())) && series.contains(&name)
        } else {
            types.iter().any(|(n, t)| n == &name && t != "histogram") && series.contains(&name)
        };
        if !ok {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard queries metrics herald does not export: {missing:?}\n{text}"
    );
}

#[test]
fn cluster_wide_gauges_are_taken_with_max() {
    let exprs = exprs(&dashboard());
    for name in CLUSTER_WIDE {
        let using: Vec<&String> = exprs.iter().filter(|e| e.contains(name)).collect();
        assert!(!using.is_empty(), "no panel shows {name}");
        for e in using {
            assert!(
                e.contains(&format!("max({name})")) && !e.contains("sum"),
                "{name} is reported by every pod for the whole cluster: take max, not sum: {e}"
            );
        }
    }
}

#[test]
fn prometheus_config_scrapes_metrics() {
    let yml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus.yml"
    ))
    .expect("read prometheus.yml");
    assert!(yml.contains("metrics_path: /metrics"));
    assert!(yml.contains("job_name: herald"));
}
