//! Metric names (one place), their descriptions, and the per-shard counters of the
//! hot path.
//!
//! Everything off the hot path goes through the `metrics` facade and is rendered
//! by `metrics-exporter-prometheus`. Per-delivery figures (frames delivered,
//! publish-to-socket latency) are counted by each shard in plain `Cell`s and
//! flushed once a second into that shard's [`ShardStats`], whose atomics only that
//! shard writes; `/metrics` appends them in Prometheus text format, the latency as
//! a real histogram with buckets. So a delivery costs no shared cache line.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::conn::CloseReason;

pub const CONNECTIONS_OPEN: &str = "herald_connections_open";
pub const CONNECTIONS_OPENED: &str = "herald_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "herald_connections_closed_total";
pub const CONNECTS_REJECTED: &str = "herald_connects_rejected_total";
pub const ACCEPT_FAILED: &str = "herald_accept_failed_total";
pub const TLS_FAILED: &str = "herald_tls_handshake_failures_total";
pub const EVENTS_PUBLISHED: &str = "herald_events_published_total";
pub const EVENTS_DELIVERED: &str = "herald_events_delivered_total";
pub const EVENTS_DROPPED: &str = "herald_events_dropped_total";
pub const HEARTBEAT_BATCH: &str = "herald_heartbeat_batch_duration_seconds";
pub const REDIS_ERRORS: &str = "herald_redis_errors_total";
pub const PENDING_EVENTS: &str = "herald_pending_events";
pub const PUBLISH_TO_SOCKET: &str = "herald_publish_to_socket_seconds";
pub const REDIS_UP: &str = "herald_redis_up";
pub const REDIS_PROBLEM: &str = "herald_redis_problem";
pub const SALVAGED: &str = "herald_events_salvaged_total";
pub const JWKS_FETCHES: &str = "herald_jwks_fetches_total";
pub const JWKS_KEYS: &str = "herald_jwks_keys";
pub const READY_STATE: &str = "herald_ready_state";
pub const REDIS_ROUNDTRIP: &str = "herald_redis_roundtrip_seconds";
pub const PRESENCE_ONLINE: &str = "herald_presence_online_users";
pub const PRESENCE_EVENTS: &str = "herald_presence_events_total";
pub const REDIS_COMMANDS: &str = "herald_redis_commands_total";
pub const REDIS_COMMANDS_PER_BATCH: &str = "herald_redis_commands_per_batch";
pub const REDIS_BATCH_SIZE: &str = "herald_redis_batch_size";
pub const PUBLISH_BUFFERED: &str = "herald_publish_buffered";
pub const PUBLISH_BUFFERED_TOTAL: &str = "herald_publish_buffered_total";
pub const PUBLISH_BUFFER_FULL: &str = "herald_publish_buffer_full_total";
pub const MARKED_INACTIVE: &str = "herald_connections_marked_inactive_total";
pub const DELIVERING: &str = "herald_delivery_ok";
pub const PROBE_FAILURES: &str = "herald_delivery_probe_failures_total";
pub const PROBE_ROUNDTRIP: &str = "herald_delivery_probe_seconds";
pub const IDEMPOTENCY_RECORDS: &str = "herald_idempotency_records";
pub const IDEMPOTENCY_BYTES: &str = "herald_idempotency_record_bytes";
pub const IDEMPOTENCY_REPLAYED: &str = "herald_idempotency_replayed_total";
pub const IDEMPOTENCY_EVICTED: &str = "herald_idempotency_evicted_total";
pub const PUBLISH_RETRIES_APPLIED: &str = "herald_publish_retries_recognised_total";
pub const H2_FLOODS: &str = "herald_http2_floods_total";
pub const H2_RESETS_SENT: &str = "herald_http2_resets_sent_total";
pub const H2_CONNECTION_ERRORS: &str = "herald_http2_connection_errors_total";
pub const H2_IGNORED_FRAMES: &str = "herald_http2_ignored_frames_total";
pub const BODIES_REFUSED: &str = "herald_request_bodies_refused_total";

