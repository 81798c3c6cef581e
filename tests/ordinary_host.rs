//! herald on an ordinary host: a soft open-file limit of 1,024, limits lower
//! than the streams offered, logs read through a pipe or by a collector, and
//! `HERALD_*` variables left empty by compose files and Helm values.
//!
//! Each herald here is a real process whose `RLIMIT_NOFILE` is set between fork
//! and exec, with its stderr captured to a file.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Herald, SseClient, WAIT};

fn stderr_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ordinary-{name}.stderr"))
}

/// Start herald with its open-file limit set to `soft`/`hard` and its stderr in
/// the file at `stderr`.
fn start_limited(soft: u64, hard: u64, args: &[&str], stderr: &Path) -> Herald {
    let file = std::fs::File::create(stderr).expect("create the stderr file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--listen", "127.0.0.1:0", "--log", "info"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(file));
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Herald::from_started_child(cmd.spawn().expect("spawn herald"))
}

/// This test process opens thousands of sockets too.
fn raise_own_limit() {
    herald::fdlimit::raise().expect("raise this test's open-file limit");
}

fn hard_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_max
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read the stderr file")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait until the stderr file has a line containing `needle`.
fn wait_log(path: &Path, needle: &str) -> String {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(l) = log_lines(path).into_iter().find(|l| l.contains(needle)) {
            return l;
        }
        assert!(Instant::now() < until, "no log line with {needle:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn open_streams(h: &Herald, from: usize, n: usize) -> Vec<SseClient> {
    let mut all = Vec::with_capacity(n);
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(200) {
        let opened = join_clients(chunk.iter().map(|i| {
            let addr = h.addr;
            let path = format!("/api/user/sse/connect?userId=host-{i}");
            tokio::spawn(async move { SseClient::connect(addr, &path, &[]).await })
        }))
        .await;
        all.extend(opened);
    }
    all
}

async fn join_clients<I>(handles: I) -> Vec<SseClient>
where
    I: Iterator<Item = tokio::task::JoinHandle<SseClient>>,
{
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.expect("connect task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_limit_of_1024_is_raised_and_5000_streams_are_served() {
    raise_own_limit();
    let hard = hard_limit().max(8192);
    let log = stderr_path("raise");
    let h = start_limited(1024, hard, &["--shards", "2"], &log);
    let line = wait_log(&log, "raised the open-file limit");
    assert!(
        line.contains("1024"),
        "the log line names the old limit: {line}"
    );
    let streams = open_streams(&h, 0, 5000).await;
    let refused: Vec<u16> = streams
        .iter()
        .map(|c| c.status)
        .filter(|s| *s != 200)
        .collect();
    assert!(refused.is_empty(), "refused connects: {refused:?}");
    h.wait_connections(5000).await;
    assert_eq!(h.get("/health/live").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_limit_of_600_connects_get_503_and_liveness_stays_up() {
    raise_own_limit();
    let log = stderr_path("cap600");
    let h = start_limited(600, 600, &["--shards", "2"], &log);
    let room = herald::fdlimit::stream_room(600, 2);
    // One line with both numbers.
    let line = wait_log(&log, "capped at");
    assert!(
        line.contains(&format!("capped at {room}")) && line.contains("600"),
        "cap line: {line}"
    );

    let started = Instant::now();
    let held = open_streams(&h, 0, room).await;
    assert!(
        held.iter().all(|c| c.status == 200),
        "the first {room} connects are streams"
    );
    // Every further attempt, up to and past the 601st, is answered 503 at once.
    for i in room..=600 {
        let t = Instant::now();
        let c = SseClient::connect(
            h.addr,
            &format!("/api/user/sse/connect?userId=host-{i}"),
            &[],
        )
        .await;
        assert_eq!(c.status, 503, "attempt {}: {}", i + 1, c.body);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "attempt {} took {:?}",
            i + 1,
            t.elapsed()
        );
        let body: serde_json::Value = serde_json::from_str(&c.body).expect("JSON error body");
        assert_eq!(body["error"], "at_capacity");
    }
    assert_eq!(h.get("/health/live").await.status, 200);
    assert_eq!(h.get("/metrics").await.status, 200);
    h.wait_connections(room as u64).await;

    // The refusals were logged at most once per second, with a count.
    let refusals: Vec<String> = log_lines(&log)
        .into_iter()
        .filter(|l| l.contains("refused since the last report"))
        .collect();
    let secs = started.elapsed().as_secs() + 1;
    assert!(!refusals.is_empty(), "the refusals are logged");
    assert!(
        refusals.len() as u64 <= secs,
        "{} refusal lines in {secs} s",
        refusals.len()
    );

    // Past the reserve too: idle connections that never send a head take the
    // remaining descriptors, accept fails, and says so once a second at most.
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(
            tokio::net::TcpStream::connect(h.addr)
                .await
                .expect("connect"),
        );
    }
    let flood = Instant::now();
    wait_log(&log, "accept failed");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let accept_lines = log_lines(&log)
        .into_iter()
        .filter(|l| l.contains("accept failed"))
        .count() as u64;
    assert!(
        accept_lines <= flood.elapsed().as_secs() + 1,
        "{accept_lines} accept-failure lines in {:?}",
        flood.elapsed()
    );
    // Once they go, the pod answers again; the streams were never touched.
    drop(idle);
    let until = Instant::now() + WAIT;
    loop {
        if tokio::time::timeout(Duration::from_secs(1), h.get("/health/live"))
            .await
            .is_ok_and(|r| r.status == 200)
        {
            break;
        }
        assert!(Instant::now() < until, "liveness never came back");
    }
    h.wait_connections(room as u64).await;
    drop(held);
}

#[test]
fn logs_through_a_pipe_have_no_colour_codes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "127.0.0.1:0", "--log", "debug"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let pipe = child.stderr.take().expect("stderr pipe");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for line in std::io::BufRead::split(std::io::BufReader::new(pipe), b'\n') {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let h = Herald::from_started_child(child);
    let mut bytes = Vec::new();
    loop {
        let line = rx.recv_timeout(WAIT).expect("a log line in time");
        bytes.extend_from_slice(&line);
        if String::from_utf8_lossy(&line).contains("herald started") {
            break;
        }
    }
    // SIGKILLed and reaped when dropped: the pipe then ends.
    drop(h);
    while let Ok(line) = rx.recv_timeout(WAIT) {
        bytes.extend_from_slice(&line);
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(!bytes.contains(&0x1b), "escape bytes in: {text}");
}

#[test]
fn json_log_lines_parse() {
    let log = stderr_path("json");
    let h = Herald::start_with_stderr_file(&["--log", "info", "--log-format", "json"], &log);
    wait_log(&log, "herald started");
    drop(h);
    let lines = log_lines(&log);
    assert!(lines.len() >= 2, "{lines:?}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        assert!(v["message"].is_string(), "{l}");
    }
    assert!(lines
        .iter()
        .any(|l| l.contains("\"message\":\"herald started\"")));
}

/// Every `HERALD_*` variable `herald --help` lists.
fn env_names() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--help")
        .output()
        .expect("herald --help");
    let help = String::from_utf8(out.stdout).unwrap();
    let mut names: Vec<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Start herald with `vars` set to the empty string; it must come up as if
/// they were unset.
fn starts_with_empty(vars: &[&str]) -> Herald {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--listen", "127.0.0.1:0", "--log", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for v in vars {
        cmd.env(v, "");
    }
    Herald::from_started_child(cmd.spawn().expect("spawn herald"))
}

#[tokio::test]
async fn every_empty_herald_variable_counts_as_unset() {
    let names = env_names();
    for must in [
        "HERALD_REDIS_URL",
        "HERALD_CORS_ORIGIN",
        "HERALD_HEARTBEAT_INTERVAL",
        "HERALD_SHARDS",
        "HERALD_ALLOW_ANONYMOUS_PUBLISH",
        "HERALD_PUBLISHER_TOKEN",
        "HERALD_HISTORY_SECONDS",
        "HERALD_LOG_FORMAT",
    ] {
        assert!(names.iter().any(|n| n == must), "{must} in --help");
    }
    // One of each kind of value alone: URL, list, duration, number, flag.
    for var in [
        "HERALD_REDIS_URL",
        "HERALD_CORS_ORIGIN",
        "HERALD_HEARTBEAT_INTERVAL",
        "HERALD_SHARDS",
        "HERALD_ALLOW_ANONYMOUS_PUBLISH",
    ] {
        let h = starts_with_empty(&[var]);
        assert_eq!(h.get("/health/ready").await.status, 200, "{var}");
    }
    // All of them at once: the defaults (embedded, no auth, no CORS).
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let h = starts_with_empty(&all);
    assert_eq!(h.get("/health/ready").await.status, 200);
    let mut c = h.subscribe_connected("userId=empty-env").await;
    h.publish(serde_json::json!({"data": "x", "target": {"users": ["empty-env"]}}))
        .await;
    let ev = c.next_event(WAIT).await.expect("the event");
    assert_eq!(ev.data, "x");
    let stats = h.stats().await;
    assert_eq!(stats["connections"], 1, "{stats}");
}

#[tokio::test]
async fn history_seconds_takes_a_duration() {
    let h = Herald::start(&["--history-seconds", "2s"]);
    assert_eq!(h.get("/health/live").await.status, 200);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--listen", "127.0.0.1:0", "--log", "warn"])
        .env("HERALD_HISTORY_SECONDS", "10m")
        .stdout(Stdio::piped());
    let h = Herald::from_started_child(cmd.spawn().unwrap());
    assert_eq!(h.get("/health/live").await.status, 200);
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--history-seconds", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("500ms, 15s, 2m"));
}
