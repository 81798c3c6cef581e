//! Who may subscribe and who may publish.
//!
//! * **Subscribers** (on when `--jwt-secret`, `--jwt-public-key` or
//!   `--jwt-jwks-url` is set): a JWT, HS256 or RS256 (only the configured one), or
//!   signed by the JWKS key its `kid` names, with that key's algorithm (`alg:
//!   none` and any other algorithm are refused; see [`crate::jwks`]), from `Authorization: Bearer` or the `token` query parameter
//!   (EventSource cannot set headers). `exp` is required and checked with
//!   `--jwt-leeway`; `sub` must equal `userId`; `aud` and `iss` must name one of
//!   `--jwt-audience` and `--jwt-issuer` when those are set; an optional `topics`
//!   claim (array of strings) is the set of topics the stream may subscribe to.
//! * **Publishers** (on when a publisher token or a JWT key is set): a static token
//!   from `--publisher-token`, compared in constant time, or a JWT signed with the
//!   configured key carrying `"publish": true`. Needed for publish, disconnect and
//!   stats.
//!
//! A refusal never says why a signature or a claim failed (`401` "invalid
//! token"); tokens are never logged and never reach a metric label.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::error::ApiError;

/// The claims herald reads.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<bool>,
}

/// The configured verifiers. See the module doc.
pub struct Auth {
    jwt: Option<(DecodingKey, Validation)>,
    /// Keys from `--jwt-jwks-url`, checked with `jwks_rules` (its algorithm
    /// set per key).
    jwks: Option<std::sync::Arc<crate::jwks::Jwks>>,
    /// The rules for each algorithm a JWKS key may have, made once.
    jwks_rules: Vec<Validation>,
    publisher_tokens: Vec<Box<[u8]>>,
}

fn unauthorized(code: &'static str, msg: &'static str) -> ApiError {
    ApiError::new(401, code, msg)
}

