//! Resume history and pending events. Pure: time is passed in as monotonic
//! nanoseconds ([`crate::clock::now_ns`]).
//!
//! * [`History`] keeps the last events (bounded by count, age and bytes) so a
//!   reconnect with `Last-Event-ID` gets exactly what it missed, or `RESYNC` when
//!   the resume point is older than what is kept or is not an id of this process.
//!   Presence transitions are kept apart, under the same bounds: a storm of them
//!   (every user of a restarted pod coming back) must not push the events other
//!   streams resume from out of the history.
//! * [`Pending`] keeps user-targeted events for users with no open connection,
//!   each with its TTL, at most `max_pending` per user (oldest dropped first) and a
//!   global bound, so no publisher can grow memory without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::conn::QueuedFrame;
use crate::event::{Event, Target};

/// Bounds of the history window.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_events: usize,
    pub max_age_ns: u64,
    pub max_bytes: usize,
}

/// The answer to a resume request.
#[derive(Debug)]
pub enum Resume {
    /// Exactly these events, in order (possibly none).
    Replay(Vec<Arc<Event>>),
    /// The resume point is unknown or older than the history: send `RESYNC`.
    Resync,
}

/// One ring of the history: events oldest first, and up to where some may be
/// gone.
#[derive(Debug)]
struct Ring {
    entries: VecDeque<Arc<Event>>,
    /// Events with ids at or below this may have been dropped (trimmed, or from
    /// before this history started): resuming from below it is a `RESYNC`.
    trimmed: u64,
}

impl Ring {
    fn new(trimmed: u64) -> Ring {
        Ring {
            entries: VecDeque::new(),
            trimmed,
        }
    }

    /// Drop the oldest event; returns its frame's length.
    fn pop(&mut self) -> usize {
        match self.entries.pop_front() {
            Some(front) => {
                self.trimmed = front.id;
                front.frame.len()
            }
            None => 0,
        }
    }

    /// The events with ids above `after`.
    fn after(&self, after: u64) -> std::collections::vec_deque::Iter<'_, Arc<Event>> {
        let skip = self.entries.partition_point(|e| e.id <= after);
        self.entries.range(skip..)
    }

    fn front_id(&self) -> Option<u64> {
        self.entries.front().map(|e| e.id)
    }
}

/// The last published events: presence transitions in a ring of their own,
/// everything else in the other, each bounded by `max_events` and the age, the
/// two together by the bytes.
#[derive(Debug)]
pub struct History {
    events: Ring,
    presence: Ring,
    bytes: usize,
    limits: HistoryLimits,
    /// Ids at or below `base` are not ids of this history (a previous run's).
    base: u64,
    /// The last id recorded (`base` before the first event).
    last: u64,
}

/// Whether `ev` is a presence transition (published to the presence topic
/// alone, which no client may publish to).
fn is_presence(ev: &Event) -> bool {
    matches!(&ev.target, Target::Topics(t) if t.len() == 1 && &*t[0] == crate::presence::TOPIC)
}

impl History {
    /// A history whose ids are `base + 1, base + 2, ...` (one node).
    pub fn new(base: u64, limits: HistoryLimits) -> Self {
        History {
            events: Ring::new(base),
            presence: Ring::new(base),
            bytes: 0,
            limits,
            base,
            last: base,
        }
    }

    /// A history that joins a sequence already under way (a cluster's event log):
    /// every id up to `trimmed` may be gone; ids only increase, with gaps.
    pub fn joined(trimmed: u64, limits: HistoryLimits) -> Self {
        History {
            events: Ring::new(trimmed),
            presence: Ring::new(trimmed),
            bytes: 0,
            limits,
            base: 0,
            last: trimmed,
        }
    }

    /// The last id issued.
    pub fn last_id(&self) -> u64 {
        self.last
    }

