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
    /// Strictly increasing in the order this pod hands events out; the SSE `id:`
    /// too, except in a cluster with partitions (then the frames carry ids made of
    /// two log positions, see [`crate::cluster`]).
    pub id: u64,
    pub target: Target,
    /// The complete SSE frame (`id:`, `event:`, `data:` lines, blank line).
    pub frame: Bytes,
    /// Cluster with partitions, broadcast and topic events: the frame for the
    /// connections of each partition (their ids carry that partition's position);
    /// empty otherwise.
    pub frames: Box<[Bytes]>,
    /// [`crate::clock::now_ns`] at publish, for the publish-to-socket histogram.
    pub published_ns: u64,
    /// Cluster with partitions: the ordered source the event came from (0 the
    /// broadcasts, 1 + k partition k) and its position there.
    pub origin: Option<(u16, u64)>,
}

impl Event {
    /// An event with one frame for every connection.
    pub fn new(id: u64, target: Target, frame: Bytes, published_ns: u64) -> Event {
        Event {
            id,
            target,
            frame,
            frames: Box::default(),
            published_ns,
            origin: None,
        }
    }

    /// The frame for a connection of `partition`.
    #[inline]
    pub fn frame_for(&self, partition: u8) -> &Bytes {
        self.frames.get(partition as usize).unwrap_or(&self.frame)
    }
}
