//! Request bodies and their validation into the cache crate's domain values.
//!
//! Limits: `author_id` 1..=64 of `[A-Za-z0-9_.-]`; `title` 1..=200 characters, not blank; `body`
//! 1..=65536 bytes; at most 10 `tags`, each 1..=32 of `[a-z0-9_-]`, duplicates dropped.

use postcache_cache::{NewPost, PostPatch};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::ApiError;

const MAX_TITLE_CHARS: usize = 200;
const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_ID_CHARS: usize = 64;
const MAX_TAGS: usize = 10;
const MAX_TAG_CHARS: usize = 32;

/// Body of `POST /v1/posts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreatePost {
    /// Who writes the post.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub author_id: String,
    /// Title, 1..=200 characters, not blank, no control characters.
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    /// Body, 1..=65536 bytes, not blank, no control characters but tab and line breaks.
    #[schema(min_length = 1)]
    pub body: String,
    /// Up to 10 tags of `[a-z0-9_-]{1,32}`.
    #[serde(default)]
    #[schema(max_items = 10, inline, value_type = Vec<Tag>)]
    pub tags: Vec<String>,
}

/// One tag.
#[derive(ToSchema)]
#[schema(pattern = "^[a-z0-9_-]{1,32}$")]
#[allow(dead_code)] // a schema only: tags arrive as strings
pub(crate) struct Tag(String);

/// Body of `PATCH /v1/posts/{id}`: at least one field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdatePost {
    /// New title (as in a new post).
    #[schema(min_length = 1, max_length = 200)]
    pub title: Option<String>,
    /// New body (as in a new post).
    #[schema(min_length = 1)]
    pub body: Option<String>,
    /// New tags, replacing the old ones (as in a new post).
    #[schema(max_items = 10, value_type = Option<Vec<Tag>>)]
    pub tags: Option<Vec<String>>,
}

impl CreatePost {
    /// Checks every field.
    ///
    /// # Errors
    /// 422 naming the first field at fault.
    pub(crate) fn validate(self) -> Result<NewPost, ApiError> {
        Ok(NewPost {
            author_id: author_id("author_id", self.author_id)?,
            title: title(self.title)?,
            body: body(self.body)?,
            tags: tags(self.tags)?,
        })
    }
}

impl UpdatePost {
    /// Checks the fields present, and that one is.
    ///
    /// # Errors
    /// 422 naming the field at fault.
    pub(crate) fn validate(self) -> Result<PostPatch, ApiError> {
        if self.title.is_none() && self.body.is_none() && self.tags.is_none() {
            return Err(ApiError::invalid_field(
                None,
                "give at least one of `title`, `body`, `tags`",
            ));
        }
        Ok(PostPatch {
            title: self.title.map(title).transpose()?,
            body: self.body.map(body).transpose()?,
            tags: self.tags.map(tags).transpose()?,
        })
    }
}

/// An author id, in a body or a query string.
///
/// # Errors
/// 422 (or the caller's status) naming `field`.
pub(crate) fn author_id(field: &str, value: String) -> Result<String, ApiError> {
    let ok = (1..=MAX_ID_CHARS).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(value)
    } else {
        Err(ApiError::invalid_field(
            Some(field.into()),
            format!("`{field}` must be 1 to {MAX_ID_CHARS} of A-Z, a-z, 0-9, `_`, `.`, `-`"),
        ))
    }
}

/// One tag, in a body or a query string.
///
/// # Errors
/// 422 naming `field`.
pub(crate) fn tag(field: &str, value: String) -> Result<String, ApiError> {
    let ok = (1..=MAX_TAG_CHARS).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(value)
    } else {
        Err(ApiError::invalid_field(
            Some(field.into()),
            format!("`{field}` must be 1 to {MAX_TAG_CHARS} of a-z, 0-9, `_`, `-`"),
        ))
    }
}

