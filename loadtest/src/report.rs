//! Results: one [`Report`] per run (per rate of a ladder), printed as a human
//! table on stdout and written as JSON with `--json` (an object, or an array
//! for a rate ladder). Fields that do not apply to a scenario are `null`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        })
    }
}

/// Figures about the server process (`--server-pid`).
#[derive(Serialize, Debug, Clone, Default)]
pub struct Server {
    pub pid: u32,
    /// utime + stime over the measured window.
    pub cpu_seconds: Option<f64>,
    pub cpu_ns_per_delivery: Option<f64>,
    /// Server CPU over the window / events published (a publish = one event,
    /// so one request without `--pub-batch`), µs.
    pub cpu_us_per_publish: Option<f64>,
    /// RSS before the first connect.
    pub rss_before: Option<u64>,
    /// RSS once every stream is open (after the settle time).
    pub rss_connected: Option<u64>,
    /// RSS at the end of the run.
    pub rss_after: Option<u64>,
    /// (rss_connected − rss_before) / open streams.
    pub rss_per_connection: Option<f64>,
    pub nofile_limit: Option<u64>,
}

/// Kernel TCP socket memory (system-wide: both ends on loopback).
#[derive(Serialize, Debug, Clone, Default)]
pub struct Kernel {
    pub tcp_mem_before: Option<u64>,
    pub tcp_mem_connected: Option<u64>,
    pub tcp_mem_after: Option<u64>,
    /// (connected − before) / open streams; covers client and server sockets.
    pub tcp_mem_per_connection: Option<f64>,
    /// Kernel slab memory (`/proc/meminfo`), before the first connect and once open.
    pub slab_before: Option<u64>,
    pub slab_connected: Option<u64>,
    /// (connected − before) / open streams: socket structures of both ends
    /// (system-wide, so noisy).
    pub slab_per_connection: Option<f64>,
}

/// The load client's own cost over the measured window.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Client {
    pub threads: usize,
    pub cpu_seconds: f64,
    /// Whole process, % of one core.
    pub cpu_percent: f64,
    /// Busiest event-loop thread, % of one core.
    pub max_thread_percent: f64,
    pub client_bound: bool,
}

/// Publisher details.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Publisher {
    /// Sends more than 1 ms behind the fixed schedule.
    pub late: u64,
    pub lag_us_p99: u64,
    pub lag_us_max: u64,
    pub rtt_us_p50: u64,
    pub rtt_us_p99: u64,
    pub error_reasons: BTreeMap<String, u64>,
}

/// Churn figures.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Churn {
    pub concurrency: usize,
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    pub abandoned: u64,
    pub connects_per_sec: f64,
    /// Server CPU per completed cycle (`--server-pid`).
    pub server_cpu_us_per_connect: Option<f64>,
    /// connect → first body bytes, µs.
    pub first_bytes_us: Option<Latency>,
}

/// Redis figures (`--redis-url`).
#[derive(Serialize, Debug, Clone, Default)]
pub struct Redis {
    pub heartbeat_interval_seconds: f64,
    /// Commands over the publish window.
    pub commands: u64,
    pub commands_per_sec: f64,
    pub commands_per_heartbeat_interval: f64,
    /// Over an idle window before publishing (`--redis-idle`), if any.
    pub idle_seconds: Option<f64>,
    pub idle_commands_per_sec: Option<f64>,
    pub idle_commands_per_heartbeat_interval: Option<f64>,
}

/// `--h2`: how the SSE streams were carried. `connections*` and every
/// figure "per connection" of the report then count SSE streams.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Http2 {
    /// `--streams-per-conn` (the last connection may carry fewer).
    pub streams_per_connection: u64,
    /// TLS connections the streams needed.
    pub tcp_connections: u64,
    /// Connections whose h2 handshake completed.
    pub tcp_connections_open: u64,
}

