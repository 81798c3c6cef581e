//! The endpoints: connect (shared by the lean path and hyper), disconnect, stats,
//! publish, health and metrics. Handlers validate, call the broker or the shard,
//! and answer JSON; every refusal is an [`ApiError`].

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use serde_json::json;

use super::cors;
use super::params::{self, ConnectParams};
use super::publish;
use crate::broker::{Initial, OpenError, OpenRequest};
use crate::clock;
use crate::conn::table::NewConn;
use crate::conn::{CloseReason, QueuedFrame};
use crate::error::ApiError;
use crate::idempotency::{Answer, Claim};
use crate::metrics as m;
use crate::seam::{Elsewhere, Health, Published, Registration, ResumeFrom};
use crate::shard::stream::{QueueBody, StreamGuard};
use crate::shard::Shard;
use crate::sse::frame;
use crate::Shared;

/// Response body: a complete JSON/text body, or an SSE stream.
pub type HeraldBody = Either<Full<Bytes>, QueueBody>;

/// The head of every lean SSE response. The body ends when the connection
/// closes, so no chunked framing is spent on each event.
const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
x-accel-buffering: no\r\nconnection: close\r\n\r\n";

/// What a connect brings besides its query parameters.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectReq<'a> {
    /// `Last-Event-ID` (or `lastEventId`).
    pub last_event_id: Option<&'a str>,
    /// The bearer token of the `Authorization` header.
    pub bearer: Option<&'a str>,
    /// The lean path writes its own response head.
    pub raw_head: bool,
    /// The request's `Origin`, when CORS allows it (lean path head).
    pub cors_origin: Option<&'a str>,
}

