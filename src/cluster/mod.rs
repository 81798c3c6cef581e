//! Cluster mode: several pods acting as one server through Redis (`--redis`),
//! with the `fred` client. This is the `RedisRegistry` + `EventBus` side of the
//! registry seam; without `--redis` none of it exists and the pod keeps its
//! registry, history and pending events in memory ([`crate::broker`]).
//!
//! ## Keys (all under the hash tag `{prefix}`, one Redis Cluster slot)
//! * `{p}:log` — Redis Stream of published events. Its ids (`ms-seq`) are the
//!   cluster-wide order; the SSE id is `ms << 20 | seq` ([`log::sse_id`]). Trimmed
//!   to `history_events` (`MAXLEN ~`) and `history_seconds` (`MINID ~`).
//! * `{p}:conns` — hash `user/conn` → `pod/serial`: where each connection lives.
//! * `{p}:ucount` — hash `user` → number of connections: online or not, and the
//!   user count.
//! * `{p}:hb` — sorted set `user/conn` → last heartbeat (unix ms).
//! * `{p}:pods` — sorted set pod → last heartbeat; `{p}:inactive` — sorted set of
//!   connections the cleanup marked inactive (bounded).
//! * `{p}:pending:<user>` — list of pending events (TTL, at most `max_pending`).
//! * `{p}:ctl:<pod>` — stream of close requests for one pod (disconnects and
//!   replacements forwarded from other pods).
//!
//! ## Why the ordering is exact
//! A publish is one script: `XADD` to the log and, for user targets, "no
//! connection anywhere → push pending". A connect is one script: register, take
//! pending, read the log's last id `L`. Redis runs scripts one at a time, so every
//! event is either before `L` (pending, or before the connection existed) or after
//! it (and the user is registered, so it is not pending). The pod then waits until
//! it has read the log up to `L` and starts the stream with the pending events and
//! the events after `L` it has read; later ones arrive live ([`Broker::open`]).
//! A resume is answered from the pod's history once it has read up to `L`.
//!
//! ## Batching (commands per interval do not grow with connections)
//! Heartbeats: per shard and interval one variadic `ZADD {p}:hb`, plus one `ZADD`
//! for the pod. Connects arriving together share one register script; ends share
//! one remove script. The cleanup is one script per interval on every pod.
//!
//! ## Faults
//! fred reconnects with exponential backoff. While Redis is unreachable the pod
//! serves its own connections, heartbeats and fan-out, readiness says degraded,
//! publishes wait in a bounded buffer (503 past it), ends wait in a bounded retry
//! set; when Redis returns the buffer is sent in order and the next heartbeat
//! puts back every local connection the registry lost.

pub mod log;
pub mod scripts;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, SortedSetsInterface, StreamsInterface};
use fred::prelude::{Builder, Client, Config as RedisConfig, ReconnectPolicy};
use fred::types::Value;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{info, warn};

use crate::broker::Joined;
use crate::clock;
use crate::conn::CloseReason;
use crate::event::Target;
use crate::metrics as m;
use crate::Shared;
use scripts::Scripts;

/// A connect waiting to be registered.
struct RegisterReq {
    member: String,
    serial: u64,
    resume: bool,
    reply: oneshot::Sender<Option<(u64, Vec<Value>)>>,
}

/// A connection of this pod that ended: `(member, expected owner)`.
type Removal = (String, String);

/// One shard's connections for one heartbeat: `(member, serial)`.
type HeartbeatBatch = Vec<(String, u64)>;

/// A publish waiting for Redis.
#[derive(Clone)]
pub struct PublishReq {
    pub event: String,
    pub data: String,
    pub target: Target,
    pub ttl_ms: u64,
}

/// What became of a publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// In the log with this id.
    Id(u64),
    /// Redis is unreachable: held, sent when it returns.
    Buffered,
    /// Redis is unreachable and the buffer is full.
    Full,
}

/// Cluster-wide counts for the stats endpoint.
#[derive(Debug, Clone, Copy)]
pub struct ClusterStats {
    pub connections: u64,
    pub users: u64,
    pub pods: u64,
    pub inactive: u64,
}

