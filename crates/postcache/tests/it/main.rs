//! The `postcache` binary as a user runs it: start-up, the embedded default, refusing insecure
//! listens, a graceful shutdown that loses no buffered views, and monitoring by a real Prometheus.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(missing_docs)] // a test binary, not an API

mod bench;
mod browser;
mod check;
mod degraded;
mod faults;
mod footprint;
mod fuzz;
mod hardening;
mod layers;
mod monitoring;
mod nemesis;
mod operator;
mod pods;
mod serve;
mod telemetry;
mod tiers;
mod tls;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use postcache_testkit::poll;

/// Held by the tests that load both cores for long or are sensitive to it (the fault harness,
/// the browser scenarios): they run one at a time, the rest of the suite around them.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `postcache serve` child that is killed if the test ends (or panics) without stopping it.
pub struct Served(Child);

impl std::ops::Deref for Served {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // Already exited after a graceful stop: both calls then just report that.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `postcache serve` in `dir` with only the given environment (no inherited POSTCACHE_*).
pub fn serve(dir: &Path, env: &[(&str, &str)]) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postcache"));
    command.arg("serve").current_dir(dir).stdout(Stdio::null());
    // A file, not a pipe: a chatty server never blocks on a full pipe that nobody reads yet.
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("serve.log"))
        .unwrap();
    command.stderr(log);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("POSTCACHE_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    Served(command.spawn().unwrap())
}

/// Waits until the server at `base` is ready (`/readyz`: the database answers).
pub fn wait_healthy(base: &str, child: &mut Child) {
    if let Err(e) = try_wait_healthy(base, child) {
        panic!("postcache serve did not come up: {e}");
    }
}

/// [`wait_healthy`], returning why it did not come up (the process is killed then).
pub fn try_wait_healthy(base: &str, child: &mut Child) -> Result<(), String> {
    let url = format!("{base}/readyz");
    let result = poll(Duration::from_secs(30), || {
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(Err(format!("exited early with {status}")));
        }
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "1", &url])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Ok(()))
        } else {
            Err("not up yet".into())
        }
    });
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) | Err(e) => {
            let _ = child.kill();
            Err(e)
        }
    }
}

pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    poll(Duration::from_secs(30), || {
        child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or("running".to_owned())
    })
    .unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("postcache serve did not exit: {e}")
    })
}

pub fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}

/// Publishes a post through `base` (no token) and returns it; panics unless it was created.
pub async fn create_post(
    http: &reqwest::Client,
    base: &str,
    author: &str,
    title: &str,
) -> serde_json::Value {
    let body = serde_json::json!({"author_id": author, "title": title, "body": "b"});
    let reply = http
        .post(format!("{base}/v1/posts"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201, "creating a post through {base}");
    reply.json().await.unwrap()
}
