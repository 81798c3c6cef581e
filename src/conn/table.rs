//! The connection table of one shard: a `Slab` of connections plus indexes from
//! user and topic to slab keys. Touched only by its shard's thread (it is `!Send`
//! through its `Rc`s), so delivery takes no lock and no atomic of its own.
//!
//! Delivery of one event: look up the matching slab keys (every entry for `all`,
//! the user index, the topic index), then per connection a comparison of event ids
//! (dedup across topics, and the resume floor), a push of a `Bytes` clone into its
//! bounded queue, and — the first time since the last flush — its key on the
//! dirty list. No allocation, no copy of the payload, no syscall: the shard
//! flushes the dirty list once per wake-up, one `writev` per connection carrying
//! everything queued (see [`crate::shard::io`]).

use std::collections::HashMap;
use std::rc::Rc;
use std::task::Waker;

use bytes::Bytes;
use slab::Slab;
use smallvec::SmallVec;

use super::queue::{OutQueue, QueueLimits, QueuedFrame};
use super::CloseReason;
use crate::event::{Event, Target};

/// Lifecycle of a connection in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Receiving events.
    Open,
    /// Ended by the server; its writer closes the socket and removes the entry.
    Closing(CloseReason),
}

/// One SSE connection.
#[derive(Debug)]
pub struct Conn {
    /// Unique per process; tells a connection from a later one in the same slot.
    pub serial: u64,
    pub user: Rc<str>,
    /// Subscribed topics with this connection's position in each topic's index.
    topics: Box<[(Rc<str>, u32)]>,
    user_pos: u32,
    /// The id of the last event queued (or the resume floor): events at or below
    /// it are skipped, so topic overlap and a replay never deliver twice.
    pub last_id: u64,
    pub queue: OutQueue,
    /// The socket of a lean stream, written by the shard's flush; `None` for a
    /// stream served through hyper, whose body task is woken through `waker`.
    pub io: Option<mio::net::TcpStream>,
    pub waker: Option<Waker>,
    pub state: ConnState,
    /// On the table's dirty list (something to write, or to close).
    dirty: bool,
    /// Its user's cluster partition (see [`crate::event::Event::frame_for`]).
    partition: u8,
    /// The socket's send buffer was full; wait for it to become writable.
    pub blocked: bool,
}

impl Conn {
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.iter().map(|(t, _)| &**t)
    }

    /// The writer has reached this connection: later news lists it again.
    pub fn unmark(&mut self) {
        self.dirty = false;
    }

    /// Wake the hyper body task of a stream that has no socket of its own.
    pub fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// What one delivery did on this shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Frames queued.
    pub queued: u64,
    /// Connections closed because their queue was full.
    pub slow_closed: u64,
    /// Frames dropped with those connections.
    pub dropped_frames: u64,
}

/// A new connection to add.
pub struct NewConn<'a> {
    pub serial: u64,
    pub user: &'a str,
    pub topics: &'a [Box<str>],
    pub last_id: u64,
    /// Its user's cluster partition (0 unless `--partitions` > 1): which frame of
    /// a broadcast it gets.
    pub partition: u8,
}

/// Which index a target names.
#[derive(Clone, Copy)]
enum IndexKind {
    Users,
    Topics,
}

/// Slab keys under one user or topic. Most users hold one or two connections:
/// those lists live inline, without a heap buffer.
type Keys = SmallVec<[u32; 2]>;

/// The slab of connections of one shard and its indexes.
pub struct ConnTable {
    slab: Slab<Conn>,
    users: HashMap<Rc<str>, Keys>,
    topics: HashMap<Rc<str>, Keys>,
    /// Keys of connections with something to write or to close.
    dirty: Vec<u32>,
    limits: QueueLimits,
}

