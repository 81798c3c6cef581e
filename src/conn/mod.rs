//! Connections of one shard: the slab-indexed table with its subscription indexes
//! (`table`) and each connection's bounded outbound queue (`queue`).
pub mod queue;
pub mod table;

pub use queue::{OutQueue, Overflow, QueueLimits, QueuedFrame};
pub use table::{Conn, ConnState, ConnTable, Delivery};

/// Why a connection ended; the `reason` label of `herald_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away (EOF or a socket error).
    ClientClosed,
    /// Its outbound queue overflowed.
    SlowConsumer,
    /// A new connect with the same user and connection id took its place.
    Replaced,
    /// `POST /api/user/sse/disconnect`.
    Disconnected,
    /// The pod is shutting down.
    Shutdown,
    /// A TLS 1.2 session's AES-GCM key sealed all the records it may (no key
    /// update exists in TLS 1.2): the stream ends with `close_notify` and its
    /// client resumes on a new session.
    TlsKeyLimit,
}

impl CloseReason {
    pub const ALL: [CloseReason; 6] = [
        CloseReason::ClientClosed,
        CloseReason::SlowConsumer,
        CloseReason::Replaced,
        CloseReason::Disconnected,
        CloseReason::Shutdown,
        CloseReason::TlsKeyLimit,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Replaced => "replaced",
            CloseReason::Disconnected => "disconnected",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TlsKeyLimit => "tls_key_limit",
        }
    }
}
