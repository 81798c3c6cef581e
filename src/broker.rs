//! The broker of one pod: it sequences publishes (strictly increasing ids, one
//! framing per event), keeps the resume history and the pending events, owns the
//! connection registry, and hands events to the shards through the [`Hub`].
//!
//! One mutex orders publishes against connects: an event's id, its history entry
//! and its push into every shard inbox happen under it, so every shard sees events
//! in id order; a connect reads the history or the pending events and fixes its
//! resume floor under it, so a new stream gets the gap exactly once. The lock is
//! taken once per publish and per connect/disconnect, never per delivery.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::clock;
use crate::conn::{CloseReason, QueuedFrame};
use crate::event::{Event, Target};
use crate::fanout::{ConnLoc, Hub, ShardMsg};
use crate::history::{History, HistoryLimits, Pending, PendingLimits, Resume};
use crate::metrics as m;
use crate::registry::LocalRegistry;
use crate::sse::frame;
use bytes::Bytes;
use smallvec::SmallVec;

/// Limits the broker enforces.
#[derive(Debug, Clone, Copy)]
pub struct BrokerLimits {
    pub history: HistoryLimits,
    pub pending: PendingLimits,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    /// `--presence-linger` in ms when this pod decides presence itself
    /// (embedded); `None` in a cluster, where the registry scripts do.
    pub presence_linger_ms: Option<u64>,
}

/// A connect asking to be registered.
pub struct OpenRequest<'a> {
    pub user: &'a str,
    pub conn_id: &'a str,
    pub topics: &'a [Box<str>],
    /// `Last-Event-ID` (or `lastEventId`) when resuming.
    pub last_event_id: Option<&'a str>,
    pub shard: u16,
    pub key: u32,
    /// This pod's history holds every event (embedded mode): a resume without
    /// the cluster's answer can be exact. In a cluster it holds only what was
    /// routed here, so such a resume is answered `RESYNC`.
    pub local_history_complete: bool,
}

/// What the cluster registry answered for a connect (see [`crate::cluster`]).
#[derive(Debug)]
pub struct Joined {
    /// Per ordered source the connection reads (one; or, with partitions, the
    /// broadcasts and its partition): later events reach it through this pod's
    /// reader, earlier ones only through `start`.
    pub floors: SmallVec<[Floor; 2]>,
    pub start: Start,
    /// With partitions: the two-part id the stream's first frames build on (the
    /// broadcast position it resumes from or registered at, and its partition's
    /// position at registration).
    pub ids_from: Option<(u64, u64)>,
}

/// Where a connection joined one ordered source of the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// 0 the broadcasts (everything without partitions), 1 + k partition k.
    pub source: u16,
    /// This pod's order key when its reader had read everything routed to it up
    /// to the registration: later events of this source are after it.
    pub seq: u64,
}

/// What the cluster registry gave a new connection to start with.
#[derive(Debug)]
pub enum Start {
    /// Not resuming: the user's pending events (log position, frame), taken from
    /// Redis, oldest first.
    Pending(Vec<(u64, QueuedFrame)>),
    /// Resuming: the events after the client's id up to the registration, from
    /// the cluster's log(s): its user's partition (everything without
    /// partitions), then the broadcasts.
    Replay {
        partition: Vec<Arc<Event>>,
        broadcast: Vec<Arc<Event>>,
    },
    /// Resuming from a point the log does not hold.
    Resync,
}

/// What a new stream starts with, after `retry:` and `CONNECTED`.
#[derive(Debug)]
pub enum Initial {
    /// Not resuming: the user's pending events, oldest first.
    Pending(Vec<QueuedFrame>),
    /// Resuming: exactly the events missed.
    Replay(Vec<Arc<Event>>),
    /// Resuming from a point that is not in the history.
    Resync,
}

/// A registered connection.
#[derive(Debug)]
pub struct Opened {
    pub serial: u64,
    /// Live events at or below this id are skipped (they are in `initial` or predate
    /// the connection).
    pub floor: u64,
    pub initial: Initial,
    /// The connection this one replaces, to be ended.
    pub replaced: Option<ConnLoc>,
}

/// Why a connect was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    PodFull,
    UserFull,
}

/// A validated publish.
pub struct Publish<'a> {
    pub event: &'a str,
    pub data: &'a str,
    pub target: Target,
    pub ttl_ns: u64,
}

