//! The demo page and the browser client in headless Chromium: the scenarios live in
//! `tests/browser/*.test.mjs` (node's test runner, playwright-core); this runs them against a
//! real `postcache serve` that requires an API token for writes (and a second one, for calls
//! across origins) and fails with their output.

use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use postcache_testkit::free_port;

use crate::{serve, wait_exit, wait_healthy};

/// The API token the service under test requires for writes (as on Kubernetes, where the
/// operator always generates tokens).
const BEARER: &str = "browser-test-token";

#[test]
fn the_demo_page_and_the_client_work_in_chromium() {
    let _turn = crate::HEAVY.blocking_lock();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let mut child = serve(
        dir.path(),
        &[
            ("POSTCACHE_LISTEN", listen.as_str()),
            ("POSTCACHE_API_TOKENS", BEARER),
        ],
    );
    wait_healthy(&base, &mut child);
    // A second service that the first one's pages may call (CORS), ending realtime streams
    // after 3 s (the client's connection states go through a reconnection).
    let second_dir = tempfile::tempdir().unwrap();
    let second_listen = format!("127.0.0.1:{}", free_port());
    let second = format!("http://{second_listen}");
    let mut second_child = serve(
        second_dir.path(),
        &[
            ("POSTCACHE_LISTEN", second_listen.as_str()),
            ("POSTCACHE_API_TOKENS", BEARER),
            ("POSTCACHE_CORS_ORIGINS", base.as_str()),
            ("POSTCACHE_REALTIME_MAX_AGE_SECONDS", "3"),
        ],
    );
    wait_healthy(&second, &mut second_child);

    let out = Command::new("node")
        .args(["--test", "--test-concurrency=1", "tests/browser/"])
        .current_dir(&repo)
        .env("BASE_URL", &base)
        .env("SECOND_URL", &second)
        .env("BEARER", BEARER)
        .env("ARTIFACTS", repo.join("artifacts"))
        .output()
        .expect("node runs (scripts/install-deps installs the browser test dependencies)");
    for mut served in [child, second_child] {
        kill(Pid::from_raw(served.id() as i32), Signal::SIGTERM).unwrap();
        wait_exit(&mut served);
    }
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "browser tests failed:\n{report}");
    assert!(
        report.contains("# pass 12"),
        "all twelve scenarios ran:\n{report}"
    );
    assert!(
        repo.join("artifacts/demo.png").exists(),
        "the demo page's screenshot is saved"
    );
}
