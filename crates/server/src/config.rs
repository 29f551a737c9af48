//! `postcache serve`'s configuration, in groups (database, Redis, cache, realtime, HTTP,
//! telemetry). Every flag has an environment twin `POSTCACHE_*` (the operator writes those; a test
//! ties each one it writes to a flag here). Values are checked as they are parsed: durations
//! arrive as [`Duration`] (the flag's unit is in its name), URLs by their scheme, and secrets
//! never show in `Debug`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser as _;

/// Output format of the logs (`--log-format`, global to every command).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options every `postcache` command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Log output format.
    #[arg(long, global = true, env = "POSTCACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Options of `postcache serve`. With none set it runs the embedded default: SQLite file
/// `./postcache.db` on 127.0.0.1:8080.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Listening, access and the life of requests.
    #[command(flatten)]
    pub http: HttpArgs,
    /// The database tier (L3).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The shared tier on Redis (L2, event log, leases, view counters).
    #[command(flatten)]
    pub redis: RedisArgs,
    /// This process's cache (L1) and view counters.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// The event log and the realtime streams.
    #[command(flatten)]
    pub realtime: RealtimeArgs,
    /// Traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Listening, access and the life of requests.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    /// Address to listen on. Anything but loopback requires API tokens (or --insecure-no-auth).
    #[arg(long, env = "POSTCACHE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Bearer tokens accepted for writes and admin calls (comma-separated).
    #[arg(
        long,
        env = "POSTCACHE_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_tokens: Vec<Secret>,

    /// File with more tokens, one per line (e.g. a mounted Secret).
    #[arg(long, env = "POSTCACHE_API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,

    /// Allow listening beyond loopback without API tokens.
    #[arg(long, env = "POSTCACHE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Keys that sign consistency tokens (comma-separated, at least 16 bytes each). The first
    /// signs; all verify (rotate by putting the new key first). Without any, a key kept in the
    /// database signs, shared by every process on it.
    #[arg(
        long,
        env = "POSTCACHE_TOKEN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub token_keys: Vec<Secret>,

    /// File with more token keys, one per line (e.g. a mounted Secret).
    #[arg(long, env = "POSTCACHE_TOKEN_KEYS_FILE")]
    pub token_keys_file: Option<PathBuf>,

    /// Longest time a request (other than the realtime streams) may take, in milliseconds; past
    /// it the answer is 503 with `Retry-After` (0: no limit).
    #[arg(id = "request_timeout_ms", long = "request-timeout-ms", env = "POSTCACHE_REQUEST_TIMEOUT_MS",
        default_value = "10000", value_parser = millis(0))]
    pub request_timeout: Duration,

    /// Requests per second per client IP; 0 turns rate limiting off.
    #[arg(long, env = "POSTCACHE_RATE_LIMIT_PER_SECOND", default_value_t = 500)]
    pub rate_limit_per_second: u32,

    /// Requests a client may burst above the rate.
    #[arg(long, env = "POSTCACHE_RATE_LIMIT_BURST", default_value_t = 1000)]
    pub rate_limit_burst: u32,

    /// Networks of reverse proxies (CIDR, comma-separated, e.g. `10.0.0.0/8`). Only a peer in
    /// them is believed about the client's address (`Forwarded`, else `X-Forwarded-For`): rate
    /// limits and realtime caps then apply per real client, not per proxy.
    #[arg(long, env = "POSTCACHE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Origins whose browser pages may call the API (comma-separated, each `scheme://host[:port]`,
    /// e.g. `https://app.example.com`; `*` for any origin). Preflights are answered before
    /// authentication; responses expose `ETag`, `Location`, `Retry-After` and the
    /// `X-PostCache-*` headers. None (the default) sends no CORS headers.
    #[arg(long, env = "POSTCACHE_CORS_ORIGINS", value_delimiter = ',', value_parser = crate::cors::parse_origin)]
    pub cors_origins: Vec<String>,

    /// On SIGTERM, how long in-flight requests may take before the process exits anyway, in
    /// seconds.
    #[arg(id = "shutdown_grace_seconds", long = "shutdown-grace-seconds", env = "POSTCACHE_SHUTDOWN_GRACE_SECONDS",
        default_value = "25", value_parser = seconds(0))]
    pub shutdown_grace: Duration,

    /// On SIGTERM, how long `/readyz` fails while the process still serves, so that load
    /// balancers stop sending before the listener closes (Kubernetes: a few seconds), in seconds.
    #[arg(id = "drain_delay_seconds", long = "drain-delay-seconds", env = "POSTCACHE_DRAIN_DELAY_SECONDS",
        default_value = "0", value_parser = seconds(0))]
    pub drain_delay: Duration,
}