/// Register a stream on this shard and queue what it starts with: (the lean
/// path's response head,) `retry:`, `CONNECTED`, then the replay, `RESYNC` or the
/// pending events. Returns where it lives; the caller attaches its transport.
pub async fn open_stream(
    shard: &Rc<Shard>,
    p: &ConnectParams,
    cr: &ConnectReq<'_>,
) -> Result<NewStream, ApiError> {
    let shared = &shard.shared;
    let broker = &shared.broker;
    let last_event_id = cr.last_event_id;
    let token = cr.bearer.or(p.token.as_deref());
    shared.auth.prepare(token).await;
    // A presence stream (the internal user) was let in as a publisher.
    if !crate::presence::is_internal(&p.user) {
        shared.auth.check_subscriber(token, &p.user, &p.topics)?;
    }
    if broker.is_blocked(&p.user, clock::unix_ms()) {
        // Ended with reconnect=false: 204 makes an EventSource stop for good.
        m::connect_rejected("blocked");
        return Err(ApiError::new(
            204,
            "blocked",
            "this user's streams were ended with reconnect=false",
        ));
    }
    if broker.is_draining() {
        return Err(draining());
    }
    let admitted = shard
        .admission
        .borrow_mut()
        .admit(clock::now_ns(), shared.config.connect_queue_timeout);
    match admitted {
        Err(()) => {
            m::connect_rejected("overloaded");
            return Err(ApiError::new(
                503,
                "overloaded",
                "too many new connections; retry shortly",
            ));
        }
        Ok(wait) if !wait.is_zero() => {
            tokio::time::sleep(wait).await;
            if broker.is_draining() {
                return Err(draining());
            }
        }
        Ok(_) => {}
    }
    let conn_id = p
        .conn_id
        .clone()
        // A v4 UUID from the thread-local generator: no syscall per connect.
        .unwrap_or_else(|| {
            uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
                .into_uuid()
                .to_string()
        });
    let serial = broker.next_serial();
    let registry = &shared.registry;
    // Refuse before registering what would be refused anyway.
    if registry.is_shared() && broker.counts().0 >= shared.config.max_connections {
        return Err(pod_full(shared));
    }
    let joined = registry
        .register(Registration {
            user: &p.user,
            conn_id: &conn_id,
            serial,
            topics: &p.topics,
            resume: last_event_id.map(ResumeFrom::parse),
        })
        .await;
    if broker.is_draining() {
        // The drain's batch may have missed it: take it out again.
        registry.abandon(&p.user, &conn_id, serial, &p.topics);
        return Err(draining());
    }
    // From here to the insert nothing awaits, so the reserved key stays free.
    let mut table = shard.table.borrow_mut();
    let key = table.vacant_key();
    let req = OpenRequest {
        user: &p.user,
        conn_id: &conn_id,
        topics: &p.topics,
        last_event_id,
        shard: shard.id,
        key: key as u32,
        local_history_complete: !registry.is_shared(),
    };
    let opened = broker.open(&req, serial, joined).map_err(|e| {
        registry.abandon(&p.user, &conn_id, serial, &p.topics);
        match e {
            OpenError::PodFull => pod_full(shared),
            OpenError::UserFull => {
                m::connect_rejected("user_full");
                ApiError::new(
                    429,
                    "too_many_connections",
                    "this user holds its maximum of connections",
                )
            }
        }
    })?;
    let inserted = table.insert(NewConn {
        serial,
        user: &p.user,
        topics: &p.topics,
        last_id: opened.floor,
        partition: registry.partition_of(&p.user),
    });
    debug_assert_eq!(inserted, key);
    let conn = table.get_mut(key).expect("just inserted");
    // The response head (lean path) and the `CONNECTED` block, opened by its
    // `retry:` line, leave as one buffer.
    let connected =
        json!({ "userId": p.user, "connectionId": conn_id, "podId": broker.pod_id() }).to_string();
    let mut first = BytesMut::with_capacity(SSE_HEAD.len() + connected.len() + 64);
    if cr.raw_head {
        match cr.cors_origin {
            // The CORS lines go before the blank line that ends the head.
            Some(origin) => {
                first.extend_from_slice(&SSE_HEAD[..SSE_HEAD.len() - 2]);
                first.extend_from_slice(cors::head_lines(origin).as_bytes());
                first.extend_from_slice(b"\r\n");
            }
            None => first.extend_from_slice(SSE_HEAD),
        }
    }
    first.extend_from_slice(&frame::retry(shared.retry_hint_ms()));
    first.extend_from_slice(&frame::unnumbered("CONNECTED", &connected));
    let mut start = |bytes: Bytes, published_ns: u64| {
        conn.queue.push_initial(QueuedFrame {
            bytes,
            published_ns,
        })
    };
    start(first.freeze(), 0);
    match opened.initial {
        Initial::Pending(frames) => {
            for f in frames {
                start(f.bytes, f.published_ns);
            }
        }
        Initial::Replay(events) => {
            for ev in events {
                start(ev.frame.clone(), ev.published_ns);
            }
        }
        Initial::Resync => {
            let data = json!({ "reason": "history_unavailable", "lastEventId": last_event_id })
                .to_string();
            start(frame::unnumbered("RESYNC", &data), 0);
        }
    }
    if let Some(old) = opened.replaced {
        if old.shard == shard.id {
            table.close(old.key as usize, old.serial, CloseReason::Replaced);
        } else {
            broker.close_remote(old, CloseReason::Replaced, None);
        }
    }
    shard.table_changed(&table);
    drop(table);
    // Writes this connect's first frames and ends a replaced stream of this shard.
    crate::shard::io::flush(shard);
    shard.counters.opened.increment(1);
    Ok(NewStream { key, serial })
}

/// A connect refused because the pod is shutting down (counted).
fn draining() -> ApiError {
    m::connect_rejected("draining");
    ApiError::new(
        503,
        "draining",
        "this pod is shutting down; reconnect elsewhere",
    )
}

/// A stream registered in its shard's table, before its transport is attached.
#[derive(Debug, Clone, Copy)]
pub struct NewStream {
    pub key: usize,
    pub serial: u64,
}

fn authorization<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// What a request is, decided when its headers arrive (herald's HTTP/2 asks
/// before any body is read, so that only a body its route takes is kept, and
/// never one from a client that may not publish).
pub enum Intake {
    /// A publish: its body is read (up to `--max-body`) and served.
    Body,
    /// A route that reads no body: anything sent is dropped.
    NoBody,
    /// Refused now (authentication): the answer.
    Refuse(Response<HeraldBody>),
}

