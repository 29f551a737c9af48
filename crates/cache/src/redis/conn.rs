//! [`RedisConn`]: one handle on Redis, standalone or Cluster, that fails fast while Redis is down.
//!
//! ```text
//! L2, event log, leases, view counters ──▶ RedisConn ──▶ ConnectionManager (standalone)
//!                                              │      └─▶ ClusterConnection (Cluster, connected lazily)
//!                                              └─ breaker: after a failure, calls fail at once for
//!                                                 a cool-down instead of each waiting out a timeout
//! ```
//! Every call has a response timeout, so a paused (SIGSTOP) Redis costs one timeout, then the
//! breaker opens and the callers fall back to L3 without waiting (DESIGN §7: never hang). An error
//! reply (OOM, READONLY, WRONGTYPE, CLUSTERDOWN…) opens it too. The
//! `postcache_degraded{component="redis"}` flag follows the breaker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::OnceCell;

use crate::stats::set_degraded;

/// The `component` label of Redis's degraded flag.
const REDIS: &str = "redis";

/// How long calls fail fast after a failure before one is let through again.
const COOL_DOWN: Duration = Duration::from_millis(500);

/// How long the degraded flag stays up after the last failure: a Redis that answers reads but
/// refuses every write alternates failures and successes, and must not look healthy in between.
const DEGRADED_HOLD: Duration = Duration::from_secs(5);

/// Where Redis is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://…` of a standalone server, or the seed nodes of a Cluster.
    pub nodes: Vec<String>,
    /// Whether `nodes` are Redis Cluster nodes.
    pub cluster: bool,
    /// Longest wait for one reply (blocking reads add their block time).
    pub timeout: Duration,
    /// With `rediss://` nodes: the CA certificates (PEM) to trust instead of the public roots
    /// (a private CA).
    pub ca_pem: Option<Vec<u8>>,
}

/// Why a Redis call failed (the step names what PostCache was doing).
#[derive(Debug, thiserror::Error)]
#[error("redis: {step} failed")]
pub struct RedisCallError {
    step: &'static str,
    #[source]
    source: RedisError,
}

impl RedisCallError {
    /// Whether the command may have run although it failed (a timeout, a connection dropped while
    /// waiting): retrying a non-idempotent one elsewhere could apply it twice.
    pub fn is_indeterminate(&self) -> bool {
        self.source.is_timeout() || self.source.is_connection_dropped()
    }

    /// A reply PostCache could not understand.
    pub(crate) fn malformed(step: &'static str) -> RedisCallError {
        RedisCallError {
            step,
            source: RedisError::from((ErrorKind::Parse, "unexpected reply")),
        }
    }
}

/// Wraps a [`RedisError`] with the step it failed in.
pub(crate) fn failed(step: &'static str) -> impl FnOnce(RedisError) -> RedisCallError {
    move |source| RedisCallError { step, source }
}

