//! [`Subscriber`]: one SSE subscriber per URL on the run's authors, recording every event it gets
//! into a [`StreamLog`] that G5 is checked on.
//!
//! ```text
//! GET /v1/events?topics=author:a0,author:a1,…  ─▶ frames (id:, data:, ":" heartbeats)
//!   ended or failed ─▶ reopen with Last-Event-ID = the last id received (a resume, not a gap)
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::history::{Clock, Micros};

/// A stream that sends nothing (not even a heartbeat) for this long is taken as dead.
const SILENCE: Duration = Duration::from_secs(60);
/// Pause before reopening a stream that could not be opened.
const RETRY: Duration = Duration::from_millis(100);

/// The change an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Change {
    /// `post.created`.
    Created,
    /// `post.updated`.
    Updated,
    /// `post.deleted`.
    Deleted,
}

/// Something a subscriber received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// An event about one post.
    Event {
        /// Received at.
        at: Micros,
        /// Its log position.
        id: String,
        /// What changed.
        change: Change,
        /// The post.
        post: String,
        /// The post's version after the change.
        version: i64,
    },
    /// `resync`: events before it may be missing.
    Resync {
        /// Received at.
        at: Micros,
    },
}

/// What one subscriber saw over the run.
#[derive(Debug, Clone, Default)]
pub struct StreamLog {
    /// Index of its URL.
    pub url: usize,
    /// When the first stream opened (`None`: never).
    pub connected: Option<Micros>,
    /// Whether a stream is open now.
    pub open: bool,
    /// Streams reopened after the first.
    pub reconnects: usize,
    /// Events and resyncs, in arrival order.
    pub delivered: Vec<Delivered>,
}

/// A running subscriber; [`Subscriber::finish`] stops it and hands back its log.
pub(crate) struct Subscriber {
    log: Arc<Mutex<StreamLog>>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes to `topics` on `base` until `stop` turns true.
    pub(crate) fn start(
        http: reqwest::Client,
        url: usize,
        base: String,
        topics: String,
        clock: Clock,
        stop: watch::Receiver<bool>,
    ) -> Subscriber {
        let log = Arc::new(Mutex::new(StreamLog {
            url,
            ..StreamLog::default()
        }));
        let writer = Arc::clone(&log);
        let task = tokio::spawn(async move {
            let stream = Stream {
                http,
                base,
                topics,
                clock,
                log: writer,
            };
            stream.follow(stop).await;
        });
        Subscriber { log, task }
    }

    /// A copy of what it saw so far.
    pub(crate) fn snapshot(&self) -> StreamLog {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for it to notice the stop signal, then returns its log.
    pub(crate) async fn finish(self) -> StreamLog {
        let Subscriber { log, task } = self;
        let _ = task.await;
        log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

struct Stream {
    http: reqwest::Client,
    base: String,
    topics: String,
    clock: Clock,
    log: Arc<Mutex<StreamLog>>,
}

impl Stream {
    fn with_log<T>(&self, f: impl FnOnce(&mut StreamLog) -> T) -> T {
        f(&mut self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }

    async fn follow(&self, mut stop: watch::Receiver<bool>) {
        let mut last_id: Option<String> = None;
        while !*stop.borrow() {
            let mut request = self
                .http
                .get(format!("{}/v1/events", self.base))
                .query(&[("topics", self.topics.as_str())]);
            if let Some(id) = &last_id {
                request = request.header("last-event-id", id);
            }
            let response = tokio::select! {
                r = request.send() => r,
                _ = stop.changed() => break,
            };
            match response {
                Ok(response) if response.status().is_success() => {
                    let now = self.clock.now();
                    self.with_log(|l| {
                        l.open = true;
                        match l.connected {
                            None => l.connected = Some(now),
                            Some(_) => l.reconnects += 1,
                        }
                    });
                    let stopped = self.read(response, &mut last_id, &mut stop).await;
                    self.with_log(|l| l.open = stopped);
                    if stopped {
                        return;
                    }
                }
                _ => {
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
    }

    /// Reads one stream until it ends (false) or the stop signal (true).
    async fn read(
        &self,
        mut response: reqwest::Response,
        last_id: &mut Option<String>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut buffer = Vec::new();
        loop {
            let chunk = tokio::select! {
                c = tokio::time::timeout(SILENCE, response.chunk()) => c,
                _ = stop.changed() => return true,
            };
            let Ok(Ok(Some(chunk))) = chunk else {
                return false;
            };
            buffer.extend_from_slice(&chunk);
            let at = self.clock.now();
            for frame in take_frames(&mut buffer) {
                if let Some(id) = &frame.id {
                    *last_id = Some(id.clone());
                }
                if let Some(delivered) = frame.delivered(at) {
                    self.with_log(|l| l.delivered.push(delivered));
                }
            }
        }
    }
}

/// One SSE frame: its `id:` and its `data:` lines joined.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    id: Option<String>,
    data: String,
}

impl Frame {
    fn delivered(&self, at: Micros) -> Option<Delivered> {
        let event: serde_json::Value = serde_json::from_str(&self.data).ok()?;
        let change = match event["type"].as_str()? {
            "resync" => return Some(Delivered::Resync { at }),
            "post.created" => Change::Created,
            "post.updated" => Change::Updated,
            "post.deleted" => Change::Deleted,
            _ => return None,
        };
        Some(Delivered::Event {
            at,
            id: event["id"].as_str().unwrap_or_default().to_owned(),
            change,
            post: event["post_id"].as_str()?.to_owned(),
            version: event["version"].as_i64()?,
        })
    }
}

/// Removes the complete frames (blank-line terminated) from `buffer`; comments and frames without
/// data (heartbeats) yield nothing.
fn take_frames(buffer: &mut Vec<u8>) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(end) = frame_end(buffer) {
        let raw: Vec<u8> = buffer.drain(..end).collect();
        let text = String::from_utf8_lossy(&raw);
        let (mut id, mut data) = (None, Vec::new());
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(value) = line.strip_prefix("id:") {
                id = Some(value.trim_start().to_owned());
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        if !data.is_empty() {
            frames.push(Frame {
                id,
                data: data.join("\n"),
            });
        }
    }
    frames
}

/// Length of the first frame including its blank line (`\n\n` or `\r\n\r\n`).
fn frame_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_on_blank_lines_and_skip_heartbeats() {
        let mut buffer = b": heartbeat\n\nid: 1-5\ndata: {\"type\":\"post.updated\",\"id\":\"1-5\",\"post_id\":\"p\",\"version\":3}\n\nid: 1-6\ndata: {\"ty".to_vec();
        let frames = take_frames(&mut buffer);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].id.as_deref(), Some("1-5"));
        assert_eq!(
            frames[0].delivered(7),
            Some(Delivered::Event {
                at: 7,
                id: "1-5".into(),
                change: Change::Updated,
                post: "p".into(),
                version: 3
            })
        );
        assert_eq!(buffer, b"id: 1-6\ndata: {\"ty", "the partial frame waits");
    }

    #[test]
    fn resyncs_are_kept_and_view_counts_dropped() {
        let mut buffer =
            b"data: {\"type\":\"resync\",\"post_id\":\"\",\"version\":0}\r\n\r\ndata: {\"type\":\"post.views\",\"post_id\":\"p\",\"version\":1}\n\n"
                .to_vec();
        let got: Vec<_> = take_frames(&mut buffer)
            .iter()
            .map(|f| f.delivered(1))
            .collect();
        assert_eq!(got, [Some(Delivered::Resync { at: 1 }), None]);
    }
}
