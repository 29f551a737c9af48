//! Cross-origin requests from browser pages (`POSTCACHE_CORS_ORIGINS`): the origins allowed, the
//! methods and headers the API takes, and the response headers a page may read (the ETag and
//! the consistency token above all, without which a page cannot do read-your-writes).

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Request headers a page may send besides the CORS-safelisted ones.
const ALLOWED_HEADERS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    HeaderName::from_static("x-postcache-token"),
    HeaderName::from_static("last-event-id"),
];

/// Response headers a page may read.
const EXPOSED_HEADERS: [HeaderName; 6] = [
    header::ETAG,
    header::LOCATION,
    header::RETRY_AFTER,
    HeaderName::from_static("x-postcache-token"),
    HeaderName::from_static("x-postcache-tier"),
    HeaderName::from_static("x-request-id"),
];

/// The CORS layer for `origins` (`*` among them: any origin); `None` when there are none.
pub(crate) fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(Duration::from_secs(600)),
    )
}

/// `*`, or an origin as browsers send it: `http(s)://host[:port]`, no path, no trailing slash.
///
/// # Errors
/// What is wrong with `text`, for clap to report with the flag's name.
pub(crate) fn parse_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(text.to_owned());
    }
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("{text:?} is not an origin: it must start with http:// or https://")
        })?;
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@'])
        || rest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{text:?} is not an origin: only scheme://host[:port], no path or trailing slash"
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        for good in ["*", "https://app.example.com", "http://localhost:3000"] {
            assert_eq!(parse_origin(good).as_deref(), Ok(good));
        }
        for bad in [
            "app.example.com",
            "https://",
            "https://app.example.com/",
            "https://app.example.com/path",
            "ftp://app.example.com",
            "https://user@app.example.com",
            "https://app example.com",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
