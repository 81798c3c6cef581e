//! The publisher and the other blocking clients.
//!
//! `--pub-concurrency C` publishers, each on its own thread with a blocking
//! keep-alive HTTP/1.1 client (std `TcpStream`, timeouts on every read and
//! write) and at most one request in flight. They share one sequence counter
//! and one send schedule (atomics). Each event's payload carries
//! `CLOCK_MONOTONIC` taken just before its request is written and a sequence
//! number taken from the shared counter just before that. At a fixed rate
//! (the total over all publishers) the send times follow a schedule fixed in
//! advance, slot `k` at `t0 + k / rate`, each free publisher taking the next
//! slot: when every publisher is busy (slow responses), the next request goes
//! out as soon as one is free and the lag is recorded, so the offered load is
//! not quietly lowered (no coordinated omission). Rate 0: each publisher sends
//! its next request as soon as its previous response arrived.
//!
//! With `--pub-batch N` a request carries N events: a JSON array of N publish
//! objects (herald's batch), each rendered from the body template with its own
//! sequence number and payload (all stamped with the same `send_ns`). A slot
//! of the schedule is then one request of N events (the rate and
//! `max_events` still count events; the last request may carry fewer).
//!
//! A non-2xx answer is a publish error and does not use up its sequence
//! numbers: the publisher keeps them for its next request (the server refused
//! the events); an I/O error does use them up (the server may have taken
//! them). A number still kept when a publisher stops is a *hole*: never published.
//! Holes at the top of the range just lower the end (with one publisher that
//! is the only case, so numbering is as if there were no counter); others are
//! passed to the subscribers' accounting, which does not expect them.
//! With C > 1 the server may take (and deliver) events in an order other than
//! their sequence order; the subscribers' accounting tolerates that.
//!
//! Also here: a one-shot `GET` (for `--stats-url`) and Redis `INFO stats`
//! over plain RESP (for `--redis-url`).

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::conn::new_hist;
use crate::payload;
use crate::sse::{parse_head, Framing};
use crate::sys;
use crate::target::{push_u64, Template, Url, Vars};

/// A response read by [`HttpClient`].
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A byte stream, plain or TLS.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A blocking HTTP/1.1 client on one keep-alive connection (TLS for `https://`).
pub struct HttpClient {
    addr: SocketAddr,
    timeout: Duration,
    tls: bool,
    stream: Option<Box<dyn Stream>>,
    buf: Vec<u8>,
    got_bytes: bool,
}

impl HttpClient {
    pub fn new(addr: SocketAddr, timeout: Duration) -> HttpClient {
        HttpClient {
            addr,
            timeout,
            tls: false,
            stream: None,
            buf: Vec::with_capacity(4096),
            got_bytes: false,
        }
    }

    /// A client for `url` (TLS when it is `https://`).
    pub fn for_url(url: &Url, timeout: Duration) -> HttpClient {
        HttpClient {
            tls: url.tls,
            ..HttpClient::new(url.addr, timeout)
        }
    }

    /// Sends a complete request and reads its response. A reused connection
    /// that the server closed before answering is retried once on a new one.
    pub fn send(&mut self, req: &[u8]) -> io::Result<Response> {
        let reused = self.stream.is_some();
        match self.try_send(req) {
            Err(_) if reused && !self.got_bytes => {
                self.stream = None;
                self.try_send(req)
            }
            r => r,
        }
    }

