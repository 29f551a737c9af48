//! [`ApiJson`]: the JSON body extractor whose every rejection is an [`ApiError`] naming the field.
//!
//! Content type first (415), then the size limit (413), then syntax (400 `malformed_json`), then
//! shape: missing, unknown or wrongly typed fields (422 `invalid_field` with the field's path).

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Request bodies are limited to this many bytes (the largest valid post is well under it).
pub(crate) const MAX_BODY_BYTES: usize = 256 * 1024;

/// A JSON request body of type `T`.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::unsupported_media_type());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::payload_too_large(MAX_BODY_BYTES)
                } else {
                    ApiError::malformed_json(e.body_text())
                }
            })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, classifying failures as the module docs say.
///
/// # Errors
/// [`ApiError::malformed_json`] or [`ApiError::invalid_field`].
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would read a JSON array as a struct's fields in order; bodies are objects only.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(e) => Err(ApiError::malformed_json(format!(
                "the body is not valid JSON: {e}"
            ))),
            Ok(_) => Err(ApiError::invalid_field(
                None,
                "the body must be a JSON object",
            )),
        };
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::malformed_json(format!("the body is not valid JSON: {inner}"));
        }
        let message = inner.to_string();
        // serde names missing and unknown fields in backticks; the path names the rest.
        let named = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field `"))
            .map(str::to_owned);
        // The path already ends in the unknown field's name; at the top level it is just ".".
        let field = if path == "." { named } else { Some(path) };
        ApiError::invalid_field(field, message)
    })?;
    de.end().map_err(|e| {
        ApiError::malformed_json(format!("trailing characters after the JSON value: {e}"))
    })?;
    Ok(value)
}
