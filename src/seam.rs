//! The seam between the endpoints and where connections and events are shared:
//! a [`ConnectionRegistry`] (what the seed calls DistributedConnectionManager:
//! register, remove, heartbeat, locate a connection on another pod, cluster
//! stats, drain) and an [`EventBus`] (publish). [`Local`] is the embedded
//! default: the pod's broker is the whole registry and bus. Cluster mode
//! implements both over Redis ([`crate::cluster::Cluster`]). The endpoints and
//! the shards only see the two traits; neither is on the delivery path.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::broker::{Broker, Joined, Publish};
use crate::event::Target;

/// A boxed future of a seam method (per connect or publish, never per delivery).
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Where a resuming connect starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// After this event id.
    Id(u64),
    /// After this two-part id (`b.p`: broadcast and partition positions; a
    /// cluster with partitions).
    Pair(u64, u64),
    /// From an id herald does not know (answered `RESYNC`).
    Unknown,
}

impl ResumeFrom {
    /// The resume point a client sent (`Last-Event-ID` or `lastEventId`).
    pub fn parse(last_event_id: &str) -> ResumeFrom {
        let id = last_event_id.trim();
        if let Some((b, p)) = id.split_once('.') {
            return match (b.parse(), p.parse()) {
                (Ok(b), Ok(p)) => ResumeFrom::Pair(b, p),
                _ => ResumeFrom::Unknown,
            };
        }
        match id.parse::<u64>() {
            Ok(id) => ResumeFrom::Id(id),
            Err(_) => ResumeFrom::Unknown,
        }
    }
}

/// A connect to register.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub user: &'a str,
    pub conn_id: &'a str,
    pub serial: u64,
    pub topics: &'a [Box<str>],
    pub resume: Option<ResumeFrom>,
}

/// A connection that is not on this pod, looked up elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elsewhere {
    /// Ended on the pod that holds it.
    Ended,
    /// No such connection anywhere.
    NotFound,
    /// The shared registry is unreachable.
    Unreachable,
}

/// Counts of the whole cluster, for the stats endpoint.
#[derive(Debug, Clone, Copy)]
pub struct ClusterStats {
    pub connections: u64,
    pub users: u64,
    pub pods: u64,
    pub inactive: u64,
}

/// Whether the shared registry and bus work, for readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// The shared store cannot be used, as every pod sees alike (unreachable,
    /// credentials refused, a master missing): the pod stays ready, serves its
    /// own streams and buffers publishes. `problem` is the kind
    /// (`herald_redis_problem`), `detail` the cause, `denied` the commands
    /// Redis refuses.
    Degraded {
        problem: &'static str,
        detail: String,
        denied: Vec<String>,
    },
    /// It answers, but this pod's delivery probe does not come back: this
    /// pod's own trouble.
    Stalled,
}

/// See the module doc.
pub trait ConnectionRegistry: Send + Sync {
    /// Whether connections are shared with other pods (the stats say so).
    fn is_shared(&self) -> bool;

    /// The partition of `user`'s connections (which frame of a broadcast they
    /// get; 0 unless the cluster has several).
    fn partition_of(&self, user: &str) -> u8;

    /// Register a connect before its stream starts. `None`: the stream starts from
    /// this pod's own state (embedded, or the shared registry unreachable). Every
    /// call ends with [`ConnectionRegistry::ended`] or
    /// [`ConnectionRegistry::abandon`].
    fn register<'a>(&'a self, r: Registration<'a>) -> Pending<'a, Option<Joined>>;

    /// Undo a registration whose connect was refused afterwards.
    fn abandon(&self, user: &str, conn_id: &str, serial: u64, topics: &[Box<str>]);

    /// A stream ended; `conn_id` is given when it was still registered.
    fn ended(&self, user: &str, conn_id: Option<&str>, serial: u64, topics: &[&str]);

    /// A connection of this pod was disconnected (its stream ends next).
    fn unregister(&self, user: &str, conn_id: &str, serial: u64);

    /// Tell every other pod that `user`'s connects are refused until
    /// `until_ms` and its streams end (`reconnect=false`); remembered for pods
    /// that start later. False when that could not be done (Redis unreachable).
    fn block_everywhere<'a>(&'a self, _user: &'a str, _until_ms: u64) -> Pending<'a, bool> {
        Box::pin(std::future::ready(true))
    }

    /// End a connection this pod does not hold, wherever it is.
    fn disconnect_elsewhere<'a>(
        &'a self,
        user: &'a str,
        conn_id: &'a str,
    ) -> Pending<'a, Elsewhere>;

    /// Cluster-wide counts (`None`: not shared, or unreachable).
    fn stats(&self) -> Pending<'_, Option<ClusterStats>>;

    /// `user`'s live connections in the whole cluster (`None`: not shared, or
    /// unreachable).
    fn connections_of<'a>(
        &'a self,
        _user: &'a str,
    ) -> Pending<'a, Option<Vec<crate::presence::ConnInfo>>> {
        Box::pin(std::future::ready(None))
    }

    /// Live connections per user and streams per topic in the whole cluster
    /// (`None`: not shared, or unreachable).
    fn presence<'a>(
        &'a self,
        _q: &'a crate::presence::Query,
    ) -> Pending<'a, Option<crate::presence::Counts>> {
        Box::pin(std::future::ready(None))
    }

    /// One shard's heartbeat of its registered connections.
    fn heartbeat(&self, broker: &Broker, shard: u16);

    fn health(&self) -> Health;

    /// Take this pod out of the shared registry in one batch (bounded wait).
    fn drain(&self, within: Duration);

    /// After the drain, once this pod's streams have ended: the rest of what
    /// the shared store holds for this pod goes (bounded wait).
    fn leave(&self, _within: Duration) {}
}

