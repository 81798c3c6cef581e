//! How herald reaches its Redis: the fred configuration made from `--redis`
//! (every URL form fred reads: plain or TLS, standalone, Redis Cluster or
//! behind Sentinel) and the credential and TLS flags, with secrets kept out of
//! the command line and the logs; and the diagnosis of why Redis cannot be used
//! (unreachable, credentials refused, a command not permitted, TLS, Sentinel),
//! logged once per change of state and exported as `herald_redis_problem`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use fred::error::{Error as RedisError, ErrorKind};
use fred::prelude::Config as RedisConfig;
use fred::types::config::{ServerConfig, TlsConfig, TlsConnector};
use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
use tracing::{info, warn};

use crate::metrics as m;

/// The URL schemes herald accepts (fred's, with Valkey's spelling left out: a
/// Valkey server answers the `redis` ones).
const SCHEMES: [&str; 6] = [
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
];

/// Every command herald's Redis user must be allowed to run, as `ACL
/// SETUSER` names (lower case, `command|subcommand`): the ones herald sends
/// (its scripts by `EVALSHA`, loaded with `SCRIPT LOAD`; the reads of its
/// streams; the heartbeats), the commands inside its scripts (Redis checks
/// those against the user too), and what the client sends to connect and find
/// the servers. The README's ACL is made of this list; a test runs herald under
/// exactly this user.
pub const ACL_COMMANDS: &[&str] = &[
    // Sent by herald.
    "evalsha",
    "script|load",
    "xread",
    "zadd",
    // Connection set-up and discovery.
    "ping",
    "info",
    "select",
    "role",
    "cluster|slots",
    // Inside the scripts.
    "del",
    "exists",
    "get",
    "set",
    "hdel",
    "hget",
    "hgetall",
    "hincrby",
    "hkeys",
    "hlen",
    "hmget",
    "hset",
    "hvals",
    "lrange",
    "ltrim",
    "rpush",
    "pexpire",
    "pttl",
    "sadd",
    "smembers",
    "srem",
    "time",
    "xadd",
    "xdel",
    "xinfo|stream",
    "xrange",
    "xrevrange",
    "xsetid",
    "xtrim",
    "zcard",
    "zcount",
    "zmscore",
    "zrangebyscore",
    "zrem",
    "zremrangebyrank",
    "zremrangebyscore",
    "zscore",
];

/// Check `--redis` at start: a scheme herald knows and a URL fred can read.
pub fn check_url(url: &str) -> Result<(), String> {
    let shown = redact(url);
    let scheme = url.split("://").next().unwrap_or("");
    if !url.contains("://") || !SCHEMES.contains(&scheme) {
        return Err(format!(
            "--redis {shown:?}: the URL must start with one of {}:// \
             (for example redis://127.0.0.1:6379/0)",
            SCHEMES.join("://, ")
        ));
    }
    RedisConfig::from_url(url).map_err(|e| format!("--redis {shown:?}: {}", e.details()))?;
    Ok(())
}

/// `url` with its password (and a `sentinelPassword` parameter) replaced by
/// `***`: what the logs and error messages show.
pub fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Not a URL: show no part of it that could be a secret.
        return url.split('@').next_back().unwrap_or("").to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let hidden = k.eq_ignore_ascii_case("sentinelPassword");
            (
                k.into_owned(),
                if hidden { "***".into() } else { v.into_owned() },
            )
        })
        .collect();
    if !pairs.is_empty() {
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// The fred configuration for `cfg`'s `--redis` with the credential and TLS
/// flags applied.
pub fn config(cfg: &crate::Config, url: &str) -> Result<RedisConfig, String> {
    let shown = redact(url);
    let mut rc =
        RedisConfig::from_url(url).map_err(|e| format!("--redis {shown:?}: {}", e.details()))?;
    if let Some(user) = &cfg.redis_username {
        if rc.username.is_some() {
            return Err(format!(
                "--redis-username: the URL {shown:?} names a user already; give it in one place"
            ));
        }
        rc.username = Some(user.clone());
    }
    if let Some(path) = &cfg.redis_password_file {
        if rc.password.is_some() {
            return Err(format!(
                "--redis-password-file: the URL {shown:?} holds a password already; give it in one place"
            ));
        }
        rc.password = Some(read_password(path)?);
    }
    // A sentinel asks for the same credentials as the servers behind it unless
    // the URL gives its own (`sentinelUsername`, `sentinelPassword`).
    if let ServerConfig::Sentinel {
        username, password, ..
    } = &mut rc.server
    {
        if username.is_none() {
            username.clone_from(&rc.username);
        }
        if password.is_none() {
            password.clone_from(&rc.password);
        }
    }
    let wants_tls =
        cfg.redis_tls_ca.is_some() || cfg.redis_tls_cert.is_some() || cfg.redis_tls_key.is_some();
    if rc.tls.is_some() {
        rc.tls = Some(TlsConfig::from(TlsConnector::from(tls_client(cfg)?)));
    } else if wants_tls {
        return Err(format!(
            "--redis-tls-*: the URL {shown:?} is not a TLS one (write rediss://, \
             rediss-cluster:// or rediss-sentinel://)"
        ));
    }
    Ok(rc)
}

/// The password in `path`, without one trailing newline (`\n` or `\r\n`).
fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--redis-password-file {}: {e}", path.display()))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(format!(
            "--redis-password-file {}: the file is empty",
            path.display()
        ));
    }
    Ok(text.to_string())
}