/// The database tier (L3).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseArgs {
    /// The primary database: `sqlite:<file>` (the embedded default) or `postgres://…`.
    #[arg(
        id = "database_url", long = "database-url",
        env = "POSTCACHE_DATABASE_URL",
        default_value = "sqlite:postcache.db",
        hide_env_values = true,
        value_parser = DatabaseUrl::parse
    )]
    pub url: DatabaseUrl,

    /// Read replicas of the primary (`postgres://…`, comma-separated). Reads go to one that has
    /// replayed what the caller needs, else to the primary.
    #[arg(
        id = "replica_urls", long = "replica-urls",
        env = "POSTCACHE_REPLICA_URLS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = DatabaseUrl::parse_postgres
    )]
    pub replica_urls: Vec<DatabaseUrl>,

    /// Replicas further behind the primary than this take no reads, in seconds.
    #[arg(id = "max_replica_lag_seconds", long = "max-replica-lag-seconds", env = "POSTCACHE_MAX_REPLICA_LAG_SECONDS",
        default_value = "10", value_parser = seconds(1))]
    pub max_replica_lag: Duration,

    /// Most connections to the database.
    #[arg(id = "db_max_connections", long = "db-max-connections", env = "POSTCACHE_DB_MAX_CONNECTIONS", default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// How long a request waits for a free database connection before it gets 503, in
    /// milliseconds.
    #[arg(id = "db_acquire_timeout_ms", long = "db-acquire-timeout-ms", env = "POSTCACHE_DB_ACQUIRE_TIMEOUT_MS",
        default_value = "2000", value_parser = millis(1))]
    pub acquire_timeout: Duration,

    /// PostgreSQL's `statement_timeout` for every session, in milliseconds: a statement a slow
    /// server has not finished by then is cancelled and the request gets 503 (0: the server's
    /// setting).
    #[arg(id = "db_statement_timeout_ms", long = "db-statement-timeout-ms", env = "POSTCACHE_DB_STATEMENT_TIMEOUT_MS",
        default_value = "5000", value_parser = millis(0))]
    pub statement_timeout: Duration,

    /// How long start-up keeps retrying a PostgreSQL primary that does not answer yet, in
    /// seconds (0: for ever). Meanwhile `/healthz` answers and `/readyz` says "starting".
    #[arg(id = "db_connect_timeout_seconds", long = "db-connect-timeout-seconds", env = "POSTCACHE_DB_CONNECT_TIMEOUT_SECONDS",
        default_value = "0", value_parser = seconds(0))]
    pub connect_timeout: Duration,
}

