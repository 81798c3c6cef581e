//! HTTP: every accepted connection starts here. The request head is read with
//! [`head::read`] under the header timeout; `GET /api/user/sse/connect` becomes a
//! lean stream (its socket handed to the shard's poll, [`crate::shard::io`]),
//! keep-alive publishes with a plain body are served by [`lean`], anything else
//! by hyper's HTTP/1.1 connection (keep-alive, its own header timeout) with the
//! routes in [`routes`]. With `--tls-cert` the handshake comes first, and a
//! connection that chose HTTP/2 is handed to [`crate::http2`].

pub mod cors;
pub mod head;
pub mod lean;
pub mod params;
pub mod publish;
pub mod routes;

use std::rc::Rc;

use bytes::BytesMut;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use crate::conn::CloseReason;
use crate::error::{self, ApiError};
use crate::shard::io;
use crate::shard::Shard;
use head::{HeadError, Rewind};

/// The connect endpoint.
pub const CONNECT_PATH: &str = "/api/user/sse/connect";

/// Serve one accepted connection until it ends.
pub async fn serve_conn(shard: Rc<Shard>, mut stream: TcpStream) {
    if shard.shared.tls.is_some() {
        // Boxed: the handshake and HTTP/2 state are not part of plain connections.
        return Box::pin(serve_tls(shard, stream)).await;
    }
    // Most heads fit in 512 bytes; a larger one grows the buffer (to the limit).
    let mut buf = BytesMut::with_capacity(512);
    let head = match first_request(&shard, &mut stream, &mut buf).await {
        First::Stream(new) => {
            drop(buf);
            return attach_lean(&shard, new, stream, None);
        }
        First::Request(head) => head,
        First::Done => return,
    };
    if lean::takes(&head) {
        // Boxed: the publish loop's state is not part of every connection's task.
        return Box::pin(lean::serve(shard, stream, buf, head)).await;
    }
    // hyper's connection future is large: a task of its own, so that the many
    // short-lived tasks of a connect burst stay small.
    tokio::task::spawn_local(serve_hyper(shard, stream, buf));
}

/// What a connection's first request turned out to be.
enum First {
    /// A connect, admitted: its stream is in the table.
    Stream(routes::NewStream),
    /// Any other request, its head parsed (its bytes still in the buffer).
    Request(head::Head),
    /// Nothing more to do: closed, timed out, or refused (the answer written).
    Done,
}

/// Read a connection's first head (plain or TLS) and open the stream when it
/// is a connect.
async fn first_request<S>(shard: &Rc<Shard>, stream: &mut S, buf: &mut BytesMut) -> First
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(head) = read_head(shard, stream, buf).await else {
        return First::Done;
    };
    if head.method != "GET" || head.path != CONNECT_PATH {
        return First::Request(head);
    }
    match open_from_head(shard, head, stream).await {
        Some(new) => First::Stream(new),
        None => First::Done,
    }
}

/// A connect whose head herald read itself (plain or TLS): its parameters, its
/// admission and registration, its response head and first frames queued. On
/// refusal the error (with CORS lines, so a browser app can read it) is written
/// to `stream` and `None` returned.
async fn open_from_head<S>(
    shard: &Rc<Shard>,
    head: head::Head,
    stream: &mut S,
) -> Option<routes::NewStream>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let cfg = &shard.shared.config;
    let cors_origin = cors::allowed(&cfg.cors_origins, head.origin.as_deref());
    let cors_lines = cors_origin.map(cors::head_lines).unwrap_or_default();
    let params = match params::connect(&head.query) {
        Ok(p) => p,
        Err(e) => {
            Box::pin(write_error_with(stream, &e, &cors_lines)).await;
            return None;
        }
    };
    let last_event_id = head.last_event_id.or_else(|| params.last_event_id.clone());
    let cr = routes::ConnectReq {
        last_event_id: last_event_id.as_deref(),
        bearer: head.authorization.as_deref().and_then(crate::auth::bearer),
        raw_head: true,
        cors_origin,
    };
    // Boxed: it lives only while a connect is admitted, and keeps the
    // per-connection task small while heads are read.
    match Box::pin(routes::open_stream(shard, &params, &cr)).await {
        Ok(new) => Some(new),
        Err(e) => {
            Box::pin(write_error_with(stream, &e, &cors_lines)).await;
            None
        }
    }
}

/// Serve a non-stream connection with hyper, starting with the bytes already read.
pub(crate) async fn serve_hyper(shard: Rc<Shard>, stream: TcpStream, read: BytesMut) {
    serve_h1(shard, Rewind::new(read.freeze(), stream)).await
}