    /// Events held, both rings together.
    pub fn len(&self) -> usize {
        self.events.entries.len() + self.presence.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record a newly published event (ids must increase).
    pub fn push(&mut self, ev: Arc<Event>, now_ns: u64) {
        debug_assert!(ev.id > self.last);
        self.last = ev.id;
        self.bytes += ev.frame.len();
        let ring = if is_presence(&ev) {
            &mut self.presence
        } else {
            &mut self.events
        };
        ring.entries.push_back(ev);
        self.trim(now_ns);
        // A full history lets its oldest event go on the next push, and then
        // reads the age of the one after it (the front now was just read):
        // that one was last touched thousands of publishes ago, so fetch it
        // now rather than wait for the miss then.
        if let Some(next) = self.events.entries.get(1) {
            // Its reference counts sit just before it.
            let counts = 2 * std::mem::size_of::<usize>();
            let inner = Arc::as_ptr(next).cast::<u8>().wrapping_sub(counts);
            crate::hint::prefetch(inner, counts + std::mem::size_of::<Event>());
        }
    }

    /// Drop what is beyond the count, bytes or age bounds.
    pub fn trim(&mut self, now_ns: u64) {
        let limits = self.limits;
        for ring in [&mut self.events, &mut self.presence] {
            while let Some(front) = ring.entries.front() {
                let too_old = now_ns.saturating_sub(front.published_ns) > limits.max_age_ns;
                if ring.entries.len() > limits.max_events || too_old {
                    self.bytes -= ring.pop();
                } else {
                    break;
                }
            }
        }
        // Over the bytes: the older of the two fronts goes first.
        while self.bytes > limits.max_bytes {
            let ring = match (self.events.front_id(), self.presence.front_id()) {
                (Some(e), Some(p)) if p < e => &mut self.presence,
                (Some(_), _) => &mut self.events,
                (None, Some(_)) => &mut self.presence,
                (None, None) => break,
            };
            self.bytes -= ring.pop();
        }
    }

    /// The events after `last_event_id` that `wants` selects, or `Resync`.
    /// `presence`: the stream receives presence transitions (a presence
    /// stream), so what was trimmed of them counts too.
    pub fn resume(
        &mut self,
        last_event_id: &str,
        now_ns: u64,
        presence: bool,
        wants: impl Fn(&Event) -> bool,
    ) -> Resume {
        self.trim(now_ns);
        let Ok(after) = last_event_id.trim().parse::<u64>() else {
            return Resume::Resync;
        };
        if after <= self.base
            || after > self.last
            || after < self.events.trimmed
            || (presence && after < self.presence.trimmed)
        {
            return Resume::Resync;
        }
        Resume::Replay(self.after(after, wants))
    }

    /// The retained events with ids above `after` that `wants` selects, in id
    /// order (the two rings merged).
    pub fn after(&self, after: u64, wants: impl Fn(&Event) -> bool) -> Vec<Arc<Event>> {
        let (mut a, mut b) = (
            self.events.after(after).filter(|e| wants(e)).peekable(),
            self.presence.after(after).filter(|e| wants(e)).peekable(),
        );
        let mut out = Vec::new();
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if y.id < x.id => b.next(),
                (Some(_), _) => a.next(),
                (None, _) => b.next(),
            };
            match next {
                Some(e) => out.push(Arc::clone(e)),
                None => return out,
            }
        }
    }
}

/// Bounds of the pending store.
#[derive(Debug, Clone, Copy)]
pub struct PendingLimits {
    /// Per user; the oldest is dropped first.
    pub per_user: usize,
    /// Across all users; a new event is refused when full.
    pub total: usize,
}

#[derive(Debug)]
struct PendingEntry {
    frame: Bytes,
    published_ns: u64,
    expires_ns: u64,
}

/// What [`Pending::push`] had to drop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PendingDrops {
    /// Oldest entries of that user dropped to make room.
    pub overflow: u64,
    /// The new entry itself, refused because the global bound was reached.
    pub refused: u64,
}

/// Events waiting for users with no open connection.
#[derive(Debug)]
pub struct Pending {
    users: HashMap<Box<str>, VecDeque<PendingEntry>>,
    total: usize,
    limits: PendingLimits,
}

impl Pending {
    pub fn new(limits: PendingLimits) -> Self {
        Pending {
            users: HashMap::new(),
            total: 0,
            limits,
        }
    }

