//! Running the service: start-up checks, the listener, the background flush, graceful shutdown.
//!
//! ```text
//! SIGTERM/Ctrl-C ─▶ stop accepting ─▶ in-flight requests finish (≤ grace) ─▶ maintenance stops
//!               ─▶ last flush of views and outbox ─▶ exit
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postcache_cache::{EventLog, L1, L1Config, Posts, RedisLog, RedisLogError, StoreError};
use tokio::sync::watch;

use crate::auth::Auth;
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
    /// Redis could not be reached at start-up.
    #[error("cannot connect to Redis")]
    Redis(#[source] RedisLogError),
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
    let store = postcache_cache::connect(
        &args.database_url,
        args.db_max_connections,
        Duration::from_millis(args.db_acquire_timeout_ms),
    )
    .await
    .map_err(ServeError::Store)?;
    let shared = match &args.redis_url {
        Some(url) => Some(
            RedisLog::connect(url, args.eventlog_retention)
                .await
                .map_err(ServeError::Redis)?,
        ),
        None => None,
    };
    let l1 = L1::new(L1Config {
        max_entries: args.l1_max_entries,
        ttl: Duration::from_secs(args.l1_ttl_seconds),
    });
    let log = Arc::new(EventLog::new(args.eventlog_retention, args.realtime_queue));
    let posts = Arc::new(Posts::new(store, l1, log));
    let limit = args
        .rate_limit()
        .map(|(rate, burst)| RateLimit::new(rate, burst));
    let (stop_tx, stop_rx) = watch::channel(false);
    let realtime = crate::Realtime::new(
        Arc::clone(posts.log()),
        args.realtime_max_connections,
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

    let relay = match shared.clone() {
        Some(shared) => tokio::spawn(relay_to_shared_log(
            Arc::clone(&posts),
            shared,
            stop_rx.clone(),
        )),
        None => tokio::spawn(relay_outbox(Arc::clone(&posts), stop_rx.clone())),
    };
    let follower = shared.map(|shared| {
        let (posts, stop) = (Arc::clone(&posts), stop_rx.clone());
        tokio::spawn(async move { posts.follow(&shared, crate::realtime::stopped(stop)).await })
    });
    let maintenance = tokio::spawn(maintain(
        Arc::clone(&posts),
        limit,
        Duration::from_millis(args.views_flush_ms),
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
    let _ = relay.await;
    if let Some(follower) = follower {
        let _ = follower.await;
    }
    final_flush(&posts).await;
    outcome
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

/// The outbox relay: after each commit (and every second, for rows another process left), publish
/// unpublished outbox rows to the event log.
async fn relay_outbox(posts: Arc<Posts>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = posts.committed() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        loop {
            match posts.relay().await {
                Ok(n) if n > 0 => continue, // a full batch may have more behind it
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "the outbox relay failed; retrying");
                    break;
                }
            }
        }
    }
}

/// The outbox relay when several pods share a Redis event log: whoever holds the lease publishes
/// unpublished outbox rows to the stream, after each local commit and twice a second.
async fn relay_to_shared_log(posts: Arc<Posts>, shared: RedisLog, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = posts.committed() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let lease = shared.hold_lease(Duration::from_secs(5)).await;
        postcache_cache::set_degraded("redis", lease.is_err());
        match lease {
            Ok(true) => loop {
                match posts.relay_shared(&shared).await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "the outbox relay failed; retrying");
                        break;
                    }
                }
            },
            Ok(false) => {} // another pod relays
            Err(e) => {
                tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "Redis unavailable; events wait in the outbox")
            }
        }
    }
}

/// Every `interval`: flush views, publish pool gauges, trim the rate limiter.
async fn maintain(
    posts: Arc<Posts>,
    limit: Option<RateLimit>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if let Err(e) = posts.flush_views().await {
            tracing::warn!(error = %e, "flushing views failed; they stay buffered for the next flush");
        }
        let healthy = posts.store().ping().await.is_ok();
        postcache_cache::set_degraded("primary", !healthy);
        metrics::record_pool("primary", posts.store().pool_usage());
        if let Some(limit) = &limit {
            limit.shrink();
        }
    }
}

async fn final_flush(posts: &Posts) {
    match posts.flush_views().await {
        Ok(n) => tracing::info!(posts = n, "flushed buffered views"),
        Err(e) => {
            tracing::error!(error = %e, pending = posts.pending_views(), "the last flush of views failed")
        }
    }
    if let Err(e) = posts.relay().await {
        tracing::warn!(error = %e, "publishing the last events failed; the next start publishes them");
    }
}
