//! The built-in page in a real browser: starts herald, then runs
//! tests/browser/page.mjs, which drives Debian's headless Chromium through
//! playwright-core (connect, CONNECTED, heartbeats, publish through the page and
//! the API, live stats, the "Who is online" panel, automatic reconnect with
//! Last-Event-ID after the server ends the stream) and takes a screenshot (target/tmp/page.png; the README's copy
//! is docs/page.png).
//!
//! Needs `chromium` (or `$CHROMIUM`), `node` and `npm ci` in tests/browser; `.ci/run`
//! installs them and sets `HERALD_REQUIRE_BROWSER=1`, which turns a missing piece
//! into a failure. Elsewhere a missing piece skips the test with a message.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
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

/// tests/browser, or `None` (with a message) when a piece is missing and the
/// browser is not required.
fn browser_dir(test: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Some(why) = missing_piece(&dir) {
        if std::env::var("HERALD_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("browser test cannot run: {why}");
        }
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    Some(dir)
}

/// Run a node script of tests/browser with `args`, bounded by `limit`.
fn run_node(dir: &Path, script: &str, args: &[&std::ffi::OsStr], limit: Duration) -> ExitStatus {
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .current_dir(dir)
        .spawn()
        .expect("run node");
    loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{script} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn page_in_headless_chromium() {
    let Some(dir) = browser_dir("page_in_headless_chromium") else {
        return;
    };
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
    // Bounded: the script's own waits are 10 s each; the whole run gets 90 s.
    let base = format!("http://{}", herald.addr);
    let status = run_node(
        &dir,
        "page.mjs",
        &[base.as_ref(), shot.as_os_str()],
        Duration::from_secs(90),
    );
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
    let Some(dir) = browser_dir("ten_eventsources_over_http2_in_headless_chromium") else {
        return;
    };
    let cert = support::certs::make_cert("browser", 2100);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--listen", "127.0.0.1:0", "--log", "warn"])
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .stdout(std::process::Stdio::piped());
    let herald = Herald::from_started_child(cmd.spawn().expect("spawn herald"));
    let base = format!("https://{}", herald.addr);
    let status = run_node(&dir, "h2.mjs", &[base.as_ref()], Duration::from_secs(60));
    assert!(status.success(), "h2 browser test failed: {status}");
}

/// A user kicked with `reconnect=false` (tests/browser/kick.mjs): the page's
/// EventSource gets 204 on its reconnect, reaches CLOSED and does not come back.
#[test]
fn a_kicked_users_eventsource_stops_for_good_in_headless_chromium() {
    let Some(dir) = browser_dir("a_kicked_users_eventsource_stops_for_good_in_headless_chromium")
    else {
        return;
    };
    let herald = Herald::start(&["--retry", "1s", "--retry-jitter", "0s"]);
    let base = format!("http://{}", herald.addr);
    let status = run_node(&dir, "kick.mjs", &[base.as_ref()], Duration::from_secs(60));
    assert!(status.success(), "kick browser test failed: {status}");
}

/// The page's "Who is online" panel (tests/browser/presence.mjs): the page reads
/// the presence stream with fetch() and the publisher token; users appear as
/// they connect (the page's own connect, a client of the test, one online
/// before the page opened) and disappear once the 1 s linger has passed.
#[test]
fn the_pages_online_panel_in_headless_chromium() {
    let Some(dir) = browser_dir("the_pages_online_panel_in_headless_chromium") else {
        return;
    };
    let token = "presence-page-publisher-token";
    let herald = Herald::start(&[
        "--publisher-token",
        token,
        "--presence-linger",
        "1s",
        "--retry",
        "1s",
        "--retry-jitter",
        "0s",
    ]);
    let base = format!("http://{}", herald.addr);
    let status = run_node(
        &dir,
        "presence.mjs",
        &[base.as_ref(), token.as_ref()],
        Duration::from_secs(60),
    );
    assert!(status.success(), "presence browser test failed: {status}");
}