/// One run.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub label: String,
    pub sub_url: String,
    /// HTTP/2 streams (`--h2`); `null` for HTTP/1.1 (one stream per connection).
    pub http2: Option<Http2>,
    pub pub_url: Option<String>,
    /// Offered events/s (0 = as fast as possible).
    pub rate: Option<f64>,
    /// Publisher connections (`--pub-concurrency`).
    pub pub_concurrency: Option<usize>,
    /// Events per publish request (`--pub-batch`).
    pub pub_batch: Option<usize>,
    pub connections: u64,
    pub connections_open: u64,
    pub connections_failed: u64,
    pub connect_seconds: f64,
    pub connect_rate: f64,
    /// idle: open streams that received body bytes (herald: `retry:` and `CONNECTED`).
    pub streams_with_body_bytes: Option<u64>,
    /// Why connections failed or ended, with counts.
    pub reasons: BTreeMap<String, u64>,
    /// Publish window (first request to last delivery or drain timeout), or hold time.
    pub window_seconds: f64,
    pub events_published: u64,
    /// Publish requests answered 2xx (= events_published without `--pub-batch`).
    pub publish_requests: u64,
    /// Publish requests answered non-2xx or failed.
    pub publish_errors: u64,
    /// Events published per second of publishing: first request to last
    /// response (at a fixed rate at least events / rate); the delivery window
    /// can be longer.
    pub publishes_per_sec: f64,
    /// Publish requests answered 2xx per second of publishing.
    pub requests_per_sec: f64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Received again (see `unclassified`).
    pub duplicates: u64,
    /// First deliveries that arrived after an event with a higher sequence number.
    pub reordered: u64,
    /// Received by a connection that should not have had it.
    pub unexpected: u64,
    /// Streams that ended during the window.
    pub closed_during_run: u64,
    /// All SSE events dispatched during the window (ours, heartbeats, …).
    pub events_received: u64,
    pub drained: Option<bool>,
    pub deliveries_per_sec: f64,
    pub latency_us: Option<Latency>,
    pub publisher: Option<Publisher>,
    pub server: Option<Server>,
    pub kernel: Kernel,
    pub client: Client,
    pub churn: Option<Churn>,
    pub redis: Option<Redis>,
    /// The JSON of `--stats-url`, fetched at the end.
    pub stats: Option<serde_json::Value>,
    pub warnings: Vec<String>,
}

fn bytes(v: u64) -> String {
    if v >= 10 << 20 {
        format!("{:.1} MiB", v as f64 / (1 << 20) as f64)
    } else if v >= 10 << 10 {
        format!("{:.1} KiB", v as f64 / 1024.0)
    } else {
        format!("{v} B")
    }
}

fn opt_bytes(v: Option<u64>) -> String {
    v.map(bytes).unwrap_or_else(|| "-".into())
}

