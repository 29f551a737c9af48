//! The fan-out load: `--subscribers` connections over WebSocket, SSE or Socket.IO, and one
//! publisher creating `--events-per-second` posts, each titled `fanout-<unix nanos>` at its
//! send time. Every subscriber finds that time in each event it receives: delivery latency
//! is publish → received, whatever the transport's framing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{ACCEPT, HOST};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::args::{BenchArgs, BenchError, Mode};
use crate::http::Target;
use crate::report::{FanoutReport, FanoutServer};
use crate::server::{Window, rss_bytes};
use crate::stats::OpStats;

const MARKER: &str = "fanout-";
const SHARDS: usize = 8;

/// What the subscribers share.
struct Inbox {
    /// When publishing started (unix nanos): the timeline's zero.
    start_nanos: AtomicU64,
    connected: AtomicUsize,
    failed: AtomicUsize,
    deliveries: AtomicU64,
    shards: Vec<Mutex<OpStats>>,
}

impl Inbox {
    /// Records one received event (any text holding the marker).
    fn received(&self, shard: usize, text: &str) {
        let Some(sent) = sent_nanos(text) else {
            return;
        };
        let now = unix_nanos();
        let start = u128::from(self.start_nanos.load(Ordering::Relaxed));
        let at = sent.saturating_sub(start) as f64 / 1e9;
        let micros = (now.saturating_sub(sent) / 1000) as u64;
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.shards[shard % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(at, micros);
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The send time the publisher wrote after the marker.
fn sent_nanos(text: &str) -> Option<u128> {
    let rest = &text[text.find(MARKER)? + MARKER.len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

pub(crate) async fn run(args: &BenchArgs, mode: Mode) -> Result<FanoutReport, BenchError> {
    if !(args.events_per_second > 0.0 && args.events_per_second.is_finite()) {
        return Err(BenchError::Invalid(
            "--events-per-second must be above 0".into(),
        ));
    }
    let target = Target::parse(&args.url)?;
    let inbox = Arc::new(Inbox {
        start_nanos: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        deliveries: AtomicU64::new(0),
        shards: (0..SHARDS)
            .map(|_| Mutex::new(OpStats::new(args.seconds)))
            .collect(),
    });
    let rss_idle = args.pid.and_then(rss_bytes);

    // In two halves: the second half's growth is what one more connection costs, without the
    // handshakes' working set (bounded by --connect-concurrency, not by the connections).
    let half = args.subscribers / 2;
    let (mut subscribers, _) = connect_all(args, mode, &target, &inbox, 0..half).await;
    let at_half = (
        inbox.connected.load(Ordering::Relaxed),
        args.pid.and_then(rss_bytes),
    );
    let (rest, last_error) = connect_all(args, mode, &target, &inbox, half..args.subscribers).await;
    subscribers.extend(rest);
    let connected = inbox.connected.load(Ordering::Relaxed);
    if connected == 0 {
        return Err(BenchError::Connect(last_error));
    }
    let rss_connected = args.pid.and_then(rss_bytes);
    if !args.quiet {
        eprintln!("{connected} subscribers connected; publishing");
    }

    let window = Window::start(args.pid);
    inbox
        .start_nanos
        .store(u64::try_from(unix_nanos()).unwrap_or(0), Ordering::Relaxed);
    let (published, publish_errors) =
        publish(args, Instant::now(), Duration::from_secs_f64(args.seconds)).await;
    let expected = published * connected as u64;
    drain(&inbox, expected).await;
    let usage = window.and_then(|w| w.end());
    for s in &subscribers {
        s.abort();
    }

    let mut all = OpStats::new(args.seconds);
    for shard in &inbox.shards {
        all.merge(&shard.lock().unwrap_or_else(PoisonError::into_inner));
    }
    let deliveries = inbox.deliveries.load(Ordering::Relaxed);
    let server = usage.map(|usage| FanoutServer {
        deliveries_per_cpu_second: deliveries as f64 / usage.cpu_seconds.max(f64::EPSILON),
        rss_idle_bytes: rss_idle.unwrap_or(0),
        rss_per_connection_bytes: match (rss_idle, rss_connected) {
            (Some(idle), Some(busy)) => busy.saturating_sub(idle) as f64 / connected as f64,
            _ => 0.0,
        },
        rss_marginal_per_connection_bytes: match (at_half, rss_connected) {
            ((half, Some(before)), Some(after)) if connected > half => {
                after.saturating_sub(before) as f64 / (connected - half) as f64
            }
            _ => 0.0,
        },
        usage,
    });
    Ok(FanoutReport {
        mode,
        url: args.url.clone(),
        seconds: args.seconds,
        subscribers: args.subscribers,
        connected,
        connect_errors: inbox.failed.load(Ordering::Relaxed),
        events_per_second: args.events_per_second,
        published,
        publish_errors,
        deliveries,
        expected_deliveries: expected,
        deliveries_per_second: deliveries as f64 / args.seconds,
        latency: all.summary(args.seconds),
        timeline: all.timeline(),
        server,
    })
}

/// Opens the subscribers numbered `which` (a bounded number of handshakes at once) and waits
/// until each has connected or failed; returns their tasks and the last failure's message.
async fn connect_all(
    args: &BenchArgs,
    mode: Mode,
    target: &Target,
    inbox: &Arc<Inbox>,
    which: std::ops::Range<usize>,
) -> (Vec<tokio::task::JoinHandle<()>>, String) {
    let asked = which.len();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let handshakes = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let subscribers: Vec<_> = which
        .map(|i| {
            let (target, inbox, ready, handshakes) = (
                target.clone(),
                Arc::clone(inbox),
                ready_tx.clone(),
                Arc::clone(&handshakes),
            );
            tokio::spawn(async move {
                let permit = handshakes.acquire_owned().await;
                subscribe(mode, &target, i, &inbox, ready, permit.ok()).await;
            })
        })
        .collect();
    drop(ready_tx);
    let mut last_error = String::new();
    for _ in 0..asked {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => last_error = e,
            None => break,
        }
    }
    (subscribers, last_error)
}

/// Lets what is in flight arrive: until `expected` deliveries are in, or 2 s pass without one.
async fn drain(inbox: &Inbox, expected: u64) {
    let mut last = (inbox.deliveries.load(Ordering::Relaxed), Instant::now());
    while last.0 < expected && last.1.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = inbox.deliveries.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
}

/// Creates posts at the asked rate for `length`; returns (published, failed).
async fn publish(args: &BenchArgs, start: Instant, length: Duration) -> (u64, u64) {
    let client = reqwest::Client::new();
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let in_flight = Arc::new(Semaphore::new(64));
    let mut sends = Vec::new();
    for i in 0u64.. {
        let due = start + Duration::from_secs_f64(i as f64 / args.events_per_second);
        if due >= start + length {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        let body = serde_json::json!({
            "author_id": "fanout",
            "title": format!("{MARKER}{}", unix_nanos()),
            "body": "y".repeat(200),
            "tags": ["fanout"],
        });
        let request = crate::http::create_post(&client, args, &body);
        let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
        sends.push(tokio::spawn(async move {
            let _permit = permit;
            match request.send().await {
                Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                _ => failed.fetch_add(1, Ordering::Relaxed),
            };
        }));
    }
    for send in sends {
        let _ = send.await;
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// One subscriber: connects, says whether it could, then records what it receives.
async fn subscribe(
    mode: Mode,
    target: &Target,
    index: usize,
    inbox: &Inbox,
    ready: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let announce = |result: Result<(), String>| {
        match &result {
            Ok(()) => inbox.connected.fetch_add(1, Ordering::Relaxed),
            Err(_) => inbox.failed.fetch_add(1, Ordering::Relaxed),
        };
        let _ = ready.send(result);
    };
    let result = match mode {
        Mode::Ws | Mode::Socketio => websocket(mode, target, index, inbox, &announce, permit).await,
        Mode::Sse => sse(target, index, inbox, &announce, permit).await,
        Mode::Http => Ok(()),
    };
    if let Err(e) = result {
        announce(Err(e));
    }
}

/// A handshake that takes longer fails: a server out of file descriptors leaves connections in
/// its listen queue, never answered.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn handshake<T, E: std::fmt::Display>(
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, step).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "no answer to the handshake within {} s",
            HANDSHAKE_TIMEOUT.as_secs()
        )),
    }
}

/// A WebSocket subscriber, plain (PostCache's `/v1/ws`: one event per text frame) or Socket.IO
/// (engine.io v4 framing, answering its pings): `Err` only when it never connected.
async fn websocket(
    mode: Mode,
    target: &Target,
    index: usize,
    inbox: &Inbox,
    announce: &(dyn Fn(Result<(), String>) + Sync),
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<(), String> {
    let path = match mode {
        Mode::Socketio => "/socket.io/?EIO=4&transport=websocket",
        _ => "/v1/ws",
    };
    let url = format!("ws://{}{}", target.addr, target.path(path));
    let (mut socket, _) = handshake(tokio_tungstenite::connect_async(url)).await?;
    drop(permit);
    // Plain WebSocket subscribers are subscribed once upgraded; Socket.IO ones once joined.
    let mut joined = mode == Mode::Ws;
    if joined {
        announce(Ok(()));
    }
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        if mode == Mode::Ws {
            inbox.received(index, &text);
            continue;
        }
        // engine.io v4: 0 open, 2 ping, 4 message; socket.io inside: 0 connect, 2 event.
        let reply = match text.as_bytes() {
            [b'0', ..] => Some("40"),
            [b'2', ..] => Some("3"),
            [b'4', b'0', ..] if !joined => {
                joined = true;
                announce(Ok(()));
                None
            }
            [b'4', b'2', ..] => {
                inbox.received(index, &text);
                None
            }
            _ => None,
        };
        if let Some(reply) = reply
            && socket.send(Message::text(reply)).await.is_err()
        {
            break;
        }
    }
    if joined {
        Ok(())
    } else {
        Err("the Socket.IO handshake did not finish".into())
    }
}

/// An SSE subscriber: `Err` only when it never connected.
async fn sse(
    target: &Target,
    index: usize,
    inbox: &Inbox,
    announce: &(dyn Fn(Result<(), String>) + Sync),
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<(), String> {
    let mut send = handshake(crate::http::connect(target)).await?;
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = target
        .path("/v1/events")
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    request.headers_mut().insert(HOST, target.host().clone());
    request.headers_mut().insert(
        ACCEPT,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    let response = handshake(send.send_request(request)).await?;
    if !response.status().is_success() {
        return Err(format!("GET /v1/events answered {}", response.status()));
    }
    announce(Ok(()));
    drop(permit);
    let mut body = response.into_body();
    let mut pending = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        // Events end with a blank line.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            if let Ok(event) = std::str::from_utf8(&pending[..end]) {
                inbox.received(index, event);
            }
            pending.drain(..end + 2);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_is_found_in_any_framing() {
        for text in [
            r#"{"type":"post.created","post":{"title":"fanout-1234567","body":"y"}}"#,
            r#"42["post",{"title":"fanout-1234567"}]"#,
            "id: 1-2\ndata: {\"title\":\"fanout-1234567\"}",
        ] {
            assert_eq!(sent_nanos(text), Some(1_234_567), "{text}");
        }
        assert_eq!(sent_nanos(r#"{"type":"resync"}"#), None);
    }
}