/// Upper bounds of the count histograms (Redis commands and items per batch).
pub const COUNT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0, 1_000.0, 5_000.0, 20_000.0, 100_000.0,
];

/// Upper bounds (seconds) of the publish-to-socket and heartbeat histograms.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

const BUCKET_NS: [u64; 16] = {
    let mut out = [0u64; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// Install the Prometheus recorder and describe every metric once.
pub fn install() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(REDIS_COMMANDS_PER_BATCH.into()),
                &COUNT_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(REDIS_BATCH_SIZE.into()), &COUNT_BUCKETS)
        })
        .expect("static bucket lists are not empty")
        .build_recorder();
    let handle = recorder.handle();
    // A second install (several servers in one test process) keeps the first.
    if metrics::set_global_recorder(recorder).is_ok() {
        spawn_upkeep(handle.clone());
    }
    describe();
    handle
}

/// How often the recorder's histogram samples are folded into their buckets.
pub const UPKEEP: Duration = Duration::from_secs(5);

/// The recorder keeps every histogram sample (each Redis call records three)
/// until it is folded into the buckets: by a scrape of `/metrics`, or by this
/// thread. Without it, a pod nobody scrapes grows by every sample (a few KB a
/// second in the rehearsal, without bound).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no metrics upkeep thread: histogram samples wait for a scrape");
    }
}

