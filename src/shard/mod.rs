//! A shard: one OS thread pinned to a core, running a current-thread tokio runtime
//! that owns a connection table. It accepts on its own `SO_REUSEPORT` listener,
//! serves every connection it accepted for that connection's whole life, drains
//! its inbox of published events into its connections' queues, sends heartbeats,
//! and on shutdown ends its streams in a staggered way. Nothing in here is shared
//! with other threads except the inbox (see [`crate::fanout`]) and the counters it
//! publishes ([`ShardStats`]).

pub mod io;
pub mod listener;
pub mod stream;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::LocalSet;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, warn};

use crate::admission::TokenBucket;
use crate::clock;
use crate::conn::{CloseReason, ConnState, ConnTable, QueuedFrame};
use crate::fanout::ShardMsg;
use crate::metrics::{self as m, LocalStats, ShardStats};
use crate::sse::frame;
use crate::Shared;

/// Lifecycle of the pod as shards see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Readiness 503, connects 503, streams being ended.
    Draining,
}

/// The state of one shard, owned by its thread.
pub struct Shard {
    pub id: u16,
    pub shared: Arc<Shared>,
    pub table: RefCell<ConnTable>,
    pub stats: Arc<ShardStats>,
    pub local: LocalStats,
    pub admission: RefCell<TokenBucket>,
    /// Notified when the table becomes empty (the drain waits on it).
    pub emptied: Notify,
    /// The poll of lean-stream sockets and the flush's reusable lists.
    pub io: io::IoSet,
    pub counters: m::ConnCounters,
    /// Events published on this shard since the current flush round began (they
    /// go out in the next one); publishes wait for the round's end past
    /// [`ROUND_BACKLOG`].
    pub queued_in_round: std::cell::Cell<u32>,
    /// Notified at the end of every flush round.
    pub round_end: Notify,
    /// The pod's lifecycle (HTTP/2 connections send GOAWAY when it drains).
    pub phase: watch::Receiver<Phase>,
    /// The wakers of this shard's HTTP/2 connections ([`crate::http2`]): woken
    /// when the pod starts draining, to send GOAWAY.
    pub h2_conns: RefCell<slab::Slab<std::task::Waker>>,
    /// A flush round is under way (publishes wait only for one that is: a shard
    /// with nothing to write has no round to wait for).
    pub in_round: std::cell::Cell<bool>,
    /// Request bodies held by this shard's connections, in bytes (within
    /// `--body-budget`).
    pub bodies: std::cell::Cell<usize>,
}

/// A body counted against its shard's budget until dropped.
pub struct BodyPermit {
    shard: Rc<Shard>,
    len: usize,
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        self.shard.body_bytes(-(self.len as i64));
    }
}

/// Events a flush round may gather for the next before publishes on this shard
/// wait for it (the publishers' backpressure). It bounds how far events queue
/// ahead of the writes, hence the latency when subscribers read slower than
/// publishers publish: measured at 10,000 subscribers with unthrottled
/// publishers, 16 keeps p99 under 200 ms with 1 to 16 publishes in flight at
/// about 3-4 M deliveries/s, where 64 gave ~440 ms for 5% more throughput.
pub const ROUND_BACKLOG: u32 = 16;

impl Shard {
    /// A flush round ended: what it gathered goes out in the next.
    fn round_done(&self) {
        self.in_round.set(false);
        self.queued_in_round.set(0);
        self.round_end.notify_waiters();
    }

    /// Wait, before publishing, while a flush round is under way and its next
    /// round already holds [`ROUND_BACKLOG`] events published on this shard (the
    /// publishers' backpressure: checked before publishing, so that however many
    /// publishes are in flight the next round gets about that many events).
    pub async fn publish_room(&self) {
        while !self.has_publish_room() {
            self.round_end.notified().await;
        }
    }

    /// Whether [`Shard::publish_room`] would return at once.
    pub fn has_publish_room(&self) -> bool {
        !(self.in_round.get() && self.queued_in_round.get() >= ROUND_BACKLOG)
    }

    /// Count `n` events just published on this shard (see [`Shard::publish_room`]).
    pub fn published(&self, n: usize) {
        self.queued_in_round
            .set(self.queued_in_round.get().saturating_add(n as u32));
    }

    /// Whether a new request body may start: the bodies held are within
    /// `--body-budget` (one body more may take it past by one body at most).
    pub fn body_room(&self) -> bool {
        self.bodies.get() < self.shared.config.body_budget
    }

    /// Body bytes held grew (positive) or were let go.
    pub fn body_bytes(&self, delta: i64) {
        let now = self.bodies.get() as i64 + delta;
        self.bodies.set(now.max(0) as usize);
    }

    /// Hold up to `len` bytes of one HTTP/1.1 request body until the permit
    /// drops; `None` when the shard's body budget is spent.
    pub fn body_permit(self: &Rc<Self>, len: usize) -> Option<BodyPermit> {
        if !self.body_room() {
            m::body_refused("http1");
            return None;
        }
        self.body_bytes(len as i64);
        Some(BodyPermit {
            shard: self.clone(),
            len,
        })
    }

