//! Cluster mode: several pods acting as one server through Redis (`--redis`),
//! with the `fred` client. This is the `RedisRegistry` + `EventBus` side of the
//! registry seam; without `--redis` none of it exists and the pod keeps its
//! registry, history and pending events in memory ([`crate::broker`]).
//!
//! ## Route by interest
//! A pod receives from Redis only what its connections need: events for the
//! users and topics it holds connections for (in its inbox) and `all` events
//! (one broadcast stream every pod reads). What Redis sends per user event does
//! not grow with the number of pods.
//!
//! ## Partitions (`--partitions N`)
//! With N = 1 every key below lives under the hash tag `{prefix}`. With N > 1
//! a user's keys (registry entries, pending events, the history of user events,
//! the pod inboxes for them) live under its partition's tag (the user's slot
//! modulo N picks it; the N tags are chosen so that their slots spread evenly
//! over the slot range, hence over a Redis Cluster's masters), and broadcasts
//! and topics under `{prefix}`. Each tag is an ordered source with its own log;
//! a pod reads every source with a reader of its own. A connection then sees two
//! sources, so its SSE ids are `b.p`: the broadcast position and its partition's
//! position, each increasing; a resume replays each source after its own part.
//!
//! ## Keys (per tag; one tag, one Redis Cluster slot)
//! * `{p}:log` — Redis Stream of every published event: the history resumes are
//!   answered from, and the source of ids: the SSE id is `ms << 20 | seq` of the
//!   stream id ([`log::sse_id`]). Trimmed to `history_events` (`MAXLEN ~`) and
//!   `history_seconds` (`MINID ~`).
//! * `{p}:plog` — presence transitions (the presence topic's events), kept
//!   apart from the log so that a storm of them does not push other events out
//!   of the history, trimmed the same way; their ids are of the log's sequence
//!   (`XSETID` moves the log's last id past each).
//! * `{p}:lgone` — when the log holds no event, up to where its events may be
//!   gone (it was created, or trimmed to its age, there).
//! * `{p}:all` — the broadcast stream: `all` events under their log ids;
//!   `{p}:alast` its last id.
//! * `{p}:inbox:<pod>` — one pod's inbox: events for its users and topics (with
//!   their log id), registration markers, close requests (forwarded disconnects,
//!   replacements), its delivery probes.
//! * `{p}:uconns:<user>` — hash connection id → pod: where a user's events go
//!   (the distinct pods), and the user's connections for presence.
//!   `{p}:tpods:<topic>` — set of pods subscribed to a topic;
//!   `{p}:ptopics:<pod>` — the topics a pod joined (dropped with the pod);
//!   `{p}:tcount:<topic>` — hash pod → its streams on the topic (presence).
//! * `{p}:conns` — hash `user/conn` → `pod/serial/connected ms/topics`: where
//!   each connection lives.
//! * `{p}:ucount` — hash `user` → number of connections (the user count).
//! * `{p}:linger` — sorted set of users whose last connection ended (by when),
//!   not offline before `--presence-linger`; `{p}:presq` — the presence
//!   outbox ([`presence`]).
//! * `{p}:hb` — sorted set `user/conn` → last heartbeat (unix ms).
//! * `{p}:pods` — sorted set pod → last heartbeat; `{p}:inactive` — sorted set of
//!   connections the cleanup marked inactive (bounded).
//! * `{p}:pending:<user>` — list of pending events (TTL, at most `max_pending`).
//!
//! ## Why the ordering is exact
//! A publish is one script: append to the log and route (broadcast stream, the
//! inbox of each interested pod, or pending when the user has no connection
//! anywhere). A connect is one script: register (the pod's interest in the user
//! and its topics included), take pending, read the log's last id `L`, and put a
//! marker in the pod's inbox. Redis runs scripts one at a time, so every event
//! is either before `L` (pending, or before the connection existed) or after it
//! (routed to this pod). The pod waits until its reader has passed the marker
//! and starts the stream with the pending events and the events after `L` it has
//! read; later ones arrive live ([`crate::broker::Broker::open`]). A resume is
//! answered from the log in the same script (the events after the client's id
//! that the connection would have received). The reader merges the inbox and
//! the broadcast stream in log order ([`reader`]).
//!
//! ## Batching (commands per interval do not grow with connections)
//! Heartbeats: per shard and interval one variadic `ZADD {p}:hb`, plus one probe
//! script for the pod. Connects arriving together share one register script;
//! ends share one remove script. The cleanup is one script per interval on every
//! pod.
//!
//! ## Faults
//! fred reconnects with exponential backoff. While Redis is unreachable the pod
//! serves its own connections, heartbeats and fan-out, readiness says degraded,
//! publishes wait in a bounded buffer (503 past it), ends wait in a bounded retry
//! set; when Redis returns the buffer is sent in order, and a publish whose call
//! timed out but that Redis applied is recognised, not appended twice
//! ([`publish`]) and the next heartbeat
//! puts back every local connection the registry lost. Every interval the pod
//! sends itself a probe through its inbox; one that does not come back within
//! the bound turns readiness degraded and reconnects the reader ([`probe`]).

