//! `postcache check`: a black-box consistency checker for a running PostCache deployment.
//!
//! ```text
//! Workload::start ─▶ sessions drive creates, updates, deletes, reads and feeds over the URLs,
//!                    one SSE subscriber per URL, probes on sampled writes   ─▶ History
//! Workload::stop  ─▶ Stopped::check: settle (final reads, missing events) ─▶ verify ─▶ clean up
//!                 ─▶ Report (violations per guarantee, lost writes, convergence) ─▶ render / JSON
//! ```
//! Like a Jepsen checker, it knows nothing of the deployment's insides or of faults injected into
//! it: it judges only what clients saw, against DESIGN.md §5 (G1–G5). It writes only posts it
//! created (tagged with the run's tag) and deletes them at the end.
//!
//! [`run`] is the command line's entry. A fault-injection harness uses [`Workload::start`],
//! injects and heals faults, then [`Workload::stop`] and [`Stopped::check`] (or [`check_until`]).

mod api;
mod args;
mod error;
mod events;
mod history;
mod probe;
mod report;
mod rng;
mod run;
mod settle;
pub mod verify;
mod workload;

pub use args::{CheckArgs, Plan, duration_of};
pub use error::CheckError;
pub use events::{Change, Delivered, StreamLog};
pub use history::{Clock, Expected, Feed, History, Micros, Op, OpKind, Outcome};
pub use report::{
    Cleanup, Convergence, Findings, Guarantee, LostWrite, OpCounts, Report, SubscriberSummary,
    Violation, render,
};
pub use run::{check_until, run};
pub use settle::Stopped;
pub use workload::{MAX_LIVE, RunNames, Workload};