/// An HTTPS connection: the handshake (bounded by the header timeout), then
/// HTTP/2 or HTTP/1.1 as ALPN chose: HTTP/2 is herald's own ([`crate::http2`]),
/// HTTP/1.1 as on the plain port (lean streams, hyper for the rest).
async fn serve_tls(shard: Rc<Shard>, stream: TcpStream) {
    let cfg = &shard.shared.config;
    let Some(tls) = shard.shared.tls.as_ref() else {
        return;
    };
    // A TLS connection opens with a handshake record (0x16); anything else is
    // plain HTTP sent to the HTTPS port, told so in plain HTTP.
    let mut first = [0u8; 1];
    match tokio::time::timeout(cfg.header_timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            crate::metrics::tls_failed("plain_http");
            let mut stream = stream;
            let e = ApiError::new(
                400,
                "https_required",
                "this port speaks HTTPS: use https://",
            );
            return write_error(&mut stream, &e).await;
        }
        _ => return crate::metrics::tls_failed("timeout"),
    }
    let stream = crate::tls::WholeRecords::new(stream);
    // The handshake's traffic secrets are captured as rustls derives them
    // (for key updates once herald has the keys, `crate::tls::keys`).
    let handshake = crate::tls::keys::capture(tls.acceptor().accept(stream));
    let accepted = tokio::time::timeout(cfg.header_timeout, handshake).await;
    let (stream, secrets) = match accepted {
        Ok((Ok(s), secrets)) => (s, secrets),
        Ok((Err(e), _)) => {
            debug!(error = %e, "TLS handshake failed");
            return crate::metrics::tls_failed("handshake");
        }
        Err(_) => return crate::metrics::tls_failed("timeout"),
    };
    if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) {
        return start_h2(shard, stream, secrets).await;
    }
    // A task of its own for what follows: a task keeps room for its largest
    // state, and the handshake's must not stay allocated for the connection's
    // life. The stream is boxed once, so that no future holds two copies of it.
    tokio::task::spawn_local(serve_tls_h1(shard, Box::new(stream), secrets));
}

/// Write what rustls still has to send before its keys are taken: records
/// must leave in sequence. That is its session tickets (TLS 1.3) and a
/// KeyUpdate it owes: rustls answers a client's KeyUpdate(update_requested)
/// by moving to its next sending key at once and parking its reply, sealed
/// under the old key, until it next writes (`perhaps_write_key_update`); an
/// empty plaintext write through its writer puts the reply in line (tokio-rustls
/// skips empty writes), the flush sends it.
async fn flush_rustls<S>(stream: &mut TlsStream<S>) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    std::io::Write::write(&mut stream.get_mut().1.writer(), &[])?;
    stream.flush().await
}

/// HTTP/2 over TLS is herald's own ([`crate::http2`]): rustls' last records
/// (session tickets, a KeyUpdate it owes) are written, what it has opened is
/// read out, its keys are taken and the rest of it dropped.
async fn start_h2(
    shard: Rc<Shard>,
    mut stream: TlsStream<crate::tls::WholeRecords<TcpStream>>,
    secrets: crate::tls::keys::Captured,
) {
    if let Err(e) = flush_rustls(&mut stream).await {
        return debug!(error = %e, "HTTP/2 connection failed after its handshake");
    }
    let (whole, mut conn) = stream.into_inner();
    let mut plain = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut conn.reader(), &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => plain.extend_from_slice(&chunk[..n]),
        }
    }
    let (tcp, records) = whole.into_parts();
    match crate::tls::record::take_both(conn, &secrets) {
        Ok(keys) => crate::http2::spawn(shard, tcp, keys, records, plain),
        Err(e) => debug!(error = %e, "cannot take an HTTP/2 connection's keys"),
    }
}

/// HTTP/1.1 over TLS: the first head is read here, as on the plain port,
/// rustls still given whole records ([`crate::tls::WholeRecords`]). A connect
/// becomes a lean stream like a plain one, its records sealed and opened by the
/// shard ([`crate::tls::lean`]): the rustls connection is dropped once its
/// keys are taken, and what was read after its last record is the stream's
/// first input. Anything else is served by hyper from the bytes read.
async fn serve_tls_h1(
    shard: Rc<Shard>,
    mut stream: Box<TlsStream<crate::tls::WholeRecords<TcpStream>>>,
    secrets: crate::tls::keys::Captured,
) {
    let mut buf = BytesMut::with_capacity(512);
    match first_request(&shard, &mut stream, &mut buf).await {
        First::Stream(new) => {
            drop(buf);
            let flushed = flush_rustls(&mut stream).await;
            let (whole, conn) = stream.into_inner();
            let (tcp, early) = whole.into_parts();
            let lean = flushed
                .map_err(|e| e.to_string())
                .and_then(|()| crate::tls::lean::LeanTls::take(conn, &secrets));
            match lean {
                Ok(lean) => attach_lean(&shard, new, tcp, Some((lean, early))),
                Err(e) => {
                    debug!(error = %e, "cannot take a TLS stream's keys");
                    abandon(&shard, new.key, new.serial);
                }
            }
        }
        First::Request(_) => {
            drop(secrets);
            stream.get_mut().0.pass_through();
            Box::pin(serve_h1(shard, Rewind::new(buf.freeze(), stream))).await
        }
        First::Done => {}
    }
}