impl ConnTable {
    pub fn new(limits: QueueLimits) -> Self {
        ConnTable {
            slab: Slab::new(),
            users: HashMap::new(),
            topics: HashMap::new(),
            dirty: Vec::new(),
            limits,
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Connections of `user` in this table.
    pub fn count_of(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |k| k.len())
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Number of distinct users with a connection on this shard.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn get(&self, key: usize) -> Option<&Conn> {
        self.slab.get(key)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut Conn> {
        self.slab.get_mut(key)
    }

    /// Slab keys of every connection.
    pub fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.slab.iter().map(|(k, _)| k)
    }

    /// The key the next [`ConnTable::insert`] will use.
    pub fn vacant_key(&self) -> usize {
        self.slab.vacant_key()
    }

    /// Add a connection and index it; returns its slab key.
    pub fn insert(&mut self, new: NewConn<'_>) -> usize {
        // Room on the dirty list for every connection, reserved here (amortised)
        // so that a delivery never allocates.
        self.dirty
            .reserve((self.slab.len() + 1).saturating_sub(self.dirty.len()));
        let entry = self.slab.vacant_entry();
        let key = entry.key() as u32;
        let user = intern(&mut self.users, new.user);
        let user_list = self.users.get_mut(&*user).expect("interned");
        let user_pos = user_list.len() as u32;
        user_list.push(key);
        let topics: Box<[(Rc<str>, u32)]> = new
            .topics
            .iter()
            .map(|t| {
                let topic = intern(&mut self.topics, t);
                let list = self.topics.get_mut(&*topic).expect("interned");
                list.push(key);
                (topic, list.len() as u32 - 1)
            })
            .collect();
        entry.insert(Conn {
            serial: new.serial,
            user,
            topics,
            user_pos,
            last_id: new.last_id,
            queue: OutQueue::default(),
            io: None,
            waker: None,
            state: ConnState::Open,
            dirty: false,
            partition: new.partition,
            blocked: false,
        });
        key as usize
    }

    /// Remove a connection and its index entries.
    pub fn remove(&mut self, key: usize) -> Option<Conn> {
        let conn = self.slab.try_remove(key)?;
        let moved = unindex(&mut self.users, &conn.user, conn.user_pos);
        if let Some(moved) = moved {
            self.slab[moved as usize].user_pos = conn.user_pos;
        }
        for (topic, pos) in conn.topics.iter() {
            if let Some(moved) = unindex(&mut self.topics, topic, *pos) {
                let other = &mut self.slab[moved as usize];
                if let Some(slot) = other.topics.iter_mut().find(|(t, _)| Rc::ptr_eq(t, topic)) {
                    slot.1 = *pos;
                }
            }
        }
        Some(conn)
    }

    /// End a connection from the server side: drop its queue, let its writer close
    /// the socket. Returns frames dropped, or `None` if `serial` is not there.
    pub fn close(&mut self, key: usize, serial: u64, reason: CloseReason) -> Option<usize> {
        let conn = self.slab.get_mut(key).filter(|c| c.serial == serial)?;
        Some(close_conn(conn, key as u32, &mut self.dirty, reason))
    }

    /// Put `key` on the dirty list (it has something new to write or to close).
    pub fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.slab.get_mut(key) {
            mark(conn, key as u32, &mut self.dirty);
        }
    }

    /// Whether some connection has something to write or to close.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Move the dirty list into `out` (emptied first). The marks stay until the
    /// writer reaches each connection ([`Conn::unmark`]): a connection still
    /// waiting in a flush round that is given more to write is not listed twice,
    /// its one write of the round takes it all.
    pub fn take_dirty(&mut self, out: &mut Vec<u32>) {
        // Copy rather than swap: the table's list keeps the capacity reserved for
        // it at insert, so marking never allocates.
        out.clear();
        out.extend_from_slice(&self.dirty);
        self.dirty.clear();
    }

    /// Queue `ev` on every matching open connection.
    pub fn deliver(&mut self, ev: &Event) -> Delivery {
        let limits = self.limits;
        let mut d = Delivery::default();
        match &ev.target {
            Target::All => {
                for (k, conn) in self.slab.iter_mut() {
                    push(conn, k as u32, &mut self.dirty, ev, limits, &mut d);
                }
            }
            Target::Users(users) => {
                self.deliver_indexed(IndexKind::Users, users, ev, limits, &mut d)
            }
            Target::Topics(topics) => {
                self.deliver_indexed(IndexKind::Topics, topics, ev, limits, &mut d)
            }
        }
        d
    }

    /// Deliver to the connections listed under `names` in the user or topic index.
    fn deliver_indexed(
        &mut self,
        kind: IndexKind,
        names: &[Box<str>],
        ev: &Event,
        limits: QueueLimits,
        d: &mut Delivery,
    ) {
        let index = match kind {
            IndexKind::Users => &self.users,
            IndexKind::Topics => &self.topics,
        };
        for name in names {
            let Some(keys) = index.get(&**name) else {
                continue;
            };
            for &k in keys {
                push(
                    &mut self.slab[k as usize],
                    k,
                    &mut self.dirty,
                    ev,
                    limits,
                    d,
                );
            }
        }
    }

    /// Queue a frame (no id) on the connection at `key` if it is still `serial`.
    pub fn push_unnumbered(&mut self, key: usize, serial: u64, frame: &Bytes) -> Delivery {
        let limits = self.limits;
        let mut d = Delivery::default();
        if let Some(conn) = self.slab.get_mut(key) {
            if conn.serial == serial && conn.state == ConnState::Open {
                push_frame(conn, key as u32, &mut self.dirty, frame, limits, &mut d);
            }
        }
        d
    }

    /// The heartbeat: one shared unnumbered frame on every open connection,
    /// each stream's queue first giving back the memory a burst left it (once
    /// per interval, see [`crate::conn::queue::OutQueue::release_spare`]).
    pub fn deliver_heartbeat(&mut self, frame: &Bytes) -> Delivery {
        self.unnumbered_to_all(frame, true)
    }

    /// Queue one shared unnumbered frame on every open connection.
    pub fn deliver_all_unnumbered(&mut self, frame: &Bytes) -> Delivery {
        self.unnumbered_to_all(frame, false)
    }

    fn unnumbered_to_all(&mut self, frame: &Bytes, release_spare: bool) -> Delivery {
        let limits = self.limits;
        let mut d = Delivery::default();
        for (k, conn) in self.slab.iter_mut() {
            if conn.state == ConnState::Open {
                if release_spare {
                    conn.queue.release_spare();
                }
                push_frame(conn, k as u32, &mut self.dirty, frame, limits, &mut d);
            }
        }
        d
    }
}

/// Queue an unnumbered frame on `conn`; a full queue closes it as a slow
/// consumer.
fn push_frame(
    conn: &mut Conn,
    key: u32,
    dirty: &mut Vec<u32>,
    frame: &Bytes,
    limits: QueueLimits,
    d: &mut Delivery,
) {
    let qf = QueuedFrame {
        bytes: frame.clone(),
        published_ns: 0,
    };
    if conn.queue.push(qf, limits).is_ok() {
        d.queued += 1;
        mark(conn, key, dirty);
    } else {
        d.slow_closed += 1;
        d.dropped_frames += close_conn(conn, key, dirty, CloseReason::SlowConsumer) as u64 + 1;
    }
}

#[inline]
fn push(
    conn: &mut Conn,
    key: u32,
    dirty: &mut Vec<u32>,
    ev: &Event,
    limits: QueueLimits,
    d: &mut Delivery,
) {
    if ev.id <= conn.last_id || conn.state != ConnState::Open {
        return;
    }
    conn.last_id = ev.id;
    let qf = QueuedFrame {
        bytes: ev.frame_for(conn.partition).clone(),
        published_ns: ev.published_ns,
    };
    match conn.queue.push(qf, limits) {
        Ok(()) => {
            d.queued += 1;
            mark(conn, key, dirty);
        }
        Err(_) => {
            d.slow_closed += 1;
            d.dropped_frames += close_conn(conn, key, dirty, CloseReason::SlowConsumer) as u64 + 1;
        }
    }
}

#[inline]
fn mark(conn: &mut Conn, key: u32, dirty: &mut Vec<u32>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(key);
    }
}

