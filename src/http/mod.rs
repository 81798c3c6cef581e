//! HTTP: every accepted connection starts here. The request head is read with
//! [`head::read`] under the header timeout; `GET /api/user/sse/connect` becomes a
//! lean stream (its socket handed to the shard's poll, [`crate::shard::io`]),
//! keep-alive publishes with a plain body are served by [`lean`], anything else
//! by
//! hyper's HTTP/1.1 connection (keep-alive, its own header timeout) with the
//! routes in [`routes`].

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
    let cfg = &shard.shared.config;
    // Most heads fit in 512 bytes; a larger one grows the buffer (to the limit).
    let mut buf = BytesMut::with_capacity(512);
    let Some(head) = read_head(&shard, &mut stream, &mut buf).await else {
        return;
    };
    if head.method == "GET" && head.path == CONNECT_PATH {
        let cors_origin = cors::allowed(&cfg.cors_origins, head.origin.as_deref());
        // A browser app must be able to read a refusal (e.g. 401) to act on it.
        let cors_lines = cors_origin.map(cors::head_lines).unwrap_or_default();
        let params = match params::connect(&head.query) {
            Ok(p) => p,
            Err(e) => return Box::pin(write_error_with(&mut stream, &e, &cors_lines)).await,
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
        match Box::pin(routes::open_stream(&shard, &params, &cr)).await {
            Ok(new) => {
                drop(buf);
                attach_lean(&shard, new, stream);
            }
            Err(e) => Box::pin(write_error_with(&mut stream, &e, &cors_lines)).await,
        }
        return;
    }
    if lean::takes(&head) {
        // Boxed: the publish loop's state is not part of every connection's task.
        return Box::pin(lean::serve(shard, stream, buf, head)).await;
    }
    // hyper's connection future is large: a task of its own, so that the many
    // short-lived tasks of a connect burst stay small.
    tokio::task::spawn_local(serve_hyper(shard, stream, buf));
}

/// Serve a non-stream connection with hyper, starting with the bytes already read.
pub(crate) async fn serve_hyper(shard: Rc<Shard>, stream: TcpStream, read: BytesMut) {
    let cfg = &shard.shared.config;
    let header_timeout = cfg.header_timeout;
    let max_buf = cfg.max_header_bytes.max(8192) + cfg.max_body;
    let io = TokioIo::new(Rewind::new(read.freeze(), stream));
    let service = hyper::service::service_fn(move |req| routes::handle(shard.clone(), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_buf)
        .serve_connection(io, service);
    if let Err(e) = conn.await {
        debug!(error = %e, "http connection ended with an error");
    }
}

/// Hand a lean stream's socket to the shard: out of tokio's reactor (no task, no
/// registration kept per idle stream), into the shard's poll and the table.
fn attach_lean(shard: &Rc<Shard>, new: routes::NewStream, stream: TcpStream) {
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
    if attached {
        table.mark_dirty(new.key);
    } else if let Some(conn) = table.remove(new.key) {
        shard.table_changed(&table);
        drop(table);
        crate::shard::stream::closed(
            shard,
            &conn.user,
            conn.serial,
            conn.topics(),
            CloseReason::ClientClosed,
        );
        return;
    }
    drop(table);
    io::flush(shard);
}

/// Read a request head into `buf` within `--header-timeout`. A head that does
/// not come whole is answered (`408`, `431`, `400`) and the connection closed,
/// or, when the client went away, dropped: `None` either way.
pub(crate) async fn read_head(
    shard: &Shard,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Option<head::Head> {
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
pub async fn write_error(stream: &mut TcpStream, err: &ApiError) {
    write_error_with(stream, err, "").await
}

/// As [`write_error`], with extra header lines (each ending in CRLF).
pub async fn write_error_with(stream: &mut TcpStream, err: &ApiError, extra: &str) {
    let body = err.body();
    let mut out = Vec::with_capacity(160 + extra.len() + body.len());
    json_head(&mut out, err.status, body.len());
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
