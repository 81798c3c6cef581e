//! Real HTTP/2 clients against herald over TLS (ALPN h2):
//!
//! * `nghttp` (nghttp2's client): `GET /health/live`, and again with a header
//!   table of 0 (`-c 0`), which nghttp2 only decodes if herald opens its
//!   header block with a Dynamic Table Size Update (RFC 7541 §4.2).
//! * `h2load`: 200 requests over 4 connections, 10 streams each, with the
//!   default header table and with none; its summary must count no failure.
//! * `curl --http2`: GET, HEAD (no body), a publish (202) and an SSE stream
//!   receiving a published event.
//!
//! Debian's `nghttp2-client` and `curl`. `.ci/run` installs them and sets
//! `HERALD_REQUIRE_CLIENTS=1`, which turns a missing client into a failure;
//! elsewhere a missing client skips with a message.

mod support;

use std::process::{Output, Stdio};

use support::certs::make_cert;
use support::tls::start_tls;
use support::{Herald, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// `bin` runs here; else the test skips (or fails under
/// `HERALD_REQUIRE_CLIENTS=1`).
fn have(test: &str, bin: &str) -> bool {
    let found = std::process::Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        let why = format!("`{bin}` is not installed (apt-get install nghttp2-client curl)");
        if std::env::var("HERALD_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") {
            panic!("{test} cannot run: {why}");
        }
        eprintln!("SKIPPED {test}: {why}");
    }
    found
}

fn herald(name: &str) -> Herald {
    let c = make_cert(name, 2099);
    start_tls(&c, &["--heartbeat-interval", "1h"], None)
}

fn url(h: &Herald, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", h.addr.port())
}

