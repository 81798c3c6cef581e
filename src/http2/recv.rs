//! Stream frames from the client (RFC 9113 §5.1, §6, §8.1): header blocks that
//! open streams or end them (trailers), request bodies within the windows
//! and `content-length`, resets, priorities and window updates, each checked
//! against the stream's state. A stream error resets that stream only; the
//! connection and its other streams go on.

use std::io::Cursor;
use std::ops::ControlFlow;

use bytes::{Bytes, BytesMut};

use super::fields::Fields;
use super::flood::Flood;
use super::frame::*;
use super::host::{Host, Intake};
use super::limits::MAX_STREAMS;
use super::proto::{Block, ConnError, Proto, Where};
use super::streams::{AtEnd, Ended, Recv, Request, Stream, StreamState};
use crate::error::ApiError;

impl Proto {
    pub(super) fn on_data<H: Host>(
        &mut self,
        host: &mut H,
        head: Head,
        payload: &[u8],
        now: u64,
    ) -> Result<(), ConnError> {
        let at = self.locate(head.stream);
        if head.stream == 0 || at == Where::Idle {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        let len = payload.len();
        self.recv_window -= len as i64;
        if self.recv_window < 0 {
            return Err(ConnError(FLOW_CONTROL_ERROR));
        }
        let data = unpad(head.flags, payload)?;
        let end = head.flags & END_STREAM != 0;
        // Padding is never kept: its window comes back at once.
        self.give_back += (len - data.len()) as u32;
        if data.is_empty() && !end {
            self.count(Flood::Useless, now)?;
        }
        let i = match at {
            Where::Open(i) => i,
            Where::Closed(how) => {
                self.give_back += data.len() as u32;
                return match how {
                    // Sent before the client saw herald's reset (§5.1).
                    Some(Ended::ByUs) => self.count(Flood::Useless, now),
                    _ => self.reset_closed(head.stream, STREAM_CLOSED, now),
                };
            }
            Where::Idle => unreachable!("refused above"),
        };
        let max_body = self.limits.max_body as u64;
        let Some(recv) = self.streams[i].recv.as_mut() else {
            // The client had ended its side (half-closed remote).
            self.give_back += data.len() as u32;
            return self.reset(host, i, STREAM_CLOSED, now);
        };
        recv.window -= len as i64;
        let length_ok = match &mut recv.length_left {
            Some(left) if *left < data.len() as u64 => false,
            Some(left) => {
                *left -= data.len() as u64;
                !end || *left == 0
            }
            None => true,
        };
        if recv.window < 0 || !length_ok {
            self.give_back += data.len() as u32;
            let code = if recv.window < 0 {
                FLOW_CONTROL_ERROR
            } else {
                // A body that does not add up to its content-length (§8.1.1).
                PROTOCOL_ERROR
            };
            return self.reset(host, i, code, now);
        }
        recv.received += data.len() as u64;
        let kept = match &mut recv.at_end {
            AtEnd::Serve { body, .. } => {
                // One byte past the limit is kept: that makes it a 413.
                let room = (max_body as usize + 1).saturating_sub(body.len());
                let kept = data.len().min(room);
                body.extend_from_slice(&data[..kept]);
                kept
            }
            _ => 0,
        };
        let too_large = recv.received > max_body && !matches!(recv.at_end, AtEnd::Drop);
        self.give_back += (data.len() - kept) as u32;
        if kept > 0 {
            host.body_bytes(kept as i64);
        }
        if too_large {
            let e = ApiError::new(
                413,
                "body_too_large",
                format!("request body exceeds {} bytes", self.limits.max_body),
            );
            self.answer_early(host, i, &e, now);
        }
        if end {
            self.complete(host, i, now);
        }
        Ok(())
    }

    /// Stream `i`'s request is answered before it is complete (a body past
    /// `--max-body`, or one that did not come in time): what it kept is let
    /// go, the rest of it is dropped as it comes, and the stream is reset
    /// (NO_ERROR) once the answer is out.
    pub(super) fn answer_early<H: Host>(&mut self, host: &mut H, i: usize, e: &ApiError, now: u64) {
        let Some(recv) = self.streams[i].recv.as_mut() else {
            return;
        };
        recv.deadline = u64::MAX;
        let (req, head, held) = match std::mem::replace(&mut recv.at_end, AtEnd::Drop) {
            AtEnd::Serve { req, body, head } => (req, head, body.len()),
            AtEnd::ServeEmpty { req, head } => (req, head, 0),
            AtEnd::Drop => return,
        };
        self.heads -= std::mem::take(&mut recv.head_size);
        self.release(host, held);
        let answer = host.error(Some(&req), e);
        self.start_answer(host, i, answer, head, now);
    }

    /// The client ended its side of stream `i`: its request is complete.
    fn complete<H: Host>(&mut self, host: &mut H, i: usize, now: u64) {
        let Some(recv) = self.streams[i].recv.take() else {
            return;
        };
        let size = recv.head_size;
        let (req, body, head) = match recv.at_end {
            AtEnd::Serve { req, body, head } => (req, body.freeze(), head),
            AtEnd::ServeEmpty { req, head } => (req, Bytes::new(), head),
            // Answered already; the answer ends the stream when it is out.
            AtEnd::Drop => return,
        };
        let req = Request {
            req: *req,
            body,
            head,
            size,
        };
        self.begin(host, i, req, now);
    }

    pub(super) fn on_headers<H: Host>(
        &mut self,
        host: &mut H,
        head: Head,
        payload: &[u8],
        now: u64,
    ) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        let mut fragment = unpad(head.flags, payload)?;
        let mut self_dep = false;
        if head.flags & PRIORITY_FLAG != 0 {
            let Some((fields, rest)) = fragment.split_first_chunk::<5>() else {
                return Err(ConnError(FRAME_SIZE_ERROR));
            };
            let dep = u32::from_be_bytes([fields[0], fields[1], fields[2], fields[3]]);
            self_dep = dep & 0x7fff_ffff == head.stream;
            fragment = rest;
        }
        let block = Block {
            stream: head.stream,
            end_stream: head.flags & END_STREAM != 0,
            self_dep,
            buf: BytesMut::from(fragment),
        };
        if head.flags & END_HEADERS != 0 {
            self.end_block(host, block, now)
        } else {
            self.block_since = now;
            self.block = Some(Box::new(block));
            Ok(())
        }
    }