fn describe() {
    describe_gauge!(CONNECTIONS_OPEN, "SSE connections open, per shard");
    describe_counter!(CONNECTIONS_OPENED, "SSE connections opened, per shard");
    describe_counter!(CONNECTIONS_CLOSED, "SSE connections closed, by reason");
    describe_counter!(CONNECTS_REJECTED, "Connect requests refused, by reason");
    describe_counter!(
        ACCEPT_FAILED,
        "accept() calls that failed (open-file limit reached, kernel out of memory)"
    );
    counter!(ACCEPT_FAILED).absolute(0);
    describe_counter!(
        TLS_FAILED,
        "HTTPS connections that never completed a TLS handshake, by reason"
    );
    for reason in ["plain_http", "handshake", "timeout"] {
        counter!(TLS_FAILED, "reason" => reason).absolute(0);
    }
    describe_counter!(EVENTS_PUBLISHED, "Events published, by target kind");
    describe_counter!(EVENTS_DROPPED, "Events dropped, by reason");
    describe_histogram!(
        HEARTBEAT_BATCH,
        Unit::Seconds,
        "Time to queue one heartbeat on every stream of a shard"
    );
    describe_counter!(REDIS_ERRORS, "Redis commands that failed (cluster mode)");
    describe_gauge!(PENDING_EVENTS, "Events held for offline users");
    describe_gauge!(
        PRESENCE_ONLINE,
        "Users online in the whole cluster (a live connection, or back within \
         --presence-linger), as this pod last counted them"
    );
    gauge!(PRESENCE_ONLINE).set(0.0);
    describe_counter!(
        PRESENCE_EVENTS,
        "Presence transitions this pod published, by event (online, offline)"
    );
    for event in ["online", "offline"] {
        counter!(PRESENCE_EVENTS, "event" => event).absolute(0);
    }
    describe_gauge!(REDIS_UP, "1 when Redis answers (cluster mode), else 0");
    describe_counter!(
        JWKS_FETCHES,
        "Fetches of the --jwt-jwks-url key set, by result (ok, error)"
    );
    describe_gauge!(JWKS_KEYS, "Keys held from the --jwt-jwks-url key set");
    describe_counter!(
        SALVAGED,
        "User events a dead pod had not read, given to their users by the cleanup \
         (cluster mode), by where: pending, again (published to the user's other \
         pods), replayed (a resume since had replayed them)"
    );
    describe_gauge!(
        REDIS_PROBLEM,
        "1 for what keeps herald from using Redis now, by kind: none, unreachable, \
         auth, tls, sentinel, permission (cluster mode)"
    );
    describe_gauge!(
        READY_STATE,
        "1 for the readiness state: ready, degraded (Redis trouble every pod \
         shares: still ready), stalled, draining, full"
    );
    describe_histogram!(
        REDIS_ROUNDTRIP,
        Unit::Seconds,
        "Round trip of one Redis batch, by operation"
    );
    describe_counter!(
        REDIS_COMMANDS,
        "Redis commands herald caused (script calls included), by operation"
    );
    describe_histogram!(
        REDIS_COMMANDS_PER_BATCH,
        "Redis commands one batch cost, by operation"
    );
    describe_histogram!(
        REDIS_BATCH_SIZE,
        "Connections carried by one Redis batch, by operation"
    );
    describe_gauge!(PUBLISH_BUFFERED, "Publishes waiting for Redis to return");
    describe_gauge!(
        IDEMPOTENCY_RECORDS,
        "Idempotency-Key answers this pod keeps (within --idempotency-window)"
    );
    describe_gauge!(
        IDEMPOTENCY_BYTES,
        Unit::Bytes,
        "Memory the pod's Idempotency-Key records take (keys and answers)"
    );
    describe_counter!(
        IDEMPOTENCY_REPLAYED,
        "Publishes answered from an earlier one with the same Idempotency-Key"
    );
    describe_counter!(
        IDEMPOTENCY_EVICTED,
        "Idempotency-Key records dropped before their window ended (memory bound)"
    );
    describe_counter!(
        PUBLISH_RETRIES_APPLIED,
        "Publishes re-sent after a Redis timeout that Redis had already applied (not appended again)"
    );
    describe_counter!(
        PUBLISH_BUFFERED_TOTAL,
        "Publishes buffered while Redis was unreachable"
    );
    describe_counter!(
        PUBLISH_BUFFER_FULL,
        "Publishes refused (503): buffer full while Redis was unreachable"
    );
    describe_counter!(
        MARKED_INACTIVE,
        "Stale connections marked inactive by this pod's cleanup job"
    );
    describe_gauge!(
        DELIVERING,
        "1 while this pod's delivery probe comes back through Redis in time (cluster mode)"
    );
    describe_counter!(
        PROBE_FAILURES,
        "Delivery probes that did not come back through Redis in time (cluster mode)"
    );
    describe_histogram!(
        PROBE_ROUNDTRIP,
        Unit::Seconds,
        "Time for a delivery probe to come back through this pod's inbox"
    );
    describe_counter!(
        H2_FLOODS,
        "HTTP/2 connections ended with ENHANCE_YOUR_CALM, by what flooded them"
    );
    describe_counter!(
        H2_RESETS_SENT,
        "HTTP/2 streams herald reset because of what their client sent, by error code"
    );
    describe_counter!(
        H2_CONNECTION_ERRORS,
        "HTTP/2 connections herald ended with a GOAWAY error, by error code"
    );
    describe_counter!(
        H2_IGNORED_FRAMES,
        "HTTP/2 frames that did nothing (PRIORITY, empty DATA or CONTINUATION, unknown types, frames on closed streams)"
    );
    describe_counter!(
        BODIES_REFUSED,
        "Requests with a body refused because the shard's --body-budget was spent, by protocol"
    );
    counter!(H2_IGNORED_FRAMES).absolute(0);
    for kind in [
        "useless_frames",
        "settings",
        "pings",
        "resets",
        "header_block",
    ] {
        counter!(H2_FLOODS, "kind" => kind).absolute(0);
    }
    for proto in ["http1", "http2"] {
        counter!(BODIES_REFUSED, "proto" => proto).absolute(0);
    }
    counter!(REDIS_ERRORS).absolute(0);
    gauge!(PENDING_EVENTS).set(0.0);
    // Every labelled series a dashboard may query exists from the start, at 0.
    for reason in [
        "slow_consumer",
        "pending_overflow",
        "pending_full",
        "pending_expired",
        "broadcast_gap",
        "repeat",
    ] {
        counter!(EVENTS_DROPPED, "reason" => reason).absolute(0);
    }
    for reason in [
        "blocked",
        "draining",
        "overloaded",
        "pod_full",
        "fd_limit",
        "user_full",
    ] {
        counter!(CONNECTS_REJECTED, "reason" => reason).absolute(0);
    }
    for target in PublishedCount::KINDS {
        counter!(EVENTS_PUBLISHED, "target" => target).absolute(0);
    }
}

