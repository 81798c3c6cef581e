//! The herald binary: parse the config, start the shards, wait for SIGTERM or
//! SIGINT, drain within the grace period, exit.

use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use clap::Parser;
use herald::config::LogFormat;
use herald::{Config, Server};
use tracing_subscriber::EnvFilter;

// jemalloc: memory a burst of connects or reconnects allocated and freed goes back
// to the system instead of staying as fragmented free space in glibc's per-thread
// arenas (perf/SCALE.md, "Rehearsal at 100,000 streams").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: a background thread returns freed pages
/// a second after they were freed, also when herald sits idle after a burst (the
/// default decays only as the process allocates, over 10 s).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: a pointer to the first byte of a 'static NUL-terminated string.
    unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() },
);

fn main() {
    let config = Config::from_process();
    if config.health_check {
        let (listen, cert) = running_herald()
            .map(|c| (c.listen, c.tls_cert))
            .unwrap_or((config.listen, config.tls_cert));
        std::process::exit(health_check(listen, cert.as_deref()));
    }
    init_logs(&config);
    // Signal handlers first: a SIGTERM right after the listening line must drain,
    // not kill.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("signal runtime");
    let mut term = signals
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        })
        .expect("SIGTERM handler");
    let mut int = signals
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        })
        .expect("SIGINT handler");
    let mut hup = signals
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) })
        .expect("SIGHUP handler");
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald: {e}");
            std::process::exit(2);
        }
    };
    // One line on stdout that tools (and the tests) wait for.
    println!(
        "herald listening on {}://{} pod={} shards={}",
        if server.is_tls() { "https" } else { "http" },
        server.local_addr(),
        server.pod_id(),
        server.shards()
    );
    tracing::info!(addr = %server.local_addr(), pod = server.pod_id(), shards = server.shards(), "herald started");
    signals.block_on(async {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => server.reload_tls(),
            }
        }
    });
    tracing::info!("signal received, draining");
    let clean = server.shutdown();
    tracing::info!(clean, "herald stopped");
    std::process::exit(0);
}

/// Log lines on stderr: text, coloured only when stderr is a terminal (a file, a
/// pipe, journald or a container log collector gets no escape codes), or one
/// JSON object per line.
fn init_logs(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .with_ansi(false)
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// The configuration of the herald this health check is about, when it is the
/// container's main process (PID 1, the same binary as this one): its own flags
/// and `HERALD_*` variables, as it read them. A container's `HEALTHCHECK` runs
/// `herald --health-check` beside it with the image's environment only, so
/// without this `docker run … herald --listen 0.0.0.0:9000` would be checked
/// on the image's default port. `HERALD_HEALTH_CHECK_PID` names another process
/// (the tests'). `None` elsewhere (on a host PID 1 is init).
fn running_herald() -> Option<Config> {
    let pid: u32 = std::env::var("HERALD_HEALTH_CHECK_PID")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    if pid == std::process::id() {
        return None;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let ours = std::env::current_exe().ok()?;
    let same = |p: &std::path::Path| std::fs::canonicalize(p).ok();
    if same(&exe)? != same(&ours)? {
        return None;
    }
    let split = |bytes: Vec<u8>| -> Vec<String> {
        bytes
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    };
    let argv = split(std::fs::read(format!("/proc/{pid}/cmdline")).ok()?);
    let environ = split(std::fs::read(format!("/proc/{pid}/environ")).ok()?);
    // Its HERALD_* variables replace this process's own (this process is
    // single-threaded here, and runs nothing else).
    let ours: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("HERALD_"))
        .collect();
    for k in ours {
        std::env::remove_var(k);
    }
    for kv in &environ {
        if let Some((k, v)) = kv.split_once('=') {
            if k.starts_with("HERALD_") && !v.is_empty() && k != "HERALD_HEALTH_CHECK_PID" {
                std::env::set_var(k, v);
            }
        }
    }
    Config::try_parse_from(argv).ok()
}

/// A byte stream, plain or TLS.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// `--health-check`: `GET /health/live` on the listening address (over TLS when
/// `--tls-cert` is set), bounded by two seconds per step. Returns the process
/// exit code.
fn health_check(listen: SocketAddr, tls_cert: Option<&std::path::Path>) -> i32 {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let step = Duration::from_secs(2);
    // Over HTTPS when herald serves it, trusting the certificate it serves.
    let tls = match tls_cert.map(herald::tls::self_check_client).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("herald at {addr}: {e}");
            return 1;
        }
    };
    let answer = (|| -> std::io::Result<String> {
        let s = TcpStream::connect_timeout(&addr, step)?;
        s.set_read_timeout(Some(step))?;
        s.set_write_timeout(Some(step))?;
        let mut s: Box<dyn ReadWrite> = match &tls {
            None => Box::new(s),
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(std::io::Error::other)?;
                Box::new(rustls::StreamOwned::new(conn, s))
            }
        };
        write!(
            s,
            "GET /health/live HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            match s.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    })();
    match answer {
        Ok(a) if a.starts_with("HTTP/1.1 200") => 0,
        Ok(a) => {
            eprintln!(
                "herald at {addr}: {}",
                a.lines().next().unwrap_or("no answer")
            );
            1
        }
        Err(e) => {
            eprintln!("herald at {addr}: {e}");
            1
        }
    }
}
