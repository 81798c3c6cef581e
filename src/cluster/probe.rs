//! Delivery liveness: every interval the pod sends itself a probe through each
//! source it reads (its inbox there; on the broadcasts' tag in the same script
//! as its own heartbeat in the pod set). A probe that does not come back
//! through that source's reader within the bound means delivery has stopped
//! while commands may still work (a reader stuck on a dead connection, a stream
//! recreated behind the reader's position after a failover): readiness fails
//! (`503`, "stalled": this pod's own trouble),
//! `herald_delivery_probe_failures_total` counts it, and that reader
//! reconnects and checks its positions. When every source's probe comes back,
//! readiness recovers. A probe that cannot even be sent is Redis' trouble,
//! which every pod sees alike: readiness stays `200`, "degraded".

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use fred::types::Value;
use tracing::{info, warn};

use super::{log, Cluster, Source};
use crate::clock;
use crate::metrics as m;
use crate::Shared;

/// The longest probe interval (the heartbeat interval when shorter).
const MAX_INTERVAL: Duration = Duration::from_secs(5);

impl Cluster {
    /// The reader of source `src` saw its probe `n` come back.
    pub(super) fn probe_returned(&self, src: &Source, n: u64) {
        src.probe_seen.fetch_max(n, Ordering::AcqRel);
        let all_back = self
            .sources
            .iter()
            .all(|s| s.probe_seen.load(Ordering::Acquire) >= s.probe_sent.load(Ordering::Acquire));
        if all_back && !self.delivering.swap(true, Ordering::AcqRel) {
            info!("delivery probes back: this pod receives events again");
            m::set_delivering(true);
        }
    }

    fn probe_interval(&self) -> Duration {
        self.set.heartbeat.min(MAX_INTERVAL)
    }

    /// How long a probe may take to come back.
    fn probe_bound(&self) -> Duration {
        (self.set.timeout * 2).max(self.probe_interval())
    }
}

pub(super) async fn probe_loop(shared: Arc<Shared>, c: Arc<Cluster>) {
    let mut tick = tokio::time::interval(c.probe_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl_ms = (c.set.stale_after * 10)
        .max(Duration::from_secs(3600))
        .as_millis() as i64;
    // Per source: the oldest probe not seen back yet.
    let mut outstanding: Vec<Option<(u64, Instant)>> = vec![None; c.sources.len()];
    let mut n = 0u64;
    let mut registered = false;
    // When every stream was last told RESYNC: the re-registrations that follow
    // within two heartbeat intervals are the same loss, already told.
    let mut all_told: Option<Instant> = None;
    loop {
        tick.tick().await;
        if c.draining.load(Ordering::Acquire) {
            continue; // the drain took this pod out of the registry
        }
        n += 1;
        let mut any_failed = false;
        for (src, out) in c.sources.iter().zip(outstanding.iter_mut()) {
            // The oldest probe not seen back decides; a new one goes out every
            // interval all the same (on the broadcasts' tag it carries the pod's
            // own heartbeat).
            if let Some((k, sent)) = *out {
                if src.probe_seen.load(Ordering::Acquire) >= k {
                    m::probe_roundtrip(sent.elapsed());
                    *out = None;
                } else if sent.elapsed() >= c.probe_bound() {
                    // Lost with a Redis that stopped answering since (the send
                    // after it failed): that is Redis' trouble, not this pod's.
                    if !src.probe_unsent.load(Ordering::Acquire) {
                        failed(&c, src, k);
                        any_failed = true;
                    }
                    *out = None;
                }
            }
            src.probe_sent.store(n, Ordering::Release);
            let mut args = c.args(src, 5);
            args.extend([
                Value::from(clock::unix_ms() as i64),
                c.pod_value(),
                Value::from(n as i64),
                Value::from(ttl_ms),
                Value::from(if src.index == 0 { "1" } else { "0" }),
            ]);
            let sent = Instant::now();
            // Read before the probe exists: a new entry's id must be above it.
            let read_before = src.inbox_read.load(Ordering::Acquire);
            let Some(v) = c.script(src, "heartbeat", &c.scripts.probe, args).await else {
                // Not sent: Redis (or the node holding this source) does not
                // answer, which every pod sees alike: readiness says degraded
                // but stays ready. The reader checks its connection all the same.
                src.probe_unsent.store(true, Ordering::Release);
                src.reset_requested.store(true, Ordering::Release);
                m::probe_failed();
                continue;
            };
            src.probe_unsent.store(false, Ordering::Release);
            out.get_or_insert((n, sent));
            let probe_id = v
                .get(2)
                .and_then(|x| x.as_str())
                .and_then(|s| log::sse_id(&s))
                .unwrap_or(u64::MAX);
            if probe_id <= read_before {
                // The inbox was recreated behind the reader: it would wait forever.
                src.reset_requested.store(true, Ordering::Release);
            }
            if src.index != 0 {
                continue;
            }
            let added = v.get(1).and_then(|x| x.as_u64()).unwrap_or(0);
            // Missing from the pod set: new, or dropped as dead while it could not
            // reach Redis, or Redis lost its data: join its topics again. In the
            // last two cases events routed to this pod in between are gone: its
            // streams are told so (`RESYNC`); its connections come back with their
            // next heartbeat.
            let lost = std::mem::take(&mut *c.lost.lock().unwrap_or_else(|e| e.into_inner()));
            let told_recently =
                all_told.is_some_and(|t| t.elapsed() < c.set.heartbeat * 2 + c.probe_interval());
            if added > 0 && registered {
                warn!("the cluster lost this pod's registration: streams get RESYNC");
                shared.broker.resync_all("cluster_registry_lost");
                all_told = Some(Instant::now());
            } else if !lost.is_empty() && !told_recently {
                warn!(
                    streams = lost.len(),
                    "the cluster lost some registrations of this pod: those streams get RESYNC"
                );
                shared.broker.resync(&lost, "cluster_registry_lost");
            }
            registered = true;
            c.topic_changes(added > 0).await;
        }
        if any_failed && c.is_up() {
            // Commands get answers but delivery does not work: the command
            // connection may hold a stale view of the cluster (a Redis Cluster
            // whose slots moved): reconnect it too, which reloads the slot map.
            let _ = c.cmd.force_reconnection().await;
        }
    }
}

/// Probe `n` of `src` did not come back in time.
fn failed(c: &Cluster, src: &Source, n: u64) {
    if c.delivering.swap(false, Ordering::AcqRel) {
        warn!(
            probe = n,
            source = src.index,
            "delivery probe did not come back: readiness degraded, reconnecting the reader"
        );
        m::set_delivering(false);
    }
    m::probe_failed();
    src.reset_requested.store(true, Ordering::Release);
}
