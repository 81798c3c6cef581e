//! Presence: who is online, and the `online` / `offline` transitions of users.
//!
//! What this module owns:
//! * the names of presence's internal stream: a presence stream
//!   (`GET /api/presence/stream`) is an ordinary stream of the internal user
//!   [`WATCHER`] subscribed to the internal topic [`TOPIC`]; transitions are
//!   published to that topic, so they get ids, history, `Last-Event-ID` resume
//!   and (in a cluster) routing by interest like any topic event. Both names
//!   start with `#`, which no client-chosen name may hold;
//! * the linger ([`Linger`]): a user whose last connection ends is not offline
//!   until `--presence-linger` has passed without a new one (a page reload or a
//!   pod drain produces nothing). The embedded broker keeps one; in a cluster
//!   the same rule is kept in Redis by the registry scripts;
//! * the request and answer shapes of the presence endpoints.
//!
//! Nothing here is on the delivery path: transitions happen per connect and
//! disconnect, queries per request.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::http::params::valid_name;

/// The internal topic presence events are published to.
pub const TOPIC: &str = "#presence";
/// The internal user of presence streams (never counted, never online).
pub const WATCHER: &str = "#presence";
/// Most users or topics one presence query may name.
pub const MAX_QUERY: usize = 1000;

/// Whether a stream subscribed to `topics` receives presence transitions (a
/// presence stream): its resume depends on their history too.
pub fn watches(topics: &[Box<str>]) -> bool {
    topics.iter().any(|t| &**t == TOPIC)
}

/// Whether `user` is internal (a presence stream), not a client's user.
pub fn is_internal(user: &str) -> bool {
    user.starts_with('#')
}

/// The two kinds of transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Online,
    Offline,
}

impl Transition {
    pub fn event(self) -> &'static str {
        match self {
            Transition::Online => "online",
            Transition::Offline => "offline",
        }
    }
}

/// The data of a presence event.
pub fn data(user: &str, at_ms: u64) -> String {
    json!({ "userId": user, "at": at_ms }).to_string()
}

/// Users whose last connection ended, waiting out the linger: user → (when it
/// ended, unix ms). A user back before the deadline leaves without a trace.
#[derive(Debug, Default)]
pub struct Linger {
    waiting: HashMap<Box<str>, u64>,
}

impl Linger {
    /// `user`'s first connection opened: whether that is a transition to
    /// online (false when it was lingering: it never went offline).
    pub fn came(&mut self, user: &str) -> bool {
        self.waiting.remove(user).is_none()
    }

    /// `user`'s last connection ended at `now_ms`.
    pub fn left(&mut self, user: &str, now_ms: u64) {
        self.waiting.insert(user.into(), now_ms);
    }

    /// Users whose linger has passed at `now_ms`: offline now, with the time
    /// their last connection ended.
    pub fn due(&mut self, now_ms: u64, linger_ms: u64) -> Vec<(Box<str>, u64)> {
        let mut out = Vec::new();
        self.waiting.retain(|user, ended| {
            if ended.saturating_add(linger_ms) <= now_ms {
                out.push((user.clone(), *ended));
                false
            } else {
                true
            }
        });
        out.sort_by_key(|(_, ended)| *ended);
        out
    }

    /// Users lingering now (online for presence: they have not gone offline).
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// `POST /api/presence`: at least one of the two lists, each 1–1,000 valid names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    users: Option<Vec<String>>,
    topics: Option<Vec<String>>,
}

/// A validated presence query (duplicates removed, order kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub users: Vec<String>,
    pub topics: Vec<String>,
}