    /// Publish the table size after a change.
    pub fn table_changed(&self, table: &ConnTable) {
        // Clients' streams: presence streams are not anyone's connection.
        let clients = table.len() - table.count_of(crate::presence::WATCHER);
        self.stats
            .connections
            .store(clients as u64, std::sync::atomic::Ordering::Relaxed);
        if table.is_empty() {
            self.emptied.notify_waiters();
        }
    }
}

/// Start shard `id` on its own thread; the thread ends when the drain is over.
pub fn spawn(
    id: u16,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    phase: watch::Receiver<Phase>,
    done: tokio::sync::mpsc::UnboundedSender<u16>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("herald-shard-{id}"))
        .spawn(move || {
            if let Some(cores) = core_affinity::get_core_ids() {
                if !cores.is_empty() {
                    core_affinity::set_for_current(cores[id as usize % cores.len()]);
                }
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(shard = id, error = %e, "cannot build the shard runtime");
                    let _ = done.send(id);
                    return;
                }
            };
            let local = LocalSet::new();
            local.block_on(&rt, run(id, shared, listener, phase));
            let _ = done.send(id);
        })
}

async fn run(
    id: u16,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    mut phase: watch::Receiver<Phase>,
) {
    let cfg = &shared.config;
    let limits = shared.queue_limits;
    let shards = shared.shard_stats.len() as u64;
    let io = match io::IoSet::new() {
        Ok(io) => io,
        Err(e) => {
            warn!(shard = id, error = %e, "cannot create the stream poll");
            return;
        }
    };
    let shard = Rc::new(Shard {
        io,
        counters: m::ConnCounters::new(id),
        id,
        table: RefCell::new(ConnTable::new(limits)),
        stats: shared.shard_stats[id as usize].clone(),
        local: LocalStats::default(),
        admission: RefCell::new(TokenBucket::new(
            cfg.connect_rate.div_ceil(shards),
            cfg.connect_burst.div_ceil(shards),
            clock::now_ns(),
        )),
        emptied: Notify::new(),
        h2_conns: RefCell::new(slab::Slab::new()),
        queued_in_round: std::cell::Cell::new(0),
        round_end: Notify::new(),
        in_round: std::cell::Cell::new(false),
        bodies: std::cell::Cell::new(0),
        phase: phase.clone(),
        shared: shared.clone(),
    });
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(shard = id, error = %e, "cannot register the listener");
            return;
        }
    };
    tokio::task::spawn_local(io::io_loop(shard.clone()));
    tokio::task::spawn_local(fanout_loop(shard.clone()));
    tokio::task::spawn_local(heartbeat_loop(shard.clone()));
    tokio::task::spawn_local(flush_loop(shard.clone()));
    if id == 0 {
        tokio::task::spawn_local(cleanup_loop(shard.clone()));
        if !shard.shared.registry.is_shared() {
            tokio::task::spawn_local(presence_loop(shard.clone()));
        }
    }
    tokio::task::spawn_local(accept_loop(shard.clone(), listener));
    // Run until the pod starts draining, then end the streams.
    while *phase.borrow_and_update() == Phase::Running {
        if phase.changed().await.is_err() {
            break;
        }
    }
    for (_, waker) in shard.h2_conns.borrow().iter() {
        waker.wake_by_ref();
    }
    drain(&shard).await;
    shard.local.flush(&shard.stats);
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                crate::trim::accepted();
                let _ = stream.set_nodelay(true);
                tokio::task::spawn_local(crate::http::serve_conn(shard.clone(), stream));
            }
            Err(e) => {
                // EMFILE and friends: the connection waits in the backlog. Back
                // off briefly instead of spinning, and say so once a second with
                // a count rather than once per attempt.
                crate::metrics::accept_failed();
                let now_ms = crate::clock::now_ns() / 1_000_000;
                if let Some(n) = crate::fdlimit::ACCEPT_FAILED.hit(now_ms) {
                    warn!(
                        shard = shard.id,
                        error = %e,
                        failures = n,
                        "accept failed {n} time(s) since the last report"
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Connections written per slice of a flush round before the shard yields.
const ROUND_SLICE: usize = 256;

/// Drain the inbox and write. Each wake-up queues what the inbox holds on the
/// matching connections, then writes every connection with news once, in a
/// round of slices: between two slices the shard yields (publishes are
/// answered, connects served) and queues whatever arrived meanwhile, so a
/// connection not yet reached takes the new events in the same `writev`, and the
/// others in the next round. How many events one write carries therefore
/// depends on how long a round takes, not on how many publishes are in flight.
async fn fanout_loop(shard: Rc<Shard>) {
    let hub = shard.shared.broker.hub();
    let id = shard.id as usize;
    let mut round: Vec<u32> = Vec::new();
    loop {
        if !shard.table.borrow().has_dirty() {
            hub.ready(id).await;
        }
        take_inbox(&shard);
        shard.table.borrow_mut().take_dirty(&mut round);
        // What was queued so far goes out in this round.
        shard.queued_in_round.set(0);
        shard.in_round.set(!round.is_empty());
        let mut at = 0;
        while at < round.len() {
            let end = (at + ROUND_SLICE).min(round.len());
            io::write_keys(&shard, &round[at..end]);
            at = end;
            if at < round.len() {
                tokio::task::yield_now().await;
                take_inbox(&shard);
            }
        }
        shard.round_done();
        tokio::task::yield_now().await;
    }
}

/// Queue a bounded batch of the inbox's messages on this shard's connections.
fn take_inbox(shard: &Shard) {
    let hub = shard.shared.broker.hub();
    let id = shard.id as usize;
    for _ in 0..256 {
        let Some(msg) = hub.pop(id) else { break };
        match msg {
            ShardMsg::Event(ev) => {
                let d = shard.table.borrow_mut().deliver(&ev);
                if d.slow_closed > 0 {
                    m::dropped("slow_consumer", d.dropped_frames);
                }
            }
            ShardMsg::UnnumberedTo { loc, frame } => {
                let d =
                    shard
                        .table
                        .borrow_mut()
                        .push_unnumbered(loc.key as usize, loc.serial, &frame);
                if d.slow_closed > 0 {
                    m::dropped("slow_consumer", d.dropped_frames);
                }
            }
            ShardMsg::Unnumbered(frame) => {
                let d = shard.table.borrow_mut().deliver_all_unnumbered(&frame);
                if d.slow_closed > 0 {
                    m::dropped("slow_consumer", d.dropped_frames);
                }
            }
            ShardMsg::Close { loc, reason, ack } => {
                let found = shard
                    .table
                    .borrow_mut()
                    .close(loc.key as usize, loc.serial, reason)
                    .is_some();
                if let Some(ack) = ack {
                    let _ = ack.send(found);
                }
            }
        }
    }
}

/// One timer per shard; one framed heartbeat per tick, shared by every stream.
async fn heartbeat_loop(shard: Rc<Shard>) {
    let period = shard.shared.config.heartbeat_interval;
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let batch = metrics::histogram!(m::HEARTBEAT_BATCH, "shard" => shard.id.to_string());
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        let now_ms = clock::unix_ms();
        let hb = frame::heartbeat(now_ms);
        shard
            .stats
            .heartbeat_ms
            .store(now_ms, std::sync::atomic::Ordering::Relaxed);
        let d = shard.table.borrow_mut().deliver_heartbeat(&hb);
        if d.slow_closed > 0 {
            m::dropped("slow_consumer", d.dropped_frames);
        }
        io::flush(&shard);
        batch.record(started.elapsed().as_secs_f64());
        // The registry heartbeat of this shard's streams: one batch.
        shard
            .shared
            .registry
            .heartbeat(&shard.shared.broker, shard.id);
    }
}

/// Move the shard-local counters to where `/metrics` reads them, once a second.
async fn flush_loop(shard: Rc<Shard>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        shard.local.flush(&shard.stats);
    }
}

/// Expire pending events and history (the pod-wide sweep runs on shard 0).
async fn cleanup_loop(shard: Rc<Shard>) {
    let period = shard.shared.config.cleanup_interval;
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        tick.tick().await;
        shard.shared.broker.sweep();
    }
}