/// A publish request's events by target kind, counted in
/// `herald_events_published_total` once the request is taken.
#[derive(Debug, Default)]
pub struct PublishedCount([u64; 3]);

impl PublishedCount {
    const KINDS: [&'static str; 3] = ["all", "users", "topics"];

    pub fn add(&mut self, target: &crate::event::Target) {
        let label = target.label();
        if let Some(i) = Self::KINDS.iter().position(|k| *k == label) {
            self.0[i] += 1;
        }
    }

    pub fn record(self) {
        // The handles are looked up once per thread (a registry lookup per
        // publish was measurable on the publish path).
        thread_local! {
            static PUBLISHED: [metrics::Counter; 3] = PublishedCount::KINDS
                .map(|t| counter!(EVENTS_PUBLISHED, "target" => t));
        }
        PUBLISHED.with(|c| {
            for (c, n) in c.iter().zip(self.0) {
                if n > 0 {
                    c.increment(n);
                }
            }
        });
    }
}

pub fn dropped(reason: &'static str, n: u64) {
    if n > 0 {
        counter!(EVENTS_DROPPED, "reason" => reason).increment(n);
    }
}

pub fn presence_events(event: &'static str, n: u64) {
    if n > 0 {
        counter!(PRESENCE_EVENTS, "event" => event).increment(n);
    }
}

pub fn set_online_users(n: u64) {
    gauge!(PRESENCE_ONLINE).set(n as f64);
}

pub fn set_pending(n: usize) {
    gauge!(PENDING_EVENTS).set(n as f64);
}

/// Cluster mode: start the Redis series at zero so dashboards see them.
pub fn cluster_init() {
    gauge!(REDIS_UP).set(0.0);
    for kind in ["none", "auth", "tls", "sentinel", "permission"] {
        gauge!(REDIS_PROBLEM, "kind" => kind).set(0.0);
    }
    gauge!(REDIS_PROBLEM, "kind" => "unreachable").set(1.0);
    for to in ["pending", "again", "replayed"] {
        counter!(SALVAGED, "to" => to).absolute(0);
    }
    gauge!(PUBLISH_BUFFERED).set(0.0);
    counter!(PUBLISH_BUFFERED_TOTAL).absolute(0);
    counter!(PUBLISH_BUFFER_FULL).absolute(0);
    counter!(MARKED_INACTIVE).absolute(0);
    gauge!(DELIVERING).set(1.0);
    counter!(PROBE_FAILURES).absolute(0);
}

pub fn set_delivering(ok: bool) {
    gauge!(DELIVERING).set(if ok { 1.0 } else { 0.0 });
}

pub fn probe_failed() {
    counter!(PROBE_FAILURES).increment(1);
}

pub fn probe_roundtrip(d: std::time::Duration) {
    histogram!(PROBE_ROUNDTRIP).record(d.as_secs_f64());
}

pub fn set_redis_up(up: bool) {
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn jwks_fetched(ok: bool, keys: usize) {
    counter!(JWKS_FETCHES, "result" => if ok { "ok" } else { "error" }).increment(1);
    gauge!(JWKS_KEYS).set(keys as f64);
}

pub fn salvaged(pending: u64, again: u64, replayed: u64) {
    counter!(SALVAGED, "to" => "pending").increment(pending);
    counter!(SALVAGED, "to" => "again").increment(again);
    counter!(SALVAGED, "to" => "replayed").increment(replayed);
}

pub fn set_redis_problem(kind: &'static str, on: bool) {
    gauge!(REDIS_PROBLEM, "kind" => kind).set(if on { 1.0 } else { 0.0 });
}

/// The readiness state `/health/ready` reports (one of them is 1).
pub fn set_ready_state(state: &'static str) {
    for s in ["ready", "degraded", "stalled", "draining", "full"] {
        gauge!(READY_STATE, "state" => s).set(if s == state { 1.0 } else { 0.0 });
    }
}

pub fn redis_error(op: &'static str) {
    counter!(REDIS_ERRORS).increment(1);
    tracing::trace!(op, "redis error counted");
}

pub fn redis_roundtrip(op: &'static str, d: std::time::Duration) {
    histogram!(REDIS_ROUNDTRIP, "op" => op).record(d.as_secs_f64());
}

/// `n` Redis commands executed for one batch of `op`.
pub fn redis_commands(op: &'static str, n: u64) {
    counter!(REDIS_COMMANDS, "op" => op).increment(n);
    histogram!(REDIS_COMMANDS_PER_BATCH, "op" => op).record(n as f64);
}

/// A batch of `op` carrying `n` connections.
pub fn redis_batch(op: &'static str, n: usize) {
    histogram!(REDIS_BATCH_SIZE, "op" => op).record(n as f64);
}

pub fn publish_buffered(now_held: usize) {
    gauge!(PUBLISH_BUFFERED).set(now_held as f64);
}

/// One more publish buffered.
pub fn publish_buffered_total(n: u64) {
    counter!(PUBLISH_BUFFERED_TOTAL).increment(n);
}

pub fn set_idempotency(records: usize, bytes: usize) {
    gauge!(IDEMPOTENCY_RECORDS).set(records as f64);
    gauge!(IDEMPOTENCY_BYTES).set(bytes as f64);
}

pub fn idempotency_replayed() {
    counter!(IDEMPOTENCY_REPLAYED).increment(1);
}

pub fn idempotency_evicted() {
    counter!(IDEMPOTENCY_EVICTED).increment(1);
}

pub fn publish_retry_recognised(n: u64) {
    counter!(PUBLISH_RETRIES_APPLIED).increment(n);
}

pub fn publish_buffer_full() {
    counter!(PUBLISH_BUFFER_FULL).increment(1);
}

pub fn marked_inactive(n: u64) {
    counter!(MARKED_INACTIVE).increment(n);
}

pub fn tls_failed(reason: &'static str) {
    counter!(TLS_FAILED, "reason" => reason).increment(1);
}

pub fn h2_flood(kind: &'static str) {
    counter!(H2_FLOODS, "kind" => kind).increment(1);
}

pub fn h2_reset_sent(code: &'static str) {
    counter!(H2_RESETS_SENT, "code" => code).increment(1);
}

pub fn h2_connection_error(code: &'static str) {
    counter!(H2_CONNECTION_ERRORS, "code" => code).increment(1);
}

pub fn h2_ignored_frame() {
    counter!(H2_IGNORED_FRAMES).increment(1);
}

pub fn body_refused(proto: &'static str) {
    counter!(BODIES_REFUSED, "proto" => proto).increment(1);
}

pub fn accept_failed() {
    counter!(ACCEPT_FAILED).increment(1);
}

pub fn connect_rejected(reason: &'static str) {
    counter!(CONNECTS_REJECTED, "reason" => reason).increment(1);
}

/// Handles of the per-connection counters, resolved once per shard so that a
/// connect or a close costs an atomic add, not a registry lookup.
pub struct ConnCounters {
    pub opened: metrics::Counter,
    closed: [metrics::Counter; CloseReason::ALL.len()],
}

impl ConnCounters {
    pub fn new(shard: u16) -> Self {
        ConnCounters {
            opened: counter!(CONNECTIONS_OPENED, "shard" => shard.to_string()),
            closed: CloseReason::ALL.map(|r| counter!(CONNECTIONS_CLOSED, "reason" => r.label())),
        }
    }

    pub fn closed(&self, reason: CloseReason) -> &metrics::Counter {
        let i = CloseReason::ALL
            .iter()
            .position(|&r| r == reason)
            .unwrap_or(0);
        &self.closed[i]
    }
}

/// Counters one shard publishes for readers on other threads.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub connections: AtomicU64,
    pub delivered: AtomicU64,
    /// When the shard last sent its streams a heartbeat (unix ms; 0 never).
    pub heartbeat_ms: AtomicU64,
    latency_buckets: [AtomicU64; 16],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
}

/// The shard-local side: plain cells, flushed into [`ShardStats`].
#[derive(Debug, Default)]
pub struct LocalStats {
    delivered: Cell<u64>,
    buckets: [Cell<u64>; 16],
    count: Cell<u64>,
    sum_ns: Cell<u64>,
}

impl LocalStats {
    /// One frame left through the socket; `published_ns` 0 means not an event.
    #[inline]
    pub fn frame_written(&self, published_ns: u64, now_ns: u64) {
        if published_ns == 0 {
            return;
        }
        self.delivered.set(self.delivered.get() + 1);
        let lat = now_ns.saturating_sub(published_ns);
        if let Some(i) = BUCKET_NS.iter().position(|&b| lat <= b) {
            self.buckets[i].set(self.buckets[i].get() + 1);
        }
        self.count.set(self.count.get() + 1);
        self.sum_ns.set(self.sum_ns.get() + lat);
    }

