//! `/v1/cache/…`: manual invalidation and per-tier statistics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use postcache_api::ErrorBody;
use postcache_cache::{Posts, TagKey, parse_post_id};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Authorized;
use crate::error::ApiError;
use crate::json::ApiJson;

/// Body of `POST /v1/cache/invalidate`: tags (`feed:global`, `feed:author:{id}`, `feed:tag:{t}`)
/// and/or post ids; at least one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvalidateRequest {
    /// Feed tags whose cached lists to drop.
    #[serde(default)]
    tags: Vec<String>,
    /// Posts to drop from the cache.
    #[serde(default)]
    ids: Vec<String>,
}

/// What an invalidation did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Invalidated {
    /// Tags bumped.
    tags: usize,
    /// Posts dropped.
    ids: usize,
}

/// Drop cached feed lists by tag and cached posts by id.
#[utoipa::path(post, path = "/v1/cache/invalidate", tag = "cache", request_body = InvalidateRequest,
    responses((status = 202, body = Invalidated), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn invalidate(
    _: Authorized,
    State(posts): State<Arc<Posts>>,
    ApiJson(request): ApiJson<InvalidateRequest>,
) -> Result<(StatusCode, Json<Invalidated>), ApiError> {
    if request.tags.is_empty() && request.ids.is_empty() {
        return Err(ApiError::invalid_field(None, "give `tags` or `ids`"));
    }
    let tags = request
        .tags
        .iter()
        .enumerate()
        .map(|(i, t)| {
            TagKey::parse(t).ok_or_else(|| {
                ApiError::invalid_field(
                    Some(format!("tags[{i}]")),
                    "expected feed:global, feed:author:{id} or feed:tag:{tag}",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids = request
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            parse_post_id(id)
                .ok_or_else(|| ApiError::invalid_field(Some(format!("ids[{i}]")), "not a post id"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let done = Invalidated {
        tags: tags.len(),
        ids: ids.len(),
    };
    posts.invalidate_tags(tags).await;
    posts.invalidate_ids(&ids).await;
    Ok((StatusCode::ACCEPTED, Json(done)))
}

/// Hits and misses of one tier.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TierStats {
    hits: u64,
    misses: u64,
    /// Entries held (L1 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<u64>,
}

/// Body of `GET /v1/cache/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Stats {
    l1: TierStats,
    l2: TierStats,
    l3: TierStats,
    /// Posts with views not yet flushed.
    writeback_pending: usize,
    /// The last event-log position this pod has applied to its L1.
    applied_position: String,
    /// Whether this pod answers reads without a token from its L1 (false while cut off from the
    /// event log).
    l1_trusted: bool,
}

/// Per-tier hits, misses and entries of this pod.
#[utoipa::path(get, path = "/v1/cache/stats", tag = "cache", responses((status = 200, body = Stats)))]
pub(crate) async fn stats(State(posts): State<Arc<Posts>>) -> Json<Stats> {
    let (posts_held, feeds_held) = posts.l1().entry_counts().await;
    let (l1_hits, l1_misses) = posts.stats().l1.get();
    let (l2_hits, l2_misses) = posts.stats().l2.get();
    let (l3_hits, l3_misses) = posts.stats().l3.get();
    Json(Stats {
        l1: TierStats {
            hits: l1_hits,
            misses: l1_misses,
            entries: Some(posts_held + feeds_held),
        },
        l2: TierStats {
            hits: l2_hits,
            misses: l2_misses,
            entries: None,
        },
        l3: TierStats {
            hits: l3_hits,
            misses: l3_misses,
            entries: None,
        },
        writeback_pending: posts.pending_views(),
        applied_position: posts.freshness().applied().to_string(),
        l1_trusted: posts.freshness().trusts_l1(),
    })
}