/// What the background thread receives.
struct Receivers {
    register: mpsc::UnboundedReceiver<RegisterReq>,
    remove: mpsc::UnboundedReceiver<Removal>,
    heartbeat: mpsc::UnboundedReceiver<HeartbeatBatch>,
    drain: mpsc::UnboundedReceiver<std::sync::mpsc::Sender<()>>,
}

/// Settings taken from the config.
struct Settings {
    tag: String,
    pod: String,
    timeout: Duration,
    heartbeat: Duration,
    stale_after: Duration,
    cleanup: Duration,
    history_events: usize,
    history_seconds: u64,
    max_pending: usize,
    publish_buffer: usize,
}

/// The handle every shard shares. See the module doc.
pub struct Cluster {
    set: Settings,
    log_key: String,
    ctl_key: String,
    hb_key: String,
    pods_key: String,
    /// Commands (scripts, heartbeats).
    cmd: Client,
    /// The blocking `XREAD` of the log, on its own connection.
    reader: Client,
    scripts: Scripts,
    up: AtomicBool,
    draining: AtomicBool,
    /// The last log id this pod has recorded.
    read_to: watch::Sender<u64>,
    register_tx: mpsc::UnboundedSender<RegisterReq>,
    remove_tx: mpsc::UnboundedSender<Removal>,
    heartbeat_tx: mpsc::UnboundedSender<HeartbeatBatch>,
    drain_tx: mpsc::UnboundedSender<std::sync::mpsc::Sender<()>>,
    buffer: Mutex<VecDeque<PublishReq>>,
    buffered: Notify,
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
            let mut c = RedisConfig::from_url(url).map_err(|e| format!("--redis {url:?}: {e}"))?;
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
        let tag = format!("{{{}}}", cfg.redis_prefix);
        let (register_tx, register) = mpsc::unbounded_channel();
        let (remove_tx, remove) = mpsc::unbounded_channel();
        let (heartbeat_tx, heartbeat) = mpsc::unbounded_channel();
        let (drain_tx, drain) = mpsc::unbounded_channel();
        Ok(Cluster {
            log_key: format!("{tag}:log"),
            ctl_key: format!("{tag}:ctl:{pod}"),
            hb_key: format!("{tag}:hb"),
            pods_key: format!("{tag}:pods"),
            cmd: build(cfg.redis_timeout)?,
            reader: build(cfg.redis_timeout + READ_BLOCK)?,
            set: Settings {
                tag,
                pod: pod.to_string(),
                timeout: cfg.redis_timeout,
                heartbeat: cfg.heartbeat_interval,
                stale_after: cfg.stale_after(),
                cleanup: cfg.cleanup_interval,
                history_events: cfg.history_events,
                history_seconds: cfg.history_seconds,
                max_pending: cfg.max_pending,
                publish_buffer: cfg.publish_buffer,
            },
            scripts: Scripts::new(),
            up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            read_to: watch::channel(0).0,
            register_tx,
            remove_tx,
            heartbeat_tx,
            drain_tx,
            buffer: Mutex::new(VecDeque::new()),
            buffered: Notify::new(),
            receivers: Mutex::new(Some(Receivers {
                register,
                remove,
                heartbeat,
                drain,
            })),
        })
    }

    /// Whether Redis answered the last command.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            m::set_redis_up(up);
            if up {
                info!("redis reachable: cluster mode resumes");
                self.buffered.notify_one();
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
                self.set_up(true);
                Some(v)
            }
            Err(e) => {
                redis_err(op, &e);
                use fred::error::ErrorKind as K;
                let unreachable =
                    matches!(e.kind(), K::IO | K::Timeout | K::Canceled | K::Backpressure)
                        || !self.cmd.is_connected();
                if unreachable {
                    self.set_up(false);
                }
                None
            }
        }
    }

    async fn script(
        &self,
        op: &'static str,
        s: &fred::types::scripts::Script,
        args: Vec<Value>,
    ) -> Option<Vec<Value>> {
        let started = Instant::now();
        let r: Result<Value, _> = s
            .evalsha_with_reload(&self.cmd, vec![self.log_key.as_str()], args)
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

    fn tag(&self) -> Value {
        Value::from(self.set.tag.as_str())
    }

    // ---- connects -------------------------------------------------------------

    /// Register a new connection and take the user's pending events; waits until
    /// this pod has read the log up to the registration point. `None` when Redis
    /// could not be reached in time (the connection then runs locally only and
    /// the next heartbeat registers it).
    pub async fn register(
        &self,
        user: &str,
        conn_id: &str,
        serial: u64,
        resume: bool,
    ) -> Option<Joined> {
        if !self.is_up() {
            return None;
        }
        let (reply, rx) = oneshot::channel();
        self.register_tx
            .send(RegisterReq {
                member: log::member(user, conn_id),
                serial,
                resume,
                reply,
            })
            .ok()?;
        let (floor, entries) = tokio::time::timeout(self.set.timeout, rx)
            .await
            .ok()?
            .ok()??;
        let mut read_to = self.read_to.subscribe();
        let caught_up =
            tokio::time::timeout(self.set.timeout, read_to.wait_for(|&v| v >= floor)).await;
        if !matches!(caught_up, Ok(Ok(_))) {
            warn!("this pod's log reader is behind; a new stream may miss events");
        }
        let now = clock::unix_ms();
        Some(Joined {
            floor,
            pending: entries
                .iter()
                .filter_map(|e| log::pending(e, now))
                .collect(),
        })
    }

    /// A connection of this pod ended.
    pub fn unregister(&self, user: &str, conn_id: &str, serial: u64) {
        if self.draining.load(Ordering::Acquire) {
            return; // the drain removed every connection of this pod in one batch
        }
        self.forget(user, conn_id, serial);
    }

    /// Take out a registration this pod's registry never took in (a connect
    /// refused after registering), draining or not.
    pub fn forget(&self, user: &str, conn_id: &str, serial: u64) {
        let _ = self.remove_tx.send((
            log::member(user, conn_id),
            format!("{}/{serial}", self.set.pod),
        ));
    }

    /// One shard's heartbeat: the connections this pod registered on `shard`.
    pub fn heartbeat(&self, broker: &crate::broker::Broker, shard: u16) {
        let mut batch: HeartbeatBatch = Vec::new();
        broker.for_each_registered(Some(shard), |user, conn_id, loc| {
            batch.push((log::member(user, conn_id), loc.serial));
        });
        let _ = self.heartbeat_tx.send(batch);
    }

    /// End `(user, conn_id)` on whichever pod holds it. `Ok(false)`: no such
    /// connection anywhere; `Err`: Redis unreachable.
    pub async fn disconnect(&self, user: &str, conn_id: &str) -> Result<bool, ()> {
        let args = vec![
            self.tag(),
            Value::from(clock::unix_ms() as i64),
            Value::from(log::member(user, conn_id)),
        ];
        let v = self
            .script("disconnect", &self.scripts.disconnect, args)
            .await
            .ok_or(())?;
        Ok(v.get(1).is_some_and(|o| !o.is_null()))
    }

    /// Cluster-wide counts, `None` when Redis is unreachable.
    pub async fn stats(&self) -> Option<ClusterStats> {
        if !self.is_up() {
            return None;
        }
        let cutoff = clock::unix_ms().saturating_sub(self.set.stale_after.as_millis() as u64);
        let v = self
            .script(
                "stats",
                &self.scripts.stats,
                vec![self.tag(), Value::from(cutoff as i64)],
            )
            .await?;
        let n = |i: usize| v.get(i).and_then(|x| x.as_u64()).unwrap_or(0);
        Some(ClusterStats {
            connections: n(1),
            users: n(2),
            pods: n(3),
            inactive: n(4),
        })
    }

    // ---- publishes ------------------------------------------------------------

    /// Publish into the cluster's log, or buffer while Redis is unreachable.
    pub async fn publish(&self, p: PublishReq) -> Published {
        let empty = self
            .buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if self.is_up() && empty {
            if let Some(id) = self.send_publish(&p).await {
                return Published::Id(id);
            }
        }
        let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() >= self.set.publish_buffer {
            m::publish_buffer_full();
            return Published::Full;
        }
        buf.push_back(p);
        m::publish_buffered_one();
        m::publish_buffered(buf.len());
        drop(buf);
        self.buffered.notify_one();
        Published::Buffered
    }

    async fn send_publish(&self, p: &PublishReq) -> Option<u64> {
        let (kind, names) = log::encode_target(&p.target);
        let now = clock::unix_ms();
        let minid = if self.set.history_seconds == 0 {
            "0".to_string()
        } else {
            let cut = now.saturating_sub(self.set.history_seconds.saturating_mul(1000));
            format!("{cut}-0")
        };
        let args: Vec<Value> = vec![
            self.tag(),
            Value::from(p.event.as_str()),
            Value::from(p.data.as_str()),
            Value::from(kind),
            Value::from(names),
            Value::from(p.ttl_ms.min(i64::MAX as u64) as i64),
            Value::from(self.set.max_pending as i64),
            Value::from(self.set.history_events.max(1) as i64),
            Value::from(minid),
            Value::from(now as i64),
            Value::from((clock::unix_us().saturating_mul(1000)).to_string()),
        ];
        let v = self.script("publish", &self.scripts.publish, args).await?;
        let id = v
            .first()
            .and_then(|x| x.as_str())
            .and_then(|s| log::sse_id(&s))?;
        let n = |i: usize| v.get(i).and_then(|x| x.as_u64()).unwrap_or(0);
        m::dropped("pending_overflow", n(2));
        Some(id)
    }

    // ---- the background thread ------------------------------------------------

    /// Start the Redis thread: connect, load the log's recent history into the
    /// broker, then read the log, batch registrations, removals and heartbeats,
    /// run the cleanup job and send buffered publishes. Returns a receiver that
    /// fires once the first bootstrap is done (or could not be, Redis down).
    pub fn spawn(shared: Arc<Shared>) -> std::io::Result<std::sync::mpsc::Receiver<()>> {
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
                rt.block_on(run(shared, ready_tx));
            })?;
        Ok(ready_rx)
    }

    /// Drain: remove every connection of this pod from the registry in one batch
    /// and send what is buffered; blocks (bounded by `within`). Called after new
    /// connects are refused and before the streams end, so the batch holds them
    /// all and their ends need no command of their own.
    pub fn drain(&self, within: Duration) {
        self.draining.store(true, Ordering::Release);
        let (tx, rx) = std::sync::mpsc::channel();
        if self.drain_tx.send(tx).is_ok() {
            let _ = rx.recv_timeout(within);
        }
    }
}

