//! `--jwt-jwks-url`: a JWKS served by a local HTTPS server of the test's own
//! (its CA given to herald through `SSL_CERT_FILE`), with EC P-256 keys made
//! for the test. A token signed by the served key opens a stream; after the
//! server rotates to a new key, a token naming it opens one too (herald fetches
//! the set again on the unknown `kid`); while the server fails, the keys already
//! held keep working, the failure is counted, and an unknown key is refused;
//! the set is also fetched again periodically.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use support::certs::TestCa;
use support::{check, Herald, SseClient, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A signing key and its public JWK.
struct Key {
    kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn key(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate().unwrap();
    let raw = pair.public_key_raw();
    assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Key {
        kid: kid.into(),
        encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }),
    }
}

/// A JWT signed by `k` (its `kid` in the header) with `claims` and an `exp`
/// five minutes ahead.
fn signed(k: &Key, mut claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(k.kid.clone());
    claims["exp"] = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .checked_add(300)
        .unwrap()
        .into();
    encode(&header, &claims, &k.encoding).unwrap()
}

/// A subscriber's token for `user`.
fn token(k: &Key, user: &str) -> String {
    signed(k, serde_json::json!({ "sub": user }))
}

/// The test's JWKS server: what it serves, whether it fails, how often asked.
#[derive(Default)]
struct Served {
    body: Mutex<String>,
    failing: AtomicBool,
    asked: AtomicUsize,
}

impl Served {
    fn set(&self, keys: &[&Key]) {
        let keys: Vec<_> = keys.iter().map(|k| k.jwk.clone()).collect();
        *self.body.lock().unwrap() = serde_json::json!({ "keys": keys }).to_string();
    }
}

/// Serve `served` over HTTPS on a free loopback port; returns the port.
async fn serve(ca: &TestCa, served: Arc<Served>) -> u16 {
    let leaf = ca.issue("jwks-server", &["127.0.0.1"], 2090, false);
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&leaf.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    use rustls::pki_types::pem::PemObject;
    let keyder = rustls::pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, keyder)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, served) = (acceptor.clone(), served.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                served.asked.fetch_add(1, Ordering::SeqCst);
                let answer = if served.failing.load(Ordering::SeqCst) {
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string()
                } else {
                    let body = served.body.lock().unwrap().clone();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

async fn connect_status(h: &Herald, user: &str, token: &str) -> u16 {
    let path = format!("/api/user/sse/connect?userId={user}&token={token}");
    SseClient::connect(h.addr, &path, &[]).await.status
}

// Multi-threaded: the JWKS server answers while the test waits on herald.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_a_jwks_and_follow_its_rotation() {
    let ca = TestCa::new("jwks");
    let served = Arc::new(Served::default());
    let (a, b, c) = (key("a"), key("b"), key("c"));
    served.set(&[&a]);
    let port = serve(&ca, served.clone()).await;
    let url = format!("https://127.0.0.1:{port}/.well-known/jwks.json");
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("jwks.stderr");
    let file = std::fs::File::create(&log).unwrap();
    let h = Herald::from_started_child(
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", "127.0.0.1:0", "--log", "info"])
            .args(["--jwt-jwks-url", &url, "--jwt-jwks-refresh", "2s"])
            .env("SSL_CERT_FILE", &ca.pem)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::from(file))
            .spawn()
            .unwrap(),
    );
    assert_eq!(connect_status(&h, "kim", &token(&a, "kim")).await, 200);
    // Another user's token, or an unknown key: refused.
    assert_eq!(connect_status(&h, "lee", &token(&a, "kim")).await, 401);

    // The provider rotates: only b is served. A token naming b works at once.
    served.set(&[&b]);
    assert_eq!(connect_status(&h, "kim", &token(&b, "kim")).await, 200);

    // A publisher's JWT naming a key the set lacks: refused once, and that
    // asks for a fetch, so the publisher's retry is taken.
    let d = key("d");
    served.set(&[&b, &d]);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the 1 s gap between fetches
    let publisher = |k: &Key| signed(k, serde_json::json!({ "publish": true }));
    let publish = |jwt: String| {
        let addr = h.addr;
        async move {
            support::request(
                addr,
                "POST",
                "/api/broadcast",
                &[("authorization", &format!("Bearer {jwt}"))],
                Some(br#"{"data":"x","target":"all"}"#.as_slice()),
            )
            .await
            .status
        }
    };
    assert_eq!(publish(publisher(&d)).await, 401);
    let until = Instant::now() + WAIT;
    while publish(publisher(&d)).await != 202 {
        assert!(
            Instant::now() < until,
            "the publisher's retry is still refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The provider fails: b, already held, still works; c (unknown) does not.
    served.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the 1 s gap between fetches on unknown keys
    assert_eq!(connect_status(&h, "kim", &token(&c, "kim")).await, 401);
    assert_eq!(connect_status(&h, "kim", &token(&b, "kim")).await, 200);
    check::wait_metric(&h, "herald_jwks_fetches_total{result=\"error\"}", |v| {
        v >= 1.0
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("JWKS fetch failed"), "{text}");

    // Periodic refresh: once the server answers again, the set is fetched
    // without any token asking for it.
    served.failing.store(false, Ordering::SeqCst);
    served.set(&[&b, &c]);
    let asked = served.asked.load(Ordering::SeqCst);
    let until = Instant::now() + WAIT;
    while served.asked.load(Ordering::SeqCst) < asked + 1 {
        assert!(Instant::now() < until, "no periodic fetch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check::wait_metric(&h, "herald_jwks_keys", |v| v == 2.0).await;
    assert_eq!(connect_status(&h, "kim", &token(&c, "kim")).await, 200);
}

#[test]
fn a_jwks_url_must_be_https_and_alone() {
    for args in [
        vec!["--jwt-jwks-url", "http://127.0.0.1:1/jwks"],
        vec![
            "--jwt-jwks-url",
            "https://127.0.0.1:1/jwks",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
    }
}
