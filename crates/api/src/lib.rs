//! PostCache's wire types, shared by the service, the operator and the tests.
//!
//! Everything here is a shape that CONTRACT.md fixes: the post, the realtime event and the error
//! body. The crate does no IO and depends only on `serde` (and `utoipa` for schemas), so every
//! other crate can use it.

mod error;
mod event;
mod post;

pub use error::{ErrorBody, ErrorDetail};
pub use event::{Event, EventType, Topic};
pub use post::{FeedPage, Post};
