//! The cluster's event log as herald reads it: Redis Stream ids as SSE ids, log
//! entries as [`Event`]s (framed once per pod), pending entries as frames, and
//! close requests sent to this pod. Pure, apart from the clock.

use std::sync::Arc;

use fred::types::Value;

use crate::clock;
use crate::conn::QueuedFrame;
use crate::event::{Event, Target};
use crate::sse::frame;

/// Bits of an SSE id that hold the stream id's sequence number. A stream id
/// `ms-seq` becomes `ms << 20 | seq`: strictly increasing like the stream ids, a
/// plain decimal for clients, and good until the year 2248 (or a million events
/// in one millisecond).
const SEQ_BITS: u32 = 20;

/// `"1700000000000-3"` → its SSE id.
pub fn sse_id(stream_id: &str) -> Option<u64> {
    let (ms, seq) = stream_id.split_once('-')?;
    let ms: u64 = ms.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    if seq >= 1 << SEQ_BITS || ms >= 1 << (63 - SEQ_BITS) {
        return None;
    }
    Some(ms << SEQ_BITS | seq)
}

/// A stream id `ms-seq` as a pair that orders like it; `None` when malformed.
pub fn sid_order(stream_id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = stream_id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The stream id of an SSE id (the inverse of [`sse_id`]).
pub fn stream_id(id: u64) -> String {
    format!("{}-{}", id >> SEQ_BITS, id & ((1 << SEQ_BITS) - 1))
}

/// Encode a target for a log entry: kind and comma-separated names.
pub fn encode_target(t: &Target) -> (&'static str, String) {
    match t {
        Target::All => ("a", String::new()),
        Target::Users(u) => ("u", u.join(",")),
        Target::Topics(t) => ("t", t.join(",")),
    }
}

fn decode_target(kind: &str, names: &str) -> Option<Target> {
    let list = || -> Box<[Box<str>]> {
        names
            .split(',')
            .filter(|s| !s.is_empty())
            .map(Box::from)
            .collect()
    };
    match kind {
        "a" => Some(Target::All),
        "u" => Some(Target::Users(list())),
        "t" => Some(Target::Topics(list())),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(&**s),
        Value::Bytes(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// A log or broadcast-stream entry `[id, [field, value, ...]]` as an event (its
/// stream id is its log id). `None` for an entry herald did not write (it is
/// skipped).
pub fn event(entry: &Value) -> Option<(String, Option<Arc<Event>>)> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let sid = text(parts.first()?)?.to_string();
    let ev = match (sse_id(&sid), parts.get(1)) {
        (Some(id), Some(Value::Array(fields))) => fields_event(id, fields),
        _ => None,
    };
    Some((sid, ev))
}

/// The event fields `e`, `d`, `k`, `t`, `ns` as an event with id `id`.
fn fields_event(id: u64, fields: &[Value]) -> Option<Arc<Event>> {
    let (mut name, mut data, mut kind, mut names, mut ns) = (None, None, None, "", 0u64);
    for pair in fields.chunks(2) {
        let [k, v] = pair else { break };
        match text(k) {
            Some("e") => name = text(v),
            Some("d") => data = text(v),
            Some("k") => kind = text(v),
            Some("t") => names = text(v).unwrap_or(""),
            Some("ns") => ns = text(v).and_then(|s| s.parse().ok()).unwrap_or(0),
            _ => {}
        }
    }
    let (name, data, target) = (name?, data?, decode_target(kind?, names)?);
    Some(Arc::new(Event::new(
        id,
        target,
        frame::event(id, name, data),
        local_ns(ns),
    )))
}

/// One entry of a pod's inbox.
#[derive(Debug)]
pub enum Inbox {
    /// An event routed to this pod; `after` is the last broadcast id before it
    /// (every broadcast up to `after` comes first, none between it and `id`).
    Event {
        id: u64,
        after: u64,
        event: Option<Arc<Event>>,
        /// Some user of it is held by this pod alone: were the pod to die
        /// before reading it, the cleanup would give it to that user elsewhere.
        salvageable: bool,
    },
    /// A registration's marker: everything routed to this pod up to log id
    /// `upto` is before it; `after` as for an event.
    Sync { upto: u64, after: u64 },
    /// End a connection of this pod.
    Close(CloseRequest),
    /// This pod's delivery probe number `n`.
    Probe(u64),
    /// Not herald's, or malformed: skipped.
    Other,
}

impl Inbox {
    /// The last broadcast id that must be handled before this entry, for the
    /// entries that take part in the log order.
    pub fn after(&self) -> Option<u64> {
        match self {
            Inbox::Event { after, .. } | Inbox::Sync { after, .. } => Some(*after),
            _ => None,
        }
    }
}

/// An inbox entry `[stream id, [o|i, ..., ...]]`.
pub fn inbox(entry: &Value) -> Option<(String, Inbox)> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let sid = text(parts.first()?)?.to_string();
    let Some(Value::Array(fields)) = parts.get(1) else {
        return Some((sid, Inbox::Other));
    };
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|p| p.len() == 2 && text(&p[0]) == Some(name))
            .and_then(|p| text(&p[1]))
    };
    let id_of = |name: &str| field(name).and_then(sse_id);
    let entry = match (field("i"), field("o")) {
        (Some(i), _) => match (sse_id(i), id_of("p")) {
            (Some(id), Some(after)) => Inbox::Event {
                id,
                after,
                event: fields_event(id, fields),
                salvageable: field("s").is_some(),
            },
            _ => Inbox::Other,
        },
        (None, Some("sync")) => match (id_of("l"), id_of("p")) {
            (Some(upto), Some(after)) => Inbox::Sync { upto, after },
            _ => Inbox::Other,
        },
        (None, Some("close")) => close_request(
            field("m").unwrap_or(""),
            field("w").unwrap_or(""),
            field("r").unwrap_or(""),
        )
        .map_or(Inbox::Other, Inbox::Close),
        (None, Some("probe")) => field("n")
            .and_then(|n| n.parse().ok())
            .map_or(Inbox::Other, Inbox::Probe),
        _ => Inbox::Other,
    };
    Some((sid, entry))
}

