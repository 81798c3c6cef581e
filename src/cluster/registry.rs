//! The cluster registry: connections registered in batches (with this pod's
//! interest in their users and topics, and their pending events or the events a
//! resume missed), removed in batches, heartbeated per shard in one variadic
//! command, cleaned by the stale-connection job, forwarded disconnects, cluster
//! stats, and the drain that takes this pod out in one batch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::SortedSetsInterface;
use fred::types::Value;
use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{log, partition_of, Cluster, Source};
use crate::broker::{Floor, Joined, Start};
use crate::clock;
use crate::metrics as m;
use crate::seam::{ClusterStats, Registration, ResumeFrom};
use crate::Shared;

/// A connect waiting to be registered.
pub(super) struct RegisterReq {
    member: String,
    /// The user's partition.
    partition: usize,
    serial: u64,
    resume: Option<ResumeFrom>,
    topics: String,
    joins: Vec<String>,
    reply: oneshot::Sender<Option<Vec<Registered>>>,
}

/// One register script's answer for one connection.
struct Registered {
    /// The source it ran on.
    source: u16,
    /// The source log's last id at registration.
    floor: u64,
    /// The source log's first retained id (0: empty).
    first: u64,
    /// For a presence stream's resume: the presence log's first retained id
    /// and its last generated one (0: none).
    presence_first: u64,
    presence_last: u64,
    entries: Vec<Value>,
}

impl Registered {
    /// Whether a resume after `after` cannot be exact here: from the future, or
    /// from before the retained log (ids between it and the first retained one
    /// may be gone, or the log is empty). `presence`: the stream receives
    /// presence transitions, so the presence log's retained part counts too.
    fn resync(&self, after: u64, presence: bool) -> bool {
        let gone = |first: u64, last: u64| after < last && (first == 0 || after < first - 1);
        after > self.floor
            || gone(self.first, self.floor)
            || (presence && gone(self.presence_first, self.presence_last))
    }

    fn events(&self) -> Vec<Arc<crate::event::Event>> {
        self.entries
            .iter()
            .filter_map(|e| log::event(e).and_then(|(_, ev)| ev))
            .collect()
    }
}

/// A connection of this pod that ended: `(member, expected owner)`.
pub(super) type Removal = (String, String);

/// One shard's connections for one heartbeat: `(member, serial)`.
pub(super) type HeartbeatBatch = Vec<(String, u64)>;

/// Connects registered per script call, ends removed per script call.
const REGISTER_BATCH: usize = 512;
const REMOVE_BATCH: usize = 4096;
/// Ends kept for retry while Redis is unreachable (beyond, the cleanup job
/// catches them once their heartbeat is stale).
const REMOVE_RETRY_CAP: usize = 100_000;