/// Route and authenticate a request from its head alone.
pub fn intake(shard: &Rc<Shard>, req: &http::request::Parts) -> Intake {
    let publisher = || {
        let bearer = req
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        shard.shared.auth.check_publisher(bearer)
    };
    let checked = match (req.uri.path(), &req.method) {
        ("/api/broadcast", &Method::POST) => publisher().map(|()| Intake::Body),
        ("/api/user/sse/disconnect", &Method::POST) => publisher().map(|()| Intake::NoBody),
        ("/api/presence", &Method::POST) => publisher().map(|()| Intake::Body),
        ("/api/presence/stream" | "/api/user/sse/connections", &Method::GET) => {
            publisher().map(|()| Intake::NoBody)
        }
        _ => Ok(Intake::NoBody),
    };
    checked.unwrap_or_else(|e| Intake::Refuse(error_for(shard, Some(&req.headers), &e)))
}

/// An error answer to a request with these headers (CORS lines for its
/// origin when it is allowed, as every answer of [`handle`] has them).
pub fn error_for(
    shard: &Shard,
    headers: Option<&http::HeaderMap>,
    e: &ApiError,
) -> Response<HeraldBody> {
    let origin = headers
        .and_then(|h| h.get(header::ORIGIN))
        .and_then(|v| v.to_str().ok());
    with_cors(shard, origin, error_response(e))
}

/// The hyper service: route one request (from hyper, or from herald's own
/// HTTP/2 with its body collected).
pub async fn handle<B>(
    shard: Rc<Shard>,
    req: Request<B>,
) -> Result<Response<HeraldBody>, Infallible>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_string();
    // HEAD is GET without the body (RFC 9110 §9.3.2; the transports leave the
    // body out), for every route but the connect, which opens a stream.
    let method = match req.method() {
        &Method::HEAD if path != super::CONNECT_PATH => Method::GET,
        m => m.clone(),
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if method == Method::OPTIONS {
        let cors_origin = cors::allowed(&shard.shared.config.cors_origins, origin.as_deref());
        return Ok(preflight(origin.as_deref(), cors_origin));
    }
    let auth = &shard.shared.auth;
    let result = match (path.as_str(), &method) {
        ("/api/user/sse/connect", &Method::GET) => connect(&shard, &req).await,
        ("/api/user/sse/disconnect", &Method::POST) => {
            match auth.check_publisher(authorization(&req)) {
                Ok(()) => disconnect(&shard, &req).await,
                Err(e) => Err(e),
            }
        }
        ("/api/user/sse/stats", &Method::GET) => match auth.check_publisher(authorization(&req)) {
            Ok(()) => Ok(stats(&shard).await),
            Err(e) => Err(e),
        },
        ("/api/broadcast", &Method::POST) => match auth.check_publisher(authorization(&req)) {
            Ok(()) => broadcast(&shard, req).await,
            Err(e) => Err(e),
        },
        ("/api/user/sse/connections", &Method::GET) => {
            match auth.check_publisher(authorization(&req)) {
                Ok(()) => user_connections(&shard, &req).await,
                Err(e) => Err(e),
            }
        }
        ("/api/presence", &Method::POST) => match auth.check_publisher(authorization(&req)) {
            Ok(()) => presence_query(&shard, req).await,
            Err(e) => Err(e),
        },
        ("/api/presence/stream", &Method::GET) => match auth.check_publisher(authorization(&req)) {
            Ok(()) => presence_stream(&shard, &req).await,
            Err(e) => Err(e),
        },
        ("/health/live", &Method::GET) => {
            Ok(json_response(StatusCode::OK, json!({ "status": "live" })))
        }
        ("/health/ready", &Method::GET) => Ok(ready(&shard)),
        ("/" | "/index.html", &Method::GET) => Ok(page()),
        ("/metrics", &Method::GET) => Ok(metrics(&shard)),
        (
            "/"
            | "/index.html"
            | "/api/user/sse/connect"
            | "/api/user/sse/stats"
            | "/api/user/sse/connections"
            | "/api/presence/stream"
            | "/health/live"
            | "/health/ready"
            | "/metrics",
            _,
        ) => Err(method_not_allowed("GET")),
        ("/api/user/sse/disconnect" | "/api/broadcast" | "/api/presence", _) => {
            Err(method_not_allowed("POST"))
        }
        _ => Err(ApiError::not_found(format!("no route for {path}"))),
    };
    let resp = result.unwrap_or_else(|e| error_response(&e));
    Ok(with_cors(&shard, origin.as_deref(), resp))
}