/// HTTP/1.1 by hyper with herald's routes, over a plain or a TLS connection
/// (starting with the bytes already read, through [`Rewind`]).
async fn serve_h1<I>(shard: Rc<Shard>, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let cfg = &shard.shared.config;
    // A head and one read of body: bodies stream through it (a route reads
    // its body in chunks), so a client cannot make it hold one whole.
    let max_buf = cfg.max_header_bytes.max(8192) + 8192;
    let header_timeout = cfg.header_timeout;
    // Boxed: the connection keeps the service's future while a stream lasts;
    // boxed, it is freed once the response is made.
    let service =
        hyper::service::service_fn(move |req| Box::pin(routes::handle(shard.clone(), req)));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_buf)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        debug!(error = %e, "http connection ended with an error");
    }
}

/// Hand a lean stream's socket to the shard: out of tokio's reactor (no task, no
/// registration kept per idle stream), into the shard's poll and the table; a
/// TLS stream with its record layer and what was read after the records
/// rustls opened.
fn attach_lean(
    shard: &Rc<Shard>,
    new: routes::NewStream,
    stream: TcpStream,
    tls: Option<(Box<crate::tls::lean::LeanTls>, Vec<u8>)>,
) {
    let sock = stream.into_std().map(mio::net::TcpStream::from_std);
    let mut table = shard.table.borrow_mut();
    let attached = match sock {
        Ok(mut sock) => match shard.io.register(&mut sock, new.key) {
            Ok(()) => match table.get_mut(new.key).filter(|c| c.serial == new.serial) {
                Some(conn) => {
                    conn.io = Some(sock);
                    true
                }
                None => false,
            },
            Err(e) => {
                debug!(error = %e, "cannot register a stream socket");
                false
            }
        },
        Err(e) => {
            debug!(error = %e, "cannot take a stream socket from the runtime");
            false
        }
    };
    if !attached {
        drop(table);
        return abandon(shard, new.key, new.serial);
    }
    drop(table);
    if let Some((lean, early)) = tls {
        io::attach_tls(shard, new.key, lean, &early);
    }
    shard.table.borrow_mut().mark_dirty(new.key);
    io::flush(shard);
}

/// A stream admitted but never attached: out of the table and reported closed,
/// as a hyper-served stream's guard ends one.
fn abandon(shard: &Rc<Shard>, key: usize, serial: u64) {
    crate::shard::stream::StreamGuard::new(shard.clone(), key, serial)
        .finish(CloseReason::ClientClosed);
}

/// Read a request head into `buf` within `--header-timeout`. A head that does
/// not come whole is answered (`408`, `431`, `400`) and the connection closed,
/// or, when the client went away, dropped: `None` either way.
pub(crate) async fn read_head<S>(
    shard: &Shard,
    stream: &mut S,
    buf: &mut BytesMut,
) -> Option<head::Head>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let cfg = &shard.shared.config;
    let read = head::read(&mut *stream, buf, cfg.max_header_bytes);
    let err = match tokio::time::timeout(cfg.header_timeout, read).await {
        Ok(Ok(head)) => return Some(head),
        Ok(Err(HeadError::Closed)) => return None,
        Err(_) => {
            debug!("request head timed out");
            ApiError::new(
                408,
                "header_timeout",
                "request headers did not arrive in time",
            )
        }
        Ok(Err(HeadError::TooLarge)) => ApiError::new(
            431,
            "headers_too_large",
            format!("request headers exceed {} bytes", cfg.max_header_bytes),
        ),
        Ok(Err(HeadError::Malformed)) => {
            ApiError::bad_request("malformed_request", "not a valid HTTP/1.1 request")
        }
    };
    Box::pin(write_error(stream, &err)).await;
    None
}

/// The head of a JSON response up to its extra header lines: the status line,
/// the content type and length, and `WWW-Authenticate` on a `401`.
pub(crate) fn json_head(out: &mut Vec<u8>, status: u16, body_len: usize) {
    use crate::sse::frame::push_decimal;
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(error::reason(status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    push_decimal(out, body_len as u64);
    out.extend_from_slice(b"\r\n");
    if status == 401 {
        out.extend_from_slice(b"www-authenticate: Bearer\r\n");
    }
}

/// Write a JSON error response and close the connection.
pub async fn write_error<S>(stream: &mut S, err: &ApiError)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    write_error_with(stream, err, "").await
}

/// As [`write_error`], with extra header lines (each ending in CRLF).
pub async fn write_error_with<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    err: &ApiError,
    extra: &str,
) {
    let body = if err.status == 204 {
        String::new()
    } else {
        err.body()
    };
    let mut out = Vec::with_capacity(160 + extra.len() + body.len());
    if err.status == 204 {
        // A blocked user's connect: no body, which an EventSource obeys.
        out.extend_from_slice(b"HTTP/1.1 204 No Content\r\n");
    } else {
        json_head(&mut out, err.status, body.len());
    }
    out.extend_from_slice(extra.as_bytes());
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    // Read what the client still sends (briefly, boundedly) before closing, so the
    // close is a FIN and not a reset that could destroy the response in flight.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), async {
        let mut total = 0;
        while total < 256 << 10 {
            match tokio::io::AsyncReadExt::read(stream, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}
