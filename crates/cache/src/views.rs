//! Write-back of view counts: increments are buffered in memory and flushed to L3 in batches.
//!
//! The loss window is one flush interval of views if the process dies without a graceful shutdown
//! (a graceful shutdown flushes); a failed flush puts its batch back, so nothing is dropped.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::model::PostId;

/// Metric name: posts with views not yet flushed to L3.
pub const WRITEBACK_PENDING: &str = "postcache_writeback_pending";

/// Buffered view increments per post.
#[derive(Debug, Default)]
pub struct ViewBuffer {
    pending: Mutex<HashMap<PostId, i64>>,
}

impl ViewBuffer {
    /// Counts one view of `id`.
    pub fn count(&self, id: PostId) {
        let mut pending = self.lock();
        *pending.entry(id).or_insert(0) += 1;
        metrics::gauge!(WRITEBACK_PENDING).set(pending.len() as f64);
    }

    /// Takes everything buffered, leaving the buffer empty.
    pub fn take(&self) -> Vec<(PostId, i64)> {
        let batch: Vec<_> = std::mem::take(&mut *self.lock()).into_iter().collect();
        metrics::gauge!(WRITEBACK_PENDING).set(0.0);
        batch
    }

    /// Puts a batch that could not be flushed back, merged with what arrived meanwhile.
    pub fn restore(&self, batch: Vec<(PostId, i64)>) {
        let mut pending = self.lock();
        for (id, n) in batch {
            *pending.entry(id).or_insert(0) += n;
        }
        metrics::gauge!(WRITEBACK_PENDING).set(pending.len() as f64);
    }

    /// Posts with buffered views.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PostId, i64>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_and_restore_without_losing_views() {
        let buffer = ViewBuffer::default();
        buffer.count(1);
        buffer.count(1);
        buffer.count(2);
        let mut batch = buffer.take();
        batch.sort();
        assert_eq!(batch, vec![(1, 2), (2, 1)]);
        assert_eq!(buffer.pending(), 0);
        buffer.count(1);
        buffer.restore(batch);
        let mut again = buffer.take();
        again.sort();
        assert_eq!(again, vec![(1, 3), (2, 1)]);
    }
}