/// Add the CORS lines an answer to a request from `origin` carries.
fn with_cors(
    shard: &Shard,
    origin: Option<&str>,
    mut resp: Response<HeraldBody>,
) -> Response<HeraldBody> {
    let cors_origin = cors::allowed(&shard.shared.config.cors_origins, origin);
    if !shard.shared.config.cors_origins.is_empty() && cors_origin.is_none() {
        // The answer depends on Origin: caches must not reuse it across origins.
        resp.headers_mut()
            .append(header::VARY, header::HeaderValue::from_static("origin"));
    }
    if let Some(origin) = cors_origin {
        let h = resp.headers_mut();
        if let Ok(v) = header::HeaderValue::from_str(origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                header::HeaderValue::from_static("true"),
            );
            h.append(header::VARY, header::HeaderValue::from_static("origin"));
        }
    }
    resp
}

/// Answer `OPTIONS`: a CORS preflight from an allowed origin gets the methods and
/// headers herald accepts, one from any other origin `403`; without an `Origin`
/// it is a plain `OPTIONS` (`204` with `Allow`).
fn preflight(origin: Option<&str>, allowed: Option<&str>) -> Response<HeraldBody> {
    if origin.is_none() {
        return Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::ALLOW, cors::ALLOW_METHODS)
            .body(Either::Left(Full::new(Bytes::new())))
            .expect("static response parts");
    }
    let Some(v) = allowed.and_then(|o| header::HeaderValue::from_str(o).ok()) else {
        return error_response(&ApiError::new(
            403,
            "cors_origin_refused",
            "this origin is not allowed (see --cors-origin)",
        ));
    };
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, v)
        .header(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, cors::ALLOW_METHODS)
        .header(header::ACCESS_CONTROL_ALLOW_HEADERS, cors::ALLOW_HEADERS)
        .header(header::ACCESS_CONTROL_MAX_AGE, cors::MAX_AGE)
        .header(header::VARY, "origin")
        .body(Either::Left(Full::new(Bytes::new())))
        .expect("static response parts")
}

fn method_not_allowed(allow: &str) -> ApiError {
    ApiError::new(405, "method_not_allowed", format!("use {allow}"))
}

async fn connect<B>(shard: &Rc<Shard>, req: &Request<B>) -> Result<Response<HeraldBody>, ApiError> {
    let p = params::connect(req.uri().query().unwrap_or(""))?;
    let header_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let last_event_id = header_id.or_else(|| p.last_event_id.clone());
    let cr = ConnectReq {
        last_event_id: last_event_id.as_deref(),
        bearer: authorization(req).and_then(crate::auth::bearer),
        raw_head: false,
        cors_origin: None,
    };
    sse_response(shard, open_stream(shard, &p, &cr).await?)
}

/// The answer that carries a stream opened on this shard.
fn sse_response(shard: &Rc<Shard>, stream: NewStream) -> Result<Response<HeraldBody>, ApiError> {
    let guard = StreamGuard::new(shard.clone(), stream.key, stream.serial);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Either::Right(QueueBody::new(guard)))
        .expect("static response parts"))
}

/// `GET /api/user/sse/connections?userId=U`: the user's live connections in
/// the whole cluster (this pod's registry when embedded).
async fn user_connections<B>(
    shard: &Rc<Shard>,
    req: &Request<B>,
) -> Result<Response<HeraldBody>, ApiError> {
    let user = params::user_only(req.uri().query().unwrap_or(""))?;
    let shared = &shard.shared;
    let list = if shared.registry.is_shared() {
        shared
            .registry
            .connections_of(&user)
            .await
            .ok_or_else(registry_unavailable)?
    } else {
        let pod = shared.broker.pod_id();
        shared
            .broker
            .connections_of(&user)
            .into_iter()
            .map(|c| crate::presence::ConnInfo {
                conn_id: c.conn_id.into(),
                pod: pod.to_string(),
                topics: c
                    .topics
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
                // Its last heartbeat is its shard's last one since it connected.
                heartbeat_ms: shared
                    .shard_stats
                    .get(c.shard as usize)
                    .map_or(0, |s| s.heartbeat_ms.load(Ordering::Relaxed))
                    .max(c.connected_ms),
                connected_ms: c.connected_ms,
            })
            .collect()
    };
    let connections: Vec<_> = list.iter().map(|c| c.to_json()).collect();
    Ok(json_response(
        StatusCode::OK,
        json!({ "userId": user, "connections": connections }),
    ))
}