/// A control character: every one in a title (a single line); in a body, all but tab, line feed
/// and carriage return. NUL would also fail at PostgreSQL, which refuses it in text.
fn control(value: &str, multiline: bool) -> Option<char> {
    value
        .chars()
        .find(|&c| c.is_control() && !(multiline && matches!(c, '\t' | '\n' | '\r')))
}

fn no_control(field: &str, value: &str, multiline: bool) -> Result<(), ApiError> {
    match control(value, multiline) {
        Some(c) => Err(ApiError::invalid_field(
            Some(field.into()),
            format!(
                "`{field}` must not contain control characters (found U+{:04X})",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

fn title(value: String) -> Result<String, ApiError> {
    no_control("title", &value, false)?;
    let chars = value.chars().count();
    if value.trim().is_empty() || chars > MAX_TITLE_CHARS {
        return Err(ApiError::invalid_field(
            Some("title".into()),
            format!(
                "`title` must be 1 to {MAX_TITLE_CHARS} characters and not blank (got {chars})"
            ),
        ));
    }
    Ok(value)
}

fn body(value: String) -> Result<String, ApiError> {
    no_control("body", &value, true)?;
    if value.trim().is_empty() || value.len() > MAX_BODY_BYTES {
        return Err(ApiError::invalid_field(
            Some("body".into()),
            format!(
                "`body` must be 1 to {MAX_BODY_BYTES} bytes and not blank (got {})",
                value.len()
            ),
        ));
    }
    Ok(value)
}

fn tags(values: Vec<String>) -> Result<Vec<String>, ApiError> {
    if values.len() > MAX_TAGS {
        return Err(ApiError::invalid_field(
            Some("tags".into()),
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let value = tag(&format!("tags[{i}]"), value)?;
        if !out.contains(&value) {
            out.push(value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(author: &str, title: &str, body: &str, tags: &[&str]) -> Result<NewPost, ApiError> {
        CreatePost {
            author_id: author.into(),
            title: title.into(),
            body: body.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
        .validate()
    }

    #[test]
    fn accepts_a_good_post_and_dedups_tags() {
        let post = create("ann", "Hello", "World", &["rust", "k8s", "rust"]).unwrap();
        assert_eq!(post.tags, vec!["rust", "k8s"]);
        let lines = create("ann", "Hello", "one\ttab\r\ntwo", &[]).unwrap();
        assert_eq!(
            lines.body, "one\ttab\r\ntwo",
            "a body may have lines and tabs"
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let long_title = "t".repeat(201);
        let long_body = "b".repeat(64 * 1024 + 1);
        let cases: [(&str, &str, &str, &[&str], &str); 10] = [
            ("", "t", "b", &[], "author_id"),
            ("a b", "t", "b", &[], "author_id"),
            ("a", " ", "b", &[], "title"),
            ("a", &long_title, "b", &[], "title"),
            ("a", "t", &long_body, &[], "body"),
            ("a", "t", "b", &["Rust"], "tags[0]"),
            ("a", "t", "b", &["x"; 11], "tags"),
            ("a", "t\u{0}", "b", &[], "title"),
            ("a", "line\nbreak", "b", &[], "title"),
            ("a", "t", "nul \u{0} inside", &[], "body"),
        ];
        for (author, title, body, tags, field) in cases {
            let err = create(author, title, body, tags).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
            let body = serde_json::to_value(err_body(err)).unwrap();
            assert_eq!(body["error"]["field"], field);
        }
    }

    fn err_body(err: ApiError) -> serde_json::Value {
        let response = axum::response::IntoResponse::into_response(err);
        let bytes = futures_body(response);
        serde_json::from_slice(&bytes).unwrap()
    }

    fn futures_body(response: axum::response::Response) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec()
        })
    }

    #[test]
    fn an_empty_patch_is_rejected() {
        let err = UpdatePost {
            title: None,
            body: None,
            tags: None,
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
    }
}
