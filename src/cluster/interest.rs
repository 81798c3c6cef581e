//! This pod's topic interest: which topics it has joined in Redis (so that
//! publishes to them reach its inbox), from the count of its own subscribers.
//!
//! A topic is joined with the registration of its first subscriber on this pod
//! (in the same script, so no event published after the connect can miss the
//! pod), and left once it has had no subscriber for the linger time (a topic
//! whose only subscriber reconnects does not flap in and out). Leaves go out in
//! the register loop's script calls, in order with registrations: a subscriber
//! that arrives after a leave was decided registers (and re-joins) after it.
//! User interest needs none of this: the registry scripts keep it exact per
//! connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Topic {
    /// Subscribers on this pod.
    subs: u32,
    /// Joined in Redis (a join script call succeeded, no leave since).
    joined: bool,
    /// When `subs` last fell to zero.
    idle_since: Option<Instant>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct TopicInterest {
    topics: Mutex<HashMap<Box<str>, Topic>>,
    /// Topics whose subscriber count changed since it was last written to
    /// Redis (presence counts per topic), with their count now.
    changed: Mutex<HashMap<Box<str>, u32>>,
}

impl TopicInterest {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Topic>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, u32>> {
        self.changed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Note `topic`'s count for the next write (internal topics are not
    /// counted: nobody may ask for them).
    fn note(changed: &mut HashMap<Box<str>, u32>, topic: &str, subs: u32) {
        if crate::presence::is_internal(topic) {
            return;
        }
        match changed.get_mut(topic) {
            Some(n) => *n = subs,
            None => {
                changed.insert(topic.into(), subs);
            }
        }
    }

    /// Whether this pod has a subscriber of `topic` now.
    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.lock().get(topic).is_some_and(|t| t.subs > 0)
    }

    /// The counts to write to Redis: those that changed, or (`all`, after
    /// Redis lost them) every topic's. Taken: the caller gives them back with
    /// [`TopicInterest::unsent`] when its call fails.
    pub fn take_counts(&self, all: bool) -> Vec<(String, u32)> {
        // The order every method takes the two locks in: topics, then changes.
        let map = self.lock();
        let mut changed = self.changed();
        if all {
            for (name, t) in map.iter() {
                Self::note(&mut changed, name, t.subs);
            }
        }
        changed.drain().map(|(k, n)| (k.into(), n)).collect()
    }

    /// Counts whose write failed: written with the next call, unless a newer
    /// count replaced them meanwhile.
    pub fn unsent(&self, counts: Vec<(String, u32)>) {
        let mut changed = self.changed();
        for (t, n) in counts {
            changed.entry(t.into()).or_insert(n);
        }
    }

    /// A connection subscribed to `topics` opens; returns those this pod has not
    /// joined yet (to join with its registration).
    pub fn subscribe<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut map = self.lock();
        let mut changed = self.changed();
        let mut joins = Vec::new();
        for t in topics {
            let topic = map.entry(Box::from(t)).or_default();
            topic.subs += 1;
            topic.idle_since = None;
            Self::note(&mut changed, t, topic.subs);
            if !topic.joined {
                joins.push(t.to_string());
            }
        }
        joins
    }

    /// A connection subscribed to `topics` ended.
    pub fn unsubscribe<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut map = self.lock();
        let mut changed = self.changed();
        for t in topics {
            if let Some(topic) = map.get_mut(t) {
                topic.subs = topic.subs.saturating_sub(1);
                Self::note(&mut changed, t, topic.subs);
                if topic.subs == 0 {
                    topic.idle_since = Some(Instant::now());
                }
            }
        }
    }

    /// Redis has these joins (the script that carried them succeeded).
    pub fn joined(&self, topics: &[String]) {
        let mut map = self.lock();
        for t in topics {
            if let Some(topic) = map.get_mut(t.as_str()) {
                topic.joined = true;
            }
        }
    }

    /// Topics with subscribers that Redis may not have (a join that failed, or
    /// Redis lost them): joined again, idempotently.
    pub fn to_rejoin(&self, all: bool) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, t)| t.subs > 0 && (all || !t.joined))
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// Topics without a subscriber for `linger`: forgotten here, to be left in
    /// Redis by the caller's next script call.
    pub fn due_leaves(&self, linger: Duration) -> Vec<String> {
        let mut map = self.lock();
        let mut leaves = Vec::new();
        map.retain(|name, t| {
            let due = t.subs == 0 && t.idle_since.is_some_and(|s| s.elapsed() >= linger);
            if due && t.joined {
                leaves.push(name.to_string());
            }
            !due
        });
        leaves
    }

    /// Topics joined or with subscribers (for the metrics and the stats).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_subscriber_joins_last_leaves_after_the_linger() {
        let i = TopicInterest::default();
        assert_eq!(i.subscribe(["a", "b"]), vec!["a", "b"]);
        assert_eq!(i.subscribe(["a"]), vec!["a"], "not joined yet: ask again");
        i.joined(&["a".into(), "b".into()]);
        assert!(i.subscribe(["a"]).is_empty(), "joined: nothing to send");
        i.unsubscribe(["a", "a", "a", "b"]);
        assert!(
            i.due_leaves(Duration::from_secs(60)).is_empty(),
            "lingering"
        );
        let mut left = i.due_leaves(Duration::ZERO);
        left.sort();
        assert_eq!(left, vec!["a", "b"]);
        assert!(i.is_empty());
    }

    #[test]
    fn a_subscriber_during_the_linger_keeps_the_topic() {
        let i = TopicInterest::default();
        i.subscribe(["a"]);
        i.joined(&["a".into()]);
        i.unsubscribe(["a"]);
        assert!(i.subscribe(["a"]).is_empty());
        assert!(i.due_leaves(Duration::ZERO).is_empty());
        assert_eq!(i.to_rejoin(true), vec!["a"]);
        assert!(i.to_rejoin(false).is_empty());
    }

    #[test]
    fn a_topic_never_joined_leaves_nothing_to_send() {
        let i = TopicInterest::default();
        i.subscribe(["a"]);
        i.unsubscribe(["a"]);
        assert!(i.due_leaves(Duration::ZERO).is_empty());
        assert!(i.is_empty());
    }
}