/// `POST /api/presence`: live connections per user and streams per topic.
async fn presence_query<B>(
    shard: &Rc<Shard>,
    req: Request<B>,
) -> Result<Response<HeraldBody>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = read_body(shard, req).await?;
    let q = crate::presence::parse_query(&body)?;
    let shared = &shard.shared;
    let counts = if shared.registry.is_shared() {
        shared
            .registry
            .presence(&q)
            .await
            .ok_or_else(registry_unavailable)?
    } else {
        shared.broker.presence_counts(&q)
    };
    Ok(json_response(StatusCode::OK, counts.to_json()))
}

/// `GET /api/presence/stream`: a stream of the internal presence user on the
/// presence topic, opened like any stream (ids, heartbeats, resume).
async fn presence_stream<B>(
    shard: &Rc<Shard>,
    req: &Request<B>,
) -> Result<Response<HeraldBody>, ApiError> {
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .or_else(|| {
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .find(|(k, v)| k == "lastEventId" && !v.is_empty())
                .map(|(_, v)| v.into_owned())
        });
    let p = ConnectParams {
        user: crate::presence::WATCHER.to_string(),
        conn_id: None,
        topics: vec![crate::presence::TOPIC.into()],
        last_event_id: None,
        token: None,
    };
    let cr = ConnectReq {
        last_event_id: last_event_id.as_deref(),
        bearer: None,
        raw_head: false,
        cors_origin: None,
    };
    sse_response(shard, open_stream(shard, &p, &cr).await?)
}

fn registry_unavailable() -> ApiError {
    ApiError::new(
        503,
        "registry_unavailable",
        "the cluster registry is unreachable; retry shortly",
    )
}

async fn disconnect<B>(
    shard: &Rc<Shard>,
    req: &Request<B>,
) -> Result<Response<HeraldBody>, ApiError> {
    let p = params::disconnect(req.uri().query().unwrap_or(""))?;
    let broker = &shard.shared.broker;
    let registry = &shard.shared.registry;
    if let Some(block_for) = p.block_for {
        // reconnect=false: every stream of the user ends, here and on every
        // pod, and its connects are answered 204 until then.
        let until = clock::unix_ms() + block_for.as_millis() as u64;
        let ended = shard.shared.end_user(&p.user, until);
        if !registry.block_everywhere(&p.user, until).await {
            return Err(ApiError::new(
                503,
                "registry_unavailable",
                "the user is refused on this pod, but the cluster registry is unreachable: \
                 send the same request again",
            ));
        }
        return Ok(json_response(
            StatusCode::OK,
            json!({ "disconnected": ended, "blockedUntil": until }),
        ));
    }
    let conn_id = p.conn_id.as_deref().unwrap_or_default();
    let Some(loc) = broker.disconnect(&p.user, conn_id) else {
        // Not on this pod: in a cluster, end it on the pod that holds it.
        return match registry.disconnect_elsewhere(&p.user, conn_id).await {
            Elsewhere::Ended => Ok(json_response(
                StatusCode::OK,
                json!({ "disconnected": true }),
            )),
            Elsewhere::NotFound => Err(ApiError::not_found("no such connection")),
            Elsewhere::Unreachable => Err(ApiError::new(
                503,
                "registry_unavailable",
                "the connection is not on this pod and the cluster registry is unreachable",
            )),
        };
    };
    registry.unregister(&p.user, conn_id, loc.serial);
    if loc.shard == shard.id {
        shard
            .table
            .borrow_mut()
            .close(loc.key as usize, loc.serial, CloseReason::Disconnected);
        crate::shard::io::flush(shard);
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        broker.close_remote(loc, CloseReason::Disconnected, Some(tx));
        // The stream is already unregistered; wait (boundedly) for its shard to end it.
        let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
    }
    Ok(json_response(
        StatusCode::OK,
        json!({ "disconnected": true }),
    ))
}

