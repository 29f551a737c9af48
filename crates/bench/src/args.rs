//! `postcache bench`'s options, its modes and its errors.

use std::path::PathBuf;

use crate::keys::KeyDist;

/// Options of `postcache bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the server to load (plain HTTP).
    #[arg(
        long,
        env = "POSTCACHE_BENCH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Bearer token for writes (when the target requires one).
    #[arg(long, env = "POSTCACHE_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What to load: `http` (the posts API) or realtime fan-out over `ws`, `sse` or `socketio`
    /// (a Socket.IO server that publishes what is POSTed to /v1/posts, to compare with).
    #[arg(long, value_enum, default_value_t = Mode::Http)]
    pub mode: Mode,
    /// Length of the measured run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seed of the load's randomness: the same seed sends the same requests.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Pid of the server, when it runs on this machine: its CPU time and RSS join the report.
    #[arg(long)]
    pub pid: Option<i32>,
    /// Write an SVG plot of throughput and latency percentiles over time to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,

    /// HTTP: posts created before the measured run.
    #[arg(long, default_value_t = 500, help_heading = "HTTP load")]
    pub posts: usize,
    /// HTTP: connections, each with one request at a time.
    #[arg(long, default_value_t = 32, help_heading = "HTTP load")]
    pub concurrency: usize,
    /// HTTP: open loop at this many requests per second in total (latency counted from when
    /// each request was due); without it, closed loop (each connection sends when answered).
    #[arg(long, help_heading = "HTTP load")]
    pub rate: Option<f64>,
    /// HTTP: fraction of operations that read one post (`GET /v1/posts/{id}`).
    #[arg(long, default_value_t = 0.95, help_heading = "HTTP load")]
    pub read_ratio: f64,
    /// HTTP: fraction that read the feed (`GET /v1/posts?limit=20`); the rest update a post.
    #[arg(long, default_value_t = 0.0, help_heading = "HTTP load")]
    pub feed_ratio: f64,
    /// HTTP: which posts reads and writes pick.
    #[arg(long, value_enum, default_value_t = KeyDist::Zipf, help_heading = "HTTP load")]
    pub keys: KeyDist,
    /// HTTP: skew of `--keys zipf` and `latest` (0: uniform; 0.99: YCSB's default).
    #[arg(long, default_value_t = 0.99, help_heading = "HTTP load")]
    pub zipf_theta: f64,
    /// HTTP: run the identical load (same seed, same paths) against this server too, and
    /// report the ratio. For a static server, fill its root with `--mirror-dir` first.
    #[arg(long, help_heading = "HTTP load")]
    pub compare_url: Option<String>,
    /// HTTP: pid of the `--compare-url` server, for its CPU time and RSS.
    #[arg(long, help_heading = "HTTP load")]
    pub compare_pid: Option<i32>,
    /// HTTP: after seeding, write every seeded post's body to `DIR/v1/posts/{id}`, so that a
    /// static server rooted at DIR answers the same paths with the same bytes.
    #[arg(long, help_heading = "HTTP load")]
    pub mirror_dir: Option<PathBuf>,

    /// Fan-out: subscribers to open.
    #[arg(long, default_value_t = 1000, help_heading = "Fan-out")]
    pub subscribers: usize,
    /// Fan-out: posts published per second (each one event to every subscriber).
    #[arg(long, default_value_t = 10.0, help_heading = "Fan-out")]
    pub events_per_second: f64,
    /// Fan-out: subscriber handshakes in flight at once.
    #[arg(long, default_value_t = 256, help_heading = "Fan-out")]
    pub connect_concurrency: usize,
}

/// What `--mode` loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The posts API.
    Http,
    /// Fan-out over `GET /v1/ws`.
    Ws,
    /// Fan-out over `GET /v1/events`.
    Sse,
    /// Fan-out over Socket.IO (engine.io v4, WebSocket transport): the comparison peer.
    Socketio,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options contradict each other or name something unusable.
    #[error("invalid option: {0}")]
    Invalid(String),
    /// Seeding failed: the target is down or refuses writes.
    #[error("seeding posts failed: {0}")]
    Seed(String),
    /// No subscriber could connect.
    #[error("no subscriber connected: {0}")]
    Connect(String),
    /// The plot could not be written.
    #[error("writing the plot failed: {0}")]
    Plot(String),
}
