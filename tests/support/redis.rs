//! Redis for the cluster tests: a `redis-server` of a test's own on a free
//! loopback port (started, SIGKILLed, restarted empty on the same port), a
//! minimal blocking RESP client (`PING`, `INFO`, `FLUSHALL`, `SCAN`/`DEL`), and a
//! [`Cluster`]: a unique key prefix on one Redis plus the flags that start pods
//! of that cluster ([`unique_prefix`], [`start_pod`], shared with the Redis
//! Cluster of `super::redis_cluster`). Everything is cleaned up on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Herald, WAIT};

/// The Redis the functional cluster tests share (each under its own prefix).
pub const SHARED_REDIS_PORT: u16 = 6379;

/// How long a RESP command may take.
const RESP_TIMEOUT: Duration = Duration::from_secs(2);

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// Every string in the reply, depth first (the fields of stream entries).
    pub fn strings(&self) -> Vec<String> {
        match self {
            Reply::Array(Some(items)) => items.iter().flat_map(Reply::strings).collect(),
            other => other.text().into_iter().collect(),
        }
    }

    /// A simple or bulk string reply as text.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// A minimal blocking RESP2 client over one TCP connection.
pub struct Resp {
    reader: BufReader<TcpStream>,
}

impl Resp {
    pub fn connect(port: u16) -> std::io::Result<Resp> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, RESP_TIMEOUT)?;
        stream.set_read_timeout(Some(RESP_TIMEOUT))?;
        stream.set_write_timeout(Some(RESP_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            reader: BufReader::new(stream),
        })
    }

    /// Send one command and read its reply.
    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out)?;
        self.read_reply()
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let line = self.read_line()?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad RESP reply");
        let (kind, rest) = line.split_at(1.min(line.len()));
        let num = || rest.parse::<i64>().map_err(|_| bad());
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(num()?),
            "$" => {
                let len = num()?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0u8; len as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(len as usize);
                    Reply::Bulk(Some(buf))
                }
            }
            "*" => {
                let len = num()?;
                if len < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.read_reply()?);
                    }
                    Reply::Array(Some(items))
                }
            }
            _ => return Err(bad()),
        })
    }

    pub fn ping(&mut self) -> bool {
        match self.cmd(&["PING"]) {
            Ok(Reply::Simple(s)) => s == "PONG",
            // Up, and wanting a password (`--requirepass`).
            Ok(Reply::Error(e)) => e.starts_with("NOAUTH"),
            _ => false,
        }
    }

    /// A numeric field of `INFO <section>` (e.g. `stats`, `total_commands_processed`).
    pub fn info_field(&mut self, section: &str, field: &str) -> u64 {
        let reply = self.cmd(&["INFO", section]).expect("INFO");
        let text = reply
            .text()
            .unwrap_or_else(|| panic!("INFO reply {reply:?}"));
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no numeric {field} in INFO {section}:\n{text}"))
    }

    pub fn flushall(&mut self) {
        let r = self.cmd(&["FLUSHALL"]).expect("FLUSHALL");
        assert_eq!(r, Reply::Simple("OK".into()), "FLUSHALL");
    }

    /// Delete every key whose name contains `needle`; returns how many.
    pub fn delete_keys_containing(&mut self, needle: &str) -> std::io::Result<usize> {
        let mut deleted = 0;
        self.scan_containing(needle, |r, keys| {
            let mut args = vec!["DEL"];
            args.extend(keys.iter().map(String::as_str));
            if let Reply::Int(n) = r.cmd(&args)? {
                deleted += n as usize;
            }
            Ok(())
        })?;
        Ok(deleted)
    }

    /// Every key of this server whose name contains `needle` (`SCAN`).
    pub fn keys_containing(&mut self, needle: &str) -> std::io::Result<Vec<String>> {
        let mut all = Vec::new();
        self.scan_containing(needle, |_, keys| {
            all.extend_from_slice(keys);
            Ok(())
        })?;
        Ok(all)
    }

    /// `SCAN` for keys containing `needle`, calling `batch` with each non-empty
    /// batch of key names.
    fn scan_containing(
        &mut self,
        needle: &str,
        mut batch: impl FnMut(&mut Resp, &[String]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let pattern = format!("*{needle}*");
        let mut cursor = "0".to_string();
        loop {
            let reply = self.cmd(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"])?;
            let Reply::Array(Some(parts)) = reply else {
                return Err(std::io::Error::other(format!("SCAN answered {reply:?}")));
            };
            cursor = parts.first().and_then(Reply::text).unwrap_or_default();
            let keys: Vec<String> = match parts.get(1) {
                Some(Reply::Array(Some(keys))) => keys.iter().filter_map(Reply::text).collect(),
                _ => Vec::new(),
            };
            if !keys.is_empty() {
                batch(self, &keys)?;
            }
            if cursor == "0" || cursor.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Whether a Redis answers `PING` on this loopback port.
pub fn answers_ping(port: u16) -> bool {
    Resp::connect(port).map(|mut r| r.ping()).unwrap_or(false)
}

/// A `redis-server` of this test's own, SIGKILLed and its directory removed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Arguments after the standard ones (see [`RedisServer::start_with`]).
    extra: Vec<String>,
    /// Spawned with `PR_SET_PDEATHSIG` = `SIGKILL` (see
    /// [`RedisServer::start_dying_with_thread`]).
    dies_with_thread: bool,
}

impl RedisServer {
    /// Start on a free loopback port (retrying on another port if it was taken).
    pub fn start() -> RedisServer {
        RedisServer::start_with(free_port, |_, _| Vec::new())
    }

    /// Like [`RedisServer::start`], on a port from `port` and with more
    /// `redis-server` arguments, made for each port tried from that port and the
    /// server's own directory; a restart uses the same ones.
    pub fn start_with(
        port: impl Fn() -> u16,
        extra: impl Fn(u16, &Path) -> Vec<String>,
    ) -> RedisServer {
        RedisServer::start_opts(port, extra, false)
    }

    /// Like [`RedisServer::start_with`], but the kernel SIGKILLs the server as
    /// soon as the thread that spawned it ends (`PR_SET_PDEATHSIG`; a restart
    /// ties it to the restarting thread), so it cannot outlive this process even
    /// when it is never dropped (a `static`). Spawn it from a thread that lives as
    /// long as the process: a test's thread ends with its test.
    pub fn start_dying_with_thread(
        port: impl Fn() -> u16,
        extra: impl Fn(u16, &Path) -> Vec<String>,
    ) -> RedisServer {
        RedisServer::start_opts(port, extra, true)
    }

    fn start_opts(
        port: impl Fn() -> u16,
        extra: impl Fn(u16, &Path) -> Vec<String>,
        dies_with_thread: bool,
    ) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "herald-test-redis-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("create redis temp dir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            extra: Vec::new(),
            dies_with_thread,
        };
        for _ in 0..5 {
            server.port = port();
            server.extra = extra(server.port, &server.dir);
            if server.spawn().is_ok() {
                return server;
            }
        }
        panic!("redis-server did not start; log:\n{}", server.log());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start one that also serves TLS on a second free port (returned) with
    /// `cert`/`key`, trusting `ca` for client certificates, which it asks for
    /// when `auth_clients`. [`RedisServer::port`] stays plain, for the tests'
    /// own client.
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path, auth_clients: bool) -> (RedisServer, u16) {
        let tls_port = std::cell::Cell::new(0u16);
        let server = RedisServer::start_with(free_port, |_, _| {
            tls_port.set(free_port());
            let path = |p: &Path| p.display().to_string();
            vec![
                "--tls-port".into(),
                tls_port.get().to_string(),
                "--tls-cert-file".into(),
                path(cert),
                "--tls-key-file".into(),
                path(key),
                "--tls-ca-cert-file".into(),
                path(ca),
                "--tls-auth-clients".into(),
                if auth_clients { "yes" } else { "no" }.into(),
            ]
        });
        (server, tls_port.get())
    }

    pub fn client(&self) -> Resp {
        Resp::connect(self.port).expect("connect to the test redis-server")
    }

    /// Spawn on `self.port` and wait for `PING`; Err if it exits or never answers.
    fn spawn(&mut self) -> Result<(), ()> {
        let log = self.dir.join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.dies_with_thread {
            // SAFETY: the closure runs in the forked child before exec and only
            // makes a system call (async-signal-safe, no allocation).
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if answers_ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                return Err(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL the server (no chance to say goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(
            !answers_ping(self.port),
            "redis still answers after SIGKILL"
        );
    }

    /// Freeze the server (SIGSTOP): its clients' commands hang instead of
    /// failing, as in a stalled host or a long fork. [`RedisServer::resume`]
    /// continues it; a drop kills it frozen or not.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Continue a frozen server (SIGCONT): it runs the commands that waited.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("a running redis-server");
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        let r = unsafe { libc::kill(child.id() as i32, sig) };
        assert_eq!(r, 0, "kill({sig}) failed");
    }

    /// Start again, empty, on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running redis-server");
        let until = Instant::now() + Duration::from_secs(5);
        while self.spawn().is_err() {
            assert!(
                Instant::now() < until,
                "redis-server did not restart on port {}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's own directory (its `--dir`), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// What drop does, through a shared reference, for a server that is never
    /// dropped (a `static`, at process exit): SIGKILL it by pid, reap it and
    /// remove its directory. Never panics; it is not usable afterwards.
    pub fn kill_and_remove(&self) {
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| libc::pid_t::try_from(c.id()).ok())
        {
            // SAFETY: plain system calls on our own child's pid (not reaped
            // before: the `Child` is never waited for once this has run).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Timings of a test cluster (every pod gets the same).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub stale_after: Duration,
    pub cleanup: Duration,
}

impl Timing {
    /// Short intervals, so that convergence is quick.
    pub const FAST: Timing = Timing {
        heartbeat: Duration::from_millis(300),
        stale_after: Duration::from_millis(900),
        cleanup: Duration::from_millis(300),
    };
}

/// One cluster: a unique key prefix on a Redis (the shared one, or a
/// `redis-server` of its own), and the flags that start its pods. On drop, the
/// prefix's keys are deleted from a shared Redis (pods must be dropped first:
/// declare the cluster before its pods).
pub struct Cluster {
    pub prefix: String,
    pub port: u16,
    pub timing: Timing,
    /// `Some` when the cluster runs on a redis-server of its own.
    pub own: Option<RedisServer>,
    pods_started: std::cell::Cell<u32>,
}

impl Cluster {
    /// A cluster on the shared Redis at 127.0.0.1:6379 (or, when none answers
    /// there, on a redis-server of its own), with [`Timing::FAST`].
    pub fn shared(test: &str) -> Cluster {
        if answers_ping(SHARED_REDIS_PORT) {
            Cluster::on(test, SHARED_REDIS_PORT, None)
        } else {
            eprintln!("no Redis on 127.0.0.1:{SHARED_REDIS_PORT}: starting one for {test}");
            Cluster::own(test)
        }
    }

    /// A cluster on a redis-server of its own (for tests that kill or count it).
    pub fn own(test: &str) -> Cluster {
        let server = RedisServer::start();
        Cluster::on(test, server.port, Some(server))
    }

    fn on(test: &str, port: u16, own: Option<RedisServer>) -> Cluster {
        Cluster {
            prefix: unique_prefix(test),
            port,
            timing: Timing::FAST,
            own,
            pods_started: std::cell::Cell::new(0),
        }
    }

    pub fn with_timing(mut self, timing: Timing) -> Cluster {
        self.timing = timing;
        self
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The cluster's own redis-server (panics on the shared one).
    pub fn server(&mut self) -> &mut RedisServer {
        self.own
            .as_mut()
            .expect("this cluster has no redis-server of its own")
    }

    /// A RESP client to the cluster's Redis.
    pub fn client(&self) -> Resp {
        Resp::connect(self.port).expect("connect to the cluster's redis")
    }

    /// Start a pod of this cluster: `--shards 2`, the cluster's timings, a pod id
    /// unique to the test, then `extra`.
    pub fn pod(&self, extra: &[&str]) -> Herald {
        let n = self.pods_started.get();
        self.pods_started.set(n + 1);
        start_pod(&self.redis_url(), &self.prefix, self.timing, n, extra)
    }
}

/// A `--redis-prefix` unique to this test run: 1-64 bytes of the userId alphabet
/// starting with `t-` and the test's name.
pub fn unique_prefix(test: &str) -> String {
    let mut name: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(32);
    format!("t-{name}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// The flags of pod number `n` of a cluster on the Redis at `url` under
/// `prefix` (`--shards 2`, the timings, a pod id unique to the test), and
/// that pod id.
pub fn pod_flags(url: &str, prefix: &str, timing: Timing, n: u32) -> (String, Vec<String>) {
    let pod_id = format!("pod{n}-{:08x}", fastrand::u32(..));
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let flags = [
        "--redis",
        url,
        "--redis-prefix",
        prefix,
        "--pod-id",
        &pod_id,
        "--shards",
        "2",
        "--heartbeat-interval",
        &ms(timing.heartbeat),
        "--stale-after",
        &ms(timing.stale_after),
        "--cleanup-interval",
        &ms(timing.cleanup),
    ]
    .map(String::from)
    .to_vec();
    (pod_id, flags)
}

/// Start pod number `n` of a cluster on the Redis at `url` under `prefix`:
/// `--shards 2`, the timings, a pod id unique to the test, then `extra`.
pub fn start_pod(url: &str, prefix: &str, timing: Timing, n: u32, extra: &[&str]) -> Herald {
    let (pod_id, flags) = pod_flags(url, prefix, timing, n);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let h = Herald::start(&args);
    assert_eq!(
        h.pod_id, pod_id,
        "the pod must announce the --pod-id it was given"
    );
    h
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.own.is_none() {
            if let Ok(mut r) = Resp::connect(self.port) {
                let _ = r.delete_keys_containing(&self.prefix);
            }
        }
    }
}

/// The `cluster` object of a pod's stats (panics naming the stats if missing).
pub fn cluster_of(stats: &serde_json::Value) -> &serde_json::Value {
    let c = &stats["cluster"];
    assert!(c.is_object(), "stats without a \"cluster\" object: {stats}");
    c
}

/// The cluster counts `(pods, connections, users)` of a pod's stats.
pub fn cluster_counts(stats: &serde_json::Value) -> (u64, u64, u64) {
    let c = cluster_of(stats);
    let n = |k: &str| {
        c[k].as_u64()
            .unwrap_or_else(|| panic!("cluster.{k} is not a count: {stats}"))
    };
    (n("pods"), n("connections"), n("users"))
}

/// Poll `h`'s stats until `(pods, connections, users)` equals `want` (any field
/// `None` is not checked), at most `within`; returns how long it took.
pub async fn wait_cluster(
    h: &Herald,
    want: (Option<u64>, Option<u64>, Option<u64>),
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let stats = h.stats().await;
        let (p, c, u) = cluster_counts(&stats);
        let ok = want.0.is_none_or(|w| w == p)
            && want.1.is_none_or(|w| w == c)
            && want.2.is_none_or(|w| w == u);
        if ok {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "pod {}: cluster (pods, connections, users) never became {want:?} within {within:?}; last stats: {stats}",
            h.pod_id
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// [`wait_cluster`] on every pod, each bounded by [`WAIT`].
pub async fn wait_cluster_all(pods: &[&Herald], pods_n: u64, connections: u64, users: u64) {
    for h in pods {
        wait_cluster(h, (Some(pods_n), Some(connections), Some(users)), WAIT).await;
    }
}