fn close_conn(conn: &mut Conn, key: u32, dirty: &mut Vec<u32>, reason: CloseReason) -> usize {
    if conn.state != ConnState::Open {
        return 0;
    }
    conn.state = ConnState::Closing(reason);
    let dropped = conn.queue.clear();
    mark(conn, key, dirty);
    dropped
}

/// The shared key for `name`, inserting an empty list the first time.
fn intern(index: &mut HashMap<Rc<str>, Keys>, name: &str) -> Rc<str> {
    if let Some((k, _)) = index.get_key_value(name) {
        return k.clone();
    }
    let k: Rc<str> = name.into();
    index.insert(k.clone(), Keys::new());
    k
}

/// Swap-remove position `pos` of `name`'s list; returns the slab key that moved
/// into `pos`, whose stored position the caller must update.
fn unindex(index: &mut HashMap<Rc<str>, Keys>, name: &str, pos: u32) -> Option<u32> {
    let list = index.get_mut(name)?;
    list.swap_remove(pos as usize);
    let moved = list.get(pos as usize).copied();
    if list.is_empty() {
        index.remove(name);
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u64, target: Target) -> Event {
        Event::new(id, target, Bytes::from_static(b"x"), 1)
    }

    fn topics(t: &[&str]) -> Box<[Box<str>]> {
        t.iter().map(|s| (*s).into()).collect()
    }

    fn add(t: &mut ConnTable, serial: u64, user: &str, tp: &[&str]) -> usize {
        t.insert(NewConn {
            serial,
            user,
            topics: &topics(tp),
            last_id: 0,
            partition: 0,
        })
    }

    #[test]
    fn routes_by_target_and_dedups_overlapping_topics() {
        let mut t = ConnTable::new(QueueLimits {
            max_frames: 10,
            max_bytes: 1000,
        });
        let a = add(&mut t, 1, "alice", &["x", "y"]);
        let b = add(&mut t, 2, "bob", &["y"]);
        let c = add(&mut t, 3, "carol", &[]);
        assert_eq!(t.deliver(&ev(1, Target::All)).queued, 3);
        assert_eq!(t.deliver(&ev(2, Target::Users(topics(&["bob"])))).queued, 1);
        assert_eq!(
            t.deliver(&ev(3, Target::Topics(topics(&["x", "y"]))))
                .queued,
            2
        );
        assert_eq!(t.get(a).unwrap().queue.len(), 2);
        assert_eq!(t.get(b).unwrap().queue.len(), 3);
        assert_eq!(t.get(c).unwrap().queue.len(), 1);
    }

    #[test]
    fn removal_keeps_indexes_consistent() {
        let mut t = ConnTable::new(QueueLimits {
            max_frames: 10,
            max_bytes: 1000,
        });
        let keys: Vec<usize> = (0..5).map(|i| add(&mut t, i, "u", &["t"])).collect();
        t.remove(keys[1]).unwrap();
        t.remove(keys[3]).unwrap();
        let d = t.deliver(&ev(1, Target::Topics(topics(&["t"]))));
        assert_eq!(d.queued, 3);
        let d = t.deliver(&ev(2, Target::Users(topics(&["u"]))));
        assert_eq!(d.queued, 3);
        for k in [keys[0], keys[2], keys[4]] {
            t.remove(k).unwrap();
        }
        assert!(t.users.is_empty() && t.topics.is_empty());
    }

    #[test]
    fn full_queue_closes_only_that_connection() {
        let mut t = ConnTable::new(QueueLimits {
            max_frames: 2,
            max_bytes: 1000,
        });
        let slow = add(&mut t, 1, "s", &[]);
        let fast = add(&mut t, 2, "f", &[]);
        for id in 1..=3 {
            t.deliver(&ev(id, Target::All));
            // the fast one drains
            let q = &mut t.get_mut(fast).unwrap().queue;
            let n = q.bytes();
            q.consume(n, |_| ());
        }
        assert_eq!(
            t.get(slow).unwrap().state,
            ConnState::Closing(CloseReason::SlowConsumer)
        );
        assert_eq!(t.get(fast).unwrap().state, ConnState::Open);
        assert_eq!(t.get(slow).unwrap().queue.len(), 0);
    }

    #[test]
    fn resume_floor_skips_older_events() {
        let mut t = ConnTable::new(QueueLimits {
            max_frames: 10,
            max_bytes: 1000,
        });
        let k = t.insert(NewConn {
            serial: 1,
            user: "u",
            topics: &[],
            last_id: 5,
            partition: 0,
        });
        assert_eq!(t.deliver(&ev(5, Target::All)).queued, 0);
        assert_eq!(t.deliver(&ev(6, Target::All)).queued, 1);
        assert_eq!(t.get(k).unwrap().last_id, 6);
    }
}

#[cfg(test)]
mod size {
    /// The table entry is most of what an idle stream costs: keep it in check
    /// (168 bytes since the cluster partition byte took a padding slot).
    #[test]
    fn a_connection_entry_stays_within_168_bytes() {
        let n = std::mem::size_of::<super::Conn>();
        assert!(n <= 168, "Conn is {n} bytes");
    }
}