/// Shared health of every connection to one Redis: the breaker and the degraded flag.
#[derive(Debug)]
struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` until which calls fail fast (0: closed).
    open_until: AtomicU64,
    /// Milliseconds since `epoch` of the last failure (0: none).
    failed_at: AtomicU64,
    degraded: AtomicBool,
    /// Whether this connection's failures set the `redis` degraded flag.
    reports: bool,
}

impl Health {
    fn new(reports: bool) -> Arc<Health> {
        Arc::new(Health {
            epoch: Instant::now(),
            open_until: AtomicU64::new(0),
            failed_at: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            reports,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn is_open(&self) -> bool {
        self.now_ms() < self.open_until.load(Ordering::Relaxed)
    }

    fn record(&self, ok: bool) {
        let now = self.now_ms();
        if ok {
            self.open_until.store(0, Ordering::Relaxed);
        } else {
            self.open_until
                .store(now + COOL_DOWN.as_millis() as u64, Ordering::Relaxed);
            self.failed_at.store(now.max(1), Ordering::Relaxed);
        }
        let failed_at = self.failed_at.load(Ordering::Relaxed);
        let degraded =
            failed_at > 0 && now.saturating_sub(failed_at) < DEGRADED_HOLD.as_millis() as u64;
        if self.degraded.swap(degraded, Ordering::Relaxed) != degraded && self.reports {
            set_degraded(REDIS, degraded);
            if !degraded {
                tracing::info!("Redis answers again");
            } else {
                tracing::warn!("Redis failed; serving without it until it answers again");
            }
        }
    }
}

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster {
        client: Box<ClusterClient>,
        conn: Arc<OnceCell<ClusterConnection>>,
    },
}

/// A cheap-to-clone Redis handle (standalone or Cluster) usable wherever the `redis` crate takes
/// an async connection: commands, pipelines, scripts.
#[derive(Clone)]
pub struct RedisConn {
    link: Link,
    health: Arc<Health>,
}

impl RedisConn {
    /// A handle on `config`'s Redis. Nothing is contacted yet: the service starts while Redis is
    /// down and uses it once it answers.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn open(config: &RedisConfig) -> Result<RedisConn, RedisCallError> {
        set_degraded(REDIS, false);
        let link = Self::link(config, config.timeout)?;
        Ok(RedisConn {
            link,
            health: Health::new(true),
        })
    }

    /// A connection to `config`'s Redis for blocking reads (which would hold up every other
    /// command on a shared connection), waiting up to `block` longer for a reply. Its breaker is
    /// its own: a slow blocking read must not make the other calls skip Redis.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn blocking(config: &RedisConfig, block: Duration) -> Result<RedisConn, RedisCallError> {
        Ok(RedisConn {
            link: Self::link(config, config.timeout + block + Duration::from_secs(1))?,
            health: Health::new(false),
        })
    }

    fn link(config: &RedisConfig, timeout: Duration) -> Result<Link, RedisCallError> {
        let certs = config.ca_pem.as_ref().map(|ca| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone()),
        });
        if config.cluster {
            let mut builder = ClusterClient::builder(config.nodes.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder
                .build()
                .map_err(failed("parse the Redis Cluster nodes"))?;
            return Ok(Link::Cluster {
                client: Box::new(client),
                conn: Arc::new(OnceCell::new()),
            });
        }
        let url = config.nodes.first().map(String::as_str).unwrap_or_default();
        let client = match certs {
            Some(certs) => redis::Client::build_with_tls(url, certs),
            None => redis::Client::open(url),
        }
        .map_err(failed("parse the Redis URL"))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(failed("set up the Redis connection"))?;
        Ok(Link::Single(conn))
    }

    /// Whether the last call failed recently (callers may skip optional Redis work).
    pub fn is_down(&self) -> bool {
        self.health.is_open()
    }

    async fn send(&mut self, op: Op<'_>) -> RedisResult<Reply> {
        if self.health.is_open() {
            return Err(RedisError::from((
                ErrorKind::Io,
                "Redis failed recently; cooling down",
            )));
        }
        let result = match &mut self.link {
            Link::Single(conn) => op.run(conn).await,
            Link::Cluster { client, conn } => {
                match conn.get_or_try_init(|| client.get_async_connection()).await {
                    Ok(cluster) => op.run(&mut cluster.clone()).await,
                    Err(e) => Err(e),
                }
            }
        };
        // An error reply is a fault too (DESIGN §7): a Redis that refuses writes (OOM, read-only
        // replica, a slot half migrated, a wrong type) leaves stale values behind just as a dead
        // one does. Only NOSCRIPT is routine (the script is loaded and the call retried).
        let healthy = match &result {
            Ok(Reply::One(value)) => !is_fault(value),
            Ok(Reply::Many(values)) => !values.iter().any(is_fault),
            Err(e) => e.kind() == ErrorKind::Server(ServerErrorKind::NoScript),
        };
        self.health.record(healthy);
        result
    }
}

/// Whether a reply is an error reply other than NOSCRIPT (error replies arrive as values, and
/// become errors only when the caller converts them).
fn is_fault(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.kind() != Some(ServerErrorKind::NoScript))
}

/// One request: a command or a slice of a pipeline.
enum Op<'a> {
    One(&'a Cmd),
    Many(&'a Pipeline, usize, usize),
}

enum Reply {
    One(Value),
    Many(Vec<Value>),
}

impl Op<'_> {
    async fn run(self, conn: &mut (impl ConnectionLike + Send)) -> RedisResult<Reply> {
        match self {
            Op::One(cmd) => conn.req_packed_command(cmd).await.map(Reply::One),
            Op::Many(pipeline, offset, count) => conn
                .req_packed_commands(pipeline, offset, count)
                .await
                .map(Reply::Many),
        }
    }
}

fn unexpected() -> RedisError {
    RedisError::from((ErrorKind::Client, "mismatched reply kind"))
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.send(Op::One(cmd)).await? {
                Reply::One(value) => Ok(value),
                Reply::Many(_) => Err(unexpected()),
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.send(Op::Many(pipeline, offset, count)).await? {
                Reply::Many(values) => Ok(values),
                Reply::One(_) => Err(unexpected()),
            }
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
