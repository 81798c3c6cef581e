//! The deployment assets against the herald they deploy: every flag and
//! `HERALD_*` variable they set exists in `herald --help`, every path they probe
//! or scrape is a route of a running herald, and the numbers that must agree do
//! (grace periods, ports, names). deploy/kubernetes/validate.sh checks the
//! manifests against the Kubernetes schemas (run by `.ci/run`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::Herald;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--help")
        .output()
        .expect("herald --help");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// `--name` or `--name=value` must be one of herald's long flags.
fn assert_flag(help: &str, arg: &str, source: &str) {
    let name = arg.split('=').next().unwrap();
    assert!(name.starts_with("--"), "{source}: {arg:?} is not a flag");
    assert!(
        help.contains(&format!("{name} ")) || help.contains(&format!("{name}\n")),
        "{source}: herald has no flag {name}"
    );
}

fn assert_env(help: &str, name: &str, source: &str) {
    assert!(
        help.contains(&format!("[env: {name}=")) || help.contains(&format!("[env: {name}]")),
        "{source}: herald reads no variable {name}"
    );
}

fn load(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn seconds(s: &str) -> u64 {
    humantime::parse_duration(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .as_secs()
}

/// Every route the assets use answers `200` on a running herald.
async fn assert_routes(paths: &[String]) {
    let h = Herald::start(&[]);
    for p in paths {
        let r = h.get(p).await;
        assert_eq!(r.status, 200, "GET {p}: {}", r.body);
    }
}

#[tokio::test]
async fn kubernetes_manifests_use_what_herald_has() {
    let help = help();
    let dir = root().join("deploy/kubernetes");
    let docs = load(&dir.join("herald.yaml"));
    let deploy = kind(&docs, "Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = pod["containers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("herald"))
        .expect("a herald container");

    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for a in &args {
        assert_flag(&help, a, "herald.yaml args");
    }
    for e in c["env"].as_vec().unwrap() {
        assert_env(&help, e["name"].as_str().unwrap(), "herald.yaml env");
    }
    // The Redis password is a file from a Secret, not a value in the spec.
    let env = |name: &str| {
        c["env"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("env {name}"))
            .clone()
    };
    let pw_file = env("HERALD_REDIS_PASSWORD_FILE")["value"]
        .as_str()
        .expect("a path")
        .to_string();
    let mount = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| pw_file.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the password file's volume is mounted");
    let volume = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let file = &pw_file[mount["mountPath"].as_str().unwrap().len() + 1..];
    assert!(
        volume["secret"]["items"]
            .as_vec()
            .unwrap()
            .iter()
            .any(|i| i["path"].as_str() == Some(file)),
        "{pw_file} comes from a Secret"
    );
    assert!(env("HERALD_REDIS_URL")["valueFrom"]["secretKeyRef"]["name"]
        .as_str()
        .is_some());

    // Probes: liveness and readiness on herald's own paths, on the named port.
    let mut paths = vec![];
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["port"].as_str(), Some("http"), "{probe} port");
        paths.push(get["path"].as_str().unwrap().to_string());
    }
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/health/live")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/health/ready")
    );
    let port = c["ports"].as_vec().unwrap()[0].clone();
    assert_eq!(port["name"].as_str(), Some("http"));
    let listen = args
        .iter()
        .find_map(|a| a.strip_prefix("--listen="))
        .expect("--listen");
    assert!(
        listen.ends_with(&format!(":{}", port["containerPort"].as_i64().unwrap())),
        "--listen {listen} and containerPort agree"
    );

    // SIGKILL only after the preStop pause and herald's own drain.
    let grace = args
        .iter()
        .find_map(|a| a.strip_prefix("--grace-period="))
        .map(seconds)
        .expect("--grace-period");
    let pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .expect("a preStop pause") as u64;
    let termination = pod["terminationGracePeriodSeconds"].as_i64().unwrap() as u64;
    assert!(
        termination > pause + grace,
        "terminationGracePeriodSeconds {termination} <= preStop {pause} + --grace-period {grace}"
    );

    // Non-root, read-only root filesystem, resources set.
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    assert!(c["resources"]["requests"]["cpu"].as_str().is_some());

    // The Service and PDB select the Deployment's pods, through the named port.
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    let svc = kind(&docs, "Service");
    for (k, v) in svc["spec"]["selector"].as_hash().unwrap() {
        assert_eq!(&labels[k.as_str().unwrap()], v, "Service selector");
    }
    let svc_port = &svc["spec"]["ports"].as_vec().unwrap()[0];
    assert_eq!(svc_port["targetPort"].as_str(), Some("http"));
    let pdb = kind(&docs, "PodDisruptionBudget");
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_hash().unwrap() {
        assert_eq!(&labels[k.as_str().unwrap()], v, "PDB selector");
    }

    // The Redis the Deployment points at is the one redis.yaml runs.
    let redis = load(&dir.join("redis.yaml"));
    let redis_svc = kind(&redis, "Service");
    // The URL is in the Secret the header's `kubectl create secret` makes.
    let text = std::fs::read_to_string(dir.join("herald.yaml")).unwrap();
    let url = text
        .split("--from-literal=url=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the Secret's url in herald.yaml's header");
    let host = format!(
        "redis://{}:{}/",
        redis_svc["metadata"]["name"].as_str().unwrap(),
        redis_svc["spec"]["ports"][0]["port"].as_i64().unwrap()
    );
    assert!(url.starts_with(&host), "{url} is not {host}…");

    // ServiceMonitor: the Service's port name and a herald path.
    let sm = load(&dir.join("extras/servicemonitor.yaml"));
    let endpoint = &kind(&sm, "ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], svc_port["name"]);
    paths.push(endpoint["path"].as_str().unwrap().to_string());

    // HPA: scales this Deployment on a metric herald exports.
    let hpa = load(&dir.join("extras/hpa.yaml"));
    let hpa = kind(&hpa, "HorizontalPodAutoscaler");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deploy["metadata"]["name"]
    );
    let metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        .as_str()
        .unwrap()
        .to_string();

    paths.sort();
    paths.dedup();
    assert_routes(&paths).await;
    let h = Herald::start(&[]);
    let metrics = h.get("/metrics").await.body;
    assert!(
        metrics.contains(&format!("\n{metric}{{")),
        "herald exports no {metric}"
    );
}

