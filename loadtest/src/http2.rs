//! HTTP/2 subscriber streams (`--h2`): several SSE streams multiplexed on
//! each TLS connection.
//!
//! This module owns the h2 side of the subscribers: which streams ride on
//! which connection and thread ([`layout`]), the connection setup (TCP from a
//! loopback source address, TLS offering only ALPN `h2`, the h2 handshake),
//! the streams' requests and the reading of their DATA frames, and the
//! event-loop threads that run all that and answer the controller.
//!
//! The `h2` crate is async, so each `--threads` thread runs a current-thread
//! tokio runtime with a `LocalSet` (no task leaves its thread; the thread's
//! streams sit in one `RefCell`, as a mio loop keeps them in its `Vec`): one
//! task per connection (connect, handshake, open its streams), one driving
//! each h2 connection, one per stream reading its DATA frames. What a stream
//! receives goes through the same SSE parser and sequence accounting as an
//! HTTP/1.1 stream ([`feed_sse`], [`Book`]), and the controller drives these
//! threads through the same [`Streams`], so deliveries, loss, duplicates,
//! latency and the memory figures mean the same for both. Stream `i`
//! requests the subscribe template with `{i} = i`, as connection `i` does
//! over HTTP/1.1.
//!
//! The client must never be what slows a stream down: its windows are far
//! larger than anything in flight, and every DATA frame's bytes are given
//! back to the flow control as soon as the frame is taken.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use h2::RecvStream;
use http::{Request, Response};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{error::Elapsed, timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::conn::{feed_sse, Book, Cmd, DrainProgress, Handle, Shared, Streams, SubSpec};
use crate::conn::{Tracked, Wake};
use crate::sse::SseParser;
use crate::sys;
use crate::track::Track;

/// Receive window of each stream, advertised in SETTINGS. Bytes are
/// released as soon as they are read, so this only has to exceed what a
/// server may have in flight to one stream.
const STREAM_WINDOW: u32 = 16 << 20;
/// Receive window of a connection (the sum over its streams).
const CONN_WINDOW: u32 = 1 << 30;

/// The h2 connections of thread `t` of `threads`: (connection number, first
/// stream index, streams on it). `n` streams are packed `per_conn` to a
/// connection in index order (the last connection takes the remainder), and
/// connection `c` runs on thread `c % threads`.
pub fn layout(
    n: u64,
    per_conn: u64,
    threads: u64,
    t: u64,
) -> impl Iterator<Item = (u64, u64, u64)> {
    let per_conn = per_conn.max(1);
    (t..n.div_ceil(per_conn))
        .step_by(threads.max(1) as usize)
        .map(move |c| (c, c * per_conn, per_conn.min(n - c * per_conn)))
}

/// Starts `threads` event loops opening `n` streams over connections of
/// `per_conn` streams each, at most `inflight` connections being set up at a
/// time (from connect until each of their streams has its response head).
pub fn start(
    spec: Arc<SubSpec>,
    n: u64,
    threads: usize,
    inflight: usize,
    per_conn: u64,
) -> io::Result<Streams> {
    let shared = Arc::new(Shared::default());
    let mut handles = Vec::new();
    for t in 0..threads {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let notify = Arc::new(Notify::new());
        let (tx, rx) = channel();
        let drain = Arc::new(DrainProgress::default());
        let w = Worker {
            conns: layout(n, per_conn, threads as u64, t as u64).collect(),
            spec: spec.clone(),
            shared: shared.clone(),
            max_inflight: inflight.div_ceil(threads).max(1),
            rx,
            notify: notify.clone(),
            drain: drain.clone(),
        };
        let join = std::thread::Builder::new()
            .name(format!("h2-loop-{t}"))
            .spawn(move || w.run(rt))?;
        handles.push(Handle {
            tx,
            wake: Wake::Notify(notify),
            drain,
            join: Some(join),
        });
    }
    Ok(Streams::from_handles(handles, shared, n))
}

/// The GET request of stream `index`: the subscribe template filled in as
/// for HTTP/1.1, `:authority` from the URL, the same headers (`Accept:
/// text/event-stream`, `Cache-Control: no-cache`, the `--sub-header`s).
pub fn request(spec: &SubSpec, index: u64) -> Result<Request<()>, String> {
    let mut path = Vec::with_capacity(64);
    spec.path_of(index, &mut path);
    let uri = format!("https://{}{}", spec.host, String::from_utf8_lossy(&path));
    let mut b = Request::get(uri)
        .header(http::header::ACCEPT, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache");
    for (k, v) in &spec.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(()).map_err(|e| format!("request: {e}"))
}

/// Refuses a connection on which the server did not pick `h2`: with HTTP/1.1
/// (or no ALPN) it would not be speaking the protocol measured.
pub fn check_alpn(alpn: Option<&[u8]>, addr: SocketAddr) -> Result<(), String> {
    if alpn == Some(crate::tls::ALPN_H2) {
        return Ok(());
    }
    let picked = match alpn {
        Some(p) => format!("ALPN {:?}", String::from_utf8_lossy(p)),
        None => "no ALPN protocol".into(),
    };
    Err(format!(
        "--h2: the server at {addr} negotiated {picked} instead of \"h2\": it does not serve \
         HTTP/2 over TLS there (run without --h2 for HTTP/1.1)"
    ))
}

/// Refuses a connection that could not carry all its streams at once: the
/// ones beyond the server's limit would wait for a slot that never frees.
pub fn check_stream_limit(limit: usize, per_conn: u64) -> Result<(), String> {
    if limit as u64 >= per_conn {
        return Ok(());
    }
    Err(format!(
        "--h2: the server allows {limit} concurrent streams per connection \
         (SETTINGS_MAX_CONCURRENT_STREAMS), fewer than --streams-per-conn {per_conn}"
    ))
}

/// One h2 stream's receiving side.
struct Slot {
    index: u64,
    /// A 2xx response head arrived.
    head_ok: bool,
    /// First DATA bytes arrived.
    ready: bool,
    ended: bool,
    sse: SseParser,
    track: Track,
}

impl Slot {
    fn new(index: u64) -> Slot {
        Slot {
            index,
            head_ok: false,
            ready: false,
            ended: false,
            sse: SseParser::default(),
            track: Track::default(),
        }
    }
}

impl Tracked for Slot {
    fn index(&self) -> u64 {
        self.index
    }
    fn open(&self) -> bool {
        self.head_ok && !self.ended
    }
    fn ended(&self) -> bool {
        self.ended
    }
    fn track(&self) -> &Track {
        &self.track
    }
    fn track_mut(&mut self) -> &mut Track {
        &mut self.track
    }
}

/// A thread's streams and phase (the mio loop's `conns` and `Ctx`).
struct State {
    slots: Vec<Slot>,
    book: Book,
}

/// What every task of a thread shares.
struct Env {
    spec: Arc<SubSpec>,
    shared: Arc<Shared>,
    state: RefCell<State>,
    /// Connections being set up (`--connect-concurrency` over the threads).
    permits: Arc<Semaphore>,
}

impl Env {
    /// Stream `j` got its 2xx response head.
    fn opened(&self, j: usize) {
        self.state.borrow_mut().slots[j].head_ok = true;
        self.shared.open.fetch_add(1, Ordering::Relaxed);
    }

    /// Stream `j` received `data` (one DATA frame) at `now`.
    fn on_data(&self, j: usize, data: &[u8], now: u64) -> Result<(), String> {
        if data.is_empty() {
            return Ok(());
        }
        let mut st = self.state.borrow_mut();
        let State { slots, book } = &mut *st;
        let s = &mut slots[j];
        if !s.ready {
            s.ready = true;
            self.shared.first_bytes.fetch_add(1, Ordering::Relaxed);
        }
        feed_sse(
            &mut s.sse,
            &mut s.track,
            s.index,
            data,
            now,
            &book.phase,
            &mut book.stats,
        )
    }

    /// Stream `j` ended (before its head: failed; after: closed).
    fn end(&self, j: usize, reason: String) {
        let mut st = self.state.borrow_mut();
        let State { slots, book } = &mut *st;
        let s = &mut slots[j];
        if s.ended {
            return;
        }
        s.ended = true;
        s.sse = SseParser::default();
        let was_open = s.head_ok;
        book.ended(&self.shared, was_open, reason);
    }

    /// Streams `from..to` ended before their heads, for one reason.
    fn end_all(&self, from: usize, to: usize, reason: &str) {
        for j in from..to {
            self.end(j, reason.to_string());
        }
    }
}

/// Why a connection could not be set up; `fatal`: the run cannot measure
/// what was asked for (the server does not speak h2).
struct Failure {
    reason: String,
    fatal: bool,
}

impl Failure {
    fn soft(reason: String) -> Failure {
        Failure {
            reason,
            fatal: false,
        }
    }
}

type H2Conn = Connection<TlsStream<TcpStream>, Bytes>;

/// TCP connect from a loopback source address, TLS offering only `h2`, and
/// the h2 handshake.
async fn setup(spec: &SubSpec, c: u64) -> Result<(SendRequest<Bytes>, H2Conn), Failure> {
    let connect = |e: io::Error| Failure::soft(format!("connect: {e}"));
    let src = spec.sources[(c % spec.sources.len() as u64) as usize];
    let sock = TcpSocket::new_v4().map_err(connect)?;
    // As the mio path does: each source address keeps a full port range per
    // destination.
    sys::set_bind_no_port(sock.as_raw_fd());
    sock.bind(SocketAddr::new(src.into(), 0)).map_err(connect)?;
    let tcp = sock.connect(spec.addr).await.map_err(connect)?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(crate::tls::client_config_h2())
        .connect(crate::tls::server_name(spec.addr), tcp)
        .await
        .map_err(|e| handshake_failure(e, spec.addr))?;
    check_alpn(tls.get_ref().1.alpn_protocol(), spec.addr).map_err(|reason| Failure {
        reason,
        fatal: true,
    })?;
    h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .enable_push(false)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| Failure::soft(format!("h2 handshake: {e}")))
}

/// A TLS handshake error; a server that knows ALPN but not `h2` ends the
/// handshake with `no_application_protocol`: fatal, as a wrong pick is.
fn handshake_failure(e: io::Error, addr: SocketAddr) -> Failure {
    let alert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
            )
        });
    if alert {
        return Failure {
            reason: format!(
                "--h2: the server at {addr} refused ALPN \"h2\" (no_application_protocol): it \
                 does not serve HTTP/2 over TLS there (run without --h2 for HTTP/1.1)"
            ),
            fatal: true,
        };
    }
    Failure::soft(format!("tls handshake: {e}"))
}