/// rustls, with ring as herald's own TLS does: the system roots or
/// `--redis-tls-ca`, and a client certificate when one is given.
fn tls_client(cfg: &crate::Config) -> Result<rustls::ClientConfig, String> {
    let roots = crate::tls::client_roots(cfg.redis_tls_ca.as_deref(), "--redis-tls-ca")?;
    let builder = crate::tls::client_builder(roots)?;
    match (&cfg.redis_tls_cert, &cfg.redis_tls_key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = crate::tls::pem_certs(cert, "--redis-tls-cert")?;
            let private = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--redis-tls-key {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, private).map_err(|e| {
                format!(
                    "--redis-tls-key {} with --redis-tls-cert {}: {e}",
                    key.display(),
                    cert.display()
                )
            })
        }
        _ => Err("--redis-tls-cert and --redis-tls-key go together".into()),
    }
}

/// Why Redis cannot be used, as far as herald can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// Nothing: the last command was answered.
    None,
    /// No answer: refused, reset, timed out, no sentinel reachable.
    Unreachable(String),
    /// The credentials were refused (`WRONGPASS`, `NOAUTH`).
    Auth(String),
    /// The TLS handshake failed (unknown CA, wrong name, expired, no client
    /// certificate, not a TLS server).
    Tls(String),
    /// The sentinels do not know the service, or name no usable master.
    Sentinel(String),
}

impl Trouble {
    /// The label of `herald_redis_problem`.
    pub fn label(&self) -> &'static str {
        match self {
            Trouble::None => "none",
            Trouble::Unreachable(_) => "unreachable",
            Trouble::Auth(_) => "auth",
            Trouble::Tls(_) => "tls",
            Trouble::Sentinel(_) => "sentinel",
        }
    }

    /// Whether it says more than "no answer": it is kept until Redis answers,
    /// rather than replaced by the timeouts it causes.
    fn is_specific(&self) -> bool {
        matches!(
            self,
            Trouble::Auth(_) | Trouble::Tls(_) | Trouble::Sentinel(_)
        )
    }

    /// What a fred error says about the connection; `None` for an error that is
    /// a command's own (a script error, a wrong type, a denied command).
    pub fn of(e: &RedisError) -> Option<Trouble> {
        let text = e.details();
        match e.kind() {
            ErrorKind::Auth => Some(Trouble::Auth(auth_reason(text))),
            ErrorKind::Tls => Some(Trouble::Tls(tls_reason(text))),
            ErrorKind::Sentinel => Some(sentinel_trouble(text)),
            ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Backpressure => {
                match tls_hint(text) {
                    Some(reason) => Some(Trouble::Tls(reason)),
                    None => Some(Trouble::Unreachable(text.to_string())),
                }
            }
            _ if text.starts_with("WRONGPASS") || text.starts_with("NOAUTH") => {
                Some(Trouble::Auth(auth_reason(text)))
            }
            _ => None,
        }
    }
}

fn auth_reason(text: &str) -> String {
    if text.starts_with("NOAUTH") {
        "Redis asks for a password and none was given (--redis-password-file, or user:password@ in the URL)".into()
    } else {
        format!("the user or password was refused ({text})")
    }
}

/// A TLS failure inside an I/O error (fred reports the handshake's errors as
/// I/O ones), named.
fn tls_hint(text: &str) -> Option<String> {
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&["UnknownIssuer", "unknown issuer"]) {
        Some("the server's certificate is signed by an unknown CA (give --redis-tls-ca)".into())
    } else if has(&["NotValidForName", "not valid for name"]) {
        Some("the server's certificate does not name the host herald connects to".into())
    } else if has(&["Expired", "expired"]) {
        Some("the server's certificate has expired".into())
    } else if has(&["NotValidYet", "not valid yet"]) {
        Some("the server's certificate is not valid yet".into())
    } else if has(&["CertificateRequired", "BadCertificate", "UnknownCA"]) {
        Some(format!(
            "the server refused herald's client certificate (--redis-tls-cert): {text}"
        ))
    } else if has(&[
        "InvalidCertificate",
        "InvalidContentType",
        "corrupt message",
        "AlertReceived",
        "HandshakeFailure",
        "PeerIncompatible",
        "PeerMisbehaved",
    ]) {
        Some(format!("the TLS handshake failed: {text}"))
    } else {
        None
    }
}

