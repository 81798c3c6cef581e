//! Redis behind Sentinel for the tests: one master, one replica and three
//! sentinels of the test's own on free loopback ports (the sentinels run
//! `redis-sentinel`, or `redis-server --sentinel` where only the server is
//! installed), watching the service `main` with short timeouts so a failover
//! takes a few seconds. Everything is SIGKILLed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{free_port, RedisServer, Reply, Resp};

/// The service name the sentinels watch.
pub const SERVICE: &str = "main";

pub struct Sentinels {
    /// The two data nodes; which one is master changes with failovers.
    pub nodes: Vec<RedisServer>,
    /// The sentinels' ports.
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Sentinels {
    /// A master, its replica (in sync), and three sentinels that agree on it.
    pub fn start() -> Sentinels {
        let master = RedisServer::start();
        let mport = master.port;
        let replica = RedisServer::start_with(free_port, move |_, _| {
            vec!["--replicaof".into(), "127.0.0.1".into(), mport.to_string()]
        });
        let dir = std::env::temp_dir().join(format!(
            "herald-test-sentinel-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Sentinels {
            nodes: vec![master, replica],
            ports: Vec::new(),
            children: Vec::new(),
            dir,
        };
        s.wait_in_sync(mport, Duration::from_secs(10));
        for i in 0..3 {
            let port = free_port();
            let conf = s.dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {mport} 2\n\
                     sentinel down-after-milliseconds {SERVICE} 1000\n\
                     sentinel failover-timeout {SERVICE} 10000\n\
                     sentinel parallel-syncs {SERVICE} 1\n",
                    dir = s.dir.display()
                ),
            )
            .unwrap();
            let log = s.dir.join(format!("sentinel-{i}.log"));
            let mut cmd = if super::tools::on_path("redis-sentinel") {
                let mut c = Command::new("redis-sentinel");
                c.arg(&conf);
                c
            } else {
                let mut c = Command::new("redis-server");
                c.arg(&conf).arg("--sentinel");
                c
            };
            let child = cmd
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn a sentinel");
            s.children.push(child);
            s.ports.push(port);
        }
        // Every sentinel answers and knows the master, and they see each other.
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = s.ports.iter().all(|&p| {
                Resp::connect(p)
                    .and_then(|mut r| r.cmd(&["SENTINEL", "SENTINELS", SERVICE]))
                    .is_ok_and(|r| matches!(r, Reply::Array(Some(v)) if v.len() == 2))
            });
            if ok {
                return s;
            }
            assert!(
                Instant::now() < until,
                "the sentinels did not find each other; logs in {}",
                s.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis-sentinel://` URL naming every sentinel.
    pub fn url(&self) -> String {
        let mut url = format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SERVICE}",
            self.ports[0]
        );
        for p in &self.ports[1..] {
            url.push_str(&format!("&node=127.0.0.1:{p}"));
        }
        url
    }

    /// The port of the master the sentinels name now.
    pub fn master_port(&self) -> Option<u16> {
        for &p in &self.ports {
            let Ok(mut r) = Resp::connect(p) else {
                continue;
            };
            if let Ok(Reply::Array(Some(v))) =
                r.cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
            {
                if let Some(port) = v.get(1).and_then(Reply::text) {
                    return port.parse().ok();
                }
            }
        }
        None
    }

    /// The node whose port is `port`.
    pub fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node on that port")
    }

    /// Wait until the sentinels name a master other than `old` that answers as
    /// one; returns its port.
    pub fn wait_new_master(&self, old: u16, within: Duration) -> u16 {
        let until = Instant::now() + within;
        loop {
            if let Some(p) = self.master_port().filter(|&p| p != old) {
                let role = Resp::connect(p).and_then(|mut r| r.cmd(&["ROLE"]));
                if let Ok(Reply::Array(Some(v))) = role {
                    if v.first().and_then(Reply::text).as_deref() == Some("master") {
                        return p;
                    }
                }
            }
            assert!(
                Instant::now() < until,
                "no new master within {within:?}; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ask a sentinel for a failover (`SENTINEL FAILOVER`), as an operator would.
    pub fn failover(&self) {
        let mut r = Resp::connect(self.ports[0]).expect("a sentinel");
        let reply = r.cmd(&["SENTINEL", "FAILOVER", SERVICE]).expect("FAILOVER");
        assert_eq!(reply, Reply::Simple("OK".into()), "SENTINEL FAILOVER");
    }

    /// Wait until the replica of `master` has every byte the master has.
    pub fn wait_in_sync(&self, master: u16, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let mut r = Resp::connect(master).expect("the master");
            let info = r
                .cmd(&["INFO", "replication"])
                .ok()
                .and_then(|r| r.text())
                .unwrap_or_default();
            let offset = field(&info, "master_repl_offset");
            let synced = info.lines().filter(|l| l.starts_with("slave")).any(|l| {
                l.contains("state=online")
                    && l.contains(&format!("offset={}", offset.as_deref().unwrap_or("")))
            });
            if synced && offset.is_some() {
                return;
            }
            assert!(
                Instant::now() < until,
                "the replica of {master} never caught up: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
