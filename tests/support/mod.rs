//! Test support: start a real herald process on a loopback port, talk HTTP/1.1
//! over real sockets, and read SSE streams with a WHATWG-conformant parser.
#![allow(dead_code)]

pub mod backend;
pub mod certs;
pub mod check;
pub mod h2raw;
pub mod hpack;
pub mod ops;
pub mod presence;
pub mod redis;
pub mod redis_cluster;
pub mod sentinel;
pub mod sse;
pub mod tls;
pub mod tools;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use sse::{SseClient, SseEvent};

/// Every wait in the tests is bounded by this unless a test says otherwise.
pub const WAIT: Duration = Duration::from_secs(10);

/// A herald process, SIGKILLed when dropped.
pub struct Herald {
    pub child: Child,
    pub addr: SocketAddr,
    pub pod_id: String,
}

impl Herald {
    /// Start herald on `127.0.0.1:0` with `args` and wait for its listening line.
    pub fn start(args: &[&str]) -> Herald {
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", "127.0.0.1:0", "--log", "warn"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn herald");
        Herald::from_started_child(child)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Send a signal (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident set size of the process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    pub async fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Response {
        request(
            self.addr,
            "POST",
            path,
            &[("content-type", "application/json")],
            Some(body.as_bytes()),
        )
        .await
    }

    /// Publish and return the event id.
    pub async fn publish(&self, body: serde_json::Value) -> String {
        let r = self.post("/api/broadcast", &body.to_string()).await;
        assert_eq!(r.status, 202, "publish answered {}: {}", r.status, r.body);
        r.json()["id"].as_str().expect("id is a string").to_string()
    }

    /// Publish a batch (a JSON array of publish objects) and return its ids.
    pub async fn publish_batch(&self, events: Vec<serde_json::Value>) -> Vec<String> {
        let body = serde_json::Value::from(events).to_string();
        let r = self.post("/api/broadcast", &body).await;
        assert_eq!(r.status, 202, "batch answered {}: {}", r.status, r.body);
        r.json()["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_str().expect("an id").to_string())
            .collect()
    }

    /// Open an SSE stream for `query` (e.g. `userId=u1&topics=a`).
    pub async fn subscribe(&self, query: &str) -> SseClient {
        let c = SseClient::connect(self.addr, &format!("/api/user/sse/connect?{query}"), &[]).await;
        assert_eq!(c.status, 200, "connect answered {}", c.status);
        c
    }

    /// Open a stream and consume its `retry:` and `CONNECTED`.
    pub async fn subscribe_connected(&self, query: &str) -> SseClient {
        let mut c = self.subscribe(query).await;
        let ev = c.next_event(WAIT).await.expect("CONNECTED");
        assert_eq!(ev.event, "CONNECTED");
        c
    }

    pub async fn stats(&self) -> serde_json::Value {
        let r = self.get("/api/user/sse/stats").await;
        assert_eq!(r.status, 200);
        r.json()
    }

    /// Wait until the stats report `n` connections.
    pub async fn wait_connections(&self, n: u64) {
        let until = Instant::now() + WAIT;
        loop {
            let s = self.stats().await;
            if s["connections"].as_u64() == Some(n) {
                return;
            }
            assert!(Instant::now() < until, "connections never reached {n}: {s}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One request on a fresh connection (`Connection: close`), response read whole.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut all = vec![("connection", "close")];
    all.extend_from_slice(headers);
    raw_request(addr, &encode_request(addr, method, path, &all, body)).await
}

/// The bytes of an HTTP/1.1 request (with `content-length` when there is a body).
pub fn encode_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        raw.push_str(&format!("content-length: {}\r\n", b.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// Send raw bytes, read until the server closes, parse the response.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Response {
    tokio::time::timeout(WAIT, async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("write request");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        parse_response(&buf)
    })
    .await
    .expect("response in time")
}

/// Parse a full HTTP/1.1 response (content-length, chunked or close-delimited).
pub fn parse_response(buf: &[u8]) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf).expect("valid response head") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => {
            panic!("partial response head: {:?}", String::from_utf8_lossy(buf))
        }
    };
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let status = resp.code.expect("status");
    let rest = &buf[n..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

impl Herald {
    /// Like [`Herald::start`], but without its `--log warn` (give `--log` in `args`)
    /// and with stderr written to the file at `stderr` (created or truncated), so a
    /// test can read what herald logged.
    pub fn start_with_stderr_file(args: &[&str], stderr: &std::path::Path) -> Herald {
        let file = std::fs::File::create(stderr).expect("create the stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn herald");
        Herald::from_started_child(child)
    }

    /// Wait for a spawned herald's listening line (stdout piped) and wrap it.
    pub fn from_started_child(mut child: Child) -> Herald {
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so herald never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("herald did not print its listening line");
            }
        };
        // "herald listening on http(s)://127.0.0.1:PORT pod=ID shards=N"
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("address in line");
        let pod_id = line
            .split("pod=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("")
            .to_string();
        Herald {
            child,
            addr: addr.parse().expect("socket address"),
            pod_id,
        }
    }
}
