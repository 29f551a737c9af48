//! `GET /v1/events`: the event log as Server-Sent Events.
//!
//! Each event's message (`id:` and `data:` lines) is framed once, when it is logged
//! ([`LoggedEvent::sse`](postcache_cache::LoggedEvent::sse)), and every subscriber sends those
//! shared bytes: fan-out copies nothing per subscriber until the kernel does. When events come
//! faster than a connection drains, what is queued for it leaves in one write.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http_body::Frame;
use postcache_api::{ErrorBody, Event};
use postcache_cache::Position;
use time::OffsetDateTime;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::subscription::{Outgoing, Subscription, parse_topics};
use super::{Connection, Realtime, aged, client_ip, sent, stopped};
use crate::client::ClientIp;
use crate::error::ApiError;

/// Most events one write carries.
const SSE_BATCH: usize = 16;

/// The comment sent when a stream has been quiet for a heartbeat interval.
const HEARTBEAT: &[u8] = b":heartbeat\n\n";

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
    let messages = futures_util::stream::unfold(
        (subscription, connection, end),
        |(mut sub, mut conn, mut end)| async move {
            let first = tokio::select! {
                biased;
                out = sub.next() => out?,
                reason = &mut end => {
                    conn.ends_because(reason);
                    return None;
                }
            };
            let write = batch(&mut sub, &mut conn, first);
            Some((write, (sub, conn, end)))
        },
    );
    let body = EventStream::new(Box::pin(messages), realtime.heartbeat);
    Ok((
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::new(body),
    )
        .into_response())
}

/// The bytes of one write: `first` and whatever else the subscription already holds (up to
/// [`SSE_BATCH`]). A lone event is its shared message as is; several are copied into one
/// buffer (one chunk, one system call). After a lag's resync the subscription holds nothing
/// more, and the stream ends.
fn batch(sub: &mut Subscription, conn: &mut Connection, first: Outgoing) -> Bytes {
    let now = OffsetDateTime::now_utc();
    let message = |conn: &mut Connection, out: Outgoing| {
        if let Outgoing::Resync { close: true, .. } = out {
            conn.ends_because("lagged");
        }
        sent(&out, now);
        out.sse()
    };
    let first = message(conn, first);
    // Take the next only when there is room for it: what is taken must be written.
    let Some(mut next) = sub.try_next() else {
        return first;
    };
    let mut joined = BytesMut::with_capacity(first.len() * 4);
    joined.extend_from_slice(&first);
    for written in 2.. {
        joined.extend_from_slice(&message(conn, next));
        if written == SSE_BATCH {
            break;
        }
        match sub.try_next() {
            Some(out) => next = out,
            None => break,
        }
    }
    joined.freeze()
}

/// The response body: the writes of `messages`, and a heartbeat comment so that the stream is
/// never quiet for longer than the heartbeat interval.
///
/// A clock ticks every half interval and a heartbeat goes out on a tick that follows a quiet
/// half: sending an event costs no timer reset (which takes the timer's lock) and no clock read.
struct EventStream<S> {
    messages: S,
    ticks: Interval,
    /// Nothing was sent since the last tick.
    quiet: bool,
}

impl<S> EventStream<S> {
    fn new(messages: S, heartbeat: Duration) -> EventStream<S> {
        let half = (heartbeat / 2).max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval_at(Instant::now() + half, half);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        EventStream {
            messages,
            ticks,
            quiet: false,
        }
    }
}

impl<S> http_body::Body for EventStream<S>
where
    S: Stream<Item = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        // Events first: a delivery wakes the connection and is written without a look at the clock.
        match this.messages.poll_next_unpin(cx) {
            Poll::Ready(Some(write)) => {
                this.quiet = false;
                return Poll::Ready(Some(Ok(Frame::data(write))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        while this.ticks.poll_tick(cx).is_ready() {
            if this.quiet {
                // A heartbeat is a frame too: the next one follows a whole interval later.
                this.quiet = false;
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(HEARTBEAT)))));
            }
            this.quiet = true;
        }
        Poll::Pending
    }
}