async fn stats(shard: &Rc<Shard>) -> Response<HeraldBody> {
    let shared = &shard.shared;
    let (connections, users) = shared.broker.counts();
    let shards: Vec<_> = shared
        .shard_stats
        .iter()
        .enumerate()
        .map(|(i, s)| json!({ "shard": i, "connections": s.connections.load(Ordering::Relaxed) }))
        .collect();
    let delivered: u64 = shared
        .shard_stats
        .iter()
        .map(|s| s.delivered.load(Ordering::Relaxed))
        .sum();
    let mut body = json!({
        "podId": shared.broker.pod_id(),
        "connections": connections,
        "users": users,
        "shards": shards,
        "draining": shared.broker.is_draining(),
        // Totals since start (deliveries flushed once a second): a page or a
        // script derives rates from two readings.
        "events": { "published": shared.broker.events(), "delivered": delivered },
    });
    if shared.registry.is_shared() {
        let cluster = shared.registry.stats().await.map(|s| {
            json!({
                "pods": s.pods,
                "connections": s.connections,
                "users": s.users,
                "inactive": s.inactive,
            })
        });
        body["cluster"] = cluster.unwrap_or(serde_json::Value::Null);
        let up = !matches!(
            shared.registry.health(),
            Health::Degraded { problem, .. }
                if matches!(problem, "unreachable" | "auth" | "tls" | "sentinel")
        );
        body["redis"] = json!(if up { "up" } else { "down" });
    }
    json_response(StatusCode::OK, body)
}

async fn broadcast<B>(shard: &Rc<Shard>, req: Request<B>) -> Result<Response<HeraldBody>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let key = crate::idempotency::key_of(
        req.headers()
            .get_all("idempotency-key")
            .iter()
            .map(|v| v.as_bytes()),
    )?;
    let body = read_body(shard, req).await?;
    let (answer, replayed) = publish_body(shard, &body, key).await?;
    Ok(answer_response(&answer, replayed))
}

