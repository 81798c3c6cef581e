//! The embedded connection registry: which connections each user has and where
//! they live (shard, slab key, serial). It routes user-targeted events to the
//! shards that hold the user, decides pending vs live, finds the stream a
//! disconnect or a replacing connect must end, and counts users and connections
//! for the stats endpoint and the connection limits. Touched on connect,
//! disconnect and publish, never per delivery.

use std::collections::HashMap;

use smallvec::SmallVec;

use crate::fanout::ConnLoc;

#[derive(Debug)]
struct Entry {
    conn_id: Box<str>,
    loc: ConnLoc,
    /// When it connected (unix ms), for presence.
    connected_ms: u64,
    /// Its topics, comma separated (no heap buffer when it has none).
    topics: Box<str>,
}

/// What presence asks of a registered connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnMeta {
    pub conn_id: Box<str>,
    pub shard: u16,
    pub connected_ms: u64,
    pub topics: Box<str>,
}

/// User → connections, for this pod.
#[derive(Debug, Default)]
pub struct LocalRegistry {
    /// Most users hold one connection: that entry lives inline.
    users: HashMap<Box<str>, SmallVec<[Entry; 1]>>,
    connections: usize,
    /// Connections per shard (shards beyond 127 counted together, as in the
    /// masks), and the bit set of shards with at least one.
    per_shard: Vec<u32>,
    occupied: u128,
    /// Connections per topic (presence counts; topics of internal streams too).
    topic_streams: HashMap<Box<str>, u32>,
    /// Connections of internal users (presence streams): not counted as
    /// anyone's connection in the stats or presence.
    internal: usize,
}

impl LocalRegistry {
    pub fn connections(&self) -> usize {
        self.connections
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// `(connections, users)` of clients: internal streams left out.
    pub fn public_counts(&self) -> (usize, usize) {
        // Presence streams are the one internal user.
        let internal_users = usize::from(self.users.contains_key(crate::presence::WATCHER));
        (
            self.connections - self.internal,
            self.users.len() - internal_users,
        )
    }

    /// Streams subscribed to `topic`.
    pub fn topic_count(&self, topic: &str) -> usize {
        self.topic_streams.get(topic).map_or(0, |&n| n as usize)
    }

    /// `user`'s connections, for presence.
    pub fn connections_of(&self, user: &str) -> Vec<ConnMeta> {
        self.users.get(user).map_or_else(Vec::new, |v| {
            v.iter()
                .map(|e| ConnMeta {
                    conn_id: e.conn_id.clone(),
                    shard: e.loc.shard,
                    connected_ms: e.connected_ms,
                    topics: e.topics.clone(),
                })
                .collect()
        })
    }

    fn topics_in(&mut self, topics: &str) {
        for t in topics.split(',').filter(|t| !t.is_empty()) {
            match self.topic_streams.get_mut(t) {
                Some(n) => *n += 1,
                None => {
                    self.topic_streams.insert(t.into(), 1);
                }
            }
        }
    }

    fn topics_out(&mut self, topics: &str) {
        for t in topics.split(',').filter(|t| !t.is_empty()) {
            if let Some(n) = self.topic_streams.get_mut(t) {
                *n -= 1;
                if *n == 0 {
                    self.topic_streams.remove(t);
                }
            }
        }
    }

    /// How many connections `user` has.
    pub fn count(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |v| v.len())
    }

    pub fn find(&self, user: &str, conn_id: &str) -> Option<ConnLoc> {
        self.users
            .get(user)?
            .iter()
            .find(|e| &*e.conn_id == conn_id)
            .map(|e| e.loc)
    }

    /// Shards holding a connection of `user`, as a bit set over shard numbers
    /// (shards beyond 127 share the top bit, which only widens the routing).
    pub fn shard_mask(&self, user: &str) -> u128 {
        self.users.get(user).map_or(0, |v| {
            v.iter().fold(0, |m, e| m | 1u128 << e.loc.shard.min(127))
        })
    }

    /// Shards holding any connection, as a bit set like [`Self::shard_mask`]:
    /// a broadcast or topic event need not wake a shard with none. Exact under
    /// the broker's lock: a connection registered later starts after the event
    /// (its resume floor), so a shard it lands on needs no earlier event.
    pub fn occupied_shards(&self) -> u128 {
        self.occupied
    }

    fn count_in(&mut self, shard: u16) {
        let i = shard.min(127) as usize;
        if self.per_shard.len() <= i {
            self.per_shard.resize(i + 1, 0);
        }
        self.per_shard[i] += 1;
        self.occupied |= 1u128 << i;
    }

