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
use futures_util::SinkExt;
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

/// Most events one WebSocket write carries.
const WS_BATCH: usize = 16;

/// Frames are collected up to this many bytes before they are written (or up to a flush,
/// after each batch); a connection keeps a buffer this size once a batch has filled it.
const WS_WRITE_BUFFER: usize = 8 * 1024;

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
    // One allocation for the connection's state: axum keeps the upgrade callback beside the
    // future it makes, so whatever the callback captures inline is held twice.
    let session = Box::new(WsSession {
        conn: realtime.admit("ws", client_ip(client))?,
        sub: Subscription::open(&realtime.log, topics, since),
        heartbeat: realtime.heartbeat,
        stop: realtime.stop.clone(),
        deadline: realtime.deadline(),
    });
    // Small buffers: an idle connection must stay cheap. Clients send only pongs and closes;
    // writes collect up to a batch of events before the flush that sends them.
    let upgrade = upgrade
        .read_buffer_size(256)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .max_message_size(MAX_CLIENT_MESSAGE);
    Ok(upgrade.on_upgrade(move |socket| stream_ws(socket, session)))
}

fn client_ip(client: Option<Extension<ClientIp>>) -> std::net::IpAddr {
    client.map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.0.0)
}

/// What a WebSocket connection holds besides its socket.
struct WsSession {
    sub: Subscription,
    conn: Connection,
    heartbeat: std::time::Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    deadline: Option<tokio::time::Instant>,
}

/// Streams events to `socket` until one side ends it. Not an `async fn`: an async fn stores its
/// arguments twice in its future (as arguments and as locals); an `async move` block uses
/// what it captures in place, and every idle connection holds this future.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice per connection"
)]
fn stream_ws(mut socket: WebSocket, session: Box<WsSession>) -> impl Future<Output = ()> {
    async move {
        let WsSession {
            mut sub,
            mut conn,
            heartbeat,
            stop,
            deadline,
        } = *session;
        let mut ping = tokio::time::interval(heartbeat);
        ping.tick().await;
        let mut awaiting_pong = false;
        // Made once per connection, not once per event: no timer or channel clone per delivery.
        let stopped = stopped(stop);
        let aged = aged(deadline);
        tokio::pin!(stopped, aged);
        // One task reads and writes the socket (no split: no lock around it, and no allocation).
        loop {
            // Biased, events first: a delivery wakes this task and is sent without first trying
            // a read of the socket (which fills a read buffer only to find nothing there).
            let close = tokio::select! {
                biased;
                out = sub.next() => match out {
                    Some(out) => match deliver(&mut socket, &mut sub, out).await {
                        Ok(None) => continue,
                        Ok(Some(reason)) => {
                            conn.ends_because(reason);
                            None
                        }
                        Err(_) => break,
                    },
                    None => break,
                },
                () = &mut stopped => {
                    conn.ends_because("shutdown");
                    None
                }
                () = &mut aged => {
                    conn.ends_because("age");
                    Some(axum::extract::ws::CloseFrame {
                        code: axum::extract::ws::close_code::AWAY,
                        reason: "maximum connection age; resume with since".into(),
                    })
                }
                _ = ping.tick() => {
                    if !awaiting_pong {
                        awaiting_pong = true;
                        if socket.send(Message::Ping(Default::default())).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    conn.ends_because("idle");
                    None
                }
                message = socket.recv() => match message {
                    Some(Ok(Message::Pong(_))) => {
                        awaiting_pong = false;
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                }
            };
            let _ = socket.send(Message::Close(close)).await;
            break;
        }
    }
}

/// Writes `first` and whatever else the subscription already holds (up to [`WS_BATCH`]) with
/// one flush: at 10 events a second each write carries one event, but when events come faster
/// than the socket drains, one system call carries several. `Ok(Some(reason))`: the stream
/// ends here (lagged).
async fn deliver(
    socket: &mut WebSocket,
    sub: &mut Subscription,
    first: Outgoing,
) -> Result<Option<&'static str>, axum::Error> {
    let mut out = first;
    let mut written = 0;
    loop {
        sent(&out);
        socket.feed(Message::Text(out.json().into())).await?;
        if let Outgoing::Resync { close: true, .. } = out {
            socket.flush().await?;
            return Ok(Some("lagged"));
        }
        written += 1;
        // Take the next only when there is room for it: what is taken must be written.
        if written == WS_BATCH {
            break;
        }
        match sub.try_next() {
            Some(next) => out = next,
            None => break,
        }
    }
    socket.flush().await?;
    Ok(None)
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
