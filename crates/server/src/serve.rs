//! Running the service: start-up, the listener, the background tasks, drain and shutdown.
//!
//! ```text
//! bind ─▶ /healthz 200, /readyz 503 "starting" ─▶ database answers (retried with back-off)
//!      ─▶ the API on the same socket ─▶ SIGTERM ─▶ /readyz 503 "draining" for the drain delay
//!      ─▶ stop accepting, streams end ─▶ in-flight requests finish (≤ grace) ─▶ background
//!         tasks stop ─▶ last flush of views and outbox ─▶ exit
//! ```
//! A background task that ends on its own (a panic) stops the process with an error, so the
//! orchestrator restarts it: it never goes on half-working.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use postcache_cache::{
    Background, BackgroundConfig, EventLog, L1, L1Config, L2, L2Config, PoolConfig, Posts,
    RedisCallError, RedisConfig, RedisConn, RedisLog, Shared, SharedViews, Store, StoreError,
};
use tokio::sync::watch;

use crate::auth::Auth;
use crate::client::TrustedProxies;
use crate::config::{Secret, ServeArgs, nonzero};
use crate::error::ApiError;
use crate::io::{DeadlineListener, Peer};
use crate::limit::RateLimit;
use crate::metrics;
use crate::tokens::TokenKeys;

/// SSE comments and WebSocket pings this often keep proxies from dropping idle streams.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Longest pause between two attempts to reach the database at start-up.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Non-loopback listen address without tokens.
    #[error(
        "refusing to listen on {0} without API tokens: set POSTCACHE_API_TOKENS or pass --insecure-no-auth"
    )]
    InsecureListen(SocketAddr),
    /// Options that contradict each other.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file an option names could not be read.
    #[error("cannot read {path}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("cannot open the database")]
    Store(#[source] StoreError),
    /// The Redis configuration is malformed.
    #[error("invalid Redis configuration")]
    Redis(#[source] RedisCallError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
    /// A background task ended on its own.
    #[error("the background task `{0}` stopped unexpectedly; exiting so that it is restarted")]
    Background(&'static str),
}

/// Runs `postcache serve` until SIGTERM or Ctrl-C.
///
/// # Errors
/// Start-up failures ([`ServeError`]) and a background task that died; a failed last flush is
/// logged, not returned.
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    args.validate().map_err(ServeError::Config)?;
    let auth = Auth::new(secrets(
        &args.http.api_tokens,
        args.http.api_tokens_file.as_deref(),
    )?);
    if !args.http.listen.ip().is_loopback() && !auth.is_enabled() && !args.http.insecure_no_auth {
        return Err(ServeError::InsecureListen(args.http.listen));
    }
    let configured_keys = secrets(&args.http.token_keys, args.http.token_keys_file.as_deref())?;
    if !configured_keys.is_empty() {
        TokenKeys::new(&configured_keys).map_err(ServeError::Config)?;
    }
    // The recorder first: the tiers register their series at zero as they are built.
    let _ = metrics::handle();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::spawn(drain_on_signal(
        drain_tx,
        stop_tx.clone(),
        args.http.drain_delay,
    ));

    let socket =
        std::net::TcpListener::bind(args.http.listen).map_err(|source| ServeError::Bind {
            addr: args.http.listen,
            source,
        })?;
    socket.set_nonblocking(true).map_err(ServeError::Serve)?;
    let local = socket.local_addr().map_err(ServeError::Serve)?;
    // Until the database answers, the same socket says "alive, not ready".
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let starting = {
        let socket = socket.try_clone().map_err(ServeError::Serve)?;
        let listener = tokio::net::TcpListener::from_std(socket).map_err(ServeError::Serve)?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, starting_router())
                .with_graceful_shutdown(async {
                    let _ = started_rx.await;
                })
                .await;
        })
    };
    tracing::info!(addr = %local, database = args.database.url.kind(), "postcache starting on http://{local}/");
    let Some(store) = connect_store(&args, stop_rx.clone()).await? else {
        return Ok(()); // stopped while waiting for the database
    };
    let Some(tokens) = token_keys(configured_keys, store.as_ref(), stop_rx.clone()).await? else {
        return Ok(()); // stopped while waiting for the database
    };

    let l1 = L1::new(L1Config {
        max_entries: args.cache.max_entries,
        max_bytes: args.cache.max_bytes,
        ttl: args.cache.ttl,
    });
    let log = Arc::new(
        EventLog::new(args.realtime.retention, args.realtime.queue)
            .with_max_bytes(args.realtime.log_max_bytes),
    );
    let mut posts = Posts::new(store, l1, log);
    let shared = shared_tiers(&args)?;
    let lone_lock = shared.is_none() && args.database.url.kind() == "postgres";
    if let Some(shared) = shared.clone() {
        posts = posts.with_shared(shared, staleness_trust(&args));
    } else if lone_lock {
        // Several processes on one PostgreSQL without Redis would each trust an L1 that misses
        // the others' writes: only the holder of the lone-process lock trusts its L1.
        posts = posts.guarded_by_lone_lock();
    }
    let posts = Arc::new(posts);
    let heartbeat = (args.redis.staleness_bound / 4).max(Duration::from_millis(10));
    // The tiers' loops (relay, follower, maintenance, lone-process check, replica watcher),
    // owned by this guard: they stop when it is stopped or dropped.
    let mut background = Background::start(
        &posts,
        BackgroundConfig {
            heartbeat,
            maintenance: args.cache.views_flush,
        },
    )
    .await;
    let limit = args
        .rate_limit()
        .map(|(rate, burst)| RateLimit::new(rate, burst));
    let mut realtime = crate::realtime::Realtime::new(
        Arc::clone(posts.log()),
        if args.realtime.enabled {
            args.realtime.max_connections
        } else {
            0
        },
        HEARTBEAT,
    )
    .with_client_limit(args.realtime.max_per_client)
    .with_shutdown(stop_rx.clone());
    if let Some(max_age) = nonzero(args.realtime.max_age) {
        realtime = realtime.with_max_age(max_age);
    }
    let http = crate::app::Http {
        limit: limit.clone(),
        proxies: TrustedProxies::new(args.http.trusted_proxies.clone()),
        request_timeout: nonzero(args.http.request_timeout),
        tokens,
        draining: drain_rx,
        cors_origins: args.http.cors_origins.clone(),
    };
    let app = crate::app(Arc::clone(&posts), auth, http, realtime);

    // HTTP's own upkeep: the rate limiter's table and the metrics recorder.
    let upkeep = tokio::spawn(http_upkeep(limit, args.cache.views_flush, stop_rx.clone()));

    let _ = started_tx.send(());
    let _ = starting.await;
    let listener = tokio::net::TcpListener::from_std(socket).map_err(ServeError::Serve)?;
    let listener = DeadlineListener::new(listener, args.realtime.send_timeout);
    tracing::info!(addr = %local, "postcache serving on http://{local}/");
    let mut stopping = stop_rx.clone();
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        });
    let grace = args.http.shutdown_grace;
    let mut stopping = stop_rx.clone();
    let died = background.died();
    let outcome = tokio::select! {
        result = server => result.map_err(ServeError::Serve),
        () = async { let _ = stopping.wait_for(|stop| *stop).await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
            Ok(())
        }
        name = died => {
            tracing::error!(task = name, "a background task stopped unexpectedly; shutting down");
            Err(ServeError::Background(name))
        }
    };
    let _ = stop_tx.send(true);
    background.stop().await;
    let _ = upkeep.await;
    final_flush(&posts).await;
    outcome
}

