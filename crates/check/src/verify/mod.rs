//! The checks: pure functions of a [`History`] and the subscribers' [`StreamLog`]s, each
//! returning the [`Violation`]s it found.
//!
//! | guarantee | module | on |
//! |---|---|---|
//! | G1 read-your-writes, G2 monotonic reads, G3 bounded staleness | [`reads`] | reads and feed pages |
//! | G5 realtime order and completeness | [`realtime`] | subscribers' streams |
//!
//! G4 (no acknowledged write lost) needs reads after the workload: see [`crate::settle::Stopped::check`].

pub mod reads;
pub mod realtime;

use std::time::Duration;

pub use realtime::missing;

use crate::events::StreamLog;
use crate::history::History;
use crate::report::Violation;

/// Every G1, G2, G3 and G5 violation of a run, with `staleness_bound` as Δ.
pub fn all(
    history: &History,
    logs: &[StreamLog],
    urls: &[String],
    authors: &[String],
    staleness_bound: Duration,
) -> Vec<Violation> {
    let cx = reads::Context {
        urls,
        authors,
        delta: u64::try_from(staleness_bound.as_micros()).unwrap_or(u64::MAX),
    };
    let mut found = reads::check_reads(history, cx);
    found.extend(realtime::out_of_order(logs, urls));
    found.extend(realtime::missing(history, logs, urls));
    found
}
