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
mod events;
mod history;
mod probe;
mod report;
mod rng;
mod settle;
pub mod verify;
mod workload;

use std::future::Future;

pub use args::{CheckArgs, Plan, duration_of};
pub use events::{Change, Delivered, StreamLog};
pub use history::{Expected, Feed, History, Micros, Op, OpKind, Outcome};
pub use report::{
    Cleanup, Convergence, Findings, Guarantee, LostWrite, OpCounts, Report, SubscriberSummary,
    Violation, render,
};
pub use settle::Stopped;
pub use workload::{Clock, MAX_LIVE, RunNames, Workload};

/// Why a run could not be made (violations are not errors: they are in the [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The options do not make a run.
    #[error("invalid options: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client failed")]
    Client(#[source] reqwest::Error),
}

/// Runs the command line's check: the workload for `--duration`, then settle, verify, clean up.
///
/// # Errors
/// [`CheckError`] when the options are invalid or no HTTP client can be built.
pub async fn run(args: &CheckArgs) -> Result<Report, CheckError> {
    let plan = Plan::from_args(args)?;
    let duration = duration_of(args)?;
    check_until(&plan, tokio::time::sleep(duration)).await
}

/// Runs the workload until `stop` resolves, then settles, verifies and cleans up.
///
/// # Errors
/// [`CheckError::Client`] when no HTTP client can be built.
pub async fn check_until(
    plan: &Plan,
    stop: impl Future<Output = ()>,
) -> Result<Report, CheckError> {
    let workload = Workload::start(plan).await?;
    stop.await;
    Ok(workload.stop().await.check().await)
}
