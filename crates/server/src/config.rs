//! `postcache serve`'s configuration: every flag has an environment twin `POSTCACHE_*`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of `postcache serve`. With none set it runs the embedded default: SQLite file
/// `./postcache.db` on 127.0.0.1:8080.
#[derive(Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback requires API tokens (or --insecure-no-auth).
    #[arg(long, env = "POSTCACHE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The primary database: `sqlite:<file>` (the embedded default) or `postgres://…`.
    #[arg(
        long,
        env = "POSTCACHE_DATABASE_URL",
        default_value = "sqlite:postcache.db",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Read replicas of the primary (`postgres://…`, comma-separated). Reads go to one that has
    /// replayed what the caller needs, else to the primary.
    #[arg(
        long,
        env = "POSTCACHE_REPLICA_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub replica_urls: Vec<String>,

    /// Replicas further behind the primary than this take no reads, in seconds.
    #[arg(long, env = "POSTCACHE_MAX_REPLICA_LAG_SECONDS", default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub max_replica_lag_seconds: u64,

    /// Redis (`redis://…` standalone, or a comma-separated list of Cluster nodes with
    /// `--redis-cluster`): L2, the shared event log, leases and view counters. With it, several
    /// processes serve one consistent set of posts and realtime events.
    #[arg(
        long,
        env = "POSTCACHE_REDIS_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_url: Vec<String>,

    /// CA certificates (PEM file) to trust for `rediss://` nodes instead of the public roots.
    #[arg(long, env = "POSTCACHE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// The Redis nodes are a Redis Cluster.
    #[arg(long, env = "POSTCACHE_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// Longest wait for one Redis reply, in milliseconds; after a failure Redis is skipped
    /// briefly instead of waited for.
    #[arg(long, env = "POSTCACHE_REDIS_TIMEOUT_MS", default_value_t = 250,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_timeout_ms: u64,

    /// Lifetime of a post in L2 (Redis), in seconds.
    #[arg(long, env = "POSTCACHE_L2_TTL_SECONDS", default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub l2_ttl_seconds: u64,

    /// Lifetime of a feed page in L2, in seconds (generations invalidate it earlier).
    #[arg(long, env = "POSTCACHE_L2_FEED_TTL_SECONDS", default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub l2_feed_ttl_seconds: u64,

    /// How long one pod may load a missing post while the others wait for its fill, in
    /// milliseconds (bounds database loads per hot key).
    #[arg(long, env = "POSTCACHE_FILL_LEASE_MS", default_value_t = 500,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub fill_lease_ms: u64,

    /// With Redis: the staleness bound Δ, in milliseconds. A pod that has not heard from the event
    /// log for this long stops answering from its memory (serves L2/L3) until it hears again.
    #[arg(long, env = "POSTCACHE_STALENESS_BOUND_MS", default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(40..))]
    pub staleness_bound_ms: u64,

    /// Most connections to the database.
    #[arg(long, env = "POSTCACHE_DB_MAX_CONNECTIONS", default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub db_max_connections: u32,

    /// How long a request waits for a free database connection before it gets 503.
    #[arg(long, env = "POSTCACHE_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub db_acquire_timeout_ms: u64,

    /// PostgreSQL's `statement_timeout` for every session, in milliseconds: a statement a slow
    /// server has not finished by then is cancelled and the request gets 503 (0: the server's
    /// setting).
    #[arg(
        long,
        env = "POSTCACHE_DB_STATEMENT_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub db_statement_timeout_ms: u64,

    /// How long start-up keeps retrying a PostgreSQL primary that does not answer yet, in
    /// seconds (0: for ever). Meanwhile `/healthz` answers and `/readyz` says "starting".
    #[arg(
        long,
        env = "POSTCACHE_DB_CONNECT_TIMEOUT_SECONDS",
        default_value_t = 0
    )]
    pub db_connect_timeout_seconds: u64,

    /// Longest time a request (other than the realtime streams) may take, in milliseconds; past
    /// it the answer is 503 with `Retry-After` (0: no limit).
    #[arg(long, env = "POSTCACHE_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Bearer tokens accepted for writes and admin calls (comma-separated).
    #[arg(
        long,
        env = "POSTCACHE_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_tokens: Vec<String>,

    /// File with more tokens, one per line (e.g. a mounted Secret).
    #[arg(long, env = "POSTCACHE_API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,

    /// Allow listening beyond loopback without API tokens.
    #[arg(long, env = "POSTCACHE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Most posts (and, separately, feed pages) held in this process's cache.
    #[arg(long, env = "POSTCACHE_L1_MAX_ENTRIES", default_value_t = 100_000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub l1_max_entries: u64,

    /// Most bytes of posts (and, separately, of feed pages) held in this process's cache.
    #[arg(long, env = "POSTCACHE_L1_MAX_BYTES", default_value_t = 256 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1024..))]
    pub l1_max_bytes: u64,

    /// Safety-net lifetime of an in-process cache entry, in seconds.
    #[arg(long, env = "POSTCACHE_L1_TTL_SECONDS", default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub l1_ttl_seconds: u64,

    /// Requests per second per client IP; 0 turns rate limiting off.
    #[arg(long, env = "POSTCACHE_RATE_LIMIT_PER_SECOND", default_value_t = 500)]
    pub rate_limit_per_second: u32,

    /// Requests a client may burst above the rate.
    #[arg(long, env = "POSTCACHE_RATE_LIMIT_BURST", default_value_t = 1000)]
    pub rate_limit_burst: u32,

    /// How often buffered view counts are flushed to the database (the loss window on a crash).
    #[arg(long, env = "POSTCACHE_VIEWS_FLUSH_MS", default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub views_flush_ms: u64,

    /// Events the in-process event log keeps for subscribers that reconnect (`Last-Event-ID`);
    /// one that was away longer gets a `resync`.
    #[arg(long, env = "POSTCACHE_EVENTLOG_RETENTION", default_value_t = 10_000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub eventlog_retention: usize,

    /// Most bytes of events the in-process event log keeps (whichever bound is reached first).
    #[arg(long, env = "POSTCACHE_EVENTLOG_MAX_BYTES", default_value_t = 64 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1024..))]
    pub eventlog_max_bytes: u64,

    /// Events a realtime subscriber may fall behind before it gets a `resync` and is closed.
    #[arg(long, env = "POSTCACHE_REALTIME_QUEUE", default_value_t = 1024,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub realtime_queue: usize,

    /// Serve realtime streams (`/v1/events`, `/v1/ws`); `false` answers them with 503.
    #[arg(
        long,
        env = "POSTCACHE_REALTIME_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub realtime_enabled: bool,

    /// Most WebSocket and SSE connections this process serves at once; more get 503.
    #[arg(
        long,
        env = "POSTCACHE_REALTIME_MAX_CONNECTIONS",
        default_value_t = 50_000
    )]
    pub realtime_max_connections: usize,

    /// Most WebSocket and SSE connections one client address holds at once; more get 429.
    #[arg(long, env = "POSTCACHE_REALTIME_MAX_PER_CLIENT", default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub realtime_max_per_client: u32,

    /// A realtime connection is closed after this many seconds (clients resume where they
    /// were); spreads reconnections across pods after a scale-out (0: no limit).
    #[arg(
        long,
        env = "POSTCACHE_REALTIME_MAX_AGE_SECONDS",
        default_value_t = 3600
    )]
    pub realtime_max_age_seconds: u64,

    /// A realtime client that has not taken one event (or ping) within this many milliseconds is
    /// disconnected.
    #[arg(long, env = "POSTCACHE_REALTIME_SEND_TIMEOUT_MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub realtime_send_timeout_ms: u64,

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

    /// Keys that sign consistency tokens (comma-separated, at least 16 bytes each). The first
    /// signs; all verify (rotate by putting the new key first). Without any, a key kept in the
    /// database signs, shared by every process on it.
    #[arg(
        long,
        env = "POSTCACHE_TOKEN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub token_keys: Vec<String>,

    /// File with more token keys, one per line (e.g. a mounted Secret).
    #[arg(long, env = "POSTCACHE_TOKEN_KEYS_FILE")]
    pub token_keys_file: Option<PathBuf>,

    /// On SIGTERM, how long in-flight requests may take before the process exits anyway.
    #[arg(long, env = "POSTCACHE_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,

    /// On SIGTERM, how long `/readyz` fails while the process still serves, so that load
    /// balancers stop sending before the listener closes (Kubernetes: a few seconds).
    #[arg(long, env = "POSTCACHE_DRAIN_DELAY_SECONDS", default_value_t = 0)]
    pub drain_delay_seconds: u64,

    /// OpenTelemetry collector base URL (OTLP over HTTP, e.g. `http://otel-collector:4318`); spans
    /// are exported to `{url}/v1/traces` when set.
    #[arg(long, env = "POSTCACHE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// CA certificates (PEM file) an `https://` collector must chain to, instead of the public
    /// roots (a private CA).
    #[arg(long, env = "POSTCACHE_OTLP_CA_FILE")]
    pub otlp_ca_file: Option<PathBuf>,

    /// Log output format.
    #[arg(long, env = "POSTCACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Shows where the service listens and which kinds of backends it uses; never URLs (they carry