/// One connection: set it up, then open its streams `first..first + count`
/// (slots of this thread), each read by a task of its own.
async fn connection(env: Rc<Env>, c: u64, first: usize, count: usize) {
    let Ok(permit) = env.permits.clone().acquire_owned().await else {
        return;
    };
    let deadline = Instant::now() + env.spec.connect_timeout;
    let end = first + count;
    let (mut send, conn) = match timeout_at(deadline, setup(&env.spec, c)).await {
        Ok(Ok(x)) => x,
        Ok(Err(f)) => {
            if f.fatal {
                env.shared.set_fatal(f.reason.clone());
            }
            return env.end_all(first, end, &f.reason);
        }
        Err(_) => return env.end_all(first, end, "timeout before the response head"),
    };
    env.shared.tcp_open.fetch_add(1, Ordering::Relaxed);
    // The connection's I/O; when it ends, every stream on it ends too and
    // each stream's task reports why.
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    // Held by every stream until its head arrives: the connection counts as
    // being set up until the last one has it.
    let permit = Rc::new(permit);
    for j in first..end {
        let index = env.state.borrow().slots[j].index;
        let req = match request(&env.spec, index) {
            Ok(r) => r,
            Err(why) => {
                env.end(j, why);
                continue;
            }
        };
        send = match timeout_at(deadline, send.ready()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return env.end_all(j, end, &format!("h2: {e}")),
            Err(_) => return env.end_all(j, end, "timeout before the response head"),
        };
        let resp = match send.send_request(req, true) {
            Ok((resp, _)) => resp,
            Err(e) => {
                env.end(j, format!("h2 request: {e}"));
                continue;
            }
        };
        if j > first {
            let head = timeout_at(deadline, resp);
            tokio::task::spawn_local(stream(env.clone(), j, head, permit.clone()));
            continue;
        }
        // The first response proves the server's SETTINGS arrived (a server
        // sends them first), so its stream limit is known before the others
        // are opened.
        let head = timeout_at(deadline, resp).await;
        let limit = match &head {
            Ok(Ok(_)) => check_stream_limit(send.current_max_send_streams(), count as u64),
            _ => Ok(()),
        };
        tokio::task::spawn_local(stream(env.clone(), j, async { head }, permit.clone()));
        if let Err(why) = limit {
            env.shared.set_fatal(why.clone());
            return env.end_all(j + 1, end, &why);
        }
    }
}

