//! Bearer-token authentication for writes and admin calls.
//!
//! Tokens are compared in constant time (`subtle`), every configured token each time, so the
//! response time tells nothing about how much of a guess was right. No tokens configured means
//! open access, which `serve` allows only on loopback or with `--insecure-no-auth`.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The configured API tokens.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Arc<[Box<[u8]>]>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        write!(f, "Auth({} tokens)", self.tokens.len())
    }
}

impl Auth {
    /// Accepts any of `tokens` (empty strings are ignored); none means open access.
    pub fn new(tokens: impl IntoIterator<Item = String>) -> Auth {
        let tokens: Vec<Box<[u8]>> = tokens
            .into_iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .map(|t| t.into_bytes().into())
            .collect();
        Auth {
            tokens: tokens.into(),
        }
    }

    /// Whether tokens are required at all.
    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether `authorization` (the header's value) carries a configured token.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        if !self.is_enabled() {
            return true;
        }
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let Some(given) = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
        else {
            return false;
        };
        // Fold over every token without short-circuiting.
        self.tokens.iter().fold(0u8, |acc, t| {
            acc | t.as_ref().ct_eq(given.as_bytes()).unwrap_u8()
        }) == 1
    }
}

/// Extractor that admits only requests with a valid bearer token (when tokens are configured).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Authorized;

impl<S> FromRequestParts<S> for Authorized
where
    Auth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if Auth::from_ref(state).allows(header) {
            Ok(Authorized)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_pass() {
        let auth = Auth::new(["alpha".to_owned(), " beta ".to_owned(), String::new()]);
        assert!(auth.allows(Some("Bearer alpha")));
        assert!(auth.allows(Some("Bearer beta")));
        assert!(
            auth.allows(Some("bearer beta")),
            "the scheme is case-insensitive"
        );
        assert!(auth.allows(Some("BEARER alpha")));
        assert!(!auth.allows(Some("Basic alpha")));
        for bad in [
            None,
            Some(""),
            Some("alpha"),
            Some("Bearer "),
            Some("Bearer alph"),
            Some("Bearer alphaa"),
            Some("Basic alpha"),
        ] {
            assert!(!auth.allows(bad), "{bad:?}");
        }
        assert_eq!(format!("{auth:?}"), "Auth(2 tokens)");
    }

    #[test]
    fn no_tokens_means_open() {
        assert!(Auth::new(Vec::new()).allows(None));
    }
}
