//! TLS: the certificate and key herald serves HTTPS with (`--tls-cert`,
//! `--tls-key`), loaded at start and again on `SIGHUP`.
//!
//! rustls with the `ring` provider, TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
//! Files are checked when loaded: the chain parses, the key matches the leaf
//! certificate, and the leaf is within its validity period. At start a bad file
//! is a clear error (herald exits non-zero); on `SIGHUP` it is logged and the
//! previous certificate stays. A reload only changes what new handshakes get:
//! connections already open keep the session they negotiated.

pub mod keys;
pub mod lean;
pub mod record;
#[doc(hidden)]
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// ALPN protocol ids, in herald's order of preference.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The TLS configuration new handshakes use, replaceable at run time.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Load `cert` and `key`; the error says which file and why.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, String> {
        // The record limit's test hook is read once, at start.
        record::test_record_limit();
        let config = server_config(cert, key)?;
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Load the files again (on `SIGHUP`). On error the previous certificate
    /// stays in use and the error is returned for the log.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// An acceptor with the configuration in force now (one per handshake:
    /// a lock read and an `Arc` clone).
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }
}

/// The certificate chain in `cert` (PEM, leaf first; at least one).
fn load_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    pem_certs(cert, "--tls-cert")
}

/// The PEM certificates in `path` (at least one); `flag` names it in errors.
pub fn pem_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let chain = load_chain(cert)?;
    check_validity(&chain[0], cert)?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing = provider
        .key_provider
        .load_private_key(private.clone_key())
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|e| {
            format!(
                "--tls-key {} does not belong to the certificate in --tls-cert {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    // After the handshake herald takes the keys out of rustls and seals and
    // opens the records itself (see `record`); the traffic secrets behind
    // them, for key updates, are captured as rustls derives them (`keys`).
    config.enable_secret_extraction = true;
    config.key_log = Arc::new(keys::CaptureLog);
    Ok(config)
}

/// The leaf must be valid now: an expired (or not yet valid) certificate is
/// refused up front rather than by every client.
fn check_validity(leaf: &CertificateDer<'_>, path: &Path) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        format!(
            "--tls-cert {}: not an X.509 certificate: {e}",
            path.display()
        )
    })?;
    let validity = parsed.validity();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if now > validity.not_after.timestamp() {
        return Err(format!(
            "--tls-cert {}: the certificate expired on {}",
            path.display(),
            validity.not_after
        ));
    }
    if now < validity.not_before.timestamp() {
        return Err(format!(
            "--tls-cert {}: the certificate is not valid before {}",
            path.display(),
            validity.not_before
        ));
    }
    Ok(())
}

/// The CA roots herald's own TLS clients trust (Redis, a JWKS): the PEM
/// certificates in `ca` when given (`flag` names it in errors), else the
/// system's (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
pub fn client_roots(ca: Option<&Path>, flag: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, source) = match ca {
        Some(ca) => (
            roots.add_parsable_certificates(pem_certs(ca, flag)?).0,
            format!("{flag} {}", ca.display()),
        ),
        None => {
            let found = rustls_native_certs::load_native_certs();
            let added = roots.add_parsable_certificates(found.certs).0;
            (added, "the system's CA certificates".to_string())
        }
    };
    if added == 0 {
        return Err(format!("{source}: no usable CA certificate (give {flag})"));
    }
    Ok(roots)
}

/// A rustls client configuration as herald's own TLS uses (ring, TLS 1.3 and
/// 1.2) trusting `roots`, before its client-certificate choice.
pub fn client_builder(
    roots: rustls::RootCertStore,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots))
}

