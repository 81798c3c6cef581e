//! Real SSE client libraries against herald, as applications use them:
//!
//! * Python's `httpx-sse` (the MCP Python SDK's SSE client), which yields every
//!   block that sets a field, `retry:` included: it must see `CONNECTED` first,
//!   then exactly the published events, and nothing when the stream ends with its
//!   final `retry:` hint. Needs a Python with `httpx` and `httpx-sse`
//!   (tests/python/requirements.txt): `$HERALD_PYTHON`, else `python3`.
//! * npm's `eventsource` (a WHATWG EventSource for Node): events with names and
//!   ids, no empty event, reconnect after the `retry:` hint with Last-Event-ID.
//!   Needs `node` and `npm ci` in tests/browser.
//!
//! `.ci/run` installs both and sets `HERALD_REQUIRE_CLIENTS=1`, which turns a
//! missing piece into a failure; elsewhere a missing piece skips with a message.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{Herald, WAIT};

fn skip_or_fail(test: &str, why: &str) {
    if std::env::var("HERALD_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") {
        panic!("{test} cannot run: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
}

fn python() -> String {
    std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[tokio::test]
async fn httpx_sse_sees_connected_first_and_no_empty_event() {
    let py = python();
    let has = Command::new(&py)
        .args(["-c", "import httpx, httpx_sse"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        return skip_or_fail(
            "httpx_sse",
            &format!("{py} cannot import httpx_sse (pip install -r tests/python/requirements.txt)"),
        );
    }
    let mut h = Herald::start(&["--retry", "1500ms", "--retry-jitter", "0s"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/httpx_sse_client.py");
    let mut child = Command::new(&py)
        .arg(script)
        .arg(h.url("/api/user/sse/connect?userId=py-user&connectionId=py-conn"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line)
                .unwrap_or_else(|e| json!({"bad": line, "e": e.to_string()}));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("httpx-sse yielded no {what} within {WAIT:?}"))
    };

    // The first thing httpx-sse yields is CONNECTED, carrying the retry hint.
    let first = next("first event");
    assert_eq!(first["event"], "CONNECTED", "first yield: {first}");
    assert_eq!(first["retry"], 1500, "{first}");
    let info: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
    assert_eq!(info["userId"], "py-user");

    let a = h
        .publish(json!({"data": "hello", "target": {"users": ["py-user"]}}))
        .await;
    let b = h
        .publish(json!({"event": "note", "data": {"n": 2}, "target": "all"}))
        .await;
    let e1 = next("first published event");
    assert_eq!(
        (e1["event"].as_str(), e1["data"].as_str(), e1["id"].as_str()),
        (Some("message"), Some("hello"), Some(a.as_str())),
        "{e1}"
    );
    let e2 = next("second published event");
    assert_eq!(
        (e2["event"].as_str(), e2["data"].as_str(), e2["id"].as_str()),
        (Some("note"), Some("{\"n\":2}"), Some(b.as_str())),
        "{e2}"
    );

    // SIGTERM: the stream ends with its final retry: hint, which must not
    // reach the application as an event.
    h.signal("TERM");
    let end = next("end of stream");
    assert_eq!(
        end,
        json!({"end": true}),
        "after the last event httpx-sse yielded {end}"
    );
    let until = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "python did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success());
    assert!(h.wait_exit(WAIT).is_some_and(|s| s.success()));
}

#[test]
fn npm_eventsource_reads_events_and_reconnects_with_last_event_id() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if Command::new("node").arg("--version").output().is_err() {
        return skip_or_fail("npm_eventsource", "node not found");
    }
    if !dir.join("node_modules/eventsource").exists() {
        return skip_or_fail(
            "npm_eventsource",
            &format!("run `npm ci` in {}", dir.display()),
        );
    }
    let h = Herald::start(&["--retry", "500ms", "--retry-jitter", "0s"]);
    let mut child = Command::new("node")
        .arg(dir.join("eventsource.mjs"))
        .arg(format!("http://{}", h.addr))
        .current_dir(&dir)
        .spawn()
        .expect("run node");
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the eventsource test did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "eventsource test failed: {status}");
}