/// Read a request body: at most `--max-body`, within `--header-timeout`,
/// counted against the shard's body budget while it is read (HTTP/1.1).
async fn read_body<B>(shard: &Rc<Shard>, req: Request<B>) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max = shard.shared.config.max_body;
    let too_large = || {
        ApiError::new(
            413,
            "body_too_large",
            format!("the request body exceeds {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    // Over HTTP/1.1 the body is still to be read: it counts against the
    // shard's body budget while it is held, and must arrive within the
    // header timeout. (herald's HTTP/2 hands over bodies already complete
    // and counted.)
    let _permit = match req.version() {
        http::Version::HTTP_2 => None,
        _ => match shard.body_permit(declared.map_or(max, |n| n as usize)) {
            Some(p) => Some(p),
            None => {
                return Err(ApiError::new(
                    503,
                    "busy",
                    "this pod holds all the request bodies it may; retry shortly",
                ))
            }
        },
    };
    let collect = Limited::new(req.into_body(), max).collect();
    let body = match tokio::time::timeout(shard.shared.config.header_timeout, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(_)) => {
            return Err(ApiError::bad_request(
                "body_read_failed",
                "could not read the request body",
            ))
        }
        Err(_) => {
            return Err(ApiError::new(
                408,
                "body_timeout",
                "the request body did not arrive in time",
            ))
        }
    };
    Ok(body)
}

/// Publish a request's body (one event or a batch) under its `Idempotency-Key`:
/// the answer, and whether it is a replay of an earlier one. Shared by hyper's
/// route and the lean publish path ([`super::lean`]).
pub async fn publish_body(
    shard: &Rc<Shard>,
    body: &[u8],
    key: Option<Box<str>>,
) -> Result<(Answer, bool), ApiError> {
    match publish_at_once(shard, body, key)? {
        AtOnce::Done(answer) => Ok((answer, false)),
        AtOnce::Wait(parsed, key) => publish_parsed(shard, parsed, key).await,
    }
}

/// What [`publish_at_once`] did.
pub enum AtOnce {
    /// Published; the `202` body.
    Done(Answer),
    /// Parsed and valid, to be published by [`publish_parsed`].
    Wait(publish::PublishBody<'static>, Option<Box<str>>),
}

/// The most common publish, done without waiting and without a future: one
/// event, no `Idempotency-Key`, a bus that sequences on the spot (the embedded
/// one, [`crate::seam::EventBus::publish_now`]) and room in the shard's round.
/// Anything else comes back parsed as [`AtOnce::Wait`]; a bad body is its error.
pub fn publish_at_once(
    shard: &Shard,
    body: &[u8],
    key: Option<Box<str>>,
) -> Result<AtOnce, ApiError> {
    let p = match publish::parse_body(body)? {
        publish::PublishBody::One(p) if key.is_none() && shard.has_publish_room() => p,
        parsed => return Ok(AtOnce::Wait(parsed.into_owned(), key)),
    };
    let mut published = m::PublishedCount::default();
    published.add(&p.target);
    let shared = &shard.shared;
    match shared.bus.publish_now(&shared.broker, p) {
        Ok(id) => {
            shard.published(1);
            published.record();
            Ok(AtOnce::Done(Answer::from(ids_body(Some(&[id]), 1, false))))
        }
        Err(p) => Ok(AtOnce::Wait(publish::PublishBody::One(p).into_owned(), key)),
    }
}

/// Publish a parsed body under its `Idempotency-Key` (see [`publish_body`]).
pub async fn publish_parsed(
    shard: &Shard,
    parsed: publish::PublishBody<'static>,
    key: Option<Box<str>>,
) -> Result<(Answer, bool), ApiError> {
    let shared = &shard.shared;
    let ticket = match &key {
        None => None,
        Some(k) => match shared.idempotency.claim(k).await {
            Claim::First(t) => Some(t),
            Claim::Replay(answer) => {
                m::idempotency_replayed();
                return Ok(((*answer).clone(), true));
            }
            Claim::Busy => {
                return Err(ApiError::new(
                    409,
                    "idempotency_key_in_flight",
                    "a publish with this Idempotency-Key is still in flight; retry later",
                ))
            }
        },
    };
    let (items, is_batch) = match parsed {
        publish::PublishBody::One(p) => (vec![p.into_owned()], false),
        publish::PublishBody::Batch(items) => (items, true),
    };
    let n = items.len();
    let mut published = m::PublishedCount::default();
    for p in &items {
        published.add(&p.target);
    }
    shard.publish_room().await;
    let outcome = shared
        .bus
        .publish(&shared.broker, items, key.as_deref())
        .await;
    shard.published(n);
    let (body, replayed) = match outcome {
        Published::Full => return Err(buffer_full()),
        Published::Ids { ids, replayed } => (ids_body(Some(&ids), n, is_batch), replayed),
        // No id yet: it is assigned when Redis takes the events.
        Published::Buffered { replayed } => (ids_body(None, n, is_batch), replayed),
    };
    if replayed {
        m::idempotency_replayed();
    } else {
        published.record();
    }
    let answer = Answer::from(body);
    if let Some(t) = ticket {
        t.complete(answer.clone());
    }
    Ok((answer, replayed))
}

/// A publish's `202` body, written directly (it is on every publish):
/// `{"id":"…"}`, or for a batch `{"ids":["…",…]}`; `null`s and
/// `"buffered":true` when Redis has not taken the events yet.
fn ids_body(ids: Option<&[u64]>, n: usize, is_batch: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + n * 24);
    b.extend_from_slice(if is_batch {
        &b"{\"ids\":["[..]
    } else {
        &b"{\"id\":"[..]
    });
    for i in 0..n {
        if i > 0 {
            b.push(b',');
        }
        match ids.and_then(|ids| ids.get(i)) {
            Some(id) => {
                b.push(b'"');
                frame::push_decimal(&mut b, *id);
                b.push(b'"');
            }
            None => b.extend_from_slice(b"null"),
        }
    }
    if is_batch {
        b.push(b']');
    }
    if ids.is_none() {
        b.extend_from_slice(b",\"buffered\":true");
    }
    b.push(b'}');
    b
}

/// A connect past the pod's maximum of streams: `429` when that maximum is the
/// operator's `--max-connections`, `503` when it is what the open-file limit
/// leaves room for (logged at most once per second, with a count).
fn pod_full(shared: &Shared) -> ApiError {
    if !shared.fd_bound {
        m::connect_rejected("pod_full");
        return ApiError::new(
            429,
            "too_many_connections",
            "this pod holds its maximum of connections",
        );
    }
    m::connect_rejected("fd_limit");
    let max = shared.config.max_connections;
    if let Some(n) = crate::fdlimit::REFUSED_AT_LIMIT.hit(clock::now_ns() / 1_000_000) {
        tracing::warn!(
            refused = n,
            streams = max,
            "{n} connect(s) refused since the last report: this pod holds the {max} streams \
             its open-file limit leaves room for"
        );
    }
    ApiError::new(
        503,
        "at_capacity",
        "this pod holds all the streams its open-file limit allows; retry on another pod or later",
    )
}

/// A publish's `202` answer; a replay carries `Idempotent-Replayed: true`.
fn answer_response(a: &Answer, replayed: bool) -> Response<HeraldBody> {
    let mut b = Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_TYPE, "application/json");
    if replayed {
        b = b.header("idempotent-replayed", "true");
    }
    b.body(Either::Left(Full::new(a.clone())))
        .expect("static response parts")
}

