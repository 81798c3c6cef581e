//! Security, over real loopback sockets against the real binary: subscriber JWTs
//! (HS256 and RS256, on the lean connect path and on a keep-alive connection served
//! by hyper), publisher credentials (static tokens and `"publish": true` JWTs), the
//! non-loopback safe default and the flags refused at start, CORS, connection
//! limits, and tokens kept out of logs and metrics.
//!
//! Covered elsewhere, not repeated here:
//! * `431` for request heads over the default 16 KiB: `tests/bad_input.rs`
//!   (`request_headers_over_16_kib_are_431`); only a configured
//!   `--max-header-bytes` is checked below.
//! * `408` / slowloris under `--header-timeout`: `tests/bad_input.rs`
//!   (`incomplete_request_head_is_cut_off_after_the_header_timeout`) and
//!   `tests/stress_bad_clients.rs` (`unfinished_heads_time_out_without_holding_up_anyone`).
//! * `413` over `--max-body 1KiB` (content-length and chunked): `tests/bad_input.rs`
//!   (`publish_over_a_configured_body_limit_is_413`); only its order against the
//!   publisher check is tested below.
//! * `400` for 65 topics and for a 129-byte topic name: `tests/bad_input.rs`
//!   (`connect_with_bad_params_is_400`).
//! * A replacement not counting against `--max-connections-per-user 1`:
//!   `tests/connect.rs` (`replacement_does_not_count_against_the_per_user_limit`).

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::check::{assert_json_error, send_while_reading};
use support::ops::KeepAlive;
use support::{request, Herald, Response, SseClient, WAIT};

const SECRET: &str = "herald-security-test-secret-0123456789";
const OTHER_SECRET: &str = "some-other-secret-0123456789abcdef";
const PUB1: &str = "publisher-token-one-0123456789";
const PUB2: &str = "publisher-token-two-9876543210";
const CONNECT: &str = "/api/user/sse/connect";
const APP: &str = "https://app.example.com";
const APP2: &str = "https://admin.example.org:8443";
const EVIL: &str = "https://evil.example.com";
const PUBLISH_BODY: &str = r#"{"event":"e","data":"x","target":"all"}"#;

// ---------------------------------------------------------------------------
// Tokens

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).expect("sign a token")
}

fn hs256_with(secret: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
    )
}

/// A token signed with [`SECRET`].
fn hs256(claims: &Value) -> String {
    hs256_with(SECRET, claims)
}

fn rs256(private_pem: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("RSA private key");
    sign(Algorithm::RS256, &key, claims)
}

/// Subscriber claims for `user`, valid for 5 minutes.
fn sub(user: &str) -> Value {
    json!({"sub": user, "exp": now() + 300})
}

/// Publisher claims, valid for 5 minutes.
fn publisher() -> Value {
    json!({"publish": true, "exp": now() + 300})
}

/// Unpadded base64url.
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An `alg: none` token: header, claims, empty signature.
fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

/// `a`'s header and signature around `b`'s claims: a signature that does not match.
fn spliced(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    format!("{}.{}.{}", a[0], b[1], a[2])
}

/// An RSA key pair made with the `openssl` CLI (once per test binary), and a
/// second private key that herald does not know.
struct Keys {
    private_pem: String,
    public_path: PathBuf,
    public_pem: String,
    other_private_pem: String,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run the openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("security-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key dir");
        let p = |name: &str| dir.join(name).to_str().expect("utf-8 path").to_string();
        openssl(&["genrsa", "-out", &p("k.pem"), "2048"]);
        openssl(&["rsa", "-in", &p("k.pem"), "-pubout", "-out", &p("pub.pem")]);
        openssl(&["genrsa", "-out", &p("other.pem"), "2048"]);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("read key");
        Keys {
            private_pem: read("k.pem"),
            public_path: dir.join("pub.pem"),
            public_pem: read("pub.pem"),
            other_private_pem: read("other.pem"),
        }
    })
}

// ---------------------------------------------------------------------------
// Requests

/// How a connect reaches herald.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A plain GET on a fresh connection: the lean path (hand-written head).
    Lean,
    /// A GET after another request on the same keep-alive connection: hyper.
    KeepAlive,
}

const BOTH: [Via; 2] = [Via::Lean, Via::KeepAlive];

/// Where a subscriber token travels.
#[derive(Debug, Clone, Copy)]
enum Carry {
    Header,
    Query,
}

async fn open(h: &Herald, via: Via, query: &str, headers: &[(&str, &str)]) -> SseClient {
    let target = format!("{CONNECT}?{query}");
    let c = match via {
        Via::Lean => SseClient::connect(h.addr, &target, headers).await,
        Via::KeepAlive => {
            let mut ka = KeepAlive::connect(h.addr).await;
            let r = ka.send("GET", "/health/live", &[], None).await;
            assert_eq!(r.status, 200, "keep-alive warm-up request");
            // `connection: close` so that a refusal ends the connection (a 200
            // stream is unaffected).
            let mut all = vec![("connection", "close")];
            all.extend_from_slice(headers);
            ka.into_sse(&target, &all).await
        }
    };
    if c.status == 200 {
        // The two paths really differ: the lean head is hand-written (a
        // close-delimited body), hyper's stream is chunked.
        let chunked = c
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        assert_eq!(
            chunked,
            matches!(via, Via::KeepAlive),
            "{via:?}: {:?}",
            c.headers
        );
    }
    c
}

/// A connect for `query` carrying `token` as `carry` says.
async fn open_with(h: &Herald, via: Via, carry: Carry, query: &str, token: &str) -> SseClient {
    match carry {
        Carry::Query => {
            let q = format!(
                "{query}&token={}",
                percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC)
            );
            open(h, via, &q, &[]).await
        }
        Carry::Header => {
            let authz = format!("Bearer {token}");
            open(h, via, query, &[("authorization", &authz)]).await
        }
    }
}

/// Assert a stream opened (200) and its first event is `CONNECTED` for `user`.
async fn assert_streams(c: &mut SseClient, user: &str, what: &str) {
    assert_eq!(c.status, 200, "{what}: status; body {:?}", c.body);
    let ev = c
        .next_event(WAIT)
        .await
        .unwrap_or_else(|| panic!("{what}: no CONNECTED"));
    assert_eq!(ev.event, "CONNECTED", "{what}");
    let data: Value = serde_json::from_str(&ev.data).expect("CONNECTED data is JSON");
    assert_eq!(data["userId"], user, "{what}: {data}");
}

