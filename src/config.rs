//! herald's one typed configuration: every tunable as a flag and a `HERALD_*`
//! environment variable, humane durations (`500ms`, `15s`, `2m`) and sizes
//! (`64KiB`, `1MiB`), with defaults from the contract, validated once at start.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// A high-throughput Server-Sent Events broadcast server.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (every shard binds it with SO_REUSEPORT).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080", value_parser = listen_addr)]
    pub listen: SocketAddr,

    /// Number of shards (threads, one per core); 0 means one per core.
    #[arg(long, env = "HERALD_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// Join a cluster through this Redis; without it herald runs alone with an
    /// in-memory registry. Every URL form of the fred client: `redis://`,
    /// `rediss://` (TLS), `redis-cluster://`, `rediss-cluster://`,
    /// `redis-sentinel://`, `rediss-sentinel://` (`?sentinelServiceName=…&node=…`).
    #[arg(long = "redis", env = "HERALD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// The Redis ACL user (instead of one in the URL).
    #[arg(long, env = "HERALD_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// A file holding the Redis password (a Kubernetes Secret mounted as a
    /// file; one trailing newline is ignored), instead of one in the URL.
    #[arg(long, env = "HERALD_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<std::path::PathBuf>,

    /// PEM certificates of the CA that signed Redis' certificate, trusted
    /// instead of the system roots (`rediss…` URLs).
    #[arg(long, env = "HERALD_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<std::path::PathBuf>,

    /// PEM certificate chain herald presents to Redis (`tls-auth-clients yes`);
    /// with `--redis-tls-key`.
    #[arg(long, env = "HERALD_REDIS_TLS_CERT")]
    pub redis_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of `--redis-tls-cert`.
    #[arg(long, env = "HERALD_REDIS_TLS_KEY")]
    pub redis_tls_key: Option<std::path::PathBuf>,

    /// Prefix of every Redis key of this cluster (pods sharing a prefix form one
    /// cluster; keys are `{prefix}:...`, one hash slot in Redis Cluster).
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = "herald")]
    pub redis_prefix: String,

    /// How long one Redis command may take before it counts as failed.
    #[arg(long, env = "HERALD_REDIS_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub redis_timeout: Duration,

    /// Published events held while Redis is unreachable (sent in order when it
    /// returns; past this, publishes get 503; a batch counts its events).
    #[arg(long, env = "HERALD_PUBLISH_BUFFER", default_value_t = 10_000)]
    pub publish_buffer: usize,

    /// How long the answer to a publish with an `Idempotency-Key` is kept: a
    /// repeat within it gets the same answer and publishes nothing (in a
    /// cluster, also on another pod). `0` keeps none.
    #[arg(long, env = "HERALD_IDEMPOTENCY_WINDOW", default_value = "5m", value_parser = duration)]
    pub idempotency_window: Duration,

    /// Partitions of the cluster's users (cluster mode): each under a Redis hash
    /// tag of its own, so that a Redis Cluster spreads them over its masters.
    /// Every pod of a cluster must use the same number. With more than one, SSE
    /// ids are two-part (`b.p`).
    #[arg(long, env = "HERALD_PARTITIONS", default_value_t = 1)]
    pub partitions: usize,

    /// How long this pod stays subscribed to a topic in Redis after its last
    /// subscriber on the pod left (cluster mode), so that a subscriber who
    /// reconnects does not make the pod leave and join again.
    #[arg(long, env = "HERALD_TOPIC_LINGER", default_value = "5s", value_parser = duration)]
    pub topic_linger: Duration,

    /// How long a user whose last connection ended stays online for presence:
    /// back within it (a page reload, a pod drain), no offline/online pair.
    #[arg(long, env = "HERALD_PRESENCE_LINGER", default_value = "5s", value_parser = duration)]
    pub presence_linger: Duration,

    /// This pod's id (default: hostname plus a short random suffix).
    #[arg(long, env = "HERALD_POD_ID")]
    pub pod_id: Option<String>,

    /// Interval between HEARTBEAT events on every stream.
    #[arg(long, env = "HERALD_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = duration)]
    pub heartbeat_interval: Duration,

    /// A connection whose registry heartbeat is older than this is stale
    /// (cluster mode; default: 3 heartbeat intervals).
    #[arg(long, env = "HERALD_STALE_AFTER", value_parser = duration)]
    pub stale_after: Option<Duration>,

    /// Interval of the cleanup job: expired pending events and history, and in a
    /// cluster, stale connections.
    #[arg(long, env = "HERALD_CLEANUP_INTERVAL", default_value = "30s", value_parser = duration)]
    pub cleanup_interval: Duration,

    /// Events kept for resuming with Last-Event-ID (presence transitions
    /// apart: as many of them again).
    #[arg(long, env = "HERALD_HISTORY_EVENTS", default_value_t = 10_000)]
    pub history_events: usize,

    /// How long an event is kept for resuming: a duration (`10m`, `90s`) or a
    /// bare number of seconds.
    #[arg(long, env = "HERALD_HISTORY_SECONDS", default_value = "600", value_parser = seconds_or_duration)]
    pub history_seconds: Duration,

    /// Bytes of framed events kept for resuming (whichever bound ends first).
    #[arg(long, env = "HERALD_HISTORY_BYTES", default_value = "64MiB", value_parser = size)]
    pub history_bytes: usize,

    /// Pending events kept per offline user (oldest dropped first).
    #[arg(long, env = "HERALD_MAX_PENDING", default_value_t = 100)]
    pub max_pending: usize,

    /// Pending events kept across all users; new ones are refused beyond it.
    #[arg(long, env = "HERALD_MAX_PENDING_TOTAL", default_value_t = 1_000_000)]
    pub max_pending_total: usize,

    /// Open connections allowed on this pod (429 beyond).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 1_000_000)]
    pub max_connections: usize,

    /// Open connections allowed per user (429 beyond; a replacement does not count).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER", default_value_t = 32)]
    pub max_connections_per_user: usize,

    /// Frames a connection may have queued before it is closed as a slow consumer.
    #[arg(long, env = "HERALD_MAX_QUEUE_EVENTS", default_value_t = 1024)]
    pub max_queue_events: usize,

    /// Bytes a connection may have queued before it is closed as a slow consumer.
    #[arg(long, env = "HERALD_MAX_QUEUE_BYTES", default_value = "1MiB", value_parser = size)]
    pub max_queue_bytes: usize,

    /// Largest publish body accepted (413 beyond).
    #[arg(long, env = "HERALD_MAX_BODY", default_value = "64KiB", value_parser = size)]
    pub max_body: usize,

    /// Time allowed for a request's headers to arrive (slowloris defence).
    #[arg(long, env = "HERALD_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,

    /// Largest request head accepted (431 beyond).
    #[arg(long, env = "HERALD_MAX_HEADER_BYTES", default_value = "16KiB", value_parser = size)]
    pub max_header_bytes: usize,

    /// An HTTP/2 connection with no open stream, and a keep-alive HTTP/1.1
    /// publish connection between requests, is closed after this long.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub idle_timeout: Duration,

    /// Request bodies all the connections of one shard may hold at once; past
    /// it a new request with a body is refused (HTTP/1.1 `503`, HTTP/2
    /// `REFUSED_STREAM`) rather than buffered.
    #[arg(long, env = "HERALD_BODY_BUDGET", default_value = "16MiB", value_parser = size)]
    pub body_budget: usize,

    /// Base of the `retry:` reconnect hint sent to every stream.
    #[arg(long, env = "HERALD_RETRY", default_value = "2s", value_parser = duration)]
    pub retry: Duration,

    /// Random extra added to each stream's `retry:` hint, so reconnects spread out.
    #[arg(long, env = "HERALD_RETRY_JITTER", default_value = "3s", value_parser = duration)]
    pub retry_jitter: Duration,

    /// New connections admitted per second on this pod (token bucket; 0: no limit).
    #[arg(long, env = "HERALD_CONNECT_RATE", default_value_t = 50_000)]
    pub connect_rate: u64,

    /// Burst of new connections admitted at once.
    #[arg(long, env = "HERALD_CONNECT_BURST", default_value_t = 10_000)]
    pub connect_burst: u64,

    /// Longest a connect waits for admission before `503`.
    #[arg(long, env = "HERALD_CONNECT_QUEUE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub connect_queue_timeout: Duration,

    /// On SIGTERM/SIGINT: time to end every stream and exit.
    #[arg(long, env = "HERALD_GRACE_PERIOD", default_value = "10s", value_parser = duration)]
    pub grace_period: Duration,

    /// PEM file of the certificate chain (leaf first). With --tls-key, herald
    /// serves HTTPS on --listen, HTTP/2 and HTTP/1.1 by ALPN; both files are read
    /// again on SIGHUP (new handshakes get the new certificate, open streams stay).
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM file of the private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(
        long,
        env = "HERALD_TLS_KEY",
        requires = "tls_cert",
        hide_env_values = true
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// Allow binding a non-loopback address with no publisher credential.
    #[arg(long, env = "HERALD_ALLOW_ANONYMOUS_PUBLISH")]
    pub allow_anonymous_publish: bool,

    /// A publisher bearer token (repeatable, or comma-separated; no commas inside):
    /// publish, disconnect and stats then need `Authorization: Bearer <token>`.
    #[arg(
        long = "publisher-token",
        env = "HERALD_PUBLISHER_TOKEN",
        value_delimiter = ',',
        allow_hyphen_values = true,
        hide_env_values = true
    )]
    pub publisher_tokens: Vec<String>,

    /// HS256 secret: subscribers need a JWT signed with it (`sub` = userId); a JWT
    /// with `"publish": true` is a publisher credential.
    #[arg(
        long,
        env = "HERALD_JWT_SECRET",
        allow_hyphen_values = true,
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// RS256 public key (PEM file path, or the PEM itself): as --jwt-secret, for
    /// tokens signed with the matching private key.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY", allow_hyphen_values = true)]
    pub jwt_public_key: Option<String>,

    /// JWT keys from this JWKS URL (https), as identity providers publish them:
    /// tokens are checked with the key their `kid` names (RS*, PS*, ES256/384).
    /// Instead of --jwt-secret / --jwt-public-key.
    #[arg(long = "jwt-jwks-url", env = "HERALD_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// How often the --jwt-jwks-url set is fetched again (also at once, at most
    /// once a second, when a token names a key id it lacks).
    #[arg(long = "jwt-jwks-refresh", env = "HERALD_JWT_JWKS_REFRESH", default_value = "10m", value_parser = duration)]
    pub jwt_jwks_refresh: Duration,

    /// Audience a JWT must name in `aud` (repeatable, or comma-separated:
    /// any of them). Unset: `aud` is not checked.
    #[arg(
        long = "jwt-audience",
        env = "HERALD_JWT_AUDIENCE",
        value_delimiter = ','
    )]
    pub jwt_audience: Vec<String>,

    /// Issuer a JWT must name in `iss` (repeatable, or comma-separated: any of
    /// them). Unset: `iss` is not checked.
    #[arg(long = "jwt-issuer", env = "HERALD_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,

    /// Clock skew allowed when checking a token's `exp` and `nbf`.
    #[arg(long, env = "HERALD_JWT_LEEWAY", default_value = "5s", value_parser = duration)]
    pub jwt_leeway: Duration,

    /// An origin browsers may call herald from (repeatable; comma-separated in the
    /// environment), e.g. `https://app.example.com`. None by default: no CORS.
    #[arg(
        long = "cors-origin",
        env = "HERALD_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info`, `herald=debug`.
    #[arg(long, env = "HERALD_LOG", default_value = "info", value_parser = log_filter)]
    pub log: String,

    /// Check the liveness of the herald listening on `--listen` (0.0.0.0 means
    /// this host) and exit 0 if it answers `200`, 1 otherwise: a HEALTHCHECK for
    /// images with no shell or curl.
    #[arg(long)]
    pub health_check: bool,

    /// Log line format: `text` (colours only when stderr is a terminal) or
    /// `json` (one JSON object per line, for log collectors).
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The process's configuration: flags, then `HERALD_*` variables. A variable
    /// set to the empty string counts as unset (compose files and Helm values
    /// often leave one empty meaning "not set"), whatever its kind of value:
    /// clap reads the environment itself, so empty ones are removed from the
    /// process environment first. Call before any thread starts.
    pub fn from_process() -> Self {
        for (name, value) in std::env::vars_os() {
            if value.is_empty() && name.to_string_lossy().starts_with("HERALD_") {
                std::env::remove_var(&name);
            }
        }
        Config::parse()
    }

    /// Defaults, as if run with no flags (for tests and embedding).
    pub fn defaults() -> Self {
        Config::parse_from(["herald"])
    }

    /// Shards to run: the flag, or one per core.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    pub fn stale_after(&self) -> Duration {
        self.stale_after.unwrap_or(self.heartbeat_interval * 3)
    }

    /// How often presence looks for users whose linger has passed.
    pub fn presence_tick(&self) -> Duration {
        (self.presence_linger / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// Check cross-field rules; the message says how to fix it.
    /// Whether publishing needs a credential (a publisher token or a JWT key).
    pub fn publisher_auth(&self) -> bool {
        !self.publisher_tokens.is_empty()
            || self.jwt_secret.is_some()
            || self.jwt_public_key.is_some()
            || self.jwt_jwks_url.is_some()
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback()
            && !self.publisher_auth()
            && !self.allow_anonymous_publish
        {
            return Err(format!(
                "refusing to listen on non-loopback address {} with no publisher credential: \
                 anyone could publish. Set --publisher-token (HERALD_PUBLISHER_TOKEN) or \
                 --jwt-secret / --jwt-public-key, listen on 127.0.0.1, or pass \
                 --allow-anonymous-publish (HERALD_ALLOW_ANONYMOUS_PUBLISH=true) if a proxy \
                 guards /api/broadcast",
                self.listen
            ));
        }
        let keys = [
            self.jwt_secret.is_some(),
            self.jwt_public_key.is_some(),
            self.jwt_jwks_url.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() > 1 {
            return Err(
                "--jwt-secret, --jwt-public-key and --jwt-jwks-url: give one of them".into(),
            );
        }
        if self.jwt_secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err("--jwt-secret must be at least 16 bytes".into());
        }
        if self.publisher_tokens.iter().any(|t| t.len() < 16) {
            return Err("--publisher-token must be at least 16 characters".into());
        }
        for o in &self.cors_origins {
            if o == "*"
                || !(o.starts_with("http://") || o.starts_with("https://"))
                || o.ends_with('/')
            {
                return Err(format!(
                    "--cors-origin {o:?}: give an origin like https://app.example.com (no `*`, no path)"
                ));
            }
        }
        if self.heartbeat_interval.is_zero() {
            return Err("--heartbeat-interval must be greater than 0".into());
        }
        if self.cleanup_interval.is_zero() {
            return Err("--cleanup-interval must be greater than 0".into());
        }
        if !(1..=255).contains(&self.partitions) {
            return Err("--partitions must be between 1 and 255".into());
        }
        if self.shard_count() > 1024 {
            return Err("--shards must be at most 1024".into());
        }
        if self.max_queue_events == 0 || self.max_queue_bytes == 0 {
            return Err("--max-queue-events and --max-queue-bytes must be greater than 0".into());
        }
        if let Some(url) = &self.redis_url {
            crate::cluster::connect::check_url(url)?;
            let ok = |c: char| c.is_ascii_alphanumeric() || "._:@-".contains(c);
            if self.redis_prefix.is_empty()
                || self.redis_prefix.len() > 64
                || !self.redis_prefix.chars().all(ok)
            {
                return Err("--redis-prefix: 1-64 characters of [A-Za-z0-9._:@-]".into());
            }
            if self.stale_after() < self.heartbeat_interval {
                return Err("--stale-after must be at least one --heartbeat-interval".into());
            }
        }
        if let Some(id) = &self.pod_id {
            let ok = |c: char| c.is_ascii_alphanumeric() || "._:@-".contains(c);
            if id.is_empty() || id.len() > 128 || !id.chars().all(ok) {
                return Err("--pod-id: 1-128 characters of [A-Za-z0-9._:@-]".into());
            }
        }
        if !(1024..=1 << 20).contains(&self.max_header_bytes) {
            return Err("--max-header-bytes must be between 1KiB and 1MiB".into());
        }
        if self.max_body > 64 << 20 {
            return Err("--max-body must be at most 64MiB".into());
        }
        if self.body_budget < self.max_body {
            return Err("--body-budget must be at least --max-body".into());
        }
        if self.idle_timeout.is_zero() || self.header_timeout.is_zero() {
            return Err("--idle-timeout and --header-timeout must be greater than 0".into());
        }
        Ok(())
    }

    /// The pod id: the flag, or hostname plus a short random suffix.
    pub fn resolved_pod_id(&self) -> String {
        if let Some(id) = &self.pod_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "herald".into());
        format!("{host}-{:06x}", fastrand::u32(..0x100_0000))
    }
}