impl Auth {
    pub fn from_config(cfg: &Config) -> Result<Auth, String> {
        let key = match (&cfg.jwt_secret, &cfg.jwt_public_key) {
            (Some(secret), _) => Some((
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )),
            (None, Some(pk)) => {
                let pem = if pk.trim_start().starts_with("-----BEGIN") {
                    pk.clone().into_bytes()
                } else {
                    std::fs::read(pk).map_err(|e| format!("--jwt-public-key {pk:?}: {e}"))?
                };
                let key = DecodingKey::from_rsa_pem(&pem)
                    .map_err(|e| format!("--jwt-public-key: not an RSA public key in PEM: {e}"))?;
                Some((key, Algorithm::RS256))
            }
            (None, None) => None,
        };
        let rules = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = cfg.jwt_leeway.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            // `aud` and `iss` are checked when herald is told what they must
            // be (a token minted for another API must not open a stream here).
            let mut required = vec!["exp"];
            v.validate_aud = !cfg.jwt_audience.is_empty();
            if v.validate_aud {
                v.set_audience(&cfg.jwt_audience);
                required.push("aud");
            }
            if !cfg.jwt_issuer.is_empty() {
                v.set_issuer(&cfg.jwt_issuer);
                required.push("iss");
            }
            v.set_required_spec_claims(&required);
            v
        };
        let jwt = key.map(|(key, alg)| (key, rules(alg)));
        let jwks = match &cfg.jwt_jwks_url {
            Some(url) => Some(crate::jwks::Jwks::start(url, cfg.jwt_jwks_refresh)?),
            None => None,
        };
        Ok(Auth {
            jwt,
            jwks,
            jwks_rules: [
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
                Algorithm::ES256,
                Algorithm::ES384,
            ]
            .into_iter()
            .map(rules)
            .collect(),
            publisher_tokens: cfg
                .publisher_tokens
                .iter()
                .map(|t| t.as_bytes().into())
                .collect(),
        })
    }

    /// Whether connects need a token.
    pub fn subscriber_auth(&self) -> bool {
        self.jwt.is_some() || self.jwks.is_some()
    }

    /// Whether publish, disconnect and stats need a publisher credential.
    pub fn publisher_auth(&self) -> bool {
        self.subscriber_auth() || !self.publisher_tokens.is_empty()
    }

    /// Before a connect is checked: when keys come from a JWKS and the token
    /// names a key id the set lacks (the provider rotated its keys), fetch the
    /// set again (bounded; at most once a second) so the check sees it.
    pub async fn prepare(&self, token: Option<&str>) {
        let (Some(jwks), Some(token)) = (&self.jwks, token) else {
            return;
        };
        if let Ok(header) = jsonwebtoken::decode_header(token) {
            jwks.refresh_for(header.kid.as_deref().unwrap_or("")).await;
        }
    }

    fn claims(&self, token: &str) -> Option<Claims> {
        if let Some(jwks) = &self.jwks {
            let header = jsonwebtoken::decode_header(token).ok()?;
            let kid = header.kid.as_deref().unwrap_or("");
            let Some(key) = jwks.key(kid) else {
                // A key the set lacks: fetched for the next try.
                jwks.ask(kid);
                return None;
            };
            let (key, alg) = &*key;
            let rules = self.jwks_rules.iter().find(|r| r.algorithms == [*alg])?;
            return jsonwebtoken::decode::<Claims>(token, key, rules)
                .ok()
                .map(|d| d.claims);
        }
        let (key, validation) = self.jwt.as_ref()?;
        jsonwebtoken::decode::<Claims>(token, key, validation)
            .ok()
            .map(|d| d.claims)
    }

    /// Check a connect: `token` from the `Authorization` header or the `token`
    /// query parameter, for `user` subscribing to `topics`.
    pub fn check_subscriber(
        &self,
        token: Option<&str>,
        user: &str,
        topics: &[Box<str>],
    ) -> Result<(), ApiError> {
        if !self.subscriber_auth() {
            return Ok(());
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(unauthorized(
                "missing_token",
                "a token is required: Authorization: Bearer <jwt>, or ?token=<jwt>",
            ));
        };
        let claims = self
            .claims(token)
            .ok_or_else(|| unauthorized("invalid_token", "the token is not valid"))?;
        if claims.sub.as_deref() != Some(user) {
            // Same answer as a bad signature: a stolen token learns nothing here.
            return Err(unauthorized("invalid_token", "the token is not valid"));
        }
        if let Some(allowed) = &claims.topics {
            if let Some(t) = topics.iter().find(|t| !allowed.iter().any(|a| a == &***t)) {
                return Err(ApiError::new(
                    403,
                    "topic_forbidden",
                    format!("the token does not allow topic {t}"),
                ));
            }
        }
        Ok(())
    }

    /// Check a publisher request's `Authorization` header value.
    pub fn check_publisher(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        if !self.publisher_auth() {
            return Ok(());
        }
        let Some(token) = authorization.and_then(bearer) else {
            return Err(unauthorized(
                "missing_credential",
                "a publisher credential is required: Authorization: Bearer <token>",
            ));
        };
        // Every configured token is compared, in constant time, whatever matches.
        let mut ok = subtle::Choice::from(0);
        for t in &self.publisher_tokens {
            ok |= t.as_ref().ct_eq(token.as_bytes());
        }
        if bool::from(ok) {
            return Ok(());
        }
        if self.claims(token).is_some_and(|c| c.publish == Some(true)) {
            return Ok(());
        }
        Err(unauthorized(
            "invalid_credential",
            "the publisher credential is not valid",
        ))
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth(extra: &[&str]) -> Auth {
        let mut args = vec!["herald", "--jwt-secret", SECRET];
        args.extend_from_slice(extra);
        Auth::from_config(&Config::parse_from(args)).unwrap()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn exp(delta: i64) -> i64 {
        crate::clock::unix_ms() as i64 / 1000 + delta
    }

    #[test]
    fn audience_and_issuer_are_checked_when_set() {
        let check = |a: &Auth, claims: serde_json::Value| {
            a.check_subscriber(Some(&token(claims)), "u", &[]).is_ok()
        };
        // Unset: a token for any audience opens a stream (as before).
        let open = auth(&[]);
        assert!(check(
            &open,
            json!({"sub": "u", "exp": exp(60), "aud": "my-api"})
        ));
        let strict = auth(&[
            "--jwt-audience",
            "herald,events",
            "--jwt-issuer",
            "https://idp.example/",
        ]);
        let good =
            json!({"sub": "u", "exp": exp(60), "aud": "events", "iss": "https://idp.example/"});
        assert!(check(&strict, good));
        for bad in [
            json!({"sub": "u", "exp": exp(60), "aud": "my-api", "iss": "https://idp.example/"}),
            json!({"sub": "u", "exp": exp(60), "iss": "https://idp.example/"}),
            json!({"sub": "u", "exp": exp(60), "aud": "herald", "iss": "https://other/"}),
            json!({"sub": "u", "exp": exp(60), "aud": "herald"}),
        ] {
            assert!(!check(&strict, bad.clone()), "{bad}");
        }
        // An array `aud` with one of ours is enough.
        assert!(check(
            &strict,
            json!({"sub": "u", "exp": exp(60), "aud": ["x", "herald"], "iss": "https://idp.example/"})
        ));
    }

    #[test]
    fn subscriber_token_rules() {
        let a = auth(&[]);
        let t = token(json!({"sub": "alice", "exp": exp(60)}));
        assert!(a.check_subscriber(Some(&t), "alice", &[]).is_ok());
        assert_eq!(
            a.check_subscriber(Some(&t), "bob", &[]).unwrap_err().status,
            401
        );
        assert_eq!(
            a.check_subscriber(None, "alice", &[]).unwrap_err().status,
            401
        );
        let old = token(json!({"sub": "alice", "exp": exp(-60)}));
        assert_eq!(
            a.check_subscriber(Some(&old), "alice", &[])
                .unwrap_err()
                .status,
            401
        );
        let no_exp = token(json!({"sub": "alice"}));
        assert_eq!(
            a.check_subscriber(Some(&no_exp), "alice", &[])
                .unwrap_err()
                .status,
            401
        );
        let scoped = token(json!({"sub": "alice", "exp": exp(60), "topics": ["news"]}));
        assert!(a
            .check_subscriber(Some(&scoped), "alice", &["news".into()])
            .is_ok());
        assert_eq!(
            a.check_subscriber(Some(&scoped), "alice", &["news".into(), "admin".into()])
                .unwrap_err()
                .status,
            403
        );
    }

    #[test]
    fn publisher_credentials() {
        let a = auth(&["--publisher-token", "static-token-0123456789"]);
        assert!(a
            .check_publisher(Some("Bearer static-token-0123456789"))
            .is_ok());
        assert!(a
            .check_publisher(Some("bearer  static-token-0123456789 "))
            .is_ok());
        assert!(a
            .check_publisher(Some("Bearer static-token-012345678"))
            .is_err());
        assert!(a.check_publisher(None).is_err());
        let jwt = token(json!({"publish": true, "exp": exp(60)}));
        assert!(a.check_publisher(Some(&format!("Bearer {jwt}"))).is_ok());
        let not_pub = token(json!({"sub": "alice", "exp": exp(60)}));
        assert!(a
            .check_publisher(Some(&format!("Bearer {not_pub}")))
            .is_err());
    }

    #[test]
    fn alg_none_is_refused() {
        let a = auth(&[]);
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":<far>} . (no signature)
        use base64_url as b64;
        let head = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(format!(r#"{{"sub":"alice","exp":{}}}"#, exp(600)).as_bytes());
        let t = format!("{head}.{body}.");
        assert_eq!(
            a.check_subscriber(Some(&t), "alice", &[])
                .unwrap_err()
                .status,
            401
        );
    }

    /// Unpadded base64url, enough for a test token.
    fn base64_url(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |acc, &b| acc << 8 | b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}