struct State {
    history: History,
    pending: Pending,
    registry: LocalRegistry,
    /// Cluster with partitions: the position reached in each ordered source
    /// (0 the broadcasts, 1 + k partition k), for the two-part ids.
    positions: Option<Vec<u64>>,
    /// Where broadcast and topic events are framed.
    arena: frame::FrameArena,
    /// Users whose last connection ended, not offline yet (embedded presence).
    linger: crate::presence::Linger,
}

/// See the module doc.
pub struct Broker {
    state: Mutex<State>,
    hub: Hub,
    serial: AtomicU64,
    limits: BrokerLimits,
    pod_id: String,
    draining: AtomicBool,
    /// Events this pod has sequenced (embedded) or read from the log (cluster).
    events: AtomicU64,
    /// Users whose connects are answered `204` until a time (unix ms): ended
    /// with `reconnect=false` (an EventSource stops for good on a 204).
    blocked: Mutex<std::collections::HashMap<Box<str>, u64>>,
    /// Whether `blocked` may hold anyone: a connect takes no lock until a
    /// first kick.
    any_blocked: AtomicBool,
    /// A presence stream has opened on this pod (embedded presence): from
    /// then on transitions are published. Before, no stream can resume from a
    /// presence event, so none is kept (a pod nobody asks about presence holds
    /// no history of it).
    presence_watched: AtomicBool,
}

impl Broker {
    pub fn new(shards: usize, pod_id: String, limits: BrokerLimits) -> Self {
        // Ids start at the start time in microseconds: ids of a previous run of this
        // node are then below `base` and resume as RESYNC, not as a wrong replay.
        let base = clock::unix_us();
        Broker {
            state: Mutex::new(State {
                history: History::new(base, limits.history),
                pending: Pending::new(limits.pending),
                registry: LocalRegistry::default(),
                positions: None,
                arena: frame::FrameArena::default(),
                linger: crate::presence::Linger::default(),
            }),
            hub: Hub::new(shards),
            serial: AtomicU64::new(1),
            limits,
            pod_id,
            draining: AtomicBool::new(false),
            events: AtomicU64::new(0),
            blocked: Mutex::new(std::collections::HashMap::new()),
            any_blocked: AtomicBool::new(false),
            presence_watched: AtomicBool::new(false),
        }
    }

    /// Refuse `user`'s connects until `until_ms` (unix ms), and take every one
    /// of its connections on this pod out of the registry; returns them
    /// (`(conn_id, where)`) for the caller to end.
    pub fn block(&self, user: &str, until_ms: u64) -> Vec<(Box<str>, ConnLoc)> {
        {
            let mut b = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
            let now = clock::unix_ms();
            // Expired entries go when a new one comes: the map stays small.
            b.retain(|_, until| *until > now);
            let until = b.entry(user.into()).or_insert(0);
            *until = (*until).max(until_ms);
            self.any_blocked.store(true, Ordering::Release);
        }
        let mut s = self.lock();
        let gone = s.registry.remove_user(user);
        if !gone.is_empty() {
            self.presence_change(&mut s, user, false);
        }
        gone
    }