fn buffer_full() -> ApiError {
    ApiError::new(
        503,
        "redis_unavailable",
        "the cluster's Redis is unreachable and the publish buffer is full; retry later",
    )
}

/// The built-in page (web/index.html, compiled into the binary): connect, watch
/// events arrive, publish, live stats. Same origin only; no external resource.
const PAGE: &str = include_str!("../../web/index.html");

fn page() -> Response<HeraldBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self' 'unsafe-inline'; \
             style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        )
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(Either::Left(Full::new(Bytes::from_static(PAGE.as_bytes()))))
        .expect("static response parts")
}

/// Readiness: `503` only for what this pod can tell is its own trouble
/// (draining, its event reader stalled while its other Redis commands
/// succeed, full); Redis trouble every pod sees alike keeps it `200`, with the
/// degraded state in the body and `herald_ready_state`, so that a load
/// balancer keeps every pod while each serves its own streams.
fn ready(shard: &Rc<Shard>) -> Response<HeraldBody> {
    let (status, state, body) = readiness(&shard.shared);
    m::set_ready_state(state);
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        body,
    )
}

/// The readiness answer: status code, state (`herald_ready_state`), body.
fn readiness(shared: &crate::Shared) -> (u16, &'static str, serde_json::Value) {
    if shared.broker.is_draining() {
        (503, "draining", json!({ "status": "draining" }))
    } else if shared.broker.counts().0 >= shared.config.max_connections {
        (
            503,
            "full",
            json!({ "status": "full", "connections": shared.config.max_connections }),
        )
    } else {
        match shared.registry.health() {
            Health::Ok => (200, "ready", json!({ "status": "ready" })),
            Health::Degraded {
                problem,
                detail,
                denied,
            } => {
                let mut body = json!({
                    "status": "degraded",
                    "redis": problem,
                    "detail": detail,
                    "publishes": "buffered",
                });
                if !denied.is_empty() {
                    body["deniedCommands"] = json!(denied);
                }
                (200, "degraded", body)
            }
            Health::Stalled => (
                503,
                "stalled",
                json!({ "status": "stalled", "redis": "up", "delivery": "stalled" }),
            ),
        }
    }
}

fn metrics(shard: &Rc<Shard>) -> Response<HeraldBody> {
    // The readiness state as of this scrape, whether or not a probe asked.
    m::set_ready_state(readiness(&shard.shared).1);
    let mut text = shard.shared.prometheus.render();
    m::render_shards(&shard.shared.shard_stats, &mut text);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Either::Left(Full::new(Bytes::from(text))))
        .expect("static response parts")
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<HeraldBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Either::Left(Full::new(Bytes::from(body.to_string()))))
        .expect("static response parts")
}

pub fn error_response(e: &ApiError) -> Response<HeraldBody> {
    if e.status == 204 {
        // No body in a 204 (a blocked user's connect).
        return Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Either::Left(Full::new(Bytes::new())))
            .expect("static response parts");
    }
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Either::Left(Full::new(Bytes::from(e.body()))))
        .expect("static response parts");
    if e.status == 401 {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    if e.status == 405 {
        let allow = if e.message.contains("POST") {
            "POST"
        } else {
            "GET"
        };
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::ids_body;

    #[test]
    fn publish_answers_are_the_json_they_say() {
        let parse = |s: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&s).unwrap();
        assert_eq!(
            parse(ids_body(Some(&[7]), 1, false)),
            serde_json::json!({"id": "7"})
        );
        assert_eq!(
            parse(ids_body(Some(&[1, 2]), 2, true)),
            serde_json::json!({"ids": ["1", "2"]})
        );
        assert_eq!(
            parse(ids_body(None, 1, false)),
            serde_json::json!({"id": null, "buffered": true})
        );
        assert_eq!(
            parse(ids_body(None, 3, true)),
            serde_json::json!({"ids": [null, null, null], "buffered": true})
        );
    }
}
