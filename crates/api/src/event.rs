//! Realtime events: what `/v1/events` (SSE) and `/v1/ws` (WebSocket) deliver.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Post;

/// What happened, as the `type` field of an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    /// A post was created; `post` holds it.
    #[serde(rename = "post.created")]
    PostCreated,
    /// A post's title, body or tags changed; `post` holds the new version.
    #[serde(rename = "post.updated")]
    PostUpdated,
    /// A post was deleted; `post` is null.
    #[serde(rename = "post.deleted")]
    PostDeleted,
    /// A post's view count changed.
    #[serde(rename = "post.views")]
    PostViews,
    /// The subscriber missed events it cannot be given: refetch, then continue from this id.
    #[serde(rename = "resync")]
    Resync,
}

/// One event. `id` is the event's position in the event log, so a client resumes from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Position in the event log (SSE `id:`); resume with `Last-Event-ID` or `since`.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The post after the change, or null for deletes and resyncs.
    pub post: Option<Post>,
    /// The post the event is about (empty for `resync`).
    pub post_id: String,
    /// The post's version after the change.
    pub version: i64,
    /// Commit time, RFC 3339.
    pub ts: String,
}

/// A subscription topic: `posts`, `author:{id}` or `post:{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Every post.
    Posts,
    /// Posts by one author.
    Author(String),
    /// One post.
    Post(String),
}

impl Topic {
    /// Parses the query-string form; `None` for anything else, including empty ids.
    pub fn parse(s: &str) -> Option<Topic> {
        match s.split_once(':') {
            None if s == "posts" => Some(Topic::Posts),
            Some(("author", id)) if !id.is_empty() => Some(Topic::Author(id.to_owned())),
            Some(("post", id)) if !id.is_empty() => Some(Topic::Post(id.to_owned())),
            _ => None,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Posts => f.write_str("posts"),
            Topic::Author(id) => write!(f, "author:{id}"),
            Topic::Post(id) => write!(f, "post:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_reject_garbage() {
        for s in ["posts", "author:7", "post:abc"] {
            assert_eq!(Topic::parse(s).map(|t| t.to_string()).as_deref(), Some(s));
        }
        for s in ["", "post", "post:", "author:", "tag:x", "posts:1"] {
            assert_eq!(Topic::parse(s), None, "{s:?} must be rejected");
        }
    }

    #[test]
    fn event_type_uses_contract_names() {
        let json = serde_json::to_string(&EventType::PostCreated).unwrap();
        assert_eq!(json, r#""post.created""#);
        let back: EventType = serde_json::from_str(r#""resync""#).unwrap();
        assert_eq!(back, EventType::Resync);
    }
}