/// Thousands separators for readability.
pub fn num(v: f64) -> String {
    let neg = v < 0.0;
    let int = v.abs().round() as u64;
    let s = int.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let rate = match self.rate {
            Some(r) if r > 0.0 => format!(" rate={}/s", num(r)),
            Some(_) => " rate=max".into(),
            None => String::new(),
        };
        let _ = writeln!(t, "== {} [{}]{} ==", self.scenario, self.label, rate);
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<22} {v}");
        };
        // Over h2 the unit of every count and per-connection figure is the
        // SSE stream; the TCP connections get a row of their own.
        let unit = if self.http2.is_some() {
            "stream"
        } else {
            "connection"
        };
        row(
            &format!("{unit}s"),
            format!(
                "{} open of {} ({} failed)",
                num(self.connections_open as f64),
                num(self.connections as f64),
                self.connections_failed
            ),
        );
        if let Some(h) = &self.http2 {
            row(
                "h2 connections",
                format!(
                    "{} open of {} (TLS, {} streams each)",
                    num(h.tcp_connections_open as f64),
                    num(h.tcp_connections as f64),
                    h.streams_per_connection
                ),
            );
        }
        row(
            "connect",
            format!(
                "{:.2} s ({} /s)",
                self.connect_seconds,
                num(self.connect_rate)
            ),
        );
        if let Some(b) = self.streams_with_body_bytes {
            row("with body bytes", num(b as f64));
        }
        if let Some(c) = &self.churn {
            row(
                "churn",
                format!(
                    "{} cycles ok, {} failed, {} abandoned, {} connects/s, concurrency {}",
                    num(c.cycles_ok as f64),
                    c.cycles_failed,
                    c.abandoned,
                    num(c.connects_per_sec),
                    c.concurrency
                ),
            );
            if let Some(v) = c.server_cpu_us_per_connect {
                row("server cpu/connect", format!("{v:.1} µs"));
            }
            if let Some(l) = &c.first_bytes_us {
                row(
                    "first bytes µs",
                    format!(
                        "p50 {} p90 {} p99 {} p99.9 {} max {}",
                        num(l.p50 as f64),
                        num(l.p90 as f64),
                        num(l.p99 as f64),
                        num(l.p999 as f64),
                        num(l.max as f64)
                    ),
                );
            }
        }
        row("window", format!("{:.2} s", self.window_seconds));
        if self.pub_url.is_some() {
            let publishers = match self.pub_concurrency {
                Some(c) if c > 1 => format!(", {c} publishers"),
                _ => String::new(),
            };
            row(
                "events published",
                format!(
                    "{} ({} errors){publishers}",
                    num(self.events_published as f64),
                    self.publish_errors
                ),
            );
            let batch = match self.pub_batch {
                Some(b) if b > 1 => format!(", {b} events per request"),
                _ => String::new(),
            };
            row(
                "publishes/s",
                format!(
                    "{} events/s, {} requests/s{batch}",
                    num(self.publishes_per_sec),
                    num(self.requests_per_sec)
                ),
            );
            row("expected deliveries", num(self.expected_deliveries as f64));
            row(
                "delivered",
                format!(
                    "{}  lost {}  duplicates {}  reordered {}  unexpected {}",
                    num(self.delivered as f64),
                    num(self.lost as f64),
                    self.duplicates,
                    self.reordered,
                    self.unexpected
                ),
            );
            row("deliveries/s", num(self.deliveries_per_sec));
            if let Some(l) = &self.latency_us {
                row(
                    "latency µs",
                    format!(
                        "p50 {} p90 {} p99 {} p99.9 {} max {}",
                        num(l.p50 as f64),
                        num(l.p90 as f64),
                        num(l.p99 as f64),
                        num(l.p999 as f64),
                        num(l.max as f64)
                    ),
                );
            }
            if let Some(p) = &self.publisher {
                row(
                    "publisher",
                    format!(
                        "rtt p50 {} µs p99 {} µs; late sends {} (lag p99 {} µs, max {} µs)",
                        num(p.rtt_us_p50 as f64),
                        num(p.rtt_us_p99 as f64),
                        p.late,
                        num(p.lag_us_p99 as f64),
                        num(p.lag_us_max as f64)
                    ),
                );
            }
            if let Some(d) = self.drained {
                row(
                    "drained",
                    if d {
                        "yes".into()
                    } else {
                        "NO (timeout)".into()
                    },
                );
            }
        }
        row(
            "events received",
            format!(
                "{} (streams closed during run: {})",
                num(self.events_received as f64),
                self.closed_during_run
            ),
        );
        if let Some(s) = &self.server {
            row(
                "server cpu",
                match (s.cpu_seconds, s.cpu_ns_per_delivery) {
                    (Some(c), Some(n)) => format!("{c:.3} s, {} ns/delivery", num(n)),
                    (Some(c), None) => format!("{c:.3} s"),
                    _ => "-".into(),
                },
            );
            if let Some(u) = s.cpu_us_per_publish {
                row("server cpu/publish", format!("{u:.2} µs"));
            }
            row(
                "server rss",
                format!(
                    "{} before, {} connected, {} after; {} per {unit}",
                    opt_bytes(s.rss_before),
                    opt_bytes(s.rss_connected),
                    opt_bytes(s.rss_after),
                    s.rss_per_connection
                        .map(|v| format!("{} B", num(v)))
                        .unwrap_or_else(|| "-".into())
                ),
            );
        }
        let k = &self.kernel;
        row(
            "kernel tcp mem",
            format!(
                "{} before, {} connected, {} after; {} per {unit} (both ends)",
                opt_bytes(k.tcp_mem_before),
                opt_bytes(k.tcp_mem_connected),
                opt_bytes(k.tcp_mem_after),
                k.tcp_mem_per_connection
                    .map(|v| format!("{} B", num(v)))
                    .unwrap_or_else(|| "-".into())
            ),
        );
        if let Some(v) = k.slab_per_connection {
            row(
                "kernel slab",
                format!(
                    "{} before, {} connected; {} B per {unit} (both ends)",
                    opt_bytes(k.slab_before),
                    opt_bytes(k.slab_connected),
                    num(v)
                ),
            );
        }
        row(
            "client cpu",
            format!(
                "{:.3} s ({:.0}% of a core; busiest loop thread {:.0}%, {} thread(s))",
                self.client.cpu_seconds,
                self.client.cpu_percent,
                self.client.max_thread_percent,
                self.client.threads
            ),
        );
        if let Some(r) = &self.redis {
            row(
                "redis",
                format!(
                    "{} commands, {:.1}/s, {:.1} per {}s heartbeat interval",
                    num(r.commands as f64),
                    r.commands_per_sec,
                    r.commands_per_heartbeat_interval,
                    r.heartbeat_interval_seconds
                ),
            );
            if let (Some(s), Some(c), Some(h)) = (
                r.idle_seconds,
                r.idle_commands_per_sec,
                r.idle_commands_per_heartbeat_interval,
            ) {
                row(
                    "redis idle",
                    format!("{c:.1}/s over {s:.1} s, {h:.1} per heartbeat interval"),
                );
            }
        }
        if let Some(s) = &self.stats {
            row("server stats", s.to_string());
        }
        for (reason, n) in &self.reasons {
            row("ended/failed", format!("{n} × {reason}"));
        }
        if let Some(p) = &self.publisher {
            for (reason, n) in &p.error_reasons {
                row("publish error", format!("{n} × {reason}"));
            }
        }
        for w in &self.warnings {
            let _ = writeln!(t, "  WARNING: {w}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(num(1234567.4), "1,234,567");
        assert_eq!(num(999.0), "999");
        assert_eq!(num(-1000.0), "-1,000");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(20 << 20), "20.0 MiB");
        let mut h = crate::conn::new_hist();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let l = Latency::from_hist(&h).unwrap();
        assert_eq!((l.count, l.p50, l.max), (1000, 500, 1000));
        let r = Report {
            scenario: "fanout".into(),
            pub_url: Some("x".into()),
            latency_us: Some(l),
            warnings: vec!["client-bound".into()],
            ..Default::default()
        };
        let t = r.table();
        assert!(t.contains("latency µs") && t.contains("WARNING: client-bound"));
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["latency_us"]["p50"], 500);
    }
}
