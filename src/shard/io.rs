//! The shard's own readiness loop for lean streams, and the flush.
//!
//! A lean stream is not a task: its socket is a `mio` stream registered (edge
//! triggered, token = slab key) with a `mio::Poll` that belongs to the shard, whose
//! epoll descriptor is itself watched by the shard's tokio runtime through one
//! `AsyncFd`. An idle stream therefore costs its table entry and its socket, and
//! no task, no tokio I/O registration, no buffer.
//!
//! [`flush`] walks the table's dirty list once per wake-up (after a batch of
//! events, a heartbeat tick, a connect, a close) and gives each connection one
//! `writev` of up to [`MAX_SLICES`] queued frames, more only if the kernel took
//! everything and frames remain. A full send buffer marks the stream blocked until
//! its writable edge; a closing stream with nothing left to write is closed there.
//! Events from the poll: readable means the client sent something (discarded) or
//! went away (closed); writable unblocks a stream.
//!
//! A lean stream over TLS is the same entry plus its record layer, a
//! [`LeanTls`] (in [`IoSet::tls`], by slab key): its queued frames are sealed
//! into records in the shard's one scratch buffer and written from there; only
//! what the kernel does not take stays with the stream, and at most
//! [`SEAL_BUDGET`] of it. What its client sends is opened as records
//! ([`LeanTls::read_from`]): a KeyUpdate asking for one back marks the stream
//! dirty, so that the flush sends herald's even with no event queued; an alert
//! or a bad record closes it. A stream left holding part of a record is listed
//! in [`IoSet::partials`]; while that list is not empty the loop also waits for
//! its earliest deadline (`--header-timeout` after the part came) and closes
//! the streams whose record is still incomplete then.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tracing::warn;

use super::Shard;
use crate::clock;
use crate::conn::{CloseReason, Conn, ConnState, ConnTable};
use crate::tls::lean::LeanTls;
use crate::tls::record::{RecordTx, SealError, MAX_OVERHEAD, MAX_PLAINTEXT};

/// Frames handed to one `writev`.
pub const MAX_SLICES: usize = 64;
/// Readiness events handled per turn.
const EVENTS: usize = 1024;
/// Plaintext a TLS stream seals per write: one full record, as nginx's default
/// `ssl_buffer_size`. It bounds what a blocked TLS stream holds besides its
/// queue (the sealed bytes the kernel has not taken).
pub const SEAL_BUDGET: usize = MAX_PLAINTEXT;

/// The shard's poll of lean-stream sockets.
pub struct IoSet {
    /// Declared before `poll` so it is dropped (deregistered) while the epoll
    /// descriptor it watches is still open.
    fd: AsyncFd<RawFd>,
    poll: RefCell<Poll>,
    registry: Registry,
    events: RefCell<Events>,
    /// Reused lists (no allocation per flush once warm).
    dirty: RefCell<Vec<u32>>,
    closing: RefCell<Vec<(u32, CloseReason)>>,
    /// The record layer of each lean TLS stream, by slab key (empty without
    /// `--tls-cert`: plain streams pay nothing for it).
    tls: RefCell<Vec<Option<Box<LeanTls>>>>,
    /// Lean TLS streams holding part of a record: (deadline in
    /// [`clock::now_ns`] time, slab key, serial), earliest first. Empty, and
    /// no timer armed, while none does.
    partials: RefCell<BinaryHeap<Reverse<(u64, u32, u64)>>>,
    /// Where TLS streams' records are sealed before their write.
    scratch: RefCell<Vec<u8>>,
    /// Where HTTP/2 connections gather their frames before sealing them.
    plain: RefCell<Vec<u8>>,
    /// Where HTTP/2 connections read their records and open them.
    rx: RefCell<Vec<u8>>,
}