fn tls_reason(text: &str) -> String {
    tls_hint(text).unwrap_or_else(|| format!("the TLS handshake failed: {text}"))
}

fn sentinel_trouble(text: &str) -> Trouble {
    if text.contains("Missing primary address") {
        Trouble::Sentinel(
            "the sentinels do not know the service name (sentinelServiceName)".to_string(),
        )
    } else if text.contains("Failed to connect to all sentinel") {
        Trouble::Unreachable(
            "no sentinel answered (or every one refused the credentials)".to_string(),
        )
    } else {
        Trouble::Sentinel(text.to_string())
    }
}

/// A command Redis refused to run for herald's user (`NOPERM`), named.
pub fn denied_command(e: &RedisError) -> Option<String> {
    let text = e.details();
    let at = text.find("NOPERM")?;
    let rest = &text[at..];
    // "NOPERM User u has no permissions to run the 'xadd' command", or from a
    // script "… no permissions to run one of the commands used in the script"
    // (older Redis) / "… to access one of the keys used as arguments".
    let named = rest
        .split('\'')
        .nth(1)
        .filter(|c| !c.is_empty() && !c.contains(' '));
    Some(match named {
        Some(c) => c.to_ascii_uppercase(),
        None => rest.trim().to_string(),
    })
}

/// The current diagnosis: one state for the connection, and the commands Redis
/// refused per operation of herald's.
#[derive(Default)]
pub struct Diagnosis {
    state: Mutex<Option<Trouble>>,
    denied: Mutex<BTreeMap<&'static str, String>>,
    /// Other errors of a command Redis answered (a script error), per
    /// operation: logged once until the operation succeeds.
    errors: Mutex<BTreeMap<&'static str, String>>,
}

