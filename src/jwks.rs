//! JWT keys from a JWKS URL (`--jwt-jwks-url`), as identity providers publish
//! and rotate them (Auth0, Keycloak, Cognito, Entra): fetched over HTTPS with
//! rustls (system roots; `SSL_CERT_FILE` names others) on a thread of its own,
//! at start, every `--jwt-jwks-refresh`, and when a token names a key id
//! (`kid`) not in the set (at most once a second). A failed fetch keeps the
//! keys already held; it is logged once per change and counted
//! (`herald_jwks_fetches_total{result}`). RSA (RS256/384/512, PS*) and EC
//! (ES256/384) keys; a key's algorithm is its `alg`, or what its type implies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::metrics as m;

/// The longest a JWKS document may be.
const MAX_BYTES: usize = 1 << 20;
/// One fetch: connect, handshake, answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Fetches for unknown key ids come at most this often.
const MIN_GAP: Duration = Duration::from_secs(1);

type Keys = HashMap<String, Arc<(DecodingKey, Algorithm)>>;

/// See the module doc.
pub struct Jwks {
    url: url::Url,
    keys: RwLock<Arc<Keys>>,
    /// Bumped after every fetch, good or not (waiters for a refresh).
    fetched: watch::Sender<u64>,
    wake: Notify,
    last_asked: Mutex<Option<Instant>>,
}

impl Jwks {
    /// Check `url` (https only), start the fetching thread and wait (bounded)
    /// for the first fetch; a failed first fetch leaves the set empty: connects
    /// get 401 until one succeeds.
    pub fn start(url: &str, refresh: Duration) -> Result<Arc<Jwks>, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("--jwt-jwks-url {url:?}: {e}"))?;
        if parsed.scheme() != "https" || parsed.host_str().is_none() {
            return Err(format!(
                "--jwt-jwks-url {url:?}: an https:// URL (keys are fetched over TLS)"
            ));
        }
        let jwks = Arc::new(Jwks {
            url: parsed,
            keys: RwLock::new(Arc::new(HashMap::new())),
            fetched: watch::channel(0).0,
            wake: Notify::new(),
            last_asked: Mutex::new(None),
        });
        let tls = client_tls()?;
        let mut first = jwks.fetched.subscribe();
        let j = jwks.clone();
        std::thread::Builder::new()
            .name("herald-jwks".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "cannot build the JWKS runtime");
                        return;
                    }
                };
                rt.block_on(j.run(tls, refresh));
            })
            .map_err(|e| format!("cannot start the JWKS thread: {e}"))?;
        // The first fetch, bounded: a slow identity provider delays the start
        // by at most this much.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let _ =
            rt.block_on(async { tokio::time::timeout(FETCH_TIMEOUT * 2, first.changed()).await });
        Ok(jwks)
    }

    /// The key named `kid` (`""`: a token without `kid`, when the set has one
    /// key without an id, or only one key).
    pub fn key(&self, kid: &str) -> Option<Arc<(DecodingKey, Algorithm)>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = keys.get(kid) {
            return Some(k.clone());
        }
        (kid.is_empty() && keys.len() == 1)
            .then(|| keys.values().next().cloned())
            .flatten()
    }

    /// A token named `kid`, which the set lacks, where nothing can wait for a
    /// fetch (a publish's credential, checked from its head): ask for one
    /// (at most once a second), so that the publisher's retry finds the key.
    pub fn ask(&self, kid: &str) {
        if self.key(kid).is_some() {
            return;
        }
        let mut last = self.last_asked.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < MIN_GAP) {
            return;
        }
        *last = Some(Instant::now());
        self.wake.notify_one();
    }

    /// Make sure the set was fetched since a token named `kid` it lacks: ask
    /// the thread for a fetch (unless one was asked less than a second ago) and
    /// wait for it, bounded.
    pub async fn refresh_for(&self, kid: &str) {
        if self.key(kid).is_some() {
            return;
        }
        {
            let mut last = self.last_asked.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < MIN_GAP) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut done = self.fetched.subscribe();
        done.mark_unchanged();
        self.wake.notify_one();
        let _ = tokio::time::timeout(FETCH_TIMEOUT * 2, done.changed()).await;
    }

    async fn run(self: Arc<Self>, tls: tokio_rustls::TlsConnector, refresh: Duration) {
        let mut failing = false;
        loop {
            match fetch(&self.url, &tls).await {
                Ok(set) => {
                    let keys = keys_of(&set);
                    if failing || keys.len() != self.keys.read().map_or(0, |k| k.len()) {
                        info!(keys = keys.len(), url = %self.url, "JWKS fetched");
                    }
                    failing = false;
                    m::jwks_fetched(true, keys.len());
                    *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                }
                Err(e) => {
                    if !failing {
                        warn!(url = %self.url, error = %e, "JWKS fetch failed: the keys already held stay");
                    }
                    failing = true;
                    m::jwks_fetched(false, self.keys.read().map_or(0, |k| k.len()));
                }
            }
            self.fetched.send_modify(|n| *n += 1);
            let _ = tokio::time::timeout(refresh, self.wake.notified()).await;
        }
    }
}

/// rustls as herald's own TLS clients use it, with the system's roots.
fn client_tls() -> Result<tokio_rustls::TlsConnector, String> {
    let roots = crate::tls::client_roots(None, "SSL_CERT_FILE")?;
    let config = crate::tls::client_builder(roots)?.with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One `GET` of the JWKS document over HTTPS (HTTP/1.1), bounded in time and
/// size.
async fn fetch(url: &url::Url, tls: &tokio_rustls::TlsConnector) -> Result<JwkSet, String> {
    let host = url.host_str().ok_or("no host")?.to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("server name: {e}"))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, host.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        serde_json::from_slice::<JwkSet>(&body).map_err(|e| format!("not a JWKS: {e}"))
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
}

/// The usable keys of a set, by key id (`""` for one without).
fn keys_of(set: &JwkSet) -> Keys {
    let mut out = Keys::new();
    for jwk in &set.keys {
        let alg = match (jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(a), _) => match a.to_string().parse::<Algorithm>() {
                Ok(a) => a,
                Err(_) => continue,
            },
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(ec)) => match ec.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => continue,
            },
            _ => continue,
        };
        // Symmetric keys have no place in a public key set.
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            out.insert(
                jwk.common.key_id.clone().unwrap_or_default(),
                Arc::new((key, alg)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_gives_its_public_keys_by_id() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec1",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "RSA", "kid": "rsa1", "alg": "RS256", "e": "AQAB",
             "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"},
            {"kty": "oct", "kid": "hs", "alg": "HS256", "k": "c2VjcmV0"}
        ]}))
        .unwrap();
        let keys = keys_of(&set);
        assert_eq!(keys.get("ec1").map(|k| k.1), Some(Algorithm::ES256));
        assert_eq!(keys.get("rsa1").map(|k| k.1), Some(Algorithm::RS256));
        assert!(!keys.contains_key("hs"), "no symmetric key from a JWKS");
    }

    #[test]
    fn only_https_urls() {
        assert!(Jwks::start("http://idp.example/jwks", Duration::from_secs(60)).is_err());
        assert!(Jwks::start("not a url", Duration::from_secs(60)).is_err());
    }
}
