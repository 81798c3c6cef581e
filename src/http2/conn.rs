//! One HTTP/2 connection over its socket: records read and opened (the keys
//! were taken out of rustls, [`crate::tls::record`]) into frames for the
//! protocol core ([`Proto`]), what it produces sealed and written with one
//! `write` per turn, its timer armed only while something is due, and the
//! shard as its [`Host`]: the routes, the body budget, the SSE queues.
//!
//! A connection keeps no buffer while idle: reads go into the shard's
//! buffer and only part of a record or of a frame stays with it (and must be
//! completed within `--header-timeout`); frames are gathered and sealed in the
//! shard's buffers; only what the kernel did not take waits in
//! [`RecordTx::pending`].

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::net::TcpStream;
use tracing::debug;

use super::frame::*;
use super::limits::{Limits, LINGER, OUTPUT_BACKLOG};
use super::proto::Proto;
use super::shard_host::{to_answer, ShardHost};
use crate::clock;
use crate::conn::CloseReason;
use crate::shard::{Phase, Shard};
use crate::tls::record::{BadRecord, Opened, RecordRx, RecordTx, SealError};

/// Reads and write turns per wake-up before the task yields to the others.
const TURNS: usize = 16;

/// Serve an HTTP/2 connection whose handshake is done: `records` were read
/// from the socket and not opened yet, `plain` opened by rustls and not read.
pub fn spawn(
    shard: Rc<Shard>,
    tcp: TcpStream,
    keys: (Box<RecordTx>, Box<RecordRx>),
    records: Vec<u8>,
    plain: Vec<u8>,
) {
    let now = clock::now_ns();
    let limits = Limits::from_config(&shard.shared.config);
    let mut conn = Box::new(Conn {
        proto: Proto::new(limits, now),
        host: ShardHost {
            shard,
            waiting: None,
        },
        tcp,
        tx: keys.0,
        rx: keys.1,
        partial: None,
        timer: None,
        timer_at: 0,
        drain_key: NO_KEY,
        eof: false,
        linger_until: 0,
    });
    // What the handshake left: what rustls opened comes before the records
    // after it.
    conn.frames_in(&plain, now);
    let mut records = records;
    conn.received(&mut records, now);
    tokio::task::spawn_local(Serve(conn));
}

struct Serve(Box<Conn>);

impl Future for Serve {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll(cx)
    }
}

struct Conn {
    proto: Proto,
    host: ShardHost,
    tcp: TcpStream,
    tx: Box<RecordTx>,
    rx: Box<RecordRx>,
    /// Part of a record or of a frame received, while there is one.
    partial: Option<Box<Partial>>,
    /// Armed only while something is due: an idle SSE connection has none.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    timer_at: u64,
    /// Its place in the shard's list of HTTP/2 connections (woken to send
    /// GOAWAY when the pod drains), once registered.
    drain_key: u32,
    /// The client closed its side, or the socket failed.
    eof: bool,
    /// Closed: input is read and dropped until then (0: not closed).
    linger_until: u64,
}

/// [`Conn::drain_key`] before the connection is on the list.
const NO_KEY: u32 = u32::MAX;

/// What a connection keeps of its input between reads (boxed: most of the
/// time it keeps nothing).
#[derive(Default)]
struct Partial {
    /// Received bytes not opened yet (part of a record).
    records: Vec<u8>,
    /// Opened bytes not handled yet (part of a frame).
    input: Vec<u8>,
    /// Since when part of a record or frame is kept (0: none is): it must be
    /// complete within `--header-timeout`.
    since: u64,
    /// Sealed bytes the kernel has not taken yet: written before anything
    /// newer (sealed records cannot be sealed again).
    pending: Vec<u8>,
}

