//! `loadtest`: herald's bundled SSE load-test harness.
//!
//! A mio client (one event loop per `--threads`, tens of thousands of sockets
//! each, no task per connection) that opens SSE streams on loopback, drives
//! publishes, parses every event, and reports deliveries/s, loss, duplicates,
//! latency percentiles (HDR histogram), server CPU per delivered event and
//! server memory per connection, as a table and as JSON. It targets any SSE
//! server given a subscribe URL template and a publish request, so herald and
//! a peer (nchan, …) are measured by the same client in the same run.
//!
//! Modules: [`conn`] (event loops, connection state machine), [`track`]
//! (per-connection sequence accounting, tolerant of reordering), [`sse`]
//! (response head, chunked and event-stream parsers), [`payload`] (the
//! `T<ns>S<seq>P…` codec), [`publisher`] (blocking publishers, stats GET,
//! Redis INFO), [`report`] (table and JSON),
//! [`scenarios`], [`target`] (loopback-only URLs, templates), [`sys`]
//! (`/proc`, rlimits, clocks), [`tls`] (rustls client configurations),
//! [`http2`] (`--h2`: SSE streams multiplexed on h2 connections, tokio
//! event loops).
//!
//! Only 127.0.0.0/8 is ever targeted, and every loop is bounded: besides each
//! phase's own limits, a watchdog ends the process if a run overstays its
//! computed bound (`--max-runtime`).

mod conn;
mod http2;
mod payload;
mod publisher;
mod report;
mod scenarios;
mod sse;
mod sys;
mod target;
mod tls;
mod track;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

fn dur(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "SSE load-test harness (mio client, loopback only)",
    long_about = "Opens many SSE streams over loopback, publishes stamped events and measures \
                  delivery, loss, latency, server CPU per delivery and memory per connection. \
                  See loadtest/README.md for commands against herald and nchan."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open N streams, hold them, report server memory per connection.
    Idle(IdleArgs),
    /// N subscribers; publish to all at --rate (or each of --rates).
    /// `--connections 0`: publish only, no subscriber.
    Fanout(FanoutArgs),
    /// N subscribers with distinct users; each publish targets one user, round-robin.
    Targeted(FanoutArgs),
    /// Repeatedly open a stream, wait for its first bytes, close it.
    Churn(ChurnArgs),
    /// Like fanout, subscribers on one pod and publishes to another; optional Redis figures.
    Cluster(ClusterArgs),
}

/// Subscriber options shared by every scenario.
#[derive(Args, Clone, Debug)]
pub struct SubArgs {
    /// Subscribe URL template, `{i}` = connection index
    /// (e.g. 'http://127.0.0.1:8080/api/user/sse/connect?userId=u{i}').
    #[arg(long)]
    pub sub_url: String,
    /// Streams to open (churn: `{i}` runs modulo this; fanout: 0 = publish only,
    /// no subscriber: publishes/s and server CPU per publish).
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// Event-loop threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Source addresses 127.0.0.1..127.0.0.K [default: enough for 20,000 per address; churn 8].
    #[arg(long)]
    pub source_addrs: Option<u64>,
    /// Extra subscribe header 'Name: value' (repeatable). `Accept: text/event-stream` is always sent.
    #[arg(long = "sub-header", value_name = "HEADER")]
    pub sub_headers: Vec<String>,
    /// Server process to sample (CPU from /proc/PID/stat, RSS from /proc/PID/status).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the results as JSON here (an object; an array for a rate ladder).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Name of this run in the report [default: the scenario].
    #[arg(long)]
    pub label: Option<String>,
    /// Longest from connect to a stream's first body bytes.
    #[arg(long, default_value = "10s", value_parser = dur)]
    pub connect_timeout: Duration,
    /// Connects in flight at once while opening streams.
    #[arg(long, default_value_t = 1000)]
    pub connect_concurrency: usize,
    /// Pause after every stream is open, before sampling memory.
    #[arg(long, default_value = "1s", value_parser = dur)]
    pub settle: Duration,
    /// Hard bound on the whole run [default: computed from the other limits].
    #[arg(long, value_parser = dur)]
    pub max_runtime: Option<Duration>,
}

/// HTTP/2 options of the scenarios that hold subscriber streams.
#[derive(Args, Clone, Debug, Default)]
pub struct H2Args {
    /// Subscribe over HTTP/2: needs an https:// --sub-url whose server picks
    /// ALPN h2 (the run stops otherwise). --connections then counts SSE
    /// streams, --streams-per-conn to a TLS connection, and
    /// --connect-concurrency counts connections being set up.
    #[arg(long)]
    pub h2: bool,
    /// With --h2: SSE streams multiplexed on each connection (the last one
    /// takes the remainder).
    #[arg(long, default_value_t = 1, requires = "h2")]
    pub streams_per_conn: u64,
}

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub sub: SubArgs,
    #[command(flatten)]
    pub h2: H2Args,
    /// How long to hold the open streams.
    #[arg(long, default_value = "10s", value_parser = dur)]
    pub duration: Duration,
}

