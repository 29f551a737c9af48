//! The post as the HTTP API and the realtime events carry it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A post as served by `GET /v1/posts/{id}` and embedded in feeds and events.
///
/// `version` starts at 1 and grows by one with every update; it is the `ETag` and the order in
/// which events for one post are delivered. Timestamps are RFC 3339 strings so that this crate
/// stays free of a time library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Post {
    /// Opaque identifier, stable for the post's life.
    pub id: String,
    /// The author, as given at creation.
    pub author_id: String,
    /// Title, 1..=200 characters.
    pub title: String,
    /// Body, up to 64 KiB.
    pub body: String,
    /// Tags in the order given, without duplicates.
    pub tags: Vec<String>,
    /// Monotonic version, 1 after creation.
    pub version: i64,
    /// Views counted so far (write-back: may trail recent views by the flush interval).
    pub views: i64,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Time of the last change, RFC 3339.
    pub updated_at: String,
}

/// One page of a feed, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FeedPage {
    /// The posts of this page.
    pub items: Vec<Post>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}
