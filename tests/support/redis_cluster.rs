//! A Redis Cluster of a test's own: three masters (no replicas) on loopback
//! ports, created with `redis-cli --cluster create`, whose nodes can be
//! SIGKILLed and restarted empty (re-joined with the slots they had), plus
//! [`Pods`]: a unique key prefix on that cluster and the flags that start herald
//! pods on it. Everything is killed and removed on drop; the cluster of
//! [`RedisCluster::shared`], one per test binary and never dropped, is killed
//! with the process.
//!
//! Each node is a [`RedisServer`] (its own temporary directory, `--save ''
//! --appendonly no`) with `--cluster-enabled yes`, its `nodes-<port>.conf` in that
//! directory and `--cluster-node-timeout 2000`. The cluster bus listens on the
//! default `port + 10000`, so node ports are taken below the kernel's ephemeral
//! range, each with its bus port checked free. Every wait is bounded by
//! [`CLUSTER_WAIT`] and polls.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::redis::{start_pod, unique_prefix, RedisServer, Reply, Resp, Timing};
use super::Herald;

/// Masters in a [`RedisCluster`].
pub const MASTERS: usize = 3;

/// Hash slots in a Redis Cluster.
pub const SLOTS: u32 = 16384;

/// Bound of every wait on the cluster (creation, convergence, re-join).
pub const CLUSTER_WAIT: Duration = Duration::from_secs(30);

/// The cluster bus listens on the node's port plus this (Redis's default).
const BUS_OFFSET: u16 = 10000;

/// `--cluster-node-timeout`, in milliseconds.
const NODE_TIMEOUT_MS: u32 = 2000;

/// One contiguous range of slots served by one master, as a node reports it
/// (`CLUSTER SLOTS`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    /// The master's port.
    pub port: u16,
    /// The master's node id.
    pub id: String,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    link: String,
    /// Slot ranges the node serves (importing/migrating entries left out).
    slots: Vec<(u16, u16)>,
}

/// A 3-master Redis Cluster on loopback ports, killed and removed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// With TLS ([`RedisCluster::start_tls`]): the nodes' TLS ports and the CA.
    tls: Option<(Vec<u16>, std::path::PathBuf)>,
}

/// The certificate files of a TLS Redis Cluster (every node serves the same
/// certificate, which must name 127.0.0.1).
pub struct ClusterTls<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

impl RedisCluster {
    /// Start three cluster-enabled `redis-server`s, create the cluster with
    /// `redis-cli --cluster create` and wait until every node says
    /// `cluster_state:ok` and all agree on the slot map.
    pub fn start() -> RedisCluster {
        RedisCluster::start_nodes(false, None)
    }

    /// Like [`RedisCluster::start`], over TLS: every node also serves TLS on a
    /// second port (its cluster bus is TLS too, `tls-cluster yes`, so that
    /// `CLUSTER SLOTS` gives TLS clients the TLS ports); its plain port stays,
    /// for the tests' own client. [`RedisCluster::tls_url`] is the URL.
    pub fn start_tls(tls: &ClusterTls) -> RedisCluster {
        RedisCluster::start_nodes(false, Some(tls))
    }