    fn try_send(&mut self, req: &[u8]) -> io::Result<Response> {
        self.got_bytes = false;
        let r = self.exchange(req);
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    fn exchange(&mut self, req: &[u8]) -> io::Result<Response> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.stream = Some(if self.tls {
                Box::new(rustls::StreamOwned::new(
                    crate::tls::connection(self.addr)?,
                    s,
                ))
            } else {
                Box::new(s)
            });
        }
        let s = self.stream.as_mut().unwrap().as_mut();
        s.write_all(req)?;
        self.buf.clear();
        let head = loop {
            if let Some(h) =
                parse_head(&self.buf).map_err(|_| io::Error::other("bad response head"))?
            {
                break h;
            }
            if self.buf.len() > 1 << 20 {
                return Err(io::Error::other("response head too large"));
            }
            if read_more(s, &mut self.buf)? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            self.got_bytes = true;
        };
        let mut body = Vec::new();
        let mut at = head.len;
        let mut keep = !head.close;
        match head.framing {
            Framing::Length(n) => {
                let n = n as usize;
                if n > 64 << 20 {
                    return Err(io::Error::other("response body too large"));
                }
                while self.buf.len() - at < n {
                    if read_more(s, &mut self.buf)? == 0 {
                        return Err(ErrorKind::UnexpectedEof.into());
                    }
                }
                body.extend_from_slice(&self.buf[at..at + n]);
            }
            Framing::Chunked(mut dec) => loop {
                let done = dec
                    .feed(&self.buf[at..], &mut |b: &[u8]| body.extend_from_slice(b))
                    .map_err(|_| io::Error::other("bad chunked body"))?;
                at = self.buf.len();
                if done {
                    break;
                }
                if body.len() > 64 << 20 {
                    return Err(io::Error::other("response body too large"));
                }
                if read_more(s, &mut self.buf)? == 0 {
                    return Err(ErrorKind::UnexpectedEof.into());
                }
            },
            Framing::Close => {
                keep = false;
                loop {
                    if read_more(s, &mut self.buf)? == 0 {
                        break;
                    }
                    if self.buf.len() > 64 << 20 {
                        return Err(io::Error::other("response body too large"));
                    }
                }
                body.extend_from_slice(&self.buf[at..]);
            }
        }
        if !keep {
            self.stream = None;
        }
        Ok(Response {
            status: head.status,
            body,
        })
    }
}

fn read_more(s: &mut (impl Read + ?Sized), buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut tmp = [0u8; 16 * 1024];
    loop {
        match s.read(&mut tmp) {
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A one-shot `GET` (connection closed afterwards).
pub fn http_get(url: &Url, timeout: Duration) -> io::Result<Response> {
    let mut c = HttpClient::for_url(url, timeout);
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        url.path, url.host
    );
    c.send(req.as_bytes())
}

/// `total_commands_processed` from Redis `INFO stats` (plain RESP).
pub fn redis_total_commands(url: &Url, timeout: Duration) -> io::Result<u64> {
    let mut s = TcpStream::connect_timeout(&url.addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")?;
    let mut buf = Vec::new();
    loop {
        if let Some(v) = parse_info_reply(&buf)? {
            return Ok(v);
        }
        if buf.len() > 1 << 20 || read_more(&mut s, &mut buf)? == 0 {
            return Err(io::Error::other("short INFO reply"));
        }
    }
}

/// Parses a complete RESP bulk reply to `INFO stats`; `Ok(None)` while short.
fn parse_info_reply(buf: &[u8]) -> io::Result<Option<u64>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let first = std::str::from_utf8(&buf[..eol]).map_err(|_| io::Error::other("bad reply"))?;
    if let Some(err) = first.strip_prefix('-') {
        return Err(io::Error::other(format!("redis: {err}")));
    }
    let len: usize = first
        .strip_prefix('$')
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected reply {first:?}")))?;
    let body = &buf[eol + 2..];
    if body.len() < len {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&body[..len]);
    text.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| io::Error::other("no total_commands_processed in INFO stats"))
}

/// What to publish, and where.
pub struct PubSpec {
    /// Where to POST; its path may use the same placeholders as the body.
    pub url: Url,
    pub path: Template,
    pub body: Template,
    pub headers: Vec<(String, String)>,
    pub payload_bytes: usize,
    /// Targeted: `{user}` is `seq % users`.
    pub users: u64,
    pub timeout: Duration,
    /// Events per request: 1 sends the body as is; N > 1 sends a JSON array of
    /// N bodies, one per event.
    pub batch: usize,
}

/// One publishing run.
#[derive(Clone, Copy, Debug)]
pub struct PubPlan {
    pub first_seq: u64,
    /// Events per second over all publishers; 0 = as fast as possible.
    pub rate: f64,
    pub duration: Duration,
    pub max_events: u64,
    /// Publisher connections (threads), at least 1.
    pub concurrency: usize,
}

/// What the publisher did.
#[derive(Debug)]
pub struct PubResult {
    /// Events answered 2xx.
    pub published: u64,
    /// Requests answered 2xx (= `published` without batches).
    pub requests: u64,
    /// Requests answered non-2xx or failed.
    pub errors: u64,
    pub error_reasons: BTreeMap<String, u64>,
    /// One past the last sequence number used.
    pub end_seq: u64,
    /// Sequence numbers below `end_seq` that no request used (sorted).
    pub holes: Vec<u64>,
    pub started_ns: u64,
    pub finished_ns: u64,
    /// Sends more than 1 ms behind schedule.
    pub late: u64,
    /// How far behind schedule each send was, µs.
    pub lag_us: Histogram<u64>,
    /// Request written → response read, µs.
    pub rtt_us: Histogram<u64>,
}

impl PubSpec {
    /// The template values of event `seq` with its `payload`.
    fn vars<'a>(&self, seq: u64, payload: &'a [u8]) -> Vars<'a> {
        Vars {
            index: seq,
            payload,
            user: if self.users > 0 { seq % self.users } else { 0 },
            seq,
        }
    }

    /// The request head after the path, up to the `Content-Length` value.
    fn request_rest(&self) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        p.extend_from_slice(self.url.host.as_bytes());
        p.extend_from_slice(b"\r\n");
        let mut has_ct = false;
        for (k, v) in &self.headers {
            has_ct |= k.eq_ignore_ascii_case("content-type");
            p.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if !has_ct {
            p.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        p.extend_from_slice(b"Content-Length: ");
        p
    }
}

