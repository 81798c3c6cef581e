//! The pod's reader: it reads the two streams Redis routes to this pod — its
//! inbox (events for its users and topics, registration markers, close requests,
//! its own delivery probes) and the broadcast stream (`all` events, read by
//! every pod) — and merges them into the log order before the broker sees them.
//!
//! ## The merge
//! Both carry log ids: a broadcast entry's stream id is its log id; an inbox
//! event carries its log id and `after`, the last broadcast id when it was
//! published (so no broadcast lies between the two). Hence:
//! * inbox entry before broadcast `b` iff `b > after`;
//! * an inbox entry whose `after` has not been read waits for the broadcast
//!   stream (read it without blocking);
//! * a broadcast entry goes first only when the inbox is known to hold nothing
//!   older. An `XREAD` executed at once is one snapshot of both streams (a
//!   stream it does not show had nothing new). One that blocked is served when a
//!   command adds to one of them; Redis before 7.2 then shows only the first key
//!   that command touched, with what that command added. So every script keeps
//!   one rule: **it writes a pod's inbox entries before any broadcast entry**.
//!   Then a reply of broadcasts alone means the command added no inbox entry for
//!   this pod, and a reply of inbox entries alone holds back the ones whose
//!   `after` broadcasts have not been read yet. Either way every reply can be
//!   taken as a snapshot, with no second read; only an inbox cut at the read
//!   count needs a non-blocking read of the inbox before later broadcasts go.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::Value;
use tracing::{info, warn};

use super::log::{self, Inbox};
use super::{Cluster, Source};
use crate::conn::CloseReason;
use crate::event::Event;
use crate::metrics as m;
use crate::Shared;

/// How long one blocking `XREAD` waits for new entries.
pub(super) const READ_BLOCK: Duration = Duration::from_millis(1000);
/// Entries read per stream per `XREAD`.
const READ_COUNT: u64 = 512;

/// What the merge does with what it takes, in log order.
pub(super) trait Sink {
    fn event(&mut self, ev: Arc<Event>);
    fn sync(&mut self, upto: u64);
    fn close(&mut self, req: log::CloseRequest);
    fn probe(&mut self, n: u64);
}

/// What the merge needs before it can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// Nothing held back: wait for new entries.
    Idle,
    /// An inbox entry waits for the broadcasts up to this id.
    Broadcasts(u64),
    /// Broadcasts wait for proof that the inbox holds nothing older.
    InboxCheck,
}

/// The two queues and what is known of them. See the module doc.
#[derive(Debug, Default)]
pub(super) struct Merge {
    inbox: VecDeque<Inbox>,
    all: VecDeque<(u64, Option<Arc<Event>>)>,
    /// The last broadcast id handled.
    all_done: u64,
    /// The last broadcast id received.
    all_received: u64,
    /// Broadcasts up to this id may go without looking at the inbox.
    all_safe: u64,
}

impl Merge {
    /// Start after broadcast id `all`.
    pub fn new(all: u64) -> Merge {
        Merge {
            all_done: all,
            all_received: all,
            all_safe: all,
            ..Merge::default()
        }
    }

    pub fn push_inbox(&mut self, entry: Inbox) {
        self.inbox.push_back(entry);
    }

    pub fn push_all(&mut self, id: u64, ev: Option<Arc<Event>>) {
        if id > self.all_received {
            self.all_received = id;
            self.all.push_back((id, ev));
        }
    }

    /// The inbox was seen holding nothing beyond what was received, at a moment
    /// when every broadcast received so far existed.
    pub fn inbox_clear(&mut self) {
        self.all_safe = self.all_received;
    }

    /// Broadcasts up to `after` cannot be read (trimmed, or lost with Redis's
    /// data): stop waiting for them.
    pub fn skip_broadcasts(&mut self, after: u64) {
        self.all_done = self.all_done.max(after);
        self.all_received = self.all_received.max(after);
        self.all_safe = self.all_safe.max(self.all_done);
    }

