//! The demo page and the browser client in headless Chromium: the scenarios live in
//! `tests/browser/demo.test.mjs` (node's test runner, playwright-core); this runs them against a
//! real `postcache serve` and fails with their output.

use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use postcache_testkit::free_port;

use crate::{serve, wait_exit, wait_healthy};

#[test]
fn the_demo_page_works_in_chromium() {
    let _turn = crate::HEAVY.blocking_lock();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = serve(dir.path(), &[("POSTCACHE_LISTEN", listen.as_str())]);
    let base = format!("http://{listen}");
    wait_healthy(&base, &mut child);

    let out = Command::new("node")
        .args(["--test", "--test-concurrency=1", "tests/browser/"])
        .current_dir(&repo)
        .env("BASE_URL", &base)
        .env("ARTIFACTS", repo.join("artifacts"))
        .output()
        .expect("node runs (scripts/install-deps installs the browser test dependencies)");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    wait_exit(&mut child);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "browser tests failed:\n{report}");
    assert!(
        report.contains("# pass 5"),
        "all five scenarios ran:\n{report}"
    );
    assert!(
        repo.join("artifacts/demo.png").exists(),
        "the demo page's screenshot is saved"
    );
}
