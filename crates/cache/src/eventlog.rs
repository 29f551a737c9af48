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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use postcache_api::{Event, EventType, Post, Topic};
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
    /// Before every event; in a token: "position unknown".
    pub const ZERO: Position = Position { epoch: 0, seq: 0 };

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

impl Position {
    /// The position just before this one (nothing can sit between them).
    pub fn before(self) -> Position {
        match self.seq {
            0 => Position {
                epoch: self.epoch.saturating_sub(1),
                seq: u64::MAX,
            },
            seq => Position {
                epoch: self.epoch,
                seq: seq - 1,
            },
        }
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
    /// The same, framed once as a Server-Sent Events message ([`sse_message`]), so every SSE
    /// subscriber sends these bytes without copying them.
    pub sse: Bytes,
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
    /// Positions at or after this are known: a subscriber resuming from one misses nothing.
    floor: Position,
    head: Position,
    epoch: u64,
    events: VecDeque<Arc<LoggedEvent>>,
    retention: usize,
    /// Estimated bytes held by `events`, and their bound.
    bytes: usize,
    max_bytes: usize,
}

/// Estimated bytes an event holds: its JSON, the post's strings beside it, and the structs.
fn weight(event: &LoggedEvent) -> usize {
    2 * event.json.len() + event.sse.len() + event.author_id.len() + 256
}

impl LoggedEvent {
    fn new(
        position: Position,
        author_id: String,
        event: Event,
        committed_at: OffsetDateTime,
    ) -> LoggedEvent {
        // An event of strings and integers always serializes.
        let json = serde_json::to_string(&event).unwrap_or_default();
        LoggedEvent {
            position,
            author_id,
            sse: sse_message(&event.id, &json),
            event,
            json,
            committed_at,
        }
    }
}

/// One Server-Sent Events message: `id:` the event id, `data:` the event JSON (serialized JSON
/// has no line breaks, so one `data:` line), then the blank line that ends the message.
pub fn sse_message(id: &str, json: &str) -> Bytes {
    let mut message = Vec::with_capacity(id.len() + json.len() + 12);
    for part in ["id: ", id, "\ndata: ", json, "\n\n"] {
        message.extend_from_slice(part.as_bytes());
    }
    Bytes::from(message)
}

/// One change to append, whatever assigns its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub kind: EventType,
    /// The post's id.
    pub post_id: String,
    /// The post's author.
    pub author_id: String,
    /// The post's version after the change.
    pub version: i64,
    /// The post after the change (`None` for deletes).
    pub post: Option<Post>,
    /// Commit time.
    pub committed_at: OffsetDateTime,
    /// The tags the post had before (feeds it left are invalidated on every pod).
    pub previous_tags: Vec<String>,
}

/// Queue of a narrow topic's channel: such a topic carries few events, and every narrow
/// subscriber of a distinct topic pays for its own buffer.
const NARROW_QUEUE: usize = 128;

/// The in-process event log with bounded retention and live fan-out through per-topic channels.
///
/// Every event goes to the `posts` channel; an event of post `p` by author `a` also goes to the
/// `author:a` and `post:p` channels while someone listens there. A subscriber of one narrow topic
/// thus receives (and can lag on) only its own events; one of `posts` or of several topics takes
/// the `posts` channel and filters, which keeps a single ordered stream per subscriber.
pub struct EventLog {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<LoggedEvent>>,
    narrow: Mutex<HashMap<Topic, broadcast::Sender<Arc<LoggedEvent>>>>,
    lag: usize,
}

impl EventLog {
    /// A log keeping the last `retention` events; live subscribers may fall `lag` events behind
    /// before they are told to resync.
    pub fn new(retention: usize, lag: usize) -> EventLog {
        let epoch = u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(0);
        let (live, _) = broadcast::channel(lag.max(1));
        let start = Position { epoch, seq: 0 };
        EventLog {
            narrow: Mutex::new(HashMap::new()),
            lag: lag.max(1),
            ring: Mutex::new(Ring {
                floor: start,
                head: start,
                epoch,
                events: VecDeque::new(),
                retention: retention.max(1),
                bytes: 0,
                max_bytes: usize::MAX,
            }),
            live,
        }
    }