    pub(super) fn on_continuation<H: Host>(
        &mut self,
        host: &mut H,
        head: Head,
        payload: &[u8],
        now: u64,
    ) -> Result<(), ConnError> {
        // Without a block in progress (its stream was checked in `frame`).
        let Some(mut block) = self.block.take() else {
            return Err(ConnError(PROTOCOL_ERROR));
        };
        let end = head.flags & END_HEADERS != 0;
        if payload.is_empty() && !end {
            self.count(Flood::Useless, now)?;
        }
        block.buf.extend_from_slice(payload);
        // A header block is decoded whole (HPACK's state depends on it); past
        // twice the header limit it is a flood, not a request.
        if block.buf.len() > self.limits.header_block as usize {
            crate::metrics::h2_flood("header_block");
            return Err(ConnError(ENHANCE_YOUR_CALM));
        }
        if end {
            self.block_since = 0;
            self.end_block(host, *block, now)
        } else {
            self.block = Some(block);
            Ok(())
        }
    }

    /// A whole header block: a new request, or a request's trailers. It is
    /// decoded whatever its stream, so that HPACK stays in step.
    fn end_block<H: Host>(
        &mut self,
        host: &mut H,
        block: Block,
        now: u64,
    ) -> Result<(), ConnError> {
        let id = block.stream;
        let mut fields = Fields::default();
        let max = self.limits.header_list as usize;
        let mut buf = block.buf;
        self.hpack
            .decode(&mut Cursor::new(&mut buf), |h| {
                fields.add(h, max);
                ControlFlow::Continue(())
            })
            .map_err(|_| ConnError(COMPRESSION_ERROR))?;
        drop(buf);
        if id % 2 == 0 {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        match self.locate(id) {
            Where::Idle => self.open(host, id, fields, block.end_stream, block.self_dep, now),
            Where::Open(i) => {
                let s = &self.streams[i];
                let code = match &s.recv {
                    _ if block.self_dep => Some(PROTOCOL_ERROR),
                    // Half-closed (remote): a HEADERS frame is a stream error.
                    None => Some(STREAM_CLOSED),
                    // Trailers end the request, carry regular fields only,
                    // and close a body of the length announced.
                    Some(r) => (!block.end_stream
                        || !fields.trailers_ok()
                        || fields.too_large
                        || r.length_left.is_some_and(|n| n != 0))
                    .then_some(PROTOCOL_ERROR),
                };
                match code {
                    Some(code) => self.reset(host, i, code, now),
                    None => {
                        self.complete(host, i, now);
                        Ok(())
                    }
                }
            }
            Where::Closed(Some(Ended::ByUs)) => self.count(Flood::Useless, now),
            Where::Closed(Some(Ended::ByPeer)) => self.reset_closed(id, STREAM_CLOSED, now),
            Where::Closed(Some(Ended::Normally)) => Err(ConnError(STREAM_CLOSED)),
            // A lower id never used (implicitly closed, §5.1.1), or one closed
            // long ago.
            Where::Closed(None) => Err(ConnError(PROTOCOL_ERROR)),
        }
    }

    /// A header block on a new stream id: a request.
    fn open<H: Host>(
        &mut self,
        host: &mut H,
        id: u32,
        fields: Fields,
        end_stream: bool,
        self_dep: bool,
        now: u64,
    ) -> Result<(), ConnError> {
        self.last_stream = id;
        if self.goaway_sent {
            // Opened after herald's GOAWAY: ignored (§6.8).
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS as usize {
            // Streams ended in this pass no longer count.
            self.sweep(now);
        }
        let size = (fields.size + super::limits::HEAD_COST) as u32;
        let refused = if self_dep {
            Some(PROTOCOL_ERROR)
        } else if self.streams.len() >= MAX_STREAMS as usize
            || (self.heads > 0 && self.heads + size > self.limits.request_heads)
        {
            Some(REFUSED_STREAM)
        } else {
            None
        };
        if let Some(code) = refused {
            return self.refuse(id, code, now);
        }
        self.streams.reserve_exact(1);
        self.streams.push(Stream {
            id,
            window: self.peer_window,
            recv: None,
            state: StreamState::Receiving,
        });
        self.idle_since = 0;
        let i = self.streams.len() - 1;
        let drop_rest = |p: &mut Proto| {
            if !end_stream {
                p.streams[i].recv = Some(Box::new(Recv {
                    deadline: u64::MAX,
                    window: i64::from(p.limits.stream_window),
                    length_left: None,
                    received: 0,
                    head_size: 0,
                    at_end: AtEnd::Drop,
                }));
            }
        };
        if fields.too_large {
            drop_rest(self);
            let e = ApiError::new(
                431,
                "headers_too_large",
                format!("request headers exceed {} bytes", self.limits.header_list),
            );
            let answer = host.error(None, &e);
            self.start_answer(host, i, answer, false, now);
            return Ok(());
        }
        let Some(head) = fields.request() else {
            // Malformed (§8.1.1): this stream only.
            self.streams.pop();
            return self.refuse(id, PROTOCOL_ERROR, now);
        };
        if end_stream && head.content_length.is_some_and(|n| n > 0) {
            self.streams.pop();
            return self.refuse(id, PROTOCOL_ERROR, now);
        }
        let is_head = head.parts.method == http::Method::HEAD;
        if head
            .content_length
            .is_some_and(|n| n > self.limits.max_body as u64)
        {
            drop_rest(self);
            let e = ApiError::new(
                413,
                "body_too_large",
                format!("request body exceeds {} bytes", self.limits.max_body),
            );
            let answer = host.error(Some(&head.parts), &e);
            self.start_answer(host, i, answer, is_head, now);
            return Ok(());
        }
        let intake = host.intake(&head.parts);
        if let Intake::Refuse(answer) = intake {
            // Refused from its head (authentication): answered now; what the
            // client still sends is dropped and, once the answer is out, it
            // is told to stop (RST_STREAM NO_ERROR).
            drop_rest(self);
            self.start_answer(host, i, answer, is_head, now);
            return Ok(());
        }
        if end_stream {
            match intake {
                Intake::Refuse(_) => unreachable!("answered above"),
                Intake::Body | Intake::NoBody => {
                    self.heads += size;
                    let req = Request {
                        req: head.parts,
                        body: Bytes::new(),
                        head: is_head,
                        size,
                    };
                    self.begin(host, i, req, now)
                }
            }
            return Ok(());
        }
        let req = Box::new(head.parts);
        let at_end = match intake {
            Intake::Body if !host.body_room() => {
                // The shard holds all the bodies it may: try again later.
                crate::metrics::body_refused("http2");
                self.streams.pop();
                return self.refuse(id, REFUSED_STREAM, now);
            }
            Intake::Body => AtEnd::Serve {
                req,
                body: BytesMut::new(),
                head: is_head,
            },
            Intake::NoBody => AtEnd::ServeEmpty { req, head: is_head },
            Intake::Refuse(_) => unreachable!("answered above"),
        };
        self.streams[i].recv = Some(Box::new(Recv {
            deadline: now.saturating_add(self.limits.header_timeout_ns()),
            window: i64::from(self.limits.stream_window),
            length_left: head.content_length,
            received: 0,
            head_size: size,
            at_end,
        }));
        self.heads += size;
        Ok(())
    }
}

/// The data of a frame without its padding (§6.1); padding as long as the
/// payload is a connection error.
pub(super) fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], ConnError> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or(ConnError(PROTOCOL_ERROR))?;
    let end = rest
        .len()
        .checked_sub(usize::from(pad))
        .ok_or(ConnError(PROTOCOL_ERROR))?;
    Ok(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_removed_and_checked() {
        assert_eq!(unpad(0, b"abc").unwrap(), b"abc");
        assert_eq!(unpad(PADDED, b"\x02abcxx").unwrap(), b"abc");
        assert!(unpad(PADDED, b"\x05ab").is_err());
        assert!(unpad(PADDED, b"").is_err());
    }
}
