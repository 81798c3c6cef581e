//! herald's side of its streams: complete requests handed to the routes
//! (or held while answers drain), answers' heads, and DATA within the
//! flow-control windows — answers' bodies and SSE streams, moved from their
//! queues, round robin, up to one record's worth per write turn.

use super::frame::*;
use super::host::{Answer, Host, Pull};
use super::limits::{ANSWER_BUDGET, ROUTE_COST};
use super::proto::Proto;
use super::streams::{AtEnd, Ended, Outgoing, Request, StreamState};
use crate::conn::CloseReason;
use crate::tls::record::MAX_PLAINTEXT;

/// Plaintext gathered for one write: one full record, as the HTTP/1.1 TLS path
/// seals (more goes in further writes while the kernel takes everything).
pub const WRITE_BUDGET: usize = MAX_PLAINTEXT;

/// What a write turn left.
#[derive(Debug, Default, Clone, Copy)]
pub struct Produced {
    /// A stream has more to send now (the budget cut it short).
    pub more: bool,
    /// An SSE stream ended as a slow consumer.
    pub slow: bool,
}

impl Proto {
    /// The routes' answer to stream `id`, which came later (see
    /// [`Host::dispatch`]).
    pub fn answer<H: Host>(&mut self, host: &mut H, id: u32, answer: Answer, now: u64) {
        let at = self
            .streams
            .iter()
            .position(|s| s.id == id && matches!(s.state, StreamState::Routing { .. }));
        match at {
            // Not once the connection failed: nothing but its GOAWAY may
            // follow (RFC 9113 §5.4.1), and `conn` still hands over the
            // answers that came with the input that failed it. The stream
            // stays with the routes until `end_all` lets it go.
            Some(i) if self.failed().is_none() => self.answered(host, i, answer, now),
            _ => {
                // Reset meanwhile (or failed): an SSE stream opened for it
                // ends at once.
                if let Answer::Events { key, serial, .. } = answer {
                    host.end_events(key, serial, CloseReason::ClientClosed);
                }
            }
        }
        self.settle(host, now);
    }

    fn answered<H: Host>(&mut self, host: &mut H, i: usize, answer: Answer, now: u64) {
        let StreamState::Routing { head, held, size } = self.streams[i].state else {
            return;
        };
        self.answers -= ROUTE_COST as u32;
        self.heads -= size;
        self.release(host, held as usize);
        self.start_answer(host, i, answer, head, now);
    }

    /// A complete request: to the routes, or held while answers drain.
    pub(super) fn begin<H: Host>(&mut self, host: &mut H, i: usize, req: Request, now: u64) {
        if self.answers as usize + ROUTE_COST > ANSWER_BUDGET {
            self.streams[i].state = StreamState::Queued(Box::new(req));
            return;
        }
        self.dispatch(host, i, req, now);
    }

    fn dispatch<H: Host>(&mut self, host: &mut H, i: usize, req: Request, now: u64) {
        let id = self.streams[i].id;
        self.streams[i].state = StreamState::Routing {
            head: req.head,
            held: req.body.len() as u32,
            size: req.size,
        };
        self.answers += ROUTE_COST as u32;
        if let Some(answer) = host.dispatch(id, req.req, req.body) {
            self.answered(host, i, answer, now);
        }
    }

    /// Serve held requests, oldest first, while answers leave room.
    pub(super) fn run_queued<H: Host>(&mut self, host: &mut H, now: u64) {
        while self.answers as usize + ROUTE_COST <= ANSWER_BUDGET {
            let Some(i) = self
                .streams
                .iter()
                .position(|s| matches!(s.state, StreamState::Queued(_)))
            else {
                return;
            };
            let StreamState::Queued(q) =
                std::mem::replace(&mut self.streams[i].state, StreamState::Receiving)
            else {
                return;
            };
            self.dispatch(host, i, *q, now);
        }
    }

    /// Send the head of `answer` on stream `i` and set what follows.
    pub(super) fn start_answer<H: Host>(
        &mut self,
        host: &mut H,
        i: usize,
        answer: Answer,
        head: bool,
        now: u64,
    ) {
        let id = self.streams[i].id;
        let max_frame = self.peer_max_frame as usize;
        let mut block = Vec::with_capacity(128);
        if std::mem::take(&mut self.table_update_due) {
            // herald's table is 0 (it never indexes), said at the start of the
            // first block after the client's SETTINGS_HEADER_TABLE_SIZE.
            put_table_size_update(&mut block, 0);
        }
        let state = match answer {
            Answer::Events {
                headers,
                key,
                serial,
            } => {
                header_block(&mut block, 200, &headers, None);
                put_headers(&mut self.out, id, &block, false, max_frame);
                StreamState::Events { key, serial }
            }
            Answer::Full {
                status,
                headers,
                body,
            } => {
                // 204 and 304 carry no content-length (RFC 9110 §8.6).
                let length = (!matches!(status, 204 | 304)).then_some(body.len() as u64);
                header_block(&mut block, status, &headers, length);
                // A HEAD answer carries no body (RFC 9110 §9.3.2).
                let end = head || body.is_empty();
                put_headers(&mut self.out, id, &block, end, max_frame);
                if end {
                    StreamState::Done(Ended::Normally)
                } else {
                    self.answers += body.len() as u32;
                    StreamState::Sending(Box::new(Outgoing {
                        data: body,
                        sent: 0,
                        since: now,
                    }))
                }
            }
        };
        self.streams[i].state = state;
        self.answer_done(host, i);
    }

