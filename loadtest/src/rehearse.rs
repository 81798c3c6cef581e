//! `rehearse` and `rehearse-pub`: the browser-like clients of
//! `perf/rehearsal.sh` (issue 25's scale rehearsal).
//!
//! **Layout** ([`Layout`]): `--streams S` streams over users with 1–3 streams
//! each and `--topics T` topics of very different sizes (stream `i`'s topic is
//! drawn from a Zipf(1) law, so topic 0 has about 1/H(T) of the streams and
//! topic T−1 a T-th of that), all derived from `--seed`: every process given
//! the same flags computes the same layout. User `u` is `r<u>`, stream `i` is
//! connection `c<i>` of its user and subscribes to topic `t<topic>`.
//! A subscriber process takes the users `u % parts == part`, so it knows each
//! of its users whole (users online = users with an open stream).
//!
//! **Subscriber** (`rehearse`): mio event loops like [`crate::conn`], a small
//! state machine per stream, but each stream behaves like an `EventSource`:
//! when its stream ends it waits the last `retry:` hint and reconnects with
//! `Last-Event-ID` (the last `id:` it saw) to a pod chosen at random among
//! `--pods` (a load balancer); a refused connect (`503`, `429`, other non-2xx)
//! or a connect timeout is retried with exponential backoff from the hint up
//! to `--backoff-max`, a refused TCP connect (a dead pod) at once on the next
//! pod after a short pause; after `--max-attempts` failures in a row the
//! stream gives up, and a `204` ends it for good (as `EventSource` does). The
//! first connects go to pod `i % pods`, at most `--connect-concurrency` in
//! flight.
//!
//! **Stamps**: the publisher (`rehearse-pub`) sends three kinds of events,
//! named `u` (user events, target `r<g % U>`), `t` (topic events, target
//! `t<h % T>`) and `b` (broadcasts), each kind with its own sequence counter
//! from 0, and the payload `T<send_ns>S<seq>P…` of [`crate::payload`]. A
//! stream of user `u` expects every user event with `g % U == u` (class index
//! `g / U`), every topic event of its topic and every broadcast, from the
//! first (the script starts the publisher once every stream is open). One
//! [`Track`] per kind and stream, kept across reconnects, counts first
//! deliveries, duplicates and reorders exactly; at the end, with the
//! publisher's final counts (`--pub-final`, written by `rehearse-pub
//! --final`), loss = expected − distinct received, and the lost sequence
//! numbers are listed (up to a bound) so that the script can attribute them
//! to phases by the publisher's snapshots. Latency = receive time − `send_ns`
//! (`CLOCK_MONOTONIC`, the same clock in every process on the machine),
//! replays after a reconnect included.
//!
//! **Publisher** (`rehearse-pub`): one thread per kind at a fixed rate, one
//! request in flight each, round-robin over the pods; every event carries an
//! `Idempotency-Key` (`<run>-<kind>-<seq>`) and is sent again (next pod,
//! backoff) until a pod answers `2xx` or `--retry-for` runs out: so each
//! sequence number is published exactly once, as herald's README asks of a
//! backend. One never confirmed is listed as unresolved and expected by
//! nobody (a delivery of it is not counted either way).
//!
//! **Snapshots**: both roles append one JSON object per `--snapshot-interval`
//! to `--snapshot` (wall-clock `t_ms`, cumulative counters, latency
//! percentiles of the interval), which the script cuts into phases.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::conn::new_hist;
use crate::payload;
use crate::publisher::HttpClient;
use crate::sse::{self, Event, Framing, SseParser};
use crate::sys;
use crate::target::{parse_url, push_u64, Url};
use crate::track::{Mark, Phase, Track};

/// Event kinds: user events, topic events, broadcasts.
pub const KINDS: usize = 3;
const KIND_NAMES: [&str; KINDS] = ["user", "topic", "broadcast"];
const EVENT_NAMES: [&str; KINDS] = ["u", "t", "b"];
const READ_BUF: usize = 64 * 1024;
const MAX_HEAD: usize = 64 * 1024;
/// Lost sequence numbers listed per kind and thread in the final report.
const LOST_SAMPLE: usize = 2000;
const MAX_ID: usize = 64;

/// splitmix64: a fixed hash for the layout.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Who holds which streams, the same in every process given the same flags.
pub struct Layout {
    pub streams: u64,
    pub users: u64,
    pub topics: u64,
    /// Stream index of each user's first stream, plus `streams` at the end.
    user_start: Vec<u32>,
    stream_topic: Vec<u32>,
}

impl Layout {
    pub fn new(streams: u64, topics: u64, seed: u64) -> Layout {
        let topics = topics.max(1);
        let mut user_start = vec![0u32];
        let mut n = 0u64;
        let mut u = 0u64;
        while n < streams {
            n = (n + 1 + mix(seed ^ u.wrapping_mul(0x2545_f491_4f6c_dd1d)) % 3).min(streams);
            user_start.push(n as u32);
            u += 1;
        }
        // Zipf(1) over the topics: weight 1/(t+1).
        let mut cdf = Vec::with_capacity(topics as usize);
        let mut acc = 0.0;
        for t in 0..topics {
            acc += 1.0 / (t + 1) as f64;
            cdf.push(acc);
        }
        let stream_topic = (0..streams)
            .map(|i| {
                let x = (mix(seed.rotate_left(17) ^ i) >> 11) as f64 / (1u64 << 53) as f64 * acc;
                (cdf.partition_point(|&c| c <= x) as u64).min(topics - 1) as u32
            })
            .collect();
        Layout {
            streams,
            users: u,
            topics,
            user_start,
            stream_topic,
        }
    }

    pub fn streams_of(&self, user: u64) -> std::ops::Range<u64> {
        self.user_start[user as usize] as u64..self.user_start[user as usize + 1] as u64
    }

    pub fn topic_of(&self, stream: u64) -> u64 {
        self.stream_topic[stream as usize] as u64
    }

    /// (stride, offset) of the sequence numbers of `kind` that stream `i`
    /// of user `user` expects.
    fn class(&self, kind: usize, user: u64, i: u64) -> (u64, u64) {
        match kind {
            0 => (self.users, user),
            1 => (self.topics, self.topic_of(i)),
            _ => (1, 0),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn pct(h: &Histogram<u64>, q: f64) -> Option<u64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q))
}

/// The histogram's counts in buckets of 1/8 of an octave (`floor(8 log2 v)`
/// → count), so that the script can merge intervals and processes and take
/// percentiles of a phase (to within 9%).
pub fn log_buckets(h: &Histogram<u64>) -> serde_json::Map<String, serde_json::Value> {
    let mut b = std::collections::BTreeMap::<u32, u64>::new();
    for v in h.iter_recorded() {
        let x = v.value_iterated_to().max(1) as f64;
        *b.entry((x.log2() * 8.0).floor() as u32).or_default() += v.count_at_value();
    }
    b.into_iter()
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect()
}

fn parse_pods(pods: &[String]) -> Result<Vec<Url>, String> {
    if pods.is_empty() {
        return Err("--pods: at least one pod URL".into());
    }
    if pods.len() > 64 {
        return Err("--pods: at most 64".into());
    }
    pods.iter()
        .map(|p| parse_url(p, "http", 80))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| {
            if v.iter().any(|u| u.tls) {
                Err("--pods: http:// only".into())
            } else {
                Ok(v)
            }
        })
}

