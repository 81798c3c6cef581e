//! Helpers for the contract tests: the next published event on a stream, JSON
//! error answers, Prometheus samples polled with a bound, a request that tolerates
//! the server closing early, and a byte-exact view of a stream's preamble.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::sse::Parser;
use super::{parse_response, Herald, Response, SseClient, SseEvent, WAIT};

/// The next event that is not a HEARTBEAT; panics (naming `what`) if none comes
/// within [`WAIT`].
pub async fn next_ev(c: &mut SseClient, what: &str) -> SseEvent {
    c.next_non_heartbeat(WAIT)
        .await
        .unwrap_or_else(|| panic!("no event within {WAIT:?}: expected {what}"))
}

/// The next `n` non-heartbeat events; panics (naming `what` and showing the
/// events that did come) if they do not all come within [`WAIT`] each.
pub async fn next_evs(c: &mut SseClient, n: usize, what: &str) -> Vec<SseEvent> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        match c.next_non_heartbeat(WAIT).await {
            Some(ev) => out.push(ev),
            None => panic!("no event within {WAIT:?}: expected {what} (#{i} of {n}); got {out:?}"),
        }
    }
    out
}

/// An event id as a number (herald's ids are decimal).
pub fn id_of(ev: &SseEvent) -> u64 {
    let id = ev
        .id
        .as_deref()
        .unwrap_or_else(|| panic!("event has no id: {ev:?}"));
    id.parse()
        .unwrap_or_else(|_| panic!("event id is not a number: {ev:?}"))
}

/// An event id in herald's comparison: one part (a decimal `u64`: a single
/// node, or a cluster with one partition) or two (`b.p`, both decimal: the
/// broadcast position and the partition position, with `--partitions N > 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Id {
    One(u64),
    Two(u64, u64),
}

impl Id {
    /// Parse `id`, which must have the shape `two_part` says.
    pub fn parse(id: &str, two_part: bool) -> Id {
        let num = |s: &str| -> u64 {
            assert!(
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
                "event id {id:?} is not {}",
                if two_part {
                    "two decimal parts b.p"
                } else {
                    "a decimal number"
                }
            );
            s.parse()
                .unwrap_or_else(|_| panic!("event id {id:?}: a part overflows u64"))
        };
        if !two_part {
            return Id::One(num(id));
        }
        assert_opaque_id(id);
        let (b, p) = id
            .split_once('.')
            .unwrap_or_else(|| panic!("event id {id:?} is not two-part (b.p)"));
        Id::Two(num(b), num(p))
    }

    /// The id of `ev` (which must have one).
    pub fn of(ev: &SseEvent, two_part: bool) -> Id {
        let id = ev
            .id
            .as_deref()
            .unwrap_or_else(|| panic!("event has no id: {ev:?}"));
        Id::parse(id, two_part)
    }

    /// Whether `self` comes strictly after `prev` in herald's comparison: a larger
    /// number; for two parts, no part smaller and at least one larger.
    pub fn is_after(self, prev: Id) -> bool {
        match (self, prev) {
            (Id::One(a), Id::One(b)) => a > b,
            (Id::Two(a, p), Id::Two(b, q)) => a >= b && p >= q && (a, p) != (b, q),
            _ => panic!("comparing ids of different shapes: {self:?} and {prev:?}"),
        }
    }

    /// An id from the future: every part a minute of log time (ms << 20) ahead.
    pub fn future(self) -> String {
        const AHEAD: u64 = 60_000 << 20;
        match self {
            Id::One(n) => (n + AHEAD).to_string(),
            Id::Two(b, p) => format!("{}.{}", b + AHEAD, p + AHEAD),
        }
    }
}

/// Assert `id` is what the contract allows any id to be: a non-empty ASCII
/// string of at most 64 bytes without whitespace.
pub fn assert_opaque_id(id: &str) {
    assert!(
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()),
        "event id {id:?}: not 1-64 bytes of ASCII without whitespace"
    );
}

/// Assert every event of `evs` has an id and the ids increase strictly in
/// herald's comparison ([`Id::is_after`]).
pub fn assert_ids_increase(evs: &[SseEvent], two_part: bool, what: &str) {
    let ids: Vec<Id> = evs.iter().map(|e| Id::of(e, two_part)).collect();
    for (i, w) in ids.windows(2).enumerate() {
        assert!(
            w[1].is_after(w[0]),
            "{what}: id #{} ({:?}) does not come after #{i} ({:?}): {evs:?}",
            i + 1,
            w[1],
            w[0]
        );
    }
}