impl Cluster {
    /// Register a new connection; returns what its stream starts with, once this
    /// pod has read everything routed to it up to the registration. `None` when
    /// Redis could not be reached in time (the connection then runs locally
    /// only and the next heartbeat registers it). Its topics count towards this
    /// pod's interest from here on: every connect that calls this must end with
    /// [`Cluster::unregister`] or [`Cluster::forget`].
    pub async fn register(&self, reg: Registration<'_>) -> Option<Joined> {
        let Registration {
            user,
            conn_id,
            serial,
            topics,
            resume,
        } = reg;
        let joins = self.topics.subscribe(topics.iter().map(|t| &**t));
        let presence = crate::presence::watches(topics);
        if !self.is_up() {
            return None;
        }
        let (reply, rx) = oneshot::channel();
        self.register_tx
            .send(RegisterReq {
                member: log::member(user, conn_id),
                partition: partition_of(user, self.set.partitions),
                serial,
                resume,
                topics: topics.join(","),
                joins,
                reply,
            })
            .ok()?;
        let answers = tokio::time::timeout(self.set.timeout, rx)
            .await
            .ok()?
            .ok()??;
        // Wait until this pod has read, in every source, what was routed to it up
        // to the registration; note its order key there.
        let mut floors = SmallVec::new();
        for r in &answers {
            let src = &self.sources[r.source as usize];
            let mut read_to = src.read_to.subscribe();
            let caught_up =
                tokio::time::timeout(self.set.timeout, read_to.wait_for(|&v| v >= r.floor)).await;
            if !matches!(caught_up, Ok(Ok(_))) {
                warn!("this pod's reader is behind; a new stream may miss events");
            }
            // Not passed (the wait timed out): nothing from this pod's history,
            // only what arrives after the stream opens.
            let seq = src.seq_at(r.floor).unwrap_or(u64::MAX);
            floors.push(Floor {
                source: r.source,
                seq,
            });
        }
        let now = clock::unix_ms();
        let pending = |r: &Registered| {
            Start::Pending(
                r.entries
                    .iter()
                    .filter_map(|e| log::pending(e, now))
                    .collect(),
            )
        };
        if !self.partitioned() {
            let r = answers.first()?;
            let start = match resume {
                None => pending(r),
                Some(ResumeFrom::Id(after)) if !r.resync(after, presence) => Start::Replay {
                    partition: r.events(),
                    broadcast: Vec::new(),
                },
                Some(_) => Start::Resync,
            };
            return Some(Joined {
                floors,
                start,
                ids_from: None,
            });
        }
        let b = answers.iter().find(|r| r.source == 0)?;
        let p = answers.iter().find(|r| r.source != 0)?;
        let (start, from) = match resume {
            None => (pending(p), b.floor),
            Some(ResumeFrom::Pair(rb, rp))
                if !b.resync(rb, presence) && !p.resync(rp, presence) =>
            {
                (
                    Start::Replay {
                        partition: p.events(),
                        broadcast: b.events(),
                    },
                    rb,
                )
            }
            Some(_) => (Start::Resync, b.floor),
        };
        Some(Joined {
            floors,
            start,
            ids_from: Some((from, p.floor)),
        })
    }

    /// A stream of this pod ended, whatever the reason: its topics stop counting
    /// towards this pod's interest; `conn_id` is given when it was still in this
    /// pod's registry (so it leaves Redis's too).
    pub fn ended(&self, user: &str, conn_id: Option<&str>, serial: u64, topics: &[&str]) {
        self.topics.unsubscribe(topics.iter().copied());
        if let Some(conn_id) = conn_id {
            self.unregister(user, conn_id, serial);
        }
    }

    /// A connection of this pod left its registry (its stream ends next).
    pub fn unregister(&self, user: &str, conn_id: &str, serial: u64) {
        if self.draining.load(Ordering::Acquire) {
            return; // the drain removed every connection of this pod in one batch
        }
        self.remove(user, conn_id, serial);
    }

    /// Take back a registration whose connect was refused afterwards, draining
    /// or not.
    pub fn forget(&self, user: &str, conn_id: &str, serial: u64, topics: &[Box<str>]) {
        self.topics.unsubscribe(topics.iter().map(|t| &**t));
        self.remove(user, conn_id, serial);
    }

    fn remove(&self, user: &str, conn_id: &str, serial: u64) {
        if crate::presence::is_internal(user) {
            return; // presence streams are not in the registry
        }
        let _ = self.remove_tx.send((
            log::member(user, conn_id),
            format!("{}/{serial}", self.set.pod),
        ));
    }

    /// One shard's heartbeat: the connections this pod registered on `shard`.
    pub fn heartbeat(&self, broker: &crate::broker::Broker, shard: u16) {
        let mut batch: HeartbeatBatch = Vec::new();
        broker.for_each_registered(Some(shard), |user, conn_id, loc| {
            if !crate::presence::is_internal(user) {
                batch.push((log::member(user, conn_id), loc.serial));
            }
        });
        let _ = self.heartbeat_tx.send(batch);
    }

    /// End `(user, conn_id)` on whichever pod holds it. `Ok(false)`: no such
    /// connection anywhere; `Err`: Redis unreachable.
    pub async fn disconnect(&self, user: &str, conn_id: &str) -> Result<bool, ()> {
        let src = self.user_source(user);
        let mut args = self.args(src, 2);
        args.push(Value::from(clock::unix_ms() as i64));
        args.push(Value::from(log::member(user, conn_id)));
        let v = self
            .script(src, "disconnect", &self.scripts.disconnect, args)
            .await
            .ok_or(())?;
        Ok(v.get(1).is_some_and(|o| !o.is_null()))
    }