fn header_all(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

/// Words that would tell a caller why a token failed.
const TELLTALE: &[&str] = &[
    "signature",
    "expire",
    "algorithm",
    "alg",
    "base64",
    "claim",
    "exp",
    "nbf",
    "immature",
    "sub",
    "userid",
    "key",
    "decode",
    "json",
    "utf",
];

/// Assert a JSON refusal with `status` and error `code`; a `401` must carry
/// `WWW-Authenticate: Bearer`. Returns the `message`.
fn assert_refused(
    status: u16,
    headers: &[(String, String)],
    body: &str,
    want: u16,
    code: &str,
    what: &str,
) -> String {
    let r = Response {
        status,
        headers: headers.to_vec(),
        body: body.to_string(),
    };
    assert_json_error(&r, want, what);
    let v = r.json();
    assert_eq!(v["error"], code, "{what}: {v}");
    if want == 401 {
        let auth = header_all(headers, "www-authenticate");
        assert!(
            auth.iter()
                .any(|v| v.to_ascii_lowercase().starts_with("bearer")),
            "{what}: a 401 needs WWW-Authenticate: Bearer, got {auth:?}"
        );
    }
    v["message"].as_str().unwrap_or("").to_string()
}

/// Assert a refusal `message` does not tell why a token failed.
fn assert_says_nothing(message: &str, what: &str) {
    let lower = message.to_ascii_lowercase();
    for word in TELLTALE {
        assert!(
            !lower.contains(word),
            "{what}: the refusal says why ({word:?}): {message:?}"
        );
    }
}

fn assert_sse_refused(c: &SseClient, want: u16, code: &str, what: &str) -> String {
    assert_refused(c.status, &c.headers, &c.body, want, code, what)
}

fn assert_resp_refused(r: &Response, want: u16, code: &str, what: &str) -> String {
    assert_refused(r.status, &r.headers, &r.body, want, code, what)
}

/// One request with an optional `Authorization` header value.
async fn call(
    h: &Herald,
    method: &str,
    path: &str,
    authz: Option<&str>,
    body: Option<&str>,
) -> Response {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = authz {
        headers.push(("authorization", a));
    }
    request(h.addr, method, path, &headers, body.map(str::as_bytes)).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The three endpoints that need a publisher credential, each answered.
async fn publisher_calls(h: &Herald, authz: Option<&str>) -> [(&'static str, Response); 3] {
    [
        (
            "POST /api/broadcast",
            call(h, "POST", "/api/broadcast", authz, Some(PUBLISH_BODY)).await,
        ),
        (
            "POST /api/user/sse/disconnect",
            call(
                h,
                "POST",
                "/api/user/sse/disconnect?userId=nobody&connectionId=none",
                authz,
                None,
            )
            .await,
        ),
        (
            "GET /api/user/sse/stats",
            call(h, "GET", "/api/user/sse/stats", authz, None).await,
        ),
    ]
}

/// Every publisher endpoint refuses `authz` with `401 {"error": code}`.
async fn assert_publisher_refused(h: &Herald, authz: Option<&str>, code: &str, what: &str) {
    for (endpoint, r) in publisher_calls(h, authz).await {
        let what = format!("{endpoint} with {what}");
        let m = assert_resp_refused(&r, 401, code, &what);
        assert_says_nothing(&m, &what);
    }
}

/// Every publisher endpoint accepts `authz` (publish `202`, disconnect of an
/// unknown connection `404`, stats `200`).
async fn assert_publisher_accepted(h: &Herald, authz: Option<&str>, what: &str) {
    let [publish, disconnect, stats] = publisher_calls(h, authz).await;
    assert_eq!(
        publish.1.status, 202,
        "publish with {what}: {}",
        publish.1.body
    );
    assert_eq!(
        disconnect.1.status, 404,
        "disconnect of an unknown connection with {what}: {}",
        disconnect.1.body
    );
    assert_eq!(stats.1.status, 200, "stats with {what}: {}", stats.1.body);
    assert!(
        stats.1.json()["connections"].is_u64(),
        "stats: {}",
        stats.1.body
    );
}

/// Wait until the stats (read with `authz`) report `n` connections.
async fn wait_connections(h: &Herald, authz: Option<&str>, n: u64) {
    let until = Instant::now() + WAIT;
    loop {
        let r = call(h, "GET", "/api/user/sse/stats", authz, None).await;
        assert_eq!(r.status, 200, "stats: {}", r.body);
        if r.json()["connections"].as_u64() == Some(n) {
            return;
        }
        assert!(
            Instant::now() < until,
            "connections never reached {n}: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Subscriber auth

/// The bad subscriber tokens for user `alice` under HS256 [`SECRET`], by name.
fn bad_hs256_tokens() -> Vec<(&'static str, String)> {
    let good = hs256(&sub("alice"));
    let other_claims = hs256(&json!({"sub": "alice", "exp": now() + 3600}));
    vec![
        ("signature of other claims", spliced(&good, &other_claims)),
        (
            "signed with another secret",
            hs256_with(OTHER_SECRET, &sub("alice")),
        ),
        (
            "expired beyond the leeway",
            hs256(&json!({"sub": "alice", "exp": now() - 60})),
        ),
        ("without exp", hs256(&json!({"sub": "alice"}))),
        ("for another sub", hs256(&sub("bob"))),
        ("without sub", hs256(&publisher())),
        (
            "not valid before a future nbf",
            hs256(&json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 300})),
        ),
        (
            "with a topics claim that is not an array",
            hs256(&json!({"sub": "alice", "exp": now() + 300, "topics": "news"})),
        ),
        ("alg none", alg_none(&sub("alice"))),
        (
            "HS384 with the right secret",
            sign(
                Algorithm::HS384,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &sub("alice"),
            ),
        ),
        ("a publisher static token", PUB1.to_string()),
        ("garbage", "not-a-jwt".to_string()),
        ("three garbage parts", "abc.def.ghi".to_string()),
    ]
}

#[tokio::test]
async fn hs256_subscriber_tokens_are_checked_on_both_connect_paths() {
    let h = Herald::start(&["--shards", "2", "--jwt-secret", SECRET]);
    let pub_jwt = bearer(&hs256(&publisher()));
    for via in BOTH {
        // Missing: no header, no query; an empty query token; a bare "Bearer".
        for (what, query, headers) in [
            ("no token", "userId=alice", vec![]),
            ("an empty token parameter", "userId=alice&token=", vec![]),
            (
                "a bare Bearer header",
                "userId=alice",
                vec![("authorization", "Bearer")],
            ),
        ] {
            let c = open(&h, via, query, &headers).await;
            assert_sse_refused(
                &c,
                401,
                "missing_token",
                &format!("{via:?} connect with {what}"),
            );
        }
        // Invalid (what the answers say is checked in
        // `invalid_token_refusals_do_not_say_why`).
        for (what, token) in bad_hs256_tokens() {
            for carry in [Carry::Header, Carry::Query] {
                let c = open_with(&h, via, carry, "userId=alice", &token).await;
                let what = format!("{via:?} connect, token in the {carry:?}, {what}");
                assert_sse_refused(&c, 401, "invalid_token", &what);
            }
        }
        // Valid, in the header and in the query.
        for carry in [Carry::Header, Carry::Query] {
            let mut c = open_with(&h, via, carry, "userId=alice", &hs256(&sub("alice"))).await;
            assert_streams(
                &mut c,
                "alice",
                &format!("{via:?} valid token in the {carry:?}"),
            )
            .await;
        }
        // Within the default 5 s leeway.
        let recent = hs256(&json!({"sub": "alice", "exp": now() - 2}));
        let mut c = open_with(&h, via, Carry::Query, "userId=alice", &recent).await;
        assert_streams(
            &mut c,
            "alice",
            &format!("{via:?} expired 2 s ago, within the leeway"),
        )
        .await;
        // The header wins over the query parameter.
        let good = hs256(&sub("alice"));
        let q = format!("userId=alice&token={good}");
        let c = open(&h, via, &q, &[("authorization", "Bearer not-a-jwt")]).await;
        assert_sse_refused(
            &c,
            401,
            "invalid_token",
            &format!("{via:?} bad header, good query"),
        );
        let authz = bearer(&good);
        let mut c = open(
            &h,
            via,
            "userId=alice&token=not-a-jwt",
            &[("authorization", &authz)],
        )
        .await;
        assert_streams(&mut c, "alice", &format!("{via:?} good header, bad query")).await;

        // A stream opened with a token receives what a publisher JWT publishes.
        let user = format!("carol-{via:?}");
        let mut c = open_with(
            &h,
            via,
            Carry::Query,
            &format!("userId={user}"),
            &hs256(&sub(&user)),
        )
        .await;
        assert_streams(&mut c, &user, &format!("{via:?} carol")).await;
        let body =
            json!({"event": "hello", "data": "to-carol", "target": {"users": [user]}}).to_string();
        let r = call(&h, "POST", "/api/broadcast", Some(&pub_jwt), Some(&body)).await;
        assert_eq!(r.status, 202, "publish with a publisher JWT: {}", r.body);
        let ev = c
            .next_non_heartbeat(WAIT)
            .await
            .expect("the published event");
        assert_eq!((ev.event.as_str(), ev.data.as_str()), ("hello", "to-carol"));
    }
}

/// A refused token is answered the same whatever was wrong with it (signature,
/// expiry, algorithm, `sub`, shape), on both connect paths and for both key kinds,
/// and the message names none of it.
#[tokio::test]
async fn invalid_token_refusals_do_not_say_why() {
    let k = keys();
    let path = k.public_path.to_str().expect("utf-8 path");
    let hs = Herald::start(&["--shards", "1", "--jwt-secret", SECRET]);
    let rs = Herald::start(&["--shards", "1", "--jwt-public-key", path]);
    let rs_tokens = vec![
        ("RS256: HS256 token".to_string(), hs256(&sub("alice"))),
        (
            "RS256: another key".to_string(),
            rs256(&k.other_private_pem, &sub("alice")),
        ),
        (
            "RS256: expired".to_string(),
            rs256(&k.private_pem, &json!({"sub": "alice", "exp": now() - 60})),
        ),
        (
            "RS256: another sub".to_string(),
            rs256(&k.private_pem, &sub("bob")),
        ),
        ("RS256: alg none".to_string(), alg_none(&sub("alice"))),
    ];
    let hs_tokens: Vec<(String, String)> = bad_hs256_tokens()
        .into_iter()
        .map(|(w, t)| (format!("HS256: {w}"), t))
        .collect();
    let mut answers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut leaks = Vec::new();
    for (h, tokens) in [(&hs, &hs_tokens), (&rs, &rs_tokens)] {
        for via in BOTH {
            for (what, token) in tokens.iter() {
                let what = format!("{via:?} {what}");
                let c = open_with(h, via, Carry::Query, "userId=alice", token).await;
                let m = assert_sse_refused(&c, 401, "invalid_token", &what);
                let lower = m.to_ascii_lowercase();
                if TELLTALE.iter().any(|w| lower.contains(w)) {
                    leaks.push(format!("{what}: {m:?}"));
                }
                answers.entry(c.body.clone()).or_default().push(what);
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "refusals that say why the token failed:\n{}",
        leaks.join("\n")
    );
    assert_eq!(
        answers.len(),
        1,
        "every invalid token must get the same answer; got {} different bodies: {answers:#?}",
        answers.len()
    );
    assert_says_nothing(answers.keys().next().expect("one answer"), "invalid_token");
}

#[tokio::test]
async fn jwt_leeway_flag_is_applied() {
    let h = Herald::start(&[
        "--shards",
        "1",
        "--jwt-secret",
        SECRET,
        "--jwt-leeway",
        "0s",
    ]);
    let t = hs256(&json!({"sub": "alice", "exp": now() - 3}));
    let c = open_with(&h, Via::Lean, Carry::Query, "userId=alice", &t).await;
    assert_sse_refused(
        &c,
        401,
        "invalid_token",
        "expired 3 s ago with --jwt-leeway 0s",
    );
    let h = Herald::start(&[
        "--shards",
        "1",
        "--jwt-secret",
        SECRET,
        "--jwt-leeway",
        "2m",
    ]);
    let t = hs256(&json!({"sub": "alice", "exp": now() - 60}));
    let mut c = open_with(&h, Via::Lean, Carry::Query, "userId=alice", &t).await;
    assert_streams(&mut c, "alice", "expired 60 s ago with --jwt-leeway 2m").await;
}

#[tokio::test]
async fn topics_claim_limits_the_topics_a_stream_may_join() {
    let h = Herald::start(&["--shards", "2", "--jwt-secret", SECRET]);
    let scoped = hs256(&json!({"sub": "alice", "exp": now() + 300, "topics": ["news", "sports"]}));
    let none_allowed = hs256(&json!({"sub": "alice", "exp": now() + 300, "topics": []}));
    let unscoped = hs256(&sub("alice"));
    for via in BOTH {
        for (token, topics, ok) in [
            (&scoped, Some("news"), true),
            (&scoped, Some("sports,news"), true),
            (&scoped, None, true),
            (&scoped, Some("admin"), false),
            (&scoped, Some("news,admin"), false),
            (&scoped, Some("News"), false),
            (&none_allowed, Some("news"), false),
            (&none_allowed, None, true),
            (&unscoped, Some("admin,anything,x.y:z"), true),
        ] {
            let query = match topics {
                Some(t) => format!("userId=alice&topics={t}"),
                None => "userId=alice".to_string(),
            };
            let what = format!("{via:?} ?{query}");
            let mut c = open_with(&h, via, Carry::Query, &query, token).await;
            if ok {
                assert_streams(&mut c, "alice", &what).await;
            } else {
                assert_sse_refused(&c, 403, "topic_forbidden", &what);
            }
        }
    }
}

#[tokio::test]
async fn rs256_public_key_file_accepts_only_tokens_of_its_private_key() {
    let k = keys();
    let path = k.public_path.to_str().expect("utf-8 path");
    let h = Herald::start(&["--shards", "2", "--jwt-public-key", path]);
    let good = rs256(&k.private_pem, &sub("alice"));
    let bad: Vec<(&str, String)> = vec![
        ("HS256 with a shared secret", hs256(&sub("alice"))),
        // Key confusion: the public key used as an HMAC secret.
        (
            "HS256 keyed with the public key PEM",
            hs256_with(&k.public_pem, &sub("alice")),
        ),
        (
            "RS256 from another private key",
            rs256(&k.other_private_pem, &sub("alice")),
        ),
        (
            "RS256 expired",
            rs256(&k.private_pem, &json!({"sub": "alice", "exp": now() - 60})),
        ),
        (
            "RS256 without exp",
            rs256(&k.private_pem, &json!({"sub": "alice"})),
        ),
        ("RS256 for another sub", rs256(&k.private_pem, &sub("bob"))),
        (
            "RS256 signature of other claims",
            spliced(
                &good,
                &rs256(&k.private_pem, &json!({"sub": "alice", "exp": now() + 999})),
            ),
        ),
        ("alg none", alg_none(&sub("alice"))),
        ("garbage", "garbage".to_string()),
    ];
    for via in BOTH {
        for carry in [Carry::Header, Carry::Query] {
            let mut c = open_with(&h, via, carry, "userId=alice", &good).await;
            assert_streams(&mut c, "alice", &format!("{via:?} RS256 in the {carry:?}")).await;
            for (what, token) in &bad {
                let c = open_with(&h, via, carry, "userId=alice", token).await;
                assert_sse_refused(
                    &c,
                    401,
                    "invalid_token",
                    &format!("{via:?} {carry:?} {what}"),
                );
            }
        }
        let c = open(&h, via, "userId=alice", &[]).await;
        assert_sse_refused(&c, 401, "missing_token", &format!("{via:?} no token"));
    }
    // Publisher side: an RS256 `publish: true` token works; the rest do not.
    assert_publisher_accepted(
        &h,
        Some(&bearer(&rs256(&k.private_pem, &publisher()))),
        "RS256 publisher JWT",
    )
    .await;
    for (what, token) in [
        ("an RS256 subscriber JWT", good.clone()),
        ("an HS256 publisher JWT", hs256(&publisher())),
        (
            "an RS256 publisher JWT of another key",
            rs256(&k.other_private_pem, &publisher()),
        ),
    ] {
        assert_publisher_refused(&h, Some(&bearer(&token)), "invalid_credential", what).await;
    }
    assert_publisher_refused(&h, None, "missing_credential", "no credential").await;
}

#[tokio::test]
async fn rs256_public_key_given_as_pem_text() {
    let k = keys();
    // `--jwt-public-key=<PEM>`: see `rs256_public_key_pem_text_as_a_separate_argument`
    // for `--jwt-public-key <PEM>`.
    let flag = format!("--jwt-public-key={}", k.public_pem);
    let h = Herald::start(&["--shards", "1", &flag]);
    for via in BOTH {
        let mut c = open_with(
            &h,
            via,
            Carry::Header,
            "userId=alice",
            &rs256(&k.private_pem, &sub("alice")),
        )
        .await;
        assert_streams(
            &mut c,
            "alice",
            &format!("{via:?} RS256, key given as PEM text"),
        )
        .await;
        let c = open_with(
            &h,
            via,
            Carry::Header,
            "userId=alice",
            &rs256(&k.other_private_pem, &sub("alice")),
        )
        .await;
        assert_sse_refused(
            &c,
            401,
            "invalid_token",
            &format!("{via:?} RS256 of another key"),
        );
    }
}

/// `--jwt-public-key` takes "a PEM file path, or the PEM itself"; a PEM begins
/// with `-----BEGIN`, which must still be read as the flag's value when it comes
/// as the next argument (as `--jwt-public-key "$(cat pub.pem)"` passes it).
#[test]
fn rs256_public_key_pem_text_as_a_separate_argument() {
    let k = keys();
    assert_starts(&["--listen", "127.0.0.1:0", "--jwt-public-key", &k.public_pem]);
}

// ---------------------------------------------------------------------------
// Publisher auth

#[tokio::test]
async fn publisher_static_tokens_guard_publish_disconnect_and_stats() {
    let h = Herald::start(&[
        "--shards",
        "2",
        "--publisher-token",
        PUB1,
        "--publisher-token",
        PUB2,
    ]);
    assert_publisher_refused(&h, None, "missing_credential", "no credential").await;
    assert_publisher_refused(&h, Some("Bearer"), "missing_credential", "a bare Bearer").await;
    let basic = format!("Basic {PUB1}");
    assert_publisher_refused(&h, Some(&basic), "missing_credential", "another scheme").await;
    let prefix = &PUB1[..PUB1.len() - 1];
    let longer = format!("{PUB1}x");
    let upper = PUB1.to_ascii_uppercase();
    let both = format!("{PUB1},{PUB2}");
    for (what, token) in [
        ("a wrong token", "wrong-token-0123456789abcdef"),
        ("a prefix of the real token", prefix),
        ("the real token plus a byte", longer.as_str()),
        ("the real token in upper case", upper.as_str()),
        ("both tokens joined", both.as_str()),
        ("a JWT (no key configured)", &hs256(&publisher())),
    ] {
        assert_publisher_refused(&h, Some(&bearer(token)), "invalid_credential", what).await;
    }
    assert_publisher_accepted(&h, Some(&bearer(PUB1)), "the first token").await;
    assert_publisher_accepted(&h, Some(&bearer(PUB2)), "the second token").await;
    assert_publisher_accepted(&h, Some(&format!("bearer {PUB2}")), "a lower-case scheme").await;

    // Health and metrics need no credential.
    for path in ["/health/live", "/health/ready", "/metrics"] {
        assert_eq!(
            call(&h, "GET", path, None, None).await.status,
            200,
            "GET {path}"
        );
    }
    // Subscribers need no token (no JWT key).
    let mut c = open(&h, Via::Lean, "userId=dave&connectionId=tab-1", &[]).await;
    assert_streams(&mut c, "dave", "connect without subscriber auth").await;
    // A refused publish is not delivered; an accepted one is.
    let forged = json!({"event": "forged", "data": "no", "target": "all"}).to_string();
    let r = call(
        &h,
        "POST",
        "/api/broadcast",
        Some(&bearer(prefix)),
        Some(&forged),
    )
    .await;
    assert_eq!(r.status, 401);
    let real = json!({"event": "real", "data": "yes", "target": "all"}).to_string();
    let r = call(
        &h,
        "POST",
        "/api/broadcast",
        Some(&bearer(PUB1)),
        Some(&real),
    )
    .await;
    assert_eq!(r.status, 202);
    let ev = c.next_non_heartbeat(WAIT).await.expect("an event");
    assert_eq!(
        ev.event, "real",
        "the refused publish must not be delivered"
    );
    // A refused disconnect leaves the stream; an accepted one ends it.
    let path = "/api/user/sse/disconnect?userId=dave&connectionId=tab-1";
    let r = call(&h, "POST", path, None, None).await;
    assert_resp_refused(
        &r,
        401,
        "missing_credential",
        "disconnect without credential",
    );
    let r = call(
        &h,
        "POST",
        path,
        Some(&bearer("wrong-token-0123456789abcdef")),
        None,
    )
    .await;
    assert_resp_refused(
        &r,
        401,
        "invalid_credential",
        "disconnect with a wrong token",
    );
    wait_connections(&h, Some(&bearer(PUB1)), 1).await;
    let r = call(&h, "POST", path, Some(&bearer(PUB2)), None).await;
    assert_eq!(r.status, 200, "disconnect: {}", r.body);
    assert_eq!(r.json()["disconnected"], true);
    assert!(
        c.wait_closed(WAIT).await,
        "the disconnected stream must end"
    );
}

#[tokio::test]
async fn publisher_check_comes_before_the_body_limit() {
    // The 413 itself is tested in tests/bad_input.rs.
    let h = Herald::start(&[
        "--shards",
        "1",
        "--publisher-token",
        PUB1,
        "--max-body",
        "1KiB",
    ]);
    let body = format!(r#"{{"target":"all","data":"{}"}}"#, "x".repeat(4096));
    let raw = |authz: Option<&str>| {
        let mut r = format!(
            "POST /api/broadcast HTTP/1.1\r\nhost: herald\r\nconnection: close\r\n\
content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some(a) = authz {
            r.push_str(&format!("authorization: {a}\r\n"));
        }
        r.push_str("\r\n");
        let mut r = r.into_bytes();
        r.extend_from_slice(body.as_bytes());
        r
    };
    let r = send_while_reading(h.addr, raw(None)).await;
    assert_resp_refused(
        &r,
        401,
        "missing_credential",
        "an oversized body without credential",
    );
    let r = send_while_reading(h.addr, raw(Some(&bearer(PUB1)))).await;
    assert_json_error(&r, 413, "an oversized body with the credential");
}

#[tokio::test]
async fn publisher_jwts_and_static_tokens_work_together() {
    let h = Herald::start(&[
        "--shards",
        "2",
        "--jwt-secret",
        SECRET,
        "--publisher-token",
        PUB1,
    ]);
    assert_publisher_accepted(&h, Some(&bearer(PUB1)), "the static token").await;
    assert_publisher_accepted(&h, Some(&bearer(&hs256(&publisher()))), "a publisher JWT").await;
    let recent = hs256(&json!({"publish": true, "exp": now() - 2}));
    assert_publisher_accepted(
        &h,
        Some(&bearer(&recent)),
        "a publisher JWT within the leeway",
    )
    .await;
    assert_publisher_refused(&h, None, "missing_credential", "no credential").await;
    for (what, token) in [
        ("a subscriber JWT", hs256(&sub("alice"))),
        (
            "publish: false",
            hs256(&json!({"publish": false, "exp": now() + 300})),
        ),
        (
            "publish: \"true\" (a string)",
            hs256(&json!({"publish": "true", "exp": now() + 300})),
        ),
        (
            "publish: true without exp",
            hs256(&json!({"publish": true})),
        ),
        (
            "publish: true, expired",
            hs256(&json!({"publish": true, "exp": now() - 60})),
        ),
        (
            "publish: true, another secret",
            hs256_with(OTHER_SECRET, &publisher()),
        ),
        ("publish: true, alg none", alg_none(&publisher())),
        ("a prefix of the static token", PUB1[..20].to_string()),
    ] {
        assert_publisher_refused(&h, Some(&bearer(&token)), "invalid_credential", what).await;
    }
    // Health and metrics need no credential, even with a JWT key.
    for path in ["/health/live", "/health/ready", "/metrics"] {
        assert_eq!(
            call(&h, "GET", path, None, None).await.status,
            200,
            "GET {path}"
        );
    }
    // A publisher credential is not a subscriber token.
    let c = open_with(&h, Via::Lean, Carry::Header, "userId=alice", PUB1).await;
    assert_sse_refused(
        &c,
        401,
        "invalid_token",
        "the static publisher token as subscriber token",
    );
}

#[tokio::test]
async fn without_credentials_everything_is_anonymous() {
    let h = Herald::start(&["--shards", "1"]);
    assert_publisher_accepted(&h, None, "no credential").await;
    // A credential nobody asked for is ignored.
    assert_publisher_accepted(
        &h,
        Some(&bearer("anything-at-all-0123456789")),
        "an unneeded token",
    )
    .await;
    for via in BOTH {
        let mut c = open(&h, via, "userId=eve", &[]).await;
        assert_streams(&mut c, "eve", &format!("{via:?} connect without token")).await;
        let mut c = open(&h, via, "userId=eve&token=not-a-jwt", &[]).await;
        assert_streams(
            &mut c,
            "eve",
            &format!("{via:?} connect with an unchecked token"),
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// Startup checks

enum Started {
    /// Printed its listening line (then was killed).
    Listening(String),
    /// Exited on its own.
    Exited { code: Option<i32>, stderr: String },
}

/// Run herald with `args` until it prints its listening line (then SIGKILL it at
/// once) or exits; panics if neither happens within [`WAIT`].
fn try_start(args: &[&str]) -> (Started, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--shards", "1", "--log", "warn"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "HERALD_LISTEN",
        "HERALD_PUBLISHER_TOKEN",
        "HERALD_JWT_SECRET",
        "HERALD_JWT_PUBLIC_KEY",
        "HERALD_ALLOW_ANONYMOUS_PUBLISH",
        "HERALD_CORS_ORIGIN",
        "HERALD_REDIS_URL",
    ] {
        cmd.env_remove(var);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn herald");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stdout).lines().next().and_then(Result::ok);
        let _ = tx.send(line);
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let outcome = match rx.recv_timeout(WAIT) {
        Ok(Some(line)) => {
            let _ = child.kill();
            let _ = child.wait();
            Started::Listening(line)
        }
        Ok(None) => {
            let status = child.wait().expect("wait for herald");
            Started::Exited {
                code: status.code(),
                stderr: err.join().unwrap_or_default(),
            }
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald {args:?} neither listened nor exited within {WAIT:?}");
        }
    };
    (outcome, started.elapsed())
}

/// Herald `args` must exit non-zero at once, its stderr naming every one of `mentions`.
fn assert_refused_at_start(args: &[&str], mentions: &[&str]) {
    let (outcome, took) = try_start(args);
    match outcome {
        Started::Listening(line) => panic!("herald {args:?} must refuse to start, but: {line}"),
        Started::Exited { code, stderr } => {
            assert!(
                code.is_some_and(|c| c != 0),
                "herald {args:?} exited with {code:?}"
            );
            assert!(
                took < Duration::from_secs(5),
                "herald {args:?} took {took:?} to refuse"
            );
            for m in mentions {
                assert!(
                    stderr.contains(m),
                    "herald {args:?}: stderr should mention {m:?}: {stderr:?}"
                );
            }
        }
    }
}

fn assert_starts(args: &[&str]) {
    match try_start(args).0 {
        Started::Listening(line) => {
            assert!(
                line.starts_with("herald listening on http://"),
                "{args:?}: {line}"
            )
        }
        Started::Exited { code, stderr } => {
            panic!("herald {args:?} must start, exited {code:?}: {stderr}")
        }
    }
}

/// Binding 0.0.0.0 here only checks whether herald starts; it is killed at once
/// and no traffic is sent to it.
#[test]
fn non_loopback_listen_needs_a_publisher_credential() {
    assert_refused_at_start(
        &["--listen", "0.0.0.0:0"],
        &["--publisher-token", "--allow-anonymous-publish"],
    );
    assert_starts(&["--listen", "0.0.0.0:0", "--publisher-token", PUB1]);
    assert_starts(&["--listen", "0.0.0.0:0", "--allow-anonymous-publish"]);
    assert_starts(&["--listen", "0.0.0.0:0", "--jwt-secret", SECRET]);
}

#[test]
fn unsafe_security_flags_are_refused_at_start() {
    let lo = ["--listen", "127.0.0.1:0"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = lo.to_vec();
        v.extend_from_slice(extra);
        v
    };
    assert_refused_at_start(&with(&["--cors-origin", "*"]), &["--cors-origin"]);
    assert_refused_at_start(
        &with(&["--cors-origin", APP, "--cors-origin", "*"]),
        &["--cors-origin"],
    );
    assert_refused_at_start(
        &with(&["--cors-origin", "https://app.example.com/"]),
        &["--cors-origin"],
    );
    assert_refused_at_start(&with(&["--jwt-secret", "short"]), &["--jwt-secret"]);
    // 15 bytes is one short; 16 is enough.
    assert_refused_at_start(
        &with(&["--jwt-secret", "0123456789abcde"]),
        &["--jwt-secret"],
    );
    assert_starts(&with(&["--jwt-secret", "0123456789abcdef"]));
    assert_refused_at_start(
        &with(&["--publisher-token", "0123456789abcde"]),
        &["--publisher-token"],
    );
    assert_starts(&with(&["--publisher-token", "0123456789abcdef"]));
    assert_refused_at_start(
        &with(&["--jwt-public-key", "/nonexistent/herald/pub.pem"]),
        &["--jwt-public-key"],
    );
    assert_refused_at_start(
        &with(&[
            "--jwt-public-key=-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
        ]),
        &["--jwt-public-key"],
    );
    let k = keys();
    let path = k.public_path.to_str().expect("utf-8 path");
    let mut both = lo.to_vec();
    both.extend_from_slice(&["--jwt-secret", SECRET, "--jwt-public-key", path]);
    assert_refused_at_start(&both, &["--jwt-secret", "--jwt-public-key"]);
}

// ---------------------------------------------------------------------------
// CORS

fn assert_no_cors(headers: &[(String, String)], what: &str) {
    let acao = header_all(headers, "access-control-allow-origin");
    assert!(
        acao.is_empty(),
        "{what}: no Access-Control-Allow-Origin expected, got {acao:?}"
    );
    let acac = header_all(headers, "access-control-allow-credentials");
    assert!(
        acac.is_empty(),
        "{what}: no Access-Control-Allow-Credentials expected, got {acac:?}"
    );
}

/// The response allows exactly `origin`, with credentials, and varies on Origin.
fn assert_cors(headers: &[(String, String)], origin: &str, what: &str) {
    let acao = header_all(headers, "access-control-allow-origin");
    assert_eq!(
        acao,
        vec![origin.to_string()],
        "{what}: Access-Control-Allow-Origin"
    );
    let acac = header_all(headers, "access-control-allow-credentials");
    assert_eq!(
        acac,
        vec!["true".to_string()],
        "{what}: Access-Control-Allow-Credentials"
    );
    let vary = header_all(headers, "vary").join(",").to_ascii_lowercase();
    assert!(
        vary.split(',').any(|v| v.trim() == "origin"),
        "{what}: Vary must name Origin, got {vary:?}"
    );
}

fn list_contains(headers: &[(String, String)], name: &str, want: &str) -> bool {
    header_all(headers, name)
        .join(",")
        .split(',')
        .any(|v| v.trim().eq_ignore_ascii_case(want))
}

async fn preflight(h: &Herald, path: &str, origin: Option<&str>) -> Response {
    let mut headers = vec![
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "authorization, content-type, last-event-id",
        ),
    ];
    if let Some(o) = origin {
        headers.push(("origin", o));
    }
    request(h.addr, "OPTIONS", path, &headers, None).await
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let h = Herald::start(&["--shards", "1"]);
    for path in ["/health/live", "/api/user/sse/stats"] {
        let r = request(h.addr, "GET", path, &[("origin", APP)], None).await;
        assert_eq!(r.status, 200, "GET {path}");
        assert_no_cors(
            &r.headers,
            &format!("GET {path} with Origin, no --cors-origin"),
        );
    }
    let r = preflight(&h, "/api/broadcast", Some(APP)).await;
    assert_ne!(
        r.status / 100,
        2,
        "a preflight without --cors-origin must not succeed"
    );
    assert_no_cors(&r.headers, "preflight without --cors-origin");
    for via in BOTH {
        let mut c = open(&h, via, "userId=frank", &[("origin", APP)]).await;
        assert_no_cors(
            &c.headers,
            &format!("{via:?} connect with Origin, no --cors-origin"),
        );
        assert_streams(&mut c, "frank", &format!("{via:?} connect with Origin")).await;
    }
}

#[tokio::test]
async fn cors_allows_only_the_listed_origins() {
    let h = Herald::start(&["--shards", "2", "--cors-origin", APP, "--cors-origin", APP2]);
    // Preflights from listed origins.
    for (path, origin) in [
        ("/api/broadcast", APP),
        ("/api/broadcast", APP2),
        (CONNECT, APP),
        ("/api/user/sse/disconnect", APP),
    ] {
        let what = format!("preflight {path} from {origin}");
        let r = preflight(&h, path, Some(origin)).await;
        assert_eq!(r.status, 204, "{what}: {}", r.body);
        assert_cors(&r.headers, origin, &what);
        assert!(
            list_contains(&r.headers, "access-control-allow-methods", "POST"),
            "{what}: {:?}",
            r.headers
        );
        for wanted in ["Authorization", "Last-Event-ID", "Content-Type"] {
            assert!(
                list_contains(&r.headers, "access-control-allow-headers", wanted),
                "{what}: allow-headers lacks {wanted}: {:?}",
                r.headers
            );
        }
    }
    // Preflights from any other origin.
    for origin in [
        EVIL,
        "http://app.example.com",
        "https://app.example.com:443",
        "https://app.example.com.evil.com",
        "https://sub.app.example.com",
        "null",
        "*",
    ] {
        let what = format!("preflight from {origin}");
        let r = preflight(&h, "/api/broadcast", Some(origin)).await;
        assert_eq!(r.status, 403, "{what}: {}", r.body);
        assert_no_cors(&r.headers, &what);
    }
    // OPTIONS without Origin is plain OPTIONS.
    let r = preflight(&h, "/api/broadcast", None).await;
    assert_eq!(r.status, 204, "OPTIONS without Origin: {}", r.body);
    let allow = header_all(&r.headers, "allow");
    assert!(
        !allow.is_empty(),
        "OPTIONS without Origin needs an Allow header: {:?}",
        r.headers
    );
    assert!(
        list_contains(&r.headers, "allow", "POST"),
        "Allow: {allow:?}"
    );
    assert_no_cors(&r.headers, "OPTIONS without Origin");

    // Simple requests.
    for path in ["/api/user/sse/stats", "/health/live", "/health/ready"] {
        let r = request(h.addr, "GET", path, &[("origin", APP)], None).await;
        assert_eq!(r.status, 200, "GET {path}");
        assert_cors(&r.headers, APP, &format!("GET {path} from {APP}"));
        let r = request(h.addr, "GET", path, &[("origin", EVIL)], None).await;
        assert_eq!(r.status, 200, "GET {path} from {EVIL}");
        assert_no_cors(&r.headers, &format!("GET {path} from {EVIL}"));
        let r = request(h.addr, "GET", path, &[], None).await;
        assert_no_cors(&r.headers, &format!("GET {path} without Origin"));
    }
    let r = request(
        h.addr,
        "POST",
        "/api/broadcast",
        &[("origin", APP2), ("content-type", "application/json")],
        Some(PUBLISH_BODY.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 202, "publish from {APP2}: {}", r.body);
    assert_cors(&r.headers, APP2, "publish from the second origin");

    // Streams.
    for via in BOTH {
        let mut c = open(&h, via, "userId=grace", &[("origin", APP)]).await;
        assert_cors(&c.headers, APP, &format!("{via:?} connect from {APP}"));
        assert_eq!(
            c.header("content-type"),
            Some("text/event-stream"),
            "{via:?}"
        );
        assert_streams(&mut c, "grace", &format!("{via:?} connect from {APP}")).await;
        let mut c = open(&h, via, "userId=grace", &[("origin", EVIL)]).await;
        assert_no_cors(&c.headers, &format!("{via:?} connect from {EVIL}"));
        assert_streams(&mut c, "grace", &format!("{via:?} connect from {EVIL}")).await;
    }
}

// ---------------------------------------------------------------------------
// Limits

/// A refused connect: `429` with a JSON error.
fn assert_429(c: &SseClient, what: &str) {
    let r = Response {
        status: c.status,
        headers: c.headers.clone(),
        body: c.body.clone(),
    };
    assert_json_error(&r, 429, what);
}

/// Wait until `herald_connects_rejected_total{reason}` reaches `n` (hot-path
/// counters are flushed about once a second).
async fn wait_rejected(h: &Herald, reason: &str, n: f64) {
    let until = Instant::now() + WAIT;
    loop {
        let text = call(h, "GET", "/metrics", None, None).await.body;
        let v = support::ops::metric_sum(
            &text,
            "herald_connects_rejected_total",
            &[("reason", reason)],
        );
        if v >= n {
            return;
        }
        assert!(
            Instant::now() < until,
            "herald_connects_rejected_total{{reason={reason:?}}} stayed at {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn pod_connection_limit_refuses_with_429_json() {
    let h = Herald::start(&["--shards", "2", "--max-connections", "3"]);
    let mut open_streams = Vec::new();
    for i in 0..3 {
        let user = format!("pod-{i}");
        let mut c = open(&h, Via::Lean, &format!("userId={user}"), &[]).await;
        assert_streams(&mut c, &user, &format!("stream {i} of 3")).await;
        open_streams.push(c);
    }
    for via in BOTH {
        let c = open(&h, via, "userId=pod-extra", &[]).await;
        assert_429(&c, &format!("{via:?} 4th stream with --max-connections 3"));
    }
    wait_rejected(&h, "pod_full", 2.0).await;
    // A freed slot is usable again.
    drop(open_streams.pop());
    wait_connections(&h, None, 2).await;
    let mut c = open(&h, Via::Lean, "userId=pod-extra", &[]).await;
    assert_streams(&mut c, "pod-extra", "a stream after one closed").await;
}

#[tokio::test]
async fn per_user_connection_limit_refuses_with_429_json() {
    let h = Herald::start(&["--shards", "2", "--max-connections-per-user", "2"]);
    let mut c1 = open(&h, Via::Lean, "userId=heidi&connectionId=c1", &[]).await;
    assert_streams(&mut c1, "heidi", "heidi c1").await;
    let mut c2 = open(&h, Via::KeepAlive, "userId=heidi&connectionId=c2", &[]).await;
    assert_streams(&mut c2, "heidi", "heidi c2").await;
    for via in BOTH {
        let c = open(&h, via, "userId=heidi&connectionId=c3", &[]).await;
        assert_429(&c, &format!("{via:?} heidi's third stream"));
    }
    wait_rejected(&h, "user_full", 2.0).await;
    // Another user still connects.
    let mut other = open(&h, Via::Lean, "userId=ivan", &[]).await;
    assert_streams(&mut other, "ivan", "another user").await;
    // Replacing c1 (and c2, served by hyper) at the limit is not a third stream.
    let mut c1b = open(&h, Via::Lean, "userId=heidi&connectionId=c1", &[]).await;
    assert_streams(&mut c1b, "heidi", "replacement of c1 at the limit").await;
    assert!(
        c1.wait_closed(WAIT).await,
        "the replaced stream c1 must end"
    );
    let mut c2b = open(&h, Via::KeepAlive, "userId=heidi&connectionId=c2", &[]).await;
    assert_streams(&mut c2b, "heidi", "replacement of c2 at the limit").await;
    assert!(
        c2.wait_closed(WAIT).await,
        "the replaced stream c2 must end"
    );
    let c = open(&h, Via::Lean, "userId=heidi&connectionId=c3", &[]).await;
    assert_429(&c, "heidi's third stream after the replacements");
    wait_connections(&h, None, 3).await;
}

#[tokio::test]
async fn configured_max_header_bytes_is_431() {
    // The default 16 KiB is tested in tests/bad_input.rs.
    let h = Herald::start(&[
        "--shards",
        "1",
        "--max-header-bytes",
        "4KiB",
        "--jwt-secret",
        SECRET,
    ]);
    let big = "a".repeat(5 * 1024);
    for path in ["/health/live", "/api/user/sse/connect?userId=alice"] {
        let r = request(h.addr, "GET", path, &[("x-big", &big)], None).await;
        assert_json_error(
            &r,
            431,
            &format!("5 KiB header on {path} with --max-header-bytes 4KiB"),
        );
    }
    // An oversized bearer token is cut off the same way.
    let huge = format!("Bearer {}", "t".repeat(5 * 1024));
    let r = request(
        h.addr,
        "GET",
        "/api/user/sse/connect?userId=alice",
        &[("authorization", &huge)],
        None,
    )
    .await;
    assert_json_error(&r, 431, "a 5 KiB Authorization header");
    let r = request(
        h.addr,
        "GET",
        "/health/live",
        &[("x-ok", &"b".repeat(2048))],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "a 2 KiB header under a 4 KiB limit");
}

// ---------------------------------------------------------------------------
// Tokens never logged

#[tokio::test]
async fn tokens_never_reach_the_log_or_the_metrics() {
    let user = "secret-user-q7x9";
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("security-trace-{}.log", std::process::id()));
    let h = Herald::start_with_stderr_file(
        &[
            "--shards",
            "2",
            "--log",
            "trace",
            "--jwt-secret",
            SECRET,
            "--publisher-token",
            PUB1,
        ],
        &log,
    );
    let sub_query = hs256(&json!({"sub": user, "exp": now() + 300, "jti": "query"}));
    let sub_header = hs256(&json!({"sub": user, "exp": now() + 300, "jti": "header"}));
    let sub_ka = hs256(&json!({"sub": user, "exp": now() + 300, "jti": "keep-alive"}));
    let pub_jwt = hs256(&json!({"publish": true, "exp": now() + 300, "jti": "publisher"}));
    let wrong_sub = hs256(&json!({"sub": "someone-else", "exp": now() + 300, "jti": "wrong"}));
    let bogus_pub = "bogus-publisher-token-5551234";

    let q = format!("userId={user}&connectionId=q&topics=news");
    let mut a = open_with(&h, Via::Lean, Carry::Query, &q, &sub_query).await;
    assert_streams(&mut a, user, "token in the query").await;
    let q = format!("userId={user}&connectionId=h");
    let mut b = open_with(&h, Via::Lean, Carry::Header, &q, &sub_header).await;
    assert_streams(&mut b, user, "token in the header").await;
    let q = format!("userId={user}&connectionId=k");
    let mut c = open_with(&h, Via::KeepAlive, Carry::Query, &q, &sub_ka).await;
    assert_streams(&mut c, user, "token in the query, keep-alive").await;
    let c2 = open_with(
        &h,
        Via::Lean,
        Carry::Query,
        &format!("userId={user}"),
        &wrong_sub,
    )
    .await;
    assert_sse_refused(&c2, 401, "invalid_token", "a token for another user");

    let body = json!({"event": "e", "data": "d", "target": {"users": [user]}}).to_string();
    let r = call(
        &h,
        "POST",
        "/api/broadcast",
        Some(&bearer(PUB1)),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = call(
        &h,
        "POST",
        "/api/broadcast",
        Some(&bearer(&pub_jwt)),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = call(
        &h,
        "POST",
        "/api/broadcast",
        Some(&bearer(bogus_pub)),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    for s in [&mut a, &mut b, &mut c] {
        for _ in 0..2 {
            s.next_non_heartbeat(WAIT)
                .await
                .expect("the published events");
        }
    }
    let dis = format!("/api/user/sse/disconnect?userId={user}&connectionId=h");
    assert_eq!(
        call(&h, "POST", &dis, Some(&bearer(PUB1)), None)
            .await
            .status,
        200
    );
    assert!(b.wait_closed(WAIT).await);
    wait_connections(&h, Some(&bearer(PUB1)), 2).await;

    let secrets: Vec<(&str, &str)> = vec![
        ("the subscriber token from the query", &sub_query),
        ("the subscriber token from the header", &sub_header),
        ("the subscriber token from keep-alive", &sub_ka),
        ("the publisher JWT", &pub_jwt),
        ("the refused subscriber token", &wrong_sub),
        ("the static publisher token", PUB1),
        ("the refused publisher token", bogus_pub),
        ("the JWT secret", SECRET),
    ];
    // Each JWT's signature alone must not show either.
    let signatures: Vec<(String, &str)> = secrets
        .iter()
        .filter_map(|(what, t)| {
            t.rsplit_once('.')
                .map(|(_, sig)| (format!("the signature of {what}"), sig))
        })
        .collect();

    let metrics = call(&h, "GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("herald_connections_open"),
        "metrics: {}",
        metrics.body
    );
    for (what, s) in secrets
        .iter()
        .map(|(w, s)| (w.to_string(), *s))
        .chain(signatures.clone())
    {
        assert!(!metrics.body.contains(s), "/metrics contains {what}");
    }
    assert!(
        !metrics.body.contains(user),
        "/metrics contains the user id"
    );

    drop(a);
    drop(c);
    drop(h); // SIGKILL: everything logged so far is in the file
    let text = std::fs::read_to_string(&log).expect("read the captured log");
    let _ = std::fs::remove_file(&log);
    assert!(
        text.contains("herald started"),
        "the captured stderr should hold herald's log: {text:?}"
    );
    for (what, s) in secrets
        .iter()
        .map(|(w, s)| (w.to_string(), *s))
        .chain(signatures)
    {
        assert!(!text.contains(s), "the trace log contains {what}");
    }
}