    /// Move what was counted into `shared`.
    pub fn flush(&self, shared: &ShardStats) {
        shared
            .delivered
            .fetch_add(self.delivered.take(), Ordering::Relaxed);
        for (cell, atomic) in self.buckets.iter().zip(shared.latency_buckets.iter()) {
            let n = cell.take();
            if n > 0 {
                atomic.fetch_add(n, Ordering::Relaxed);
            }
        }
        shared
            .latency_count
            .fetch_add(self.count.take(), Ordering::Relaxed);
        shared
            .latency_sum_ns
            .fetch_add(self.sum_ns.take(), Ordering::Relaxed);
    }
}

/// Render the per-shard figures in Prometheus text format.
pub fn render_shards(shards: &[Arc<ShardStats>], out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP {CONNECTIONS_OPEN} SSE connections open, per shard"
    );
    let _ = writeln!(out, "# TYPE {CONNECTIONS_OPEN} gauge");
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "{CONNECTIONS_OPEN}{{shard=\"{i}\"}} {}",
            s.connections.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP {EVENTS_DELIVERED} Events written to SSE sockets, per shard"
    );
    let _ = writeln!(out, "# TYPE {EVENTS_DELIVERED} counter");
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "{EVENTS_DELIVERED}{{shard=\"{i}\"}} {}",
            s.delivered.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP {PUBLISH_TO_SOCKET} Time from publish to the event's write to a socket"
    );
    let _ = writeln!(out, "# TYPE {PUBLISH_TO_SOCKET} histogram");
    for (i, s) in shards.iter().enumerate() {
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(s.latency_buckets.iter()) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{PUBLISH_TO_SOCKET}_bucket{{shard=\"{i}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = s.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{PUBLISH_TO_SOCKET}_bucket{{shard=\"{i}\",le=\"+Inf\"}} {count}"
        );
        let sum = s.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{PUBLISH_TO_SOCKET}_sum{{shard=\"{i}\"}} {sum}");
        let _ = writeln!(out, "{PUBLISH_TO_SOCKET}_count{{shard=\"{i}\"}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_events_only() {
        let local = LocalStats::default();
        local.frame_written(0, 10); // a heartbeat
        local.frame_written(1, 1 + 50_000); // 50 µs
        local.frame_written(1, 1 + 3_000_000); // 3 ms
        let shared = Arc::new(ShardStats::default());
        local.flush(&shared);
        let mut out = String::new();
        render_shards(&[shared], &mut out);
        assert!(out.contains("herald_events_delivered_total{shard=\"0\"} 2"));
        assert!(
            out.contains("herald_publish_to_socket_seconds_bucket{shard=\"0\",le=\"0.0001\"} 1")
        );
        assert!(out.contains("herald_publish_to_socket_seconds_bucket{shard=\"0\",le=\"0.005\"} 2"));
        assert!(out.contains("herald_publish_to_socket_seconds_bucket{shard=\"0\",le=\"+Inf\"} 2"));
        assert!(out.contains("herald_publish_to_socket_seconds_count{shard=\"0\"} 2"));
    }
}
