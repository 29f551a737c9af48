//! [`CheckError`]: why a run could not be made.

/// Why a run could not be made (violations are not errors: they are in the [`Report`](crate::report::Report)).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The options do not make a run.
    #[error("invalid options: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client failed")]
    Client(#[source] reqwest::Error),
}
