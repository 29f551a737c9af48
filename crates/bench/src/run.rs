//! [`run`]: one benchmark, from the options to the report.

use crate::args::{BenchArgs, BenchError, Mode};
use crate::report::Report;
use crate::{fanout, http, plot, server};

/// Runs the load `args` describe, writes the plot if asked, and returns the report.
///
/// # Errors
/// On contradicting options, when seeding fails, when no subscriber connects, or when the
/// plot cannot be written.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        return Err(BenchError::Invalid("--seconds must be above 0".into()));
    }
    server::raise_fd_limit();
    let report = match args.mode {
        Mode::Http => Report::Http(Box::new(http::run(args).await?)),
        transport => Report::Fanout(Box::new(fanout::run(args, transport).await?)),
    };
    if let Some(path) = &args.plot {
        plot::write(&report, path).map_err(BenchError::Plot)?;
    }
    Ok(report)
}
