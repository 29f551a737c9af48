//! PostCache's HTTP service: the posts API over the tiers of `postcache-cache`.
//!
//! ```text
//! request ─▶ rate limit ─▶ router ─▶ handler (Authorized? ApiJson?) ─▶ Posts ─▶ L1 / L3
//!                      └─ metrics (route template, method, status, latency)
//! ```
//! [`app`] builds the router (tests drive it in-process); [`serve`] runs it on a socket with the
//! background flush and a graceful shutdown.

mod auth;
mod background;
mod config;
mod error;
mod json;
mod limit;
mod logging;
mod metrics;
mod realtime;
mod routes;
mod serve;
mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::middleware::{from_fn, from_fn_with_state};
use metrics_exporter_prometheus::PrometheusHandle;
use postcache_cache::Posts;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::Auth;
pub use config::{LogFormat, ServeArgs};
pub use error::ApiError;
pub use limit::RateLimit;
pub use logging::{Telemetry, TelemetryError, init_logging};
pub use realtime::Realtime;
pub use serve::{ServeError, serve};

use routes::{admin, demo, health, posts};

/// Everything handlers may need; each takes only its part (`FromRef`).
#[derive(Clone)]
pub struct AppState {
    posts: Arc<Posts>,
    auth: Auth,
    limit: Option<RateLimit>,
    realtime: Realtime,
    metrics: PrometheusHandle,
    openapi: Arc<utoipa::openapi::OpenApi>,
}

impl FromRef<AppState> for Arc<Posts> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.posts)
    }
}

impl FromRef<AppState> for Auth {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

impl FromRef<AppState> for Option<RateLimit> {
    fn from_ref(state: &AppState) -> Self {
        state.limit.clone()
    }
}

impl FromRef<AppState> for Realtime {
    fn from_ref(state: &AppState) -> Self {
        state.realtime.clone()
    }
}

impl FromRef<AppState> for PrometheusHandle {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

impl FromRef<AppState> for Arc<utoipa::openapi::OpenApi> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.openapi)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "PostCache", description = "Posts API with a three-tier cache. Errors share one body: \
        `{\"error\": {\"code\", \"message\", \"field\"}}`."),
    tags((name = "posts"), (name = "realtime"), (name = "cache"), (name = "health"), (name = "demo"))
)]
struct ApiDoc;

/// The router with every route, its OpenAPI document, and the middleware.
pub fn app(posts: Arc<Posts>, auth: Auth, limit: Option<RateLimit>, realtime: Realtime) -> Router {
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(posts::create, posts::list))
        .routes(routes!(posts::get, posts::update, posts::delete))
        .routes(routes!(posts::count_view))
        .routes(routes!(admin::invalidate))
        .routes(routes!(admin::stats))
        .routes(routes!(realtime::events))
        .routes(routes!(realtime::ws))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi))
        .routes(routes!(demo::index))
        .routes(routes!(demo::client))
        .split_for_parts();
    let state = AppState {
        posts,
        auth,
        limit: limit.clone(),
        realtime,
        metrics: metrics::handle(),
        openapi: Arc::new(openapi),
    };
    router
        .route_layer(from_fn(metrics::track))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(from_fn_with_state(limit, limit::enforce))
        .layer(DefaultBodyLimit::max(json::MAX_BODY_BYTES))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// The span of one request: method, path and request id (never headers: they carry tokens).
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
}