/// Parse `500ms`, `15s`, `2m`, `1h 30m`.
/// `--listen`: `IP:PORT`, or `HOST:PORT` with a host name resolved now (its
/// first address; `localhost:8080` is `127.0.0.1:8080` where the resolver puts
/// IPv4 first).
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: not an address (HOST:PORT or IP:PORT): {e}"))?;
    let first = addrs
        .next()
        .ok_or_else(|| format!("{s:?}: resolves to no address"))?;
    // One address: the shards bind it; an IPv4 one first, as most clients try.
    Ok(std::iter::once(first)
        .chain(addrs)
        .find(SocketAddr::is_ipv4)
        .unwrap_or(first))
}

/// `--log`: a `tracing` filter that parses (a typo is refused at start rather
/// than silently replaced by `info`).
pub fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{s:?}: not a log filter ({e}); e.g. info, herald=debug,fred=warn"))
}

pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 500ms, 15s, 2m)"))
}

/// Parse a duration, or a bare number of seconds (`600` = `10m`).
pub fn seconds_or_duration(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => duration(s),
    }
}

/// Parse `65536`, `64KiB`, `64kb`, `1MiB`, `1m`.
pub fn size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (write sizes like 65536, 64KiB, 1MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?} (use B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(c.stale_after(), Duration::from_secs(45));
        assert_eq!(c.history_events, 10_000);
        assert_eq!(c.history_seconds, Duration::from_secs(600));
        assert_eq!(c.max_body, 64 << 10);
        assert_eq!(c.grace_period, Duration::from_secs(10));
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.max_header_bytes, 16 << 10);
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.body_budget, 16 << 20);
        c.validate().unwrap();
    }

    #[test]
    fn humane_values() {
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(size("64KiB").unwrap(), 65536);
        assert_eq!(size("1MiB").unwrap(), 1 << 20);
        assert_eq!(size("100").unwrap(), 100);
        assert!(size("12parsecs").is_err());
        assert_eq!(seconds_or_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(seconds_or_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(
            seconds_or_duration("10m").unwrap(),
            Duration::from_secs(600)
        );
        assert!(seconds_or_duration("ten").is_err());
        let c = Config::parse_from(["herald", "--history-seconds", "2s"]);
        assert_eq!(c.history_seconds, Duration::from_secs(2));
    }

    #[test]
    fn non_loopback_needs_explicit_consent() {
        let c = Config::parse_from(["herald", "--listen", "0.0.0.0:8080"]);
        assert!(c
            .validate()
            .unwrap_err()
            .contains("--allow-anonymous-publish"));
        let c = Config::parse_from([
            "herald",
            "--listen",
            "0.0.0.0:8080",
            "--allow-anonymous-publish",
        ]);
        c.validate().unwrap();
        let c = Config::parse_from([
            "herald",
            "--listen",
            "0.0.0.0:8080",
            "--publisher-token",
            "0123456789abcdef-token",
        ]);
        c.validate().unwrap();
    }
}
