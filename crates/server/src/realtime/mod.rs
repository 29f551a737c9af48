//! Realtime fan-out: `GET /v1/events` (SSE) and `GET /v1/ws` (WebSocket) stream the event log.
//!
//! ```text
//! EventLog ──per-topic broadcast──▶ Subscription (topic filter, resume backlog, lag → resync + close)
//!                              ├─▶ SSE: `id:` = position, `data:` = event JSON, comment heartbeats
//!                              └─▶ WebSocket: text frames, pings, idle close
//! ```
//! Every connection holds a permit of the per-process limit and a metrics guard; a slow consumer
//! only ever lags its own bounded queue (the broadcast never waits for it).

mod routes;
mod subscription;

use std::sync::Arc;
use std::time::Duration;

use postcache_cache::EventLog;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub(crate) use routes::{__path_events, __path_ws, events, ws};

use crate::error::ApiError;
use crate::metrics::{REALTIME_CONNECTIONS, REALTIME_DISCONNECTS};

/// What the realtime routes share.
#[derive(Clone)]
pub struct Realtime {
    log: Arc<EventLog>,
    permits: Arc<Semaphore>,
    heartbeat: Duration,
    stop: watch::Receiver<bool>,
}

impl Realtime {
    /// Streams `log` to at most `max_connections` subscribers at once, with a heartbeat (SSE
    /// comment, WebSocket ping) every `heartbeat`.
    pub fn new(log: Arc<EventLog>, max_connections: usize, heartbeat: Duration) -> Realtime {
        // Until `with_shutdown`: a channel whose sender is gone, which `stopped` reads as "never".
        let (_, stop) = watch::channel(false);
        Realtime {
            log,
            permits: Arc::new(Semaphore::new(max_connections)),
            heartbeat,
            stop,
        }
    }

    /// Ends every stream (SSE end, WebSocket close) when `stop` turns true, so that a graceful
    /// shutdown is not held up by subscribers that would never hang up.
    pub fn with_shutdown(mut self, stop: watch::Receiver<bool>) -> Realtime {
        self.stop = stop;
        self
    }

    fn admit(&self, transport: &'static str) -> Result<Connection, ApiError> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            ApiError::unavailable("this pod serves its maximum of realtime connections")
        })?;
        metrics::gauge!(REALTIME_CONNECTIONS, "transport" => transport).increment(1.0);
        Ok(Connection {
            transport,
            _permit: permit,
            reason: "client",
        })
    }
}

/// One admitted connection: holds its permit and keeps the connection gauge right.
pub(crate) struct Connection {
    transport: &'static str,
    _permit: OwnedSemaphorePermit,
    reason: &'static str,
}

impl Connection {
    /// Why the connection ends, for `postcache_realtime_disconnects_total` (default `client`).
    pub(crate) fn ends_because(&mut self, reason: &'static str) {
        self.reason = reason;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        metrics::gauge!(REALTIME_CONNECTIONS, "transport" => self.transport).decrement(1.0);
        metrics::counter!(REALTIME_DISCONNECTS, "reason" => self.reason).increment(1);
    }
}

/// Resolves when `stop` turns true; never, if its sender is gone without saying so.
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
