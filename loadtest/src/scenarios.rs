//! The scenarios: `idle`, `fanout` (and its rate ladder; with `--connections
//! 0` publish only, no subscriber), `targeted`, `churn` and `cluster`. Each one prepares the targets, opens the streams,
//! samples the server (`/proc/PID`), the kernel (`/proc/net/sockstat`) and the
//! client itself around a measured window, and returns [`Report`]s.
//!
//! Windows: for publishing scenarios the measured window runs from the first
//! publish request to the last delivery (or to the drain timeout when some
//! subscriber never got its last event); server and client CPU are sampled
//! over it. For `idle` it is the hold time, for `churn` the churn time.
//!
//! With `--h2` (`idle`, `fanout`, `targeted`, `cluster`) the streams are h2
//! streams, `--streams-per-conn` to a TLS connection ([`crate::http2`]);
//! everything per connection in the report is then per SSE stream, and the
//! TCP connections are reported besides.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::{self, ChurnPlan, PhaseStats, Streams, SubSpec};
use crate::publisher::{self, PubPlan, PubSpec};
use crate::report::{self, Client, Http2, Kernel, Latency, Publisher, Redis, Report, Server};
use crate::sys;
use crate::target::{parse_header, parse_url, Template, Url, Vars};
use crate::{ChurnArgs, ClusterArgs, H2Args, IdleArgs, PubArgs, SubArgs};

/// Most events in one publish request (herald's batch limit).
pub const MAX_PUB_BATCH: usize = 1000;

/// Default publish bodies (herald's `/api/broadcast`).
pub const BODY_ALL: &str = r#"{"data":"{payload}","target":"all"}"#;
pub const BODY_USER: &str = r#"{"data":"{payload}","target":{"users":["u{user}"]}}"#;

/// What every scenario needs, prepared from the subscriber arguments.
struct Env {
    spec: Arc<SubSpec>,
    n: u64,
    threads: usize,
    pid: Option<u32>,
    label: String,
    sub_url: String,
    warnings: Vec<String>,
    /// `--h2`: streams per TLS connection.
    per_conn: Option<u64>,
}

/// TCP connections the subscriber streams take.
fn tcp_connections(sub: &SubArgs, h2: &H2Args) -> u64 {
    if h2.h2 {
        sub.connections.div_ceil(h2.streams_per_conn.max(1))
    } else {
        sub.connections
    }
}

fn prepare(
    sub: &SubArgs,
    h2: &H2Args,
    scenario: &str,
    fds_needed: u64,
    default_sources: u64,
) -> Result<Env, String> {
    let url = parse_url(&sub.sub_url, "http", 80)?;
    let per_conn = if h2.h2 {
        if !url.tls {
            return Err(format!(
                "--h2: {} is not https:// (HTTP/2 is negotiated by ALPN over TLS; cleartext \
                 h2c is not supported)",
                sub.sub_url
            ));
        }
        if h2.streams_per_conn == 0 {
            return Err("--streams-per-conn must be at least 1".into());
        }
        Some(h2.streams_per_conn)
    } else {
        None
    };
    let headers = sub
        .sub_headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    if sub.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let n = sub.connections;
    let k = sub.source_addrs.unwrap_or(default_sources).clamp(1, 254);
    let sources: Vec<Ipv4Addr> = (1..=k as u8).map(|x| Ipv4Addr::new(127, 0, 0, x)).collect();
    let mut warnings = Vec::new();

    match sys::raise_nofile() {
        Ok(limit) if limit < fds_needed => {
            let w = format!(
                "RLIMIT_NOFILE is {limit} but this run needs about {fds_needed} descriptors: \
                 connections beyond the limit will fail. Raise the hard limit (as root: \
                 `ulimit -Hn 1048576` in the shell that starts the test, a `nofile` line in \
                 /etc/security/limits.conf, or LimitNOFILE= in the systemd unit)"
            );
            eprintln!("loadtest: WARNING: {w}");
            warnings.push(w);
        }
        Ok(_) => {}
        Err(e) => warnings.push(format!("could not raise RLIMIT_NOFILE: {e}")),
    }
    if let Some(pid) = sub.server_pid {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(format!("--server-pid {pid}: no such process"));
        }
        if let Some(l) = sys::proc_nofile_limit(pid) {
            if l < fds_needed {
                let w = format!(
                    "the server's open-file limit is {l}, below the {fds_needed} this run needs"
                );
                eprintln!("loadtest: WARNING: {w}");
                warnings.push(w);
            }
        }
    }
    let ports = sys::local_port_range();
    if fds_needed / k > ports {
        let w = format!(
            "{fds_needed} connections over {k} source address(es) exceed the {ports} ephemeral ports \
             per address: pass --source-addrs {}",
            fds_needed.div_ceil(ports)
        );
        eprintln!("loadtest: WARNING: {w}");
        warnings.push(w);
    }
    Ok(Env {
        spec: Arc::new(SubSpec {
            addr: url.addr,
            host: url.host.clone(),
            path: Template::new(&url.path),
            headers,
            sources,
            connect_timeout: sub.connect_timeout,
            tls: url.tls,
        }),
        n,
        threads: sub.threads,
        pid: sub.server_pid,
        label: sub.label.clone().unwrap_or_else(|| scenario.to_string()),
        sub_url: sub.sub_url.clone(),
        warnings,
        per_conn,
    })
}