    /// Held entries.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.inbox.len() + self.all.len()
    }

    /// Hand everything that can go, in log order, to `sink`.
    pub fn run(&mut self, sink: &mut impl Sink) -> Need {
        loop {
            if self.inbox.front().is_some_and(|e| e.after().is_none()) {
                match self.inbox.pop_front() {
                    Some(Inbox::Close(req)) => sink.close(req),
                    Some(Inbox::Probe(n)) => sink.probe(n),
                    _ => {}
                }
                continue;
            }
            let take_all = match (self.inbox.front().and_then(Inbox::after), self.all.front()) {
                (Some(after), Some(&(id, _))) => id <= after,
                (Some(after), None) if self.all_done >= after => false,
                (Some(after), None) => return Need::Broadcasts(after),
                (None, Some(&(id, _))) if id <= self.all_safe => true,
                (None, Some(_)) => return Need::InboxCheck,
                (None, None) => return Need::Idle,
            };
            if take_all {
                let Some((id, ev)) = self.all.pop_front() else {
                    continue;
                };
                self.all_done = id;
                if let Some(ev) = ev {
                    sink.event(ev);
                }
            } else {
                match self.inbox.pop_front() {
                    Some(Inbox::Event {
                        event: Some(ev), ..
                    }) => sink.event(ev),
                    Some(Inbox::Sync { upto, .. }) => sink.sync(upto),
                    _ => {}
                }
            }
        }
    }
}

/// Where this pod reads one source from.
pub(super) struct Positions {
    pub inbox: String,
    /// The broadcast stream (source 0 only).
    pub all: String,
}

/// Find where to read `src` from (the ends of this pod's inbox and of the
/// broadcast stream). The broadcasts' source also starts the broker's history
/// at the log's last id: this pod answers resumes from Redis, and live events
/// from here on.
pub(super) async fn bootstrap(shared: &Shared, c: &Cluster, src: &Source) -> Option<Positions> {
    let mut args = c.args(src, 2);
    args.push(c.pod_value());
    args.push(Value::from(crate::clock::unix_ms() as i64));
    let v = c.script(src, "boot", &c.scripts.boot, args).await?;
    let s = |i: usize| {
        v.get(i)
            .and_then(|x| x.as_str().map(|s| s.to_string()))
            .unwrap_or_else(|| "0-0".to_string())
    };
    let (inbox, all, last) = (s(1), s(2), s(3));
    // The users refused for now, as `(user, until)` pairs.
    if let Some(Value::Array(bl)) = v.get(4) {
        for pair in bl.chunks(2) {
            if let [u, until] = pair {
                let until = until
                    .as_str()
                    .and_then(|t| t.parse::<f64>().ok())
                    .unwrap_or(0.0) as u64;
                if let Some(u) = u.as_str() {
                    shared.broker.block(&u, until);
                }
            }
        }
    }
    if src.index == 0 {
        // With partitions the pod's order keys are its own: the history starts
        // at 0; without, they are the log's ids.
        let start = if c.partitioned() {
            0
        } else {
            log::sse_id(&last).unwrap_or(0)
        };
        shared.broker.join_log(start);
    }
    src.inbox_read
        .store(log::sse_id(&inbox).unwrap_or(0), Ordering::Release);
    info!(source = src.index, log = %last, "joined the cluster's event log");
    Some(Positions { inbox, all })
}

/// Delivers what the merge hands out: events to the broker in batches (flushed
/// before a marker moves the pod's read position), closes, probes.
struct Deliver<'a> {
    shared: &'a Shared,
    c: &'a Cluster,
    src: &'a Source,
    events: Vec<Arc<Event>>,
}

impl Deliver<'_> {
    fn flush(&mut self) {
        if !self.events.is_empty() {
            self.shared
                .broker
                .ingest(self.src.index, self.events.drain(..));
        }
    }
}

impl Sink for Deliver<'_> {
    fn event(&mut self, ev: Arc<Event>) {
        self.events.push(ev);
    }

    fn sync(&mut self, upto: u64) {
        self.flush();
        let seq = self.shared.broker.marker(self.src.index, upto);
        self.src.passed(upto, seq);
    }

    fn close(&mut self, req: log::CloseRequest) {
        let broker = &self.shared.broker;
        if let Some(loc) = broker.disconnect_exact(&req.user, &req.conn_id, req.serial) {
            let reason = if req.replaced {
                CloseReason::Replaced
            } else {
                CloseReason::Disconnected
            };
            broker.close_remote(loc, reason, None);
        }
    }

    fn probe(&mut self, n: u64) {
        self.c.probe_returned(self.src, n);
    }
}