pub mod connect;
pub mod interest;
pub mod log;
mod presence;
mod probe;
mod publish;
pub mod reader;
mod registry;
pub mod scripts;
mod seam;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, EventInterface};
use fred::prelude::{Builder, Client, ReconnectPolicy};
use fred::types::Value;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, warn};

use crate::metrics as m;
use crate::Shared;
use interest::TopicInterest;
use registry::{HeartbeatBatch, RegisterReq, Removal};
use scripts::Scripts;

/// What the background thread receives.
struct Receivers {
    register: mpsc::UnboundedReceiver<RegisterReq>,
    remove: mpsc::UnboundedReceiver<Removal>,
    heartbeat: mpsc::UnboundedReceiver<HeartbeatBatch>,
    drain: mpsc::UnboundedReceiver<(registry::DrainStep, std::sync::mpsc::Sender<()>)>,
}

/// Settings taken from the config.
struct Settings {
    pod: String,
    timeout: Duration,
    heartbeat: Duration,
    stale_after: Duration,
    cleanup: Duration,
    history_events: usize,
    history_age: Duration,
    max_pending: usize,
    publish_buffer: usize,
    idempotency_window: Duration,
    /// Length bound of the inboxes and the broadcast stream.
    inbox_max: usize,
    topic_linger: Duration,
    presence_linger: Duration,
    /// `--partitions`.
    partitions: usize,
}

/// One ordered source of events this pod reads: a hash tag with its own log,
/// this pod's inbox under it and, for the broadcasts, the broadcast stream.
pub(crate) struct Source {
    /// 0 the broadcasts (the only source without partitions), 1 + k partition k.
    index: u16,
    tag: String,
    log_key: String,
    inbox_key: String,
    /// The broadcast stream (source 0 only).
    all_key: Option<String>,
    hb_key: String,
    /// The blocking `XREAD`s of this source, on a connection of their own.
    reader: Client,
    /// The log id up to which this pod has read everything routed to it here
    /// (the last registration marker its reader passed)...
    read_to: watch::Sender<u64>,
    /// ...and, per recent marker, this pod's order key when it passed.
    markers: Mutex<VecDeque<(u64, u64)>>,
    /// The position of the reader in this pod's inbox (an SSE id).
    inbox_read: AtomicU64,
    /// Delivery probes through this source: the last sent and the last seen back.
    probe_sent: AtomicU64,
    probe_seen: AtomicU64,
    /// The probe asks the reader to reconnect and check its positions.
    reset_requested: AtomicBool,
    /// The last probe through this source could not even be sent: the Redis
    /// node holding its keys does not answer (every pod sees the same).
    probe_unsent: AtomicBool,
    /// The lowest unsettled publish sequence last sent to trim this source's
    /// record of applied publishes ([`publish`]).
    trimmed_to: AtomicU64,
}

/// Registration markers remembered per source (a connect looks its own up right
/// after its reader passed it).
const MARKERS_KEPT: usize = 4096;

impl Source {
    fn tag_value(&self) -> Value {
        Value::from(self.tag.as_str())
    }

    /// The reader passed the marker of a registration at log position `upto`,
    /// when this pod's order key was `seq`.
    fn passed(&self, upto: u64, seq: u64) {
        {
            let mut m = self.markers.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() >= MARKERS_KEPT {
                m.pop_front();
            }
            m.push_back((upto, seq));
        }
        self.read_to.send_if_modified(|v| {
            let moved = upto > *v;
            *v = (*v).max(upto);
            moved
        });
    }

    /// This pod's order key when its reader passed the first marker at or after
    /// log position `at`; `None` when not passed (yet).
    fn seq_at(&self, at: u64) -> Option<u64> {
        let m = self.markers.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().find(|(upto, _)| *upto >= at).map(|(_, seq)| *seq)
    }
}

