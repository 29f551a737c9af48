//! The two transports over one [`Subscription`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::OnceLock;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use metrics::{Counter, Histogram};
use postcache_api::{ErrorBody, Event};
use postcache_cache::Position;
use time::OffsetDateTime;

use super::subscription::{Outgoing, Subscription, parse_topics};
use super::{Connection, Realtime, aged, stopped};
use crate::client::ClientIp;
use crate::error::ApiError;
use crate::metrics::{REALTIME_DELIVERY, REALTIME_EVENTS_SENT};

/// Largest message a client may send on the WebSocket (it only ever sends pongs and closes).
const MAX_CLIENT_MESSAGE: usize = 4 * 1024;

/// Server-Sent Events of `topics` (default `posts`); resume with `Last-Event-ID` (or `since`).
#[utoipa::path(get, path = "/v1/events", tag = "realtime",
    params(
        ("topics" = Option<String>, Query, description = "Comma list of posts, author:{id}, post:{id}"),
        ("since" = Option<String>, Query, description = "Resume after this event id (the Last-Event-ID header wins)")),
    responses(
        (status = 200, description = "text/event-stream of events; `id:` is the event id", body = Event),
        (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn events(
    State(realtime): State<Realtime>,
    client: Option<Extension<ClientIp>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let topics = parse_topics(params.get("topics").map(String::as_str))
        .map_err(|m| ApiError::bad_request("topics", m))?;
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(params.get("since").map(String::as_str))
        .map(Position::parse);
    let connection = realtime.admit("sse", client_ip(client))?;
    let subscription = Subscription::open(&realtime.log, topics, since);
    let deadline = realtime.deadline();
    // The stop signal and the age limit are made once per connection, not once per event.
    let end = Box::pin(async move {
        tokio::select! {
            () = stopped(realtime.stop.clone()) => "shutdown",
            () = aged(deadline) => "age",
        }
    });
    let stream = futures_util::stream::unfold(
        (subscription, connection, end),
        |(mut sub, mut conn, mut end)| async move {
            let out = tokio::select! {
                biased;
                out = sub.next() => out?,
                reason = &mut end => {
                    conn.ends_because(reason);
                    return None;
                }
            };
            if let Outgoing::Resync { close: true, .. } = out {
                conn.ends_because("lagged");
            }
            sent(&out);
            let event = SseEvent::default().id(out.id()).data(out.json());
            Some((Ok::<_, Infallible>(event), (sub, conn, end)))
        },
    );
    let keep_alive = KeepAlive::new()
        .interval(realtime.heartbeat)
        .text("heartbeat");
    Ok(Sse::new(stream).keep_alive(keep_alive).into_response())
}

/// The same events over a WebSocket, as JSON text frames; resume with `since`.
#[utoipa::path(get, path = "/v1/ws", tag = "realtime",
    params(
        ("topics" = Option<String>, Query, description = "Comma list of posts, author:{id}, post:{id}"),
        ("since" = Option<String>, Query, description = "Resume after this event id")),
    responses(
        (status = 101, description = "Switching protocols; then one text frame per event", body = Event),
        (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn ws(
    State(realtime): State<Realtime>,
    client: Option<Extension<ClientIp>>,
    Query(params): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(
            "upgrade",
            format!("a WebSocket upgrade is required: {}", e.body_text()),
        )
    })?;
    let topics = parse_topics(params.get("topics").map(String::as_str))
        .map_err(|m| ApiError::bad_request("topics", m))?;
    let since = params.get("since").map(|s| Position::parse(s));
    let connection = realtime.admit("ws", client_ip(client))?;
    let subscription = Subscription::open(&realtime.log, topics, since);
    let (heartbeat, stop, deadline) = (
        realtime.heartbeat,
        realtime.stop.clone(),
        realtime.deadline(),
    );
    // Small buffers: an idle connection must stay cheap.
    let upgrade = upgrade
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .max_message_size(MAX_CLIENT_MESSAGE);
    Ok(upgrade.on_upgrade(move |socket| {
        stream_ws(socket, subscription, connection, heartbeat, stop, deadline)
    }))
}

fn client_ip(client: Option<Extension<ClientIp>>) -> std::net::IpAddr {
    client.map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.0.0)
}

async fn stream_ws(
    socket: WebSocket,
    mut sub: Subscription,
    mut conn: Connection,
    heartbeat: std::time::Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    deadline: Option<tokio::time::Instant>,
) {
    let (mut tx, mut rx) = socket.split();
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    let mut awaiting_pong = false;
    // Made once per connection, not once per event: no timer or channel clone per delivery.
    let stopped = stopped(stop);
    let aged = aged(deadline);
    tokio::pin!(stopped, aged);
    loop {
        // Biased, events first: a delivery wakes this task and is sent without first trying
        // a read of the socket (which fills a read buffer only to find nothing there).
        tokio::select! {
            biased;
            out = sub.next() => {
                let Some(out) = out else { break };
                sent(&out);
                if tx.send(Message::Text(out.json().into())).await.is_err() {
                    break;
                }
                if let Outgoing::Resync { close: true, .. } = out {
                    conn.ends_because("lagged");
                    let _ = tx.send(Message::Close(None)).await;
                    break;
                }
            }
            () = &mut stopped => {
                conn.ends_because("shutdown");
                let _ = tx.send(Message::Close(None)).await;
                break;
            }
            () = &mut aged => {
                conn.ends_because("age");
                let close = axum::extract::ws::CloseFrame {
                    code: axum::extract::ws::close_code::AWAY,
                    reason: "maximum connection age; resume with since".into(),
                };
                let _ = tx.send(Message::Close(Some(close))).await;
                break;
            }
            _ = ping.tick() => {
                if awaiting_pong {
                    conn.ends_because("idle");
                    let _ = tx.send(Message::Close(None)).await;
                    break;
                }
                awaiting_pong = true;
                if tx.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            message = rx.next() => match message {
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Counts a sent event and, for a logged one, its commit → sent delay. The metric handles are
/// looked up once per process, not once per delivery.
fn sent(out: &Outgoing) {
    static HANDLES: OnceLock<(Counter, Histogram)> = OnceLock::new();
    let (events, delivery) = HANDLES.get_or_init(|| {
        (
            metrics::counter!(REALTIME_EVENTS_SENT),
            metrics::histogram!(REALTIME_DELIVERY),
        )
    });
    events.increment(1);
    if let Outgoing::Event(event) = out {
        let delay = (OffsetDateTime::now_utc() - event.committed_at)
            .as_seconds_f64()
            .max(0.0);
        delivery.record(delay);
    }
}