fn default_sources(n: u64) -> u64 {
    n.div_ceil(20_000).max(1)
}

/// CPU samples at the start of a measured window.
struct Window {
    t0: Instant,
    server_cpu: Option<f64>,
    client_cpu: f64,
}

impl Window {
    fn begin(pid: Option<u32>) -> Window {
        Window {
            t0: Instant::now(),
            server_cpu: pid.and_then(sys::proc_cpu_seconds),
            client_cpu: sys::self_cpu_seconds(),
        }
    }
    /// (wall seconds, server CPU seconds, client CPU seconds).
    fn end(&self, pid: Option<u32>) -> (f64, Option<f64>, f64) {
        let wall = self.t0.elapsed().as_secs_f64();
        let server = match (self.server_cpu, pid.and_then(sys::proc_cpu_seconds)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        (wall, server, sys::self_cpu_seconds() - self.client_cpu)
    }
}

/// The client's own CPU over the window. `publishers` > 0: a publish-only run,
/// where the publisher threads, not the event loops, are the client's work.
fn client_figures(
    threads: usize,
    publishers: usize,
    wall: f64,
    cpu: f64,
    max_thread_cpu_ns: u64,
    warnings: &mut Vec<String>,
) -> Client {
    let wall = wall.max(1e-9);
    let pct = cpu / wall * 100.0;
    let max_thread = max_thread_cpu_ns as f64 / 1e9 / wall * 100.0;
    let bound = if publishers > 0 {
        let cores = publishers.min(sys::affinity_cpus());
        let bound = pct > 90.0 * cores as f64;
        if bound {
            warnings.push(format!(
                "client-bound: the {publishers} publisher threads used {pct:.0}% CPU of the \
                 {cores} core(s) they may use; publishes/s measures the client as much as the \
                 server (CPU per publish still stands): give the client more cores"
            ));
        }
        bound
    } else {
        let cores = threads.min(sys::affinity_cpus()) as f64;
        let bound = max_thread > 90.0 || pct > 90.0 * cores;
        if bound {
            warnings.push(format!(
                "client-bound: the load client used {pct:.0}% CPU (busiest loop thread {max_thread:.0}%); \
                 figures measure the client as much as the server: add --threads or cores"
            ));
        }
        bound
    };
    Client {
        threads,
        cpu_seconds: cpu,
        cpu_percent: pct,
        max_thread_percent: max_thread,
        client_bound: bound,
    }
}

/// Opened streams and what was measured while opening them.
struct Opened {
    streams: Streams,
    ready: u64,
    failed: u64,
    secs: f64,
    rss_before: Option<u64>,
    rss_connected: Option<u64>,
    tcp_before: Option<u64>,
    tcp_connected: Option<u64>,
    slab_before: Option<u64>,
    slab_connected: Option<u64>,
}

/// Opens the streams (`wait_body`: also wait until each sent body bytes).
fn open_streams(env: &Env, sub: &SubArgs, wait_body: bool) -> Result<Opened, String> {
    let rss_before = env.pid.and_then(sys::proc_rss_bytes);
    let tcp_before = sys::tcp_mem_bytes();
    let slab_before = sys::slab_bytes();
    let t0 = Instant::now();
    let inflight = sub.connect_concurrency.max(1);
    let streams = match env.per_conn {
        Some(k) => crate::http2::start(env.spec.clone(), env.n, env.threads, inflight, k),
        None => Streams::start(env.spec.clone(), env.n, env.threads, inflight),
    }
    .map_err(|e| format!("starting the event loops: {e}"))?;
    // Each connection times out on its own; opening is throttled to
    // connect_concurrency at a time, so this bounds the whole phase.
    let waves = env.n.div_ceil(sub.connect_concurrency.max(1) as u64) as u32;
    let limit = sub.connect_timeout * (waves + 1) + Duration::from_secs(5);
    let mut last_print = Instant::now();
    let (ready, failed) = loop {
        let (r, f) =
            streams.wait_open(Duration::from_secs(1).min(limit.saturating_sub(t0.elapsed())));
        if let Some(why) = streams.shared.fatal() {
            streams.stop();
            return Err(why);
        }
        if r + f >= env.n || t0.elapsed() >= limit {
            break (r, f);
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!("loadtest: {r} streams open, {f} failed, of {}", env.n);
            last_print = Instant::now();
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "loadtest: {ready} of {} streams open in {secs:.2} s ({failed} failed)",
        env.n
    );
    if wait_body {
        let fb = streams.wait_first_bytes(sub.connect_timeout);
        if fb < ready {
            eprintln!(
                "loadtest: {} open streams sent no body bytes within {:?}",
                ready - fb,
                sub.connect_timeout
            );
        }
    }
    std::thread::sleep(sub.settle);
    Ok(Opened {
        streams,
        ready,
        failed,
        secs,
        rss_before,
        rss_connected: env.pid.and_then(sys::proc_rss_bytes),
        tcp_before,
        tcp_connected: sys::tcp_mem_bytes(),
        slab_before,
        slab_connected: sys::slab_bytes(),
    })
}

fn per_conn(before: Option<u64>, after: Option<u64>, n: u64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if n > 0 => Some((a as f64 - b as f64) / n as f64),
        _ => None,
    }
}

/// The fields every stream scenario fills the same way.
fn base_report(env: &Env, scenario: &str, o: &Opened) -> Report {
    let server = env.pid.map(|pid| Server {
        pid,
        rss_before: o.rss_before,
        rss_connected: o.rss_connected,
        rss_per_connection: per_conn(o.rss_before, o.rss_connected, o.ready),
        nofile_limit: sys::proc_nofile_limit(pid),
        ..Default::default()
    });
    let http2 = env.per_conn.map(|k| Http2 {
        streams_per_connection: k,
        tcp_connections: env.n.div_ceil(k),
        tcp_connections_open: o
            .streams
            .shared
            .tcp_open
            .load(std::sync::atomic::Ordering::Relaxed),
    });
    Report {
        scenario: scenario.into(),
        label: env.label.clone(),
        sub_url: env.sub_url.clone(),
        http2,
        connections: env.n,
        connections_open: o.ready,
        connections_failed: o.failed,
        connect_seconds: o.secs,
        connect_rate: o.ready as f64 / o.secs.max(1e-9),
        server,
        kernel: Kernel {
            tcp_mem_before: o.tcp_before,
            tcp_mem_connected: o.tcp_connected,
            tcp_mem_after: None,
            tcp_mem_per_connection: per_conn(o.tcp_before, o.tcp_connected, o.ready),
            slab_before: o.slab_before,
            slab_connected: o.slab_connected,
            slab_per_connection: per_conn(o.slab_before, o.slab_connected, o.ready),
        },
        warnings: env.warnings.clone(),
        ..Default::default()
    }
}

fn finish_reports(env: &Env, o: Opened, reports: &mut [Report]) {
    let reasons = o.streams.shared.reasons.lock().unwrap().clone();
    o.streams.stop();
    let rss_after = env.pid.and_then(sys::proc_rss_bytes);
    let tcp_after = sys::tcp_mem_bytes();
    for r in reports.iter_mut() {
        r.reasons = reasons.clone();
        if let Some(s) = r.server.as_mut() {
            s.rss_after = s.rss_after.or(rss_after);
        }
        r.kernel.tcp_mem_after = r.kernel.tcp_mem_after.or(tcp_after);
    }
}

/// `idle`: open N streams, hold them, report memory per connection.
pub fn idle(a: &IdleArgs) -> Result<Vec<Report>, String> {
    let tcp = tcp_connections(&a.sub, &a.h2);
    let env = prepare(&a.sub, &a.h2, "idle", tcp + 64, default_sources(tcp))?;
    let o = open_streams(&env, &a.sub, true)?;
    let mut r = base_report(&env, "idle", &o);
    let fb = o
        .streams
        .shared
        .first_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    r.streams_with_body_bytes = Some(fb);
    if fb < o.ready {
        r.warnings
            .push(format!("{} open streams sent no body bytes", o.ready - fb));
    }
    o.streams.begin_phase(0, 0);
    let w = Window::begin(env.pid);
    if o.ready > 0 {
        eprintln!("loadtest: holding {} streams for {:?}", o.ready, a.duration);
        std::thread::sleep(a.duration);
    }
    let (wall, server_cpu, client_cpu) = w.end(env.pid);
    let st = o.streams.collect();
    r.window_seconds = wall;
    r.events_received = st.events;
    r.closed_during_run = st.closed_during;
    if let Some(s) = r.server.as_mut() {
        s.cpu_seconds = server_cpu;
        s.rss_after = env.pid.and_then(sys::proc_rss_bytes);
    }
    r.kernel.tcp_mem_after = sys::tcp_mem_bytes();
    let mut warnings = std::mem::take(&mut r.warnings);
    r.client = client_figures(
        env.threads,
        0,
        wall,
        client_cpu,
        st.max_thread_cpu_ns,
        &mut warnings,
    );
    r.warnings = warnings;
    let mut reports = vec![r];
    finish_reports(&env, o, &mut reports);
    Ok(reports)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fanout,
    Targeted,
    Cluster,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Fanout => "fanout",
            Kind::Targeted => "targeted",
            Kind::Cluster => "cluster",
        }
    }
}

