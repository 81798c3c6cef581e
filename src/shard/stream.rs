//! Streams served through hyper, and the end of every stream.
//!
//! Lean streams are written by the shard's flush ([`super::io`]). A stream opened
//! on a keep-alive connection that hyper already serves is a [`QueueBody`] over
//! the same queue instead, ended by its [`StreamGuard`]. Both kinds report their
//! end through [`closed`], which tells the broker and counts it.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::Shard;
use crate::clock;
use crate::conn::{CloseReason, ConnState};

/// A stream has ended (its entry is out of the table): unregister it, count it.
pub fn closed<'a>(
    shard: &Shard,
    user: &str,
    serial: u64,
    topics: impl IntoIterator<Item = &'a str>,
    reason: CloseReason,
) {
    // A disconnect already unregistered it.
    let conn_id = match reason {
        CloseReason::Disconnected => None,
        _ => shard.shared.broker.closed(user, serial),
    };
    let topics: smallvec::SmallVec<[&str; 4]> = topics.into_iter().collect();
    shard
        .shared
        .registry
        .ended(user, conn_id.as_deref(), serial, &topics);
    shard.counters.closed(reason).increment(1);
}

/// Ends a hyper-served stream exactly once: table entry, registry, counters.
pub struct StreamGuard {
    shard: Rc<Shard>,
    key: usize,
    serial: u64,
    done: Cell<bool>,
}

impl StreamGuard {
    pub fn new(shard: Rc<Shard>, key: usize, serial: u64) -> Self {
        StreamGuard {
            shard,
            key,
            serial,
            done: Cell::new(false),
        }
    }

    pub fn finish(&self, fallback: CloseReason) {
        if self.done.replace(true) {
            return;
        }
        let mut table = self.shard.table.borrow_mut();
        let Some(conn) = table.get(self.key).filter(|c| c.serial == self.serial) else {
            return;
        };
        let reason = match conn.state {
            ConnState::Closing(r) => r,
            ConnState::Open => fallback,
        };
        if let Some(conn) = table.remove(self.key) {
            self.shard.table_changed(&table);
            drop(table);
            closed(&self.shard, &conn.user, conn.serial, conn.topics(), reason);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.finish(CloseReason::ClientClosed);
    }
}

/// A stream served through hyper (see the module doc).
pub struct QueueBody {
    guard: StreamGuard,
}

impl QueueBody {
    pub fn new(guard: StreamGuard) -> Self {
        QueueBody { guard }
    }

    /// The stream's table key and serial, for a transport that writes it
    /// itself (herald's HTTP/2, [`crate::http2`]), which then ends it.
    pub fn into_stream(self) -> (usize, u64) {
        self.guard.done.set(true);
        (self.guard.key, self.guard.serial)
    }
}

impl Body for QueueBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let shard = &this.guard.shard;
        let mut table = shard.table.borrow_mut();
        let Some(conn) = table
            .get_mut(this.guard.key)
            .filter(|c| c.serial == this.guard.serial)
        else {
            return Poll::Ready(None);
        };
        let mut frame = None;
        if let Some(bytes) = conn.queue.pop_front() {
            let now = clock::now_ns();
            shard.local.frame_written(bytes.published_ns, now);
            frame = Some(bytes.bytes);
        }
        if let Some(bytes) = frame {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        if let ConnState::Closing(reason) = conn.state {
            drop(table);
            this.guard.finish(reason);
            return Poll::Ready(None);
        }
        conn.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
