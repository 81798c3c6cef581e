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
    wait_for_signal();
    tracing::info!("signal received, draining");
    let clean = server.shutdown();
    tracing::info!(clean, "herald stopped");
    std::process::exit(0);
}

fn wait_for_signal() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("signal runtime");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
}