    /// Events held, all users together.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn push(&mut self, user: &str, ev: &Event, ttl_ns: u64) -> PendingDrops {
        let mut drops = PendingDrops::default();
        if self.limits.per_user == 0 {
            drops.refused = 1;
            return drops;
        }
        let queue_len = self.users.get(user).map_or(0, VecDeque::len);
        if self.total >= self.limits.total && queue_len < self.limits.per_user {
            drops.refused = 1;
            return drops;
        }
        let queue = match self.users.get_mut(user) {
            Some(q) => q,
            None => self.users.entry(user.into()).or_default(),
        };
        while queue.len() >= self.limits.per_user {
            queue.pop_front();
            self.total -= 1;
            drops.overflow += 1;
        }
        queue.push_back(PendingEntry {
            frame: ev.frame.clone(),
            published_ns: ev.published_ns,
            expires_ns: ev.published_ns.saturating_add(ttl_ns),
        });
        self.total += 1;
        drops
    }

    /// Remove and return `user`'s unexpired events, oldest first.
    pub fn take(&mut self, user: &str, now_ns: u64) -> Vec<QueuedFrame> {
        let Some(queue) = self.users.remove(user) else {
            return Vec::new();
        };
        self.total -= queue.len();
        queue
            .into_iter()
            .filter(|e| e.expires_ns > now_ns)
            .map(|e| QueuedFrame {
                bytes: e.frame,
                published_ns: e.published_ns,
            })
            .collect()
    }

    /// Drop every expired event; returns how many.
    pub fn sweep(&mut self, now_ns: u64) -> u64 {
        let mut expired = 0;
        self.users.retain(|_, q| {
            let before = q.len();
            q.retain(|e| e.expires_ns > now_ns);
            expired += (before - q.len()) as u64;
            !q.is_empty()
        });
        self.total -= expired as usize;
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Target;

    fn ev(id: u64, at: u64) -> Arc<Event> {
        Arc::new(Event::new(
            id,
            Target::All,
            Bytes::from_static(b"0123456789"),
            at,
        ))
    }

    fn ids(r: Resume) -> Option<Vec<u64>> {
        match r {
            Resume::Replay(v) => Some(v.iter().map(|e| e.id).collect()),
            Resume::Resync => None,
        }
    }

    const BIG: HistoryLimits = HistoryLimits {
        max_events: 3,
        max_age_ns: 1_000,
        max_bytes: 1 << 20,
    };

    #[test]
    fn resume_replays_exactly_the_gap() {
        let mut h = History::new(100, BIG);
        for id in 101..=103 {
            h.push(ev(id, 10), 10);
        }
        assert_eq!(
            ids(h.resume("101", 10, false, |_| true)),
            Some(vec![102, 103])
        );
        assert_eq!(ids(h.resume("103", 10, false, |_| true)), Some(vec![]));
        assert_eq!(
            ids(h.resume("100", 10, false, |_| true)),
            None,
            "not an id of this process"
        );
        assert_eq!(
            ids(h.resume("104", 10, false, |_| true)),
            None,
            "from the future"
        );
        assert_eq!(ids(h.resume("garbage", 10, false, |_| true)), None);
    }

    #[test]
    fn resume_older_than_history_resyncs() {
        let mut h = History::new(100, BIG);
        for id in 101..=105 {
            h.push(ev(id, 10), 10);
        }
        assert_eq!(h.len(), 3);
        assert_eq!(
            ids(h.resume("102", 10, false, |_| true)),
            Some(vec![103, 104, 105])
        );
        assert_eq!(ids(h.resume("101", 10, false, |_| true)), None);
    }

    #[test]
    fn age_and_bytes_bound_the_history() {
        let mut h = History::new(
            0,
            HistoryLimits {
                max_events: 100,
                max_age_ns: 50,
                max_bytes: 25,
            },
        );
        h.push(ev(1, 0), 0);
        h.push(ev(2, 0), 0);
        h.push(ev(3, 0), 0);
        assert_eq!(h.len(), 2, "bytes bound");
        h.trim(100);
        assert!(h.is_empty(), "age bound");
        assert_eq!(
            ids(h.resume("3", 100, false, |_| true)),
            Some(vec![]),
            "up to date, nothing missed"
        );
        assert_eq!(ids(h.resume("2", 100, false, |_| true)), None);
    }

    fn presence_ev(id: u64, at: u64) -> Arc<Event> {
        let t = vec![crate::presence::TOPIC.into()].into_boxed_slice();
        Arc::new(Event::new(
            id,
            Target::Topics(t),
            Bytes::from_static(b"0123456789"),
            at,
        ))
    }

    #[test]
    fn a_storm_of_presence_transitions_keeps_the_other_events() {
        let mut h = History::new(0, BIG);
        h.push(ev(1, 10), 10);
        h.push(ev(2, 10), 10);
        // Ten transitions, past max_events (3): only older transitions go.
        for id in 3..=12 {
            h.push(presence_ev(id, 10), 10);
        }
        h.push(ev(13, 10), 10);
        assert_eq!(h.len(), 6, "3 events and 3 transitions");
        let not_presence = |e: &Event| !is_presence(e);
        assert_eq!(
            ids(h.resume("1", 10, false, not_presence)),
            Some(vec![2, 13]),
            "an ordinary stream resumes exactly across the storm"
        );
        assert_eq!(
            ids(h.resume("1", 10, true, |_| true)),
            None,
            "a presence stream from before the retained transitions cannot"
        );
        assert_eq!(
            ids(h.resume("9", 10, true, |_| true)),
            Some(vec![10, 11, 12, 13]),
            "the two rings merged in id order"
        );
    }

    #[test]
    fn the_bytes_bound_drops_the_older_front_of_the_two_rings() {
        let mut h = History::new(
            0,
            HistoryLimits {
                max_events: 100,
                max_age_ns: 1_000,
                max_bytes: 30,
            },
        );
        h.push(presence_ev(1, 0), 0);
        h.push(ev(2, 0), 0);
        h.push(presence_ev(3, 0), 0);
        h.push(ev(4, 0), 0);
        assert_eq!(h.len(), 3);
        assert_eq!(ids(h.resume("1", 0, true, |_| true)), Some(vec![2, 3, 4]));
        h.push(presence_ev(5, 0), 0);
        assert_eq!(ids(h.resume("2", 0, true, |_| true)), Some(vec![3, 4, 5]));
        assert_eq!(ids(h.resume("1", 0, false, |_| true)), None);
    }

    #[test]
    fn joined_history_resumes_across_gaps() {
        let mut h = History::joined(50, BIG);
        h.push(ev(60, 10), 10);
        h.push(ev(75, 10), 10);
        h.push(ev(90, 10), 10);
        assert_eq!(
            ids(h.resume("50", 10, false, |_| true)),
            Some(vec![60, 75, 90])
        );
        assert_eq!(ids(h.resume("60", 10, false, |_| true)), Some(vec![75, 90]));
        assert_eq!(ids(h.resume("70", 10, false, |_| true)), Some(vec![75, 90]));
        assert_eq!(
            ids(h.resume("49", 10, false, |_| true)),
            None,
            "may have lost some"
        );
        assert_eq!(
            ids(h.resume("91", 10, false, |_| true)),
            None,
            "from the future"
        );
        h.push(ev(95, 10), 10);
        assert_eq!(
            ids(h.resume("60", 10, false, |_| true)),
            Some(vec![75, 90, 95]),
            "60 itself trimmed, nothing after it lost"
        );
        assert_eq!(
            ids(h.resume("59", 10, false, |_| true)),
            None,
            "60 was lost"
        );
        assert_eq!(ids(h.resume("75", 10, false, |_| true)), Some(vec![90, 95]));
    }

    #[test]
    fn pending_keeps_newest_per_user_and_expires() {
        let mut p = Pending::new(PendingLimits {
            per_user: 2,
            total: 10,
        });
        for id in 1..=3 {
            p.push("u", &ev(id, id * 10), 100);
        }
        assert_eq!(p.total(), 2);
        let got = p.take("u", 0);
        assert_eq!(got.len(), 2);
        assert!(p.take("u", 0).is_empty(), "taken once");
        p.push("v", &ev(9, 0), 5);
        assert_eq!(p.sweep(10), 1);
        assert_eq!(p.total(), 0);
    }

    #[test]
    fn pending_global_bound_refuses_new_users() {
        let mut p = Pending::new(PendingLimits {
            per_user: 5,
            total: 1,
        });
        assert_eq!(p.push("a", &ev(1, 0), 100), PendingDrops::default());
        assert_eq!(p.push("b", &ev(2, 0), 100).refused, 1);
    }
}