    /// Refuse `user`'s connects on every pod until `until_ms`, and end its
    /// streams there (see `BLOCK` in [`super::scripts`]). False when Redis did
    /// not take it.
    pub async fn block(&self, user: &str, until_ms: u64) -> bool {
        let src = self.bcast();
        let mut args = self.args(src, 3);
        args.push(Value::from(user));
        args.push(Value::from(until_ms as i64));
        args.push(Value::from(self.set.history_events.max(1) as i64));
        self.script(src, "block", &self.scripts.block, args)
            .await
            .is_some()
    }

    /// Cluster-wide counts (summed over the partitions), `None` when Redis is
    /// unreachable.
    pub async fn stats(&self) -> Option<ClusterStats> {
        if !self.is_up() {
            return None;
        }
        let cutoff = clock::unix_ms().saturating_sub(self.set.stale_after.as_millis() as u64);
        let mut total = ClusterStats {
            connections: 0,
            users: 0,
            pods: 0,
            inactive: 0,
        };
        // Users whose last connection ended within the linger: still online.
        let mut lingering = 0;
        for src in &self.sources {
            let mut args = self.args(src, 1);
            args.push(Value::from(cutoff as i64));
            let v = self.script(src, "stats", &self.scripts.stats, args).await?;
            let n = |i: usize| v.get(i).and_then(|x| x.as_u64()).unwrap_or(0);
            total.connections += n(1);
            total.users += n(2);
            total.pods += n(3);
            total.inactive += n(4);
            lingering += n(5);
        }
        m::set_online_users(total.users + lingering);
        Some(total)
    }

    /// Topic joins and leaves with no connection to register: the linger's
    /// leaves, joins that failed before, or all joins again after Redis lost them.
    pub(super) async fn topic_changes(&self, rejoin_all: bool) {
        let leaves = self.topics.due_leaves(self.set.topic_linger);
        let joins = self.topics.to_rejoin(rejoin_all);
        let counts = self.topics.take_counts(rejoin_all);
        if leaves.is_empty() && joins.is_empty() && counts.is_empty() {
            return;
        }
        let src = self.bcast();
        let args = self.register_args(src, self.bcast_what(), &leaves, &joins, &counts, 0);
        if self
            .script(src, "register", &self.scripts.register, args)
            .await
            .is_some()
        {
            self.topics.joined(&joins);
        } else {
            self.topics.unsent(counts);
        }
    }

    /// What the register script does on the broadcasts' tag.
    fn bcast_what(&self) -> &'static str {
        if self.partitioned() {
            "bcast"
        } else {
            "full"
        }
    }

    /// The oldest log id the history keeps at `now_ms` (`"0"`: no age bound).
    fn minid(&self, now_ms: u64) -> String {
        let age_ms = u64::try_from(self.set.history_age.as_millis()).unwrap_or(u64::MAX);
        if age_ms == 0 {
            return "0".to_string();
        }
        let cut = now_ms.saturating_sub(age_ms);
        format!("{cut}-0")
    }

    /// The register script's arguments up to the connections.
    fn register_args(
        &self,
        src: &Source,
        what: &str,
        leaves: &[String],
        joins: &[String],
        counts: &[(String, u32)],
        conns: usize,
    ) -> Vec<Value> {
        let now = clock::unix_ms();
        let mut args = self.args(
            src,
            8 + leaves.len() + joins.len() + counts.len() * 2 + conns * 5,
        );
        args.push(Value::from(now as i64));
        args.push(self.pod_value());
        args.push(Value::from(self.minid(now)));
        args.push(Value::from(
            (self.set.history_events.max(1) * 2 + 100) as i64,
        ));
        args.push(Value::from(what));
        args.push(Value::from(leaves.len() as i64));
        args.extend(leaves.iter().map(|t| Value::from(t.as_str())));
        args.push(Value::from(joins.len() as i64));
        args.extend(joins.iter().map(|t| Value::from(t.as_str())));
        args.push(Value::from(counts.len() as i64));
        for (t, n) in counts {
            args.push(Value::from(t.as_str()));
            args.push(Value::from(n.to_string()));
        }
        args
    }
}