impl IoSet {
    /// Must be called inside the shard's runtime.
    pub fn new() -> std::io::Result<IoSet> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        // SAFETY: the descriptor belongs to `poll`, which lives in the same `IoSet`
        // and is dropped after this `AsyncFd` (field order), so it stays open and
        // the same for the whole life of the registration.
        let fd = unsafe {
            AsyncFd::register_with_interest(poll.as_raw_fd(), tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(IoSet {
            poll: RefCell::new(poll),
            registry,
            events: RefCell::new(Events::with_capacity(EVENTS)),
            fd,
            dirty: RefCell::new(Vec::new()),
            closing: RefCell::new(Vec::new()),
            tls: RefCell::new(Vec::new()),
            partials: RefCell::new(BinaryHeap::new()),
            scratch: RefCell::new(Vec::new()),
            plain: RefCell::new(Vec::new()),
            rx: RefCell::new(Vec::new()),
        })
    }

    /// Seal and open `key`'s records with `lean` from now on (a lean TLS
    /// stream).
    fn set_tls(&self, key: usize, lean: Box<LeanTls>) {
        let mut tls = self.tls.borrow_mut();
        if tls.len() <= key {
            tls.resize_with(key + 1, || None);
        }
        tls[key] = Some(lean);
    }

    /// The deadline of the first stream holding part of a record.
    fn next_partial(&self) -> Option<u64> {
        self.partials.borrow().peek().map(|Reverse((d, _, _))| *d)
    }

    /// The shard's sealing buffer (HTTP/2 connections seal their frames in it
    /// too); not to be held across a flush.
    pub fn scratch(&self) -> std::cell::RefMut<'_, Vec<u8>> {
        self.scratch.borrow_mut()
    }

    /// The shard's buffer for HTTP/2 frames before they are sealed.
    pub fn plain(&self) -> std::cell::RefMut<'_, Vec<u8>> {
        self.plain.borrow_mut()
    }

    /// The shard's buffer for what HTTP/2 connections read.
    pub fn rx(&self) -> std::cell::RefMut<'_, Vec<u8>> {
        self.rx.borrow_mut()
    }

    /// Watch a lean stream's socket under its slab key.
    pub fn register(&self, sock: &mut mio::net::TcpStream, key: usize) -> std::io::Result<()> {
        self.registry
            .register(sock, Token(key), Interest::READABLE | Interest::WRITABLE)
    }
}

/// Turn readiness events into reads (EOF detection, TLS records) and
/// unblocked writes; close the TLS streams whose partial record is late.
pub async fn io_loop(shard: Rc<Shard>) {
    let io = &shard.io;
    loop {
        let readable = match io.next_partial() {
            None => io.fd.readable().await,
            Some(deadline) => {
                let wait = Duration::from_nanos(deadline.saturating_sub(clock::now_ns()));
                tokio::select! {
                    r = io.fd.readable() => r,
                    () = tokio::time::sleep(wait) => {
                        expire_partials(&shard);
                        flush(&shard);
                        continue;
                    }
                }
            }
        };
        let mut guard = match readable {
            Ok(g) => g,
            Err(e) => {
                warn!(shard = shard.id, error = %e, "stream poll failed");
                return;
            }
        };
        let full = handle_events(&shard);
        if !full {
            // Fewer than a full batch: the poll is drained; wait for the next edge.
            guard.clear_ready();
        }
        flush(&shard);
        if full {
            tokio::task::yield_now().await;
        }
    }
}

