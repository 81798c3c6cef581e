//! The Redis that production runs (contract v1.2, "Redis in production"):
//! TLS with a private CA and with client certificates, credentials from a
//! file, an ACL user with exactly the permissions the README lists, and each
//! failure (unknown CA, a name that does not match, an expired certificate, a
//! missing client certificate, a wrong password, a command not permitted)
//! named in the log once and in the readiness body and `herald_redis_problem`,
//! while readiness stays `200` (every pod sees the same Redis).
//!
//! Every test starts `redis-server`s of its own on free loopback ports
//! (Debian's build serves TLS), with certificates made for the test.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use support::certs::TestCa;
use support::redis::{unique_prefix, RedisServer};
use support::{Herald, WAIT};

/// A pod of its own cluster on `url`, its stderr (log at `info`) in a file
/// the test reads.
struct Pod {
    herald: Herald,
    log: PathBuf,
}

impl Pod {
    fn start(url: &str, prefix: &str, n: u32, extra: &[&str]) -> Pod {
        let log = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("redis-production-{prefix}-{n}.log"));
        let (_, flags) = support::redis::pod_flags(url, prefix, support::redis::Timing::FAST, n);
        let mut args: Vec<&str> = vec!["--log", "info", "--redis-timeout", "1s"];
        args.extend(flags.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let herald = Herald::start_with_stderr_file(&args, &log);
        Pod { herald, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `/health/ready` answers `want(status, body)`; returns the body.
    async fn ready_until(
        &self,
        what: &str,
        want: impl Fn(u16, &serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = Instant::now() + WAIT;
        loop {
            let r = self.herald.get("/health/ready").await;
            let body = r.json();
            if want(r.status, &body) {
                return body;
            }
            assert!(
                Instant::now() < until,
                "{what}: /health/ready still {} {body}; log:\n{}",
                r.status,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ready(&self) {
        self.ready_until("ready", |s, b| s == 200 && b["status"] == "ready")
            .await;
    }

    /// Wait for the degraded state `problem`, still `200`; returns its detail.
    async fn degraded(&self, problem: &str) -> String {
        let body = self
            .ready_until(problem, |s, b| {
                s == 200 && b["status"] == "degraded" && b["redis"] == problem
            })
            .await;
        body["detail"].as_str().unwrap_or_default().to_string()
    }

    async fn metric(&self, line_start: &str) -> Option<f64> {
        let text = self.herald.get("/metrics").await.body;
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Wait until the pod counted `n` more failed Redis commands than now, so
    /// that it has retried several times; then its log is read.
    async fn after_retries(&self, n: f64) {
        let before = self
            .metric("herald_redis_errors_total")
            .await
            .unwrap_or(0.0);
        let until = Instant::now() + WAIT;
        while self
            .metric("herald_redis_errors_total")
            .await
            .unwrap_or(0.0)
            < before + n
        {
            assert!(Instant::now() < until, "no retries; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Subscribe `user` on `sub`, publish to them on `publ`, and see it arrive.
async fn delivers(sub: &Herald, publ: &Herald, user: &str) {
    let mut client = sub.subscribe_connected(&format!("userId={user}")).await;
    let data = format!("hello {user}");
    publ.publish(json!({"data": data, "target": {"users": [user]}}))
        .await;
    let ev = client
        .next_non_heartbeat(WAIT)
        .await
        .unwrap_or_else(|| panic!("{user}: no event"));
    assert_eq!(ev.data, data);
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test]
async fn tls_with_a_private_ca_carries_a_cluster() {
    need!("redis-server");
    let ca = TestCa::new("tls-ok");
    let leaf = ca.issue("redis", &["127.0.0.1", "localhost"], 2090, false);
    let (server, tls_port) = RedisServer::start_tls(&ca.pem, &leaf.cert, &leaf.key, false);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let prefix = unique_prefix("tls-ok");
    let ca_path = ca.pem.display().to_string();
    let a = Pod::start(&url, &prefix, 0, &["--redis-tls-ca", &ca_path]);
    let b = Pod::start(&url, &prefix, 1, &["--redis-tls-ca", &ca_path]);
    a.ready().await;
    b.ready().await;
    delivers(&b.herald, &a.herald, "tls-kim").await;
    delivers(&a.herald, &b.herald, "tls-lee").await;
    // The pods' keys are in this Redis, written over TLS.
    let keys = server.client().keys_containing(&prefix).unwrap();
    assert!(keys.iter().any(|k| k.ends_with(":log")), "{keys:?}");
    assert_eq!(
        a.metric("herald_redis_problem{kind=\"none\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_redis_asks_for_one() {
    need!("redis-server");
    let ca = TestCa::new("mtls");
    let leaf = ca.issue("redis", &["127.0.0.1"], 2090, false);
    let client = ca.issue("herald", &["herald"], 2090, true);
    let (_server, tls_port) = RedisServer::start_tls(&ca.pem, &leaf.cert, &leaf.key, true);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let prefix = unique_prefix("mtls");
    let ca_path = ca.pem.display().to_string();
    // Without a certificate: refused, and said so.
    let bare = Pod::start(&url, &prefix, 0, &["--redis-tls-ca", &ca_path]);
    let detail = bare.degraded("tls").await;
    assert!(detail.contains("client certificate"), "{detail}");
    bare.after_retries(3.0).await;
    assert_eq!(count(&bare.log(), "redis TLS failed"), 1, "{}", bare.log());
    // With one: works.
    let (cert, key) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    let extra = [
        "--redis-tls-ca",
        &ca_path,
        "--redis-tls-cert",
        &cert,
        "--redis-tls-key",
        &key,
    ];
    let a = Pod::start(&url, &prefix, 1, &extra);
    let b = Pod::start(&url, &prefix, 2, &extra);
    a.ready().await;
    b.ready().await;
    delivers(&b.herald, &a.herald, "mtls-kim").await;
}

#[tokio::test]
async fn certificate_failures_are_named() {
    need!("redis-server");
    let ca = TestCa::new("certs");
    let other = TestCa::new("certs-other");
    let ca_path = ca.pem.display().to_string();
    let good = ca.issue("good", &["127.0.0.1"], 2090, false);
    let expired = ca.issue("expired", &["127.0.0.1"], 2021, false);
    let misnamed = ca.issue("misnamed", &["redis.example"], 2090, false);
    let (_s1, good_port) = RedisServer::start_tls(&ca.pem, &good.cert, &good.key, false);
    let (_s2, expired_port) = RedisServer::start_tls(&ca.pem, &expired.cert, &expired.key, false);
    let (_s3, misnamed_port) =
        RedisServer::start_tls(&ca.pem, &misnamed.cert, &misnamed.key, false);
    let other_path = other.pem.display().to_string();
    let cases = [
        (good_port, other_path.as_str(), "unknown CA"),
        (expired_port, ca_path.as_str(), "expired"),
        (misnamed_port, ca_path.as_str(), "does not name"),
    ];
    for (n, (port, trusted, want)) in cases.into_iter().enumerate() {
        let url = format!("rediss://127.0.0.1:{port}");
        let pod = Pod::start(
            &url,
            &unique_prefix("certs"),
            n as u32,
            &["--redis-tls-ca", trusted],
        );
        let detail = pod.degraded("tls").await;
        assert!(detail.contains(want), "{want}: {detail}");
        assert_eq!(
            pod.metric("herald_redis_problem{kind=\"tls\"}").await,
            Some(1.0)
        );
        pod.after_retries(3.0).await;
        let log = pod.log();
        assert_eq!(count(&log, "redis TLS failed"), 1, "{want}: {log}");
        assert!(log.contains(want), "{want}: {log}");
        // Not "unreachable": the user is sent to the certificates, not the network.
        assert_eq!(count(&log, "redis unreachable"), 0, "{want}: {log}");
    }
}

#[tokio::test]
async fn the_password_comes_from_a_file_and_a_wrong_one_is_named() {
    need!("redis-server");
    let server = RedisServer::start_with(
        || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        },
        |_, _| vec!["--requirepass".into(), "s3cret-pw".into()],
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "redis-pw-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good");
    std::fs::write(&good, "s3cret-pw\n").unwrap();
    let bad = dir.join("bad");
    std::fs::write(&bad, "wrong-pw\n").unwrap();
    let url = format!("redis://127.0.0.1:{}", server.port);
    let prefix = unique_prefix("password");
    let (good, bad) = (good.display().to_string(), bad.display().to_string());

    let wrong = Pod::start(&url, &prefix, 0, &["--redis-password-file", &bad]);
    let detail = wrong.degraded("auth").await;
    assert!(detail.contains("refused"), "{detail}");
    wrong.after_retries(3.0).await;
    let log = wrong.log();
    assert_eq!(count(&log, "redis authentication failed"), 1, "{log}");
    assert!(
        !log.contains("wrong-pw"),
        "the password must not be logged: {log}"
    );
    assert_eq!(
        wrong.metric("herald_redis_problem{kind=\"auth\"}").await,
        Some(1.0)
    );

    // No password at all: Redis says it wants one.
    let none = Pod::start(&url, &prefix, 1, &[]);
    let detail = none.degraded("auth").await;
    assert!(detail.contains("asks for a password"), "{detail}");

    let a = Pod::start(&url, &prefix, 2, &["--redis-password-file", &good]);
    let b = Pod::start(&url, &prefix, 3, &["--redis-password-file", &good]);
    a.ready().await;
    b.ready().await;
    delivers(&b.herald, &a.herald, "pw-kim").await;

    // A password in the URL and in a file: refused at start, without echoing it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "127.0.0.1:0", "--redis"])
        .arg(format!("redis://:in-url-pw@127.0.0.1:{}", server.port))
        .args(["--redis-password-file", &good])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("one place") && !err.contains("in-url-pw"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The ACL the README documents, for `prefix`, as `ACL SETUSER` arguments
/// after the user name; `drop` leaves one command out.
fn least_acl(prefix: &str, password: &str, drop: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "reset".into(),
        "on".into(),
        format!(">{password}"),
        format!("~{{{prefix}}}:*"),
        format!("~{{{prefix}.p*"),
        "resetchannels".into(),
    ];
    for c in herald::cluster::connect::ACL_COMMANDS {
        if Some(*c) != drop {
            v.push(format!("+{c}"));
        }
    }
    v
}

#[tokio::test]
async fn the_documented_least_acl_is_enough_and_a_missing_command_is_named() {
    need!("redis-server");
    let server = RedisServer::start();
    let mut admin = server.client();
    let prefix = unique_prefix("acl");
    let url = format!("redis://127.0.0.1:{}", server.port);
    let noread_prefix = unique_prefix("acl-noread");
    let set = |admin: &mut support::redis::Resp, user: &str, prefix: &str, drop: Option<&str>| {
        let mut args = vec!["ACL".to_string(), "SETUSER".into(), user.into()];
        args.extend(least_acl(prefix, "acl-pw", drop));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = admin.cmd(&args).unwrap();
        assert_eq!(r, support::redis::Reply::Simple("OK".into()), "{args:?}");
    };
    set(&mut admin, "herald", &prefix, None);
    set(&mut admin, "noread", &noread_prefix, Some("xread"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("acl-{prefix}"));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "acl-pw\n").unwrap();
    let pw = pw.display().to_string();
    let extra = ["--redis-username", "herald", "--redis-password-file", &pw];
    let a = Pod::start(&url, &prefix, 0, &extra);
    let b = Pod::start(&url, &prefix, 1, &extra);
    a.ready().await;
    b.ready().await;
    delivers(&b.herald, &a.herald, "acl-kim").await;
    // Pending, resume, disconnect and stats go through the same scripts.
    a.herald
        .publish(json!({"data": "later", "target": {"users": ["acl-off"]}}))
        .await;
    let mut c = b.herald.subscribe_connected("userId=acl-off").await;
    let ev = c.next_non_heartbeat(WAIT).await.expect("the pending event");
    assert_eq!(ev.data, "later");
    let stats = a.herald.stats().await;
    assert!(stats["cluster"]["pods"].as_u64() >= Some(2), "{stats}");
    let denied = admin.cmd(&["ACL", "LOG"]).unwrap();
    assert!(
        !format!("{denied:?}").contains("herald"),
        "the least ACL must be enough: ACL LOG {denied:?}"
    );
    let log = a.log() + &b.log();
    assert!(!log.contains("NOPERM"), "{log}");

    // A user without XREAD: the command is named.
    let extra = ["--redis-username", "noread", "--redis-password-file", &pw];
    let c = Pod::start(&url, &noread_prefix, 2, &extra);
    let body = c
        .ready_until("denied", |s, b| {
            s == 200
                && b["deniedCommands"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|c| c == "XREAD"))
        })
        .await;
    assert_eq!(body["status"], "degraded", "{body}");
    c.after_retries(3.0).await;
    let log = c.log();
    assert_eq!(
        count(&log, "redis refused a command herald needs"),
        1,
        "{log}"
    );
    assert!(log.contains("XREAD"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_url_herald_cannot_read_is_refused_at_start() {
    for (url, want) in [
        ("http://127.0.0.1:6379", "must start with"),
        ("redis-sentinel://127.0.0.1:26379", "sentinel"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", "127.0.0.1:0", "--redis", url])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url}");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains(want), "{url}: {err}");
    }
    // TLS files with a plain URL: said so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:1"])
        .args(["--redis-tls-ca", "/nonexistent.pem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rediss://"), "{err}");
}

#[tokio::test]
async fn a_redis_cluster_over_tls_carries_partitioned_pods() {
    need!("redis-server", "redis-cli");
    let ca = TestCa::new("cluster-tls");
    let leaf = ca.issue("nodes", &["127.0.0.1", "localhost"], 2090, false);
    let rc = support::redis_cluster::RedisCluster::start_tls(&support::redis_cluster::ClusterTls {
        ca: &ca.pem,
        cert: &leaf.cert,
        key: &leaf.key,
    });
    let url = rc.tls_url();
    let prefix = unique_prefix("cluster-tls");
    let ca_path = ca.pem.display().to_string();
    let extra = ["--redis-tls-ca", &ca_path, "--partitions", "8"];
    let a = Pod::start(&url, &prefix, 0, &extra);
    let b = Pod::start(&url, &prefix, 1, &extra);
    a.ready().await;
    b.ready().await;
    // Users in several partitions, hence on every master, and a broadcast.
    for i in 0..6 {
        delivers(&b.herald, &a.herald, &format!("ctls-{i}")).await;
    }
    let mut c = b.herald.subscribe_connected("userId=ctls-all").await;
    a.herald
        .publish(json!({"data": "to all", "target": "all"}))
        .await;
    assert_eq!(
        c.next_non_heartbeat(WAIT)
            .await
            .expect("the broadcast")
            .data,
        "to all"
    );
    // Every master holds some of the cluster's keys, written over TLS.
    let mut masters_with_keys = 0;
    for i in 0..3 {
        if !rc.client(i).keys_containing(&prefix).unwrap().is_empty() {
            masters_with_keys += 1;
        }
    }
    assert_eq!(masters_with_keys, 3);
}