/// One stream: waits for its response head, then reads DATA frames until
/// the stream ends (or the thread stops and drops it).
async fn stream<F>(env: Rc<Env>, j: usize, head: F, permit: Rc<OwnedSemaphorePermit>)
where
    F: Future<Output = Result<Result<Response<RecvStream>, h2::Error>, Elapsed>>,
{
    let resp = match head.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return env.end(j, format!("h2: {e}")),
        Err(_) => return env.end(j, "timeout before the response head".into()),
    };
    drop(permit);
    if !resp.status().is_success() {
        return env.end(j, format!("status {}", resp.status().as_u16()));
    }
    env.opened(j);
    let mut body = resp.into_body();
    let why = loop {
        let data = match body.data().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => break format!("h2: {e}"),
            None if env.state.borrow().slots[j].ready => break "closed by the server".into(),
            None => break "closed by the server before any body bytes".into(),
        };
        let now = sys::now_ns();
        // Given back at once, whatever the parser makes of the bytes: the
        // window stays fully open.
        let _ = body.flow_control().release_capacity(data.len());
        if let Err(why) = env.on_data(j, &data, now) {
            break why;
        }
    };
    env.end(j, why);
}

/// One event-loop thread (see the module doc).
struct Worker {
    /// (connection number, first stream index, streams).
    conns: Vec<(u64, u64, u64)>,
    spec: Arc<SubSpec>,
    shared: Arc<Shared>,
    max_inflight: usize,
    rx: Receiver<Cmd>,
    notify: Arc<Notify>,
    drain: Arc<DrainProgress>,
}