    /// Retention is also bounded by `max_bytes` of events (estimated; the newest event is always
    /// kept).
    pub fn with_max_bytes(self, max_bytes: u64) -> EventLog {
        self.lock().max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        self
    }

    /// Appends a change at the next position of this log's own sequence (the embedded default).
    pub fn append(&self, change: Change) -> Arc<LoggedEvent> {
        let mut ring = self.lock();
        let position = Position {
            epoch: ring.epoch,
            seq: ring.head.seq + 1,
        };
        self.push(&mut ring, position, change)
    }

    /// Appends a change at a position another log assigned (a Redis Stream entry id), so that every
    /// pod names events alike. Positions at or below the head are ignored (`None`): replays are
    /// harmless.
    pub fn append_at(&self, position: Position, change: Change) -> Option<Arc<LoggedEvent>> {
        let mut ring = self.lock();
        (position > ring.head).then(|| self.push(&mut ring, position, change))
    }

    /// Makes this log follow a shared one from `floor` on: positions at or after it are known. Only
    /// before the first event (a pod that starts consuming the shared log).
    pub fn start_at(&self, floor: Position) {
        let mut ring = self.lock();
        if ring.events.is_empty() {
            ring.floor = floor;
            ring.head = floor;
        }
    }

    fn push(&self, ring: &mut Ring, position: Position, change: Change) -> Arc<LoggedEvent> {
        let Change {
            kind,
            post_id,
            author_id,
            version,
            post,
            committed_at,
            previous_tags: _,
        } = change;
        let event = Event {
            id: position.to_string(),
            kind,
            post,
            post_id,
            version,
            ts: format_timestamp(committed_at),
        };
        let logged = Arc::new(LoggedEvent::new(position, author_id, event, committed_at));
        ring.head = position;
        ring.bytes += weight(&logged);
        ring.events.push_back(Arc::clone(&logged));
        while ring.events.len() > ring.retention
            || (ring.bytes > ring.max_bytes && ring.events.len() > 1)
        {
            if let Some(evicted) = ring.events.pop_front() {
                ring.bytes -= weight(&evicted);
                ring.floor = evicted.position;
            }
        }
        // Sent under the ring lock, so every channel carries log order; no receivers is fine.
        let _ = self.live.send(Arc::clone(&logged));
        let mut narrow = self.narrow.lock().unwrap_or_else(PoisonError::into_inner);
        if !narrow.is_empty() {
            for topic in [
                Topic::Author(logged.author_id.clone()),
                Topic::Post(logged.event.post_id.clone()),
            ] {
                if let Some(channel) = narrow.get(&topic)
                    && channel.send(Arc::clone(&logged)).is_err()
                {
                    narrow.remove(&topic); // its last subscriber left
                }
            }
        }
        logged
    }

