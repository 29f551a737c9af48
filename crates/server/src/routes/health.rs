//! Liveness, readiness, metrics and the OpenAPI document.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use postcache_api::ErrorBody;
use postcache_cache::Posts;
use serde_json::{Value, json};

use crate::error::ApiError;

/// Whether the process is draining (see [`crate::app::Http::draining`]).
#[derive(Clone)]
pub(crate) struct Draining(pub(crate) tokio::sync::watch::Receiver<bool>);

impl Draining {
    pub(crate) fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}

/// How long readiness waits for the primary (under the kubelet's default probe timeout, 1 s).
const READY_TIMEOUT: Duration = Duration::from_millis(700);

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive")))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The pod can serve reads: the primary answers, or (degraded: writes fail fast with 503) a read
/// replica does. Readiness fails only when no tier can answer (DESIGN §7): a primary that is down
/// or slow must not take every pod out of its Service and turn a degraded read path into an
/// outage. (Caches being down is a degraded mode, not unready.) A draining process (SIGTERM) is
/// not ready, so load balancers stop sending before its listener closes.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready (`status`: `ready`, or `degraded` when only replicas answer)"),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn readyz(
    State(posts): State<Arc<Posts>>,
    State(draining): State<Draining>,
) -> Result<Json<Value>, ApiError> {
    if draining.is_draining() {
        return Err(ApiError::unavailable(
            "draining: this process is shutting down",
        ));
    }
    let primary = match tokio::time::timeout(READY_TIMEOUT, posts.store().ping()).await {
        Ok(Ok(())) => return Ok(Json(json!({"status": "ready"}))),
        Ok(Err(e)) => format!("the primary does not answer: {e}"),
        Err(_) => "the primary did not answer in time".to_owned(),
    };
    match posts.store().answering_replicas() {
        0 => Err(ApiError::unavailable(format!(
            "{primary}, and no read replica does"
        ))),
        replicas => Ok(Json(
            json!({"status": "degraded", "primary": primary, "replicas_answering": replicas}),
        )),
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format")))]
pub(crate) async fn metrics(State(handle): State<PrometheusHandle>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], handle.render()).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI 3")))]
pub(crate) async fn openapi(State(doc): State<Arc<utoipa::openapi::OpenApi>>) -> Response {
    Json(doc.as_ref().clone()).into_response()
}
