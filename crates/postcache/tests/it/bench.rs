//! `postcache bench` against a running `postcache serve`: it loads, measures and reports.

use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use postcache_testkit::free_port;

use crate::{serve, wait_exit, wait_healthy};

#[test]
fn bench_loads_a_running_service_and_reports_per_operation() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [
        ("POSTCACHE_LISTEN", listen.as_str()),
        ("POSTCACHE_API_TOKENS", "bench-token"),
        ("POSTCACHE_RATE_LIMIT_PER_SECOND", "0"), // one client, far above the per-IP default
    ];
    let mut child = serve(dir.path(), &env);
    let url = format!("http://{listen}");
    wait_healthy(&url, &mut child);

    let out = Command::new(env!("CARGO_BIN_EXE_postcache"))
        .args([
            "bench",
            "--url",
            &url,
            "--token",
            "bench-token",
            "--posts",
            "50",
            "--concurrency",
            "4",
        ])
        .args(["--seconds", "2", "--read-ratio", "0.9", "--json"])
        .output()
        .unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child).success());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for op in ["read", "write"] {
        assert!(report[op]["count"].as_u64().unwrap() > 0, "{op}: {report}");
        assert_eq!(report[op]["errors"], 0, "{op}: {report}");
        assert!(report[op]["p50_us"].as_u64().unwrap() <= report[op]["p99_us"].as_u64().unwrap());
    }
    assert!(
        report["read_tiers"]["l1"].as_u64().unwrap() > 0,
        "hot posts come from L1: {report}"
    );

    // With nothing listening, seeding fails, and bench says so.
    let refused = Command::new(env!("CARGO_BIN_EXE_postcache"))
        .args([
            "bench",
            "--url",
            "http://127.0.0.1:1",
            "--posts",
            "1",
            "--seconds",
            "0.1",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("seeding posts failed"));
}