/// The hash tags of a cluster: the broadcasts' `{prefix}`, then one per
/// partition when there are more than one, each picked (by a suffix) so that its
/// slot lies at the middle of its own N-th of the slot range: a Redis Cluster
/// whose masters own equal ranges gets its partitions spread as evenly as N
/// allows (evenly when N is a multiple of the masters; naive tags `{p0}..{pN}`
/// can leave masters idle).
pub fn tags(prefix: &str, partitions: usize) -> Vec<String> {
    let mut out = vec![format!("{{{prefix}}}")];
    if partitions > 1 {
        const SLOTS: usize = 16384;
        for k in 0..partitions {
            let (start, end) = (k * SLOTS / partitions, (k + 1) * SLOTS / partitions);
            let middle = (start + end) / 2;
            let half = ((end - start) / 16).clamp(1, 64);
            let (lo, hi) = (middle - half.min(middle - start), middle + half);
            let tag = (0u32..)
                .map(|salt| format!("{prefix}.p{k}.{salt}"))
                .find(|t| {
                    let slot = fred::util::redis_keyslot(t.as_bytes()) as usize;
                    (lo..hi).contains(&slot)
                })
                .expect("some suffix lands in every slot range");
            out.push(format!("{{{tag}}}"));
        }
    }
    out
}

/// The partition of `user` among `partitions` (the same on every pod).
pub fn partition_of(user: &str, partitions: usize) -> usize {
    if partitions <= 1 {
        return 0;
    }
    // The user's slot, as Redis would compute it: evenly spread, and stable.
    let mut key = Vec::with_capacity(user.len() + 2);
    key.push(b'{');
    key.extend_from_slice(user.as_bytes());
    key.push(b'}');
    fred::util::redis_keyslot(&key) as usize % partitions
}

/// The handle every shard shares. See the module doc.
pub struct Cluster {
    set: Settings,
    /// The ordered sources: the broadcasts first, then the partitions (or the
    /// one source of everything without partitions).
    sources: Vec<Source>,
    /// Commands (scripts, heartbeats).
    cmd: Client,
    scripts: Scripts,
    up: AtomicBool,
    /// Redis answered once: a later `up` is a return, not the start.
    was_up: AtomicBool,
    /// Why Redis cannot be used, when it cannot ([`connect`]).
    diagnosis: connect::Diagnosis,
    draining: AtomicBool,
    /// The last probe came back in time on every source.
    delivering: AtomicBool,
    topics: TopicInterest,
    /// Connections the heartbeats found missing from Redis and put back
    /// (`(user, conn_id)`): told `RESYNC` at the next probe, unless the whole pod
    /// was lost (then every stream is).
    lost: Mutex<Vec<(String, String)>>,
    register_tx: mpsc::UnboundedSender<RegisterReq>,
    remove_tx: mpsc::UnboundedSender<Removal>,
    heartbeat_tx: mpsc::UnboundedSender<HeartbeatBatch>,
    drain_tx: mpsc::UnboundedSender<(registry::DrainStep, std::sync::mpsc::Sender<()>)>,
    publishes: Mutex<publish::Queue>,
    publish_wake: Notify,
    receivers: Mutex<Option<Receivers>>,
}

fn redis_err(op: &'static str, e: &fred::error::Error) {
    m::redis_error(op);
    tracing::debug!(op, error = %e, "redis command failed");
}