/// Register connects in batches: whatever arrived while the last batch ran,
/// with the topic leaves that are due (in order with the joins). One script
/// call per source the batch touches: without partitions one; with them one per
/// partition (the registry) and one on the broadcasts' tag (topic interest,
/// broadcast replay and marker). Between connects, leaves and failed joins go
/// out every linger period.
pub(super) async fn register_loop(c: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<RegisterReq>) {
    let mut batch: Vec<RegisterReq> = Vec::with_capacity(REGISTER_BATCH);
    // Between connects: due leaves, and the topic counts that changed (so
    // that presence counts follow ends within this tick).
    let tick = c
        .set
        .topic_linger
        .min(Duration::from_millis(500))
        .max(Duration::from_millis(100));
    loop {
        let first = match tokio::time::timeout(tick, rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(_) => {
                if c.is_up() {
                    c.topic_changes(false).await;
                }
                continue;
            }
        };
        batch.push(first);
        while batch.len() < REGISTER_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        m::redis_batch("register", batch.len());
        let mut answers: Vec<Option<Vec<Registered>>> =
            batch.iter().map(|_| Some(Vec::new())).collect();
        // The broadcasts' tag (everything, without partitions).
        let leaves = c.topics.due_leaves(c.set.topic_linger);
        let mut joins: Vec<String> = batch.iter().flat_map(|r| r.joins.iter().cloned()).collect();
        joins.sort_unstable();
        joins.dedup();
        let counts = c.topics.take_counts(false);
        let all: Vec<usize> = (0..batch.len()).collect();
        let what = c.bcast_what();
        let mut outbox = Vec::new();
        let part = |r: &RegisterReq| match (r.resume, c.partitioned()) {
            (None, _) => None,
            (Some(ResumeFrom::Id(id)), false) => Some(ResumeFrom::Id(id)),
            (Some(ResumeFrom::Pair(b, _)), true) => Some(ResumeFrom::Id(b)),
            _ => Some(ResumeFrom::Unknown),
        };
        let ok = register_on(
            &c,
            c.bcast(),
            what,
            (&leaves, &joins, &counts),
            &batch,
            &all,
            part,
            &mut answers,
            &mut outbox,
        )
        .await;
        if ok {
            c.topics.joined(&joins);
        } else {
            c.topics.unsent(counts);
        }
        // Each partition the batch touches.
        if c.partitioned() {
            for k in 0..c.set.partitions {
                let mine: Vec<usize> = (0..batch.len())
                    .filter(|&i| batch[i].partition == k)
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let part = |r: &RegisterReq| match r.resume {
                    Some(ResumeFrom::Pair(_, p)) => Some(ResumeFrom::Id(p)),
                    Some(_) => Some(ResumeFrom::Unknown),
                    None => None,
                };
                register_on(
                    &c,
                    c.part(k),
                    "reg",
                    (&[], &[], &[]),
                    &batch,
                    &mine,
                    part,
                    &mut answers,
                    &mut outbox,
                )
                .await;
            }
        }
        for (r, a) in batch.drain(..).zip(answers) {
            let _ = r.reply.send(a);
        }
        // The batch's presence transitions, published without holding up the
        // next batch.
        if !outbox.is_empty() {
            let c = c.clone();
            tokio::task::spawn_local(async move { super::presence::publish(&c, outbox).await });
        }
    }
}

