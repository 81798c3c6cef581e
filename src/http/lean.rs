//! The lean publish path: a keep-alive connection whose requests are plain
//! publishes (`POST /api/broadcast` with a `Content-Length` body) is served
//! here, without hyper: the head is parsed once with httparse (the one
//! [`super::head::read`] already did), the body is the bytes after it, and the
//! answer is written with one `write`. Publishing is the same two steps as
//! hyper's route ([`super::routes::publish_body`]: [`super::routes::publish_at_once`],
//! then [`super::routes::publish_parsed`] for what has to wait, boxed so that
//! this loop's state stays small), so the answers are the same; what
//! this saves is hyper's per-request machinery (its own parse into a header
//! map, the body channel, the response encoder), which measured as most of
//! herald's user-space CPU per publish.
//!
//! Anything else on the connection (another route, a chunked body, `Expect`,
//! HTTP/1.0) is handed to hyper with the bytes already read, and hyper serves
//! the rest of the connection. Once a request's first byte came, its head must
//! arrive within `--header-timeout` ([`super::read_head`], as every head) and
//! then its body within as long again (`408` past either); an idle keep-alive
//! connection waits for its next request at most `--idle-timeout`.
//!
//! A request is refused from its head, before its body is read (the
//! connection then closes): `401` without the publisher credential, `413`
//! over `--max-body`, `503` when the shard holds `--body-budget` of bodies
//! already. So a body is only ever buffered for a client that may publish,
//! and what one connection holds is its head and one body, for at most twice
//! `--header-timeout`.

use std::rc::Rc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::head::Head;
use super::{cors, routes};
use crate::error::ApiError;
use crate::shard::Shard;

/// The publish route.
pub const PUBLISH_PATH: &str = "/api/broadcast";

/// Whether this path serves the request `h`.
pub fn takes(h: &Head) -> bool {
    h.method == "POST" && h.path == PUBLISH_PATH && h.keep_alive && h.plain_body.is_some()
}

/// Serve publishes on `stream` (whose first head, `head`, is parsed and still
/// at the start of `buf`) until the client closes or sends something else.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream, mut buf: BytesMut, mut head: Head) {
    let cfg = &shard.shared.config;
    let mut out: Vec<u8> = Vec::with_capacity(256);
    // When the body being read must be complete (set when it is not yet).
    let mut deadline = None;
    loop {
        let len = head.plain_body.unwrap_or(0);
        // Refused before its body is read: a client that may not publish, a
        // body over the limit, a shard whose body budget is spent. The
        // connection closes after the answer (its body is not read).
        let refusal = if len > cfg.max_body as u64 {
            Some(ApiError::new(
                413,
                "body_too_large",
                format!("publish body exceeds {} bytes", cfg.max_body),
            ))
        } else {
            shard
                .shared
                .auth
                .check_publisher(head.authorization.as_deref())
                .err()
        };
        let need = head.len + len as usize;
        let cors_origin = cors::allowed(&cfg.cors_origins, head.origin.as_deref());
        if let Some(e) = refusal {
            if buf.len() >= need && len <= cfg.max_body as u64 {
                // The body came with the head: skipped, and the connection
                // stays for the next request.
                buf.advance(need);
                encode(&mut out, &Err(e), cors_origin, !cfg.cors_origins.is_empty());
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                match next_head(&shard, &mut stream, &mut buf).await {
                    Some(next) if takes(&next) => {
                        head = next;
                        continue;
                    }
                    Some(_) => return Box::pin(super::serve_hyper(shard, stream, buf)).await,
                    None => return,
                }
            }
            let mut lines = String::new();
            encode_cors(&mut lines, cors_origin, !cfg.cors_origins.is_empty());
            return super::write_error_with(&mut stream, &e, &lines).await;
        }
        let permit = if buf.len() < need {
            match shard.body_permit(len as usize) {
                Some(p) => Some(p),
                None => {
                    let e = ApiError::new(
                        503,
                        "busy",
                        "this pod holds all the request bodies it may; retry shortly",
                    );
                    return super::write_error(&mut stream, &e).await;
                }
            }
        } else {
            None
        };
        while buf.len() < need {
            buf.reserve(need - buf.len());
            let until = *deadline.get_or_insert_with(|| Instant::now() + cfg.header_timeout);
            match tokio::time::timeout_at(until, stream.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => {
                    // The budget is given back before the answer's linger.
                    drop(permit);
                    let e = ApiError::new(
                        408,
                        "body_timeout",
                        "the request body did not arrive in time",
                    );
                    return super::write_error(&mut stream, &e).await;
                }
            }
        }
        let result = match std::mem::replace(&mut head.idempotency_key, Ok(None)) {
            Err(e) => Err(e),
            Ok(key) => match routes::publish_at_once(&shard, &buf[head.len..need], key) {
                Ok(routes::AtOnce::Done(answer)) => Ok((answer, false)),
                // Boxed: what may wait is not part of this loop's state.
                Ok(routes::AtOnce::Wait(parsed, key)) => {
                    Box::pin(routes::publish_parsed(&shard, parsed, key)).await
                }
                Err(e) => Err(e),
            },
        };
        drop(permit);
        // Advanced past, not split off: a split counts a reference atomically.
        buf.advance(need);
        encode(&mut out, &result, cors_origin, !cfg.cors_origins.is_empty());
        if stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        deadline = None;
        match next_head(&shard, &mut stream, &mut buf).await {
            Some(next) if takes(&next) => head = next,
            // Another kind of request: hyper serves the rest of the
            // connection, from this request's first byte.
            Some(_) => return Box::pin(super::serve_hyper(shard, stream, buf)).await,
            None => return,
        }
    }
}

/// The next request's head on a keep-alive connection whose earlier requests
/// are all consumed from `buf`. Its first byte may take `--idle-timeout`; the
/// rest of its head is read as every head is.
async fn next_head(shard: &Rc<Shard>, stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Head> {
    if buf.is_empty() {
        if buf.capacity() > 4096 {
            // An idle connection gives a large body's memory back.
            *buf = BytesMut::new();
        }
        buf.reserve(512);
        let idle = shard.shared.config.idle_timeout;
        match tokio::time::timeout(idle, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(_)) => {}
        }
    }
    // Most often the whole head came with the wake-up read: parsed here,
    // without read_head's timer and future.
    match super::head::parse(buf) {
        Ok(Some(next)) => Some(next),
        _ => Box::pin(super::read_head(shard, stream, buf)).await,
    }
}

/// The answer to one publish, head and body, into `out`: the same status, body
/// and headers hyper's route gives (CORS included), kept alive.
fn encode(
    out: &mut Vec<u8>,
    result: &Result<(crate::idempotency::Answer, bool), ApiError>,
    cors_origin: Option<&str>,
    cors_on: bool,
) {
    let error_body;
    let (status, body, replayed) = match result {
        Ok((a, replayed)) => (202, &a[..], *replayed),
        Err(e) => {
            error_body = e.body();
            (e.status, error_body.as_bytes(), false)
        }
    };
    super::json_head(out, status, body.len());
    if replayed {
        out.extend_from_slice(b"idempotent-replayed: true\r\n");
    }
    let mut lines = String::new();
    encode_cors(&mut lines, cors_origin, cors_on);
    out.extend_from_slice(lines.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The CORS lines of an answer (as hyper's route adds them).
fn encode_cors(lines: &mut String, cors_origin: Option<&str>, cors_on: bool) {
    match cors_origin {
        Some(origin) => lines.push_str(&cors::head_lines(origin)),
        None if cors_on => lines.push_str("vary: origin\r\n"),
        None => {}
    }
}