/// `fanout`, `targeted` and `cluster`: N subscribers, publish at each rate.
pub fn publishing(
    kind: Kind,
    sub: &SubArgs,
    h2: &H2Args,
    p: &PubArgs,
    cluster: Option<&ClusterArgs>,
) -> Result<Vec<Report>, String> {
    if p.pub_concurrency == 0 || p.pub_concurrency > 4096 {
        return Err("--pub-concurrency must be between 1 and 4096".into());
    }
    if p.pub_batch == 0 || p.pub_batch > MAX_PUB_BATCH {
        return Err(format!("--pub-batch must be between 1 and {MAX_PUB_BATCH}"));
    }
    // No subscriber: only the publishers run (publishes/s, server CPU per publish).
    let publish_only = sub.connections == 0;
    if publish_only && kind != Kind::Fanout {
        return Err(format!(
            "{}: --connections 0 (publish only) is a fanout mode",
            kind.name()
        ));
    }
    let tcp = tcp_connections(sub, h2);
    let env = prepare(
        sub,
        h2,
        kind.name(),
        tcp + 64 + p.pub_concurrency as u64,
        default_sources(tcp),
    )?;
    let pub_url = parse_url(&p.pub_url, "http", 80)?;
    let body = p.pub_body.clone().unwrap_or_else(|| {
        if kind == Kind::Targeted {
            BODY_USER.into()
        } else {
            BODY_ALL.into()
        }
    });
    let body_text = body;
    let body = Template::new(&body_text);
    if !body.has("{payload}") {
        return Err("--pub-body must contain {payload}".into());
    }
    let users = if kind == Kind::Targeted { env.n } else { 0 };
    let pub_path = Template::new(&pub_url.path);
    if p.pub_batch > 1 {
        // Each element must be a publish object: the template, filled in, must
        // be a JSON object (herald's default is; a raw `{payload}` is not).
        let mut sample = Vec::new();
        body.render(
            &Vars {
                payload: b"T0S0P",
                ..Default::default()
            },
            &mut sample,
        );
        let is_object = matches!(
            serde_json::from_slice::<serde_json::Value>(&sample),
            Ok(serde_json::Value::Object(_))
        );
        if !is_object {
            return Err(format!(
                "--pub-batch {}: each request would carry a JSON array of publish objects \
                 (herald's batch: [{{\"data\":\"…\",\"target\":\"all\"}}, …]), but the \
                 --pub-body template {body_text:?} does not make a JSON object, so this server \
                 takes no such batches (nchan, the floor and axum-peer take one raw event per \
                 request): use --pub-batch 1, or a --pub-body that is one publish object",
                p.pub_batch
            ));
        }
        if ["{user}", "{seq}", "{payload}"]
            .iter()
            .any(|ph| pub_path.has(ph))
        {
            return Err(format!(
                "--pub-batch {}: the --pub-url path cannot use {{user}}, {{seq}} or {{payload}}: \
                 one request carries several events",
                p.pub_batch
            ));
        }
    }
    if kind == Kind::Targeted {
        if !body.has("{user}") && !pub_path.has("{user}") {
            return Err(
                "targeted: --pub-body or --pub-url must contain {user} (the target user's index)"
                    .into(),
            );
        }
        if !env.spec.path.has("{i}") {
            return Err(
                "targeted: --sub-url must contain {i} so that each connection is its own user"
                    .into(),
            );
        }
    }
    let pub_spec = Arc::new(PubSpec {
        url: pub_url,
        path: pub_path,
        body,
        headers: p
            .pub_headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()?,
        payload_bytes: p.payload_bytes,
        users,
        timeout: p.pub_timeout,
        batch: p.pub_batch,
    });
    let redis_url: Option<Url> = match cluster.and_then(|c| c.redis_url.as_deref()) {
        Some(u) => Some(parse_url(u, "redis", 6379)?),
        None => None,
    };
    let hb = cluster
        .map(|c| c.heartbeat_interval.as_secs_f64())
        .unwrap_or(15.0);
    let rates: Vec<f64> = if p.rates.is_empty() {
        vec![p.rate]
    } else {
        p.rates.clone()
    };
    if rates.iter().any(|r| !r.is_finite() || *r < 0.0) {
        return Err("rates must be ≥ 0".into());
    }

    let o = open_streams(&env, sub, false)?;
    if o.ready == 0 && !publish_only {
        let mut r = base_report(&env, kind.name(), &o);
        r.warnings
            .push("no stream opened: nothing to measure".into());
        let mut reports = vec![r];
        finish_reports(&env, o, &mut reports);
        return Ok(reports);
    }

    // Cluster: Redis commands over an idle window (heartbeats only).
    let mut redis_idle: Option<(f64, f64)> = None;
    if let (Some(url), Some(c)) = (&redis_url, cluster) {
        if !c.redis_idle.is_zero() {
            let t = Instant::now();
            let a = publisher::redis_total_commands(url, Duration::from_secs(5));
            eprintln!(
                "loadtest: measuring Redis commands over {:?} of idle",
                c.redis_idle
            );
            std::thread::sleep(c.redis_idle);
            let b = publisher::redis_total_commands(url, Duration::from_secs(5));
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    let secs = t.elapsed().as_secs_f64();
                    redis_idle = Some((secs, b.saturating_sub(a).saturating_sub(1) as f64 / secs));
                }
                (Err(e), _) | (_, Err(e)) => eprintln!("loadtest: redis INFO failed: {e}"),
            }
        }
    }

    let mut reports = Vec::new();
    let mut seq = 0u64;
    for &rate in &rates {
        let subs = o.streams.begin_phase(seq, users);
        let redis0 = redis_url
            .as_ref()
            .map(|u| publisher::redis_total_commands(u, Duration::from_secs(5)));
        let w = Window::begin(env.pid);
        let plan = PubPlan {
            first_seq: seq,
            rate,
            duration: p.duration,
            max_events: p.max_events.unwrap_or(u64::MAX),
            concurrency: p.pub_concurrency,
        };
        eprintln!(
            "loadtest: {}: publishing at {} for {:?} to {subs} subscribers{}{}",
            kind.name(),
            if rate > 0.0 {
                format!("{rate}/s")
            } else {
                "max rate".into()
            },
            p.duration,
            if p.pub_concurrency > 1 {
                format!(" from {} publishers", p.pub_concurrency)
            } else {
                String::new()
            },
            if p.pub_batch > 1 {
                format!(", {} events per request", p.pub_batch)
            } else {
                String::new()
            }
        );
        let spec = pub_spec.clone();
        let pres = std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || publisher::run(&spec, &plan))
            .map_err(|e| format!("publisher thread: {e}"))?
            .join()
            .map_err(|_| "publisher thread panicked".to_string())?;
        let drained = o.streams.drain(
            pres.end_seq,
            &pres.holes,
            subs,
            p.drain_timeout,
            p.pub_concurrency > 1,
        );
        let (mut wall, server_cpu, client_cpu) = w.end(env.pid);
        let redis1 = redis_url
            .as_ref()
            .map(|u| publisher::redis_total_commands(u, Duration::from_secs(5)));
        let st: PhaseStats = o.streams.collect();
        if drained {
            // Window ends at the last delivery (or at the last publish).
            let end_ns = st.last_delivery_ns.max(pres.finished_ns);
            wall = (end_ns.saturating_sub(pres.started_ns) as f64 / 1e9).clamp(1e-6, wall);
        }
        let mut r = base_report(&env, kind.name(), &o);
        r.pub_url = Some(p.pub_url.clone());
        r.rate = Some(rate);
        r.pub_concurrency = Some(p.pub_concurrency);
        r.pub_batch = Some(p.pub_batch);
        r.window_seconds = wall;
        r.events_published = pres.published;
        r.publish_requests = pres.requests;
        r.publish_errors = pres.errors;
        // Publishing time: first request to last response; at a fixed rate at
        // least the schedule's time for the events published (the last
        // request's slot ends 1/rate after it).
        let mut pub_secs = pres.finished_ns.saturating_sub(pres.started_ns) as f64 / 1e9;
        if rate > 0.0 {
            pub_secs = pub_secs.max(pres.published as f64 / rate);
        }
        let pub_secs = pub_secs.max(1e-9);
        r.publishes_per_sec = pres.published as f64 / pub_secs;
        r.requests_per_sec = pres.requests as f64 / pub_secs;
        r.expected_deliveries = st.expected;
        r.delivered = st.delivered;
        r.lost = st.lost.max(0) as u64;
        r.duplicates = st.duplicates;
        r.reordered = st.reordered;
        r.unexpected = st.unexpected;
        r.closed_during_run = st.closed_during;
        r.events_received = st.events;
        r.drained = Some(drained);
        r.deliveries_per_sec = st.delivered as f64 / wall;
        r.latency_us = Latency::from_hist(&st.latency_us);
        r.publisher = Some(Publisher {
            late: pres.late,
            lag_us_p99: pres.lag_us.value_at_quantile(0.99),
            lag_us_max: pres.lag_us.max(),
            rtt_us_p50: pres.rtt_us.value_at_quantile(0.5),
            rtt_us_p99: pres.rtt_us.value_at_quantile(0.99),
            error_reasons: pres.error_reasons.clone(),
        });
        if let Some(s) = r.server.as_mut() {
            s.cpu_seconds = server_cpu;
            s.cpu_ns_per_delivery = server_cpu
                .filter(|_| st.delivered > 0)
                .map(|c| c * 1e9 / st.delivered as f64);
            s.cpu_us_per_publish = server_cpu
                .filter(|_| pres.published > 0)
                .map(|c| c * 1e6 / pres.published as f64);
            s.rss_after = env.pid.and_then(sys::proc_rss_bytes);
        }
        r.kernel.tcp_mem_after = sys::tcp_mem_bytes();
        match (&redis0, &redis1) {
            (Some(Ok(a)), Some(Ok(b))) => {
                let cmds = b.saturating_sub(*a).saturating_sub(1);
                let secs = w.t0.elapsed().as_secs_f64();
                r.redis = Some(Redis {
                    heartbeat_interval_seconds: hb,
                    commands: cmds,
                    commands_per_sec: cmds as f64 / secs,
                    commands_per_heartbeat_interval: cmds as f64 / secs * hb,
                    idle_seconds: redis_idle.map(|x| x.0),
                    idle_commands_per_sec: redis_idle.map(|x| x.1),
                    idle_commands_per_heartbeat_interval: redis_idle.map(|x| x.1 * hb),
                });
            }
            (Some(Err(e)), _) | (_, Some(Err(e))) => {
                r.warnings.push(format!("redis INFO failed: {e}"))
            }
            _ => {}
        }
        let mut warnings = std::mem::take(&mut r.warnings);
        r.client = client_figures(
            env.threads,
            if publish_only { p.pub_concurrency } else { 0 },
            wall,
            client_cpu,
            st.max_thread_cpu_ns,
            &mut warnings,
        );
        if !drained {
            warnings.push(format!(
                "not every subscriber had its last event after the {:?} drain timeout",
                p.drain_timeout
            ));
        }
        if pres.published == 0 {
            warnings.push("no event was published".into());
        }
        if st.unclassified > 0 {
            warnings.push(format!(
                "{} arrivals came after their gap had been forgotten (more than {} separate \
                 gaps behind a subscriber's {}-event window): counted as duplicates, so loss \
                 and duplicates may each be over by up to that many",
                st.unclassified,
                crate::track::MAX_HOLES,
                crate::track::WINDOW
            ));
        }
        r.warnings = warnings;
        seq = pres.end_seq;
        reports.push(r);
    }
    finish_reports(&env, o, &mut reports);
    Ok(reports)
}