    /// The log lost events it can never deliver (the shared log lost entries this pod had not
    /// applied, or was recreated): every live subscriber gets a `resync` marker (and is closed),
    /// a resume from before `base` gets a `resync` too, and the log continues after `base` (which
    /// may sort before the old head: a recreated stream). Never a silent gap (G5).
    pub fn restart_at(&self, base: Position) {
        let mut ring = self.lock();
        let had_events = !ring.events.is_empty() || ring.head != base;
        ring.events.clear();
        ring.bytes = 0;
        ring.floor = base;
        ring.head = base;
        if !had_events {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let event = Event {
            id: base.to_string(),
            kind: EventType::Resync,
            post: None,
            post_id: String::new(),
            version: 0,
            ts: format_timestamp(now),
        };
        let marker = Arc::new(LoggedEvent::new(base, String::new(), event, now));
        let _ = self.live.send(Arc::clone(&marker));
        let narrow = self.narrow.lock().unwrap_or_else(PoisonError::into_inner);
        for channel in narrow.values() {
            let _ = channel.send(Arc::clone(&marker));
        }
    }

    /// Drops the channel of `topic` if `receiver` is its last subscriber (call when a narrow
    /// subscription ends, handing over its receiver), so that abandoned topics hold no buffers.
    pub fn release(&self, topic: &Topic, receiver: broadcast::Receiver<Arc<LoggedEvent>>) {
        let mut narrow = self.narrow.lock().unwrap_or_else(PoisonError::into_inner);
        drop(receiver);
        if narrow
            .get(topic)
            .is_some_and(|channel| channel.receiver_count() == 0)
        {
            narrow.remove(topic);
        }
    }

    /// Narrow channels kept (for tests and diagnostics).
    pub fn narrow_channels(&self) -> usize {
        self.narrow
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The newest position.
    pub fn head(&self) -> Position {
        self.lock().head
    }

    /// Subscribes to live events and returns, atomically with it, the backlog after `since`
    /// (`None`: from now on). No event is both in the backlog and live, and none is in neither.
    ///
    /// `topic` names the channel: a narrow one (`author:…`, `post:…`), or `None` (or `posts`) for
    /// all events.
    pub fn subscribe(
        &self,
        since: Option<Position>,
        topic: Option<&Topic>,
    ) -> (broadcast::Receiver<Arc<LoggedEvent>>, Backlog) {
        let ring = self.lock();
        let receiver = match topic {
            None | Some(Topic::Posts) => self.live.subscribe(),
            Some(topic) => {
                let mut narrow = self.narrow.lock().unwrap_or_else(PoisonError::into_inner);
                narrow
                    .entry(topic.clone())
                    .or_insert_with(|| broadcast::channel(self.lag.min(NARROW_QUEUE)).0)
                    .subscribe()
            }
        };
        let Some(since) = since else {
            return (receiver, Backlog::Events(Vec::new()));
        };
        if since < ring.floor || since > ring.head {
            return (receiver, Backlog::Gone { head: ring.head });
        }
        let events = ring
            .events
            .iter()
            .filter(|e| e.position > since)
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

    fn change(n: i64) -> Change {
        Change {
            kind: EventType::PostCreated,
            post_id: n.to_string(),
            author_id: "ann".into(),
            version: 1,
            post: None,
            committed_at: OffsetDateTime::now_utc(),
            previous_tags: Vec::new(),
        }
    }

    fn append(log: &EventLog, n: i64) -> Arc<LoggedEvent> {
        log.append(change(n))
    }

    #[test]
    fn retention_is_bounded_in_bytes_too_and_a_resume_from_before_it_resyncs() {
        let log = EventLog::new(10_000, 16).with_max_bytes(64 * 1024);
        let big = |n: i64| Change {
            post: Some(postcache_api::Post {
                id: n.to_string(),
                author_id: "ann".into(),
                title: "t".into(),
                body: "x".repeat(8 * 1024),
                tags: Vec::new(),
                version: 1,
                views: 0,
                created_at: "2026-11-30T00:00:00Z".into(),
                updated_at: "2026-11-30T00:00:00Z".into(),
            }),
            ..change(n)
        };
        let first = log.append(big(1)).position;
        for n in 2..=100 {
            log.append(big(n));
        }
        let ring = log.lock();
        assert!(
            ring.events.len() < 10,
            "{} events of 8 KiB kept under 64 KiB",
            ring.events.len()
        );
        assert!(ring.bytes <= 64 * 1024, "{}", ring.bytes);
        drop(ring);
        assert!(matches!(
            log.subscribe(Some(first), None).1,
            Backlog::Gone { .. }
        ));
    }

    #[test]
    fn nothing_sits_between_a_position_and_the_one_before_it() {
        let p = Position { epoch: 5, seq: 0 };
        assert_eq!(
            p.before(),
            Position {
                epoch: 4,
                seq: u64::MAX
            }
        );
        assert!(p.before() < p);
        let q = Position { epoch: 5, seq: 3 };
        assert_eq!(q.before(), Position { epoch: 5, seq: 2 });
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
        match log.subscribe(Some(first.position), None).1 {
            Backlog::Events(events) => {
                assert_eq!(events.iter().map(|e| e.position).collect::<Vec<_>>(), ids)
            }
            Backlog::Gone { .. } => {
                panic!("resuming right before the oldest retained event is gap-free")
            }
        }
        append(&log, 5); // event 2 falls out
        assert!(matches!(
            log.subscribe(Some(first.position), None).1,
            Backlog::Gone { .. }
        ));
        let other_epoch = Position {
            epoch: first.position.epoch + 1,
            seq: 1,
        };
        assert!(matches!(
            log.subscribe(Some(other_epoch), None).1,
            Backlog::Gone { .. }
        ));
        let future = Position {
            epoch: first.position.epoch,
            seq: 99,
        };
        assert!(
            matches!(log.subscribe(Some(future), None).1, Backlog::Gone { head } if head.seq == 5)
        );
        match log.subscribe(Some(log.head()), None).1 {
            Backlog::Events(events) => assert!(events.is_empty()),
            Backlog::Gone { .. } => panic!("resuming at the head is fine"),
        }
    }

    #[test]
    fn an_interruption_tells_live_subscribers_and_later_resumes_to_resync() {
        let log = EventLog::new(10, 16);
        let before = append(&log, 1).position;
        let after = append(&log, 2).position;
        let (mut live, _) = log.subscribe(None, None);
        // A recreated shared log: its positions sort before this log's head.
        let base = Position {
            epoch: before.epoch,
            seq: 0,
        };
        log.restart_at(base);
        let marker = live.try_recv().unwrap();
        assert_eq!(marker.event.kind, EventType::Resync);
        for gone in [before, after] {
            assert!(matches!(
                log.subscribe(Some(gone), None).1,
                Backlog::Gone { .. }
            ));
        }
        assert!(
            log.append_at(before, change(3)).is_some(),
            "the log continues after its new base, even below the old head"
        );
        assert!(matches!(
            log.subscribe(Some(base), None).1,
            Backlog::Events(ref e) if e.len() == 1
        ));
    }

    #[test]
    fn live_subscribers_see_appends_in_order_after_their_backlog() {
        let log = EventLog::new(10, 16);
        let a = append(&log, 1);
        let since = Position {
            epoch: a.position.epoch,
            seq: 0,
        };
        let (mut live, backlog) = log.subscribe(Some(since), None);
        assert!(matches!(backlog, Backlog::Events(ref e) if e.len() == 1));
        let b = append(&log, 2);
        let c = append(&log, 3);
        assert_eq!(live.try_recv().unwrap().position, b.position);
        assert_eq!(live.try_recv().unwrap().position, c.position);
        assert!(c.json.contains(&format!("\"id\":\"{}\"", c.position)));
    }

    #[test]
    fn positions_from_a_shared_log_order_and_resume_the_same_way() {
        let log = EventLog::new(2, 16);
        let at = |ms, seq| Position { epoch: ms, seq };
        log.start_at(at(1000, 5));
        assert!(log.append_at(at(1000, 7), change(1)).is_some());
        assert!(
            log.append_at(at(1000, 7), change(1)).is_none(),
            "a replayed entry is ignored"
        );
        assert!(log.append_at(at(1001, 0), change(2)).is_some());
        match log.subscribe(Some(at(1000, 5)), None).1 {
            Backlog::Events(events) => assert_eq!(events.len(), 2),
            Backlog::Gone { .. } => panic!("the start floor is known"),
        }
        assert!(
            matches!(
                log.subscribe(Some(at(1000, 4)), None).1,
                Backlog::Gone { .. }
            ),
            "before the floor"
        );
        log.append_at(at(1002, 0), change(3)); // evicts (1000, 7)
        assert!(matches!(
            log.subscribe(Some(at(1000, 5)), None).1,
            Backlog::Gone { .. }
        ));
        match log.subscribe(Some(at(1000, 7)), None).1 {
            Backlog::Events(events) => assert_eq!(
                events.len(),
                2,
                "resuming at the evicted event itself is gap-free"
            ),
            Backlog::Gone { .. } => panic!("the evicted event's successors are all retained"),
        }
    }

    #[test]
    fn a_narrow_subscriber_does_not_lag_on_other_topics() {
        let log = EventLog::new(100, 4);
        let bob = Topic::Author("bob".into());
        let (mut everything, _) = log.subscribe(None, None);
        let (mut only_bob, _) = log.subscribe(None, Some(&bob));
        for n in 0..10 {
            append(&log, n); // by ann
        }
        let mut by_bob = change(99);
        by_bob.author_id = "bob".into();
        let bobs = log.append(by_bob);
        assert!(matches!(
            everything.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        assert_eq!(
            only_bob.try_recv().unwrap().position,
            bobs.position,
            "bob's channel carries bob's only"
        );
        assert!(only_bob.try_recv().is_err());
        assert_eq!(log.narrow_channels(), 1);
        log.release(&bob, only_bob);
        assert_eq!(
            log.narrow_channels(),
            0,
            "the last subscriber of a topic takes its channel along"
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Positions over the whole range, and at the edges (seq 0, `u64::MAX`, small epochs).
    fn position() -> impl Strategy<Value = Position> {
        let part = || prop_oneof![any::<u64>(), 0..3u64, (u64::MAX - 2)..=u64::MAX];
        (part(), part()).prop_map(|(epoch, seq)| Position { epoch, seq })
    }

    /// `p` moved by a few steps in either part, so that `q` lands next to `p.before()`.
    fn near(p: Position) -> impl Strategy<Value = Position> {
        (-2i64..=2, -2i64..=2).prop_map(move |(de, ds)| Position {
            epoch: p.epoch.saturating_add_signed(de),
            seq: p.seq.saturating_add_signed(ds),
        })
    }

    proptest! {
        #[test]
        fn display_then_parse_is_the_identity(p in position()) {
            prop_assert_eq!(Position::parse(&p.to_string()), Some(p));
        }

        /// Never panics; whatever it accepts names the same position as Display's spelling.
        #[test]
        fn parse_accepts_only_epoch_dash_seq(s in prop_oneof![
            "[0-9]{1,22}-[0-9]{1,22}",
            "[0-9+ -]{0,24}",
            any::<String>(),
        ]) {
            if let Some(p) = Position::parse(&s) {
                let (epoch, seq) = s.split_once('-').expect("an accepted position has a dash");
                prop_assert_eq!(epoch.parse::<u64>(), Ok(p.epoch), "{:?}", s);
                prop_assert_eq!(seq.parse::<u64>(), Ok(p.seq), "{:?}", s);
                prop_assert!(s.bytes().all(|b| b.is_ascii_digit() || b == b'-'), "{:?}", s);
            }
        }

        /// `before` is the predecessor in the order positions sort in. `0-0` has none (no log
        /// assigns it: Redis stream ids start at `0-1`, the in-process log at seq 1).
        #[test]
        fn nothing_sits_between_a_position_and_the_one_before_it(
            (p, q) in position()
                .prop_filter("0-0 has no predecessor", |p| *p != Position::ZERO)
                .prop_flat_map(|p| (Just(p), prop_oneof![near(p), near(p.before()), position()]))
        ) {
            let b = p.before();
            prop_assert!(b < p, "{} is not before {}", b, p);
            prop_assert!(!(b < q && q < p), "{} sits between {} and {}", q, b, p);
        }
    }
}