/// What the publisher says at its end: where each kind's numbering stopped.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct PubFinal {
    pub streams: u64,
    pub users: u64,
    pub topics: u64,
    /// One past the last sequence number used, per kind.
    pub end: [u64; KINDS],
    /// Sequence numbers never confirmed (sorted), per kind: expected by nobody.
    pub unresolved: [Vec<u64>; KINDS],
}

// ───────────────────────────── subscriber ─────────────────────────────

/// Subscriber configuration.
pub struct SubCfg {
    pub pods: Vec<String>,
    pub streams: u64,
    pub topics: u64,
    pub seed: u64,
    pub part: u64,
    pub parts: u64,
    pub threads: usize,
    pub source_addrs: u64,
    pub duration: Duration,
    pub snapshot: PathBuf,
    pub snapshot_interval: Duration,
    pub pub_final: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    pub max_attempts: u32,
    pub backoff_max: Duration,
    pub lb_out: Duration,
    pub default_retry: Duration,
    pub silent_after: Duration,
    pub json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum S {
    /// Not started yet (initial ramp).
    Idle,
    /// Waiting for its reconnect timer.
    Wait,
    Connecting,
    Writing,
    Head,
    Streaming,
    /// Gave up, or told not to come back (204).
    Gone,
}

/// One browser stream.
struct St {
    sock: Option<TcpStream>,
    idx: u64,
    user: u64,
    topic: u64,
    /// Index of its user among this thread's users.
    luser: u32,
    pod: u16,
    state: S,
    written: u16,
    gen: u32,
    fails: u32,
    open: bool,
    ever: bool,
    retry_ms: u32,
    /// When the stream lost its open connection (0: not down).
    down_ns: u64,
    /// When its current connection last brought bytes (ms, `now_ms`).
    rx_ms: u64,
    /// `RESYNC`s received (the server said: reload, events may be missing).
    resyncs: u16,
    id_len: u8,
    id: [u8; MAX_ID],
    head: Vec<u8>,
    framing: Framing,
    sse: SseParser,
    tr: [Track; KINDS],
}

/// Counters of one thread (cumulative).
#[derive(Default, Clone, Debug, Serialize)]
pub struct Counters {
    pub connects: u64,
    pub opened: u64,
    pub reopened: u64,
    pub refused_503: u64,
    pub refused_429: u64,
    pub refused_other: u64,
    pub no_content_204: u64,
    pub connect_errors: u64,
    pub timeouts: u64,
    pub ended: u64,
    pub gave_up: u64,
    pub resyncs: u64,
    pub unstamped: u64,
    pub misrouted: u64,
    pub fresh: [u64; KINDS],
    pub dup: [u64; KINDS],
    pub reordered: [u64; KINDS],
    pub unclassified: u64,
    pub open: u64,
    pub users_online: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        add!(
            connects,
            opened,
            reopened,
            refused_503,
            refused_429,
            refused_other,
            no_content_204,
            connect_errors,
            timeouts,
            ended,
            gave_up,
            resyncs,
            unstamped,
            misrouted,
            unclassified,
            open,
            users_online
        );
        for k in 0..KINDS {
            self.fresh[k] += o.fresh[k];
            self.dup[k] += o.dup[k];
            self.reordered[k] += o.reordered[k];
        }
    }
}

/// What a thread hands the controller now and then.
struct TSnap {
    c: Counters,
    pod_open: Vec<u64>,
    /// Latency of first deliveries since the controller last took them, µs.
    lat: [Histogram<u64>; KINDS],
    /// Time from losing an open stream to having one again, ms, since last taken.
    back: Histogram<u64>,
    /// Longest a stream of this thread has been down right now, ms.
    down_max_ms: u64,
    down_now: u64,
    /// Open streams that received nothing for `--silent-after`, per pod.
    silent: Vec<u64>,
}

struct TShared {
    snap: Mutex<TSnap>,
    /// Streams not yet complete while draining (u64::MAX: not computed yet).
    incomplete: AtomicU64,
}

/// The controller's word: run, drain (the publisher's final is known), stop.
struct Ctl {
    mode: AtomicU8,
    fin: Mutex<Option<Arc<PubFinal>>>,
}
const RUN: u8 = 0;
const DRAIN: u8 = 1;
const STOP: u8 = 2;

/// Per kind, what a thread found at the end.
#[derive(Default, Clone, Debug, Serialize)]
pub struct KindFinal {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub streams_with_loss: u64,
    /// Lost sequence numbers (publisher numbering), at most a bound.
    pub lost_seqs: Vec<u64>,
    /// Lost events that could not be listed (hole list overflow).
    pub unlisted: u64,
    /// Streams with loss, by the pod index they were on at the end.
    pub loss_by_pod: Vec<u64>,
    /// Of `lost`, on streams that were told `RESYNC` (the server's word that
    /// events may be missing: the application reloads).
    pub lost_resynced: u64,
}

impl KindFinal {
    fn add(&mut self, o: &KindFinal) {
        self.expected += o.expected;
        self.received += o.received;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.streams_with_loss += o.streams_with_loss;
        self.unlisted += o.unlisted;
        self.lost_resynced += o.lost_resynced;
        if self.loss_by_pod.len() < o.loss_by_pod.len() {
            self.loss_by_pod.resize(o.loss_by_pod.len(), 0);
        }
        for (a, b) in self.loss_by_pod.iter_mut().zip(&o.loss_by_pod) {
            *a += b;
        }
        let room = (LOST_SAMPLE * 4).saturating_sub(self.lost_seqs.len());
        self.lost_seqs
            .extend(o.lost_seqs.iter().take(room).copied());
    }
}

/// The loss accounting of one stream for one kind, at the end: what it
/// should have received in `[0, end)` minus `unresolved`, what it did.
/// Returns (expected, received, lost) and calls `lost_seq` for each lost
/// sequence number it can list (while it returns true).
pub fn account(
    tr: &Track,
    stride: u64,
    off: u64,
    end: u64,
    unresolved: &[u64],
    mut lost_seq: impl FnMut(u64) -> bool,
) -> (u64, u64, u64) {
    let phase = Phase {
        active: true,
        first: 0,
        users: if stride > 1 { stride } else { 0 },
        end: Some(end),
    };
    let exp = phase.expect(off, end, unresolved);
    let stop = phase.below(off, end);
    // Distinct arrivals that were not expected: unresolved ones, and any at
    // or past the end (a publish the publisher could not confirm).
    let mut extra = 0;
    for &h in unresolved {
        if h % stride == off && tr.has(h / stride) == Some(true) {
            extra += 1;
        }
    }
    for k in stop..tr.top.min(stop + (1 << 16)) {
        if tr.has(k) == Some(true) {
            extra += 1;
        }
    }
    let received = tr.distinct.saturating_sub(extra).min(exp.count);
    let lost = exp.count - received;
    if lost > 0 {
        tr.missing(stop, |k| {
            let seq = k * stride + off;
            if unresolved.binary_search(&seq).is_ok() {
                return true;
            }
            lost_seq(seq)
        });
    }
    (exp.count, received, lost)
}

struct Th<'a> {
    cfg: &'a SubCfg,
    layout: &'a Layout,
    addrs: Vec<SocketAddr>,
    hosts: Vec<String>,
    sources: Vec<Ipv4Addr>,
    slots: Vec<St>,
    user_open: Vec<u8>,
    timers: BinaryHeap<Reverse<(u64, u32, u32)>>,
    c: Counters,
    pod_open: Vec<u64>,
    /// Per pod: out of this thread's balancer rotation until this time (ms).
    out_until: Vec<u64>,
    lat: [Histogram<u64>; KINDS],
    back: Histogram<u64>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    rng: u64,
    initial_inflight: usize,
}

