//! Smoke tests: each part of the test kit is the real thing, doing the real thing.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(missing_docs)] // a test binary, not an API

mod control_plane;
mod postgres;
mod prometheus;
mod redis;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls an async check until it yields `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    match poll_async(timeout, check).await {
        Ok(value) => value,
        Err(last) => panic!("timed out after {timeout:?} waiting for {what}: {last}"),
    }
}

/// Polls an async check until it yields `Some`; the last error (or "not yet") after `timeout`.
pub async fn poll_async<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "not yet".to_owned(),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