/// The two kinds of published events whose order a connection keeps on its own
/// with partitions: its user's events, and the shared ones (`all` and topics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Shared,
}

impl Kind {
    /// The kind of an event published to `target`.
    pub fn of(target: &serde_json::Value) -> Kind {
        if target.get("users").is_some() {
            Kind::User
        } else {
            Kind::Shared
        }
    }
}

/// A published event as a subscriber should receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub kind: Kind,
    /// The id in the publish answer.
    pub id: String,
    pub event: String,
    pub data: String,
}

/// Assert `got` is exactly the events `want` (in publish order) and nothing
/// else, with increasing ids. With one-part ids: in that order, each with the
/// id of its publish answer. With two-part ids (which may differ from the
/// publish answer) events are told apart by their data (unique in `want`): the
/// user events in their publish order and the shared ones in theirs, however
/// the two kinds interleave.
pub fn assert_delivered(got: &[SseEvent], want: &[Sent], two_part: bool, what: &str) {
    assert_ids_increase(got, two_part, what);
    if !two_part {
        let got: Vec<(Option<&str>, &str, &str)> = got
            .iter()
            .map(|e| (e.id.as_deref(), e.event.as_str(), e.data.as_str()))
            .collect();
        let want: Vec<(Option<&str>, &str, &str)> = want
            .iter()
            .map(|w| (Some(w.id.as_str()), w.event.as_str(), w.data.as_str()))
            .collect();
        assert_eq!(got, want, "{what}: wrong events (id, event, data)");
        return;
    }
    let kinds: std::collections::HashMap<&str, Kind> =
        want.iter().map(|w| (w.data.as_str(), w.kind)).collect();
    assert_eq!(
        kinds.len(),
        want.len(),
        "{what}: data must tell events apart"
    );
    let strangers: Vec<&SseEvent> = got
        .iter()
        .filter(|e| !kinds.contains_key(e.data.as_str()))
        .collect();
    assert!(
        strangers.is_empty(),
        "{what}: events that were not expected: {strangers:?}; all: {got:?}"
    );
    for kind in [Kind::User, Kind::Shared] {
        let got_k: Vec<(&str, &str)> = got
            .iter()
            .filter(|e| kinds[e.data.as_str()] == kind)
            .map(|e| (e.event.as_str(), e.data.as_str()))
            .collect();
        let want_k: Vec<(&str, &str)> = want
            .iter()
            .filter(|w| w.kind == kind)
            .map(|w| (w.event.as_str(), w.data.as_str()))
            .collect();
        assert_eq!(
            got_k, want_k,
            "{what}: wrong {kind:?} events (event, data), or not in publish order; all: {got:?}"
        );
    }
}

/// Assert `r` has `status` and a JSON body with a string `error` field.
pub fn assert_json_error(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: status; body {:?}", r.body);
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.contains("json"),
        "{what}: content-type should be JSON, got {ct:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {:?}", r.body));
    assert!(
        v["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{what}: body has no \"error\" string: {v}"
    );
}

/// `GET /metrics` as text (asserting 200).
pub async fn metrics_body(h: &Herald) -> String {
    let r = h.get("/metrics").await;
    assert_eq!(r.status, 200, "/metrics answered {}", r.status);
    r.body
}

/// Every sample of metric `name` (exactly that name, any labels): `(labels, value)`.
pub fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        if &line[..name_end] != name {
            continue;
        }
        let labels = if line[name_end..].starts_with('{') {
            let close = line.rfind('}').expect("closing brace");
            line[name_end + 1..close].to_string()
        } else {
            String::new()
        };
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("sample without a numeric value: {line:?}"));
        out.push((labels, value));
    }
    out
}

/// Sum of every sample of `name`, or `None` if it has none.
pub fn sample_sum(text: &str, name: &str) -> Option<f64> {
    // `name{label="value"}` sums only the sample with exactly those labels.
    let (base, labels) = match name.split_once('{') {
        Some((base, rest)) => (base, Some(rest.trim_end_matches('}'))),
        None => (name, None),
    };
    let s: Vec<(String, f64)> = samples(text, base)
        .into_iter()
        .filter(|(l, _)| labels.is_none_or(|want| l == want))
        .collect();
    (!s.is_empty()).then(|| s.iter().map(|(_, v)| v).sum())
}

