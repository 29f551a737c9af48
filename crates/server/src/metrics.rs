//! Every metric the service exports, described in one place, and the HTTP metrics middleware.
//!
//! Names follow CONTRACT.md; histograms have buckets from 50 µs (an L1 hit) to 10 s (an outlier).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use metrics::{Counter, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use postcache_cache::{DB_POOL_CONNECTIONS, DB_POOL_MAX};

/// HTTP requests by `route` (the matched template), `method` and `status`.
pub(crate) const HTTP_REQUESTS: &str = "postcache_http_requests_total";
/// HTTP latency by `route` and `method`.
pub(crate) const HTTP_DURATION: &str = "postcache_http_request_duration_seconds";
/// Open realtime connections by `transport` (`ws`, `sse`).
pub(crate) const REALTIME_CONNECTIONS: &str = "postcache_realtime_connections";
/// Events written to realtime subscribers.
pub(crate) const REALTIME_EVENTS_SENT: &str = "postcache_realtime_events_sent_total";
/// Commit → sent to a subscriber, per event.
pub(crate) const REALTIME_DELIVERY: &str = "postcache_realtime_delivery_seconds";
/// Closed realtime connections by `reason` (`client`, `lagged`, `idle`, `shutdown`).
pub(crate) const REALTIME_DISCONNECTS: &str = "postcache_realtime_disconnects_total";
/// Always 1, labelled with the `version` running (join on it to see versions across pods).
pub(crate) const BUILD_INFO: &str = "postcache_build_info";
/// Consistency tokens no key signed (forged, or from a retired key), read as no token.
pub(crate) const TOKENS_REJECTED: &str = "postcache_tokens_rejected_total";
/// Requests refused by a per-client limit, by `limit` (`rate`, `realtime`).
pub(crate) const CLIENT_LIMITED: &str = "postcache_client_limited_total";
/// Requests that ran past the request timeout (answered 503).
pub(crate) const REQUEST_TIMEOUTS: &str = "postcache_http_request_timeouts_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder (installed on first use; later calls share it).
///
/// # Panics
/// If another `metrics` recorder was installed first: a start-up bug.
pub(crate) fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        postcache_cache::CACHE_REQUESTS,
        "Cache lookups by tier and result."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route template, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by route template and method."
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database pool connections by role and state."
    );
    describe_gauge!(DB_POOL_MAX, "Database pool size limit by role.");
    describe_histogram!(
        postcache_cache::DB_QUERY_DURATION,
        Unit::Seconds,
        "Duration of each database call by role."
    );
    describe_gauge!(
        postcache_cache::WRITEBACK_PENDING,
        "Posts with view counts not yet flushed to the database."
    );
    describe_gauge!(
        postcache_cache::DEGRADED,
        "1 while a component is degraded."
    );
    describe_histogram!(
        postcache_cache::INVALIDATION_LAG,
        Unit::Seconds,
        "Commit to applied in this pod, for changes made by other pods."
    );
    describe_gauge!(
        postcache_cache::REPLICA_LAG,
        Unit::Seconds,
        "How far each read replica's replay is behind the primary."
    );
    describe_counter!(
        postcache_cache::EVENTLOG_GAPS,
        "Gaps found in the shared event log (entries lost before this pod applied them)."
    );
    describe_gauge!(
        postcache_cache::L1_DISTRUSTED,
        "1 while this pod serves without trusting its in-process cache (cut off from the event log)."
    );
    describe_gauge!(
        REALTIME_CONNECTIONS,
        "Open realtime connections by transport."
    );
    describe_counter!(
        REALTIME_EVENTS_SENT,
        "Events written to realtime subscribers."
    );
    describe_histogram!(
        REALTIME_DELIVERY,
        Unit::Seconds,
        "Commit to sent, per realtime event."
    );
    describe_counter!(
        REALTIME_DISCONNECTS,
        "Closed realtime connections by reason."
    );
    describe_counter!(
        TOKENS_REJECTED,
        "Consistency tokens no key signed, read as no token."
    );
    describe_counter!(
        CLIENT_LIMITED,
        "Requests refused by a per-client limit (rate, realtime connections)."
    );
    describe_counter!(
        REQUEST_TIMEOUTS,
        "Requests answered 503 because they ran past the request timeout."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version running.");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::counter!(TOKENS_REJECTED).absolute(0);
    metrics::counter!(REQUEST_TIMEOUTS).absolute(0);
    for limit in ["rate", "realtime"] {
        metrics::counter!(CLIENT_LIMITED, "limit" => limit).absolute(0);
    }
}

/// Drains the recorder's histogram buffers. The exporter does it on every scrape; nothing scraping
/// must not mean memory growing with every request, so the maintenance loop calls this too.
pub(crate) fn upkeep() {
    handle().run_upkeep();
}

/// The labels a request is counted under: its route template (never the raw path, so ids do not
/// explode the label set; `unmatched` for no route) and its method.
pub(crate) fn labels(request: &Request) -> (&'static str, &'static str) {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| intern(p.as_str()));
    (route, method_label(request.method()))
}

/// Counts and times one answer. The counter and histogram of each (route, method, status) are
/// looked up in the recorder once per thread and kept: the hot path allocates nothing and takes
/// no lock but the read side of [`intern`]'s.
pub(crate) fn record(
    (route, method): (&'static str, &'static str),
    status: StatusCode,
    latency: Duration,
) {
    HANDLES.with_borrow_mut(|handles| {
        let (requests, duration) = handles
            .entry((route, method, status.as_u16()))
            .or_insert_with(|| {
                let status = intern(status.as_str());
                (
                    metrics::counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status),
                    metrics::histogram!(HTTP_DURATION, "route" => route, "method" => method),
                )
            });
        requests.increment(1);
        duration.record(latency.as_secs_f64());
    });
}

/// Route template, method and status.
type RequestKey = (&'static str, &'static str, u16);

thread_local! {
    /// This thread's handles of the HTTP metrics.
    static HANDLES: RefCell<HashMap<RequestKey, (Counter, Histogram)>> =
        RefCell::new(HashMap::new());
}

/// The `'static` copy of a route template or a status code, one per thread (as many as there are
/// routes and codes: a few bytes each, made once), so a request takes no lock.
fn intern(route: &str) -> &'static str {
    thread_local! {
        static SEEN: RefCell<HashSet<&'static str>> = RefCell::new(HashSet::new());
    }
    SEEN.with_borrow_mut(|seen| match seen.get(route) {
        Some(known) => known,
        None => {
            let known: &'static str = Box::leak(route.to_owned().into_boxed_str());
            seen.insert(known);
            known
        }
    })
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
