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
#[derive(Debug, Clone, clap::Args)]
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
    #[arg(long, env = "POSTCACHE_MAX_REPLICA_LAG_SECONDS", default_value_t = 10)]
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

    /// The Redis nodes are a Redis Cluster.
    #[arg(long, env = "POSTCACHE_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// Longest wait for one Redis reply, in milliseconds; after a failure Redis is skipped
    /// briefly instead of waited for.
    #[arg(long, env = "POSTCACHE_REDIS_TIMEOUT_MS", default_value_t = 250)]
    pub redis_timeout_ms: u64,

    /// Lifetime of a post in L2 (Redis), in seconds.
    #[arg(long, env = "POSTCACHE_L2_TTL_SECONDS", default_value_t = 600)]
    pub l2_ttl_seconds: u64,

    /// Lifetime of a feed page in L2, in seconds (generations invalidate it earlier).
    #[arg(long, env = "POSTCACHE_L2_FEED_TTL_SECONDS", default_value_t = 60)]
    pub l2_feed_ttl_seconds: u64,

    /// How long one pod may load a missing post while the others wait for its fill, in
    /// milliseconds (bounds database loads per hot key).
    #[arg(long, env = "POSTCACHE_FILL_LEASE_MS", default_value_t = 500)]
    pub fill_lease_ms: u64,

    /// With Redis: the staleness bound Δ, in milliseconds. A pod that has not heard from the event
    /// log for this long stops answering from its memory (serves L2/L3) until it hears again.
    #[arg(long, env = "POSTCACHE_STALENESS_BOUND_MS", default_value_t = 1000)]
    pub staleness_bound_ms: u64,

    /// Most connections to the database.
    #[arg(long, env = "POSTCACHE_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// How long a request waits for a free database connection before it gets 503.
    #[arg(long, env = "POSTCACHE_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000)]
    pub db_acquire_timeout_ms: u64,

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
    #[arg(long, env = "POSTCACHE_L1_MAX_ENTRIES", default_value_t = 100_000)]
    pub l1_max_entries: u64,

    /// Safety-net lifetime of an in-process cache entry, in seconds.
    #[arg(long, env = "POSTCACHE_L1_TTL_SECONDS", default_value_t = 60)]
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
    #[arg(long, env = "POSTCACHE_EVENTLOG_RETENTION", default_value_t = 10_000)]
    pub eventlog_retention: usize,

    /// Events a realtime subscriber may fall behind before it gets a `resync` and is closed.
    #[arg(long, env = "POSTCACHE_REALTIME_QUEUE", default_value_t = 1024)]
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

    /// On SIGTERM, how long in-flight requests may take before the process exits anyway.
    #[arg(long, env = "POSTCACHE_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,

    /// OpenTelemetry collector base URL (OTLP over HTTP, e.g. `http://otel-collector:4318`); spans
    /// are exported to `{url}/v1/traces` when set.
    #[arg(long, env = "POSTCACHE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Log output format.
    #[arg(long, env = "POSTCACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// Rate limit as (per second, burst); `None` when turned off.
    pub fn rate_limit(&self) -> Option<(NonZeroU32, NonZeroU32)> {
        let rate = NonZeroU32::new(self.rate_limit_per_second)?;
        Some((rate, NonZeroU32::new(self.rate_limit_burst).unwrap_or(rate)))
    }
}
