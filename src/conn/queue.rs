//! A connection's bounded outbound queue and its slow-consumer policy.
//!
//! Entries are shared frames (`Bytes`: a refcount, never a copy of the payload) with
//! the time they were published. The queue is bounded both in frames and in bytes;
//! a push that would exceed either bound is refused and the caller closes the
//! connection as a slow consumer, so one stalled client cannot hold memory or hold
//! up anyone else. A freshly resumed connection may start above the bound (its
//! replay); it is then allowed that much until it has drained below the bound.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

/// One queued frame: the bytes still to write and when its event was published
/// (0 for frames that are not events: heartbeats, `retry:`, `CONNECTED`).
#[derive(Debug, Clone)]
pub struct QueuedFrame {
    pub bytes: Bytes,
    pub published_ns: u64,
}

/// The push was refused: the queue is full.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

/// Limits of one queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
}

/// Frames written by one [`OutQueue::consume`] call.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Consumed {
    /// Frames fully written.
    pub frames: usize,
}

/// The bounded outbound queue of one connection.
///
/// The front frame lives inline (`head`), the rest in a ring that is allocated only
/// when more than one frame waits: an idle stream that gets a heartbeat now and then
/// never holds a heap buffer for its queue.
#[derive(Debug, Default)]
pub struct OutQueue {
    head: Option<QueuedFrame>,
    /// Frames after `head`; empty whenever `head` is `None`.
    rest: VecDeque<QueuedFrame>,
    /// Bytes queued (u32: the byte bound is far below 4 GiB; keeps `Conn` small).
    bytes: u32,
    /// Extra allowance granted to an initial replay; drops to 0 once drained.
    allowance: u32,
}

impl OutQueue {
    pub fn len(&self) -> usize {
        self.head.is_some() as usize + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Bytes still to write.
    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }

    fn append(&mut self, frame: QueuedFrame) {
        self.bytes = self.bytes.saturating_add(frame.bytes.len() as u32);
        if self.head.is_none() {
            self.head = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    /// Push without checking limits, growing the allowance: used for the frames a
    /// connection starts with (`CONNECTED`, pending events, a resume replay).
    pub fn push_initial(&mut self, frame: QueuedFrame) {
        self.allowance += 1;
        self.append(frame);
    }

    /// Push a live frame, or refuse it when the queue is full.
    #[inline]
    pub fn push(&mut self, frame: QueuedFrame, limits: QueueLimits) -> Result<(), Overflow> {
        let len = frame.bytes.len();
        if self.len() >= limits.max_frames + self.allowance as usize
            || (self.bytes as usize + len > limits.max_bytes
                && self.allowance == 0
                && !self.is_empty())
        {
            return Err(Overflow);
        }
        self.append(frame);
        Ok(())
    }

    /// The bytes of the front frame still to write.
    pub fn front(&self) -> Option<&[u8]> {
        self.head.as_ref().map(|f| &f.bytes[..])
    }

    /// Fill `out` with slices of the queued bytes, front first; returns how many.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, frame) in out.iter_mut().zip(self.head.iter().chain(self.rest.iter())) {
            *slot = IoSlice::new(&frame.bytes);
            n += 1;
        }
        n
    }

    /// Account for `written` bytes having left through the socket, calling
    /// `on_frame` with the publish time of each frame fully written.
    pub fn consume(&mut self, mut written: usize, mut on_frame: impl FnMut(u64)) -> Consumed {
        let mut done = Consumed::default();
        self.bytes -= (written as u32).min(self.bytes);
        while written > 0 {
            let Some(front) = self.head.as_mut() else {
                break;
            };
            let len = front.bytes.len();
            if written >= len {
                written -= len;
                on_frame(front.published_ns);
                self.head = self.rest.pop_front();
                done.frames += 1;
            } else {
                // Partial write: move the start of the shared buffer, no copy.
                front.bytes.advance(written);
                written = 0;
            }
        }
        self.allowance = self.allowance.saturating_sub(done.frames as u32);
        if self.rest.is_empty() && self.rest.capacity() > 64 {
            // A burst or a replay grew the ring; give the memory back.
            self.rest = VecDeque::new();
        }
        done
    }

    /// Give the ring's memory back when nothing waits in it. Called once per
    /// heartbeat interval: a burst or a replay grew the ring (up to 64 frames,
    /// 2.5 KB, are kept by [`OutQueue::consume`] so that a busy stream does not
    /// allocate per burst); kept for good, that was memory every stream that
    /// ever had a replay held after the storm. A stream busy again allocates
    /// it again at most once per interval.
    pub fn release_spare(&mut self) {
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
    }

    /// Take the front frame whole (for writers that hand frames on one by one).
    pub fn pop_front(&mut self) -> Option<QueuedFrame> {
        let f = self.head.take()?;
        self.head = self.rest.pop_front();
        self.bytes -= (f.bytes.len() as u32).min(self.bytes);
        self.allowance = self.allowance.saturating_sub(1);
        Some(f)
    }

    /// Drop everything queued (the connection is closing); returns frames dropped.
    pub fn clear(&mut self) -> usize {
        let n = self.len();
        self.head = None;
        self.rest = VecDeque::new();
        self.bytes = 0;
        self.allowance = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &'static str) -> QueuedFrame {
        QueuedFrame {
            bytes: Bytes::from_static(s.as_bytes()),
            published_ns: 1,
        }
    }

    const L: QueueLimits = QueueLimits {
        max_frames: 2,
        max_bytes: 10,
    };

    #[test]
    fn the_rings_memory_goes_back_once_it_is_empty() {
        let mut q = OutQueue::default();
        for _ in 0..30 {
            q.push_initial(f("replay"));
        }
        assert!(q.rest.capacity() >= 29);
        q.release_spare();
        assert!(q.rest.capacity() >= 29, "kept while frames wait in it");
        while q.pop_front().is_some() {}
        assert!(q.rest.capacity() > 0, "consume keeps a small ring");
        q.release_spare();
        assert_eq!(q.rest.capacity(), 0, "an empty ring gives its memory back");
    }

    #[test]
    fn bounded_in_frames() {
        let mut q = OutQueue::default();
        q.push(f("a"), L).unwrap();
        q.push(f("b"), L).unwrap();
        assert_eq!(q.push(f("c"), L), Err(Overflow));
    }

    #[test]
    fn bounded_in_bytes_but_one_large_frame_fits_an_empty_queue() {
        let mut q = OutQueue::default();
        q.push(f("0123456789AB"), L).unwrap();
        assert_eq!(q.push(f("x"), L), Err(Overflow));
    }

    #[test]
    fn partial_writes_advance_without_losing_bytes() {
        let mut q = OutQueue::default();
        q.push(f("abc"), L).unwrap();
        q.push(f("de"), L).unwrap();
        let mut seen = 0;
        assert_eq!(q.consume(2, |_| seen += 1).frames, 0);
        let mut s = [IoSlice::new(&[]); 4];
        let n = q.slices(&mut s);
        let joined: Vec<u8> = s[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined, b"cde");
        assert_eq!(q.consume(3, |_| seen += 1).frames, 2);
        assert_eq!(seen, 2);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn initial_frames_get_an_allowance_until_drained() {
        let mut q = OutQueue::default();
        for _ in 0..5 {
            q.push_initial(f("abcd"));
        }
        q.push(f("x"), L).unwrap();
        q.consume(20, |_| ());
        assert_eq!(q.len(), 1);
        q.push(f("y"), L).unwrap();
        assert_eq!(q.push(f("z"), L), Err(Overflow));
    }
}
