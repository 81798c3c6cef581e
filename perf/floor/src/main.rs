//! `floor`: the least any SSE broadcast server must do, as a yardstick for herald.
//!
//! perf/compare.sh measures herald next to this program under the same load. It
//! holds no state beyond what delivery needs: one thread, one `mio` poll loop, a
//! slab of connections, and a dense array of subscribers.
//!
//! * Every `GET` (any path) is a subscriber: its request head is read, the answer
//!   `200 text/event-stream` is written with an SSE comment `:ok` as the first body
//!   bytes (load clients, like browsers, take those as "stream open"), and the
//!   socket is kept.
//! * Every `POST` (any path) is a publish, on a keep-alive connection: the body is
//!   read by `content-length`, framed once as `id: <n>\ndata: <body>\n\n` into one
//!   reference-counted buffer, and answered with `202 {}`.
//! * `--coalesce 1` (default): the frame is written to every subscriber at once,
//!   with one plain `write()` each: the one-write-per-event floor.
//! * `--coalesce N` (at most 64): the frame is queued on every subscriber and, after
//!   every ready event of the poll iteration is handled, each subscriber is flushed
//!   with one `writev` of up to N queued frames (repeated until its queue is empty
//!   or its socket is full). This is the floor under bursts.
//!
//! A delivery clones a reference to the shared frame (no allocation, no copy). A
//! subscriber whose socket is full keeps its frames in a queue bounded to 1024
//! frames and is dropped beyond that. Request heads (8 KiB), bodies (64 KiB),
//! unread publish answers (1 MiB) and connections (200,000) are bounded too, and
//! only loopback addresses are served.
//!
//! ```text
//! floor --listen 127.0.0.1:0 [--coalesce N]
//! ```
//!
//! prints `floor listening on http://ADDR` on stdout once it accepts connections.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::rc::Rc;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
const MAX_CONNECTIONS: usize = 200_000;
const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 64 * 1024;
const MAX_OUT: usize = 1024 * 1024;
const MAX_QUEUE: usize = 1024;
const MAX_COALESCE: usize = 64;
const MAX_HEADERS: usize = 64;
const SCRATCH: usize = 64 * 1024;

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n:ok\n\n";
const ACCEPTED: &[u8] = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}";

/// One framed event (or the response head), shared by every subscriber.
type Frame = Rc<[u8]>;

/// A subscriber: its socket and the frames it has not been able to take yet.
struct Sub {
    stream: TcpStream,
    token: usize,
    queue: VecDeque<Frame>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Has frames queued in this poll iteration that still have to be flushed.
    dirty: bool,
}

enum Conn {
    /// Reading requests: a publisher, or a connection whose first head is not in.
    Http {
        stream: TcpStream,
        inbuf: Vec<u8>,
        out: Vec<u8>,
    },
    /// A subscriber, at this index of `Server::subs`.
    Sub(usize),
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    subs: Vec<Sub>,
    coalesce: usize,
    any_dirty: bool,
    dead: Vec<usize>,
    next_id: u64,
    scratch: Box<[u8]>,
    sse_head: Frame,
}

fn main() -> ExitCode {
    let (listen, coalesce) = match parse_args() {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("floor: {msg}");
            eprintln!("usage: floor --listen 127.0.0.1:PORT [--coalesce N (1..=64)]");
            return ExitCode::from(2);
        }
    };
    match run(listen, coalesce) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Result<(SocketAddr, usize), String> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let mut coalesce = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                listen = v.parse().map_err(|e| format!("bad --listen {v:?}: {e}"))?;
            }
            "--coalesce" => {
                let v = value("--coalesce")?;
                coalesce = v
                    .parse()
                    .map_err(|e| format!("bad --coalesce {v:?}: {e}"))?;
            }
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !(1..=MAX_COALESCE).contains(&coalesce) {
        return Err(format!("--coalesce must be within 1..={MAX_COALESCE}"));
    }
    match listen.ip() {
        IpAddr::V4(ip) if ip.octets()[0] == 127 => {}
        ip => return Err(format!("refusing to listen on {ip}: loopback (127/8) only")),
    }
    Ok((listen, coalesce))
}