/// A client configuration for herald's own `--health-check` against its HTTPS
/// port: it trusts exactly the leaf certificate in `cert` (whatever names it
/// carries: the check connects to an address, not a name), with ALPN http/1.1.
pub fn self_check_client(cert: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let leaf = load_chain(cert)?.swap_remove(0);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedLeaf {
        leaf,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Accepts the one certificate herald itself serves, and checks the handshake's
/// signatures with it.
#[derive(Debug)]
struct PinnedLeaf {
    leaf: CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The socket under a TLS handshake: hands rustls whole records only, so that
/// when the handshake completes rustls holds no part of a later record. An
/// HTTP/2 connection then opens its records itself (its keys are taken out of
/// rustls, [`record::take_both`]) starting with what is still buffered here
/// ([`WholeRecords::into_parts`]); so does a lean HTTP/1.1 stream after its
/// connect's head ([`lean::LeanTls`]). Reads from the socket are greedy (one
/// `read` may bring several records) and rustls is given one record at a
/// time; what it was given is dropped before the next read, and the buffer is
/// freed whenever it empties.
pub struct WholeRecords<T> {
    io: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed to rustls.
    given: usize,
    /// Where the record being handed to rustls ends in `buf`.
    record_end: usize,
    /// After the first request head of an HTTP/1.1 connection that is not a
    /// lean stream: reads go straight through once `buf` is used up.
    through: bool,
}

impl<T> WholeRecords<T> {
    pub fn new(io: T) -> Self {
        WholeRecords {
            io,
            buf: Vec::new(),
            given: 0,
            record_end: 0,
            through: false,
        }
    }

    /// Stop holding back partial records (the connection stays with rustls).
    pub fn pass_through(&mut self) {
        self.through = true;
    }

    /// The bytes read from the socket and not handed to rustls, and the socket.
    pub fn into_parts(self) -> (T, Vec<u8>) {
        let mut buf = self.buf;
        buf.drain(..self.given);
        (self.io, buf)
    }

    /// What rustls may have next: the rest of the record it is being given, or
    /// the next record once it is whole (a header that cannot be a record is
    /// passed on for rustls to refuse). One record at a time: rustls stops
    /// reading when a record gives it plaintext, and must not hold part of the
    /// next one then.
    fn whole(&mut self) -> usize {
        if self.given < self.record_end {
            return self.record_end - self.given;
        }
        match record::RecordRx::record_len(&self.buf[self.given..]) {
            Some(Ok(len)) if self.given + len <= self.buf.len() => {
                self.record_end = self.given + len;
                len
            }
            Some(Err(_)) => self.buf.len() - self.given,
            _ => 0,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WholeRecords<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            let ready = if this.through {
                this.buf.len() - this.given
            } else {
                this.whole()
            };
            if ready > 0 {
                let n = ready.min(out.remaining());
                out.put_slice(&this.buf[this.given..this.given + n]);
                this.given += n;
                if this.given == this.buf.len() {
                    this.buf = Vec::new();
                    this.given = 0;
                    this.record_end = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.through && this.buf.is_empty() {
                return std::pin::Pin::new(&mut this.io).poll_read(cx, out);
            }
            // What rustls has been given goes, so that a client trickling
            // small records does not make the buffer keep its whole handshake.
            if this.given > 0 {
                this.buf.drain(..this.given);
                this.record_end = this.record_end.saturating_sub(this.given);
                this.given = 0;
            }
            // Room for one more full record after what is buffered, read into
            // without zeroing it first.
            let have = this.buf.len();
            this.buf.reserve(record::MAX_RECORD);
            let mut rb = tokio::io::ReadBuf::uninit(this.buf.spare_capacity_mut());
            let ptr = rb.filled().as_ptr();
            let polled = std::pin::Pin::new(&mut this.io).poll_read(cx, &mut rb);
            // The reader must have filled this buffer, not swapped in another
            // (as tokio-util's `poll_read_buf` checks).
            assert_eq!(ptr, rb.filled().as_ptr(), "the read buffer was swapped");
            let n = rb.filled().len();
            // SAFETY: the first `n` bytes of the spare capacity were written by
            // the read (ReadBuf tracks what it filled, in the buffer checked
            // above).
            unsafe { this.buf.set_len(have + n) };
            match polled {
                Poll::Ready(Ok(())) if n == 0 => {
                    // The peer is done: hand over what there is (rustls reports a
                    // truncated record) and then the end.
                    let rest = this.buf.len() - this.given;
                    if rest == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    this.through = true;
                }
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if this.buf.is_empty() {
                        this.buf = Vec::new();
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WholeRecords<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use tokio::io::{AsyncRead, ReadBuf};

    use super::*;

    /// A socket that gives what it holds `chunk` bytes per read, then nothing
    /// yet (`Pending`).
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.at == self.data.len() {
                return Poll::Pending;
            }
            // One byte first: every later read ends a byte into a record.
            let chunk = if self.at == 0 { 1 } else { self.chunk };
            let n = chunk.min(self.data.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// A client trickling 1-byte handshake records, a partial record always
    /// at the end of what it sent: what rustls was given is not kept.
    #[test]
    fn whole_records_keeps_only_what_rustls_has_not_had() {
        let mut data = Vec::new();
        for i in 0..20_000u32 {
            data.extend_from_slice(&[0x16, 3, 1, 0, 1, i as u8]);
        }
        data.extend_from_slice(&[0x16, 3, 3, 0x40]);
        // Reads end mid-record: each read brings a record's tail and the next
        // one's head, so the buffer is never used up.
        let mut w = WholeRecords::new(Trickle {
            data,
            at: 0,
            chunk: 6,
        });
        let mut cx = Context::from_waker(Waker::noop());
        let mut given = Vec::new();
        let mut most = 0;
        loop {
            let mut storage = [0u8; 64];
            let mut out = ReadBuf::new(&mut storage);
            match Pin::new(&mut w).poll_read(&mut cx, &mut out) {
                Poll::Ready(Ok(())) => given.extend_from_slice(out.filled()),
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => break,
            }
            most = most.max(w.buf.len());
        }
        assert_eq!(given.len(), 20_000 * 6, "every whole record given");
        assert!(most < 64, "the buffer held {most} bytes at most");
        let (_, rest) = w.into_parts();
        assert_eq!(rest, [0x16, 3, 3, 0x40]);
    }
}