impl Worker {
    fn run(self, rt: tokio::runtime::Runtime) {
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, self.main());
        // Dropping the tasks closes every stream and connection; the runtime
        // (their reactor) goes after them.
        drop(local);
        drop(rt);
    }

    async fn main(self) {
        let slots = self
            .conns
            .iter()
            .flat_map(|&(_, from, k)| from..from + k)
            .map(Slot::new)
            .collect();
        let env = Rc::new(Env {
            spec: self.spec.clone(),
            shared: self.shared.clone(),
            state: RefCell::new(State {
                slots,
                book: Book::default(),
            }),
            permits: Arc::new(Semaphore::new(self.max_inflight)),
        });
        // Every connection's task at once: they take the permits in this
        // order (the semaphore is fair), so connects go in index order.
        let mut first = 0;
        for &(c, _, k) in &self.conns {
            tokio::task::spawn_local(connection(env.clone(), c, first, k as usize));
            first += k as usize;
        }
        loop {
            let draining = env.state.borrow().book.phase.end.is_some();
            // Commands wake the loop; once the phase's end is known, drain
            // progress is refreshed every millisecond (as the mio loops do).
            let tick = Duration::from_millis(if draining { 1 } else { 50 });
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
            loop {
                match self.rx.try_recv() {
                    Ok(cmd) => {
                        let mut st = env.state.borrow_mut();
                        let State { slots, book } = &mut *st;
                        if book.command(cmd, slots) {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    // The controller is gone: stop.
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let st = env.state.borrow();
            st.book.report_drain(&st.slots, &self.drain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Template;
    use std::net::Ipv4Addr;
    use tokio::sync::watch;

    fn spec(addr: SocketAddr, headers: Vec<(String, String)>) -> SubSpec {
        SubSpec {
            addr,
            host: addr.to_string(),
            path: Template::new("/sub?userId=u{i}&x=1"),
            headers,
            sources: vec![Ipv4Addr::LOCALHOST],
            connect_timeout: Duration::from_secs(5),
            tls: true,
        }
    }

    #[test]
    fn layout_covers_every_stream_once() {
        for (n, per, threads) in [
            (2000, 10, 1),
            (2000, 10, 3),
            (7, 3, 2),
            (5, 1, 4),
            (3, 8, 2),
        ] {
            let mut seen = vec![0u32; n as usize];
            let mut conns = 0;
            for t in 0..threads {
                for (c, from, k) in layout(n, per, threads, t) {
                    assert_eq!(c % threads, t, "connection {c} on thread {t}");
                    assert_eq!(from, c * per);
                    assert!(k >= 1 && k <= per);
                    for i in from..from + k {
                        seen[i as usize] += 1;
                    }
                    conns += 1;
                }
            }
            assert!(seen.iter().all(|&x| x == 1), "{n} {per} {threads}");
            assert_eq!(conns, n.div_ceil(per));
        }
        // The last connection takes the remainder.
        let all: Vec<_> = layout(7, 3, 1, 0).collect();
        assert_eq!(all, vec![(0, 0, 3), (1, 3, 3), (2, 6, 1)]);
        assert_eq!(layout(0, 3, 1, 0).count(), 0);
    }

    #[test]
    fn request_fills_the_template_like_http1() {
        let s = spec(
            "127.0.0.1:8443".parse().unwrap(),
            vec![("Authorization".into(), "Bearer t".into())],
        );
        let r = request(&s, 42).unwrap();
        assert_eq!(r.method(), http::Method::GET);
        assert_eq!(r.uri().scheme_str(), Some("https"));
        assert_eq!(r.uri().authority().unwrap().as_str(), "127.0.0.1:8443");
        assert_eq!(
            r.uri().path_and_query().unwrap().as_str(),
            "/sub?userId=u42&x=1"
        );
        assert_eq!(r.headers()["accept"], "text/event-stream");
        assert_eq!(r.headers()["cache-control"], "no-cache");
        assert_eq!(r.headers()["authorization"], "Bearer t");
        // The HTTP/1.1 request of the same index asks for the same path.
        let mut h1 = Vec::new();
        s.request(42, &mut h1);
        assert!(h1.starts_with(b"GET /sub?userId=u42&x=1 HTTP/1.1\r\n"));
    }

    #[test]
    fn alpn_and_stream_limit_checks() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(check_alpn(Some(b"h2"), a).is_ok());
        let e = check_alpn(Some(b"http/1.1"), a).unwrap_err();
        assert!(e.contains("\"http/1.1\"") && e.contains("--h2"), "{e}");
        assert!(check_alpn(None, a).unwrap_err().contains("no ALPN"));
        assert!(check_stream_limit(128, 128).is_ok());
        assert!(check_stream_limit(usize::MAX, 10).is_ok());
        assert!(check_stream_limit(100, 128)
            .unwrap_err()
            .contains("allows 100"));
    }

    /// The event-stream text of stamped events `seqs`, sent at `send_ns`.
    fn stamped(seqs: std::ops::Range<u64>, send_ns: u64) -> Vec<u8> {
        let (mut text, mut payload) = (Vec::new(), Vec::new());
        for seq in seqs {
            crate::payload::encode(&mut payload, send_ns, seq, 30);
            text.extend_from_slice(b"data: ");
            text.extend_from_slice(&payload);
            text.extend_from_slice(b"\n\n");
        }
        text
    }

    /// DATA frames split events anywhere; each stream keeps its own parser
    /// and tracking, and the phase counts as for HTTP/1.1 streams.
    #[test]
    fn data_frames_are_accounted_per_stream() {
        let env = Env {
            spec: Arc::new(spec("127.0.0.1:1".parse().unwrap(), vec![])),
            shared: Arc::new(Shared::default()),
            state: RefCell::new(State {
                slots: vec![Slot::new(0), Slot::new(1)],
                book: Book::default(),
            }),
            permits: Arc::new(Semaphore::new(1)),
        };
        env.opened(0);
        env.opened(1);
        assert!(env
            .on_data(0, b"retry: 1000\n\ndata: CONNECTED\n\n", 1)
            .is_ok());
        let (tx, rx) = channel();
        {
            let mut st = env.state.borrow_mut();
            let State { slots, book } = &mut *st;
            book.command(
                Cmd::Phase {
                    first: 0,
                    users: 0,
                    ack: tx,
                },
                slots,
            );
        }
        assert_eq!(rx.recv().unwrap(), 2);
        let text = stamped(0..4, 1);
        // Stream 0: every event, in frames of 7 bytes; stream 1: all but seq 2,
        // and seq 1 twice.
        for f in text.chunks(7) {
            env.on_data(0, f, 5_000).unwrap();
        }
        let ev = text.len() / 4;
        for k in [0, 1, 1, 3] {
            env.on_data(1, &text[k * ev..(k + 1) * ev], 5_000).unwrap();
        }
        let (tx, rx) = channel();
        let mut st = env.state.borrow_mut();
        let State { slots, book } = &mut *st;
        book.command(
            Cmd::End {
                end: 4,
                holes: vec![],
            },
            slots,
        );
        book.command(Cmd::Collect { ack: tx }, slots);
        let s = rx.recv().unwrap();
        assert_eq!(s.subscribers, 2);
        assert_eq!(s.expected, 8);
        assert_eq!(s.delivered, 7);
        assert_eq!(s.lost, 1);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.latency_us.len(), 7);
        assert_eq!(env.shared.first_bytes.load(Ordering::Relaxed), 2);
    }

    /// A TLS server for the end-to-end tests, offering `alpn`, serving h2
    /// with at most `max_streams` streams per connection: each stream is
    /// answered 200 with `data: CONNECTED`, then, once `go` turns true, with
    /// `events` stamped events cut into 7-byte DATA frames, and kept open.
    /// It runs for at most 30 s.
    fn server(
        alpn: &[&[u8]],
        max_streams: u32,
        events: u64,
        go: watch::Receiver<bool>,
    ) -> SocketAddr {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key.into())
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            let serve = async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, go) = (acceptor.clone(), go.clone());
                    tokio::task::spawn_local(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let Ok(mut conn) = h2::server::Builder::new()
                            .max_concurrent_streams(max_streams)
                            .handshake::<_, Bytes>(tls)
                            .await
                        else {
                            return;
                        };
                        while let Some(Ok((_req, mut respond))) = conn.accept().await {
                            let mut go = go.clone();
                            tokio::task::spawn_local(async move {
                                let head = Response::builder()
                                    .header("content-type", "text/event-stream")
                                    .body(())
                                    .unwrap();
                                let mut send = respond.send_response(head, false).unwrap();
                                let _ = send
                                    .send_data(Bytes::from_static(b"data: CONNECTED\n\n"), false);
                                if go.wait_for(|g| *g).await.is_err() {
                                    return;
                                }
                                for f in stamped(0..events, sys::now_ns()).chunks(7) {
                                    let _ = send.send_data(Bytes::copy_from_slice(f), false);
                                }
                                // Holding `send` keeps the stream open.
                                std::future::pending::<()>().await;
                            });
                        }
                    });
                }
            };
            local.block_on(&rt, async {
                let _ = tokio::time::timeout(Duration::from_secs(30), serve).await;
            });
        });
        addr
    }

    #[test]
    fn streams_over_h2_end_to_end() {
        let (go_tx, go) = watch::channel(false);
        let addr = server(&[b"h2", b"http/1.1"], 128, 5, go);
        // 7 streams, 3 to a connection (3 connections, the last with one
        // stream), over 2 threads.
        let streams = start(Arc::new(spec(addr, vec![])), 7, 2, 10, 3).unwrap();
        assert_eq!(streams.wait_open(Duration::from_secs(10)), (7, 0));
        assert_eq!(streams.wait_first_bytes(Duration::from_secs(10)), 7);
        assert_eq!(streams.shared.tcp_open.load(Ordering::Relaxed), 3);
        assert_eq!(streams.begin_phase(0, 0), 7);
        go_tx.send(true).unwrap();
        assert!(streams.drain(5, &[], 7, Duration::from_secs(10), false));
        let s = streams.collect();
        assert_eq!((s.expected, s.delivered, s.lost), (35, 35, 0));
        assert_eq!((s.duplicates, s.unexpected, s.closed_during), (0, 0, 0));
        assert_eq!(s.latency_us.len(), 35);
        assert!(streams.shared.fatal().is_none());
        streams.stop();
    }

    /// The run's fatal reason against a server that cannot do what `--h2`
    /// asks for (each check returns at once, not after the timeout).
    fn refused(alpn: &[&[u8]], max_streams: u32, per_conn: u64) -> String {
        let (_go_tx, go) = watch::channel(false);
        let addr = server(alpn, max_streams, 0, go);
        let streams = start(Arc::new(spec(addr, vec![])), per_conn, 1, 10, per_conn).unwrap();
        let t0 = std::time::Instant::now();
        streams.wait_open(Duration::from_secs(10));
        assert!(t0.elapsed() < Duration::from_secs(5));
        let why = streams.shared.fatal().expect("a fatal failure");
        streams.stop();
        why
    }

    #[test]
    fn a_server_without_h2_is_refused() {
        // A server that knows ALPN but not h2 ends the handshake.
        let why = refused(&[b"http/1.1"], 128, 2);
        assert!(why.contains("refused ALPN \"h2\""), "{why}");
        // A server that ignores ALPN completes it without a protocol.
        let why = refused(&[], 128, 2);
        assert!(why.contains("no ALPN protocol"), "{why}");
    }

    #[test]
    fn more_streams_than_the_server_allows_are_refused() {
        let why = refused(&[b"h2"], 2, 3);
        assert!(why.contains("allows 2 concurrent streams"), "{why}");
    }
}