/// A fixed-rate clock for the snapshot loops.
struct Ticker {
    next: Instant,
    every: Duration,
}

impl Ticker {
    fn new(every: Duration) -> Self {
        Ticker {
            next: Instant::now() + every,
            every,
        }
    }

    /// Sleeps until the next tick.
    fn wait(&mut self) {
        std::thread::sleep(self.next.saturating_duration_since(Instant::now()));
        self.next += self.every;
    }
}

fn now_ms() -> u64 {
    sys::now_ns() / 1_000_000
}

impl Th<'_> {
    fn rand(&mut self) -> u64 {
        self.rng = mix(self.rng);
        self.rng
    }

    fn timer(&mut self, s: usize, at_ms: u64) {
        let g = self.slots[s].gen;
        self.timers.push(Reverse((at_ms, s as u32, g)));
    }

    /// Starts a connect of slot `s` to its pod.
    fn start(&mut self, reg: &Registry, s: usize) {
        let pod = self.slots[s].pod as usize;
        let src = self.sources[(self.slots[s].idx % self.sources.len() as u64) as usize];
        self.c.connects += 1;
        let st = &mut self.slots[s];
        st.gen = st.gen.wrapping_add(1);
        st.written = 0;
        st.head = Vec::new();
        st.framing = Framing::Close;
        st.sse = SseParser::default();
        match sys::connect_from(src, self.addrs[pod]) {
            Ok(mut sock) => {
                if let Err(e) =
                    reg.register(&mut sock, Token(s), Interest::READABLE | Interest::WRITABLE)
                {
                    eprintln!("loadtest: register: {e}");
                    self.failed(s, Fail::Connect);
                    return;
                }
                st.sock = Some(sock);
                st.state = S::Connecting;
                let at = now_ms() + self.cfg.connect_timeout.as_millis() as u64;
                self.timer(s, at);
            }
            Err(_) => self.failed(s, Fail::Connect),
        }
    }

    /// A random pod in rotation (what a load balancer does with a new
    /// connection); any pod when none is.
    fn pick_pod(&mut self) -> u16 {
        let now = now_ms();
        let n = self.addrs.len() as u64;
        let r = self.rand();
        let live = self.out_until.iter().filter(|&&t| t <= now).count() as u64;
        if live == 0 {
            return (r % n) as u16;
        }
        let mut k = r % live;
        for (i, &t) in self.out_until.iter().enumerate() {
            if t <= now {
                if k == 0 {
                    return i as u16;
                }
                k -= 1;
            }
        }
        (r % n) as u16
    }

    /// The balancer takes `pod` out of rotation for `--lb-out`.
    fn take_out(&mut self, pod: u16) {
        let until = now_ms() + self.cfg.lb_out.as_millis() as u64;
        let t = &mut self.out_until[pod as usize];
        *t = (*t).max(until);
    }

    /// An attempt failed before the stream opened.
    fn failed(&mut self, s: usize, why: Fail) {
        if matches!(why, Fail::Connect | Fail::Status(503)) {
            let pod = self.slots[s].pod;
            self.take_out(pod);
        }
        let pod = self.pick_pod();
        let backoff_max = self.cfg.backoff_max.as_millis() as u64;
        let jitter = self.rand();
        let st = &mut self.slots[s];
        st.sock = None;
        st.gen = st.gen.wrapping_add(1);
        st.fails += 1;
        match why {
            Fail::Connect => self.c.connect_errors += 1,
            Fail::Timeout => self.c.timeouts += 1,
            Fail::Status(503) => self.c.refused_503 += 1,
            Fail::Status(429) => self.c.refused_429 += 1,
            Fail::Status(204) => self.c.no_content_204 += 1,
            Fail::Status(_) | Fail::Proto => self.c.refused_other += 1,
        }
        if matches!(why, Fail::Status(204)) || st.fails > self.cfg.max_attempts {
            st.state = S::Gone;
            self.c.gave_up += 1;
            if !st.ever {
                self.initial_inflight -= 1;
            }
            return;
        }
        let delay = match why {
            // A dead pod: the balancer moves on to another one.
            Fail::Connect => (50 * st.fails as u64).min(1000),
            _ => {
                let base = (st.retry_ms as u64).max(100);
                let d = (base << (st.fails - 1).min(10)).min(backoff_max);
                d / 2 + jitter % (d / 2 + 1)
            }
        };
        st.pod = pod;
        st.state = S::Wait;
        self.timer(s, now_ms() + delay);
    }

    /// An open stream ended: reconnect after its `retry:` hint.
    fn ended(&mut self, s: usize) {
        // Here only a drain ends streams: its pod's readiness says 503, which the
        // balancer sees.
        let old = self.slots[s].pod;
        self.take_out(old);
        let pod = self.pick_pod();
        let st = &mut self.slots[s];
        st.sock = None;
        st.gen = st.gen.wrapping_add(1);
        if st.open {
            st.open = false;
            st.down_ns = sys::now_ns();
            self.c.open -= 1;
            self.c.ended += 1;
            self.pod_open[st.pod as usize] -= 1;
            let lu = st.luser as usize;
            self.user_open[lu] -= 1;
            if self.user_open[lu] == 0 {
                self.c.users_online -= 1;
            }
        }
        st.pod = pod;
        st.state = S::Wait;
        let at = now_ms() + st.retry_ms as u64;
        self.timer(s, at);
    }

    fn opened(&mut self, s: usize) {
        let st = &mut self.slots[s];
        st.open = true;
        st.fails = 0;
        self.c.opened += 1;
        self.c.open += 1;
        self.pod_open[st.pod as usize] += 1;
        let lu = st.luser as usize;
        self.user_open[lu] += 1;
        if self.user_open[lu] == 1 {
            self.c.users_online += 1;
        }
        if st.down_ns > 0 {
            self.c.reopened += 1;
            let ms = (sys::now_ns() - st.down_ns) / 1_000_000;
            let _ = self.back.record(ms.max(1));
            st.down_ns = 0;
        }
        if !st.ever {
            st.ever = true;
            self.initial_inflight -= 1;
        }
    }

    fn on_timer(&mut self, reg: &Registry, s: usize) {
        match self.slots[s].state {
            S::Wait => self.start(reg, s),
            S::Connecting | S::Writing | S::Head => self.failed(s, Fail::Timeout),
            _ => {}
        }
    }

    /// Advances slot `s` as far as readiness allows.
    /// `hup`: the event also said the peer closed (read until EOF, not just
    /// until a short read: the FIN came with the data, no later edge will).
    fn drive(&mut self, reg: &Registry, s: usize, hup: bool) {
        loop {
            let st = &mut self.slots[s];
            let Some(sock) = st.sock.as_mut() else {
                return;
            };
            match st.state {
                S::Connecting => {
                    if !matches!(sock.take_error(), Ok(None)) {
                        return self.failed(s, Fail::Connect);
                    }
                    match sock.peer_addr() {
                        Ok(_) => st.state = S::Writing,
                        Err(e) if e.kind() == ErrorKind::NotConnected => return,
                        Err(_) => return self.failed(s, Fail::Connect),
                    }
                }
                S::Writing => {
                    request(
                        &mut self.wbuf,
                        &self.hosts[st.pod as usize],
                        st.user,
                        st.idx,
                        st.topic,
                        &st.id[..st.id_len as usize],
                    );
                    while (st.written as usize) < self.wbuf.len() {
                        match sock.write(&self.wbuf[st.written as usize..]) {
                            Ok(0) => return self.failed(s, Fail::Connect),
                            Ok(n) => st.written += n as u16,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => return self.failed(s, Fail::Connect),
                        }
                    }
                    let _ = reg.reregister(sock, Token(s), Interest::READABLE);
                    st.state = S::Head;
                }
                S::Head | S::Streaming => return self.read_all(s, hup),
                S::Idle | S::Wait | S::Gone => return,
            }
        }
    }

    fn read_all(&mut self, s: usize, hup: bool) {
        loop {
            let st = &mut self.slots[s];
            let Some(sock) = st.sock.as_mut() else {
                return;
            };
            let n = match sock.read(&mut self.rbuf) {
                Ok(0) => return self.closed(s, Fail::Proto),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.closed(s, Fail::Connect),
            };
            let now = sys::now_ns();
            self.slots[s].rx_ms = now / 1_000_000;
            match self.on_bytes(s, n, now) {
                Ok(()) => {}
                Err(f) => return self.closed(s, f),
            }
            // A short read emptied the receive queue: a later arrival raises
            // a new edge (unless the FIN already came: read on to the EOF).
            if n < self.rbuf.len() && !hup {
                return;
            }
        }
    }

    /// The connection closed (or failed): before the head it is a failed
    /// attempt, after it an ended stream.
    fn closed(&mut self, s: usize, why: Fail) {
        if self.slots[s].state == S::Streaming {
            self.ended(s)
        } else {
            self.failed(s, why)
        }
    }

    fn on_bytes(&mut self, s: usize, n: usize, now: u64) -> Result<(), Fail> {
        let Th {
            slots,
            rbuf,
            c,
            lat,
            layout,
            ..
        } = self;
        let st = &mut slots[s];
        let data = &rbuf[..n];
        if st.state == S::Streaming {
            return on_body(st, data, now, c, lat, layout);
        }
        let mut held = std::mem::take(&mut st.head);
        match sse::feed_head(&mut held, data, MAX_HEAD) {
            Err(_) => Err(Fail::Proto),
            Ok(None) => {
                st.head = held;
                Ok(())
            }
            Ok(Some((h, body))) => {
                if !(200..300).contains(&h.status) || h.status == 204 {
                    return Err(Fail::Status(h.status));
                }
                st.framing = h.framing;
                st.state = S::Streaming;
                let body = body.to_vec();
                self.opened(s);
                let Th {
                    slots,
                    c,
                    lat,
                    layout,
                    ..
                } = self;
                on_body(&mut slots[s], &body, now, c, lat, layout)
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Fail {
    Connect,
    Timeout,
    Status(u16),
    Proto,
}

fn on_body(
    st: &mut St,
    data: &[u8],
    now: u64,
    c: &mut Counters,
    lat: &mut [Histogram<u64>; KINDS],
    layout: &Layout,
) -> Result<(), Fail> {
    let St {
        framing,
        sse,
        tr,
        id,
        id_len,
        user,
        topic,
        resyncs,
        ..
    } = st;
    let (user, topic) = (*user, *topic);
    let mut feed = |bytes: &[u8]| -> Result<(), Fail> {
        sse.feed(bytes, &mut |ev: &Event| {
            on_event(
                ev, user, topic, now, tr, id, id_len, resyncs, c, lat, layout,
            )
        })
        .map_err(|_| Fail::Proto)
    };
    let r = match framing {
        Framing::Close => feed(data),
        Framing::Length(rem) => {
            let k = (*rem).min(data.len() as u64) as usize;
            *rem -= k as u64;
            feed(&data[..k])?;
            if *rem == 0 {
                Err(Fail::Proto)
            } else {
                Ok(())
            }
        }
        Framing::Chunked(dec) => {
            let mut bad = false;
            let done = dec
                .feed(data, &mut |chunk: &[u8]| {
                    if !bad {
                        bad = feed(chunk).is_err();
                    }
                })
                .map_err(|_| Fail::Proto)?;
            if bad || done {
                Err(Fail::Proto)
            } else {
                Ok(())
            }
        }
    };
    if let Some(r) = sse.retry {
        st.retry_ms = r.min(600_000);
    }
    r
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn on_event(
    ev: &Event,
    user: u64,
    topic: u64,
    now: u64,
    tr: &mut [Track; KINDS],
    id: &mut [u8; MAX_ID],
    id_len: &mut u8,
    resyncs: &mut u16,
    c: &mut Counters,
    lat: &mut [Histogram<u64>; KINDS],
    layout: &Layout,
) {
    if !ev.id.is_empty() && ev.id.len() <= MAX_ID {
        id[..ev.id.len()].copy_from_slice(ev.id);
        *id_len = ev.id.len() as u8;
    }
    let kind = match ev.event {
        b"u" => 0,
        b"t" => 1,
        b"b" => 2,
        b"RESYNC" => {
            c.resyncs += 1;
            *resyncs = resyncs.saturating_add(1);
            return;
        }
        _ => return,
    };
    let Some(stamp) = payload::decode(ev.data) else {
        c.unstamped += 1;
        return;
    };
    let (stride, off) = match kind {
        0 => (layout.users, user),
        1 => (layout.topics, topic),
        _ => (1, 0),
    };
    if stamp.seq % stride != off {
        c.misrouted += 1;
        return;
    }
    match tr[kind].record(stamp.seq / stride) {
        m @ (Mark::Fresh | Mark::Reordered) => {
            c.fresh[kind] += 1;
            if m == Mark::Reordered {
                c.reordered[kind] += 1;
            }
            let us = now.saturating_sub(stamp.send_ns) / 1000;
            let _ = lat[kind].record(us.max(1));
        }
        Mark::Duplicate => c.dup[kind] += 1,
        Mark::Unclassified => {
            c.dup[kind] += 1;
            c.unclassified += 1;
        }
    }
}

/// The subscribe request of a stream (with `Last-Event-ID` once it has one).
fn request(out: &mut Vec<u8>, host: &str, user: u64, idx: u64, topic: u64, last_id: &[u8]) {
    out.clear();
    out.extend_from_slice(b"GET /api/user/sse/connect?userId=r");
    push_u64(out, user);
    out.extend_from_slice(b"&connectionId=c");
    push_u64(out, idx);
    out.extend_from_slice(b"&topics=t");
    push_u64(out, topic);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n");
    if !last_id.is_empty() {
        out.extend_from_slice(b"Last-Event-ID: ");
        out.extend_from_slice(last_id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn new_snap(pods: usize) -> TSnap {
    TSnap {
        c: Counters::default(),
        pod_open: vec![0; pods],
        lat: [new_hist(), new_hist(), new_hist()],
        back: new_hist(),
        down_max_ms: 0,
        down_now: 0,
        silent: vec![0; pods],
    }
}

/// One event-loop thread: its streams (slot `s` = token `s`).
fn run_thread(
    cfg: &SubCfg,
    layout: &Layout,
    urls: &[Url],
    mine: Vec<(u64, u64)>,
    shared: &TShared,
    ctl: &Ctl,
    seed: u64,
) -> io::Result<[KindFinal; KINDS]> {
    let mut poll = Poll::new()?;
    let npods = urls.len();
    let sources = (1..=cfg.source_addrs.clamp(1, 254) as u8)
        .map(|x| Ipv4Addr::new(127, 0, 0, x))
        .collect();
    let mut slots = Vec::with_capacity(mine.len());
    let mut luser = 0u32;
    let mut last_user = u64::MAX;
    for &(user, i) in &mine {
        if user != last_user && last_user != u64::MAX {
            luser += 1;
        }
        last_user = user;
        slots.push(St {
            sock: None,
            idx: i,
            user,
            topic: layout.topic_of(i),
            luser,
            pod: (i % npods as u64) as u16,
            state: S::Idle,
            written: 0,
            gen: 0,
            fails: 0,
            open: false,
            ever: false,
            retry_ms: cfg.default_retry.as_millis() as u32,
            down_ns: 0,
            rx_ms: 0,
            resyncs: 0,
            id_len: 0,
            id: [0; MAX_ID],
            head: Vec::new(),
            framing: Framing::Close,
            sse: SseParser::default(),
            tr: [Track::begin(0), Track::begin(0), Track::begin(0)],
        });
    }
    let nusers = if mine.is_empty() {
        0
    } else {
        luser as usize + 1
    };
    let mut th = Th {
        cfg,
        layout,
        addrs: urls.iter().map(|u| u.addr).collect(),
        hosts: urls.iter().map(|u| u.host.clone()).collect(),
        sources,
        slots,
        user_open: vec![0; nusers],
        timers: BinaryHeap::new(),
        c: Counters::default(),
        pod_open: vec![0; npods],
        out_until: vec![0; npods],
        lat: [new_hist(), new_hist(), new_hist()],
        back: new_hist(),
        rbuf: vec![0; READ_BUF],
        wbuf: Vec::with_capacity(512),
        rng: seed,
        initial_inflight: 0,
    };
    let mut events = Events::with_capacity(4096);
    let mut next_initial = 0usize;
    let mut last_pub = Instant::now();
    let mut last_drain_check = Instant::now();
    loop {
        let mode = ctl.mode.load(Ordering::Relaxed);
        if mode == STOP {
            break;
        }
        // The initial ramp.
        while next_initial < th.slots.len() && th.initial_inflight < cfg.connect_concurrency {
            th.initial_inflight += 1;
            th.start(poll.registry(), next_initial);
            next_initial += 1;
        }
        let now = now_ms();
        let wait = match th.timers.peek() {
            Some(Reverse((at, _, _))) => at.saturating_sub(now).min(50),
            None => 50,
        };
        match poll.poll(&mut events, Some(Duration::from_millis(wait))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            let s = ev.token().0;
            if s < th.slots.len() {
                let hup = ev.is_read_closed() || ev.is_error();
                th.drive(poll.registry(), s, hup);
            }
        }
        let now = now_ms();
        while let Some(&Reverse((at, s, g))) = th.timers.peek() {
            if at > now {
                break;
            }
            th.timers.pop();
            if th.slots[s as usize].gen == g {
                th.on_timer(poll.registry(), s as usize);
            }
        }
        if last_pub.elapsed() >= Duration::from_millis(250) {
            last_pub = Instant::now();
            let now_ns = sys::now_ns();
            let (mut down_now, mut down_max) = (0u64, 0u64);
            let mut silent = vec![0u64; npods];
            let silent_before =
                (now_ns / 1_000_000).saturating_sub(cfg.silent_after.as_millis() as u64);
            for st in &th.slots {
                if st.open && st.rx_ms < silent_before {
                    silent[st.pod as usize] += 1;
                }
                if st.down_ns > 0 {
                    down_now += 1;
                    down_max = down_max.max((now_ns - st.down_ns) / 1_000_000);
                }
            }
            let mut g = shared.snap.lock().expect("snapshot lock");
            g.c = th.c.clone();
            g.pod_open.clone_from(&th.pod_open);
            for k in 0..KINDS {
                let _ = g.lat[k].add(&th.lat[k]);
                th.lat[k].reset();
            }
            let _ = g.back.add(&th.back);
            th.back.reset();
            g.down_now = down_now;
            g.silent = silent;
            g.down_max_ms = down_max;
        }
        if mode == DRAIN && last_drain_check.elapsed() >= Duration::from_millis(200) {
            last_drain_check = Instant::now();
            if let Some(fin) = ctl.fin.lock().expect("ctl lock").clone() {
                let n = th
                    .slots
                    .iter()
                    .filter(|st| st.state != S::Gone && !complete(st, layout, &fin))
                    .count();
                shared.incomplete.store(n as u64, Ordering::Relaxed);
            }
        }
    }
    // The end: the accounting, if the publisher's final is known.
    let mut out: [KindFinal; KINDS] = Default::default();
    if let Some(fin) = ctl.fin.lock().expect("ctl lock").clone() {
        for st in &th.slots {
            for (k, kf) in out.iter_mut().enumerate() {
                let (stride, off) = layout.class(k, st.user, st.idx);
                let mut listed = 0u64;
                let (e, r, l) = account(
                    &st.tr[k],
                    stride,
                    off,
                    fin.end[k],
                    &fin.unresolved[k],
                    |seq| {
                        listed += 1;
                        if kf.lost_seqs.len() < LOST_SAMPLE {
                            kf.lost_seqs.push(seq);
                        }
                        true
                    },
                );
                kf.expected += e;
                kf.received += r;
                kf.lost += l;
                kf.unlisted += l.saturating_sub(listed);
                if l > 0 {
                    kf.streams_with_loss += 1;
                    if st.resyncs > 0 {
                        kf.lost_resynced += l;
                    }
                    kf.loss_by_pod.resize(npods, 0);
                    kf.loss_by_pod[st.pod as usize] += 1;
                }
            }
        }
    }
    for (k, kf) in out.iter_mut().enumerate() {
        kf.duplicates = th.c.dup[k];
    }
    Ok(out)
}

/// Every expected event of every kind arrived (at least the last one).
fn complete(st: &St, layout: &Layout, fin: &PubFinal) -> bool {
    (0..KINDS).all(|k| {
        let (stride, off) = layout.class(k, st.user, st.idx);
        let phase = Phase {
            active: true,
            first: 0,
            users: if stride > 1 { stride } else { 0 },
            end: Some(fin.end[k]),
        };
        st.tr[k].top >= phase.expect(off, fin.end[k], &fin.unresolved[k]).last_top
    })
}

fn read_final(path: &Path) -> Option<PubFinal> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn append_line(f: &mut std::fs::File, v: &serde_json::Value) {
    let mut line = serde_json::to_vec(v).expect("json");
    line.push(b'\n');
    if let Err(e) = f.write_all(&line) {
        eprintln!("loadtest: snapshot: {e}");
    }
}

/// `loadtest rehearse`.
pub fn subscribe(cfg: SubCfg) -> Result<(), String> {
    let urls = parse_pods(&cfg.pods)?;
    if cfg.parts == 0 || cfg.part >= cfg.parts {
        return Err("--part must be below --parts".into());
    }
    if cfg.threads == 0 || cfg.threads > 64 {
        return Err("--threads: 1 to 64".into());
    }
    let layout = Layout::new(cfg.streams, cfg.topics, cfg.seed);
    // This process's users, split over the threads by user.
    let mut per_thread: Vec<Vec<(u64, u64)>> = vec![Vec::new(); cfg.threads];
    let mut mine = 0u64;
    let mut my_users = 0u64;
    for u in (cfg.part..layout.users).step_by(cfg.parts as usize) {
        my_users += 1;
        let t = (my_users as usize) % cfg.threads;
        for i in layout.streams_of(u) {
            per_thread[t].push((u, i));
            mine += 1;
        }
    }
    match sys::raise_nofile() {
        Ok(l) if l < mine + 64 => eprintln!(
            "loadtest: WARNING: RLIMIT_NOFILE {l} is below the {mine} streams of this part: use more --parts"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("loadtest: could not raise RLIMIT_NOFILE: {e}"),
    }
    let mut snapf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.snapshot)
        .map_err(|e| format!("{}: {e}", cfg.snapshot.display()))?;
    eprintln!(
        "loadtest rehearse: part {}/{}: {} streams of {} users (layout: {} streams, {} users, {} topics)",
        cfg.part, cfg.parts, mine, my_users, layout.streams, layout.users, layout.topics
    );
    let npods = urls.len();
    let ctl = Ctl {
        mode: AtomicU8::new(RUN),
        fin: Mutex::new(None),
    };
    let shared: Vec<TShared> = (0..cfg.threads)
        .map(|_| TShared {
            snap: Mutex::new(new_snap(npods)),
            incomplete: AtomicU64::new(u64::MAX),
        })
        .collect();
    let t0 = Instant::now();
    let mut lat_total = [new_hist(), new_hist(), new_hist()];
    let mut back_total = new_hist();
    let mut totals = Counters::default();
    let mut drain_started: Option<Instant> = None;
    let mut drained = false;
    let finals = std::thread::scope(|sc| {
        let handles: Vec<_> = per_thread
            .into_iter()
            .enumerate()
            .map(|(t, m)| {
                let (cfg, layout, urls, sh, ctl) = (&cfg, &layout, &urls, &shared[t], &ctl);
                let seed = mix(cfg.seed ^ (cfg.part << 20) ^ t as u64 ^ sys::now_ns());
                std::thread::Builder::new()
                    .name(format!("rehearse-{t}"))
                    .spawn_scoped(sc, move || run_thread(cfg, layout, urls, m, sh, ctl, seed))
                    .expect("thread")
            })
            .collect();
        let mut tick = Ticker::new(cfg.snapshot_interval);
        loop {
            tick.wait();
            // Merge and write a snapshot.
            let mut c = Counters::default();
            let mut pod_open = vec![0u64; npods];
            let mut lat = [new_hist(), new_hist(), new_hist()];
            let mut back = new_hist();
            let (mut down_now, mut down_max) = (0, 0);
            let mut silent = vec![0u64; npods];
            for sh in &shared {
                let mut g = sh.snap.lock().expect("snapshot lock");
                c.add(&g.c);
                for (p, n) in g.pod_open.iter().enumerate() {
                    pod_open[p] += n;
                }
                for (l, gl) in lat.iter_mut().zip(g.lat.iter_mut()) {
                    let _ = l.add(&*gl);
                    gl.reset();
                }
                let _ = back.add(&g.back);
                g.back.reset();
                down_now += g.down_now;
                for (p, n) in g.silent.iter().enumerate() {
                    silent[p] += n;
                }
                down_max = down_max.max(g.down_max_ms);
            }
            for k in 0..KINDS {
                let _ = lat_total[k].add(&lat[k]);
            }
            let _ = back_total.add(&back);
            let latj: serde_json::Map<String, serde_json::Value> = (0..KINDS)
                .map(|k| {
                    (
                        KIND_NAMES[k].to_string(),
                        json!({"n": lat[k].len(), "p50_us": pct(&lat[k], 0.5),
                               "p99_us": pct(&lat[k], 0.99), "max_us": pct(&lat[k], 1.0),
                               "log_buckets": log_buckets(&lat[k])}),
                    )
                })
                .collect();
            let mode = ctl.mode.load(Ordering::Relaxed);
            let mode_name = ["run", "drain", "stop"][mode as usize];
            append_line(
                &mut snapf,
                &json!({
                    "role": "sub", "part": cfg.part, "t_ms": unix_ms(),
                    "elapsed_s": t0.elapsed().as_secs_f64(),
                    "streams": mine, "users": my_users,
                    "mode": mode_name,
                    "counters": c, "pod_open": pod_open,
                    "latency": latj,
                    "back_ms": {"n": back.len(), "p50": pct(&back, 0.5), "p99": pct(&back, 0.99), "max": pct(&back, 1.0)},
                    "down_now": down_now, "down_max_ms": down_max, "silent": silent,
                }),
            );
            totals = c;
            // Phase changes.
            if mode == RUN {
                if let Some(fin) = cfg.pub_final.as_deref().and_then(read_final) {
                    if fin.users != layout.users
                        || fin.topics != layout.topics
                        || fin.streams != layout.streams
                    {
                        eprintln!(
                            "loadtest: the publisher's layout ({} streams, {} users, {} topics) is not ours",
                            fin.streams, fin.users, fin.topics
                        );
                    } else {
                        *ctl.fin.lock().expect("ctl lock") = Some(Arc::new(fin));
                        ctl.mode.store(DRAIN, Ordering::Relaxed);
                        drain_started = Some(Instant::now());
                    }
                }
                if ctl.mode.load(Ordering::Relaxed) == RUN && t0.elapsed() >= cfg.duration {
                    eprintln!(
                        "loadtest: --duration over without the publisher's final: no loss figures"
                    );
                    ctl.mode.store(STOP, Ordering::Relaxed);
                }
            } else if mode == DRAIN {
                let inc: Vec<u64> = shared
                    .iter()
                    .map(|s| s.incomplete.load(Ordering::Relaxed))
                    .collect();
                let all = inc.iter().all(|&n| n != u64::MAX) && inc.iter().sum::<u64>() == 0;
                let over = drain_started.is_some_and(|d| d.elapsed() >= cfg.drain_timeout)
                    || t0.elapsed() >= cfg.duration + cfg.drain_timeout;
                if all || over {
                    drained = all;
                    ctl.mode.store(STOP, Ordering::Relaxed);
                }
            } else {
                break;
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Vec<_>>()
    });
    let mut kinds: [KindFinal; KINDS] = Default::default();
    for f in finals {
        let f = f.map_err(|e| format!("event loop: {e}"))?;
        for k in 0..KINDS {
            kinds[k].add(&f[k]);
        }
    }
    let known = ctl.fin.lock().expect("ctl lock").is_some();
    let kj: serde_json::Map<String, serde_json::Value> = (0..KINDS)
        .map(|k| {
            let mut v = serde_json::to_value(&kinds[k]).expect("json");
            let h = &lat_total[k];
            v["latency_us"] =
                json!({"n": h.len(), "p50": pct(h, 0.5), "p99": pct(h, 0.99), "max": pct(h, 1.0)});
            if !known {
                v["lost"] = serde_json::Value::Null;
            }
            (KIND_NAMES[k].to_string(), v)
        })
        .collect();
    let report = json!({
        "role": "sub", "part": cfg.part, "parts": cfg.parts, "streams": mine, "users": my_users,
        "layout": {"streams": layout.streams, "users": layout.users, "topics": layout.topics},
        "accounted": known, "drained": drained,
        "counters": totals, "kinds": kj,
        "back_ms": {"n": back_total.len(), "p50": pct(&back_total, 0.5), "p99": pct(&back_total, 0.99), "max": pct(&back_total, 1.0)},
    });
    eprintln!(
        "loadtest rehearse part {}: open {}/{}, user events lost {} dup {}, topic lost {} dup {}, broadcast lost {} dup {}, drained {}",
        cfg.part,
        totals.open,
        mine,
        kinds[0].lost,
        kinds[0].duplicates,
        kinds[1].lost,
        kinds[1].duplicates,
        kinds[2].lost,
        kinds[2].duplicates,
        drained
    );
    if let Some(p) = &cfg.json {
        std::fs::write(
            p,
            serde_json::to_string_pretty(&report).expect("json") + "\n",
        )
        .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

// ───────────────────────────── publisher ─────────────────────────────

/// Publisher configuration.
pub struct PubCfg {
    pub pods: Vec<String>,
    pub streams: u64,
    pub topics: u64,
    pub seed: u64,
    pub rates: [f64; KINDS],
    pub duration: Duration,
    pub payload_bytes: usize,
    pub snapshot: PathBuf,
    pub snapshot_interval: Duration,
    pub final_path: PathBuf,
    pub pub_timeout: Duration,
    pub retry_for: Duration,
    pub run_id: String,
}

#[derive(Default)]
struct PubShared {
    /// Sequence numbers used (resolved or given up).
    next: AtomicU64,
    ok: AtomicU64,
    buffered: AtomicU64,
    retries: AtomicU64,
    st_503: AtomicU64,
    st_other: AtomicU64,
    io_errors: AtomicU64,
    late: AtomicU64,
    unresolved: AtomicU64,
    lat: Mutex<Option<Histogram<u64>>>,
}

/// Writes the publish request of `seq` of `kind` into `out`.
#[allow(clippy::too_many_arguments)]
fn pub_request(
    out: &mut Vec<u8>,
    body: &mut Vec<u8>,
    host: &str,
    run: &str,
    kind: usize,
    seq: u64,
    payload: &[u8],
    layout: &Layout,
) {
    body.clear();
    body.extend_from_slice(br#"{"event":""#);
    body.extend_from_slice(EVENT_NAMES[kind].as_bytes());
    body.extend_from_slice(br#"","data":""#);
    body.extend_from_slice(payload);
    body.extend_from_slice(br#"","target":"#);
    match kind {
        0 => {
            body.extend_from_slice(br#"{"users":["r"#);
            push_u64(body, seq % layout.users);
            body.extend_from_slice(br#""]}}"#);
        }
        1 => {
            body.extend_from_slice(br#"{"topics":["t"#);
            push_u64(body, seq % layout.topics);
            body.extend_from_slice(br#""]}}"#);
        }
        _ => body.extend_from_slice(br#""all"}"#),
    }
    out.clear();
    out.extend_from_slice(b"POST /api/broadcast HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nIdempotency-Key: ");
    out.extend_from_slice(run.as_bytes());
    out.push(b'-');
    out.extend_from_slice(EVENT_NAMES[kind].as_bytes());
    out.push(b'-');
    push_u64(out, seq);
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_u64(out, body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

fn pub_thread(
    cfg: &PubCfg,
    layout: &Layout,
    urls: &[Url],
    kind: usize,
    sh: &PubShared,
    t0: Instant,
) -> (u64, Vec<u64>) {
    let rate = cfg.rates[kind];
    let mut clients: Vec<HttpClient> = urls
        .iter()
        .map(|u| HttpClient::for_url(u, cfg.pub_timeout))
        .collect();
    let npods = urls.len();
    let mut unresolved = Vec::new();
    let (mut req, mut body, mut pl) = (Vec::new(), Vec::new(), Vec::new());
    let mut hist = new_hist();
    let mut last_flush = Instant::now();
    let end = t0 + cfg.duration;
    let hard_end = end + cfg.retry_for;
    let mut seq = 0u64;
    if rate <= 0.0 {
        return (0, unresolved);
    }
    loop {
        let due = t0 + Duration::from_secs_f64(seq as f64 / rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_millis(50) {
            sh.late.fetch_add(1, Ordering::Relaxed);
        }
        let send_ns = sys::now_ns();
        payload::encode(&mut pl, send_ns, seq, cfg.payload_bytes);
        let mut pod = (seq % npods as u64) as usize;
        let mut attempt = 0u32;
        loop {
            pub_request(
                &mut req,
                &mut body,
                &urls[pod].host,
                &cfg.run_id,
                kind,
                seq,
                &pl,
                layout,
            );
            let t = Instant::now();
            match clients[pod].send(&req) {
                Ok(r) if (200..300).contains(&r.status) => {
                    sh.ok.fetch_add(1, Ordering::Relaxed);
                    if memchr::memmem::find(&r.body, b"\"buffered\":true").is_some() {
                        sh.buffered.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                    break;
                }
                Ok(r) if r.status == 503 => {
                    sh.st_503.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) => {
                    sh.st_other.fetch_add(1, Ordering::Relaxed);
                    if attempt == 0 {
                        eprintln!(
                            "loadtest rehearse-pub: {} {seq}: status {}: {}",
                            KIND_NAMES[kind],
                            r.status,
                            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                        );
                    }
                }
                Err(_) => {
                    sh.io_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            attempt += 1;
            if Instant::now() >= hard_end {
                unresolved.push(seq);
                sh.unresolved.fetch_add(1, Ordering::Relaxed);
                break;
            }
            sh.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis((25u64 << attempt.min(5)).min(1000)));
            pod = (pod + 1) % npods;
        }
        seq += 1;
        sh.next.store(seq, Ordering::Relaxed);
        if last_flush.elapsed() >= Duration::from_millis(250) {
            last_flush = Instant::now();
            let mut g = sh.lat.lock().expect("lat lock");
            let _ = g.get_or_insert_with(new_hist).add(&hist);
            hist.reset();
        }
    }
    let mut g = sh.lat.lock().expect("lat lock");
    let _ = g.get_or_insert_with(new_hist).add(&hist);
    (seq, unresolved)
}

/// `loadtest rehearse-pub`.
pub fn publish(cfg: PubCfg) -> Result<(), String> {
    let urls = parse_pods(&cfg.pods)?;
    let layout = Layout::new(cfg.streams, cfg.topics, cfg.seed);
    if layout.users == 0 {
        return Err("--streams must be at least 1".into());
    }
    if cfg.run_id.is_empty()
        || cfg.run_id.len() > 64
        || !cfg
            .run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
    {
        return Err("--run-id: 1-64 bytes of [A-Za-z0-9._:@-]".into());
    }
    let mut snapf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.snapshot)
        .map_err(|e| format!("{}: {e}", cfg.snapshot.display()))?;
    let shared: [PubShared; KINDS] = Default::default();
    let t0 = Instant::now();
    let done = AtomicU8::new(0);
    let results = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..KINDS)
            .map(|k| {
                let (cfg, layout, urls, sh, done) = (&cfg, &layout, &urls, &shared[k], &done);
                std::thread::Builder::new()
                    .name(format!("pub-{}", KIND_NAMES[k]))
                    .spawn_scoped(sc, move || {
                        let r = pub_thread(cfg, layout, urls, k, sh, t0);
                        done.fetch_add(1, Ordering::Relaxed);
                        r
                    })
                    .expect("thread")
            })
            .collect();
        let mut tick = Ticker::new(cfg.snapshot_interval);
        loop {
            tick.wait();
            let fin = done.load(Ordering::Relaxed) as usize == KINDS;
            let kinds: serde_json::Map<String, serde_json::Value> = (0..KINDS)
                .map(|k| {
                    let s = &shared[k];
                    let h = s.lat.lock().expect("lat lock").take();
                    let h = h.unwrap_or_else(new_hist);
                    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                    (
                        KIND_NAMES[k].to_string(),
                        json!({"next": l(&s.next), "ok": l(&s.ok), "buffered": l(&s.buffered),
                               "retries": l(&s.retries), "status_503": l(&s.st_503),
                               "status_other": l(&s.st_other), "io_errors": l(&s.io_errors),
                               "late": l(&s.late), "unresolved": l(&s.unresolved),
                               "req_p50_us": pct(&h, 0.5), "req_p99_us": pct(&h, 0.99),
                               "req_max_us": pct(&h, 1.0)}),
                    )
                })
                .collect();
            append_line(
                &mut snapf,
                &json!({"role": "pub", "t_ms": unix_ms(), "elapsed_s": t0.elapsed().as_secs_f64(),
                        "kinds": kinds}),
            );
            if fin {
                break;
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Vec<_>>()
    });
    let mut fin = PubFinal {
        streams: layout.streams,
        users: layout.users,
        topics: layout.topics,
        ..Default::default()
    };
    for (k, (end, unresolved)) in results.into_iter().enumerate() {
        fin.end[k] = end;
        fin.unresolved[k] = unresolved;
    }
    let tmp = cfg.final_path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string(&fin).expect("json") + "\n")
        .and_then(|_| std::fs::rename(&tmp, &cfg.final_path))
        .map_err(|e| format!("{}: {e}", cfg.final_path.display()))?;
    eprintln!(
        "loadtest rehearse-pub: published user {} topic {} broadcast {} (unresolved {} {} {})",
        fin.end[0],
        fin.end[1],
        fin.end[2],
        fin.unresolved[0].len(),
        fin.unresolved[1].len(),
        fin.unresolved[2].len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_deterministic_and_shaped() {
        let a = Layout::new(10_000, 50, 7);
        let b = Layout::new(10_000, 50, 7);
        assert_eq!(a.users, b.users);
        assert_eq!(a.stream_topic, b.stream_topic);
        // Users have 1 to 3 streams, all streams are someone's.
        let mut n = 0;
        for u in 0..a.users {
            let r = a.streams_of(u);
            assert!((1..=3).contains(&(r.end - r.start)) || u == a.users - 1);
            n += r.end - r.start;
        }
        assert_eq!(n, 10_000);
        assert!(
            a.users > 10_000 / 3 && a.users < 10_000 * 2 / 3,
            "{}",
            a.users
        );
        // Topics of very different sizes: the first far larger than the last.
        let mut sizes = vec![0u64; 50];
        for i in 0..10_000 {
            sizes[a.topic_of(i) as usize] += 1;
        }
        assert!(sizes[0] > 10 * sizes[49].max(1), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<u64>(), 10_000);
    }

    fn feed(t: &mut Track, ks: &[u64]) -> u64 {
        ks.iter()
            .filter(|&&k| matches!(t.record(k), Mark::Duplicate | Mark::Unclassified))
            .count() as u64
    }

    #[test]
    fn accounting_across_reconnects() {
        // User 3 of 10: expects seqs 3, 13, 23, … (class indices 0, 1, 2, …).
        // First connection gets 0..40, the stream ends, the resume replays
        // 38..60 (two already seen: duplicates), then 70..100 after a gap.
        let mut t = Track::begin(0);
        let mut ks: Vec<u64> = (0..40).collect();
        ks.extend(38..60);
        ks.extend(70..100);
        assert_eq!(feed(&mut t, &ks), 2);
        let mut lost = Vec::new();
        let (exp, rec, l) = account(&t, 10, 3, 1000, &[], |s| {
            lost.push(s);
            true
        });
        assert_eq!((exp, rec, l), (100, 90, 10));
        assert_eq!(lost, (60..70).map(|k| k * 10 + 3).collect::<Vec<_>>());
    }

    #[test]
    fn accounting_tail_and_unresolved() {
        // Broadcasts 0..50 published, 20 unresolved (never confirmed), 49 the
        // last; the stream got 0..45 (20 included), and 47.
        let mut t = Track::begin(0);
        let mut ks: Vec<u64> = (0..45).collect();
        ks.push(47);
        feed(&mut t, &ks);
        let mut lost = Vec::new();
        let (exp, rec, l) = account(&t, 1, 0, 50, &[20], |s| {
            lost.push(s);
            true
        });
        assert_eq!((exp, rec, l), (49, 45, 4));
        assert_eq!(lost, vec![45, 46, 48, 49]);
        // An unresolved one that did not arrive is no loss either.
        let mut t = Track::begin(0);
        feed(&mut t, &(0..20).chain(21..50).collect::<Vec<_>>());
        assert_eq!(account(&t, 1, 0, 50, &[20], |_| true), (49, 49, 0));
        // One past the end (a publish the publisher could not confirm, at
        // the top) is not counted as received.
        let mut t = Track::begin(0);
        feed(&mut t, &(0..51).collect::<Vec<_>>());
        assert_eq!(account(&t, 1, 0, 50, &[], |_| true), (50, 50, 0));
    }

    #[test]
    fn accounting_topic_stride_and_nothing_received() {
        // Topic 2 of 7, 100 topic events published: seqs 2, 9, …, 93, 100 excluded.
        let t = Track::begin(0);
        let (exp, rec, l) = account(&t, 7, 2, 100, &[], |_| true);
        assert_eq!(exp, (100 - 2u64).div_ceil(7));
        assert_eq!((rec, l), (0, exp));
    }

    #[test]
    fn buckets() {
        let mut h = new_hist();
        for v in [1u64, 1000, 1000, 1_000_000] {
            h.record(v).unwrap();
        }
        let b = log_buckets(&h);
        assert_eq!(b["0"], 1);
        assert_eq!(b["79"], 2); // 8 × log2(1000) = 79.7
        assert_eq!(b["159"], 1); // 8 × log2(10^6) = 159.5
    }

    #[test]
    fn requests() {
        let mut out = Vec::new();
        request(&mut out, "127.0.0.1:9", 5, 12, 3, b"");
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(s.starts_with(
            "GET /api/user/sse/connect?userId=r5&connectionId=c12&topics=t3 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"
        ));
        assert!(!s.contains("Last-Event-ID"));
        request(&mut out, "h", 5, 12, 3, b"17.42");
        assert!(String::from_utf8(out.clone())
            .unwrap()
            .contains("\r\nLast-Event-ID: 17.42\r\n\r\n"));
        let l = Layout::new(100, 5, 1);
        let (mut req, mut body) = (Vec::new(), Vec::new());
        pub_request(
            &mut req,
            &mut body,
            "h:1",
            "run1",
            0,
            l.users + 4,
            b"T1S2P",
            &l,
        );
        let s = String::from_utf8(req.clone()).unwrap();
        assert!(s.contains("Idempotency-Key: run1-u-"));
        let b: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(b["target"]["users"][0], "r4");
        assert_eq!(b["event"], "u");
        pub_request(&mut req, &mut body, "h:1", "r", 1, 7, b"x", &l);
        let b: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(b["target"]["topics"][0], "t2");
        pub_request(&mut req, &mut body, "h:1", "r", 2, 7, b"x", &l);
        let b: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(b["target"], "all");
    }
}
