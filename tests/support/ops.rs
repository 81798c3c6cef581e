//! Helpers for operational tests: requests that may fail (a pod that is going
//! away), Prometheus text, streams over tuned sockets, and a raw keep-alive
//! HTTP/1.1 connection that carries several requests.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{parse_response, Response, SseClient, WAIT};

/// Like [`super::request`], but `None` instead of a panic when the connection is
/// refused, reset or not answered within `timeout` (a pod that is shutting down).
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Option<Response> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(b) = body {
        raw.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            b.len()
        ));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    tokio::time::timeout(timeout, async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(&bytes).await.ok()?;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            Some(parse_response(&buf))
        } else {
            None
        }
    })
    .await
    .ok()
    .flatten()
}

/// Publish `body` to the herald at `addr` (usable from spawned tasks, which cannot
/// borrow a [`super::Herald`]); returns the event id.
pub async fn publish_at(addr: SocketAddr, body: &serde_json::Value) -> String {
    let r = super::request(
        addr,
        "POST",
        "/api/broadcast",
        &[("content-type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
    .await;
    assert_eq!(r.status, 202, "publish answered {}: {}", r.status, r.body);
    r.json()["id"].as_str().expect("id is a string").to_string()
}

/// The `/metrics` text.
pub async fn metrics_text(addr: SocketAddr) -> String {
    let r = super::request(addr, "GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 200, "metrics answered {}", r.status);
    r.body
}

/// Sum of every sample of metric `name` (exact name, without suffixes) whose
/// labels include all of `labels` (`[("reason", "slow_consumer")]`). 0 when absent.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_str, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some(end) = r.find('}') else { continue };
            (&r[..end], r[end + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            continue; // another metric sharing the prefix
        };
        let all = labels.iter().all(|(k, v)| {
            label_str
                .split(',')
                .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
        });
        if !all {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum += v;
        }
    }
    sum
}

/// Open an SSE stream on a socket whose receive buffer is set to `rcvbuf` bytes
/// before connecting (so a client that does not read stalls the server sooner).
pub async fn connect_with_rcvbuf(addr: SocketAddr, path: &str, rcvbuf: u32) -> SseClient {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    let mut stream = tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send request");
    SseClient::read_head(stream).await
}

/// Read raw bytes from a stream until EOF (without parsing them), at most
/// `timeout`; returns how many bytes arrived, or `None` if EOF did not come.
pub async fn drain_to_eof(stream: &mut TcpStream, timeout: Duration) -> Option<usize> {
    let mut total = 0;
    let mut buf = vec![0u8; 64 << 10];
    tokio::time::timeout(timeout, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .ok()
}

/// The numeric value of an event id (herald's ids are decimal u64).
pub fn id_u64(id: &str) -> u64 {
    id.parse()
        .unwrap_or_else(|_| panic!("event id {id:?} is not a decimal u64"))
}

/// One HTTP/1.1 connection kept alive across requests.
pub struct KeepAlive {
    pub stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        KeepAlive {
            stream,
            addr,
            buf: Vec::new(),
        }
    }

    /// Send one request without `Connection: close` and read its response, which
    /// must be delimited by `content-length` (the connection stays open).
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let bytes = super::encode_request(self.addr, method, path, headers, body);
        self.stream.write_all(&bytes).await.expect("write request");
        tokio::time::timeout(WAIT, self.read_response())
            .await
            .expect("response in time")
    }

    async fn read_response(&mut self) -> Response {
        loop {
            if let Some(end) = self
                .buf
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4)
            {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().expect("content-length value"))
                    .expect("a keep-alive response delimited by content-length");
                if self.buf.len() >= end + len {
                    let rest = self.buf.split_off(end + len);
                    let whole = std::mem::replace(&mut self.buf, rest);
                    return parse_response(&whole);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await.expect("read response");
            assert!(
                n > 0,
                "server closed the keep-alive connection: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Send `GET path` on this connection and read it as an SSE stream.
    pub async fn into_sse(mut self, path: &str, headers: &[(&str, &str)]) -> SseClient {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes after the last response: {:?}",
            self.buf
        );
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n",
            self.addr
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream
            .write_all(req.as_bytes())
            .await
            .expect("send request");
        SseClient::read_head(self.stream).await
    }
}