/// `churn`: open, wait for the first bytes, close; C in flight.
pub fn churn(a: &ChurnArgs) -> Result<Vec<Report>, String> {
    let conc = a.concurrency.max(1);
    let env = prepare(
        &a.sub,
        &H2Args::default(),
        "churn",
        conc as u64 + 64,
        a.sub.source_addrs.unwrap_or(8),
    )?;
    let stats_url = match &a.stats_url {
        Some(u) => Some(parse_url(u, "http", 80)?),
        None => None,
    };
    let rss_before = env.pid.and_then(sys::proc_rss_bytes);
    let tcp_before = sys::tcp_mem_bytes();
    let w = Window::begin(env.pid);
    eprintln!("loadtest: churning for {:?}, {conc} in flight", a.duration);
    let s = conn::churn(
        env.spec.clone(),
        ChurnPlan {
            threads: env.threads,
            concurrency: conc,
            deadline: Instant::now() + a.duration,
            max_cycles: a.max_events.unwrap_or(u64::MAX),
            index_modulo: env.n.max(1),
        },
    )
    .map_err(|e| format!("churn: {e}"))?;
    let (wall, server_cpu, client_cpu) = w.end(env.pid);
    let mut warnings = env.warnings.clone();
    let client = client_figures(
        env.threads,
        0,
        wall,
        client_cpu,
        s.max_thread_cpu_ns,
        &mut warnings,
    );
    // Let the server notice the last closes, then ask it.
    let mut stats = None;
    if let Some(u) = &stats_url {
        let until = Instant::now() + Duration::from_secs(3);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            match publisher::http_get(u, Duration::from_secs(5)) {
                Ok(resp) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&resp.body).unwrap_or_else(|_| {
                            serde_json::Value::String(String::from_utf8_lossy(&resp.body).into())
                        });
                    let zero = v.get("connections").and_then(|c| c.as_u64()) == Some(0);
                    stats = Some(v);
                    if zero || Instant::now() >= until {
                        break;
                    }
                }
                Err(e) => {
                    warnings.push(format!("--stats-url: {e}"));
                    break;
                }
            }
        }
    }
    let cycles = s.ok + s.failed + s.abandoned;
    let r = Report {
        scenario: "churn".into(),
        label: env.label.clone(),
        sub_url: env.sub_url.clone(),
        connections: cycles,
        connections_open: s.ok,
        connections_failed: s.failed + s.abandoned,
        connect_seconds: wall,
        connect_rate: s.ok as f64 / wall.max(1e-9),
        reasons: s.reasons.clone(),
        window_seconds: wall,
        server: env.pid.map(|pid| Server {
            pid,
            cpu_seconds: server_cpu,
            cpu_ns_per_delivery: None,
            cpu_us_per_publish: None,
            rss_before,
            rss_connected: None,
            rss_after: sys::proc_rss_bytes(pid),
            rss_per_connection: None,
            nofile_limit: sys::proc_nofile_limit(pid),
        }),
        kernel: Kernel {
            tcp_mem_before: tcp_before,
            tcp_mem_connected: None,
            tcp_mem_after: sys::tcp_mem_bytes(),
            tcp_mem_per_connection: None,
            ..Default::default()
        },
        client,
        churn: Some(report::Churn {
            concurrency: conc,
            cycles_ok: s.ok,
            cycles_failed: s.failed,
            abandoned: s.abandoned,
            connects_per_sec: s.ok as f64 / wall.max(1e-9),
            server_cpu_us_per_connect: server_cpu
                .filter(|_| s.ok > 0)
                .map(|c| c * 1e6 / s.ok as f64),
            first_bytes_us: Latency::from_hist(&s.first_bytes_us),
        }),
        stats,
        warnings,
        ..Default::default()
    };
    Ok(vec![r])
}