    fn count_out(&mut self, shard: u16) {
        let i = shard.min(127) as usize;
        if let Some(n) = self.per_shard.get_mut(i) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.occupied &= !(1u128 << i);
            }
        }
    }

    /// Register `(user, conn_id)` at `loc`, connected at `connected_ms` to
    /// `topics` (comma separated); returns the location it replaces.
    pub fn register(
        &mut self,
        user: &str,
        conn_id: &str,
        loc: ConnLoc,
        connected_ms: u64,
        topics: Box<str>,
    ) -> Option<ConnLoc> {
        // Counted before the entry takes the string (a replacement's old
        // topics come out below).
        self.topics_in(&topics);
        let list = match self.users.get_mut(user) {
            Some(l) => l,
            None => self.users.entry(user.into()).or_default(),
        };
        if let Some(e) = list.iter_mut().find(|e| &*e.conn_id == conn_id) {
            let old = std::mem::replace(&mut e.loc, loc);
            e.connected_ms = connected_ms;
            let old_topics = std::mem::replace(&mut e.topics, topics);
            self.count_out(old.shard);
            self.count_in(loc.shard);
            self.topics_out(&old_topics);
            return Some(old);
        }
        list.push(Entry {
            conn_id: conn_id.into(),
            loc,
            connected_ms,
            topics,
        });
        self.connections += 1;
        if crate::presence::is_internal(user) {
            self.internal += 1;
        }
        self.count_in(loc.shard);
        None
    }

    /// Remove `(user, conn_id)`; returns where it was.
    pub fn remove(&mut self, user: &str, conn_id: &str) -> Option<ConnLoc> {
        self.remove_where(user, |e| &*e.conn_id == conn_id)
            .map(|(loc, _)| loc)
    }

    /// Remove `(user, conn_id)` only if it is still the connection `serial`.
    pub fn remove_exact(&mut self, user: &str, conn_id: &str, serial: u64) -> Option<ConnLoc> {
        self.remove_where(user, |e| &*e.conn_id == conn_id && e.loc.serial == serial)
            .map(|(loc, _)| loc)
    }

    /// Remove the connection of `user` with `serial`, if it is still registered
    /// (a replacement or a disconnect may have removed it already); returns its
    /// connection id.
    pub fn remove_serial(&mut self, user: &str, serial: u64) -> Option<Box<str>> {
        self.remove_where(user, |e| e.loc.serial == serial)
            .map(|(_, id)| id)
    }

    /// Remove every connection of `user`; returns `(conn_id, where)` of each.
    pub fn remove_user(&mut self, user: &str) -> Vec<(Box<str>, ConnLoc)> {
        let mut out = Vec::new();
        while let Some((loc, id)) = self.remove_where(user, |_| true) {
            out.push((id, loc));
        }
        out
    }

    /// Every registered connection: `(user, conn_id, where)`.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, ConnLoc)> {
        self.users
            .iter()
            .flat_map(|(u, list)| list.iter().map(move |e| (&**u, &*e.conn_id, e.loc)))
    }

    fn remove_where(
        &mut self,
        user: &str,
        pick: impl Fn(&Entry) -> bool,
    ) -> Option<(ConnLoc, Box<str>)> {
        let list = self.users.get_mut(user)?;
        let i = list.iter().position(pick)?;
        let e = list.swap_remove(i);
        if list.is_empty() {
            self.users.remove(user);
        }
        self.connections -= 1;
        if crate::presence::is_internal(user) {
            self.internal -= 1;
        }
        self.count_out(e.loc.shard);
        self.topics_out(&e.topics);
        Some((e.loc, e.conn_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(shard: u16, serial: u64) -> ConnLoc {
        ConnLoc {
            shard,
            key: 0,
            serial,
        }
    }

    #[test]
    fn register_replace_remove() {
        let mut r = LocalRegistry::default();
        assert_eq!(r.register("u", "c1", loc(0, 1), 0, "".into()), None);
        assert_eq!(r.register("u", "c2", loc(1, 2), 0, "".into()), None);
        assert_eq!(r.shard_mask("u"), 0b11);
        assert_eq!(r.occupied_shards(), 0b11);
        assert_eq!(
            r.register("u", "c1", loc(1, 3), 0, "".into()),
            Some(loc(0, 1))
        );
        assert_eq!(r.connections(), 2);
        assert_eq!(
            r.remove_serial("u", 1),
            None,
            "stale serial leaves the replacement"
        );
        assert_eq!(r.remove_serial("u", 3).as_deref(), Some("c1"));
        assert_eq!(r.remove("u", "c2"), Some(loc(1, 2)));
        assert_eq!((r.users(), r.connections()), (0, 0));
        assert_eq!(r.occupied_shards(), 0);
    }

    #[test]
    fn occupied_shards_follow_connections_and_replacements() {
        let mut r = LocalRegistry::default();
        r.register("a", "c", loc(2, 1), 0, "".into());
        r.register("b", "c", loc(2, 2), 0, "".into());
        r.register("c", "c", loc(200, 3), 0, "".into());
        assert_eq!(r.occupied_shards(), 1 << 2 | 1 << 127);
        // A replacement moves the count from the old shard to the new one.
        r.register("a", "c", loc(5, 4), 0, "".into());
        assert_eq!(r.occupied_shards(), 1 << 2 | 1 << 5 | 1 << 127);
        r.remove_serial("b", 2);
        assert_eq!(r.occupied_shards(), 1 << 5 | 1 << 127);
        r.remove("c", "c");
        r.remove_exact("a", "c", 4);
        assert_eq!(r.occupied_shards(), 0);
    }

    #[test]
    fn topic_counts_and_internal_streams() {
        let mut r = LocalRegistry::default();
        r.register("a", "c1", loc(0, 1), 5, "x,y".into());
        r.register("b", "c1", loc(0, 2), 6, "x".into());
        r.register("#presence", "w", loc(0, 3), 7, "#presence".into());
        assert_eq!((r.topic_count("x"), r.topic_count("y")), (2, 1));
        assert_eq!(r.public_counts(), (2, 2));
        // A replacement swaps its topics.
        r.register("a", "c1", loc(1, 4), 8, "z".into());
        assert_eq!(
            (r.topic_count("x"), r.topic_count("y"), r.topic_count("z")),
            (1, 0, 1)
        );
        let c = r.connections_of("a");
        assert_eq!((c[0].connected_ms, &*c[0].topics, c[0].shard), (8, "z", 1));
        r.remove_serial("#presence", 3);
        r.remove("b", "c1");
        assert_eq!(r.public_counts(), (1, 1));
        assert_eq!(r.topic_count("x"), 0);
    }
}