/// One register script call on `src` for the connects `which` of `batch`;
/// each one's answer goes to `answers` (`None` when the call failed). Returns
/// whether it succeeded.
/// `interest`: the topic leaves, joins and changed counts it carries. A
/// presence transition it decided goes to `outbox`.
#[allow(clippy::too_many_arguments)]
async fn register_on(
    c: &Cluster,
    src: &Source,
    what: &str,
    interest: (&[String], &[String], &[(String, u32)]),
    batch: &[RegisterReq],
    which: &[usize],
    resume: impl Fn(&RegisterReq) -> Option<ResumeFrom>,
    answers: &mut [Option<Vec<Registered>>],
    outbox: &mut Vec<super::presence::Outbox>,
) -> bool {
    let (leaves, joins, counts) = interest;
    let mut args = c.register_args(src, what, leaves, joins, counts, which.len());
    for &i in which {
        let r = &batch[i];
        args.push(Value::from(r.member.as_str()));
        args.push(Value::from(r.serial.to_string()));
        let (mode, sid) = match resume(r) {
            None => ("n", String::new()),
            Some(ResumeFrom::Id(id)) => ("r", log::stream_id(id)),
            Some(_) => ("x", String::new()),
        };
        args.push(Value::from(mode));
        args.push(Value::from(sid));
        args.push(Value::from(r.topics.as_str()));
    }
    let reply = c.script(src, "register", &c.scripts.register, args).await;
    let id = |x: Option<&Value>| x.and_then(|x| x.as_str().and_then(|s| log::sse_id(&s)));
    let Some(v) = reply else {
        for &i in which {
            answers[i] = None;
        }
        return false;
    };
    let floor = id(v.first());
    let first = id(v.get(3)).unwrap_or(0);
    let (presence_first, presence_last) = (id(v.get(6)).unwrap_or(0), id(v.get(7)).unwrap_or(0));
    outbox.extend(super::presence::Outbox::online(
        src.index,
        v.get(4),
        v.get(5),
        clock::unix_ms(),
    ));
    let mut lists = v
        .into_iter()
        .nth(2)
        .map(Value::into_array)
        .unwrap_or_default()
        .into_iter();
    for &i in which {
        let entries = lists.next().map(Value::into_array).unwrap_or_default();
        match (floor, answers[i].as_mut()) {
            (Some(floor), Some(a)) => a.push(Registered {
                source: src.index,
                floor,
                first,
                presence_first,
                presence_last,
                entries,
            }),
            _ => answers[i] = None,
        }
    }
    true
}

/// Remove ended connections in batches; keep failed ones for a retry.
pub(super) async fn remove_loop(c: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<Removal>) {
    let mut retry: Vec<Removal> = Vec::new();
    loop {
        let first = if retry.is_empty() {
            match rx.recv().await {
                Some(r) => Some(r),
                None => return,
            }
        } else {
            tokio::time::timeout(Duration::from_millis(500), rx.recv())
                .await
                .ok()
                .flatten()
        };
        let mut batch: Vec<Removal> = std::mem::take(&mut retry);
        batch.extend(first);
        while batch.len() < REMOVE_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if batch.is_empty() || !c.is_up() {
            retry = batch;
            retry.truncate(REMOVE_RETRY_CAP);
            continue;
        }
        retry = send_removals(&c, batch).await;
        retry.truncate(REMOVE_RETRY_CAP);
    }
}