    /// Whether `user`'s connects are refused now.
    pub fn is_blocked(&self, user: &str, now_ms: u64) -> bool {
        if !self.any_blocked.load(Ordering::Acquire) {
            return false;
        }
        let b = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        b.get(user).is_some_and(|&until| until > now_ms)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a
        // way that matters more than stopping the pod would; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn pod_id(&self) -> &str {
        &self.pod_id
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Events this pod has handed to its shards since it started.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// A new process-unique connection serial.
    pub fn next_serial(&self) -> u64 {
        self.serial.fetch_add(1, Ordering::Relaxed)
    }

    /// `(connections, users)` registered on this pod (presence streams left
    /// out).
    pub fn counts(&self) -> (usize, usize) {
        self.lock().registry.public_counts()
    }

    /// Every stream registered on this pod, presence streams included (the
    /// limit `--max-connections` counts them).
    pub fn streams(&self) -> usize {
        self.lock().registry.connections()
    }

    /// `user`'s connections on this pod (embedded presence).
    pub fn connections_of(&self, user: &str) -> Vec<crate::registry::ConnMeta> {
        self.lock().registry.connections_of(user)
    }

    /// Live connections per user and streams per topic on this pod.
    pub fn presence_counts(&self, q: &crate::presence::Query) -> crate::presence::Counts {
        let s = self.lock();
        crate::presence::Counts {
            users: q
                .users
                .iter()
                .map(|u| (u.clone(), s.registry.count(u) as u64))
                .collect(),
            topics: q
                .topics
                .iter()
                .map(|t| (t.clone(), s.registry.topic_count(t) as u64))
                .collect(),
        }
    }

    /// Embedded presence, every tick: users whose linger has passed go
    /// offline (one event each).
    pub fn presence_tick(&self) {
        let Some(linger) = self.limits.presence_linger_ms else {
            return;
        };
        let mut wake = 0;
        {
            let mut s = self.lock();
            let due = s.linger.due(clock::unix_ms(), linger);
            if due.is_empty() {
                return;
            }
            for (user, ended) in &due {
                wake |= self.announce(&mut s, user, *ended, crate::presence::Transition::Offline);
            }
            self.count_online(&s);
        }
        self.wake(wake);
    }

    /// A client user's first connection opened (`came`) or last one ended:
    /// the linger decides whether it is a transition. Returns shards to wake.
    fn presence_change(&self, s: &mut State, user: &str, came: bool) -> u128 {
        if self.limits.presence_linger_ms.is_none() || crate::presence::is_internal(user) {
            return 0;
        }
        let now = clock::unix_ms();
        let mut wake = 0;
        if came {
            if s.registry.count(user) == 1 && s.linger.came(user) {
                wake = self.announce(s, user, now, crate::presence::Transition::Online);
            }
        } else if s.registry.count(user) == 0 {
            s.linger.left(user, now);
        }
        self.count_online(s);
        wake
    }

    /// Publish a presence transition to the presence topic (under the lock).
    fn announce(&self, s: &mut State, user: &str, at: u64, t: crate::presence::Transition) -> u128 {
        if !self.presence_watched.load(Ordering::Acquire) {
            return 0;
        }
        let data = crate::presence::data(user, at);
        let target = Target::Topics(vec![crate::presence::TOPIC.into()].into_boxed_slice());
        m::presence_events(t.event(), 1);
        self.publish_locked(
            s,
            Publish {
                event: t.event(),
                data: &data,
                target,
                ttl_ns: 0,
            },
        )
        .1
    }

    fn count_online(&self, s: &State) {
        m::set_online_users((s.registry.public_counts().1 + s.linger.len()) as u64);
    }

    fn wake(&self, wake: u128) {
        for shard in 0..self.hub.shards() {
            if wake & (1u128 << shard.min(127)) != 0 {
                self.hub.wake(shard);
            }
        }
    }

    /// Register a connection and decide what it starts with. `joined` is the
    /// cluster registry's answer (cluster mode, Redis reachable); without it the
    /// pending events come from this pod's own store.
    pub fn open(
        &self,
        req: &OpenRequest<'_>,
        serial: u64,
        joined: Option<Joined>,
    ) -> Result<Opened, OpenError> {
        let now = clock::now_ns();
        let mut s = self.lock();
        let replacing = s.registry.find(req.user, req.conn_id).is_some();
        if !replacing {
            if s.registry.connections() >= self.limits.max_connections {
                return Err(OpenError::PodFull);
            }
            // Presence streams share one internal user: the per-user limit is
            // a client's, not theirs.
            if s.registry.count(req.user) >= self.limits.max_connections_per_user
                && !crate::presence::is_internal(req.user)
            {
                return Err(OpenError::UserFull);
            }
        }
        let loc = ConnLoc {
            shard: req.shard,
            key: req.key,
            serial,
        };
        if crate::presence::is_internal(req.user) {
            self.presence_watched.store(true, Ordering::Release);
        }
        // `join` sizes its buffer exactly: the box takes it without a copy.
        let topics = req.topics.join(",").into_boxed_str();
        let replaced = s
            .registry
            .register(req.user, req.conn_id, loc, clock::unix_ms(), topics);
        let presence_wake = if replaced.is_none() {
            self.presence_change(&mut s, req.user, true)
        } else {
            0
        };
        let wants = |e: &Event| e.target.matches(req.user, req.topics.iter().map(|t| &**t));
        let initial = match (req.last_event_id, joined) {
            (_, Some(j)) => match j.ids_from {
                None => {
                    // Registered at a log position: what it started with then, and
                    // what this pod has read since, in id order.
                    let since = s
                        .history
                        .after(j.floors.first().map_or(0, |f| f.seq), wants);
                    match j.start {
                        Start::Pending(frames) => Initial::Pending(
                            frames
                                .into_iter()
                                .map(|(_, f)| f)
                                .chain(since.into_iter().map(|e| QueuedFrame {
                                    bytes: e.frame.clone(),
                                    published_ns: e.published_ns,
                                }))
                                .collect(),
                        ),
                        Start::Replay {
                            mut partition,
                            broadcast,
                        } => {
                            partition.extend(broadcast);
                            partition.extend(since);
                            Initial::Replay(partition)
                        }
                        Start::Resync => Initial::Resync,
                    }
                }
                Some(from) => match j.start {
                    Start::Resync => Initial::Resync,
                    start => {
                        Initial::Pending(two_part_start(&s.history, from, &j.floors, start, wants))
                    }
                },
            },
            (Some(last), None) => {
                // Resuming covers what was pending: drop it so it is not sent twice.
                s.pending.take(req.user, now);
                if !req.local_history_complete {
                    Initial::Resync
                } else {
                    let presence = crate::presence::watches(req.topics);
                    match s.history.resume(last, now, presence, wants) {
                        Resume::Replay(events) => Initial::Replay(events),
                        Resume::Resync => Initial::Resync,
                    }
                }
            }
            (None, None) => Initial::Pending(s.pending.take(req.user, now)),
        };
        let floor = s.history.last_id();
        m::set_pending(s.pending.total());
        drop(s);
        self.wake(presence_wake);
        Ok(Opened {
            serial,
            floor,
            initial,
            replaced,
        })
    }

    /// A stream ended (its writer is done): forget it unless already replaced or
    /// disconnected. Returns its connection id when it was still registered.
    pub fn closed(&self, user: &str, serial: u64) -> Option<Box<str>> {
        let mut s = self.lock();
        let gone = s.registry.remove_serial(user, serial);
        if gone.is_some() {
            self.presence_change(&mut s, user, false);
        }
        gone
    }

    /// Forget `(user, conn_id)` if it is still the connection `serial` (a close
    /// forwarded by another pod must not end a newer connection).
    pub fn disconnect_exact(&self, user: &str, conn_id: &str, serial: u64) -> Option<ConnLoc> {
        let mut s = self.lock();
        let gone = s.registry.remove_exact(user, conn_id, serial);
        if gone.is_some() {
            self.presence_change(&mut s, user, false);
        }
        gone
    }

    /// `f(user, conn_id, where)` for every connection registered on this pod, or
    /// only on `shard`: the cluster's heartbeats and drain name them from here.
    /// One pass under the lock, once per heartbeat interval, never per event.
    pub fn for_each_registered(&self, shard: Option<u16>, mut f: impl FnMut(&str, &str, ConnLoc)) {
        let s = self.lock();
        for (user, conn_id, loc) in s.registry.entries() {
            if shard.is_none_or(|id| id == loc.shard) {
                f(user, conn_id, loc);
            }
        }
    }

    /// The last event id this pod has recorded.
    pub fn last_id(&self) -> u64 {
        self.lock().history.last_id()
    }

    /// Cluster mode: start this pod's history at `start` (the log's last id, or
    /// 0 with partitions): resumes are answered from Redis, the history holds
    /// what this pod reads from here on.
    pub fn join_log(&self, start: u64) {
        let mut s = self.lock();
        // Never backwards: streams opened before (Redis was unreachable at
        // start) skip live events at or below their floor.
        let start = start.max(s.history.last_id());
        s.history = History::joined(start, self.limits.history);
    }

    /// Cluster mode with `n` partitions (> 1): events get two-part ids.
    pub fn set_partitions(&self, n: usize) {
        if n > 1 {
            self.lock().positions = Some(vec![0; n + 1]);
        }
    }

    /// Cluster mode: this pod's reader of `source` passed a registration marker
    /// at log position `upto`; returns the order key events after it get.
    pub fn marker(&self, source: u16, upto: u64) -> u64 {
        let mut s = self.lock();
        if let Some(p) = s
            .positions
            .as_mut()
            .and_then(|p| p.get_mut(source as usize))
        {
            *p = (*p).max(upto);
        }
        s.history.last_id()
    }

    /// Cluster mode: record the events Redis routed to this pod from `source`, in
    /// its log order, and hand them to the shards that hold a target. Pending
    /// events for offline users are kept in Redis by the publishing pod, not here.
    /// With partitions each event gets this pod's next order key and frames whose
    /// ids pair its position with the pod's position in the other source.
    pub fn ingest(&self, source: u16, events: impl IntoIterator<Item = Arc<Event>>) {
        let shards = self.hub.shards();
        let all = if shards >= 128 {
            u128::MAX
        } else {
            (1u128 << shards) - 1
        };
        let mut wake: u128 = 0;
        {
            let mut guard = self.lock();
            let s = &mut *guard;
            let now = clock::now_ns();
            for ev in events {
                let ev = match s.positions.as_mut() {
                    None if ev.id <= s.history.last_id() => continue, // read twice
                    None => ev,
                    Some(pos) => {
                        let at = ev.id;
                        let Some(mine) = pos.get(source as usize).copied() else {
                            continue;
                        };
                        if at <= mine {
                            continue; // read twice
                        }
                        pos[source as usize] = at;
                        two_part_event(&ev, source, at, pos, s.history.last_id() + 1)
                    }
                };
                let mask = match &ev.target {
                    Target::Users(users) => {
                        users.iter().fold(0, |m, u| m | s.registry.shard_mask(u))
                    }
                    Target::All | Target::Topics(_) => all,
                };
                for shard in 0..shards {
                    if mask & (1u128 << shard.min(127)) != 0 {
                        self.hub.push(shard, ShardMsg::Event(ev.clone()));
                    }
                }
                wake |= mask;
                s.history.push(ev, now);
                self.events.fetch_add(1, Ordering::Relaxed);
            }
        }
        for shard in 0..shards {
            if wake & (1u128 << shard.min(127)) != 0 {
                self.hub.wake(shard);
            }
        }
    }

    /// Forget `(user, conn_id)` and return where its stream lives, to end it.
    pub fn disconnect(&self, user: &str, conn_id: &str) -> Option<ConnLoc> {
        let mut s = self.lock();
        let gone = s.registry.remove(user, conn_id);
        if gone.is_some() {
            self.presence_change(&mut s, user, false);
        }
        gone
    }

    /// Tell every stream of this pod that it may have missed events (`RESYNC`):
    /// the cluster lost this pod's registrations for a while.
    pub fn resync_all(&self, reason: &str) {
        let frame = resync_frame(reason);
        for shard in 0..self.hub.shards() {
            self.hub.push(shard, ShardMsg::Unnumbered(frame.clone()));
            self.hub.wake(shard);
        }
    }

    /// Tell these streams of this pod (`(user, conn_id)`) that they may have
    /// missed events (`RESYNC`): the cluster lost their registrations for a while.
    pub fn resync(&self, conns: &[(String, String)], reason: &str) {
        let frame = resync_frame(reason);
        let s = self.lock();
        let mut wake: u128 = 0;
        for (user, conn_id) in conns {
            if let Some(loc) = s.registry.find(user, conn_id) {
                self.hub.push(
                    loc.shard as usize,
                    ShardMsg::UnnumberedTo {
                        loc,
                        frame: frame.clone(),
                    },
                );
                wake |= 1u128 << (loc.shard as usize).min(127);
            }
        }
        drop(s);
        for shard in 0..self.hub.shards() {
            if wake & (1u128 << shard.min(127)) != 0 {
                self.hub.wake(shard);
            }
        }
    }

    /// Ask the shard holding `loc` to end it.
    pub fn close_remote(
        &self,
        loc: ConnLoc,
        reason: CloseReason,
        ack: Option<tokio::sync::oneshot::Sender<bool>>,
    ) {
        self.hub
            .send(loc.shard as usize, ShardMsg::Close { loc, reason, ack });
    }

    /// Sequence, frame, record and hand out one event; returns its id.
    pub fn publish(&self, p: Publish<'_>) -> u64 {
        let (id, wake) = {
            let mut s = self.lock();
            self.publish_locked(&mut s, p)
        };
        self.wake(wake);
        id
    }

    /// [`Broker::publish`] under the lock; returns the id and the shards to
    /// wake once it is released.
    fn publish_locked(&self, s: &mut State, p: Publish<'_>) -> (u64, u128) {
        let mut wake: u128 = 0;
        let now = clock::now_ns();
        let id = s.history.last_id() + 1;
        let framed = match p.target {
            // It may wait as a pending event long after its neighbours.
            Target::Users(_) => frame::event(id, p.event, p.data),
            Target::All | Target::Topics(_) => s.arena.event(id, p.event, p.data),
        };
        let ev = Arc::new(Event::new(id, p.target, framed, now));
        let shards = self.hub.shards();
        match &ev.target {
            Target::Users(users) => {
                for user in users.iter() {
                    let mask = s.registry.shard_mask(user);
                    if mask == 0 {
                        let drops = s.pending.push(user, &ev, p.ttl_ns);
                        m::dropped("pending_overflow", drops.overflow);
                        m::dropped("pending_full", drops.refused);
                    }
                    wake |= mask;
                }
                m::set_pending(s.pending.total());
            }
            // Only shards holding a stream: an empty shard has nobody to
            // deliver to (the event is in the history for later resumes).
            Target::All | Target::Topics(_) => wake = s.registry.occupied_shards(),
        }
        for shard in 0..shards {
            if wake & (1u128 << shard.min(127)) != 0 {
                self.hub.push(shard, ShardMsg::Event(ev.clone()));
            }
        }
        s.history.push(ev, now);
        self.events.fetch_add(1, Ordering::Relaxed);
        (id, wake)
    }

    /// Periodic upkeep: expire pending events and old history.
    pub fn sweep(&self) {
        let now = clock::now_ns();
        let mut s = self.lock();
        let expired = s.pending.sweep(now);
        s.history.trim(now);
        m::dropped("pending_expired", expired);
        m::set_pending(s.pending.total());
    }
}

/// `RESYNC` with `{"reason": …}` (no id: it must not move the resume point).
fn resync_frame(reason: &str) -> Bytes {
    frame::unnumbered(
        "RESYNC",
        &serde_json::json!({ "reason": reason }).to_string(),
    )
}

/// A two-part SSE id: broadcast position, partition position.
fn two_part_id(b: u64, p: u64) -> String {
    format!("{b}.{p}")
}

/// An event read from `source` at log position `at`, as this pod hands it out
/// with partitions: order key `seq`; a broadcast gets one frame per partition
/// (its position with that partition's), a partition's event one frame (the
/// broadcast position with its own).
fn two_part_event(ev: &Event, source: u16, at: u64, pos: &[u64], seq: u64) -> Arc<Event> {
    let (frame, frames) = if source == 0 {
        let frames: Box<[Bytes]> = pos[1..]
            .iter()
            .map(|&p| frame::with_id(&ev.frame, &two_part_id(at, p)))
            .collect();
        (frames[0].clone(), frames)
    } else {
        (
            frame::with_id(&ev.frame, &two_part_id(pos[0], at)),
            Box::default(),
        )
    };
    Arc::new(Event {
        id: seq,
        target: ev.target.clone(),
        frame,
        frames,
        published_ns: ev.published_ns,
        origin: Some((source, at)),
    })
}

/// The first frames of a stream with partitions, each with its own two-part id
/// (so its ids increase in both parts): its partition's events (pending or
/// replayed) from `from`, the replayed broadcasts, then what this pod read after
/// the registration in each of the two sources.
fn two_part_start(
    history: &History,
    from: (u64, u64),
    floors: &[Floor],
    start: Start,
    wants: impl Fn(&Event) -> bool,
) -> Vec<QueuedFrame> {
    let (mut b, registered_p) = from;
    let mut p = 0;
    let mut out = Vec::new();
    let mut put = |bytes: &Bytes, b: u64, p: u64, published_ns: u64| {
        out.push(QueuedFrame {
            bytes: frame::with_id(bytes, &two_part_id(b, p)),
            published_ns,
        });
    };
    let broadcast = match start {
        Start::Pending(frames) => {
            for (at, f) in frames {
                p = at;
                put(&f.bytes, b, p, f.published_ns);
            }
            Vec::new()
        }
        Start::Replay {
            partition,
            broadcast,
        } => {
            for e in partition {
                p = e.id;
                put(&e.frame, b, p, e.published_ns);
            }
            broadcast
        }
        Start::Resync => Vec::new(),
    };
    p = p.max(registered_p);
    for e in broadcast {
        b = e.id;
        put(&e.frame, b, p, e.published_ns);
    }
    let first = floors.iter().map(|f| f.seq).min().unwrap_or(0);
    for e in history.after(first, wants) {
        let Some((source, at)) = e.origin else {
            continue;
        };
        let Some(floor) = floors.iter().find(|f| f.source == source) else {
            continue;
        };
        if e.id <= floor.seq {
            continue;
        }
        if source == 0 {
            b = b.max(at);
        } else {
            p = p.max(at);
        }
        put(&e.frame, b, p, e.published_ns);
    }
    out
}
