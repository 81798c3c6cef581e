//! Cross-shard hand-off: one lock-free queue (crossbeam `SegQueue`) per shard plus
//! a wake-up (`AtomicWaker`). Publishers push an `Arc<Event>` (framed once) to each
//! shard that may hold a target; the shard's fan-out task drains its inbox and
//! queues the shared bytes on its connections.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::SegQueue;
use tokio::sync::oneshot;

use crate::conn::CloseReason;
use crate::event::Event;

/// Where a connection lives: its shard, slab key and serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLoc {
    pub shard: u16,
    pub key: u32,
    pub serial: u64,
}

/// A message to one shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// Deliver this event to the matching connections.
    Event(Arc<Event>),
    /// Queue this frame (no id) on every open connection of the shard.
    Unnumbered(bytes::Bytes),
    /// Queue this frame (no id) on the connection at `loc` (if `loc.serial`
    /// still matches).
    UnnumberedTo { loc: ConnLoc, frame: bytes::Bytes },
    /// End the connection at `loc` (if `loc.serial` still matches); the ack says
    /// whether it was there.
    Close {
        loc: ConnLoc,
        reason: CloseReason,
        ack: Option<oneshot::Sender<bool>>,
    },
}

struct Inbox {
    queue: SegQueue<ShardMsg>,
    waker: AtomicWaker,
}

/// The inboxes of every shard.
pub struct Hub {
    inboxes: Box<[Inbox]>,
}

impl Hub {
    pub fn new(shards: usize) -> Self {
        Hub {
            inboxes: (0..shards)
                .map(|_| Inbox {
                    queue: SegQueue::new(),
                    waker: AtomicWaker::new(),
                })
                .collect(),
        }
    }

    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Queue `msg` for `shard` without waking it (see [`Hub::wake`]): publishers
    /// push under the sequencing lock and wake after releasing it.
    pub fn push(&self, shard: usize, msg: ShardMsg) {
        self.inboxes[shard].queue.push(msg);
    }

    pub fn wake(&self, shard: usize) {
        self.inboxes[shard].waker.wake();
    }

    /// Push and wake.
    pub fn send(&self, shard: usize, msg: ShardMsg) {
        self.push(shard, msg);
        self.wake(shard);
    }

    /// Wait until `shard`'s inbox is not empty (called by that shard only).
    pub async fn ready(&self, shard: usize) {
        let inbox = &self.inboxes[shard];
        poll_fn(|cx| {
            if !inbox.queue.is_empty() {
                return Poll::Ready(());
            }
            inbox.waker.register(cx.waker());
            if inbox.queue.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Take the next message for `shard`.
    pub fn pop(&self, shard: usize) -> Option<ShardMsg> {
        self.inboxes[shard].queue.pop()
    }
}
