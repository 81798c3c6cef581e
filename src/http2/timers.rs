//! What herald waits for on a connection, and for how long (the deadlines
//! of [`super::limits::Limits`]): the preface, a header block, each request
//! body (`--header-timeout`), an answer stalled for want of window (three
//! times that), a connection without streams (`--idle-timeout`). Time is
//! passed in; the connection arms one timer for the earliest deadline, and
//! none when nothing is due (an idle SSE connection).

use tracing::debug;

use super::frame::*;
use super::host::Host;
use super::proto::Proto;
use super::streams::{Ended, StreamState};
use crate::conn::CloseReason;

impl Proto {
    /// The earliest moment something is due ([`Proto::on_timer`]), if any.
    /// An idle SSE connection has none (and keeps no timer).
    pub fn next_deadline(&self) -> Option<u64> {
        let ht = self.limits.header_timeout_ns();
        let mut due = u64::MAX;
        if !self.settings_seen {
            due = due.min(self.started.saturating_add(ht));
        }
        if self.block.is_some() {
            due = due.min(self.block_since.saturating_add(ht));
        }
        for s in &self.streams {
            if let Some(r) = &s.recv {
                due = due.min(r.deadline);
            }
            if let StreamState::Sending(o) = &s.state {
                due = due.min(o.since.saturating_add(self.limits.send_timeout_ns()));
            }
        }
        if self.streams.is_empty() && !self.goaway_sent && self.settings_seen {
            due = due.min(
                self.idle_since
                    .saturating_add(self.limits.idle_timeout_ns()),
            );
        }
        (due != u64::MAX).then_some(due)
    }

    /// Act on what is due at `now`: a preface, header block or request body
    /// that did not complete in time, an answer that made no progress, an
    /// idle connection.
    pub fn on_timer<H: Host>(&mut self, host: &mut H, now: u64) {
        let ht = self.limits.header_timeout_ns();
        if (!self.settings_seen && now >= self.started.saturating_add(ht))
            || (self.block.is_some() && now >= self.block_since.saturating_add(ht))
        {
            debug!("HTTP/2 preface or header block not complete in time");
            self.fail(PROTOCOL_ERROR);
            return;
        }
        for i in 0..self.streams.len() {
            if self.streams[i]
                .recv
                .as_ref()
                .is_some_and(|r| now >= r.deadline)
            {
                let e = crate::error::ApiError::new(
                    408,
                    "body_timeout",
                    "the request body did not arrive in time",
                );
                self.answer_early(host, i, &e, now);
            }
            let stalled = match &self.streams[i].state {
                StreamState::Sending(o) => {
                    now >= o.since.saturating_add(self.limits.send_timeout_ns())
                }
                _ => false,
            };
            if stalled {
                debug!("HTTP/2 answer made no progress: reset");
                let id = self.streams[i].id;
                put_rst(&mut self.out, id, CANCEL);
                crate::metrics::h2_reset_sent(code_name(CANCEL));
                self.end_stream(host, i, Ended::ByUs, CloseReason::SlowConsumer);
            }
        }
        if self.streams.is_empty()
            && self.settings_seen
            && now
                >= self
                    .idle_since
                    .saturating_add(self.limits.idle_timeout_ns())
        {
            self.go_away();
        }
        self.settle(host, now);
    }
}