/// How long one `XREAD` waits for new entries.
const READ_BLOCK: Duration = Duration::from_millis(1000);
/// Entries read per `XREAD`.
const READ_COUNT: u64 = 512;
/// Connects registered per script call, ends removed per script call.
const REGISTER_BATCH: usize = 512;
const REMOVE_BATCH: usize = 4096;
/// Ends kept for retry while Redis is unreachable (beyond, the cleanup job
/// catches them once their heartbeat is stale).
const REMOVE_RETRY_CAP: usize = 100_000;

async fn run(shared: Arc<Shared>, ready: std::sync::mpsc::Sender<()>) {
    let c = shared.cluster.as_ref().expect("cluster mode").clone();
    let Some(rx) = c.receivers.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    let _cmd_task = c.cmd.connect();
    let _reader_task = c.reader.connect();
    let connected = tokio::time::timeout(c.set.timeout, async {
        let _ = c.cmd.wait_for_connect().await;
        let _ = c.reader.wait_for_connect().await;
    })
    .await;
    let mut positions = None;
    if connected.is_ok() {
        positions = bootstrap(&shared, &c).await;
    }
    if positions.is_none() {
        warn!("redis not reachable at start; this pod serves its own connections until it is");
    }
    let _ = ready.send(());
    let local = tokio::task::LocalSet::new();
    local.spawn_local(read_loop(shared.clone(), c.clone(), positions));
    local.spawn_local(register_loop(c.clone(), rx.register));
    local.spawn_local(remove_loop(c.clone(), rx.remove));
    local.spawn_local(heartbeat_loop(c.clone(), rx.heartbeat));
    local.spawn_local(cleanup_loop(c.clone()));
    local.spawn_local(flush_loop(c.clone()));
    local.spawn_local(drain_loop(shared.clone(), c.clone(), rx.drain));
    local.await;
}