    /// `rediss-cluster://` over the nodes' TLS ports.
    pub fn tls_url(&self) -> String {
        let (ports, _) = self.tls.as_ref().expect("a TLS cluster");
        let others: Vec<String> = ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "rediss-cluster://127.0.0.1:{}?{}",
            ports[0],
            others.join("&")
        )
    }

    /// The Redis Cluster shared by every test of this test binary that asks for
    /// it (each under its own key prefix): started by the first caller (the
    /// others wait), never dropped, so it cannot be killed or restarted. Its
    /// nodes cannot outlive the process: they are spawned from a thread of their
    /// own that never ends, with `PR_SET_PDEATHSIG` = `SIGKILL`
    /// ([`RedisServer::start_dying_with_thread`]), so the kernel kills them
    /// when the process ends however it ends; when it exits normally (tests
    /// passed or failed), an `atexit` handler kills them first and removes their
    /// directories. A start that failed fails every caller with its message.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<Result<RedisCluster, String>> = OnceLock::new();

        extern "C" fn kill_at_exit() {
            if let Some(Ok(rc)) = SHARED.get() {
                for node in &rc.nodes {
                    node.kill_and_remove();
                }
            }
        }

        let started = SHARED.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("shared-redis-cluster".into())
                .spawn(move || {
                    let started =
                        std::panic::catch_unwind(|| RedisCluster::start_nodes(true, None)).map_err(
                            |panic| {
                                panic
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                    .unwrap_or_else(|| "(no message)".into())
                            },
                        );
                    let _ = tx.send(started);
                    // The nodes die with this thread: keep it until the process ends.
                    loop {
                        std::thread::park();
                    }
                })
                .expect("spawn the thread of the shared Redis Cluster");
            let started = rx
                .recv()
                .unwrap_or_else(|_| Err("its thread ended without an answer".into()));
            if started.is_ok() {
                // SAFETY: registers a plain `extern "C" fn` that never unwinds.
                let registered = unsafe { libc::atexit(kill_at_exit) };
                assert_eq!(registered, 0, "atexit for the shared Redis Cluster");
            }
            started
        });
        match started {
            Ok(rc) => rc,
            Err(e) => panic!("the shared Redis Cluster did not start: {e}"),
        }
    }

    /// Start the nodes (with [`RedisServer::start_dying_with_thread`] if
    /// `dies_with_thread`), create the cluster and wait until it converged.
    fn start_nodes(dies_with_thread: bool, tls: Option<&ClusterTls>) -> RedisCluster {
        let tls_ports: Vec<Cell<u16>> = (0..MASTERS).map(|_| Cell::new(0)).collect();
        let mut nodes = Vec::with_capacity(MASTERS);
        for tls_port in &tls_ports {
            let extra = |port: u16, dir: &Path| {
                let mut v: Vec<String> = vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    dir.join(nodes_conf(port)).to_string_lossy().into_owned(),
                    "--cluster-node-timeout".into(),
                    NODE_TIMEOUT_MS.to_string(),
                ];
                if let Some(t) = tls {
                    // The bus listens on the TLS port + 10000 then.
                    tls_port.set(cluster_port());
                    let path = |p: &Path| p.display().to_string();
                    v.extend([
                        "--tls-port".into(),
                        tls_port.get().to_string(),
                        "--tls-cert-file".into(),
                        path(t.cert),
                        "--tls-key-file".into(),
                        path(t.key),
                        "--tls-ca-cert-file".into(),
                        path(t.ca),
                        "--tls-auth-clients".into(),
                        "no".into(),
                        "--tls-cluster".into(),
                        "yes".into(),
                        "--tls-replication".into(),
                        "yes".into(),
                    ]);
                }
                v
            };
            let port = || {
                if tls.is_some() {
                    super::redis::free_port()
                } else {
                    cluster_port()
                }
            };
            nodes.push(if dies_with_thread {
                RedisServer::start_dying_with_thread(port, extra)
            } else {
                RedisServer::start_with(port, extra)
            });
        }
        let cluster = RedisCluster {
            nodes,
            tls: tls.map(|t| {
                (
                    tls_ports.iter().map(Cell::get).collect(),
                    t.ca.to_path_buf(),
                )
            }),
        };
        cluster.create();
        cluster.wait_converged("after redis-cli --cluster create");
        cluster
    }

    /// `redis-cli --cluster create` over the three nodes (bounded; its output
    /// goes to `create.log` in the first node's directory).
    fn create(&self) {
        let log_path = self.nodes[0].dir().join("create.log");
        let log = std::fs::File::create(&log_path).expect("create the redis-cli log file");
        let mut args: Vec<String> = Vec::new();
        let ports = match &self.tls {
            // Over TLS the nodes meet on their TLS ports (their bus is TLS).
            Some((tls_ports, ca)) => {
                args.extend(["--tls".into(), "--cacert".into(), ca.display().to_string()]);
                tls_ports.clone()
            }
            None => self.ports(),
        };
        args.extend(["--cluster".to_string(), "create".into()]);
        args.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let mut child = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone the log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn redis-cli (Debian package redis-tools; is it installed?)");
        let until = Instant::now() + CLUSTER_WAIT;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-cli {} did not finish within {CLUSTER_WAIT:?}; its output:\n{}\n{}",
                    args.join(" "),
                    std::fs::read_to_string(&log_path).unwrap_or_default(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "redis-cli {} failed ({status}); its output:\n{}\n{}",
            args.join(" "),
            std::fs::read_to_string(&log_path).unwrap_or_default(),
            self.logs()
        );
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let ports = self.ports();
        let others: Vec<String> = ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            ports[0],
            others.join("&")
        )
    }

    /// The nodes' ports, in node order (node `i` is `ports()[i]`).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Whether node `i` runs (it does unless [`RedisCluster::kill`]ed).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// A RESP client to node `i` (it answers `MOVED` for keys of other nodes).
    pub fn client(&self, i: usize) -> Resp {
        Resp::connect(self.nodes[i].port)
            .unwrap_or_else(|e| panic!("connect to cluster node {i}: {e}"))
    }

    /// The first node that runs: the one asked about the cluster's state.
    fn any_running(&self) -> usize {
        (0..self.nodes.len())
            .find(|&i| self.is_running(i))
            .expect("every node of the Redis Cluster is killed")
    }

    /// The node (index) that serves `slot`, as a running node sees it.
    pub fn node_for_slot(&self, slot: u16) -> usize {
        let asked = self.any_running();
        let map = slot_map(self.nodes[asked].port)
            .unwrap_or_else(|e| panic!("CLUSTER SLOTS on node {asked}: {e}"));
        let range = map
            .iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .unwrap_or_else(|| panic!("node {asked}: no master serves slot {slot}: {map:?}"));
        self.index_of(range.port)
    }

    /// The node (index) that serves `key`'s slot (`CLUSTER KEYSLOT`).
    pub fn node_for_key(&self, key: &str) -> usize {
        self.node_for_slot(self.key_slot(key))
    }

    /// `CLUSTER KEYSLOT key`, asked of a running node.
    pub fn key_slot(&self, key: &str) -> u16 {
        let asked = self.any_running();
        match ask(self.nodes[asked].port, &["CLUSTER", "KEYSLOT", key]) {
            Ok(Reply::Int(n)) if (0..SLOTS as i64).contains(&n) => n as u16,
            other => panic!("CLUSTER KEYSLOT {key:?} on node {asked} answered {other:?}"),
        }
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| {
                panic!(
                    "port {port} is not a node of this cluster {:?}",
                    self.ports()
                )
            })
    }

    /// SIGKILL node `i` (its data and cluster state are gone with it).
    pub fn kill(&mut self, i: usize) {
        assert!(self.is_running(i), "kill of node {i}, which is not running");
        self.nodes[i].kill();
    }

    /// Start killed node `i` again on the same port, empty (no data, a fresh
    /// `nodes.conf`, so a new node id), and re-join it with the slots it had: the
    /// other nodes `CLUSTER FORGET` its old id (which unassigns its slots), it
    /// `CLUSTER MEET`s them, takes its old slot ranges with `CLUSTER ADDSLOTS`
    /// and bumps its config epoch. Waits until `cluster_state:ok` everywhere and
    /// every node agrees on the slot map.
    pub fn restart_empty(&mut self, i: usize) {
        assert!(
            !self.is_running(i),
            "restart_empty of node {i}, which runs: kill it first"
        );
        let port = self.nodes[i].port;
        let survivors: Vec<usize> = (0..self.nodes.len()).filter(|&j| j != i).collect();
        let asked = survivors[0];
        let lines = cluster_nodes(self.nodes[asked].port)
            .unwrap_or_else(|e| panic!("CLUSTER NODES on node {asked}: {e}"));
        let old = lines
            .iter()
            .find(|l| l.port == port)
            .unwrap_or_else(|| {
                panic!("node {asked} does not know node {i} (port {port}): {lines:?}")
            })
            .clone();
        assert!(
            !old.slots.is_empty(),
            "node {i} (port {port}) served no slots before it was killed: {old:?}"
        );
        for &j in &survivors {
            match ask(self.nodes[j].port, &["CLUSTER", "FORGET", &old.id]) {
                Ok(Reply::Simple(ok)) if ok == "OK" => {}
                Err(e) if e.contains("Unknown node") => {}
                other => panic!("CLUSTER FORGET {} on node {j} answered {other:?}", old.id),
            }
        }
        let dir = self.nodes[i].dir().to_path_buf();
        for file in [nodes_conf(port), "dump.rdb".to_string()] {
            let _ = std::fs::remove_file(dir.join(file));
        }
        self.nodes[i].restart();
        let meet_port = self.nodes[asked].port.to_string();
        let r = ask(port, &["CLUSTER", "MEET", "127.0.0.1", &meet_port]);
        assert_eq!(
            r,
            Ok(Reply::Simple("OK".into())),
            "CLUSTER MEET from restarted node {i}"
        );
        self.wait_for(&format!("restarted node {i} to meet every node"), |c| {
            c.members_ok()
        });
        let mut args: Vec<String> = vec!["CLUSTER".into(), "ADDSLOTS".into()];
        for (start, end) in &old.slots {
            args.extend((*start..=*end).map(|s| s.to_string()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = ask(port, &args);
        assert_eq!(
            r,
            Ok(Reply::Simple("OK".into())),
            "CLUSTER ADDSLOTS {:?} on restarted node {i}",
            old.slots
        );
        match ask(port, &["CLUSTER", "BUMPEPOCH"]) {
            Ok(Reply::Simple(_)) | Ok(Reply::Bulk(Some(_))) => {}
            other => panic!("CLUSTER BUMPEPOCH on restarted node {i} answered {other:?}"),
        }
        self.wait_converged(&format!("after node {i} restarted empty"));
        let now_serving: Vec<(u16, u16)> = cluster_nodes(port)
            .unwrap_or_else(|e| panic!("CLUSTER NODES on restarted node {i}: {e}"))
            .into_iter()
            .find(|l| l.flags.iter().any(|f| f == "myself"))
            .map(|l| l.slots)
            .unwrap_or_default();
        assert_eq!(
            now_serving, old.slots,
            "restarted node {i} must serve the slots it had"
        );
    }

    /// `INFO commandstats` of node `i`: command name (`evalsha`, `xread`,
    /// `cluster|slots`, ...) → calls since start or the last
    /// [`RedisCluster::reset_stats`].
    pub fn commandstats(&self, i: usize) -> BTreeMap<String, u64> {
        let reply = ask(self.nodes[i].port, &["INFO", "commandstats"])
            .unwrap_or_else(|e| panic!("INFO commandstats on node {i}: {e}"));
        let text = reply
            .text()
            .unwrap_or_else(|| panic!("INFO commandstats on node {i} answered {reply:?}"));
        parse_commandstats(&text)
    }

    /// `CONFIG RESETSTAT` on every running node.
    pub fn reset_stats(&self) {
        for i in (0..self.nodes.len()).filter(|&i| self.is_running(i)) {
            let r = ask(self.nodes[i].port, &["CONFIG", "RESETSTAT"]);
            assert_eq!(
                r,
                Ok(Reply::Simple("OK".into())),
                "CONFIG RESETSTAT on node {i}"
            );
        }
    }

    /// Delete every key containing `needle` on every running node (one `DEL` per
    /// key: keys of different slots cannot share one); returns how many.
    pub fn delete_keys_containing(&self, needle: &str) -> Result<usize, String> {
        let mut deleted = 0;
        for i in (0..self.nodes.len()).filter(|&i| self.is_running(i)) {
            let mut r = Resp::connect(self.nodes[i].port).map_err(|e| format!("node {i}: {e}"))?;
            let keys = r
                .keys_containing(needle)
                .map_err(|e| format!("SCAN on node {i}: {e}"))?;
            for key in keys {
                match r.cmd(&["DEL", &key]) {
                    Ok(Reply::Int(n)) => deleted += n as usize,
                    other => return Err(format!("DEL {key} on node {i} answered {other:?}")),
                }
            }
        }
        Ok(deleted)
    }

    /// A herald cluster on this Redis Cluster: a prefix unique to `test` and
    /// [`Timing::FAST`].
    pub fn pods(&self, test: &str) -> Pods {
        Pods {
            url: self.url(),
            prefix: unique_prefix(test),
            timing: Timing::FAST,
            started: Cell::new(0),
        }
    }

    /// Wait until every node runs, says `cluster_state:ok`, knows exactly the
    /// cluster's nodes (all connected) and reports the same full slot map.
    pub fn wait_converged(&self, what: &str) {
        self.wait_for(what, |c| {
            c.members_ok()?;
            c.slots_agree()
        });
    }

    /// Poll `check` until it is `Ok`, at most [`CLUSTER_WAIT`]; panics with its
    /// last error and the nodes' logs.
    fn wait_for(&self, what: &str, check: impl Fn(&RedisCluster) -> Result<(), String>) {
        let start = Instant::now();
        loop {
            let last = match check(self) {
                Ok(()) => return,
                Err(e) => e,
            };
            if start.elapsed() >= CLUSTER_WAIT {
                panic!(
                    "Redis Cluster {:?}, {what}: not converged within {CLUSTER_WAIT:?}: {last}\n{}",
                    self.ports(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node runs and knows exactly the cluster's nodes, all connected, none
    /// failing or handshaking.
    fn members_ok(&self) -> Result<(), String> {
        let mut ports = self.ports();
        ports.sort_unstable();
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.is_running() {
                return Err(format!("node {i} is not running"));
            }
            let lines = cluster_nodes(node.port).map_err(|e| format!("node {i}: {e}"))?;
            let mut seen: Vec<u16> = lines.iter().map(|l| l.port).collect();
            seen.sort_unstable();
            if seen != ports {
                return Err(format!("node {i} knows nodes on ports {seen:?}"));
            }
            let bad = ["fail", "fail?", "handshake", "noaddr"];
            if let Some(l) = lines.iter().find(|l| {
                l.link != "connected" || l.flags.iter().any(|f| bad.contains(&f.as_str()))
            }) {
                return Err(format!("node {i} sees {l:?}"));
            }
        }
        Ok(())
    }

    /// Every node says `cluster_state:ok` and reports the same slot map, which
    /// covers every slot with masters of this cluster.
    fn slots_agree(&self) -> Result<(), String> {
        let mut first: Option<Vec<SlotRange>> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            let state = cluster_info_field(node.port, "cluster_state")
                .map_err(|e| format!("node {i}: {e}"))?;
            if state != "ok" {
                return Err(format!("node {i} says cluster_state:{state}"));
            }
            let map = slot_map(node.port).map_err(|e| format!("node {i}: {e}"))?;
            let covered: u32 = map
                .iter()
                .map(|r| u32::from(r.end) - u32::from(r.start) + 1)
                .sum();
            if covered != SLOTS {
                return Err(format!(
                    "node {i}: slot map covers {covered} slots: {map:?}"
                ));
            }
            if let Some(r) = map.iter().find(|r| !self.ports().contains(&r.port)) {
                return Err(format!("node {i}: slots served by a stranger: {r:?}"));
            }
            match &first {
                None => first = Some(map),
                Some(m) if *m != map => {
                    return Err(format!(
                        "nodes disagree on the slot map: node 0 {m:?}, node {i} {map:?}"
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The last lines of every node's log, for panic messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let log = node.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!(
                "--- node {i} (port {}) log, last {} lines:\n{}\n",
                node.port,
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }
}

/// A herald cluster on a [`RedisCluster`]: its URL, a unique key prefix (the hash
/// tag of every key) and the timings of its pods.
pub struct Pods {
    pub url: String,
    pub prefix: String,
    pub timing: Timing,
    started: Cell<u32>,
}

impl Pods {
    pub fn with_timing(mut self, timing: Timing) -> Pods {
        self.timing = timing;
        self
    }

    /// Start a pod: `--redis <cluster url>`, the prefix, `--shards 2`, the
    /// timings, a pod id unique to the test, then `extra` (as `Cluster::pod`).
    pub fn pod(&self, extra: &[&str]) -> Herald {
        let n = self.started.get();
        self.started.set(n + 1);
        start_pod(&self.url, &self.prefix, self.timing, n, extra)
    }

    /// The cluster's event log key, `{prefix}:log` (every key shares its slot).
    pub fn log_key(&self) -> String {
        format!("{{{}}}:log", self.prefix)
    }
}

/// The file name of a node's cluster config.
fn nodes_conf(port: u16) -> String {
    format!("nodes-{port}.conf")
}

/// A loopback port, with its cluster bus port (`+ 10000`), that nobody listens
/// on right now: both below the ephemeral range (32768 and up on Linux), so
/// neither is taken by an outgoing connection.
fn cluster_port() -> u16 {
    for _ in 0..1000 {
        let port = fastrand::u16(10000..=(32767 - BUS_OFFSET));
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + BUS_OFFSET) {
            return port;
        }
    }
    panic!("no free loopback port pair (P, P + {BUS_OFFSET}) for a cluster node");
}

/// Send one command to the node on `port`.
fn ask(port: u16, args: &[&str]) -> Result<Reply, String> {
    let mut r = Resp::connect(port).map_err(|e| format!("connect to port {port}: {e}"))?;
    match r.cmd(args) {
        Ok(Reply::Error(e)) => Err(format!("{} answered -{e}", args.join(" "))),
        Ok(reply) => Ok(reply),
        Err(e) => Err(format!("{}: {e}", args.join(" "))),
    }
}

/// A field of `CLUSTER INFO` (e.g. `cluster_state`).
fn cluster_info_field(port: u16, field: &str) -> Result<String, String> {
    let reply = ask(port, &["CLUSTER", "INFO"])?;
    let text = reply
        .text()
        .ok_or_else(|| format!("CLUSTER INFO answered {reply:?}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("no {field} in CLUSTER INFO:\n{text}"))
}

/// `CLUSTER SLOTS` of the node on `port`, as sorted ranges.
fn slot_map(port: u16) -> Result<Vec<SlotRange>, String> {
    let reply = ask(port, &["CLUSTER", "SLOTS"])?;
    let bad = || format!("unexpected CLUSTER SLOTS reply {reply:?}");
    let Reply::Array(Some(ranges)) = &reply else {
        return Err(bad());
    };
    let int = |r: Option<&Reply>| match r {
        Some(Reply::Int(n)) => u16::try_from(*n).ok(),
        _ => None,
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Reply::Array(Some(parts)) = range else {
            return Err(bad());
        };
        let Some(Reply::Array(Some(master))) = parts.get(2) else {
            return Err(bad());
        };
        out.push(SlotRange {
            start: int(parts.first()).ok_or_else(bad)?,
            end: int(parts.get(1)).ok_or_else(bad)?,
            port: int(master.get(1)).ok_or_else(bad)?,
            id: master.get(2).and_then(Reply::text).unwrap_or_default(),
        });
    }
    out.sort();
    Ok(out)
}

/// `CLUSTER NODES` of the node on `port`.
fn cluster_nodes(port: u16) -> Result<Vec<NodeLine>, String> {
    let reply = ask(port, &["CLUSTER", "NODES"])?;
    let text = reply
        .text()
        .ok_or_else(|| format!("CLUSTER NODES answered {reply:?}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| parse_node_line(line).ok_or_else(|| format!("bad CLUSTER NODES line {line:?}")))
        .collect()
}

/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch>
/// <link> <slot>...`
fn parse_node_line(line: &str) -> Option<NodeLine> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let addr = f[1].split([',', '@']).next()?;
    let port = addr.rsplit(':').next()?.parse().ok()?;
    let mut slots = Vec::new();
    for s in &f[8..] {
        if s.starts_with('[') {
            continue; // a slot being imported or migrated
        }
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        slots.push((a.parse().ok()?, b.parse().ok()?));
    }
    Some(NodeLine {
        id: f[0].to_string(),
        port,
        flags: f[2].split(',').map(String::from).collect(),
        link: f[7].to_string(),
        slots,
    })
}

/// `cmdstat_<name>:calls=N,usec=...` lines → name → N.
fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}
