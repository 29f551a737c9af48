//! Per-client rate limiting (GCRA via `governor`), keyed by the peer's IP address.
//!
//! Over the limit a request gets 429 with `Retry-After`. The key is the [`ClientIp`]: the peer, or
//! behind trusted proxies the client they forwarded.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;
use crate::metrics::CLIENT_LIMITED;

/// A keyed limiter shared by all requests.
#[derive(Clone)]
pub struct RateLimit {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl RateLimit {
    /// `per_second` sustained, bursts of `burst`.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> RateLimit {
        RateLimit {
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )),
        }
    }

    /// `Ok` if `client` may make a request now, else how long to wait.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets clients that are back to a full bucket (bounds memory; called periodically).
    pub fn shrink(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The 429 answer when `client` is over `limit` for `path`; `None` lets the request through.
pub(crate) fn refuse(limit: &RateLimit, client: IpAddr, path: &str) -> Option<Response> {
    if UNLIMITED.contains(&path) {
        return None;
    }
    let wait = limit.check(client).err()?;
    metrics::counter!(CLIENT_LIMITED, "limit" => "rate").increment(1);
    Some(ApiError::too_many_requests(wait).into_response())
}

/// Routes no client limit applies to: the kubelet's probes and Prometheus's scrape come from one
/// address each, and behind a proxy every user shares the proxy's, so one abuser must not fail a
/// pod's probes or blind its monitoring.
pub(crate) const UNLIMITED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_client_waits_while_others_do_not() {
        let limit = RateLimit::new(NonZeroU32::new(1).unwrap(), NonZeroU32::new(3).unwrap());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limit.check(a).is_ok());
        }
        let wait = limit.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limit.check(b).is_ok(), "another client has its own bucket");
    }
}