/// One `XREAD` of `keys` from `ids` on `src`'s reader: `None` when it failed
/// (counted; the caller backs off), else the entries per key, in the order of
/// `keys`.
async fn xread(
    c: &Cluster,
    src: &Source,
    keys: &[&str],
    ids: &[&str],
    block: Option<Duration>,
) -> Option<Vec<Option<Vec<Value>>>> {
    let started = Instant::now();
    let r: Result<Value, _> = src
        .reader
        .xread(
            Some(READ_COUNT),
            block.map(|b| b.as_millis() as u64),
            keys.to_vec(),
            ids.to_vec(),
        )
        .await;
    match r {
        Ok(v) => {
            c.answered("read");
            m::redis_commands("read", 1);
            let mut out = vec![None; keys.len()];
            for stream in v.into_array() {
                let mut parts = stream.into_array().into_iter();
                let (Some(key), Some(entries)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let key = key.as_str().map(|k| k.to_string()).unwrap_or_default();
                if let Some(i) = keys.iter().position(|k| **k == key) {
                    out[i] = Some(entries.into_array());
                }
            }
            Some(out)
        }
        Err(e) => {
            m::redis_roundtrip("read", started.elapsed());
            c.failed("read", &e);
            // Whatever the cause, this source delivers nothing until a read works.
            c.set_up(false);
            None
        }
    }
}

/// Read this pod's inbox of source `index` (and, for the broadcasts, the
/// broadcast stream); hand events to the broker in log order. See the module
/// doc.
pub(super) async fn read_loop(
    shared: Arc<Shared>,
    c: Arc<Cluster>,
    index: usize,
    mut pos: Option<Positions>,
) {
    let src = &c.sources[index];
    let mut backoff = Duration::from_millis(100);
    let mut merge = Merge::default();
    let mut need = Need::Idle;
    let mut started = false;
    // Per stream: within each, a publishing pod's events come in its order.
    let (mut seen_inbox, mut seen_all) = (log::Seen::default(), log::Seen::default());
    // A repeat comes at most an idempotency window late (the publishing pod
    // gives up on a job after that).
    let keep_ms = c
        .set
        .idempotency_window
        .max(Duration::from_secs(600))
        .as_millis() as u64;
    loop {
        let Some(p) = pos.as_mut() else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            pos = bootstrap(&shared, &c, src).await;
            continue;
        };
        if !started {
            merge = Merge::new(log::sse_id(&p.all).unwrap_or(0));
            started = true;
        }
        if src.reset_requested.swap(false, Ordering::AcqRel) {
            reset(&c, src, p, &mut merge).await;
        }
        let inbox_key = src.inbox_key.as_str();
        // What to read: waiting, both streams (one snapshot, by the scripts' rule:
        // see the module doc); otherwise the one the merge waits for, at once.
        let all_key = src.all_key.as_deref();
        let (inbox, all, block) = match need {
            Need::Idle => (true, all_key.is_some(), Some(READ_BLOCK)),
            Need::InboxCheck => (true, false, None),
            Need::Broadcasts(_) => (false, all_key.is_some(), None),
        };
        let mut keys = Vec::with_capacity(2);
        let mut ids = Vec::with_capacity(2);
        if inbox {
            keys.push(inbox_key);
            ids.push(p.inbox.as_str());
        }
        if let (true, Some(k)) = (all, all_key) {
            keys.push(k);
            ids.push(p.all.as_str());
        }
        let mut got = match keys.is_empty() {
            true => Vec::new(),
            false => match xread(&c, src, &keys, &ids, block).await {
                Some(r) => r,
                None => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        }
        .into_iter();
        let got_inbox = if inbox { got.next().flatten() } else { None };
        let got_all = if all { got.next().flatten() } else { None };
        if let Need::Broadcasts(after) = need {
            if got_all.as_ref().is_none_or(|a| a.is_empty()) {
                // What the inbox entry waits for is not in the stream.
                warn!(
                    after,
                    "broadcasts missing from the stream; going on without them"
                );
                m::dropped("broadcast_gap", 1);
                merge.skip_broadcasts(after);
            }
        }
        backoff = Duration::from_millis(100);
        let inbox_n = got_inbox.as_ref().map_or(0, Vec::len);
        // The salvageable events read (see `consumed`).
        let mut read_ids: Vec<String> = Vec::new();
        let now_ms = crate::clock::unix_ms();
        let mut repeats = 0;
        let mut repeat = |seen: &mut log::Seen, e: &Value| {
            let r = log::token(e)
                .is_some_and(|(pod, seq, i)| seen.repeat(pod, (seq, i), now_ms, keep_ms));
            repeats += u64::from(r);
            r
        };
        for e in got_inbox.iter().flatten() {
            if let Some((sid, mut entry)) = log::inbox(e) {
                if let Inbox::Event { event, .. } = &mut entry {
                    if repeat(&mut seen_inbox, e) {
                        *event = None;
                    }
                }
                // Only what the cleanup could salvage needs its reading told.
                if matches!(
                    entry,
                    Inbox::Event {
                        salvageable: true,
                        ..
                    }
                ) {
                    read_ids.push(sid.clone());
                }
                p.inbox = sid;
                merge.push_inbox(entry);
            }
        }
        // An id beyond the SSE range (a clock far ahead) reads as the largest.
        let read = log::sse_id(&p.inbox)
            .or_else(|| log::sid_order(&p.inbox).map(|_| u64::MAX))
            .unwrap_or(0);
        src.inbox_read.store(read, Ordering::Release);
        for e in got_all.iter().flatten() {
            if let Some((user, until)) = log::block(e) {
                // A user ended with reconnect=false, on some pod: here too.
                shared.end_user(&user, until);
            }
            if let Some((sid, ev)) = log::event(e) {
                if let Some(id) = log::sse_id(&sid) {
                    let ev = if ev.is_some() && repeat(&mut seen_all, e) {
                        None
                    } else {
                        ev
                    };
                    merge.push_all(id, ev);
                }
                p.all = sid;
            }
        }
        if repeats > 0 {
            warn!(
                repeats,
                "events published again after Redis lost their record: dropped, not delivered twice"
            );
            m::dropped("repeat", repeats);
        }
        if inbox && (inbox_n as u64) < READ_COUNT {
            merge.inbox_clear();
        }
        if !read_ids.is_empty() {
            // Sent before the events go out (on the reader's connection): a
            // pod killed once a client has an event has told Redis it read it.
            // Killed in between, it loses what it read (microseconds), rather
            // than have it delivered twice.
            consumed(&c, src, read_ids);
        }
        let mut sink = Deliver {
            shared: &shared,
            c: &c,
            src,
            events: Vec::new(),
        };
        need = merge.run(&mut sink);
        sink.flush();
    }
}

/// The salvageable events at `ids` in this pod's inbox are read: delete them,
/// so that if this pod dies its inbox holds those it had not read (the cleanup
/// gives them to their users elsewhere: `salvage` in [`super::scripts`]). By
/// id, not by position: a trim by position could remove entries of an inbox
/// recreated behind the reader (a failover) that it has not read. Sent on the
/// reader's connection without waiting for the answer.
fn consumed(c: &Arc<Cluster>, src: &Source, ids: Vec<String>) {
    let reader = src.reader.clone();
    let key = src.inbox_key.clone();
    let c = c.clone();
    tokio::task::spawn_local(async move {
        let r: Result<Value, _> = reader.xdel(key, ids).await;
        match r {
            Ok(_) => m::redis_commands("consumed", 1),
            Err(e) => c.failed("consumed", &e),
        }
    });
}

/// The probe did not come back: reconnect the reader, and start a stream over
/// when it is behind the position read (it was recreated with lower ids, as
/// after a failover to a replica that lacked its tail). Duplicates that a
/// re-read brings are dropped by position in the broker.
async fn reset(c: &Cluster, src: &Source, p: &mut Positions, merge: &mut Merge) {
    warn!(
        source = src.index,
        "delivery probe lost: reconnecting this pod's reader"
    );
    let _ = src.reader.force_reconnection().await;
    let mut args = c.args(src, 2);
    args.push(c.pod_value());
    args.push(Value::from(crate::clock::unix_ms() as i64));
    let Some(v) = c.script(src, "boot", &c.scripts.boot, args).await else {
        return;
    };
    let last = |i: usize| {
        v.get(i)
            .and_then(|x| x.as_str())
            .and_then(|s| log::sid_order(&s))
    };
    let behind = |pos: &str, last: Option<(u64, u64)>| {
        last.unwrap_or((0, 0)) < log::sid_order(pos).unwrap_or((0, 0))
    };
    if behind(&p.inbox, last(1)) {
        info!("this pod's inbox was recreated; reading it from its start");
        p.inbox = "0-0".into();
    }
    if src.all_key.is_some() && behind(&p.all, last(2)) {
        info!("the broadcast stream was recreated; reading it from its start");
        p.all = "0-0".into();
        *merge = Merge::new(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Target;

    #[derive(Default)]
    struct Seen {
        out: Vec<String>,
    }

    impl Sink for Seen {
        fn event(&mut self, ev: Arc<Event>) {
            self.out.push(format!("e{}", ev.id));
        }
        fn sync(&mut self, upto: u64) {
            self.out.push(format!("s{upto}"));
        }
        fn close(&mut self, req: log::CloseRequest) {
            self.out.push(format!("c{}", req.serial));
        }
        fn probe(&mut self, n: u64) {
            self.out.push(format!("p{n}"));
        }
    }

    fn ev(id: u64) -> Option<Arc<Event>> {
        Some(Arc::new(Event::new(
            id,
            Target::All,
            bytes::Bytes::new(),
            0,
        )))
    }

    fn user(id: u64, after: u64) -> Inbox {
        Inbox::Event {
            id,
            after,
            event: ev(id),
            salvageable: false,
        }
    }

    #[test]
    fn both_streams_merge_in_log_order() {
        let mut m = Merge::new(0);
        m.push_all(2, ev(2));
        m.push_all(5, ev(5));
        m.push_inbox(user(1, 0));
        m.push_inbox(user(3, 2));
        m.push_inbox(user(4, 2));
        m.push_inbox(user(6, 5));
        m.inbox_clear();
        let mut s = Seen::default();
        assert_eq!(m.run(&mut s), Need::Idle);
        assert_eq!(s.out, ["e1", "e2", "e3", "e4", "e5", "e6"]);
    }

    #[test]
    fn an_inbox_entry_waits_for_the_broadcasts_before_it() {
        let mut m = Merge::new(0);
        m.push_inbox(user(3, 2));
        let mut s = Seen::default();
        assert_eq!(m.run(&mut s), Need::Broadcasts(2));
        assert!(s.out.is_empty());
        m.push_all(2, ev(2));
        m.push_all(4, ev(4));
        assert_eq!(
            m.run(&mut s),
            Need::InboxCheck,
            "4 may follow an unread inbox entry"
        );
        assert_eq!(s.out, ["e2", "e3"]);
        m.inbox_clear();
        assert_eq!(m.run(&mut s), Need::Idle);
        assert_eq!(s.out, ["e2", "e3", "e4"]);
    }

    #[test]
    fn broadcasts_alone_wait_for_an_inbox_check() {
        let mut m = Merge::new(0);
        m.push_all(7, ev(7));
        let mut s = Seen::default();
        assert_eq!(m.run(&mut s), Need::InboxCheck);
        // The check finds an older inbox event: it goes first.
        m.push_inbox(user(6, 0));
        m.inbox_clear();
        assert_eq!(m.run(&mut s), Need::Idle);
        assert_eq!(s.out, ["e6", "e7"]);
    }

    #[test]
    fn markers_closes_and_probes_pass_in_inbox_order() {
        let mut m = Merge::new(0);
        m.push_inbox(Inbox::Probe(1));
        m.push_inbox(user(2, 1));
        m.push_inbox(Inbox::Sync { upto: 3, after: 1 });
        m.push_inbox(Inbox::Close(log::CloseRequest {
            user: "u".into(),
            conn_id: "c".into(),
            serial: 9,
            replaced: false,
        }));
        m.push_all(1, ev(1));
        m.inbox_clear();
        let mut s = Seen::default();
        assert_eq!(m.run(&mut s), Need::Idle);
        assert_eq!(s.out, ["p1", "e1", "e2", "s3", "c9"]);
    }

    #[test]
    fn missing_broadcasts_are_skipped_not_waited_for_forever() {
        let mut m = Merge::new(0);
        m.push_inbox(user(5, 4));
        let mut s = Seen::default();
        assert_eq!(m.run(&mut s), Need::Broadcasts(4));
        m.skip_broadcasts(4);
        assert_eq!(m.run(&mut s), Need::Idle);
        assert_eq!(s.out, ["e5"]);
        assert_eq!(m.held(), 0);
    }
}
