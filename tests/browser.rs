//! The built-in page in a real browser: starts herald, then runs
//! tests/browser/page.mjs, which drives Debian's headless Chromium through
//! playwright-core (connect, CONNECTED, heartbeats, publish through the page and
//! the API, live stats, automatic reconnect with Last-Event-ID after the server
//! ends the stream) and takes a screenshot (target/tmp/page.png; the README's copy
//! is docs/page.png).
//!
//! Needs `chromium` (or `$CHROMIUM`), `node` and `npm ci` in tests/browser; `.ci/run`
//! installs them and sets `HERALD_REQUIRE_BROWSER=1`, which turns a missing piece
//! into a failure. Elsewhere a missing piece skips the test with a message.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::Herald;

fn missing_piece(dir: &Path) -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} not found (apt-get install chromium)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node not found".into());
    }
    if !dir.join("node_modules/playwright-core").exists() {
        return Some(format!("run `npm ci` in {}", dir.display()));
    }
    None
}

#[test]
fn page_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Some(why) = missing_piece(&dir) {
        if std::env::var("HERALD_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("browser test cannot run: {why}");
        }
        eprintln!("SKIPPED page_in_headless_chromium: {why}");
        return;
    }
    let herald = Herald::start(&[
        "--heartbeat-interval",
        "500ms",
        "--retry",
        "1s",
        "--retry-jitter",
        "0s",
    ]);
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page.png");
    let _ = std::fs::remove_file(&shot);
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(dir.join("page.mjs"))
        .arg(format!("http://{}", herald.addr))
        .arg(&shot)
        .current_dir(&dir)
        .spawn()
        .expect("run node");
    // Bounded: the script's own waits are 10 s each; the whole run gets 90 s.
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("browser test did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "browser test failed: {status}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
    assert!(
        png.len() > 10_000,
        "screenshot is not blank ({} bytes)",
        png.len()
    );
}

/// Ten EventSources from one page over HTTP/2 (tests/browser/h2.mjs): over
/// HTTP/1.1 only 6 could be open at once per origin.
#[test]
fn ten_eventsources_over_http2_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Some(why) = missing_piece(&dir) {
        if std::env::var("HERALD_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("browser test cannot run: {why}");
        }
        eprintln!("SKIPPED ten_eventsources_over_http2_in_headless_chromium: {why}");
        return;
    }
    let cert = support::certs::make_cert("browser", 2100);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--listen", "127.0.0.1:0", "--log", "warn"])
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .stdout(std::process::Stdio::piped());
    let herald = Herald::from_started_child(cmd.spawn().expect("spawn herald"));
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(dir.join("h2.mjs"))
        .arg(format!("https://{}", herald.addr))
        .current_dir(&dir)
        .spawn()
        .expect("run node");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("h2 browser test did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "h2 browser test failed: {status}");
}