impl Conn {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let now = clock::now_ns();
        if self.linger_until != 0 {
            return self.linger(cx, now);
        }
        if self.timer_at != 0 && now >= self.timer_at {
            self.timer_at = 0;
            let ht = self.proto.limits.header_timeout_ns();
            let since = self.partial.as_ref().map_or(0, |p| p.since);
            if since != 0 && now >= since.saturating_add(ht) {
                debug!("HTTP/2 partial frame or record not completed in time");
                self.proto.fail(PROTOCOL_ERROR);
            } else {
                self.proto.on_timer(&mut self.host, now);
            }
        }
        if *self.host.shard.phase.borrow() == Phase::Draining {
            self.proto.go_away();
        }
        let mut drained = false;
        for _ in 0..TURNS {
            if self.eof || self.proto.failed().is_some() || self.backlog() > OUTPUT_BACKLOG {
                // Not reading past the backlog: the socket's writable edge
                // brings the task back.
                drained = true;
                break;
            }
            if self.read(cx, now).is_pending() {
                drained = true;
                break;
            }
        }
        if !drained {
            // More input than one turn takes: the others get theirs first.
            cx.waker().wake_by_ref();
        }
        self.take_answers(now);
        if self.eof {
            return self.close(cx, now);
        }
        match self.write(cx, now) {
            Err(()) => return Poll::Ready(()),
            Ok(true) => cx.waker().wake_by_ref(),
            Ok(false) => {}
        }
        if self.eof || self.proto.failed().is_some() {
            // A failed connection's GOAWAY went out with the write above,
            // unless the client does not read: it is not waited for.
            return self.close(cx, now);
        }
        let flushed = self.pending().is_empty() && self.proto.out.is_empty();
        if self.proto.is_done() && flushed {
            return self.close(cx, now);
        }
        self.arm_timer(cx, now);
        self.register(cx);
        Poll::Pending
    }

    fn backlog(&self) -> usize {
        self.pending().len() + self.proto.out.len()
    }

    /// One read from the socket and what it brings; `Pending` once the socket
    /// has nothing more.
    fn read(&mut self, cx: &mut Context<'_>, now: u64) -> Poll<()> {
        match self.tcp.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => {
                self.eof = true;
                return Poll::Ready(());
            }
            Poll::Ready(Ok(())) => {}
        }
        let shard = self.host.shard.clone();
        // Reads go into the shard's buffer; only part of a record or of a frame
        // is kept by the connection (in a buffer of its size), so that a burst
        // of connections does not leave a read buffer each in the heap.
        let mut rx = shard.io.rx();
        rx.clear();
        if let Some(p) = &mut self.partial {
            rx.extend_from_slice(&p.records);
            p.records = Vec::new();
        }
        rx.reserve(crate::tls::record::MAX_RECORD);
        match self.tcp.try_read_buf(&mut *rx) {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.eof = true,
        }
        self.received(&mut rx, now);
        Poll::Ready(())
    }

    /// Handle the whole records in `buf` and keep what is left of the last one.
    fn received(&mut self, buf: &mut [u8], now: u64) {
        let opened = self.open_records(buf, now);
        if opened < buf.len() && !self.eof && self.proto.failed().is_none() {
            self.keep(now).records = buf[opened..].to_vec();
        }
        self.tidy();
    }

    /// Where part of a record or frame is kept (since `now`, when it is new).
    fn keep(&mut self, now: u64) -> &mut Partial {
        let p = self.partial.get_or_insert_with(Box::default);
        if p.since == 0 {
            p.since = now;
        }
        p
    }

    /// Sealed bytes the kernel has not taken yet.
    fn pending(&self) -> &[u8] {
        self.partial.as_ref().map_or(&[], |p| &p.pending)
    }

    /// Keep what the kernel did not take of `sealed`.
    fn keep_pending(&mut self, sealed: &[u8]) {
        self.partial.get_or_insert_with(Box::default).pending = sealed.to_vec();
    }

    /// No box for nothing; no deadline without part of a record or frame.
    fn tidy(&mut self) {
        if let Some(p) = &mut self.partial {
            if p.records.is_empty() && p.input.is_empty() {
                p.since = 0;
                if p.pending.is_empty() {
                    self.partial = None;
                }
            }
        }
    }

    /// Open the whole records at the front of `buf` and handle the frames they
    /// hold; how many bytes were whole records.
    fn open_records(&mut self, buf: &mut [u8], now: u64) -> usize {
        let mut at = 0;
        let mut fatal = None;
        while let Some(len) = RecordRx::record_len(&buf[at..]) {
            let len = match len {
                Ok(len) => len,
                Err(BadRecord(alert)) => {
                    fatal = Some(alert);
                    break;
                }
            };
            if buf.len() - at < len {
                break;
            }
            match self.rx.open(&mut buf[at..at + len]) {
                Ok(Opened::Data(range)) => {
                    self.frames_in(&buf[at + range.start..at + range.end], now);
                }
                // The receiving key is the next one already; herald's own
                // KeyUpdate, when asked for, goes before its next record.
                Ok(Opened::KeyUpdate { requested }) => {
                    if requested {
                        self.tx.request_update();
                    }
                }
                Ok(Opened::Alert(_)) => self.eof = true,
                Err(BadRecord(alert)) => {
                    debug!(?alert, "HTTP/2 connection sent a record herald refuses");
                    fatal = Some(alert);
                }
            }
            at += len;
            if fatal.is_some() || self.eof || self.proto.failed().is_some() {
                break;
            }
        }
        if let Some(alert) = fatal {
            // The fatal alert (RFC 8446 §6), then close's FIN; unless a
            // record is half written.
            let mut out = Vec::new();
            if self.pending().is_empty() && self.tx.fatal_alert(&mut out, alert).is_ok() {
                let _ = self.tcp.try_write(&out);
            }
            self.eof = true;
        }
        at
    }

    /// Handle the frames of `plain` after what `input` kept of an earlier
    /// record (part of a frame); keep what is left of the last one.
    fn frames_in(&mut self, plain: &[u8], now: u64) {
        let kept = self
            .partial
            .as_mut()
            .map(|p| std::mem::take(&mut p.input))
            .unwrap_or_default();
        if kept.is_empty() {
            let taken = self.proto.receive(&mut self.host, plain, now);
            if taken < plain.len() && self.proto.failed().is_none() {
                self.keep(now).input = plain[taken..].to_vec();
            }
        } else {
            let mut input = kept;
            input.extend_from_slice(plain);
            let taken = self.proto.receive(&mut self.host, &input, now);
            if taken < input.len() && self.proto.failed().is_none() {
                input.drain(..taken);
                self.keep(now).input = input;
            }
        }
    }

    fn take_answers(&mut self, now: u64) {
        let Some(w) = &mut self.host.waiting else {
            return;
        };
        let answers = std::mem::take(&mut w.mailbox.borrow_mut().answers);
        w.tasks
            .retain(|(s, _)| !answers.iter().any(|(id, _)| id == s));
        for (id, resp) in answers {
            self.proto.answer(&mut self.host, id, to_answer(resp), now);
        }
        // No request with the routes: the mailbox is freed.
        if self
            .host
            .waiting
            .as_ref()
            .is_some_and(|w| Rc::strong_count(&w.mailbox) == 1)
        {
            self.host.waiting = None;
        }
    }

    /// Write what is pending, then the control frames and what the streams
    /// have, while the socket takes it all. `Ok(true)`: more to do after a
    /// yield; `Err`: the socket failed.
    fn write(&mut self, cx: &mut Context<'_>, now: u64) -> Result<bool, ()> {
        for _ in 0..TURNS {
            if !self.pending().is_empty() {
                match self.tcp.try_write(self.pending()) {
                    Ok(0) => return Err(()),
                    Ok(n) if n == self.pending().len() => {
                        if let Some(p) = &mut self.partial {
                            p.pending = Vec::new();
                        }
                        self.tidy();
                    }
                    Ok(n) => {
                        if let Some(p) = &mut self.partial {
                            p.pending.drain(..n);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        return match self.tcp.poll_write_ready(cx) {
                            Poll::Ready(Ok(())) => Ok(true),
                            Poll::Ready(Err(_)) => Err(()),
                            Poll::Pending => Ok(false),
                        };
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return Err(()),
                }
            }
            // Control frames first, then the streams' data, in the shard's
            // plaintext buffer (no allocation per write), sealed into its
            // sealing buffer.
            let shard = self.host.shard.clone();
            let mut plain = shard.io.plain();
            plain.clear();
            if !self.proto.out.is_empty() {
                plain.extend_from_slice(&self.proto.out);
                self.proto.out = Vec::new();
            }
            let produced = self.proto.produce(&mut self.host, &mut plain, now);
            if produced.slow && !self.pending().is_empty() {
                // The client does not read the connection at all: the
                // connection, not one stream, is the slow consumer.
                self.eof = true;
            }
            // A KeyUpdate that is due goes out even with no frames.
            if plain.is_empty() && !self.tx.update_pending() {
                return Ok(false);
            }
            let mut scratch = shard.io.scratch();
            scratch.clear();
            let sealed = self
                .tx
                .seal_chunks(&mut scratch, &[IoSlice::new(&plain)], usize::MAX);
            drop(plain);
            if let Err(e) = sealed {
                if e == SealError::KeyExhausted {
                    // A TLS 1.2 key is used up (no key update exists there):
                    // the streams end (their clients resume on a new session)
                    // and close sends close_notify, for which a record is
                    // kept.
                    drop(scratch);
                    self.proto
                        .end_all_as(&mut self.host, CloseReason::TlsKeyLimit);
                    self.proto.fail(NO_ERROR);
                    return Ok(false);
                }
                return Err(());
            }
            match self.tcp.try_write(&scratch) {
                Ok(n) if n == scratch.len() => {}
                Ok(n) => self.keep_pending(&scratch[n..]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    self.keep_pending(&scratch);
                }
                Err(_) => return Err(()),
            }
            if !produced.more && self.pending().is_empty() && self.proto.out.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The timer at the next deadline (the protocol's, or a partial frame's
    /// or record's), or none.
    fn arm_timer(&mut self, cx: &mut Context<'_>, now: u64) {
        let partial = self.partial.as_ref().filter(|p| p.since != 0).map(|p| {
            p.since
                .saturating_add(self.proto.limits.header_timeout_ns())
        });
        let due = match (self.proto.next_deadline(), partial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.set_timer(cx, now, due);
    }

    fn set_timer(&mut self, cx: &mut Context<'_>, now: u64, due: Option<u64>) {
        let Some(due) = due else {
            self.timer = None;
            self.timer_at = 0;
            return;
        };
        let at =
            tokio::time::Instant::now() + std::time::Duration::from_nanos(due.saturating_sub(now));
        if self.timer_at != due {
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.timer_at = due;
        }
        if let Some(t) = &mut self.timer {
            if t.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
    }

    /// Wakers: the socket's are registered by the reads and writes; the
    /// mailbox, the SSE streams' table entries and the drain list get this
    /// task's.
    fn register(&mut self, cx: &mut Context<'_>) {
        let waker = cx.waker();
        if let Some(w) = &self.host.waiting {
            let mut m = w.mailbox.borrow_mut();
            if !m.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                m.waker = Some(waker.clone());
            }
        }
        let shard = &self.host.shard;
        let mut table = shard.table.borrow_mut();
        for (key, serial) in self.proto.event_streams() {
            if let Some(c) = table.get_mut(key as usize).filter(|c| c.serial == serial) {
                if c.waker.is_none() {
                    c.waker = Some(waker.clone());
                }
            }
        }
        drop(table);
        if self.drain_key == NO_KEY {
            self.drain_key = shard.h2_conns.borrow_mut().insert(waker.clone()) as u32;
        }
    }

    /// End the connection: what is queued (GOAWAY) and a `close_notify`, a
    /// FIN; then input is read and dropped for a while ([`LINGER`]) so that
    /// the close is not a reset. Its streams end now.
    fn close(&mut self, cx: &mut Context<'_>, now: u64) -> Poll<()> {
        if !self.eof && self.pending().is_empty() {
            let mut alert = Vec::new();
            if !self.proto.out.is_empty() {
                let out = std::mem::take(&mut self.proto.out);
                let _ = self
                    .tx
                    .seal_chunks(&mut alert, &[IoSlice::new(&out)], usize::MAX);
            }
            if self.tx.close_notify(&mut alert).is_ok() {
                let _ = self.tcp.try_write(&alert);
            }
        }
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
        self.proto.end_all(&mut self.host);
        self.partial = None;
        if self.eof {
            return Poll::Ready(());
        }
        self.linger_until = now.saturating_add(LINGER.as_nanos() as u64);
        self.linger(cx, now)
    }

    /// Read and drop input until the client closes or [`LINGER`] is over.
    fn linger(&mut self, cx: &mut Context<'_>, now: u64) -> Poll<()> {
        if now >= self.linger_until {
            return Poll::Ready(());
        }
        let mut sink = [0u8; 2048];
        for _ in 0..64 {
            match self.tcp.poll_read_ready(cx) {
                Poll::Pending => {
                    let until = self.linger_until;
                    self.set_timer(cx, now, Some(until));
                    return Poll::Pending;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => match self.tcp.try_read(&mut sink) {
                    Ok(0) => return Poll::Ready(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return Poll::Ready(()),
                },
            }
        }
        // A client still sending at full speed: not waited for.
        Poll::Ready(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.drain_key != NO_KEY {
            let key = std::mem::replace(&mut self.drain_key, NO_KEY);
            self.host
                .shard
                .h2_conns
                .borrow_mut()
                .try_remove(key as usize);
        }
        self.proto.end_all(&mut self.host);
        if let Some(w) = self.host.waiting.take() {
            for (_, task) in w.tasks {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection costs besides its keys and the table entries
    /// of its streams (perf/RESULTS.md has the measured figures).
    #[test]
    fn connection_state_stays_small() {
        let conn = std::mem::size_of::<Conn>();
        eprintln!("Conn {conn} B, Proto {} B", std::mem::size_of::<Proto>());
        assert!(conn <= 448, "Conn is {conn} bytes");
    }
}
