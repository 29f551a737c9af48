//! The entries: [`run`] for the command line, [`check_until`] for a harness that injects faults
//! while the workload runs.

use std::future::Future;

use crate::args::{CheckArgs, Plan, duration_of};
use crate::error::CheckError;
use crate::report::Report;
use crate::workload::Workload;

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