/// Log positions of this pod's reader: the event log and its own control stream.
struct Positions {
    log: String,
    ctl: String,
}

/// Load the retained log into the broker's history and find where to read from.
async fn bootstrap(shared: &Shared, c: &Cluster) -> Option<Positions> {
    let started = Instant::now();
    let entries: Result<Value, _> = c
        .cmd
        .xrevrange(
            &c.log_key,
            "+",
            "-",
            Some(c.set.history_events.max(1) as u64),
        )
        .await;
    let entries = c.done("bootstrap", started, entries)?.into_array();
    let ctl: Result<Value, _> = c.cmd.xrevrange(&c.ctl_key, "+", "-", Some(1)).await;
    let ctl = c.done("bootstrap", started, ctl)?.into_array();
    m::redis_commands("bootstrap", 2);
    let ctl_pos = ctl
        .first()
        .and_then(log::close_request)
        .map_or_else(|| "0-0".to_string(), |(sid, _)| sid);
    let horizon_ns = shared.config.history_seconds.saturating_mul(1_000_000_000);
    let now = clock::now_ns();
    let mut events: Vec<_> = entries.iter().rev().filter_map(log::event).collect();
    let log_pos = events
        .last()
        .map_or_else(|| "0-0".to_string(), |(sid, _)| sid.clone());
    events.retain(|(_, e)| {
        e.as_ref()
            .is_some_and(|e| now.saturating_sub(e.published_ns) <= horizon_ns)
    });
    let events: Vec<_> = events.into_iter().filter_map(|(_, e)| e).collect();
    // Ids up to just below the oldest retained one may be gone; with an empty log
    // everything up to its last id is.
    let last = log::sse_id(&log_pos).unwrap_or(0);
    let trimmed = events.first().map_or(last, |e| e.id - 1);
    let n = events.len();
    shared.broker.join_log(trimmed, events);
    c.read_to.send_replace(shared.broker.last_id());
    info!(events = n, log = %log_pos, "joined the cluster's event log");
    Some(Positions {
        log: log_pos,
        ctl: ctl_pos,
    })
}

