//! The write path of [`Posts`]: one L3 transaction, then L1, L2 and the shared log; view counts;
//! admin invalidation.

use std::sync::Arc;

use postcache_api::EventType;
use time::OffsetDateTime;

use super::{PRIMARY, Posts, PostsError, Written};
use crate::eventlog::Position;
use crate::l1::CachedPost;
use crate::model::{NewPost, PostId, PostPatch};
use crate::stats::timed;
use crate::store::{Committed, OutboxEvent, StoreError, event_payload, kind_name};
use crate::tags::TagKey;
use crate::token::ConsistencyToken;

/// Longest a flush of buffered views may take.
const FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

impl Posts {
    /// Creates a post.
    ///
    /// # Errors
    /// When L3 fails.
    pub async fn create(&self, post: NewPost) -> Result<Written, PostsError> {
        let committed = timed(PRIMARY, self.store.create(post, OffsetDateTime::now_utc())).await?;
        Ok(self.apply(committed).await)
    }

    /// Updates a post; `expected` is `If-Match`.
    ///
    /// # Errors
    /// Not found, version mismatch, or L3 failure.
    pub async fn update(
        &self,
        id: PostId,
        patch: PostPatch,
        expected: Option<i64>,
    ) -> Result<Written, PostsError> {
        let committed = timed(
            PRIMARY,
            self.store
                .update(id, patch, expected, OffsetDateTime::now_utc()),
        )
        .await?;
        Ok(self.apply(committed).await)
    }

    /// Deletes a post; `expected` is `If-Match`.
    ///
    /// # Errors
    /// Not found, version mismatch, or L3 failure.
    pub async fn delete(&self, id: PostId, expected: Option<i64>) -> Result<Written, PostsError> {
        let committed = timed(
            PRIMARY,
            self.store.delete(id, expected, OffsetDateTime::now_utc()),
        )
        .await?;
        Ok(self.apply(committed).await)
    }

    /// After commit: L1 (guarded by version) and its generations; with several pods, L2
    /// write-through and generations, then the event appended to the shared log. The token
    /// carries the log position only when both succeeded (else the caller's reads go to L3).
    async fn apply(&self, committed: Committed) -> Written {
        let Committed {
            post,
            kind,
            position,
            lsn,
            previous_tags,
        } = committed;
        let entry = Arc::new(CachedPost::from_store(post.id, Some(&post)));
        self.l1.install(Arc::clone(&entry)).await;
        let tags = match kind {
            EventType::PostUpdated => TagKey::for_retag(&previous_tags, &post.tags),
            EventType::PostDeleted => TagKey::for_membership(&post.author_id, &previous_tags),
            _ => TagKey::for_membership(&post.author_id, &post.tags),
        };
        for tag in &tags {
            self.l1.bump(tag.clone(), lsn).await;
        }
        self.freshness.note_lsn(lsn);
        // Alone, this process applied the write already; the outbox position tells writes apart.
        let mut appended = Position {
            epoch: 0,
            seq: u64::try_from(position).unwrap_or_default(),
        };
        if let Some(shared) = &self.shared {
            appended = Position::ZERO;
            // Appended implies written through: a pod that drops its L1 entry on the event and
            // refills from L2 must find this version. Otherwise the relay does both, in order.
            let written = match shared.l2.write(&entry).await {
                Ok(()) => shared.l2.bump(&tags, lsn).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, "writing through to L2 failed; the outbox relay will, then append");
            } else {
                let row = OutboxEvent {
                    position,
                    post_id: post.id,
                    author_id: post.author_id.clone(),
                    kind: kind_name(kind).to_owned(),
                    version: post.version,
                    payload: event_payload(&post),
                    created_at: post.updated_at,
                    previous_tags: Some(serde_json::to_string(&previous_tags).unwrap_or_default()),
                };
                match shared.log.publish(&row, lsn, false).await {
                    Ok((at, _)) => {
                        self.to_mark
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(position);
                        appended = at;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "appending an event failed; the outbox relay will")
                    }
                }
            }
        }
        self.relay.notify_one();
        Written {
            entry,
            token: ConsistencyToken {
                position: appended,
                lsn,
            },
        }
    }

    /// Counts a view of a live post (buffered; see [`Posts::flush_views`]).
    ///
    /// # Errors
    /// `NotFound` for a deleted or unknown post; L3 failure when it must be looked up.
    pub async fn count_view(&self, id: PostId) -> Result<(), PostsError> {
        if self.get(id, None).await?.entry.post.is_none() {
            return Err(StoreError::NotFound(id).into());
        }
        if let Some(shared) = &self.shared {
            match shared.views.count(id).await {
                Ok(()) => return Ok(()),
                // The increment may have run (a timeout, a dropped connection): counting it here
                // too could count it twice. A view is a signal: at most once beats twice.
                Err(e) if e.is_indeterminate() => {
                    tracing::debug!(error = %e, "a view count may or may not have reached Redis; not counted again");
                    return Ok(());
                }
                Err(_) => {}
            }
        }
        self.views.count(id);
        Ok(())
    }

    /// Writes buffered views to L3 in one transaction and refreshes L1's counts. On failure the
    /// batch goes back into the buffer for the next flush.
    ///
    /// # Errors
    /// When L3 fails.
    pub async fn flush_views(&self) -> Result<usize, PostsError> {
        let batch = self.views.take();
        if batch.is_empty() {
            return Ok(0);
        }
        // A black-holed primary would hold the flush (and the loop that runs it) for ever. Past
        // the deadline the transaction is abandoned uncommitted (its connection is dropped), so
        // the batch is kept for the next flush.
        let flushed =
            tokio::time::timeout(FLUSH_DEADLINE, timed(PRIMARY, self.store.add_views(&batch)))
                .await
                .unwrap_or(Err(StoreError::Timeout("flushing views")));
        let totals = match flushed {
            Ok(totals) => totals,
            Err(e) => {
                self.views.restore(batch);
                return Err(e.into());
            }
        };
        for &(id, views) in &totals {
            self.l1.set_views(id, views).await;
        }
        Ok(batch.len())
    }

    /// Views buffered and not yet flushed (posts).
    pub fn pending_views(&self) -> usize {
        self.views.pending()
    }

    /// Admin invalidation by tag: every feed list built on these tags becomes unreachable.
    pub async fn invalidate_tags(&self, tags: Vec<TagKey>) {
        if let Some(shared) = &self.shared {
            let names: Vec<String> = tags.iter().map(TagKey::name).collect();
            let done = match shared.l2.bump(&tags, self.freshness.known_lsn()).await {
                Ok(()) => shared.log.invalidate(&[], &names).await,
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "invalidating feeds in L2 and on other pods failed");
            }
        }
        for tag in tags {
            self.l1.bump(tag, 0).await;
        }
    }

    /// Admin invalidation by id: L1 here, L2, and (through the shared log) every other pod's L1;
    /// the next read loads again.
    pub async fn invalidate_ids(&self, ids: &[PostId]) {
        if let Some(shared) = &self.shared
            && !ids.is_empty()
        {
            let mut done = Ok(());
            for &id in ids {
                done = done.and(shared.l2.invalidate(id).await);
            }
            if let Err(e) = done.and(shared.log.invalidate(ids, &[]).await) {
                tracing::warn!(error = %e, "invalidating posts in L2 and on other pods failed");
            }
        }
        for &id in ids {
            self.l1.invalidate(id).await;
        }
    }
}
