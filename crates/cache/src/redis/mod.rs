//! The Redis side of the tiers (L2 and everything shared between pods), as `store/` is L3's.
//!
//! ```text
//! conn   one connection, standalone or Cluster (TLS, timeouts), and its error type
//! l2     posts and feed pages: compare-and-set on versions, tombstones, floors, fill leases
//! log    the shared event log (a Stream), its relay lease and heartbeats
//! views  write-back view counters, taken and applied in exactly-once batches
//! ```

pub(crate) mod conn;
pub(crate) mod l2;
pub(crate) mod log;
pub(crate) mod views;
