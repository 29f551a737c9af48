//! Real parts for PostCache's tests, started on 127.0.0.1 with free ports in temp dirs.
//!
//! Every part is a set of [`Process`]es whose readiness is polled with a deadline; a part that does
//! not come up panics with the tail of its log. Dropping a part stops its processes and removes its
//! directory. Parts that are safe to share within one test binary have a `shared()` constructor;
//! those live until the binary exits (see the `shared` module), and each test isolates itself
//! in them (a database, a key prefix, a namespace).
//!
//! Children are spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so even a test binary
//! killed with SIGKILL leaves no process behind.
//!
//! ```text
//! Postgres ──primary──▶ pg_basebackup -R ──▶ replica × N   (streaming)
//! Redis / RedisCluster (3 shards × 1 replica)
//! Prometheus (scrape config + rule files)
//! ControlPlane: etcd ◀─ kube-apiserver ◀─ controller-manager, scheduler, kwok (fake nodes)
//! Node: containerd, kubelet, kube-proxy, CoreDNS (one real worker node per machine)
//! ```

mod control_plane;
mod net;
mod node;
mod postgres;
mod process;
mod prometheus;
mod redis;
mod redis_nodes;
mod shared;
mod tls;
mod tools;

pub use control_plane::{ControlPlane, NODE_NAME};
pub use net::{Switch, free_port, http_get, unique_name};
pub use node::Node;
pub use postgres::{Postgres, psql_at};
pub use process::{Process, ProcessSpec, Readiness};
pub use prometheus::{Prometheus, ScrapeTarget};
pub use redis::{Redis, RedisCluster};
pub use redis_nodes::RedisNodes;
pub use tls::TestCa;
pub use tools::tool;

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Ok`, or panics after `timeout` with `what` and the last error.
///
/// # Panics
/// When the deadline passes; the message carries the last error `check` returned.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    match poll(timeout, &mut check) {
        Ok(value) => value,
        Err(last) => panic!("timed out after {timeout:?} waiting for {what}: {last}"),
    }
}

/// Polls `check` every few milliseconds (backing off to 200 ms) until it succeeds or `timeout`
/// passes, returning the last error then.
///
/// # Errors
/// The last error of `check` when the deadline passes.
pub fn poll<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(pause),
        }
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
