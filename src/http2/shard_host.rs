//! The shard as the HTTP/2 protocol core's [`Host`]: requests go to
//! herald's routes (polled once in place, or in a task of their own that
//! answers through the connection's mailbox, aborted when its stream is
//! reset), request bodies count against the shard's `--body-budget`, and SSE
//! streams are written from their queues in the shard's table.

use std::cell::RefCell;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Body;

use super::frame::{put_head, DATA};
use super::host::{Answer, Host, Intake, Pull};
use crate::conn::{CloseReason, ConnState};
use crate::error::ApiError;
use crate::http::routes::{self, HeraldBody};
use crate::shard::stream::StreamGuard;
use crate::shard::Shard;

/// Answers of the routes that waited, for the connection's task.
#[derive(Default)]
pub(super) struct Mailbox {
    pub answers: Vec<(u32, Response<HeraldBody>)>,
    pub waker: Option<Waker>,
}

/// The shard, as the protocol core's [`Host`].
pub(super) struct ShardHost {
    pub shard: Rc<Shard>,
    /// Routes that wait and their mailbox, while there are any.
    pub waiting: Option<Box<Waiting>>,
}

/// Routes that wait, by stream (aborted when their stream is reset), and
/// where their answers come.
pub(super) struct Waiting {
    pub mailbox: Rc<RefCell<Mailbox>>,
    pub tasks: Vec<(u32, tokio::task::AbortHandle)>,
}

impl Host for ShardHost {
    fn intake(&mut self, req: &http::request::Parts) -> Intake {
        match routes::intake(&self.shard, req) {
            routes::Intake::Body => Intake::Body,
            routes::Intake::NoBody => Intake::NoBody,
            routes::Intake::Refuse(resp) => Intake::Refuse(to_answer(resp)),
        }
    }

    /// Most routes answer at once (a connect on the embedded bus, a publish,
    /// the probes): the route's future is polled here and freed before the
    /// next request allocates its own. One that waits (Redis, a full round,
    /// admission) goes on in a task of its own and answers through the
    /// mailbox. Were every route a task, the futures of a burst of connects
    /// (~2 KB each) would all be alive at once, and the heap they leave
    /// behind would stay in the process's memory next to the streams.
    fn dispatch(&mut self, stream: u32, req: http::request::Parts, body: Bytes) -> Option<Answer> {
        let req = Request::from_parts(req, Full::new(body));
        let mut route = Box::pin(routes::handle(self.shard.clone(), req));
        // The no-op waker only stands in for this first poll: a task is always
        // polled once it is spawned, and a route registers its wakers anew on
        // every poll.
        let mut noop = Context::from_waker(Waker::noop());
        if let Poll::Ready(Ok(resp)) = route.as_mut().poll(&mut noop) {
            return Some(to_answer(resp));
        }
        let waiting = self.waiting.get_or_insert_with(|| {
            Box::new(Waiting {
                mailbox: Rc::new(RefCell::new(Mailbox::default())),
                tasks: Vec::new(),
            })
        });
        let mailbox = waiting.mailbox.clone();
        let task = tokio::task::spawn_local(async move {
            let Ok(resp) = route.await;
            let mut m = mailbox.borrow_mut();
            m.answers.push((stream, resp));
            if let Some(w) = m.waker.take() {
                w.wake();
            }
        });
        waiting.tasks.push((stream, task.abort_handle()));
        None
    }

    fn cancel(&mut self, stream: u32) {
        let Some(w) = &mut self.waiting else {
            return;
        };
        if let Some(at) = w.tasks.iter().position(|(s, _)| *s == stream) {
            // What the route held (an admission slot, a publish in flight)
            // goes with it, as when a client closes an HTTP/1.1 connection.
            w.tasks.swap_remove(at).1.abort();
        }
    }

    fn error(&mut self, req: Option<&http::request::Parts>, e: &ApiError) -> Answer {
        to_answer(routes::error_for(&self.shard, req.map(|r| &r.headers), e))
    }

    fn body_room(&self) -> bool {
        self.shard.body_room()
    }

    fn body_bytes(&mut self, delta: i64) {
        self.shard.body_bytes(delta);
    }

    fn pull(
        &mut self,
        key: u32,
        serial: u64,
        stream: u32,
        room: usize,
        out: &mut Vec<u8>,
        now: u64,
    ) -> Pull {
        let shard = &self.shard;
        let mut table = shard.table.borrow_mut();
        let Some(conn) = table.get_mut(key as usize).filter(|c| c.serial == serial) else {
            return Pull::Gone;
        };
        match conn.state {
            // Closed for any reason but the drain: it ends now (its queue was
            // dropped). A drain's last frames (the retry: hint) go out first.
            ConnState::Closing(reason) if reason != CloseReason::Shutdown => Pull::End(reason),
            ConnState::Closing(reason) if conn.queue.is_empty() => Pull::End(reason),
            _ if conn.queue.is_empty() || room == 0 => Pull::Idle,
            _ => {
                let taken = put_queued(out, stream, &conn.queue, room);
                conn.queue
                    .consume(taken, |published| shard.local.frame_written(published, now));
                Pull::Wrote {
                    taken,
                    more: !conn.queue.is_empty() || matches!(conn.state, ConnState::Closing(_)),
                }
            }
        }
    }

    fn end_events(&mut self, key: u32, serial: u64, reason: CloseReason) {
        StreamGuard::new(self.shard.clone(), key as usize, serial).finish(reason);
    }
}

/// A response of the routes as the protocol core takes it.
pub(super) fn to_answer(resp: Response<HeraldBody>) -> Answer {
    let (parts, body) = resp.into_parts();
    match body {
        Either::Right(events) => {
            let (key, serial) = events.into_stream();
            Answer::Events {
                headers: parts.headers,
                key: key as u32,
                serial,
            }
        }
        Either::Left(full) => Answer::Full {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: full_bytes(full),
        },
    }
}

/// The bytes of a complete response body.
fn full_bytes(mut full: Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut full).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// One DATA frame of up to `room` bytes from the front of `queue`; returns
/// how many bytes it took.
fn put_queued(
    out: &mut Vec<u8>,
    stream: u32,
    queue: &crate::conn::queue::OutQueue,
    room: usize,
) -> usize {
    let head_at = out.len();
    put_head(out, 0, DATA, 0, stream);
    let mut slices = [IoSlice::new(&[]); 16];
    let n = queue.slices(&mut slices);
    let mut taken = 0;
    for slice in &slices[..n] {
        let k = slice.len().min(room - taken);
        out.extend_from_slice(&slice[..k]);
        taken += k;
        if taken == room {
            break;
        }
    }
    let len = (taken as u32).to_be_bytes();
    out[head_at..head_at + 3].copy_from_slice(&len[1..]);
    taken
}
