//! Writing a connection's queue to its socket.
//!
//! [`SseWriter`] is the lean path used for every stream opened as the first request
//! on a connection: a hand-written future that owns only the socket and the slab
//! key. It writes up to [`MAX_SLICES`] queued frames per `writev` (a burst leaves
//! in one syscall), parks its waker in the table when the queue is empty, and
//! watches the read side for the client going away. An idle stream thus costs its
//! socket, a small task and its table entry, with no per-connection read or write
//! buffers.
//!
//! [`QueueBody`] serves the rare stream opened on a keep-alive connection that
//! hyper already serves: an `http_body::Body` over the same queue.
//!
//! Both end through [`StreamGuard`], which removes the table entry, tells the
//! broker and counts the close exactly once.

use std::cell::Cell;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Shard;
use crate::clock;
use crate::conn::{CloseReason, ConnState};

/// Frames handed to one `writev`.
pub const MAX_SLICES: usize = 64;

/// Ends a stream exactly once: table entry, registry, counters.
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
            if !matches!(reason, CloseReason::Disconnected) {
                self.shard
                    .shared
                    .broker
                    .closed(&conn.user, conn.serial);
            }
            metrics::counter!(crate::metrics::CONNECTIONS_CLOSED, "reason" => reason.label())
                .increment(1);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.finish(CloseReason::ClientClosed);
    }
}

/// The lean SSE writer (see the module doc).
pub struct SseWriter {
    io: TcpStream,
    guard: StreamGuard,
}

enum Step {
    Continue,
    Park,
    End(CloseReason),
}

impl SseWriter {
    pub fn new(io: TcpStream, guard: StreamGuard) -> Self {
        SseWriter { io, guard }
    }

    /// Watch for EOF; anything the client sends on an SSE stream is discarded.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        let mut scratch = [0u8; 64];
        for _ in 0..16 {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return true,
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return true,
                Poll::Pending => return false,
            }
        }
        // A client that keeps sending: come back later rather than loop here.
        cx.waker().wake_by_ref();
        false
    }

    fn write_once(&mut self, cx: &mut Context<'_>) -> Step {
        let shard = &self.guard.shard;
        let mut table = shard.table.borrow_mut();
        let Some(conn) = table
            .get_mut(self.guard.key)
            .filter(|c| c.serial == self.guard.serial)
        else {
            return Step::End(CloseReason::ClientClosed);
        };
        if conn.queue.is_empty() {
            if let ConnState::Closing(reason) = conn.state {
                return Step::End(reason);
            }
            match &conn.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => conn.waker = Some(cx.waker().clone()),
            }
            return Step::Park;
        }
        let written = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = conn.queue.slices(&mut slices);
            Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n])
        };
        match written {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Step::End(CloseReason::ClientClosed),
            Poll::Ready(Ok(n)) => {
                let now = clock::now_ns();
                conn.queue
                    .consume(n, |published| shard.local.frame_written(published, now));
                Step::Continue
            }
            Poll::Pending => {
                // The socket will wake us when writable, but a client that stopped
                // reading never makes it so: the table must be able to wake us too,
                // to close this stream as a slow consumer.
                match &conn.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => conn.waker = Some(cx.waker().clone()),
                }
                Step::Park
            }
        }
    }
}

impl Future for SseWriter {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.poll_client_gone(cx) {
            this.guard.finish(CloseReason::ClientClosed);
            return Poll::Ready(());
        }
        // Bounded so one busy stream cannot monopolise the shard.
        for _ in 0..32 {
            match this.write_once(cx) {
                Step::Continue => continue,
                Step::Park => return Poll::Pending,
                Step::End(reason) => {
                    // FIN after the last frame (never RST, which could discard it).
                    let _ = socket2::SockRef::from(&this.io).shutdown(std::net::Shutdown::Write);
                    this.guard.finish(reason);
                    return Poll::Ready(());
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
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
