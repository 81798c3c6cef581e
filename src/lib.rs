//! # herald — a Server-Sent Events broadcast server
//!
//! herald holds very many long-lived SSE connections and fans published events out
//! to them: to one user, to everyone, or to a topic's subscribers.
//!
//! ## Architecture
//! * **Shards** ([`shard`]): one thread per core, each a current-thread tokio
//!   runtime pinned to its core with its own `SO_REUSEPORT` listener. A connection
//!   lives on the shard that accepted it; shard state is never shared.
//! * **Connection table** ([`conn`]): per shard a `slab::Slab` of connections with
//!   indexes by user and topic; each connection has a bounded outbound queue of
//!   shared frames (slow consumers are closed, nobody waits).
//! * **HTTP** ([`http`]): the request head is read with httparse; an SSE connect
//!   takes a lean path (its socket moves to the shard's own mio poll, written by
//!   the shard's flush: no task and no HTTP buffers per idle stream); every other
//!   endpoint is served by hyper.
//! * **HTTPS** ([`tls`], [`http2`]): rustls makes the handshake; then an HTTP/1.1
//!   stream is a lean stream whose records the shard seals, and an HTTP/2
//!   connection is herald's own (records, frames, flow control, streams).
//! * **Broker** ([`broker`]): sequences publishes (strictly increasing ids), frames
//!   each event once ([`sse::frame`]), keeps resume history and pending events
//!   ([`history`]) and the connection registry ([`registry`]), and hands the one
//!   `Bytes` to every shard through lock-free queues ([`fanout`]).
//! * **Observability** ([`metrics`]): Prometheus text at `/metrics`; hot-path
//!   counters are per shard and flushed once a second.
//!
//! [`Server::start`] binds and starts the shards; [`Server::shutdown`] drains them.

pub mod admission;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod error;
pub mod event;
pub mod fanout;
pub mod fdlimit;
pub mod hint;
pub mod history;
pub mod http;
pub mod http2;
pub mod idempotency;
pub mod jwks;
pub mod metrics;
pub mod presence;
pub mod registry;
pub mod seam;
pub mod shard;
pub mod sse;
pub mod tls;
pub mod trim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, watch};

use broker::{Broker, BrokerLimits};
pub use config::Config;
use conn::QueueLimits;
use history::{HistoryLimits, PendingLimits};
use shard::Phase;

/// What every shard shares (read-only, or internally synchronised).
pub struct Shared {
    pub config: Config,
    pub broker: Broker,
    /// Subscriber and publisher credentials.
    pub auth: auth::Auth,
    /// Where connections are registered and events published: this pod alone
    /// (embedded) or the cluster's Redis (`--redis`).
    pub registry: Arc<dyn seam::ConnectionRegistry>,
    pub bus: Arc<dyn seam::EventBus>,
    /// `Idempotency-Key` answers and the keys in flight on this pod.
    pub idempotency: idempotency::Store,
    pub prometheus: PrometheusHandle,
    pub shard_stats: Vec<Arc<metrics::ShardStats>>,
    pub queue_limits: QueueLimits,
    /// `config.max_connections` was lowered to what the open-file limit leaves
    /// room for: a connect past it is answered `503` (the pod is out of a
    /// resource), not `429` (a limit the operator chose).
    pub fd_bound: bool,
    /// HTTPS (`--tls-cert`, `--tls-key`): every connection starts with a TLS
    /// handshake, then HTTP/2 or HTTP/1.1 by ALPN.
    pub tls: Option<tls::Tls>,
}

impl Shared {
    /// Refuse `user`'s connects on this pod until `until` (unix ms: a kick with
    /// `reconnect=false`, asked here or read from the cluster) and end its
    /// streams here; returns how many there were.
    pub fn end_user(&self, user: &str, until: u64) -> usize {
        let ended = self.broker.block(user, until);
        for (conn_id, loc) in &ended {
            self.registry.unregister(user, conn_id, loc.serial);
            self.broker
                .close_remote(*loc, conn::CloseReason::Disconnected, None);
        }
        ended.len()
    }

    /// A `retry:` value for one stream: the base plus per-stream jitter, so that
    /// clients of a closed pod do not all come back at the same moment.
    pub fn retry_hint_ms(&self) -> u64 {
        let base = self.config.retry.as_millis() as u64;
        let jitter = self.config.retry_jitter.as_millis() as u64;
        base + if jitter > 0 {
            fastrand::u64(0..=jitter)
        } else {
            0
        }
    }
}

/// Raise the open-file limit and lower `--max-connections` to the streams it
/// leaves room for (one log line with both numbers). Returns whether it lowered it.
fn cap_by_open_files(config: &mut Config, shards: usize) -> bool {
    let limit = match fdlimit::raise() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return false;
        }
    };
    if limit.soft > limit.before {
        tracing::info!(
            from = limit.before,
            to = limit.soft,
            "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
        );
    }
    let room = fdlimit::stream_room(limit.soft, shards);
    if config.max_connections <= room {
        return false;
    }
    tracing::info!(
        max_connections = config.max_connections,
        capped_at = room,
        open_file_limit = limit.soft,
        "--max-connections {} capped at {room}: the open-file limit is {} \
         (connects past it get 503; raise LimitNOFILE / ulimit -n to hold more)",
        config.max_connections,
        limit.soft,
    );
    config.max_connections = room;
    true
}