/// State the publishers share.
struct Shared {
    /// Next sequence number to hand out.
    next_seq: AtomicU64,
    /// Next schedule slot (also counts attempts against `max_events`).
    next_slot: AtomicU64,
}

impl PubResult {
    fn new(started_ns: u64) -> PubResult {
        PubResult {
            published: 0,
            requests: 0,
            errors: 0,
            error_reasons: BTreeMap::new(),
            end_seq: 0,
            holes: Vec::new(),
            started_ns,
            finished_ns: 0,
            late: 0,
            lag_us: new_hist(),
            rtt_us: new_hist(),
        }
    }

    fn merge(&mut self, o: PubResult) {
        self.published += o.published;
        self.requests += o.requests;
        self.errors += o.errors;
        for (k, v) in o.error_reasons {
            *self.error_reasons.entry(k).or_insert(0) += v;
        }
        self.holes.extend(o.holes);
        self.started_ns = self.started_ns.min(o.started_ns);
        self.finished_ns = self.finished_ns.max(o.finished_ns);
        self.late += o.late;
        let _ = self.lag_us.add(&o.lag_us);
        let _ = self.rtt_us.add(&o.rtt_us);
    }
}

/// Publishes per `plan` with `plan.concurrency` publishers; blocking, bounded
/// by `plan.duration` (plus one request timeout and its retry) and
/// `plan.max_events`.
pub fn run(spec: &PubSpec, plan: &PubPlan) -> PubResult {
    let shared = Shared {
        next_seq: AtomicU64::new(plan.first_seq),
        next_slot: AtomicU64::new(0),
    };
    let t0 = sys::now_ns();
    let mut total = PubResult::new(t0);
    let conc = plan.concurrency.max(1);
    if conc == 1 {
        total.merge(publish(spec, plan, &shared, t0));
    } else {
        std::thread::scope(|scope| {
            let joins: Vec<_> = (0..conc)
                .map(|i| {
                    std::thread::Builder::new()
                        .name(format!("publisher-{i}"))
                        .spawn_scoped(scope, || publish(spec, plan, &shared, t0))
                })
                .collect();
            for j in joins {
                match j.map(|j| j.join()) {
                    Ok(Ok(r)) => total.merge(r),
                    Ok(Err(_)) => {
                        *total
                            .error_reasons
                            .entry("publisher thread panicked".into())
                            .or_insert(0) += 1
                    }
                    Err(e) => {
                        *total
                            .error_reasons
                            .entry(format!("publisher thread: {e}"))
                            .or_insert(0) += 1
                    }
                }
            }
        });
    }
    total.end_seq = shared.next_seq.load(Ordering::Relaxed);
    total.holes.sort_unstable();
    // Unused numbers at the top just end the range earlier.
    while total.end_seq > plan.first_seq && total.holes.last() == Some(&(total.end_seq - 1)) {
        total.holes.pop();
        total.end_seq -= 1;
    }
    total
}