/// Embedded presence: users whose linger has passed go offline (shard 0).
async fn presence_loop(shard: Rc<Shard>) {
    let period = shard.shared.config.presence_tick();
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shard.shared.broker.presence_tick();
    }
}

/// End every stream, staggered over half the grace period, each with a jittered
/// `retry:` hint, then wait for the writers to finish.
async fn drain(shard: &Rc<Shard>) {
    let cfg = &shard.shared.config;
    let window = cfg.grace_period / 2;
    let streams: Vec<(usize, u64)> = {
        let table = shard.table.borrow();
        table
            .keys()
            .filter_map(|k| table.get(k).map(|c| (k, c.serial)))
            .collect()
    };
    debug!(shard = shard.id, streams = streams.len(), "draining");
    let start = Instant::now();
    let n = streams.len().max(1) as u32;
    for (i, (key, serial)) in streams.into_iter().enumerate() {
        let due = start + window * i as u32 / n;
        if due > Instant::now() + Duration::from_millis(2) {
            sleep_until(due).await;
        }
        {
            let mut table = shard.table.borrow_mut();
            if let Some(conn) = table
                .get_mut(key)
                .filter(|c| c.serial == serial && c.state == ConnState::Open)
            {
                let hint = frame::retry(shard.shared.retry_hint_ms());
                conn.queue.push_initial(QueuedFrame {
                    bytes: hint,
                    published_ns: 0,
                });
                conn.state = ConnState::Closing(CloseReason::Shutdown);
                table.mark_dirty(key);
            }
        }
        io::flush(shard);
    }
    loop {
        let emptied = shard.emptied.notified();
        if shard.table.borrow().is_empty() {
            break;
        }
        emptied.await;
    }
}
