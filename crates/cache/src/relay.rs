//! The background side of [`Posts`]: the outbox relay, heartbeats, the view flush, and following
//! the shared log into this pod's L1 and event log.
//!
//! ```text
//! every pod:   mark its own appended outbox rows published (batched)
//! lease holder: unpublished outbox rows ─▶ L2 (drop + floor) + append (once, marked relayed)
//!               ─▶ mark ─▶ heartbeat if none left
//!               Redis view counters ─▶ L3, one batch at a time, exactly once
//! every pod:   XREAD ─▶ change: L1 (by version), generations, local log, applied position
//!                    └▶ heartbeat: proof of freshness (and the LSN it vouches for)
//!              an entry whose `prev` is not the last applied: a gap (trimmed past this pod,
//!              deleted, flushed, a failover that lost entries): flush L1, distrust until the next
//!              heartbeat, `resync` every subscriber, continue from the log as it is now
//!              cut off: distrust L1; back: continue from the applied position (the chain shows
//!              whether the log still reaches back that far)
//! ```

use std::sync::Arc;
use std::time::Duration;

use moka::ops::compute::{CompResult, Op};
use postcache_api::EventType;
use time::OffsetDateTime;

use crate::eventlog::{Change, Position};
use crate::l1::CachedPost;
use crate::model::PostId;
use crate::posts::{Fill, PRIMARY, Posts, PostsError, RelayError, Shared};
use crate::redis::log::{Entry, Logged, RedisLog};
use crate::stats::{INVALIDATION_LAG, set_degraded, timed};
use crate::store::OutboxEvent;
use crate::tags::TagKey;

/// The `component` label of the shared event log's degraded flag.
const EVENTLOG: &str = "eventlog";

/// Outbox rows the relay publishes per round.
pub(crate) const RELAY_BATCH: i64 = 500;

/// Published outbox rows beyond this many newest are pruned.
const OUTBOX_RETENTION: i64 = 10_000;

/// Metric name: gaps the follower found in the shared event log.
pub const EVENTLOG_GAPS: &str = "postcache_eventlog_gaps_total";

/// Pause before the follower retries a failed read.
const RETRY: Duration = Duration::from_millis(200);

impl Posts {
    /// Waits until a write was committed since the last call (or returns at once if one was).
    pub async fn committed(&self) {
        self.relay.notified().await;
    }

    /// The outbox relay, one round: publishes unpublished outbox rows to the event log in outbox
    /// order, then marks them published and prunes old ones. Rows left by a process that died
    /// between commit and publish are published by the next round of any process. Returns how
    /// many rows it published.
    ///
    /// # Errors
    /// When L3 fails; the rows stay unpublished for the next round. If only the marking fails, the
    /// next round publishes them again (at least once).
    pub async fn relay(&self) -> Result<usize, PostsError> {
        let rows = timed(PRIMARY, self.store.unpublished(RELAY_BATCH)).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        for row in &rows {
            self.publish(row);
        }
        let positions: Vec<i64> = rows.iter().map(|r| r.position).collect();
        let now = OffsetDateTime::now_utc();
        timed(
            PRIMARY,
            self.store.mark_published(&positions, OUTBOX_RETENTION, now),
        )
        .await?;
        Ok(rows.len())
    }

    fn publish(&self, row: &OutboxEvent) {
        match row.change() {
            Some(change) => {
                self.log.append(change);
            }
            None => {
                tracing::warn!(position = row.position, kind = %row.kind, "skipping an outbox row of unknown kind")
            }
        }
    }