/// passwords), tokens or keys.
impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = |url: &str| url.split(':').next().unwrap_or_default().to_owned();
        f.debug_struct("ServeArgs")
            .field("listen", &self.listen)
            .field("database", &scheme(&self.database_url))
            .field("replicas", &self.replica_urls.len())
            .field("redis_nodes", &self.redis_url.len())
            .field("redis_cluster", &self.redis_cluster)
            .field("api_tokens", &self.api_tokens.len())
            .field("token_keys", &self.token_keys.len())
            .finish_non_exhaustive()
    }
}

impl ServeArgs {
    /// Checks what single flags cannot: relations between values.
    ///
    /// # Errors
    /// A message naming the flags that disagree.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            return Err("--rate-limit-burst (POSTCACHE_RATE_LIMIT_BURST) must be at least 1 when rate limiting is on".into());
        }
        if self.l2_feed_ttl_seconds > self.l2_ttl_seconds {
            return Err(format!(
                "--l2-feed-ttl-seconds ({}) must not exceed --l2-ttl-seconds ({})",
                self.l2_feed_ttl_seconds, self.l2_ttl_seconds
            ));
        }
        if self.redis_cluster && self.redis_url.is_empty() {
            return Err("--redis-cluster needs --redis-url (POSTCACHE_REDIS_URL)".into());
        }
        if self.request_timeout_ms > 0 && self.request_timeout_ms < self.db_acquire_timeout_ms {
            return Err(format!(
                "--request-timeout-ms ({}) must be at least --db-acquire-timeout-ms ({}): a request would time out before it could get a connection",
                self.request_timeout_ms, self.db_acquire_timeout_ms
            ));
        }
        Ok(())
    }

    /// Rate limit as (per second, burst); `None` when turned off.
    pub fn rate_limit(&self) -> Option<(NonZeroU32, NonZeroU32)> {
        let rate = NonZeroU32::new(self.rate_limit_per_second)?;
        Some((rate, NonZeroU32::new(self.rate_limit_burst).unwrap_or(rate)))
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
            "--redis-url",
            "redis://:redispass@cache:6379",
            "--api-tokens",
            "tok-secret",
            "--token-keys",
            "key-secret-0123456789",
        ]);
        let shown = format!("{:?}", cli.serve);
        for secret in ["hunter2", "redispass", "tok-secret", "key-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("postgres"), "{shown}");
    }
}