/// Every `interval`: trim the rate limiter's table and run the metrics recorder's upkeep.
async fn http_upkeep(
    limit: Option<RateLimit>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if let Some(limit) = &limit {
            limit.shrink();
        }
        metrics::upkeep();
    }
}

/// What the socket answers while the database does not yet: alive, not ready.
fn starting_router() -> Router {
    let starting = || async { ApiError::unavailable("starting: waiting for the database") };
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(|| async { metrics::handle().render() }))
        .fallback(starting)
}

/// Opens the database, retrying a PostgreSQL primary that does not answer yet with back-off
/// (a fresh install starts the service before its database). `None` when stopped meanwhile.
async fn connect_store(
    args: &ServeArgs,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<Arc<dyn Store>>, ServeError> {
    let pool = PoolConfig {
        max_connections: args.database.max_connections,
        acquire_timeout: args.database.acquire_timeout,
        statement_timeout: nonzero(args.database.statement_timeout),
    };
    let give_up = nonzero(args.database.connect_timeout).map(|t| tokio::time::Instant::now() + t);
    let replicas: Vec<String> = args
        .database
        .replica_urls
        .iter()
        .map(|u| u.as_str().to_owned())
        .collect();
    let mut backoff = Duration::from_millis(250);
    loop {
        let attempt = postcache_cache::connect_with_replicas(
            args.database.url.as_str(),
            &replicas,
            &pool,
            args.database.max_replica_lag,
        )
        .await;
        let error = match attempt {
            Ok(store) => return Ok(Some(store)),
            Err(e) => e,
        };
        let retry = args.database.url.kind() == "postgres"
            && !matches!(error, StoreError::UnsupportedUrl)
            && give_up.is_none_or(|at| tokio::time::Instant::now() + backoff < at);
        if !retry {
            return Err(ServeError::Store(error));
        }
        tracing::warn!(error = %error, source = ?std::error::Error::source(&error), retry_in = ?backoff, "the database does not answer yet; retrying");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|stop| *stop) => return Ok(None),
        }
        backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
    }
}