/// Read the log and this pod's control stream; hand events to the broker.
async fn read_loop(shared: Arc<Shared>, c: Arc<Cluster>, mut pos: Option<Positions>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(p) = pos.as_mut() else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            pos = bootstrap(&shared, &c).await;
            continue;
        };
        let started = Instant::now();
        let r: Result<Value, _> = c
            .reader
            .xread(
                Some(READ_COUNT),
                Some(READ_BLOCK.as_millis() as u64),
                vec![c.log_key.as_str(), c.ctl_key.as_str()],
                vec![p.log.as_str(), p.ctl.as_str()],
            )
            .await;
        let streams = match r {
            Ok(v) => {
                c.set_up(true);
                backoff = Duration::from_millis(100);
                m::redis_commands("read", 1);
                v
            }
            Err(e) => {
                m::redis_roundtrip("read", started.elapsed());
                redis_err("read", &e);
                c.set_up(false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        for stream in streams.into_array() {
            let mut parts = stream.into_array().into_iter();
            let (Some(key), Some(entries)) = (parts.next(), parts.next()) else {
                continue;
            };
            let key = key.as_str().map(|k| k.to_string()).unwrap_or_default();
            let entries = entries.into_array();
            if key == c.log_key {
                let mut events = Vec::with_capacity(entries.len());
                for e in &entries {
                    if let Some((sid, ev)) = log::event(e) {
                        p.log = sid;
                        events.extend(ev);
                    }
                }
                shared.broker.ingest(events);
                c.read_to.send_replace(shared.broker.last_id());
            } else if key == c.ctl_key {
                for e in &entries {
                    let Some((sid, req)) = log::close_request(e) else {
                        continue;
                    };
                    p.ctl = sid;
                    let Some(req) = req else { continue };
                    let broker = &shared.broker;
                    if let Some(loc) = broker.disconnect_exact(&req.user, &req.conn_id, req.serial)
                    {
                        let reason = if req.replaced {
                            CloseReason::Replaced
                        } else {
                            CloseReason::Disconnected
                        };
                        broker.close_remote(loc, reason, None);
                    }
                }
            }
        }
    }
}

/// Register connects in batches: whatever arrived while the last batch ran.
async fn register_loop(c: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<RegisterReq>) {
    let mut batch = Vec::with_capacity(REGISTER_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < REGISTER_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut args = Vec::with_capacity(3 + batch.len() * 3);
        args.push(c.tag());
        args.push(Value::from(clock::unix_ms() as i64));
        args.push(Value::from(c.set.pod.as_str()));
        for r in &batch {
            args.push(Value::from(r.member.as_str()));
            args.push(Value::from(r.serial.to_string()));
            args.push(Value::from(if r.resume { "1" } else { "0" }));
        }
        m::redis_batch("register", batch.len());
        let reply = c.script("register", &c.scripts.register, args).await;
        let (floor, mut lists) = match reply {
            Some(v) => {
                let mut it = v.into_iter();
                let floor = it
                    .next()
                    .and_then(|x| x.as_str().and_then(|s| log::sse_id(&s)));
                let lists = it.nth(1).map(Value::into_array).unwrap_or_default();
                (floor, lists.into_iter())
            }
            None => (None, Vec::new().into_iter()),
        };
        for r in batch.drain(..) {
            let entries = lists.next().map(Value::into_array).unwrap_or_default();
            let _ = r.reply.send(floor.map(|f| (f, entries)));
        }
    }
}

/// Remove ended connections in batches; keep failed ones for a retry.
async fn remove_loop(c: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<Removal>) {
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
        if send_removals(&c, &batch).await.is_none() {
            retry = batch;
            retry.truncate(REMOVE_RETRY_CAP);
        }
    }
}