fn run(listen: SocketAddr, coalesce: usize) -> io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&listen.into())?;
    socket.listen(4096)?;
    let mut listener = TcpListener::from_std(socket.into());
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let addr = listener.local_addr()?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "floor listening on http://{addr}")?;
        out.flush()?;
    }
    let mut server = Server {
        poll,
        listener,
        conns: Slab::new(),
        subs: Vec::new(),
        coalesce,
        any_dirty: false,
        dead: Vec::new(),
        next_id: 0,
        scratch: vec![0; SCRATCH].into_boxed_slice(),
        sse_head: Rc::from(SSE_HEAD),
    };
    server.run()
}

impl Server {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                let token = event.token();
                if token == LISTENER {
                    self.accept();
                    continue;
                }
                let token = token.0;
                match self.conns.get(token) {
                    Some(Conn::Http { .. }) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.http_read(token);
                        }
                        if event.is_writable() {
                            self.http_write(token);
                        }
                    }
                    Some(&Conn::Sub(idx)) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.sub_read(idx);
                        }
                        if event.is_writable() {
                            // The sub may have been dropped by sub_read above.
                            if let Some(&Conn::Sub(idx)) = self.conns.get(token) {
                                let sub = &mut self.subs[idx];
                                if flush(sub, self.coalesce).is_err() {
                                    self.dead.push(token);
                                }
                            }
                        }
                    }
                    None => {}
                }
                self.reap();
            }
            if self.any_dirty {
                self.any_dirty = false;
                for sub in &mut self.subs {
                    if sub.dirty {
                        sub.dirty = false;
                        if flush(sub, self.coalesce).is_err() {
                            self.dead.push(sub.token);
                        }
                    }
                }
                self.reap();
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        continue; // dropped: closed at once
                    }
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let token = Token(entry.key());
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                    {
                        entry.insert(Conn::Http {
                            stream,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // ECONNABORTED, EMFILE, ...: give up for this wake-up.
                Err(_) => return,
            }
        }
    }

    /// Reads what a request connection sent and serves every complete request.
    fn http_read(&mut self, token: usize) {
        let Some(Conn::Http { stream, inbuf, .. }) = self.conns.get_mut(token) else {
            return;
        };
        let mut eof = false;
        loop {
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if inbuf.len() + n > MAX_HEAD + MAX_BODY {
                        self.close(token);
                        return;
                    }
                    inbuf.extend_from_slice(&self.scratch[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(token);
                    return;
                }
            }
        }
        let mut buf = std::mem::take(inbuf);
        let mut start = 0;
        let mut answers = 0;
        let mut subscribe = false;
        let mut bad = false;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[start..]) {
                Ok(httparse::Status::Complete(head_len)) => match req.method {
                    Some("GET") => {
                        subscribe = true;
                        break;
                    }
                    Some("POST") => {
                        let Some(len) = content_length(req.headers) else {
                            bad = true;
                            break;
                        };
                        if len > MAX_BODY {
                            bad = true;
                            break;
                        }
                        let end = start + head_len + len;
                        if buf.len() < end {
                            break; // body not all in yet
                        }
                        self.publish(&buf[start + head_len..end]);
                        answers += 1;
                        start = end;
                    }
                    _ => {
                        bad = true;
                        break;
                    }
                },
                Ok(httparse::Status::Partial) => {
                    if buf.len() - start > MAX_HEAD {
                        bad = true;
                    }
                    break;
                }
                Err(_) => {
                    bad = true;
                    break;
                }
            }
        }
        if bad || (eof && !subscribe) {
            self.close(token);
            return;
        }
        if subscribe {
            self.subscribe(token);
            return;
        }
        buf.drain(..start);
        let Some(Conn::Http { inbuf, out, .. }) = self.conns.get_mut(token) else {
            return;
        };
        *inbuf = buf;
        for _ in 0..answers {
            out.extend_from_slice(ACCEPTED);
        }
        if out.len() > MAX_OUT {
            // A publisher that sends and never reads its answers.
            self.close(token);
            return;
        }
        if answers > 0 {
            self.http_write(token);
        }
    }

    fn http_write(&mut self, token: usize) {
        let Some(Conn::Http { stream, out, .. }) = self.conns.get_mut(token) else {
            return;
        };
        let mut written = 0;
        while written < out.len() {
            match stream.write(&out[written..]) {
                Ok(0) => {
                    self.close(token);
                    return;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(token);
                    return;
                }
            }
        }
        out.drain(..written);
    }

    /// Turns a request connection that sent a GET head into a subscriber.
    fn subscribe(&mut self, token: usize) {
        let idx = self.subs.len();
        let Conn::Http { stream, .. } = std::mem::replace(&mut self.conns[token], Conn::Sub(idx))
        else {
            unreachable!("subscribe is called on request connections only");
        };
        let mut sub = Sub {
            stream,
            token,
            queue: VecDeque::new(),
            offset: 0,
            dirty: false,
        };
        // The head goes out with one write on a fresh socket; the queue (and its
        // allocation) is only needed if it does not.
        let ok = match sub.stream.write(SSE_HEAD) {
            Ok(n) if n == SSE_HEAD.len() => true,
            Ok(n) => {
                sub.queue.push_back(self.sse_head.clone());
                sub.offset = n;
                flush(&mut sub, self.coalesce).is_ok()
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                sub.queue.push_back(self.sse_head.clone());
                flush(&mut sub, self.coalesce).is_ok()
            }
            Err(_) => false,
        };
        self.subs.push(sub);
        if !ok {
            self.dead.push(token);
            self.reap();
        }
    }

    /// A subscriber has nothing to say: anything it sends is dropped, EOF closes it.
    fn sub_read(&mut self, idx: usize) {
        let sub = &mut self.subs[idx];
        loop {
            match sub.stream.read(&mut self.scratch) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.dead.push(sub.token);
        self.reap();
    }

    /// Frames `body` once and delivers it to every subscriber.
    fn publish(&mut self, body: &[u8]) {
        self.next_id += 1;
        let frame = frame(self.next_id, body);
        let coalesce = self.coalesce;
        for sub in &mut self.subs {
            if !sub.queue.is_empty() {
                // Waiting for the socket to drain (or already queued this iteration).
                if sub.queue.len() >= MAX_QUEUE {
                    self.dead.push(sub.token);
                } else {
                    sub.queue.push_back(frame.clone());
                }
                continue;
            }
            if coalesce > 1 {
                sub.queue.push_back(frame.clone());
                sub.dirty = true;
                self.any_dirty = true;
                continue;
            }
            match sub.stream.write(&frame) {
                Ok(n) if n == frame.len() => {}
                Ok(n) => {
                    sub.queue.push_back(frame.clone());
                    sub.offset = n;
                    // Try again: the socket is full, this arms the writable edge.
                    if flush(sub, 1).is_err() {
                        self.dead.push(sub.token);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    sub.queue.push_back(frame.clone());
                    sub.offset = 0;
                }
                Err(_) => self.dead.push(sub.token),
            }
        }
        self.reap();
    }

    /// Closes every connection in `dead`.
    fn reap(&mut self) {
        while let Some(token) = self.dead.pop() {
            self.close(token);
        }
    }

    fn close(&mut self, token: usize) {
        if let Some(Conn::Sub(idx)) = self.conns.try_remove(token) {
            self.subs.swap_remove(idx);
            if let Some(moved) = self.subs.get(idx) {
                self.conns[moved.token] = Conn::Sub(idx);
            }
        }
        // The socket is closed by the drop, which also takes it out of the poll set.
    }
}

/// Writes queued frames, up to `max` per `writev`, until the queue is empty or the
/// socket is full.
fn flush(sub: &mut Sub, max: usize) -> io::Result<()> {
    while !sub.queue.is_empty() {
        let result = if max == 1 || sub.queue.len() == 1 {
            sub.stream.write(&sub.queue[0][sub.offset..])
        } else {
            let mut iov = [IoSlice::new(&[]); MAX_COALESCE];
            let mut n = 0;
            for (slot, frame) in iov.iter_mut().zip(sub.queue.iter().take(max)) {
                let bytes = if n == 0 {
                    &frame[sub.offset..]
                } else {
                    &frame[..]
                };
                *slot = IoSlice::new(bytes);
                n += 1;
            }
            sub.stream.write_vectored(&iov[..n])
        };
        let mut written = match result {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while written > 0 {
            let left = sub.queue[0].len() - sub.offset;
            if written >= left {
                written -= left;
                sub.queue.pop_front();
                sub.offset = 0;
            } else {
                sub.offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}

/// `id: <id>\ndata: <line>\n` for each line of `body`, then a blank line.
fn frame(id: u64, body: &[u8]) -> Frame {
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.to_string().as_bytes());
    out.push(b'\n');
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    Rc::from(out)
}

fn content_length(headers: &[httparse::Header<'_>]) -> Option<usize> {
    match headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        Some(h) => std::str::from_utf8(h.value).ok()?.trim().parse().ok(),
        None => Some(0),
    }
}
