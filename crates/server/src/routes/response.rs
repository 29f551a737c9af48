//! Response pieces shared by the post routes: ETags, cache headers, consistency tokens.

use axum::http::{HeaderMap, HeaderValue, header};
use postcache_cache::{CachedPost, ConsistencyToken, Tier};

/// Header carrying the tier that served a read.
pub(crate) const TIER_HEADER: &str = "x-postcache-tier";
/// Header carrying the consistency token of a write (and accepted on reads).
pub(crate) const TOKEN_HEADER: &str = "x-postcache-token";
/// Cookie carrying the same token, for clients that do not keep headers.
pub(crate) const TOKEN_COOKIE: &str = "pc_token";

/// `"<version>"`.
pub(crate) fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
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

/// Headers of a post representation: JSON, `ETag`, revalidate on every use.
pub(crate) fn post_headers(entry: &CachedPost, tier: Option<Tier>) -> HeaderMap {
    let mut headers = HeaderMap::new();
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
    headers
}

/// Adds the write's token as a header and a cookie.
pub(crate) fn add_token(headers: &mut HeaderMap, token: ConsistencyToken) {
    let token = token.to_string();
    if let Ok(value) = HeaderValue::from_str(&token) {
        headers.insert(TOKEN_HEADER, value);
    }
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; Max-Age=86400; SameSite=Lax; HttpOnly");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
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
