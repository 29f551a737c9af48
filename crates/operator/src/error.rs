//! The operator's one error type. Each variant names the step that failed; [`Error::category`]
//! is the stable, low-cardinality string used as metric label and Event reason.

/// A failed reconcile step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a child or an input object failed.
    #[error("reading {what}: {source}")]
    Read {
        /// `Kind/name`.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Applying a child failed.
    #[error("applying {what}: {source}")]
    Apply {
        /// `Kind/name`.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting a child that is no longer desired failed.
    #[error("deleting {what}: {source}")]
    Delete {
        /// `Kind/name`.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the PostCache's status failed.
    #[error("patching the status: {0}")]
    Status(#[source] kube::Error),
    /// API discovery of the monitoring group failed.
    #[error("discovering monitoring.coreos.com: {0}")]
    Discovery(#[source] kube::Error),
    /// Generating a password failed (no OS randomness).
    #[error("generating a secret: {0}")]
    Random(String),
    /// The object lacks what every stored object has (namespace, uid).
    #[error("the PostCache has no {0}")]
    Malformed(&'static str),
}

impl Error {
    /// `ReadFailed`, `ApplyFailed`, …: for metric labels and Event reasons (never a Debug string).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Read { .. } => "ReadFailed",
            Error::Apply { .. } => "ApplyFailed",
            Error::Delete { .. } => "DeleteFailed",
            Error::Status(_) => "StatusFailed",
            Error::Discovery(_) => "DiscoveryFailed",
            Error::Random(_) => "RandomFailed",
            Error::Malformed(_) => "Malformed",
        }
    }
}
