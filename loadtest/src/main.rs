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
mod rehearse;
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
    /// The rehearsal's browsers: this part's streams over --pods, reconnecting
    /// like EventSource, with exact loss/duplicate accounting and JSON snapshots.
    Rehearse(RehearseArgs),
    /// The rehearsal's backend: user events, topic events and broadcasts at
    /// fixed rates, each with an idempotency key, retried until taken.
    RehearsePub(RehearsePubArgs),
}

/// The layout every rehearsal process derives from the same flags.
#[derive(Args, Clone, Debug)]
pub struct LayoutArgs {
    /// Pod base URLs, comma-separated (http://127.0.0.1:PORT).
    #[arg(long, value_delimiter = ',', required = true)]
    pub pods: Vec<String>,
    /// Streams in the whole rehearsal (over every subscriber process).
    #[arg(long)]
    pub streams: u64,
    /// Topics (Zipf sizes: topic 0 the largest).
    #[arg(long, default_value_t = 100)]
    pub topics: u64,
    /// Seed of the layout (users with 1–3 streams, each stream's topic).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Append a JSON snapshot to this file every --snapshot-interval.
    #[arg(long)]
    pub snapshot: PathBuf,
    #[arg(long, default_value = "1s", value_parser = dur)]
    pub snapshot_interval: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct RehearseArgs {
    #[command(flatten)]
    pub layout: LayoutArgs,
    /// This process takes the users u with u % parts == part.
    #[arg(long, default_value_t = 0)]
    pub part: u64,
    #[arg(long, default_value_t = 1)]
    pub parts: u64,
    /// Event-loop threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Source addresses 127.0.0.1..127.0.0.K.
    #[arg(long, default_value_t = 4)]
    pub source_addrs: u64,
    /// Longest time before the publisher's final must be there.
    #[arg(long, default_value = "600s", value_parser = dur)]
    pub duration: Duration,
    /// The publisher's final file (rehearse-pub --final): once it exists the
    /// run drains and computes loss.
    #[arg(long)]
    pub pub_final: Option<PathBuf>,
    /// After the publisher's final, how long to wait for every stream's last event.
    #[arg(long, default_value = "30s", value_parser = dur)]
    pub drain_timeout: Duration,
    /// First connects in flight at once (reconnects are not limited).
    #[arg(long, default_value_t = 500)]
    pub connect_concurrency: usize,
    /// Connect to response head.
    #[arg(long, default_value = "15s", value_parser = dur)]
    pub connect_timeout: Duration,
    /// Failed attempts in a row before a stream gives up.
    #[arg(long, default_value_t = 50)]
    pub max_attempts: u32,
    /// Longest backoff after a refusal.
    #[arg(long, default_value = "30s", value_parser = dur)]
    pub backoff_max: Duration,
    /// How long the simulated load balancer keeps a pod out of rotation after it
    /// refused a TCP connect, answered 503, or ended its streams (a drain): what a
    /// balancer's readiness probe does (0: never).
    #[arg(long, default_value = "5s", value_parser = dur)]
    pub lb_out: Duration,
    /// Reconnect delay before a stream has seen a `retry:` hint.
    #[arg(long, default_value = "3s", value_parser = dur)]
    pub default_retry: Duration,
    /// An open stream that received nothing for this long counts as silent
    /// in the snapshots (set it above the servers' heartbeat interval).
    #[arg(long, default_value = "20s", value_parser = dur)]
    pub silent_after: Duration,
    /// Final report (JSON).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct RehearsePubArgs {
    #[command(flatten)]
    pub layout: LayoutArgs,
    /// User events per second (target r<seq % users>).
    #[arg(long, default_value_t = 100.0)]
    pub user_rate: f64,
    /// Topic events per second (target t<seq % topics>).
    #[arg(long, default_value_t = 10.0)]
    pub topic_rate: f64,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 1.0)]
    pub bcast_rate: f64,
    /// Publishing time.
    #[arg(long, default_value = "60s", value_parser = dur)]
    pub duration: Duration,
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Where to write the final counts the subscribers need.
    #[arg(long = "final")]
    pub final_path: PathBuf,
    /// Timeout of one publish request.
    #[arg(long, default_value = "5s", value_parser = dur)]
    pub pub_timeout: Duration,
    /// After --duration, how long an event not yet taken is still retried.
    #[arg(long, default_value = "60s", value_parser = dur)]
    pub retry_for: Duration,
    /// Prefix of the idempotency keys.
    #[arg(long, default_value = "rh")]
    pub run_id: String,
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
        Command::Rehearse(a) => {
            return a.duration + a.drain_timeout + Duration::from_secs(60);
        }
        Command::RehearsePub(a) => {
            return a.duration + a.retry_for + a.pub_timeout * 8 + Duration::from_secs(60);
        }
    };
    sub.max_runtime.unwrap_or(connect(sub) + extra)
}

/// Runs the rehearsal roles (they write their own files).
fn rehearsal(cmd: &Command) -> Option<Result<(), String>> {
    match cmd {
        Command::Rehearse(a) => Some(rehearse::subscribe(rehearse::SubCfg {
            pods: a.layout.pods.clone(),
            streams: a.layout.streams,
            topics: a.layout.topics,
            seed: a.layout.seed,
            part: a.part,
            parts: a.parts,
            threads: a.threads,
            source_addrs: a.source_addrs,
            duration: a.duration,
            snapshot: a.layout.snapshot.clone(),
            snapshot_interval: a.layout.snapshot_interval,
            pub_final: a.pub_final.clone(),
            drain_timeout: a.drain_timeout,
            connect_concurrency: a.connect_concurrency.max(1),
            connect_timeout: a.connect_timeout,
            max_attempts: a.max_attempts,
            backoff_max: a.backoff_max,
            lb_out: a.lb_out,
            default_retry: a.default_retry,
            silent_after: a.silent_after,
            json: a.json.clone(),
        })),
        Command::RehearsePub(a) => Some(rehearse::publish(rehearse::PubCfg {
            pods: a.layout.pods.clone(),
            streams: a.layout.streams,
            topics: a.layout.topics,
            seed: a.layout.seed,
            rates: [a.user_rate, a.topic_rate, a.bcast_rate],
            duration: a.duration,
            payload_bytes: a.payload_bytes,
            snapshot: a.layout.snapshot.clone(),
            snapshot_interval: a.layout.snapshot_interval,
            final_path: a.final_path.clone(),
            pub_timeout: a.pub_timeout,
            retry_for: a.retry_for,
            run_id: a.run_id.clone(),
        })),
        _ => None,
    }
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
    if let Some(r) = rehearsal(&cli.cmd) {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadtest: {e}");
                ExitCode::from(2)
            }
        };
    }
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
        Command::Rehearse(_) | Command::RehearsePub(_) => unreachable!("handled above"),
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