/// The shared tier (L2, the event log, leases and view counters).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisArgs {
    /// Redis (`redis://…` standalone, or a comma-separated list of Cluster nodes with
    /// `--redis-cluster`): L2, the shared event log, leases and view counters. With it, several
    /// processes serve one consistent set of posts and realtime events.
    #[arg(
        id = "redis_url", long = "redis-url",
        env = "POSTCACHE_REDIS_URL",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = RedisUrl::parse
    )]
    pub urls: Vec<RedisUrl>,

    /// CA certificates (PEM file) to trust for `rediss://` nodes instead of the public roots.
    #[arg(
        id = "redis_ca_file",
        long = "redis-ca-file",
        env = "POSTCACHE_REDIS_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,

    /// The Redis nodes are a Redis Cluster.
    #[arg(
        id = "redis_cluster",
        long = "redis-cluster",
        env = "POSTCACHE_REDIS_CLUSTER"
    )]
    pub cluster: bool,

    /// Longest wait for one Redis reply, in milliseconds; after a failure Redis is skipped
    /// briefly instead of waited for.
    #[arg(id = "redis_timeout_ms", long = "redis-timeout-ms", env = "POSTCACHE_REDIS_TIMEOUT_MS",
        default_value = "250", value_parser = millis(1))]
    pub timeout: Duration,

    /// Lifetime of a post in L2 (Redis), in seconds.
    #[arg(id = "l2_ttl_seconds", long = "l2-ttl-seconds", env = "POSTCACHE_L2_TTL_SECONDS",
        default_value = "600", value_parser = seconds(1))]
    pub post_ttl: Duration,

    /// Lifetime of a feed page in L2, in seconds (generations invalidate it earlier).
    #[arg(id = "l2_feed_ttl_seconds", long = "l2-feed-ttl-seconds", env = "POSTCACHE_L2_FEED_TTL_SECONDS",
        default_value = "60", value_parser = seconds(1))]
    pub feed_ttl: Duration,

    /// How long one pod may load a missing post while the others wait for its fill, in
    /// milliseconds (bounds database loads per hot key).
    #[arg(id = "fill_lease_ms", long = "fill-lease-ms", env = "POSTCACHE_FILL_LEASE_MS",
        default_value = "500", value_parser = millis(1))]
    pub fill_lease: Duration,

    /// With Redis: the staleness bound Δ, in milliseconds. A pod that has not heard from the event
    /// log for this long stops answering from its memory (serves L2/L3) until it hears again.
    #[arg(id = "staleness_bound_ms", long = "staleness-bound-ms", env = "POSTCACHE_STALENESS_BOUND_MS",
        default_value = "1000", value_parser = millis(40))]
    pub staleness_bound: Duration,
}

/// This process's own cache (L1) and its view counters.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Cache")]
pub struct CacheArgs {
    /// Most posts (and, separately, feed pages) held in this process's cache.
    #[arg(id = "l1_max_entries", long = "l1-max-entries", env = "POSTCACHE_L1_MAX_ENTRIES", default_value_t = 100_000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub max_entries: u64,

    /// Most bytes of posts (and, separately, of feed pages) held in this process's cache.
    #[arg(id = "l1_max_bytes", long = "l1-max-bytes", env = "POSTCACHE_L1_MAX_BYTES", default_value_t = 256 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_bytes: u64,

    /// Safety-net lifetime of an in-process cache entry, in seconds.
    #[arg(id = "l1_ttl_seconds", long = "l1-ttl-seconds", env = "POSTCACHE_L1_TTL_SECONDS",
        default_value = "60", value_parser = seconds(1))]
    pub ttl: Duration,

    /// How often buffered view counts are flushed to the database (the loss window on a crash),
    /// in milliseconds.
    #[arg(id = "views_flush_ms", long = "views-flush-ms", env = "POSTCACHE_VIEWS_FLUSH_MS",
        default_value = "1000", value_parser = millis(1))]
    pub views_flush: Duration,
}

/// The event log and the realtime streams.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Realtime")]
pub struct RealtimeArgs {
    /// Events the in-process event log keeps for subscribers that reconnect (`Last-Event-ID`);
    /// one that was away longer gets a `resync`.
    #[arg(id = "eventlog_retention", long = "eventlog-retention", env = "POSTCACHE_EVENTLOG_RETENTION", default_value_t = 10_000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub retention: usize,

    /// Most bytes of events the in-process event log keeps (whichever bound is reached first).
    #[arg(id = "eventlog_max_bytes", long = "eventlog-max-bytes", env = "POSTCACHE_EVENTLOG_MAX_BYTES", default_value_t = 64 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1024..))]
    pub log_max_bytes: u64,

    /// Events a realtime subscriber may fall behind before it gets a `resync` and is closed.
    #[arg(id = "realtime_queue", long = "realtime-queue", env = "POSTCACHE_REALTIME_QUEUE", default_value_t = 1024,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub queue: usize,

    /// Serve realtime streams (`/v1/events`, `/v1/ws`); `false` answers them with 503.
    #[arg(
        id = "realtime_enabled", long = "realtime-enabled",
        env = "POSTCACHE_REALTIME_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub enabled: bool,

