//! [`Subscription`]: one subscriber's view of the event log: topic filter, resume backlog, and the
//! lag rule (fall too far behind → `resync`, then the connection closes).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use postcache_api::{Event, EventType, Topic};
use postcache_cache::{Backlog, EventLog, LoggedEvent, Position, format_timestamp, sse_message};
use time::OffsetDateTime;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// What to send next.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    /// An event of the subscriber's topics.
    Event(Arc<LoggedEvent>),
    /// Refetch, then continue from `id`; `close` when the connection ends after it (lagged).
    Resync {
        id: String,
        json: String,
        close: bool,
    },
}

impl Outgoing {
    pub(crate) fn json(&self) -> &str {
        match self {
            Outgoing::Event(e) => &e.json,
            Outgoing::Resync { json, .. } => json,
        }
    }

    /// As one Server-Sent Events message: a logged event's shared bytes, a resync framed here.
    pub(crate) fn sse(&self) -> Bytes {
        match self {
            Outgoing::Event(e) => e.sse.clone(),
            Outgoing::Resync { id, json, .. } => sse_message(id, json),
        }
    }
}

/// One step of [`Subscription::next`].
enum Step {
    Send(Outgoing),
    End,
    /// An event of another topic was passed over; look again.
    Skip,
    /// Nothing queued here: receive from the channel.
    Wait,
}

pub(crate) struct Subscription {
    log: Arc<EventLog>,
    topics: Vec<Topic>,
    backlog: VecDeque<Arc<LoggedEvent>>,
    /// `None` only while being dropped (handed back to the log).
    live: Option<Receiver<Arc<LoggedEvent>>>,
    /// The narrow channel this subscription holds, if any.
    channel: Option<Topic>,
    resync: Option<Position>,
    closed: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let (Some(topic), Some(live)) = (self.channel.take(), self.live.take()) {
            self.log.release(&topic, live);
        }
    }
}

impl Subscription {
    /// Subscribes to `topics`, resuming after `since` (`Some(None)`: a position that does not parse,
    /// which can only be answered with a resync).
    pub(crate) fn open(
        log: &Arc<EventLog>,
        topics: Vec<Topic>,
        since: Option<Option<Position>>,
    ) -> Subscription {
        let since = since.map(|p| p.unwrap_or(Position { epoch: 0, seq: 0 }));
        // One narrow topic: its own channel. Otherwise the all-events channel, filtered.
        let channel = match topics.as_slice() {
            [topic] => Some(topic),
            _ => None,
        };
        let (live, backlog) = log.subscribe(since, channel);
        let channel = channel.filter(|t| **t != Topic::Posts).cloned();
        let (backlog, resync) = match backlog {
            Backlog::Events(events) => (events.into(), None),
            Backlog::Gone { head } => (VecDeque::new(), Some(head)),
        };
        Subscription {
            log: Arc::clone(log),
            topics,
            backlog,
            live: Some(live),
            channel,
            resync,
            closed: false,
        }
    }

    /// The next thing to send, or `None` when the subscription is over.
    pub(crate) async fn next(&mut self) -> Option<Outgoing> {
        loop {
            let step = match self.ready() {
                Step::Wait => {
                    let received = self.live.as_mut()?.recv().await;
                    self.take(received)
                }
                step => step,
            };
            match step {
                Step::Send(out) => return Some(out),
                Step::End => return None,
                Step::Skip | Step::Wait => {}
            }
        }
    }

    /// What is already queued, without waiting: lets a transport write several events with one
    /// system call when they come faster than its socket drains.
    pub(crate) fn try_next(&mut self) -> Option<Outgoing> {
        loop {
            let step = match self.ready() {
                Step::Wait => match self.live.as_mut()?.try_recv() {
                    Ok(event) => self.take(Ok(event)),
                    Err(TryRecvError::Empty) => return None,
                    Err(TryRecvError::Lagged(n)) => self.take(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Closed) => return None,
                },
                step => step,
            };
            match step {
                Step::Send(out) => return Some(out),
                Step::End => return None,
                Step::Skip | Step::Wait => {}
            }
        }
    }

    /// The step that needs no channel: the end, a pending resync, or the backlog's next event.
    fn ready(&mut self) -> Step {
        if self.closed {
            return Step::End;
        }
        if let Some(head) = self.resync.take() {
            return Step::Send(resync(head, false));
        }
        match self.backlog.pop_front() {
            Some(event) => self.take(Ok(event)),
            None => Step::Wait,
        }
    }

    /// What an event of the log, or the channel's failure, means for this subscriber: a lag or
    /// a resync marker (the log lost events, see `EventLog::restart_at`) ends the stream after
    /// a resync; an event of another topic is skipped.
    fn take(&mut self, received: Result<Arc<LoggedEvent>, RecvError>) -> Step {
        match received {
            Ok(event) if event.event.kind == EventType::Resync => {
                self.closed = true;
                Step::Send(resync(event.position, true))
            }
            Ok(event) if self.wants(&event) => Step::Send(Outgoing::Event(event)),
            Ok(_) => Step::Skip,
            Err(RecvError::Lagged(_)) => {
                self.closed = true;
                Step::Send(resync(self.log.head(), true))
            }
            Err(RecvError::Closed) => Step::End,
        }
    }

    fn wants(&self, event: &LoggedEvent) -> bool {
        self.topics.iter().any(|topic| match topic {
            Topic::Posts => true,
            Topic::Author(id) => *id == event.author_id,
            Topic::Post(id) => *id == event.event.post_id,
        })
    }
}

fn resync(head: Position, close: bool) -> Outgoing {
    let event = Event {
        id: head.to_string(),
        kind: EventType::Resync,
        post: None,
        post_id: String::new(),
        version: 0,
        ts: format_timestamp(OffsetDateTime::now_utc()),
    };
    let json = serde_json::to_string(&event).unwrap_or_default();
    Outgoing::Resync {
        id: event.id,
        json,
        close,
    }
}

/// Parses `topics=posts,author:ann,post:42` (default `posts`).
pub(crate) fn parse_topics(value: Option<&str>) -> Result<Vec<Topic>, String> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(vec![Topic::Posts]);
    };
    let topics: Vec<&str> = value.split(',').collect();
    if topics.len() > 32 {
        return Err("at most 32 topics".into());
    }
    topics
        .into_iter()
        .map(|t| {
            let topic = Topic::parse(t.trim()).ok_or_else(|| {
                format!("`{t:.40}` is not a topic (posts, author:{{id}}, post:{{id}})")
            })?;
            // Ids by the rules of the API itself: every distinct topic costs a channel.
            let valid = match &topic {
                Topic::Posts => true,
                Topic::Author(id) => crate::validate::author_id("topics", id.clone()).is_ok(),
                Topic::Post(id) => postcache_cache::parse_post_id(id).is_some(),
            };
            if valid {
                Ok(topic)
            } else {
                Err(format!(
                    "`{t:.40}` names no valid id (author ids as in posts, post ids as in /v1/posts/{{id}})"
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod topic_tests {
    use super::*;

    #[test]
    fn topic_ids_follow_the_api_rules() {
        assert!(parse_topics(Some("posts,author:ann,post:42")).is_ok());
        for bad in ["post:notanumber", "author:a b", "post:-1"] {
            assert!(parse_topics(Some(bad)).is_err(), "{bad}");
        }
        let long = format!("author:{}", "a".repeat(60_000));
        assert!(parse_topics(Some(&long)).is_err());
    }
}