    /// After herald's side of stream `i` ended: when the client is still
    /// sending a request answered early, it is told to stop (RST_STREAM
    /// NO_ERROR, §8.1).
    fn answer_done<H: Host>(&mut self, host: &mut H, i: usize) {
        let s = &self.streams[i];
        if matches!(s.state, StreamState::Done(_))
            && s.recv
                .as_ref()
                .is_some_and(|r| matches!(r.at_end, AtEnd::Drop))
        {
            put_rst(&mut self.out, s.id, NO_ERROR);
            self.end_stream(host, i, Ended::ByUs, CloseReason::ClientClosed);
        }
    }

    /// Move what the streams have into DATA frames in `out`, within the
    /// windows, up to [`WRITE_BUDGET`].
    pub fn produce<H: Host>(&mut self, host: &mut H, out: &mut Vec<u8>, now: u64) -> Produced {
        let mut done = Produced::default();
        let n = self.streams.len();
        if n == 0 || self.failed().is_some() {
            return done;
        }
        let max_frame = (self.peer_max_frame as usize).min(MAX_PLAINTEXT);
        let mut ended: smallvec::SmallVec<[(u32, u64, CloseReason); 4]> = smallvec::SmallVec::new();
        let mut finished: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
        let start = self.rr as usize % n;
        for k in 0..n {
            let idx = (start + k) % n;
            if out.len() >= WRITE_BUDGET {
                self.rr = idx as u16;
                done.more = true;
                break;
            }
            let s = &mut self.streams[idx];
            match &mut s.state {
                StreamState::Sending(o) => {
                    while o.sent < o.data.len() {
                        let room = room(self.send_window, s.window.into(), max_frame, out.len());
                        if room == 0 {
                            break;
                        }
                        let chunk = room.min(o.data.len() - o.sent);
                        let last = o.sent + chunk == o.data.len();
                        put_head(out, chunk, DATA, if last { END_STREAM } else { 0 }, s.id);
                        out.extend_from_slice(&o.data[o.sent..o.sent + chunk]);
                        o.sent += chunk;
                        o.since = now;
                        self.send_window -= chunk as i64;
                        self.answers -= chunk as u32;
                        s.window -= chunk as i32;
                    }
                    if o.sent == o.data.len() {
                        s.state = StreamState::Done(Ended::Normally);
                        finished.push(idx);
                    }
                }
                StreamState::Events { key, serial } => {
                    let (key, serial) = (*key, *serial);
                    loop {
                        let room = room(self.send_window, s.window.into(), max_frame, out.len());
                        match host.pull(key, serial, s.id, room, out, now) {
                            Pull::Wrote { taken, more } => {
                                self.send_window -= taken as i64;
                                s.window -= taken as i32;
                                if !more {
                                    break;
                                }
                            }
                            Pull::Idle => break,
                            Pull::End(reason) => {
                                put_head(out, 0, DATA, END_STREAM, s.id);
                                s.state = StreamState::Done(Ended::Normally);
                                done.slow |= reason == CloseReason::SlowConsumer;
                                ended.push((key, serial, reason));
                                break;
                            }
                            Pull::Gone => {
                                put_rst(out, s.id, CANCEL);
                                s.state = StreamState::Done(Ended::ByUs);
                                break;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if out.len() >= WRITE_BUDGET {
            // A stream may have been cut short by the budget rather than by
            // its window: another turn looks again.
            done.more = true;
        }
        for (key, serial, reason) in ended {
            host.end_events(key, serial, reason);
        }
        for i in finished {
            // Its RST_STREAM(NO_ERROR) follows its last DATA frame.
            let s = &self.streams[i];
            if s.recv
                .as_ref()
                .is_some_and(|r| matches!(r.at_end, AtEnd::Drop))
            {
                put_rst(out, s.id, NO_ERROR);
                self.end_stream(host, i, Ended::ByUs, CloseReason::ClientClosed);
            }
        }
        self.settle(host, now);
        done
    }
}

/// What may go in one DATA frame now.
fn room(conn_window: i64, stream_window: i64, max_frame: usize, out_len: usize) -> usize {
    let window = conn_window.min(stream_window).max(0) as usize;
    window
        .min(max_frame)
        .min(WRITE_BUDGET.saturating_sub(out_len))
}
