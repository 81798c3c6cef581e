//! HTTPS clients for the tests: herald started with a test certificate, and
//! rustls connections to it over loopback.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::certs::TestCert;
use super::{Herald, WAIT};

/// herald on a loopback port with `c` as its certificate.
pub fn start_tls(c: &TestCert, extra: &[&str], stderr: Option<&Path>) -> Herald {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--listen", "127.0.0.1:0", "--log", "info"])
        .arg("--tls-cert")
        .arg(&c.cert)
        .arg("--tls-key")
        .arg(&c.key)
        .args(extra)
        .stdout(Stdio::piped());
    match stderr {
        Some(p) => cmd.stderr(std::fs::File::create(p).unwrap()),
        None => cmd.stderr(Stdio::null()),
    };
    Herald::from_started_child(cmd.spawn().expect("spawn herald"))
}

/// A client trusting `roots`, offering `alpn`.
pub fn connector(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

pub async fn tls_connect(
    h: &Herald,
    roots: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_connect_rcvbuf(h, roots, alpn, None).await
}

/// As [`tls_connect`], with the socket's receive buffer set first (a stalled
/// reader whose kernel buffers fill within a few events).
pub async fn tls_connect_rcvbuf(
    h: &Herald,
    roots: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
    rcvbuf: Option<u32>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    let tcp = socket.connect(h.addr).await?;
    // Requests are written in pieces (HTTP/2 HEADERS, then DATA): no Nagle wait.
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector(roots, alpn).connect(name, tcp))
        .await
        .expect("handshake in time")
}