/// A broadcast-stream entry that refuses a user's connects (`k` = `b`): the
/// user and the deadline (unix ms).
pub fn block(entry: &Value) -> Option<(String, u64)> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let Some(Value::Array(fields)) = parts.get(1) else {
        return None;
    };
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|p| p.len() == 2 && text(&p[0]) == Some(name))
            .and_then(|p| text(&p[1]))
    };
    if field("k")? != "b" {
        return None;
    }
    Some((field("t")?.to_string(), field("x")?.parse().ok()?))
}

/// The publish token of a log, inbox or broadcast entry (`q`: the publishing
/// pod, its job sequence, the event's place in the job), borrowed from it.
pub fn token(entry: &Value) -> Option<(&str, u64, u32)> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let Some(Value::Array(fields)) = parts.get(1) else {
        return None;
    };
    let q = fields
        .chunks(2)
        .find(|p| p.len() == 2 && text(&p[0]) == Some("q"))
        .and_then(|p| text(&p[1]))?;
    let (pod, rest) = q.rsplit_once('/')?;
    let (seq, index) = rest.split_once('.')?;
    Some((pod, seq.parse().ok()?, index.parse().ok()?))
}

/// The last publish token each publishing pod's events reached this reader
/// with, per source. A publishing pod appends its jobs to a source in
/// sequence order, so an event at or below its pod's last token was delivered
/// already: the job was sent again after Redis lost the record that would have
/// caught it (restarted empty, or a replica promoted without it).
#[derive(Debug, Default)]
pub struct Seen {
    last: std::collections::HashMap<Box<str>, ((u64, u32), u64)>,
    checks: u32,
}

impl Seen {
    /// Whether the event with this token was seen before; remembers it.
    /// `now_ms` ages out publishers not heard from for `keep_ms`.
    pub fn repeat(&mut self, pod: &str, at: (u64, u32), now_ms: u64, keep_ms: u64) -> bool {
        self.checks = self.checks.wrapping_add(1);
        if self.checks % 4096 == 0 {
            self.last
                .retain(|_, (_, seen)| now_ms.saturating_sub(*seen) < keep_ms);
        }
        match self.last.get_mut(pod) {
            Some((last, seen)) => {
                *seen = now_ms;
                if at <= *last {
                    return true;
                }
                *last = at;
                false
            }
            None => {
                self.last.insert(pod.into(), (at, now_ms));
                false
            }
        }
    }
}

/// The publisher's wall-clock publish time as this process's monotonic clock, so
/// the publish-to-socket histogram covers the trip through Redis.
fn local_ns(unix_ns: u64) -> u64 {
    let now = clock::now_ns();
    if unix_ns == 0 {
        return now;
    }
    let age = (clock::unix_us().saturating_mul(1000)).saturating_sub(unix_ns);
    now.saturating_sub(age).max(1)
}

/// A pending entry `"<stream id> <expires ms> <event>\n<data>"` as its log
/// position and frame; `None` when expired or malformed.
pub fn pending(entry: &Value, now_ms: u64) -> Option<(u64, QueuedFrame)> {
    let s = text(entry)?;
    let (head, data) = s.split_once('\n')?;
    let mut it = head.splitn(3, ' ');
    let id = sse_id(it.next()?)?;
    let expires: u64 = it.next()?.parse().ok()?;
    let name = it.next()?;
    (expires > now_ms).then(|| {
        (
            id,
            QueuedFrame {
                bytes: frame::event(id, name, data),
                published_ns: 0,
            },
        )
    })
}

