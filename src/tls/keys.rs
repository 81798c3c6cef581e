//! TLS 1.3 traffic secrets: captured from rustls while it makes the handshake,
//! and advanced by herald when a key is updated (RFC 8446 §7.1-7.3).
//!
//! After the handshake herald takes the session's keys out of rustls
//! ([`super::record`]). A key update needs the *traffic secret* behind a key,
//! which `dangerous_extract_secrets` does not give: rustls logs the two
//! application traffic secrets (`CLIENT_TRAFFIC_SECRET_0`,
//! `SERVER_TRAFFIC_SECRET_0`) through the configuration's [`rustls::KeyLog`]
//! when it derives them, and [`CaptureLog`] is that key log. It writes into a
//! thread-local slot that [`Capture`] arms around each poll of one
//! connection's handshake future: a shard runs on one thread and polls one
//! future at a time, so what lands in the slot during a poll belongs to the
//! connection being polled. Nothing is written anywhere else, and outside an
//! armed poll the secrets are dropped.
//!
//! From a secret herald derives the record key and IV (labels "key", "iv")
//! and the next generation's secret ("traffic upd") with HKDF-Expand-Label
//! over the suite's hash (SHA-256 for AES-128-GCM and ChaCha20-Poly1305,
//! SHA-384 for AES-256-GCM), with ring's HKDF. At the hand-off the key and IV
//! derived from the captured secret are compared with what rustls extracted,
//! so every connection checks the derivation against rustls
//! ([`super::record::take_both`]).
//!
//! Why not rustls' `KernelConnection` (`UnbufferedServerConnection::
//! dangerous_into_kernel_connection`), which updates secrets itself: measured
//! with `size_of`, a `KernelConnection<ServerConnectionData>` is 560 B inline
//! plus a boxed key schedule of ~224 B per connection, half again what a lean
//! TLS stream costs in all, and it needs the handshake driven through the
//! unbuffered API instead of tokio-rustls. Two secrets of at most 48 B do the
//! same here; the unit test `derivation_matches_rustls_kernel_connection`
//! checks the derivation against `KernelConnection` over several generations
//! for the three TLS 1.3 suites.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ring::{aead, hkdf};
use rustls::ConnectionTrafficSecrets;

/// The AEAD of a connection's cipher suite (and, for TLS 1.3, its hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Aead {
    pub(crate) fn of(secrets: &ConnectionTrafficSecrets) -> Option<Aead> {
        match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { .. } => Some(Aead::Aes128Gcm),
            ConnectionTrafficSecrets::Aes256Gcm { .. } => Some(Aead::Aes256Gcm),
            ConnectionTrafficSecrets::Chacha20Poly1305 { .. } => Some(Aead::Chacha20Poly1305),
            _ => None,
        }
    }

    pub(crate) fn ring(self) -> &'static aead::Algorithm {
        match self {
            Aead::Aes128Gcm => &aead::AES_128_GCM,
            Aead::Aes256Gcm => &aead::AES_256_GCM,
            Aead::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    pub(crate) fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            Aead::Aes256Gcm | Aead::Chacha20Poly1305 => 32,
        }
    }

    /// The TLS 1.3 suite's hash: TLS_AES_256_GCM_SHA384 is the one on SHA-384.
    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Aead::Aes256Gcm => hkdf::HKDF_SHA384,
            Aead::Aes128Gcm | Aead::Chacha20Poly1305 => hkdf::HKDF_SHA256,
        }
    }

    /// The length of a TLS 1.3 traffic secret (the hash's output).
    pub(crate) fn secret_len(self) -> usize {
        match self {
            Aead::Aes256Gcm => 48,
            Aead::Aes128Gcm | Aead::Chacha20Poly1305 => 32,
        }
    }
}

/// Up to 48 bytes of key material (a traffic secret, or a TLS 1.2 key and
/// IV); zeroed when dropped.
#[derive(Clone)]
pub(crate) struct Material(pub(crate) [u8; 48]);

impl Material {
    pub(crate) const EMPTY: Material = Material([0; 48]);

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Material> {
        let mut m = Material::EMPTY;
        m.0.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(m)
    }
}