/// Parse and validate a presence query body.
pub fn parse_query(body: &[u8]) -> Result<Query, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "invalid_json", e.to_string()))?;
    if !value.is_object() {
        // serde would take a struct written as an array of its fields.
        return Err(ApiError::new(
            400,
            "invalid_json",
            "the body must be a JSON object with \"users\" and/or \"topics\"",
        ));
    }
    let q: QueryBody = serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("unknown field") {
            ApiError::new(400, "unknown_field", msg)
        } else {
            ApiError::new(400, "invalid_json", msg)
        }
    })?;
    if q.users.is_none() && q.topics.is_none() {
        return Err(ApiError::new(
            400,
            "missing_field",
            "give \"users\" or \"topics\" (or both)",
        ));
    }
    let list = |field: &str, v: Option<Vec<String>>| -> Result<Vec<String>, ApiError> {
        let Some(v) = v else { return Ok(Vec::new()) };
        if v.is_empty() {
            return Err(ApiError::new(
                400,
                "empty_list",
                format!("\"{field}\" must name 1 to {MAX_QUERY} entries"),
            ));
        }
        if v.len() > MAX_QUERY {
            return Err(ApiError::new(
                400,
                "too_many",
                format!("\"{field}\" names {} entries; at most {MAX_QUERY}", v.len()),
            ));
        }
        if let Some((i, bad)) = v.iter().enumerate().find(|(_, s)| !valid_name(s)) {
            return Err(ApiError::new(
                400,
                if field == "users" {
                    "invalid_user_id"
                } else {
                    "invalid_topic"
                },
                format!("\"{field}\"[{i}] ({bad:?}) must be 1-128 bytes of [A-Za-z0-9._:@-]"),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(v.len());
        Ok(v.into_iter().filter(|s| seen.insert(s.clone())).collect())
    };
    Ok(Query {
        users: list("users", q.users)?,
        topics: list("topics", q.topics)?,
    })
}

/// One live connection of a user, as `GET /api/user/sse/connections` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub conn_id: String,
    pub pod: String,
    pub topics: Vec<String>,
    pub connected_ms: u64,
    pub heartbeat_ms: u64,
}

impl ConnInfo {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "connectionId": self.conn_id,
            "podId": self.pod,
            "topics": self.topics,
            "connectedAt": self.connected_ms,
            "lastHeartbeat": self.heartbeat_ms,
        })
    }
}

/// The answer to a presence query: live connections per user and subscribed
/// streams per topic, in the query's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub users: Vec<(String, u64)>,
    pub topics: Vec<(String, u64)>,
}

impl Counts {
    pub fn to_json(&self) -> serde_json::Value {
        let map = |v: &[(String, u64)]| {
            v.iter()
                .map(|(k, n)| (k.clone(), json!(n)))
                .collect::<serde_json::Map<_, _>>()
        };
        json!({ "users": map(&self.users), "topics": map(&self.topics) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_back_within_the_linger_never_went_offline() {
        let mut l = Linger::default();
        assert!(l.came("u"), "first connection: online");
        l.left("u", 1_000);
        assert!(l.due(5_999, 5_000).is_empty(), "still lingering");
        assert!(!l.came("u"), "back in time: no transition");
        l.left("u", 7_000);
        assert_eq!(l.due(12_000, 5_000), vec![("u".into(), 7_000)]);
        assert!(l.is_empty());
        assert!(l.came("u"), "after an offline, online again");
    }

    #[test]
    fn queries_are_validated() {
        let q = parse_query(br#"{"users":["a","b","a"],"topics":["t"]}"#).unwrap();
        assert_eq!(q.users, vec!["a", "b"]);
        assert_eq!(q.topics, vec!["t"]);
        let code = |b: &[u8]| parse_query(b).unwrap_err().code;
        assert_eq!(code(b"{}"), "missing_field");
        assert_eq!(code(br#"{"users":[]}"#), "empty_list");
        assert_eq!(code(br#"{"users":["a b"]}"#), "invalid_user_id");
        assert_eq!(code(br##"{"topics":["#presence"]}"##), "invalid_topic");
        assert_eq!(code(br#"{"user":["a"]}"#), "unknown_field");
        assert_eq!(code(b"nope"), "invalid_json");
        assert_eq!(code(br#"[["a"],["t"]]"#), "invalid_json");
        let many = format!(
            "{{\"users\":[{}]}}",
            (0..1001)
                .map(|i| format!("\"u{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(code(many.as_bytes()), "too_many");
    }
}
