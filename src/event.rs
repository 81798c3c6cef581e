//! A published event as it travels through herald: framed once, shared by `Arc`
//! between shards and by `Bytes` refcount between connections.

use bytes::Bytes;

/// Who receives an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every open connection.
    All,
    /// Every open connection of each of these users.
    Users(Box<[Box<str>]>),
    /// Every connection subscribed to at least one of these topics.
    Topics(Box<[Box<str>]>),
}

impl Target {
    /// The metrics label of this kind of target.
    pub fn label(&self) -> &'static str {
        match self {
            Target::All => "all",
            Target::Users(_) => "users",
            Target::Topics(_) => "topics",
        }
    }

    /// Whether a connection of `user` subscribed to `topics` receives this event.
    pub fn matches<'a>(&self, user: &str, mut topics: impl Iterator<Item = &'a str>) -> bool {
        match self {
            Target::All => true,
            Target::Users(users) => users.iter().any(|u| &**u == user),
            Target::Topics(wanted) => topics.any(|t| wanted.iter().any(|w| &**w == t)),
        }
    }
}

/// One published event, framed.
#[derive(Debug)]
pub struct Event {
    /// Strictly increasing id; also the SSE `id:`.
    pub id: u64,
    pub target: Target,
    /// The complete SSE frame (`id:`, `event:`, `data:` lines, blank line).
    pub frame: Bytes,
    /// [`crate::clock::now_ns`] at publish, for the publish-to-socket histogram.
    pub published_ns: u64,
}
