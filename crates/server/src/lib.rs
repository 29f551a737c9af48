//! PostCache's HTTP service: the posts API over the tiers of `postcache-cache`.
//!
//! ```text
//! request ─▶ request id, span ─▶ admission: client identity ─▶ rate limit ─▶ timeout ─▶ handler ─▶ Posts
//!                                  (trusted proxies)      (not for streams)
//!                                  └─ metrics of every answer (route, method, status, latency)
//! ```
//! [`app`] builds the router (tests drive it in-process); [`serve`] runs it on a socket around the
//! tiers and their background work (`postcache_cache::Background`), with a graceful shutdown.

mod app;
mod auth;
mod client;
mod config;
mod cors;
mod error;
mod io;
mod json;
mod limit;
mod logging;
mod metrics;
mod openapi;
mod otlp;
mod realtime;
mod routes;
mod serve;
mod tokens;
mod validate;

pub use app::{AppState, Http, app, openapi_document};
pub use auth::Auth;
pub use client::TrustedProxies;
pub use config::{
    CacheArgs, DatabaseArgs, DatabaseUrl, GlobalArgs, HttpArgs, LogFormat, RealtimeArgs, RedisArgs,
    RedisUrl, Secret, ServeArgs, TelemetryArgs,
};
pub use error::ApiError;
pub use limit::RateLimit;
pub use logging::{Telemetry, TelemetryError, init_logging};
pub use realtime::Realtime;
pub use serve::{ServeError, serve, shutdown_signal};
pub use tokens::TokenKeys;