async fn send_removals(c: &Cluster, batch: &[Removal]) -> Option<Vec<Value>> {
    let mut args = Vec::with_capacity(2 + batch.len() * 2);
    args.push(c.tag());
    args.push(Value::from(clock::unix_ms() as i64));
    for (member, owner) in batch {
        args.push(Value::from(member.as_str()));
        args.push(Value::from(owner.as_str()));
    }
    m::redis_batch("remove", batch.len());
    c.script("remove", &c.scripts.remove, args).await
}

/// Per shard batch: one variadic `ZADD` of every connection's heartbeat; the
/// rare batch that finds connections the registry lost puts them back. Plus one
/// `ZADD` per interval for the pod itself.
async fn heartbeat_loop(c: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<HeartbeatBatch>) {
    let mut pod_tick = tokio::time::interval(c.set.heartbeat);
    pod_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = pod_tick.tick() => {
                if c.draining.load(Ordering::Acquire) {
                    continue; // the drain took this pod out of the registry
                }
                let started = Instant::now();
                let now = clock::unix_ms() as f64;
                let r: Result<i64, _> = c
                    .cmd
                    .zadd(&c.pods_key, None, None, false, false, (now, c.set.pod.as_str()))
                    .await;
                if c.done("heartbeat", started, r).is_some() {
                    m::redis_commands("heartbeat", 1);
                }
            }
            batch = rx.recv() => {
                let Some(batch) = batch else { return };
                if batch.is_empty() || c.draining.load(Ordering::Acquire) {
                    continue;
                }
                heartbeat_batch(&c, batch).await;
            }
        }
    }
}

