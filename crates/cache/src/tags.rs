//! Tag keys: which cached feed lists a write makes unreachable.
//!
//! Feeds are cached under the *generation* of the tag they depend on. A create or delete bumps the
//! generations of `feed:global`, `feed:author:{id}` and `feed:tag:{t}` for each of its tags; every
//! list built on an older generation is then unreachable at once, with no key scan. An update bumps
//! only the tags it adds or removes (membership changed); a plain edit bumps nothing, since feeds
//! hold ids and the post itself is cached apart.

use std::collections::BTreeSet;

/// A dependency of cached feed lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TagKey {
    /// Every feed list depends on this one.
    Global,
    /// Lists filtered by author.
    Author(String),
    /// Lists filtered by tag.
    Tag(String),
}

impl TagKey {
    /// The tags a create or delete of such a post affects.
    pub fn for_membership(author_id: &str, tags: &[String]) -> Vec<TagKey> {
        let mut keys = vec![TagKey::Global, TagKey::Author(author_id.to_owned())];
        keys.extend(tags.iter().cloned().map(TagKey::Tag));
        keys
    }

    /// The tags an update from `old` to `new` tags affects: those added or removed.
    pub fn for_retag(old: &[String], new: &[String]) -> Vec<TagKey> {
        let old: BTreeSet<&String> = old.iter().collect();
        let new: BTreeSet<&String> = new.iter().collect();
        old.symmetric_difference(&new)
            .map(|t| TagKey::Tag((*t).clone()))
            .collect()
    }

    /// The name shared across pods (`feed:global`, `feed:author:{id}`, `feed:tag:{t}`).
    pub fn name(&self) -> String {
        match self {
            TagKey::Global => "feed:global".into(),
            TagKey::Author(id) => format!("feed:author:{id}"),
            TagKey::Tag(t) => format!("feed:tag:{t}"),
        }
    }

    /// Parses an admin invalidation request's tag name (the form [`TagKey::name`] gives).
    pub fn parse(name: &str) -> Option<TagKey> {
        match name {
            "feed:global" => Some(TagKey::Global),
            _ => {
                if let Some(id) = name.strip_prefix("feed:author:").filter(|s| !s.is_empty()) {
                    Some(TagKey::Author(id.to_owned()))
                } else {
                    name.strip_prefix("feed:tag:")
                        .filter(|s| !s.is_empty())
                        .map(|t| TagKey::Tag(t.to_owned()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn membership_touches_global_author_and_each_tag() {
        assert_eq!(
            TagKey::for_membership("ann", &s(&["rust", "k8s"])),
            vec![
                TagKey::Global,
                TagKey::Author("ann".into()),
                TagKey::Tag("rust".into()),
                TagKey::Tag("k8s".into())
            ]
        );
    }

    #[test]
    fn retag_touches_only_added_and_removed_tags() {
        let mut keys = TagKey::for_retag(&s(&["a", "b"]), &s(&["b", "c"]));
        keys.sort();
        assert_eq!(keys, vec![TagKey::Tag("a".into()), TagKey::Tag("c".into())]);
        assert!(TagKey::for_retag(&s(&["a"]), &s(&["a"])).is_empty());
    }

    #[test]
    fn names_round_trip() {
        for key in [
            TagKey::Global,
            TagKey::Author("u1".into()),
            TagKey::Tag("rust".into()),
        ] {
            assert_eq!(TagKey::parse(&key.name()), Some(key));
        }
        for bad in [
            "",
            "feed:",
            "feed:author:",
            "feed:tag:",
            "global",
            "feed:other:x",
        ] {
            assert_eq!(TagKey::parse(bad), None, "{bad:?}");
        }
    }
}