/// Split `items` (keyed by a registry member `user/conn`) by the source that
/// holds each member's user: one pass, each item moved once. Without partitions
/// everything is the one source's.
fn by_source<T>(c: &Cluster, items: Vec<T>, member: impl Fn(&T) -> &str) -> Vec<(&Source, Vec<T>)> {
    let sources = c.user_sources();
    if sources.len() == 1 {
        return vec![(&sources[0], items)];
    }
    let mut out: Vec<Vec<T>> = sources.iter().map(|_| Vec::new()).collect();
    for item in items {
        let m = member(&item);
        let user = m.split_once('/').map_or(m, |(u, _)| u);
        out[partition_of(user, c.set.partitions)].push(item);
    }
    sources
        .iter()
        .zip(out)
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// Remove `batch`, one script call per source; returns what failed.
async fn send_removals(c: &Cluster, batch: Vec<Removal>) -> Vec<Removal> {
    let mut failed = Vec::new();
    for (src, mine) in by_source(c, batch, |(member, _)| member) {
        let mut args = c.args(src, 1 + mine.len() * 2);
        args.push(Value::from(clock::unix_ms() as i64));
        for (member, owner) in &mine {
            args.push(Value::from(member.as_str()));
            args.push(Value::from(owner.as_str()));
        }
        m::redis_batch("remove", mine.len());
        if c.script(src, "remove", &c.scripts.remove, args)
            .await
            .is_none()
        {
            failed.extend(mine);
        }
    }
    failed
}

/// Per shard batch: one variadic `ZADD` per source of every connection's
/// heartbeat; the rare batch that finds connections the registry lost puts them
/// back. (The pod's own heartbeat rides on its delivery probe.)
pub(super) async fn heartbeat_loop(
    shared: Arc<Shared>,
    c: Arc<Cluster>,
    mut rx: mpsc::UnboundedReceiver<HeartbeatBatch>,
) {
    while let Some(batch) = rx.recv().await {
        if batch.is_empty() || c.draining.load(Ordering::Acquire) {
            continue;
        }
        for (src, mine) in by_source(&c, batch, |(member, _)| member) {
            heartbeat_batch(&shared, &c, src, mine).await;
        }
    }
}

async fn heartbeat_batch(shared: &Shared, c: &Cluster, src: &Source, batch: HeartbeatBatch) {
    let now = clock::unix_ms();
    let values: Vec<(f64, Value)> = batch
        .iter()
        .map(|(member, _)| (now as f64, Value::from(member.as_str())))
        .collect();
    m::redis_batch("heartbeat", batch.len());
    let started = Instant::now();
    let r: Result<i64, _> = c
        .cmd
        .zadd(&src.hb_key, None, None, false, false, values)
        .await;
    let Some(added) = c.done("heartbeat", started, r) else {
        return;
    };
    m::redis_commands("heartbeat", 1);
    if added > 0 {
        // Some connections were not in the registry: cleaned while this pod could
        // not reach Redis, or Redis lost its data. Put them back.
        // Asked now, after the ZADD: a connection that ended since the listing
        // was taken out of this pod's registry before its removal was sent, so
        // it is not held here and must not be put back (its heartbeat, which
        // the ZADD put back, goes instead).
        let mut args = c.args(src, 2 + batch.len() * 5);
        args.push(Value::from(now as i64));
        args.push(c.pod_value());
        for (member, serial) in &batch {
            // When it connected and its topics, as its registration had them.
            let (user, conn) = member.split_once('/').unwrap_or((member, ""));
            let meta = shared
                .broker
                .connections_of(user)
                .into_iter()
                .find(|m| &*m.conn_id == conn);
            args.push(Value::from(member.as_str()));
            args.push(Value::from(serial.to_string()));
            args.push(Value::from(
                meta.as_ref().map_or(now, |m| m.connected_ms) as i64
            ));
            args.push(Value::from(meta.as_ref().map_or("", |m| &*m.topics)));
            args.push(Value::from(if meta.is_some() { "1" } else { "0" }));
        }
        if let Some(v) = c
            .script(src, "reregister", &c.scripts.reregister, args)
            .await
        {
            if let Some(e) = super::presence::Outbox::online(src.index, v.get(3), v.get(4), now) {
                super::presence::publish(c, vec![e]).await;
            }
            let restored = v.get(1).and_then(|x| x.as_u64()).unwrap_or(0);
            if restored > 0 {
                info!(restored, "re-registered connections the registry had lost");
                // Events routed while they were missing did not reach them.
                let members = v
                    .into_iter()
                    .nth(2)
                    .map(Value::into_array)
                    .unwrap_or_default();
                let mut lost = c.lost.lock().unwrap_or_else(|e| e.into_inner());
                for m in members {
                    if let Some((user, conn)) =
                        m.as_str().as_deref().and_then(|s| s.split_once('/'))
                    {
                        lost.push((user.to_string(), conn.to_string()));
                    }
                }
            }
        }
    }
}

/// The cleanup job: every pod runs it every cleanup interval; it is idempotent.
/// The broadcasts' tag first (it holds the pod set: dead pods are found there),
/// then each partition (stale connections, dead pods' inboxes).
pub(super) async fn cleanup_loop(c: Arc<Cluster>) {
    let mut tick = tokio::time::interval(c.set.cleanup);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keep_ms = (c.set.stale_after * 20)
        .max(Duration::from_secs(3600))
        .as_millis() as i64;
    // A resume is remembered until every inbox that could hold an event it
    // replayed has been salvaged: a dead pod is found within stale_after plus a
    // cleanup interval, its partitions' inboxes one interval later.
    let resumes_keep_ms =
        ((c.set.stale_after + c.set.cleanup) * 4 + Duration::from_secs(60)).as_millis() as i64;
    loop {
        tick.tick().await;
        if !c.is_up() {
            continue;
        }
        let now = clock::unix_ms();
        let cutoff = now.saturating_sub(c.set.stale_after.as_millis() as u64);
        let mut dead: Vec<Value> = Vec::new();
        for src in &c.sources {
            let mut args = c.args(src, 7 + dead.len());
            args.extend([
                Value::from(now as i64),
                Value::from(cutoff as i64),
                Value::from(10_000i64),
                Value::from(keep_ms),
                Value::from(100_000i64),
                Value::from(c.minid(now)),
                Value::from(if src.index == 0 { "1" } else { "0" }),
                Value::from(c.set.max_pending as i64),
                Value::from(c.set.history_events as i64),
                Value::from(resumes_keep_ms),
            ]);
            args.extend(dead.iter().cloned());
            let Some(v) = c.script(src, "cleanup", &c.scripts.cleanup, args).await else {
                break;
            };
            let n = |i: usize| v.get(i).and_then(|x| x.as_u64()).unwrap_or(0);
            let marked = n(1);
            if marked > 0 {
                m::marked_inactive(marked);
                info!(marked, "marked stale connections inactive");
            }
            let (pending, again, replayed) = (n(4), n(5), n(6));
            if pending + again + replayed > 0 {
                m::salvaged(pending, again, replayed);
                info!(
                    pending,
                    again, replayed, "a dead pod's unread user events given to their users"
                );
            }
            if src.index == 0 {
                dead = v
                    .into_iter()
                    .nth(3)
                    .map(Value::into_array)
                    .unwrap_or_default();
                if !dead.is_empty() {
                    info!(
                        pods = dead.len(),
                        "dropped dead pods' topic interest and inboxes"
                    );
                }
            }
        }
        // Presence: lingers that passed, outbox entries nobody confirmed, and
        // the online-users gauge.
        super::presence::sweep(&c, true).await;
    }
}

/// The two steps of a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DrainStep {
    /// Before the streams end: this pod's connections leave the registry in
    /// one batch, buffered publishes get a last chance.
    Connections,
    /// After they ended: the pod's topic interest, inbox and pod entry go.
    Leave,
}