impl Diagnosis {
    /// The connection's state now.
    pub fn trouble(&self) -> Trouble {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Trouble::Unreachable("not connected yet".into()))
    }

    /// A connection-level finding; logged when its kind changes (every
    /// reconnect attempt repeats an I/O error with new details). A specific
    /// cause is not replaced by the timeouts that follow it.
    pub fn note(&self, found: Trouble) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(now), Trouble::Unreachable(_)) = (&*state, &found) {
            if now.is_specific() {
                return;
            }
        }
        let changed = state.as_ref().map(Trouble::label) != Some(found.label());
        *state = Some(found.clone());
        drop(state);
        if !changed {
            return;
        }
        for t in ["none", "unreachable", "auth", "tls", "sentinel"] {
            m::set_redis_problem(t, t == found.label());
        }
        match &found {
            Trouble::None => info!("redis answers"),
            Trouble::Unreachable(why) => warn!(reason = %why, "redis unreachable"),
            Trouble::Auth(why) => warn!("redis authentication failed: {why}"),
            Trouble::Tls(why) => warn!("redis TLS failed: {why}"),
            Trouble::Sentinel(why) => warn!("redis sentinel: {why}"),
        }
    }

    /// Operation `op` was refused command `command` (`NOPERM`); logged once.
    pub fn denied(&self, op: &'static str, command: String) {
        let mut denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        if denied.get(op) != Some(&command) {
            warn!(
                op,
                command = %command,
                "redis refused a command herald needs: grant it to herald's ACL user (README, Redis in production)"
            );
            denied.insert(op, command);
            m::set_redis_problem("permission", true);
        }
    }

    /// Operation `op` failed with an error of its own (not the connection's).
    pub fn command_error(&self, op: &'static str, error: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if !errors.contains_key(op) {
            warn!(op, error = %error, "a redis command of herald's failed");
        }
        errors.insert(op, error);
    }

    /// Operation `op` succeeded: whatever it was refused is granted now.
    pub fn allowed(&self, op: &'static str) {
        if let Some(error) = self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(op)
        {
            info!(op, last_error = %error, "the redis command of herald's works again");
        }
        let mut denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(command) = denied.remove(op) {
            info!(op, command = %command, "redis runs the command herald was refused");
            m::set_redis_problem("permission", !denied.is_empty());
        }
    }

    /// The commands refused now, for the health body.
    pub fn denied_now(&self) -> Vec<String> {
        let denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = denied.values().cloned().collect();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fred_url_form_is_taken_and_others_are_named() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "rediss://:pw@cache.example:6380",
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001",
            "rediss-cluster://user:pw@127.0.0.1:7000",
            "redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=main&node=127.0.0.1:26380",
            "rediss-sentinel://u:p@127.0.0.1:26379?sentinelServiceName=main",
        ] {
            assert_eq!(check_url(url), Ok(()), "{url}");
        }
        let e = check_url("http://127.0.0.1:6379").unwrap_err();
        assert!(e.contains("rediss-sentinel://"), "{e}");
        let e = check_url("127.0.0.1:6379").unwrap_err();
        assert!(e.contains("must start with"), "{e}");
        // A Sentinel URL without its service name is refused at start.
        assert!(check_url("redis-sentinel://127.0.0.1:26379").is_err());
    }

    #[test]
    fn passwords_never_reach_a_message() {
        let shown = redact("rediss://herald:s3cret@cache.example:6380/0");
        assert!(
            !shown.contains("s3cret") && shown.contains("herald:***@"),
            "{shown}"
        );
        let shown =
            redact("redis-sentinel://:a@h:26379?sentinelServiceName=m&sentinelPassword=b&node=x:1");
        assert!(!shown.contains(":a@") && !shown.contains("=b&"), "{shown}");
        assert!(shown.contains("sentinelServiceName=m"), "{shown}");
        let e = check_url("http://u:hidden@h:1").unwrap_err();
        assert!(!e.contains("hidden"), "{e}");
    }

    #[test]
    fn a_password_file_loses_one_trailing_newline_only() {
        let dir = std::env::temp_dir().join(format!("herald-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        for (content, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret \n\n", "s3cret \n"),
        ] {
            std::fs::write(&file, content).unwrap();
            assert_eq!(read_password(&file).as_deref(), Ok(want));
        }
        std::fs::write(&file, "\n").unwrap();
        assert!(read_password(&file).unwrap_err().contains("empty"));
        assert!(read_password(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn err(kind: ErrorKind, text: &str) -> RedisError {
        RedisError::new(kind, text.to_string())
    }

    #[test]
    fn errors_are_named_for_what_they_are() {
        let of = |k, t| Trouble::of(&err(k, t)).map(|t| t.label());
        assert_eq!(
            of(ErrorKind::Auth, "WRONGPASS invalid username-password pair"),
            Some("auth")
        );
        assert_eq!(
            of(ErrorKind::Unknown, "NOAUTH Authentication required."),
            Some("auth")
        );
        assert_eq!(
            of(
                ErrorKind::IO,
                "Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }"
            ),
            Some("tls")
        );
        assert_eq!(
            of(ErrorKind::IO, "Os { code: 111, kind: ConnectionRefused }"),
            Some("unreachable")
        );
        assert_eq!(
            of(
                ErrorKind::Sentinel,
                "Missing primary address in response from sentinel node."
            ),
            Some("sentinel")
        );
        assert_eq!(
            of(
                ErrorKind::Sentinel,
                "Failed to connect to all sentinel nodes."
            ),
            Some("unreachable")
        );
        assert_eq!(of(ErrorKind::Unknown, "ERR Error running script"), None);
        let tls = |t| match Trouble::of(&err(ErrorKind::IO, t)) {
            Some(Trouble::Tls(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(tls("InvalidCertificate(UnknownIssuer)").contains("unknown CA"));
        assert!(tls("InvalidCertificate(NotValidForNameContext { .. })").contains("does not name"));
        assert!(tls("InvalidCertificate(ExpiredContext { .. })").contains("expired"));
        assert!(tls("AlertReceived(CertificateRequired)").contains("client certificate"));
    }

    #[test]
    fn a_denied_command_is_named() {
        let d = |t| denied_command(&err(ErrorKind::Unknown, t));
        assert_eq!(
            d("NOPERM User herald has no permissions to run the 'xread' command").as_deref(),
            Some("XREAD")
        );
        assert_eq!(
            d("ERR Error running script (call to f_1): @user_script:3: NOPERM User herald has no permissions to run the 'zadd' command").as_deref(),
            Some("ZADD")
        );
        assert_eq!(d("WRONGPASS invalid username-password pair"), None);
    }

    #[test]
    fn a_specific_cause_outlives_the_timeouts_it_causes() {
        let d = Diagnosis::default();
        d.note(Trouble::Auth("refused".into()));
        d.note(Trouble::Unreachable("timeout".into()));
        assert_eq!(d.trouble().label(), "auth");
        d.note(Trouble::None);
        assert_eq!(d.trouble(), Trouble::None);
        d.note(Trouble::Unreachable("refused".into()));
        assert_eq!(d.trouble().label(), "unreachable");
        d.denied("read", "XREAD".into());
        assert_eq!(d.denied_now(), vec!["XREAD".to_string()]);
        d.allowed("publish");
        assert_eq!(d.denied_now().len(), 1);
        d.allowed("read");
        assert!(d.denied_now().is_empty());
    }
}