#[test]
fn systemd_unit_uses_what_herald_has() {
    let help = help();
    let unit = std::fs::read_to_string(root().join("deploy/systemd/herald.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}="))
            .to_string()
    };
    let exec = value("ExecStart");
    for a in exec.split_whitespace().skip(1) {
        assert_flag(&help, a, "ExecStart");
    }
    let mut grace = None;
    for l in unit.lines() {
        let l = l.trim_start_matches("# ").trim_start_matches('#');
        if let Some(env) = l.strip_prefix("Environment=") {
            let (name, v) = env.split_once('=').expect("NAME=value");
            assert_env(&help, name, "herald.service");
            if name == "HERALD_GRACE_PERIOD" {
                grace = Some(seconds(v));
            }
        }
    }
    let nofile: u64 = value("LimitNOFILE").parse().expect("a LimitNOFILE number");
    assert!(nofile >= 65_536);
    let stop = seconds(&value("TimeoutStopSec"));
    let grace = grace.expect("HERALD_GRACE_PERIOD is set");
    assert!(
        stop > grace,
        "TimeoutStopSec {stop} <= grace period {grace}"
    );
    assert_eq!(value("KillSignal"), "SIGTERM");
}

#[tokio::test]
async fn dockerfile_uses_what_herald_has_and_its_healthcheck_works() {
    let help = help();
    let file = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    // ENV lines (with continuations) name herald's variables.
    let mut in_env = false;
    for l in file.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("ENV ") {
            in_env = true;
            for kv in rest.trim_end_matches('\\').split_whitespace() {
                assert_env(&help, kv.split('=').next().unwrap(), "Dockerfile ENV");
            }
        } else if in_env && !l.is_empty() && !l.starts_with('#') {
            for kv in l.trim_end_matches('\\').split_whitespace() {
                assert_env(&help, kv.split('=').next().unwrap(), "Dockerfile ENV");
            }
        }
        if in_env && !l.ends_with('\\') {
            in_env = false;
        }
    }
    assert!(file.contains("STOPSIGNAL SIGTERM"));
    // The image's binary has no debug info; the build stage keeps it.
    assert!(
        file.contains("--strip-debug") && file.contains("--only-keep-debug"),
        "the Dockerfile strips the binary"
    );
    assert!(file.lines().any(|l| l.trim() == "USER 65532:65532"));
    let check = file
        .split("HEALTHCHECK")
        .nth(1)
        .and_then(|s| s.split("CMD").nth(1))
        .expect("a HEALTHCHECK CMD");
    let cmd: Vec<String> = serde_json::from_str(check.lines().next().unwrap().trim())
        .expect("exec-form CMD (the image has no shell)");
    assert_eq!(cmd[0], "/herald");
    for a in &cmd[1..] {
        assert_flag(&help, a, "HEALTHCHECK");
    }

    // The health check itself: 0 against a live herald, 1 against nothing.
    let h = Herald::start(&[]);
    let run = |listen: String| {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(&cmd[1..])
            .args(["--listen", &listen])
            .output()
            .expect("run the health check")
    };
    let ok = run(h.addr.to_string());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // 0.0.0.0 means this host.
    let any = run(format!("0.0.0.0:{}", h.addr.port()));
    assert!(any.status.success());
    let port = h.addr.port();
    // Dropping kills and reaps the process: the port is closed.
    drop(h);
    let down = run(format!("127.0.0.1:{port}"));
    assert_eq!(down.status.code(), Some(1));

    // `docker run … herald --listen 0.0.0.0:PORT` (here loopback): the flags go to the main
    // process; the HEALTHCHECK, run beside it with the image's environment
    // only, checks that process's address (its PID 1, here named).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let main = Herald::from_started_child(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--log", "warn"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn herald"),
    );
    let beside = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(&cmd[1..])
        .env("HERALD_LISTEN", "127.0.0.1:1")
        .env("HERALD_HEALTH_CHECK_PID", main.pid().to_string())
        .output()
        .expect("run the health check");
    assert!(
        beside.status.success(),
        "the check must find the main process's port: {}",
        String::from_utf8_lossy(&beside.stderr)
    );
}

/// `systemctl reload herald` runs the unit's `ExecReload` with `$MAINPID`: run
/// that command line the same way against a herald serving HTTPS, and the
/// certificate is reloaded.
#[test]
fn the_units_exec_reload_reloads_the_certificate() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/herald.service")).unwrap();
    let reload = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecReload="))
        .expect("an ExecReload=");
    assert!(reload.contains("$MAINPID"), "{reload}");
    let cert = support::certs::make_cert("exec-reload", 2100);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("exec-reload.stderr");
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let h =
        Herald::start_with_stderr_file(&["--log", "info", "--tls-cert", &c, "--tls-key", &k], &log);
    let line = reload.replace("$MAINPID", &h.pid().to_string());
    let status = Command::new("sh")
        .args(["-c", &line])
        .status()
        .expect("run ExecReload");
    assert!(status.success(), "{line}");
    let until = std::time::Instant::now() + support::WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("TLS certificate reloaded")
    {
        assert!(
            std::time::Instant::now() < until,
            "no reload after {line}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