    /// Marks the outbox rows this pod appended itself as published (one statement).
    ///
    /// # Errors
    /// When L3 fails; the positions are kept for the next call.
    pub async fn mark_appended(&self) -> Result<(), PostsError> {
        let positions = std::mem::take(&mut *self.lock_marks());
        if positions.is_empty() {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        let marked = timed(
            PRIMARY,
            self.store.mark_published(&positions, OUTBOX_RETENTION, now),
        )
        .await;
        if let Err(e) = marked {
            self.lock_marks().extend(positions);
            return Err(e.into());
        }
        Ok(())
    }

    fn lock_marks(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.to_mark
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The outbox relay for several pods, one round: appends unpublished outbox rows (ones their
    /// writer could not append) with their L2 write-through, marks them published, and, once
    /// none is left, appends a heartbeat: every change acknowledged before this round is in the
    /// log before it, at or below the LSN it carries. Call it only while holding the relay lease
    /// ([`RedisLog::hold_lease`]). A row that fails does not hold up the rows after it (each is
    /// version-guarded, so order does not matter); it only holds up the heartbeat.
    ///
    /// # Errors
    /// When L3 or Redis fails; unpublished rows stay for the next round, and no heartbeat is
    /// written, so followers stop trusting their caches after the staleness bound.
    pub async fn relay_shared(&self, shared: &Shared) -> Result<usize, RelayError> {
        let at_ms = crate::freshness::unix_ms();
        // Read before the scan: every change committed up to here is among the rows it finds.
        let covered = timed(PRIMARY, self.store.current_lsn())
            .await
            .map_err(RelayError::Store)?;
        let rows = timed(PRIMARY, self.store.unpublished(RELAY_BATCH))
            .await
            .map_err(RelayError::Store)?;
        // Read after the scan: every row it found committed at or before this position.
        let lsn = timed(PRIMARY, self.store.current_lsn())
            .await
            .map_err(RelayError::Store)?;
        let mut relayed = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in &rows {
            match self.relay_row(shared, row, lsn).await {
                Ok(()) => relayed.push(row.position),
                Err(e) => {
                    tracing::warn!(position = row.position, error = %e, "relaying an outbox row failed; it stays for the next round");
                    failure = Some(e);
                }
            }
        }
        if !relayed.is_empty() {
            let now = OffsetDateTime::now_utc();
            timed(
                PRIMARY,
                self.store.mark_published(&relayed, OUTBOX_RETENTION, now),
            )
            .await
            .map_err(RelayError::Store)?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if rows.len() < RELAY_BATCH as usize {
            shared
                .log
                .heartbeat(lsn, covered, at_ms)
                .await
                .map_err(RelayError::Redis)?;
        }
        Ok(rows.len())
    }

    /// One row its writer may not have finished: nothing to do if it was appended (the writer
    /// appends only after writing through), else L2 (the value dropped, the floor raised) and
    /// generations first, then the append, marked relayed.
    async fn relay_row(
        &self,
        shared: &Shared,
        row: &OutboxEvent,
        lsn: u64,
    ) -> Result<(), RelayError> {
        if shared
            .log
            .appended(row.position)
            .await
            .map_err(RelayError::Redis)?
        {
            return Ok(());
        }
        let Some(change) = row.change() else {
            tracing::warn!(position = row.position, kind = %row.kind, "skipping an outbox row of unknown kind");
            return Ok(());
        };
        // Late: newer versions may have been written through since, and their floors lost with
        // a Redis that lost data, so the row's content is not written; the value is dropped and
        // the floor raised (the next reader loads the post as it is now).
        shared
            .l2
            .supersede(row.post_id, row.version)
            .await
            .map_err(RelayError::Redis)?;
        shared
            .l2
            .bump(&affected_tags(&change), lsn)
            .await
            .map_err(RelayError::Redis)?;
        shared
            .log
            .publish(row, lsn, true)
            .await
            .map_err(RelayError::Redis)?;
        Ok(())
    }

    /// The view flush for several pods (lease holder only): one batch of Redis counters into L3,
    /// exactly once; returns how many posts it counted.
    ///
    /// # Errors
    /// When Redis or L3 fails; the batch stays in Redis for the next flush.
    pub async fn flush_shared_views(&self, shared: &Shared) -> Result<usize, RelayError> {
        let Some(batch) = shared.views.begin().await.map_err(RelayError::Redis)? else {
            return Ok(0);
        };
        let applied = timed(PRIMARY, self.store.add_views_once(&batch.id, &batch.counts))
            .await
            .map_err(RelayError::Store)?;
        shared.views.end(&batch).await.map_err(RelayError::Redis)?;
        for &(id, views) in applied.iter().flatten() {
            self.l1.set_views(id, views).await;
        }
        Ok(applied.map_or(0, |totals| totals.len()))
    }

    /// Follows the shared stream until `stop` resolves: loads its tail into the local log, then
    /// applies each new entry to L1 and the local log, in order, recording the applied position
    /// and heartbeats. Each entry must name the last one applied as its predecessor; when one does
    /// not, entries were lost and the pod starts over from the log as it is (see the module docs).
    /// On a failed read it stops trusting L1 until a heartbeat proves it fresh again.
    pub async fn follow(&self, shared: &RedisLog, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut last = loop {
            match shared.tail().await {
                Ok(entries) => break self.load_tail(entries).await,
                Err(e) => {
                    set_degraded(EVENTLOG, true);
                    tracing::warn!(error = %e, "reading the shared event log failed; retrying");
                    tokio::select! { () = tokio::time::sleep(RETRY) => {}, () = &mut stop => return }
                }
            }
        };
        loop {
            let read = tokio::select! {
                read = shared.read_after(last) => read,
                () = &mut stop => return,
            };
            match read {
                Ok(entries) if entries.is_empty() => {
                    set_degraded(EVENTLOG, false);
                    // A quiet log, or one recreated behind this pod's position (its new entries
                    // sort before `last`, so no read returns them): look when no heartbeat came.
                    if !self.freshness.trusts_l1()
                        && let Ok(newest) = shared.newest().await
                        && newest.unwrap_or(Position::ZERO) < last
                    {
                        let base = newest.unwrap_or(Position::ZERO);
                        self.start_over(last, base).await;
                        last = base;
                    }
                }
                Ok(entries) => {
                    set_degraded(EVENTLOG, false);
                    for logged in entries {
                        let prev = logged.prev.unwrap_or(Position::ZERO);
                        if prev != last {
                            let base = logged.prev.unwrap_or_else(|| logged.position.before());
                            self.start_over(last, base).await;
                        }
                        last = logged.position;
                        self.apply_logged(logged).await;
                    }
                }
                Err(e) => {
                    set_degraded(EVENTLOG, true);
                    self.freshness.doubt();
                    tracing::warn!(error = %e, "following the shared event log failed; L1 is not trusted until it is back");
                    tokio::select! { () = tokio::time::sleep(RETRY) => {}, () = &mut stop => return }
                }
            }
        }
    }

    /// The newest entries at start-up: into the local log (so subscribers can resume) and L1 (as
    /// if they were new: the pod may have filled L1 before they were appended); not the proof of
    /// a heartbeat (an old one proves nothing now). Returns the position to follow from.
    async fn load_tail(&self, entries: Vec<Logged>) -> Position {
        // What was filled before is older than a position this pod has: writes appended before
        // the tail's first entry are in no log it will read. (A fill still running is caught by
        // the floors the entries below raise.)
        self.l1.posts.invalidate_all();
        self.l1.feeds.invalidate_all();
        let mut last = Position::ZERO;
        if entries.is_empty() {
            // An empty stream: positions are Redis's, whatever this pod's clock says.
            self.log.start_at(Position::ZERO);
        }
        for (i, logged) in entries.into_iter().enumerate() {
            let prev = logged.prev.unwrap_or_else(|| logged.position.before());
            if i == 0 || prev != last {
                // Resuming from before the first entry (or a break in the chain) could miss events.
                self.log.restart_at(prev);
            }
            last = logged.position;
            match logged.entry {
                // This pod may have served (and filled L1) before its follower started: what it
                // filled may predate these entries, which it will never read as new.
                Entry::Change {
                    change,
                    lsn,
                    relayed,
                } => self.take_change(last, change, lsn, relayed).await,
                Entry::Invalidate { ids, tags } => self.invalidate_l1(ids, tags).await,
                Entry::Heartbeat { .. } | Entry::Unreadable => {}
            }
        }
        self.freshness.rebase(last);
        last
    }

    /// Entries were lost between `last` and `base`: no L1 entry can be proven fresh for anyone,
    /// subscribers get `resync`, and the pod continues from `base` (a heartbeat after it proves it
    /// complete again).
    ///
    /// Redis lost data with the entries (a restart, FLUSHALL): the floors that guarded L2 are
    /// gone, so what this pod filled into L2 since then, from a source only as new as its last
    /// heartbeat, may be older than a write whose floor was lost. Those fills are dropped again.
    async fn start_over(&self, last: Position, base: Position) {
        tracing::warn!(%last, %base, "the shared event log lost entries this pod had not applied; flushing L1 and resyncing subscribers");
        metrics::counter!(EVENTLOG_GAPS).increment(1);
        self.l1.posts.invalidate_all();
        self.l1.feeds.invalidate_all();
        self.freshness.rebase(base);
        self.log.restart_at(base);
        if let Some(shared) = &self.shared {
            for fill in self.fills.take() {
                let dropped = match &fill {
                    Fill::Post(id) => shared.l2.invalidate(*id).await,
                    Fill::Feed(key) => shared.l2.drop_feed(key).await,
                };
                if let Err(e) = dropped {
                    tracing::warn!(error = %e, ?fill, "dropping a recent L2 fill after a gap failed");
                }
            }
        }
    }

    /// One entry, in log order.
    async fn apply_logged(&self, logged: Logged) {
        let Logged {
            position, entry, ..
        } = logged;
        match entry {
            Entry::Change {
                change,
                lsn,
                relayed,
            } => {
                let committed = change.committed_at;
                self.take_change(position, change, lsn, relayed).await;
                let lag = OffsetDateTime::now_utc() - committed;
                metrics::histogram!(INVALIDATION_LAG).record(lag.as_seconds_f64().max(0.0));
            }
            Entry::Heartbeat {
                lsn,
                covered,
                at_ms,
            } => self.freshness.prove(lsn, covered, at_ms),
            Entry::Invalidate { ids, tags } => self.invalidate_l1(ids, tags).await,
            Entry::Unreadable => {
                // Written by a newer version, or damaged: what it changed is unknown.
                self.start_over(position, position).await;
            }
        }
        self.freshness.advance(position);
    }

    /// A change read from the log at `position`: into L1, and to this pod's subscribers unless a
    /// newer version of its post was delivered already.
    async fn take_change(&self, position: Position, change: Box<Change>, lsn: u64, relayed: bool) {
        self.freshness.note_lsn(lsn);
        self.apply_to_l1(&change, lsn, relayed).await;
        if self.newest_delivered(&change).await {
            self.log.append_at(position, *change);
        } else {
            // Overtaken in the log by a newer version of its post (two writers racing to append,
            // or a row relayed late): delivering it now would show subscribers v2 after v3. The
            // newer event carries the whole post (G5, DESIGN §5).
            tracing::debug!(post = %change.post_id, version = change.version, "skipping a superseded event");
        }
    }

    /// Whether `change` is newer than every event of its post delivered so far (and records it).
    async fn newest_delivered(&self, change: &Change) -> bool {
        let Ok(id) = change.post_id.parse::<PostId>() else {
            return true;
        };
        let version = change.version;
        let outcome = self
            .delivered
            .entry(id)
            .and_compute_with(|cur| async move {
                match cur {
                    Some(cur) if *cur.value() >= version => Op::Nop,
                    _ => Op::Put(version),
                }
            })
            .await;
        matches!(
            outcome,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        )
    }

    /// A change committed by any pod, applied to this pod's L1: the new version (or tombstone)
    /// goes in unless a newer one is known, and the feeds it joins or leaves are invalidated
    /// (their next pages need a source that has replayed `lsn`). A change the relay appended
    /// late may be older than the post now (its newer versions' events, and their floors, may be
    /// gone with a Redis that lost data): it only drops the post, which is then read again.
    async fn apply_to_l1(&self, change: &Change, lsn: u64, relayed: bool) {
        let Ok(id) = change.post_id.parse::<PostId>() else {
            return;
        };
        if relayed {
            self.l1.raise_floor(id, change.version).await;
            self.l1.invalidate(id).await;
        } else {
            self.l1.install(Arc::new(entry_of(id, change))).await;
        }
        for tag in affected_tags(change) {
            self.l1.bump(tag, lsn).await;
        }
    }

    /// An administrator's invalidation: the posts leave L1, and the feeds of the tags are rebuilt.
    async fn invalidate_l1(&self, ids: Vec<PostId>, tags: Vec<String>) {
        for id in ids {
            self.l1.invalidate(id).await;
        }
        for tag in tags.iter().filter_map(|t| TagKey::parse(t)) {
            self.l1.bump(tag, 0).await;
        }
    }
}

/// The feeds a change makes stale: those a post joins or leaves (the same rule as the writer's).
fn affected_tags(change: &Change) -> Vec<TagKey> {
    let tags = change.post.as_ref().map_or(&[][..], |p| p.tags.as_slice());
    match change.kind {
        EventType::PostUpdated => TagKey::for_retag(&change.previous_tags, tags),
        EventType::PostDeleted => TagKey::for_membership(&change.author_id, &change.previous_tags),
        _ => TagKey::for_membership(&change.author_id, tags),
    }
}

/// The cache entry a change leaves: the post, or a tombstone at its version.
fn entry_of(id: PostId, change: &Change) -> CachedPost {
    match &change.post {
        Some(post) => CachedPost::live(post.clone()),
        None => CachedPost {
            id,
            version: change.version,
            post: None,
            json: bytes::Bytes::new(),
        },
    }
}
