//! The herald binary: parse the config, start the shards, wait for SIGTERM or
//! SIGINT, drain within the grace period, exit.

use clap::Parser;
use herald::{Config, Server};
use tracing_subscriber::EnvFilter;

fn main() {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
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
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald: {e}");
            std::process::exit(2);
        }
    };
    // One line on stdout that tools (and the tests) wait for.
    println!(
        "herald listening on http://{} pod={} shards={}",
        server.local_addr(),
        server.pod_id(),
        server.shards()
    );
    tracing::info!(addr = %server.local_addr(), pod = server.pod_id(), shards = server.shards(), "herald started");
    signals.block_on(async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    tracing::info!("signal received, draining");
    let clean = server.shutdown();
    tracing::info!(clean, "herald stopped");
    std::process::exit(0);
}
