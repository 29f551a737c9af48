//! The router: every route with its OpenAPI document, the state handlers share, and the
//! middleware every request passes (request id, span, admission, metrics).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use postcache_cache::Posts;
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Auth;
use crate::client::{self, TrustedProxies};
use crate::error::ApiError;
use crate::limit::{self, RateLimit};
use crate::realtime::{self, Realtime};
use crate::routes::{self, admin, demo, health, posts};
use crate::tokens::TokenKeys;
use crate::{cors, json, metrics, openapi};

/// Everything handlers may need; each takes only its part (`FromRef`). axum clones the state for
/// every request: one `Arc` keeps that a reference count, not a copy of every part.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

struct AppParts {
    posts: Arc<Posts>,
    auth: Auth,
    limit: Option<RateLimit>,
    realtime: Realtime,
    tokens: TokenKeys,
    draining: watch::Receiver<bool>,
    metrics: PrometheusHandle,
    openapi: Arc<utoipa::openapi::OpenApi>,
}

/// How the HTTP layer treats clients, beyond the tiers and auth.
#[derive(Clone)]
pub struct Http {
    /// The per-client rate limit (`None`: off).
    pub limit: Option<RateLimit>,
    /// Whose forwarding headers name the client.
    pub proxies: TrustedProxies,
    /// Longest time a non-streaming request may take (`None`: no limit).
    pub request_timeout: Option<Duration>,
    /// The keys of consistency tokens.
    pub tokens: TokenKeys,
    /// Turns true when the process drains (readiness fails).
    pub draining: watch::Receiver<bool>,
    /// Origins whose pages may call the API from a browser (`*`: any); none answers no CORS.
    pub cors_origins: Vec<String>,
}

impl Http {
    /// No limit, no proxies, no timeout, never draining; tokens signed with `tokens`.
    pub fn new(tokens: TokenKeys) -> Http {
        Http {
            limit: None,
            proxies: TrustedProxies::default(),
            request_timeout: None,
            tokens,
            draining: watch::channel(false).1,
            cors_origins: Vec::new(),
        }
    }
}

impl FromRef<AppState> for Arc<Posts> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.0.posts)
    }
}

impl FromRef<AppState> for Auth {
    fn from_ref(state: &AppState) -> Self {
        state.0.auth.clone()
    }
}

impl FromRef<AppState> for Option<RateLimit> {
    fn from_ref(state: &AppState) -> Self {
        state.0.limit.clone()
    }
}

impl FromRef<AppState> for Realtime {
    fn from_ref(state: &AppState) -> Self {
        state.0.realtime.clone()
    }
}

impl FromRef<AppState> for TokenKeys {
    fn from_ref(state: &AppState) -> Self {
        state.0.tokens.clone()
    }
}

impl FromRef<AppState> for routes::health::Draining {
    fn from_ref(state: &AppState) -> Self {
        routes::health::Draining(state.0.draining.clone())
    }
}

impl FromRef<AppState> for PrometheusHandle {
    fn from_ref(state: &AppState) -> Self {
        state.0.metrics.clone()
    }
}

impl FromRef<AppState> for Arc<utoipa::openapi::OpenApi> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.0.openapi)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "PostCache", description = "Posts API with a three-tier cache. Errors share one body: \
        `{\"error\": {\"code\", \"message\", \"field\"}}`."),
    tags((name = "posts"), (name = "realtime"), (name = "cache"), (name = "health"), (name = "demo"))
)]
struct ApiDoc;

/// The OpenAPI document of the API, as `/openapi.json` serves it (`postcache openapi` prints it).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    routes().1
}

/// Every route, and the document they make.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
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
        .routes(routes!(demo::client_types))
        .split_for_parts();
    let mut openapi = openapi;
    utoipa::Modify::modify(&openapi::Shared, &mut openapi);
    (router, openapi)
}

/// The router with every route, its OpenAPI document, and the middleware.
pub fn app(posts: Arc<Posts>, auth: Auth, http: Http, realtime: Realtime) -> Router {
    let (router, openapi) = routes();
    let cors = cors::layer(&http.cors_origins);
    let state = AppState(Arc::new(AppParts {
        posts,
        auth,
        limit: http.limit.clone(),
        realtime,
        tokens: http.tokens,
        draining: http.draining,
        metrics: metrics::handle(),
        openapi: Arc::new(openapi),
    }));
    let admission = Arc::new(Admission {
        proxies: http.proxies,
        limit: http.limit,
        timeout: http.request_timeout,
    });
    let router = router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // One stack, applied once: each `Router::layer` call boxes every route once more, and
        // each box costs every request an allocation.
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(DefaultBodyLimit::max(json::MAX_BODY_BYTES))
                .layer(from_fn_with_state(admission, admit)),
        );
    // Outermost: a preflight is answered before authentication and the limits see it.
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(state)
}

/// How requests are admitted: who the client is, its rate limit, how long a request may take.
struct Admission {
    proxies: TrustedProxies,
    limit: Option<RateLimit>,
    timeout: Option<Duration>,
}

/// Middleware: opens the request's span, names the client (behind trusted proxies, the one they
/// forwarded), refuses it with 429 over its rate limit, bounds the request's time, and counts,
/// times and logs the answer under its route (429s and timeouts included). One layer, not five:
/// every layer costs each request an allocation, a copy of its future and, for tower-http's
/// `Trace`, a wrapper around the body and three more clock reads.
async fn admit(
    State(admission): State<Arc<Admission>>,
    mut request: Request,
    next: Next,
) -> Response {
    let span = request_span(&request);
    async move {
        let started = Instant::now();
        let labels = metrics::labels(&request);
        let client = client::identify(&admission.proxies, &mut request);
        let refused = admission
            .limit
            .as_ref()
            .and_then(|limit| limit::refuse(limit, client, request.uri().path()));
        let response = match refused {
            Some(refused) => refused,
            None => within(admission.timeout, request, next).await,
        };
        let status = response.status();
        let latency = started.elapsed();
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        metrics::record(labels, status, latency);
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), latency_us, "response failed");
        } else {
            tracing::debug!(
                status = status.as_u16(),
                latency_us,
                "finished processing request"
            );
        }
        response
    }
    .instrument(span)
    .await
}

/// Runs the request; one that is not a realtime stream answers 503 (with `Retry-After`) once it
/// has run for `timeout`. Its work is dropped: a write that had not committed is rolled back, one
/// that had stays (the client was not told either way and retries with `If-Match`).
async fn within(timeout: Option<Duration>, request: Request, next: Next) -> Response {
    let Some(timeout) = timeout else {
        return next.run(request).await;
    };
    if matches!(request.uri().path(), "/v1/events" | "/v1/ws") {
        return next.run(request).await;
    }
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ::metrics::counter!(metrics::REQUEST_TIMEOUTS).increment(1);
            ApiError::unavailable(format!(
                "the request did not finish within {} ms",
                timeout.as_millis()
            ))
            .into_response()
        }
    }
}

/// The span of one request: method, path and request id (never headers: they carry tokens).
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
}
