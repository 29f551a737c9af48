//! Realtime fan-out: `GET /v1/events` (SSE) and `GET /v1/ws` (WebSocket) stream the event log.
//!
//! ```text
//! EventLog ──per-topic broadcast──▶ Subscription (topic filter, resume backlog, lag → resync + close)
//!                              ├─▶ SSE: `id:` = position, `data:` = event JSON, comment heartbeats
//!                              └─▶ WebSocket: text frames, pings, idle close
//! ```
//! Every connection holds a permit of the per-process limit, a slot of its client's limit and a
//! metrics guard; a slow consumer only ever lags its own bounded queue (the broadcast never waits
//! for it), and one that takes nothing at all meets the listener's write deadline. Connections
//! end after a maximum age (clients resume where they were), so a scale-out spreads them.

mod sse;
mod subscription;
mod ws;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::Extension;
use metrics::{Counter, Histogram};
use postcache_cache::EventLog;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub(crate) use sse::{__path_events, events};
pub(crate) use ws::{__path_ws, ws};

use self::subscription::Outgoing;
use crate::client::ClientIp;
use crate::error::ApiError;
use crate::metrics::{
    CLIENT_LIMITED, REALTIME_CONNECTIONS, REALTIME_DELIVERY, REALTIME_DISCONNECTS,
    REALTIME_EVENTS_SENT,
};

/// What the realtime routes share.
#[derive(Clone)]
pub struct Realtime {
    log: Arc<EventLog>,
    permits: Arc<Semaphore>,
    clients: Arc<ClientSlots>,
    heartbeat: Duration,
    max_age: Option<Duration>,
    stop: watch::Receiver<bool>,
}

/// Open connections per client address.
#[derive(Debug)]
struct ClientSlots {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
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
            clients: Arc::new(ClientSlots {
                max: u32::MAX,
                open: Mutex::new(HashMap::new()),
            }),
            heartbeat,
            max_age: None,
            stop,
        }
    }

    /// At most `max` connections per client address (more get 429).
    pub fn with_client_limit(mut self, max: u32) -> Realtime {
        self.clients = Arc::new(ClientSlots {
            max,
            open: Mutex::new(HashMap::new()),
        });
        self
    }

    /// Connections end after `max_age` (SSE ends the stream, WebSocket closes with 1001); the
    /// client resumes from its last event id.
    pub fn with_max_age(mut self, max_age: Duration) -> Realtime {
        self.max_age = Some(max_age);
        self
    }

    /// Ends every stream (SSE end, WebSocket close) when `stop` turns true, so that a graceful
    /// shutdown is not held up by subscribers that would never hang up.
    pub fn with_shutdown(mut self, stop: watch::Receiver<bool>) -> Realtime {
        self.stop = stop;
        self
    }

    fn admit(&self, transport: &'static str, client: IpAddr) -> Result<Connection, ApiError> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            ApiError::unavailable("this pod serves its maximum of realtime connections")
        })?;
        {
            let mut open = self.clients.open.lock().unwrap_or_else(|p| p.into_inner());
            let count = open.entry(client).or_insert(0);
            if *count >= self.clients.max {
                metrics::counter!(CLIENT_LIMITED, "limit" => "realtime").increment(1);
                return Err(
                    ApiError::too_many_requests(Duration::from_secs(5)).with_message(format!(
                        "this address holds its maximum of {} realtime connections",
                        self.clients.max
                    )),
                );
            }
            *count += 1;
        }
        metrics::gauge!(REALTIME_CONNECTIONS, "transport" => transport).increment(1.0);
        Ok(Connection {
            transport,
            _permit: permit,
            client,
            clients: Arc::clone(&self.clients),
            reason: "client",
        })
    }

    /// When a connection admitted now must end (`None`: never).
    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.max_age.map(|age| tokio::time::Instant::now() + age)
    }
}

/// One admitted connection: holds its permit and client slot, and keeps the connection gauge
/// right.
pub(crate) struct Connection {
    transport: &'static str,
    _permit: OwnedSemaphorePermit,
    client: IpAddr,
    clients: Arc<ClientSlots>,
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
        {
            let mut open = self.clients.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = open.get_mut(&self.client) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&self.client);
                }
            }
        }
        metrics::gauge!(REALTIME_CONNECTIONS, "transport" => self.transport).decrement(1.0);
        metrics::counter!(REALTIME_DISCONNECTS, "reason" => self.reason).increment(1);
    }
}

/// Resolves at `deadline`; never without one.
pub(crate) async fn aged(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when `stop` turns true; never, if its sender is gone without saying so.
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The client's address, as the client-address layer found it (loopback when it did not run).
fn client_ip(client: Option<Extension<ClientIp>>) -> IpAddr {
    client.map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.0.0)
}

/// Counts a sent event and, for a logged one, its commit → sent delay, taking `now` (one clock
/// read per write, not per event) as the time it was sent. The metric handles are looked up
/// once per process, not once per delivery.
fn sent(out: &Outgoing, now: OffsetDateTime) {
    static HANDLES: OnceLock<(Counter, Histogram)> = OnceLock::new();
    let (events, delivery) = HANDLES.get_or_init(|| {
        (
            metrics::counter!(REALTIME_EVENTS_SENT),
            metrics::histogram!(REALTIME_DELIVERY),
        )
    });
    events.increment(1);
    if let Outgoing::Event(event) = out {
        let delay = (now - event.committed_at).as_seconds_f64().max(0.0);
        delivery.record(delay);
    }
}