/// One publisher: its own connection, at most one request in flight.
fn publish(spec: &PubSpec, plan: &PubPlan, shared: &Shared, t0: u64) -> PubResult {
    let rest = spec.request_rest();
    let batch = spec.batch.max(1) as u64;
    let mut client = HttpClient::for_url(&spec.url, spec.timeout);
    let mut payload_buf = Vec::with_capacity(spec.payload_bytes + 64);
    let mut body = Vec::with_capacity((spec.payload_bytes + 256) * batch as usize);
    let mut req = Vec::with_capacity(rest.len() + body.capacity() + 512);
    let mut r = PubResult::new(t0);
    let end = t0 + plan.duration.as_nanos() as u64;
    // One slot of the schedule is one request of `batch` events.
    let interval = if plan.rate > 0.0 {
        1e9 * batch as f64 / plan.rate
    } else {
        0.0
    };
    // Sequence numbers refused by the server, kept for the next request.
    let mut kept: Vec<u64> = Vec::new();
    // The sequence numbers of the current request.
    let mut seqs: Vec<u64> = Vec::with_capacity(batch as usize);
    loop {
        let slot = shared.next_slot.fetch_add(1, Ordering::Relaxed);
        let first_event = slot.saturating_mul(batch);
        if first_event >= plan.max_events {
            break;
        }
        let events = (plan.max_events - first_event).min(batch) as usize;
        let mut now = sys::now_ns();
        if interval > 0.0 {
            let sched = t0 + (slot as f64 * interval) as u64;
            if sched >= end {
                break;
            }
            if now < sched {
                std::thread::sleep(Duration::from_nanos(sched - now));
                now = sys::now_ns();
            }
            let lag = now.saturating_sub(sched);
            r.lag_us.saturating_record(lag / 1000);
            if lag > 1_000_000 {
                r.late += 1;
            }
        } else if now >= end {
            break;
        }
        // Refused numbers first, then fresh ones.
        seqs.clear();
        seqs.extend(kept.drain(..kept.len().min(events)));
        let fresh = (events - seqs.len()) as u64;
        if fresh > 0 {
            let base = shared.next_seq.fetch_add(fresh, Ordering::Relaxed);
            seqs.extend(base..base + fresh);
        }
        // Build the request; send_ns is taken right before it is written.
        let send_ns = sys::now_ns();
        body.clear();
        if batch > 1 {
            body.push(b'[');
        }
        for (j, &seq) in seqs.iter().enumerate() {
            if j > 0 {
                body.push(b',');
            }
            payload::encode(&mut payload_buf, send_ns, seq, spec.payload_bytes);
            spec.body.render(&spec.vars(seq, &payload_buf), &mut body);
        }
        if batch > 1 {
            body.push(b']');
        }
        req.clear();
        req.extend_from_slice(b"POST ");
        // With batches the path has no per-event placeholder (checked by the caller).
        spec.path
            .render(&spec.vars(seqs[0], &payload_buf), &mut req);
        req.extend_from_slice(&rest);
        push_u64(&mut req, body.len() as u64);
        req.extend_from_slice(b"\r\n\r\n");
        req.extend_from_slice(&body);
        let res = client.send(&req);
        r.rtt_us
            .saturating_record(sys::now_ns().saturating_sub(send_ns) / 1000);
        match res {
            Ok(resp) if (200..300).contains(&resp.status) => {
                r.published += seqs.len() as u64;
                r.requests += 1;
            }
            Ok(resp) => {
                r.errors += 1;
                kept.append(&mut seqs);
                kept.sort_unstable();
                let text = String::from_utf8_lossy(&resp.body);
                let text: String = text.chars().take(80).collect();
                *r.error_reasons
                    .entry(format!("status {}: {}", resp.status, text.trim()))
                    .or_insert(0) += 1;
            }
            Err(e) => {
                r.errors += 1;
                *r.error_reasons.entry(format!("io: {e}")).or_insert(0) += 1;
                // Do not spin on a refused connection.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    r.holes.extend(kept);
    r.finished_ns = sys::now_ns();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn info_reply() {
        let text = "# Stats\r\ntotal_connections_received:3\r\ntotal_commands_processed:12345\r\n";
        let reply = format!("${}\r\n{}\r\n", text.len(), text);
        assert_eq!(parse_info_reply(reply.as_bytes()).unwrap(), Some(12345));
        assert_eq!(parse_info_reply(&reply.as_bytes()[..20]).unwrap(), None);
        assert!(parse_info_reply(b"-NOAUTH Authentication required.\r\n").is_err());
    }

    /// Reads one request (head, then Content-Length bytes); returns its
    /// body, or None at EOF.
    fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            let n = s.read(&mut tmp).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&tmp[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                let cl: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= p + 4 + cl {
                    return Some(buf[p + 4..p + 4 + cl].to_vec());
                }
            }
        }
    }

    /// A tiny server answering each request with the given raw responses in turn.
    fn serve(responses: Vec<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            for resp in responses {
                if read_request(&mut s).is_none() {
                    return;
                }
                s.write_all(resp).unwrap();
            }
        });
        addr
    }

    /// A server taking `conns` keep-alive connections at once; refuses (503)
    /// every event whose sequence number is in `refuse`, accepts (202) the
    /// others and reports their sequence numbers.
    fn serve_concurrent(
        conns: usize,
        refuse: &'static [u64],
    ) -> (SocketAddr, std::sync::mpsc::Receiver<u64>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..conns {
                let (mut s, _) = l.accept().unwrap();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    while let Some(body) = read_request(&mut s) {
                        let seq = payload::decode(&body).unwrap().seq;
                        if refuse.contains(&seq) {
                            s.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
                                .unwrap();
                        } else {
                            tx.send(seq).unwrap();
                            s.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                                .unwrap();
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    fn spec_for(addr: SocketAddr) -> PubSpec {
        PubSpec {
            url: Url {
                addr,
                host: addr.to_string(),
                path: "/pub".into(),
                tls: false,
            },
            path: Template::new("/pub"),
            body: Template::new("{payload}"),
            headers: vec![],
            payload_bytes: 50,
            users: 0,
            timeout: Duration::from_secs(5),
            batch: 1,
        }
    }

    #[test]
    fn concurrent_publishers_share_the_sequence() {
        let (addr, rx) = serve_concurrent(4, &[]);
        let plan = PubPlan {
            first_seq: 100,
            rate: 0.0,
            duration: Duration::from_secs(5),
            max_events: 200,
            concurrency: 4,
        };
        let r = run(&spec_for(addr), &plan);
        assert_eq!((r.published, r.errors, r.end_seq), (200, 0, 300));
        assert!(r.holes.is_empty());
        let mut got: Vec<u64> = rx.try_iter().collect();
        got.sort_unstable();
        assert_eq!(got, (100..300).collect::<Vec<_>>());
        assert_eq!(r.rtt_us.len(), 200);
    }

    #[test]
    fn refused_numbers_are_kept_then_become_holes() {
        // Seq 3 is always refused: its publisher retries it with every slot
        // it takes, and it ends as a hole.
        let (addr, rx) = serve_concurrent(4, &[3]);
        let plan = PubPlan {
            first_seq: 0,
            rate: 0.0,
            duration: Duration::from_secs(5),
            max_events: 100,
            concurrency: 4,
        };
        let r = run(&spec_for(addr), &plan);
        assert_eq!(r.published + r.errors, 100);
        assert!(r.errors >= 1);
        assert_eq!(r.holes, vec![3]);
        let mut got: Vec<u64> = rx.try_iter().collect();
        got.sort_unstable();
        let want: Vec<u64> = (0..r.end_seq).filter(|s| *s != 3).collect();
        assert_eq!(got, want);
        assert_eq!(r.published, r.end_seq - 1);

        // One publisher: a refused last number is not a hole, the range ends below it.
        let (addr, _rx) = serve_concurrent(1, &[5]);
        let plan = PubPlan {
            concurrency: 1,
            max_events: 10,
            ..plan
        };
        let r = run(&spec_for(addr), &plan);
        assert_eq!((r.published, r.errors, r.end_seq), (5, 5, 5));
        assert!(r.holes.is_empty());
    }

    /// A server taking one keep-alive connection of batch publishes: refuses
    /// (503) its `refuse`-th request (from 0), accepts (202) the others and
    /// reports each accepted request's sequence numbers, checking that every
    /// element is a publish object with its own stamped payload.
    fn serve_batches(refuse: usize) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u64>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut n = 0;
            while let Some(body) = read_request(&mut s) {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let seqs: Vec<u64> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        assert_eq!(e["target"], "all");
                        let data = e["data"].as_str().unwrap();
                        assert_eq!(data.len(), 50);
                        payload::decode(data.as_bytes()).unwrap().seq
                    })
                    .collect();
                if n == refuse {
                    s.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
                        .unwrap();
                } else {
                    tx.send(seqs).unwrap();
                    s.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
                        .unwrap();
                }
                n += 1;
            }
        });
        (addr, rx)
    }

    #[test]
    fn batches_carry_one_stamped_object_per_event() {
        let (addr, rx) = serve_batches(usize::MAX);
        let spec = PubSpec {
            body: Template::new(r#"{"data":"{payload}","target":"all"}"#),
            batch: 4,
            ..spec_for(addr)
        };
        let plan = PubPlan {
            first_seq: 10,
            rate: 0.0,
            duration: Duration::from_secs(5),
            max_events: 10,
            concurrency: 1,
        };
        let r = run(&spec, &plan);
        // 10 events: requests of 4, 4 and 2.
        assert_eq!(
            (r.published, r.requests, r.errors, r.end_seq),
            (10, 3, 0, 20)
        );
        assert!(r.holes.is_empty());
        let got: Vec<Vec<u64>> = rx.try_iter().collect();
        assert_eq!(
            got,
            vec![vec![10, 11, 12, 13], vec![14, 15, 16, 17], vec![18, 19]]
        );

        // A refused batch keeps its numbers for the next request.
        let (addr, rx) = serve_batches(1);
        let spec = PubSpec {
            body: Template::new(r#"{"data":"{payload}","target":"all"}"#),
            batch: 4,
            ..spec_for(addr)
        };
        let plan = PubPlan {
            first_seq: 0,
            max_events: 12,
            ..plan
        };
        let r = run(&spec, &plan);
        assert_eq!((r.published, r.requests, r.errors, r.end_seq), (8, 2, 1, 8));
        assert!(r.holes.is_empty());
        let got: Vec<Vec<u64>> = rx.try_iter().collect();
        assert_eq!(got, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    }

    #[test]
    fn keep_alive_sized_and_chunked() {
        let addr = serve(vec![
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 8\r\n\r\n{\"id\":1}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno",
        ]);
        let mut c = HttpClient::new(addr, Duration::from_secs(5));
        let req = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}";
        let r = c.send(req).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (202, &b"{\"id\":1}"[..]));
        let r = c.send(req).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let r = c.send(req).unwrap();
        assert_eq!(r.status, 400);
    }

    #[test]
    fn publisher_counts_and_bodies() {
        let addr = serve(vec![
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}";
            5
        ]);
        let spec = PubSpec {
            url: Url {
                addr,
                host: addr.to_string(),
                path: "/pub/u{user}".into(),
                tls: false,
            },
            path: Template::new("/pub/u{user}"),
            body: Template::new("{payload}"),
            headers: vec![],
            payload_bytes: 50,
            users: 3,
            timeout: Duration::from_secs(5),
            batch: 1,
        };
        let r = run(
            &spec,
            &PubPlan {
                first_seq: 7,
                rate: 0.0,
                duration: Duration::from_secs(5),
                max_events: 5,
                concurrency: 1,
            },
        );
        assert_eq!((r.published, r.errors, r.end_seq), (5, 0, 12));
        assert!(r.holes.is_empty());
    }
}
