//! TLS for `https://` targets (rustls with ring): HTTP/1.1 by ALPN, or only
//! `h2` for `--h2` streams ([`crate::http2`]).
//!
//! The harness only targets loopback servers started for a measurement, usually
//! with a throwaway self-signed certificate, so the certificate is not verified
//! (the handshake's signatures still are): what is measured is the server's cost
//! of a TLS session, not a PKI.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// ALPN protocol id of HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// The client configuration of HTTP/1.1 streams, publishers and stats.
/// Sessions are not resumed: every connection makes a full handshake, the
/// server's worst case (what a connect storm after a restart costs).
pub fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| config(b"http/1.1")).clone()
}

/// The client configuration of `--h2` streams: it offers `h2` alone, so a
/// server without HTTP/2 cannot quietly fall back to HTTP/1.1 (the caller
/// still checks what was negotiated: a server may ignore ALPN).
pub fn client_config_h2() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| config(ALPN_H2)).clone()
}

fn config(alpn: &[u8]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.signature_verification_algorithms));
    let mut c = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// The name a connection to `addr` presents (the address: loopback targets).
pub fn server_name(addr: std::net::SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

/// A client connection to `addr` (the name is the address: loopback targets).
pub fn connection(addr: std::net::SocketAddr) -> std::io::Result<rustls::ClientConnection> {
    rustls::ClientConnection::new(client_config(), server_name(addr)).map_err(std::io::Error::other)
}

#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