    /// Most WebSocket and SSE connections this process serves at once; more get 503.
    #[arg(
        id = "realtime_max_connections",
        long = "realtime-max-connections",
        env = "POSTCACHE_REALTIME_MAX_CONNECTIONS",
        default_value_t = 50_000
    )]
    pub max_connections: usize,

    /// Most WebSocket and SSE connections one client address holds at once; more get 429.
    #[arg(id = "realtime_max_per_client", long = "realtime-max-per-client", env = "POSTCACHE_REALTIME_MAX_PER_CLIENT", default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_client: u32,

    /// A realtime connection is closed after this many seconds (clients resume where they
    /// were); spreads reconnections across pods after a scale-out (0: no limit).
    #[arg(id = "realtime_max_age_seconds", long = "realtime-max-age-seconds", env = "POSTCACHE_REALTIME_MAX_AGE_SECONDS",
        default_value = "3600", value_parser = seconds(0))]
    pub max_age: Duration,

    /// A realtime client that has not taken one event (or ping) within this many milliseconds is
    /// disconnected.
    #[arg(id = "realtime_send_timeout_ms", long = "realtime-send-timeout-ms", env = "POSTCACHE_REALTIME_SEND_TIMEOUT_MS",
        default_value = "10000", value_parser = millis(1))]
    pub send_timeout: Duration,
}

/// Traces.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Telemetry")]
pub struct TelemetryArgs {
    /// OpenTelemetry collector base URL (OTLP over HTTP, e.g. `http://otel-collector:4318`); spans
    /// are exported to `{url}/v1/traces` when set.
    #[arg(long, env = "POSTCACHE_OTLP_ENDPOINT", value_parser = parse_http_url)]
    pub otlp_endpoint: Option<String>,

    /// CA certificates (PEM file) an `https://` collector must chain to, instead of the public
    /// roots (a private CA).
    #[arg(long, env = "POSTCACHE_OTLP_CA_FILE")]
    pub otlp_ca_file: Option<PathBuf>,
}

/// A value that must never be shown: `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A database URL whose scheme was checked at start: `sqlite:` or `postgres(ql):`. `Debug`
/// shows only the scheme (the URL may carry a password).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    fn parse(url: &str) -> Result<DatabaseUrl, String> {
        if url.starts_with("sqlite:") {
            Ok(DatabaseUrl(url.to_owned()))
        } else {
            DatabaseUrl::parse_postgres(url)
        }
    }

    fn parse_postgres(url: &str) -> Result<DatabaseUrl, String> {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(DatabaseUrl(url.to_owned()))
        } else {
            Err(format!(
                "`{}…` is not a database URL (sqlite:<file> for the primary, postgres://… for either)",
                url.chars().take(12).collect::<String>()
            ))
        }
    }

    /// The URL, for the driver.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `sqlite` or `postgres`: safe to log.
    pub fn kind(&self) -> &'static str {
        if self.0.starts_with("sqlite:") {
            "sqlite"
        } else {
            "postgres"
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.kind())
    }
}

/// A Redis node's URL whose scheme was checked at start (`redis://`, `rediss://` for TLS,
/// `redis+unix://` or `unix://` for a socket).
/// `Debug` shows only the scheme.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    fn parse(url: &str) -> Result<RedisUrl, String> {
        let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
        if schemes.iter().any(|scheme| url.starts_with(scheme)) {
            Ok(RedisUrl(url.to_owned()))
        } else {
            Err("a Redis node is `redis://[user:password@]host:port` (`rediss://` for TLS, `redis+unix://` for a socket)".into())
        }
    }

    /// The URL, for the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.0.split(':').next().unwrap_or_default();
        write!(f, "RedisUrl({scheme})")
    }
}

fn parse_http_url(url: &str) -> Result<String, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.trim_end_matches('/').to_owned())
    } else {
        Err("an OTLP endpoint is an `http://` or `https://` URL".into())
    }
}

/// A whole number of milliseconds, at least `min`, as a [`Duration`].
fn millis(min: u64) -> impl clap::builder::TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(min..)
        .map(Duration::from_millis)
}