/// Poll `/metrics` until the sum of `name` satisfies `ok` (bounded by [`WAIT`]);
/// returns that sum.
pub async fn wait_metric(h: &Herald, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let until = Instant::now() + WAIT;
    loop {
        let text = metrics_body(h).await;
        if let Some(v) = sample_sum(&text, name) {
            if ok(v) {
                return v;
            }
        }
        assert!(
            Instant::now() < until,
            "metric {name} never reached the expected value; last /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Send `bytes` while reading the answer at the same time, so a server that
/// answers (e.g. 413) and closes before reading the whole request is still heard.
pub async fn send_while_reading(addr: SocketAddr, bytes: Vec<u8>) -> Response {
    tokio::time::timeout(WAIT, async move {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&bytes).await;
            wr
        });
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        drop(writer.await);
        parse_response(&buf)
    })
    .await
    .expect("response in time")
}

/// What a stream's body starts with, item by item, in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Retry(u64),
    Event(SseEvent),
}

/// Open `path` on a fresh connection, read the response head, then feed the body
/// byte by byte through the SSE parser until `until` items (`retry:` values and
/// events) are seen; returns the head and the items in the order they arrived.
pub async fn preamble(addr: SocketAddr, path: &str, until: usize) -> (Response, Vec<Item>) {
    tokio::time::timeout(WAIT, async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req =
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send request");
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await.expect("read head");
            assert!(n > 0, "closed before a response head");
            raw.extend_from_slice(&chunk[..n]);
        };
        let head = parse_response(&raw[..head_end]);
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        let mut body_raw = raw[head_end..].to_vec();
        let mut parser = Parser::default();
        let mut items = Vec::new();
        let mut consumed = 0; // bytes of body_raw already fed (or framing skipped)
        let mut chunk_left = 0usize; // chunked: payload bytes left in this chunk
        while items.len() < until {
            // Feed whatever complete payload bytes are buffered, one at a time.
            loop {
                if consumed >= body_raw.len() {
                    break;
                }
                if chunked && chunk_left == 0 {
                    let rest = &body_raw[consumed..];
                    // Skip the CRLF that ends the previous chunk, then read a size line.
                    let rest_start = if rest.starts_with(b"\r\n") { 2 } else { 0 };
                    let Some(eol) = rest[rest_start..].windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let size_line = std::str::from_utf8(&rest[rest_start..rest_start + eol])
                        .expect("chunk size");
                    chunk_left = usize::from_str_radix(size_line.trim(), 16).expect("chunk size");
                    assert!(chunk_left > 0, "stream ended during the preamble");
                    consumed += rest_start + eol + 2;
                    continue;
                }
                let b = body_raw[consumed];
                consumed += 1;
                if chunked {
                    chunk_left -= 1;
                }
                let retries_before = parser.retries.len();
                let evs = parser.feed(&[b]);
                for r in &parser.retries[retries_before..] {
                    items.push(Item::Retry(*r));
                }
                items.extend(evs.into_iter().map(Item::Event));
            }
            if items.len() >= until {
                break;
            }
            let n = s.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "stream ended during the preamble: {items:?}");
            body_raw.extend_from_slice(&chunk[..n]);
        }
        (head, items)
    })
    .await
    .expect("preamble in time")
}

/// Whether `s` looks like a UUID (8-4-4-4-12 hex digits).
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Poll `/health/ready` until it answers `status`, at most `within`; returns
/// that answer (panics naming the pod and the last answer).
pub async fn wait_ready(h: &Herald, status: u16, within: std::time::Duration) -> Response {
    let start = std::time::Instant::now();
    loop {
        let r = h.get("/health/ready").await;
        // 200 means ready, not merely up: a pod whose Redis is in trouble is
        // 200 too, with `"status":"degraded"`.
        if r.status == status && (status != 200 || r.json()["status"] == "ready") {
            return r;
        }
        assert!(
            start.elapsed() < within,
            "pod {}: /health/ready never answered {status} within {within:?}; last {} {}",
            h.pod_id,
            r.status,
            r.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Poll `/health/ready` until its body's `status` is `state`, at most `within`.
pub async fn wait_ready_body(h: &Herald, state: &str, within: std::time::Duration) -> Response {
    let start = std::time::Instant::now();
    loop {
        let r = h.get("/health/ready").await;
        if r.json()["status"] == state {
            return r;
        }
        assert!(
            start.elapsed() < within,
            "pod {}: /health/ready never said {state:?} within {within:?}; last {} {}",
            h.pod_id,
            r.status,
            r.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
