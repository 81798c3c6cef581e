//! `axum-peer`: SSE broadcast as a Rust user would write it, as a peer for herald.
//!
//! perf/compare.sh measures herald next to this program under the same load. It
//! is the textbook axum + `tokio::sync::broadcast` server, with nothing tuned
//! (only TCP_NODELAY is set on accepted sockets, as the floor does):
//!
//! * `GET /sub/{anything}` answers an SSE stream ([`Sse`]): a `: ok` comment as the
//!   first body bytes (load clients, like browsers, take those as "stream open"),
//!   then every published event as `id: <n>\ndata: <body>\n\n`; no keep-alive
//!   comments.
//! * `POST /pub` sends its raw body to every subscriber through one broadcast
//!   channel of capacity 1024 and answers `202`. A subscriber that falls more than
//!   1024 events behind skips ahead to the oldest event still in the channel (the
//!   `Lagged` error is dropped, as a typical user would do), counting nothing.
//! * `--threads 1` (default): a current-thread tokio runtime; `--threads N`: a
//!   multi-thread runtime with N workers. Only loopback addresses are served.
//!
//! ```text
//! axum-peer --listen 127.0.0.1:0 [--threads N]
//! ```
//!
//! prints `axum-peer listening on http://ADDR` on stdout once it accepts connections.

use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

/// Events the channel keeps for subscribers that are behind.
const CAPACITY: usize = 1024;

/// One published event, shared by every subscriber.
#[derive(Clone)]
struct Msg {
    id: u64,
    data: Arc<str>,
}

#[derive(Clone)]
struct AppState {
    tx: broadcast::Sender<Msg>,
    next_id: Arc<AtomicU64>,
}

async fn subscribe(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let hello = tokio_stream::once(Ok(Event::default().comment("ok")));
    let events = BroadcastStream::new(state.tx.subscribe())
        // Err(Lagged(n)): the receiver skipped n events; go on with the next.
        .filter_map(|msg| msg.ok())
        .map(|msg| Ok(Event::default().id(msg.id.to_string()).data(&*msg.data)));
    Sse::new(hello.chain(events))
}

async fn publish(State(state): State<AppState>, body: Bytes) -> StatusCode {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let data: Arc<str> = String::from_utf8_lossy(&body).into();
    // An error only means there is no subscriber right now.
    let _ = state.tx.send(Msg { id, data });
    StatusCode::ACCEPTED
}

async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let (tx, _) = broadcast::channel(CAPACITY);
    let state = AppState {
        tx,
        next_id: Arc::new(AtomicU64::new(0)),
    };
    let app = Router::new()
        .route("/sub/{*rest}", get(subscribe))
        .route("/pub", post(publish))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "axum-peer listening on http://{addr}")?;
    out.flush()?;
    drop(out);
    axum::serve(listener, app).await
}

fn parse_args() -> Result<(SocketAddr, usize), String> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let mut threads = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                listen = v.parse().map_err(|e| format!("bad --listen {v:?}: {e}"))?;
            }
            "--threads" => {
                let v = value("--threads")?;
                threads = v.parse().map_err(|e| format!("bad --threads {v:?}: {e}"))?;
            }
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !(1..=256).contains(&threads) {
        return Err(format!("--threads {threads}: must be within 1..=256"));
    }
    match listen.ip() {
        IpAddr::V4(ip) if ip.octets()[0] == 127 => Ok((listen, threads)),
        ip => Err(format!("refusing to listen on {ip}: loopback (127/8) only")),
    }
}

fn main() -> ExitCode {
    let (listen, threads) = match parse_args() {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("axum-peer: {msg}");
            eprintln!("usage: axum-peer --listen 127.0.0.1:PORT [--threads N]");
            return ExitCode::from(2);
        }
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    match runtime.and_then(|rt| rt.block_on(serve(listen))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axum-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