/// Take the ready events off the poll and act on them; true when the batch was
/// full (more may be waiting).
fn handle_events(shard: &Shard) -> bool {
    let io = &shard.io;
    let mut events = io.events.borrow_mut();
    if let Err(e) = io.poll.borrow_mut().poll(&mut events, Some(Duration::ZERO)) {
        if e.kind() != std::io::ErrorKind::Interrupted {
            warn!(shard = shard.id, error = %e, "stream poll failed");
        }
    }
    let mut table = shard.table.borrow_mut();
    let mut count = 0;
    {
        let mut closing = io.closing.borrow_mut();
        let mut tls = io.tls.borrow_mut();
        for ev in events.iter() {
            count += 1;
            let key = ev.token().0;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                let lean = tls.get_mut(key).and_then(Option::as_mut);
                let end = match lean {
                    Some(lean) => tls_input(shard, &mut table, key, lean, &[]),
                    None => match table.get_mut(key).and_then(|c| c.io.as_mut()) {
                        Some(sock) => drain_input(sock),
                        None => continue,
                    },
                };
                if let Some(reason) = end {
                    closing.push((key as u32, reason));
                    continue;
                }
            }
            let Some(conn) = table.get_mut(key).filter(|c| c.io.is_some()) else {
                continue;
            };
            if ev.is_writable() && conn.blocked {
                conn.blocked = false;
                table.mark_dirty(key);
            }
        }
    }
    close_pending(shard, &mut table);
    count >= EVENTS
}

/// Read and open what a lean TLS stream's client sent, `early` first (what
/// was read during the handshake and not opened); `Some` when the stream is to
/// be closed.
fn tls_input(
    shard: &Shard,
    table: &mut ConnTable,
    key: usize,
    lean: &mut LeanTls,
    early: &[u8],
) -> Option<CloseReason> {
    let conn = table.get_mut(key)?;
    let serial = conn.serial;
    let sock = conn.io.as_mut()?;
    let timeout = shard.shared.config.header_timeout.as_nanos() as u64;
    let mut scratch = shard.io.rx();
    let got = lean.read_from(
        &mut early.chain(sock),
        &mut scratch,
        clock::now_ns(),
        timeout,
    );
    drop(scratch);
    if let Some(deadline) = got.list {
        shard
            .io
            .partials
            .borrow_mut()
            .push(Reverse((deadline, key as u32, serial)));
    }
    if got.end {
        return Some(CloseReason::ClientClosed);
    }
    if got.reply {
        // herald's KeyUpdate goes out with the next flush, queue or not.
        table.mark_dirty(key);
    }
    None
}

/// Close the lean TLS streams whose partial record did not come whole in
/// time; the others listed are listed again for their own deadline.
fn expire_partials(shard: &Shard) {
    let now = clock::now_ns();
    let io = &shard.io;
    let mut table = shard.table.borrow_mut();
    {
        let mut partials = io.partials.borrow_mut();
        let mut tls = io.tls.borrow_mut();
        let mut closing = io.closing.borrow_mut();
        while let Some(&Reverse((deadline, key, serial))) = partials.peek() {
            if deadline > now {
                break;
            }
            partials.pop();
            if table.get(key as usize).is_none_or(|c| c.serial != serial) {
                // Gone; the slot may be another stream's now.
                continue;
            }
            let Some(lean) = tls.get_mut(key as usize).and_then(Option::as_mut) else {
                continue;
            };
            match lean.partial_deadline() {
                Some(d) if d <= now => closing.push((key, CloseReason::ClientClosed)),
                Some(d) => partials.push(Reverse((d, key, serial))),
                None => {}
            }
        }
        if partials.is_empty() {
            // Give the list's memory back after a burst.
            *partials = BinaryHeap::new();
        }
    }
    close_pending(shard, &mut table);
}

/// Attach a lean TLS stream's record layer (its socket is in the table);
/// `early` is what the handshake read after the last record rustls opened,
/// opened here first.
pub fn attach_tls(shard: &Shard, key: usize, mut lean: Box<LeanTls>, early: &[u8]) {
    let mut table = shard.table.borrow_mut();
    let end = if early.is_empty() {
        None
    } else {
        tls_input(shard, &mut table, key, &mut lean, early)
    };
    shard.io.set_tls(key, lean);
    if let Some(reason) = end {
        shard.io.closing.borrow_mut().push((key as u32, reason));
        close_pending(shard, &mut table);
    }
}