/// Publisher options.
#[derive(Args, Clone, Debug)]
pub struct PubArgs {
    /// Publish URL (POST).
    #[arg(long)]
    pub pub_url: String,
    /// Body template: `{payload}`, `{user}` (target user index), `{seq}`
    /// [default: {"data":"{payload}","target":"all"}; targeted: {"data":"{payload}","target":{"users":["u{user}"]}}].
    #[arg(long)]
    pub pub_body: Option<String>,
    /// Extra publish header 'Name: value' (repeatable).
    #[arg(long = "pub-header", value_name = "HEADER")]
    pub pub_headers: Vec<String>,
    /// Payload size in bytes (`T<ns>S<seq>P` padded with x).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Events per second over all publishers (fixed schedule); 0 = each
    /// publisher sends as soon as its previous response arrived.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Publisher connections, each with one request in flight, sharing the
    /// sequence counter and the rate schedule.
    #[arg(long, default_value_t = 1)]
    pub pub_concurrency: usize,
    /// Events per publish request (1..=1000). Above 1 each request carries a
    /// JSON array of N publish objects (herald's batch), each rendered from
    /// --pub-body with its own stamped payload; --rate, --max-events and the
    /// event counts still count events, not requests. Needs a --pub-body that
    /// is a JSON object (herald's default is).
    #[arg(long, default_value_t = 1)]
    pub pub_batch: usize,
    /// A rate ladder, e.g. 5,25,100,0: one result per rate on the same connections.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Publishing time per rate.
    #[arg(long, default_value = "10s", value_parser = dur)]
    pub duration: Duration,
    /// Stop publishing after this many events (per rate).
    #[arg(long)]
    pub max_events: Option<u64>,
    /// After publishing, how long to wait for every subscriber's last event.
    #[arg(long, default_value = "5s", value_parser = dur)]
    pub drain_timeout: Duration,
    /// Timeout of one publish request.
    #[arg(long, default_value = "5s", value_parser = dur)]
    pub pub_timeout: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub sub: SubArgs,
    #[command(flatten)]
    pub h2: H2Args,
    #[command(flatten)]
    pub publ: PubArgs,
}

#[derive(Args, Clone, Debug)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub sub: SubArgs,
    /// Churn time.
    #[arg(long, default_value = "5s", value_parser = dur)]
    pub duration: Duration,
    /// Stop after this many cycles.
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Cycles in flight.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// A JSON stats URL fetched at the end (e.g. herald's /api/user/sse/stats).
    #[arg(long)]
    pub stats_url: Option<String>,
}

#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub sub: SubArgs,
    #[command(flatten)]
    pub h2: H2Args,
    #[command(flatten)]
    pub publ: PubArgs,
    /// Redis to read `INFO stats` total_commands_processed from.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The servers' heartbeat interval, to report Redis commands per interval.
    #[arg(long, default_value = "15s", value_parser = dur)]
    pub heartbeat_interval: Duration,
    /// Also count Redis commands over this idle time before publishing.
    #[arg(long, default_value = "0s", value_parser = dur)]
    pub redis_idle: Duration,
}

/// An upper bound of the run's length, from its own limits.
fn runtime_bound(cmd: &Command) -> Duration {
    let connect = |s: &SubArgs| {
        let waves = s.connections.div_ceil(s.connect_concurrency.max(1) as u64) as u32;
        s.connect_timeout * (waves + 1) + s.settle + Duration::from_secs(10)
    };
    let publishing = |p: &PubArgs| {
        let per = p.duration + p.drain_timeout + p.pub_timeout * 2 + Duration::from_secs(25);
        per * p.rates.len().max(1) as u32
    };
    let (sub, extra) = match cmd {
        Command::Idle(a) => (&a.sub, a.duration + Duration::from_secs(20)),
        Command::Fanout(a) | Command::Targeted(a) => (&a.sub, publishing(&a.publ)),
        Command::Cluster(a) => (
            &a.sub,
            publishing(&a.publ) + a.redis_idle + Duration::from_secs(20),
        ),
        Command::Churn(a) => (
            &a.sub,
            a.duration + a.sub.connect_timeout + Duration::from_secs(30),
        ),
    };
    sub.max_runtime.unwrap_or(connect(sub) + extra)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let bound = runtime_bound(&cli.cmd);
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(bound);
            eprintln!("loadtest: run exceeded its bound of {bound:?}; exiting");
            std::process::exit(3);
        })
        .expect("watchdog thread");
    let (res, json) = match &cli.cmd {
        Command::Idle(a) => (scenarios::idle(a), &a.sub.json),
        Command::Fanout(a) => (
            scenarios::publishing(scenarios::Kind::Fanout, &a.sub, &a.h2, &a.publ, None),
            &a.sub.json,
        ),
        Command::Targeted(a) => (
            scenarios::publishing(scenarios::Kind::Targeted, &a.sub, &a.h2, &a.publ, None),
            &a.sub.json,
        ),
        Command::Cluster(a) => (
            scenarios::publishing(scenarios::Kind::Cluster, &a.sub, &a.h2, &a.publ, Some(a)),
            &a.sub.json,
        ),
        Command::Churn(a) => (scenarios::churn(a), &a.sub.json),
    };
    let reports = match res {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    for r in &reports {
        println!("{}", r.table());
    }
    if let Some(path) = json {
        let ladder = matches!(&cli.cmd, Command::Fanout(a) | Command::Targeted(a) if !a.publ.rates.is_empty())
            || matches!(&cli.cmd, Command::Cluster(a) if !a.publ.rates.is_empty());
        let v = if ladder || reports.len() != 1 {
            serde_json::to_value(&reports)
        } else {
            serde_json::to_value(&reports[0])
        };
        let text = serde_json::to_string_pretty(&v.expect("serializable report")).expect("json");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("loadtest: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    // A publish-only fanout (`--connections 0`) opens no stream by design.
    if reports
        .iter()
        .any(|r| r.connections > 0 && r.connections_open == 0)
    {
        eprintln!("loadtest: no stream opened (see the reasons above)");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