/// A close request for this pod: end `(user, conn_id)` if it is still the
/// connection `serial`.
#[derive(Debug)]
pub struct CloseRequest {
    pub user: String,
    pub conn_id: String,
    pub serial: u64,
    pub replaced: bool,
}

/// A close request from its member `user/conn`, owner
/// `pod/serial[/connected ms/topics]` and reason.
fn close_request(member: &str, owner: &str, reason: &str) -> Option<CloseRequest> {
    let (user, conn_id) = member.split_once('/')?;
    let serial = owner.split('/').nth(1)?.parse().ok()?;
    Some(CloseRequest {
        user: user.to_string(),
        conn_id: conn_id.to_string(),
        serial,
        replaced: reason == "replaced",
    })
}

/// The member name of a connection in the registry: `user/connectionId` (`/` is
/// outside the id alphabet).
pub fn member(user: &str, conn_id: &str) -> String {
    let mut m = String::with_capacity(user.len() + conn_id.len() + 1);
    m.push_str(user);
    m.push('/');
    m.push_str(conn_id);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_request_names_the_serial_whatever_the_owner_carries() {
        for owner in [
            "pod-a/42",
            "pod-a/42/1796656116372/t1,t2",
            "pod-a/42/1796656116372/",
        ] {
            let r = close_request("u/c", owner, "replaced").expect(owner);
            assert_eq!(
                (r.user.as_str(), r.conn_id.as_str(), r.serial, r.replaced),
                ("u", "c", 42, true)
            );
        }
        assert!(close_request("u/c", "pod-a", "x").is_none());
    }

    fn s(b: &bytes::Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    fn st(s: &str) -> Value {
        Value::String(s.into())
    }

    #[test]
    fn ids_keep_the_stream_order() {
        let a = sse_id("1700000000000-0").unwrap();
        let b = sse_id("1700000000000-1").unwrap();
        let c = sse_id("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(stream_id(b), "1700000000000-1");
        assert_eq!(sse_id("garbage"), None);
        assert_eq!(sse_id("1-1048576"), None, "sequence beyond 20 bits");
    }

    #[test]
    fn log_entry_becomes_one_framed_event() {
        let entry = Value::Array(vec![
            st("5-2"),
            Value::Array(vec![
                st("e"),
                st("news"),
                st("d"),
                st("a\nb"),
                st("k"),
                st("u"),
                st("t"),
                st("u1,u2"),
                st("ns"),
                st("0"),
            ]),
        ]);
        let (sid, ev) = event(&entry).unwrap();
        let ev = ev.unwrap();
        assert_eq!(sid, "5-2");
        assert_eq!(ev.id, 5 << 20 | 2);
        assert_eq!(
            s(&ev.frame),
            format!("id: {}\nevent: news\ndata: a\ndata: b\n\n", ev.id)
        );
        assert!(ev.target.matches("u2", std::iter::empty()));
    }

    #[test]
    fn pending_entries_expire() {
        let e = st("7-0 1000 msg\nhello");
        assert!(pending(&e, 999).is_some());
        assert!(pending(&e, 1000).is_none());
        let (at, f) = pending(&e, 0).unwrap();
        assert_eq!(at, 7 << 20);
        assert_eq!(
            s(&f.bytes),
            format!("id: {}\nevent: msg\ndata: hello\n\n", 7 << 20)
        );
    }
}

#[cfg(test)]
mod seen_tests {
    use super::*;

    #[test]
    fn a_token_at_or_below_its_pods_last_is_a_repeat() {
        let mut s = Seen::default();
        assert!(!s.repeat("a", (10, 1), 0, 1000));
        assert!(!s.repeat("a", (10, 2), 0, 1000));
        assert!(s.repeat("a", (10, 2), 0, 1000), "the same event again");
        assert!(s.repeat("a", (10, 1), 0, 1000), "an earlier one of the job");
        assert!(!s.repeat("b", (5, 1), 0, 1000), "pods are apart");
        assert!(!s.repeat("a", (11, 1), 0, 1000));
    }

    #[test]
    fn tokens_are_read_from_entries() {
        let entry = Value::Array(vec![
            Value::from("1-0"),
            Value::Array(vec![
                Value::from("e"),
                Value::from("message"),
                Value::from("q"),
                Value::from("pod-a/1765000000123.3"),
            ]),
        ]);
        assert_eq!(token(&entry), Some(("pod-a", 1_765_000_000_123, 3)));
        let none = Value::Array(vec![Value::from("1-0"), Value::Array(vec![])]);
        assert_eq!(token(&none), None);
    }
}