/// Read and discard what the client sent; `Some` when it is gone or abusive.
fn drain_input(sock: &mut mio::net::TcpStream) -> Option<CloseReason> {
    let mut scratch = [0u8; 512];
    for _ in 0..64 {
        match sock.read(&mut scratch) {
            Ok(0) => return Some(CloseReason::ClientClosed),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Some(CloseReason::ClientClosed),
        }
    }
    // 32 KiB of input on an event stream: not a browser; do not keep reading.
    Some(CloseReason::ClientClosed)
}

/// Write what every dirty connection has queued; close those that are done.
pub fn flush(shard: &Shard) {
    let mut dirty = shard.io.dirty.borrow_mut();
    shard.table.borrow_mut().take_dirty(&mut dirty);
    if !dirty.is_empty() {
        write_keys(shard, &dirty);
    }
}

/// Give each of `keys` (taken from the dirty list) one write of everything it
/// has queued, more only while the kernel takes it all; close those that are
/// done. A flush round may call this slice by slice ([`super::fanout_loop`]).
pub fn write_keys(shard: &Shard, keys: &[u32]) {
    let io = &shard.io;
    let mut table = shard.table.borrow_mut();
    let now = clock::now_ns();
    let mut closing = io.closing.borrow_mut();
    let mut tls = io.tls.borrow_mut();
    let mut scratch = io.scratch.borrow_mut();
    for (i, &key) in keys.iter().enumerate() {
        if let Some(&next) = keys.get(i + 1) {
            prefetch_tls(&tls, next);
        }
        let Some(conn) = table.get_mut(key as usize) else {
            continue;
        };
        conn.unmark();
        let Some(sock) = conn.io.as_mut() else {
            // Served through hyper: its body task writes.
            conn.wake();
            continue;
        };
        if conn.blocked && !(conn.queue.is_empty() && matches!(conn.state, ConnState::Closing(_))) {
            // Wait for the writable edge; but a stream closed with nothing left to
            // write (a slow consumer) is closed now, not when its reader wakes up.
            continue;
        }
        if let Some(lean) = tls.get_mut(key as usize).and_then(Option::as_mut) {
            let on_frame = |published| shard.local.frame_written(published, now);
            if let Some(reason) = write_sealed(conn, lean, &mut scratch, on_frame) {
                closing.push((key, reason));
            }
            continue;
        }
        loop {
            if conn.queue.is_empty() {
                if let ConnState::Closing(reason) = conn.state {
                    closing.push((key, reason));
                }
                break;
            }
            let written = match conn.queue.front() {
                // One frame (the common case at low rates): a plain write, which
                // skips building and copying in an iovec array.
                Some(only) if conn.queue.len() == 1 => sock.write(only),
                _ => {
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    let n = conn.queue.slices(&mut slices);
                    sock.write_vectored(&slices[..n])
                }
            };
            match written {
                Ok(0) => {
                    closing.push((key, CloseReason::ClientClosed));
                    break;
                }
                Ok(n) => {
                    conn.queue
                        .consume(n, |published| shard.local.frame_written(published, now));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    conn.blocked = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    closing.push((key, CloseReason::ClientClosed));
                    break;
                }
            }
        }
    }
    drop((closing, tls, scratch));
    close_pending(shard, &mut table);
}

/// Ask the CPU for the next TLS stream's key while this one is written: each
/// stream's key (ring's AES key schedule and GHASH table, ~0.5 KB) is cold when
/// a flush round comes back to it at low rates, and sealing would wait for it.
#[inline]
fn prefetch_tls(tls: &[Option<Box<LeanTls>>], key: u32) {
    if let Some(Some(lean)) = tls.get(key as usize) {
        crate::hint::prefetch(&lean.tx as *const RecordTx, std::mem::size_of::<RecordTx>());
    }
}

