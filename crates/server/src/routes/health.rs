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

/// How long readiness waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive")))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The pod can serve: the database answers. (Caches being down is a degraded mode, not unready.)
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready"), (status = 503, body = ErrorBody)))]
pub(crate) async fn readyz(State(posts): State<Arc<Posts>>) -> Result<Json<Value>, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, posts.store().ping()).await {
        Ok(Ok(())) => Ok(Json(json!({"status": "ready"}))),
        Ok(Err(e)) => Err(ApiError::unavailable(format!(
            "the database does not answer: {e}"
        ))),
        Err(_) => Err(ApiError::unavailable("the database did not answer in time")),
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
