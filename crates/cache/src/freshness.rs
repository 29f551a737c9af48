//! [`Freshness`]: what this pod can prove about its L1 — the log position it has applied, and how
//! recently the log proved that nothing older is missing (G1–G3 of DESIGN §5).
//!
//! ```text
//! follower: entry at p applied ──▶ applied = p
//!           heartbeat (lsn) applied ──▶ proven = now, proven_lsn = lsn  (the relay leader found
//!                                        the outbox fully published before it wrote the heartbeat)
//!           gap in the log ──▶ applied = where the log now starts, proof forgotten
//! read with token (p, lsn): L1 only if proven and applied ≥ p, else L2 (written before p was
//!                           appended) / L3 at a replica that replayed max(lsn, proven_lsn)
//! read without token:       L1 only if proven, else the same
//! not proven at all:        neither L1 nor L2: L3 at the primary (an old token proves nothing
//!                           about later writes, so a cut-off pod answers no one from memory)
//! ```
//! A pod with an in-process log (the embedded default) applies every write itself before it
//! answers, so it always trusts its L1 — provided it is alone: on PostgreSQL without Redis it
//! trusts L1 only while it holds the database's lone-process lock ([`Freshness::exclusive`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

// tokio's clock (the std clock outside a paused test runtime): trust expiry is tested on it.
use tokio::time::Instant;

use crate::eventlog::Position;
use crate::token::ConsistencyToken;

/// Metric name: 1 while this pod serves without trusting L1 (cut off from the event log).
pub const L1_DISTRUSTED: &str = "postcache_l1_distrusted";

/// This pod's proof of freshness.
#[derive(Debug)]
pub struct Freshness {
    /// `None`: single process, every change is applied before it is acknowledged.
    bound: Option<Duration>,
    /// `Some`: single process only while this says so (it holds the lone-process lock).
    alone: Option<AtomicBool>,
    applied: Mutex<Position>,
    started: Instant,
    /// Milliseconds after `started` of the last heartbeat applied (0: none yet).
    proven_ms: AtomicU64,
    /// The LSN the last heartbeat vouched for: every change acknowledged before it is at or
    /// before this LSN.
    proven_lsn: AtomicU64,
    /// The highest commit LSN seen in the log.
    known_lsn: AtomicU64,
    /// Every change committed at or before this LSN is in the log this pod applied (the last
    /// heartbeat's `covered`).
    covered_lsn: AtomicU64,
}

impl Freshness {
    /// A pod that applies every change itself (in-process event log).
    pub fn local() -> Freshness {
        Freshness {
            bound: None,
            alone: None,
            applied: Mutex::new(Position::ZERO),
            started: Instant::now(),
            proven_ms: AtomicU64::new(0),
            proven_lsn: AtomicU64::new(0),
            known_lsn: AtomicU64::new(0),
            covered_lsn: AtomicU64::new(0),
        }
    }

    /// A process without a shared log on a database others could write to: its L1 is trusted
    /// only while [`Freshness::set_alone`] says no other process writes.
    pub fn exclusive() -> Freshness {
        Freshness {
            alone: Some(AtomicBool::new(false)),
            ..Freshness::local()
        }
    }

    /// Records whether this process is the only one writing (see [`Freshness::exclusive`]);
    /// returns the previous value.
    pub fn set_alone(&self, alone: bool) -> bool {
        self.alone
            .as_ref()
            .is_some_and(|a| a.swap(alone, Ordering::Relaxed))
    }

    /// A pod following a shared log: L1 is trusted only while the last heartbeat is younger than
    /// `bound` (the staleness bound Δ, minus the heartbeat interval).
    pub fn shared(bound: Duration) -> Freshness {
        Freshness {
            bound: Some(bound),
            ..Freshness::local()
        }
    }

    /// Whether L1 is trusted only while this process holds the lone-process lock
    /// ([`Freshness::exclusive`]).
    pub fn needs_lone_lock(&self) -> bool {
        self.alone.is_some()
    }

    /// Whether this pod can prove its caches fresh within the bound (a recent heartbeat, no gap
    /// since). A read without a token may then be answered from L1, and any read from L2.
    pub fn trusts_l1(&self) -> bool {
        if let Some(alone) = &self.alone {
            return alone.load(Ordering::Relaxed);
        }
        let Some(bound) = self.bound else {
            return true;
        };
        let proven = self.proven_ms.load(Ordering::Relaxed);
        proven > 0 && self.now_ms().saturating_sub(proven) <= bound.as_millis() as u64
    }

    /// Whether L1 may answer a caller holding `token`: this pod can prove itself fresh (an old
    /// token says nothing about later writes, G3) and has applied the write behind the token —
    /// by its log position, or, for a write whose event was not appended at once (position
    /// `0-0`), because a heartbeat vouched for its LSN.
    pub fn covers(&self, token: &ConsistencyToken) -> bool {
        if self.bound.is_none() {
            return self.trusts_l1();
        }
        self.trusts_l1()
            && if token.position == Position::ZERO {
                self.in_log(token.lsn)
            } else {
                self.applied() >= token.position
            }
    }

