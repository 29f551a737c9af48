//! The event log: every committed change, in the order the outbox relay published it, with a
//! position a subscriber resumes from.
//!
//! ```text
//! outbox ──relay──▶ EventLog::append ──▶ ring (last `retention` events) ──▶ since(position)
//!                                    └─▶ broadcast ──▶ live subscribers
//! ```
//! This is the in-process log of the embedded default. Positions are `{epoch}-{seq}`: the epoch is
//! the log's start time in milliseconds, so a position from before a restart is recognised as
//! unknown (the subscriber gets a `resync`, never a silent gap).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use postcache_api::{Event, EventType, Post};
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::model::format_timestamp;

/// Where an event sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Start time of the log that assigned it (ms since the Unix epoch).
    pub epoch: u64,
    /// 1, 2, 3, … within that log; 0 means "before the first event".
    pub seq: u64,
}

impl Position {
    /// Parses `{epoch}-{seq}`.
    pub fn parse(s: &str) -> Option<Position> {
        let (epoch, seq) = s.split_once('-')?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(epoch) || !digits(seq) {
            return None;
        }
        Some(Position {
            epoch: epoch.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// An event in the log, with what fan-out needs beside the wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Its position (also `event.id`).
    pub position: Position,
    /// The post's author, for `author:{id}` topics (deletes carry no post).
    pub author_id: String,
    /// The wire form.
    pub event: Event,
    /// `event` serialized once, for every subscriber.
    pub json: String,
    /// When the change was committed (delivery latency is measured from here).
    pub committed_at: OffsetDateTime,
}

/// What a subscriber resuming from a position gets.
#[derive(Debug)]
pub enum Backlog {
    /// The events after the position, oldest first (maybe none).
    Events(Vec<Arc<LoggedEvent>>),
    /// The position is older than the log's retention or from another epoch: resync.
    Gone {
        /// The newest position now: continue from here after refetching.
        head: Position,
    },
}

struct Ring {
    epoch: u64,
    next_seq: u64,
    events: VecDeque<Arc<LoggedEvent>>,
    retention: usize,
}

/// The in-process event log with bounded retention and live fan-out.
pub struct EventLog {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<LoggedEvent>>,
}

impl EventLog {
    /// A log keeping the last `retention` events; live subscribers may fall `lag` events behind
    /// before they are told to resync.
    pub fn new(retention: usize, lag: usize) -> EventLog {
        let epoch = u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(0);
        let (live, _) = broadcast::channel(lag.max(1));
        EventLog {
            ring: Mutex::new(Ring {
                epoch,
                next_seq: 1,
                events: VecDeque::new(),
                retention: retention.max(1),
            }),
            live,
        }
    }

    /// Appends one change and hands it to live subscribers.
    pub fn append(
        &self,
        kind: EventType,
        post_id: String,
        author_id: String,
        version: i64,
        post: Option<Post>,
        committed_at: OffsetDateTime,
    ) -> Arc<LoggedEvent> {
        let mut ring = self.lock();
        let position = Position {
            epoch: ring.epoch,
            seq: ring.next_seq,
        };
        ring.next_seq += 1;
        let event = Event {
            id: position.to_string(),
            kind,
            post,
            post_id,
            version,
            ts: format_timestamp(committed_at),
        };
        // An event of strings and integers always serializes.
        let json = serde_json::to_string(&event).unwrap_or_default();
        let logged = Arc::new(LoggedEvent {
            position,
            author_id,
            event,
            json,
            committed_at,
        });
        ring.events.push_back(Arc::clone(&logged));
        while ring.events.len() > ring.retention {
            ring.events.pop_front();
        }
        // Sent under the lock, so live order is log order; no receivers is fine.
        let _ = self.live.send(Arc::clone(&logged));
        logged
    }

    /// The newest position (seq 0 while empty).
    pub fn head(&self) -> Position {
        let ring = self.lock();
        Position {
            epoch: ring.epoch,
            seq: ring.next_seq - 1,
        }
    }

    /// Subscribes to live events and returns, atomically with it, the backlog after `since`
    /// (`None`: from now on). No event is both in the backlog and live, and none is in neither.
    pub fn subscribe(
        &self,
        since: Option<Position>,
    ) -> (broadcast::Receiver<Arc<LoggedEvent>>, Backlog) {
        let ring = self.lock();
        let receiver = self.live.subscribe();
        let head = Position {
            epoch: ring.epoch,
            seq: ring.next_seq - 1,
        };
        let Some(since) = since else {
            return (receiver, Backlog::Events(Vec::new()));
        };
        let first_seq = ring
            .events
            .front()
            .map_or(ring.next_seq, |e| e.position.seq);
        let known =
            since.epoch == ring.epoch && since.seq < ring.next_seq && since.seq + 1 >= first_seq;
        if !known {
            return (receiver, Backlog::Gone { head });
        }
        let events = ring
            .events
            .iter()
            .filter(|e| e.position.seq > since.seq)
            .cloned()
            .collect();
        (receiver, Backlog::Events(events))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(log: &EventLog, n: i64) -> Arc<LoggedEvent> {
        log.append(
            EventType::PostCreated,
            n.to_string(),
            "ann".into(),
            1,
            None,
            OffsetDateTime::now_utc(),
        )
    }

    #[test]
    fn positions_round_trip() {
        let p = Position {
            epoch: 1_700_000_000_000,
            seq: 42,
        };
        assert_eq!(Position::parse(&p.to_string()), Some(p));
        for bad in ["", "1", "1-", "-1", "a-1", "1-b", "1-2-3"] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn resume_returns_exactly_the_missed_events_or_gone() {
        let log = EventLog::new(3, 16);
        let first = append(&log, 1);
        let ids: Vec<_> = (2..=4).map(|n| append(&log, n).position).collect();
        // Retention 3: events 2..=4 remain; resuming after 1 is still gap-free.
        match log.subscribe(Some(first.position)).1 {
            Backlog::Events(events) => {
                assert_eq!(events.iter().map(|e| e.position).collect::<Vec<_>>(), ids)
            }
            Backlog::Gone { .. } => {
                panic!("resuming right before the oldest retained event is gap-free")
            }
        }
        append(&log, 5); // event 2 falls out
        assert!(matches!(
            log.subscribe(Some(first.position)).1,
            Backlog::Gone { .. }
        ));
        let other_epoch = Position {
            epoch: first.position.epoch + 1,
            seq: 1,
        };
        assert!(matches!(
            log.subscribe(Some(other_epoch)).1,
            Backlog::Gone { .. }
        ));
        let future = Position {
            epoch: first.position.epoch,
            seq: 99,
        };
        assert!(matches!(log.subscribe(Some(future)).1, Backlog::Gone { head } if head.seq == 5));
        match log.subscribe(Some(log.head())).1 {
            Backlog::Events(events) => assert!(events.is_empty()),
            Backlog::Gone { .. } => panic!("resuming at the head is fine"),
        }
    }

    #[test]
    fn live_subscribers_see_appends_in_order_after_their_backlog() {
        let log = EventLog::new(10, 16);
        let a = append(&log, 1);
        let (mut live, backlog) = log.subscribe(Some(Position {
            epoch: a.position.epoch,
            seq: 0,
        }));
        assert!(matches!(backlog, Backlog::Events(ref e) if e.len() == 1));
        let b = append(&log, 2);
        let c = append(&log, 3);
        assert_eq!(live.try_recv().unwrap().position, b.position);
        assert_eq!(live.try_recv().unwrap().position, c.position);
        assert!(c.json.contains(&format!("\"id\":\"{}\"", c.position)));
    }
}
