//! The domain values that cross the tiers: ids, stored posts, new posts and patches, feed queries.

use crate::tags::TagKey;
use postcache_api::Post;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A post's id: a positive integer assigned by L3 in creation order (the API shows it as a string).
pub type PostId = i64;

/// Parses the API's string form of an id: a positive decimal integer, nothing else.
pub fn parse_post_id(s: &str) -> Option<PostId> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0')
    {
        return None;
    }
    s.parse().ok().filter(|id| *id > 0)
}

/// RFC 3339 with UTC offset, as the API shows times.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A post as L3 stores it, deleted ones included (their version keeps counting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPost {
    /// The id.
    pub id: PostId,
    /// Author as given at creation.
    pub author_id: String,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Tags in the order given.
    pub tags: Vec<String>,
    /// Version, +1 on every change including the delete.
    pub version: i64,
    /// Views flushed so far.
    pub views: i64,
    /// Soft-deleted: reads answer 404.
    pub deleted: bool,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

impl StoredPost {
    /// The wire form.
    pub fn to_api(&self) -> Post {
        Post {
            id: self.id.to_string(),
            author_id: self.author_id.clone(),
            title: self.title.clone(),
            body: self.body.clone(),
            tags: self.tags.clone(),
            version: self.version,
            views: self.views,
            created_at: format_timestamp(self.created_at),
            updated_at: format_timestamp(self.updated_at),
        }
    }
}

/// A validated new post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPost {
    /// Author.
    pub author_id: String,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Tags, deduplicated, order kept.
    pub tags: Vec<String>,
}

/// A validated change: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostPatch {
    /// New title.
    pub title: Option<String>,
    /// New body.
    pub body: Option<String>,
    /// New tags (replacing the old ones).
    pub tags: Option<Vec<String>>,
}

/// Keyset position in a feed: the id of the last post of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor(pub PostId);

impl Cursor {
    const PREFIX: &'static str = "c1.";

    /// The opaque string form handed to clients.
    pub fn encode(self) -> String {
        format!("{}{:x}", Self::PREFIX, self.0)
    }

    /// Parses what [`Cursor::encode`] made; `None` for anything else.
    pub fn decode(s: &str) -> Option<Cursor> {
        let hex = s.strip_prefix(Self::PREFIX)?;
        if hex.is_empty()
            || hex.len() > 16
            || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        i64::from_str_radix(hex, 16)
            .ok()
            .filter(|id| *id > 0)
            .map(Cursor)
    }
}

/// One feed page request: newest first, optionally by author and/or tag, after a cursor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FeedQuery {
    /// Only this author's posts.
    pub author_id: Option<String>,
    /// Only posts with this tag.
    pub tag: Option<String>,
    /// Page size, 1..=100.
    pub limit: u16,
    /// Start after this post.
    pub cursor: Option<Cursor>,
}

impl FeedQuery {
    /// The tags whose generations a cached page of this query depends on: the narrowest filter
    /// first, plus the author when both filters are set.
    pub fn tags(&self) -> Vec<TagKey> {
        match (&self.tag, &self.author_id) {
            (Some(tag), Some(author)) => {
                vec![TagKey::Tag(tag.clone()), TagKey::Author(author.clone())]
            }
            (Some(tag), None) => vec![TagKey::Tag(tag.clone())],
            (None, Some(author)) => vec![TagKey::Author(author.clone())],
            (None, None) => vec![TagKey::Global],
        }
    }

    /// A stable string naming this query (for shared cache keys); user values are JSON-quoted so
    /// that no value can forge another query's key.
    pub fn cache_key(&self) -> String {
        serde_json::json!([
            self.author_id,
            self.tag,
            self.limit,
            self.cursor.map(|c| c.0)
        ])
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_canonical_integers() {
        assert_eq!(parse_post_id("42"), Some(42));
        for bad in [
            "",
            "0",
            "-1",
            "042",
            "4x",
            "1e3",
            " 1",
            "99999999999999999999",
        ] {
            assert_eq!(parse_post_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_tampering() {
        for id in [1, 255, i64::MAX] {
            assert_eq!(Cursor::decode(&Cursor(id).encode()), Some(Cursor(id)));
        }
        for bad in [
            "",
            "c1.",
            "c1.-1",
            "c1.0",
            "c2.10",
            "c1.XYZ",
            "c1.10000000000000000",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn cursors_of_post_ids_round_trip(id in prop_oneof![1..=i64::MAX, 1..300i64]) {
            prop_assert_eq!(Cursor::decode(&Cursor(id).encode()), Some(Cursor(id)));
        }

        /// Never panics; whatever it accepts is a positive id and [`Cursor::encode`]'s spelling
        /// of it, up to leading zeros.
        #[test]
        fn decode_accepts_only_encoded_cursors(s in prop_oneof![
            "c1\\.[0-9a-f]{0,18}",
            "c[0-9]\\.[0-9a-fA-Fx+-]{0,18}",
            any::<String>(),
        ]) {
            if let Some(cursor) = Cursor::decode(&s) {
                prop_assert!(cursor.0 > 0, "{:?}", s);
                let hex = s.strip_prefix("c1.").expect("an accepted cursor has the prefix");
                let encoded = cursor.encode();
                prop_assert_eq!(format!("c1.{}", hex.trim_start_matches('0')), encoded, "{:?}", s);
            }
        }
    }
}