/// What became of a publish request (one event, or a batch: all or none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Sequenced: one id per event, in the request's order. `replayed`: the
    /// shared store already held this `Idempotency-Key` (another pod took the
    /// publish first; nothing was published again).
    Ids { ids: Vec<u64>, replayed: bool },
    /// The shared store does not answer: held, sent in order when it returns
    /// (`replayed` as above, for a held publish seen again).
    Buffered { replayed: bool },
    /// The shared store does not answer and the buffer is full: nothing taken.
    Full,
}

/// A validated publish (from [`crate::http::publish`]), owned: it may wait
/// for the shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub event: String,
    pub data: String,
    pub target: Target,
    pub ttl_seconds: u64,
}

/// A validated publish borrowing its name and data from the request body
/// where it can (most publishes: no escapes), so that publishing on the spot
/// copies the data only into the event's frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRef<'a> {
    pub event: Cow<'a, str>,
    pub data: Cow<'a, str>,
    pub target: Target,
    pub ttl_seconds: u64,
}

impl PublishRef<'_> {
    /// The same publish, owned (to wait for the shared store).
    pub fn into_owned(self) -> PublishRequest {
        PublishRequest {
            event: self.event.into_owned(),
            data: self.data.into_owned(),
            target: self.target,
            ttl_seconds: self.ttl_seconds,
        }
    }
}

impl From<PublishRequest> for PublishRef<'static> {
    fn from(p: PublishRequest) -> Self {
        PublishRef {
            event: Cow::Owned(p.event),
            data: Cow::Owned(p.data),
            target: p.target,
            ttl_seconds: p.ttl_seconds,
        }
    }
}

/// See the module doc.
pub trait EventBus: Send + Sync {
    /// Publish one event or a batch, in its order, whole or not at all. `key`
    /// is the request's `Idempotency-Key`: a shared bus keeps it with the
    /// publish so that a repeat reaching another pod publishes nothing (this
    /// pod's own repeats are caught before, by [`crate::idempotency`]).
    fn publish<'a>(
        &'a self,
        broker: &'a Broker,
        batch: Vec<PublishRequest>,
        key: Option<&'a str>,
    ) -> Pending<'a, Published>;

    /// Publish one event on the spot and give its id, when this bus sequences
    /// events without waiting (the embedded one); otherwise the request comes
    /// back (`Err`) for [`EventBus::publish`]. The most common publish then
    /// needs no future and no vectors.
    fn publish_now<'p>(&self, _broker: &Broker, p: PublishRef<'p>) -> Result<u64, PublishRef<'p>> {
        Err(p)
    }
}

/// The embedded registry and bus: everything is in this pod's broker.
#[derive(Debug, Default)]
pub struct Local;

impl ConnectionRegistry for Local {
    fn is_shared(&self) -> bool {
        false
    }

    fn partition_of(&self, _: &str) -> u8 {
        0
    }

    fn register<'a>(&'a self, _: Registration<'a>) -> Pending<'a, Option<Joined>> {
        Box::pin(std::future::ready(None))
    }

    fn abandon(&self, _: &str, _: &str, _: u64, _: &[Box<str>]) {}

    fn ended(&self, _: &str, _: Option<&str>, _: u64, _: &[&str]) {}

    fn unregister(&self, _: &str, _: &str, _: u64) {}

    fn disconnect_elsewhere<'a>(&'a self, _: &'a str, _: &'a str) -> Pending<'a, Elsewhere> {
        Box::pin(std::future::ready(Elsewhere::NotFound))
    }

    fn stats(&self) -> Pending<'_, Option<ClusterStats>> {
        Box::pin(std::future::ready(None))
    }

    fn heartbeat(&self, _: &Broker, _: u16) {}

    fn health(&self) -> Health {
        Health::Ok
    }

    fn drain(&self, _: Duration) {}
}

impl EventBus for Local {
    fn publish<'a>(
        &'a self,
        broker: &'a Broker,
        batch: Vec<PublishRequest>,
        _: Option<&'a str>,
    ) -> Pending<'a, Published> {
        let ids = batch
            .into_iter()
            .map(|p| local_publish(broker, p.into()))
            .collect();
        Box::pin(std::future::ready(Published::Ids {
            ids,
            replayed: false,
        }))
    }

    fn publish_now<'p>(&self, broker: &Broker, p: PublishRef<'p>) -> Result<u64, PublishRef<'p>> {
        Ok(local_publish(broker, p))
    }
}

/// One event sequenced by this pod's broker.
fn local_publish(broker: &Broker, p: PublishRef<'_>) -> u64 {
    broker.publish(Publish {
        event: &p.event,
        data: &p.data,
        target: p.target,
        ttl_ns: p.ttl_seconds.saturating_mul(1_000_000_000),
    })
}
