//! `GET /v1/ws`: the event log over a WebSocket, as JSON text frames.

use std::collections::HashMap;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::response::Response;
use futures_util::SinkExt;
use postcache_api::{ErrorBody, Event};
use postcache_cache::Position;
use time::OffsetDateTime;

use super::subscription::{Outgoing, Subscription, parse_topics};
use super::{Connection, Realtime, aged, client_ip, sent, stopped};
use crate::client::ClientIp;
use crate::error::ApiError;

/// Largest message a client may send on the WebSocket (it only ever sends pongs and closes).
const MAX_CLIENT_MESSAGE: usize = 4 * 1024;

/// Most events one WebSocket write carries.
const WS_BATCH: usize = 16;

/// Frames are collected up to this many bytes before they are written (or up to a flush,
/// after each batch); a connection keeps a buffer this size once a batch has filled it.
const WS_WRITE_BUFFER: usize = 8 * 1024;

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
    let now = OffsetDateTime::now_utc();
    let mut out = first;
    let mut written = 0;
    loop {
        sent(&out, now);
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
