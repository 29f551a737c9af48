//! Running the service: start-up checks, the listener, the background flush, graceful shutdown.
//!
//! ```text
//! SIGTERM/Ctrl-C ─▶ stop accepting ─▶ in-flight requests finish (≤ grace) ─▶ maintenance stops
//!               ─▶ last flush of views and outbox ─▶ exit
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postcache_cache::{
    EventLog, L1, L1Config, L2, L2Config, Posts, RedisCallError, RedisConfig, RedisConn, RedisLog,
    Shared, SharedViews, StoreError,
};
use tokio::sync::watch;

use crate::auth::Auth;
use crate::background;
use crate::config::ServeArgs;
use crate::limit::RateLimit;
use crate::metrics;

/// SSE comments and WebSocket pings this often keep proxies from dropping idle streams.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Non-loopback listen address without tokens.
    #[error(
        "refusing to listen on {0} without API tokens: set POSTCACHE_API_TOKENS or pass --insecure-no-auth"
    )]
    InsecureListen(SocketAddr),
    /// The tokens file could not be read.
    #[error("cannot read the API tokens file {path}")]
    TokensFile {
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
}

/// Runs `postcache serve` until SIGTERM or Ctrl-C.
///
/// # Errors
/// Start-up failures ([`ServeError`]); a failed last flush is logged, not returned.
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let auth = Auth::new(tokens(&args)?);
    if !args.listen.ip().is_loopback() && !auth.is_enabled() && !args.insecure_no_auth {
        return Err(ServeError::InsecureListen(args.listen));
    }
    // The recorder first: the tiers register their series at zero as they are built.
    let _ = metrics::handle();
    let store = postcache_cache::connect_with_replicas(
        &args.database_url,
        &args.replica_urls,
        args.db_max_connections,
        Duration::from_millis(args.db_acquire_timeout_ms),
        Duration::from_secs(args.max_replica_lag_seconds),
    )
    .await
    .map_err(ServeError::Store)?;
    let l1 = L1::new(L1Config {
        max_entries: args.l1_max_entries,
        ttl: Duration::from_secs(args.l1_ttl_seconds),
    });
    let log = Arc::new(EventLog::new(args.eventlog_retention, args.realtime_queue));
    let mut posts = Posts::new(store, l1, log);
    let shared = shared_tiers(&args)?;
    let lone_lock = shared.is_none() && database_kind(&args.database_url) == "postgres";
    if let Some(shared) = shared.clone() {
        posts = posts.with_shared(shared, staleness_trust(&args));
    } else if lone_lock {
        // Several processes on one PostgreSQL without Redis would each trust an L1 that misses
        // the others' writes: only the holder of the lone-process lock trusts its L1.
        posts = posts.guarded_by_lone_lock();
    }
    let posts = Arc::new(posts);
    if lone_lock {
        background::check_alone(&posts).await;
    }
    let limit = args
        .rate_limit()
        .map(|(rate, burst)| RateLimit::new(rate, burst));
    let (stop_tx, stop_rx) = watch::channel(false);
    let realtime = crate::Realtime::new(
        Arc::clone(posts.log()),
        if args.realtime_enabled {
            args.realtime_max_connections
        } else {
            0
        },
        HEARTBEAT,
    )
    .with_shutdown(stop_rx.clone());
    let app = crate::app(Arc::clone(&posts), auth, limit.clone(), realtime);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: args.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(addr = %local, database = database_kind(&args.database_url), "postcache serving on http://{local}/");

    let heartbeat =
        Duration::from_millis(args.staleness_bound_ms / 4).max(Duration::from_millis(10));
    let relay = match shared.clone() {
        Some(shared) => tokio::spawn(background::relay_to_shared_log(
            Arc::clone(&posts),
            shared,
            heartbeat,
            stop_rx.clone(),
        )),
        None => tokio::spawn(background::relay_outbox(
            Arc::clone(&posts),
            stop_rx.clone(),
        )),
    };
    let follower = shared.map(|shared| {
        let (posts, stop) = (Arc::clone(&posts), stop_rx.clone());
        tokio::spawn(async move {
            posts
                .follow(&shared.log, crate::realtime::stopped(stop))
                .await
        })
    });
    if lone_lock {
        tokio::spawn(background::stay_alone(
            Arc::clone(&posts),
            heartbeat,
            stop_rx.clone(),
        ));
    }
    let maintenance = tokio::spawn(background::maintain(
        Arc::clone(&posts),
        limit,
        Duration::from_millis(args.views_flush_ms),
        stop_rx.clone(),
    ));
    let replicas = tokio::spawn(background::watch_replicas(
        Arc::clone(&posts),
        stop_rx.clone(),
    ));
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal(stop_tx.clone()));
    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    let mut stopping = stop_rx.clone();
    let outcome = tokio::select! {
        result = server => result.map_err(ServeError::Serve),
        () = async { let _ = stopping.wait_for(|stop| *stop).await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    let _ = maintenance.await;
    let _ = replicas.await;
    let _ = relay.await;
    if let Some(follower) = follower {
        let _ = follower.await;
    }
    final_flush(&posts).await;
    outcome
}

/// L2, the shared event log and the view counters on the configured Redis (`None` without one).
/// Nothing is contacted here: a pod starts while Redis is down and serves from L3 until it answers.
fn shared_tiers(args: &ServeArgs) -> Result<Option<Shared>, ServeError> {
    if args.redis_url.is_empty() {
        return Ok(None);
    }
    let config = RedisConfig {
        nodes: args.redis_url.clone(),
        cluster: args.redis_cluster,
        timeout: Duration::from_millis(args.redis_timeout_ms.max(1)),
    };
    let conn = RedisConn::open(&config).map_err(ServeError::Redis)?;
    let log =
        RedisLog::new(conn.clone(), &config, args.eventlog_retention).map_err(ServeError::Redis)?;
    let l2 = L2::new(
        conn.clone(),
        L2Config {
            post_ttl: Duration::from_secs(args.l2_ttl_seconds),
            feed_ttl: Duration::from_secs(args.l2_feed_ttl_seconds),
            lease: Duration::from_millis(args.fill_lease_ms),
            // A fill from a replica within the lag limit can never be older than a floor this old.
            floor_ttl: Duration::from_secs(args.max_replica_lag_seconds * 2 + 60),
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
    let bound = Duration::from_millis(args.staleness_bound_ms);
    bound - bound / 4
}

fn tokens(args: &ServeArgs) -> Result<Vec<String>, ServeError> {
    let mut tokens = args.api_tokens.clone();
    if let Some(path) = &args.api_tokens_file {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::TokensFile {
            path: path.display().to_string(),
            source,
        })?;
        tokens.extend(text.split(['\n', ',']).map(str::to_owned));
    }
    Ok(tokens)
}

/// Only the scheme: the URL may carry a password.
fn database_kind(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    }
}

/// Resolves on SIGTERM or Ctrl-C and tells every background task.
async fn shutdown_signal(stop: watch::Sender<bool>) {
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
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    let _ = stop.send(true);
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
