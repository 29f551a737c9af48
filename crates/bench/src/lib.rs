//! `postcache bench`: the load generator for a running PostCache (or anything serving its API).
//!
//! ```text
//! --mode http      seed N posts ─▶ C connections, closed loop or open loop at --rate
//!                  ─▶ read / write / feed mix over uniform, Zipf(θ) or latest keys
//!                  ─▶ (--compare-url) the identical load against another server ─▶ ratio
//! --mode ws|sse|socketio
//!                  N subscribers ─▶ a publisher at R posts/s with its send time in each
//!                  ─▶ delivery latency per event, deliveries per server CPU-second, RSS per connection
//! every mode       ─▶ HdrHistogram percentiles (open loop: from the intended send time, so a
//!                     stalled server is not hidden by the load waiting for it), a timeline,
//!                     a table or JSON, and an SVG plot (--plot)
//! ```
//! Only 2xx answers count as done; everything else is an error. Give `--pid` of the server (on
//! the same machine) to read its CPU time and RSS from `/proc`.
//!
//! Modules: [`run`] is the entry; `args` holds the options; `http` and `fanout` drive the two kinds of load; `keys` picks posts; `stats`
//! keeps histograms and timelines; `server` reads `/proc`; `plot` draws; `report` renders.

mod args;
mod fanout;
mod http;
mod keys;
mod plot;
mod report;
mod run;
mod server;
mod stats;

pub use args::{BenchArgs, BenchError, Mode};
pub use keys::KeyDist;
pub use report::{FanoutReport, HttpReport, OpReport, Report, render};
pub use run::run;
