//! Response pieces shared by the post routes: ETags, cache headers, consistency tokens.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use postcache_cache::{CachedPost, ConsistencyToken, Tier};

use crate::error::ApiError;
use crate::tokens::TokenKeys;

/// Header carrying the tier that served a read. Header names are constants: a `&str` name is
/// parsed again on every insert and lookup.
pub(crate) const TIER_HEADER: HeaderName = HeaderName::from_static("x-postcache-tier");
/// Header carrying the consistency token of a write (and accepted on reads).
pub(crate) const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-postcache-token");
/// Cookie carrying the same token, for clients that do not keep headers.
pub(crate) const TOKEN_COOKIE: &str = "pc_token";

/// The verified consistency token of a read (see [`read_token`]).
pub(crate) struct ReadToken(pub Option<ConsistencyToken>);

impl<S: Send + Sync> FromRequestParts<S> for ReadToken
where
    TokenKeys: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        read_token(&parts.headers, &TokenKeys::from_ref(state)).map(ReadToken)
    }
}

/// The `If-None-Match` of a read, taken alone: extracting the whole `HeaderMap` would copy every
/// header of every request.
pub(crate) struct IfNoneMatch(pub Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(IfNoneMatch(
            parts.headers.get(header::IF_NONE_MATCH).cloned(),
        ))
    }
}

/// `"<version>"` (the string becomes the value's bytes, not copied).
pub(crate) fn etag(version: i64) -> HeaderValue {
    HeaderValue::try_from(format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Parses an `If-Match` / `If-None-Match` list: `Some(None)` for `*`, `Some(Some(v))` per version.
pub(crate) fn etag_versions(value: &HeaderValue) -> Vec<Option<i64>> {
    value
        .to_str()
        .unwrap_or_default()
        .split(',')
        .filter_map(|tag| {
            let tag = tag.trim();
            if tag == "*" {
                return Some(None);
            }
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag.strip_prefix('"')?
                .strip_suffix('"')?
                .parse()
                .ok()
                .map(Some)
        })
        .collect()
}

/// A post's representation as a response: the JSON (none for a 304), `ETag`, revalidate on every
/// use, and the tier that served it. Built in the response's own header map: the hot path of an
/// L1 hit makes no second map to merge into it.
pub(crate) fn post_response(
    status: StatusCode,
    entry: &CachedPost,
    tier: Option<Tier>,
) -> Response {
    let body = if status == StatusCode::NOT_MODIFIED {
        Body::empty()
    } else {
        Body::from(entry.json.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ETAG, etag(entry.version));
    // Browsers may store the post but must revalidate (a cheap 304) before each use.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(tier) = tier {
        headers.insert(TIER_HEADER, HeaderValue::from_static(tier.as_str()));
    }
    response
}

/// Adds the write's token as a header and a cookie.
pub(crate) fn add_token(headers: &mut HeaderMap, keys: &TokenKeys, token: ConsistencyToken) {
    let token = keys.sign(token);
    if let Ok(value) = HeaderValue::from_str(&token) {
        headers.insert(TOKEN_HEADER, value);
    }
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; Max-Age=86400; SameSite=Lax; HttpOnly");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
}

/// The consistency token a read carries: the `X-PostCache-Token` header, else the `pc_token`
/// cookie. A malformed header is a 400; a malformed cookie (e.g. left by an older version) is
/// ignored; a well-formed token no key signed is read as no token.
///
/// # Errors
/// A header that is not a token.
pub(crate) fn read_token(
    headers: &HeaderMap,
    keys: &TokenKeys,
) -> Result<Option<ConsistencyToken>, ApiError> {
    if let Some(value) = headers.get(&TOKEN_HEADER) {
        return value
            .to_str()
            .ok()
            .and_then(|text| keys.verify(text).ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    TOKEN_HEADER.as_str(),
                    "not a consistency token: send back the X-PostCache-Token of a write unchanged",
                )
            });
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .and_then(|(_, value)| keys.verify(value).ok().flatten());
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_lists_parse() {
        let parse = |s: &'static str| etag_versions(&HeaderValue::from_static(s));
        assert_eq!(parse("\"3\""), vec![Some(3)]);
        assert_eq!(parse("W/\"3\", \"4\""), vec![Some(3), Some(4)]);
        assert_eq!(parse("*"), vec![None]);
        assert_eq!(parse("3, \"x\""), Vec::<Option<i64>>::new());
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn an_etag_parses_back_to_its_version(version in any::<i64>(), weak in any::<bool>()) {
            let tag = etag(version);
            prop_assert_eq!(etag_versions(&tag), vec![Some(version)]);
            let weak = if weak { "W/" } else { "" };
            let list = format!("{weak}{}, *", tag.to_str().expect("ASCII"));
            prop_assert_eq!(
                etag_versions(&HeaderValue::from_str(&list).expect("a valid header")),
                vec![Some(version), None]
            );
        }

        /// Lists of ETags, as clients send them in `If-Match`, parse to their versions in order.
        #[test]
        fn etag_lists_parse_to_their_versions(
            tags in proptest::collection::vec((any::<Option<i64>>(), any::<bool>()), 0..6)
        ) {
            let list: Vec<String> = tags
                .iter()
                .map(|(version, weak)| match (version, weak) {
                    (None, _) => "*".to_owned(),
                    (Some(v), true) => format!("W/\"{v}\""),
                    (Some(v), false) => format!("\"{v}\""),
                })
                .collect();
            let value = HeaderValue::from_str(&list.join(" ,\t")).expect("a valid header");
            let versions: Vec<Option<i64>> = tags.iter().map(|(v, _)| *v).collect();
            prop_assert_eq!(etag_versions(&value), versions);
        }

        /// Any header value (bytes that are not text included) parses without panicking, and
        /// every version it yields was written in it, in quotes (spelled as `str::parse` reads
        /// it: `"+3"` and `"03"` also name version 3).
        #[test]
        fn any_header_value_parses_without_panicking(
            raw in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..40),
                "[W/\"0-9*, +-]{0,30}".prop_map(String::into_bytes),
            ]
        ) {
            let Ok(value) = HeaderValue::from_bytes(&raw) else {
                return Ok(());
            };
            let text = value.to_str().unwrap_or_default();
            for version in etag_versions(&value).into_iter().flatten() {
                prop_assert!(
                    text.split('"').any(|piece| piece.parse() == Ok(version)),
                    "{} read from {:?}",
                    version,
                    text
                );
            }
        }
    }
}