/// A whole number of seconds, at least `min`, as a [`Duration`].
fn seconds(min: u64) -> impl clap::builder::TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(min..)
        .map(Duration::from_secs)
}

/// `None` for a zero duration (the options where 0 turns a limit off).
pub(crate) fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

impl ServeArgs {
    /// Checks what single flags cannot: relations between values.
    ///
    /// # Errors
    /// A message naming the flags that disagree.
    pub fn validate(&self) -> Result<(), String> {
        let http = &self.http;
        if http.rate_limit_per_second > 0 && http.rate_limit_burst == 0 {
            return Err("--rate-limit-burst (POSTCACHE_RATE_LIMIT_BURST) must be at least 1 when rate limiting is on".into());
        }
        if self.redis.feed_ttl > self.redis.post_ttl {
            return Err(format!(
                "--l2-feed-ttl-seconds ({}) must not exceed --l2-ttl-seconds ({})",
                self.redis.feed_ttl.as_secs(),
                self.redis.post_ttl.as_secs()
            ));
        }
        if self.redis.cluster && self.redis.urls.is_empty() {
            return Err("--redis-cluster needs --redis-url (POSTCACHE_REDIS_URL)".into());
        }
        if let Some(timeout) = nonzero(http.request_timeout)
            && timeout < self.database.acquire_timeout
        {
            return Err(format!(
                "--request-timeout-ms ({}) must be at least --db-acquire-timeout-ms ({}): a request would time out before it could get a connection",
                timeout.as_millis(),
                self.database.acquire_timeout.as_millis()
            ));
        }
        Ok(())
    }

    /// Rate limit as (per second, burst); `None` when turned off.
    pub fn rate_limit(&self) -> Option<(NonZeroU32, NonZeroU32)> {
        let rate = NonZeroU32::new(self.http.rate_limit_per_second)?;
        Some((
            rate,
            NonZeroU32::new(self.http.rate_limit_burst).unwrap_or(rate),
        ))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let cli = Cli::parse_from([
            "postcache",
            "--database-url",
            "postgres://app:hunter2@db/posts",
            "--replica-urls",
            "postgres://app:hunter3@replica/posts",
            "--redis-url",
            "redis://:redispass@cache:6379",
            "--api-tokens",
            "tok-secret",
            "--token-keys",
            "key-secret-0123456789",
        ]);
        let shown = format!("{:?}", cli.serve);
        for secret in [
            "hunter2",
            "hunter3",
            "redispass",
            "tok-secret",
            "key-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("postgres"), "{shown}");
    }

    #[test]
    fn durations_arrive_in_the_unit_the_flag_names() {
        let cli = Cli::parse_from([
            "postcache",
            "--redis-timeout-ms",
            "75",
            "--l2-ttl-seconds",
            "90",
            "--realtime-max-age-seconds",
            "0",
        ]);
        assert_eq!(cli.serve.redis.timeout, Duration::from_millis(75));
        assert_eq!(cli.serve.redis.post_ttl, Duration::from_secs(90));
        assert_eq!(
            nonzero(cli.serve.realtime.max_age),
            None,
            "0 turns the limit off"
        );
        let defaults = Cli::parse_from(["postcache"]);
        assert_eq!(defaults.serve.redis.staleness_bound, Duration::from_secs(1));
        assert_eq!(defaults.serve.database.url.kind(), "sqlite");
    }

    #[test]
    fn bad_urls_and_out_of_range_durations_are_refused_at_start() {
        for args in [
            &["--database-url", "mysql://db/posts"][..],
            &["--replica-urls", "sqlite:replica.db"],
            &["--redis-url", "cache:6379"],
            &["--otlp-endpoint", "otel:4318"],
            &["--staleness-bound-ms", "39"],
            &["--redis-timeout-ms", "0"],
        ] {
            let parsed =
                Cli::try_parse_from(std::iter::once("postcache").chain(args.iter().copied()));
            let error = parsed
                .err()
                .unwrap_or_else(|| panic!("{args:?} was accepted"));
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}: {error}"
            );
        }
    }
}
