//! The operator's metrics, described in one place, and its small HTTP server (`/metrics`,
//! `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Reconciles by `result`: `ok` or the error's category.
pub const RECONCILIATIONS: &str = "postcache_operator_reconciliations_total";
/// Duration of one reconcile.
pub const RECONCILE_DURATION: &str = "postcache_operator_reconcile_duration_seconds";
/// 1 while this replica holds the Lease and runs the controller.
pub const LEADER: &str = "postcache_operator_leader";
/// Children written by `kind` and `outcome` (`created`, `updated`, `deleted`).
pub const CHILD_WRITES: &str = "postcache_operator_child_writes_total";

/// Describes every metric (their HELP lines).
pub fn describe() {
    describe_counter!(
        RECONCILIATIONS,
        "PostCache reconciles, by result (ok or error category)"
    );
    describe_histogram!(
        RECONCILE_DURATION,
        Unit::Seconds,
        "Duration of one PostCache reconcile"
    );
    describe_gauge!(
        LEADER,
        "1 while this replica holds the Lease and reconciles"
    );
    describe_counter!(CHILD_WRITES, "Child objects written, by kind and outcome");
}

/// Installs the Prometheus recorder for this process.
///
/// # Errors
/// When a recorder is already installed.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(RECONCILE_DURATION.to_owned()),
            &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        )?
        .install_recorder()?;
    describe();
    metrics::gauge!(LEADER).set(0.0);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The operator's HTTP routes.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
}

/// Serves [`router`] on `addr` until `shutdown` resolves.
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "operator metrics listening");
    axum::serve(listener, router(handle))
        .with_graceful_shutdown(shutdown)
        .await
}