/// One write turn of a lean TLS stream: first the sealed bytes the kernel did
/// not take last time, then its queue sealed [`SEAL_BUDGET`] at a time into
/// `scratch` and written, while the kernel takes everything (a KeyUpdate that
/// is due goes first, alone if nothing is queued). `Some` when the stream is
/// to be closed.
fn write_sealed(
    conn: &mut Conn,
    lean: &mut LeanTls,
    scratch: &mut Vec<u8>,
    mut on_frame: impl FnMut(u64),
) -> Option<CloseReason> {
    match conn.state {
        // Its queue was dropped (slow consumer, replaced, disconnected): what is
        // sealed but not taken goes too, as on the plain path, where such a
        // stream is closed now, not when its reader wakes up. A drain's last
        // frames (the retry: hint) are written out first.
        ConnState::Closing(reason) if reason != CloseReason::Shutdown => return Some(reason),
        _ => {}
    }
    let sock = conn.io.as_mut()?;
    loop {
        let pending = lean.pending();
        if !pending.is_empty() {
            let all = pending.len();
            match sock.write(pending) {
                Ok(0) => return Some(CloseReason::ClientClosed),
                Ok(n) if n == all => lean.written(n),
                Ok(n) => {
                    // Again until the kernel says it is full (its writable edge
                    // comes after that).
                    lean.written(n);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    conn.blocked = true;
                    return None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Some(CloseReason::ClientClosed),
            }
        }
        let tx = &mut lean.tx;
        if conn.queue.is_empty() && !tx.update_pending() {
            return match conn.state {
                ConnState::Closing(reason) => Some(reason),
                ConnState::Open => None,
            };
        }
        scratch.clear();
        scratch.reserve(SEAL_BUDGET + MAX_OVERHEAD);
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = conn.queue.slices(&mut slices);
        let taken = match tx.seal_chunks(scratch, &slices[..n], SEAL_BUDGET) {
            Ok(taken) => taken,
            // A TLS 1.2 key is used up (no key update exists there): the
            // stream ends with close_notify, and its client resumes on a new
            // session.
            Err(SealError::KeyExhausted) => return Some(CloseReason::TlsKeyLimit),
            Err(_) => return Some(CloseReason::ClientClosed),
        };
        conn.queue.consume(taken, &mut on_frame);
        match sock.write(scratch) {
            Ok(0) => return Some(CloseReason::ClientClosed),
            Ok(n) if n == scratch.len() => {}
            Ok(n) => lean.keep(&scratch[n..]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                // Sealed records cannot be sealed again: they wait as they are.
                lean.keep(scratch);
            }
            Err(_) => return Some(CloseReason::ClientClosed),
        }
    }
}

/// Close the lean streams collected in `closing`.
fn close_pending(shard: &Shard, table: &mut ConnTable) {
    let mut closing = shard.io.closing.borrow_mut();
    if closing.is_empty() {
        return;
    }
    let mut tls = shard.io.tls.borrow_mut();
    for (key, fallback) in closing.drain(..) {
        let Some(conn) = table.get(key as usize) else {
            continue;
        };
        let reason = match conn.state {
            ConnState::Closing(r) => r,
            ConnState::Open => fallback,
        };
        if let Some(mut conn) = table.remove(key as usize) {
            let lean = tls.get_mut(key as usize).and_then(Option::take);
            if let Some(sock) = &mut conn.io {
                if let Some(mut lean) = lean.filter(|l| l.pending().is_empty()) {
                    // A TLS stream says it ends (close_notify, or the fatal
                    // alert its client's input called for), so that its client
                    // can tell the end from a truncation; best effort, unless a
                    // record is half written.
                    let mut alert = Vec::with_capacity(MAX_OVERHEAD + 2);
                    if lean.seal_end(&mut alert).is_ok() {
                        let _ = sock.write(&alert);
                    }
                }
                // FIN after the last frame (a reset could destroy it in flight);
                // dropping the socket closes it and takes it out of the poll.
                let _ = sock.shutdown(std::net::Shutdown::Write);
            }
            super::stream::closed(shard, &conn.user, conn.serial, conn.topics(), reason);
        }
    }
    shard.table_changed(table);
}