/// A running herald: its shards and the address they listen on.
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    phase: watch::Sender<Phase>,
    done: mpsc::UnboundedReceiver<u16>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Validate `config`, bind its address on every shard and start serving.
    pub fn start(mut config: Config) -> Result<Server, String> {
        config.validate()?;
        let shards = config.shard_count();
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::Tls::load(cert, key)?),
            _ => None,
        };
        let fd_bound = cap_by_open_files(&mut config, shards);
        let listeners = shard::listener::bind_all(config.listen, shards)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let local_addr = listeners[0].local_addr().map_err(|e| e.to_string())?;
        let prometheus = metrics::install();
        let limits = BrokerLimits {
            history: HistoryLimits {
                max_events: config.history_events,
                max_age_ns: u64::try_from(config.history_seconds.as_nanos()).unwrap_or(u64::MAX),
                max_bytes: config.history_bytes,
            },
            pending: PendingLimits {
                per_user: config.max_pending,
                total: config.max_pending_total,
            },
            max_connections: config.max_connections,
            max_connections_per_user: config.max_connections_per_user,
            // In a cluster the registry scripts decide presence.
            presence_linger_ms: config
                .redis_url
                .is_none()
                .then_some(config.presence_linger.as_millis() as u64),
        };
        let pod_id = config.resolved_pod_id();
        let cluster = match &config.redis_url {
            Some(url) => Some(Arc::new(cluster::Cluster::new(&config, url, &pod_id)?)),
            None => None,
        };
        let auth = auth::Auth::from_config(&config)?;
        let (registry, bus): (Arc<dyn seam::ConnectionRegistry>, Arc<dyn seam::EventBus>) =
            match &cluster {
                Some(c) => (c.clone(), c.clone()),
                None => (Arc::new(seam::Local), Arc::new(seam::Local)),
            };
        let shared = Arc::new(Shared {
            auth,
            broker: Broker::new(shards, pod_id, limits),
            registry,
            bus,
            // A repeat waits for the first at most as long as the first can take
            // (a Redis call, then buffered).
            idempotency: idempotency::Store::new(
                config.idempotency_window,
                config.redis_timeout * 3 + Duration::from_secs(5),
            ),
            queue_limits: QueueLimits {
                max_frames: config.max_queue_events,
                max_bytes: config.max_queue_bytes,
            },
            shard_stats: (0..shards).map(|_| Arc::default()).collect(),
            prometheus,
            config,
            fd_bound,
            tls,
        });
        if let Some(c) = &cluster {
            metrics::cluster_init();
            let ready = c
                .spawn(shared.clone())
                .map_err(|e| format!("cannot start the redis thread: {e}"))?;
            // Serve once the pod has joined the log (or Redis proved unreachable:
            // then it serves its own connections and joins later).
            let _ = ready.recv_timeout(shared.config.redis_timeout * 2 + Duration::from_secs(1));
        }
        let (phase, phase_rx) = watch::channel(Phase::Running);
        let (done_tx, done) = mpsc::unbounded_channel();
        let mut threads = Vec::with_capacity(shards);
        for (i, l) in listeners.into_iter().enumerate() {
            let t = shard::spawn(
                i as u16,
                shared.clone(),
                l,
                phase_rx.clone(),
                done_tx.clone(),
            )
            .map_err(|e| format!("cannot start shard {i}: {e}"))?;
            threads.push(t);
        }
        trim::spawn();
        Ok(Server {
            shared,
            local_addr,
            phase,
            done,
            threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn pod_id(&self) -> &str {
        self.shared.broker.pod_id()
    }

    pub fn shards(&self) -> usize {
        self.threads.len()
    }

    /// Whether this server speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// `SIGHUP`: load the TLS certificate and key again. New handshakes use
    /// them; on error the previous ones stay and the error is logged.
    pub fn reload_tls(&self) {
        let Some(tls) = &self.shared.tls else {
            tracing::info!("SIGHUP: no --tls-cert to reload");
            return;
        };
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP: TLS certificate not reloaded, the previous one stays")
            }
        }
    }

    /// Drain: readiness and new connects answer 503, every stream ends with a
    /// `retry:` hint (staggered over half the grace period). Returns whether every
    /// shard finished within the grace period.
    pub fn shutdown(mut self) -> bool {
        let grace = self.shared.config.grace_period;
        let deadline = Instant::now() + grace;
        self.shared.broker.start_draining();
        // New connects are refused now; before any stream ends, this pod's
        // connections leave the shared registry in one batch.
        self.shared.registry.drain(grace / 4);
        let _ = self.phase.send(Phase::Draining);
        let mut finished = 0;
        while finished < self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.shared.registry.leave(grace / 4);
                return false;
            }
            match recv_timeout(&mut self.done, left.min(Duration::from_millis(100))) {
                Some(true) => finished += 1,
                Some(false) => {
                    self.shared.registry.leave(grace / 4);
                    return false;
                }
                None => {}
            }
        }
        // The streams have ended: what the cluster holds for this pod goes.
        self.shared.registry.leave(grace / 4);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        true
    }
}

/// Blocking receive with a timeout: `Some(true)` a message, `Some(false)` the
/// channel closed, `None` timed out.
fn recv_timeout(rx: &mut mpsc::UnboundedReceiver<u16>, timeout: Duration) -> Option<bool> {
    let until = Instant::now() + timeout;
    loop {
        match rx.try_recv() {
            Ok(_) => return Some(true),
            Err(mpsc::error::TryRecvError::Disconnected) => return Some(false),
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
