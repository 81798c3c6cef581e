//! The end of streams and the frames that act on open ones without carrying
//! a request (RFC 9113 §5.1, §6.3, §6.4, §6.9): resets from the client, the
//! resets herald sends for what its client sent (counted with the client's,
//! MadeYouReset), PRIORITY (accepted, unused) and stream window updates.
//! Ending a stream lets go of what it holds.

use super::flood::Flood;
use super::frame::*;
use super::host::Host;
use super::proto::{ConnError, Proto, Where};
use super::streams::{AtEnd, Ended, StreamState};
use crate::conn::CloseReason;

impl Proto {
    pub(super) fn on_rst<H: Host>(
        &mut self,
        host: &mut H,
        head: Head,
        payload: &[u8],
        now: u64,
    ) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        if payload.len() != 4 {
            return Err(ConnError(FRAME_SIZE_ERROR));
        }
        match self.locate(head.stream) {
            Where::Idle => Err(ConnError(PROTOCOL_ERROR)),
            // A reset crossing herald's end of the stream.
            Where::Closed(_) => self.count(Flood::Useless, now),
            Where::Open(i) => {
                // Every reset counts: a client resetting streams as fast as it
                // opens them makes herald work for nothing (rapid reset).
                self.count(Flood::Resets, now)?;
                self.end_stream(host, i, Ended::ByPeer, CloseReason::ClientClosed);
                Ok(())
            }
        }
    }

    pub(super) fn on_priority<H: Host>(
        &mut self,
        host: &mut H,
        head: Head,
        payload: &[u8],
        now: u64,
    ) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        // herald does not prioritise (RFC 9113 deprecates RFC 7540's scheme):
        // a PRIORITY frame does nothing.
        self.count(Flood::Useless, now)?;
        let code = if payload.len() != 5 {
            FRAME_SIZE_ERROR
        } else if u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff
            == head.stream
        {
            PROTOCOL_ERROR
        } else {
            return Ok(());
        };
        match self.locate(head.stream) {
            // A stream error, but no RST_STREAM may name an idle stream
            // (§6.4): the connection's error instead.
            Where::Idle => Err(ConnError(code)),
            Where::Open(i) => self.reset(host, i, code, now),
            Where::Closed(Some(Ended::ByUs)) => Ok(()),
            Where::Closed(_) => self.reset_closed(head.stream, code, now),
        }
    }

    pub(super) fn on_window_update<H: Host>(
        &mut self,
        host: &mut H,
        head: Head,
        payload: &[u8],
        now: u64,
    ) -> Result<(), ConnError> {
        let Ok(bytes) = <[u8; 4]>::try_from(payload) else {
            return Err(ConnError(FRAME_SIZE_ERROR));
        };
        let inc = i64::from(u32::from_be_bytes(bytes) & 0x7fff_ffff);
        if head.stream == 0 {
            if inc == 0 {
                return Err(ConnError(PROTOCOL_ERROR));
            }
            self.send_window += inc;
            if self.send_window > MAX_WINDOW {
                return Err(ConnError(FLOW_CONTROL_ERROR));
            }
            return Ok(());
        }
        match self.locate(head.stream) {
            Where::Idle => Err(ConnError(PROTOCOL_ERROR)),
            Where::Closed(_) => self.count(Flood::Useless, now),
            Where::Open(i) => {
                let window = i64::from(self.streams[i].window) + inc;
                if inc == 0 {
                    self.reset(host, i, PROTOCOL_ERROR, now)
                } else if window > MAX_WINDOW {
                    self.reset(host, i, FLOW_CONTROL_ERROR, now)
                } else {
                    self.streams[i].window = window as i32;
                    Ok(())
                }
            }
        }
    }

    /// herald resets open stream `i` because of what the client sent.
    pub(super) fn reset<H: Host>(
        &mut self,
        host: &mut H,
        i: usize,
        code: u32,
        now: u64,
    ) -> Result<(), ConnError> {
        put_rst(&mut self.out, self.streams[i].id, code);
        crate::metrics::h2_reset_sent(code_name(code));
        self.end_stream(host, i, Ended::ByUs, CloseReason::ClientClosed);
        // Resets herald sends count with the client's (MadeYouReset).
        self.count(Flood::Resets, now)
    }

    /// A stream refused before it was kept, or a frame on a closed one.
    pub(super) fn refuse(&mut self, id: u32, code: u32, now: u64) -> Result<(), ConnError> {
        put_rst(&mut self.out, id, code);
        crate::metrics::h2_reset_sent(code_name(code));
        self.remember(id, Ended::ByUs);
        self.count(Flood::Resets, now)
    }

    /// A stream error on a closed stream.
    pub(super) fn reset_closed(&mut self, id: u32, code: u32, now: u64) -> Result<(), ConnError> {
        self.refuse(id, code, now)
    }

    /// Let stream `i` go (swept at the end of the pass): what it holds is
    /// released, its route stopped, its SSE stream ended.
    pub(super) fn end_stream<H: Host>(
        &mut self,
        host: &mut H,
        i: usize,
        how: Ended,
        reason: CloseReason,
    ) {
        let s = &mut self.streams[i];
        let id = s.id;
        let recv = s.recv.take();
        let state = std::mem::replace(&mut s.state, StreamState::Done(how));
        let mut held = 0;
        if let Some(r) = recv {
            self.heads -= r.head_size;
            if let AtEnd::Serve { body, .. } = r.at_end {
                held += body.len();
            }
        }
        match state {
            StreamState::Queued(q) => {
                held += q.body.len();
                self.heads -= q.size;
            }
            StreamState::Routing { held: h, size, .. } => {
                held += h as usize;
                self.heads -= size;
                self.answers -= super::limits::ROUTE_COST as u32;
                host.cancel(id);
            }
            StreamState::Sending(o) => self.answers -= (o.data.len() - o.sent) as u32,
            StreamState::Events { key, serial } => host.end_events(key, serial, reason),
            StreamState::Receiving | StreamState::Done(_) => {}
        }
        self.release(host, held);
    }
}
