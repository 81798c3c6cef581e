//! The cost of encryption alone on a TLS stream: one SSE event frame (an id,
//! an event name and 100 bytes of data, as the load test publishes) written
//! through a rustls server connection and sealed into a TLS record, TLS 1.3 with
//! AES-256-GCM (what rustls negotiates with itself here) on the ring provider.
//! This is what an HTTPS delivery adds to a plain one besides the syscall
//! (perf/RESULTS.md compares it with the load test's CPU per delivery).
//!
//! Two ways: through rustls (what HTTP/2 and hyper-served streams do), and
//! through herald's own record layer (`herald::tls::record`, what a lean
//! HTTP/1.1 stream does once its key is taken out of rustls): one frame, and
//! 16 frames coalesced into one record (a busy stream's flush).
//!
//!   cargo bench --bench tls_record

use std::io::Write;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A server and a client connection that completed their handshake in memory,
/// and the traffic secrets herald captured from it.
fn pair() -> (
    rustls::ServerConnection,
    rustls::ClientConnection,
    herald::tls::keys::Captured,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    // As herald's own configuration: lean streams take their keys out, and
    // the traffic secrets behind them (key updates).
    server_cfg.enable_secret_extraction = true;
    server_cfg.key_log = Arc::new(herald::tls::keys::CaptureLog);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let mut client = rustls::ClientConnection::new(
        Arc::new(client_cfg),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut captured = herald::tls::keys::Captured::default();
    let mut buf = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        server.read_tls(&mut &buf[..]).unwrap();
        herald::tls::keys::capturing(&mut captured, || server.process_new_packets()).unwrap();
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        client.read_tls(&mut &buf[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    (server, client, captured)
}

fn seal(c: &mut Criterion) {
    let (mut server, _client, _) = pair();
    // A key seals at most 2^24 AES-GCM records; herald then updates it (TLS
    // 1.3), within the runs measured. A fresh session should a seal fail.
    let fresh = || {
        let (server, _client, captured) = pair();
        herald::tls::lean::LeanTls::take(server, &captured).unwrap()
    };
    let mut lean = fresh();
    let frame = format!(
        "id: 1796131572939665\nevent: message\ndata: \"T123456789012S42P{}\"\n\n",
        "x".repeat(83)
    );
    let mut out = Vec::with_capacity(1024);
    let mut g = c.benchmark_group("tls_record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal one event frame", |b| {
        b.iter(|| {
            server.writer().write_all(frame.as_bytes()).unwrap();
            out.clear();
            while server.wants_write() {
                server.write_tls(&mut out).unwrap();
            }
            std::hint::black_box(&out);
        })
    });
    g.bench_function("seal one event frame, herald's record layer", |b| {
        let chunks = [std::io::IoSlice::new(frame.as_bytes())];
        b.iter(|| {
            out.clear();
            if lean.tx.seal_chunks(&mut out, &chunks, usize::MAX).is_err() {
                lean = fresh();
            }
            std::hint::black_box(&out);
        })
    });
    g.throughput(Throughput::Elements(16));
    g.bench_function(
        "seal 16 event frames in one record, herald's record layer",
        |b| {
            let chunks = [std::io::IoSlice::new(frame.as_bytes()); 16];
            b.iter(|| {
                out.clear();
                if lean.tx.seal_chunks(&mut out, &chunks, usize::MAX).is_err() {
                    lean = fresh();
                }
                std::hint::black_box(&out);
            })
        },
    );
    g.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