    /// Whether every change committed at or before `lsn` is in the log this pod applied (so it
    /// was written through to L2 too).
    pub fn in_log(&self, lsn: u64) -> bool {
        lsn != 0 && self.covered_lsn.load(Ordering::Relaxed) >= lsn
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

    /// The log lost entries: what was applied means nothing any more. The applied position
    /// becomes `base` (maybe lower: a recreated stream), and the proof is forgotten until the
    /// next heartbeat of the log as it is now.
    pub fn rebase(&self, base: Position) {
        self.doubt();
        *self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = base;
    }

    /// Records a heartbeat: the log proved this pod complete as of `at_ms` (Unix ms, when the
    /// relay began the round: a heartbeat that took long to arrive proves less); every change it
    /// covers committed at or before `lsn`, and every change committed at or before `covered` is
    /// in it. Pods' clocks are assumed to agree to well within the staleness bound (NTP).
    pub fn prove(&self, lsn: u64, covered: u64, at_ms: u64) {
        self.proven_lsn.fetch_max(lsn, Ordering::Relaxed);
        self.covered_lsn.fetch_max(covered, Ordering::Relaxed);
        self.note_lsn(lsn);
        let age = unix_ms().saturating_sub(at_ms);
        let proven = self.now_ms().saturating_sub(age).max(1);
        self.proven_ms.fetch_max(proven, Ordering::Relaxed);
    }

    /// Records a commit LSN seen in the log.
    pub fn note_lsn(&self, lsn: u64) {
        self.known_lsn.fetch_max(lsn, Ordering::Relaxed);
    }

    /// The LSN the last heartbeat vouched for (0: none yet).
    pub fn proven_lsn(&self) -> u64 {
        self.proven_lsn.load(Ordering::Relaxed)
    }

    /// The highest commit LSN this pod has seen in the log.
    pub fn known_lsn(&self) -> u64 {
        self.known_lsn.load(Ordering::Relaxed)
    }

    /// Forgets the proof (the follower lost the log).
    pub fn doubt(&self) {
        self.proven_ms.store(0, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        // Starts past any plausible heartbeat age, so that subtracting one never reaches 0.
        self.started.elapsed().as_millis() as u64 + STARTED_MS
    }
}

/// The monotonic clock's reading at start: ages up to this are representable.
const STARTED_MS: u64 = 1 << 40;

/// The wall clock, Unix milliseconds (0 before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    fn a_lone_process_trusts_its_cache_only_while_alone() {
        let f = Freshness::exclusive();
        let token = ConsistencyToken::default();
        assert!(
            !f.trusts_l1() && !f.covers(&token),
            "not known to be alone yet"
        );
        assert!(!f.set_alone(true));
        assert!(f.trusts_l1() && f.covers(&token));
        assert!(f.set_alone(false));
        assert!(!f.trusts_l1() && !f.covers(&token));
    }

    #[test]
    fn a_shared_pod_trusts_l1_only_after_a_heartbeat() {
        let f = Freshness::shared(Duration::from_millis(750));
        assert!(!f.trusts_l1(), "no heartbeat yet");
        f.prove(7, 5, unix_ms());
        assert_eq!(f.proven_lsn(), 7);
        assert!(f.trusts_l1());
        f.doubt();
        assert!(!f.trusts_l1());
    }

    #[test]
    fn a_heartbeat_proves_the_log_as_of_its_round_not_its_arrival() {
        let f = Freshness::shared(Duration::from_millis(750));
        // Delayed by a paused Redis or follower: written 2 s ago, received now.
        f.prove(7, 5, unix_ms() - 2_000);
        assert!(!f.trusts_l1(), "an old heartbeat proves nothing now");
        f.prove(8, 6, unix_ms() - 100);
        assert!(f.trusts_l1());
        f.prove(9, 7, unix_ms() - 5_000);
        assert!(
            f.trusts_l1(),
            "a late old heartbeat does not take a newer proof away"
        );
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
        assert!(
            !f.covers(&token),
            "applied, but not proven fresh: an old token proves nothing"
        );
        f.prove(9, 8, unix_ms());
        assert!(f.covers(&token));
        f.advance(at(3));
        assert_eq!(f.applied(), at(5), "positions only move forward");
        let unknown = ConsistencyToken {
            position: Position::ZERO,
            lsn: 9,
        };
        assert!(
            !f.covers(&unknown),
            "a write whose position is unknown is covered only once a heartbeat vouches for it"
        );
        f.prove(9, 9, unix_ms());
        assert!(f.covers(&unknown));
        f.rebase(at(2));
        assert_eq!(f.applied(), at(2), "a gap moves the applied position back");
        assert!(!f.covers(&token) && !f.trusts_l1(), "and forgets the proof");
    }

    /// Trust expires exactly one bound after the heartbeat's round, on tokio's clock: paused
    /// here, so the test steps time instead of sleeping through it.
    #[tokio::test(start_paused = true)]
    async fn trust_lasts_one_bound_after_the_heartbeat_and_no_longer() {
        let bound = Duration::from_millis(750);
        let f = Freshness::shared(bound);
        f.prove(7, 5, unix_ms());
        tokio::time::advance(bound - Duration::from_millis(5)).await;
        assert!(f.trusts_l1(), "within the bound");
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(!f.trusts_l1(), "past the bound with no new heartbeat");
        // A heartbeat that took 300 ms to arrive buys only what is left of its bound.
        f.prove(8, 6, unix_ms() - 300);
        assert!(f.trusts_l1());
        tokio::time::advance(bound - Duration::from_millis(300) + Duration::from_millis(5)).await;
        assert!(
            !f.trusts_l1(),
            "a late heartbeat expires by its round, not its arrival"
        );
        // Proof never moves backwards: an older heartbeat after a newer one changes nothing.
        f.prove(9, 7, unix_ms());
        f.prove(8, 6, unix_ms() - 600);
        tokio::time::advance(bound - Duration::from_millis(5)).await;
        assert!(f.trusts_l1());
    }
}