/// Remove this pod from the registry in one batch when it drains, and the
/// rest of it once its streams have ended.
pub(super) async fn drain_loop(
    shared: Arc<Shared>,
    c: Arc<Cluster>,
    mut rx: mpsc::UnboundedReceiver<(DrainStep, std::sync::mpsc::Sender<()>)>,
) {
    while let Some((step, done)) = rx.recv().await {
        if step == DrainStep::Leave {
            for src in &c.sources {
                let mut args = c.args(src, 2);
                args.push(c.pod_value());
                args.push(Value::from(if src.index == 0 { "1" } else { "0" }));
                c.script(src, "drain", &c.scripts.leave, args).await;
            }
            let _ = done.send(());
            continue;
        }
        let pod = &c.set.pod;
        let mut batch: Vec<Removal> = Vec::new();
        shared
            .broker
            .for_each_registered(None, |user, conn_id, loc| {
                if !crate::presence::is_internal(user) {
                    batch.push((log::member(user, conn_id), format!("{pod}/{}", loc.serial)));
                }
            });
        // With Redis unreachable the cleanup job of the other pods removes them.
        if !batch.is_empty() && c.is_up() {
            send_removals(&c, batch).await;
        }
        // Publishes still buffered get one more chance.
        for _ in 0..20 {
            if c.queue_is_empty() || !c.is_up() {
                break;
            }
            c.publish_wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = done.send(());
    }
}
