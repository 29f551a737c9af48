//! [`Api`]: the checker's HTTP calls, each turned into an [`Outcome`] (never an error: a failed
//! request is part of the history).
//!
//! A 4xx on a write is decided before anything is written, so it is `Rejected`; a 5xx, a
//! transport error or a timeout leaves a write `Indeterminate`.

use std::time::Duration;

use reqwest::{RequestBuilder, StatusCode};

use crate::history::{Feed, Outcome};

/// Request header (and answer header of writes) carrying a consistency token.
pub const TOKEN_HEADER: &str = "x-postcache-token";

/// HTTP calls against any of the run's URLs.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    bearer: Option<String>,
    timeout: Duration,
}

impl Api {
    pub(crate) fn new(http: reqwest::Client, bearer: Option<String>, timeout: Duration) -> Api {
        Api {
            http,
            bearer,
            timeout,
        }
    }

    /// A write as a browser sends it: with the session's token (the cookie does that), so that
    /// the token it gets back covers this write and every earlier one.
    fn write(&self, request: RequestBuilder, token: Option<&str>) -> RequestBuilder {
        let request = request.timeout(self.timeout);
        let request = match token {
            Some(token) => request.header(TOKEN_HEADER, token),
            None => request,
        };
        match &self.bearer {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `POST /v1/posts`; the token of the answer, if any.
    pub(crate) async fn create(
        &self,
        base: &str,
        author: &str,
        tag: &str,
        title: &str,
        token: Option<&str>,
    ) -> (Outcome, Option<String>) {
        let body = serde_json::json!({
            "author_id": author, "title": title, "body": "written by postcache check", "tags": [tag],
        });
        let request = self.write(
            self.http.post(format!("{base}/v1/posts")).json(&body),
            token,
        );
        written(request.send().await, StatusCode::CREATED).await
    }

    /// `PATCH /v1/posts/{id}` of the title, without `If-Match`.
    pub(crate) async fn update(
        &self,
        base: &str,
        post: &str,
        title: &str,
        token: Option<&str>,
    ) -> (Outcome, Option<String>) {
        let body = serde_json::json!({ "title": title });
        let request = self.write(
            self.http
                .patch(format!("{base}/v1/posts/{post}"))
                .json(&body),
            token,
        );
        written(request.send().await, StatusCode::OK).await
    }

    /// `DELETE /v1/posts/{id}`.
    pub(crate) async fn delete(
        &self,
        base: &str,
        post: &str,
        token: Option<&str>,
    ) -> (Outcome, Option<String>) {
        let request = self.write(self.http.delete(format!("{base}/v1/posts/{post}")), token);
        match request.send().await {
            Ok(r) if r.status() == StatusCode::NO_CONTENT => (Outcome::Deleted, token_of(&r)),
            Ok(r) => (refused(r.status()), None),
            Err(e) => (indeterminate(&e), None),
        }
    }

    /// `GET /v1/posts/{id}`, with the session's token when given.
    pub(crate) async fn get(&self, base: &str, post: &str, token: Option<&str>) -> Outcome {
        self.get_tiered(base, post, token).await.0
    }

    /// [`Api::get`], and the tier that answered (`X-PostCache-Tier`).
    pub(crate) async fn get_tiered(
        &self,
        base: &str,
        post: &str,
        token: Option<&str>,
    ) -> (Outcome, Option<String>) {
        let request = self.read(format!("{base}/v1/posts/{post}"), token);
        let sent = request.send().await;
        let tier = tier_of(&sent);
        let outcome = match sent {
            Ok(r) if r.status() == StatusCode::OK => match r.json::<serde_json::Value>().await {
                Ok(body) => body["version"].as_i64().map_or_else(
                    || Outcome::Indeterminate {
                        reason: "a post without a version".into(),
                    },
                    |version| Outcome::Found { version },
                ),
                Err(e) => indeterminate(&e),
            },
            Ok(r) if r.status() == StatusCode::NOT_FOUND => Outcome::Absent,
            Ok(r) => failed_read(r.status()),
            Err(e) => indeterminate(&e),
        };
        (outcome, tier)
    }

    /// One page (limit 100) of the run's tag feed or an author's feed.
    pub(crate) async fn list(
        &self,
        base: &str,
        tag: &str,
        feed: &Feed,
        token: Option<&str>,
    ) -> Outcome {
        self.list_tiered(base, tag, feed, token).await.0
    }

    /// [`Api::list`], and the tier that answered the page's ids (`X-PostCache-Tier`).
    pub(crate) async fn list_tiered(
        &self,
        base: &str,
        tag: &str,
        feed: &Feed,
        token: Option<&str>,
    ) -> (Outcome, Option<String>) {
        let query = match feed {
            Feed::Tag => ("tag", tag),
            Feed::Author(author) => ("author_id", author.as_str()),
        };
        let request = self
            .read(format!("{base}/v1/posts"), token)
            .query(&[query, ("limit", "100")]);
        let sent = request.send().await;
        let tier = tier_of(&sent);
        let outcome = match sent {
            Ok(r) if r.status() == StatusCode::OK => match r.json::<serde_json::Value>().await {
                Ok(body) => page_of(&body),
                Err(e) => indeterminate(&e),
            },
            Ok(r) => failed_read(r.status()),
            Err(e) => indeterminate(&e),
        };
        (outcome, tier)
    }

    fn read(&self, url: String, token: Option<&str>) -> RequestBuilder {
        let request = self.http.get(url).timeout(self.timeout);
        match token {
            Some(token) => request.header(TOKEN_HEADER, token),
            None => request,
        }
    }
}

/// The `X-PostCache-Tier` of an answer, if any.
fn tier_of(sent: &reqwest::Result<reqwest::Response>) -> Option<String> {
    let value = sent.as_ref().ok()?.headers().get("x-postcache-tier")?;
    value.to_str().ok().map(str::to_owned)
}

async fn written(
    sent: reqwest::Result<reqwest::Response>,
    success: StatusCode,
) -> (Outcome, Option<String>) {
    let response = match sent {
        Ok(r) if r.status() == success => r,
        Ok(r) => return (refused(r.status()), None),
        Err(e) => return (indeterminate(&e), None),
    };
    let token = token_of(&response);
    let outcome = match response.json::<serde_json::Value>().await {
        Ok(body) => match (body["id"].as_str(), body["version"].as_i64()) {
            (Some(post), Some(version)) => Outcome::Written {
                post: post.to_owned(),
                version,
            },
            _ => Outcome::Indeterminate {
                reason: "acknowledged without id or version".into(),
            },
        },
        // The write happened, but what it became is unknown.
        Err(e) => indeterminate(&e),
    };
    (outcome, token)
}

fn page_of(body: &serde_json::Value) -> Outcome {
    let Some(items) = body["items"].as_array() else {
        return Outcome::Indeterminate {
            reason: "a feed without items".into(),
        };
    };
    let items = items
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?.to_owned(), p["version"].as_i64()?)))
        .collect();
    Outcome::Page { items }
}

fn token_of(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get(TOKEN_HEADER)?;
    value.to_str().ok().map(str::to_owned)
}

fn refused(status: StatusCode) -> Outcome {
    if status.is_client_error() {
        Outcome::Rejected {
            status: status.as_u16(),
        }
    } else {
        failed_read(status)
    }
}

fn failed_read(status: StatusCode) -> Outcome {
    Outcome::Indeterminate {
        reason: format!("answered {}", status.as_u16()),
    }
}

fn indeterminate(error: &reqwest::Error) -> Outcome {
    let reason = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        error.to_string()
    };
    Outcome::Indeterminate { reason }
}
