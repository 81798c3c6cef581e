//! Delivery liveness: every interval the pod sends itself a probe through its
//! inbox (with its own heartbeat in the pod set, one script). A probe that does
//! not come back through the reader within the bound means delivery has
//! stopped while commands may still work (a reader stuck on a dead connection,
//! a stream recreated behind the reader's position after a failover): readiness
//! turns degraded, `herald_delivery_probe_failures_total` counts it, and the
//! reader reconnects and checks its positions. When a probe comes back,
//! readiness recovers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::types::Value;
use tracing::{info, warn};

use super::{log, Cluster};
use crate::clock;
use crate::metrics as m;
use crate::Shared;

/// The longest probe interval (the heartbeat interval when shorter).
const MAX_INTERVAL: Duration = Duration::from_secs(5);

impl Cluster {
    /// The reader saw probe `n` come back.
    pub(super) fn probe_returned(&self, n: u64) {
        self.probe_seen.fetch_max(n, Ordering::AcqRel);
        if n >= self.probe_sent.load(Ordering::Acquire)
            && !self.delivering.swap(true, Ordering::AcqRel)
        {
            info!("delivery probe back: this pod receives events again");
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
    let mut outstanding: Option<(u64, Instant)> = None;
    let mut n = 0u64;
    let mut registered = false;
    loop {
        tick.tick().await;
        if c.draining.load(Ordering::Acquire) {
            continue; // the drain took this pod out of the registry
        }
        // The oldest probe not seen back yet decides; a new one goes out every
        // interval all the same, since it carries the pod's own heartbeat.
        if let Some((k, sent)) = outstanding {
            if c.probe_seen.load(Ordering::Acquire) >= k {
                m::probe_roundtrip(sent.elapsed());
                outstanding = None;
            } else if sent.elapsed() >= c.probe_bound() {
                failed(&c, k);
                outstanding = None;
            }
        }
        n += 1;
        c.probe_sent.store(n, Ordering::Release);
        let mut args = c.args(4);
        args.extend([
            Value::from(clock::unix_ms() as i64),
            c.pod_value(),
            Value::from(n as i64),
            Value::from(ttl_ms),
        ]);
        let sent = Instant::now();
        // Read before the probe exists: a new entry's id must be above it.
        let read_before = c.inbox_read.load(Ordering::Acquire);
        let Some(v) = c.script("heartbeat", &c.scripts.probe, args).await else {
            // A probe that cannot even be sent does not come back either.
            failed(&c, n);
            continue;
        };
        outstanding.get_or_insert((n, sent));
        let added = v.get(1).and_then(|x| x.as_u64()).unwrap_or(0);
        let probe_id = v
            .get(2)
            .and_then(|x| x.as_str())
            .and_then(|s| log::sse_id(&s))
            .unwrap_or(u64::MAX);
        if probe_id <= read_before {
            // The inbox was recreated behind the reader: it would wait forever.
            c.reset_requested.store(true, Ordering::Release);
        }
        // Missing from the pod set: new, or dropped as dead while it could not
        // reach Redis, or Redis lost its data: join its topics again. In the last
        // two cases events routed to this pod in between are gone: its streams
        // are told so (`RESYNC`); its connections come back with their next
        // heartbeat.
        if added > 0 && registered {
            warn!("the cluster lost this pod's registration: streams get RESYNC");
            shared.broker.resync_all("cluster_registry_lost");
        }
        registered = true;
        c.topic_changes(added > 0).await;
    }
}

/// Probe `n` did not come back in time.
fn failed(c: &Cluster, n: u64) {
    if c.delivering.swap(false, Ordering::AcqRel) {
        warn!(
            probe = n,
            "delivery probe did not come back: readiness degraded, reconnecting the reader"
        );
        m::set_delivering(false);
    }
    m::probe_failed();
    c.reset_requested.store(true, Ordering::Release);
}