impl Cluster {
    /// Build the handle (no connection yet; [`Cluster::spawn`] connects).
    pub fn new(cfg: &crate::Config, url: &str, pod: &str) -> Result<Cluster, String> {
        let rconf = {
            let mut c = connect::config(cfg, url)?;
            // Start even when Redis is down: the pod serves its own connections
            // and joins when Redis comes up.
            c.fail_fast = false;
            c
        };
        let build = |timeout: Duration| {
            Builder::from_config(rconf.clone())
                .with_performance_config(|p| p.default_command_timeout = timeout)
                .with_connection_config(|c| {
                    c.connection_timeout = timeout;
                    c.internal_command_timeout = timeout;
                    c.max_command_attempts = 1;
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
                .build()
                .map_err(|e| format!("redis client: {e}"))
        };
        let partitions = cfg.partitions.max(1);
        let tags = tags(&cfg.redis_prefix, partitions);
        let mut sources = Vec::with_capacity(tags.len());
        for (i, tag) in tags.into_iter().enumerate() {
            sources.push(Source {
                index: i as u16,
                log_key: format!("{tag}:log"),
                inbox_key: format!("{tag}:inbox:{pod}"),
                all_key: (i == 0).then(|| format!("{tag}:all")),
                hb_key: format!("{tag}:hb"),
                reader: build(cfg.redis_timeout + reader::READ_BLOCK)?,
                read_to: watch::channel(0).0,
                markers: Mutex::new(VecDeque::new()),
                inbox_read: AtomicU64::new(0),
                probe_sent: AtomicU64::new(0),
                probe_seen: AtomicU64::new(0),
                reset_requested: AtomicBool::new(false),
                probe_unsent: AtomicBool::new(false),
                trimmed_to: AtomicU64::new(0),
                tag,
            });
        }
        let (register_tx, register) = mpsc::unbounded_channel();
        let (remove_tx, remove) = mpsc::unbounded_channel();
        let (heartbeat_tx, heartbeat) = mpsc::unbounded_channel();
        let (drain_tx, drain) = mpsc::unbounded_channel();
        Ok(Cluster {
            sources,
            cmd: build(cfg.redis_timeout)?,
            set: Settings {
                pod: pod.to_string(),
                timeout: cfg.redis_timeout,
                heartbeat: cfg.heartbeat_interval,
                stale_after: cfg.stale_after(),
                cleanup: cfg.cleanup_interval,
                history_events: cfg.history_events,
                history_age: cfg.history_seconds,
                max_pending: cfg.max_pending,
                publish_buffer: cfg.publish_buffer,
                idempotency_window: cfg.idempotency_window,
                inbox_max: cfg.history_events.max(1000),
                topic_linger: cfg.topic_linger,
                presence_linger: cfg.presence_linger,
                partitions,
            },
            scripts: Scripts::new(),
            up: AtomicBool::new(false),
            was_up: AtomicBool::new(false),
            diagnosis: connect::Diagnosis::default(),
            draining: AtomicBool::new(false),
            delivering: AtomicBool::new(true),
            topics: TopicInterest::default(),
            lost: Mutex::new(Vec::new()),
            register_tx,
            remove_tx,
            heartbeat_tx,
            drain_tx,
            publishes: Mutex::new(publish::Queue::new()),
            publish_wake: Notify::new(),
            receivers: Mutex::new(Some(Receivers {
                register,
                remove,
                heartbeat,
                drain,
            })),
        })
    }

    /// The broadcasts' source (everything's, without partitions).
    fn bcast(&self) -> &Source {
        &self.sources[0]
    }

    /// The source of partition `k`.
    fn part(&self, k: usize) -> &Source {
        self.sources.get(k + 1).unwrap_or(&self.sources[0])
    }

    /// The source holding `user`'s keys.
    fn user_source(&self, user: &str) -> &Source {
        self.part(partition_of(user, self.set.partitions))
    }

    /// The sources that hold users (the partitions, or the one source).
    fn user_sources(&self) -> &[Source] {
        if self.sources.len() > 1 {
            &self.sources[1..]
        } else {
            &self.sources
        }
    }

    /// Whether ids are two-part (more than one partition).
    fn partitioned(&self) -> bool {
        self.sources.len() > 1
    }

    /// `user`'s partition as a connection stores it (its frame of broadcasts).
    pub fn partition_index(&self, user: &str) -> u8 {
        partition_of(user, self.set.partitions) as u8
    }

    /// Whether Redis answered the last command.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether the last probe through some source could not be sent.
    pub fn probe_unsent(&self) -> bool {
        self.sources
            .iter()
            .any(|s| s.probe_unsent.load(Ordering::Acquire))
    }

    /// Whether this pod's delivery path works: Redis answers and the last
    /// delivery probe came back in time.
    pub fn is_delivering(&self) -> bool {
        self.delivering.load(Ordering::Acquire)
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            m::set_redis_up(up);
            if up {
                if self.was_up.swap(true, Ordering::AcqRel) {
                    info!("redis reachable again: cluster mode resumes");
                } else {
                    info!("redis reachable: this pod is in the cluster");
                }
                self.publish_wake.notify_one();
            } else {
                warn!("redis unreachable: serving local connections, buffering publishes");
            }
        }
    }

    /// Record the outcome of one Redis batch; returns the value on success.
    fn done<T>(
        &self,
        op: &'static str,
        started: Instant,
        r: Result<T, fred::error::Error>,
    ) -> Option<T> {
        m::redis_roundtrip(op, started.elapsed());
        match r {
            Ok(v) => {
                self.answered(op);
                Some(v)
            }
            Err(e) => {
                self.failed(op, &e);
                None
            }
        }
    }

    /// Redis answered a command of operation `op`.
    fn answered(&self, op: &'static str) {
        self.set_up(true);
        self.diagnosis.note(connect::Trouble::None);
        self.diagnosis.allowed(op);
    }

    /// A command of operation `op` failed with `e`: counted, diagnosed, and
    /// when Redis cannot be reached, readiness says so.
    fn failed(&self, op: &'static str, e: &fred::error::Error) {
        redis_err(op, e);
        if let Some(command) = connect::denied_command(e) {
            self.diagnosis.denied(op, command);
            return;
        }
        match connect::Trouble::of(e) {
            Some(t) => {
                self.diagnosis.note(t);
                self.set_up(false);
            }
            None if !self.cmd.is_connected() => self.set_up(false),
            None => self.diagnosis.command_error(op, e.details().to_string()),
        }
    }

    /// What keeps this pod from using Redis now, if anything, and the commands
    /// Redis refuses it.
    pub fn trouble(&self) -> (connect::Trouble, Vec<String>) {
        let t = if self.is_up() {
            connect::Trouble::None
        } else {
            match self.diagnosis.trouble() {
                connect::Trouble::None => {
                    connect::Trouble::Unreachable("the last command failed".into())
                }
                t => t,
            }
        };
        (t, self.diagnosis.denied_now())
    }

    /// Run one of the scripts on `src`'s tag (`args` from [`Cluster::args`]);
    /// counts the commands it reports.
    async fn script(
        &self,
        src: &Source,
        op: &'static str,
        s: &fred::types::scripts::Script,
        args: Vec<Value>,
    ) -> Option<Vec<Value>> {
        let started = Instant::now();
        let r: Result<Value, _> = s
            .evalsha_with_reload(&self.cmd, vec![src.log_key.as_str()], args)
            .await;
        let v = self.done(op, started, r)?.into_array();
        // Every script returns its own command count (plus the EVALSHA itself).
        let calls = v.iter().find_map(|x| match x {
            Value::Integer(n) => Some(*n as u64),
            _ => None,
        });
        m::redis_commands(op, calls.unwrap_or(0) + 1);
        Some(v)
    }

    fn imax(&self) -> Value {
        Value::from(self.set.inbox_max as i64)
    }

    fn pod_value(&self) -> Value {
        Value::from(self.set.pod.as_str())
    }

    /// The first two arguments of every script on `src`'s tag.
    fn args(&self, src: &Source, capacity: usize) -> Vec<Value> {
        let mut v = Vec::with_capacity(capacity + 2);
        v.push(src.tag_value());
        v.push(self.imax());
        v
    }

    // ---- the background thread ------------------------------------------------

    /// Start the Redis thread: connect, find where to read, then read this pod's
    /// inbox and the broadcast stream, batch registrations, removals and
    /// heartbeats, probe delivery, run the cleanup job and send buffered
    /// publishes. Returns a receiver that fires once the first bootstrap is done
    /// (or could not be, Redis down).
    pub fn spawn(
        self: &Arc<Self>,
        shared: Arc<Shared>,
    ) -> std::io::Result<std::sync::mpsc::Receiver<()>> {
        let c = self.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("herald-redis".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "cannot build the redis runtime");
                        return;
                    }
                };
                rt.block_on(run(shared, c, ready_tx));
            })?;
        Ok(ready_rx)
    }

    /// Drain: remove every connection of this pod from the registry in one batch
    /// and send what is buffered; blocks (bounded by `within`). Called after new
    /// connects are refused and before the streams end, so the batch holds them
    /// all and their ends need no command of their own.
    fn drain(&self, within: Duration) {
        self.draining.store(true, Ordering::Release);
        let (tx, rx) = std::sync::mpsc::channel();
        if self
            .drain_tx
            .send((registry::DrainStep::Connections, tx))
            .is_ok()
        {
            let _ = rx.recv_timeout(within);
        }
    }

    /// The drain's end, once this pod's streams have ended: its topic interest,
    /// inbox and pod entry leave Redis (bounded by `within`). Until then the
    /// streams still open get their topics' events: a stream that kept
    /// receiving broadcasts without them would resume past them.
    fn leave(&self, within: Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.drain_tx.send((registry::DrainStep::Leave, tx)).is_ok() {
            let _ = rx.recv_timeout(within);
        }
    }
}

