//! `/v1/posts…`: create, read, update, delete, feed, views.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use postcache_api::{ErrorBody, FeedPage, Post};
use postcache_cache::{ConsistencyToken, Cursor, FeedQuery, PostId, Posts, Written, parse_post_id};

use super::response::{
    IfNoneMatch, ReadToken, TIER_HEADER, add_token, etag_versions, post_response, read_token,
};
use crate::auth::Authorized;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::tokens::TokenKeys;
use crate::validate::{self, CreatePost, UpdatePost};

const DEFAULT_LIMIT: u16 = 20;
const MAX_LIMIT: u16 = 100;

/// Publish a post.
#[utoipa::path(post, path = "/v1/posts", tag = "posts", request_body = CreatePost,
    responses(
        (status = 201, description = "Created; `Location`, `ETag` and `X-PostCache-Token` set", body = Post),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn create(
    _: Authorized,
    State(posts): State<Arc<Posts>>,
    State(keys): State<TokenKeys>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreatePost>,
) -> Result<Response, ApiError> {
    let written = posts.create(body.validate()?).await?;
    let token = client_token(&posts, &keys, &headers, &written);
    let mut response = written_response(StatusCode::CREATED, &written, &keys, token);
    let location = format!("/v1/posts/{}", written.entry.id);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Read a post. `If-None-Match` with its current `ETag` answers 304.
#[utoipa::path(get, path = "/v1/posts/{id}", tag = "posts",
    params(("id" = String, Path, description = "Post id")),
    responses(
        (status = 200, description = "The post; `ETag`, `X-PostCache-Tier`", body = Post),
        (status = 304, description = "Not modified"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn get(
    State(posts): State<Arc<Posts>>,
    Path(id): Path<String>,
    ReadToken(token): ReadToken,
    IfNoneMatch(if_none_match): IfNoneMatch,
) -> Result<Response, ApiError> {
    let read = posts.get(id_param(&id)?, token.as_ref()).await?;
    if read.entry.post.is_none() {
        return Err(ApiError::not_found(format!("post {id} does not exist")));
    }
    let not_modified = if_none_match.is_some_and(|v| {
        etag_versions(&v)
            .into_iter()
            .any(|t| t.is_none_or(|v| v == read.entry.version))
    });
    let status = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    Ok(post_response(status, &read.entry, Some(read.tier)))
}

/// Change a post's title, body or tags. `If-Match` guards against lost updates.
#[utoipa::path(patch, path = "/v1/posts/{id}", tag = "posts", request_body = UpdatePost,
    params(("id" = String, Path, description = "Post id")),
    responses(
        (status = 200, description = "The new version; `ETag` and `X-PostCache-Token` set", body = Post),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 412, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn update(
    _: Authorized,
    State(posts): State<Arc<Posts>>,
    State(keys): State<TokenKeys>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UpdatePost>,
) -> Result<Response, ApiError> {
    let id = id_param(&id)?;
    let expected = if_match(&headers)?;
    let written = posts.update(id, body.validate()?, expected).await?;
    let token = client_token(&posts, &keys, &headers, &written);
    Ok(written_response(StatusCode::OK, &written, &keys, token))
}

/// Delete a post; later reads answer 404.
#[utoipa::path(delete, path = "/v1/posts/{id}", tag = "posts",
    params(("id" = String, Path, description = "Post id")),
    responses(
        (status = 204, description = "Deleted; `X-PostCache-Token` set"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 412, body = ErrorBody)))]
pub(crate) async fn delete(
    _: Authorized,
    State(posts): State<Arc<Posts>>,
    State(keys): State<TokenKeys>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = id_param(&id)?;
    let written = posts.delete(id, if_match(&headers)?).await?;
    let mut out = HeaderMap::new();
    let token = client_token(&posts, &keys, &headers, &written);
    add_token(&mut out, &keys, token);
    Ok((StatusCode::NO_CONTENT, out).into_response())
}

/// The feed, newest first: all posts, or by `author_id` and/or `tag`, in pages of `limit`.
#[utoipa::path(get, path = "/v1/posts", tag = "posts",
    params(
        ("author_id" = Option<String>, Query, description = "Only this author's posts"),
        ("tag" = Option<String>, Query, description = "Only posts with this tag"),
        ("limit" = Option<u16>, Query, description = "1..=100, default 20"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, body = FeedPage), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn list(
    State(posts): State<Arc<Posts>>,
    ReadToken(token): ReadToken,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let page = posts.feed(feed_query(pairs)?, token.as_ref()).await?;
    let mut body =
        Vec::with_capacity(page.posts.iter().map(|p| p.json.len() + 1).sum::<usize>() + 64);
    body.extend_from_slice(b"{\"items\":[");
    for (i, post) in page.posts.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&post.json);
    }
    body.extend_from_slice(b"],\"next_cursor\":");
    match page.next {
        Some(cursor) => body.extend_from_slice(format!("\"{}\"", cursor.encode()).as_bytes()),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (TIER_HEADER, HeaderValue::from_static(page.tier.as_str())),
    ];
    Ok((StatusCode::OK, headers, body).into_response())
}

/// Count a view (write-back: flushed to the database in batches).
#[utoipa::path(post, path = "/v1/posts/{id}/views", tag = "posts",
    params(("id" = String, Path, description = "Post id")),
    responses((status = 202, description = "Counted"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn count_view(
    State(posts): State<Arc<Posts>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    posts.count_view(id_param(&id)?).await?;
    Ok(StatusCode::ACCEPTED)
}

/// The token a write answers with: the write's, merged with the one the client sent (header or
/// cookie), so that a client's token always covers all its writes (see `Posts::merge_token`). A
/// malformed token sent with a write is ignored: the write stands on its own.
fn client_token(
    posts: &Posts,
    keys: &TokenKeys,
    headers: &HeaderMap,
    written: &Written,
) -> ConsistencyToken {
    posts.merge_token(read_token(headers, keys).ok().flatten(), written.token)
}

fn written_response(
    status: StatusCode,
    written: &Written,
    keys: &TokenKeys,
    token: ConsistencyToken,
) -> Response {
    let mut response = post_response(status, &written.entry, None);
    add_token(response.headers_mut(), keys, token);
    response
}

fn id_param(id: &str) -> Result<PostId, ApiError> {
    parse_post_id(id)
        .ok_or_else(|| ApiError::bad_request("id", format!("`{id:.40}` is not a post id")))
}

/// `If-Match`: `None` when absent or `*`; a version otherwise. An unparsable value cannot match.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    match etag_versions(value).as_slice() {
        [version] => Ok(*version),
        _ => Err(ApiError::precondition_failed(
            "`If-Match` must be one ETag such as \"3\", or *",
        )),
    }
}

fn feed_query(pairs: Vec<(String, String)>) -> Result<FeedQuery, ApiError> {
    let mut params: HashMap<String, String> = HashMap::new();
    for (key, value) in pairs {
        if !matches!(key.as_str(), "author_id" | "tag" | "limit" | "cursor") {
            return Err(ApiError::bad_request(
                &key,
                format!("unknown query parameter `{key:.40}`"),
            ));
        }
        if params.insert(key.clone(), value).is_some() {
            return Err(ApiError::bad_request(
                &key,
                format!("`{key}` given more than once"),
            ));
        }
    }
    let author_id = params
        .remove("author_id")
        .map(|v| validate::author_id("author_id", v).map_err(ApiError::into_bad_request))
        .transpose()?;
    let tag = params
        .remove("tag")
        .map(|v| validate::tag("tag", v).map_err(ApiError::into_bad_request))
        .transpose()?;
    let limit = match params.remove("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<u16>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request("limit", format!("`limit` must be 1 to {MAX_LIMIT}"))
            })?,
    };
    let cursor = params
        .remove("cursor")
        .map(|v| {
            Cursor::decode(&v).ok_or_else(|| {
                ApiError::bad_request("cursor", "`cursor` is not one this server issued")
            })
        })
        .transpose()?;
    Ok(FeedQuery {
        author_id,
        tag,
        limit,
        cursor,
    })
}