async fn heartbeat_batch(c: &Cluster, batch: HeartbeatBatch) {
    let now = clock::unix_ms();
    let values: Vec<(f64, Value)> = batch
        .iter()
        .map(|(member, _)| (now as f64, Value::from(member.as_str())))
        .collect();
    m::redis_batch("heartbeat", batch.len());
    let started = Instant::now();
    let r: Result<i64, _> = c
        .cmd
        .zadd(&c.hb_key, None, None, false, false, values)
        .await;
    let Some(added) = c.done("heartbeat", started, r) else {
        return;
    };
    m::redis_commands("heartbeat", 1);
    if added > 0 {
        // Some connections were not in the registry: cleaned while this pod could
        // not reach Redis, or Redis lost its data. Put them back.
        let mut args = Vec::with_capacity(3 + batch.len() * 2);
        args.push(c.tag());
        args.push(Value::from(now as i64));
        args.push(Value::from(c.set.pod.as_str()));
        for (member, serial) in &batch {
            args.push(Value::from(member.as_str()));
            args.push(Value::from(serial.to_string()));
        }
        if let Some(v) = c.script("reregister", &c.scripts.reregister, args).await {
            let restored = v.get(1).and_then(|x| x.as_u64()).unwrap_or(0);
            if restored > 0 {
                info!(restored, "re-registered connections the registry had lost");
            }
        }
    }
}

/// The cleanup job: every pod runs it every cleanup interval; it is idempotent.
async fn cleanup_loop(c: Arc<Cluster>) {
    let mut tick = tokio::time::interval(c.set.cleanup);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keep_ms = (c.set.stale_after * 20)
        .max(Duration::from_secs(3600))
        .as_millis() as i64;
    loop {
        tick.tick().await;
        if !c.is_up() {
            continue;
        }
        let now = clock::unix_ms();
        let cutoff = now.saturating_sub(c.set.stale_after.as_millis() as u64);
        let args = vec![
            c.tag(),
            Value::from(now as i64),
            Value::from(cutoff as i64),
            Value::from(10_000i64),
            Value::from(keep_ms),
            Value::from(100_000i64),
        ];
        if let Some(v) = c.script("cleanup", &c.scripts.cleanup, args).await {
            let marked = v.get(1).and_then(|x| x.as_u64()).unwrap_or(0);
            if marked > 0 {
                m::marked_inactive(marked);
                info!(marked, "marked stale connections inactive");
            }
        }
    }
}

/// Send buffered publishes, in order, whenever Redis is reachable.
async fn flush_loop(c: Arc<Cluster>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(250), c.buffered.notified()).await;
        loop {
            let front = c
                .buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .front()
                .cloned();
            let Some(p) = front else { break };
            if c.send_publish(&p).await.is_none() {
                break;
            }
            let mut buf = c.buffer.lock().unwrap_or_else(|e| e.into_inner());
            buf.pop_front();
            m::publish_buffered(buf.len());
        }
    }
}

/// Remove this pod from the registry in one batch when it drains.
async fn drain_loop(
    shared: Arc<Shared>,
    c: Arc<Cluster>,
    mut rx: mpsc::UnboundedReceiver<std::sync::mpsc::Sender<()>>,
) {
    while let Some(done) = rx.recv().await {
        let pod = &c.set.pod;
        let mut batch: Vec<Removal> = Vec::new();
        shared
            .broker
            .for_each_registered(None, |user, conn_id, loc| {
                batch.push((log::member(user, conn_id), format!("{pod}/{}", loc.serial)));
            });
        // With Redis unreachable the cleanup job of the other pods removes them.
        if !batch.is_empty() && c.is_up() {
            send_removals(&c, &batch).await;
        }
        let started = Instant::now();
        let r: Result<i64, _> = c.cmd.zrem(&c.pods_key, pod.as_str()).await;
        if c.done("drain", started, r).is_some() {
            m::redis_commands("drain", 1);
        }
        // Publishes still buffered get one more chance.
        for _ in 0..20 {
            if c.buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
                || !c.is_up()
            {
                break;
            }
            c.buffered.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = done.send(());
    }
}