impl Drop for Material {
    fn drop(&mut self) {
        for b in &mut self.0 {
            // SAFETY: a valid, aligned, exclusive reference; volatile so that
            // the wipe is not optimised away as a dead store.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 §7.1).
fn expand_label(aead: Aead, secret: &[u8], label: &[u8], out: &mut [u8]) {
    let prk = hkdf::Prk::new_less_safe(aead.hkdf(), secret);
    let len = (out.len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output of at most one hash length");
}

/// A TLS 1.3 traffic secret of `aead`'s suite.
pub(crate) struct TrafficSecret<'a> {
    pub(crate) aead: Aead,
    pub(crate) secret: &'a Material,
}

impl TrafficSecret<'_> {
    fn bytes(&self) -> &[u8] {
        &self.secret.0[..self.aead.secret_len()]
    }

    /// The record key and IV of this secret (RFC 8446 §7.3); the key is
    /// written to the front of `key`.
    pub(crate) fn key_iv(&self, key: &mut Material) -> [u8; 12] {
        let n = self.aead.key_len();
        expand_label(self.aead, self.bytes(), b"key", &mut key.0[..n]);
        let mut iv = [0u8; 12];
        expand_label(self.aead, self.bytes(), b"iv", &mut iv);
        iv
    }

    /// The next generation's secret (RFC 8446 §7.2).
    pub(crate) fn next(&self) -> Material {
        let mut next = Material::EMPTY;
        expand_label(
            self.aead,
            self.bytes(),
            b"traffic upd",
            &mut next.0[..self.aead.secret_len()],
        );
        next
    }
}

const CLIENT_LABEL: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_LABEL: &str = "SERVER_TRAFFIC_SECRET_0";

/// The two application traffic secrets (generation 0) of one TLS 1.3
/// handshake, once rustls has derived them; nothing for TLS 1.2.
#[derive(Default)]
pub struct Captured(Option<Box<Pair>>);

#[derive(Default)]
struct Pair {
    client: Option<(Material, u8)>,
    server: Option<(Material, u8)>,
}

impl Captured {
    /// The client's (the receiving) secret and its length.
    pub(crate) fn client(&self) -> Option<(&Material, usize)> {
        let (m, len) = self.0.as_ref()?.client.as_ref()?;
        Some((m, usize::from(*len)))
    }

    /// The server's (the sending) secret and its length.
    pub(crate) fn server(&self) -> Option<(&Material, usize)> {
        let (m, len) = self.0.as_ref()?.server.as_ref()?;
        Some((m, usize::from(*len)))
    }
}

thread_local! {
    static SLOT: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// The key log of herald's TLS configuration: the two application traffic
/// secrets go to the connection whose handshake is being polled on this
/// thread ([`Capture`]), nothing else is logged.
#[derive(Debug)]
pub struct CaptureLog;

impl rustls::KeyLog for CaptureLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let Some(material) = Material::from_slice(secret) else {
            return;
        };
        let entry = Some((material, secret.len() as u8));
        SLOT.with(|slot| {
            if let Some(captured) = slot.borrow_mut().as_mut() {
                let pair = captured.0.get_or_insert_with(Default::default);
                match label {
                    CLIENT_LABEL => pair.client = entry,
                    SERVER_LABEL => pair.server = entry,
                    _ => {}
                }
            }
        });
    }

    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_LABEL || label == SERVER_LABEL
    }
}

/// Run `f` (which drives one connection's handshake) with `got` as this
/// thread's capture slot: what rustls logs meanwhile is added to `got`.
pub fn capturing<R>(got: &mut Captured, f: impl FnOnce() -> R) -> R {
    struct Disarm<'a>(&'a mut Captured, Option<Captured>);
    impl Drop for Disarm<'_> {
        fn drop(&mut self) {
            let prev = self.1.take();
            *self.0 = SLOT.with(|s| s.replace(prev)).unwrap_or_default();
        }
    }
    let prev = SLOT.with(|s| s.replace(Some(std::mem::take(got))));
    let _disarm = Disarm(got, prev);
    f()
}

/// A handshake future whose polls capture the connection's traffic secrets;
/// its output comes with them.
pub struct Capture<F> {
    inner: F,
    got: Captured,
}

/// Capture the traffic secrets rustls derives while `handshake` is polled.
pub fn capture<F: Future + Unpin>(handshake: F) -> Capture<F> {
    Capture {
        inner: handshake,
        got: Captured::default(),
    }
}

impl<F: Future + Unpin> Future for Capture<F> {
    type Output = (F::Output, Captured);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        match capturing(&mut this.got, || Pin::new(inner).poll(cx)) {
            Poll::Ready(out) => Poll::Ready((out, std::mem::take(&mut this.got))),
            Poll::Pending => Poll::Pending,
        }
    }
}