/// Run `bin` to its end (at most three times [`WAIT`]).
async fn run(bin: &str, args: &[&str]) -> Output {
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(3 * WAIT, child)
        .await
        .unwrap_or_else(|_| panic!("{bin} {args:?} did not finish in time"))
        .unwrap_or_else(|e| panic!("{bin}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// nghttp's verbose log of one `GET /health/live`: answered 200 with its
/// body, no GOAWAY with an error either way, every request processed (nghttp
/// exits 0 even when one was not).
fn nghttp_ok(o: &Output) {
    let log = text(o);
    assert!(o.status.success(), "nghttp failed:\n{log}");
    assert!(
        !log.contains("Some requests were not processed"),
        "nghttp's request failed:\n{log}"
    );
    assert!(log.contains(") :status: 200"), "no :status 200:\n{log}");
    assert!(
        log.contains("recv DATA frame <length=17, flags=0x01"),
        "no DATA with the body and END_STREAM:\n{log}"
    );
    for line in log.lines().filter(|l| l.contains("error_code=")) {
        assert!(line.contains("error_code=NO_ERROR"), "{line}\n{log}");
    }
    assert!(!log.contains("RST_STREAM"), "a stream was reset:\n{log}");
}

#[tokio::test]
async fn nghttp_get_health_live() {
    if !have("nghttp_get_health_live", "nghttp") {
        return;
    }
    let h = herald("h2c-nghttp");
    nghttp_ok(&run("nghttp", &["-nv", &url(&h, "/health/live")]).await);
}

/// nghttp announcing SETTINGS_HEADER_TABLE_SIZE 0: herald's header block must
/// open with a size update to 0, or nghttp2 refuses it (COMPRESSION_ERROR).
#[tokio::test]
async fn nghttp_header_table_size_0() {
    if !have("nghttp_header_table_size_0", "nghttp") {
        return;
    }
    let h = herald("h2c-nghttp0");
    nghttp_ok(&run("nghttp", &["-nv", "-c", "0", &url(&h, "/health/live")]).await);
}

/// h2load's summary: `requests: N total, N started, N done, N succeeded, N
/// failed, N errored, N timeout`: 200 succeeded, none failed or errored, all
/// answered 2xx.
fn h2load_ok(o: &Output) {
    let log = text(o);
    assert!(o.status.success(), "h2load failed:\n{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no summary line:\n{log}"));
    let count = |what: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(what))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{what}` in {line:?}"))
    };
    assert_eq!(
        (
            count("succeeded"),
            count("failed"),
            count("errored"),
            count("timeout")
        ),
        (200, 0, 0, 0),
        "{line}\n{log}"
    );
    assert!(
        log.contains("status codes: 200 2xx, 0 3xx, 0 4xx, 0 5xx"),
        "{log}"
    );
}

#[tokio::test]
async fn h2load_200_requests() {
    if !have("h2load_200_requests", "h2load") {
        return;
    }
    let h = herald("h2c-h2load");
    let u = url(&h, "/health/live");
    h2load_ok(&run("h2load", &["-n", "200", "-c", "4", "-m", "10", &u]).await);
}

#[tokio::test]
async fn h2load_header_table_size_0() {
    if !have("h2load_header_table_size_0", "h2load") {
        return;
    }
    let h = herald("h2c-h2load0");
    let u = url(&h, "/health/live");
    let args = [
        "-n",
        "200",
        "-c",
        "4",
        "-m",
        "10",
        "--header-table-size=0",
        &u,
    ];
    h2load_ok(&run("h2load", &args).await);
}

/// `curl -sSk --http2 ARGS -w '\n%{http_version} %{response_code}'`: the
/// output before that last line, and that line.
async fn curl(args: &[&str]) -> (String, String) {
    let mut all = vec![
        "-sSk",
        "--http2",
        "-w",
        "\n%{http_version} %{response_code}",
    ];
    all.extend_from_slice(args);
    let o = run("curl", &all).await;
    let log = text(&o);
    assert!(o.status.success(), "curl {args:?} failed:\n{log}");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, last) = out.rsplit_once('\n').expect("curl's -w line");
    (body.to_string(), last.to_string())
}

#[tokio::test]
async fn curl_get_health_live() {
    if !have("curl_get_health_live", "curl") {
        return;
    }
    let h = herald("h2c-curl-get");
    let (body, last) = curl(&[&url(&h, "/health/live")]).await;
    assert_eq!(last, "2 200");
    assert_eq!(body, r#"{"status":"live"}"#);
}

#[tokio::test]
async fn curl_head_health_live() {
    if !have("curl_head_health_live", "curl") {
        return;
    }
    let h = herald("h2c-curl-head");
    let u = url(&h, "/health/live");
    let o = run("curl", &["-sSkI", "--http2", "-w", "%{size_download}", &u]).await;
    let log = text(&o);
    assert!(o.status.success(), "curl -I failed ({}):\n{log}", o.status);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("content-length: 17"), "{out}");
    assert!(
        out.ends_with("\r\n\r\n0"),
        "a body after HEAD's headers: {out:?}"
    );
}

#[tokio::test]
async fn curl_post_broadcast() {
    if !have("curl_post_broadcast", "curl") {
        return;
    }
    let h = herald("h2c-curl-post");
    let body = r#"{"event":"x","data":"y","target":"all"}"#;
    let (answer, last) = curl(&["-X", "POST", "-d", body, &url(&h, "/api/broadcast")]).await;
    assert_eq!(last, "2 202", "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert!(v["id"].is_string(), "{answer}");
}

#[tokio::test]
async fn curl_sse_stream_receives_a_published_event() {
    if !have("curl_sse_stream_receives_a_published_event", "curl") {
        return;
    }
    let h = herald("h2c-curl-sse");
    let mut child = Command::new("curl")
        .args(["-sSkN", "--http2", "-D", "/dev/stderr"])
        .arg(url(&h, "/api/user/sse/connect?userId=curl-user"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn curl");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut head = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, head.next_line())
        .await
        .expect("curl's response head in time")
        .unwrap();
    assert_eq!(
        first.as_deref().map(str::trim_end),
        Some("HTTP/2 200"),
        "the stream's status"
    );
    let mut seen = Vec::new();
    until(&mut lines, &mut seen, "event: CONNECTED").await;
    let body = r#"{"event":"from-curl","data":"over h2","target":"all"}"#;
    let (_, last) = curl(&["-X", "POST", "-d", body, &url(&h, "/api/broadcast")]).await;
    assert_eq!(last, "2 202");
    until(&mut lines, &mut seen, "event: from-curl").await;
    until(&mut lines, &mut seen, "data: over h2").await;
    let _ = child.kill().await;
}

/// Read the stream's lines until `want`, each within [`WAIT`].
async fn until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    want: &str,
) {
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no `{want}` in time; the stream so far: {seen:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended before `{want}`: {seen:?}"));
        seen.push(line.clone());
        if line == want {
            return;
        }
    }
}
