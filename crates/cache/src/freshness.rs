//! [`Freshness`]: what this pod can prove about its L1 — the log position it has applied, and how
//! recently the log proved that nothing older is missing (G1–G3 of DESIGN §5).
//!
//! ```text
//! follower: entry at p applied ──▶ applied = p
//!           heartbeat applied  ──▶ proven = now   (the relay leader found the outbox fully
//!                                                  published when it wrote the heartbeat)
//! read with token (p, lsn): L1 only if applied ≥ p, else L2 (written before p was appended) / L3
//! read without token:       L1 only if proven within the bound, else L2 / L3
//! ```
//! A pod with an in-process log (the embedded default) applies every write itself before it
//! answers, so it always trusts its L1.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::eventlog::Position;
use crate::token::ConsistencyToken;

/// Metric name: 1 while this pod serves without trusting L1 (cut off from the event log).
pub const L1_DISTRUSTED: &str = "postcache_l1_distrusted";

/// This pod's proof of freshness.
#[derive(Debug)]
pub struct Freshness {
    /// `None`: single process, every change is applied before it is acknowledged.
    bound: Option<Duration>,
    applied: Mutex<Position>,
    started: Instant,
    /// Milliseconds after `started` of the last heartbeat applied (0: none yet).
    proven_ms: AtomicU64,
}

impl Freshness {
    /// A pod that applies every change itself (in-process event log).
    pub fn local() -> Freshness {
        Freshness {
            bound: None,
            applied: Mutex::new(Position::ZERO),
            started: Instant::now(),
            proven_ms: AtomicU64::new(0),
        }
    }

    /// A pod following a shared log: L1 is trusted only while the last heartbeat is younger than
    /// `bound` (the staleness bound Δ, minus the heartbeat interval).
    pub fn shared(bound: Duration) -> Freshness {
        Freshness {
            bound: Some(bound),
            ..Freshness::local()
        }
    }

    /// Whether a read without a token may be answered from L1.
    pub fn trusts_l1(&self) -> bool {
        let Some(bound) = self.bound else {
            return true;
        };
        let proven = self.proven_ms.load(Ordering::Relaxed);
        proven > 0 && self.now_ms().saturating_sub(proven) <= bound.as_millis() as u64
    }

    /// Whether this pod has applied the write behind `token` (so its L1 reflects it).
    pub fn covers(&self, token: &ConsistencyToken) -> bool {
        if self.bound.is_none() {
            return true;
        }
        token.position != Position::ZERO && self.applied() >= token.position
    }

    /// The last log position applied here.
    pub fn applied(&self) -> Position {
        *self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that everything up to `position` is applied.
    pub fn advance(&self, position: Position) {
        let mut applied = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if position > *applied {
            *applied = position;
        }
    }

    /// Records a heartbeat: the log proved this pod complete as of now.
    pub fn prove(&self) {
        self.proven_ms
            .store(self.now_ms().max(1), Ordering::Relaxed);
    }

    /// Forgets the proof (the follower lost the log).
    pub fn doubt(&self) {
        self.proven_ms.store(0, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> Position {
        Position { epoch: 1, seq }
    }

    #[test]
    fn a_local_pod_always_trusts_its_cache() {
        let f = Freshness::local();
        assert!(f.trusts_l1());
        assert!(f.covers(&ConsistencyToken::default()));
    }

    #[test]
    fn a_shared_pod_trusts_l1_only_after_a_heartbeat() {
        let f = Freshness::shared(Duration::from_millis(750));
        assert!(!f.trusts_l1(), "no heartbeat yet");
        f.prove();
        assert!(f.trusts_l1());
        f.doubt();
        assert!(!f.trusts_l1());
    }

    #[test]
    fn tokens_are_covered_once_their_position_is_applied() {
        let f = Freshness::shared(Duration::from_secs(1));
        let token = ConsistencyToken {
            position: at(5),
            lsn: 9,
        };
        assert!(!f.covers(&token));
        f.advance(at(5));
        assert!(f.covers(&token));
        f.advance(at(3));
        assert_eq!(f.applied(), at(5), "positions only move forward");
        let unknown = ConsistencyToken {
            position: Position::ZERO,
            lsn: 9,
        };
        assert!(
            !f.covers(&unknown),
            "a write whose position is unknown is never covered"
        );
    }
}