/// The configured keys (the first signs), then the database's own key, which signs when none is
/// configured: processes sharing a database always share a key. A database that is reachable
/// but momentarily cannot answer (a busy or restarting server) is asked again with back-off, as
/// at connection: a pod must not exit on a transient error while starting. `None` when stopped
/// meanwhile.
async fn token_keys(
    configured: Vec<String>,
    store: &dyn Store,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<TokenKeys>, ServeError> {
    let mut keys = configured;
    let mut backoff = Duration::from_millis(250);
    loop {
        match store.token_key().await {
            Ok(key) => {
                keys.push(key);
                break;
            }
            // Configured keys still sign; without any, nothing could.
            Err(e) if !keys.is_empty() => {
                tracing::warn!(error = %e, "cannot read the database's token key; using only the configured ones");
                break;
            }
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot read the database's token key yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|stop| *stop) => return Ok(None),
                }
                backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
            }
            Err(e) => return Err(ServeError::Store(e)),
        }
    }
    TokenKeys::new(&keys).map(Some).map_err(ServeError::Config)
}

/// L2, the shared event log and the view counters on the configured Redis (`None` without one).
/// Nothing is contacted here: a pod starts while Redis is down and serves from L3 until it answers.
fn shared_tiers(args: &ServeArgs) -> Result<Option<Shared>, ServeError> {
    let redis = &args.redis;
    if redis.urls.is_empty() {
        return Ok(None);
    }
    let ca_pem = redis
        .ca_file
        .as_ref()
        .map(|path| {
            std::fs::read(path).map_err(|source| ServeError::File {
                path: path.display().to_string(),
                source,
            })
        })
        .transpose()?;
    let config = RedisConfig {
        nodes: redis.urls.iter().map(|u| u.as_str().to_owned()).collect(),
        cluster: redis.cluster,
        timeout: redis.timeout,
        ca_pem,
    };
    let conn = RedisConn::open(&config).map_err(ServeError::Redis)?;
    let log =
        RedisLog::new(conn.clone(), &config, args.realtime.retention).map_err(ServeError::Redis)?;
    let l2 = L2::new(
        conn.clone(),
        L2Config {
            post_ttl: redis.post_ttl,
            feed_ttl: redis.feed_ttl,
            lease: redis.fill_lease,
            // A fill from a replica within the lag limit can never be older than a floor this old.
            floor_ttl: args.database.max_replica_lag * 2 + Duration::from_secs(60),
        },
    );
    Ok(Some(Shared {
        l2,
        log,
        views: SharedViews::new(conn),
    }))
}

/// How long after a heartbeat L1 stays trusted: the bound Δ minus one heartbeat interval, so a
/// change acknowledged just after a heartbeat is still covered.
fn staleness_trust(args: &ServeArgs) -> Duration {
    let bound = args.redis.staleness_bound;
    bound - bound / 4
}

/// Secrets given inline and in a file (one per line or comma-separated), blanks dropped.
fn secrets(inline: &[Secret], file: Option<&std::path::Path>) -> Result<Vec<String>, ServeError> {
    let mut secrets: Vec<String> = inline.iter().map(|s| s.0.clone()).collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::File {
            path: path.display().to_string(),
            source,
        })?;
        secrets.extend(text.split(['\n', ',']).map(str::to_owned));
    }
    secrets.retain_mut(|s| {
        *s = s.trim().to_owned();
        !s.is_empty()
    });
    Ok(secrets)
}

/// On SIGTERM or Ctrl-C: readiness fails at once (`drain`), and after `delay` the listener and
/// every background task are told to stop. A second signal skips the rest of the delay.
async fn drain_on_signal(drain: watch::Sender<bool>, stop: watch::Sender<bool>, delay: Duration) {
    shutdown_signal().await;
    let _ = drain.send(true);
    if !delay.is_zero() {
        tracing::info!(
            ?delay,
            "draining: readiness fails; still serving until the delay ends"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown_signal() => {}
        }
    }
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    let _ = stop.send(true);
}

/// Resolves on SIGTERM or Ctrl-C (`postcache serve` and `postcache operator` alike).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

async fn final_flush(posts: &Posts) {
    match posts.flush_views().await {
        Ok(n) => tracing::info!(posts = n, "flushed buffered views"),
        Err(e) => {
            tracing::error!(error = %e, pending = posts.pending_views(), "the last flush of views failed")
        }
    }
    // With a shared log the lease holder publishes what is left; alone, this process does.
    let published = match posts.shared() {
        Some(_) => posts.mark_appended().await,
        None => posts.relay().await.map(|_| ()),
    };
    if let Err(e) = published {
        tracing::warn!(error = %e, "publishing the last events failed; the outbox keeps them for the next relay");
    }
}