async fn run(shared: Arc<Shared>, c: Arc<Cluster>, ready: std::sync::mpsc::Sender<()>) {
    let Some(rx) = c.receivers.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    shared.broker.set_partitions(c.set.partitions);
    let _cmd_task = c.cmd.connect();
    let _reader_tasks: Vec<_> = c.sources.iter().map(|s| s.reader.connect()).collect();
    let connected = tokio::time::timeout(c.set.timeout, async {
        let _ = c.cmd.wait_for_connect().await;
        for s in &c.sources {
            let _ = s.reader.wait_for_connect().await;
        }
    })
    .await;
    let mut positions = Vec::with_capacity(c.sources.len());
    if connected.is_ok() {
        for src in &c.sources {
            positions.push(reader::bootstrap(&shared, &c, src).await);
        }
    }
    positions.resize_with(c.sources.len(), || None);
    if positions.iter().any(Option::is_none) {
        let why = match c.diagnosis.trouble() {
            connect::Trouble::None => "some commands failed".to_string(),
            t => format!("{}: {t:?}", t.label()),
        };
        warn!(
            reason = %why,
            "redis not usable at start; this pod serves its own connections until it is"
        );
    }
    let _ = ready.send(());
    let local = tokio::task::LocalSet::new();
    // The clients' own reports of failed connection attempts (credentials,
    // TLS, Sentinel): no command sees those causes, only their timeouts.
    for client in std::iter::once(&c.cmd).chain(c.sources.iter().map(|s| &s.reader)) {
        let mut errors = client.error_rx();
        let c = c.clone();
        local.spawn_local(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match errors.recv().await {
                    Ok((e, _)) => {
                        if let Some(t) = connect::Trouble::of(&e) {
                            c.diagnosis.note(t);
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
    for (i, pos) in positions.into_iter().enumerate() {
        local.spawn_local(reader::read_loop(shared.clone(), c.clone(), i, pos));
    }
    local.spawn_local(registry::register_loop(c.clone(), rx.register));
    local.spawn_local(registry::remove_loop(c.clone(), rx.remove));
    local.spawn_local(registry::heartbeat_loop(
        shared.clone(),
        c.clone(),
        rx.heartbeat,
    ));
    local.spawn_local(presence::presence_loop(c.clone()));
    local.spawn_local(registry::cleanup_loop(c.clone()));
    local.spawn_local(probe::probe_loop(shared.clone(), c.clone()));
    local.spawn_local(publish::publish_loop(c.clone()));
    local.spawn_local(registry::drain_loop(shared.clone(), c.clone(), rx.drain));
    local.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(tag: &str) -> usize {
        fred::util::redis_keyslot(format!("{tag}:log").as_bytes()) as usize
    }

    #[test]
    fn partition_tags_sit_in_the_middle_of_their_share_of_slots() {
        for n in [2usize, 3, 8, 16, 255] {
            let t = tags("herald", n);
            assert_eq!(t.len(), n + 1);
            assert_eq!(t[0], "{herald}");
            for (k, tag) in t[1..].iter().enumerate() {
                let (start, end) = (k * 16384 / n, (k + 1) * 16384 / n);
                let s = slot(tag);
                assert!((start..end).contains(&s), "n={n} k={k} {tag} slot {s}");
                let middle = (start + end) / 2;
                assert!(
                    s.abs_diff(middle) <= 64,
                    "n={n} k={k}: slot {s}, middle {middle}"
                );
            }
        }
        assert_eq!(tags("herald", 1), vec!["{herald}"]);
    }

    #[test]
    fn eight_partitions_on_four_equal_masters_are_two_each() {
        let mut per = [0; 4];
        for tag in &tags("x", 8)[1..] {
            per[slot(tag) * 4 / 16384] += 1;
        }
        assert_eq!(per, [2, 2, 2, 2]);
    }

    #[test]
    fn users_spread_over_partitions_the_same_everywhere() {
        let mut per = [0usize; 8];
        for i in 0..8000 {
            per[partition_of(&format!("user-{i}"), 8)] += 1;
        }
        assert!(per.iter().all(|&n| (800..1200).contains(&n)), "{per:?}");
        assert_eq!(partition_of("alice", 1), 0);
        assert_eq!(partition_of("alice", 8), partition_of("alice", 8));
    }
}
